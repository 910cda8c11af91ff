//! Elementwise arithmetic, the gated residual of adaLN-Zero, and concatenation.
//! Kernels: kernels/ops.cu (`binary_*`, `add_bcast_*`, `axpby_*`, `gated_residual_*`); concat
//! uses the strided copy of [`crate::runtime::copy`].
use crate::error::{Error, Result};
use crate::ops::{common_gpu, float_dtype, host};
use crate::runtime::kernels::{
    AddBcast, AddBcastArgs, Axpby, AxpbyArgs, DevPtr, DevPtrMut, GatedResidual, GatedResidualArgs,
    LaunchCfg, Mul, MulArgs,
};
use crate::runtime::{Device, Tensor};
use crate::shape_err;

fn same_shape(op: &str, a: &Tensor, b: &Tensor) -> Result<()> {
    if a.shape() != b.shape() {
        return Err(shape_err!(
            "{op}: shapes {:?} and {:?} differ",
            a.shape(),
            b.shape()
        ));
    }
    if a.device().is_cuda() && a.dtype() != b.dtype() {
        return Err(Error::Other(format!(
            "{op}: dtypes {} and {} differ",
            a.dtype().name(),
            b.dtype().name()
        )));
    }
    Ok(())
}

/// `y = alpha * a + beta * b` (b optional), the common kernel of add / scale / add_scaled.
fn axpby(op: &str, a: &Tensor, b: Option<&Tensor>, alpha: f32, beta: f32) -> Result<Tensor> {
    if let Some(b) = b {
        same_shape(op, a, b)?;
    }
    let mut ts = vec![a];
    if let Some(b) = b {
        ts.push(b);
    }
    match common_gpu(op, &ts)? {
        None => {
            let bv = b.map(|b| b.cpu_f32()).transpose()?;
            host(
                axpby_cpu(&a.cpu_f32()?, bv.as_deref(), alpha, beta),
                a.shape(),
            )
        }
        Some(gpu) => {
            let a = a.contiguous()?;
            let b = b.map(|b| b.contiguous()).transpose()?;
            let y = Tensor::empty(a.shape(), a.dtype(), a.device())?;
            let n = a.elem_count();
            let k = Axpby::for_dtype(op, float_dtype(op, &a)?)?;
            let args = AxpbyArgs {
                a: DevPtr::of(&a)?,
                b: DevPtr::opt(b.as_ref())?,
                y: DevPtrMut::of(&y)?,
                n: n as i64,
                alpha,
                beta,
            };
            // SAFETY: a, b (contiguous, same shape and dtype: same_shape) and y (fresh, a's
            // shape) hold n elements on `gpu` (common_gpu); b may be null.
            unsafe { k.launch(gpu, LaunchCfg::grid_stride(n), args)? };
            Ok(y)
        }
    }
}

/// CPU reference of the axpby kernel: `alpha a + beta b` (`alpha a` without b).
pub fn axpby_cpu(a: &[f32], b: Option<&[f32]>, alpha: f32, beta: f32) -> Vec<f32> {
    match b {
        Some(b) => a
            .iter()
            .zip(b.iter())
            .map(|(x, y)| alpha * x + beta * y)
            .collect(),
        None => a.iter().map(|x| alpha * x).collect(),
    }
}

/// CPU reference of [`mul`].
pub fn mul_cpu(a: &[f32], b: &[f32]) -> Vec<f32> {
    a.iter().zip(b.iter()).map(|(x, y)| x * y).collect()
}

/// CPU reference of [`add_bcast`]: `a[i] + b[i % b.len()]`.
pub fn add_bcast_cpu(a: &[f32], b: &[f32]) -> Vec<f32> {
    let period = b.len();
    a.iter()
        .enumerate()
        .map(|(i, x)| x + b[i % period.max(1)])
        .collect()
}

/// CPU reference of [`gated_residual`]: x, y [B, s, c], gate [B, c] dense.
pub fn gated_residual_cpu(x: &[f32], y: &[f32], gate: &[f32], s: usize, c: usize) -> Vec<f32> {
    (0..x.len())
        .map(|i| {
            let bi = i / (s * c).max(1);
            x[i] + gate[bi * c + i % c] * y[i]
        })
        .collect()
}

/// `a + b` (same shape).
pub fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    axpby("add", a, Some(b), 1.0, 1.0)
}

/// `a * s`.
pub fn scale(a: &Tensor, s: f32) -> Result<Tensor> {
    axpby("scale", a, None, s, 0.0)
}

/// `a + s * b`.
pub fn add_scaled(a: &Tensor, b: &Tensor, s: f32) -> Result<Tensor> {
    axpby("add_scaled", a, Some(b), 1.0, s)
}

/// `a * b` elementwise (same shape).
pub fn mul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    same_shape("mul", a, b)?;
    match common_gpu("mul", &[a, b])? {
        None => host(mul_cpu(&a.cpu_f32()?, &b.cpu_f32()?), a.shape()),
        Some(gpu) => {
            let (a, b) = (a.contiguous()?, b.contiguous()?);
            let y = Tensor::empty(a.shape(), a.dtype(), a.device())?;
            let n = a.elem_count();
            let k = Mul::for_dtype("mul", float_dtype("mul", &a)?)?;
            let args = MulArgs {
                a: DevPtr::of(&a)?,
                b: DevPtr::of(&b)?,
                y: DevPtrMut::of(&y)?,
                n: n as i64,
            };
            // SAFETY: a, b (contiguous, same shape and dtype: same_shape) and y (fresh, a's
            // shape) hold n elements on `gpu` (common_gpu).
            unsafe { k.launch(gpu, LaunchCfg::grid_stride(n), args)? };
            Ok(y)
        }
    }
}

/// `a + b` with `b` [S, C] broadcast over the leading batch dim of `a` [B, S, C] (position tables).
pub fn add_bcast(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (ash, bsh) = (a.shape(), b.shape());
    if ash.len() != bsh.len() + 1 || &ash[1..] != bsh {
        return Err(shape_err!(
            "add_bcast: {bsh:?} does not broadcast over {ash:?} (expected [B, ..] + [..])"
        ));
    }
    let period = b.elem_count();
    match common_gpu("add_bcast", &[a, b])? {
        None => host(add_bcast_cpu(&a.cpu_f32()?, &b.cpu_f32()?), ash),
        Some(gpu) => {
            let a = a.contiguous()?;
            let b = b.contiguous()?.to_dtype(a.dtype())?;
            let y = Tensor::empty(ash, a.dtype(), a.device())?;
            let n = a.elem_count();
            let k = AddBcast::for_dtype("add_bcast", float_dtype("add_bcast", &a)?)?;
            let args = AddBcastArgs {
                a: DevPtr::of(&a)?,
                b: DevPtr::of(&b)?,
                y: DevPtrMut::of(&y)?,
                n: n as i64,
                period: period as i64,
            };
            // SAFETY: a and y (fresh, a's shape) hold n elements, b (contiguous, a's dtype)
            // `period` = its element count; all on `gpu` (common_gpu).
            unsafe { k.launch(gpu, LaunchCfg::grid_stride(n), args)? };
            Ok(y)
        }
    }
}

/// adaLN-Zero residual: `x + gate * y` with x, y [B, S, C] and gate [B, C] (may be a strided
/// view with a dense last dim).
pub fn gated_residual(x: &Tensor, y: &Tensor, gate: &Tensor) -> Result<Tensor> {
    same_shape("gated_residual", x, y)?;
    let sh = x.shape();
    if sh.len() != 3 || gate.shape() != [sh[0], sh[2]] {
        return Err(shape_err!(
            "gated_residual: x {sh:?} needs [B, S, C] and gate [B, C], gate is {:?}",
            gate.shape()
        ));
    }
    let (s, c) = (sh[1], sh[2]);
    match common_gpu("gated_residual", &[x, y, gate])? {
        None => {
            let (xv, yv, gv) = (x.cpu_f32()?, y.cpu_f32()?, gate.to_vec_f32()?);
            host(gated_residual_cpu(&xv, &yv, &gv, s, c), sh)
        }
        Some(gpu) => {
            let (x, y) = (x.contiguous()?, y.contiguous()?);
            let gate = gate.to_dtype(x.dtype())?;
            let out = Tensor::empty(sh, x.dtype(), x.device())?;
            let n = x.elem_count();
            let k = GatedResidual::for_dtype("gated_residual", float_dtype("gated_residual", &x)?)?;
            let args = GatedResidualArgs {
                x: DevPtr::of(&x)?,
                y: DevPtr::of(&y)?,
                gate: DevPtr::of(&gate)?,
                gate_ld: gate.row_stride()? as i64,
                out: DevPtrMut::of(&out)?,
                n: n as i64,
                s: s as i64,
                c: c as i64,
            };
            // SAFETY: x, y (contiguous [B, S, C], same dtype) and out (fresh) hold n = B S C
            // elements; gate is a [B, C] view of x's dtype whose rows lie at gate_ld (row_stride
            // checks the last dim is dense); all on `gpu` (common_gpu).
            unsafe { k.launch(gpu, LaunchCfg::grid_stride(n), args)? };
            Ok(out)
        }
    }
}

/// Concatenation along `dim`; all other dims must agree.
pub fn concat(ts: &[&Tensor], dim: usize) -> Result<Tensor> {
    let first = ts.first().ok_or_else(|| shape_err!("concat of nothing"))?;
    let r = first.rank();
    if dim >= r {
        return Err(shape_err!(
            "concat: dim {dim} out of range for {:?}",
            first.shape()
        ));
    }
    let mut total = 0;
    for t in ts {
        let ok = t.rank() == r && (0..r).all(|i| i == dim || t.shape()[i] == first.shape()[i]);
        if !ok {
            return Err(shape_err!(
                "concat along {dim}: {:?} does not match {:?}",
                t.shape(),
                first.shape()
            ));
        }
        total += t.shape()[dim];
    }
    let mut shape = first.shape().to_vec();
    shape[dim] = total;
    match common_gpu("concat", ts)? {
        None => {
            let outer: usize = shape[..dim].iter().product();
            let inner: usize = shape[dim + 1..].iter().product();
            let mut out = Vec::with_capacity(shape.iter().product());
            let datas: Vec<Vec<f32>> = ts.iter().map(|t| t.to_vec_f32()).collect::<Result<_>>()?;
            for o in 0..outer {
                for (t, d) in ts.iter().zip(&datas) {
                    let len = t.shape()[dim] * inner;
                    out.extend_from_slice(&d[o * len..(o + 1) * len]);
                }
            }
            Tensor::from_f32(out, &shape, &Device::Cpu)
        }
        Some(_) => {
            let dt = first.dtype();
            let y = Tensor::empty(&shape, dt, first.device())?;
            let mut at = 0;
            for t in ts {
                let len = t.shape()[dim];
                let src = t.to_dtype(dt)?;
                crate::runtime::copy::copy_into(&src, &y.narrow(dim, at, len)?)?;
                at += len;
            }
            Ok(y)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(v: Vec<f32>, s: &[usize]) -> Tensor {
        Tensor::from_f32(v, s, &Device::Cpu).unwrap()
    }

    #[test]
    fn concat_middle_dim() {
        let a = t((0..6).map(|i| i as f32).collect(), &[2, 1, 3]);
        let b = t((10..22).map(|i| i as f32).collect(), &[2, 2, 3]);
        let y = concat(&[&a, &b], 1).unwrap();
        assert_eq!(y.shape(), &[2, 3, 3]);
        let v = y.to_vec_f32().unwrap();
        assert_eq!(&v[..9], &[0., 1., 2., 10., 11., 12., 13., 14., 15.]);
        assert_eq!(&v[9..12], &[3., 4., 5.]);
    }

    #[test]
    fn gated_residual_uses_per_batch_gate() {
        let x = t(vec![1.0; 8], &[2, 2, 2]);
        let y = t(vec![2.0; 8], &[2, 2, 2]);
        let g = t(vec![0.0, 1.0, 10.0, 100.0, 0.5, 0.5], &[2, 3]);
        let gate = g.narrow(1, 1, 2).unwrap(); // strided view [[1, 10], [0.5, 0.5]]
        let v = gated_residual(&x, &y, &gate).unwrap().to_vec_f32().unwrap();
        assert_eq!(v, vec![3.0, 21.0, 3.0, 21.0, 2.0, 2.0, 2.0, 2.0]);
    }

    #[test]
    fn bcast_and_scaled() {
        let a = t(vec![1.0, 2.0, 3.0, 4.0], &[2, 2]);
        let b = t(vec![10.0, 20.0], &[2]);
        assert_eq!(
            add_bcast(&a, &b).unwrap().to_vec_f32().unwrap(),
            vec![11.0, 22.0, 13.0, 24.0]
        );
        assert_eq!(
            add_scaled(&a, &a, -0.5).unwrap().to_vec_f32().unwrap(),
            vec![0.5, 1.0, 1.5, 2.0]
        );
        assert!(add(&a, &b).is_err());
    }
}
