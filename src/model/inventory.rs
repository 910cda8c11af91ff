//! One description per component of every tensor the engine reads: key, shape as the checkpoint
//! stores it, acceptable dtypes. It is derived from the loader's own config struct
//! ([`TransformerConfig`], [`ClipConfig`], [`T5Config`], [`VaeConfig`]), and it is what every
//! real loader checks first (all problems at once), what `contentv info` reports and what
//! `contentv quantize` checks before writing anything. tests/inventory.rs proves it complete:
//! loading and running the tiny model reads exactly these keys with these shapes.
//!
//! Config values are bounded here too, before anything is sized from them (one function per
//! config, called by the config parsers the loaders, `info` and `quantize` share):
//! * every size (width, vocabulary, channels, patch, ...) is at most [`MAX_DIM`]: a tensor with
//!   a larger dimension would alone hold more than [`MAX_PARAMS`] parameters;
//! * a layer count is at most [`MAX_TENSORS`] / (tensors per layer), so a component never lists
//!   more than [`MAX_TENSORS`] tensors;
//! * the parameters the config implies (the sum over the inventory) are at most [`MAX_PARAMS`].
use std::path::Path;

use crate::error::{Error, Result};
use crate::io::safetensors::{ShardedCheckpoint, StDtype};
use crate::model::clip::ClipConfig;
use crate::model::mmdit::TransformerConfig;
use crate::model::t5::T5Config;
use crate::model::vae::VaeConfig;

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
    /// The VAE reader's: F32, BF16, F16 or F64.
    VaeFloat,
    /// I8: the weight of a pre-quantized linear (its `.weight_scale` is in the checkpoint).
    Int8,
}

impl Dtypes {
    fn accepts(self, d: StDtype) -> bool {
        match self {
            Dtypes::Float => matches!(d, StDtype::F32 | StDtype::BF16 | StDtype::F16),
            Dtypes::VaeFloat => {
                matches!(
                    d,
                    StDtype::F32 | StDtype::BF16 | StDtype::F16 | StDtype::F64
                )
            }
            Dtypes::Int8 => d == StDtype::I8,
        }
    }
    fn names(self) -> &'static str {
        match self {
            Dtypes::Float => "F32, BF16 or F16",
            Dtypes::VaeFloat => "F32, BF16, F16 or F64",
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
    /// Read when present (the VAE's conv biases); absent is fine.
    pub optional: bool,
}

/// Every tensor one component's loader reads.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Inventory {
    pub entries: Vec<Entry>,
}

impl Inventory {
    fn t(&mut self, key: impl Into<String>, shape: Vec<usize>) {
        self.entries.push(Entry {
            key: key.into(),
            shape: ShapeRule::Exact(shape),
            dtypes: Dtypes::Float,
            optional: false,
        });
    }

    /// As `Prefix::linear`: `{name}.weight` [out, in] (I8 plus `{name}.weight_scale` when the
    /// checkpoint has the scale) and `{name}.bias` [out].
    fn linear(&mut self, has: &dyn Fn(&str) -> bool, name: &str, i: usize, o: usize, bias: bool) {
        let scale = format!("{name}.weight_scale");
        if has(&scale) {
            self.entries.push(Entry {
                key: format!("{name}.weight"),
                shape: ShapeRule::Exact(vec![o, i]),
                dtypes: Dtypes::Int8,
                optional: false,
            });
            self.entries.push(Entry {
                key: scale,
                shape: ShapeRule::Scale {
                    out: o,
                    in_features: i,
                },
                dtypes: Dtypes::Float,
                optional: false,
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

    /// Every difference between the checkpoint and the inventory, one line each, shapes quoted
    /// as the checkpoint stores them.
    pub fn problems(&self, ck: &ShardedCheckpoint) -> Vec<String> {
        let mut out = Vec::new();
        for e in &self.entries {
            match ck.get(&e.key) {
                Err(_) if e.optional => {}
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

/// The transformer's tensors (mmdit.rs `Embedders::load`, `BlockWeights::load`,
/// `modulation_linears`): the last block is context_pre_only (no text update, 2D context
/// modulation; its unused `attn.add_q_proj` is not read), as in the reference.
pub fn transformer(
    c: &TransformerConfig,
    has: &dyn Fn(&str) -> bool,
    dir: &Path,
) -> Result<Inventory> {
    let origin = &dir.display().to_string();
    check_layers(origin, "num_layers", c.layers, TRANSFORMER_PER_LAYER)?;
    let d = c.dim;
    let mut inv = Inventory::default();
    inv.t(
        "pos_embed.proj.weight",
        vec![d, c.in_channels, c.patch, c.patch],
    );
    inv.t("pos_embed.proj.bias", vec![d]);
    let te = "time_text_embed";
    inv.linear(
        has,
        &format!("{te}.timestep_embedder.linear_1"),
        256,
        d,
        true,
    );
    inv.linear(has, &format!("{te}.timestep_embedder.linear_2"), d, d, true);
    inv.linear(
        has,
        &format!("{te}.text_embedder.linear_1"),
        c.pooled_dim,
        d,
        true,
    );
    inv.linear(has, &format!("{te}.text_embedder.linear_2"), d, d, true);
    inv.linear(has, "context_embedder", c.joint_attention_dim, d, true);
    inv.linear(has, "norm_out.linear", d, 2 * d, true);
    inv.linear(has, "proj_out", d, c.patch * c.patch * c.out_channels, true);
    for i in 0..c.layers {
        let b = format!("transformer_blocks.{i}");
        let pre_only = i + 1 == c.layers;
        inv.linear(has, &format!("{b}.norm1.linear"), d, 6 * d, true);
        let ctx = if pre_only { 2 * d } else { 6 * d };
        inv.linear(has, &format!("{b}.norm1_context.linear"), d, ctx, true);
        for w in ["to_q", "to_k", "to_v"] {
            inv.linear(has, &format!("{b}.attn.{w}"), d, d, true);
        }
        if !pre_only {
            inv.linear(has, &format!("{b}.attn.add_q_proj"), d, d, true);
        }
        for w in ["add_k_proj", "add_v_proj"] {
            inv.linear(has, &format!("{b}.attn.{w}"), d, d, true);
        }
        for n in ["norm_q", "norm_k", "norm_added_q", "norm_added_k"] {
            inv.t(format!("{b}.attn.{n}.weight"), vec![c.head_dim]);
        }
        inv.linear(has, &format!("{b}.attn.to_out.0"), d, d, true);
        let ffs: &[&str] = if pre_only {
            &["ff"]
        } else {
            inv.linear(has, &format!("{b}.attn.to_add_out"), d, d, true);
            &["ff", "ff_context"]
        };
        for ff in ffs {
            inv.linear(has, &format!("{b}.{ff}.net.0.proj"), d, c.ff_dim, true);
            inv.linear(has, &format!("{b}.{ff}.net.2"), c.ff_dim, d, true);
        }
    }
    inv.bounded(origin)
}

/// A CLIP text encoder's tensors (clip.rs `ClipText::forward`).
pub fn clip(c: &ClipConfig, has: &dyn Fn(&str) -> bool, dir: &Path) -> Result<Inventory> {
    let (h, f) = (c.hidden, c.intermediate);
    let mut inv = Inventory::default();
    let tm = "text_model";
    inv.t(
        format!("{tm}.embeddings.token_embedding.weight"),
        vec![c.vocab, h],
    );
    inv.t(
        format!("{tm}.embeddings.position_embedding.weight"),
        vec![c.max_positions, h],
    );
    for i in 0..c.layers {
        let l = format!("{tm}.encoder.layers.{i}");
        for n in ["layer_norm1", "layer_norm2"] {
            inv.t(format!("{l}.{n}.weight"), vec![h]);
            inv.t(format!("{l}.{n}.bias"), vec![h]);
        }
        for p in ["q_proj", "k_proj", "v_proj", "out_proj"] {
            inv.linear(has, &format!("{l}.self_attn.{p}"), h, h, true);
        }
        inv.linear(has, &format!("{l}.mlp.fc1"), h, f, true);
        inv.linear(has, &format!("{l}.mlp.fc2"), f, h, true);
    }
    inv.t(format!("{tm}.final_layer_norm.weight"), vec![h]);
    inv.t(format!("{tm}.final_layer_norm.bias"), vec![h]);
    inv.linear(has, "text_projection", h, c.projection, false);
    inv.bounded(&dir.join("config.json").display().to_string())
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

/// The T5 encoder's tensors (t5.rs `T5Encoder::forward`, `position_bias`).
pub fn t5(c: &T5Config, has: &dyn Fn(&str) -> bool, dir: &Path) -> Result<Inventory> {
    let (d, inner) = (c.d_model, c.heads * c.d_kv);
    let mut inv = Inventory::default();
    inv.t(t5_embed_key(has), vec![c.vocab, d]);
    inv.t(
        "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
        vec![c.buckets, c.heads],
    );
    for i in 0..c.layers {
        let l = format!("encoder.block.{i}.layer");
        inv.t(format!("{l}.0.layer_norm.weight"), vec![d]);
        for p in ["q", "k", "v"] {
            inv.linear(has, &format!("{l}.0.SelfAttention.{p}"), d, inner, false);
        }
        inv.linear(has, &format!("{l}.0.SelfAttention.o"), inner, d, false);
        inv.t(format!("{l}.1.layer_norm.weight"), vec![d]);
        let ff = format!("{l}.1.DenseReluDense");
        if c.gated {
            inv.linear(has, &format!("{ff}.wi_0"), d, c.d_ff, false);
            inv.linear(has, &format!("{ff}.wi_1"), d, c.d_ff, false);
        } else {
            inv.linear(has, &format!("{ff}.wi"), d, c.d_ff, false);
        }
        inv.linear(has, &format!("{ff}.wo"), c.d_ff, d, false);
    }
    inv.t("encoder.final_layer_norm.weight", vec![d]);
    inv.bounded(&dir.join("config.json").display().to_string())
}

/// The VAE decoder's tensors (vae.rs `VaeDecoder::load`); conv biases are read when present.
pub fn vae(c: &VaeConfig, dir: &Path) -> Result<Inventory> {
    fn conv(inv: &mut Inventory, key: &str, co: usize, ci: usize, k: &[usize]) {
        let mut s = vec![co, ci];
        s.extend_from_slice(k);
        for (name, shape, optional) in [("weight", s, false), ("bias", vec![co], true)] {
            inv.entries.push(Entry {
                key: format!("{key}.{name}"),
                shape: ShapeRule::Exact(shape),
                dtypes: Dtypes::VaeFloat,
                optional,
            });
        }
    }
    fn gamma(inv: &mut Inventory, key: &str, ch: usize, rank: usize) {
        let mut s = vec![ch];
        s.extend(std::iter::repeat_n(1, rank));
        inv.entries.push(Entry {
            key: format!("{key}.gamma"),
            shape: ShapeRule::Exact(s),
            dtypes: Dtypes::VaeFloat,
            optional: false,
        });
    }
    fn resblock(inv: &mut Inventory, key: &str, ci: usize, co: usize) {
        gamma(inv, &format!("{key}.norm1"), ci, 3);
        conv(inv, &format!("{key}.conv1"), co, ci, &[3, 3, 3]);
        gamma(inv, &format!("{key}.norm2"), co, 3);
        conv(inv, &format!("{key}.conv2"), co, co, &[3, 3, 3]);
        if ci != co {
            conv(inv, &format!("{key}.conv_shortcut"), co, ci, &[1, 1, 1]);
        }
    }
    let mut inv = Inventory::default();
    let z = c.z_dim;
    let dims = c.decoder_dims();
    conv(&mut inv, "post_quant_conv", z, z, &[1, 1, 1]);
    conv(&mut inv, "decoder.conv_in", dims[0], z, &[3, 3, 3]);
    let ch = dims[0];
    resblock(&mut inv, "decoder.mid_block.resnets.0", ch, ch);
    let p = "decoder.mid_block.attentions.0";
    gamma(&mut inv, &format!("{p}.norm"), ch, 2);
    conv(&mut inv, &format!("{p}.to_qkv"), 3 * ch, ch, &[1, 1]);
    conv(&mut inv, &format!("{p}.proj"), ch, ch, &[1, 1]);
    resblock(&mut inv, "decoder.mid_block.resnets.1", ch, ch);
    let tup = c.temperal_upsample();
    let n = c.dim_mult.len();
    for i in 0..n {
        let in_dim = if i >= 1 { dims[i] / 2 } else { dims[i] };
        let out_dim = dims[i + 1];
        let mut cur = in_dim;
        for k in 0..=c.num_res_blocks {
            resblock(
                &mut inv,
                &format!("decoder.up_blocks.{i}.resnets.{k}"),
                cur,
                out_dim,
            );
            cur = out_dim;
        }
        if i != n - 1 {
            let p = format!("decoder.up_blocks.{i}.upsamplers.0");
            if tup[i] {
                conv(
                    &mut inv,
                    &format!("{p}.time_conv"),
                    2 * out_dim,
                    out_dim,
                    &[3, 1, 1],
                );
            }
            conv(
                &mut inv,
                &format!("{p}.resample.1"),
                out_dim / 2,
                out_dim,
                &[3, 3],
            );
        }
    }
    let last = *dims.last().unwrap_or(&0);
    gamma(&mut inv, "decoder.norm_out", last, 3);
    conv(
        &mut inv,
        "decoder.conv_out",
        c.out_channels,
        last,
        &[3, 3, 3],
    );
    inv.bounded(&dir.join("config.json").display().to_string())
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
        "vae" => vae(&VaeConfig::from_file(&dir.join("config.json"))?, dir),
        other => Err(Error::Other(format!("no tensor inventory for {other}/"))),
    }
}
