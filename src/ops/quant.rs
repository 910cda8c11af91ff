//! INT8 weight-only quantization (W8A16): symmetric scales per output channel (or per group of
//! `group` input channels), `w ≈ q * scale` with q in [-127, 127].
//!
//! GEMM: the CPU reference dequantises on the fly (f32). On the GPU the weight is dequantised
//! to bf16 into a pooled scratch buffer (`kernels/gemm_int8.cu`, one pass over N*K bytes) and
//! multiplied with cuBLASLt; for the transformer's GEMMs (M = 2 x 41,805 rows) the pass costs
//! about 1% of the GEMM, and the weights cross the bus and sit in memory at half the bytes.
use crate::error::{Error, Result};
use crate::ops::gemm::{linear_act, Act};
use crate::ops::{common_gpu, grid_1d, host, par_rows};
use crate::runtime::{DType, Device, KernelArgs, Linear, Tensor, Weight};
use crate::shape_err;

/// Quantizes a row-major [n, k] matrix. `group`: scales per `group` input channels (must divide
/// k), else one scale per row. Returns (q [n*k], scales [n * groups]).
pub fn quantize_per_channel(w: &[f32], n: usize, k: usize, group: Option<usize>) -> (Vec<i8>, Vec<f32>) {
    assert_eq!(w.len(), n * k);
    let g = group.unwrap_or(k).max(1);
    assert!(k % g == 0, "group {g} does not divide {k}");
    let groups = k / g;
    let mut q = vec![0i8; n * k];
    let mut s = vec![0f32; n * groups];
    for r in 0..n {
        for gi in 0..groups {
            let row = &w[r * k + gi * g..r * k + (gi + 1) * g];
            let amax = row.iter().fold(0f32, |m, v| m.max(v.abs()));
            let scale = amax / 127.0;
            s[r * groups + gi] = scale;
            if scale > 0.0 {
                let inv = 1.0 / scale;
                for (j, v) in row.iter().enumerate() {
                    q[r * k + gi * g + j] = (v * inv).round().clamp(-127.0, 127.0) as i8;
                }
            }
        }
    }
    (q, s)
}

/// `q * scale` back to f32 [n*k].
pub fn dequantize(q: &[i8], scales: &[f32], n: usize, k: usize) -> Vec<f32> {
    let groups = scales.len() / n.max(1);
    let g = k / groups.max(1);
    (0..n * k).map(|i| q[i] as f32 * scales[(i / k) * groups + (i % k) / g]).collect()
}

/// An INT8 weight from a dense [N, K] tensor (quantized on the host, placed on `t`'s device).
pub fn quantize_weight(t: &Tensor, group: Option<usize>) -> Result<Weight> {
    let sh = t.shape();
    if sh.len() != 2 {
        return Err(shape_err!("quantize: weight must be [N, K], got {sh:?}"));
    }
    let (n, k) = (sh[0], sh[1]);
    if let Some(g) = group {
        if g == 0 || k % g != 0 {
            return Err(Error::Input(format!("--group {g} must divide the input width {k}")));
        }
    }
    let (q, s) = quantize_per_channel(&t.to_vec_f32()?, n, k, group);
    let groups = s.len() / n;
    let dev = t.device();
    let q = Tensor::from_i8(q, &[n, k], dev)?;
    let scale = if groups == 1 { Tensor::from_f32(s, &[n], dev)? } else { Tensor::from_f32(s, &[n, groups], dev)? };
    Ok(Weight::Int8 { q, scale })
}

fn check(x: &Tensor, q: &Tensor, scale: &Tensor) -> Result<(usize, usize, usize)> {
    let (qs, ss) = (q.shape(), scale.shape());
    if q.dtype() != DType::I8 || qs.len() != 2 {
        return Err(shape_err!("linear_int8: q must be [N, K] i8, got {qs:?} {}", q.dtype().name()));
    }
    let (n, k) = (qs[0], qs[1]);
    let groups = if ss.len() == 1 { 1 } else { ss.get(1).copied().unwrap_or(0) };
    if ss.first() != Some(&n) || ss.len() > 2 || groups == 0 || k % groups != 0 {
        return Err(shape_err!("linear_int8: scale {ss:?} does not fit weight {qs:?} ([N] or [N, K/group])"));
    }
    if x.shape().last() != Some(&k) {
        return Err(shape_err!("linear_int8: input {:?} does not end in {k}", x.shape()));
    }
    Ok((n, k, groups))
}

/// `act(x dequant(q)^T + b)`: x [.., K], q [N, K] i8, scale [N] or [N, K/group] f32.
pub fn linear_int8(x: &Tensor, q: &Tensor, scale: &Tensor, bias: Option<&Tensor>, act: Act) -> Result<Tensor> {
    let (n, k, groups) = check(x, q, scale)?;
    let m = x.elem_count() / k.max(1);
    let mut out_shape = x.shape().to_vec();
    *out_shape.last_mut().unwrap() = n;
    match common_gpu("linear_int8", &[x, q, scale])? {
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
                        let z = crate::ops::gemm::dot(xr, &wrow) + bv.as_ref().map_or(0.0, |b| b[j]);
                        o[j] = act.apply(z);
                    }
                }
            });
            host(y, &out_shape)
        }
        Some(gpu) => {
            let dt = x.dtype();
            let w = Tensor::empty(&[n, k], dt, x.device())?;
            let name = crate::kname!("linear_int8", dt, "dequant_i8")?;
            let scale = scale.contiguous()?.to_dtype(DType::F32)?;
            let q = q.contiguous()?;
            unsafe {
                gpu.launch(
                    "gemm_int8",
                    name,
                    grid_1d(n * k),
                    (256, 1, 1),
                    0,
                    KernelArgs::new().ptr(q.dev_ptr()?).ptr(scale.dev_ptr()?).ptr(w.dev_ptr()?).i64(n as i64).i64(k as i64).i64(groups as i64),
                )?;
            }
            let bias = bias.map(|b| b.to_dtype(dt)).transpose()?;
            linear_act(x, &Linear { weight: Weight::Dense(w), bias }, act)
        }
    }
}

/// Which linears of a checkpoint INT8 applies to: the transformer's attention and MLP linears
/// and T5's attention and MLP linears. Norms, adaLN modulation, embeddings, the context
/// embedder, the final layer, CLIP and the VAE stay in bf16 / f32.
pub fn int8_applies(linear_name: &str) -> bool {
    let n = linear_name;
    let transformer = n.starts_with("transformer_blocks.") && (n.contains(".attn.") || n.contains(".ff.net.") || n.contains(".ff_context.net."));
    let t5 = n.starts_with("encoder.block.") && (n.contains(".SelfAttention.") || n.contains(".DenseReluDense."));
    transformer || t5
}

/// Host tensors of an INT8 weight (for writing a quantized checkpoint).
pub fn quantize_host(w: &[f32], n: usize, k: usize, group: Option<usize>) -> Result<(Tensor, Tensor)> {
    let (q, s) = quantize_per_channel(w, n, k, group);
    let groups = s.len() / n.max(1);
    let scale = if groups == 1 { Tensor::from_f32(s, &[n], &Device::Cpu)? } else { Tensor::from_f32(s, &[n, groups], &Device::Cpu)? };
    Ok((Tensor::from_i8(q, &[n, k], &Device::Cpu)?, scale))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_within_half_a_step() {
        let (n, k) = (5, 64);
        let w: Vec<f32> = (0..n * k).map(|i| ((i * 7919) % 1001) as f32 / 500.0 - 1.0).collect();
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

    #[test]
    fn policy() {
        assert!(int8_applies("transformer_blocks.3.attn.to_q"));
        assert!(int8_applies("transformer_blocks.37.ff_context.net.2") && int8_applies("transformer_blocks.0.ff.net.0.proj"));
        assert!(!int8_applies("transformer_blocks.3.norm1.linear") && !int8_applies("norm_out.linear") && !int8_applies("context_embedder"));
        assert!(int8_applies("encoder.block.5.layer.1.DenseReluDense.wo") && !int8_applies("text_model.encoder.layers.0.mlp.fc1"));
    }
}
