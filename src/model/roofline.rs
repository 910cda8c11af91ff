//! The arithmetic of one denoising step and of one VAE decode, op by op: what the engine runs
//! (the same ops, shapes and counts as model::mmdit's forward and model::vae's decode), each with
//! its FLOPs and the bytes it must move at least. `contentv roofline` turns the rows into
//! predicted times at a GPU's ceilings. tests/roofline.rs checks the rows against the ops a real
//! forward and a real decode perform (ops::trace), so this model cannot drift from the code.
use crate::model::mmdit::TransformerConfig;
use crate::model::vae::VaeConfig;
use crate::ops::trace::OpClass;

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
    fn add(&mut self, name: &str, kind: Kind, calls: usize, flops: f64, bytes: f64) {
        if calls == 0 {
            return;
        }
        let c = calls as f64;
        match self.0.iter_mut().find(|r| r.name == name) {
            Some(r) => {
                r.calls += calls;
                r.flops += c * flops;
                r.bytes += c * bytes;
            }
            None => self.0.push(Row {
                name: name.to_string(),
                kind,
                calls,
                flops: c * flops,
                bytes: c * bytes,
            }),
        }
    }

    /// `calls` x a linear layer [m, k] x [k, n] in bf16.
    fn gemm(&mut self, name: &str, calls: usize, m: usize, k: usize, n: usize) {
        let (m, k, n) = (m as f64, k as f64, n as f64);
        let bytes = 2.0 * (m * k + k * n + m * n);
        self.add(
            name,
            Kind::Tensor(OpClass::Gemm),
            calls,
            2.0 * m * n * k,
            bytes,
        );
    }

    /// `calls` x an op that reads `reads` and writes `writes` elements of `elem` bytes.
    fn memory(&mut self, name: &str, calls: usize, reads: usize, writes: usize, elem: usize) {
        let bytes = ((reads + writes) * elem) as f64;
        self.add(name, Kind::Memory, calls, 0.0, bytes);
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
    r.gemm("q, k, v (video)", 3 * all, bn, d, d);
    r.memory("q/k RMS norm per head", 2 * all, bn * d, bn * d, 2);
    r.gemm("q, k, v (text)", 3 * full + 2 * last, bs, d, d);
    r.memory("q/k RMS norm per head", 2 * full + last, bs * d, bs * d, 2);
    let heads = c.heads;
    let attn = |r: &mut Rows, calls: usize, sq: usize, sk: usize| {
        let flops = 4.0 * (b * heads * hd) as f64 * sq as f64 * sk as f64;
        let bytes = 2.0 * (b * heads * hd) as f64 * (2 * sq + 2 * sk) as f64;
        r.add(
            "joint attention",
            Kind::Tensor(OpClass::Attention),
            calls,
            flops,
            bytes,
        );
    };
    attn(&mut r, full, n + s, n + s);
    attn(&mut r, last, n, n + s);
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
/// (the norms, attention glue, caches and tiling run in f32).
pub fn decode_rows(
    cfg: &VaeConfig,
    t_lat: usize,
    h_lat: usize,
    w_lat: usize,
    bf16: bool,
) -> Vec<Row> {
    let mut r = Rows(Vec::new());
    let kind = |c: OpClass| if bf16 { Kind::Tensor(c) } else { Kind::Fp32(c) };
    let eb = 4;
    let wb = if bf16 { 2 } else { 4 };
    let dims = cfg.decoder_dims();
    let tup = cfg.temperal_upsample();
    let levels = cfg.dim_mult.len();
    // A conv of `ci` -> `co` channels with kernel taps `taps` on `f` frames of `h` x `w` outputs.
    let conv = |r: &mut Rows,
                name: &str,
                ci: usize,
                co: usize,
                taps: usize,
                f: usize,
                h: usize,
                w: usize| {
        let outs = (co * f * h * w) as f64;
        let flops = 2.0 * outs * (ci * taps) as f64;
        let bytes = ((ci * f * h * w + co * f * h * w) * eb + ci * co * taps * wb) as f64;
        r.add(name, kind(OpClass::Conv), 1, flops, bytes);
    };
    let norm = |r: &mut Rows, c: usize, f: usize, h: usize, w: usize| {
        r.memory(
            "channel RMS norm (+ SiLU)",
            1,
            c * f * h * w,
            c * f * h * w,
            eb,
        );
    };
    let z = cfg.z_dim;
    for chunk in 0..t_lat {
        let (mut f, mut h, mut w) = (1, h_lat, w_lat);
        conv(&mut r, "post_quant_conv 1x1x1", z, z, 1, f, h, w);
        conv(&mut r, "conv_in 3x3x3", z, dims[0], 27, f, h, w);
        let resblock = |r: &mut Rows, ci: usize, co: usize, f: usize, h: usize, w: usize| {
            if ci != co {
                conv(r, "resblock shortcut 1x1x1", ci, co, 1, f, h, w);
            }
            norm(r, ci, f, h, w);
            conv(r, "resblock conv 3x3x3", ci, co, 27, f, h, w);
            norm(r, co, f, h, w);
            conv(r, "resblock conv 3x3x3", co, co, 27, f, h, w);
        };
        let c0 = dims[0];
        resblock(&mut r, c0, c0, f, h, w);
        // Mid attention: per frame, one head of c0 channels over the h w positions.
        norm(&mut r, c0, f, h, w);
        conv(
            &mut r,
            "mid attention q, k, v / out 1x1",
            c0,
            3 * c0,
            1,
            f,
            h,
            w,
        );
        let hw = (h * w) as f64;
        r.add(
            "mid attention (per frame)",
            kind(OpClass::Attention),
            1,
            4.0 * (f * c0) as f64 * hw * hw,
            (4 * f * c0 * h * w * eb) as f64,
        );
        conv(
            &mut r,
            "mid attention q, k, v / out 1x1",
            c0,
            c0,
            1,
            f,
            h,
            w,
        );
        resblock(&mut r, c0, c0, f, h, w);
        for i in 0..levels {
            let in_dim = if i >= 1 { dims[i] / 2 } else { dims[i] };
            let out = dims[i + 1];
            let mut cur = in_dim;
            for _ in 0..=cfg.num_res_blocks {
                resblock(&mut r, cur, out, f, h, w);
                cur = out;
            }
            if i != levels - 1 {
                if tup[i] && chunk > 0 {
                    conv(&mut r, "upsample time_conv 3x1x1", out, 2 * out, 3, f, h, w);
                    f *= 2;
                }
                h *= 2;
                w *= 2;
                conv(&mut r, "upsample 2x + conv 3x3", out, out / 2, 9, f, h, w);
            }
        }
        let last = *dims.last().unwrap();
        norm(&mut r, last, f, h, w);
        conv(
            &mut r,
            "conv_out 3x3x3",
            last,
            cfg.out_channels,
            27,
            f,
            h,
            w,
        );
        r.memory(
            "frames to u8",
            1,
            cfg.out_channels * f * h * w,
            cfg.out_channels * f * h * w / eb,
            eb,
        );
    }
    r.0
}
