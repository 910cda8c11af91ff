//! LayerNorm (optionally with affine), LayerNorm + adaLN modulation, RMSNorm. Statistics in f32.
//! Kernels: kernels/ops.cu (`layer_norm_*`, `ln_modulate_*`, `rms_norm_*`), one block per row;
//! `qk_rms_norm_*` (the attention's per-head q/k norm on a fused QKV output, in place), one
//! warp per (row, head).
use crate::error::Result;
use crate::ops::{collapsed_row_stride, common_gpu, float_dtype, grid_rows, host, par_rows};
use crate::runtime::kernels::{
    DevPtr, DevPtrMut, LaunchCfg, LayerNorm, LayerNormArgs, LnModulate, LnModulateArgs, QkRmsNorm,
    QkRmsNormArgs, RmsNorm, RmsNormArgs,
};
use crate::runtime::{DType, Tensor};
use crate::shape_err;

fn rows_cols(op: &str, x: &Tensor) -> Result<(usize, usize)> {
    let sh = x.shape();
    if sh.is_empty() || sh[sh.len() - 1] == 0 {
        return Err(shape_err!("{op}: input {sh:?} has no last dim"));
    }
    let c = sh[sh.len() - 1];
    Ok((x.elem_count() / c, c))
}

fn check_vec(op: &str, what: &str, t: Option<&Tensor>, c: usize) -> Result<()> {
    if let Some(t) = t {
        if t.shape() != [c] {
            return Err(shape_err!(
                "{op}: {what} is {:?}, expected [{c}]",
                t.shape()
            ));
        }
    }
    Ok(())
}

/// Per-row mean and 1/sqrt(var + eps) (biased variance, two-pass, f32).
#[inline]
fn ln_stats(r: &[f32], eps: f32) -> (f32, f32) {
    let n = r.len() as f32;
    let mean = r.iter().sum::<f32>() / n;
    let var = r.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
    (mean, 1.0 / (var + eps).sqrt())
}

/// Optional gain/bias on the device as f32 (the kernels read f32 parameters).
fn param_f32(t: Option<&Tensor>) -> Result<Option<Tensor>> {
    t.map(|t| t.contiguous()?.to_dtype(DType::F32)).transpose()
}

/// `LN(x) * w + b` over the last dim; `w`, `b` optional [C].
pub fn layer_norm(x: &Tensor, w: Option<&Tensor>, b: Option<&Tensor>, eps: f32) -> Result<Tensor> {
    let (rows, c) = rows_cols("layer_norm", x)?;
    check_vec("layer_norm", "weight", w, c)?;
    check_vec("layer_norm", "bias", b, c)?;
    match common_gpu("layer_norm", &[x])? {
        None => {
            let wv = w.map(|t| t.to_vec_f32()).transpose()?;
            let bv = b.map(|t| t.to_vec_f32()).transpose()?;
            let y = layer_norm_cpu(&x.cpu_f32()?, wv.as_deref(), bv.as_deref(), c, eps);
            host(y, x.shape())
        }
        Some(gpu) => {
            let x = x.contiguous()?;
            let y = Tensor::empty(x.shape(), x.dtype(), x.device())?;
            let (w, b) = (param_f32(w)?, param_f32(b)?);
            if rows == 0 {
                return Ok(y);
            }
            let k = LayerNorm::for_dtype("layer_norm", float_dtype("layer_norm", &x)?)?;
            let cfg = LaunchCfg::new(grid_rows("layer_norm", rows)?, (256, 1, 1), 0);
            let args = LayerNormArgs {
                x: DevPtr::of(&x)?,
                y: DevPtrMut::of(&y)?,
                w: DevPtr::opt(w.as_ref())?,
                b: DevPtr::opt(b.as_ref())?,
                rows: rows as i32,
                c: c as i32,
                eps,
            };
            // SAFETY: x (contiguous) and y (fresh, same shape) hold rows x c elements; w and b
            // are [c] f32 (check_vec, param_f32) or null; grid_rows bounds rows to i32.
            unsafe { k.launch(gpu, cfg, args)? };
            Ok(y)
        }
    }
}

/// CPU reference of [`layer_norm`] on rows of `c` values.
pub fn layer_norm_cpu(
    x: &[f32],
    w: Option<&[f32]>,
    b: Option<&[f32]>,
    c: usize,
    eps: f32,
) -> Vec<f32> {
    let mut y = vec![0f32; x.len()];
    par_rows(&mut y, c, |r0, out| {
        for (i, o) in out.chunks_mut(c).enumerate() {
            let r = &x[(r0 + i) * c..(r0 + i + 1) * c];
            let (mean, inv) = ln_stats(r, eps);
            for j in 0..c {
                let mut v = (r[j] - mean) * inv;
                if let Some(w) = w {
                    v *= w[j];
                }
                if let Some(b) = b {
                    v += b[j];
                }
                o[j] = v;
            }
        }
    });
    y
}

/// adaLN: `LN(x) * (1 + scale) + shift` (no affine). x [B, S, C]; shift, scale [B, C], which
/// may be strided views (e.g. chunks of the modulation vector, last dim dense).
pub fn layer_norm_modulate(x: &Tensor, shift: &Tensor, scale: &Tensor, eps: f32) -> Result<Tensor> {
    let sh = x.shape();
    if sh.len() != 3 {
        return Err(shape_err!(
            "layer_norm_modulate: x must be [B, S, C], got {sh:?}"
        ));
    }
    let (bsz, s, c) = (sh[0], sh[1], sh[2]);
    for (what, t) in [("shift", shift), ("scale", scale)] {
        if t.shape() != [bsz, c] {
            return Err(shape_err!(
                "layer_norm_modulate: {what} is {:?}, expected [{bsz}, {c}]",
                t.shape()
            ));
        }
    }
    match common_gpu("layer_norm_modulate", &[x, shift, scale])? {
        None => {
            let xv = x.cpu_f32()?;
            let shv = shift.to_vec_f32()?;
            let scv = scale.to_vec_f32()?;
            let mut y = vec![0f32; bsz * s * c];
            par_rows(&mut y, c, |r0, out| {
                for (i, o) in out.chunks_mut(c).enumerate() {
                    let row = r0 + i;
                    let bi = row / s.max(1);
                    let r = &xv[row * c..(row + 1) * c];
                    let (mean, inv) = ln_stats(r, eps);
                    for j in 0..c {
                        o[j] = (r[j] - mean) * inv * (1.0 + scv[bi * c + j]) + shv[bi * c + j];
                    }
                }
            });
            host(y, sh)
        }
        Some(gpu) => {
            let x = x.contiguous()?;
            let dt = float_dtype("layer_norm_modulate", &x)?;
            let (shift, scale) = (shift.to_dtype(dt)?, scale.to_dtype(dt)?);
            let y = Tensor::empty(sh, dt, x.device())?;
            if bsz * s == 0 || c == 0 {
                return Ok(y);
            }
            let k = LnModulate::for_dtype("layer_norm_modulate", dt)?;
            let cfg = LaunchCfg::new(grid_rows("layer_norm_modulate", bsz * s)?, (256, 1, 1), 0);
            let args = LnModulateArgs {
                x: DevPtr::of(&x)?,
                y: DevPtrMut::of(&y)?,
                shift: DevPtr::of(&shift)?,
                shl: shift.row_stride()? as i64,
                scale: DevPtr::of(&scale)?,
                scl: scale.row_stride()? as i64,
                s: s as i32,
                c: c as i32,
                eps,
            };
            // SAFETY: x (contiguous) and y (fresh) are [B, S, C]; shift and scale are [B, C]
            // views of dtype dt with dense rows at their row strides (row_stride checks); all
            // on `gpu` (common_gpu); grid_rows bounds B S to i32.
            unsafe { k.launch(gpu, cfg, args)? };
            Ok(y)
        }
    }
}

/// CPU reference of [`rms_norm`] on rows of `c` values.
pub fn rms_norm_cpu(x: &[f32], w: Option<&[f32]>, c: usize, eps: f32) -> Vec<f32> {
    let mut y = vec![0f32; x.len()];
    par_rows(&mut y, c, |r0, out| {
        for (i, o) in out.chunks_mut(c).enumerate() {
            let r = &x[(r0 + i) * c..(r0 + i + 1) * c];
            let ms = r.iter().map(|v| v * v).sum::<f32>() / c as f32;
            let inv = 1.0 / (ms + eps).sqrt();
            for j in 0..c {
                o[j] = r[j] * inv * w.map_or(1.0, |w| w[j]);
            }
        }
    });
    y
}

/// RMSNorm over the last dim: `x * rsqrt(mean(x^2) + eps)` (f32), rounded to x's dtype, then
/// `* w` (diffusers / T5 semantics). For q/k norm view x as [.., H, 64].
pub fn rms_norm(x: &Tensor, w: Option<&Tensor>, eps: f32) -> Result<Tensor> {
    let (rows, c) = rows_cols("rms_norm", x)?;
    check_vec("rms_norm", "weight", w, c)?;
    match common_gpu("rms_norm", &[x])? {
        None => {
            let wv = w.map(|t| t.to_vec_f32()).transpose()?;
            host(
                rms_norm_cpu(&x.cpu_f32()?, wv.as_deref(), c, eps),
                x.shape(),
            )
        }
        Some(gpu) => {
            let x = x.contiguous()?;
            let y = Tensor::empty(x.shape(), x.dtype(), x.device())?;
            let w = param_f32(w)?;
            if rows == 0 {
                return Ok(y);
            }
            let k = RmsNorm::for_dtype("rms_norm", float_dtype("rms_norm", &x)?)?;
            let block = (if c <= 128 { 64 } else { 256 }, 1, 1);
            let cfg = LaunchCfg::new(grid_rows("rms_norm", rows)?, block, 0);
            let args = RmsNormArgs {
                x: DevPtr::of(&x)?,
                y: DevPtrMut::of(&y)?,
                w: DevPtr::opt(w.as_ref())?,
                rows: rows as i32,
                c: c as i32,
                eps,
            };
            // SAFETY: x (contiguous) and y (fresh, same shape) hold rows x c elements; w is
            // [c] f32 (check_vec, param_f32) or null; grid_rows bounds rows to i32.
            unsafe { k.launch(gpu, cfg, args)? };
            Ok(y)
        }
    }
}

/// One side (q or k) of [`qk_rms_norm`]: `heads` heads of `head_dim` starting at column `col`
/// of the fused projection output, scaled by `gain` ([head_dim]) if given.
#[derive(Clone, Copy, Debug)]
pub struct QkHeads<'a> {
    pub col: usize,
    pub heads: usize,
    pub gain: Option<&'a Tensor>,
}

/// The attention's per-head RMS norm of q and k inside a fused QKV projection output `y`
/// [.., W] (last dim dense, rows may be strided): each head of `head_dim` values of `q` and of
/// `k` is normalised like [`rms_norm`] (`T(x * rsqrt(mean(x^2) + eps)) * gain`, f32 statistics);
/// every other column (v) keeps its values. `q.heads` may be 0 (text keys of the last block).
///
/// On the GPU this is one launch that normalises `y`'s memory in place and returns `y` (a copy
/// only if its rows cannot be viewed at one stride): `y` must be a tensor nothing else still
/// reads with its old values (a fresh GEMM output). The CPU reference returns a new tensor.
pub fn qk_rms_norm(y: Tensor, q: QkHeads, k: QkHeads, head_dim: usize, eps: f32) -> Result<Tensor> {
    let (rows, w) = rows_cols("qk_rms_norm", &y)?;
    if head_dim == 0 {
        return Err(shape_err!("qk_rms_norm: head_dim 0"));
    }
    for (what, side) in [("q", &q), ("k", &k)] {
        if side.col + side.heads * head_dim > w {
            return Err(shape_err!(
                "qk_rms_norm: {what} heads {} x {head_dim} at column {} overrun rows of {w}",
                side.heads,
                side.col
            ));
        }
        check_vec("qk_rms_norm", what, side.gain, head_dim)?;
    }
    let (qa, qb) = (q.col, q.col + q.heads * head_dim);
    let (ka, kb) = (k.col, k.col + k.heads * head_dim);
    if qa < kb && ka < qb {
        return Err(shape_err!(
            "qk_rms_norm: q columns {qa}..{qb} and k columns {ka}..{kb} overlap"
        ));
    }
    let mut ts = vec![&y];
    ts.extend(q.gain);
    ts.extend(k.gain);
    let gpu = common_gpu("qk_rms_norm", &ts)?.cloned();
    drop(ts);
    match gpu {
        None => {
            let mut xv = y.cpu_f32()?.into_owned();
            let gq = q.gain.map(|t| t.to_vec_f32()).transpose()?;
            let gk = k.gain.map(|t| t.to_vec_f32()).transpose()?;
            let sides = [(q, gq), (k, gk)];
            par_rows(&mut xv, w, |_, out| {
                for row in out.chunks_mut(w) {
                    for (side, g) in &sides {
                        for h in 0..side.heads {
                            let c0 = side.col + h * head_dim;
                            let r = &mut row[c0..c0 + head_dim];
                            // As rms_norm's reference, on one head.
                            let ms = r.iter().map(|v| v * v).sum::<f32>() / head_dim as f32;
                            let inv = 1.0 / (ms + eps).sqrt();
                            for (j, v) in r.iter_mut().enumerate() {
                                *v = *v * inv * g.as_ref().map_or(1.0, |g| g[j]);
                            }
                        }
                    }
                }
            });
            host(xv, y.shape())
        }
        Some(gpu) => {
            let dt = float_dtype("qk_rms_norm", &y)?;
            // In place needs one row stride; otherwise normalise a contiguous copy.
            let y = match collapsed_row_stride(y.shape(), y.strides()) {
                Some(_) => y,
                None => y.contiguous()?,
            };
            let ld = collapsed_row_stride(y.shape(), y.strides()).unwrap_or(w);
            let warps = rows * (q.heads + k.heads);
            if warps == 0 {
                return Ok(y);
            }
            let (gq, gk) = (param_f32(q.gain)?, param_f32(k.gain)?);
            let to_i32 = |v: usize| {
                i32::try_from(v).map_err(|_| shape_err!("qk_rms_norm: {v} does not fit i32"))
            };
            let kern = QkRmsNorm::for_dtype("qk_rms_norm", dt)?;
            const WARPS_PER_BLOCK: usize = 8;
            let cfg = LaunchCfg::new(
                grid_rows("qk_rms_norm", warps.div_ceil(WARPS_PER_BLOCK))?,
                (32 * WARPS_PER_BLOCK as u32, 1, 1),
                0,
            );
            let args = QkRmsNormArgs {
                x: DevPtrMut::of(&y)?,
                ld: ld as i64,
                rows: rows as i64,
                q_col: to_i32(q.col)?,
                hq: to_i32(q.heads)?,
                wq: DevPtr::opt(gq.as_ref())?,
                k_col: to_i32(k.col)?,
                hk: to_i32(k.heads)?,
                wk: DevPtr::opt(gk.as_ref())?,
                hd: to_i32(head_dim)?,
                eps,
            };
            // SAFETY: y holds `rows` rows of w elements at row stride ld (collapsed_row_stride,
            // or a contiguous copy), and the q and k heads lie inside a row (checked above) and
            // do not overlap, so each (row, head) warp reads and writes only its own head; the
            // gains are [head_dim] f32 (check_vec, param_f32) or null; grid_rows bounds the
            // block count; everything is on `gpu` (common_gpu).
            unsafe { kern.launch(&gpu, cfg, args)? };
            Ok(y)
        }
    }
}

/// Wan VAE channel RMS norm: `x / max(‖x‖₂ over C, 1e-12) * sqrt(C) * gamma` (then SiLU if
/// asked) for x [B, C, ...] in f32. Kernel `vae_channel_rms_norm_f32` (kernels/conv3d.cu),
/// CPU reference [`crate::ops::vae_glue::channel_rms_norm_cpu`].
pub fn channel_rms_norm(x: &Tensor, gamma: &Tensor, silu: bool) -> Result<Tensor> {
    crate::ops::vae_glue::channel_rms_norm(x, gamma, silu)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Device;

    #[test]
    fn layer_norm_modulate_equals_layer_norm_then_affine() {
        let (b, s, c) = (2, 3, 5);
        let x: Vec<f32> = (0..b * s * c)
            .map(|i| ((i * 37) % 11) as f32 - 5.0)
            .collect();
        let xt = Tensor::from_f32(x, &[b, s, c], &Device::Cpu).unwrap();
        let mod6: Vec<f32> = (0..b * 2 * c).map(|i| (i as f32) * 0.1 - 0.5).collect();
        let m = Tensor::from_f32(mod6.clone(), &[b, 2 * c], &Device::Cpu).unwrap();
        let (shift, scale) = (m.narrow(1, 0, c).unwrap(), m.narrow(1, c, c).unwrap());
        let y = layer_norm_modulate(&xt, &shift, &scale, 1e-6)
            .unwrap()
            .to_vec_f32()
            .unwrap();
        let ln = layer_norm(&xt, None, None, 1e-6)
            .unwrap()
            .to_vec_f32()
            .unwrap();
        for i in 0..b * s * c {
            let (bi, j) = (i / (s * c), i % c);
            let want = ln[i] * (1.0 + mod6[bi * 2 * c + c + j]) + mod6[bi * 2 * c + j];
            assert!((y[i] - want).abs() < 1e-5);
        }
        // Normalised rows: mean 0, variance 1.
        let r = &ln[0..c];
        assert!(r.iter().sum::<f32>().abs() < 1e-5);
        assert!((r.iter().map(|v| v * v).sum::<f32>() / c as f32 - 1.0).abs() < 1e-4);
    }

    /// The CPU reference of the fused q/k norm is rms_norm on each q and k head (a strided
    /// view as input); the v columns are copied unchanged.
    #[test]
    fn qk_rms_norm_is_rms_norm_per_head() {
        let (rows, heads, hd) = (4, 2, 6);
        let d = heads * hd;
        let wide = 3 * d + 2;
        let x: Vec<f32> = (0..rows * wide)
            .map(|i| ((i * 37) % 23) as f32 * 0.25 - 2.5)
            .collect();
        let xt = Tensor::from_f32(x, &[1, rows, wide], &Device::Cpu).unwrap();
        let y = xt.narrow(2, 1, 3 * d).unwrap();
        let gq = Tensor::from_f32(
            (0..hd).map(|j| 0.5 + j as f32).collect(),
            &[hd],
            &Device::Cpu,
        )
        .unwrap();
        let gk = Tensor::from_f32(
            (0..hd).map(|j| 2.0 - j as f32 * 0.1).collect(),
            &[hd],
            &Device::Cpu,
        )
        .unwrap();
        let out = qk_rms_norm(
            y.clone(),
            QkHeads {
                col: 0,
                heads,
                gain: Some(&gq),
            },
            QkHeads {
                col: d,
                heads,
                gain: Some(&gk),
            },
            hd,
            1e-6,
        )
        .unwrap();
        assert_eq!(out.shape(), y.shape());
        for (col, g) in [(0, &gq), (d, &gk)] {
            let part = y.narrow(2, col, d).unwrap().contiguous().unwrap();
            let want = rms_norm(&part.reshape(&[1, rows, heads, hd]).unwrap(), Some(g), 1e-6)
                .unwrap()
                .to_vec_f32()
                .unwrap();
            let got = out.narrow(2, col, d).unwrap().to_vec_f32().unwrap();
            assert_eq!(got, want);
        }
        let v_in = y.narrow(2, 2 * d, d).unwrap().to_vec_f32().unwrap();
        assert_eq!(out.narrow(2, 2 * d, d).unwrap().to_vec_f32().unwrap(), v_in);
        // Overlapping q and k columns, or heads past the row, are errors.
        let bad = |q: QkHeads, k: QkHeads| qk_rms_norm(y.clone(), q, k, hd, 1e-6).is_err();
        assert!(bad(
            QkHeads {
                col: 0,
                heads,
                gain: None
            },
            QkHeads {
                col: hd,
                heads,
                gain: None
            }
        ));
        assert!(bad(
            QkHeads {
                col: 0,
                heads: 0,
                gain: None
            },
            QkHeads {
                col: 2 * d + 1,
                heads,
                gain: None
            }
        ));
    }

    #[test]
    fn rms_norm_unit_rms() {
        let x = Tensor::from_f32(vec![3.0, 4.0, 0.0, 0.0], &[1, 4], &Device::Cpu).unwrap();
        let w = Tensor::from_f32(vec![1.0, 2.0, 1.0, 1.0], &[4], &Device::Cpu).unwrap();
        let y = rms_norm(&x, Some(&w), 0.0).unwrap().to_vec_f32().unwrap();
        assert!((y[0] - 1.2).abs() < 1e-6 && (y[1] - 3.2).abs() < 1e-6);
    }
}
