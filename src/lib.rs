//! contentv: a ContentV-8B text-to-video engine with hand-written CUDA kernels.
//!
//! Architecture (one folder per layer):
//! - [`runtime`]: devices, streams, memory (caching allocator, pinned host buffers), the
//!   [`runtime::Tensor`] type, weight residency.
//! - [`ops`]: one typed entry per kernel, each with its plain f32 CPU reference beside it.
//! - [`model`]: text encoders, transformer, VAE, scheduler, pipeline.
//! - [`io`]: safetensors and video.
//! - [`cli`]: the `contentv` command line.
// The crate's own name inside it, for test-only sources shared with tests/ and benches/
// (tests/support/*.rs, included by `#[path]` in unit tests): they spell paths `contentv::...`.
#[cfg(test)]
extern crate self as contentv;

pub mod cli;
pub mod error;
pub mod io;
pub mod model;
pub mod ops;
pub mod runtime;

pub use error::{Error, Result};
pub use runtime::{DType, Device, Tensor};
