//! Prompt embeddings (docs/spec.md §3): CLIP-L and bigG penultimate states concatenated and zero-padded
//! to the T5 width (cut to it if wider, as diffusers' negative `F.pad` does), followed by the T5
//! rows -> ctx [77 + 256, d_model] ([333, 4096] for ContentV); pooled = [pool_L, pool_G]
//! ([2048]). Embeddings are cached by prompt, so a batch run encodes each distinct prompt once.
use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use crate::error::{Error, Result};
use crate::model::clip::ClipText;
use crate::model::interfaces::{PromptEmbeds, PromptEncoding};
use crate::model::t5::T5Encoder;
use crate::model::tokenizer::{ClipTokenizer, T5Tokenizer};
use crate::ops::elementwise::concat;
use crate::runtime::residency::{MemoryOptions, Offload};
use crate::runtime::{Device, Tensor};

/// T5 sequence length of the reference pipeline (`max_sequence_length`).
pub const T5_TOKENS: usize = 256;

pub struct TextEncoders {
    pub tok_l: ClipTokenizer,
    pub tok_g: ClipTokenizer,
    pub tok_t5: T5Tokenizer,
    pub clip_l: ClipText,
    pub clip_g: ClipText,
    pub t5: T5Encoder,
    device: Device,
    /// Free the encoders' device weights after each encoding (model offload).
    offload: bool,
    cache: Mutex<HashMap<String, PromptEmbeds>>,
}

/// Token ids of the three tokenizers for one prompt.
pub struct PromptTokens {
    pub clip_l: Vec<u32>,
    pub clip_g: Vec<u32>,
    pub t5: Vec<u32>,
    /// Prompt tokens truncation dropped: CLIP-L, bigG, T5.
    pub dropped: [usize; 3],
}

impl PromptTokens {
    /// One line per tokenizer that truncated the prompt, saying how many tokens were dropped.
    pub fn warnings(&self) -> Vec<String> {
        self.warnings_for("prompt")
    }

    /// [`Self::warnings`] for the prompt called `which` ("prompt", "negative prompt").
    pub fn warnings_for(&self, which: &str) -> Vec<String> {
        let limits = [
            ("CLIP-L (tokenizer/)", self.clip_l.len()),
            ("OpenCLIP-bigG (tokenizer_2/)", self.clip_g.len()),
            ("T5 (tokenizer_3/)", self.t5.len()),
        ];
        limits
            .iter()
            .zip(self.dropped)
            .filter(|(_, n)| *n > 0)
            .map(|((name, len), n)| format!("the {which} is longer than the {name} text encoder accepts ({len} tokens): its last {n} tokens were dropped"))
            .collect()
    }
}

/// The three tokenizers of a model folder (`tokenizer{,_2,_3}/`). The SD3 pipeline pads and
/// truncates both CLIP prompts to `tokenizer.model_max_length` (its `tokenizer_max_length`);
/// tokenizer_2's own value is not used.
pub fn load_tokenizers(dir: &Path) -> Result<(ClipTokenizer, ClipTokenizer, T5Tokenizer)> {
    let tok_l = ClipTokenizer::from_dir(&dir.join("tokenizer"))?;
    let mut tok_g = ClipTokenizer::from_dir(&dir.join("tokenizer_2"))?;
    tok_g.max_len = tok_l.max_len;
    let tok_t5 = T5Tokenizer::from_dir(&dir.join("tokenizer_3"), T5_TOKENS)?;
    Ok((tok_l, tok_g, tok_t5))
}

/// A tokenizer that can produce ids past its encoder's embedding table is the wrong tokenizer
/// (`clip_l`, `clip_g`: the CLIP configs' vocab_size; `t5_rows`: the T5 embedding's rows).
pub fn check_vocabularies(
    dir: &Path,
    (tok_l, tok_g, tok_t5): (&ClipTokenizer, &ClipTokenizer, &T5Tokenizer),
    clip_l: usize,
    clip_g: usize,
    t5_rows: usize,
) -> Result<()> {
    for (name, tv, ev) in [
        ("tokenizer", tok_l.vocab_size(), clip_l),
        ("tokenizer_2", tok_g.vocab_size(), clip_g),
    ] {
        if tv > ev {
            return Err(Error::Input(format!(
                "{}: the vocabulary has {tv} tokens but the encoder's embedding table has {ev} rows: mismatched tokenizer and text encoder",
                dir.join(name).display()
            )));
        }
    }
    if tok_t5.max_id() as usize >= t5_rows {
        return Err(Error::Input(format!(
            "{}: the tokenizer can produce token id {} but the T5 embedding table of {} has {} rows: mismatched tokenizer and text encoder",
            dir.join("tokenizer_3").display(),
            tok_t5.max_id(),
            dir.join("text_encoder_3").display(),
            t5_rows
        )));
    }
    Ok(())
}

impl TextEncoders {
    /// Loads `tokenizer{,_2,_3}/` and `text_encoder{,_2,_3}/` of a model folder.
    pub fn load(dir: &Path, device: &Device, mem: &MemoryOptions) -> Result<TextEncoders> {
        let (tok_l, tok_g, tok_t5) = load_tokenizers(dir)?;
        let clip_l = ClipText::load(&dir.join("text_encoder"), device)?;
        let clip_g = ClipText::load(&dir.join("text_encoder_2"), device)?;
        let t5 = T5Encoder::load(&dir.join("text_encoder_3"), device, mem)?;
        check_vocabularies(
            dir,
            (&tok_l, &tok_g, &tok_t5),
            clip_l.config.vocab,
            clip_g.config.vocab,
            t5.vocab_rows(),
        )?;
        Ok(TextEncoders {
            tok_l,
            tok_g,
            tok_t5,
            clip_l,
            clip_g,
            t5,
            device: device.clone(),
            offload: mem.offload != Offload::None,
            cache: Mutex::new(HashMap::new()),
        })
    }

    pub fn tokens(&self, prompt: &str) -> Result<PromptTokens> {
        let (clip_l, dl) = self.tok_l.encode_padded_counted(prompt);
        let (clip_g, dg) = self.tok_g.encode_padded_counted(prompt);
        let (t5, dt) = self.tok_t5.encode_padded_counted(prompt)?;
        Ok(PromptTokens {
            clip_l,
            clip_g,
            t5,
            dropped: [dl, dg, dt],
        })
    }

    /// Frees the encoders' device weights (they are mapped again on the next encode).
    pub fn release(&self) {
        self.clip_l.release();
        self.clip_g.release();
        self.t5.release();
    }

    /// Encodes without the cache.
    pub fn encode_uncached(&self, prompt: &str) -> Result<PromptEmbeds> {
        self.encode_uncached_as(prompt, "prompt")
    }

    /// [`Self::encode_uncached`]; truncation warnings call the text `which`.
    pub fn encode_uncached_as(&self, prompt: &str, which: &str) -> Result<PromptEmbeds> {
        let t = self.tokens(prompt)?;
        for w in t.warnings_for(which) {
            eprintln!("warning: {w}");
        }
        if let Some(&bad) = t.t5.iter().find(|&&i| i as usize >= self.t5.vocab_rows()) {
            return Err(Error::Input(format!(
                "tokenizer_3/ produced token id {bad} but the T5 embedding table has {} rows: mismatched tokenizer and text encoder",
                self.t5.vocab_rows()
            )));
        }
        let l = self.clip_l.forward(&[t.clip_l])?;
        let g = self.clip_g.forward(&[t.clip_g])?;
        let t5 = self.t5.forward(&[t.t5])?; // [1, 256, d]
        let d = self.t5.config.d_model;
        let (hl, hg) = (self.clip_l.config.hidden, self.clip_g.config.hidden);
        let s = l.penultimate.dim(1);
        let clip = concat(
            &[
                &l.penultimate,
                &g.penultimate.to_dtype(l.penultimate.dtype())?,
            ],
            2,
        )?; // [1, 77, hl+hg]
            // diffusers: F.pad(clip, (0, d - (hl + hg))): zeros on the right, or (a negative pad)
            // the rightmost columns cut off when the CLIP widths add up to more than the T5 width.
        let clip = match (hl + hg).cmp(&d) {
            std::cmp::Ordering::Less => {
                let zeros = Tensor::zeros(&[1, s, d - hl - hg], clip.dtype(), &self.device)?;
                concat(&[&clip, &zeros], 2)? // [1, 77, d]
            }
            std::cmp::Ordering::Equal => clip,
            std::cmp::Ordering::Greater => clip.narrow(2, 0, d)?.contiguous()?,
        };
        let ctx = concat(&[&clip, &t5], 1)?; // [1, 333, d]
        let pooled = concat(&[&l.pooled, &g.pooled], 1)?; // [1, pl + pg]
        if self.offload {
            self.release();
        }
        Ok(PromptEmbeds { ctx, pooled })
    }
}

impl PromptEncoding for TextEncoders {
    fn encode(&self, prompt: &str) -> Result<PromptEmbeds> {
        self.encode_as(prompt, "prompt")
    }

    fn encode_as(&self, prompt: &str, which: &str) -> Result<PromptEmbeds> {
        if let Some(e) = self.cache.lock().unwrap().get(prompt) {
            return Ok(e.clone());
        }
        let e = self.encode_uncached_as(prompt, which)?;
        self.cache
            .lock()
            .unwrap()
            .insert(prompt.to_string(), e.clone());
        Ok(e)
    }

    fn truncation_warnings(&self, prompt: &str, which: &str) -> Result<Vec<String>> {
        Ok(self.tokens(prompt)?.warnings_for(which))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_warnings_name_the_prompt_the_encoder_and_the_limit() {
        let t = PromptTokens {
            clip_l: vec![0; 77],
            clip_g: vec![0; 77],
            t5: vec![0; 256],
            dropped: [3, 0, 5],
        };
        assert_eq!(
            t.warnings_for("negative prompt"),
            [
                "the negative prompt is longer than the CLIP-L (tokenizer/) text encoder accepts (77 tokens): its last 3 tokens were dropped",
                "the negative prompt is longer than the T5 (tokenizer_3/) text encoder accepts (256 tokens): its last 5 tokens were dropped",
            ]
        );
        assert!(t.warnings()[0].starts_with("the prompt is longer than the CLIP-L"));
    }
}
