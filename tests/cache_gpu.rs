//! Step caching on the GPU (the emulated one in CI), denoising loop only (no VAE, to keep it
//! short), in every memory mode: resident, `--offload model`, `--offload sequential`, a VRAM
//! budget and int8, on the tiny model with a 3-layer transformer (pipeline_b), three steps of
//! the tiniest video. Threshold 0 (fbcache) gives exactly the uncached latents (streamed, whose
//! cached runs equal the resident ones); in every mode a cached run finishes, computes what the rule says, prepares no
//! layer and streams no weights on a reused step (the residency layer's counters, read around
//! each step) and is deterministic (bit for bit the resident mode's run; int8 its own second
//! run). The method x threshold grid and guidance are on the CPU (tests/cache.rs), where they
//! are cheap. One binary of its own: the counters are process-wide.
mod common;

use std::time::Instant;

use contentv::cli::load::{load_pipeline_for, RunSize};
use contentv::model::cache::{CacheMethod, CacheSettings, StepCache, StepKind};
use contentv::model::pipeline::{
    initial_noise, DenoiseHooks, Pipeline, Progress, PromptEmbeds, VideoGeometry,
};
use contentv::model::scheduler::FlowMatchEuler;
use contentv::runtime::residency::{stream_stats, MemoryOptions, Offload};

const STEPS: usize = 3;
/// No guidance pass (batch 1): the joint decision for both passes is checked on the CPU.
const GUIDANCE: f32 = 1.0;

/// The tiniest video (one latent frame of 2 x 2 tokens).
fn geometry() -> VideoGeometry {
    VideoGeometry::new(1, 32, 32).unwrap()
}

/// One denoising run: the latents, per step the (layers prepared, copies) made during it, and
/// the step cache's decisions (empty without a cache).
struct Run {
    latents: Vec<f32>,
    per_step: Vec<(u64, u64)>,
    kinds: Vec<StepKind>,
}

fn denoise(pipe: &Pipeline, text: &PromptEmbeds, s: Option<CacheSettings>) -> Run {
    let shape = geometry().latent_shape();
    let n: usize = shape.iter().product();
    let schedule = FlowMatchEuler::from_config(&pipe.scheduler, STEPS, None).unwrap();
    let mut cache = s.map(|s| StepCache::new(s, STEPS));
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
    hooks.cache = cache.as_mut();
    let latents = pipe
        .denoise(
            &initial_noise(5, n),
            &shape,
            text,
            None,
            &schedule,
            GUIDANCE,
            hooks,
        )
        .unwrap();
    Run {
        latents,
        per_step,
        kinds: cache.map(|c| c.kinds).unwrap_or_default(),
    }
}

fn settings(method: CacheMethod, threshold: f32) -> CacheSettings {
    CacheSettings {
        method,
        threshold,
        warmup: 1,
        ratios: vec![1.0; STEPS],
    }
}

/// Checks one cached run's per-step work against its decisions: a computed step prepares every
/// layer, a reused fbcache step its first block only, a reused easy / mag step none and copies
/// nothing; resident weights are never copied.
fn check_work(mode: &str, m: CacheMethod, r: &Run, layers: u64, streams: bool) {
    assert_eq!(r.kinds.len(), STEPS, "{mode} {m:?}");
    assert!(
        r.kinds.contains(&StepKind::Reused),
        "{mode} {m:?}: {:?}",
        r.kinds
    );
    for (i, (k, (prepared, copies))) in r.kinds.iter().zip(&r.per_step).enumerate() {
        let (want_prepared, want_copies) = match (k, m) {
            (StepKind::Computed, _) => (layers, None),
            (StepKind::Reused, CacheMethod::FbCache) => (1, None),
            (StepKind::Reused, _) => (0, Some(0)),
        };
        assert_eq!(*prepared, want_prepared, "{mode} {m:?} step {i} ({k:?})");
        if let Some(w) = want_copies {
            assert_eq!(
                *copies, w,
                "{mode} {m:?} step {i}: streamed on a reused step"
            );
        }
        if !streams {
            assert_eq!(*copies, 0, "{mode}: resident weights are never streamed");
        }
    }
}

/// A memory mode and what its runs are compared with.
struct Mode {
    name: &'static str,
    mem: MemoryOptions,
    /// Whether computed steps stream weights.
    streams: bool,
    /// The transformer computes as in the resident mode (same kernels, same weights): its runs
    /// must equal the resident mode's bit for bit (int8 does not).
    as_resident: bool,
}

#[test]
fn gpu_cached_steps_stream_nothing_and_threshold_zero_is_exact() {
    let Some(dev) = common::cuda_or_skip() else {
        return;
    };
    // pipeline_b: the tiny model with a 3-layer, 16-wide transformer. Three streamed layers
    // do not fit the ring's two slots, so every computed step copies weights (the tiny
    // model's two layers would stay in the ring after the first step and copy nothing).
    let dir = common::assemble_variant("pipeline_b", "cache_gpu");
    let size = RunSize::of(&geometry(), GUIDANCE).with_cache(CacheMethod::FbCache);
    let mode = |name, offload, int8, vram_budget, streams, as_resident| Mode {
        name,
        mem: MemoryOptions {
            offload,
            int8,
            vram_budget,
            ..Default::default()
        },
        streams,
        as_resident,
    };
    // With three layers any budget keeps all resident (one resident layer and a ring of two
    // slots cost as much, scripts/byte-identity.sh): the budgeted planner and the pool's limit
    // with the fbcache residual counted, no streaming.
    let modes = [
        mode("resident", Offload::None, false, None, false, true),
        mode("offload model", Offload::Model, false, None, false, true),
        mode(
            "offload sequential",
            Offload::Sequential,
            false,
            None,
            true,
            true,
        ),
        mode("int8", Offload::None, true, None, false, false),
        mode(
            "vram budget",
            Offload::None,
            false,
            Some(1 << 30),
            false,
            true,
        ),
    ];
    let mut resident: Option<(Run, Run)> = None; // the resident mode's mag and fbcache runs
    use StepKind::{Computed as C, Reused as R};
    for m in modes {
        let (name, streams) = (m.name, m.streams);
        let t = Instant::now();
        let (pipe, _, plan) = load_pipeline_for(&dir, &dev, &m.mem, size, None).unwrap();
        let layers = pipe.transformer.blocks() as u64;
        assert_eq!(layers, 3);
        assert!(
            plan.describe().is_some_and(|l| l.contains("step cache: ")),
            "{name}: the plan says the step cache's memory: {:?}",
            plan.describe()
        );
        let text = pipe.text.encode("a red ball").unwrap();
        // Threshold 0 (streamed; its runs below equal the resident mode's): every step
        // computed through the block-split forward, which must be the full forward bit for bit
        // (easy and mag compute with the same forward as an uncached run; the CPU test checks
        // all three).
        if streams {
            let full = denoise(&pipe, &text, None);
            if streams {
                assert!(
                    full.per_step.iter().all(|s| s.1 >= layers),
                    "{name}: every uncached step streams every layer: {:?}",
                    full.per_step
                );
            }
            let zero = denoise(&pipe, &text, Some(settings(CacheMethod::FbCache, 0.0)));
            assert_eq!(zero.kinds, [C; STEPS], "{name}");
            assert!(
                zero.latents == full.latents,
                "{name}: fbcache at threshold 0 changed the latents"
            );
        }
        // mag (ratios 1: no error accumulates, at most K = 2 reused in a row): step 0 (the
        // warm-up) and the last computed, the one between reused.
        let mag = denoise(&pipe, &text, Some(settings(CacheMethod::Mag, 5.0)));
        assert_eq!(mag.kinds, [C, R, C], "{name}: mag's rule");
        check_work(name, CacheMethod::Mag, &mag, layers, streams);
        // fbcache decides on its block-0 signal, a device result (not for offload model and
        // int8: the first computes the transformer as resident does, the second is checked
        // for determinism with mag).
        let fb = (name != "offload model" && name != "int8").then(|| {
            let fb = denoise(&pipe, &text, Some(settings(CacheMethod::FbCache, 5.0)));
            check_work(name, CacheMethod::FbCache, &fb, layers, streams);
            fb
        });
        // Deterministic: the same as the resident mode's runs, bit for bit (int8: its own
        // second run).
        match (&resident, m.as_resident) {
            (None, _) => resident = Some((mag, fb.unwrap())),
            (Some((rm, rf)), true) => {
                assert!(
                    mag.latents == rm.latents,
                    "{name}: mag's latents differ from the resident run's"
                );
                if let Some(fb) = &fb {
                    assert!(
                        fb.latents == rf.latents && fb.kinds == rf.kinds,
                        "{name}: fbcache differs from the resident run ({:?} vs {:?})",
                        fb.kinds,
                        rf.kinds
                    );
                }
            }
            (Some(_), false) => {
                let again = denoise(&pipe, &text, Some(settings(CacheMethod::Mag, 5.0)));
                assert!(mag.latents == again.latents, "{name}: not deterministic");
            }
        }
        println!("{name}: {:.1}s", t.elapsed().as_secs_f64());
    }
}
