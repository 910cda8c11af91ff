//! Broken model folders never destroy data, never panic, never take unbounded memory, and
//! `info`, `generate` and `quantize` agree about them (issue 16).
//!
//! Each case copies the tiny model into a temporary folder, applies 1-3 random damages to its
//! files and folders (truncate, flip bytes, delete, append garbage, retype, replace by a
//! symbolic link, edit a config value), then runs the binary under a 4 GiB address-space limit.
//! It asserts:
//! * no panic (exit code 101 or "panicked"), no death by a signal (an allocation failure aborts);
//! * a failing command exits nonzero and names a file, folder or tensor of the model;
//! * nothing of the model folder changed (every file hashed before and after each command), and a
//!   failed `quantize` leaves no output folder (nor anything else) behind;
//! * consistency: `info` says "status: ok" exactly when `generate` succeeds and exactly when
//!   `quantize` succeeds, with two documented exceptions:
//!   - damage only inside tensor data (flipped bytes after a safetensors header): `info` reads
//!     headers only, so it says ok; `generate` may then fail (e.g. non-finite values), but with a
//!     message;
//!   - `quantize` copies every file of the model, also those nothing reads (README.md,
//!     model_index.json, ...): one it cannot read (a dangling link, a folder where a file was)
//!     makes it fail, naming the file, while `info` and `generate` are fine.
//!
//! The regressions the property test found are kept as plain tests at the end.
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence, RngSeed};

mod common;

use common::bin::{text, BIN};

fn tiny() -> PathBuf {
    contentv::cli::load::tiny_model_dir()
}

fn base() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("broken-models")
}

/// Files (sorted) and folders (sorted) of the tiny model, relative.
fn entries() -> (Vec<PathBuf>, Vec<PathBuf>) {
    fn walk(root: &Path, rel: &Path, files: &mut Vec<PathBuf>, dirs: &mut Vec<PathBuf>) {
        let mut v: Vec<_> = std::fs::read_dir(root.join(rel))
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        v.sort();
        for n in v {
            let r = rel.join(n);
            if root.join(&r).is_dir() {
                dirs.push(r.clone());
                walk(root, &r, files, dirs);
            } else {
                files.push(r);
            }
        }
    }
    let (mut f, mut d) = (Vec::new(), Vec::new());
    walk(&tiny(), Path::new(""), &mut f, &mut d);
    (f, d)
}

fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap().flatten() {
        let (s, d) = (e.path(), dst.join(e.file_name()));
        if s.is_dir() {
            copy_dir(&s, &d);
        } else {
            std::fs::copy(&s, &d).unwrap();
        }
    }
}

/// Every entry below `root`: kind and content hash (link target for links).
fn snapshot(root: &Path) -> BTreeMap<PathBuf, String> {
    fn walk(root: &Path, p: &Path, out: &mut BTreeMap<PathBuf, String>) {
        let Ok(rd) = std::fs::read_dir(p) else {
            return;
        };
        for e in rd.flatten() {
            let path = e.path();
            let rel = path.strip_prefix(root).unwrap().to_path_buf();
            let m = std::fs::symlink_metadata(&path).unwrap();
            if m.file_type().is_symlink() {
                out.insert(
                    rel,
                    format!("link {:?}", std::fs::read_link(&path).unwrap()),
                );
            } else if m.is_dir() {
                out.insert(rel, "dir".into());
                walk(root, &path, out);
            } else {
                let mut h = std::collections::hash_map::DefaultHasher::new();
                std::fs::read(&path).unwrap().hash(&mut h);
                out.insert(rel, format!("file {} {:x}", m.len(), h.finish()));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

#[derive(Clone, Debug)]
enum Damage {
    /// To 0 bytes (None) or to `frac`/65536 of its length.
    Truncate {
        file: usize,
        frac: Option<u16>,
    },
    /// XOR bytes; `head`: within the first 4 KiB (headers, config text), else anywhere.
    Flip {
        file: usize,
        head: bool,
        at: Vec<(u16, u8)>,
    },
    Delete {
        entry: usize,
    },
    /// Append `n` garbage bytes.
    Append {
        file: usize,
        n: u16,
        byte: u8,
    },
    /// A file becomes an (empty) folder, a folder becomes a file.
    Retype {
        entry: usize,
    },
    /// A symbolic link instead: dangling (None) or to another file of the model.
    Link {
        entry: usize,
        to: Option<usize>,
    },
    /// A value of a config file set to an absurd number or the wrong type.
    Config {
        file: usize,
        key: usize,
        value: usize,
    },
}

const VALUES: &[&str] = &[
    "1000000000000",
    "18446744073709551615",
    "-1",
    "0",
    "1.5",
    "3",
    "\"text\"",
    "[1, 2]",
    "{}",
    "true",
    "null",
    "1e300",
    "1099511627777",
];

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        (any::<usize>(), proptest::option::of(any::<u16>()))
            .prop_map(|(file, frac)| Damage::Truncate { file, frac }),
        (
            any::<usize>(),
            any::<bool>(),
            proptest::collection::vec((any::<u16>(), 1u8..), 1..4)
        )
            .prop_map(|(file, head, at)| Damage::Flip { file, head, at }),
        any::<usize>().prop_map(|entry| Damage::Delete { entry }),
        (any::<usize>(), 1u16..5000, any::<u8>()).prop_map(|(file, n, byte)| Damage::Append {
            file,
            n,
            byte
        }),
        any::<usize>().prop_map(|entry| Damage::Retype { entry }),
        (any::<usize>(), proptest::option::of(any::<usize>()))
            .prop_map(|(entry, to)| Damage::Link { entry, to }),
        (any::<usize>(), any::<usize>(), 0..VALUES.len())
            .prop_map(|(file, key, value)| Damage::Config { file, key, value }),
    ]
}

/// Applies `d` to the model in `m`. Returns whether the damage only touched tensor data
/// (bytes after a safetensors header), and a description.
fn apply(m: &Path, d: &Damage) -> (bool, String) {
    let (files, dirs) = entries();
    let all: Vec<&PathBuf> = files.iter().chain(dirs.iter()).collect();
    let file = |i: usize| m.join(&files[i % files.len()]);
    let entry = |i: usize| m.join(all[i % all.len()]);
    let is_file = |p: &Path| std::fs::symlink_metadata(p).is_ok_and(|t| t.is_file());
    let remove = |p: &Path| {
        if std::fs::symlink_metadata(p).is_ok_and(|t| t.is_dir()) {
            std::fs::remove_dir_all(p).unwrap();
        } else {
            let _ = std::fs::remove_file(p);
        }
    };
    match d {
        Damage::Truncate { file: f, frac } => {
            let p = file(*f);
            if !is_file(&p) {
                return (false, "no-op".into());
            }
            let len = std::fs::metadata(&p).unwrap().len();
            let to = frac.map_or(0, |x| len * x as u64 / 65536);
            let fh = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
            fh.set_len(to).unwrap();
            (false, format!("truncate {} to {to} of {len}", p.display()))
        }
        Damage::Flip { file: f, head, at } => {
            let p = file(*f);
            if !is_file(&p) {
                return (false, "no-op".into());
            }
            let mut b = std::fs::read(&p).unwrap();
            if b.is_empty() {
                return (false, "no-op".into());
            }
            let span = if *head { b.len().min(4096) } else { b.len() };
            let data_start = if p.extension().is_some_and(|e| e == "safetensors") && b.len() >= 8 {
                Some(u64::from_le_bytes(b[..8].try_into().unwrap()).saturating_add(8))
            } else {
                None
            };
            let mut data_only = true;
            let mut pos = Vec::new();
            for &(x, v) in at {
                let i = span * x as usize / 65536;
                b[i] ^= v;
                pos.push(i);
                data_only &= data_start.is_some_and(|s| i as u64 >= s);
            }
            std::fs::write(&p, &b).unwrap();
            (data_only, format!("flip {} at {pos:?}", p.display()))
        }
        Damage::Delete { entry: e } => {
            let p = entry(*e);
            remove(&p);
            (false, format!("delete {}", p.display()))
        }
        Damage::Append { file: f, n, byte } => {
            let p = file(*f);
            if !is_file(&p) {
                return (false, "no-op".into());
            }
            let mut b = std::fs::read(&p).unwrap();
            b.extend(std::iter::repeat_n(*byte, *n as usize));
            std::fs::write(&p, &b).unwrap();
            (false, format!("append {n} bytes to {}", p.display()))
        }
        Damage::Retype { entry: e } => {
            let p = entry(*e);
            // An earlier damage may have removed or retyped the folder this lived in.
            if !p
                .parent()
                .is_some_and(|d| std::fs::symlink_metadata(d).is_ok_and(|t| t.is_dir()))
            {
                return (false, "no-op".into());
            }
            let was_dir = std::fs::symlink_metadata(&p).is_ok_and(|t| t.is_dir());
            remove(&p);
            if was_dir {
                std::fs::write(&p, b"not a folder").unwrap();
            } else {
                std::fs::create_dir_all(&p).unwrap();
            }
            (
                false,
                format!("retype {} (was a folder: {was_dir})", p.display()),
            )
        }
        Damage::Link { entry: e, to } => {
            let p = entry(*e);
            // An earlier damage may have removed or retyped the folder this lived in.
            if !p
                .parent()
                .is_some_and(|d| std::fs::symlink_metadata(d).is_ok_and(|t| t.is_dir()))
            {
                return (false, "no-op".into());
            }
            remove(&p);
            let target = match to {
                Some(t) => file(*t),
                None => m.join("no-such-file"),
            };
            std::os::unix::fs::symlink(&target, &p).unwrap();
            (
                false,
                format!("link {} -> {}", p.display(), target.display()),
            )
        }
        Damage::Config {
            file: f,
            key,
            value,
        } => {
            let cfgs: Vec<&PathBuf> = files
                .iter()
                .filter(|p| {
                    p.file_name()
                        .is_some_and(|n| n == "config.json" || n == "scheduler_config.json")
                })
                .collect();
            let p = m.join(cfgs[f % cfgs.len()]);
            let Ok(text) = std::fs::read(&p) else {
                return (false, "no-op".into());
            };
            let Ok(serde_json::Value::Object(mut o)) = serde_json::from_slice(&text) else {
                return (false, "no-op".into());
            };
            let keys: Vec<String> = o.keys().cloned().collect();
            let k = &keys[key % keys.len()];
            let v = VALUES[*value];
            // 1e300 and u64::MAX go in as written (serde_json would round them).
            o.insert(k.clone(), serde_json::Value::String("@@".into()));
            let t = serde_json::Value::Object(o)
                .to_string()
                .replace("\"@@\"", v);
            std::fs::write(&p, t).unwrap();
            (false, format!("set {k} = {v} in {}", p.display()))
        }
    }
}

/// Runs the binary (`$BROKEN_MODELS_BIN` if set: to explore another build) under a 4 GiB
/// address-space limit, on the CPU.
fn run(args: &[&str]) -> Output {
    let bin = std::env::var("BROKEN_MODELS_BIN").unwrap_or_else(|_| BIN.to_string());
    Command::new("sh")
        .arg("-c")
        .arg("ulimit -v 4194304; exec \"$0\" \"$@\"")
        .arg(bin)
        .args(args)
        .env("CONTENTV_FORCE_CPU", "1")
        .output()
        .unwrap()
}

/// No panic, no signal; a failure names something of the model.
fn sane(what: &str, o: &Output, m: &Path) -> std::result::Result<(), TestCaseError> {
    let t = text(o);
    prop_assert!(o.status.code().is_some(), "{what} died by a signal: {t}");
    prop_assert!(o.status.code() != Some(101), "{what} panicked: {t}");
    prop_assert!(!t.contains("panicked"), "{what} panicked: {t}");
    if !o.status.success() {
        let e = String::from_utf8_lossy(&o.stderr);
        let names = e.contains(&m.display().to_string())
            || [
                "transformer",
                "vae",
                "text_encoder",
                "tokenizer",
                "scheduler",
                "tensor",
            ]
            .iter()
            .any(|w| e.contains(w));
        prop_assert!(names, "{what} failed without naming a file or tensor: {t}");
    }
    Ok(())
}

fn info_ok(o: &Output) -> bool {
    o.status.success() && String::from_utf8_lossy(&o.stdout).contains("status: ok")
}

fn case_dir(name: &str) -> PathBuf {
    let d = base().join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn damaged(case: &Path, ds: &[Damage]) -> (PathBuf, bool, Vec<String>) {
    let m = case.join("model");
    let _ = std::fs::remove_dir_all(case);
    copy_dir(&tiny(), &m);
    let mut data_only = true;
    let mut log = Vec::new();
    for d in ds {
        let (only, s) = apply(&m, d);
        data_only &= only;
        log.push(s);
    }
    (m, data_only, log)
}

fn generate(m: &Path, out: &Path) -> Output {
    run(&[
        "generate",
        "--model",
        m.to_str().unwrap(),
        "--device",
        "cpu",
        "--prompt",
        "a red ball",
        "--frames",
        "5",
        "--width",
        "32",
        "--height",
        "32",
        "--steps",
        "1",
        "--output",
        out.to_str().unwrap(),
    ])
}

/// `cases` cases, or `$BROKEN_MODELS_CASES` (for longer explorations), from a fixed seed so that
/// CI runs the same cases every time; `BROKEN_MODELS_SEED=<n>` picks another one and
/// `BROKEN_MODELS_SEED=random` a fresh one per run (explorations; a failure prints its damage).
fn config(cases: u32) -> Config {
    let cases = std::env::var("BROKEN_MODELS_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(cases);
    let rng_seed = match std::env::var("BROKEN_MODELS_SEED").ok().as_deref() {
        Some("random") => RngSeed::Random,
        Some(n) => RngSeed::Fixed(n.parse().expect("BROKEN_MODELS_SEED: a number or random")),
        None => RngSeed::Fixed(0x5EED_C0DE),
    };
    Config {
        cases,
        rng_seed,
        max_shrink_iters: 24,
        failure_persistence: Some(Box::new(FileFailurePersistence::Off)),
        ..Config::default()
    }
}

proptest! {
    #![proptest_config(config(24))]
    #[test]
    fn info_on_broken_models(ds in proptest::collection::vec(damage(), 1..4)) {
        let case = case_dir("info");
        let (m, _, log) = damaged(&case, &ds);
        let before = snapshot(&m);
        let o = run(&["info", "--model", m.to_str().unwrap()]);
        sane("info", &o, &m).map_err(|e| TestCaseError::fail(format!("{e}\ndamage: {log:?}")))?;
        prop_assert_eq!(snapshot(&m), before, "info changed the model; damage: {:?}", log);
        let _ = std::fs::remove_dir_all(&case);
    }
}

proptest! {
    #![proptest_config(config(12))]
    #[test]
    fn generate_info_quantize_agree(ds in proptest::collection::vec(damage(), 1..4)) {
        let case = case_dir("agree");
        let (m, data_only, log) = damaged(&case, &ds);
        let ctx = |e: TestCaseError| TestCaseError::fail(format!("{e}\ndamage: {log:?}"));
        let before = snapshot(&m);
        let info = run(&["info", "--model", m.to_str().unwrap()]);
        sane("info", &info, &m).map_err(ctx)?;
        let outs = case.join("out");
        std::fs::create_dir_all(&outs).unwrap();
        let video = outs.join("v.mp4");
        let gen = generate(&m, &video);
        sane("generate", &gen, &m).map_err(ctx)?;
        prop_assert_eq!(&snapshot(&m), &before, "generate changed the model; damage: {:?}", log);
        if gen.status.success() {
            prop_assert!(video.is_file(), "{}", text(&gen));
        } else {
            prop_assert!(std::fs::read_dir(&outs).unwrap().next().is_none(), "generate left {:?}", snapshot(&outs));
        }
        let ok = info_ok(&info);
        if !(data_only && ok && !gen.status.success()) {
            prop_assert_eq!(ok, gen.status.success(),
                "info and generate disagree; damage: {:?}\ninfo: {}\ngenerate: {}", log, text(&info), text(&gen));
        }
        let qparent = case.join("q");
        std::fs::create_dir_all(&qparent).unwrap();
        let qout = qparent.join("int8");
        let q = run(&["quantize", "--model", m.to_str().unwrap(), "--out", qout.to_str().unwrap()]);
        sane("quantize", &q, &m).map_err(ctx)?;
        prop_assert_eq!(&snapshot(&m), &before, "quantize changed the model; damage: {:?}", log);
        if q.status.success() {
            prop_assert!(ok, "quantize wrote a checkpoint from a model info refuses; damage: {:?}\n{}\n{}", log, text(&info), text(&q));
        } else {
            prop_assert!(std::fs::read_dir(&qparent).unwrap().next().is_none(),
                "a failed quantize left {:?}", snapshot(&qparent));
            if ok {
                let e = String::from_utf8_lossy(&q.stderr);
                prop_assert!(e.contains("cannot copy") || e.contains("cannot read"),
                    "quantize refused a model info accepts; damage: {:?}\n{}", log, text(&q));
            }
        }
        eprintln!(
            "case {log:?}: info ok {ok}, generate ok {}, quantize ok {}",
            gen.status.success(),
            q.status.success()
        );
        let _ = std::fs::remove_dir_all(&case);
    }
}

/// The baseline the properties compare with: the undamaged copy passes all three commands.
#[test]
fn undamaged_copy_passes_everything() {
    let case = case_dir("baseline");
    let (m, _, _) = damaged(&case, &[]);
    let before = snapshot(&m);
    let info = run(&["info", "--model", m.to_str().unwrap()]);
    assert!(info_ok(&info), "{}", text(&info));
    let video = case.join("v.mp4");
    let gen = generate(&m, &video);
    assert!(gen.status.success(), "{}", text(&gen));
    assert!(video.is_file());
    let qout = case.join("int8");
    let q = run(&[
        "quantize",
        "--model",
        m.to_str().unwrap(),
        "--out",
        qout.to_str().unwrap(),
    ]);
    assert!(q.status.success(), "{}", text(&q));
    let info = run(&["info", "--model", qout.to_str().unwrap()]);
    assert!(info_ok(&info), "the INT8 checkpoint: {}", text(&info));
    assert_eq!(snapshot(&m), before);
    let _ = std::fs::remove_dir_all(&case);
}

/// Runs info, generate and quantize on `m` and asserts that each fails with `want` in its
/// messages, leaving the model as it was and no output behind.
fn all_refuse(m: &Path, want: &str) {
    let before = snapshot(m);
    let case = m.parent().unwrap();
    let info = run(&["info", "--model", m.to_str().unwrap()]);
    assert!(!info_ok(&info), "info: {}", text(&info));
    assert!(
        text(&info).contains(want),
        "info lacks {want:?}: {}",
        text(&info)
    );
    let video = case.join("v.mp4");
    let gen = generate(m, &video);
    assert!(!gen.status.success(), "generate: {}", text(&gen));
    assert!(
        text(&gen).contains(want),
        "generate lacks {want:?}: {}",
        text(&gen)
    );
    assert!(!video.exists());
    let qout = case.join("int8");
    let q = run(&[
        "quantize",
        "--model",
        m.to_str().unwrap(),
        "--out",
        qout.to_str().unwrap(),
    ]);
    assert!(!q.status.success(), "quantize: {}", text(&q));
    assert!(
        text(&q).contains(want),
        "quantize lacks {want:?}: {}",
        text(&q)
    );
    assert!(!qout.exists());
    for t in [&info, &gen, &q] {
        assert!(t.status.code().is_some_and(|c| c != 101), "{}", text(t));
    }
    assert_eq!(snapshot(m), before);
}

/// A path of the wrong type is reported as such, never as "missing" (issue 16).
#[test]
fn wrong_types_are_named_as_such() {
    let case = case_dir("wrong-types");
    let m = case.join("model");
    for (rel, how, want) in [
        (
            "vae/config.json",
            "folder",
            "vae/config.json is a folder, not a file",
        ),
        (
            "transformer",
            "file",
            "transformer/ (ContentV MMDiT transformer) is a file, not a folder",
        ),
        (
            "tokenizer/vocab.json",
            "dangling",
            "tokenizer/vocab.json is a symbolic link to",
        ),
        (
            "text_encoder/model.safetensors",
            "folder",
            "text_encoder/model.safetensors is a folder, not a file",
        ),
        (
            "tokenizer_2/tokenizer_config.json",
            "folder",
            "tokenizer_config.json is a folder, not a file",
        ),
    ] {
        let _ = std::fs::remove_dir_all(&case);
        copy_dir(&tiny(), &m);
        let p = m.join(rel);
        if p.is_dir() {
            std::fs::remove_dir_all(&p).unwrap();
        } else {
            std::fs::remove_file(&p).unwrap();
        }
        match how {
            "folder" => std::fs::create_dir(&p).unwrap(),
            "file" => std::fs::write(&p, b"x").unwrap(),
            _ => std::os::unix::fs::symlink(case.join("gone"), &p).unwrap(),
        }
        all_refuse(&m, want);
    }
    // --model itself
    let link = case.join("link");
    std::os::unix::fs::symlink(case.join("gone"), &link).unwrap();
    let o = run(&["info", "--model", link.to_str().unwrap()]);
    assert!(
        text(&o).contains("which does not exist (a dangling link)"),
        "{}",
        text(&o)
    );
    let _ = std::fs::remove_dir_all(&case);
}

/// Absurd config values are refused before anything is sized from them, by info, generate and
/// quantize alike, with the real bound in the message.
#[test]
fn absurd_config_values_quote_the_real_bound() {
    let case = case_dir("bounds");
    let m = case.join("model");
    for (comp, key, value, want) in [
        ("text_encoder", "hidden_size", "1099511627777", "hidden_size 1099511627777 is more than this engine accepts (at most 1099511627776"),
        ("text_encoder", "num_hidden_layers", "5000", "num_hidden_layers 5000 is more layers than this engine accepts (at most 4096: each layer has 16 tensors"),
        ("text_encoder_2", "vocab_size", "1000000000000", "parameters, more than the 1099511627776 (2^40)"),
        ("text_encoder_3", "relative_attention_max_distance", "3", "relative_attention_max_distance 3 is too small"),
        ("text_encoder_3", "layer_norm_epsilon", "1e300", "layer_norm_epsilon inf is not a usable epsilon"),
        ("vae", "base_dim", "1099511627777", "base_dim 1099511627777 is more than this engine accepts"),
        ("vae", "dim_mult", "[1, 1099511627776]", "dim_mult entry 1099511627776 x base_dim 6"),
        ("transformer", "num_attention_heads", "1099511627777", "num_attention_heads 1099511627777 is more than"),
        ("transformer", "num_layers", "18446744073709551615", "num_layers 18446744073709551615 is more layers"),
    ] {
        let _ = std::fs::remove_dir_all(&case);
        copy_dir(&tiny(), &m);
        let p = m.join(comp).join("config.json");
        let mut o: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        o.insert(key.into(), serde_json::Value::String("@@".into()));
        let t = serde_json::Value::Object(o).to_string().replace("\"@@\"", value);
        std::fs::write(&p, t).unwrap();
        all_refuse(&m, want);
    }
    let _ = std::fs::remove_dir_all(&case);
}

/// Regressions the property test found (run against the build before the shared checks, with
/// `BROKEN_MODELS_BIN`): `info` said "status: ok" while `generate` failed, and `quantize` wrote
/// an INT8 checkpoint from a model that `generate` refuses. Each case: all three refuse, naming
/// the problem.
#[test]
fn info_and_quantize_see_what_generate_sees() {
    let case = case_dir("regressions");
    let m = case.join("model");
    type Edit = fn(&Path);
    fn set(m: &Path, comp: &str, key: &str, v: serde_json::Value) {
        let p = m.join(comp).join("config.json");
        let mut o: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        o[key] = v;
        std::fs::write(&p, o.to_string()).unwrap();
    }
    let cases: [(Edit, &str); 7] = [
        // info did not load the tokenizers (a flipped byte in tokenizer_config.json)
        (
            |m| std::fs::write(m.join("tokenizer/tokenizer_config.json"), "{\"x\": ").unwrap(),
            "tokenizer_config.json: not valid JSON",
        ),
        // info listed 4 VAE tensors only
        (
            |m| set(m, "vae", "num_res_blocks", 3.into()),
            "decoder.up_blocks.0.resnets.3.norm1.gamma: missing from the checkpoint",
        ),
        // the T5 position buckets failed at the first prompt, not at load
        (
            |m| set(m, "text_encoder_3", "relative_attention_max_distance", 3.into()),
            "relative_attention_max_distance 3 is too small",
        ),
        // a negative epsilon: generate failed with "non-finite value" naming no file
        (
            |m| set(m, "text_encoder", "layer_norm_eps", (-1).into()),
            "layer_norm_eps -1 is not a usable epsilon",
        ),
        // quantize checked only transformer/ and text_encoder_3/ ...
        (
            |m| std::fs::remove_dir_all(m.join("tokenizer")).unwrap(),
            "tokenizer/ (CLIP-L tokenizer) is missing",
        ),
        (
            |m| {
                let p = m.join("text_encoder/model.safetensors");
                let mut b = std::fs::read(&p).unwrap();
                b.extend([7u8; 1440]);
                std::fs::write(&p, b).unwrap();
            },
            "1440 trailing bytes after the last tensor",
        ),
        (
            |m| set(m, "text_encoder", "vocab_size", 3.into()),
            "text_model.embeddings.token_embedding.weight: the checkpoint has [49408, 16], the config needs [3, 16]",
        ),
    ];
    for (edit, want) in cases {
        let _ = std::fs::remove_dir_all(&case);
        copy_dir(&tiny(), &m);
        edit(&m);
        all_refuse(&m, want);
    }
    let _ = std::fs::remove_dir_all(&case);
}
