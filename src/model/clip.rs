//! CLIP text encoders (CLIP-L `text_encoder/`, OpenCLIP-bigG `text_encoder_2/`), spec §3:
//! pre-LayerNorm layers with a causal mask, quick-GELU (CLIP-L) or erf GELU (bigG); the
//! sequence output is the penultimate hidden state without the final norm; the pooled output
//! is the final-norm EOS token times the projection (EOS = first occurrence of the highest id
//! when the config's eos_token_id is 2, as transformers does, else the first EOS id).
use std::path::Path;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::ops::attention::{attention, AttnOpts};
use crate::ops::elementwise::{add, add_bcast};
use crate::ops::gemm::{linear, linear_act, Act};
use crate::ops::{embed, norm};
use crate::runtime::{DType, Device, Tensor, WeightStore};

#[derive(Clone, Debug)]
pub struct ClipConfig {
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    pub max_positions: usize,
    pub projection: usize,
    pub eps: f32,
    pub act: Act,
    pub eos_token_id: u32,
    pub vocab: usize,
}

fn cfg_usize(v: &serde_json::Value, k: &str, path: &Path) -> Result<usize> {
    v.get(k)
        .and_then(|x| x.as_u64())
        .map(|x| x as usize)
        .ok_or_else(|| Error::Weights(format!("{}: missing integer {k}", path.display())))
}

impl ClipConfig {
    pub fn from_dir(dir: &Path) -> Result<ClipConfig> {
        let path = dir.join("config.json");
        let text = std::fs::read(&path)
            .map_err(|e| Error::Input(format!("cannot read {}: {e}", path.display())))?;
        let v: serde_json::Value = serde_json::from_slice(&text)
            .map_err(|e| Error::Input(format!("{} is not valid JSON: {e}", path.display())))?;
        // CLIPTextModelWithProjection configs may nest the text config.
        let v = v.get("text_config").cloned().unwrap_or(v);
        let act = match v
            .get("hidden_act")
            .and_then(|a| a.as_str())
            .unwrap_or("quick_gelu")
        {
            "quick_gelu" => Act::QuickGelu,
            "gelu" => Act::GeluErf,
            "gelu_new" | "gelu_pytorch_tanh" => Act::GeluTanh,
            other => {
                return Err(Error::Weights(format!(
                    "{}: unsupported hidden_act {other:?}",
                    path.display()
                )))
            }
        };
        Ok(ClipConfig {
            hidden: cfg_usize(&v, "hidden_size", &path)?,
            intermediate: cfg_usize(&v, "intermediate_size", &path)?,
            layers: cfg_usize(&v, "num_hidden_layers", &path)?,
            heads: cfg_usize(&v, "num_attention_heads", &path)?,
            max_positions: v
                .get("max_position_embeddings")
                .and_then(|x| x.as_u64())
                .unwrap_or(77) as usize,
            projection: cfg_usize(&v, "projection_dim", &path)?,
            eps: v
                .get("layer_norm_eps")
                .and_then(|x| x.as_f64())
                .unwrap_or(1e-5) as f32,
            act,
            eos_token_id: v.get("eos_token_id").and_then(|x| x.as_u64()).unwrap_or(2) as u32,
            vocab: cfg_usize(&v, "vocab_size", &path)?,
        })
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
        let rows = store
            .shape_of("text_model.embeddings.token_embedding.weight")
            .ok_or_else(|| {
                Error::Weights(format!(
                    "{}: no text_model.embeddings.token_embedding.weight: not a CLIP text encoder",
                    dir.display()
                ))
            })?;
        if rows != [config.vocab, config.hidden] {
            return Err(Error::Weights(format!(
                "{}: token embedding is {rows:?} but config.json says vocab {} x hidden {}",
                dir.display(),
                config.vocab,
                config.hidden
            )));
        }
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
        let tm = self.store.root().pp("text_model");
        let emb = tm.pp("embeddings");
        let flat: Vec<u32> = ids.concat();
        let tok = embed::embedding(&emb.tensor("token_embedding.weight", &[c.vocab, h])?, &flat)?
            .reshape(&[b, s, h])?;
        let pos = emb
            .tensor("position_embedding.weight", &[c.max_positions, h])?
            .narrow(0, 0, s)?;
        let mut x = add_bcast(&tok, &pos)?; // [B, S, H]
        let mut penultimate = if c.layers == 1 { Some(x.clone()) } else { None };
        let opts = AttnOpts {
            causal: true,
            ..AttnOpts::new(c.heads, h / c.heads)
        };
        let layers = tm.pp("encoder").pp("layers");
        for i in 0..c.layers {
            let l = layers.pp(i);
            let hn = norm::layer_norm(
                &x,
                Some(&l.tensor("layer_norm1.weight", &[h])?),
                Some(&l.tensor("layer_norm1.bias", &[h])?),
                c.eps,
            )?;
            let a = l.pp("self_attn");
            let q = linear(&hn, &a.linear("q_proj", h, h, true)?)?;
            let k = linear(&hn, &a.linear("k_proj", h, h, true)?)?;
            let v = linear(&hn, &a.linear("v_proj", h, h, true)?)?;
            let o = attention(&[&q], &[&k], &[&v], &opts)?;
            x = add(&x, &linear(&o, &a.linear("out_proj", h, h, true)?)?)?;
            let hn = norm::layer_norm(
                &x,
                Some(&l.tensor("layer_norm2.weight", &[h])?),
                Some(&l.tensor("layer_norm2.bias", &[h])?),
                c.eps,
            )?;
            let m = l.pp("mlp");
            let f = linear_act(&hn, &m.linear("fc1", h, c.intermediate, true)?, c.act)?;
            x = add(&x, &linear(&f, &m.linear("fc2", c.intermediate, h, true)?)?)?;
            if i + 2 == c.layers {
                penultimate = Some(x.clone());
            }
        }
        let fin = norm::layer_norm(
            &x,
            Some(&tm.tensor("final_layer_norm.weight", &[h])?),
            Some(&tm.tensor("final_layer_norm.bias", &[h])?),
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
        let proj = self
            .store
            .root()
            .linear("text_projection", h, c.projection, false)?;
        let pooled = linear(&eos, &proj)?;
        Ok(ClipOutput {
            penultimate: penultimate.unwrap(),
            pooled,
        })
    }
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
