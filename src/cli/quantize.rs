//! `contentv quantize --model DIR --out DIR`: writes an INT8 weight-only checkpoint in the same
//! diffusers layout. In `transformer/` and `text_encoder_3/` the linears INT8 applies to
//! (the INT8 tags of its loaders, [`crate::model::int8::int8_linears`]) become `<name>.weight` (i8 [N, K]) plus
//! `<name>.weight_scale` (f32 [N], or [N, K/group]); every other tensor and every other
//! component is copied unchanged. Shard by shard (memory stays bounded), into a temporary
//! folder that is renamed to --out when complete.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::args::QuantizeArgs;
use super::Ui;
use crate::error::{Error, Result};
use crate::io::fsutil;
use crate::io::safetensors::{write_safetensors, SafeTensorsFile, StDtype};
use crate::ops::quant::quantize_per_channel;

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
pub fn quantize_file(
    src: &Path,
    dst: &Path,
    group: Option<usize>,
    linears: &std::collections::BTreeSet<String>,
) -> Result<Vec<String>> {
    let f = SafeTensorsFile::open(src)?;
    let mut owned: Vec<(String, StDtype, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut added = Vec::new();
    let mut names: Vec<&str> = f.names().collect();
    names.sort();
    for name in names {
        let info = f.get(name)?;
        let bytes = f.bytes(name)?;
        let linear = name
            .strip_suffix(".weight")
            .filter(|n| linears.contains(*n));
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

/// Copies the components that are not quantized. Real copies, never hard links: a hard link
/// would let an in-place edit of the INT8 checkpoint change the original. `std::fs::copy` uses
/// copy_file_range on Linux, which shares the data (a reflink) on file systems that can
/// (Btrfs, XFS), so the copy costs no space there.
fn copy_tree(src: &Path, dst: &Path) -> Result<()> {
    std::fs::create_dir_all(dst).map_err(|e| io_err(dst, "cannot create", e))?;
    for e in std::fs::read_dir(src).map_err(|e| io_err(src, "cannot read", e))? {
        let e = e.map_err(|e| io_err(src, "cannot read", e))?;
        let (from, to) = (e.path(), dst.join(e.file_name()));
        if from.is_dir() {
            copy_tree(&from, &to)?;
        } else {
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
    // The linears INT8 applies to: the tags of the component's description.
    let linears = crate::model::int8::int8_linears(src)?;
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
            for s in quantize_file(&from, &to, group, &linears)? {
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

/// Whether `dir` is something `--force` may replace: an empty folder or a checkpoint (it has
/// model_index.json or one of the component folders, as an earlier `quantize` writes).
fn replaceable_checkpoint(dir: &Path) -> bool {
    let Ok(mut rd) = std::fs::read_dir(dir) else {
        return false;
    };
    if rd.next().is_none() {
        return true;
    }
    dir.join("model_index.json").is_file()
        || super::load::COMPONENTS
            .iter()
            .any(|c| dir.join(c.folder).is_dir())
}

pub fn run(a: &QuantizeArgs, ui: &Ui) -> Result<()> {
    let (src, note) = super::load::resolve_model_path(&a.model);
    if let Some(n) = note {
        ui.note(&n);
    }
    let src = &src;
    super::load::check_model_dir(src, &[])?;
    if let Some(g) = a.group {
        if g == 0 || g % 8 != 0 {
            return Err(Error::Input(format!(
                "--group must be a positive multiple of 8, got {g}"
            )));
        }
    }
    let out = &a.out;
    check_out(out, src, a.force)?;
    // Nothing is written from a model `generate` would refuse (the checks `info` reports).
    let problems = super::info::model_problems(src);
    if !problems.is_empty() {
        return Err(Error::Weights(format!(
            "the model folder {} cannot be loaded (`contentv generate` would refuse it; `contentv info` lists the same), so nothing was written: {}",
            src.display(),
            crate::model::inventory::summary(&problems)
        )));
    }
    let parent = fsutil::parent_dir(out);
    if parent.exists() && !parent.is_dir() {
        return Err(Error::Input(format!(
            "cannot create {}: {} is a file, not a folder",
            out.display(),
            parent.display()
        )));
    }
    std::fs::create_dir_all(&parent).map_err(|e| io_err(&parent, "cannot create", e))?;
    for p in fsutil::clean_stale_partials(out) {
        ui.note(&format!(
            "removed {}, left by an interrupted quantize",
            p.display()
        ));
    }
    let tmp = fsutil::partial_name(out, 0).expect("--out has a file name");
    let _ = std::fs::remove_dir_all(&tmp);
    let result = write_checkpoint(src, &tmp, a.group, ui);
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    put_in_place(&tmp, out)?;
    ui.info(&format!("wrote the INT8 checkpoint {}", out.display()));
    Ok(())
}

/// Writes the new checkpoint into `tmp`: the components in QUANTIZED quantized, everything
/// else copied.
fn write_checkpoint(src: &Path, tmp: &Path, group: Option<usize>, ui: &Ui) -> Result<()> {
    std::fs::create_dir_all(tmp).map_err(|e| io_err(tmp, "cannot create", e))?;
    for e in std::fs::read_dir(src)
        .map_err(|e| io_err(src, "cannot read", e))?
        .flatten()
    {
        let (from, name) = (e.path(), e.file_name());
        let to = tmp.join(&name);
        if from.is_dir() && QUANTIZED.iter().any(|q| name == *q) {
            quantize_component(&from, &to, group, ui)?;
        } else if from.is_dir() {
            copy_tree(&from, &to)?;
        } else {
            std::fs::copy(&from, &to).map_err(|e| io_err(&from, "cannot copy", e))?;
        }
    }
    Ok(())
}

/// What --out may be: a new folder name outside the --model folder `src` (and not holding
/// it); an existing folder only when it is empty, or a checkpoint and --force.
fn check_out(out: &Path, src: &Path, force: bool) -> Result<()> {
    if out.as_os_str().is_empty() || out.file_name().is_none() {
        return Err(Error::Input(format!(
            "--out {} does not name a new folder (e.g. {})",
            out.display(),
            Path::new("ContentV-8B-int8").display()
        )));
    }
    // The input must survive whatever happens to --out.
    if fsutil::same_path(out, src) {
        return Err(Error::Input(format!(
            "--out {} is the --model folder itself; writing there would destroy the checkpoint being read: choose another folder",
            out.display()
        )));
    }
    if fsutil::is_within(out, src) {
        return Err(Error::Input(format!(
            "--out {} lies inside the --model folder {}; choose a folder outside it (e.g. next to it)",
            out.display(),
            src.display()
        )));
    }
    if fsutil::is_within(src, out) {
        return Err(Error::Input(format!(
            "--out {} contains the --model folder {}; replacing it would destroy the checkpoint being read: choose another folder",
            out.display(),
            src.display()
        )));
    }
    if out.exists() {
        if !out.is_dir() {
            return Err(Error::Input(format!(
                "--out {} is a file; give a folder name",
                out.display()
            )));
        }
        let empty = std::fs::read_dir(out).is_ok_and(|mut rd| rd.next().is_none());
        if !force && !empty {
            return Err(Error::Input(format!(
                "{} already exists: choose another --out or pass --force to replace it",
                out.display()
            )));
        }
        if !replaceable_checkpoint(out) {
            return Err(Error::Input(format!(
                "--out {} is a folder that is neither empty nor a checkpoint (no model_index.json, transformer/, vae/, ...); --force only replaces checkpoints, so nothing was deleted: choose another --out",
                out.display()
            )));
        }
    }
    Ok(())
}

/// Moves the complete new checkpoint `tmp` to `out`. An existing --out is replaced only now,
/// and kept until the new one is in place (put back if the move fails).
fn put_in_place(tmp: &Path, out: &Path) -> Result<()> {
    let old = if out.exists() {
        let old = fsutil::partial_name(out, 1).expect("--out has a file name");
        if let Err(e) = std::fs::rename(out, &old) {
            let _ = std::fs::remove_dir_all(tmp);
            return Err(io_err(out, "cannot move aside the existing", e));
        }
        Some(old)
    } else {
        None
    };
    if let Err(e) = std::fs::rename(tmp, out) {
        if let Some(old) = &old {
            let _ = std::fs::rename(old, out);
        }
        let _ = std::fs::remove_dir_all(tmp);
        return Err(io_err(out, "cannot move the result to", e));
    }
    if let Some(old) = old {
        let _ = std::fs::remove_dir_all(&old);
    }
    Ok(())
}
