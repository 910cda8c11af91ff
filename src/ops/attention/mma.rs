//! Launcher of `flash_attn_fwd_d64` (kernels/attention.cu): bf16, head dim 64, mma.sync
//! m16n8k16 with 32 query rows per warp (the FlashAttention-2 design), every arch from sm_80.
//! Grid (ceil(Sq / FLASH_BM), H, B), `FLASH_THREADS` threads, `FLASH_SMEM_BYTES` of dynamic
//! shared memory: all three from kernels/tiles.h (`runtime::kernels::tiles`), as the kernel
//! uses them.
use super::operands::{seg_args, Operands};
use super::{AttnDims, AttnOpts};
use crate::error::Result;
use crate::runtime::kernels::{tiles, FlashAttnD64, FlashAttnD64Args, LaunchCfg};
use crate::runtime::Gpu;

/// Runs the kernel on operands prepared for the flash kernels (16-byte aligned segments,
/// 4-byte aligned outputs with even strides: `operands` with `flash`).
pub(super) fn launch(gpu: &Gpu, p: &Operands<'_>, d: &AttnDims, o: &AttnOpts) -> Result<()> {
    let grid = (
        d.sq.div_ceil(tiles::FLASH_BM as usize) as u32,
        d.heads as u32,
        d.b as u32,
    );
    let args = FlashAttnD64Args {
        q: seg_args(&p.q)?,
        k: seg_args(&p.k)?,
        v: seg_args(&p.v)?,
        out: p.out,
        bias: p.bias()?,
        h: d.heads as i32,
        sq: d.sq as i32,
        sk: d.sk as i32,
        scale_log2: o.scale * std::f32::consts::LOG2_E,
        causal: o.causal as i32,
    };
    // SAFETY: every segment holds B x len rows of H*64 bf16 elements at the strides given,
    // 16-byte aligned (operands::segments checked it) and non-empty; output i holds the B x
    // len_i rows of H*64 bf16 of query segment i at its strides, 4-byte aligned (out_args);
    // bias (contiguous f32) is the [H, Sq, Sk] of AttnOpts::dims or null; the grid covers Sq
    // (FLASH_BM rows per block) x H x B, all bounded above (launch::run).
    unsafe {
        FlashAttnD64::KERNEL.launch(
            gpu,
            LaunchCfg::new(grid, (tiles::FLASH_THREADS, 1, 1), tiles::FLASH_SMEM_BYTES),
            args,
        )
    }
}
