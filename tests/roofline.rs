//! The roofline's model of a step and of a decode (model::roofline) against what the engine
//! really runs: a forward of the tiny transformer and a decode of the tiny VAE on the CPU with
//! ops::trace recording every GEMM, attention and convolution. Call counts and FLOPs per class
//! must agree exactly, so the `contentv roofline` table cannot drift from the code.
mod common;

use std::collections::BTreeMap;

use common::tiny_model_dir;
use contentv::model::mmdit::Transformer;
use contentv::model::pipeline::Denoiser;
use contentv::model::roofline::{decode_rows, step_rows, Row, StepShape};
use contentv::model::vae::{DecodeOpts, VaeDecoder, VaeOptions};
use contentv::ops::trace::{OpClass, OpRecord, Recorder};
use contentv::runtime::{Device, Tensor};

/// `shape` filled uniformly in [-0.5, 0.5) by the tests' seeded generator.
fn random(shape: &[usize], seed: u64) -> Tensor {
    let n: usize = shape.iter().product();
    Tensor::from_f32(common::rand_vec(n, seed, 0.5), shape, &Device::Cpu).unwrap()
}

/// (calls, FLOPs) per class, recorded and modelled.
fn by_class_recorded(recs: &[OpRecord]) -> BTreeMap<OpClass, (usize, f64)> {
    let mut m = BTreeMap::new();
    for r in recs {
        let e = m.entry(r.class).or_insert((0, 0.0));
        e.0 += 1;
        e.1 += r.flops;
    }
    m
}
fn by_class_modelled(rows: &[Row]) -> BTreeMap<OpClass, (usize, f64)> {
    let mut m = BTreeMap::new();
    for r in rows {
        if let Some(c) = r.kind.class() {
            let e = m.entry(c).or_insert((0, 0.0));
            e.0 += r.calls;
            e.1 += r.flops;
        }
    }
    m
}

fn assert_same(
    what: &str,
    rec: BTreeMap<OpClass, (usize, f64)>,
    model: BTreeMap<OpClass, (usize, f64)>,
) {
    assert_eq!(
        rec.keys().collect::<Vec<_>>(),
        model.keys().collect::<Vec<_>>(),
        "{what}: op classes"
    );
    for (c, (n, f)) in &rec {
        let (mn, mf) = model[c];
        assert_eq!(*n, mn, "{what}: {c:?} calls recorded {n}, modelled {mn}");
        assert!(
            (f - mf).abs() <= 1e-9 * f.abs(),
            "{what}: {c:?} FLOPs recorded {f}, modelled {mf}"
        );
    }
}

/// The rows' probes (the shapes `roofline --measure` times) are the calls the engine makes:
/// per class, the per-call FLOPs of the probes, each repeated by its count, are exactly the
/// recorded calls' FLOPs; and each row's totals are the sums over its probes.
fn assert_probes(what: &str, recs: &[OpRecord], rows: &[Row]) {
    for r in rows {
        let calls: usize = r.probes.iter().map(|(_, n)| n).sum();
        let flops: f64 = r.probes.iter().map(|(p, n)| *n as f64 * p.flops()).sum();
        assert_eq!(calls, r.calls, "{what}: row {} calls vs its probes", r.name);
        assert!(
            (flops - r.flops).abs() <= 1e-9 * r.flops.abs(),
            "{what}: row {} FLOPs {} vs its probes {flops}",
            r.name,
            r.flops
        );
    }
    let classes: std::collections::BTreeSet<OpClass> = recs.iter().map(|r| r.class).collect();
    for c in classes {
        let mut got: Vec<f64> = recs
            .iter()
            .filter(|r| r.class == c)
            .map(|r| r.flops)
            .collect();
        let mut model: Vec<f64> = rows
            .iter()
            .filter(|r| r.kind.class() == Some(c))
            .flat_map(|r| r.probes.iter())
            .flat_map(|(p, n)| std::iter::repeat_n(p.flops(), *n))
            .collect();
        got.sort_by(f64::total_cmp);
        model.sort_by(f64::total_cmp);
        assert_eq!(got.len(), model.len(), "{what}: {c:?} calls");
        for (g, m) in got.iter().zip(&model) {
            assert!(
                (g - m).abs() <= 1e-9 * g.abs(),
                "{what}: {c:?}: a call of {g} FLOPs recorded, the probes model {m}\n{got:?}\n{model:?}"
            );
        }
    }
}

#[test]
fn step_rows_are_what_a_forward_runs() {
    let t = Transformer::load(&tiny_model_dir().join("transformer"), &Device::Cpu).unwrap();
    let c = t.config.clone();
    // Batch 2 (the joint cond/uncond pass), 2 latent frames of 8 x 12 (48 video tokens), 21
    // text tokens.
    let (b, s) = (2, 21);
    let x = random(&[b, c.in_channels, 2, 8, 12], 1);
    let ctx = random(&[b, s, c.joint_attention_dim], 2);
    let pooled = random(&[b, c.pooled_dim], 3);
    let steps = [vec![700.0f32, 700.0]];
    t.precompute_modulation(&steps, &pooled).unwrap();
    let rec = Recorder::start().unwrap();
    t.forward_step(0, &x, &steps[0], &ctx, &pooled).unwrap();
    let recs = rec.records();
    let got = by_class_recorded(&recs);
    drop(rec);
    let video_tokens = 2 * (8 / c.patch) * (12 / c.patch);
    let rows = step_rows(
        &c,
        StepShape {
            batch: b,
            video_tokens,
            text_tokens: s,
        },
    );
    assert_same("step", got, by_class_modelled(&rows));
    assert_probes("step", &recs, &rows);
}

#[test]
fn decode_rows_are_what_a_decode_runs() {
    let dec = VaeDecoder::from_dir(
        &tiny_model_dir().join("vae"),
        &Device::Cpu,
        VaeOptions::default(),
    )
    .unwrap();
    let cfg = dec.config().clone();
    // 3 latent frames (the first chunk skips the temporal upsampling) of 4 x 6.
    let (t, h, w) = (3, 4, 6);
    let z = random(&[1, cfg.z_dim, t, h, w], 4);
    let rec = Recorder::start().unwrap();
    dec.decode(&z, DecodeOpts::default()).unwrap();
    let recs = rec.records();
    let got = by_class_recorded(&recs);
    drop(rec);
    let rows = decode_rows(&cfg, t, h, w, false).unwrap();
    assert_same("decode", got, by_class_modelled(&rows));
    assert_probes("decode", &recs, &rows);
}

#[test]
fn recorder_is_per_thread_and_not_nested() {
    let r = Recorder::start().unwrap();
    assert!(Recorder::start().is_err());
    let other = std::thread::spawn(|| Recorder::start().map(|r| r.records().len()).unwrap())
        .join()
        .unwrap();
    assert_eq!(other, 0);
    drop(r);
    assert!(Recorder::start().is_ok());
}
