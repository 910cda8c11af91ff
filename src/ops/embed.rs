//! Embedding lookup: rows of a table gathered by token id. Kernel: kernels/ops.cu (`embedding_*`).
use crate::error::{Error, Result};
use crate::ops::{common_gpu, float_dtype, grid_rows, host};
use crate::runtime::{KernelArgs, Tensor};
use crate::{kname, shape_err};

/// `table` [V, C], ids -> [n, C]. An id >= V is an error naming the table size (a tokenizer
/// whose vocabulary does not match the encoder).
pub fn embedding(table: &Tensor, ids: &[u32]) -> Result<Tensor> {
    let sh = table.shape();
    if sh.len() != 2 {
        return Err(shape_err!("embedding: table must be [V, C], got {sh:?}"));
    }
    let (v, c) = (sh[0], sh[1]);
    if let Some(&bad) = ids.iter().find(|&&i| i as usize >= v) {
        return Err(Error::Input(format!(
            "token id {bad} is outside the embedding table ({v} rows): the tokenizer's vocabulary does not match \
             this text encoder"
        )));
    }
    match common_gpu("embedding", &[table])? {
        None => {
            let tv = table.cpu_f32()?;
            let mut out = Vec::with_capacity(ids.len() * c);
            for &i in ids {
                out.extend_from_slice(&tv[i as usize * c..(i as usize + 1) * c]);
            }
            host(out, &[ids.len(), c])
        }
        Some(gpu) => {
            let table = table.contiguous()?;
            let y = Tensor::empty(&[ids.len(), c], table.dtype(), table.device())?;
            if !ids.is_empty() && c > 0 {
                let idt = Tensor::from_f32(
                    ids.iter().map(|&i| f32::from_bits(i)).collect(),
                    &[ids.len()],
                    &crate::Device::Cpu,
                )?
                .to_device(table.device())?;
                let name = kname!("embedding", float_dtype("embedding", &table)?, "embedding")?;
                unsafe {
                    gpu.launch(
                        "ops",
                        name,
                        grid_rows("embedding", ids.len())?,
                        (128, 1, 1),
                        0,
                        KernelArgs::new()
                            .ptr(table.dev_ptr()?)
                            .ptr(idt.dev_ptr()?)
                            .ptr(y.dev_ptr()?)
                            .i32(c as i32),
                    )?;
                }
            }
            Ok(y)
        }
    }
}
