//! Ops: one typed Rust entry per CUDA kernel, each with its plain f32 CPU reference beside it.
//! Every op takes [`Tensor`](crate::Tensor)s and dispatches on their device: host tensors run
//! the reference (in f32, result f32), device tensors launch the kernel (result in the input's
//! dtype). See docs/ops-contract.md.
pub mod act;
pub mod attention;
pub mod attention_cuda;
pub mod cast;
pub mod conv;
pub mod copy;
pub mod elementwise;
pub mod embed;
pub mod gemm;
pub mod norm;
pub mod quant;
pub mod tolerance;

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

/// Kernel name for the dtype: `$base` followed by `_f32` / `_bf16` / `_f16`.
#[macro_export]
#[doc(hidden)]
macro_rules! kname {
    ($op:expr, $dt:expr, $base:literal) => {
        match $dt {
            $crate::runtime::DType::F32 => Ok(concat!($base, "_f32")),
            $crate::runtime::DType::BF16 => Ok(concat!($base, "_bf16")),
            $crate::runtime::DType::F16 => Ok(concat!($base, "_f16")),
            d => Err($crate::Error::Other(format!(
                "{}: dtype {} is not supported on the GPU",
                $op,
                d.name()
            ))),
        }
    };
}

/// Grid for `n` elements with 256-thread blocks (grid-stride loops inside the kernels).
pub(crate) fn grid_1d(n: usize) -> (u32, u32, u32) {
    let blocks = n.div_ceil(256).clamp(1, 65535 * 8);
    (blocks as u32, 1, 1)
}

/// Runs `f(row_start, rows_chunk)` over `rows` rows split across the host threads.
/// `out` has `row_len` values per row and is split accordingly.
pub(crate) fn par_rows(out: &mut [f32], row_len: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    let rows = if row_len == 0 { 0 } else { out.len() / row_len };
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
