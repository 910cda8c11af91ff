//! Memory-mapped safetensors reading with hardened validation, sharded checkpoints, and a writer.
//!
//! The format: an 8-byte little-endian `u64` header length `N`, then `N` bytes of UTF-8 JSON, then
//! the data section. The JSON is an object mapping each tensor name to
//! `{"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}` (offsets relative to the first
//! byte of the data section) plus an optional `"__metadata__"` object of string to string.
//!
//! This module treats every file as hostile. It has its own header parser (it does not rely on
//! the `safetensors` crate), and every number in the header is checked before it is used, so a
//! corrupt, truncated or malicious file gives an [`StError`] naming the file, the tensor and the
//! problem, never a panic or a read out of bounds. The checks follow the reference format
//! description (huggingface/safetensors README): the header length is at most 100 MB and lies
//! within the file; the header is UTF-8 JSON, an object, without duplicate keys; each entry has
//! exactly the fields `dtype`, `shape` and `data_offsets`; shapes are non-negative integers whose
//! product (times the dtype size, without overflow) equals the byte range; ranges lie within the
//! data section, do not overlap, and cover it entirely (no holes, no trailing bytes: this is what
//! prevents polyglot files). Leading and trailing JSON whitespace around the header is accepted
//! (writers pad the header so the data section is aligned).
//!
//! Mapped data may be unaligned for its dtype: the conversions here ([`decode_f32`],
//! [`SafeTensorsFile::to_f32`], [`SafeTensorsFile::to_bf16`]) read little-endian chunks and never
//! reinterpret the mapping as a typed slice.
//!
//! Safety of the mapping: like every memory-mapped reader, this assumes the file is not truncated
//! or rewritten by another process while it is mapped (which the OS would report as SIGBUS).
//! [`write_safetensors`] writes to a temporary name and renames, so it never rewrites a mapped file
//! in place.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs::{self, File};
use std::io::{BufWriter, Read, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use half::{bf16, f16};
use memmap2::Mmap;
use serde_json::Value;

/// The largest header accepted (the reference implementation uses the same limit).
pub const MAX_HEADER_LEN: u64 = 100_000_000;

/// The largest `*.safetensors.index.json` accepted.
pub const MAX_INDEX_LEN: u64 = 100_000_000;

// ---------------------------------------------------------------------------------------------
// Dtypes
// ---------------------------------------------------------------------------------------------

/// The element types a safetensors file can hold (the ones this engine understands).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StDtype {
    F64,
    F32,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U64,
    U32,
    U16,
    U8,
    Bool,
    /// 8-bit float, 4 exponent and 3 mantissa bits, no infinities (the "fn" variant).
    F8E4M3,
    /// 8-bit float, 5 exponent and 2 mantissa bits (the top byte of an f16).
    F8E5M2,
}

impl StDtype {
    /// Every dtype, in declaration order.
    pub const ALL: [StDtype; 15] = [
        StDtype::F64,
        StDtype::F32,
        StDtype::F16,
        StDtype::BF16,
        StDtype::I64,
        StDtype::I32,
        StDtype::I16,
        StDtype::I8,
        StDtype::U64,
        StDtype::U32,
        StDtype::U16,
        StDtype::U8,
        StDtype::Bool,
        StDtype::F8E4M3,
        StDtype::F8E5M2,
    ];

    /// Bytes per element.
    pub const fn size_of(self) -> usize {
        match self {
            StDtype::F64 | StDtype::I64 | StDtype::U64 => 8,
            StDtype::F32 | StDtype::I32 | StDtype::U32 => 4,
            StDtype::F16 | StDtype::BF16 | StDtype::I16 | StDtype::U16 => 2,
            StDtype::I8 | StDtype::U8 | StDtype::Bool | StDtype::F8E4M3 | StDtype::F8E5M2 => 1,
        }
    }

    /// The name used in safetensors headers (`"F32"`, `"BOOL"`, `"F8_E4M3"`, ...).
    pub const fn name(self) -> &'static str {
        match self {
            StDtype::F64 => "F64",
            StDtype::F32 => "F32",
            StDtype::F16 => "F16",
            StDtype::BF16 => "BF16",
            StDtype::I64 => "I64",
            StDtype::I32 => "I32",
            StDtype::I16 => "I16",
            StDtype::I8 => "I8",
            StDtype::U64 => "U64",
            StDtype::U32 => "U32",
            StDtype::U16 => "U16",
            StDtype::U8 => "U8",
            StDtype::Bool => "BOOL",
            StDtype::F8E4M3 => "F8_E4M3",
            StDtype::F8E5M2 => "F8_E5M2",
        }
    }

    /// Parses a header dtype name (exact, case-sensitive, as the format specifies).
    pub fn from_name(s: &str) -> Option<StDtype> {
        StDtype::ALL.iter().copied().find(|d| d.name() == s)
    }

    /// Whether this is a floating-point type.
    pub const fn is_float(self) -> bool {
        matches!(
            self,
            StDtype::F64
                | StDtype::F32
                | StDtype::F16
                | StDtype::BF16
                | StDtype::F8E4M3
                | StDtype::F8E5M2
        )
    }
}

impl fmt::Display for StDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// What is wrong (see [`StError`] for the file and tensor it concerns).
#[derive(Debug)]
#[non_exhaustive]
pub enum StErrorKind {
    /// Opening, reading, listing or mapping failed.
    Io(std::io::Error),
    /// The path exists but is not a regular file.
    NotAFile,
    /// Shorter than the 8-byte header length.
    TooShort { file_len: u64 },
    /// The header length is absurd (over [`MAX_HEADER_LEN`]).
    HeaderTooLarge { header_len: u64 },
    /// The header length points past the end of the file.
    HeaderPastEnd { header_len: u64, file_len: u64 },
    /// The header is not valid UTF-8 (`offset` is the first bad byte within the header).
    HeaderNotUtf8 { offset: usize },
    /// The header is not valid JSON (including duplicate keys and nesting too deep).
    InvalidJson(String),
    /// The header is valid JSON but not an object.
    NotAnObject { found: &'static str },
    /// `__metadata__` is not an object of strings.
    InvalidMetadata(String),
    /// A tensor entry is not an object, lacks a field, or has an unexpected one.
    InvalidEntry(String),
    /// A dtype this reader does not know.
    UnknownDtype(String),
    /// `shape` is not an array of non-negative integers.
    InvalidShape(String),
    /// The element count or the byte size of `shape` overflows.
    ShapeOverflow { shape: Vec<u64>, dtype: StDtype },
    /// `data_offsets` is malformed or has begin > end.
    InvalidOffsets(String),
    /// `data_offsets` ends past the data section (the file is truncated or the header is corrupt).
    OffsetsOutOfBounds { begin: u64, end: u64, data_len: u64 },
    /// The byte range does not match shape x dtype size.
    SizeMismatch {
        dtype: StDtype,
        shape: Vec<usize>,
        expected: usize,
        actual: usize,
    },
    /// Two tensors' byte ranges overlap.
    Overlap {
        other: String,
        range: (usize, usize),
        other_range: (usize, usize),
    },
    /// Bytes of the data section not covered by any tensor, between tensors.
    Gap {
        begin: usize,
        end: usize,
        after: Option<String>,
    },
    /// Bytes after the last tensor.
    TrailingBytes { covered: usize, data_len: usize },
    /// The tensor is not in this file / checkpoint.
    MissingTensor { tensors: usize, files: usize },
    /// No usable safetensors files (empty folder, empty list).
    NoCheckpoint(String),
    /// Several index files and no canonical one.
    AmbiguousCheckpoint(Vec<String>),
    /// A `*.safetensors.index.json` is malformed.
    InvalidIndex(String),
    /// A shard named in the index does not exist.
    MissingShard { shard: String, index: PathBuf },
    /// The index maps a tensor to a shard that does not contain it.
    IndexMismatch {
        shard: String,
        actually_in: Option<PathBuf>,
    },
    /// The same tensor name is in two files of one checkpoint.
    DuplicateTensor { first: PathBuf },
}

/// A safetensors error: the file (or folder) it concerns, the tensor where relevant, and the
/// problem. Its message says what is wrong and what to do.
#[derive(Debug)]
pub struct StError {
    file: PathBuf,
    tensor: Option<String>,
    kind: StErrorKind,
}

impl StError {
    pub fn new(file: impl Into<PathBuf>, kind: StErrorKind) -> StError {
        StError {
            file: file.into(),
            tensor: None,
            kind,
        }
    }
    pub fn with_tensor(mut self, tensor: impl Into<String>) -> StError {
        self.tensor = Some(tensor.into());
        self
    }
    /// The file (or, for checkpoint-level errors, the folder or index file) concerned.
    pub fn file(&self) -> &Path {
        &self.file
    }
    /// The tensor concerned, if any.
    pub fn tensor(&self) -> Option<&str> {
        self.tensor.as_deref()
    }
    pub fn kind(&self) -> &StErrorKind {
        &self.kind
    }

    fn describe(&self) -> String {
        use StErrorKind as K;
        match &self.kind {
            K::Io(e) => format!("cannot read: {e}"),
            K::NotAFile => "is not a regular file".into(),
            K::TooShort { file_len } => {
                format!("file is only {file_len} bytes, shorter than the 8-byte header length every safetensors file starts with")
            }
            K::HeaderTooLarge { header_len } => {
                format!("header length {header_len} bytes is absurdly large (the limit is {MAX_HEADER_LEN})")
            }
            K::HeaderPastEnd { header_len, file_len } => format!(
                "header length {header_len} bytes runs past the end of the file ({file_len} bytes): the file is truncated or not a safetensors file"
            ),
            K::HeaderNotUtf8 { offset } => format!("header is not valid UTF-8 (bad byte at header offset {offset})"),
            K::InvalidJson(m) => format!("header is not valid JSON: {m}"),
            K::NotAnObject { found } => format!("header JSON is {found}, not an object mapping tensor names to entries"),
            K::InvalidMetadata(m) => format!("invalid `__metadata__`: {m}"),
            K::InvalidEntry(m) => format!("invalid header entry: {m}"),
            K::UnknownDtype(d) => {
                let known: Vec<&str> = StDtype::ALL.iter().map(|d| d.name()).collect();
                format!("unknown or unsupported dtype {d:?} (supported: {})", known.join(", "))
            }
            K::InvalidShape(m) => format!("invalid shape: {m}"),
            K::ShapeOverflow { shape, dtype } => {
                format!("shape {shape:?} of {dtype} overflows: its element count or byte size does not fit in a usize")
            }
            K::InvalidOffsets(m) => format!("invalid data_offsets: {m}"),
            K::OffsetsOutOfBounds { begin, end, data_len } => format!(
                "data_offsets [{begin}, {end}] lie out of bounds: past the end of the data section ({data_len} bytes); the file is truncated or its header is corrupt"
            ),
            K::SizeMismatch { dtype, shape, expected, actual } => format!(
                "size mismatch: shape {shape:?} of {dtype} needs {expected} bytes but data_offsets span {actual} bytes"
            ),
            K::Overlap { other, range, other_range } => format!(
                "data_offsets [{}, {}] overlap those of tensor `{other}` [{}, {}]",
                range.0, range.1, other_range.0, other_range.1
            ),
            K::Gap { begin, end, after } => {
                let where_ = match after {
                    Some(t) => format!("after tensor `{t}`"),
                    None => "before the first tensor".into(),
                };
                format!(
                    "gap in the data section: bytes [{begin}, {end}) {where_} belong to no tensor (the format forbids holes)"
                )
            }
            K::TrailingBytes { covered, data_len } => format!(
                "{} trailing bytes after the last tensor: the tensors cover {covered} of the {data_len}-byte data section (the format forbids holes and trailing data)",
                data_len - covered
            ),
            K::MissingTensor { tensors, files } => {
                if *files > 1 {
                    format!("tensor not found (the checkpoint has {tensors} tensors in {files} files)")
                } else {
                    format!("tensor not found (the file has {tensors} tensors)")
                }
            }
            K::NoCheckpoint(m) => format!("no checkpoint: {m}"),
            K::AmbiguousCheckpoint(names) => {
                format!("several checkpoint indexes and none with a canonical name: {}", names.join(", "))
            }
            K::InvalidIndex(m) => format!("invalid checkpoint index: {m}"),
            K::MissingShard { shard, index } => {
                format!("missing shard: the index {} names shard file {shard:?}, which does not exist", index.display())
            }
            K::IndexMismatch { shard, actually_in } => match actually_in {
                Some(p) => format!(
                    "index mismatch: the index maps the tensor to shard {shard:?}, which does not contain it (it is in {})",
                    p.display()
                ),
                None => format!("index mismatch: the index maps the tensor to shard {shard:?}, which does not contain it"),
            },
            K::DuplicateTensor { first } => {
                format!("duplicate tensor: it is also in {} (each tensor must be in exactly one shard)", first.display())
            }
        }
    }

    fn hint(&self) -> &'static str {
        use StErrorKind as K;
        match &self.kind {
            K::Io(_) | K::NotAFile => "Check the path and its permissions.",
            K::TooShort { .. } | K::HeaderPastEnd { .. } | K::OffsetsOutOfBounds { .. } => {
                "The file looks truncated (an interrupted download or copy?): download it again."
            }
            K::HeaderTooLarge { .. } | K::HeaderNotUtf8 { .. } | K::InvalidJson(_) | K::NotAnObject { .. } => {
                "This is not a valid safetensors file (corrupt, or another format such as a PyTorch .bin/.pt): download or convert it again."
            }
            K::UnknownDtype(_) => "Convert the checkpoint to a supported dtype (e.g. BF16, F16 or F32).",
            K::InvalidMetadata(_)
            | K::InvalidEntry(_)
            | K::InvalidShape(_)
            | K::ShapeOverflow { .. }
            | K::InvalidOffsets(_)
            | K::SizeMismatch { .. }
            | K::Overlap { .. }
            | K::Gap { .. }
            | K::TrailingBytes { .. } => {
                "The file is corrupt or was written by a non-conforming tool: download it again or re-save it with the safetensors library."
            }
            K::MissingTensor { .. } => {
                "Check that this is the right checkpoint (and component folder) for the model and config."
            }
            K::NoCheckpoint(_) => "Point at a model component folder (e.g. transformer/) holding *.safetensors files.",
            K::AmbiguousCheckpoint(_) => "Keep one index in the folder, or open the shard files explicitly.",
            K::InvalidIndex(_) => "Download the index JSON again, or remove it if the folder has a single *.safetensors file.",
            K::MissingShard { .. } => "The checkpoint is incomplete: download the missing shard.",
            K::IndexMismatch { .. } | K::DuplicateTensor { .. } => {
                "The shards come from different checkpoint versions or the index is stale: download the checkpoint again."
            }
        }
    }
}

impl fmt::Display for StError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(t) = &self.tensor {
            write!(f, ": tensor `{t}`")?;
        }
        write!(f, ": {}. {}", self.describe(), self.hint())
    }
}

impl std::error::Error for StError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            StErrorKind::Io(e) => Some(e),
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Strict JSON (serde_json, but duplicate keys are an error at every level)
// ---------------------------------------------------------------------------------------------

struct StrictValue(Value);

impl<'de> serde::Deserialize<'de> for StrictValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(StrictValue)
    }
}

struct StrictVisitor;

impl<'de> serde::de::Visitor<'de> for StrictVisitor {
    type Value = Value;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut v = Vec::new();
        while let Some(StrictValue(x)) = seq.next_element()? {
            v.push(x);
        }
        Ok(Value::Array(v))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut m = serde_json::Map::new();
        while let Some(k) = map.next_key::<String>()? {
            if m.contains_key(&k) {
                return Err(<A::Error as serde::de::Error>::custom(format!(
                    "duplicate key {k:?} (duplicate keys are forbidden)"
                )));
            }
            let StrictValue(v) = map.next_value()?;
            m.insert(k, v);
        }
        Ok(Value::Object(m))
    }
}

/// Parses JSON text, rejecting duplicate keys; nesting depth is bounded by serde_json's limit.
fn parse_strict_json(text: &str) -> Result<Value, String> {
    use serde::Deserialize;
    let mut de = serde_json::Deserializer::from_str(text);
    let StrictValue(v) = StrictValue::deserialize(&mut de).map_err(|e| e.to_string())?;
    de.end().map_err(|e| e.to_string())?;
    Ok(v)
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

// ---------------------------------------------------------------------------------------------
// Header parsing
// ---------------------------------------------------------------------------------------------

/// One tensor of a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: StDtype,
    pub shape: Vec<usize>,
    /// Absolute offset of the first byte in the file.
    pub start: usize,
    /// Bytes (= product(shape) * dtype size).
    pub len: usize,
}

impl TensorInfo {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        // Validated not to overflow when the header was parsed.
        self.shape.iter().product()
    }
    /// Absolute byte range in the file.
    pub fn range(&self) -> std::ops::Range<usize> {
        self.start..self.start + self.len
    }
}

struct Parsed {
    tensors: BTreeMap<String, TensorInfo>,
    metadata: BTreeMap<String, String>,
    header_len: usize,
}

/// Reads an array of non-negative integers (as u64) or says what is wrong with it.
fn u64_array(v: &Value, field: &str) -> Result<Vec<u64>, String> {
    let arr = v.as_array().ok_or_else(|| {
        format!(
            "`{field}` is {}, expected an array of non-negative integers",
            json_kind(v)
        )
    })?;
    arr.iter()
        .enumerate()
        .map(|(i, x)| match x {
            Value::Number(n) => {
                if let Some(u) = n.as_u64() {
                    Ok(u)
                } else if let Some(s) = n.as_i64() {
                    Err(format!("`{field}` entry {i} is negative ({s})"))
                } else {
                    Err(format!("`{field}` entry {i} is not an integer ({n})"))
                }
            }
            other => Err(format!(
                "`{field}` entry {i} is {}, expected a non-negative integer",
                json_kind(other)
            )),
        })
        .collect()
}

/// Parses and validates a whole file's header: the length prefix and the JSON object
/// (`read_header`), each entry (`parse_metadata`, `parse_entry`), then the layout of the data
/// section (`check_tiling`).
fn parse(path: &Path, bytes: &[u8]) -> Result<Parsed, StError> {
    let (obj, n) = read_header(path, bytes)?;
    let data_start = 8 + n;
    let data_len = bytes.len() - data_start;
    let mut metadata = BTreeMap::new();
    let mut tensors = BTreeMap::new();
    for (name, entry) in obj {
        if name == "__metadata__" {
            parse_metadata(path, entry, &mut metadata)?;
            continue;
        }
        let info = parse_entry(path, name, &entry, data_start, data_len)?;
        tensors.insert(info.name.clone(), info);
    }
    check_tiling(path, &tensors, data_start, data_len)?;
    Ok(Parsed {
        tensors,
        metadata,
        header_len: n,
    })
}

/// The header's JSON object and its length in bytes: the little-endian u64 length prefix
/// (bounded by `MAX_HEADER_LEN` and by the file), UTF-8, strict JSON, an object at the root.
fn read_header(
    path: &Path,
    bytes: &[u8],
) -> Result<(serde_json::Map<String, Value>, usize), StError> {
    use StErrorKind as K;
    let e = |k: StErrorKind| StError::new(path, k);
    let file_len = bytes.len() as u64;
    if bytes.len() < 8 {
        return Err(e(K::TooShort { file_len }));
    }
    let mut n8 = [0u8; 8];
    n8.copy_from_slice(&bytes[..8]);
    let header_len = u64::from_le_bytes(n8);
    if header_len > MAX_HEADER_LEN {
        return Err(e(K::HeaderTooLarge { header_len }));
    }
    if header_len > file_len - 8 {
        return Err(e(K::HeaderPastEnd {
            header_len,
            file_len,
        }));
    }
    let n = header_len as usize; // <= 100 MB and <= file length
    let header = &bytes[8..8 + n];
    let text = std::str::from_utf8(header).map_err(|u| {
        e(K::HeaderNotUtf8 {
            offset: u.valid_up_to(),
        })
    })?;
    let root = parse_strict_json(text).map_err(|m| e(K::InvalidJson(m)))?;
    match root {
        Value::Object(o) => Ok((o, n)),
        other => Err(e(K::NotAnObject {
            found: json_kind(&other),
        })),
    }
}

/// The `__metadata__` entry (null, or an object of string values) into `metadata`.
fn parse_metadata(
    path: &Path,
    entry: Value,
    metadata: &mut BTreeMap<String, String>,
) -> Result<(), StError> {
    let bad = |m: String| Err(StError::new(path, StErrorKind::InvalidMetadata(m)));
    match entry {
        Value::Null => Ok(()),
        Value::Object(m) => {
            for (k, v) in m {
                match v {
                    Value::String(s) => {
                        metadata.insert(k, s);
                    }
                    other => {
                        return bad(format!(
                            "value of key {k:?} is {}; all metadata values must be strings",
                            json_kind(&other)
                        ))
                    }
                }
            }
            Ok(())
        }
        other => bad(format!(
            "it is {}, expected an object of string values",
            json_kind(&other)
        )),
    }
}

/// One tensor entry: exactly `dtype`, `shape` and `data_offsets`, a known dtype, a shape whose
/// byte size does not overflow, offsets inside the data section (`data_len` bytes from
/// `data_start`) spanning exactly that size.
fn parse_entry(
    path: &Path,
    name: String,
    entry: &Value,
    data_start: usize,
    data_len: usize,
) -> Result<TensorInfo, StError> {
    use StErrorKind as K;
    let te = |k: StErrorKind| StError::new(path, k).with_tensor(name.clone());
    let fields = match entry {
        Value::Object(f) => f,
        other => {
            return Err(te(K::InvalidEntry(format!(
                "the entry is {}, expected an object with `dtype`, `shape` and `data_offsets`",
                json_kind(other)
            ))))
        }
    };
    if let Some(extra) = fields
        .keys()
        .find(|k| !matches!(k.as_str(), "dtype" | "shape" | "data_offsets"))
    {
        return Err(te(K::InvalidEntry(format!(
            "unexpected field {extra:?} (an entry has exactly `dtype`, `shape` and `data_offsets`)"
        ))));
    }
    let get = |f: &str| {
        fields
            .get(f)
            .ok_or_else(|| te(K::InvalidEntry(format!("missing field `{f}`"))))
    };
    let dtype_v = get("dtype")?;
    let shape_v = get("shape")?;
    let offs_v = get("data_offsets")?;

    let dtype_s = dtype_v.as_str().ok_or_else(|| {
        te(K::InvalidEntry(format!(
            "`dtype` is {}, expected a string",
            json_kind(dtype_v)
        )))
    })?;
    let dtype =
        StDtype::from_name(dtype_s).ok_or_else(|| te(K::UnknownDtype(dtype_s.to_owned())))?;

    let shape64 = u64_array(shape_v, "shape").map_err(|m| te(K::InvalidShape(m)))?;
    let overflow = || {
        te(K::ShapeOverflow {
            shape: shape64.clone(),
            dtype,
        })
    };
    let mut shape = Vec::with_capacity(shape64.len());
    let mut numel: usize = 1;
    for &d in &shape64 {
        let d = usize::try_from(d).map_err(|_| overflow())?;
        numel = numel.checked_mul(d).ok_or_else(overflow)?;
        shape.push(d);
    }
    let nbytes = numel.checked_mul(dtype.size_of()).ok_or_else(overflow)?;

    let offs = u64_array(offs_v, "data_offsets").map_err(|m| te(K::InvalidOffsets(m)))?;
    let [begin, end] = offs[..] else {
        return Err(te(K::InvalidOffsets(format!(
            "expected [begin, end], found {} numbers",
            offs.len()
        ))));
    };
    if begin > end {
        return Err(te(K::InvalidOffsets(format!("begin {begin} > end {end}"))));
    }
    if end > data_len as u64 {
        return Err(te(K::OffsetsOutOfBounds {
            begin,
            end,
            data_len: data_len as u64,
        }));
    }
    let (b, en) = (begin as usize, end as usize);
    if en - b != nbytes {
        return Err(te(K::SizeMismatch {
            dtype,
            shape,
            expected: nbytes,
            actual: en - b,
        }));
    }
    Ok(TensorInfo {
        name,
        dtype,
        shape,
        start: data_start + b,
        len: nbytes,
    })
}

/// The tensors' ranges must tile the data section: no overlaps, no holes, no trailing bytes.
fn check_tiling(
    path: &Path,
    tensors: &BTreeMap<String, TensorInfo>,
    data_start: usize,
    data_len: usize,
) -> Result<(), StError> {
    use StErrorKind as K;
    let mut ranges: Vec<(usize, usize, &str)> = tensors
        .values()
        .map(|t| {
            (
                t.start - data_start,
                t.start - data_start + t.len,
                t.name.as_str(),
            )
        })
        .collect();
    ranges.sort_unstable();
    let mut cursor = 0usize;
    let mut last: Option<(usize, usize, &str)> = None; // the range reaching furthest so far
    for &(b, en, name) in &ranges {
        if b < cursor {
            let (ob, oe, other) = last.unwrap_or((0, 0, ""));
            return Err(StError::new(
                path,
                K::Overlap {
                    other: other.to_owned(),
                    range: (b, en),
                    other_range: (ob, oe),
                },
            )
            .with_tensor(name));
        }
        if b > cursor {
            let err = StError::new(
                path,
                K::Gap {
                    begin: cursor,
                    end: b,
                    after: last.map(|l| l.2.to_owned()),
                },
            );
            return Err(err.with_tensor(name));
        }
        if en >= cursor {
            cursor = en;
            last = Some((b, en, name));
        }
    }
    if cursor != data_len {
        return Err(StError::new(
            path,
            K::TrailingBytes {
                covered: cursor,
                data_len,
            },
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Conversions (alignment-safe: little-endian chunks, never a typed reinterpretation)
// ---------------------------------------------------------------------------------------------

/// Decodes an F8 E4M3 ("fn": no infinities, 0x7F/0xFF are NaN) byte.
pub fn f8e4m3_to_f32(b: u8) -> f32 {
    let sign = if b & 0x80 != 0 { -1.0f32 } else { 1.0 };
    let exp = ((b >> 3) & 0x0F) as i32;
    let man = (b & 0x07) as f32;
    if exp == 0x0F && b & 0x07 == 0x07 {
        return f32::NAN;
    }
    if exp == 0 {
        sign * man / 8.0 * 2f32.powi(-6)
    } else {
        sign * (1.0 + man / 8.0) * 2f32.powi(exp - 7)
    }
}

/// Decodes an F8 E5M2 byte (exactly the top byte of an IEEE f16).
pub fn f8e5m2_to_f32(b: u8) -> f32 {
    f16::from_bits((b as u16) << 8).to_f32()
}

/// Decodes little-endian `bytes` of `dtype` into f32 (integers are converted with `as`, so
/// integers beyond 2^24 round; BOOL gives 0 or 1). Trailing bytes that do not form a whole
/// element are ignored (validated tensors have none).
pub fn decode_f32(dtype: StDtype, bytes: &[u8]) -> Vec<f32> {
    fn le<const N: usize>(c: &[u8]) -> [u8; N] {
        let mut a = [0u8; N];
        a.copy_from_slice(c);
        a
    }
    match dtype {
        StDtype::F64 => bytes
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(le(c)) as f32)
            .collect(),
        StDtype::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(le(c)))
            .collect(),
        StDtype::F16 => bytes
            .chunks_exact(2)
            .map(|c| f16::from_le_bytes(le(c)).to_f32())
            .collect(),
        StDtype::BF16 => bytes
            .chunks_exact(2)
            .map(|c| bf16::from_le_bytes(le(c)).to_f32())
            .collect(),
        StDtype::I64 => bytes
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(le(c)) as f32)
            .collect(),
        StDtype::I32 => bytes
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes(le(c)) as f32)
            .collect(),
        StDtype::I16 => bytes
            .chunks_exact(2)
            .map(|c| i16::from_le_bytes(le(c)) as f32)
            .collect(),
        StDtype::I8 => bytes.iter().map(|&b| b as i8 as f32).collect(),
        StDtype::U64 => bytes
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(le(c)) as f32)
            .collect(),
        StDtype::U32 => bytes
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(le(c)) as f32)
            .collect(),
        StDtype::U16 => bytes
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes(le(c)) as f32)
            .collect(),
        StDtype::U8 => bytes.iter().map(|&b| b as f32).collect(),
        StDtype::Bool => bytes
            .iter()
            .map(|&b| if b != 0 { 1.0 } else { 0.0 })
            .collect(),
        StDtype::F8E4M3 => bytes.iter().map(|&b| f8e4m3_to_f32(b)).collect(),
        StDtype::F8E5M2 => bytes.iter().map(|&b| f8e5m2_to_f32(b)).collect(),
    }
}

/// Decodes little-endian `bytes` of `dtype` into bf16 (BF16 is copied exactly; other types go
/// through f32 with round-to-nearest-even).
pub fn decode_bf16(dtype: StDtype, bytes: &[u8]) -> Vec<bf16> {
    match dtype {
        StDtype::BF16 => bytes
            .chunks_exact(2)
            .map(|c| bf16::from_le_bytes([c[0], c[1]]))
            .collect(),
        StDtype::F32 => bytes
            .chunks_exact(4)
            .map(|c| bf16::from_f32(f32::from_le_bytes([c[0], c[1], c[2], c[3]])))
            .collect(),
        _ => decode_f32(dtype, bytes)
            .into_iter()
            .map(bf16::from_f32)
            .collect(),
    }
}

// ---------------------------------------------------------------------------------------------
// One file
// ---------------------------------------------------------------------------------------------

/// A validated safetensors file, memory-mapped (or, from [`SafeTensorsFile::from_bytes`], held in
/// an anonymous mapping), with zero-copy access to each tensor's bytes.
#[derive(Clone)]
pub struct SafeTensorsFile {
    path: PathBuf,
    mmap: Arc<Mmap>,
    tensors: BTreeMap<String, TensorInfo>,
    metadata: BTreeMap<String, String>,
    header_len: usize,
}

impl fmt::Debug for SafeTensorsFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SafeTensorsFile")
            .field("path", &self.path)
            .field("file_len", &self.mmap.len())
            .field("tensors", &self.tensors.len())
            .field("metadata", &self.metadata)
            .finish()
    }
}

impl SafeTensorsFile {
    /// Maps `path` and validates the whole header up front.
    pub fn open(path: &Path) -> Result<Self, StError> {
        let io = |e: std::io::Error| StError::new(path, StErrorKind::Io(e));
        let file = File::open(path).map_err(io)?;
        let meta = file.metadata().map_err(io)?;
        if !meta.is_file() {
            return Err(StError::new(path, StErrorKind::NotAFile));
        }
        if meta.len() < 8 {
            // Do not even map it (mapping an empty file is an error on some platforms).
            return Err(StError::new(
                path,
                StErrorKind::TooShort {
                    file_len: meta.len(),
                },
            ));
        }
        // SAFETY: the mapping is read-only; see the module docs about concurrent modification.
        let mmap = unsafe { Mmap::map(&file) }.map_err(io)?;
        let p = parse(path, &mmap)?;
        Ok(SafeTensorsFile {
            path: path.to_path_buf(),
            mmap: Arc::new(mmap),
            tensors: p.tensors,
            metadata: p.metadata,
            header_len: p.header_len,
        })
    }

    /// Validates `bytes` as a safetensors file called `name` (used in messages) and keeps them in
    /// an anonymous read-only mapping, so [`Self::backing`] has the same type as for a file.
    pub fn from_bytes(name: &str, bytes: Vec<u8>) -> Result<Self, StError> {
        let path = PathBuf::from(name);
        let p = parse(&path, &bytes)?;
        let io = |e: std::io::Error| StError::new(&path, StErrorKind::Io(e));
        // A valid file is at least 10 bytes (8 + "{}"), so the mapping is never empty.
        let mut anon = memmap2::MmapOptions::new()
            .len(bytes.len())
            .map_anon()
            .map_err(io)?;
        anon.copy_from_slice(&bytes);
        drop(bytes);
        let mmap = anon.make_read_only().map_err(io)?;
        Ok(SafeTensorsFile {
            path,
            mmap: Arc::new(mmap),
            tensors: p.tensors,
            metadata: p.metadata,
            header_len: p.header_len,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
    /// Tensor names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }
    pub fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.get(name)
    }
    /// Every tensor, sorted by name.
    pub fn tensors(&self) -> impl Iterator<Item = &TensorInfo> {
        self.tensors.values()
    }
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
    pub fn len(&self) -> usize {
        self.tensors.len()
    }
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }
    /// The `__metadata__` map (empty if absent).
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }
    /// Total size of the file in bytes.
    pub fn file_len(&self) -> usize {
        self.mmap.len()
    }
    /// Absolute offset of the data section (8 + header length).
    pub fn data_offset(&self) -> usize {
        8 + self.header_len
    }
    /// Sum of all tensors' byte sizes.
    pub fn total_bytes(&self) -> usize {
        self.tensors.values().map(|t| t.len).sum()
    }
    /// The whole mapped file (keep it alive to hold zero-copy views: `info.start..+info.len`).
    pub fn backing(&self) -> Arc<Mmap> {
        self.mmap.clone()
    }

    fn missing(&self, name: &str) -> StError {
        StError::new(
            &self.path,
            StErrorKind::MissingTensor {
                tensors: self.tensors.len(),
                files: 1,
            },
        )
        .with_tensor(name)
    }

    /// `name`'s info, or an error naming the file and the tensor.
    pub fn get(&self, name: &str) -> Result<&TensorInfo, StError> {
        self.tensors.get(name).ok_or_else(|| self.missing(name))
    }

    /// Zero-copy view of `name`'s bytes (little-endian, possibly unaligned for its dtype).
    pub fn bytes(&self, name: &str) -> Result<&[u8], StError> {
        let info = self.get(name)?;
        self.view(info)
    }

    fn view(&self, info: &TensorInfo) -> Result<&[u8], StError> {
        // Always in range (validated at open), but never index unchecked.
        info.start
            .checked_add(info.len)
            .and_then(|end| self.mmap.get(info.start..end))
            .ok_or_else(|| {
                StError::new(
                    &self.path,
                    StErrorKind::OffsetsOutOfBounds {
                        begin: info.start as u64,
                        end: (info.start as u64).saturating_add(info.len as u64),
                        data_len: self.mmap.len() as u64,
                    },
                )
                .with_tensor(info.name.clone())
            })
    }

    /// `name` converted to f32 (from any dtype; see [`decode_f32`]).
    pub fn to_f32(&self, name: &str) -> Result<Vec<f32>, StError> {
        let info = self.get(name)?;
        Ok(decode_f32(info.dtype, self.view(info)?))
    }

    /// `name` converted to bf16 (see [`decode_bf16`]).
    pub fn to_bf16(&self, name: &str) -> Result<Vec<bf16>, StError> {
        let info = self.get(name)?;
        Ok(decode_bf16(info.dtype, self.view(info)?))
    }
}

// ---------------------------------------------------------------------------------------------
// Checkpoints (one file, or shards with an index)
// ---------------------------------------------------------------------------------------------

/// Canonical checkpoint base names, preferred in this order.
const CANONICAL: [&str; 2] = ["diffusion_pytorch_model", "model"];
const INDEX_SUFFIX: &str = ".safetensors.index.json";
const FILE_SUFFIX: &str = ".safetensors";

/// A model component's weights: one or more validated safetensors files, each tensor in exactly
/// one of them.
#[derive(Clone, Debug)]
pub struct ShardedCheckpoint {
    /// The folder (or the single file) opened: used in messages.
    root: PathBuf,
    files: Vec<SafeTensorsFile>,
    index: HashMap<String, usize>,
}

impl ShardedCheckpoint {
    /// A component folder (e.g. `transformer/`): either a single `*.safetensors`
    /// (`diffusion_pytorch_model.safetensors` / `model.safetensors`) or shards listed in a
    /// `*.safetensors.index.json` (`{"metadata": ..., "weight_map": {name: file}}`).
    ///
    /// Choice, in order: a canonical index, a canonical single file, the only index, every
    /// `*.safetensors` file in the folder (each tensor must then be in exactly one of them).
    pub fn open_dir(dir: &Path) -> Result<Self, StError> {
        let io = |e: std::io::Error| StError::new(dir, StErrorKind::Io(e));
        let mut indexes = Vec::new();
        let mut singles = Vec::new();
        for entry in fs::read_dir(dir).map_err(io)? {
            let entry = entry.map_err(io)?;
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            if name.starts_with('.') {
                continue; // temporaries of write_safetensors, editor files
            }
            if name.ends_with(INDEX_SUFFIX) {
                indexes.push(name);
            } else if name.ends_with(FILE_SUFFIX) {
                singles.push(name);
            }
        }
        indexes.sort();
        singles.sort();
        for base in CANONICAL {
            let idx = format!("{base}{INDEX_SUFFIX}");
            if indexes.contains(&idx) {
                return Self::open_index(dir, &dir.join(idx));
            }
        }
        for base in CANONICAL {
            let f = format!("{base}{FILE_SUFFIX}");
            if singles.contains(&f) {
                return Self::from_files(dir, vec![SafeTensorsFile::open(&dir.join(f))?]);
            }
        }
        match indexes.len() {
            1 => return Self::open_index(dir, &dir.join(&indexes[0])),
            n if n > 1 => return Err(StError::new(dir, StErrorKind::AmbiguousCheckpoint(indexes))),
            _ => {}
        }
        if singles.is_empty() {
            return Err(StError::new(
                dir,
                StErrorKind::NoCheckpoint(
                    "the folder has no *.safetensors file and no *.safetensors.index.json".into(),
                ),
            ));
        }
        let files = singles
            .iter()
            .map(|s| SafeTensorsFile::open(&dir.join(s)))
            .collect::<Result<Vec<_>, _>>()?;
        Self::from_files(dir, files)
    }

    /// Opens and validates each file; a tensor name in two files is an error.
    pub fn open_files(paths: &[PathBuf]) -> Result<Self, StError> {
        let Some(first) = paths.first() else {
            return Err(StError::new(
                "<no files>",
                StErrorKind::NoCheckpoint("the list of files is empty".into()),
            ));
        };
        let root = if paths.len() == 1 {
            first.clone()
        } else {
            first.parent().map(Path::to_path_buf).unwrap_or_default()
        };
        let files = paths
            .iter()
            .map(|p| SafeTensorsFile::open(p))
            .collect::<Result<Vec<_>, _>>()?;
        Self::from_files(&root, files)
    }

    /// A checkpoint from already-open files (e.g. [`SafeTensorsFile::from_bytes`]).
    pub fn from_files(root: &Path, files: Vec<SafeTensorsFile>) -> Result<Self, StError> {
        let mut index: HashMap<String, usize> = HashMap::new();
        for (i, f) in files.iter().enumerate() {
            for name in f.names() {
                if let Some(&j) = index.get(name) {
                    return Err(StError::new(
                        f.path(),
                        StErrorKind::DuplicateTensor {
                            first: files[j].path().to_path_buf(),
                        },
                    )
                    .with_tensor(name));
                }
                index.insert(name.to_owned(), i);
            }
        }
        let root = if files.len() == 1 && root.is_dir() {
            files[0].path().to_path_buf()
        } else {
            root.to_path_buf()
        };
        Ok(ShardedCheckpoint { root, files, index })
    }

    fn open_index(dir: &Path, index_path: &Path) -> Result<Self, StError> {
        let bad = |m: String| StError::new(index_path, StErrorKind::InvalidIndex(m));
        let io = |e: std::io::Error| StError::new(index_path, StErrorKind::Io(e));
        let f = File::open(index_path).map_err(io)?;
        let mut raw = Vec::new();
        f.take(MAX_INDEX_LEN + 1)
            .read_to_end(&mut raw)
            .map_err(io)?;
        if raw.len() as u64 > MAX_INDEX_LEN {
            return Err(bad(format!("larger than {MAX_INDEX_LEN} bytes")));
        }
        let text = std::str::from_utf8(&raw).map_err(|u| {
            bad(format!(
                "not valid UTF-8 (bad byte at offset {})",
                u.valid_up_to()
            ))
        })?;
        let root = parse_strict_json(text).map_err(|m| bad(format!("not valid JSON: {m}")))?;
        let obj = root.as_object().ok_or_else(|| {
            bad(format!(
                "the JSON is {}, expected an object",
                json_kind(&root)
            ))
        })?;
        let wm = obj
            .get("weight_map")
            .ok_or_else(|| bad("missing `weight_map`".into()))?;
        let wm = wm.as_object().ok_or_else(|| {
            bad(format!(
                "`weight_map` is {}, expected an object of tensor name -> shard file",
                json_kind(wm)
            ))
        })?;
        let mut weight_map: Vec<(&str, &str)> = Vec::with_capacity(wm.len());
        let mut shards: BTreeMap<&str, &str> = BTreeMap::new(); // shard -> an example tensor
        for (name, v) in wm {
            let shard = v.as_str().ok_or_else(|| {
                bad(format!(
                    "`weight_map` entry {name:?} is {}, expected a shard file name",
                    json_kind(v)
                ))
            })?;
            let mut comps = Path::new(shard).components();
            if !matches!(
                (comps.next(), comps.next()),
                (Some(Component::Normal(_)), None)
            ) {
                return Err(bad(format!(
                    "`weight_map` entry {name:?} names {shard:?}, which is not a plain file name in the index's folder"
                )));
            }
            weight_map.push((name, shard));
            shards.entry(shard).or_insert(name);
        }
        if shards.is_empty() {
            return Err(bad("`weight_map` is empty".into()));
        }
        let mut files = Vec::with_capacity(shards.len());
        let mut shard_pos: HashMap<&str, usize> = HashMap::new();
        for (&shard, &example) in &shards {
            let p = dir.join(shard);
            if !p.exists() {
                return Err(StError::new(
                    &p,
                    StErrorKind::MissingShard {
                        shard: shard.to_owned(),
                        index: index_path.to_path_buf(),
                    },
                )
                .with_tensor(example));
            }
            shard_pos.insert(shard, files.len());
            files.push(SafeTensorsFile::open(&p)?);
        }
        let ck = Self::from_files(dir, files)?;
        for (name, shard) in weight_map {
            let pos = shard_pos[shard];
            if !ck.files[pos].contains(name) {
                let actually_in = ck
                    .index
                    .get(name)
                    .map(|&i| ck.files[i].path().to_path_buf());
                return Err(StError::new(
                    ck.files[pos].path(),
                    StErrorKind::IndexMismatch {
                        shard: shard.to_owned(),
                        actually_in,
                    },
                )
                .with_tensor(name));
            }
        }
        Ok(ck)
    }

    /// The folder (or single file) this checkpoint was opened from.
    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn files(&self) -> &[SafeTensorsFile] {
        &self.files
    }
    /// Every tensor name (file by file, each file's names sorted).
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.files.iter().flat_map(|f| f.names())
    }
    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }
    pub fn len(&self) -> usize {
        self.index.len()
    }
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }
    /// Sum of all tensors' byte sizes.
    pub fn total_bytes(&self) -> usize {
        self.files.iter().map(SafeTensorsFile::total_bytes).sum()
    }
    /// The file holding `name` and its info, or an error naming the checkpoint and the tensor.
    pub fn get(&self, name: &str) -> Result<(&SafeTensorsFile, &TensorInfo), StError> {
        let missing = || {
            StError::new(
                &self.root,
                StErrorKind::MissingTensor {
                    tensors: self.index.len(),
                    files: self.files.len(),
                },
            )
            .with_tensor(name)
        };
        let &i = self.index.get(name).ok_or_else(missing)?;
        let f = &self.files[i];
        let info = f.info(name).ok_or_else(missing)?;
        Ok((f, info))
    }
    /// Zero-copy bytes of `name`.
    pub fn bytes(&self, name: &str) -> Result<&[u8], StError> {
        let (f, info) = self.get(name)?;
        f.view(info)
    }
    pub fn to_f32(&self, name: &str) -> Result<Vec<f32>, StError> {
        let (f, _) = self.get(name)?;
        f.to_f32(name)
    }
    pub fn to_bf16(&self, name: &str) -> Result<Vec<bf16>, StError> {
        let (f, _) = self.get(name)?;
        f.to_bf16(name)
    }
}

// ---------------------------------------------------------------------------------------------
// Writer
// ---------------------------------------------------------------------------------------------

fn invalid(msg: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, msg)
}

/// The 8-byte length and the JSON header (space-padded so the data section starts 8-aligned),
/// with tensors laid out contiguously in the given order.
fn build_header(
    tensors: &[(&str, StDtype, &[usize], &[u8])],
    metadata: Option<&BTreeMap<String, String>>,
) -> std::io::Result<Vec<u8>> {
    let mut obj = serde_json::Map::new();
    if let Some(m) = metadata {
        let mm: serde_json::Map<String, Value> = m
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        obj.insert("__metadata__".into(), Value::Object(mm));
    }
    let mut offset = 0usize;
    for &(name, dtype, shape, data) in tensors {
        if name == "__metadata__" {
            return Err(invalid("a tensor cannot be called `__metadata__`".into()));
        }
        if obj.contains_key(name) {
            return Err(invalid(format!("tensor `{name}` is given twice")));
        }
        let expected = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .and_then(|n| n.checked_mul(dtype.size_of()))
            .ok_or_else(|| {
                invalid(format!(
                    "tensor `{name}`: shape {shape:?} of {dtype} overflows"
                ))
            })?;
        if expected != data.len() {
            return Err(invalid(format!(
                "tensor `{name}`: shape {shape:?} of {dtype} needs {expected} bytes, got {}",
                data.len()
            )));
        }
        let end = offset + data.len();
        let entry = serde_json::json!({ "dtype": dtype.name(), "shape": shape, "data_offsets": [offset, end] });
        obj.insert(name.to_owned(), entry);
        offset = end;
    }
    let mut json = serde_json::to_string(&Value::Object(obj))
        .map_err(|e| invalid(e.to_string()))?
        .into_bytes();
    while (8 + json.len()) % 8 != 0 {
        json.push(b' ');
    }
    if json.len() as u64 > MAX_HEADER_LEN {
        return Err(invalid(format!(
            "header of {} bytes exceeds the {MAX_HEADER_LEN}-byte limit",
            json.len()
        )));
    }
    let mut out = Vec::with_capacity(8 + json.len());
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(&json);
    Ok(out)
}

/// The whole file in memory (for small files and tests; use [`write_safetensors`] for big ones).
/// Metadata keys come out sorted, so the same tensors and metadata always give the same bytes.
pub fn serialize_safetensors(
    tensors: &[(&str, StDtype, &[usize], &[u8])],
    metadata: Option<&BTreeMap<String, String>>,
) -> std::io::Result<Vec<u8>> {
    let mut out = build_header(tensors, metadata)?;
    out.reserve(tensors.iter().map(|t| t.3.len()).sum());
    for t in tensors {
        out.extend_from_slice(t.3);
    }
    Ok(out)
}

/// Writes a safetensors file (tensors in the given order; dtype/shape/byte length checked).
/// Writes to a temporary name in the same folder, syncs, then renames over `path`, so readers
/// (and existing mappings of the old file) never see a half-written file.
pub fn write_safetensors(
    path: &Path,
    tensors: &[(&str, StDtype, &[usize], &[u8])],
    metadata: Option<&BTreeMap<String, String>>,
) -> std::io::Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let header = build_header(tensors, metadata)?;
    let file_name = path
        .file_name()
        .ok_or_else(|| invalid(format!("{}: not a file path", path.display())))?
        .to_string_lossy()
        .into_owned();
    let tmp = path.with_file_name(format!(
        ".{file_name}.tmp-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let write = || -> std::io::Result<()> {
        let f = File::create(&tmp)?;
        let mut w = BufWriter::with_capacity(1 << 20, f);
        w.write_all(&header)?;
        for t in tensors {
            w.write_all(t.3)?;
        }
        let f = w.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        Ok(())
    };
    let res = write().and_then(|()| fs::rename(&tmp, path));
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("{}: cannot write safetensors file: {e}", path.display()),
        )
    })
}

impl From<StError> for crate::error::Error {
    fn from(e: StError) -> Self {
        crate::error::Error::Weights(e.to_string())
    }
}
