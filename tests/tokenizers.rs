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
