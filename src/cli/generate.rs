//! `contentv generate`: one video, or a batch from a JSONL file.
use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};

use super::args::GenerateArgs;
use super::calibrate::{cache_dir, cache_options, resolve_cache};
use super::load::{
    check_memory_flags, check_model_dir, check_safetensors, device_name, load_pipeline_for,
    model_dir, note_memory_flags, pick_device, RunSize,
};
use super::request::{parse_shard, resolve, unix_time, Request, RequestFields};
use super::Ui;
use crate::error::{Error, Result};
use crate::io::fsutil;
use crate::io::video::{self, FramesRef, OutputKind};
use crate::model::cache::{cosine, psnr_u8, ssim_frames, CacheMethod, CacheOptions, CacheSettings};
use crate::model::pipeline::{
    load_init_noise, save_latents, GenerateParams, Generated, LatentLayout, Pipeline, Progress,
};
use crate::runtime::residency::MemoryOptions;

/// Progress bars on stderr (hidden when stderr is not a terminal).
struct Bars {
    steps: Option<ProgressBar>,
    spin: Option<ProgressBar>,
}

impl Bars {
    fn new() -> Bars {
        Bars {
            steps: None,
            spin: None,
        }
    }
    fn on(&mut self, p: Progress) {
        match p {
            Progress::EncodeStart => self.spinner("encoding the prompts"),
            Progress::DenoiseStart { steps } => {
                self.finish_spinner();
                let b = ProgressBar::new(steps as u64);
                b.set_style(
                    ProgressStyle::with_template(
                        "denoising [{bar:30}] {pos}/{len} steps  {elapsed_precise} (eta {eta})",
                    )
                    .unwrap()
                    .progress_chars("=> "),
                );
                self.steps = Some(b);
            }
            Progress::Step { .. } => {
                if let Some(b) = &self.steps {
                    b.inc(1);
                }
            }
            Progress::DecodeStart => {
                if let Some(b) = self.steps.take() {
                    b.finish_and_clear();
                }
                self.spinner("decoding the video (VAE)");
            }
            Progress::DecodeDone => self.finish_spinner(),
        }
    }
    fn spinner(&mut self, msg: &str) {
        self.finish_spinner();
        let s = ProgressBar::new_spinner();
        s.set_style(ProgressStyle::with_template("{spinner} {msg} {elapsed}").unwrap());
        s.set_message(msg.to_string());
        s.enable_steady_tick(std::time::Duration::from_millis(120));
        self.spin = Some(s);
    }
    fn finish_spinner(&mut self) {
        if let Some(s) = self.spin.take() {
            s.finish_and_clear();
        }
    }
    fn clear(&mut self) {
        self.finish_spinner();
        if let Some(b) = self.steps.take() {
            b.finish_and_clear();
        }
    }
}

/// The step cache of a command: the options of the flags, the model's folder and where the
/// calibrations are (resolved per request: the warm-up and mag's calibration depend on the
/// steps).
pub struct CacheRun {
    pub options: CacheOptions,
    pub model: PathBuf,
    pub dir: PathBuf,
    /// `--cache-report`: also run without the cache and compare.
    pub report: bool,
}

impl CacheRun {
    /// The request's cache options: its line's, else the flags'.
    fn options<'a>(&'a self, r: &'a Request) -> &'a CacheOptions {
        r.video.cache.as_ref().unwrap_or(&self.options)
    }
    /// The request's cache settings for the run's model and the request's schedule (its steps
    /// and shift), with mag's calibration; the errors name the line's field or the flag.
    fn settings(&self, r: &Request) -> Result<Option<CacheSettings>> {
        let what = if r.video.cache.is_some() {
            "field \"cache\""
        } else {
            "--cache"
        };
        resolve_cache(
            self.options(r),
            &self.model,
            &self.dir,
            r.video.steps,
            r.video.shift,
            what,
        )
    }
}

/// Runs one validated request on a loaded pipeline; returns the JSON summary of it.
fn run_request(pipe: &Pipeline, r: &Request, cache: &CacheRun, ui: &Ui) -> Result<Value> {
    let settings = cache.settings(r)?;
    let geom = r.geometry();
    let init_noise = match &r.init_noise {
        Some(p) => {
            check_safetensors(p, "init_noise")?;
            Some(load_init_noise(p, &geom.latent_shape())?)
        }
        None => None,
    };
    check_outputs(r)?;
    let params = GenerateParams {
        init_noise,
        rescue_latents: Some(r.output.with_extension("latents.safetensors")),
        ..r.video.generate_params(r.layout)
    };
    let g = generate_guarded(pipe, &params, settings.as_ref())?;
    let comparison = match (&g.cache, cache.report) {
        (Some(_), true) => {
            ui.info("--cache-report: the same request without the cache");
            Some(generate_guarded(pipe, &params, None)?)
        }
        _ => None,
    };
    let t = Instant::now();
    let f = &g.frames;
    let written = video::write_video(
        &r.output,
        FramesRef {
            data: &f.data,
            frames: f.frames,
            height: f.height,
            width: f.width,
        },
        &r.video.video_options(),
    )?;
    let write_s = t.elapsed().as_secs_f64();
    if let Some(p) = &r.save_latents {
        save_request_latents(p, r, &g)?;
    }
    let tm = &g.timings;
    let per_step = if tm.step_s.is_empty() {
        0.0
    } else {
        tm.denoise_s / tm.step_s.len() as f64
    };
    ui.info(&format!(
        "wrote {} ({} frames, {}x{}, {} fps, seed {}): encode {:.2}s, denoise {:.2}s ({:.3}s/step), decode {:.2}s, write {:.2}s{}",
        written.display(),
        f.frames,
        f.width,
        f.height,
        r.video.fps,
        r.video.seed,
        tm.encode_s,
        tm.denoise_s,
        per_step,
        tm.decode_s,
        write_s,
        memory_text(&g.memory)
    ));
    let cache_json = cache_summary(&g, settings.as_ref(), comparison.as_ref(), ui);
    Ok(json!({
        "cache": cache_json,
        "output": fsutil::lossy(&written),
        "prompt": r.video.prompt,
        "negative_prompt": r.video.negative_prompt,
        "seed": r.video.seed,
        "seed_was_random": r.video.seed_was_random,
        "frames": f.frames,
        "frames_requested": r.video.frames_requested,
        "width": f.width,
        "height": f.height,
        "fps": r.video.fps,
        "steps": r.video.steps,
        "guidance": r.video.guidance,
        "shift": g.schedule.shift,
        "crf": r.video.crf,
        "container": if video::writes_mp4() { "mp4" } else { "png-folder" },
        "latents": r.save_latents.as_deref().map(fsutil::lossy),
        "timings_s": {
            "encode": tm.encode_s, "denoise": tm.denoise_s, "per_step": per_step, "steps": tm.step_s,
            "decode": tm.decode_s, "write": write_s,
        },
        "memory": g.memory,
        "warnings": r.warnings,
    }))
}

/// The request's outputs can be written (checked before the model loads, and again before
/// each batch request runs).
fn check_outputs(r: &Request) -> Result<()> {
    video::check_writable(&r.output)?;
    video::check_previous_output(
        &video::artifact_path(&r.output),
        OutputKind::Video,
        "the output",
    )?;
    if let Some(p) = &r.save_latents {
        video::check_writable(p)?;
        video::check_previous_output(p, OutputKind::Latents, "--save-latents")?;
    }
    Ok(())
}

/// `--save-latents` / `"save_latents"`: the final latents with the request's parameters.
fn save_request_latents(p: &Path, r: &Request, g: &Generated) -> Result<()> {
    let meta: HashMap<String, String> = [
        ("prompt", r.video.prompt.clone()),
        ("negative_prompt", r.video.negative_prompt.clone()),
        ("seed", r.video.seed.to_string()),
        ("steps", r.video.steps.to_string()),
        ("guidance", r.video.guidance.to_string()),
        ("shift", g.schedule.shift.to_string()),
        ("frames", r.video.frames.to_string()),
        ("width", r.video.width.to_string()),
        ("height", r.video.height.to_string()),
        ("fps", r.video.fps.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    save_latents(p, &g.latent_shape, &g.latents, &meta)
}

/// The step cache's lines (its report, and `--cache-report`'s comparison with the `full` run)
/// and the summary's `cache` object (null without a cache).
fn cache_summary(
    g: &Generated,
    settings: Option<&CacheSettings>,
    full: Option<&Generated>,
    ui: &Ui,
) -> Value {
    let mut cache_json = Value::Null;
    if let Some(c) = &g.cache {
        ui.info(&format!(
            "step cache {} (threshold {}, warm-up {}): {}, {:.2}s saved",
            c.method.name(),
            settings.map_or(0.0, |s| s.threshold),
            settings.map_or(0, |s| s.warmup),
            c.line,
            c.saved_s
        ));
        cache_json = json!({
            "method": c.method.name(), "threshold": settings.map(|s| s.threshold),
            "warmup": settings.map(|s| s.warmup), "steps": c.steps,
            "computed": c.computed, "line": c.line, "saved_s": c.saved_s,
        });
    }
    if let Some(full) = full {
        let q = compare_runs(g, full);
        ui.info(&format!(
            "cache report: frames PSNR {:.2} dB, SSIM {:.4}, latents cosine {:.6}, denoise {:.2}s cached vs {:.2}s full (speed-up {:.2}x)",
            q.psnr, q.ssim, q.cosine, g.timings.denoise_s, full.timings.denoise_s, q.speedup
        ));
        cache_json["report"] = json!({
            "psnr_db": if q.psnr.is_finite() { json!(q.psnr) } else { json!("inf") },
            "ssim": q.ssim, "latents_cosine": q.cosine, "speedup": q.speedup,
            "denoise_s_cached": g.timings.denoise_s, "denoise_s_full": full.timings.denoise_s,
        });
    }
    cache_json
}

/// A generation with the progress bars, a panic turned into an error.
fn generate_guarded(
    pipe: &Pipeline,
    params: &GenerateParams,
    cache: Option<&CacheSettings>,
) -> Result<Generated> {
    let mut bars = Bars::new();
    let res = catch_unwind(AssertUnwindSafe(|| {
        pipe.generate_cached(params, cache, &mut |p| bars.on(p))
    }));
    bars.clear();
    match res {
        Ok(r) => r,
        Err(panic) => Err(Error::Other(format!(
            "internal error (a bug): {}",
            panic_message(&panic)
        ))),
    }
}

/// How close a cached run is to the full one.
struct Quality {
    psnr: f64,
    ssim: f64,
    cosine: f64,
    speedup: f64,
}

fn compare_runs(cached: &Generated, full: &Generated) -> Quality {
    let (a, b) = (&cached.frames, &full.frames);
    Quality {
        psnr: psnr_u8(&a.data, &b.data),
        ssim: ssim_frames(&a.data, &b.data, a.frames, a.height, a.width),
        cosine: cosine(&cached.latents, &full.latents),
        speedup: full.timings.denoise_s / cached.timings.denoise_s.max(1e-9),
    }
}

fn memory_text(m: &crate::model::pipeline::MemoryReport) -> String {
    let mut s = String::new();
    if let Some(b) = m.gpu_peak_reserved_bytes {
        s += &format!(
            ", GPU peak {:.2} GiB reserved",
            b as f64 / (1u64 << 30) as f64
        );
    }
    if let Some(b) = m.gpu_peak_in_use_bytes {
        s += &format!(" / {:.2} GiB in use", b as f64 / (1u64 << 30) as f64);
    }
    if let Some(b) = m.host_peak_bytes {
        s += &format!(", host peak {:.0} MiB", b as f64 / (1u64 << 20) as f64);
    }
    s
}

/// The prompt for a progress line: at most 120 characters, quoted and escaped.
fn short(p: &str) -> String {
    if p.chars().count() > 120 {
        format!(
            "{:?}... ({} characters)",
            p.chars().take(117).collect::<String>(),
            p.chars().count()
        )
    } else {
        format!("{p:?}")
    }
}

pub fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// Without --model: the tiny model's small defaults for what the user did not set, said once.
fn tiny_defaults(a: &GenerateArgs, defaults: &mut RequestFields, ui: &Ui) {
    if a.model.model.is_none() && defaults.apply_tiny_defaults() {
        ui.note(&format!(
            "tiny model: unset sizes default to {} frames at {}x{}, {} steps (pass --frames/--width/--height/--steps to change)",
            crate::cli::request::TINY_FRAMES,
            crate::cli::request::TINY_WIDTH,
            crate::cli::request::TINY_HEIGHT,
            crate::cli::request::TINY_STEPS
        ));
    }
}

pub fn run(a: &GenerateArgs, ui: &Ui) -> Result<()> {
    let mem = check_memory_flags(&a.model)?;
    let mut cache = CacheRun {
        options: cache_options(&a.cache)?,
        model: PathBuf::new(), // set below, once the model's folder is known
        dir: cache_dir(&a.cache.cache_dir),
        report: a.cache.cache_report,
    };
    if a.prompts.is_some() {
        return run_batch(a, ui, &mem, cache);
    }
    if a.shard.is_some() || a.output_dir.is_some() {
        return Err(Error::Input(
            "--shard and --output-dir only apply to batch mode (--prompts FILE.jsonl)".into(),
        ));
    }
    let dir = model_dir(&a.model.model, ui);
    check_model_dir(&dir, &[])?;
    cache.model = dir.clone(); // mag's calibration is per checkpoint
    let mut defaults = RequestFields::from_args(a);
    tiny_defaults(a, &mut defaults, ui);
    let layout = LatentLayout::from_model_dir(&dir)?;
    let req = resolve(defaults, layout, &|seed| {
        PathBuf::from("outputs").join(format!("{}_{seed}.mp4", unix_time()))
    })?;
    super::request::memory::check_generate(&dir, &req.video, layout, a.model.device)?;
    for w in &req.warnings {
        ui.warn(w);
    }
    if req.video.seed_was_random && req.init_noise.is_none() {
        ui.info(&format!(
            "seed: {} (random; pass --seed {} to reproduce)",
            req.video.seed, req.video.seed
        ));
    }
    if let Some(p) = &req.init_noise {
        check_safetensors(p, "--init-noise")?;
        load_init_noise(p, &req.geometry().latent_shape())?; // fail before loading the model
    }
    cache.settings(&req)?; // bad cache flags or no calibration: fail before loading
    check_outputs(&req)?;
    let art = video::artifact_path(&req.output);
    if art.exists() {
        ui.note(&format!(
            "{} exists: it will be replaced once the new video is complete",
            art.display()
        ));
    }
    let device = pick_device(a.model.device, ui)?;
    note_memory_flags(&mem, &device, ui);
    ui.info(&format!(
        "loading {} on {}",
        dir.display(),
        device_name(&device)
    ));
    let (pipe, load_s, plan) = load_pipeline_for(
        &dir,
        &device,
        &mem,
        RunSize::of(&req.geometry(), req.video.guidance).with_cache(cache.options.method),
        a.model.vae_precision,
    )?;
    if let Some(line) = plan.describe() {
        ui.info(&line);
    }
    ui.info(&format!("loaded in {load_s:.2}s"));
    let mut s = run_request(&pipe, &req, &cache, ui)?;
    s["model"] = json!(fsutil::lossy(&dir));
    s["device"] = json!(device_name(&device));
    s["timings_s"]["load"] = json!(load_s);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&s).unwrap());
    }
    Ok(())
}

/// One line of the batch file.
struct BatchItem {
    index: usize,
    line: usize,
    parsed: Result<Request>,
}

/// The largest batch file read (a guard against `--prompts /dev/zero` and the like).
const MAX_BATCH_BYTES: u64 = 256 << 20;

/// The request lines of a batch file: (1-based line number, text or why it cannot be read).
/// Blank lines and comment lines (starting with `#` or `//`) are not requests; a UTF-8 byte
/// order mark and CRLF line ends are accepted; a line that is not UTF-8 fails alone.
pub fn batch_lines(path: &Path) -> Result<Vec<(usize, std::result::Result<String, String>)>> {
    use std::io::Read;
    let cannot = |e: &dyn std::fmt::Display| {
        Error::Input(format!(
            "cannot read the batch file {}: {e}",
            path.display()
        ))
    };
    if path.is_dir() {
        return Err(Error::Input(format!(
            "the batch file {} is a folder; give a .jsonl file (one JSON object per line)",
            path.display()
        )));
    }
    let f = std::fs::File::open(path).map_err(|e| cannot(&e))?;
    let mut bytes = Vec::new();
    f.take(MAX_BATCH_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| cannot(&e))?;
    if bytes.len() as u64 > MAX_BATCH_BYTES {
        return Err(Error::Input(format!(
            "the batch file {} is larger than {} MiB: split it into several files",
            path.display(),
            MAX_BATCH_BYTES >> 20
        )));
    }
    let body = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&bytes);
    if body.starts_with(b"\xFF\xFE") || body.starts_with(b"\xFE\xFF") {
        return Err(Error::Input(format!(
            "the batch file {} is UTF-16 text: save it as UTF-8",
            path.display()
        )));
    }
    let mut out = Vec::new();
    for (i, raw) in body.split(|&b| b == b'\n').enumerate() {
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let text = match std::str::from_utf8(raw) {
            Ok(t) => t,
            Err(e) => {
                out.push((
                    i + 1,
                    Err(format!(
                        "the line is not UTF-8 text (bad byte at column {}): save the file as UTF-8",
                        e.valid_up_to() + 1
                    )),
                ));
                continue;
            }
        };
        let t = text.trim();
        if t.is_empty() || t.starts_with('#') || t.starts_with("//") {
            continue;
        }
        out.push((i + 1, Ok(text.to_string())));
    }
    Ok(out)
}

fn run_batch(a: &GenerateArgs, ui: &Ui, mem: &MemoryOptions, mut cache: CacheRun) -> Result<()> {
    let path = a.prompts.as_ref().unwrap();
    let (shard_i, shard_n, out_dir) = batch_flags(a)?;
    let lines = batch_lines(path)?;
    let mut defaults = RequestFields::from_args(a);
    tiny_defaults(a, &mut defaults, ui);
    let dir = model_dir(&a.model.model, ui);
    cache.model = dir.clone(); // a line's mag calibration is that of this run's model
    let cache = &cache;
    let layout = LatentLayout::from_model_dir(&dir)?;
    let items = parse_batch(
        path,
        &lines,
        &defaults,
        layout,
        &out_dir,
        (shard_i, shard_n),
        cache,
    );
    let index = lines.len();
    if index == 0 {
        return Err(Error::Input(format!(
            "the batch file {} has no requests (one JSON object per line, e.g. {{\"prompt\": \"a cat surfing\"}})",
            path.display()
        )));
    }
    ui.info(&format!(
        "batch {}: {index} request(s), shard {shard_i}/{shard_n} takes {}",
        path.display(),
        items.len()
    ));
    let (mut results, todo) = triage(&items, ui);
    let mut run = BatchRun {
        load_s: 0.0,
        device: String::new(),
        model_error: None,
    };
    if !todo.is_empty() {
        run = run_todo(a, ui, mem, cache, &dir, &items, &todo, &mut results);
    }
    let count = |s: &str| results.iter().filter(|r| r["status"] == s).count();
    let (ok, skipped, failed) = (count("ok"), count("skipped"), count("failed"));
    ui.info(&format!(
        "batch done: {ok} generated, {skipped} skipped (output exists), {failed} failed"
    ));
    for r in results.iter().filter(|r| r["status"] == "failed") {
        ui.info(&format!(
            "  failed: request {} (line {}): {}",
            r["index"],
            r["line"],
            r["error"].as_str().unwrap_or("")
        ));
    }
    if a.json {
        let s = json!({
            "batch": fsutil::lossy(path), "shard": [shard_i, shard_n], "requests_in_file": index, "model": fsutil::lossy(&dir),
            "device": run.device, "load_s": run.load_s,
            "ok": ok, "skipped": skipped, "failed": failed, "model_error": run.model_error, "results": results,
        });
        println!("{}", serde_json::to_string_pretty(&s).unwrap());
    }
    if failed > 0 {
        return Err(Error::Other(format!(
            "{failed} of {} request(s) in this shard failed",
            results.len()
        )));
    }
    Ok(())
}

/// The batch-only flags checked: (shard index, shard count, output folder).
fn batch_flags(a: &GenerateArgs) -> Result<(usize, usize, PathBuf)> {
    if a.output.is_some() {
        return Err(Error::Input(
            "--output names one video; in batch mode give each line an \"output\" field or use --output-dir".into(),
        ));
    }
    if a.save_latents.is_some() {
        return Err(Error::Input(
            "--save-latents names one file, which every request of the batch would overwrite; give each line a \"save_latents\" field instead".into(),
        ));
    }
    let (shard_i, shard_n) = match &a.shard {
        Some(s) => parse_shard(s)?,
        None => (0, 1),
    };
    let out_dir = a
        .output_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("outputs"));
    if out_dir.exists() && !out_dir.is_dir() {
        return Err(Error::Input(format!(
            "--output-dir {} is a file, not a folder",
            out_dir.display()
        )));
    }
    Ok((shard_i, shard_n, out_dir))
}

/// Every line parsed (it is cheap) so that every shard sees the same conflicts: a file written
/// by two requests belongs to the first, the later one fails. Returns this shard's lines.
fn parse_batch(
    path: &Path,
    lines: &[(usize, std::result::Result<String, String>)],
    defaults: &RequestFields,
    layout: LatentLayout,
    out_dir: &Path,
    (shard_i, shard_n): (usize, usize),
    cache: &CacheRun,
) -> Vec<BatchItem> {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_else(|| "batch".into());
    let mut items = Vec::new();
    let mut claimed: HashMap<PathBuf, (usize, usize)> = HashMap::new(); // path -> (index, line)
    for (index, (ln, l)) in lines.iter().enumerate() {
        let default_out = out_dir.join(format!("{stem}_{index:05}.mp4"));
        let mut parsed = match l {
            Ok(l) => RequestFields::from_json_line(l)
                .and_then(|f| resolve(f.or(defaults), layout, &|_| default_out.clone()))
                .and_then(|r| {
                    // The cache resolved for this line's schedule before anything is loaded:
                    // a mag line without its calibration fails here, naming the file.
                    cache.settings(&r)?;
                    Ok(r)
                }),
            Err(e) => Err(Error::Input(e.clone())),
        };
        if let Ok(r) = &parsed {
            let mut writes = vec![video::artifact_path(&r.output)];
            writes.extend(r.save_latents.clone());
            let mut conflict = None;
            for w in &writes {
                let rw = fsutil::resolve(w);
                if let Some((i, l)) = claimed.get(&rw) {
                    conflict = Some(Error::Input(format!(
                        "{} is also written by request {i} (line {l}); give this line its own \"output\" / \"save_latents\"",
                        w.display()
                    )));
                    break;
                }
            }
            match conflict {
                Some(e) => parsed = Err(e),
                None => {
                    for w in writes {
                        claimed.insert(fsutil::resolve(&w), (index, *ln));
                    }
                }
            }
        }
        if index % shard_n != shard_i {
            continue;
        }
        items.push(BatchItem {
            index,
            line: *ln,
            parsed,
        });
    }
    items
}

/// Which requests need the model: the result slot of every item (failed and skipped ones filled
/// in) and the (item, request) pairs to run.
fn triage<'a>(items: &'a [BatchItem], ui: &Ui) -> (Vec<Value>, Vec<(usize, &'a Request)>) {
    let mut results: Vec<Value> = Vec::new();
    let mut todo: Vec<(usize, &Request)> = Vec::new();
    for (k, it) in items.iter().enumerate() {
        match &it.parsed {
            Err(e) => {
                ui.warn(&format!("line {} (request {}): {e}", it.line, it.index));
                results.push(json!({"index": it.index, "line": it.line, "status": "failed", "error": e.to_string()}));
            }
            Ok(r) => {
                let art = video::artifact_path(&r.output);
                if art.exists() {
                    ui.info(&format!(
                        "request {} (line {}): {} exists, skipped",
                        it.index,
                        it.line,
                        art.display()
                    ));
                    results.push(json!({"index": it.index, "line": it.line, "status": "skipped", "output": fsutil::lossy(&art)}));
                } else {
                    results.push(Value::Null);
                    todo.push((k, r));
                }
            }
        }
    }
    (results, todo)
}

/// What loading the model for a batch gave.
struct BatchRun {
    load_s: f64,
    device: String,
    model_error: Option<String>,
}

/// Loads the model once (planned for the largest request) and runs `todo`, writing each
/// result into `results`; a model that cannot load fails every request.
#[allow(clippy::too_many_arguments)]
fn run_todo(
    a: &GenerateArgs,
    ui: &Ui,
    mem: &MemoryOptions,
    cache: &CacheRun,
    dir: &Path,
    items: &[BatchItem],
    todo: &[(usize, &Request)],
    results: &mut [Value],
) -> BatchRun {
    let mut run = BatchRun {
        load_s: 0.0,
        device: String::new(),
        model_error: None,
    };
    let loaded = check_model_dir(dir, &[])
        .and_then(|_| pick_device(a.model.device, ui))
        .and_then(|d| {
            note_memory_flags(mem, &d, ui);
            run.device = device_name(&d);
            ui.info(&format!("loading {} on {}", dir.display(), run.device));
            // Plan memory for the largest request of the batch.
            let size = todo
                .iter()
                .map(|(_, r)| RunSize::of(&r.geometry(), r.video.guidance))
                .fold(
                    RunSize {
                        batch: 1,
                        video_tokens: 0,
                        step_cache: false,
                    },
                    RunSize::max,
                );
            // fbcache holds a device residual if any request uses it.
            let fb = todo
                .iter()
                .any(|(_, r)| cache.options(r).method == CacheMethod::FbCache);
            let size = if fb {
                size.with_cache(CacheMethod::FbCache)
            } else {
                size
            };
            load_pipeline_for(dir, &d, mem, size, a.model.vae_precision)
        });
    let pipe = match loaded {
        Ok((pipe, s, plan)) => {
            run.load_s = s;
            if let Some(line) = plan.describe() {
                ui.info(&line);
            }
            ui.info(&format!("loaded in {s:.2}s"));
            pipe
        }
        Err(e) => {
            ui.warn(&format!("cannot load the model: {e}"));
            run.model_error = Some(e.to_string());
            for (k, _) in todo {
                let it = &items[*k];
                results[*k] = json!({"index": it.index, "line": it.line, "status": "failed", "error": e.to_string()});
            }
            return run;
        }
    };
    for (n, (k, r)) in todo.iter().enumerate() {
        let it = &items[*k];
        ui.info(&format!(
            "[{}/{}] request {} (line {}): {}",
            n + 1,
            todo.len(),
            it.index,
            it.line,
            short(&r.video.prompt)
        ));
        for w in &r.warnings {
            ui.warn(&format!("request {}: {w}", it.index));
        }
        results[*k] = match run_request(&pipe, r, cache, ui) {
            Ok(mut s) => {
                s["index"] = json!(it.index);
                s["line"] = json!(it.line);
                s["status"] = json!("ok");
                s
            }
            Err(e) => {
                ui.warn(&format!(
                    "request {} (line {}) failed: {e}",
                    it.index, it.line
                ));
                json!({"index": it.index, "line": it.line, "status": "failed", "error": e.to_string()})
            }
        };
    }
    run
}

/// For tests and scripts: the default batch output of request `index` of `jsonl`.
pub fn default_batch_output(out_dir: &Path, jsonl: &Path, index: usize) -> PathBuf {
    let stem = jsonl
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_else(|| "batch".into());
    out_dir.join(format!("{stem}_{index:05}.mp4"))
}
