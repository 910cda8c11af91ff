//! Device discovery and the CUDA runtime: context, a compute stream and a copy stream, the
//! embedded kernel modules, kernel launches, cuBLASLt handle.
//!
//! cudarc panics when libcuda is missing, so every entry point probes with `is_culib_present()`
//! first; [`Device::cuda`] returns an error with the reason instead.
use std::collections::HashMap;
use std::ffi::{c_void, CString};
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::driver::{result as cu, sys, CudaContext, CudaStream};

use super::memory::{DeviceBuffer, Pool};
use crate::error::{Error, Result};

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/kernels.rs"));
}

/// How to get nvcc, shown whenever the GPU is used from a build without kernels.
pub const NVCC_HINT: &str = "this binary was built without nvcc, so it has no CUDA kernels. \
Run scripts/install-cuda-toolchain.sh (or set NVCC=/path/to/nvcc) and rebuild with cargo.";

/// Where a computation runs. `Cpu` is the plain f32 reference path.
#[derive(Clone)]
pub enum Device {
    Cpu,
    Cuda(Arc<Gpu>),
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda(g) => write!(f, "cuda:{} ({})", g.ordinal, g.name),
        }
    }
}

impl PartialEq for Device {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Device::Cpu, Device::Cpu) => true,
            (Device::Cuda(a), Device::Cuda(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

static GPUS: OnceLock<Mutex<HashMap<usize, Arc<Gpu>>>> = OnceLock::new();

impl Device {
    /// The GPU with this ordinal (one shared runtime per ordinal per process), or an error
    /// that says why there is none. Never panics.
    pub fn cuda(ordinal: usize) -> Result<Device> {
        gpu_unavailable_reason().map_or(Ok(()), |r| Err(Error::NoGpu(r)))?;
        let map = GPUS.get_or_init(|| Mutex::new(HashMap::new()));
        let mut map = map.lock().unwrap();
        if let Some(g) = map.get(&ordinal) {
            return Ok(Device::Cuda(g.clone()));
        }
        let g = Arc::new(Gpu::new(ordinal)?);
        map.insert(ordinal, g.clone());
        Ok(Device::Cuda(g))
    }

    /// The first GPU if there is one, else the CPU; the reason is returned when falling back.
    pub fn best() -> (Device, Option<String>) {
        match Device::cuda(0) {
            Ok(d) => (d, None),
            Err(e) => (Device::Cpu, Some(e.to_string())),
        }
    }

    pub fn is_cuda(&self) -> bool {
        matches!(self, Device::Cuda(_))
    }

    pub fn gpu(&self) -> Option<&Arc<Gpu>> {
        match self {
            Device::Cuda(g) => Some(g),
            Device::Cpu => None,
        }
    }

    /// Waits until all queued work on this device is done (no-op on the CPU).
    pub fn synchronize(&self) -> Result<()> {
        if let Device::Cuda(g) = self {
            g.synchronize()?;
        }
        Ok(())
    }
}

/// Why the GPU path cannot be used, or `None` if it can. Never panics.
pub fn gpu_unavailable_reason() -> Option<String> {
    if cfg!(no_kernels) || embedded::KERNEL_FATBINS.iter().all(|(_, b)| b.is_empty()) {
        return Some(NVCC_HINT.to_string());
    }
    if std::env::var("CONTENTV_FORCE_CPU")
        .map(|v| v == "1")
        .unwrap_or(false)
    {
        return Some("CONTENTV_FORCE_CPU=1 is set".into());
    }
    // SAFETY: only dlopens the candidate library names.
    if !unsafe { sys::is_culib_present() } {
        return Some(
            "the CUDA driver library (libcuda.so.1) is not installed or not on the loader path"
                .into(),
        );
    }
    if let Err(e) = cu::init() {
        return Some(format!(
            "cuInit failed ({e:?}): no usable NVIDIA driver or device"
        ));
    }
    match CudaContext::device_count() {
        Ok(0) => Some("the CUDA driver reports no GPU".into()),
        Ok(_) => None,
        Err(e) => Some(format!("cannot count CUDA devices: {e:?}")),
    }
}

/// Is a GPU usable? (For tests: they print a visible SKIP line when this is false.)
pub fn gpu_available() -> bool {
    gpu_unavailable_reason().is_none()
}

#[derive(Clone, Copy)]
struct Func(sys::CUfunction);
// SAFETY: CUfunction handles are valid in every thread that has the context current.
unsafe impl Send for Func {}
unsafe impl Sync for Func {}
#[derive(Clone, Copy)]
struct Module(sys::CUmodule);
unsafe impl Send for Module {}
unsafe impl Sync for Module {}

/// Loaded kernels by (module, name), with their max threads per block.
type FuncCache = HashMap<(&'static str, &'static str), (Func, u32)>;

/// One GPU: context, streams, kernels, memory pool, BLAS handle.
pub struct Gpu {
    pub ordinal: usize,
    pub name: String,
    pub compute_capability: (i32, i32),
    pub sm_count: i32,
    pub total_mem: usize,
    pub ctx: Arc<CudaContext>,
    /// All compute is issued on this stream, in order.
    pub compute: Arc<CudaStream>,
    /// Weight uploads for streaming run here, ordered against `compute` with events.
    pub copy: Arc<CudaStream>,
    pub pool: Arc<Pool>,
    modules: Mutex<HashMap<&'static str, Module>>,
    funcs: Mutex<FuncCache>,
    pub(crate) blas: Mutex<Option<crate::ops::gemm::BlasLt>>,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Gpu({} {}, sm_{}{})",
            self.ordinal, self.name, self.compute_capability.0, self.compute_capability.1
        )
    }
}

impl Gpu {
    fn new(ordinal: usize) -> Result<Gpu> {
        let ctx = CudaContext::new(ordinal)?;
        // The engine orders its own work (one compute stream, events to the copy stream).
        unsafe { ctx.disable_event_tracking() };
        let compute = ctx.new_stream()?;
        let copy = ctx.new_stream()?;
        let name = ctx.name()?;
        let compute_capability = ctx.compute_capability()?;
        let sm_count =
            ctx.attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?;
        let total_mem = ctx.total_mem()?;
        if compute_capability.0 < 8 {
            return Err(Error::NoGpu(format!(
                "{name} is sm_{}{}; contentv's kernels need sm_80 or newer (Ampere, Ada, Hopper)",
                compute_capability.0, compute_capability.1
            )));
        }
        let pool = Arc::new(Pool::new(ctx.clone()));
        Ok(Gpu {
            ordinal,
            name,
            compute_capability,
            sm_count,
            total_mem,
            ctx,
            compute,
            copy,
            pool,
            modules: Mutex::new(HashMap::new()),
            funcs: Mutex::new(HashMap::new()),
            blas: Mutex::new(None),
        })
    }

    /// Makes this GPU's context current on the calling thread.
    pub fn bind(&self) -> Result<()> {
        self.ctx.bind_to_thread()?;
        Ok(())
    }

    pub fn synchronize(&self) -> Result<()> {
        self.bind()?;
        self.compute.synchronize()?;
        self.copy.synchronize()?;
        Ok(())
    }

    /// Raw handle of the compute stream.
    pub fn stream(&self) -> sys::CUstream {
        self.compute.cu_stream()
    }

    /// Allocates uninitialised device memory from the caching pool.
    pub fn alloc(&self, bytes: usize) -> Result<DeviceBuffer> {
        self.bind()?;
        self.pool.alloc(bytes)
    }

    fn module(&self, module: &'static str) -> Result<Module> {
        let mut mods = self.modules.lock().unwrap();
        if let Some(m) = mods.get(module) {
            return Ok(*m);
        }
        let image = embedded::KERNEL_FATBINS
            .iter()
            .find(|(n, _)| *n == module)
            .map(|(_, b)| *b)
            .ok_or_else(|| {
                Error::Cuda(format!(
                    "no kernel module named {module:?} (kernels/{module}.cu)"
                ))
            })?;
        if image.is_empty() {
            return Err(Error::NoGpu(NVCC_HINT.into()));
        }
        // cuModuleLoadData needs the image to stay valid during the call only; copy to be
        // sure of alignment.
        let owned: Vec<u8> = image.to_vec();
        let m = unsafe { cu::module::load_data(owned.as_ptr() as *const c_void) }.map_err(|e| {
            Error::Cuda(format!(
                "loading kernels/{module}.cu for {}: {e:?}",
                self.name
            ))
        })?;
        mods.insert(module, Module(m));
        Ok(Module(m))
    }

    fn function(
        &self,
        module: &'static str,
        name: &'static str,
        smem: u32,
    ) -> Result<sys::CUfunction> {
        self.bind()?;
        let key = (module, name);
        {
            let funcs = self.funcs.lock().unwrap();
            if let Some((f, max_smem)) = funcs.get(&key) {
                if smem <= *max_smem {
                    return Ok(f.0);
                }
            }
        }
        let m = self.module(module)?;
        let cname = CString::new(name).unwrap();
        let f = unsafe { cu::module::get_function(m.0, cname) }.map_err(|e| {
            Error::Cuda(format!(
                "kernel {name} not found in kernels/{module}.cu: {e:?}"
            ))
        })?;
        let mut max = 48 * 1024;
        if smem > max {
            unsafe {
                cu::function::set_function_attribute(
                    f,
                    sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    smem as i32,
                )
            }
            .map_err(|e| {
                Error::Cuda(format!(
                    "{name}: cannot raise dynamic shared memory to {smem} B: {e:?}"
                ))
            })?;
            max = smem;
        }
        self.funcs.lock().unwrap().insert(key, (Func(f), max));
        Ok(f)
    }

    /// Launches `module::name` on the compute stream.
    ///
    /// # Safety
    /// The arguments must match the kernel's parameter list, and every pointer must stay valid
    /// until the kernel has run (pool memory is stream-ordered, so dropping a buffer after the
    /// launch is fine).
    pub unsafe fn launch(
        &self,
        module: &'static str,
        name: &'static str,
        grid: (u32, u32, u32),
        block: (u32, u32, u32),
        smem: u32,
        args: &mut KernelArgs,
    ) -> Result<()> {
        let f = self.function(module, name, smem)?;
        let mut ptrs = args.pointers();
        cu::launch_kernel(f, grid, block, smem, self.stream(), &mut ptrs).map_err(|e| {
            Error::Cuda(format!(
                "launching {name} grid {grid:?} block {block:?} smem {smem}: {e:?}"
            ))
        })
    }

    /// Launches a 1-D elementwise kernel over `n` elements: 256-thread blocks, at most
    /// 65,535 x 8 of them (the kernels loop grid-stride, so any `n` is covered); nothing when
    /// `n == 0`.
    ///
    /// # Safety
    /// As [`Gpu::launch`].
    pub unsafe fn launch_1d(
        &self,
        module: &'static str,
        name: &'static str,
        n: usize,
        args: &mut KernelArgs,
    ) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        let blocks = n.div_ceil(256).min(65535 * 8) as u32;
        self.launch(module, name, (blocks, 1, 1), (256, 1, 1), 0, args)
    }
}

/// Kernel arguments, each stored in an 8-byte slot (all our kernel parameters are pointers,
/// 32/64-bit integers or f32). Little-endian: a pointer to the slot is a pointer to the value.
#[derive(Default)]
pub struct KernelArgs {
    vals: Vec<u64>,
}

impl KernelArgs {
    pub fn new() -> Self {
        Self {
            vals: Vec::with_capacity(16),
        }
    }
    pub fn ptr(&mut self, p: u64) -> &mut Self {
        self.vals.push(p);
        self
    }
    pub fn i32(&mut self, v: i32) -> &mut Self {
        self.vals.push(v as u32 as u64);
        self
    }
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.vals.push(v as u64);
        self
    }
    pub fn i64(&mut self, v: i64) -> &mut Self {
        self.vals.push(v as u64);
        self
    }
    pub fn f32(&mut self, v: f32) -> &mut Self {
        self.vals.push(v.to_bits() as u64);
        self
    }
    fn pointers(&mut self) -> Vec<*mut c_void> {
        self.vals
            .iter_mut()
            .map(|v| v as *mut u64 as *mut c_void)
            .collect()
    }
}

/// Events on the GPU for timing and cross-stream ordering.
pub struct Event(pub sys::CUevent);
unsafe impl Send for Event {}
unsafe impl Sync for Event {}

impl Event {
    pub fn new(timing: bool) -> Result<Event> {
        let flags = if timing {
            sys::CUevent_flags::CU_EVENT_DEFAULT
        } else {
            sys::CUevent_flags::CU_EVENT_DISABLE_TIMING
        };
        Ok(Event(cu::event::create(flags)?))
    }
    /// Records this event on `stream`.
    pub fn record(&self, stream: &CudaStream) -> Result<()> {
        // SAFETY: both handles are live (the event is owned by self, the stream borrowed).
        unsafe { cu::event::record(self.0, stream.cu_stream())? };
        Ok(())
    }
    /// Makes `stream` wait for this event.
    pub fn wait_on(&self, stream: &CudaStream) -> Result<()> {
        // SAFETY: as in `record`.
        unsafe {
            cu::stream::wait_event(
                stream.cu_stream(),
                self.0,
                sys::CUevent_wait_flags::CU_EVENT_WAIT_DEFAULT,
            )?
        };
        Ok(())
    }
    pub fn synchronize(&self) -> Result<()> {
        unsafe { cu::event::synchronize(self.0)? };
        Ok(())
    }
    /// Milliseconds from `self` to `end` (both must have completed).
    pub fn elapsed_ms(&self, end: &Event) -> Result<f32> {
        Ok(unsafe { cu::event::elapsed(self.0, end.0)? })
    }
}

impl Drop for Event {
    fn drop(&mut self) {
        unsafe {
            let _ = cu::event::destroy(self.0);
        }
    }
}
