//! Token ids of the three tokenizers against the reference (tests/fixtures/tokens.safetensors,
//! transformers' slow CLIPTokenizer without ftfy and T5TokenizerFast, as the pipeline calls them).
mod common;

use common::{manifest, tiny_model_dir, Fixture};
use contentv::model::tokenizer::{ClipTokenizer, T5Tokenizer};

fn prompts() -> Vec<String> {
    manifest()["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect()
}

fn ids(f: &Fixture, k: &str) -> Vec<u32> {
    f.ints(k).iter().map(|&v| v as u32).collect()
}

#[test]
fn clip_ids_match_reference() {
    let f = Fixture::load("tokens");
    for (name, folder) in [("clip_l", "tokenizer"), ("clip_g", "tokenizer_2")] {
        let tok = ClipTokenizer::from_dir(&tiny_model_dir().join(folder)).unwrap();
        for (i, p) in prompts().iter().enumerate() {
            let raw = ids(&f, &format!("{name}.p{i}.raw"));
            let mut got = vec![tok.bos];
            got.extend(tok.encode_raw(p));
            got.push(tok.eos);
            assert_eq!(got, raw, "{name} prompt {i} {p:?} (raw)");
            assert_eq!(
                tok.encode_padded(p),
                ids(&f, &format!("{name}.p{i}.padded")),
                "{name} prompt {i} (padded)"
            );
        }
        println!("{name}: {} prompts identical", prompts().len());
    }
}

#[test]
fn t5_ids_match_reference() {
    let f = Fixture::load("tokens");
    let tok = T5Tokenizer::from_dir(&tiny_model_dir().join("tokenizer_3"), 256).unwrap();
    for (i, p) in prompts().iter().enumerate() {
        assert_eq!(
            tok.encode_raw(p).unwrap(),
            ids(&f, &format!("t5.p{i}.raw")),
            "t5 prompt {i} {p:?} (raw)"
        );
        assert_eq!(
            tok.encode_padded(p).unwrap(),
            ids(&f, &format!("t5.p{i}.padded")),
            "t5 prompt {i} (padded)"
        );
    }
}

#[test]
fn bad_tokenizer_folders_are_clear_errors() {
    let d = std::env::temp_dir().join(format!("contentv-tok-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    let e = ClipTokenizer::from_dir(&d.join("missing"))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("does not exist"), "{e}");
    let e = ClipTokenizer::from_dir(&d).err().unwrap().to_string();
    assert!(e.contains("vocab.json"), "{e}");
    std::fs::write(d.join("vocab.json"), [0xff, 0xfe, 0x00]).unwrap();
    let e = ClipTokenizer::from_dir(&d).err().unwrap().to_string();
    assert!(e.contains("UTF-8") && e.contains("vocab.json"), "{e}");
    let e = T5Tokenizer::from_dir(&d, 256).err().unwrap().to_string();
    assert!(e.contains("tokenizer.json"), "{e}");
    std::fs::write(d.join("tokenizer.json"), "{not json").unwrap();
    let e = T5Tokenizer::from_dir(&d, 256).err().unwrap().to_string();
    assert!(e.contains("tokenizer.json"), "{e}");
    let _ = std::fs::remove_dir_all(&d);
}

/// Regressions found by tests/tokenizer_fuzz.rs (reference ids from transformers' slow CLIPTokenizer, Python 3.11).
#[test]
fn clip_fuzz_regressions() {
    let tok = ClipTokenizer::from_dir(&tiny_model_dir().join("tokenizer")).unwrap();
    for (prompt, want) in [
        // Special-token text the case-sensitive added-token split leaves, lower-cased by BasicTokenizer: one token.
        ("<|ENDOFTEXT|>", vec![49407]),
        ("<|StartOfText|>", vec![49406]),
        ("<|end\u{200b}oftext|>", vec![49407]),
        // U+0345 is neither a letter nor "other" for Python's `regex` under IGNORECASE: dropped.
        ("\u{345}", vec![]),
        // Assigned after Unicode 14.0: unassigned (Cn) for Python 3.11, dropped as a control character.
        ("\u{1fae8}", vec![]),
        ("\u{2fff}", vec![]),
    ] {
        assert_eq!(tok.encode_raw(prompt), want, "{prompt:?}");
    }
}

/// T5 tokenizer folders with only spiece.model (no tokenizer.json) and several
/// tokenizer_config.json variants (extra ids, legacy / non-legacy prefix, no config, a special
/// token outside the vocabulary): ids equal what transformers' T5TokenizerFast.from_pretrained
/// gives for the same folder (tests/fixtures/tokenizer_fuzz/spm_variants.json, from
/// scripts/reference/make_spm_variants.py).
#[test]
fn t5_from_spiece_model_matches_transformers_conversion() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let fx: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("tests/fixtures/tokenizer_fuzz/spm_variants.json"))
            .expect("spm_variants.json (scripts/reference/make_spm_variants.py)"),
    )
    .unwrap();
    let max_len = fx["max_length"].as_u64().unwrap() as usize;
    let prompts: Vec<String> = fx["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect();
    let src = tiny_model_dir().join("tokenizer_3");
    let variants = fx["variants"].as_object().unwrap();
    assert!(variants.len() >= 5);
    let mut failures = Vec::new();
    for (name, v) in variants {
        let d = std::env::temp_dir().join(format!("contentv-spm-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::copy(src.join("spiece.model"), d.join("spiece.model")).unwrap();
        if !v["tokenizer_config"].is_null() {
            std::fs::write(
                d.join("tokenizer_config.json"),
                v["tokenizer_config"].to_string(),
            )
            .unwrap();
        }
        if v["special_tokens_map"].as_bool().unwrap() {
            std::fs::copy(
                src.join("special_tokens_map.json"),
                d.join("special_tokens_map.json"),
            )
            .unwrap();
        }
        let tok = T5Tokenizer::from_dir(&d, max_len).unwrap();
        let _ = std::fs::remove_dir_all(&d);
        assert_eq!(tok.pad as u64, v["pad"].as_u64().unwrap(), "{name} pad");
        assert_eq!(tok.eos as u64, v["eos"].as_u64().unwrap(), "{name} eos");
        assert_eq!(
            tok.max_id() as u64 + 1,
            v["vocab_size"].as_u64().unwrap(),
            "{name}: vocabulary size"
        );
        for (i, p) in prompts.iter().enumerate() {
            let mut want: Vec<u32> = v["ids"][i]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect();
            want.resize(max_len, tok.pad);
            let got = tok.encode_padded(p).unwrap();
            if got != want {
                failures.push(format!(
                    "{name} prompt {i} {p:?}:\n  ours {:?}\n  ref  {:?}",
                    &got[..24.min(got.len())],
                    &want[..24.min(want.len())]
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn t5_folder_errors_name_the_file() {
    let d = std::env::temp_dir().join(format!("contentv-spm-bad-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    let err = |d: &std::path::Path| match T5Tokenizer::from_dir(d, 256) {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    };
    let e = err(&d);
    assert!(e.contains("neither tokenizer.json nor spiece.model"), "{e}");
    // a truncated model: the first half of the tiny spiece.model
    let full = std::fs::read(tiny_model_dir().join("tokenizer_3/spiece.model")).unwrap();
    std::fs::write(d.join("spiece.model"), &full[..full.len() / 2]).unwrap();
    let e = err(&d);
    assert!(
        e.contains("spiece.model") && e.contains("not a valid SentencePiece model"),
        "{e}"
    );
    // not a protobuf at all
    std::fs::write(d.join("spiece.model"), b"{\"model\": \"unigram\"}").unwrap();
    let e = err(&d);
    assert!(e.contains("spiece.model"), "{e}");
    // a bad config value is named with its file and key
    std::fs::write(d.join("spiece.model"), &full).unwrap();
    std::fs::write(d.join("tokenizer_config.json"), "{\"extra_ids\": \"many\"}").unwrap();
    let e = err(&d);
    assert!(
        e.contains("tokenizer_config.json") && e.contains("extra_ids"),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&d);
}
