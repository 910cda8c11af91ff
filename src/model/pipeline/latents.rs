//! Latents files: `--save-latents` / `contentv decode` ([`save_latents`], [`load_latents`]) and
//! the reader they share with `--init-noise` ([`read_float_tensor`]), through the engine's one
//! safetensors path (`io::safetensors` under `runtime::WeightStore`).
use std::collections::HashMap;
use std::path::Path;

use crate::error::{Error, Result};
use crate::io::safetensors::StDtype;
use crate::runtime::{DType, Device, WeightStore};

/// (shape, values, file metadata)
type StTensor = (Vec<usize>, Vec<f32>, HashMap<String, String>);

/// The float tensor `name` of the safetensors file `path` (or its only tensor, whatever its
/// name: e.g. saved from Python as `{"sample": z}`), in f32, with the file's metadata. Read
/// through the engine's weight path (memory-mapped, bounds-checked); non-finite values are an
/// error.
pub(crate) fn read_st_tensor(path: &Path, name: &str) -> Result<StTensor> {
    let store = WeightStore::open_file(path, &Device::Cpu, DType::F32)
        .map_err(|e| Error::Input(format!("not a valid safetensors file: {}", bare(e))))?;
    let ck = store.checkpoint();
    let mut names: Vec<&str> = ck.names().collect();
    names.sort();
    let key = if names.len() == 1 { names[0] } else { name };
    let Ok((file, info)) = ck.get(key) else {
        return Err(Error::Input(format!(
            "{} has no tensor named {name:?} (it has: {})",
            path.display(),
            if names.is_empty() {
                "no tensors".to_string()
            } else {
                names.join(", ")
            }
        )));
    };
    if !matches!(
        info.dtype,
        StDtype::F64 | StDtype::F32 | StDtype::F16 | StDtype::BF16
    ) {
        return Err(Error::Input(format!(
            "{}: tensor {key:?} has dtype {:?}; expected a float type",
            path.display(),
            info.dtype
        )));
    }
    let data = ck.to_f32(key).map_err(|e| Error::Input(e.to_string()))?;
    if let Some(i) = data.iter().position(|x| !x.is_finite()) {
        return Err(Error::Input(format!(
            "{}: tensor {key:?} has a non-finite value at element {i}",
            path.display()
        )));
    }
    let metadata = file
        .metadata()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Ok((info.shape.clone(), data, metadata))
}

/// The message of a weights error without its kind prefix.
fn bare(e: Error) -> String {
    match e {
        Error::Weights(m) | Error::Input(m) => m,
        e => e.to_string(),
    }
}

/// Saved latents: DiT-space latents [1, C, T, h, w] (C latent channels) (before de-normalisation) and metadata.
pub struct SavedLatents {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
    pub metadata: HashMap<String, String>,
}

/// Writes latents (f32, tensor "latents") to `path` atomically (temporary name, then rename).
pub fn save_latents(
    path: &Path,
    shape: &[usize],
    data: &[f32],
    metadata: &HashMap<String, String>,
) -> Result<()> {
    let bytes: Vec<u8> = data.iter().flat_map(|x| x.to_le_bytes()).collect();
    // Sorted metadata: the same run writes the same bytes.
    let mut meta: std::collections::BTreeMap<String, String> = metadata
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    meta.insert("format".into(), "contentv-latents".into());
    let buf = crate::io::safetensors::serialize_safetensors(
        &[(
            "latents",
            crate::io::safetensors::StDtype::F32,
            shape,
            &bytes,
        )],
        Some(&meta),
    )
    .map_err(|e| Error::Other(format!("latents: {e}")))?;
    let dir = crate::io::fsutil::parent_dir(path);
    std::fs::create_dir_all(&dir)
        .map_err(|e| Error::Input(format!("cannot create {}: {e}", dir.display())))?;
    if path.file_name().is_none() {
        return Err(Error::Input(format!("{} has no file name", path.display())));
    }
    crate::io::fsutil::write_file_atomically(path, &buf).map_err(|e| {
        Error::Input(format!(
            "cannot write the latents to {}: {e}",
            path.display()
        ))
    })?;
    Ok(())
}

/// Reads latents written by [`save_latents`] (any float dtype; tensor "latents", or the only
/// tensor of the file; [1, C, T, h, w] or [C, T, h, w]).
pub fn load_latents(path: &Path) -> Result<SavedLatents> {
    let (mut shape, data, metadata) = read_st_tensor(path, "latents")?;
    if shape.len() == 4 {
        shape.insert(0, 1); // [C, T, h, w] without the batch dim
    }
    if shape.len() != 5 || shape[0] != 1 || shape.contains(&0) {
        return Err(Error::Input(format!(
            "{}: latents must have shape [1, C, T, h, w], got {shape:?}",
            path.display()
        )));
    }
    Ok(SavedLatents {
        shape,
        data,
        metadata,
    })
}
