//! Elementwise activations and the last-dim softmax. Kernels: kernels/ops.cu (`act_*`, `softmax_last_*`).
use crate::error::Result;
use crate::ops::gemm::Act;
use crate::ops::{common_gpu, float_dtype, grid_rows, host};
use crate::runtime::kernels::{
    Activation, ActivationArgs, DevPtr, DevPtrMut, LaunchCfg, SoftmaxLast, SoftmaxLastArgs,
};
use crate::runtime::Tensor;
use crate::shape_err;

/// `act(x)` elementwise; any shape; output contiguous.
pub fn apply(x: &Tensor, act: Act) -> Result<Tensor> {
    match common_gpu("act", &[x])? {
        None => host(act_cpu(&x.cpu_f32()?, act), x.shape()),
        Some(gpu) => {
            let x = x.contiguous()?;
            let y = Tensor::empty(x.shape(), x.dtype(), x.device())?;
            let n = x.elem_count();
            let k = Activation::for_dtype("act", float_dtype("act", &x)?)?;
            let args = ActivationArgs {
                x: DevPtr::of(&x)?,
                y: DevPtrMut::of(&y)?,
                n: n as i64,
                code: act.code(),
            };
            // SAFETY: x (contiguous) and y (fresh, x's shape and dtype) hold n elements on `gpu`.
            unsafe { k.launch(gpu, LaunchCfg::grid_stride(n), args)? };
            Ok(y)
        }
    }
}

pub fn silu(x: &Tensor) -> Result<Tensor> {
    apply(x, Act::Silu)
}
pub fn gelu_tanh(x: &Tensor) -> Result<Tensor> {
    apply(x, Act::GeluTanh)
}
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    apply(x, Act::GeluErf)
}
pub fn quick_gelu(x: &Tensor) -> Result<Tensor> {
    apply(x, Act::QuickGelu)
}

/// Softmax over the last dim, f32 math (max-subtracted).
pub fn softmax_last(x: &Tensor) -> Result<Tensor> {
    let sh = x.shape();
    if sh.is_empty() {
        return Err(shape_err!("softmax_last: scalar input"));
    }
    let cols = sh[sh.len() - 1];
    let rows = x.elem_count() / cols.max(1);
    match common_gpu("softmax_last", &[x])? {
        None => host(softmax_last_cpu(x.cpu_f32()?.into_owned(), cols), sh),
        Some(gpu) => {
            let x = x.contiguous()?;
            let y = Tensor::empty(sh, x.dtype(), x.device())?;
            if rows > 0 && cols > 0 {
                let k = SoftmaxLast::for_dtype("softmax_last", float_dtype("softmax_last", &x)?)?;
                let cfg = LaunchCfg::new(grid_rows("softmax_last", rows)?, (256, 1, 1), 0);
                let args = SoftmaxLastArgs {
                    x: DevPtr::of(&x)?,
                    y: DevPtrMut::of(&y)?,
                    rows: rows as i32,
                    cols: cols as i32,
                };
                // SAFETY: x (contiguous) and y (fresh, same shape) hold rows x cols elements on
                // `gpu`; grid_rows bounds rows to i32.
                unsafe { k.launch(gpu, cfg, args)? };
            }
            Ok(y)
        }
    }
}

/// CPU reference of [`apply`]: `act(x)` elementwise in f32.
pub fn act_cpu(x: &[f32], act: Act) -> Vec<f32> {
    x.iter().map(|&v| act.apply(v)).collect()
}

/// CPU reference of [`softmax_last`]: [`softmax_row`] on each row of `cols` values of `x`.
pub fn softmax_last_cpu(mut x: Vec<f32>, cols: usize) -> Vec<f32> {
    for r in x.chunks_mut(cols.max(1)) {
        softmax_row(r);
    }
    x
}

/// In-place softmax of one row (the CPU reference, also used by attention).
pub fn softmax_row(r: &mut [f32]) {
    let m = r.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    if m == f32::NEG_INFINITY {
        r.iter_mut().for_each(|v| *v = 0.0);
        return;
    }
    let mut s = 0f32;
    for v in r.iter_mut() {
        *v = (*v - m).exp();
        s += *v;
    }
    let inv = 1.0 / s;
    r.iter_mut().for_each(|v| *v *= inv);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Device;

    #[test]
    fn softmax_rows_sum_to_one_and_are_shift_invariant() {
        let x = Tensor::from_f32(
            vec![1.0, 2.0, 3.0, 1001.0, 1002.0, 1003.0],
            &[2, 3],
            &Device::Cpu,
        )
        .unwrap();
        let y = softmax_last(&x).unwrap().to_vec_f32().unwrap();
        for i in 0..3 {
            assert!((y[i] - y[i + 3]).abs() < 1e-6);
        }
        assert!((y[0] + y[1] + y[2] - 1.0).abs() < 1e-6);
        assert!((y[2] / y[1] - 1f32.exp()).abs() < 1e-5);
    }
}
