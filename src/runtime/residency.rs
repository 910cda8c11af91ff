//! Weight residency: where the weights of a layer loop live while the model runs. The model
//! code is the same in every mode: its layer loop calls [`Residency::prepare`] for layer `i`
//! (which returns a guard) and loads that layer's weights through the usual [`Prefix`]
//! calls; dropping the guard releases the layer.
//!
//! Modes ([`Offload`]):
//! - `None` (resident): every weight is uploaded once and stays (the store's cache).
//! - `Model`: a whole component is on the GPU only while it is used (the pipeline releases
//!   the text encoders after encoding and the transformer before the VAE decode).
//! - `Sequential`: the layers of a loop stay in host memory, in one page-locked buffer per
//!   layer (consolidated, 256-byte aligned, converted to the compute dtype once), and are
//!   copied on the copy stream into a ring of two device slots: layer i+1 is copied while
//!   layer i computes, ordered by events (no allocation and no device synchronisation per
//!   layer). When the host cannot pin that much, a warning is printed and two pinned staging
//!   buffers are used instead (the host copies from the memory map into them).
//! - A VRAM budget (`runtime::planner`) keeps the first layers resident and streams the rest.
//!
//! On the CPU, `Sequential` drops a layer's weights after use and maps them again next time
//! (the same arithmetic as resident, less memory), which is what the CPU tests exercise.
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use cudarc::driver::result as cu;

use super::device::{Event, Gpu};
use super::memory::PinnedBuffer;
use super::tensor::Storage;
use super::weights::WeightStore;
use super::{DType, Device, Tensor};
use crate::error::{Error, Result};

/// How a component's weights are kept (the `--offload` flag).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Offload {
    #[default]
    None,
    Model,
    Sequential,
}

/// The memory options of a run (the CLI's `--offload`, `--quantize`, `--vae-tiling`,
/// `--vram-budget`), handed to every model loader.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct MemoryOptions {
    pub offload: Offload,
    /// INT8 weight-only for the transformer and T5 linears (per-output-channel scales).
    pub int8: bool,
    /// Spatially tiled VAE decode.
    pub vae_tiling: bool,
    /// GPU memory cap in bytes: as many transformer layers resident as fit, the rest streamed.
    pub vram_budget: Option<u64>,
}

impl MemoryOptions {
    /// Whether the layer loops stream their weights (sequential offload or a budget).
    pub fn streams(&self) -> bool {
        self.offload == Offload::Sequential || self.vram_budget.is_some()
    }
}

/// Where a whole component lives when it is one unit rather than a layer loop (the VAE):
/// resident (loaded once, kept), or on demand (`--offload model`: loaded for each use through
/// the store's memory map, so a repeated load reads the page cache, and freed after it, as the
/// reference's model CPU offload moves the VAE to the GPU only for the decode). The caller
/// (the CLI's loader) chooses; the component's code runs the same through [`Self::with`].
///
/// Not a [`Residency`]: that one places the layers of a loop (rings, pinned buffers, streamed
/// views) under one store whose weights the model asks for by key while it runs; a component
/// placed on demand is built whole by its own loader (which also rearranges its weights, e.g.
/// the VAE's folds and bf16 packing), so what is kept or dropped is the built value.
pub enum ComponentResidency<T> {
    Resident(T),
    OnDemand(Box<dyn Fn() -> Result<T> + Send + Sync>),
}

impl<T> ComponentResidency<T> {
    /// Runs `f` on the component: the resident one, or one loaded now and dropped after `f`.
    pub fn with<R>(&self, f: impl FnOnce(&T) -> Result<R>) -> Result<R> {
        match self {
            ComponentResidency::Resident(t) => f(t),
            ComponentResidency::OnDemand(load) => f(&load()?),
        }
    }
}

const ALIGN: usize = 256;

/// Where one tensor of a streamed layer sits inside the layer's consolidated buffer.
#[derive(Clone, Debug)]
struct Entry {
    key: String,
    shape: Vec<usize>,
    dtype: DType,
    /// Byte offset in the consolidated layer buffer (aligned).
    offset: usize,
    kind: EntryKind,
    /// The checkpoint tensors it is filled from, row-concatenated in this order: `[key]`, or
    /// the members of a fused linear's weight, bias or scales (`key` is then the fused key,
    /// [`super::weights::fused_name`]).
    sources: Vec<String>,
}

#[derive(Clone, Debug, PartialEq)]
enum EntryKind {
    /// Converted to the compute dtype.
    Dense,
    /// Kept as stored (pre-quantized i8 weights and their f32 scales).
    Stored,
    /// Quantized on the host when the layer buffer is filled: the i8 weight of linear `name`,
    /// and (next entry) its scales.
    QuantQ,
    QuantScale,
}

/// A fused linear of one layer ([`super::weights::FusionPolicy`]): its members (full keys
/// without `.weight`) and how its weight is kept.
struct FusedGroup {
    members: Vec<String>,
    /// Members quantized when the layer is filled (quantize-on-load INT8).
    quantize_now: bool,
    /// Members pre-quantized in the checkpoint (i8 weight + `.weight_scale`).
    prequantized: bool,
    bias: bool,
}

/// The fusion groups of the store's policy in layer `i` whose members are all there (and not
/// left out), each linear in at most one group, and whose members agree (2D weights of one
/// width K, all with or all without bias, all dense / all quantized on load / all pre-quantized
/// with scales of one layout). Other groups stay separate tensors (the fused load then builds
/// the weight from the map: correct, only not free).
fn fused_groups(store: &WeightStore, group: &str, i: usize, left_out: &LeftOut) -> Vec<FusedGroup> {
    let Some(policy) = store.fusion_policy() else {
        return Vec::new();
    };
    let layer = format!("{group}.{i}.");
    let mut taken: Vec<String> = Vec::new();
    let mut out = Vec::new();
    for members in policy.groups.iter() {
        let in_layer = !members.is_empty() && members.iter().all(|m| m.starts_with(&layer));
        if !in_layer
            || members.iter().any(|m| {
                taken.contains(m) || !store.contains(&format!("{m}.weight")) || left_out.linear(m)
            })
        {
            continue;
        }
        let Some(g) = agreeing_group(store, members) else {
            continue;
        };
        taken.extend(members.iter().cloned());
        out.push(g);
    }
    out
}

/// `members` as one [`FusedGroup`] if they can be one region (see [`fused_groups`]).
fn agreeing_group(store: &WeightStore, members: &[String]) -> Option<FusedGroup> {
    let wk = |m: &String| format!("{m}.weight");
    let shapes: Vec<Vec<usize>> = members
        .iter()
        .map(|m| store.shape_of(&wk(m)).unwrap_or_default())
        .collect();
    if shapes.iter().any(|s| s.len() != 2 || s[1] != shapes[0][1]) {
        return None;
    }
    let has_bias: Vec<bool> = members
        .iter()
        .map(|m| store.contains(&format!("{m}.bias")))
        .collect();
    if has_bias.iter().any(|&b| b != has_bias[0]) {
        return None;
    }
    let scale_key = |m: &String| format!("{m}.weight_scale");
    let pre: Vec<bool> = members
        .iter()
        .map(|m| store.contains(&scale_key(m)))
        .collect();
    let int8: Vec<bool> = members.iter().map(|m| store.is_int8(m)).collect();
    let stored: Vec<Option<DType>> = members
        .iter()
        .map(|m| store.host_view(&wk(m)).ok().map(|t| t.dtype()))
        .collect();
    let all = |v: &[bool], x: bool| v.iter().all(|&b| b == x);
    let (quantize_now, prequantized) = if all(&pre, true) {
        let ss: Vec<Vec<usize>> = members
            .iter()
            .map(|m| store.shape_of(&scale_key(m)).unwrap_or_default())
            .collect();
        let one_layout = ss.iter().zip(&shapes).all(|(s, w)| {
            s.first() == Some(&w[0]) && s.len() == ss[0].len() && s[1..] == ss[0][1..]
        });
        let sdt: Vec<Option<DType>> = members
            .iter()
            .map(|m| store.host_view(&scale_key(m)).ok().map(|t| t.dtype()))
            .collect();
        if !one_layout
            || stored.iter().any(|d| *d != Some(DType::I8))
            || sdt.iter().any(|d| d.is_none() || *d != sdt[0])
        {
            return None;
        }
        (false, true)
    } else if all(&pre, false) && all(&int8, true) {
        (true, false)
    } else if all(&int8, false) && stored.iter().all(|d| d.is_some_and(|d| d != DType::I8)) {
        (false, false)
    } else {
        return None;
    };
    Some(FusedGroup {
        members: members.to_vec(),
        quantize_now,
        prequantized,
        bias: has_bias[0],
    })
}

/// The linears (full keys without `.weight`) a streamed layer leaves out of its copies: the
/// ones the model computes once per run (loaded on demand if asked for). Matched by linear
/// name, never by a key substring.
#[derive(Clone, Debug, Default)]
pub struct LeftOut(pub BTreeSet<String>);

impl LeftOut {
    fn linear(&self, name: &str) -> bool {
        self.0.contains(name)
    }
    /// Whether the tensor `key` belongs to a left-out linear (`.weight`, `.bias`, `.weight_scale`).
    fn key(&self, key: &str) -> bool {
        [".weight", ".bias", ".weight_scale"]
            .iter()
            .any(|s| key.strip_suffix(s).is_some_and(|n| self.linear(n)))
    }
}

/// Builds a layer's entries one after the other, 256-byte aligned.
struct LayoutBuilder {
    entries: Vec<Entry>,
    off: usize,
}

impl LayoutBuilder {
    fn push(
        &mut self,
        key: String,
        shape: Vec<usize>,
        dtype: DType,
        kind: EntryKind,
        sources: Vec<String>,
    ) {
        let n: usize = shape.iter().product();
        self.entries.push(Entry {
            key,
            shape,
            dtype,
            offset: self.off,
            kind,
            sources,
        });
        self.off = (self.off + n * dtype.size()).div_ceil(ALIGN) * ALIGN;
    }

    /// An INT8 weight quantized when the layer is filled, from `sources` row-concatenated
    /// ([n, k] in all), and its scales (per row, or per the policy's group of inputs).
    fn quantized(
        &mut self,
        store: &WeightStore,
        name: &str,
        n: usize,
        k: usize,
        sources: Vec<String>,
    ) {
        let groups = store
            .int8_policy()
            .and_then(|p| p.group)
            .filter(|g| k % g == 0)
            .map_or(1, |g| k / g);
        let sshape = if groups == 1 {
            vec![n]
        } else {
            vec![n, groups]
        };
        self.push(
            format!("{name}.weight"),
            vec![n, k],
            DType::I8,
            EntryKind::QuantQ,
            sources,
        );
        self.push(
            format!("{name}.weight_scale"),
            sshape,
            DType::F32,
            EntryKind::QuantScale,
            Vec::new(),
        );
    }

    /// One checkpoint tensor of the layer (not in a fused group): quantized now, kept as
    /// stored (i8 weights and their scales) or converted to the compute dtype.
    fn single(&mut self, store: &WeightStore, k: String) {
        let shape = store.shape_of(&k).unwrap_or_default();
        let stored = store
            .host_view(&k)
            .map(|t| t.dtype())
            .unwrap_or(store.dtype());
        let name = k.strip_suffix(".weight");
        let quantize_now = name
            .is_some_and(|n| store.is_int8(n) && !store.contains(&format!("{n}.weight_scale")))
            && shape.len() == 2;
        if quantize_now {
            let (n, kin) = (shape[0], shape[1]);
            self.quantized(store, name.unwrap(), n, kin, vec![k.clone()]);
        } else if stored == DType::I8 || k.ends_with(".weight_scale") {
            self.push(k.clone(), shape, stored, EntryKind::Stored, vec![k]);
        } else {
            self.push(k.clone(), shape, store.dtype(), EntryKind::Dense, vec![k]);
        }
    }

    /// A fused group as one entry per tensor kind (weight, scales, bias), filled from the
    /// members in order, so the fused tensor is one view.
    fn fused(&mut self, store: &WeightStore, g: &FusedGroup) {
        let dt = store.dtype();
        let name = super::weights::fused_name(&g.members);
        let keys = |suffix: &str| -> Vec<String> {
            g.members.iter().map(|m| format!("{m}{suffix}")).collect()
        };
        let wshape = |k: &String| store.shape_of(k).unwrap_or_default();
        let (wkeys, skeys) = (keys(".weight"), keys(".weight_scale"));
        let k_in = wshape(&wkeys[0])[1];
        let n_tot: usize = wkeys.iter().map(|k| wshape(k)[0]).sum();
        if g.quantize_now {
            self.quantized(store, &name, n_tot, k_in, wkeys);
        } else if g.prequantized {
            let mut sshape = wshape(&skeys[0]);
            sshape[0] = n_tot;
            let sdt = store
                .host_view(&skeys[0])
                .map(|t| t.dtype())
                .unwrap_or(DType::F32);
            self.push(
                format!("{name}.weight"),
                vec![n_tot, k_in],
                DType::I8,
                EntryKind::Stored,
                wkeys,
            );
            self.push(
                format!("{name}.weight_scale"),
                sshape,
                sdt,
                EntryKind::Stored,
                skeys,
            );
        } else {
            self.push(
                format!("{name}.weight"),
                vec![n_tot, k_in],
                dt,
                EntryKind::Dense,
                wkeys,
            );
        }
        if g.bias {
            self.push(
                format!("{name}.bias"),
                vec![n_tot],
                dt,
                EntryKind::Dense,
                keys(".bias"),
            );
        }
    }
}

/// The entries of layer `i` (see [`EntryKind`]), 256-byte aligned, and the layer's size: its
/// tensors in key order, then the fused groups ([`fused_groups`]).
fn layout_layer(store: &WeightStore, group: &str, i: usize, left_out: &LeftOut) -> LayerLayout {
    let fused = fused_groups(store, group, i, left_out);
    let in_fused = |k: &str| {
        fused.iter().any(|g| {
            g.members.iter().any(|m| {
                k.strip_prefix(m.as_str())
                    .is_some_and(|r| matches!(r, ".weight" | ".bias" | ".weight_scale"))
            })
        })
    };
    let mut b = LayoutBuilder {
        entries: Vec::new(),
        off: 0,
    };
    for k in layer_keys(store, group, i) {
        if !left_out.key(&k) && !in_fused(&k) {
            b.single(store, k);
        }
    }
    for g in &fused {
        b.fused(store, g);
    }
    LayerLayout {
        entries: b.entries,
        bytes: b.off,
    }
}

struct LayerLayout {
    entries: Vec<Entry>,
    bytes: usize,
}

/// Host side of a streamed layer.
enum HostLayer {
    /// Consolidated page-locked copy (converted to the compute dtype).
    Pinned(PinnedBuffer),
    /// Not pinned: filled into a staging buffer at copy time.
    Mapped,
}

struct Slot {
    storage: Arc<Storage>,
    /// Recorded on the copy stream when the copy is done.
    ready: Event,
    /// Recorded on the compute stream when the layer's compute is done (slot reusable).
    free: Event,
    /// Staging buffer (fallback when layers are not pinned) and the event of its last copy.
    staging: Option<(PinnedBuffer, Event)>,
}

struct GpuStream {
    gpu: Arc<Gpu>,
    layouts: Vec<LayerLayout>,
    host: Vec<HostLayer>,
    slots: Vec<Slot>,
    /// Which layer each slot holds and which slot computes.
    ring: Ring,
    /// Layer -> views of its tensors in the slot it occupies (valid until the slot is reused).
    views: HashMap<usize, HashMap<String, Tensor>>,
}

/// Bookkeeping of the two-slot ring (pure, unit-tested): the layer each slot holds (or is
/// being copied into it) and the slot of the layer acquired last, i.e. the one computing.
///
/// A new copy goes to the slot *not* holding the layer acquired last. (It used to go to slot
/// `layer % 2`, which breaks when the streamed layers wrap around with an odd count: with a
/// budget keeping layers 0..=34 resident, layer 37 computes in slot 1 while the prefetch of
/// layer 35 for the next step also picked slot 1, overwriting 37's weights in use; the slot's
/// `free` event was that of layer 35's previous use, so nothing ordered the copy after 37.)
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Ring {
    held: [Option<usize>; 2],
    current: Option<usize>,
}

impl Ring {
    fn slot_of(&self, layer: usize) -> Option<usize> {
        self.held.iter().position(|&l| l == Some(layer))
    }
    /// Where a copy of `layer` must go, or `None` if a slot already holds it.
    fn target(&self, layer: usize) -> Option<usize> {
        if self.slot_of(layer).is_some() {
            return None;
        }
        Some(self.current.map_or(0, |c| 1 - c))
    }
    /// The copy of `layer` into slot `si` has been issued.
    fn placed(&mut self, si: usize, layer: usize) {
        self.held[si] = Some(layer);
    }
    /// `layer` (placed before) starts computing; returns its slot.
    fn acquire(&mut self, layer: usize) -> Option<usize> {
        let si = self.slot_of(layer)?;
        self.current = Some(si);
        Some(si)
    }
}

impl Drop for GpuStream {
    fn drop(&mut self) {
        // A prefetch (the wrap-around copy of the first streamed layer) may still be writing a
        // slot on the copy stream. The slots go back to the pool, whose memory is only ordered
        // on the compute stream, and the pinned host buffers are freed: wait for the copies.
        if self.gpu.bind().is_ok() {
            let _ = self.gpu.copy.synchronize();
        }
    }
}

/// The residency of one layer loop (`transformer_blocks`, T5 `encoder.block`).
pub struct Residency {
    store: Arc<WeightStore>,
    /// Key prefix of layer `i` is `{group}.{i}.`.
    group: String,
    layers: usize,
    mode: Offload,
    resident: Vec<bool>,
    gpu: Option<Mutex<GpuStream>>,
}

/// Keys of layer `i` of `group` in the store, sorted.
fn layer_keys(store: &WeightStore, group: &str, i: usize) -> Vec<String> {
    let p = format!("{group}.{i}.");
    let mut v: Vec<String> = store
        .checkpoint()
        .names()
        .filter(|k| k.starts_with(&p))
        .map(|k| k.to_string())
        .collect();
    v.sort();
    v
}

impl Residency {
    /// Plain residency: every layer resident (uploaded on first use, kept).
    pub fn resident(store: &Arc<WeightStore>, group: &str, layers: usize) -> Residency {
        Residency {
            store: store.clone(),
            group: group.into(),
            layers,
            mode: Offload::None,
            resident: vec![true; layers],
            gpu: None,
        }
    }

    /// Bytes of each layer in the compute dtype.
    /// Device bytes of each layer (compute dtype, or INT8 + scales where quantized).
    pub fn layer_bytes(store: &WeightStore, group: &str, layers: usize) -> Vec<u64> {
        (0..layers)
            .map(|i| layout_layer(store, group, i, &LeftOut::default()).bytes as u64)
            .collect()
    }

    /// The residency a [`LayerPlan`](super::planner::LayerPlan) says, leaving the linears
    /// `left_out` out of the streamed copies (see [`Residency::streamed_except`]).
    pub fn from_plan(
        store: &Arc<WeightStore>,
        plan: &super::planner::LayerPlan,
        left_out: &LeftOut,
    ) -> Result<Residency> {
        match &plan.placement {
            super::planner::Placement::Resident => {
                Ok(Self::resident(store, &plan.group, plan.layers))
            }
            super::planner::Placement::Streamed { resident } => {
                Self::streamed_except(store, &plan.group, plan.layers, resident.clone(), left_out)
            }
        }
    }

    /// Streaming residency: layers with `resident[i] == false` are streamed (all if `None`).
    /// On the GPU this pins the streamed layers' host copies (or falls back to staging).
    pub fn streamed(
        store: &Arc<WeightStore>,
        group: &str,
        layers: usize,
        resident: Option<Vec<bool>>,
    ) -> Result<Residency> {
        Self::streamed_except(store, group, layers, resident, &LeftOut::default())
    }

    /// As [`Residency::streamed`], leaving the linears `left_out` out of the streamed copies
    /// (they are loaded on demand if asked for, and dropped by [`Residency::evict`]).
    pub fn streamed_except(
        store: &Arc<WeightStore>,
        group: &str,
        layers: usize,
        resident: Option<Vec<bool>>,
        left_out: &LeftOut,
    ) -> Result<Residency> {
        let resident = resident.unwrap_or_else(|| vec![false; layers]);
        let gpu = match store.device() {
            Device::Cpu => None,
            Device::Cuda(g) => Some(Mutex::new(Self::setup_gpu(
                store, g, group, &resident, left_out,
            )?)),
        };
        Ok(Residency {
            store: store.clone(),
            group: group.into(),
            layers,
            mode: Offload::Sequential,
            resident,
            gpu,
        })
    }

    fn setup_gpu(
        store: &WeightStore,
        gpu: &Arc<Gpu>,
        group: &str,
        resident: &[bool],
        left_out: &LeftOut,
    ) -> Result<GpuStream> {
        let layouts: Vec<LayerLayout> = (0..resident.len())
            .map(|i| layout_layer(store, group, i, left_out))
            .collect();
        let max = layouts
            .iter()
            .zip(resident)
            .filter(|(_, r)| !**r)
            .map(|(l, _)| l.bytes)
            .max()
            .unwrap_or(0);
        // Pin every streamed layer; on failure fall back to staging buffers (with a warning).
        // Asking for more than half of the host's available memory is treated as a failure
        // up front: pinning it could stall the machine instead of failing.
        let mut host = Vec::new();
        let want: usize = layouts
            .iter()
            .zip(resident)
            .filter(|(_, r)| !**r)
            .map(|(l, _)| l.bytes)
            .sum();
        let mut pinned_ok = true;
        if let Some(avail) = host_available_bytes() {
            if want as u64 > avail / 2 {
                eprintln!(
                    "warning: the streamed layers need {:.1} GiB of page-locked host memory but only {:.1} GiB is available; \
                     streaming through two pinned staging buffers instead (slower)",
                    want as f64 / (1u64 << 30) as f64,
                    avail as f64 / (1u64 << 30) as f64
                );
                pinned_ok = false;
            }
        }
        for (i, l) in layouts.iter().enumerate() {
            if resident[i] || !pinned_ok {
                host.push(HostLayer::Mapped);
                continue;
            }
            match PinnedBuffer::new(&gpu.ctx, l.bytes) {
                Ok(mut buf) => {
                    fill_layer(store, l, buf.as_mut_slice())?;
                    host.push(HostLayer::Pinned(buf));
                }
                Err(e) => {
                    eprintln!(
                        "warning: cannot pin the host copies of the streamed layers ({e}); streaming through two pinned staging \
                         buffers instead (slower: the host copies each layer before it is sent)"
                    );
                    pinned_ok = false;
                    host.push(HostLayer::Mapped);
                }
            }
        }
        if !pinned_ok {
            for h in host.iter_mut() {
                *h = HostLayer::Mapped; // consistent mode: drop the partial pinned set
            }
        }
        let mut slots = Vec::new();
        if max > 0 {
            for _ in 0..2 {
                let buf = gpu.alloc(max)?;
                let staging = if pinned_ok {
                    None
                } else {
                    Some((PinnedBuffer::new(&gpu.ctx, max)?, Event::new(false)?))
                };
                slots.push(Slot {
                    storage: Arc::new(Storage::Cuda(buf)),
                    ready: Event::new(false)?,
                    free: Event::new(false)?,
                    staging,
                });
            }
        }
        Ok(GpuStream {
            gpu: gpu.clone(),
            layouts,
            host,
            slots,
            ring: Ring::default(),
            views: HashMap::new(),
        })
    }

    pub fn mode(&self) -> Offload {
        self.mode
    }
    pub fn layers(&self) -> usize {
        self.layers
    }
    pub fn is_resident(&self, i: usize) -> bool {
        self.resident.get(i).copied().unwrap_or(true)
    }

    /// Makes layer `i`'s weights available (and starts copying layer `i + 1` when streaming).
    /// Keep the guard while the layer computes.
    pub fn prepare(&self, i: usize) -> Result<LayerGuard<'_>> {
        STREAM_STATS[0].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if i >= self.layers {
            return Err(Error::Other(format!(
                "{}: layer {i} of {}",
                self.group, self.layers
            )));
        }
        if !self.is_resident(i) {
            if let Some(g) = &self.gpu {
                let mut s = g.lock().unwrap();
                let views = s.acquire(&self.store, i)?;
                self.store.install(views);
                // The next streamed layer, wrapping to the first one for the next step.
                let next = (i + 1..self.layers)
                    .chain(0..i)
                    .find(|&j| !self.is_resident(j));
                if let Some(j) = next {
                    s.start_copy(&self.store, j)?;
                }
            }
        }
        Ok(LayerGuard { r: self, i })
    }

    /// Drops what the store delivered of streamed layer `i` (nothing for a resident layer):
    /// e.g. the per-run linears a model loaded on demand outside [`Residency::prepare`].
    pub fn evict(&self, i: usize) {
        if !self.is_resident(i) {
            self.store.evict_prefix(&format!("{}.{i}.", self.group));
        }
    }

    fn release(&self, i: usize) {
        if self.is_resident(i) {
            return;
        }
        self.evict(i);
        if let Some(g) = &self.gpu {
            let mut s = g.lock().unwrap();
            let _ = s.finish(i);
        }
    }
}

/// Process-wide counters: [layers prepared, streamed layer copies issued].
static STREAM_STATS: [std::sync::atomic::AtomicU64; 2] = [
    std::sync::atomic::AtomicU64::new(0),
    std::sync::atomic::AtomicU64::new(0),
];

/// (layers prepared for compute, host-to-device layer copies issued by the streaming ring) so
/// far in this process, for tests that check a step streams nothing (e.g. a reused step of the
/// step cache).
pub fn stream_stats() -> (u64, u64) {
    (
        STREAM_STATS[0].load(std::sync::atomic::Ordering::Relaxed),
        STREAM_STATS[1].load(std::sync::atomic::Ordering::Relaxed),
    )
}

/// Held while a layer computes; releases it on drop.
pub struct LayerGuard<'a> {
    r: &'a Residency,
    i: usize,
}

impl Drop for LayerGuard<'_> {
    fn drop(&mut self) {
        self.r.release(self.i);
    }
}

/// Copies (and converts or quantizes) a layer's tensors from the memory map into `dst`; an
/// entry with several sources (a fused linear) gets them row-concatenated.
fn fill_layer(store: &WeightStore, l: &LayerLayout, dst: &mut [u8]) -> Result<()> {
    let dt = store.dtype();
    let mut i = 0;
    while i < l.entries.len() {
        let e = &l.entries[i];
        match e.kind {
            EntryKind::Dense | EntryKind::Stored => {
                let mut at = e.offset;
                for src in &e.sources {
                    let v = store.host_view(src)?;
                    let bytes = if e.kind == EntryKind::Stored || v.dtype() == dt {
                        v.to_bytes()?
                    } else {
                        v.to_dtype(dt)?.to_bytes()?
                    };
                    dst[at..at + bytes.len()].copy_from_slice(&bytes);
                    at += bytes.len();
                }
                debug_assert_eq!(
                    at - e.offset,
                    e.shape.iter().product::<usize>() * e.dtype.size()
                );
            }
            EntryKind::QuantQ => {
                let se = &l.entries[i + 1];
                let (n, k) = (e.shape[0], e.shape[1]);
                let group = if se.shape.len() == 2 {
                    Some(k / se.shape[1])
                } else {
                    None
                };
                let mut rows = Vec::with_capacity(n * k);
                for src in &e.sources {
                    rows.extend(store.host_view(src)?.to_vec_f32()?);
                }
                let (q, s) = crate::runtime::int8::quantize_host(&rows, n, k, group)?;
                let (qb, sb) = (q.to_bytes()?, s.to_bytes()?);
                dst[e.offset..e.offset + qb.len()].copy_from_slice(&qb);
                dst[se.offset..se.offset + sb.len()].copy_from_slice(&sb);
                i += 1;
            }
            EntryKind::QuantScale => {}
        }
        i += 1;
    }
    Ok(())
}

impl GpuStream {
    fn slot_of(&self, layer: usize) -> Option<usize> {
        self.ring.slot_of(layer)
    }

    /// Issues the copy of `layer` into the slot not holding the layer acquired last.
    fn start_copy(&mut self, store: &WeightStore, layer: usize) -> Result<()> {
        if self.slots.is_empty() {
            return Ok(());
        }
        let Some(si) = self.ring.target(layer) else {
            return Ok(()); // already there (or on its way)
        };
        let gpu = self.gpu.clone();
        gpu.bind()?;
        let copy_stream = gpu.copy.clone();
        let copy = copy_stream.cu_stream();
        let slot = &mut self.slots[si];
        // The copy must not overwrite the slot before the compute that used it has finished.
        slot.free.wait_on(&copy_stream)?;
        let dst = match &*slot.storage {
            Storage::Cuda(b) => b.ptr(),
            _ => unreachable!(),
        };
        let l = &self.layouts[layer];
        match &self.host[layer] {
            // SAFETY: `dst` is the slot's device buffer, at least `max` >= this layer's bytes
            // long, and the copy stream waited on the slot's `free` event, so no kernel still
            // reads it; the pinned host buffer lives in `self.host` as long as the residency.
            HostLayer::Pinned(buf) => unsafe { cu::memcpy_htod_async(dst, buf.as_slice(), copy)? },
            HostLayer::Mapped => {
                let (stage, done) = slot
                    .staging
                    .as_mut()
                    .ok_or_else(|| Error::Other("streaming: no staging buffer".into()))?;
                done.synchronize()?; // the previous copy out of this staging buffer is finished
                fill_layer(store, l, stage.as_mut_slice())?;
                // SAFETY: as above for `dst`; the staging buffer is the slot's own and was
                // filled just now, after the event of its previous copy completed.
                unsafe { cu::memcpy_htod_async(dst, &stage.as_slice()[..l.bytes], copy)? };
                done.record(&copy_stream)?;
            }
        }
        slot.ready.record(&copy_stream)?;
        STREAM_STATS[1].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.ring.placed(si, layer);
        self.views.remove(&layer);
        Ok(())
    }

    /// Views of `layer`'s tensors, with the compute stream ordered after their copy.
    fn acquire(&mut self, store: &WeightStore, layer: usize) -> Result<HashMap<String, Tensor>> {
        self.start_copy(store, layer)?;
        let si = self.ring.acquire(layer).unwrap();
        self.slots[si].ready.wait_on(&self.gpu.compute)?;
        let dev = Device::Cuda(self.gpu.clone());
        let _ = store;
        let mut views = HashMap::new();
        for e in &self.layouts[layer].entries {
            let t = Tensor::view_in(
                self.slots[si].storage.clone(),
                e.dtype,
                &e.shape,
                e.offset / e.dtype.size(),
                &dev,
            )?;
            views.insert(e.key.clone(), t);
        }
        self.views.insert(layer, views.clone());
        Ok(views)
    }

    /// The compute of `layer` has been issued: its slot may be refilled after it.
    fn finish(&mut self, layer: usize) -> Result<()> {
        if let Some(si) = self.slot_of(layer) {
            self.slots[si].free.record(&self.gpu.compute)?;
        }
        self.views.remove(&layer);
        Ok(())
    }
}

/// `MemAvailable` of /proc/meminfo in bytes (Linux), if readable.
pub fn host_available_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Replays `Residency::prepare` (acquire layer i, then prefetch the next streamed layer,
    /// wrapping around) over several steps for every split of resident / streamed layers.
    #[test]
    fn ring_never_overwrites_the_computing_layer() {
        for layers in 1..9 {
            for first_streamed in 0..layers {
                let streamed = |j: usize| j >= first_streamed;
                let mut ring = Ring::default();
                for _step in 0..3 {
                    for i in (0..layers).filter(|&i| streamed(i)) {
                        if let Some(si) = ring.target(i) {
                            ring.placed(si, i);
                        }
                        let si = ring.acquire(i).unwrap();
                        let next = (i + 1..layers).chain(0..i).find(|&j| streamed(j));
                        if let Some(j) = next {
                            if let Some(sj) = ring.target(j) {
                                assert_ne!(
                                    sj, si,
                                    "{layers} layers, streamed from {first_streamed}: prefetch of {j} into the slot of {i}"
                                );
                                ring.placed(sj, j);
                            }
                        }
                        assert_eq!(ring.held[si], Some(i));
                    }
                }
            }
        }
        // The old choice (slot = layer % 2) fails this for an odd number of streamed layers:
        // layers 35, 36, 37 streamed -> 37 computes in slot 1 and 35 is prefetched into slot 1.
        assert_eq!(37 % 2, 35 % 2);
    }
}
