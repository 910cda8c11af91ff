//! T5 encoder (`text_encoder_3/`, T5 v1.1 XXL in ContentV), spec §3: RMSNorm (f32 variance,
//! weight only), self-attention with unscaled scores plus the bucketed relative position bias
//! of layer 0 shared by all layers, feed-forward per `feed_forward_proj` (gated tanh-GELU for
//! v1.1; non-gated ReLU for v1.0; any supported activation, see [`T5Config`]), final RMSNorm, no
//! attention mask. Layers run through the residency layer (resident or streamed).
use std::path::Path;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::io::config::ConfigJson;
use crate::model::clip::{linear_text_act, TextAct};
use crate::ops::attention::{attention, AttnOpts};
use crate::ops::elementwise::{add, mul};
use crate::ops::gemm::linear;
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
    /// The feed-forward activation (`dense_act_fn`).
    pub act: TextAct,
    /// Gated feed-forward (`wi_0`, `wi_1`, `wo`; T5 v1.1) or not (`wi`, `wo`; T5 v1.0).
    pub gated: bool,
}

impl T5Config {
    /// Reads `dir/config.json` like transformers' `T5Config`: missing keys take its defaults
    /// (note `feed_forward_proj` defaults to "relu", non-gated), `feed_forward_proj` is
    /// "{act}" or "gated-{act}" ("gated-gelu" means gelu_new), and explicit `dense_act_fn` /
    /// `is_gated_act` keys override what it implies (transformers sets them last).
    pub fn from_dir(dir: &Path) -> Result<T5Config> {
        let path = dir.join("config.json");
        let text = std::fs::read(&path)
            .map_err(|e| Error::Input(format!("cannot read {}: {e}", path.display())))?;
        Self::from_json(&text, &path)
    }

    /// Parses config.json text; `path` names the file in errors.
    pub fn from_json(text: &[u8], path: &Path) -> Result<T5Config> {
        let cfg = ConfigJson::parse(text, &path.display().to_string())?;
        let bad = |k: &str, what: &str| cfg.bad(k, what);
        let u = |k: &str, def: usize| cfg.usize_or(k, def);
        let proj = cfg.str_or("feed_forward_proj", "relu")?;
        let parts: Vec<&str> = proj.split('-').collect();
        if parts.len() > 2 || (parts.len() > 1 && parts[0] != "gated") {
            return Err(bad(
                "feed_forward_proj",
                &format!("is {proj:?}: must be \"{{ACT_FN}}\" or \"gated-{{ACT_FN}}\" (transformers refuses it too)"),
            ));
        }
        let mut act_name = if proj == "gated-gelu" {
            "gelu_new"
        } else {
            parts[parts.len() - 1]
        };
        let mut gated = parts[0] == "gated";
        act_name = cfg.str_or("dense_act_fn", act_name)?;
        gated = cfg.bool_or("is_gated_act", gated)?;
        let act = TextAct::from_name(act_name).ok_or_else(|| {
            bad(
                "feed_forward_proj",
                &format!(
                    "{proj:?} (dense_act_fn {act_name:?}): activation not supported (supported: {})",
                    TextAct::NAMES
                ),
            )
        })?;
        let eps = cfg.f64_or("layer_norm_epsilon", 1e-6)? as f32;
        let c = T5Config {
            d_model: u("d_model", 512)?,
            d_kv: u("d_kv", 64)?,
            d_ff: u("d_ff", 2048)?,
            layers: u("num_layers", 6)?,
            heads: u("num_heads", 8)?,
            buckets: u("relative_attention_num_buckets", 32)?,
            max_distance: u("relative_attention_max_distance", 128)?,
            eps,
            vocab: u("vocab_size", 32128)?,
            act,
            gated,
        };
        for (k, x) in [
            ("d_model", c.d_model),
            ("d_kv", c.d_kv),
            ("d_ff", c.d_ff),
            ("num_layers", c.layers),
            ("num_heads", c.heads),
        ] {
            if x == 0 {
                return Err(bad(k, "must be > 0"));
            }
        }
        crate::model::inventory::t5_bounds(cfg.origin(), &c)?;
        // Bidirectional buckets: half per direction, half of those exact, the rest logarithmic
        // up to max_distance. Fewer than 4 buckets divide by zero in transformers.
        if c.buckets < 4 {
            return Err(bad(
                "relative_attention_num_buckets",
                &format!("is {}: at least 4 are needed", c.buckets),
            ));
        }
        Ok(c)
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
/// `_relative_position_bucket`, f32 log as PyTorch computes it). Clamped at 0; see
/// [`relative_bucket_signed`] for the exact value.
pub fn relative_bucket(rel: i64, buckets: usize, max_distance: usize) -> usize {
    relative_bucket_signed(rel, buckets, max_distance).max(0) as usize
}

/// transformers' `_relative_position_bucket(bidirectional=True)` exactly, including its
/// negative buckets when `max_distance` is below `buckets / 4` (transformers then fails in the
/// embedding lookup; [`T5Encoder`] reports an error).
pub fn relative_bucket_signed(rel: i64, buckets: usize, max_distance: usize) -> i64 {
    let nb = (buckets / 2) as i64;
    let ret = if rel > 0 { nb } else { 0 };
    let n = rel.unsigned_abs() as i64;
    let max_exact = nb / 2;
    if n < max_exact {
        return ret + n;
    }
    // torch.log(f32(n) / max_exact) / math.log(max_distance / max_exact) * (nb - max_exact):
    // the f32 tensor op meets the Python (f64) log rounded to f32.
    let denom = (max_distance as f64 / max_exact as f64).ln() as f32;
    let v = (n as f32 / max_exact as f32).ln() / denom * (nb - max_exact) as f32;
    // `.to(torch.long)` truncates toward zero; non-finite values become i64::MIN (x86).
    let t = if v.is_finite() && v.abs() < 9.0e18 {
        v as i64
    } else {
        i64::MIN
    };
    ret + max_exact.saturating_add(t).min(nb - 1)
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
            store.set_int8(Some(crate::runtime::weights::Int8Policy {
                group: None,
                quantizable: crate::model::int8::int8_applies,
            }));
        }
        crate::model::inventory::t5(&config, &|k| store.contains(k), dir)?
            .check(dir, store.checkpoint())?;
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
        // The other shapes that follow from config.json, checked up front for a clear message.
        let (d, inner) = (config.d_model, config.heads * config.d_kv);
        let b0 = "encoder.block.0.layer";
        let mut want = vec![
            (
                format!("{b0}.0.SelfAttention.relative_attention_bias.weight"),
                vec![config.buckets, config.heads],
                "relative_attention_num_buckets x num_heads",
            ),
            (
                format!("{b0}.0.SelfAttention.q.weight"),
                vec![inner, d],
                "num_heads * d_kv x d_model",
            ),
            (
                format!("{b0}.0.SelfAttention.o.weight"),
                vec![d, inner],
                "d_model x num_heads * d_kv",
            ),
        ];
        let ffn = if config.gated {
            ["wi_0", "wi_1"].as_slice()
        } else {
            ["wi"].as_slice()
        };
        for w in ffn {
            want.push((
                format!("{b0}.1.DenseReluDense.{w}.weight"),
                vec![config.d_ff, d],
                "d_ff x d_model",
            ));
        }
        for (key, shape, keys) in want {
            match store.shape_of(&key) {
                Some(s) if s == shape => {}
                Some(s) => {
                    return Err(Error::Weights(format!(
                        "{}: {key} is {s:?} but config.json says {keys} = {shape:?}",
                        dir.display()
                    )))
                }
                None => {
                    return Err(Error::Weights(format!(
                        "{}: tensor {key} is missing; config.json (feed_forward_proj / is_gated_act: {} feed-forward) does not match the checkpoint",
                        dir.display(),
                        if config.gated { "gated" } else { "non-gated" }
                    )))
                }
            }
        }
        let last = format!(
            "encoder.block.{}.layer.0.layer_norm.weight",
            config.layers - 1
        );
        if !store.contains(&last) {
            return Err(Error::Weights(format!(
                "{}: the checkpoint has fewer blocks than num_layers = {} in config.json",
                dir.display(),
                config.layers
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
                let bk = relative_bucket_signed(j as i64 - i as i64, c.buckets, c.max_distance);
                if bk < 0 || bk as usize >= c.buckets {
                    return Err(Error::Weights(format!(
                        "{}: relative_attention_max_distance {} is too small for relative_attention_num_buckets {}: \
                         relative position {} falls in bucket {bk} (transformers fails here too)",
                        self.store.dir().join("config.json").display(),
                        c.max_distance,
                        c.buckets,
                        j as i64 - i as i64
                    )));
                }
                let bk = bk as usize;
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
            kernel: crate::ops::attention::AttnKernel::Auto,
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
            let hidden = if c.gated {
                let g = linear_text_act(&h, &ff.linear("wi_0", d, c.d_ff, false)?, c.act)?;
                let u = linear(&h, &ff.linear("wi_1", d, c.d_ff, false)?)?;
                mul(&g, &u)?
            } else {
                linear_text_act(&h, &ff.linear("wi", d, c.d_ff, false)?, c.act)?
            };
            x = add(&x, &linear(&hidden, &ff.linear("wo", c.d_ff, d, false)?)?)?;
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
    use super::{relative_bucket, relative_bucket_signed};

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

    #[test]
    fn buckets_of_other_configs_match_transformers() {
        // (buckets, max_distance, rel, transformers' value); 33 buckets: odd; 16 / 3 and 32 / 8:
        // max_distance <= buckets / 4 gives transformers' degenerate (negative, NaN) buckets.
        let cases: [(usize, usize, i64, i64); 17] = [
            (33, 100, -2, 2),
            (33, 100, 8, 24),
            (33, 100, 28, 27),
            (33, 100, 48, 29),
            (33, 100, 97, 31),
            (33, 100, 398, 31),
            (16, 3, -400, -60),
            (16, 3, -399, -59),
            (16, 3, 4, 12),
            (16, 3, 5, 9),
            (16, 3, 7, 5),
            (16, 3, 8, 3),
            (16, 3, 14, -5),
            (32, 8, -2, 2),
            (32, 8, 6, 22),
            (32, 8, 7, 23),
            (32, 8, 8, -9223372036854775784),
        ];
        for (nb, md, rel, want) in cases {
            assert_eq!(
                relative_bucket_signed(rel, nb, md),
                want,
                "{nb} buckets, max distance {md}, rel {rel}"
            );
        }
    }
}
