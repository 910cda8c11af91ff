//! The typed launchers of src/runtime/kernels.rs against the CUDA source: every
//! `extern "C" __global__` kernel of kernels/*.cu (macros expanded the way the preprocessor
//! does for the ones the files use: object-like, function-like, `##` pasting) must have exactly
//! one declaration, every declared kernel must exist in its module, and each declaration's
//! parameters must match the kernel's one for one: the same count, the same kind (`const T*`,
//! `T*`, `int`, `unsigned`, `long long`, `float`; anything else passed by value, e.g. a
//! CUtensorMap, is an error until the launcher supports it) and, for a field that is one
//! parameter, the same name (case and `_` aside), so two swapped parameters of one kind fail
//! too. The embedded images are checked as well: their modules are the .cu files, and a PTX
//! image's entry points are exactly the source's kernels with parameters of the declared widths.
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use contentv::runtime::device::kernel_images;
use contentv::runtime::kernels::{ParamDesc, ParamKind, DECLS};

// ----- a small C preprocessor: comments, continuations, #define, expansion -------------------

fn strip_comments(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'"' {
            let start = i;
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i = (i + 1).min(b.len());
            out.push_str(&src[start..i]);
        } else if src[i..].starts_with("//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if src[i..].starts_with("/*") {
            let end = src[i + 2..].find("*/").map_or(b.len(), |e| i + 2 + e + 2);
            // keep line structure for the directives
            out.extend(src[i..end].chars().filter(|&c| c == '\n'));
            i = end;
        } else {
            let c = src[i..].chars().next().unwrap();
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Ident(String),
    Space,
    Other(String),
}

impl Tok {
    fn text(&self) -> &str {
        match self {
            Tok::Ident(s) | Tok::Other(s) => s,
            Tok::Space => " ",
        }
    }
}

fn tokenize(s: &str) -> Vec<Tok> {
    let cs: Vec<char> = s.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < cs.len() {
        let c = cs[i];
        if c.is_whitespace() {
            while i < cs.len() && cs[i].is_whitespace() {
                i += 1;
            }
            out.push(Tok::Space);
        } else if c.is_ascii_alphabetic() || c == '_' {
            let st = i;
            while i < cs.len() && (cs[i].is_ascii_alphanumeric() || cs[i] == '_') {
                i += 1;
            }
            out.push(Tok::Ident(cs[st..i].iter().collect()));
        } else if c.is_ascii_digit() {
            let st = i;
            while i < cs.len() && (cs[i].is_ascii_alphanumeric() || cs[i] == '.') {
                i += 1;
            }
            out.push(Tok::Other(cs[st..i].iter().collect()));
        } else if c == '"' {
            let st = i;
            i += 1;
            while i < cs.len() && cs[i] != '"' {
                i += if cs[i] == '\\' { 2 } else { 1 };
            }
            i = (i + 1).min(cs.len());
            out.push(Tok::Other(cs[st..i].iter().collect()));
        } else if c == '#' && cs.get(i + 1) == Some(&'#') {
            out.push(Tok::Other("##".into()));
            i += 2;
        } else if c == ':' && cs.get(i + 1) == Some(&':') {
            out.push(Tok::Other("::".into()));
            i += 2;
        } else {
            out.push(Tok::Other(c.to_string()));
            i += 1;
        }
    }
    out
}

struct Macro {
    params: Option<Vec<String>>,
    body: Vec<Tok>,
}

/// The source without directives, and the macros it defines (line continuations joined).
fn directives(src: &str) -> (String, BTreeMap<String, Macro>) {
    let joined = strip_comments(src)
        .replace("\\\r\n", " ")
        .replace("\\\n", " ");
    let mut macros = BTreeMap::new();
    let mut text = String::new();
    for line in joined.lines() {
        let t = line.trim_start();
        let Some(d) = t.strip_prefix('#') else {
            text.push_str(line);
            text.push('\n');
            continue;
        };
        text.push('\n');
        let d = d.trim_start();
        let Some(def) = d.strip_prefix("define") else {
            continue; // #include, #pragma, #if...: no kernel signature depends on them
        };
        let def = def.trim_start();
        let name_end = def
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(def.len());
        let name = def[..name_end].to_string();
        let rest = &def[name_end..];
        let (params, body) = if let Some(r) = rest.strip_prefix('(') {
            let close = r.find(')').expect("unclosed macro parameter list");
            let ps = r[..close]
                .split(',')
                .map(|p| p.trim().to_string())
                .filter(|p| !p.is_empty())
                .collect();
            (Some(ps), &r[close + 1..])
        } else {
            (None, rest)
        };
        macros.insert(
            name,
            Macro {
                params,
                body: tokenize(body.trim()),
            },
        );
    }
    (text, macros)
}

fn skip_space(t: &[Tok], mut i: usize) -> usize {
    while i < t.len() && t[i] == Tok::Space {
        i += 1;
    }
    i
}

/// The index after the parenthesised group opening at `t[i]`, and its top-level
/// comma-separated parts.
fn group(t: &[Tok], i: usize) -> (usize, Vec<Vec<Tok>>) {
    assert_eq!(t[i].text(), "(");
    let (mut depth, mut j) = (0usize, i);
    let mut parts = vec![Vec::new()];
    loop {
        let s = t[j].text();
        match s {
            "(" => {
                depth += 1;
                if depth > 1 {
                    parts.last_mut().unwrap().push(t[j].clone());
                }
            }
            ")" => {
                depth -= 1;
                if depth == 0 {
                    return (j + 1, parts);
                }
                parts.last_mut().unwrap().push(t[j].clone());
            }
            "," if depth == 1 => parts.push(Vec::new()),
            _ => parts.last_mut().unwrap().push(t[j].clone()),
        }
        j += 1;
    }
}

fn trim(mut v: Vec<Tok>) -> Vec<Tok> {
    while v.first() == Some(&Tok::Space) {
        v.remove(0);
    }
    while v.last() == Some(&Tok::Space) {
        v.pop();
    }
    v
}

/// `a ## b` -> `ab`.
fn paste(t: Vec<Tok>) -> Vec<Tok> {
    let mut out: Vec<Tok> = Vec::new();
    let mut i = 0;
    while i < t.len() {
        if t[i].text() == "##" {
            while out.last() == Some(&Tok::Space) {
                out.pop();
            }
            let j = skip_space(&t, i + 1);
            let left = out.pop().map(|x| x.text().to_string()).unwrap_or_default();
            let joined = format!("{left}{}", t[j].text());
            out.extend(tokenize(&joined));
            i = j + 1;
        } else {
            out.push(t[i].clone());
            i += 1;
        }
    }
    out
}

fn expand(t: &[Tok], macros: &BTreeMap<String, Macro>, disabled: &[String]) -> Vec<Tok> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < t.len() {
        let Tok::Ident(name) = &t[i] else {
            out.push(t[i].clone());
            i += 1;
            continue;
        };
        let Some(m) = macros.get(name).filter(|_| !disabled.contains(name)) else {
            out.push(t[i].clone());
            i += 1;
            continue;
        };
        let mut off = disabled.to_vec();
        off.push(name.clone());
        match &m.params {
            None => {
                out.extend(expand(&m.body, macros, &off));
                i += 1;
            }
            Some(ps) => {
                let j = skip_space(t, i + 1);
                if j >= t.len() || t[j].text() != "(" {
                    out.push(t[i].clone());
                    i += 1;
                    continue;
                }
                let (end, args) = group(t, j);
                let args: Vec<Vec<Tok>> = args.into_iter().map(trim).collect();
                let args = if ps.is_empty() { Vec::new() } else { args };
                assert_eq!(args.len(), ps.len(), "macro {name}: argument count");
                let mut body = Vec::new();
                for tok in &m.body {
                    match tok {
                        Tok::Ident(s) if ps.contains(s) => {
                            body.extend(args[ps.iter().position(|p| p == s).unwrap()].clone())
                        }
                        _ => body.push(tok.clone()),
                    }
                }
                out.extend(expand(&paste(body), macros, &off));
                i = end;
            }
        }
    }
    out
}

// ----- the kernels of one .cu file ------------------------------------------------------------

#[derive(Debug)]
struct CParam {
    text: String,
    name: String,
    kind: Result<ParamKind, String>,
}

fn classify(p: &[Tok]) -> CParam {
    let words: Vec<&str> = p
        .iter()
        .filter(|t| **t != Tok::Space)
        .map(|t| t.text())
        .collect();
    let text = words.join(" ");
    let name = words.last().copied().unwrap_or("").to_string();
    let kind = if let Some(star) = words.iter().position(|w| *w == "*") {
        if words[..star].contains(&"const") {
            Ok(ParamKind::ConstPtr)
        } else {
            Ok(ParamKind::MutPtr)
        }
    } else {
        let ty: Vec<&str> = words[..words.len().saturating_sub(1)]
            .iter()
            .copied()
            .filter(|w| *w != "const" && *w != "__restrict__")
            .collect();
        match ty.join(" ").as_str() {
            "int" | "int32_t" | "signed" | "signed int" => Ok(ParamKind::I32),
            "unsigned" | "unsigned int" | "uint32_t" => Ok(ParamKind::U32),
            "long long" | "long long int" | "int64_t" => Ok(ParamKind::I64),
            "float" => Ok(ParamKind::F32),
            // A CUtensorMap by value: only as a __grid_constant__ parameter (TMA reads it
            // through its generic address, kernels/hopper.cuh).
            "__grid_constant__ TmaDesc" => Ok(ParamKind::TmaDesc),
            other => Err(format!(
                "parameter `{text}` is passed by value as `{other}`, which the typed launchers \
                 do not support (add a KernelArg type for it)"
            )),
        }
    };
    CParam { text, name, kind }
}

/// `(kernel, parameters)` of every `extern "C" __global__` function; panics on a `__global__`
/// function without C linkage (it could not be looked up by name).
fn kernels_of(src: &str, file: &str) -> Vec<(String, Vec<CParam>)> {
    let (text, macros) = directives(src);
    let t = expand(&tokenize(&text), &macros, &[]);
    let toks: Vec<&Tok> = t.iter().filter(|x| **x != Tok::Space).collect();
    let mut out = Vec::new();
    for (i, tok) in toks.iter().enumerate() {
        if tok.text() != "__global__" {
            continue;
        }
        assert!(
            i >= 2 && toks[i - 2].text() == "extern" && toks[i - 1].text() == "\"C\"",
            "{file}: a __global__ function without extern \"C\" (token {i})"
        );
        // __global__ void [__launch_bounds__(...)] name(params)
        let mut j = i + 1;
        assert_eq!(toks[j].text(), "void", "{file}: kernel not returning void");
        j += 1;
        if toks[j].text() == "__launch_bounds__" {
            let mut depth = 0;
            loop {
                j += 1;
                match toks[j].text() {
                    "(" => depth += 1,
                    ")" => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    _ => {}
                }
            }
            j += 1;
        }
        let name = toks[j].text().to_string();
        let rest: Vec<Tok> = toks[j + 1..].iter().map(|t| (*t).clone()).collect();
        let (_, params) = group(&rest, 0);
        let params = params
            .into_iter()
            .filter(|p| p.iter().any(|t| *t != Tok::Space))
            .map(|p| classify(&p))
            .collect();
        out.push((name, params));
    }
    out
}

fn cu_files() -> Vec<(String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels");
    let mut out: Vec<(String, String)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "cu"))
        .map(|p| {
            let mut seen = Vec::new();
            (
                p.file_stem().unwrap().to_str().unwrap().to_string(),
                with_headers(&dir, &std::fs::read_to_string(&p).unwrap(), &mut seen),
            )
        })
        .collect();
    out.sort();
    out
}

/// `src` with the project headers it includes (`#include "x.cuh"` of kernels/, transitively,
/// each once) put in front of it: kernel parameter lists may use their macros (`OUT_ARGS` of
/// kernels/attn_out.cuh).
fn with_headers(dir: &Path, src: &str, seen: &mut Vec<String>) -> String {
    let mut front = String::new();
    for line in src.lines() {
        let Some(rest) = line.trim_start().strip_prefix("#include") else {
            continue;
        };
        let name = rest.trim().trim_matches('"');
        let path = dir.join(name);
        if rest.trim().starts_with('"') && path.is_file() && !seen.iter().any(|s| s == name) {
            seen.push(name.to_string());
            let h = std::fs::read_to_string(&path).unwrap();
            front.push_str(&with_headers(dir, &h, seen));
            front.push('\n');
        }
    }
    front + src
}

fn norm(s: &str) -> String {
    s.chars()
        .filter(|c| *c != '_')
        .flat_map(|c| c.to_lowercase())
        .collect()
}

/// Every difference between the declarations and the source kernels.
fn mismatches(
    decls: &[(&str, &str, &[&str], Vec<ParamDesc>)],
    source: &BTreeMap<(String, String), Vec<CParam>>,
) -> Vec<String> {
    let mut bad = Vec::new();
    let mut declared: BTreeMap<(String, String), Vec<&str>> = BTreeMap::new();
    for (rust, module, names, params) in decls {
        for name in names.iter() {
            declared
                .entry((module.to_string(), name.to_string()))
                .or_default()
                .push(rust);
            let Some(c) = source.get(&(module.to_string(), name.to_string())) else {
                bad.push(format!(
                    "{rust}: kernel {name} is not in kernels/{module}.cu"
                ));
                continue;
            };
            if c.len() != params.len() {
                bad.push(format!(
                    "{rust} ({name}): {} parameters declared, the kernel has {}",
                    params.len(),
                    c.len()
                ));
            }
            for (k, (r, c)) in params.iter().zip(c).enumerate() {
                match &c.kind {
                    Err(e) => bad.push(format!("{name}: {e}")),
                    Ok(kind) if *kind != r.kind => bad.push(format!(
                        "{rust} ({name}) parameter {k}: field `{}` is {:?}, the kernel's `{}` is {kind:?}",
                        r.field, r.kind, c.text
                    )),
                    Ok(_) => {}
                }
                if r.whole && norm(r.field) != norm(&c.name) {
                    bad.push(format!(
                        "{rust} ({name}) parameter {k}: field `{}`, the kernel's is `{}`",
                        r.field, c.text
                    ));
                }
            }
        }
    }
    for (key, c) in source {
        match declared.get(key).map_or(0, |v| v.len()) {
            1 => {}
            0 => bad.push(format!(
                "kernel {} of kernels/{}.cu ({} parameters) has no declaration in src/runtime/kernels.rs",
                key.1,
                key.0,
                c.len()
            )),
            n => bad.push(format!(
                "kernel {} of kernels/{}.cu is declared {n} times: {:?}",
                key.1, key.0, declared[key]
            )),
        }
    }
    bad
}

fn source_kernels() -> BTreeMap<(String, String), Vec<CParam>> {
    let mut source = BTreeMap::new();
    for (module, src) in cu_files() {
        for (name, params) in kernels_of(&src, &module) {
            let dup = source.insert((module.clone(), name.clone()), params);
            assert!(dup.is_none(), "kernels/{module}.cu defines {name} twice");
        }
    }
    source
}

fn rust_decls() -> Vec<(
    &'static str,
    &'static str,
    &'static [&'static str],
    Vec<ParamDesc>,
)> {
    DECLS
        .iter()
        .map(|d| (d.rust, d.module, d.names, (d.params)()))
        .collect()
}

#[test]
fn every_kernel_has_exactly_one_matching_declaration() {
    let source = source_kernels();
    // The parser found what the files hold (a parser that finds nothing checks nothing).
    assert!(source.len() >= 50, "only {} kernels parsed", source.len());
    for key in [
        ("ops", "copy_nd"),
        ("attention", "attn_naive_f16"),
        ("gemm_int8", "w8a16_mma_group_bf16"),
    ] {
        assert!(
            source.contains_key(&(key.0.to_string(), key.1.to_string())),
            "{key:?}"
        );
    }
    assert_eq!(source[&("ops".into(), "copy_nd".into())].len(), 6 + 5 * 8);
    // 3 segment lists, the outputs (OUT_ARGS of kernels/attn_out.cuh, a header), 6 scalars.
    assert_eq!(
        source[&("attention".into(), "flash_attn_fwd_d64".into())].len(),
        3 * 16 + 12 + 6
    );
    let bad = mismatches(&rust_decls(), &source);
    assert!(
        bad.is_empty(),
        "src/runtime/kernels.rs and kernels/*.cu disagree:\n  {}",
        bad.join("\n  ")
    );
    println!(
        "{} kernels in {} modules, {} declarations: all match",
        source.len(),
        cu_files().len(),
        DECLS.len()
    );
}

/// The check itself catches what it is for: a swap of two parameters of different kinds, of
/// two of the same kind, a missing parameter, a kernel declared twice, a kernel undeclared.
#[test]
fn the_check_fails_on_swapped_missing_or_duplicate_parameters() {
    let source = source_kernels();
    let base = rust_decls();
    let find = |name: &str| base.iter().position(|d| d.0 == name).unwrap();
    let mut variants: Vec<(&str, Vec<_>)> = Vec::new();
    // Activation: (x, y, n, code) -> (x, y, code, n): i64 / i32 swapped.
    let mut d = base.clone();
    d[find("Activation")].3.swap(2, 3);
    variants.push(("kinds swapped", d));
    // CastAny: (x, y, ...) -> (y, x, ...): const / mutable pointer swapped.
    let mut d = base.clone();
    d[find("CastAny")].3.swap(0, 1);
    variants.push(("pointers swapped", d));
    // SoftmaxLast: rows and cols, both int.
    let mut d = base.clone();
    d[find("SoftmaxLast")].3.swap(2, 3);
    variants.push(("same-kind swap", d));
    let mut d = base.clone();
    d[find("W8a16")].3.pop();
    variants.push(("missing parameter", d));
    let mut d = base.clone();
    d.push(d[find("Mul")].clone());
    variants.push(("declared twice", d));
    let mut d = base.clone();
    d.remove(find("VaeSoftmaxDim0"));
    variants.push(("undeclared", d));
    for (what, d) in variants {
        let bad = mismatches(&d, &source);
        assert!(!bad.is_empty(), "{what}: not detected");
        println!("{what}: {}", bad[0]);
    }
}

#[test]
fn the_embedded_images_hold_exactly_the_source_kernels() {
    let images = kernel_images();
    let stems: BTreeSet<String> = cu_files().into_iter().map(|f| f.0).collect();
    let modules: BTreeSet<String> = images.iter().map(|m| m.0.to_string()).collect();
    assert_eq!(modules, stems, "embedded modules vs kernels/*.cu");
    let source = source_kernels();
    let decls = rust_decls();
    let mut ptx_checked = 0;
    for (module, imgs) in images {
        for (target, bytes) in imgs.iter() {
            if !target.starts_with("compute_") {
                continue;
            }
            let ptx = String::from_utf8_lossy(bytes);
            let entries = ptx_entries(&ptx);
            let want: BTreeSet<&str> = source
                .keys()
                .filter(|k| k.0 == *module)
                .map(|k| k.1.as_str())
                .collect();
            let got: BTreeSet<&str> = entries.keys().map(|s| s.as_str()).collect();
            assert_eq!(
                got, want,
                "{module} {target}: PTX entries vs source kernels"
            );
            for (rust, m, names, params) in &decls {
                if m != module {
                    continue;
                }
                for n in names.iter() {
                    let widths: Vec<&str> = params
                        .iter()
                        .map(|p| match p.kind {
                            ParamKind::ConstPtr | ParamKind::MutPtr | ParamKind::I64 => "64",
                            ParamKind::I32 | ParamKind::U32 => "32",
                            ParamKind::F32 => "f32",
                            ParamKind::TmaDesc => "map128",
                        })
                        .collect();
                    assert_eq!(entries[*n], widths, "{rust} ({n}): PTX parameter widths");
                }
            }
            ptx_checked += 1;
        }
    }
    if ptx_checked == 0 {
        println!(
            "SKIP: no PTX image embedded (built without NVRTC or without a compute_* target); \
             only the module list was checked"
        );
    }
}

/// Entry name -> parameter widths ("64", "32", "f32") of a PTX module.
fn ptx_entries(ptx: &str) -> BTreeMap<String, Vec<&'static str>> {
    let mut out = BTreeMap::new();
    let mut rest = ptx;
    while let Some(at) = rest.find(".entry ") {
        let after = &rest[at + ".entry ".len()..];
        let open = after.find('(').unwrap();
        let close = after.find(')').unwrap();
        let name = after[..open].trim().to_string();
        let widths = after[open + 1..close]
            .split(',')
            .filter(|p| p.contains(".param"))
            .map(|p| {
                let ty = p
                    .split_whitespace()
                    .skip_while(|w| *w != ".param")
                    .nth(1)
                    .unwrap_or("");
                match ty {
                    ".u64" | ".s64" | ".b64" => "64",
                    ".u32" | ".s32" | ".b32" => "32",
                    ".f32" => "f32",
                    ".align" if p.contains(".b8") && p.trim_end().ends_with("[128]") => "map128",
                    other => panic!("{name}: PTX parameter type {other} ({p})"),
                }
            })
            .collect();
        out.insert(name, widths);
        rest = &after[close..];
    }
    out
}
