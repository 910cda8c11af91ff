//! Model-level GPU benchmarks at ContentV-8B shapes with random weights (a synthetic checkpoint
//! with the real widths and a few layers is written to a temporary folder first):
//! - transformer forward at the default size (432x768, 125 frames: 41,472 + 333 tokens),
//!   CFG batch 2, in the memory modes resident / sequential offload / INT8 / sequential+INT8;
//!   per-layer time, extrapolated to 38 layers, and peak pool memory;
//! - the T5-XXL encoder (d_model 4096, 64 heads, d_ff 10240) on two 256-token prompts.
//!
//! `CONTENTV_BENCH_LAYERS` (default 2) sets the number of synthetic layers. Prints SKIP without a GPU.
#[path = "util/mod.rs"]
mod util;
use std::path::Path;
use std::time::Instant;

use contentv::io::safetensors::{write_safetensors, StDtype};
use contentv::model::mmdit::Transformer;
use contentv::model::pipeline::Denoiser;
use contentv::model::t5::T5Encoder;
use contentv::runtime::residency::{MemoryOptions, Offload};
use contentv::runtime::{DType, Tensor};

struct Rng(u64);
impl Rng {
    fn bf16_bytes(&mut self, n: usize, scale: f32) -> Vec<u8> {
        let mut out = Vec::with_capacity(2 * n);
        for _ in 0..n {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            let v = (((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0) * scale;
            out.extend_from_slice(&half::bf16::from_f32(v).to_le_bytes());
        }
        out
    }
}

fn write(path: &Path, tensors: Vec<(String, Vec<usize>)>, rng: &mut Rng) {
    let data: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .into_iter()
        .map(|(n, s)| {
            let numel: usize = s.iter().product();
            let scale = if n.ends_with("bias") {
                0.01
            } else if n.contains("norm") && s.len() == 1 {
                1.0
            } else {
                0.02
            };
            let b = rng.bf16_bytes(numel, scale);
            (n, s, b)
        })
        .collect();
    let views: Vec<(&str, StDtype, &[usize], &[u8])> = data
        .iter()
        .map(|(n, s, b)| (n.as_str(), StDtype::BF16, s.as_slice(), b.as_slice()))
        .collect();
    write_safetensors(path, &views, None).unwrap();
}

/// Widths: ContentV-8B's (2432 wide, 38 heads, T5-XXL 4096), or tiny ones in a rehearsal.
fn width() -> usize {
    util::scaled(2432, 128)
}
fn ctx_dim() -> usize {
    util::scaled(4096, 64)
}

fn synth_transformer(dir: &Path, layers: usize, rng: &mut Rng) {
    let d = width();
    let c = ctx_dim();
    let mut t: Vec<(String, Vec<usize>)> = vec![
        ("pos_embed.proj.weight".into(), vec![d, 16, 2, 2]),
        ("pos_embed.proj.bias".into(), vec![d]),
        ("context_embedder.weight".into(), vec![d, c]),
        ("context_embedder.bias".into(), vec![d]),
        ("norm_out.linear.weight".into(), vec![2 * d, d]),
        ("norm_out.linear.bias".into(), vec![2 * d]),
        ("proj_out.weight".into(), vec![64, d]),
        ("proj_out.bias".into(), vec![64]),
    ];
    for (n, i) in [("timestep_embedder", 256), ("text_embedder", 2048)] {
        t.push((format!("time_text_embed.{n}.linear_1.weight"), vec![d, i]));
        t.push((format!("time_text_embed.{n}.linear_1.bias"), vec![d]));
        t.push((format!("time_text_embed.{n}.linear_2.weight"), vec![d, d]));
        t.push((format!("time_text_embed.{n}.linear_2.bias"), vec![d]));
    }
    for l in 0..layers {
        let last = l + 1 == layers;
        let p = format!("transformer_blocks.{l}.");
        let mut lin = |name: &str, o: usize, i: usize| {
            t.push((format!("{p}{name}.weight"), vec![o, i]));
            t.push((format!("{p}{name}.bias"), vec![o]));
        };
        lin("norm1.linear", 6 * d, d);
        lin("norm1_context.linear", if last { 2 * d } else { 6 * d }, d);
        for n in [
            "attn.to_q",
            "attn.to_k",
            "attn.to_v",
            "attn.add_q_proj",
            "attn.add_k_proj",
            "attn.add_v_proj",
            "attn.to_out.0",
        ] {
            lin(n, d, d);
        }
        lin("ff.net.0.proj", 4 * d, d);
        lin("ff.net.2", d, 4 * d);
        if !last {
            lin("attn.to_add_out", d, d);
            lin("ff_context.net.0.proj", 4 * d, d);
            lin("ff_context.net.2", d, 4 * d);
        }
        for n in ["norm_q", "norm_k", "norm_added_q", "norm_added_k"] {
            t.push((format!("{p}attn.{n}.weight"), vec![64]));
        }
    }
    std::fs::create_dir_all(dir).unwrap();
    write(&dir.join("diffusion_pytorch_model.safetensors"), t, rng);
}

fn synth_t5(dir: &Path, layers: usize, rng: &mut Rng) {
    let (d, inner, ff) = (ctx_dim(), ctx_dim(), util::scaled(10240, 160));
    let vocab = util::scaled(32128, 512);
    let mut t: Vec<(String, Vec<usize>)> = vec![
        ("shared.weight".into(), vec![vocab, d]),
        ("encoder.final_layer_norm.weight".into(), vec![d]),
    ];
    t.push((
        "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight".into(),
        vec![32, inner / 64],
    ));
    for l in 0..layers {
        let p = format!("encoder.block.{l}.layer.");
        for n in ["q", "k", "v"] {
            t.push((format!("{p}0.SelfAttention.{n}.weight"), vec![inner, d]));
        }
        t.push((format!("{p}0.SelfAttention.o.weight"), vec![d, inner]));
        t.push((format!("{p}0.layer_norm.weight"), vec![d]));
        t.push((format!("{p}1.DenseReluDense.wi_0.weight"), vec![ff, d]));
        t.push((format!("{p}1.DenseReluDense.wi_1.weight"), vec![ff, d]));
        t.push((format!("{p}1.DenseReluDense.wo.weight"), vec![d, ff]));
        t.push((format!("{p}1.layer_norm.weight"), vec![d]));
    }
    std::fs::create_dir_all(dir).unwrap();
    let cfg = serde_json::json!({"d_model": d, "d_kv": 64, "d_ff": ff, "num_layers": layers, "num_heads": inner / 64, "vocab_size": vocab,
        "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128, "layer_norm_epsilon": 1e-6, "feed_forward_proj": "gated-gelu"});
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    write(&dir.join("model.safetensors"), t, rng);
}

fn main() {
    let Some(dev) = util::cuda_or_skip() else {
        return;
    };
    let g = dev.gpu().unwrap().clone();
    let layers: usize = std::env::var("CONTENTV_BENCH_LAYERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let root = std::env::temp_dir().join(format!("contentv-synth-{}", std::process::id()));
    let mut rng = Rng(0x9E3779B97F4A7C15);
    let t = Instant::now();
    synth_transformer(&root.join("transformer"), layers, &mut rng);
    synth_t5(&root.join("text_encoder_3"), layers, &mut rng);
    println!(
        "device: {}; synthetic 8B-shaped checkpoint with {layers} layers written in {:.1}s",
        g.name,
        t.elapsed().as_secs_f64()
    );

    // T5-XXL-shaped encoder: two 256-token prompts.
    let t5 = T5Encoder::load(
        &root.join("text_encoder_3"),
        &dev,
        &MemoryOptions::default(),
    )
    .unwrap();
    let ids: Vec<Vec<u32>> = (0..2)
        .map(|b| {
            (0..util::scaled(256, 16))
                .map(|i| ((i * 7 + b * 13) % util::scaled(32000, 500)) as u32)
                .collect()
        })
        .collect();
    t5.forward(&ids).unwrap();
    dev.synchronize().unwrap();
    let (d, ff) = (ctx_dim(), util::scaled(10240, 160));
    util::l2_exceeded(
        "the T5-shaped encoder (its bf16 weights)",
        layers * (4 * d * d + 3 * d * ff) * 2,
    );
    let t = Instant::now();
    t5.forward(&ids).unwrap();
    dev.synchronize().unwrap();
    let ms = t.elapsed().as_secs_f64() * 1e3;
    println!("T5-XXL-shaped encoder, 2 x {} tokens, {layers} layers: {ms:.2} ms -> {:.1} ms for 24 layers (per-layer extrapolation)", ids[0].len(), ms / layers as f64 * 24.0);
    drop(t5);

    let (b, tl, h, w) = (
        2,
        util::scaled(32, 1),
        util::scaled(54, 4),
        util::scaled(96, 4),
    );
    let x = Tensor::zeros(&[b, 16, tl, h, w], DType::BF16, &dev).unwrap();
    let ctx = Tensor::zeros(&[b, util::scaled(333, 13), ctx_dim()], DType::BF16, &dev).unwrap();
    let pooled = Tensor::zeros(&[b, 2048], DType::BF16, &dev).unwrap();
    let quick = std::env::var("CONTENTV_BENCH_QUICK").is_ok();
    let modes: Vec<(&str, MemoryOptions)> = vec![
        ("resident bf16", MemoryOptions::default()),
        (
            "sequential offload bf16",
            MemoryOptions {
                offload: Offload::Sequential,
                ..Default::default()
            },
        ),
        (
            "resident int8",
            MemoryOptions {
                int8: true,
                ..Default::default()
            },
        ),
        (
            "sequential offload int8",
            MemoryOptions {
                int8: true,
                offload: Offload::Sequential,
                ..Default::default()
            },
        ),
    ];
    for (name, mem) in modes.into_iter().take(if quick { 2 } else { 4 }) {
        g.pool.empty_cache().unwrap();
        g.pool.reset_peak();
        let m = Transformer::load_with(&root.join("transformer"), &dev, &mem).unwrap();
        let ts = vec![500.0f32; b];
        m.prepare_run(std::slice::from_ref(&ts), &pooled).unwrap();
        m.forward(&x, &ts, &ctx, &pooled).unwrap(); // warm-up (uploads, kernels, cuBLASLt heuristics)
        dev.synchronize().unwrap();
        let tokens = tl * (h / 2) * (w / 2) + ctx.shape()[1];
        util::l2_exceeded(
            "the transformer forward (its bf16 residual stream [B, tokens, 2432] alone)",
            b * tokens * util::scaled(2432, 128) * 2,
        );
        let t = Instant::now();
        m.forward(&x, &ts, &ctx, &pooled).unwrap();
        dev.synchronize().unwrap();
        let s = t.elapsed().as_secs_f64();
        m.end_run();
        let peak = g.pool.stats();
        println!(
            "transformer forward B=2 {} tokens, {layers} layers, {name}: {:.3} s -> {:.2} s/step for 38 layers (per-layer extrapolation); pool {:?}",
            tl * (h / 2) * (w / 2) + ctx.shape()[1],
            s,
            s / layers as f64 * 38.0,
            peak
        );
    }
    let _ = std::fs::remove_dir_all(&root);
}
