//! Launcher of the FlashAttention-3-style Hopper kernel `flash_attn_hopper_d64`
//! (kernels/attention_hopper.cu, sm_90a only): bf16, head dim 64, the semantics of the module
//! (segments, causal, bias).
//!
//! Each non-empty segment of q, k and v gets a tensor map (cuTensorMapEncodeTiled): rank 3
//! {H*64 elements, rows, B}, byte strides {row, batch}, box {64, HOPPER_BM, 1}, SWIZZLE_128B,
//! out-of-bounds rows zero-filled. The kernel keeps the segments apart (no concatenated copy);
//! its tiles never straddle two segments. Block size, rows per tile and shared memory come from
//! kernels/tiles.h (`runtime::kernels::tiles`), as the kernel uses them.
use super::operands::{Operands, Seg};
use super::{AttnDims, AttnOpts};
use crate::error::Result;
use crate::runtime::kernels::{
    tiles, FlashAttnHopper, FlashAttnHopperArgs, LaunchCfg, TmaDesc, SEGMENTS,
};
use crate::runtime::Gpu;
use crate::shape_err;

/// kernels/attention_hopper.cu; built for sm_90a only, absent on other GPUs.
pub const HOPPER_MODULE: &str = "attention_hopper";

/// Whether `gpu` runs the Hopper kernel (sm_90 with the sm_90a image built in).
pub fn hopper_available(gpu: &Gpu) -> bool {
    gpu.has_module(HOPPER_MODULE)
}

/// The tensor map of one segment: [B, len, H*64] bf16 at its row and batch strides.
fn seg_map(what: &str, s: &Seg, b: usize, hd: usize) -> Result<TmaDesc> {
    let rs = s.rs as u64 * 2;
    // A batch of one: segments() zeroes its (unused) batch stride; the map wants a real one.
    let bs = if b == 1 {
        (rs * s.len as u64).next_multiple_of(16)
    } else {
        s.bs as u64 * 2
    };
    TmaDesc::tiled_bf16_3d(
        what,
        s.ptr,
        [hd as u64, s.len as u64, b as u64],
        [rs, bs],
        [64, tiles::HOPPER_BM, 1],
    )
}

/// The maps of one side (unused entries repeat the first) and the segment lengths.
fn side(
    what: &str,
    segs: &[Seg],
    b: usize,
    hd: usize,
) -> Result<([TmaDesc; SEGMENTS], [i32; SEGMENTS])> {
    if segs.is_empty() || segs.len() > SEGMENTS {
        return Err(shape_err!(
            "attention (hopper): {what} has {} non-empty segments, 1 to {SEGMENTS} wanted",
            segs.len()
        ));
    }
    let first = seg_map(what, &segs[0], b, hd)?;
    let mut maps = [first; SEGMENTS];
    let mut lens = [0i32; SEGMENTS];
    for (i, s) in segs.iter().enumerate() {
        maps[i] = if i == 0 {
            first
        } else {
            seg_map(what, s, b, hd)?
        };
        lens[i] = s.len as i32;
    }
    Ok((maps, lens))
}

/// Runs the Hopper kernel on operands prepared for the flash kernels (`operands::prepare`
/// with `flash`: non-empty, 16-byte aligned bf16 segments; outputs B x len rows of H*64 bf16
/// at their strides, 4-byte aligned). `o.scale` must be positive and finite (the kernel takes
/// the row max of the unscaled scores).
pub(super) fn launch(gpu: &Gpu, p: &Operands<'_>, d: &AttnDims, o: &AttnOpts) -> Result<()> {
    if !hopper_available(gpu) {
        return Err(shape_err!(
            "attention: the Hopper kernel needs an sm_90 GPU and the sm_90a image of \
             kernels/{HOPPER_MODULE}.cu (not available here)"
        ));
    }
    if d.d != 64 {
        return Err(shape_err!("attention (hopper): head dim {} is not 64", d.d));
    }
    let scale = o.scale;
    if !(scale > 0.0 && scale.is_finite()) {
        return Err(shape_err!(
            "attention (hopper): the scale must be positive and finite, got {scale}"
        ));
    }
    let hd = d.hd();
    let (tq, qn) = side("query", &p.q, d.b, hd)?;
    let (tk, kn) = side("key", &p.k, d.b, hd)?;
    let (tv, vn) = side("value", &p.v, d.b, hd)?;
    if vn != kn {
        return Err(shape_err!(
            "attention (hopper): value segments {vn:?} differ from the key segments {kn:?}"
        ));
    }
    let bm = tiles::HOPPER_BM as usize;
    let tiles_q: usize = p.q.iter().map(|s| s.len.div_ceil(bm)).sum();
    if tiles_q > i32::MAX as usize {
        return Err(shape_err!(
            "attention (hopper): {d:?} is too large for one launch"
        ));
    }
    let grid = (tiles_q as u32, d.heads as u32, d.b as u32);
    let args = FlashAttnHopperArgs {
        tq,
        tk,
        tv,
        qn,
        kn,
        out: p.out,
        bias: p.bias()?,
        h: d.heads as i32,
        sq: d.sq as i32,
        sk: d.sk as i32,
        scale_log2: scale * std::f32::consts::LOG2_E,
        causal: o.causal as i32,
    };
    // SAFETY: the tensor maps describe the segments' tensors (B x len rows of H*64 bf16 at
    // their strides, 16-byte aligned, checked by operands::segments and the encoder), which
    // `p` keeps alive until after the launch (its Seg values hold them); the kernel reads a
    // segment's rows only through its map, whose bounds zero-fill beyond the segment. Output i
    // holds B x qn[i] rows of H*64 bf16 at its strides, 4-byte aligned (every query tile writes
    // only its valid rows, to its own segment's output); bias is contiguous f32 [H, Sq, Sk] or
    // null; the grid covers every query tile x H x B.
    unsafe {
        FlashAttnHopper::KERNEL.launch(
            gpu,
            LaunchCfg::new(
                grid,
                (tiles::HOPPER_THREADS, 1, 1),
                tiles::HOPPER_SMEM_BYTES,
            ),
            args,
        )
    }
}
