//! Embedding lookup: rows of a table gathered by token id. Kernel: kernels/ops.cu (`embedding_*`).
use crate::error::{Error, Result};
use crate::ops::{common_gpu, float_dtype, grid_rows, host};
use crate::runtime::kernels::{DevPtr, DevPtrMut, Embedding, EmbeddingArgs, LaunchCfg};
use crate::runtime::Tensor;
use crate::shape_err;

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
        None => host(embedding_cpu(&table.cpu_f32()?, c, ids), &[ids.len(), c]),
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
                let k = Embedding::for_dtype("embedding", float_dtype("embedding", &table)?)?;
                let cfg = LaunchCfg::new(grid_rows("embedding", ids.len())?, (128, 1, 1), 0);
                let args = EmbeddingArgs {
                    table: DevPtr::of(&table)?,
                    ids: DevPtr::of(&idt)?,
                    y: DevPtrMut::of(&y)?,
                    c: c as i32,
                };
                // SAFETY: table is [V, C] contiguous and every id is < V (checked above); idt
                // holds one u32 per block and y [ids.len(), C] one row per block; all on `gpu`
                // (table's device).
                unsafe { k.launch(gpu, cfg, args)? };
            }
            Ok(y)
        }
    }
}

/// CPU reference of [`embedding`]: rows `ids` (each < the row count) of `table`, rows of `c`.
pub fn embedding_cpu(table: &[f32], c: usize, ids: &[u32]) -> Vec<f32> {
    let mut out = Vec::with_capacity(ids.len() * c);
    for &i in ids {
        out.extend_from_slice(&table[i as usize * c..(i as usize + 1) * c]);
    }
    out
}
