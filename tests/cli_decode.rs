//! `contentv decode` and the inputs it shares with `generate`/`info`: bad latents files and
//! broken model folders fail cleanly, and `--vae-precision` is parsed and checked. Split from
//! tests/cli.rs; helpers in tests/common/{bin,scratch}.rs.
use std::path::Path;

mod common;

use common::bin::{fails_with, os, refs, run, text, tiny_args};
use common::scratch::{entries, linked_tiny, replace, scratch, write_latents};

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
