//! [`resolve`]: one request's fields merged with the defaults and checked, in the parts a
//! reader would name: the prompts, the frames, the size, the sampling values, the video
//! options and the seed, the files.
use std::path::{Path, PathBuf};

use super::super::args::*;
use super::params::{Request, VideoParams};
use super::util::random_seed;
use super::{RequestFields, MAX_FRAMES, MAX_GUIDANCE, MAX_SHIFT, MAX_SIZE, MAX_STEPS, MIN_SHIFT};
use crate::error::{Error, Result};
use crate::io::fsutil;
use crate::io::video::{self, VideoOptions};
use crate::model::pipeline::LatentLayout;

/// Output extensions FFmpeg builds accept.
const VIDEO_EXTS: [&str; 3] = ["mp4", "mov", "mkv"];

/// Merges and checks one request; sizes are checked against the model's `layout`
/// ([`LatentLayout::from_model_dir`]). `default_output` names the output when none is given
/// (it receives the seed).
pub fn resolve(
    f: RequestFields,
    layout: LatentLayout,
    default_output: &dyn Fn(u64) -> PathBuf,
) -> Result<Request> {
    let mut warnings = Vec::new();
    let (prompt, negative_prompt) = prompts(f.prompt, f.negative_prompt)?;
    let (frames_requested, frames) = frames(f.frames, layout, &mut warnings)?;
    let (width, height) = size(f.width, f.height, layout)?;
    let (steps, guidance) = sampling(f.steps, f.guidance, f.shift)?;
    let fps = f.fps.unwrap_or(DEFAULT_FPS);
    let crf = f.crf.unwrap_or(DEFAULT_CRF);
    video::check_options(&VideoOptions { fps, crf })?;
    let (seed, seed_was_random) = match f.seed {
        Some(s) => (s, false),
        None => (random_seed(), true),
    };
    let output = f.output.unwrap_or_else(|| default_output(seed));
    check_output_path(&output)?;
    files(f.init_noise.as_deref(), f.save_latents.as_deref(), &output)?;
    if f.init_noise.is_some() && !seed_was_random {
        warnings.push(format!(
            "--seed {seed} has no effect with --init-noise: the starting noise comes from the file"
        ));
    }
    Ok(Request {
        video: VideoParams {
            prompt,
            negative_prompt,
            frames_requested,
            frames,
            width,
            height,
            fps,
            steps,
            guidance,
            shift: f.shift,
            seed,
            seed_was_random,
            crf,
            cache: f.cache,
        },
        output,
        init_noise: f.init_noise,
        save_latents: f.save_latents,
        warnings,
        layout,
    })
}

/// The prompt (required, with something visible) and the negative prompt (the default's when
/// not given); neither may hold characters the video's metadata cannot carry.
fn prompts(prompt: Option<String>, negative: Option<String>) -> Result<(String, String)> {
    let prompt = prompt.ok_or_else(|| {
        Error::Input("no prompt: pass --prompt \"...\" (or a \"prompt\" field)".into())
    })?;
    if prompt.chars().all(|c| c.is_whitespace() || c.is_control()) {
        return Err(Error::Input(
            "the prompt is empty (it has no visible characters): describe the video, e.g. --prompt \"a cat surfing a wave\"".into(),
        ));
    }
    super::text::check("prompt", &prompt)?;
    let negative = negative.unwrap_or_else(|| DEFAULT_NEGATIVE_PROMPT.to_string());
    super::text::check("negative_prompt", &negative)?;
    Ok((prompt, negative))
}

/// The frames asked for and the frames made (rounded down to the layout's `4k+1`, with a
/// warning).
fn frames(
    asked: Option<usize>,
    layout: LatentLayout,
    warnings: &mut Vec<String>,
) -> Result<(usize, usize)> {
    let frames_requested = asked.unwrap_or(DEFAULT_FRAMES);
    if frames_requested == 0 {
        return Err(Error::Input(
            "frames must be at least 1 (4k+1: 1, 5, 9, ..., 125)".into(),
        ));
    }
    if frames_requested > MAX_FRAMES {
        return Err(Error::Input(format!("frames = {frames_requested} is too many (at most {MAX_FRAMES}; ContentV was trained on up to 125)")));
    }
    let frames = layout.round_frames(frames_requested);
    let tf = layout.time_factor;
    if frames != frames_requested {
        warnings.push(format!(
            "frames must be {tf}k+1; {frames_requested} rounded down to {frames}"
        ));
    }
    Ok((frames_requested, frames))
}

/// Width and height: positive multiples of the layout's size multiple, at most [`MAX_SIZE`].
fn size(
    width: Option<usize>,
    height: Option<usize>,
    layout: LatentLayout,
) -> Result<(usize, usize)> {
    let width = width.unwrap_or(DEFAULT_WIDTH);
    let height = height.unwrap_or(DEFAULT_HEIGHT);
    for (name, v) in [("width", width), ("height", height)] {
        let m = layout.size_multiple();
        if v == 0 || v % m != 0 {
            return Err(Error::Input(format!(
                "{name} must be a positive multiple of {m}, got {v} (try {})",
                (v / m).max(1) * m
            )));
        }
        if v > MAX_SIZE {
            return Err(Error::Input(format!(
                "{name} = {v} is too large (at most {MAX_SIZE})"
            )));
        }
    }
    Ok((width, height))
}

/// The steps, the guidance scale, and the shift's range when one is given.
fn sampling(
    steps: Option<usize>,
    guidance: Option<f32>,
    shift: Option<f32>,
) -> Result<(usize, f32)> {
    let steps = steps.unwrap_or(DEFAULT_STEPS);
    check_steps(steps)?;
    let guidance = guidance.unwrap_or(DEFAULT_GUIDANCE);
    if !guidance.is_finite() || !(0.0..=MAX_GUIDANCE).contains(&guidance) {
        return Err(Error::Input(format!(
            "guidance must be between 0 and {MAX_GUIDANCE}, got {guidance:?}"
        )));
    }
    if let Some(s) = shift {
        // Below about 1e-7 the f32 schedule divides by zero; nothing useful lies below 0.001.
        if !s.is_finite() || !(MIN_SHIFT..=MAX_SHIFT).contains(&s) {
            return Err(Error::Input(format!(
                "shift must be a number from {MIN_SHIFT} to {MAX_SHIFT}, got {s:?}"
            )));
        }
    }
    Ok((steps, guidance))
}

/// Steps between 1 and [`MAX_STEPS`] (`generate`, the server and `roofline`).
pub fn check_steps(steps: usize) -> Result<()> {
    if steps == 0 || steps > MAX_STEPS {
        return Err(Error::Input(format!(
            "steps must be between 1 and {MAX_STEPS}, got {steps}"
        )));
    }
    Ok(())
}

/// The sizes `roofline` shares with `generate`: frames (at most [`MAX_FRAMES`]), width and
/// height (multiples of the layout's, at most [`MAX_SIZE`]) and steps. Returns the frames
/// rounded to `4k+1` (with the warnings).
pub fn check_sizes(
    frames_asked: usize,
    width: usize,
    height: usize,
    steps: usize,
    layout: LatentLayout,
) -> Result<(usize, Vec<String>)> {
    let mut warnings = Vec::new();
    let (_, f) = frames(Some(frames_asked), layout, &mut warnings)?;
    size(Some(width), Some(height), layout)?;
    check_steps(steps)?;
    Ok((f, warnings))
}

/// The initial-noise file must be a file; the latents file must be a file name, neither the
/// output video nor the initial noise.
fn files(init_noise: Option<&Path>, save_latents: Option<&Path>, output: &Path) -> Result<()> {
    if let Some(p) = init_noise {
        if p.is_dir() {
            return Err(Error::Input(format!(
                "the initial-noise file {} is a folder; give the .safetensors file",
                p.display()
            )));
        }
        if !p.is_file() {
            return Err(Error::Input(format!(
                "the initial-noise file {} does not exist",
                p.display()
            )));
        }
    }
    if let Some(p) = save_latents {
        if p.is_dir() || p.file_name().is_none() {
            return Err(Error::Input(format!(
                "--save-latents {} is a folder; give a file name (e.g. {})",
                p.display(),
                p.join("latents.safetensors").display()
            )));
        }
        if fsutil::same_path(p, &video::artifact_path(output)) {
            return Err(Error::Input(format!(
                "--save-latents {} is the output video itself; give the latents their own name (e.g. {})",
                p.display(),
                output.with_extension("latents.safetensors").display()
            )));
        }
        if let Some(n) = init_noise {
            if fsutil::same_path(p, n) {
                return Err(Error::Input(format!(
                    "--save-latents {} is the --init-noise file; saving would overwrite that input",
                    p.display()
                )));
            }
        }
    }
    Ok(())
}

/// The output name must be a file with a video extension (MP4 builds) and not a folder.
pub fn check_output_path(p: &Path) -> Result<()> {
    if p.as_os_str().is_empty() || p.file_name().is_none() {
        return Err(Error::Input(format!(
            "the output path {:?} has no file name (e.g. video.mp4)",
            p.display().to_string()
        )));
    }
    let art = video::artifact_path(p);
    let ends_with_slash = p.as_os_str().to_string_lossy().ends_with('/');
    if video::writes_mp4() && (art.is_dir() || ends_with_slash) {
        return Err(Error::Input(format!(
            "the output {} is a folder; give a file name (e.g. {})",
            p.display(),
            p.join("video.mp4").display()
        )));
    }
    if video::writes_mp4() {
        let ext = p
            .extension()
            .map(|e| e.to_string_lossy().to_lowercase())
            .unwrap_or_default();
        if !VIDEO_EXTS.contains(&ext.as_str()) {
            let name = p.file_name().unwrap_or_default().to_string_lossy();
            let bare = VIDEO_EXTS
                .iter()
                .any(|e| name.eq_ignore_ascii_case(&format!(".{e}")));
            return Err(Error::Input(if bare {
                format!(
                    "the output {} has no name before the extension (e.g. video{name})",
                    p.display()
                )
            } else {
                format!(
                    "the output {} must end in .mp4 (or .mov, .mkv): this build writes H.264 video in those containers",
                    p.display()
                )
            }));
        }
    }
    Ok(())
}
