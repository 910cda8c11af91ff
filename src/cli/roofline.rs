//! `contentv roofline`: every GEMM, attention, convolution and memory-bound op of one
//! denoising step and of the VAE decode at a video size, with FLOPs, bytes and the time each
//! needs at a GPU's ceilings (datasheet peak tensor / f32 rate and memory bandwidth; each op
//! takes max(FLOPs / peak, bytes / bandwidth)). The sum is the floor of a step, to be set next
//! to the goal (3.2 s per step at the default size on an H100) and to measured times.
//!
//! The rows come from model::roofline, which tests/roofline.rs checks against the ops a real
//! forward and decode perform. Times here are predictions from datasheet numbers, not
//! measurements.
use serde::Serialize;

use super::args::RooflineArgs;
use super::load::{device_name, model_dir};
use super::request::resolve::check_sizes;
use super::Ui;
use crate::error::{Error, Result};
use crate::model::interfaces::TEXT_TOKENS;
use crate::model::mmdit::Transformer;
use crate::model::mmdit::TransformerConfig;
use crate::model::pipeline::geometry::VideoGeometry;
use crate::model::pipeline::LatentLayout;
use crate::model::roofline::{
    decode_rows, measure, measure_ceilings, step_rows, Kind, Row, StepShape,
};
use crate::model::vae::VaeConfig;
use crate::ops::conv::ConvPrecision;
use crate::ops::quant::{int8_crossover_m, int8_model_crossover, Int8Rates, H100_INT8_RATES};
use crate::runtime::residency::MemoryOptions;
use crate::runtime::Device;

/// A GPU's datasheet ceilings (dense, no sparsity).
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Ceilings {
    pub name: &'static str,
    /// bf16 tensor-core rate with f32 accumulation, TFLOP/s.
    pub tensor_tflops: f64,
    /// f32 CUDA-core rate (FMA = 2 FLOPs), TFLOP/s.
    pub fp32_tflops: f64,
    /// Memory bandwidth, GB/s.
    pub mem_gbs: f64,
}

/// Datasheet ceilings of the GPUs users run (NVIDIA product sheets; docs/perf.md cites them).
pub const GPUS: &[(&str, Ceilings)] = &[
    (
        "h100",
        Ceilings {
            name: "H100 SXM",
            tensor_tflops: 989.4,
            fp32_tflops: 66.9,
            mem_gbs: 3350.0,
        },
    ),
    (
        "h200",
        Ceilings {
            name: "H200 SXM",
            tensor_tflops: 989.4,
            fp32_tflops: 66.9,
            mem_gbs: 4800.0,
        },
    ),
    (
        "h100-pcie",
        Ceilings {
            name: "H100 PCIe",
            tensor_tflops: 756.0,
            fp32_tflops: 51.2,
            mem_gbs: 2000.0,
        },
    ),
    (
        "a100",
        Ceilings {
            name: "A100 SXM 80GB",
            tensor_tflops: 312.0,
            fp32_tflops: 19.5,
            mem_gbs: 2039.0,
        },
    ),
    (
        "l40s",
        Ceilings {
            name: "L40S",
            tensor_tflops: 362.1,
            fp32_tflops: 91.6,
            mem_gbs: 864.0,
        },
    ),
    (
        "4090",
        Ceilings {
            name: "RTX 4090",
            tensor_tflops: 165.2,
            fp32_tflops: 82.6,
            mem_gbs: 1008.0,
        },
    ),
];

/// The goal per step at the default size on an H100 (issue: FlashAttention-3-class stacks).
pub const GOAL_STEP_S: f64 = 3.2;

fn ceilings(name: &str) -> Result<Ceilings> {
    let key = name.trim().to_ascii_lowercase();
    GPUS.iter()
        .find(|(k, _)| *k == key)
        .map(|(_, c)| *c)
        .ok_or_else(|| {
            let names: Vec<&str> = GPUS.iter().map(|(k, _)| *k).collect();
            Error::Input(format!(
                "--gpu {name:?} is not in the table; use one of {}",
                names.join(", ")
            ))
        })
}

/// One row with its prediction (and, with --measure, the achieved time).
#[derive(Debug, Serialize)]
struct Predicted {
    name: String,
    unit: &'static str,
    calls: usize,
    gflop: f64,
    gbytes: f64,
    bound: &'static str,
    ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    measured_ms: Option<f64>,
}

fn predict(rows: &[Row], g: &Ceilings) -> Vec<Predicted> {
    rows.iter()
        .map(|r| {
            let (unit, peak) = match r.kind {
                Kind::Tensor(_) => ("tensor", g.tensor_tflops),
                Kind::Fp32(_) => ("fp32", g.fp32_tflops),
                Kind::Memory => ("memory", f64::INFINITY),
            };
            let compute = r.flops / (peak * 1e12);
            let memory = r.bytes / (g.mem_gbs * 1e9);
            Predicted {
                name: r.name.clone(),
                unit,
                calls: r.calls,
                gflop: r.flops / 1e9,
                gbytes: r.bytes / 1e9,
                bound: if compute >= memory {
                    "compute"
                } else {
                    "memory"
                },
                ms: compute.max(memory) * 1e3,
                measured_ms: None,
            }
        })
        .collect()
}

/// What --measure found on the GPU.
#[derive(Debug, Serialize)]
struct Measured {
    device: String,
    /// Ceilings measured there (the predictions use these).
    tensor_tflops: f64,
    fp32_tflops: f64,
    mem_gbs: f64,
    step_s: f64,
    decode_s: f64,
}

/// Where INT8 (`--quantize int8`) switches from the fused W8A16 kernel to dequantise +
/// cuBLASLt (ops::quant::choose_int8_kernel): the rows Auto uses and the roofline model's
/// crossover at this GPU's bandwidth, with H100_INT8_RATES' dense and fused rates scaled by the
/// tensor peak (an estimate, docs/perf.md).
#[derive(Debug, Serialize)]
struct Int8Choice {
    crossover_m: usize,
    model_crossover_m: Option<usize>,
    dense_tflops: f64,
    fused_tflops: f64,
    /// Rows of the video GEMMs (batch x video tokens) and the kernel they get.
    video_rows: usize,
    video_kernel: &'static str,
}

fn int8_choice(g: &Ceilings, video_rows: usize) -> Result<Int8Choice> {
    let peak = GPUS[0].1.tensor_tflops;
    let scale = g.tensor_tflops / peak;
    let rates = Int8Rates {
        mem_bytes_s: g.mem_gbs * 1e9,
        dense_flops: H100_INT8_RATES.dense_flops * scale,
        fused_flops: H100_INT8_RATES.fused_flops * scale,
    };
    let crossover = int8_crossover_m()?;
    Ok(Int8Choice {
        crossover_m: crossover,
        model_crossover_m: int8_model_crossover(2432, 2432, &rates, 1 << 20),
        dense_tflops: rates.dense_flops / 1e12,
        fused_tflops: rates.fused_flops / 1e12,
        video_rows,
        video_kernel: if video_rows >= crossover {
            "dequantise + cuBLASLt"
        } else {
            "fused W8A16"
        },
    })
}

#[derive(Debug, Serialize)]
struct Report {
    gpu: Ceilings,
    #[serde(skip_serializing_if = "Option::is_none")]
    measured: Option<Measured>,
    frames: usize,
    width: usize,
    height: usize,
    batch: usize,
    video_tokens: usize,
    text_tokens: usize,
    vae_precision: &'static str,
    step: Vec<Predicted>,
    step_s: f64,
    step_tflop: f64,
    decode: Vec<Predicted>,
    decode_s: f64,
    decode_tflop: f64,
    int8: Int8Choice,
}

/// The architecture: ContentV-8B's, or the one of `--model` (its transformer weight shapes and
/// config.json, its VAE config.json; checked like a load, nothing uploaded).
fn architecture(a: &RooflineArgs, ui: &Ui) -> Result<(TransformerConfig, VaeConfig)> {
    let Some(m) = &a.model else {
        return Ok((TransformerConfig::contentv_8b(), VaeConfig::wan21()));
    };
    let dir = model_dir(&Some(m.clone()), ui);
    let (_, cfg) = Transformer::open(
        &dir.join("transformer"),
        &Device::Cpu,
        &MemoryOptions::default(),
    )?;
    let vae = VaeConfig::from_file(&dir.join("vae").join("config.json"))?;
    Ok((cfg, vae))
}

pub fn run(a: &RooflineArgs, ui: &Ui) -> Result<()> {
    let mut g = ceilings(&a.gpu)?;
    // generate's own bounds (frames, sizes, steps), then the 4k+1 rule of the geometry.
    // (ContentV's layout, the one VideoGeometry::new checks against)
    check_sizes(a.frames, a.width, a.height, a.steps, LatentLayout::CONTENTV)
        .map_err(|e| Error::Input(format!("{e} (roofline takes generate's bounds)")))?;
    let geo = VideoGeometry::new(a.frames, a.height, a.width)?;
    let [_, _, t, h, w] = geo.latent_shape();
    let (cfg, vae_cfg) = architecture(a, ui)?;
    let p = cfg.patch;
    if h % p != 0 || w % p != 0 {
        return Err(Error::Input(format!(
            "the latent size {h}x{w} is not a multiple of the patch size {p}"
        )));
    }
    let shape = StepShape {
        batch: if a.no_guidance { 1 } else { 2 },
        video_tokens: t * (h / p) * (w / p),
        text_tokens: TEXT_TOKENS,
    };
    let bf16 = a.vae_precision == "bf16";
    let step_r = step_rows(&cfg, shape);
    let decode_r = decode_rows(&vae_cfg, t, h, w, bf16)?;
    let mut measured = None;
    let mut achieved = None;
    if a.measure {
        let dev = Device::cuda(0).map_err(|e| {
            Error::Input(format!(
                "--measure times the ops on a GPU and none can be used here: {e}"
            ))
        })?;
        let small = std::env::var("CONTENTV_BENCH_REHEARSAL").is_ok_and(|v| v == "1");
        let c = measure_ceilings(&dev, small)?;
        let probes: usize = step_r.iter().chain(&decode_r).map(|r| r.probes.len()).sum();
        ui.note(&format!(
            "measuring {probes} op shapes on {} (each: a warm-up, then the median of 3-20 calls)",
            device_name(&dev)
        ));
        let conv = if bf16 {
            ConvPrecision::Bf16
        } else {
            ConvPrecision::F32
        };
        let ms = measure(&step_r, &dev, conv)?;
        let md = measure(&decode_r, &dev, conv)?;
        g = Ceilings {
            name: "measured",
            tensor_tflops: c.tensor_tflops,
            fp32_tflops: c.fp32_tflops,
            mem_gbs: c.mem_gbs,
        };
        measured = Some(Measured {
            device: device_name(&dev),
            tensor_tflops: c.tensor_tflops,
            fp32_tflops: c.fp32_tflops,
            mem_gbs: c.mem_gbs,
            step_s: ms.iter().sum(),
            decode_s: md.iter().sum(),
        });
        achieved = Some((ms, md));
    }
    let mut step = predict(&step_r, &g);
    let mut decode = predict(&decode_r, &g);
    if let Some((ms, md)) = achieved {
        for (p, s) in step.iter_mut().zip(ms).chain(decode.iter_mut().zip(md)) {
            p.measured_ms = Some(s * 1e3);
        }
    }
    let sum = |v: &[Predicted]| v.iter().map(|r| r.ms).sum::<f64>() / 1e3;
    let tflop = |v: &[Predicted]| v.iter().map(|r| r.gflop).sum::<f64>() / 1e3;
    let report = Report {
        gpu: g,
        measured,
        frames: a.frames,
        width: a.width,
        height: a.height,
        batch: shape.batch,
        video_tokens: shape.video_tokens,
        text_tokens: shape.text_tokens,
        vae_precision: if bf16 { "bf16" } else { "f32" },
        step_s: sum(&step),
        step_tflop: tflop(&step),
        decode_s: sum(&decode),
        decode_tflop: tflop(&decode),
        step,
        decode,
        int8: int8_choice(&g, shape.batch * shape.video_tokens)?,
    };
    if ui.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).map_err(|e| Error::Other(e.to_string()))?
        );
        return Ok(());
    }
    print!("{}", render(&report, a.steps));
    Ok(())
}

fn table(rows: &[Predicted]) -> String {
    let total: f64 = rows.iter().map(|r| r.ms).sum();
    let measured = rows.iter().all(|r| r.measured_ms.is_some()) && !rows.is_empty();
    let mut s = format!(
        "  {:<36} {:>6} {:>11} {:>9} {:>7} {:>8} {:>10} {:>6}",
        "op", "calls", "GFLOP", "GB", "unit", "bound", "ms", "share"
    );
    if measured {
        s.push_str(&format!(" {:>12} {:>9}", "measured ms", "of floor"));
    }
    s.push('\n');
    let mut order: Vec<&Predicted> = rows.iter().collect();
    order.sort_by(|a, b| b.ms.total_cmp(&a.ms));
    for r in order {
        s.push_str(&format!(
            "  {:<36} {:>6} {:>11.1} {:>9.2} {:>7} {:>8} {:>10.2} {:>5.1}%",
            r.name,
            r.calls,
            r.gflop,
            r.gbytes,
            r.unit,
            r.bound,
            r.ms,
            100.0 * r.ms / total.max(f64::MIN_POSITIVE)
        ));
        if let Some(m) = r.measured_ms {
            s.push_str(&format!(
                " {:>12.2} {:>8.1}%",
                m,
                100.0 * r.ms / m.max(f64::MIN_POSITIVE)
            ));
        }
        s.push('\n');
    }
    s
}

fn render(r: &Report, steps: usize) -> String {
    let g = &r.gpu;
    let mut s = match &r.measured {
        None => format!(
            "roofline at {}x{}x{} ({} video + {} text tokens, batch {}) on {} \
             (datasheet: {} TFLOP/s bf16 tensor, {} TFLOP/s f32, {} GB/s; predictions, not measurements)\n\n",
            r.width, r.height, r.frames, r.video_tokens, r.text_tokens, r.batch, g.name, g.tensor_tflops, g.fp32_tflops, g.mem_gbs
        ),
        Some(m) => format!(
            "roofline at {}x{}x{} ({} video + {} text tokens, batch {}) on {}: ceilings measured there \
             ({:.1} TFLOP/s bf16 GEMM, {:.1} TFLOP/s f32 GEMM, {:.0} GB/s copy); \"measured ms\" is each op \
             run alone at its shape on random tensors (memory-bound rows: a copy of the same bytes)\n\n",
            r.width, r.height, r.frames, r.video_tokens, r.text_tokens, r.batch, m.device,
            m.tensor_tflops, m.fp32_tflops, m.mem_gbs
        ),
    };
    s.push_str(&format!(
        "one denoising step: {:.1} TFLOP, {:.2} s at the ceilings\n",
        r.step_tflop, r.step_s
    ));
    if let Some(m) = &r.measured {
        s.push_str(&format!("measured: {:.3} s per step\n", m.step_s));
    }
    s.push_str(&table(&r.step));
    s.push_str(&format!(
        "\nVAE decode ({} convolutions): {:.1} TFLOP, {:.2} s at the ceilings\n",
        r.vae_precision, r.decode_tflop, r.decode_s
    ));
    if let Some(m) = &r.measured {
        s.push_str(&format!("measured: {:.3} s\n", m.decode_s));
    }
    s.push_str(&table(&r.decode));
    s.push_str(&format!(
        "\n{steps} steps + decode: {:.1} s at the ceilings. Goal at the default size on an H100: {GOAL_STEP_S} s \
         per step (FlashAttention-3-class); diffusers-class stacks about 4.6 s.\n",
        r.step_s * steps as f64 + r.decode_s
    ));
    if let Some(m) = &r.measured {
        s.push_str(&format!(
            "{steps} steps + decode, ops as measured here: {:.1} s.\n",
            m.step_s * steps as f64 + m.decode_s
        ));
    }
    let i = &r.int8;
    s.push_str(&format!(
        "INT8 (--quantize int8): the video GEMMs ({} rows) run {}; dequantise + cuBLASLt from {} rows on \
         (INT8_CROSSOVER_M), the fused W8A16 kernel below, the GEMV up to 16. Roofline crossover on this GPU \
         (2432 x 2432; cuBLASLt {:.0}, fused {:.0} TFLOP/s assumed): {} rows. Estimates.\n",
        i.video_rows,
        i.video_kernel,
        i.crossover_m,
        i.dense_tflops,
        i.fused_tflops,
        i.model_crossover_m
            .map_or("none".to_string(), |m| m.to_string()),
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int8_choice_follows_the_model() {
        let h100 = ceilings("h100").unwrap();
        let c = int8_choice(&h100, 2 * 41_472).unwrap();
        assert_eq!(c.model_crossover_m, Some(583));
        assert!((c.dense_tflops - 620.0).abs() < 1e-6 && (c.fused_tflops - 420.0).abs() < 1e-6);
        if std::env::var_os("CONTENTV_INT8_CROSSOVER_M").is_none() {
            assert_eq!(c.crossover_m, crate::ops::quant::INT8_CROSSOVER_M);
            assert_eq!(c.video_kernel, "dequantise + cuBLASLt");
            assert_eq!(int8_choice(&h100, 300).unwrap().video_kernel, "fused W8A16");
        }
        let h200 = int8_choice(&ceilings("h200").unwrap(), 1).unwrap();
        assert_eq!(h200.model_crossover_m, Some(407));
    }

    #[test]
    fn unknown_gpu_names_the_choices() {
        let e = ceilings("v100").unwrap_err().to_string();
        assert!(
            e.contains("v100") && e.contains("h100") && e.contains("4090"),
            "{e}"
        );
        assert_eq!(ceilings(" H200 ").unwrap().name, "H200 SXM");
    }

    #[test]
    fn default_step_matches_the_anchors_arithmetic() {
        // anchors.md section 3: 1743 TFLOP per step at 432x768x125 with CFG (41,805 tokens;
        // GEMMs 2 N 12 d^2 per stream and block, attention 4 N^2 d per block).
        let cfg = TransformerConfig::contentv_8b();
        let rows = step_rows(
            &cfg,
            StepShape {
                batch: 2,
                video_tokens: 41_472,
                text_tokens: 333,
            },
        );
        let tf: f64 = rows.iter().map(|r| r.flops).sum::<f64>() / 1e12;
        assert!((tf - 1743.0).abs() < 15.0, "{tf} TFLOP");
        let g = ceilings("h100").unwrap();
        let t: f64 = predict(&rows, &g).iter().map(|r| r.ms).sum::<f64>() / 1e3;
        // anchors.md: 1.76 s per step with everything at 989 TFLOP/s; memory-bound ops add a bit.
        assert!(t > 1.74 && t < 2.1, "{t} s");
    }
}
