//! INT8 weight-only quantization. PLACEHOLDER until the real module lands.
use crate::error::{Error, Result};
use crate::ops::gemm::Act;
use crate::runtime::Tensor;

pub fn linear_int8(_x: &Tensor, _q: &Tensor, _scale: &Tensor, _bias: Option<&Tensor>, _act: Act) -> Result<Tensor> {
    Err(Error::Other("INT8 linear is not implemented yet".into()))
}
