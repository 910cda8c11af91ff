//! Benchmark of the flash attention kernel (kernels/attention.cu, `flash_attn_fwd_d64`) at the
//! ContentV-8B production shape: joint attention over 41,472 video + 333 text tokens
//! (S = 41,805), 38 heads of 64, batch 1 and 2 (CFG), plus smaller shapes. Timed with CUDA events
//! on the compute stream (median of several runs after a warm-up); reports ms and TFLOP/s with
//! 4*B*H*Sq*Sk*64 flops (half that when causal). Before timing, the flash kernel is checked
//! against the generic kernel on a small shape. On an sm_90 GPU with the sm_90a image the
//! FlashAttention-3-style kernel (kernels/attention_hopper.cu, `flash_attn_hopper_d64`) is
//! checked and timed next to it on the same shapes. Prints SKIP and exits 0 without a GPU.
//!
//! Run: `cargo bench --bench attention` (CONTENTV_BENCH_QUICK=1: fewer runs, no B=2 production shape).
#[path = "util/mod.rs"]
mod util;
use contentv::ops::attention::{attention, attention_segs, AttnKernel, AttnOpts};
use contentv::runtime::{Device, Tensor};
use half::bf16;
use util::time_ms;

use util::{heads, n_text, n_video};

const HEAD_DIM: usize = 64;

/// Uniform(-amp, amp) bf16 tensor on the GPU.
fn rand_bf16(shape: &[usize], dev: &Device, amp: f32, seed: u64) -> Tensor {
    let n: usize = shape.iter().product();
    let mut s = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    let v: Vec<bf16> = (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            bf16::from_f32((((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0) * amp)
        })
        .collect();
    Tensor::from_bf16(v, shape, dev).unwrap()
}

/// `heads()` heads of 64, scale 1/8, no bias.
fn opts(causal: bool, kernel: AttnKernel) -> AttnOpts<'static> {
    AttnOpts {
        causal,
        kernel,
        ..AttnOpts::new(heads(), HEAD_DIM)
    }
}

/// q, k, v as [video, text] segments of [B, S_i, H*64].
struct Qkv {
    segs: Vec<[Tensor; 3]>,
}

impl Qkv {
    fn new(dev: &Device, b: usize, lens: &[usize]) -> Qkv {
        let hd = heads() * HEAD_DIM;
        let segs = lens
            .iter()
            .enumerate()
            .map(|(i, &s)| {
                [0, 1, 2].map(|j| {
                    rand_bf16(
                        &[b, s, hd],
                        dev,
                        if j == 0 { 2.0 } else { 1.0 },
                        (i * 3 + j) as u64 + 1,
                    )
                })
            })
            .collect();
        Qkv { segs }
    }
    fn side(&self, j: usize) -> Vec<&Tensor> {
        self.segs.iter().map(|s| &s[j]).collect()
    }
    fn run(&self, causal: bool, kernel: AttnKernel) -> Tensor {
        attention(
            &self.side(0),
            &self.side(1),
            &self.side(2),
            &opts(causal, kernel),
        )
        .unwrap()
    }
}

fn main() {
    let Some(dev) = util::cuda_or_skip() else {
        return;
    };
    let g = dev.gpu().unwrap();
    let quick = std::env::var("CONTENTV_BENCH_QUICK").is_ok();
    let it = if util::rehearsal() {
        1
    } else if quick {
        3
    } else {
        10
    };

    let hopper = contentv::ops::attention::hopper_available(g);
    let mut kernels = vec![(AttnKernel::Mma, "flash_attn_fwd_d64")];
    if hopper {
        kernels.push((AttnKernel::Hopper, "flash_attn_hopper_d64"));
    } else {
        println!("flash_attn_hopper_d64: not timed (needs sm_90 and the sm_90a image)");
    }

    // Validation: each kernel against the generic kernel (f32 math) on a small joint shape.
    {
        let x = Qkv::new(&dev, 1, &[util::scaled(1000, 40), n_text()]);
        for causal in [false, true] {
            let n = x.run(causal, AttnKernel::Naive).to_vec_f32().unwrap();
            for &(kernel, kname) in &kernels {
                let f = x.run(causal, kernel).to_vec_f32().unwrap();
                let (atol, rtol) =
                    contentv::ops::tolerance::for_dtype(contentv::runtime::DType::BF16, 1333);
                match contentv::ops::tolerance::check(&f, &n, 2.0 * atol, 2.0 * rtol) {
                    Ok(()) => println!(
                        "validation (causal {causal}): {kname} matches the generic kernel"
                    ),
                    Err(e) => println!(
                        "INVALID {kname} (causal {causal}): {e} (its timings below are of a wrong kernel)"
                    ),
                }
            }
        }
    }

    let mut shapes: Vec<(usize, usize, usize, bool)> = vec![
        (1, util::scaled(4096, 64), n_text(), false),
        (1, util::scaled(4096, 64), n_text(), true),
        (1, n_video(), n_text(), false),
    ];
    if !quick {
        shapes.push((2, n_video(), n_text(), false));
    }
    for (b, sv, st, causal) in shapes {
        let x = Qkv::new(&dev, b, &[sv, st]);
        let s = (sv + st) as f64;
        let flops = 4.0
            * b as f64
            * heads() as f64
            * s
            * s
            * HEAD_DIM as f64
            * if causal { 0.5 } else { 1.0 };
        for &(kernel, kname) in &kernels {
            let ms = time_ms(&dev, it, || {
                x.run(causal, kernel);
            });
            let name = format!(
                "{kname} B={b} H={} S={sv}+{st}{}",
                heads(),
                if causal { " causal" } else { "" }
            );
            util::report_flops(&name, ms, flops);
        }
    }
    // The MMDiT block's call at B = 2: one output per query segment (video, text), as
    // `ops::attention::attention_segs` makes them; compare with the joint-output row above.
    if !quick {
        let (b, sv, st) = (2, n_video(), n_text());
        let x = Qkv::new(&dev, b, &[sv, st]);
        let s = (sv + st) as f64;
        let flops = 4.0 * b as f64 * heads() as f64 * s * s * HEAD_DIM as f64;
        for &(kernel, kname) in &kernels {
            let ms = time_ms(&dev, it, || {
                attention_segs(&x.side(0), &x.side(1), &x.side(2), &opts(false, kernel)).unwrap();
            });
            let name = format!(
                "{kname} B={b} H={} S={sv}+{st} per-segment outputs",
                heads()
            );
            util::report_flops(&name, ms, flops);
        }
    }
    // The generic kernel on a small shape, for scale.
    let sn = util::scaled(2048, 32);
    let x = Qkv::new(&dev, 1, &[sn, n_text()]);
    let s = (sn + n_text()) as f64;
    let ms = time_ms(&dev, 3, || {
        x.run(false, AttnKernel::Naive);
    });
    util::report_flops(
        &format!("attn_naive_bf16 B=1 H={} S={sn}+{}", heads(), n_text()),
        ms,
        4.0 * heads() as f64 * s * s * HEAD_DIM as f64,
    );
    println!("pool: {:?}", g.pool.stats());
}
