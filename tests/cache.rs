//! Step caching (model::cache, issue 27): each rule's decisions on a stand-in denoiser whose
//! per-step change is known equal the sequence worked out by hand from the method's definition;
//! the warm-up and last-step rules; one decision per step for both guidance passes; a threshold
//! of 0 gives the uncached output byte for byte on the tiny model; cached runs are deterministic
//! and compute exactly the steps they report; the calibration file round trip and bad files.
mod common;

use std::cell::{Cell, RefCell};
use std::ops::Range;
use std::rc::Rc;

use contentv::cli::calibrate::calibration_path;
use contentv::cli::load::load_pipeline;
use contentv::error::Result;
use contentv::model::cache::{
    CacheMethod, CacheOptions, CacheSettings, MagCalibration, CALIBRATION_FORMAT,
};
use contentv::model::pipeline::{
    BlockState, Denoiser, FrameDecoder, GenerateParams, LatentPrecision, Pipeline, PromptEmbeds,
    PromptEncoding, StepInput, VideoGeometry, POOLED_DIM, TEXT_DIM, TEXT_TOKENS,
};
use contentv::model::scheduler::SchedulerConfig;
use contentv::runtime::{DType, Device, Tensor};

struct ZeroText;
impl PromptEncoding for ZeroText {
    fn encode(&self, _p: &str) -> Result<PromptEmbeds> {
        Ok(PromptEmbeds {
            ctx: Tensor::zeros(&[1, TEXT_TOKENS, TEXT_DIM], DType::F32, &Device::Cpu)?,
            pooled: Tensor::zeros(&[1, POOLED_DIM], DType::F32, &Device::Cpu)?,
        })
    }
}
struct BlackVae;
impl FrameDecoder for BlackVae {
    fn decode(&self, x: &Tensor) -> Result<Tensor> {
        let s = x.shape();
        Tensor::zeros(
            &[1, 3, 1 + 4 * (s[2] - 1), 8 * s[3], 8 * s[4]],
            DType::F32,
            &Device::Cpu,
        )
    }
}

/// A stand-in transformer of two "blocks" with a known change per step: the output is the
/// constant `out[step]` (whatever the input), and block 0 adds `r1[step]` to every hidden value
/// (its residual). Counts the full forwards, the runs of block 1 and the batch sizes seen.
struct StandIn {
    out: Vec<f32>,
    r1: Vec<f32>,
    forwards: Cell<usize>,
    rest_runs: Cell<usize>,
    batches: RefCell<Vec<usize>>,
}

impl StandIn {
    fn new(out: Vec<f32>, r1: Vec<f32>) -> StandIn {
        StandIn {
            out,
            r1,
            forwards: Cell::new(0),
            rest_runs: Cell::new(0),
            batches: RefCell::new(Vec::new()),
        }
    }
}

impl Denoiser for StandIn {
    fn forward(&self, x: &Tensor, _t: &[f32], _c: &Tensor, _p: &Tensor) -> Result<Tensor> {
        // Without a step index the stand-in has no schedule: never called by the loop.
        Tensor::zeros(x.shape(), DType::F32, &Device::Cpu)
    }
    fn forward_step(
        &self,
        step: usize,
        x: &Tensor,
        _t: &[f32],
        _c: &Tensor,
        _p: &Tensor,
    ) -> Result<Tensor> {
        self.forwards.set(self.forwards.get() + 1);
        self.batches.borrow_mut().push(x.dim(0));
        let n: usize = x.shape().iter().product();
        Tensor::from_f32(vec![self.out[step]; n], x.shape(), &Device::Cpu)
    }
    fn blocks(&self) -> usize {
        2
    }
    fn begin_blocks(&self, s: &StepInput) -> Result<BlockState> {
        let n: usize = s.x.shape().iter().product();
        let b = s.x.dim(0);
        Ok(BlockState {
            hidden: Tensor::from_f32(s.x.to_vec_f32()?, &[b, n / b, 1], &Device::Cpu)?,
            text: Tensor::zeros(&[b, 1, 1], DType::F32, &Device::Cpu)?,
            cond: Tensor::zeros(&[b, 1], DType::F32, &Device::Cpu)?,
        })
    }
    fn run_blocks(
        &self,
        s: &StepInput,
        mut st: BlockState,
        blocks: Range<usize>,
    ) -> Result<BlockState> {
        let mut h = st.hidden.to_vec_f32()?;
        for j in blocks {
            if j == 0 {
                h.iter_mut().for_each(|v| *v += self.r1[s.step]);
            } else {
                self.rest_runs.set(self.rest_runs.get() + 1);
                self.batches.borrow_mut().push(s.x.dim(0));
                // block 1: the output becomes out[step] + hidden * 0
                h.iter_mut().for_each(|v| *v = self.out[s.step] + 0.0 * *v);
            }
        }
        st.hidden = Tensor::from_f32(h, st.hidden.shape(), &Device::Cpu)?;
        Ok(st)
    }
    fn finish_blocks(&self, s: &StepInput, st: &BlockState) -> Result<Tensor> {
        st.hidden.reshape(s.x.shape())
    }
}

/// The pipeline's transformer: the test keeps a second handle on the stand-in's counters.
struct Shared(Rc<StandIn>);
impl Denoiser for Shared {
    fn forward(&self, x: &Tensor, t: &[f32], c: &Tensor, p: &Tensor) -> Result<Tensor> {
        self.0.forward(x, t, c, p)
    }
    fn forward_step(
        &self,
        i: usize,
        x: &Tensor,
        t: &[f32],
        c: &Tensor,
        p: &Tensor,
    ) -> Result<Tensor> {
        self.0.forward_step(i, x, t, c, p)
    }
    fn blocks(&self) -> usize {
        self.0.blocks()
    }
    fn begin_blocks(&self, s: &StepInput) -> Result<BlockState> {
        self.0.begin_blocks(s)
    }
    fn run_blocks(&self, s: &StepInput, st: BlockState, b: Range<usize>) -> Result<BlockState> {
        self.0.run_blocks(s, st, b)
    }
    fn finish_blocks(&self, s: &StepInput, st: &BlockState) -> Result<Tensor> {
        self.0.finish_blocks(s, st)
    }
}

fn stand_in_pipe(d: Rc<StandIn>) -> Pipeline {
    Pipeline {
        device: Device::Cpu,
        text: Box::new(ZeroText),
        transformer: Box::new(Shared(d)),
        vae: Box::new(BlackVae),
        scheduler: SchedulerConfig::default(),
        precision: LatentPrecision::F32,
        offload_models: false,
    }
}

fn params(steps: usize, guidance: f32) -> GenerateParams {
    GenerateParams {
        prompt: "x".into(),
        negative_prompt: String::new(),
        geometry: VideoGeometry::new(5, 16, 16).unwrap(),
        steps,
        guidance,
        shift: None,
        seed: 3,
        init_noise: None,
        rescue_latents: None,
        cancel: None,
    }
}

fn settings(method: CacheMethod, threshold: f32, warmup: usize, ratios: Vec<f32>) -> CacheSettings {
    CacheSettings {
        method,
        threshold,
        warmup,
        ratios,
    }
}

/// Runs the stand-in; returns (computed steps, forwards, runs of the remaining blocks, batches).
fn run_stand_in(
    out: Vec<f32>,
    r1: Vec<f32>,
    guidance: f32,
    s: &CacheSettings,
) -> (Vec<usize>, usize, usize, Vec<usize>) {
    let steps = out.len();
    let d = Rc::new(StandIn::new(out, r1));
    let pipe = stand_in_pipe(d.clone());
    let g = pipe
        .generate_cached(&params(steps, guidance), Some(s), &mut |_| {})
        .unwrap();
    let c = g.cache.unwrap();
    assert_eq!(c.steps, steps);
    let batches = d.batches.borrow().clone();
    (c.computed, d.forwards.get(), d.rest_runs.get(), batches)
}

#[test]
fn easy_decisions_equal_the_hand_worked_sequence() {
    // The output is constant, so every computed step measures k = |out - out_c| / |x - x_c| = 0:
    // from step 2 on (k known) the accumulated estimate stays 0 < 0.2 and every step is reused,
    // except the warm-up (step 0) and the last step. Step 1 computes (no k yet).
    let out = vec![0.5; 6];
    let s = settings(CacheMethod::Easy, 0.2, 1, vec![]);
    let (computed, forwards, _, batches) = run_stand_in(out.clone(), vec![0.0; 6], 6.0, &s);
    assert_eq!(computed, vec![0, 1, 5]);
    assert_eq!(forwards, 3, "one batch-2 forward per computed step");
    assert!(
        batches.iter().all(|&b| b == 2),
        "cond and uncond decided together: {batches:?}"
    );
    // A warm-up of 3: steps 0-2 computed, 3-4 reused, 5 (last) computed.
    let s = settings(CacheMethod::Easy, 0.2, 3, vec![]);
    assert_eq!(
        run_stand_in(out.clone(), vec![0.0; 6], 6.0, &s).0,
        vec![0, 1, 2, 5]
    );
    // Threshold 0: every step computed.
    let s = settings(CacheMethod::Easy, 0.0, 1, vec![]);
    assert_eq!(
        run_stand_in(out, vec![0.0; 6], 6.0, &s).0,
        (0..6).collect::<Vec<_>>()
    );
}

#[test]
fn fbcache_decisions_equal_the_hand_worked_sequence() {
    // First-block residuals 1, 1, 1.02, 1.5, 1.51, 1 against the last computed one:
    // step 1: |1 - 1| / 1 = 0 < 0.05 reuse; step 2: 0.02 reuse; step 3: 0.5 compute (reference
    // 1.5); step 4: 0.01 / 1.5 = 0.0067 reuse; step 5: last, computed.
    let r1 = vec![1.0, 1.0, 1.02, 1.5, 1.51, 1.0];
    let s = settings(CacheMethod::FbCache, 0.05, 1, vec![]);
    let (computed, forwards, rest, batches) = run_stand_in(vec![0.25; 6], r1.clone(), 6.0, &s);
    assert_eq!(computed, vec![0, 3, 5]);
    assert_eq!(forwards, 0, "fbcache runs the blocks itself");
    assert_eq!(rest, 3, "the remaining blocks run only on computed steps");
    assert!(batches.iter().all(|&b| b == 2));
    let s = settings(CacheMethod::FbCache, 0.0, 1, vec![]);
    assert_eq!(
        run_stand_in(vec![0.25; 6], r1, 1.0, &s).0,
        (0..6).collect::<Vec<_>>()
    );
}

#[test]
fn mag_decisions_equal_the_hand_worked_sequence() {
    // Ratios 1, .99, .98, .9, 1, 1 (threshold 0.12, K 2, warm-up 1):
    // step 1: prod .99, err .01 reuse; step 2: prod .9702, err .0398 reuse (2 in a row);
    // step 3: prod .8732, err .1666 >= .12 compute, reset; step 4: prod 1, err 0 reuse;
    // step 5: last, computed.
    let ratios = vec![1.0, 0.99, 0.98, 0.9, 1.0, 1.0];
    let s = settings(CacheMethod::Mag, 0.12, 1, ratios.clone());
    let (computed, forwards, _, _) = run_stand_in(vec![0.5; 6], vec![0.0; 6], 6.0, &s);
    assert_eq!(computed, vec![0, 3, 5]);
    assert_eq!(forwards, 3);
    // K = 2: with every ratio 1 the error stays 0, yet at most two steps in a row are reused.
    let s = settings(CacheMethod::Mag, 0.12, 1, vec![1.0; 8]);
    assert_eq!(
        run_stand_in(vec![0.5; 8], vec![0.0; 8], 6.0, &s).0,
        vec![0, 3, 6, 7]
    );
}

#[test]
fn reused_steps_add_the_cached_transformation() {
    // Constant output c: a reused step's output x + (c - x_c) differs from c by x - x_c, so
    // the cached run's latents differ from the full run's but stay finite and deterministic.
    let s = settings(CacheMethod::Easy, 0.2, 1, vec![]);
    let run = || {
        let pipe = stand_in_pipe(Rc::new(StandIn::new(vec![0.5; 6], vec![0.0; 6])));
        pipe.generate_cached(&params(6, 6.0), Some(&s), &mut |_| {})
            .unwrap()
            .latents
    };
    let (a, b) = (run(), run());
    assert_eq!(a, b, "deterministic");
    let full = stand_in_pipe(Rc::new(StandIn::new(vec![0.5; 6], vec![0.0; 6])))
        .generate_cached(&params(6, 6.0), None, &mut |_| {})
        .unwrap()
        .latents;
    assert_ne!(a, full, "steps were reused");
    assert!(a.iter().all(|v| v.is_finite()));
}

#[test]
fn bad_cache_options_name_the_flag() {
    let o = |m, t, w| CacheOptions {
        method: m,
        threshold: t,
        warmup: w,
    };
    for t in [-0.1, f32::NAN, f32::INFINITY, 11.0] {
        let e = o(CacheMethod::Easy, Some(t), None)
            .check(10, "--cache")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--cache threshold") && e.contains("from 0 to 10"),
            "{e}"
        );
    }
    let e = o(CacheMethod::Mag, None, Some(10))
        .check(10, "--cache")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("warm-up 10") && e.contains("number of steps (10)"),
        "{e}"
    );
    let e = o(CacheMethod::Off, Some(0.1), None)
        .check(10, "--cache")
        .unwrap_err()
        .to_string();
    assert!(e.contains("without a cache method"), "{e}");
    let e = CacheOptions::parse_method("tea", "--cache")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("\"tea\"") && e.contains("easy, fbcache, mag"),
        "{e}"
    );
    // Defaults: each method's own threshold and warm-up.
    let s = o(CacheMethod::Easy, None, None)
        .settings(50, vec![])
        .unwrap();
    assert_eq!((s.threshold, s.warmup), (0.2, 8));
    let s = o(CacheMethod::FbCache, None, None)
        .settings(50, vec![])
        .unwrap();
    assert_eq!((s.threshold, s.warmup), (0.05, 1));
    let s = o(CacheMethod::Mag, None, None)
        .settings(50, vec![1.0; 50])
        .unwrap();
    assert_eq!((s.threshold, s.warmup), (0.12, 10));
}

#[test]
fn calibration_round_trip_and_bad_files() {
    let dir = std::env::temp_dir().join(format!("contentv-cal-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let ts = vec![1000.0, 750.0, 500.0];
    let cal = MagCalibration {
        format: CALIBRATION_FORMAT.into(),
        checkpoint: "00112233aabbccdd".into(),
        steps: 3,
        shift: 7.0,
        timesteps: ts.clone(),
        ratios: vec![1.0, 0.95, 0.9],
        prompts: 2,
    };
    let path = cal.save(&dir).unwrap();
    assert!(path
        .file_name()
        .unwrap()
        .to_string_lossy()
        .starts_with("magcache-"));
    assert_eq!(
        MagCalibration::load(&path, &cal.checkpoint, 7.0, &ts).unwrap(),
        cal
    );
    let name = path.display().to_string();
    let err = |p: &std::path::Path, ck: &str, shift: f32, ts: &[f32]| {
        MagCalibration::load(p, ck, shift, ts)
            .unwrap_err()
            .to_string()
    };
    let e = err(&path, "ffffffffffffffff", 7.0, &ts);
    assert!(e.contains(&name) && e.contains("another checkpoint"), "{e}");
    let e = err(&path, &cal.checkpoint, 5.0, &ts);
    assert!(e.contains(&name) && e.contains("another schedule"), "{e}");
    let e = err(&path, &cal.checkpoint, 7.0, &ts[..2]);
    assert!(e.contains("another schedule"), "{e}");
    let body = std::fs::read(&path).unwrap();
    std::fs::write(&path, &body[..body.len() / 2]).unwrap();
    let e = err(&path, &cal.checkpoint, 7.0, &ts);
    assert!(
        e.contains(&name) && e.contains("not a valid calibration"),
        "{e}"
    );
    let nan = String::from_utf8(body.clone())
        .unwrap()
        .replacen("0.95", "NaN", 1);
    std::fs::write(&path, nan).unwrap();
    let e = err(&path, &cal.checkpoint, 7.0, &ts);
    assert!(e.contains(&name), "{e}");
    let neg = String::from_utf8(body).unwrap().replacen("0.95", "-1.0", 1);
    std::fs::write(&path, neg).unwrap();
    let e = err(&path, &cal.checkpoint, 7.0, &ts);
    assert!(e.contains(&name) && e.contains("step 1"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The tiny model on the CPU: a threshold of 0 gives exactly the uncached latents and frames
/// for every method; default thresholds finish, are deterministic, and compute what they say.
#[test]
fn tiny_model_threshold_zero_is_the_uncached_run() {
    let dev = Device::Cpu;
    let (pipe, _) = load_pipeline(&common::tiny_model_dir(), &dev, &Default::default()).unwrap();
    let mut p = params(5, 6.0);
    p.geometry = VideoGeometry::new(5, 32, 32).unwrap();
    let full = pipe.generate(&p, &mut |_| {}).unwrap();
    for m in [CacheMethod::Easy, CacheMethod::FbCache, CacheMethod::Mag] {
        let s = settings(m, 0.0, 1, vec![1.0; 5]);
        let g = pipe.generate_cached(&p, Some(&s), &mut |_| {}).unwrap();
        assert_eq!(g.cache.as_ref().unwrap().computed.len(), 5, "{m:?}");
        assert!(
            g.latents == full.latents,
            "{m:?}: threshold 0 changed the latents"
        );
        assert!(
            g.frames.data == full.frames.data,
            "{m:?}: threshold 0 changed the frames"
        );
    }
    // A large threshold: the warm-up and the last step computed, the rest as the rule says;
    // twice the same.
    for m in [CacheMethod::Easy, CacheMethod::FbCache, CacheMethod::Mag] {
        let s = settings(m, 5.0, 1, vec![1.0; 5]);
        let a = pipe.generate_cached(&p, Some(&s), &mut |_| {}).unwrap();
        let b = pipe.generate_cached(&p, Some(&s), &mut |_| {}).unwrap();
        assert!(
            a.latents == b.latents && a.frames.data == b.frames.data,
            "{m:?}: not deterministic"
        );
        let c = a.cache.unwrap();
        assert!(c.computed.len() < 5, "{m:?}: nothing reused ({})", c.line);
        assert!(
            c.computed.contains(&0) && c.computed.contains(&4),
            "{m:?}: {}",
            c.line
        );
    }
}

/// Writes a mag calibration of the tiny model for `steps` steps (the model's shift) in `cdir`.
fn tiny_calibration(cdir: &std::path::Path, steps: usize) -> std::path::PathBuf {
    let (path, ck, schedule) =
        calibration_path(&common::tiny_model_dir(), cdir, steps, None).unwrap();
    let cal = MagCalibration {
        format: CALIBRATION_FORMAT.into(),
        checkpoint: ck,
        steps,
        shift: schedule.shift,
        timesteps: schedule.timesteps,
        ratios: vec![1.0; steps],
        prompts: 1,
    };
    assert_eq!(cal.save(cdir).unwrap(), path);
    path
}

/// A batch line with `"cache": "mag"` finds the calibration of this run's model for the line's
/// own schedule (steps, shift), not the flags'; a line without one fails before anything is
/// loaded, naming the line, the field and the file it looked for.
#[test]
fn batch_lines_with_mag_resolve_their_calibration_before_loading() {
    let d = common::scratch::scratch("cache-batch-mag");
    let cdir = d.join("calibrations");
    tiny_calibration(&cdir, 3);
    let (missing, _, _) = calibration_path(&common::tiny_model_dir(), &cdir, 4, None).unwrap();
    let (other_shift, _, _) =
        calibration_path(&common::tiny_model_dir(), &cdir, 3, Some(2.5)).unwrap();
    let out = d.join("videos");
    let cd = ["--cache-dir", cdir.to_str().unwrap()];
    // Only lines without a calibration: every one fails, the model is never loaded.
    let jsonl = d.join("none.jsonl");
    std::fs::write(
        &jsonl,
        "{\"prompt\": \"a\", \"steps\": 4, \"cache\": \"mag\"}\n\n{\"prompt\": \"b\", \"steps\": 3, \"shift\": 2.5, \"cache\": {\"method\": \"mag\"}}\n",
    )
    .unwrap();
    let o = common::bin::run_batch(&jsonl, &out, &cd);
    let t = common::bin::text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(!t.contains("loading "), "nothing is loaded: {t}");
    for (line, file) in [(1, &missing), (3, &other_shift)] {
        let want = format!(
            "line {line} (request {}): field \"cache\" = \"mag\": no calibration",
            line / 2
        );
        let l = t.lines().find(|l| l.contains(&want)).unwrap_or_else(|| {
            panic!("no error for line {line}: {t}");
        });
        assert!(l.contains(&file.display().to_string()), "{l}");
    }
    // The line with the calibration of its schedule runs with it (the flags say 1 step).
    let jsonl = d.join("mixed.jsonl");
    std::fs::write(
        &jsonl,
        "{\"prompt\": \"a\", \"seed\": 1, \"steps\": 3, \"cache\": \"mag\"}\n{\"prompt\": \"b\", \"seed\": 2, \"steps\": 4, \"cache\": \"mag\"}\n",
    )
    .unwrap();
    let o = common::bin::run_batch(&jsonl, &out, &cd);
    let t = common::bin::text(&o);
    let j: serde_json::Value =
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}\n{t}"));
    let r = &j["results"];
    assert_eq!(r[0]["status"], "ok", "{t}");
    assert_eq!(r[0]["cache"]["method"], "mag", "{t}");
    assert_eq!(r[0]["cache"]["steps"], 3, "{t}");
    assert_eq!(r[1]["status"], "failed", "{t}");
    let e = r[1]["error"].as_str().unwrap();
    assert!(
        e.contains("field \"cache\"") && e.contains(&missing.display().to_string()),
        "{e}"
    );
}

/// The step cache's device memory in the plan: fbcache's residual, B x N x D bf16 (384.8 MiB at
/// the default size with guidance, docs/pipeline.md), only for fbcache (easy and mag keep theirs
/// on the host), said in the plan line in every placement, and in a VRAM plan's fixed bytes
/// (as `load_pipeline_for` passes it): a budget that just fits without it streams layers with
/// it. tests/cache_gpu.rs checks the line of the real plan in every memory mode.
#[test]
fn the_plan_counts_and_says_the_step_cache() {
    use contentv::cli::load::RunSize;
    use contentv::model::mmdit::{step_cache_bytes, TransformerConfig, DEFAULT_VIDEO_TOKENS};
    use contentv::runtime::planner::{plan_budget, LayerPlan, Placement};
    let c = TransformerConfig::contentv_8b();
    let b = step_cache_bytes(&c, 2, DEFAULT_VIDEO_TOKENS);
    assert_eq!(b, 2 * 41_472 * 2432 * 2);
    for m in [CacheMethod::Off, CacheMethod::Easy, CacheMethod::Mag] {
        assert!(!RunSize::DEFAULT.with_cache(m).step_cache, "{m:?}");
    }
    assert!(RunSize::DEFAULT.with_cache(CacheMethod::FbCache).step_cache);
    let said = "step cache: 384.8 MiB on the device";
    let resident = LayerPlan::resident("transformer_blocks", 40).with_step_cache(b);
    assert!(resident.describe().unwrap().contains(said));
    let streamed = LayerPlan {
        placement: Placement::Streamed { resident: None },
        ..resident.clone()
    };
    let l = streamed.describe().unwrap();
    assert!(l.contains("streamed") && l.contains(said), "{l}");
    let layers = vec![400u64 << 20; 40];
    let fixed = 20u64 << 30;
    let budget = fixed + layers.iter().sum::<u64>();
    let without = plan_budget(&layers, fixed, budget);
    let with = plan_budget(&layers, fixed + b, budget);
    assert_eq!(without.streamed_layers(), 0);
    assert!(with.fits && with.streamed_layers() > 0, "{with:?}");
    let planned = LayerPlan {
        budget: Some((budget, with)),
        ..resident
    };
    let l = planned.describe().unwrap();
    assert!(
        l.starts_with("VRAM plan: ") && l.contains(said) && l.contains("counted in the VRAM plan"),
        "{l}"
    );
}

/// `contentv calibrate-cache` on the tiny model (CPU, two prompts from a file, 3 steps): it
/// writes the calibration of this model and schedule where `--cache mag` finds it, with one
/// positive ratio per step averaged over the prompts; an empty prompt file is an error naming
/// the flag.
#[test]
fn calibrate_cache_writes_what_generate_finds() {
    let d = common::scratch::scratch("cache-calibrate");
    let cdir = d.join("calibrations");
    let prompts = d.join("prompts.txt");
    std::fs::write(&prompts, "# two prompts\na red ball\n\na blue cube\n").unwrap();
    let size = ["--frames", "1", "--width", "32", "--height", "32"];
    let mut args = vec![
        "calibrate-cache",
        "--device",
        "cpu",
        "--steps",
        "3",
        "--json",
    ];
    args.extend(["--prompts", prompts.to_str().unwrap()]);
    args.extend(["--cache-dir", cdir.to_str().unwrap()]);
    args.extend(size);
    let o = common::bin::run(&args);
    let t = common::bin::text(&o);
    assert!(o.status.success(), "{t}");
    let j: serde_json::Value =
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}\n{t}"));
    let (path, _, _) = calibration_path(&common::tiny_model_dir(), &cdir, 3, None).unwrap();
    assert_eq!(j["file"], path.display().to_string(), "{t}");
    let cal = &j["calibration"];
    assert_eq!(
        (cal["steps"].as_u64(), cal["prompts"].as_u64()),
        (Some(3), Some(2)),
        "{t}"
    );
    let ratios = cal["ratios"].as_array().unwrap();
    assert_eq!(ratios.len(), 3);
    assert!(
        ratios.iter().all(|r| r.as_f64().is_some_and(|r| r > 0.0)),
        "{cal}"
    );
    let out = d.join("v.mp4");
    let mut g = vec![
        "generate", "--device", "cpu", "--prompt", "x", "--steps", "3",
    ];
    g.extend(["--cache", "mag", "--cache-dir", cdir.to_str().unwrap()]);
    g.extend(["--output", out.to_str().unwrap()]);
    g.extend(size);
    let o = common::bin::run(&g);
    let t = common::bin::text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("step cache mag ("), "{t}");
    std::fs::write(&prompts, "# none\n\n").unwrap();
    let o = common::bin::run(&args);
    let t = common::bin::text(&o);
    assert!(
        !o.status.success() && t.contains("--prompts: the file has no prompts"),
        "{t}"
    );
}
