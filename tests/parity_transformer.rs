//! The ContentV transformer (src/model/mmdit.rs) against the diffusers fixtures
//! (tests/fixtures/transformer.safetensors) on the tiny model: intermediates, the full forward
//! and the batch-2 CFG forward. CPU: f32 against the f32 reference. GPU: bf16 against the bf16
//! reference within the reference's own bf16-vs-f32 error (manifest `transformer_bf16_error`).
mod common;

use common::{assert_close, bf16_atol, manifest_f64, tiny_model_dir, Fixture};
use contentv::model::mmdit::{pos_embed_3d, Transformer};
use contentv::model::pipeline::Denoiser;
use contentv::runtime::device::gpu_unavailable_reason;
use contentv::runtime::{Device, Tensor};

/// Text inputs [B, 333, 4096] and pooled [B, 2048] for fixture batch indices `idx`, assembled
/// from the stored f32 encoder outputs as the pipeline does.
fn text_inputs(idx: &[usize]) -> (Vec<f32>, Vec<f32>) {
    let te = Fixture::load("text_encoders");
    let (l, g, t5, pooled) = (
        te.f32("f32.clip_l.hidden_penultimate"),
        te.f32("f32.clip_g.hidden_penultimate"),
        te.f32("f32.t5.last_hidden_state"),
        te.f32("f32.pooled_prompt_embeds"),
    );
    let (dl, dg) = (
        te.shape("f32.clip_l.hidden_penultimate")[2],
        te.shape("f32.clip_g.hidden_penultimate")[2],
    );
    let mut ctx = Vec::new();
    let mut pool = Vec::new();
    for &b in idx {
        for r in 0..77 {
            let mut row = vec![0f32; 4096];
            row[..dl].copy_from_slice(&l[(b * 77 + r) * dl..][..dl]);
            row[dl..dl + dg].copy_from_slice(&g[(b * 77 + r) * dg..][..dg]);
            ctx.extend(row);
        }
        ctx.extend_from_slice(&t5[b * 256 * 4096..(b + 1) * 256 * 4096]);
        pool.extend_from_slice(&pooled[b * 2048..(b + 1) * 2048]);
    }
    (ctx, pool)
}

/// The fixture's batch-1 inputs on `dev`: latent, context [1, 333, 4096], pooled [1, 2048].
fn batch1_inputs(f: &Fixture, dev: &Device) -> (Tensor, Tensor, Tensor) {
    let x = Tensor::from_f32(f.f32("input.latent").to_vec(), f.shape("input.latent"), dev).unwrap();
    let (ctx, pooled) = text_inputs(&[0]);
    let ctx = Tensor::from_f32(ctx, &[1, 333, 4096], dev).unwrap();
    let pooled = Tensor::from_f32(pooled, &[1, 2048], dev).unwrap();
    (x, ctx, pooled)
}

fn cpu_model() -> Transformer {
    Transformer::load(&tiny_model_dir().join("transformer"), &Device::Cpu).unwrap()
}

#[test]
fn position_table_matches_reference() {
    let f = Fixture::load("transformer");
    let d = cpu_model().config.dim;
    let s = f.shape("input.latent");
    let got = pos_embed_3d(d, s[2], s[3] / 2, s[4] / 2);
    assert_close(
        "pos_embed_table",
        &got,
        f.f32("pos_embed_table"),
        1e-6,
        1e-6,
    );
}

#[test]
fn cpu_forward_matches_reference_f32() {
    let f = Fixture::load("transformer");
    let m = cpu_model();
    let dev = Device::Cpu;
    let (x, ctx, pooled) = batch1_inputs(&f, &dev);
    let ts = f.f32("input.timestep").to_vec();
    let mut taps: Vec<(String, Vec<f32>)> = Vec::new();
    let mut cb = |n: &str, t: &Tensor| taps.push((n.to_string(), t.to_vec_f32().unwrap()));
    let y = m
        .forward_taps(&x, None, &ts, &ctx, &pooled, Some(&mut cb))
        .unwrap();
    for (name, v) in &taps {
        let key = format!("f32.{name}");
        if f.has(&key) {
            assert_close(&key, v, f.f32(&key), 2e-4, 2e-4);
        }
    }
    for k in [
        "patch_embed_out",
        "temb",
        "context_embedder_out",
        "block0.out_hidden",
        "block0.out_encoder_hidden",
        "block1.out_hidden",
    ] {
        assert!(taps.iter().any(|(n, _)| n == k), "tap {k} missing");
    }
    assert_eq!(y.shape(), f.shape("f32.output"));
    assert_close(
        "f32.output",
        &y.to_vec_f32().unwrap(),
        f.f32("f32.output"),
        2e-4,
        2e-4,
    );
}

#[test]
fn cpu_cfg_batch2_equals_reference_and_two_batch1_forwards() {
    let f = Fixture::load("transformer");
    let m = cpu_model();
    let dev = Device::Cpu;
    let lat = f.f32("input.latent").to_vec();
    let s = f.shape("input.latent").to_vec();
    let t = f.f32("input.timestep")[0];
    let x2 = Tensor::from_f32(
        [lat.clone(), lat.clone()].concat(),
        &[2, s[1], s[2], s[3], s[4]],
        &dev,
    )
    .unwrap();
    let (ctx, pooled) = text_inputs(&[0, 1]);
    let y2 = m
        .forward(
            &x2,
            &[t, t],
            &Tensor::from_f32(ctx.clone(), &[2, 333, 4096], &dev).unwrap(),
            &Tensor::from_f32(pooled.clone(), &[2, 2048], &dev).unwrap(),
        )
        .unwrap()
        .to_vec_f32()
        .unwrap();
    assert_close(
        "f32.cfg_batch2_output",
        &y2,
        f.f32("f32.cfg_batch2_output"),
        2e-4,
        2e-4,
    );
    let x1 = Tensor::from_f32(lat, &s, &dev).unwrap();
    let half = y2.len() / 2;
    for b in 0..2 {
        let c = Tensor::from_f32(
            ctx[b * 333 * 4096..(b + 1) * 333 * 4096].to_vec(),
            &[1, 333, 4096],
            &dev,
        )
        .unwrap();
        let p =
            Tensor::from_f32(pooled[b * 2048..(b + 1) * 2048].to_vec(), &[1, 2048], &dev).unwrap();
        let y1 = m.forward(&x1, &[t], &c, &p).unwrap().to_vec_f32().unwrap();
        assert_close(
            &format!("batch-2 entry {b} vs batch-1"),
            &y2[b * half..(b + 1) * half],
            &y1,
            1e-5,
            1e-5,
        );
    }
}

#[test]
fn bad_inputs_are_errors() {
    let m = cpu_model();
    let dev = Device::Cpu;
    let x = Tensor::zeros(&[1, 16, 1, 4, 4], contentv::DType::F32, &dev).unwrap();
    let ctx = Tensor::zeros(&[1, 333, 4096], contentv::DType::F32, &dev).unwrap();
    let pooled = Tensor::zeros(&[1, 2048], contentv::DType::F32, &dev).unwrap();
    assert!(m.forward(&x, &[1.0, 2.0], &ctx, &pooled).is_err());
    let odd = Tensor::zeros(&[1, 16, 1, 5, 4], contentv::DType::F32, &dev).unwrap();
    assert!(m.forward(&odd, &[1.0], &ctx, &pooled).is_err());
    assert!(m.forward(&x, &[1.0], &pooled, &pooled).is_err());
    let e = Transformer::load(&tiny_model_dir().join("vae"), &dev)
        .err()
        .expect("a VAE is not a transformer");
    assert!(e.to_string().contains("pos_embed.proj.weight"), "{e}");
}

#[test]
fn gpu_forward_matches_reference_bf16() {
    if let Some(r) = gpu_unavailable_reason() {
        println!("SKIP: {r}");
        return;
    }
    let dev = Device::cuda(0).unwrap();
    let f = Fixture::load("transformer");
    let m = Transformer::load(&tiny_model_dir().join("transformer"), &dev).unwrap();
    let (x, ctx, pooled) = batch1_inputs(&f, &dev);
    let y = m
        .forward(&x, f.f32("input.timestep"), &ctx, &pooled)
        .unwrap()
        .to_vec_f32()
        .unwrap();
    let atol = bf16_atol(
        manifest_f64("/transformer_bf16_error/output/max_abs") as f32,
        0.01,
    );
    assert_close("bf16.output (GPU)", &y, f.f32("bf16.output"), atol, 0.02);
}

#[test]
fn precomputed_run_modulation_gives_the_same_output() {
    let f = Fixture::load("transformer");
    let m = cpu_model();
    let dev = Device::Cpu;
    let (x, ctx, pooled) = batch1_inputs(&f, &dev);
    let steps: Vec<Vec<f32>> = vec![vec![1000.0], vec![f.f32("input.timestep")[0]], vec![250.0]];
    let plain: Vec<Vec<f32>> = steps
        .iter()
        .map(|t| {
            m.forward(&x, t, &ctx, &pooled)
                .unwrap()
                .to_vec_f32()
                .unwrap()
        })
        .collect();
    m.prepare_run(&steps, &pooled).unwrap();
    for (k, (t, want)) in steps.iter().zip(&plain).enumerate() {
        assert_eq!(
            &m.forward_step(k, &x, t, &ctx, &pooled)
                .unwrap()
                .to_vec_f32()
                .unwrap(),
            want,
            "step t={t:?}"
        );
    }
    m.end_run();
}

/// Batch 2 (CFG) on the GPU: the output matches the bf16 reference, and the joint blocks make
/// no strided copy (`copy_nd`): the attention writes the video and text outputs as separate
/// contiguous tensors that the output projections read in place (issue 18). The copies of a
/// block are counted between the taps that bracket it (launches happen on this thread).
#[test]
fn gpu_batch2_blocks_make_no_copies() {
    use contentv::runtime::copy::copy_stats;
    if let Some(r) = gpu_unavailable_reason() {
        println!("SKIP: {r}");
        return;
    }
    let dev = Device::cuda(0).unwrap();
    let f = Fixture::load("transformer");
    let m = Transformer::load(&tiny_model_dir().join("transformer"), &dev).unwrap();
    let lat = f.f32("input.latent").to_vec();
    let s = f.shape("input.latent").to_vec();
    let t = f.f32("input.timestep")[0];
    let x2 = Tensor::from_f32(
        [lat.clone(), lat].concat(),
        &[2, s[1], s[2], s[3], s[4]],
        &dev,
    )
    .unwrap();
    let (ctx, pooled) = text_inputs(&[0, 1]);
    let ctx = Tensor::from_f32(ctx, &[2, 333, 4096], &dev).unwrap();
    let pooled = Tensor::from_f32(pooled, &[2, 2048], &dev).unwrap();
    // (tap, copy launches and bytes so far) at every tap.
    let mut marks: Vec<(String, u64, u64)> = Vec::new();
    let mut cb = |n: &str, _t: &Tensor| {
        let st = copy_stats();
        marks.push((n.to_string(), st.launches, st.bytes));
    };
    let y = m
        .forward_taps(&x2, None, &[t, t], &ctx, &pooled, Some(&mut cb))
        .unwrap()
        .to_vec_f32()
        .unwrap();
    // Block i runs between the tap before it ("context_embedder_out", then the previous
    // block's "out_hidden") and its own "out_hidden".
    let start = marks
        .iter()
        .position(|(n, _, _)| n == "context_embedder_out")
        .expect("the context embedder tap");
    let ends: Vec<usize> = (0..marks.len())
        .filter(|&i| marks[i].0.ends_with(".out_hidden"))
        .collect();
    assert_eq!(ends.len(), m.config.layers, "{marks:?}");
    let mut prev = start;
    for (i, &e) in ends.iter().enumerate() {
        let (launches, bytes) = (marks[e].1 - marks[prev].1, marks[e].2 - marks[prev].2);
        assert_eq!(
            (launches, bytes),
            (0, 0),
            "block {i} made {launches} copy_nd launches ({bytes} bytes)"
        );
        prev = e;
    }
    let atol = bf16_atol(
        manifest_f64("/transformer_bf16_error/output/max_abs") as f32,
        0.01,
    );
    assert_close(
        "bf16.cfg_batch2_output (GPU)",
        &y,
        f.f32("bf16.cfg_batch2_output"),
        atol,
        0.02,
    );
}
