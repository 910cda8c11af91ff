//! Tokenizers of the three text encoders, as the reference pipeline calls them.
//!
//! * CLIP-L / OpenCLIP-bigG (`tokenizer/`, `tokenizer_2/`): byte-level BPE from `vocab.json` +
//!   `merges.txt`, reproducing transformers' *slow* `CLIPTokenizer` without ftfy (what the
//!   reference ran): special tokens split out first (`<|startoftext|>`, `<|endoftext|>` and the
//!   pad token when it is an added token, e.g. bigG's `!`), then BasicTokenizer cleanup
//!   (control characters dropped, whitespace normalised, spaces around CJK ideographs, NFC,
//!   lower case), the CLIP split pattern, `</w>` end-of-word suffix, merges by rank. Then
//!   `[BOS] + ids[..75] + [EOS]`, padded to 77 with the pad token of the tokenizer config.
//!   A folder with only a `tokenizer.json` works too: its BPE vocabulary, merges and added
//!   tokens feed the same slow pipeline (the fast pipeline of tokenizer.json gives different
//!   ids for some prompts, see the fixture manifest's `clip_slow_vs_fast_differences`).
//! * T5 (`tokenizer_3/`): `tokenizer.json` with the `tokenizers` crate (Unigram + `</s>`),
//!   truncated to 255 + EOS, padded with id 0 to 256.
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use fancy_regex::Regex;

use crate::error::{Error, Result};

fn read_text(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path)
        .map_err(|e| Error::Input(format!("cannot read {}: {e}", path.display())))?;
    String::from_utf8(bytes)
        .map_err(|_| Error::Input(format!("{} is not valid UTF-8 text", path.display())))
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    serde_json::from_str(&read_text(path)?)
        .map_err(|e| Error::Input(format!("{} is not valid JSON: {e}", path.display())))
}

/// The content of a special-token entry (`"!"` or `{"content": "!"}`).
fn token_content(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content").and_then(|c| c.as_str()).map(String::from),
        _ => None,
    }
}

type BpeData = (
    HashMap<String, u32>,
    HashMap<(String, String), usize>,
    PathBuf,
    Vec<(String, u32)>,
);

/// Vocabulary and merge ranks of a CLIP tokenizer folder: `vocab.json` + `merges.txt`, or,
/// when those are absent, the BPE model inside `tokenizer.json` (its vocabulary, merges and
/// added tokens; the slow pipeline is still used, as the fast one tokenizes some text
/// differently from the reference). Also returns the file the vocabulary came from.
fn load_bpe(dir: &Path) -> Result<BpeData> {
    let vocab_path = dir.join("vocab.json");
    let json_path = dir.join("tokenizer.json");
    if !vocab_path.is_file() && json_path.is_file() {
        let j = read_json(&json_path)?;
        let bad = |what: &str| {
            Error::Input(format!(
                "{}: {what} (expected a BPE tokenizer.json, or vocab.json + merges.txt)",
                json_path.display()
            ))
        };
        let model = j.get("model").ok_or_else(|| bad("no model"))?;
        let vocab = model
            .get("vocab")
            .and_then(|v| v.as_object())
            .ok_or_else(|| bad("no model.vocab object"))?;
        let mut encoder = HashMap::with_capacity(vocab.len());
        for (k, v) in vocab {
            encoder.insert(
                k.clone(),
                v.as_u64()
                    .ok_or_else(|| bad(&format!("id of {k:?} is not an integer")))?
                    as u32,
            );
        }
        let merges = model
            .get("merges")
            .and_then(|m| m.as_array())
            .ok_or_else(|| bad("no model.merges list"))?;
        let mut ranks = HashMap::with_capacity(merges.len());
        for (i, m) in merges.iter().enumerate() {
            // "a b" (older files) or ["a", "b"] (newer files).
            let pair = match m {
                serde_json::Value::String(s) => s
                    .split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string())),
                serde_json::Value::Array(a) if a.len() == 2 => a[0]
                    .as_str()
                    .zip(a[1].as_str())
                    .map(|(x, y)| (x.to_string(), y.to_string())),
                _ => None,
            };
            ranks.insert(
                pair.ok_or_else(|| bad(&format!("merge {i} is not a pair")))?,
                i,
            );
        }
        let added: Vec<(String, u32)> = j
            .get("added_tokens")
            .and_then(|a| a.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|t| {
                        Some((
                            t.get("content")?.as_str()?.to_string(),
                            t.get("id")?.as_u64()? as u32,
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default();
        for (c, id) in &added {
            encoder.entry(c.clone()).or_insert(*id);
        }
        return Ok((encoder, ranks, json_path, added));
    }
    if !vocab_path.is_file() {
        return Err(Error::Input(format!(
            "{}: no vocab.json (and no tokenizer.json): a CLIP tokenizer folder needs vocab.json + merges.txt",
            dir.display()
        )));
    }
    let vocab = read_json(&vocab_path)?;
    let obj = vocab.as_object().ok_or_else(|| {
        Error::Input(format!(
            "{}: expected an object of token -> id",
            vocab_path.display()
        ))
    })?;
    let mut encoder = HashMap::with_capacity(obj.len());
    for (k, v) in obj {
        let id = v.as_u64().ok_or_else(|| {
            Error::Input(format!(
                "{}: id of {k:?} is not an integer",
                vocab_path.display()
            ))
        })?;
        encoder.insert(k.clone(), id as u32);
    }
    let merges_path = dir.join("merges.txt");
    if !merges_path.is_file() {
        return Err(Error::Input(format!(
            "{}: merges.txt is missing next to vocab.json",
            dir.display()
        )));
    }
    let merges = read_text(&merges_path)?;
    let mut ranks = HashMap::new();
    for (i, line) in merges
        .lines()
        .filter(|l| !l.starts_with("#version") && !l.trim().is_empty())
        .enumerate()
    {
        let mut it = line.split(' ');
        match (it.next(), it.next()) {
            (Some(a), Some(b)) => {
                ranks.insert((a.to_string(), b.to_string()), i);
            }
            _ => {
                return Err(Error::Input(format!(
                    "{}: line {:?} is not a merge pair",
                    merges_path.display(),
                    line
                )))
            }
        }
    }
    Ok((encoder, ranks, vocab_path, Vec::new()))
}

/// GPT-2 / CLIP byte-to-unicode table.
fn bytes_to_unicode() -> [char; 256] {
    let mut bs: Vec<u32> = (b'!' as u32..=b'~' as u32)
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    let mut t = ['\0'; 256];
    for (b, c) in bs.iter().zip(cs) {
        t[*b as usize] = char::from_u32(c).unwrap();
    }
    t
}

/// The CLIP BPE tokenizer (slow `CLIPTokenizer` semantics).
pub struct ClipTokenizer {
    encoder: HashMap<String, u32>,
    ranks: HashMap<(String, String), usize>,
    byte_enc: [char; 256],
    pat: Regex,
    control: Regex,
    space: Regex,
    /// Special tokens split out of the raw text before BPE, longest first, with their ids.
    specials: Vec<(String, u32)>,
    pub bos: u32,
    pub eos: u32,
    pub pad: u32,
    /// Id of pieces missing from the vocabulary (`unk_token`, `<|endoftext|>` for CLIP).
    pub unk: u32,
    pub max_len: usize,
    cache: Mutex<HashMap<String, Vec<String>>>,
}

impl ClipTokenizer {
    /// Loads `dir` (vocab.json, merges.txt, special_tokens_map.json / tokenizer_config.json).
    pub fn from_dir(dir: &Path) -> Result<ClipTokenizer> {
        if !dir.is_dir() {
            return Err(Error::Input(format!(
                "the CLIP tokenizer folder {} does not exist",
                dir.display()
            )));
        }
        let (encoder, ranks, vocab_path, json_added) = load_bpe(dir)?;
        let cfg_path = dir.join("tokenizer_config.json");
        let map_path = dir.join("special_tokens_map.json");
        let cfg = if cfg_path.is_file() {
            read_json(&cfg_path)?
        } else {
            serde_json::Value::Null
        };
        let map = if map_path.is_file() {
            read_json(&map_path)?
        } else {
            serde_json::Value::Null
        };
        let special = |name: &str, default: &str| -> String {
            cfg.get(name)
                .and_then(token_content)
                .or_else(|| map.get(name).and_then(token_content))
                .unwrap_or_else(|| default.to_string())
        };
        let id_of = |tok: &str| -> Result<u32> {
            encoder.get(tok).copied().ok_or_else(|| {
                Error::Input(format!(
                    "{}: special token {tok:?} is not in the vocabulary",
                    vocab_path.display()
                ))
            })
        };
        let (bos_t, eos_t, pad_t) = (
            special("bos_token", "<|startoftext|>"),
            special("eos_token", "<|endoftext|>"),
            special("pad_token", "<|endoftext|>"),
        );
        let (bos, eos, pad) = (id_of(&bos_t)?, id_of(&eos_t)?, id_of(&pad_t)?);
        let unk = id_of(&special("unk_token", "<|endoftext|>"))?;
        let mut specials: Vec<(String, u32)> = vec![(bos_t, bos), (eos_t, eos)];
        // Added tokens of the config (e.g. bigG's "!" pad) are split out as they are.
        if let Some(added) = cfg.get("added_tokens_decoder").and_then(|a| a.as_object()) {
            for (id, v) in added {
                if let (Some(c), Ok(id)) = (token_content(v), id.parse::<u32>()) {
                    if !specials.iter().any(|(s, _)| s == &c) {
                        specials.push((c, id));
                    }
                }
            }
        } else {
            for (c, id) in json_added {
                if !specials.iter().any(|(s, _)| s == &c) {
                    specials.push((c, id));
                }
            }
            if !specials.iter().any(|(s, _)| s == &pad_t) {
                specials.push((pad_t, pad));
            }
        }
        specials.sort_by(|a, b| b.0.len().cmp(&a.0.len()));
        let max_len = cfg
            .get("model_max_length")
            .and_then(|v| v.as_u64())
            .filter(|&v| v < 100_000)
            .unwrap_or(77) as usize;
        Ok(ClipTokenizer {
            encoder,
            ranks,
            byte_enc: bytes_to_unicode(),
            pat: Regex::new(r"(?i)<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+").unwrap(),
            control: Regex::new(r"^\p{C}$").unwrap(),
            space: Regex::new(r"^\p{Zs}$").unwrap(),
            specials,
            bos,
            eos,
            pad,
            unk,
            max_len,
            cache: Mutex::new(HashMap::new()),
        })
    }

    pub fn vocab_size(&self) -> usize {
        self.encoder
            .values()
            .map(|&v| v as usize + 1)
            .max()
            .unwrap_or(0)
    }

    /// transformers' BasicTokenizer (lower case, no accent stripping, no punctuation split),
    /// joined with single spaces.
    fn basic_clean(&self, text: &str) -> String {
        let mut s = String::with_capacity(text.len());
        for ch in text.chars() {
            let cp = ch as u32;
            let is_ws = matches!(ch, ' ' | '\t' | '\n' | '\r')
                || self
                    .space
                    .is_match(ch.encode_utf8(&mut [0; 4]))
                    .unwrap_or(false);
            if cp == 0
                || cp == 0xFFFD
                || (!is_ws
                    && self
                        .control
                        .is_match(ch.encode_utf8(&mut [0; 4]))
                        .unwrap_or(false))
            {
                continue;
            }
            if is_ws {
                s.push(' ');
            } else if is_cjk(cp) {
                s.push(' ');
                s.push(ch);
                s.push(' ');
            } else {
                s.push(ch);
            }
        }
        let mut n = tokenizers::NormalizedString::from(s.as_str());
        n.nfc();
        let s = n.get().to_string();
        s.split_whitespace()
            .map(|w| w.to_lowercase())
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn bpe(&self, token: &str) -> Vec<String> {
        if let Some(v) = self.cache.lock().unwrap().get(token) {
            return v.clone();
        }
        let chars: Vec<char> = token.chars().collect();
        let mut word: Vec<String> = chars.iter().map(|c| c.to_string()).collect();
        if let Some(last) = word.last_mut() {
            last.push_str("</w>");
        }
        while word.len() > 1 {
            let best = (0..word.len() - 1)
                .filter_map(|i| {
                    self.ranks
                        .get(&(word[i].clone(), word[i + 1].clone()))
                        .map(|r| (*r, i))
                })
                .min();
            let Some((_, _)) = best else { break };
            let (a, b) = {
                let (_, i) = best.unwrap();
                (word[i].clone(), word[i + 1].clone())
            };
            let mut merged = Vec::with_capacity(word.len());
            let mut i = 0;
            while i < word.len() {
                if i + 1 < word.len() && word[i] == a && word[i + 1] == b {
                    merged.push(format!("{a}{b}"));
                    i += 2;
                } else {
                    merged.push(word[i].clone());
                    i += 1;
                }
            }
            word = merged;
        }
        self.cache
            .lock()
            .unwrap()
            .insert(token.to_string(), word.clone());
        word
    }

    fn encode_piece(&self, text: &str, out: &mut Vec<u32>) {
        let clean = self.basic_clean(text);
        for m in self.pat.find_iter(&clean).flatten() {
            let t: String = m
                .as_str()
                .bytes()
                .map(|b| self.byte_enc[b as usize])
                .collect();
            for piece in self.bpe(&t) {
                // Pieces missing from the vocabulary map to the unknown token (<|endoftext|>).
                out.push(self.encoder.get(&piece).copied().unwrap_or(self.unk));
            }
        }
    }

    /// Token ids without BOS/EOS, truncation or padding.
    pub fn encode_raw(&self, text: &str) -> Vec<u32> {
        let mut out = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            // Earliest special token (longest at a position).
            let hit = self
                .specials
                .iter()
                .filter_map(|(s, id)| {
                    rest.find(s.as_str())
                        .map(|p| (p, std::cmp::Reverse(s.len()), *id))
                })
                .min();
            match hit {
                Some((p, std::cmp::Reverse(len), id)) => {
                    self.encode_piece(&rest[..p], &mut out);
                    out.push(id);
                    rest = &rest[p + len..];
                }
                None => {
                    self.encode_piece(rest, &mut out);
                    break;
                }
            }
        }
        out
    }

    /// `[BOS] + ids + [EOS]` truncated to `max_len` (keeping EOS), padded to `max_len`.
    pub fn encode_padded(&self, text: &str) -> Vec<u32> {
        self.encode_padded_counted(text).0
    }

    /// [`Self::encode_padded`] and the number of prompt tokens truncation dropped.
    pub fn encode_padded_counted(&self, text: &str) -> (Vec<u32>, usize) {
        let raw = self.encode_raw(text);
        let keep = raw.len().min(self.max_len - 2);
        let mut ids = Vec::with_capacity(self.max_len);
        ids.push(self.bos);
        ids.extend_from_slice(&raw[..keep]);
        ids.push(self.eos);
        ids.resize(self.max_len, self.pad);
        (ids, raw.len() - keep)
    }
}

/// CJK ideograph ranges of BERT's `_is_chinese_char`.
fn is_cjk(cp: u32) -> bool {
    matches!(cp, 0x4E00..=0x9FFF | 0x3400..=0x4DBF | 0x20000..=0x2A6DF | 0x2A700..=0x2B73F | 0x2B740..=0x2B81F | 0x2B820..=0x2CEAF | 0xF900..=0xFAFF | 0x2F800..=0x2FA1F)
}

/// The T5 tokenizer from `tokenizer.json`.
pub struct T5Tokenizer {
    tok: tokenizers::Tokenizer,
    pub eos: u32,
    pub pad: u32,
    pub max_len: usize,
    path: PathBuf,
}

impl T5Tokenizer {
    pub fn from_dir(dir: &Path, max_len: usize) -> Result<T5Tokenizer> {
        let path = dir.join("tokenizer.json");
        if !dir.is_dir() {
            return Err(Error::Input(format!(
                "the T5 tokenizer folder {} does not exist",
                dir.display()
            )));
        }
        if !path.is_file() {
            return Err(Error::Input(format!(
                "{} is missing: the T5 tokenizer needs tokenizer.json (convert spiece.model with transformers' T5TokenizerFast \
                 and save_pretrained)",
                path.display()
            )));
        }
        read_text(&path)?; // a clear error for unreadable / non-UTF-8 files
        let tok = tokenizers::Tokenizer::from_file(&path).map_err(|e| {
            Error::Input(format!(
                "{}: not a valid tokenizer.json: {e}",
                path.display()
            ))
        })?;
        let eos = tok.token_to_id("</s>").unwrap_or(1);
        let pad = tok.token_to_id("<pad>").unwrap_or(0);
        Ok(T5Tokenizer {
            tok,
            eos,
            pad,
            max_len,
            path,
        })
    }

    /// Ids with the EOS the post-processor appends, no truncation or padding.
    pub fn encode_raw(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.tok.encode(text, true).map_err(|e| {
            Error::Input(format!(
                "{}: cannot tokenize the prompt: {e}",
                self.path.display()
            ))
        })?;
        Ok(enc.get_ids().to_vec())
    }

    /// The largest id the tokenizer can produce (added tokens included).
    pub fn max_id(&self) -> u32 {
        self.tok
            .get_vocab(true)
            .values()
            .copied()
            .max()
            .unwrap_or(0)
    }

    /// Truncated to `max_len` with EOS kept last, padded with `pad`.
    pub fn encode_padded(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self.encode_padded_counted(text)?.0)
    }

    /// [`Self::encode_padded`] and the number of tokens truncation dropped.
    pub fn encode_padded_counted(&self, text: &str) -> Result<(Vec<u32>, usize)> {
        let mut ids = self.encode_raw(text)?;
        let dropped = ids.len().saturating_sub(self.max_len);
        if ids.len() > self.max_len {
            let ends_eos = ids.last() == Some(&self.eos);
            ids.truncate(self.max_len);
            if ends_eos {
                ids[self.max_len - 1] = self.eos;
            }
        }
        ids.resize(self.max_len, self.pad);
        Ok((ids, dropped))
    }
}
