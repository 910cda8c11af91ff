//! `contentv info`: what is in a model folder, whether it has the tensors the engine needs, how
//! many parameters, how much memory per mode.
use std::collections::BTreeMap;
use std::path::Path;

use serde_json::json;

use super::args::InfoArgs;
use super::load::{component_problem, layout_hint, model_dir, Component, COMPONENTS};
use super::Ui;
use crate::error::{Error, Result};
use crate::io::safetensors::ShardedCheckpoint;
use crate::model::clip::ClipConfig;
use crate::model::inventory;
use crate::model::pipeline::LatentLayout;
use crate::model::scheduler::SchedulerConfig;
use crate::model::t5::T5Config;
use crate::model::text::{check_vocabularies as text_vocab_check, load_tokenizers, T5_TOKENS};
use crate::model::tokenizer::{ClipTokenizer, T5Tokenizer};

/// One tensor as the safetensors header describes it.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub dtype: String,
    pub shape: Vec<usize>,
    pub file: String,
}

impl TensorInfo {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

fn dtype_size(d: &str) -> usize {
    match d {
        "F64" | "I64" | "U64" => 8,
        "F32" | "I32" | "U32" => 4,
        "F16" | "BF16" | "I16" | "U16" => 2,
        _ => 1,
    }
}

/// All tensors of a component folder (single file or sharded with an index), through the
/// checkpoint layer (`io::safetensors::ShardedCheckpoint`, which validates every header).
pub fn read_component(dir: &Path) -> Result<BTreeMap<String, TensorInfo>> {
    let ck = ShardedCheckpoint::open_dir(dir).map_err(Error::from)?;
    let mut all = BTreeMap::new();
    for name in ck.names() {
        let (file, info) = ck.get(name).map_err(|e| Error::Weights(e.to_string()))?;
        let fname = file
            .path()
            .file_name()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_default();
        all.insert(
            name.to_string(),
            TensorInfo {
                dtype: info.dtype.to_string(),
                shape: info.shape.clone(),
                file: fname,
            },
        );
    }
    Ok(all)
}

/// An error's message without the "weights: " kind prefix (the report adds its own context).
fn bare(e: &Error) -> String {
    match e {
        Error::Weights(s) | Error::Input(s) | Error::Other(s) => s.clone(),
        other => other.to_string(),
    }
}

/// What the checks found in one component folder.
pub struct ComponentCheck {
    /// Everything wrong with it (empty: generate loads it).
    pub problems: Vec<String>,
    /// Its tensors (weight components whose checkpoint opened).
    pub tensors: Option<BTreeMap<String, TensorInfo>>,
    /// The scheduler's shift.
    pub shift: Option<f32>,
    /// Whether the component folder or a required file is absent or of the wrong type.
    pub missing: bool,
}

/// Checks `dir/c.folder` with the code `generate` loads it with: the same file checks
/// ([`component_problem`]), the loaders' config parsers (bounds included), the component's
/// tensor inventory ([`crate::model::inventory`]) against the checkpoint headers, the
/// tokenizers' own loaders, the scheduler config reader. What it does not read: tensor data
/// (a flipped byte inside a tensor's values is invisible here; `generate` may still run).
pub fn check_component(dir: &Path, c: &Component) -> ComponentCheck {
    let mut r = ComponentCheck {
        problems: Vec::new(),
        tensors: None,
        shift: None,
        missing: false,
    };
    if let Some(p) = component_problem(dir, c) {
        r.problems.push(p);
        r.missing = true;
        return r;
    }
    let cdir = dir.join(c.folder);
    let res: Result<()> = match c.folder {
        "tokenizer" | "tokenizer_2" => ClipTokenizer::from_dir(&cdir).map(|_| ()),
        "tokenizer_3" => T5Tokenizer::from_dir(&cdir, T5_TOKENS).map(|_| ()),
        "scheduler" => SchedulerConfig::from_model_dir(dir).map(|s| r.shift = Some(s.shift)),
        _ => read_component(&cdir).and_then(|t| {
            r.tensors = Some(t);
            let inv = inventory::for_component(c.folder, &cdir)?;
            let ck = ShardedCheckpoint::open_dir(&cdir).map_err(Error::from)?;
            r.problems.extend(
                inv.problems(&ck)
                    .into_iter()
                    .map(|p| format!("{}: {p}", c.folder)),
            );
            Ok(())
        }),
    };
    if let Err(e) = res {
        r.problems.push(bare(&e));
    }
    r
}

/// Every problem `generate` would meet loading the model in `dir` (in component order, then the
/// cross-component vocabulary check), found without loading any weights. `info` reports them;
/// `quantize` refuses to write anything when there is one.
pub fn check_model(dir: &Path) -> Vec<(&'static Component, ComponentCheck)> {
    COMPONENTS
        .iter()
        .map(|c| (c, check_component(dir, c)))
        .collect()
}

/// The checks across components `generate` makes: the latent layout from the VAE and
/// transformer configs (`LatentLayout::from_model_dir`), and the tokenizers' vocabularies
/// against the encoders' tables (as `TextEncoders::load`, when every text component is
/// otherwise fine).
pub fn check_cross(dir: &Path, checks: &[(&'static Component, ComponentCheck)]) -> Vec<String> {
    let mut out = Vec::new();
    if let Err(e) = LatentLayout::from_model_dir(dir) {
        out.push(bare(&e));
    }
    let text = [
        "tokenizer",
        "tokenizer_2",
        "tokenizer_3",
        "text_encoder",
        "text_encoder_2",
        "text_encoder_3",
    ];
    if checks
        .iter()
        .any(|(c, r)| text.contains(&c.folder) && !r.problems.is_empty())
    {
        return out;
    }
    let res = (|| -> Result<()> {
        let toks = load_tokenizers(dir)?;
        let l = ClipConfig::from_dir(&dir.join("text_encoder"))?;
        let g = ClipConfig::from_dir(&dir.join("text_encoder_2"))?;
        let t5 = T5Config::from_dir(&dir.join("text_encoder_3"))?;
        // The inventory holds the T5 embedding to [vocab_size, d_model].
        text_vocab_check(dir, (&toks.0, &toks.1, &toks.2), l.vocab, g.vocab, t5.vocab)
    })();
    out.extend(res.err().map(|e| bare(&e)));
    out
}

/// All problems of the model in `dir`, as [`check_model`] and [`check_cross`] find them.
pub fn model_problems(dir: &Path) -> Vec<String> {
    let checks = check_model(dir);
    let mut p: Vec<String> = checks
        .iter()
        .flat_map(|(_, r)| r.problems.iter().cloned())
        .collect();
    p.extend(check_cross(dir, &checks));
    p
}

fn gib(b: f64) -> String {
    if b >= (1u64 << 30) as f64 {
        format!("{:.2} GiB", b / (1u64 << 30) as f64)
    } else {
        format!("{:.1} MiB", b / (1u64 << 20) as f64)
    }
}

fn human_count(n: usize) -> String {
    if n >= 1_000_000_000 {
        format!("{:.2} B", n as f64 / 1e9)
    } else if n >= 1_000_000 {
        format!("{:.2} M", n as f64 / 1e6)
    } else if n >= 1000 {
        format!("{:.1} k", n as f64 / 1e3)
    } else {
        n.to_string()
    }
}

/// `contentv info`: checks the folder is a checkpoint, reports each component and the
/// cross-component checks, then the weight memory of each mode; an error lists every problem.
pub fn run(a: &InfoArgs, ui: &Ui) -> Result<()> {
    let dir = model_dir(&a.model, ui);
    check_model_folder(&dir)?;
    let mut r = Report {
        lines: vec![format!("model folder: {}", dir.display())],
        ..Report::default()
    };
    let checks = check_model(&dir);
    for (c, check) in &checks {
        r.component(c, check, a.tensors);
    }
    for p in check_cross(&dir, &checks) {
        r.lines.push(format!("  PROBLEM: {p}"));
        r.problems.push(p);
    }
    let (total, modes) = r.weight_memory();
    let Report {
        mut lines,
        problems,
        comps,
        ..
    } = r;
    if problems.is_empty() {
        lines.push("status: ok".into());
    } else {
        lines.push(format!("status: {} problem(s)", problems.len()));
    }
    if a.json {
        let j = json!({"model": crate::io::fsutil::lossy(&dir), "ok": problems.is_empty(), "components": comps, "params_total": total, "weight_bytes": modes, "problems": problems});
        println!("{}", serde_json::to_string_pretty(&j).unwrap());
    } else {
        println!("{}", lines.join("\n"));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Error::Weights(format!(
            "the model folder {} has {} problem(s): {}",
            dir.display(),
            problems.len(),
            problems.join("; ")
        )))
    }
}

/// `dir` exists, is a folder, and holds at least one component of a ContentV checkpoint.
fn check_model_folder(dir: &Path) -> Result<()> {
    super::load::check_model_exists(dir)?;
    if !dir.is_dir() {
        return Err(Error::Input(format!(
            "the model path {} is not a folder: give the checkpoint's folder (the one with transformer/, vae/, ...)",
            dir.display()
        )));
    }
    if let Some(h) = layout_hint(dir) {
        return Err(Error::Input(format!(
            "the model folder {} has none of the components of a ContentV checkpoint (transformer/, vae/, text_encoder/, ...): {h}",
            dir.display()
        )));
    }
    Ok(())
}

/// What `info` prints (`lines`) and reports as JSON (`comps`), gathered component by component.
#[derive(Default)]
struct Report {
    lines: Vec<String>,
    problems: Vec<String>,
    comps: serde_json::Map<String, serde_json::Value>,
    /// Parameters per weight component.
    params: BTreeMap<&'static str, usize>,
    /// Parameters of the largest transformer block (modulation linears excluded) and of all blocks.
    max_block: usize,
    block_total: usize,
}

impl Report {
    /// One component: a line (and its problems), its JSON entry, its parameters.
    fn component(&mut self, c: &'static Component, r: &ComponentCheck, list_tensors: bool) {
        let cprob = &r.problems;
        self.problems.extend(cprob.iter().cloned());
        let Some(tensors) = &r.tensors else {
            self.component_without_tensors(c, r);
            return;
        };
        let n: usize = tensors.values().map(|t| t.numel()).sum();
        if c.folder == "transformer" {
            (self.max_block, self.block_total) = block_sizes(tensors);
        }
        let bytes: usize = tensors
            .values()
            .map(|t| t.numel() * dtype_size(&t.dtype))
            .sum();
        let mut dtypes: BTreeMap<String, usize> = BTreeMap::new();
        for t in tensors.values() {
            *dtypes.entry(t.dtype.clone()).or_default() += t.numel();
        }
        self.params.insert(c.folder, n);
        self.lines.push(format!(
            "  {:<15} {} params, {} tensors, {} on disk ({}), {}",
            c.folder,
            human_count(n),
            tensors.len(),
            gib(bytes as f64),
            dtypes.keys().cloned().collect::<Vec<_>>().join("+"),
            if cprob.is_empty() {
                "keys and shapes ok".to_string()
            } else {
                format!("{} PROBLEM(S)", cprob.len())
            }
        ));
        for p in cprob.iter().take(5) {
            self.lines.push(format!("      {p}"));
        }
        if cprob.len() > 5 {
            self.lines
                .push(format!("      ... and {} more", cprob.len() - 5));
        }
        let mut cj = json!({"ok": cprob.is_empty(), "params": n, "tensors": tensors.len(), "bytes_on_disk": bytes, "dtypes": dtypes, "problems": cprob});
        if list_tensors {
            self.lines.extend(
                tensors
                    .iter()
                    .map(|(k, t)| format!("      {k} {} {:?}", t.dtype, t.shape)),
            );
            cj["tensor_list"] = tensors
                .iter()
                .map(|(k, t)| json!({"name": k, "dtype": t.dtype, "shape": t.shape}))
                .collect();
        }
        self.comps.insert(c.folder.into(), cj);
    }

    /// A component without tensors: a configuration-only one that is fine (the scheduler), or
    /// one that is missing or has a problem.
    fn component_without_tensors(&mut self, c: &'static Component, r: &ComponentCheck) {
        let (word, j) = match (r.problems.first(), r.missing) {
            (None, _) => {
                let what = match r.shift {
                    Some(s) => format!("FlowMatchEulerDiscrete, shift {s}"),
                    None => c.what.to_string(),
                };
                self.lines.push(format!("  {:<15} ok ({what})", c.folder));
                let mut j = json!({"ok": true});
                if let Some(s) = r.shift {
                    j["shift"] = json!(s);
                }
                self.comps.insert(c.folder.into(), j);
                return;
            }
            (Some(p), true) if p.contains(" is missing") => ("MISSING", p),
            (Some(p), _) => ("PROBLEM", p),
        };
        self.lines.push(format!("  {:<15} {word}: {j}", c.folder));
        self.comps.insert(
            c.folder.into(),
            json!({"ok": false, "problem": j, "problems": r.problems}),
        );
    }

    /// The weights' GPU memory in each memory mode (lines, and the JSON `weight_bytes`), from
    /// the parameter counts; returns the total parameter count and that JSON.
    fn weight_memory(&mut self) -> (usize, serde_json::Value) {
        let (max_block, block_total) = (self.max_block, self.block_total);
        let lines = &mut self.lines;
        // Bytes per parameter: bf16 2, INT8 1 (transformer and T5 under --quantize int8), VAE 4 (f32).
        let total: usize = self.params.values().sum();
        let p = |k: &str| *self.params.get(k).unwrap_or(&0) as f64;
        let text = p("text_encoder") + p("text_encoder_2") + p("text_encoder_3");
        let bf16_all = 2.0 * (p("transformer") + text) + 4.0 * p("vae");
        let int8_all = p("transformer")
            + p("text_encoder_3")
            + 2.0 * (p("text_encoder") + p("text_encoder_2"))
            + 4.0 * p("vae");
        let largest = [
            2.0 * p("transformer"),
            2.0 * p("text_encoder_3"),
            2.0 * p("text_encoder_2"),
            2.0 * p("text_encoder"),
            4.0 * p("vae"),
        ]
        .into_iter()
        .fold(0.0, f64::max);
        let modes = json!({
            "none_bf16": bf16_all, "none_int8": int8_all,
            "model_offload_bf16": largest, "model_offload_int8": p("transformer").max(4.0 * p("vae")),
            "sequential_bf16": (2.0 * (p("transformer") - block_total as f64 + 2.0 * max_block as f64)).max(4.0 * p("vae")),
        });
        lines.push(format!("parameters: {} in total", human_count(total)));
        lines.push("GPU memory for the weights (activations come on top):".into());
        lines.push(format!(
            "  --offload none (all resident), bf16 (VAE f32): {}",
            gib(bf16_all)
        ));
        lines.push(format!(
            "  --offload none, --quantize int8 (transformer + T5 int8): {}",
            gib(int8_all)
        ));
        lines.push(format!(
            "  --offload model (largest single model resident), bf16: {}",
            gib(largest)
        ));
        lines.push(format!(
            "  --offload model, --quantize int8: {}",
            gib(p("transformer").max(4.0 * p("vae")))
        ));
        let nonblock = p("transformer") - block_total as f64;
        let seq_bf16 = 2.0 * (nonblock + 2.0 * max_block as f64);
        let seq_int8 = 2.0 * nonblock + 2.0 * max_block as f64;
        lines.push(format!(
            "  --offload sequential (2 transformer layers in flight), bf16: {}",
            gib(seq_bf16.max(4.0 * p("vae")))
        ));
        lines.push(format!(
            "  --offload sequential, --quantize int8: {}",
            gib(seq_int8.max(4.0 * p("vae")))
        ));
        (total, modes)
    }
}

/// Parameters of the largest transformer block, the streamed unit (modulation linears excluded:
/// computed once per run), and of all blocks together.
fn block_sizes(tensors: &BTreeMap<String, TensorInfo>) -> (usize, usize) {
    let mut per: BTreeMap<usize, usize> = BTreeMap::new();
    for (k, t) in tensors {
        if let Some(rest) = k.strip_prefix("transformer_blocks.") {
            let i: usize = rest
                .split('.')
                .next()
                .and_then(|x| x.parse().ok())
                .unwrap_or(0);
            if !k.contains(".norm1.linear.") && !k.contains(".norm1_context.linear.") {
                *per.entry(i).or_default() += t.numel();
            }
        }
    }
    let max_block = per.values().copied().max().unwrap_or(0);
    let block_total = tensors
        .iter()
        .filter(|(k, _)| k.starts_with("transformer_blocks."))
        .map(|(_, t)| t.numel())
        .sum();
    (max_block, block_total)
}
