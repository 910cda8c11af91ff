//! The text-to-video pipeline (docs/spec.md §2): encode prompt and negative prompt, draw the
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
//! [`FrameDecoder`], in `model::interfaces`) so the loop can be tested with stand-ins.
//!
//! This file is the denoising loop; the video geometry ([`geometry`]), the initial noise
//! ([`noise`]), latents files ([`latents`]) and progress / timing / memory reports
//! ([`progress`]) have their own files.
pub mod geometry;
pub mod latents;
pub mod noise;
pub mod preview;
pub mod progress;

use std::collections::HashMap;
use std::time::Instant;

use half::bf16;

use crate::error::{Error, Result};
use crate::model::scheduler::{FlowMatchEuler, SchedulerConfig};
use crate::model::vae::{to_uint8_frames, VideoFrames};
use crate::runtime::{DType, Device, Tensor};

use crate::model::cache::{CacheMethod, CacheReport, CacheSettings, StepCache, StepKind};
pub use crate::model::interfaces::{
    BlockState, Denoiser, FrameDecoder, PromptEmbeds, PromptEncoding, StepInput, POOLED_DIM,
    TEXT_DIM, TEXT_TOKENS,
};
pub use geometry::{round_frames, LatentLayout, VideoGeometry};
pub use latents::{load_latents, save_latents, SavedLatents};
pub use noise::{initial_noise, load_init_noise, splitmix64};
pub use progress::{host_peak_bytes, MemoryReport, Progress, Recorder, Timings};

/// How the latents are rounded between steps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LatentPrecision {
    /// f32 latents, f32 guidance combine and Euler step (the CPU reference path).
    F32,
    /// Exactly the reference's bf16 arithmetic (latents stored in bf16).
    Bf16,
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
    /// Initial noise [1, C, T, h, w] (C latent channels) instead of the seeded generator.
    pub init_noise: Option<Vec<f32>>,
    /// Where to save the latents if the decode fails (so `contentv decode` can finish the run).
    pub rescue_latents: Option<std::path::PathBuf>,
    /// Set from another thread to stop the run at the next step boundary (before the prompt
    /// encode, before each denoising step, before the decode): the run then returns
    /// [`Error::Cancelled`] and frees what it holds. `None`: not cancellable.
    pub cancel: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

impl GenerateParams {
    fn check_cancel(&self) -> Result<()> {
        check_cancel(self.cancel.as_deref())
    }
}

/// `Err(Error::Cancelled)` once `flag` is set.
fn check_cancel(flag: Option<&std::sync::atomic::AtomicBool>) -> Result<()> {
    match flag {
        Some(f) if f.load(std::sync::atomic::Ordering::SeqCst) => Err(Error::Cancelled),
        _ => Ok(()),
    }
}

/// Result of a generation.
pub struct Generated {
    pub frames: VideoFrames,
    /// Final DiT-space latents [1, C, T, h, w] (f32).
    pub latents: Vec<f32>,
    pub latent_shape: [usize; 5],
    /// The schedule used.
    pub schedule: FlowMatchEuler,
    pub timings: Timings,
    pub memory: MemoryReport,
    /// With a step cache: which steps were computed and the time saved.
    pub cache: Option<CacheReport>,
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

/// What the denoising loop reports to and asks of its caller, as one value: progress events,
/// the recorder of intermediates, the step times, the cancel flag and the step cache.
pub struct DenoiseHooks<'a> {
    pub progress: &'a mut dyn FnMut(Progress),
    /// Receives (name, values) of intermediates: `step{i}.v_cond`, `step{i}.v_uncond`,
    /// `step{i}.v`, `step{i}.latents` (parity tests).
    pub record: Option<Recorder<'a>>,
    /// Seconds of each step, pushed as the steps finish.
    pub step_times: &'a mut Vec<f64>,
    /// Stops the run with [`Error::Cancelled`] before a step once set.
    pub cancel: Option<&'a std::sync::atomic::AtomicBool>,
    /// The run's step cache (`None`: every step computed, as before caching existed).
    pub cache: Option<&'a mut StepCache>,
}

impl<'a> DenoiseHooks<'a> {
    /// Progress only: no recorder, no cancel flag, no cache.
    pub fn new(progress: &'a mut dyn FnMut(Progress), step_times: &'a mut Vec<f64>) -> Self {
        DenoiseHooks {
            progress,
            record: None,
            step_times,
            cancel: None,
            cache: None,
        }
    }
}

/// One step's inputs on the device, for the transformer.
struct StepArgs<'a> {
    step: usize,
    xt: &'a Tensor,
    ts: &'a [f32],
    ctx: &'a Tensor,
    pooled: &'a Tensor,
}

impl Pipeline {
    /// The denoising loop from `noise` [1, C, T, h, w]; returns the final latents.
    #[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
    pub fn denoise(
        &self,
        noise: &[f32],
        shape: &[usize; 5],
        cond: &PromptEmbeds,
        uncond: Option<&PromptEmbeds>,
        schedule: &FlowMatchEuler,
        guidance: f32,
        mut hooks: DenoiseHooks,
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
        // [B, 333, 4096] and [B, 2048], batch order [uncond, cond] with guidance.
        let (ctx, pooled) = match (cfg, uncond) {
            (true, Some(u)) => stack_embeds(&[u, cond], &self.device, dtype)?,
            _ => stack_embeds(&[cond], &self.device, dtype)?,
        };
        let b = if cfg { 2 } else { 1 };
        let mut bshape = *shape;
        bshape[0] = b;
        let mut x: Vec<f32> = noise.to_vec();
        if self.precision == LatentPrecision::Bf16 {
            crate::runtime::cast::round_to_bf16(&mut x);
        }
        let steps = schedule.steps();
        if let Some(c) = hooks.cache.as_deref() {
            if c.method() == CacheMethod::FbCache && self.transformer.blocks() < 2 {
                return Err(Error::Input(
                    "--cache fbcache: this transformer cannot run its first block alone".into(),
                ));
            }
        }
        let all_ts: Vec<Vec<f32>> = (0..steps).map(|i| vec![schedule.timesteps[i]; b]).collect();
        self.transformer.prepare_run(&all_ts, &pooled)?;
        let _run = EndRun(self.transformer.as_ref());
        (hooks.progress)(Progress::DenoiseStart { steps });
        for i in 0..steps {
            check_cancel(hooks.cancel)?;
            let t0 = Instant::now();
            // The batch input [B, C, T, h, w]: the latents once per batch entry.
            let mut xb = Vec::with_capacity(n * b);
            for _ in 0..b {
                xb.extend_from_slice(&x);
            }
            let vv = self.velocity(
                i,
                xb,
                &bshape,
                &ctx,
                &pooled,
                &all_ts[i],
                hooks.cache.as_deref_mut(),
            )?;
            let v = self.guide(i, vv, n, cfg, guidance, &mut hooks.record);
            if let Some(r) = hooks.record.as_mut() {
                r(&format!("step{i}.v"), &v);
            }
            match self.precision {
                LatentPrecision::F32 => schedule.step_f32(i, &mut x, &v),
                LatentPrecision::Bf16 => schedule.step_bf16(i, &mut x, &v),
            }
            if let Some(r) = hooks.record.as_mut() {
                r(&format!("step{i}.latents"), &x);
            }
            let seconds = t0.elapsed().as_secs_f64();
            hooks.step_times.push(seconds);
            let reused = hooks
                .cache
                .as_deref()
                .is_some_and(|c| c.kinds.get(i) == Some(&StepKind::Reused));
            (hooks.progress)(Progress::Step {
                index: i,
                steps,
                seconds,
                reused,
                latents: &x,
                velocity: &v,
                sigma: schedule.sigmas.get(i + 1).copied().unwrap_or(0.0),
                shape: *shape,
            });
        }
        if let Some(c) = hooks.cache.as_deref_mut() {
            c.clear();
        }
        Ok(x)
    }

    /// The transformer's output for step `i` on the batch input `xb` [B, C, T, h, w]
    /// (host f32): computed, or reused as the step cache decides. Checked finite.
    #[allow(clippy::too_many_arguments)]
    fn velocity(
        &self,
        i: usize,
        xb: Vec<f32>,
        bshape: &[usize; 5],
        ctx: &Tensor,
        pooled: &Tensor,
        ts: &[f32],
        cache: Option<&mut StepCache>,
    ) -> Result<Vec<f32>> {
        // easy / mag decide before the transformer runs: a reused step builds no device input.
        let mut cache = cache;
        if let Some(c) = cache.as_deref_mut() {
            if c.method() != CacheMethod::FbCache && c.reuse_output(i, &xb) {
                c.record(StepKind::Reused);
                let mut out = c.reused_output(&xb);
                if self.precision == LatentPrecision::Bf16 {
                    crate::runtime::cast::round_to_bf16(&mut out);
                }
                return Ok(out);
            }
        }
        let xt = host_tensor(xb, bshape, &self.device, self.transformer.input_dtype())?;
        let a = StepArgs {
            step: i,
            xt: &xt,
            ts,
            ctx,
            pooled,
        };
        let vv = match cache {
            None => self.checked(&a, self.transformer.forward_step(i, &xt, ts, ctx, pooled)?)?,
            Some(c) if c.method() == CacheMethod::FbCache => self.first_block_cached(&a, c)?,
            Some(c) => {
                let out =
                    self.checked(&a, self.transformer.forward_step(i, &xt, ts, ctx, pooled)?)?;
                // The input as the transformer saw it (rounded to its dtype).
                let seen = xt.to_vec_f32()?;
                c.computed_output(i, &seen, &out);
                c.record(StepKind::Computed);
                out
            }
        };
        Ok(vv)
    }

    /// fbcache: block 0, then either the remaining blocks or their cached residual.
    fn first_block_cached(&self, a: &StepArgs, c: &mut StepCache) -> Result<Vec<f32>> {
        use crate::ops::elementwise::{add, add_scaled};
        let t = self.transformer.as_ref();
        let inp = StepInput {
            step: a.step,
            x: a.xt,
            timesteps: a.ts,
            ctx: a.ctx,
            pooled: a.pooled,
        };
        let s0 = t.begin_blocks(&inp)?;
        let h0 = s0.hidden.clone();
        let mut s = t.run_blocks(&inp, s0, 0..1)?;
        // The first block's residual [B, N, D], on the host for the decision.
        let r1 = add_scaled(&s.hidden, &h0, -1.0)?.to_vec_f32()?;
        if c.reuse_rest(a.step, &r1) {
            s.hidden = add(&s.hidden, c.rest.as_ref().unwrap())?;
            c.record(StepKind::Reused);
        } else {
            let h1 = s.hidden.clone();
            s = t.run_blocks(&inp, s, 1..t.blocks())?;
            c.fb_computed(r1, add_scaled(&s.hidden, &h1, -1.0)?);
            c.record(StepKind::Computed);
        }
        let out = t.finish_blocks(&inp, &s)?;
        self.checked(a, out)
    }

    /// The transformer's output checked for shape and finiteness, on the host.
    fn checked(&self, a: &StepArgs, out: Tensor) -> Result<Vec<f32>> {
        if out.shape() != a.xt.shape() {
            return Err(Error::Shape(format!(
                "transformer returned {:?}, expected {:?}",
                out.shape(),
                a.xt.shape()
            )));
        }
        let vv = out.to_vec_f32()?;
        if let Some(k) = vv.iter().position(|v| !v.is_finite()) {
            return Err(Error::Other(format!(
                "the transformer produced a non-finite value at step {} (element {k}); the weights or inputs are broken",
                a.step
            )));
        }
        Ok(vv)
    }

    /// Classifier-free guidance on the batch output `vv` ([uncond; cond] or [cond]) -> v.
    fn guide(
        &self,
        i: usize,
        mut vv: Vec<f32>,
        n: usize,
        cfg: bool,
        guidance: f32,
        record: &mut Option<Recorder>,
    ) -> Vec<f32> {
        if !cfg {
            if let Some(r) = record.as_mut() {
                r(&format!("step{i}.v_cond"), &vv);
            }
            return vv;
        }
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
    }

    /// VAE decode of DiT-space latents [1, C, T, h, w] to uint8 frames.
    pub fn decode(&self, latents: &[f32], shape: &[usize]) -> Result<VideoFrames> {
        decode_with(self.vae.as_ref(), &self.device, latents, shape)
    }

    /// A whole generation, every step computed.
    pub fn generate(
        &self,
        p: &GenerateParams,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Generated> {
        self.generate_cached(p, None, progress)
    }

    /// A whole generation with a step cache (`None`: every step computed).
    pub fn generate_cached(
        &self,
        p: &GenerateParams,
        cache: Option<&CacheSettings>,
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

        p.check_cancel()?;
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
        let mut step_cache = cache.map(|c| StepCache::new(c.clone(), p.steps));
        let latents = self.denoise(
            &noise,
            &shape,
            &cond,
            uncond.as_ref(),
            &schedule,
            p.guidance,
            DenoiseHooks {
                progress,
                record: None,
                step_times: &mut step_s,
                cancel: p.cancel.as_deref(),
                cache: step_cache.as_mut(),
            },
        )?;
        timings.denoise_s = t.elapsed().as_secs_f64();
        let cache_report = step_cache.map(|c| c.report(&step_s));
        timings.step_s = step_s;
        drop((cond, uncond));
        if self.offload_models {
            self.transformer.release();
        }
        p.check_cancel()?;

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
            cache: cache_report,
        })
    }
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
    use std::path::Path;

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
            cancel: None,
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
