//! Differential fuzzing of the three tokenizers against the Python reference on ~2000 real-world and adversarial
//! prompts (tests/fixtures/tokenizer_fuzz/, written by scripts/reference/make_tokenizer_fuzz.py): the padded ids
//! exactly as diffusers' SD3 pipeline tokenizes them, and the number of tokens truncation drops (from the
//! reference's untruncated length).
use std::path::{Path, PathBuf};

mod common;

use common::{repo_root as root, tiny_model_dir as tiny};
use contentv::io::safetensors::{SafeTensorsFile, StDtype};
use contentv::model::text::T5_TOKENS;
use contentv::model::tokenizer::{ClipTokenizer, T5Tokenizer};

const REGENERATE: &str = ".venv-ref/bin/python scripts/reference/make_tokenizer_fuzz.py";

fn fuzz_dir() -> PathBuf {
    root().join("tests/fixtures/tokenizer_fuzz")
}

fn prompts() -> Vec<String> {
    let path = fuzz_dir().join("prompts.jsonl");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read {}: {e}\nregenerate with: {REGENERATE}",
            path.display()
        )
    });
    text.lines()
        .map(|l| serde_json::from_str::<String>(l).unwrap())
        .collect()
}

/// One tokenizer's reference rows: padded ids and untruncated lengths.
struct Reference {
    rows: Vec<Vec<u32>>,
    full_len: Vec<usize>,
    max_len: usize,
}

fn ints(st: &SafeTensorsFile, name: &str) -> Vec<i64> {
    let info = st
        .get(name)
        .unwrap_or_else(|e| panic!("{e}\nregenerate with: {REGENERATE}"));
    assert!(
        matches!(info.dtype, StDtype::U16 | StDtype::U8 | StDtype::I32),
        "{name}: unexpected dtype {}",
        info.dtype
    );
    // Token ids and lengths are far below 2^24: exact in f32.
    st.to_f32(name)
        .unwrap()
        .into_iter()
        .map(|v| v as i64)
        .collect()
}

fn references(n: usize) -> std::collections::HashMap<String, Reference> {
    let path = fuzz_dir().join("ids.safetensors");
    let bytes = std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read {}: {e}\nregenerate with: {REGENERATE}",
            path.display()
        )
    });
    let st = SafeTensorsFile::from_bytes(&path.display().to_string(), bytes)
        .unwrap_or_else(|e| panic!("{e}\nregenerate with: {REGENERATE}"));
    let meta: std::collections::HashMap<String, String> =
        serde_json::from_str(&st.metadata()["fuzz"]).unwrap();
    let mut out = std::collections::HashMap::new();
    for name in ["clip_l", "t5_like", "t5_tiny", "clip_g", "t5_like_legacy"] {
        let pad = meta[&format!("{name}.pad")].parse::<u32>().unwrap();
        let max_len = meta[&format!("{name}.max_length")]
            .parse::<usize>()
            .unwrap();
        let flat = ints(&st, &format!("{name}.ids"));
        let lens = ints(&st, &format!("{name}.len"));
        let full_len: Vec<usize> = ints(&st, &format!("{name}.full_len"))
            .iter()
            .map(|&v| v as usize)
            .collect();
        assert_eq!(
            lens.len(),
            n,
            "{name}: prompts.jsonl and ids.safetensors disagree; regenerate: {REGENERATE}"
        );
        let base = meta
            .get(&format!("{name}.base"))
            .map(|b| &out[b] as &Reference);
        let same = base.map(|_| ints(&st, &format!("{name}.same_as_base")));
        let mut off = 0;
        let mut rows = Vec::with_capacity(n);
        for i in 0..n {
            let len = lens[i] as usize;
            let mut row: Vec<u32> = match (&same, base) {
                (Some(s), Some(b)) if s[i] == 1 => b.rows[i][..len].to_vec(),
                _ => {
                    off += len;
                    flat[off - len..off].iter().map(|&v| v as u32).collect()
                }
            };
            row.resize(max_len, pad);
            rows.push(row);
        }
        assert_eq!(off, flat.len(), "{name}: ids left over");
        out.insert(
            name.to_string(),
            Reference {
                rows,
                full_len,
                max_len,
            },
        );
    }
    out
}

/// tests/fixtures/tokenizer_fuzz/t5_like.tokenizer.json with the nmt_nfkc charsmap of the tiny model's
/// tokenizer.json spliced back in (the script stores a placeholder; both are sentencepiece's built-in table).
fn t5_like_json() -> serde_json::Value {
    let read = |p: &Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
    };
    let mut j = read(&fuzz_dir().join("t5_like.tokenizer.json"));
    let tiny_j = read(&tiny().join("tokenizer_3/tokenizer.json"));
    let charsmap = tiny_j["normalizer"]["normalizers"][0]["precompiled_charsmap"].clone();
    let slot = &mut j["normalizer"]["normalizers"][0]["precompiled_charsmap"];
    assert_eq!(slot.as_str(), Some("@tiny-model"));
    *slot = charsmap;
    j
}

/// The older tokenizer.json layout of the original T5 uploads (`legacy_t5_json` of the Python script).
fn legacy_t5_json(mut j: serde_json::Value) -> serde_json::Value {
    j["normalizer"] = j["normalizer"]["normalizers"][0].clone();
    j["pre_tokenizer"] = serde_json::json!({"type": "Sequence", "pretokenizers": [
        {"type": "WhitespaceSplit"}, {"type": "Metaspace", "replacement": "\u{2581}", "add_prefix_space": true}]});
    j["decoder"] = serde_json::json!({"type": "Metaspace", "replacement": "\u{2581}", "add_prefix_space": true});
    j["model"].as_object_mut().unwrap().remove("type");
    j
}

fn t5_from_json(tmp: &Path, name: &str, j: &serde_json::Value) -> T5Tokenizer {
    let d = tmp.join(name);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("tokenizer.json"), serde_json::to_string(j).unwrap()).unwrap();
    T5Tokenizer::from_dir(&d, T5_TOKENS).unwrap()
}

fn show(ids: &[u32], pad: u32) -> String {
    let mut n = ids.len();
    while n > 1 && ids[n - 1] == pad && ids[n - 2] == pad {
        n -= 1;
    }
    format!(
        "{:?}{}",
        &ids[..n],
        if n < ids.len() {
            format!(" + pad x{}", ids.len() - n)
        } else {
            String::new()
        }
    )
}

#[test]
fn tokenizers_match_reference_on_fuzz_corpus() {
    let prompts = prompts();
    let refs = references(prompts.len());
    // Loaded the way TextEncoders::load does: bigG truncates/pads to tokenizer/'s model_max_length.
    let tok_l = ClipTokenizer::from_dir(&tiny().join("tokenizer")).unwrap();
    let mut tok_g = ClipTokenizer::from_dir(&tiny().join("tokenizer_2")).unwrap();
    tok_g.max_len = tok_l.max_len;
    let tmp = std::env::temp_dir().join(format!("contentv-tokfuzz-{}", std::process::id()));
    let like = t5_like_json();
    // The tiny tokenizer_3 without its tokenizer.json: spiece.model + configs, converted by the
    // engine as transformers converts it (src/model/spm.rs); must equal the t5_tiny reference.
    let spm_dir = tmp.join("t5_tiny_spm");
    std::fs::create_dir_all(&spm_dir).unwrap();
    for f in [
        "spiece.model",
        "tokenizer_config.json",
        "special_tokens_map.json",
    ] {
        std::fs::copy(tiny().join("tokenizer_3").join(f), spm_dir.join(f)).unwrap();
    }
    let t5s = [
        (
            "t5_tiny",
            "t5_tiny",
            T5Tokenizer::from_dir(&tiny().join("tokenizer_3"), T5_TOKENS).unwrap(),
        ),
        (
            "t5_tiny from spiece.model",
            "t5_tiny",
            T5Tokenizer::from_dir(&spm_dir, T5_TOKENS).unwrap(),
        ),
        ("t5_like", "t5_like", t5_from_json(&tmp, "t5_like", &like)),
        (
            "t5_like_legacy",
            "t5_like_legacy",
            t5_from_json(&tmp, "t5_like_legacy", &legacy_t5_json(like.clone())),
        ),
    ];
    let _ = std::fs::remove_dir_all(&tmp);

    let mut failures = Vec::new();
    let check = |label: &str,
                 name: &str,
                 pad: u32,
                 i: usize,
                 got: (Vec<u32>, usize),
                 report: &mut Vec<String>|
     -> bool {
        let r = &refs[name];
        let want = &r.rows[i];
        let want_dropped = r.full_len[i].saturating_sub(r.max_len);
        if &got.0 == want && got.1 == want_dropped {
            return true;
        }
        if report.len() < 8 {
            let at = got.0.iter().zip(want).position(|(a, b)| a != b);
            report.push(format!(
                "{label} prompt {i} {:?}\n  first difference at {at:?}; dropped ours {} reference {want_dropped}\n  ours: {}\n  ref:  {}",
                prompts[i],
                got.1,
                show(&got.0, pad),
                show(want, pad)
            ));
        }
        false
    };
    let mut summary = Vec::new();
    for (name, tok) in [("clip_l", &tok_l), ("clip_g", &tok_g)] {
        let mut report = Vec::new();
        let bad = (0..prompts.len())
            .filter(|&i| {
                !check(
                    name,
                    name,
                    tok.pad,
                    i,
                    tok.encode_padded_counted(&prompts[i]),
                    &mut report,
                )
            })
            .count();
        summary.push(format!("{name}: {bad} / {} mismatches", prompts.len()));
        failures.extend(report);
    }
    for (label, name, tok) in &t5s {
        let mut report = Vec::new();
        let bad = (0..prompts.len())
            .filter(|&i| {
                !check(
                    label,
                    name,
                    tok.pad,
                    i,
                    tok.encode_padded_counted(&prompts[i]).unwrap(),
                    &mut report,
                )
            })
            .count();
        summary.push(format!("{label}: {bad} / {} mismatches", prompts.len()));
        failures.extend(report);
    }
    println!("{}", summary.join("\n"));
    assert!(
        failures.is_empty(),
        "{}\n\n{}",
        summary.join("\n"),
        failures.join("\n\n")
    );
}

/// Every code point alone and between letters, against a dump of the reference
/// (`make_tokenizer_fuzz.py --codepoints PATH`, about 3 minutes, not stored in the repository). Run with
/// `CONTENTV_CODEPOINT_DUMP=PATH cargo test --release --test tokenizer_fuzz -- --ignored`.
#[test]
#[ignore]
fn exhaustive_codepoints() {
    let Ok(path) = std::env::var("CONTENTV_CODEPOINT_DUMP") else {
        panic!("set CONTENTV_CODEPOINT_DUMP to the output of {REGENERATE} --codepoints PATH");
    };
    let tok_l = ClipTokenizer::from_dir(&tiny().join("tokenizer")).unwrap();
    let tok_g = ClipTokenizer::from_dir(&tiny().join("tokenizer_2")).unwrap();
    let tmp = std::env::temp_dir().join(format!("contentv-tokfuzz-cp-{}", std::process::id()));
    let like = t5_like_json();
    let t5_tiny = T5Tokenizer::from_dir(&tiny().join("tokenizer_3"), T5_TOKENS).unwrap();
    let t5_like = t5_from_json(&tmp, "t5_like", &like);
    let t5_legacy = t5_from_json(&tmp, "t5_like_legacy", &legacy_t5_json(like.clone()));
    let _ = std::fs::remove_dir_all(&tmp);
    let parse = |s: &str| -> Vec<u32> {
        s.split(',')
            .filter(|x| !x.is_empty())
            .map(|x| x.parse().unwrap())
            .collect()
    };
    let text = std::fs::read_to_string(&path).unwrap();
    let mut bad: std::collections::BTreeMap<&str, Vec<u32>> = Default::default();
    let mut lines = 0;
    for line in text.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        let cp: u32 = f[0].parse().unwrap();
        let c = char::from_u32(cp).unwrap();
        let (alone, between) = (c.to_string(), format!("a{c}b"));
        let ours = |s: &str| -> Vec<u32> {
            match f[1] {
                "clip_l" | "clip_g" => {
                    let t = if f[1] == "clip_l" { &tok_l } else { &tok_g };
                    let mut v = vec![t.bos];
                    v.extend(t.encode_raw(s));
                    v.push(t.eos);
                    v
                }
                "t5_tiny" => t5_tiny.encode_raw(s).unwrap(),
                "t5_like" => t5_like.encode_raw(s).unwrap(),
                "t5_like_legacy" => t5_legacy.encode_raw(s).unwrap(),
                n => panic!("unknown tokenizer {n}"),
            }
        };
        lines += 1;
        if ours(&alone) != parse(f[2]) || ours(&between) != parse(f[3]) {
            bad.entry(f[1]).or_default().push(cp);
        }
    }
    let mut report = Vec::new();
    for (name, cps) in &bad {
        let shown: Vec<String> = cps.iter().take(40).map(|c| format!("U+{c:04X}")).collect();
        report.push(format!(
            "{name}: {} code points differ: {}",
            cps.len(),
            shown.join(" ")
        ));
    }
    if let Ok(out) = std::env::var("CONTENTV_CODEPOINT_MISMATCHES") {
        let all: Vec<String> = bad
            .iter()
            .flat_map(|(n, cps)| cps.iter().map(move |c| format!("{n}\t{c}")))
            .collect();
        std::fs::write(out, all.join("\n")).unwrap();
    }
    println!("{lines} lines checked");
    assert!(bad.is_empty(), "{}", report.join("\n"));
}
