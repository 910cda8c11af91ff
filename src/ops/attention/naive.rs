//! Launcher of `attn_naive_{f32,bf16,f16}` (kernels/attention.cu): any head dim <= 256
//! (`NAIVE_DMAX`), one warp per query row (`NAIVE_WARPS` rows a block, kernels/tiles.h), f32
//! math, any alignment. Every case the flash kernels do not take, and their second opinion.
use super::operands::{seg_args, Operands};
use super::{AttnDims, AttnOpts};
use crate::error::Result;
use crate::runtime::kernels::{tiles, AttnNaive, AttnNaiveArgs, LaunchCfg};
use crate::runtime::{DType, Gpu};

/// Runs the kernel for dtype `dt` (inputs and outputs); `d.d <= NAIVE_DMAX` (launch::run
/// checks it).
pub(super) fn launch(
    gpu: &Gpu,
    p: &Operands<'_>,
    d: &AttnDims,
    o: &AttnOpts,
    dt: DType,
) -> Result<()> {
    let k = AttnNaive::for_dtype("attention", dt)?;
    let rows = tiles::NAIVE_WARPS as usize;
    let grid = (d.sq.div_ceil(rows) as u32, d.heads as u32, d.b as u32);
    let args = AttnNaiveArgs {
        q: seg_args(&p.q)?,
        k: seg_args(&p.k)?,
        v: seg_args(&p.v)?,
        out: p.out,
        bias: p.bias()?,
        h: d.heads as i32,
        d: d.d as i32,
        sq: d.sq as i32,
        sk: d.sk as i32,
        scale: o.scale,
        causal: o.causal as i32,
    };
    // SAFETY: every segment holds B x len rows of H*d elements of dtype dt at the strides
    // given (operands::segments), output i the B x len_i rows of query segment i
    // (out_args); bias (contiguous f32) is the [H, Sq, Sk] of AttnOpts::dims or null; head
    // dim d <= NAIVE_DMAX (launch::run); the grid covers Sq (NAIVE_WARPS rows per block) x
    // H x B, all bounded above (launch::run).
    unsafe {
        k.launch(
            gpu,
            LaunchCfg::new(grid, (tiles::NAIVE_WARPS * 32, 1, 1), 0),
            args,
        )
    }
}
