//! Property tests of the safetensors header parser: arbitrary input never panics, whatever parses
//! is consistent (every tensor's range lies in the file, ranges tile the data section, sizes match
//! shape x dtype), and valid random files round-trip through the writer.
use std::collections::BTreeMap;

use contentv::io::safetensors::{
    serialize_safetensors, write_safetensors, SafeTensorsFile, StDtype,
};
use proptest::prelude::*;

/// Everything a successful parse promises.
fn check_consistent(f: &SafeTensorsFile) {
    let file_len = f.file_len();
    let data = f.data_offset();
    assert!(data <= file_len);
    assert_eq!(f.backing().len(), file_len);
    let mut ranges = Vec::new();
    for t in f.tensors() {
        let numel = t
            .shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .expect("validated shapes do not overflow");
        assert_eq!(t.len, numel * t.dtype.size_of(), "{}", t.name);
        assert!(t.start >= data, "{}: starts inside the header", t.name);
        assert!(
            t.start.checked_add(t.len).is_some_and(|e| e <= file_len),
            "{}: runs past the file",
            t.name
        );
        let b = f.bytes(&t.name).unwrap();
        assert_eq!(b.len(), t.len);
        assert_eq!(f.to_f32(&t.name).unwrap().len(), numel);
        assert_eq!(f.to_bf16(&t.name).unwrap().len(), numel);
        ranges.push((t.start, t.start + t.len));
    }
    // The tensors tile the data section exactly.
    ranges.sort_unstable();
    let mut cursor = data;
    for (b, e) in ranges {
        assert_eq!(b, cursor, "hole or overlap at {b}");
        cursor = e;
    }
    assert_eq!(cursor, file_len);
}

/// What this parser accepts, the reference `safetensors` crate accepts too, with the same tensors
/// (this parser is at least as strict).
fn agrees_with_reference(f: &SafeTensorsFile) {
    if std::env::var_os("ST_PROPS_TRACE").is_some() {
        eprintln!("accepted: {} tensors", f.len());
    }
    let bytes: &[u8] = &f.backing();
    let st = safetensors::SafeTensors::deserialize(bytes)
        .expect("the reference crate rejects a file this parser accepts");
    assert_eq!(st.len(), f.len());
    for t in f.tensors() {
        let v = st.tensor(&t.name).unwrap();
        assert_eq!(v.dtype().to_string(), t.dtype.name());
        assert_eq!(v.shape(), t.shape.as_slice());
        assert_eq!(v.data(), f.bytes(&t.name).unwrap());
    }
}

/// Parses and, if it parses, checks consistency; an error must render without panicking.
fn parse_any(bytes: Vec<u8>) {
    match SafeTensorsFile::from_bytes("prop.safetensors", bytes) {
        Ok(f) => {
            check_consistent(&f);
            agrees_with_reference(&f);
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.starts_with("prop.safetensors"), "{msg}");
        }
    }
}

fn with_len(header: &[u8], data: &[u8]) -> Vec<u8> {
    let mut v = (header.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(header);
    v.extend_from_slice(data);
    v
}

type Owned = (StDtype, Vec<usize>, Vec<u8>);

fn dtype() -> impl Strategy<Value = StDtype> {
    (0..StDtype::ALL.len()).prop_map(|i| StDtype::ALL[i])
}

fn tensor() -> impl Strategy<Value = Owned> {
    (dtype(), prop::collection::vec(0usize..5, 0..4)).prop_flat_map(|(d, shape)| {
        let n: usize = shape.iter().product::<usize>() * d.size_of();
        (Just(d), Just(shape), prop::collection::vec(any::<u8>(), n))
    })
}

fn valid_file() -> impl Strategy<Value = (BTreeMap<String, Owned>, BTreeMap<String, String>)> {
    (
        prop::collection::btree_map("[a-z_][a-z0-9_.]{0,10}", tensor(), 0..6),
        prop::collection::btree_map("[a-z]{1,6}", "\\PC{0,12}", 0..3),
    )
}

fn serialize(t: &BTreeMap<String, Owned>, meta: &BTreeMap<String, String>) -> Vec<u8> {
    let list: Vec<(&str, StDtype, &[usize], &[u8])> = t
        .iter()
        .map(|(n, (d, s, b))| (n.as_str(), *d, s.as_slice(), b.as_slice()))
        .collect();
    serialize_safetensors(&list, if meta.is_empty() { None } else { Some(meta) }).unwrap()
}

#[derive(Clone, Debug)]
enum Mutation {
    FlipBit(usize, u8),
    SetByte(usize, u8),
    Truncate(usize),
    Insert(usize, u8),
    Remove(usize),
    Append(Vec<u8>),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(i, b)| Mutation::FlipBit(i, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::SetByte(i, b)),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        any::<usize>().prop_map(Mutation::Remove),
        prop::collection::vec(any::<u8>(), 1..8).prop_map(Mutation::Append),
    ]
}

fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
    let n = bytes.len();
    match *m {
        Mutation::FlipBit(i, b) if n > 0 => bytes[i % n] ^= 1 << b,
        Mutation::SetByte(i, v) if n > 0 => bytes[i % n] = v,
        Mutation::Truncate(i) => bytes.truncate(i % (n + 1)),
        Mutation::Insert(i, v) => bytes.insert(i % (n + 1), v),
        Mutation::Remove(i) if n > 0 => {
            bytes.remove(i % n);
        }
        Mutation::Append(ref v) => bytes.extend_from_slice(v),
        _ => {}
    }
}

/// Header-ish text: JSON punctuation, digits, the field names and dtype names, so random
/// strings reach deep into the parser.
fn jsonish() -> impl Strategy<Value = String> {
    let atoms = prop_oneof![
        Just("{".to_string()),
        Just("}".to_string()),
        Just("[".to_string()),
        Just("]".to_string()),
        Just(",".to_string()),
        Just(":".to_string()),
        Just("\"dtype\"".to_string()),
        Just("\"shape\"".to_string()),
        Just("\"data_offsets\"".to_string()),
        Just("\"__metadata__\"".to_string()),
        Just("\"F32\"".to_string()),
        Just("\"BF16\"".to_string()),
        Just("\"a\"".to_string()),
        Just("-1".to_string()),
        Just("0".to_string()),
        Just("4".to_string()),
        Just("18446744073709551615".to_string()),
        Just("1.5".to_string()),
        Just("null".to_string()),
        Just(" ".to_string()),
        "[0-9]{1,3}",
    ];
    prop::collection::vec(atoms, 0..60).prop_map(|v| v.concat())
}

fn small_delta() -> impl Strategy<Value = i64> {
    prop_oneof![6 => Just(0i64), 1 => -2i64..=2]
}

/// A structurally plausible header with random (often wrong) values.
fn entry_json() -> impl Strategy<Value = (String, u64)> {
    (
        prop_oneof![
            Just("F32"),
            Just("BF16"),
            Just("F16"),
            Just("U8"),
            Just("I64"),
            Just("BOOL"),
            Just("F8_E4M3"),
            Just("X")
        ],
        prop::collection::vec(
            prop_oneof![0i64..6, -2i64..0, Just(i64::MAX), Just(1 << 32)],
            0..4,
        ),
        (0u64..24, 0u64..24),
    )
        .prop_map(|(d, shape, (b, e))| {
            (
                format!(r#"{{"dtype":"{d}","shape":{shape:?},"data_offsets":[{b},{e}]}}"#),
                e,
            )
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        parse_any(bytes);
    }

    #[test]
    fn arbitrary_header_with_right_length_never_panics(
        header in prop::collection::vec(any::<u8>(), 0..256),
        data in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        parse_any(with_len(&header, &data));
    }

    #[test]
    fn jsonish_headers_never_panic(header in jsonish(), data in prop::collection::vec(any::<u8>(), 0..48)) {
        parse_any(with_len(header.as_bytes(), &data));
    }

    #[test]
    fn plausible_headers_never_panic(
        entries in prop::collection::btree_map("[abc]", entry_json(), 0..4),
        data_len in prop_oneof![Just(None), (0usize..48).prop_map(Some)],
    ) {
        // Half the time the data section is exactly as long as the furthest end offset, so the
        // bounds check passes and the size/overlap/hole checks decide.
        let body: Vec<String> = entries.iter().map(|(k, (j, _))| format!("\"{k}\":{j}")).collect();
        let max_end = entries.values().map(|(_, e)| *e as usize).max().unwrap_or(0);
        let header = format!("{{{}}}", body.join(","));
        parse_any(with_len(header.as_bytes(), &vec![0x3c; data_len.unwrap_or(max_end)]));
    }

    #[test]
    fn nearly_valid_headers_never_panic(
        entries in prop::collection::vec(
            ("[a-d]", prop_oneof![4 => Just("F32"), 1 => Just("BF16"), 1 => Just("U8"), 1 => Just("F64")],
             prop::collection::vec(0usize..4, 0..3), small_delta(), small_delta()),
            0..5),
        data_delta in small_delta(),
    ) {
        // Contiguous offsets computed from the shapes, then nudged by small deltas: most files
        // are valid or wrong in exactly one subtle way (off-by-one, overlap, hole, duplicate).
        let mut cursor = 0i64;
        let mut body = Vec::new();
        for (name, d, shape, db, de) in &entries {
            let size = StDtype::from_name(d).unwrap().size_of() as i64;
            let n = shape.iter().product::<usize>() as i64 * size;
            body.push(format!(r#""{name}":{{"dtype":"{d}","shape":{shape:?},"data_offsets":[{},{}]}}"#, cursor + db, cursor + n + de));
            cursor += n;
        }
        let header = format!("{{{}}}", body.join(","));
        let data = vec![0x11u8; (cursor + data_delta).max(0) as usize];
        parse_any(with_len(header.as_bytes(), &data));
    }

    #[test]
    fn accepted_files_are_accepted_by_the_reference_crate(
        (tensors, meta) in valid_file(),
        mutations in prop::collection::vec(mutation(), 0..3),
    ) {
        // This parser is at least as strict as the reference one, and agrees on what it accepts.
        let mut bytes = serialize(&tensors, &meta);
        for m in &mutations {
            apply(&mut bytes, m);
        }
        parse_any(bytes);
    }

    #[test]
    fn mutated_valid_files_never_panic(
        (tensors, meta) in valid_file(),
        mutations in prop::collection::vec(mutation(), 1..6),
    ) {
        let mut bytes = serialize(&tensors, &meta);
        for m in &mutations {
            apply(&mut bytes, m);
        }
        parse_any(bytes);
    }

    #[test]
    fn mutated_headers_never_panic(
        (tensors, meta) in valid_file(),
        flips in prop::collection::vec((any::<usize>(), 0u8..8), 1..4),
    ) {
        // Bit flips aimed at the JSON header (digits, quotes, brackets), not the data.
        let mut bytes = serialize(&tensors, &meta);
        let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        for (i, b) in flips {
            bytes[8 + i % header_len] ^= 1 << b;
        }
        parse_any(bytes);
    }

    #[test]
    fn valid_files_round_trip((tensors, meta) in valid_file()) {
        let bytes = serialize(&tensors, &meta);
        let f = SafeTensorsFile::from_bytes("rt.safetensors", bytes).unwrap();
        check_consistent(&f);
        agrees_with_reference(&f);
        prop_assert_eq!(f.metadata(), &meta);
        prop_assert_eq!(f.names().map(str::to_owned).collect::<Vec<_>>(), tensors.keys().cloned().collect::<Vec<_>>());
        for (name, (d, shape, data)) in &tensors {
            let info = f.info(name).unwrap();
            prop_assert_eq!(info.dtype, *d);
            prop_assert_eq!(&info.shape, shape);
            prop_assert_eq!(f.bytes(name).unwrap(), data.as_slice());
        }
    }
}

proptest! {
    // Through the file system (write to a temp name + rename, then mmap): fewer cases.
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn valid_files_round_trip_on_disk((tensors, meta) in valid_file()) {
        let dir = std::env::temp_dir().join(format!("contentv-st-props-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("rt.safetensors");
        let list: Vec<(&str, StDtype, &[usize], &[u8])> =
            tensors.iter().map(|(n, (d, s, b))| (n.as_str(), *d, s.as_slice(), b.as_slice())).collect();
        write_safetensors(&path, &list, if meta.is_empty() { None } else { Some(&meta) }).unwrap();
        let f = SafeTensorsFile::open(&path).unwrap();
        check_consistent(&f);
        prop_assert_eq!(f.metadata(), &meta);
        for (name, (_, _, data)) in &tensors {
            prop_assert_eq!(f.bytes(name).unwrap(), data.as_slice());
        }
        // The streaming writer and the in-memory serializer produce the same bytes.
        prop_assert_eq!(std::fs::read(&path).unwrap(), serialize(&tensors, &meta));
    }
}
