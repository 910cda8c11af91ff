//! Text encoders and prompt embeddings against the diffusers fixtures
//! (tests/fixtures/text_encoders.safetensors, prompts = manifest encoder_prompts [prompt, negative]).
//! CPU: f32 against the f32 reference. GPU: bf16 against the bf16 reference within the
//! reference's own bf16-vs-f32 error.
mod common;

use common::{assert_close, bf16_atol, manifest, manifest_f64, tiny_model_dir, Fixture};
use contentv::model::pipeline::PromptEncoding;
use contentv::model::text::TextEncoders;
use contentv::runtime::device::gpu_unavailable_reason;
use contentv::runtime::residency::{MemoryOptions, Offload};
use contentv::runtime::Device;

fn prompts() -> Vec<String> {
    manifest()["encoder_prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect()
}

fn rows(v: &[f32], i: usize, n: usize) -> &[f32] {
    &v[i * n..(i + 1) * n]
}

#[test]
fn cpu_encoders_match_reference_f32() {
    let f = Fixture::load("text_encoders");
    let te =
        TextEncoders::load(&tiny_model_dir(), &Device::Cpu, &MemoryOptions::default()).unwrap();
    for (i, p) in prompts().iter().enumerate() {
        let t = te.tokens(p).unwrap();
        let ids = |k: &str| -> Vec<u32> {
            let n = f.shape(k)[1];
            f.ints(k)[i * n..(i + 1) * n]
                .iter()
                .map(|&v| v as u32)
                .collect()
        };
        assert_eq!(
            t.clip_l,
            ids("clip_l.input_ids"),
            "clip_l ids of prompt {i}"
        );
        assert_eq!(
            t.clip_g,
            ids("clip_g.input_ids"),
            "clip_g ids of prompt {i}"
        );
        assert_eq!(t.t5, ids("t5.input_ids"), "t5 ids of prompt {i}");
        for (name, enc, tk) in [
            ("clip_l", &te.clip_l, &t.clip_l),
            ("clip_g", &te.clip_g, &t.clip_g),
        ] {
            let o = enc.forward(std::slice::from_ref(tk)).unwrap();
            let hk = format!("f32.{name}.hidden_penultimate");
            let n = f.shape(&hk)[1] * f.shape(&hk)[2];
            assert_close(
                &format!("{hk}[{i}]"),
                &o.penultimate.to_vec_f32().unwrap(),
                rows(f.f32(&hk), i, n),
                1e-4,
                1e-4,
            );
            let pk = format!("f32.{name}.text_embeds");
            assert_close(
                &format!("{pk}[{i}]"),
                &o.pooled.to_vec_f32().unwrap(),
                rows(f.f32(&pk), i, f.shape(&pk)[1]),
                1e-4,
                1e-4,
            );
        }
        let t5 = te
            .t5
            .forward(std::slice::from_ref(&t.t5))
            .unwrap()
            .to_vec_f32()
            .unwrap();
        // The f32 reference is stored as f16: half an f16 ulp is 2^-11 = 4.9e-4 relative; the
        // f32 computation itself agrees to ~1e-6.
        assert_close(
            &format!("f32.t5.last_hidden_state[{i}]"),
            &t5,
            rows(f.f32("f32.t5.last_hidden_state"), i, 256 * 4096),
            2e-5,
            6e-4,
        );
        let e = te.encode(p).unwrap();
        assert_eq!(e.ctx.shape(), &[1, 333, 4096]);
        let ctx = e.ctx.to_vec_f32().unwrap();
        let (dl, dg) = (te.clip_l.config.hidden, te.clip_g.config.hidden);
        for r in 0..77 {
            let row = &ctx[r * 4096..(r + 1) * 4096];
            assert!(
                row[dl + dg..].iter().all(|&v| v == 0.0),
                "row {r} not zero-padded"
            );
        }
        assert_eq!(&ctx[77 * 4096..], &t5[..], "T5 rows follow the CLIP rows");
        // CLIP rows: [clip_l | clip_g | zeros], against the reference's penultimate states.
        let (pl, pg) = (
            rows(f.f32("f32.clip_l.hidden_penultimate"), i, 77 * dl),
            rows(f.f32("f32.clip_g.hidden_penultimate"), i, 77 * dg),
        );
        let ctx_l: Vec<f32> = (0..77)
            .flat_map(|r| ctx[r * 4096..r * 4096 + dl].to_vec())
            .collect();
        let ctx_g: Vec<f32> = (0..77)
            .flat_map(|r| ctx[r * 4096 + dl..r * 4096 + dl + dg].to_vec())
            .collect();
        assert_close(
            &format!("prompt_embeds[{i}] CLIP-L columns"),
            &ctx_l,
            pl,
            1e-4,
            1e-4,
        );
        assert_close(
            &format!("prompt_embeds[{i}] bigG columns"),
            &ctx_g,
            pg,
            1e-4,
            1e-4,
        );
        assert_close(
            &format!("f32.pooled_prompt_embeds[{i}]"),
            &e.pooled.to_vec_f32().unwrap(),
            rows(f.f32("f32.pooled_prompt_embeds"), i, 2048),
            1e-4,
            1e-4,
        );
    }
}

#[test]
fn embeddings_are_cached_and_offload_gives_the_same_result() {
    let p = &prompts()[0];
    let te =
        TextEncoders::load(&tiny_model_dir(), &Device::Cpu, &MemoryOptions::default()).unwrap();
    let t0 = std::time::Instant::now();
    let a = te.encode(p).unwrap();
    let first = t0.elapsed();
    let t1 = std::time::Instant::now();
    let b = te.encode(p).unwrap();
    let second = t1.elapsed();
    assert_eq!(a.ctx.to_vec_f32().unwrap(), b.ctx.to_vec_f32().unwrap());
    assert!(
        second * 5 < first,
        "cached encode took {second:?} vs {first:?}"
    );
    for offload in [Offload::Model, Offload::Sequential] {
        let te2 = TextEncoders::load(
            &tiny_model_dir(),
            &Device::Cpu,
            &MemoryOptions {
                offload,
                ..Default::default()
            },
        )
        .unwrap();
        let c = te2.encode_uncached(p).unwrap();
        let c2 = te2.encode_uncached(p).unwrap();
        assert_eq!(
            a.ctx.to_vec_f32().unwrap(),
            c.ctx.to_vec_f32().unwrap(),
            "{offload:?}: same embeddings as resident"
        );
        assert_eq!(
            c.ctx.to_vec_f32().unwrap(),
            c2.ctx.to_vec_f32().unwrap(),
            "{offload:?}: re-encoding after release"
        );
    }
}

#[test]
fn bad_model_folders_are_clear_errors() {
    let root = std::env::temp_dir().join(format!("contentv-text-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let copy = |from: &std::path::Path, to: &std::path::Path| {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    };
    for c in [
        "tokenizer",
        "tokenizer_2",
        "tokenizer_3",
        "text_encoder",
        "text_encoder_2",
        "text_encoder_3",
    ] {
        copy(&tiny_model_dir().join(c), &root.join(c));
    }
    let mem = MemoryOptions::default();
    // Missing encoder folder.
    std::fs::rename(root.join("text_encoder_2"), root.join("te2.bak")).unwrap();
    let e = TextEncoders::load(&root, &Device::Cpu, &mem)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("text_encoder_2"), "{e}");
    std::fs::rename(root.join("te2.bak"), root.join("text_encoder_2")).unwrap();
    // Missing tokenizer folder.
    std::fs::rename(root.join("tokenizer"), root.join("tok.bak")).unwrap();
    let e = TextEncoders::load(&root, &Device::Cpu, &mem)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("tokenizer"), "{e}");
    std::fs::rename(root.join("tok.bak"), root.join("tokenizer")).unwrap();
    // A vocabulary larger than the embedding table: CLIP-L's config claims 1000 rows.
    let cfgp = root.join("text_encoder/config.json");
    let orig = std::fs::read_to_string(&cfgp).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&orig).unwrap();
    v["vocab_size"] = serde_json::json!(1000);
    std::fs::write(&cfgp, v.to_string()).unwrap();
    let e = TextEncoders::load(&root, &Device::Cpu, &mem)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("text_encoder") && e.contains("1000"), "{e}");
    std::fs::write(&cfgp, &orig).unwrap();
    // Non-UTF-8 merges file.
    std::fs::write(root.join("tokenizer_2/merges.txt"), [0xC3u8, 0x28, 0x0A]).unwrap();
    let e = TextEncoders::load(&root, &Device::Cpu, &mem)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("merges.txt") && e.contains("UTF-8"), "{e}");
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn gpu_encoders_match_reference_bf16() {
    if let Some(r) = gpu_unavailable_reason() {
        println!("SKIP: {r}");
        return;
    }
    let dev = Device::cuda(0).unwrap();
    let f = Fixture::load("text_encoders");
    let te = TextEncoders::load(&tiny_model_dir(), &dev, &MemoryOptions::default()).unwrap();
    let err = |k: &str| manifest_f64(&format!("/text_encoders_bf16_error/{k}/max_abs")) as f32;
    for (i, p) in prompts().iter().enumerate() {
        let t = te.tokens(p).unwrap();
        for (name, enc, tk) in [
            ("clip_l", &te.clip_l, &t.clip_l),
            ("clip_g", &te.clip_g, &t.clip_g),
        ] {
            let o = enc.forward(std::slice::from_ref(tk)).unwrap();
            let hk = format!("bf16.{name}.hidden_penultimate");
            let n = f.shape(&hk)[1] * f.shape(&hk)[2];
            let tol = bf16_atol(err(&format!("{name}_hidden_penultimate")), 0.01);
            assert_close(
                &format!("{hk}[{i}]"),
                &o.penultimate.to_vec_f32().unwrap(),
                rows(f.f32(&hk), i, n),
                tol,
                0.02,
            );
            let pk = format!("bf16.{name}.text_embeds");
            assert_close(
                &format!("{pk}[{i}]"),
                &o.pooled.to_vec_f32().unwrap(),
                rows(f.f32(&pk), i, f.shape(&pk)[1]),
                bf16_atol(err("pooled_prompt_embeds"), 0.01),
                0.02,
            );
        }
        let e = te.encode(p).unwrap();
        let n = 333 * 4096;
        // bf16 prompt_embeds are not stored; compare the pooled output and the T5 rows.
        assert_close(
            &format!("bf16.pooled_prompt_embeds[{i}]"),
            &e.pooled.to_vec_f32().unwrap(),
            rows(f.f32("bf16.pooled_prompt_embeds"), i, 2048),
            bf16_atol(err("pooled_prompt_embeds"), 0.01),
            0.02,
        );
        let ctx = e.ctx.to_vec_f32().unwrap();
        assert_eq!(ctx.len(), n);
        assert_close(
            &format!("t5 rows[{i}] vs f32 reference"),
            &ctx[77 * 4096..],
            rows(f.f32("f32.t5.last_hidden_state"), i, 256 * 4096),
            bf16_atol(err("t5_last_hidden_state"), 0.01),
            0.02,
        );
    }
}

/// All fixture prompts (manifest `prompts`) through the pipeline's tokenization: identical ids,
/// including the prompt where transformers' slow and fast CLIP tokenizers differ (the reference
/// used the slow one).
#[test]
fn prompt_token_ids_match_reference() {
    let f = Fixture::load("tokens");
    let te =
        TextEncoders::load(&tiny_model_dir(), &Device::Cpu, &MemoryOptions::default()).unwrap();
    let ps: Vec<String> = manifest()["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect();
    assert_eq!(ps.len(), 8);
    let ids = |k: &str| -> Vec<u32> { f.ints(k).iter().map(|&v| v as u32).collect() };
    for (i, p) in ps.iter().enumerate() {
        let t = te.tokens(p).unwrap();
        assert_eq!(
            t.clip_l,
            ids(&format!("clip_l.p{i}.padded")),
            "clip_l prompt {i} {p:?}"
        );
        assert_eq!(
            t.clip_g,
            ids(&format!("clip_g.p{i}.padded")),
            "clip_g prompt {i} {p:?}"
        );
        assert_eq!(t.t5, ids(&format!("t5.p{i}.padded")), "t5 prompt {i} {p:?}");
        assert_eq!((t.clip_l.len(), t.clip_g.len(), t.t5.len()), (77, 77, 256));
        // Raw ids (no truncation/padding) where the fixture has them.
        let mut raw_l = vec![te.tok_l.bos];
        raw_l.extend(te.tok_l.encode_raw(p));
        raw_l.push(te.tok_l.eos);
        assert_eq!(
            raw_l,
            ids(&format!("clip_l.p{i}.raw")),
            "clip_l raw prompt {i}"
        );
        assert_eq!(
            te.tok_t5.encode_raw(p).unwrap(),
            ids(&format!("t5.p{i}.raw")),
            "t5 raw prompt {i}"
        );
    }
    for name in ["clip_l", "clip_g"] {
        for d in manifest()["tokenizers"]["clip_slow_vs_fast_differences"][name]
            .as_array()
            .unwrap()
        {
            let i = d["prompt_index"].as_u64().unwrap() as usize;
            let slow: Vec<u32> = d["slow_pipeline_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect();
            let tok = if name == "clip_l" {
                &te.tok_l
            } else {
                &te.tok_g
            };
            let mut got = vec![tok.bos];
            got.extend(tok.encode_raw(&ps[i]));
            got.push(tok.eos);
            assert_eq!(got, slow, "{name} prompt {i}: slow-tokenizer ids");
        }
    }
    println!(
        "token ids identical for {} prompts (CLIP-L, bigG, T5)",
        ps.len()
    );
}

/// Long prompts: CLIP keeps BOS + 75 + EOS, T5 keeps 255 + EOS, and a warning says how many
/// tokens were dropped.
#[test]
fn long_prompts_are_truncated_with_a_warning() {
    let te =
        TextEncoders::load(&tiny_model_dir(), &Device::Cpu, &MemoryOptions::default()).unwrap();
    let long = "a photo of a cat sitting on a red sofa, ".repeat(40);
    let t = te.tokens(&long).unwrap();
    let raw_l = te.tok_l.encode_raw(&long).len();
    let raw_t5 = te.tok_t5.encode_raw(&long).unwrap().len(); // includes the EOS
    assert!(raw_l > 75 && raw_t5 > 256, "{raw_l} {raw_t5}");
    assert_eq!(t.clip_l.len(), 77);
    assert_eq!((t.clip_l[0], t.clip_l[76]), (49406, 49407));
    assert_eq!(&t.clip_l[1..76], &te.tok_l.encode_raw(&long)[..75]);
    assert_eq!((t.clip_g[0], t.clip_g[76]), (49406, 49407));
    assert_eq!(t.t5.len(), 256);
    assert_eq!(t.t5[255], 1, "T5 keeps the EOS last");
    assert_eq!(&t.t5[..255], &te.tok_t5.encode_raw(&long).unwrap()[..255]);
    assert_eq!(
        t.dropped,
        [
            raw_l - 75,
            te.tok_g.encode_raw(&long).len() - 75,
            raw_t5 - 256
        ]
    );
    let w = t.warnings();
    assert_eq!(w.len(), 3, "{w:?}");
    assert!(
        w[0].contains(&format!("{} tokens were dropped", raw_l - 75))
            && w[0].contains("tokenizer/"),
        "{}",
        w[0]
    );
    assert!(
        w[2].contains(&format!("{} tokens were dropped", raw_t5 - 256))
            && w[2].contains("tokenizer_3/"),
        "{}",
        w[2]
    );
    assert!(te.tokens("a cat").unwrap().warnings().is_empty());
    // Encoding a truncated prompt works (77 + 256 rows).
    assert_eq!(te.encode(&long).unwrap().ctx.shape(), &[1, 333, 4096]);
}

/// A CLIP tokenizer folder with only a tokenizer.json (BPE model inside) gives the same ids as
/// vocab.json + merges.txt.
#[test]
fn clip_tokenizer_from_tokenizer_json_only() {
    use contentv::model::tokenizer::ClipTokenizer;
    let root = std::env::temp_dir().join(format!("contentv-cliptj-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    for folder in ["tokenizer", "tokenizer_2"] {
        let src = tiny_model_dir().join(folder);
        let dst = root.join(folder);
        std::fs::create_dir_all(&dst).unwrap();
        let vocab: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(src.join("vocab.json")).unwrap())
                .unwrap();
        let merges: Vec<serde_json::Value> = std::fs::read_to_string(src.join("merges.txt"))
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with("#version") && !l.trim().is_empty())
            .map(|l| {
                let (a, b) = l.split_once(' ').unwrap();
                serde_json::json!([a, b])
            })
            .collect();
        let tj = serde_json::json!({
            "added_tokens": [{"id": 49406, "content": "<|startoftext|>"}, {"id": 49407, "content": "<|endoftext|>"}],
            "model": {"type": "BPE", "vocab": vocab, "merges": merges, "end_of_word_suffix": "</w>"},
        });
        std::fs::write(dst.join("tokenizer.json"), tj.to_string()).unwrap();
        for f in ["tokenizer_config.json", "special_tokens_map.json"] {
            std::fs::copy(src.join(f), dst.join(f)).unwrap();
        }
        let a = ClipTokenizer::from_dir(&src).unwrap();
        let b = ClipTokenizer::from_dir(&dst).unwrap();
        assert_eq!((a.bos, a.eos, a.pad), (b.bos, b.eos, b.pad));
        for p in manifest()["prompts"].as_array().unwrap() {
            let p = p.as_str().unwrap();
            assert_eq!(a.encode_padded(p), b.encode_padded(p), "{folder}: {p:?}");
        }
    }
    let _ = std::fs::remove_dir_all(&root);
}

/// Vocabularies that do not fit the embedding tables, and unreadable encoder configs.
#[test]
fn vocabulary_larger_than_embedding_table_is_a_clear_error() {
    let root = std::env::temp_dir().join(format!("contentv-textvocab-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    for c in [
        "tokenizer",
        "tokenizer_2",
        "tokenizer_3",
        "text_encoder",
        "text_encoder_2",
        "text_encoder_3",
    ] {
        let to = root.join(c);
        std::fs::create_dir_all(&to).unwrap();
        for e in std::fs::read_dir(tiny_model_dir().join(c)).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
    let mem = MemoryOptions::default();
    assert!(TextEncoders::load(&root, &Device::Cpu, &mem).is_ok());
    // CLIP-L vocabulary with an id past the 49408-row embedding table (a token the merges
    // produce, moved there: a token no merge produces is refused earlier, as a damaged file).
    let vp = root.join("tokenizer/vocab.json");
    let orig = std::fs::read_to_string(&vp).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&orig).unwrap();
    v["the</w>"] = serde_json::json!(49408);
    std::fs::write(&vp, v.to_string()).unwrap();
    let e = TextEncoders::load(&root, &Device::Cpu, &mem)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("tokenizer")
            && e.contains("49409")
            && e.contains("49408")
            && e.contains("mismatched"),
        "{e}"
    );
    std::fs::write(&vp, &orig).unwrap();
    // T5 tokenizer with an added token id at the table size (128 rows).
    let tp = root.join("tokenizer_3/tokenizer.json");
    let orig = std::fs::read_to_string(&tp).unwrap();
    let mut t: serde_json::Value = serde_json::from_str(&orig).unwrap();
    t["added_tokens"].as_array_mut().unwrap().push(serde_json::json!({
        "id": 128, "content": "<extra_id_0>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true
    }));
    std::fs::write(&tp, t.to_string()).unwrap();
    let e = TextEncoders::load(&root, &Device::Cpu, &mem)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("tokenizer_3") && e.contains("128") && e.contains("mismatched"),
        "{e}"
    );
    std::fs::write(&tp, &orig).unwrap();
    // Missing T5 folders.
    for folder in ["tokenizer_3", "text_encoder_3"] {
        std::fs::rename(root.join(folder), root.join("moved")).unwrap();
        let e = TextEncoders::load(&root, &Device::Cpu, &mem)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains(folder) && e.contains("does not exist"), "{e}");
        std::fs::rename(root.join("moved"), root.join(folder)).unwrap();
    }
    // Non-UTF-8 / non-JSON encoder config.
    let cp = root.join("text_encoder_3/config.json");
    let orig = std::fs::read(&cp).unwrap();
    std::fs::write(&cp, [0xffu8, 0xfe, b'{']).unwrap();
    let e = TextEncoders::load(&root, &Device::Cpu, &mem)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("text_encoder_3") && e.contains("config.json"),
        "{e}"
    );
    std::fs::write(&cp, &orig).unwrap();
    // CLIP tokenizer folder without vocab.json or tokenizer.json.
    std::fs::remove_file(root.join("tokenizer_2/vocab.json")).unwrap();
    let e = TextEncoders::load(&root, &Device::Cpu, &mem)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("tokenizer_2") && e.contains("vocab.json"), "{e}");
    let _ = std::fs::remove_dir_all(&root);
}
