//! Scratch folders and files for tests that write: one fresh folder per test under the target
//! directory, copies of the tiny model that cost nothing, and small latents files.
use std::path::{Path, PathBuf};

/// A fresh scratch folder `target/tmp/cli-tests/<name>` (removed and recreated: each test
/// starts empty). `name` must be unique across the test binaries that run in parallel.
pub fn scratch(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("cli-tests")
        .join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Entries of `dir` (hidden ones included), sorted; empty if it does not exist.
pub fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// A copy of the tiny model made of hard links (cheap); replace a file with `replace` only
/// (never write through a link: that would change the original).
pub fn linked_tiny(dst: &Path) {
    fn walk(src: &Path, dst: &Path) {
        std::fs::create_dir_all(dst).unwrap();
        for e in std::fs::read_dir(src).unwrap().flatten() {
            let to = dst.join(e.file_name());
            if e.path().is_dir() {
                walk(&e.path(), &to);
            } else if std::fs::hard_link(e.path(), &to).is_err() {
                std::fs::copy(e.path(), &to).unwrap();
            }
        }
    }
    walk(&super::tiny_model_dir(), dst);
}

/// Replaces the file `p` (a hard link of `linked_tiny`) by a new file holding `bytes`.
pub fn replace(p: &Path, bytes: &[u8]) {
    std::fs::remove_file(p).unwrap();
    std::fs::write(p, bytes).unwrap();
}

/// A safetensors file with one f32 tensor `latents` of `shape`, every value `fill`.
pub fn write_latents(p: &Path, shape: &[usize], fill: f32) {
    let n: usize = shape.iter().product();
    let data: Vec<u8> = (0..n).flat_map(|_| fill.to_le_bytes()).collect();
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.to_vec(), &data)
        .unwrap();
    std::fs::write(
        p,
        safetensors::serialize([("latents", view)], None).unwrap(),
    )
    .unwrap();
}
