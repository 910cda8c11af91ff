//! The Python package's glue to the engine: plain Rust, no Python, and the only file of the
//! package that calls the engine (when the engine's API changes, this file changes).
//!
//! A pipeline is loaded and run on its own worker thread (the engine's models are not `Send`,
//! and the server does the same: one thread owns the models and their CUDA context). The
//! caller validates a request with the CLI's own checks ([`Engine::prepare`]: `resolve`, the
//! same messages as `contentv generate`), submits it ([`Engine::submit`]) and reads the
//! run's [`Event`]s; with `reply_each_step` the worker waits after each step for the caller's
//! answer (continue, or stop here). The run itself is `Pipeline::generate` with the same
//! parameters as the CLI's, so frames and latents are bit-identical to `contentv generate`.
//! Dropping the [`Engine`] stops the worker, frees the models and empties the device pool.
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;

use contentv::cli::args::{CacheArgs, DeviceChoice, ModelArgs, Offload, Quantize, VaePrecision};
use contentv::cli::calibrate::{cache_dir, cache_options, resolve_cache};
use contentv::cli::generate::panic_message;
use contentv::cli::load::{
    check_memory_flags, check_model_dir, device_name, load_pipeline_for, note_memory_flags,
    resolve_model_path, tiny_model_dir, RunSize,
};
use contentv::cli::request::{check_output_path, resolve, RequestFields};
use contentv::cli::Ui;
use contentv::error::{Error, Result};
use contentv::io::video::{self, FramesRef, OutputKind, VideoOptions};
use contentv::model::cache::{CacheReport, CacheSettings, StepKind};
use contentv::model::pipeline::{GenerateParams, LatentLayout, Pipeline, Progress};
use contentv::model::scheduler::FlowMatchEuler;
use contentv::runtime::device::gpu_unavailable_reason;
use contentv::runtime::Device;

/// `from_pretrained`'s options, as Python passed them (strings are checked here).
#[derive(Default)]
pub struct LoadOptions {
    pub model: Option<PathBuf>,
    pub device: Option<String>,
    pub offload: Option<String>,
    pub quantize: Option<String>,
    pub vram_budget_gib: Option<f64>,
    pub vae_tiling: bool,
    pub vae_precision: Option<String>,
}

/// `Error::Input` naming the Python argument: "`arg`: engine message".
fn arg_error(arg: &str, e: Error) -> Error {
    match e {
        Error::Input(m) => Error::Input(format!("{arg}: {m}")),
        other => other,
    }
}

/// One of `choices` (case-insensitive) for the argument `arg`, with a message listing them.
fn choice<T: Copy>(arg: &str, v: &str, choices: &[(&str, T)]) -> Result<T> {
    let l = v.to_ascii_lowercase();
    choices
        .iter()
        .find(|(n, _)| *n == l)
        .map(|(_, t)| *t)
        .ok_or_else(|| {
            let names: Vec<String> = choices.iter().map(|(n, _)| format!("{n:?}")).collect();
            Error::Input(format!(
                "{arg}: {v:?} is not one of {} (or None)",
                names.join(", ")
            ))
        })
}

/// The engine's `ModelArgs` for these options (so the memory flags go through the CLI's checks).
fn model_args(o: &LoadOptions) -> Result<ModelArgs> {
    let device = match o.device.as_deref() {
        None => DeviceChoice::Auto,
        Some(d) => choice(
            "device",
            d,
            &[
                ("cuda", DeviceChoice::Cuda),
                ("cuda:0", DeviceChoice::Cuda),
                ("cpu", DeviceChoice::Cpu),
                ("auto", DeviceChoice::Auto),
            ],
        )?,
    };
    let offload = match o.offload.as_deref() {
        None => Offload::None,
        Some(s) => choice(
            "offload",
            s,
            &[
                ("none", Offload::None),
                ("model", Offload::Model),
                ("sequential", Offload::Sequential),
            ],
        )?,
    };
    let quantize = match o.quantize.as_deref() {
        None => Quantize::None,
        Some(s) => choice(
            "quantize",
            s,
            &[("none", Quantize::None), ("int8", Quantize::Int8)],
        )?,
    };
    let vae_precision = match o.vae_precision.as_deref() {
        None => None,
        Some(s) => Some(choice(
            "vae_precision",
            s,
            &[("bf16", VaePrecision::Bf16), ("f32", VaePrecision::F32)],
        )?),
    };
    Ok(ModelArgs {
        model: o.model.clone(),
        device,
        offload,
        quantize,
        vae_tiling: o.vae_tiling,
        vae_precision,
        vram_budget: o.vram_budget_gib,
    })
}

/// What a loaded engine tells Python.
pub struct EngineInfo {
    pub model_dir: PathBuf,
    pub device: String,
    /// The built-in tiny model (no model given): its small default sizes apply.
    pub tiny: bool,
    pub layout: LatentLayout,
    /// For `logging` (what the CLI prints as `note:` lines).
    pub notes: Vec<String>,
    /// For `warnings.warn` (what the CLI prints as `warning:` lines, and the tiny-model notice).
    pub warnings: Vec<String>,
}

/// A run for the worker.
struct Job {
    params: GenerateParams,
    /// The step cache (None: every step computed, the default).
    cache: Option<CacheSettings>,
    /// Decode the frames (false: `output_type="latent"`, the VAE is skipped).
    decode: bool,
    /// Send each step's latents.
    step_latents: bool,
    /// Wait after each step for the caller's answer (true: stop after this step).
    reply_each_step: bool,
    events: Sender<Event>,
    replies: Receiver<bool>,
}

/// What a run sends its caller.
pub enum Event {
    /// Step `index` (0-based) of `steps` is done; `timestep` is the step's timestep (as the
    /// transformer saw it), `latents` the latents after it when asked for.
    Step {
        index: usize,
        steps: usize,
        timestep: f32,
        latents: Option<Vec<f32>>,
    },
    Done(Result<Output>),
}

/// A finished run.
pub struct Output {
    /// [F, H, W, 3] RGB and (F, H, W); None for a latent-only run.
    pub frames: Option<(Vec<u8>, [usize; 3])>,
    /// The final latents [1, C, T, h, w].
    pub latents: Vec<f32>,
    pub latent_shape: [usize; 5],
    /// The step after which the caller stopped the run (None: it ran every step).
    pub stopped_after: Option<usize>,
    /// With a step cache: the settings used and which steps were computed (None when the
    /// caller stopped the run early: the engine reports only finished runs).
    pub cache: Option<(CacheSettings, CacheReport)>,
}

/// A validated request.
pub struct Prepared {
    params: GenerateParams,
    pub steps: usize,
    pub seed: u64,
    pub latent_shape: [usize; 5],
    /// The CLI's `warning:` lines for it (frames rounded down, ...).
    pub warnings: Vec<String>,
    /// The checked step cache (None: off).
    pub cache: Option<CacheSettings>,
}

/// A request as Python passed it (unset: the CLI's defaults, or the tiny model's).
#[derive(Default)]
pub struct Request {
    pub prompt: String,
    pub negative_prompt: Option<String>,
    pub frames: Option<usize>,
    pub height: Option<usize>,
    pub width: Option<usize>,
    pub steps: Option<usize>,
    pub guidance: Option<f32>,
    pub shift: Option<f32>,
    pub seed: Option<u64>,
    /// Initial latents [1, C, T, h, w] (the CLI's `--init-noise`).
    pub latents: Option<(Vec<f32>, Vec<usize>)>,
    /// The step cache, as `generate`'s `--cache*` flags (`cache_report` unused).
    pub cache: CacheArgs,
}

/// The names of the engine's request fields in Python (the diffusers names).
const PY_NAMES: [(&str, &str); 8] = [
    ("frames", "num_frames"),
    ("width", "width"),
    ("height", "height"),
    ("steps", "num_inference_steps"),
    ("guidance", "guidance_scale"),
    ("shift", "shift"),
    ("no prompt", "prompt"),
    ("the prompt", "prompt"),
];

/// The engine's message for a request field, prefixed with the Python argument it names.
fn request_error(e: Error) -> Error {
    match e {
        Error::Input(m) => {
            let arg = PY_NAMES
                .iter()
                .find(|(k, _)| m.starts_with(k))
                .map(|(_, a)| *a);
            Error::Input(match arg {
                Some(a) => format!("{a}: {m}"),
                None => m,
            })
        }
        other => other,
    }
}

/// The Python arguments of the cache flags, found by what the engine's message is about.
fn cache_error(e: Error) -> Error {
    match e {
        Error::Input(m) => {
            let arg = if m.contains("without a cache method") || m.contains("calibration") {
                "cache"
            } else if m.contains(" threshold ") {
                "cache_threshold"
            } else if m.contains(" warm-up ") {
                "cache_warmup"
            } else {
                "cache"
            };
            Error::Input(format!("{arg}: {m}"))
        }
        other => other,
    }
}

/// A handle on a submitted run.
pub struct RunHandle {
    pub events: Receiver<Event>,
    pub replies: Sender<bool>,
    pub cancel: Arc<AtomicBool>,
}

/// A loaded pipeline on its worker thread.
pub struct Engine {
    pub info: EngineInfo,
    jobs: Option<Sender<Job>>,
    worker: Option<JoinHandle<()>>,
}

impl Engine {
    /// Checks the options and the model folder as `contentv generate` does, then loads the
    /// pipeline on a new worker thread.
    pub fn load(o: LoadOptions) -> Result<Engine> {
        let args = model_args(&o)?;
        let mem = check_memory_flags(&args).map_err(|e| arg_error("vram_budget_gib", e))?;
        let mut notes = Vec::new();
        let mut warnings = Vec::new();
        let (dir, tiny) = match &o.model {
            Some(p) => {
                let (d, note) = resolve_model_path(p);
                notes.extend(note);
                (d, false)
            }
            None => {
                let d = tiny_model_dir();
                // The CLI's note (cli::load::model_dir), as a Python warning.
                warnings.push(format!(
                    "no model given: using the built-in tiny random model at {}. Its weights are random, so its video is noise.",
                    d.display()
                ));
                (d, true)
            }
        };
        check_model_dir(&dir, &[])?;
        let layout = LatentLayout::from_model_dir(&dir)?;
        let (ready_tx, ready_rx) = mpsc::channel::<Result<String>>();
        let (jobs_tx, jobs_rx) = mpsc::channel::<Job>();
        let wdir = dir.clone();
        let choice = args.device;
        let vae = args.vae_precision;
        let worker = std::thread::Builder::new()
            .name("contentv-engine".into())
            .spawn(move || worker(wdir, choice, mem, vae, ready_tx, jobs_rx))
            .map_err(|e| Error::Other(format!("cannot start the engine's thread: {e}")))?;
        let device = match ready_rx.recv() {
            Ok(Ok(d)) => d,
            Ok(Err(e)) => {
                let _ = worker.join();
                return Err(e);
            }
            Err(_) => {
                let _ = worker.join();
                return Err(Error::Other(
                    "the engine's thread stopped while loading (a bug)".into(),
                ));
            }
        };
        if device == "cpu" && args.device == DeviceChoice::Auto {
            notes.push(format!(
                "running on the CPU (slow; fine for the tiny model): {}",
                gpu_unavailable_reason().unwrap_or_else(|| "no usable GPU".into())
            ));
        }
        Ok(Engine {
            info: EngineInfo {
                model_dir: dir,
                device,
                tiny,
                layout,
                notes,
                warnings,
            },
            jobs: Some(jobs_tx),
            worker: Some(worker),
        })
    }

    /// Checks a request with the CLI's checks and defaults (`cli::request::resolve`; the tiny
    /// model's small sizes when no model was given) and builds the engine's parameters.
    pub fn prepare(&self, r: Request) -> Result<Prepared> {
        let mut f = RequestFields {
            prompt: Some(r.prompt),
            negative_prompt: r.negative_prompt,
            frames: r.frames,
            width: r.width,
            height: r.height,
            steps: r.steps,
            guidance: r.guidance,
            shift: r.shift,
            seed: r.seed,
            ..Default::default()
        };
        if self.info.tiny {
            f.apply_tiny_defaults();
        }
        // The output path is not used (Python gets the frames); resolve() wants one.
        let req = resolve(f, self.info.layout, &|_| PathBuf::from("unused.mp4"))
            .map_err(request_error)?;
        let shape = req.geometry().latent_shape();
        let init_noise = match r.latents {
            None => None,
            Some((v, s)) => {
                if s != shape {
                    return Err(Error::Input(format!(
                        "latents: shape {s:?} does not match the video's latents {shape:?} ([1, C, (num_frames-1)/{}+1, height/{}, width/{}])",
                        self.info.layout.time_factor,
                        self.info.layout.spatial_factor,
                        self.info.layout.spatial_factor
                    )));
                }
                if let Some(k) = v.iter().position(|x| !x.is_finite()) {
                    return Err(Error::Input(format!(
                        "latents: element {k} is not finite ({})",
                        v[k]
                    )));
                }
                Some(v)
            }
        };
        // The CLI's cache checks (cli::calibrate, model::cache), before anything runs; mag
        // reads its calibration for this model, steps and shift from `cache_dir`.
        let options = cache_options(&r.cache).map_err(cache_error)?;
        let cache = resolve_cache(
            &options,
            &self.info.model_dir,
            &cache_dir(&r.cache.cache_dir),
            req.video.steps,
            req.video.shift,
            "--cache",
        )
        .map_err(cache_error)?;
        let mut warnings = req.warnings.clone();
        if init_noise.is_some() && !req.video.seed_was_random {
            warnings.push(
                "generator has no effect with latents: the starting noise is the latents given"
                    .into(),
            );
        }
        Ok(Prepared {
            params: GenerateParams {
                init_noise,
                ..req.video.generate_params(req.layout)
            },
            steps: req.video.steps,
            seed: req.video.seed,
            latent_shape: shape,
            warnings,
            cache,
        })
    }

    /// Starts a prepared run on the worker.
    pub fn submit(
        &self,
        p: Prepared,
        decode: bool,
        step_latents: bool,
        reply_each_step: bool,
    ) -> Result<RunHandle> {
        let cancel = Arc::new(AtomicBool::new(false));
        let (ev_tx, ev_rx) = mpsc::channel();
        let (re_tx, re_rx) = mpsc::channel();
        let job = Job {
            params: GenerateParams {
                cancel: Some(cancel.clone()),
                ..p.params
            },
            cache: p.cache,
            decode,
            step_latents,
            reply_each_step,
            events: ev_tx,
            replies: re_rx,
        };
        self.jobs
            .as_ref()
            .ok_or_else(|| Error::Other("the pipeline was closed".into()))?
            .send(job)
            .map_err(|_| Error::Other("the engine's thread has stopped (a bug)".into()))?;
        Ok(RunHandle {
            events: ev_rx,
            replies: re_tx,
            cancel,
        })
    }

    /// Stops the worker and frees the models (also what dropping does).
    pub fn close(&mut self) {
        self.jobs.take();
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.close();
    }
}

/// The worker thread: loads the pipeline (as `contentv generate` and `serve` do), runs jobs
/// until the engine is dropped, then frees the models and returns the device pool's cache.
fn worker(
    dir: PathBuf,
    choice: DeviceChoice,
    mem: contentv::runtime::residency::MemoryOptions,
    vae: Option<VaePrecision>,
    ready: Sender<Result<String>>,
    jobs: Receiver<Job>,
) {
    let ui = Ui { json: false };
    let loaded = catch_unwind(AssertUnwindSafe(|| {
        let device = match choice {
            DeviceChoice::Cpu => Device::Cpu,
            DeviceChoice::Cuda => Device::cuda(0)?,
            DeviceChoice::Auto => Device::best().0,
        };
        note_memory_flags(&mem, &device, &ui);
        // Planned for the product default request, like the server (the plan only decides
        // where layers live, never the arithmetic).
        let (pipe, _, plan) = load_pipeline_for(&dir, &device, &mem, RunSize::DEFAULT, vae)?;
        if let Some(line) = plan.describe() {
            ui.info(&line);
        }
        Ok::<_, Error>((pipe, device))
    }));
    let (pipe, device) = match loaded {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => {
            let _ = ready.send(Err(e));
            return;
        }
        Err(p) => {
            let _ = ready.send(Err(Error::Other(format!(
                "internal error (a bug) while loading: {}",
                panic_message(&p)
            ))));
            return;
        }
    };
    let _ = ready.send(Ok(device_name(&device)));
    for job in jobs.iter() {
        let events = job.events.clone();
        let out = catch_unwind(AssertUnwindSafe(|| run_job(&pipe, job))).unwrap_or_else(|p| {
            Err(Error::Other(format!(
                "internal error (a bug): {}",
                panic_message(&p)
            )))
        });
        let _ = events.send(Event::Done(out));
    }
    drop(pipe);
    if let Some(g) = device.gpu() {
        let _ = g.pool.empty_cache();
        g.pool.set_limit(None);
    }
}

/// One run: `Pipeline::generate` (the CLI's call), with the caller's step answers. A stop
/// after step i (or a latent-only run after its last step) sets the run's cancel flag, so the
/// engine returns at the next step boundary; the latents after step i are kept and decoded
/// here with the pipeline's own decode.
fn run_job(pipe: &Pipeline, job: Job) -> Result<Output> {
    let Job {
        params,
        cache,
        decode,
        step_latents,
        reply_each_step,
        events,
        replies,
    } = job;
    let schedule = FlowMatchEuler::from_config(&pipe.scheduler, params.steps, params.shift)?;
    let cancel = params.cancel.clone().expect("submit sets the cancel flag");
    let shape = params.geometry.latent_shape();
    let mut kept: Option<(usize, Vec<f32>)> = None;
    // The steps run (reused or computed, and their seconds): the cache report of a run stopped
    // by the caller or kept as latents, which `generate_cached` does not return.
    let mut kinds: Vec<StepKind> = Vec::new();
    let mut step_s: Vec<f64> = Vec::new();
    let res = pipe.generate_cached(&params, cache.as_ref(), &mut |p| {
        if let Progress::Step {
            index,
            steps,
            latents,
            seconds,
            reused,
            ..
        } = p
        {
            kinds.push(if reused {
                StepKind::Reused
            } else {
                StepKind::Computed
            });
            step_s.push(seconds);
            let sent = events.send(Event::Step {
                index,
                steps,
                timestep: schedule.timesteps[index],
                latents: step_latents.then(|| latents.to_vec()),
            });
            // A caller that is gone (or that cannot answer) stops the run.
            let stop = if sent.is_err() {
                cancel.store(true, Ordering::SeqCst);
                false
            } else if reply_each_step {
                replies.recv().unwrap_or(false)
            } else {
                false
            };
            if stop || (!decode && index + 1 == steps) {
                kept = Some((index, latents.to_vec()));
                cancel.store(true, Ordering::SeqCst);
            }
        }
    });
    match res {
        Ok(g) => Ok(Output {
            frames: Some((
                g.frames.data,
                [g.frames.frames, g.frames.height, g.frames.width],
            )),
            latents: g.latents,
            latent_shape: g.latent_shape,
            stopped_after: None,
            cache: cache.zip(g.cache),
        }),
        Err(Error::Cancelled) if kept.is_some() => {
            let (index, latents) = kept.take().unwrap();
            let early = index + 1 < params.steps;
            let frames = if decode {
                if early && pipe.offload_models {
                    pipe.transformer.release();
                }
                let f = pipe.decode(&latents, &shape)?;
                Some((f.data, [f.frames, f.height, f.width]))
            } else {
                None
            };
            Ok(Output {
                frames,
                latents,
                latent_shape: shape,
                stopped_after: early.then_some(index),
                cache: cache.map(|c| {
                    let report = CacheReport::new(c.method, &kinds, &step_s);
                    (c, report)
                }),
            })
        }
        Err(e) => Err(e),
    }
}

/// `export_to_video`: the CLI's output checks and writer (atomic: written under a temporary
/// name, renamed when complete; never replaces a file that is not a video). Returns the path
/// written.
pub fn export_video(
    data: &[u8],
    frames: usize,
    height: usize,
    width: usize,
    path: &Path,
    fps: u32,
    crf: u8,
) -> Result<PathBuf> {
    let opts = VideoOptions { fps, crf };
    video::check_options(&opts).map_err(|e| match e {
        Error::Input(m) if m.starts_with("--fps") => Error::Input(format!("fps: {m}")),
        Error::Input(m) if m.starts_with("--crf") => Error::Input(format!("crf: {m}")),
        e => e,
    })?;
    check_output_path(path).map_err(|e| arg_error("output_video_path", e))?;
    video::check_writable(path).map_err(|e| arg_error("output_video_path", e))?;
    video::check_previous_output(
        &video::artifact_path(path),
        OutputKind::Video,
        "output_video_path",
    )?;
    video::write_video(
        path,
        FramesRef {
            data,
            frames,
            height,
            width,
        },
        &opts,
    )
}

/// The device pool of GPU 0 (bytes in use, bytes cached), when a GPU is in use in this process.
pub fn device_memory() -> Option<(usize, usize)> {
    if gpu_unavailable_reason().is_some() {
        return None;
    }
    let d = Device::cuda(0).ok()?;
    let s = d.gpu()?.pool.stats();
    Some((s.in_use, s.cached))
}

/// The CLI's default negative prompt, frames per second and x264 quality (for the stubs'
/// defaults and export_to_video).
pub const DEFAULT_FPS: u32 = contentv::cli::args::DEFAULT_FPS;
pub const DEFAULT_CRF: u8 = contentv::cli::args::DEFAULT_CRF;
