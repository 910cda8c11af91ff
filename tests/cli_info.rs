//! `contentv info` (and the top-level help) end to end on the built-in tiny model: the JSON
//! report, the default model, broken and absurd model folders, and `--model owner/name` found in
//! the Hugging Face cache. Split from tests/cli.rs; helpers in tests/common/{bin,scratch}.rs.
use std::process::Command;

mod common;

use common::bin::{cpu_command, output, run, text, tiny_args, BIN};
use common::scratch::{linked_tiny, replace, scratch};
use common::tiny_model_dir as tiny;

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
    let with_cache = |args: &[&str]| output(cpu_command(args).env("HF_HUB_CACHE", &cache));
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
