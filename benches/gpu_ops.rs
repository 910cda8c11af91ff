//! Microbenchmarks of the small kernels and the cuBLASLt GEMM at ContentV-8B production shapes
//! (432x768, 125 frames: 41,472 video tokens + 333 text tokens, hidden 2432), timed with CUDA
//! events on the compute stream. Prints one line per kernel: time, achieved bandwidth or
//! TFLOP/s. Prints SKIP and exits 0 without a GPU.
//!
//! Run: `cargo bench --bench gpu_ops` (or `.gpu-bundle/bin/bench-gpu_ops` on the GPU machine).
#[path = "util/mod.rs"]
mod util;
use contentv::ops::conv::{conv3d, pack_weight_bf16, ConvOpts, ConvPrecision, WRef};
use contentv::ops::{act, elementwise as ew, gemm, norm};
use contentv::runtime::{DType, Device, Linear, Tensor, Weight};
use util::{report_bw, report_flops, time_ms};

use util::{heads, n_text, n_video};

/// The model width: 38 heads x 64 = 2432 (tiny in a rehearsal).
fn width() -> usize {
    heads() * 64
}

/// Times 1 GiB host-to-device copies on the copy stream (events recorded on that stream).
fn h2d_ceilings(dev: &Device, dst: &Tensor, it: usize) {
    use contentv::runtime::device::Event;
    use contentv::runtime::memory::PinnedBuffer;
    use cudarc::driver::result as cu;
    let g = dev.gpu().unwrap();
    let bytes = dst.size_bytes();
    let dptr = dst.dev_ptr().unwrap();
    g.bind().unwrap();
    let time = |src: &[u8]| -> f32 {
        let mut v = Vec::new();
        for i in 0..=it.max(1) {
            // The flush runs on the compute stream: finish it before the copy stream starts.
            util::flush_l2(dev);
            dev.synchronize().unwrap();
            let (a, b) = (Event::new(true).unwrap(), Event::new(true).unwrap());
            a.record(&g.copy).unwrap();
            unsafe { cu::memcpy_htod_async(dptr, src, g.copy.cu_stream()).unwrap() };
            b.record(&g.copy).unwrap();
            b.synchronize().unwrap();
            if i > 0 {
                v.push(a.elapsed_ms(&b).unwrap());
            }
        }
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    match PinnedBuffer::new(&g.ctx, bytes) {
        Ok(mut p) => {
            p.as_mut_slice().fill(1);
            let ms = time(p.as_slice());
            report_bw(
                &format!(
                    "CEILING host-to-device {} MiB, pinned (copy stream)",
                    bytes >> 20
                ),
                ms,
                bytes,
            );
        }
        Err(e) => println!("CEILING host-to-device pinned: not measured ({e})"),
    }
    let pageable = vec![1u8; bytes];
    let ms = time(&pageable);
    report_bw(
        &format!("host-to-device {} MiB, pageable (copy stream)", bytes >> 20),
        ms,
        bytes,
    );
}

/// Compares a GPU result with the CPU reference on the same (bf16-rounded) inputs before timing.
fn validate(name: &str, got: &Tensor, want: &Tensor, k: usize) -> bool {
    let (atol, rtol) = contentv::ops::tolerance::for_dtype(got.dtype(), k);
    match contentv::ops::tolerance::check(
        &got.to_vec_f32().unwrap(),
        &want.to_vec_f32().unwrap(),
        atol,
        rtol,
    ) {
        Ok(()) => true,
        Err(e) => {
            println!("INVALID {name}: {e}");
            false
        }
    }
}

fn rand_bf16(shape: &[usize], dev: &Device, scale: f32) -> Tensor {
    let n: usize = shape.iter().product();
    let mut s = 0x2545F4914F6CDD1Du64;
    let v: Vec<f32> = (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0) * scale
        })
        .collect();
    Tensor::from_f32(v, shape, &Device::Cpu)
        .unwrap()
        .to_dtype(DType::BF16)
        .unwrap()
        .to_device(dev)
        .unwrap()
}

fn main() {
    let Some(dev) = util::cuda_or_skip() else {
        return;
    };
    let g = dev.gpu().unwrap();
    let it = util::iters(15);
    let (nvid, ntxt, dm) = (n_video(), n_text(), width());
    let heads = heads();
    let tok = |n: usize| util::scaled(n, 8); // validation rows

    // Validation on small inputs against the CPU reference, before any timing.
    validate_all(&dev, dm, tok);

    bench_ceilings(&dev, it);
    let b = 2; // the CFG batch
    let x = rand_bf16(&[b, nvid, dm], &dev, 1.0);
    let y = rand_bf16(&[b, nvid, dm], &dev, 1.0);
    let m6 = rand_bf16(&[b, 6 * dm], &dev, 0.1);
    let act_bytes = b * nvid * dm * 2;

    let ms = time_ms(&dev, it, || {
        norm::layer_norm_modulate(
            &x,
            &m6.narrow(1, 0, dm).unwrap(),
            &m6.narrow(1, dm, dm).unwrap(),
            1e-6,
        )
        .unwrap();
    });
    report_bw(
        &format!("layer_norm_modulate [2,{nvid},{dm}] bf16"),
        ms,
        2 * act_bytes,
    );
    let ms = time_ms(&dev, it, || {
        ew::gated_residual(&x, &y, &m6.narrow(1, 2 * dm, dm).unwrap()).unwrap();
    });
    report_bw(
        &format!("gated_residual [2,{nvid},{dm}] bf16"),
        ms,
        3 * act_bytes,
    );
    let q = x.reshape(&[b, nvid, heads, 64]).unwrap();
    let w64 = rand_bf16(&[64], &dev, 1.0);
    let ms = time_ms(&dev, it, || {
        norm::rms_norm(&q, Some(&w64), 1e-6).unwrap();
    });
    report_bw(
        &format!("rms_norm q/k [2,{nvid},{heads},64] bf16"),
        ms,
        2 * act_bytes,
    );
    // The fused QKV output [2, N, 3D]: q and k heads normalised in place, one launch (it
    // replaces two rms_norm calls above); reads and writes q and k.
    let qkv = rand_bf16(&[b, nvid, 3 * dm], &dev, 1.0);
    let ms = time_ms(&dev, it, || {
        let side = |col| norm::QkHeads {
            col,
            heads,
            gain: Some(&w64),
        };
        norm::qk_rms_norm(qkv.clone(), side(0), side(dm), 64, 1e-6).unwrap();
    });
    report_bw(
        &format!("qk_rms_norm q+k in place [2,{nvid},3x{heads}x64] bf16"),
        ms,
        4 * act_bytes,
    );
    let ms = time_ms(&dev, it, || {
        act::gelu_tanh(&x).unwrap();
    });
    report_bw(
        &format!("gelu_tanh [2,{nvid},{dm}] bf16"),
        ms,
        2 * act_bytes,
    );
    let ms = time_ms(&dev, it, || {
        ew::add(&x, &y).unwrap();
    });
    report_bw(&format!("add [2,{nvid},{dm}] bf16"), ms, 3 * act_bytes);
    let ms = time_ms(&dev, it, || {
        x.to_dtype(DType::F32).unwrap();
    });
    report_bw(
        &format!("cast bf16->f32 [2,{nvid},{dm}]"),
        ms,
        3 * act_bytes,
    );
    let tn = util::scaled(4096, 64);
    let t = x.narrow(1, 0, tn).unwrap().permute(&[0, 2, 1]).unwrap();
    let ms = time_ms(&dev, it, || {
        t.contiguous().unwrap();
    });
    report_bw(
        &format!("copy_nd transpose [2,{dm},{tn}] bf16"),
        ms,
        2 * b * tn * dm * 2,
    );
    // The kind of copy the MMDiT block made before issue 18 (the first rows of a [B, S, D]
    // tensor, like the video rows of the joint attention output): B runs of rows*D elements,
    // moved as 16-byte elements by the planned copy_nd.
    let rows = x.narrow(1, 0, nvid * 3 / 4).unwrap();
    let nr = rows.dim(1);
    let ms = time_ms(&dev, it, || {
        rows.contiguous().unwrap();
    });
    report_bw(
        &format!("copy_nd narrow rows [2,{nr} of {nvid},{dm}] bf16"),
        ms,
        2 * b * nr * dm * 2,
    );

    bench_block_gemms(&dev, it, b * (nvid + ntxt), b, dm);
    drop((x, y, m6, q));
    bench_vae(&dev, it);
    println!("pool: {:?}", g.pool.stats());
}

/// The GEMMs of one joint block over `m` rows (both CFG halves of `b`): QKV/out projections,
/// the MLP, and the adaLN modulation linear (`b` rows, weight-bound).
fn bench_block_gemms(dev: &Device, it: usize, m: usize, b: usize, dm: usize) {
    let xs = rand_bf16(&[m, dm], dev, 1.0);
    for (name, n, k, a) in [
        (
            format!("linear to_q [{m}x{dm}]x[{dm}x{dm}]"),
            dm,
            dm,
            gemm::Act::None,
        ),
        (
            format!("linear ff.net.0 + gelu [{m}x{dm}]x[{dm}x{}]", 4 * dm),
            4 * dm,
            dm,
            gemm::Act::GeluTanh,
        ),
    ] {
        let w = rand_bf16(&[n, k], dev, 0.02);
        let bias = rand_bf16(&[n], dev, 0.1);
        let l = Linear {
            weight: Weight::Dense(w),
            bias: Some(bias),
        };
        let ms = time_ms(dev, it, || {
            gemm::linear_act(&xs, &l, a).unwrap();
        });
        report_flops(&name, ms, 2.0 * m as f64 * n as f64 * k as f64);
    }
    let h = rand_bf16(&[m, 4 * dm], dev, 0.1);
    let w2 = rand_bf16(&[dm, 4 * dm], dev, 0.02);
    let l2 = Linear {
        weight: Weight::Dense(w2),
        bias: None,
    };
    let ms = time_ms(dev, it, || {
        gemm::linear(&h, &l2).unwrap();
    });
    report_flops(
        &format!("linear ff.net.2 [{m}x{}]x[{}x{dm}]", 4 * dm, 4 * dm),
        ms,
        2.0 * m as f64 * dm as f64 * 4.0 * dm as f64,
    );
    let ws = rand_bf16(&[6 * dm, dm], dev, 0.02);
    let tb = rand_bf16(&[b, dm], dev, 1.0);
    let l6 = Linear {
        weight: Weight::Dense(ws),
        bias: None,
    };
    let ms = time_ms(dev, it, || {
        gemm::linear(&tb, &l6).unwrap();
    });
    report_bw(
        &format!("linear adaLN [2x{dm}]x[{dm}x{}] (weight-bound)", 6 * dm),
        ms,
        6 * dm * dm * 2,
    );
}

/// Ceilings measured in this run: device-to-device copy bandwidth, host-to-device (pinned and
/// pageable) and a large bf16 GEMM.
fn bench_ceilings(dev: &Device, it: usize) {
    let elems = util::scaled(512 << 20, 1 << 16); // 1 GiB of bf16
    let big = rand_bf16(&[elems], dev, 1.0);
    let big2 = Tensor::empty(&[elems], DType::BF16, dev).unwrap();
    let ms = time_ms(dev, it, || big2.copy_from(&big).unwrap());
    report_bw(
        &format!("CEILING device-to-device copy {} MiB", (elems * 2) >> 20),
        ms,
        4 * elems,
    );
    drop(big);
    // Host-to-device on the copy stream (what sequential offload streams through): from a
    // page-locked buffer (contentv::runtime::memory::PinnedBuffer, as the residency layer
    // uses) and, for comparison, from pageable memory. Bytes moved once (not read + written).
    h2d_ceilings(dev, &big2, it);
    drop(big2);
    let g8 = util::scaled(8192, 64);
    let ga = rand_bf16(&[g8, g8], dev, 1.0);
    let gw = Linear {
        weight: Weight::Dense(rand_bf16(&[g8, g8], dev, 0.01)),
        bias: None,
    };
    let ms = time_ms(dev, it, || {
        gemm::linear(&ga, &gw).unwrap();
    });
    report_flops(
        &format!("CEILING cuBLASLt bf16 GEMM {g8}^3"),
        ms,
        2.0 * (g8 as f64).powi(3),
    );
    drop((ga, gw));
}

/// Every kernel timed below against the CPU reference on small inputs (`tok`: the validation
/// row count of a token count); prints whether all match.
fn validate_all(dev: &Device, dm: usize, tok: impl Fn(usize) -> usize) {
    let hx = Tensor::from_f32(
        (0..3 * tok(77) * dm)
            .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
            .collect(),
        &[3, tok(77), dm],
        &Device::Cpu,
    )
    .unwrap()
    .to_dtype(DType::BF16)
    .unwrap();
    let gx = hx.to_device(dev).unwrap();
    let hm = hx
        .narrow(1, 0, 2)
        .unwrap()
        .contiguous()
        .unwrap()
        .reshape(&[3, 2 * dm])
        .unwrap();
    let gm = hm.to_device(dev).unwrap();
    let mut ok = true;
    ok &= validate(
        "layer_norm_modulate",
        &norm::layer_norm_modulate(
            &gx,
            &gm.narrow(1, 0, dm).unwrap(),
            &gm.narrow(1, dm, dm).unwrap(),
            1e-6,
        )
        .unwrap(),
        &norm::layer_norm_modulate(
            &hx,
            &hm.narrow(1, 0, dm).unwrap(),
            &hm.narrow(1, dm, dm).unwrap(),
            1e-6,
        )
        .unwrap(),
        dm,
    );
    ok &= validate(
        "gelu_tanh",
        &act::gelu_tanh(&gx).unwrap(),
        &act::gelu_tanh(&hx).unwrap(),
        1,
    );
    ok &= validate(
        "add",
        &ew::add(&gx, &gx).unwrap(),
        &ew::add(&hx, &hx).unwrap(),
        1,
    );
    let hw = hx.narrow(0, 0, 1).unwrap().reshape(&[tok(77), dm]).unwrap();
    let lh = Linear {
        weight: Weight::Dense(hw.clone()),
        bias: None,
    };
    let lg = Linear {
        weight: Weight::Dense(hw.to_device(dev).unwrap()),
        bias: None,
    };
    ok &= validate(
        "linear",
        &gemm::linear(&gx, &lg).unwrap(),
        &gemm::linear(&hx, &lh).unwrap(),
        dm,
    );
    println!(
        "validation: {}",
        if ok {
            "all kernels match the CPU reference"
        } else {
            "FAILED (timings below are of wrong kernels)"
        }
    );
}

/// The VAE: a causal 3D conv of the first up block at the default latent size (384 -> 384
/// channels, k 3x3x3, 2 frames of cache + 1 new frame, 54x96) and the last one at full
/// resolution (96 -> 96, 432x768), f32 SIMT and bf16 tensor cores; the channel RMS norm + SiLU
/// at full resolution.
fn bench_vae(dev: &Device, it: usize) {
    for (name, ci, co, hh, ww) in [
        ("conv3d 384->384 k3 54x96", 384, 384, 54, 96),
        ("conv3d 96->96 k3 432x768", 96, 96, 432, 768),
    ]
    .map(|(n, ci, co, hh, ww)| {
        if util::rehearsal() {
            (n, ci / 24, co / 24, 4, 4)
        } else {
            (n, ci, co, hh, ww)
        }
    }) {
        let xin = Tensor::from_f32(
            vec![0.1; ci * 4 * hh * ww],
            &[1, ci, 4, hh, ww],
            &Device::Cpu,
        )
        .unwrap()
        .to_device(dev)
        .unwrap();
        let w = Tensor::from_f32(vec![0.01; co * ci * 27], &[co, ci, 3, 3, 3], &Device::Cpu)
            .unwrap()
            .to_device(dev)
            .unwrap();
        // bf16: the weight packed once (as the decoder holds it), not per call.
        let packed = pack_weight_bf16(&w).unwrap();
        for prec in [ConvPrecision::F32, ConvPrecision::Bf16] {
            let o = ConvOpts {
                precision: prec,
                ..Default::default()
            };
            let wr = match prec {
                ConvPrecision::F32 => WRef::F32(&w),
                ConvPrecision::Bf16 => WRef::Bf16(&packed),
            };
            let ms = time_ms(dev, it, || {
                conv3d(&xin, wr, None, &o).unwrap();
            });
            report_flops(
                &format!("{name} x4 frames {prec:?}"),
                ms,
                2.0 * (co * ci * 27 * 4 * hh * ww) as f64,
            );
        }
        if ci == util::scaled(96, 4) {
            let gamma = Tensor::from_f32(vec![1.0; ci], &[ci], &Device::Cpu)
                .unwrap()
                .to_device(dev)
                .unwrap();
            let ms = time_ms(dev, it, || {
                norm::channel_rms_norm(&xin, &gamma, true).unwrap();
            });
            report_bw(
                &format!("channel_rms_norm+silu [1,{ci},4,{hh},{ww}] f32"),
                ms,
                2 * ci * 4 * hh * ww * 4,
            );
        }
    }
}
