//! The arithmetic of one denoising step and of one VAE decode, op by op: what the engine runs
//! (the same ops, shapes and counts as model::mmdit's forward and model::vae's decode), each with
//! its FLOPs and the bytes it must move at least. `contentv roofline` turns the rows into
//! predicted times at a GPU's ceilings. tests/roofline.rs checks the rows against the ops a real
//! forward and a real decode perform (ops::trace), so this model cannot drift from the code.
use std::time::Instant;

use crate::error::Result;
use crate::model::mmdit::TransformerConfig;
use crate::model::vae::weights::{
    self as vae_weights, AttnBlock as VaeAttnBlock, Conv as VaeConv, ResBlock as VaeResBlock,
    Upsampler as VaeUpsampler,
};
use crate::model::vae::VaeConfig;
use crate::ops::attention::{attention, AttnOpts};
use crate::ops::conv::{conv3d, pack_weight_bf16, ConvOpts, ConvPrecision, WRef};
use crate::ops::gemm::linear;
use crate::ops::trace::OpClass;
use crate::ops::vae_glue::spatial_attention;
use crate::runtime::{DType, Device, Linear, Tensor, Weight};

/// What bounds a row: tensor-core math, CUDA-core f32 math, or memory traffic only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A recorded op class on tensor cores (bf16).
    Tensor(OpClass),
    /// A recorded op class in f32 on CUDA cores (the VAE's f32 convolutions).
    Fp32(OpClass),
    /// Norms, modulation, residuals, casts: bytes only.
    Memory,
}

impl Kind {
    /// The op class ops::trace records for it (None: not recorded).
    pub fn class(self) -> Option<OpClass> {
        match self {
            Kind::Tensor(c) | Kind::Fp32(c) => Some(c),
            Kind::Memory => None,
        }
    }
}

/// One call of an op at its real shape, which [`measure`] runs in isolation on random device
/// tensors to time it (the achieved time of a row is the sum over its probes of calls x the
/// measured time of one call).
#[derive(Clone, Debug, PartialEq)]
pub enum Probe {
    /// A linear layer: x [m, k] times W^T, W [n, k] (bf16, with bias).
    Gemm { m: usize, k: usize, n: usize },
    /// Joint attention: batch, heads of `hd`, the query and key segment lengths.
    Attention {
        b: usize,
        heads: usize,
        hd: usize,
        q: Vec<usize>,
        k: Vec<usize>,
    },
    /// A VAE convolution `ci` -> `co` with taps (kt, kh, kw) on `f` frames of `h` x `w` outputs.
    Conv {
        ci: usize,
        co: usize,
        taps: [usize; 3],
        f: usize,
        h: usize,
        w: usize,
    },
    /// The VAE's single-head attention over the `hw` positions of each of `f` frames, `c` wide.
    FrameAttention { f: usize, c: usize, hw: usize },
    /// A memory-bound op moving `bytes` (timed as a device copy of the same bytes: the floor
    /// such an op can reach, not its own kernel).
    Memory { bytes: usize },
}

impl Probe {
    /// FLOPs of one call, as ops::trace records them.
    pub fn flops(&self) -> f64 {
        match self {
            Probe::Gemm { m, k, n } => 2.0 * (*m as f64) * (*k as f64) * (*n as f64),
            Probe::Attention { b, heads, hd, q, k } => {
                let (sq, sk): (usize, usize) = (q.iter().sum(), k.iter().sum());
                4.0 * (b * heads * hd) as f64 * sq as f64 * sk as f64
            }
            Probe::Conv {
                ci,
                co,
                taps,
                f,
                h,
                w,
            } => 2.0 * (co * f * h * w) as f64 * (ci * taps.iter().product::<usize>()) as f64,
            Probe::FrameAttention { f, c, hw } => 4.0 * (f * c) as f64 * (*hw as f64).powi(2),
            Probe::Memory { .. } => 0.0,
        }
    }
}

/// One kind of op call, aggregated over a step or a decode.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub name: String,
    pub kind: Kind,
    /// Calls per step (or per decode).
    pub calls: usize,
    /// FLOPs of all calls together.
    pub flops: f64,
    /// Bytes read and written by all calls together (each operand once: the floor).
    pub bytes: f64,
    /// The distinct shapes of the calls, with how many calls each.
    pub probes: Vec<(Probe, usize)>,
}

/// The shape of a step: batch (2 with classifier-free guidance, in one joint pass), video
/// tokens, text tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StepShape {
    pub batch: usize,
    pub video_tokens: usize,
    pub text_tokens: usize,
}

struct Rows(Vec<Row>);

impl Rows {
    /// Adds `calls` calls of `flops` and `bytes` each to the row `name` (created on first use).
    /// `probe` is the shape of one of these calls.
    fn add(&mut self, name: &str, kind: Kind, calls: usize, flops: f64, bytes: f64, probe: Probe) {
        if calls == 0 {
            return;
        }
        let c = calls as f64;
        let r = match self.0.iter().position(|r| r.name == name) {
            Some(i) => &mut self.0[i],
            None => {
                self.0.push(Row {
                    name: name.to_string(),
                    kind,
                    calls: 0,
                    flops: 0.0,
                    bytes: 0.0,
                    probes: Vec::new(),
                });
                self.0.last_mut().unwrap()
            }
        };
        r.calls += calls;
        r.flops += c * flops;
        r.bytes += c * bytes;
        match r.probes.iter_mut().find(|(p, _)| *p == probe) {
            Some((_, n)) => *n += calls,
            None => r.probes.push((probe, calls)),
        }
    }

    /// `calls` x a linear layer [m, k] x [k, n] in bf16.
    fn gemm(&mut self, name: &str, calls: usize, m: usize, k: usize, n: usize) {
        let (m, k, n) = (m as f64, k as f64, n as f64);
        let bytes = 2.0 * (m * k + k * n + m * n);
        let probe = Probe::Gemm {
            m: m as usize,
            k: k as usize,
            n: n as usize,
        };
        self.add(
            name,
            Kind::Tensor(OpClass::Gemm),
            calls,
            2.0 * m * n * k,
            bytes,
            probe,
        );
    }

    /// `calls` x an op that reads `reads` and writes `writes` elements of `elem` bytes.
    fn memory(&mut self, name: &str, calls: usize, reads: usize, writes: usize, elem: usize) {
        let bytes = (reads + writes) * elem;
        let probe = Probe::Memory { bytes };
        self.add(name, Kind::Memory, calls, 0.0, bytes as f64, probe);
    }
}

/// The ops of one denoising step as `contentv generate` runs it: one transformer forward of
/// `shape.batch` (the adaLN modulation of the whole run is computed before the first step,
/// model::mmdit::Transformer::precompute_modulation, so it is not part of a step).
pub fn step_rows(c: &TransformerConfig, shape: StepShape) -> Vec<Row> {
    let StepShape {
        batch: b,
        video_tokens: n,
        text_tokens: s,
    } = shape;
    let (d, ff, hd) = (c.dim, c.ff_dim, c.head_dim);
    let (bn, bs) = (b * n, b * s);
    let mut r = Rows(Vec::new());
    let patch_in = c.in_channels * c.patch * c.patch;
    r.memory(
        "patchify (permute copy)",
        1,
        bn * patch_in,
        bn * patch_in,
        2,
    );
    r.gemm("patch embedding", 1, bn, patch_in, d);
    r.memory("+ position embedding", 1, bn * d + n * d, bn * d, 2);
    // temb = L2(SiLU(L1(sincos t))) + L2'(SiLU(L1'(pooled))): four small GEMMs.
    r.gemm(
        "time/text embedding",
        1,
        b,
        crate::model::mmdit::TIME_FEATURES,
        d,
    );
    r.gemm("time/text embedding", 1, b, d, d);
    r.gemm("time/text embedding", 1, b, c.pooled_dim, d);
    r.gemm("time/text embedding", 1, b, d, d);
    r.gemm("context embedding", 1, bs, c.joint_attention_dim, d);

    // Joint blocks: every block but the last updates both streams; the last one
    // (context_pre_only) has no text queries and no text output.
    let full = c.layers.saturating_sub(1);
    let last = usize::from(c.layers > 0);
    let all = c.layers;
    // LayerNorm with the block's scale and shift ([B, D] each) in one pass.
    let lnmod = |r: &mut Rows, calls: usize, rows: usize| {
        r.memory(
            "adaLN modulate (LN, scale, shift)",
            calls,
            rows * d + 2 * b * d,
            rows * d,
            2,
        );
    };
    lnmod(&mut r, all, bn);
    lnmod(&mut r, all, bs);
    // q, k, v: one fused GEMM per stream (weights [3D, D]; [2D, D] for the last block's text
    // k, v), then the per-head q/k RMS norms of both in one in-place launch per stream.
    r.gemm("q, k, v (video, fused)", all, bn, d, 3 * d);
    r.memory(
        "q/k RMS norm per head (in place)",
        all,
        2 * bn * d,
        2 * bn * d,
        2,
    );
    r.gemm("q, k, v (text, fused)", full, bs, d, 3 * d);
    r.gemm("q, k, v (text, fused)", last, bs, d, 2 * d);
    r.memory(
        "q/k RMS norm per head (in place)",
        full,
        2 * bs * d,
        2 * bs * d,
        2,
    );
    r.memory("q/k RMS norm per head (in place)", last, bs * d, bs * d, 2);
    let heads = c.heads;
    let attn = |r: &mut Rows, calls: usize, q: Vec<usize>| {
        let (sq, sk) = (q.iter().sum::<usize>(), n + s);
        let flops = 4.0 * (b * heads * hd) as f64 * sq as f64 * sk as f64;
        let bytes = 2.0 * (b * heads * hd) as f64 * (2 * sq + 2 * sk) as f64;
        let probe = Probe::Attention {
            b,
            heads,
            hd,
            q,
            k: vec![n, s],
        };
        r.add(
            "joint attention",
            Kind::Tensor(OpClass::Attention),
            calls,
            flops,
            bytes,
            probe,
        );
    };
    attn(&mut r, full, vec![n, s]);
    attn(&mut r, last, vec![n]);
    r.gemm("attention out (video)", all, bn, d, d);
    r.memory("gated residual", 2 * all, 2 * bn * d + b * d, bn * d, 2);
    lnmod(&mut r, all, bn);
    r.gemm("MLP up + GELU (video)", all, bn, d, ff);
    r.gemm("MLP down (video)", all, bn, ff, d);
    r.gemm("attention out (text)", full, bs, d, d);
    r.memory("gated residual", 2 * full, 2 * bs * d + b * d, bs * d, 2);
    lnmod(&mut r, full, bs);
    r.gemm("MLP up + GELU (text)", full, bs, d, ff);
    r.gemm("MLP down (text)", full, bs, ff, d);
    lnmod(&mut r, 1, bn);
    r.gemm(
        "final projection",
        1,
        bn,
        d,
        c.patch * c.patch * c.out_channels,
    );
    r.memory(
        "unpatchify (permute copy)",
        1,
        bn * c.patch * c.patch * c.out_channels,
        bn * c.patch * c.patch * c.out_channels,
        2,
    );
    r.0
}

/// The ops of decoding latents [1, z, t_lat, h_lat, w_lat] (one latent frame per chunk, causal
/// caches, the first chunk without the temporal upsampling, as model::vae decodes), with the
/// convolutions in bf16 on tensor cores (`bf16`: weights held as bf16, f32 activations rounded
/// to bf16 in shared memory) or in f32 on CUDA cores. Activations are f32 in memory either way
/// (the norms, attention glue, caches and tiling run in f32). The blocks and their channels are
/// the decoder's own structure (its loader run on shapes, `vae::weights::shapes`), walked in the
/// order of `VaeDecoder`'s chunk.
pub fn decode_rows(
    cfg: &VaeConfig,
    t_lat: usize,
    h_lat: usize,
    w_lat: usize,
    bf16: bool,
) -> Result<Vec<Row>> {
    let dw = vae_weights::shapes(cfg)?;
    let mut d = DecodeRows {
        r: Rows(Vec::new()),
        bf16,
        size: (1, h_lat, w_lat),
    };
    for chunk in 0..t_lat {
        d.size = (1, h_lat, w_lat);
        d.conv("post_quant_conv 1x1x1", &dw.post_quant);
        d.conv("conv_in 3x3x3", &dw.conv_in);
        d.resblock(&dw.mid.0);
        d.mid_attention(&dw.mid.1);
        d.resblock(&dw.mid.2);
        for ub in &dw.ups {
            for rb in &ub.resnets {
                d.resblock(rb);
            }
            if let Some(up) = &ub.up {
                d.upsampler(up, chunk > 0);
            }
        }
        d.norm(dw.norm_out[0]);
        d.conv("conv_out 3x3x3", &dw.conv_out);
        let (f, h, w) = d.size;
        let px = cfg.out_channels * f * h * w;
        d.r.memory("frames to u8", 1, px, px / F32_BYTES, F32_BYTES);
    }
    Ok(d.r.0)
}

/// Bytes of an f32 activation element.
const F32_BYTES: usize = 4;

/// The rows of one decode, at the current chunk's activation size (frames, height, width).
struct DecodeRows {
    r: Rows,
    bf16: bool,
    size: (usize, usize, usize),
}

impl DecodeRows {
    fn kind(&self, c: OpClass) -> Kind {
        if self.bf16 {
            Kind::Tensor(c)
        } else {
            Kind::Fp32(c)
        }
    }

    /// A conv with weight shape [co, ci, k...] on the current size's outputs.
    fn conv(&mut self, name: &str, c: &VaeConv<Vec<usize>>) {
        let (f, h, w) = self.size;
        let (co, ci) = (c.w[0], c.w[1]);
        let k = &c.w[2..];
        let taps = match *k {
            [kt, kh, kw] => [kt, kh, kw],
            [kh, kw] => [1, kh, kw],
            _ => [k.iter().product(), 1, 1],
        };
        let n = taps.iter().product::<usize>();
        let wb = if self.bf16 { 2 } else { F32_BYTES };
        let outs = (co * f * h * w) as f64;
        let flops = 2.0 * outs * (ci * n) as f64;
        let bytes = ((ci * f * h * w + co * f * h * w) * F32_BYTES + ci * co * n * wb) as f64;
        let probe = Probe::Conv {
            ci,
            co,
            taps,
            f,
            h,
            w,
        };
        let kind = self.kind(OpClass::Conv);
        self.r.add(name, kind, 1, flops, bytes, probe);
    }

    fn norm(&mut self, c: usize) {
        let (f, h, w) = self.size;
        let n = c * f * h * w;
        self.r
            .memory("channel RMS norm (+ SiLU)", 1, n, n, F32_BYTES);
    }

    fn resblock(&mut self, rb: &VaeResBlock<Vec<usize>>) {
        if let Some(sc) = &rb.shortcut {
            self.conv("resblock shortcut 1x1x1", sc);
        }
        self.norm(rb.norm1[0]);
        self.conv("resblock conv 3x3x3", &rb.conv1);
        self.norm(rb.norm2[0]);
        self.conv("resblock conv 3x3x3", &rb.conv2);
    }

    /// Per frame, one head of C channels over the h w positions.
    fn mid_attention(&mut self, a: &VaeAttnBlock<Vec<usize>>) {
        let (f, h, w) = self.size;
        let c0 = a.norm[0];
        self.norm(c0);
        self.conv("mid attention q, k, v / out 1x1", &a.qkv);
        let hw = (h * w) as f64;
        let kind = self.kind(OpClass::Attention);
        self.r.add(
            "mid attention (per frame)",
            kind,
            1,
            4.0 * (f * c0) as f64 * hw * hw,
            (4 * f * c0 * h * w * F32_BYTES) as f64,
            Probe::FrameAttention {
                f,
                c: c0,
                hw: h * w,
            },
        );
        self.conv("mid attention q, k, v / out 1x1", &a.proj);
    }

    /// The time_conv (not on the first chunk) doubles the frames, then nearest 2x + the conv.
    fn upsampler(&mut self, up: &VaeUpsampler<Vec<usize>>, after_first_chunk: bool) {
        if let Some((tc, _)) = &up.time_conv {
            if after_first_chunk {
                self.conv("upsample time_conv 3x1x1", tc);
                self.size.0 *= 2;
            }
        }
        self.size.1 *= 2;
        self.size.2 *= 2;
        self.conv("upsample 2x + conv 3x3", &up.conv);
    }
}

/// A GPU's ceilings as measured here: a large bf16 GEMM through cuBLASLt and a device-to-device
/// copy.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MeasuredCeilings {
    /// TFLOP/s of an `m` = `n` = `k` = 8192 bf16 linear (256 when `small`).
    pub tensor_tflops: f64,
    /// TFLOP/s of an `m` = `n` = `k` = 4096 f32 linear (128 when `small`).
    pub fp32_tflops: f64,
    /// GB/s of a 1 GiB copy (read + write; 1 MiB when `small`).
    pub mem_gbs: f64,
}

/// Random values in [-1, 1) as a `dtype` tensor on `dev` (timing on zeros would flatter the
/// tensor cores: zero operands draw less power).
fn random_tensor(shape: &[usize], dtype: DType, dev: &Device, seed: u64) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let v: Vec<f32> = (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 23) as f32) - 1.0
        })
        .collect();
    let t = Tensor::from_f32(v, shape, dev)?;
    if dtype == DType::F32 {
        Ok(t)
    } else {
        t.to_dtype(dtype)
    }
}

/// Seconds of one call of `f`: one warm-up call, then calls until at least 3 and 50 ms (at most
/// 20), each synchronised; the median.
fn time_call(dev: &Device, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    dev.synchronize()?;
    let mut times = Vec::new();
    let start = Instant::now();
    while times.len() < 3 || (start.elapsed().as_secs_f64() < 0.05 && times.len() < 20) {
        let t = Instant::now();
        f()?;
        dev.synchronize()?;
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// Measures the ceilings on `dev` (`small`: rehearsal sizes for the emulated device).
pub fn measure_ceilings(dev: &Device, small: bool) -> Result<MeasuredCeilings> {
    let m = if small { 256 } else { 8192 };
    let x = random_tensor(&[m, m], DType::BF16, dev, 1)?;
    let l = Linear {
        weight: Weight::Dense(random_tensor(&[m, m], DType::BF16, dev, 2)?),
        bias: None,
    };
    let gemm = time_call(dev, || linear(&x, &l).map(drop))?;
    let m32 = if small { 128 } else { 4096 };
    let x32 = random_tensor(&[m32, m32], DType::F32, dev, 1)?;
    let l32 = Linear {
        weight: Weight::Dense(random_tensor(&[m32, m32], DType::F32, dev, 2)?),
        bias: None,
    };
    let gemm32 = time_call(dev, || linear(&x32, &l32).map(drop))?;
    let bytes: usize = if small { 1 << 20 } else { 1 << 30 };
    let src = Tensor::zeros(&[bytes / 2], DType::BF16, dev)?;
    let dst = Tensor::empty(&[bytes / 2], DType::BF16, dev)?;
    let copy = time_call(dev, || dst.copy_from(&src))?;
    Ok(MeasuredCeilings {
        tensor_tflops: 2.0 * (m as f64).powi(3) / gemm / 1e12,
        fp32_tflops: 2.0 * (m32 as f64).powi(3) / gemm32 / 1e12,
        mem_gbs: 2.0 * bytes as f64 / copy / 1e9,
    })
}

/// Times one call of every distinct probe of `rows` on `dev` in isolation, on random tensors of
/// its shape (GEMMs and attention in bf16; the VAE's convolutions and frame attention in f32
/// tensors with `conv` arithmetic, as the decoder runs them), and returns the achieved seconds
/// of each row: the sum over its probes of calls x the time of one call.
pub fn measure(rows: &[Row], dev: &Device, conv: ConvPrecision) -> Result<Vec<f64>> {
    let mut cache: Vec<(Probe, f64)> = Vec::new();
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let mut total = 0.0;
        for (p, calls) in &r.probes {
            let t = match cache.iter().find(|(q, _)| q == p) {
                Some((_, t)) => *t,
                None => {
                    let t = time_probe(p, dev, conv)?;
                    cache.push((p.clone(), t));
                    t
                }
            };
            total += *calls as f64 * t;
        }
        out.push(total);
    }
    Ok(out)
}

fn time_probe(p: &Probe, dev: &Device, conv: ConvPrecision) -> Result<f64> {
    match p {
        Probe::Gemm { m, k, n } => {
            // x [m, k] (bf16) -> [m, n] with bias.
            let x = random_tensor(&[*m, *k], DType::BF16, dev, 3)?;
            let l = Linear {
                weight: Weight::Dense(random_tensor(&[*n, *k], DType::BF16, dev, 4)?),
                bias: Some(random_tensor(&[*n], DType::BF16, dev, 5)?),
            };
            time_call(dev, || linear(&x, &l).map(drop))
        }
        Probe::Attention { b, heads, hd, q, k } => {
            // Segments [B, len, H*hd] (bf16), keys and values alike.
            let seg = |len: usize, seed: u64| {
                random_tensor(&[*b, len, heads * hd], DType::BF16, dev, seed)
            };
            let qs = q.iter().map(|&l| seg(l, 6)).collect::<Result<Vec<_>>>()?;
            let ks = k.iter().map(|&l| seg(l, 7)).collect::<Result<Vec<_>>>()?;
            let vs = k.iter().map(|&l| seg(l, 8)).collect::<Result<Vec<_>>>()?;
            let (qr, kr, vr): (Vec<&Tensor>, Vec<&Tensor>, Vec<&Tensor>) = (
                qs.iter().collect(),
                ks.iter().collect(),
                vs.iter().collect(),
            );
            let opts = AttnOpts::new(*heads, *hd);
            time_call(dev, || attention(&qr, &kr, &vr, &opts).map(drop))
        }
        Probe::Conv {
            ci,
            co,
            taps,
            f,
            h,
            w,
        } => {
            // x [1, ci, f, h, w] -> [1, co, f, h, w]: causal zero frames in front, zero padding.
            let x = random_tensor(&[1, *ci, *f, *h, *w], DType::F32, dev, 9)?;
            let wt = random_tensor(&[*co, *ci, taps[0], taps[1], taps[2]], DType::F32, dev, 10)?;
            let b = random_tensor(&[*co], DType::F32, dev, 11)?;
            let opts = ConvOpts {
                precision: conv,
                ..Default::default()
            };
            // The decoder packs its bf16 weights once at load: time the conv alone.
            let packed = match conv {
                ConvPrecision::Bf16 if dev.gpu().is_some() => Some(pack_weight_bf16(&wt)?),
                _ => None,
            };
            let w = match &packed {
                Some(p) => WRef::Bf16(p),
                None => WRef::F32(&wt),
            };
            time_call(dev, || conv3d(&x, w, Some(&b), &opts).map(drop))
        }
        Probe::FrameAttention { f, c, hw } => {
            let qkv = random_tensor(&[1, 3 * c, *f, *hw, 1], DType::F32, dev, 12)?;
            time_call(dev, || spatial_attention(&qkv, conv).map(drop))
        }
        Probe::Memory { bytes } => {
            let n = (bytes / 4).max(1);
            let src = Tensor::zeros(&[n], DType::BF16, dev)?;
            let dst = Tensor::empty(&[n], DType::BF16, dev)?;
            time_call(dev, || dst.copy_from(&src))
        }
    }
}
