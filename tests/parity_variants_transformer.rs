//! The transformer (src/model/mmdit.rs) on checkpoints of other shapes than the tiny model:
//! tests/fixtures/variants/<name>/transformer/ (written with their reference forwards by
//! scripts/reference/make_variant_fixtures.py). They differ in the six arguments ContentV's
//! `SD3Transformer3DModel` reads from config.json: head dims 32, 16 and 8 (not 64), 1 to 4
//! heads, patch 1, 8 input / 4 output channels, a single (context_pre_only) block, bf16 and f32
//! on disk. Each is loaded through the normal loader (`Transformer::load`, which derives the
//! architecture from the weights and checks config.json) and compared on the CPU in f32:
//! intermediates, the batch-1 output and a batch-2 output (different latents, timesteps and
//! texts per entry). On a GPU, bf16 outputs against the reference's bf16 run.
mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::{assert_close, bf16_atol, repo_root};
use contentv::model::mmdit::{pos_embed_3d, Transformer};
use contentv::model::pipeline::Denoiser;
use contentv::runtime::{Device, Tensor};
use safetensors::SafeTensors;

const REGENERATE: &str = ".venv-ref/bin/python scripts/reference/make_variant_fixtures.py";
/// `FORMAT_VERSION` of scripts/reference/make_fixtures.py (the variant script imports it).
const FORMAT_VERSION: u64 = 1;
/// Text tokens of the pipeline's prompt_embeds (77 CLIP + 256 T5).
const TEXT_LEN: usize = 333;
/// f32 against the f32 reference (as tests/parity_transformer.rs).
const ATOL: f32 = 2e-4;
const RTOL: f32 = 2e-4;

fn variants_dir() -> PathBuf {
    repo_root().join("tests/fixtures/variants")
}

/// tests/fixtures/variants/transformers.json: variant name -> its SD3Transformer3DModel
/// arguments (the folder also holds make_variant_encoders.py's VAE / CLIP / T5 variants).
fn variants() -> BTreeMap<String, serde_json::Value> {
    let path = variants_dir().join("transformers.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read {}: {e}\nregenerate with: {REGENERATE}",
            path.display()
        )
    });
    let index: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        index["format_version"].as_u64(),
        Some(FORMAT_VERSION),
        "{}: stale; regenerate with: {REGENERATE}",
        path.display()
    );
    let v: BTreeMap<String, serde_json::Value> = index["variants"]
        .as_object()
        .expect("transformers.json: no variants")
        .iter()
        .map(|(k, v)| (k.clone(), v["config"].clone()))
        .collect();
    assert!(v.len() >= 3, "expected at least 3 variants, got {v:?}");
    v
}

/// One variant's reference.safetensors (format version checked).
struct Reference {
    t: common::Fixture,
}

impl Reference {
    fn load(name: &str) -> Reference {
        let path = variants_dir().join(name).join("reference.safetensors");
        let bytes = std::fs::read(&path).unwrap_or_else(|e| {
            panic!(
                "cannot read {}: {e}\nregenerate with: {REGENERATE}",
                path.display()
            )
        });
        let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
        let fv = meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get("format_version"))
            .cloned();
        assert_eq!(
            fv.as_deref(),
            Some(FORMAT_VERSION.to_string().as_str()),
            "{}: stale; regenerate with: {REGENERATE}",
            path.display()
        );
        Reference {
            t: common::Fixture::from_file(&path, REGENERATE),
        }
    }

    fn f32(&self, k: &str) -> &[f32] {
        self.t.f32(k)
    }
    fn shape(&self, k: &str) -> &[usize] {
        self.t.shape(k)
    }
    fn tensor(&self, k: &str, dev: &Device) -> Tensor {
        Tensor::from_f32(self.f32(k).to_vec(), self.shape(k), dev).unwrap()
    }
}

/// `ctx_values` of make_variant_fixtures.py: xorshift64 (13, 7, 17) from
/// `(seed * 0x9E3779B97F4A7C15) | 1`, uniform in [-amp, amp): the tests' shared generator.
fn ctx_values(n: usize, seed: u64, amp: f32) -> Vec<f32> {
    common::rand_vec(n, seed, amp)
}

/// Inputs of case `tag` ("b1" or "b2"): latent, timesteps, text context [B, 333, 4096], pooled.
fn inputs(r: &Reference, tag: &str, dev: &Device) -> (Tensor, Vec<f32>, Tensor, Tensor) {
    let seeds = r.t.ints(&format!("input.{tag}.ctx_seed"));
    let b = seeds.len();
    let mut ctx = Vec::with_capacity(b * TEXT_LEN * 4096);
    for (i, &s) in seeds.iter().enumerate() {
        let v = ctx_values(TEXT_LEN * 4096, s as u64, 2.0);
        let head = &r.f32(&format!("input.{tag}.ctx_head"))[i * 16..(i + 1) * 16];
        assert_eq!(
            &v[..16],
            head,
            "context generator differs from the reference's"
        );
        ctx.extend(v);
    }
    (
        r.tensor(&format!("input.{tag}.latent"), dev),
        r.f32(&format!("input.{tag}.timestep")).to_vec(),
        Tensor::from_f32(ctx, &[b, TEXT_LEN, 4096], dev).unwrap(),
        r.tensor(&format!("input.{tag}.pooled"), dev),
    )
}

fn transformer_dir(name: &str) -> PathBuf {
    variants_dir().join(name).join("transformer")
}

fn cfg_usize(cfg: &serde_json::Value, k: &str) -> usize {
    cfg[k]
        .as_u64()
        .unwrap_or_else(|| panic!("config has no {k}")) as usize
}

#[test]
fn config_is_derived_from_the_weights() {
    for (name, cfg) in variants() {
        let m = Transformer::load(&transformer_dir(&name), &Device::Cpu).unwrap();
        let c = &m.config;
        let (heads, hd) = (
            cfg_usize(&cfg, "num_attention_heads"),
            cfg_usize(&cfg, "attention_head_dim"),
        );
        assert_eq!(
            (
                c.layers,
                c.heads,
                c.head_dim,
                c.dim,
                c.patch,
                c.in_channels,
                c.out_channels
            ),
            (
                cfg_usize(&cfg, "num_layers"),
                heads,
                hd,
                heads * hd,
                cfg_usize(&cfg, "patch_size"),
                cfg_usize(&cfg, "in_channels"),
                cfg_usize(&cfg, "out_channels"),
            ),
            "{name}"
        );
        assert_eq!(
            (c.joint_attention_dim, c.pooled_dim, c.ff_dim),
            (4096, 2048, 4 * c.dim),
            "{name}"
        );
        assert!(
            c.head_dim != 64,
            "{name}: the variants exist to test head dims other than 64"
        );
    }
}

#[test]
fn position_tables_match_reference() {
    for (name, cfg) in variants() {
        let r = Reference::load(&name);
        let p = cfg_usize(&cfg, "patch_size");
        let d = cfg_usize(&cfg, "num_attention_heads") * cfg_usize(&cfg, "attention_head_dim");
        let s = r.shape("input.b1.latent");
        let got = pos_embed_3d(d, s[2], s[3] / p, s[4] / p);
        assert_close(
            &format!("{name}: pos_embed_table"),
            &got,
            r.f32("pos_embed_table"),
            1e-6,
            1e-6,
        );
    }
}

#[test]
fn cpu_forward_matches_reference_f32() {
    let dev = Device::Cpu;
    for (name, cfg) in variants() {
        let r = Reference::load(&name);
        let m = Transformer::load(&transformer_dir(&name), &dev).unwrap();
        let (x, ts, ctx, pooled) = inputs(&r, "b1", &dev);
        let mut taps: Vec<(String, Vec<f32>)> = Vec::new();
        let mut cb = |n: &str, t: &Tensor| taps.push((n.to_string(), t.to_vec_f32().unwrap()));
        let y = m
            .forward_taps(&x, None, &ts, &ctx, &pooled, Some(&mut cb))
            .unwrap();
        // Every intermediate the reference recorded, in forward order (the first failure is
        // the first op that goes wrong).
        let mut seen = 0;
        for (tap, v) in &taps {
            let key = format!("f32.b1.{tap}");
            if r.t.has(&key) {
                assert_close(&format!("{name}: {key}"), v, r.f32(&key), ATOL, RTOL);
                seen += 1;
            }
        }
        let want_taps =
            r.t.keys()
                .filter(|k| k.starts_with("f32.b1.") && *k != "f32.b1.output")
                .count();
        assert_eq!(
            seen, want_taps,
            "{name}: some reference intermediates were not tapped"
        );
        let layers = cfg_usize(&cfg, "num_layers");
        assert!(taps
            .iter()
            .any(|(n, _)| *n == format!("block{}.out_hidden", layers - 1)));
        assert_eq!(y.shape(), r.shape("f32.b1.output"), "{name}");
        assert_close(
            &format!("{name}: f32.b1.output"),
            &y.to_vec_f32().unwrap(),
            r.f32("f32.b1.output"),
            ATOL,
            RTOL,
        );
    }
}

#[test]
fn cpu_batch2_matches_reference_f32() {
    let dev = Device::Cpu;
    for (name, _) in variants() {
        let r = Reference::load(&name);
        let m = Transformer::load(&transformer_dir(&name), &dev).unwrap();
        let (x, ts, ctx, pooled) = inputs(&r, "b2", &dev);
        assert_eq!(ts.len(), 2);
        assert_ne!(ts[0], ts[1], "{name}: the batch entries should differ");
        let y = m.forward(&x, &ts, &ctx, &pooled).unwrap();
        assert_eq!(y.shape(), r.shape("f32.b2.output"), "{name}");
        assert_close(
            &format!("{name}: f32.b2.output"),
            &y.to_vec_f32().unwrap(),
            r.f32("f32.b2.output"),
            ATOL,
            RTOL,
        );
        // The run precomputation (adaLN modulation per step) gives the same result.
        m.prepare_run(&[vec![999.0, 1.0], ts.clone()], &pooled)
            .unwrap();
        let y2 = m.forward_step(1, &x, &ts, &ctx, &pooled).unwrap();
        m.end_run();
        assert_eq!(
            y2.to_vec_f32().unwrap(),
            y.to_vec_f32().unwrap(),
            "{name}: prepare_run changed the output"
        );
    }
}

/// A copy of variant `name`'s transformer/ folder in a fresh temp dir, with config.json
/// replaced by `config` (None: no config.json).
fn copy_with_config(name: &str, tag: &str, config: Option<&str>) -> PathBuf {
    let src = transformer_dir(name);
    let dst = std::env::temp_dir().join(format!(
        "contentv-variant-{}-{name}-{tag}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dst);
    std::fs::create_dir_all(&dst).unwrap();
    for e in std::fs::read_dir(&src).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "safetensors") {
            std::fs::copy(&p, dst.join(p.file_name().unwrap())).unwrap();
        }
    }
    if let Some(c) = config {
        std::fs::write(dst.join("config.json"), c).unwrap();
    }
    dst
}

fn edited_config(dir: &Path, edits: &[(&str, serde_json::Value)]) -> String {
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    for (k, x) in edits {
        v[*k] = x.clone();
    }
    v.to_string()
}

#[test]
fn config_json_is_cross_checked() {
    let name = "l1_h3_d32_bf16";
    assert!(variants().contains_key(name));
    let src = transformer_dir(name);
    let dev = Device::Cpu;
    // Without config.json the weights alone define the model.
    let d = copy_with_config(name, "none", None);
    let m = Transformer::load(&d, &dev).unwrap();
    assert_eq!((m.config.heads, m.config.head_dim), (3, 32));
    std::fs::remove_dir_all(&d).unwrap();
    // Keys ContentV's class ignores are ignored.
    let d = copy_with_config(
        name,
        "ignored",
        Some(&edited_config(
            &src,
            &[
                ("joint_attention_dim", 77.into()),
                ("qk_norm", "foo".into()),
            ],
        )),
    );
    Transformer::load(&d, &dev).unwrap();
    std::fs::remove_dir_all(&d).unwrap();
    for (tag, edits, needle) in [
        (
            "hd",
            vec![
                ("attention_head_dim", 64.into()),
                ("num_attention_heads", 3.into()),
            ],
            "num_attention_heads 3 x attention_head_dim 64 = 192",
        ),
        (
            "swap",
            vec![
                ("attention_head_dim", 96.into()),
                ("num_attention_heads", 1.into()),
            ],
            "\"attention_head_dim\" is 96 but the weights say 32",
        ),
        (
            "layers",
            vec![("num_layers", 38.into())],
            "\"num_layers\" is 38 but the weights say 1",
        ),
        (
            "patch",
            vec![("patch_size", 1.into())],
            "\"patch_size\" is 1",
        ),
        (
            "out",
            vec![("out_channels", 4.into())],
            "\"out_channels\" is 4",
        ),
        (
            "type",
            vec![("attention_head_dim", "32".into())],
            "expected a positive integer",
        ),
    ] {
        let d = copy_with_config(name, tag, Some(&edited_config(&src, &edits)));
        let e = Transformer::load(&d, &dev)
            .err()
            .unwrap_or_else(|| {
                panic!("{tag}: a config.json that contradicts the weights must fail")
            })
            .to_string();
        assert!(e.contains(needle), "{tag}: {e}");
        assert!(
            e.contains("config.json"),
            "{tag}: the error names the file: {e}"
        );
        std::fs::remove_dir_all(&d).unwrap();
    }
    let d = copy_with_config(name, "json", Some("{not json"));
    let e = Transformer::load(&d, &dev).err().unwrap().to_string();
    assert!(e.contains("config.json") && e.contains("JSON"), "{e}");
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn gpu_forward_matches_reference_bf16() {
    let Some(dev) = common::cuda_or_skip() else {
        return;
    };
    for (name, _) in variants() {
        let r = Reference::load(&name);
        let m = Transformer::load(&transformer_dir(&name), &dev).unwrap();
        for tag in ["b1", "b2"] {
            let (x, ts, ctx, pooled) = inputs(&r, tag, &dev);
            let y = m.forward(&x, &ts, &ctx, &pooled).unwrap();
            let atol = bf16_atol(r.f32(&format!("bf16.{tag}.max_abs_vs_f32"))[0], 0.01);
            assert_close(
                &format!("{name}: bf16.{tag}.output (GPU)"),
                &y.to_vec_f32().unwrap(),
                r.f32(&format!("bf16.{tag}.output")),
                atol,
                0.02,
            );
        }
    }
}
