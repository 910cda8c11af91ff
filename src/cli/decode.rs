//! `contentv decode`: saved latents -> video, with the VAE only.
use std::time::Instant;

use serde_json::json;

use super::args::{DecodeArgs, DEFAULT_CRF, DEFAULT_FPS};
use super::load::{
    check_memory_flags, check_model_dir, device_name, load_vae, model_dir, pick_device,
};
use super::request::check_output_path;
use super::Ui;
use crate::error::Result;
use crate::io::video::{self, FramesRef, VideoOptions};
use crate::model::pipeline::{decode_with, load_latents, LatentLayout, MemoryReport};

pub fn run(a: &DecodeArgs, ui: &Ui) -> Result<()> {
    let mem = check_memory_flags(&a.model)?;
    let lat = load_latents(&a.latents)?;
    let fps = a
        .fps
        .or_else(|| lat.metadata.get("fps").and_then(|f| f.parse().ok()))
        .unwrap_or(DEFAULT_FPS);
    let opts = VideoOptions {
        fps,
        crf: a.crf.unwrap_or(DEFAULT_CRF),
    };
    video::check_options(&opts)?;
    check_output_path(&a.output)?;
    video::check_writable(&a.output)?;
    let dir = model_dir(&a.model.model, ui);
    check_model_dir(&dir, &["vae"])?;
    LatentLayout::from_model_dir(&dir)?
        .check_latent_shape(&lat.shape)
        .map_err(|e| {
            crate::error::Error::Input(format!(
                "{}: {e} (the VAE in {} expects these)",
                a.latents.display(),
                dir.display()
            ))
        })?;
    let device = pick_device(a.model.device, ui)?;
    let t = Instant::now();
    let vae = load_vae(&dir, &device, &mem)?;
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
            "output": written, "frames": frames.frames, "width": frames.width, "height": frames.height, "fps": fps,
            "device": device_name(&device), "timings_s": {"load": load_s, "decode": decode_s, "write": write_s},
            "memory": MemoryReport::now(&device),
        });
        println!("{}", serde_json::to_string_pretty(&s).unwrap());
    }
    Ok(())
}
