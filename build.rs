//! Compiles every `kernels/*.cu` with NVRTC into one image per target (SASS cubins for sm_80,
//! sm_86, sm_89, sm_90, sm_100 and sm_120 and compute_120 PTX for newer GPUs; files that use wgmma/setmaxnreg
//! are built for sm_90a only) and embeds them through `$OUT_DIR/kernels.rs`. The runtime
//! picks the image for the device's arch (src/runtime/device.rs).
//!
//! Why NVRTC 12.9 and not nvcc 13: kernels built by a CUDA 13 toolkit need an R580 driver, while
//! most hosts run R535-R570 (CUDA 12.2-12.8). SASS built by CUDA 12.x runs on every driver from
//! CUDA 12.0 on (minor-version compatibility), and the pip registry has no CUDA 12 nvcc driver
//! program, only NVRTC. NVRTC is a library: it is loaded here at build time with libloading.
//!
//! NVRTC is looked up in this order: `$CONTENTV_NVRTC` (the library file), the project's pinned
//! pip toolchain in `.toolchain/cuda12` (scripts/install-cuda-toolchain.sh), `$CUDA_HOME`,
//! `$CUDA_PATH`, `/usr/local/cuda`. The CUDA headers (cuda_bf16.h, cuda_fp16.h) come from
//! `$CONTENTV_CUDA_INCLUDE` or next to the library. Without NVRTC the build succeeds with a
//! warning and `cfg(no_kernels)`; using the GPU then fails with an error that says how to get it.
//!
//! `CONTENTV_ARCHS=sm_90,compute_120` narrows the targets (quick local builds, the GPU bundle).
//! Each image's `ptxas -v` report is embedded too (the static kernel gate, tests/kernel_gate.rs,
//! reads it). Images are cached in `$OUT_DIR` by a hash of their sources and options.
//!
//! kernels/tiles.h (the launch geometry the kernels use) becomes `$OUT_DIR/tiles.rs`, the
//! constants of `runtime::kernels::tiles` that the launchers use: one place for those numbers,
//! with or without NVRTC.
use std::collections::hash_map::DefaultHasher;
use std::ffi::{c_char, c_int, CString};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// SASS targets of every file, then the PTX target (JIT on GPUs newer than the SASS list).
const SASS: &[&str] = &["sm_80", "sm_86", "sm_89", "sm_90", "sm_100", "sm_120"];
const PTX: &str = "compute_120";
/// Compiler options of every image (the arch is added per image).
const OPTIONS: &[&str] = &["-std=c++17", "-lineinfo", "--ptxas-options=-v"];

type NvrtcProgram = *mut std::ffi::c_void;

/// The NVRTC entry points the build uses (nvrtc.h, stable since CUDA 11.1).
struct Nvrtc {
    _lib: libloading::Library,
    version: unsafe extern "C" fn(*mut c_int, *mut c_int) -> c_int,
    create: unsafe extern "C" fn(
        *mut NvrtcProgram,
        *const c_char,
        *const c_char,
        c_int,
        *const *const c_char,
        *const *const c_char,
    ) -> c_int,
    compile: unsafe extern "C" fn(NvrtcProgram, c_int, *const *const c_char) -> c_int,
    log_size: unsafe extern "C" fn(NvrtcProgram, *mut usize) -> c_int,
    log: unsafe extern "C" fn(NvrtcProgram, *mut c_char) -> c_int,
    cubin_size: unsafe extern "C" fn(NvrtcProgram, *mut usize) -> c_int,
    cubin: unsafe extern "C" fn(NvrtcProgram, *mut c_char) -> c_int,
    ptx_size: unsafe extern "C" fn(NvrtcProgram, *mut usize) -> c_int,
    ptx: unsafe extern "C" fn(NvrtcProgram, *mut c_char) -> c_int,
    destroy: unsafe extern "C" fn(*mut NvrtcProgram) -> c_int,
}

impl Nvrtc {
    fn load(path: &Path) -> Result<Nvrtc, String> {
        // SAFETY: loading NVRTC runs its initialisers only; every symbol below is declared with
        // the signature of nvrtc.h.
        unsafe {
            let lib = libloading::Library::new(path).map_err(|e| e.to_string())?;
            macro_rules! sym {
                ($n:literal) => {
                    *lib.get(concat!($n, "\0").as_bytes())
                        .map_err(|e| format!("{}: {e}", $n))?
                };
            }
            Ok(Nvrtc {
                version: sym!("nvrtcVersion"),
                create: sym!("nvrtcCreateProgram"),
                compile: sym!("nvrtcCompileProgram"),
                log_size: sym!("nvrtcGetProgramLogSize"),
                log: sym!("nvrtcGetProgramLog"),
                cubin_size: sym!("nvrtcGetCUBINSize"),
                cubin: sym!("nvrtcGetCUBIN"),
                ptx_size: sym!("nvrtcGetPTXSize"),
                ptx: sym!("nvrtcGetPTX"),
                destroy: sym!("nvrtcDestroyProgram"),
                _lib: lib,
            })
        }
    }

    fn version_of(&self) -> (i32, i32) {
        let (mut a, mut b) = (0, 0);
        // SAFETY: two out-pointers to live integers.
        unsafe { (self.version)(&mut a, &mut b) };
        (a, b)
    }

    /// Compiles `src` for `arch`; returns (image, log) or the log of the failure.
    fn compile(
        &self,
        src: &str,
        name: &str,
        arch: &str,
        includes: &[PathBuf],
    ) -> Result<(Vec<u8>, String), String> {
        let csrc = CString::new(src).map_err(|_| format!("{name}: NUL byte in the source"))?;
        let cname = CString::new(name).unwrap();
        let mut opts: Vec<CString> =
            vec![CString::new(format!("--gpu-architecture={arch}")).unwrap()];
        opts.extend(OPTIONS.iter().map(|o| CString::new(*o).unwrap()));
        for i in includes {
            opts.push(CString::new(format!("-I{}", i.display())).unwrap());
        }
        let optp: Vec<*const c_char> = opts.iter().map(|o| o.as_ptr()).collect();
        let mut prog: NvrtcProgram = std::ptr::null_mut();
        // SAFETY: every pointer passed is a live NUL-terminated string or a buffer of the size
        // NVRTC reported; the program is destroyed on every path.
        unsafe {
            let rc = (self.create)(
                &mut prog,
                csrc.as_ptr(),
                cname.as_ptr(),
                0,
                std::ptr::null(),
                std::ptr::null(),
            );
            if rc != 0 {
                return Err(format!("nvrtcCreateProgram failed ({rc})"));
            }
            let rc = (self.compile)(prog, optp.len() as c_int, optp.as_ptr());
            let mut n = 0usize;
            (self.log_size)(prog, &mut n);
            let mut log = vec![0u8; n.max(1)];
            (self.log)(prog, log.as_mut_ptr() as *mut c_char);
            let log = String::from_utf8_lossy(&log)
                .trim_end_matches('\0')
                .to_string();
            if rc != 0 {
                (self.destroy)(&mut prog);
                return Err(log);
            }
            let ptx = arch.starts_with("compute_");
            let mut n = 0usize;
            if ptx {
                (self.ptx_size)(prog, &mut n);
            } else {
                (self.cubin_size)(prog, &mut n);
            }
            let mut img = vec![0u8; n];
            if ptx {
                (self.ptx)(prog, img.as_mut_ptr() as *mut c_char);
                // cuModuleLoadData reads PTX up to its NUL: keep exactly one at the end.
                while img.last() == Some(&0) {
                    img.pop();
                }
                img.push(0);
            } else {
                (self.cubin)(prog, img.as_mut_ptr() as *mut c_char);
            }
            (self.destroy)(&mut prog);
            Ok((img, log))
        }
    }
}

/// The first NVRTC library that loads, with the CUDA include folder that goes with it.
fn find_nvrtc(root: &Path) -> Option<(Nvrtc, PathBuf, PathBuf)> {
    let env = |k: &str| std::env::var_os(k).map(PathBuf::from);
    let mut cands: Vec<(PathBuf, Option<PathBuf>)> = Vec::new();
    if let Some(p) = env("CONTENTV_NVRTC") {
        cands.push((p, None));
    }
    // The pinned pip toolchain: nvidia/cuda_nvrtc/lib + nvidia/cuda_runtime/include.
    let venv = env("CONTENTV_CUDA_TOOLCHAIN").unwrap_or_else(|| root.join(".toolchain/cuda12"));
    if let Ok(rd) = std::fs::read_dir(venv.join("lib")) {
        for e in rd.flatten() {
            let nv = e.path().join("site-packages/nvidia");
            cands.push((
                nv.join("cuda_nvrtc/lib/libnvrtc.so.12"),
                Some(nv.join("cuda_runtime/include")),
            ));
        }
    }
    for home in [
        env("CUDA_HOME"),
        env("CUDA_PATH"),
        Some("/usr/local/cuda".into()),
    ]
    .into_iter()
    .flatten()
    {
        for lib in ["lib64/libnvrtc.so", "lib/libnvrtc.so", "lib/x64/nvrtc.lib"] {
            cands.push((home.join(lib), Some(home.join("include"))));
        }
    }
    for (lib, inc) in cands {
        if !lib.exists() {
            continue;
        }
        let inc = env("CONTENTV_CUDA_INCLUDE").or(inc).unwrap_or_else(|| {
            // A library given by path: a pip layout (nvidia/cuda_nvrtc/lib) or a CUDA install.
            let up = lib
                .parent()
                .and_then(|p| p.parent())
                .unwrap_or(Path::new("/"));
            let pip = up.parent().map(|p| p.join("cuda_runtime/include"));
            match pip {
                Some(p) if p.join("cuda_bf16.h").exists() => p,
                _ => up.join("include"),
            }
        });
        match Nvrtc::load(&lib) {
            Ok(n) if inc.join("cuda_bf16.h").exists() => return Some((n, lib, inc)),
            Ok(_) => println!(
                "cargo:warning=contentv: {} has no cuda_bf16.h next to {}; set CONTENTV_CUDA_INCLUDE",
                inc.display(),
                lib.display()
            ),
            Err(e) => println!("cargo:warning=contentv: cannot load {}: {e}", lib.display()),
        }
    }
    None
}

/// The project headers a source names in `#include "..."` lines.
fn includes(src: &str) -> Vec<String> {
    src.lines()
        .filter_map(|l| l.trim().strip_prefix("#include"))
        .filter_map(|r| r.trim().strip_prefix('"')?.split('"').next())
        .map(str::to_string)
        .collect()
}

fn main() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    for v in [
        "CONTENTV_NVRTC",
        "CONTENTV_CUDA_INCLUDE",
        "CONTENTV_CUDA_TOOLCHAIN",
        "CONTENTV_ARCHS",
        "CUDA_HOME",
        "CUDA_PATH",
    ] {
        println!("cargo:rerun-if-env-changed={v}");
    }
    println!("cargo:rerun-if-changed=kernels");
    if root.join(".toolchain/cuda12").exists() {
        println!("cargo:rerun-if-changed=.toolchain/cuda12");
    }
    println!("cargo:rustc-check-cfg=cfg(no_kernels)");

    let kdir = root.join("kernels");
    let header = std::fs::read_to_string(kdir.join("tiles.h"))
        .unwrap_or_else(|e| panic!("kernels/tiles.h: {e}"));
    let tiles = tiles_rs(&header).unwrap_or_else(|e| panic!("{e}"));
    write_if_changed(&out.join("tiles.rs"), &tiles);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&kdir)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    for p in &files {
        println!("cargo:rerun-if-changed={}", p.display());
    }
    let cu: Vec<PathBuf> = files
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "cu"))
        .collect();

    let only: Option<Vec<String>> = std::env::var("CONTENTV_ARCHS")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.split(',').map(|a| a.trim().to_string()).collect());
    let nvrtc = find_nvrtc(&root);
    if nvrtc.is_none() {
        println!(
            "cargo:warning=contentv: NVRTC (CUDA 12.x) not found; building without CUDA kernels \
             (CPU only). Run scripts/install-cuda-toolchain.sh or set CONTENTV_NVRTC to enable the GPU path."
        );
        println!("cargo:rustc-cfg=no_kernels");
    }

    let (jobs, modules, logs) = plan(&cu, &kdir, only.as_deref(), nvrtc.is_some());
    let mut toolkit = (0, 0);
    if let Some((nv, lib, inc)) = nvrtc {
        toolkit = nv.version_of();
        if toolkit.0 >= 13 {
            println!(
                "cargo:warning=contentv: {} is NVRTC {}.{}: its images need a CUDA 13 driver (R580+). \
                 scripts/install-cuda-toolchain.sh installs the pinned NVRTC 12.9.",
                lib.display(),
                toolkit.0,
                toolkit.1
            );
        }
        let stamp = format!("{lib:?}{toolkit:?}");
        compile_all(nv, jobs, &out, &kdir, &inc, &stamp);
    }
    let mut table = String::from("// generated by build.rs\n");
    table.push_str(&format!(
        "/// The CUDA version of the compiler that built the images ((0, 0): no kernels).\n\
         pub static KERNEL_TOOLKIT: (i32, i32) = ({}, {});\n",
        toolkit.0, toolkit.1
    ));
    table.push_str(&modules);
    table.push_str(&logs);
    // Rewritten only when it changes, so a build-script rerun does not recompile the crate.
    write_if_changed(&out.join("kernels.rs"), &table);
}

/// Writes `text` to `path` unless it already holds it (so a build-script rerun does not make
/// the crate recompile).
fn write_if_changed(path: &Path, text: &str) {
    if std::fs::read_to_string(path).ok().as_deref() != Some(text) {
        std::fs::write(path, text).unwrap();
    }
}

/// One kernel image to build: a .cu file for one target, and its cache key.
struct Job {
    stem: String,
    arch: String,
    src: String,
    key: u64,
}

/// A hash of the headers `src` includes (transitively), for the cache key of its images: a new
/// header for one kernel does not rebuild the others.
fn header_hash(kdir: &Path, src: &str) -> u64 {
    let mut h = DefaultHasher::new();
    let mut seen: Vec<String> = Vec::new();
    let mut todo: Vec<String> = includes(src);
    while let Some(name) = todo.pop() {
        if seen.contains(&name) {
            continue;
        }
        let text = std::fs::read_to_string(kdir.join(&name)).unwrap_or_default();
        todo.extend(includes(&text));
        (&name, &text).hash(&mut h);
        seen.push(name);
    }
    h.finish()
}

/// The images of every .cu file (one job per file and target; `only`: CONTENTV_ARCHS), and the
/// generated tables that embed them (`KERNEL_MODULES`) and their ptxas reports
/// (`KERNEL_PTXAS_LOGS`); without NVRTC no jobs and empty image lists.
fn plan(
    cu: &[PathBuf],
    kdir: &Path,
    only: Option<&[String]>,
    have_nvrtc: bool,
) -> (Vec<Job>, String, String) {
    let mut jobs: Vec<Job> = Vec::new();
    let mut modules = String::from("pub static KERNEL_MODULES: &[super::KernelModule] = &[\n");
    let mut logs = String::from("pub static KERNEL_PTXAS_LOGS: &[(&str, &str, &str)] = &[\n");
    for f in cu {
        let stem = f.file_stem().unwrap().to_string_lossy().to_string();
        let src = std::fs::read_to_string(f).unwrap_or_default();
        // A file that uses wgmma or setmaxnreg is Hopper-only: sm_90a SASS and nothing else
        // (no PTX: compute_90a code runs on no other arch). The runtime treats such a module
        // as absent on other GPUs and dispatches to the portable kernels.
        let hopper = src.contains("wgmma") || src.contains("setmaxnreg");
        let mut targets: Vec<&str> = if hopper {
            vec!["sm_90a"]
        } else {
            let mut t = SASS.to_vec();
            t.push(PTX);
            t
        };
        if let Some(o) = only {
            targets.retain(|t| o.iter().any(|x| x == t));
        }
        modules.push_str(&format!("    ({stem:?}, &[\n"));
        for arch in targets {
            let base = format!("{stem}.{arch}");
            let ext = image_ext(arch);
            if have_nvrtc {
                modules.push_str(&format!(
                    "        ({arch:?}, include_bytes!(concat!(env!(\"OUT_DIR\"), \"/{base}.{ext}\"))),\n"
                ));
                logs.push_str(&format!(
                    "    ({stem:?}, {arch:?}, include_str!(concat!(env!(\"OUT_DIR\"), \"/{base}.log\"))),\n"
                ));
                let mut h = DefaultHasher::new();
                (&src, header_hash(kdir, &src), arch, OPTIONS).hash(&mut h);
                jobs.push(Job {
                    stem: stem.clone(),
                    arch: arch.to_string(),
                    src: src.clone(),
                    key: h.finish(),
                });
            }
        }
        modules.push_str("    ]),\n");
    }
    modules.push_str("];\n");
    logs.push_str("];\n");
    (jobs, modules, logs)
}

/// An image's file extension: PTX for a `compute_` target, else a cubin.
fn image_ext(arch: &str) -> &'static str {
    if arch.starts_with("compute_") {
        "ptx"
    } else {
        "cubin"
    }
}

/// Compiles the jobs on every core, the slowest files first; an image whose cache key (source,
/// headers, target, options, compiler `stamp`) matches the one stored beside it is kept.
/// Panics with every NVRTC log when any image fails.
fn compile_all(nv: Nvrtc, mut jobs: Vec<Job>, out: &Path, kdir: &Path, inc: &Path, stamp: &str) {
    jobs.sort_by_key(|j| std::cmp::Reverse(j.src.len()));
    let nv = Arc::new(nv);
    let queue = Arc::new(Mutex::new(jobs));
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut handles = Vec::new();
    for _ in 0..threads {
        let (nv, queue, errors) = (nv.clone(), queue.clone(), errors.clone());
        let (out, kdir, inc, stamp) = (
            out.to_path_buf(),
            kdir.to_path_buf(),
            inc.to_path_buf(),
            stamp.to_string(),
        );
        handles.push(std::thread::spawn(move || loop {
            let Some(j) = queue.lock().unwrap().pop() else {
                break;
            };
            let base = format!("{}.{}", j.stem, j.arch);
            let ext = image_ext(&j.arch);
            let (img, logf, keyf) = (
                out.join(format!("{base}.{ext}")),
                out.join(format!("{base}.log")),
                out.join(format!("{base}.key")),
            );
            let key = format!("{:x}{stamp}", j.key);
            if img.exists() && std::fs::read_to_string(&keyf).ok().as_deref() == Some(&key) {
                continue;
            }
            let name = format!("kernels/{}.cu", j.stem);
            match nv.compile(&j.src, &name, &j.arch, &[kdir.clone(), inc.clone()]) {
                Ok((bytes, log)) => {
                    std::fs::write(&img, bytes).unwrap();
                    std::fs::write(&logf, log).unwrap();
                    std::fs::write(&keyf, key).unwrap();
                }
                Err(log) => errors
                    .lock()
                    .unwrap()
                    .push(format!("{name} for {}:\n{log}", j.arch)),
            }
        }));
    }
    for h in handles {
        h.join().expect("kernel compile thread");
    }
    let errors = errors.lock().unwrap();
    if !errors.is_empty() {
        for e in errors.iter() {
            eprintln!("NVRTC failed on {e}");
        }
        panic!(
            "NVRTC failed to compile {} kernel image(s) (see above)",
            errors.len()
        );
    }
}

/// `kernels/tiles.h` as Rust: one `pub const NAME: u32` per `constexpr int NAME = EXPR;` line
/// of its `namespace tiles` (EXPR: integers, earlier names, `+ - * /`, parentheses), with the
/// trailing `//` comment as its doc. Any other line in the namespace is an error, so the two
/// languages cannot drift apart silently.
fn tiles_rs(header: &str) -> Result<String, String> {
    let mut vals: Vec<(String, i64)> = Vec::new();
    let mut out = String::from("// generated by build.rs from kernels/tiles.h\n");
    let mut inside = false;
    for (n, line) in header.lines().enumerate() {
        let t = line.trim();
        if t.starts_with("namespace tiles") {
            inside = true;
            continue;
        }
        if !inside || t.is_empty() || t.starts_with("//") {
            continue;
        }
        if t.starts_with('}') {
            inside = false;
            continue;
        }
        let err = |why: &str| format!("kernels/tiles.h:{}: {why}: {t}", n + 1);
        let (code, doc) = match t.split_once("//") {
            Some((c, d)) => (c.trim(), d.trim()),
            None => (t, ""),
        };
        let decl = code
            .strip_prefix("constexpr int ")
            .and_then(|r| r.strip_suffix(';'))
            .ok_or_else(|| err("not `constexpr int NAME = EXPR;`"))?;
        let (name, expr) = decl.split_once('=').ok_or_else(|| err("no `=`"))?;
        let name = name.trim().to_string();
        let v = eval(expr, &vals).map_err(|e| err(&e))?;
        if !(0..=u32::MAX as i64).contains(&v) {
            return Err(err("value out of the u32 range"));
        }
        if !doc.is_empty() {
            out.push_str(&format!("/// {doc}\n"));
        }
        out.push_str(&format!("pub const {name}: u32 = {v};\n"));
        vals.push((name, v));
    }
    if vals.is_empty() {
        return Err("kernels/tiles.h: no constants in `namespace tiles`".into());
    }
    Ok(out)
}

/// An integer expression of `+ - * /`, parentheses, integers and the names in `vals`.
fn eval(expr: &str, vals: &[(String, i64)]) -> Result<i64, String> {
    let toks: Vec<String> = {
        let mut t = Vec::new();
        let mut cur = String::new();
        for c in expr.chars() {
            if c.is_ascii_alphanumeric() || c == '_' {
                cur.push(c);
            } else {
                if !cur.is_empty() {
                    t.push(std::mem::take(&mut cur));
                }
                if "+-*/()".contains(c) {
                    t.push(c.to_string());
                } else if !c.is_whitespace() {
                    return Err(format!("unexpected {c:?}"));
                }
            }
        }
        if !cur.is_empty() {
            t.push(cur);
        }
        t
    };
    fn sum(t: &[String], i: &mut usize, v: &[(String, i64)]) -> Result<i64, String> {
        let mut x = prod(t, i, v)?;
        while *i < t.len() && (t[*i] == "+" || t[*i] == "-") {
            let op = t[*i].clone();
            *i += 1;
            let y = prod(t, i, v)?;
            x = if op == "+" { x + y } else { x - y };
        }
        Ok(x)
    }
    fn prod(t: &[String], i: &mut usize, v: &[(String, i64)]) -> Result<i64, String> {
        let mut x = atom(t, i, v)?;
        while *i < t.len() && (t[*i] == "*" || t[*i] == "/") {
            let op = t[*i].clone();
            *i += 1;
            let y = atom(t, i, v)?;
            x = if op == "*" {
                x * y
            } else if y != 0 {
                x / y
            } else {
                return Err("division by zero".into());
            };
        }
        Ok(x)
    }
    fn atom(t: &[String], i: &mut usize, v: &[(String, i64)]) -> Result<i64, String> {
        let tok = t.get(*i).ok_or("expression ends early")?.clone();
        *i += 1;
        if tok == "(" {
            let x = sum(t, i, v)?;
            if t.get(*i).map(String::as_str) != Some(")") {
                return Err("missing `)`".into());
            }
            *i += 1;
            return Ok(x);
        }
        if let Ok(n) = tok.parse::<i64>() {
            return Ok(n);
        }
        v.iter()
            .find(|(n, _)| *n == tok)
            .map(|(_, x)| *x)
            .ok_or_else(|| format!("unknown name {tok} (define it earlier in tiles.h)"))
    }
    let mut i = 0;
    let x = sum(&toks, &mut i, vals)?;
    if i != toks.len() {
        return Err(format!("unexpected {}", toks[i]));
    }
    Ok(x)
}
