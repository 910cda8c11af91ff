//! The engine's tensor: dtype, shape, strides, and host or device storage (including
//! zero-copy views of memory-mapped safetensors data).
//!
//! Conventions: the CPU path computes in f32 (it is the plain reference); the GPU path keeps
//! activations in bf16 (f32 where the reference runs in f32, e.g. the VAE). Ops accept any
//! dtype on the CPU and convert on the fly.
use std::borrow::Cow;
use std::sync::Arc;

use cudarc::driver::result as cu;
use half::{bf16, f16};

use super::device::Device;
use super::memory::DeviceBuffer;
use crate::error::{Error, Result};
use crate::shape_err;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    BF16,
    F16,
    /// INT8 weights; their scales travel separately (see `residency::Weight`).
    I8,
}

impl DType {
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::BF16 | DType::F16 => 2,
            DType::I8 => 1,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::BF16 => "bf16",
            DType::F16 => "f16",
            DType::I8 => "i8",
        }
    }
}

/// Something that owns bytes which can back a zero-copy tensor (an mmap, a Vec).
pub trait Backing: Send + Sync {
    fn bytes(&self) -> &[u8];
}
impl Backing for memmap2::Mmap {
    fn bytes(&self) -> &[u8] {
        self
    }
}
impl Backing for Vec<u8> {
    fn bytes(&self) -> &[u8] {
        self
    }
}

pub enum Storage {
    /// Host memory, owned and aligned for the dtype.
    F32(Vec<f32>),
    BF16(Vec<bf16>),
    F16(Vec<f16>),
    I8(Vec<i8>),
    /// Host bytes borrowed from a mapping (possibly unaligned), little-endian.
    Mapped {
        backing: Arc<dyn Backing>,
        start: usize,
        len: usize,
    },
    /// Device memory from the pool.
    Cuda(DeviceBuffer),
}

#[derive(Clone)]
pub struct Tensor {
    storage: Arc<Storage>,
    dtype: DType,
    shape: Vec<usize>,
    strides: Vec<usize>,
    /// Offset in elements from the start of the storage.
    offset: usize,
    device: Device,
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Tensor({:?}, {}, {:?})",
            self.shape,
            self.dtype.name(),
            self.device
        )
    }
}

pub fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

fn f32_from_bytes(dtype: DType, b: &[u8]) -> Vec<f32> {
    match dtype {
        DType::F32 => b
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        DType::BF16 => b
            .chunks_exact(2)
            .map(|c| bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
            .collect(),
        DType::F16 => b
            .chunks_exact(2)
            .map(|c| f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
            .collect(),
        DType::I8 => b.iter().map(|&x| x as i8 as f32).collect(),
    }
}

impl Tensor {
    // ----- construction -------------------------------------------------------------------

    fn from_storage(storage: Storage, dtype: DType, shape: &[usize], device: Device) -> Tensor {
        Tensor {
            storage: Arc::new(storage),
            dtype,
            shape: shape.to_vec(),
            strides: contiguous_strides(shape),
            offset: 0,
            device,
        }
    }

    fn check_len(shape: &[usize], len: usize) -> Result<()> {
        let n: usize = shape.iter().product();
        if n != len {
            return Err(shape_err!("shape {shape:?} needs {n} elements, got {len}"));
        }
        Ok(())
    }

    /// A host f32 tensor, moved to `device` (converted to nothing: stays f32).
    pub fn from_f32(data: Vec<f32>, shape: &[usize], device: &Device) -> Result<Tensor> {
        Self::check_len(shape, data.len())?;
        Self::from_storage(Storage::F32(data), DType::F32, shape, Device::Cpu).to_device(device)
    }

    pub fn from_bf16(data: Vec<bf16>, shape: &[usize], device: &Device) -> Result<Tensor> {
        Self::check_len(shape, data.len())?;
        Self::from_storage(Storage::BF16(data), DType::BF16, shape, Device::Cpu).to_device(device)
    }

    pub fn from_f16(data: Vec<f16>, shape: &[usize], device: &Device) -> Result<Tensor> {
        Self::check_len(shape, data.len())?;
        Self::from_storage(Storage::F16(data), DType::F16, shape, Device::Cpu).to_device(device)
    }

    pub fn from_i8(data: Vec<i8>, shape: &[usize], device: &Device) -> Result<Tensor> {
        Self::check_len(shape, data.len())?;
        Self::from_storage(Storage::I8(data), DType::I8, shape, Device::Cpu).to_device(device)
    }

    /// A dense view of `shape` at element offset `offset` inside a shared storage (a slot of the
    /// weight-streaming ring). The storage must be large enough (checked).
    pub fn view_in(
        storage: Arc<Storage>,
        dtype: DType,
        shape: &[usize],
        offset: usize,
        device: &Device,
    ) -> Result<Tensor> {
        let t = Tensor {
            storage,
            dtype,
            shape: shape.to_vec(),
            strides: contiguous_strides(shape),
            offset,
            device: device.clone(),
        };
        if offset + t.elem_count() > t.storage_elems() {
            return Err(shape_err!(
                "view {shape:?} at {offset} runs past its storage ({} elements)",
                t.storage_elems()
            ));
        }
        Ok(t)
    }

    /// A zero-copy host view of `len` bytes at `start` of `backing` (e.g. an mmap).
    pub fn from_mapped(
        backing: Arc<dyn Backing>,
        start: usize,
        len: usize,
        dtype: DType,
        shape: &[usize],
    ) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        if n * dtype.size() != len {
            return Err(shape_err!(
                "mapped view of {len} bytes cannot hold {shape:?} {}",
                dtype.name()
            ));
        }
        if start
            .checked_add(len)
            .is_none_or(|e| e > backing.bytes().len())
        {
            return Err(shape_err!(
                "mapped view {start}+{len} lies outside its backing of {} bytes",
                backing.bytes().len()
            ));
        }
        Ok(Self::from_storage(
            Storage::Mapped {
                backing,
                start,
                len,
            },
            dtype,
            shape,
            Device::Cpu,
        ))
    }

    /// Uninitialised tensor (zeros on the CPU). On the GPU the memory comes from the pool.
    pub fn empty(shape: &[usize], dtype: DType, device: &Device) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        match device {
            Device::Cpu => Ok(Self::from_storage(
                match dtype {
                    DType::F32 => Storage::F32(vec![0.0; n]),
                    DType::BF16 => Storage::BF16(vec![bf16::ZERO; n]),
                    DType::F16 => Storage::F16(vec![f16::ZERO; n]),
                    DType::I8 => Storage::I8(vec![0; n]),
                },
                dtype,
                shape,
                Device::Cpu,
            )),
            Device::Cuda(g) => {
                let buf = g.alloc(n * dtype.size())?;
                if super::memory::poison_enabled() && n > 0 {
                    // SAFETY: `buf` was just allocated with n * dtype.size() bytes on g; the memset is queued
                    // on g's compute stream, before any use of the buffer.
                    // SAFETY: `buf` was just allocated with n * dtype.size() bytes on g; the memset is queued
                    // on g's compute stream, before any use of the buffer.
                    unsafe { cu::memset_d8_async(buf.ptr(), 0xFF, n * dtype.size(), g.stream())? };
                }
                Ok(Self::from_storage(
                    Storage::Cuda(buf),
                    dtype,
                    shape,
                    device.clone(),
                ))
            }
        }
    }

    pub fn zeros(shape: &[usize], dtype: DType, device: &Device) -> Result<Tensor> {
        let t = Self::empty(shape, dtype, device)?;
        if let Device::Cuda(g) = device {
            let bytes = t.elem_count() * dtype.size();
            if bytes > 0 {
                // SAFETY: `t` is a fresh contiguous buffer of `bytes` bytes on g; queued on its compute
                // stream before any use.
                unsafe { cu::memset_d8_async(t.dev_ptr()?, 0, bytes, g.stream())? };
            }
        }
        Ok(t)
    }

    // ----- accessors ----------------------------------------------------------------------

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    pub fn dims(&self) -> &[usize] {
        &self.shape
    }
    pub fn dim(&self, i: usize) -> usize {
        self.shape[i]
    }
    pub fn rank(&self) -> usize {
        self.shape.len()
    }
    pub fn strides(&self) -> &[usize] {
        &self.strides
    }
    pub fn offset(&self) -> usize {
        self.offset
    }
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn device(&self) -> &Device {
        &self.device
    }
    pub fn elem_count(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn size_bytes(&self) -> usize {
        self.elem_count() * self.dtype.size()
    }
    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    pub fn is_contiguous(&self) -> bool {
        let mut expect = 1;
        for i in (0..self.shape.len()).rev() {
            if self.shape[i] != 1 && self.strides[i] != expect {
                return false;
            }
            expect *= self.shape[i];
        }
        true
    }

    /// Device address of the first element (GPU tensors only).
    pub fn dev_ptr(&self) -> Result<u64> {
        match &*self.storage {
            Storage::Cuda(b) => Ok(b.ptr() + (self.offset * self.dtype.size()) as u64),
            _ => Err(Error::Other("dev_ptr() on a host tensor".into())),
        }
    }

    /// Row stride (elements) of the last-but-one dim, for kernels taking strided rows.
    /// Requires the last dim to be dense.
    pub fn row_stride(&self) -> Result<usize> {
        let r = self.rank();
        if r == 0 || (self.shape[r - 1] > 1 && self.strides[r - 1] != 1) {
            return Err(shape_err!(
                "tensor {:?} has a non-dense last dim",
                self.shape
            ));
        }
        Ok(if r >= 2 {
            self.strides[r - 2]
        } else {
            self.shape[0]
        })
    }

    // ----- views --------------------------------------------------------------------------

    /// Same data, new shape (contiguous tensors only; -1 is not supported, spell it out).
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        if n != self.elem_count() {
            return Err(shape_err!(
                "cannot reshape {:?} ({} elements) to {shape:?}",
                self.shape,
                self.elem_count()
            ));
        }
        if !self.is_contiguous() {
            return self.contiguous()?.reshape(shape);
        }
        let mut t = self.clone();
        t.shape = shape.to_vec();
        t.strides = contiguous_strides(shape);
        Ok(t)
    }

    /// View of `len` entries starting at `start` along `dim`.
    pub fn narrow(&self, dim: usize, start: usize, len: usize) -> Result<Tensor> {
        if dim >= self.rank() || start + len > self.shape[dim] {
            return Err(shape_err!(
                "narrow(dim {dim}, {start}..{}) out of range for {:?}",
                start + len,
                self.shape
            ));
        }
        let mut t = self.clone();
        t.offset += start * self.strides[dim];
        t.shape[dim] = len;
        Ok(t)
    }

    /// A view with explicit shape and strides (elements) over the same storage, starting at this
    /// view's offset. Checked against the storage's size.
    pub fn as_strided(&self, shape: &[usize], strides: &[usize]) -> Result<Tensor> {
        if shape.len() != strides.len() {
            return Err(shape_err!(
                "as_strided: shape {shape:?} and strides {strides:?} differ in rank"
            ));
        }
        let last: usize = shape
            .iter()
            .zip(strides)
            .map(|(&n, &s)| n.saturating_sub(1) * s)
            .sum();
        if shape.iter().all(|&n| n > 0) && self.offset + last >= self.storage_elems() {
            return Err(shape_err!(
                "as_strided: view {shape:?} / {strides:?} at offset {} runs past the storage ({} elements)",
                self.offset,
                self.storage_elems()
            ));
        }
        let mut t = self.clone();
        t.shape = shape.to_vec();
        t.strides = strides.to_vec();
        Ok(t)
    }

    fn storage_elems(&self) -> usize {
        let es = self.dtype.size();
        match &*self.storage {
            Storage::F32(v) => v.len(),
            Storage::BF16(v) => v.len(),
            Storage::F16(v) => v.len(),
            Storage::I8(v) => v.len(),
            Storage::Mapped { len, .. } => len / es,
            Storage::Cuda(b) => b.size() / es,
        }
    }

    /// View with two dims swapped.
    pub fn transpose(&self, a: usize, b: usize) -> Result<Tensor> {
        if a >= self.rank() || b >= self.rank() {
            return Err(shape_err!("transpose({a},{b}) on rank {}", self.rank()));
        }
        let mut t = self.clone();
        t.shape.swap(a, b);
        t.strides.swap(a, b);
        Ok(t)
    }

    /// View with dims reordered: new dim i is old dim `perm[i]`.
    pub fn permute(&self, perm: &[usize]) -> Result<Tensor> {
        if perm.len() != self.rank() {
            return Err(shape_err!("permute {perm:?} on rank {}", self.rank()));
        }
        let mut seen = vec![false; perm.len()];
        for &p in perm {
            if p >= perm.len() || seen[p] {
                return Err(shape_err!("permute {perm:?} is not a permutation"));
            }
            seen[p] = true;
        }
        let mut t = self.clone();
        t.shape = perm.iter().map(|&p| self.shape[p]).collect();
        t.strides = perm.iter().map(|&p| self.strides[p]).collect();
        Ok(t)
    }

    // ----- copies and conversions ---------------------------------------------------------

    /// Host bytes of the whole storage (host tensors only).
    fn host_bytes(&self) -> Option<&[u8]> {
        match &*self.storage {
            Storage::F32(v) => Some(bytemuck::cast_slice(v)),
            Storage::BF16(v) => Some(bytemuck::cast_slice(v)),
            Storage::F16(v) => Some(bytemuck::cast_slice(v)),
            Storage::I8(v) => Some(bytemuck::cast_slice(v)),
            Storage::Mapped {
                backing,
                start,
                len,
            } => Some(&backing.bytes()[*start..*start + *len]),
            Storage::Cuda(_) => None,
        }
    }

    /// Visits element offsets of a strided tensor in row-major order.
    fn for_each_offset(&self, mut f: impl FnMut(usize)) {
        let n = self.elem_count();
        if n == 0 {
            return;
        }
        if self.is_contiguous() {
            for i in 0..n {
                f(self.offset + i);
            }
            return;
        }
        let r = self.rank();
        let mut idx = vec![0usize; r];
        for _ in 0..n {
            let off: usize = self.offset
                + idx
                    .iter()
                    .zip(&self.strides)
                    .map(|(i, s)| i * s)
                    .sum::<usize>();
            f(off);
            for d in (0..r).rev() {
                idx[d] += 1;
                if idx[d] < self.shape[d] {
                    break;
                }
                idx[d] = 0;
            }
        }
    }

    /// All elements as f32, row-major (copies from the device if needed).
    pub fn to_vec_f32(&self) -> Result<Vec<f32>> {
        if self.device.is_cuda() {
            return self.to_device(&Device::Cpu)?.to_vec_f32();
        }
        if let (true, Storage::F32(v)) = (self.is_contiguous(), &*self.storage) {
            return Ok(v[self.offset..self.offset + self.elem_count()].to_vec());
        }
        let bytes = self.host_bytes().unwrap();
        let es = self.dtype.size();
        let mut out = Vec::with_capacity(self.elem_count());
        self.for_each_offset(|o| {
            out.extend(f32_from_bytes(self.dtype, &bytes[o * es..(o + 1) * es]))
        });
        Ok(out)
    }

    /// Host f32 data without a copy when possible (host tensors; the CPU reference path).
    pub fn cpu_f32(&self) -> Result<Cow<'_, [f32]>> {
        if let (true, Storage::F32(v), false) =
            (self.is_contiguous(), &*self.storage, self.device.is_cuda())
        {
            return Ok(Cow::Borrowed(
                &v[self.offset..self.offset + self.elem_count()],
            ));
        }
        Ok(Cow::Owned(self.to_vec_f32()?))
    }

    /// Raw little-endian bytes of the elements, row-major (copies from device if needed).
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        if let Device::Cuda(g) = &self.device {
            let t = if self.is_contiguous() {
                self.clone()
            } else {
                self.contiguous()?
            };
            let mut out = vec![0u8; t.size_bytes()];
            if !out.is_empty() {
                g.bind()?;
                // SAFETY: `t` is contiguous with t.size_bytes() == out.len() bytes on g; the stream is
                // synchronised right after, before `out` is read or dropped.
                unsafe { cu::memcpy_dtoh_async(&mut out[..], t.dev_ptr()?, g.stream())? };
                g.compute.synchronize()?;
            }
            return Ok(out);
        }
        let bytes = self.host_bytes().unwrap();
        let es = self.dtype.size();
        if self.is_contiguous() {
            return Ok(bytes[self.offset * es..(self.offset + self.elem_count()) * es].to_vec());
        }
        let mut out = Vec::with_capacity(self.size_bytes());
        self.for_each_offset(|o| out.extend_from_slice(&bytes[o * es..(o + 1) * es]));
        Ok(out)
    }

    /// A contiguous copy (or the same tensor if already contiguous).
    pub fn contiguous(&self) -> Result<Tensor> {
        if self.is_contiguous() {
            return Ok(self.clone());
        }
        match &self.device {
            Device::Cpu => {
                let bytes = self.to_bytes()?;
                Self::host_from_bytes(&bytes, self.dtype, &self.shape)
            }
            Device::Cuda(_) => crate::runtime::copy::contiguous(self),
        }
    }

    pub(crate) fn host_from_bytes(bytes: &[u8], dtype: DType, shape: &[usize]) -> Result<Tensor> {
        let st = match dtype {
            DType::F32 => Storage::F32(
                bytes
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            ),
            DType::BF16 => Storage::BF16(
                bytes
                    .chunks_exact(2)
                    .map(|c| bf16::from_bits(u16::from_le_bytes([c[0], c[1]])))
                    .collect(),
            ),
            DType::F16 => Storage::F16(
                bytes
                    .chunks_exact(2)
                    .map(|c| f16::from_bits(u16::from_le_bytes([c[0], c[1]])))
                    .collect(),
            ),
            DType::I8 => Storage::I8(bytes.iter().map(|&b| b as i8).collect()),
        };
        Ok(Self::from_storage(st, dtype, shape, Device::Cpu))
    }

    /// Copies the tensor to `device` (no-op if already there). The result is contiguous.
    pub fn to_device(&self, device: &Device) -> Result<Tensor> {
        if &self.device == device {
            return Ok(self.clone());
        }
        match device {
            Device::Cpu => {
                let bytes = self.to_bytes()?;
                Self::host_from_bytes(&bytes, self.dtype, &self.shape)
            }
            Device::Cuda(g) => {
                if self.device.is_cuda() {
                    return Err(Error::Other(
                        "copies between two GPUs are not supported".into(),
                    ));
                }
                let t = Self::empty(&self.shape, self.dtype, device)?;
                let n = self.size_bytes();
                if n > 0 {
                    let src: Cow<[u8]> = if self.is_contiguous() {
                        let es = self.dtype.size();
                        Cow::Borrowed(
                            &self.host_bytes().unwrap()[self.offset * es..self.offset * es + n],
                        )
                    } else {
                        Cow::Owned(self.to_bytes()?)
                    };
                    g.bind()?;
                    // SAFETY: `t` is a fresh contiguous buffer of src.len() bytes on g; `src` outlives the
                    // synchronisation right after.
                    // Pageable source: the driver stages it; the call returns once the source may be reused.
                    unsafe { cu::memcpy_htod_async(t.dev_ptr()?, &src[..], g.stream())? };
                    g.compute.synchronize()?;
                }
                Ok(t)
            }
        }
    }

    /// Converts to `dtype` (same device). On the CPU through f32; on the GPU with the cast kernel.
    pub fn to_dtype(&self, dtype: DType) -> Result<Tensor> {
        if dtype == self.dtype {
            return Ok(self.clone());
        }
        match &self.device {
            Device::Cpu => {
                let v = self.to_vec_f32()?;
                let st = match dtype {
                    DType::F32 => Storage::F32(v),
                    DType::BF16 => Storage::BF16(v.iter().map(|&x| bf16::from_f32(x)).collect()),
                    DType::F16 => Storage::F16(v.iter().map(|&x| f16::from_f32(x)).collect()),
                    DType::I8 => {
                        return Err(Error::Other("use ops::quant to make INT8 weights".into()))
                    }
                };
                Ok(Self::from_storage(st, dtype, &self.shape, Device::Cpu))
            }
            Device::Cuda(_) => crate::runtime::cast::cast(self, dtype),
        }
    }

    /// Copies `src` (same shape, dtype and device) into this tensor's memory.
    pub fn copy_from(&self, src: &Tensor) -> Result<()> {
        if src.shape != self.shape || src.dtype != self.dtype {
            return Err(shape_err!(
                "copy_from {:?} {} into {:?} {}",
                src.shape,
                src.dtype.name(),
                self.shape,
                self.dtype.name()
            ));
        }
        match (&self.device, &src.device) {
            (Device::Cuda(g), Device::Cuda(_)) if self.is_contiguous() && src.is_contiguous() => {
                if self.size_bytes() > 0 {
                    // SAFETY: both tensors are contiguous device memory of size_bytes() bytes (same shape and
                    // dtype, checked above); the copy is stream-ordered with the work that uses them.
                    unsafe {
                        cu::memcpy_dtod_async(
                            self.dev_ptr()?,
                            src.dev_ptr()?,
                            self.size_bytes(),
                            g.stream(),
                        )?
                    };
                }
                Ok(())
            }
            _ => Err(Error::Other(
                "copy_from: only contiguous device-to-device copies are supported".into(),
            )),
        }
    }
}
