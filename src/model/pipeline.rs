//! The text-to-video pipeline (spec section 2): encode prompt and negative prompt, draw the
//! initial noise, run the flow-matching Euler loop with classifier-free guidance, de-normalise and
//! decode with the VAE, convert to uint8 frames.
//!
//! * CFG runs as ONE batch-2 transformer forward per step, batch order `[uncond, cond]` (as
//!   diffusers concatenates), then `v = v_u + g * (v_c - v_u)`. With `guidance <= 1` there is
//!   no CFG: batch 1, conditional only, and the negative prompt is not encoded.
//! * The guidance combine and the Euler step run on the host (the latents are 16 x T x h x w,
//!   a few MB, against a multi-second transformer forward). [`LatentPrecision::Bf16`] rounds
//!   exactly like the reference (bf16 latents, bf16 combine, bf16 `dt * v`); `F32` keeps f32.
//! * Initial noise: [`initial_noise`], a documented counter-based generator (splitmix64 +
//!   Box-Muller, see docs/pipeline.md), or a file given by the caller (`--init-noise`).
//!
//! The models plug in through three small traits ([`Denoiser`], [`PromptEncoding`],
//! [`FrameDecoder`]) so the loop can be tested with stand-ins.
use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use half::bf16;

use crate::error::{Error, Result};
use crate::io::config::ConfigJson;
use crate::model::scheduler::{FlowMatchEuler, SchedulerConfig};
use crate::model::vae::{to_uint8_frames, VaeDecoder, VideoFrames};
use crate::runtime::{DType, Device, Tensor};

/// Text tokens per prompt (77 CLIP + 256 T5) and their width.
pub const TEXT_TOKENS: usize = 333;
pub const TEXT_DIM: usize = 4096;
pub const POOLED_DIM: usize = 2048;

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

/// Prompt embeddings: `ctx` [333, 4096] (or [1, 333, 4096]) and `pooled` [2048] (or [1, 2048]).
#[derive(Clone, Debug)]
pub struct PromptEmbeds {
    pub ctx: Tensor,
    pub pooled: Tensor,
}

/// Text side: one prompt to its embeddings.
pub trait PromptEncoding {
    fn encode(&self, prompt: &str) -> Result<PromptEmbeds>;
    /// [`Self::encode`] of the text called `which` in messages ("negative prompt").
    fn encode_as(&self, prompt: &str, which: &str) -> Result<PromptEmbeds> {
        let _ = which;
        self.encode(prompt)
    }
}

/// The transformer: velocity for latents `x` [B, 16, T, h, w], one timestep per batch entry,
/// context [B, 333, 4096], pooled [B, 2048]. Returns [B, 16, T, h, w].
pub trait Denoiser {
    fn forward(
        &self,
        x: &Tensor,
        timesteps: &[f32],
        ctx: &Tensor,
        pooled: &Tensor,
    ) -> Result<Tensor>;
    /// The dtype the latents are fed in (f32 on the CPU reference path, bf16 on the GPU).
    fn input_dtype(&self) -> DType {
        DType::F32
    }
    /// Frees the device memory of the weights (they are loaded again on the next forward).
    fn release(&self) {}
    /// Called before a denoising run with every step's timesteps and the pooled text
    /// [B, pooled]: a model may precompute what depends on them alone (the adaLN modulation).
    fn prepare_run(&self, _timesteps: &[Vec<f32>], _pooled: &Tensor) -> Result<()> {
        Ok(())
    }
    /// Called after the run: drop what `prepare_run` computed.
    fn end_run(&self) {}
}

/// The VAE: DiT-space latents [1, 16, T, h, w] (de-normalised inside) to video [1, 3, F, H, W] in [-1, 1].
pub trait FrameDecoder {
    fn decode(&self, latents: &Tensor) -> Result<Tensor>;
    /// A decode that needs less memory (spatial tiles), tried after an out-of-memory error.
    fn decode_low_memory(&self, latents: &Tensor) -> Result<Tensor> {
        self.decode(latents)
    }
}

impl FrameDecoder for VaeDecoder {
    fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        VaeDecoder::decode(self, latents)
    }
    fn decode_low_memory(&self, latents: &Tensor) -> Result<Tensor> {
        VaeDecoder::decode_tiled(self, latents)
    }
}

/// How the latents are rounded between steps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LatentPrecision {
    /// f32 latents, f32 guidance combine and Euler step (the CPU reference path).
    F32,
    /// Exactly the reference's bf16 arithmetic (latents stored in bf16).
    Bf16,
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

// ----- initial noise ---------------------------------------------------------------------------

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// The `k`-th output (0-based) of splitmix64 started at state `seed` (Steele, Lea & Flood 2014):
/// `z = seed + (k+1) * 0x9E3779B97F4A7C15`, then the mix
/// `z = (z ^ z>>30) * 0xBF58476D1CE4E5B9; z = (z ^ z>>27) * 0x94D049BB133111EB; z ^ z>>31`.
/// Counter-based: any element can be computed independently.
pub fn splitmix64(seed: u64, k: u64) -> u64 {
    let mut z = seed.wrapping_add(k.wrapping_add(1).wrapping_mul(GOLDEN));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Deterministic standard-normal noise, `n` values, for `seed`. Documented in docs/pipeline.md:
///
/// for each pair p = 0, 1, ...: `a = splitmix64(seed, 2p)`, `b = splitmix64(seed, 2p+1)`,
/// `u1 = ((a >> 11) + 1) / 2^53` in (0, 1], `u2 = (b >> 11) / 2^53` in [0, 1),
/// `r = sqrt(-2 ln u1)`; element 2p = `r cos(2 pi u2)`, element 2p+1 = `r sin(2 pi u2)` (f64),
/// each rounded to bf16 (the reference draws its noise in bf16) and returned as f32.
/// Elements are in row-major order of the latent shape [1, 16, T, h, w].
pub fn initial_noise(seed: u64, n: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(n + 1);
    let scale = 1.0 / (1u64 << 53) as f64;
    for p in 0..n.div_ceil(2) as u64 {
        let a = splitmix64(seed, 2 * p);
        let b = splitmix64(seed, 2 * p + 1);
        let u1 = ((a >> 11) + 1) as f64 * scale;
        let u2 = (b >> 11) as f64 * scale;
        let r = (-2.0 * u1.ln()).sqrt();
        let th = 2.0 * std::f64::consts::PI * u2;
        out.push(bf16::from_f64(r * th.cos()).to_f32());
        out.push(bf16::from_f64(r * th.sin()).to_f32());
    }
    out.truncate(n);
    out
}

// ----- safetensors files (init noise, saved latents) -------------------------------------------

/// (shape, values, file metadata)
type StTensor = (Vec<usize>, Vec<f32>, HashMap<String, String>);

fn read_st_tensor(path: &Path, name: &str) -> Result<StTensor> {
    let bytes = std::fs::read(path)
        .map_err(|e| Error::Input(format!("cannot read {}: {e}", path.display())))?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| {
        Error::Input(format!(
            "{} is not a valid safetensors file: {e}",
            path.display()
        ))
    })?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| {
        Error::Input(format!(
            "{} is not a valid safetensors file: {e}",
            path.display()
        ))
    })?;
    // A file with one tensor of another name (e.g. saved from Python as {"sample": z}) is
    // taken as that tensor.
    let mut names = st.names();
    names.sort();
    let key = if names.len() == 1 { names[0] } else { name };
    let v = st.tensor(key).map_err(|_| {
        Error::Input(format!(
            "{} has no tensor named {name:?} (it has: {})",
            path.display(),
            if names.is_empty() {
                "no tensors".to_string()
            } else {
                names.join(", ")
            }
        ))
    })?;
    let d = v.data();
    let data: Vec<f32> = match v.dtype() {
        safetensors::Dtype::F32 => d
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        safetensors::Dtype::BF16 => d
            .chunks_exact(2)
            .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        safetensors::Dtype::F16 => d
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        safetensors::Dtype::F64 => d
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap()) as f32)
            .collect(),
        other => {
            return Err(Error::Input(format!(
                "{}: tensor {name:?} has dtype {other:?}; expected a float type",
                path.display()
            )))
        }
    };
    if let Some(i) = data.iter().position(|x| !x.is_finite()) {
        return Err(Error::Input(format!(
            "{}: tensor {name:?} has a non-finite value at element {i}",
            path.display()
        )));
    }
    Ok((
        v.shape().to_vec(),
        data,
        meta.metadata().clone().unwrap_or_default(),
    ))
}

/// Reads `--init-noise FILE`: a safetensors file with a tensor "noise" (or only one tensor, of
/// any name) of shape `expected`.
pub fn load_init_noise(path: &Path, expected: &[usize]) -> Result<Vec<f32>> {
    let (shape, data, _) = read_st_tensor(path, "noise")?;
    if shape != expected {
        return Err(Error::Input(format!(
            "{}: tensor \"noise\" has shape {shape:?}, but this video size and model need {expected:?} ([1, C, (frames-1)/time_factor+1, height/spatial_factor, width/spatial_factor])",
            path.display()
        )));
    }
    Ok(data)
}

/// Saved latents: DiT-space latents [1, 16, T, h, w] (before de-normalisation) and metadata.
pub struct SavedLatents {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
    pub metadata: HashMap<String, String>,
}

/// Writes latents (f32, tensor "latents") to `path` atomically (temporary name, then rename).
pub fn save_latents(
    path: &Path,
    shape: &[usize],
    data: &[f32],
    metadata: &HashMap<String, String>,
) -> Result<()> {
    let bytes: Vec<u8> = data.iter().flat_map(|x| x.to_le_bytes()).collect();
    // Sorted metadata: the same run writes the same bytes.
    let mut meta: std::collections::BTreeMap<String, String> = metadata
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    meta.insert("format".into(), "contentv-latents".into());
    let buf = crate::io::safetensors::serialize_safetensors(
        &[(
            "latents",
            crate::io::safetensors::StDtype::F32,
            shape,
            &bytes,
        )],
        Some(&meta),
    )
    .map_err(|e| Error::Other(format!("latents: {e}")))?;
    let dir = crate::io::fsutil::parent_dir(path);
    std::fs::create_dir_all(&dir)
        .map_err(|e| Error::Input(format!("cannot create {}: {e}", dir.display())))?;
    if path.file_name().is_none() {
        return Err(Error::Input(format!("{} has no file name", path.display())));
    }
    crate::io::fsutil::write_file_atomically(path, &buf).map_err(|e| {
        Error::Input(format!(
            "cannot write the latents to {}: {e}",
            path.display()
        ))
    })?;
    Ok(())
}

/// Reads latents written by [`save_latents`] (any float dtype; tensor "latents", or the only
/// tensor of the file; [1, C, T, h, w] or [C, T, h, w]).
pub fn load_latents(path: &Path) -> Result<SavedLatents> {
    let (mut shape, data, metadata) = read_st_tensor(path, "latents")?;
    if shape.len() == 4 {
        shape.insert(0, 1); // [C, T, h, w] without the batch dim
    }
    if shape.len() != 5 || shape[0] != 1 || shape.contains(&0) {
        return Err(Error::Input(format!(
            "{}: latents must have shape [1, C, T, h, w], got {shape:?}",
            path.display()
        )));
    }
    Ok(SavedLatents {
        shape,
        data,
        metadata,
    })
}

// ----- guidance --------------------------------------------------------------------------------

/// `v = v_u + g (v_c - v_u)` in f32, written into `v_u`.
pub fn cfg_combine_f32(v_u: &mut [f32], v_c: &[f32], g: f32) {
    for (u, &c) in v_u.iter_mut().zip(v_c) {
        *u += g * (c - *u);
    }
}

/// The same in bf16 as PyTorch computes it (each operation rounded to bf16), into `v_u`.
pub fn cfg_combine_bf16(v_u: &mut [f32], v_c: &[f32], g: f32) {
    let r = |x: f32| bf16::from_f32(x).to_f32();
    for (u, &c) in v_u.iter_mut().zip(v_c) {
        *u = r(*u + r(g * r(c - *u)));
    }
}

// ----- the pipeline ----------------------------------------------------------------------------

/// Receives (name, values) of loop intermediates.
pub type Recorder<'a> = &'a mut dyn FnMut(&str, &[f32]);

/// Progress events for the caller's bars.
#[derive(Clone, Copy, Debug)]
pub enum Progress {
    EncodeStart,
    DenoiseStart { steps: usize },
    Step { index: usize, steps: usize },
    DecodeStart,
    DecodeDone,
}

/// One generation request, already validated.
#[derive(Clone, Debug)]
pub struct GenerateParams {
    pub prompt: String,
    pub negative_prompt: String,
    pub geometry: VideoGeometry,
    pub steps: usize,
    pub guidance: f32,
    /// Overrides the scheduler config's shift.
    pub shift: Option<f32>,
    pub seed: u64,
    /// Initial noise [1, 16, T, h, w] instead of the seeded generator.
    pub init_noise: Option<Vec<f32>>,
    /// Where to save the latents if the decode fails (so `contentv decode` can finish the run).
    pub rescue_latents: Option<std::path::PathBuf>,
}

/// Wall-clock seconds per stage.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Timings {
    pub encode_s: f64,
    pub denoise_s: f64,
    pub step_s: Vec<f64>,
    pub decode_s: f64,
}

/// Peak memory: the process's host peak (VmHWM) and, on CUDA, the pool's peaks.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct MemoryReport {
    pub host_peak_bytes: Option<u64>,
    pub gpu_peak_in_use_bytes: Option<u64>,
    pub gpu_peak_reserved_bytes: Option<u64>,
    pub gpu_total_bytes: Option<u64>,
}

impl MemoryReport {
    pub fn now(device: &Device) -> MemoryReport {
        let mut m = MemoryReport {
            host_peak_bytes: host_peak_bytes(),
            ..Default::default()
        };
        if let Some(g) = device.gpu() {
            let s = g.pool.stats();
            m.gpu_peak_in_use_bytes = Some(s.peak_in_use as u64);
            m.gpu_peak_reserved_bytes = Some(s.peak_reserved as u64);
            m.gpu_total_bytes = Some(g.total_mem as u64);
        }
        m
    }
}

/// Peak resident set of this process (Linux `VmHWM`), if known.
pub fn host_peak_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Result of a generation.
pub struct Generated {
    pub frames: VideoFrames,
    /// Final DiT-space latents [1, 16, T, h, w] (f32).
    pub latents: Vec<f32>,
    pub latent_shape: [usize; 5],
    /// The schedule used.
    pub schedule: FlowMatchEuler,
    pub timings: Timings,
    pub memory: MemoryReport,
}

/// Calls `end_run` when the denoising loop ends, also on an error.
struct EndRun<'a>(&'a dyn Denoiser);
impl Drop for EndRun<'_> {
    fn drop(&mut self) {
        self.0.end_run();
    }
}

/// A loaded pipeline. The models are loaded once and reused for any number of requests.
pub struct Pipeline {
    pub device: Device,
    pub text: Box<dyn PromptEncoding>,
    pub transformer: Box<dyn Denoiser>,
    pub vae: Box<dyn FrameDecoder>,
    pub scheduler: SchedulerConfig,
    pub precision: LatentPrecision,
    /// Model offload: free the transformer's device weights before the VAE decode (the text
    /// encoders free theirs after encoding).
    pub offload_models: bool,
}

/// Per-batch-entry embeddings stacked as [B, 333, 4096] and [B, 2048] on `device` in `dtype`.
fn stack_embeds(list: &[&PromptEmbeds], device: &Device, dtype: DType) -> Result<(Tensor, Tensor)> {
    let mut ctx = Vec::new();
    let mut pooled = Vec::new();
    for e in list {
        let c = e.ctx.to_vec_f32()?;
        let p = e.pooled.to_vec_f32()?;
        if c.len() % TEXT_DIM != 0 || p.len() != POOLED_DIM {
            return Err(Error::Shape(format!(
                "prompt encoder returned ctx {:?} and pooled {:?}; expected [{TEXT_TOKENS}, {TEXT_DIM}] and [{POOLED_DIM}]",
                e.ctx.shape(),
                e.pooled.shape()
            )));
        }
        ctx.extend(c);
        pooled.extend(p);
    }
    let b = list.len();
    let tokens = ctx.len() / (b * TEXT_DIM);
    Ok((
        host_tensor(ctx, &[b, tokens, TEXT_DIM], device, dtype)?,
        host_tensor(pooled, &[b, POOLED_DIM], device, dtype)?,
    ))
}

/// A tensor on `device` in `dtype` from host f32 values.
fn host_tensor(v: Vec<f32>, shape: &[usize], device: &Device, dtype: DType) -> Result<Tensor> {
    match dtype {
        DType::F32 => Tensor::from_f32(v, shape, device),
        DType::BF16 => {
            Tensor::from_bf16(v.into_iter().map(bf16::from_f32).collect(), shape, device)
        }
        DType::F16 => Tensor::from_f16(
            v.into_iter().map(half::f16::from_f32).collect(),
            shape,
            device,
        ),
        DType::I8 => Err(Error::Other("latents cannot be int8".into())),
    }
}

impl Pipeline {
    /// The denoising loop from `noise` [1, 16, T, h, w]; returns the final latents.
    /// `record` receives (name, values) of intermediates: `step{i}.v_cond`, `step{i}.v_uncond`,
    /// `step{i}.v`, `step{i}.latents` (for parity tests).
    #[allow(clippy::too_many_arguments)]
    pub fn denoise(
        &self,
        noise: &[f32],
        shape: &[usize; 5],
        cond: &PromptEmbeds,
        uncond: Option<&PromptEmbeds>,
        schedule: &FlowMatchEuler,
        guidance: f32,
        progress: &mut dyn FnMut(Progress),
        mut record: Option<Recorder>,
        step_times: &mut Vec<f64>,
    ) -> Result<Vec<f32>> {
        let n: usize = shape.iter().product();
        if noise.len() != n {
            return Err(Error::Shape(format!(
                "initial noise has {} values, latents {shape:?} need {n}",
                noise.len()
            )));
        }
        let cfg = guidance > 1.0 && uncond.is_some();
        let dtype = self.transformer.input_dtype();
        let (ctx, pooled) = match (cfg, uncond) {
            (true, Some(u)) => stack_embeds(&[u, cond], &self.device, dtype)?,
            _ => stack_embeds(&[cond], &self.device, dtype)?,
        };
        let b = if cfg { 2 } else { 1 };
        let mut bshape = *shape;
        bshape[0] = b;
        let mut x: Vec<f32> = noise.to_vec();
        if self.precision == LatentPrecision::Bf16 {
            crate::ops::cast::round_to_bf16(&mut x);
        }
        let steps = schedule.steps();
        let all_ts: Vec<Vec<f32>> = (0..steps).map(|i| vec![schedule.timesteps[i]; b]).collect();
        self.transformer.prepare_run(&all_ts, &pooled)?;
        let _run = EndRun(self.transformer.as_ref());
        progress(Progress::DenoiseStart { steps });
        for i in 0..steps {
            let t0 = Instant::now();
            let mut xb = Vec::with_capacity(n * b);
            for _ in 0..b {
                xb.extend_from_slice(&x);
            }
            let xt = host_tensor(xb, &bshape, &self.device, dtype)?;
            let ts = vec![schedule.timesteps[i]; b];
            let out = self.transformer.forward(&xt, &ts, &ctx, &pooled)?;
            if out.shape() != bshape {
                return Err(Error::Shape(format!(
                    "transformer returned {:?}, expected {bshape:?}",
                    out.shape()
                )));
            }
            let mut vv = out.to_vec_f32()?;
            if let Some(k) = vv.iter().position(|v| !v.is_finite()) {
                return Err(Error::Other(format!(
                    "the transformer produced a non-finite value at step {i} (element {k}); the weights or inputs are broken"
                )));
            }
            let v: Vec<f32> = if cfg {
                let v_c = vv.split_off(n);
                let mut v_u = vv;
                if let Some(r) = record.as_mut() {
                    r(&format!("step{i}.v_uncond"), &v_u);
                    r(&format!("step{i}.v_cond"), &v_c);
                }
                match self.precision {
                    LatentPrecision::F32 => cfg_combine_f32(&mut v_u, &v_c, guidance),
                    LatentPrecision::Bf16 => cfg_combine_bf16(&mut v_u, &v_c, guidance),
                }
                v_u
            } else {
                if let Some(r) = record.as_mut() {
                    r(&format!("step{i}.v_cond"), &vv);
                }
                vv
            };
            if let Some(r) = record.as_mut() {
                r(&format!("step{i}.v"), &v);
            }
            match self.precision {
                LatentPrecision::F32 => schedule.step_f32(i, &mut x, &v),
                LatentPrecision::Bf16 => schedule.step_bf16(i, &mut x, &v),
            }
            if let Some(r) = record.as_mut() {
                r(&format!("step{i}.latents"), &x);
            }
            step_times.push(t0.elapsed().as_secs_f64());
            progress(Progress::Step { index: i, steps });
        }
        Ok(x)
    }

    /// VAE decode of DiT-space latents [1, 16, T, h, w] to uint8 frames.
    pub fn decode(&self, latents: &[f32], shape: &[usize]) -> Result<VideoFrames> {
        decode_with(self.vae.as_ref(), &self.device, latents, shape)
    }

    /// A whole generation.
    pub fn generate(
        &self,
        p: &GenerateParams,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Generated> {
        let shape = p.geometry.latent_shape();
        let n: usize = shape.iter().product();
        if !p.guidance.is_finite() || p.guidance < 0.0 {
            return Err(Error::Input(format!(
                "guidance must be a finite number >= 0, got {}",
                p.guidance
            )));
        }
        let schedule = FlowMatchEuler::from_config(&self.scheduler, p.steps, p.shift)?;
        let noise = match &p.init_noise {
            Some(v) if v.len() != n => {
                return Err(Error::Input(format!(
                    "the initial noise has {} values, latents {shape:?} need {n}",
                    v.len()
                )))
            }
            Some(v) => v.clone(),
            None => initial_noise(p.seed, n),
        };
        if let Some(g) = self.device.gpu() {
            g.pool.reset_peak();
        }
        let mut timings = Timings::default();

        progress(Progress::EncodeStart);
        let t = Instant::now();
        let cond = self.text.encode(&p.prompt)?;
        let uncond = if p.guidance > 1.0 {
            Some(self.text.encode_as(&p.negative_prompt, "negative prompt")?)
        } else {
            None
        };
        self.device.synchronize()?;
        timings.encode_s = t.elapsed().as_secs_f64();

        let t = Instant::now();
        let mut step_s = Vec::new();
        let latents = self.denoise(
            &noise,
            &shape,
            &cond,
            uncond.as_ref(),
            &schedule,
            p.guidance,
            progress,
            None,
            &mut step_s,
        )?;
        timings.denoise_s = t.elapsed().as_secs_f64();
        timings.step_s = step_s;
        drop((cond, uncond));
        if self.offload_models {
            self.transformer.release();
        }

        progress(Progress::DecodeStart);
        let t = Instant::now();
        let frames = match self.decode(&latents, &shape) {
            Err(Error::OutOfMemory { .. }) => {
                eprintln!("warning: the GPU ran out of memory in the VAE decode: retrying with spatial tiling");
                if let Some(g) = self.device.gpu() {
                    let _ = g.pool.empty_cache();
                }
                let x = Tensor::from_f32(latents.clone(), &shape, &self.device)?;
                self.vae
                    .decode_low_memory(&x)
                    .and_then(|v| to_uint8_frames(&v, 0))
            }
            r => r,
        };
        let frames = match frames {
            Ok(f) => f,
            Err(e) => {
                let Some(path) = &p.rescue_latents else {
                    return Err(e);
                };
                let mut meta = HashMap::new();
                meta.insert("prompt".to_string(), p.prompt.clone());
                meta.insert("seed".to_string(), p.seed.to_string());
                return Err(match save_latents(path, &shape, &latents, &meta) {
                    Ok(()) => Error::Other(format!(
                        "{e}\nthe denoised latents were saved to {}: finish with `contentv decode --latents {} --output OUT.mp4 --vae-tiling`",
                        path.display(),
                        path.display()
                    )),
                    Err(e2) => Error::Other(format!("{e} (and the latents could not be saved to {}: {e2})", path.display())),
                });
            }
        };
        timings.decode_s = t.elapsed().as_secs_f64();
        progress(Progress::DecodeDone);
        Ok(Generated {
            frames,
            latents,
            latent_shape: shape,
            schedule,
            timings,
            memory: MemoryReport::now(&self.device),
        })
    }
}

/// Loads the prompt encoder (CLIP-L, CLIP-G, T5 + tokenizers) and the transformer from a model
/// folder in diffusers layout.
pub fn load_text_and_transformer(
    dir: &Path,
    device: &Device,
    mem: &crate::runtime::residency::MemoryOptions,
) -> Result<(Box<dyn PromptEncoding>, Box<dyn Denoiser>)> {
    let text = crate::model::text::TextEncoders::load(dir, device, mem)?;
    let transformer =
        crate::model::mmdit::Transformer::load_with(&dir.join("transformer"), device, mem)?;
    Ok((Box::new(text), Box::new(transformer)))
}

/// VAE decode with any [`FrameDecoder`] (the `decode` command uses it without the other models).
pub fn decode_with(
    vae: &dyn FrameDecoder,
    device: &Device,
    latents: &[f32],
    shape: &[usize],
) -> Result<VideoFrames> {
    if shape.len() != 5 || shape[0] != 1 || shape.contains(&0) {
        return Err(Error::Input(format!(
            "latents must have shape [1, C, T, h, w], got {shape:?}"
        )));
    }
    let x = Tensor::from_f32(latents.to_vec(), shape, device)?;
    let video = vae.decode(&x)?;
    to_uint8_frames(&video, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_st(path: &Path, tensors: &[(&str, Vec<usize>)]) {
        let data: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
            .iter()
            .map(|(n, s)| {
                let k: usize = s.iter().product();
                let b = (0..k).flat_map(|i| (i as f32).to_le_bytes()).collect();
                (n.to_string(), s.clone(), b)
            })
            .collect();
        let views: Vec<(String, safetensors::tensor::TensorView)> = data
            .iter()
            .map(|(n, s, b)| {
                let v = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                    .unwrap();
                (n.clone(), v)
            })
            .collect();
        std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
    }

    #[test]
    fn latents_files_from_other_tools_load() {
        let d = std::env::temp_dir().join(format!("contentv-lat-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let p = d.join("x.safetensors");
        // one tensor of another name, without the batch dim
        write_st(&p, &[("sample", vec![16, 2, 3, 4])]);
        let l = load_latents(&p).unwrap();
        assert_eq!(l.shape, vec![1, 16, 2, 3, 4]);
        assert_eq!(l.data[5], 5.0);
        // several tensors and none named "latents": an error that lists them
        write_st(&p, &[("a", vec![1]), ("b", vec![1])]);
        let e = load_latents(&p).err().unwrap().to_string();
        assert!(e.contains("\"latents\"") && e.contains("a, b"), "{e}");
        // the only tensor of a noise file, of the expected shape
        write_st(&p, &[("z", vec![1, 4, 2, 3, 3])]);
        assert_eq!(load_init_noise(&p, &[1, 4, 2, 3, 3]).unwrap().len(), 72);
        assert!(load_init_noise(&p, &[1, 4, 2, 3, 4]).is_err());
        let _ = std::fs::remove_dir_all(&d);
    }

    struct ZeroText;
    impl PromptEncoding for ZeroText {
        fn encode(&self, _p: &str) -> Result<PromptEmbeds> {
            Ok(PromptEmbeds {
                ctx: Tensor::zeros(&[1, TEXT_TOKENS, TEXT_DIM], DType::F32, &Device::Cpu)?,
                pooled: Tensor::zeros(&[1, POOLED_DIM], DType::F32, &Device::Cpu)?,
            })
        }
    }
    struct ZeroDit;
    impl Denoiser for ZeroDit {
        fn forward(&self, x: &Tensor, _t: &[f32], _c: &Tensor, _p: &Tensor) -> Result<Tensor> {
            Tensor::zeros(x.shape(), DType::F32, &Device::Cpu)
        }
    }
    /// Runs out of memory untiled; the low-memory decode works only if `tiled_ok`.
    struct OomVae {
        tiled_ok: bool,
    }
    impl FrameDecoder for OomVae {
        fn decode(&self, _x: &Tensor) -> Result<Tensor> {
            Err(Error::OutOfMemory {
                requested: 1 << 40,
                hint: "test".into(),
            })
        }
        fn decode_low_memory(&self, x: &Tensor) -> Result<Tensor> {
            if !self.tiled_ok {
                return Err(Error::OutOfMemory {
                    requested: 1 << 30,
                    hint: "test".into(),
                });
            }
            let s = x.shape();
            Tensor::zeros(
                &[1, 3, 1 + 4 * (s[2] - 1), 8 * s[3], 8 * s[4]],
                DType::F32,
                &Device::Cpu,
            )
        }
    }

    fn pipe(tiled_ok: bool) -> Pipeline {
        Pipeline {
            device: Device::Cpu,
            text: Box::new(ZeroText),
            transformer: Box::new(ZeroDit),
            vae: Box::new(OomVae { tiled_ok }),
            scheduler: SchedulerConfig::default(),
            precision: LatentPrecision::F32,
            offload_models: false,
        }
    }

    #[test]
    fn decode_out_of_memory_retries_tiled_then_keeps_the_latents() {
        let rescue = std::env::temp_dir().join(format!(
            "contentv-rescue-{}.latents.safetensors",
            std::process::id()
        ));
        let params = GenerateParams {
            prompt: "x".into(),
            negative_prompt: String::new(),
            geometry: VideoGeometry::new(5, 16, 16).unwrap(),
            steps: 2,
            guidance: 6.0,
            shift: None,
            seed: 1,
            init_noise: None,
            rescue_latents: Some(rescue.clone()),
        };
        let g = pipe(true).generate(&params, &mut |_| {}).unwrap();
        assert_eq!(g.frames.frames, 5);
        assert!(!rescue.exists());
        let e = pipe(false)
            .generate(&params, &mut |_| {})
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("contentv decode") && e.contains("latents were saved"),
            "{e}"
        );
        let saved = load_latents(&rescue).unwrap();
        assert_eq!(saved.shape, vec![1, 16, 2, 2, 2]);
        let _ = std::fs::remove_file(&rescue);
    }

    #[test]
    fn noise_is_deterministic_and_standard_normal() {
        let a = initial_noise(42, 100_001);
        let b = initial_noise(42, 100_001);
        assert_eq!(a, b);
        assert_ne!(a, initial_noise(43, 100_001));
        // prefix property: element k does not depend on n
        assert_eq!(&initial_noise(42, 11)[..], &a[..11]);
        let n = a.len() as f64;
        let mean = a.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = a.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
        assert!(mean.abs() < 0.02, "mean {mean}");
        assert!((var - 1.0).abs() < 0.02, "var {var}");
        assert!(a.iter().all(|x| x.is_finite()));
        // splitmix64 reference values (seed 1234567, from the original C implementation)
        assert_eq!(splitmix64(1234567, 0), 6457827717110365317);
        assert_eq!(splitmix64(1234567, 1), 3203168211198807973);
    }

    #[test]
    fn geometry() {
        assert_eq!(round_frames(125), 125);
        assert_eq!(round_frames(128), 125);
        assert_eq!(round_frames(4), 1);
        assert_eq!(round_frames(2), 1);
        let g = VideoGeometry::new(125, 432, 768).unwrap();
        assert_eq!(g.latent_shape(), [1, 16, 32, 54, 96]);
        assert_eq!(
            VideoGeometry::from_latent_shape(LatentLayout::CONTENTV, &[1, 16, 32, 54, 96]).unwrap(),
            g
        );
        assert!(VideoGeometry::new(124, 432, 768).is_err());
        assert!(VideoGeometry::new(125, 440, 768).is_err());
    }

    #[test]
    fn layout_from_model_configs() {
        let dir = std::env::temp_dir().join(format!("contentv-layout-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        // No configs at all: ContentV's values.
        assert_eq!(
            LatentLayout::from_model_dir(&dir).unwrap(),
            LatentLayout::CONTENTV
        );
        std::fs::create_dir_all(dir.join("vae")).unwrap();
        std::fs::create_dir_all(dir.join("transformer")).unwrap();
        std::fs::write(
            dir.join("vae/config.json"),
            r#"{"z_dim": 8, "temperal_downsample": [true, false, false, true]}"#,
        )
        .unwrap();
        std::fs::write(
            dir.join("transformer/config.json"),
            r#"{"in_channels": 8, "patch_size": 1}"#,
        )
        .unwrap();
        let l = LatentLayout::from_model_dir(&dir).unwrap();
        assert_eq!(
            l,
            LatentLayout {
                channels: 8,
                time_factor: 4,
                spatial_factor: 16,
                patch: 1
            }
        );
        assert_eq!(l.size_multiple(), 16);
        let g = VideoGeometry::with_layout(l, 9, 32, 48).unwrap();
        assert_eq!(g.latent_shape(), [1, 8, 3, 2, 3]);
        assert_eq!(
            VideoGeometry::from_latent_shape(l, &[1, 8, 3, 2, 3]).unwrap(),
            g
        );
        assert!(VideoGeometry::from_latent_shape(l, &[1, 16, 3, 2, 3]).is_err());

        std::fs::write(
            dir.join("vae/config.json"),
            r#"{"z_dim": 16, "temperal_downsample": [false, false, true]}"#,
        )
        .unwrap();
        let e = LatentLayout::from_model_dir(&dir).unwrap_err().to_string();
        assert!(e.contains("in_channels 8") && e.contains("z_dim 16"), "{e}");
        std::fs::write(
            dir.join("transformer/config.json"),
            r#"{"in_channels": 16, "patch_size": 2}"#,
        )
        .unwrap();
        let l = LatentLayout::from_model_dir(&dir).unwrap();
        assert_eq!((l.time_factor, l.spatial_factor), (2, 8));
        assert_eq!(l.round_frames(10), 9);
        assert!(VideoGeometry::with_layout(l, 7, 16, 16).is_ok());
        assert!(VideoGeometry::with_layout(l, 8, 16, 16).is_err());

        std::fs::write(dir.join("vae/config.json"), "{ not json").unwrap();
        let e = LatentLayout::from_model_dir(&dir).unwrap_err().to_string();
        assert!(
            e.contains("vae/config.json") && e.contains("not valid JSON"),
            "{e}"
        );
        std::fs::write(dir.join("vae/config.json"), r#"{"temperal_downsample": 3}"#).unwrap();
        let e = LatentLayout::from_model_dir(&dir).unwrap_err().to_string();
        assert!(e.contains("temperal_downsample"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
