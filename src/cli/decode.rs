//! `contentv decode`: saved latents -> video, with the VAE only.
use std::time::Instant;

use serde_json::json;

use super::args::{DecodeArgs, DEFAULT_CRF, DEFAULT_FPS};
use super::load::{
    check_memory_flags, check_model_dir, check_safetensors, device_name, load_vae, model_dir,
    note_memory_flags, pick_device,
};
use super::request::check_output_path;
use super::Ui;
use crate::error::{Error, Result};
use crate::io::fsutil;
use crate::io::video::{self, FramesRef, VideoOptions};
use crate::model::pipeline::{decode_with, load_latents, LatentLayout, MemoryReport};

/// Largest decoded video accepted (the limits `generate` applies).
const MAX_SIDE: usize = 4096;
const MAX_FRAMES: usize = 1001;

pub fn run(a: &DecodeArgs, ui: &Ui) -> Result<()> {
    let mem = check_memory_flags(&a.model)?;
    check_output_path(&a.output)?;
    if fsutil::same_path(&a.output, &a.latents) {
        return Err(Error::Input(format!(
            "--output {} is the --latents file; writing the video would destroy the latents",
            a.output.display()
        )));
    }
    check_safetensors(&a.latents, "--latents")?;
    let lat = load_latents(&a.latents)?;
    let stored_fps = lat.metadata.get("fps");
    let fps = match (a.fps, stored_fps) {
        (Some(f), _) => f,
        (None, Some(s)) => match s.trim().parse::<u32>() {
            Ok(f) if (1..=240).contains(&f) => f,
            _ => {
                ui.warn(&format!(
                    "{} stores fps {s:?}, which is not a frame rate from 1 to 240: using {DEFAULT_FPS} (pass --fps to choose)",
                    a.latents.display()
                ));
                DEFAULT_FPS
            }
        },
        (None, None) => DEFAULT_FPS,
    };
    let opts = VideoOptions {
        fps,
        crf: a.crf.unwrap_or(DEFAULT_CRF),
    };
    video::check_options(&opts)?;
    video::check_writable(&a.output)?;
    video::check_previous_output(
        &video::artifact_path(&a.output),
        video::OutputKind::Video,
        "--output",
    )?;
    let dir = model_dir(&a.model.model, ui);
    check_model_dir(&dir, &["vae"])?;
    let layout = LatentLayout::from_model_dir(&dir)?;
    layout.check_latent_shape(&lat.shape).map_err(|e| {
        Error::Input(format!(
            "{}: {e} (the VAE in {} expects these)",
            a.latents.display(),
            dir.display()
        ))
    })?;
    let (t, h, w) = (lat.shape[2], lat.shape[3], lat.shape[4]);
    let frames = (t - 1).saturating_mul(layout.time_factor).saturating_add(1);
    let (height, width) = (
        h.saturating_mul(layout.spatial_factor),
        w.saturating_mul(layout.spatial_factor),
    );
    if frames > MAX_FRAMES || height > MAX_SIDE || width > MAX_SIDE {
        return Err(Error::Input(format!(
            "{}: latents of shape {:?} decode to {frames} frames of {width}x{height}; at most {MAX_FRAMES} frames of {MAX_SIDE}x{MAX_SIDE} are supported",
            a.latents.display(),
            lat.shape
        )));
    }
    let device = pick_device(a.model.device, ui)?;
    note_memory_flags(&mem, &device, ui);
    let t = Instant::now();
    let vae = load_vae(&dir, &device, &mem, a.model.vae_precision)?;
    let load_s = t.elapsed().as_secs_f64();
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_message("decoding the video (VAE)");
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    let t = Instant::now();
    let frames = decode_with(&vae, &device, &lat.data, &lat.shape);
    bar.finish_and_clear();
    let frames = frames?;
    let decode_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let written = video::write_video(
        &a.output,
        FramesRef {
            data: &frames.data,
            frames: frames.frames,
            height: frames.height,
            width: frames.width,
        },
        &opts,
    )?;
    let write_s = t.elapsed().as_secs_f64();
    ui.info(&format!(
        "wrote {} ({} frames, {}x{}, {fps} fps): load {load_s:.2}s, decode {decode_s:.2}s, write {write_s:.2}s",
        written.display(),
        frames.frames,
        frames.width,
        frames.height
    ));
    if a.json {
        let s = json!({
            "output": fsutil::lossy(&written), "frames": frames.frames, "width": frames.width, "height": frames.height, "fps": fps,
            "device": device_name(&device), "timings_s": {"load": load_s, "decode": decode_s, "write": write_s},
            "memory": MemoryReport::now(&device),
        });
        println!("{}", serde_json::to_string_pretty(&s).unwrap());
    }
    Ok(())
}
