//! T5 v1.1 encoder (`text_encoder_3/`, T5-XXL), spec §3: RMSNorm (f32 variance, weight only),
//! self-attention with unscaled scores plus the bucketed relative position bias of layer 0
//! shared by all layers, gated tanh-GELU MLP, final RMSNorm, no attention mask. Layers run
//! through the residency layer (resident or streamed).
use std::path::Path;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::ops::attention::{attention, AttnOpts};
use crate::ops::elementwise::{add, mul};
use crate::ops::gemm::{linear, linear_act, Act};
use crate::ops::{embed, norm};
use crate::runtime::residency::{MemoryOptions, Residency};
use crate::runtime::{DType, Device, Tensor, WeightStore};

#[derive(Clone, Debug)]
pub struct T5Config {
    pub d_model: usize,
    pub d_kv: usize,
    pub d_ff: usize,
    pub layers: usize,
    pub heads: usize,
    pub buckets: usize,
    pub max_distance: usize,
    pub eps: f32,
    pub vocab: usize,
    pub act: Act,
}

impl T5Config {
    pub fn from_dir(dir: &Path) -> Result<T5Config> {
        let path = dir.join("config.json");
        let text = std::fs::read(&path)
            .map_err(|e| Error::Input(format!("cannot read {}: {e}", path.display())))?;
        let v: serde_json::Value = serde_json::from_slice(&text)
            .map_err(|e| Error::Input(format!("{} is not valid JSON: {e}", path.display())))?;
        let u = |k: &str| {
            v.get(k)
                .and_then(|x| x.as_u64())
                .map(|x| x as usize)
                .ok_or_else(|| Error::Weights(format!("{}: missing integer {k}", path.display())))
        };
        let proj = v
            .get("feed_forward_proj")
            .and_then(|x| x.as_str())
            .unwrap_or("gated-gelu");
        let act = match proj {
            "gated-gelu" => Act::GeluTanh,
            "gated-silu" => Act::Silu,
            other => {
                return Err(Error::Weights(format!(
                    "{}: feed_forward_proj {other:?} is not a gated T5 v1.1 encoder",
                    path.display()
                )))
            }
        };
        Ok(T5Config {
            d_model: u("d_model")?,
            d_kv: u("d_kv")?,
            d_ff: u("d_ff")?,
            layers: u("num_layers")?,
            heads: u("num_heads")?,
            buckets: v
                .get("relative_attention_num_buckets")
                .and_then(|x| x.as_u64())
                .unwrap_or(32) as usize,
            max_distance: v
                .get("relative_attention_max_distance")
                .and_then(|x| x.as_u64())
                .unwrap_or(128) as usize,
            eps: v
                .get("layer_norm_epsilon")
                .and_then(|x| x.as_f64())
                .unwrap_or(1e-6) as f32,
            vocab: u("vocab_size")?,
            act,
        })
    }
}

pub struct T5Encoder {
    pub config: T5Config,
    store: Arc<WeightStore>,
    residency: Residency,
    embed_key: &'static str,
    device: Device,
}

/// Bidirectional relative position bucket of `rel = key - query` (transformers'
/// `_relative_position_bucket`, f32 log as PyTorch computes it).
pub fn relative_bucket(rel: i64, buckets: usize, max_distance: usize) -> usize {
    let nb = buckets / 2;
    let mut ret = if rel > 0 { nb } else { 0 };
    let n = rel.unsigned_abs() as usize;
    let max_exact = nb / 2;
    if n < max_exact {
        ret += n;
    } else {
        let v = (n as f32 / max_exact as f32).ln() / (max_distance as f32 / max_exact as f32).ln()
            * (nb - max_exact) as f32;
        ret += (max_exact + v as usize).min(nb - 1);
    }
    ret
}

impl T5Encoder {
    pub fn load(dir: &Path, device: &Device, mem: &MemoryOptions) -> Result<T5Encoder> {
        if !dir.is_dir() {
            return Err(Error::Input(format!(
                "the T5 encoder folder {} does not exist",
                dir.display()
            )));
        }
        let config = T5Config::from_dir(dir)?;
        let store = WeightStore::open(dir, device, DType::BF16)?;
        if mem.int8 {
            store.set_int8(Some(crate::runtime::weights::Int8Policy::default()));
        }
        let embed_key = if store.contains("shared.weight") {
            "shared.weight"
        } else if store.contains("encoder.embed_tokens.weight") {
            "encoder.embed_tokens.weight"
        } else {
            return Err(Error::Weights(format!(
                "{}: neither shared.weight nor encoder.embed_tokens.weight: not a T5 encoder",
                dir.display()
            )));
        };
        let shape = store.shape_of(embed_key).unwrap();
        if shape.len() != 2 || shape[1] != config.d_model {
            return Err(Error::Weights(format!(
                "{}: {embed_key} is {shape:?}, config d_model is {}",
                dir.display(),
                config.d_model
            )));
        }
        let residency = if mem.streams() {
            Residency::streamed(&store, "encoder.block", config.layers, None)?
        } else {
            Residency::resident(&store, "encoder.block", config.layers)
        };
        Ok(T5Encoder {
            config,
            store,
            residency,
            embed_key,
            device: device.clone(),
        })
    }

    pub fn release(&self) {
        self.store.release_all();
    }

    /// Rows of the embedding table (the largest token id + 1 the tokenizer may produce).
    pub fn vocab_rows(&self) -> usize {
        self.store
            .shape_of(self.embed_key)
            .map(|s| s[0])
            .unwrap_or(0)
    }

    /// The position bias [H, S, S] for S tokens from layer 0's table [buckets, H].
    fn position_bias(&self, s: usize) -> Result<Tensor> {
        let c = &self.config;
        let key = "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight";
        let table = self.store.host_view(key)?.to_vec_f32()?;
        if table.len() != c.buckets * c.heads {
            return Err(Error::Weights(format!(
                "{}: {key} has {} values, expected {} x {}",
                self.store.dir().display(),
                table.len(),
                c.buckets,
                c.heads
            )));
        }
        let mut bias = vec![0f32; c.heads * s * s];
        for i in 0..s {
            for j in 0..s {
                let bk = relative_bucket(j as i64 - i as i64, c.buckets, c.max_distance);
                for h in 0..c.heads {
                    bias[(h * s + i) * s + j] = table[bk * c.heads + h];
                }
            }
        }
        // The reference adds the bias in the compute dtype.
        let t = Tensor::from_f32(bias, &[c.heads, s, s], &Device::Cpu)?;
        let t = if self.device.is_cuda() {
            t.to_dtype(self.store.dtype())?.to_dtype(DType::F32)?
        } else {
            t
        };
        t.to_device(&self.device)
    }

    /// `last_hidden_state` [B, S, d_model] for token sequences of equal length.
    pub fn forward(&self, ids: &[Vec<u32>]) -> Result<Tensor> {
        let c = &self.config;
        let (b, s) = (ids.len(), ids[0].len());
        if ids.iter().any(|r| r.len() != s) {
            return Err(Error::Input(
                "T5: token sequences must have the same length".into(),
            ));
        }
        let (d, inner) = (c.d_model, c.heads * c.d_kv);
        let root = self.store.root();
        let table = root.tensor(self.embed_key, &[self.vocab_rows(), d])?;
        let mut x = embed::embedding(&table, &ids.concat())?.reshape(&[b, s, d])?;
        let bias = self.position_bias(s)?;
        let opts = AttnOpts {
            heads: c.heads,
            scale: 1.0,
            causal: false,
            bias: Some(&bias),
        };
        let blocks = root.pp("encoder").pp("block");
        for i in 0..c.layers {
            let _layer = self.residency.prepare(i)?;
            let l = blocks.pp(i).pp("layer");
            let (a, f) = (l.pp(0), l.pp(1));
            let h = norm::rms_norm(&x, Some(&a.tensor("layer_norm.weight", &[d])?), c.eps)?;
            let sa = a.pp("SelfAttention");
            let q = linear(&h, &sa.linear("q", d, inner, false)?)?;
            let k = linear(&h, &sa.linear("k", d, inner, false)?)?;
            let v = linear(&h, &sa.linear("v", d, inner, false)?)?;
            let o = attention(&[&q], &[&k], &[&v], &opts)?;
            x = add(&x, &linear(&o, &sa.linear("o", inner, d, false)?)?)?;
            let h = norm::rms_norm(&x, Some(&f.tensor("layer_norm.weight", &[d])?), c.eps)?;
            let ff = f.pp("DenseReluDense");
            let g = linear_act(&h, &ff.linear("wi_0", d, c.d_ff, false)?, c.act)?;
            let u = linear(&h, &ff.linear("wi_1", d, c.d_ff, false)?)?;
            x = add(
                &x,
                &linear(&mul(&g, &u)?, &ff.linear("wo", c.d_ff, d, false)?)?,
            )?;
        }
        norm::rms_norm(
            &x,
            Some(&root.tensor("encoder.final_layer_norm.weight", &[d])?),
            c.eps,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::relative_bucket;

    #[test]
    fn buckets_match_transformers() {
        // Values of transformers' _relative_position_bucket(bidirectional, 32, 128).
        let cases = [
            (0, 0),
            (1, 17),
            (-1, 1),
            (7, 23),
            (-7, 7),
            (8, 24),
            (-8, 8),
            (12, 25),
            (-20, 10),
            (50, 29),
            (-127, 15),
            (200, 31),
            (-255, 15),
        ];
        for (rel, want) in cases {
            assert_eq!(relative_bucket(rel, 32, 128), want, "rel {rel}");
        }
    }
}
