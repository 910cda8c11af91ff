//! The `contentv` binary end to end on the built-in tiny model, on the CPU, at tiny sizes.
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use contentv::io::video::{artifact_path, read_video, writes_mp4};

const BIN: &str = env!("CARGO_BIN_EXE_contentv");

fn tiny() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/tiny-model")
}

/// A fresh scratch folder under target/ (removed at the start of each test).
fn scratch(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("cli-tests")
        .join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("CONTENTV_FORCE_CPU", "1")
        .output()
        .expect("cannot start the contentv binary")
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Tiny generation flags: 9 frames of 48x32, 2 steps, CPU.
fn tiny_args<'a>(out: &'a str, seed: &'a str) -> Vec<&'a str> {
    vec![
        "generate",
        "--device",
        "cpu",
        "--prompt",
        "a red ball bouncing",
        "--frames",
        "9",
        "--width",
        "48",
        "--height",
        "32",
        "--steps",
        "2",
        "--fps",
        "12",
        "--seed",
        seed,
        "--output",
        out,
    ]
}

/// Entries of `dir` (hidden ones included), sorted.
fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn ffprobe(path: &Path) -> Option<serde_json::Value> {
    let o = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-count_frames",
            "-select_streams",
            "v:0",
            "-show_entries",
        ])
        .arg("stream=codec_name,width,height,pix_fmt,avg_frame_rate,nb_read_frames,duration")
        .args(["-of", "json"])
        .arg(path)
        .output()
        .ok()?;
    if !o.status.success() {
        panic!(
            "ffprobe failed on {}: {}",
            path.display(),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).ok()?;
    Some(v["streams"][0].clone())
}

#[test]
fn help_and_info() {
    let o = run(&["--help"]);
    assert!(o.status.success(), "{}", text(&o));
    let h = String::from_utf8_lossy(&o.stdout);
    for w in ["generate", "decode", "info"] {
        assert!(h.contains(w), "help lacks {w}: {h}");
    }
    let o = run(&["generate", "--help"]);
    let h = String::from_utf8_lossy(&o.stdout);
    for w in [
        "--prompts",
        "--shard",
        "--seed",
        "--frames",
        "4k+1",
        "--init-noise",
        "--save-latents",
        "--json",
        "--crf",
    ] {
        assert!(h.contains(w), "generate --help lacks {w}");
    }
    let o = run(&["info", "--model", tiny().to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["ok"], true);
    assert!(j["params_total"].as_u64().unwrap() > 1_000_000);
    for c in [
        "transformer",
        "vae",
        "text_encoder",
        "text_encoder_2",
        "text_encoder_3",
        "scheduler",
    ] {
        assert_eq!(j["components"][c]["ok"], true, "{c}");
    }
    // default model: the tiny one, with a note saying so
    let o = run(&["info"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("noise"),
        "{}",
        text(&o)
    );
    // a broken model folder
    let d = scratch("info-broken");
    let o = run(&["info", "--model", d.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("transformer/"),
        "{}",
        text(&o)
    );
}

#[test]
fn generate_video_and_determinism() {
    let d = scratch("generate");
    let a = d.join("a.mp4");
    let b = d.join("b.mp4");
    let lat = d.join("a.latents.safetensors");
    let mut args = tiny_args(a.to_str().unwrap(), "1234");
    args.extend(["--json", "--save-latents", lat.to_str().unwrap()]);
    let o = run(&args);
    assert!(o.status.success(), "{}", text(&o));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("--json output: {e}\n{}", text(&o)));
    assert_eq!(j["frames"], 9);
    assert_eq!(j["seed"], 1234);
    assert_eq!(j["fps"], 12);
    for k in ["encode", "denoise", "decode", "write", "load"] {
        assert!(
            j["timings_s"][k].as_f64().is_some(),
            "timing {k} missing: {j}"
        );
    }
    assert!(j["memory"]["host_peak_bytes"].as_u64().is_some());

    let o = run(&tiny_args(b.to_str().unwrap(), "1234"));
    assert!(o.status.success(), "{}", text(&o));

    let va = read_video(&artifact_path(&a)).unwrap();
    let vb = read_video(&artifact_path(&b)).unwrap();
    assert_eq!((va.frames, va.width, va.height), (9, 48, 32));
    assert!((va.fps - 12.0).abs() < 1e-9, "fps {}", va.fps);
    assert!(
        va.rgb == vb.rgb,
        "same seed and settings gave different frames"
    );
    if writes_mp4() {
        assert_eq!(va.codec, "h264");
        assert!(
            (va.duration_s - 0.75).abs() < 0.02,
            "duration {} (9 frames at 12 fps = 0.75 s)",
            va.duration_s
        );
        if let Some(p) = ffprobe(&a) {
            assert_eq!(p["nb_read_frames"], "9", "{p}");
            assert_eq!(p["width"], 48);
            assert_eq!(p["height"], 32);
            assert_eq!(p["avg_frame_rate"], "12/1");
            assert_eq!(p["pix_fmt"], "yuv420p");
            assert_eq!(p["codec_name"], "h264");
            let dur: f64 = p["duration"].as_str().unwrap().parse().unwrap();
            assert!((dur - 0.75).abs() < 1e-6, "{p}");
        }
    }
    // A different seed gives a different video.
    let c = d.join("c.mp4");
    let o = run(&tiny_args(c.to_str().unwrap(), "1235"));
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        read_video(&artifact_path(&c)).unwrap().rgb != va.rgb,
        "seed has no effect"
    );

    // decode the saved latents: the same frames as the generated video
    let e = d.join("decoded.mp4");
    let o = run(&[
        "decode",
        "--device",
        "cpu",
        "--latents",
        lat.to_str().unwrap(),
        "--output",
        e.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let ve = read_video(&artifact_path(&e)).unwrap();
    assert_eq!((ve.frames, ve.width, ve.height), (9, 48, 32));
    assert!(
        (ve.fps - 12.0).abs() < 1e-9,
        "decode takes the fps stored with the latents"
    );
    assert!(
        ve.rgb == va.rgb,
        "decode of the saved latents differs from the generated video"
    );
    // no temporary files left
    assert!(
        entries(&d).iter().all(|n| !n.starts_with('.')),
        "{:?}",
        entries(&d)
    );
}

#[test]
fn random_seed_is_printed_and_no_guidance_works() {
    let d = scratch("random-seed");
    let out = d.join("r.mp4");
    let o = run(&[
        "generate",
        "--device",
        "cpu",
        "--prompt",
        "x",
        "--frames",
        "5",
        "--width",
        "32",
        "--height",
        "32",
        "--steps",
        "1",
        "--guidance",
        "1",
        "--output",
        out.to_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["seed_was_random"], true);
    let seed = j["seed"].as_u64().unwrap();
    assert!(
        String::from_utf8_lossy(&o.stderr).contains(&seed.to_string()),
        "seed not printed: {}",
        text(&o)
    );
    assert!(artifact_path(&out).exists());
}

#[test]
fn frame_rounding_warns() {
    let d = scratch("rounding");
    let out = d.join("x.mp4");
    let mut a = tiny_args(out.to_str().unwrap(), "1");
    let i = a.iter().position(|s| *s == "9").unwrap();
    a[i] = "8"; // -> 5
    a.push("--json");
    let o = run(&a);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("rounded down to 5"),
        "{}",
        text(&o)
    );
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["frames"], 5);
    assert_eq!(read_video(&artifact_path(&out)).unwrap().frames, 5);
}

#[test]
fn bad_inputs_fail_cleanly_and_leave_no_file() {
    let d = scratch("bad");
    let out = d.join("out/x.mp4");
    let outs = out.to_str().unwrap().to_string();
    // a model folder lacking the transformer
    let partial = d.join("partial-model");
    std::fs::create_dir_all(&partial).unwrap();
    for c in [
        "vae",
        "text_encoder",
        "text_encoder_2",
        "text_encoder_3",
        "tokenizer",
        "tokenizer_2",
        "tokenizer_3",
        "scheduler",
    ] {
        std::os::unix::fs::symlink(tiny().join(c), partial.join(c)).unwrap();
    }
    // a regular file where the output folder should be
    let blocker = d.join("blocker");
    std::fs::write(&blocker, b"x").unwrap();
    let under_file = blocker.join("sub/x.mp4");
    // noise of the wrong shape
    let noise = d.join("noise.safetensors");
    {
        let data = vec![0u8; 4 * 16];
        let view = safetensors::tensor::TensorView::new(
            safetensors::Dtype::F32,
            vec![1, 16, 1, 1, 1],
            &data,
        )
        .unwrap();
        std::fs::write(
            &noise,
            safetensors::serialize([("noise", view)], None).unwrap(),
        )
        .unwrap();
    }
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["--frames", "0"]
                .into_iter()
                .map(String::from)
                .collect(),
            "frames",
        ),
        (
            vec!["--frames", "100000"]
                .into_iter()
                .map(String::from)
                .collect(),
            "frames",
        ),
        (
            vec!["--steps", "0"].into_iter().map(String::from).collect(),
            "steps",
        ),
        (
            vec!["--steps", "100000"]
                .into_iter()
                .map(String::from)
                .collect(),
            "steps",
        ),
        (
            vec!["--width", "50"]
                .into_iter()
                .map(String::from)
                .collect(),
            "multiple of 16",
        ),
        (
            vec!["--height", "0"]
                .into_iter()
                .map(String::from)
                .collect(),
            "multiple of 16",
        ),
        (
            vec!["--guidance", "-3"]
                .into_iter()
                .map(String::from)
                .collect(),
            "guidance",
        ),
        (
            vec!["--shift", "0"].into_iter().map(String::from).collect(),
            "shift",
        ),
        (
            vec!["--fps", "0"].into_iter().map(String::from).collect(),
            "fps",
        ),
        (
            vec!["--crf", "99"].into_iter().map(String::from).collect(),
            "crf",
        ),
        (
            vec!["--prompt", ""].into_iter().map(String::from).collect(),
            "prompt",
        ),
        (
            vec!["--model", "/nonexistent/contentv-model"]
                .into_iter()
                .map(String::from)
                .collect(),
            "does not exist",
        ),
        (
            vec!["--model".to_string(), partial.to_str().unwrap().to_string()],
            "transformer/",
        ),
        (
            vec!["--vram-budget", "nan"]
                .into_iter()
                .map(String::from)
                .collect(),
            "vram-budget",
        ),
        (
            vec!["--vram-budget", "0"]
                .into_iter()
                .map(String::from)
                .collect(),
            "vram-budget",
        ),
        (
            vec![
                "--init-noise".to_string(),
                noise.to_str().unwrap().to_string(),
            ],
            "shape",
        ),
        (
            vec!["--init-noise", "/nonexistent/noise.safetensors"]
                .into_iter()
                .map(String::from)
                .collect(),
            "does not exist",
        ),
        (
            vec!["--device", "gpu"]
                .into_iter()
                .map(String::from)
                .collect(),
            "gpu",
        ),
        (
            vec!["--shard", "0/2"]
                .into_iter()
                .map(String::from)
                .collect(),
            "batch",
        ),
    ];
    for (extra, want) in &cases {
        let mut a: Vec<String> = tiny_args(&outs, "1")
            .into_iter()
            .map(String::from)
            .collect();
        // later flags override earlier ones only for clap "overrides"; replace instead
        for pair in extra.chunks(2) {
            if let Some(i) = a.iter().position(|s| s == &pair[0]) {
                a[i + 1] = pair[1].clone();
            } else {
                a.extend(pair.iter().cloned());
            }
        }
        let refs: Vec<&str> = a.iter().map(|s| s.as_str()).collect();
        let o = run(&refs);
        let all = text(&o);
        assert!(!o.status.success(), "{extra:?} should fail:\n{all}");
        assert!(
            o.status.code().is_some() && o.status.code() != Some(101),
            "{extra:?}: not a clean exit:\n{all}"
        );
        assert!(
            all.to_lowercase().contains(&want.to_lowercase()),
            "{extra:?}: the error should mention {want:?}:\n{all}"
        );
        assert!(
            !all.contains("panicked") && !all.contains("internal error"),
            "{extra:?} panicked:\n{all}"
        );
        assert!(
            !artifact_path(&out).exists(),
            "{extra:?} left {}",
            out.display()
        );
        assert!(
            entries(&d.join("out")).is_empty(),
            "{extra:?} left files: {:?}",
            entries(&d.join("out"))
        );
    }
    // unwritable output location
    let o = run(&tiny_args(under_file.to_str().unwrap(), "1"));
    assert!(!o.status.success());
    assert!(text(&o).contains("output folder"), "{}", text(&o));
    if writes_mp4() {
        let o = run(&tiny_args(d.join("x.avi").to_str().unwrap(), "1"));
        assert!(
            !o.status.success() && text(&o).contains(".mp4"),
            "{}",
            text(&o)
        );
    }
    // missing batch file, bad decode input
    let o = run(&[
        "generate",
        "--device",
        "cpu",
        "--prompts",
        "/nonexistent/x.jsonl",
    ]);
    assert!(
        !o.status.success() && text(&o).contains("batch file"),
        "{}",
        text(&o)
    );
    let o = run(&[
        "decode",
        "--device",
        "cpu",
        "--latents",
        noise.to_str().unwrap(),
        "--output",
        &outs,
    ]);
    assert!(
        !o.status.success() && text(&o).contains("latents"),
        "{}",
        text(&o)
    );
    assert!(!artifact_path(&out).exists());
}

#[test]
fn batch_mode_with_shards_covers_every_line_once() {
    let d = scratch("batch");
    let jsonl = d.join("reqs.jsonl");
    let outdir = d.join("videos");
    let lines = [
        r#"{"prompt": "one", "seed": 1}"#,
        r#"{"prompt": "two", "seed": 2, "frames": 1}"#,
        r#"{"prompt": "three" "seed": 3}"#, // malformed JSON
        "",
        r#"{"prompt": "four", "seed": 4, "width": 50}"#, // invalid value
        r#"{"prompt": "five", "seed": 5, "negative_prompt": "blurry"}"#,
        r#"{"prompt": "six", "seed": 6, "model": "/x"}"#, // whole-run field
        r#"{"prompt": "seven", "seed": 7, "guidance": 1.0}"#,
    ];
    std::fs::write(&jsonl, lines.join("\n")).unwrap();
    let good = [0usize, 1, 4, 6]; // request indices (blank line skipped) that should succeed
    let bad = [2usize, 3, 5];
    let mut seen: Vec<(usize, String)> = Vec::new();
    for shard in ["0/3", "1/3", "2/3"] {
        let o = run(&[
            "generate",
            "--device",
            "cpu",
            "--prompts",
            jsonl.to_str().unwrap(),
            "--shard",
            shard,
            "--output-dir",
            outdir.to_str().unwrap(),
            "--frames",
            "5",
            "--width",
            "32",
            "--height",
            "32",
            "--steps",
            "1",
            "--json",
        ]);
        let j: serde_json::Value =
            serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}\n{}", text(&o)));
        let (s_i, s_n): (usize, usize) = (shard[..1].parse().unwrap(), 3);
        for r in j["results"].as_array().unwrap() {
            let idx = r["index"].as_u64().unwrap() as usize;
            assert_eq!(idx % s_n, s_i, "shard {shard} ran request {idx}");
            seen.push((idx, r["status"].as_str().unwrap().to_string()));
        }
        let failed = j["failed"].as_u64().unwrap();
        assert_eq!(o.status.success(), failed == 0, "{}", text(&o));
    }
    seen.sort();
    let idx: Vec<usize> = seen.iter().map(|s| s.0).collect();
    assert_eq!(
        idx,
        (0..7).collect::<Vec<_>>(),
        "every request exactly once: {seen:?}"
    );
    for (i, st) in &seen {
        if good.contains(i) {
            assert_eq!(st, "ok", "request {i}");
            let p = artifact_path(&outdir.join(format!("reqs_{i:05}.mp4")));
            let v = read_video(&p).unwrap();
            assert_eq!(v.frames, if *i == 1 { 1 } else { 5 });
        } else {
            assert!(bad.contains(i));
            assert_eq!(st, "failed", "request {i}");
        }
    }
    // a re-run skips what exists
    let o = run(&[
        "generate",
        "--device",
        "cpu",
        "--prompts",
        jsonl.to_str().unwrap(),
        "--output-dir",
        outdir.to_str().unwrap(),
        "--frames",
        "5",
        "--width",
        "32",
        "--height",
        "32",
        "--steps",
        "1",
        "--json",
    ]);
    let j: serde_json::Value =
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}\n{}", text(&o)));
    assert_eq!(j["skipped"], 4, "{j}");
    assert_eq!(j["ok"], 0);
    assert_eq!(j["failed"], 3);
    assert!(!o.status.success());
    assert!(
        entries(&outdir).iter().all(|n| !n.starts_with('.')),
        "{:?}",
        entries(&outdir)
    );
}

/// Every memory mode runs end to end on the tiny model. Offload and streaming do not change
/// the arithmetic (identical latents); INT8 stays close; the tiled VAE stays close.
#[test]
fn memory_modes_generate_the_same_video() {
    let d = scratch("memory-modes");
    let gen = |name: &str, extra: &[&str]| -> Vec<f32> {
        let out = d.join(format!("{name}.mp4"));
        let lat = d.join(format!("{name}.latents.safetensors"));
        let mut args = tiny_args(out.to_str().unwrap(), "77");
        args.extend(["--save-latents", lat.to_str().unwrap()]);
        args.extend_from_slice(extra);
        let o = run(&args);
        assert!(o.status.success(), "{extra:?}:\n{}", text(&o));
        assert!(artifact_path(&out).exists(), "{extra:?}: no video");
        contentv::model::pipeline::load_latents(&lat).unwrap().data
    };
    let base = gen("resident", &[]);
    assert_eq!(
        gen("model", &["--offload", "model"]),
        base,
        "--offload model changed the latents"
    );
    assert_eq!(
        gen("sequential", &["--offload", "sequential"]),
        base,
        "--offload sequential changed the latents"
    );
    assert_eq!(
        gen("budget", &["--vram-budget", "1"]),
        base,
        "--vram-budget changed the latents"
    );
    assert_eq!(
        gen("tiled", &["--vae-tiling"]),
        base,
        "--vae-tiling changed the latents"
    );
    let q = gen("int8", &["--quantize", "int8", "--offload", "sequential"]);
    let (mut dot, mut nq, mut nb) = (0f64, 0f64, 0f64);
    for (a, b) in q.iter().zip(&base) {
        dot += (*a as f64) * (*b as f64);
        nq += (*a as f64).powi(2);
        nb += (*b as f64).powi(2);
    }
    let cos = dot / (nq.sqrt() * nb.sqrt());
    assert!(cos > 0.999, "INT8 latents cosine {cos}");
    assert!(q != base, "--quantize int8 had no effect");
}
