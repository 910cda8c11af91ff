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

/// A batch run of `jsonl` into `outdir`: 5 frames of 32x32, 1 step, CPU, JSON summary, plus
/// `extra` flags.
fn run_batch(jsonl: &Path, outdir: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
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
    ];
    args.extend_from_slice(extra);
    run(&args)
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

    let lat_b = d.join("b.latents.safetensors");
    let mut args_b = tiny_args(b.to_str().unwrap(), "1234");
    args_b.extend(["--save-latents", lat_b.to_str().unwrap()]);
    let o = run(&args_b);
    assert!(o.status.success(), "{}", text(&o));
    // Byte-reproducible: the same model, flags and seed give the same files (the latents'
    // metadata in a fixed order, x264 with a fixed thread count).
    assert!(
        std::fs::read(&lat).unwrap() == std::fs::read(&lat_b).unwrap(),
        "two identical runs wrote different latents files"
    );
    if writes_mp4() {
        assert!(
            std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap(),
            "two identical runs wrote different MP4 files"
        );
    }

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
    // a file with two tensors, neither named "latents" (one tensor of any name is taken)
    let two = d.join("two.safetensors");
    {
        let data = vec![0u8; 4 * 16];
        let v = || {
            safetensors::tensor::TensorView::new(
                safetensors::Dtype::F32,
                vec![1, 16, 1, 1, 1],
                &data,
            )
            .unwrap()
        };
        std::fs::write(
            &two,
            safetensors::serialize([("noise", v()), ("other", v())], None).unwrap(),
        )
        .unwrap();
    }
    let o = run(&[
        "decode",
        "--device",
        "cpu",
        "--latents",
        two.to_str().unwrap(),
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
        let o = run_batch(&jsonl, &outdir, &["--shard", shard]);
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
    let o = run_batch(&jsonl, &outdir, &[]);
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

/// Every memory mode runs end to end on the tiny model on `device` ("cpu" or "cuda").
/// Offload and streaming do not change the arithmetic (identical latents); INT8 stays close;
/// the tiled VAE does not touch the latents. Returns the resident run's latents.
fn memory_modes(device: &str) -> Vec<f32> {
    let d = scratch(&format!("memory-modes-{device}"));
    let gen = |name: &str, extra: &[&str]| -> Vec<f32> {
        let out = d.join(format!("{name}.mp4"));
        let lat = d.join(format!("{name}.latents.safetensors"));
        let mut args = tiny_args(out.to_str().unwrap(), "77");
        args[2] = device;
        args.extend(["--save-latents", lat.to_str().unwrap()]);
        args.extend_from_slice(extra);
        let mut cmd = Command::new(BIN);
        cmd.args(&args);
        if device == "cpu" {
            cmd.env("CONTENTV_FORCE_CPU", "1");
        }
        let o = cmd.output().expect("cannot start the contentv binary");
        assert!(o.status.success(), "{device} {extra:?}:\n{}", text(&o));
        assert!(artifact_path(&out).exists(), "{device} {extra:?}: no video");
        contentv::model::pipeline::load_latents(&lat).unwrap().data
    };
    let base = gen("resident", &[]);
    for (name, extra) in [
        ("model", &["--offload", "model"][..]),
        ("sequential", &["--offload", "sequential"]),
        ("budget", &["--vram-budget", "1"]),
        ("tiled", &["--vae-tiling"]),
    ] {
        assert!(
            gen(name, extra) == base,
            "{device}: {extra:?} changed the latents"
        );
    }
    let q = gen("int8", &["--quantize", "int8", "--offload", "sequential"]);
    let cos = cosine(&q, &base);
    assert!(cos > 0.999, "{device}: INT8 latents cosine {cos}");
    assert!(q != base, "{device}: --quantize int8 had no effect");
    base
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let (mut dot, mut na, mut nb) = (0f64, 0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        dot += (*x as f64) * (*y as f64);
        na += (*x as f64).powi(2);
        nb += (*y as f64).powi(2);
    }
    dot / (na.sqrt() * nb.sqrt())
}

#[test]
fn memory_modes_generate_the_same_video() {
    memory_modes("cpu");
}

/// The same on the GPU (`contentv generate --device cuda` in every memory mode, weights
/// streamed through the copy stream), and the GPU's bf16 latents close to the CPU's f32 ones.
#[test]
fn memory_modes_on_the_gpu() {
    if let Some(why) = contentv::runtime::device::gpu_unavailable_reason() {
        println!("SKIP: {why}");
        return;
    }
    let gpu = memory_modes("cuda");
    let cpu = memory_modes("cpu");
    let cos = cosine(&gpu, &cpu);
    println!("GPU (bf16) vs CPU (f32) latents: cosine {cos:.6}");
    assert!(cos > 0.99, "GPU vs CPU latents cosine {cos}");
}

// ----- adversarial inputs ---------------------------------------------------------------------

/// Runs `args`, asserts a clean failure (non-zero status, no panic) whose message contains
/// `want` (case-insensitive). Returns the combined text.
fn fails_with(args: &[&std::ffi::OsStr], want: &str) -> String {
    let o = Command::new(BIN)
        .args(args)
        .env("CONTENTV_FORCE_CPU", "1")
        .output()
        .expect("cannot start the contentv binary");
    let all = text(&o);
    assert!(!o.status.success(), "{args:?} should fail:\n{all}");
    assert!(
        matches!(o.status.code(), Some(1) | Some(2)),
        "{args:?}: not a clean error exit:\n{all}"
    );
    assert!(
        !all.contains("panicked") && !all.contains("internal error"),
        "{args:?} panicked:\n{all}"
    );
    assert!(
        all.to_lowercase().contains(&want.to_lowercase()),
        "{args:?}: the error should mention {want:?}:\n{all}"
    );
    all
}

fn os(v: &[&str]) -> Vec<std::ffi::OsString> {
    v.iter().map(std::ffi::OsString::from).collect()
}

fn refs(v: &[std::ffi::OsString]) -> Vec<&std::ffi::OsStr> {
    v.iter().map(|s| s.as_os_str()).collect()
}

/// A copy of the tiny model made of hard links (cheap); replace a file with `replace` only
/// (never write through a link: that would change the original).
fn linked_tiny(dst: &Path) {
    fn walk(src: &Path, dst: &Path) {
        std::fs::create_dir_all(dst).unwrap();
        for e in std::fs::read_dir(src).unwrap().flatten() {
            let to = dst.join(e.file_name());
            if e.path().is_dir() {
                walk(&e.path(), &to);
            } else if std::fs::hard_link(e.path(), &to).is_err() {
                std::fs::copy(e.path(), &to).unwrap();
            }
        }
    }
    walk(&tiny(), dst);
}

fn replace(p: &Path, bytes: &[u8]) {
    std::fs::remove_file(p).unwrap();
    std::fs::write(p, bytes).unwrap();
}

fn write_latents(p: &Path, shape: &[usize], fill: f32) {
    let n: usize = shape.iter().product();
    let data: Vec<u8> = (0..n).flat_map(|_| fill.to_le_bytes()).collect();
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.to_vec(), &data)
        .unwrap();
    std::fs::write(
        p,
        safetensors::serialize([("latents", view)], None).unwrap(),
    )
    .unwrap();
}

#[test]
fn adversarial_flags_fail_cleanly_and_name_the_problem() {
    let d = scratch("adversarial-flags");
    let out = d.join("out/x.mp4");
    let outs = out.to_str().unwrap().to_string();
    let dir = d.join("a-folder.mp4");
    std::fs::create_dir_all(&dir).unwrap();
    let ro = d.join("read-only.mp4");
    std::fs::write(&ro, b"a finished video").unwrap();
    let mut perm = std::fs::metadata(&ro).unwrap().permissions();
    perm.set_readonly(true);
    std::fs::set_permissions(&ro, perm).unwrap();
    let long = d.join(format!("{}.mp4", "x".repeat(230)));
    let jsonl = d.join("one.jsonl");
    std::fs::write(&jsonl, "{\"prompt\": \"a\"}\n").unwrap();
    let file = d.join("plain-file");
    std::fs::write(&file, b"x").unwrap();
    let base = tiny_args(&outs, "1");
    let with = |extra: &[&str]| -> Vec<std::ffi::OsString> {
        let mut a: Vec<String> = base.iter().map(|s| s.to_string()).collect();
        for pair in extra.chunks(2) {
            match a.iter().position(|s| s == pair[0]) {
                Some(i) => a[i + 1] = pair[1].to_string(),
                None => a.extend(pair.iter().map(|s| s.to_string())),
            }
        }
        a.iter().map(std::ffi::OsString::from).collect()
    };
    let vae = tiny().join("vae");
    let cases: Vec<(Vec<std::ffi::OsString>, &str)> = vec![
        (with(&["--frames", "-1"]), "--frames"),
        (with(&["--frames", "1.5"]), "whole number"),
        (with(&["--seed", "-1"]), "--seed"),
        (with(&["--seed", "18446744073709551616"]), "too large"),
        (with(&["--crf", "-1"]), "--crf"),
        (with(&["--vram-budget", "-1"]), "--vram-budget"),
        (with(&["--vram-budget", "abc"]), "--vram-budget"),
        (with(&["--guidance", "nan"]), "guidance"),
        (with(&["--shift", "1e-30"]), "shift"),
        (with(&["--fps", "1000"]), "fps"),
        (with(&["--prompt", " \t\u{1}\u{7f} "]), "prompt is empty"),
        (with(&["--output", dir.to_str().unwrap()]), "is a folder"),
        (
            with(&["--output", d.join(".mp4").to_str().unwrap()]),
            "no name",
        ),
        (
            with(&["--output", d.join("x.avi").to_str().unwrap()]),
            ".mp4",
        ),
        (with(&["--output", ro.to_str().unwrap()]), "read-only"),
        (with(&["--output", long.to_str().unwrap()]), "bytes long"),
        (
            with(&["--save-latents", &format!("{}/out/./x.mp4", d.display())]),
            "output video itself",
        ),
        (
            with(&["--model", vae.to_str().unwrap()]),
            "single component",
        ),
        (with(&["--model", file.to_str().unwrap()]), "not a folder"),
        (with(&["--init-noise", d.to_str().unwrap()]), "folder"),
        (
            os(&[
                "generate",
                "--prompts",
                jsonl.to_str().unwrap(),
                "--shard",
                "1/1",
            ]),
            "counting from 0",
        ),
        (
            os(&[
                "generate",
                "--prompts",
                jsonl.to_str().unwrap(),
                "--shard",
                "-1/2",
            ]),
            "--shard",
        ),
        (
            os(&["generate", "--prompts", d.to_str().unwrap()]),
            "is a folder",
        ),
        (
            os(&[
                "generate",
                "--prompts",
                jsonl.to_str().unwrap(),
                "--save-latents",
                "l.safetensors",
            ]),
            "save_latents",
        ),
        (
            os(&[
                "generate",
                "--prompts",
                jsonl.to_str().unwrap(),
                "--output-dir",
                file.to_str().unwrap(),
            ]),
            "not a folder",
        ),
        (
            os(&["info", "--model", file.to_str().unwrap()]),
            "not a folder",
        ),
        (
            os(&["info", "--model", vae.to_str().unwrap()]),
            "single component",
        ),
    ];
    for (args, want) in &cases {
        fails_with(&refs(args), want);
    }
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStringExt;
        // a prompt that is not UTF-8: the message names the flag
        let mut a = with(&[]);
        let i = a.iter().position(|s| s == "--prompt").unwrap();
        a[i + 1] = std::ffi::OsString::from_vec(b"caf\xe9".to_vec());
        fails_with(&refs(&a), "--prompt");
    }
    assert!(!artifact_path(&out).exists());
    assert!(
        entries(&d.join("out")).is_empty(),
        "{:?}",
        entries(&d.join("out"))
    );
    let mut perm = std::fs::metadata(&ro).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perm.set_readonly(false);
    std::fs::set_permissions(&ro, perm).unwrap();
}

#[test]
fn batch_file_quirks() {
    let d = scratch("batch-quirks");
    let jsonl = d.join("q.jsonl");
    let vids = d.join("v");
    let same = d.join("same.mp4");
    let mut body: Vec<u8> = b"\xEF\xBB\xBF# a comment line\r\n".to_vec();
    let lines = [
        format!(
            r#"{{"prompt": "one", "seed": 1, "output": "{}"}}"#,
            same.display()
        ), // 0 ok
        "   \t".to_string(), // blank
        "// another comment".to_string(),
        r#"["prompt", "x"]"#.to_string(), // 1 not an object
        r#"{"prompt": "a", "prompt": "b"}"#.to_string(), // 2 duplicate key
        r#"{"prompt": "a", "promt": "b"}"#.to_string(), // 3 typo
        r#"{"prompt": "a", "frames": "9"}"#.to_string(), // 4 string for a number
        r#"{"prompt": "a", "seed": 99999999999999999999999}"#.to_string(), // 5 too large
        r#"{"prompt": "two", "seed": 2, "frames": 1.0, "negative_prompt": null}"#.to_string(), // 6 ok
        format!(r#"{{"prompt": "three", "output": "{}"}}"#, same.display()), // 7 same output
    ];
    for l in &lines {
        body.extend_from_slice(l.as_bytes());
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b"{\"prompt\": \"caf\xe9\"}\n"); // 8 not UTF-8
    std::fs::write(&jsonl, &body).unwrap();
    let o = run_batch(&jsonl, &vids, &[]);
    let all = text(&o);
    assert_eq!(o.status.code(), Some(1), "{all}");
    assert!(
        !all.contains("panicked") && !all.contains("internal error"),
        "{all}"
    );
    let j: serde_json::Value =
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}\n{all}"));
    assert_eq!(j["requests_in_file"], 9, "{j}");
    let res = j["results"].as_array().unwrap();
    let status = |i: usize| res[i]["status"].as_str().unwrap().to_string();
    let error = |i: usize| res[i]["error"].as_str().unwrap_or("").to_string();
    assert_eq!(status(0), "ok", "{j}");
    assert_eq!(status(6), "ok", "{j}");
    for (i, want) in [
        (1, "JSON array"),
        (2, "more than once"),
        (3, "did you mean \"prompt\""),
        (4, "without quotes"),
        (5, "too large"),
        (7, "also written by request 0"),
        (8, "not UTF-8"),
    ] {
        assert_eq!(status(i), "failed", "request {i}: {j}");
        assert!(
            error(i).contains(want),
            "request {i}: {} lacks {want:?}",
            error(i)
        );
    }
    assert_eq!(read_video(&artifact_path(&same)).unwrap().frames, 5);
    let six = generate_default(&vids, &jsonl, 6);
    assert_eq!(read_video(&artifact_path(&six)).unwrap().frames, 1);
    // line 7 did not overwrite line 0's video
    assert!(
        entries(&d).iter().all(|n| !n.starts_with('.')),
        "{:?}",
        entries(&d)
    );
}

fn generate_default(out_dir: &Path, jsonl: &Path, index: usize) -> PathBuf {
    contentv::cli::generate::default_batch_output(out_dir, jsonl, index)
}

#[test]
fn outputs_replace_cleanly_and_stale_partials_go() {
    let d = scratch("outputs");
    let out = d.join("v.mp4");
    // a partial file left by a killed run of this host (that process id does not exist)
    let stale = d.join(format!(
        ".v.partial-2147483632-0-{}.mp4",
        contentv::io::fsutil::host_tag()
    ));
    std::fs::write(&stale, b"half a video").unwrap();
    let o = run(&tiny_args(out.to_str().unwrap(), "5"));
    assert!(o.status.success(), "{}", text(&o));
    assert!(!stale.exists(), "the stale partial file was not removed");
    // an existing finished video is replaced (said so), no temporary file stays
    let o = run(&tiny_args(out.to_str().unwrap(), "6"));
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("replaced"), "{}", text(&o));
    assert_eq!(entries(&d), vec!["v.mp4".to_string()]);
    // a missing output folder is created; a unicode name works; --json survives a file name
    // that is not UTF-8
    let nested = d.join("new/sub/vidéo 🎬.mp4");
    let o = run(&tiny_args(nested.to_str().unwrap(), "7"));
    assert!(o.status.success(), "{}", text(&o));
    assert!(artifact_path(&nested).exists());
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStringExt;
        let mut name = d.clone().into_os_string().into_vec();
        name.extend_from_slice(b"/n\xffme.mp4");
        let bad = std::ffi::OsString::from_vec(name);
        let mut a: Vec<std::ffi::OsString> = os(&tiny_args("x", "8"));
        let i = a.iter().position(|s| s == "--output").unwrap();
        a[i + 1] = bad.clone();
        a.push("--json".into());
        let o = Command::new(BIN)
            .args(&a)
            .env("CONTENTV_FORCE_CPU", "1")
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", text(&o));
        let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert!(j["output"].as_str().unwrap().contains('\u{FFFD}'), "{j}");
        assert!(Path::new(&bad).exists());
    }
}

#[cfg(unix)]
#[test]
fn ctrl_c_leaves_no_file() {
    let d = scratch("interrupt");
    let out = d.join("i.mp4");
    let mut a = tiny_args(out.to_str().unwrap(), "9");
    let i = a.iter().position(|s| *s == "--steps").unwrap();
    a[i + 1] = "1000";
    let child = Command::new(BIN)
        .args(&a)
        .env("CONTENTV_FORCE_CPU", "1")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let k = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(k.success());
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(130), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("interrupted"));
    assert!(entries(&d).is_empty(), "{:?}", entries(&d));
}

#[test]
fn bad_model_folders_and_latents_fail_cleanly() {
    let d = scratch("bad-models");
    let out = d.join("x.mp4");
    let outs = out.to_str().unwrap().to_string();
    let trunc = d.join("truncated");
    linked_tiny(&trunc);
    let st = trunc.join("transformer/diffusion_pytorch_model.safetensors");
    let bytes = std::fs::read(&st).unwrap();
    replace(&st, &bytes[..bytes.len() / 2]);
    let badcfg = d.join("bad-config");
    linked_tiny(&badcfg);
    replace(
        &badcfg.join("transformer/config.json"),
        b"{\"num_layers\": 2,",
    );
    let empty = d.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    for (m, want) in [
        (&trunc, "truncated"),
        (&badcfg, "not valid JSON"),
        (&empty, "none of the components"),
    ] {
        let mut a = tiny_args(&outs, "1");
        a.extend(["--model", m.to_str().unwrap()]);
        fails_with(&refs(&os(&a)), want);
        fails_with(&refs(&os(&["info", "--model", m.to_str().unwrap()])), want);
    }
    // decode: bad latents files
    let dec = |lat: &Path, o: &Path, want: &str| {
        fails_with(
            &refs(&os(&[
                "decode",
                "--device",
                "cpu",
                "--latents",
                lat.to_str().unwrap(),
                "--output",
                o.to_str().unwrap(),
            ])),
            want,
        )
    };
    let txt = d.join("text.safetensors");
    std::fs::write(&txt, "this is not a safetensors file at all").unwrap();
    dec(&txt, &out, "not a valid safetensors");
    let rank3 = d.join("rank3.safetensors");
    write_latents(&rank3, &[16, 4, 4], 0.0);
    dec(&rank3, &out, "shape");
    let nan = d.join("nan.safetensors");
    write_latents(&nan, &[1, 16, 2, 4, 4], f32::NAN);
    dec(&nan, &out, "non-finite");
    let tall = d.join("tall.safetensors");
    write_latents(&tall, &[1, 16, 1, 600, 4], 0.0);
    dec(&tall, &out, "at most");
    dec(&d, &out, "folder");
    let same = d.join("lat.mp4");
    write_latents(&same, &[1, 16, 2, 4, 4], 0.0);
    dec(&same, &same, "destroy");
    assert!(!out.exists());
    assert!(
        entries(&d).iter().all(|n| !n.starts_with('.')),
        "{:?}",
        entries(&d)
    );
}

#[test]
fn quantize_never_destroys_its_input_or_unrelated_folders() {
    let d = scratch("quantize-guard");
    let model = d.join("model");
    linked_tiny(&model);
    let unrelated = d.join("my-data");
    std::fs::create_dir_all(&unrelated).unwrap();
    std::fs::write(unrelated.join("thesis.txt"), b"precious").unwrap();
    let m = model.to_str().unwrap();
    let q = |out: &str, force: bool| {
        let mut a = vec!["quantize", "--model", m, "--out", out];
        if force {
            a.push("--force");
        }
        os(&a)
    };
    let inside = model.join("q8");
    let dot = format!("{m}/.");
    for (args, want) in [
        (q(m, true), "--model folder itself"),
        (q(&dot, true), "--model folder itself"),
        (q(inside.to_str().unwrap(), false), "inside the --model"),
        (
            q(model.join("transformer").to_str().unwrap(), true),
            "inside the --model",
        ),
        (q(d.to_str().unwrap(), true), "contains the --model"),
        (q(unrelated.to_str().unwrap(), true), "nothing was deleted"),
        (
            q(unrelated.join("thesis.txt").to_str().unwrap(), true),
            "is a file",
        ),
    ] {
        fails_with(&refs(&args), want);
    }
    assert_eq!(
        std::fs::read(unrelated.join("thesis.txt")).unwrap(),
        b"precious"
    );
    assert!(!inside.exists());
    assert!(
        entries(&model).iter().all(|n| !n.starts_with('.')),
        "{:?}",
        entries(&model)
    );
    // --force replaces an earlier checkpoint (here a stand-in with model_index.json)
    let old = d.join("int8");
    std::fs::create_dir_all(&old).unwrap();
    std::fs::write(old.join("model_index.json"), b"{}").unwrap();
    let o = run(&[
        "quantize",
        "--model",
        m,
        "--out",
        old.to_str().unwrap(),
        "--force",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(old.join("transformer").is_dir() && old.join("vae").is_dir());
    assert!(
        entries(&d).iter().all(|n| !n.starts_with('.')),
        "{:?}",
        entries(&d)
    );
    // The unchanged components are copies: editing them in place leaves the original alone.
    for f in [
        "vae/config.json",
        "vae/diffusion_pytorch_model.safetensors",
        "tokenizer/vocab.json",
    ] {
        let (orig, copy) = (model.join(f), old.join(f));
        if !orig.exists() {
            continue;
        }
        let before = std::fs::read(&orig).unwrap();
        use std::io::Write;
        std::fs::OpenOptions::new()
            .append(true)
            .open(&copy)
            .unwrap()
            .write_all(b"edited")
            .unwrap();
        assert!(
            std::fs::read(&orig).unwrap() == before,
            "editing {} changed the original",
            copy.display()
        );
    }
}

/// A checkpoint whose tokenizer_3/ holds only spiece.model (as some downloads and mirrors do)
/// generates exactly what the same checkpoint with tokenizer.json generates.
#[test]
fn t5_tokenizer_from_spiece_model_alone() {
    let d = scratch("spiece-only");
    let model = d.join("model");
    linked_tiny(&model);
    std::fs::remove_file(model.join("tokenizer_3/tokenizer.json")).unwrap();
    let (a, b) = (d.join("a.safetensors"), d.join("b.safetensors"));
    for (m, lat) in [(tiny(), &a), (model.clone(), &b)] {
        let out = d.join("v.mp4");
        let mut args = tiny_args(out.to_str().unwrap(), "7");
        args.extend([
            "--model",
            m.to_str().unwrap(),
            "--save-latents",
            lat.to_str().unwrap(),
        ]);
        let o = run(&args);
        assert!(o.status.success(), "{}", text(&o));
    }
    let (a, b) = (std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    let lat = |bytes: &[u8]| {
        let st = contentv::io::safetensors::SafeTensorsFile::from_bytes("latents", bytes.to_vec())
            .unwrap();
        st.bytes("latents").unwrap().to_vec()
    };
    assert!(
        lat(&a) == lat(&b),
        "the latents differ between tokenizer.json and spiece.model"
    );
}

/// `--model owner/name` finds a download in the Hugging Face cache (HF_HUB_CACHE), a cache
/// entry folder resolves to its snapshot, and a repository id that is not there says how to
/// get it.
#[test]
fn model_from_hugging_face_cache() {
    let d = scratch("hf-cache");
    let cache = d.join("hub");
    let entry = cache.join("models--Acme--Tiny-Video");
    linked_tiny(&entry.join("snapshots/0123abcd"));
    std::fs::create_dir_all(entry.join("refs")).unwrap();
    std::fs::write(entry.join("refs/main"), "0123abcd").unwrap();
    let with_cache = |args: &[&str]| {
        Command::new(BIN)
            .args(args)
            .env("CONTENTV_FORCE_CPU", "1")
            .env("HF_HUB_CACHE", &cache)
            .output()
            .unwrap()
    };
    let o = with_cache(&["info", "--model", "Acme/Tiny-Video"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("0123abcd"), "{}", text(&o));
    let out = d.join("v.mp4");
    let mut args = tiny_args(out.to_str().unwrap(), "3");
    args.extend(["--model", entry.to_str().unwrap()]);
    let o = with_cache(&args);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("snapshot"), "{}", text(&o));
    let o = with_cache(&["info", "--model", "Acme/Missing"]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("huggingface-cli download Acme/Missing"),
        "{}",
        text(&o)
    );
}

/// A path a run writes only ever replaces a previous output of the same kind: never a weights
/// file, a config, the batch file, the init-noise file or a user's file (issue 16). Each refusal
/// names the flag and the path and leaves the file as it was.
#[test]
fn outputs_never_replace_inputs_or_user_files() {
    let d = scratch("no-overwrite");
    let m = d.join("model");
    linked_tiny(&m);
    let weights = m.join("transformer/diffusion_pytorch_model.safetensors");
    let config = m.join("transformer/config.json");
    let jsonl = d.join("batch.jsonl");
    std::fs::write(&jsonl, "{\"prompt\": \"a fox\"}\n").unwrap();
    let notes = d.join("notes.txt");
    std::fs::write(&notes, "my notes").unwrap();
    let fake_mp4 = d.join("holiday.mp4");
    std::fs::write(&fake_mp4, "not a video").unwrap();
    let snapshot = |p: &Path| std::fs::read(p).unwrap();
    let before: Vec<(PathBuf, Vec<u8>)> = [&weights, &config, &jsonl, &notes, &fake_mp4]
        .iter()
        .map(|p| (p.to_path_buf(), snapshot(p)))
        .collect();
    let out = d.join("v.mp4");
    let model = m.to_str().unwrap();
    let base = |output: &str| -> Vec<String> {
        let mut a: Vec<String> = tiny_args(output, "3")
            .into_iter()
            .map(String::from)
            .collect();
        a.extend(["--model".into(), model.into()]);
        a
    };
    for (flag, target) in [
        ("--save-latents", &weights),
        ("--save-latents", &config),
        ("--save-latents", &jsonl),
        ("--save-latents", &notes),
    ] {
        let mut a = base(out.to_str().unwrap());
        a.extend([flag.to_string(), target.to_str().unwrap().to_string()]);
        let o = run(&a.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(
            o.status.code(),
            Some(2),
            "{flag} {}: {}",
            target.display(),
            text(&o)
        );
        let t = text(&o);
        assert!(
            t.contains(flag)
                && t.contains(&target.display().to_string())
                && t.contains("only replaces its own"),
            "{t}"
        );
        assert!(!out.exists(), "a refused run wrote its video");
    }
    // an existing file with a video name that is not a video
    let o = run(&base(fake_mp4.to_str().unwrap())
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>());
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("is not a video"), "{}", text(&o));
    // batch lines follow the same rule
    let bad = d.join("bad.jsonl");
    std::fs::write(
        &bad,
        format!(
            "{{\"prompt\": \"a\", \"output\": {:?}, \"save_latents\": {:?}}}\n",
            d.join("b.mp4").to_str().unwrap(),
            notes.to_str().unwrap()
        ),
    )
    .unwrap();
    let o = run_batch(&bad, &d.join("batch-out"), &["--model", model]);
    assert!(text(&o).contains("only replaces its own"), "{}", text(&o));
    for (p, bytes) in &before {
        assert!(snapshot(p) == *bytes, "{} was changed", p.display());
    }
    // previous outputs of the same kind are replaced
    let lat = d.join("run.latents.safetensors");
    for _ in 0..2 {
        let mut a = base(out.to_str().unwrap());
        a.extend([
            "--save-latents".to_string(),
            lat.to_str().unwrap().to_string(),
        ]);
        let o = run(&a.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(o.status.success(), "{}", text(&o));
    }
}

/// An absurd layer count in a config.json is a reported problem, not an allocation: `info`
/// runs under a 2 GiB address-space limit and names the key (issue 16).
#[cfg(unix)]
#[test]
fn absurd_config_values_keep_memory_bounded() {
    let d = scratch("absurd-config");
    for (comp, key) in [
        ("transformer", "num_layers"),
        ("text_encoder", "num_hidden_layers"),
        ("text_encoder_3", "num_layers"),
    ] {
        let m = d.join(comp);
        linked_tiny(&m);
        let cfg_path = m.join(comp).join("config.json");
        let mut cfg: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&cfg_path).unwrap()).unwrap();
        cfg[key] = serde_json::json!(1_000_000_000_000u64);
        replace(&cfg_path, cfg.to_string().as_bytes());
        let o = Command::new("sh")
            .arg("-c")
            .arg(format!("ulimit -v 2000000; exec {BIN} info --model \"$0\""))
            .arg(&m)
            .output()
            .unwrap();
        let t = text(&o);
        assert_eq!(o.status.code(), Some(1), "{comp}: {t}");
        assert!(
            t.contains(&format!("{key} 1000000000000")) && t.contains("corrupt"),
            "{comp}: {t}"
        );
    }
}

/// Flags that do nothing in a run say so in one line (issue 16).
#[test]
fn ineffective_flags_get_a_note() {
    let d = scratch("ineffective-flags");
    let out = d.join("v.mp4");
    let lat = d.join("noise.latents.safetensors");
    let mut a = tiny_args(out.to_str().unwrap(), "3");
    a.extend([
        "--vram-budget",
        "4",
        "--save-latents",
        lat.to_str().unwrap(),
    ]);
    let o = run(&a);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("--vram-budget 4.0 has no effect on the CPU"),
        "{}",
        text(&o)
    );
    // the saved latents as initial noise: the seed does nothing, and no random seed is announced
    let mut a = tiny_args(out.to_str().unwrap(), "9");
    a.extend(["--init-noise", lat.to_str().unwrap()]);
    let o = run(&a);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("--seed 9 has no effect with --init-noise"),
        "{}",
        text(&o)
    );
    let mut a = tiny_args(out.to_str().unwrap(), "9");
    let i = a.iter().position(|s| *s == "--seed").unwrap();
    a.drain(i..i + 2);
    a.extend(["--init-noise", lat.to_str().unwrap()]);
    let o = run(&a);
    assert!(o.status.success(), "{}", text(&o));
    assert!(!text(&o).contains("random; pass --seed"), "{}", text(&o));
    assert!(!text(&o).contains("has no effect"), "{}", text(&o));
}

/// Truncation warnings say which prompt was cut, by which encoder and to how many tokens
/// (issue 16: a long negative prompt was reported as "the prompt").
#[test]
fn long_negative_prompt_warning_names_the_negative_prompt() {
    let d = scratch("long-negative");
    let out = d.join("n.mp4");
    let long = "blurry, low quality, distorted, ".repeat(20);
    let mut a = tiny_args(out.to_str().unwrap(), "3");
    a.extend(["--negative-prompt", long.as_str(), "--guidance", "6"]);
    let o = run(&a);
    assert!(o.status.success(), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("the negative prompt is longer than the CLIP-L (tokenizer/) text encoder accepts (77 tokens)"),
        "{}",
        text(&o)
    );
    assert!(
        err.contains("the negative prompt is longer than the OpenCLIP-bigG (tokenizer_2/) text encoder accepts (77 tokens)"),
        "{}",
        text(&o)
    );
    assert!(!err.contains("the prompt is longer"), "{}", text(&o));
    // the (short) prompt itself draws no warning; a long prompt is called "the prompt"
    let out2 = d.join("p.mp4");
    let mut a = tiny_args(out2.to_str().unwrap(), "3");
    let i = a.iter().position(|s| *s == "a red ball bouncing").unwrap();
    a[i] = long.as_str();
    a.extend(["--guidance", "1"]);
    let o = run(&a);
    assert!(o.status.success(), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(
            "the prompt is longer than the CLIP-L (tokenizer/) text encoder accepts (77 tokens)"
        ) && !err.contains("negative prompt is longer"),
        "{}",
        text(&o)
    );
}

#[test]
fn vae_precision_flag_is_parsed_and_checked() {
    for cmd in ["generate", "decode", "serve"] {
        let o = run(&[cmd, "--help"]);
        assert!(
            o.status.success() && text(&o).contains("--vae-precision"),
            "{cmd}: {}",
            text(&o)
        );
    }
    let o = run(&[
        "decode",
        "--vae-precision",
        "fp8",
        "--latents",
        "x.safetensors",
        "-o",
        "x.mp4",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("fp8") && text(&o).contains("bf16") && text(&o).contains("f32"),
        "{}",
        text(&o)
    );
}

#[test]
fn roofline_prints_a_step_and_a_decode() {
    let o = run(&["roofline", "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["video_tokens"], 41_472);
    assert_eq!(v["batch"], 2);
    let tf = v["step_tflop"].as_f64().unwrap();
    assert!((tf - 1743.0).abs() < 15.0, "{tf}");
    assert!(v["decode"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["name"].as_str().unwrap().contains("conv")));
    // A smaller size on another GPU, as a table.
    let o = run(&[
        "roofline",
        "--frames",
        "9",
        "--width",
        "256",
        "--height",
        "128",
        "--gpu",
        "4090",
        "--no-guidance",
    ]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(
        t.contains("RTX 4090") && t.contains("joint attention") && t.contains("batch 1"),
        "{t}"
    );
    // Bad input is an error naming the flag or the value.
    let o = run(&["roofline", "--gpu", "v100"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("v100") && text(&o).contains("h100"),
        "{}",
        text(&o)
    );
    let o = run(&["roofline", "--frames", "8"]);
    assert!(
        !o.status.success() && text(&o).contains("4k+1"),
        "{}",
        text(&o)
    );
}

/// `roofline --measure` runs every op of the table at its shape on the GPU: without one it is a
/// clear error; on a CUDA device (the emulated one in CI, at a tiny size with rehearsal
/// ceilings) every row gets an achieved time and the totals are their sums.
#[test]
fn roofline_measure_times_every_row() {
    let args = [
        "roofline",
        "--measure",
        "--json",
        "--model",
        "assets/tiny-model",
        "--frames",
        "5",
        "--width",
        "32",
        "--height",
        "32",
    ];
    if let Some(why) = contentv::runtime::device::gpu_unavailable_reason() {
        let o = run(&args);
        assert_eq!(o.status.code(), Some(2), "{}", text(&o));
        assert!(text(&o).contains("--measure"), "{}", text(&o));
        println!("SKIP: roofline --measure on a device: {why}");
        return;
    }
    let o = Command::new(BIN)
        .args(args)
        .env("CONTENTV_BENCH_REHEARSAL", "1")
        .output()
        .expect("cannot start the contentv binary");
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let m = &v["measured"];
    for k in [
        "tensor_tflops",
        "fp32_tflops",
        "mem_gbs",
        "step_s",
        "decode_s",
    ] {
        assert!(m[k].as_f64().is_some_and(|x| x > 0.0), "{k}: {m}");
    }
    for (part, total) in [("step", "step_s"), ("decode", "decode_s")] {
        let rows = v[part].as_array().unwrap();
        assert!(!rows.is_empty());
        let sum: f64 = rows
            .iter()
            .map(|r| r["measured_ms"].as_f64().expect("a row without a time"))
            .sum();
        let t = m[total].as_f64().unwrap() * 1e3;
        assert!(
            (sum - t).abs() <= 1e-6 * t,
            "{part}: rows {sum} ms, total {t} ms"
        );
    }
    assert_eq!(v["gpu"]["name"], "measured");
}

/// A flash-attention kernel that gives wrong numbers without an error (the emulated device's
/// CONTENTV_EMU_SKIP_KERNEL runs nothing for it) is caught by the first-use self-check
/// (ops::attention_select): a warning, and the video is the one the mma kernel makes.
/// Emulated device only (a real GPU cannot be told to skip a kernel).
#[test]
fn attention_self_check_falls_back_on_a_wrong_kernel() {
    if let Some(why) = contentv::runtime::device::gpu_unavailable_reason() {
        println!("SKIP: {why}");
        return;
    }
    let Ok(dev) = contentv::runtime::Device::cuda(0) else {
        println!("SKIP: no CUDA device");
        return;
    };
    let gpu = dev.gpu().unwrap().clone();
    if !gpu.name.contains("emulation") || !gpu.has_module("attention_hopper") {
        println!("SKIP: attention self-check fallback: needs the emulated sm_90 device");
        return;
    }
    let d = scratch("attention-self-check");
    let gen = |name: &str, env: &[(&str, &str)]| -> (Vec<f32>, String) {
        let out = d.join(format!("{name}.mp4"));
        let lat = d.join(format!("{name}.latents.safetensors"));
        let mut args = tiny_args(out.to_str().unwrap(), "5");
        args[2] = "cuda";
        args.extend(["--save-latents", lat.to_str().unwrap()]);
        let mut cmd = Command::new(BIN);
        cmd.args(&args).env_remove("CONTENTV_ATTENTION");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let o = cmd.output().expect("cannot start the contentv binary");
        assert!(o.status.success(), "{name}:\n{}", text(&o));
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        (
            contentv::model::pipeline::load_latents(&lat).unwrap().data,
            err,
        )
    };
    let (hopper, err) = gen("hopper", &[]);
    assert!(!err.contains("failed its self-check"), "{err}");
    let (mma, _) = gen("mma", &[("CONTENTV_ATTENTION", "mma")]);
    let (broken, err) = gen(
        "broken",
        &[("CONTENTV_EMU_SKIP_KERNEL", "flash_attn_hopper_d64")],
    );
    assert!(
        err.contains("warning: the hopper attention kernel failed its self-check")
            && err.contains("using the mma kernel"),
        "{err}"
    );
    assert!(
        broken == mma,
        "the fallback did not give the mma kernel's latents"
    );
    assert!(cosine(&hopper, &mma) > 0.999, "hopper vs mma latents");
}
