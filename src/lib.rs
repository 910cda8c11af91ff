//! contentv: a ContentV-8B text-to-video engine with hand-written CUDA kernels.
//!
//! Architecture (one folder per layer):
//! - [`runtime`]: devices, streams, memory (caching allocator, pinned host buffers), the
//!   [`runtime::Tensor`] type, weight residency.
//! - [`ops`]: one typed entry per kernel, each with its plain f32 CPU reference beside it.
//! - [`model`]: text encoders, transformer, VAE, scheduler, pipeline.
//! - [`io`]: safetensors and video.
//! - [`cli`]: the `contentv` command line.
pub mod cli;
pub mod error;
pub mod io;
pub mod model;
pub mod ops;
pub mod runtime;

pub use error::{Error, Result};
pub use runtime::{DType, Device, Tensor};
