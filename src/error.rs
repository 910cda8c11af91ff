//! One error type for the engine. Every message names the thing that is wrong (file, tensor,
//! flag) and what to do about it.
use std::fmt;

#[derive(Debug)]
pub enum Error {
    /// No usable GPU: the reason says why (no driver, no device, no kernels compiled in).
    NoGpu(String),
    /// A CUDA driver / library call failed.
    Cuda(String),
    /// Device memory exhausted; `hint` names flags that would fit.
    OutOfMemory {
        requested: usize,
        hint: String,
    },
    /// Shapes or dtypes do not match what an op or a model expects.
    Shape(String),
    /// A weight file or checkpoint is invalid or incomplete.
    Weights(String),
    /// Bad user input (flags, prompts, files).
    Input(String),
    Io(std::io::Error),
    /// The run was cancelled by its caller (the server's DELETE) at a step boundary.
    Cancelled,
    Other(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NoGpu(s) => write!(f, "no usable GPU: {s}"),
            Error::Cuda(s) => write!(f, "CUDA error: {s}"),
            Error::OutOfMemory { requested, hint } => write!(
                f,
                "GPU out of memory while allocating {:.1} MiB. {hint}",
                *requested as f64 / (1 << 20) as f64
            ),
            Error::Shape(s) => write!(f, "shape error: {s}"),
            Error::Weights(s) => write!(f, "weights: {s}"),
            Error::Input(s) => write!(f, "{s}"),
            Error::Io(e) => write!(f, "I/O error: {e}"),
            Error::Cancelled => write!(f, "cancelled"),
            Error::Other(s) => write!(f, "{s}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Io(e)
    }
}

impl From<cudarc::driver::DriverError> for Error {
    fn from(e: cudarc::driver::DriverError) -> Self {
        if e.0 == cudarc::driver::sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY {
            return Error::OutOfMemory {
                requested: 0,
                hint: "Try --offload sequential, --quantize int8 or --vae-tiling.".into(),
            };
        }
        use cudarc::driver::sys::CUresult as R;
        // A kernel that faulted is reported at the next synchronisation, by whatever call made
        // it: say how to find the kernel.
        let fault = matches!(
            e.0,
            R::CUDA_ERROR_ILLEGAL_ADDRESS
                | R::CUDA_ERROR_LAUNCH_FAILED
                | R::CUDA_ERROR_MISALIGNED_ADDRESS
                | R::CUDA_ERROR_ILLEGAL_INSTRUCTION
                | R::CUDA_ERROR_HARDWARE_STACK_ERROR
                | R::CUDA_ERROR_INVALID_PC
                | R::CUDA_ERROR_LAUNCH_TIMEOUT
        );
        let synced = std::env::var("CONTENTV_SYNC_LAUNCHES").is_ok_and(|v| v == "1");
        if fault && !synced {
            return Error::Cuda(format!(
                "{e:?}: a kernel faulted (run again with CONTENTV_SYNC_LAUNCHES=1 to name it)"
            ));
        }
        Error::Cuda(format!("{e:?}"))
    }
}

/// Shorthand for a shape error.
#[macro_export]
macro_rules! shape_err {
    ($($t:tt)*) => { $crate::error::Error::Shape(format!($($t)*)) };
}
