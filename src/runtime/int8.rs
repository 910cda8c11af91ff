//! The INT8 weight format (W8A16, `--quantize int8`): symmetric scales per output channel (or
//! per group of `group` input channels), `w ≈ q * scale` with q in [-127, 127]. Host-side
//! quantization lives here, below ops, because the residency layer quantizes streamed layers as
//! it fills their host copies; the GEMMs that consume the format are in `ops::quant`.
use crate::error::Result;
use crate::runtime::{Device, Tensor};

/// Quantizes a row-major [n, k] matrix. `group`: scales per `group` input channels (must divide
/// k), else one scale per row. Returns (q [n*k], scales [n * groups]).
pub fn quantize_per_channel(
    w: &[f32],
    n: usize,
    k: usize,
    group: Option<usize>,
) -> (Vec<i8>, Vec<f32>) {
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
    (0..n * k)
        .map(|i| q[i] as f32 * scales[(i / k) * groups + (i % k) / g])
        .collect()
}

/// Host tensors of an INT8 weight (for writing a quantized checkpoint).
pub fn quantize_host(
    w: &[f32],
    n: usize,
    k: usize,
    group: Option<usize>,
) -> Result<(Tensor, Tensor)> {
    let (q, s) = quantize_per_channel(w, n, k, group);
    let groups = s.len() / n.max(1);
    let scale = if groups == 1 {
        Tensor::from_f32(s, &[n], &Device::Cpu)?
    } else {
        Tensor::from_f32(s, &[n, groups], &Device::Cpu)?
    };
    Ok((Tensor::from_i8(q, &[n, k], &Device::Cpu)?, scale))
}
