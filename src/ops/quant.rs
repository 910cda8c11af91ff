//! INT8 weight-only quantization (W8A16): symmetric scales per output channel (or per group of
//! `group` input channels), `w ≈ q * scale` with q in [-127, 127].
//!
//! GEMM: the CPU reference dequantises on the fly (f32). On the GPU (`kernels/gemm_int8.cu`):
//! a tensor-core W8A16 GEMM (int8 tiles in shared memory, converted to bf16/f16 while the mma
//! fragments are built, f32 accumulation, per-channel scale + bias + activation in the
//! epilogue), a one-warp-per-column kernel for M <= 16 rows, and a fallback that dequantises
//! into a dense weight for cuBLASLt (f32 activations, K % 8 != 0, `CONTENTV_INT8_GEMM=dequant`).
use crate::error::{Error, Result};
use crate::ops::gemm::{linear_act, Act};
use crate::ops::{common_gpu, flat_rows, host, par_rows};
use crate::runtime::kernels::{
    DequantI8, DequantI8Args, DevPtr, DevPtrMut, LaunchCfg, W8a16, W8a16Args,
};
use crate::runtime::{DType, Linear, Tensor, Weight};
use crate::shape_err;

pub use crate::runtime::int8::{dequantize, quantize_host, quantize_per_channel};

/// An INT8 weight from a dense [N, K] tensor (quantized on the host, placed on `t`'s device).
pub fn quantize_weight(t: &Tensor, group: Option<usize>) -> Result<Weight> {
    let sh = t.shape();
    if sh.len() != 2 {
        return Err(shape_err!("quantize: weight must be [N, K], got {sh:?}"));
    }
    let (n, k) = (sh[0], sh[1]);
    if let Some(g) = group {
        if g == 0 || k % g != 0 {
            return Err(Error::Input(format!(
                "--group {g} must divide the input width {k}"
            )));
        }
    }
    let (q, s) = quantize_per_channel(&t.to_vec_f32()?, n, k, group);
    let groups = s.len() / n;
    let dev = t.device();
    let q = Tensor::from_i8(q, &[n, k], dev)?;
    let scale = if groups == 1 {
        Tensor::from_f32(s, &[n], dev)?
    } else {
        Tensor::from_f32(s, &[n, groups], dev)?
    };
    Ok(Weight::Int8 { q, scale })
}

fn check(x: &Tensor, q: &Tensor, scale: &Tensor) -> Result<(usize, usize, usize)> {
    let (qs, ss) = (q.shape(), scale.shape());
    if q.dtype() != DType::I8 || qs.len() != 2 {
        return Err(shape_err!(
            "linear_int8: q must be [N, K] i8, got {qs:?} {}",
            q.dtype().name()
        ));
    }
    let (n, k) = (qs[0], qs[1]);
    let groups = if ss.len() == 1 {
        1
    } else {
        ss.get(1).copied().unwrap_or(0)
    };
    if ss.first() != Some(&n) || ss.len() > 2 || groups == 0 || k % groups != 0 {
        return Err(shape_err!(
            "linear_int8: scale {ss:?} does not fit weight {qs:?} ([N] or [N, K/group])"
        ));
    }
    if x.shape().last() != Some(&k) {
        return Err(shape_err!(
            "linear_int8: input {:?} does not end in {k}",
            x.shape()
        ));
    }
    Ok((n, k, groups))
}

/// Which GPU kernel computes an INT8 linear (the CPU always runs the f32 reference).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Int8Kernel {
    /// `Gemv` for M <= 16 rows, else `Mma`; `Dequant` where those do not apply (f32
    /// activations, K or the group size not a multiple of 8) or when
    /// `CONTENTV_INT8_GEMM=dequant` is set.
    Auto,
    /// Tensor-core W8A16 GEMM (`w8a16_mma_*`): bf16/f16 activations, K % 8 == 0.
    Mma,
    /// One warp per output column (`w8a16_gemv_*`): M <= 16, bf16/f16, K % 8 == 0.
    Gemv,
    /// Dequantise to a dense weight in the activation dtype, then the cuBLASLt GEMM.
    Dequant,
}

/// Largest M the GEMV kernel takes (`GEMV_MAX_M` in kernels/gemm_int8.cu).
pub const GEMV_MAX_M: usize = 16;

/// Dynamic shared memory of `w8a16_mma_*` (3 stages of a 128x32 activation tile, a 128x32
/// int8 tile and, group-wise, 128x4 scales; padded rows). Same as the static_assert in the kernel.
/// Dynamic shared memory of the W8A16 tensor-core kernels (the static kernel gate checks it).
pub fn w8a16_smem_bytes(grouped: bool) -> u32 {
    if grouped {
        52_224
    } else {
        46_080
    }
}

/// `act(x dequant(q)^T + b)`: x [.., K], q [N, K] i8, scale [N] or [N, K/group] f32.
pub fn linear_int8(
    x: &Tensor,
    q: &Tensor,
    scale: &Tensor,
    bias: Option<&Tensor>,
    act: Act,
) -> Result<Tensor> {
    linear_int8_with(x, q, scale, bias, act, Int8Kernel::Auto)
}

/// [`linear_int8`] with a chosen GPU kernel (tests and benchmarks compare them).
pub fn linear_int8_with(
    x: &Tensor,
    q: &Tensor,
    scale: &Tensor,
    bias: Option<&Tensor>,
    act: Act,
    kernel: Int8Kernel,
) -> Result<Tensor> {
    let (n, k, groups) = check(x, q, scale)?;
    if let Some(b) = bias {
        if b.shape() != [n] {
            return Err(shape_err!(
                "linear_int8: bias {:?} does not match weight {:?}",
                b.shape(),
                q.shape()
            ));
        }
    }
    let m = x.elem_count() / k.max(1);
    let mut out_shape = x.shape().to_vec();
    *out_shape.last_mut().unwrap() = n;
    let mut ts = vec![x, q, scale];
    if let Some(b) = bias {
        ts.push(b);
    }
    match common_gpu("linear_int8", &ts)? {
        None => {
            let xv = x.cpu_f32()?;
            let qv: Vec<i8> = q.to_bytes()?.into_iter().map(|b| b as i8).collect();
            let sv = scale.to_vec_f32()?;
            let bv = bias.map(|b| b.to_vec_f32()).transpose()?;
            let g = k / groups;
            let mut y = vec![0f32; m * n];
            par_rows(&mut y, n, |r0, out| {
                let mut wrow = vec![0f32; k];
                for j in 0..n {
                    // Dequantise one weight row, then dot it with every row of this chunk.
                    for (c, w) in wrow.iter_mut().enumerate() {
                        *w = qv[j * k + c] as f32 * sv[j * groups + c / g];
                    }
                    for (i, o) in out.chunks_mut(n).enumerate() {
                        let xr = &xv[(r0 + i) * k..(r0 + i + 1) * k];
                        let z =
                            crate::ops::gemm::dot(xr, &wrow) + bv.as_ref().map_or(0.0, |b| b[j]);
                        o[j] = act.apply(z);
                    }
                }
            });
            host(y, &out_shape)
        }
        Some(gpu) => {
            let dt = x.dtype();
            let half = matches!(dt, DType::BF16 | DType::F16);
            let kernel = match kernel {
                Int8Kernel::Auto => {
                    static FORCED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
                    let forced = *FORCED.get_or_init(|| {
                        std::env::var("CONTENTV_INT8_GEMM").is_ok_and(|v| v == "dequant")
                    });
                    if forced || !half || k % 8 != 0 || (k / groups) % 8 != 0 {
                        Int8Kernel::Dequant
                    } else if m <= GEMV_MAX_M {
                        Int8Kernel::Gemv
                    } else {
                        Int8Kernel::Mma
                    }
                }
                other => other,
            };
            if kernel == Int8Kernel::Dequant {
                return linear_int8_dequant(x, q, scale, bias, act, n, k, groups);
            }
            if !half {
                return Err(Error::Other(format!(
                    "linear_int8: the W8A16 kernels take bf16/f16 activations, got {}",
                    dt.name()
                )));
            }
            if k % 8 != 0 {
                return Err(shape_err!(
                    "linear_int8: the W8A16 kernels need K % 8 == 0, got K = {k}"
                ));
            }
            if groups > 1 && (k / groups) % 8 != 0 {
                return Err(shape_err!(
                    "linear_int8: group size {} must be a multiple of 8",
                    k / groups
                ));
            }
            if kernel == Int8Kernel::Gemv && m > GEMV_MAX_M {
                return Err(shape_err!(
                    "linear_int8: the GEMV kernel takes at most {GEMV_MAX_M} rows, got {m}"
                ));
            }
            let y = Tensor::empty(&out_shape, dt, x.device())?;
            if m == 0 || n == 0 {
                return Ok(y);
            }
            // x as [M, K] rows of one stride, 16-B aligned with lda % 8 == 0 (else a dense copy).
            let mut x2 = flat_rows(x)?;
            if x2.dev_ptr()? % 16 != 0 || x2.row_stride()? % 8 != 0 {
                x2 = dense_copy(&x2)?;
            }
            let lda = if m == 1 { k } else { x2.row_stride()? };
            let mut q2 = q.contiguous()?;
            if q2.dev_ptr()? % 8 != 0 {
                q2 = dense_copy(&q2)?;
            }
            let s2 = scale.contiguous()?.to_dtype(DType::F32)?;
            let b2 = bias
                .map(|b| b.contiguous()?.to_dtype(DType::F32))
                .transpose()?;
            let args = W8a16Args {
                x: DevPtr::of(&x2)?,
                lda: lda as i64,
                q: DevPtr::of(&q2)?,
                scale: DevPtr::of(&s2)?,
                groups: groups as i32,
                bias: DevPtr::opt(b2.as_ref())?,
                y: DevPtrMut::of(&y)?,
                m: m as i32,
                n: n as i32,
                k: k as i32,
                act: act.code(),
            };
            if m > i32::MAX as usize || n > i32::MAX as usize || k > i32::MAX as usize {
                return Err(shape_err!(
                    "linear_int8: [{m}, {k}] x [{n}, {k}] is too large"
                ));
            }
            let bf = dt == DType::BF16;
            let (kern, cfg) = if kernel == Int8Kernel::Gemv {
                let kern = if bf {
                    W8a16::GEMV_BF16
                } else {
                    W8a16::GEMV_F16
                };
                let cfg = LaunchCfg::new((n.div_ceil(8) as u32, 1, 1), (256, 1, 1), 0);
                (kern, cfg)
            } else {
                let kern = match (bf, groups > 1) {
                    (true, false) => W8a16::MMA_BF16,
                    (false, false) => W8a16::MMA_F16,
                    (true, true) => W8a16::MMA_GROUP_BF16,
                    (false, true) => W8a16::MMA_GROUP_F16,
                };
                let grid_y = m.div_ceil(128);
                if grid_y > 65_535 {
                    return Err(shape_err!(
                        "linear_int8: {m} rows exceed the grid (at most {} rows)",
                        65_535 * 128
                    ));
                }
                let grid = (n.div_ceil(128) as u32, grid_y as u32, 1);
                (
                    kern,
                    LaunchCfg::new(grid, (256, 1, 1), w8a16_smem_bytes(groups > 1)),
                )
            };
            // SAFETY: x2 is [m, k] rows at stride lda (flat_rows; 16-byte aligned, lda % 8 == 0,
            // else copied), q2 [n, k] i8 contiguous and 8-byte aligned, s2 [n, groups] f32, b2
            // [n] f32 or null, y fresh [m, n] of dt; the GEMV kernel only for m <= GEMV_MAX_M;
            // K and the group size are multiples of 8 (checked above); all on `gpu`.
            unsafe { kern.launch(gpu, cfg, args)? };
            Ok(y)
        }
    }
}

/// The fallback GPU path: dequantise into a dense weight of the activation dtype, then the
/// dense linear (cuBLASLt).
#[allow(clippy::too_many_arguments)]
fn linear_int8_dequant(
    x: &Tensor,
    q: &Tensor,
    scale: &Tensor,
    bias: Option<&Tensor>,
    act: Act,
    n: usize,
    k: usize,
    groups: usize,
) -> Result<Tensor> {
    let gpu = x
        .device()
        .gpu()
        .ok_or_else(|| Error::Other("linear_int8_dequant: not a GPU tensor".into()))?;
    let dt = x.dtype();
    let w = Tensor::empty(&[n, k], dt, x.device())?;
    let kern = DequantI8::for_dtype("linear_int8", dt)?;
    let scale = scale.contiguous()?.to_dtype(DType::F32)?;
    let q = q.contiguous()?;
    let args = DequantI8Args {
        q: DevPtr::of(&q)?,
        s: DevPtr::of(&scale)?,
        w: DevPtrMut::of(&w)?,
        n: n as i64,
        k: k as i64,
        g: groups as i64,
    };
    // SAFETY: q [n, k] i8 and w (fresh) [n, k] contiguous, scale [n, groups] f32 (the caller
    // checked the shapes), all on `gpu` (x's device).
    unsafe { kern.launch(gpu, LaunchCfg::grid_stride(n * k), args)? };
    let bias = bias.map(|b| b.to_dtype(dt)).transpose()?;
    linear_act(
        x,
        &Linear {
            weight: Weight::Dense(w),
            bias,
        },
        act,
    )
}

/// A fresh, dense (pool-aligned) copy of a device tensor.
fn dense_copy(t: &Tensor) -> Result<Tensor> {
    let c = t.contiguous()?;
    let out = Tensor::empty(c.shape(), c.dtype(), c.device())?;
    out.copy_from(&c)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_within_half_a_step() {
        let (n, k) = (5, 64);
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 7919) % 1001) as f32 / 500.0 - 1.0)
            .collect();
        for group in [None, Some(16)] {
            let (q, s) = quantize_per_channel(&w, n, k, group);
            let d = dequantize(&q, &s, n, k);
            let g = group.unwrap_or(k);
            for i in 0..n * k {
                let sc = s[(i / k) * (k / g) + (i % k) / g];
                assert!((w[i] - d[i]).abs() <= sc / 2.0 + 1e-7, "{i}");
            }
        }
        let (q, s) = quantize_per_channel(&[0.0; 8], 2, 4, None);
        assert!(q.iter().all(|&v| v == 0) && s.iter().all(|&v| v == 0.0));
    }
}
