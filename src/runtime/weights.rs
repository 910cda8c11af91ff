//! Weight loading and residency: the model asks this layer for weights by checkpoint key and
//! never owns device memory for them, so where a weight lives (resident on the GPU, on the
//! host, streamed, quantized) can change without touching model code.
//!
//! ```ignore
//! let store = WeightStore::open(&dir.join("transformer"), &device, DType::BF16)?;
//! let blk = store.root().pp("transformer_blocks").pp(0);
//! let wq = blk.linear("attn.to_q", 2432, 2432, true)?;   // spells attn.to_q.weight / .bias
//! ```
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::io::safetensors::{ShardedCheckpoint, StDtype};
use crate::runtime::tensor::Backing;
use crate::runtime::{DType, Device, Tensor};

/// A weight as the model sees it: dense, or INT8 with per-output-channel scales.
#[derive(Clone, Debug)]
pub enum Weight {
    Dense(Tensor),
    /// `q` [N, K] i8, `scale` [N] (or [N, K/group]) f32: w = q * scale.
    Int8 {
        q: Tensor,
        scale: Tensor,
    },
}

impl Weight {
    pub fn shape(&self) -> &[usize] {
        match self {
            Weight::Dense(t) => t.shape(),
            Weight::Int8 { q, .. } => q.shape(),
        }
    }
    /// The dense tensor (dequantized on the CPU reference path if INT8).
    pub fn dense(&self) -> Result<Tensor> {
        match self {
            Weight::Dense(t) => Ok(t.clone()),
            Weight::Int8 { .. } => Err(Error::Other(
                "dense() of an INT8 weight: use the W8A16 GEMM".into(),
            )),
        }
    }
}

/// A linear layer's weights (PyTorch layout: weight [out, in]).
#[derive(Clone, Debug)]
pub struct Linear {
    pub weight: Weight,
    pub bias: Option<Tensor>,
}

impl Linear {
    pub fn out_features(&self) -> usize {
        self.weight.shape()[0]
    }
    pub fn in_features(&self) -> usize {
        self.weight.shape()[1]
    }
}

fn st_to_dtype(d: StDtype) -> Option<DType> {
    match d {
        StDtype::F32 => Some(DType::F32),
        StDtype::BF16 => Some(DType::BF16),
        StDtype::F16 => Some(DType::F16),
        StDtype::I8 => Some(DType::I8),
        _ => None,
    }
}

/// One checkpoint component (e.g. `transformer/`), memory-mapped, with the device and the
/// compute dtype its weights are delivered in. The CPU reference path always gets f32.
pub struct WeightStore {
    ckpt: ShardedCheckpoint,
    dir: PathBuf,
    device: Device,
    dtype: DType,
    /// Tensors already delivered (so a weight is uploaded once), keyed `{key}@{dtype}`.
    cache: Mutex<HashMap<String, Tensor>>,
    /// INT8 weight-only quantization on load (`--quantize int8`), for the linears the model's
    /// predicate ([`Int8Policy::quantizable`]) selects.
    int8: Mutex<Option<Int8Policy>>,
}

/// Keys read from any store while recording is on, as (component folder, key): the test that
/// the tensor inventory (`model::inventory`) is complete turns it on ([`record_reads`]).
static READS: Mutex<Option<BTreeSet<(PathBuf, String)>>> = Mutex::new(None);

/// Starts (`true`, empty) or stops recording the keys the stores read; returns what was recorded.
pub fn record_reads(on: bool) -> BTreeSet<(PathBuf, String)> {
    let mut r = READS.lock().unwrap();
    let old = r.take().unwrap_or_default();
    *r = on.then(BTreeSet::new);
    old
}

fn note_read(dir: &Path, key: &str) {
    if let Some(r) = READS.lock().unwrap().as_mut() {
        r.insert((dir.to_path_buf(), key.to_string()));
    }
}

/// Quantize-on-load settings.
#[derive(Clone, Copy, Debug)]
pub struct Int8Policy {
    /// Scales per `group` input channels; `None`: per output channel.
    pub group: Option<usize>,
    /// Which linears (keys without `.weight`) may be quantized: declared by the model that
    /// asks for INT8 (e.g. [`crate::model::int8::int8_applies`]); the runtime knows no names.
    pub quantizable: fn(&str) -> bool,
}

impl WeightStore {
    /// Opens `dir` (single `*.safetensors` or sharded with an index JSON).
    pub fn open(dir: &Path, device: &Device, dtype: DType) -> Result<Arc<WeightStore>> {
        let ckpt = ShardedCheckpoint::open_dir(dir)?;
        let dtype = if device.is_cuda() { dtype } else { DType::F32 };
        Ok(Arc::new(WeightStore {
            ckpt,
            dir: dir.to_path_buf(),
            device: device.clone(),
            dtype,
            cache: Mutex::new(HashMap::new()),
            int8: Mutex::new(None),
        }))
    }

    /// Opens one safetensors file as a store (latents and noise files, single-file weights).
    pub fn open_file(path: &Path, device: &Device, dtype: DType) -> Result<Arc<WeightStore>> {
        let ckpt = ShardedCheckpoint::open_files(&[path.to_path_buf()])?;
        let dtype = if device.is_cuda() { dtype } else { DType::F32 };
        Ok(Arc::new(WeightStore {
            ckpt,
            dir: path.to_path_buf(),
            device: device.clone(),
            dtype,
            cache: Mutex::new(HashMap::new()),
            int8: Mutex::new(None),
        }))
    }

    pub fn device(&self) -> &Device {
        &self.device
    }
    /// The dtype weights are delivered in (f32 on the CPU).
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn checkpoint(&self) -> &ShardedCheckpoint {
        &self.ckpt
    }
    pub fn contains(&self, key: &str) -> bool {
        self.ckpt.contains(key)
    }
    pub fn shape_of(&self, key: &str) -> Option<Vec<usize>> {
        self.ckpt.get(key).ok().map(|(_, i)| i.shape.clone())
    }

    pub fn root(self: &Arc<Self>) -> Prefix {
        Prefix {
            store: self.clone(),
            prefix: String::new(),
        }
    }

    /// Zero-copy host view of a checkpoint tensor, in its stored dtype.
    pub fn host_view(&self, key: &str) -> Result<Tensor> {
        note_read(&self.dir, key);
        let (file, info) = self.ckpt.get(key)?;
        let dtype = st_to_dtype(info.dtype).ok_or_else(|| {
            Error::Weights(format!(
                "{}: tensor {key} has dtype {:?}, which the engine cannot use as a weight",
                file.path().display(),
                info.dtype
            ))
        })?;
        let backing: Arc<dyn Backing> = file.backing();
        Tensor::from_mapped(backing, info.start, info.len, dtype, &info.shape)
    }

    /// The tensor `key`, checked against `shape`, on the store's device in `dtype`.
    pub fn load(&self, key: &str, shape: &[usize], dtype: DType) -> Result<Tensor> {
        note_read(&self.dir, key);
        let ck = format!("{key}@{}", dtype.name());
        if let Some(t) = self.cache.lock().unwrap().get(&ck) {
            return Ok(t.clone());
        }
        let (file, info) = self.ckpt.get(key)?;
        if info.shape != shape {
            return Err(Error::Weights(format!(
                "{}: tensor {key} has shape {:?}, expected {:?} (is this the right checkpoint / config?)",
                file.path().display(),
                info.shape,
                shape
            )));
        }
        let host = self.host_view(key)?;
        if (host.dtype() == DType::I8) != (dtype == DType::I8) {
            return Err(Error::Weights(format!(
                "{}: tensor {key} is stored as {} and cannot be used as {}",
                file.path().display(),
                host.dtype().name(),
                dtype.name()
            )));
        }
        let t = if self.device.is_cuda() {
            // Upload in the stored dtype, convert on the device.
            host.to_device(&self.device)?.to_dtype(dtype)?
        } else if dtype == DType::I8 {
            host.contiguous()?
        } else {
            host.to_dtype(DType::F32)?
        };
        self.cache.lock().unwrap().insert(ck, t.clone());
        Ok(t)
    }

    /// Turns quantize-on-load on or off (drops what was delivered).
    pub fn set_int8(&self, policy: Option<Int8Policy>) {
        *self.int8.lock().unwrap() = policy;
        self.release_all();
    }

    pub fn int8_policy(&self) -> Option<Int8Policy> {
        *self.int8.lock().unwrap()
    }

    /// Whether the linear `name` (key without `.weight`) is delivered as INT8.
    pub fn is_int8(&self, name: &str) -> bool {
        self.ckpt.contains(&format!("{name}.weight_scale"))
            || self.int8_policy().is_some_and(|p| (p.quantizable)(name))
    }

    /// The INT8 weight of linear `name` ([out, in]): stored pre-quantized (`.weight` i8 +
    /// `.weight_scale` f32) or quantized now from the dense weight (cached either way).
    pub fn int8_weight(&self, name: &str, out_f: usize, in_f: usize) -> Result<Weight> {
        let (wk, sk) = (format!("{name}.weight"), format!("{name}.weight_scale"));
        if self.ckpt.contains(&sk) {
            let q = self.load(&wk, &[out_f, in_f], DType::I8)?;
            let sshape = self.shape_of(&sk).unwrap_or_default();
            let ok = sshape.first() == Some(&out_f)
                && (sshape.len() == 1
                    || (sshape.len() == 2 && sshape[1] > 0 && in_f % sshape[1] == 0));
            if !ok {
                return Err(Error::Weights(format!(
                    "{}: {sk} has shape {sshape:?}, expected [{out_f}] or [{out_f}, groups]",
                    self.dir.display()
                )));
            }
            let scale = self.load(&sk, &sshape, DType::F32)?;
            return Ok(Weight::Int8 { q, scale });
        }
        let (qk, sck) = (
            format!("{wk}@{}", DType::I8.name()),
            format!("{sk}@{}", DType::F32.name()),
        );
        {
            let c = self.cache.lock().unwrap();
            if let (Some(q), Some(s)) = (c.get(&qk), c.get(&sck)) {
                return Ok(Weight::Int8 {
                    q: q.clone(),
                    scale: s.clone(),
                });
            }
        }
        let (file, info) = self.ckpt.get(&wk)?;
        if info.shape != [out_f, in_f] {
            return Err(Error::Weights(format!(
                "{}: tensor {wk} has shape {:?}, expected [{out_f}, {in_f}]",
                file.path().display(),
                info.shape
            )));
        }
        let group = self
            .int8_policy()
            .and_then(|p| p.group)
            .filter(|g| in_f % g == 0);
        let (q, s) = crate::runtime::int8::quantize_host(
            &self.host_view(&wk)?.to_vec_f32()?,
            out_f,
            in_f,
            group,
        )?;
        let (q, s) = (q.to_device(&self.device)?, s.to_device(&self.device)?);
        let mut c = self.cache.lock().unwrap();
        c.insert(qk, q.clone());
        c.insert(sck, s.clone());
        Ok(Weight::Int8 { q, scale: s })
    }

    /// Drops every delivered tensor (frees their device memory back to the pool).
    pub fn release_all(&self) {
        self.cache.lock().unwrap().clear();
    }

    /// Drops the delivered tensors whose key starts with `prefix` (a streamed layer).
    pub fn evict_prefix(&self, prefix: &str) {
        self.cache
            .lock()
            .unwrap()
            .retain(|k, _| !k.starts_with(prefix));
    }

    /// Hands out `views` (key -> tensor, in the tensor's dtype) for the following loads: the
    /// residency layer installs a streamed layer's slot views here.
    pub fn install(&self, views: HashMap<String, Tensor>) {
        let mut c = self.cache.lock().unwrap();
        for (k, t) in views {
            c.insert(format!("{k}@{}", t.dtype().name()), t);
        }
    }
}

/// A key prefix into a [`WeightStore`]; `pp` appends `.name`.
#[derive(Clone)]
pub struct Prefix {
    store: Arc<WeightStore>,
    prefix: String,
}

impl Prefix {
    pub fn pp(&self, name: impl std::fmt::Display) -> Prefix {
        let prefix = if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        };
        Prefix {
            store: self.store.clone(),
            prefix,
        }
    }
    pub fn key(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }
    pub fn store(&self) -> &Arc<WeightStore> {
        &self.store
    }
    pub fn device(&self) -> &Device {
        &self.store.device
    }
    pub fn contains(&self, name: &str) -> bool {
        self.store.contains(&self.key(name))
    }
    pub fn shape_of(&self, name: &str) -> Option<Vec<usize>> {
        self.store.shape_of(&self.key(name))
    }
    /// A tensor in the store's compute dtype (f32 on the CPU).
    pub fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        self.store.load(&self.key(name), shape, self.store.dtype)
    }
    /// A tensor in f32 whatever the compute dtype (norm gains, VAE weights, biases kept precise).
    pub fn tensor_f32(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        self.store.load(&self.key(name), shape, DType::F32)
    }
    /// `{name}.weight` [out, in] and, if `bias`, `{name}.bias` [out].
    /// Delivered as INT8 when the checkpoint is pre-quantized (`.weight_scale` present) or the
    /// store quantizes on load and the linear is one INT8 applies to.
    pub fn linear(
        &self,
        name: &str,
        in_features: usize,
        out_features: usize,
        bias: bool,
    ) -> Result<Linear> {
        let p = self.pp(name);
        let full = self.key(name);
        let weight = if self.store.is_int8(&full) {
            self.store.int8_weight(&full, out_features, in_features)?
        } else {
            Weight::Dense(p.tensor("weight", &[out_features, in_features])?)
        };
        let bias = if bias {
            Some(p.tensor("bias", &[out_features])?)
        } else {
            None
        };
        Ok(Linear { weight, bias })
    }
}
