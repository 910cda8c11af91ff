//! Video sizes and their latents: [`LatentLayout`] (the factors of a checkpoint),
//! [`VideoGeometry`] (a checked request size) and the frame rounding of the reference.
use std::path::Path;

use crate::error::{Error, Result};
use crate::io::config::ConfigJson;

/// How video sizes map to latents. ContentV-8B (Wan2.1 VAE, patch 2): 16 channels, 4x in time,
/// 8x in space, so frames are 4k+1 and sizes multiples of 16. Other checkpoints of the same
/// architecture may differ: the reference pipeline takes the factors from the VAE config
/// (`2^sum(temperal_downsample)` in time, `2^len(temperal_downsample)` in space) and the patch
/// from the transformer's, and so does [`LatentLayout::from_model_dir`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LatentLayout {
    /// latent channels (VAE z_dim = transformer in_channels)
    pub channels: usize,
    pub time_factor: usize,
    pub spatial_factor: usize,
    /// transformer patch size (per frame, square)
    pub patch: usize,
}

impl Default for LatentLayout {
    fn default() -> LatentLayout {
        LatentLayout::CONTENTV
    }
}

impl LatentLayout {
    pub const CONTENTV: LatentLayout = LatentLayout {
        channels: 16,
        time_factor: 4,
        spatial_factor: 8,
        patch: 2,
    };

    /// Width and height must be multiples of this (VAE factor x patch).
    pub fn size_multiple(&self) -> usize {
        self.spatial_factor * self.patch
    }

    /// Rounds a frame count down to the nearest `time_factor * k + 1` (`n >= 1`): for
    /// ContentV 126, 127, 128 -> 125.
    ///
    /// Note: the reference (CV L270-275) computes `n // 4 * 4 + 1`, which agrees for every `n`
    /// except multiples of 4, where it rounds *up* by one (128 -> 129). contentv never makes
    /// more frames than asked for.
    pub fn round_frames(&self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (n - 1) / self.time_factor * self.time_factor + 1
        }
    }

    /// Reads the layout of a model folder in diffusers layout from `vae/config.json`
    /// (`z_dim`, `temperal_downsample`) and `transformer/config.json` (`in_channels`,
    /// `patch_size`); a missing file or key takes the diffusers default (ContentV's values),
    /// a malformed one is an error that names it.
    pub fn from_model_dir(dir: &Path) -> Result<LatentLayout> {
        // A missing file takes the defaults (the model-folder check reports missing parts).
        let read = |sub: &str| -> Result<Option<ConfigJson>> {
            let path = dir.join(sub).join("config.json");
            match std::fs::read(&path) {
                Ok(text) => Ok(Some(ConfigJson::parse(&text, &path.display().to_string())?)),
                Err(_) => Ok(None),
            }
        };
        let mut l = LatentLayout::CONTENTV;
        let mut vae_channels = None;
        if let Some(v) = read("vae")? {
            let z = v.positive("z_dim")?.unwrap_or(16);
            l.channels = z;
            if let Some(flags) = v.bools("temperal_downsample")? {
                if flags.len() > 8 {
                    return Err(v.bad("temperal_downsample", "has more than 8 entries"));
                }
                l.time_factor = 1 << flags.iter().filter(|&&b| b).count();
                l.spatial_factor = 1 << flags.len();
            }
            vae_channels = Some((v, z));
        }
        if let Some(t) = read("transformer")? {
            l.patch = t.positive("patch_size")?.unwrap_or(2);
            let c = t.positive("in_channels")?.unwrap_or(16);
            if let Some((v, z)) = &vae_channels {
                if *z != c {
                    return Err(Error::Weights(format!(
                        "{} says in_channels {c} but {} says z_dim {z}: the transformer and the VAE do not belong together",
                        t.origin(),
                        v.origin()
                    )));
                }
            }
            l.channels = c;
        }
        Ok(l)
    }

    /// Checks a latent shape [1, C, T, h, w] against this layout.
    pub fn check_latent_shape(&self, s: &[usize]) -> Result<()> {
        if s.len() != 5 || s[0] != 1 || s[1] != self.channels || s[2..].contains(&0) {
            return Err(Error::Input(format!(
                "latents must have shape [1, {}, T, h, w], got {s:?}",
                self.channels
            )));
        }
        Ok(())
    }
}

/// Sizes derived from the requested video size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VideoGeometry {
    pub frames: usize,
    pub height: usize,
    pub width: usize,
    pub layout: LatentLayout,
}

impl VideoGeometry {
    /// ContentV's geometry: see [`VideoGeometry::with_layout`].
    pub fn new(frames: usize, height: usize, width: usize) -> Result<VideoGeometry> {
        VideoGeometry::with_layout(LatentLayout::CONTENTV, frames, height, width)
    }

    /// Checks the size (frames = time_factor k + 1 and >= 1; width and height multiples of
    /// `layout.size_multiple()`). Use [`LatentLayout::round_frames`] first to get the
    /// reference's rounding.
    pub fn with_layout(
        layout: LatentLayout,
        frames: usize,
        height: usize,
        width: usize,
    ) -> Result<VideoGeometry> {
        let tf = layout.time_factor;
        if frames == 0 || (frames - 1) % tf != 0 {
            return Err(Error::Input(format!(
                "the frame count must be {tf}k+1 (1, {}, {}, ...), got {frames}",
                1 + tf,
                1 + 2 * tf
            )));
        }
        let m = layout.size_multiple();
        if height == 0 || width == 0 || height % m != 0 || width % m != 0 {
            return Err(Error::Input(format!(
                "width and height must be positive multiples of {m}, got {width}x{height}"
            )));
        }
        Ok(VideoGeometry {
            frames,
            height,
            width,
            layout,
        })
    }

    /// Latent shape [1, C, T, h, w].
    pub fn latent_shape(&self) -> [usize; 5] {
        let l = &self.layout;
        [
            1,
            l.channels,
            (self.frames - 1) / l.time_factor + 1,
            self.height / l.spatial_factor,
            self.width / l.spatial_factor,
        ]
    }

    /// From a latent shape [1, C, T, h, w].
    pub fn from_latent_shape(layout: LatentLayout, s: &[usize]) -> Result<VideoGeometry> {
        layout.check_latent_shape(s)?;
        VideoGeometry::with_layout(
            layout,
            1 + layout.time_factor * (s[2] - 1),
            s[3] * layout.spatial_factor,
            s[4] * layout.spatial_factor,
        )
    }
}

/// [`LatentLayout::round_frames`] for ContentV (4k+1).
pub fn round_frames(n: usize) -> usize {
    LatentLayout::CONTENTV.round_frames(n)
}
