//! Wan2.1 VAE decoder (`AutoencoderKLWan`, diffusers 0.33.1), docs/spec.md §6.
//!
//! ```ignore
//! let vae = VaeDecoder::from_dir(&dir.join("vae"), &device, VaeOptions::default())?;
//! let video = vae.decode(&latents, DecodeOpts::default())?; // latents: DiT space [B, C, T, h, w]
//! let frames = to_uint8_frames(&video, 0)?;      // [F, H, W, 3] u8
//! ```
//!
//! Decoding runs one latent frame at a time (as diffusers' `_decode`). Every causal conv with
//! k_t = 3 (conv_in, resnet conv1/conv2, conv_out, the upsample3d `time_conv`s) owns a cache
//! slot holding the last 2 frames of its input, so memory does not grow with the frame count;
//! the result equals one causal conv over the whole sequence. upsample3d skips its time_conv
//! on the first chunk (diffusers' "Rep" marker), so chunk 0 yields 1 frame and every later chunk
//! 2^(temporal ups) frames: F = 1 + 2^(temporal ups)(T-1), 1 + 4(T-1) for the real config.
//! Spatial upsampling is 2^(len(dim_mult)-1); see [`VaeConfig`] for the config keys read.
//!
//! The latent de-normalisation `z = x * std + mean` (per channel; the pipeline's
//! `x / (1/std) + mean`) is folded into `post_quant_conv` (a 1x1x1 conv, so this is exact up to
//! f32 rounding). The mid-block attention's 1/sqrt(C) is folded into the q rows of `to_qkv`.
//!
//! Optional spatial tiling ([`TileConfig`]): tiles in latent space with overlap, each decoded
//! over all frames with its own caches, blended linearly in pixel space.
//!
//! Files: [`config`] (`vae/config.json`), [`weights`] (the checkpoint layout, written once
//! against `WeightSource`: the loader, and run against the recorder the inventory; the folds),
//! [`decoder`] (the chunk loop, one for both devices, and the blocks), [`frames`] (u8 frames),
//! [`tiling`]. Where the decoder lives under `--offload model` is the residency layer's
//! ([`crate::runtime::residency::ComponentResidency`]), not the model's.
pub mod config;
pub mod decoder;
pub mod frames;
#[doc(hidden)]
pub mod tiling;
pub mod weights;

use crate::model::interfaces::FrameDecoder;
use crate::ops::conv::ConvPrecision;
use crate::runtime::residency::ComponentResidency;
use crate::runtime::Tensor;

pub use config::VaeConfig;
pub use decoder::{DecodeState, VaeDecoder};
pub use frames::{to_u8, to_uint8_frames, VideoFrames};
pub use tiling::TileConfig;
pub use weights::{describe, MapWeights};

/// Decoder options (fixed at load for the precision; see [`VaeDecoder::set_options`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct VaeOptions {
    /// Conv arithmetic on the GPU (the reference is f32).
    pub precision: ConvPrecision,
    /// Spatial tiling for frames that do not fit; None decodes whole frames.
    pub tiling: Option<TileConfig>,
}

/// Receives intermediate outputs per chunk (for parity debugging): `post_quant_conv`,
/// `decoder.conv_in`, `decoder.mid_block`, `decoder.up_blocks.{i}`, with the chunk index.
pub type Probe<'a> = &'a mut dyn FnMut(&str, usize, &Tensor);

/// The space of the latents handed to [`VaeDecoder::decode`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LatentSpace {
    /// The transformer's latents: de-normalised in the decoder (`z = x*std + mean`, folded into
    /// `post_quant_conv`).
    #[default]
    Dit,
    /// Already de-normalised (the input of diffusers' `AutoencoderKLWan.decode`).
    Denormalized,
}

/// Whether [`VaeDecoder::decode`] tiles.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Tiling {
    /// As [`VaeOptions::tiling`] says (only when the latent is larger than one tile).
    #[default]
    AsConfigured,
    /// Always (the fallback after a GPU out-of-memory error): the configured tiles, or tiles
    /// of 16 latent pixels for a latent smaller than one configured tile.
    Always,
    /// Whole frames whatever the options say.
    Never,
}

/// What one [`VaeDecoder::decode`] call does.
#[derive(Default)]
pub struct DecodeOpts<'a> {
    pub space: LatentSpace,
    pub tiling: Tiling,
    /// Reports the intermediates of every chunk (untiled decodes only: with a probe, a decode
    /// that would tile is an error).
    pub probe: Option<Probe<'a>>,
}

impl DecodeOpts<'_> {
    /// De-normalised latents, tiled as configured.
    pub fn denormalized() -> Self {
        DecodeOpts {
            space: LatentSpace::Denormalized,
            ..Default::default()
        }
    }
}

impl FrameDecoder for VaeDecoder {
    fn decode(&self, latents: &Tensor) -> crate::error::Result<Tensor> {
        VaeDecoder::decode(self, latents, DecodeOpts::default())
    }
    fn decode_low_memory(&self, latents: &Tensor) -> crate::error::Result<Tensor> {
        let o = DecodeOpts {
            tiling: Tiling::Always,
            ..Default::default()
        };
        VaeDecoder::decode(self, latents, o)
    }
}

/// The decoder wherever the residency layer placed it: resident, or (`--offload model`)
/// loaded for each decode and freed after it.
impl FrameDecoder for ComponentResidency<VaeDecoder> {
    fn decode(&self, latents: &Tensor) -> crate::error::Result<Tensor> {
        self.with(|d| FrameDecoder::decode(d, latents))
    }
    fn decode_low_memory(&self, latents: &Tensor) -> crate::error::Result<Tensor> {
        self.with(|d| d.decode_low_memory(latents))
    }
}

#[cfg(test)]
mod tests;
