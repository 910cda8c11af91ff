//! The step cache on the command line: the cache flags checked and resolved for a run (with
//! the MagCache calibration it needs), and `contentv calibrate-cache`, which writes that
//! calibration: full generations record the magnitude ratio of the transformer's residual per
//! step (model::cache), averaged over prompts, in one small JSON file per checkpoint and
//! schedule, named by a hash of both, in the user's data folder.
use std::path::{Path, PathBuf};

use serde_json::json;

use super::args::{CacheArgs, CalibrateArgs};
use super::load::{
    check_memory_flags, check_model_dir, device_name, load_pipeline_for, model_dir,
    note_memory_flags, pick_device, RunSize,
};
use super::Ui;
use crate::error::{Error, Result};
use crate::model::cache::{
    calibration_name, fnv1a, l2, CacheMethod, CacheOptions, CacheSettings, MagCalibration,
    CALIBRATION_FORMAT, FNV_OFFSET,
};
use crate::model::pipeline::{initial_noise, DenoiseHooks, LatentPrecision, VideoGeometry};
use crate::model::scheduler::{FlowMatchEuler, SchedulerConfig};

/// The cache options of the flags (method name checked; threshold and warm-up checked against
/// the steps later, per request).
pub fn cache_options(a: &CacheArgs) -> Result<CacheOptions> {
    let method = match &a.cache {
        Some(s) => CacheOptions::parse_method(s, "--cache")?,
        None => CacheMethod::Off,
    };
    let o = CacheOptions {
        method,
        threshold: a.cache_threshold,
        warmup: a.cache_warmup,
    };
    if a.cache_report && method == CacheMethod::Off {
        return Err(Error::Input(
            "--cache-report compares a cached run with the full one: add --cache easy|fbcache|mag"
                .into(),
        ));
    }
    Ok(o)
}

/// The JSONL field `"cache"`: a method name (`"easy"`) or an object
/// `{"method": "easy", "threshold": 0.1, "warmup": 3}`; `null` is not given. The threshold and
/// the warm-up are checked against the line's steps when the request is resolved.
pub fn cache_field<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<CacheOptions>, D::Error> {
    use serde::de::Error as _;
    use serde::Deserialize;
    let v = Option::<serde_json::Value>::deserialize(d)?;
    let bad = |m: String| D::Error::custom(format!("field \"cache\": {m}"));
    let method = |s: &str| {
        CacheMethod::parse(s).ok_or_else(|| {
            bad(format!(
                "{s:?} is not a cache method: use one of {}",
                CacheMethod::NAMES
            ))
        })
    };
    match v {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(CacheOptions {
            method: method(&s)?,
            threshold: None,
            warmup: None,
        })),
        Some(serde_json::Value::Object(m)) => {
            if let Some(k) = m.keys().find(|k| !["method", "threshold", "warmup"].contains(&k.as_str())) {
                return Err(bad(format!(
                    "unknown key {k:?}; the keys are method, threshold, warmup"
                )));
            }
            let Some(serde_json::Value::String(name)) = m.get("method") else {
                return Err(bad("\"method\" must be one of easy, fbcache, mag, off".into()));
            };
            let threshold = match m.get("threshold") {
                None | Some(serde_json::Value::Null) => None,
                Some(serde_json::Value::Number(n)) => Some(n.as_f64().unwrap_or(f64::NAN) as f32),
                Some(other) => return Err(bad(format!("\"threshold\" must be a number, got {other}"))),
            };
            let warmup = match m.get("warmup") {
                None | Some(serde_json::Value::Null) => None,
                Some(serde_json::Value::Number(n)) if n.as_u64().is_some() => {
                    Some(n.as_u64().unwrap() as usize)
                }
                Some(other) => {
                    return Err(bad(format!("\"warmup\" must be a whole number, got {other}")))
                }
            };
            Ok(Some(CacheOptions {
                method: method(name)?,
                threshold,
                warmup,
            }))
        }
        Some(other) => Err(bad(format!(
            "expected a method name or an object {{\"method\": ..., \"threshold\": ..., \"warmup\": ...}}, got {other}"
        ))),
    }
}

/// The folder of the calibrations: `flag`, else `<data folder>/cache` (the server's data
/// folder convention: $XDG_DATA_HOME/contentv, ~/.local/share/contentv).
pub fn cache_dir(flag: &Option<PathBuf>) -> PathBuf {
    flag.clone()
        .unwrap_or_else(|| super::serve::state::default_data_dir().join("cache"))
}

/// The settings of a run of `steps` steps (shift `shift`) of the model in `dir`, or `None`
/// without a cache. `--cache mag` reads the matching calibration from `cdir` and fails, naming
/// the file it looked for, when there is none. Runs before anything is loaded. `what` names
/// where the options came from in the errors: `--cache`, or `field "cache"` (a JSONL line, the
/// server's body).
pub fn resolve_cache(
    o: &CacheOptions,
    dir: &Path,
    cdir: &Path,
    steps: usize,
    shift: Option<f32>,
    what: &str,
) -> Result<Option<CacheSettings>> {
    o.check(steps, what)?;
    if o.method == CacheMethod::Off {
        return Ok(None);
    }
    let ratios = if o.method == CacheMethod::Mag {
        let (path, ck, schedule) = calibration_path(dir, cdir, steps, shift)?;
        if !path.exists() {
            let (who, other) = if what.starts_with("--") {
                (format!("{what} mag"), format!("{what} easy / fbcache"))
            } else {
                (format!("{what} = \"mag\""), "\"easy\" / \"fbcache\"".into())
            };
            return Err(Error::Input(format!(
                "{who}: no calibration for this model ({ck}) with {steps} steps and shift {} ({} does not exist); run `contentv calibrate-cache --model {} --steps {steps}{}` first, or choose {other}",
                schedule.shift,
                path.display(),
                dir.display(),
                shift.map(|s| format!(" --shift {s}")).unwrap_or_default()
            )));
        }
        MagCalibration::load(&path, &ck, schedule.shift, &schedule.timesteps)?.ratios
    } else {
        Vec::new()
    };
    o.settings(steps, ratios).map(Some)
}

/// Where the mag calibration of the model in `dir` for `steps` steps (shift `shift`, else the
/// model's) is, in the folder `cdir`; with the checkpoint's identity and the schedule.
pub fn calibration_path(
    dir: &Path,
    cdir: &Path,
    steps: usize,
    shift: Option<f32>,
) -> Result<(PathBuf, String, FlowMatchEuler)> {
    let schedule =
        FlowMatchEuler::from_config(&SchedulerConfig::from_model_dir(dir)?, steps, shift)?;
    let ck = checkpoint_id(dir)?;
    let path = cdir.join(calibration_name(&ck, schedule.shift, &schedule.timesteps));
    Ok((path, ck, schedule))
}

/// The identity of the checkpoint in `dir`: a hash of its transformer's safetensors files (name,
/// size, first and last MiB), as 16 hex digits. Cheap for a 16 GB checkpoint, and different for
/// other weights of the same shapes.
pub fn checkpoint_id(dir: &Path) -> Result<String> {
    use std::io::{Read, Seek, SeekFrom};
    let tdir = dir.join("transformer");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&tdir)
        .map_err(|e| Error::Input(format!("cannot read {}: {e}", tdir.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(Error::Input(format!(
            "{}: no .safetensors files",
            tdir.display()
        )));
    }
    let mut h = FNV_OFFSET;
    const PART: u64 = 1 << 20;
    for p in &files {
        let cannot = |e: std::io::Error| Error::Input(format!("cannot read {}: {e}", p.display()));
        let mut f = std::fs::File::open(p).map_err(cannot)?;
        let len = f.metadata().map_err(cannot)?.len();
        h = fnv1a(p.file_name().unwrap().as_encoded_bytes(), h);
        h = fnv1a(&len.to_le_bytes(), h);
        let mut buf = vec![0u8; PART.min(len) as usize];
        f.read_exact(&mut buf).map_err(cannot)?;
        h = fnv1a(&buf, h);
        if len > PART {
            f.seek(SeekFrom::Start(len - PART.min(len - PART)))
                .map_err(cannot)?;
            let mut tail = vec![0u8; PART.min(len - PART) as usize];
            f.read_exact(&mut tail).map_err(cannot)?;
            h = fnv1a(&tail, h);
        }
    }
    Ok(format!("{h:016x}"))
}

/// The built-in calibration prompts.
const PROMPTS: &[&str] = &[
    "a cat surfing a wave at sunset",
    "a busy city street at night in the rain, neon lights",
    "a close-up of a hummingbird drinking from a flower",
];

pub fn run(a: &CalibrateArgs, ui: &Ui) -> Result<()> {
    let mem = check_memory_flags(&a.model)?;
    let dir = model_dir(&a.model.model, ui);
    check_model_dir(&dir, &[])?;
    let tiny = a.model.model.is_none();
    let steps = a.steps.unwrap_or(if tiny {
        super::request::TINY_STEPS
    } else {
        super::args::DEFAULT_STEPS
    });
    if !(2..=1000).contains(&steps) {
        return Err(Error::Input(format!(
            "--steps must be between 2 and 1000, got {steps}"
        )));
    }
    let prompts = calibration_prompts(a)?;
    let geometry = calibration_geometry(a, &dir, tiny)?;
    let guidance = a.guidance.unwrap_or(super::args::DEFAULT_GUIDANCE);
    if !guidance.is_finite() || guidance < 0.0 {
        return Err(Error::Input(format!(
            "--guidance must be >= 0, got {guidance}"
        )));
    }
    let schedule =
        FlowMatchEuler::from_config(&SchedulerConfig::from_model_dir(&dir)?, steps, a.shift)?;
    let ck = checkpoint_id(&dir)?;
    let out_dir = cache_dir(&a.cache_dir);
    let device = pick_device(a.model.device, ui)?;
    note_memory_flags(&mem, &device, ui);
    ui.info(&format!(
        "loading {} on {}",
        dir.display(),
        device_name(&device)
    ));
    let (pipe, _, plan) = load_pipeline_for(
        &dir,
        &device,
        &mem,
        RunSize::of(&geometry, guidance),
        a.model.vae_precision,
    )?;
    if let Some(line) = plan.describe() {
        ui.info(&line);
    }
    let ratios = mean_ratios(&pipe, &prompts, &geometry, &schedule, guidance, a.seed, ui)?;
    let cal = MagCalibration {
        format: CALIBRATION_FORMAT.into(),
        checkpoint: ck,
        steps,
        shift: schedule.shift,
        timesteps: schedule.timesteps.clone(),
        ratios,
        prompts: prompts.len(),
    };
    let path = cal.save(&out_dir)?;
    ui.info(&format!(
        "wrote {} ({steps} steps, shift {}, {} prompt(s)); use it with `contentv generate --cache mag --steps {steps}`",
        path.display(),
        cal.shift,
        cal.prompts
    ));
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &json!({"file": crate::io::fsutil::lossy(&path), "calibration": cal})
            )
            .unwrap()
        );
    }
    Ok(())
}

/// The calibration prompts: `--prompts FILE` (one per line; blank and `#` lines skipped), else
/// the built-in ones.
fn calibration_prompts(a: &CalibrateArgs) -> Result<Vec<String>> {
    let prompts: Vec<String> = match &a.prompts {
        Some(p) => std::fs::read_to_string(p)
            .map_err(|e| Error::Input(format!("cannot read --prompts {}: {e}", p.display())))?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(String::from)
            .collect(),
        None => PROMPTS.iter().map(|s| s.to_string()).collect(),
    };
    if prompts.is_empty() {
        return Err(Error::Input(
            "--prompts: the file has no prompts (one per line)".into(),
        ));
    }
    Ok(prompts)
}

/// The video size of the calibration runs: the flags, else the model's defaults (the tiny
/// model's small ones without --model).
fn calibration_geometry(a: &CalibrateArgs, dir: &Path, tiny: bool) -> Result<VideoGeometry> {
    let (f, w, h) = if tiny {
        (
            super::request::TINY_FRAMES,
            super::request::TINY_WIDTH,
            super::request::TINY_HEIGHT,
        )
    } else {
        (
            super::args::DEFAULT_FRAMES,
            super::args::DEFAULT_WIDTH,
            super::args::DEFAULT_HEIGHT,
        )
    };
    VideoGeometry::with_layout(
        crate::model::pipeline::LatentLayout::from_model_dir(dir)?,
        a.frames.unwrap_or(f),
        a.height.unwrap_or(h),
        a.width.unwrap_or(w),
    )
}

/// The magnitude ratios per step, averaged over one full generation per prompt (seeds `seed`,
/// `seed + 1`, ...).
fn mean_ratios(
    pipe: &crate::model::pipeline::Pipeline,
    prompts: &[String],
    geometry: &VideoGeometry,
    schedule: &FlowMatchEuler,
    guidance: f32,
    seed: u64,
    ui: &Ui,
) -> Result<Vec<f32>> {
    let shape = geometry.latent_shape();
    let n: usize = shape.iter().product();
    let mut sums = vec![0f64; schedule.steps()];
    for (k, prompt) in prompts.iter().enumerate() {
        ui.info(&format!("[{}/{}] {prompt:?}", k + 1, prompts.len()));
        let cond = pipe.text.encode(prompt)?;
        let uncond = if guidance > 1.0 {
            Some(
                pipe.text
                    .encode_as(super::args::DEFAULT_NEGATIVE_PROMPT, "negative prompt")?,
            )
        } else {
            None
        };
        let noise = initial_noise(seed + k as u64, n);
        let ratios = magnitude_ratios(
            pipe,
            &noise,
            &shape,
            &cond,
            uncond.as_ref(),
            schedule,
            guidance,
        )?;
        for (s, r) in sums.iter_mut().zip(&ratios) {
            *s += *r;
        }
    }
    Ok(sums
        .iter()
        .map(|s| (s / prompts.len() as f64) as f32)
        .collect())
}

/// One full (uncached) generation's magnitude ratios `||r_t|| / ||r_t-1||` of the residual
/// `r = out - x` over the whole batch (conditional and unconditional together); `g_0 = 1`.
pub fn magnitude_ratios(
    pipe: &crate::model::pipeline::Pipeline,
    noise: &[f32],
    shape: &[usize; 5],
    cond: &crate::model::pipeline::PromptEmbeds,
    uncond: Option<&crate::model::pipeline::PromptEmbeds>,
    schedule: &FlowMatchEuler,
    guidance: f32,
) -> Result<Vec<f64>> {
    let mut x: Vec<f32> = noise.to_vec();
    if pipe.precision == LatentPrecision::Bf16 {
        crate::runtime::cast::round_to_bf16(&mut x);
    }
    let cfg = guidance > 1.0 && uncond.is_some();
    let mut norms: Vec<f64> = Vec::new();
    let mut outs: Vec<f32> = Vec::new();
    let mut record = |name: &str, v: &[f32]| {
        if name.ends_with(".v_uncond") || (name.ends_with(".v_cond") && !cfg) {
            outs.clear();
            outs.extend_from_slice(v);
        } else if name.ends_with(".v_cond") {
            outs.extend_from_slice(v);
        } else if name.ends_with(".latents") {
            // r = out - x per batch entry (x tiled), then x moves on.
            let b = outs.len() / x.len().max(1);
            let r: Vec<f32> = (0..b)
                .flat_map(|e| {
                    let o = &outs[e * x.len()..(e + 1) * x.len()];
                    o.iter().zip(&x).map(|(a, b)| a - b).collect::<Vec<f32>>()
                })
                .collect();
            norms.push(l2(&r));
            x.clear();
            x.extend_from_slice(v);
        }
    };
    let mut times = Vec::new();
    let mut progress = |_: crate::model::pipeline::Progress| {};
    let mut hooks = DenoiseHooks::new(&mut progress, &mut times);
    hooks.record = Some(&mut record);
    pipe.denoise(noise, shape, cond, uncond, schedule, guidance, hooks)?;
    Ok((0..norms.len())
        .map(|i| {
            if i == 0 || norms[i - 1] == 0.0 {
                1.0
            } else {
                norms[i] / norms[i - 1]
            }
        })
        .collect())
}
