//! The checked request and its conversions: the pipeline's parameters, the video options,
//! the equivalent command line.
use std::path::PathBuf;

use super::util::shell_quote;
use crate::io::video::VideoOptions;
use crate::model::pipeline::{GenerateParams, LatentLayout, VideoGeometry};

/// A validated request: the video's parameters and where its files go.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Request {
    #[serde(flatten)]
    pub video: VideoParams,
    pub output: PathBuf,
    pub init_noise: Option<PathBuf>,
    pub save_latents: Option<PathBuf>,
    #[serde(skip)]
    pub warnings: Vec<String>,
    /// The model's latent layout the sizes were checked against.
    #[serde(skip)]
    pub layout: LatentLayout,
}

impl Request {
    pub fn geometry(&self) -> VideoGeometry {
        self.video.geometry(self.layout)
    }
}

/// What a video is made with, checked and with every default applied (the seed drawn): the
/// command line's [`Request`] holds one, and each job of the server keeps one on disk.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct VideoParams {
    pub prompt: String,
    pub negative_prompt: String,
    pub frames_requested: usize,
    pub frames: usize,
    pub width: usize,
    pub height: usize,
    pub fps: u32,
    pub steps: usize,
    pub guidance: f32,
    pub shift: Option<f32>,
    pub seed: u64,
    pub seed_was_random: bool,
    pub crf: u8,
    /// The request's step cache (`None`: the command line's, or none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<crate::model::cache::CacheOptions>,
}

impl VideoParams {
    pub fn geometry(&self, layout: LatentLayout) -> VideoGeometry {
        VideoGeometry {
            frames: self.frames,
            height: self.height,
            width: self.width,
            layout,
        }
    }
    /// The pipeline's parameters for this video (no initial noise, rescue file or cancel flag:
    /// the caller adds what it has).
    pub fn generate_params(&self, layout: LatentLayout) -> GenerateParams {
        GenerateParams {
            prompt: self.prompt.clone(),
            negative_prompt: self.negative_prompt.clone(),
            geometry: self.geometry(layout),
            steps: self.steps,
            guidance: self.guidance,
            shift: self.shift,
            seed: self.seed,
            init_noise: None,
            rescue_latents: None,
            cancel: None,
        }
    }
    pub fn video_options(&self) -> VideoOptions {
        VideoOptions {
            fps: self.fps,
            crf: self.crf,
        }
    }
    pub fn seconds(&self) -> f64 {
        self.frames as f64 / self.fps as f64
    }
    /// The `contentv generate` command line that makes the same video (without the memory
    /// flags, --model and --output).
    pub fn command_line(&self) -> String {
        let mut s = format!(
            "contentv generate --prompt {} --negative-prompt {} --frames {} --width {} --height {} --fps {} --steps {} --guidance {} --seed {}",
            shell_quote(&self.prompt),
            shell_quote(&self.negative_prompt),
            self.frames,
            self.width,
            self.height,
            self.fps,
            self.steps,
            self.guidance,
            self.seed
        );
        if let Some(sh) = self.shift {
            s += &format!(" --shift {sh}");
        }
        s
    }
}
