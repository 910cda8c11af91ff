//! Multi-head attention over concatenated sequence segments: `softmax(scale * Q K^T + bias) V`.
//!
//! Layout: tokens-major with the heads in the last dim, as the projections produce them. Each
//! of `q`, `k`, `v` is a list of segments [B, S_i, H*d] (rows may be strided views, last dim
//! dense) that are concatenated along the sequence: the MMDiT joint attention passes
//! `[video, text]` for all three without building a concatenated copy; its last block passes
//! only the video queries. Output: [`attention_segs`] returns one contiguous [B, Sq_i, H*d]
//! tensor per query segment (the kernels write each segment's rows to its own buffer, so the
//! MMDiT block's output projections read the video and text outputs in place, no copy);
//! [`attention`] returns one [B, ΣSq, H*d] tensor (for a single query segment, the text
//! encoders' case, it is that segment's output).
//!
//! GPU: [`crate::ops::attention_cuda`] (kernels/attention.cu): the fused flash kernel for bf16
//! and head dim 64 (online softmax, the S x S matrix is never stored), a generic kernel otherwise.
//! CPU: [`attention_cpu`], exact f32 with a max-subtracted softmax.
use crate::error::Result;
use crate::ops::{common_gpu, host, par_rows};
use crate::runtime::Tensor;
use crate::shape_err;

/// Options of [`attention`].
#[derive(Clone, Copy, Debug)]
pub struct AttnOpts<'a> {
    pub heads: usize,
    /// Multiplies the scores (1/sqrt(d) usually, 1 for T5).
    pub scale: f32,
    /// Key j is masked for query i when j > i (positions over the concatenated sequences).
    pub causal: bool,
    /// Additive score bias [H, Sq, Sk], broadcast over the batch (T5 relative positions).
    pub bias: Option<&'a Tensor>,
}

impl<'a> AttnOpts<'a> {
    /// `heads` heads, scale 1/sqrt(head_dim), no mask, no bias.
    pub fn new(heads: usize, head_dim: usize) -> AttnOpts<'a> {
        AttnOpts {
            heads,
            scale: 1.0 / (head_dim as f32).sqrt(),
            causal: false,
            bias: None,
        }
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

/// Checks the segments and returns the dimensions.
pub fn attn_dims(q: &[&Tensor], k: &[&Tensor], v: &[&Tensor], o: &AttnOpts) -> Result<AttnDims> {
    let q0 = q
        .first()
        .ok_or_else(|| shape_err!("attention: no query segments"))?;
    let sh = q0.shape();
    if sh.len() != 3 || o.heads == 0 || sh[2] % o.heads != 0 {
        return Err(shape_err!(
            "attention: query {sh:?} must be [B, S, H*d] with H = {} dividing the last dim",
            o.heads
        ));
    }
    let (b, hd) = (sh[0], sh[2]);
    let sq = seg_len("attention (q)", q, b, hd)?;
    let sk = seg_len("attention (k)", k, b, hd)?;
    let sv = seg_len("attention (v)", v, b, hd)?;
    if sk != sv {
        return Err(shape_err!("attention: {sk} keys but {sv} values"));
    }
    if let Some(bias) = o.bias {
        if bias.shape() != [o.heads, sq, sk] {
            return Err(shape_err!(
                "attention: bias {:?}, expected [H={}, Sq={sq}, Sk={sk}]",
                bias.shape(),
                o.heads
            ));
        }
    }
    Ok(AttnDims {
        b,
        heads: o.heads,
        d: hd / o.heads,
        sq,
        sk,
    })
}

/// Attention over segment lists with one output [B, ΣSq, H*d]; see the module docs. A thin
/// wrapper of [`attention_segs`] for a single query segment.
pub fn attention(q: &[&Tensor], k: &[&Tensor], v: &[&Tensor], o: &AttnOpts) -> Result<Tensor> {
    let mut out = run(q, k, v, o, q.len() != 1)?;
    Ok(out.remove(0))
}

/// Attention over segment lists with one output per query segment: `out[i]` is a contiguous
/// [B, Sq_i, H*d] tensor of the rows of `q[i]` (empty segments included); see the module docs.
pub fn attention_segs(
    q: &[&Tensor],
    k: &[&Tensor],
    v: &[&Tensor],
    o: &AttnOpts,
) -> Result<Vec<Tensor>> {
    run(q, k, v, o, false)
}

/// `joint`: one output [B, ΣSq, H*d]; otherwise one per query segment.
fn run(
    q: &[&Tensor],
    k: &[&Tensor],
    v: &[&Tensor],
    o: &AttnOpts,
    joint: bool,
) -> Result<Vec<Tensor>> {
    let d = attn_dims(q, k, v, o)?;
    super::trace::record(
        super::trace::OpClass::Attention,
        4.0 * (d.b * d.heads * d.d) as f64 * d.sq as f64 * d.sk as f64,
    );
    let mut all: Vec<&Tensor> = q.iter().chain(k).chain(v).copied().collect();
    if let Some(b) = o.bias {
        all.push(b);
    }
    match common_gpu("attention", &all)? {
        None => {
            let cat = |segs: &[&Tensor]| -> Result<Vec<f32>> {
                // [B, S, HD] rows of all segments, batch-major.
                let datas: Vec<Vec<f32>> =
                    segs.iter().map(|t| t.to_vec_f32()).collect::<Result<_>>()?;
                let hd = d.heads * d.d;
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
            let y = attention_cpu(&qv, &kv, &vv, bias.as_deref(), &d, o.scale, o.causal);
            let hd = d.heads * d.d;
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
        Some(_) => {
            use crate::ops::attention_cuda::{
                attention_cuda_segs, attention_cuda_with, AttnKernel,
            };
            let (h, sc, ca, bias, auto) = (o.heads, o.scale, o.causal, o.bias, AttnKernel::Auto);
            if joint {
                Ok(vec![attention_cuda_with(q, k, v, h, sc, ca, bias, auto)?])
            } else {
                attention_cuda_segs(q, k, v, h, sc, ca, bias, auto)
            }
        }
    }
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
    let hd = d.heads * d.d;
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
