//! T5 encoder (`text_encoder_3/`, T5 v1.1 XXL in ContentV), docs/spec.md §3: RMSNorm (f32 variance,
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
use crate::runtime::weights::{LinearTags, WeightSource};
use crate::runtime::{DType, Device, Prefix, Tensor, WeightStore};

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
        let desc = crate::model::inventory::t5(&config, &|k| store.contains(k), dir)?;
        desc.check(dir, store.checkpoint())?;
        if mem.int8 {
            store.set_int8(Some(desc.int8_policy()));
        }
        let embed_key = crate::model::inventory::t5_embed_key(&|k| store.contains(k));
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
        let key = REL_BIAS;
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
        let d = c.d_model;
        let root = self.store.root();
        let outer = T5Outer::load(&root, c)?;
        let mut x = embed::embedding(&outer.embed, &ids.concat())?.reshape(&[b, s, d])?;
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
            let w = T5Layer::load(&blocks.pp(i), c)?;
            let h = norm::rms_norm(&x, Some(&w.attn_norm), c.eps)?;
            let q = linear(&h, &w.q)?;
            let k = linear(&h, &w.k)?;
            let v = linear(&h, &w.v)?;
            let o = attention(&[&q], &[&k], &[&v], &opts)?;
            x = add(&x, &linear(&o, &w.o)?)?;
            let h = norm::rms_norm(&x, Some(&w.ff_norm), c.eps)?;
            let hidden = match &w.wi_1 {
                Some(wi_1) => {
                    let g = linear_text_act(&h, &w.wi, c.act)?;
                    let u = linear(&h, wi_1)?;
                    mul(&g, &u)?
                }
                None => linear_text_act(&h, &w.wi, c.act)?,
            };
            x = add(&x, &linear(&hidden, &w.wo)?)?;
        }
        norm::rms_norm(&x, Some(&outer.final_norm), c.eps)
    }
}

/// The relative position bias table of layer 0 [buckets, heads], shared by every layer; read
/// from the host map ([`T5Encoder::position_bias`]).
const REL_BIAS: &str = "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight";

/// The weights outside the block loop.
struct T5Outer<S: WeightSource = Prefix> {
    /// `shared.weight` or `encoder.embed_tokens.weight` [vocab, d_model].
    embed: S::Tensor,
    final_norm: S::Tensor,
}

impl<S: WeightSource> T5Outer<S> {
    fn load(root: &S, c: &T5Config) -> Result<T5Outer<S>> {
        let key = crate::model::inventory::t5_embed_key(&|k| root.contains(k));
        Ok(T5Outer {
            embed: root.tensor(key, &[c.vocab, c.d_model])?,
            final_norm: root.tensor("encoder.final_layer_norm.weight", &[c.d_model])?,
        })
    }
}

/// One T5 block (`encoder.block.{i}`): self-attention and feed-forward, each after an RMSNorm.
/// The attention and feed-forward linears are tagged INT8 (`--quantize int8`).
struct T5Layer<S: WeightSource = Prefix> {
    attn_norm: S::Tensor,
    q: S::Linear,
    k: S::Linear,
    v: S::Linear,
    o: S::Linear,
    ff_norm: S::Tensor,
    /// `wi_0` when gated (with `wi_1`), else `wi`.
    wi: S::Linear,
    wi_1: Option<S::Linear>,
    wo: S::Linear,
}

impl<S: WeightSource> T5Layer<S> {
    fn load(block: &S, c: &T5Config) -> Result<T5Layer<S>> {
        let (d, inner) = (c.d_model, c.heads * c.d_kv);
        let l = block.pp("layer");
        let (a, f) = (l.pp(0), l.pp(1));
        let (sa, ff) = (a.pp("SelfAttention"), f.pp("DenseReluDense"));
        let q8 = LinearTags::INT8;
        let (wi, wi_1) = if c.gated {
            (
                ff.linear_tagged("wi_0", d, c.d_ff, false, q8)?,
                Some(ff.linear_tagged("wi_1", d, c.d_ff, false, q8)?),
            )
        } else {
            (ff.linear_tagged("wi", d, c.d_ff, false, q8)?, None)
        };
        Ok(T5Layer {
            attn_norm: a.tensor("layer_norm.weight", &[d])?,
            q: sa.linear_tagged("q", d, inner, false, q8)?,
            k: sa.linear_tagged("k", d, inner, false, q8)?,
            v: sa.linear_tagged("v", d, inner, false, q8)?,
            o: sa.linear_tagged("o", inner, d, false, q8)?,
            ff_norm: f.tensor("layer_norm.weight", &[d])?,
            wi,
            wi_1,
            wo: ff.linear_tagged("wo", c.d_ff, d, false, q8)?,
        })
    }
}

/// The T5 encoder's checkpoint, read through `root` by the encoder's own loaders (run against
/// the recorder it is the description, `model::inventory::t5`).
pub fn describe<S: WeightSource>(root: &S, c: &T5Config) -> Result<()> {
    T5Outer::load(root, c)?;
    root.tensor(REL_BIAS, &[c.buckets, c.heads])?;
    let blocks = root.pp("encoder").pp("block");
    for i in 0..c.layers {
        T5Layer::load(&blocks.pp(i), c)?;
    }
    Ok(())
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
