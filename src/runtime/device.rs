//! Device discovery and the CUDA runtime: context, a compute stream and a copy stream, the
//! embedded kernel modules, kernel launches, cuBLASLt handle.
//!
//! cudarc panics when libcuda is missing, so every entry point probes with `is_culib_present()`
//! first; [`Device::cuda`] returns an error with the reason instead.
use std::collections::HashMap;
use std::ffi::{c_void, CString};
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::driver::{result as cu, sys, CudaContext, CudaStream};

use super::kernels::LaunchCfg;
use super::memory::{DeviceBuffer, Pool};
use crate::error::{Error, Result};

/// One kernel image: its target ("sm_90", "sm_90a", "compute_120" for PTX) and its bytes.
pub type KernelImage = (&'static str, &'static [u8]);
/// One module (kernels/<name>.cu) and its images.
pub type KernelModule = (&'static str, &'static [KernelImage]);

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/kernels.rs"));
}

/// How to get the kernel compiler, shown whenever the GPU is used from a build without kernels.
pub const NO_KERNELS_HINT: &str = "this binary was built without NVRTC, so it has no CUDA kernels. \
Run scripts/install-cuda-toolchain.sh (or set CONTENTV_NVRTC=/path/to/libnvrtc.so.12) and rebuild with cargo.";

/// The oldest driver API version the engine runs on: its SASS images are built by a CUDA 12.x
/// compiler (minor-version compatible with every 12.x driver) and its driver bindings are those
/// of CUDA 12.0.
pub const MIN_DRIVER: i32 = 12000;

/// `12080` as "12.8".
pub fn cuda_version_str(v: i32) -> String {
    format!("{}.{}", v / 1000, (v % 1000) / 10)
}

/// The CUDA version of the compiler that built the embedded kernels, as the driver API counts
/// (12090 for 12.9); 0 without kernels.
pub fn kernel_toolkit_version() -> i32 {
    embedded::KERNEL_TOOLKIT.0 * 1000 + embedded::KERNEL_TOOLKIT.1 * 10
}

/// The embedded kernel images: (module, [(target, bytes)]), targets like "sm_90", "sm_90a",
/// "compute_120" (PTX).
pub fn kernel_images() -> &'static [KernelModule] {
    embedded::KERNEL_MODULES
}

/// The `ptxas -v` report of every embedded image: (module, target, report).
pub fn kernel_ptxas_reports() -> &'static [(&'static str, &'static str, &'static str)] {
    embedded::KERNEL_PTXAS_LOGS
}

/// The targets in a module's image list, e.g. "sm_80, sm_86, sm_90, compute_120 (PTX)".
pub fn describe_targets(images: &[(&str, &[u8])]) -> String {
    images
        .iter()
        .map(|(a, _)| {
            if a.starts_with("compute_") {
                format!("{a} (PTX)")
            } else {
                a.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Which image of a module a device of compute capability `cc` loads, as the driver would pick
/// from a fatbin: SASS built for exactly this arch (the `a` variant first: it only runs on
/// its own arch), else SASS of the same major arch and an older minor (binary compatible), else
/// the newest PTX not newer than the device (JIT-compiled by the driver, which must then be at
/// least as new as the compiler: `toolkit`), else an error naming the device's arch, the
/// targets the build holds and what to do.
pub fn pick_image<'a>(
    images: &'a [(&'a str, &'a [u8])],
    cc: (i32, i32),
    driver: i32,
    toolkit: i32,
) -> std::result::Result<(&'a str, &'a [u8]), String> {
    let want = cc.0 * 10 + cc.1;
    let num = |a: &str, prefix: &str| -> Option<(i32, bool)> {
        let rest = a.strip_prefix(prefix)?;
        let (digits, arch_specific) = match rest.strip_suffix('a') {
            Some(d) => (d, true),
            None => (rest, false),
        };
        digits.parse::<i32>().ok().map(|n| (n, arch_specific))
    };
    let sass = |exact_a: bool| {
        images
            .iter()
            .find(|(a, _)| num(a, "sm_") == Some((want, exact_a)))
    };
    if let Some(&(a, b)) = sass(true).or_else(|| sass(false)) {
        return Ok((a, b));
    }
    let compatible = images
        .iter()
        .filter_map(|&(a, b)| match num(a, "sm_") {
            Some((n, false)) if n / 10 == want / 10 && n < want => Some((n, a, b)),
            _ => None,
        })
        .max_by_key(|t| t.0);
    if let Some((_, a, b)) = compatible {
        return Ok((a, b));
    }
    let ptx = images
        .iter()
        .filter_map(|&(a, b)| match num(a, "compute_") {
            Some((n, false)) if n <= want => Some((n, a, b)),
            _ => None,
        })
        .max_by_key(|t| t.0);
    let targets = describe_targets(images);
    match ptx {
        Some((_, a, b)) if driver >= toolkit => Ok((a, b)),
        Some((_, a, _)) => Err(format!(
            "this build has no SASS for sm_{want} (it holds {targets}); its {a} PTX needs a driver for \
             CUDA {} or newer to be compiled for this GPU, and the driver supports CUDA {}: update the \
             NVIDIA driver, or rebuild with CONTENTV_ARCHS including sm_{want}",
            cuda_version_str(toolkit),
            cuda_version_str(driver)
        )),
        None => Err(format!(
            "this build has no kernel image for sm_{want} (it holds {targets}): rebuild from source \
             with a CUDA compiler that knows sm_{want} (CONTENTV_NVRTC=/path/to/libnvrtc.so) and \
             CONTENTV_ARCHS=sm_{want}"
        )),
    }
}

/// Whether every launch is followed by a synchronisation that names the kernel that faulted
/// (`CONTENTV_SYNC_LAUNCHES=1`; for first bring-up on new hardware, slow).
pub fn sync_launches() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| {
        std::env::var("CONTENTV_SYNC_LAUNCHES")
            .map(|v| v == "1")
            .unwrap_or(false)
    })
}

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
        // Every module is loaded up front: a build without an image for this GPU fails here,
        // before any model is read, not at its first kernel.
        g.load_modules()?;
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
    if cfg!(no_kernels)
        || embedded::KERNEL_MODULES
            .iter()
            .all(|(_, imgs)| imgs.is_empty())
    {
        return Some(NO_KERNELS_HINT.to_string());
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
    let mut driver = 0;
    // SAFETY: out-pointer to a live integer; the driver library is present (checked above).
    let r = unsafe { sys::cuDriverGetVersion(&mut driver) };
    if r != sys::CUresult::CUDA_SUCCESS {
        return Some(format!("cuDriverGetVersion failed ({r:?})"));
    }
    if driver < MIN_DRIVER {
        return Some(format!(
            "the NVIDIA driver supports CUDA {}, and contentv needs a driver for CUDA {} or newer \
             (R525+; its kernels are built with CUDA {}): update the NVIDIA driver \
             (nvidia-smi shows the installed version)",
            cuda_version_str(driver),
            cuda_version_str(MIN_DRIVER),
            cuda_version_str(kernel_toolkit_version())
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
// SAFETY: as for Func: a CUmodule handle is valid in every thread that has the context current.
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
    /// The driver's CUDA version as the driver API counts (12080 for 12.8).
    pub driver_version: i32,
    /// Shared memory a block may use after opting in (static + dynamic).
    pub max_smem_optin: usize,
    pub ctx: Arc<CudaContext>,
    /// All compute is issued on this stream, in order.
    pub compute: Arc<CudaStream>,
    /// Weight uploads for streaming run here, ordered against `compute` with events.
    pub copy: Arc<CudaStream>,
    pub pool: Arc<Pool>,
    /// Loaded modules with the target of the image each one loaded.
    modules: Mutex<HashMap<&'static str, (Module, &'static str)>>,
    funcs: Mutex<FuncCache>,
    pub(crate) blas: Mutex<Option<crate::runtime::blaslt::BlasLt>>,
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
        // SAFETY: called right after the context is made, before any stream or buffer exists, so no
        // cudarc object relies on event tracking; the engine orders its streams itself (events).
        unsafe { ctx.disable_event_tracking() };
        let compute = ctx.new_stream()?;
        let copy = ctx.new_stream()?;
        let name = ctx.name()?;
        let compute_capability = ctx.compute_capability()?;
        let sm_count =
            ctx.attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?;
        let total_mem = ctx.total_mem()?;
        let max_smem_optin = ctx.attribute(
            sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
        )? as usize;
        let mut driver_version = 0;
        // SAFETY: out-pointer to a live integer.
        unsafe { sys::cuDriverGetVersion(&mut driver_version) }.result()?;
        if compute_capability.0 < 8 {
            return Err(Error::NoGpu(format!(
                "{name} is sm_{}{}; contentv's kernels need sm_80 or newer (Ampere, Ada, Hopper, Blackwell)",
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
            driver_version,
            max_smem_optin,
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

    /// False only for a module whose images are all arch-specific (`sm_90a`) and none is for
    /// this GPU: such a module (the Hopper attention) is optional and its kernels are not used
    /// here. Every portable module has an image or fails to load with the reason.
    fn has_module_image(&self, images: &[KernelImage]) -> bool {
        let specific = !images.is_empty() && images.iter().all(|(a, _)| a.ends_with('a'));
        !specific
            || pick_image(
                images,
                self.compute_capability,
                self.driver_version,
                kernel_toolkit_version(),
            )
            .is_ok()
    }

    /// Whether the embedded module `module` (kernels/<module>.cu) has an image this GPU runs.
    pub fn has_module(&self, module: &str) -> bool {
        embedded::KERNEL_MODULES
            .iter()
            .find(|(n, _)| *n == module)
            .is_some_and(|(_, imgs)| !imgs.is_empty() && self.has_module_image(imgs))
    }

    fn module(&self, module: &'static str) -> Result<Module> {
        let mut mods = self.modules.lock().unwrap();
        if let Some((m, _)) = mods.get(module) {
            return Ok(*m);
        }
        let images = embedded::KERNEL_MODULES
            .iter()
            .find(|(n, _)| *n == module)
            .map(|(_, imgs)| *imgs)
            .ok_or_else(|| {
                Error::Cuda(format!(
                    "no kernel module named {module:?} (kernels/{module}.cu)"
                ))
            })?;
        if images.is_empty() {
            return Err(Error::NoGpu(NO_KERNELS_HINT.into()));
        }
        let cc = self.compute_capability;
        let (target, image) = pick_image(images, cc, self.driver_version, kernel_toolkit_version())
            .map_err(|e| Error::NoGpu(format!("kernels/{module}.cu on {}: {e}", self.name)))?;
        // cuModuleLoadData needs the image to stay valid during the call only; copy to be
        // sure of alignment (cubins are ELF files read with 8-byte loads).
        let owned: Vec<u8> = image.to_vec();
        // SAFETY: `owned` is a complete cubin or NUL-terminated PTX produced by build.rs.
        let m = unsafe { cu::module::load_data(owned.as_ptr() as *const c_void) }.map_err(|e| {
            Error::NoGpu(format!(
                "loading the {target} image of kernels/{module}.cu on {} (sm_{}{}, driver CUDA {}; \
                 the build holds {}): {e:?}",
                self.name,
                cc.0,
                cc.1,
                cuda_version_str(self.driver_version),
                describe_targets(images)
            ))
        })?;
        mods.insert(module, (Module(m), target));
        Ok(Module(m))
    }

    /// Loads every embedded kernel module; returns (module, image target) for each, e.g.
    /// ("attention", "sm_90").
    pub fn load_modules(&self) -> Result<Vec<(&'static str, &'static str)>> {
        self.bind()?;
        let mut out = Vec::new();
        for (name, images) in embedded::KERNEL_MODULES.iter() {
            if !self.has_module_image(images) {
                continue; // an arch-specific module (sm_90a) on another GPU: not used here
            }
            self.module(name)?;
            let target = self.modules.lock().unwrap()[name].1;
            out.push((*name, target));
        }
        Ok(out)
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
        // SAFETY: `m` is a loaded module of this context; `cname` is a NUL-terminated string.
        let f = unsafe { cu::module::get_function(m.0, cname) }.map_err(|e| {
            Error::Cuda(format!(
                "kernel {name} not found in kernels/{module}.cu: {e:?}"
            ))
        })?;
        // Static and dynamic shared memory together must fit the block limit; above 48 KiB the
        // kernel has to opt in to the dynamic part.
        // SAFETY: `f` is a live function handle of a loaded module.
        let static_smem = unsafe {
            cu::function::get_function_attribute(
                f,
                sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES,
            )
        }
        .map_err(|e| {
            Error::Cuda(format!(
                "{name}: cannot read its static shared memory: {e:?}"
            ))
        })? as u32;
        let total = static_smem as usize + smem as usize;
        if total > self.max_smem_optin {
            return Err(Error::Cuda(format!(
                "{name} needs {static_smem} B static + {smem} B dynamic shared memory = {total} B, \
                 more than the {} B a block may use on {}",
                self.max_smem_optin, self.name
            )));
        }
        let mut max = (48 * 1024u32).saturating_sub(static_smem);
        if smem > max {
            // SAFETY: as above; the value was checked against the device limit.
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

    /// Queues `module::name` on the compute stream with its arguments: `params[i]` points at
    /// the value of parameter i (nothing for an empty grid). Only the typed launchers of
    /// [`super::kernels`] call this.
    ///
    /// # Safety
    /// `params` point at the kernel's parameters in order, each at a live value of the
    /// parameter's size and alignment, and every device pointer among them stays valid for
    /// what the kernel addresses until the kernel has run (pool memory is stream-ordered, so
    /// dropping a buffer after the launch is fine).
    pub(super) unsafe fn launch_slots(
        &self,
        module: &'static str,
        name: &'static str,
        cfg: LaunchCfg,
        params: &mut [*mut c_void],
    ) -> Result<()> {
        let LaunchCfg { grid, block, smem } = cfg;
        if cfg.is_empty() {
            return Ok(());
        }
        let f = self.function(module, name, smem)?;
        // SAFETY: `f` is a live function of a loaded module; `params` point at the values,
        // which outlive the call (the driver copies them when queuing) and match the kernel's
        // parameter list (this fn's contract), as do the pointers in them.
        unsafe { cu::launch_kernel(f, grid, block, smem, self.stream(), params) }.map_err(|e| {
            Error::Cuda(format!(
                "launching {name} grid {grid:?} block {block:?} smem {smem}: {e:?}"
            ))
        })?;
        if sync_launches() {
            self.compute.synchronize().map_err(|e| {
                Error::Cuda(format!(
                    "kernel {name} (kernels/{module}.cu) failed: {e:?} (grid {grid:?} block \
                     {block:?} smem {smem}; CONTENTV_SYNC_LAUNCHES=1 synchronises after every launch)"
                ))
            })?;
        }
        Ok(())
    }
}

/// Events on the GPU for timing and cross-stream ordering.
pub struct Event(pub sys::CUevent);
// SAFETY: a CUevent is a driver handle usable from any thread with the context current;
// Event owns it and destroys it once.
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
        // SAFETY: the event is live (owned by self).
        unsafe { cu::event::synchronize(self.0)? };
        Ok(())
    }
    /// Milliseconds from `self` to `end` (both must have completed).
    pub fn elapsed_ms(&self, end: &Event) -> Result<f32> {
        // SAFETY: both events are live (owned by self and end); the driver reports an error if
        // either has not completed or was made without timing.
        Ok(unsafe { cu::event::elapsed(self.0, end.0)? })
    }
}

impl Drop for Event {
    fn drop(&mut self) {
        // SAFETY: the event is owned by self and destroyed exactly once, here.
        unsafe {
            let _ = cu::event::destroy(self.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IMGS: &[(&str, &[u8])] = &[
        ("sm_80", b"80"),
        ("sm_86", b"86"),
        ("sm_89", b"89"),
        ("sm_90", b"90"),
        ("sm_90a", b"90a"),
        ("sm_100", b"100"),
        ("sm_120", b"120"),
        ("compute_120", b"ptx"),
    ];

    fn pick(cc: (i32, i32), driver: i32) -> std::result::Result<&'static str, String> {
        pick_image(IMGS, cc, driver, 12090).map(|(a, _)| a)
    }

    #[test]
    fn exact_sass_first_arch_specific_before_generic() {
        assert_eq!(pick((8, 0), 12000).unwrap(), "sm_80");
        assert_eq!(pick((8, 9), 12000).unwrap(), "sm_89");
        assert_eq!(pick((9, 0), 12000).unwrap(), "sm_90a");
        assert_eq!(pick((12, 0), 12080).unwrap(), "sm_120");
        // without the `a` image, plain sm_90
        let no_a: Vec<_> = IMGS
            .iter()
            .copied()
            .filter(|(a, _)| *a != "sm_90a")
            .collect();
        assert_eq!(pick_image(&no_a, (9, 0), 12000, 12090).unwrap().0, "sm_90");
    }

    #[test]
    fn same_major_older_minor_sass_runs() {
        assert_eq!(pick((8, 7), 12000).unwrap(), "sm_86");
        assert_eq!(pick((10, 3), 12080).unwrap(), "sm_100");
        assert_eq!(pick((12, 1), 12090).unwrap(), "sm_120");
        // sm_90a never stands in for another arch
        let only_a: &[(&str, &[u8])] = &[("sm_90a", b"x")];
        assert!(pick_image(only_a, (9, 1), 13000, 12090).is_err());
    }

    #[test]
    fn ptx_needs_a_driver_as_new_as_the_compiler() {
        assert_eq!(pick((13, 0), 12090).unwrap(), "compute_120");
        let e = pick((13, 0), 12080).unwrap_err();
        assert!(
            e.contains("sm_130") && e.contains("CUDA 12.9") && e.contains("CUDA 12.8"),
            "{e}"
        );
        // PTX newer than the device is no use
        let e = pick((11, 0), 13000).unwrap_err();
        assert!(
            e.contains("sm_110") && e.contains("sm_80, sm_86") && e.contains("compute_120 (PTX)"),
            "{e}"
        );
        // an older GPU: nothing fits
        assert!(pick((7, 5), 13000).is_err());
    }

    #[test]
    fn versions_print_as_cuda_does() {
        assert_eq!(cuda_version_str(12080), "12.8");
        assert_eq!(cuda_version_str(13000), "13.0");
        assert_eq!(cuda_version_str(11080), "11.8");
    }
}
