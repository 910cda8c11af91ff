//! Flow-matching Euler sampler: diffusers' `FlowMatchEulerDiscreteScheduler` (v0.33.1) exactly as
//! ContentV drives it (docs/spec.md §4).
//!
//! ContentV calls `set_timesteps(sigmas=np.linspace(1, 0, steps + 1)[:-1])`. With
//! `use_dynamic_shifting = false` that gives, all in f32:
//!
//! ```text
//! s_i        = f32(linspace(1, 0, steps+1)[i])            i = 0 .. steps-1   (f64 linspace, cast)
//! sigma_i    = shift * s_i / (1 + (shift - 1) * s_i)      (f32 arithmetic, numpy keeps f32)
//! timestep_i = sigma_i * 1000                              (f32, fed to the DiT as is)
//! sigma_steps = 0                                          (appended)
//! step:  x_{i+1} = x_i + (sigma_{i+1} - sigma_i) * v
//! ```
//!
//! `shift` comes from `scheduler/scheduler_config.json` (the CLI's `--shift` overrides it).
//! Configurations that change the schedule in ways ContentV does not use (dynamic shifting,
//! Karras / exponential / beta sigmas, `shift_terminal`, inverted sigmas) are refused with an
//! error instead of being silently ignored.
use std::path::Path;

use half::bf16;
use serde_json::Value;

use crate::error::{Error, Result};

/// The parts of `scheduler_config.json` the sampler uses.
#[derive(Clone, Debug, PartialEq)]
pub struct SchedulerConfig {
    pub shift: f32,
    pub num_train_timesteps: u32,
}

impl Default for SchedulerConfig {
    /// SD3.5 / ContentV values: shift 3, 1000 training timesteps.
    fn default() -> Self {
        SchedulerConfig {
            shift: 3.0,
            num_train_timesteps: 1000,
        }
    }
}

impl SchedulerConfig {
    /// Parses a `scheduler_config.json` text. `what` names the file in error messages.
    pub fn from_json(text: &str, what: &str) -> Result<SchedulerConfig> {
        let v: Value = serde_json::from_str(text)
            .map_err(|e| Error::Input(format!("{what}: not valid JSON: {e}")))?;
        let obj = v
            .as_object()
            .ok_or_else(|| Error::Input(format!("{what}: expected a JSON object")))?;
        if let Some(c) = obj.get("_class_name").and_then(|c| c.as_str()) {
            if c != "FlowMatchEulerDiscreteScheduler" {
                return Err(Error::Input(format!(
                    "{what}: scheduler class is {c:?}; contentv implements only FlowMatchEulerDiscreteScheduler"
                )));
            }
        }
        let flag = |k: &str| obj.get(k).and_then(|x| x.as_bool()).unwrap_or(false);
        if flag("use_dynamic_shifting") {
            return Err(Error::Input(format!(
                "{what}: use_dynamic_shifting is true. ContentV's pipeline passes no `mu`, so the reference \
                 refuses this configuration too; set it to false (and pick the shift with \"shift\" or --shift)"
            )));
        }
        for k in [
            "use_karras_sigmas",
            "use_exponential_sigmas",
            "use_beta_sigmas",
            "invert_sigmas",
        ] {
            if flag(k) {
                return Err(Error::Input(format!(
                    "{what}: {k} is true; contentv implements only the plain shifted schedule"
                )));
            }
        }
        if let Some(st) = obj.get("shift_terminal") {
            if !st.is_null() && st.as_f64() != Some(0.0) {
                return Err(Error::Input(format!(
                    "{what}: shift_terminal = {st} is not supported (ContentV uses null)"
                )));
            }
        }
        let shift = match obj.get("shift") {
            None => 1.0, // diffusers' default
            Some(s) => s.as_f64().ok_or_else(|| {
                Error::Input(format!("{what}: \"shift\" must be a number, got {s}"))
            })? as f32,
        };
        let num_train_timesteps = match obj.get("num_train_timesteps") {
            None => 1000,
            Some(n) => n
                .as_u64()
                .filter(|&n| n > 0 && n <= u32::MAX as u64)
                .ok_or_else(|| {
                    Error::Input(format!(
                        "{what}: \"num_train_timesteps\" must be a positive integer, got {n}"
                    ))
                })? as u32,
        };
        check_shift(shift).map_err(|e| Error::Input(format!("{what}: {e}")))?;
        Ok(SchedulerConfig {
            shift,
            num_train_timesteps,
        })
    }

    /// Reads `path` (a `scheduler_config.json`).
    pub fn from_file(path: &Path) -> Result<SchedulerConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::Input(format!(
                "cannot read the scheduler config {}: {e}",
                path.display()
            ))
        })?;
        Self::from_json(&text, &path.display().to_string())
    }

    /// Reads `<model>/scheduler/scheduler_config.json`.
    pub fn from_model_dir(model: &Path) -> Result<SchedulerConfig> {
        Self::from_file(&model.join("scheduler").join("scheduler_config.json"))
    }
}

fn check_shift(shift: f32) -> std::result::Result<(), String> {
    // Below ~1e-7 the shifted sigmas divide by zero; the CLI's --shift takes the same range.
    if !shift.is_finite() || !(1e-3..=1000.0).contains(&shift) {
        return Err(format!(
            "shift must be a number from 0.001 to 1000, got {shift}"
        ));
    }
    Ok(())
}

/// The sampling schedule for one generation.
#[derive(Clone, Debug)]
pub struct FlowMatchEuler {
    /// `steps + 1` values, the last one 0.
    pub sigmas: Vec<f32>,
    /// `steps` values, `sigma * num_train_timesteps` (f32).
    pub timesteps: Vec<f32>,
    pub shift: f32,
}

/// Unshifted sigmas `f32(np.linspace(1, 0, steps + 1)[:-1])`, computed the way numpy does
/// (`i * step + start` in f64 with `step = (stop - start) / steps`).
pub fn linspace_sigmas(steps: usize) -> Vec<f32> {
    let step = -1.0f64 / steps as f64;
    (0..steps).map(|i| (i as f64 * step + 1.0) as f32).collect()
}

/// `shift * s / (1 + (shift - 1) * s)` in f32, operation by operation like numpy on f32 arrays.
pub fn shift_sigma(s: f32, shift: f32) -> f32 {
    let num = shift * s;
    let den = 1.0f32 + (shift - 1.0f32) * s;
    num / den
}

impl FlowMatchEuler {
    /// The schedule for `steps` steps (1..=1000) with `shift`.
    pub fn new(steps: usize, shift: f32, num_train_timesteps: u32) -> Result<FlowMatchEuler> {
        if steps == 0 || steps > 1000 {
            return Err(Error::Input(format!(
                "the number of steps must be between 1 and 1000, got {steps}"
            )));
        }
        check_shift(shift).map_err(Error::Input)?;
        let mut sigmas: Vec<f32> = linspace_sigmas(steps)
            .into_iter()
            .map(|s| shift_sigma(s, shift))
            .collect();
        let timesteps = sigmas
            .iter()
            .map(|&s| s * num_train_timesteps as f32)
            .collect();
        sigmas.push(0.0);
        Ok(FlowMatchEuler {
            sigmas,
            timesteps,
            shift,
        })
    }

    /// The schedule from a config, with an optional shift override.
    pub fn from_config(
        cfg: &SchedulerConfig,
        steps: usize,
        shift_override: Option<f32>,
    ) -> Result<FlowMatchEuler> {
        Self::new(
            steps,
            shift_override.unwrap_or(cfg.shift),
            cfg.num_train_timesteps,
        )
    }

    pub fn steps(&self) -> usize {
        self.timesteps.len()
    }

    /// `sigma_{i+1} - sigma_i` (f32, negative).
    pub fn dt(&self, i: usize) -> f32 {
        self.sigmas[i + 1] - self.sigmas[i]
    }

    /// Euler step `i` in f32, in place: `x += dt_i * v`.
    pub fn step_f32(&self, i: usize, x: &mut [f32], v: &[f32]) {
        assert_eq!(
            x.len(),
            v.len(),
            "scheduler step: sample and velocity lengths differ"
        );
        let dt = self.dt(i);
        for (x, &v) in x.iter_mut().zip(v) {
            *x += dt * v;
        }
    }

    /// Euler step `i` with the reference's bf16 rounding, in place. PyTorch multiplies the bf16
    /// velocity by the 0-dim f32 tensor `dt` in bf16 (the 0-dim operand does not promote): `dt` is
    /// rounded to bf16, the product is rounded to bf16, added to the f32-upcast sample, and the sum
    /// is rounded to bf16 (`prev_sample.to(model_output.dtype)`). Checked bit-exactly against the
    /// reference fixture. `x` and `v` hold bf16-representable values as f32.
    pub fn step_bf16(&self, i: usize, x: &mut [f32], v: &[f32]) {
        assert_eq!(
            x.len(),
            v.len(),
            "scheduler step: sample and velocity lengths differ"
        );
        let dt = bf16::from_f32(self.dt(i)).to_f32();
        for (x, &v) in x.iter_mut().zip(v) {
            let d = bf16::from_f32(dt * v).to_f32();
            *x = bf16::from_f32(*x + d).to_f32();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_examples_shift3() {
        let s = FlowMatchEuler::new(50, 3.0, 1000).unwrap();
        assert_eq!(s.sigmas.len(), 51);
        assert_eq!(s.sigmas[0], 1.0);
        assert!((s.sigmas[1] - 0.99324).abs() < 1e-5);
        assert!((s.sigmas[25] - 0.75).abs() < 1e-6);
        assert!((s.sigmas[49] - 0.05769).abs() < 1e-5);
        assert_eq!(s.sigmas[50], 0.0);
        assert_eq!(s.timesteps[0], 1000.0);
    }

    #[test]
    fn refuses_dynamic_shifting() {
        let e =
            SchedulerConfig::from_json(r#"{"shift": 3.0, "use_dynamic_shifting": true}"#, "cfg")
                .unwrap_err();
        assert!(e.to_string().contains("use_dynamic_shifting"));
    }

    #[test]
    fn refuses_a_shift_that_breaks_the_schedule() {
        for bad in ["1e-9", "0", "-1", "1e6"] {
            let e = SchedulerConfig::from_json(&format!(r#"{{"shift": {bad}}}"#), "cfg")
                .unwrap_err()
                .to_string();
            assert!(e.contains("shift") && e.contains("0.001"), "{bad}: {e}");
        }
        assert!(SchedulerConfig::from_json(r#"{"shift": 0.001}"#, "cfg").is_ok());
    }
}
