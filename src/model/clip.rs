//! CLIP text encoders (CLIP-L `text_encoder/`, OpenCLIP-bigG `text_encoder_2/`), docs/spec.md §3:
//! pre-LayerNorm layers with a causal mask, activation from `hidden_act` (quick-GELU for CLIP-L,
//! erf GELU for bigG); the sequence output is the penultimate hidden state without the final
//! norm (the embeddings for a 1-layer model); the pooled output is the final-norm EOS token
//! times the projection (EOS = first occurrence of the highest id when the config's
//! eos_token_id is 2, as transformers does, else the first occurrence of eos_token_id, or
//! position 0 without one). Every size comes from config.json (transformers' defaults for
//! missing keys) and is checked against the weight shapes.
use std::path::Path;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::io::config::ConfigJson;
use crate::ops::attention::{attention, AttnOpts};
use crate::ops::elementwise::{add, add_bcast};
use crate::ops::gemm::{linear, linear_act, Act};
use crate::ops::{embed, norm};
use crate::runtime::weights::WeightSource;
use crate::runtime::{DType, Device, Linear, Prefix, Tensor, WeightStore};

/// A feed-forward activation named in a transformers config (`ACT2FN` names). The GELU/SiLU
/// family is fused into the GEMM; ReLU (T5 v1.0, some CLIPs) is applied on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TextAct {
    Fused(Act),
    Relu,
}

impl TextAct {
    /// transformers' `ACT2FN[name]`, for the names this engine implements.
    pub fn from_name(name: &str) -> Option<TextAct> {
        Some(match name {
            "quick_gelu" => TextAct::Fused(Act::QuickGelu),
            "gelu" | "gelu_python" => TextAct::Fused(Act::GeluErf),
            // The tanh approximation, written three ways in transformers.
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => TextAct::Fused(Act::GeluTanh),
            "silu" | "swish" => TextAct::Fused(Act::Silu),
            "relu" => TextAct::Relu,
            "linear" => TextAct::Fused(Act::None),
            _ => return None,
        })
    }

    /// The activation names [`from_name`](Self::from_name) accepts (for error messages).
    pub const NAMES: &'static str =
        "quick_gelu, gelu, gelu_python, gelu_new, gelu_pytorch_tanh, gelu_fast, silu, swish, relu, linear";
}

/// `act(x W^T + b)` for a [`TextAct`].
pub fn linear_text_act(x: &Tensor, l: &Linear, act: TextAct) -> Result<Tensor> {
    match act {
        TextAct::Fused(a) => linear_act(x, l, a),
        TextAct::Relu => {
            let y = linear(x, l)?;
            let v: Vec<f32> = y.to_vec_f32()?.into_iter().map(|v| v.max(0.0)).collect();
            Tensor::from_f32(v, y.shape(), y.device())?.to_dtype(y.dtype())
        }
    }
}

#[derive(Clone, Debug)]
pub struct ClipConfig {
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    pub max_positions: usize,
    pub projection: usize,
    pub eps: f32,
    pub act: TextAct,
    pub eos_token_id: u32,
    pub vocab: usize,
}

impl ClipConfig {
    /// Reads `dir/config.json` (a `CLIPTextConfig`, or a `CLIPConfig` with a `text_config`).
    /// Missing keys take `CLIPTextConfig`'s defaults, as transformers does (note
    /// `eos_token_id` defaults to 49407, not the legacy 2, which changes the pooled token).
    pub fn from_dir(dir: &Path) -> Result<ClipConfig> {
        let path = dir.join("config.json");
        let text = std::fs::read(&path)
            .map_err(|e| Error::Input(format!("cannot read {}: {e}", path.display())))?;
        Self::from_json(&text, &path)
    }

    /// Parses config.json text; `path` names the file in errors.
    pub fn from_json(text: &[u8], path: &Path) -> Result<ClipConfig> {
        // CLIPTextModelWithProjection configs may nest the text config.
        let cfg =
            ConfigJson::parse(text, &path.display().to_string())?.nested_or_self("text_config");
        let bad = |k: &str, what: &str| cfg.bad(k, what);
        let u = |k: &str, def: usize| cfg.usize_or(k, def);
        let act_name = cfg.str_or("hidden_act", "quick_gelu")?;
        let act = TextAct::from_name(act_name).ok_or_else(|| {
            bad(
                "hidden_act",
                &format!(
                    "is {act_name:?}: not supported (supported: {})",
                    TextAct::NAMES
                ),
            )
        })?;
        let eps = cfg.f64_or("layer_norm_eps", 1e-5)? as f32;
        let eos = u("eos_token_id", 49407)?;
        let c = ClipConfig {
            hidden: u("hidden_size", 512)?,
            intermediate: u("intermediate_size", 2048)?,
            layers: u("num_hidden_layers", 12)?,
            heads: u("num_attention_heads", 8)?,
            max_positions: u("max_position_embeddings", 77)?,
            projection: u("projection_dim", 512)?,
            eps,
            act,
            eos_token_id: u32::try_from(eos)
                .map_err(|_| bad("eos_token_id", "does not fit in 32 bits"))?,
            vocab: u("vocab_size", 49408)?,
        };
        if c.heads == 0 || c.hidden % c.heads != 0 {
            return Err(bad(
                "num_attention_heads",
                &format!(
                    "is {}: hidden_size {} must be a multiple of it (transformers refuses this too)",
                    c.heads, c.hidden
                ),
            ));
        }
        for (k, x) in [
            ("hidden_size", c.hidden),
            ("num_hidden_layers", c.layers),
            ("max_position_embeddings", c.max_positions),
            ("vocab_size", c.vocab),
        ] {
            if x == 0 {
                return Err(bad(k, "must be > 0"));
            }
        }
        crate::model::inventory::clip_bounds(cfg.origin(), &c)?;
        Ok(c)
    }
}

/// One CLIP text encoder with projection.
pub struct ClipText {
    pub config: ClipConfig,
    store: Arc<WeightStore>,
}

/// Outputs for a batch of token sequences.
pub struct ClipOutput {
    /// `hidden_states[-2]`: [B, S, hidden]
    pub penultimate: Tensor,
    /// `text_embeds`: [B, projection]
    pub pooled: Tensor,
}

impl ClipText {
    pub fn load(dir: &Path, device: &Device) -> Result<ClipText> {
        if !dir.is_dir() {
            return Err(Error::Input(format!(
                "the text encoder folder {} does not exist",
                dir.display()
            )));
        }
        let config = ClipConfig::from_dir(dir)?;
        let store = WeightStore::open(dir, device, DType::BF16)?;
        crate::model::inventory::clip(&config, &|k| store.contains(k), dir)?
            .check(dir, store.checkpoint())?;
        Ok(ClipText { config, store })
    }

    pub fn release(&self) {
        self.store.release_all();
    }

    /// Runs the encoder on `ids` (each of length S <= max positions).
    pub fn forward(&self, ids: &[Vec<u32>]) -> Result<ClipOutput> {
        let c = &self.config;
        let (b, s) = (ids.len(), ids[0].len());
        if ids.iter().any(|r| r.len() != s) || s > c.max_positions {
            return Err(Error::Input(format!(
                "CLIP: token sequences must all have the same length <= {}",
                c.max_positions
            )));
        }
        let h = c.hidden;
        let root = self.store.root();
        let outer = ClipOuter::load(&root, c)?;
        let flat: Vec<u32> = ids.concat();
        let tok = embed::embedding(&outer.token_embedding, &flat)?.reshape(&[b, s, h])?;
        let pos = outer.position_embedding.narrow(0, 0, s)?;
        let mut x = add_bcast(&tok, &pos)?; // [B, S, H]
        let mut penultimate = if c.layers == 1 { Some(x.clone()) } else { None };
        let opts = AttnOpts {
            causal: true,
            ..AttnOpts::new(c.heads, h / c.heads)
        };
        let layers = root.pp("text_model").pp("encoder").pp("layers");
        for i in 0..c.layers {
            let w = ClipLayer::load(&layers.pp(i), c)?;
            let hn = norm::layer_norm(&x, Some(&w.ln1.0), Some(&w.ln1.1), c.eps)?;
            let q = linear(&hn, &w.q)?;
            let k = linear(&hn, &w.k)?;
            let v = linear(&hn, &w.v)?;
            let o = attention(&[&q], &[&k], &[&v], &opts)?;
            x = add(&x, &linear(&o, &w.out)?)?;
            let hn = norm::layer_norm(&x, Some(&w.ln2.0), Some(&w.ln2.1), c.eps)?;
            let f = linear_text_act(&hn, &w.fc1, c.act)?;
            x = add(&x, &linear(&f, &w.fc2)?)?;
            if i + 2 == c.layers {
                penultimate = Some(x.clone());
            }
        }
        let fin = norm::layer_norm(
            &x,
            Some(&outer.final_norm.0),
            Some(&outer.final_norm.1),
            c.eps,
        )?;
        // EOS row of each sequence: [B, 1, H] -> [B, H].
        let rows: Vec<Tensor> = ids
            .iter()
            .enumerate()
            .map(|(bi, r)| {
                fin.narrow(0, bi, 1)?
                    .narrow(1, eos_position(r, c.eos_token_id), 1)
            })
            .collect::<Result<_>>()?;
        let refs: Vec<&Tensor> = rows.iter().collect();
        let eos = crate::ops::elementwise::concat(&refs, 0)?.reshape(&[b, h])?;
        let pooled = linear(&eos, &outer.projection)?;
        Ok(ClipOutput {
            penultimate: penultimate.unwrap(),
            pooled,
        })
    }
}

/// The weights outside the layer loop.
struct ClipOuter<S: WeightSource = Prefix> {
    token_embedding: S::Tensor,
    position_embedding: S::Tensor,
    /// (weight, bias)
    final_norm: (S::Tensor, S::Tensor),
    /// `text_projection` [projection, hidden], no bias.
    projection: S::Linear,
}

impl<S: WeightSource> ClipOuter<S> {
    fn load(root: &S, c: &ClipConfig) -> Result<ClipOuter<S>> {
        let h = c.hidden;
        let tm = root.pp("text_model");
        let emb = tm.pp("embeddings");
        Ok(ClipOuter {
            token_embedding: emb.tensor("token_embedding.weight", &[c.vocab, h])?,
            position_embedding: emb.tensor("position_embedding.weight", &[c.max_positions, h])?,
            final_norm: (
                tm.tensor("final_layer_norm.weight", &[h])?,
                tm.tensor("final_layer_norm.bias", &[h])?,
            ),
            projection: root.linear("text_projection", h, c.projection, false)?,
        })
    }
}

/// One encoder layer (`text_model.encoder.layers.{i}`).
struct ClipLayer<S: WeightSource = Prefix> {
    /// layer_norm1 (weight, bias)
    ln1: (S::Tensor, S::Tensor),
    q: S::Linear,
    k: S::Linear,
    v: S::Linear,
    out: S::Linear,
    ln2: (S::Tensor, S::Tensor),
    fc1: S::Linear,
    fc2: S::Linear,
}

impl<S: WeightSource> ClipLayer<S> {
    fn load(l: &S, c: &ClipConfig) -> Result<ClipLayer<S>> {
        let h = c.hidden;
        let norm = |n: &str| -> Result<(S::Tensor, S::Tensor)> {
            Ok((
                l.tensor(&format!("{n}.weight"), &[h])?,
                l.tensor(&format!("{n}.bias"), &[h])?,
            ))
        };
        let (a, m) = (l.pp("self_attn"), l.pp("mlp"));
        Ok(ClipLayer {
            ln1: norm("layer_norm1")?,
            q: a.linear("q_proj", h, h, true)?,
            k: a.linear("k_proj", h, h, true)?,
            v: a.linear("v_proj", h, h, true)?,
            out: a.linear("out_proj", h, h, true)?,
            ln2: norm("layer_norm2")?,
            fc1: m.linear("fc1", h, c.intermediate, true)?,
            fc2: m.linear("fc2", c.intermediate, h, true)?,
        })
    }
}

/// A CLIP encoder's checkpoint, read through `root` by the encoder's own loaders (run against
/// the recorder it is the description, `model::inventory::clip`).
pub fn describe<S: WeightSource>(root: &S, c: &ClipConfig) -> Result<()> {
    ClipOuter::load(root, c)?;
    let layers = root.pp("text_model").pp("encoder").pp("layers");
    for i in 0..c.layers {
        ClipLayer::load(&layers.pp(i), c)?;
    }
    Ok(())
}

/// transformers' pooled-token position: with `eos_token_id == 2` (legacy configs) the first
/// position of the highest id, else the first occurrence of `eos_token_id`.
pub fn eos_position(ids: &[u32], eos_token_id: u32) -> usize {
    if eos_token_id == 2 {
        let m = ids.iter().copied().max().unwrap_or(0);
        ids.iter().position(|&v| v == m).unwrap_or(0)
    } else {
        // `(ids == eos).int().argmax()`: 0 when the sequence has no EOS.
        ids.iter().position(|&v| v == eos_token_id).unwrap_or(0)
    }
}
