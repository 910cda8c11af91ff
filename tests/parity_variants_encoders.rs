//! The VAE, CLIP and T5 loaders on architectures other than the tiny model's, against
//! diffusers / transformers (tests/fixtures/variants/{vae_*,clip_*,t5_*}, written by
//! scripts/reference/make_variant_encoders.py). Each variant is loaded from its folder through the
//! normal loaders, on the CPU, and compared with the f32 reference. Plus config parsing checks
//! (defaults, overrides and errors) that need no fixture.
mod common;

use std::path::{Path, PathBuf};

use common::{assert_close, repo_root};
use contentv::model::clip::{eos_position, ClipConfig, ClipText, TextAct};
use contentv::model::t5::{relative_bucket, T5Config, T5Encoder};
use contentv::model::vae::{DecodeOpts, VaeConfig, VaeDecoder, VaeOptions};
use contentv::ops::gemm::Act;
use contentv::runtime::residency::MemoryOptions;
use contentv::{Device, Tensor};

const REGENERATE: &str = ".venv-ref/bin/python scripts/reference/make_variant_encoders.py";

fn variants_dir() -> PathBuf {
    repo_root().join("tests/fixtures/variants")
}

/// The variant folders of one kind (`vae_`, `clip_`, `t5_`), sorted. Panics if there are fewer
/// than two (the fixtures are part of the repository).
fn variants(prefix: &str) -> Vec<PathBuf> {
    let dir = variants_dir();
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}\nregenerate with: {REGENERATE}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.is_dir()
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(prefix))
        })
        .collect();
    v.sort();
    assert!(
        v.len() >= 2,
        "{}: expected at least 2 {prefix}* variants, found {v:?}\nregenerate with: {REGENERATE}",
        dir.display()
    );
    v
}

fn name(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

/// reference.safetensors of a variant.
struct Reference(common::Fixture);

impl Reference {
    fn load(variant: &Path) -> Reference {
        Reference(common::Fixture::from_file(
            &variant.join("reference.safetensors"),
            REGENERATE,
        ))
    }
    fn has(&self, k: &str) -> bool {
        self.0.has(k)
    }
    fn shape(&self, k: &str) -> &[usize] {
        self.0.shape(k)
    }
    fn f32(&self, k: &str) -> &[f32] {
        self.0.f32(k)
    }
    fn ints(&self, k: &str) -> &[i64] {
        self.0.ints(k)
    }
    fn tensor(&self, k: &str) -> Tensor {
        Tensor::from_f32(self.f32(k).to_vec(), self.shape(k), &Device::Cpu).unwrap()
    }
    /// Rows of an integer [B, S] tensor as u32 token ids.
    fn ids(&self, k: &str) -> Vec<Vec<u32>> {
        self.ints(k)
            .chunks(self.shape(k)[1])
            .map(|r| r.iter().map(|&x| x as u32).collect())
            .collect()
    }
}

// ----- VAE ------------------------------------------------------------------------------------

#[test]
fn vae_variants_match_diffusers() {
    for v in variants("vae_") {
        let n = name(&v);
        let r = Reference::load(&v);
        let vae = VaeDecoder::from_dir(&v.join("vae"), &Device::Cpu, VaeOptions::default())
            .unwrap_or_else(|e| panic!("{n}: load: {e}"));
        let cfg = vae.config().clone();
        let mut i = 0;
        while r.has(&format!("l{i}.latent")) {
            let x = r.tensor(&format!("l{i}.latent"));
            let z = r.tensor(&format!("l{i}.latent_denorm"));
            let want_key = format!("f32.l{i}.video");
            let want = r.f32(&want_key);
            let ws = r.shape(&want_key).to_vec();
            let ls = x.shape().to_vec();
            // Shape bookkeeping from the config alone.
            assert_eq!(
                vae.output_shape(&ls).unwrap().to_vec(),
                ws,
                "{n}: output_shape"
            );
            assert_eq!(cfg.frames_for(ls[2]), ws[2], "{n}: frames_for");
            assert_eq!(ls[3] * cfg.spatial_factor(), ws[3], "{n}: spatial_factor");
            // Decoding de-normalised latents (diffusers' AutoencoderKLWan.decode input) ...
            let y = vae.decode(&z, DecodeOpts::denormalized()).unwrap();
            assert_eq!(y.shape(), &ws[..], "{n}: denormalized decode shape");
            assert_close(
                &format!("{n} denormalized decode l{i}"),
                &y.to_vec_f32().unwrap(),
                want,
                1e-4,
                1e-4,
            );
            // ... and DiT-space latents, de-normalised with the config's latents_mean / std.
            let y = vae.decode(&x, DecodeOpts::default()).unwrap();
            assert_close(
                &format!("{n} decode l{i}"),
                &y.to_vec_f32().unwrap(),
                want,
                1e-4,
                1e-4,
            );
            i += 1;
        }
        assert!(i > 0, "{n}: no latents in the reference");
    }
}

// ----- CLIP -----------------------------------------------------------------------------------

#[test]
fn clip_variants_match_transformers() {
    for v in variants("clip_") {
        let n = name(&v);
        let r = Reference::load(&v);
        let enc = ClipText::load(&v.join("text_encoder"), &Device::Cpu)
            .unwrap_or_else(|e| panic!("{n}: load: {e}"));
        let c = enc.config.clone();
        let mut i = 0;
        while r.has(&format!("s{i}.input_ids")) {
            let ids = r.ids(&format!("s{i}.input_ids"));
            let pidx = r.ints(&format!("s{i}.pooled_index"));
            for (row, &p) in ids.iter().zip(pidx) {
                assert_eq!(
                    eos_position(row, c.eos_token_id) as i64,
                    p,
                    "{n}: pooled token position (eos_token_id {}) of {row:?}",
                    c.eos_token_id
                );
            }
            // One row at a time, as the pipeline runs it, and the whole batch at once.
            let hk = format!("f32.s{i}.hidden_penultimate");
            let pk = format!("f32.s{i}.text_embeds");
            let (hs, ps) = (r.shape(&hk).to_vec(), r.shape(&pk).to_vec());
            let (hn, pn) = (hs[1] * hs[2], ps[1]);
            for (j, row) in ids.iter().enumerate() {
                let o = enc.forward(std::slice::from_ref(row)).unwrap();
                assert_eq!(o.penultimate.shape(), &[1, hs[1], hs[2]], "{n}");
                assert_eq!(o.pooled.shape(), &[1, ps[1]], "{n}");
                assert_close(
                    &format!("{n} s{i} hidden_states[-2][{j}]"),
                    &o.penultimate.to_vec_f32().unwrap(),
                    &r.f32(&hk)[j * hn..(j + 1) * hn],
                    1e-4,
                    1e-4,
                );
                assert_close(
                    &format!("{n} s{i} text_embeds[{j}]"),
                    &o.pooled.to_vec_f32().unwrap(),
                    &r.f32(&pk)[j * pn..(j + 1) * pn],
                    1e-4,
                    1e-4,
                );
            }
            let o = enc.forward(&ids).unwrap();
            assert_close(
                &format!("{n} s{i} hidden_states[-2] (batch)"),
                &o.penultimate.to_vec_f32().unwrap(),
                r.f32(&hk),
                1e-4,
                1e-4,
            );
            assert_close(
                &format!("{n} s{i} text_embeds (batch)"),
                &o.pooled.to_vec_f32().unwrap(),
                r.f32(&pk),
                1e-4,
                1e-4,
            );
            i += 1;
        }
        assert!(i > 0, "{n}: no inputs in the reference");
        // Longer than max_position_embeddings: refused, as transformers does.
        let long = vec![vec![0u32; c.max_positions + 1]];
        assert!(enc.forward(&long).is_err(), "{n}: over-long input accepted");
    }
}

// ----- T5 -------------------------------------------------------------------------------------

#[test]
fn t5_variants_match_transformers() {
    for v in variants("t5_") {
        let n = name(&v);
        let r = Reference::load(&v);
        let enc = T5Encoder::load(
            &v.join("text_encoder_3"),
            &Device::Cpu,
            &MemoryOptions::default(),
        )
        .unwrap_or_else(|e| panic!("{n}: load: {e}"));
        let c = enc.config.clone();
        // Relative position buckets for every distance in the table.
        let b = r.ints("buckets");
        let half = (b.len() / 2) as i64;
        for (k, &want) in b.iter().enumerate() {
            let rel = k as i64 - half;
            assert_eq!(
                relative_bucket(rel, c.buckets, c.max_distance) as i64,
                want,
                "{n}: bucket of rel {rel} ({} buckets, max distance {})",
                c.buckets,
                c.max_distance
            );
        }
        let mut i = 0;
        while r.has(&format!("s{i}.input_ids")) {
            let ids = r.ids(&format!("s{i}.input_ids"));
            let k = format!("f32.s{i}.last_hidden_state");
            let s = r.shape(&k).to_vec();
            let per = s[1] * s[2];
            for (j, row) in ids.iter().enumerate() {
                let h = enc.forward(std::slice::from_ref(row)).unwrap();
                assert_eq!(h.shape(), &[1, s[1], s[2]], "{n}");
                assert_close(
                    &format!("{n} s{i} last_hidden_state[{j}]"),
                    &h.to_vec_f32().unwrap(),
                    &r.f32(&k)[j * per..(j + 1) * per],
                    1e-4,
                    1e-4,
                );
            }
            let h = enc.forward(&ids).unwrap();
            assert_close(
                &format!("{n} s{i} last_hidden_state (batch)"),
                &h.to_vec_f32().unwrap(),
                r.f32(&k),
                1e-4,
                1e-4,
            );
            i += 1;
        }
        assert!(i > 0, "{n}: no inputs in the reference");
    }
}

// ----- GPU (skipped without one) -------------------------------------------------------------

/// bf16 on the GPU against the f32 reference: the direction must agree (cosine) and no element
/// may be far off relative to the output's scale. Catches wrong layouts, head dims the kernels
/// mishandle, or a missing op, not bf16 rounding.
fn assert_similar(name: &str, got: &[f32], want: &[f32]) {
    let r = common::compare(name, got, want, 0.0, 0.0);
    let scale = want.iter().fold(0f32, |a, b| a.max(b.abs())) as f64;
    println!(
        "{name}: bf16 vs f32: cosine {:.6}, max_abs {:.3e} (ref max {scale:.3})",
        r.cosine, r.max_abs
    );
    assert!(
        r.non_finite == 0 && r.cosine > 0.999 && r.max_abs <= 0.05 * scale + 1e-2,
        "{r}"
    );
}

#[test]
fn variants_on_gpu() {
    let Some(dev) = common::cuda_or_skip() else {
        return;
    };
    for v in variants("vae_") {
        let n = name(&v);
        let r = Reference::load(&v);
        let vae = VaeDecoder::from_dir(&v.join("vae"), &dev, VaeOptions::default()).unwrap();
        let z = r.tensor("l0.latent_denorm").to_device(&dev).unwrap();
        let y = vae.decode(&z, DecodeOpts::denormalized()).unwrap();
        assert_close(
            &format!("{n} GPU f32 decode"),
            &y.to_vec_f32().unwrap(),
            r.f32("f32.l0.video"),
            2e-4,
            1e-4,
        );
    }
    for v in variants("clip_") {
        let n = name(&v);
        let r = Reference::load(&v);
        let enc = ClipText::load(&v.join("text_encoder"), &dev).unwrap();
        let ids = r.ids("s0.input_ids");
        let o = enc.forward(&ids).unwrap();
        assert_similar(
            &format!("{n} GPU hidden_states[-2]"),
            &o.penultimate.to_vec_f32().unwrap(),
            r.f32("f32.s0.hidden_penultimate"),
        );
        assert_similar(
            &format!("{n} GPU text_embeds"),
            &o.pooled.to_vec_f32().unwrap(),
            r.f32("f32.s0.text_embeds"),
        );
    }
    for v in variants("t5_") {
        let n = name(&v);
        let r = Reference::load(&v);
        let enc =
            T5Encoder::load(&v.join("text_encoder_3"), &dev, &MemoryOptions::default()).unwrap();
        let h = enc.forward(&r.ids("s0.input_ids")).unwrap();
        assert_similar(
            &format!("{n} GPU last_hidden_state"),
            &h.to_vec_f32().unwrap(),
            r.f32("f32.s0.last_hidden_state"),
        );
    }
}

// ----- config parsing ---------------------------------------------------------------------------

fn err_text<T: std::fmt::Debug>(r: contentv::Result<T>) -> String {
    format!("{}", r.expect_err("expected an error"))
}

#[test]
fn vae_config_keys() {
    let base = r#""base_dim":4,"z_dim":2,"latents_mean":[0,0],"latents_std":[1,1]"#;
    let p =
        |extra: &str| VaeConfig::from_json_at(&format!("{{{base}{extra}}}"), "x/vae/config.json");
    // attn_scales only changes the encoder: accepted.
    let c = p(r#","dim_mult":[1,2,2],"attn_scales":[0.5,1.0],"temperal_downsample":[true,false]"#)
        .unwrap();
    assert_eq!(c.temperal_upsample(), vec![false, true]);
    assert_eq!((c.time_factor(), c.spatial_factor()), (2, 4));
    assert_eq!(c.frames_for(4), 7);
    assert_eq!(c.decoder_dims(), vec![8, 8, 8, 4]);
    // All false: no temporal upsampling.
    let c = p(r#","dim_mult":[1,1,2,4],"temperal_downsample":[false,false,false]"#).unwrap();
    assert_eq!((c.frames_for(5), c.spatial_factor()), (5, 8));
    // A single level: no upsampler at all.
    let c = p(r#","dim_mult":[3],"temperal_downsample":[]"#).unwrap();
    assert_eq!((c.frames_for(3), c.spatial_factor()), (3, 1));
    // Extra temperal_downsample entries: diffusers' decoder uses the reversed list's first ones.
    let c = p(r#","dim_mult":[1,2],"temperal_downsample":[true,false,true]"#).unwrap();
    assert_eq!(c.temperal_upsample(), vec![true]);
    assert_eq!(c.frames_for(3), 5);
    // Errors name the file and the key.
    let e = err_text(p(r#","dim_mult":[1,2,4],"temperal_downsample":[true]"#));
    assert!(
        e.contains("x/vae/config.json") && e.contains("temperal_downsample"),
        "{e}"
    );
    let e = err_text(VaeConfig::from_json_at(
        r#"{"z_dim":4,"latents_mean":[0,0],"latents_std":[1,1,1,1]}"#,
        "v.json",
    ));
    assert!(e.contains("latents_mean") && e.contains("z_dim"), "{e}");
    let e = err_text(p(r#","is_residual":true"#));
    assert!(e.contains("is_residual"), "{e}");
    let e = err_text(p(r#","patch_size":2"#));
    assert!(e.contains("patch_size"), "{e}");
    // Newer diffusers keys with their Wan2.1 values are fine; decoder_base_dim / out_channels are read.
    let c = p(r#","is_residual":false,"patch_size":null,"in_channels":3,"out_channels":3,"decoder_base_dim":6"#)
        .unwrap();
    assert_eq!(c.decoder_dims(), vec![24, 24, 24, 12, 6]);
    assert_eq!(c.out_channels, 3);
}

fn clip_cfg(json: &str) -> contentv::Result<ClipConfig> {
    ClipConfig::from_json(json.as_bytes(), Path::new("te/config.json"))
}

fn t5_cfg(json: &str) -> contentv::Result<T5Config> {
    T5Config::from_json(json.as_bytes(), Path::new("te3/config.json"))
}

#[test]
fn clip_config_keys() {
    // CLIPTextConfig defaults, eos_token_id 49407 included (the non-legacy pooled-token rule).
    let c = clip_cfg("{}").unwrap();
    assert_eq!(
        (c.hidden, c.intermediate, c.layers, c.heads, c.projection),
        (512, 2048, 12, 8, 512)
    );
    assert_eq!(
        (c.max_positions, c.vocab, c.eos_token_id),
        (77, 49408, 49407)
    );
    assert_eq!(c.act, TextAct::Fused(Act::QuickGelu));
    assert_eq!(eos_position(&[49406, 5, 49407, 49407], 49407), 2);
    assert_eq!(eos_position(&[49406, 5, 6], 49407), 0);
    assert_eq!(eos_position(&[0, 5, 9, 2, 9], 2), 2);
    // A CLIPConfig with text_config is read from text_config.
    let c = clip_cfg(
        r#"{"text_config":{"hidden_size":20,"num_attention_heads":4,"hidden_act":"gelu_new"}}"#,
    )
    .unwrap();
    assert_eq!((c.hidden, c.heads), (20, 4));
    assert_eq!(c.act, TextAct::Fused(Act::GeluTanh));
    let e = err_text(clip_cfg(r#"{"hidden_act":"mish"}"#));
    assert!(
        e.contains("te/config.json") && e.contains("hidden_act"),
        "{e}"
    );
    let e = err_text(clip_cfg(r#"{"hidden_size":30,"num_attention_heads":4}"#));
    assert!(e.contains("num_attention_heads"), "{e}");
}

#[test]
fn t5_config_keys() {
    // T5Config defaults: feed_forward_proj "relu" (non-gated).
    let c = t5_cfg("{}").unwrap();
    assert_eq!(
        (c.d_model, c.d_kv, c.d_ff, c.layers, c.heads),
        (512, 64, 2048, 6, 8)
    );
    assert_eq!((c.buckets, c.max_distance, c.vocab), (32, 128, 32128));
    assert_eq!((c.act, c.gated), (TextAct::Relu, false));
    let c = t5_cfg(r#"{"feed_forward_proj":"gated-gelu"}"#).unwrap();
    assert_eq!((c.act, c.gated), (TextAct::Fused(Act::GeluTanh), true));
    let c = t5_cfg(r#"{"feed_forward_proj":"gelu"}"#).unwrap();
    assert_eq!((c.act, c.gated), (TextAct::Fused(Act::GeluErf), false));
    let c = t5_cfg(r#"{"feed_forward_proj":"gated-silu"}"#).unwrap();
    assert_eq!((c.act, c.gated), (TextAct::Fused(Act::Silu), true));
    // Explicit dense_act_fn / is_gated_act win, as in transformers.
    let c =
        t5_cfg(r#"{"feed_forward_proj":"gated-gelu","dense_act_fn":"relu","is_gated_act":false}"#)
            .unwrap();
    assert_eq!((c.act, c.gated), (TextAct::Relu, false));
    let e = err_text(t5_cfg(r#"{"feed_forward_proj":"fancy-gelu"}"#));
    assert!(
        e.contains("te3/config.json") && e.contains("feed_forward_proj"),
        "{e}"
    );
    let e = err_text(t5_cfg(r#"{"feed_forward_proj":"gated-mish"}"#));
    assert!(e.contains("feed_forward_proj"), "{e}");
}
