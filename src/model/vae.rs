//! Wan2.1 VAE decoder (`AutoencoderKLWan`, diffusers 0.33.1), docs/spec.md §6.
//!
//! ```ignore
//! let vae = VaeDecoder::load(&weights, VaeConfig::from_file(&dir.join("vae/config.json"))?, VaeOptions::default())?;
//! let video = vae.decode(&latents)?;            // latents: DiT space [B, C, T, h, w]
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
/// The random tiny decoder of the unit tests: test data shared with tests/ and benches/, not
/// part of the library.
#[cfg(test)]
#[path = "../../tests/support/vae_synthetic.rs"]
mod synthetic;
#[doc(hidden)]
pub mod tiling;

use std::collections::HashMap;
use std::path::Path;

use crate::error::{Error, Result};
use crate::io::config::ConfigJson;
use crate::ops::conv::{
    cache_update, conv3d_into_w, conv3d_w, pack_weight_bf16, ConvOpts, ConvPrecision, ConvWeight,
};
use crate::ops::vae_glue as glue;
use crate::runtime::{DType, Device, Tensor, WeightStore};
use crate::shape_err;

pub use tiling::TileConfig;

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

    fn validate(&self) -> Result<()> {
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

/// Where the decoder's weights come from: f32 tensors by checkpoint key, on the decoder's device.
pub trait VaeWeights {
    fn device(&self) -> Device;
    /// The tensor `key` in f32, checked against `shape`.
    fn tensor_f32(&self, key: &str, shape: &[usize]) -> Result<Tensor>;
    fn contains(&self, key: &str) -> bool;
}

/// The VAE's checkpoint through the engine's one weight path ([`WeightStore`]: memory-mapped,
/// bounds-checked, counted), delivered in f32 on the store's device.
impl VaeWeights for WeightStore {
    fn device(&self) -> Device {
        WeightStore::device(self).clone()
    }
    fn tensor_f32(&self, key: &str, shape: &[usize]) -> Result<Tensor> {
        self.load(key, shape, DType::F32)
    }
    fn contains(&self, key: &str) -> bool {
        WeightStore::contains(self, key)
    }
}

/// Weights from a map of host tensors (tests, synthetic models), delivered on `device`.
pub struct MapWeights {
    pub tensors: HashMap<String, Tensor>,
    pub device: Device,
}

impl VaeWeights for MapWeights {
    fn device(&self) -> Device {
        self.device.clone()
    }
    fn tensor_f32(&self, key: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self
            .tensors
            .get(key)
            .ok_or_else(|| Error::Weights(format!("tensor {key} is missing")))?;
        if t.shape() != shape {
            return Err(Error::Weights(format!(
                "tensor {key} has shape {:?}, expected {shape:?}",
                t.shape()
            )));
        }
        t.to_dtype(DType::F32)?.to_device(&self.device)
    }
    fn contains(&self, key: &str) -> bool {
        self.tensors.contains_key(key)
    }
}

/// Decoder options.
#[derive(Clone, Copy, Debug, Default)]
pub struct VaeOptions {
    /// Conv arithmetic on the GPU (the reference is f32).
    pub precision: ConvPrecision,
    /// Spatial tiling for frames that do not fit; None decodes whole frames.
    pub tiling: Option<TileConfig>,
}

/// A conv; `slot` is its cache slot when it is causal with k_t > 1. The weight is f32 as loaded;
/// a GPU decoder with bf16 precision replaces it by its packed bf16 copy at load (one copy on the
/// device: nothing asks a loaded decoder for f32 convs, see [`VaeDecoder::load`]).
struct Conv {
    w: ConvWeight,
    b: Option<Tensor>,
    slot: Option<usize>,
}

impl Conv {
    /// The f32 weight (before any packing at load).
    fn f32_weight(&self) -> Result<&Tensor> {
        match &self.w {
            ConvWeight::F32(t) => Ok(t),
            ConvWeight::Bf16(_) => Err(Error::Other(
                "vae: the conv weight is held as packed bf16 only".into(),
            )),
        }
    }
}

struct ResBlock {
    norm1: Tensor,
    conv1: Conv,
    norm2: Tensor,
    conv2: Conv,
    shortcut: Option<Conv>,
}

struct AttnBlock {
    norm: Tensor,
    /// to_qkv as [3C, C, 1, 1] with the q rows scaled by 1/sqrt(C).
    qkv: Conv,
    proj: Conv,
}

struct Upsampler {
    /// upsample3d: time_conv [2C, C, 3, 1, 1] and the index of its "first chunk seen" flag.
    time_conv: Option<(Conv, usize)>,
    /// resample.1: Conv2d(C, C/2, 3, pad 1) after nearest 2x.
    conv: Conv,
}

struct UpBlock {
    resnets: Vec<ResBlock>,
    up: Option<Upsampler>,
}

/// Per-decode state: the causal caches and the upsample3d first-chunk flags.
pub struct DecodeState {
    slots: Vec<Option<Tensor>>,
    rep: Vec<bool>,
    chunks: usize,
}

/// Receives intermediate outputs per chunk (for parity debugging): `post_quant_conv`,
/// `decoder.conv_in`, `decoder.mid_block`, `decoder.up_blocks.{i}`, with the chunk index.
pub type Probe<'a> = &'a mut dyn FnMut(&str, usize, &Tensor);

/// The Wan2.1 VAE decoder.
pub struct VaeDecoder {
    cfg: VaeConfig,
    opts: VaeOptions,
    device: Device,
    /// post_quant_conv with the de-normalisation folded in, and the raw one.
    pq_denorm: Conv,
    pq_raw: Conv,
    conv_in: Conv,
    mid: (ResBlock, AttnBlock, ResBlock),
    ups: Vec<UpBlock>,
    norm_out: Tensor,
    conv_out: Conv,
    n_slots: usize,
    n_rep: usize,
    /// Device bytes of the weights (f32), for the memory plan.
    weight_bytes: u64,
}

struct Loader<'a> {
    w: &'a dyn VaeWeights,
    slots: usize,
    reps: usize,
    /// f32 bytes delivered so far (the decoder's weight footprint on its device).
    bytes: u64,
}

impl Loader<'_> {
    fn get(&mut self, key: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self.w.tensor_f32(key, shape)?;
        self.bytes += (t.elem_count() * 4) as u64;
        Ok(t)
    }
    fn conv(&mut self, key: &str, co: usize, ci: usize, k: &[usize]) -> Result<Conv> {
        let mut shape = vec![co, ci];
        shape.extend_from_slice(k);
        let w = self.get(&format!("{key}.weight"), &shape)?;
        let bk = format!("{key}.bias");
        let b = if self.w.contains(&bk) {
            Some(self.get(&bk, &[co])?)
        } else {
            None
        };
        let slot = if k.len() == 3 && k[0] > 1 {
            self.slots += 1;
            Some(self.slots - 1)
        } else {
            None
        };
        Ok(Conv {
            w: ConvWeight::F32(w),
            b,
            slot,
        })
    }
    fn gamma(&mut self, key: &str, c: usize, rank: usize) -> Result<Tensor> {
        let mut shape = vec![c];
        shape.extend(std::iter::repeat_n(1, rank));
        self.get(&format!("{key}.gamma"), &shape)?.reshape(&[c])
    }
    fn resblock(&mut self, key: &str, ci: usize, co: usize) -> Result<ResBlock> {
        // Slot order follows diffusers' call order: conv1, conv2 (the shortcut is 1x1x1).
        let norm1 = self.gamma(&format!("{key}.norm1"), ci, 3)?;
        let conv1 = self.conv(&format!("{key}.conv1"), co, ci, &[3, 3, 3])?;
        let norm2 = self.gamma(&format!("{key}.norm2"), co, 3)?;
        let conv2 = self.conv(&format!("{key}.conv2"), co, co, &[3, 3, 3])?;
        let shortcut = if ci != co {
            Some(self.conv(&format!("{key}.conv_shortcut"), co, ci, &[1, 1, 1])?)
        } else {
            None
        };
        Ok(ResBlock {
            norm1,
            conv1,
            norm2,
            conv2,
            shortcut,
        })
    }
}

/// Host copy of `t` with `f` applied to the rows of its first dim (`rows` = leading dim).
fn map_host(t: &Tensor, f: impl Fn(&mut [f32], usize)) -> Result<Vec<f32>> {
    let mut v = t.to_vec_f32()?;
    let rows = t.dim(0);
    let per = v.len() / rows.max(1);
    for r in 0..rows {
        f(&mut v[r * per..(r + 1) * per], r);
    }
    Ok(v)
}

impl VaeDecoder {
    /// Loads `decoder.*` and `post_quant_conv.*` (checkpoint key names of diffusers'
    /// `AutoencoderKLWan`) from `w` for `cfg`.
    pub fn load(w: &dyn VaeWeights, cfg: VaeConfig, opts: VaeOptions) -> Result<VaeDecoder> {
        cfg.validate()?;
        let device = w.device();
        let mut l = Loader {
            w,
            slots: 0,
            reps: 0,
            bytes: 0,
        };
        let z = cfg.z_dim;
        let dims = cfg.decoder_dims();

        // post_quant_conv, raw and with z = x*std + mean folded in:
        // W'[o,i] = W[o,i]*std[i], b'[o] = b[o] + sum_i W[o,i]*mean[i].
        let pq_raw = l.conv("post_quant_conv", z, z, &[1, 1, 1])?;
        let wv = pq_raw.f32_weight()?.to_vec_f32()?;
        let bv = match &pq_raw.b {
            Some(b) => b.to_vec_f32()?,
            None => vec![0.0; z],
        };
        let mut wf = vec![0.0f32; z * z];
        let mut bf = vec![0.0f32; z];
        for o in 0..z {
            let mut acc = bv[o] as f64;
            for i in 0..z {
                wf[o * z + i] = (wv[o * z + i] as f64 * cfg.latents_std[i] as f64) as f32;
                acc += wv[o * z + i] as f64 * cfg.latents_mean[i] as f64;
            }
            bf[o] = acc as f32;
        }
        let pq_denorm = Conv {
            w: ConvWeight::F32(Tensor::from_f32(wf, &[z, z, 1, 1, 1], &device)?),
            b: Some(Tensor::from_f32(bf, &[z], &device)?),
            slot: None,
        };

        let conv_in = l.conv("decoder.conv_in", dims[0], z, &[3, 3, 3])?;
        let c = dims[0];
        let mid0 = l.resblock("decoder.mid_block.resnets.0", c, c)?;
        let attn = {
            let p = "decoder.mid_block.attentions.0";
            let norm = l.gamma(&format!("{p}.norm"), c, 2)?;
            let qkv = l.conv(&format!("{p}.to_qkv"), 3 * c, c, &[1, 1])?;
            let s = 1.0 / (c as f32).sqrt();
            let qw = map_host(qkv.f32_weight()?, |row, r| {
                if r < c {
                    row.iter_mut().for_each(|v| *v *= s)
                }
            })?;
            let qb = match &qkv.b {
                Some(b) => Some(Tensor::from_f32(
                    map_host(b, |row, r| {
                        if r < c {
                            row[0] *= s
                        }
                    })?,
                    &[3 * c],
                    &device,
                )?),
                None => None,
            };
            let qkv = Conv {
                w: ConvWeight::F32(Tensor::from_f32(qw, &[3 * c, c, 1, 1], &device)?),
                b: qb,
                slot: None,
            };
            let proj = l.conv(&format!("{p}.proj"), c, c, &[1, 1])?;
            AttnBlock { norm, qkv, proj }
        };
        let mid1 = l.resblock("decoder.mid_block.resnets.1", c, c)?;

        let tup = cfg.temperal_upsample();
        let n = cfg.dim_mult.len();
        let mut ups = Vec::with_capacity(n);
        for i in 0..n {
            // diffusers: in_dim halves for i >= 1 (the previous upsampler halved the channels).
            let in_dim = if i >= 1 { dims[i] / 2 } else { dims[i] };
            let out_dim = dims[i + 1];
            let mut resnets = Vec::new();
            let mut cur = in_dim;
            for k in 0..=cfg.num_res_blocks {
                resnets.push(l.resblock(
                    &format!("decoder.up_blocks.{i}.resnets.{k}"),
                    cur,
                    out_dim,
                )?);
                cur = out_dim;
            }
            let up = if i != n - 1 {
                let p = format!("decoder.up_blocks.{i}.upsamplers.0");
                let time_conv = if tup[i] {
                    let tc = l.conv(&format!("{p}.time_conv"), 2 * out_dim, out_dim, &[3, 1, 1])?;
                    l.reps += 1;
                    Some((tc, l.reps - 1))
                } else {
                    None
                };
                let conv = l.conv(&format!("{p}.resample.1"), out_dim / 2, out_dim, &[3, 3])?;
                Some(Upsampler { time_conv, conv })
            } else {
                None
            };
            ups.push(UpBlock { resnets, up });
        }
        let last = *dims.last().unwrap();
        let norm_out = l.gamma("decoder.norm_out", last, 3)?;
        let conv_out = l.conv("decoder.conv_out", cfg.out_channels, last, &[3, 3, 3])?;
        let (n_slots, n_rep, weight_bytes) = (l.slots, l.reps, l.bytes);
        let mut dec = VaeDecoder {
            weight_bytes,
            cfg,
            opts,
            device,
            pq_denorm,
            pq_raw,
            conv_in,
            mid: (mid0, attn, mid1),
            ups,
            norm_out,
            conv_out,
            n_slots,
            n_rep,
        };
        if dec.device.is_cuda() && dec.opts.precision == ConvPrecision::Bf16 {
            // The tensor-core path: every conv weight converted once to the kernel's bf16
            // layout, the f32 copy dropped (the decoder's precision is fixed at load).
            let mut bytes = dec.weight_bytes as i64;
            for c in dec.convs_mut() {
                if let ConvWeight::F32(t) = &c.w {
                    let p = pack_weight_bf16(t)?;
                    bytes += p.bytes() as i64 - (t.elem_count() * 4) as i64;
                    c.w = ConvWeight::Bf16(p);
                }
            }
            dec.weight_bytes = bytes.max(0) as u64;
        }
        Ok(dec)
    }

    /// Every conv of the decoder.
    fn convs_mut(&mut self) -> Vec<&mut Conv> {
        fn res(r: &mut ResBlock) -> Vec<&mut Conv> {
            let mut v = vec![&mut r.conv1, &mut r.conv2];
            v.extend(r.shortcut.as_mut());
            v
        }
        let mut v = vec![
            &mut self.pq_denorm,
            &mut self.pq_raw,
            &mut self.conv_in,
            &mut self.conv_out,
        ];
        let (m0, a, m1) = &mut self.mid;
        v.extend(res(m0));
        v.extend([&mut a.qkv, &mut a.proj]);
        v.extend(res(m1));
        for ub in &mut self.ups {
            for r in &mut ub.resnets {
                v.extend(res(r));
            }
            if let Some(u) = &mut ub.up {
                if let Some((tc, _)) = &mut u.time_conv {
                    v.push(tc);
                }
                v.push(&mut u.conv);
            }
        }
        v
    }

    /// Loads from a `vae/` directory: `config.json` + one `*.safetensors`.
    pub fn from_dir(dir: &Path, device: &Device, opts: VaeOptions) -> Result<VaeDecoder> {
        let cfg = VaeConfig::from_file(&dir.join("config.json"))?;
        crate::model::inventory::vae(&cfg, dir)?.check_dir(dir)?;
        let store = WeightStore::open(dir, device, DType::F32)?;
        let dec = Self::load(&*store, cfg, opts)?;
        // The decoder holds what it uses (some tensors are rearranged at load): drop the
        // store's copies so each weight is on the device once.
        store.release_all();
        Ok(dec)
    }

    pub fn config(&self) -> &VaeConfig {
        &self.cfg
    }
    /// Device bytes of the decoder's weights (f32, or the packed bf16 conv weights of a GPU
    /// decoder loaded with bf16 precision).
    pub fn weight_bytes(&self) -> u64 {
        self.weight_bytes
    }
    pub fn device(&self) -> &Device {
        &self.device
    }
    pub fn options(&self) -> &VaeOptions {
        &self.opts
    }
    /// Tiling may change freely; the precision must stay what the decoder was loaded with when
    /// its weights were packed for bf16 (an f32 conv then fails with an error).
    pub fn set_options(&mut self, opts: VaeOptions) {
        self.opts = opts;
    }

    /// Output shape for latents [B, z, T, h, w]: [B, out_channels, 1 + tf(T-1), sf*h, sf*w] with
    /// tf = [`VaeConfig::time_factor`] and sf = [`VaeConfig::spatial_factor`] ([B, 3, 1 + 4(T-1), 8h, 8w]
    /// for Wan2.1).
    pub fn output_shape(&self, latent_shape: &[usize]) -> Result<[usize; 5]> {
        let s = latent_shape;
        if s.len() != 5 || s[1] != self.cfg.z_dim {
            return Err(shape_err!(
                "vae decode: latents must be [B, {}, T, h, w], got {s:?}",
                self.cfg.z_dim
            ));
        }
        let f = self.cfg.spatial_factor();
        Ok([
            s[0],
            self.cfg.out_channels,
            self.cfg.frames_for(s[2]),
            s[3] * f,
            s[4] * f,
        ])
    }

    /// Decodes DiT-space latents [B, z, T, h, w] (de-normalised here: z = x*std + mean) to a
    /// video [B, 3, 1+4(T-1), 8h, 8w] in [-1, 1] (Wan2.1; see [`output_shape`](Self::output_shape)),
    /// f32, on the decoder's device.
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        self.decode_impl(latents, true)
    }

    /// Like [`decode`](Self::decode) for latents that are already de-normalised (the input of
    /// diffusers' `AutoencoderKLWan.decode`).
    pub fn decode_denormalized(&self, z: &Tensor) -> Result<Tensor> {
        self.decode_impl(z, false)
    }

    /// Decodes with spatial tiling whatever the options say (the fallback after a GPU
    /// out-of-memory error). A latent smaller than one tile is decoded as one tile.
    pub fn decode_tiled(&self, latents: &Tensor) -> Result<Tensor> {
        let out_shape = self.output_shape(latents.shape())?;
        let tc = self.opts.tiling.unwrap_or_default();
        let tc = if tc.needed(latents.dim(3), latents.dim(4)) {
            tc
        } else {
            tiling::TileConfig {
                tile: 16,
                overlap: 4,
            }
        };
        tiling::decode_tiled(self, latents, true, &tc, out_shape)
    }

    fn decode_impl(&self, latents: &Tensor, denorm: bool) -> Result<Tensor> {
        let out_shape = self.output_shape(latents.shape())?;
        match self.opts.tiling {
            Some(tc) if tc.needed(latents.dim(3), latents.dim(4)) => {
                tiling::decode_tiled(self, latents, denorm, &tc, out_shape)
            }
            _ => self.decode_untiled(&latents.to_vec_f32()?, latents.shape(), denorm, None),
        }
    }

    /// Untiled decode of de-normalised latents that reports intermediates to `probe`.
    pub fn decode_denormalized_probed(&self, z: &Tensor, probe: Probe) -> Result<Tensor> {
        self.decode_untiled(&z.to_vec_f32()?, z.shape(), false, Some(probe))
    }

    pub fn new_state(&self) -> DecodeState {
        DecodeState {
            slots: vec![None; self.n_slots],
            rep: vec![false; self.n_rep],
            chunks: 0,
        }
    }

    /// Latent frame `i` of host latents `lat` [B, z, T, h, w], as [B, z, 1, h, w] on the device.
    fn latent_frame(&self, lat: &[f32], s: &[usize], i: usize) -> Result<Tensor> {
        let (t, plane) = (s[2], s[3] * s[4]);
        let mut v = Vec::with_capacity(s[0] * s[1] * plane);
        for bz in 0..s[0] * s[1] {
            v.extend_from_slice(&lat[(bz * t + i) * plane..(bz * t + i + 1) * plane]);
        }
        Tensor::from_f32(v, &[s[0], s[1], 1, s[3], s[4]], &self.device)
    }

    /// Whole frames, one latent frame per chunk, from host latents `lat` of shape `s`.
    pub(crate) fn decode_untiled(
        &self,
        lat: &[f32],
        s: &[usize],
        denorm: bool,
        mut probe: Option<Probe>,
    ) -> Result<Tensor> {
        let out_shape = self.output_shape(s)?;
        let mut st = self.new_state();
        let t = s[2];
        let clamp = ConvOpts {
            clamp: Some((-1.0, 1.0)),
            ..Default::default()
        };
        match &self.device {
            Device::Cuda(_) => {
                let video = Tensor::empty(&out_shape, DType::F32, &self.device)?;
                for i in 0..t {
                    let zc = self.latent_frame(lat, s, i)?;
                    let x = self.chunk_body(&zc, denorm, &mut st, &mut probe)?;
                    self.run_conv(
                        &self.conv_out,
                        &x,
                        &mut st,
                        clamp,
                        Some((&video, self.chunk_t0(i))),
                    )?;
                }
                Ok(video)
            }
            Device::Cpu => {
                let [b, c, f, h, w] = out_shape;
                let plane = h * w;
                let mut out = vec![0.0f32; b * c * f * plane];
                for i in 0..t {
                    let zc = self.latent_frame(lat, s, i)?;
                    let x = self.chunk_body(&zc, denorm, &mut st, &mut probe)?;
                    let y = self
                        .run_conv(&self.conv_out, &x, &mut st, clamp, None)?
                        .unwrap();
                    let yv = y.to_vec_f32()?;
                    let n = y.dim(2);
                    let t0 = self.chunk_t0(i);
                    for bc in 0..b * c {
                        out[(bc * f + t0) * plane..(bc * f + t0 + n) * plane]
                            .copy_from_slice(&yv[bc * n * plane..(bc + 1) * n * plane]);
                    }
                }
                Tensor::from_f32(out, &out_shape, &Device::Cpu)
            }
        }
    }

    fn chunk_t0(&self, i: usize) -> usize {
        if i == 0 {
            0
        } else {
            1 + (i - 1) * self.cfg.time_factor()
        }
    }

    /// One chunk up to (and including) norm_out + SiLU; conv_out is left to the caller.
    fn chunk_body(
        &self,
        zc: &Tensor,
        denorm: bool,
        st: &mut DecodeState,
        probe: &mut Option<Probe>,
    ) -> Result<Tensor> {
        let chunk = st.chunks;
        let mut report = |name: &str, t: &Tensor| {
            if let Some(p) = probe.as_mut() {
                p(name, chunk, t)
            }
        };
        let pq = if denorm {
            &self.pq_denorm
        } else {
            &self.pq_raw
        };
        let x = self.conv(pq, zc, ConvOpts::default())?;
        report("post_quant_conv", &x);
        let x = self.cconv(&self.conv_in, &x, st, ConvOpts::default())?;
        report("decoder.conv_in", &x);
        let x = self.resblock(&self.mid.0, &x, st)?;
        let x = self.attention(&self.mid.1, &x)?;
        let mut x = self.resblock(&self.mid.2, &x, st)?;
        report("decoder.mid_block", &x);
        for (i, ub) in self.ups.iter().enumerate() {
            for r in &ub.resnets {
                x = self.resblock(r, &x, st)?;
            }
            if let Some(up) = &ub.up {
                if let Some((tc, rep)) = &up.time_conv {
                    if st.rep[*rep] {
                        x = self.cconv(
                            tc,
                            &x,
                            st,
                            ConvOpts {
                                interleave_time: true,
                                ..Default::default()
                            },
                        )?;
                    } else {
                        // First chunk: diffusers stores "Rep" and skips the time_conv.
                        st.rep[*rep] = true;
                    }
                }
                x = self.conv(
                    &up.conv,
                    &x,
                    ConvOpts {
                        upsample2x: true,
                        ..Default::default()
                    },
                )?;
            }
            report(&format!("decoder.up_blocks.{i}"), &x);
        }
        st.chunks += 1;
        glue::channel_rms_norm(&x, &self.norm_out, true)
    }

    fn conv(&self, c: &Conv, x: &Tensor, mut o: ConvOpts) -> Result<Tensor> {
        o.precision = self.opts.precision;
        conv3d_w(x, &(&c.w).into(), c.b.as_ref(), &o)
    }

    /// A causal conv with its cache slot.
    fn cconv(&self, c: &Conv, x: &Tensor, st: &mut DecodeState, o: ConvOpts) -> Result<Tensor> {
        Ok(self.run_conv(c, x, st, o, None)?.unwrap())
    }

    fn run_conv(
        &self,
        c: &Conv,
        x: &Tensor,
        st: &mut DecodeState,
        mut o: ConvOpts,
        into: Option<(&Tensor, usize)>,
    ) -> Result<Option<Tensor>> {
        o.precision = self.opts.precision;
        let slot = c
            .slot
            .ok_or_else(|| Error::Other("vae: causal conv without a cache slot".into()))?;
        let ctx = st.slots[slot].take();
        let o = ConvOpts {
            ctx: ctx.as_ref(),
            ..o
        };
        let y = match into {
            Some((out, t0)) => {
                conv3d_into_w(x, &(&c.w).into(), c.b.as_ref(), &o, out, t0)?;
                None
            }
            None => Some(conv3d_w(x, &(&c.w).into(), c.b.as_ref(), &o)?),
        };
        let nc = c.w.shape()[2] - 1;
        st.slots[slot] = Some(cache_update(ctx.as_ref(), x, nc)?);
        Ok(y)
    }

    fn resblock(&self, r: &ResBlock, x: &Tensor, st: &mut DecodeState) -> Result<Tensor> {
        let h = match &r.shortcut {
            Some(sc) => self.conv(sc, x, ConvOpts::default())?,
            None => x.clone(),
        };
        let a = glue::channel_rms_norm(x, &r.norm1, true)?;
        let a = self.cconv(&r.conv1, &a, st, ConvOpts::default())?;
        let a = glue::channel_rms_norm(&a, &r.norm2, true)?;
        self.cconv(
            &r.conv2,
            &a,
            st,
            ConvOpts {
                residual: Some(&h),
                ..Default::default()
            },
        )
    }

    fn attention(&self, a: &AttnBlock, x: &Tensor) -> Result<Tensor> {
        let xn = glue::channel_rms_norm(x, &a.norm, false)?;
        let qkv = self.conv(&a.qkv, &xn, ConvOpts::default())?;
        let o = glue::spatial_attention(&qkv, self.opts.precision)?;
        self.conv(
            &a.proj,
            &o,
            ConvOpts {
                residual: Some(x),
                ..Default::default()
            },
        )
    }
}

/// Decoded frames of one video, [F, H, W, 3] u8 row-major.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VideoFrames {
    pub frames: usize,
    pub height: usize,
    pub width: usize,
    pub data: Vec<u8>,
}

impl VideoFrames {
    /// Frame `i` as H*W*3 bytes (RGB).
    pub fn frame(&self, i: usize) -> &[u8] {
        let n = self.height * self.width * 3;
        &self.data[i * n..(i + 1) * n]
    }
}

/// `uint8(clamp(v*0.5 + 0.5, 0, 1) * 255)` (truncation, as diffusers' postprocess + export) for
/// video `batch` of a [B, 3, F, H, W] tensor, as frames [F, H, W, 3].
pub fn to_uint8_frames(video: &Tensor, batch: usize) -> Result<VideoFrames> {
    let s = video.shape();
    if s.len() != 5 || s[1] != 3 || batch >= s[0] {
        return Err(shape_err!(
            "to_uint8_frames: video must be [B, 3, F, H, W] with batch {batch} < B, got {s:?}"
        ));
    }
    let (f, h, w) = (s[2], s[3], s[4]);
    let v = video.narrow(0, batch, 1)?.to_vec_f32()?;
    let plane = h * w;
    let mut data = vec![0u8; f * plane * 3];
    for c in 0..3 {
        for fi in 0..f {
            let src = &v[(c * f + fi) * plane..(c * f + fi + 1) * plane];
            let dst = &mut data[fi * plane * 3..(fi + 1) * plane * 3];
            for (p, &x) in src.iter().enumerate() {
                dst[p * 3 + c] = to_u8(x);
            }
        }
    }
    Ok(VideoFrames {
        frames: f,
        height: h,
        width: w,
        data,
    })
}

/// One value: `(clamp(x*0.5+0.5, 0, 1) * 255) as u8` (NaN maps to 0).
pub fn to_u8(x: f32) -> u8 {
    let v = (x * 0.5 + 0.5).clamp(0.0, 1.0) * 255.0;
    if v.is_nan() {
        0
    } else {
        v as u8
    }
}

/// The VAE under model offload (`--offload model`): nothing on the device while the other
/// models work; each decode loads the weights through the store (from the memory map, so a
/// repeated decode reads the page cache), decodes and frees them, as the reference's model CPU
/// offload moves the VAE to the GPU only for the decode.
pub struct OnDemandVae {
    dir: std::path::PathBuf,
    device: Device,
    opts: VaeOptions,
}

impl OnDemandVae {
    /// `dir` is the `vae/` folder. Its config and every tensor's key and shape are checked here
    /// (the inventory the loader itself checks), without uploading anything, so a broken VAE
    /// fails before the denoising, not after it.
    pub fn new(dir: &Path, device: &Device, opts: VaeOptions) -> Result<OnDemandVae> {
        let cfg = VaeConfig::from_file(&dir.join("config.json"))?;
        crate::model::inventory::vae(&cfg, dir)?.check_dir(dir)?;
        Ok(OnDemandVae {
            dir: dir.to_path_buf(),
            device: device.clone(),
            opts,
        })
    }
}

impl crate::model::interfaces::FrameDecoder for OnDemandVae {
    fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        VaeDecoder::from_dir(&self.dir, &self.device, self.opts)?.decode(latents)
    }
    fn decode_low_memory(&self, latents: &Tensor) -> Result<Tensor> {
        VaeDecoder::from_dir(&self.dir, &self.device, self.opts)?.decode_tiled(latents)
    }
}

impl crate::model::interfaces::FrameDecoder for VaeDecoder {
    fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        VaeDecoder::decode(self, latents)
    }
    fn decode_low_memory(&self, latents: &Tensor) -> Result<Tensor> {
        VaeDecoder::decode_tiled(self, latents)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::synthetic::{rnd, tiny_config, tiny_weights};
    use crate::ops::conv::conv3d;

    fn cat_t(a: &Tensor, b: &Tensor) -> Tensor {
        let (sa, sb) = (a.shape(), b.shape());
        let (av, bv) = (a.to_vec_f32().unwrap(), b.to_vec_f32().unwrap());
        let plane = sa[3] * sa[4];
        let (ta, tb) = (sa[2], sb[2]);
        let mut out = Vec::new();
        for bc in 0..sa[0] * sa[1] {
            out.extend_from_slice(&av[bc * ta * plane..(bc + 1) * ta * plane]);
            out.extend_from_slice(&bv[bc * tb * plane..(bc + 1) * tb * plane]);
        }
        Tensor::from_f32(out, &[sa[0], sa[1], ta + tb, sa[3], sa[4]], &Device::Cpu).unwrap()
    }

    /// Whole-sequence decode without caches, with the closed form of upsample3d:
    /// up3d(x) = up(x[0]) ++ up(interleave(causal_time_conv(x[1..]))).
    fn decode_reference(d: &VaeDecoder, lat: &Tensor) -> Tensor {
        let c = |cv: &Conv, x: &Tensor, o: ConvOpts| {
            conv3d(x, cv.f32_weight().unwrap(), cv.b.as_ref(), &o).unwrap()
        };
        let res = |r: &ResBlock, x: &Tensor| {
            let h = r
                .shortcut
                .as_ref()
                .map_or(x.clone(), |sc| c(sc, x, ConvOpts::default()));
            let a = glue::channel_rms_norm(x, &r.norm1, true).unwrap();
            let a = c(&r.conv1, &a, ConvOpts::default());
            let a = glue::channel_rms_norm(&a, &r.norm2, true).unwrap();
            c(
                &r.conv2,
                &a,
                ConvOpts {
                    residual: Some(&h),
                    ..Default::default()
                },
            )
        };
        let x = c(&d.pq_denorm, lat, ConvOpts::default());
        let x = c(&d.conv_in, &x, ConvOpts::default());
        let x = res(&d.mid.0, &x);
        let x = d.attention(&d.mid.1, &x).unwrap();
        let mut x = res(&d.mid.2, &x);
        for ub in &d.ups {
            for r in &ub.resnets {
                x = res(r, &x);
            }
            if let Some(up) = &ub.up {
                if let Some((tc, _)) = &up.time_conv {
                    let t = x.dim(2);
                    if t > 1 {
                        let first = x.narrow(2, 0, 1).unwrap().contiguous().unwrap();
                        let rest = x.narrow(2, 1, t - 1).unwrap().contiguous().unwrap();
                        let rest = c(
                            tc,
                            &rest,
                            ConvOpts {
                                interleave_time: true,
                                ..Default::default()
                            },
                        );
                        x = cat_t(&first, &rest);
                    }
                }
                x = c(
                    &up.conv,
                    &x,
                    ConvOpts {
                        upsample2x: true,
                        ..Default::default()
                    },
                );
            }
        }
        let x = glue::channel_rms_norm(&x, &d.norm_out, true).unwrap();
        c(
            &d.conv_out,
            &x,
            ConvOpts {
                clamp: Some((-1.0, 1.0)),
                ..Default::default()
            },
        )
    }

    #[test]
    fn chunked_decode_equals_whole_sequence_closed_form() {
        let cfg = tiny_config();
        let w = tiny_weights(&cfg, 7);
        let d = VaeDecoder::load(&w, cfg.clone(), VaeOptions::default()).unwrap();
        let mut s = 99;
        let (b, t, h, wd) = (2, 4, 3, 5);
        let lat = Tensor::from_f32(
            rnd(b * 4 * t * h * wd, &mut s, 1.0),
            &[b, 4, t, h, wd],
            &Device::Cpu,
        )
        .unwrap();
        let y = d.decode(&lat).unwrap();
        assert_eq!(y.shape(), &[b, 3, 13, 24, 40]);
        let r = decode_reference(&d, &lat);
        assert_eq!(r.shape(), y.shape());
        let (yv, rv) = (y.to_vec_f32().unwrap(), r.to_vec_f32().unwrap());
        let md = yv
            .iter()
            .zip(&rv)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(md < 1e-5, "max diff {md}");
        // Not degenerate: values spread and some clamping happens or not, but not all equal.
        let mean = yv.iter().sum::<f32>() / yv.len() as f32;
        let var = yv.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / yv.len() as f32;
        assert!(var > 1e-3, "variance {var}");
    }

    #[test]
    fn denormalisation_is_folded() {
        let cfg = tiny_config();
        let w = tiny_weights(&cfg, 8);
        let d = VaeDecoder::load(&w, cfg.clone(), VaeOptions::default()).unwrap();
        let mut s = 5;
        let shape = [1, 4, 2, 2, 3];
        let x = rnd(48, &mut s, 1.0);
        let z: Vec<f32> = x
            .iter()
            .enumerate()
            .map(|(i, v)| v * cfg.latents_std[i / 12] + cfg.latents_mean[i / 12])
            .collect();
        let a = d
            .decode(&Tensor::from_f32(x, &shape, &Device::Cpu).unwrap())
            .unwrap()
            .to_vec_f32()
            .unwrap();
        let b = d
            .decode_denormalized(&Tensor::from_f32(z, &shape, &Device::Cpu).unwrap())
            .unwrap()
            .to_vec_f32()
            .unwrap();
        let md = a
            .iter()
            .zip(&b)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(md < 1e-5, "max diff {md}");
    }

    #[test]
    fn tiled_decode_close_to_untiled() {
        let cfg = tiny_config();
        let w = tiny_weights(&cfg, 9);
        let mut d = VaeDecoder::load(&w, cfg.clone(), VaeOptions::default()).unwrap();
        let mut s = 3;
        let (t, h, wd) = (2, 12, 14);
        let lat = Tensor::from_f32(
            rnd(4 * t * h * wd, &mut s, 1.0),
            &[1, 4, t, h, wd],
            &Device::Cpu,
        )
        .unwrap();
        let full = d.decode(&lat).unwrap().to_vec_f32().unwrap();
        d.set_options(VaeOptions {
            tiling: Some(TileConfig {
                tile: 8,
                overlap: 4,
            }),
            ..Default::default()
        });
        let tiled = d.decode(&lat).unwrap();
        assert_eq!(tiled.shape(), &[1, 3, 5, 96, 112]);
        let tv = tiled.to_vec_f32().unwrap();
        let md = full
            .iter()
            .zip(&tv)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        let mad = full
            .iter()
            .zip(&tv)
            .map(|(a, b)| (a - b).abs())
            .sum::<f32>()
            / tv.len() as f32;
        eprintln!("tiled vs untiled: max {md}, mean {mad}");
        // The mid-block attention is global within a tile, so tiles cannot match exactly.
        assert!(mad < 0.08, "max {md} mean {mad}");
        // No seams: the vertical step between neighbouring rows inside the tile overlaps is not
        // larger than elsewhere (a hard seam would show as a jump at one row).
        let (fh, fw) = (96usize, 112usize);
        let step = |v: &[f32], y: usize| -> f32 {
            let mut s = 0.0;
            for c in 0..3 * 5 {
                for x in 0..fw {
                    s += (v[(c * fh + y + 1) * fw + x] - v[(c * fh + y) * fw + x]).abs();
                }
            }
            s / (15 * fw) as f32
        };
        let all: f32 = (0..fh - 1).map(|y| step(&tv, y)).sum::<f32>() / (fh - 1) as f32;
        let worst = (0..fh - 1).map(|y| step(&tv, y)).fold(0.0f32, f32::max);
        let worst_full = (0..fh - 1).map(|y| step(&full, y)).fold(0.0f32, f32::max);
        eprintln!("row steps: mean {all}, worst tiled {worst}, worst untiled {worst_full}");
        assert!(
            worst < 1.5 * worst_full,
            "seam: worst row step {worst} vs untiled {worst_full}"
        );
    }

    #[test]
    fn uint8_truncates() {
        assert_eq!(to_u8(1.0), 255);
        assert_eq!(to_u8(-1.0), 0);
        assert_eq!(to_u8(0.0), 127);
        assert_eq!(to_u8(2.0), 255);
        assert_eq!(to_u8(0.999), 254);
        let v = Tensor::from_f32(
            (0..3 * 2 * 2).map(|i| i as f32 / 6.0 - 1.0).collect(),
            &[1, 3, 2, 1, 2],
            &Device::Cpu,
        )
        .unwrap();
        let f = to_uint8_frames(&v, 0).unwrap();
        assert_eq!((f.frames, f.height, f.width), (2, 1, 2));
        // frame 0, pixel 0 = channels at flat indices 0, 4, 8.
        assert_eq!(
            &f.data[0..3],
            &[to_u8(-1.0), to_u8(4.0 / 6.0 - 1.0), to_u8(8.0 / 6.0 - 1.0)]
        );
    }

    #[test]
    fn config_parses_diffusers_json() {
        let j = r#"{"_class_name":"AutoencoderKLWan","attn_scales":[],"base_dim":96,"dim_mult":[1,2,4,4],"dropout":0.0,
            "num_res_blocks":2,"temperal_downsample":[false,true,true],"z_dim":16}"#;
        let c = VaeConfig::from_json(j).unwrap();
        assert_eq!(c, VaeConfig::wan21());
        assert_eq!(c.decoder_dims(), vec![384, 384, 384, 192, 96]);
        assert_eq!(c.frames_for(32), 125);
        assert_eq!(c.spatial_factor(), 8);
        // an image VAE (Stable Diffusion 3's vae/config.json) is named, not loaded
        let sd3 = r#"{"_class_name":"AutoencoderKL","latent_channels":16,"block_out_channels":[128,256,512,512]}"#;
        let e = VaeConfig::from_json(sd3).unwrap_err().to_string();
        assert!(
            e.contains("AutoencoderKL\"") && e.contains("AutoencoderKLWan"),
            "{e}"
        );
    }
}
