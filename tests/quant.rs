//! INT8 weight-only weights and the memory modes on the tiny model (CPU): the W8A16 linear
//! against the dense linear on the dequantized weights, the quantize command's checkpoint, the
//! transformer with INT8 weights within a stated bound of bf16/f32, and streamed execution
//! equal to resident execution.
mod common;

fn rnd(n: usize, seed: u64) -> Vec<f32> {
    common::rand_vec(n, seed, 1.0)
}

use common::{assert_close, cosine as cos, tiny_model_dir, Fixture};
use contentv::model::mmdit::Transformer;
use contentv::model::pipeline::Denoiser;
use contentv::ops::gemm::{linear_act, Act};
use contentv::ops::quant::{dequantize, linear_int8, quantize_per_channel};
use contentv::runtime::residency::{MemoryOptions, Offload};
use contentv::runtime::{Device, Linear, Tensor, Weight, WeightStore};

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
        let st = if groups == 1 {
            Tensor::from_f32(s, &[n], &dev).unwrap()
        } else {
            Tensor::from_f32(s, &[n, groups], &dev).unwrap()
        };
        let got = linear_int8(&x, &qt, &st, Some(&b), Act::GeluTanh)
            .unwrap()
            .to_vec_f32()
            .unwrap();
        let dense = Linear {
            weight: Weight::Dense(Tensor::from_f32(dq, &[n, k], &dev).unwrap()),
            bias: Some(b.clone()),
        };
        let want = linear_act(&x, &dense, Act::GeluTanh)
            .unwrap()
            .to_vec_f32()
            .unwrap();
        assert_close(
            &format!("linear_int8 {m}x{k}x{n} group {group:?}"),
            &got,
            &want,
            1e-5,
            1e-5,
        );
        // Through the Linear dispatch too.
        let lq = Linear {
            weight: Weight::Int8 { q: qt, scale: st },
            bias: Some(b),
        };
        assert_eq!(
            linear_act(&x, &lq, Act::GeluTanh)
                .unwrap()
                .to_vec_f32()
                .unwrap(),
            got
        );
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
    let streamed = forward(
        &MemoryOptions {
            offload: Offload::Sequential,
            ..Default::default()
        },
        &dir,
    );
    assert_eq!(
        resident, streamed,
        "sequential offload must not change the arithmetic"
    );
    let int8 = forward(
        &MemoryOptions {
            int8: true,
            ..Default::default()
        },
        &dir,
    );
    let int8_streamed = forward(
        &MemoryOptions {
            int8: true,
            offload: Offload::Sequential,
            ..Default::default()
        },
        &dir,
    );
    assert_eq!(int8, int8_streamed);
    let c = cos(&int8, &resident);
    let maxd = int8
        .iter()
        .zip(&resident)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    println!("INT8 vs f32 transformer output: cosine {c:.6}, max |diff| {maxd:.4}");
    assert!(c >= 0.999, "INT8 transformer output cosine {c} < 0.999");
    assert!(int8 != resident, "INT8 was not applied");
}

#[test]
fn quantize_command_writes_a_loadable_int8_checkpoint() {
    let out = std::env::temp_dir().join(format!("contentv-int8-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let bin = common::bin::BIN;
    let tiny = tiny_model_dir();
    let run = |extra: &[&str]| {
        let mut args = vec![
            "quantize",
            "--model",
            tiny.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        std::process::Command::new(bin)
            .args(&args)
            .output()
            .unwrap()
    };
    let o = run(&[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Refuses to overwrite without --force, leaves the result alone.
    let o2 = run(&[]);
    assert!(!o2.status.success() && String::from_utf8_lossy(&o2.stderr).contains("already exists"));
    for c in ["vae", "text_encoder", "tokenizer_2", "scheduler"] {
        assert!(out.join(c).is_dir(), "{c} not copied");
    }
    let store = WeightStore::open(
        &out.join("transformer"),
        &Device::Cpu,
        contentv::DType::BF16,
    )
    .unwrap();
    let root = store.root();
    let b0 = root.pp("transformer_blocks").pp(0);
    match b0.linear("attn.to_q", 128, 128, true).unwrap().weight {
        Weight::Int8 { q, scale } => {
            assert_eq!(q.shape(), &[128, 128]);
            assert_eq!(scale.shape(), &[128]);
        }
        _ => panic!("attn.to_q should be INT8 in the quantized checkpoint"),
    }
    assert!(
        matches!(
            b0.linear("norm1.linear", 128, 768, true).unwrap().weight,
            Weight::Dense(_)
        ),
        "adaLN stays dense"
    );
    assert!(matches!(
        root.linear("proj_out", 128, 64, true).unwrap().weight,
        Weight::Dense(_)
    ));
    let t5 = WeightStore::open(
        &out.join("text_encoder_3"),
        &Device::Cpu,
        contentv::DType::BF16,
    )
    .unwrap();
    assert!(t5.contains("encoder.block.0.layer.1.DenseReluDense.wo.weight_scale"));
    assert!(
        !t5.contains("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight_scale"),
        "the relative attention bias is an embedding: stays dense"
    );
    // T5 from the INT8 checkpoint: loads, and stays close to the dense encoder.
    {
        use contentv::model::t5::T5Encoder;
        let ids = vec![(0..24u32).map(|i| (i * 37 + 5) % 100).collect::<Vec<u32>>()];
        let enc = |dir: &std::path::Path| {
            T5Encoder::load(
                &dir.join("text_encoder_3"),
                &Device::Cpu,
                &MemoryOptions::default(),
            )
            .unwrap()
            .forward(&ids)
            .unwrap()
            .to_vec_f32()
            .unwrap()
        };
        let (q8, dense) = (enc(&out), enc(&tiny));
        let c = cos(&q8, &dense);
        println!("INT8 vs dense T5 output: cosine {c:.6}");
        assert!(c >= 0.99 && q8 != dense, "T5 INT8 cosine {c}");
    }
    // The pre-quantized checkpoint computes exactly what quantize-on-load computes.
    let pre = forward(&MemoryOptions::default(), &out);
    let onload = forward(
        &MemoryOptions {
            int8: true,
            ..Default::default()
        },
        &tiny_model_dir(),
    );
    assert_eq!(pre, onload);
    // Group-wise, with --force.
    let o3 = run(&["--force", "--group", "32"]);
    assert!(
        o3.status.success(),
        "{}",
        String::from_utf8_lossy(&o3.stderr)
    );
    let store = WeightStore::open(
        &out.join("transformer"),
        &Device::Cpu,
        contentv::DType::BF16,
    )
    .unwrap();
    assert_eq!(
        store.shape_of("transformer_blocks.0.attn.to_q.weight_scale"),
        Some(vec![128, 4])
    );
    let grouped = forward(&MemoryOptions::default(), &out);
    let dense = forward(&MemoryOptions::default(), &tiny_model_dir());
    assert!(cos(&grouped, &dense) >= 0.999);
    let bad = run(&["--force", "--group", "7"]);
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("--group"));
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn gpu_int8_and_streaming() {
    let Some(dev) = common::cuda_or_skip() else {
        return;
    };
    let (x, t, c, p) = transformer_inputs(&dev);
    let run = |mem: MemoryOptions| {
        let m = Transformer::load_with(&tiny_model_dir().join("transformer"), &dev, &mem).unwrap();
        m.forward(&x, &t, &c, &p).unwrap().to_vec_f32().unwrap()
    };
    let resident = run(MemoryOptions::default());
    let streamed = run(MemoryOptions {
        offload: Offload::Sequential,
        ..Default::default()
    });
    assert_eq!(
        resident, streamed,
        "GPU streaming must not change the arithmetic"
    );
    let int8 = run(MemoryOptions {
        int8: true,
        ..Default::default()
    });
    assert!(cos(&int8, &resident) >= 0.999);
    let int8s = run(MemoryOptions {
        int8: true,
        offload: Offload::Sequential,
        ..Default::default()
    });
    assert_eq!(int8, int8s);
}

/// Symmetric quantization: |w - q * scale| <= scale / 2 elementwise, per channel and group-wise;
/// zero rows (and zero groups) get scale 0 and q 0; the extremes map to +-127.
#[test]
fn quantize_round_trip_bound_groups_and_zero_rows() {
    use contentv::ops::quant::quantize_weight;
    let (n, k) = (9, 96);
    let mut w = rnd(n * k, 11);
    for v in &mut w[2 * k..3 * k] {
        *v = 0.0; // a zero row
    }
    for v in &mut w[5 * k..5 * k + 32] {
        *v = 0.0; // a zero group (group 32) in a non-zero row
    }
    w[7 * k + 3] = 50.0; // an outlier: its row's scale is large
    for group in [None, Some(8), Some(32), Some(96)] {
        let (q, s) = quantize_per_channel(&w, n, k, group);
        let g = group.unwrap_or(k);
        assert_eq!(s.len(), n * (k / g));
        let d = dequantize(&q, &s, n, k);
        for i in 0..n * k {
            let sc = s[(i / k) * (k / g) + (i % k) / g];
            assert!(
                (w[i] - d[i]).abs() <= sc / 2.0 * (1.0 + 1e-6),
                "group {group:?} element {i}: {} vs {}",
                w[i],
                d[i]
            );
            assert!(q[i] >= -127);
        }
        for j in 0..k / g {
            assert_eq!(s[2 * (k / g) + j], 0.0, "zero row: scale 0");
        }
        assert!(q[2 * k..3 * k].iter().all(|&v| v == 0));
        if g <= 32 {
            assert_eq!(s[5 * (k / g)], 0.0, "zero group: scale 0");
        }
        assert_eq!(q[7 * k + 3], 127);
        assert_eq!(s[7 * (k / g) + 3 / g], 50.0 / 127.0);
    }
    // quantize_weight: shapes and placement.
    let t = Tensor::from_f32(w.clone(), &[n, k], &Device::Cpu).unwrap();
    for (group, sshape) in [(None, vec![n]), (Some(32), vec![n, 3])] {
        match quantize_weight(&t, group).unwrap() {
            Weight::Int8 { q, scale } => {
                assert_eq!(q.shape(), &[n, k]);
                assert_eq!(q.dtype(), contentv::DType::I8);
                assert_eq!(scale.shape(), sshape.as_slice());
                assert_eq!(scale.dtype(), contentv::DType::F32);
            }
            _ => panic!("quantize_weight must give Weight::Int8"),
        }
    }
    assert!(
        quantize_weight(&t, Some(7)).is_err(),
        "a group that does not divide K is an error"
    );
}

/// The CPU W8A16 linear on a batched [B, M, K] input and with every activation.
#[test]
fn w8a16_cpu_batched_and_activations() {
    let dev = Device::Cpu;
    let (b, m, k, n) = (2, 5, 48, 20);
    let w = rnd(n * k, 21);
    let (q, s) = quantize_per_channel(&w, n, k, None);
    let dq = dequantize(&q, &s, n, k);
    let x = Tensor::from_f32(rnd(b * m * k, 22), &[b, m, k], &dev).unwrap();
    let qt = Tensor::from_i8(q, &[n, k], &dev).unwrap();
    let st = Tensor::from_f32(s, &[n], &dev).unwrap();
    let dense = Linear {
        weight: Weight::Dense(Tensor::from_f32(dq, &[n, k], &dev).unwrap()),
        bias: None,
    };
    for act in [
        Act::None,
        Act::Silu,
        Act::GeluTanh,
        Act::GeluErf,
        Act::QuickGelu,
    ] {
        let got = linear_int8(&x, &qt, &st, None, act).unwrap();
        assert_eq!(got.shape(), &[b, m, n]);
        let want = linear_act(&x, &dense, act).unwrap().to_vec_f32().unwrap();
        assert_close(
            &format!("linear_int8 {act:?}"),
            &got.to_vec_f32().unwrap(),
            &want,
            1e-5,
            1e-5,
        );
    }
    // Shape errors are errors, not panics.
    let bad = Tensor::from_f32(rnd(m * (k + 1), 1), &[m, k + 1], &dev).unwrap();
    assert!(linear_int8(&bad, &qt, &st, None, Act::None).is_err());
    let bad_scale = Tensor::from_f32(vec![1.0; n + 1], &[n + 1], &dev).unwrap();
    assert!(linear_int8(&x, &qt, &bad_scale, None, Act::None).is_err());
}

/// The W8A16 GPU kernels (tensor-core GEMM, small-M GEMV, dequantise + cuBLASLt) against the
/// CPU reference on the same bf16/f16-rounded inputs, at shapes that are not multiples of the
/// 128x128x32 tile, with strided and misaligned row views, per channel and group-wise.
/// Reference weights: exact `q * scale` in f32 where the kernel dequantises exactly (per-channel
/// MMA and GEMV, group-wise GEMV), `q * scale` rounded to the activation dtype where the kernel
/// rounds it (group-wise MMA, the dequantise path). `Auto` gives bit for bit the output of the
/// kernel `choose_int8_kernel` picks: the GEMV up to 16 rows, the fused kernel below the
/// crossover (M = 17..333 here), dequantise + cuBLASLt from it on (M = 513).
#[test]
fn gpu_w8a16_kernels_match_cpu_reference() {
    use contentv::ops::quant::{
        choose_int8_kernel, linear_int8_with, Int8Kernel, INT8_CROSSOVER_M,
    };
    use contentv::DType;
    let Some(dev) = common::cuda_or_skip() else {
        return;
    };
    let cases: &[(usize, usize, usize, Option<usize>, Act)] = &[
        (1, 33, 64, None, Act::None),
        (5, 130, 72, None, Act::GeluTanh),
        (16, 8, 8, None, Act::Silu),
        (16, 257, 136, Some(8), Act::None),
        (17, 129, 40, None, Act::GeluErf),
        (128, 128, 32, None, Act::None),
        (200, 300, 264, Some(24), Act::QuickGelu),
        (333, 257, 520, None, Act::GeluTanh),
        (513, 96, 2432, Some(128), Act::None),
    ];
    for &(m, n, k, group, act) in cases {
        for dt in [DType::BF16, DType::F16] {
            let w = rnd(n * k, 31);
            let (q, s) = quantize_per_channel(&w, n, k, group);
            let groups = s.len() / n;
            let exact = dequantize(&q, &s, n, k);
            let rounded = Tensor::from_f32(exact.clone(), &[n, k], &Device::Cpu)
                .unwrap()
                .to_dtype(dt)
                .unwrap()
                .to_vec_f32()
                .unwrap();
            // Input rows inside a wider buffer: row stride k + 8 (a multiple of 8, aligned), and
            // the same rows starting 4 elements in (8 bytes: misaligned, the launcher copies).
            let wide = Tensor::from_f32(rnd(m * (k + 8), 32), &[m, k + 8], &Device::Cpu)
                .unwrap()
                .to_dtype(dt)
                .unwrap();
            let bias_v = rnd(n, 33);
            let hb = Tensor::from_f32(bias_v.clone(), &[n], &Device::Cpu).unwrap();
            let gwide = wide.to_device(&dev).unwrap();
            let qt = Tensor::from_i8(q.clone(), &[n, k], &dev).unwrap();
            let st = if groups == 1 {
                Tensor::from_f32(s.clone(), &[n], &dev).unwrap()
            } else {
                Tensor::from_f32(s.clone(), &[n, groups], &dev).unwrap()
            };
            let gb = hb.to_dtype(dt).unwrap().to_device(&dev).unwrap();
            for start in [0usize, 4] {
                let hx = wide.narrow(1, start, k).unwrap();
                let gx = gwide.narrow(1, start, k).unwrap();
                let bias_r = gb.to_vec_f32().unwrap();
                let reference = |wv: &[f32]| {
                    let dense = Linear {
                        weight: Weight::Dense(
                            Tensor::from_f32(wv.to_vec(), &[n, k], &Device::Cpu).unwrap(),
                        ),
                        bias: Some(Tensor::from_f32(bias_r.clone(), &[n], &Device::Cpu).unwrap()),
                    };
                    linear_act(&hx, &dense, act).unwrap().to_vec_f32().unwrap()
                };
                let (want_exact, want_rounded) = (reference(&exact), reference(&rounded));
                // Auto's choice at the default crossover (512 rows: the cases on both sides).
                let chosen = choose_int8_kernel(m, n, k, groups, dt, INT8_CROSSOVER_M);
                assert_eq!(
                    chosen,
                    if m >= INT8_CROSSOVER_M {
                        Int8Kernel::Dequant
                    } else if m <= contentv::ops::quant::GEMV_MAX_M {
                        Int8Kernel::Gemv
                    } else {
                        Int8Kernel::Mma
                    }
                );
                let mut kernels = vec![Int8Kernel::Mma, Int8Kernel::Dequant];
                if m <= contentv::ops::quant::GEMV_MAX_M {
                    kernels.push(Int8Kernel::Gemv);
                }
                let mut outputs = Vec::new();
                for kernel in kernels {
                    let y = linear_int8_with(&gx, &qt, &st, Some(&gb), act, kernel).unwrap();
                    assert_eq!(y.shape(), &[m, n]);
                    assert_eq!(y.dtype(), dt);
                    let rounds = kernel == Int8Kernel::Dequant
                        || (kernel == Int8Kernel::Mma && group.is_some());
                    let want = if rounds { &want_rounded } else { &want_exact };
                    let (atol, rtol) = contentv::ops::tolerance::for_dtype(dt, k);
                    if let Err(e) =
                        contentv::ops::tolerance::check(&y.to_vec_f32().unwrap(), want, atol, rtol)
                    {
                        panic!("{kernel:?} {} m {m} n {n} k {k} group {group:?} {act:?} start {start}: {e}", dt.name());
                    }
                    outputs.push((kernel, y.to_vec_f32().unwrap()));
                }
                // Auto runs exactly the chosen kernel (the kernels are deterministic; unless
                // CONTENTV_INT8_GEMM / CONTENTV_INT8_CROSSOVER_M change the choice).
                if std::env::var_os("CONTENTV_INT8_GEMM").is_none()
                    && std::env::var_os("CONTENTV_INT8_CROSSOVER_M").is_none()
                {
                    let auto = linear_int8_with(&gx, &qt, &st, Some(&gb), act, Int8Kernel::Auto)
                        .unwrap()
                        .to_vec_f32()
                        .unwrap();
                    let (_, want) = outputs.iter().find(|(kk, _)| *kk == chosen).unwrap();
                    assert!(
                        auto.iter()
                            .zip(want)
                            .all(|(a, b)| a.to_bits() == b.to_bits()),
                        "Auto is not {chosen:?}: {} m {m} n {n} k {k}",
                        dt.name()
                    );
                }
            }
        }
    }
    w8a16_refusals_and_fallbacks(&dev);
}

/// What the W8A16 kernels refuse and where Auto falls back to dequantise + the dense linear:
/// f32 activations, K % 8 != 0.
fn w8a16_refusals_and_fallbacks(dev: &Device) {
    use contentv::ops::quant::{linear_int8_with, Int8Kernel};
    use contentv::DType;
    // f32 activations take the dequantise path (Auto) and are rejected by the W8A16 kernels.
    let x = Tensor::from_f32(rnd(3 * 64, 41), &[3, 64], dev).unwrap();
    let (q, s) = quantize_per_channel(&rnd(16 * 64, 42), 16, 64, None);
    let want = linear_int8(
        &Tensor::from_f32(rnd(3 * 64, 41), &[3, 64], &Device::Cpu).unwrap(),
        &Tensor::from_i8(q.clone(), &[16, 64], &Device::Cpu).unwrap(),
        &Tensor::from_f32(s.clone(), &[16], &Device::Cpu).unwrap(),
        None,
        Act::None,
    )
    .unwrap();
    let (qt, st) = (
        Tensor::from_i8(q, &[16, 64], dev).unwrap(),
        Tensor::from_f32(s, &[16], dev).unwrap(),
    );
    let got = linear_int8(&x, &qt, &st, None, Act::None).unwrap();
    assert_close(
        "linear_int8 f32 (dequantise path)",
        &got.to_vec_f32().unwrap(),
        &want.to_vec_f32().unwrap(),
        1e-4,
        1e-4,
    );
    assert!(linear_int8_with(&x, &qt, &st, None, Act::None, Int8Kernel::Mma).is_err());
    // K % 8 != 0: the kernels refuse, Auto falls back.
    let xb = Tensor::from_f32(rnd(4 * 12, 43), &[4, 12], dev)
        .unwrap()
        .to_dtype(DType::BF16)
        .unwrap();
    let (q, s) = quantize_per_channel(&rnd(8 * 12, 44), 8, 12, None);
    let (qt, st) = (
        Tensor::from_i8(q, &[8, 12], dev).unwrap(),
        Tensor::from_f32(s, &[8], dev).unwrap(),
    );
    assert!(linear_int8_with(&xb, &qt, &st, None, Act::None, Int8Kernel::Mma).is_err());
    assert!(linear_int8_with(&xb, &qt, &st, None, Act::None, Int8Kernel::Gemv).is_err());
    assert_eq!(
        linear_int8(&xb, &qt, &st, None, Act::None).unwrap().shape(),
        &[4, 8]
    );
}

/// The tiny transformer grown to `layers` blocks (block 0 repeated, the original last block
/// last) in a temporary folder: enough layers for a budget to leave 1..layers-1 of them streamed.
fn deep_tiny_transformer(layers: usize) -> std::path::PathBuf {
    use contentv::io::safetensors::{write_safetensors, SafeTensorsFile};
    let src = tiny_model_dir().join("transformer");
    let f = SafeTensorsFile::open(&src.join("diffusion_pytorch_model.safetensors")).unwrap();
    let mut out: Vec<(
        String,
        contentv::io::safetensors::StDtype,
        Vec<usize>,
        Vec<u8>,
    )> = Vec::new();
    for t in f.tensors() {
        let bytes = f.bytes(&t.name).unwrap().to_vec();
        match t.name.strip_prefix("transformer_blocks.") {
            None => out.push((t.name.clone(), t.dtype, t.shape.clone(), bytes)),
            Some(rest) => {
                let (block, key) = rest.split_once('.').unwrap();
                if block == "0" {
                    for l in 0..layers - 1 {
                        out.push((
                            format!("transformer_blocks.{l}.{key}"),
                            t.dtype,
                            t.shape.clone(),
                            bytes.clone(),
                        ));
                    }
                } else {
                    out.push((
                        format!("transformer_blocks.{}.{key}", layers - 1),
                        t.dtype,
                        t.shape.clone(),
                        bytes,
                    ));
                }
            }
        }
    }
    let dir = std::env::temp_dir().join(format!(
        "contentv-deep-tiny-{layers}-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = std::fs::read_to_string(src.join("config.json"))
        .unwrap()
        .replace("\"num_layers\": 2", &format!("\"num_layers\": {layers}"));
    std::fs::write(dir.join("config.json"), cfg).unwrap();
    let views: Vec<_> = out
        .iter()
        .map(|(n, d, s, b)| (n.as_str(), *d, s.as_slice(), b.as_slice()))
        .collect();
    write_safetensors(
        &dir.join("diffusion_pytorch_model.safetensors"),
        &views,
        None,
    )
    .unwrap();
    dir
}

/// The streaming ring over several steps with every split of resident and streamed layers
/// (the budget walks from "everything streamed" to "everything resident"): the prefetch wraps
/// from the last layer to the first streamed one of the next forward, with odd and even
/// streamed counts, and every result equals the resident run exactly.
#[test]
fn gpu_streaming_ring_every_budget_split() {
    let Some(dev) = common::cuda_or_skip() else {
        return;
    };
    let dir = deep_tiny_transformer(6);
    // Small inputs: 16 latent tokens, 7 text tokens.
    let x = Tensor::from_f32(rnd(16 * 8 * 8, 1), &[1, 16, 1, 8, 8], &dev).unwrap();
    let ctx = Tensor::from_f32(rnd(7 * 4096, 2), &[1, 7, 4096], &dev).unwrap();
    let pooled = Tensor::from_f32(rnd(2048, 3), &[1, 2048], &dev).unwrap();
    let t = vec![700.0f32];
    let forward = |mem: MemoryOptions| -> Option<(Vec<f32>, Vec<f32>)> {
        let m = Transformer::load_with(&dir, &dev, &mem)
            .map_err(|e| println!("load with {mem:?}: {e}"))
            .ok()?;
        let a = m
            .forward(&x, &t, &ctx, &pooled)
            .unwrap()
            .to_vec_f32()
            .unwrap();
        let b = m
            .forward(&x, &t, &ctx, &pooled)
            .unwrap()
            .to_vec_f32()
            .unwrap();
        Some((a, b))
    };
    // First differing element (printing whole outputs would bury the message).
    let same = |a: &[f32], b: &[f32], what: &str| {
        if let Some(i) = (0..a.len().max(b.len())).find(|&i| a.get(i) != b.get(i)) {
            panic!(
                "{what}: differs from the resident run at element {i}: {:?} vs {:?}",
                a.get(i),
                b.get(i)
            );
        }
    };
    let (resident, again) = forward(MemoryOptions::default()).unwrap();
    same(&again, &resident, "resident, second forward");
    let streamed = forward(MemoryOptions {
        offload: Offload::Sequential,
        ..Default::default()
    })
    .unwrap();
    same(&streamed.0, &resident, "sequential offload, first forward");
    same(&streamed.1, &resident, "sequential offload, second forward");
    // Budgets one layer apart around the plan's fixed part: each loads with a different split.
    let layer = contentv::runtime::residency::Residency::layer_bytes(
        &WeightStore::open(&dir, &Device::Cpu, contentv::runtime::DType::BF16).unwrap(),
        "transformer_blocks",
        6,
    )[0];
    let loads = |budget: u64| {
        Transformer::load_with(
            &dir,
            &dev,
            &MemoryOptions {
                vram_budget: Some(budget),
                ..Default::default()
            },
        )
        .is_ok()
    };
    // The smallest budget that loads (everything streamed), to within a layer.
    let mut lo = layer;
    while !loads(lo) {
        lo *= 2;
    }
    let mut start = lo / 2;
    while start + layer / 2 < lo && !loads(start) {
        start += layer / 2;
    }
    let mut splits = 0;
    for step in 0..40u64 {
        let budget = start + step * layer / 2;
        if let Some((a, b)) = forward(MemoryOptions {
            vram_budget: Some(budget),
            ..Default::default()
        }) {
            same(&a, &resident, &format!("budget {budget}, first forward"));
            same(&b, &resident, &format!("budget {budget}, second forward"));
            splits += 1;
            if splits >= 16 {
                break;
            }
        }
    }
    println!("streaming ring: {splits} budgets ran, each equal to the resident run");
    assert!(splits >= 8, "too few budgets loaded ({splits})");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The memory plan follows the request: under one budget, a small video keeps every layer
/// resident while a large one streams some (or is refused), and `--offload sequential` streams
/// every layer whatever the size. (Plans are made on the GPU only: the emulated one in CI.)
#[test]
fn gpu_budget_plan_follows_the_request_size() {
    use contentv::model::mmdit::{activation_bytes, LAYER_GROUP};
    use contentv::runtime::planner::{plan_layers, Placement};
    let Some(dev) = common::cuda_or_skip() else {
        return;
    };
    let dir = deep_tiny_transformer(5); // not 6: another test removes that one
    let mem = |budget| MemoryOptions {
        vram_budget: Some(budget),
        ..Default::default()
    };
    let (store, cfg) = Transformer::open(&dir, &dev, &MemoryOptions::default()).unwrap();
    let layer_total: u64 =
        contentv::runtime::residency::Residency::layer_bytes(&store, LAYER_GROUP, cfg.layers)
            .iter()
            .sum();
    let small = activation_bytes(&cfg, 1, 16);
    let large = activation_bytes(&cfg, 2, 64 * 64);
    assert!(
        large > small + layer_total,
        "the sizes must matter for this test"
    );
    // A budget where the small request fits with every layer resident and the large does not.
    let budget = layer_total * 2 + small + (1 << 20);
    let p_small = plan_layers(&store, LAYER_GROUP, cfg.layers, &mem(budget), small).unwrap();
    assert_eq!(
        p_small.placement,
        Placement::Resident,
        "{:?}",
        p_small.describe()
    );
    match plan_layers(&store, LAYER_GROUP, cfg.layers, &mem(budget), large) {
        Ok(p) => {
            let Placement::Streamed {
                resident: Some(res),
            } = &p.placement
            else {
                panic!("large request: {:?}", p.placement)
            };
            assert!(res.iter().any(|r| !r), "{:?}", p.describe());
        }
        Err(e) => assert!(e.to_string().contains("--vram-budget"), "{e}"),
    }
    let seq = MemoryOptions {
        offload: Offload::Sequential,
        ..Default::default()
    };
    let p = plan_layers(&store, LAYER_GROUP, cfg.layers, &seq, small).unwrap();
    assert_eq!(p.placement, Placement::Streamed { resident: None });
    assert!(p.describe().unwrap().contains("streamed"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Without a budget (or on the CPU, where there is no device memory to plan) every layer is
/// resident, and the plan has nothing to say.
#[test]
fn plan_without_budget_is_resident() {
    use contentv::model::mmdit::{activation_bytes, LAYER_GROUP};
    use contentv::runtime::planner::{plan_layers, Placement};
    let dir = tiny_model_dir().join("transformer");
    let (store, cfg) = Transformer::open(&dir, &Device::Cpu, &MemoryOptions::default()).unwrap();
    let act = activation_bytes(&cfg, 2, 1000);
    for mem in [
        MemoryOptions::default(),
        MemoryOptions {
            vram_budget: Some(1),
            ..Default::default()
        },
    ] {
        let p = plan_layers(&store, LAYER_GROUP, cfg.layers, &mem, act).unwrap();
        assert_eq!(p.placement, Placement::Resident);
        assert_eq!(p.describe(), None);
    }
}
