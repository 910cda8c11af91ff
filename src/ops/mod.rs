//! Ops: one typed Rust entry per CUDA kernel, each with its plain f32 CPU reference beside it.
//! Every op takes [`Tensor`](crate::Tensor)s and dispatches on their device: host tensors run
//! the reference (in f32), device tensors launch the kernel.
pub mod attention;
pub mod cast;
pub mod conv;
pub mod copy;
pub mod gemm;
