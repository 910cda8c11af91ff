//! Wan2.1 VAE decode at the product's default size on the GPU, random weights of the real shapes
//! (base_dim 96, dim_mult [1,2,4,4], 2 res blocks, temporal upsampling [T,T,F]):
//! latents [1, 16, 32, 54, 96] -> video [1, 3, 125, 432, 768].
//!
//! Prints, per conv precision (f32 CUDA cores, bf16 tensor cores) and per mode (untiled, tiled
//! 32/8 latent px): wall time of the whole decode (host de-normalisation and tile blending
//! included, as `contentv generate` runs it), the pool's peak bytes in use and reserved, and
//! the max abs difference and PSNR of the bf16 and tiled outputs against the f32 untiled output.
//!
//! `CONTENTV_BENCH_VAE_FRAMES` sets the latent frames (default 32); `CONTENTV_BENCH_QUICK` runs
//! 4 latent frames. Prints SKIP without a GPU.
#[path = "util/mod.rs"]
mod util;
use std::time::Instant;

#[path = "../tests/support/vae_synthetic.rs"]
mod vae_synthetic;
use contentv::model::vae::{DecodeOpts, TileConfig, VaeConfig, VaeDecoder, VaeOptions};
use contentv::ops::conv::ConvPrecision;
use contentv::runtime::{Device, Tensor};
use vae_synthetic::{rnd, tiny_weights};

fn gib(b: usize) -> f64 {
    b as f64 / (1u64 << 30) as f64
}

fn main() {
    let Some(dev) = util::cuda_or_skip() else {
        return;
    };
    let g = dev.gpu().unwrap().clone();
    let t_lat: usize = std::env::var("CONTENTV_BENCH_VAE_FRAMES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if util::rehearsal() {
            1
        } else if std::env::var("CONTENTV_BENCH_QUICK").is_ok() {
            4
        } else {
            32
        });
    // A rehearsal decodes 2 latent frames of 4x4 with the tiny test VAE (same code paths).
    let (h, w) = (util::scaled(54, 4), util::scaled(96, 4));
    let cfg = if util::rehearsal() {
        vae_synthetic::tiny_config()
    } else {
        VaeConfig::wan21()
    };
    let t = Instant::now();
    let zc = cfg.z_dim;
    let weights = tiny_weights(&cfg, 7).on(&dev);
    let n_params = weights.elem_count();
    let mut seed = 11u64;
    let lat = Tensor::from_f32(
        rnd(zc * t_lat * h * w, &mut seed, 1.5),
        &[1, zc, t_lat, h, w],
        &Device::Cpu,
    )
    .unwrap();
    println!(
        "{} VAE decoder, random weights ({:.1} M params, made in {:.1} s); latents [1, {zc}, {t_lat}, {h}, {w}] -> {} frames of {}x{}",
        if util::rehearsal() { "tiny test" } else { "Wan2.1" },
        n_params as f64 / 1e6,
        t.elapsed().as_secs_f64(),
        cfg.frames_for(t_lat),
        h * 8,
        w * 8
    );
    let mut reference: Option<Vec<f32>> = None;
    let tl = if util::rehearsal() {
        TileConfig {
            tile: 2,
            overlap: 1,
        }
    } else {
        TileConfig::default()
    };
    let tiled = Some(tl);
    let tiled_name = |p: &str| format!("{p} tiled {}/{}", tl.tile, tl.overlap);
    for (prec, tiling, name) in [
        (ConvPrecision::F32, None, "f32 untiled".to_string()),
        (ConvPrecision::Bf16, None, "bf16 untiled".to_string()),
        (ConvPrecision::F32, tiled, tiled_name("f32")),
        (ConvPrecision::Bf16, tiled, tiled_name("bf16")),
    ] {
        g.pool.empty_cache().unwrap();
        g.pool.reset_peak();
        let vae = VaeDecoder::load(
            &weights,
            cfg.clone(),
            VaeOptions {
                precision: prec,
                tiling,
            },
        )
        .unwrap();
        let weights_bytes = g.pool.stats().in_use;
        // Warm-up on one latent frame (module load, pool), outside the timing.
        let warm = Tensor::from_f32(
            rnd(zc * h * w, &mut seed, 1.5),
            &[1, zc, 1, h, w],
            &Device::Cpu,
        )
        .unwrap();
        drop(vae.decode(&warm, DecodeOpts::default()).unwrap());
        dev.synchronize().unwrap();
        g.pool.reset_peak();
        util::l2_exceeded(
            "the VAE decode (one chunk's full-resolution activation [96, 4, 8h, 8w] f32 alone)",
            96 * 4 * (8 * h) * (8 * w) * 4,
        );
        let t = Instant::now();
        let video = vae.decode(&lat, DecodeOpts::default()).unwrap();
        dev.synchronize().unwrap();
        let s = t.elapsed().as_secs_f64();
        let st = g.pool.stats();
        let v = video.to_vec_f32().unwrap();
        drop(video);
        let err = match &reference {
            None => {
                reference = Some(v);
                "reference".to_string()
            }
            Some(r) => {
                let md = r
                    .iter()
                    .zip(&v)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max);
                let mse = r
                    .iter()
                    .zip(&v)
                    .map(|(a, b)| ((a - b) as f64).powi(2))
                    .sum::<f64>()
                    / v.len().max(1) as f64;
                let psnr = 10.0 * (4.0 / mse.max(1e-30)).log10();
                // The 40 dB bound is bf16 vs f32 untiled; tiling blends overlaps and differs
                // from an untiled decode by design.
                let note = if tiling.is_none() {
                    "; the bf16 bound is 40 dB"
                } else {
                    ""
                };
                format!(
                    "vs f32 untiled: max abs diff {md:.3e}, PSNR {psnr:.1} dB (video in [-1, 1]{note})"
                )
            }
        };
        println!(
            "vae decode {name}: {s:.2} s ({:.1} ms/latent frame); pool after load {:.2} GiB; peak in use {:.2} GiB, reserved {:.2} GiB; {err}",
            s * 1e3 / t_lat as f64,
            gib(weights_bytes),
            gib(st.peak_in_use),
            gib(st.peak_reserved),
        );
        drop(vae);
    }
}
