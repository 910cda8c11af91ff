//! Which linears the INT8 weight-only mode (`--quantize int8`, `contentv quantize`) applies to:
//! not a list of names here, but the [`LinearTags::int8`](crate::runtime::weights::LinearTags)
//! tags the loaders put on their linears (the transformer's attention and MLP linears, T5's
//! attention and feed-forward linears), as the component's recorded description
//! (`model::inventory`) lists them. The loaders hand them to the weight store as its
//! quantize-on-load policy; `contentv quantize` asks [`int8_linears`] for the linears of a
//! component folder. Everything else stays in bf16 / f32: norms (and the attention's q/k
//! RMSNorms), adaLN modulation, embeddings (T5's relative attention bias included), the context
//! embedder, the final layer, CLIP and the VAE.
use std::collections::BTreeSet;
use std::path::Path;

use crate::error::Result;

/// The linears (full keys without `.weight`) of the component folder `dir` (named as in the
/// diffusers layout: `transformer`, `text_encoder_3`, ...) that INT8 applies to: the INT8 tags
/// of its description; empty for the components without INT8 linears (CLIP, the VAE).
pub fn int8_linears(dir: &Path) -> Result<BTreeSet<String>> {
    let folder = dir.file_name().and_then(|f| f.to_str()).unwrap_or("");
    match folder {
        "transformer" | "text_encoder_3" => {
            Ok(crate::model::inventory::for_component(folder, dir)?.int8_linears())
        }
        _ => Ok(BTreeSet::new()),
    }
}

#[cfg(test)]
mod tests {
    use crate::model::inventory::Recorder;
    use crate::model::mmdit::{describe, TransformerConfig};
    use crate::model::t5::T5Config;

    #[test]
    fn tags() {
        let c = TransformerConfig::contentv_8b();
        let inv = Recorder::record(&|_| false, |r| describe(r, &c)).unwrap();
        let q = inv.int8_linears();
        let int8_applies = |n: &str| q.contains(n);
        assert!(int8_applies("transformer_blocks.3.attn.to_q"));
        assert!(
            int8_applies("transformer_blocks.36.ff_context.net.2")
                && int8_applies("transformer_blocks.0.ff.net.0.proj")
                && int8_applies("transformer_blocks.37.ff.net.2")
        );
        assert!(
            !int8_applies("transformer_blocks.37.ff_context.net.2"),
            "the last block has no text MLP"
        );
        assert!(
            !int8_applies("transformer_blocks.3.norm1.linear")
                && !int8_applies("norm_out.linear")
                && !int8_applies("context_embedder")
        );
        assert!(
            !int8_applies("transformer_blocks.3.attn.norm_q")
                && !int8_applies("transformer_blocks.3.attn.norm_added_k")
        );
        assert!(
            int8_applies("transformer_blocks.36.attn.add_v_proj")
                && int8_applies("transformer_blocks.36.attn.to_add_out")
        );
        for n in [
            "pos_embed.proj",
            "time_text_embed.timestep_embedder.linear_1",
            "context_embedder",
            "proj_out",
            "norm_out.linear",
        ] {
            assert!(!int8_applies(n), "{n}");
        }
        // 38 blocks: 8 attention + 4 MLP linears each, the last 2 attention + 2 MLP fewer.
        assert_eq!(q.len(), 38 * 12 - 4);
        assert_eq!(
            inv.per_run_linears().len(),
            2 * 38,
            "norm1 and norm1_context of every block"
        );

        let t5 = T5Config::from_json(
            br#"{"d_model": 64, "num_layers": 3, "feed_forward_proj": "gated-gelu"}"#,
            std::path::Path::new("te3/config.json"),
        )
        .unwrap();
        let inv = Recorder::record(&|_| false, |r| crate::model::t5::describe(r, &t5)).unwrap();
        let q = inv.int8_linears();
        assert!(
            q.contains("encoder.block.0.layer.0.SelfAttention.q")
                && q.contains("encoder.block.2.layer.0.SelfAttention.o")
                && q.contains("encoder.block.1.layer.1.DenseReluDense.wo")
                && q.contains("encoder.block.1.layer.1.DenseReluDense.wi_1")
        );
        assert!(
            !q.iter()
                .any(|n| n.contains("relative_attention_bias") || n.contains("norm")),
            "{q:?}"
        );
        assert_eq!(q.len(), 3 * 7);
    }
}
