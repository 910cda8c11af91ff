//! Latent previews: one latent frame to a small RGB image by a fixed linear map of the 16
//! latent channels, at no VAE cost (what ComfyUI's and Wan2GP's "latent2rgb" previews do).
//!
//! The map is ComfyUI's `latent_formats.Wan21` (`latent_rgb_factors`, 16 x 3, and
//! `latent_rgb_factors_bias`), fitted for the Wan 2.1 VAE's normalised latent space, which is
//! the DiT space of ContentV's latents: `rgb = latent . F + b` in [-1, 1], then
//! `u8 = round((rgb + 1) / 2 * 255)` clamped. One pixel per latent position: the image is
//! the latent size (width / 8 x height / 8), the caller scales it for display.

/// `LATENT_RGB[c] = [r, g, b]` weights of latent channel `c`.
pub const LATENT_RGB: [[f32; 3]; 16] = [
    [-0.1299, -0.1692, 0.2932],
    [0.0671, 0.0406, 0.0442],
    [0.3568, 0.2548, 0.1747],
    [0.0372, 0.2344, 0.1420],
    [0.0313, 0.0189, -0.0328],
    [0.0296, -0.0956, -0.0665],
    [-0.3477, -0.4059, -0.2925],
    [0.0166, 0.1902, 0.1975],
    [-0.0412, 0.0267, -0.1364],
    [-0.1293, 0.0740, 0.1636],
    [0.0680, 0.3019, 0.1128],
    [0.0032, 0.0581, 0.0639],
    [-0.1251, 0.0927, 0.1699],
    [0.0060, -0.0633, 0.0005],
    [0.3477, 0.2275, 0.2950],
    [0.1984, 0.0913, 0.1861],
];

/// The bias added to every pixel.
pub const LATENT_RGB_BIAS: [f32; 3] = [-0.1835, -0.0868, -0.3360];

/// Latent frame `t` of `latents` [1, 16, T, h, w] as RGB u8 [h, w, 3]; returns (width, height,
/// pixels). `None` when the shape is not [1, 16, T, h, w] with `t < T` or the data is short.
pub fn latent_preview_rgb(
    latents: &[f32],
    shape: [usize; 5],
    t: usize,
) -> Option<(usize, usize, Vec<u8>)> {
    let [b, c, frames, h, w] = shape;
    if b != 1 || c != 16 || t >= frames || h == 0 || w == 0 {
        return None;
    }
    if latents.len() != c * frames * h * w {
        return None;
    }
    let plane = h * w;
    let mut out = vec![0u8; plane * 3];
    for p in 0..plane {
        let mut rgb = LATENT_RGB_BIAS;
        for (ch, f) in LATENT_RGB.iter().enumerate() {
            let v = latents[(ch * frames + t) * plane + p];
            for k in 0..3 {
                rgb[k] += v * f[k];
            }
        }
        for k in 0..3 {
            let x = ((rgb[k].clamp(-1.0, 1.0) + 1.0) * 0.5 * 255.0).round();
            out[p * 3 + k] = x as u8;
        }
    }
    Some((w, h, out))
}

/// The step's estimate of the clean latents: `latents - sigma * velocity` (flow matching:
/// `x_sigma = (1 - sigma) x0 + sigma noise`, `v = noise - x0`).
pub fn denoised_estimate(latents: &[f32], velocity: &[f32], sigma: f32) -> Vec<f32> {
    latents
        .iter()
        .zip(velocity)
        .map(|(&x, &v)| x - sigma * v)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A plain f64 reference of one pixel.
    fn reference(vals: &[f64; 16]) -> [u8; 3] {
        let mut o = [0u8; 3];
        for k in 0..3 {
            let mut s = LATENT_RGB_BIAS[k] as f64;
            for c in 0..16 {
                s += vals[c] * LATENT_RGB[c][k] as f64;
            }
            o[k] = ((s.clamp(-1.0, 1.0) + 1.0) / 2.0 * 255.0).round() as u8;
        }
        o
    }

    #[test]
    fn preview_matches_the_reference_and_picks_the_frame() {
        let (t, h, w) = (3, 2, 5);
        let n = 16 * t * h * w;
        let lat: Vec<f32> = (0..n)
            .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
            .collect();
        for f in 0..t {
            let (pw, ph, px) = latent_preview_rgb(&lat, [1, 16, t, h, w], f).unwrap();
            assert_eq!((pw, ph, px.len()), (w, h, w * h * 3));
            for p in 0..h * w {
                let mut v = [0f64; 16];
                for (c, vc) in v.iter_mut().enumerate() {
                    *vc = lat[(c * t + f) * h * w + p] as f64;
                }
                let want = reference(&v);
                for k in 0..3 {
                    assert!(
                        (px[p * 3 + k] as i32 - want[k] as i32).abs() <= 1,
                        "frame {f} pixel {p} channel {k}"
                    );
                }
            }
        }
        // zero latents give the bias colour
        let z = vec![0.0; 16 * h * w];
        let (_, _, px) = latent_preview_rgb(&z, [1, 16, 1, h, w], 0).unwrap();
        assert_eq!(&px[..3], &[104, 116, 85]);
        // bad shapes
        assert!(latent_preview_rgb(&z, [1, 4, 1, h, w], 0).is_none());
        assert!(latent_preview_rgb(&z, [1, 16, 1, h, w], 1).is_none());
        assert!(latent_preview_rgb(&z[1..], [1, 16, 1, h, w], 0).is_none());
        assert_eq!(
            denoised_estimate(&[1.0, 2.0], &[0.5, -1.0], 0.5),
            vec![0.75, 2.5]
        );
    }
}
