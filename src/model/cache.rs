//! Step caching: skip the transformer on denoising steps where its result would change little,
//! and reuse what the last computed step produced instead (docs/pipeline.md, "Step caching").
//!
//! Three rules, each our own code after the method's published definition:
//! * [`CacheMethod::Easy`] (EasyCache, Zhou et al. 2025, arXiv:2507.02860; the definition as
//!   ComfyUI's `comfy_extras/nodes_easycache.py` implements it): the transformation of a
//!   computed step `d = out - x` is reused (`out ~ x + d`) while the accumulated estimate of the
//!   output's relative change, `sum k * mean|x - x_c| / mean|out_c|` over the reused steps
//!   (`x_c`, `out_c`: input and output of the last computed step; `k`: the measured
//!   transformation rate `mean|out_c - out_c'| / mean|x_c - x_c'|` of the last two computed
//!   steps), stays under the threshold. No offline profile.
//! * [`CacheMethod::FbCache`] (First-Block-Cache, ParaAttention; diffusers `FirstBlockCache`):
//!   the first block runs; when its residual `r1 = h1 - h0` changed by less than the threshold
//!   since the last computed step (`mean|r1 - r1_c| / mean|r1_c|`), the remaining blocks'
//!   residual of that step (`hL - h1`, kept on the device) is added instead of running them.
//! * [`CacheMethod::Mag`] (MagCache, Ma et al. 2025): a calibrated magnitude ratio per step,
//!   `g_t = ||r_t|| / ||r_t-1||` of the residual `r = out - x`; reuse `r` while the accumulated
//!   error `sum |1 - prod g|` stays under the threshold and at most `K` steps in a row.
//!
//! Every rule decides once per step for the whole batch (with guidance, the conditional and
//! unconditional passes are computed or reused together), from host arithmetic in f64 in a fixed
//! order: the decisions depend on the values only, never on timing or threads. Comparisons are
//! strict (`<`), so a threshold of 0 computes every step: the output is the uncached one.
//! The first `warmup` steps and the last step are always computed.
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Which step cache a run uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheMethod {
    /// Every step computed (the default).
    #[default]
    Off,
    /// EasyCache's run-time adaptive rule.
    Easy,
    /// First-Block-Cache.
    FbCache,
    /// MagCache with a calibration file (`contentv calibrate-cache`).
    Mag,
}

impl CacheMethod {
    pub const NAMES: &'static str = "off, easy, fbcache, mag";

    pub fn parse(s: &str) -> Option<CacheMethod> {
        match s {
            "off" => Some(CacheMethod::Off),
            "easy" => Some(CacheMethod::Easy),
            "fbcache" => Some(CacheMethod::FbCache),
            "mag" => Some(CacheMethod::Mag),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            CacheMethod::Off => "off",
            CacheMethod::Easy => "easy",
            CacheMethod::FbCache => "fbcache",
            CacheMethod::Mag => "mag",
        }
    }

    /// The method's default threshold, from its authors' code:
    /// easy 0.2 (`reuse_threshold` of ComfyUI's EasyCache node and stable-diffusion.cpp's
    /// `EasyCacheConfig`), fbcache 0.05 (diffusers `FirstBlockCacheConfig.threshold`), mag 0.12
    /// (MagCache's Wan2.1 scripts, `--magcache_thresh 0.12 --magcache_K 2`).
    pub fn default_threshold(self) -> f32 {
        match self {
            CacheMethod::Off => 0.0,
            CacheMethod::Easy => 0.2,
            CacheMethod::FbCache => 0.05,
            CacheMethod::Mag => 0.12,
        }
    }

    /// The default warm-up (steps always computed first) for a run of `steps`: easy 15% of the
    /// steps (`start_percent` 0.15), mag 20% (`retention_ratio` 0.2), fbcache 1 (the first step
    /// gives the reference); at least 1.
    pub fn default_warmup(self, steps: usize) -> usize {
        let frac = match self {
            CacheMethod::Easy => 0.15,
            CacheMethod::Mag => 0.2,
            _ => 0.0,
        };
        ((steps as f64 * frac).round() as usize).max(1)
    }
}

/// MagCache's limit of reused steps in a row (`magcache_K` of its Wan2.1 default).
pub const MAG_MAX_SKIPS: usize = 2;

/// The largest threshold accepted: every rule compares a relative change, and past 10 (a
/// thousand percent) every step after the warm-up would be reused.
pub const MAX_THRESHOLD: f32 = 10.0;

/// The cache options of a request, as the user gave them (flags, a JSONL line, the server).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CacheOptions {
    pub method: CacheMethod,
    /// `None`: the method's default.
    pub threshold: Option<f32>,
    /// `None`: the method's default.
    pub warmup: Option<usize>,
}

/// A checked cache setting for a run of a known number of steps.
#[derive(Clone, Debug, PartialEq)]
pub struct CacheSettings {
    pub method: CacheMethod,
    pub threshold: f32,
    pub warmup: usize,
    /// Mag: the calibrated ratio per step (index 0 unused, 1.0).
    pub ratios: Vec<f32>,
}

impl CacheOptions {
    /// Parses a method name; `what` names the flag or field in the message.
    pub fn parse_method(s: &str, what: &str) -> Result<CacheMethod> {
        CacheMethod::parse(s.trim()).ok_or_else(|| {
            Error::Input(format!(
                "{what} {s:?} is not a cache method: use one of {}",
                CacheMethod::NAMES
            ))
        })
    }

    /// Checks the threshold and the warm-up against a run of `steps` (before anything is
    /// loaded). `what`: how the options were given ("--cache" or "field \"cache\"").
    pub fn check(&self, steps: usize, what: &str) -> Result<()> {
        if let Some(t) = self.threshold {
            if !t.is_finite() || !(0.0..=MAX_THRESHOLD).contains(&t) {
                return Err(Error::Input(format!(
                    "{what} threshold {t} must be a number from 0 to {MAX_THRESHOLD} (0 computes every step; the default for {} is {})",
                    self.method.name(),
                    self.method.default_threshold()
                )));
            }
        }
        if let Some(w) = self.warmup {
            if w >= steps && self.method != CacheMethod::Off {
                return Err(Error::Input(format!(
                    "{what} warm-up {w} must be smaller than the number of steps ({steps}): the warm-up steps and the last step are always computed"
                )));
            }
        }
        if self.method == CacheMethod::Off && (self.threshold.is_some() || self.warmup.is_some()) {
            return Err(Error::Input(format!(
                "{what}: a cache threshold or warm-up was given without a cache method: add --cache easy|fbcache|mag"
            )));
        }
        Ok(())
    }

    /// The settings for a run of `steps` (`ratios`: mag's calibration, already matched to the
    /// run; empty for the other methods).
    pub fn settings(&self, steps: usize, ratios: Vec<f32>) -> Result<CacheSettings> {
        self.check(steps, "--cache")?;
        if self.method == CacheMethod::Mag && ratios.len() != steps {
            return Err(Error::Input(format!(
                "--cache mag needs a calibration of {steps} steps, got {} ratios",
                ratios.len()
            )));
        }
        Ok(CacheSettings {
            method: self.method,
            threshold: self.threshold.unwrap_or(self.method.default_threshold()),
            warmup: self
                .warmup
                .unwrap_or(self.method.default_warmup(steps))
                .min(steps),
            ratios,
        })
    }
}

// ----- the rules --------------------------------------------------------------------------------

/// EasyCache's decision state (see the module doc).
#[derive(Clone, Debug, Default)]
pub struct EasyRule {
    threshold: f64,
    /// `k` of the last two computed steps.
    rate: Option<f64>,
    /// `mean|out_c|` of the last computed step.
    out_norm: Option<f64>,
    /// The accumulated estimate since the last computed step.
    acc: f64,
}

impl EasyRule {
    pub fn new(threshold: f32) -> EasyRule {
        EasyRule {
            threshold: threshold as f64,
            ..Default::default()
        }
    }
    /// A step past the warm-up, with `input_change = mean|x - x_c|`: true to reuse. A step that
    /// is computed resets the accumulation.
    pub fn reuse(&mut self, input_change: f64) -> bool {
        let (Some(k), Some(n)) = (self.rate, self.out_norm) else {
            return false;
        };
        if n > 0.0 {
            self.acc += k * input_change / n;
            if self.acc < self.threshold {
                return true;
            }
        }
        self.acc = 0.0;
        false
    }
    /// A computed step: `input_change = mean|x - x_c|` and `output_change = mean|out - out_c|`
    /// against the previous computed step (None for the first), `out_norm = mean|out|`.
    pub fn computed(
        &mut self,
        input_change: Option<f64>,
        output_change: Option<f64>,
        out_norm: f64,
    ) {
        if let (Some(i), Some(o)) = (input_change, output_change) {
            if i > 0.0 {
                self.rate = Some(o / i);
            }
        }
        self.out_norm = Some(out_norm);
        self.acc = 0.0;
    }
}

/// MagCache's decision state.
#[derive(Clone, Debug)]
pub struct MagRule {
    threshold: f64,
    max_skips: usize,
    ratios: Vec<f32>,
    acc_ratio: f64,
    acc_err: f64,
    skips: usize,
}

impl MagRule {
    pub fn new(threshold: f32, max_skips: usize, ratios: Vec<f32>) -> MagRule {
        MagRule {
            threshold: threshold as f64,
            max_skips,
            ratios,
            acc_ratio: 1.0,
            acc_err: 0.0,
            skips: 0,
        }
    }
    /// Step `step` past the warm-up: true to reuse; a computed step resets the accumulation.
    pub fn reuse(&mut self, step: usize) -> bool {
        let g = self.ratios.get(step).copied().unwrap_or(1.0) as f64;
        self.acc_ratio *= g;
        self.acc_err += (1.0 - self.acc_ratio).abs();
        self.skips += 1;
        if self.acc_err < self.threshold && self.skips <= self.max_skips {
            return true;
        }
        self.computed();
        false
    }
    /// A computed step (also in the warm-up).
    pub fn computed(&mut self) {
        self.acc_ratio = 1.0;
        self.acc_err = 0.0;
        self.skips = 0;
    }
}

/// First-Block-Cache's decision: `rel_change = mean|r1 - r1_c| / mean|r1_c|`.
pub fn fb_reuse(threshold: f32, rel_change: f64) -> bool {
    rel_change < threshold as f64
}

/// `mean|a - b|` in f64 (fixed order).
pub fn mean_abs_diff(a: &[f32], b: &[f32]) -> f64 {
    let s: f64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| (x as f64 - y as f64).abs())
        .sum();
    s / a.len().max(1) as f64
}

/// `mean|a|` in f64.
pub fn mean_abs(a: &[f32]) -> f64 {
    a.iter().map(|&x| (x as f64).abs()).sum::<f64>() / a.len().max(1) as f64
}

/// `||a||_2` in f64.
pub fn l2(a: &[f32]) -> f64 {
    a.iter()
        .map(|&x| (x as f64) * (x as f64))
        .sum::<f64>()
        .sqrt()
}

// ----- the run's cache -----------------------------------------------------------------------------

/// What one step does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepKind {
    /// Every block computed.
    Computed,
    /// The transformer's result reused (fbcache: only the first block ran).
    Reused,
}

/// The state of a run's step cache, driven by the denoising loop.
pub struct StepCache {
    pub settings: CacheSettings,
    steps: usize,
    easy: EasyRule,
    mag: MagRule,
    /// easy/mag: input `x` (tiled over the batch) and output of the last computed step.
    last_in: Option<Vec<f32>>,
    last_out: Option<Vec<f32>>,
    /// fbcache: the first block's residual at the last computed step (host, f32).
    last_r1: Option<Vec<f32>>,
    /// fbcache: the remaining blocks' residual of the video stream (device).
    pub(crate) rest: Option<crate::runtime::Tensor>,
    /// Per step: computed or reused (in order).
    pub kinds: Vec<StepKind>,
    /// Per step: the relative change the rule measured (NaN where none), for the report.
    pub signals: Vec<f64>,
}

impl StepCache {
    pub fn new(settings: CacheSettings, steps: usize) -> StepCache {
        StepCache {
            easy: EasyRule::new(settings.threshold),
            mag: MagRule::new(settings.threshold, MAG_MAX_SKIPS, settings.ratios.clone()),
            settings,
            steps,
            last_in: None,
            last_out: None,
            last_r1: None,
            rest: None,
            kinds: Vec::new(),
            signals: Vec::new(),
        }
    }

    pub fn method(&self) -> CacheMethod {
        self.settings.method
    }

    /// Whether step `i` must be computed whatever the rule says (warm-up, last step).
    pub fn forced(&self, i: usize) -> bool {
        i < self.settings.warmup || i + 1 >= self.steps
    }

    /// easy / mag, before step `i` with the batch input `xb`: true to reuse.
    pub fn reuse_output(&mut self, i: usize, xb: &[f32]) -> bool {
        let (Some(x_c), Some(_)) = (&self.last_in, &self.last_out) else {
            return false;
        };
        let change = mean_abs_diff(xb, x_c);
        if self.forced(i) {
            self.signals.push(f64::NAN);
            return false;
        }
        match self.settings.method {
            CacheMethod::Easy => {
                let r = self.easy.reuse(change);
                self.signals.push(self.easy.acc);
                r
            }
            CacheMethod::Mag => {
                let r = self.mag.reuse(i);
                self.signals.push(self.mag.acc_err);
                r
            }
            _ => false,
        }
    }

    /// The reused output for the batch input `xb`: `xb + (out_c - x_c)`.
    pub fn reused_output(&self, xb: &[f32]) -> Vec<f32> {
        let (x_c, o_c) = (
            self.last_in.as_ref().unwrap(),
            self.last_out.as_ref().unwrap(),
        );
        xb.iter()
            .zip(x_c.iter().zip(o_c))
            .map(|(&x, (&xc, &oc))| x + (oc - xc))
            .collect()
    }

    /// easy / mag: step `i` was computed with input `xb` and output `out`.
    pub fn computed_output(&mut self, i: usize, xb: &[f32], out: &[f32]) {
        if self.signals.len() <= i {
            self.signals.push(f64::NAN);
        }
        let input_change = self.last_in.as_ref().map(|x| mean_abs_diff(xb, x));
        let output_change = self.last_out.as_ref().map(|o| mean_abs_diff(out, o));
        self.easy
            .computed(input_change, output_change, mean_abs(out));
        self.mag.computed();
        self.last_in = Some(xb.to_vec());
        self.last_out = Some(out.to_vec());
    }

    /// fbcache, after the first block of step `i` with its residual `r1`: true to reuse the
    /// remaining blocks' residual. A computed step must then call [`StepCache::fb_computed`].
    pub fn reuse_rest(&mut self, i: usize, r1: &[f32]) -> bool {
        let Some(prev) = &self.last_r1 else {
            self.signals.push(f64::NAN);
            return false;
        };
        let d = mean_abs(prev);
        let rel = if d > 0.0 {
            mean_abs_diff(r1, prev) / d
        } else {
            f64::INFINITY
        };
        self.signals.push(rel);
        !self.forced(i) && self.rest.is_some() && fb_reuse(self.settings.threshold, rel)
    }

    /// fbcache: step `i` computed every block; `r1` its first block's residual, `rest` the
    /// remaining blocks' residual.
    pub fn fb_computed(&mut self, r1: Vec<f32>, rest: crate::runtime::Tensor) {
        self.last_r1 = Some(r1);
        self.rest = Some(rest);
    }

    pub fn record(&mut self, kind: StepKind) {
        self.kinds.push(kind);
    }

    /// The run's report, with the step times `step_s` (same order as the steps).
    pub fn report(&self, step_s: &[f64]) -> CacheReport {
        CacheReport::new(self.settings.method, &self.kinds, step_s)
    }

    /// Frees the device residual (the run is over).
    pub fn clear(&mut self) {
        self.rest = None;
        self.last_in = None;
        self.last_out = None;
        self.last_r1 = None;
    }
}

/// Which steps a run computed and which it reused, and the time that saved.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct CacheReport {
    pub method: CacheMethod,
    pub steps: usize,
    /// Indices of the computed steps.
    pub computed: Vec<usize>,
    /// `computed 21/50: 0-5 8 11 ...`
    pub line: String,
    /// Estimated seconds saved: reused steps x (mean computed step - mean reused step).
    pub saved_s: f64,
}

impl CacheReport {
    pub fn new(method: CacheMethod, kinds: &[StepKind], step_s: &[f64]) -> CacheReport {
        let computed: Vec<usize> = (0..kinds.len())
            .filter(|&i| kinds[i] == StepKind::Computed)
            .collect();
        let mean = |want: StepKind| {
            let v: Vec<f64> = (0..kinds.len().min(step_s.len()))
                .filter(|&i| kinds[i] == want)
                .map(|i| step_s[i])
                .collect();
            (v.iter().sum::<f64>() / v.len().max(1) as f64, v.len())
        };
        let (c, _) = mean(StepKind::Computed);
        let (r, nr) = mean(StepKind::Reused);
        CacheReport {
            method,
            steps: kinds.len(),
            line: format!(
                "computed {}/{}: {}",
                computed.len(),
                kinds.len(),
                ranges(&computed)
            ),
            computed,
            saved_s: if nr > 0 {
                (c - r).max(0.0) * nr as f64
            } else {
                0.0
            },
        }
    }
}

/// `0-5 8 11-12` for [0, 1, 2, 3, 4, 5, 8, 11, 12].
pub fn ranges(v: &[usize]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < v.len() {
        let mut j = i;
        while j + 1 < v.len() && v[j + 1] == v[j] + 1 {
            j += 1;
        }
        out.push(if j > i {
            format!("{}-{}", v[i], v[j])
        } else {
            v[i].to_string()
        });
        i = j + 1;
    }
    out.join(" ")
}

// ----- MagCache calibration files --------------------------------------------------------------------

/// Format tag of a calibration file.
pub const CALIBRATION_FORMAT: &str = "contentv-magcache-1";

/// One calibration: the magnitude ratio per step of one checkpoint under one schedule.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MagCalibration {
    pub format: String,
    /// The checkpoint's identity (a hash of its transformer files, see `contentv calibrate-cache`).
    pub checkpoint: String,
    pub steps: usize,
    pub shift: f32,
    /// The schedule's timesteps (sigma * 1000), one per step.
    pub timesteps: Vec<f32>,
    /// `g_t = ||r_t|| / ||r_t-1||` per step (`g_0 = 1`), the mean over the calibration prompts.
    pub ratios: Vec<f32>,
    /// How many generations were averaged.
    pub prompts: usize,
}

/// FNV-1a, 64 bit (a name, not a security hash).
pub fn fnv1a(bytes: &[u8], mut h: u64) -> u64 {
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}
pub const FNV_OFFSET: u64 = 0xcbf29ce484222325;

/// The file name of the calibration of `checkpoint` under the schedule (`timesteps`, `shift`).
pub fn calibration_name(checkpoint: &str, shift: f32, timesteps: &[f32]) -> String {
    let mut h = fnv1a(checkpoint.as_bytes(), FNV_OFFSET);
    h = fnv1a(&shift.to_le_bytes(), h);
    for t in timesteps {
        h = fnv1a(&t.to_le_bytes(), h);
    }
    format!("magcache-{h:016x}.json")
}

impl MagCalibration {
    /// Writes `dir/<calibration_name>` atomically; returns the path.
    pub fn save(&self, dir: &Path) -> Result<PathBuf> {
        std::fs::create_dir_all(dir).map_err(|e| {
            Error::Input(format!("cannot create the folder {}: {e}", dir.display()))
        })?;
        let path = dir.join(calibration_name(
            &self.checkpoint,
            self.shift,
            &self.timesteps,
        ));
        let body = serde_json::to_vec_pretty(self).map_err(|e| Error::Other(e.to_string()))?;
        crate::io::fsutil::write_file_atomically(&path, &body)
            .map_err(|e| Error::Input(format!("cannot write {}: {e}", path.display())))?;
        Ok(path)
    }

    /// Reads and checks `path` against the run: the checkpoint and the schedule must match.
    pub fn load(
        path: &Path,
        checkpoint: &str,
        shift: f32,
        timesteps: &[f32],
    ) -> Result<MagCalibration> {
        let bad = |why: String| {
            Error::Input(format!(
                "the MagCache calibration {} {why}; run `contentv calibrate-cache` again for this model and schedule",
                path.display()
            ))
        };
        let bytes = std::fs::read(path).map_err(|e| bad(format!("cannot be read ({e})")))?;
        let c: MagCalibration = serde_json::from_slice(&bytes)
            .map_err(|e| bad(format!("is not a valid calibration file ({e})")))?;
        if c.format != CALIBRATION_FORMAT {
            return Err(bad(format!(
                "has format {:?}, expected {CALIBRATION_FORMAT:?}",
                c.format
            )));
        }
        if c.checkpoint != checkpoint {
            return Err(bad(format!(
                "is for another checkpoint ({}, this model is {checkpoint})",
                c.checkpoint
            )));
        }
        if c.steps != timesteps.len()
            || c.shift.to_bits() != shift.to_bits()
            || c.timesteps != timesteps
        {
            return Err(bad(format!(
                "is for another schedule ({} steps, shift {}; this run has {} steps, shift {shift})",
                c.steps,
                c.shift,
                timesteps.len()
            )));
        }
        if c.ratios.len() != c.steps {
            return Err(bad(format!(
                "has {} ratios for {} steps",
                c.ratios.len(),
                c.steps
            )));
        }
        if let Some(k) = c.ratios.iter().position(|r| !r.is_finite() || *r <= 0.0) {
            return Err(bad(format!(
                "has a ratio that is not a positive number at step {k}"
            )));
        }
        Ok(c)
    }
}

// ----- quality of a cached run against the full one ---------------------------------------------------

/// PSNR in dB of two uint8 images (infinite when equal).
pub fn psnr_u8(a: &[u8], b: &[u8]) -> f64 {
    let mse = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| (x as f64 - y as f64).powi(2))
        .sum::<f64>()
        / a.len().max(1) as f64;
    if mse == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (255.0f64 * 255.0 / mse).log10()
    }
}

/// Mean SSIM of two RGB frame stacks `[F, H, W, 3]` (uint8), on the luma, over 8x8 windows at
/// stride 4 (the usual constants K1 = 0.01, K2 = 0.03, L = 255).
pub fn ssim_frames(a: &[u8], b: &[u8], frames: usize, h: usize, w: usize) -> f64 {
    let luma = |p: &[u8], i: usize| {
        0.299 * p[3 * i] as f64 + 0.587 * p[3 * i + 1] as f64 + 0.114 * p[3 * i + 2] as f64
    };
    let (c1, c2) = ((0.01f64 * 255.0).powi(2), (0.03f64 * 255.0).powi(2));
    let win = 8.min(h).min(w);
    let (mut sum, mut n) = (0.0, 0usize);
    for f in 0..frames {
        let base = f * h * w;
        let mut y = 0;
        while y + win <= h {
            let mut x = 0;
            while x + win <= w {
                let (mut ma, mut mb, mut va, mut vb, mut cov) = (0.0, 0.0, 0.0, 0.0, 0.0);
                let k = (win * win) as f64;
                for dy in 0..win {
                    for dx in 0..win {
                        let i = base + (y + dy) * w + x + dx;
                        let (p, q) = (luma(a, i), luma(b, i));
                        ma += p;
                        mb += q;
                        va += p * p;
                        vb += q * q;
                        cov += p * q;
                    }
                }
                ma /= k;
                mb /= k;
                va = va / k - ma * ma;
                vb = vb / k - mb * mb;
                cov = cov / k - ma * mb;
                sum += ((2.0 * ma * mb + c1) * (2.0 * cov + c2))
                    / ((ma * ma + mb * mb + c1) * (va + vb + c2));
                n += 1;
                x += 4;
            }
            y += 4;
        }
    }
    if n == 0 {
        1.0
    } else {
        sum / n as f64
    }
}

/// Cosine similarity of two vectors (1 when both are zero).
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let (mut ab, mut aa, mut bb) = (0.0f64, 0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        ab += x as f64 * y as f64;
        aa += x as f64 * x as f64;
        bb += y as f64 * y as f64;
    }
    if aa == 0.0 && bb == 0.0 {
        1.0
    } else {
        ab / (aa.sqrt() * bb.sqrt()).max(f64::MIN_POSITIVE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_compact() {
        assert_eq!(ranges(&[0, 1, 2, 3, 4, 5, 8, 11, 12]), "0-5 8 11-12");
        assert_eq!(ranges(&[]), "");
        assert_eq!(ranges(&[3]), "3");
    }

    #[test]
    fn easy_rule_by_hand() {
        // k = 0.5 measured, out_norm = 1: each step adds 0.5 * change.
        let mut r = EasyRule::new(0.2);
        assert!(!r.reuse(0.1), "no rate yet: compute");
        r.computed(None, None, 1.0);
        r.computed(Some(0.2), Some(0.1), 1.0); // k = 0.5
        assert!(r.reuse(0.2)); // acc 0.1
        assert!(r.reuse(0.1)); // acc 0.15
        assert!(!r.reuse(0.2)); // acc 0.25 >= 0.2: compute, reset
        assert_eq!(r.acc, 0.0);
        assert!(EasyRule {
            threshold: 0.0,
            rate: Some(0.0),
            out_norm: Some(1.0),
            acc: 0.0
        }
        .reuse(0.0)
        .eq(&false));
    }

    #[test]
    fn mag_rule_by_hand() {
        // ratios 1, 0.95, 0.9, 1.0: err after step 1: |1-0.95| = 0.05; step 2: 0.05 + |1-0.855|
        let mut r = MagRule::new(0.12, 2, vec![1.0, 0.95, 0.9, 1.0, 1.0]);
        assert!(r.reuse(1)); // 0.05
        assert!(!r.reuse(2)); // 0.05 + 0.145 = 0.195 >= 0.12: compute
        assert!(r.reuse(3)); // 0.0
        assert!(r.reuse(4)); // 0.0, skips 2
        let mut r = MagRule::new(0.12, 2, vec![1.0; 6]);
        assert!(r.reuse(1) && r.reuse(2));
        assert!(!r.reuse(3), "K = 2 reused steps in a row at most");
        assert!(
            !MagRule::new(0.0, 2, vec![1.0; 3]).reuse(1),
            "threshold 0 never reuses"
        );
    }
}
