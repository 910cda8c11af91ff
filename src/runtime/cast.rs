//! Casts between f32, bf16 and f16 on the GPU (round to nearest even). Host tensors convert in
//! [`Tensor::to_dtype`] directly. Kernel: kernels/ops.cu (`cast_any`).
use crate::error::{Error, Result};
use crate::runtime::kernels::{CastAny, CastAnyArgs, DevPtr, DevPtrMut, LaunchCfg};
use crate::runtime::{DType, Tensor};

/// `x` rounded to the nearest bf16 (ties to even), kept as f32: the operand rounding of the
/// tensor-core paths, on the host.
pub fn round_bf16(x: f32) -> f32 {
    half::bf16::from_f32(x).to_f32()
}

/// [`round_bf16`] over a slice, in place.
pub fn round_to_bf16(v: &mut [f32]) {
    for x in v {
        *x = round_bf16(*x);
    }
}

fn code(d: DType) -> Result<i32> {
    match d {
        DType::F32 => Ok(0),
        DType::BF16 => Ok(1),
        DType::F16 => Ok(2),
        DType::I8 => Err(Error::Other(
            "cast: i8 is not a float type (use ops::quant)".into(),
        )),
    }
}

/// `t` converted to `dtype` (same device; output contiguous).
pub fn cast(t: &Tensor, dtype: DType) -> Result<Tensor> {
    if t.dtype() == dtype {
        return Ok(t.clone());
    }
    match t.device().gpu() {
        None => t.to_dtype(dtype),
        Some(gpu) => {
            let t = t.contiguous()?;
            let y = Tensor::empty(t.shape(), dtype, t.device())?;
            let n = t.elem_count();
            let args = CastAnyArgs {
                x: DevPtr::of(&t)?,
                y: DevPtrMut::of(&y)?,
                n: n as i64,
                sdt: code(t.dtype())?,
                ddt: code(dtype)?,
            };
            // SAFETY: t (contiguous) and y (fresh, same shape) hold n elements of the dtypes
            // the codes name, on the same GPU.
            unsafe { CastAny::KERNEL.launch(gpu, LaunchCfg::grid_stride(n), args)? };
            Ok(y)
        }
    }
}
