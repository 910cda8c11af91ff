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
        Error::Cuda(format!("{e:?}"))
    }
}

impl From<crate::io::safetensors::StError> for Error {
    fn from(e: crate::io::safetensors::StError) -> Self {
        Error::Weights(e.to_string())
    }
}

/// Shorthand for a shape error.
#[macro_export]
macro_rules! shape_err {
    ($($t:tt)*) => { $crate::error::Error::Shape(format!($($t)*)) };
}
