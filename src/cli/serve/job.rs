//! One job of the server: the API request turned into the CLI's request fields (checked by the
//! CLI's own code, [`crate::cli::request`]), the record kept on disk, and the video object the
//! API answers.
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::cli::request::memory::{self, ModelFacts, Names};
use crate::cli::request::{resolve, text, RequestFields, VideoParams};
use crate::error::Error;
use crate::model::cache::CacheOptions;
use crate::model::pipeline::LatentLayout;

/// The fields of `POST /v1/videos`.
pub const API_FIELDS: [&str; 12] = [
    "prompt",
    "negative_prompt",
    "size",
    "num_frames",
    "seconds",
    "fps",
    "num_inference_steps",
    "guidance_scale",
    "shift",
    "seed",
    "model",
    "cache",
];

/// A 400 answer: the message and the request field it is about.
#[derive(Debug, Clone, PartialEq)]
pub struct BadRequest {
    pub message: String,
    pub param: Option<String>,
    pub code: &'static str,
}

impl BadRequest {
    fn new(message: impl Into<String>, param: Option<&str>, code: &'static str) -> BadRequest {
        BadRequest {
            message: message.into(),
            param: param.map(str::to_string),
            code,
        }
    }
}

/// The name of the request field a CLI message is about: `field "X"` (the JSONL reader's
/// messages) or the flag name a message of [`resolve`] starts with; mapped back to the API's
/// names.
fn api_param(msg: &str, used_seconds: bool) -> Option<&'static str> {
    let cli = if let Some(rest) = msg.strip_prefix("field \"") {
        rest.split('"').next().unwrap_or("")
    } else {
        let first = msg
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .find(|w| !w.is_empty())
            .unwrap_or("");
        const NAMES: [&str; 8] = [
            "frames", "fps", "width", "height", "steps", "guidance", "shift", "seed",
        ];
        if !NAMES.contains(&first) && first != "negative_prompt" && msg.contains("prompt") {
            "prompt"
        } else {
            first
        }
    };
    Some(match cli {
        "prompt" => "prompt",
        "negative_prompt" => "negative_prompt",
        "frames" if used_seconds => "seconds",
        "frames" => "num_frames",
        "fps" => "fps",
        "width" | "height" => "size",
        "steps" => "num_inference_steps",
        "guidance" => "guidance_scale",
        "shift" => "shift",
        "seed" => "seed",
        "cache" => "cache",
        _ => return None,
    })
}

/// What the server needs to check a request: the model's layout, its names, the defaults.
pub struct Checker {
    pub layout: LatentLayout,
    /// Accepted values of "model" (lowercase).
    pub model_names: Vec<String>,
    /// The defaults of unset fields (the tiny model's small sizes without --model).
    pub defaults: RequestFields,
    /// `--max-frames` and `--max-pixels`.
    pub max_frames: usize,
    pub max_pixels: usize,
    /// The architecture for the memory estimate, and whether the model runs on a GPU (then
    /// `gpu_bytes` is its memory).
    pub facts: Option<ModelFacts>,
    pub on_gpu: bool,
    pub gpu_bytes: Option<u64>,
}

/// A CLI message in the API's words: the API's field names where the message names a CLI
/// field or flag (`frames` -> `num_frames`, `pass --prompt` -> the "prompt" field).
fn api_wording(m: &str, used_seconds: bool) -> String {
    let frames = if used_seconds {
        "seconds"
    } else {
        "num_frames"
    };
    let mut t = m
        .replace(
            "pass --prompt \"...\" (or a \"prompt\" field)",
            "give the \"prompt\" field",
        )
        .replace(", e.g. --prompt \"", ", e.g. \"prompt\": \"")
        .replace("field \"frames\"", &format!("field \"{frames}\""))
        .replace("field \"steps\"", "field \"num_inference_steps\"")
        .replace("field \"guidance\"", "field \"guidance_scale\"")
        .replace("field \"width\"", "field \"size\" (width)")
        .replace("field \"height\"", "field \"size\" (height)");
    for (cli, api) in [
        ("frames ", format!("{frames} ")),
        ("steps ", "num_inference_steps ".into()),
        ("guidance ", "guidance_scale ".into()),
        ("width ", "size: width ".into()),
        ("height ", "size: height ".into()),
    ] {
        if let Some(rest) = t.strip_prefix(cli) {
            t = format!("{api}{rest}");
            break;
        }
    }
    t
}

impl Checker {
    /// Turns a request body into checked parameters, with the CLI's checks and messages; the
    /// error names the API field.
    pub fn check(&self, body: &[u8]) -> Result<(VideoParams, Vec<String>), BadRequest> {
        let obj = body_object(body)?;
        let given = |k: &str| obj.get(k).filter(|v| !v.is_null());
        if let Some(m) = given("model") {
            self.check_model(m)?;
        }
        let line = cli_line(&obj)?;
        let used_seconds = given("seconds").is_some();
        let mut fields = RequestFields::from_json_line(&Value::Object(line).to_string())
            .map_err(|e| msg_error(e, used_seconds))?;
        if let Some(s) = given("seconds") {
            if given("num_frames").is_some() {
                return Err(BadRequest::new(
                    "give either \"num_frames\" or \"seconds\", not both",
                    Some("seconds"),
                    "invalid_value",
                ));
            }
            fields.frames = Some(self.frames_of_seconds(s, &fields)?);
        }
        let fields = fields.or(&self.defaults);
        let r = resolve(fields, self.layout, &|_| {
            Path::new("video.mp4").to_path_buf()
        })
        .map_err(|e| msg_error(e, used_seconds))?;
        if let Some(c) = &r.video.cache {
            self.check_cache(c, &r.video)?;
        }
        let fname = if used_seconds {
            "seconds"
        } else {
            "num_frames"
        };
        self.check_limits(&r.video, fname)?;
        Ok((r.video, r.warnings))
    }

    /// `"model"` names this server's model.
    fn check_model(&self, m: &Value) -> Result<(), BadRequest> {
        let ok = m
            .as_str()
            .is_some_and(|s| self.model_names.contains(&s.to_lowercase()));
        if !ok {
            return Err(BadRequest::new(
                format!(
                    "field \"model\" = {m}: this server runs \"{}\" (or leave the field out)",
                    self.model_names[0]
                ),
                Some("model"),
                "model_not_found",
            ));
        }
        Ok(())
    }

    /// `"seconds"` as a frame count at the request's fps.
    fn frames_of_seconds(&self, s: &Value, fields: &RequestFields) -> Result<usize, BadRequest> {
        // OpenAI's API sends seconds as a string ("4"); a number is accepted too.
        let secs = match s {
            Value::String(t) => t.trim().parse::<f64>().ok(),
            other => other.as_f64(),
        }
        .filter(|x| x.is_finite() && *x > 0.0 && *x <= 600.0)
        .ok_or_else(|| {
            BadRequest::new(
                format!("field \"seconds\" = {s}: expected a number of seconds, more than 0 and at most 600"),
                Some("seconds"),
                "invalid_value",
            )
        })?;
        let fps = fields
            .fps
            .or(self.defaults.fps)
            .unwrap_or(crate::cli::args::DEFAULT_FPS);
        Ok((secs * fps as f64).round() as usize + 1)
    }

    /// The server's limits (`--max-frames`, `--max-pixels`) and the memory estimate; `fname`
    /// is the field the frames came from.
    fn check_limits(&self, v: &VideoParams, fname: &str) -> Result<(), BadRequest> {
        if v.frames > self.max_frames {
            return Err(BadRequest::new(
                format!(
                    "{fname}: {} frames is more than this server makes (at most {}, --max-frames)",
                    v.frames, self.max_frames
                ),
                Some(fname),
                "invalid_value",
            ));
        }
        if v.width * v.height > self.max_pixels {
            return Err(BadRequest::new(
            format!(
                "size {}x{} is {} pixels a frame, more than this server makes (at most {}, --max-pixels)",
                v.width, v.height, v.width * v.height, self.max_pixels
            ),
            Some("size"),
            "invalid_value",
        ));
        }
        if let Some(f) = &self.facts {
            memory::check(
                f,
                v,
                self.layout,
                self.on_gpu,
                memory::host_available(),
                self.gpu_bytes,
                Names::Api,
            )
            .map_err(|e| {
                let param = if v.width * v.height > 1 << 20 {
                    "size"
                } else {
                    fname
                };
                BadRequest::new(e.to_string(), Some(param), "request_too_large")
            })?;
        }
        Ok(())
    }

    /// The request's step cache: its threshold and warm-up for its steps, and with `mag` the
    /// calibration of the server's model for the job's schedule (steps, shift) in the default
    /// cache folder, where the worker reads it: a 400 naming `cache` before the job is queued.
    fn check_cache(&self, c: &CacheOptions, v: &VideoParams) -> Result<(), BadRequest> {
        let bad = |e: Error| BadRequest::new(e.to_string(), Some("cache"), "invalid_value");
        let what = "field \"cache\"";
        match &self.facts {
            Some(f) => crate::cli::calibrate::resolve_cache(
                c,
                &f.dir,
                &crate::cli::calibrate::cache_dir(&None),
                v.steps,
                v.shift,
                what,
            )
            .map(|_| ())
            .map_err(bad),
            None => c.check(v.steps, what).map_err(bad),
        }
    }
}

/// The body as a JSON object of known fields.
fn body_object(body: &[u8]) -> Result<Map<String, Value>, BadRequest> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        BadRequest::new(
            format!("the body is not valid JSON: {e}"),
            None,
            "invalid_json",
        )
    })?;
    let Value::Object(obj) = v else {
        return Err(BadRequest::new(
            "the body must be a JSON object like {\"prompt\": \"...\"}",
            None,
            "invalid_json",
        ));
    };
    for k in obj.keys() {
        if !API_FIELDS.contains(&k.as_str()) {
            return Err(BadRequest::new(
                format!(
                    "unknown field \"{k}\"; the fields are: {}",
                    API_FIELDS.join(", ")
                ),
                Some(k),
                "unknown_parameter",
            ));
        }
    }
    Ok(obj)
}

/// The body's fields under the CLI's names, for its line reader (`size` split into width and
/// height; the prompts' lengths checked).
fn cli_line(obj: &Map<String, Value>) -> Result<Map<String, Value>, BadRequest> {
    let given = |k: &str| obj.get(k).filter(|v| !v.is_null());
    let mut line = Map::new();
    for (api, cli) in [
        ("prompt", "prompt"),
        ("negative_prompt", "negative_prompt"),
        ("num_frames", "frames"),
        ("fps", "fps"),
        ("num_inference_steps", "steps"),
        ("guidance_scale", "guidance"),
        ("shift", "shift"),
        ("seed", "seed"),
        ("cache", "cache"), // step caching (issue 27): cli::calibrate::cache_field
    ] {
        if let Some(v) = obj.get(api) {
            line.insert(cli.into(), v.clone());
        }
    }
    if let Some(s) = given("size") {
        let bad = || {
            BadRequest::new(
                format!("field \"size\" = {s}: expected \"WIDTHxHEIGHT\", e.g. \"768x432\""),
                Some("size"),
                "invalid_value",
            )
        };
        let (w, h) = s.as_str().and_then(|t| t.split_once('x')).ok_or_else(bad)?;
        let w: u64 = w.trim().parse().map_err(|_| bad())?;
        let h: u64 = h.trim().parse().map_err(|_| bad())?;
        line.insert("width".into(), w.into());
        line.insert("height".into(), h.into());
    }
    for k in ["prompt", "negative_prompt"] {
        if let Some(Value::String(t)) = obj.get(k) {
            text::check_length(k, t)
                .map_err(|e| BadRequest::new(e.to_string(), Some(k), "invalid_value"))?;
        }
    }
    Ok(line)
}

fn msg_error(e: Error, used_seconds: bool) -> BadRequest {
    let m = e.to_string();
    let param = api_param(&m, used_seconds);
    BadRequest {
        message: api_wording(&m, used_seconds),
        param: param.map(str::to_string),
        code: "invalid_value",
    }
}

/// Where a job is.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Queued,
    InProgress,
    Completed,
    Failed,
    Cancelled,
}

impl Status {
    pub fn finished(self) -> bool {
        matches!(self, Status::Completed | Status::Failed | Status::Cancelled)
    }
    pub fn name(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::InProgress => "in_progress",
            Status::Completed => "completed",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct JobError {
    pub code: String,
    pub message: String,
}

/// A job as kept on disk (`jobs/<id>.json`) and in memory.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Job {
    pub id: String,
    /// Submission order (for the queue and the newest-first list).
    pub seq: u64,
    pub created_at: u64,
    pub started_at: Option<u64>,
    pub completed_at: Option<u64>,
    pub status: Status,
    pub params: VideoParams,
    pub warnings: Vec<String>,
    pub error: Option<JobError>,
    /// How many times the job was started (a restart while running re-queues it once).
    pub attempts: u32,
    /// Timings of the finished run (encode, denoise, per step, decode, write).
    pub timings: Option<Value>,
    /// Live state, not saved.
    #[serde(skip)]
    pub live: Live,
}

/// What changes with every step (kept in memory only).
#[derive(Clone, Debug, Default)]
pub struct Live {
    pub progress: u32,
    pub step: usize,
    pub step_seconds_sum: f64,
    pub phase: &'static str,
    pub cancel_requested: bool,
}

impl Live {
    pub fn seconds_per_step(&self) -> Option<f64> {
        (self.step > 0).then(|| self.step_seconds_sum / self.step as f64)
    }
}

impl Job {
    /// The progress 0..=100 after `done` of `steps` steps: the steps span 1..=95 (encoding
    /// before them, decoding and writing after).
    pub fn step_progress(done: usize, steps: usize) -> u32 {
        (1 + (94 * done) / steps.max(1)) as u32
    }

    pub fn eta_seconds(&self) -> Option<f64> {
        let per = self.live.seconds_per_step()?;
        Some(per * self.params.steps.saturating_sub(self.live.step) as f64)
    }

    /// The API's video object.
    pub fn to_api(&self, model: &str, queue_position: Option<usize>) -> Value {
        let p = &self.params;
        let progress = match self.status {
            Status::Completed => 100,
            Status::Queued => 0,
            _ => self.live.progress,
        };
        json!({
            "id": self.id,
            "object": "video",
            "model": model,
            "status": self.status.name(),
            "progress": progress,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "completed_at": self.completed_at,
            "expires_at": null,
            "size": format!("{}x{}", p.width, p.height),
            "seconds": format!("{:.3}", p.seconds()),
            "error": self.error,
            "prompt": p.prompt,
            "negative_prompt": p.negative_prompt,
            "num_frames": p.frames,
            "num_frames_requested": p.frames_requested,
            "fps": p.fps,
            "num_inference_steps": p.steps,
            "guidance_scale": p.guidance,
            "shift": p.shift,
            "seed": p.seed,
            "cache": p.cache,
            "warnings": self.warnings,
            "queue_position": queue_position,
            "step": self.live.step,
            "seconds_per_step": self.live.seconds_per_step(),
            "eta_seconds": if self.status == Status::InProgress { self.eta_seconds() } else { None },
            "cancel_requested": self.live.cancel_requested,
            "timings": self.timings,
            "command": p.command_line(),
        })
    }
}

/// A new random job id: "video_" and 32 hex digits (128 bits from the OS's random source).
pub fn new_id() -> std::io::Result<String> {
    use std::io::Read;
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(format!(
        "video_{}",
        b.iter().map(|x| format!("{x:02x}")).collect::<String>()
    ))
}

/// Whether `id` has the shape of [`new_id`]'s ids (nothing else names a file).
pub fn valid_id(id: &str) -> bool {
    id.strip_prefix("video_").is_some_and(|h| {
        h.len() == 32
            && h.bytes()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::request::shell_quote;

    fn checker() -> Checker {
        Checker {
            layout: LatentLayout::CONTENTV,
            model_names: vec!["contentv-8b".into(), "contentv".into()],
            defaults: RequestFields::default(),
            max_frames: 1001,
            max_pixels: 4096 * 4096,
            facts: None,
            on_gpu: false,
            gpu_bytes: None,
        }
    }

    fn bad(body: &str) -> BadRequest {
        checker().check(body.as_bytes()).unwrap_err()
    }

    #[test]
    fn requests_map_to_the_cli_checks_and_name_the_field() {
        let (p, w) = checker()
            .check(br#"{"prompt":"a cat","size":"64x32","num_frames":10,"num_inference_steps":3,"guidance_scale":2.5,"seed":7,"model":"ContentV-8B"}"#)
            .unwrap();
        assert_eq!(
            (p.width, p.height, p.frames, p.steps, p.guidance, p.seed),
            (64, 32, 9, 3, 2.5, 7)
        );
        assert_eq!(w.len(), 1, "{w:?}"); // 10 rounded down to 9
        let (p, _) = checker()
            .check(br#"{"prompt":"a","seconds":"2","fps":8}"#)
            .unwrap();
        assert_eq!((p.frames_requested, p.frames), (17, 17));
        for (body, param) in [
            (r#"{"prompt":"a","num_frames":0}"#, "num_frames"),
            (r#"{"prompt":"a","size":"100x64"}"#, "size"),
            (r#"{"prompt":"a","size":"big"}"#, "size"),
            (
                r#"{"prompt":"a","num_inference_steps":"x"}"#,
                "num_inference_steps",
            ),
            (r#"{"prompt":"a","guidance_scale":-1}"#, "guidance_scale"),
            (r#"{"prompt":"a","shift":0}"#, "shift"),
            (r#"{"prompt":"a","fps":0}"#, "fps"),
            (r#"{"prompt":"a","seed":-1}"#, "seed"),
            (r#"{"prompt":"   "}"#, "prompt"),
            (r#"{"size":"64x64"}"#, "prompt"),
            (r#"{"prompt":3}"#, "prompt"),
            (r#"{"prompt":"a","negative_prompt":[1]}"#, "negative_prompt"),
            (r#"{"prompt":"a","seconds":"x"}"#, "seconds"),
            (r#"{"prompt":"a","seconds":1,"num_frames":5}"#, "seconds"),
            (r#"{"prompt":"a","model":"sora-2"}"#, "model"),
            (r#"{"prompt":"a","colour":1}"#, "colour"),
        ] {
            let e = bad(body);
            assert_eq!(e.param.as_deref(), Some(param), "{body}: {e:?}");
        }
        assert_eq!(bad("[1]").param, None);
        assert_eq!(bad("{").code, "invalid_json");
        // the CLI's own wording
        assert!(bad(r#"{"prompt":"a","size":"100x64"}"#)
            .message
            .contains("multiple of 16"));
    }

    #[test]
    fn ids_are_random_and_checked() {
        let a = new_id().unwrap();
        let b = new_id().unwrap();
        assert!(valid_id(&a) && valid_id(&b) && a != b);
        assert!(!valid_id("video_../../etc/passwd"));
        assert!(!valid_id(&a.to_uppercase()));
        assert!(!valid_id("video_"));
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
    }
}
