//! CUDA attention launchers (kernels/attention.cu). PLACEHOLDER until the kernels land.
use crate::error::{Error, Result};
use crate::runtime::Tensor;

pub fn attention_cuda(_q: &[&Tensor], _k: &[&Tensor], _v: &[&Tensor], _heads: usize, _scale: f32, _causal: bool, _bias: Option<&Tensor>) -> Result<Tensor> {
    Err(Error::Other("attention on the GPU is not implemented yet".into()))
}
