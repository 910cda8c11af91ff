//! What one request needs in memory beyond the loaded weights, from the sizes alone (before
//! anything is allocated): the admission check of `generate` and of the server's
//! `POST /v1/videos` ([`crate::cli::request::memory`]) compares it with what the machine has.
//! The transformer's activations come from the same estimate the placement planner reserves
//! ([`crate::model::mmdit::activation_bytes`]).
use crate::model::mmdit::{activation_bytes, TransformerConfig};
use crate::model::pipeline::VideoGeometry;
use crate::model::vae::VaeConfig;

/// Bytes of one request, by part.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestMemory {
    /// The initial noise, the latents, the velocity and the denoised estimate (f32), and the
    /// transformer's input and output for each batch entry.
    pub latents: u64,
    /// The decoded frames (f32) and their 8-bit copy for the video.
    pub frames: u64,
    /// The VAE decoder's working set: its widest feature map at full resolution (f32) for a
    /// conv's input and output and the causal cache, over the frames of one latent frame.
    pub vae: u64,
    /// The transformer's activations of one forward ([`activation_bytes`], bf16; twice that in
    /// the CPU's f32).
    pub activations: u64,
}

/// The estimate for a video of `geo` with `batch` transformer entries (2 with guidance).
pub fn request_memory(
    geo: &VideoGeometry,
    batch: usize,
    transformer: &TransformerConfig,
    vae: &VaeConfig,
) -> RequestMemory {
    let [_, c, t, h, w] = geo.latent_shape().map(|x| x as u64);
    let latent = c * t * h * w;
    let pixels = (geo.frames as u64) * (geo.height as u64) * (geo.width as u64);
    let p = transformer.patch.max(1) as u64;
    let tokens = t * (h / p).max(1) * (w / p).max(1);
    let widest = (vae.decoder_base_dim.unwrap_or(vae.base_dim)
        * vae.dim_mult.first().copied().unwrap_or(1)) as u64;
    let frames_per_latent = geo.layout.time_factor.max(1) as u64;
    RequestMemory {
        latents: latent.saturating_mul(4 * (4 + 2 * batch as u64)),
        frames: pixels.saturating_mul(3 * (4 + 1)),
        vae: widest
            .saturating_mul(geo.height as u64 * geo.width as u64)
            .saturating_mul(4 * 4 * frames_per_latent),
        activations: activation_bytes(transformer, batch, tokens as usize),
    }
}

impl RequestMemory {
    /// Host bytes: everything on the CPU (activations in f32); with a GPU, the frames and a
    /// host copy of the latents.
    pub fn host(&self, on_gpu: bool) -> u64 {
        if on_gpu {
            self.frames.saturating_add(self.latents)
        } else {
            self.latents
                .saturating_add(self.frames)
                .saturating_add(self.vae)
                .saturating_add(self.activations.saturating_mul(2))
        }
    }

    /// Device bytes with a GPU (0 on the CPU): latents, the VAE's working set, activations.
    pub fn device(&self, on_gpu: bool) -> u64 {
        if on_gpu {
            self.latents
                .saturating_add(self.vae)
                .saturating_add(self.activations)
        } else {
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::pipeline::{LatentLayout, VideoGeometry};

    #[test]
    fn grows_with_the_frames_and_the_size() {
        let t = TransformerConfig::contentv_8b();
        let v = VaeConfig::wan21();
        let g = |f, h, w| VideoGeometry::with_layout(LatentLayout::CONTENTV, f, h, w).unwrap();
        let small = request_memory(&g(17, 256, 256), 2, &t, &v);
        let big = request_memory(&g(1001, 4096, 4096), 2, &t, &v);
        // 1001 frames of 4096x4096 RGB in f32 alone are 201 GB
        assert!(big.frames > 200_000_000_000, "{big:?}");
        assert!(big.host(false) > 100 * small.host(false));
        assert!(small.host(true) < small.host(false));
        assert_eq!(small.device(false), 0);
    }
}
