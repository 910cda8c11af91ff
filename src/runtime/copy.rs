//! Strided copies on the GPU: making a view contiguous, and writing into a view (concat).
//! Host tensors are handled by [`Tensor`] itself. Kernel: kernels/ops.cu (`copy_nd`), rank <= 8,
//! any element size of 1, 2 or 4 bytes.
use crate::error::{Error, Result};
use crate::runtime::kernels::{CopyNd, CopyNdArgs, DevPtr, DevPtrMut, LaunchCfg};
use crate::runtime::Tensor;
use crate::shape_err;

const MAX_RANK: usize = 8;

/// A dense copy of `t` (device tensors; host tensors use `Tensor::contiguous`).
pub fn contiguous(t: &Tensor) -> Result<Tensor> {
    if t.is_contiguous() {
        return Ok(t.clone());
    }
    if !t.device().is_cuda() {
        return t.contiguous();
    }
    let y = Tensor::empty(t.shape(), t.dtype(), t.device())?;
    copy_into(t, &y)?;
    Ok(y)
}

/// Copies `src` into the (possibly strided) view `dst` of the same shape and dtype, on the GPU.
pub fn copy_into(src: &Tensor, dst: &Tensor) -> Result<()> {
    if src.shape() != dst.shape() || src.dtype() != dst.dtype() {
        return Err(shape_err!(
            "copy: {:?} {} into {:?} {}",
            src.shape(),
            src.dtype().name(),
            dst.shape(),
            dst.dtype().name()
        ));
    }
    let gpu = match (src.device().gpu(), dst.device().gpu()) {
        (Some(g), Some(_)) if src.device() == dst.device() => g,
        _ => {
            return Err(Error::Other(
                "copy_into: both tensors must be on the same GPU".into(),
            ))
        }
    };
    if src.rank() > MAX_RANK {
        return Err(shape_err!(
            "copy: rank {} > {MAX_RANK} not supported ({:?})",
            src.rank(),
            src.shape()
        ));
    }
    let n = src.elem_count();
    if n == 0 {
        return Ok(());
    }
    // Pad to rank 8 with leading unit dims.
    let pad = MAX_RANK - src.rank();
    let mut shape = [1i64; MAX_RANK];
    let mut ss = [0i64; MAX_RANK];
    let mut ds = [0i64; MAX_RANK];
    for i in 0..src.rank() {
        shape[pad + i] = src.shape()[i] as i64;
        ss[pad + i] = src.strides()[i] as i64;
        ds[pad + i] = dst.strides()[i] as i64;
    }
    let args = CopyNdArgs {
        src: DevPtr::of(src)?,
        dst: DevPtrMut::of(dst)?,
        n: n as i64,
        esize: src.dtype().size() as i32,
        shape,
        src_strides: ss,
        dst_strides: ds,
    };
    // SAFETY: both tensors are views of their own storage with this shape and their strides,
    // so every index of the shape lies inside them; both are on this GPU (checked above).
    // A dst that overlaps src is the caller's to avoid, as for any copy.
    unsafe { CopyNd::KERNEL.launch(gpu, LaunchCfg::grid_stride(n), args) }
}
