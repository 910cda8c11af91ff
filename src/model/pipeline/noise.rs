//! The initial noise: the documented counter-based generator ([`initial_noise`]) or a file
//! given with `--init-noise` ([`load_init_noise`]).
use std::path::Path;

use half::bf16;

use crate::error::{Error, Result};
use crate::model::pipeline::latents::read_st_tensor;

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// The `k`-th output (0-based) of splitmix64 started at state `seed` (Steele, Lea & Flood 2014):
/// `z = seed + (k+1) * 0x9E3779B97F4A7C15`, then the mix
/// `z = (z ^ z>>30) * 0xBF58476D1CE4E5B9; z = (z ^ z>>27) * 0x94D049BB133111EB; z ^ z>>31`.
/// Counter-based: any element can be computed independently.
pub fn splitmix64(seed: u64, k: u64) -> u64 {
    let mut z = seed.wrapping_add(k.wrapping_add(1).wrapping_mul(GOLDEN));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Deterministic standard-normal noise, `n` values, for `seed`. Documented in docs/pipeline.md:
///
/// for each pair p = 0, 1, ...: `a = splitmix64(seed, 2p)`, `b = splitmix64(seed, 2p+1)`,
/// `u1 = ((a >> 11) + 1) / 2^53` in (0, 1], `u2 = (b >> 11) / 2^53` in [0, 1),
/// `r = sqrt(-2 ln u1)`; element 2p = `r cos(2 pi u2)`, element 2p+1 = `r sin(2 pi u2)` (f64),
/// each rounded to bf16 (the reference draws its noise in bf16) and returned as f32.
/// Elements are in row-major order of the latent shape [1, C, T, h, w].
pub fn initial_noise(seed: u64, n: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(n + 1);
    let scale = 1.0 / (1u64 << 53) as f64;
    for p in 0..n.div_ceil(2) as u64 {
        let a = splitmix64(seed, 2 * p);
        let b = splitmix64(seed, 2 * p + 1);
        let u1 = ((a >> 11) + 1) as f64 * scale;
        let u2 = (b >> 11) as f64 * scale;
        let r = (-2.0 * u1.ln()).sqrt();
        let th = 2.0 * std::f64::consts::PI * u2;
        out.push(bf16::from_f64(r * th.cos()).to_f32());
        out.push(bf16::from_f64(r * th.sin()).to_f32());
    }
    out.truncate(n);
    out
}

/// Reads `--init-noise FILE`: a safetensors file with a tensor "noise" (or only one tensor, of
/// any name) of shape `expected`.
pub fn load_init_noise(path: &Path, expected: &[usize]) -> Result<Vec<f32>> {
    let (shape, data, _) = read_st_tensor(path, "noise")?;
    if shape != expected {
        return Err(Error::Input(format!(
            "{}: tensor \"noise\" has shape {shape:?}, but this video size and model need {expected:?} ([1, C, (frames-1)/time_factor+1, height/spatial_factor, width/spatial_factor])",
            path.display()
        )));
    }
    Ok(data)
}
