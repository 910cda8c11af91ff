//! Casts between f32, bf16 and f16.
use crate::{Result, Tensor, DType, Error};
pub fn cast(_t: &Tensor, _dtype: DType) -> Result<Tensor> { Err(Error::Other("cast: not yet implemented".into())) }
