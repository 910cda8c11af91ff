//! The GPU path of an attention call (the dims already checked, `super::AttnOpts::dims`):
//! which kernel [`AttnKernel::Auto`] stands for, the dtype and size limits of the kernels, the
//! operands as they take them (`operands`), and the launch of one kernel family (`mma`,
//! `naive`, `hopper`).
use std::sync::Arc;

use super::operands::{check_out_count, prepare};
use super::{hopper, mma, naive, select, AttnDims, AttnKernel, AttnOpts, NAIVE_MAX_D};
use crate::error::Result;
use crate::runtime::{DType, Gpu, Tensor};
use crate::shape_err;

/// Runs `o.kernel` (resolved) into `out` (one per query segment, on `gpu`); `d` are the dims
/// of `q`, `k`, `v` under `o`.
pub(super) fn run(
    gpu: &Arc<Gpu>,
    q: &[&Tensor],
    k: &[&Tensor],
    v: &[&Tensor],
    out: &[&Tensor],
    o: &AttnOpts,
    d: &AttnDims,
) -> Result<()> {
    let dt = q[0].dtype();
    if !matches!(dt, DType::F32 | DType::BF16 | DType::F16) {
        return Err(shape_err!(
            "attention: dtype {} is not supported on the GPU (f32, bf16, f16)",
            dt.name()
        ));
    }
    let flash_ok = dt == DType::BF16 && d.d == 64;
    let kernel = match o.kernel {
        AttnKernel::Auto if flash_ok => auto_flash(gpu)?,
        AttnKernel::Auto => AttnKernel::Naive,
        k => k,
    };
    let flash = match kernel {
        AttnKernel::Auto => unreachable!("resolved above"),
        AttnKernel::Mma | AttnKernel::Hopper if flash_ok => true,
        AttnKernel::Mma | AttnKernel::Hopper => {
            return Err(shape_err!(
                "attention: the flash kernel needs bf16 and head dim 64, got {} and d = {}",
                dt.name(),
                d.d
            ));
        }
        AttnKernel::Naive => false,
    };
    if !flash && d.d > NAIVE_MAX_D {
        return Err(shape_err!(
            "attention: head dim {} is larger than the generic CUDA kernel's {NAIVE_MAX_D}",
            d.d
        ));
    }
    if d.b == 0 || d.sq == 0 || d.heads == 0 || d.d == 0 {
        // Nothing to write, but the outputs must still fit the queries.
        return check_out_count(q, out);
    }
    if d.sk == 0 {
        return Err(shape_err!("attention: {} queries but no keys", d.sq));
    }
    if d.sq > i32::MAX as usize || d.sk > i32::MAX as usize || d.heads > 65535 || d.b > 65535 {
        return Err(shape_err!("attention: {d:?} is too large for one launch"));
    }
    let p = prepare([q, k, v], out, o, d, dt, flash)?;
    match kernel {
        AttnKernel::Hopper => hopper::launch(gpu, &p, d, o)?,
        AttnKernel::Mma => mma::launch(gpu, &p, d, o)?,
        _ => naive::launch(gpu, &p, d, o, dt)?,
    }
    // The segments' tensors (copies included) may go now: pool memory is stream-ordered.
    drop(p);
    Ok(())
}

/// The flash kernel chosen for this GPU (`select`: the arch's default or CONTENTV_ATTENTION,
/// confirmed by a self-check on first use).
fn auto_flash(gpu: &Arc<Gpu>) -> Result<AttnKernel> {
    select::selected(gpu, |kernel, q, k, v| {
        // The check's own call: bf16, 2 heads of 64 (scale 1/8), not recorded by ops::trace.
        let o = AttnOpts {
            kernel,
            ..AttnOpts::new(2, 64)
        };
        let d = o.dims(q, k, v)?;
        super::joint_gpu(gpu, q, k, v, &o, &d)
    })
}
