//! One description per component of every tensor the engine reads: key, shape as the checkpoint
//! stores it, acceptable dtypes, and for each linear what its loader declares (INT8 applies,
//! computed once per run, fused with its neighbours). It is not written here: it is the
//! component's own loader (`BlockWeights::load`, `T5Layer::load`, ...) run against a
//! [`Recorder`], a [`WeightSource`] that hands out nothing and writes down what is asked for. So
//! the description is what every real loader checks first (all problems at once), what
//! `contentv info` reports, what `contentv quantize` checks before writing anything and where
//! the weight store's INT8 and fusion policies and the residency's per-run linears come from.
//! tests/inventory.rs proves it equal to a real load: loading and running the tiny model reads
//! exactly these keys with these shapes.
//!
//! Config values are bounded here too, before anything is sized from them (one function per
//! config, called by the config parsers the loaders, `info` and `quantize` share):
//! * every size (width, vocabulary, channels, patch, ...) is at most [`MAX_DIM`]: a tensor with
//!   a larger dimension would alone hold more than [`MAX_PARAMS`] parameters;
//! * a layer count is at most [`MAX_TENSORS`] / (tensors per layer), so a component never lists
//!   more than [`MAX_TENSORS`] tensors;
//! * the parameters the config implies (the sum over the inventory) are at most [`MAX_PARAMS`].
use std::cell::RefCell;
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::io::safetensors::{ShardedCheckpoint, StDtype};
use crate::model::clip::ClipConfig;
use crate::model::mmdit::TransformerConfig;
use crate::model::t5::T5Config;
use crate::model::vae::VaeConfig;
use crate::runtime::weights::{layer_index_of, FusionPolicy, Int8Policy, LinearTags, WeightSource};

/// Most parameters one component may have: 2^40 (about 1.1 trillion, 2 TiB in bf16).
/// ContentV-8B's largest component, the transformer, has 8.06 billion.
pub const MAX_PARAMS: u128 = 1 << 40;
/// Largest single size a config may give (see the module docs).
pub const MAX_DIM: usize = 1 << 40;
/// Most tensors one component may list: 65536 (ContentV-8B's transformer has about 900).
pub const MAX_TENSORS: usize = 1 << 16;

/// What the store accepts for a tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtypes {
    /// F32, BF16 or F16 (the weight store converts them; I8 only with a scale).
    Float,
    /// I8: the weight of a pre-quantized linear (its `.weight_scale` is in the checkpoint).
    Int8,
}

impl Dtypes {
    fn accepts(self, d: StDtype) -> bool {
        match self {
            Dtypes::Float => matches!(d, StDtype::F32 | StDtype::BF16 | StDtype::F16),
            Dtypes::Int8 => d == StDtype::I8,
        }
    }
    fn names(self) -> &'static str {
        match self {
            Dtypes::Float => "F32, BF16 or F16",
            Dtypes::Int8 => "I8 (the linear has a .weight_scale)",
        }
    }
}

/// The shape a tensor must have.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ShapeRule {
    Exact(Vec<usize>),
    /// An INT8 scale: [out] or [out, groups] with groups dividing `in_features`.
    Scale {
        out: usize,
        in_features: usize,
    },
}

impl ShapeRule {
    pub fn accepts(&self, s: &[usize]) -> bool {
        match self {
            ShapeRule::Exact(w) => w == s,
            ShapeRule::Scale { out, in_features } => {
                s.first() == Some(out)
                    && (s.len() == 1 || (s.len() == 2 && s[1] > 0 && in_features % s[1] == 0))
            }
        }
    }
    fn describe(&self) -> String {
        match self {
            ShapeRule::Exact(w) => format!("{w:?}"),
            ShapeRule::Scale { out, .. } => format!("[{out}] or [{out}, groups]"),
        }
    }
    fn numel(&self) -> u128 {
        match self {
            ShapeRule::Exact(w) => w.iter().map(|&x| x as u128).product(),
            ShapeRule::Scale { out, .. } => *out as u128,
        }
    }
}

/// One tensor the engine reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub shape: ShapeRule,
    pub dtypes: Dtypes,
}

/// A linear as its loader asked for it: the full key without `.weight`, its shape and tags.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinearEntry {
    pub name: String,
    pub in_features: usize,
    pub out_features: usize,
    pub bias: bool,
    pub tags: LinearTags,
}

/// Every tensor one component's loader reads, and what it declares about its linears.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Inventory {
    pub entries: Vec<Entry>,
    /// Every linear the loader asks for, in order.
    pub linears: Vec<LinearEntry>,
    /// The linears asked for as one (`fused_tagged`), members in output-row order.
    pub fused: Vec<Vec<String>>,
}

impl Inventory {
    fn t(&mut self, key: impl Into<String>, shape: Vec<usize>) {
        self.entries.push(Entry {
            key: key.into(),
            shape: ShapeRule::Exact(shape),
            dtypes: Dtypes::Float,
        });
    }

    /// As `Prefix::linear`: `{name}.weight` [out, in] (I8 plus `{name}.weight_scale` when the
    /// checkpoint has the scale) and `{name}.bias` [out], recorded with its tags.
    fn linear_tagged(
        &mut self,
        has: &dyn Fn(&str) -> bool,
        name: &str,
        i: usize,
        o: usize,
        bias: bool,
        tags: LinearTags,
    ) {
        self.linears.push(LinearEntry {
            name: name.to_string(),
            in_features: i,
            out_features: o,
            bias,
            tags,
        });
        let scale = format!("{name}.weight_scale");
        if has(&scale) {
            self.entries.push(Entry {
                key: format!("{name}.weight"),
                shape: ShapeRule::Exact(vec![o, i]),
                dtypes: Dtypes::Int8,
            });
            self.entries.push(Entry {
                key: scale,
                shape: ShapeRule::Scale {
                    out: o,
                    in_features: i,
                },
                dtypes: Dtypes::Float,
            });
        } else {
            self.t(format!("{name}.weight"), vec![o, i]);
        }
        if bias {
            self.t(format!("{name}.bias"), vec![o]);
        }
    }

    /// The parameters the inventory implies, refused over [`MAX_PARAMS`] (`origin`: the config).
    fn bounded(self, origin: &str) -> Result<Inventory> {
        let p: u128 = self.entries.iter().map(|e| e.shape.numel()).sum();
        if p > MAX_PARAMS {
            return Err(Error::Weights(format!(
                "{origin}: the config implies {p} parameters, more than the {MAX_PARAMS} (2^40) this engine accepts per component \
                 (ContentV-8B's largest component has 8.06 billion); the file is corrupt or belongs to another model"
            )));
        }
        Ok(self)
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|e| e.key.as_str())
    }

    /// The linears tagged [`LinearTags::int8`] (full keys without `.weight`).
    pub fn int8_linears(&self) -> BTreeSet<String> {
        self.tagged(|t| t.int8)
    }

    /// The linears tagged [`LinearTags::per_run`].
    pub fn per_run_linears(&self) -> BTreeSet<String> {
        self.tagged(|t| t.per_run)
    }

    fn tagged(&self, f: impl Fn(&LinearTags) -> bool) -> BTreeSet<String> {
        self.linears
            .iter()
            .filter(|l| f(&l.tags))
            .map(|l| l.name.clone())
            .collect()
    }

    /// The weight store's INT8 policy from the tags (per-output-channel scales).
    pub fn int8_policy(&self) -> Int8Policy {
        Int8Policy {
            group: None,
            linears: Arc::new(self.int8_linears()),
        }
    }

    /// The weight store's fusion policy: the linears the loader asks for as one.
    pub fn fusion_policy(&self) -> FusionPolicy {
        FusionPolicy {
            groups: Arc::new(self.fused.clone()),
        }
    }

    /// Every difference between the checkpoint and the inventory, one line each, shapes quoted
    /// as the checkpoint stores them.
    pub fn problems(&self, ck: &ShardedCheckpoint) -> Vec<String> {
        let mut out = Vec::new();
        for e in &self.entries {
            match ck.get(&e.key) {
                Err(_) => out.push(format!(
                    "{}: missing from the checkpoint (the config needs {})",
                    e.key,
                    e.shape.describe()
                )),
                Ok((_, info)) => {
                    if !e.shape.accepts(&info.shape) {
                        out.push(format!(
                            "{}: the checkpoint has {:?}, the config needs {}",
                            e.key,
                            info.shape,
                            e.shape.describe()
                        ));
                    }
                    if !e.dtypes.accepts(info.dtype) {
                        out.push(format!(
                            "{}: stored as {}, the engine reads {}",
                            e.key,
                            info.dtype,
                            e.dtypes.names()
                        ));
                    }
                }
            }
        }
        out
    }

    /// [`problems`](Self::problems) as one error naming the folder (the first 20 listed).
    pub fn check(&self, dir: &Path, ck: &ShardedCheckpoint) -> Result<()> {
        let p = self.problems(ck);
        if p.is_empty() {
            return Ok(());
        }
        Err(Error::Weights(format!(
            "{}: the checkpoint does not match its config.json: {}",
            dir.display(),
            summary(&p)
        )))
    }

    /// Opens `dir`'s checkpoint headers and [`check`](Self::check)s them.
    pub fn check_dir(&self, dir: &Path) -> Result<()> {
        let ck = ShardedCheckpoint::open_dir(dir)?;
        self.check(dir, &ck)
    }
}

/// "N problem(s): a; b; ..." with at most 20 listed.
pub fn summary(p: &[String]) -> String {
    let mut s = format!("{} problem(s): ", p.len());
    s.push_str(&p.iter().take(20).cloned().collect::<Vec<_>>().join("; "));
    if p.len() > 20 {
        s.push_str(&format!("; ... and {} more", p.len() - 20));
    }
    s
}

// ---------------------------------------------------------------------------------------------
// Config bounds
// ---------------------------------------------------------------------------------------------

/// Each `(key, value)` at most [`MAX_DIM`].
pub fn check_sizes(origin: &str, sizes: &[(&str, usize)]) -> Result<()> {
    for &(k, v) in sizes {
        if v > MAX_DIM {
            return Err(Error::Weights(format!(
                "{origin}: {k} {v} is more than this engine accepts (at most {MAX_DIM} = 2^40: a tensor with that dimension \
                 would alone exceed the ceiling of 2^40 parameters per component); the file is corrupt or belongs to another model"
            )));
        }
    }
    Ok(())
}

/// A layer count at most [`MAX_TENSORS`] / `per_layer`.
pub fn check_layers(origin: &str, key: &str, layers: usize, per_layer: usize) -> Result<()> {
    let bound = MAX_TENSORS / per_layer.max(1);
    if layers > bound {
        return Err(Error::Weights(format!(
            "{origin}: {key} {layers} is more layers than this engine accepts (at most {bound}: each layer has {per_layer} tensors \
             and a component may have at most {MAX_TENSORS}); the file is corrupt or belongs to another model"
        )));
    }
    Ok(())
}

/// Tensors per transformer block (a full block, biases included).
const TRANSFORMER_PER_LAYER: usize = 30;
const CLIP_PER_LAYER: usize = 16;
const T5_PER_LAYER: usize = 9;

/// Bounds of `transformer/config.json`'s values (`get(key)`: the value if the file has it).
pub fn transformer_bounds(origin: &str, get: &dyn Fn(&str) -> Option<usize>) -> Result<()> {
    for k in [
        "num_attention_heads",
        "attention_head_dim",
        "patch_size",
        "in_channels",
        "out_channels",
    ] {
        if let Some(v) = get(k) {
            check_sizes(origin, &[(k, v)])?;
        }
    }
    if let Some(v) = get("num_layers") {
        check_layers(origin, "num_layers", v, TRANSFORMER_PER_LAYER)?;
    }
    Ok(())
}

/// A norm epsilon: finite and not negative (else every output is NaN).
fn check_eps(origin: &str, key: &str, eps: f32) -> Result<()> {
    if !eps.is_finite() || eps < 0.0 {
        return Err(Error::Weights(format!(
            "{origin}: {key} {eps} is not a usable epsilon (it must be a finite number >= 0, e.g. 1e-6); the file is corrupt"
        )));
    }
    Ok(())
}

pub fn clip_bounds(origin: &str, c: &ClipConfig) -> Result<()> {
    check_eps(origin, "layer_norm_eps", c.eps)?;
    check_sizes(
        origin,
        &[
            ("hidden_size", c.hidden),
            ("intermediate_size", c.intermediate),
            ("num_attention_heads", c.heads),
            ("max_position_embeddings", c.max_positions),
            ("projection_dim", c.projection),
            ("vocab_size", c.vocab),
        ],
    )?;
    check_layers(origin, "num_hidden_layers", c.layers, CLIP_PER_LAYER)
}

pub fn t5_bounds(origin: &str, c: &T5Config) -> Result<()> {
    check_eps(origin, "layer_norm_epsilon", c.eps)?;
    check_sizes(
        origin,
        &[
            ("d_model", c.d_model),
            ("d_kv", c.d_kv),
            ("d_ff", c.d_ff),
            ("num_heads", c.heads),
            ("relative_attention_num_buckets", c.buckets),
            ("vocab_size", c.vocab),
        ],
    )?;
    if (c.heads as u128) * (c.d_kv as u128) > MAX_DIM as u128 {
        return Err(Error::Weights(format!(
            "{origin}: num_heads {} x d_kv {} is more than this engine accepts (at most {MAX_DIM} = 2^40); the file is corrupt or belongs to another model",
            c.heads, c.d_kv
        )));
    }
    check_layers(origin, "num_layers", c.layers, T5_PER_LAYER)?;
    // Every relative position of a prompt (T5_TOKENS tokens) must fall in a bucket, as the
    // encoder's position bias needs (transformers fails in the embedding lookup otherwise).
    let s = crate::model::text::T5_TOKENS as i64;
    for rel in -(s - 1)..s {
        let b = crate::model::t5::relative_bucket_signed(rel, c.buckets, c.max_distance);
        if b < 0 || b as usize >= c.buckets {
            return Err(Error::Weights(format!(
                "{origin}: relative_attention_max_distance {} is too small for relative_attention_num_buckets {}: \
                 relative position {rel} falls in bucket {b} (transformers fails here too)",
                c.max_distance, c.buckets
            )));
        }
    }
    Ok(())
}

/// Bounds of the VAE config, before the decoder's channel ladder is computed from it.
pub fn vae_bounds(origin: &str, c: &VaeConfig) -> Result<()> {
    let base = c.decoder_base_dim.unwrap_or(c.base_dim);
    check_sizes(
        origin,
        &[
            ("base_dim", base),
            ("z_dim", c.z_dim),
            ("out_channels", c.out_channels),
        ],
    )?;
    for &m in &c.dim_mult {
        if (m as u128) * (base as u128) > MAX_DIM as u128 {
            return Err(Error::Weights(format!(
                "{origin}: dim_mult entry {m} x base_dim {base} is more channels than this engine accepts (at most {MAX_DIM} = 2^40); \
                 the file is corrupt or belongs to another model"
            )));
        }
    }
    // Up blocks: (num_res_blocks + 1) resnets of up to 10 tensors, an upsampler of 4.
    let per_block = (c.num_res_blocks as u128 + 1) * 10 + 4;
    let tensors = per_block * c.dim_mult.len() as u128 + 40;
    if tensors > MAX_TENSORS as u128 {
        return Err(Error::Weights(format!(
            "{origin}: dim_mult ({} entries) with num_res_blocks {} means {tensors} tensors, more than the {MAX_TENSORS} this engine accepts \
             per component; the file is corrupt or belongs to another model",
            c.dim_mult.len(),
            c.num_res_blocks
        )));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Inventories
// ---------------------------------------------------------------------------------------------

/// A [`WeightSource`] that hands out nothing and records what a loader asks for: run a
/// component's loader against it ([`Recorder::record`]) and the result is the component's
/// [`Inventory`]. `has` answers [`WeightSource::contains`] from the checkpoint's headers (the
/// loaders branch on pre-quantized linears).
#[derive(Clone)]
pub struct Recorder<'a> {
    has: &'a dyn Fn(&str) -> bool,
    prefix: String,
    inv: &'a RefCell<Inventory>,
}

impl<'a> Recorder<'a> {
    /// Runs `load` against a recorder at the root of a checkpoint; returns what it asked for.
    pub fn record(
        has: &dyn Fn(&str) -> bool,
        load: impl FnOnce(&Recorder<'_>) -> Result<()>,
    ) -> Result<Inventory> {
        let inv = RefCell::new(Inventory::default());
        load(&Recorder {
            has,
            prefix: String::new(),
            inv: &inv,
        })?;
        Ok(inv.into_inner())
    }

    fn key(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }
}

impl WeightSource for Recorder<'_> {
    type Tensor = ();
    type Linear = ();
    fn pp(&self, name: impl std::fmt::Display) -> Self {
        Recorder {
            has: self.has,
            prefix: self.key(&name.to_string()),
            inv: self.inv,
        }
    }
    fn contains(&self, name: &str) -> bool {
        (self.has)(&self.key(name))
    }
    fn layer_index(&self) -> Option<usize> {
        layer_index_of(&self.prefix)
    }
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<()> {
        self.inv.borrow_mut().t(self.key(name), shape.to_vec());
        Ok(())
    }
    fn tensor_f32(&self, name: &str, shape: &[usize]) -> Result<()> {
        self.tensor(name, shape)
    }
    fn linear_tagged(
        &self,
        name: &str,
        i: usize,
        o: usize,
        bias: bool,
        tags: LinearTags,
    ) -> Result<()> {
        self.inv
            .borrow_mut()
            .linear_tagged(self.has, &self.key(name), i, o, bias, tags);
        Ok(())
    }
    fn fused_tagged(
        &self,
        names: &[&str],
        i: usize,
        outs: &[usize],
        bias: bool,
        tags: LinearTags,
    ) -> Result<()> {
        if names.is_empty() || names.len() != outs.len() {
            return Err(Error::Other(format!(
                "fused linear {names:?}: {} members with {} output widths",
                names.len(),
                outs.len()
            )));
        }
        for (n, &o) in names.iter().zip(outs) {
            self.linear_tagged(n, i, o, bias, tags)?;
        }
        let group = names.iter().map(|n| self.key(n)).collect();
        self.inv.borrow_mut().fused.push(group);
        Ok(())
    }
    fn linear_reshaped(&self, name: &str, stored: &[usize]) -> Result<()> {
        let p = self.pp(name);
        p.tensor("weight", stored)?;
        p.tensor("bias", &stored[..1.min(stored.len())])
    }
}

/// The transformer's tensors: its loaders (mmdit.rs [`crate::model::mmdit::describe`])
/// recorded. The last block is context_pre_only (no text update, 2D context modulation; its
/// unused `attn.add_q_proj` is not read), as in the reference.
pub fn transformer(
    c: &TransformerConfig,
    has: &dyn Fn(&str) -> bool,
    dir: &Path,
) -> Result<Inventory> {
    let origin = &dir.display().to_string();
    check_layers(origin, "num_layers", c.layers, TRANSFORMER_PER_LAYER)?;
    Recorder::record(has, |r| crate::model::mmdit::describe(r, c))?.bounded(origin)
}

/// A CLIP text encoder's tensors: its loaders (clip.rs [`crate::model::clip::describe`]) recorded.
pub fn clip(c: &ClipConfig, has: &dyn Fn(&str) -> bool, dir: &Path) -> Result<Inventory> {
    Recorder::record(has, |r| crate::model::clip::describe(r, c))?
        .bounded(&dir.join("config.json").display().to_string())
}

/// The T5 embedding key the loader uses: `shared.weight`, else `encoder.embed_tokens.weight`
/// (the first the checkpoint has; `shared.weight` when it has neither).
pub fn t5_embed_key(has: &dyn Fn(&str) -> bool) -> &'static str {
    if !has("shared.weight") && has("encoder.embed_tokens.weight") {
        "encoder.embed_tokens.weight"
    } else {
        "shared.weight"
    }
}

/// The T5 encoder's tensors: its loaders (t5.rs [`crate::model::t5::describe`]) recorded.
pub fn t5(c: &T5Config, has: &dyn Fn(&str) -> bool, dir: &Path) -> Result<Inventory> {
    Recorder::record(has, |r| crate::model::t5::describe(r, c))?
        .bounded(&dir.join("config.json").display().to_string())
}

/// The VAE decoder's tensors: its loader (vae/weights.rs [`crate::model::vae::describe`])
/// recorded; a conv bias is listed when the checkpoint has it (the loader reads it then).
pub fn vae(c: &VaeConfig, has: &dyn Fn(&str) -> bool, dir: &Path) -> Result<Inventory> {
    Recorder::record(has, |r| crate::model::vae::describe(r, c))?
        .bounded(&dir.join("config.json").display().to_string())
}

/// The inventory of the component `folder` of a model (`dir` = the component's folder), with
/// its config read by the loader's own parser. Used by `info` and `quantize`.
pub fn for_component(folder: &str, dir: &Path) -> Result<Inventory> {
    match folder {
        "transformer" => {
            let store = crate::runtime::WeightStore::open(
                dir,
                &crate::runtime::Device::Cpu,
                crate::runtime::DType::BF16,
            )?;
            let c = TransformerConfig::from_weights(&store.root())?;
            transformer(&c, &|k| store.contains(k), dir)
        }
        "text_encoder" | "text_encoder_2" => {
            let c = ClipConfig::from_dir(dir)?;
            let ck = ShardedCheckpoint::open_dir(dir)?;
            clip(&c, &|k| ck.contains(k), dir)
        }
        "text_encoder_3" => {
            let c = T5Config::from_dir(dir)?;
            let ck = ShardedCheckpoint::open_dir(dir)?;
            t5(&c, &|k| ck.contains(k), dir)
        }
        "vae" => {
            let c = VaeConfig::from_file(&dir.join("config.json"))?;
            let ck = ShardedCheckpoint::open_dir(dir)?;
            vae(&c, &|k| ck.contains(k), dir)
        }
        other => Err(Error::Other(format!("no tensor inventory for {other}/"))),
    }
}
