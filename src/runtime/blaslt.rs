//! The part of cuBLASLt the engine calls, bound at run time from `libcublasLt.so.13`,
//! `libcublasLt.so.12` or `libcublasLt.so` (in that order; `CONTENTV_CUBLASLT=/path/to/lib`
//! first). cudarc's binding looks for one major version only (that of its CUDA feature), while
//! users have either: PyTorch's CUDA 13 wheels, a CUDA 12 install. The entry points, enum values
//! and the heuristic-result struct used here are the same in cuBLASLt 12.0 through 13.x.
use std::ffi::{c_int, c_void};
use std::sync::OnceLock;

pub type Handle = *mut c_void;
pub type MatmulDesc = *mut c_void;
pub type Layout = *mut c_void;
pub type Preference = *mut c_void;
pub type Status = c_int;

// cudaDataType, cublasComputeType_t and the attribute enums (cublasLt.h).
pub const CUDA_R_32F: c_int = 0;
pub const CUDA_R_16F: c_int = 2;
pub const CUDA_R_16BF: c_int = 14;
pub const COMPUTE_32F: c_int = 68;
pub const DESC_TRANSA: c_int = 3;
pub const DESC_TRANSB: c_int = 4;
pub const DESC_EPILOGUE: c_int = 7;
pub const DESC_BIAS_POINTER: c_int = 8;
pub const DESC_BIAS_DATA_TYPE: c_int = 26;
pub const EPILOGUE_DEFAULT: c_int = 1;
pub const EPILOGUE_BIAS: c_int = 4;
pub const EPILOGUE_GELU: c_int = 32;
pub const EPILOGUE_GELU_BIAS: c_int = 36;
pub const LAYOUT_BATCH_COUNT: c_int = 5;
pub const LAYOUT_STRIDED_BATCH_OFFSET: c_int = 6;
pub const PREF_MAX_WORKSPACE_BYTES: c_int = 1;

/// cublasLtMatmulAlgo_t: opaque, 64 bytes.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Algo {
    pub data: [u64; 8],
}

/// cublasLtMatmulHeuristicResult_t.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct HeuristicResult {
    pub algo: Algo,
    pub workspace_size: usize,
    pub state: Status,
    pub waves_count: f32,
    pub reserved: [c_int; 4],
}

/// The loaded library and its entry points.
pub struct Lib {
    pub path: String,
    _lib: libloading::Library,
    pub create: unsafe extern "C" fn(*mut Handle) -> Status,
    pub destroy: unsafe extern "C" fn(Handle) -> Status,
    pub desc_create: unsafe extern "C" fn(*mut MatmulDesc, c_int, c_int) -> Status,
    pub desc_destroy: unsafe extern "C" fn(MatmulDesc) -> Status,
    pub desc_set: unsafe extern "C" fn(MatmulDesc, c_int, *const c_void, usize) -> Status,
    pub layout_create: unsafe extern "C" fn(*mut Layout, c_int, u64, u64, i64) -> Status,
    pub layout_destroy: unsafe extern "C" fn(Layout) -> Status,
    pub layout_set: unsafe extern "C" fn(Layout, c_int, *const c_void, usize) -> Status,
    pub pref_create: unsafe extern "C" fn(*mut Preference) -> Status,
    pub pref_destroy: unsafe extern "C" fn(Preference) -> Status,
    pub pref_set: unsafe extern "C" fn(Preference, c_int, *const c_void, usize) -> Status,
    #[allow(clippy::type_complexity)]
    pub heuristic: unsafe extern "C" fn(
        Handle,
        MatmulDesc,
        Layout,
        Layout,
        Layout,
        Layout,
        Preference,
        c_int,
        *mut HeuristicResult,
        *mut c_int,
    ) -> Status,
    #[allow(clippy::type_complexity)]
    pub matmul: unsafe extern "C" fn(
        Handle,
        MatmulDesc,
        *const c_void,
        *const c_void,
        Layout,
        *const c_void,
        Layout,
        *const c_void,
        *const c_void,
        Layout,
        *mut c_void,
        Layout,
        *const Algo,
        *mut c_void,
        usize,
        *mut c_void,
    ) -> Status,
}

/// The library names tried, in order.
pub fn candidates() -> Vec<String> {
    let mut c = Vec::new();
    if let Ok(p) = std::env::var("CONTENTV_CUBLASLT") {
        c.push(p);
    }
    c.extend(["libcublasLt.so.13", "libcublasLt.so.12", "libcublasLt.so"].map(String::from));
    c
}

fn load(name: &str) -> Result<Lib, String> {
    // SAFETY: loading cuBLASLt runs its initialisers only; every symbol is declared with its
    // signature from cublasLt.h (identical in 12.x and 13.x).
    unsafe {
        let lib = libloading::Library::new(name).map_err(|e| e.to_string())?;
        macro_rules! sym {
            ($n:literal) => {
                *lib.get(concat!($n, "\0").as_bytes())
                    .map_err(|e| format!("{name}: {}: {e}", $n))?
            };
        }
        Ok(Lib {
            path: name.to_string(),
            create: sym!("cublasLtCreate"),
            destroy: sym!("cublasLtDestroy"),
            desc_create: sym!("cublasLtMatmulDescCreate"),
            desc_destroy: sym!("cublasLtMatmulDescDestroy"),
            desc_set: sym!("cublasLtMatmulDescSetAttribute"),
            layout_create: sym!("cublasLtMatrixLayoutCreate"),
            layout_destroy: sym!("cublasLtMatrixLayoutDestroy"),
            layout_set: sym!("cublasLtMatrixLayoutSetAttribute"),
            pref_create: sym!("cublasLtMatmulPreferenceCreate"),
            pref_destroy: sym!("cublasLtMatmulPreferenceDestroy"),
            pref_set: sym!("cublasLtMatmulPreferenceSetAttribute"),
            heuristic: sym!("cublasLtMatmulAlgoGetHeuristic"),
            matmul: sym!("cublasLtMatmul"),
            _lib: lib,
        })
    }
}

/// cuBLASLt, loaded once per process; the error lists every name tried and why it failed.
pub fn lib() -> Result<&'static Lib, String> {
    static LIB: OnceLock<Result<Lib, String>> = OnceLock::new();
    LIB.get_or_init(|| {
        let mut why = Vec::new();
        for c in candidates() {
            match load(&c) {
                Ok(l) => return Ok(l),
                Err(e) => why.push(e),
            }
        }
        Err(format!(
            "cuBLASLt was not found ({}): install the CUDA runtime libraries (e.g. pip install \
             nvidia-cublas, or a CUDA 12/13 toolkit) and add their lib folder to LD_LIBRARY_PATH, \
             or set CONTENTV_CUBLASLT=/path/to/libcublasLt.so.13",
            why.join("; ")
        ))
    })
    .as_ref()
    .map_err(|e| e.clone())
}

/// The cached cuBLASLt handle and workspace of one GPU (created by the first GEMM, kept in
/// [`crate::runtime::Gpu`], destroyed with it).
pub struct BlasLt {
    pub lib: &'static Lib,
    pub handle: Handle,
    pub workspace: crate::runtime::memory::DeviceBuffer,
}
// SAFETY: the handle is used under the Gpu's mutex, on the Gpu's compute stream only.
unsafe impl Send for BlasLt {}

impl Drop for BlasLt {
    fn drop(&mut self) {
        // SAFETY: the handle was created by this library and is dropped once.
        unsafe {
            (self.lib.destroy)(self.handle);
        }
    }
}
