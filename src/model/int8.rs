//! Which linears the INT8 weight-only mode (`--quantize int8`, `contentv quantize`) applies to:
//! declared here by the model, handed to the weight store as its quantize-on-load predicate
//! (`Int8Policy::quantizable`) and used by `contentv quantize` to write a pre-quantized
//! checkpoint. The runtime itself knows no checkpoint key names.

/// Which linears of a checkpoint INT8 applies to: the transformer's attention and MLP linears
/// (`transformer_blocks.{i}.attn.{to_q,to_k,to_v,add_q_proj,add_k_proj,add_v_proj,to_out.0,
/// to_add_out}`, `ff.net.{0.proj,2}`, `ff_context.net.{0.proj,2}`) and T5's
/// (`encoder.block.{i}.layer.0.SelfAttention.{q,k,v,o}`, `layer.1.DenseReluDense.{wi_0,wi_1,
/// wi,wo}`). Everything else stays in bf16 / f32: norms (and the attention's q/k RMSNorms),
/// adaLN modulation, embeddings (T5's relative attention bias included), the context embedder,
/// the final layer, CLIP and the VAE. `linear_name` is the key without `.weight`.
pub fn int8_applies(linear_name: &str) -> bool {
    const ATTN: [&str; 8] = [
        "to_q",
        "to_k",
        "to_v",
        "add_q_proj",
        "add_k_proj",
        "add_v_proj",
        "to_out.0",
        "to_add_out",
    ];
    const FF: [&str; 2] = ["0.proj", "2"];
    const T5_ATTN: [&str; 4] = ["q", "k", "v", "o"];
    const T5_FF: [&str; 4] = ["wi_0", "wi_1", "wi", "wo"];
    // `<prefix>.<index>.<rest>` with a numeric index.
    fn block<'a>(name: &'a str, prefix: &str) -> Option<&'a str> {
        let rest = name.strip_prefix(prefix)?;
        let (idx, rest) = rest.split_once('.')?;
        (!idx.is_empty() && idx.bytes().all(|b| b.is_ascii_digit())).then_some(rest)
    }
    if let Some(rest) = block(linear_name, "transformer_blocks.") {
        if let Some(l) = rest.strip_prefix("attn.") {
            return ATTN.contains(&l);
        }
        if let Some(l) = rest
            .strip_prefix("ff.net.")
            .or_else(|| rest.strip_prefix("ff_context.net."))
        {
            return FF.contains(&l);
        }
        return false;
    }
    if let Some(rest) = block(linear_name, "encoder.block.") {
        if let Some(l) = rest.strip_prefix("layer.0.SelfAttention.") {
            return T5_ATTN.contains(&l);
        }
        if let Some(l) = rest.strip_prefix("layer.1.DenseReluDense.") {
            return T5_FF.contains(&l);
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy() {
        assert!(int8_applies("transformer_blocks.3.attn.to_q"));
        assert!(
            int8_applies("transformer_blocks.37.ff_context.net.2")
                && int8_applies("transformer_blocks.0.ff.net.0.proj")
        );
        assert!(
            !int8_applies("transformer_blocks.3.norm1.linear")
                && !int8_applies("norm_out.linear")
                && !int8_applies("context_embedder")
        );
        assert!(
            int8_applies("encoder.block.5.layer.1.DenseReluDense.wo")
                && !int8_applies("text_model.encoder.layers.0.mlp.fc1")
        );
        assert!(
            int8_applies("encoder.block.0.layer.0.SelfAttention.q")
                && int8_applies("encoder.block.23.layer.0.SelfAttention.o")
        );
        assert!(
            !int8_applies("encoder.block.0.layer.0.SelfAttention.relative_attention_bias"),
            "an embedding, not a linear"
        );
        assert!(
            !int8_applies("transformer_blocks.3.attn.norm_q")
                && !int8_applies("transformer_blocks.3.attn.norm_added_k")
        );
        assert!(
            int8_applies("transformer_blocks.36.attn.add_v_proj")
                && int8_applies("transformer_blocks.36.attn.to_add_out")
        );
        assert!(
            !int8_applies("transformer_blocks.x.attn.to_q")
                && !int8_applies("encoder.final_layer_norm")
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
    }
}
