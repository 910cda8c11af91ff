//! The model specification in the repository stays the one the code cites: every citation of
//! the spec in src/, kernels/, tests/ and docs/ names docs/spec.md and a section it has
//! ("docs/spec.md §5.3"), no comment cites a spec by a section number alone ("spec section 6",
//! "spec §3": a document that is not in the repository), and every file docs/spec.md points to
//! exists. Reads files only; runs in well under a second.
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use fancy_regex::Regex;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The section numbers of a spec document: "5" for "## 5. ...", "5.3" for "### 5.3 ...".
fn sections(spec: &str) -> BTreeSet<String> {
    let head = Regex::new(r"^#{2,3} ([0-9]+(?:\.[0-9]+)?)\.? ").unwrap();
    spec.lines()
        .filter_map(|l| head.captures(l).ok().flatten())
        .map(|c| c[1].to_string())
        .collect()
}

/// The problems of one line: a citation of an unknown section, or a citation without the path.
fn line_problems(line: &str, known: &BTreeSet<String>) -> Vec<String> {
    static RE: OnceLock<(Regex, Regex)> = OnceLock::new();
    let (cite, bare) = RE.get_or_init(|| {
        (
            Regex::new(r"docs/spec\.md §([0-9]+(?:\.[0-9]+)?)").unwrap(),
            // "spec section 6", "spec §3", "spec 8.11", "specification §2" not preceded by docs/
            Regex::new(
                r"(?i)(?<!docs/)\bspec(?:ification)?(?:\.md)?,? (?:§|sections? [0-9]|[0-9])",
            )
            .unwrap(),
        )
    });
    let mut out = Vec::new();
    if !line.to_lowercase().contains("spec") {
        return out;
    }
    for c in cite.captures_iter(line).flatten() {
        let sec = c[1].trim_end_matches('.');
        if !known.contains(sec) {
            out.push(format!(
                "cites docs/spec.md §{sec}, which docs/spec.md does not have"
            ));
        }
    }
    if bare.is_match(line).unwrap() {
        out.push("cites a spec section without naming docs/spec.md".to_string());
    }
    out
}

fn walk(dir: &Path, exts: &[&str], out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, exts, out);
        } else if p
            .extension()
            .and_then(|x| x.to_str())
            .is_some_and(|x| exts.contains(&x))
        {
            out.push(p);
        }
    }
}

fn spec_text() -> String {
    let p = root().join("docs/spec.md");
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()))
}

#[test]
fn every_spec_citation_names_a_section_of_docs_spec_md() {
    let known = sections(&spec_text());
    for s in ["1", "2", "3", "4", "5", "5.1", "5.6", "6", "6.3", "8"] {
        assert!(
            known.contains(s),
            "docs/spec.md lacks section {s}: {known:?}"
        );
    }
    let mut files = Vec::new();
    for (dir, exts) in [
        ("src", &["rs"][..]),
        ("kernels", &["cu", "cuh"]),
        ("tests", &["rs"]),
        ("benches", &["rs"]),
        ("docs", &["md"]),
    ] {
        walk(&root().join(dir), exts, &mut files);
    }
    let me = root().join("tests/spec_citations.rs");
    let mut problems = Vec::new();
    let mut cited = 0;
    for f in files.iter().filter(|f| **f != me) {
        let text = std::fs::read_to_string(f).unwrap();
        for (i, line) in text.lines().enumerate() {
            cited += line.matches("docs/spec.md §").count();
            for p in line_problems(line, &known) {
                let rel = f.strip_prefix(root()).unwrap();
                problems.push(format!("{}:{}: {p}: {}", rel.display(), i + 1, line.trim()));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "{} citation problem(s):\n{}",
        problems.len(),
        problems.join("\n")
    );
    // The code does cite it (the check above would pass vacuously on a tree without citations).
    assert!(cited >= 8, "only {cited} citations of docs/spec.md found");
    println!("{cited} citations of docs/spec.md, all naming one of its sections");
}

/// The checker itself: it flags an unknown section and a bare citation, and passes good ones.
#[test]
fn the_citation_check_catches_bad_citations() {
    let known = sections("## 5. The transformer\n### 5.3 Patches\n## 8. Pitfalls\n");
    assert_eq!(known, ["5", "5.3", "8"].map(String::from).into());
    assert!(line_problems("//! the MMDiT (docs/spec.md §5.3).", &known).is_empty());
    assert!(line_problems("// docs/spec.md §8, pitfall 11", &known).is_empty());
    assert!(line_problems("// see the docs/spec.md §5.", &known).is_empty());
    assert_eq!(line_problems("// docs/spec.md §5.4", &known).len(), 1);
    assert_eq!(line_problems("// docs/spec.md §9", &known).len(), 1);
    for bare in [
        "//! Wan2.1 VAE decoder, spec section 6.",
        "//! The pipeline (spec section 2): encode",
        "/// keys ContentV's class reads, spec §5.1: in_channels",
        "// Cross-component checks (spec 8.11): CLIP",
    ] {
        assert_eq!(line_problems(bare, &known).len(), 1, "{bare}");
    }
    assert!(line_problems("// the spec says nothing about this", &known).is_empty());
}

/// Every repository path docs/spec.md names ("src/model/mmdit.rs", "assets/tiny-model") exists.
#[test]
fn files_named_by_docs_spec_md_exist() {
    let path =
        Regex::new(r"\b(?:src|kernels|tests|assets|scripts|docs)/[A-Za-z0-9_./-]*[A-Za-z0-9_]")
            .unwrap();
    let text = spec_text();
    let mut named = 0;
    let mut missing = Vec::new();
    for m in path.find_iter(&text).flatten() {
        named += 1;
        if !root().join(m.as_str()).exists() {
            missing.push(m.as_str().to_string());
        }
    }
    assert!(
        missing.is_empty(),
        "docs/spec.md names missing paths: {missing:?}"
    );
    assert!(named >= 10, "docs/spec.md names only {named} paths");
}
