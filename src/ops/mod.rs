//! Ops: one typed Rust entry per CUDA kernel, each with its plain f32 CPU reference beside it.
//! Every op takes [`Tensor`](crate::Tensor)s and dispatches on their device: host tensors run
//! the reference (in f32, result f32), device tensors launch the kernel (result in the input's
//! dtype). See docs/ops-contract.md.
pub mod act;
pub mod attention;
pub mod conv;
pub mod elementwise;
pub mod embed;
pub mod gemm;
pub mod norm;
pub mod quant;
pub mod tolerance;
pub mod trace;
pub mod vae_glue;

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::runtime::{DType, Device, Gpu, Tensor};

/// The GPU all `ts` live on, or `None` if they are all host tensors; an error if mixed.
pub(crate) fn common_gpu<'a>(op: &str, ts: &[&'a Tensor]) -> Result<Option<&'a Arc<Gpu>>> {
    let first = ts[0].device();
    for t in ts {
        if t.device() != first {
            return Err(Error::Other(format!(
                "{op}: inputs are on different devices ({:?} and {:?})",
                first,
                t.device()
            )));
        }
    }
    Ok(first.gpu())
}

/// A host f32 result tensor.
pub(crate) fn host(v: Vec<f32>, shape: &[usize]) -> Result<Tensor> {
    Tensor::from_f32(v, shape, &Device::Cpu)
}

/// One block per row: gridDim.x may be at most 2^31 - 1. `rows` must be > 0 (a grid of zero
/// blocks is a launch error; callers skip empty launches).
pub(crate) fn grid_rows(op: &str, rows: usize) -> Result<(u32, u32, u32)> {
    if rows == 0 || rows > i32::MAX as usize {
        return Err(Error::Other(format!(
            "{op}: {rows} rows do not fit one launch (1 ..= {} blocks)",
            i32::MAX
        )));
    }
    Ok((rows as u32, 1, 1))
}

/// Row stride (elements) of a tensor with this shape and these strides viewed as [M, K] rows
/// (K = the last dim), or `None` where no such view exists: the last dim is not dense, the
/// leading dims do not collapse onto one stride, or rows would overlap (stride < K, e.g. a
/// broadcast). Size-1 dims are skipped (their strides are arbitrary and never used). With
/// M <= 1 the stride is K (cuBLASLt wants ld >= K).
pub(crate) fn collapsed_row_stride(shape: &[usize], strides: &[usize]) -> Option<usize> {
    let r = shape.len();
    if r == 0 || strides.len() != r {
        return None;
    }
    let k = shape[r - 1];
    if k > 1 && strides[r - 1] != 1 {
        return None;
    }
    // Leading dims that are not 1, innermost first.
    let mut lead = (0..r - 1).rev().filter(|&i| shape[i] != 1);
    let Some(inner) = lead.next() else {
        return Some(k); // M <= 1
    };
    let rs = strides[inner];
    let mut expect = rs * shape[inner];
    for i in lead {
        if strides[i] != expect {
            return None;
        }
        expect = strides[i] * shape[i];
    }
    if rs < k {
        return None;
    }
    Some(rs)
}

/// `x` as [M, K] rows of one stride (K = the last dim): a view where the layout allows it
/// ([`collapsed_row_stride`]), else a contiguous copy. Used by the GEMM launchers.
pub(crate) fn flat_rows(x: &Tensor) -> Result<Tensor> {
    let sh = x.shape();
    let Some(&k) = sh.last() else {
        return Err(Error::Other("flat_rows: a scalar has no rows".into()));
    };
    let m: usize = sh[..sh.len() - 1].iter().product();
    match collapsed_row_stride(sh, x.strides()) {
        Some(rs) => x.as_strided(&[m, k], &[rs, 1]),
        None => x.contiguous()?.reshape(&[m, k]),
    }
}

/// Runs `f(row_start, rows_chunk)` over `rows` rows split across the host threads.
/// `out` has `row_len` values per row and is split accordingly.
pub(crate) fn par_rows(out: &mut [f32], row_len: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    let rows = out.len().checked_div(row_len).unwrap_or(0);
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(rows.max(1));
    let work = rows * row_len;
    if threads <= 1 || work < 1 << 15 {
        f(0, out);
        return;
    }
    let per = rows.div_ceil(threads);
    std::thread::scope(|s| {
        for (i, chunk) in out.chunks_mut(per * row_len).enumerate() {
            let f = &f;
            s.spawn(move || f(i * per, chunk));
        }
    });
}

/// Checks that the tensor's dtype is a float type usable by the elementwise kernels.
pub(crate) fn float_dtype(op: &str, t: &Tensor) -> Result<DType> {
    match t.dtype() {
        d @ (DType::F32 | DType::BF16 | DType::F16) => Ok(d),
        d => Err(Error::Other(format!(
            "{op}: dtype {} is not a float type",
            d.name()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collapsed_row_stride_skips_unit_dims() {
        // Dense [2, 3, 4].
        assert_eq!(collapsed_row_stride(&[2, 3, 4], &[12, 4, 1]), Some(4));
        // Rows of a wider tensor (narrow on the last dim): [2, 3, 4] of a [2, 3, 10].
        assert_eq!(collapsed_row_stride(&[2, 3, 4], &[30, 10, 1]), Some(10));
        // [2, 1, 4] narrowed from [2, 5, 4] on dim 1: the rows are 20 apart, not 4 (the stride
        // of the size-1 dim). This was read with stride 4 before.
        assert_eq!(collapsed_row_stride(&[2, 1, 4], &[20, 4, 1]), Some(20));
        // [1, 3, 4] with an arbitrary stride on the size-1 batch dim collapses.
        assert_eq!(collapsed_row_stride(&[1, 3, 4], &[999, 4, 1]), Some(4));
        // A single row: K whatever the (unused) leading strides are.
        assert_eq!(collapsed_row_stride(&[1, 1, 4], &[0, 1, 1]), Some(4));
        assert_eq!(collapsed_row_stride(&[4], &[1]), Some(4));
        // Batch dim not collapsible onto the row stride (a gap between batches).
        assert_eq!(collapsed_row_stride(&[2, 3, 4], &[16, 4, 1]), None);
        // Broadcast batch (stride 0) and overlapping rows.
        assert_eq!(collapsed_row_stride(&[2, 3, 4], &[0, 4, 1]), None);
        assert_eq!(collapsed_row_stride(&[3, 4], &[2, 1]), None);
        // Last dim not dense.
        assert_eq!(collapsed_row_stride(&[3, 4], &[8, 2]), None);
        // K = 1: the last stride does not matter.
        assert_eq!(collapsed_row_stride(&[3, 1], &[5, 7]), Some(5));
    }

    #[test]
    fn flat_rows_view_reads_the_right_rows() {
        let dev = Device::Cpu;
        let t = Tensor::from_f32((0..40).map(|i| i as f32).collect(), &[2, 5, 4], &dev).unwrap();
        let x = t.narrow(1, 2, 1).unwrap(); // [2, 1, 4]: rows 2 of each batch
        let f = flat_rows(&x).unwrap();
        assert_eq!(f.shape(), &[2, 4]);
        assert_eq!(f.row_stride().unwrap(), 20);
        assert_eq!(
            f.to_vec_f32().unwrap(),
            vec![8., 9., 10., 11., 28., 29., 30., 31.]
        );
        let g = flat_rows(&t.narrow(2, 1, 2).unwrap()).unwrap(); // strided rows [10, 2]
        assert_eq!((g.shape(), g.row_stride().unwrap()), (&[10usize, 2][..], 4));
        assert_eq!(&g.to_vec_f32().unwrap()[..4], &[1., 2., 5., 6.]);
    }

    #[test]
    fn grid_rows_limits() {
        assert_eq!(grid_rows("t", 83_610).unwrap(), (83_610, 1, 1));
        assert!(grid_rows("t", 0).is_err());
        assert!(grid_rows("t", 1 << 31).is_err());
    }
}
