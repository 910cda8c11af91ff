//! CUDA launchers of the attention kernels (kernels/attention.cu); semantics in
//! [`crate::ops::attention`].
//!
//! * `flash_attn_fwd_d64`: bf16, head dim 64, FlashAttention-2 forward on tensor cores (online
//!   softmax, S x S never stored). Needs 16-byte aligned rows (base pointer, row and batch
//!   strides multiples of 8 elements); other segments are made contiguous first.
//! * `attn_naive_{f32,bf16,f16}`: any head dim <= 256, one warp per query row, f32 math. Used
//!   for every other case and as a second opinion ([`AttnKernel::Naive`]).
//!
//! Each side (q, k, v) may have up to 4 non-empty segments [B, S_i, H*d] (rows may be strided,
//! last dim dense); they are concatenated along the sequence inside the kernels.
use crate::error::{Error, Result};
use crate::ops::attention::{attn_dims, AttnDims, AttnOpts};
use crate::runtime::{DType, KernelArgs, Tensor};
use crate::shape_err;

/// Which kernel [`attention_cuda_with`] runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum AttnKernel {
    /// Flash for bf16 with head dim 64, naive otherwise.
    #[default]
    Auto,
    /// The flash kernel (an error if the inputs do not qualify).
    Flash,
    /// The generic kernel.
    Naive,
}

/// Segments per side the kernels take.
pub const MAX_SEGMENTS: usize = 4;
/// Largest head dim of the generic kernel.
pub const NAIVE_MAX_D: usize = 256;

const FLASH_BM: usize = 128;
pub const FLASH_THREADS: u32 = 256;
pub const FLASH_SMEM: u32 = 48 * 1024;
pub const NAIVE_ROWS: usize = 4;

/// Attention on the GPU: `softmax(scale * Q K^T + bias) V` over segment lists; see
/// [`crate::ops::attention::attention`]. Output [B, ΣSq, H*d] in the inputs' dtype.
pub fn attention_cuda(
    q: &[&Tensor],
    k: &[&Tensor],
    v: &[&Tensor],
    heads: usize,
    scale: f32,
    causal: bool,
    bias: Option<&Tensor>,
) -> Result<Tensor> {
    attention_cuda_with(q, k, v, heads, scale, causal, bias, AttnKernel::Auto)
}

/// One segment as the kernels see it.
#[derive(Clone, Copy, Default)]
struct Seg {
    ptr: u64,
    len: usize,
    /// Elements between rows.
    rs: usize,
    /// Elements between batches.
    bs: usize,
}

/// The non-empty segments of one side, with strides; made contiguous where `aligned` is asked
/// and the view is not 16-byte aligned. `keep` holds the copies alive until the launch.
fn segments(
    what: &str,
    segs: &[&Tensor],
    dt: DType,
    aligned: bool,
    keep: &mut Vec<Tensor>,
) -> Result<Vec<Seg>> {
    let mut out = Vec::new();
    for t in segs {
        if t.dtype() != dt {
            return Err(shape_err!(
                "attention: {what} segment {:?} is {}, expected {} like the queries",
                t.shape(),
                t.dtype().name(),
                dt.name()
            ));
        }
        let sh = t.shape();
        if sh[1] == 0 || sh[0] == 0 {
            continue;
        }
        let desc = |t: &Tensor| -> Result<Seg> {
            Ok(Seg {
                ptr: t.dev_ptr()?,
                len: t.shape()[1],
                rs: t.row_stride()?,
                bs: t.strides()[0],
            })
        };
        let mut s = match desc(t) {
            Ok(s) => s,
            // A non-dense last dim: gather first.
            Err(_) => {
                let c = t.contiguous()?;
                let s = desc(&c)?;
                keep.push(c);
                s
            }
        };
        if sh[0] == 1 {
            s.bs = 0; // never used; keeps the alignment check honest
        }
        let is_aligned = |s: &Seg| s.ptr % 16 == 0 && s.rs % 8 == 0 && s.bs % 8 == 0;
        if aligned && !is_aligned(&s) {
            let mut c = t.contiguous()?;
            if c.dev_ptr()? % 16 != 0 {
                // A contiguous view at an odd offset: copy into a fresh (pool-aligned) buffer.
                let fresh = Tensor::empty(c.shape(), dt, c.device())?;
                fresh.copy_from(&c)?;
                c = fresh;
            }
            s = desc(&c)?;
            if sh[0] == 1 {
                s.bs = 0;
            }
            keep.push(c);
            if !is_aligned(&s) {
                return Err(shape_err!(
                    "attention: {what} segment {sh:?} is not 16-byte aligned even when copied"
                ));
            }
        }
        if s.rs > i64::MAX as usize / 2 || s.bs > i64::MAX as usize / 2 {
            return Err(shape_err!(
                "attention: {what} segment {sh:?} strides are out of range"
            ));
        }
        out.push(s);
    }
    if out.len() > MAX_SEGMENTS {
        return Err(shape_err!("attention: {what} has {} non-empty segments, the CUDA kernels take at most {MAX_SEGMENTS}", out.len()));
    }
    Ok(out)
}

/// Pushes one side's segments in the order of `SEG_ARGS` (kernels/attention.cu): 4 pointers,
/// 4 lengths, 4 row strides, 4 batch strides (unused entries: null / 0).
fn push_segs(a: &mut KernelArgs, segs: &[Seg]) {
    let mut s = [Seg::default(); MAX_SEGMENTS];
    s[..segs.len()].copy_from_slice(segs);
    // Unused pointers repeat the first one (never dereferenced; the kernels read row 0 of it for
    // zero-filled copies).
    for x in s.iter_mut().skip(segs.len()) {
        x.ptr = segs[0].ptr;
    }
    for x in &s {
        a.ptr(x.ptr);
    }
    for x in &s {
        a.i32(x.len as i32);
    }
    for x in &s {
        a.i64(x.rs as i64);
    }
    for x in &s {
        a.i64(x.bs as i64);
    }
}

/// [`attention_cuda`] with an explicit kernel choice.
#[allow(clippy::too_many_arguments)]
pub fn attention_cuda_with(
    q: &[&Tensor],
    k: &[&Tensor],
    v: &[&Tensor],
    heads: usize,
    scale: f32,
    causal: bool,
    bias: Option<&Tensor>,
    kernel: AttnKernel,
) -> Result<Tensor> {
    let o = AttnOpts {
        heads,
        scale,
        causal,
        bias,
    };
    let d: AttnDims = attn_dims(q, k, v, &o)?;
    let mut all: Vec<&Tensor> = q.iter().chain(k).chain(v).copied().collect();
    if let Some(b) = bias {
        all.push(b);
    }
    let gpu = crate::ops::common_gpu("attention", &all)?
        .ok_or_else(|| {
            Error::Other(
                "attention_cuda: the tensors are on the CPU (use ops::attention::attention)".into(),
            )
        })?
        .clone();
    let dt = q[0].dtype();
    if !matches!(dt, DType::F32 | DType::BF16 | DType::F16) {
        return Err(shape_err!(
            "attention: dtype {} is not supported on the GPU (f32, bf16, f16)",
            dt.name()
        ));
    }
    let flash_ok = dt == DType::BF16 && d.d == 64;
    let flash = match kernel {
        AttnKernel::Auto => flash_ok,
        AttnKernel::Flash if flash_ok => true,
        AttnKernel::Flash => {
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
    let out = Tensor::empty(&[d.b, d.sq, d.heads * d.d], dt, q[0].device())?;
    if d.b == 0 || d.sq == 0 || d.heads == 0 || d.d == 0 {
        return Ok(out);
    }
    if d.sk == 0 {
        return Err(shape_err!("attention: {} queries but no keys", d.sq));
    }
    if d.sq > i32::MAX as usize || d.sk > i32::MAX as usize || d.heads > 65535 || d.b > 65535 {
        return Err(shape_err!("attention: {d:?} is too large for one launch"));
    }
    let mut keep = Vec::new();
    let qs = segments("query", q, dt, flash, &mut keep)?;
    let ks = segments("key", k, dt, flash, &mut keep)?;
    let vs = segments("value", v, dt, flash, &mut keep)?;
    let bias_t = match bias {
        Some(b) => {
            let b = if b.dtype() == DType::F32 {
                b.clone()
            } else {
                b.to_dtype(DType::F32)?
            };
            Some(b.contiguous()?)
        }
        None => None,
    };

    let mut a = KernelArgs::new();
    push_segs(&mut a, &qs);
    push_segs(&mut a, &ks);
    push_segs(&mut a, &vs);
    a.ptr(out.dev_ptr()?)
        .ptr(bias_t.as_ref().map_or(Ok(0), |b| b.dev_ptr())?)
        .i32(d.heads as i32);
    if flash {
        a.i32(d.sq as i32)
            .i32(d.sk as i32)
            .f32(scale * std::f32::consts::LOG2_E)
            .i32(causal as i32);
        let grid = (d.sq.div_ceil(FLASH_BM) as u32, d.heads as u32, d.b as u32);
        // SAFETY: the argument list matches flash_attn_fwd_d64 (SEG_ARGS(q), SEG_ARGS(k), SEG_ARGS(v),
        // out, bias, H, Sq, Sk, scale_log2, causal); every segment holds B x len rows of H*64
        // elements at the strides given, 16-byte aligned (checked above); out is [B, Sq, H*64];
        // the buffers (and the copies in `keep`) outlive the stream-ordered launch.
        unsafe {
            gpu.launch(
                "attention",
                "flash_attn_fwd_d64",
                grid,
                (FLASH_THREADS, 1, 1),
                FLASH_SMEM,
                &mut a,
            )?
        };
    } else {
        a.i32(d.d as i32)
            .i32(d.sq as i32)
            .i32(d.sk as i32)
            .f32(scale)
            .i32(causal as i32);
        let name = crate::kname!("attention", dt, "attn_naive")?;
        let grid = (d.sq.div_ceil(NAIVE_ROWS) as u32, d.heads as u32, d.b as u32);
        // SAFETY: matches ATTN_NAIVE's parameters (SEG_ARGS x 3, out, bias, H, D, Sq, Sk, scale,
        // causal); buffers as above.
        unsafe {
            gpu.launch(
                "attention",
                name,
                grid,
                ((NAIVE_ROWS * 32) as u32, 1, 1),
                0,
                &mut a,
            )?
        };
    }
    drop(keep); // pool memory is stream-ordered: freeing after the launch is fine
    Ok(out)
}
