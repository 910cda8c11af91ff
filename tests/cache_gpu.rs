//! Step caching on the GPU (the emulated one in CI), tiny model, denoising loop only (no VAE, to
//! keep it short): resident and streamed, fbcache at threshold 0 gives exactly the uncached
//! latents, a cached run is deterministic, and a reused step prepares no layer and streams no weights
//! (the residency layer's counters, read around each step). One binary of its own: the counters
//! are process-wide.
mod common;

use contentv::cli::load::{load_pipeline_for, RunSize};
use contentv::model::cache::{CacheMethod, CacheSettings, StepCache, StepKind};
use contentv::model::pipeline::{initial_noise, DenoiseHooks, Pipeline, Progress, VideoGeometry};
use contentv::model::scheduler::FlowMatchEuler;
use contentv::runtime::residency::{stream_stats, MemoryOptions, Offload};

const STEPS: usize = 4;

/// Denoises with `cache`; returns the latents and, per step, the (layers prepared, copies)
/// made during it.
fn denoise(pipe: &Pipeline, cache: Option<&mut StepCache>) -> (Vec<f32>, Vec<(u64, u64)>) {
    let geom = VideoGeometry::new(5, 32, 32).unwrap();
    let shape = geom.latent_shape();
    let n: usize = shape.iter().product();
    let cond = pipe.text.encode("a red ball").unwrap();
    let uncond = pipe.text.encode("").unwrap();
    let schedule = FlowMatchEuler::from_config(&pipe.scheduler, STEPS, None).unwrap();
    let mut per_step = Vec::new();
    let mut last = stream_stats();
    let mut progress = |p: Progress| {
        if let Progress::DenoiseStart { .. } = p {
            last = stream_stats();
        }
        if let Progress::Step { .. } = p {
            let now = stream_stats();
            per_step.push((now.0 - last.0, now.1 - last.1));
            last = now;
        }
    };
    let mut times = Vec::new();
    let mut hooks = DenoiseHooks::new(&mut progress, &mut times);
    hooks.cache = cache;
    let x = pipe
        .denoise(
            &initial_noise(5, n),
            &shape,
            &cond,
            Some(&uncond),
            &schedule,
            6.0,
            hooks,
        )
        .unwrap();
    (x, per_step)
}

fn settings(method: CacheMethod, threshold: f32) -> CacheSettings {
    CacheSettings {
        method,
        threshold,
        warmup: 1,
        ratios: vec![1.0; STEPS],
    }
}

#[test]
fn gpu_cached_steps_stream_nothing_and_threshold_zero_is_exact() {
    let Some(dev) = common::cuda_or_skip() else {
        return;
    };
    let dir = common::tiny_model_dir();
    for offload in [Offload::None, Offload::Sequential] {
        let mem = MemoryOptions {
            offload,
            ..Default::default()
        };
        let (pipe, _, _) = load_pipeline_for(&dir, &dev, &mem, RunSize::DEFAULT, None).unwrap();
        let layers = pipe.transformer.blocks() as u64;
        let (full, _) = denoise(&pipe, None);
        // Threshold 0: fbcache runs the forward split into blocks, which must be the full
        // forward bit for bit (easy and mag then call the same forward as an uncached run; the
        // CPU test checks all three).
        let mut c = StepCache::new(settings(CacheMethod::FbCache, 0.0), STEPS);
        let (x, _) = denoise(&pipe, Some(&mut c));
        assert!(
            x == full,
            "{offload:?}: fbcache at threshold 0 changed the latents"
        );
        for m in [CacheMethod::Easy, CacheMethod::FbCache, CacheMethod::Mag] {
            let mut c = StepCache::new(settings(m, 5.0), STEPS);
            let (a, per_step) = denoise(&pipe, Some(&mut c));
            let kinds = c.kinds.clone();
            assert!(
                kinds.contains(&StepKind::Reused),
                "{offload:?} {m:?}: {kinds:?}"
            );
            for (i, (k, (prepared, copies))) in kinds.iter().zip(&per_step).enumerate() {
                let (want_prepared, want_copies) = match (k, m) {
                    (StepKind::Computed, _) => (layers, None),
                    // fbcache runs its first block; the others run none.
                    (StepKind::Reused, CacheMethod::FbCache) => (1, None),
                    (StepKind::Reused, _) => (0, Some(0)),
                };
                assert_eq!(
                    *prepared, want_prepared,
                    "{offload:?} {m:?} step {i} ({k:?})"
                );
                if let Some(w) = want_copies {
                    assert_eq!(
                        *copies, w,
                        "{offload:?} {m:?} step {i}: streamed on a reused step"
                    );
                }
                if offload == Offload::None {
                    assert_eq!(*copies, 0, "resident weights are never streamed");
                }
            }
            if m == CacheMethod::FbCache {
                // Deterministic: the decisions read device results (the first block's residual).
                let mut c2 = StepCache::new(settings(m, 5.0), STEPS);
                let (b, _) = denoise(&pipe, Some(&mut c2));
                assert!(
                    a == b && c2.kinds == kinds,
                    "{offload:?} {m:?}: not deterministic"
                );
            }
        }
    }
}
