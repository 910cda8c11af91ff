//! `contentv generate` on each device and in every memory mode: offload, streaming and the tiled
//! VAE leave the latents bit-identical, INT8 stays close, the GPU's bf16 run is close to the
//! CPU's f32 run, and the attention self-check falls back on a wrong kernel (emulated device).
//! Split from tests/cli.rs; helpers in tests/common/{bin,scratch}.rs.
use std::process::Command;

mod common;

use common::bin::{output, smallest_tiny_args, text, BIN};
use common::cosine;
use common::scratch::scratch;
use contentv::io::video::artifact_path;

/// Every memory mode runs end to end on the tiny model on `device` ("cpu" or "cuda").
/// Offload and streaming do not change the arithmetic (identical latents); INT8 stays close;
/// the tiled VAE does not touch the latents. Returns the resident run's latents.
fn memory_modes(device: &str) -> Vec<f32> {
    let d = scratch(&format!("memory-modes-{device}"));
    let gen = |name: &str, extra: &[&str]| -> Vec<f32> {
        let out = d.join(format!("{name}.mp4"));
        let lat = d.join(format!("{name}.latents.safetensors"));
        let mut args = smallest_tiny_args(out.to_str().unwrap(), "77");
        args[2] = device;
        args.extend(["--save-latents", lat.to_str().unwrap()]);
        args.extend_from_slice(extra);
        let mut cmd = Command::new(BIN);
        cmd.args(&args);
        if device == "cpu" {
            cmd.env("CONTENTV_FORCE_CPU", "1");
        }
        let o = output(&mut cmd);
        assert!(o.status.success(), "{device} {extra:?}:\n{}", text(&o));
        assert!(artifact_path(&out).exists(), "{device} {extra:?}: no video");
        contentv::model::pipeline::load_latents(&lat).unwrap().data
    };
    let base = gen("resident", &[]);
    for (name, extra) in [
        ("model", &["--offload", "model"][..]),
        ("sequential", &["--offload", "sequential"]),
        ("budget", &["--vram-budget", "1"]),
        ("tiled", &["--vae-tiling"]),
    ] {
        assert!(
            gen(name, extra) == base,
            "{device}: {extra:?} changed the latents"
        );
    }
    let q = gen("int8", &["--quantize", "int8", "--offload", "sequential"]);
    let cos = cosine(&q, &base);
    assert!(cos > 0.999, "{device}: INT8 latents cosine {cos}");
    assert!(q != base, "{device}: --quantize int8 had no effect");
    base
}

#[test]
fn memory_modes_generate_the_same_video() {
    memory_modes("cpu");
}

/// The same on the GPU (`contentv generate --device cuda` in every memory mode, weights
/// streamed through the copy stream), and the GPU's bf16 latents close to the CPU's f32 ones.
#[test]
fn memory_modes_on_the_gpu() {
    if let Some(why) = contentv::runtime::device::gpu_unavailable_reason() {
        println!("SKIP: {why}");
        return;
    }
    let gpu = memory_modes("cuda");
    let cpu = memory_modes("cpu");
    let cos = cosine(&gpu, &cpu);
    println!("GPU (bf16) vs CPU (f32) latents: cosine {cos:.6}");
    assert!(cos > 0.99, "GPU vs CPU latents cosine {cos}");
}

/// A flash-attention kernel that gives wrong numbers without an error (the emulated device's
/// CONTENTV_EMU_SKIP_KERNEL runs nothing for it) is caught by the first-use self-check
/// (ops::attention::select): a warning, and the video is the one the mma kernel makes.
/// Emulated device only (a real GPU cannot be told to skip a kernel).
#[test]
fn attention_self_check_falls_back_on_a_wrong_kernel() {
    if let Some(why) = contentv::runtime::device::gpu_unavailable_reason() {
        println!("SKIP: {why}");
        return;
    }
    let Ok(dev) = contentv::runtime::Device::cuda(0) else {
        println!("SKIP: no CUDA device");
        return;
    };
    let gpu = dev.gpu().unwrap().clone();
    if !gpu.name.contains("emulation") || !gpu.has_module("attention_hopper") {
        println!("SKIP: attention self-check fallback: needs the emulated sm_90 device");
        return;
    }
    let d = scratch("attention-self-check");
    let gen = |name: &str, env: &[(&str, &str)]| -> (Vec<f32>, String) {
        let out = d.join(format!("{name}.mp4"));
        let lat = d.join(format!("{name}.latents.safetensors"));
        let mut args = smallest_tiny_args(out.to_str().unwrap(), "5");
        args[2] = "cuda";
        args.extend(["--save-latents", lat.to_str().unwrap()]);
        let mut cmd = Command::new(BIN);
        cmd.args(&args).env_remove("CONTENTV_ATTENTION");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let o = output(&mut cmd);
        assert!(o.status.success(), "{name}:\n{}", text(&o));
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        (
            contentv::model::pipeline::load_latents(&lat).unwrap().data,
            err,
        )
    };
    let (hopper, err) = gen("hopper", &[]);
    assert!(!err.contains("failed its self-check"), "{err}");
    let (mma, _) = gen("mma", &[("CONTENTV_ATTENTION", "mma")]);
    let (broken, err) = gen(
        "broken",
        &[("CONTENTV_EMU_SKIP_KERNEL", "flash_attn_hopper_d64")],
    );
    assert!(
        err.contains("warning: the hopper attention kernel failed its self-check")
            && err.contains("using the mma kernel"),
        "{err}"
    );
    assert!(
        broken == mma,
        "the fallback did not give the mma kernel's latents"
    );
    assert!(cosine(&hopper, &mma) > 0.999, "hopper vs mma latents");
}
