//! A T5 tokenizer folder that holds only the SentencePiece `spiece.model` (no tokenizer.json):
//! the engine converts it the way transformers' `T5TokenizerFast.from_pretrained` does (its
//! `T5Converter`), into the same `tokenizer.json` document, which the `tokenizers` crate then
//! runs. Reference ids for several tokenizer_config.json variants:
//! scripts/reference/make_spm_variants.py -> tests/fixtures/tokenizer_fuzz/spm_variants.json.
//!
//! The conversion (transformers 4.51 `SpmConverter` + `T5Converter` + `PreTrainedTokenizerFast`):
//! * model: Unigram over the pieces (piece, score), then `<extra_id_{N-1}>` .. `<extra_id_0>`
//!   with score 0 (N = `extra_ids`, default 100), `unk_id` from the trainer spec, no byte fallback;
//! * normalizer: Precompiled(charsmap) when the model has one, Strip(right), Replace(" {2,}" -> "▁");
//! * pre-tokenizer: Metaspace("▁") with prepend scheme "always" (legacy, the default), "first"
//!   (`legacy: false`) or "never" (`add_prefix_space` present and false or null);
//! * post-processor: `$A </s>`;
//! * added tokens: control pieces (special) and user-defined pieces (not special), then the
//!   config's `added_tokens_decoder`, then the special tokens (eos, unk, pad, additional ones, the
//!   extra ids); a token outside the vocabulary gets the next free id.
use std::path::Path;

use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::model::tokenizer::{damaged, read_json_or_null, special_token, token_content};

/// The parts of a SentencePiece `ModelProto` the conversion needs.
#[derive(Debug, Default)]
pub struct SpmModel {
    /// (piece, score, type): type 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.
    pub pieces: Vec<(String, f32, u64)>,
    /// 1 unigram, 2 BPE, 3 word, 4 char.
    pub model_type: u64,
    pub unk_id: u64,
    pub byte_fallback: bool,
    pub precompiled_charsmap: Vec<u8>,
    /// Whether the trainer and normalizer specs (written after the pieces) were present.
    pub has_trainer_spec: bool,
    pub has_normalizer_spec: bool,
}

/// A protobuf reader over one message's bytes.
struct Pb<'a> {
    b: &'a [u8],
    at: usize,
}

/// A field's value: varints, fixed 32/64-bit words and length-delimited bytes.
enum PbVal<'a> {
    Varint(u64),
    Fixed32(u32),
    Fixed64,
    Bytes(&'a [u8]),
}

impl<'a> Pb<'a> {
    fn varint(&mut self) -> std::result::Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *self
                .b
                .get(self.at)
                .ok_or_else(|| format!("truncated varint at byte {}", self.at))?;
            self.at += 1;
            v |= ((byte & 0x7f) as u64) << shift;
            if byte & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(format!("varint longer than 10 bytes at byte {}", self.at))
    }

    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], String> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.b.len())
            .ok_or_else(|| {
                format!(
                    "a field of {n} bytes at byte {} runs past the end ({} bytes)",
                    self.at,
                    self.b.len()
                )
            })?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }

    /// The next (field number, value), or None at the end.
    fn next(&mut self) -> std::result::Result<Option<(u64, PbVal<'a>)>, String> {
        if self.at >= self.b.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let val = match key & 7 {
            0 => PbVal::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                PbVal::Fixed64
            }
            2 => {
                let n = self.varint()?;
                PbVal::Bytes(self.take(usize::try_from(n).map_err(|_| "length overflow")?)?)
            }
            5 => {
                let w = self.take(4)?;
                PbVal::Fixed32(u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
            }
            t => return Err(format!("unsupported wire type {t} at byte {}", self.at)),
        };
        Ok(Some((key >> 3, val)))
    }
}

impl SpmModel {
    /// Parses a serialized `ModelProto` (fields: 1 pieces, 2 trainer_spec, 3 normalizer_spec).
    pub fn parse(bytes: &[u8]) -> std::result::Result<SpmModel, String> {
        let mut m = SpmModel {
            model_type: 1,
            ..Default::default()
        };
        let mut top = Pb { b: bytes, at: 0 };
        while let Some((field, val)) = top.next()? {
            match (field, val) {
                (1, PbVal::Bytes(p)) => {
                    let (mut piece, mut score, mut ty) = (None, 0f32, 1u64);
                    let mut r = Pb { b: p, at: 0 };
                    while let Some((f, v)) = r.next()? {
                        match (f, v) {
                            (1, PbVal::Bytes(s)) => {
                                piece = Some(String::from_utf8(s.to_vec()).map_err(|_| {
                                    format!("piece {} is not valid UTF-8", m.pieces.len())
                                })?)
                            }
                            (2, PbVal::Fixed32(w)) => score = f32::from_bits(w),
                            (3, PbVal::Varint(t)) => ty = t,
                            _ => {}
                        }
                    }
                    let piece =
                        piece.ok_or_else(|| format!("piece {} has no text", m.pieces.len()))?;
                    m.pieces.push((piece, score, ty));
                }
                (2, PbVal::Bytes(t)) => {
                    m.has_trainer_spec = true;
                    let mut r = Pb { b: t, at: 0 };
                    while let Some((f, v)) = r.next()? {
                        match (f, v) {
                            (3, PbVal::Varint(x)) => m.model_type = x,
                            (35, PbVal::Varint(x)) => m.byte_fallback = x != 0,
                            (40, PbVal::Varint(x)) => m.unk_id = x,
                            _ => {}
                        }
                    }
                }
                (3, PbVal::Bytes(n)) => {
                    m.has_normalizer_spec = true;
                    let mut r = Pb { b: n, at: 0 };
                    while let Some((f, v)) = r.next()? {
                        if let (2, PbVal::Bytes(c)) = (f, v) {
                            m.precompiled_charsmap = c.to_vec();
                        }
                    }
                }
                _ => {}
            }
        }
        if m.pieces.is_empty() {
            return Err("no pieces (not a SentencePiece model?)".into());
        }
        Ok(m)
    }
}

/// The tokenizer.json document transformers builds from `dir/spiece.model` and the folder's
/// tokenizer_config.json / special_tokens_map.json (both optional): the unigram model, the
/// config's options, the vocabulary, the added tokens, the document.
pub fn t5_tokenizer_json(dir: &Path) -> Result<Value> {
    let path = dir.join("spiece.model");
    let m = read_unigram_model(&path)?;
    let cfg = read_json_or_null(&dir.join("tokenizer_config.json"))?;
    let map = read_json_or_null(&dir.join("special_tokens_map.json"))?;
    let opts = T5Options::read(&cfg, &dir.join("tokenizer_config.json"))?;
    let special = |name: &str, default: &str| special_token(&cfg, &map, name, default);

    let vocab = unigram_vocab(&m, opts.extra_ids);
    let index = piece_index(&vocab);
    if m.pieces.get(m.unk_id as usize).map(|p| p.2) != Some(2) {
        return Err(damaged(
            &path,
            &format!(
                "unk_id {} is not the unknown piece (type 2) among the {} pieces",
                m.unk_id,
                m.pieces.len()
            ),
        ));
    }
    let added = added_tokens(&m, &cfg, &map, opts.extra_ids, &index, vocab.len());

    let eos_t = special("eos_token", "</s>");
    let eos = *index.get(eos_t.as_str()).ok_or_else(|| {
        damaged(
            &path,
            &format!("the end-of-sequence token {eos_t:?} is not a piece of the model"),
        )
    })?;
    for (name, default) in [("pad_token", "<pad>"), ("unk_token", "<unk>")] {
        let t = special(name, default);
        if !index.contains_key(t.as_str()) {
            return Err(damaged(
                &path,
                &format!("the special token {t:?} ({name}) is not a piece of the model"),
            ));
        }
    }
    Ok(tokenizer_document(
        &m,
        &vocab,
        &added,
        &eos_t,
        eos,
        opts.prepend,
    ))
}

/// `path` read and parsed as a complete SentencePiece unigram model.
fn read_unigram_model(path: &Path) -> Result<SpmModel> {
    let bytes = std::fs::read(path)
        .map_err(|e| Error::Input(format!("cannot read {}: {e}", path.display())))?;
    let m = SpmModel::parse(&bytes)
        .map_err(|e| damaged(path, &format!("not a valid SentencePiece model ({e})")))?;
    // SentencePiece writes the pieces first, then the trainer and normalizer specs: a file cut
    // short at the end of a piece parses, but lacks them (and the pieces after the cut).
    if !m.has_trainer_spec || !m.has_normalizer_spec {
        return Err(damaged(
            path,
            &format!(
                "the model ends after {} pieces without its trainer and normalizer settings: the file is cut short",
                m.pieces.len()
            ),
        ));
    }
    if m.model_type != 1 {
        return Err(Error::Input(format!(
            "{}: a SentencePiece model of type {} (2 = BPE, 3 = word, 4 = char); the T5 tokenizer is a unigram model (type 1)",
            path.display(),
            m.model_type
        )));
    }
    Ok(m)
}

/// The options of tokenizer_config.json the conversion reads.
struct T5Options {
    /// `extra_ids` (default 100): the `<extra_id_N>` tokens after the pieces.
    extra_ids: usize,
    /// The Metaspace prepend scheme: "always", "first" or "never".
    prepend: &'static str,
}

impl T5Options {
    /// From the parsed config `cfg` (null when the file is absent) read from `cfg_path`.
    fn read(cfg: &Value, cfg_path: &Path) -> Result<T5Options> {
        let bad = |key: &str, what: &str| {
            Error::Input(format!("{}: \"{key}\" must be {what}", cfg_path.display()))
        };
        let extra_ids = match cfg.get("extra_ids") {
            None | Some(Value::Null) => 100,
            Some(v) => v
                .as_u64()
                .filter(|&n| n <= 100_000)
                .ok_or_else(|| bad("extra_ids", "a count"))? as usize,
        };
        let legacy = match cfg.get("legacy") {
            None | Some(Value::Null) => true,
            Some(v) => v.as_bool().ok_or_else(|| bad("legacy", "true or false"))?,
        };
        // T5Tokenizer's add_prefix_space defaults to true; a config that names it (even as null)
        // passes its value, and a false or null one turns the prefix off.
        let add_prefix_space = match cfg.get("add_prefix_space") {
            None => true,
            Some(Value::Null) => false,
            Some(v) => v
                .as_bool()
                .ok_or_else(|| bad("add_prefix_space", "true, false or null"))?,
        };
        let prepend = match (add_prefix_space, legacy) {
            (false, _) => "never",
            (true, true) => "always",
            (true, false) => "first",
        };
        Ok(T5Options { extra_ids, prepend })
    }
}

/// Model vocabulary: the pieces with their scores, then the extra ids in reverse (score 0).
fn unigram_vocab(m: &SpmModel, extra_ids: usize) -> Vec<(String, f32)> {
    let mut vocab: Vec<(String, f32)> = m.pieces.iter().map(|(p, s, _)| (p.clone(), *s)).collect();
    vocab.extend(
        (0..extra_ids)
            .rev()
            .map(|i| (format!("<extra_id_{i}>"), 0.0)),
    );
    vocab
}

/// The id of each piece of `vocab` (the first one where a piece repeats).
fn piece_index(vocab: &[(String, f32)]) -> std::collections::HashMap<&str, u32> {
    let mut index = std::collections::HashMap::new();
    for (i, (p, _)) in vocab.iter().enumerate() {
        index.entry(p.as_str()).or_insert(i as u32);
    }
    index
}

/// One entry of the document's `added_tokens`.
struct Added {
    id: u32,
    content: String,
    special: bool,
    lstrip: bool,
    rstrip: bool,
    single_word: bool,
    normalized: bool,
}

/// Added tokens, in the order transformers adds them: control and user-defined pieces, the
/// config's `added_tokens_decoder`, then the special tokens; a token outside the vocabulary
/// (`vocab_len` entries, ids in `index`) gets the next free id.
fn added_tokens(
    m: &SpmModel,
    cfg: &Value,
    map: &Value,
    extra_ids: usize,
    index: &std::collections::HashMap<&str, u32>,
    vocab_len: usize,
) -> Vec<Added> {
    let special = |name: &str, default: &str| special_token(cfg, map, name, default);
    let mut added: Vec<Added> = Vec::new();
    let mut next_id = vocab_len as u32;
    let mut add =
        |content: String, special: bool, flags: Option<&Value>, added: &mut Vec<Added>| {
            if content.is_empty() || added.iter().any(|a| a.content == content) {
                return;
            }
            let id = match index.get(content.as_str()) {
                Some(&id) => id,
                None => {
                    next_id += 1;
                    next_id - 1
                }
            };
            let flag = |k: &str, d: bool| {
                flags
                    .and_then(|f| f.get(k))
                    .and_then(|v| v.as_bool())
                    .unwrap_or(d)
            };
            added.push(Added {
                id,
                special: flag("special", special),
                lstrip: flag("lstrip", false),
                rstrip: flag("rstrip", false),
                single_word: flag("single_word", false),
                normalized: flag("normalized", false),
                content,
            });
        };
    for (p, _, ty) in &m.pieces {
        if *ty == 3 || *ty == 4 {
            add(p.clone(), *ty == 3, None, &mut added);
        }
    }
    if let Some(dec) = cfg.get("added_tokens_decoder").and_then(|d| d.as_object()) {
        let mut entries: Vec<(u64, &Value)> = dec
            .iter()
            .filter_map(|(k, v)| k.parse::<u64>().ok().map(|id| (id, v)))
            .collect();
        entries.sort_by_key(|e| e.0);
        for (_, v) in entries {
            if let Some(c) = token_content(v) {
                add(c, false, Some(v), &mut added);
            }
        }
    }
    let mut specials = vec![
        special("eos_token", "</s>"),
        special("unk_token", "<unk>"),
        special("pad_token", "<pad>"),
    ];
    let listed: Vec<String> = cfg
        .get("additional_special_tokens")
        .or_else(|| map.get("additional_special_tokens"))
        .and_then(|v| v.as_array())
        .map(|a| a.iter().filter_map(token_content).collect())
        .unwrap_or_default();
    let has_extra = listed.iter().any(|t| t.contains("<extra_id_"));
    specials.extend(listed);
    if extra_ids > 0 && !has_extra {
        specials.extend((0..extra_ids).map(|i| format!("<extra_id_{i}>")));
    }
    for s in specials {
        add(s, true, None, &mut added);
    }
    added
}

/// The tokenizer.json document: normalizer, Metaspace pre-tokenizer and decoder (`prepend`),
/// `$A </s>` post-processor (`eos_t` with id `eos`), the unigram model over `vocab`.
fn tokenizer_document(
    m: &SpmModel,
    vocab: &[(String, f32)],
    added: &[Added],
    eos_t: &str,
    eos: u32,
    prepend: &str,
) -> Value {
    let mut normalizers = Vec::new();
    if !m.precompiled_charsmap.is_empty() {
        normalizers.push(
            json!({"type": "Precompiled", "precompiled_charsmap": crate::io::base64::encode(&m.precompiled_charsmap)}),
        );
    }
    normalizers.push(json!({"type": "Strip", "strip_left": false, "strip_right": true}));
    normalizers
        .push(json!({"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": "\u{2581}"}));
    let metaspace = json!({"type": "Metaspace", "replacement": "\u{2581}", "prepend_scheme": prepend, "split": true});
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added.iter().map(|a| json!({
            "id": a.id, "content": a.content, "single_word": a.single_word, "lstrip": a.lstrip,
            "rstrip": a.rstrip, "normalized": a.normalized, "special": a.special,
        })).collect::<Vec<_>>(),
        "normalizer": {"type": "Sequence", "normalizers": normalizers},
        "pre_tokenizer": metaspace.clone(),
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": eos_t, "type_id": 0}}],
            "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": eos_t, "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 0}}, {"SpecialToken": {"id": eos_t, "type_id": 0}}],
            "special_tokens": {eos_t.to_string(): {"id": eos_t, "ids": [eos], "tokens": [eos_t]}},
        },
        "decoder": metaspace,
        "model": {
            "type": "Unigram",
            "unk_id": m.unk_id,
            "vocab": vocab.iter().map(|(p, s)| json!([p, s])).collect::<Vec<_>>(),
            "byte_fallback": false,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protobuf_errors_are_reported_not_panics() {
        // truncated varint, length past the end, unsupported wire type, no pieces
        for bad in [
            &[0x0a, 0x85][..],
            &[0x0a, 0x05, 0x01],
            &[0x0b],
            &[0x10, 0x01],
        ] {
            assert!(SpmModel::parse(bad).is_err(), "{bad:?}");
        }
        // one piece "a" with score 0.5 and type 3
        let mut piece = vec![0x0a, 0x01, b'a', 0x15];
        piece.extend_from_slice(&0.5f32.to_le_bytes());
        piece.extend_from_slice(&[0x18, 0x03]);
        let mut model = vec![0x0a, piece.len() as u8];
        model.extend_from_slice(&piece);
        let m = SpmModel::parse(&model).unwrap();
        assert_eq!(m.pieces, vec![("a".to_string(), 0.5, 3)]);
        assert_eq!(m.model_type, 1);
    }
}
