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
//!   Unicode behaviour follows the reference's Python 3.11 (Unicode 14.0 `unicodedata`):
//!   characters assigned later are dropped as unassigned, and NFC uses Unicode 14.0 data.
//!   tests/tokenizer_fuzz.rs checks all of this on a 2000-prompt corpus and, optionally, on every
//!   code point.
//! * Damaged files are errors, not wrong ids: the vocabulary and merges must belong together
//!   (`check_bpe`), the T5 special tokens must be in the vocabulary and encodings must end with
//!   EOS, and every message names the file and says to download the folder again.
//! * T5 (`tokenizer_3/`): `tokenizer.json` (or `spiece.model` alone, converted as transformers does:
//!   [`crate::model::spm`]) with the `tokenizers` crate (Unigram + `</s>`),
//!   truncated to 255 + EOS, padded with id 0 to 256.
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use fancy_regex::Regex;

use crate::error::{Error, Result};

fn read_text(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path)
        .map_err(|e| Error::Input(format!("cannot read {}: {e}", path.display())))?;
    String::from_utf8(bytes).map_err(|_| damaged(path, "not valid UTF-8 text"))
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    serde_json::from_str(&read_text(path)?)
        .map_err(|e| damaged(path, &format!("not valid JSON ({e})")))
}

/// A tokenizer file that is empty, cut short or does not fit the other files of its folder:
/// the message names the file and the problem, and says to fetch the folder again.
pub(crate) fn damaged(path: &Path, problem: &str) -> Error {
    let folder = path
        .parent()
        .and_then(|d| d.file_name())
        .map(|f| format!("{}/", f.to_string_lossy()))
        .unwrap_or_else(|| "tokenizer".into());
    Error::Input(format!(
        "{}: {problem}. The tokenizer file is damaged, incomplete or from another model: download the model's {folder} files again",
        path.display()
    ))
}

/// A special token (`eos_token`, ...) as transformers resolves it: tokenizer_config.json, then
/// special_tokens_map.json, then the class default.
pub(crate) fn special_token(
    cfg: &serde_json::Value,
    map: &serde_json::Value,
    name: &str,
    default: &str,
) -> String {
    cfg.get(name)
        .and_then(token_content)
        .or_else(|| map.get(name).and_then(token_content))
        .unwrap_or_else(|| default.to_string())
}

/// [`read_json`] of an optional file: `Null` when `path` is not there.
pub(crate) fn read_json_or_null(path: &Path) -> Result<serde_json::Value> {
    match crate::io::fsutil::path_kind_problem(path, false) {
        None => read_json(path),
        Some(p) if p == "is missing" => Ok(serde_json::Value::Null),
        Some(p) => Err(Error::Input(format!("{} {p}", path.display()))),
    }
}

/// The content of a special-token entry (`"!"` or `{"content": "!"}`).
pub(crate) fn token_content(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content").and_then(|c| c.as_str()).map(String::from),
        _ => None,
    }
}

/// What [`load_bpe`] read.
struct BpeData {
    encoder: HashMap<String, u32>,
    ranks: HashMap<(String, String), usize>,
    /// The files the vocabulary and the merges came from (both tokenizer.json, or vocab.json
    /// and merges.txt).
    vocab_path: PathBuf,
    merges_path: PathBuf,
    /// Added tokens of a tokenizer.json.
    added: Vec<(String, u32)>,
}

/// Vocabulary and merge ranks of a CLIP tokenizer folder: `vocab.json` + `merges.txt`, or,
/// when those are absent, the BPE model inside `tokenizer.json` (its vocabulary, merges and
/// added tokens; the slow pipeline is still used, as the fast one tokenizes some text
/// differently from the reference). Also returns the file the vocabulary came from.
fn load_bpe(dir: &Path) -> Result<BpeData> {
    let vocab_path = dir.join("vocab.json");
    let json_path = dir.join("tokenizer.json");
    if !vocab_path.is_file() && json_path.is_file() {
        return bpe_from_tokenizer_json(json_path);
    }
    if !vocab_path.is_file() {
        return Err(Error::Input(format!(
            "{}: no vocab.json (and no tokenizer.json): a CLIP tokenizer folder needs vocab.json + merges.txt",
            dir.display()
        )));
    }
    bpe_from_vocab_and_merges(dir, vocab_path)
}

/// The BPE model of a tokenizer.json: `model.vocab`, `model.merges` (as "a b" or ["a", "b"]),
/// and the added tokens (also entered into the vocabulary where absent).
fn bpe_from_tokenizer_json(json_path: PathBuf) -> Result<BpeData> {
    let j = read_json(&json_path)?;
    let bad = |what: &str| {
        damaged(
            &json_path,
            &format!("{what} (expected a BPE tokenizer.json, or vocab.json + merges.txt)"),
        )
    };
    let model = j.get("model").ok_or_else(|| bad("no model"))?;
    if let Some(t) = model.get("type").and_then(|t| t.as_str()) {
        if t != "BPE" {
            return Err(bad(&format!("the model is {t}, not BPE")));
        }
    }
    let vocab = model
        .get("vocab")
        .and_then(|v| v.as_object())
        .ok_or_else(|| bad("no model.vocab object"))?;
    let mut encoder = HashMap::with_capacity(vocab.len());
    for (k, v) in vocab {
        encoder.insert(
            k.clone(),
            v.as_u64()
                .ok_or_else(|| bad(&format!("id of {k:?} is not an integer")))? as u32,
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
    Ok(BpeData {
        encoder,
        ranks,
        vocab_path: json_path.clone(),
        merges_path: json_path,
        added,
    })
}

/// `vocab_path` (vocab.json) and the merges.txt next to it, read as CLIPTokenizer reads them.
fn bpe_from_vocab_and_merges(dir: &Path, vocab_path: PathBuf) -> Result<BpeData> {
    let vocab = read_json(&vocab_path)?;
    let obj = vocab
        .as_object()
        .ok_or_else(|| damaged(&vocab_path, "expected an object of token -> id"))?;
    let mut encoder = HashMap::with_capacity(obj.len());
    for (k, v) in obj {
        let id = v
            .as_u64()
            .filter(|&id| id <= u32::MAX as u64)
            .ok_or_else(|| damaged(&vocab_path, &format!("the id of {k:?} is not an integer")))?;
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
    // As CLIPTokenizer reads it: `read().strip().split("\n")[1 : 49152 - 256 - 2 + 1]` (the first line, the
    // `#version` header, is skipped whatever it holds; at most 48894 merges), each line split on whitespace.
    // Python would keep a line that is not two tokens as a tuple no pair matches; such a line
    // only appears in a damaged file, so it is an error here.
    let mut ranks = HashMap::new();
    for (i, line) in merges
        .trim()
        .split('\n')
        .skip(1)
        .take(MAX_CLIP_MERGES)
        .enumerate()
    {
        let parts: Vec<&str> = line.split_whitespace().collect();
        let [a, b] = parts[..] else {
            return Err(damaged(
                &merges_path,
                &format!(
                    "line {} ({line:?}) is not a merge pair (two tokens separated by a space)",
                    i + 2
                ),
            ));
        };
        ranks.insert((a.to_string(), b.to_string()), i);
    }
    Ok(BpeData {
        encoder,
        ranks,
        vocab_path,
        merges_path,
        added: Vec::new(),
    })
}

/// Checks that the vocabulary and the merges belong together, as they do in every CLIP
/// tokenizer: every byte token (and its `</w>` form) is in the vocabulary, every merge joins two
/// tokens of the vocabulary into a third, and every other token of the vocabulary is the result
/// of a merge or a special / added token (`exempt`). A merges file cut short (even at a line
/// end) leaves tokens no merge produces; a vocabulary from another tokenizer lacks tokens the
/// merges use. Either would give wrong ids without an error.
fn check_bpe(d: &BpeData, byte_enc: &[char; 256], exempt: &[&str]) -> Result<()> {
    if d.ranks.is_empty() {
        return Err(damaged(
            &d.merges_path,
            "there are no merges (the file is empty or cut short)",
        ));
    }
    let mut base = std::collections::HashSet::with_capacity(512);
    for c in byte_enc {
        for t in [c.to_string(), format!("{c}</w>")] {
            if !d.encoder.contains_key(&t) {
                return Err(damaged(
                    &d.vocab_path,
                    &format!("the byte token {t:?} is missing from the vocabulary"),
                ));
            }
            base.insert(t);
        }
    }
    let mut merges: Vec<(&(String, String), &usize)> = d.ranks.iter().collect();
    merges.sort_by_key(|m| *m.1);
    let mut produced = std::collections::HashSet::with_capacity(merges.len());
    for ((a, b), rank) in merges {
        let joined = format!("{a}{b}");
        for t in [a, b, &joined] {
            if !d.encoder.contains_key(t) {
                return Err(damaged(
                    &d.merges_path,
                    &format!(
                        "merge {} ({a:?} + {b:?}) uses or produces {t:?}, which is not in the vocabulary of {}",
                        rank + 1,
                        d.vocab_path.display()
                    ),
                ));
            }
        }
        produced.insert(joined);
    }
    let mut orphans: Vec<(&u32, &str)> = d
        .encoder
        .iter()
        .filter(|(t, _)| {
            !produced.contains(*t) && !base.contains(*t) && !exempt.contains(&t.as_str())
        })
        .map(|(t, id)| (id, t.as_str()))
        .collect();
    if !orphans.is_empty() {
        orphans.sort();
        let first: Vec<String> = orphans
            .iter()
            .take(3)
            .map(|o| format!("{:?}", o.1))
            .collect();
        return Err(damaged(
            &d.merges_path,
            &format!(
                "{} of the vocabulary ({}{}) {} from no merge: the merges are cut short or belong to another vocabulary",
                if orphans.len() == 1 {
                    "1 token".to_string()
                } else {
                    format!("{} tokens", orphans.len())
                },
                first.join(", "),
                if orphans.len() > 3 { ", ..." } else { "" },
                if orphans.len() == 1 { "comes" } else { "come" }
            ),
        ));
    }
    Ok(())
}

/// CLIPTokenizer's split pattern, compiled by Python's `regex` with IGNORECASE. Under IGNORECASE that module
/// matches the one-property sets `[\p{L}]` and `[\p{N}]` exactly (no case folding), while the negated set
/// matches a character only when no case variant of it is a letter, number or space. The `regex` crate folds
/// every class, so `\p{L}` and `\p{N}` are written case-sensitive here: otherwise U+0345 (combining ypogegrammeni,
/// whose case variants include the letter iota) counts as a letter, where the reference drops it.
const CLIP_PATTERN: &str = r"(?i)<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|(?-i:\p{L})+|(?-i:\p{N})|[^\s\p{L}\p{N}]+";

/// Merges CLIPTokenizer reads from merges.txt (`49152 - 256 - 2`).
const MAX_CLIP_MERGES: usize = 49152 - 256 - 2;

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
        let bpe = load_bpe(dir)?;
        let cfg_path = dir.join("tokenizer_config.json");
        let map_path = dir.join("special_tokens_map.json");
        let cfg = read_json_or_null(&cfg_path)?;
        let map = read_json_or_null(&map_path)?;
        let special = |name: &str, default: &str| special_token(&cfg, &map, name, default);
        let id_of = |tok: &str| -> Result<u32> {
            bpe.encoder.get(tok).copied().ok_or_else(|| {
                damaged(
                    &bpe.vocab_path,
                    &format!("the special token {tok:?} is not in the vocabulary"),
                )
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
            for (c, id) in &bpe.added {
                if !specials.iter().any(|(s, _)| s == c) {
                    specials.push((c.clone(), *id));
                }
            }
            if !specials.iter().any(|(s, _)| s == &pad_t) {
                specials.push((pad_t, pad));
            }
        }
        specials.sort_by_key(|s| std::cmp::Reverse(s.0.len()));
        let byte_enc = bytes_to_unicode();
        let unk_t = special("unk_token", "<|endoftext|>");
        let mut exempt: Vec<&str> = specials.iter().map(|s| s.0.as_str()).collect();
        exempt.push(&unk_t);
        exempt.extend(bpe.added.iter().map(|a| a.0.as_str()));
        check_bpe(&bpe, &byte_enc, &exempt)?;
        let BpeData { encoder, ranks, .. } = bpe;
        let max_len = cfg
            .get("model_max_length")
            .and_then(|v| v.as_u64())
            .filter(|&v| v < 100_000)
            .unwrap_or(77) as usize;
        Ok(ClipTokenizer {
            encoder,
            ranks,
            byte_enc,
            pat: Regex::new(CLIP_PATTERN).unwrap(),
            // Python 3.11 (the reference) has Unicode 14.0 data: characters assigned since are category Cn there
            // and count as control characters, so they are dropped too (regex-syntax knows Unicode 16).
            control: Regex::new(r"^[\p{C}\P{Age:14.0}]$").unwrap(),
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

    /// transformers' BasicTokenizer as CLIPTokenizer builds it (`strip_accents=False`,
    /// `do_split_on_punc=False`: lower case, accents kept, no punctuation split), joined with
    /// single spaces.
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
        let s = nfc_unicode14(&s);
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
            // CLIPTokenizer's BPE cache starts with these two, unchanged (no `</w>`), so the lower-cased text of
            // e.g. `<|ENDOFTEXT|>` (which the added-token split, being case-sensitive, left in place) is one token.
            if matches!(m.as_str(), "<|startoftext|>" | "<|endoftext|>") {
                out.push(self.encoder.get(m.as_str()).copied().unwrap_or(self.unk));
                continue;
            }
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

/// NFC as the reference computes it: Python 3.11's `unicodedata.normalize("NFC", ..)`, Unicode 14.0.
///
/// The `tokenizers` crate normalises with Unicode 9.0 data. Normalisation data of assigned characters never changes,
/// so the two agree on every text without the few normalisation-relevant characters assigned in Unicode 10.0 to
/// 14.0: 98 combining marks (non-zero combining class, which the 9.0 data takes for starters) and the Dives Akuru
/// vowel sign O (U+11938 = U+11935 U+11930). (Characters assigned after 14.0 never get here: the reference drops
/// them as unassigned.) Texts with one of those go through [`nfc_exact`] instead.
fn nfc_unicode14(s: &str) -> String {
    if s.is_ascii() || !s.chars().any(needs_unicode14_nfc) {
        return crate_nfc(s);
    }
    nfc_exact(s)
}

fn crate_nfc(s: &str) -> String {
    let mut n = tokenizers::NormalizedString::from(s);
    n.nfc();
    n.get().to_string()
}

/// Characters the Unicode 9.0 normaliser gets wrong (see [`nfc_unicode14`]).
fn needs_unicode14_nfc(c: char) -> bool {
    static AGE9: OnceLock<Regex> = OnceLock::new();
    if matches!(c, '\u{11930}' | '\u{11935}' | '\u{11938}') {
        return true;
    }
    ccc(c) != 0
        && !AGE9
            .get_or_init(|| Regex::new(r"^\p{Age:9.0}$").unwrap())
            .is_match(c.encode_utf8(&mut [0; 4]))
            .unwrap_or(false)
}

/// Canonical combining class (Unicode 14.0).
fn ccc(c: char) -> u8 {
    static TABLE: OnceLock<Vec<(u32, u32, u8)>> = OnceLock::new();
    let t = TABLE.get_or_init(|| {
        UNICODE14_CCC
            .split(',')
            .map(|item| {
                let (range, class) = item.trim().split_once(':').unwrap();
                let (a, b) = range.split_once('-').unwrap_or((range, range));
                let hex = |h: &str| u32::from_str_radix(h, 16).unwrap();
                (hex(a), hex(b), class.parse().unwrap())
            })
            .collect()
    });
    let cp = c as u32;
    match t.binary_search_by(|&(a, b, _)| {
        if b < cp {
            std::cmp::Ordering::Less
        } else if a > cp {
            std::cmp::Ordering::Greater
        } else {
            std::cmp::Ordering::Equal
        }
    }) {
        Ok(i) => t[i].2,
        Err(_) => 0,
    }
}

/// The primary composite of `a` and `b`, if any: the Unicode 9.0 normaliser knows all of them but U+11938.
fn compose(a: char, b: char) -> Option<char> {
    if (a, b) == ('\u{11935}', '\u{11930}') {
        return Some('\u{11938}');
    }
    let mut pair = String::with_capacity(8);
    pair.push(a);
    pair.push(b);
    let r = crate_nfc(&pair);
    let mut it = r.chars();
    match (it.next(), it.next()) {
        (Some(x), None) => Some(x),
        _ => None,
    }
}

/// UAX #15 NFC with Unicode 14.0 combining classes: full canonical decomposition (the 9.0 data plus U+11938), canonical
/// ordering, canonical composition.
fn nfc_exact(s: &str) -> String {
    let mut n =
        tokenizers::NormalizedString::from(s.replace('\u{11938}', "\u{11935}\u{11930}").as_str());
    n.nfd();
    let mut chars: Vec<char> = n.get().chars().collect();
    // Canonical ordering: a stable sort of each run of non-starters by combining class.
    let mut i = 0;
    while i < chars.len() {
        let start = i;
        while i < chars.len() && ccc(chars[i]) != 0 {
            i += 1;
        }
        chars[start..i].sort_by_key(|&c| ccc(c));
        i += 1;
    }
    // Canonical composition: each character joins the last starter unless a character between them (left
    // uncomposed) is a starter or has a combining class at least its own.
    let mut out: Vec<char> = Vec::with_capacity(chars.len());
    let mut starter: Option<usize> = None;
    let mut last_class: Option<u8> = None;
    for c in chars {
        let class = ccc(c);
        if let Some(si) = starter {
            if last_class.is_none_or(|l| l < class) {
                if let Some(x) = compose(out[si], c) {
                    out[si] = x;
                    continue;
                }
            }
        }
        if class == 0 {
            starter = Some(out.len());
            last_class = None;
        } else {
            last_class = Some(class);
        }
        out.push(c);
    }
    out.into_iter().collect()
}

// Generated by scripts/reference/make_tokenizer_fuzz.py --ccc-table (unicodedata 14.0.0).
const UNICODE14_CCC: &str = "\
    300-314:230,315:232,316-319:220,31A:232,31B:216,31C-320:220,321-322:202,323-326:220,327-328:202,\
    329-333:220,334-338:1,339-33C:220,33D-344:230,345:240,346:230,347-349:220,34A-34C:230,34D-34E:220,\
    350-352:230,353-356:220,357:230,358:232,359-35A:220,35B:230,35C:233,35D-35E:234,35F:233,360-361:234,\
    362:233,363-36F:230,483-487:230,591:220,592-595:230,596:220,597-599:230,59A:222,59B:220,59C-5A1:230,\
    5A2-5A7:220,5A8-5A9:230,5AA:220,5AB-5AC:230,5AD:222,5AE:228,5AF:230,5B0:10,5B1:11,5B2:12,5B3:13,\
    5B4:14,5B5:15,5B6:16,5B7:17,5B8:18,5B9-5BA:19,5BB:20,5BC:21,5BD:22,5BF:23,5C1:24,5C2:25,5C4:230,\
    5C5:220,5C7:18,610-617:230,618:30,619:31,61A:32,64B:27,64C:28,64D:29,64E:30,64F:31,650:32,651:33,\
    652:34,653-654:230,655-656:220,657-65B:230,65C:220,65D-65E:230,65F:220,670:35,6D6-6DC:230,\
    6DF-6E2:230,6E3:220,6E4:230,6E7-6E8:230,6EA:220,6EB-6EC:230,6ED:220,711:36,730:230,731:220,\
    732-733:230,734:220,735-736:230,737-739:220,73A:230,73B-73C:220,73D:230,73E:220,73F-741:230,742:220,\
    743:230,744:220,745:230,746:220,747:230,748:220,749-74A:230,7EB-7F1:230,7F2:220,7F3:230,7FD:220,\
    816-819:230,81B-823:230,825-827:230,829-82D:230,859-85B:220,898:230,899-89B:220,89C-89F:230,\
    8CA-8CE:230,8CF-8D3:220,8D4-8E1:230,8E3:220,8E4-8E5:230,8E6:220,8E7-8E8:230,8E9:220,8EA-8EC:230,\
    8ED-8EF:220,8F0:27,8F1:28,8F2:29,8F3-8F5:230,8F6:220,8F7-8F8:230,8F9-8FA:220,8FB-8FF:230,93C:7,\
    94D:9,951:230,952:220,953-954:230,9BC:7,9CD:9,9FE:230,A3C:7,A4D:9,ABC:7,ACD:9,B3C:7,B4D:9,BCD:9,\
    C3C:7,C4D:9,C55:84,C56:91,CBC:7,CCD:9,D3B-D3C:9,D4D:9,DCA:9,E38-E39:103,E3A:9,E48-E4B:107,\
    EB8-EB9:118,EBA:9,EC8-ECB:122,F18-F19:220,F35:220,F37:220,F39:216,F71:129,F72:130,F74:132,\
    F7A-F7D:130,F80:130,F82-F83:230,F84:9,F86-F87:230,FC6:220,1037:7,1039-103A:9,108D:220,135D-135F:230,\
    1714-1715:9,1734:9,17D2:9,17DD:230,18A9:228,1939:222,193A:230,193B:220,1A17:230,1A18:220,1A60:9,\
    1A75-1A7C:230,1A7F:220,1AB0-1AB4:230,1AB5-1ABA:220,1ABB-1ABC:230,1ABD:220,1ABF-1AC0:220,\
    1AC1-1AC2:230,1AC3-1AC4:220,1AC5-1AC9:230,1ACA:220,1ACB-1ACE:230,1B34:7,1B44:9,1B6B:230,1B6C:220,\
    1B6D-1B73:230,1BAA-1BAB:9,1BE6:7,1BF2-1BF3:9,1C37:7,1CD0-1CD2:230,1CD4:1,1CD5-1CD9:220,\
    1CDA-1CDB:230,1CDC-1CDF:220,1CE0:230,1CE2-1CE8:1,1CED:220,1CF4:230,1CF8-1CF9:230,1DC0-1DC1:230,\
    1DC2:220,1DC3-1DC9:230,1DCA:220,1DCB-1DCC:230,1DCD:234,1DCE:214,1DCF:220,1DD0:202,1DD1-1DF5:230,\
    1DF6:232,1DF7-1DF8:228,1DF9:220,1DFA:218,1DFB:230,1DFC:233,1DFD:220,1DFE:230,1DFF:220,20D0-20D1:230,\
    20D2-20D3:1,20D4-20D7:230,20D8-20DA:1,20DB-20DC:230,20E1:230,20E5-20E6:1,20E7:230,20E8:220,20E9:230,\
    20EA-20EB:1,20EC-20EF:220,20F0:230,2CEF-2CF1:230,2D7F:9,2DE0-2DFF:230,302A:218,302B:228,302C:232,\
    302D:222,302E-302F:224,3099-309A:8,A66F:230,A674-A67D:230,A69E-A69F:230,A6F0-A6F1:230,A806:9,A82C:9,\
    A8C4:9,A8E0-A8F1:230,A92B-A92D:220,A953:9,A9B3:7,A9C0:9,AAB0:230,AAB2-AAB3:230,AAB4:220,\
    AAB7-AAB8:230,AABE-AABF:230,AAC1:230,AAF6:9,ABED:9,FB1E:26,FE20-FE26:230,FE27-FE2D:220,\
    FE2E-FE2F:230,101FD:220,102E0:220,10376-1037A:230,10A0D:220,10A0F:230,10A38:230,10A39:1,10A3A:220,\
    10A3F:9,10AE5:230,10AE6:220,10D24-10D27:230,10EAB-10EAC:230,10F46-10F47:220,10F48-10F4A:230,\
    10F4B:220,10F4C:230,10F4D-10F50:220,10F82:230,10F83:220,10F84:230,10F85:220,11046:9,11070:9,1107F:9,\
    110B9:9,110BA:7,11100-11102:230,11133-11134:9,11173:7,111C0:9,111CA:7,11235:9,11236:7,112E9:7,\
    112EA:9,1133B-1133C:7,1134D:9,11366-1136C:230,11370-11374:230,11442:9,11446:7,1145E:230,114C2:9,\
    114C3:7,115BF:9,115C0:7,1163F:9,116B6:9,116B7:7,1172B:9,11839:9,1183A:7,1193D-1193E:9,11943:7,\
    119E0:9,11A34:9,11A47:9,11A99:9,11C3F:9,11D42:7,11D44-11D45:9,11D97:9,16AF0-16AF4:1,16B30-16B36:230,\
    16FF0-16FF1:6,1BC9E:1,1D165-1D166:216,1D167-1D169:1,1D16D:226,1D16E-1D172:216,1D17B-1D182:220,\
    1D185-1D189:230,1D18A-1D18B:220,1D1AA-1D1AD:230,1D242-1D244:230,1E000-1E006:230,1E008-1E018:230,\
    1E01B-1E021:230,1E023-1E024:230,1E026-1E02A:230,1E130-1E136:230,1E2AE:230,1E2EC-1E2EF:230,\
    1E8D0-1E8D6:220,1E944-1E949:230,1E94A:7";

/// CJK ideograph ranges of BERT's `_is_chinese_char`.
fn is_cjk(cp: u32) -> bool {
    matches!(cp, 0x4E00..=0x9FFF | 0x3400..=0x4DBF | 0x20000..=0x2A6DF | 0x2A700..=0x2B73F | 0x2B740..=0x2B81F | 0x2B820..=0x2CEAF | 0xF900..=0xFAFF | 0x2F800..=0x2FA1F)
}

/// The T5 tokenizer from `tokenizer.json`, or from `spiece.model` alone (converted like
/// transformers' T5TokenizerFast, see [`crate::model::spm`]).
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
        let spiece = dir.join("spiece.model");
        let (tok, source) = if path.is_file() {
            read_text(&path)?; // a clear error for unreadable / non-UTF-8 files
            let tok = tokenizers::Tokenizer::from_file(&path)
                .map_err(|e| damaged(&path, &format!("not a valid tokenizer.json ({e})")))?;
            (tok, path.clone())
        } else if spiece.is_file() {
            // Converted as transformers' T5TokenizerFast does for such a folder.
            let doc = crate::model::spm::t5_tokenizer_json(dir)?;
            let tok = doc
                .to_string()
                .parse::<tokenizers::Tokenizer>()
                .map_err(|e| {
                    damaged(
                        &spiece,
                        &format!("cannot build the tokenizer from it ({e})"),
                    )
                })?;
            (tok, spiece)
        } else {
            return Err(Error::Input(format!(
                "{}: the T5 tokenizer folder has neither tokenizer.json nor spiece.model",
                dir.display()
            )));
        };
        if !matches!(tok.get_model(), tokenizers::ModelWrapper::Unigram(_)) {
            return Err(damaged(
                &source,
                "the model is not a Unigram (SentencePiece) model, which the T5 tokenizer is",
            ));
        }
        // The special tokens as transformers resolves them; each must be a token of the file
        // (a missing one would silently become some other id).
        let cfg = read_json_or_null(&dir.join("tokenizer_config.json"))?;
        let map = read_json_or_null(&dir.join("special_tokens_map.json"))?;
        let id_of = |name: &str, default: &str| -> Result<u32> {
            let t = special_token(&cfg, &map, name, default);
            tok.token_to_id(&t).ok_or_else(|| {
                damaged(
                    &source,
                    &format!("the special token {t:?} ({name}) is not in the vocabulary"),
                )
            })
        };
        let eos = id_of("eos_token", "</s>")?;
        let pad = id_of("pad_token", "<pad>")?;
        id_of("unk_token", "<unk>")?;
        // Every encoding ends with the EOS (the post-processor appends it).
        let probe = tok
            .encode("a", true)
            .map_err(|e| damaged(&source, &format!("cannot tokenize a test text ({e})")))?;
        if probe.get_ids().last() != Some(&eos) {
            return Err(damaged(
                &source,
                &format!(
                    "an encoding does not end with the end-of-sequence token (id {eos}): the post-processor that appends it is missing or wrong"
                ),
            ));
        }
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
