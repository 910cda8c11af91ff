//! The admission check of a request's memory: the estimate of
//! [`crate::model::memory::request_memory`] against what the machine has (host: MemAvailable;
//! a GPU's memory where given), before `generate` loads anything and before the server queues
//! a job. The refusal names the request's size fields in the caller's words (the API's `size`
//! and `num_frames`, or the flags).
use std::path::Path;

use super::params::VideoParams;
use crate::error::{Error, Result};
use crate::model::memory::{request_memory, RequestMemory};
use crate::model::mmdit::{Transformer, TransformerConfig};
use crate::model::pipeline::{LatentLayout, VideoGeometry};
use crate::model::vae::VaeConfig;
use crate::runtime::device::Device;
use crate::runtime::residency::MemoryOptions;

/// How the caller names the sizes in messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Names {
    /// `size` and `num_frames` (the server's API).
    Api,
    /// `--width/--height` and `--frames` (the command line).
    Cli,
}

/// The architecture the estimate needs, read from the model folder (the transformer's weight
/// shapes and the VAE's config; nothing is uploaded).
#[derive(Clone, Debug)]
pub struct ModelFacts {
    pub transformer: TransformerConfig,
    pub vae: VaeConfig,
    /// The model's folder (the server's checks look up a mag calibration for it).
    pub dir: std::path::PathBuf,
}

impl ModelFacts {
    pub fn read(dir: &Path) -> Result<ModelFacts> {
        let (_, transformer) = Transformer::open(
            &dir.join("transformer"),
            &Device::Cpu,
            &MemoryOptions::default(),
        )?;
        let vae = VaeConfig::from_file(&dir.join("vae").join("config.json"))?;
        Ok(ModelFacts {
            transformer,
            vae,
            dir: dir.to_path_buf(),
        })
    }
}

/// The host's available memory (MemAvailable of /proc/meminfo), if it can be read.
pub fn host_available() -> Option<u64> {
    let t = std::fs::read_to_string("/proc/meminfo").ok()?;
    let l = t.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = l.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn estimate(f: &ModelFacts, v: &VideoParams, layout: LatentLayout, frames: usize) -> RequestMemory {
    let geo = VideoGeometry {
        frames,
        height: v.height,
        width: v.width,
        layout,
    };
    let batch = if v.guidance > 1.0 { 2 } else { 1 };
    request_memory(&geo, batch, &f.transformer, &f.vae)
}

fn gib(b: u64) -> String {
    format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64)
}

/// Refuses the request when its estimate exceeds `host` bytes (on the host) or `device` bytes
/// (on a GPU, when given). `on_gpu`: the transformer and the VAE run on a GPU.
pub fn check(
    f: &ModelFacts,
    v: &VideoParams,
    layout: LatentLayout,
    on_gpu: bool,
    host: Option<u64>,
    device: Option<u64>,
    names: Names,
) -> Result<()> {
    let m = estimate(f, v, layout, v.frames);
    let over = |m: &RequestMemory| {
        host.is_some_and(|h| m.host(on_gpu) > h)
            || (on_gpu && device.is_some_and(|d| m.device(on_gpu) > d))
    };
    if !over(&m) {
        return Ok(());
    }
    // The most frames (4k+1) that fit at this size, for the message: the estimate grows
    // with the frames, so a binary search over k.
    let tf = layout.time_factor.max(1);
    let fits = |k: usize| !over(&estimate(f, v, layout, k * tf + 1));
    let fit = fits(0).then(|| {
        let (mut lo, mut hi) = (0, (v.frames - 1) / tf); // fits(lo), !fits(hi)
        while hi - lo > 1 {
            let mid = (lo + hi) / 2;
            if fits(mid) {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        lo * tf + 1
    });
    let (size, frames) = match names {
        Names::Api => (
            format!("size {}x{}", v.width, v.height),
            format!("num_frames {}", v.frames),
        ),
        Names::Cli => (
            format!("--width {} --height {}", v.width, v.height),
            format!("--frames {}", v.frames),
        ),
    };
    let (need, have, where_) = match host {
        Some(h) if m.host(on_gpu) > h => {
            (m.host(on_gpu), h, "host memory available (MemAvailable)")
        }
        _ => (m.device(on_gpu), device.unwrap_or(0), "GPU memory"),
    };
    let hint = match fit {
        Some(n) => format!("; at this size at most {n} frames fit"),
        None => " even at 1 frame; ask for a smaller size".into(),
    };
    let frames_name = if names == Names::Api {
        "num_frames"
    } else {
        "--frames"
    };
    Err(Error::Input(format!(
        "{size} with {frames} needs about {} (decoded frames {}, latents {}, VAE {}, transformer activations {}) and the machine has {} of {where_}: ask for a smaller size or fewer {frames_name}{hint}",
        gib(need),
        gib(m.frames),
        gib(m.latents),
        gib(m.vae),
        gib(m.activations),
        gib(have),
    )))
}

/// `generate`'s admission check, before anything is loaded: the model folder's architecture,
/// the host's available memory, the device the run will use (`--device`; `auto` uses a GPU
/// when one can be used). Sizes are named by their flags.
pub fn check_generate(
    dir: &Path,
    v: &VideoParams,
    layout: LatentLayout,
    device: crate::cli::args::DeviceChoice,
) -> Result<()> {
    use crate::cli::args::DeviceChoice;
    let on_gpu = match device {
        DeviceChoice::Cpu => false,
        DeviceChoice::Cuda => true,
        DeviceChoice::Auto => crate::runtime::device::gpu_unavailable_reason().is_none(),
    };
    let facts = ModelFacts::read(dir)?;
    check(
        &facts,
        v,
        layout,
        on_gpu,
        host_available(),
        None,
        Names::Cli,
    )
}
