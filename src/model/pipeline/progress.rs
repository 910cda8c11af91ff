//! What a run reports: progress events for the caller's bars, wall-clock timings per stage and
//! peak memory.
use crate::runtime::Device;

/// Receives (name, values) of loop intermediates.
pub type Recorder<'a> = &'a mut dyn FnMut(&str, &[f32]);

/// Progress events for the caller's bars (and the server's live previews).
#[derive(Clone, Copy, Debug)]
pub enum Progress<'a> {
    EncodeStart,
    DenoiseStart {
        steps: usize,
    },
    /// Step `index` (0-based) of `steps` is done. `seconds`: its wall-clock time. `latents` are
    /// the DiT-space latents after the step, `velocity` the (guided) velocity of the step, both
    /// [1, C, T, h, w] of `shape`; `sigma` the noise level the latents are now at, so
    /// `latents - sigma * velocity` is the step's estimate of the clean latents (for previews).
    /// `reused`: the step cache reused the transformer's result (false without a cache).
    Step {
        index: usize,
        steps: usize,
        seconds: f64,
        reused: bool,
        latents: &'a [f32],
        velocity: &'a [f32],
        sigma: f32,
        shape: [usize; 5],
    },
    DecodeStart,
    DecodeDone,
}

/// Wall-clock seconds per stage.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Timings {
    pub encode_s: f64,
    pub denoise_s: f64,
    pub step_s: Vec<f64>,
    pub decode_s: f64,
}

/// Peak memory: the process's host peak (VmHWM) and, on CUDA, the pool's peaks.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct MemoryReport {
    pub host_peak_bytes: Option<u64>,
    pub gpu_peak_in_use_bytes: Option<u64>,
    pub gpu_peak_reserved_bytes: Option<u64>,
    pub gpu_total_bytes: Option<u64>,
}

impl MemoryReport {
    pub fn now(device: &Device) -> MemoryReport {
        let mut m = MemoryReport {
            host_peak_bytes: host_peak_bytes(),
            ..Default::default()
        };
        if let Some(g) = device.gpu() {
            let s = g.pool.stats();
            m.gpu_peak_in_use_bytes = Some(s.peak_in_use as u64);
            m.gpu_peak_reserved_bytes = Some(s.peak_reserved as u64);
            m.gpu_total_bytes = Some(g.total_mem as u64);
        }
        m
    }
}

/// Peak resident set of this process (Linux `VmHWM`), if known.
pub fn host_peak_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
