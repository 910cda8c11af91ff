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
    /// Linears the model asks for as one ([`Prefix::linear_fused`]): the streamed layer layout
    /// places their members adjacent (`runtime::residency`).
    fusion: Mutex<Option<FusionPolicy>>,
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
#[derive(Clone, Debug)]
pub struct Int8Policy {
    /// Scales per `group` input channels; `None`: per output channel.
    pub group: Option<usize>,
    /// Which linears (full keys without `.weight`) may be quantized: the linears the model's
    /// loader tags [`LinearTags::int8`], as its recorded description lists them
    /// (`model::inventory`); the runtime knows no names.
    pub linears: Arc<BTreeSet<String>>,
}

/// Linears the model runs as one GEMM (e.g. an attention's q, k and v projections), asked for
/// with [`Prefix::linear_fused`]: each group lists its members (full keys without `.weight`) in
/// output-row order, exactly as the model asks for them. The model hands over the groups its
/// loader's recorded description holds (like [`Int8Policy`]; the runtime knows no names); the
/// streamed layer layout places each group's members adjacent (`runtime::residency`). A linear
/// counts in at most one group.
#[derive(Clone, Debug, Default)]
pub struct FusionPolicy {
    pub groups: Arc<Vec<Vec<String>>>,
}

/// What a loader declares about a linear besides its shape: recorded on the description's
/// linears (`model::inventory`), from which the model builds the store's policies
/// ([`Int8Policy`], the residency's per-run linears). Fusion is declared by asking for the
/// linears as one ([`WeightSource::fused_tagged`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinearTags {
    /// Weight-only INT8 (`--quantize int8`, `contentv quantize`) applies to it.
    pub int8: bool,
    /// Its output depends only on the run's conditioning (the adaLN modulation): computed once
    /// per run, so streaming leaves it out of the per-layer copies.
    pub per_run: bool,
}

impl LinearTags {
    /// Nothing declared: stays in the compute dtype, streamed with its layer.
    pub const PLAIN: LinearTags = LinearTags {
        int8: false,
        per_run: false,
    };
    /// INT8 applies.
    pub const INT8: LinearTags = LinearTags {
        int8: true,
        per_run: false,
    };
    /// Computed once per run.
    pub const PER_RUN: LinearTags = LinearTags {
        int8: false,
        per_run: true,
    };
}

/// Where a loader gets its weights: the loaders are written once against this trait, and run
/// against the real store ([`Prefix`]: tensors on the device) or against a source that only
/// records names, shapes, dtypes and tags (`model::inventory::Recorder`: the component's
/// description, which `contentv info`, the checks before a load and the store's policies use).
/// `pp` appends `.name` to the key prefix; names are relative to it.
pub trait WeightSource: Sized + Clone {
    type Tensor;
    type Linear;
    fn pp(&self, name: impl std::fmt::Display) -> Self;
    /// Whether the checkpoint has the tensor `name` (loaders branch on it: pre-quantized
    /// linears, optional biases).
    fn contains(&self, name: &str) -> bool;
    /// The index of a layer prefix (`transformer_blocks.3` -> 3), if it ends with a number.
    fn layer_index(&self) -> Option<usize>;
    /// A tensor in the compute dtype (f32 on the CPU).
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Self::Tensor>;
    /// A tensor in f32 whatever the compute dtype.
    fn tensor_f32(&self, name: &str, shape: &[usize]) -> Result<Self::Tensor>;
    /// `{name}.weight` [out, in] and, if `bias`, `{name}.bias` [out]; INT8 when the
    /// checkpoint is pre-quantized or the store's policy lists it.
    fn linear_tagged(
        &self,
        name: &str,
        in_features: usize,
        out_features: usize,
        bias: bool,
        tags: LinearTags,
    ) -> Result<Self::Linear>;
    /// [`WeightSource::linear_tagged`] with [`LinearTags::PLAIN`].
    fn linear(&self, name: &str, i: usize, o: usize, bias: bool) -> Result<Self::Linear> {
        self.linear_tagged(name, i, o, bias, LinearTags::PLAIN)
    }
    /// The linears `names` as one (row-concatenated, see [`Prefix::linear_fused`]), each
    /// member with `tags`.
    fn fused_tagged(
        &self,
        names: &[&str],
        in_features: usize,
        out_features: &[usize],
        bias: bool,
        tags: LinearTags,
    ) -> Result<Self::Linear>;
    /// A dense linear stored in another shape: `{name}.weight` as `stored` (e.g. a conv with
    /// kernel = stride, [out, C, p, p]) read as [out, in] (in = the product of the rest), and
    /// `{name}.bias` [out].
    fn linear_reshaped(&self, name: &str, stored: &[usize]) -> Result<Self::Linear>;
}

/// The key prefix of the fused linear of these member linears (full keys without `.weight`):
/// the members joined by `+`; the fused tensors are `{name}.weight` [sum N_i, K], `.bias`,
/// `.weight_scale`. Starts with the first member's key, so it falls under its layer's prefix
/// (evicted with the layer). Never a checkpoint key: nothing reads it from a file.
pub fn fused_name<S: AsRef<str>>(members: &[S]) -> String {
    members
        .iter()
        .map(|m| m.as_ref())
        .collect::<Vec<_>>()
        .join("+")
}

/// The one definition of a layer index in a key prefix: the last `.`-separated part, numeric.
pub fn layer_index_of(prefix: &str) -> Option<usize> {
    let last = prefix.rsplit('.').next()?;
    (!last.is_empty() && last.bytes().all(|b| b.is_ascii_digit()))
        .then(|| last.parse().ok())
        .flatten()
}

impl WeightStore {
    /// Opens `dir` (single `*.safetensors` or sharded with an index JSON).
    pub fn open(dir: &Path, device: &Device, dtype: DType) -> Result<Arc<WeightStore>> {
        let ckpt = ShardedCheckpoint::open_dir(dir)?;
        Ok(Self::over(ckpt, dir, device, dtype))
    }

    /// Opens one safetensors file as a store (latents and noise files, single-file weights).
    pub fn open_file(path: &Path, device: &Device, dtype: DType) -> Result<Arc<WeightStore>> {
        let ckpt = ShardedCheckpoint::open_files(&[path.to_path_buf()])?;
        Ok(Self::over(ckpt, path, device, dtype))
    }

    /// A store over an opened checkpoint (`dir`: the path its messages name), nothing delivered
    /// yet; on the CPU every tensor is delivered in f32.
    fn over(
        ckpt: ShardedCheckpoint,
        dir: &Path,
        device: &Device,
        dtype: DType,
    ) -> Arc<WeightStore> {
        let dtype = if device.is_cuda() { dtype } else { DType::F32 };
        Arc::new(WeightStore {
            ckpt,
            dir: dir.to_path_buf(),
            device: device.clone(),
            dtype,
            cache: Mutex::new(HashMap::new()),
            int8: Mutex::new(None),
            fusion: Mutex::new(None),
        })
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
        let ck = cache_key(key, dtype);
        if let Some(t) = self.cache.lock().unwrap().get(&ck) {
            return Ok(t.clone());
        }
        let t = self.load_uncached(key, shape, dtype)?;
        self.cache.lock().unwrap().insert(ck, t.clone());
        Ok(t)
    }

    /// [`WeightStore::load`] without the cache.
    fn load_uncached(&self, key: &str, shape: &[usize], dtype: DType) -> Result<Tensor> {
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
        Ok(t)
    }

    /// The row-concatenation of the tensors `keys` (shapes `shapes`) in `dtype` on the device,
    /// delivered (and cached) as `fused_key`: built once from the members, which are not
    /// cached themselves; a streamed layer installs it as one view
    /// ([`crate::runtime::residency`] places the members adjacent).
    fn load_concat(
        &self,
        keys: &[String],
        shapes: &[Vec<usize>],
        fused_key: &str,
        dtype: DType,
    ) -> Result<Tensor> {
        for k in keys {
            note_read(&self.dir, k);
        }
        let mut total = shapes[0].clone();
        total[0] = shapes.iter().map(|s| s[0]).sum();
        let ck = cache_key(fused_key, dtype);
        if let Some(t) = self.cache.lock().unwrap().get(&ck) {
            if t.shape() != total {
                return Err(Error::Weights(format!(
                    "{}: fused tensor {fused_key} is {:?}, expected {total:?}",
                    self.dir.display(),
                    t.shape()
                )));
            }
            return Ok(t.clone());
        }
        if shapes
            .iter()
            .any(|s| s.len() != total.len() || s[1..] != total[1..])
        {
            return Err(Error::Weights(format!(
                "{}: the tensors {} ({shapes:?}) do not stack into one",
                self.dir.display(),
                keys.join(", ")
            )));
        }
        // Each member is loaded (uploaded and converted as a plain load would), copied into its
        // rows and dropped at once: besides the result, one member at a time is alive (on the
        // GPU the pool is stream-ordered, so dropping it before the copy ran is safe).
        let t = match &self.device {
            Device::Cpu => {
                let mut bytes = Vec::with_capacity(total.iter().product::<usize>() * dtype.size());
                for (k, sh) in keys.iter().zip(shapes) {
                    bytes.extend_from_slice(&self.load_uncached(k, sh, dtype)?.to_bytes()?);
                }
                Tensor::host_from_bytes(&bytes, dtype, &total)?
            }
            Device::Cuda(_) => {
                let out = Tensor::empty(&total, dtype, &self.device)?;
                let mut row = 0;
                for (k, sh) in keys.iter().zip(shapes) {
                    let part = self.load_uncached(k, sh, dtype)?.contiguous()?;
                    out.narrow(0, row, sh[0])?.copy_from(&part)?;
                    row += sh[0];
                }
                out
            }
        };
        self.cache.lock().unwrap().insert(ck, t.clone());
        Ok(t)
    }

    /// The linears `members` (full keys without `.weight`; [N_i, in_f] each) as one linear
    /// [sum N_i, in_f] (weights, biases and INT8 scales row-concatenated), see
    /// [`Prefix::linear_fused`].
    pub fn linear_fused(
        &self,
        members: &[String],
        in_f: usize,
        out_f: &[usize],
        bias: bool,
    ) -> Result<Linear> {
        if members.is_empty() || members.len() != out_f.len() {
            return Err(Error::Other(format!(
                "linear_fused: {} members with {} output widths",
                members.len(),
                out_f.len()
            )));
        }
        let name = fused_name(members);
        let wkeys: Vec<String> = members.iter().map(|m| format!("{m}.weight")).collect();
        let wshapes: Vec<Vec<usize>> = out_f.iter().map(|&n| vec![n, in_f]).collect();
        let n_tot: usize = out_f.iter().sum();
        let int8: Vec<bool> = members.iter().map(|m| self.is_int8(m)).collect();
        let weight = if int8.iter().all(|&q| !q) {
            Weight::Dense(self.load_concat(
                &wkeys,
                &wshapes,
                &format!("{name}.weight"),
                self.dtype,
            )?)
        } else if int8.iter().all(|&q| q) {
            self.int8_fused(members, &name, in_f, out_f, n_tot)?
        } else {
            return Err(Error::Weights(format!(
                "{}: the linears {} are fused but only some of them are INT8",
                self.dir.display(),
                members.join(", ")
            )));
        };
        let bias = if bias {
            let bkeys: Vec<String> = members.iter().map(|m| format!("{m}.bias")).collect();
            let bshapes: Vec<Vec<usize>> = out_f.iter().map(|&n| vec![n]).collect();
            Some(self.load_concat(&bkeys, &bshapes, &format!("{name}.bias"), self.dtype)?)
        } else {
            None
        };
        Ok(Linear { weight, bias })
    }

    /// The INT8 weight of a fused linear: pre-quantized members (q rows and scales
    /// concatenated) or quantized now from the concatenated dense rows (per-row or per-group
    /// scales, so the same values as quantizing each member).
    fn int8_fused(
        &self,
        members: &[String],
        name: &str,
        in_f: usize,
        out_f: &[usize],
        n_tot: usize,
    ) -> Result<Weight> {
        let wkeys: Vec<String> = members.iter().map(|m| format!("{m}.weight")).collect();
        let skeys: Vec<String> = members
            .iter()
            .map(|m| format!("{m}.weight_scale"))
            .collect();
        let pre: Vec<bool> = skeys.iter().map(|k| self.ckpt.contains(k)).collect();
        let (fq, fs) = (format!("{name}.weight"), format!("{name}.weight_scale"));
        if pre.iter().all(|&p| p) {
            let wshapes: Vec<Vec<usize>> = out_f.iter().map(|&n| vec![n, in_f]).collect();
            let sshapes: Vec<Vec<usize>> = skeys
                .iter()
                .map(|k| self.shape_of(k).unwrap_or_default())
                .collect();
            for ((sk, ss), &n) in skeys.iter().zip(&sshapes).zip(out_f) {
                let ok = ss.first() == Some(&n)
                    && (ss.len() == 1 || (ss.len() == 2 && ss[1] > 0 && in_f % ss[1] == 0))
                    && ss.len() == sshapes[0].len()
                    && ss[1..] == sshapes[0][1..];
                if !ok {
                    return Err(Error::Weights(format!(
                        "{}: {sk} has shape {ss:?}, expected [{n}] or [{n}, groups] like the \
                         other members of {}",
                        self.dir.display(),
                        members.join(", ")
                    )));
                }
            }
            let q = self.load_concat(&wkeys, &wshapes, &fq, DType::I8)?;
            let scale = self.load_concat(&skeys, &sshapes, &fs, DType::F32)?;
            return Ok(Weight::Int8 { q, scale });
        }
        if pre.iter().any(|&p| p) {
            return Err(Error::Weights(format!(
                "{}: the linears {} are fused but only some are pre-quantized",
                self.dir.display(),
                members.join(", ")
            )));
        }
        for k in &wkeys {
            note_read(&self.dir, k);
        }
        let (qk, sck) = int8_cache_keys(&fq, &fs);
        if let Some(w) = self.cached_int8(&qk, &sck) {
            return Ok(w);
        }
        let mut rows = Vec::with_capacity(n_tot * in_f);
        for (wk, &n) in wkeys.iter().zip(out_f) {
            let (file, info) = self.ckpt.get(wk)?;
            if info.shape != [n, in_f] {
                return Err(Error::Weights(format!(
                    "{}: tensor {wk} has shape {:?}, expected [{n}, {in_f}]",
                    file.path().display(),
                    info.shape
                )));
            }
            rows.extend(self.host_view(wk)?.to_vec_f32()?);
        }
        self.quantize_on_load(rows, n_tot, in_f, qk, sck)
    }

    /// The delivered INT8 pair under the cache keys (q, scale), if both are there.
    fn cached_int8(&self, qk: &str, sck: &str) -> Option<Weight> {
        let c = self.cache.lock().unwrap();
        match (c.get(qk), c.get(sck)) {
            (Some(q), Some(s)) => Some(Weight::Int8 {
                q: q.clone(),
                scale: s.clone(),
            }),
            _ => None,
        }
    }

    /// Quantize-on-load: the f32 rows [out_f, in_f] to INT8 (per channel, or in the policy's
    /// groups when they divide in_f) on the host, then to the device, delivered under the cache
    /// keys (q, scale). The f32 copy is freed before the upload.
    fn quantize_on_load(
        &self,
        rows: Vec<f32>,
        out_f: usize,
        in_f: usize,
        qk: String,
        sck: String,
    ) -> Result<Weight> {
        let group = self
            .int8_policy()
            .and_then(|p| p.group)
            .filter(|g| in_f % g == 0);
        let (q, s) = crate::runtime::int8::quantize_host(&rows, out_f, in_f, group)?;
        drop(rows);
        let (q, s) = (q.to_device(&self.device)?, s.to_device(&self.device)?);
        let mut c = self.cache.lock().unwrap();
        c.insert(qk, q.clone());
        c.insert(sck, s.clone());
        Ok(Weight::Int8 { q, scale: s })
    }

    /// Turns quantize-on-load on or off (drops what was delivered).
    pub fn set_int8(&self, policy: Option<Int8Policy>) {
        *self.int8.lock().unwrap() = policy;
        self.release_all();
    }

    pub fn int8_policy(&self) -> Option<Int8Policy> {
        self.int8.lock().unwrap().clone()
    }

    /// Sets the model's fusion groups (drops what was delivered). Set it before a
    /// [`crate::runtime::residency::Residency`] or a plan is made: the streamed layer layout
    /// and the layer byte counts follow it.
    pub fn set_fusion(&self, policy: Option<FusionPolicy>) {
        *self.fusion.lock().unwrap() = policy;
        self.release_all();
    }

    pub fn fusion_policy(&self) -> Option<FusionPolicy> {
        self.fusion.lock().unwrap().clone()
    }

    /// Whether the linear `name` (key without `.weight`) is delivered as INT8.
    pub fn is_int8(&self, name: &str) -> bool {
        self.ckpt.contains(&format!("{name}.weight_scale"))
            || self
                .int8
                .lock()
                .unwrap()
                .as_ref()
                .is_some_and(|p| p.linears.contains(name))
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
        let (qk, sck) = int8_cache_keys(&wk, &sk);
        if let Some(w) = self.cached_int8(&qk, &sck) {
            return Ok(w);
        }
        let (file, info) = self.ckpt.get(&wk)?;
        if info.shape != [out_f, in_f] {
            return Err(Error::Weights(format!(
                "{}: tensor {wk} has shape {:?}, expected [{out_f}, {in_f}]",
                file.path().display(),
                info.shape
            )));
        }
        let rows = self.host_view(&wk)?.to_vec_f32()?;
        self.quantize_on_load(rows, out_f, in_f, qk, sck)
    }

    /// Drops every delivered tensor (frees their device memory back to the pool).
    pub fn release_all(&self) {
        self.cache.lock().unwrap().clear();
    }

    /// Drops the delivered tensors whose key starts with `prefix` (a streamed layer): for the
    /// residency layer only; models release layers through [`crate::runtime::residency::Residency`].
    pub(crate) fn evict_prefix(&self, prefix: &str) {
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
            c.insert(cache_key(&k, t.dtype()), t);
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

    /// The linears `names` (each `{name}.weight` [out_features[i], in_features], and
    /// `{name}.bias` if `bias`) as one linear whose weight is their row-concatenation
    /// [sum out_features, in_features] (bias likewise): one GEMM instead of several. The store
    /// builds it once (resident), or installs it as one view of a streamed layer (members
    /// adjacent when the model declared the group, [`WeightStore::set_fusion`]); INT8 members
    /// (quantize-on-load or pre-quantized) concatenate their q rows and scales. The output
    /// columns of member i are the range after the widths of members 0..i.
    pub fn linear_fused(
        &self,
        names: &[&str],
        in_features: usize,
        out_features: &[usize],
        bias: bool,
    ) -> Result<Linear> {
        let members: Vec<String> = names.iter().map(|n| self.key(n)).collect();
        self.store
            .linear_fused(&members, in_features, out_features, bias)
    }
}

impl WeightSource for Prefix {
    type Tensor = Tensor;
    type Linear = Linear;
    fn pp(&self, name: impl std::fmt::Display) -> Prefix {
        Prefix::pp(self, name)
    }
    fn contains(&self, name: &str) -> bool {
        Prefix::contains(self, name)
    }
    fn layer_index(&self) -> Option<usize> {
        layer_index_of(&self.prefix)
    }
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        Prefix::tensor(self, name, shape)
    }
    fn tensor_f32(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        Prefix::tensor_f32(self, name, shape)
    }
    /// The store delivers INT8 for the linears its [`Int8Policy`] lists (built from these tags
    /// by the model) or that the checkpoint has pre-quantized; `tags` are the description's.
    fn linear_tagged(
        &self,
        name: &str,
        in_features: usize,
        out_features: usize,
        bias: bool,
        _tags: LinearTags,
    ) -> Result<Linear> {
        Prefix::linear(self, name, in_features, out_features, bias)
    }
    fn fused_tagged(
        &self,
        names: &[&str],
        in_features: usize,
        out_features: &[usize],
        bias: bool,
        _tags: LinearTags,
    ) -> Result<Linear> {
        Prefix::linear_fused(self, names, in_features, out_features, bias)
    }
    fn linear_reshaped(&self, name: &str, stored: &[usize]) -> Result<Linear> {
        let p = Prefix::pp(self, name);
        let (out, rest) = match stored.split_first() {
            Some((&o, rest)) => (o, rest.iter().product::<usize>()),
            None => (0, 0),
        };
        Ok(Linear {
            weight: Weight::Dense(p.tensor("weight", stored)?.reshape(&[out, rest])?),
            bias: Some(p.tensor("bias", &[out])?),
        })
    }
}

/// The key a delivered tensor is cached under: the checkpoint key and the dtype it was
/// delivered in.
fn cache_key(key: &str, dtype: DType) -> String {
    format!("{key}@{}", dtype.name())
}

/// The cache keys of an INT8 pair: the weight's tensor as i8, the scale's as f32.
fn int8_cache_keys(wk: &str, sk: &str) -> (String, String) {
    (cache_key(wk, DType::I8), cache_key(sk, DType::F32))
}
