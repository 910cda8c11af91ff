//! The safetensors reader against malformed files (one test per defect: each asserts an error,
//! never a panic, whose message names the file and the problem) and good files (round trips
//! through the writer, sharded folders, dtype conversions).
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use contentv::io::safetensors::{
    decode_f32, serialize_safetensors, write_safetensors, SafeTensorsFile, ShardedCheckpoint,
    StDtype, StError, StErrorKind,
};
use half::{bf16, f16};

// ------------------------------------------------------------------------------------------
// helpers
// ------------------------------------------------------------------------------------------

/// A fresh, unique folder under the system temp dir.
fn tmpdir(tag: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let d = std::env::temp_dir().join(format!(
        "contentv-st-{}-{tag}-{nanos}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// 8-byte length + header + data.
fn raw(header: &str, data: &[u8]) -> Vec<u8> {
    raw_bytes(header.as_bytes(), data)
}
fn raw_bytes(header: &[u8], data: &[u8]) -> Vec<u8> {
    let mut v = (header.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(header);
    v.extend_from_slice(data);
    v
}

fn write(tag: &str, name: &str, bytes: &[u8]) -> PathBuf {
    let p = tmpdir(tag).join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// Opens `bytes` written to a file, expects an error; also checks `from_bytes` agrees.
fn open_err(tag: &str, bytes: &[u8]) -> (PathBuf, StError) {
    let p = write(tag, &format!("{tag}.safetensors"), bytes);
    let e = SafeTensorsFile::open(&p).expect_err("a malformed file must be rejected");
    let e2 = SafeTensorsFile::from_bytes(&format!("{tag}.safetensors"), bytes.to_vec())
        .expect_err("from_bytes must reject it too");
    assert_eq!(
        std::mem::discriminant(e.kind()),
        std::mem::discriminant(e2.kind()),
        "{e} vs {e2}"
    );
    (p, e)
}

/// The message names the file and mentions every needle (case-insensitive).
fn assert_msg(e: &StError, file: &Path, needles: &[&str]) {
    let msg = e.to_string();
    assert!(
        msg.contains(&file.display().to_string()),
        "message does not name the file {}: {msg}",
        file.display()
    );
    let low = msg.to_lowercase();
    for n in needles {
        assert!(
            low.contains(&n.to_lowercase()),
            "message does not mention {n:?}: {msg}"
        );
    }
    assert_eq!(e.file(), file);
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

const ONE: &str = r#"{"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}}"#;

// ------------------------------------------------------------------------------------------
// bad files: the 8-byte length and the header
// ------------------------------------------------------------------------------------------

#[test]
fn empty_file() {
    let (p, e) = open_err("empty", &[]);
    assert!(matches!(e.kind(), StErrorKind::TooShort { file_len: 0 }));
    assert_msg(&e, &p, &["0 bytes", "shorter than the 8-byte header"]);
}

#[test]
fn shorter_than_8_bytes() {
    let (p, e) = open_err("short", &[1, 2, 3, 4, 5]);
    assert!(matches!(e.kind(), StErrorKind::TooShort { file_len: 5 }));
    assert_msg(&e, &p, &["5 bytes", "shorter than the 8-byte", "truncated"]);
}

#[test]
fn header_length_past_end_of_file() {
    let mut b = raw(ONE, &[0; 16]);
    b[..8].copy_from_slice(&1000u64.to_le_bytes());
    let (p, e) = open_err("past_end", &b);
    assert!(matches!(
        e.kind(),
        StErrorKind::HeaderPastEnd {
            header_len: 1000,
            ..
        }
    ));
    assert_msg(
        &e,
        &p,
        &[
            "header length 1000",
            "past the end of the file",
            "truncated",
        ],
    );
}

#[test]
fn header_cut_short() {
    // The file stops in the middle of the header.
    let b = raw(ONE, &[0; 16]);
    let (p, e) = open_err("header_cut", &b[..30]);
    assert!(matches!(e.kind(), StErrorKind::HeaderPastEnd { .. }));
    assert_msg(&e, &p, &["past the end of the file"]);
}

#[test]
fn header_length_absurd() {
    let mut b = raw(ONE, &[0; 16]);
    b[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    let (p, e) = open_err("absurd_max", &b);
    assert!(matches!(e.kind(), StErrorKind::HeaderTooLarge { .. }));
    assert_msg(&e, &p, &["absurdly large", "100000000"]);

    b[..8].copy_from_slice(&100_000_001u64.to_le_bytes());
    let (p, e) = open_err("absurd_100mb", &b);
    assert!(matches!(
        e.kind(),
        StErrorKind::HeaderTooLarge {
            header_len: 100_000_001
        }
    ));
    assert_msg(&e, &p, &["absurdly large"]);
}

#[test]
fn empty_header() {
    let (p, e) = open_err("empty_header", &raw("", &[]));
    assert!(matches!(e.kind(), StErrorKind::InvalidJson(_)));
    assert_msg(&e, &p, &["not valid JSON"]);
}

#[test]
fn header_invalid_utf8() {
    let mut h = ONE.as_bytes().to_vec();
    h[3] = 0xFF;
    let (p, e) = open_err("utf8", &raw_bytes(&h, &[0; 16]));
    assert!(matches!(e.kind(), StErrorKind::HeaderNotUtf8 { offset: 3 }));
    assert_msg(&e, &p, &["not valid UTF-8", "offset 3"]);
}

#[test]
fn header_invalid_json() {
    let h = r#"{"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}"#; // missing brace
    let (p, e) = open_err("json", &raw(h, &[0; 16]));
    assert!(matches!(e.kind(), StErrorKind::InvalidJson(_)));
    assert_msg(&e, &p, &["not valid JSON", "not a valid safetensors file"]);
}

#[test]
fn header_trailing_garbage_after_json() {
    let h = format!("{ONE} x");
    let (p, e) = open_err("json_trailing", &raw(&h, &[0; 16]));
    assert!(matches!(e.kind(), StErrorKind::InvalidJson(_)));
    assert_msg(&e, &p, &["not valid JSON"]);
}

#[test]
fn header_deeply_nested_json_does_not_overflow_the_stack() {
    let h = format!("{{\"a\":{}{}}}", "[".repeat(200_000), "]".repeat(200_000));
    let (p, e) = open_err("deep", &raw(&h, &[]));
    assert!(matches!(e.kind(), StErrorKind::InvalidJson(_)));
    assert_msg(&e, &p, &["not valid JSON", "recursion"]);
}

#[test]
fn header_not_an_object() {
    let (p, e) = open_err("array", &raw("[1, 2, 3]", &[]));
    assert!(matches!(
        e.kind(),
        StErrorKind::NotAnObject { found: "an array" }
    ));
    assert_msg(&e, &p, &["header JSON is an array, not an object"]);
    let (p, e) = open_err("string", &raw("\"hello\"", &[]));
    assert_msg(&e, &p, &["a string, not an object"]);
    let (p, e) = open_err("null", &raw("null", &[]));
    assert_msg(&e, &p, &["null, not an object"]);
}

#[test]
fn duplicate_tensor_key_in_header() {
    let h = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"a":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}"#;
    let (p, e) = open_err("dupkey", &raw(h, &[0; 16]));
    assert!(matches!(e.kind(), StErrorKind::InvalidJson(_)));
    assert_msg(&e, &p, &["duplicate key \"a\""]);
}

#[test]
fn duplicate_field_in_entry() {
    let h = r#"{"a":{"dtype":"F32","dtype":"F16","shape":[2],"data_offsets":[0,8]}}"#;
    let (p, e) = open_err("dupfield", &raw(h, &[0; 8]));
    assert_msg(&e, &p, &["duplicate key \"dtype\""]);
}

#[test]
fn metadata_not_strings() {
    let h = r#"{"__metadata__":{"format":"pt","step":3},"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}}"#;
    let (p, e) = open_err("meta_num", &raw(h, &[0; 16]));
    assert!(matches!(e.kind(), StErrorKind::InvalidMetadata(_)));
    assert_msg(&e, &p, &["__metadata__", "\"step\"", "must be strings"]);
}

#[test]
fn metadata_not_an_object() {
    let h = r#"{"__metadata__":[1],"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}}"#;
    let (p, e) = open_err("meta_arr", &raw(h, &[0; 16]));
    assert!(matches!(e.kind(), StErrorKind::InvalidMetadata(_)));
    assert_msg(&e, &p, &["__metadata__", "an array"]);
}

// ------------------------------------------------------------------------------------------
// bad files: entries
// ------------------------------------------------------------------------------------------

#[test]
fn entry_not_an_object() {
    let (p, e) = open_err("entry_str", &raw(r#"{"w":"F32"}"#, &[]));
    assert!(matches!(e.kind(), StErrorKind::InvalidEntry(_)));
    assert_eq!(e.tensor(), Some("w"));
    assert_msg(&e, &p, &["tensor `w`", "a string, expected an object"]);
}

#[test]
fn missing_fields() {
    for (field, h) in [
        ("dtype", r#"{"w":{"shape":[2],"data_offsets":[0,8]}}"#),
        ("shape", r#"{"w":{"dtype":"F32","data_offsets":[0,8]}}"#),
        ("data_offsets", r#"{"w":{"dtype":"F32","shape":[2]}}"#),
    ] {
        let (p, e) = open_err(&format!("missing_{field}"), &raw(h, &[0; 8]));
        assert!(matches!(e.kind(), StErrorKind::InvalidEntry(_)), "{e}");
        assert_msg(&e, &p, &["tensor `w`", &format!("missing field `{field}`")]);
    }
}

#[test]
fn extra_field() {
    let h = r#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"stride":[1]}}"#;
    let (p, e) = open_err("extra", &raw(h, &[0; 8]));
    assert!(matches!(e.kind(), StErrorKind::InvalidEntry(_)));
    assert_msg(&e, &p, &["tensor `w`", "unexpected field \"stride\""]);
}

#[test]
fn unknown_dtype() {
    let h = r#"{"w":{"dtype":"Q4_K","shape":[2],"data_offsets":[0,8]}}"#;
    let (p, e) = open_err("dtype_q4", &raw(h, &[0; 8]));
    assert!(matches!(e.kind(), StErrorKind::UnknownDtype(d) if d == "Q4_K"));
    assert_msg(
        &e,
        &p,
        &[
            "tensor `w`",
            "unknown or unsupported dtype \"Q4_K\"",
            "BF16",
        ],
    );
    // Names are case-sensitive, as the format specifies.
    let h = r#"{"w":{"dtype":"f32","shape":[2],"data_offsets":[0,8]}}"#;
    let (p, e) = open_err("dtype_lower", &raw(h, &[0; 8]));
    assert_msg(&e, &p, &["unknown or unsupported dtype \"f32\""]);
}

#[test]
fn dtype_not_a_string() {
    let h = r#"{"w":{"dtype":4,"shape":[2],"data_offsets":[0,8]}}"#;
    let (p, e) = open_err("dtype_num", &raw(h, &[0; 8]));
    assert_msg(&e, &p, &["tensor `w`", "`dtype` is a number"]);
}

#[test]
fn shape_negative() {
    let h = r#"{"w":{"dtype":"F32","shape":[2,-2],"data_offsets":[0,8]}}"#;
    let (p, e) = open_err("shape_neg", &raw(h, &[0; 8]));
    assert!(matches!(e.kind(), StErrorKind::InvalidShape(_)));
    assert_msg(
        &e,
        &p,
        &["tensor `w`", "invalid shape", "entry 1 is negative (-2)"],
    );
}

#[test]
fn shape_non_integer() {
    let h = r#"{"w":{"dtype":"F32","shape":[2.5],"data_offsets":[0,8]}}"#;
    let (p, e) = open_err("shape_float", &raw(h, &[0; 8]));
    assert!(matches!(e.kind(), StErrorKind::InvalidShape(_)));
    assert_msg(&e, &p, &["tensor `w`", "not an integer (2.5)"]);
    let h = r#"{"w":{"dtype":"F32","shape":["2"],"data_offsets":[0,8]}}"#;
    let (p, e) = open_err("shape_str", &raw(h, &[0; 8]));
    assert_msg(&e, &p, &["tensor `w`", "entry 0 is a string"]);
    let h = r#"{"w":{"dtype":"F32","shape":[1e30],"data_offsets":[0,8]}}"#;
    let (p, e) = open_err("shape_huge_float", &raw(h, &[0; 8]));
    assert_msg(&e, &p, &["tensor `w`", "not an integer"]);
}

#[test]
fn shape_not_an_array() {
    let h = r#"{"w":{"dtype":"F32","shape":2,"data_offsets":[0,8]}}"#;
    let (p, e) = open_err("shape_scalar", &raw(h, &[0; 8]));
    assert!(matches!(e.kind(), StErrorKind::InvalidShape(_)));
    assert_msg(
        &e,
        &p,
        &["tensor `w`", "`shape` is a number, expected an array"],
    );
}

#[test]
fn shape_product_overflow() {
    let h = r#"{"w":{"dtype":"F32","shape":[4294967296,4294967296,2],"data_offsets":[0,8]}}"#;
    let (p, e) = open_err("overflow_numel", &raw(h, &[0; 8]));
    assert!(matches!(e.kind(), StErrorKind::ShapeOverflow { .. }));
    assert_msg(&e, &p, &["tensor `w`", "overflows"]);
    // The element count fits but the byte size does not.
    let h = r#"{"w":{"dtype":"F64","shape":[4611686018427387904],"data_offsets":[0,8]}}"#;
    let (p, e) = open_err("overflow_bytes", &raw(h, &[0; 8]));
    assert!(matches!(e.kind(), StErrorKind::ShapeOverflow { .. }));
    assert_msg(&e, &p, &["overflows"]);
    // A zero dimension does not hide an overflow elsewhere... nor make one: [0, huge] is 0 bytes.
    let h = r#"{"w":{"dtype":"F32","shape":[0,18446744073709551615],"data_offsets":[0,0]}}"#;
    let p = write("zero_times_huge", "z.safetensors", &raw(h, &[]));
    let f = SafeTensorsFile::open(&p).unwrap();
    assert_eq!(f.info("w").unwrap().len, 0);
}

#[test]
fn data_offsets_begin_after_end() {
    let h = r#"{"w":{"dtype":"F32","shape":[0],"data_offsets":[8,4]}}"#;
    let (p, e) = open_err("begin_gt_end", &raw(h, &[0; 8]));
    assert!(matches!(e.kind(), StErrorKind::InvalidOffsets(_)));
    assert_msg(&e, &p, &["tensor `w`", "begin 8 > end 4"]);
}

#[test]
fn data_offsets_out_of_range() {
    let h = r#"{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#;
    let (p, e) = open_err("oob", &raw(h, &[0; 8]));
    assert!(matches!(
        e.kind(),
        StErrorKind::OffsetsOutOfBounds {
            begin: 0,
            end: 16,
            data_len: 8
        }
    ));
    assert_msg(
        &e,
        &p,
        &["tensor `w`", "out of bounds", "8 bytes", "truncated"],
    );
    let h = r#"{"w":{"dtype":"F32","shape":[0],"data_offsets":[18446744073709551615,18446744073709551615]}}"#;
    let (p, e) = open_err("oob_max", &raw(h, &[]));
    assert!(matches!(e.kind(), StErrorKind::OffsetsOutOfBounds { .. }));
    assert_msg(&e, &p, &["out of bounds"]);
}

#[test]
fn data_offsets_malformed() {
    for (tag, offs, needle) in [
        ("offs_one", "[0]", "expected [begin, end], found 1"),
        ("offs_three", "[0,8,8]", "found 3"),
        ("offs_neg", "[-8,0]", "negative"),
        ("offs_obj", "{}", "an object"),
    ] {
        let h = format!(r#"{{"w":{{"dtype":"F32","shape":[2],"data_offsets":{offs}}}}}"#);
        let (p, e) = open_err(tag, &raw(&h, &[0; 8]));
        assert!(matches!(e.kind(), StErrorKind::InvalidOffsets(_)), "{e}");
        assert_msg(&e, &p, &["tensor `w`", "data_offsets", needle]);
    }
}

#[test]
fn truncated_file() {
    let good = serialize_safetensors(
        &[
            ("a", StDtype::F32, &[4], &f32_bytes(&[1.0, 2.0, 3.0, 4.0])),
            ("b", StDtype::F32, &[2], &f32_bytes(&[5.0, 6.0])),
        ],
        None,
    )
    .unwrap();
    let (p, e) = open_err("truncated", &good[..good.len() - 3]);
    assert!(matches!(e.kind(), StErrorKind::OffsetsOutOfBounds { .. }));
    assert_eq!(e.tensor(), Some("b"));
    assert_msg(
        &e,
        &p,
        &[
            "tensor `b`",
            "out of bounds",
            "truncated",
            "download it again",
        ],
    );
}

#[test]
fn size_mismatch() {
    let h = r#"{"w":{"dtype":"BF16","shape":[2,2],"data_offsets":[0,16]}}"#;
    let (p, e) = open_err("size", &raw(h, &[0; 16]));
    assert!(matches!(
        e.kind(),
        StErrorKind::SizeMismatch {
            expected: 8,
            actual: 16,
            ..
        }
    ));
    assert_msg(
        &e,
        &p,
        &[
            "tensor `w`",
            "size mismatch",
            "[2, 2]",
            "BF16",
            "needs 8 bytes",
            "span 16 bytes",
        ],
    );
}

#[test]
fn overlapping_tensors() {
    let h = r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}"#;
    let (p, e) = open_err("overlap", &raw(h, &[0; 16]));
    assert!(matches!(e.kind(), StErrorKind::Overlap { .. }));
    assert_msg(
        &e,
        &p,
        &["tensor `b`", "overlap", "`a`", "[0, 16]", "[8, 16]"],
    );
    // Two names for the very same bytes (aliasing) is an overlap too.
    let h = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
    let (p, e) = open_err("alias", &raw(h, &[0; 8]));
    assert!(matches!(e.kind(), StErrorKind::Overlap { .. }));
    assert_msg(&e, &p, &["overlap"]);
    // An empty tensor placed strictly inside another one.
    let h = r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"z":{"dtype":"F32","shape":[0],"data_offsets":[8,8]}}"#;
    let (p, e) = open_err("empty_inside", &raw(h, &[0; 16]));
    assert!(matches!(e.kind(), StErrorKind::Overlap { .. }));
    assert_msg(&e, &p, &["tensor `z`", "overlap"]);
}

#[test]
fn gap_between_tensors() {
    let h = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[12,20]}}"#;
    let (p, e) = open_err("gap", &raw(h, &[0; 20]));
    assert!(matches!(
        e.kind(),
        StErrorKind::Gap {
            begin: 8,
            end: 12,
            ..
        }
    ));
    assert_msg(
        &e,
        &p,
        &["tensor `b`", "gap", "[8, 12)", "after tensor `a`", "holes"],
    );
}

#[test]
fn gap_before_first_tensor() {
    let h = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#;
    let (p, e) = open_err("gap_first", &raw(h, &[0; 12]));
    assert!(matches!(
        e.kind(),
        StErrorKind::Gap {
            begin: 0,
            end: 4,
            after: None
        }
    ));
    assert_msg(&e, &p, &["gap", "before the first tensor"]);
}

#[test]
fn trailing_bytes_after_last_tensor() {
    let (p, e) = open_err("trailing", &raw(ONE, &[0; 20]));
    assert!(matches!(
        e.kind(),
        StErrorKind::TrailingBytes {
            covered: 16,
            data_len: 20
        }
    ));
    assert_msg(
        &e,
        &p,
        &["4 trailing bytes", "16 of the 20-byte data section"],
    );
    // Data after an empty header.
    let (p, e) = open_err("trailing_empty", &raw("{}", b"polyglot!"));
    assert_msg(&e, &p, &["9 trailing bytes"]);
}

#[test]
fn missing_tensor() {
    let p = tmpdir("missing_tensor").join("w.safetensors");
    write_safetensors(
        &p,
        &[("present", StDtype::F32, &[1], &f32_bytes(&[1.0]))],
        None,
    )
    .unwrap();
    let f = SafeTensorsFile::open(&p).unwrap();
    for e in [
        f.bytes("absent").unwrap_err(),
        f.to_f32("absent").unwrap_err(),
        f.to_bf16("absent").unwrap_err(),
        f.get("absent").unwrap_err(),
    ] {
        assert!(matches!(e.kind(), StErrorKind::MissingTensor { .. }));
        assert_eq!(e.tensor(), Some("absent"));
        assert_msg(
            &e,
            &p,
            &[
                "tensor `absent`",
                "not found",
                "1 tensors",
                "right checkpoint",
            ],
        );
    }
    assert!(f.info("absent").is_none());
}

#[test]
fn nonexistent_file() {
    let p = tmpdir("nofile").join("nope.safetensors");
    let e = SafeTensorsFile::open(&p).unwrap_err();
    assert!(matches!(e.kind(), StErrorKind::Io(_)));
    assert!(std::error::Error::source(&e).is_some());
    assert_msg(&e, &p, &["cannot read", "check the path"]);
}

#[test]
fn directory_is_not_a_file() {
    let d = tmpdir("isdir");
    let e = SafeTensorsFile::open(&d).unwrap_err();
    assert!(
        matches!(e.kind(), StErrorKind::NotAFile | StErrorKind::Io(_)),
        "{e}"
    );
    assert_msg(&e, &d, &[]);
}

// ------------------------------------------------------------------------------------------
// bad checkpoints (folders, indexes, shards)
// ------------------------------------------------------------------------------------------

/// Two shards `a` (t0, t1) and `b` (t2) plus an index mapping each tensor to its shard.
fn sharded_dir(tag: &str) -> PathBuf {
    let d = tmpdir(tag);
    write_safetensors(
        &d.join("diffusion_pytorch_model-00001-of-00002.safetensors"),
        &[
            ("t0", StDtype::F32, &[2], &f32_bytes(&[1.0, 2.0])),
            (
                "t1",
                StDtype::BF16,
                &[1],
                &bf16::from_f32(3.0).to_le_bytes(),
            ),
        ],
        None,
    )
    .unwrap();
    write_safetensors(
        &d.join("diffusion_pytorch_model-00002-of-00002.safetensors"),
        &[(
            "t2",
            StDtype::F16,
            &[3],
            &[f16::from_f32(4.0), f16::from_f32(5.0), f16::from_f32(6.0)]
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect::<Vec<_>>(),
        )],
        None,
    )
    .unwrap();
    write_index(
        &d,
        r#"{"metadata":{"total_size":16},"weight_map":{
            "t0":"diffusion_pytorch_model-00001-of-00002.safetensors",
            "t1":"diffusion_pytorch_model-00001-of-00002.safetensors",
            "t2":"diffusion_pytorch_model-00002-of-00002.safetensors"}}"#,
    );
    d
}

fn write_index(d: &Path, json: &str) -> PathBuf {
    let p = d.join("diffusion_pytorch_model.safetensors.index.json");
    std::fs::write(&p, json).unwrap();
    p
}

#[test]
fn index_names_missing_shard() {
    let d = sharded_dir("missing_shard");
    let shard = d.join("diffusion_pytorch_model-00002-of-00002.safetensors");
    std::fs::remove_file(&shard).unwrap();
    let e = ShardedCheckpoint::open_dir(&d).unwrap_err();
    assert!(matches!(e.kind(), StErrorKind::MissingShard { .. }));
    assert_eq!(e.tensor(), Some("t2"));
    assert_msg(
        &e,
        &shard,
        &[
            "missing shard",
            "diffusion_pytorch_model-00002-of-00002.safetensors",
            "index.json",
            "download the missing shard",
        ],
    );
}

#[test]
fn index_invalid_json() {
    let d = sharded_dir("index_json");
    let idx = write_index(&d, r#"{"weight_map": {"t0": "a.safetensors",}"#);
    let e = ShardedCheckpoint::open_dir(&d).unwrap_err();
    assert!(matches!(e.kind(), StErrorKind::InvalidIndex(_)));
    assert_msg(&e, &idx, &["invalid checkpoint index", "not valid JSON"]);
}

#[test]
fn index_without_weight_map() {
    let d = sharded_dir("index_no_map");
    let idx = write_index(&d, r#"{"metadata":{}}"#);
    let e = ShardedCheckpoint::open_dir(&d).unwrap_err();
    assert!(matches!(e.kind(), StErrorKind::InvalidIndex(_)));
    assert_msg(&e, &idx, &["missing `weight_map`"]);
    let idx = write_index(&d, r#"{"weight_map":{"t0":7}}"#);
    let e = ShardedCheckpoint::open_dir(&d).unwrap_err();
    assert_msg(&e, &idx, &["\"t0\" is a number"]);
    let idx = write_index(&d, r#"{"weight_map":[]}"#);
    let e = ShardedCheckpoint::open_dir(&d).unwrap_err();
    assert_msg(&e, &idx, &["`weight_map` is an array"]);
}

#[test]
fn index_shard_path_escaping_the_folder() {
    let d = sharded_dir("index_escape");
    for bad in ["../x.safetensors", "/etc/passwd", "sub/x.safetensors", ""] {
        let idx = write_index(&d, &format!(r#"{{"weight_map":{{"t0":"{bad}"}}}}"#));
        let e = ShardedCheckpoint::open_dir(&d).unwrap_err();
        assert!(
            matches!(e.kind(), StErrorKind::InvalidIndex(_)),
            "{bad}: {e}"
        );
        assert_msg(&e, &idx, &["not a plain file name"]);
    }
}

#[test]
fn index_names_tensor_the_shard_lacks() {
    let d = sharded_dir("index_mismatch");
    write_index(
        &d,
        r#"{"weight_map":{
            "t0":"diffusion_pytorch_model-00001-of-00002.safetensors",
            "t1":"diffusion_pytorch_model-00001-of-00002.safetensors",
            "t2":"diffusion_pytorch_model-00002-of-00002.safetensors",
            "t3":"diffusion_pytorch_model-00002-of-00002.safetensors"}}"#,
    );
    let e = ShardedCheckpoint::open_dir(&d).unwrap_err();
    assert!(matches!(
        e.kind(),
        StErrorKind::IndexMismatch {
            actually_in: None,
            ..
        }
    ));
    assert_msg(
        &e,
        &d.join("diffusion_pytorch_model-00002-of-00002.safetensors"),
        &["tensor `t3`", "index mismatch", "does not contain it"],
    );

    // Mapped to the wrong shard (it is in the other one).
    write_index(
        &d,
        r#"{"weight_map":{
            "t0":"diffusion_pytorch_model-00002-of-00002.safetensors",
            "t1":"diffusion_pytorch_model-00001-of-00002.safetensors",
            "t2":"diffusion_pytorch_model-00002-of-00002.safetensors"}}"#,
    );
    let e = ShardedCheckpoint::open_dir(&d).unwrap_err();
    assert!(matches!(
        e.kind(),
        StErrorKind::IndexMismatch {
            actually_in: Some(_),
            ..
        }
    ));
    assert_msg(
        &e,
        &d.join("diffusion_pytorch_model-00002-of-00002.safetensors"),
        &["tensor `t0`", "it is in", "00001-of-00002"],
    );
}

#[test]
fn duplicate_tensor_across_shards() {
    let d = sharded_dir("dup_shards");
    let second = d.join("diffusion_pytorch_model-00002-of-00002.safetensors");
    write_safetensors(
        &second,
        &[
            ("t0", StDtype::F32, &[2], &f32_bytes(&[9.0, 9.0])),
            ("t2", StDtype::F16, &[0], &[]),
        ],
        None,
    )
    .unwrap();
    let e = ShardedCheckpoint::open_dir(&d).unwrap_err();
    assert!(matches!(e.kind(), StErrorKind::DuplicateTensor { .. }));
    assert_msg(
        &e,
        &second,
        &["tensor `t0`", "duplicate tensor", "00001-of-00002"],
    );

    // The same through open_files, without an index.
    let first = d.join("diffusion_pytorch_model-00001-of-00002.safetensors");
    let e = ShardedCheckpoint::open_files(&[first.clone(), second.clone()]).unwrap_err();
    assert!(matches!(e.kind(), StErrorKind::DuplicateTensor { .. }));
    assert_msg(&e, &second, &["tensor `t0`", "also in"]);
}

#[test]
fn shard_itself_corrupt() {
    let d = sharded_dir("corrupt_shard");
    let shard = d.join("diffusion_pytorch_model-00001-of-00002.safetensors");
    let mut b = std::fs::read(&shard).unwrap();
    b.truncate(b.len() - 1);
    std::fs::write(&shard, b).unwrap();
    let e = ShardedCheckpoint::open_dir(&d).unwrap_err();
    assert_msg(&e, &shard, &["tensor `t1`", "truncated"]);
}

#[test]
fn empty_folder() {
    let d = tmpdir("empty_dir");
    std::fs::write(d.join("config.json"), "{}").unwrap();
    let e = ShardedCheckpoint::open_dir(&d).unwrap_err();
    assert!(matches!(e.kind(), StErrorKind::NoCheckpoint(_)));
    assert_msg(&e, &d, &["no *.safetensors file"]);
    let e = ShardedCheckpoint::open_files(&[]).unwrap_err();
    assert!(matches!(e.kind(), StErrorKind::NoCheckpoint(_)));
}

#[test]
fn missing_folder() {
    let d = tmpdir("missing_dir").join("transformer");
    let e = ShardedCheckpoint::open_dir(&d).unwrap_err();
    assert!(matches!(e.kind(), StErrorKind::Io(_)));
    assert_msg(&e, &d, &["cannot read"]);
}

#[test]
fn ambiguous_indexes() {
    let d = tmpdir("ambiguous");
    std::fs::write(d.join("a.safetensors.index.json"), r#"{"weight_map":{}}"#).unwrap();
    std::fs::write(d.join("b.safetensors.index.json"), r#"{"weight_map":{}}"#).unwrap();
    let e = ShardedCheckpoint::open_dir(&d).unwrap_err();
    assert!(matches!(e.kind(), StErrorKind::AmbiguousCheckpoint(_)));
    assert_msg(
        &e,
        &d,
        &["a.safetensors.index.json", "b.safetensors.index.json"],
    );
}

#[test]
fn missing_tensor_in_checkpoint() {
    let d = sharded_dir("ck_missing");
    let ck = ShardedCheckpoint::open_dir(&d).unwrap();
    let e = ck.get("blocks.0.attn.to_q.weight").unwrap_err();
    assert!(matches!(
        e.kind(),
        StErrorKind::MissingTensor {
            tensors: 3,
            files: 2
        }
    ));
    assert_msg(
        &e,
        &d,
        &[
            "tensor `blocks.0.attn.to_q.weight`",
            "not found",
            "3 tensors in 2 files",
        ],
    );
    assert!(ck.to_f32("x").is_err() && ck.bytes("x").is_err() && !ck.contains("x"));
}

// ------------------------------------------------------------------------------------------
// good files
// ------------------------------------------------------------------------------------------

fn sample(dtype: StDtype, n: usize, seed: u8) -> Vec<u8> {
    (0..n * dtype.size_of())
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn round_trip_all_dtypes() {
    let shapes: [&[usize]; 4] = [&[3, 5], &[], &[0, 4], &[7]];
    let mut owned: Vec<(String, StDtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (i, &d) in StDtype::ALL.iter().enumerate() {
        let shape = shapes[i % shapes.len()];
        let n: usize = shape.iter().product();
        owned.push((
            format!("t.{}", d.name()),
            d,
            shape.to_vec(),
            sample(d, n, i as u8),
        ));
    }
    let tensors: Vec<(&str, StDtype, &[usize], &[u8])> = owned
        .iter()
        .map(|(n, d, s, b)| (n.as_str(), *d, s.as_slice(), b.as_slice()))
        .collect();
    let mut meta = BTreeMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    meta.insert("note".to_string(), "üñíçødé \"quoted\"".to_string());
    let p = tmpdir("roundtrip").join("all.safetensors");
    write_safetensors(&p, &tensors, Some(&meta)).unwrap();

    let f = SafeTensorsFile::open(&p).unwrap();
    assert_eq!(f.path(), p);
    assert_eq!(f.metadata(), &meta);
    assert_eq!(f.len(), owned.len());
    assert_eq!(
        f.data_offset() % 8,
        0,
        "the writer pads the header so data is 8-aligned"
    );
    for (name, d, shape, bytes) in &owned {
        let info = f.info(name).unwrap();
        assert_eq!(
            (&info.name, info.dtype, &info.shape, info.len),
            (name, *d, shape, bytes.len())
        );
        assert_eq!(f.bytes(name).unwrap(), bytes.as_slice());
        // The backing mapping holds the same bytes at the absolute offset.
        assert_eq!(
            &f.backing()[info.start..info.start + info.len],
            bytes.as_slice()
        );
        let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<_>>();
        assert_eq!(bits(f.to_f32(name).unwrap()), bits(decode_f32(*d, bytes)));
        assert_eq!(f.to_f32(name).unwrap().len(), info.numel());
    }
    assert_eq!(
        f.total_bytes(),
        owned.iter().map(|o| o.3.len()).sum::<usize>()
    );
    // Same via from_bytes, and the names iterate sorted.
    let g = SafeTensorsFile::from_bytes("mem", std::fs::read(&p).unwrap()).unwrap();
    assert_eq!(g.names().collect::<Vec<_>>(), f.names().collect::<Vec<_>>());
    let mut sorted: Vec<&str> = f.names().collect();
    sorted.sort();
    assert_eq!(sorted, f.names().collect::<Vec<_>>());
    // No temporaries left behind.
    let left: Vec<_> = std::fs::read_dir(p.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left.len(), 1, "{left:?}");
}

#[test]
fn writer_overwrites_atomically() {
    let p = tmpdir("overwrite").join("w.safetensors");
    write_safetensors(&p, &[("a", StDtype::F32, &[1], &f32_bytes(&[1.0]))], None).unwrap();
    let old = SafeTensorsFile::open(&p).unwrap();
    write_safetensors(
        &p,
        &[("a", StDtype::F32, &[2], &f32_bytes(&[2.0, 3.0]))],
        None,
    )
    .unwrap();
    // The old mapping still sees the old contents; a new open sees the new ones.
    assert_eq!(old.to_f32("a").unwrap(), vec![1.0]);
    assert_eq!(
        SafeTensorsFile::open(&p).unwrap().to_f32("a").unwrap(),
        vec![2.0, 3.0]
    );
}

#[test]
fn writer_rejects_bad_input() {
    let p = tmpdir("writer_bad").join("w.safetensors");
    let e = write_safetensors(&p, &[("a", StDtype::F32, &[3], &[0u8; 8])], None).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
    assert!(e.to_string().contains("needs 12 bytes, got 8"), "{e}");
    let e = write_safetensors(
        &p,
        &[
            ("a", StDtype::U8, &[1], &[0]),
            ("a", StDtype::U8, &[1], &[0]),
        ],
        None,
    )
    .unwrap_err();
    assert!(e.to_string().contains("twice"), "{e}");
    let e = write_safetensors(&p, &[("__metadata__", StDtype::U8, &[1], &[0])], None).unwrap_err();
    assert!(e.to_string().contains("__metadata__"), "{e}");
    assert!(!p.exists());
    assert_eq!(std::fs::read_dir(p.parent().unwrap()).unwrap().count(), 0);
}

#[test]
fn empty_file_with_no_tensors_is_valid() {
    let b = serialize_safetensors(&[], None).unwrap();
    let f = SafeTensorsFile::from_bytes("empty", b).unwrap();
    assert!(f.is_empty());
    assert_eq!(f.names().count(), 0);
}

#[test]
fn whitespace_padded_header_and_empty_tensors() {
    let h = "\n  {\"s\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,4]},\"e\":{\"dtype\":\"I64\",\"shape\":[3,0],\"data_offsets\":[4,4]}}   \t ";
    let f = SafeTensorsFile::from_bytes("padded", raw(h, &7.5f32.to_le_bytes())).unwrap();
    assert_eq!(f.to_f32("s").unwrap(), vec![7.5]);
    assert_eq!(f.info("s").unwrap().shape, Vec::<usize>::new());
    assert_eq!(f.bytes("e").unwrap(), &[] as &[u8]);
    assert_eq!(f.info("e").unwrap().shape, vec![3, 0]);
    // __metadata__: null is tolerated as "no metadata".
    let h = r#"{"__metadata__":null,"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}"#;
    assert!(SafeTensorsFile::from_bytes("nullmeta", raw(h, &[9]))
        .unwrap()
        .metadata()
        .is_empty());
}

#[test]
fn conversions_half_types_to_f32_are_exact() {
    // Every bf16 and f16 bit pattern converts exactly (NaN stays NaN).
    let all: Vec<u16> = (0..=u16::MAX).collect();
    let bytes: Vec<u8> = all.iter().flat_map(|b| b.to_le_bytes()).collect();
    let n = all.len();
    let b = serialize_safetensors(
        &[
            ("b", StDtype::BF16, &[n], &bytes),
            ("h", StDtype::F16, &[n], &bytes),
        ],
        None,
    )
    .unwrap();
    let f = SafeTensorsFile::from_bytes("halves", b).unwrap();
    let bf = f.to_f32("b").unwrap();
    let hf = f.to_f32("h").unwrap();
    for (i, &bits) in all.iter().enumerate() {
        let want_b = f32::from_bits((bits as u32) << 16);
        let want_h = f16::from_bits(bits).to_f32();
        assert!(
            bf[i].to_bits() == want_b.to_bits() || (bf[i].is_nan() && want_b.is_nan()),
            "bf16 {bits:#06x}"
        );
        assert!(
            hf[i].to_bits() == want_h.to_bits() || (hf[i].is_nan() && want_h.is_nan()),
            "f16 {bits:#06x}"
        );
    }
    // bf16 -> bf16 is a bit copy.
    assert_eq!(
        f.to_bf16("b")
            .unwrap()
            .iter()
            .map(|x| x.to_bits())
            .collect::<Vec<_>>(),
        all
    );
    // f16 values that bf16 represents exactly survive to_bf16.
    let h16 = f.to_bf16("h").unwrap();
    assert_eq!(h16[f16::from_f32(1.5).to_bits() as usize].to_f32(), 1.5);
}

#[test]
fn conversions_other_dtypes() {
    let f64s = [1.5f64, -2.25, 1e300];
    let i64s = [-3i64, 1 << 40];
    let i32s = [-7i32, 123456];
    let i16s = [-32768i16, 32767];
    let i8s = [-128i8, 5];
    let u8s = [0u8, 255];
    let bools = [0u8, 1, 2];
    let e4m3 = [0x00u8, 0x38, 0xB8, 0x7E, 0x01, 0x7F];
    let e5m2 = [0x3Cu8, 0xC0, 0x7C];
    let b = serialize_safetensors(
        &[
            (
                "f64",
                StDtype::F64,
                &[3],
                &f64s
                    .iter()
                    .flat_map(|x| x.to_le_bytes())
                    .collect::<Vec<_>>(),
            ),
            (
                "i64",
                StDtype::I64,
                &[2],
                &i64s
                    .iter()
                    .flat_map(|x| x.to_le_bytes())
                    .collect::<Vec<_>>(),
            ),
            (
                "i32",
                StDtype::I32,
                &[2],
                &i32s
                    .iter()
                    .flat_map(|x| x.to_le_bytes())
                    .collect::<Vec<_>>(),
            ),
            (
                "i16",
                StDtype::I16,
                &[2],
                &i16s
                    .iter()
                    .flat_map(|x| x.to_le_bytes())
                    .collect::<Vec<_>>(),
            ),
            (
                "i8",
                StDtype::I8,
                &[2],
                &i8s.iter().map(|&x| x as u8).collect::<Vec<_>>(),
            ),
            ("u8", StDtype::U8, &[2], &u8s),
            (
                "u16",
                StDtype::U16,
                &[2],
                &[0u16, 65535]
                    .iter()
                    .flat_map(|x| x.to_le_bytes())
                    .collect::<Vec<_>>(),
            ),
            ("u32", StDtype::U32, &[1], &4_000_000_000u32.to_le_bytes()),
            ("u64", StDtype::U64, &[1], &(1u64 << 40).to_le_bytes()),
            ("bool", StDtype::Bool, &[3], &bools),
            ("e4m3", StDtype::F8E4M3, &[6], &e4m3),
            ("e5m2", StDtype::F8E5M2, &[3], &e5m2),
            (
                "f32",
                StDtype::F32,
                &[2],
                &f32_bytes(&[1.0 + f32::EPSILON, -0.0]),
            ),
        ],
        None,
    )
    .unwrap();
    let f = SafeTensorsFile::from_bytes("others", b).unwrap();
    assert_eq!(f.to_f32("f64").unwrap(), vec![1.5, -2.25, f32::INFINITY]);
    assert_eq!(f.to_f32("i64").unwrap(), vec![-3.0, (1u64 << 40) as f32]);
    assert_eq!(f.to_f32("i32").unwrap(), vec![-7.0, 123456.0]);
    assert_eq!(f.to_f32("i16").unwrap(), vec![-32768.0, 32767.0]);
    assert_eq!(f.to_f32("i8").unwrap(), vec![-128.0, 5.0]);
    assert_eq!(f.to_f32("u8").unwrap(), vec![0.0, 255.0]);
    // The unsigned types of the format (token-id files use U16) are valid files too.
    assert_eq!(f.to_f32("u16").unwrap(), vec![0.0, 65535.0]);
    assert_eq!(f.to_f32("u32").unwrap(), vec![4_000_000_000.0]);
    assert_eq!(f.to_f32("u64").unwrap(), vec![(1u64 << 40) as f32]);
    assert_eq!(f.to_f32("bool").unwrap(), vec![0.0, 1.0, 1.0]);
    let e = f.to_f32("e4m3").unwrap();
    assert_eq!(&e[..5], &[0.0, 1.0, -1.0, 448.0, 2f32.powi(-9)]);
    assert!(e[5].is_nan());
    assert_eq!(f.to_f32("e5m2").unwrap(), vec![1.0, -2.0, f32::INFINITY]);
    // f32 -> bf16 rounds to nearest even.
    assert_eq!(
        f.to_bf16("f32").unwrap(),
        vec![bf16::from_f32(1.0), bf16::from_f32(-0.0)]
    );
    assert_eq!(f.to_bf16("i32").unwrap()[0].to_f32(), -7.0);
}

#[test]
fn unaligned_tensor_data_is_read_safely() {
    // A 1-byte tensor first puts the F32/F64 data at odd file offsets.
    let b = serialize_safetensors(
        &[
            ("pad", StDtype::U8, &[1], &[0]),
            ("x", StDtype::F32, &[3], &f32_bytes(&[1.0, -2.0, 3.5])),
            ("y", StDtype::F64, &[1], &0.25f64.to_le_bytes()),
        ],
        None,
    )
    .unwrap();
    let f = SafeTensorsFile::from_bytes("unaligned", b).unwrap();
    assert_eq!(f.info("x").unwrap().start % 2, 1);
    assert_eq!(f.to_f32("x").unwrap(), vec![1.0, -2.0, 3.5]);
    assert_eq!(f.to_f32("y").unwrap(), vec![0.25]);
}

#[test]
fn sharded_folder_with_index() {
    let d = sharded_dir("sharded_ok");
    let ck = ShardedCheckpoint::open_dir(&d).unwrap();
    assert_eq!(ck.files().len(), 2);
    assert_eq!(ck.len(), 3);
    assert_eq!(ck.names().collect::<Vec<_>>(), vec!["t0", "t1", "t2"]);
    assert!(ck.contains("t2"));
    assert_eq!(ck.total_bytes(), 8 + 2 + 6);
    let (file, info) = ck.get("t2").unwrap();
    assert!(file
        .path()
        .ends_with("diffusion_pytorch_model-00002-of-00002.safetensors"));
    assert_eq!((info.dtype, info.shape.clone()), (StDtype::F16, vec![3]));
    assert_eq!(ck.to_f32("t2").unwrap(), vec![4.0, 5.0, 6.0]);
    assert_eq!(ck.to_f32("t1").unwrap(), vec![3.0]);
    assert_eq!(ck.to_f32("t0").unwrap(), vec![1.0, 2.0]);
    assert_eq!(ck.bytes("t0").unwrap(), f32_bytes(&[1.0, 2.0]).as_slice());
}

#[test]
fn single_file_folders() {
    for name in [
        "diffusion_pytorch_model.safetensors",
        "model.safetensors",
        "whatever.safetensors",
    ] {
        let d = tmpdir("single");
        write_safetensors(
            &d.join(name),
            &[("w", StDtype::F32, &[2], &f32_bytes(&[1.0, 2.0]))],
            None,
        )
        .unwrap();
        std::fs::write(d.join("config.json"), "{}").unwrap();
        let ck = ShardedCheckpoint::open_dir(&d).unwrap();
        assert_eq!(ck.files().len(), 1);
        assert_eq!(ck.to_f32("w").unwrap(), vec![1.0, 2.0]);
        // Messages name the file itself.
        let e = ck.get("nope").unwrap_err();
        assert_msg(&e, &d.join(name), &["tensor `nope`", "1 tensors"]);
    }
}

#[test]
fn canonical_file_preferred_over_variants() {
    let d = tmpdir("variants");
    write_safetensors(
        &d.join("diffusion_pytorch_model.safetensors"),
        &[("w", StDtype::F32, &[1], &f32_bytes(&[1.0]))],
        None,
    )
    .unwrap();
    write_safetensors(
        &d.join("diffusion_pytorch_model.fp16.safetensors"),
        &[("w", StDtype::F16, &[1], &f16::from_f32(1.0).to_le_bytes())],
        None,
    )
    .unwrap();
    let ck = ShardedCheckpoint::open_dir(&d).unwrap();
    assert_eq!(ck.get("w").unwrap().1.dtype, StDtype::F32);
}

#[test]
fn several_files_without_index_are_opened_together() {
    let d = tmpdir("noindex");
    write_safetensors(
        &d.join("part-a.safetensors"),
        &[("a", StDtype::F32, &[1], &f32_bytes(&[1.0]))],
        None,
    )
    .unwrap();
    write_safetensors(
        &d.join("part-b.safetensors"),
        &[("b", StDtype::F32, &[1], &f32_bytes(&[2.0]))],
        None,
    )
    .unwrap();
    let ck = ShardedCheckpoint::open_dir(&d).unwrap();
    assert_eq!(ck.names().collect::<Vec<_>>(), vec!["a", "b"]);
    let ck2 = ShardedCheckpoint::open_files(&[
        d.join("part-a.safetensors"),
        d.join("part-b.safetensors"),
    ])
    .unwrap();
    assert_eq!(ck2.to_f32("b").unwrap(), vec![2.0]);
}

#[test]
fn compatible_with_the_reference_crate() {
    // Files from the `safetensors` crate parse here, and files written here parse there.
    let data = f32_bytes(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![2, 3], &data).unwrap();
    let small = [7u8, 8];
    let view2 =
        safetensors::tensor::TensorView::new(safetensors::Dtype::U8, vec![2], &small).unwrap();
    let mut meta = std::collections::HashMap::new();
    meta.insert("k".to_string(), "v".to_string());
    let buf = safetensors::serialize([("x", view), ("y", view2)], Some(meta)).unwrap();
    let f = SafeTensorsFile::from_bytes("ref", buf).unwrap();
    assert_eq!(f.to_f32("x").unwrap(), vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    assert_eq!(f.bytes("y").unwrap(), &[7, 8]);
    assert_eq!(f.metadata().get("k").map(String::as_str), Some("v"));

    let mine = serialize_safetensors(
        &[
            ("x", StDtype::BF16, &[2], &[0, 0x3f, 0, 0x40]),
            ("y", StDtype::I8, &[1], &[0xff]),
        ],
        None,
    )
    .unwrap();
    let st = safetensors::SafeTensors::deserialize(&mine).unwrap();
    assert_eq!(st.tensor("x").unwrap().dtype(), safetensors::Dtype::BF16);
    assert_eq!(st.tensor("x").unwrap().data(), &[0, 0x3f, 0, 0x40]);
    assert_eq!(st.tensor("y").unwrap().shape(), &[1]);
}
