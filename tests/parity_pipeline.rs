//! The pipeline on the tiny model against the reference fixture (tests/fixtures/pipeline.safetensors):
//! 32x48, 9 frames, 3 steps, CFG 6, shift 3, from the fixture's initial noise, on the CPU (f32
//! reference path, compared with the fixture's all-f32 run `f32.*`).
//!
//! The bf16 arithmetic of the loop (guidance combine, Euler step) is checked bit-exactly against
//! the fixture's bf16 run `bf16.*`, independent of the models.
mod common;

use common::{assert_close, tiny_model_dir, Fixture};
use contentv::cli::load::load_pipeline;
use contentv::model::pipeline::{
    cfg_combine_bf16, cfg_combine_f32, decode_with, DenoiseHooks, LatentPrecision,
};
use contentv::model::scheduler::{FlowMatchEuler, SchedulerConfig};
use contentv::model::vae::{VaeDecoder, VaeOptions};
use contentv::runtime::Device;

const STEPS: usize = 3;

fn fx() -> Fixture {
    Fixture::load("pipeline")
}

fn pipeline_params() -> (usize, usize, usize, f32) {
    let m = &common::manifest()["pipeline"];
    let u = |k: &str| m[k].as_u64().unwrap() as usize;
    assert_eq!(u("steps"), STEPS);
    (
        u("num_frames"),
        u("height"),
        u("width"),
        m["guidance_scale"].as_f64().unwrap() as f32,
    )
}

fn prompts() -> (String, String) {
    let p = common::manifest()["encoder_prompts"].as_array().unwrap();
    (
        p[0].as_str().unwrap().to_string(),
        p[1].as_str().unwrap().to_string(),
    )
}

fn schedule() -> FlowMatchEuler {
    let cfg = SchedulerConfig::from_model_dir(&tiny_model_dir()).unwrap();
    FlowMatchEuler::from_config(&cfg, STEPS, None).unwrap()
}

#[test]
fn sigmas_match() {
    let f = fx();
    let s = schedule();
    let want = f.f32("sigmas");
    assert_eq!(s.sigmas.len(), want.len());
    for (g, w) in s.sigmas.iter().zip(want) {
        assert_eq!(g.to_bits(), w.to_bits(), "sigma {g} vs {w}");
    }
}

/// Guidance combine and Euler step in bf16 reproduce the reference bit for bit, and the f32
/// versions reproduce the f32 run, given the reference's velocities.
#[test]
fn guidance_and_step_arithmetic() {
    let f = fx();
    let (_, _, _, g) = pipeline_params();
    let s = schedule();
    for (prec, tag) in [
        (LatentPrecision::Bf16, "bf16"),
        (LatentPrecision::F32, "f32"),
    ] {
        let mut x = f.f32("noise").to_vec();
        for i in 0..STEPS {
            let mut v = f.f32(&format!("{tag}.step{i}.v_uncond")).to_vec();
            let vc = f.f32(&format!("{tag}.step{i}.v_cond"));
            let want_v = f.f32(&format!("{tag}.step{i}.v"));
            let want_x = f.f32(&format!("{tag}.step{i}.latents"));
            match prec {
                LatentPrecision::Bf16 => {
                    cfg_combine_bf16(&mut v, vc, g);
                    let bad = (0..v.len())
                        .filter(|&k| v[k].to_bits() != want_v[k].to_bits())
                        .count();
                    assert_eq!(
                        bad, 0,
                        "bf16 guidance combine, step {i}: {bad} values differ"
                    );
                    s.step_bf16(i, &mut x, &v);
                    let bad = (0..x.len())
                        .filter(|&k| x[k].to_bits() != want_x[k].to_bits())
                        .count();
                    assert_eq!(bad, 0, "bf16 Euler step {i}: {bad} values differ");
                }
                LatentPrecision::F32 => {
                    cfg_combine_f32(&mut v, vc, g);
                    assert_close(&format!("f32 step{i}.v"), &v, want_v, 1e-5, 1e-5);
                    s.step_f32(i, &mut x, &v);
                    assert_close(&format!("f32 step{i}.latents"), &x, want_x, 1e-5, 1e-5);
                    // continue from the reference's latents so errors do not accumulate
                    x = want_x.to_vec();
                }
            }
        }
    }
}

/// De-normalisation + VAE decode + uint8 conversion from the reference's final f32 latents.
#[test]
fn decode_matches_reference_frames() {
    let f = fx();
    let vae = VaeDecoder::from_dir(
        &tiny_model_dir().join("vae"),
        &Device::Cpu,
        VaeOptions::default(),
    )
    .unwrap();
    let lat = f.f32("f32.step2.latents");
    let shape = f.shape("f32.step2.latents").to_vec();
    let frames = decode_with(&vae, &Device::Cpu, lat, &shape).unwrap();
    let want = f.ints("f32.frames_u8");
    assert_eq!(
        &[frames.frames, frames.height, frames.width, 3][..],
        f.shape("f32.frames_u8")
    );
    common::check_frames("frames", &frames.data, want.iter().copied());
}

/// The whole loop with the real tiny models: 3 denoising steps from the fixture's noise, then the
/// decoded frames.
#[test]
fn three_steps_and_frames_match_reference_on_cpu() {
    let f = fx();
    let (frames_n, h, w, g) = pipeline_params();
    let (prompt, negative) = prompts();
    let dir = tiny_model_dir();
    let device = Device::Cpu;
    // The CLI's loader: f32 latents on the CPU, the reference's bf16 arithmetic on CUDA.
    let (pipe, _) = load_pipeline(&dir, &device, &Default::default()).unwrap();
    assert_eq!(pipe.precision, LatentPrecision::F32);
    let geom = contentv::model::pipeline::VideoGeometry::new(frames_n, h, w).unwrap();
    let shape = geom.latent_shape();
    assert_eq!(&shape[..], f.shape("noise"));
    let cond = pipe.text.encode(&prompt).unwrap();
    let uncond = pipe.text.encode(&negative).unwrap();
    let mut rec: Vec<(String, Vec<f32>)> = Vec::new();
    let mut record = |k: &str, v: &[f32]| rec.push((k.to_string(), v.to_vec()));
    let mut times = Vec::new();
    let x = pipe
        .denoise(
            f.f32("noise"),
            &shape,
            &cond,
            Some(&uncond),
            &schedule(),
            g,
            DenoiseHooks {
                progress: &mut |_| {},
                record: Some(&mut record),
                step_times: &mut times,
                cancel: None,
                cache: None,
            },
        )
        .unwrap();
    for (k, v) in &rec {
        let want = f.f32(&format!("f32.{k}"));
        let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
        assert_close(&format!("f32.{k}"), v, want, 2e-3 * scale.max(1.0), 1e-3);
    }
    let frames = pipe.decode(&x, &shape).unwrap();
    common::check_frames(
        "frames",
        &frames.data,
        f.ints("f32.frames_u8").iter().copied(),
    );
}

/// The whole pipeline on the GPU (bf16 encoders and DiT, bf16 latents, the default bf16 VAE) against the
/// reference's bf16 run, from the fixture's noise.
#[test]
fn three_steps_and_frames_match_reference_on_gpu() {
    let Some(device) = common::cuda_or_skip() else {
        return;
    };
    let f = fx();
    let (frames_n, h, w, g) = pipeline_params();
    let (prompt, negative) = prompts();
    let dir = tiny_model_dir();
    // The CLI's loader: f32 latents on the CPU, the reference's bf16 arithmetic on CUDA.
    let (pipe, _) = load_pipeline(&dir, &device, &Default::default()).unwrap();
    assert_eq!(pipe.precision, LatentPrecision::Bf16);
    let params = contentv::model::pipeline::GenerateParams {
        prompt,
        negative_prompt: negative,
        geometry: contentv::model::pipeline::VideoGeometry::new(frames_n, h, w).unwrap(),
        steps: STEPS,
        guidance: g,
        shift: None,
        seed: 0,
        init_noise: Some(f.f32("noise").to_vec()),
        rescue_latents: None,
        cancel: None,
    };
    let out = pipe.generate(&params, &mut |_| {}).unwrap();
    let err = common::manifest_f64("/pipeline_bf16_vs_f32/step2.latents/max_abs") as f32;
    common::assert_close(
        "bf16.step2.latents (GPU)",
        &out.latents,
        f.f32("bf16.step2.latents"),
        common::bf16_atol(err, 0.05),
        0.02,
    );
    let want = f.f32("bf16.frames_u8");
    let mean: f64 = out
        .frames
        .data
        .iter()
        .zip(want)
        .map(|(a, b)| (*a as f64 - *b as f64).abs())
        .sum::<f64>()
        / want.len() as f64;
    println!("GPU frames vs bf16 reference: mean |diff| {mean:.3} (uint8)");
    assert!(mean < 2.0, "mean uint8 difference {mean}");
}
