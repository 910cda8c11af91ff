//! Finding and checking the model folder, picking the device, loading the pipeline.
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::args::{DeviceChoice, ModelArgs, Offload, Quantize, VaePrecision};
use super::Ui;
use crate::error::{Error, Result};
pub use crate::io::fsutil::path_kind_problem;
use crate::model::interfaces::FrameDecoder;
use crate::model::mmdit::{self, Transformer};
use crate::model::pipeline::{LatentPrecision, Pipeline, VideoGeometry};
use crate::model::scheduler::SchedulerConfig;
use crate::model::text::TextEncoders;
use crate::model::vae::tiling::TileConfig;
use crate::model::vae::{VaeDecoder, VaeOptions};
use crate::ops::conv::ConvPrecision;
use crate::runtime::planner::{plan_layers, LayerPlan};
use crate::runtime::residency::{ComponentResidency, MemoryOptions, Offload as RtOffload};
use crate::runtime::Device;

/// The built-in tiny model: `$CONTENTV_TINY_MODEL`, else `assets/tiny-model` in the crate.
pub fn tiny_model_dir() -> PathBuf {
    match std::env::var_os("CONTENTV_TINY_MODEL") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/assets/tiny-model")),
    }
}

/// The Hugging Face hub cache: `$HF_HUB_CACHE`, `$HUGGINGFACE_HUB_CACHE`, `$HF_HOME/hub`,
/// `$XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub` (huggingface_hub's order).
pub fn hf_hub_cache() -> Option<PathBuf> {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    var("HF_HUB_CACHE")
        .or_else(|| var("HUGGINGFACE_HUB_CACHE"))
        .or_else(|| var("HF_HOME").map(|h| h.join("hub")))
        .or_else(|| var("XDG_CACHE_HOME").map(|c| c.join("huggingface/hub")))
        .or_else(|| var("HOME").map(|h| h.join(".cache/huggingface/hub")))
}

/// Whether `p` reads as a hub repository id (`owner/name`) rather than a path.
fn looks_like_repo_id(p: &Path) -> bool {
    let Some(s) = p.to_str() else {
        return false;
    };
    let parts: Vec<&str> = s.split('/').collect();
    parts.len() == 2
        && parts.iter().all(|x| {
            !x.is_empty()
                && *x != "."
                && *x != ".."
                && x.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        })
}

/// A hub cache entry (`models--owner--name/`) -> its snapshot: the one `refs/main` names, else
/// the only one. None when `dir` is not such an entry.
fn hub_snapshot(dir: &Path) -> Option<PathBuf> {
    let snaps = dir.join("snapshots");
    if !snaps.is_dir() || dir.join("model_index.json").is_file() {
        return None;
    }
    if let Ok(r) = std::fs::read_to_string(dir.join("refs/main")) {
        let s = snaps.join(r.trim());
        if !r.trim().is_empty() && s.is_dir() {
            return Some(s);
        }
    }
    let all: Vec<PathBuf> = std::fs::read_dir(&snaps)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    if all.len() == 1 {
        all.into_iter().next()
    } else {
        None
    }
}

/// `--model` as given, or where it points: a hub cache entry (`.../models--owner--name`) gives
/// its snapshot, and a repository id (`ByteDance/ContentV-8B`) that is not a folder here is
/// looked up in the hub cache (downloaded with `huggingface-cli download`). The note says what
/// was resolved.
pub fn resolve_model_path(p: &Path) -> (PathBuf, Option<String>) {
    if p.is_dir() {
        return match hub_snapshot(p) {
            Some(s) => {
                let note = format!(
                    "{} is a Hugging Face cache entry: using its snapshot {}",
                    p.display(),
                    s.display()
                );
                (s, Some(note))
            }
            None => (p.to_path_buf(), None),
        };
    }
    if !p.exists() && looks_like_repo_id(p) {
        if let Some(cache) = hf_hub_cache() {
            let entry = cache.join(format!(
                "models--{}",
                p.to_str().unwrap_or("").replace('/', "--")
            ));
            if let Some(s) = hub_snapshot(&entry) {
                let note = format!(
                    "{} from the Hugging Face cache: {}",
                    p.display(),
                    s.display()
                );
                return (s, Some(note));
            }
        }
    }
    (p.to_path_buf(), None)
}

/// The model folder to use; prints a note when it is the tiny default or was resolved through
/// the Hugging Face cache ([`resolve_model_path`]).
pub fn model_dir(arg: &Option<PathBuf>, ui: &Ui) -> PathBuf {
    match arg {
        Some(p) => {
            let (d, note) = resolve_model_path(p);
            if let Some(n) = note {
                ui.note(&n);
            }
            d
        }
        None => {
            let d = tiny_model_dir();
            ui.note(&format!(
                "no --model given: using the built-in tiny random model at {}. Its weights are random, so its video is noise.",
                d.display()
            ));
            d
        }
    }
}

/// A component of the diffusers layout and what it must contain.
pub struct Component {
    pub folder: &'static str,
    pub what: &'static str,
    /// Required files; `|` separates alternatives.
    pub files: &'static [&'static str],
}

pub const COMPONENTS: &[Component] = &[
    Component {
        folder: "transformer",
        what: "ContentV MMDiT transformer",
        files: &["config.json", "*.safetensors"],
    },
    Component {
        folder: "vae",
        what: "Wan2.1 VAE",
        files: &["config.json", "*.safetensors"],
    },
    Component {
        folder: "text_encoder",
        what: "CLIP-L text encoder",
        files: &["config.json", "*.safetensors"],
    },
    Component {
        folder: "text_encoder_2",
        what: "OpenCLIP-bigG text encoder",
        files: &["config.json", "*.safetensors"],
    },
    Component {
        folder: "text_encoder_3",
        what: "T5-XXL text encoder",
        files: &["config.json", "*.safetensors"],
    },
    Component {
        folder: "tokenizer",
        what: "CLIP-L tokenizer",
        files: &["vocab.json|tokenizer.json", "merges.txt|tokenizer.json"],
    },
    Component {
        folder: "tokenizer_2",
        what: "CLIP-G tokenizer",
        files: &["vocab.json|tokenizer.json", "merges.txt|tokenizer.json"],
    },
    Component {
        folder: "tokenizer_3",
        what: "T5 tokenizer",
        files: &["tokenizer.json|spiece.model"],
    },
    Component {
        folder: "scheduler",
        what: "scheduler config",
        files: &["scheduler_config.json"],
    },
];

/// `None` if `dir/component` has what it needs, else the reason.
pub fn component_problem(dir: &Path, c: &Component) -> Option<String> {
    let d = dir.join(c.folder);
    if let Some(p) = path_kind_problem(&d, true) {
        let fix = if p == "is missing" {
            ""
        } else {
            ": replace it with the folder of the checkpoint"
        };
        return Some(format!("{}/ ({}) {p}{fix}", c.folder, c.what));
    }
    for f in c.files {
        // The first alternative that exists with the wrong type, for the message.
        let mut wrong: Option<String> = None;
        let ok = f.split('|').any(|alt| {
            if let Some(ext) = alt.strip_prefix("*.") {
                let Ok(rd) = std::fs::read_dir(&d) else {
                    return false;
                };
                let mut any = false;
                for e in rd.flatten() {
                    let path = e.path();
                    if path.extension().is_some_and(|x| x == ext)
                        && !e.file_name().to_string_lossy().starts_with('.')
                    {
                        match path_kind_problem(&path, false) {
                            None => any = true,
                            Some(p) => {
                                wrong.get_or_insert(format!(
                                    "{}/{} {p}",
                                    c.folder,
                                    e.file_name().to_string_lossy()
                                ));
                            }
                        }
                    }
                }
                any
            } else {
                match path_kind_problem(&d.join(alt), false) {
                    None => true,
                    Some(p) => {
                        if p != "is missing" {
                            wrong.get_or_insert(format!("{}/{alt} {p}", c.folder));
                        }
                        false
                    }
                }
            }
        });
        if !ok {
            if let Some(w) = wrong {
                return Some(format!(
                    "{w} ({}): replace it with the file of the checkpoint",
                    c.what
                ));
            }
            return Some(format!(
                "{}/{} ({}) is missing",
                c.folder,
                f.replace('|', " or "),
                c.what
            ));
        }
    }
    None
}

/// An error that says how to get the model when `dir` does not exist (with the hub cache for
/// repository ids).
pub fn check_model_exists(dir: &Path) -> Result<()> {
    if !dir.exists() {
        if let Some(p) = path_kind_problem(dir, true).filter(|p| p != "is missing") {
            return Err(Error::Input(format!(
                "the model folder {} {p}",
                dir.display()
            )));
        }
        if looks_like_repo_id(dir) {
            return Err(Error::Input(format!(
                "the model folder {} does not exist, and the Hugging Face cache ({}) has no download of {} \
                 (nothing is downloaded here: fetch it with `huggingface-cli download {}`, or pass the folder)",
                dir.display(),
                hf_hub_cache().map_or("not found: HOME is unset".into(), |c| c.display().to_string()),
                dir.display(),
                dir.display()
            )));
        }
        return Err(Error::Input(format!(
            "the model folder {} does not exist",
            dir.display()
        )));
    }
    Ok(())
}

/// Checks that `dir` exists and has the components named in `needed` (all if empty).
pub fn check_model_dir(dir: &Path, needed: &[&str]) -> Result<()> {
    check_model_exists(dir)?;
    if let Some(p) = path_kind_problem(dir, true) {
        return Err(Error::Input(format!(
            "the model path {} {p}",
            dir.display()
        )));
    }
    let problems: Vec<String> = COMPONENTS
        .iter()
        .filter(|c| needed.is_empty() || needed.contains(&c.folder))
        .filter_map(|c| component_problem(dir, c))
        .collect();
    if !problems.is_empty() {
        if let Some(h) = layout_hint(dir) {
            return Err(Error::Input(format!(
                "the model folder {} has none of the components of a ContentV checkpoint (transformer/, vae/, text_encoder/, ...): {h}",
                dir.display()
            )));
        }
        return Err(Error::Input(format!(
            "the model folder {} is incomplete (expected the diffusers layout of ByteDance/ContentV-8B): {}",
            dir.display(),
            problems.join("; ")
        )));
    }
    Ok(())
}

/// When `dir` has none of the component folders, what it seems to be instead.
pub fn layout_hint(dir: &Path) -> Option<String> {
    if COMPONENTS.iter().any(|c| dir.join(c.folder).is_dir()) {
        return None;
    }
    let has_weights = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten().any(|e| {
                e.path()
                    .extension()
                    .is_some_and(|x| x == "safetensors" || x == "bin" || x == "gguf")
            })
        })
        .unwrap_or(false);
    let parent = dir
        .canonicalize()
        .ok()
        .and_then(|d| d.parent().map(Path::to_path_buf));
    Some(if has_weights || dir.join("config.json").is_file() {
        format!(
            "it looks like a single component (it holds weights or a config.json itself); pass the folder that contains transformer/, vae/, ... (perhaps {})",
            parent.map_or("its parent".into(), |p| p.display().to_string())
        )
    } else {
        "pass the folder of the downloaded ByteDance/ContentV-8B checkpoint (the one with model_index.json, transformer/, vae/, ...)".into()
    })
}

/// Checks the memory flags and turns them into the loaders' [`MemoryOptions`].
pub fn check_memory_flags(m: &ModelArgs) -> Result<MemoryOptions> {
    let offload = match m.offload {
        Offload::None => RtOffload::None,
        Offload::Model => RtOffload::Model,
        Offload::Sequential => RtOffload::Sequential,
    };
    let vram_budget = match m.vram_budget {
        None => None,
        Some(b) if !b.is_finite() || b <= 0.0 => {
            return Err(Error::Input(format!(
                "--vram-budget must be a positive number of GiB, got {b}"
            )));
        }
        Some(b) => Some((b * (1u64 << 30) as f64) as u64),
    };
    Ok(MemoryOptions {
        offload,
        int8: m.quantize == Quantize::Int8,
        vae_tiling: m.vae_tiling,
        vram_budget,
    })
}

/// One-line notes for memory flags that do nothing in this run: a VRAM budget on the CPU, and
/// how a budget combines with `--offload sequential` (the budget decides which layers stay
/// resident; only the rest stream).
pub fn note_memory_flags(mem: &MemoryOptions, device: &Device, ui: &Ui) {
    if let Some(b) = mem.vram_budget {
        let gib = b as f64 / (1u64 << 30) as f64;
        if !device.is_cuda() {
            ui.note(&format!("--vram-budget {gib:.1} has no effect on the CPU"));
        } else if mem.offload == RtOffload::Sequential {
            ui.note(&format!(
                "--vram-budget {gib:.1} with --offload sequential: the budget decides which transformer layers stay resident; only the others stream"
            ));
        }
    }
}

/// The device for `--device`.
pub fn pick_device(choice: DeviceChoice, ui: &Ui) -> Result<Device> {
    match choice {
        DeviceChoice::Cpu => Ok(Device::Cpu),
        DeviceChoice::Cuda => Device::cuda(0),
        DeviceChoice::Auto => {
            let (d, why) = Device::best();
            if let Some(why) = why {
                ui.note(&format!(
                    "running on the CPU (slow; fine for the tiny model): {why}"
                ));
            }
            Ok(d)
        }
    }
}

pub fn device_name(d: &Device) -> String {
    match d {
        Device::Cpu => "cpu".into(),
        Device::Cuda(g) => format!("cuda:{} {}", g.ordinal, g.name),
    }
}

/// Budgets (bytes) under which the VAE decode is tiled without --vae-tiling.
pub const VAE_TILING_BELOW: u64 = 12 << 30;

/// The VAE's conv arithmetic on `device`: `--vae-precision`, else bf16 tensor cores on a GPU
/// and f32 on the CPU.
pub fn vae_precision(choice: Option<VaePrecision>, device: &Device) -> ConvPrecision {
    match choice {
        Some(VaePrecision::Bf16) => ConvPrecision::Bf16,
        Some(VaePrecision::F32) => ConvPrecision::F32,
        None if device.is_cuda() => ConvPrecision::Bf16,
        None => ConvPrecision::F32,
    }
}

/// Loads the VAE decoder alone (for `decode`); `vae` is `--vae-precision`.
pub fn load_vae(
    dir: &Path,
    device: &Device,
    mem: &MemoryOptions,
    vae: Option<VaePrecision>,
) -> Result<VaeDecoder> {
    VaeDecoder::from_dir(&dir.join("vae"), device, vae_options(device, mem, vae))
}

/// The VAE's options for a run: tiled with `--vae-tiling`, or by itself under a small budget;
/// the precision of [`vae_precision`].
fn vae_options(device: &Device, mem: &MemoryOptions, vae: Option<VaePrecision>) -> VaeOptions {
    // An untiled decode of the default size keeps a few GiB of f32 activations alive; under a
    // tight budget the engine tiles by itself (and says so).
    let auto = !mem.vae_tiling
        && device.is_cuda()
        && mem.vram_budget.is_some_and(|b| b < VAE_TILING_BELOW);
    if auto {
        eprintln!(
            "note: --vram-budget below {} GiB: decoding the video in spatial tiles",
            VAE_TILING_BELOW >> 30
        );
    }
    let tiled = mem.vae_tiling || auto;
    VaeOptions {
        tiling: if tiled {
            Some(TileConfig::default())
        } else {
            None
        },
        precision: vae_precision(vae, device),
    }
}

/// The largest request a loaded pipeline will run: what the memory plan sizes activations for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunSize {
    /// Transformer batch: 2 with classifier-free guidance, 1 without.
    pub batch: usize,
    /// Video tokens per entry (latent frames x patches per frame).
    pub video_tokens: usize,
    /// Whether the first-block step cache keeps its residual on the device (`--cache fbcache`).
    pub step_cache: bool,
}

impl RunSize {
    /// The default request (125 frames at 432x768 with guidance).
    pub const DEFAULT: RunSize = RunSize {
        batch: 2,
        video_tokens: crate::model::mmdit::DEFAULT_VIDEO_TOKENS,
        step_cache: false,
    };

    /// With the device memory of the step cache `method` (fbcache holds a residual there).
    pub fn with_cache(self, method: crate::model::cache::CacheMethod) -> RunSize {
        RunSize {
            step_cache: method == crate::model::cache::CacheMethod::FbCache,
            ..self
        }
    }

    /// The size of one request.
    pub fn of(g: &VideoGeometry, guidance: f32) -> RunSize {
        let [_, _, t, h, w] = g.latent_shape();
        let p = g.layout.patch.max(1);
        RunSize {
            batch: if guidance > 1.0 { 2 } else { 1 },
            video_tokens: t * (h / p) * (w / p),
            step_cache: false,
        }
    }

    /// The larger of two sizes (per field: the plan must hold either).
    pub fn max(self, o: RunSize) -> RunSize {
        RunSize {
            batch: self.batch.max(o.batch),
            video_tokens: self.video_tokens.max(o.video_tokens),
            step_cache: self.step_cache || o.step_cache,
        }
    }
}

/// Loads every model of the pipeline, planned for the default request (tests; the CLI uses
/// [`load_pipeline_for`] with the real one). Returns it and the load time in seconds.
pub fn load_pipeline(dir: &Path, device: &Device, mem: &MemoryOptions) -> Result<(Pipeline, f64)> {
    load_pipeline_for(dir, device, mem, RunSize::DEFAULT, None).map(|(p, t, _)| (p, t))
}

/// Loads every model of the pipeline with the transformer's layers placed by the runtime's
/// planner for requests up to `size` (next to the VAE, which stays on the device). Returns the
/// pipeline, the load time in seconds and the plan (for the caller to print).
pub fn load_pipeline_for(
    dir: &Path,
    device: &Device,
    mem: &MemoryOptions,
    size: RunSize,
    vae: Option<VaePrecision>,
) -> Result<(Pipeline, f64, LayerPlan)> {
    let t = Instant::now();
    if let Some(g) = device.gpu() {
        // Every device allocation (weights, ring, activations) counts against the budget; a
        // load without one lifts the cap an earlier load in this process set.
        g.pool.set_limit(mem.vram_budget.map(|b| b as usize));
    }
    let scheduler = SchedulerConfig::from_model_dir(dir)?;
    // Model offload: the VAE is on the device only while it decodes (checked now); otherwise it
    // stays there, next to the transformer, and counts in the plan.
    let (vae, vae_bytes) = if mem.offload == RtOffload::Model {
        let (vdir, dev) = (dir.join("vae"), device.clone());
        let opts = vae_options(device, mem, vae);
        VaeDecoder::check_dir(&vdir)?;
        let load = move || VaeDecoder::from_dir(&vdir, &dev, opts);
        (ComponentResidency::OnDemand(Box::new(load)), 0)
    } else {
        let v = load_vae(dir, device, mem, vae)?;
        let b = v.weight_bytes();
        (ComponentResidency::Resident(v), b)
    };
    let vae: Box<dyn FrameDecoder> = Box::new(vae);
    let text = TextEncoders::load(dir, device, mem)?;
    let (store, config) = Transformer::open(&dir.join("transformer"), device, mem)?;
    let other = mmdit::activation_bytes(&config, size.batch, size.video_tokens)
        + mmdit::int8_scratch_bytes(&config, mem)
        + vae_bytes;
    // The first-block cache's residual lives on the device (on the CPU there is no plan).
    let cache_bytes = if size.step_cache && device.is_cuda() {
        mmdit::step_cache_bytes(&config, size.batch, size.video_tokens)
    } else {
        0
    };
    let plan = plan_layers(
        &store,
        mmdit::LAYER_GROUP,
        config.layers,
        mem,
        other + cache_bytes,
    )?
    .with_step_cache(cache_bytes);
    let transformer = Transformer::place(store, config, &plan)?;
    let precision = if device.is_cuda() {
        LatentPrecision::Bf16
    } else {
        LatentPrecision::F32
    };
    let offload_models = mem.offload == crate::runtime::residency::Offload::Model;
    let p = Pipeline {
        device: device.clone(),
        text: Box::new(text),
        transformer: Box::new(transformer),
        vae,
        scheduler,
        precision,
        offload_models,
    };
    device.synchronize()?;
    Ok((p, t.elapsed().as_secs_f64(), plan))
}

/// Checks that `path` (given with `flag`) is a readable, well-formed safetensors file, with the
/// hardened parser's message (truncation, bad header, ...) when it is not.
pub fn check_safetensors(path: &Path, flag: &str) -> Result<()> {
    if path.is_dir() {
        return Err(Error::Input(format!(
            "{flag} {} is a folder; give a .safetensors file",
            path.display()
        )));
    }
    if !path.exists() {
        return Err(Error::Input(match path_kind_problem(path, false) {
            Some(p) if p != "is missing" => format!("{flag} {} {p}", path.display()),
            _ => format!("{flag} {}: the file does not exist", path.display()),
        }));
    }
    crate::io::safetensors::SafeTensorsFile::open(path)
        .map(|_| ())
        .map_err(|e| Error::Input(format!("{flag}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vae_precision_defaults_to_f32_on_the_cpu_and_follows_the_flag() {
        let cpu = Device::Cpu;
        assert_eq!(vae_precision(None, &cpu), ConvPrecision::F32);
        assert_eq!(
            vae_precision(Some(VaePrecision::Bf16), &cpu),
            ConvPrecision::Bf16
        );
        assert_eq!(
            vae_precision(Some(VaePrecision::F32), &cpu),
            ConvPrecision::F32
        );
        let mem = MemoryOptions::default();
        let o = vae_options(&cpu, &mem, Some(VaePrecision::Bf16));
        assert_eq!(o.precision, ConvPrecision::Bf16);
        assert!(o.tiling.is_none());
    }
}
