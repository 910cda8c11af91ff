//! The decoder: loading (through [`super::weights`]), the chunk loop (one latent frame per
//! chunk, written once for both devices) and the blocks of one chunk.
use std::path::Path;

use super::config::VaeConfig;
use super::weights::{self, AttnBlock, Conv, DecoderWeights, ResBlock};
use super::{tiling, DecodeOpts, LatentSpace, Probe, Tiling, VaeOptions};
use crate::error::{Error, Result};
use crate::ops::conv::{
    cache_update, conv3d, pack_weight_bf16, ConvOpts, ConvPrecision, ConvWeight,
};
use crate::ops::vae_glue as glue;
use crate::runtime::weights::WeightSource;
use crate::runtime::{DType, Device, Tensor, WeightStore};
use crate::shape_err;

/// Per-decode state: the causal caches and the upsample3d first-chunk flags.
pub struct DecodeState {
    slots: Vec<Option<Tensor>>,
    rep: Vec<bool>,
    chunks: usize,
}

/// The Wan2.1 VAE decoder.
pub struct VaeDecoder {
    cfg: VaeConfig,
    opts: VaeOptions,
    device: Device,
    /// The checkpoint's weights (after [`weights::fold`]; `post_quant` is the raw one).
    pub(super) w: DecoderWeights,
    /// post_quant_conv with the de-normalisation folded in.
    pub(super) pq_denorm: Conv,
    /// Device bytes of the weights (f32), for the memory plan.
    weight_bytes: u64,
}

/// Where the chunks' `conv_out` frames go: on a GPU straight into the video tensor at the
/// chunk's first frame, on the CPU into a host buffer.
enum Video {
    Device(Tensor),
    Host { data: Vec<f32>, shape: [usize; 5] },
}

impl Video {
    fn new(shape: [usize; 5], device: &Device) -> Result<Video> {
        Ok(match device {
            Device::Cuda(_) => Video::Device(Tensor::empty(&shape, DType::F32, device)?),
            Device::Cpu => Video::Host {
                data: vec![0.0f32; shape.iter().product()],
                shape,
            },
        })
    }

    /// Runs `conv_out` on `x` into frames `t0..` of the video.
    fn conv_out(
        &mut self,
        d: &VaeDecoder,
        x: &Tensor,
        st: &mut DecodeState,
        t0: usize,
    ) -> Result<()> {
        let clamp = ConvOpts {
            clamp: Some((-1.0, 1.0)),
            ..Default::default()
        };
        match self {
            Video::Device(video) => {
                let o = ConvOpts {
                    out: Some((video, t0)),
                    ..clamp
                };
                d.cconv(&d.w.conv_out, x, st, o)?;
            }
            Video::Host { data, shape } => {
                let [b, c, f, h, w] = *shape;
                let plane = h * w;
                let y = d.cconv(&d.w.conv_out, x, st, clamp)?;
                let yv = y.to_vec_f32()?;
                let n = y.dim(2);
                for bc in 0..b * c {
                    data[(bc * f + t0) * plane..(bc * f + t0 + n) * plane]
                        .copy_from_slice(&yv[bc * n * plane..(bc + 1) * n * plane]);
                }
            }
        }
        Ok(())
    }

    fn finish(self) -> Result<Tensor> {
        match self {
            Video::Device(t) => Ok(t),
            Video::Host { data, shape } => Tensor::from_f32(data, &shape, &Device::Cpu),
        }
    }
}

impl VaeDecoder {
    /// Loads `decoder.*` and `post_quant_conv.*` (checkpoint key names of diffusers'
    /// `AutoencoderKLWan`) through `root` for `cfg`; the decoder's device is the tensors'.
    pub fn load<S: WeightSource<Tensor = Tensor>>(
        root: &S,
        cfg: VaeConfig,
        opts: VaeOptions,
    ) -> Result<VaeDecoder> {
        cfg.validate()?;
        let mut w = DecoderWeights::load(root, &cfg)?;
        let device = w.post_quant.f32_weight()?.device().clone();
        let pq_denorm = weights::fold(&mut w, &cfg, &device)?;
        let weight_bytes = w.bytes;
        let mut dec = VaeDecoder {
            cfg,
            opts,
            device,
            w,
            pq_denorm,
            weight_bytes,
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
        let w = &mut self.w;
        let mut v = vec![
            &mut self.pq_denorm,
            &mut w.post_quant,
            &mut w.conv_in,
            &mut w.conv_out,
        ];
        let (m0, a, m1) = &mut w.mid;
        v.extend(res(m0));
        v.extend([&mut a.qkv, &mut a.proj]);
        v.extend(res(m1));
        for ub in &mut w.ups {
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

    /// Checks a `vae/` directory (config and every tensor's key, shape and dtype, the inventory
    /// the loader itself checks) without loading anything; returns its config.
    pub fn check_dir(dir: &Path) -> Result<VaeConfig> {
        let cfg = VaeConfig::from_file(&dir.join("config.json"))?;
        let ck = crate::io::safetensors::ShardedCheckpoint::open_dir(dir)?;
        crate::model::inventory::vae(&cfg, &|k| ck.contains(k), dir)?.check(dir, &ck)?;
        Ok(cfg)
    }

    /// Loads from a `vae/` directory: `config.json` + one `*.safetensors`.
    pub fn from_dir(dir: &Path, device: &Device, opts: VaeOptions) -> Result<VaeDecoder> {
        let cfg = Self::check_dir(dir)?;
        let store = WeightStore::open(dir, device, DType::F32)?;
        let dec = Self::load(&store.root(), cfg, opts)?;
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

    /// Decodes latents [B, z, T, h, w] (in the space `o.space` names) to a video
    /// [B, 3, 1+4(T-1), 8h, 8w] in [-1, 1] (Wan2.1; see [`output_shape`](Self::output_shape)),
    /// f32, on the decoder's device; tiled as `o.tiling` says (see [`Tiling`]).
    pub fn decode(&self, latents: &Tensor, o: DecodeOpts) -> Result<Tensor> {
        let out_shape = self.output_shape(latents.shape())?;
        let denorm = o.space == LatentSpace::Dit;
        let (h, w) = (latents.dim(3), latents.dim(4));
        let tiles = match o.tiling {
            Tiling::Never => None,
            Tiling::AsConfigured => self.opts.tiling.filter(|tc| tc.needed(h, w)),
            // The fallback after a GPU out-of-memory error: a latent smaller than one tile of
            // the configured size is decoded in tiles of 16.
            Tiling::Always => {
                let tc = self.opts.tiling.unwrap_or_default();
                Some(if tc.needed(h, w) {
                    tc
                } else {
                    tiling::TileConfig {
                        tile: 16,
                        overlap: 4,
                    }
                })
            }
        };
        match (tiles, o.probe) {
            (None, probe) => {
                self.decode_untiled(&latents.to_vec_f32()?, latents.shape(), denorm, probe)
            }
            (Some(tc), None) => tiling::decode_tiled(self, latents, denorm, &tc, out_shape),
            (Some(_), Some(_)) => Err(Error::Other(
                "vae decode: a probe reports the intermediates of an untiled decode; pass Tiling::Never with it".into(),
            )),
        }
    }

    pub fn new_state(&self) -> DecodeState {
        DecodeState {
            slots: vec![None; self.w.slots],
            rep: vec![false; self.w.reps],
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
        let mut video = Video::new(self.output_shape(s)?, &self.device)?;
        let mut st = self.new_state();
        for i in 0..s[2] {
            let zc = self.latent_frame(lat, s, i)?;
            let x = self.chunk_body(&zc, denorm, &mut st, &mut probe)?;
            video.conv_out(self, &x, &mut st, self.chunk_t0(i))?;
        }
        video.finish()
    }

    /// First output frame of chunk `i`: chunk 0 yields 1 frame, every later one time_factor.
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
        let w = &self.w;
        let pq = if denorm {
            &self.pq_denorm
        } else {
            &w.post_quant
        };
        let x = self.conv(pq, zc, ConvOpts::default())?;
        report("post_quant_conv", &x);
        let x = self.cconv(&w.conv_in, &x, st, ConvOpts::default())?;
        report("decoder.conv_in", &x);
        let x = self.resblock(&w.mid.0, &x, st)?;
        let x = self.attention(&w.mid.1, &x)?;
        let mut x = self.resblock(&w.mid.2, &x, st)?;
        report("decoder.mid_block", &x);
        for (i, ub) in w.ups.iter().enumerate() {
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
        glue::channel_rms_norm(&x, &w.norm_out, true)
    }

    fn conv(&self, c: &Conv, x: &Tensor, mut o: ConvOpts) -> Result<Tensor> {
        o.precision = self.opts.precision;
        conv3d(x, &c.w, c.b.as_ref(), &o)
    }

    /// A causal conv with its cache slot (`o.out`: written into that tensor, which is returned).
    fn cconv(&self, c: &Conv, x: &Tensor, st: &mut DecodeState, mut o: ConvOpts) -> Result<Tensor> {
        o.precision = self.opts.precision;
        let slot = c
            .slot
            .ok_or_else(|| Error::Other("vae: causal conv without a cache slot".into()))?;
        let ctx = st.slots[slot].take();
        let y = conv3d(
            x,
            &c.w,
            c.b.as_ref(),
            &ConvOpts {
                ctx: ctx.as_ref(),
                ..o
            },
        )?;
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

    pub(super) fn attention(&self, a: &AttnBlock, x: &Tensor) -> Result<Tensor> {
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
