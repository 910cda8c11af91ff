//! `--offload model` keeps the VAE off the device while the other models work (it is loaded
//! for each decode and freed after it), and the video is the same as with every model resident.
//! One test in its own binary: it reads the GPU pool's bytes in use, which other tests running
//! in parallel would disturb. Runs on the GPU (the emulated one in CI).
mod common;

use common::tiny_model_dir;
use contentv::cli::load::{load_pipeline_for, load_vae, RunSize};
use contentv::model::pipeline::{GenerateParams, VideoGeometry};
use contentv::runtime::residency::{MemoryOptions, Offload};

#[test]
fn gpu_model_offload_keeps_the_vae_off_the_device() {
    let Some(dev) = common::cuda_or_skip() else {
        return;
    };
    let g = dev.gpu().unwrap().clone();
    let dir = tiny_model_dir();
    let in_use = || g.pool.stats().in_use;
    let vae_bytes = load_vae(&dir, &dev, &MemoryOptions::default(), None)
        .unwrap()
        .weight_bytes() as usize;
    assert!(vae_bytes > 0);
    let params = GenerateParams {
        prompt: "a red ball".into(),
        negative_prompt: String::new(),
        geometry: VideoGeometry::new(5, 32, 32).unwrap(),
        steps: 2,
        guidance: 5.0,
        shift: None,
        seed: 7,
        init_noise: None,
        rescue_latents: None,
        cancel: None,
    };
    let mut frames = Vec::new();
    for offload in [Offload::None, Offload::Model] {
        let mem = MemoryOptions {
            offload,
            ..Default::default()
        };
        let before = in_use();
        let (pipe, _, _) = load_pipeline_for(&dir, &dev, &mem, RunSize::DEFAULT, None).unwrap();
        let loaded = in_use() - before;
        // The other models upload on first use: after loading, only the VAE can be there.
        if offload == Offload::Model {
            assert!(
                loaded < vae_bytes,
                "--offload model: {loaded} bytes on the device after loading (VAE: {vae_bytes})"
            );
        } else {
            assert!(
                loaded >= vae_bytes,
                "resident: {loaded} bytes after loading, the VAE alone is {vae_bytes}"
            );
        }
        let out = pipe.generate(&params, &mut |_| {}).unwrap();
        frames.push(out.frames.data);
        drop(pipe);
    }
    assert!(
        frames[0] == frames[1],
        "--offload model changed the decoded frames"
    );
}
