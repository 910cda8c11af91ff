//! Dense GEMM: `y = x W^T + b` through cuBLASLt (bf16 in, f32 accumulate), with a CPU
//! reference GEMM.

/// Cached cuBLASLt handle and workspace of one GPU.
pub struct BlasLt {}
