//! W8A16 GEMM (INT8 weights, bf16 activations, `ops::quant::linear_int8`) against the dense
//! bf16 cuBLASLt linear (`ops::gemm::linear`) at the transformer's shapes, N = K = 2432
//! (attention projections) and N = 9728, K = 2432 (FFN up), over a sweep of M (1, 16, then
//! 32 .. 8192 and the 41,472 video tokens). Each W8A16 kernel (Auto's choice, the fused
//! tensor-core MMA, the GEMV where M <= 16, dequantise + cuBLASLt) is validated against the
//! dense linear on the dequantised weights before timing. Prints TFLOP/s (2 M N K per GEMM)
//! and the weight bandwidth, then per shape the measured crossover (the first M of the sweep
//! from which dequantise + cuBLASLt beats the fused kernel) next to the constant Auto uses
//! and the roofline model's estimate (ops::quant::INT8_CROSSOVER_M); SKIP without a GPU.
//!
//! Run: `cargo bench --bench gemm_int8` (`CONTENTV_BENCH_QUICK=1` for 3 iterations).
#[path = "util/mod.rs"]
mod util;
use contentv::ops::gemm::{self, Act};
use contentv::ops::quant::{
    choose_int8_kernel, dequantize, int8_crossover_m, int8_model_crossover, linear_int8_with,
    quantize_per_channel, Int8Kernel, GEMV_MAX_M, H100_INT8_RATES,
};
use contentv::runtime::{DType, Device, Linear, Tensor, Weight};

fn main() {
    let Some(dev) = util::cuda_or_skip() else {
        return;
    };
    let it = util::iters(20);
    println!(
        "{:<44} {:>10} {:>10} {:>10}",
        "GEMM", "ms", "TFLOP/s", "W GB/s"
    );
    let shapes = if util::rehearsal() {
        vec![(128usize, 64usize), (256, 64)]
    } else {
        vec![(2432usize, 2432usize), (9728, 2432)]
    };
    let ms_list: Vec<usize> = if util::rehearsal() {
        vec![8, 40, 72]
    } else {
        vec![
            1, 16, 32, 64, 128, 192, 256, 384, 512, 768, 1024, 2048, 4096, 8192, 41_472,
        ]
    };
    let crossover = int8_crossover_m().unwrap();
    for (n, k) in shapes {
        // Weights: INT8 (per output channel) and the dense bf16 of the same dequantised values.
        let w = util::rand_vec(n * k, 1, 0.05);
        let (q, s) = quantize_per_channel(&w, n, k, None);
        let dq = dequantize(&q, &s, n, k);
        let qt = Tensor::from_i8(q, &[n, k], &dev).unwrap();
        let st = Tensor::from_f32(s, &[n], &dev).unwrap();
        let dense_w = Tensor::from_f32(dq, &[n, k], &Device::Cpu)
            .unwrap()
            .to_dtype(DType::BF16)
            .unwrap()
            .to_device(&dev)
            .unwrap();
        let bias = Tensor::from_f32(util::rand_vec(n, 2, 0.1), &[n], &Device::Cpu)
            .unwrap()
            .to_dtype(DType::BF16)
            .unwrap()
            .to_device(&dev)
            .unwrap();
        let dense = Linear {
            weight: Weight::Dense(dense_w),
            bias: Some(bias.clone()),
        };
        // (M, fused ms, dequant ms) for the crossover line.
        let mut sweep: Vec<(usize, f32, f32)> = Vec::new();
        for &m in &ms_list {
            let x = Tensor::from_f32(util::rand_vec(m * k, 3, 1.0), &[m, k], &Device::Cpu)
                .unwrap()
                .to_dtype(DType::BF16)
                .unwrap()
                .to_device(&dev)
                .unwrap();
            let flops = 2.0 * m as f64 * n as f64 * k as f64;
            let want = gemm::linear(&x, &dense).unwrap().to_vec_f32().unwrap();
            let ms = util::time_ms(&dev, it, || {
                gemm::linear(&x, &dense).unwrap();
            });
            report(
                &format!("dense bf16  M={m} N={n} K={k}"),
                ms,
                flops,
                n * k * 2,
            );
            let mut kernels = vec![Int8Kernel::Auto, Int8Kernel::Mma, Int8Kernel::Dequant];
            if m <= GEMV_MAX_M {
                kernels.push(Int8Kernel::Gemv);
            }
            let auto = choose_int8_kernel(m, n, k, 1, DType::BF16, crossover);
            let (mut fused_ms, mut dequant_ms) = (f32::NAN, f32::NAN);
            for kernel in kernels {
                let name = if kernel == Int8Kernel::Auto {
                    format!("W8A16 Auto={auto:?}  M={m} N={n} K={k}")
                } else {
                    format!("W8A16 {kernel:?}  M={m} N={n} K={k}")
                };
                let got = match linear_int8_with(&x, &qt, &st, Some(&bias), Act::None, kernel) {
                    Ok(y) => y.to_vec_f32().unwrap(),
                    Err(e) => {
                        println!("{name:<44} FAILED: {e}");
                        continue;
                    }
                };
                let (atol, rtol) = contentv::ops::tolerance::for_dtype(DType::BF16, k);
                if let Err(e) = contentv::ops::tolerance::check(&got, &want, atol * 4.0, rtol * 2.0)
                {
                    println!("{name:<44} INVALID: {e}");
                    continue;
                }
                let ms = util::time_ms(&dev, it, || {
                    linear_int8_with(&x, &qt, &st, Some(&bias), Act::None, kernel).unwrap();
                });
                report(&name, ms, flops, n * k);
                match kernel {
                    Int8Kernel::Mma => fused_ms = ms,
                    Int8Kernel::Dequant => dequant_ms = ms,
                    _ => {}
                }
            }
            sweep.push((m, fused_ms, dequant_ms));
        }
        // The first M from which dequantise + cuBLASLt stays at least as fast as the fused
        // kernel for every larger M of the sweep.
        let measured = (0..sweep.len())
            .find(|&i| sweep[i..].iter().all(|&(_, f, d)| d <= f))
            .map(|i| sweep[i].0);
        println!(
            "crossover N={n} K={k}: measured {} (sweep {}); Auto uses {crossover}; roofline estimate {} (H100 SXM rates)",
            measured.map_or("none in the sweep".to_string(), |m| format!("M={m}")),
            sweep
                .iter()
                .map(|(m, f, d)| format!("{m}:{:.3}/{:.3}", f, d))
                .collect::<Vec<_>>()
                .join(" "),
            int8_model_crossover(n, k, &H100_INT8_RATES, 1 << 20)
                .map_or("none".to_string(), |m| m.to_string()),
        );
    }
}

fn report(name: &str, ms: f32, flops: f64, weight_bytes: usize) {
    let s = ms as f64 * 1e-3;
    println!(
        "{name:<44} {ms:>10.3} {:>10.1} {:>10.1}",
        flops / s / 1e12,
        weight_bytes as f64 / s / 1e9
    );
}
