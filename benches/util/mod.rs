//! Shared pieces of the GPU benches: device or SKIP, CUDA-event timing (median after warm-up)
//! with L2 flushed before every timed call.
//!
//! L2: a kernel whose operands fit in L2 (50 MiB on an H100 or H200) would read them from cache
//! on a repeated call and report more than its real bandwidth. So every timed call is cold:
//! [`time_ms`] runs [`flush_l2`] (a device copy of [`L2_FLUSH_BYTES`], more than any current
//! GPU's L2) before each call, outside the timed region; the benches that time a whole model
//! with a wall clock, whose operands are far larger than L2, say so with [`l2_exceeded`]
//! instead (a flush buffer there would change the pool peaks they report).
#![allow(dead_code)]
use std::cell::RefCell;

use contentv::runtime::device::{gpu_unavailable_reason, Event};
use contentv::runtime::{DType, Device, Tensor};

/// Bytes [`flush_l2`] copies (read once and written once): twice the largest L2 of a current
/// GPU (B200: 126 MB; H100/H200: 50 MiB), so nothing of the previous call survives in it.
pub const L2_FLUSH_BYTES: usize = 256 << 20;

thread_local! {
    /// The two flush buffers, made on the first flush.
    static FLUSH: RefCell<Option<(Tensor, Tensor)>> = const { RefCell::new(None) };
}

/// Evicts L2: copies one [`L2_FLUSH_BYTES`] device buffer into another on the compute stream
/// (stream-ordered before whatever is queued next). Tiny in a rehearsal.
pub fn flush_l2(dev: &Device) {
    let n = scaled(L2_FLUSH_BYTES, 1 << 16);
    FLUSH.with(|f| {
        let mut f = f.borrow_mut();
        if f.is_none() {
            let mk = || Tensor::zeros(&[n], DType::I8, dev).unwrap();
            *f = Some((mk(), mk()));
            println!(
                "L2: flushed before every timed call ({} MiB device copy outside the timed region)",
                n >> 20
            );
        }
        let (a, b) = f.as_ref().unwrap();
        b.copy_from(a).unwrap();
    });
}

/// For a bench that does not flush: says that `what` moves `bytes` through memory, more than
/// twice the L2 of any current GPU, so repeated calls cannot run from L2 (not checked in a
/// rehearsal, whose tiny sizes measure nothing).
pub fn l2_exceeded(what: &str, bytes: usize) {
    if !rehearsal() {
        assert!(
            bytes >= L2_FLUSH_BYTES,
            "{what}: {bytes} bytes could fit in L2: flush it (util::flush_l2) before timing"
        );
    }
    println!(
        "L2: not flushed for {what}: its operands ({:.1} GiB) are larger than any GPU's L2",
        bytes as f64 / (1u64 << 30) as f64
    );
}

/// The first CUDA device, or `None` after printing `SKIP: <reason>`; prints the device line.
pub fn cuda_or_skip() -> Option<Device> {
    if rehearsal() {
        println!("REHEARSAL: tiny sizes, one iteration; no number below is a measurement");
    }
    if let Some(r) = gpu_unavailable_reason() {
        println!("SKIP: {r}");
        return None;
    }
    match Device::cuda(0) {
        Ok(d) => {
            let g = d.gpu().unwrap();
            println!(
                "device: {} (sm_{}{}, {} SMs)",
                g.name, g.compute_capability.0, g.compute_capability.1, g.sm_count
            );
            Some(d)
        }
        Err(e) => {
            println!("SKIP: {e}");
            None
        }
    }
}

/// Median milliseconds of `iters` runs of `f`, each between two CUDA events on the compute
/// stream and each after an L2 flush ([`flush_l2`], before the first event), after one warm-up
/// run (module load, cuBLASLt heuristics, pool).
pub fn time_ms(dev: &Device, iters: usize, mut f: impl FnMut()) -> f32 {
    let g = dev.gpu().unwrap();
    f();
    dev.synchronize().unwrap();
    let mut v = Vec::with_capacity(iters);
    for _ in 0..iters.max(1) {
        flush_l2(dev);
        let (a, b) = (Event::new(true).unwrap(), Event::new(true).unwrap());
        a.record(&g.compute).unwrap();
        f();
        b.record(&g.compute).unwrap();
        b.synchronize().unwrap();
        v.push(a.elapsed_ms(&b).unwrap());
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// One result line: name, median ms, achieved TFLOP/s.
pub fn report_flops(name: &str, ms: f32, flops: f64) {
    println!(
        "{name:<58} {ms:>9.3} ms  {:>8.1} TFLOP/s",
        flops / (ms as f64 * 1e-3) / 1e12
    );
}

/// One result line: name, median ms, achieved GB/s (`bytes` moved once).
pub fn report_bw(name: &str, ms: f32, bytes: usize) {
    println!(
        "{name:<58} {ms:>9.3} ms  {:>8.1} GB/s",
        bytes as f64 / (ms as f64 * 1e-3) / 1e9
    );
}

/// Iterations: 1 in a rehearsal, 3 with `CONTENTV_BENCH_QUICK`, else `full`.
pub fn iters(full: usize) -> usize {
    if rehearsal() {
        1
    } else if std::env::var("CONTENTV_BENCH_QUICK").is_ok() {
        3
    } else {
        full
    }
}

/// `CONTENTV_BENCH_REHEARSAL=1`: every bench runs its code paths at tiny sizes, so the GPU check
/// (scripts/gpu-check.sh) is rehearsed on the emulated device in CI. Its numbers mean nothing.
pub fn rehearsal() -> bool {
    std::env::var("CONTENTV_BENCH_REHEARSAL").is_ok_and(|v| v == "1")
}

/// The production transformer shape at the default size (432x768x125): 41,472 video tokens,
/// 333 text tokens, 38 heads of 64; tiny in a rehearsal.
pub fn n_video() -> usize {
    scaled(41_472, 150)
}
pub fn n_text() -> usize {
    scaled(333, 13)
}
pub fn heads() -> usize {
    scaled(38, 2)
}

/// `full`, or `tiny` in a rehearsal.
pub fn scaled(full: usize, tiny: usize) -> usize {
    if rehearsal() {
        tiny
    } else {
        full
    }
}

/// `n` values uniform in [-amp, amp) from a seeded xorshift64 (deterministic bench inputs).
pub fn rand_vec(n: usize, seed: u64, amp: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0) * amp
        })
        .collect()
}
