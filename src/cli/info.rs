//! `contentv info`: what is in a model folder, whether it has the tensors the engine needs, how
//! many parameters, how much memory per mode.
use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{json, Value};

use super::args::InfoArgs;
use super::load::{component_problem, layout_hint, model_dir, COMPONENTS};
use super::Ui;
use crate::error::{Error, Result};
use crate::io::safetensors::ShardedCheckpoint;
use crate::model::scheduler::SchedulerConfig;

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

fn read_config(dir: &Path) -> Result<Value> {
    let p = dir.join("config.json");
    let t =
        std::fs::read_to_string(&p).map_err(|e| Error::Weights(format!("{}: {e}", p.display())))?;
    serde_json::from_str(&t)
        .map_err(|e| Error::Weights(format!("{}: not valid JSON: {e}", p.display())))
}

fn cu(cfg: &Value, k: &str, default: usize) -> usize {
    cfg.get(k)
        .and_then(|v| v.as_u64())
        .map(|v| v as usize)
        .unwrap_or(default)
}

/// Most layers a config may declare: the list of expected tensor names grows with it, so an
/// absurd count (a corrupt or hostile config.json) is a problem, not an allocation.
const MAX_LAYERS: usize = 4096;

/// A layer count from the config, or 0 with a problem when it is beyond [`MAX_LAYERS`].
fn layers(cfg: &Value, k: &str, default: usize, folder: &str, problems: &mut Vec<String>) -> usize {
    let n = cu(cfg, k, default);
    if n > MAX_LAYERS {
        problems.push(format!(
            "{folder}: config.json says {k} {n}, which no checkpoint of this model has (at most {MAX_LAYERS}); the file is corrupt or belongs to another model"
        ));
        return 0;
    }
    n
}

/// Keys the engine needs in a component, with shapes from its config (None = any shape);
/// config values that cannot be right go to `problems`.
fn expected(
    folder: &str,
    cfg: &Value,
    problems: &mut Vec<String>,
) -> Vec<(String, Option<Vec<usize>>)> {
    let mut e: Vec<(String, Option<Vec<usize>>)> = Vec::new();
    match folder {
        "transformer" => {
            // SD3Transformer3DModel reads only these six keys (spec §5.1); joint_attention_dim
            // (4096) and pooled_projection_dim (2048) are fixed by the class.
            let hd = cu(cfg, "attention_head_dim", 64);
            let d = cu(cfg, "num_attention_heads", 38).saturating_mul(hd);
            let p = cu(cfg, "patch_size", 2);
            let (cin, cout) = (cu(cfg, "in_channels", 16), cu(cfg, "out_channels", 16));
            e.push(("pos_embed.proj.weight".into(), Some(vec![d, cin, p, p])));
            e.push(("context_embedder.weight".into(), Some(vec![d, 4096])));
            e.push((
                "time_text_embed.text_embedder.linear_1.weight".into(),
                Some(vec![d, 2048]),
            ));
            e.push((
                "time_text_embed.timestep_embedder.linear_1.weight".into(),
                Some(vec![d, 256]),
            ));
            e.push(("norm_out.linear.weight".into(), Some(vec![2 * d, d])));
            e.push(("proj_out.weight".into(), Some(vec![p * p * cout, d])));
            for i in 0..layers(cfg, "num_layers", 38, folder, problems) {
                for w in [
                    "to_q",
                    "to_k",
                    "to_v",
                    "add_q_proj",
                    "add_k_proj",
                    "add_v_proj",
                ] {
                    e.push((
                        format!("transformer_blocks.{i}.attn.{w}.weight"),
                        Some(vec![d, d]),
                    ));
                }
                e.push((
                    format!("transformer_blocks.{i}.attn.norm_q.weight"),
                    Some(vec![hd]),
                ));
                e.push((
                    format!("transformer_blocks.{i}.attn.to_out.0.weight"),
                    Some(vec![d, d]),
                ));
                e.push((
                    format!("transformer_blocks.{i}.norm1.linear.weight"),
                    Some(vec![6 * d, d]),
                ));
                e.push((
                    format!("transformer_blocks.{i}.ff.net.0.proj.weight"),
                    Some(vec![4 * d, d]),
                ));
            }
        }
        "vae" => {
            let z = cu(cfg, "z_dim", 16);
            e.push(("post_quant_conv.weight".into(), Some(vec![z, z, 1, 1, 1])));
            e.push(("decoder.conv_in.weight".into(), None));
            e.push((
                "decoder.conv_out.weight".into(),
                Some(vec![3, cu(cfg, "base_dim", 96), 3, 3, 3]),
            ));
            e.push(("decoder.norm_out.gamma".into(), None));
        }
        "text_encoder" | "text_encoder_2" => {
            let h = cu(cfg, "hidden_size", 768);
            e.push((
                "text_model.embeddings.token_embedding.weight".into(),
                Some(vec![cu(cfg, "vocab_size", 49408), h]),
            ));
            e.push((
                "text_model.embeddings.position_embedding.weight".into(),
                Some(vec![cu(cfg, "max_position_embeddings", 77), h]),
            ));
            e.push(("text_model.final_layer_norm.weight".into(), Some(vec![h])));
            e.push((
                "text_projection.weight".into(),
                Some(vec![cu(cfg, "projection_dim", 768), h]),
            ));
            for i in 0..layers(cfg, "num_hidden_layers", 12, folder, problems) {
                e.push((
                    format!("text_model.encoder.layers.{i}.self_attn.q_proj.weight"),
                    Some(vec![h, h]),
                ));
            }
        }
        "text_encoder_3" => {
            let d = cu(cfg, "d_model", 4096);
            e.push((
                "shared.weight".into(),
                Some(vec![cu(cfg, "vocab_size", 32128), d]),
            ));
            e.push(("encoder.final_layer_norm.weight".into(), Some(vec![d])));
            e.push((
                "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight".into(),
                None,
            ));
            for i in 0..layers(cfg, "num_layers", 24, folder, problems) {
                e.push((
                    format!("encoder.block.{i}.layer.0.SelfAttention.q.weight"),
                    None,
                ));
                e.push((
                    format!("encoder.block.{i}.layer.1.DenseReluDense.wo.weight"),
                    None,
                ));
            }
        }
        _ => {}
    }
    e
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

pub fn run(a: &InfoArgs, ui: &Ui) -> Result<()> {
    let dir = model_dir(&a.model, ui);
    super::load::check_model_exists(&dir)?;
    if !dir.is_dir() {
        return Err(Error::Input(format!(
            "the model path {} is not a folder: give the checkpoint's folder (the one with transformer/, vae/, ...)",
            dir.display()
        )));
    }
    if let Some(h) = layout_hint(&dir) {
        return Err(Error::Input(format!(
            "the model folder {} has none of the components of a ContentV checkpoint (transformer/, vae/, text_encoder/, ...): {h}",
            dir.display()
        )));
    }
    let mut problems: Vec<String> = Vec::new();
    let (mut max_block, mut block_total) = (0usize, 0usize);
    let mut comps = serde_json::Map::new();
    let mut params: BTreeMap<&str, usize> = BTreeMap::new();
    let mut lines = vec![format!("model folder: {}", dir.display())];
    for c in COMPONENTS {
        let cdir = dir.join(c.folder);
        if let Some(p) = component_problem(&dir, c) {
            problems.push(p.clone());
            lines.push(format!("  {:<15} MISSING: {p}", c.folder));
            comps.insert(c.folder.into(), json!({"ok": false, "problem": p}));
            continue;
        }
        if c.folder.starts_with("tokenizer") {
            lines.push(format!("  {:<15} ok ({})", c.folder, c.what));
            comps.insert(c.folder.into(), json!({"ok": true}));
            continue;
        }
        if c.folder == "scheduler" {
            match SchedulerConfig::from_model_dir(&dir) {
                Ok(s) => {
                    lines.push(format!(
                        "  {:<15} ok: FlowMatchEulerDiscrete, shift {}",
                        c.folder, s.shift
                    ));
                    comps.insert(c.folder.into(), json!({"ok": true, "shift": s.shift}));
                }
                Err(e) => {
                    let e = bare(&e);
                    problems.push(e.clone());
                    lines.push(format!("  {:<15} PROBLEM: {e}", c.folder));
                    comps.insert(c.folder.into(), json!({"ok": false, "problem": e}));
                }
            }
            continue;
        }
        let res = read_config(&cdir).and_then(|cfg| read_component(&cdir).map(|t| (cfg, t)));
        let (cfg, tensors) = match res {
            Ok(x) => x,
            Err(e) => {
                let e = bare(&e);
                problems.push(e.clone());
                lines.push(format!("  {:<15} PROBLEM: {e}", c.folder));
                comps.insert(c.folder.into(), json!({"ok": false, "problem": e}));
                continue;
            }
        };
        let n: usize = tensors.values().map(|t| t.numel()).sum();
        if c.folder == "transformer" {
            // Largest streamed layer (modulation linears excluded: computed once per run).
            let mut per: BTreeMap<usize, usize> = BTreeMap::new();
            for (k, t) in &tensors {
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
            max_block = per.values().copied().max().unwrap_or(0);
            block_total = tensors
                .iter()
                .filter(|(k, _)| k.starts_with("transformer_blocks."))
                .map(|(_, t)| t.numel())
                .sum();
        }
        let bytes: usize = tensors
            .values()
            .map(|t| t.numel() * dtype_size(&t.dtype))
            .sum();
        let mut dtypes: BTreeMap<String, usize> = BTreeMap::new();
        for t in tensors.values() {
            *dtypes.entry(t.dtype.clone()).or_default() += t.numel();
        }
        let mut cprob = Vec::new();
        for (k, shape) in expected(c.folder, &cfg, &mut cprob) {
            match tensors.get(&k) {
                None => cprob.push(format!("{}: tensor {k} is missing", c.folder)),
                Some(t) => {
                    if let Some(s) = shape {
                        if t.shape != s {
                            cprob.push(format!(
                                "{}: tensor {k} has shape {:?}, config.json implies {s:?}",
                                c.folder, t.shape
                            ));
                        }
                    }
                    let int8 = t.dtype == "I8"
                        && k.strip_suffix(".weight")
                            .is_some_and(|n| tensors.contains_key(&format!("{n}.weight_scale")));
                    if !int8 && !matches!(t.dtype.as_str(), "F32" | "BF16" | "F16") {
                        cprob.push(format!(
                            "{}: tensor {k} has dtype {}, expected F32/BF16/F16",
                            c.folder, t.dtype
                        ));
                    }
                }
            }
        }
        params.insert(c.folder, n);
        lines.push(format!(
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
            lines.push(format!("      {p}"));
        }
        if cprob.len() > 5 {
            lines.push(format!("      ... and {} more", cprob.len() - 5));
        }
        let mut cj = json!({"ok": cprob.is_empty(), "params": n, "tensors": tensors.len(), "bytes_on_disk": bytes, "dtypes": dtypes, "problems": cprob});
        if a.tensors {
            lines.extend(
                tensors
                    .iter()
                    .map(|(k, t)| format!("      {k} {} {:?}", t.dtype, t.shape)),
            );
            cj["tensor_list"] = tensors
                .iter()
                .map(|(k, t)| json!({"name": k, "dtype": t.dtype, "shape": t.shape}))
                .collect();
        }
        problems.extend(cprob);
        comps.insert(c.folder.into(), cj);
    }
    // Cross-component checks (spec 8.11): CLIP projections add up to 2048, T5 width = 4096.
    let total: usize = params.values().sum();
    let p = |k: &str| *params.get(k).unwrap_or(&0) as f64;
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
