//! The decoder's unit tests (on the random tiny decoder of tests/support).
/// The random tiny decoder of the unit tests: test data shared with tests/ and benches/, not
/// part of the library.
#[path = "../../../tests/support/vae_synthetic.rs"]
mod synthetic;

use super::*;

use self::synthetic::{rnd, tiny_config, tiny_weights};
use super::weights::{Conv, ResBlock};
use crate::ops::conv::{conv3d, ConvOpts};
use crate::ops::vae_glue as glue;
use crate::runtime::Device;

fn cat_t(a: &Tensor, b: &Tensor) -> Tensor {
    let (sa, sb) = (a.shape(), b.shape());
    let (av, bv) = (a.to_vec_f32().unwrap(), b.to_vec_f32().unwrap());
    let plane = sa[3] * sa[4];
    let (ta, tb) = (sa[2], sb[2]);
    let mut out = Vec::new();
    for bc in 0..sa[0] * sa[1] {
        out.extend_from_slice(&av[bc * ta * plane..(bc + 1) * ta * plane]);
        out.extend_from_slice(&bv[bc * tb * plane..(bc + 1) * tb * plane]);
    }
    Tensor::from_f32(out, &[sa[0], sa[1], ta + tb, sa[3], sa[4]], &Device::Cpu).unwrap()
}

/// Whole-sequence decode without caches, with the closed form of upsample3d:
/// up3d(x) = up(x[0]) ++ up(interleave(causal_time_conv(x[1..]))).
fn decode_reference(d: &VaeDecoder, lat: &Tensor) -> Tensor {
    let c = |cv: &Conv, x: &Tensor, o: ConvOpts| {
        conv3d(x, cv.f32_weight().unwrap(), cv.b.as_ref(), &o).unwrap()
    };
    let res = |r: &ResBlock, x: &Tensor| {
        let h = r
            .shortcut
            .as_ref()
            .map_or(x.clone(), |sc| c(sc, x, ConvOpts::default()));
        let a = glue::channel_rms_norm(x, &r.norm1, true).unwrap();
        let a = c(&r.conv1, &a, ConvOpts::default());
        let a = glue::channel_rms_norm(&a, &r.norm2, true).unwrap();
        c(
            &r.conv2,
            &a,
            ConvOpts {
                residual: Some(&h),
                ..Default::default()
            },
        )
    };
    let x = c(&d.pq_denorm, lat, ConvOpts::default());
    let x = c(&d.w.conv_in, &x, ConvOpts::default());
    let x = res(&d.w.mid.0, &x);
    let x = d.attention(&d.w.mid.1, &x).unwrap();
    let mut x = res(&d.w.mid.2, &x);
    for ub in &d.w.ups {
        for r in &ub.resnets {
            x = res(r, &x);
        }
        if let Some(up) = &ub.up {
            if let Some((tc, _)) = &up.time_conv {
                let t = x.dim(2);
                if t > 1 {
                    let first = x.narrow(2, 0, 1).unwrap().contiguous().unwrap();
                    let rest = x.narrow(2, 1, t - 1).unwrap().contiguous().unwrap();
                    let rest = c(
                        tc,
                        &rest,
                        ConvOpts {
                            interleave_time: true,
                            ..Default::default()
                        },
                    );
                    x = cat_t(&first, &rest);
                }
            }
            x = c(
                &up.conv,
                &x,
                ConvOpts {
                    upsample2x: true,
                    ..Default::default()
                },
            );
        }
    }
    let x = glue::channel_rms_norm(&x, &d.w.norm_out, true).unwrap();
    c(
        &d.w.conv_out,
        &x,
        ConvOpts {
            clamp: Some((-1.0, 1.0)),
            ..Default::default()
        },
    )
}

#[test]
fn chunked_decode_equals_whole_sequence_closed_form() {
    let cfg = tiny_config();
    let w = tiny_weights(&cfg, 7);
    let d = VaeDecoder::load(&w, cfg.clone(), VaeOptions::default()).unwrap();
    let mut s = 99;
    let (b, t, h, wd) = (2, 4, 3, 5);
    let lat = Tensor::from_f32(
        rnd(b * 4 * t * h * wd, &mut s, 1.0),
        &[b, 4, t, h, wd],
        &Device::Cpu,
    )
    .unwrap();
    let y = d.decode(&lat, DecodeOpts::default()).unwrap();
    assert_eq!(y.shape(), &[b, 3, 13, 24, 40]);
    let r = decode_reference(&d, &lat);
    assert_eq!(r.shape(), y.shape());
    let (yv, rv) = (y.to_vec_f32().unwrap(), r.to_vec_f32().unwrap());
    let md = yv
        .iter()
        .zip(&rv)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(md < 1e-5, "max diff {md}");
    // Not degenerate: values spread and some clamping happens or not, but not all equal.
    let mean = yv.iter().sum::<f32>() / yv.len() as f32;
    let var = yv.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / yv.len() as f32;
    assert!(var > 1e-3, "variance {var}");
}

#[test]
fn denormalisation_is_folded() {
    let cfg = tiny_config();
    let w = tiny_weights(&cfg, 8);
    let d = VaeDecoder::load(&w, cfg.clone(), VaeOptions::default()).unwrap();
    let mut s = 5;
    let shape = [1, 4, 2, 2, 3];
    let x = rnd(48, &mut s, 1.0);
    let z: Vec<f32> = x
        .iter()
        .enumerate()
        .map(|(i, v)| v * cfg.latents_std[i / 12] + cfg.latents_mean[i / 12])
        .collect();
    let a = d
        .decode(
            &Tensor::from_f32(x, &shape, &Device::Cpu).unwrap(),
            DecodeOpts::default(),
        )
        .unwrap()
        .to_vec_f32()
        .unwrap();
    let b = d
        .decode(
            &Tensor::from_f32(z, &shape, &Device::Cpu).unwrap(),
            DecodeOpts::denormalized(),
        )
        .unwrap()
        .to_vec_f32()
        .unwrap();
    let md = a
        .iter()
        .zip(&b)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(md < 1e-5, "max diff {md}");
}

#[test]
fn tiled_decode_close_to_untiled() {
    let cfg = tiny_config();
    let w = tiny_weights(&cfg, 9);
    let mut d = VaeDecoder::load(&w, cfg.clone(), VaeOptions::default()).unwrap();
    let mut s = 3;
    let (t, h, wd) = (2, 12, 14);
    let lat = Tensor::from_f32(
        rnd(4 * t * h * wd, &mut s, 1.0),
        &[1, 4, t, h, wd],
        &Device::Cpu,
    )
    .unwrap();
    let full = d
        .decode(&lat, DecodeOpts::default())
        .unwrap()
        .to_vec_f32()
        .unwrap();
    d.set_options(VaeOptions {
        tiling: Some(TileConfig {
            tile: 8,
            overlap: 4,
        }),
        ..Default::default()
    });
    let tiled = d.decode(&lat, DecodeOpts::default()).unwrap();
    assert_eq!(tiled.shape(), &[1, 3, 5, 96, 112]);
    let tv = tiled.to_vec_f32().unwrap();
    let md = full
        .iter()
        .zip(&tv)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    let mad = full
        .iter()
        .zip(&tv)
        .map(|(a, b)| (a - b).abs())
        .sum::<f32>()
        / tv.len() as f32;
    eprintln!("tiled vs untiled: max {md}, mean {mad}");
    // The mid-block attention is global within a tile, so tiles cannot match exactly.
    assert!(mad < 0.08, "max {md} mean {mad}");
    // No seams: the vertical step between neighbouring rows inside the tile overlaps is not
    // larger than elsewhere (a hard seam would show as a jump at one row).
    let (fh, fw) = (96usize, 112usize);
    let step = |v: &[f32], y: usize| -> f32 {
        let mut s = 0.0;
        for c in 0..3 * 5 {
            for x in 0..fw {
                s += (v[(c * fh + y + 1) * fw + x] - v[(c * fh + y) * fw + x]).abs();
            }
        }
        s / (15 * fw) as f32
    };
    let all: f32 = (0..fh - 1).map(|y| step(&tv, y)).sum::<f32>() / (fh - 1) as f32;
    let worst = (0..fh - 1).map(|y| step(&tv, y)).fold(0.0f32, f32::max);
    let worst_full = (0..fh - 1).map(|y| step(&full, y)).fold(0.0f32, f32::max);
    eprintln!("row steps: mean {all}, worst tiled {worst}, worst untiled {worst_full}");
    assert!(
        worst < 1.5 * worst_full,
        "seam: worst row step {worst} vs untiled {worst_full}"
    );
}

#[test]
fn uint8_truncates() {
    assert_eq!(to_u8(1.0), 255);
    assert_eq!(to_u8(-1.0), 0);
    assert_eq!(to_u8(0.0), 127);
    assert_eq!(to_u8(2.0), 255);
    assert_eq!(to_u8(0.999), 254);
    let v = Tensor::from_f32(
        (0..3 * 2 * 2).map(|i| i as f32 / 6.0 - 1.0).collect(),
        &[1, 3, 2, 1, 2],
        &Device::Cpu,
    )
    .unwrap();
    let f = to_uint8_frames(&v, 0).unwrap();
    assert_eq!((f.frames, f.height, f.width), (2, 1, 2));
    // frame 0, pixel 0 = channels at flat indices 0, 4, 8.
    assert_eq!(
        &f.data[0..3],
        &[to_u8(-1.0), to_u8(4.0 / 6.0 - 1.0), to_u8(8.0 / 6.0 - 1.0)]
    );
}

#[test]
fn config_parses_diffusers_json() {
    let j = r#"{"_class_name":"AutoencoderKLWan","attn_scales":[],"base_dim":96,"dim_mult":[1,2,4,4],"dropout":0.0,
        "num_res_blocks":2,"temperal_downsample":[false,true,true],"z_dim":16}"#;
    let c = VaeConfig::from_json(j).unwrap();
    assert_eq!(c, VaeConfig::wan21());
    assert_eq!(c.decoder_dims(), vec![384, 384, 384, 192, 96]);
    assert_eq!(c.frames_for(32), 125);
    assert_eq!(c.spatial_factor(), 8);
    // an image VAE (Stable Diffusion 3's vae/config.json) is named, not loaded
    let sd3 = r#"{"_class_name":"AutoencoderKL","latent_channels":16,"block_out_channels":[128,256,512,512]}"#;
    let e = VaeConfig::from_json(sd3).unwrap_err().to_string();
    assert!(
        e.contains("AutoencoderKL\"") && e.contains("AutoencoderKLWan"),
        "{e}"
    );
}
