//! The layers of src/ depend one way: cli -> model -> ops -> runtime -> io -> error
//! (docs/design.md, "Layers"). This test reads every source file and fails on a reference from
//! a layer to one above it (`crate::model` inside src/ops, `crate::ops` inside src/runtime, ...),
//! comments excepted. It is how "no dependency cycle" stays true.
use std::path::Path;

mod common;
use common::source::rust_files;

/// Lowest first: a layer may use the ones before it.
const LAYERS: [&str; 6] = ["error", "io", "runtime", "ops", "model", "cli"];

fn layer_of(rel: &Path) -> Option<usize> {
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    LAYERS.iter().position(|l| *l == name)
}

/// `(line number, referenced layer)` for every `crate::<layer>` / `$crate::<layer>` outside
/// comments.
fn references(text: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let code = match line.find("//") {
            Some(c) => &line[..c],
            None => line,
        };
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            let after = &rest[at + "crate::".len()..];
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if let Some(l) = LAYERS.iter().position(|l| *l == name) {
                out.push((i + 1, l));
            }
            rest = after;
        }
    }
    out
}

#[test]
fn layers_depend_one_way() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let files = rust_files(&src);
    let mut bad = Vec::new();
    let mut checked = 0;
    for f in &files {
        let rel = f.strip_prefix(&src).unwrap();
        let Some(own) = layer_of(rel) else { continue };
        checked += 1;
        let text = std::fs::read_to_string(f).unwrap();
        for (line, used) in references(&text) {
            if used > own {
                bad.push(format!(
                    "src/{}:{line}: {} uses {} (layers: {})",
                    rel.display(),
                    LAYERS[own],
                    LAYERS[used],
                    LAYERS.join(" <- ")
                ));
            }
        }
    }
    assert!(
        checked > 30,
        "only {checked} files found under {}",
        src.display()
    );
    assert!(bad.is_empty(), "upward dependencies:\n{}", bad.join("\n"));
}

#[test]
fn the_scanner_sees_upward_references() {
    // A reference in code counts; one in a comment does not.
    let text =
        "use crate::model::vae;\n// see crate::cli::run\nlet x = $crate::ops::gemm::Act::Silu;";
    assert_eq!(references(text), vec![(1, 4), (3, 3)]);
    assert_eq!(layer_of(Path::new("runtime/tensor.rs")), Some(2));
    assert_eq!(layer_of(Path::new("error.rs")), Some(0));
    assert_eq!(layer_of(Path::new("lib.rs")), None);
}
