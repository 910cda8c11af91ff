//! Device memory: a caching allocator (no cudaMalloc inside the per-layer loop after the first
//! step), and page-locked host buffers for fast, asynchronous host<->device copies.
//!
//! Pool memory is *stream-ordered* on the compute stream: a buffer dropped while kernels that
//! use it are still queued can be handed out again at once, because every later use is queued
//! behind them on the same stream. Memory used on the copy stream is owned by the residency
//! layer, which orders it with events.
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use cudarc::driver::{result as cu, sys, CudaContext};

use crate::error::{Error, Result};

/// Test aid: when on, every `Tensor::empty` on the GPU is filled with 0xFF bytes (NaN in
/// every float dtype) so that a kernel that leaves part of its output unwritten fails its test.
static POISON: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub fn set_poison(on: bool) {
    POISON.store(on, std::sync::atomic::Ordering::Relaxed);
}
pub fn poison_enabled() -> bool {
    POISON.load(std::sync::atomic::Ordering::Relaxed)
}

/// Allocation statistics, in bytes.
#[derive(Clone, Copy, Debug, Default)]
pub struct PoolStats {
    /// Bytes handed out and not yet returned.
    pub in_use: usize,
    /// Bytes held by the pool but free for reuse.
    pub cached: usize,
    /// Highest `in_use` seen since the last [`Pool::reset_peak`].
    pub peak_in_use: usize,
    /// Highest `in_use + cached` (what the driver actually gave us).
    pub peak_reserved: usize,
    /// Number of driver allocations made (cuMemAlloc calls).
    pub driver_allocs: usize,
}

struct Inner {
    free: BTreeMap<usize, Vec<u64>>,
    stats: PoolStats,
    /// Optional cap on in_use + cached (the VRAM budget).
    limit: Option<usize>,
}

pub struct Pool {
    ctx: Arc<CudaContext>,
    inner: Mutex<Inner>,
}

/// Rounds a request to the pool's size classes: 512 B granules below 1 MiB, 2 MiB above.
pub fn size_class(bytes: usize) -> usize {
    let b = bytes.max(1);
    if b < (1 << 20) {
        b.div_ceil(512) * 512
    } else {
        b.div_ceil(2 << 20) * (2 << 20)
    }
}

impl Pool {
    pub fn new(ctx: Arc<CudaContext>) -> Pool {
        Pool {
            ctx,
            inner: Mutex::new(Inner {
                free: BTreeMap::new(),
                stats: PoolStats::default(),
                limit: None,
            }),
        }
    }

    pub fn stats(&self) -> PoolStats {
        self.inner.lock().unwrap().stats
    }

    pub fn reset_peak(&self) {
        let mut g = self.inner.lock().unwrap();
        g.stats.peak_in_use = g.stats.in_use;
        g.stats.peak_reserved = g.stats.in_use + g.stats.cached;
    }

    /// Caps what the pool may reserve from the driver (None = no cap).
    pub fn set_limit(&self, limit: Option<usize>) {
        self.inner.lock().unwrap().limit = limit;
    }

    /// Returns all cached (free) blocks to the driver.
    pub fn empty_cache(&self) -> Result<()> {
        self.ctx.bind_to_thread()?;
        // Frees are stream-ordered: make sure nothing queued still uses them.
        self.ctx.synchronize()?;
        let mut g = self.inner.lock().unwrap();
        let free = std::mem::take(&mut g.free);
        for (size, ptrs) in free {
            for p in ptrs {
                // SAFETY: `p` came from cuMemAlloc, is in the free list (no buffer owns it) and the
                // context was synchronised above, so no queued work still uses it.
                unsafe { cu::free_sync(p) }?;
                g.stats.cached -= size;
            }
        }
        Ok(())
    }

    pub(crate) fn alloc(self: &Arc<Self>, bytes: usize) -> Result<DeviceBuffer> {
        let size = size_class(bytes);
        {
            let mut g = self.inner.lock().unwrap();
            if let Some(list) = g.free.get_mut(&size) {
                if let Some(p) = list.pop() {
                    g.stats.cached -= size;
                    g.stats.in_use += size;
                    g.stats.peak_in_use = g.stats.peak_in_use.max(g.stats.in_use);
                    return Ok(DeviceBuffer {
                        ptr: p,
                        size,
                        pool: self.clone(),
                    });
                }
            }
            if let Some(limit) = g.limit {
                if g.stats.in_use + g.stats.cached + size > limit && g.stats.in_use + size <= limit
                {
                    drop(g);
                    self.empty_cache()?;
                } else if g.stats.in_use + size > limit {
                    return Err(Error::OutOfMemory {
                        requested: bytes,
                        hint: format!(
                            "The VRAM budget of {:.2} GiB is exhausted ({:.2} GiB in use). Raise --vram-budget, or use --offload sequential / --quantize int8 / --vae-tiling.",
                            limit as f64 / (1u64 << 30) as f64,
                            g.stats.in_use as f64 / (1u64 << 30) as f64
                        ),
                    });
                }
            }
        }
        // SAFETY: a plain allocation on the bound context; the result is checked.
        let p = match unsafe { cu::malloc_sync(size) } {
            Ok(p) => p,
            Err(e) if e.0 == sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY => {
                // Give the cache back and try once more.
                self.empty_cache()?;
                // SAFETY: as above.
                unsafe { cu::malloc_sync(size) }.map_err(|_| Error::OutOfMemory {
                    requested: bytes,
                    hint: "Try --offload sequential, --quantize int8, --vae-tiling or a smaller --width/--height/--frames.".into(),
                })?
            }
            Err(e) => return Err(e.into()),
        };
        let mut g = self.inner.lock().unwrap();
        g.stats.in_use += size;
        g.stats.driver_allocs += 1;
        g.stats.peak_in_use = g.stats.peak_in_use.max(g.stats.in_use);
        g.stats.peak_reserved = g.stats.peak_reserved.max(g.stats.in_use + g.stats.cached);
        Ok(DeviceBuffer {
            ptr: p,
            size,
            pool: self.clone(),
        })
    }

    fn release(&self, ptr: u64, size: usize) {
        let mut g = self.inner.lock().unwrap();
        g.stats.in_use -= size;
        g.stats.cached += size;
        g.free.entry(size).or_default().push(ptr);
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let _ = self.empty_cache();
    }
}

/// A block of device memory from the pool; returned to the pool on drop.
pub struct DeviceBuffer {
    ptr: u64,
    size: usize,
    pool: Arc<Pool>,
}

impl DeviceBuffer {
    pub fn ptr(&self) -> u64 {
        self.ptr
    }
    /// Size of the block (the request rounded up to its size class).
    pub fn size(&self) -> usize {
        self.size
    }
}

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        self.pool.release(self.ptr, self.size);
    }
}

impl std::fmt::Debug for DeviceBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeviceBuffer({:#x}, {} B)", self.ptr, self.size)
    }
}

/// Page-locked host memory (ordinary, not write-combined, so the CPU can read it fast too).
pub struct PinnedBuffer {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the buffer exclusively owns its page-locked allocation (freed once, in Drop); the
// raw pointer is only read through &self and written through &mut self, so it may move
// between and be shared by threads like a Box<[u8]>.
unsafe impl Send for PinnedBuffer {}
unsafe impl Sync for PinnedBuffer {}

impl PinnedBuffer {
    /// Allocates `len` bytes of page-locked memory. Fails (instead of stalling the machine)
    /// when the host cannot pin that much; callers fall back to pageable memory.
    pub fn new(ctx: &CudaContext, len: usize) -> Result<PinnedBuffer> {
        ctx.bind_to_thread()?;
        // SAFETY: allocates page-locked host memory on the bound context; the result is checked.
        let p = unsafe { cu::malloc_host(len.max(1), 0) }
            .map_err(|e| Error::Cuda(format!("cannot pin {len} bytes of host memory: {e:?}")))?;
        Ok(PinnedBuffer {
            ptr: p as *mut u8,
            len,
        })
    }
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr points at len bytes (at least, cuMemHostAlloc) owned by self for its whole
        // life: pages the driver mapped, plain bytes for Rust (u8 has no invalid values); the
        // slice borrows &self, so it cannot outlive the buffer or overlap a &mut borrow.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as `as_slice`, with exclusive access through &mut self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn as_ptr(&self) -> *const u8 {
        self.ptr
    }
}

impl Drop for PinnedBuffer {
    fn drop(&mut self) {
        // SAFETY: ptr came from cuMemHostAlloc and is freed exactly once, here; no slice of it
        // outlives self.
        unsafe {
            let _ = cu::free_host(self.ptr as *mut std::ffi::c_void);
        }
    }
}
