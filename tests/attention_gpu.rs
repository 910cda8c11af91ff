//! The CUDA attention kernels (kernels/attention.cu) against the f32 CPU reference
//! (`ops::attention::attention` on host tensors fed the same dtype-rounded inputs): the flash
//! kernel (bf16, d = 64) and the generic one (any d <= 256, f32/bf16/f16), on sequence lengths
//! that are not multiples of the tiles (video 45/1000/1537 + text 333), 1/2/38 heads, batch 1
//! and 2, causal on/off, bias on/off, strided row views (q/k/v as column slices of one fused
//! qkv tensor), key tiles straddling segments, 3 segments, empty segments. Every test prints
//! `SKIP: <reason>` and passes when no GPU is available.
mod common;

use common::cuda_or_skip as gpu;
use common::host_and_device as pair;
fn rnd(n: usize, seed: u64, amp: f32) -> Vec<f32> {
    common::rand_vec(n, seed, amp)
}

use contentv::ops::attention::{attention, attention_into, attention_segs, AttnKernel, AttnOpts};
use contentv::ops::tolerance;
use contentv::runtime::{DType, Device, Tensor};

/// One segment of q, k and v, as column slices of a fused [B, S, 3*H*d] tensor (row stride
/// 3*H*d, like the output of a fused qkv projection) or as separate contiguous tensors.
struct Seg {
    host: [Tensor; 3],
    dev: [Tensor; 3],
}

#[allow(clippy::too_many_arguments)]
fn seg(
    b: usize,
    s: usize,
    hd: usize,
    seed: u64,
    amps: [f32; 3],
    fused: bool,
    dev: &Device,
    dt: DType,
) -> Seg {
    if fused {
        // Per row: [q | k | v], each amplitude applied to its own third.
        let mut v = Vec::with_capacity(b * s * 3 * hd);
        let parts: Vec<Vec<f32>> = (0..3)
            .map(|i| rnd(b * s * hd, seed * 3 + i as u64, amps[i]))
            .collect();
        for r in 0..b * s {
            for p in &parts {
                v.extend_from_slice(&p[r * hd..(r + 1) * hd]);
            }
        }
        let (h, g) = pair(v, &[b, s, 3 * hd], dev, dt);
        let sl = |t: &Tensor, i: usize| t.narrow(2, i * hd, hd).unwrap();
        Seg {
            host: [sl(&h, 0), sl(&h, 1), sl(&h, 2)],
            dev: [sl(&g, 0), sl(&g, 1), sl(&g, 2)],
        }
    } else {
        let mk = |i: usize| {
            pair(
                rnd(b * s * hd, seed * 3 + i as u64, amps[i]),
                &[b, s, hd],
                dev,
                dt,
            )
        };
        let (q, k, v) = (mk(0), mk(1), mk(2));
        Seg {
            host: [q.0, k.0, v.0],
            dev: [q.1, k.1, v.1],
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Case {
    b: usize,
    h: usize,
    d: usize,
    /// Segment lengths (video, text, ...), shared by q, k and v.
    segs: &'static [usize],
    /// Queries: only the first `q_segs` segments (the last MMDiT block attends with the video
    /// queries only).
    q_segs: usize,
    causal: bool,
    bias: bool,
    fused: bool,
    /// Amplitude of q (larger: peakier softmax).
    q_amp: f32,
}

impl Case {
    fn new(b: usize, h: usize, d: usize, segs: &'static [usize]) -> Case {
        Case {
            b,
            h,
            d,
            segs,
            q_segs: segs.len(),
            causal: false,
            bias: false,
            fused: false,
            q_amp: 1.0,
        }
    }
}

/// Runs `c` on the GPU with `kernel` in `dt` and checks it against the CPU reference.
fn run_case(dev: &Device, c: Case, dt: DType, kernel: AttnKernel) {
    let hd = c.h * c.d;
    // The emulated device runs the long cases at 1/8 of the length.
    let lens: Vec<usize> = c.segs.iter().map(|&s| common::emu_len(dev, s)).collect();
    let segs: Vec<Seg> = lens
        .iter()
        .enumerate()
        .map(|(i, &s)| {
            seg(
                c.b,
                s,
                hd,
                100 + i as u64,
                [c.q_amp, 1.0, 1.0],
                c.fused,
                dev,
                dt,
            )
        })
        .collect();
    let side = |which: usize, host: bool, n: usize| -> Vec<&Tensor> {
        segs[..n]
            .iter()
            .map(|s| if host { &s.host[which] } else { &s.dev[which] })
            .collect()
    };
    let ns = c.segs.len();
    let sq: usize = lens[..c.q_segs].iter().sum();
    let sk: usize = lens.iter().sum();
    let bias = c
        .bias
        .then(|| pair(rnd(c.h * sq * sk, 7, 2.0), &[c.h, sq, sk], dev, DType::F32));
    let scale = 1.0 / (c.d as f32).sqrt();
    let o = AttnOpts {
        heads: c.h,
        scale,
        causal: c.causal,
        bias: bias.as_ref().map(|b| &b.0),
        kernel: AttnKernel::Auto,
    };
    let want = attention(
        &side(0, true, c.q_segs),
        &side(1, true, ns),
        &side(2, true, ns),
        &o,
    )
    .unwrap();
    let got = attention(
        &side(0, false, c.q_segs),
        &side(1, false, ns),
        &side(2, false, ns),
        &AttnOpts {
            bias: bias.as_ref().map(|b| &b.1),
            kernel,
            ..o
        },
    )
    .unwrap_or_else(|e| panic!("{c:?} {kernel:?}: {e}"));
    assert_eq!(got.shape(), &[c.b, sq, hd], "{c:?}: output shape");
    assert_eq!(got.dtype(), dt, "{c:?}: output dtype");
    let g = got.to_vec_f32().unwrap();
    let w = want.to_vec_f32().unwrap();
    // bf16: inputs are identical on both sides; the GPU rounds P to bf16 before P V (2^-9
    // relative per weight, averaging out) and the output to bf16 (2^-9 relative).
    let (atol, rtol) = tolerance::for_dtype(dt, sk);
    let max_err = g
        .iter()
        .zip(&w)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    if let Err(e) = tolerance::check(&g, &w, atol, rtol) {
        panic!(
            "{c:?} {kernel:?} {}: {e} (max abs err {max_err:.3e})",
            dt.name()
        );
    }
    println!(
        "{kernel:?} {} {c:?}: ok, max abs err {max_err:.3e} ({} values)",
        dt.name(),
        g.len()
    );
}

const VIDEO_TEXT: &[usize] = &[45, 333];

#[test]
fn flash_joint_video_text() {
    let Some(dev) = gpu() else { return };
    for c in [
        Case::new(1, 1, 64, VIDEO_TEXT),
        Case::new(2, 2, 64, &[1000, 333]),
        Case {
            q_amp: 4.0,
            ..Case::new(1, 38, 64, VIDEO_TEXT)
        },
        Case {
            fused: true,
            ..Case::new(2, 2, 64, &[1537, 333])
        },
        // Last block: video queries only, all keys.
        Case {
            q_segs: 1,
            ..Case::new(2, 3, 64, &[1000, 333])
        },
        // Peaky softmax: the running max changes a lot between tiles.
        Case {
            q_amp: 24.0,
            ..Case::new(1, 2, 64, &[1000, 333])
        },
    ] {
        run_case(&dev, c, DType::BF16, AttnKernel::Mma);
    }
}

#[test]
fn flash_causal_and_bias() {
    let Some(dev) = gpu() else { return };
    for c in [
        Case {
            causal: true,
            ..Case::new(1, 2, 64, &[1537])
        },
        Case {
            causal: true,
            ..Case::new(2, 2, 64, &[1000, 333])
        },
        Case {
            bias: true,
            ..Case::new(2, 2, 64, VIDEO_TEXT)
        },
        Case {
            bias: true,
            causal: true,
            q_amp: 4.0,
            ..Case::new(1, 3, 64, &[200, 57])
        },
        Case {
            causal: true,
            q_segs: 1,
            ..Case::new(1, 2, 64, &[300, 333])
        },
        Case {
            bias: true,
            fused: true,
            ..Case::new(2, 38, 64, &[45, 77])
        },
    ] {
        run_case(&dev, c, DType::BF16, AttnKernel::Mma);
    }
}

#[test]
fn flash_odd_segments() {
    let Some(dev) = gpu() else { return };
    for c in odd_segment_cases() {
        run_case(&dev, c, DType::BF16, AttnKernel::Mma);
    }
}

/// Odd and empty segments (both the flash and the Hopper kernel run these).
fn odd_segment_cases() -> [Case; 6] {
    [
        // Tiny: fewer keys and queries than one tile.
        Case::new(1, 1, 64, &[1]),
        Case::new(2, 1, 64, &[3, 5]),
        // Three and four segments; an empty one.
        Case::new(1, 2, 64, &[63, 65, 1]),
        Case {
            causal: true,
            ..Case::new(2, 2, 64, &[17, 128, 64, 129])
        },
        Case::new(1, 2, 64, &[129, 0]),
        Case {
            fused: true,
            ..Case::new(1, 2, 64, &[127, 0, 333])
        },
    ]
}

/// Whether the Hopper kernel runs here (an sm_90 device with the sm_90a image: a real H100/H200,
/// or the emulated device at its default arch 9.0); prints SKIP otherwise.
fn hopper_here(dev: &Device) -> bool {
    let Device::Cuda(g) = dev else { return false };
    let ok = contentv::ops::attention::hopper_available(g);
    if !ok {
        println!("SKIP: the Hopper kernel needs sm_90 and the sm_90a image of kernels/attention_hopper.cu");
    }
    ok
}

/// The FlashAttention-3-style sm_90a kernel on the cases of the flash kernel: joint
/// [video; text], 38 heads, batch 2, fused (strided) rows, video-only queries, a peaky softmax,
/// causal, bias, odd and empty segments, four segments.
#[test]
fn hopper_joint_causal_bias_odd() {
    let Some(dev) = gpu() else { return };
    if !hopper_here(&dev) {
        return;
    }
    for c in [
        Case::new(1, 1, 64, VIDEO_TEXT),
        Case {
            q_amp: 4.0,
            ..Case::new(2, 38, 64, &[1000, 77])
        },
        Case {
            fused: true,
            ..Case::new(2, 2, 64, &[1537, 333])
        },
        Case {
            q_segs: 1,
            ..Case::new(2, 3, 64, &[1000, 333])
        },
        Case {
            q_amp: 24.0,
            ..Case::new(1, 2, 64, &[1000, 333])
        },
        Case {
            causal: true,
            ..Case::new(2, 2, 64, &[1000, 333])
        },
        Case {
            bias: true,
            causal: true,
            q_amp: 4.0,
            ..Case::new(1, 3, 64, &[200, 57])
        },
        Case {
            bias: true,
            fused: true,
            ..Case::new(2, 38, 64, &[45, 77])
        },
    ]
    .into_iter()
    .chain(odd_segment_cases())
    {
        run_case(&dev, c, DType::BF16, AttnKernel::Hopper);
    }
}

#[test]
fn naive_all_dtypes_and_head_dims() {
    let Some(dev) = gpu() else { return };
    for dt in [DType::F32, DType::BF16, DType::F16] {
        for c in [
            Case::new(1, 2, 16, &[77]),
            Case {
                causal: true,
                ..Case::new(2, 2, 32, &[19, 5])
            },
            Case {
                bias: true,
                fused: true,
                ..Case::new(2, 3, 64, VIDEO_TEXT)
            },
            Case {
                causal: true,
                bias: true,
                q_segs: 1,
                ..Case::new(1, 1, 128, &[100, 33])
            },
            Case::new(1, 1, 256, &[40, 9]),
            Case {
                q_amp: 8.0,
                ..Case::new(1, 2, 8, &[3, 31, 2, 70])
            },
        ] {
            run_case(&dev, c, dt, AttnKernel::Naive);
        }
    }
}

/// Auto picks flash for bf16 / d = 64 and the generic kernel otherwise; both agree with the
/// reference at the MMDiT shape (heads 38, video + text).
#[test]
fn auto_dispatch() {
    let Some(dev) = gpu() else { return };
    run_case(
        &dev,
        Case::new(1, 38, 64, VIDEO_TEXT),
        DType::BF16,
        AttnKernel::Auto,
    );
    run_case(
        &dev,
        Case::new(1, 4, 32, VIDEO_TEXT),
        DType::BF16,
        AttnKernel::Auto,
    );
    run_case(
        &dev,
        Case::new(1, 2, 64, VIDEO_TEXT),
        DType::F32,
        AttnKernel::Auto,
    );
}

/// Flash and the generic kernel on the same inputs (second opinion, no CPU in the loop).
#[test]
fn flash_matches_naive() {
    let Some(dev) = gpu() else { return };
    let (b, h, d) = (2, 4, 64);
    let hd = h * d;
    let mk = |s: usize, seed| {
        let s = common::emu_len(&dev, s);
        pair(rnd(b * s * hd, seed, 2.0), &[b, s, hd], &dev, DType::BF16).1
    };
    let (qv, kv, vv, qt, kt, vt) = (
        mk(2000, 1),
        mk(2000, 2),
        mk(2000, 3),
        mk(333, 4),
        mk(333, 5),
        mk(333, 6),
    );
    for causal in [false, true] {
        let run = |k| {
            let o = AttnOpts {
                causal,
                kernel: k,
                ..AttnOpts::new(h, 64)
            };
            attention(&[&qv, &qt], &[&kv, &kt], &[&vv, &vt], &o)
                .unwrap()
                .to_vec_f32()
                .unwrap()
        };
        let (f, n) = (run(AttnKernel::Mma), run(AttnKernel::Naive));
        // Both round the output to bf16; flash also rounds P.
        let (atol, rtol) = tolerance::for_dtype(DType::BF16, 2333);
        tolerance::check(&f, &n, 2.0 * atol, 2.0 * rtol)
            .unwrap_or_else(|e| panic!("flash vs naive (causal {causal}): {e}"));
        println!("flash vs naive causal={causal}: ok ({} values)", f.len());
    }
}

/// Row strides that are not 16-byte aligned: the flash path copies to contiguous first.
#[test]
fn flash_unaligned_views() {
    let Some(dev) = gpu() else { return };
    let (b, h, d, s) = (2, 2, 64, 150);
    let hd = h * d;
    let rs = hd + 3; // odd row stride
    let base = |seed| pair(rnd(b * s * rs, seed, 1.0), &[b, s, rs], &dev, DType::BF16);
    let (qh, qg) = base(11);
    let (kh, kg) = base(12);
    let (vh, vg) = base(13);
    let view = |t: &Tensor| t.narrow(2, 1, hd).unwrap(); // offset 1 element: misaligned too
    let o = AttnOpts::new(h, d);
    let want = attention(&[&view(&qh)], &[&view(&kh)], &[&view(&vh)], &o)
        .unwrap()
        .to_vec_f32()
        .unwrap();
    let got = attention(
        &[&view(&qg)],
        &[&view(&kg)],
        &[&view(&vg)],
        &AttnOpts {
            kernel: AttnKernel::Mma,
            ..o
        },
    )
    .unwrap()
    .to_vec_f32()
    .unwrap();
    let (atol, rtol) = tolerance::for_dtype(DType::BF16, s);
    tolerance::check(&got, &want, atol, rtol).unwrap();
    println!("unaligned views: ok");
}

/// Clear errors: too many segments, flash on an unsupported head dim, bias of the wrong shape.
#[test]
fn errors_are_clear() {
    let Some(dev) = gpu() else { return };
    let t = |s: usize, d: usize, dt| pair(rnd(s * 2 * d, 3, 1.0), &[1, s, 2 * d], &dev, dt).1;
    let x = t(5, 64, DType::BF16);
    let five: Vec<&Tensor> = vec![&x; 5];
    let o = AttnOpts::new(2, 64);
    let e = attention(&five, &five, &five, &o).unwrap_err();
    assert!(e.to_string().contains("segments"), "{e}");
    let y = t(5, 32, DType::BF16);
    let mma = AttnOpts {
        kernel: AttnKernel::Mma,
        ..AttnOpts::new(2, 32)
    };
    let e = attention(&[&y], &[&y], &[&y], &mma).unwrap_err();
    assert!(e.to_string().contains("head dim 64"), "{e}");
    let bad_bias = pair(vec![0.0; 2 * 5 * 4], &[2, 5, 4], &dev, DType::F32).1;
    let biased = AttnOpts {
        bias: Some(&bad_bias),
        ..o
    };
    let e = attention(&[&x], &[&x], &[&x], &biased).unwrap_err();
    assert!(e.to_string().contains("bias"), "{e}");
    println!("errors: ok");
}

/// One output per query segment (issue 18): `attention_segs` gives each query segment its
/// own contiguous [B, S_i, H*d] tensor, `attention_into` writes into strided views of
/// padded buffers; both hold exactly the rows of the single-output call (same kernel, same
/// arithmetic, only the store address differs), the padding stays untouched, and outputs that
/// do not fit are errors. Every kernel: flash (bf16, d = 64), Hopper where available, generic
/// (bf16 d = 64, f32 d = 40), odd segment lengths, batch 2.
#[test]
fn per_segment_outputs_every_kernel() {
    let Some(dev) = gpu() else { return };
    let mut kernels = vec![
        (AttnKernel::Mma, DType::BF16, 64),
        (AttnKernel::Naive, DType::BF16, 64),
        (AttnKernel::Naive, DType::F32, 40),
    ];
    if hopper_here(&dev) {
        kernels.push((AttnKernel::Hopper, DType::BF16, 64));
    }
    let (b, h) = (2, 2);
    for (kernel, dt, d) in kernels {
        let hd = h * d;
        let lens = [45usize, 13];
        let segs: Vec<Seg> = lens
            .iter()
            .enumerate()
            .map(|(i, &s)| seg(b, s, hd, 300 + i as u64, [2.0, 1.0, 1.0], i == 0, &dev, dt))
            .collect();
        let side = |w: usize| -> Vec<&Tensor> { segs.iter().map(|s| &s.dev[w]).collect() };
        let (q, k, v) = (side(0), side(1), side(2));
        let o = AttnOpts {
            kernel,
            ..AttnOpts::new(h, d)
        };
        let joint = attention(&q, &k, &v, &o).unwrap();
        let jv = joint.to_vec_f32().unwrap();
        let sq: usize = lens.iter().sum();
        // Rows [off, off + n) of every batch of the joint output.
        let rows_of = |off: usize, n: usize| -> Vec<f32> {
            (0..b)
                .flat_map(|bi| jv[(bi * sq + off) * hd..(bi * sq + off + n) * hd].to_vec())
                .collect()
        };
        let outs = attention_segs(&q, &k, &v, &o).unwrap();
        let mut off = 0;
        for (i, (o, &n)) in outs.iter().zip(&lens).enumerate() {
            assert_eq!(o.shape(), &[b, n, hd], "{kernel:?} segment {i}");
            assert!(o.is_contiguous());
            assert_eq!(
                o.to_vec_f32().unwrap(),
                rows_of(off, n),
                "{kernel:?} {}: segment {i} differs from the joint output",
                dt.name()
            );
            off += n;
        }
        // Strided views: rows of hd + 8 elements, one leading pad row per batch.
        let bufs: Vec<Tensor> = lens
            .iter()
            .map(|&n| Tensor::zeros(&[b, n + 1, hd + 8], dt, &dev).unwrap())
            .collect();
        let views: Vec<Tensor> = bufs
            .iter()
            .zip(&lens)
            .map(|(t, &n)| t.narrow(1, 1, n).unwrap().narrow(2, 0, hd).unwrap())
            .collect();
        let vr: Vec<&Tensor> = views.iter().collect();
        attention_into(&q, &k, &v, &vr, &o).unwrap();
        let mut off = 0;
        for (i, ((t, view), &n)) in bufs.iter().zip(&views).zip(&lens).enumerate() {
            assert_eq!(
                view.to_vec_f32().unwrap(),
                rows_of(off, n),
                "{kernel:?} view {i}"
            );
            let all = t.to_vec_f32().unwrap();
            for bi in 0..b {
                for r in 0..=n {
                    for c in 0..hd + 8 {
                        if r >= 1 && c < hd {
                            continue;
                        }
                        let x = all[(bi * (n + 1) + r) * (hd + 8) + c];
                        assert_eq!(x, 0.0, "{kernel:?}: padding [{bi}, {r}, {c}] written");
                    }
                }
            }
            off += n;
        }
        // Outputs that do not fit.
        let wrong = Tensor::zeros(&[b, lens[0] + 1, hd], dt, &dev).unwrap();
        let ok1 = Tensor::zeros(&[b, lens[1], hd], dt, &dev).unwrap();
        let e = attention_into(&q, &k, &v, &[&wrong, &ok1], &o)
            .unwrap_err()
            .to_string();
        assert!(e.contains("output"), "{e}");
        let e = attention_into(&q, &k, &v, &[&ok1], &o)
            .unwrap_err()
            .to_string();
        assert!(e.contains("outputs for 2 query segments"), "{e}");
        if kernel != AttnKernel::Naive {
            // An odd row stride: the flash kernels store element pairs.
            let odd = Tensor::zeros(&[b, lens[0], hd + 1], dt, &dev).unwrap();
            let oview = odd.narrow(2, 0, hd).unwrap();
            let e = attention_into(&q, &k, &v, &[&oview, &ok1], &o)
                .unwrap_err()
                .to_string();
            assert!(e.contains("4-byte aligned"), "{e}");
        }
        println!(
            "{kernel:?} {} d={d}: per-segment and strided outputs ok",
            dt.name()
        );
    }
}
