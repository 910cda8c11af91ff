//! INT8 weight-only weights and the memory modes on the tiny model (CPU): the W8A16 linear
//! against the dense linear on the dequantized weights, the quantize command's checkpoint, the
//! transformer with INT8 weights within a stated bound of bf16/f32, and streamed execution
//! equal to resident execution.
mod common;

fn rnd(n: usize, seed: u64) -> Vec<f32> {
    common::rand_vec(n, seed, 1.0)
}

use common::{assert_close, tiny_model_dir, Fixture};
use contentv::model::mmdit::Transformer;
use contentv::model::pipeline::Denoiser;
use contentv::ops::gemm::{linear_act, Act};
use contentv::ops::quant::{dequantize, linear_int8, quantize_per_channel};
use contentv::runtime::residency::{MemoryOptions, Offload};
use contentv::runtime::{Device, Linear, Tensor, Weight, WeightStore};


fn cos(a: &[f32], b: &[f32]) -> f64 {
    let (mut ab, mut aa, mut bb) = (0f64, 0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        ab += *x as f64 * *y as f64;
        aa += *x as f64 * *x as f64;
        bb += *y as f64 * *y as f64;
    }
    ab / (aa.sqrt() * bb.sqrt())
}

#[test]
fn w8a16_linear_equals_dense_linear_on_dequantized_weights() {
    let dev = Device::Cpu;
    for (m, k, n, group) in [(7, 64, 33, None), (45, 128, 96, Some(32)), (1, 8, 1, None)] {
        let w = rnd(n * k, 1);
        let (q, s) = quantize_per_channel(&w, n, k, group);
        let dq = dequantize(&q, &s, n, k);
        let x = Tensor::from_f32(rnd(m * k, 2), &[m, k], &dev).unwrap();
        let b = Tensor::from_f32(rnd(n, 3), &[n], &dev).unwrap();
        let qt = Tensor::from_i8(q, &[n, k], &dev).unwrap();
        let groups = s.len() / n;
        let st = if groups == 1 { Tensor::from_f32(s, &[n], &dev).unwrap() } else { Tensor::from_f32(s, &[n, groups], &dev).unwrap() };
        let got = linear_int8(&x, &qt, &st, Some(&b), Act::GeluTanh).unwrap().to_vec_f32().unwrap();
        let dense = Linear { weight: Weight::Dense(Tensor::from_f32(dq, &[n, k], &dev).unwrap()), bias: Some(b.clone()) };
        let want = linear_act(&x, &dense, Act::GeluTanh).unwrap().to_vec_f32().unwrap();
        assert_close(&format!("linear_int8 {m}x{k}x{n} group {group:?}"), &got, &want, 1e-5, 1e-5);
        // Through the Linear dispatch too.
        let lq = Linear { weight: Weight::Int8 { q: qt, scale: st }, bias: Some(b) };
        assert_eq!(linear_act(&x, &lq, Act::GeluTanh).unwrap().to_vec_f32().unwrap(), got);
    }
}

fn transformer_inputs(dev: &Device) -> (Tensor, Vec<f32>, Tensor, Tensor) {
    let f = Fixture::load("transformer");
    let x = Tensor::from_f32(f.f32("input.latent").to_vec(), f.shape("input.latent"), dev).unwrap();
    let ctx = Tensor::from_f32(rnd(333 * 4096, 5), &[1, 333, 4096], dev).unwrap();
    let pooled = Tensor::from_f32(rnd(2048, 6), &[1, 2048], dev).unwrap();
    (x, f.f32("input.timestep").to_vec(), ctx, pooled)
}

fn forward(mem: &MemoryOptions, dir: &std::path::Path) -> Vec<f32> {
    let dev = Device::Cpu;
    let m = Transformer::load_with(&dir.join("transformer"), &dev, mem).unwrap();
    let (x, t, c, p) = transformer_inputs(&dev);
    // Twice: streaming must give the same result on a second pass over the layers.
    let a = m.forward(&x, &t, &c, &p).unwrap().to_vec_f32().unwrap();
    let b = m.forward(&x, &t, &c, &p).unwrap().to_vec_f32().unwrap();
    assert_eq!(a, b, "second forward differs ({mem:?})");
    a
}

#[test]
fn streaming_equals_resident_and_int8_is_close() {
    let dir = tiny_model_dir();
    let resident = forward(&MemoryOptions::default(), &dir);
    let streamed = forward(&MemoryOptions { offload: Offload::Sequential, ..Default::default() }, &dir);
    assert_eq!(resident, streamed, "sequential offload must not change the arithmetic");
    let int8 = forward(&MemoryOptions { int8: true, ..Default::default() }, &dir);
    let int8_streamed = forward(&MemoryOptions { int8: true, offload: Offload::Sequential, ..Default::default() }, &dir);
    assert_eq!(int8, int8_streamed);
    let c = cos(&int8, &resident);
    let maxd = int8.iter().zip(&resident).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    println!("INT8 vs f32 transformer output: cosine {c:.6}, max |diff| {maxd:.4}");
    assert!(c >= 0.999, "INT8 transformer output cosine {c} < 0.999");
    assert!(int8 != resident, "INT8 was not applied");
}

#[test]
fn quantize_command_writes_a_loadable_int8_checkpoint() {
    let out = std::env::temp_dir().join(format!("contentv-int8-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let bin = env!("CARGO_BIN_EXE_contentv");
    let tiny = tiny_model_dir();
    let run = |extra: &[&str]| {
        let mut args = vec!["quantize", "--model", tiny.to_str().unwrap(), "--out", out.to_str().unwrap()];
        args.extend_from_slice(extra);
        std::process::Command::new(bin).args(&args).output().unwrap()
    };
    let o = run(&[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Refuses to overwrite without --force, leaves the result alone.
    let o2 = run(&[]);
    assert!(!o2.status.success() && String::from_utf8_lossy(&o2.stderr).contains("already exists"));
    for c in ["vae", "text_encoder", "tokenizer_2", "scheduler"] {
        assert!(out.join(c).is_dir(), "{c} not copied");
    }
    let store = WeightStore::open(&out.join("transformer"), &Device::Cpu, contentv::DType::BF16).unwrap();
    let root = store.root();
    let b0 = root.pp("transformer_blocks").pp(0);
    match b0.linear("attn.to_q", 128, 128, true).unwrap().weight {
        Weight::Int8 { q, scale } => {
            assert_eq!(q.shape(), &[128, 128]);
            assert_eq!(scale.shape(), &[128]);
        }
        _ => panic!("attn.to_q should be INT8 in the quantized checkpoint"),
    }
    assert!(matches!(b0.linear("norm1.linear", 128, 768, true).unwrap().weight, Weight::Dense(_)), "adaLN stays dense");
    assert!(matches!(root.linear("proj_out", 128, 64, true).unwrap().weight, Weight::Dense(_)));
    let t5 = WeightStore::open(&out.join("text_encoder_3"), &Device::Cpu, contentv::DType::BF16).unwrap();
    assert!(t5.contains("encoder.block.0.layer.1.DenseReluDense.wo.weight_scale"));
    // The pre-quantized checkpoint computes exactly what quantize-on-load computes.
    let pre = forward(&MemoryOptions::default(), &out);
    let onload = forward(&MemoryOptions { int8: true, ..Default::default() }, &tiny_model_dir());
    assert_eq!(pre, onload);
    // Group-wise, with --force.
    let o3 = run(&["--force", "--group", "32"]);
    assert!(o3.status.success(), "{}", String::from_utf8_lossy(&o3.stderr));
    let store = WeightStore::open(&out.join("transformer"), &Device::Cpu, contentv::DType::BF16).unwrap();
    assert_eq!(store.shape_of("transformer_blocks.0.attn.to_q.weight_scale"), Some(vec![128, 4]));
    let grouped = forward(&MemoryOptions::default(), &out);
    let dense = forward(&MemoryOptions::default(), &tiny_model_dir());
    assert!(cos(&grouped, &dense) >= 0.999);
    let bad = run(&["--force", "--group", "7"]);
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("--group"));
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn gpu_int8_and_streaming() {
    let Some(dev) = common::cuda_or_skip() else { return };
    let (x, t, c, p) = transformer_inputs(&dev);
    let run = |mem: MemoryOptions| {
        let m = Transformer::load_with(&tiny_model_dir().join("transformer"), &dev, &mem).unwrap();
        m.forward(&x, &t, &c, &p).unwrap().to_vec_f32().unwrap()
    };
    let resident = run(MemoryOptions::default());
    let streamed = run(MemoryOptions { offload: Offload::Sequential, ..Default::default() });
    assert_eq!(resident, streamed, "GPU streaming must not change the arithmetic");
    let int8 = run(MemoryOptions { int8: true, ..Default::default() });
    assert!(cos(&int8, &resident) >= 0.999);
    let int8s = run(MemoryOptions { int8: true, offload: Offload::Sequential, ..Default::default() });
    assert_eq!(int8, int8s);
}
