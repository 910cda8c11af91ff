//! The drivers and GPUs users have, tried on the emulated CUDA device (tests/emu/device), which
//! can report any driver version and compute capability (CONTENTV_EMU_DRIVER_VERSION,
//! CONTENTV_EMU_ARCH) and checks each kernel image against them as the driver does: an older
//! driver gets one clear message, a GPU without an image in the build is named with the
//! targets the build holds, compatible archs load the right image (SASS of the same major,
//! PTX for newer GPUs), and CONTENTV_SYNC_LAUNCHES=1 names a kernel that faults.
//!
//! On a real GPU only the plain `contentv device` case runs (a real driver cannot be told to
//! pretend); without any driver the file prints SKIP (scripts/test.sh runs it again on the
//! emulated device).
use std::process::{Command, Output};

mod common;

fn contentv(env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut c = Command::new(common::bin::BIN);
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("running contentv")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The emulated device, or None (with a SKIP line) on a real GPU or without a driver.
fn emulated_only(what: &str) -> bool {
    match common::cuda_or_skip() {
        Some(d) if common::is_emulated(&d) => true,
        Some(_) => {
            println!("SKIP: {what}: needs the emulated device (a real driver cannot pretend to be another)");
            false
        }
        None => false,
    }
}

/// `contentv device --json` under the given emulated driver/arch: (exit code, report or error).
fn device(env: &[(&str, &str)]) -> (i32, String) {
    let o = contentv(env, &["device", "--json"]);
    (o.status.code().unwrap_or(-1), text(&o))
}

#[test]
fn device_report_names_gpu_driver_and_images() {
    let Some(dev) = common::cuda_or_skip() else {
        return;
    };
    let (code, out) = device(&[]);
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).expect(&out);
    let g = dev.gpu().unwrap();
    let arch = format!("sm_{}{}", g.compute_capability.0, g.compute_capability.1);
    assert_eq!(v["arch"], arch.as_str());
    let mods = v["modules"].as_array().unwrap();
    for m in ["attention", "conv3d", "gemm_int8", "ops"] {
        assert!(
            mods.iter().any(|x| x["module"] == m),
            "module {m} missing: {out}"
        );
    }
    assert_eq!(
        v["kernels_cuda"], "12.9",
        "the images must come from the CUDA 12.9 compiler"
    );
}

#[test]
fn old_driver_gets_one_clear_message() {
    if !emulated_only("old driver message") {
        return;
    }
    for (drv, shown) in [("11080", "11.8"), ("11040", "11.4")] {
        // `--json`: the report's place on stdout holds one JSON error object; stderr holds
        // the same message once, for a person; neither has a backtrace.
        let o = contentv(&[("CONTENTV_EMU_DRIVER_VERSION", drv)], &["device", "--json"]);
        let out = text(&o);
        assert_ne!(o.status.code().unwrap_or(-1), 0, "{out}");
        let stdout = String::from_utf8_lossy(&o.stdout);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(stdout.lines().count(), 1, "one JSON line on stdout: {out}");
        let v: serde_json::Value = serde_json::from_str(stdout.trim()).expect(&out);
        assert_eq!(v["usable"], false, "{out}");
        assert_eq!(stderr.lines().count(), 1, "one message, no backtrace: {out}");
        for msg in [v["error"].as_str().unwrap_or(""), stderr.as_ref()] {
            assert!(
                msg.contains(&format!("supports CUDA {shown}"))
                    && msg.contains("CUDA 12.0 or newer")
                    && msg.contains("update the NVIDIA driver"),
                "{out}"
            );
        }
        // Without `--json` only the person's line is printed.
        let o = contentv(&[("CONTENTV_EMU_DRIVER_VERSION", drv)], &["device"]);
        assert_ne!(o.status.code().unwrap_or(-1), 0);
        assert_eq!(text(&o).lines().count(), 1, "one message: {}", text(&o));
    }
    // The oldest supported driver runs the SASS images.
    let (code, out) = device(&[
        ("CONTENTV_EMU_DRIVER_VERSION", "12000"),
        ("CONTENTV_EMU_ARCH", "8.6"),
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(r#""image":"sm_86""#), "{out}");
}

#[test]
fn each_arch_loads_its_image_or_is_named() {
    if !emulated_only("arch choice") {
        return;
    }
    // (arch, driver, the image every module must load)
    for (arch, drv, want) in [
        ("8.0", "12000", "sm_80"),
        ("8.6", "12020", "sm_86"),
        ("8.7", "12020", "sm_86"),
        ("8.9", "12040", "sm_89"),
        ("9.0", "12020", "sm_90"),
        ("10.0", "12080", "sm_100"),
        ("10.3", "12090", "sm_100"),
        ("12.0", "12080", "sm_120"),
        ("12.1", "12090", "sm_120"),
        ("13.0", "13000", "compute_120"),
    ] {
        let (code, out) = device(&[
            ("CONTENTV_EMU_ARCH", arch),
            ("CONTENTV_EMU_DRIVER_VERSION", drv),
        ]);
        assert_eq!(code, 0, "sm {arch}, driver {drv}: {out}");
        let v: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).expect(&out);
        // The Hopper attention module has only an sm_90a image: loaded on sm_90, absent (not an
        // error) everywhere else.
        let mut hopper = false;
        for m in v["modules"].as_array().unwrap() {
            if m["module"] == "attention_hopper" {
                hopper = true;
                assert_eq!(m["image"], "sm_90a", "sm {arch}: {out}");
            } else {
                assert_eq!(m["image"], want, "sm {arch}: {out}");
            }
        }
        assert_eq!(hopper, arch == "9.0", "sm {arch}: the Hopper module: {out}");
    }
    // A GPU newer than every SASS target with a driver older than the PTX.
    let (code, out) = device(&[
        ("CONTENTV_EMU_ARCH", "13.0"),
        ("CONTENTV_EMU_DRIVER_VERSION", "12080"),
    ]);
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("no SASS for sm_130") && out.contains("CUDA 12.9 or newer"),
        "{out}"
    );
    // An arch the build has nothing for: the device's arch and the build's targets are named.
    let (code, out) = device(&[("CONTENTV_EMU_ARCH", "11.0")]);
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("sm_110")
            && out.contains("sm_80, sm_86, sm_89, sm_90, sm_100, sm_120, compute_120 (PTX)"),
        "{out}"
    );
    // Too old for the kernels at all.
    let (code, out) = device(&[("CONTENTV_EMU_ARCH", "7.5")]);
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("sm_75") && out.contains("sm_80 or newer"),
        "{out}"
    );
}

#[test]
fn sync_launches_names_the_faulting_kernel() {
    if !emulated_only("kernel fault") {
        return;
    }
    let dir = common::scratch::scratch("driver-compat-fault");
    let out_path = dir.join("fault.mp4");
    let args = [
        "generate",
        "--device",
        "cuda",
        "--prompt",
        "a fox",
        "--seed",
        "1",
        "--frames",
        "5",
        "--width",
        "64",
        "--height",
        "64",
        "--steps",
        "1",
        "--output",
        out_path.to_str().unwrap(),
    ];
    let fault = ("CONTENTV_EMU_FAULT_KERNEL", "layer_norm_bf16");
    let o = contentv(&[fault, ("CONTENTV_SYNC_LAUNCHES", "1")], &args);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(
        t.contains("kernel layer_norm_bf16 (kernels/ops.cu) failed")
            && t.contains("ILLEGAL_ADDRESS"),
        "{t}"
    );
    // Without it the fault shows at a later synchronisation, and the message says how to find it.
    let o = contentv(&[fault], &args);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(
        t.contains("ILLEGAL_ADDRESS") && t.contains("CONTENTV_SYNC_LAUNCHES=1"),
        "{t}"
    );
    assert!(!out_path.exists(), "no output after a failed run");
}
