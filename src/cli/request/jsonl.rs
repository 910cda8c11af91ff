//! The strict reader of one JSONL line of `generate --prompts` (and of the server's bodies,
//! after their API names are mapped): known names only, each value checked where it is read,
//! every error naming the field and what was expected.
use std::path::PathBuf;

use super::RequestFields;
use super::{MAX_FRAMES, MAX_GUIDANCE, MAX_SHIFT, MAX_SIZE, MAX_STEPS, MIN_SHIFT};
use crate::error::{Error, Result};
use crate::io::video;

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
}
