//! The decoder's checkpoint layout, written once against [`WeightSource`]: run on the real
//! store ([`crate::runtime::Prefix`]) it loads the decoder's weights, run on
//! `model::inventory::Recorder` it is the VAE's inventory ([`describe`]). Keys are diffusers'
//! `AutoencoderKLWan` names (`post_quant_conv.*`, `decoder.*`), built by `pp` as the other
//! loaders do. Conv biases are read when the checkpoint has them.
//!
//! The folds that need the values (the de-normalisation into `post_quant_conv`, the attention's
//! 1/sqrt(C) into `to_qkv`) are applied to the loaded tree by [`fold`].
use std::collections::HashMap;
use std::sync::Arc;

use super::config::VaeConfig;
use crate::error::{Error, Result};
use crate::ops::conv::ConvWeight;
use crate::runtime::weights::{layer_index_of, LinearTags, WeightSource};
use crate::runtime::{DType, Device, Tensor};

/// What a tensor of the source becomes in the decoder's tree: a real tensor becomes an f32
/// [`ConvWeight`] (packed for bf16 later) or a 1-D norm gain; the recorder's `()` stays `()`.
pub trait VaeTensor: Sized {
    type ConvWeight;
    fn conv_weight(self) -> Self::ConvWeight;
    /// A norm gain stored as [C, 1, ..] read as [C].
    fn gain(self, c: usize) -> Result<Self>;
    /// Bytes as delivered (f32).
    fn bytes(&self) -> u64;
}

impl VaeTensor for () {
    type ConvWeight = ();
    fn conv_weight(self) {}
    fn gain(self, _c: usize) -> Result<()> {
        Ok(())
    }
    fn bytes(&self) -> u64 {
        0
    }
}

impl VaeTensor for Tensor {
    type ConvWeight = ConvWeight;
    fn conv_weight(self) -> ConvWeight {
        ConvWeight::F32(self)
    }
    fn gain(self, c: usize) -> Result<Tensor> {
        self.reshape(&[c])
    }
    fn bytes(&self) -> u64 {
        (self.elem_count() * 4) as u64
    }
}

/// The recorded shape stands for the tensor: the decoder's structure with every weight's shape
/// ([`shapes`], what `model::roofline` walks).
impl VaeTensor for Vec<usize> {
    type ConvWeight = Vec<usize>;
    fn conv_weight(self) -> Vec<usize> {
        self
    }
    fn gain(self, c: usize) -> Result<Vec<usize>> {
        Ok(vec![c])
    }
    fn bytes(&self) -> u64 {
        self.iter().product::<usize>() as u64 * 4
    }
}

/// A conv; `slot` is its cache slot when it is causal with k_t > 1 (numbered in load order,
/// which is diffusers' call order).
pub(crate) struct Conv<T: VaeTensor = Tensor> {
    pub w: T::ConvWeight,
    pub b: Option<T>,
    pub slot: Option<usize>,
}

impl Conv {
    /// The f32 weight (before any packing at load).
    pub fn f32_weight(&self) -> Result<&Tensor> {
        match &self.w {
            ConvWeight::F32(t) => Ok(t),
            ConvWeight::Bf16(_) => Err(Error::Other(
                "vae: the conv weight is held as packed bf16 only".into(),
            )),
        }
    }
}

pub(crate) struct ResBlock<T: VaeTensor = Tensor> {
    pub norm1: T,
    pub conv1: Conv<T>,
    pub norm2: T,
    pub conv2: Conv<T>,
    pub shortcut: Option<Conv<T>>,
}

pub(crate) struct AttnBlock<T: VaeTensor = Tensor> {
    pub norm: T,
    /// to_qkv as [3C, C, 1, 1] (after [`fold`]: the q rows scaled by 1/sqrt(C)).
    pub qkv: Conv<T>,
    pub proj: Conv<T>,
}

pub(crate) struct Upsampler<T: VaeTensor = Tensor> {
    /// upsample3d: time_conv [2C, C, 3, 1, 1] and the index of its "first chunk seen" flag.
    pub time_conv: Option<(Conv<T>, usize)>,
    /// resample.1: Conv2d(C, C/2, 3, pad 1) after nearest 2x.
    pub conv: Conv<T>,
}

pub(crate) struct UpBlock<T: VaeTensor = Tensor> {
    pub resnets: Vec<ResBlock<T>>,
    pub up: Option<Upsampler<T>>,
}

/// The decoder's weights in checkpoint order.
pub(crate) struct DecoderWeights<T: VaeTensor = Tensor> {
    /// `post_quant_conv` as stored (latents already de-normalised).
    pub post_quant: Conv<T>,
    pub conv_in: Conv<T>,
    pub mid: (ResBlock<T>, AttnBlock<T>, ResBlock<T>),
    pub ups: Vec<UpBlock<T>>,
    pub norm_out: T,
    pub conv_out: Conv<T>,
    /// Cache slots and upsample3d flags handed out.
    pub slots: usize,
    pub reps: usize,
    /// f32 bytes delivered (the decoder's weight footprint on its device).
    pub bytes: u64,
}

/// Hands out the cache slots and the first-chunk flags in load order.
struct Counter {
    slots: usize,
    reps: usize,
    bytes: u64,
}

impl Counter {
    /// `{p}.weight` [co, ci, k...] and `{p}.bias` [co] when the checkpoint has it.
    fn conv<S: WeightSource>(
        &mut self,
        p: &S,
        co: usize,
        ci: usize,
        k: &[usize],
    ) -> Result<Conv<S::Tensor>>
    where
        S::Tensor: VaeTensor,
    {
        let mut shape = vec![co, ci];
        shape.extend_from_slice(k);
        let w = p.tensor_f32("weight", &shape)?;
        self.bytes += w.bytes();
        let w = w.conv_weight();
        let b = if p.contains("bias") {
            let b = p.tensor_f32("bias", &[co])?;
            self.bytes += b.bytes();
            Some(b)
        } else {
            None
        };
        let slot = (k.len() == 3 && k[0] > 1).then(|| {
            self.slots += 1;
            self.slots - 1
        });
        Ok(Conv { w, b, slot })
    }

    /// `{p}.gamma` [c, 1 x rank], as [c].
    fn gain<S: WeightSource>(&mut self, p: &S, c: usize, rank: usize) -> Result<S::Tensor>
    where
        S::Tensor: VaeTensor,
    {
        let mut shape = vec![c];
        shape.extend(std::iter::repeat_n(1, rank));
        let g = p.tensor_f32("gamma", &shape)?;
        self.bytes += g.bytes();
        g.gain(c)
    }

    fn resblock<S: WeightSource>(
        &mut self,
        p: &S,
        ci: usize,
        co: usize,
    ) -> Result<ResBlock<S::Tensor>>
    where
        S::Tensor: VaeTensor,
    {
        // Slot order follows diffusers' call order: conv1, conv2 (the shortcut is 1x1x1).
        Ok(ResBlock {
            norm1: self.gain(&p.pp("norm1"), ci, 3)?,
            conv1: self.conv(&p.pp("conv1"), co, ci, &[3, 3, 3])?,
            norm2: self.gain(&p.pp("norm2"), co, 3)?,
            conv2: self.conv(&p.pp("conv2"), co, co, &[3, 3, 3])?,
            shortcut: if ci != co {
                Some(self.conv(&p.pp("conv_shortcut"), co, ci, &[1, 1, 1])?)
            } else {
                None
            },
        })
    }

    fn attention<S: WeightSource>(&mut self, p: &S, c: usize) -> Result<AttnBlock<S::Tensor>>
    where
        S::Tensor: VaeTensor,
    {
        Ok(AttnBlock {
            norm: self.gain(&p.pp("norm"), c, 2)?,
            qkv: self.conv(&p.pp("to_qkv"), 3 * c, c, &[1, 1])?,
            proj: self.conv(&p.pp("proj"), c, c, &[1, 1])?,
        })
    }

    /// `decoder.up_blocks.{i}`: `num_res_blocks + 1` resnets from `in_dim` to `out_dim`, then
    /// (except the last block) the upsampler, with a time_conv where `temporal`.
    fn up_block<S: WeightSource>(
        &mut self,
        p: &S,
        in_dim: usize,
        out_dim: usize,
        res_blocks: usize,
        up: Option<bool>,
    ) -> Result<UpBlock<S::Tensor>>
    where
        S::Tensor: VaeTensor,
    {
        let r = p.pp("resnets");
        let mut resnets = Vec::with_capacity(res_blocks + 1);
        let mut cur = in_dim;
        for k in 0..=res_blocks {
            resnets.push(self.resblock(&r.pp(k), cur, out_dim)?);
            cur = out_dim;
        }
        let up = match up {
            None => None,
            Some(temporal) => {
                let u = p.pp("upsamplers").pp(0);
                let time_conv = if temporal {
                    let tc = self.conv(&u.pp("time_conv"), 2 * out_dim, out_dim, &[3, 1, 1])?;
                    self.reps += 1;
                    Some((tc, self.reps - 1))
                } else {
                    None
                };
                let conv = self.conv(&u.pp("resample").pp(1), out_dim / 2, out_dim, &[3, 3])?;
                Some(Upsampler { time_conv, conv })
            }
        };
        Ok(UpBlock { resnets, up })
    }
}

impl<T: VaeTensor> DecoderWeights<T> {
    /// Loads `post_quant_conv.*` and `decoder.*` for `cfg` through `root` (the checkpoint's
    /// root prefix).
    pub fn load<S: WeightSource<Tensor = T>>(root: &S, cfg: &VaeConfig) -> Result<Self> {
        let mut n = Counter {
            slots: 0,
            reps: 0,
            bytes: 0,
        };
        let z = cfg.z_dim;
        let dims = cfg.decoder_dims();
        let post_quant = n.conv(&root.pp("post_quant_conv"), z, z, &[1, 1, 1])?;
        let d = root.pp("decoder");
        let c = dims[0];
        let conv_in = n.conv(&d.pp("conv_in"), c, z, &[3, 3, 3])?;
        let m = d.pp("mid_block");
        let mid0 = n.resblock(&m.pp("resnets").pp(0), c, c)?;
        let attn = n.attention(&m.pp("attentions").pp(0), c)?;
        let mid1 = n.resblock(&m.pp("resnets").pp(1), c, c)?;
        let tup = cfg.temperal_upsample();
        let blocks = cfg.dim_mult.len();
        let ub = d.pp("up_blocks");
        let mut ups = Vec::with_capacity(blocks);
        for i in 0..blocks {
            // diffusers: in_dim halves for i >= 1 (the previous upsampler halved the channels).
            let in_dim = if i >= 1 { dims[i] / 2 } else { dims[i] };
            let up = (i != blocks - 1).then(|| tup[i]);
            ups.push(n.up_block(&ub.pp(i), in_dim, dims[i + 1], cfg.num_res_blocks, up)?);
        }
        let last = *dims.last().unwrap();
        let norm_out = n.gain(&d.pp("norm_out"), last, 3)?;
        let conv_out = n.conv(&d.pp("conv_out"), cfg.out_channels, last, &[3, 3, 3])?;
        Ok(DecoderWeights {
            post_quant,
            conv_in,
            mid: (mid0, attn, mid1),
            ups,
            norm_out,
            conv_out,
            slots: n.slots,
            reps: n.reps,
            bytes: n.bytes,
        })
    }
}

/// The VAE decoder's checkpoint read through `root` by the decoder's own loader (run against
/// the recorder it is the description, `model::inventory::vae`).
pub fn describe<S: WeightSource>(root: &S, cfg: &VaeConfig) -> Result<()>
where
    S::Tensor: VaeTensor,
{
    cfg.validate()?;
    DecoderWeights::load(root, cfg).map(drop)
}

/// A source that hands out each tensor's shape (every conv with a bias): the loader run
/// against it is the decoder's structure with its shapes.
#[derive(Clone)]
struct ShapeSource;

impl WeightSource for ShapeSource {
    type Tensor = Vec<usize>;
    type Linear = ();
    fn pp(&self, _name: impl std::fmt::Display) -> Self {
        ShapeSource
    }
    fn contains(&self, _name: &str) -> bool {
        true
    }
    fn layer_index(&self) -> Option<usize> {
        None
    }
    fn tensor(&self, _name: &str, shape: &[usize]) -> Result<Vec<usize>> {
        Ok(shape.to_vec())
    }
    fn tensor_f32(&self, _name: &str, shape: &[usize]) -> Result<Vec<usize>> {
        Ok(shape.to_vec())
    }
    fn linear_tagged(&self, name: &str, _: usize, _: usize, _: bool, _: LinearTags) -> Result<()> {
        Err(Error::Other(format!(
            "vae: {name}: the decoder has no linears"
        )))
    }
    fn fused_tagged(
        &self,
        names: &[&str],
        _: usize,
        _: &[usize],
        _: bool,
        _: LinearTags,
    ) -> Result<()> {
        Err(Error::Other(format!(
            "vae: {names:?}: the decoder has no linears"
        )))
    }
    fn linear_reshaped(&self, name: &str, _: &[usize]) -> Result<()> {
        Err(Error::Other(format!(
            "vae: {name}: the decoder has no linears"
        )))
    }
}

/// The decoder's structure for `cfg` with every weight's shape (the loader run on shapes).
pub(crate) fn shapes(cfg: &VaeConfig) -> Result<DecoderWeights<Vec<usize>>> {
    cfg.validate()?;
    DecoderWeights::load(&ShapeSource, cfg)
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

/// The folds of the loaded weights: returns `post_quant_conv` with `z = x*std + mean` folded in
/// (W'[o,i] = W[o,i]*std[i], b'[o] = b[o] + sum_i W[o,i]*mean[i]) and scales the q rows of the
/// mid-block attention's `to_qkv` (weight and bias) by 1/sqrt(C) in place.
pub(crate) fn fold(w: &mut DecoderWeights, cfg: &VaeConfig, device: &Device) -> Result<Conv> {
    let z = cfg.z_dim;
    let pq = &w.post_quant;
    let wv = pq.f32_weight()?.to_vec_f32()?;
    let bv = match &pq.b {
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
    let denorm = Conv {
        w: ConvWeight::F32(Tensor::from_f32(wf, &[z, z, 1, 1, 1], device)?),
        b: Some(Tensor::from_f32(bf, &[z], device)?),
        slot: None,
    };

    let a = &mut w.mid.1;
    let c = a.qkv.f32_weight()?.dim(1);
    let s = 1.0 / (c as f32).sqrt();
    let qw = map_host(a.qkv.f32_weight()?, |row, r| {
        if r < c {
            row.iter_mut().for_each(|v| *v *= s)
        }
    })?;
    let qb = match &a.qkv.b {
        Some(b) => Some(Tensor::from_f32(
            map_host(b, |row, r| {
                if r < c {
                    row[0] *= s
                }
            })?,
            &[3 * c],
            device,
        )?),
        None => None,
    };
    a.qkv.w = ConvWeight::F32(Tensor::from_f32(qw, &[3 * c, c, 1, 1], device)?);
    a.qkv.b = qb;
    Ok(denorm)
}

/// Weights from a map of host tensors (tests, synthetic models), delivered in f32 on `device`:
/// a [`WeightSource`] like the store's [`crate::runtime::Prefix`], without linears.
#[derive(Clone)]
pub struct MapWeights {
    tensors: Arc<HashMap<String, Tensor>>,
    device: Device,
    prefix: String,
}

impl MapWeights {
    pub fn new(tensors: HashMap<String, Tensor>, device: Device) -> MapWeights {
        MapWeights {
            tensors: Arc::new(tensors),
            device,
            prefix: String::new(),
        }
    }
    pub fn device(&self) -> &Device {
        &self.device
    }
    /// The same tensors, delivered on `device`.
    pub fn on(self, device: &Device) -> MapWeights {
        MapWeights {
            device: device.clone(),
            ..self
        }
    }
    /// Elements of all tensors (the parameter count).
    pub fn elem_count(&self) -> usize {
        self.tensors.values().map(|t| t.elem_count()).sum()
    }
    fn key(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }
    fn no_linears(&self, name: &str) -> Error {
        Error::Weights(format!(
            "{}: a map of VAE tensors holds no linears",
            self.key(name)
        ))
    }
}

impl WeightSource for MapWeights {
    type Tensor = Tensor;
    type Linear = ();
    fn pp(&self, name: impl std::fmt::Display) -> Self {
        MapWeights {
            tensors: self.tensors.clone(),
            device: self.device.clone(),
            prefix: self.key(&name.to_string()),
        }
    }
    fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(&self.key(name))
    }
    fn layer_index(&self) -> Option<usize> {
        layer_index_of(&self.prefix)
    }
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        self.tensor_f32(name, shape)
    }
    fn tensor_f32(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let key = self.key(name);
        let t = self
            .tensors
            .get(&key)
            .ok_or_else(|| Error::Weights(format!("tensor {key} is missing")))?;
        if t.shape() != shape {
            return Err(Error::Weights(format!(
                "tensor {key} has shape {:?}, expected {shape:?}",
                t.shape()
            )));
        }
        t.to_dtype(DType::F32)?.to_device(&self.device)
    }
    fn linear_tagged(&self, name: &str, _: usize, _: usize, _: bool, _: LinearTags) -> Result<()> {
        Err(self.no_linears(name))
    }
    fn fused_tagged(
        &self,
        names: &[&str],
        _: usize,
        _: &[usize],
        _: bool,
        _: LinearTags,
    ) -> Result<()> {
        Err(self.no_linears(names.first().copied().unwrap_or("")))
    }
    fn linear_reshaped(&self, name: &str, _: &[usize]) -> Result<()> {
        Err(self.no_linears(name))
    }
}
