//! `contentv quantize`: it never destroys its input or an unrelated folder, `--force` replaces an
//! earlier checkpoint, and the components it copies are copies. Split from tests/cli.rs;
//! helpers in tests/common/{bin,scratch}.rs.

mod common;

use common::bin::{fails_with, os, refs, run, text};
use common::scratch::{entries, linked_tiny, scratch};

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
