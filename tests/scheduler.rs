//! The flow-matching Euler scheduler against its formula (docs/spec.md §4) and the reference
//! fixture (tests/fixtures/scheduler.safetensors, diffusers 0.33.1).
mod common;

use common::Fixture;
use contentv::model::scheduler::{linspace_sigmas, shift_sigma, FlowMatchEuler, SchedulerConfig};

#[test]
fn sigmas_and_timesteps_match_the_fixture_bit_exactly() {
    let fx = Fixture::load("scheduler");
    let mut checked = 0;
    for shift in [1.0f32, 3.0] {
        for steps in [1usize, 2, 5, 50] {
            let key = format!("shift{shift:.1}.steps{steps}");
            let s = FlowMatchEuler::new(steps, shift, 1000).unwrap();
            let want_sig = fx.f32(&format!("{key}.sigmas"));
            let want_t = fx.f32(&format!("{key}.timesteps"));
            assert_eq!(s.sigmas.len(), want_sig.len(), "{key}: sigma count");
            assert_eq!(s.timesteps.len(), want_t.len(), "{key}: timestep count");
            for (i, (g, w)) in s.sigmas.iter().zip(want_sig).enumerate() {
                assert_eq!(
                    g.to_bits(),
                    w.to_bits(),
                    "{key}: sigma[{i}] = {g:e}, reference {w:e}"
                );
            }
            for (i, (g, w)) in s.timesteps.iter().zip(want_t).enumerate() {
                assert_eq!(
                    g.to_bits(),
                    w.to_bits(),
                    "{key}: timestep[{i}] = {g:e}, reference {w:e}"
                );
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 8);
}

#[test]
fn euler_step_matches_the_fixture_in_bf16() {
    let fx = Fixture::load("scheduler");
    let s = FlowMatchEuler::new(50, 3.0, 1000).unwrap();
    let sample = fx.f32("step.sample");
    let v = fx.f32("step.model_output");
    for i in [0usize, 49] {
        let mut x = sample.to_vec();
        s.step_bf16(i, &mut x, v);
        let want = fx.f32(&format!("step.i{i}.prev_sample"));
        let bad: Vec<usize> = (0..x.len())
            .filter(|&k| x[k].to_bits() != want[k].to_bits())
            .collect();
        assert!(
            bad.is_empty(),
            "step {i}: {} of {} values differ, first at {}: got {} want {}",
            bad.len(),
            x.len(),
            bad[0],
            x[bad[0]],
            want[bad[0]]
        );
        // The f32 step is within one bf16 rounding of it.
        let mut y = sample.to_vec();
        s.step_f32(i, &mut y, v);
        for k in 0..y.len() {
            assert!(
                (y[k] - want[k]).abs() <= 1e-2 * want[k].abs().max(1.0),
                "f32 step {i} [{k}]: {} vs {}",
                y[k],
                want[k]
            );
        }
    }
}

#[test]
fn formula() {
    for steps in [1usize, 3, 7, 20, 50, 100, 1000] {
        for shift in [0.5f32, 1.0, 2.0, 3.0, 7.5] {
            let s = FlowMatchEuler::new(steps, shift, 1000).unwrap();
            assert_eq!(s.steps(), steps);
            assert_eq!(*s.sigmas.last().unwrap(), 0.0);
            assert_eq!(s.sigmas[0], 1.0, "sigma_0 is 1 for any shift");
            for i in 0..steps {
                let u = 1.0 - i as f64 / steps as f64;
                let want = shift as f64 * u / (1.0 + (shift as f64 - 1.0) * u);
                assert!(
                    (s.sigmas[i] as f64 - want).abs() < 1e-6,
                    "steps {steps} shift {shift} i {i}"
                );
                assert_eq!(s.timesteps[i], s.sigmas[i] * 1000.0);
                assert!(s.sigmas[i + 1] < s.sigmas[i], "decreasing");
                assert!(s.dt(i) < 0.0);
            }
            let sum: f64 = (0..steps).map(|i| s.dt(i) as f64).sum();
            assert!((sum + 1.0).abs() < 1e-5, "dt sums to -1");
        }
    }
    assert_eq!(linspace_sigmas(4), vec![1.0, 0.75, 0.5, 0.25]);
    assert_eq!(shift_sigma(0.5, 3.0), 0.75);
    assert_eq!(shift_sigma(0.25, 1.0), 0.25);
}

#[test]
fn config_handling() {
    let dir = common::tiny_model_dir();
    let cfg = SchedulerConfig::from_model_dir(&dir).unwrap();
    assert_eq!(
        cfg.shift,
        common::manifest_f64("/tiny_model/scheduler_shift") as f32
    );
    assert_eq!(cfg.num_train_timesteps, 1000);
    // --shift overrides the config
    let s = FlowMatchEuler::from_config(&cfg, 4, Some(1.0)).unwrap();
    assert_eq!(s.sigmas, vec![1.0, 0.75, 0.5, 0.25, 0.0]);

    let e = SchedulerConfig::from_json(r#"{"shift": 3.0, "use_dynamic_shifting": true}"#, "x.json")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("use_dynamic_shifting") && e.contains("x.json"),
        "{e}"
    );
    let e = SchedulerConfig::from_json(r#"{"shift": 3.0, "use_karras_sigmas": true}"#, "x.json")
        .unwrap_err()
        .to_string();
    assert!(e.contains("use_karras_sigmas"), "{e}");
    let e = SchedulerConfig::from_json(r#"{"shift": -1}"#, "x.json")
        .unwrap_err()
        .to_string();
    assert!(e.contains("shift"), "{e}");
    let e = SchedulerConfig::from_json("{nope", "x.json")
        .unwrap_err()
        .to_string();
    assert!(e.contains("JSON"), "{e}");
    let e = SchedulerConfig::from_json(r#"{"_class_name": "DDIMScheduler"}"#, "x.json")
        .unwrap_err()
        .to_string();
    assert!(e.contains("DDIMScheduler"), "{e}");
    assert!(
        SchedulerConfig::from_file(std::path::Path::new("/nonexistent/scheduler_config.json"))
            .is_err()
    );
    assert!(FlowMatchEuler::new(0, 3.0, 1000).is_err());
    assert!(FlowMatchEuler::new(1001, 3.0, 1000).is_err());
    assert!(FlowMatchEuler::new(10, f32::NAN, 1000).is_err());
}
