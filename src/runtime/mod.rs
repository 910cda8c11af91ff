//! Runtime: devices and streams ([`device`]), device and pinned host memory ([`memory`]), the
//! [`Tensor`] type ([`tensor`]), typed kernel launchers ([`kernels`]), weight residency
//! ([`residency`]) and the cuBLASLt binding ([`blaslt`]).
pub mod blaslt;
pub mod cast;
pub mod copy;
pub mod device;
pub mod int8;
pub mod kernels;
pub mod memory;
pub mod planner;
pub mod residency;
pub mod tensor;
pub mod weights;

pub use device::{Device, Gpu};
pub use tensor::{DType, Tensor};
pub use weights::{Linear, Prefix, Weight, WeightStore};
