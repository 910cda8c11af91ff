//! The whole pipeline on model folders whose transformer, VAE and scheduler differ from the tiny
//! model's: other latent channel counts (8), patch sizes (1), head dims (32, 16), VAE time and
//! space factors (2x / 8x and 4x / 16x), scheduler shift, and guidance 1 (no CFG pass).
//! tests/fixtures/pipeline_variants/<name>/ holds the differing components and the reference
//! run (scripts/reference/make_variant_pipeline.py); the test assembles a model folder from them
//! and the tiny model's tokenizers and text encoders, as the script did, then checks
//! * the layout read from the configs, the latents of every step and the decoded frames
//!   (in-process, CPU, f32, against the reference's f32 run);
//! * the `contentv generate` command on the same folder (CPU), from the reference's noise;
//! * the size checks that follow from the layout (multiples of spatial factor x patch,
//!   time_factor k + 1 frames).
mod common;

use std::path::PathBuf;

use common::bin::{run as cli, text as out_text};
use common::{assemble_variant as assemble, assert_close, variant_dir};
use contentv::cli::load::load_pipeline;
use contentv::model::pipeline::{
    DenoiseHooks, GenerateParams, LatentLayout, LatentPrecision, VideoGeometry,
};
use contentv::runtime::Device;
use safetensors::SafeTensors;

const REGENERATE: &str = ".venv-ref/bin/python scripts/reference/make_variant_pipeline.py";
const VARIANTS: &[&str] = &["pipeline_a", "pipeline_b"];

struct Reference {
    fx: common::Fixture,
    meta: serde_json::Value,
}

impl Reference {
    fn load(name: &str) -> Reference {
        let path = variant_dir(name).join("reference.safetensors");
        let fx = common::Fixture::from_file(&path, REGENERATE);
        let bytes = std::fs::read(&path).unwrap();
        let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
        let meta: serde_json::Value = serde_json::from_str(
            header
                .metadata()
                .as_ref()
                .and_then(|m| m.get("config"))
                .expect("reference.safetensors has no config metadata"),
        )
        .unwrap();
        Reference { fx, meta }
    }
    /// (shape, values as f32) of tensor `k`.
    fn get(&self, k: &str) -> (&[usize], &[f32]) {
        (self.fx.shape(k), self.fx.f32(k))
    }
    fn u(&self, k: &str) -> usize {
        self.meta[k].as_u64().unwrap() as usize
    }
    fn f(&self, k: &str) -> f32 {
        self.meta[k].as_f64().unwrap() as f32
    }
    fn s(&self, k: &str) -> String {
        self.meta[k].as_str().unwrap().to_string()
    }
}

#[test]
fn layout_steps_and_frames_match_reference_on_cpu() {
    for &name in VARIANTS {
        let r = Reference::load(name);
        let dir = assemble(name, "inproc");
        let layout = LatentLayout::from_model_dir(&dir).unwrap();
        assert_eq!(layout.time_factor, r.u("time_factor"), "{name}");
        assert_eq!(layout.spatial_factor, r.u("spatial_factor"), "{name}");
        assert_eq!(
            layout.patch as u64,
            r.meta["dit"]["patch_size"].as_u64().unwrap()
        );
        let geom =
            VideoGeometry::with_layout(layout, r.u("frames"), r.u("height"), r.u("width")).unwrap();
        let (noise_shape, noise) = r.get("noise");
        assert_eq!(
            &geom.latent_shape()[..],
            noise_shape,
            "{name}: latent shape"
        );

        let device = Device::Cpu;
        // The CLI's loader: f32 latents on the CPU, the reference's bf16 arithmetic on CUDA.
        let (pipe, _) = load_pipeline(&dir, &device, &Default::default()).unwrap();
        assert_eq!(pipe.precision, LatentPrecision::F32);
        let steps = r.u("steps");
        let schedule =
            contentv::model::scheduler::FlowMatchEuler::from_config(&pipe.scheduler, steps, None)
                .unwrap();
        assert_close(
            &format!("{name} timesteps"),
            &schedule.timesteps,
            r.get("timesteps").1,
            1e-4,
            1e-6,
        );
        let guidance = r.f("guidance");
        let cond = pipe.text.encode(&r.s("prompt")).unwrap();
        let uncond = pipe.text.encode(&r.s("negative_prompt")).unwrap();
        let mut rec: Vec<(String, Vec<f32>)> = Vec::new();
        let mut record = |k: &str, v: &[f32]| rec.push((k.to_string(), v.to_vec()));
        let mut times = Vec::new();
        let shape = geom.latent_shape();
        let x = pipe
            .denoise(
                noise,
                &shape,
                &cond,
                Some(&uncond),
                &schedule,
                guidance,
                DenoiseHooks {
                    progress: &mut |_| {},
                    record: Some(&mut record),
                    step_times: &mut times,
                    cancel: None,
                    cache: None,
                },
            )
            .unwrap();
        let mut checked = 0;
        for (k, v) in &rec {
            if !(k.ends_with(".latents") || k.ends_with(".v")) {
                continue;
            }
            let want = r.get(&format!("f32.{k}")).1;
            let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
            assert_close(
                &format!("{name} f32.{k}"),
                v,
                want,
                2e-4 * scale.max(1.0),
                1e-3,
            );
            checked += 1;
        }
        assert_eq!(checked, 2 * steps, "{name}: recorded steps");
        let frames = pipe.decode(&x, &shape).unwrap();
        let (fshape, want) = r.get("f32.frames_u8");
        assert_eq!(
            &[frames.frames, frames.height, frames.width, 3][..],
            fshape,
            "{name}: frames shape"
        );
        common::check_frames(name, &frames.data, want.iter().map(|&v| v as i64));

        // The same through generate(), from the same noise.
        let out = pipe
            .generate(
                &GenerateParams {
                    prompt: r.s("prompt"),
                    negative_prompt: r.s("negative_prompt"),
                    geometry: geom,
                    steps,
                    guidance,
                    shift: None,
                    seed: 0,
                    init_noise: Some(noise.to_vec()),
                    rescue_latents: None,
                    cancel: None,
                },
                &mut |_| {},
            )
            .unwrap();
        assert_eq!(out.latents, x, "{name}: generate() == denoise()");
    }
}

#[test]
fn generate_command_on_variant_models() {
    for &name in VARIANTS {
        let r = Reference::load(name);
        let dir = assemble(name, "cli");
        let scratch = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join("pipeline-variants-cli")
            .join(name);
        let _ = std::fs::remove_dir_all(&scratch);
        std::fs::create_dir_all(&scratch).unwrap();
        let noise = variant_dir(name).join("reference.safetensors");
        let lat = scratch.join("latents.safetensors");
        let video = scratch.join("out.mp4");
        let (frames, w, h) = (
            r.u("frames").to_string(),
            r.u("width").to_string(),
            r.u("height").to_string(),
        );
        let (steps, g) = (r.u("steps").to_string(), r.f("guidance").to_string());
        let (prompt, negative) = (r.s("prompt"), r.s("negative_prompt"));
        let dir_s = dir.to_str().unwrap();
        let base = [
            "generate",
            "--model",
            dir_s,
            "--prompt",
            &prompt,
            "--negative-prompt",
            &negative,
            "--steps",
            &steps,
            "--guidance",
            &g,
            "--device",
            "cpu",
        ];
        let mut args: Vec<&str> = base.to_vec();
        args.extend([
            "--frames",
            &frames,
            "--width",
            &w,
            "--height",
            &h,
            "--init-noise",
            noise.to_str().unwrap(),
            "--save-latents",
            lat.to_str().unwrap(),
            "--output",
            video.to_str().unwrap(),
            "--json",
        ]);
        let o = cli(&args);
        assert!(o.status.success(), "{name}: {}", out_text(&o));
        let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
            panic!("{name}: --json output is not JSON ({e}): {}", out_text(&o))
        });
        println!("{name}: {summary}");
        let saved = contentv::model::pipeline::load_latents(&lat).unwrap();
        let last = format!("f32.step{}.latents", r.u("steps") - 1);
        let (want_shape, want) = r.get(&last);
        assert_eq!(&saved.shape, want_shape, "{name}: saved latent shape");
        let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
        assert_close(
            &format!("{name} CLI latents"),
            &saved.data,
            want,
            2e-4 * scale.max(1.0),
            1e-3,
        );
        let written = contentv::io::video::artifact_path(&video);
        assert!(
            written.exists(),
            "{name}: no output at {}",
            written.display()
        );

        // Sizes are checked against this model's layout, not ContentV's.
        let layout = LatentLayout::from_model_dir(&dir).unwrap();
        let m = layout.size_multiple();
        let bad_w = (m + m / 2).to_string();
        let mut args: Vec<&str> = base.to_vec();
        args.extend(["--frames", &frames, "--width", &bad_w, "--height", &h]);
        args.extend([
            "--output",
            scratch.join("bad.mp4").to_str().unwrap().to_owned().leak(),
        ]);
        let o = cli(&args);
        assert!(
            !o.status.success(),
            "{name}: width {bad_w} accepted: {}",
            out_text(&o)
        );
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains(&format!("multiple of {m}")),
            "{name}: the error should name the multiple {m}: {err}"
        );
        assert!(!scratch.join("bad.mp4").exists());
    }
}
