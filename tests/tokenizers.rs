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

// ----- damaged tokenizer files (issue 16) -----------------------------------------------------

/// A temporary copy of the tiny model's tokenizer folder `folder`, removed on drop.
struct Copy(std::path::PathBuf);

impl Copy {
    fn of(folder: &str, tag: &str) -> Copy {
        let d = std::env::temp_dir().join(format!(
            "contentv-tokdamage-{}-{folder}-{tag}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        for e in std::fs::read_dir(tiny_model_dir().join(folder)).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), d.join(e.file_name())).unwrap();
        }
        Copy(d)
    }
    fn path(&self, f: &str) -> std::path::PathBuf {
        self.0.join(f)
    }
    fn read(&self, f: &str) -> Vec<u8> {
        std::fs::read(self.path(f)).unwrap()
    }
    fn write(&self, f: &str, b: impl AsRef<[u8]>) {
        std::fs::write(self.path(f), b).unwrap();
    }
    fn json(&self, f: &str) -> serde_json::Value {
        serde_json::from_slice(&self.read(f)).unwrap()
    }
}

impl Drop for Copy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The error of loading `dir`; asserts it names `file`, contains every `want` and says what to do.
fn clip_error(dir: &Copy, file: &str, want: &[&str]) {
    let e = match ClipTokenizer::from_dir(&dir.0) {
        Ok(_) => panic!("{file}: a damaged file was accepted ({want:?})"),
        Err(e) => e.to_string(),
    };
    check_message(&e, &dir.path(file), want);
}

fn t5_error(dir: &Copy, file: &str, want: &[&str]) {
    let e = match T5Tokenizer::from_dir(&dir.0, 256) {
        Ok(_) => panic!("{file}: a damaged file was accepted ({want:?})"),
        Err(e) => e.to_string(),
    };
    check_message(&e, &dir.path(file), want);
}

fn check_message(e: &str, file: &std::path::Path, want: &[&str]) {
    assert!(
        e.contains(&file.display().to_string()),
        "names the file {}: {e}",
        file.display()
    );
    assert!(e.contains("download the model's"), "says what to do: {e}");
    for w in want {
        assert!(e.contains(w), "{w:?} in {e}");
    }
}

/// The byte offset just past line `n` (1-based) of `text`.
fn after_line(text: &[u8], n: usize) -> usize {
    text.iter()
        .enumerate()
        .filter(|(_, &b)| b == b'\n')
        .nth(n - 1)
        .unwrap()
        .0
        + 1
}

#[test]
fn damaged_clip_tokenizer_files_are_clear_errors() {
    for folder in ["tokenizer", "tokenizer_2"] {
        // the intact copy loads and gives the reference's ids (the control for the cases below)
        let c = Copy::of(folder, "intact");
        let a = ClipTokenizer::from_dir(&tiny_model_dir().join(folder)).unwrap();
        let b = ClipTokenizer::from_dir(&c.0).unwrap();
        for p in prompts() {
            assert_eq!(a.encode_padded(&p), b.encode_padded(&p), "{folder}: {p:?}");
        }
        let vocab = c.read("vocab.json");
        let merges = c.read("merges.txt");
        let reset = |c: &Copy| {
            c.write("vocab.json", &vocab);
            c.write("merges.txt", &merges);
        };

        c.write("vocab.json", "");
        clip_error(&c, "vocab.json", &["not valid JSON"]);
        c.write("vocab.json", &vocab[..vocab.len() / 2]);
        clip_error(&c, "vocab.json", &["not valid JSON"]);
        reset(&c);

        c.write("merges.txt", "");
        clip_error(&c, "merges.txt", &["no merges"]);
        c.write("merges.txt", "#version: 0.2\n");
        clip_error(&c, "merges.txt", &["no merges"]);
        // cut in the middle of a line (a half token)
        let mid = merges.len() / 2;
        let cut = (mid..)
            .find(|&i| {
                merges[i - 1] != b' '
                    && merges[i] != b'\n'
                    && merges[i - 1] != b'\n'
                    && merges[i] != b' '
            })
            .unwrap();
        c.write("merges.txt", &merges[..cut]);
        clip_error(&c, "merges.txt", &[]);
        // cut at the end of a line: every line parses, but half the vocabulary comes from no merge
        c.write("merges.txt", &merges[..after_line(&merges, 20000)]);
        clip_error(
            &c,
            "merges.txt",
            &[
                "tokens of the vocabulary",
                "come from no merge",
                "cut short",
            ],
        );
        // the last merge missing
        c.write("merges.txt", &merges[..after_line(&merges, 48894)]);
        clip_error(
            &c,
            "merges.txt",
            &["1 token of the vocabulary", "comes from no merge"],
        );
        // malformed lines: three tokens, one token, an empty line
        for bad in ["a b c", "ab", ""] {
            let mut m = merges[..after_line(&merges, 5)].to_vec();
            m.extend_from_slice(bad.as_bytes());
            m.push(b'\n');
            m.extend_from_slice(&merges[after_line(&merges, 5)..]);
            c.write("merges.txt", &m);
            clip_error(&c, "merges.txt", &["line 6", "is not a merge pair"]);
        }
        reset(&c);

        // vocabularies that do not fit the merges or lack special tokens
        let v0 = c.json("vocab.json");
        let edit = |f: &dyn Fn(&mut serde_json::Map<String, serde_json::Value>)| {
            let mut v = v0.clone();
            f(v.as_object_mut().unwrap());
            c.write("vocab.json", v.to_string());
        };
        // a token the merges produce ("the</w>" is a merge result in every CLIP vocabulary)
        edit(&|v| {
            v.remove("the</w>");
        });
        clip_error(&c, "merges.txt", &["\"the</w>\"", "not in the vocabulary"]);
        edit(&|v| {
            v.remove("<|endoftext|>");
        });
        clip_error(&c, "vocab.json", &["<|endoftext|>", "special token"]);
        edit(&|v| {
            v.remove("<|startoftext|>");
        });
        clip_error(&c, "vocab.json", &["<|startoftext|>"]);
        edit(&|v| {
            v.remove("a");
        });
        clip_error(&c, "vocab.json", &["byte token \"a\""]);
        edit(&|v| {
            v.insert("zz".into(), serde_json::json!("12"));
        });
        clip_error(&c, "vocab.json", &["\"zz\"", "not an integer"]);
        reset(&c);

        // truncated special-token configs
        for f in ["tokenizer_config.json", "special_tokens_map.json"] {
            let orig = c.read(f);
            c.write(f, &orig[..orig.len() / 2]);
            clip_error(&c, f, &["not valid JSON"]);
            c.write(f, "");
            clip_error(&c, f, &["not valid JSON"]);
            c.write(f, &orig);
        }
        assert!(
            ClipTokenizer::from_dir(&c.0).is_ok(),
            "{folder}: restored copy"
        );
    }
}

/// A CLIP folder with only a tokenizer.json: the same checks on its BPE model.
#[test]
fn damaged_clip_tokenizer_json_is_a_clear_error() {
    let c = Copy::of("tokenizer", "json");
    let vocab = c.json("vocab.json");
    let merges: Vec<serde_json::Value> = String::from_utf8(c.read("merges.txt"))
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| serde_json::json!(l))
        .collect();
    std::fs::remove_file(c.path("vocab.json")).unwrap();
    std::fs::remove_file(c.path("merges.txt")).unwrap();
    let doc = |merges: &[serde_json::Value], ty: &str| {
        serde_json::json!({
            "added_tokens": [{"id": 49406, "content": "<|startoftext|>"}, {"id": 49407, "content": "<|endoftext|>"}],
            "model": {"type": ty, "vocab": vocab, "merges": merges, "end_of_word_suffix": "</w>"},
        })
        .to_string()
    };
    c.write("tokenizer.json", doc(&merges, "BPE"));
    let intact = ClipTokenizer::from_dir(&c.0).unwrap();
    let reference = ClipTokenizer::from_dir(&tiny_model_dir().join("tokenizer")).unwrap();
    for p in prompts() {
        assert_eq!(
            intact.encode_padded(&p),
            reference.encode_padded(&p),
            "{p:?}"
        );
    }
    c.write("tokenizer.json", doc(&merges[..merges.len() / 2], "BPE"));
    clip_error(&c, "tokenizer.json", &["come from no merge"]);
    c.write("tokenizer.json", doc(&[], "BPE"));
    clip_error(&c, "tokenizer.json", &["no merges"]);
    c.write("tokenizer.json", doc(&merges, "WordPiece"));
    clip_error(&c, "tokenizer.json", &["not BPE"]);
    let full = doc(&merges, "BPE");
    c.write("tokenizer.json", &full[..full.len() / 2]);
    clip_error(&c, "tokenizer.json", &["not valid JSON"]);
}

/// Offsets just past each top-level `pieces` entry of a SentencePiece model.
fn piece_ends(b: &[u8]) -> Vec<usize> {
    let varint = |at: &mut usize| {
        let mut v = 0u64;
        for s in (0..64).step_by(7) {
            let x = b[*at];
            *at += 1;
            v |= ((x & 0x7f) as u64) << s;
            if x & 0x80 == 0 {
                break;
            }
        }
        v
    };
    let (mut at, mut ends) = (0, Vec::new());
    while at < b.len() {
        let key = varint(&mut at);
        assert_eq!(key & 7, 2, "length-delimited top-level fields");
        let n = varint(&mut at) as usize;
        at += n;
        if key >> 3 == 1 {
            ends.push(at);
        }
    }
    ends
}

#[test]
fn damaged_t5_tokenizer_files_are_clear_errors() {
    let c = Copy::of("tokenizer_3", "t5");
    let reference = T5Tokenizer::from_dir(&tiny_model_dir().join("tokenizer_3"), 256).unwrap();
    let intact = T5Tokenizer::from_dir(&c.0, 256).unwrap();
    for p in prompts() {
        assert_eq!(
            intact.encode_padded(&p).unwrap(),
            reference.encode_padded(&p).unwrap()
        );
    }
    let tj = c.read("tokenizer.json");
    c.write("tokenizer.json", "");
    t5_error(&c, "tokenizer.json", &["not a valid tokenizer.json"]);
    c.write("tokenizer.json", &tj[..tj.len() / 2]);
    t5_error(&c, "tokenizer.json", &["not a valid tokenizer.json"]);
    // special tokens missing from the vocabulary (renamed in the model and the added tokens)
    let j0: serde_json::Value = serde_json::from_slice(&tj).unwrap();
    for (tok, name) in [
        ("</s>", "eos_token"),
        ("<pad>", "pad_token"),
        ("<unk>", "unk_token"),
    ] {
        let mut j = j0.clone();
        for piece in j["model"]["vocab"].as_array_mut().unwrap() {
            if piece[0] == tok {
                piece[0] = serde_json::json!(format!("{tok}x"));
            }
        }
        j["added_tokens"]
            .as_array_mut()
            .unwrap()
            .retain(|a| a["content"] != tok);
        c.write("tokenizer.json", j.to_string());
        t5_error(
            &c,
            "tokenizer.json",
            &[&format!("{tok:?} ({name})"), "not in the vocabulary"],
        );
    }
    // no post-processor: encodings would lack the EOS
    let mut j = j0.clone();
    j["post_processor"] = serde_json::Value::Null;
    c.write("tokenizer.json", j.to_string());
    t5_error(&c, "tokenizer.json", &["end-of-sequence"]);
    // another model type
    let mut j = j0.clone();
    j["model"] = serde_json::json!({"type": "WordLevel", "vocab": {"<pad>": 0, "</s>": 1, "<unk>": 2}, "unk_token": "<unk>"});
    c.write("tokenizer.json", j.to_string());
    t5_error(&c, "tokenizer.json", &["not a Unigram"]);

    // spiece.model alone
    std::fs::remove_file(c.path("tokenizer.json")).unwrap();
    let sp = c.read("spiece.model");
    let from_spm = T5Tokenizer::from_dir(&c.0, 256).unwrap();
    for p in prompts() {
        assert_eq!(
            from_spm.encode_padded(&p).unwrap(),
            reference.encode_padded(&p).unwrap()
        );
    }
    c.write("spiece.model", "");
    t5_error(&c, "spiece.model", &["not a valid SentencePiece model"]);
    c.write("spiece.model", &sp[..sp.len() / 2]);
    t5_error(&c, "spiece.model", &["not a valid SentencePiece model"]);
    // cut at the end of a piece: a valid protobuf that lacks the rest
    let ends = piece_ends(&sp);
    assert!(ends.len() > 100);
    for at in [ends[60], *ends.last().unwrap()] {
        c.write("spiece.model", &sp[..at]);
        t5_error(&c, "spiece.model", &["cut short"]);
    }
    // special pieces renamed: the piece text is length-prefixed, so keep the length
    for (tok, repl) in [("</s>", "</x>"), ("<pad>", "<pax>"), ("<unk>", "<unx>")] {
        let mut b = sp.clone();
        let at = b[..ends[3]]
            .windows(tok.len())
            .position(|w| w == tok.as_bytes())
            .unwrap();
        b[at..at + tok.len()].copy_from_slice(repl.as_bytes());
        c.write("spiece.model", &b);
        t5_error(&c, "spiece.model", &[&format!("{tok:?}"), "not a piece"]);
    }
    c.write("spiece.model", &sp);
    assert!(T5Tokenizer::from_dir(&c.0, 256).is_ok());
}
