//! Wan2.1 VAE decoder: the conv op (CUDA vs the CPU reference), the decoder on a synthetic tiny
//! VAE (CUDA vs CPU), and parity with the diffusers fixtures (CPU always; CUDA when a GPU is
//! present). Tests that need a GPU print a SKIP line without one.
mod common;

use contentv::io::safetensors::SafeTensorsFile;
#[path = "support/vae_synthetic.rs"]
mod vae_synthetic;

use contentv::model::vae::{
    to_uint8_frames, DecodeOpts, LatentSpace, TileConfig, Tiling, VaeDecoder, VaeOptions,
};
use contentv::ops::conv::{
    cache_update, conv3d, interleave_time, upsample_nearest2x, ConvOpts, ConvPrecision,
};
use contentv::{DType, Device, Tensor};
use vae_synthetic::{rnd, tiny_config, tiny_weights};

/// The GPU (or the emulated one) with NaN-poisoned fresh allocations, as every GPU test runs
/// (`common::cuda_or_skip`): a kernel that leaves part of its output unwritten fails the test.
macro_rules! need_gpu {
    ($name:expr) => {
        match common::cuda_or_skip() {
            Some(d) => d,
            None => {
                println!("SKIP {}: no usable CUDA device (see the line above)", $name);
                return;
            }
        }
    };
}

fn diff(a: &[f32], b: &[f32]) -> (f32, f32) {
    assert_eq!(a.len(), b.len());
    let md = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    let mx = b.iter().map(|x| x.abs()).fold(0.0f32, f32::max);
    (md, mx)
}

fn host(v: Vec<f32>, s: &[usize]) -> Tensor {
    Tensor::from_f32(v, s, &Device::Cpu).unwrap()
}

struct Case {
    name: &'static str,
    x: [usize; 5],
    w: Vec<usize>,
    ctx: bool,
    up: bool,
    interleave: bool,
    residual: bool,
    clamp: bool,
}

fn conv_cases() -> Vec<Case> {
    let c = |name, x, w: &[usize], ctx, up, interleave, residual, clamp| Case {
        name,
        x,
        w: w.to_vec(),
        ctx,
        up,
        interleave,
        residual,
        clamp,
    };
    vec![
        c(
            "causal 3x3x3, zero ctx",
            [1, 16, 1, 9, 13],
            &[70, 16, 3, 3, 3],
            false,
            false,
            false,
            false,
            false,
        ),
        c(
            "causal 3x3x3, cached ctx, 2 batches",
            [2, 12, 3, 7, 10],
            &[20, 12, 3, 3, 3],
            true,
            false,
            false,
            true,
            false,
        ),
        c(
            "causal 3x3x3, 4 frames, wide",
            [1, 40, 4, 12, 33],
            &[96, 40, 3, 3, 3],
            true,
            false,
            false,
            false,
            true,
        ),
        c(
            "conv_out Co=3",
            [1, 24, 2, 16, 16],
            &[3, 24, 3, 3, 3],
            true,
            false,
            false,
            false,
            true,
        ),
        c(
            "1x1x1 shortcut",
            [1, 20, 2, 5, 11],
            &[36, 20, 1, 1, 1],
            false,
            false,
            false,
            false,
            false,
        ),
        c(
            "time_conv 3x1x1 interleave",
            [1, 18, 2, 6, 7],
            &[36, 18, 3, 1, 1],
            true,
            false,
            true,
            false,
            false,
        ),
        c(
            "per-frame 2D 3x3 with 2x upsample",
            [1, 32, 3, 5, 6],
            &[16, 32, 3, 3],
            false,
            true,
            false,
            false,
            false,
        ),
        c(
            "per-frame 1x1 (attention proj) + residual",
            [1, 64, 1, 6, 8],
            &[64, 64, 1, 1],
            false,
            false,
            false,
            true,
            false,
        ),
    ]
}

/// Runs every conv case on the GPU with `prec` and returns the worst relative error
/// (max |gpu - cpu| / max |cpu|).
fn conv_cases_on(dev: &Device, prec: ConvPrecision) -> f32 {
    let mut worst = 0.0f32;
    for (i, cs) in conv_cases().iter().enumerate() {
        let mut s = 100 + i as u64;
        let nx: usize = cs.x.iter().product();
        let nw: usize = cs.w.iter().product();
        let fan = nw / cs.w[0];
        let x = host(rnd(nx, &mut s, 1.0), &cs.x);
        let w = host(rnd(nw, &mut s, 2.0 / (fan as f32).sqrt()), &cs.w);
        let b = host(rnd(cs.w[0], &mut s, 0.3), &[cs.w[0]]);
        let kt = if cs.w.len() == 5 { cs.w[2] } else { 1 };
        let ctx = cs.ctx.then(|| {
            host(
                rnd(
                    cs.x[0] * cs.x[1] * (kt - 1) * cs.x[3] * cs.x[4],
                    &mut s,
                    1.0,
                ),
                &[cs.x[0], cs.x[1], kt - 1, cs.x[3], cs.x[4]],
            )
        });
        let o0 = ConvOpts {
            ctx: ctx.as_ref(),
            upsample2x: cs.up,
            interleave_time: cs.interleave,
            ..Default::default()
        };
        let out_shape = conv3d(&x, &w, Some(&b), &o0).unwrap().shape().to_vec();
        let res = cs
            .residual
            .then(|| host(rnd(out_shape.iter().product(), &mut s, 1.0), &out_shape));
        let o = ConvOpts {
            residual: res.as_ref(),
            clamp: cs.clamp.then_some((-0.7, 0.7)),
            ..o0
        };
        let cpu = conv3d(&x, &w, Some(&b), &o).unwrap();

        let (xg, wg, bg) = (
            x.to_device(dev).unwrap(),
            w.to_device(dev).unwrap(),
            b.to_device(dev).unwrap(),
        );
        let cg = ctx.as_ref().map(|c| c.to_device(dev).unwrap());
        let rg = res.as_ref().map(|r| r.to_device(dev).unwrap());
        let og = ConvOpts {
            ctx: cg.as_ref(),
            residual: rg.as_ref(),
            precision: prec,
            ..o
        };
        let gpu = conv3d(&xg, &wg, Some(&bg), &og).unwrap();
        assert_eq!(gpu.shape(), cpu.shape(), "{}", cs.name);
        let (md, mx) = diff(&gpu.to_vec_f32().unwrap(), &cpu.to_vec_f32().unwrap());
        let rel = md / mx.max(1e-6);
        println!(
            "conv {:?} {}: max abs err {md:.3e}, rel {rel:.3e}",
            prec, cs.name
        );
        worst = worst.max(rel);
    }
    worst
}

#[test]
fn conv_f32_gpu_matches_cpu() {
    let dev = need_gpu!("conv_f32_gpu_matches_cpu");
    let worst = conv_cases_on(&dev, ConvPrecision::F32);
    assert!(worst < 1e-5, "f32 conv: worst relative error {worst}");
}

#[test]
fn conv_bf16_tensor_cores_match_cpu() {
    let dev = need_gpu!("conv_bf16_tensor_cores_match_cpu");
    let worst = conv_cases_on(&dev, ConvPrecision::Bf16);
    // bf16 operands (8 mantissa bits), f32 accumulation over K up to 1080.
    assert!(worst < 2e-2, "bf16 conv: worst relative error {worst}");
}

#[test]
fn conv_helpers_gpu_match_cpu() {
    let dev = need_gpu!("conv_helpers_gpu_match_cpu");
    let mut s = 7;
    let x = host(rnd(2 * 5 * 3 * 4 * 6, &mut s, 1.0), &[2, 5, 3, 4, 6]);
    let xg = x.to_device(&dev).unwrap();
    let up = (
        upsample_nearest2x(&x).unwrap(),
        upsample_nearest2x(&xg).unwrap(),
    );
    assert_eq!(up.0.to_vec_f32().unwrap(), up.1.to_vec_f32().unwrap());
    let x2 = host(rnd(2 * 6 * 3 * 4 * 6, &mut s, 1.0), &[2, 6, 3, 4, 6]);
    let il = (
        interleave_time(&x2).unwrap(),
        interleave_time(&x2.to_device(&dev).unwrap()).unwrap(),
    );
    assert_eq!(il.0.shape(), &[2, 3, 6, 4, 6]);
    assert_eq!(il.0.to_vec_f32().unwrap(), il.1.to_vec_f32().unwrap());
    let ctx = host(rnd(2 * 5 * 2 * 4 * 6, &mut s, 1.0), &[2, 5, 2, 4, 6]);
    let cg = ctx.to_device(&dev).unwrap();
    for t in [1usize, 2, 3] {
        let xt = host(rnd(2 * 5 * t * 24, &mut s, 1.0), &[2, 5, t, 4, 6]);
        let xtg = xt.to_device(&dev).unwrap();
        for with_ctx in [false, true] {
            let a = cache_update(with_ctx.then_some(&ctx), &xt, 2).unwrap();
            let b = cache_update(with_ctx.then_some(&cg), &xtg, 2).unwrap();
            assert_eq!(
                a.to_vec_f32().unwrap(),
                b.to_vec_f32().unwrap(),
                "cache_update t={t} ctx={with_ctx}"
            );
        }
    }
    // ConvOpts::out writes a chunk at a frame offset and leaves the other frames alone.
    let w = host(rnd(3 * 5 * 27, &mut s, 0.3), &[3, 5, 3, 3, 3]);
    let wg = w.to_device(&dev).unwrap();
    let video = Tensor::zeros(&[2, 3, 7, 4, 6], DType::F32, &dev).unwrap();
    conv3d(
        &xg,
        &wg,
        None,
        &ConvOpts {
            ctx: Some(&cg),
            clamp: Some((-1.0, 1.0)),
            out: Some((&video, 2)),
            ..Default::default()
        },
    )
    .unwrap();
    let cpu = conv3d(
        &x,
        &w,
        None,
        &ConvOpts {
            ctx: Some(&ctx),
            clamp: Some((-1.0, 1.0)),
            ..Default::default()
        },
    )
    .unwrap()
    .to_vec_f32()
    .unwrap();
    let v = video.to_vec_f32().unwrap();
    let plane = 24;
    for bc in 0..6 {
        for f in 0..7 {
            let got = &v[(bc * 7 + f) * plane..(bc * 7 + f + 1) * plane];
            if (2..5).contains(&f) {
                let want = &cpu[(bc * 3 + f - 2) * plane..(bc * 3 + f - 1) * plane];
                assert!(diff(got, want).0 < 1e-5);
            } else {
                assert!(got.iter().all(|&x| x == 0.0));
            }
        }
    }
}

fn synthetic_latents(t: usize, h: usize, w: usize, seed: u64) -> Tensor {
    let mut s = seed;
    host(rnd(4 * t * h * w, &mut s, 1.5), &[1, 4, t, h, w])
}

#[test]
fn synthetic_decoder_gpu_matches_cpu() {
    let dev = need_gpu!("synthetic_decoder_gpu_matches_cpu");
    let cfg = tiny_config();
    let w = tiny_weights(&cfg, 3);
    let cpu = VaeDecoder::load(&w, cfg.clone(), VaeOptions::default()).unwrap();
    let w = w.on(&dev);
    let lat = synthetic_latents(3, 6, 5, 4);
    let want = cpu
        .decode(&lat, DecodeOpts::default())
        .unwrap()
        .to_vec_f32()
        .unwrap();
    // The bf16 tensor-core path against the CPU with the same operand rounding.
    let cpu_bf16 = VaeDecoder::load(
        &tiny_weights(&cfg, 3),
        cfg.clone(),
        VaeOptions {
            precision: ConvPrecision::Bf16,
            tiling: None,
        },
    )
    .unwrap();
    let want_bf16 = cpu_bf16
        .decode(&lat, DecodeOpts::default())
        .unwrap()
        .to_vec_f32()
        .unwrap();
    let (bf_vs_f32, _) = diff(&want_bf16, &want);
    println!("synthetic decoder: CPU bf16 operands vs CPU f32: max abs {bf_vs_f32:.3e}");
    for prec in [ConvPrecision::F32, ConvPrecision::Bf16] {
        let g = VaeDecoder::load(
            &w,
            cfg.clone(),
            VaeOptions {
                precision: prec,
                tiling: None,
            },
        )
        .unwrap();
        let got = g
            .decode(&lat.to_device(&dev).unwrap(), DecodeOpts::default())
            .unwrap();
        assert!(got.device().is_cuda());
        let reference = if prec == ConvPrecision::F32 {
            &want
        } else {
            &want_bf16
        };
        let (md, _) = diff(&got.to_vec_f32().unwrap(), reference);
        println!("synthetic decoder {prec:?} GPU vs CPU {prec:?}: max abs err {md:.3e}");
        assert!(
            md < if prec == ConvPrecision::F32 {
                1e-4
            } else {
                // Same operand rounding; only summation order differs, which can flip the
                // bf16 rounding of an intermediate value: far below the bf16-vs-f32 error.
                (bf_vs_f32 * 0.25).max(1e-3)
            },
            "{prec:?}: {md}"
        );
    }
    // Tiled on the GPU equals tiled on the CPU.
    let tc = Some(TileConfig {
        tile: 4,
        overlap: 2,
    });
    let mut c2 =
        VaeDecoder::load(&tiny_weights(&cfg, 3), cfg.clone(), VaeOptions::default()).unwrap();
    c2.set_options(VaeOptions {
        tiling: tc,
        ..Default::default()
    });
    let g2 = VaeDecoder::load(
        &w,
        cfg.clone(),
        VaeOptions {
            tiling: tc,
            ..Default::default()
        },
    )
    .unwrap();
    let (md, _) = diff(
        &g2.decode(&lat, DecodeOpts::default())
            .unwrap()
            .to_vec_f32()
            .unwrap(),
        &c2.decode(&lat, DecodeOpts::default())
            .unwrap()
            .to_vec_f32()
            .unwrap(),
    );
    println!("synthetic tiled decoder GPU vs CPU: max abs err {md:.3e}");
    assert!(md < 1e-4);
    let f = to_uint8_frames(&g2.decode(&lat, DecodeOpts::default()).unwrap(), 0).unwrap();
    assert_eq!((f.frames, f.height, f.width), (9, 48, 40));
}

// ----- diffusers fixtures (tests/fixtures/vae.safetensors, pipeline.safetensors) ----------------

const TINY_VAE: &str = "assets/tiny-model/vae";

/// Tensors of a fixture file as host f32 (u8 as 0..255), or None (with a SKIP line) if absent.
struct Fixture {
    tensors: std::collections::HashMap<String, (Vec<usize>, Vec<f32>)>,
}

impl Fixture {
    fn open(name: &str, test: &str) -> Option<Fixture> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name);
        let Ok(bytes) = std::fs::read(&path) else {
            println!(
                "SKIP {test}: {} is missing (scripts/reference/make_fixtures.py)",
                path.display()
            );
            return None;
        };
        let st = SafeTensorsFile::from_bytes(&path.display().to_string(), bytes)
            .unwrap_or_else(|e| panic!("{e}"));
        let mut tensors = std::collections::HashMap::new();
        for v in st.tensors() {
            let f = st.to_f32(&v.name).unwrap_or_else(|e| panic!("{e}"));
            tensors.insert(v.name.clone(), (v.shape.clone(), f));
        }
        Some(Fixture { tensors })
    }
    fn get(&self, k: &str) -> Tensor {
        let (s, d) = self
            .tensors
            .get(k)
            .unwrap_or_else(|| panic!("fixture tensor {k} missing"));
        host(d.clone(), s)
    }
}

fn tiny_vae(dev: &Device, opts: VaeOptions, test: &str) -> Option<VaeDecoder> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(TINY_VAE);
    if !dir.join("config.json").exists() {
        println!("SKIP {test}: {} is missing", dir.display());
        return None;
    }
    Some(VaeDecoder::from_dir(&dir, dev, opts).unwrap())
}

/// (max abs, mean abs) of a - b.
fn err(a: &Tensor, b: &Tensor) -> (f32, f32) {
    assert_eq!(a.shape(), b.shape());
    let (a, b) = (a.to_vec_f32().unwrap(), b.to_vec_f32().unwrap());
    let md = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    let mean = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs() as f64)
        .sum::<f64>()
        / a.len() as f64;
    (md, mean as f32)
}

/// Decodes the fixture latents t3 (3 latent frames, 6x10) and t4 (4 frames, 4x6) on `dev`;
/// returns the worst (max abs, mean abs) error against the diffusers f32 video.
fn fixture_decode(dev: &Device, opts: VaeOptions, test: &str) -> Option<(f32, f32)> {
    let fx = Fixture::open("vae.safetensors", test)?;
    let vae = tiny_vae(dev, opts, test)?;
    let mut worst = (0.0f32, 0.0f32);
    for t in ["t3", "t4"] {
        let lat = fx.get(&format!("{t}.latent")).to_device(dev).unwrap();
        let want = fx.get(&format!("f32.{t}.video"));
        let tm = std::time::Instant::now();
        let y = vae.decode(&lat, DecodeOpts::denormalized()).unwrap();
        dev.synchronize().unwrap();
        let el = tm.elapsed();
        assert_eq!(y.device(), dev);
        let (md, mean) = err(&y, &want);
        println!(
            "{test}: {t} {:?} on {dev:?}: max abs {md:.3e}, mean abs {mean:.3e}, {el:.2?}",
            y.shape()
        );
        worst = (worst.0.max(md), worst.1.max(mean));
    }
    Some(worst)
}

#[test]
fn vae_fixture_cpu_f32() {
    let Some((md, _)) = fixture_decode(&Device::Cpu, VaeOptions::default(), "vae_fixture_cpu_f32")
    else {
        return;
    };
    assert!(md < 1e-4, "max abs error {md}");
}

/// Intermediates (chunks concatenated in time) against diffusers' hooks.
#[test]
fn vae_fixture_cpu_intermediates() {
    let test = "vae_fixture_cpu_intermediates";
    let Some(fx) = Fixture::open("vae.safetensors", test) else {
        return;
    };
    let Some(vae) = tiny_vae(&Device::Cpu, VaeOptions::default(), test) else {
        return;
    };
    let mut got: std::collections::BTreeMap<String, Vec<Tensor>> = Default::default();
    let mut probe = |name: &str, _chunk: usize, t: &Tensor| {
        got.entry(name.to_string()).or_default().push(t.clone())
    };
    let o = DecodeOpts {
        space: LatentSpace::Denormalized,
        tiling: Tiling::Never,
        probe: Some(&mut probe),
    };
    vae.decode(&fx.get("t3.latent"), o).unwrap();
    for (name, chunks) in &got {
        let key = format!("f32.t3.{name}");
        if !fx.tensors.contains_key(&key) {
            continue;
        }
        let want = fx.get(&key);
        // concatenate chunks in time
        let s = chunks[0].shape().to_vec();
        let plane = s[3] * s[4];
        let tt: usize = chunks.iter().map(|c| c.dim(2)).sum();
        let mut v = Vec::new();
        for bc in 0..s[0] * s[1] {
            for c in chunks {
                let n = c.dim(2);
                v.extend_from_slice(&c.to_vec_f32().unwrap()[bc * n * plane..(bc + 1) * n * plane]);
            }
        }
        let cat = host(v, &[s[0], s[1], tt, s[3], s[4]]);
        let (md, mean) = err(&cat, &want);
        let mx = want
            .to_vec_f32()
            .unwrap()
            .iter()
            .fold(0.0f32, |a, b| a.max(b.abs()));
        println!(
            "{test}: {name} {:?}: max abs {md:.3e} (ref max {mx:.3}), mean abs {mean:.3e}",
            want.shape()
        );
        assert!(md <= 1e-4 * mx.max(1.0), "{name}: max abs {md}");
    }
}

/// Tiled decode vs the untiled reference: close, and no seams.
#[test]
fn vae_fixture_cpu_tiled() {
    let test = "vae_fixture_cpu_tiled";
    let Some(fx) = Fixture::open("vae.safetensors", test) else {
        return;
    };
    let Some(vae) = tiny_vae(
        &Device::Cpu,
        VaeOptions {
            tiling: Some(TileConfig {
                tile: 6,
                overlap: 3,
            }),
            ..Default::default()
        },
        test,
    ) else {
        return;
    };
    // t3 (6x10 latent in the fixture) -> 6x6 tiles overlapping by >= 3 latent pixels (24 px).
    let want = fx.get("f32.t3.video");
    let tiled = vae
        .decode(&fx.get("t3.latent"), DecodeOpts::denormalized())
        .unwrap();
    let (md, mean) = err(&tiled, &want);
    println!("{test}: tiled vs diffusers untiled: max abs {md:.3e}, mean abs {mean:.3e}");
    // Tiles see zero padding at their borders and a tile-local mid-block attention, so they
    // cannot equal the whole-frame decode; the blend keeps the mean error small.
    assert!(mean < 0.08, "tiled: max abs {md}, mean abs {mean}");
    // No seams: the largest step between neighbouring columns is not larger than in the
    // untiled video.
    let (tv, wv) = (tiled.to_vec_f32().unwrap(), want.to_vec_f32().unwrap());
    let (rows, w) = (want.elem_count() / want.dim(4), want.dim(4));
    let col_step = |v: &[f32], x: usize| -> f32 {
        let mut s = 0.0;
        for r in 0..rows {
            s += (v[r * w + x + 1] - v[r * w + x]).abs();
        }
        s / rows as f32
    };
    let worst_t = (0..w - 1).map(|x| col_step(&tv, x)).fold(0.0f32, f32::max);
    let worst_u = (0..w - 1).map(|x| col_step(&wv, x)).fold(0.0f32, f32::max);
    println!("{test}: worst mean column step: tiled {worst_t:.4}, untiled {worst_u:.4}");
    assert!(worst_t < 1.25 * worst_u, "seam: {worst_t} vs {worst_u}");
}

#[test]
fn vae_fixture_gpu_f32() {
    let dev = need_gpu!("vae_fixture_gpu_f32");
    let Some((md, _)) = fixture_decode(&dev, VaeOptions::default(), "vae_fixture_gpu_f32") else {
        return;
    };
    assert!(md < 1e-4, "max abs error {md}");
}

#[test]
fn vae_fixture_gpu_bf16_tensor_cores() {
    let dev = need_gpu!("vae_fixture_gpu_bf16_tensor_cores");
    let opts = VaeOptions {
        precision: ConvPrecision::Bf16,
        ..Default::default()
    };
    let Some((md, mean)) = fixture_decode(&dev, opts, "vae_fixture_gpu_bf16_tensor_cores") else {
        return;
    };
    // diffusers' own bf16 VAE run is off by max 0.027 / mean 0.0037 (manifest vae_stats).
    println!("bf16 tensor-core decode vs f32 reference: max abs {md:.3e}, mean abs {mean:.3e} (diffusers bf16: 2.7e-2 / 3.7e-3)");
    assert!(
        md < 0.08 && mean < 0.01,
        "bf16: max abs {md}, mean abs {mean}"
    );
}

/// PSNR in dB of decoded frames `a` against the reference `b`, both in [-1, 1] (peak-to-peak 2,
/// i.e. the same as on 8-bit frames scaled by 255/2).
fn psnr(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let mse = a
        .iter()
        .zip(b)
        .map(|(x, y)| ((x - y) as f64).powi(2))
        .sum::<f64>()
        / a.len() as f64;
    10.0 * (4.0 / mse.max(1e-30)).log10()
}

/// The frame bound of the bf16 default (docs/perf.md): PSNR of the bf16 decode against the f32
/// decode of the same latents.
const BF16_PSNR_DB: f64 = 40.0;

/// The bf16 tensor-core decode (the GPU default) against the f32 decode on the fixture VAE:
/// within the stated bound on both fixture latents.
#[test]
fn vae_fixture_gpu_bf16_psnr_bound() {
    let test = "vae_fixture_gpu_bf16_psnr_bound";
    let dev = need_gpu!(test);
    let Some(fx) = Fixture::open("vae.safetensors", test) else {
        return;
    };
    let bf16 = VaeOptions {
        precision: ConvPrecision::Bf16,
        ..Default::default()
    };
    let (Some(g), Some(c)) = (
        tiny_vae(&dev, bf16, test),
        tiny_vae(&Device::Cpu, VaeOptions::default(), test),
    ) else {
        return;
    };
    for t in ["t3", "t4"] {
        let lat = fx.get(&format!("{t}.latent"));
        let f32_video = c
            .decode(&lat, DecodeOpts::denormalized())
            .unwrap()
            .to_vec_f32()
            .unwrap();
        let got = g
            .decode(&lat.to_device(&dev).unwrap(), DecodeOpts::denormalized())
            .unwrap()
            .to_vec_f32()
            .unwrap();
        let want = fx.get(&format!("f32.{t}.video")).to_vec_f32().unwrap();
        let (p, pd) = (psnr(&got, &f32_video), psnr(&got, &want));
        println!("{test}: {t}: bf16 GPU decode vs f32 decode: PSNR {p:.2} dB (vs the diffusers f32 video: {pd:.2} dB)");
        assert!(p >= BF16_PSNR_DB, "{t}: PSNR {p:.2} dB < {BF16_PSNR_DB} dB");
    }
}

/// The same bound on a decoder with the real Wan2.1 channel widths (random weights, a small
/// latent so the CPU can run it): the CPU's bf16 twin (operands rounded to bf16 where the GPU
/// kernel rounds them; tests above check the twin against the emulated kernel) against f32.
#[test]
fn synthetic_real_widths_bf16_psnr_bound() {
    let cfg = contentv::model::vae::VaeConfig::wan21();
    let w = tiny_weights(&cfg, 11);
    let mut s = 12u64;
    let lat = host(rnd(16 * 2 * 4 * 6, &mut s, 1.5), &[1, 16, 2, 4, 6]);
    let decode = |precision| {
        let d = VaeDecoder::load(
            &w,
            cfg.clone(),
            VaeOptions {
                precision,
                tiling: None,
            },
        )
        .unwrap();
        d.decode(&lat, DecodeOpts::default())
            .unwrap()
            .to_vec_f32()
            .unwrap()
    };
    let f = decode(ConvPrecision::F32);
    let b = decode(ConvPrecision::Bf16);
    assert_eq!(f.len(), 3 * 5 * 32 * 48);
    // A meaningful comparison: the frames vary and are mostly not clamped at +-1.
    let mean = f.iter().map(|&x| x as f64).sum::<f64>() / f.len() as f64;
    let sd = (f.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / f.len() as f64).sqrt();
    let clamped = f.iter().filter(|x| x.abs() >= 0.999).count() as f64 / f.len() as f64;
    assert!(
        sd > 0.05 && clamped < 0.5,
        "degenerate synthetic frames: sd {sd}, clamped {clamped}"
    );
    let p = psnr(&b, &f);
    println!(
        "synthetic Wan2.1 widths, latent [1, 16, 2, 4, 6]: bf16 vs f32 decode PSNR {p:.2} dB \
         (frames: sd {sd:.3}, {:.1}% clamped)",
        100.0 * clamped
    );
    assert!(p >= BF16_PSNR_DB, "PSNR {p:.2} dB < {BF16_PSNR_DB} dB");
}

#[test]
fn vae_fixture_gpu_tiled() {
    let dev = need_gpu!("vae_fixture_gpu_tiled");
    let opts = VaeOptions {
        tiling: Some(TileConfig {
            tile: 4,
            overlap: 2,
        }),
        ..Default::default()
    };
    let Some(fx) = Fixture::open("vae.safetensors", "vae_fixture_gpu_tiled") else {
        return;
    };
    let (Some(g), Some(c)) = (
        tiny_vae(&dev, opts, "vae_fixture_gpu_tiled"),
        tiny_vae(&Device::Cpu, opts, "vae_fixture_gpu_tiled"),
    ) else {
        return;
    };
    let lat = fx.get("t3.latent");
    let (md, _) = err(
        &g.decode(&lat.to_device(&dev).unwrap(), DecodeOpts::denormalized())
            .unwrap(),
        &c.decode(&lat, DecodeOpts::denormalized()).unwrap(),
    );
    assert!(md < 1e-4, "tiled GPU vs tiled CPU: {md}");
}

/// The pipeline's last latents, de-normalised and decoded, then converted to uint8 frames.
#[test]
fn pipeline_fixture_decode_and_uint8() {
    let test = "pipeline_fixture_decode_and_uint8";
    let Some(fx) = Fixture::open("pipeline.safetensors", test) else {
        return;
    };
    let Some(vae) = tiny_vae(&Device::Cpu, VaeOptions::default(), test) else {
        return;
    };
    // de-normalised input given directly.
    let video = vae
        .decode(&fx.get("f32.vae_input"), DecodeOpts::denormalized())
        .unwrap();
    let (md, _) = err(&video, &fx.get("f32.video"));
    println!("{test}: vae_input -> video max abs {md:.3e}");
    assert!(md < 1e-4);
    // DiT-space latents: the decoder de-normalises (z = x*std + mean).
    let (md, _) = err(
        &vae.decode(&fx.get("f32.step2.latents"), DecodeOpts::default())
            .unwrap(),
        &fx.get("f32.video"),
    );
    println!("{test}: step2.latents -> video max abs {md:.3e}");
    assert!(md < 1e-4);
    // uint8 conversion of the reference video is bit-exact; of ours, within 1 LSB.
    let want = fx.get("f32.frames_u8").to_vec_f32().unwrap();
    let exact = to_uint8_frames(&fx.get("f32.video"), 0).unwrap();
    let fs = fx.tensors["f32.frames_u8"].0.clone();
    assert_eq!(vec![exact.frames, exact.height, exact.width, 3], fs);
    let (nf, hw) = (exact.frames, exact.height * exact.width);
    let vref = fx.get("f32.video").to_vec_f32().unwrap();
    let mut bad = 0;
    for (i, (&a, &b)) in exact.data.iter().zip(&want).enumerate() {
        if a as f32 != b {
            if bad < 5 {
                let (f, p, c) = (i / (hw * 3), (i / 3) % hw, i % 3);
                println!(
                    "{test}: byte {i}: ours {a}, want {b}, video {}",
                    vref[(c * nf + f) * hw + p]
                );
            }
            bad += 1;
        }
    }
    assert_eq!(
        bad, 0,
        "uint8 conversion of the reference video differs in {bad} bytes"
    );
    let ours = to_uint8_frames(&video, 0).unwrap();
    let off = ours
        .data
        .iter()
        .zip(&want)
        .filter(|(&a, &b)| a as f32 != b)
        .count();
    let worst = ours
        .data
        .iter()
        .zip(&want)
        .map(|(&a, &b)| (a as f32 - b).abs())
        .fold(0.0f32, f32::max);
    println!("{test}: {off} of {} bytes differ (max {worst})", want.len());
    assert!(worst <= 1.0);
}
