//! INT8 weight-only quantization (W8A16): symmetric scales per output channel (or per group of
//! `group` input channels), `w ≈ q * scale` with q in [-127, 127].
//!
//! GEMM: the CPU reference dequantises on the fly (f32). On the GPU (`kernels/gemm_int8.cu`),
//! chosen by [`choose_int8_kernel`]:
//! - M >= [`INT8_CROSSOVER_M`] (the video tokens): one vectorised kernel dequantises the weight
//!   into a pooled buffer of the activation dtype, then the dense cuBLASLt GEMM runs at its full
//!   bf16 rate (`Int8Kernel::Dequant`). Also the fallback for f32 activations, K % 8 != 0.
//! - 16 < M < the crossover: the fused tensor-core W8A16 GEMM (`Mma`): int8 tiles in shared
//!   memory, converted once per CTA into a bf16/f16 tile by byte permutes and magic-number
//!   arithmetic (no I2F), f32 accumulation, per-channel scale + bias + activation in the
//!   epilogue.
//! - M <= 16 (text encoders, batch-1): one warp per output column (`Gemv`).
//!
//! The crossover is a roofline estimate ([`int8_times`], docs/perf.md), not a measurement:
//! `CONTENTV_INT8_CROSSOVER_M=<rows>` overrides it, `CONTENTV_INT8_GEMM=dequant|mma|gemv`
//! forces a kernel where it applies, and scripts/gpu-check.sh sweeps M on both kernels so the
//! first GPU run gives the real crossover.
use crate::error::{Error, Result};
use crate::ops::gemm::{linear_act, Act};
use crate::ops::{common_gpu, flat_rows, host, par_rows};
use crate::runtime::kernels::{
    tiles, DequantI8, DequantI8Args, DevPtr, DevPtrMut, LaunchCfg, W8a16, W8a16Args,
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
    /// [`choose_int8_kernel`] at the crossover of [`int8_crossover_m`], unless
    /// `CONTENTV_INT8_GEMM` forces a kernel that applies.
    Auto,
    /// Tensor-core W8A16 GEMM (`w8a16_mma_*`): bf16/f16 activations, K % 8 == 0.
    Mma,
    /// One warp per output column (`w8a16_gemv_*`): M <= 16, bf16/f16, K % 8 == 0.
    Gemv,
    /// Dequantise to a dense weight in the activation dtype, then the cuBLASLt GEMM.
    Dequant,
}

/// Largest M the GEMV kernel takes (kernels/tiles.h's `W8_GEMV_MAX_M`, which the kernel uses).
pub const GEMV_MAX_M: usize = tiles::W8_GEMV_MAX_M as usize;

/// Rows from which `Auto` dequantises the weight and runs cuBLASLt instead of the fused W8A16
/// kernel. An ESTIMATE from the roofline model of [`int8_times`] with [`H100_INT8_RATES`]
/// (docs/perf.md, "INT8: fused kernel or dequantise + cuBLASLt"): the dequantisation costs a
/// fixed 3 N K bytes of HBM traffic (read int8, write bf16) plus the 2 N K bytes cuBLASLt reads
/// back, while per row the fused kernel loses 2 N K (1 / fused - 1 / dense) seconds to
/// cuBLASLt's higher rate. In the compute-bound range N K cancels:
///   M* = (3 / BW) / (2 (1 / F_fused - 1 / F_dense)) = 583 rows on an H100 SXM, 407 on an H200
/// (N K = 2432 x 2432 and 9728 x 2432 alike). 512 sits between them; the gpu-check sweep
/// measures the real one (`CONTENTV_INT8_CROSSOVER_M` overrides it).
pub const INT8_CROSSOVER_M: usize = 512;

/// The rates the INT8 choice is modelled with.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Int8Rates {
    /// HBM bandwidth, bytes/s.
    pub mem_bytes_s: f64,
    /// cuBLASLt's dense bf16 GEMM rate, FLOP/s.
    pub dense_flops: f64,
    /// The fused W8A16 kernel's rate, FLOP/s.
    pub fused_flops: f64,
}

/// H100 SXM: 3.35 TB/s (datasheet); cuBLASLt bf16 at 620 TFLOP/s (63 % of the 989 TFLOP/s
/// dense peak, what large cuBLASLt GEMMs reach: issue 18 says 600+); the fused kernel at an
/// estimated 420 TFLOP/s: mma.sync tops out near 62 % of the wgmma peak on Hopper, and the
/// static SASS reading (docs/kernel-review.md, "W8A16: static reading") leaves it about 70 % of
/// that (no I2F; 6.2 issued instructions per HMMA in the bf16 loop against ~6.5 issue cycles per
/// HMMA at the mma.sync ceiling, two barriers and one conversion pass per 32-deep k tile). None
/// of these rates was measured here.
pub const H100_INT8_RATES: Int8Rates = Int8Rates {
    mem_bytes_s: 3.35e12,
    dense_flops: 620e12,
    fused_flops: 420e12,
};

/// Predicted seconds of `[m, k] x [n, k]^T` with an INT8 weight, bf16 activations and output:
/// (fused W8A16 kernel, dequantise + cuBLASLt). Each GEMM takes max(FLOPs / rate, bytes / BW)
/// with its floor traffic (weights once, x and y once); the dequantisation is bytes only.
pub fn int8_times(m: usize, n: usize, k: usize, r: &Int8Rates) -> (f64, f64) {
    let (m, n, k) = (m as f64, n as f64, k as f64);
    let flops = 2.0 * m * n * k;
    let act_bytes = 2.0 * m * k + 2.0 * m * n;
    let fused = (flops / r.fused_flops).max((n * k + act_bytes) / r.mem_bytes_s);
    let dequant = 3.0 * n * k / r.mem_bytes_s
        + (flops / r.dense_flops).max((2.0 * n * k + act_bytes) / r.mem_bytes_s);
    (fused, dequant)
}

/// The smallest M at which [`int8_times`] predicts dequantise + cuBLASLt no slower than the
/// fused kernel (None: not below `limit`).
pub fn int8_model_crossover(n: usize, k: usize, r: &Int8Rates, limit: usize) -> Option<usize> {
    (1..=limit).find(|&m| {
        let (f, d) = int8_times(m, n, k, r);
        d <= f
    })
}

/// The crossover in force: `CONTENTV_INT8_CROSSOVER_M` (a positive row count) or
/// [`INT8_CROSSOVER_M`].
pub fn int8_crossover_m() -> Result<usize> {
    match std::env::var("CONTENTV_INT8_CROSSOVER_M") {
        Ok(v) => parse_crossover(&v),
        Err(_) => Ok(INT8_CROSSOVER_M),
    }
}

/// Parses a `CONTENTV_INT8_CROSSOVER_M` value.
pub fn parse_crossover(v: &str) -> Result<usize> {
    match v.trim().parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(Error::Input(format!(
            "CONTENTV_INT8_CROSSOVER_M={v:?}: expected a positive number of rows (default {INT8_CROSSOVER_M})"
        ))),
    }
}

/// The kernel `CONTENTV_INT8_GEMM` forces (None when unset or empty).
pub fn int8_forced_kernel() -> Result<Option<Int8Kernel>> {
    match std::env::var("CONTENTV_INT8_GEMM") {
        Ok(v) => parse_int8_gemm(&v),
        Err(_) => Ok(None),
    }
}

/// Parses a `CONTENTV_INT8_GEMM` value: dequant, mma, gemv, or empty / auto for none.
pub fn parse_int8_gemm(v: &str) -> Result<Option<Int8Kernel>> {
    match v.trim().to_ascii_lowercase().as_str() {
        "" | "auto" => Ok(None),
        "dequant" => Ok(Some(Int8Kernel::Dequant)),
        "mma" => Ok(Some(Int8Kernel::Mma)),
        "gemv" => Ok(Some(Int8Kernel::Gemv)),
        _ => Err(Error::Input(format!(
            "CONTENTV_INT8_GEMM={v:?}: expected dequant, mma, gemv or auto"
        ))),
    }
}

/// Whether `kernel` can compute `[m, k] x [n, k]^T` with `groups` scale groups per row and
/// activations of `dtype` (the W8A16 kernels take bf16/f16 with K and the group size multiples
/// of 8; the GEMV at most [`GEMV_MAX_M`] rows; dequantise + cuBLASLt takes everything).
pub fn int8_kernel_applies(
    kernel: Int8Kernel,
    m: usize,
    k: usize,
    groups: usize,
    dtype: DType,
) -> bool {
    let w8a16 = matches!(dtype, DType::BF16 | DType::F16)
        && k % 8 == 0
        && groups > 0
        && k % groups == 0
        && (k / groups) % 8 == 0;
    match kernel {
        Int8Kernel::Auto | Int8Kernel::Dequant => true,
        Int8Kernel::Mma => w8a16,
        Int8Kernel::Gemv => w8a16 && m <= GEMV_MAX_M,
    }
}

/// `Auto`'s choice for `[m, k] x [n, k]^T` (`groups` scale groups per row, activations of
/// `dtype`) at `crossover` rows: the GEMV up to [`GEMV_MAX_M`] rows, the fused tensor-core
/// kernel below the crossover, dequantise + cuBLASLt from it on (and wherever the W8A16 kernels
/// do not apply). `n` is part of the question for models whose crossover depends on it; the
/// roofline one does not (see [`INT8_CROSSOVER_M`]).
pub fn choose_int8_kernel(
    m: usize,
    n: usize,
    k: usize,
    groups: usize,
    dtype: DType,
    crossover: usize,
) -> Int8Kernel {
    let _ = n;
    if !int8_kernel_applies(Int8Kernel::Mma, m, k, groups, dtype) || m >= crossover {
        Int8Kernel::Dequant
    } else if m <= GEMV_MAX_M {
        Int8Kernel::Gemv
    } else {
        Int8Kernel::Mma
    }
}

/// The kernel `kernel` resolves to for this call: itself, or for `Auto` the forced kernel of
/// `CONTENTV_INT8_GEMM` where it applies, else [`choose_int8_kernel`] at
/// [`int8_crossover_m`]. Errors name the variable with a bad value.
pub fn resolve_int8_kernel(
    kernel: Int8Kernel,
    m: usize,
    n: usize,
    k: usize,
    groups: usize,
    dtype: DType,
) -> Result<Int8Kernel> {
    if kernel != Int8Kernel::Auto {
        return Ok(kernel);
    }
    if let Some(f) = int8_forced_kernel()? {
        if int8_kernel_applies(f, m, k, groups, dtype) {
            return Ok(f);
        }
    }
    Ok(choose_int8_kernel(
        m,
        n,
        k,
        groups,
        dtype,
        int8_crossover_m()?,
    ))
}

/// Values per thread and step of `dequant_i8_*` (`dequant_width` in kernels/gemm_int8.cu, same
/// rule): 16 where K, the group size and both pointers allow 16-byte loads, else 8, else 1.
pub fn dequant_vector_width(k: usize, groups: usize, q_addr: u64, w_addr: u64) -> usize {
    let g = k / groups.max(1);
    if k % 16 == 0 && g % 16 == 0 && q_addr % 16 == 0 && w_addr % 16 == 0 {
        16
    } else if k % 8 == 0 && g % 8 == 0 && q_addr % 8 == 0 && w_addr % 16 == 0 {
        8
    } else {
        1
    }
}

/// Dynamic shared memory of `w8a16_mma_*`: 3 stages of a 128x32 activation tile (rows padded
/// to 40) and of a 128x32 int8 tile, the converted 128x32 bf16/f16 B tile (one buffer, rows
/// padded to 40) and, group-wise, 3 stages of 128x4 scales: kernels/tiles.h's numbers, which
/// the kernel's static_assert checks against its shared-memory map; the static kernel gate
/// checks them against each arch's limits.
pub fn w8a16_smem_bytes(grouped: bool) -> u32 {
    if grouped {
        tiles::W8_GROUP_SMEM_BYTES
    } else {
        tiles::W8_SMEM_BYTES
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
            let qv: Vec<i8> = q.to_bytes()?.into_iter().map(|b| b as i8).collect();
            let sv = scale.to_vec_f32()?;
            let bv = bias.map(|b| b.to_vec_f32()).transpose()?;
            let y = linear_int8_cpu(&x.cpu_f32()?, &qv, &sv, bv.as_deref(), act, (n, k, groups));
            host(y, &out_shape)
        }
        Some(gpu) => {
            let dt = x.dtype();
            let kernel = resolve_int8_kernel(kernel, m, n, k, groups, dt)?;
            if kernel == Int8Kernel::Dequant {
                return linear_int8_dequant(x, q, scale, bias, act, n, k, groups);
            }
            check_w8a16(kernel, dt, m, k, groups)?;
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
            let (kern, cfg) = w8a16_launch(kernel, dt, groups, m, n)?;
            // SAFETY: x2 is [m, k] rows at stride lda (flat_rows; 16-byte aligned, lda % 8 == 0,
            // else copied), q2 [n, k] i8 contiguous and 8-byte aligned, s2 [n, groups] f32, b2
            // [n] f32 or null, y fresh [m, n] of dt; the GEMV kernel only for m <= GEMV_MAX_M;
            // K and the group size are multiples of 8 (checked above); all on `gpu`.
            unsafe { kern.launch(gpu, cfg, args)? };
            Ok(y)
        }
    }
}

/// What the W8A16 kernels take (checked before anything is allocated): bf16/f16 activations,
/// K and the group size multiples of 8, at most GEMV_MAX_M rows for the GEMV kernel.
fn check_w8a16(kernel: Int8Kernel, dt: DType, m: usize, k: usize, groups: usize) -> Result<()> {
    if !matches!(dt, DType::BF16 | DType::F16) {
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
    Ok(())
}

/// The W8A16 kernel for `kernel` (GEMV or tensor-core MMA; per-channel or group-wise scales)
/// and its launch: the MMA kernel's tiles and shared memory are kernels/tiles.h's.
fn w8a16_launch(
    kernel: Int8Kernel,
    dt: DType,
    groups: usize,
    m: usize,
    n: usize,
) -> Result<(W8a16, LaunchCfg)> {
    let bf = dt == DType::BF16;
    Ok(if kernel == Int8Kernel::Gemv {
        let kern = if bf {
            W8a16::GEMV_BF16
        } else {
            W8a16::GEMV_F16
        };
        let cols = tiles::W8_GEMV_WARPS as usize; // output columns per block
        let cfg = LaunchCfg::new(
            (n.div_ceil(cols) as u32, 1, 1),
            (tiles::W8_GEMV_THREADS, 1, 1),
            0,
        );
        (kern, cfg)
    } else {
        let kern = match (bf, groups > 1) {
            (true, false) => W8a16::MMA_BF16,
            (false, false) => W8a16::MMA_F16,
            (true, true) => W8a16::MMA_GROUP_BF16,
            (false, true) => W8a16::MMA_GROUP_F16,
        };
        let (bm, bn) = (tiles::W8_BM as usize, tiles::W8_BN as usize);
        let grid_y = m.div_ceil(bm);
        if grid_y > 65_535 {
            return Err(shape_err!(
                "linear_int8: {m} rows exceed the grid (at most {} rows)",
                65_535 * bm
            ));
        }
        let grid = (n.div_ceil(bn) as u32, grid_y as u32, 1);
        (
            kern,
            LaunchCfg::new(
                grid,
                (tiles::W8_THREADS, 1, 1),
                w8a16_smem_bytes(groups > 1),
            ),
        )
    })
}

/// The large-M (and fallback) GPU path: dequantise into a dense weight of the activation dtype
/// (a pooled buffer, freed when the call returns), then the dense linear (cuBLASLt).
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
    // One thread per 16 (or 8) weights where the kernel takes the vector path (same rule).
    let width = dequant_vector_width(k, groups, q.dev_ptr()?, w.dev_ptr()?);
    let args = DequantI8Args {
        q: DevPtr::of(&q)?,
        s: DevPtr::of(&scale)?,
        w: DevPtrMut::of(&w)?,
        n: n as i64,
        k: k as i64,
        g: groups as i64,
    };
    // SAFETY: q [n, k] i8 and w (fresh) [n, k] contiguous, scale [n, groups] f32 (the caller
    // checked the shapes), all on `gpu` (x's device); the kernel's loops are grid-stride, so
    // any grid covers every weight.
    unsafe { kern.launch(gpu, LaunchCfg::grid_stride(n * k / width), args)? };
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

/// CPU reference of [`linear_int8`]: `act(x dequant(q)^T + bias)` in f32 with x [m, k], q
/// [n, k] and `groups` scales per row of q (`nkg` = (n, k, groups)).
pub fn linear_int8_cpu(
    x: &[f32],
    q: &[i8],
    scale: &[f32],
    bias: Option<&[f32]>,
    act: Act,
    nkg: (usize, usize, usize),
) -> Vec<f32> {
    let (n, k, groups) = nkg;
    let m = x.len() / k.max(1);
    let g = k / groups;
    let mut y = vec![0f32; m * n];
    par_rows(&mut y, n, |r0, out| {
        let mut wrow = vec![0f32; k];
        for j in 0..n {
            // Dequantise one weight row, then dot it with every row of this chunk.
            for (c, w) in wrow.iter_mut().enumerate() {
                *w = q[j * k + c] as f32 * scale[j * groups + c / g];
            }
            for (i, o) in out.chunks_mut(n).enumerate() {
                let xr = &x[(r0 + i) * k..(r0 + i + 1) * k];
                let z = crate::ops::gemm::dot(xr, &wrow) + bias.map_or(0.0, |b| b[j]);
                o[j] = act.apply(z);
            }
        }
    });
    y
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
    use half::{bf16, f16};

    /// PTX prmt.b32, default mode (the host twin of `prmt` in kernels/ptx.cuh).
    fn prmt(a: u32, b: u32, sel: u32) -> u32 {
        let ab = a as u64 | (b as u64) << 32;
        (0..4).fold(0, |d, i| {
            let nib = (sel >> (4 * i)) & 0xf;
            let mut byte = (ab >> (8 * (nib & 7))) as u32 & 0xff;
            if nib & 8 != 0 {
                byte = if byte & 0x80 != 0 { 0xff } else { 0 };
            }
            d | byte << (8 * i)
        })
    }

    /// The host twin of kernels/gemm_int8.cu's conversions (w8::i8x4_to_f32, i8x4_to_t), bit for
    /// bit: every int8 value in every byte position comes out exact as f32, bf16 and f16.
    #[test]
    fn int8_conversion_by_byte_permutes_is_exact_for_every_byte() {
        for v in 0..256u32 {
            for pos in 0..4 {
                let bytes: Vec<u32> = (0..4)
                    .map(|e| {
                        if e == pos {
                            v
                        } else {
                            (v * 7 + 61 * e + 13 * pos) & 0xff
                        }
                    })
                    .collect();
                let w = bytes
                    .iter()
                    .enumerate()
                    .fold(0u32, |w, (e, b)| w | b << (8 * e));
                let want: Vec<f32> = bytes.iter().map(|&b| b as u8 as i8 as f32).collect();
                let x = w ^ 0x8080_8080;
                // f32: 2^23 + q + 128, minus 2^23 + 128.
                let f: Vec<f32> = (0..4)
                    .map(|e| f32::from_bits(prmt(x, 0x4B00_0000, 0x7650 + e)) - 8_388_736.0)
                    .collect();
                assert_eq!(f, want, "f32, word {w:#010x}");
                // bf16: the high halves of two exact floats.
                for p in 0..2 {
                    let r = prmt(f[2 * p].to_bits(), f[2 * p + 1].to_bits(), 0x7632);
                    for h in 0..2 {
                        let got = bf16::from_bits((r >> (16 * h)) as u16);
                        assert_eq!(got, bf16::from_f32(want[2 * p + h]), "bf16, word {w:#010x}");
                    }
                }
                // f16: 1024 + q + 128 in each half, minus 1152 (exact: an integer below 2048).
                for (p, sel) in [(0usize, 0x4140u32), (1, 0x4342)] {
                    let r = prmt(x, 0x6464_6464, sel);
                    for h in 0..2 {
                        let biased = f16::from_bits((r >> (16 * h)) as u16);
                        let got = f16::from_f32(biased.to_f32() - 1152.0);
                        assert_eq!(biased.to_f32(), want[2 * p + h] + 1152.0);
                        assert_eq!(got, f16::from_f32(want[2 * p + h]), "f16, word {w:#010x}");
                    }
                }
            }
        }
        // The sign-replicating selector bit, as the PTX ISA defines it.
        assert_eq!(prmt(0x0000_0080, 0, 0x4448), 0xff);
        assert_eq!(prmt(0x0000_0080, 0, 0x0008), 0x8080_80ff);
        assert_eq!(prmt(0x0000_007f, 0, 0x4448), 0x00);
    }

    #[test]
    fn auto_picks_gemv_fused_or_dequant_by_rows() {
        let c = INT8_CROSSOVER_M;
        for dt in [DType::BF16, DType::F16] {
            assert_eq!(
                choose_int8_kernel(1, 2432, 2432, 1, dt, c),
                Int8Kernel::Gemv
            );
            assert_eq!(
                choose_int8_kernel(GEMV_MAX_M, 2432, 2432, 1, dt, c),
                Int8Kernel::Gemv
            );
            assert_eq!(
                choose_int8_kernel(GEMV_MAX_M + 1, 2432, 2432, 1, dt, c),
                Int8Kernel::Mma
            );
            assert_eq!(
                choose_int8_kernel(c - 1, 9728, 2432, 19, dt, c),
                Int8Kernel::Mma
            );
            assert_eq!(
                choose_int8_kernel(c, 2432, 2432, 1, dt, c),
                Int8Kernel::Dequant
            );
            assert_eq!(
                choose_int8_kernel(41_472, 9728, 2432, 1, dt, c),
                Int8Kernel::Dequant
            );
            // A crossover below the GEMV range wins over it.
            assert_eq!(choose_int8_kernel(8, 64, 64, 1, dt, 4), Int8Kernel::Dequant);
            // Where the W8A16 kernels do not apply: dequantise at every M.
            assert_eq!(choose_int8_kernel(4, 64, 12, 1, dt, c), Int8Kernel::Dequant);
            assert_eq!(
                choose_int8_kernel(100, 64, 48, 4, dt, c),
                Int8Kernel::Dequant
            );
        }
        assert_eq!(
            choose_int8_kernel(4, 64, 64, 1, DType::F32, c),
            Int8Kernel::Dequant
        );
        assert!(!int8_kernel_applies(
            Int8Kernel::Gemv,
            17,
            64,
            1,
            DType::BF16
        ));
        assert!(int8_kernel_applies(Int8Kernel::Mma, 17, 64, 8, DType::BF16));
        assert!(!int8_kernel_applies(Int8Kernel::Mma, 17, 64, 1, DType::F32));
    }

    #[test]
    fn int8_environment_values_parse_or_name_the_variable() {
        assert_eq!(
            parse_int8_gemm("dequant").unwrap(),
            Some(Int8Kernel::Dequant)
        );
        assert_eq!(parse_int8_gemm(" MMA ").unwrap(), Some(Int8Kernel::Mma));
        assert_eq!(parse_int8_gemm("gemv").unwrap(), Some(Int8Kernel::Gemv));
        assert_eq!(parse_int8_gemm("").unwrap(), None);
        assert_eq!(parse_int8_gemm("auto").unwrap(), None);
        let e = parse_int8_gemm("cublas").unwrap_err().to_string();
        assert!(
            e.contains("CONTENTV_INT8_GEMM") && e.contains("cublas"),
            "{e}"
        );
        assert_eq!(parse_crossover("1024").unwrap(), 1024);
        for bad in ["0", "-3", "lots", ""] {
            let e = parse_crossover(bad).unwrap_err().to_string();
            assert!(e.contains("CONTENTV_INT8_CROSSOVER_M"), "{e}");
        }
    }

    /// The constant follows its model: the roofline crossover at the production shapes is
    /// 583 rows (H100 SXM) and 407 (H200 at 4.8 TB/s), the constant in between; below it the
    /// model prefers the fused kernel by a wide margin in the memory-bound range (it moves N K
    /// bytes once against 5 N K).
    #[test]
    fn crossover_constant_follows_the_roofline_model() {
        let h200 = Int8Rates {
            mem_bytes_s: 4.8e12,
            ..H100_INT8_RATES
        };
        for (n, k) in [(2432, 2432), (9728, 2432)] {
            let h = int8_model_crossover(n, k, &H100_INT8_RATES, 100_000).unwrap();
            let g = int8_model_crossover(n, k, &h200, 100_000).unwrap();
            assert!((570..=600).contains(&h), "H100 {n}x{k}: {h}");
            assert!((395..=420).contains(&g), "H200 {n}x{k}: {g}");
            assert!(g <= INT8_CROSSOVER_M && INT8_CROSSOVER_M <= h);
            let (f, d) = int8_times(16, n, k, &H100_INT8_RATES);
            assert!(d > 4.0 * f, "M = 16: fused {f} dequant {d}");
            let (f, d) = int8_times(41_472, n, k, &H100_INT8_RATES);
            assert!(d < 0.75 * f, "M = 41472: fused {f} dequant {d}");
        }
    }

    #[test]
    fn dequant_width_follows_the_kernel_rule() {
        assert_eq!(dequant_vector_width(2432, 1, 0x1000, 0x2000), 16);
        assert_eq!(dequant_vector_width(2432, 19, 0x1000, 0x2000), 16);
        assert_eq!(dequant_vector_width(24, 3, 0x1000, 0x2000), 8);
        assert_eq!(dequant_vector_width(2432, 1, 0x1008, 0x2000), 8);
        assert_eq!(dequant_vector_width(2432, 1, 0x1000, 0x2008), 1);
        assert_eq!(dequant_vector_width(20, 1, 0x1000, 0x2000), 1);
    }

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
