//! The non-conv ops the VAE decoder needs, in one place: channel RMS norm (+SiLU) and the
//! mid-block single-head spatial attention, in f32.
//!
//! GPU: small kernels in `kernels/conv3d.cu` (`vae_*`); the attention's two GEMMs
//! (S^T = K^T Q and O = V P^T, per frame) run through the implicit-GEMM conv kernel as 1x1 convs,
//! so they get the same f32 / bf16-tensor-core choice as the convs. This file is the one place
//! to switch to the shared `ops::norm::channel_rms_norm` / `ops::gemm::matmul` +
//! `ops::act::softmax_last` once those support f32 on the device.
use crate::error::Result;
use crate::ops::conv::{conv3d, ConvOpts, ConvPrecision};
use crate::runtime::cast::round_bf16;
use crate::runtime::kernels::{
    DevPtr, DevPtrMut, LaunchCfg, VaeChannelRmsNorm, VaeChannelRmsNormArgs, VaeCopy2d,
    VaeCopy2dArgs, VaeSoftmaxDim0, VaeSoftmaxDim0Args,
};
use crate::runtime::{DType, Device, Tensor};
use crate::shape_err;

fn dense_f32(t: &Tensor, what: &str) -> Result<Tensor> {
    if t.dtype() != DType::F32 {
        return Err(shape_err!(
            "vae {what}: expected f32 on the GPU, got {} {:?}",
            t.dtype().name(),
            t.shape()
        ));
    }
    t.contiguous()
}

/// y[yoff + r*ysr + c*ysc] = x[xoff + r*xsr + c*xsc] on the GPU.
#[allow(clippy::too_many_arguments)]
fn copy2d(
    x: &Tensor,
    y: &Tensor,
    r: usize,
    c: usize,
    xo: (usize, usize, usize),
    yo: (usize, usize, usize),
) -> Result<()> {
    let g = x.device().gpu().unwrap();
    let args = VaeCopy2dArgs {
        x: DevPtr::of(x)?,
        y: DevPtrMut::of(y)?,
        r: r as i64,
        cc: c as i64,
        xoff: xo.0 as i64,
        xsr: xo.1 as i64,
        xsc: xo.2 as i64,
        yoff: yo.0 as i64,
        ysr: yo.1 as i64,
        ysc: yo.2 as i64,
    };
    // SAFETY: x and y are dense f32 on one GPU, distinct buffers; the caller (spatial_attention)
    // derives r, c and the offsets and strides from their shapes, so every index lies inside.
    unsafe { VaeCopy2d::KERNEL.launch(g, LaunchCfg::grid_stride(r * c), args) }
}

/// `x / max(‖x‖₂ over C, 1e-12) * sqrt(C) * gamma` (then SiLU if `silu`) for x [B, C, T, H, W].
pub fn channel_rms_norm(x: &Tensor, gamma: &Tensor, silu: bool) -> Result<Tensor> {
    match x.device() {
        Device::Cpu => {
            let s = x.shape();
            if s.len() != 5 || gamma.elem_count() != s[1] {
                return Err(shape_err!(
                    "vae channel_rms_norm: x {s:?}, gamma {:?}",
                    gamma.shape()
                ));
            }
            let y = channel_rms_norm_cpu(
                &x.cpu_f32()?,
                &gamma.cpu_f32()?,
                s[0],
                s[1],
                s[2] * s[3] * s[4],
                silu,
            );
            Tensor::from_f32(y, s, &Device::Cpu)
        }
        Device::Cuda(g) => {
            let s = x.shape();
            if s.len() < 2 || gamma.elem_count() != s[1] {
                return Err(shape_err!(
                    "vae channel_rms_norm: x {s:?}, gamma {:?}",
                    gamma.shape()
                ));
            }
            let x = dense_f32(x, "channel_rms_norm")?;
            let gm = dense_f32(gamma, "channel_rms_norm gamma")?;
            let y = Tensor::empty(s, DType::F32, x.device())?;
            let (b, c) = (s[0], s[1]);
            let n: usize = s[2..].iter().product();
            if b * n == 0 {
                return Ok(y);
            }
            let args = VaeChannelRmsNormArgs {
                x: DevPtr::of(&x)?,
                gamma: DevPtr::of(&gm)?,
                y: DevPtrMut::of(&y)?,
                b: b as i32,
                c: c as i32,
                n: n as i64,
                silu: silu as i32,
            };
            // SAFETY: x (dense) and y (fresh) are [B, C, n] f32, gamma holds C (checked above).
            let cfg = LaunchCfg::grid_stride(b * n);
            unsafe { VaeChannelRmsNorm::KERNEL.launch(g, cfg, args)? };
            Ok(y)
        }
    }
}

/// Host reference on [B, C, N] slices.
pub fn channel_rms_norm_cpu(
    x: &[f32],
    gamma: &[f32],
    b: usize,
    c: usize,
    n: usize,
    silu: bool,
) -> Vec<f32> {
    let mut y = vec![0.0f32; x.len()];
    let scale = (c as f32).sqrt();
    let mut ss = vec![0.0f32; n];
    for bb in 0..b {
        let xb = &x[bb * c * n..(bb + 1) * c * n];
        ss.fill(0.0);
        for cc in 0..c {
            for (s, v) in ss.iter_mut().zip(&xb[cc * n..(cc + 1) * n]) {
                *s += v * v;
            }
        }
        for s in ss.iter_mut() {
            *s = scale / s.sqrt().max(1e-12);
        }
        let yb = &mut y[bb * c * n..(bb + 1) * c * n];
        for cc in 0..c {
            let g = gamma[cc];
            for ((o, v), s) in yb[cc * n..(cc + 1) * n]
                .iter_mut()
                .zip(&xb[cc * n..(cc + 1) * n])
                .zip(&ss)
            {
                let u = v * s * g;
                *o = if silu { u / (1.0 + (-u).exp()) } else { u };
            }
        }
    }
    y
}

/// Single-head attention per frame over the spatial tokens. `qkv` is [B, 3C, T, H, W] (channel
/// order q | k | v, q already scaled by 1/sqrt(C)); returns softmax(qᵀk) applied to v as
/// [B, C, T, H, W]. `precision` applies to the two GEMMs on the GPU.
pub fn spatial_attention(qkv: &Tensor, precision: ConvPrecision) -> Result<Tensor> {
    let s = qkv.shape();
    if s.len() != 5 || s[1] % 3 != 0 {
        return Err(shape_err!(
            "vae attention: qkv must be [B, 3C, T, H, W], got {s:?}"
        ));
    }
    let (b, c, t, h, w) = (s[0], s[1] / 3, s[2], s[3], s[4]);
    // Per frame: one head of width C over the H W positions.
    super::trace::record(
        super::trace::OpClass::Attention,
        4.0 * (b * t * c) as f64 * (h * w) as f64 * (h * w) as f64,
    );
    match qkv.device() {
        Device::Cpu => {
            let bf16 = precision == ConvPrecision::Bf16;
            let y = spatial_attention_cpu(&qkv.cpu_f32()?, b, c, t, h * w, bf16);
            Tensor::from_f32(y, &[b, c, t, h, w], &Device::Cpu)
        }
        Device::Cuda(g) => {
            let dev = qkv.device();
            let qkv = dense_f32(qkv, "attention")?;
            let n = h * w;
            let out = Tensor::empty(&[b, c, t, h, w], DType::F32, dev)?;
            let ts = t * n; // channel stride
            let o = |prec| ConvOpts {
                precision: prec,
                ..Default::default()
            };
            for bb in 0..b {
                for tt in 0..t {
                    let base = bb * 3 * c * ts + tt * n;
                    // q [C, N] (conv input), k^T [N, C] and v [C, N] (conv weights).
                    let q = Tensor::empty(&[1, c, 1, 1, n], DType::F32, dev)?;
                    let kt = Tensor::empty(&[n, c, 1, 1, 1], DType::F32, dev)?;
                    let v = Tensor::empty(&[c, n, 1, 1, 1], DType::F32, dev)?;
                    copy2d(&qkv, &q, c, n, (base, ts, 1), (0, n, 1))?;
                    copy2d(&qkv, &kt, n, c, (base + c * ts, 1, ts), (0, c, 1))?;
                    copy2d(&qkv, &v, c, n, (base + 2 * c * ts, ts, 1), (0, n, 1))?;
                    // S^T [N_keys, N_queries] = k^T q, softmax over the keys (dim 0).
                    let st = conv3d(&q, &kt, None, &o(precision))?;
                    let args = VaeSoftmaxDim0Args {
                        s: DevPtrMut::of(&st)?,
                        j: n as i32,
                        i: n as i32,
                    };
                    // SAFETY: st is a fresh [N, N] f32 conv output, contiguous, on `g`.
                    let cfg = LaunchCfg::grid_stride(n);
                    unsafe { VaeSoftmaxDim0::KERNEL.launch(g, cfg, args)? };
                    // O [C, N_queries] = v P^T: a 1x1 conv over N_keys input channels.
                    let oc = conv3d(&st, &v, None, &o(precision))?;
                    copy2d(&oc, &out, c, n, (0, n, 1), (bb * c * ts + tt * n, ts, 1))?;
                }
            }
            Ok(out)
        }
    }
}

/// Host reference of [`spatial_attention`] on a dense [B, 3C, T, N] slice. `bf16`: the operands
/// of the two GEMMs (q, k; probabilities, v) rounded to bf16 like the tensor-core path.
pub fn spatial_attention_cpu(
    qkv: &[f32],
    b: usize,
    c: usize,
    t: usize,
    n: usize,
    bf16: bool,
) -> Vec<f32> {
    let r = |x: f32| if bf16 { round_bf16(x) } else { x };
    let mut y = vec![0.0f32; b * c * t * n];
    let at = |bb: usize, ch: usize, tt: usize, i: usize| qkv[((bb * 3 * c + ch) * t + tt) * n + i];
    let mut qt = vec![0.0f32; n * c];
    let mut kt = vec![0.0f32; n * c];
    let mut vt = vec![0.0f32; n * c];
    let mut p = vec![0.0f32; n];
    let mut o = vec![0.0f32; c];
    for bb in 0..b {
        for tt in 0..t {
            for ch in 0..c {
                for i in 0..n {
                    qt[i * c + ch] = r(at(bb, ch, tt, i));
                    kt[i * c + ch] = r(at(bb, c + ch, tt, i));
                    vt[i * c + ch] = r(at(bb, 2 * c + ch, tt, i));
                }
            }
            for i in 0..n {
                let q = &qt[i * c..(i + 1) * c];
                let mut mx = f32::NEG_INFINITY;
                for j in 0..n {
                    let k = &kt[j * c..(j + 1) * c];
                    let d: f32 = q.iter().zip(k).map(|(a, b)| a * b).sum();
                    p[j] = d;
                    mx = mx.max(d);
                }
                let mut sum = 0.0f32;
                for v in p.iter_mut() {
                    *v = (*v - mx).exp();
                    sum += *v;
                }
                o.fill(0.0);
                for j in 0..n {
                    let pj = r(p[j] / sum);
                    for (oc, vc) in o.iter_mut().zip(&vt[j * c..(j + 1) * c]) {
                        *oc += pj * vc;
                    }
                }
                for ch in 0..c {
                    y[((bb * c + ch) * t + tt) * n + i] = o[ch];
                }
            }
        }
    }
    y
}
