//! Which flash-attention kernel a GPU runs, decided once per GPU and process.
//!
//! * A GPU with an image of kernels/attention_hopper.cu (sm_90: the build holds it for sm_90a
//!   only) runs the Hopper kernel (TMA, mbarriers, wgmma: the FlashAttention-3 design);
//! * every other GPU runs the mma.sync kernel of kernels/attention.cu (the FlashAttention-2
//!   design; sm_80, sm_86, sm_89, sm_100, sm_120 and PTX for newer ones);
//! * `CONTENTV_ATTENTION=hopper|mma|naive` forces one. Forcing `hopper` on a GPU without its
//!   image is an error that names the variable.
//!
//! On first use a self-check runs the chosen kernel and a second opinion (the mma kernel for
//! the Hopper kernel, the generic kernel for the mma kernel) on a small random joint-attention
//! case (two key segments, odd lengths, 2 heads, batch 2). If they disagree beyond the bf16
//! tolerance, a warning says so on stderr and the second opinion is used for the rest of the
//! process: a wrong kernel on a GPU we could not test on costs speed, not a wrong video.
//!
//! The choice applies to calls that qualify for a flash kernel (bf16, head dim 64); the others
//! run the generic kernel whatever is chosen.
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use super::hopper::hopper_available;
use super::AttnKernel;
use crate::error::{Error, Result};
use crate::runtime::{DType, Device, Gpu, Tensor};

/// The environment variable that forces a kernel.
pub const ENV: &str = "CONTENTV_ATTENTION";

/// The kernel whose agreement the self-check requires, if any.
fn second_opinion(k: AttnKernel) -> Option<AttnKernel> {
    match k {
        AttnKernel::Hopper => Some(AttnKernel::Mma),
        AttnKernel::Mma => Some(AttnKernel::Naive),
        AttnKernel::Naive | AttnKernel::Auto => None,
    }
}

/// `CONTENTV_ATTENTION` parsed: `None` when unset or empty.
pub fn forced() -> Result<Option<AttnKernel>> {
    parse(std::env::var(ENV).ok().as_deref())
}

fn parse(v: Option<&str>) -> Result<Option<AttnKernel>> {
    match v.map(str::trim) {
        None | Some("") | Some("auto") => Ok(None),
        Some("hopper") => Ok(Some(AttnKernel::Hopper)),
        Some("mma") => Ok(Some(AttnKernel::Mma)),
        Some("naive") => Ok(Some(AttnKernel::Naive)),
        Some(other) => Err(Error::Other(format!(
            "{ENV}={other:?} is not a kernel: use hopper, mma, naive or auto (or unset it)"
        ))),
    }
}

/// The kernel this GPU runs by default (before the self-check).
pub fn default_for(gpu: &Gpu) -> AttnKernel {
    if hopper_available(gpu) {
        AttnKernel::Hopper
    } else {
        AttnKernel::Mma
    }
}

/// The kernel wanted on `gpu`: forced by [`ENV`] or the default; an error when the forced
/// kernel has no image for this GPU.
pub fn wanted(gpu: &Gpu) -> Result<AttnKernel> {
    match forced()? {
        Some(AttnKernel::Hopper) if !hopper_available(gpu) => Err(Error::Other(format!(
            "{ENV}=hopper: the Hopper attention kernel is built for sm_90a only and this GPU ({}) is \
             sm_{}{}; use {ENV}=mma or unset it",
            gpu.name, gpu.compute_capability.0, gpu.compute_capability.1
        ))),
        Some(c) => Ok(c),
        None => Ok(default_for(gpu)),
    }
}

/// The decision per GPU ordinal: the kernel in use, and the warning of a failed self-check.
fn decided() -> &'static Mutex<HashMap<usize, AttnKernel>> {
    static D: OnceLock<Mutex<HashMap<usize, AttnKernel>>> = OnceLock::new();
    D.get_or_init(|| Mutex::new(HashMap::new()))
}

/// The kernel in use on `gpu`: [`wanted`], confirmed by the self-check on first use.
/// `run(choice, q, k, v)` runs one kernel on the check's inputs.
pub fn selected(
    gpu: &std::sync::Arc<Gpu>,
    run: impl Fn(AttnKernel, &[&Tensor], &[&Tensor], &[&Tensor]) -> Result<Tensor>,
) -> Result<AttnKernel> {
    if let Some(c) = decided().lock().unwrap().get(&gpu.ordinal) {
        return Ok(*c);
    }
    let want = wanted(gpu)?;
    let choice = match second_opinion(want) {
        None => want,
        Some(other) => match self_check(gpu, want, other, &run) {
            Ok(()) => want,
            Err(why) => {
                eprintln!(
                    "warning: the {} attention kernel failed its self-check on {} ({why}); using the {} \
                     kernel instead (slower). Please report this with the output of `contentv info`.",
                    want.name(),
                    gpu.name,
                    other.name()
                );
                other
            }
        },
    };
    decided().lock().unwrap().insert(gpu.ordinal, choice);
    Ok(choice)
}

/// Inputs of the self-check: batch 2, 2 heads of 64, queries [77; 13], keys and values
/// [150; 29] (odd lengths, a partial tile in each segment), bf16 values from a fixed
/// xorshift sequence, queries scaled so that the softmax is neither flat nor one-hot.
fn check_inputs(dev: &Device) -> Result<[Vec<Tensor>; 3]> {
    const B: usize = 2;
    const HD: usize = 2 * 64;
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    };
    let mut side = |lens: &[usize], amp: f32| -> Result<Vec<Tensor>> {
        lens.iter()
            .map(|&n| {
                let data: Vec<half::bf16> = (0..B * n * HD)
                    .map(|_| half::bf16::from_f32(next() * amp))
                    .collect();
                Tensor::from_bf16(data, &[B, n, HD], dev)
            })
            .collect()
    };
    Ok([
        side(&[77, 13], 3.0)?,
        side(&[150, 29], 1.0)?,
        side(&[150, 29], 1.0)?,
    ])
}

/// Runs `a` and `b` on the check's inputs; Err(the largest difference) when they disagree.
fn self_check(
    gpu: &std::sync::Arc<Gpu>,
    a: AttnKernel,
    b: AttnKernel,
    run: &impl Fn(AttnKernel, &[&Tensor], &[&Tensor], &[&Tensor]) -> Result<Tensor>,
) -> std::result::Result<(), String> {
    let dev = Device::Cuda(gpu.clone());
    let [q, k, v] = check_inputs(&dev).map_err(|e| format!("preparing the check: {e}"))?;
    fn refs(t: &[Tensor]) -> Vec<&Tensor> {
        t.iter().collect()
    }
    let (q, k, v) = (refs(&q), refs(&k), refs(&v));
    let out = |c: AttnKernel| -> std::result::Result<Vec<f32>, String> {
        run(c, &q, &k, &v)
            .and_then(|t| t.to_vec_f32())
            .map_err(|e| format!("the {} kernel failed: {e}", c.name()))
    };
    let (x, y) = (out(a)?, out(b)?);
    let (atol, rtol) = crate::ops::tolerance::for_dtype(DType::BF16, 179);
    if x.len() != y.len() {
        return Err(format!("{} outputs against {}", x.len(), y.len()));
    }
    // The element furthest beyond its bound; NaN on either side is beyond every bound.
    let mut worst: Option<(usize, f32)> = None;
    for (i, (p, r)) in x.iter().zip(&y).enumerate() {
        let d = (p - r).abs();
        let within = d <= atol + rtol * r.abs(); // false for NaN
        if !within && worst.is_none_or(|(_, w)| d.is_nan() || d > w) {
            worst = Some((i, d));
        }
    }
    if let Some((i, d)) = worst {
        return Err(format!(
            "output {i} differs from the {} kernel's by {d} (allowed {atol} + {rtol} x |value|)",
            b.name()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_variable() {
        assert_eq!(parse(None).unwrap(), None);
        assert_eq!(parse(Some("")).unwrap(), None);
        assert_eq!(parse(Some("auto")).unwrap(), None);
        assert_eq!(parse(Some("hopper")).unwrap(), Some(AttnKernel::Hopper));
        assert_eq!(parse(Some(" mma ")).unwrap(), Some(AttnKernel::Mma));
        assert_eq!(parse(Some("naive")).unwrap(), Some(AttnKernel::Naive));
        let e = parse(Some("fa3")).unwrap_err().to_string();
        assert!(
            e.contains(ENV) && e.contains("fa3") && e.contains("hopper"),
            "{e}"
        );
    }

    #[test]
    fn second_opinions() {
        assert_eq!(second_opinion(AttnKernel::Hopper), Some(AttnKernel::Mma));
        assert_eq!(second_opinion(AttnKernel::Mma), Some(AttnKernel::Naive));
        assert_eq!(second_opinion(AttnKernel::Naive), None);
    }
}
