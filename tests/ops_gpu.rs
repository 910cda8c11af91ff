//! Every GPU op against its f32 CPU reference, in f32 and bf16, on shapes that are not multiples
//! of the block sizes. Each test prints `SKIP: <reason>` and passes when no GPU is available.
mod common;

use common::cuda_or_skip as gpu;
use common::host_and_device as pair;
fn rnd(n: usize, seed: u64) -> Vec<f32> {
    common::rand_vec(n, seed, 1.0)
}

use contentv::ops::{act, attention, elementwise as ew, embed, gemm, norm, tolerance};
use contentv::runtime::{DType, Device, Linear, Tensor, Weight};

fn host(v: Vec<f32>, s: &[usize]) -> Tensor {
    Tensor::from_f32(v, s, &Device::Cpu).unwrap()
}

fn check(name: &str, got: &Tensor, want: &Tensor, dt: DType, k: usize) {
    assert_eq!(got.shape(), want.shape(), "{name}: shape");
    assert_eq!(got.dtype(), dt, "{name}: output dtype");
    let (atol, rtol) = tolerance::for_dtype(dt, k);
    let g = got.to_vec_f32().unwrap();
    let w = want.to_vec_f32().unwrap();
    if let Err(e) = tolerance::check(&g, &w, atol, rtol) {
        panic!("{name} ({}): {e}", dt.name());
    }
    println!("{name} {}: ok ({} values)", dt.name(), g.len());
}

/// adaLN modulation: the kernel rounds like the PyTorch reference (four roundings in bf16), so
/// the bound grows with the product `|y - shift|` (`tolerance::adaln_bounds`). `shift` is the
/// host [B, C] shift; x is [B, S, C].
fn check_adaln(got: &Tensor, want: &Tensor, shift: &Tensor, dt: DType, c: usize) {
    let (b, s) = (want.dim(0), want.dim(1));
    let sh = shift.to_vec_f32().unwrap();
    let shift_full: Vec<f32> = (0..b * s * c)
        .map(|i| sh[(i / (s * c)) * c + i % c])
        .collect();
    let w = want.to_vec_f32().unwrap();
    let g = got.to_vec_f32().unwrap();
    let bound = tolerance::adaln_bounds(dt, &w, &shift_full, c);
    if let Err(e) = tolerance::check_bounds(&g, &w, &bound) {
        panic!("layer_norm_modulate ({}): {e}", dt.name());
    }
    println!("layer_norm_modulate {}: ok ({} values)", dt.name(), g.len());
}

const DTS: [DType; 2] = [DType::F32, DType::BF16];

#[test]
fn activations_and_softmax() {
    let Some(dev) = gpu() else { return };
    for dt in DTS {
        let (h, g) = pair(
            rnd(3 * 1001, 1).iter().map(|v| v * 4.0).collect(),
            &[3, 1001],
            &dev,
            dt,
        );
        for (name, a) in [
            ("silu", gemm::Act::Silu),
            ("gelu_tanh", gemm::Act::GeluTanh),
            ("gelu_erf", gemm::Act::GeluErf),
            ("quick_gelu", gemm::Act::QuickGelu),
        ] {
            check(
                name,
                &act::apply(&g, a).unwrap(),
                &act::apply(&h, a).unwrap(),
                dt,
                1,
            );
        }
        check(
            "softmax_last",
            &act::softmax_last(&g).unwrap(),
            &act::softmax_last(&h).unwrap(),
            dt,
            1,
        );
    }
}

#[test]
fn norms() {
    let Some(dev) = gpu() else { return };
    for dt in DTS {
        let (b, s, c) = (2, 37, 2432);
        let (h, g) = pair(rnd(b * s * c, 2), &[b, s, c], &dev, dt);
        let (wh, wg) = pair(rnd(c, 3), &[c], &dev, dt);
        let (bh, bg) = pair(rnd(c, 4), &[c], &dev, dt);
        check(
            "layer_norm",
            &norm::layer_norm(&g, None, None, 1e-6).unwrap(),
            &norm::layer_norm(&h, None, None, 1e-6).unwrap(),
            dt,
            c,
        );
        check(
            "layer_norm affine",
            &norm::layer_norm(&g, Some(&wg), Some(&bg), 1e-5).unwrap(),
            &norm::layer_norm(&h, Some(&wh), Some(&bh), 1e-5).unwrap(),
            dt,
            c,
        );
        let (mh, mg) = pair(rnd(b * 6 * c, 5), &[b, 6 * c], &dev, dt);
        let got = norm::layer_norm_modulate(
            &g,
            &mg.narrow(1, 0, c).unwrap(),
            &mg.narrow(1, c, c).unwrap(),
            1e-6,
        )
        .unwrap();
        let want = norm::layer_norm_modulate(
            &h,
            &mh.narrow(1, 0, c).unwrap(),
            &mh.narrow(1, c, c).unwrap(),
            1e-6,
        )
        .unwrap();
        check_adaln(
            &got,
            &want,
            &mh.narrow(1, 0, c).unwrap().contiguous().unwrap(),
            dt,
            c,
        );
        let (qh, qg) = pair(rnd(b * s * 38 * 64, 6), &[b, s, 38, 64], &dev, dt);
        let (nh, ng) = pair(rnd(64, 7), &[64], &dev, dt);
        check(
            "rms_norm (q/k, head dim 64)",
            &norm::rms_norm(&qg, Some(&ng), 1e-6).unwrap(),
            &norm::rms_norm(&qh, Some(&nh), 1e-6).unwrap(),
            dt,
            64,
        );
    }
}

/// The fused QKV q/k norm (`qk_rms_norm_*`, one launch, in place) against its CPU reference
/// and against `rms_norm` on each head: q | k | v rows (and k | v, no q), heads of 64 (paired
/// loads), 16 and 7 (odd: scalar path), rows that are a strided view of a wider tensor at an
/// even and at an odd column (unaligned: scalar path). The v columns and the columns around
/// the view must keep their bits, and the GPU result must be the input's memory.
#[test]
fn qk_rms_norm_fused_in_place() {
    let Some(dev) = gpu() else { return };
    for dt in DTS {
        for (heads, hd) in [(3usize, 64usize), (2, 16), (3, 7)] {
            for with_q in [true, false] {
                for pad in [0usize, 4, 1] {
                    let (b, s, d) = (2, 45, heads * hd);
                    let w = if with_q { 3 * d } else { 2 * d };
                    let wide = w + 2 * pad;
                    let seed = (hd * 100 + pad * 10 + usize::from(with_q)) as u64;
                    let (yh_wide, yg_wide) = pair(rnd(b * s * wide, seed), &[b, s, wide], &dev, dt);
                    let before = yg_wide.to_vec_f32().unwrap();
                    let (yh, yg) = (
                        yh_wide.narrow(2, pad, w).unwrap(),
                        yg_wide.narrow(2, pad, w).unwrap(),
                    );
                    let (gqh, gqg) = pair(rnd(hd, seed + 1), &[hd], &dev, dt);
                    let (gkh, gkg) = pair(rnd(hd, seed + 2), &[hd], &dev, dt);
                    let kcol = if with_q { d } else { 0 };
                    let hq = if with_q { heads } else { 0 };
                    let side = |col, heads, g| norm::QkHeads {
                        col,
                        heads,
                        gain: Some(g),
                    };
                    let ptr = yg.dev_ptr().unwrap();
                    let got = norm::qk_rms_norm(
                        yg.clone(),
                        side(0, hq, &gqg),
                        side(kcol, heads, &gkg),
                        hd,
                        1e-6,
                    )
                    .unwrap();
                    assert_eq!(got.dev_ptr().unwrap(), ptr, "normalised in place");
                    let want = norm::qk_rms_norm(
                        yh.clone(),
                        side(0, hq, &gqh),
                        side(kcol, heads, &gkh),
                        hd,
                        1e-6,
                    )
                    .unwrap();
                    let name = format!("qk_rms_norm heads {heads}x{hd} q {with_q} col {pad}");
                    check(&name, &got, &want, dt, hd);
                    // The reference is rms_norm on each head's view.
                    for (col, g, n) in [(0, &gqh, hq), (kcol, &gkh, heads)] {
                        if n == 0 {
                            continue;
                        }
                        let part = yh
                            .narrow(2, col, n * hd)
                            .unwrap()
                            .contiguous()
                            .unwrap()
                            .reshape(&[b, s, n, hd])
                            .unwrap();
                        let r = norm::rms_norm(&part, Some(g), 1e-6).unwrap();
                        let w2 = want
                            .narrow(2, col, n * hd)
                            .unwrap()
                            .contiguous()
                            .unwrap()
                            .to_vec_f32()
                            .unwrap();
                        assert_eq!(r.to_vec_f32().unwrap(), w2, "{name}: reference vs rms_norm");
                    }
                    // The wide tensor read back: the normalised columns are the result, v and
                    // everything outside the view keep their bits.
                    let after = got.to_vec_f32().unwrap();
                    let wide_after = yg_wide.to_vec_f32().unwrap();
                    let vcol = kcol + heads * hd;
                    for r in 0..b * s {
                        for j in 0..wide {
                            let (a, was) = (wide_after[r * wide + j], before[r * wide + j]);
                            if j >= pad && j < pad + vcol {
                                assert_eq!(a.to_bits(), after[r * w + j - pad].to_bits());
                            } else {
                                assert_eq!(
                                    a.to_bits(),
                                    was.to_bits(),
                                    "{name}: column {j} of row {r} (not q/k) changed"
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn elementwise_ops() {
    let Some(dev) = gpu() else { return };
    for dt in DTS {
        let (b, s, c) = (2, 45, 130);
        let (ah, ag) = pair(rnd(b * s * c, 8), &[b, s, c], &dev, dt);
        let (xh, xg) = pair(rnd(b * s * c, 9), &[b, s, c], &dev, dt);
        let (ph, pg) = pair(rnd(s * c, 10), &[s, c], &dev, dt);
        let (gh, gg) = pair(rnd(b * 3 * c, 11), &[b, 3 * c], &dev, dt);
        check(
            "add",
            &ew::add(&ag, &xg).unwrap(),
            &ew::add(&ah, &xh).unwrap(),
            dt,
            1,
        );
        check(
            "mul",
            &ew::mul(&ag, &xg).unwrap(),
            &ew::mul(&ah, &xh).unwrap(),
            dt,
            1,
        );
        check(
            "scale",
            &ew::scale(&ag, 0.37).unwrap(),
            &ew::scale(&ah, 0.37).unwrap(),
            dt,
            1,
        );
        check(
            "add_scaled",
            &ew::add_scaled(&ag, &xg, -1.5).unwrap(),
            &ew::add_scaled(&ah, &xh, -1.5).unwrap(),
            dt,
            2,
        );
        check(
            "add_bcast",
            &ew::add_bcast(&ag, &pg).unwrap(),
            &ew::add_bcast(&ah, &ph).unwrap(),
            dt,
            1,
        );
        check(
            "gated_residual",
            &ew::gated_residual(&ag, &xg, &gg.narrow(1, c, c).unwrap()).unwrap(),
            &ew::gated_residual(&ah, &xh, &gh.narrow(1, c, c).unwrap()).unwrap(),
            dt,
            2,
        );
        check(
            "concat dim 1",
            &ew::concat(&[&ag, &xg], 1).unwrap(),
            &ew::concat(&[&ah, &xh], 1).unwrap(),
            dt,
            1,
        );
        check(
            "concat dim 2",
            &ew::concat(&[&ag, &xg], 2).unwrap(),
            &ew::concat(&[&ah, &xh], 2).unwrap(),
            dt,
            1,
        );
        let pt = ag.permute(&[2, 0, 1]).unwrap();
        check(
            "contiguous (permute)",
            &pt.contiguous().unwrap(),
            &ah.permute(&[2, 0, 1]).unwrap().contiguous().unwrap(),
            dt,
            1,
        );
        // Rank 7: the transformer's patchify permute.
        let (p7h, p7g) = pair(
            rnd(2 * 16 * 3 * 6 * 10, 50),
            &[2, 16, 3, 3, 2, 5, 2],
            &dev,
            dt,
        );
        let perm = [0, 2, 3, 5, 1, 4, 6];
        check(
            "contiguous (rank-7 patchify)",
            &p7g.permute(&perm).unwrap().contiguous().unwrap(),
            &p7h.permute(&perm).unwrap().contiguous().unwrap(),
            dt,
            1,
        );
        let (th, tg) = pair(rnd(100 * 33, 12), &[100, 33], &dev, dt);
        let ids = [0u32, 99, 5, 5, 42];
        check(
            "embedding",
            &embed::embedding(&tg, &ids).unwrap(),
            &embed::embedding(&th, &ids).unwrap(),
            dt,
            1,
        );
        assert!(embed::embedding(&tg, &[100]).is_err());
    }
}

#[test]
fn casts_round_to_nearest_even() {
    let Some(dev) = gpu() else { return };
    let v: Vec<f32> = rnd(4097, 13).iter().map(|x| x * 1000.0).collect();
    let g = host(v.clone(), &[4097]).to_device(&dev).unwrap();
    for dt in [DType::BF16, DType::F16] {
        let got = g
            .to_dtype(dt)
            .unwrap()
            .to_device(&Device::Cpu)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
            .to_vec_f32()
            .unwrap();
        let want = host(v.clone(), &[4097])
            .to_dtype(dt)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
            .to_vec_f32()
            .unwrap();
        assert_eq!(got, want, "cast to {}", dt.name());
    }
}

#[test]
fn linear_matmul_cublaslt() {
    let Some(dev) = gpu() else { return };
    for dt in DTS {
        for (m, k, n) in [
            (1, 64, 48),
            (45, 128, 768),
            (333, 4096, 2432),
            (77, 2432, 9728),
        ] {
            let (xh, xg) = pair(rnd(m * k, 14), &[m, k], &dev, dt);
            let (wh, wg) = pair(
                rnd(n * k, 15).iter().map(|v| v * 0.05).collect(),
                &[n, k],
                &dev,
                dt,
            );
            let (bh, bg) = pair(rnd(n, 16), &[n], &dev, dt);
            let lh = Linear {
                weight: Weight::Dense(wh),
                bias: Some(bh),
            };
            let lg = Linear {
                weight: Weight::Dense(wg),
                bias: Some(bg),
            };
            for a in [gemm::Act::None, gemm::Act::GeluTanh, gemm::Act::Silu] {
                check(
                    &format!("linear {m}x{k}x{n} {a:?}"),
                    &gemm::linear_act(&xg, &lg, a).unwrap(),
                    &gemm::linear_act(&xh, &lh, a).unwrap(),
                    dt,
                    k,
                );
            }
        }
        // Strided rows (a column slice of a wider activation).
        let (xh, xg) = pair(rnd(2 * 9 * 96, 17), &[2, 9, 96], &dev, dt);
        let (wh, wg) = pair(rnd(40 * 64, 18), &[40, 64], &dev, dt);
        let lh = Linear {
            weight: Weight::Dense(wh),
            bias: None,
        };
        let lg = Linear {
            weight: Weight::Dense(wg),
            bias: None,
        };
        check(
            "linear strided rows",
            &gemm::linear(&xg.narrow(2, 16, 64).unwrap(), &lg).unwrap(),
            &gemm::linear(&xh.narrow(2, 16, 64).unwrap(), &lh).unwrap(),
            dt,
            64,
        );
        let (ah, ag) = pair(rnd(3 * 77 * 64, 19), &[3, 77, 64], &dev, dt);
        let (bh, bg) = pair(rnd(3 * 77 * 64, 20), &[3, 77, 64], &dev, dt);
        let bt_h = bh.transpose(1, 2).unwrap();
        let bt_g = bg.transpose(1, 2).unwrap();
        check(
            "matmul (transposed b)",
            &gemm::matmul(&ag, &bt_g).unwrap(),
            &gemm::matmul(&ah, &bt_h).unwrap(),
            dt,
            64,
        );
        let cg = bt_g.contiguous().unwrap();
        check(
            "matmul",
            &gemm::matmul(&ag, &cg).unwrap(),
            &gemm::matmul(&ah, &bt_h).unwrap(),
            dt,
            64,
        );
    }
}

#[test]
fn attention_small_shapes() {
    let Some(dev) = gpu() else { return };
    for dt in DTS {
        for (b, h, d, sv, st) in [
            (1, 2, 64, 45, 333),
            (2, 3, 64, 100, 7),
            (1, 1, 16, 77, 0),
            (2, 2, 32, 19, 5),
        ] {
            let hd = h * d;
            let mk = |s: usize, seed| pair(rnd(b * s * hd, seed), &[b, s, hd], &dev, dt);
            let (qh, qg) = mk(sv, 21);
            let (kh, kg) = mk(sv, 22);
            let (vh, vg) = mk(sv, 23);
            let o = attention::AttnOpts::new(h, d);
            if st > 0 {
                let (qth, qtg) = mk(st, 24);
                let (kth, ktg) = mk(st, 25);
                let (vth, vtg) = mk(st, 26);
                let got =
                    attention::attention(&[&qg, &qtg], &[&kg, &ktg], &[&vg, &vtg], &o).unwrap();
                let want =
                    attention::attention(&[&qh, &qth], &[&kh, &kth], &[&vh, &vth], &o).unwrap();
                check(
                    &format!("joint attention b{b} h{h} d{d} {sv}+{st}"),
                    &got,
                    &want,
                    dt,
                    sv + st,
                );
            } else {
                let oc = attention::AttnOpts { causal: true, ..o };
                let got = attention::attention(&[&qg], &[&kg], &[&vg], &oc).unwrap();
                let want = attention::attention(&[&qh], &[&kh], &[&vh], &oc).unwrap();
                check(
                    &format!("causal attention b{b} h{h} d{d} {sv}"),
                    &got,
                    &want,
                    dt,
                    sv,
                );
            }
        }
    }
}

#[test]
fn channel_rms_norm_vae() {
    let Some(dev) = gpu() else { return };
    for silu in [false, true] {
        let (h, g) = pair(
            rnd(2 * 96 * 3 * 5 * 7, 30),
            &[2, 96, 3, 5, 7],
            &dev,
            DType::F32,
        );
        let (gh, gg) = pair(rnd(96, 31), &[96], &dev, DType::F32);
        check(
            "channel_rms_norm",
            &norm::channel_rms_norm(&g, &gg, silu).unwrap(),
            &norm::channel_rms_norm(&h, &gh, silu).unwrap(),
            DType::F32,
            96,
        );
    }
}

/// Regressions of the static kernel review (docs/kernel-review.md): a fully masked softmax
/// row, LayerNorm with a bias but no weight, and GEMMs on a [B, 1, K] view whose size-1 dim
/// carries a stride unrelated to the row stride (flat_rows used to read the wrong rows).
#[test]
fn kernel_review_regressions() {
    use contentv::ops::quant::{linear_int8_with, quantize_per_channel, Int8Kernel};
    let Some(dev) = gpu() else { return };
    for dt in DTS {
        // Row 1 is all -inf: zeros (CPU reference), not NaN.
        let mut v = rnd(3 * 70, 50);
        v[70..140].iter_mut().for_each(|x| *x = f32::NEG_INFINITY);
        let (h, g) = pair(v, &[3, 70], &dev, dt);
        let got = act::softmax_last(&g).unwrap();
        assert!(got.to_vec_f32().unwrap()[70..140].iter().all(|&x| x == 0.0));
        check(
            "softmax_last (masked row)",
            &got,
            &act::softmax_last(&h).unwrap(),
            dt,
            1,
        );

        let c = 300;
        let (h, g) = pair(rnd(5 * c, 51), &[5, c], &dev, dt);
        let (bh, bg) = pair(rnd(c, 52), &[c], &dev, dt);
        check(
            "layer_norm (bias, no weight)",
            &norm::layer_norm(&g, None, Some(&bg), 1e-5).unwrap(),
            &norm::layer_norm(&h, None, Some(&bh), 1e-5).unwrap(),
            dt,
            c,
        );

        let (k, n) = (64, 40);
        let (xh, xg) = pair(rnd(2 * 5 * k, 53), &[2, 5, k], &dev, dt);
        let (xh, xg) = (xh.narrow(1, 2, 1).unwrap(), xg.narrow(1, 2, 1).unwrap());
        let w = rnd(n * k, 54);
        let (wh, wg) = pair(w.clone(), &[n, k], &dev, dt);
        let lh = Linear {
            weight: Weight::Dense(wh),
            bias: None,
        };
        let lg = Linear {
            weight: Weight::Dense(wg),
            bias: None,
        };
        let want = gemm::linear(&xh, &lh).unwrap();
        check(
            "linear on a [2, 1, K] view",
            &gemm::linear(&xg, &lg).unwrap(),
            &want,
            dt,
            k,
        );
        if dt == DType::BF16 {
            let (q, sc) = quantize_per_channel(&w, n, k, None);
            let (qh, sh) = (
                Tensor::from_i8(q.clone(), &[n, k], &Device::Cpu).unwrap(),
                host(sc.clone(), &[n]),
            );
            let want =
                contentv::ops::quant::linear_int8(&xh, &qh, &sh, None, gemm::Act::None).unwrap();
            let (qg, sg) = (
                Tensor::from_i8(q, &[n, k], &dev).unwrap(),
                Tensor::from_f32(sc, &[n], &dev).unwrap(),
            );
            for kernel in [Int8Kernel::Mma, Int8Kernel::Gemv] {
                let got = linear_int8_with(&xg, &qg, &sg, None, gemm::Act::None, kernel).unwrap();
                check(
                    &format!("linear_int8 {kernel:?} on a [2, 1, K] view"),
                    &got,
                    &want,
                    dt,
                    k,
                );
            }
        }
    }
}

mod random_shapes {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]

        #[test]
        fn norms_any_shape(b in 1usize..3, s in 1usize..70, c in 1usize..700, bf in any::<bool>()) {
            let Some(dev) = gpu() else { return Ok(()) };
            let dt = if bf { DType::BF16 } else { DType::F32 };
            let (h, g) = pair(rnd(b * s * c, (b * 1000 + s * 10 + c) as u64), &[b, s, c], &dev, dt);
            let (mh, mg) = pair(rnd(b * 2 * c, 77), &[b, 2 * c], &dev, dt);
            check_adaln(&norm::layer_norm_modulate(&g, &mg.narrow(1, 0, c).unwrap(), &mg.narrow(1, c, c).unwrap(), 1e-6).unwrap(),
                  &norm::layer_norm_modulate(&h, &mh.narrow(1, 0, c).unwrap(), &mh.narrow(1, c, c).unwrap(), 1e-6).unwrap(),
                  &mh.narrow(1, 0, c).unwrap().contiguous().unwrap(), dt, c);
            check("rms_norm", &norm::rms_norm(&g, None, 1e-6).unwrap(), &norm::rms_norm(&h, None, 1e-6).unwrap(), dt, c);
            check("softmax", &act::softmax_last(&g).unwrap(), &act::softmax_last(&h).unwrap(), dt, 1);
        }

        #[test]
        fn linear_any_shape(m in 1usize..300, k in 1usize..200, n in 1usize..300, bias in any::<bool>()) {
            let Some(dev) = gpu() else { return Ok(()) };
            let k = k * 8; // cuBLASLt bf16 rows need 16-byte alignment
            let n = n.max(1);
            for dt in DTS {
                let (xh, xg) = pair(rnd(m * k, 1), &[m, k], &dev, dt);
                let (wh, wg) = pair(rnd(n * k, 2).iter().map(|v| v * 0.1).collect(), &[n, k], &dev, dt);
                let (bh, bg) = pair(rnd(n, 3), &[n], &dev, dt);
                let lh = Linear { weight: Weight::Dense(wh), bias: if bias { Some(bh) } else { None } };
                let lg = Linear { weight: Weight::Dense(wg), bias: if bias { Some(bg) } else { None } };
                check("linear", &gemm::linear(&xg, &lg).unwrap(), &gemm::linear(&xh, &lh).unwrap(), dt, k);
            }
        }

        #[test]
        fn attention_any_shape(b in 1usize..3, h in 1usize..4, sv in 1usize..300, st in 0usize..90, causal in any::<bool>()) {
            let Some(dev) = gpu() else { return Ok(()) };
            let (d, dt) = (64, DType::BF16);
            let hd = h * d;
            let mk = |s: usize, seed| pair(rnd(b * s * hd, seed), &[b, s, hd], &dev, dt);
            let (qh, qg) = mk(sv, 41);
            let (kh, kg) = mk(sv, 42);
            let (vh, vg) = mk(sv, 43);
            let o = attention::AttnOpts { causal: causal && st == 0, ..attention::AttnOpts::new(h, d) };
            if st > 0 {
                let (kth, ktg) = mk(st, 44);
                let (vth, vtg) = mk(st, 45);
                check("attention q=video, kv=[video,text]", &attention::attention(&[&qg], &[&kg, &ktg], &[&vg, &vtg], &o).unwrap(),
                      &attention::attention(&[&qh], &[&kh, &kth], &[&vh, &vth], &o).unwrap(), dt, sv + st);
            } else {
                check("attention", &attention::attention(&[&qg], &[&kg], &[&vg], &o).unwrap(),
                      &attention::attention(&[&qh], &[&kh], &[&vh], &o).unwrap(), dt, sv);
            }
        }
    }
}

/// `copy_nd` after planning (runtime/copy.rs: merged dims, elements widened up to 16 bytes,
/// 32-bit magic division): ranks 1..6 and 8, odd sizes, narrows whose runs widen and do not,
/// transposes, a scatter into a view (concat), every dtype; exact against the host copy,
/// one launch per copy and none for a view that is already contiguous. (Exact: a copy moves
/// bits, and the host side holds the same values in f32.)
#[test]
fn copy_nd_planned_paths() {
    use contentv::runtime::copy::{copy_stats, plan};
    let Some(dev) = gpu() else { return };
    for dt in [DType::F32, DType::BF16, DType::F16] {
        type View = Box<dyn Fn(&Tensor) -> Tensor>;
        let views: Vec<(&str, Vec<usize>, View)> = vec![
            (
                "rank 1 strided",
                vec![75],
                Box::new(|t| t.as_strided(&[25], &[3]).unwrap()),
            ),
            (
                "rank 2 transpose 37x5",
                vec![37, 5],
                Box::new(|t| t.transpose(0, 1).unwrap()),
            ),
            (
                "rank 3 video rows of [2, 45+13, 64]",
                vec![2, 58, 64],
                Box::new(|t| t.narrow(1, 0, 45).unwrap()),
            ),
            (
                "rank 3 text rows, odd width 2x(7+9)x6",
                vec![2, 16, 6],
                Box::new(|t| t.narrow(1, 7, 9).unwrap()),
            ),
            (
                "rank 4 permute 3x2x5x7",
                vec![3, 2, 5, 7],
                Box::new(|t| t.permute(&[2, 0, 3, 1]).unwrap()),
            ),
            (
                "rank 5 narrow 2x3x4x5x8",
                vec![2, 3, 4, 5, 8],
                Box::new(|t| t.narrow(2, 1, 2).unwrap().narrow(4, 0, 4).unwrap()),
            ),
            (
                "rank 6 permute 2x3x2x3x2x5",
                vec![2, 3, 2, 3, 2, 5],
                Box::new(|t| t.permute(&[0, 2, 4, 1, 3, 5]).unwrap()),
            ),
            (
                "rank 8 permute 2x3x2x3x2x3x2x3",
                vec![2, 3, 2, 3, 2, 3, 2, 3],
                Box::new(|t| t.permute(&[7, 5, 3, 1, 6, 4, 2, 0]).unwrap()),
            ),
        ];
        for (i, (name, shape, view)) in views.iter().enumerate() {
            let n: usize = shape.iter().product();
            let (h, g) = pair(rnd(n, 900 + i as u64), shape, &dev, dt);
            let (vh, vg) = (view(&h), view(&g));
            let p = plan(
                vg.shape(),
                vg.strides(),
                &contentv::runtime::tensor::contiguous_strides(vg.shape()),
                dt.size(),
                vg.dev_ptr().unwrap(),
                0,
            );
            let before = copy_stats();
            let got = vg.contiguous().unwrap();
            let after = copy_stats();
            assert_eq!(after.launches - before.launches, 1, "{name}");
            assert_eq!(
                after.bytes - before.bytes,
                (vg.elem_count() * dt.size()) as u64,
                "{name}"
            );
            // (The host side holds the same values in f32: exact comparison of the values.)
            assert_eq!(
                got.to_vec_f32().unwrap(),
                vh.contiguous().unwrap().to_vec_f32().unwrap(),
                "{name} {} (plan {p:?})",
                dt.name()
            );
            println!("copy_nd {name} {}: ok, plan {p:?}", dt.name());
        }
        // Scatter: concat writes both parts into views of the output.
        let (ah, ag) = pair(rnd(2 * 45 * 24, 950), &[2, 45, 24], &dev, dt);
        let (bh, bg) = pair(rnd(2 * 13 * 24, 951), &[2, 13, 24], &dev, dt);
        assert_eq!(
            ew::concat(&[&ag, &bg], 1).unwrap().to_vec_f32().unwrap(),
            ew::concat(&[&ah, &bh], 1).unwrap().to_vec_f32().unwrap(),
            "concat {}",
            dt.name()
        );
        // A contiguous view is no copy.
        let before = copy_stats();
        let _ = ag.narrow(0, 1, 1).unwrap().contiguous().unwrap();
        assert_eq!(copy_stats(), before, "a contiguous narrow was copied");
    }
}
