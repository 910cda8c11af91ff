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
    manifest()["encoder_prompts"].as_array().unwrap().iter().map(|p| p.as_str().unwrap().to_string()).collect()
}

fn rows(v: &[f32], i: usize, n: usize) -> &[f32] {
    &v[i * n..(i + 1) * n]
}

#[test]
fn cpu_encoders_match_reference_f32() {
    let f = Fixture::load("text_encoders");
    let te = TextEncoders::load(&tiny_model_dir(), &Device::Cpu, &MemoryOptions::default()).unwrap();
    for (i, p) in prompts().iter().enumerate() {
        let t = te.tokens(p).unwrap();
        let ids = |k: &str| -> Vec<u32> {
            let n = f.shape(k)[1];
            f.ints(k)[i * n..(i + 1) * n].iter().map(|&v| v as u32).collect()
        };
        assert_eq!(t.clip_l, ids("clip_l.input_ids"), "clip_l ids of prompt {i}");
        assert_eq!(t.clip_g, ids("clip_g.input_ids"), "clip_g ids of prompt {i}");
        assert_eq!(t.t5, ids("t5.input_ids"), "t5 ids of prompt {i}");
        for (name, enc, tk) in [("clip_l", &te.clip_l, &t.clip_l), ("clip_g", &te.clip_g, &t.clip_g)] {
            let o = enc.forward(&[tk.clone()]).unwrap();
            let hk = format!("f32.{name}.hidden_penultimate");
            let n = f.shape(&hk)[1] * f.shape(&hk)[2];
            assert_close(&format!("{hk}[{i}]"), &o.penultimate.to_vec_f32().unwrap(), rows(f.f32(&hk), i, n), 1e-4, 1e-4);
            let pk = format!("f32.{name}.text_embeds");
            assert_close(&format!("{pk}[{i}]"), &o.pooled.to_vec_f32().unwrap(), rows(f.f32(&pk), i, f.shape(&pk)[1]), 1e-4, 1e-4);
        }
        let t5 = te.t5.forward(&[t.t5.clone()]).unwrap().to_vec_f32().unwrap();
        // The f32 reference is stored as f16: half an f16 ulp of relative error.
        assert_close(&format!("f32.t5.last_hidden_state[{i}]"), &t5, rows(f.f32("f32.t5.last_hidden_state"), i, 256 * 4096), 1e-4, 1.5e-3);
        let e = te.encode(p).unwrap();
        assert_eq!(e.ctx.shape(), &[1, 333, 4096]);
        let ctx = e.ctx.to_vec_f32().unwrap();
        let (dl, dg) = (te.clip_l.config.hidden, te.clip_g.config.hidden);
        for r in 0..77 {
            let row = &ctx[r * 4096..(r + 1) * 4096];
            assert!(row[dl + dg..].iter().all(|&v| v == 0.0), "row {r} not zero-padded");
        }
        assert_eq!(&ctx[77 * 4096..], &t5[..], "T5 rows follow the CLIP rows");
        assert_close(&format!("f32.pooled_prompt_embeds[{i}]"), &e.pooled.to_vec_f32().unwrap(), rows(f.f32("f32.pooled_prompt_embeds"), i, 2048), 1e-4, 1e-4);
    }
}

#[test]
fn embeddings_are_cached_and_offload_gives_the_same_result() {
    let p = &prompts()[0];
    let te = TextEncoders::load(&tiny_model_dir(), &Device::Cpu, &MemoryOptions::default()).unwrap();
    let t0 = std::time::Instant::now();
    let a = te.encode(p).unwrap();
    let first = t0.elapsed();
    let t1 = std::time::Instant::now();
    let b = te.encode(p).unwrap();
    let second = t1.elapsed();
    assert_eq!(a.ctx.to_vec_f32().unwrap(), b.ctx.to_vec_f32().unwrap());
    assert!(second * 5 < first, "cached encode took {second:?} vs {first:?}");
    for offload in [Offload::Model, Offload::Sequential] {
        let te2 = TextEncoders::load(&tiny_model_dir(), &Device::Cpu, &MemoryOptions { offload, ..Default::default() }).unwrap();
        let c = te2.encode_uncached(p).unwrap();
        let c2 = te2.encode_uncached(p).unwrap();
        assert_eq!(a.ctx.to_vec_f32().unwrap(), c.ctx.to_vec_f32().unwrap(), "{offload:?}: same embeddings as resident");
        assert_eq!(c.ctx.to_vec_f32().unwrap(), c2.ctx.to_vec_f32().unwrap(), "{offload:?}: re-encoding after release");
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
    for c in ["tokenizer", "tokenizer_2", "tokenizer_3", "text_encoder", "text_encoder_2", "text_encoder_3"] {
        copy(&tiny_model_dir().join(c), &root.join(c));
    }
    let mem = MemoryOptions::default();
    // Missing encoder folder.
    std::fs::rename(root.join("text_encoder_2"), root.join("te2.bak")).unwrap();
    let e = TextEncoders::load(&root, &Device::Cpu, &mem).err().unwrap().to_string();
    assert!(e.contains("text_encoder_2"), "{e}");
    std::fs::rename(root.join("te2.bak"), root.join("text_encoder_2")).unwrap();
    // Missing tokenizer folder.
    std::fs::rename(root.join("tokenizer"), root.join("tok.bak")).unwrap();
    let e = TextEncoders::load(&root, &Device::Cpu, &mem).err().unwrap().to_string();
    assert!(e.contains("tokenizer"), "{e}");
    std::fs::rename(root.join("tok.bak"), root.join("tokenizer")).unwrap();
    // A vocabulary larger than the embedding table: CLIP-L's config claims 1000 rows.
    let cfgp = root.join("text_encoder/config.json");
    let orig = std::fs::read_to_string(&cfgp).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&orig).unwrap();
    v["vocab_size"] = serde_json::json!(1000);
    std::fs::write(&cfgp, v.to_string()).unwrap();
    let e = TextEncoders::load(&root, &Device::Cpu, &mem).err().unwrap().to_string();
    assert!(e.contains("text_encoder") && e.contains("1000"), "{e}");
    std::fs::write(&cfgp, &orig).unwrap();
    // Non-UTF-8 merges file.
    std::fs::write(root.join("tokenizer_2/merges.txt"), [0xC3u8, 0x28, 0x0A]).unwrap();
    let e = TextEncoders::load(&root, &Device::Cpu, &mem).err().unwrap().to_string();
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
        let e = te.encode(p).unwrap();
        let n = 333 * 4096;
        // bf16 prompt_embeds are not stored; compare the pooled output and the T5 rows.
        assert_close(&format!("bf16.pooled_prompt_embeds[{i}]"), &e.pooled.to_vec_f32().unwrap(), rows(f.f32("bf16.pooled_prompt_embeds"), i, 2048), bf16_atol(err("pooled_prompt_embeds"), 0.01), 0.02);
        let ctx = e.ctx.to_vec_f32().unwrap();
        assert_eq!(ctx.len(), n);
        assert_close(&format!("t5 rows[{i}] vs f32 reference"), &ctx[77 * 4096..], rows(f.f32("f32.t5.last_hidden_state"), i, 256 * 4096), bf16_atol(err("t5_last_hidden_state"), 0.01), 0.02);
    }
}
