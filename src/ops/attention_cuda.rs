//! CUDA launchers of the attention kernels; semantics in [`crate::ops::attention`].
//!
//! * `flash_attn_hopper_d64` (kernels/attention_hopper.cu, sm_90a only; launcher in
//!   [`crate::ops::attention_hopper`]): bf16, head dim 64, the FlashAttention-3 design (TMA,
//!   mbarrier ring, wgmma, ping-pong consumers).
//! * `flash_attn_fwd_d64` (kernels/attention.cu): bf16, head dim 64, mma.sync m16n8k16 with 32
//!   query rows per warp (the FlashAttention-2 design), every arch from sm_80.
//! * `attn_naive_{f32,bf16,f16}`: any head dim <= 256, one warp per query row, f32 math. Used
//!   for every other case and as a second opinion ([`AttnKernel::Naive`]).
//!
//! [`AttnKernel::Auto`] takes the flash kernel [`crate::ops::attention_select`] chose for the GPU
//! (Hopper on sm_90, mma elsewhere, `CONTENTV_ATTENTION` to force one, a self-check on first
//! use) for bf16 with head dim 64, the generic kernel otherwise. The flash kernels need 16-byte
//! aligned rows (base pointer, row and batch strides multiples of 8 elements); other segments
//! are made contiguous first.
//!
//! Each side (q, k, v) may have up to 4 non-empty segments [B, S_i, H*d] (rows may be strided,
//! last dim dense); they are concatenated along the sequence inside the kernels. The output is
//! one tensor per query segment ([`attention_cuda_into`]: `OUT_ARGS` of kernels/attn_out.cuh,
//! each [B, S_i, H*d] at its own row and batch strides, last dim dense): the MMDiT block gets its
//! video and text outputs as separate contiguous tensors, [`attention_cuda_with`] passes views of
//! one [B, ΣSq, H*d] tensor.
use crate::error::{Error, Result};
use crate::ops::attention::{attn_dims, AttnDims, AttnOpts};
use crate::ops::attention_select::{self, Choice};
use crate::runtime::kernels::{
    AttnNaive, AttnNaiveArgs, DevPtr, DevPtrMut, FlashAttnD64, FlashAttnD64Args, LaunchCfg,
    OutSegArgs, SegArgs, SEGMENTS,
};
use crate::runtime::{DType, Tensor};
use crate::shape_err;

/// Which kernel [`attention_cuda_with`] runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum AttnKernel {
    /// The GPU's flash kernel (ops::attention_select) for bf16 with head dim 64, naive
    /// otherwise.
    #[default]
    Auto,
    /// The mma.sync flash kernel (an error if the inputs do not qualify).
    Flash,
    /// The generic kernel.
    Naive,
    /// The FlashAttention-3-style sm_90a kernel ([`crate::ops::attention_hopper`]; an error if
    /// the inputs do not qualify like [`AttnKernel::Flash`] or the GPU has no sm_90a image).
    Hopper,
}

/// Segments per side the kernels take.
pub const MAX_SEGMENTS: usize = SEGMENTS;
/// Largest head dim of the generic kernel.
pub const NAIVE_MAX_D: usize = 256;

const FLASH_BM: usize = 128;
pub const FLASH_THREADS: u32 = 128;
pub const FLASH_SMEM: u32 = 48 * 1024;
pub const NAIVE_ROWS: usize = 4;
/// Largest row stride (elements) the flash kernel takes as is (its per-tile row offsets are
/// 32-bit); larger strides are made contiguous first.
const FLASH_MAX_ROW_STRIDE: usize = 1 << 24;

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

/// One segment as the kernels see it: the tensor (a view, or the copy made for the kernel)
/// and its geometry.
#[derive(Clone)]
pub(crate) struct Seg {
    pub(crate) t: Tensor,
    pub(crate) ptr: u64,
    pub(crate) len: usize,
    /// Elements between rows.
    pub(crate) rs: usize,
    /// Elements between batches.
    pub(crate) bs: usize,
}

/// The non-empty segments of one side, with strides; made contiguous where `aligned` is asked
/// and the view is not 16-byte aligned.
fn segments(what: &str, segs: &[&Tensor], dt: DType, aligned: bool) -> Result<Vec<Seg>> {
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
                t: t.clone(),
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
                desc(&c)?
            }
        };
        if sh[0] == 1 {
            s.bs = 0; // never used; keeps the alignment check honest
        }
        // The flash kernel also keeps row offsets within a 64-row tile in 32 bits (48 * rs <
        // 2^31); a contiguous copy has rs = H*d <= 65535 * 64, which always fits.
        let is_aligned = |s: &Seg| {
            s.ptr % 16 == 0 && s.rs % 8 == 0 && s.bs % 8 == 0 && s.rs <= FLASH_MAX_ROW_STRIDE
        };
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

/// One side's segments as `SEG_ARGS` (kernels/attention.cu) takes them: 4 pointers, 4
/// lengths, 4 row strides, 4 batch strides (unused entries: length 0, strides 0).
fn seg_args(segs: &[Seg]) -> Result<SegArgs<'_>> {
    // Unused pointers repeat the first one (never dereferenced; the kernels read row 0 of it for
    // zero-filled copies).
    let mut a = SegArgs {
        ptrs: [DevPtr::of(&segs[0].t)?; MAX_SEGMENTS],
        lens: [0; MAX_SEGMENTS],
        row_strides: [0; MAX_SEGMENTS],
        batch_strides: [0; MAX_SEGMENTS],
    };
    for (i, s) in segs.iter().enumerate() {
        a.ptrs[i] = DevPtr::of(&s.t)?;
        a.lens[i] = s.len as i32;
        a.row_strides[i] = s.rs as i64;
        a.batch_strides[i] = s.bs as i64;
    }
    Ok(a)
}

/// The outputs of the non-empty query segments as `OUT_ARGS` (kernels/attn_out.cuh) takes
/// them: `out[i]` must be [B, S_i, H*d] of query segment i, dtype `dt`, last dim dense; the
/// flash kernels store 2 elements at a time, so there the base pointer must be 4-byte aligned
/// and the strides even. Unused entries repeat the first pointer with zero strides.
fn out_args<'a>(
    q: &[&Tensor],
    out: &'a [&'a Tensor],
    d: &AttnDims,
    dt: DType,
    flash: bool,
) -> Result<OutSegArgs<'a>> {
    if out.len() != q.len() {
        return Err(shape_err!(
            "attention: {} outputs for {} query segments",
            out.len(),
            q.len()
        ));
    }
    let mut used = Vec::new();
    for (qi, o) in q.iter().zip(out) {
        let want = [d.b, qi.shape()[1], d.heads * d.d];
        if o.shape() != want || o.dtype() != dt {
            return Err(shape_err!(
                "attention: output {:?} {} for query segment {:?}, expected {want:?} {}",
                o.shape(),
                o.dtype().name(),
                qi.shape(),
                dt.name()
            ));
        }
        if qi.shape()[1] == 0 || d.b == 0 {
            continue; // empty query segments are skipped like their queries (segments())
        }
        let rs = o.row_stride()?;
        let bs = if d.b == 1 { 0 } else { o.strides()[0] };
        let ptr = o.dev_ptr()?;
        if flash && (ptr % 4 != 0 || rs % 2 != 0 || bs % 2 != 0) {
            return Err(shape_err!(
                "attention: output {:?} (strides {:?}) is not 4-byte aligned with even strides, as the flash kernels store it",
                o.shape(),
                o.strides()
            ));
        }
        if rs > i64::MAX as usize / 2 || bs > i64::MAX as usize / 2 {
            return Err(shape_err!(
                "attention: output {:?} strides are out of range",
                o.shape()
            ));
        }
        used.push((DevPtrMut::of(o)?, rs as i64, bs as i64));
    }
    let Some(first) = used.first() else {
        return Err(shape_err!("attention: no non-empty query segment"));
    };
    let mut a = OutSegArgs {
        ptrs: [first.0; MAX_SEGMENTS],
        row_strides: [0; MAX_SEGMENTS],
        batch_strides: [0; MAX_SEGMENTS],
    };
    if used.len() > MAX_SEGMENTS {
        return Err(shape_err!(
            "attention: {} non-empty query segments, the CUDA kernels take at most {MAX_SEGMENTS}",
            used.len()
        ));
    }
    for (i, (p, rs, bs)) in used.into_iter().enumerate() {
        a.ptrs[i] = p;
        a.row_strides[i] = rs;
        a.batch_strides[i] = bs;
    }
    Ok(a)
}

/// [`attention_cuda`] with an explicit kernel choice: one output [B, ΣSq, H*d] (the kernels
/// write each query segment's rows into its view of it).
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
    let d = attn_dims(
        q,
        k,
        v,
        &AttnOpts {
            heads,
            scale,
            causal,
            bias,
        },
    )?;
    let out = Tensor::empty(&[d.b, d.sq, d.heads * d.d], q[0].dtype(), q[0].device())?;
    let mut views = Vec::with_capacity(q.len());
    let mut row = 0;
    for t in q {
        views.push(out.narrow(1, row, t.shape()[1])?);
        row += t.shape()[1];
    }
    let vr: Vec<&Tensor> = views.iter().collect();
    attention_cuda_into(q, k, v, &vr, heads, scale, causal, bias, kernel)?;
    Ok(out)
}

/// One output per query segment: fresh contiguous tensors [B, S_i, H*d] (`kernel` as in
/// [`attention_cuda_with`]).
#[allow(clippy::too_many_arguments)]
pub fn attention_cuda_segs(
    q: &[&Tensor],
    k: &[&Tensor],
    v: &[&Tensor],
    heads: usize,
    scale: f32,
    causal: bool,
    bias: Option<&Tensor>,
    kernel: AttnKernel,
) -> Result<Vec<Tensor>> {
    let d = attn_dims(
        q,
        k,
        v,
        &AttnOpts {
            heads,
            scale,
            causal,
            bias,
        },
    )?;
    let outs = q
        .iter()
        .map(|t| Tensor::empty(&[d.b, t.shape()[1], d.heads * d.d], t.dtype(), t.device()))
        .collect::<Result<Vec<_>>>()?;
    let or: Vec<&Tensor> = outs.iter().collect();
    attention_cuda_into(q, k, v, &or, heads, scale, causal, bias, kernel)?;
    Ok(outs)
}

/// Attention on the GPU into `out`: `out[i]` ([B, S_i, H*d], dtype of q, last dim dense, any
/// row and batch strides) receives the rows of query segment `q[i]`. The outputs must not
/// overlap the inputs or each other.
#[allow(clippy::too_many_arguments)]
pub fn attention_cuda_into(
    q: &[&Tensor],
    k: &[&Tensor],
    v: &[&Tensor],
    out: &[&Tensor],
    heads: usize,
    scale: f32,
    causal: bool,
    bias: Option<&Tensor>,
    kernel: AttnKernel,
) -> Result<()> {
    let o = AttnOpts {
        heads,
        scale,
        causal,
        bias,
    };
    let d: AttnDims = attn_dims(q, k, v, &o)?;
    let mut all: Vec<&Tensor> = q.iter().chain(k).chain(v).chain(out).copied().collect();
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
    // Auto: the flash kernel chosen for this GPU (ops::attention_select: the arch's default or
    // CONTENTV_ATTENTION, confirmed by a self-check on first use) where a flash kernel applies.
    let kernel = match kernel {
        AttnKernel::Auto if flash_ok => match attention_select::selected(&gpu, |c, q, k, v| {
            let k_of = match c {
                Choice::Hopper => AttnKernel::Hopper,
                Choice::Mma => AttnKernel::Flash,
                Choice::Naive => AttnKernel::Naive,
            };
            attention_cuda_with(q, k, v, 2, 0.125, false, None, k_of)
        })? {
            Choice::Hopper => AttnKernel::Hopper,
            Choice::Mma => AttnKernel::Flash,
            Choice::Naive => AttnKernel::Naive,
        },
        AttnKernel::Auto => AttnKernel::Naive,
        k => k,
    };
    let flash = match kernel {
        AttnKernel::Auto => unreachable!("resolved above"),
        AttnKernel::Flash | AttnKernel::Hopper if flash_ok => true,
        AttnKernel::Flash | AttnKernel::Hopper => {
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
        if out.len() != q.len() {
            return Err(shape_err!(
                "attention: {} outputs for {} query segments",
                out.len(),
                q.len()
            ));
        }
        return Ok(());
    }
    if d.sk == 0 {
        return Err(shape_err!("attention: {} queries but no keys", d.sq));
    }
    if d.sq > i32::MAX as usize || d.sk > i32::MAX as usize || d.heads > 65535 || d.b > 65535 {
        return Err(shape_err!("attention: {d:?} is too large for one launch"));
    }
    let qs = segments("query", q, dt, flash)?;
    let ks = segments("key", k, dt, flash)?;
    let vs = segments("value", v, dt, flash)?;
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

    let (qa, ka, va) = (seg_args(&qs)?, seg_args(&ks)?, seg_args(&vs)?);
    let (out_p, bias_p) = (
        out_args(q, out, &d, dt, flash)?,
        DevPtr::opt(bias_t.as_ref())?,
    );
    if flash && kernel == AttnKernel::Hopper {
        crate::ops::attention_hopper::attention_hopper(
            &gpu, &qs, &ks, &vs, out_p, bias_p, &d, scale, causal,
        )?;
    } else if flash {
        let grid = (d.sq.div_ceil(FLASH_BM) as u32, d.heads as u32, d.b as u32);
        let args = FlashAttnD64Args {
            q: qa,
            k: ka,
            v: va,
            out: out_p,
            bias: bias_p,
            h: d.heads as i32,
            sq: d.sq as i32,
            sk: d.sk as i32,
            scale_log2: scale * std::f32::consts::LOG2_E,
            causal: causal as i32,
        };
        // SAFETY: every segment holds B x len rows of H*64 bf16 elements at the strides given,
        // 16-byte aligned (segments checked it) and non-empty; output i holds the B x len_i
        // rows of H*64 bf16 of query segment i at its strides, 4-byte aligned (out_args);
        // bias (contiguous f32) is the [Sq, Sk] of attn_dims or null; the grid covers Sq
        // (FLASH_BM rows per block) x H x B, all bounded above.
        unsafe {
            FlashAttnD64::KERNEL.launch(
                &gpu,
                LaunchCfg::new(grid, (FLASH_THREADS, 1, 1), FLASH_SMEM),
                args,
            )?
        };
    } else {
        let k = AttnNaive::for_dtype("attention", dt)?;
        let grid = (d.sq.div_ceil(NAIVE_ROWS) as u32, d.heads as u32, d.b as u32);
        let args = AttnNaiveArgs {
            q: qa,
            k: ka,
            v: va,
            out: out_p,
            bias: bias_p,
            h: d.heads as i32,
            d: d.d as i32,
            sq: d.sq as i32,
            sk: d.sk as i32,
            scale,
            causal: causal as i32,
        };
        // SAFETY: as for the flash kernel, with any alignment, dtype dt (inputs and outputs)
        // and head dim d <= NAIVE_MAX_D (checked above).
        unsafe {
            k.launch(
                &gpu,
                LaunchCfg::new(grid, ((NAIVE_ROWS * 32) as u32, 1, 1), 0),
                args,
            )?
        };
    }
    // The segments' tensors (copies included) may go now: pool memory is stream-ordered.
    drop((qs, ks, vs));
    Ok(())
}
