//! Shared test helpers: loading the reference fixtures (tests/fixtures/*.safetensors, written by
//! scripts/reference/make_fixtures.py) and comparing tensors with a readable error report.
//!
//! Use from an integration test with `mod common;`. Submodules: `bin` (running the `contentv`
//! binary) and `scratch` (scratch folders and files).
#![allow(dead_code)]

pub mod bin;
pub mod scratch;
pub mod source;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use contentv::io::safetensors::{decode_f32, SafeTensorsFile, StDtype};

/// The fixture format these helpers understand (`format_version` in tests/fixtures/manifest.json and
/// in every fixture file's safetensors metadata).
pub const FORMAT_VERSION: u64 = 1;

/// How to rebuild the fixtures and the tiny model.
pub const REGENERATE: &str =
    "scripts/reference/setup.sh && .venv-ref/bin/python scripts/reference/make_fixtures.py";

/// Repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// tests/fixtures
pub fn fixtures_dir() -> PathBuf {
    repo_root().join("tests/fixtures")
}

/// assets/tiny-model: the tiny random ContentV model the fixtures were computed with.
pub fn tiny_model_dir() -> PathBuf {
    repo_root().join("assets/tiny-model")
}

/// tests/fixtures/manifest.json, parsed once. Panics with a hint if it is missing or of another format version.
pub fn manifest() -> &'static serde_json::Value {
    static M: OnceLock<serde_json::Value> = OnceLock::new();
    M.get_or_init(|| {
        let path = fixtures_dir().join("manifest.json");
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}\nregenerate the fixtures with: {REGENERATE}", path.display()));
        let m: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{} is not valid JSON: {e}\nregenerate with: {REGENERATE}", path.display()));
        let v = m.get("format_version").and_then(|v| v.as_u64());
        if v != Some(FORMAT_VERSION) {
            panic!(
                "{}: format_version is {v:?}, these tests expect {FORMAT_VERSION}: the fixtures are stale or newer than \
                 the tests.\nregenerate with: {REGENERATE}",
                path.display()
            );
        }
        m
    })
}

/// One tensor of a fixture file, converted to f32 (integers and u8 as their values), shape kept.
#[derive(Clone, Debug)]
pub struct FixtureTensor {
    pub shape: Vec<usize>,
    /// dtype as stored in the file
    pub dtype: StDtype,
    /// values as f32 (exact for f16/bf16/f32, integers below 2^24 and u8)
    pub data: Vec<f32>,
    /// exact values for integer dtypes (empty for floats)
    pub ints: Vec<i64>,
}

impl FixtureTensor {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// A loaded fixture file (`tests/fixtures/<name>.safetensors`).
pub struct Fixture {
    pub name: String,
    pub tensors: BTreeMap<String, FixtureTensor>,
}

/// Values of a fixture tensor as f32 and, for integer dtypes, as exact integers (fixtures hold
/// token ids and sizes, all far below 2^24). Decoded by the engine's own safetensors reader.
fn to_f32(dtype: StDtype, d: &[u8]) -> Option<(Vec<f32>, Vec<i64>)> {
    let f = decode_f32(dtype, d);
    let ints = match dtype {
        StDtype::F64 | StDtype::F32 | StDtype::F16 | StDtype::BF16 => Vec::new(),
        StDtype::U8
        | StDtype::U16
        | StDtype::U32
        | StDtype::U64
        | StDtype::I8
        | StDtype::I16
        | StDtype::I32
        | StDtype::I64
        | StDtype::Bool => f.iter().map(|&v| v as i64).collect(),
        _ => return None,
    };
    Some((f, ints))
}

impl Fixture {
    /// Loads `tests/fixtures/<name>.safetensors` (`name` with or without the extension). Checks the manifest's and
    /// the file's format version first; panics with a hint how to regenerate if anything is missing or stale.
    pub fn load(name: &str) -> Fixture {
        let manifest = manifest();
        let file = if name.ends_with(".safetensors") {
            name.to_string()
        } else {
            format!("{name}.safetensors")
        };
        let path = fixtures_dir().join(&file);
        let bytes = std::fs::read(&path).unwrap_or_else(|e| {
            panic!(
                "cannot read fixture {}: {e}\nregenerate with: {REGENERATE}",
                path.display()
            )
        });
        let st = SafeTensorsFile::from_bytes(&path.display().to_string(), bytes.clone())
            .unwrap_or_else(|e| panic!("{e}\nregenerate with: {REGENERATE}"));
        let fv = st.metadata().get("format_version").cloned();
        if fv.as_deref() != Some(FORMAT_VERSION.to_string().as_str()) {
            panic!(
                "{}: format_version {fv:?}, expected {FORMAT_VERSION}: stale fixture.\nregenerate with: {REGENERATE}",
                path.display()
            );
        }
        if manifest["files"].get(&file).is_none() {
            panic!("{file} is not listed in tests/fixtures/manifest.json: stale fixtures.\nregenerate with: {REGENERATE}");
        }
        Fixture::parse(&bytes, &path, REGENERATE)
    }

    /// Any safetensors file as a fixture (no manifest or format-version check; the variant
    /// fixtures carry their own). `regenerate` is the command printed when it is missing.
    pub fn from_file(path: &std::path::Path, regenerate: &str) -> Fixture {
        let bytes = std::fs::read(path).unwrap_or_else(|e| {
            panic!(
                "cannot read {}: {e}\nregenerate with: {regenerate}",
                path.display()
            )
        });
        Fixture::parse(&bytes, path, regenerate)
    }

    fn parse(bytes: &[u8], path: &std::path::Path, regenerate: &str) -> Fixture {
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        let st = SafeTensorsFile::from_bytes(&path.display().to_string(), bytes.to_vec())
            .unwrap_or_else(|e| panic!("{e}\nregenerate with: {regenerate}"));
        let mut tensors = BTreeMap::new();
        for v in st.tensors() {
            let raw = st.bytes(&v.name).unwrap_or_else(|e| panic!("{e}"));
            let (data, ints) = to_f32(v.dtype, raw).unwrap_or_else(|| {
                panic!(
                    "{file}: tensor {} has unsupported dtype {:?}",
                    v.name, v.dtype
                )
            });
            tensors.insert(
                v.name.clone(),
                FixtureTensor {
                    shape: v.shape.clone(),
                    dtype: v.dtype,
                    data,
                    ints,
                },
            );
        }
        Fixture {
            name: path.display().to_string(),
            tensors,
        }
    }

    /// The tensor `key`; panics listing the available names if it is absent.
    pub fn get(&self, key: &str) -> &FixtureTensor {
        self.tensors.get(key).unwrap_or_else(|| {
            panic!(
                "{}: no tensor {key:?}; it has: {}\n(stale fixtures? regenerate with: {REGENERATE})",
                self.name,
                self.tensors.keys().cloned().collect::<Vec<_>>().join(", ")
            )
        })
    }

    pub fn has(&self, key: &str) -> bool {
        self.tensors.contains_key(key)
    }

    /// Values of `key` as f32.
    pub fn f32(&self, key: &str) -> &[f32] {
        &self.get(key).data
    }

    /// Shape of `key`.
    pub fn shape(&self, key: &str) -> &[usize] {
        &self.get(key).shape
    }

    /// Exact values of an integer tensor (token ids, u8 frames).
    pub fn ints(&self, key: &str) -> &[i64] {
        let t = self.get(key);
        assert!(
            !t.ints.is_empty() || t.numel() == 0,
            "{}: {key} is {:?}, not an integer tensor",
            self.name,
            t.dtype
        );
        &t.ints
    }

    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.tensors.keys()
    }
}

/// Result of comparing two tensors elementwise with |got - want| <= atol + rtol * |want|.
#[derive(Clone, Debug)]
pub struct CloseReport {
    pub name: String,
    pub n: usize,
    pub atol: f32,
    pub rtol: f32,
    pub max_abs: f64,
    /// max over elements of |got - want| / max(|want|, 1e-12)
    pub max_rel: f64,
    pub mean_abs: f64,
    pub cosine: f64,
    /// index of the element that uses most of its tolerance
    pub worst_index: usize,
    pub worst_got: f32,
    pub worst_want: f32,
    /// max over elements of |got - want| / (atol + rtol * |want|): <= 1 passes
    pub tolerance_used: f64,
    /// elements outside the tolerance
    pub failures: usize,
    /// non-finite values in `got` where `want` is finite
    pub non_finite: usize,
}

impl CloseReport {
    pub fn passed(&self) -> bool {
        self.failures == 0 && self.non_finite == 0
    }
}

impl fmt::Display for CloseReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} [{} elems, atol {:.1e}, rtol {:.1e}] max_abs {:.3e}, max_rel {:.3e}, mean_abs {:.3e}, cosine {:.8}, \
             worst [{}] got {:.6e} want {:.6e}, tolerance used {:.1}%, {} outside, {} non-finite",
            self.name,
            if self.passed() { "ok" } else { "FAILED" },
            self.n,
            self.atol,
            self.rtol,
            self.max_abs,
            self.max_rel,
            self.mean_abs,
            self.cosine,
            self.worst_index,
            self.worst_got,
            self.worst_want,
            100.0 * self.tolerance_used,
            self.failures,
            self.non_finite
        )
    }
}

/// Compares without panicking. Panics only if the lengths differ.
pub fn compare(name: &str, got: &[f32], want: &[f32], atol: f32, rtol: f32) -> CloseReport {
    assert_eq!(
        got.len(),
        want.len(),
        "{name}: length mismatch: got {} values, want {}",
        got.len(),
        want.len()
    );
    let (mut max_abs, mut max_rel, mut sum_abs) = (0f64, 0f64, 0f64);
    let (mut dot, mut ng, mut nw) = (0f64, 0f64, 0f64);
    let (mut worst_index, mut used) = (0usize, -1f64);
    let (mut failures, mut non_finite) = (0usize, 0usize);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let (g64, w64) = (g as f64, w as f64);
        if !g.is_finite() || !w.is_finite() {
            if !(g.is_nan() && w.is_nan()) && g != w {
                non_finite += 1;
                if used < f64::INFINITY {
                    used = f64::INFINITY;
                    worst_index = i;
                }
            }
            continue;
        }
        let d = (g64 - w64).abs();
        let tol = atol as f64 + rtol as f64 * w64.abs();
        let u = if tol > 0.0 {
            d / tol
        } else if d == 0.0 {
            0.0
        } else {
            f64::INFINITY
        };
        if u > 1.0 {
            failures += 1;
        }
        if u > used {
            used = u;
            worst_index = i;
        }
        max_abs = max_abs.max(d);
        max_rel = max_rel.max(d / w64.abs().max(1e-12));
        sum_abs += d;
        dot += g64 * w64;
        ng += g64 * g64;
        nw += w64 * w64;
    }
    let cosine = if ng == 0.0 && nw == 0.0 {
        1.0
    } else {
        dot / (ng.sqrt() * nw.sqrt()).max(1e-300)
    };
    CloseReport {
        name: name.to_string(),
        n: got.len(),
        atol,
        rtol,
        max_abs,
        max_rel,
        mean_abs: if got.is_empty() {
            0.0
        } else {
            sum_abs / got.len() as f64
        },
        cosine,
        worst_index,
        worst_got: got.get(worst_index).copied().unwrap_or(0.0),
        worst_want: want.get(worst_index).copied().unwrap_or(0.0),
        tolerance_used: used.max(0.0),
        failures,
        non_finite,
    }
}

/// Asserts |got - want| <= atol + rtol * |want| elementwise. Prints the report on success, panics with it on failure.
pub fn assert_close(name: &str, got: &[f32], want: &[f32], atol: f32, rtol: f32) -> CloseReport {
    let r = compare(name, got, want, atol, rtol);
    if !r.passed() {
        panic!("{r}");
    }
    println!("{r}");
    r
}

/// Tolerance rule for a port running in reduced precision: no worse than twice the reference's own bf16 error
/// (`ref_bf16_err`, e.g. the max abs difference between the reference's bf16 and f32 runs) plus `slack`.
pub fn bf16_atol(ref_bf16_err: f32, slack: f32) -> f32 {
    2.0 * ref_bf16_err + slack
}

/// Max abs difference between two slices (lengths must match).
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Cosine similarity of two equally long slices, in f64.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let (mut dot, mut na, mut nb) = (0f64, 0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        dot += (*x as f64) * (*y as f64);
        na += (*x as f64).powi(2);
        nb += (*y as f64).powi(2);
    }
    dot / (na.sqrt() * nb.sqrt())
}

/// A number from the manifest at a JSON pointer (e.g. "/transformer_bf16_error/output/max_abs").
pub fn manifest_f64(pointer: &str) -> f64 {
    manifest()
        .pointer(pointer)
        .and_then(|v| v.as_f64())
        .unwrap_or_else(|| {
            panic!("manifest has no number at {pointer}; regenerate with: {REGENERATE}")
        })
}

/// The first CUDA device, or `None` after printing `SKIP: <reason>` (no GPU: the test passes
/// without checking anything, visibly). With a device, outputs of `Tensor::empty` start as
/// NaN so a kernel that skips part of its output fails.
pub fn cuda_or_skip() -> Option<contentv::Device> {
    if let Some(r) = contentv::runtime::device::gpu_unavailable_reason() {
        println!("SKIP: {r}");
        return None;
    }
    match contentv::Device::cuda(0) {
        Ok(d) => {
            contentv::runtime::memory::set_poison(true);
            Some(d)
        }
        Err(e) => {
            println!("SKIP: {e}");
            None
        }
    }
}

/// The same values twice, for a GPU-vs-CPU comparison: a host f32 tensor rounded through `dt`,
/// and a `dt` tensor on `dev` (both sides see identical inputs).
pub fn host_and_device(
    v: Vec<f32>,
    s: &[usize],
    dev: &contentv::Device,
    dt: contentv::runtime::DType,
) -> (contentv::runtime::Tensor, contentv::runtime::Tensor) {
    let h = contentv::runtime::Tensor::from_f32(v, s, &contentv::Device::Cpu)
        .unwrap()
        .to_dtype(dt)
        .unwrap();
    let g = h.to_device(dev).unwrap();
    (h.to_dtype(contentv::runtime::DType::F32).unwrap(), g)
}

/// `n` values uniform in [-amp, amp) from a seeded xorshift64 (deterministic test inputs): the
/// tests' one generator (scripts/reference/make_variant_fixtures.py has the same one).
pub fn rand_vec(n: usize, seed: u64, amp: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0) * amp
        })
        .collect()
}

/// Decoded uint8 frames against the reference's: the reference truncates `(x * 255)` to uint8,
/// so values at a level boundary may land one level apart; at most 1% of them may.
#[allow(dead_code)]
pub fn check_frames(what: &str, got: &[u8], want: impl IntoIterator<Item = i64>) {
    let want: Vec<i64> = want.into_iter().collect();
    assert_eq!(got.len(), want.len(), "{what}: frame data size");
    let diffs: Vec<i64> = got
        .iter()
        .zip(&want)
        .map(|(&g, &w)| (g as i64 - w).abs())
        .collect();
    let max = diffs.iter().copied().max().unwrap_or(0);
    let off = diffs.iter().filter(|&&d| d > 0).count();
    println!(
        "{what}: max |diff| {max}, {off} of {} values differ",
        got.len()
    );
    assert!(max <= 1, "{what}: frames differ by up to {max} levels");
    assert!(
        off * 100 <= got.len(),
        "{what}: {off} of {} frame values differ",
        got.len()
    );
}

/// Whether `dev` is the emulated CUDA device (tests/emu/device, the CPU emulation CI runs the
/// GPU tests on): tests shrink their longest shapes there.
pub fn is_emulated(dev: &contentv::Device) -> bool {
    dev.gpu().is_some_and(|g| g.name.contains("emulation"))
}

/// A sequence length `n` as given on a GPU; on the emulated device, lengths above 200 are
/// divided by 8 (and kept odd, so they still straddle tiles).
pub fn emu_len(dev: &contentv::Device, n: usize) -> usize {
    if is_emulated(dev) && n > 200 {
        (n / 8) | 1
    } else {
        n
    }
}

/// tests/fixtures/pipeline_variants/<name>: a variant's transformer, VAE and scheduler.
pub fn variant_dir(name: &str) -> PathBuf {
    repo_root()
        .join("tests/fixtures/pipeline_variants")
        .join(name)
}

/// A model folder (tests/fixtures/pipeline_variants/<name>, under `test` in the target's
/// scratch folder): the tiny model's tokenizers and text encoders (symlinked) plus the variant's
/// transformer, VAE and scheduler.
pub fn assemble_variant(name: &str, test: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("pipeline-variants")
        .join(test)
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let link = |src: &Path, dst: &str| {
        std::os::unix::fs::symlink(src, dir.join(dst)).unwrap();
    };
    for sub in [
        "tokenizer",
        "tokenizer_2",
        "tokenizer_3",
        "text_encoder",
        "text_encoder_2",
        "text_encoder_3",
        "model_index.json",
    ] {
        link(&tiny_model_dir().join(sub), sub);
    }
    for sub in ["transformer", "vae", "scheduler"] {
        link(&variant_dir(name).join(sub), sub);
    }
    dir
}
