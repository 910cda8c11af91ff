//! `contentv serve` end to end: the binary on the built-in tiny model on the CPU, on an
//! ephemeral loopback port, driven by a small raw HTTP/1.1 client (and an SSE reader).
use std::collections::HashMap;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

#[path = "common/http.rs"]
mod http;
#[path = "common/webdriver.rs"]
mod webdriver;

use http::*;
use webdriver::{base64_decode, Browser};

#[test]
fn create_poll_events_content_list_delete() {
    if cpu_tests_done() {
        return;
    }
    let d = scratch("basic");
    let srv = Server::start(&d, &[]);
    // the page and the health check
    let page = srv.get("/");
    assert_eq!(page.status, 200);
    let html = String::from_utf8(page.body.clone()).unwrap();
    assert!(html.contains("<form") && html.contains("/v1/videos"));
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "the page loads nothing from elsewhere"
    );
    assert_eq!(srv.get("/health").json()["status"], "ok");
    assert!(srv.get("/").header("access-control-allow-origin").is_none());

    let v = srv.create(tiny("a red ball", 9, 3, 42));
    let id = v["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("video_") && id.len() == 38, "{id}");
    assert_eq!(v["object"], "video");
    assert_eq!(v["status"], "queued");
    assert_eq!(v["progress"], 0);
    assert_eq!(v["size"], "48x32");
    assert!(v["created_at"].as_u64().unwrap() > 1_600_000_000);

    // the event stream to the end
    let events = Sse::open(&srv, &id).all();
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.last(), Some(&"completed"), "{names:?}");
    let steps: Vec<&Value> = events
        .iter()
        .filter(|(n, _)| n == "step")
        .map(|(_, d)| d)
        .collect();
    // the stream may open after the first steps, but whatever it saw is in order
    for w in steps.windows(2) {
        assert!(w[1]["step"].as_u64() > w[0]["step"].as_u64());
        assert!(w[1]["progress"].as_u64() > w[0]["progress"].as_u64());
    }
    for s in &steps {
        assert_eq!(s["steps"], 3);
        assert!(s["seconds"].as_f64().unwrap() >= 0.0);
        assert!(s["eta_seconds"].as_f64().is_some());
    }
    let done = &events.last().unwrap().1["video"];
    assert_eq!(done["status"], "completed");
    assert_eq!(done["progress"], 100);

    let j = srv.job(&id);
    assert_eq!(j["status"], "completed");
    assert_eq!(j["progress"], 100);
    assert_eq!(j["seed"], 42);
    assert_eq!(j["num_frames"], 9);
    assert!(j["completed_at"].as_u64().is_some());
    assert!(j["command"].as_str().unwrap().contains("--seed 42"));

    // the content
    let c = srv.get(&format!("/v1/videos/{id}/content"));
    if contentv::io::video::writes_mp4() {
        assert_eq!(c.status, 200, "{}", c.text());
        assert_eq!(c.header("content-type"), Some("video/mp4"));
        let f = d.join("got.mp4");
        std::fs::write(&f, &c.body).unwrap();
        let vid = contentv::io::video::read_video(&f).unwrap();
        assert_eq!((vid.frames, vid.width, vid.height), (9, 48, 32));
        assert!((vid.fps - 12.0).abs() < 1e-6);
        let tags: HashMap<_, _> = vid.tags.into_iter().collect();
        assert!(
            tags.get("comment")
                .is_some_and(|c| c.contains("contentv generate") && c.contains("--seed 42")),
            "{tags:?}"
        );
        // HTTP Range, as a browser seeks
        let r = request(
            &srv.addr,
            "GET",
            &format!("/v1/videos/{id}/content"),
            &[("Range", "bytes=10-109")],
            None,
        );
        assert_eq!(r.status, 206);
        assert_eq!(r.body, c.body[10..110]);
        assert_eq!(
            r.header("content-range"),
            Some(format!("bytes 10-109/{}", c.body.len()).as_str())
        );
    } else {
        // PNG builds: the frames, one per request
        assert_eq!(c.status, 200);
        assert_eq!(c.header("content-type"), Some("image/png"));
        let f = d.join("videos").join(&id);
        let vid = contentv::io::video::read_video(&f).unwrap();
        assert_eq!((vid.frames, vid.width, vid.height), (9, 48, 32));
    }
    // the file is named by the id
    assert!(
        contentv::io::video::artifact_path(&d.join("videos").join(format!("{id}.mp4"))).exists()
    );

    // list, newest first, paged
    let v2 = srv.create(tiny("a blue cube", 5, 1, 1));
    let id2 = v2["id"].as_str().unwrap().to_string();
    srv.wait(&id2, Duration::from_secs(60));
    let l = srv.get("/v1/videos").json();
    assert_eq!(l["object"], "list");
    let ids: Vec<&str> = l["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [id2.as_str(), id.as_str()]);
    let p1 = srv.get("/v1/videos?limit=1").json();
    assert_eq!(p1["data"][0]["id"], id2.as_str());
    assert_eq!(p1["has_more"], true);
    let p2 = srv.get(&format!("/v1/videos?limit=1&after={id2}")).json();
    assert_eq!(p2["data"][0]["id"], id.as_str());
    assert_eq!(p2["has_more"], false);
    assert_eq!(srv.get("/v1/videos?limit=0").error()["param"], "limit");

    // metrics
    let m = String::from_utf8(srv.get("/metrics").body).unwrap();
    assert!(m.contains("contentv_jobs_completed_total 2"), "{m}");
    assert!(m.contains("contentv_queue_length 0"), "{m}");
    assert!(m.contains("# TYPE contentv_step_seconds summary"));
    assert!(m.contains("contentv_step_seconds_count 4"), "{m}");

    // delete a finished one: record and file go
    let r = srv.req("DELETE", &format!("/v1/videos/{id}"), None);
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["deleted"], true);
    assert_eq!(srv.get(&format!("/v1/videos/{id}")).status, 404);
    assert!(
        !contentv::io::video::artifact_path(&d.join("videos").join(format!("{id}.mp4"))).exists()
    );
    assert!(!d.join("jobs").join(format!("{id}.json")).exists());
}

#[test]
fn bad_requests_name_the_field() {
    if cpu_tests_done() {
        return;
    }
    let d = scratch("errors");
    let srv = Server::start(&d, &["--max-body", "4096"]);
    for (body, param) in [
        (json!({"size": "48x32"}), "prompt"),
        (json!({"prompt": "a", "size": "50x32"}), "size"),
        (json!({"prompt": "a", "size": "huge"}), "size"),
        (json!({"prompt": "a", "num_frames": 0}), "num_frames"),
        (
            json!({"prompt": "a", "num_inference_steps": "many"}),
            "num_inference_steps",
        ),
        (
            json!({"prompt": "a", "guidance_scale": 1000}),
            "guidance_scale",
        ),
        (json!({"prompt": "a", "fps": 0}), "fps"),
        (json!({"prompt": "a", "seed": -3}), "seed"),
        (json!({"prompt": "a", "seconds": "forever"}), "seconds"),
        (json!({"prompt": "a", "model": "sora-2"}), "model"),
        (json!({"prompt": "a", "resolution": "1080p"}), "resolution"),
    ] {
        let r = srv.req("POST", "/v1/videos", Some(&body));
        assert_eq!(r.status, 400, "{body}: {}", r.text());
        let e = r.error();
        assert_eq!(e["param"], param, "{body}: {e}");
        assert_eq!(e["type"], "invalid_request_error");
    }
    // the CLI's wording
    let e = srv
        .req(
            "POST",
            "/v1/videos",
            Some(&json!({"prompt": "a", "size": "50x32"})),
        )
        .error();
    assert!(
        e["message"].as_str().unwrap().contains("multiple of 16"),
        "{e}"
    );
    // not JSON
    let r = request(&srv.addr, "POST", "/v1/videos", &[], Some(b"{not json"));
    assert_eq!(r.status, 400);
    assert_eq!(r.error()["code"], "invalid_json");
    // too large
    let big = json!({"prompt": "x".repeat(10_000)}).to_string();
    let r = request(&srv.addr, "POST", "/v1/videos", &[], Some(big.as_bytes()));
    assert_eq!(r.status, 413, "{}", r.text());
    assert_eq!(r.error()["code"], "body_too_large");
    // unknown ids and routes
    for p in [
        "/v1/videos/video_00000000000000000000000000000000",
        "/v1/videos/video_00000000000000000000000000000000/content",
        "/v1/videos/video_00000000000000000000000000000000/events",
        "/v1/videos/..%2F..%2Fetc%2Fpasswd/content",
        "/nothing",
    ] {
        let r = srv.get(p);
        assert_eq!(r.status, 404, "{p}");
        r.error();
    }
    assert_eq!(
        srv.req(
            "DELETE",
            "/v1/videos/video_00000000000000000000000000000000",
            None
        )
        .status,
        404
    );
    // nothing was queued by any of it
    assert_eq!(
        srv.get("/v1/videos").json()["data"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
}

#[test]
fn cancel_queued_and_running() {
    if cpu_tests_done() {
        return;
    }
    let d = scratch("cancel");
    let srv = Server::start(&d, &[]);
    let a = srv.create(long("runs long"))["id"]
        .as_str()
        .unwrap()
        .to_string();
    // b must queue behind a running a (the worker may not have taken a yet on a busy machine)
    srv.wait_status(&a, "in_progress");
    let b = srv.create(tiny("waits", 5, 1, 2))["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(srv.job(&b)["queue_position"], 1);
    // cancel the queued one: it never runs
    let r = srv.req("DELETE", &format!("/v1/videos/{b}"), None);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["status"], "cancelled");
    // the running one stops at the next step
    let mut ev = Sse::open(&srv, &a);
    loop {
        let (n, _) = ev.next().expect("the stream ended before a step");
        if n == "step" {
            break;
        }
    }
    let r = srv.req("DELETE", &format!("/v1/videos/{a}"), None);
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(r.json()["cancel_requested"], true);
    let rest = ev.all();
    assert_eq!(rest.last().unwrap().0, "cancelled", "{rest:?}");
    let ja = srv.wait(&a, Duration::from_secs(30));
    assert_eq!(ja["status"], "cancelled");
    assert!(ja["step"].as_u64().unwrap() < 1000);
    assert_eq!(ja["error"]["code"], "cancelled");
    let jb = srv.job(&b);
    assert_eq!(
        (jb["status"].as_str(), jb["step"].as_u64()),
        (Some("cancelled"), Some(0))
    );
    assert_eq!(srv.get(&format!("/v1/videos/{a}/content")).status, 404);
    // the worker goes on with the next job
    let c = srv.create(tiny("after", 5, 1, 3))["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(srv.wait(&c, Duration::from_secs(60))["status"], "completed");
    // deleting a cancelled job removes it
    assert_eq!(
        srv.req("DELETE", &format!("/v1/videos/{a}"), None).json()["deleted"],
        true
    );
    let m = String::from_utf8(srv.get("/metrics").body).unwrap();
    assert!(m.contains("contentv_jobs_cancelled_total 2"), "{m}");
}

#[test]
fn api_key_queue_limit_and_host_rules() {
    if cpu_tests_done() {
        return;
    }
    // a non-loopback address needs a key
    let o = Command::new(BIN)
        .args([
            "serve",
            "--device",
            "cpu",
            "--host",
            "0.0.0.0",
            "--port",
            "0",
            "--data-dir",
        ])
        .arg(scratch("host"))
        .env("CONTENTV_FORCE_CPU", "1")
        .env_remove("CONTENTV_API_KEY")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--api-key"));

    let d = scratch("auth");
    let srv = Server::start(&d, &["--api-key", "s3cret", "--max-queue", "1"]);
    for (h, why) in [
        (None, "no key"),
        (Some("Bearer wrong"), "wrong key"),
        (Some("s3cret"), "no Bearer"),
    ] {
        let hv: Vec<(&str, &str)> = h.iter().map(|v| ("Authorization", *v)).collect();
        let r = request(&srv.addr, "GET", "/v1/videos", &hv, None);
        assert_eq!(r.status, 401, "{why}");
        assert_eq!(r.header("www-authenticate"), Some("Bearer"));
        assert_eq!(r.error()["type"], "authentication_error");
        let r = request(
            &srv.addr,
            "POST",
            "/v1/videos",
            &hv,
            Some(tiny("x", 5, 1, 1).to_string().as_bytes()),
        );
        assert_eq!(r.status, 401, "{why}");
        assert_eq!(request(&srv.addr, "GET", "/metrics", &hv, None).status, 401);
    }
    // the page and the health check are open
    assert_eq!(request(&srv.addr, "GET", "/", &[], None).status, 200);
    assert_eq!(request(&srv.addr, "GET", "/health", &[], None).status, 200);
    // one running, one waiting, the next is refused
    let a = srv.create(long("running"))["id"]
        .as_str()
        .unwrap()
        .to_string();
    srv.wait_status(&a, "in_progress");
    let b = srv.create(tiny("waiting", 5, 1, 1))["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = srv.req("POST", "/v1/videos", Some(&tiny("refused", 5, 1, 1)));
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.error()["code"], "queue_full");
    assert!(r.header("retry-after").is_some());
    // the server answers while the model works
    let t = Instant::now();
    for _ in 0..20 {
        assert_eq!(srv.get("/health").status, 200);
    }
    assert!(t.elapsed() < Duration::from_secs(10));
    srv.req("DELETE", &format!("/v1/videos/{a}"), None);
    assert_eq!(srv.wait(&b, Duration::from_secs(60))["status"], "completed");
    assert_eq!(srv.job(&a)["status"], "cancelled");
    let m = String::from_utf8(srv.get("/metrics").body).unwrap();
    assert!(
        m.contains("contentv_jobs_rejected_queue_full_total 1"),
        "{m}"
    );
}

#[test]
fn restart_keeps_queue_and_gallery() {
    if cpu_tests_done() {
        return;
    }
    let d = scratch("restart");
    let (done, running, queued) = {
        let srv = Server::start(&d, &[]);
        let done = srv.create(tiny("finished before", 5, 2, 5))["id"]
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(
            srv.wait(&done, Duration::from_secs(60))["status"],
            "completed"
        );
        let running = srv.create(long("running at the crash"))["id"]
            .as_str()
            .unwrap()
            .to_string();
        let queued = srv.create(tiny("queued at the crash", 5, 1, 6))["id"]
            .as_str()
            .unwrap()
            .to_string();
        srv.wait_status(&running, "in_progress");
        // a second server on the same folder is refused while this one lives
        let o = Command::new(BIN)
            .args(["serve", "--device", "cpu", "--port", "0", "--data-dir"])
            .arg(&d)
            .env("CONTENTV_FORCE_CPU", "1")
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2));
        assert!(String::from_utf8_lossy(&o.stderr).contains("another contentv serve"));
        (done, running, queued)
        // dropped: SIGKILL, as a crash
    };
    let srv = Server::start(&d, &[]);
    let j = srv.job(&done);
    assert_eq!(j["status"], "completed");
    assert_eq!(srv.get(&format!("/v1/videos/{done}/content")).status, 200);
    // the one that ran is queued again (and runs first), with a note
    let r = srv.job(&running);
    assert!(
        ["queued", "in_progress"].contains(&r["status"].as_str().unwrap()),
        "{r}"
    );
    assert!(r["warnings"].to_string().contains("queued again"), "{r}");
    let q = srv.job(&queued);
    assert_eq!(q["status"], "queued");
    let l = srv.get("/v1/videos").json();
    let ids: Vec<&str> = l["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [queued.as_str(), running.as_str(), done.as_str()]);
    srv.wait_status(&running, "in_progress");
    srv.req("DELETE", &format!("/v1/videos/{running}"), None);
    assert_eq!(
        srv.wait(&queued, Duration::from_secs(60))["status"],
        "completed"
    );
    assert_eq!(srv.job(&running)["status"], "cancelled");
}

/// 50 clients at once: create, then follow the events (even) or poll (odd); every fifth
/// cancels its job. Every accepted job ends completed or cancelled, none is lost, the server
/// answers /health throughout and its memory stays bounded.
#[test]
fn load_fifty_clients() {
    if cpu_tests_done() {
        return;
    }
    let d = scratch("load");
    let srv = Arc::new(Server::start(&d, &["--max-queue", "64"]));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let health = {
        let (srv, stop) = (srv.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let t = Instant::now();
                let r = srv.get("/health");
                assert_eq!(r.status, 200);
                assert!(t.elapsed() < Duration::from_secs(5), "slow /health");
                n += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            n
        })
    };
    let clients: Vec<_> = (0..50)
        .map(|i| {
            let srv = srv.clone();
            std::thread::spawn(move || {
                let body = json!({"prompt": format!("client {i}"), "size": "16x16", "num_frames": 1, "num_inference_steps": 1, "seed": i});
                let v = srv.create(body);
                let id = v["id"].as_str().unwrap().to_string();
                if i % 5 == 0 {
                    srv.req("DELETE", &format!("/v1/videos/{id}"), None);
                }
                let end = if i % 2 == 0 {
                    let ev = Sse::open(&srv, &id).all();
                    ev.last().unwrap().0.clone()
                } else {
                    srv.wait(&id, Duration::from_secs(300))["status"].as_str().unwrap().to_string()
                };
                (id, end)
            })
        })
        .collect();
    let results: Vec<(String, String)> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(health.join().unwrap() > 0);
    for (i, (id, end)) in results.iter().enumerate() {
        let j = srv.job(id);
        assert_eq!(&j["status"], end.as_str(), "{id}");
        if i % 5 == 0 {
            assert!(
                ["completed", "cancelled"].contains(&end.as_str()),
                "{i}: {end}"
            );
        } else {
            assert_eq!(end, "completed", "{i}");
        }
    }
    let l = srv.get("/v1/videos?limit=100").json();
    assert_eq!(l["data"].as_array().unwrap().len(), 50);
    let m = String::from_utf8(srv.get("/metrics").body).unwrap();
    assert!(m.contains("contentv_jobs_submitted_total 50"), "{m}");
    assert!(m.contains("contentv_jobs_failed_total 0"), "{m}");
    // bounded memory: the peak resident set of the server
    let status = std::fs::read_to_string(format!("/proc/{}/status", srv.pid())).unwrap();
    let hwm_kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap()
        .parse()
        .unwrap();
    assert!(hwm_kb < 2 << 20, "server peak RSS {hwm_kb} kB");
}

// ----- the page in a real browser (headless Chromium over WebDriver, tests/common/webdriver.rs)

/// The page in headless Chromium: fill the form, Generate, the progress bar moves and a preview
/// appears, the finished video loads and plays (readyState >= 2, duration = frames / fps), a
/// second job is cancelled from the page; a screenshot is saved with the test's output
/// (target/tmp/serve-tests/browser/page.png). Skipped (and says so) without chromium and
/// chromedriver, unless CONTENTV_REQUIRE_BROWSER=1 (scripts/test.sh, which installs them).
#[test]
fn page_in_a_real_browser() {
    if cpu_tests_done() {
        return;
    }
    let Some((driver, chrome)) = Browser::find_tools() else {
        if std::env::var("CONTENTV_REQUIRE_BROWSER").is_ok_and(|v| v == "1") {
            panic!("CONTENTV_REQUIRE_BROWSER=1 but chromium / chromedriver are not installed (scripts/deps.sh installs them)");
        }
        println!("SKIP: chromium and chromedriver are not installed: the browser test of the page did not run");
        return;
    };
    let d = scratch("browser");
    let srv = Server::start(&d, &[]);
    let b = Browser::start(&driver, &chrome);
    b.call(
        "POST",
        "/url",
        Some(json!({"url": format!("http://{}/", srv.addr)})),
    );
    b.until(
        "the server's settings",
        Duration::from_secs(20),
        "return document.getElementById('server').textContent.includes('device:')",
    );
    b.fill("#prompt", "a red ball bouncing");
    b.fill("#width", "48");
    b.fill("#height", "32");
    b.fill("#num_frames", "9");
    b.fill("#fps", "12");
    b.fill("#num_inference_steps", "8");
    b.fill("#seed", "3");
    b.click("#generate");
    // progress and a preview while it runs
    let mut progress_seen = Vec::new();
    let mut preview = false;
    let t = Instant::now();
    loop {
        let v = b.run("const f = document.querySelector('.job .fill'); const p = document.querySelector('.job img.preview');
            const c = document.querySelector('.card video');
            return [f ? parseFloat(f.style.width) : null, !!(p && p.naturalWidth > 0), !!c];");
        if let Some(x) = v[0].as_f64() {
            progress_seen.push(x);
        }
        preview |= v[1] == true;
        if v[2] == true {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "the video never reached the gallery"
        );
        std::thread::sleep(Duration::from_millis(30));
    }
    assert!(
        progress_seen.iter().any(|&p| p > 0.0 && p < 100.0),
        "the progress bar never moved: {progress_seen:?}"
    );
    assert!(preview, "no preview appeared");
    // the video loads and plays
    let v = b.until(
        "the video playing",
        Duration::from_secs(30),
        "const v = document.querySelector('.card video');
         if (v.paused) v.play().catch(() => {});
         return v.readyState >= 2 && v.currentTime > 0 ? [v.readyState, v.duration, v.currentTime] : null;",
    );
    let duration = v[1].as_f64().unwrap();
    assert!((duration - 9.0 / 12.0).abs() < 0.1, "duration {duration}");
    assert!(b
        .run("return document.querySelector('.card code').textContent")
        .as_str()
        .unwrap()
        .contains("contentv generate"));
    // a second job, cancelled from the page
    b.fill("#prompt", "to be cancelled");
    b.fill("#num_inference_steps", "1000");
    b.click("#generate");
    b.until("the running job", Duration::from_secs(30), "const s = document.querySelector('.job[data-status=\"in_progress\"] .cancel'); return !!s;");
    b.click(".job .cancel");
    b.until("the cancelled job in the gallery", Duration::from_secs(30),
        "return [...document.querySelectorAll('.card .err')].some(e => e.textContent.startsWith('cancelled'));");
    let l = srv.get("/v1/videos").json();
    let st: Vec<&str> = l["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["status"].as_str().unwrap())
        .collect();
    assert_eq!(st, ["cancelled", "completed"]);
    // the screenshot
    let png = base64_decode(b.call("GET", "/screenshot", None).as_str().unwrap());
    assert!(png.starts_with(b"\x89PNG"));
    std::fs::write(d.join("page.png"), &png).unwrap();
    println!("screenshot: {}", d.join("page.png").display());
}
