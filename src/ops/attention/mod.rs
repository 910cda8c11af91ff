//! Multi-head attention over concatenated sequence segments: `softmax(scale * Q K^T + bias) V`.
//!
//! Layout: tokens-major with the heads in the last dim, as the projections produce them. Each
//! of `q`, `k`, `v` is a list of segments [B, S_i, H*d] (rows may be strided views, last dim
//! dense) that are concatenated along the sequence: the MMDiT joint attention passes
//! `[video, text]` for all three without building a concatenated copy; its last block passes
//! only the video queries.
//!
//! One entry, [`attention_into`]: `out[i]` ([B, Sq_i, H*d], any row and batch strides, last dim
//! dense) receives the rows of query segment `q[i]` (the kernels write each segment's rows to
//! its own buffer, so the MMDiT block's output projections read the video and text outputs in
//! place, no copy). Two thin wrappers allocate the outputs: [`attention_segs`] (one contiguous
//! [B, Sq_i, H*d] tensor per query segment) and [`attention`] (one [B, ΣSq, H*d] tensor whose
//! row ranges are the segments' outputs; for a single query segment, the text encoders' case,
//! it is that segment's output). [`AttnOpts`] holds everything else: heads, scale, causal mask,
//! bias and the kernel ([`AttnKernel`], `Auto` by default).
//!
//! The folder, one file per part:
//! * here: the API, the shape checks ([`AttnOpts::dims`], computed once per call) and the CPU
//!   reference [`attention_cpu`] (exact f32 with a max-subtracted softmax);
//! * `launch`: the GPU path: the kernel [`AttnKernel::Auto`] stands for, dtype and size checks,
//!   the operands as the kernels take them, dispatch to a kernel family;
//! * `operands`: the segments and outputs as the kernels see them (`SEG_ARGS`, `OUT_ARGS`);
//! * `mma`: `flash_attn_fwd_d64` (kernels/attention.cu), bf16, head dim 64, mma.sync m16n8k16
//!   with 32 query rows per warp (the FlashAttention-2 design), every arch from sm_80;
//! * `naive`: `attn_naive_{f32,bf16,f16}` (kernels/attention.cu), any head dim <= 256, one warp
//!   per query row, f32 math: every other case and the second opinion;
//! * `hopper`: `flash_attn_hopper_d64` (kernels/attention_hopper.cu, sm_90a only), bf16, head
//!   dim 64, the FlashAttention-3 design (TMA, mbarrier ring, wgmma, ping-pong consumers);
//! * [`select`]: which flash kernel a GPU runs (`CONTENTV_ATTENTION`) and its first-use
//!   self-check.
//!
//! Host tensors run the CPU reference (result f32; [`attention_into`] needs GPU outputs, host
//! tensors are not written in place), device tensors the kernels (result in the inputs' dtype).
mod launch;
mod operands;

mod hopper;
mod mma;
mod naive;
pub mod select;

use crate::error::{Error, Result};
use crate::ops::{common_gpu, host, par_rows};
use crate::runtime::Tensor;
use crate::shape_err;

pub use hopper::hopper_available;
pub use operands::MAX_SEGMENTS;

/// Largest head dim of the generic CUDA kernel (`attn_naive_*` keeps a query row of at most
/// this many f32 in shared memory).
pub const NAIVE_MAX_D: usize = crate::runtime::kernels::tiles::NAIVE_DMAX as usize;

/// Which kernel runs an attention on the GPU (host tensors always run the CPU reference and
/// take only `Auto`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum AttnKernel {
    /// The GPU's flash kernel ([`select`]: Hopper on sm_90, mma elsewhere, `CONTENTV_ATTENTION`
    /// to force one, a self-check on first use) for bf16 with head dim 64, the generic kernel
    /// otherwise.
    #[default]
    Auto,
    /// The FlashAttention-3-style sm_90a kernel (an error if the inputs do not qualify like
    /// [`AttnKernel::Mma`] or the GPU has no sm_90a image).
    Hopper,
    /// The mma.sync flash kernel (an error if the inputs are not bf16 with head dim 64).
    Mma,
    /// The generic kernel.
    Naive,
}

impl AttnKernel {
    /// The name `CONTENTV_ATTENTION` takes (and messages use).
    pub fn name(self) -> &'static str {
        match self {
            AttnKernel::Auto => "auto",
            AttnKernel::Hopper => "hopper",
            AttnKernel::Mma => "mma",
            AttnKernel::Naive => "naive",
        }
    }
}

/// Options of an attention call.
#[derive(Clone, Copy, Debug)]
pub struct AttnOpts<'a> {
    pub heads: usize,
    /// Multiplies the scores (1/sqrt(d) usually, 1 for T5).
    pub scale: f32,
    /// Key j is masked for query i when j > i (positions over the concatenated sequences).
    pub causal: bool,
    /// Additive score bias [H, Sq, Sk], broadcast over the batch (T5 relative positions).
    pub bias: Option<&'a Tensor>,
    /// The GPU kernel; `Auto` unless a test or bench pins one.
    pub kernel: AttnKernel,
}

impl<'a> AttnOpts<'a> {
    /// `heads` heads, scale 1/sqrt(head_dim), no mask, no bias, [`AttnKernel::Auto`].
    pub fn new(heads: usize, head_dim: usize) -> AttnOpts<'a> {
        AttnOpts {
            heads,
            scale: 1.0 / (head_dim as f32).sqrt(),
            causal: false,
            bias: None,
            kernel: AttnKernel::Auto,
        }
    }

    /// Checks the segments (and the bias) against these options and returns the dimensions.
    pub fn dims(&self, q: &[&Tensor], k: &[&Tensor], v: &[&Tensor]) -> Result<AttnDims> {
        let q0 = q
            .first()
            .ok_or_else(|| shape_err!("attention: no query segments"))?;
        let sh = q0.shape();
        if sh.len() != 3 || self.heads == 0 || sh[2] % self.heads != 0 {
            return Err(shape_err!(
                "attention: query {sh:?} must be [B, S, H*d] with H = {} dividing the last dim",
                self.heads
            ));
        }
        let (b, hd) = (sh[0], sh[2]);
        let sq = seg_len("attention (q)", q, b, hd)?;
        let sk = seg_len("attention (k)", k, b, hd)?;
        let sv = seg_len("attention (v)", v, b, hd)?;
        if sk != sv {
            return Err(shape_err!("attention: {sk} keys but {sv} values"));
        }
        if let Some(bias) = self.bias {
            if bias.shape() != [self.heads, sq, sk] {
                return Err(shape_err!(
                    "attention: bias {:?}, expected [H={}, Sq={sq}, Sk={sk}]",
                    bias.shape(),
                    self.heads
                ));
            }
        }
        Ok(AttnDims {
            b,
            heads: self.heads,
            d: hd / self.heads,
            sq,
            sk,
        })
    }
}

/// Shapes of one attention call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttnDims {
    pub b: usize,
    pub heads: usize,
    pub d: usize,
    pub sq: usize,
    pub sk: usize,
}

impl AttnDims {
    /// H*d: the last dim of every operand.
    pub fn hd(&self) -> usize {
        self.heads * self.d
    }
}

fn seg_len(op: &str, segs: &[&Tensor], b: usize, hd: usize) -> Result<usize> {
    if segs.is_empty() {
        return Err(shape_err!("{op}: no segments"));
    }
    let mut s = 0;
    for t in segs {
        let sh = t.shape();
        if sh.len() != 3 || sh[0] != b || sh[2] != hd {
            return Err(shape_err!(
                "{op}: segment {sh:?} is not [B={b}, S, H*d={hd}]"
            ));
        }
        s += sh[1];
    }
    Ok(s)
}

/// Where a call runs: the dims (checked once) and the GPU (`None`: host tensors).
struct Call<'t> {
    d: AttnDims,
    gpu: Option<&'t std::sync::Arc<crate::runtime::Gpu>>,
}

/// The checks every entry makes once: shapes, one device for all operands (`out` included),
/// a kernel choice only on the GPU; records the op for `ops::trace`.
fn enter<'t>(
    q: &[&'t Tensor],
    k: &[&'t Tensor],
    v: &[&'t Tensor],
    out: &[&'t Tensor],
    o: &AttnOpts<'t>,
) -> Result<Call<'t>> {
    let d = o.dims(q, k, v)?;
    super::trace::record(
        super::trace::OpClass::Attention,
        4.0 * (d.b * d.heads * d.d) as f64 * d.sq as f64 * d.sk as f64,
    );
    let mut all: Vec<&Tensor> = q.iter().chain(k).chain(v).chain(out).copied().collect();
    if let Some(b) = o.bias {
        all.push(b);
    }
    let gpu = common_gpu("attention", &all)?;
    if gpu.is_none() && o.kernel != AttnKernel::Auto {
        return Err(Error::Other(format!(
            "attention: the {} kernel is a CUDA kernel but the tensors are on the CPU (use \
             AttnKernel::Auto, the CPU reference)",
            o.kernel.name()
        )));
    }
    Ok(Call { d, gpu })
}

/// Attention into `out`: `out[i]` ([B, S_i, H*d], dtype of q, last dim dense, any row and batch
/// strides) receives the rows of query segment `q[i]`; the kernel is `o.kernel`. The outputs
/// must be on the GPU of the inputs and must not overlap the inputs or each other. See the
/// module docs.
pub fn attention_into(
    q: &[&Tensor],
    k: &[&Tensor],
    v: &[&Tensor],
    out: &[&Tensor],
    o: &AttnOpts,
) -> Result<()> {
    let call = enter(q, k, v, out, o)?;
    let Some(gpu) = call.gpu else {
        return Err(Error::Other(
            "attention_into: the tensors are on the CPU, where outputs are not written in place \
             (use ops::attention::attention or attention_segs)"
                .into(),
        ));
    };
    launch::run(gpu, q, k, v, out, o, &call.d)
}

/// Attention with one output [B, ΣSq, H*d] (each query segment's rows at its offset); see the
/// module docs. A thin wrapper of [`attention_into`] that allocates (on the CPU: the reference).
pub fn attention(q: &[&Tensor], k: &[&Tensor], v: &[&Tensor], o: &AttnOpts) -> Result<Tensor> {
    let call = enter(q, k, v, &[], o)?;
    match call.gpu {
        None => cpu(q, k, v, o, &call.d, true).map(|mut y| y.remove(0)),
        Some(gpu) => joint_gpu(gpu, q, k, v, o, &call.d),
    }
}

/// Attention with one output per query segment: `out[i]` is a contiguous [B, Sq_i, H*d]
/// tensor of the rows of `q[i]` (empty segments included); see the module docs. A thin wrapper
/// of [`attention_into`] that allocates (on the CPU: the reference).
pub fn attention_segs(
    q: &[&Tensor],
    k: &[&Tensor],
    v: &[&Tensor],
    o: &AttnOpts,
) -> Result<Vec<Tensor>> {
    let call = enter(q, k, v, &[], o)?;
    let d = &call.d;
    match call.gpu {
        None => cpu(q, k, v, o, d, false),
        Some(gpu) => {
            let outs = q
                .iter()
                .map(|t| Tensor::empty(&[d.b, t.shape()[1], d.hd()], t.dtype(), t.device()))
                .collect::<Result<Vec<_>>>()?;
            let refs: Vec<&Tensor> = outs.iter().collect();
            launch::run(gpu, q, k, v, &refs, o, d)?;
            Ok(outs)
        }
    }
}

/// The GPU path of [`attention`] with the dims already checked: one [B, ΣSq, H*d] tensor, the
/// kernels write each query segment's rows into its view of it.
fn joint_gpu(
    gpu: &std::sync::Arc<crate::runtime::Gpu>,
    q: &[&Tensor],
    k: &[&Tensor],
    v: &[&Tensor],
    o: &AttnOpts,
    d: &AttnDims,
) -> Result<Tensor> {
    let out = Tensor::empty(&[d.b, d.sq, d.hd()], q[0].dtype(), q[0].device())?;
    let mut views = Vec::with_capacity(q.len());
    let mut row = 0;
    for t in q {
        views.push(out.narrow(1, row, t.shape()[1])?);
        row += t.shape()[1];
    }
    let refs: Vec<&Tensor> = views.iter().collect();
    launch::run(gpu, q, k, v, &refs, o, d)?;
    Ok(out)
}

/// The CPU path: `joint`: one output [B, ΣSq, H*d]; otherwise one per query segment.
fn cpu(
    q: &[&Tensor],
    k: &[&Tensor],
    v: &[&Tensor],
    o: &AttnOpts,
    d: &AttnDims,
    joint: bool,
) -> Result<Vec<Tensor>> {
    let hd = d.hd();
    let cat = |segs: &[&Tensor]| -> Result<Vec<f32>> {
        // [B, S, HD] rows of all segments, batch-major.
        let datas: Vec<Vec<f32>> = segs.iter().map(|t| t.to_vec_f32()).collect::<Result<_>>()?;
        let mut out = Vec::new();
        for bi in 0..d.b {
            for (t, x) in segs.iter().zip(&datas) {
                let n = t.shape()[1] * hd;
                out.extend_from_slice(&x[bi * n..(bi + 1) * n]);
            }
        }
        Ok(out)
    };
    let (qv, kv, vv) = (cat(q)?, cat(k)?, cat(v)?);
    let bias = o.bias.map(|b| b.to_vec_f32()).transpose()?;
    let y = attention_cpu(&qv, &kv, &vv, bias.as_deref(), d, o.scale, o.causal);
    if joint {
        return Ok(vec![host(y, &[d.b, d.sq, hd])?]);
    }
    // Rows of query segment i: [off_i, off_i + n_i) of every batch.
    let mut outs = Vec::with_capacity(q.len());
    let mut off = 0;
    for t in q {
        let n = t.shape()[1];
        let mut yi = Vec::with_capacity(d.b * n * hd);
        for bi in 0..d.b {
            yi.extend_from_slice(&y[(bi * d.sq + off) * hd..(bi * d.sq + off + n) * hd]);
        }
        outs.push(host(yi, &[d.b, n, hd])?);
        off += n;
    }
    Ok(outs)
}

/// CPU reference on dense f32 [B, Sq, H*d] / [B, Sk, H*d] buffers, bias [H, Sq, Sk].
pub fn attention_cpu(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    bias: Option<&[f32]>,
    d: &AttnDims,
    scale: f32,
    causal: bool,
) -> Vec<f32> {
    let hd = d.hd();
    // Keys and values per (batch, head) as dense [Sk, d] blocks.
    let per_head = |x: &[f32]| -> Vec<f32> {
        let mut out = vec![0f32; d.b * d.heads * d.sk * d.d];
        for bi in 0..d.b {
            for j in 0..d.sk {
                for h in 0..d.heads {
                    let src = &x[(bi * d.sk + j) * hd + h * d.d..][..d.d];
                    out[((bi * d.heads + h) * d.sk + j) * d.d..][..d.d].copy_from_slice(src);
                }
            }
        }
        out
    };
    let (kh, vh) = (per_head(k), per_head(v));
    let mut y = vec![0f32; d.b * d.sq * hd];
    par_rows(&mut y, hd, |r0, out| {
        let mut p = vec![0f32; d.sk];
        for (ri, orow) in out.chunks_mut(hd).enumerate() {
            let row = r0 + ri;
            let (bi, i) = (row / d.sq, row % d.sq);
            for h in 0..d.heads {
                let qr = &q[row * hd + h * d.d..][..d.d];
                let base = (bi * d.heads + h) * d.sk;
                for j in 0..d.sk {
                    p[j] = if causal && j > i {
                        f32::NEG_INFINITY
                    } else {
                        let s = crate::ops::gemm::dot(qr, &kh[(base + j) * d.d..][..d.d]) * scale;
                        s + bias.map_or(0.0, |b| b[(h * d.sq + i) * d.sk + j])
                    };
                }
                crate::ops::act::softmax_row(&mut p);
                let o = &mut orow[h * d.d..(h + 1) * d.d];
                o.iter_mut().for_each(|x| *x = 0.0);
                for j in 0..d.sk {
                    let w = p[j];
                    if w != 0.0 {
                        let vr = &vh[(base + j) * d.d..][..d.d];
                        for c in 0..d.d {
                            o[c] += w * vr[c];
                        }
                    }
                }
            }
        }
    });
    y
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::Device;

    fn rnd(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn segments_equal_concatenated_and_naive() {
        let (b, h, dd, s1, s2) = (2, 2, 4, 3, 2);
        let hd = h * dd;
        let mk = |s: usize, seed| {
            Tensor::from_f32(rnd(b * s * hd, seed), &[b, s, hd], &Device::Cpu).unwrap()
        };
        let (q1, q2, k1, k2, v1, v2) = (
            mk(s1, 1),
            mk(s2, 2),
            mk(s1, 3),
            mk(s2, 4),
            mk(s1, 5),
            mk(s2, 6),
        );
        let o = AttnOpts::new(h, dd);
        let y = attention(&[&q1, &q2], &[&k1, &k2], &[&v1, &v2], &o).unwrap();
        let cat = |a: &Tensor, c: &Tensor| crate::ops::elementwise::concat(&[a, c], 1).unwrap();
        let (q, k, v) = (cat(&q1, &q2), cat(&k1, &k2), cat(&v1, &v2));
        let y2 = attention(&[&q], &[&k], &[&v], &o).unwrap();
        assert_eq!(y.to_vec_f32().unwrap(), y2.to_vec_f32().unwrap());
        // Naive: per (b, h, i) softmax over all keys.
        let (qv, kv, vv, yv) = (
            q.to_vec_f32().unwrap(),
            k.to_vec_f32().unwrap(),
            v.to_vec_f32().unwrap(),
            y.to_vec_f32().unwrap(),
        );
        let s = s1 + s2;
        for bi in 0..b {
            for hh in 0..h {
                for i in 0..s {
                    let sc: Vec<f64> = (0..s)
                        .map(|j| {
                            (0..dd)
                                .map(|c| {
                                    qv[(bi * s + i) * hd + hh * dd + c] as f64
                                        * kv[(bi * s + j) * hd + hh * dd + c] as f64
                                })
                                .sum::<f64>()
                                * 0.5
                        })
                        .collect();
                    let m = sc.iter().cloned().fold(f64::MIN, f64::max);
                    let e: Vec<f64> = sc.iter().map(|x| (x - m).exp()).collect();
                    let z: f64 = e.iter().sum();
                    for c in 0..dd {
                        let want: f64 = (0..s)
                            .map(|j| e[j] / z * vv[(bi * s + j) * hd + hh * dd + c] as f64)
                            .sum();
                        let got = yv[(bi * s + i) * hd + hh * dd + c] as f64;
                        assert!(
                            (got - want).abs() < 1e-5,
                            "b{bi} h{hh} i{i} c{c}: {got} vs {want}"
                        );
                    }
                }
            }
        }
        // One output per query segment = the rows of the joint output.
        let segs = attention_segs(&[&q1, &q2], &[&k1, &k2], &[&v1, &v2], &o).unwrap();
        assert_eq!(segs.len(), 2);
        assert_eq!(segs[0].shape(), [b, s1, hd]);
        assert_eq!(segs[1].shape(), [b, s2, hd]);
        let (o1, o2) = (segs[0].to_vec_f32().unwrap(), segs[1].to_vec_f32().unwrap());
        for bi in 0..b {
            assert_eq!(
                &o1[bi * s1 * hd..(bi + 1) * s1 * hd],
                &yv[bi * s * hd..(bi * s + s1) * hd]
            );
            assert_eq!(
                &o2[bi * s2 * hd..(bi + 1) * s2 * hd],
                &yv[(bi * s + s1) * hd..(bi + 1) * s * hd]
            );
        }
        // Queries of the first segment only = first rows of the full output.
        let y3 = attention(&[&q1], &[&k1, &k2], &[&v1, &v2], &o)
            .unwrap()
            .to_vec_f32()
            .unwrap();
        for bi in 0..b {
            assert_eq!(
                &y3[bi * s1 * hd..(bi + 1) * s1 * hd],
                &yv[bi * s * hd..(bi * s + s1) * hd]
            );
        }
    }

    /// The kernel choice is a GPU matter: host tensors take only `Auto`, and `attention_into`
    /// (which writes in place) wants GPU outputs; both errors say what to use instead.
    #[test]
    fn host_tensors_take_no_kernel_and_no_outputs() {
        let x = Tensor::from_f32(rnd(2 * 3 * 8, 1), &[2, 3, 8], &Device::Cpu).unwrap();
        for kernel in [AttnKernel::Mma, AttnKernel::Naive, AttnKernel::Hopper] {
            let o = AttnOpts {
                kernel,
                ..AttnOpts::new(2, 4)
            };
            let e = attention(&[&x], &[&x], &[&x], &o).unwrap_err().to_string();
            assert!(e.contains(kernel.name()) && e.contains("Auto"), "{e}");
        }
        let out = Tensor::empty(&[2, 3, 8], crate::runtime::DType::F32, &Device::Cpu).unwrap();
        let e = attention_into(&[&x], &[&x], &[&x], &[&out], &AttnOpts::new(2, 4))
            .unwrap_err()
            .to_string();
        assert!(e.contains("attention_segs"), "{e}");
        // Shapes are checked before anything else, on every entry.
        let bad = Tensor::from_f32(rnd(2 * 3 * 6, 2), &[2, 3, 6], &Device::Cpu).unwrap();
        let e = attention_segs(&[&x], &[&bad], &[&x], &AttnOpts::new(2, 4))
            .unwrap_err()
            .to_string();
        assert!(e.contains("segment [2, 3, 6]"), "{e}");
    }

    #[test]
    fn causal_first_row_is_first_value() {
        let (b, h, dd, s) = (1, 1, 2, 3);
        let q = Tensor::from_f32(rnd(s * dd, 9), &[b, s, h * dd], &Device::Cpu).unwrap();
        let v = Tensor::from_f32(rnd(s * dd, 10), &[b, s, h * dd], &Device::Cpu).unwrap();
        let o = AttnOpts {
            causal: true,
            ..AttnOpts::new(h, dd)
        };
        let y = attention(&[&q], &[&q], &[&v], &o)
            .unwrap()
            .to_vec_f32()
            .unwrap();
        let vv = v.to_vec_f32().unwrap();
        assert_eq!(&y[..2], &vv[..2]);
    }
}
