//! Convolutions of the Wan2.1 VAE decoder on f32 activations (f32 weights, or bf16 weights
//! packed once for the tensor cores): the causal 3D conv (k_t = 3 with 2 cached/zero frames in
//! front, 3x3 spatial with zero padding 1), the per-frame 2D 3x3 conv, 1x1x1 convs, and the
//! `time_conv` (3x1x1). One entry,
//! [`conv3d`], covers all of them through the weight's shape; nearest-2x spatial upsampling
//! of the input, the upsample3d time interleave, a residual add and a clamp are fused options.
//!
//! CUDA: `kernels/conv3d.cu`, implicit GEMM (M = C_out, N = T*H*W, K = C_in*k_t*k_h*k_w):
//! [`ConvPrecision::F32`] on CUDA cores (exact f32, the reference precision) or
//! [`ConvPrecision::Bf16`] on tensor cores (operands rounded to bf16, f32 accumulation): a
//! pipelined kernel whose weights are prepared once as bf16 ([`PackedConvWeight`], tap-major K,
//! padded to its tiles); activations stay f32 in memory and are rounded to bf16 in shared
//! memory, so the norms, attention glue, caches and tiling are unchanged.
//! CPU: [`conv3d_cpu`], im2col per row strip + a blocked f32 GEMM, threaded over strips.
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::error::{Error, Result};
use crate::runtime::cast::round_to_bf16;
use crate::runtime::kernels::{
    Conv3d, Conv3dArgs, ConvCacheUpdate, ConvCacheUpdateArgs, ConvPackWeightBf16,
    ConvPackWeightBf16Args, DevPtr, DevPtrMut, InterleaveTime, InterleaveTimeArgs, LaunchCfg,
    UpsampleNearest2x, UpsampleNearest2xArgs,
};
use crate::runtime::{DType, Device, Tensor};
use crate::shape_err;

/// Arithmetic of the conv. On the CPU, `Bf16` rounds the operands (input, cached frames,
/// weights) to bf16 before the f32 GEMM: the reference of the tensor-core kernel, equal to it up
/// to summation order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ConvPrecision {
    /// f32 FMA on CUDA cores: matches the f32 reference up to summation order.
    #[default]
    F32,
    /// bf16 operands on tensor cores (mma.sync m16n8k16), f32 accumulation.
    Bf16,
}

/// Dynamic shared memory of `conv_bf16_mma` (3 stages of a bf16 64x40 A tile and an f32 128x40
/// B tile; `CONV_BF16_SMEM` in kernels/conv3d.cu).
pub const CONV_BF16_SMEM: u32 = 76_800;
/// Tile sizes of `conv_bf16_mma`: the packed weight is padded to them.
pub const BF16_BM: usize = 64;
pub const BF16_BN: usize = 128;
pub const BF16_BK: usize = 32;
/// At most this many taps (k_t * k_h * k_w) per conv on the bf16 path (its tap table).
pub const BF16_MAX_TAPS: usize = 32;

/// A conv weight prepared once for the bf16 tensor-core kernel: bf16 [co_pad, k_pad] with
/// co_pad = C_out rounded up to 64, k_pad = K rounded up to 32, zero padded, K ordered tap-major
/// (k = tap * C_in + ci, tap = (kt * k_h + kh) * k_w + kw). GPU only.
pub struct PackedConvWeight {
    /// bf16 [co_pad, k_pad] on the GPU.
    pub w: Tensor,
    /// The f32 weight's shape [C_out, C_in, k_t, k_h, k_w] (k_t = 1 for a 2D weight).
    pub shape: [usize; 5],
}

impl PackedConvWeight {
    /// Device bytes of the packed weight.
    pub fn bytes(&self) -> u64 {
        (self.w.elem_count() * 2) as u64
    }
}

/// A conv's weight as a decoder holds it: f32 (CPU, or the f32 GPU path; the bf16 path packs it
/// per call) or prepared once for the bf16 tensor cores.
pub enum ConvWeight {
    F32(Tensor),
    Bf16(PackedConvWeight),
}

impl ConvWeight {
    /// [C_out, C_in, k_t, k_h, k_w] (or the 4-D [C_out, C_in, k_h, k_w] of a 2D f32 weight).
    pub fn shape(&self) -> &[usize] {
        match self {
            ConvWeight::F32(t) => t.shape(),
            ConvWeight::Bf16(p) => &p.shape,
        }
    }
    /// Device (or host) bytes of the weight.
    pub fn bytes(&self) -> u64 {
        match self {
            ConvWeight::F32(t) => (t.elem_count() * 4) as u64,
            ConvWeight::Bf16(p) => p.bytes(),
        }
    }
}

/// (C_out, C_in, k_t, k_h, k_w) of a [Co, Ci, kt, kh, kw] or [Co, Ci, kh, kw] weight shape.
fn weight_dims(ws: &[usize]) -> Result<(usize, usize, usize, usize, usize)> {
    match ws.len() {
        5 => Ok((ws[0], ws[1], ws[2], ws[3], ws[4])),
        4 => Ok((ws[0], ws[1], 1, ws[2], ws[3])),
        _ => Err(shape_err!(
            "conv3d: weight must be [Co, Ci, kt, kh, kw] or [Co, Ci, kh, kw], got {ws:?}"
        )),
    }
}

/// Packs an f32 weight (on the GPU) for the bf16 kernel, once per layer.
pub fn pack_weight_bf16(w: &Tensor) -> Result<PackedConvWeight> {
    let (co, ci, kt, kh, kw) = weight_dims(w.shape())?;
    let taps = kt * kh * kw;
    if taps > BF16_MAX_TAPS {
        return Err(shape_err!(
            "conv3d bf16: {taps} taps (weight {:?}), the kernel takes at most {BF16_MAX_TAPS}",
            w.shape()
        ));
    }
    let g = match w.device() {
        Device::Cuda(g) => g.clone(),
        Device::Cpu => {
            return Err(Error::Other(
                "pack_weight_bf16: the packed weight is for the GPU kernel (the CPU rounds the f32 weight)"
                    .into(),
            ))
        }
    };
    let k = ci * taps;
    let (co_pad, k_pad) = (
        co.div_ceil(BF16_BM) * BF16_BM,
        k.div_ceil(BF16_BK) * BF16_BK,
    );
    if co_pad * k_pad > i32::MAX as usize || co_pad / BF16_BM > 65_535 {
        return Err(shape_err!(
            "conv3d bf16: weight {:?} is too large",
            w.shape()
        ));
    }
    let wf = f32_dense(w, "weight")?;
    let out = Tensor::empty(&[co_pad, k_pad], DType::BF16, w.device())?;
    let args = ConvPackWeightBf16Args {
        w: DevPtr::of(&wf)?,
        out: DevPtrMut::of(&out)?,
        co: co as i32,
        ci: ci as i32,
        taps: taps as i32,
        co_pad: co_pad as i32,
        k_pad: k_pad as i32,
    };
    // SAFETY: wf is dense f32 [co, ci * taps] and out (fresh) bf16 [co_pad, k_pad] on one GPU;
    // the kernel reads w only at m < co, k < ci * taps and writes each out element once.
    unsafe { ConvPackWeightBf16::KERNEL.launch(&g, LaunchCfg::grid_stride(co_pad * k_pad), args)? };
    Ok(PackedConvWeight {
        w: out,
        shape: [co, ci, kt, kh, kw],
    })
}

/// CPU reference of the packing: the bf16-rounded weights as f32 in the packed order
/// ([co_pad, k_pad], tap-major K, zero padded) for w [co, ci * taps].
pub fn pack_weight_bf16_cpu(w: &[f32], co: usize, ci: usize, taps: usize) -> Vec<f32> {
    let k = ci * taps;
    let (co_pad, k_pad) = (
        co.div_ceil(BF16_BM) * BF16_BM,
        k.div_ceil(BF16_BK) * BF16_BK,
    );
    let mut out = vec![0.0f32; co_pad * k_pad];
    for m in 0..co {
        for c in 0..ci {
            for t in 0..taps {
                out[m * k_pad + t * ci + c] =
                    crate::runtime::cast::round_bf16(w[m * k + c * taps + t]);
            }
        }
    }
    out
}

/// Options of one [`conv3d`] call. `Default` is a plain conv with zero causal padding.
#[derive(Clone, Copy, Default)]
pub struct ConvOpts<'a> {
    /// The `k_t - 1` frames in front of `x` ([B, C_in, k_t-1, H_in, W_in], e.g. the cache of the
    /// previous chunk). `None`: zeros (causal zero padding).
    pub ctx: Option<&'a Tensor>,
    /// Added to the output (same shape as the output), after the bias, before the clamp.
    pub residual: Option<&'a Tensor>,
    /// Run the conv on the nearest-2x (H, W) upsampled input (fused; the input is not materialised).
    pub upsample2x: bool,
    /// upsample3d time interleave: the conv's C_out = 2C channels at frame t become frames
    /// 2t (channels [0, C)) and 2t+1 (channels [C, 2C)) of a [B, C, 2T, H, W] output.
    pub interleave_time: bool,
    /// Clamp the output to [lo, hi] (last).
    pub clamp: Option<(f32, f32)>,
    /// The kernel's arithmetic (the CPU reference rounds its operands for `Bf16`).
    pub precision: ConvPrecision,
    /// GPU only: write the output frames into this tensor ([B, C_out, F, H, W], f32,
    /// contiguous, on x's GPU) from frame `t0` on, instead of a new tensor (a chunk straight
    /// into the video). No `residual` with it.
    pub out: Option<(&'a Tensor, usize)>,
}

/// Shapes of one conv, as the kernel sees them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvDims {
    pub b: usize,
    pub ci: usize,
    pub co: usize,
    /// Frames of `x` (= output frames before interleaving).
    pub t: usize,
    pub hin: usize,
    pub win: usize,
    pub kt: usize,
    pub kh: usize,
    pub kw: usize,
    /// 1 when the input is upsampled 2x (fused), else 0.
    pub up: usize,
    pub interleave: bool,
}

/// The convolution's multiply-adds for ops::trace: every output element (before the time
/// interleave) takes Cin x kt x kh x kw of them.
fn record_conv(d: &ConvDims) {
    let outs = (d.b * d.co * d.t) as f64 * (d.h() * d.w()) as f64;
    super::trace::record(super::trace::OpClass::Conv, 2.0 * outs * d.k() as f64);
}

impl ConvDims {
    pub fn h(&self) -> usize {
        self.hin << self.up
    }
    pub fn w(&self) -> usize {
        self.win << self.up
    }
    pub fn k(&self) -> usize {
        self.ci * self.kt * self.kh * self.kw
    }
    /// Output shape [B, C_out, T, H, W] (or [B, C_out/2, 2T, H, W] when interleaving).
    pub fn out_shape(&self) -> [usize; 5] {
        if self.interleave {
            [self.b, self.co / 2, 2 * self.t, self.h(), self.w()]
        } else {
            [self.b, self.co, self.t, self.h(), self.w()]
        }
    }
    pub fn ctx_shape(&self) -> [usize; 5] {
        [self.b, self.ci, self.kt - 1, self.hin, self.win]
    }
}

/// Checks shapes and returns the conv's dimensions. `w` is [C_out, C_in, k_t, k_h, k_w] (3D) or
/// [C_out, C_in, k_h, k_w] (per-frame 2D, k_t = 1); `x` is [B, C_in, T, H, W].
pub fn conv_dims(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, o: &ConvOpts) -> Result<ConvDims> {
    conv_dims_of(x, w.shape(), bias, o)
}

fn conv_dims_of(x: &Tensor, ws: &[usize], bias: Option<&Tensor>, o: &ConvOpts) -> Result<ConvDims> {
    let xs = x.shape();
    if xs.len() != 5 {
        return Err(shape_err!("conv3d: x must be [B, C, T, H, W], got {xs:?}"));
    }
    let (co, ci, kt, kh, kw) = weight_dims(ws)?;
    if ci != xs[1] {
        return Err(shape_err!(
            "conv3d: weight {ws:?} expects {ci} input channels, x is {xs:?}"
        ));
    }
    if kh % 2 == 0 || kw % 2 == 0 || kt == 0 {
        return Err(shape_err!(
            "conv3d: spatial kernel must be odd (same padding), weight {ws:?}"
        ));
    }
    if let Some(b) = bias {
        if b.shape() != [co] {
            return Err(shape_err!(
                "conv3d: bias {:?} does not match weight {ws:?}",
                b.shape()
            ));
        }
    }
    if o.interleave_time && co % 2 != 0 {
        return Err(shape_err!(
            "conv3d: time interleave needs an even C_out, weight {ws:?}"
        ));
    }
    let d = ConvDims {
        b: xs[0],
        ci,
        co,
        t: xs[2],
        hin: xs[3],
        win: xs[4],
        kt,
        kh,
        kw,
        up: o.upsample2x as usize,
        interleave: o.interleave_time,
    };
    if let Some(c) = o.ctx {
        if kt == 1 {
            return Err(shape_err!(
                "conv3d: a context of {:?} was given to a conv with k_t = 1",
                c.shape()
            ));
        }
        if c.shape() != d.ctx_shape() {
            return Err(shape_err!(
                "conv3d: context {:?} must be {:?} for x {xs:?} and weight {ws:?}",
                c.shape(),
                d.ctx_shape()
            ));
        }
    }
    if let Some(r) = o.residual {
        if r.shape() != d.out_shape() {
            return Err(shape_err!(
                "conv3d: residual {:?} must match the output {:?}",
                r.shape(),
                d.out_shape()
            ));
        }
    }
    Ok(d)
}

/// A borrowed conv weight: f32 or packed for the bf16 kernel. `&Tensor` and `&ConvWeight`
/// convert into it, so [`conv3d`] takes either.
#[derive(Clone, Copy)]
pub enum WRef<'a> {
    F32(&'a Tensor),
    Bf16(&'a PackedConvWeight),
}

impl<'a> From<&'a Tensor> for WRef<'a> {
    fn from(w: &'a Tensor) -> WRef<'a> {
        WRef::F32(w)
    }
}

impl<'a> From<&'a ConvWeight> for WRef<'a> {
    fn from(w: &'a ConvWeight) -> WRef<'a> {
        match w {
            ConvWeight::F32(t) => WRef::F32(t),
            ConvWeight::Bf16(p) => WRef::Bf16(p),
        }
    }
}

impl WRef<'_> {
    fn shape(&self) -> &[usize] {
        match self {
            WRef::F32(t) => t.shape(),
            WRef::Bf16(p) => &p.shape,
        }
    }
    fn device(&self) -> &Device {
        match self {
            WRef::F32(t) => t.device(),
            WRef::Bf16(p) => p.w.device(),
        }
    }
}

/// The conv, the one entry (see the module docs and [`ConvOpts`]): `w` is an f32 weight or a
/// prepared bf16 one ([`ConvWeight`] / [`PackedConvWeight`]: GPU, [`ConvPrecision::Bf16`]; an
/// f32 weight with `Bf16` precision is packed per call). Host tensors: the f32 CPU reference
/// ([`conv3d_cpu`]). Device tensors: the CUDA kernel (all operands f32, contiguous or made so).
/// Returns the output: a new tensor, or with [`ConvOpts::out`] the tensor written into.
pub fn conv3d<'w>(
    x: &Tensor,
    w: impl Into<WRef<'w>>,
    bias: Option<&Tensor>,
    o: &ConvOpts,
) -> Result<Tensor> {
    let w = w.into();
    let d = conv_dims_of(x, w.shape(), bias, o)?;
    record_conv(&d);
    if let Some((out, t0)) = o.out {
        check_out(x, o, &d, out, t0)?;
        conv3d_cuda(x, &w, bias, o, &d, out, out.dim(2), t0)?;
        return Ok(out.clone());
    }
    match x.device() {
        Device::Cpu => {
            let WRef::F32(w) = w else {
                return Err(Error::Other(
                    "conv3d: a packed bf16 weight on the CPU (the CPU takes the f32 weight)".into(),
                ));
            };
            let mut xv = x.cpu_f32()?;
            let mut wv = w.cpu_f32()?;
            let bv = bias.map(|b| b.cpu_f32()).transpose()?;
            let mut cv = o.ctx.map(|c| c.cpu_f32()).transpose()?;
            if o.precision == ConvPrecision::Bf16 {
                round_to_bf16(xv.to_mut());
                round_to_bf16(wv.to_mut());
                if let Some(c) = cv.as_mut() {
                    round_to_bf16(c.to_mut());
                }
            }
            let rv = o.residual.map(|r| r.cpu_f32()).transpose()?;
            let y = conv3d_cpu(
                &xv,
                cv.as_deref(),
                &wv,
                bv.as_deref(),
                rv.as_deref(),
                &d,
                o.clamp,
            );
            Tensor::from_f32(y, &d.out_shape(), &Device::Cpu)
        }
        Device::Cuda(_) => {
            let y = Tensor::empty(&d.out_shape(), DType::F32, x.device())?;
            let f = d.out_shape()[2];
            conv3d_cuda(x, &w, bias, o, &d, &y, f, 0)?;
            Ok(y)
        }
    }
}

/// [`ConvOpts::out`]: the output frames must fit into `out` at frame `t0`, on x's GPU.
fn check_out(x: &Tensor, o: &ConvOpts, d: &ConvDims, out: &Tensor, t0: usize) -> Result<()> {
    if !x.device().is_cuda() || out.device() != x.device() {
        return Err(Error::Other(
            "conv3d: ConvOpts::out needs x and out on the same GPU (on the CPU the conv returns a new tensor)".into(),
        ));
    }
    let os = d.out_shape();
    let s = out.shape();
    if s.len() != 5
        || s[0] != os[0]
        || s[1] != os[1]
        || s[3] != os[3]
        || s[4] != os[4]
        || t0 + os[2] > s[2]
    {
        return Err(shape_err!(
            "conv3d: output {os:?} does not fit into {s:?} at frame {t0}"
        ));
    }
    if out.dtype() != DType::F32 || !out.is_contiguous() {
        return Err(shape_err!(
            "conv3d: out must be a contiguous f32 tensor, got {:?} {}",
            s,
            out.dtype().name()
        ));
    }
    if o.residual.is_some() {
        return Err(Error::Other(
            "conv3d: a residual with ConvOpts::out is not supported".into(),
        ));
    }
    Ok(())
}

fn f32_dense(t: &Tensor, what: &str) -> Result<Tensor> {
    if t.dtype() != DType::F32 {
        return Err(shape_err!(
            "conv3d: {what} must be f32 on the GPU (the VAE activations are f32), got {} {:?}",
            t.dtype().name(),
            t.shape()
        ));
    }
    t.contiguous()
}

#[allow(clippy::too_many_arguments)]
fn conv3d_cuda(
    x: &Tensor,
    w: &WRef,
    bias: Option<&Tensor>,
    o: &ConvOpts,
    d: &ConvDims,
    y: &Tensor,
    out_frames: usize,
    t0: usize,
) -> Result<()> {
    let g = x.device().gpu().unwrap().clone();
    if w.device() != x.device() {
        return Err(Error::Other(format!(
            "conv3d: weight {:?} is on {:?}, x on {:?}",
            w.shape(),
            w.device(),
            x.device()
        )));
    }
    for t in [bias, o.ctx, o.residual].into_iter().flatten() {
        if t.device() != x.device() {
            return Err(Error::Other(format!(
                "conv3d: operand {:?} is on {:?}, x on {:?}",
                t.shape(),
                t.device(),
                x.device()
            )));
        }
    }
    let x = f32_dense(x, "x")?;
    let bias = bias.map(|b| f32_dense(b, "bias")).transpose()?;
    let ctx = o.ctx.map(|c| f32_dense(c, "context")).transpose()?;
    let res = o.residual.map(|r| f32_dense(r, "residual")).transpose()?;
    let n = d.t * d.h() * d.w();
    if n == 0 || d.co == 0 || d.b == 0 {
        return Ok(());
    }
    // gridDim.y = Co / 64 and gridDim.z = B are limited to 65535.
    // (The bf16 kernel's channel strides T*Hin*Win and (kt-1)*Hin*Win are int as well.)
    if n > i32::MAX as usize
        || (d.kt - 1) * d.hin * d.win > i32::MAX as usize
        || d.k() > i32::MAX as usize
        || d.co.div_ceil(64) > 65_535
        || d.b > 65_535
    {
        return Err(shape_err!("conv3d: {d:?} is too large for one launch"));
    }
    // The weight as the kernel reads it: f32 [co, K] or bf16 packed (prepared, or packed now).
    let packed_now;
    let (wt, bn, smem, kern) = match (o.precision, w) {
        (ConvPrecision::F32, WRef::F32(w)) => (f32_dense(w, "weight")?, 64, 0, Conv3d::F32_SIMT),
        (ConvPrecision::F32, WRef::Bf16(_)) => {
            return Err(Error::Other(
                "conv3d: f32 precision asked for a weight held only as packed bf16 (load the \
                 decoder with f32 precision)"
                    .into(),
            ))
        }
        (ConvPrecision::Bf16, wr) => {
            let p = match wr {
                WRef::Bf16(p) => *p,
                WRef::F32(w) => {
                    packed_now = pack_weight_bf16(w)?;
                    &packed_now
                }
            };
            (p.w.clone(), BF16_BN, CONV_BF16_SMEM, Conv3d::BF16_MMA)
        }
    };
    let grid = (n.div_ceil(bn) as u32, d.co.div_ceil(64) as u32, d.b as u32);
    let (clamp, lo, hi) = match o.clamp {
        Some((lo, hi)) => (1, lo, hi),
        None => (0, 0.0, 0.0),
    };
    let args = Conv3dArgs {
        x: DevPtr::of(&x)?,
        ctx: DevPtr::opt(ctx.as_ref())?,
        w: DevPtr::of(&wt)?,
        bias: DevPtr::opt(bias.as_ref())?,
        resid: DevPtr::opt(res.as_ref())?,
        y: DevPtrMut::of(y)?,
        b: d.b as i32,
        ci: d.ci as i32,
        co: d.co as i32,
        t: d.t as i32,
        hin: d.hin as i32,
        win: d.win as i32,
        kt: d.kt as i32,
        kh: d.kh as i32,
        kw: d.kw as i32,
        up: d.up as i32,
        interleave: d.interleave as i32,
        out_frames: out_frames as i32,
        out_t0: t0 as i32,
        do_clamp: clamp,
        lo,
        hi,
    };
    // SAFETY: x and the optional ctx / bias / residual are dense f32 of the shapes the callers
    // checked against `d` (conv_dims_of), y holds the `out_frames` output frames, all on x's
    // device (checked above); the weight is dense f32 [co, K] for conv_f32_simt, or the packed
    // bf16 [co_pad, k_pad] (co_pad = 64 * gridDim.y, k_pad = K rounded up to 32, at most 32 taps:
    // pack_weight_bf16) that conv_bf16_mma reads without bounds checks, with its 76,800 B of
    // dynamic shared memory; the sizes fit i32 and the grid (checked above).
    unsafe { kern.launch(&g, LaunchCfg::new(grid, (256, 1, 1), smem), args) }
}

// ----- small helpers ---------------------------------------------------------------------------

/// The next causal cache: the last `nc` frames of `cat_time(ctx or nc zero frames, x)`,
/// contiguous [B, C, nc, H, W]. This is what the next chunk's conv takes as `ctx`.
pub fn cache_update(ctx: Option<&Tensor>, x: &Tensor, nc: usize) -> Result<Tensor> {
    let xs = x.shape();
    if xs.len() != 5 {
        return Err(shape_err!(
            "cache_update: x must be [B, C, T, H, W], got {xs:?}"
        ));
    }
    let (b, c, t, hw) = (xs[0], xs[1], xs[2], xs[3] * xs[4]);
    let shape = [b, c, nc, xs[3], xs[4]];
    if let Some(cx) = ctx {
        if cx.shape() != shape {
            return Err(shape_err!(
                "cache_update: context {:?} must be {shape:?}",
                cx.shape()
            ));
        }
    }
    match x.device() {
        Device::Cpu => {
            let xv = x.cpu_f32()?;
            let cv = ctx.map(|c| c.cpu_f32()).transpose()?;
            Tensor::from_f32(
                cache_update_cpu(cv.as_deref(), &xv, b * c, t, nc, hw),
                &shape,
                &Device::Cpu,
            )
        }
        Device::Cuda(g) => {
            let x = f32_dense(x, "x")?;
            let cx = ctx.map(|c| f32_dense(c, "context")).transpose()?;
            let y = Tensor::empty(&shape, DType::F32, x.device())?;
            let total = b * c * nc * hw;
            if total == 0 {
                return Ok(y);
            }
            let args = ConvCacheUpdateArgs {
                ctx: DevPtr::opt(cx.as_ref())?,
                x: DevPtr::of(&x)?,
                out: DevPtrMut::of(&y)?,
                b: b as i32,
                c: c as i32,
                t: t as i32,
                nc: nc as i32,
                hw: hw as i64,
            };
            // SAFETY: x is dense [B, C, T, H, W], the context (or null) and y dense
            // [B, C, nc, H, W] (checked above), f32 on x's GPU.
            unsafe { ConvCacheUpdate::KERNEL.launch(g, LaunchCfg::grid_stride(total), args)? };
            Ok(y)
        }
    }
}

/// CPU reference of [`cache_update`] on [BC, *, HW] slices.
pub fn cache_update_cpu(
    ctx: Option<&[f32]>,
    x: &[f32],
    bc: usize,
    t: usize,
    nc: usize,
    hw: usize,
) -> Vec<f32> {
    let mut out = vec![0.0f32; bc * nc * hw];
    for i in 0..bc {
        for j in 0..nc {
            let s = t + j;
            let dst = &mut out[(i * nc + j) * hw..(i * nc + j + 1) * hw];
            if s >= nc {
                dst.copy_from_slice(&x[(i * t + s - nc) * hw..(i * t + s - nc + 1) * hw]);
            } else if let Some(c) = ctx {
                dst.copy_from_slice(&c[(i * nc + s) * hw..(i * nc + s + 1) * hw]);
            }
        }
    }
    out
}

/// Nearest 2x spatial upsampling of [B, C, T, H, W] (or any [.., H, W]).
pub fn upsample_nearest2x(x: &Tensor) -> Result<Tensor> {
    let s = x.shape();
    if s.len() < 2 {
        return Err(shape_err!("upsample_nearest2x: need [.., H, W], got {s:?}"));
    }
    let (h, w) = (s[s.len() - 2], s[s.len() - 1]);
    let f: usize = s[..s.len() - 2].iter().product();
    let mut shape = s.to_vec();
    shape[s.len() - 2] = 2 * h;
    shape[s.len() - 1] = 2 * w;
    match x.device() {
        Device::Cpu => Tensor::from_f32(
            upsample_nearest2x_cpu(&x.cpu_f32()?, f, h, w),
            &shape,
            &Device::Cpu,
        ),
        Device::Cuda(g) => {
            let x = f32_dense(x, "x")?;
            let y = Tensor::empty(&shape, DType::F32, x.device())?;
            if y.elem_count() == 0 {
                return Ok(y);
            }
            let args = UpsampleNearest2xArgs {
                x: DevPtr::of(&x)?,
                y: DevPtrMut::of(&y)?,
                bct: f as i64,
                h: h as i32,
                w: w as i32,
            };
            // SAFETY: x is dense [f, h, w] f32 and y (fresh) [f, 2h, 2w] on x's GPU.
            let cfg = LaunchCfg::grid_stride(y.elem_count());
            unsafe { UpsampleNearest2x::KERNEL.launch(g, cfg, args)? };
            Ok(y)
        }
    }
}

pub fn upsample_nearest2x_cpu(x: &[f32], f: usize, h: usize, w: usize) -> Vec<f32> {
    let mut y = vec![0.0f32; f * 4 * h * w];
    for fi in 0..f {
        for h2 in 0..2 * h {
            let src = &x[(fi * h + h2 / 2) * w..(fi * h + h2 / 2 + 1) * w];
            let dst = &mut y[(fi * 2 * h + h2) * 2 * w..(fi * 2 * h + h2 + 1) * 2 * w];
            for (w2, d) in dst.iter_mut().enumerate() {
                *d = src[w2 / 2];
            }
        }
    }
    y
}

/// The upsample3d time interleave on its own: [B, 2C, T, H, W] -> [B, C, 2T, H, W] with
/// frame 2t+s taking channels [s*C, (s+1)*C) of frame t.
pub fn interleave_time(x: &Tensor) -> Result<Tensor> {
    let s = x.shape();
    if s.len() != 5 || s[1] % 2 != 0 {
        return Err(shape_err!(
            "interleave_time: need [B, 2C, T, H, W], got {s:?}"
        ));
    }
    let (b, c, t, hw) = (s[0], s[1] / 2, s[2], s[3] * s[4]);
    let shape = [b, c, 2 * t, s[3], s[4]];
    match x.device() {
        Device::Cpu => Tensor::from_f32(
            interleave_time_cpu(&x.cpu_f32()?, b, c, t, hw),
            &shape,
            &Device::Cpu,
        ),
        Device::Cuda(g) => {
            let x = f32_dense(x, "x")?;
            let y = Tensor::empty(&shape, DType::F32, x.device())?;
            if y.elem_count() == 0 {
                return Ok(y);
            }
            let args = InterleaveTimeArgs {
                x: DevPtr::of(&x)?,
                y: DevPtrMut::of(&y)?,
                b: b as i32,
                c: c as i32,
                t: t as i32,
                hw: hw as i64,
            };
            // SAFETY: x is dense [B, 2C, T, H, W] f32 and y (fresh) [B, C, 2T, H, W] on x's GPU.
            let cfg = LaunchCfg::grid_stride(y.elem_count());
            unsafe { InterleaveTime::KERNEL.launch(g, cfg, args)? };
            Ok(y)
        }
    }
}

pub fn interleave_time_cpu(x: &[f32], b: usize, c: usize, t: usize, hw: usize) -> Vec<f32> {
    let mut y = vec![0.0f32; b * c * 2 * t * hw];
    for bb in 0..b {
        for s in 0..2 {
            for cc in 0..c {
                for tt in 0..t {
                    let src = ((bb * 2 * c + s * c + cc) * t + tt) * hw;
                    let dst = ((bb * c + cc) * 2 * t + 2 * tt + s) * hw;
                    y[dst..dst + hw].copy_from_slice(&x[src..src + hw]);
                }
            }
        }
    }
    y
}

// ----- CPU reference conv ----------------------------------------------------------------------

struct SendPtr(*mut f32);
// SAFETY: SendPtr carries the output pointer of conv3d_cpu into its worker threads, which
// write disjoint elements (each strip owns its output rows) while the output slice is
// borrowed mutably by the caller for the whole scope.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

/// f32 reference of [`conv3d`] on dense slices: `x` [B, Ci, T, Hin, Win], `ctx`
/// [B, Ci, kt-1, Hin, Win] (None: zeros), `w` [Co, Ci*kt*kh*kw], `bias` [Co], `resid` like the
/// output. im2col of a strip of output rows, then a blocked GEMM; strips run on all cores.
pub fn conv3d_cpu(
    x: &[f32],
    ctx: Option<&[f32]>,
    w: &[f32],
    bias: Option<&[f32]>,
    resid: Option<&[f32]>,
    d: &ConvDims,
    clamp: Option<(f32, f32)>,
) -> Vec<f32> {
    let (h, wd, k) = (d.h(), d.w(), d.k());
    let out_len: usize = d.out_shape().iter().product();
    let mut y = vec![0.0f32; out_len];
    if out_len == 0 {
        return y;
    }
    // Rows per strip: keep the im2col block around 4 MiB, at least one row.
    let rows = ((1usize << 20) / (k * wd).max(1)).clamp(1, h);
    let strips_per_frame = h.div_ceil(rows);
    let tasks = d.b * d.t * strips_per_frame;
    let next = AtomicUsize::new(0);
    let yp = SendPtr(y.as_mut_ptr());
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(tasks);
    let work = || {
        let yp = &yp;
        let mut col = vec![0.0f32; k * rows * wd];
        let mut acc = vec![0.0f32; d.co * rows * wd];
        loop {
            let task = next.fetch_add(1, Ordering::Relaxed);
            if task >= tasks {
                break;
            }
            let strip = task % strips_per_frame;
            let bt = task / strips_per_frame;
            let (b, t) = (bt / d.t, bt % d.t);
            let h0 = strip * rows;
            let nr = rows.min(h - h0);
            let n = nr * wd;
            im2col_strip(x, ctx, d, b, t, h0, nr, &mut col[..k * n]);
            gemm_rows(w, &col[..k * n], &mut acc[..d.co * n], d.co, k, n);
            // Epilogue: bias, residual, clamp, (interleaved) store.
            let plane = h * wd;
            for co in 0..d.co {
                let (c_out, t_out, c_tot, t_tot) = if d.interleave {
                    let c2 = d.co / 2;
                    (co % c2, 2 * t + co / c2, c2, 2 * d.t)
                } else {
                    (co, t, d.co, d.t)
                };
                let base = ((b * c_tot + c_out) * t_tot + t_out) * plane + h0 * wd;
                let bv = bias.map_or(0.0, |bb| bb[co]);
                for j in 0..n {
                    let mut v = acc[co * n + j] + bv;
                    if let Some(r) = resid {
                        v += r[base + j];
                    }
                    if let Some((lo, hi)) = clamp {
                        v = v.max(lo).min(hi);
                    }
                    // SAFETY: every (b, co, t, pixel) is written by exactly one task.
                    unsafe { *yp.0.add(base + j) = v };
                }
            }
        }
    };
    if threads <= 1 {
        work();
    } else {
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(work);
            }
        });
    }
    y
}

/// col[k][r*W + w] for output rows h0..h0+nr of frame t, batch b.
#[allow(clippy::too_many_arguments)] // the conv's geometry, as the kernel takes it
fn im2col_strip(
    x: &[f32],
    ctx: Option<&[f32]>,
    d: &ConvDims,
    b: usize,
    t: usize,
    h0: usize,
    nr: usize,
    col: &mut [f32],
) {
    let (h, wd) = (d.h(), d.w());
    let plane_in = d.hin * d.win;
    let n = nr * wd;
    let (ph, pw) = ((d.kh / 2) as isize, (d.kw / 2) as isize);
    let nc = d.kt - 1;
    for ci in 0..d.ci {
        for kt in 0..d.kt {
            let ts = t as isize + kt as isize - nc as isize;
            let src: Option<&[f32]> = if ts >= 0 {
                let f = (b * d.ci + ci) * d.t + ts as usize;
                Some(&x[f * plane_in..(f + 1) * plane_in])
            } else {
                ctx.map(|c| {
                    let f = (b * d.ci + ci) * nc + (nc as isize + ts) as usize;
                    &c[f * plane_in..(f + 1) * plane_in]
                })
            };
            for kh in 0..d.kh {
                for kw in 0..d.kw {
                    let kidx = ((ci * d.kt + kt) * d.kh + kh) * d.kw + kw;
                    let dst = &mut col[kidx * n..(kidx + 1) * n];
                    let Some(src) = src else {
                        dst.fill(0.0);
                        continue;
                    };
                    let dh = kh as isize - ph;
                    let dw = kw as isize - pw;
                    for r in 0..nr {
                        let hs = (h0 + r) as isize + dh;
                        let row = &mut dst[r * wd..(r + 1) * wd];
                        if hs < 0 || hs >= h as isize {
                            row.fill(0.0);
                            continue;
                        }
                        let srow = &src
                            [(hs as usize >> d.up) * d.win..(hs as usize >> d.up) * d.win + d.win];
                        if d.up == 0 && dw == 0 {
                            row.copy_from_slice(srow);
                            continue;
                        }
                        for (wo, v) in row.iter_mut().enumerate() {
                            let ws = wo as isize + dw;
                            *v = if ws < 0 || ws >= wd as isize {
                                0.0
                            } else {
                                srow[ws as usize >> d.up]
                            };
                        }
                    }
                }
            }
        }
    }
}

/// c[M][N] = a[M][K] * b[K][N] (row-major, c overwritten). Blocked over K and N; 4 rows of `a`
/// share each pass over a row of `b`.
pub fn gemm_rows(a: &[f32], b: &[f32], c: &mut [f32], m: usize, k: usize, n: usize) {
    const KB: usize = 128;
    const NB: usize = 512;
    c[..m * n].fill(0.0);
    for n0 in (0..n).step_by(NB) {
        let nb = NB.min(n - n0);
        for k0 in (0..k).step_by(KB) {
            let kb = KB.min(k - k0);
            let mut i = 0;
            while i + 4 <= m {
                let (c01, c23) = c[i * n..(i + 4) * n].split_at_mut(2 * n);
                let (c0, c1) = c01.split_at_mut(n);
                let (c2, c3) = c23.split_at_mut(n);
                let (c0, c1, c2, c3) = (
                    &mut c0[n0..n0 + nb],
                    &mut c1[n0..n0 + nb],
                    &mut c2[n0..n0 + nb],
                    &mut c3[n0..n0 + nb],
                );
                for kk in k0..k0 + kb {
                    let (a0, a1, a2, a3) = (
                        a[i * k + kk],
                        a[(i + 1) * k + kk],
                        a[(i + 2) * k + kk],
                        a[(i + 3) * k + kk],
                    );
                    let br = &b[kk * n + n0..kk * n + n0 + nb];
                    for j in 0..nb {
                        let bv = br[j];
                        c0[j] += a0 * bv;
                        c1[j] += a1 * bv;
                        c2[j] += a2 * bv;
                        c3[j] += a3 * bv;
                    }
                }
                i += 4;
            }
            while i < m {
                let cr = &mut c[i * n + n0..i * n + n0 + nb];
                for kk in k0..k0 + kb {
                    let av = a[i * k + kk];
                    let br = &b[kk * n + n0..kk * n + n0 + nb];
                    for j in 0..nb {
                        cr[j] += av * br[j];
                    }
                }
                i += 1;
            }
        }
    }
}

/// Direct (naive) conv, for tests of [`conv3d_cpu`]: same arguments, no im2col.
pub fn conv3d_naive(
    x: &[f32],
    ctx: Option<&[f32]>,
    w: &[f32],
    bias: Option<&[f32]>,
    d: &ConvDims,
) -> Vec<f32> {
    let (h, wd) = (d.h(), d.w());
    let mut y = vec![0.0f32; d.out_shape().iter().product()];
    let nc = d.kt - 1;
    for b in 0..d.b {
        for co in 0..d.co {
            for t in 0..d.t {
                for oh in 0..h {
                    for ow in 0..wd {
                        let mut s = bias.map_or(0.0f64, |bb| bb[co] as f64);
                        for ci in 0..d.ci {
                            for kt in 0..d.kt {
                                let ts = t as isize + kt as isize - nc as isize;
                                for kh in 0..d.kh {
                                    for kw in 0..d.kw {
                                        let hs = oh as isize + kh as isize - (d.kh / 2) as isize;
                                        let ws = ow as isize + kw as isize - (d.kw / 2) as isize;
                                        if hs < 0 || ws < 0 || hs >= h as isize || ws >= wd as isize
                                        {
                                            continue;
                                        }
                                        let sp =
                                            (hs as usize >> d.up) * d.win + (ws as usize >> d.up);
                                        let v = if ts >= 0 {
                                            x[((b * d.ci + ci) * d.t + ts as usize) * d.hin * d.win
                                                + sp]
                                        } else if let Some(c) = ctx {
                                            c[((b * d.ci + ci) * nc + (nc as isize + ts) as usize)
                                                * d.hin
                                                * d.win
                                                + sp]
                                        } else {
                                            0.0
                                        };
                                        let wv = w[co * d.k()
                                            + ((ci * d.kt + kt) * d.kh + kh) * d.kw
                                            + kw];
                                        s += wv as f64 * v as f64;
                                    }
                                }
                            }
                        }
                        let (c_out, t_out, c_tot, t_tot) = if d.interleave {
                            (co % (d.co / 2), 2 * t + co / (d.co / 2), d.co / 2, 2 * d.t)
                        } else {
                            (co, t, d.co, d.t)
                        };
                        y[((b * c_tot + c_out) * t_tot + t_out) * h * wd + oh * wd + ow] = s as f32;
                    }
                }
            }
        }
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rnd(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    #[allow(clippy::too_many_arguments)]
    fn dims(
        b: usize,
        ci: usize,
        co: usize,
        t: usize,
        h: usize,
        w: usize,
        k: (usize, usize, usize),
        up: usize,
        il: bool,
    ) -> ConvDims {
        ConvDims {
            b,
            ci,
            co,
            t,
            hin: h,
            win: w,
            kt: k.0,
            kh: k.1,
            kw: k.2,
            up,
            interleave: il,
        }
    }

    #[test]
    fn im2col_gemm_matches_naive() {
        for (i, d) in [
            dims(2, 5, 7, 3, 6, 9, (3, 3, 3), 0, false),
            dims(1, 4, 6, 2, 5, 4, (3, 1, 1), 0, true),
            dims(1, 6, 5, 2, 3, 4, (1, 3, 3), 1, false),
            dims(2, 3, 9, 1, 4, 4, (1, 1, 1), 0, false),
        ]
        .iter()
        .enumerate()
        {
            let x = rnd(d.b * d.ci * d.t * d.hin * d.win, 1 + i as u64);
            let ctx = rnd(d.b * d.ci * (d.kt - 1) * d.hin * d.win, 7 + i as u64);
            let w = rnd(d.co * d.k(), 3 + i as u64);
            let bias = rnd(d.co, 5 + i as u64);
            for c in [None, Some(&ctx[..])] {
                let c = if d.kt == 1 { None } else { c };
                let a = conv3d_cpu(&x, c, &w, Some(&bias), None, d, None);
                let e = conv3d_naive(&x, c, &w, Some(&bias), d);
                assert!(max_diff(&a, &e) < 1e-5, "case {i}: {}", max_diff(&a, &e));
            }
        }
    }

    /// Decoding chunk by chunk with the 2-frame cache equals one causal conv over the whole
    /// sequence with 2 zero frames in front.
    #[test]
    fn chunked_with_cache_equals_full_sequence() {
        let (b, ci, co, h, w) = (1, 3, 4, 5, 6);
        let chunks = [1usize, 1, 2, 3, 1];
        let tt: usize = chunks.iter().sum();
        let x = rnd(b * ci * tt * h * w, 11);
        let wt = rnd(co * ci * 27, 12);
        let bias = rnd(co, 13);
        let xt = Tensor::from_f32(x.clone(), &[b, ci, tt, h, w], &Device::Cpu).unwrap();
        let wt = Tensor::from_f32(wt, &[co, ci, 3, 3, 3], &Device::Cpu).unwrap();
        let bt = Tensor::from_f32(bias, &[co], &Device::Cpu).unwrap();
        let full = conv3d(&xt, &wt, Some(&bt), &ConvOpts::default())
            .unwrap()
            .to_vec_f32()
            .unwrap();
        let mut cache: Option<Tensor> = None;
        let mut outs = vec![Vec::new(); co];
        let mut t0 = 0;
        for &n in &chunks {
            let xc = xt.narrow(2, t0, n).unwrap().contiguous().unwrap();
            let y = conv3d(
                &xc,
                &wt,
                Some(&bt),
                &ConvOpts {
                    ctx: cache.as_ref(),
                    ..Default::default()
                },
            )
            .unwrap();
            cache = Some(cache_update(cache.as_ref(), &xc, 2).unwrap());
            let yv = y.to_vec_f32().unwrap();
            for c in 0..co {
                outs[c].extend_from_slice(&yv[c * n * h * w..(c + 1) * n * h * w]);
            }
            t0 += n;
        }
        let chunked: Vec<f32> = outs.concat();
        assert!(max_diff(&full, &chunked) < 1e-6);
    }

    #[test]
    fn fused_upsample_and_interleave_match_explicit() {
        let (b, c, t, h, w) = (1, 4, 2, 3, 5);
        let x =
            Tensor::from_f32(rnd(b * c * t * h * w, 21), &[b, c, t, h, w], &Device::Cpu).unwrap();
        let w2 = Tensor::from_f32(rnd(3 * c * 9, 22), &[3, c, 3, 3], &Device::Cpu).unwrap();
        let fused = conv3d(
            &x,
            &w2,
            None,
            &ConvOpts {
                upsample2x: true,
                ..Default::default()
            },
        )
        .unwrap();
        let up = upsample_nearest2x(&x).unwrap();
        let expl = conv3d(&up, &w2, None, &ConvOpts::default()).unwrap();
        assert_eq!(fused.shape(), &[1, 3, 2, 6, 10]);
        assert!(max_diff(&fused.to_vec_f32().unwrap(), &expl.to_vec_f32().unwrap()) < 1e-6);

        let wt =
            Tensor::from_f32(rnd(2 * c * c * 3, 23), &[2 * c, c, 3, 1, 1], &Device::Cpu).unwrap();
        let fused = conv3d(
            &x,
            &wt,
            None,
            &ConvOpts {
                interleave_time: true,
                ..Default::default()
            },
        )
        .unwrap();
        let expl = interleave_time(&conv3d(&x, &wt, None, &ConvOpts::default()).unwrap()).unwrap();
        assert_eq!(fused.shape(), &[1, c, 4, h, w]);
        assert!(max_diff(&fused.to_vec_f32().unwrap(), &expl.to_vec_f32().unwrap()) < 1e-6);
    }

    #[test]
    fn residual_and_clamp() {
        let x = Tensor::from_f32(rnd(2 * 3 * 2 * 4, 31), &[1, 2, 3, 2, 4], &Device::Cpu).unwrap();
        let w = Tensor::from_f32(rnd(2 * 2, 32), &[2, 2, 1, 1, 1], &Device::Cpu).unwrap();
        let plain = conv3d(&x, &w, None, &ConvOpts::default())
            .unwrap()
            .to_vec_f32()
            .unwrap();
        let r = Tensor::from_f32(rnd(plain.len(), 33), &[1, 2, 3, 2, 4], &Device::Cpu).unwrap();
        let y = conv3d(
            &x,
            &w,
            None,
            &ConvOpts {
                residual: Some(&r),
                clamp: Some((-0.5, 0.5)),
                ..Default::default()
            },
        )
        .unwrap()
        .to_vec_f32()
        .unwrap();
        let rv = r.to_vec_f32().unwrap();
        for i in 0..y.len() {
            assert!((y[i] - (plain[i] + rv[i]).clamp(-0.5, 0.5)).abs() < 1e-6);
        }
    }
}
