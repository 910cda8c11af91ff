//! Regression tests of issue 26's lesser list: the tiny model on the CPU, loopback only.
#[path = "common/http.rs"]
mod http;

use std::process::Command;
use std::time::Duration;

use http::*;
use serde_json::json;

/// Starting the server with settings no client could use fails at once, naming the flag; a
/// stale server.pid naming a live unrelated process (PID 1) blocks nothing; a second server
/// on the same folder is refused while the first runs.
#[test]
fn start_checks_and_the_folder_lock() {
    if cpu_tests_done() {
        return;
    }
    let d = scratch("lesser-start");
    for (args, word) in [
        (vec!["--api-key", " key "], "spaces"),
        (vec!["--max-body", "0"], "--max-body"),
        (vec!["--header-timeout", "0"], "--header-timeout"),
    ] {
        let out = Command::new(BIN)
            .args(["serve", "--device", "cpu", "--port", "0", "--data-dir"])
            .arg(&d)
            .args(&args)
            .env("CONTENTV_FORCE_CPU", "1")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(word), "{err}");
    }
    std::fs::write(d.join("server.pid"), "1 somehost\n").unwrap();
    std::fs::write(d.join("server.pid"), format!("1 {}\n", hostname())).unwrap();
    let srv = Server::start(&d, &[]);
    let out = Command::new(BIN)
        .args(["serve", "--device", "cpu", "--port", "0", "--data-dir"])
        .arg(&d)
        .env("CONTENTV_FORCE_CPU", "1")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("another contentv serve"), "{err}");
    drop(srv);
    // the lock went with the process (killed with SIGKILL): a new server starts
    let _srv = Server::start(&d, &[]);
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// NUL and control characters are refused at validation (the API and the CLI), naming the
/// field; messages use the API's names; the auth scheme is case-insensitive; every error
/// (404, 405, bad id) has the JSON shape; multipart bodies (what the OpenAI SDKs send) work
/// and a file part is refused.
#[test]
fn validation_auth_and_error_shapes() {
    if cpu_tests_done() {
        return;
    }
    let d = scratch("lesser-validation");
    let srv = Server::start(&d, &["--api-key", "k3y"]);
    for (body, param) in [
        (json!({"prompt": "a\u{0}b"}), "prompt"),
        (
            json!({"prompt": "a", "negative_prompt": "x\u{1b}y"}),
            "negative_prompt",
        ),
    ] {
        let r = srv.req("POST", "/v1/videos", Some(&body));
        assert_eq!(r.status, 400, "{}", r.text());
        assert_eq!(r.error()["param"], param, "{}", r.text());
    }
    let r = srv.req(
        "POST",
        "/v1/videos",
        Some(&json!({"prompt": "a", "num_frames": 5000})),
    );
    let m = r.error()["message"].as_str().unwrap().to_string();
    assert!(
        m.contains("\"num_frames\"") && !m.contains("\"frames\""),
        "{m}"
    );
    let r = srv.req("POST", "/v1/videos", Some(&json!({"size": "32x32"})));
    let m = r.error()["message"].as_str().unwrap().to_string();
    assert!(!m.contains("--prompt") && m.contains("\"prompt\""), "{m}");
    // the CLI refuses the NUL too, before loading
    let out = Command::new(BIN)
        .args([
            "generate", "--device", "cpu", "--prompt", "a\u{7}b", "--frames", "1", "--output",
        ])
        .arg(d.join("x.mp4"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("U+0007"));
    // bearer in any case
    for scheme in ["bearer", "BEARER", "Bearer"] {
        let r = request(
            &srv.addr,
            "GET",
            "/v1/videos",
            &[("Authorization", &format!("{scheme} k3y"))],
            None,
        );
        assert_eq!(r.status, 200, "{scheme}");
    }
    let auth = [("Authorization", "Bearer k3y")];
    for (method, path, status) in [
        ("PUT", "/v1/videos", 405),
        ("GET", "/v1/nothing", 404),
        ("GET", "/v1/videos/video_zz", 404),
    ] {
        let r = request(&srv.addr, method, path, &auth, None);
        assert_eq!(r.status, status, "{method} {path}: {}", r.text());
        r.error();
    }
    // multipart
    let body = "--b0\r\nContent-Disposition: form-data; name=\"prompt\"\r\n\r\na cat\r\n--b0\r\nContent-Disposition: form-data; name=\"size\"\r\n\r\n32x32\r\n--b0\r\nContent-Disposition: form-data; name=\"seconds\"\r\n\r\n1\r\n--b0\r\nContent-Disposition: form-data; name=\"num_inference_steps\"\r\n\r\n1\r\n--b0--\r\n";
    let mp = |b: &str| {
        raw(
            &srv.addr,
            format!("POST /v1/videos HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer k3y\r\nConnection: close\r\nContent-Type: multipart/form-data; boundary=b0\r\nContent-Length: {}\r\n\r\n{b}", srv.addr, b.len()).as_bytes(),
        )
    };
    let r = mp(body);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["size"], "32x32");
    let file = "--b0\r\nContent-Disposition: form-data; name=\"prompt\"\r\n\r\na\r\n--b0\r\nContent-Disposition: form-data; name=\"input_reference\"; filename=\"a.png\"\r\nContent-Type: image/png\r\n\r\nPNG\r\n--b0--\r\n";
    let r = mp(file);
    assert_eq!(r.status, 400);
    assert_eq!(r.error()["param"], "input_reference");
}

/// Range and conditional requests as RFC 9110 says; a video removed behind the server gets
/// the JSON 404; two concurrent DELETEs of a queued job leave no record (after a restart);
/// a partial file of an interrupted write is removed at start.
#[test]
fn ranges_deletes_and_partial_files() {
    if cpu_tests_done() {
        return;
    }
    let d = scratch("lesser-ranges");
    let srv = Server::start(&d, &[]);
    let j = srv.create(tiny("ranges", 5, 2, 1));
    let id = j["id"].as_str().unwrap().to_string();
    assert_eq!(
        srv.wait(&id, Duration::from_secs(60))["status"],
        "completed"
    );
    let path = format!("/v1/videos/{id}/content");
    let full = srv.get(&path);
    assert_eq!(full.status, 200);
    let png = full.header("content-type") == Some("image/png");
    if !png {
        let n = full.body.len();
        for (range, status, len) in [
            ("bytes=0-9", 206, 10),
            ("items=0-1", 200, n),
            ("bytes=5-2", 200, n),
            ("bytes=0-1,4-5", 200, n),
        ] {
            let r = request(&srv.addr, "GET", &path, &[("Range", range)], None);
            assert_eq!((r.status, r.body.len()), (status, len), "{range}");
        }
        let lm = full.header("last-modified").unwrap().to_string();
        let r = request(
            &srv.addr,
            "GET",
            &path,
            &[("Range", "bytes=0-9"), ("If-Range", &lm)],
            None,
        );
        assert_eq!(r.status, 206);
        let r = request(
            &srv.addr,
            "GET",
            &path,
            &[
                ("Range", "bytes=0-9"),
                ("If-Range", "Mon, 01 Jan 2001 00:00:00 GMT"),
            ],
            None,
        );
        assert_eq!((r.status, r.body.len()), (200, n), "stale If-Range");
        std::fs::remove_file(d.join("videos").join(format!("{id}.mp4"))).unwrap();
        let r = srv.get(&path);
        assert_eq!(r.status, 404);
        assert_eq!(r.error()["code"], "video_missing");
    }
    // concurrent DELETEs of a queued job (the worker busy with a long one)
    let busy = srv.create(long("busy"));
    let mut ids = Vec::new();
    for i in 0..4 {
        let q = srv.create(tiny("q", 1, 1, i))["id"]
            .as_str()
            .unwrap()
            .to_string();
        let hs: Vec<_> = (0..2)
            .map(|_| {
                let (a, p) = (srv.addr.clone(), format!("/v1/videos/{q}"));
                std::thread::spawn(move || request(&a, "DELETE", &p, &[], None).status)
            })
            .collect();
        let sts: Vec<u16> = hs.into_iter().map(|h| h.join().unwrap()).collect();
        assert!(sts.iter().all(|s| *s == 200 || *s == 404), "{sts:?}");
        // two 200s: one cancelled it, the other deleted it
        ids.push((q, sts == [200, 200]));
    }
    srv.req(
        "DELETE",
        &format!("/v1/videos/{}", busy["id"].as_str().unwrap()),
        None,
    );
    srv.wait(busy["id"].as_str().unwrap(), Duration::from_secs(60));
    drop(srv);
    // a partial file of a killed write
    let partial = d.join("videos").join(".video_x.partial-999999-1-host.mp4");
    std::fs::write(&partial, b"half").unwrap();
    let srv = Server::start(&d, &[]);
    assert!(!partial.exists(), "the partial file stayed");
    for (q, deleted) in &ids {
        let r = srv.get(&format!("/v1/videos/{q}"));
        if *deleted {
            assert_eq!(r.status, 404, "a deleted job came back: {}", r.text());
        } else if r.status == 200 {
            assert_eq!(r.json()["status"], "cancelled", "{}", r.text());
        }
    }
    assert_eq!(srv.get("/health").json()["queue_length"], 0);
}

/// A prompt longer than the text encoders accept: the job's `warnings` carry the tokenizers'
/// truncation lines (they went only to the server's stderr before), and a short prompt's job
/// has none.
#[test]
fn truncation_warnings_reach_the_job() {
    if cpu_tests_done() {
        return;
    }
    let d = scratch("lesser-truncation");
    let srv = Server::start(&d, &[]);
    let long_prompt = vec!["a red fox running through deep snow at dawn"; 40].join(", ");
    let id = srv.create(tiny(&long_prompt, 1, 1, 3))["id"]
        .as_str()
        .unwrap()
        .to_string();
    let short = srv.create(tiny("a fox", 1, 1, 3))["id"]
        .as_str()
        .unwrap()
        .to_string();
    let j = srv.wait(&id, Duration::from_secs(120));
    assert_eq!(j["status"], "completed", "{j}");
    let w: Vec<String> = j["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert!(
        w.iter()
            .any(|l| l.starts_with("the prompt is longer than the CLIP-L")),
        "{w:?}"
    );
    let s = srv.wait(&short, Duration::from_secs(120));
    assert_eq!(s["status"], "completed", "{s}");
    assert_eq!(s["warnings"], json!([]), "{s}");
}

/// The step cache through the API (the page posts the same body): the job runs with it and
/// reports its computed steps; a bad method is a 400 naming the field `cache`; `mag` without a
/// calibration of the server's model for the job's schedule is a 400 naming `cache` and the
/// file before it is queued, and with one it runs.
#[test]
fn step_cache_through_the_api() {
    if cpu_tests_done() {
        return;
    }
    let d = scratch("lesser-cache");
    let xdg = d.join("xdg");
    let srv = Server::start_env(&d.join("data"), &[], None, &[("XDG_DATA_HOME", &xdg)]);
    let mut body = tiny("a fox", 5, 6, 3);
    body["cache"] = json!({"method": "easy", "threshold": 5.0});
    let id = srv.create(body)["id"].as_str().unwrap().to_string();
    let j = srv.wait(&id, Duration::from_secs(120));
    assert_eq!(j["status"], "completed", "{j}");
    let c = &j["timings"]["cache"];
    assert_eq!(c["method"], "easy", "{j}");
    assert!(c["line"].as_str().unwrap().starts_with("computed "), "{c}");
    let computed = c["computed"].as_array().unwrap();
    assert!(
        computed.len() < 6,
        "threshold 5 reuses some of 6 steps: {c}"
    );
    assert_eq!(
        computed.last(),
        Some(&json!(5)),
        "the last step is computed: {c}"
    );
    let mut bad = tiny("a fox", 5, 6, 3);
    bad["cache"] = json!("fastest");
    let r = srv.req("POST", "/v1/videos", Some(&bad));
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.error()["param"], "cache", "{}", r.text());
    // mag: the calibration of this model for 3 steps, none for 4.
    let model = contentv::cli::load::tiny_model_dir();
    let cdir = xdg.join("contentv").join("cache");
    let (path, ck, schedule) =
        contentv::cli::calibrate::calibration_path(&model, &cdir, 3, None).unwrap();
    contentv::model::cache::MagCalibration {
        format: contentv::model::cache::CALIBRATION_FORMAT.into(),
        checkpoint: ck,
        steps: 3,
        shift: schedule.shift,
        timesteps: schedule.timesteps,
        ratios: vec![1.0; 3],
        prompts: 1,
    }
    .save(&cdir)
    .unwrap();
    let (missing, _, _) =
        contentv::cli::calibrate::calibration_path(&model, &cdir, 4, None).unwrap();
    let before = srv.req("GET", "/v1/videos", None).text();
    let mut mag = tiny("a fox", 5, 4, 3);
    mag["cache"] = json!("mag");
    let r = srv.req("POST", "/v1/videos", Some(&mag));
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.error()["param"], "cache", "{}", r.text());
    let m = r.error()["message"].as_str().unwrap().to_string();
    assert!(
        m.contains("no calibration") && m.contains(&missing.display().to_string()),
        "{m}"
    );
    assert_eq!(
        srv.req("GET", "/v1/videos", None).text(),
        before,
        "nothing queued"
    );
    mag["num_inference_steps"] = json!(3);
    let id = srv.create(mag)["id"].as_str().unwrap().to_string();
    let j = srv.wait(&id, Duration::from_secs(120));
    assert_eq!(j["status"], "completed", "{j}");
    assert_eq!(j["timings"]["cache"]["method"], "mag", "{j}");
    assert!(path.exists());
}
