//! Smoke tests of the reference fixtures themselves (tests/fixtures, scripts/reference/make_fixtures.py): they load,
//! have the documented shapes, agree with each other and with independent re-computations of the simple formulas.
//! No engine code is exercised here; these tests guard the data the parity tests rely on.
mod common;

use common::*;
use contentv::io::safetensors::StDtype;

fn dtype_name(d: StDtype) -> &'static str {
    match d {
        StDtype::F32 => "float32",
        StDtype::F16 => "float16",
        StDtype::BF16 => "bfloat16",
        StDtype::I64 => "int64",
        StDtype::I32 => "int32",
        StDtype::U8 => "uint8",
        StDtype::F64 => "float64",
        _ => "other",
    }
}

fn bf16_round(x: f32) -> f32 {
    half::bf16::from_f32(x).to_f32()
}

#[test]
fn manifest_lists_every_file_and_tensor() {
    let m = manifest();
    assert_eq!(m["format_version"].as_u64(), Some(FORMAT_VERSION));
    for k in ["torch", "diffusers", "transformers", "python"] {
        assert!(
            m["versions"][k].is_string(),
            "manifest.versions.{k} missing"
        );
    }
    assert!(m["seeds"]["base"].is_u64());
    let files = m["files"].as_object().expect("manifest.files");
    let mut on_disk: Vec<String> = std::fs::read_dir(fixtures_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".safetensors"))
        .collect();
    on_disk.sort();
    let mut listed: Vec<String> = files.keys().cloned().collect();
    listed.sort();
    assert_eq!(on_disk, listed, "fixture files on disk vs manifest.files");
    for group in [
        "tokens",
        "text_encoders",
        "transformer",
        "scheduler",
        "pipeline",
        "vae",
    ] {
        assert!(
            files.contains_key(&format!("{group}.safetensors")),
            "fixture group {group} missing"
        );
    }
    for (file, entry) in files {
        let fx = Fixture::load(file);
        let tensors = entry["tensors"].as_object().unwrap();
        assert_eq!(tensors.len(), fx.tensors.len(), "{file}: tensor count");
        for (name, t) in &fx.tensors {
            let e = tensors
                .get(name)
                .unwrap_or_else(|| panic!("{file}: {name} not in manifest"));
            let shape: Vec<usize> = e["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as usize)
                .collect();
            assert_eq!(shape, t.shape, "{file}: {name} shape");
            assert_eq!(
                e["dtype"].as_str().unwrap(),
                dtype_name(t.dtype),
                "{file}: {name} dtype"
            );
            assert!(
                e["doc"].as_str().is_some_and(|d| !d.is_empty()),
                "{file}: {name} undocumented"
            );
            assert_eq!(t.data.len(), t.numel());
        }
        println!("{file}: {} tensors ok", fx.tensors.len());
    }
    // the tiny model the fixtures were made with is there
    for f in [
        "model_index.json",
        "transformer/config.json",
        "vae/config.json",
        "scheduler/scheduler_config.json",
        "text_encoder_3/config.json",
        "tokenizer/vocab.json",
        "tokenizer_2/merges.txt",
        "tokenizer_3/tokenizer.json",
    ] {
        assert!(
            tiny_model_dir().join(f).is_file(),
            "assets/tiny-model/{f} missing"
        );
    }
}

/// Padded ids = raw ids truncated (keeping the final EOS) and padded with the tokenizer's pad id.
#[test]
fn tokens_padding_and_truncation_rules() {
    let fx = Fixture::load("tokens");
    let m = manifest();
    let prompts = m["prompts"].as_array().unwrap();
    let tk = &m["tokenizers"];
    assert_eq!(
        tk["clip_l"]["pad_id"].as_i64(),
        Some(49407),
        "tokenizer/ pads with <|endoftext|>"
    );
    assert_eq!(
        tk["clip_g"]["pad_id"].as_i64(),
        Some(0),
        "tokenizer_2/ pads with '!'"
    );
    assert_eq!(
        (tk["t5"]["pad_id"].as_i64(), tk["t5"]["eos_id"].as_i64()),
        (Some(0), Some(1))
    );
    let mut truncated = [0usize; 3];
    for i in 0..prompts.len() {
        for (k, (name, len, pad, eos)) in [
            ("clip_l", 77usize, 49407i64, 49407i64),
            ("clip_g", 77, 0, 49407),
            ("t5", 256, 0, 1),
        ]
        .into_iter()
        .enumerate()
        {
            let raw = fx.ints(&format!("{name}.p{i}.raw"));
            let padded = fx.ints(&format!("{name}.p{i}.padded"));
            assert_eq!(padded.len(), len);
            assert_eq!(*raw.last().unwrap(), eos, "{name} p{i}: raw ends with EOS");
            if name != "t5" {
                assert_eq!(raw[0], 49406, "{name} p{i}: BOS");
            }
            let want: Vec<i64> = if raw.len() <= len {
                raw.iter()
                    .copied()
                    .chain(std::iter::repeat(pad))
                    .take(len)
                    .collect()
            } else {
                truncated[k] += 1;
                raw[..len - 1].iter().copied().chain([eos]).collect()
            };
            assert_eq!(padded, &want[..], "{name} p{i}");
        }
    }
    assert!(
        truncated.iter().all(|&n| n >= 1),
        "the long prompt must be truncated by every tokenizer: {truncated:?}"
    );
    // SD3.5 quirk: tokenizer_2's pad token "!" is a special token, so a literal "!" encodes as id 0, not "!</w>" (256)
    let p1_l = fx.ints("clip_l.p1.raw");
    let p1_g = fx.ints("clip_g.p1.raw");
    assert_eq!(p1_l[p1_l.len() - 2], 256);
    assert_eq!(p1_g[p1_g.len() - 2], 0);
}

#[test]
fn text_encoders_consistency() {
    let fx = Fixture::load("text_encoders");
    let tok = Fixture::load("tokens");
    let m = manifest();
    // encoder_prompts = [prompts[2] (demo), prompts[0] ("")]
    let prompts = m["prompts"].as_array().unwrap();
    let enc = m["encoder_prompts"].as_array().unwrap();
    let idx: Vec<usize> = enc
        .iter()
        .map(|p| {
            prompts
                .iter()
                .position(|q| q == p)
                .expect("encoder prompt in prompts")
        })
        .collect();
    for (name, len) in [("clip_l", 77usize), ("clip_g", 77), ("t5", 256)] {
        let ids = fx.ints(&format!("{name}.input_ids"));
        for (b, &i) in idx.iter().enumerate() {
            assert_eq!(
                &ids[b * len..(b + 1) * len],
                tok.ints(&format!("{name}.p{i}.padded")),
                "{name} batch {b}"
            );
        }
    }
    assert_eq!(fx.shape("f32.t5.last_hidden_state"), &[2, 256, 4096]);
    let (hl, hg) = (
        fx.shape("f32.clip_l.hidden_penultimate")[2],
        fx.shape("f32.clip_g.hidden_penultimate")[2],
    );
    assert!(hl + hg <= 4096);
    // pooled = cat(text_embeds L, text_embeds G), both precisions
    for p in ["f32", "bf16"] {
        let pooled = fx.f32(&format!("{p}.pooled_prompt_embeds"));
        let (l, g) = (
            fx.f32(&format!("{p}.clip_l.text_embeds")),
            fx.f32(&format!("{p}.clip_g.text_embeds")),
        );
        assert_eq!(fx.shape(&format!("{p}.pooled_prompt_embeds")), &[2, 2048]);
        let (nl, ng) = (l.len() / 2, g.len() / 2);
        assert_eq!(nl + ng, 2048);
        for b in 0..2 {
            let want: Vec<f32> = l[b * nl..(b + 1) * nl]
                .iter()
                .chain(&g[b * ng..(b + 1) * ng])
                .copied()
                .collect();
            assert_eq!(
                &pooled[b * 2048..(b + 1) * 2048],
                &want[..],
                "{p} pooled batch {b}"
            );
        }
    }
    // the reference's own bf16 run stays close to its f32 run
    for k in [
        "clip_l.hidden_penultimate",
        "clip_g.hidden_penultimate",
        "pooled_prompt_embeds",
    ] {
        let r = assert_close(
            &format!("bf16 vs f32 {k}"),
            fx.f32(&format!("bf16.{k}")),
            fx.f32(&format!("f32.{k}")),
            0.08,
            0.02,
        );
        assert!(r.cosine > 0.9995);
    }
    let t5_err = manifest_f64("/text_encoders_bf16_error/t5_last_hidden_state/max_abs");
    assert!(t5_err > 0.0 && t5_err < 0.2, "T5 bf16 error {t5_err}");
    // T5 output is after the final RMSNorm: O(1) values, not degenerate
    let t5 = fx.f32("f32.t5.last_hidden_state");
    let rms = (t5.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / t5.len() as f64).sqrt();
    assert!(rms > 0.3 && rms < 3.0, "T5 rms {rms}");
}

/// E_d(p)[k] = sin(p w_k) for k < d/2, cos(p w_{k-d/2}) otherwise, w_k = 10000^(-k/(d/2)) (in f64).
fn sincos_1d(d: usize, p: f64, out: &mut Vec<f64>) {
    let h = d / 2;
    let omega = |k: usize| 1.0 / 10000f64.powf(k as f64 / h as f64);
    out.extend((0..h).map(|k| (p * omega(k)).sin()));
    out.extend((0..h).map(|k| (p * omega(k)).cos()));
}

#[test]
fn transformer_fixture_consistency() {
    let fx = Fixture::load("transformer");
    assert_eq!(fx.shape("input.latent"), &[1, 16, 3, 6, 10]);
    assert_eq!(fx.shape("f32.output"), &[1, 16, 3, 6, 10]);
    assert_eq!(fx.shape("f32.cfg_batch2_output"), &[2, 16, 3, 6, 10]);
    let d = fx.shape("f32.patch_embed_out")[2];
    assert_eq!(fx.shape("f32.patch_embed_out"), &[1, 45, d]);
    assert_eq!(fx.shape("f32.context_embedder_out"), &[1, 333, d]);
    // timestep is sigma*1000 for shift 3, 5 steps, index 1
    let s = 0.8f32;
    let t = 3.0 * s / (1.0 + 2.0 * s) * 1000.0;
    assert!((fx.f32("input.timestep")[0] - t).abs() < 1e-3);

    // fixed 3D sin-cos table: [temporal d/4 | w (3d/8) | h (3d/8)], spatial positions doubled
    let (tt, hp, wp) = (3usize, 3usize, 5usize);
    let mut want = Vec::new();
    for ti in 0..tt {
        for hi in 0..hp {
            for wi in 0..wp {
                sincos_1d(d / 4, ti as f64, &mut want);
                sincos_1d(3 * d / 8, 2.0 * wi as f64, &mut want);
                sincos_1d(3 * d / 8, 2.0 * hi as f64, &mut want);
            }
        }
    }
    let want: Vec<f32> = want.into_iter().map(|v| v as f32).collect();
    assert_close(
        "pos_embed_table vs Rust formula",
        fx.f32("pos_embed_table"),
        &want,
        1e-6,
        0.0,
    );

    // batch 2 (cond, uncond): its cond half equals the batch-1 cond forward
    let n = fx.f32("f32.output").len();
    assert_close(
        "cfg batch2[0] vs batch1 (f32)",
        &fx.f32("f32.cfg_batch2_output")[..n],
        fx.f32("f32.output"),
        1e-4,
        1e-4,
    );
    let diff = max_abs_diff(&fx.f32("f32.cfg_batch2_output")[n..], fx.f32("f32.output"));
    assert!(
        diff > 1e-2,
        "uncond output should differ from cond ({diff})"
    );
    // the reference's bf16 run is close to its f32 run
    for k in [
        "output",
        "cfg_batch2_output",
        "patch_embed_out",
        "block0.out_hidden",
        "block1.out_hidden",
    ] {
        let r = assert_close(
            &format!("bf16 vs f32 {k}"),
            fx.f32(&format!("bf16.{k}")),
            fx.f32(&format!("f32.{k}")),
            0.1,
            0.02,
        );
        assert!(r.cosine > 0.999);
        let m = manifest_f64(&format!("/transformer_bf16_error/{k}/max_abs"));
        assert!(
            (r.max_abs - m).abs() <= 1e-6 + 1e-3 * m,
            "{k}: manifest says {m}, data {}",
            r.max_abs
        );
    }
}

/// s_i = f32(1 - i/steps); sigma = shift*s / (1 + (shift-1)*s) in f32; t = sigma*1000; sigmas end with 0.
fn schedule(steps: usize, shift: f32) -> (Vec<f32>, Vec<f32>) {
    let step = -1.0f64 / steps as f64;
    let mut sig: Vec<f32> = (0..steps)
        .map(|i| {
            let s = (i as f64 * step + 1.0) as f32;
            (shift * s) / (1.0 + (shift - 1.0) * s)
        })
        .collect();
    let ts: Vec<f32> = sig.iter().map(|s| s * 1000.0).collect();
    sig.push(0.0);
    (sig, ts)
}

#[test]
fn scheduler_matches_formula() {
    let fx = Fixture::load("scheduler");
    for shift in [1.0f32, 3.0] {
        for steps in [1usize, 2, 5, 50] {
            let (sig, ts) = schedule(steps, shift);
            let key = format!("shift{shift:.1}.steps{steps}");
            assert_close(
                &format!("{key}.sigmas"),
                fx.f32(&format!("{key}.sigmas")),
                &sig,
                0.0,
                2.5e-7,
            );
            assert_close(
                &format!("{key}.timesteps"),
                fx.f32(&format!("{key}.timesteps")),
                &ts,
                0.0,
                2.5e-7,
            );
        }
    }
    let (sig, _) = schedule(50, 3.0);
    assert!((sig[25] - 0.75).abs() < 1e-6 && (sig[1] - 0.993_243).abs() < 1e-5);
    // Euler step with bf16 latents: bf16(f32(x) + bf16(bf16(dt) * v)). PyTorch casts the 0-dim f32 tensor dt to
    // bf16 before the multiply (keeping dt in f32 gives 1-ulp differences on a few percent of the elements).
    let (x, v) = (fx.f32("step.sample"), fx.f32("step.model_output"));
    for i in [0usize, 49] {
        let dt = bf16_round(sig[i + 1] - sig[i]);
        let want: Vec<f32> = x
            .iter()
            .zip(v)
            .map(|(x, v)| bf16_round(x + bf16_round(dt * v)))
            .collect();
        assert_close(
            &format!("euler step {i}"),
            fx.f32(&format!("step.i{i}.prev_sample")),
            &want,
            0.0,
            0.0,
        );
    }
}

fn u8_frames(video: &[f32], shape: &[usize]) -> Vec<f32> {
    // [1, 3, F, H, W] -> [F, H, W, 3], uint8(clamp(v*0.5+0.5, 0, 1)*255) with truncation
    let (c, f, h, w) = (shape[1], shape[2], shape[3], shape[4]);
    let mut out = Vec::with_capacity(video.len());
    for fi in 0..f {
        for y in 0..h {
            for x in 0..w {
                for ci in 0..c {
                    let v = video[((ci * f + fi) * h + y) * w + x];
                    out.push((((v * 0.5 + 0.5).clamp(0.0, 1.0)) * 255.0) as u8 as f32);
                }
            }
        }
    }
    out
}

#[test]
fn pipeline_fixture_consistency() {
    let fx = Fixture::load("pipeline");
    let m = manifest();
    let p = &m["pipeline"];
    let (hh, ww, nf, steps) = (
        p["height"].as_u64().unwrap() as usize,
        p["width"].as_u64().unwrap() as usize,
        p["num_frames"].as_u64().unwrap() as usize,
        p["steps"].as_u64().unwrap() as usize,
    );
    let g = p["guidance_scale"].as_f64().unwrap() as f32;
    let lat = [1usize, 16, (nf - 1) / 4 + 1, hh / 8, ww / 8];
    assert_eq!(fx.shape("noise"), &lat);
    let (sig, ts) = schedule(steps, 3.0);
    assert_close("pipeline sigmas", fx.f32("sigmas"), &sig, 0.0, 2.5e-7);
    assert_close("pipeline timesteps", fx.f32("timesteps"), &ts, 0.0, 2.5e-7);

    // f32 run: v = v_u + g (v_c - v_u); x_{i+1} = x_i + dt v
    let mut x: Vec<f32> = fx.f32("noise").to_vec();
    for i in 0..steps {
        let (vc, vu, v) = (
            fx.f32(&format!("f32.step{i}.v_cond")),
            fx.f32(&format!("f32.step{i}.v_uncond")),
            fx.f32(&format!("f32.step{i}.v")),
        );
        let want_v: Vec<f32> = vc.iter().zip(vu).map(|(c, u)| u + g * (c - u)).collect();
        assert_close(&format!("f32 cfg step {i}"), v, &want_v, 1e-5, 1e-5);
        let dt = sig[i + 1] - sig[i];
        x = x.iter().zip(v).map(|(x, v)| x + dt * v).collect();
        assert_close(
            &format!("f32 latents step {i}"),
            fx.f32(&format!("f32.step{i}.latents")),
            &x,
            1e-5,
            1e-5,
        );
    }
    // bf16 run: guidance in bf16 (each op rounded), latents bf16 between steps
    let mut x: Vec<f32> = fx.f32("noise").to_vec();
    for i in 0..steps {
        let (vc, vu, v) = (
            fx.f32(&format!("bf16.step{i}.v_cond")),
            fx.f32(&format!("bf16.step{i}.v_uncond")),
            fx.f32(&format!("bf16.step{i}.v")),
        );
        let want_v: Vec<f32> = vc
            .iter()
            .zip(vu)
            .map(|(c, u)| bf16_round(u + bf16_round(g * bf16_round(c - u))))
            .collect();
        assert_close(&format!("bf16 cfg step {i}"), v, &want_v, 0.0, 0.0);
        let dt = bf16_round(sig[i + 1] - sig[i]);
        x = x
            .iter()
            .zip(v)
            .map(|(x, v)| bf16_round(x + bf16_round(dt * v)))
            .collect();
        assert_close(
            &format!("bf16 latents step {i}"),
            fx.f32(&format!("bf16.step{i}.latents")),
            &x,
            0.0,
            0.0,
        );
    }
    // de-normalisation x / (1/std) + mean with the VAE config's statistics
    let cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(tiny_model_dir().join("vae/config.json")).unwrap(),
    )
    .unwrap();
    let mean: Vec<f32> = cfg["latents_mean"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    let std: Vec<f32> = cfg["latents_std"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    let per_c = lat[2] * lat[3] * lat[4];
    for prec in ["f32", "bf16"] {
        let last = fx.f32(&format!("{prec}.step{}.latents", steps - 1));
        let want: Vec<f32> = last
            .iter()
            .enumerate()
            .map(|(i, x)| x / (1.0 / std[i / per_c]) + mean[i / per_c])
            .collect();
        assert_close(
            &format!("{prec} vae_input"),
            fx.f32(&format!("{prec}.vae_input")),
            &want,
            1e-6,
            1e-6,
        );
    }
    // video shape, range, and the uint8 conversion (bit-exact from the f32 video)
    let vshape = [1usize, 3, nf, hh, ww];
    assert_eq!(fx.shape("f32.video"), &vshape);
    assert!(fx.f32("f32.video").iter().all(|v| (-1.0..=1.0).contains(v)));
    assert_eq!(fx.shape("f32.frames_u8"), &[nf, hh, ww, 3]);
    assert_close(
        "f32 frames_u8",
        &u8_frames(fx.f32("f32.video"), &vshape),
        fx.f32("f32.frames_u8"),
        0.0,
        0.0,
    );
    // the bf16 run's video is stored in f16: its frames agree within one level
    assert_close(
        "bf16 frames_u8 (f16 video)",
        &u8_frames(fx.f32("bf16.video"), &vshape),
        fx.f32("bf16.frames_u8"),
        1.0,
        0.0,
    );
    assert_close(
        "bf16 vs f32 video",
        fx.f32("bf16.video"),
        fx.f32("f32.video"),
        0.1,
        0.0,
    );
}

#[test]
fn vae_fixture_consistency() {
    let fx = Fixture::load("vae");
    for (t, lshape) in [("t3", [1usize, 16, 3, 6, 10]), ("t4", [1, 16, 4, 4, 6])] {
        assert_eq!(fx.shape(&format!("{t}.latent")), &lshape);
        let vshape = [1, 3, 1 + 4 * (lshape[2] - 1), 8 * lshape[3], 8 * lshape[4]];
        assert_eq!(fx.shape(&format!("f32.{t}.video")), &vshape);
        assert_eq!(fx.shape(&format!("bf16.{t}.video")), &vshape);
        let v = fx.f32(&format!("f32.{t}.video"));
        assert!(
            v.iter().all(|x| (-1.0..=1.0).contains(x)),
            "{t}: video is clamped to [-1, 1]"
        );
        let rms = (v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>() / v.len() as f64).sqrt();
        assert!(rms > 0.05, "{t}: degenerate video (rms {rms})");
        let r = assert_close(
            &format!("{t} bf16 vs f32"),
            fx.f32(&format!("bf16.{t}.video")),
            v,
            0.1,
            0.0,
        );
        assert!(r.cosine > 0.999);
    }
    // decoder taps of t3: one latent frame per chunk, frame 0 is not upsampled in time
    assert_eq!(fx.shape("f32.t3.post_quant_conv"), &[1, 16, 3, 6, 10]);
    assert_eq!(fx.shape("f32.t3.decoder.conv_in")[2..], [3, 6, 10]);
    assert_eq!(fx.shape("f32.t3.decoder.up_blocks.0")[2..], [5, 12, 20]);
}

#[test]
fn assert_close_reports() {
    let want = [1.0f32, -2.0, 0.5, 0.0];
    let got = [1.0f32, -2.001, 0.5, 1e-4];
    let r = compare("unit", &got, &want, 1e-3, 1e-3);
    assert!(r.passed(), "{r}");
    assert_eq!(r.worst_index, 1);
    assert!(r.tolerance_used > 0.3 && r.tolerance_used <= 1.0);
    let r = compare("unit", &got, &want, 1e-5, 0.0);
    assert!(!r.passed() && r.failures == 2);
    let r = compare("nan", &[f32::NAN], &[1.0], 1.0, 1.0);
    assert!(!r.passed() && r.non_finite == 1);
    let caught = std::panic::catch_unwind(|| assert_close("boom", &[2.0], &[1.0], 0.1, 0.0));
    assert!(caught.is_err());
}
