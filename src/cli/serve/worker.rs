//! The worker thread: loads the model once, then runs the queued jobs one at a time (the
//! pipeline is synchronous). It takes a job under the lock, runs it without the lock, and
//! reports steps, previews and the result through the shared state.
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use serde_json::json;

use super::job::{Job, JobError, Status};
use super::state::State;
use crate::cli::args::DeviceChoice;
use crate::cli::generate::panic_message;
use crate::cli::load::{device_name, load_pipeline_for, note_memory_flags, pick_device, RunSize};
use crate::cli::request::unix_time;
use crate::cli::Ui;
use crate::error::{Error, Result};
use crate::io::video::{self, FramesRef, VideoOptions};
use crate::model::pipeline::preview::{denoised_estimate, latent_preview_rgb};
use crate::model::pipeline::{GenerateParams, LatentLayout, Pipeline, Progress};
use crate::runtime::residency::MemoryOptions;
use crate::runtime::Device;

/// What the worker needs to load the model.
pub struct ModelSpec {
    pub dir: PathBuf,
    pub device: DeviceChoice,
    pub mem: MemoryOptions,
    /// `--vae-precision`.
    pub vae_precision: Option<crate::cli::args::VaePrecision>,
    pub layout: LatentLayout,
}

/// A preview image every this many steps (and after the last).
pub fn preview_every(steps: usize) -> usize {
    (steps / 8).max(1)
}

/// Runs the worker: picks the device and loads the model on this thread (a CUDA context is
/// per thread), says how that went on `ready` (the device's name, or the error), then runs
/// jobs until shutdown.
pub fn run(state: Arc<State>, spec: ModelSpec, ready: std::sync::mpsc::Sender<Result<String>>) {
    let t = Instant::now();
    let (pipe, device) = match load(&spec) {
        Ok(loaded) => loaded,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    eprintln!("model loaded in {:.2}s", t.elapsed().as_secs_f64());
    state.lock().model_state = "ready".into();
    let _ = ready.send(Ok(device_name(&device)));
    while let Some((id, cancel, job)) = next_job(&state) {
        if let Err(e) = state.save(&job) {
            eprintln!("warning: cannot save job {id}: {e}");
        }
        state.emit(&id, "started", json!({"status": "in_progress"}));
        let res = catch_unwind(AssertUnwindSafe(|| {
            run_job(&state, &pipe, &spec, &job, cancel.clone())
        }))
        .unwrap_or_else(|p| {
            Err(Error::Other(format!(
                "internal error (a bug): {}",
                panic_message(&p)
            )))
        });
        finish_job(&state, &id, res);
    }
}

/// Picks the device and loads the pipeline (a panic becomes an error that says it is a bug).
fn load(spec: &ModelSpec) -> Result<(Pipeline, Device)> {
    let ui = Ui { json: false };
    let loaded = catch_unwind(AssertUnwindSafe(|| {
        let device = pick_device(spec.device, &ui)?;
        note_memory_flags(&spec.mem, &device, &ui);
        eprintln!("loading {} on {}", spec.dir.display(), device_name(&device));
        load_pipeline_for(
            &spec.dir,
            &device,
            &spec.mem,
            RunSize::DEFAULT,
            spec.vae_precision,
        )
        .map(|r| (r, device))
    }));
    match loaded {
        Ok(Ok(((p, _, plan), d))) => {
            if let Some(line) = plan.describe() {
                eprintln!("{line}");
            }
            Ok((p, d))
        }
        Ok(Err(e)) => Err(e),
        Err(p) => Err(Error::Other(format!(
            "internal error (a bug) while loading: {}",
            panic_message(&p)
        ))),
    }
}

/// Waits for the next queued job and marks it running (under the lock): its id, its cancel
/// flag and a snapshot of its record. None at shutdown.
fn next_job(state: &State) -> Option<(String, Arc<AtomicBool>, Job)> {
    let mut g = state.lock();
    loop {
        if g.shutting_down {
            return None;
        }
        if let Some(id) = g.queue.pop_front() {
            let cancel = Arc::new(AtomicBool::new(false));
            g.running = Some((id.clone(), cancel.clone()));
            let job = g.jobs.get_mut(&id).expect("a queued job exists");
            job.status = Status::InProgress;
            job.started_at = Some(unix_time());
            job.attempts += 1;
            job.live = Default::default();
            job.live.phase = "encoding";
            job.live.progress = 0;
            let snapshot = job.clone();
            return Some((id, cancel, snapshot));
        }
        g = state.wake.wait(g).unwrap_or_else(|e| e.into_inner());
    }
}

/// Records how job `id` ended: the final record first (retried while the disk refuses), then
/// the state the API reports (what clients see is what a restart finds), the counters, the
/// retention, and the event.
fn finish_job(state: &State, id: &str, res: Result<serde_json::Value>) {
    let (kind, status) = match &res {
        Ok(_) => ("completed", Status::Completed),
        Err(Error::Cancelled) => ("cancelled", Status::Cancelled),
        Err(_) => ("failed", Status::Failed),
    };
    let Some(mut j) = state.lock().jobs.get(id).cloned() else {
        state.lock().running = None;
        return;
    };
    j.status = status;
    j.completed_at = Some(unix_time());
    match res {
        Ok(timings) => {
            j.live.progress = 100;
            j.timings = Some(timings);
        }
        Err(Error::Cancelled) => {
            j.error = Some(JobError {
                code: "cancelled".into(),
                message: format!("cancelled at step {} of {}", j.live.step, j.params.steps),
            });
        }
        Err(e) => {
            j.error = Some(JobError {
                code: "generation_failed".into(),
                message: e.to_string(),
            });
        }
    }
    if let Err(e) = state.save_retrying(&j, 30) {
        j.warnings.push(format!(
            "the final status could not be saved ({e}): after a restart the job runs again"
        ));
    }
    let snapshot = j.clone();
    {
        let mut g = state.lock();
        g.running = None;
        let c = &mut g.counters;
        match status {
            Status::Completed => c.completed += 1,
            Status::Cancelled => c.cancelled += 1,
            _ => c.failed += 1,
        }
        if let Some(slot) = g.jobs.get_mut(id) {
            let live = slot.live.clone();
            *slot = j;
            slot.live.step = live.step;
            slot.live.step_seconds_sum = live.step_seconds_sum;
            slot.live.cancel_requested = live.cancel_requested;
            slot.live.phase = live.phase;
        }
    }
    state.prune();
    state.emit(
        id,
        kind,
        json!({"status": status.name(), "error": snapshot.error}),
    );
}

/// Runs one job: the pipeline with step reports and previews, then the video with the
/// parameters in its metadata. Returns the timings.
fn run_job(
    state: &State,
    pipe: &Pipeline,
    spec: &ModelSpec,
    job: &Job,
    cancel: Arc<AtomicBool>,
) -> Result<serde_json::Value> {
    let p = &job.params;
    let id = job.id.as_str();
    let params = GenerateParams {
        cancel: Some(cancel.clone()),
        ..p.generate_params(spec.layout)
    };
    // The tokenizers' truncation warnings go into the job (and to stderr, as before).
    let mut warnings = pipe.text.truncation_warnings(&p.prompt, "prompt")?;
    if p.guidance > 1.0 {
        warnings.extend(
            pipe.text
                .truncation_warnings(&p.negative_prompt, "negative prompt")?,
        );
    }
    if !warnings.is_empty() {
        if let Some(j) = state.lock().jobs.get_mut(id) {
            j.warnings.extend(warnings);
        }
    }
    let every = preview_every(p.steps);
    let mut on_progress = |ev: Progress| match ev {
        Progress::Step {
            index,
            steps,
            seconds,
            latents,
            velocity,
            sigma,
            shape,
            ..
        } => {
            let (progress, eta) = {
                let mut g = state.lock();
                g.counters.steps += 1;
                g.counters.step_seconds += seconds;
                let Some(j) = g.jobs.get_mut(id) else { return };
                j.live.step = index + 1;
                j.live.step_seconds_sum += seconds;
                j.live.progress = Job::step_progress(index + 1, steps);
                j.live.phase = "denoising";
                (j.live.progress, j.eta_seconds())
            };
            state.emit(
                id,
                "step",
                json!({"step": index + 1, "steps": steps, "seconds": seconds, "eta_seconds": eta, "progress": progress}),
            );
            if (index + 1) % every == 0 || index + 1 == steps {
                emit_preview(
                    state,
                    id,
                    index + 1,
                    &denoised_estimate(latents, velocity, sigma),
                    shape,
                );
            }
        }
        Progress::DecodeStart => {
            if let Some(j) = state.lock().jobs.get_mut(id) {
                j.live.phase = "decoding";
                j.live.progress = 96;
            }
            state.emit(id, "decode", json!({"progress": 96}));
        }
        Progress::EncodeStart | Progress::DenoiseStart { .. } | Progress::DecodeDone => {}
    };
    // Step caching (issue 27): mag's calibration is looked up in the default cache folder.
    let cache = match &p.cache {
        Some(o) => crate::cli::calibrate::resolve_cache(
            o,
            &spec.dir,
            &crate::cli::calibrate::cache_dir(&None),
            p.steps,
            p.shift,
            "field \"cache\"",
        )?,
        None => None,
    };
    let g = pipe.generate_cached(&params, cache.as_ref(), &mut on_progress)?;
    if let Some(c) = &g.cache {
        state.emit(id, "cache", serde_json::to_value(c).unwrap_or_default());
    }
    if cancel.load(Ordering::SeqCst) {
        return Err(Error::Cancelled);
    }
    let t = Instant::now();
    let f = &g.frames;
    video::write_video_tagged(
        &state.video_request_path(id),
        FramesRef {
            data: &f.data,
            frames: f.frames,
            height: f.height,
            width: f.width,
        },
        &VideoOptions {
            fps: p.fps,
            crf: p.crf,
        },
        &video_tags(p),
    )?;
    let tm = &g.timings;
    Ok(json!({
        "encode": tm.encode_s, "denoise": tm.denoise_s, "steps": tm.step_s,
        "decode": tm.decode_s, "write": t.elapsed().as_secs_f64(),
        "shift": g.schedule.shift,
        "cache": g.cache,
    }))
}

/// The `preview` event after step `step`: the middle latent frame of the denoised estimate
/// `x0` [B, C, T, h, w] as a PNG (none when the frame cannot be shown or encoded).
fn emit_preview(state: &State, id: &str, step: usize, x0: &[f32], shape: [usize; 5]) {
    let mid = shape[2] / 2;
    if let Some((w, h, rgb)) = latent_preview_rgb(x0, shape, mid) {
        if let Ok(png) = video::encode_png_rgb(&rgb, w, h) {
            state.emit(
                id,
                "preview",
                json!({"step": step, "width": w, "height": h, "latent_frame": mid,
                       "png_base64": crate::io::base64::encode(&png)}),
            );
        }
    }
}

/// The video's metadata: the prompt as its title, the equivalent command line as its comment,
/// and every parameter (JSON) as its description.
fn video_tags(p: &crate::cli::request::params::VideoParams) -> Vec<(String, String)> {
    vec![
        (
            "title".to_string(),
            p.prompt.chars().take(200).collect::<String>(),
        ),
        ("comment".to_string(), p.command_line()),
        (
            "description".to_string(),
            serde_json::to_string(p).unwrap_or_default(),
        ),
    ]
}

#[cfg(test)]
mod tests {
    #[test]
    fn previews_every_eighth_of_the_steps() {
        assert_eq!(super::preview_every(50), 6);
        assert_eq!(super::preview_every(3), 1);
    }
}
