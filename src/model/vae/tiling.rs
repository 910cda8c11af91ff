//! Spatial tiling of the VAE decode: tiles in latent space with overlap; each tile is decoded
//! over all frames (with its own causal caches, so only one tile's activations and caches are
//! alive at a time) and blended into the video with linear ramps over the overlaps, in pixel
//! space. Blending is done on the host; the result is returned on the decoder's device.
use super::VaeDecoder;
use crate::error::Result;
use crate::runtime::{DType, Device, Tensor};
use crate::shape_err;

/// Tile size and overlap, in latent pixels (x8 in the video).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TileConfig {
    pub tile: usize,
    pub overlap: usize,
}

impl Default for TileConfig {
    fn default() -> Self {
        TileConfig {
            tile: 32,
            overlap: 8,
        }
    }
}

impl TileConfig {
    /// Whether a latent of h x w needs more than one tile.
    pub fn needed(&self, h: usize, w: usize) -> bool {
        h > self.tile || w > self.tile
    }

    /// Tile starts along one axis of length `n`: the fewest tiles whose overlaps are at least
    /// `overlap`, spread evenly (first flush with 0, last flush with the end).
    pub fn starts(&self, n: usize) -> Vec<usize> {
        if n <= self.tile {
            return vec![0];
        }
        let ov = self.overlap.min(self.tile - 1);
        let stride = self.tile - ov;
        let nt = (n - ov).div_ceil(stride).max(2);
        let span = n - self.tile;
        let mut v: Vec<usize> = (0..nt)
            .map(|i| (i * span + (nt - 1) / 2) / (nt - 1))
            .collect();
        v.dedup();
        v
    }
}

/// Blend weights along one axis for a tile covering pixels [a, b) with the previous tile
/// ending at `prev_end` and the next starting at `next_start` (pixels): linear ramps over the
/// overlaps, 1 elsewhere. Two overlapping ramps sum to 1.
pub fn axis_weights(
    a: usize,
    b: usize,
    prev_end: Option<usize>,
    next_start: Option<usize>,
) -> Vec<f32> {
    (a..b)
        .map(|x| {
            let mut w = 1.0f32;
            if let Some(pe) = prev_end {
                if pe > a && x < pe {
                    w = w.min(((x - a) as f32 + 0.5) / (pe - a) as f32);
                }
            }
            if let Some(ns) = next_start {
                if ns < b && x >= ns {
                    w = w.min(((b - x) as f32 - 0.5) / (b - ns) as f32);
                }
            }
            w
        })
        .collect()
}

pub(crate) fn decode_tiled(
    dec: &VaeDecoder,
    latents: &Tensor,
    denorm: bool,
    tc: &TileConfig,
    out_shape: [usize; 5],
) -> Result<Tensor> {
    if tc.tile == 0 {
        return Err(shape_err!("vae tiling: tile size must be > 0"));
    }
    let s = latents.shape().to_vec();
    let (b, z, t, h, w) = (s[0], s[1], s[2], s[3], s[4]);
    let lat = latents.to_vec_f32()?;
    let sf = dec.config().spatial_factor();
    let [_, c, f, oh, ow] = out_shape;
    let mut acc = vec![0.0f32; b * c * f * oh * ow];
    let mut wsum = vec![0.0f32; oh * ow];
    let hs = tc.starts(h);
    let ws = tc.starts(w);
    let th = tc.tile.min(h);
    let tw = tc.tile.min(w);
    for (yi, &y0) in hs.iter().enumerate() {
        let wy = axis_weights(
            y0 * sf,
            (y0 + th) * sf,
            (yi > 0).then(|| (hs[yi - 1] + th) * sf),
            hs.get(yi + 1).map(|&n| n * sf),
        );
        for (xi, &x0) in ws.iter().enumerate() {
            let wx = axis_weights(
                x0 * sf,
                (x0 + tw) * sf,
                (xi > 0).then(|| (ws[xi - 1] + tw) * sf),
                ws.get(xi + 1).map(|&n| n * sf),
            );
            // Latent crop [B, z, T, th, tw] on the host, then to the decoder's device.
            let mut crop = Vec::with_capacity(b * z * t * th * tw);
            for bzt in 0..b * z * t {
                for yy in 0..th {
                    let row = (bzt * h + y0 + yy) * w + x0;
                    crop.extend_from_slice(&lat[row..row + tw]);
                }
            }
            let tile = dec
                .decode_untiled(&crop, &[b, z, t, th, tw], denorm, None)?
                .to_vec_f32()?;
            let (ph, pw) = (th * sf, tw * sf);
            for bcf in 0..b * c * f {
                for yy in 0..ph {
                    let src = &tile[(bcf * ph + yy) * pw..(bcf * ph + yy + 1) * pw];
                    let drow = (bcf * oh + y0 * sf + yy) * ow + x0 * sf;
                    let dst = &mut acc[drow..drow + pw];
                    for xx in 0..pw {
                        dst[xx] += wy[yy] * wx[xx] * src[xx];
                    }
                }
            }
            for yy in 0..ph {
                for xx in 0..pw {
                    wsum[(y0 * sf + yy) * ow + x0 * sf + xx] += wy[yy] * wx[xx];
                }
            }
        }
    }
    for (i, v) in acc.iter_mut().enumerate() {
        *v /= wsum[i % (oh * ow)];
    }
    Tensor::from_f32(acc, &out_shape, &Device::Cpu)?
        .to_device(dec.device())?
        .to_dtype(DType::F32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_cover_and_overlap() {
        let t = TileConfig {
            tile: 32,
            overlap: 8,
        };
        assert_eq!(t.starts(20), vec![0]);
        assert_eq!(t.starts(32), vec![0]);
        assert_eq!(t.starts(54), vec![0, 22]);
        assert_eq!(t.starts(96), vec![0, 21, 43, 64]);
        let t = TileConfig {
            tile: 8,
            overlap: 4,
        };
        assert_eq!(t.starts(16), vec![0, 4, 8]);
        for n in 9..80 {
            let st = t.starts(n);
            assert_eq!(st[0], 0);
            assert_eq!(*st.last().unwrap(), n - 8);
            for p in st.windows(2) {
                assert!(p[0] + 8 - p[1] >= 4, "n={n} {st:?}");
            }
        }
    }

    #[test]
    fn weights_partition_unity() {
        let t = TileConfig {
            tile: 8,
            overlap: 3,
        };
        for n in [8usize, 9, 13, 20, 31] {
            let st = t.starts(n);
            let mut sum = vec![0.0f32; n * 8];
            for (i, &s) in st.iter().enumerate() {
                let w = axis_weights(
                    s * 8,
                    (s + 8) * 8,
                    (i > 0).then(|| (st[i - 1] + 8) * 8),
                    st.get(i + 1).map(|&x| x * 8),
                );
                for (k, v) in w.iter().enumerate() {
                    assert!(*v > 0.0 && *v <= 1.0);
                    sum[s * 8 + k] += v;
                }
            }
            for v in sum {
                assert!((v - 1.0).abs() < 1e-5, "n={n}: {v}");
            }
        }
    }
}
