//! One generation request: flags and JSONL fields merged, defaults applied, everything checked.
//!
//! * [`jsonl`]: the strict reader of one JSONL line (every error names the field);
//! * [`resolve`]: the merge and the checks, in named parts ([`resolve::resolve`]);
//! * [`params`]: the checked request ([`Request`], [`VideoParams`]) and its conversions (the
//!   pipeline's parameters, the video options, the command line);
//! * [`memory`]: the admission check of a request's memory (generate and the server);
//! * [`text`]: what a prompt may hold (length, control characters);
//! * [`util`]: shell quoting, seeds, the clock, `--shard`.
use std::path::PathBuf;

use super::args::*;

pub mod jsonl;
pub mod memory;
pub mod params;
pub mod resolve;
pub mod text;
pub mod util;

pub use jsonl::LINE_FIELDS;
pub use params::{Request, VideoParams};
pub use resolve::{check_output_path, resolve};
pub use util::{parse_shard, random_seed, shell_quote, unix_time};

/// The per-video fields; in a JSONL line each may be given (snake_case or kebab-case names).
#[derive(Debug, Default, Clone)]
pub struct RequestFields {
    pub prompt: Option<String>,
    pub negative_prompt: Option<String>,
    pub frames: Option<usize>,
    pub fps: Option<u32>,
    pub width: Option<usize>,
    pub height: Option<usize>,
    pub steps: Option<usize>,
    pub guidance: Option<f32>,
    pub shift: Option<f32>,
    pub seed: Option<u64>,
    pub output: Option<PathBuf>,
    pub crf: Option<u8>,
    pub init_noise: Option<PathBuf>,
    pub save_latents: Option<PathBuf>,
    /// The step cache (issue 27; its reader is `cli::calibrate::cache_field`).
    pub cache: Option<crate::model::cache::CacheOptions>,
}

/// Bounds of the per-video values, shared by the JSONL reader and [`resolve`].
pub const MAX_FRAMES: usize = 1001;
pub const MAX_SIZE: usize = 4096;
pub const MAX_STEPS: usize = 1000;
pub const MAX_GUIDANCE: f32 = 100.0;
pub const MIN_SHIFT: f32 = 0.001;
pub const MAX_SHIFT: f32 = 1000.0;

/// Defaults of the built-in tiny model (see [`RequestFields::apply_tiny_defaults`]).
pub const TINY_FRAMES: usize = 17;
pub const TINY_WIDTH: usize = 256;
pub const TINY_HEIGHT: usize = 144;
pub const TINY_STEPS: usize = 8;

impl RequestFields {
    pub fn from_args(a: &GenerateArgs) -> RequestFields {
        RequestFields {
            prompt: a.prompt.clone(),
            negative_prompt: a.negative_prompt.clone(),
            frames: a.frames,
            fps: a.fps,
            width: a.width,
            height: a.height,
            steps: a.steps,
            guidance: a.guidance,
            shift: a.shift,
            seed: a.seed,
            output: a.output.clone(),
            crf: a.crf,
            init_noise: a.init_noise.clone(),
            save_latents: a.save_latents.clone(),
            cache: None, // the flags' cache is the command's (generate::CacheRun)
        }
    }

    /// The built-in tiny model's defaults where a value is not given: 17 frames at 256x144,
    /// 8 steps (the product defaults, 125 frames at 768x432 and 50 steps, take minutes on a
    /// CPU even with the tiny model). Returns whether anything was filled in.
    pub fn apply_tiny_defaults(&mut self) -> bool {
        let before = (self.frames, self.width, self.height, self.steps);
        self.frames = self.frames.or(Some(TINY_FRAMES));
        self.width = self.width.or(Some(TINY_WIDTH));
        self.height = self.height.or(Some(TINY_HEIGHT));
        self.steps = self.steps.or(Some(TINY_STEPS));
        before != (self.frames, self.width, self.height, self.steps)
    }

    /// `self` with every unset field taken from `defaults`.
    pub fn or(self, d: &RequestFields) -> RequestFields {
        RequestFields {
            prompt: self.prompt.or_else(|| d.prompt.clone()),
            negative_prompt: self.negative_prompt.or_else(|| d.negative_prompt.clone()),
            frames: self.frames.or(d.frames),
            fps: self.fps.or(d.fps),
            width: self.width.or(d.width),
            height: self.height.or(d.height),
            steps: self.steps.or(d.steps),
            guidance: self.guidance.or(d.guidance),
            shift: self.shift.or(d.shift),
            seed: self.seed.or(d.seed),
            output: self.output.or_else(|| d.output.clone()),
            crf: self.crf.or(d.crf),
            init_noise: self.init_noise.or_else(|| d.init_noise.clone()),
            save_latents: self.save_latents.or_else(|| d.save_latents.clone()),
            cache: self.cache.or_else(|| d.cache.clone()),
        }
    }
}

#[cfg(test)]
mod tests;
