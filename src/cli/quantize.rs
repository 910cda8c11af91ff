//! `contentv quantize --model DIR --out DIR`: writes an INT8 weight-only checkpoint in the same
//! diffusers layout. In `transformer/` and `text_encoder_3/` the linears INT8 applies to
//! ([`crate::ops::quant::int8_applies`]) become `<name>.weight` (i8 [N, K]) plus
//! `<name>.weight_scale` (f32 [N], or [N, K/group]); every other tensor and every other
//! component is copied unchanged. Shard by shard (memory stays bounded), into a temporary
//! folder that is renamed to --out when complete.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::args::QuantizeArgs;
use super::Ui;
use crate::error::{Error, Result};
use crate::io::safetensors::{write_safetensors, SafeTensorsFile, StDtype};
use crate::ops::quant::{int8_applies, quantize_per_channel};

/// Components whose linears are quantized.
const QUANTIZED: [&str; 2] = ["transformer", "text_encoder_3"];

fn io_err(path: &Path, what: &str, e: std::io::Error) -> Error {
    Error::Other(format!("{what} {}: {e}", path.display()))
}

fn to_f32(dtype: StDtype, b: &[u8]) -> Option<Vec<f32>> {
    Some(match dtype {
        StDtype::F32 => b
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        StDtype::BF16 => b
            .chunks_exact(2)
            .map(|c| half::bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
            .collect(),
        StDtype::F16 => b
            .chunks_exact(2)
            .map(|c| half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
            .collect(),
        _ => return None,
    })
}

/// Quantizes one safetensors file into `dst`. Returns the names of the scale tensors added.
pub fn quantize_file(src: &Path, dst: &Path, group: Option<usize>) -> Result<Vec<String>> {
    let f = SafeTensorsFile::open(src)?;
    let mut owned: Vec<(String, StDtype, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut added = Vec::new();
    let mut names: Vec<&str> = f.names().collect();
    names.sort();
    for name in names {
        let info = f.get(name)?;
        let bytes = f.bytes(name)?;
        let linear = name.strip_suffix(".weight").filter(|n| int8_applies(n));
        match (linear, info.shape.len(), to_f32(info.dtype, bytes)) {
            (Some(lin), 2, Some(w)) if !f.names().any(|n| n == format!("{lin}.weight_scale")) => {
                let (n, k) = (info.shape[0], info.shape[1]);
                let g = group.filter(|g| k % g == 0);
                let (q, s) = quantize_per_channel(&w, n, k, g);
                let groups = s.len() / n;
                owned.push((
                    name.to_string(),
                    StDtype::I8,
                    vec![n, k],
                    q.iter().map(|&v| v as u8).collect(),
                ));
                let sname = format!("{lin}.weight_scale");
                let sshape = if groups == 1 {
                    vec![n]
                } else {
                    vec![n, groups]
                };
                owned.push((
                    sname.clone(),
                    StDtype::F32,
                    sshape,
                    s.iter().flat_map(|v| v.to_le_bytes()).collect(),
                ));
                added.push(sname);
            }
            _ => owned.push((
                name.to_string(),
                info.dtype,
                info.shape.clone(),
                bytes.to_vec(),
            )),
        }
    }
    let views: Vec<(&str, StDtype, &[usize], &[u8])> = owned
        .iter()
        .map(|(n, d, s, b)| (n.as_str(), *d, s.as_slice(), b.as_slice()))
        .collect();
    let mut meta = BTreeMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    meta.insert(
        "contentv_quantization".to_string(),
        format!(
            "int8 weight-only, {}",
            group.map_or("per output channel".to_string(), |g| format!("group {g}"))
        ),
    );
    write_safetensors(dst, &views, Some(&meta)).map_err(|e| io_err(dst, "cannot write", e))?;
    Ok(added)
}

fn copy_tree(src: &Path, dst: &Path) -> Result<()> {
    std::fs::create_dir_all(dst).map_err(|e| io_err(dst, "cannot create", e))?;
    for e in std::fs::read_dir(src).map_err(|e| io_err(src, "cannot read", e))? {
        let e = e.map_err(|e| io_err(src, "cannot read", e))?;
        let (from, to) = (e.path(), dst.join(e.file_name()));
        if from.is_dir() {
            copy_tree(&from, &to)?;
        } else if std::fs::hard_link(&from, &to).is_err() {
            std::fs::copy(&from, &to).map_err(|e| io_err(&from, "cannot copy", e))?;
        }
    }
    Ok(())
}

/// Quantizes one component folder (all its safetensors files; the index gains the scales).
fn quantize_component(src: &Path, dst: &Path, group: Option<usize>, ui: &Ui) -> Result<()> {
    std::fs::create_dir_all(dst).map_err(|e| io_err(dst, "cannot create", e))?;
    let mut added: Vec<(String, String)> = Vec::new();
    let mut index_files = Vec::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(src)
        .map_err(|e| io_err(src, "cannot read", e))?
        .flatten()
        .map(|e| e.path())
        .collect();
    entries.sort();
    for from in entries {
        let name = from.file_name().unwrap().to_string_lossy().into_owned();
        let to = dst.join(&name);
        if name.ends_with(".safetensors") {
            ui.info(&format!("quantizing {}", from.display()));
            for s in quantize_file(&from, &to, group)? {
                added.push((s, name.clone()));
            }
        } else if name.ends_with(".safetensors.index.json") {
            index_files.push(from);
        } else if from.is_dir() {
            copy_tree(&from, &to)?;
        } else {
            std::fs::copy(&from, &to).map_err(|e| io_err(&from, "cannot copy", e))?;
        }
    }
    for idx in index_files {
        let text = std::fs::read_to_string(&idx).map_err(|e| io_err(&idx, "cannot read", e))?;
        let mut v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::Input(format!("{} is not valid JSON: {e}", idx.display())))?;
        let map = v
            .get_mut("weight_map")
            .and_then(|m| m.as_object_mut())
            .ok_or_else(|| Error::Input(format!("{}: no weight_map", idx.display())))?;
        for (s, shard) in &added {
            map.insert(s.clone(), serde_json::Value::String(shard.clone()));
        }
        let to = dst.join(idx.file_name().unwrap());
        std::fs::write(&to, serde_json::to_string_pretty(&v).unwrap())
            .map_err(|e| io_err(&to, "cannot write", e))?;
    }
    Ok(())
}

pub fn run(a: &QuantizeArgs, ui: &Ui) -> Result<()> {
    let src = &a.model;
    super::load::check_model_dir(src, &QUANTIZED)?;
    if let Some(g) = a.group {
        if g == 0 || g % 8 != 0 {
            return Err(Error::Input(format!(
                "--group must be a positive multiple of 8, got {g}"
            )));
        }
    }
    let out = &a.out;
    if out.exists() && !a.force {
        return Err(Error::Input(format!(
            "{} already exists: choose another --out or pass --force to replace it",
            out.display()
        )));
    }
    if out
        .canonicalize()
        .ok()
        .is_some_and(|o| src.canonicalize().ok() == Some(o))
    {
        return Err(Error::Input("--out must differ from --model".into()));
    }
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| io_err(parent, "cannot create", e))?;
    let tmp = parent.join(format!(
        ".{}.partial-{}",
        out.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    let result = (|| -> Result<()> {
        std::fs::create_dir_all(&tmp).map_err(|e| io_err(&tmp, "cannot create", e))?;
        for e in std::fs::read_dir(src)
            .map_err(|e| io_err(src, "cannot read", e))?
            .flatten()
        {
            let (from, name) = (e.path(), e.file_name());
            let to = tmp.join(&name);
            if from.is_dir() && QUANTIZED.iter().any(|q| name == *q) {
                quantize_component(&from, &to, a.group, ui)?;
            } else if from.is_dir() {
                copy_tree(&from, &to)?;
            } else {
                std::fs::copy(&from, &to).map_err(|e| io_err(&from, "cannot copy", e))?;
            }
        }
        Ok(())
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if out.exists() {
        std::fs::remove_dir_all(out).map_err(|e| io_err(out, "cannot replace", e))?;
    }
    std::fs::rename(&tmp, out).map_err(|e| io_err(out, "cannot move the result to", e))?;
    ui.info(&format!("wrote the INT8 checkpoint {}", out.display()));
    Ok(())
}
