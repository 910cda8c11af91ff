//! The operands as the CUDA kernels see them: each side (q, k, v) as up to 4 non-empty
//! segments [B, S_i, H*d] (rows may be strided, last dim dense) that the kernels concatenate
//! along the sequence (`SEG_ARGS`, kernels/attention.cu), and one output per query segment
//! (`OUT_ARGS`, kernels/attn_out.cuh: each [B, S_i, H*d] at its own row and batch strides,
//! last dim dense). The flash kernels need 16-byte aligned rows (base pointer, row and batch
//! strides multiples of 8 elements); other segments are made contiguous first.
use super::{AttnDims, AttnOpts};
use crate::error::Result;
use crate::runtime::kernels::{DevPtr, DevPtrMut, OutSegArgs, SegArgs, SEGMENTS};
use crate::runtime::{DType, Tensor};
use crate::shape_err;

/// Segments per side the kernels take.
pub const MAX_SEGMENTS: usize = SEGMENTS;

/// Largest row stride (elements) the flash kernel takes as is (its per-tile row offsets are
/// 32-bit); larger strides are made contiguous first.
const FLASH_MAX_ROW_STRIDE: usize = 1 << 24;

/// One segment as the kernels see it: the tensor (a view, or the copy made for the kernel)
/// and its geometry.
#[derive(Clone)]
pub(super) struct Seg {
    pub(super) t: Tensor,
    pub(super) ptr: u64,
    pub(super) len: usize,
    /// Elements between rows.
    pub(super) rs: usize,
    /// Elements between batches.
    pub(super) bs: usize,
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
pub(super) fn seg_args(segs: &[Seg]) -> Result<SegArgs<'_>> {
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

/// That there is one output per query segment.
pub(super) fn check_out_count(q: &[&Tensor], out: &[&Tensor]) -> Result<()> {
    if out.len() != q.len() {
        return Err(shape_err!(
            "attention: {} outputs for {} query segments",
            out.len(),
            q.len()
        ));
    }
    Ok(())
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
    check_out_count(q, out)?;
    let mut used = Vec::new();
    for (qi, o) in q.iter().zip(out) {
        let want = [d.b, qi.shape()[1], d.hd()];
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

/// Everything a launcher needs: the non-empty segments of each side, the outputs as
/// `OUT_ARGS`, the bias as contiguous f32.
pub(super) struct Operands<'a> {
    pub(super) q: Vec<Seg>,
    pub(super) k: Vec<Seg>,
    pub(super) v: Vec<Seg>,
    pub(super) out: OutSegArgs<'a>,
    bias: Option<Tensor>,
}

impl Operands<'_> {
    /// The bias [H, Sq, Sk] (contiguous f32) or null.
    pub(super) fn bias(&self) -> Result<DevPtr<'_>> {
        DevPtr::opt(self.bias.as_ref())
    }
}

/// The operands of one call in dtype `dt`: `sides` = [q, k, v]; `flash`: as the flash kernels
/// need them (aligned segments, copied where not; outputs 4-byte aligned with even strides).
pub(super) fn prepare<'a>(
    sides: [&[&Tensor]; 3],
    out: &'a [&'a Tensor],
    o: &AttnOpts,
    d: &AttnDims,
    dt: DType,
    flash: bool,
) -> Result<Operands<'a>> {
    let [q, k, v] = sides;
    let qs = segments("query", q, dt, flash)?;
    let ks = segments("key", k, dt, flash)?;
    let vs = segments("value", v, dt, flash)?;
    let bias = match o.bias {
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
    Ok(Operands {
        out: out_args(q, out, d, dt, flash)?,
        q: qs,
        k: ks,
        v: vs,
        bias,
    })
}
