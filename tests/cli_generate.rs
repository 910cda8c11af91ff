//! `contentv generate` of one video end to end on the built-in tiny model, on the CPU, at tiny
//! sizes: the video and its determinism, seeds, frame rounding, every kind of bad flag, outputs
//! that replace cleanly and never replace inputs, Ctrl-C, the T5 tokenizer from spiece.model,
//! notes and warnings. Split from tests/cli.rs; helpers in tests/common/{bin,scratch}.rs.
use std::path::{Path, PathBuf};
use std::process::Command;

mod common;

use common::bin::{cpu_command, fails_with, os, output, refs, run, run_batch, text, tiny_args};
use common::scratch::{entries, linked_tiny, scratch};
use common::tiny_model_dir as tiny;
use contentv::io::video::{artifact_path, read_video, writes_mp4};

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
    let (partial, noise) = (partial.to_str().unwrap(), noise.to_str().unwrap());
    // Flags replacing (or added to) the tiny run's, and what the error must mention.
    let cases: [(&[&str], &str); 19] = [
        (&["--frames", "0"], "frames"),
        (&["--frames", "100000"], "frames"),
        (&["--steps", "0"], "steps"),
        (&["--steps", "100000"], "steps"),
        (&["--width", "50"], "multiple of 16"),
        (&["--height", "0"], "multiple of 16"),
        (&["--guidance", "-3"], "guidance"),
        (&["--shift", "0"], "shift"),
        (&["--fps", "0"], "fps"),
        (&["--crf", "99"], "crf"),
        (&["--prompt", ""], "prompt"),
        (
            &["--model", "/nonexistent/contentv-model"],
            "does not exist",
        ),
        (&["--model", partial], "transformer/"),
        (&["--vram-budget", "nan"], "vram-budget"),
        (&["--vram-budget", "0"], "vram-budget"),
        (&["--init-noise", noise], "shape"),
        (
            &["--init-noise", "/nonexistent/noise.safetensors"],
            "does not exist",
        ),
        (&["--device", "gpu"], "gpu"),
        (&["--shard", "0/2"], "batch"),
    ];
    for (extra, want) in &cases {
        let mut a: Vec<String> = tiny_args(&outs, "1")
            .into_iter()
            .map(String::from)
            .collect();
        // later flags override earlier ones only for clap "overrides"; replace instead
        for pair in extra.chunks(2) {
            if let Some(i) = a.iter().position(|s| s == pair[0]) {
                a[i + 1] = pair[1].to_string();
            } else {
                a.extend(pair.iter().map(|s| s.to_string()));
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
        let o = output(&mut cpu_command(&a));
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
    let child = cpu_command(&a)
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
