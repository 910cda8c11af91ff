//! `contentv generate --prompts FILE.jsonl` (batch mode) end to end on the built-in tiny model:
//! shards that cover every line once, re-runs that skip, and the quirks of hand-written batch
//! files. Split from tests/cli.rs; helpers in tests/common/{bin,scratch}.rs.
use std::path::{Path, PathBuf};

mod common;

use common::bin::{run_batch, text};
use common::scratch::{entries, scratch};
use contentv::io::video::{artifact_path, read_video};

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
