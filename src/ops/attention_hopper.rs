//! Launcher of the FlashAttention-3-style Hopper kernel `flash_attn_hopper_d64`
//! (kernels/attention_hopper.cu, sm_90a only): bf16, head dim 64, the semantics of
//! [`crate::ops::attention::attention`] (segments, causal, bias).
//!
//! Each non-empty segment of q, k and v gets a tensor map (cuTensorMapEncodeTiled): rank 3
//! {H*64 elements, rows, B}, byte strides {row, batch}, box {64, 128, 1}, SWIZZLE_128B,
//! out-of-bounds rows zero-filled. The kernel keeps the segments apart (no concatenated copy);
//! its tiles never straddle two segments. Called through
//! [`crate::ops::attention_cuda::AttnKernel::Hopper`] with the validated segments.
use crate::error::Result;
use crate::ops::attention::AttnDims;
use crate::ops::attention_cuda::Seg;
use crate::runtime::kernels::{
    DevPtr, FlashAttnHopper, FlashAttnHopperArgs, LaunchCfg, OutSegArgs, TmaDesc, SEGMENTS,
};
use crate::runtime::Gpu;
use crate::shape_err;

/// kernels/attention_hopper.cu; built for sm_90a only, absent on other GPUs.
pub const HOPPER_MODULE: &str = "attention_hopper";
/// Query rows per CTA (two consumer warpgroups of 64) and rows per TMA box (q, k and v).
pub const HOPPER_BM: usize = 128;
/// 3 warpgroups: a producer and two consumers.
pub const HOPPER_THREADS: u32 = 384;
/// K/V ring depth of the kernel (`fa3::STAGES`).
pub const HOPPER_STAGES: u32 = 3;
/// Dynamic shared memory (`fa3::SMEM_BYTES`): Q + STAGES x (K + V) tiles of 16 KiB, the
/// mbarriers, 1 KiB of slack to align the base to 1024 bytes.
pub const HOPPER_SMEM: u32 = 16384 * (1 + 2 * HOPPER_STAGES) + (1 + 4 * HOPPER_STAGES) * 8 + 1024;

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
        [64, HOPPER_BM as u32, 1],
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

/// Runs the Hopper kernel into `out` (one output per non-empty query segment, B x len rows of
/// H*64 bf16 at its strides, `attention_cuda::out_args`). `qs`, `ks`, `vs`: the non-empty,
/// 16-byte aligned bf16 segments (`attention_cuda::segments` with `aligned`), `bias`:
/// contiguous f32 [H, Sq, Sk] or `None`. `scale` must be positive and finite (the kernel
/// takes the row max of the unscaled scores).
#[allow(clippy::too_many_arguments)]
pub(crate) fn attention_hopper(
    gpu: &Gpu,
    qs: &[Seg],
    ks: &[Seg],
    vs: &[Seg],
    out: OutSegArgs<'_>,
    bias: DevPtr<'_>,
    d: &AttnDims,
    scale: f32,
    causal: bool,
) -> Result<()> {
    if !hopper_available(gpu) {
        return Err(shape_err!(
            "attention: the Hopper kernel needs an sm_90 GPU and the sm_90a image of \
             kernels/{HOPPER_MODULE}.cu (not available here)"
        ));
    }
    if d.d != 64 {
        return Err(shape_err!("attention (hopper): head dim {} is not 64", d.d));
    }
    if !(scale > 0.0 && scale.is_finite()) {
        return Err(shape_err!(
            "attention (hopper): the scale must be positive and finite, got {scale}"
        ));
    }
    let hd = d.heads * 64;
    let (tq, qn) = side("query", qs, d.b, hd)?;
    let (tk, kn) = side("key", ks, d.b, hd)?;
    let (tv, vn) = side("value", vs, d.b, hd)?;
    if vn != kn {
        return Err(shape_err!(
            "attention (hopper): value segments {vn:?} differ from the key segments {kn:?}"
        ));
    }
    let tiles: usize = qs.iter().map(|s| s.len.div_ceil(HOPPER_BM)).sum();
    if tiles > i32::MAX as usize {
        return Err(shape_err!(
            "attention (hopper): {d:?} is too large for one launch"
        ));
    }
    let grid = (tiles as u32, d.heads as u32, d.b as u32);
    let args = FlashAttnHopperArgs {
        tq,
        tk,
        tv,
        qn,
        kn,
        out,
        bias,
        h: d.heads as i32,
        sq: d.sq as i32,
        sk: d.sk as i32,
        scale_log2: scale * std::f32::consts::LOG2_E,
        causal: causal as i32,
    };
    // SAFETY: the tensor maps describe the segments' tensors (B x len rows of H*64 bf16 at
    // their strides, 16-byte aligned, checked by segments() and the encoder), which the caller
    // keeps alive until after the launch (their Seg values hold them); the kernel reads a
    // segment's rows only through its map, whose bounds zero-fill beyond the segment. Output i
    // holds B x qn[i] rows of H*64 bf16 at its strides, 4-byte aligned (every query tile writes
    // only its valid rows, to its own segment's output); bias is
    // contiguous f32 [H, Sq, Sk] or null; the grid covers every query tile x H x B.
    unsafe {
        FlashAttnHopper::KERNEL.launch(
            gpu,
            LaunchCfg::new(grid, (HOPPER_THREADS, 1, 1), HOPPER_SMEM),
            args,
        )
    }
}
