//! The CUDA kernels (kernels/*.cu) run without a GPU: tests/emu compiles them with the host C++
//! compiler against an emulation of the CUDA subset they use (threads as fibers, warp
//! collectives, ldmatrix / mma.sync / cp.async with their PTX semantics, four adversarial
//! schedules) and compares every kernel with a double-precision reference on small shapes:
//! odd sizes, partial tiles, segment lists, strides, masks. See tests/emu/include/cuda_emu.h.
//! The Hopper subset (mbarrier, TMA, wgmma, elect, setmaxnreg, named barriers) is checked on its
//! own against hand-worked cases and mutations (tests/emu/test_hopper.cpp, `hopper/` cases).
//!
//! This checks the kernels' index math, fragment layouts, synchronisation and tails in CI; it
//! says nothing about speed, and it cannot see hardware-specific effects (the real tensor-core
//! accumulation order, register or shared-memory limits): tests/attention_gpu.rs and
//! tests/ops_gpu.rs run the same kernels on a GPU.
//!
//! `CONTENTV_EMU_ASAN=1` builds the emulator with AddressSanitizer and UndefinedBehaviorSanitizer
//! (red zones on both sides of every device buffer, integer overflow in index math); about ten
//! times slower, so it is not the default.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

const SOURCES: &[&str] = &[
    "emu.cpp",
    "main.cpp",
    "test_attention.cpp",
    "test_conv.cpp",
    "test_gemm_int8.cpp",
    "test_hopper.cpp",
    "test_ops.cpp",
];

fn asan() -> bool {
    std::env::var("CONTENTV_EMU_ASAN").is_ok_and(|v| v == "1")
}

fn compiler() -> Option<String> {
    let mut cands = Vec::new();
    if let Ok(c) = std::env::var("CXX") {
        cands.push(c);
    }
    cands.extend(["c++", "g++", "clang++"].map(String::from));
    cands.into_iter().find(|c| {
        Command::new(c)
            .arg("--version")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    })
}

/// Builds the emulator binary once per test run; Err(reason) to skip.
fn binary() -> &'static Result<PathBuf, String> {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| {
        let Some(cxx) = compiler() else {
            return Err("no C++ compiler (set CXX, or install g++ or clang)".into());
        };
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let emu = root.join("tests/emu");
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join(if asan() {
            "kernels_emu_asan"
        } else {
            "kernels_emu"
        });
        std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
        let mut flags = vec![
            "-std=c++17",
            "-g",
            "-fno-strict-aliasing",
            "-Wall",
            "-Wno-unknown-pragmas",
            "-Wno-psabi",
        ];
        if asan() {
            flags.extend([
                "-O1",
                "-fsanitize=address,undefined",
                "-fno-sanitize-recover=undefined",
            ]);
        } else {
            flags.push("-O2");
        }
        let include = [emu.join("include"), emu.clone(), root.join("kernels")];
        // One compiler process per source, in parallel.
        let jobs: Vec<_> = SOURCES
            .iter()
            .map(|s| {
                let obj = out.join(s.replace(".cpp", ".o"));
                let mut cmd = Command::new(&cxx);
                cmd.args(&flags);
                for i in &include {
                    cmd.arg("-I").arg(i);
                }
                cmd.arg("-c").arg(emu.join(s)).arg("-o").arg(&obj);
                (s, obj, cmd.spawn())
            })
            .collect();
        let mut objs = Vec::new();
        for (s, obj, child) in jobs {
            let o = child
                .and_then(|c| c.wait_with_output())
                .map_err(|e| format!("running {cxx}: {e}"))?;
            if !o.status.success() {
                panic!(
                    "{cxx} failed on tests/emu/{s}:\n{}",
                    String::from_utf8_lossy(&o.stderr)
                );
            }
            objs.push(obj);
        }
        let bin = out.join("kernels_emu");
        let link_flags: &[&str] = if asan() {
            &["-fsanitize=address,undefined"]
        } else {
            &[]
        };
        let o = Command::new(&cxx)
            .args(link_flags)
            .args(&objs)
            .arg("-o")
            .arg(&bin)
            .output()
            .map_err(|e| format!("linking with {cxx}: {e}"))?;
        assert!(
            o.status.success(),
            "linking the emulator failed:\n{}",
            String::from_utf8_lossy(&o.stderr)
        );
        Ok(bin)
    })
}

/// Runs the cases whose names start with `prefix` and fails on any failed case (the binary
/// prints one line per case and schedule).
fn run(prefix: &str) {
    if std::env::var("CONTENTV_CPU_TESTS_DONE").is_ok_and(|v| v == "1") {
        println!(
            "SKIP: kernels_emu {prefix}: CPU only, already run in the test command's first pass"
        );
        return;
    }
    let bin = match binary() {
        Ok(b) => b,
        Err(why) => {
            println!("SKIP kernels_emu {prefix}: {why}");
            return;
        }
    };
    let o = Command::new(bin)
        .arg(prefix)
        // The fiber stacks live until exit on purpose.
        .env("ASAN_OPTIONS", "detect_leaks=0")
        .output()
        .expect("running the emulator");
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr);
    let passed = stdout.lines().filter(|l| l.starts_with("ok ")).count();
    let failed: Vec<&str> = stdout.lines().filter(|l| l.starts_with("FAIL")).collect();
    println!("kernels_emu {prefix}: {passed} case runs passed");
    assert!(
        o.status.success() && failed.is_empty(),
        "emulated kernels {prefix}: exit {:?}\n{}\n{stderr}",
        o.status.code(),
        if failed.is_empty() {
            stdout.to_string()
        } else {
            failed.join("\n")
        }
    );
    // Every kernel family ran (a filter that matched nothing must not pass silently).
    assert!(passed > 0, "no case matched {prefix}:\n{stdout}");
}

#[test]
fn emulated_attention_kernels() {
    run("attention/");
}

#[test]
fn emulated_conv_kernels() {
    run("conv/");
}

#[test]
fn emulated_w8a16_kernels() {
    run("w8a16/");
}

#[test]
fn emulated_hopper_subset() {
    run("hopper/");
}

#[test]
fn emulated_small_ops_kernels() {
    run("ops/");
}
