//! The static kernel gate: what can be known about every kernel without a GPU, checked on every
//! target the build embeds.
//!
//! From the `ptxas -v` report of each image (build.rs embeds it): registers, spill bytes, stack
//! frame, static shared memory; with the launch configuration of each kernel (the table below,
//! which every kernel must have an entry in) and each arch's limits: static + dynamic shared
//! memory against the block limit, registers x threads against the register file, and the
//! resulting CTAs per SM against what the kernel's design claims. From the SASS (nvdisasm of
//! each cubin): tensor-core kernels contain HMMA, hot kernels no local-memory loads or stores.
//!
//! It prints one table and keeps the copy in docs/kernel-review.md current: regenerate it with
//!   CONTENTV_GATE_WRITE=1 cargo test --release --test kernel_gate
//! Without the kernel compiler the build has no images and this prints SKIP; without nvdisasm
//! (scripts/install-cuda-toolchain.sh installs it) the SASS checks print SKIP.
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use contentv::ops::conv::CONV_BF16_SMEM;
use contentv::ops::quant::w8a16_smem_bytes;
use contentv::runtime::device::{kernel_images, kernel_ptxas_reports};
use contentv::runtime::kernels::tiles::{
    FLASH_SMEM_BYTES as FLASH_SMEM, FLASH_THREADS, HOPPER_SMEM_BYTES as HOPPER_SMEM,
    HOPPER_THREADS, NAIVE_WARPS, W8_GEMV_THREADS, W8_THREADS,
};

/// How a kernel is launched and what its design promises.
struct Launch {
    /// Kernel names it covers: exact, or a prefix ending in `*`.
    pattern: &'static str,
    threads: u32,
    dyn_smem: u32,
    /// On the denoising step or the VAE decode path: no spills, no stack, no local memory.
    hot: bool,
    /// Uses mma.sync: its SASS must contain HMMA.
    tensor_cores: bool,
    /// CTAs per SM the design needs: (target, n) pairs, "*" for every other target.
    min_ctas: &'static [(&'static str, u32)],
}

const ONE: &[(&str, u32)] = &[("*", 1)];
const TWO: &[(&str, u32)] = &[("*", 2)];
const W8A16_CTAS: &[(&str, u32)] = &[("sm_86", 1), ("sm_89", 1), ("sm_120", 1), ("*", 2)];

const fn k(
    pattern: &'static str,
    threads: u32,
    dyn_smem: u32,
    hot: bool,
    tensor_cores: bool,
    min_ctas: &'static [(&'static str, u32)],
) -> Launch {
    Launch {
        pattern,
        threads,
        dyn_smem,
        hot,
        tensor_cores,
        min_ctas,
    }
}

/// Every kernel's launch: block size and dynamic shared memory as src/ops and src/model launch
/// them (the rms_norm launcher uses 64 threads for rows of at most 128, 256 above).
fn launches() -> Vec<Launch> {
    vec![
        // 4 warps x 32 query rows, pinned with __launch_bounds__(128, 2): at most 255 registers
        // (it takes 245-255), 2 CTAs (8 warps) per SM on every arch, 2 x 49 KiB of shared memory
        // fits even the 100 KiB SMs of sm_86/89/120.
        k(
            "flash_attn_fwd_d64",
            FLASH_THREADS,
            FLASH_SMEM,
            true,
            true,
            TWO,
        ),
        // 3 warpgroups (producer + 2 consumers), 168 registers at launch (setmaxnreg moves them:
        // producer 24, consumers 240), ~113 KiB of shared memory: 1 CTA per SM by design.
        k(
            "flash_attn_hopper_d64",
            HOPPER_THREADS,
            HOPPER_SMEM,
            true,
            true,
            ONE,
        ),
        k("attn_naive_*", NAIVE_WARPS * 32, 0, false, false, ONE),
        // 52 / 58 KiB of shared memory (A and int8 stages, the converted B tile, group scales)
        // fit once on the 100 KiB SMs of sm_86/89/120, twice elsewhere.
        k(
            "w8a16_mma_group_*",
            W8_THREADS,
            w8a16_smem_bytes(true),
            true,
            true,
            W8A16_CTAS,
        ),
        k(
            "w8a16_mma_*",
            W8_THREADS,
            w8a16_smem_bytes(false),
            true,
            true,
            W8A16_CTAS,
        ),
        k("w8a16_gemv_*", W8_GEMV_THREADS, 0, true, false, TWO),
        k("dequant_i8_*", 256, 0, false, false, ONE),
        // 3-stage cp.async ring, 75 KiB of dynamic shared memory: 2 CTAs per SM where 150 KiB
        // fit (sm_80, sm_90), 1 on the 100 KiB SMs of sm_86/89/120.
        k(
            "conv_bf16_mma",
            256,
            CONV_BF16_SMEM,
            true,
            true,
            &[("sm_86", 1), ("sm_89", 1), ("sm_120", 1), ("*", 2)],
        ),
        k("conv_pack_weight_bf16", 256, 0, false, false, ONE),
        k("conv_f32_simt", 256, 0, true, false, TWO),
        k("conv_cache_update", 256, 0, true, false, ONE),
        k("upsample_nearest2x_f32", 256, 0, true, false, ONE),
        k("interleave_time_f32", 256, 0, true, false, ONE),
        k("vae_channel_rms_norm_f32", 256, 0, true, false, ONE),
        k("vae_copy2d_f32", 256, 0, false, false, ONE),
        k("vae_softmax_dim0_f32", 256, 0, false, false, ONE),
        k("ln_modulate_*", 256, 0, true, false, ONE),
        k("layer_norm_*", 256, 0, true, false, ONE),
        k("rms_norm_*", 256, 0, true, false, ONE),
        // One warp per (row, head), 8 warps a block (ops::norm::qk_rms_norm).
        k("qk_rms_norm_*", 256, 0, true, false, ONE),
        k("gated_residual_*", 256, 0, true, false, ONE),
        k("act_*", 256, 0, true, false, ONE),
        k("add_bcast_*", 256, 0, true, false, ONE),
        k("mul_*", 256, 0, true, false, ONE),
        k("axpby_*", 256, 0, true, false, ONE),
        k("copy_nd", 256, 0, true, false, ONE),
        k("cast_any", 256, 0, true, false, ONE),
        k("softmax_last_*", 256, 0, false, false, ONE),
        k("embedding_*", 128, 0, false, false, ONE),
    ]
}

/// Kernels built on wgmma (sm_90a): HGMMA must be in their SASS, and ptxas must neither ignore
/// their setmaxnreg nor serialize their wgmma (its infos C7510 / C7520 / "setmaxnreg ignored").
const WGMMA_KERNELS: &[&str] = &["flash_attn_hopper_d64"];

/// The ptxas messages that mean a wgmma kernel lost its design: the register reallocation
/// ignored, or the wgmma pipeline serialized.
fn wgmma_report_problems(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| {
            let t = l.to_ascii_lowercase();
            (t.contains("setmaxnreg") && (t.contains("ignor") || t.contains("warning")))
                || t.contains("c7510")
                || t.contains("c7520")
                || (t.contains("wgmma") && t.contains("serializ"))
        })
        .map(|l| l.trim().to_string())
        .collect()
}

fn launch_of<'a>(all: &'a [Launch], name: &str) -> Option<&'a Launch> {
    all.iter().find(|l| match l.pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => name == l.pattern,
    })
}

/// Per-SM limits of an arch (CUDA C Programming Guide, compute capability table).
struct Arch {
    /// Shared memory per SM and the most one block may use (opt-in), bytes.
    smem_sm: u32,
    smem_block: u32,
    max_threads: u32,
    max_ctas: u32,
}

fn arch(target: &str) -> Arch {
    let sm: u32 = target
        .trim_start_matches("sm_")
        .trim_end_matches('a')
        .parse()
        .unwrap();
    let (smem_sm, smem_block, max_threads, max_ctas) = match sm {
        80 => (164, 163, 2048, 32),
        86 => (100, 99, 1536, 16),
        89 => (100, 99, 1536, 24),
        90 | 100 => (228, 227, 2048, 32),
        120 => (100, 99, 1536, 32),
        _ => panic!("kernel gate: no limits for {target}; add them"),
    };
    Arch {
        smem_sm: smem_sm * 1024,
        smem_block: smem_block * 1024,
        max_threads,
        max_ctas,
    }
}

/// The CTAs per SM a launch claims on `target`.
fn claim(l: &Launch, target: &str) -> u32 {
    let t = target.trim_end_matches('a');
    l.min_ctas
        .iter()
        .find(|(a, _)| *a == t)
        .or_else(|| l.min_ctas.iter().find(|(a, _)| *a == "*"))
        .map_or(1, |c| c.1)
}

#[derive(Default, Clone, Debug)]
struct Ptxas {
    regs: u32,
    stack: u32,
    spill_stores: u32,
    spill_loads: u32,
    smem: u32,
}

fn num_before(line: &str, unit: &str) -> Option<u32> {
    let i = line.find(unit)?;
    line[..i].split_whitespace().last()?.parse().ok()
}

/// Kernel name -> resources, from one image's `ptxas -v` report.
fn parse_ptxas(log: &str) -> BTreeMap<String, Ptxas> {
    let mut out = BTreeMap::new();
    let mut cur: Option<String> = None;
    for line in log.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            let name = rest.split('\'').next().unwrap().to_string();
            out.insert(name.clone(), Ptxas::default());
            cur = Some(name);
            continue;
        }
        let Some(name) = &cur else { continue };
        let p = out.get_mut(name).unwrap();
        if line.contains("bytes stack frame") {
            p.stack = num_before(line, "bytes stack frame").unwrap();
            p.spill_stores = num_before(line, "bytes spill stores").unwrap();
            p.spill_loads = num_before(line, "bytes spill loads").unwrap();
        } else if line.contains("Used ") && line.contains(" registers") {
            p.regs = num_before(line, "registers").unwrap();
            p.smem = num_before(line, "bytes smem").unwrap_or(0);
            cur = None;
        }
    }
    out
}

/// CTAs per SM for this kernel on this arch, and what limits it.
fn ctas_per_sm(p: &Ptxas, l: &Launch, a: &Arch) -> (u32, &'static str) {
    let warps = l.threads.div_ceil(32);
    // Registers are allocated per warp in units of 256 from four 16K partitions.
    let per_warp = (p.regs.max(1) * 32).div_ceil(256) * 256;
    let by_regs = (16384 / per_warp) * 4 / warps;
    let smem = p.smem + l.dyn_smem;
    let by_smem = if smem == 0 {
        u32::MAX
    } else {
        a.smem_sm / (smem + 1024)
    };
    let by_threads = a.max_threads / l.threads;
    [
        (by_regs, "registers"),
        (by_smem, "shared memory"),
        (by_threads, "threads"),
        (a.max_ctas, "CTA slots"),
    ]
    .into_iter()
    .min_by_key(|t| t.0)
    .unwrap()
}

fn nvdisasm() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("CONTENTV_NVDISASM") {
        return Some(p.into());
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let lib = root.join(".toolchain/cuda12/lib");
    for e in std::fs::read_dir(lib).ok()?.flatten() {
        let p = e.path().join("site-packages/nvidia/cu13/bin/nvdisasm");
        if p.exists() {
            return Some(p);
        }
    }
    None
}

/// Kernel name -> (HMMA count, HGMMA count, local loads/stores), from a cubin's SASS.
fn sass_counts(tool: &PathBuf, cubin: &[u8], tag: &str) -> SassCounts {
    let path =
        std::env::temp_dir().join(format!("contentv-gate-{}-{tag}.cubin", std::process::id()));
    std::fs::write(&path, cubin).unwrap();
    let o = Command::new(tool)
        .arg(&path)
        .output()
        .expect("running nvdisasm");
    let _ = std::fs::remove_file(&path);
    assert!(
        o.status.success(),
        "nvdisasm {tag}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let text = String::from_utf8_lossy(&o.stdout);
    let mut out = BTreeMap::new();
    let mut cur: Option<String> = None;
    for line in text.lines() {
        let t = line.trim_start();
        if t.starts_with(".section\t") || t.starts_with(".section ") {
            cur = t
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.trim_end_matches(',').split(',').next())
                .and_then(|s| s.strip_prefix(".text."))
                .map(String::from);
            if let Some(c) = &cur {
                out.insert(c.clone(), (0, 0, 0));
            }
            continue;
        }
        let Some(c) = &cur else { continue };
        // an instruction line: /*0a30*/  HMMA.16816.F32 R72, ...
        let Some(ins) = t
            .strip_prefix("/*")
            .and_then(|r| r.split_once("*/"))
            .map(|(_, r)| r)
        else {
            continue;
        };
        let op = ins
            .split_whitespace()
            .find(|w| !w.starts_with('@'))
            .unwrap_or("");
        let base = op.split('.').next().unwrap_or("");
        let e = out.get_mut(c).unwrap();
        match base {
            "HMMA" => e.0 += 1,
            "HGMMA" => e.1 += 1,
            "LDL" | "STL" => e.2 += 1,
            _ => {}
        }
    }
    out
}

type SassCounts = BTreeMap<String, (usize, usize, usize)>;

/// `sass_counts` of every SASS image, (module, target) -> counts, with one nvdisasm per image
/// spread over the machine's cores (the disassembly is most of the gate's time).
fn sass_of_every_image(
    tool: &PathBuf,
    images: &[contentv::runtime::device::KernelModule],
) -> BTreeMap<(String, String), SassCounts> {
    let jobs: Vec<(String, String, &[u8])> = images
        .iter()
        .flat_map(|(module, imgs)| {
            imgs.iter()
                .filter(|(target, _)| !target.starts_with("compute_"))
                .map(|(target, bytes)| (module.to_string(), target.to_string(), *bytes))
        })
        .collect();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let next = std::sync::atomic::AtomicUsize::new(0);
    let done = std::sync::Mutex::new(BTreeMap::new());
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some((module, target, bytes)) = jobs.get(i) else {
                    break;
                };
                let counts = sass_counts(tool, bytes, &format!("{module}.{target}"));
                done.lock()
                    .unwrap()
                    .insert((module.clone(), target.clone()), counts);
            });
        }
    });
    done.into_inner().unwrap()
}

#[test]
fn kernel_gate() {
    if std::env::var("CONTENTV_CPU_TESTS_DONE").is_ok_and(|v| v == "1") {
        println!("SKIP: kernel gate: static, already run in the test command's first pass");
        return;
    }
    let images = kernel_images();
    let reports = kernel_ptxas_reports();
    if images.iter().all(|(_, imgs)| imgs.is_empty()) {
        println!("SKIP: kernel gate: this build has no kernel images (no NVRTC at build time)");
        return;
    }
    let all = launches();
    let tool = nvdisasm();
    if tool.is_none() {
        println!("SKIP: kernel gate SASS checks: nvdisasm not found (scripts/install-cuda-toolchain.sh; or CONTENTV_NVDISASM)");
    }
    let mut failures: Vec<String> = Vec::new();
    let mut table: Table = BTreeMap::new();
    let mut targets: Vec<String> = Vec::new();
    let sass_all = tool.as_ref().map(|t| sass_of_every_image(t, images));
    for (module, imgs) in images {
        for (target, _) in imgs.iter() {
            if target.starts_with("compute_") {
                continue; // PTX: resources are decided when the driver compiles it
            }
            if !targets.iter().any(|t| t == target) {
                targets.push(target.to_string());
            }
            let log = reports
                .iter()
                .find(|(m, t, _)| m == module && t == target)
                .map(|r| r.2)
                .unwrap_or_else(|| panic!("no ptxas report for {module} {target}"));
            let res = parse_ptxas(log);
            assert!(
                !res.is_empty(),
                "{module} {target}: the ptxas report names no kernel:\n{log}"
            );
            let sass = sass_all
                .as_ref()
                .map(|m| m[&(module.to_string(), target.to_string())].clone());
            let a = arch(target);
            let wgmma_problems = wgmma_report_problems(log);
            for (name, p) in &res {
                let Some(l) = launch_of(&all, name) else {
                    failures.push(format!(
                        "{name} (kernels/{module}.cu) has no entry in the gate's launch table (tests/kernel_gate.rs)"
                    ));
                    continue;
                };
                let (ctas, limiter) = ctas_per_sm(p, l, &a);
                let s = sass
                    .as_ref()
                    .map(|m| m.get(name).copied().unwrap_or((0, 0, 0)));
                failures.extend(kernel_problems(name, target, p, l, &a, s, &wgmma_problems));
                table
                    .entry((module.to_string(), name.clone()))
                    .or_default()
                    .insert(target.to_string(), (p.clone(), ctas, limiter, s));
            }
        }
    }
    // Every kernel in the launch table exists (a renamed kernel must not leave a stale entry).
    for l in &all {
        if !table
            .keys()
            .any(|(_, n)| launch_of(std::slice::from_ref(l), n).is_some())
        {
            failures.push(format!(
                "the gate's launch table names {} but no image has it",
                l.pattern
            ));
        }
    }

    let md = gate_table(&table, &targets, &all);
    println!("{md}");

    // docs/kernel-review.md keeps the table of the full build (every target).
    let full = targets.len() >= 6;
    let doc = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/kernel-review.md");
    let (begin, end) = ("<!-- kernel-gate:begin -->\n", "<!-- kernel-gate:end -->");
    let text = std::fs::read_to_string(&doc).expect("docs/kernel-review.md");
    let (Some(b), Some(e)) = (text.find(begin), text.find(end)) else {
        panic!("docs/kernel-review.md lacks the {begin:?}...{end:?} markers");
    };
    let current = &text[b + begin.len()..e];
    if std::env::var("CONTENTV_GATE_WRITE").is_ok_and(|v| v == "1") {
        assert!(
            full,
            "regenerate the table from a build with every target (unset CONTENTV_ARCHS)"
        );
        let new = format!("{}{begin}{md}{}", &text[..b], &text[e..]);
        std::fs::write(&doc, new).unwrap();
        println!("kernel gate: wrote the table into {}", doc.display());
    } else if full && tool.is_some() && !same_table(current, &md) {
        failures.push(
            "docs/kernel-review.md's kernel table is out of date: regenerate it with \
             CONTENTV_GATE_WRITE=1 cargo test --release --test kernel_gate"
                .into(),
        );
    }
    assert!(
        failures.is_empty(),
        "kernel gate:\n  {}",
        failures.join("\n  ")
    );
}

/// One kernel's gate results per target: (ptxas, CTAs per SM, limiter, SASS counts).
type Row = (Ptxas, u32, &'static str, Option<(usize, usize, usize)>);
/// (module, kernel) -> target -> its row.
type Table = BTreeMap<(String, String), BTreeMap<String, Row>>;

/// The gate's table (markdown): one row per kernel; per target "registers r / CTAs per SM".
fn gate_table(table: &Table, targets: &[String], all: &[Launch]) -> String {
    let mut md = String::new();
    md.push_str(&format!(
        "| kernel | module | block | smem static+dyn | hot | {} | spill/stack | HMMA (sm_90) | LDL/STL |\n",
        targets.join(" | ")
    ));
    md.push_str(&format!(
        "|---|---|---|---|---|{}---|---|---|\n",
        "---|".repeat(targets.len())
    ));
    for ((module, name), per) in table {
        let l = launch_of(all, name).unwrap();
        let any = per.values().next().unwrap();
        let cells: Vec<String> = targets
            .iter()
            .map(|t| match per.get(t) {
                Some((p, c, _, _)) => format!("{}r/{c}", p.regs),
                None => "-".into(),
            })
            .collect();
        let spill = per
            .values()
            .map(|(p, ..)| p.spill_stores + p.spill_loads + p.stack)
            .max()
            .unwrap_or(0);
        let hmma = per
            .get("sm_90")
            .or_else(|| per.get("sm_90a"))
            .and_then(|r| r.3)
            .map(|s| (s.0 + s.1).to_string())
            .unwrap_or_else(|| "-".into());
        let local = per
            .values()
            .filter_map(|r| r.3)
            .map(|s| s.2)
            .max()
            .map(|n| n.to_string())
            .unwrap_or_else(|| "-".into());
        md.push_str(&format!(
            "| {name} | {module} | {} | {}+{} | {} | {} | {spill} | {hmma} | {local} |\n",
            l.threads,
            any.0.smem,
            l.dyn_smem,
            if l.hot { "hot" } else { "" },
            cells.join(" | ")
        ));
    }
    md
}

/// What is wrong with kernel `name` on `target`: spills in a hot kernel, shared memory or
/// registers past the arch's limits, fewer CTAs per SM than its design needs, a wgmma kernel
/// outside sm_90a (or without HGMMA, or with ptxas' wgmma warnings), a tensor-core kernel
/// without HMMA, local memory in a hot kernel. `s`: its SASS counts (HMMA, HGMMA, LDL/STL), if
/// nvdisasm ran.
fn kernel_problems(
    name: &str,
    target: &str,
    p: &Ptxas,
    l: &Launch,
    a: &Arch,
    s: Option<(usize, usize, usize)>,
    wgmma_problems: &[String],
) -> Vec<String> {
    let mut out = Vec::new();
    let at = format!("{name} on {target}");
    if l.hot && (p.spill_stores > 0 || p.spill_loads > 0 || p.stack > 0) {
        out.push(format!(
            "{at}: hot kernel spills ({} B stores, {} B loads) or has a {} B stack frame",
            p.spill_stores, p.spill_loads, p.stack
        ));
    }
    let smem = p.smem + l.dyn_smem;
    if smem > a.smem_block {
        out.push(format!(
            "{at}: {} B static + {} B dynamic shared memory exceeds the {} B block limit",
            p.smem, l.dyn_smem, a.smem_block
        ));
    }
    if p.regs * l.threads > 65536 {
        out.push(format!(
            "{at}: {} registers x {} threads exceed the register file",
            p.regs, l.threads
        ));
    }
    let (ctas, limiter) = ctas_per_sm(p, l, a);
    let claim = claim(l, target);
    if ctas < claim {
        out.push(format!(
            "{at}: {ctas} CTA(s) per SM (limited by {limiter}: {} registers, {} B shared memory, \
             {} threads), its design needs {claim}",
            p.regs, smem, l.threads
        ));
    }
    if WGMMA_KERNELS.contains(&name) {
        if target != "sm_90a" {
            out.push(format!(
                "{at}: a wgmma kernel built for {target} (sm_90a only)"
            ));
        }
        for w in wgmma_problems {
            out.push(format!("{at}: ptxas: {w}"));
        }
        if let Some((_, 0, _)) = s {
            out.push(format!("{at}: a wgmma kernel without HGMMA in its SASS"));
        }
    }
    if let Some((hmma, hgmma, local)) = s {
        if l.tensor_cores && hmma + hgmma == 0 {
            out.push(format!(
                "{at}: a tensor-core kernel without HMMA/HGMMA in its SASS"
            ));
        }
        if l.hot && local > 0 {
            out.push(format!(
                "{at}: {local} local-memory loads/stores (LDL/STL) in a hot kernel"
            ));
        }
    }
    out
}

/// Whether two gate tables agree: the same rows and cells, except that a register count may
/// differ by 2 as long as the CTAs per SM agree (NVRTC 12.9 builds of the same source were seen
/// to give a template kernel 121 or 122 registers from one build to the next).
fn same_table(a: &str, b: &str) -> bool {
    let (ra, rb): (Vec<&str>, Vec<&str>) = (a.lines().collect(), b.lines().collect());
    if ra.len() != rb.len() {
        return false;
    }
    ra.iter().zip(&rb).all(|(x, y)| {
        let (cx, cy): (Vec<&str>, Vec<&str>) = (x.split('|').collect(), y.split('|').collect());
        cx.len() == cy.len()
            && cx.iter().zip(&cy).all(|(p, q)| {
                let regs = |c: &str| -> Option<(i64, String)> {
                    let (r, ctas) = c.trim().split_once("r/")?;
                    Some((r.parse().ok()?, ctas.to_string()))
                };
                match (regs(p), regs(q)) {
                    // Occupancy must match exactly; register counts may move a little: NVRTC
                    // 12.9's allocation differs between builds of the same source (seen: the
                    // grouped W8A16 kernel at 120 and 127 registers on sm_90, both 2 CTAs/SM).
                    // The hard checks above (claims, spills, register file) are exact.
                    (Some((r1, c1)), Some((r2, c2))) => c1 == c2 && (r1 - r2).abs() <= 8,
                    _ => p == q,
                }
            })
    })
}

#[test]
fn occupancy_arithmetic() {
    // flash attention: 128 registers x 256 threads, 48 KiB dynamic: 2 CTAs on sm_90, and one
    // register more drops it to 1.
    let l = k("x", 256, 48 * 1024, true, true, TWO);
    let mut p = Ptxas {
        regs: 128,
        ..Default::default()
    };
    assert_eq!(ctas_per_sm(&p, &l, &arch("sm_90")).0, 2);
    p.regs = 129;
    assert_eq!(ctas_per_sm(&p, &l, &arch("sm_90")), (1, "registers"));
    // 51 KiB + 1 KiB reserved fits once in the 100 KiB of sm_86.
    let l = k("x", 256, 52_224, true, true, &[("sm_86", 1), ("*", 2)]);
    assert_eq!((claim(&l, "sm_86"), claim(&l, "sm_90a")), (1, 2));
    p.regs = 64;
    assert_eq!(ctas_per_sm(&p, &l, &arch("sm_86")), (1, "shared memory"));
    assert_eq!(ctas_per_sm(&p, &l, &arch("sm_80")).0, 3);
    // small kernels are limited by threads or CTA slots
    let l = k("x", 128, 0, false, false, ONE);
    p.regs = 16;
    assert_eq!(ctas_per_sm(&p, &l, &arch("sm_86")), (12, "threads"));
    assert_eq!(ctas_per_sm(&p, &l, &arch("sm_90")), (16, "threads"));
    // the wgmma kernel's design claims: 168 registers x 384 threads, 113 KiB: 1 CTA on sm_90a
    let l = k("x", HOPPER_THREADS, HOPPER_SMEM, true, true, ONE);
    p.regs = 168;
    assert_eq!(ctas_per_sm(&p, &l, &arch("sm_90a")).0, 1);
    assert!(wgmma_report_problems("ptxas info    : Used 168 registers").is_empty());
    assert_eq!(
        wgmma_report_problems(
            "ptxas info    : (C7510) Potential Performance Loss: wgmma.mma_async instructions are serialized\n\
             ptxas warning : setmaxnreg ignored; unable to determine register count at entry"
        )
        .len(),
        2
    );
    // ptxas report parsing
    let log = "ptxas info    : Compiling entry function 'f' for 'sm_90'\n\
               ptxas info    : Function properties for f\n\
               ptxas         .     8 bytes stack frame, 4 bytes spill stores, 4 bytes spill loads\n\
               ptxas info    : Used 40 registers, used 1 barriers, 4096 bytes smem, 400 bytes cmem[0]\n";
    let r = parse_ptxas(log);
    let f = &r["f"];
    assert_eq!(
        (f.regs, f.stack, f.spill_stores, f.spill_loads, f.smem),
        (40, 8, 4, 4, 4096)
    );
    // the docs table tolerates register noise, not a CTA change or a new row
    let t = "| k | m | 121r/2 | 0 |\n";
    assert!(same_table(t, "| k | m | 122r/2 | 0 |\n"));
    assert!(same_table(t, "| k | m | 127r/2 | 0 |\n"));
    assert!(!same_table(t, "| k | m | 122r/1 | 0 |\n"));
    assert!(!same_table(t, "| k | m | 130r/2 | 0 |\n"));
    assert!(!same_table(t, "| k | m | 121r/2 | 8 |\n"));
    assert!(!same_table(t, &format!("{t}{t}")));
}

/// The launch geometry of kernels/tiles.h (read by build.rs into `runtime::kernels::tiles`)
/// is what the launchers pass: the ones that take it from elsewhere agree with it.
/// (`ops::conv` keeps its own constant until it takes it from the table too.)
#[test]
fn launchers_use_the_tiles_table() {
    use contentv::runtime::kernels::tiles;
    assert_eq!(
        CONV_BF16_SMEM,
        tiles::CONV_SMEM_BYTES,
        "ops::conv::CONV_BF16_SMEM"
    );
    assert_eq!(w8a16_smem_bytes(false), tiles::W8_SMEM_BYTES);
    assert_eq!(w8a16_smem_bytes(true), tiles::W8_GROUP_SMEM_BYTES);
    // The values the kernels were designed around (docs/kernel-review.md).
    assert_eq!(tiles::FLASH_SMEM_BYTES, 48 * 1024);
    assert_eq!(tiles::HOPPER_SMEM_BYTES, 115_816);
    assert_eq!(
        (tiles::W8_SMEM_BYTES, tiles::W8_GROUP_SMEM_BYTES),
        (53_248, 59_392)
    );
    assert_eq!(tiles::CONV_SMEM_BYTES, 76_800);
    assert_eq!(
        contentv::ops::attention::NAIVE_MAX_D,
        tiles::NAIVE_DMAX as usize
    );
}
