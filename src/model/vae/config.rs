//! `vae/config.json`: the decoder's architecture parameters and what they imply (channel
//! ladder, temporal and spatial factors).
use std::path::Path;

use crate::error::{Error, Result};
use crate::io::config::ConfigJson;

/// `vae/config.json` (the keys the decoder uses).
///
/// Every architecture parameter of diffusers' `AutoencoderKLWan` that shapes the decoder is read:
/// `base_dim` (or `decoder_base_dim`, diffusers >= 0.35), `z_dim`, `dim_mult` (any length >= 1),
/// `num_res_blocks`, `temperal_downsample` (any pattern; the decoder uses the reversed list),
/// `latents_mean` / `latents_std` and `out_channels`. `attn_scales` only adds attention blocks to
/// the *encoder* (diffusers' `WanDecoder3d` stores it but never uses it), so any value is
/// accepted. `dropout` is inactive at inference. Wan2.2 features (`is_residual`, `patch_size`)
/// are rejected with an error naming the key.
#[derive(Clone, Debug, PartialEq)]
pub struct VaeConfig {
    pub base_dim: usize,
    /// `decoder_base_dim` (newer diffusers; `None`: the decoder uses `base_dim`).
    pub decoder_base_dim: Option<usize>,
    pub z_dim: usize,
    pub dim_mult: Vec<usize>,
    pub num_res_blocks: usize,
    pub temperal_downsample: Vec<bool>,
    pub latents_mean: Vec<f32>,
    pub latents_std: Vec<f32>,
    /// Channels of `decoder.conv_out` (3 = RGB; newer diffusers' `out_channels`).
    pub out_channels: usize,
}

impl VaeConfig {
    /// The Wan2.1 defaults (= diffusers defaults = ContentV's VAE).
    pub fn wan21() -> VaeConfig {
        VaeConfig {
            base_dim: 96,
            decoder_base_dim: None,
            z_dim: 16,
            dim_mult: vec![1, 2, 4, 4],
            num_res_blocks: 2,
            temperal_downsample: vec![false, true, true],
            latents_mean: vec![
                -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508, 0.4134,
                -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
            ],
            latents_std: vec![
                2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743, 3.2687, 2.1526,
                2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
            ],
            out_channels: 3,
        }
    }

    /// Parses a diffusers `config.json`; missing keys take the diffusers defaults (Wan2.1).
    pub fn from_json(text: &str) -> Result<VaeConfig> {
        Self::from_json_at(text, "vae/config.json")
    }

    /// [`from_json`](Self::from_json) with `origin` (the file) named in every error.
    pub fn from_json_at(text: &str, origin: &str) -> Result<VaeConfig> {
        let c = ConfigJson::parse(text.as_bytes(), origin)?;
        // Another VAE class (e.g. the image VAE `AutoencoderKL` of a Stable Diffusion 3
        // checkpoint) cannot decode ContentV latents: say so instead of missing-tensor errors.
        if let Some(class) = c.get("_class_name").and_then(|v| v.as_str()) {
            if class != "AutoencoderKLWan" {
                return Err(Error::Weights(format!(
                    "{origin}: the VAE class is {class:?}; ContentV decodes with the Wan2.1 video VAE (AutoencoderKLWan). \
                     Is this the folder of another model (e.g. Stable Diffusion 3.5)?"
                )));
            }
        }
        let bad = |k: &str, what: &str| c.bad(k, what);
        let d = VaeConfig::wan21();
        let floats = |k: &str, def: &Vec<f32>| -> Result<Vec<f32>> {
            Ok(c.f64s(k)?
                .map(|v| v.into_iter().map(|x| x as f32).collect())
                .unwrap_or_else(|| def.clone()))
        };
        let cfg = VaeConfig {
            base_dim: c.usize_or("base_dim", d.base_dim)?,
            decoder_base_dim: match c.get("decoder_base_dim") {
                None => None,
                Some(_) => Some(c.usize_or("decoder_base_dim", 0)?),
            },
            z_dim: c.usize_or("z_dim", d.z_dim)?,
            num_res_blocks: c.usize_or("num_res_blocks", d.num_res_blocks)?,
            dim_mult: c.usizes("dim_mult")?.unwrap_or_else(|| d.dim_mult.clone()),
            temperal_downsample: c
                .bools("temperal_downsample")?
                .unwrap_or_else(|| d.temperal_downsample.clone()),
            latents_mean: floats("latents_mean", &d.latents_mean)?,
            latents_std: floats("latents_std", &d.latents_std)?,
            out_channels: c.usize_or("out_channels", d.out_channels)?,
        };
        // attn_scales: validated as a list of numbers, otherwise unused by the decoder.
        c.f64s("attn_scales")?;
        if c.get("is_residual")
            .map(|x| x.as_bool().unwrap_or(true))
            .unwrap_or(false)
        {
            return Err(bad(
                "is_residual",
                "is true: the Wan2.2 residual VAE is not supported (only the Wan2.1 decoder)",
            ));
        }
        if let Some(p) = c.get("patch_size") {
            if p.as_u64() != Some(1) {
                return Err(bad(
                    "patch_size",
                    &format!("is {p}: patchified (Wan2.2) VAEs are not supported; use null"),
                ));
            }
        }
        cfg.validate_at(origin)?;
        Ok(cfg)
    }

    pub fn from_file(path: &Path) -> Result<VaeConfig> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Weights(format!("{}: {e}", path.display())))?;
        Self::from_json_at(&text, &path.display().to_string())
    }

    pub(crate) fn validate(&self) -> Result<()> {
        self.validate_at("vae config")
    }

    fn validate_at(&self, origin: &str) -> Result<()> {
        crate::model::inventory::vae_bounds(origin, self)?;
        let n = self.dim_mult.len();
        let bad = |k: &str, what: String| Err(Error::Weights(format!("{origin}: \"{k}\" {what}")));
        if n == 0 {
            return bad("dim_mult", "must not be empty".into());
        }
        if self.dim_mult.contains(&0) {
            return bad("dim_mult", format!("{:?} has a zero entry", self.dim_mult));
        }
        if self.dec_base() == 0 {
            return bad("base_dim", "must be > 0".into());
        }
        if self.z_dim == 0 {
            return bad("z_dim", "must be > 0".into());
        }
        if self.out_channels == 0 {
            return bad("out_channels", "must be > 0".into());
        }
        // diffusers indexes temperal_downsample[i] for i < len(dim_mult) - 1 (the decoder in the
        // reversed list): fewer entries fail there, more are ignored.
        if self.temperal_downsample.len() < n - 1 {
            return bad(
                "temperal_downsample",
                format!(
                    "{:?} has {} entries, but dim_mult {:?} needs {}",
                    self.temperal_downsample,
                    self.temperal_downsample.len(),
                    self.dim_mult,
                    n - 1
                ),
            );
        }
        for (k, v) in [
            ("latents_mean", &self.latents_mean),
            ("latents_std", &self.latents_std),
        ] {
            if v.len() != self.z_dim {
                return bad(
                    k,
                    format!(
                        "has {} entries, but z_dim is {} (set both in config.json)",
                        v.len(),
                        self.z_dim
                    ),
                );
            }
        }
        // Every upsampler halves its channels (Conv2d(C, C/2)); the next block's resnets take C/2.
        let dims = self.decoder_dims();
        for (i, &c) in dims[1..n].iter().enumerate() {
            if c / 2 == 0 {
                return bad(
                    "dim_mult",
                    format!("up block {i} has {c} channel(s): the upsampler would leave none"),
                );
            }
        }
        Ok(())
    }

    fn dec_base(&self) -> usize {
        self.decoder_base_dim.unwrap_or(self.base_dim)
    }

    /// Decoder channel ladder: [dim_mult[-1]] + reversed(dim_mult), times the decoder base dim.
    pub fn decoder_dims(&self) -> Vec<usize> {
        let b = self.dec_base();
        let mut d = vec![*self.dim_mult.last().unwrap() * b];
        d.extend(self.dim_mult.iter().rev().map(|m| m * b));
        d
    }
    /// The decoder's temporal upsampling per upsampler (up blocks 0..len(dim_mult)-1): the
    /// reversed temperal_downsample, first len(dim_mult)-1 entries (as diffusers indexes it).
    pub fn temperal_upsample(&self) -> Vec<bool> {
        self.temperal_downsample
            .iter()
            .rev()
            .take(self.dim_mult.len().saturating_sub(1))
            .copied()
            .collect()
    }
    /// Output frames per latent frame after the first: 2^(temporal upsamplers) (4 for Wan2.1).
    pub fn time_factor(&self) -> usize {
        1 << self.temperal_upsample().iter().filter(|&&b| b).count()
    }
    /// Spatial factor: 2^(len(dim_mult)-1) (8 for Wan2.1).
    pub fn spatial_factor(&self) -> usize {
        1 << (self.dim_mult.len() - 1)
    }
    /// Decoded frames for `t_lat` latent frames: 1 + time_factor*(T-1).
    pub fn frames_for(&self, t_lat: usize) -> usize {
        if t_lat == 0 {
            0
        } else {
            1 + self.time_factor() * (t_lat - 1)
        }
    }
}
