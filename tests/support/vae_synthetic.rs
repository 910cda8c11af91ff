//! A random tiny Wan VAE decoder with the real key names and shapes, for tests (no checkpoint
//! needed). Test data, not part of the library: included by tests/parity_vae.rs, benches/gpu_vae.rs
//! and the VAE's unit tests (`#[path]`; the library names itself `contentv` for them).
#![allow(dead_code)]
use std::collections::HashMap;

use contentv::model::vae::{MapWeights, VaeConfig};
use contentv::runtime::{Device, Tensor};

/// Uniform values in [-scale, scale) from a 64-bit LCG.
pub fn rnd(n: usize, seed: &mut u64, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|_| {
            *seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0) * scale
        })
        .collect()
}

/// Stores one random tensor: (key, shape, scale, seed).
type Put<'a> = &'a mut dyn FnMut(String, &[usize], f32, &mut u64);

/// A random tiny Wan VAE decoder with the real key names and shapes.
pub fn tiny_weights(cfg: &VaeConfig, seed: u64) -> MapWeights {
    let mut s = seed;
    let mut m = HashMap::new();
    let mut put = |k: String, shape: &[usize], scale: f32, s: &mut u64| {
        let n = shape.iter().product();
        m.insert(
            k,
            Tensor::from_f32(rnd(n, s, scale), shape, &Device::Cpu).unwrap(),
        );
    };
    let conv = |k: &str, co: usize, ci: usize, kk: &[usize], put: Put, s: &mut u64| {
        let mut sh = vec![co, ci];
        sh.extend_from_slice(kk);
        let fan: usize = ci * kk.iter().product::<usize>();
        put(format!("{k}.weight"), &sh, 1.5 / (fan as f32).sqrt(), s);
        put(format!("{k}.bias"), &[co], 0.1, s);
    };
    let z = cfg.z_dim;
    let dims = cfg.decoder_dims();
    let c = dims[0];
    let gamma = |k: &str, c: usize, r: usize, put: Put, s: &mut u64| {
        let mut sh = vec![c];
        sh.extend(std::iter::repeat_n(1, r));
        put(format!("{k}.gamma"), &sh, 1.0, s);
    };
    let res = |k: &str, ci: usize, co: usize, put: Put, s: &mut u64| {
        gamma(&format!("{k}.norm1"), ci, 3, put, s);
        conv(&format!("{k}.conv1"), co, ci, &[3, 3, 3], put, s);
        gamma(&format!("{k}.norm2"), co, 3, put, s);
        conv(&format!("{k}.conv2"), co, co, &[3, 3, 3], put, s);
        if ci != co {
            conv(&format!("{k}.conv_shortcut"), co, ci, &[1, 1, 1], put, s);
        }
    };
    let p = &mut put;
    conv("post_quant_conv", z, z, &[1, 1, 1], p, &mut s);
    conv("decoder.conv_in", c, z, &[3, 3, 3], p, &mut s);
    res("decoder.mid_block.resnets.0", c, c, p, &mut s);
    res("decoder.mid_block.resnets.1", c, c, p, &mut s);
    gamma("decoder.mid_block.attentions.0.norm", c, 2, p, &mut s);
    conv(
        "decoder.mid_block.attentions.0.to_qkv",
        3 * c,
        c,
        &[1, 1],
        p,
        &mut s,
    );
    conv(
        "decoder.mid_block.attentions.0.proj",
        c,
        c,
        &[1, 1],
        p,
        &mut s,
    );
    let tup = cfg.temperal_upsample();
    let n = cfg.dim_mult.len();
    for i in 0..n {
        let mut cur = if i >= 1 { dims[i] / 2 } else { dims[i] };
        let out = dims[i + 1];
        for k in 0..=cfg.num_res_blocks {
            res(
                &format!("decoder.up_blocks.{i}.resnets.{k}"),
                cur,
                out,
                p,
                &mut s,
            );
            cur = out;
        }
        if i != n - 1 {
            if tup[i] {
                conv(
                    &format!("decoder.up_blocks.{i}.upsamplers.0.time_conv"),
                    2 * out,
                    out,
                    &[3, 1, 1],
                    p,
                    &mut s,
                );
            }
            conv(
                &format!("decoder.up_blocks.{i}.upsamplers.0.resample.1"),
                out / 2,
                out,
                &[3, 3],
                p,
                &mut s,
            );
        }
    }
    gamma("decoder.norm_out", *dims.last().unwrap(), 3, p, &mut s);
    conv(
        "decoder.conv_out",
        cfg.out_channels,
        *dims.last().unwrap(),
        &[3, 3, 3],
        p,
        &mut s,
    );
    MapWeights::new(m, Device::Cpu)
}

pub fn tiny_config() -> VaeConfig {
    VaeConfig {
        base_dim: 4,
        decoder_base_dim: None,
        z_dim: 4,
        dim_mult: vec![1, 2, 2, 2],
        num_res_blocks: 1,
        temperal_downsample: vec![false, true, true],
        latents_mean: vec![0.1, -0.2, 0.3, 0.0],
        latents_std: vec![1.5, 0.5, 2.0, 1.0],
        out_channels: 3,
    }
}
