//! One generation request: flags and JSONL fields merged, defaults applied, everything checked.
use std::path::{Path, PathBuf};

use super::args::*;
use crate::error::{Error, Result};
use crate::io::fsutil;
use crate::io::video::{self, VideoOptions};
use crate::model::pipeline::{GenerateParams, LatentLayout, VideoGeometry};

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

/// The fields a JSONL line may set.
pub const LINE_FIELDS: [&str; 15] = [
    "prompt",
    "negative_prompt",
    "frames",
    "fps",
    "width",
    "height",
    "steps",
    "guidance",
    "shift",
    "seed",
    "output",
    "crf",
    "init_noise",
    "save_latents",
    "cache",
];

/// Options that apply to the whole run: rejected in a line with a message saying so.
const WHOLE_RUN_FIELDS: [&str; 11] = [
    "model",
    "device",
    "offload",
    "quantize",
    "vae_tiling",
    "vram_budget",
    "prompts",
    "shard",
    "output_dir",
    "json",
    "force",
];

/// Bounds of the per-video values, shared by the JSONL reader and [`resolve`].
pub const MAX_FRAMES: usize = 1001;
pub const MAX_SIZE: usize = 4096;
pub const MAX_STEPS: usize = 1000;
pub const MAX_GUIDANCE: f32 = 100.0;
pub const MIN_SHIFT: f32 = 0.001;
pub const MAX_SHIFT: f32 = 1000.0;

/// The keys of a JSON object in the order written, duplicates kept (a derived struct stops at
/// the first duplicate with serde's own wording; this pass gives the messages of
/// [`RequestFields::from_json_line`] for names: unknown, whole-run, duplicate).
struct KeyList(Vec<String>);

impl<'de> serde::Deserialize<'de> for KeyList {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        fn not_object<E: serde::de::Error>(kind: &str) -> E {
            E::custom(format!(
                "the line is {kind}, but each line must be a JSON object like {{\"prompt\": \"...\"}}"
            ))
        }
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = KeyList;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> std::result::Result<KeyList, A::Error> {
                let mut keys = Vec::new();
                while let Some(k) = m.next_key::<String>()? {
                    m.next_value::<serde::de::IgnoredAny>()?;
                    keys.push(k);
                }
                Ok(KeyList(keys))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                _: A,
            ) -> std::result::Result<KeyList, A::Error> {
                Err(not_object("a JSON array"))
            }
            fn visit_str<E: serde::de::Error>(self, _: &str) -> std::result::Result<KeyList, E> {
                Err(not_object("a string"))
            }
            fn visit_bool<E: serde::de::Error>(self, _: bool) -> std::result::Result<KeyList, E> {
                Err(not_object("true/false"))
            }
            fn visit_i64<E: serde::de::Error>(self, _: i64) -> std::result::Result<KeyList, E> {
                Err(not_object("a number"))
            }
            fn visit_u64<E: serde::de::Error>(self, _: u64) -> std::result::Result<KeyList, E> {
                Err(not_object("a number"))
            }
            fn visit_f64<E: serde::de::Error>(self, _: f64) -> std::result::Result<KeyList, E> {
                Err(not_object("a number"))
            }
            fn visit_unit<E: serde::de::Error>(self) -> std::result::Result<KeyList, E> {
                Err(not_object("null"))
            }
        }
        d.deserialize_any(V)
    }
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "true/false",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "a JSON array",
        serde_json::Value::Object(_) => "a JSON object",
    }
}

/// Shortens a JSON value for a message.
fn show(v: &serde_json::Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 60 {
        format!("{}...", s.chars().take(57).collect::<String>())
    } else {
        s
    }
}

/// What a value that is not of the expected type is, for a message.
fn got(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(_) => {
            format!("the string {} (write the number without quotes)", show(v))
        }
        serde_json::Value::Number(_) => show(v),
        other => format!("{} ({})", json_kind(other), show(other)),
    }
}

/// The checks of one JSONL field: each turns the JSON value written (null is "not given") into
/// the field's type, and its messages name the field and what was expected.
mod field {
    use super::{got, json_kind, show};
    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer};
    use serde_json::Value;
    use std::path::PathBuf;

    fn value<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
        Ok(Option::<Value>::deserialize(d)?.filter(|v| !v.is_null()))
    }

    pub fn text<'de, D: Deserializer<'de>>(d: D, k: &str) -> Result<Option<String>, D::Error> {
        match value(d)? {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(D::Error::custom(format!(
                "field \"{k}\": expected a string, got {} ({})",
                json_kind(&v),
                show(&v)
            ))),
        }
    }

    pub fn path<'de, D: Deserializer<'de>>(d: D, k: &str) -> Result<Option<PathBuf>, D::Error> {
        match text(d, k)? {
            None => Ok(None),
            Some(s) if s.trim().is_empty() => Err(D::Error::custom(format!(
                "field \"{k}\" is an empty string; give a file name or leave the field out"
            ))),
            Some(s) => Ok(Some(PathBuf::from(s))),
        }
    }

    /// A whole number in `min..=max` (an integral float such as 9.0 is accepted; "9" is not).
    pub fn whole<'de, D: Deserializer<'de>>(
        d: D,
        k: &str,
        min: u64,
        max: u64,
    ) -> Result<Option<u64>, D::Error> {
        let Some(v) = value(d)? else { return Ok(None) };
        let expected = format!("a whole number {min}..={max}");
        let range = |n: &serde_json::Number, small: bool| {
            D::Error::custom(format!(
                "field \"{k}\" = {n} is too {}: expected {expected}",
                if small { "small" } else { "large" }
            ))
        };
        if let Value::Number(n) = &v {
            let u = match (n.as_u64(), n.as_i64(), n.as_f64()) {
                (Some(u), _, _) => Some(u),
                (None, Some(_), _) => return Err(range(n, true)),
                (None, None, Some(f)) if f.fract() == 0.0 => {
                    if f < 0.0 {
                        return Err(range(n, true));
                    }
                    if f >= u64::MAX as f64 {
                        return Err(range(n, false));
                    }
                    Some(f as u64)
                }
                _ => None,
            };
            if let Some(u) = u {
                return if u < min {
                    Err(range(n, true))
                } else if u > max {
                    Err(range(n, false))
                } else {
                    Ok(Some(u))
                };
            }
        }
        Err(D::Error::custom(format!(
            "field \"{k}\": expected {expected}, got {}",
            got(&v)
        )))
    }

    /// A finite number in `min..=max`.
    pub fn number<'de, D: Deserializer<'de>>(
        d: D,
        k: &str,
        min: f32,
        max: f32,
    ) -> Result<Option<f32>, D::Error> {
        let Some(v) = value(d)? else { return Ok(None) };
        let expected = format!("a number from {min} to {max}");
        match v.as_f64() {
            Some(f) if (min as f64..=max as f64).contains(&f) => Ok(Some(f as f32)),
            Some(_) => Err(D::Error::custom(format!(
                "field \"{k}\" = {} is out of range: expected {expected}",
                show(&v)
            ))),
            None => Err(D::Error::custom(format!(
                "field \"{k}\": expected {expected}, got {}",
                got(&v)
            ))),
        }
    }
}

/// Field checkers named for `#[serde(deserialize_with)]`, one per field.
macro_rules! checkers {
    ($($name:ident: $t:ty = $f:ident($($arg:expr),*);)*) => {
        mod check {
            use super::*;
            $(pub fn $name<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Option<$t>, D::Error> {
                Ok(field::$f(d, stringify!($name) $(, $arg)*)?.map(|v| v as $t))
            })*
        }
    };
}

checkers! {
    prompt: String = text();
    negative_prompt: String = text();
    frames: usize = whole(1, MAX_FRAMES as u64);
    fps: u32 = whole(1, video::MAX_FPS as u64);
    width: usize = whole(1, MAX_SIZE as u64);
    height: usize = whole(1, MAX_SIZE as u64);
    steps: usize = whole(1, MAX_STEPS as u64);
    guidance: f32 = number(0.0, MAX_GUIDANCE);
    shift: f32 = number(MIN_SHIFT, MAX_SHIFT);
    seed: u64 = whole(0, u64::MAX);
    output: PathBuf = path();
    crf: u8 = whole(0, video::MAX_CRF as u64);
    init_noise: PathBuf = path();
    save_latents: PathBuf = path();
}

/// One JSONL line: the fields of [`LINE_FIELDS`], each also under its kebab-case name.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    #[serde(default, deserialize_with = "check::prompt")]
    prompt: Option<String>,
    #[serde(
        default,
        alias = "negative-prompt",
        deserialize_with = "check::negative_prompt"
    )]
    negative_prompt: Option<String>,
    #[serde(default, deserialize_with = "check::frames")]
    frames: Option<usize>,
    #[serde(default, deserialize_with = "check::fps")]
    fps: Option<u32>,
    #[serde(default, deserialize_with = "check::width")]
    width: Option<usize>,
    #[serde(default, deserialize_with = "check::height")]
    height: Option<usize>,
    #[serde(default, deserialize_with = "check::steps")]
    steps: Option<usize>,
    #[serde(default, deserialize_with = "check::guidance")]
    guidance: Option<f32>,
    #[serde(default, deserialize_with = "check::shift")]
    shift: Option<f32>,
    #[serde(default, deserialize_with = "check::seed")]
    seed: Option<u64>,
    #[serde(default, deserialize_with = "check::output")]
    output: Option<PathBuf>,
    #[serde(default, deserialize_with = "check::crf")]
    crf: Option<u8>,
    #[serde(default, alias = "init-noise", deserialize_with = "check::init_noise")]
    init_noise: Option<PathBuf>,
    #[serde(
        default,
        alias = "save-latents",
        deserialize_with = "check::save_latents"
    )]
    save_latents: Option<PathBuf>,
    #[serde(default, deserialize_with = "crate::cli::calibrate::cache_field")]
    cache: Option<crate::model::cache::CacheOptions>,
}

/// serde_json's message without the position it appends (" at line 1 column N": every JSONL
/// line is parsed alone, and the caller names the file's line).
fn json_message(e: &serde_json::Error) -> String {
    let s = e.to_string();
    let at = format!(" at line {} column {}", e.line(), e.column());
    s.strip_suffix(&at).map(str::to_string).unwrap_or(s)
}

/// Whether `a` and `b` differ by at most two single-character edits (typo suggestions).
fn similar(a: &str, b: &str) -> bool {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()] <= 2
}

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

    /// Parses one JSONL line: a JSON object whose keys are among [`LINE_FIELDS`] (or their
    /// kebab-case spellings); `null` counts as not given. Every error names the field.
    pub fn from_json_line(line: &str) -> Result<RequestFields> {
        // The names first (whole-run options, typos, duplicates), in the order written: the
        // derived reader below would only say "unknown field" or "duplicate field".
        let keys = serde_json::from_str::<KeyList>(line).map_err(|e| {
            Error::Input(if e.is_data() {
                json_message(&e)
            } else {
                format!("not valid JSON: {e}")
            })
        })?;
        let mut seen: Vec<String> = Vec::new();
        for key in &keys.0 {
            let k = key.replace('-', "_");
            if WHOLE_RUN_FIELDS.contains(&k.as_str()) {
                return Err(Error::Input(format!(
                    "field \"{k}\" applies to the whole run (the model is loaded once); pass --{} on the command line",
                    k.replace('_', "-")
                )));
            }
            if !LINE_FIELDS.contains(&k.as_str()) {
                let hint = LINE_FIELDS
                    .iter()
                    .find(|f| similar(f, &k))
                    .map(|f| format!(" (did you mean \"{f}\"?)"))
                    .unwrap_or_default();
                return Err(Error::Input(format!(
                    "unknown field \"{key}\"{hint}; the fields are: {}",
                    LINE_FIELDS.join(", ")
                )));
            }
            // kebab and snake spellings of one field count as the same key
            if seen.contains(&k) {
                return Err(Error::Input(format!(
                    "field \"{k}\" is given more than once; keep one"
                )));
            }
            seen.push(k);
        }
        let l: Line = serde_json::from_str(line).map_err(|e| Error::Input(json_message(&e)))?;
        Ok(RequestFields {
            prompt: l.prompt,
            negative_prompt: l.negative_prompt,
            frames: l.frames,
            fps: l.fps,
            width: l.width,
            height: l.height,
            steps: l.steps,
            guidance: l.guidance,
            shift: l.shift,
            seed: l.seed,
            output: l.output,
            crf: l.crf,
            init_noise: l.init_noise,
            save_latents: l.save_latents,
            cache: l.cache,
        })
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

/// `s` in single quotes for a POSIX shell.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// A seed from the clock and the process id (0 ..= 2^31-1, like the reference app's range).
pub fn random_seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut z = (t as u64) ^ ((std::process::id() as u64) << 32) ^ (&t as *const _ as u64);
    z = crate::model::pipeline::splitmix64(z, 0);
    z & 0x7FFF_FFFF
}

pub fn unix_time() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Output extensions FFmpeg builds accept.
const VIDEO_EXTS: [&str; 3] = ["mp4", "mov", "mkv"];

/// Merges defaults, checks every value. `default_output` names the output when none is given
/// (it receives the seed).
/// Defaults of the built-in tiny model (see [`RequestFields::apply_tiny_defaults`]).
pub const TINY_FRAMES: usize = 17;
pub const TINY_WIDTH: usize = 256;
pub const TINY_HEIGHT: usize = 144;
pub const TINY_STEPS: usize = 8;

/// Merges and checks one request; sizes are checked against the model's `layout`
/// ([`LatentLayout::from_model_dir`]).
pub fn resolve(
    f: RequestFields,
    layout: LatentLayout,
    default_output: &dyn Fn(u64) -> PathBuf,
) -> Result<Request> {
    let mut warnings = Vec::new();
    let prompt = f.prompt.ok_or_else(|| {
        Error::Input("no prompt: pass --prompt \"...\" (or a \"prompt\" field)".into())
    })?;
    if prompt.chars().all(|c| c.is_whitespace() || c.is_control()) {
        return Err(Error::Input(
            "the prompt is empty (it has no visible characters): describe the video, e.g. --prompt \"a cat surfing a wave\"".into(),
        ));
    }
    let negative_prompt = f
        .negative_prompt
        .unwrap_or_else(|| DEFAULT_NEGATIVE_PROMPT.to_string());

    let frames_requested = f.frames.unwrap_or(DEFAULT_FRAMES);
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
    let width = f.width.unwrap_or(DEFAULT_WIDTH);
    let height = f.height.unwrap_or(DEFAULT_HEIGHT);
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
    let steps = f.steps.unwrap_or(DEFAULT_STEPS);
    if steps == 0 || steps > MAX_STEPS {
        return Err(Error::Input(format!(
            "steps must be between 1 and {MAX_STEPS}, got {steps}"
        )));
    }
    let guidance = f.guidance.unwrap_or(DEFAULT_GUIDANCE);
    if !guidance.is_finite() || !(0.0..=MAX_GUIDANCE).contains(&guidance) {
        return Err(Error::Input(format!(
            "guidance must be between 0 and {MAX_GUIDANCE}, got {guidance:?}"
        )));
    }
    if let Some(s) = f.shift {
        // Below about 1e-7 the f32 schedule divides by zero; nothing useful lies below 0.001.
        if !s.is_finite() || !(MIN_SHIFT..=MAX_SHIFT).contains(&s) {
            return Err(Error::Input(format!(
                "shift must be a number from {MIN_SHIFT} to {MAX_SHIFT}, got {s:?}"
            )));
        }
    }
    let fps = f.fps.unwrap_or(DEFAULT_FPS);
    let crf = f.crf.unwrap_or(DEFAULT_CRF);
    video::check_options(&VideoOptions { fps, crf })?;
    let (seed, seed_was_random) = match f.seed {
        Some(s) => (s, false),
        None => (random_seed(), true),
    };
    let output = f.output.unwrap_or_else(|| default_output(seed));
    check_output_path(&output)?;
    if let Some(p) = &f.init_noise {
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
    if f.init_noise.is_some() && !seed_was_random {
        warnings.push(format!(
            "--seed {seed} has no effect with --init-noise: the starting noise comes from the file"
        ));
    }
    if let Some(p) = &f.save_latents {
        if p.is_dir() || p.file_name().is_none() {
            return Err(Error::Input(format!(
                "--save-latents {} is a folder; give a file name (e.g. {})",
                p.display(),
                p.join("latents.safetensors").display()
            )));
        }
        if fsutil::same_path(p, &video::artifact_path(&output)) {
            return Err(Error::Input(format!(
                "--save-latents {} is the output video itself; give the latents their own name (e.g. {})",
                p.display(),
                output.with_extension("latents.safetensors").display()
            )));
        }
        if let Some(n) = &f.init_noise {
            if fsutil::same_path(p, n) {
                return Err(Error::Input(format!(
                    "--save-latents {} is the --init-noise file; saving would overwrite that input",
                    p.display()
                )));
            }
        }
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

/// Parses `--shard I/N`.
pub fn parse_shard(s: &str) -> Result<(usize, usize)> {
    let bad = || {
        Error::Input(format!(
            "--shard must look like I/N with 0 <= I < N, counting from 0 (the 4 shards of a 4-way split are 0/4, 1/4, 2/4, 3/4), got {s:?}"
        ))
    };
    let (i, n) = s.split_once('/').ok_or_else(bad)?;
    let i: usize = i.trim().parse().map_err(|_| bad())?;
    let n: usize = n.trim().parse().map_err(|_| bad())?;
    if n == 0 || i >= n {
        return Err(bad());
    }
    Ok((i, n))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(_: u64) -> PathBuf {
        PathBuf::from("/tmp/x.mp4")
    }

    #[test]
    fn merge_and_validate() {
        let d = RequestFields {
            prompt: Some("a".into()),
            steps: Some(3),
            ..Default::default()
        };
        let l = RequestFields::from_json_line(
            r#"{"prompt": "b", "frames": 10, "negative-prompt": "n"}"#,
        )
        .unwrap()
        .or(&d);
        let r = resolve(l, LatentLayout::CONTENTV, &out).unwrap();
        assert_eq!(
            (
                r.video.prompt.as_str(),
                r.video.frames,
                r.video.steps,
                r.video.negative_prompt.as_str()
            ),
            ("b", 9, 3, "n")
        );
        assert_eq!(r.warnings.len(), 1);
        assert!(
            RequestFields::from_json_line(r#"{"prompt": "b", "model": "x"}"#)
                .unwrap_err()
                .to_string()
                .contains("--model")
        );
        assert!(RequestFields::from_json_line(r#"{"promt": "b"}"#)
            .unwrap_err()
            .to_string()
            .contains("promt"));
        assert!(RequestFields::from_json_line(r#"[1]"#).is_err());
        assert!(RequestFields::from_json_line(r#"{"prompt": 3}"#).is_err());
        // Range errors come from the line reader (with the field's bounds) or, for what
        // depends on the model (multiples of 16), from `resolve`.
        let bad = |j: &str| {
            RequestFields::from_json_line(j)
                .and_then(|f| resolve(f, LatentLayout::CONTENTV, &out))
                .unwrap_err()
                .to_string()
        };
        assert!(bad(r#"{"prompt":"a","frames":0}"#).contains("frames"));
        assert!(bad(r#"{"prompt":"a","width":100}"#).contains("multiple of 16"));
        assert!(bad(r#"{"prompt":"a","steps":0}"#).contains("steps"));
        assert!(bad(r#"{"prompt":"a","guidance":-1}"#).contains("guidance"));
        assert!(bad(r#"{"frames":5}"#).contains("prompt"));
        assert_eq!(parse_shard("1/4").unwrap(), (1, 4));
        assert!(
            parse_shard("4/4").is_err() && parse_shard("x").is_err() && parse_shard("0/0").is_err()
        );
    }

    fn line_err(j: &str) -> String {
        RequestFields::from_json_line(j).unwrap_err().to_string()
    }

    #[test]
    fn line_errors_name_the_field_and_what_was_expected() {
        // unknown field, with and without a suggestion; kebab spelling of a typo
        let e = line_err(r#"{"prompt": "a", "stpes": 3}"#);
        assert!(
            e.contains("unknown field \"stpes\" (did you mean \"steps\"?)"),
            "{e}"
        );
        assert!(e.contains("the fields are: prompt, negative_prompt"), "{e}");
        let e = line_err(r#"{"prompt": "a", "colour": 3}"#);
        assert!(
            e.contains("unknown field \"colour\"; the fields are"),
            "{e}"
        );
        let e = line_err(r#"{"prompt": "a", "init-nosie": "x"}"#);
        assert!(e.contains("did you mean \"init_noise\""), "{e}");
        // whole-run option
        let e = line_err(r#"{"prompt": "a", "vram-budget": 3}"#);
        assert!(e.contains("--vram-budget on the command line"), "{e}");
        // wrong types, naming the field, the expected range and what was given
        let e = line_err(r#"{"prompt": "a", "steps": "abc"}"#);
        assert_eq!(
            e,
            "field \"steps\": expected a whole number 1..=1000, got the string \"abc\" (write the number without quotes)"
        );
        let e = line_err(r#"{"prompt": "a", "frames": 2.5}"#);
        assert!(
            e.contains("field \"frames\": expected a whole number 1..=1001, got 2.5"),
            "{e}"
        );
        let e = line_err(r#"{"prompt": "a", "seed": [1]}"#);
        assert!(
            e.contains("field \"seed\": expected a whole number")
                && e.contains("a JSON array ([1])"),
            "{e}"
        );
        let e = line_err(r#"{"prompt": 3}"#);
        assert!(
            e.contains("field \"prompt\": expected a string, got a number (3)"),
            "{e}"
        );
        let e = line_err(r#"{"prompt": "a", "guidance": true}"#);
        assert!(
            e.contains("field \"guidance\": expected a number from 0 to 100, got true/false"),
            "{e}"
        );
        let e = line_err(r#"{"prompt": "a", "output": "  "}"#);
        assert!(e.contains("field \"output\" is an empty string"), "{e}");
        // out of range, with the real bounds
        let e = line_err(r#"{"prompt": "a", "steps": 1001}"#);
        assert!(
            e.contains("field \"steps\" = 1001 is too large: expected a whole number 1..=1000"),
            "{e}"
        );
        let e = line_err(r#"{"prompt": "a", "steps": 0}"#);
        assert!(e.contains("field \"steps\" = 0 is too small"), "{e}");
        let e = line_err(r#"{"prompt": "a", "fps": -3}"#);
        assert!(
            e.contains("field \"fps\" = -3 is too small: expected a whole number 1..=240"),
            "{e}"
        );
        let e = line_err(r#"{"prompt": "a", "crf": 52}"#);
        assert!(
            e.contains("field \"crf\" = 52 is too large: expected a whole number 0..=51"),
            "{e}"
        );
        let e = line_err(r#"{"prompt": "a", "width": 8192}"#);
        assert!(
            e.contains("field \"width\" = 8192 is too large: expected a whole number 1..=4096"),
            "{e}"
        );
        let e = line_err(r#"{"prompt": "a", "shift": 0}"#);
        assert!(
            e.contains("field \"shift\" = 0 is out of range: expected a number from 0.001 to 1000"),
            "{e}"
        );
        let e = line_err(r#"{"prompt": "a", "seed": 99999999999999999999999}"#);
        assert!(
            e.contains("field \"seed\"") && e.contains("too large"),
            "{e}"
        );
        // duplicates, also across spellings
        let e = line_err(r#"{"prompt": "a", "prompt": "b"}"#);
        assert_eq!(e, "field \"prompt\" is given more than once; keep one");
        let e = line_err(r#"{"prompt": "a", "save_latents": "x", "save-latents": "y"}"#);
        assert!(
            e.contains("\"save_latents\" is given more than once"),
            "{e}"
        );
        // not an object, not JSON
        for (j, kind) in [
            ("[1]", "a JSON array"),
            ("\"a\"", "a string"),
            ("3", "a number"),
            ("null", "null"),
        ] {
            let e = line_err(j);
            assert!(
                e.starts_with(&format!(
                    "the line is {kind}, but each line must be a JSON object"
                )),
                "{j}: {e}"
            );
        }
        let e = line_err(r#"{"prompt": "a" "seed": 3}"#);
        assert!(e.starts_with("not valid JSON: expected `,` or `}`"), "{e}");
        // no position suffix of the one-line parse
        assert!(!line_err(r#"{"prompt": "a", "steps": 0}"#).contains("column"));
        // good values: null is "not given", integral floats and kebab names are accepted
        let f = RequestFields::from_json_line(
            r#"{"prompt": "a", "steps": 4.0, "negative-prompt": null, "seed": 18446744073709551615, "guidance": 0, "init-noise": "n.safetensors"}"#,
        )
        .unwrap();
        assert_eq!(
            (f.steps, f.negative_prompt, f.seed, f.guidance),
            (Some(4), None, Some(u64::MAX), Some(0.0))
        );
        assert_eq!(f.init_noise, Some(PathBuf::from("n.safetensors")));
    }
}
