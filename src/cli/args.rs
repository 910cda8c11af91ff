//! Command-line arguments (clap derive).
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// The reference demo's negative prompt (ContentV `demo.py`).
pub const DEFAULT_NEGATIVE_PROMPT: &str =
    "overexposed, low quality, deformation, a poor composition, bad hands, bad teeth, bad eyes, bad limbs, distortion";

pub const DEFAULT_FRAMES: usize = 125;
pub const DEFAULT_FPS: u32 = 24;
pub const DEFAULT_WIDTH: usize = 768;
pub const DEFAULT_HEIGHT: usize = 432;
pub const DEFAULT_STEPS: usize = 50;
pub const DEFAULT_GUIDANCE: f32 = 6.0;
pub const DEFAULT_CRF: u8 = 18;

#[derive(Parser, Debug)]
#[command(
    name = "contentv",
    version,
    about = "ContentV-8B text-to-video on one GPU (or the CPU reference path)",
    long_about = "ContentV-8B text-to-video on one GPU (or the CPU reference path).\n\n\
        Examples:\n  \
        contentv generate --model /models/ContentV-8B --prompt \"a cat surfing a wave\" --seed 42\n  \
        contentv generate --prompt \"test\" --frames 9 --width 64 --height 64 --steps 2   (built-in tiny model: noise)\n  \
        contentv generate --model DIR --prompts requests.jsonl --shard 0/2\n  \
        contentv decode --model DIR --latents run.safetensors --output run.mp4\n  \
        contentv info --model DIR\n  \
        contentv device   (the GPU, its driver and the kernel images it loads)"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Generate a video from a text prompt (or many, from a JSONL file).
    Generate(Box<GenerateArgs>),
    /// Decode latents saved with `generate --save-latents` into a video (VAE only).
    Decode(DecodeArgs),
    /// Check a model folder: components, tensor names, shapes and dtypes, parameter counts and
    /// memory needed per mode.
    Info(InfoArgs),
    /// Write an INT8 weight-only copy of a checkpoint (transformer and T5 linears; the rest
    /// unchanged), loadable with --model like the original.
    Quantize(QuantizeArgs),
    /// Check the GPU: name, arch, driver, the kernel image each module loads, cuBLASLt.
    Device(DeviceArgs),
    /// Serve a web page and an OpenAI-style video API (POST /v1/videos ...): the model is
    /// loaded once, jobs run one at a time, the queue and the videos live under --data-dir.
    Serve(Box<ServeArgs>),
    /// Calibrate the MagCache step cache (`generate --cache mag`) for a model and schedule:
    /// full generations record the transformer's magnitude ratio per step.
    CalibrateCache(Box<CalibrateArgs>),
    /// Every GEMM, attention, convolution and memory-bound op of a denoising step and of the
    /// VAE decode, with FLOPs, bytes and the time each needs at a GPU's datasheet ceilings.
    Roofline(RooflineArgs),
}

#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Address to listen on. Anything but a loopback address needs --api-key (or --insecure).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0: any free port, printed).
    #[arg(long, default_value_t = 7860, value_parser = whole::<u16>, allow_negative_numbers = true)]
    pub port: u16,
    /// Folder of the jobs and videos [default: $XDG_DATA_HOME/contentv, else
    /// ~/.local/share/contentv, else ./contentv-data]. Created if missing.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Require `Authorization: Bearer KEY` on the API (the CONTENTV_API_KEY environment
    /// variable also sets it).
    #[arg(
        long,
        value_name = "KEY",
        env = "CONTENTV_API_KEY",
        hide_env_values = true
    )]
    pub api_key: Option<String>,
    /// Allow a non-loopback --host without --api-key (anyone who can reach it can use it).
    #[arg(long)]
    pub insecure: bool,
    /// Most jobs waiting in the queue (not counting the running one); more get HTTP 429.
    #[arg(long, value_name = "N", default_value_t = 32, value_parser = whole::<usize>, allow_negative_numbers = true)]
    pub max_queue: usize,
    /// Largest request body in bytes (larger gets HTTP 413).
    #[arg(long, value_name = "BYTES", default_value_t = 65536, value_parser = whole::<usize>, allow_negative_numbers = true)]
    pub max_body: usize,
    /// Seconds a client has to send a request head; also how long an idle keep-alive
    /// connection stays open.
    #[arg(long, value_name = "SECONDS", default_value_t = 10, value_parser = whole::<u64>)]
    pub header_timeout: u64,
    /// Seconds a client has to send the body of a POST.
    #[arg(long, value_name = "SECONDS", default_value_t = 30, value_parser = whole::<u64>)]
    pub body_timeout: u64,
    /// Most connections served at once (lowered to what the file-descriptor limit leaves);
    /// more get HTTP 503 with Retry-After.
    #[arg(long, value_name = "N", default_value_t = 256, value_parser = whole::<usize>)]
    pub max_connections: usize,
    /// Another name the server may be reached by in the Host header (a reverse proxy's);
    /// loopback names and IP addresses are always accepted. Repeatable.
    #[arg(long, value_name = "NAME")]
    pub allowed_host: Vec<String>,
    /// A web origin (e.g. https://app.example) that may create and delete jobs from its
    /// pages; other sites get HTTP 403. Repeatable.
    #[arg(long, value_name = "ORIGIN")]
    pub allow_origin: Vec<String>,
    /// Most frames one request may ask for [default: 257]; every request must also fit the
    /// machine's memory (checked when it is posted).
    #[arg(long, value_name = "N", value_parser = whole::<usize>)]
    pub max_frames: Option<usize>,
    /// Most pixels per frame (width x height) one request may ask for [default: 1280x720].
    #[arg(long, value_name = "N", value_parser = whole::<usize>)]
    pub max_pixels: Option<usize>,
    /// Finished jobs kept (the oldest are deleted with their videos beyond it; 0: no limit).
    #[arg(long, value_name = "N", default_value_t = 1000, value_parser = whole::<usize>)]
    pub keep_jobs: usize,
    /// Days a finished job is kept (then deleted with its video; 0: no limit).
    #[arg(long, value_name = "DAYS", default_value_t = 30, value_parser = whole::<u64>)]
    pub keep_days: u64,
}

#[derive(Args, Debug, Clone)]
pub struct RooflineArgs {
    /// Number of frames (4k+1).
    #[arg(long, default_value_t = 125, value_parser = whole::<usize>)]
    pub frames: usize,
    /// Width in pixels (a multiple of 16).
    #[arg(long, default_value_t = 768, value_parser = whole::<usize>)]
    pub width: usize,
    /// Height in pixels (a multiple of 16).
    #[arg(long, default_value_t = 432, value_parser = whole::<usize>)]
    pub height: usize,
    /// Denoising steps (for the total).
    #[arg(long, default_value_t = 50, value_parser = whole::<usize>)]
    pub steps: usize,
    /// The GPU whose datasheet ceilings to use: h100, h200, h100-pcie, a100, l40s, 4090.
    #[arg(long, default_value = "h100")]
    pub gpu: String,
    /// Batch 1 (guidance scale <= 1) instead of the joint cond/uncond batch of 2.
    #[arg(long)]
    pub no_guidance: bool,
    /// Arithmetic of the VAE convolutions (bf16 on tensor cores is the engine's GPU default).
    #[arg(long, default_value = "bf16", value_parser = ["f32", "bf16"])]
    pub vae_precision: String,
    /// Take the transformer and VAE architecture from this model folder (its configs and
    /// weight shapes; nothing is uploaded) instead of ContentV-8B's.
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,
    /// Also run every op of the table on the GPU at its shape (random tensors) and show the
    /// achieved time next to the prediction, with the ceilings measured on that GPU.
    #[arg(long)]
    pub measure: bool,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug, Clone)]
pub struct DeviceArgs {
    /// The GPU to check.
    #[arg(long, default_value_t = 0)]
    pub ordinal: usize,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug, Clone)]
pub struct QuantizeArgs {
    /// The checkpoint to quantize (diffusers layout, or a repository id in the Hugging Face cache).
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,
    /// Where to write the INT8 checkpoint (must not exist unless --force).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Scales per GROUP input channels instead of one per output channel (a multiple of 8).
    #[arg(long, value_name = "GROUP", value_parser = whole::<usize>, allow_negative_numbers = true)]
    pub group: Option<usize>,
    /// Replace --out if it exists.
    #[arg(long)]
    pub force: bool,
    /// Print a JSON summary.
    #[arg(long)]
    pub json: bool,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum DeviceChoice {
    /// The first CUDA GPU; fail if there is none.
    Cuda,
    /// The CPU (f32 reference path: slow, for tiny models and checks).
    Cpu,
    /// The GPU if one is usable, else the CPU (says why).
    Auto,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Offload {
    /// Everything stays on the GPU.
    None,
    /// One whole model on the GPU at a time (text encoders, then transformer, then VAE).
    Model,
    /// Transformer and T5 layers streamed from pinned host memory while the previous layer computes.
    Sequential,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Quantize {
    /// bf16 weights.
    None,
    /// INT8 weight-only linears for the transformer and T5 (per-output-channel scales).
    Int8,
}

/// Arithmetic of the VAE decoder's convolutions.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum VaePrecision {
    /// bf16 operands on tensor cores, f32 accumulation (the GPU default: the decoded frames stay
    /// within PSNR >= 40 dB of the f32 decode, docs/perf.md).
    Bf16,
    /// f32 everywhere (the CPU default; the exact reference).
    F32,
}

/// Options about the model and the machine (the same for every request of a batch).
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// Model folder in diffusers layout (transformer/ vae/ text_encoder{,_2,_3}/ tokenizer{,_2,_3}/
    /// scheduler/), or a repository id such as ByteDance/ContentV-8B already in the Hugging Face
    /// cache (HF_HUB_CACHE / HF_HOME; nothing is downloaded). Default: the built-in tiny random
    /// model (its video is noise); the CONTENTV_TINY_MODEL environment variable overrides where
    /// that is.
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,
    /// Where to run.
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    pub device: DeviceChoice,
    /// Move weights off the GPU between uses to save memory.
    #[arg(long, value_enum, default_value_t = Offload::None)]
    pub offload: Offload,
    /// Weight quantization.
    #[arg(long, value_enum, default_value_t = Quantize::None)]
    pub quantize: Quantize,
    /// Decode the video in overlapping spatial tiles to save memory.
    #[arg(long)]
    pub vae_tiling: bool,
    /// Arithmetic of the VAE convolutions [default: bf16 on a GPU (frames within PSNR >= 40 dB
    /// of the f32 decode), f32 on the CPU]. On the CPU, bf16 rounds the operands like the GPU
    /// (a reference of the GPU path, not faster).
    #[arg(long, value_enum, value_name = "PRECISION")]
    pub vae_precision: Option<VaePrecision>,
    /// Cap on GPU memory in GiB: keep as many transformer layers resident as fit, stream the rest.
    #[arg(long, value_name = "GIB", value_parser = number::<f64>, allow_negative_numbers = true)]
    pub vram_budget: Option<f64>,
}

#[derive(Args, Debug, Clone)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,

    /// What the video should show.
    #[arg(long, short = 'p')]
    pub prompt: Option<String>,
    /// What the video should not show [default: the ContentV demo's negative prompt].
    #[arg(long, value_name = "TEXT")]
    pub negative_prompt: Option<String>,
    /// Number of frames; must be 4k+1 (1, 5, 9, ..., 125), other values are rounded down [default: 125].
    #[arg(long, value_name = "N", value_parser = whole::<usize>, allow_negative_numbers = true)]
    pub frames: Option<usize>,
    /// Frames per second of the output [default: 24].
    #[arg(long, value_parser = whole::<u32>, allow_negative_numbers = true)]
    pub fps: Option<u32>,
    /// Width in pixels, a multiple of 16 [default: 768].
    #[arg(long, value_parser = whole::<usize>, allow_negative_numbers = true)]
    pub width: Option<usize>,
    /// Height in pixels, a multiple of 16 [default: 432].
    #[arg(long, value_parser = whole::<usize>, allow_negative_numbers = true)]
    pub height: Option<usize>,
    /// Denoising steps [default: 50].
    #[arg(long, value_parser = whole::<usize>, allow_negative_numbers = true)]
    pub steps: Option<usize>,
    /// Classifier-free guidance scale; <= 1 turns guidance off (faster, no negative prompt) [default: 6.0].
    #[arg(long, value_name = "SCALE", value_parser = number::<f32>, allow_negative_numbers = true)]
    pub guidance: Option<f32>,
    /// Scheduler shift [default: "shift" in the model's scheduler/scheduler_config.json].
    #[arg(long, value_parser = number::<f32>, allow_negative_numbers = true)]
    pub shift: Option<f32>,
    /// Random seed for the initial noise [default: random, printed].
    #[arg(long, value_parser = whole::<u64>, allow_negative_numbers = true)]
    pub seed: Option<u64>,
    /// Output video [default: outputs/<unix-time>_<seed>.mp4]; its folder is created. Written
    /// under a hidden temporary name and renamed when complete (an existing file of that name
    /// is replaced then, unless it is read-only). Builds without the `ffmpeg` feature write a
    /// folder of PNGs.
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// x264 quality: constant rate factor 0 (lossless) ..= 51 (worst) [default: 18].
    #[arg(long, value_parser = whole::<u8>, allow_negative_numbers = true)]
    pub crf: Option<u8>,
    /// Use this initial noise instead of the seed: a safetensors file with one tensor "noise" of
    /// shape [1, C, (frames-1)/4+1, height/8, width/8] (C: the model's latent channels, 16 for
    /// ContentV).
    #[arg(long, value_name = "FILE")]
    pub init_noise: Option<PathBuf>,
    /// Also save the final latents (safetensors, tensor "latents") for `contentv decode`.
    #[arg(long, value_name = "FILE")]
    pub save_latents: Option<PathBuf>,

    /// Batch mode: one request per line, a JSON object with any of the per-video options above
    /// as fields (prompt, negative_prompt, frames, fps, width, height, steps, guidance, shift,
    /// seed, output, crf, init_noise, save_latents, cache as "easy" or {"method", "threshold",
    /// "warmup"}; null = not given); flags given here are the
    /// defaults. UTF-8, blank lines and lines starting with # or // are skipped. The model is
    /// loaded once. Requests whose output exists are skipped; a bad line fails alone; a file
    /// that two lines would write belongs to the first of them (the later line fails).
    #[arg(long, value_name = "FILE.jsonl")]
    pub prompts: Option<PathBuf>,
    /// Batch mode: take only the requests with index % N == I (index = 0-based number of the
    /// request among the request lines), e.g. --shard 1/4.
    #[arg(long, value_name = "I/N", allow_hyphen_values = true)]
    pub shard: Option<String>,
    /// Batch mode: folder for requests without an "output" field, named
    /// <jsonl-stem>_<index>.mp4 [default: outputs].
    #[arg(long, value_name = "DIR")]
    pub output_dir: Option<PathBuf>,

    #[command(flatten)]
    pub cache: CacheArgs,

    /// Print a machine-readable JSON summary on stdout (messages go to stderr).
    #[arg(long)]
    pub json: bool,
}

/// Step caching (docs/pipeline.md, "Step caching"): skip the transformer on steps where it
/// would say almost the same. Off by default: its quality on the real checkpoint is not yet
/// measured.
#[derive(Args, Debug, Clone, Default)]
pub struct CacheArgs {
    /// Reuse the transformer's result on steps where it changes little: easy (EasyCache,
    /// adaptive, no calibration), fbcache (First-Block-Cache: the first block decides), mag
    /// (MagCache: needs `contentv calibrate-cache` for this model and schedule) [default: off].
    #[arg(long, value_name = "METHOD")]
    pub cache: Option<String>,
    /// The method's reuse threshold (relative change; 0 computes every step) [default: easy
    /// 0.2, fbcache 0.05, mag 0.12, each from its authors' code].
    #[arg(long, value_name = "X", value_parser = number::<f32>, allow_negative_numbers = true)]
    pub cache_threshold: Option<f32>,
    /// Steps always computed first [default: easy 15% of the steps, mag 20%, fbcache 1]. The
    /// last step is always computed.
    #[arg(long, value_name = "N", value_parser = whole::<usize>, allow_negative_numbers = true)]
    pub cache_warmup: Option<usize>,
    /// Also run the same request without the cache and print PSNR and SSIM of the frames, the
    /// cosine of the final latents and the speed-up.
    #[arg(long)]
    pub cache_report: bool,
    /// Folder of the MagCache calibrations [default: $XDG_DATA_HOME/contentv/cache, else
    /// ~/.local/share/contentv/cache].
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
}

/// `contentv calibrate-cache`: MagCache's magnitude ratios for one model and schedule.
#[derive(Args, Debug, Clone)]
pub struct CalibrateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Prompts to average over, one per line [default: three built-in prompts].
    #[arg(long, value_name = "FILE")]
    pub prompts: Option<PathBuf>,
    /// Denoising steps of the schedule to calibrate [default: 50].
    #[arg(long, value_parser = whole::<usize>, allow_negative_numbers = true)]
    pub steps: Option<usize>,
    /// Scheduler shift [default: the model's].
    #[arg(long, value_parser = number::<f32>, allow_negative_numbers = true)]
    pub shift: Option<f32>,
    /// Sizes of the calibration runs [default: the generate defaults; the tiny model's without
    /// --model].
    #[arg(long, value_parser = whole::<usize>, allow_negative_numbers = true)]
    pub frames: Option<usize>,
    #[arg(long, value_parser = whole::<usize>, allow_negative_numbers = true)]
    pub width: Option<usize>,
    #[arg(long, value_parser = whole::<usize>, allow_negative_numbers = true)]
    pub height: Option<usize>,
    /// Guidance scale of the calibration runs [default: 6.0].
    #[arg(long, value_parser = number::<f32>, allow_negative_numbers = true)]
    pub guidance: Option<f32>,
    /// Seed of the first prompt (the next ones add 1).
    #[arg(long, default_value_t = 0, value_parser = whole::<u64>)]
    pub seed: u64,
    /// Folder to write the calibration to [default: as `generate --cache-dir`].
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Print a JSON summary on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug, Clone)]
pub struct DecodeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Latents written by `generate --save-latents`.
    #[arg(long, value_name = "FILE")]
    pub latents: PathBuf,
    /// Output video.
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: PathBuf,
    /// Frames per second [default: the value stored with the latents, else 24].
    #[arg(long, value_parser = whole::<u32>, allow_negative_numbers = true)]
    pub fps: Option<u32>,
    /// x264 constant rate factor 0..=51 [default: 18].
    #[arg(long, value_parser = whole::<u8>, allow_negative_numbers = true)]
    pub crf: Option<u8>,
    /// Print a JSON summary on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug, Clone)]
pub struct InfoArgs {
    /// Model folder [default: the built-in tiny model].
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,
    /// Also list every tensor (name, shape, dtype).
    #[arg(long)]
    pub tensors: bool,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Parses a whole number for a flag: clearer messages than the standard parser's.
pub fn whole<T>(s: &str) -> Result<T, String>
where
    T: TryFrom<u64> + Bounded,
{
    let t = s.trim();
    let what = "a whole number (0 or more)";
    let too_big = || format!("too large (at most {})", T::MAX_U64);
    if t.starts_with('-') && t.len() > 1 {
        return Err(format!("negative; expected {what}"));
    }
    if t.is_empty() {
        return Err(format!("empty; expected {what}"));
    }
    match t.strip_prefix('+').unwrap_or(t).parse::<u64>() {
        Ok(v) => T::try_from(v).map_err(|_| too_big()),
        Err(e) if *e.kind() == std::num::IntErrorKind::PosOverflow => Err(too_big()),
        Err(_) => Err(format!("not {what}")),
    }
}

/// The largest value of an unsigned integer type, for messages.
pub trait Bounded {
    const MAX_U64: u64;
}
impl Bounded for u8 {
    const MAX_U64: u64 = u8::MAX as u64;
}
impl Bounded for u16 {
    const MAX_U64: u64 = u16::MAX as u64;
}
impl Bounded for u32 {
    const MAX_U64: u64 = u32::MAX as u64;
}
impl Bounded for u64 {
    const MAX_U64: u64 = u64::MAX;
}
impl Bounded for usize {
    const MAX_U64: u64 = usize::MAX as u64;
}

/// Parses a number for a flag (range checks come later, with the flag's own limits).
pub fn number<T: std::str::FromStr>(s: &str) -> Result<T, String> {
    s.trim()
        .parse::<T>()
        .map_err(|_| "not a number (e.g. 6 or 0.5)".to_string())
}
