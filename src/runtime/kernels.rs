//! Typed kernel launchers: one declaration per CUDA kernel signature of kernels/*.cu, and the
//! only way to queue a kernel.
//!
//! Each entry of the [`kernels!`] table below declares
//!
//! * a handle type (`Activation`) with one constant per kernel name that shares the signature
//!   (`Activation::F32`, `Activation::BF16`, `Activation::F16` for a kernel instantiated per dtype, chosen at run
//!   time with `Activation::for_dtype`; `CopyNd::KERNEL` for a single kernel), and
//! * an argument struct (`ActivationArgs`) whose fields are the kernel's parameters in order, with
//!   types that say what each one is: [`DevPtr`] (a `const T*`), [`DevPtrMut`] (a `T*`), `i32`
//!   (`int`), `u32` (`unsigned`), `i64` (`long long`), `f32` (`float`), arrays of those for
//!   runs of parameters, [`SegArgs`] for attention's `SEG_ARGS`, [`TmaDesc`] for a
//!   `const __grid_constant__ TmaDesc` (a CUtensorMap passed by value, kernels/hopper.cuh).
//!
//! `Activation::F32.launch(gpu, cfg, ActivationArgs { x, y, n, code })` pushes the fields in declaration
//! order into slots (8 bytes each; a [`TmaDesc`] is one 128-byte, 64-byte aligned slot) and
//! queues the kernel on the compute stream. A missing, extra or
//! mistyped argument, or a pointer where a scalar goes, does not compile; fields are named at
//! the call site, so two arguments cannot be swapped silently. tests/kernel_signatures.rs
//! parses every `extern "C" __global__` kernel of kernels/*.cu (macros expanded) and checks
//! that every kernel has exactly one declaration here with the same parameters in the same
//! order: kind (const/mutable pointer, int, unsigned, long long, float) and, for a field that
//! is one parameter, name (case and `_` aside); and that the PTX image's entry points agree.
//!
//! # Safety of a launch
//! [`DevPtr`] and [`DevPtrMut`] are made from a `&Tensor` on the GPU (or null where the kernel
//! takes an optional input) and borrow it for the duration of the launch call. That is all the
//! lifetime a launch needs: pool memory is stream-ordered on the compute stream (see
//! [`crate::runtime::memory`]), so a tensor dropped right after the launch is only handed out
//! again to work queued behind the kernel. What the types cannot see is the extent of each
//! buffer: the scalar arguments tell the kernel how many elements it reads and writes. So
//! `launch` stays `unsafe`, and its one obligation is: **every pointer covers every element
//! the kernel addresses for the scalar arguments given (the extents are in each declaration's
//! doc), all tensors are on `gpu`, and a kernel's output does not overlap its inputs unless
//! its declaration says it may**. Every call site states why that holds in a `// SAFETY:`
//! comment.
use std::marker::PhantomData;

use std::ffi::c_void;

use cudarc::driver::sys;

use crate::error::{Error, Result};
use crate::runtime::{DType, Gpu, Tensor};

/// Grid, block and dynamic shared memory of one launch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaunchCfg {
    pub grid: (u32, u32, u32),
    pub block: (u32, u32, u32),
    /// Dynamic shared memory in bytes (the static part is the kernel's own).
    pub smem: u32,
}

impl LaunchCfg {
    pub fn new(grid: (u32, u32, u32), block: (u32, u32, u32), smem: u32) -> LaunchCfg {
        LaunchCfg { grid, block, smem }
    }

    /// A 1-D grid-stride launch over `n` elements: 256-thread blocks, at most 65,535 x 8 of
    /// them (the kernels loop grid-stride, so any `n` is covered); empty when `n == 0`.
    pub fn grid_stride(n: usize) -> LaunchCfg {
        let blocks = n.div_ceil(256).min(65535 * 8) as u32;
        LaunchCfg::new((blocks, 1, 1), (256, 1, 1), 0)
    }

    /// Whether the grid has no block (such a launch queues nothing).
    pub fn is_empty(&self) -> bool {
        self.grid.0 == 0 || self.grid.1 == 0 || self.grid.2 == 0
    }
}

/// A device pointer the kernel only reads (`const T*`), borrowed from a tensor for `'a`.
#[derive(Clone, Copy, Debug)]
pub struct DevPtr<'a>(u64, PhantomData<&'a Tensor>);

impl<'a> DevPtr<'a> {
    /// The null pointer, for an optional input the kernel tests before reading.
    pub const NULL: DevPtr<'a> = DevPtr(0, PhantomData);

    /// The address of `t`'s first element (its view offset included); an error for a host
    /// tensor.
    pub fn of(t: &'a Tensor) -> Result<DevPtr<'a>> {
        Ok(DevPtr(t.dev_ptr()?, PhantomData))
    }

    /// [`DevPtr::of`], or null for `None`.
    pub fn opt(t: Option<&'a Tensor>) -> Result<DevPtr<'a>> {
        t.map_or(Ok(DevPtr::NULL), DevPtr::of)
    }

    pub fn addr(self) -> u64 {
        self.0
    }
}

/// A device pointer the kernel writes (`T*`), borrowed from a tensor for `'a`.
#[derive(Clone, Copy, Debug)]
pub struct DevPtrMut<'a>(u64, PhantomData<&'a Tensor>);

impl<'a> DevPtrMut<'a> {
    /// The address of `t`'s first element (its view offset included); an error for a host
    /// tensor. Device tensors are written through shared references: their storage is device
    /// memory that the host never aliases.
    pub fn of(t: &'a Tensor) -> Result<DevPtrMut<'a>> {
        Ok(DevPtrMut(t.dev_ptr()?, PhantomData))
    }

    pub fn addr(self) -> u64 {
        self.0
    }
}

/// What one kernel parameter is, as tests/kernel_signatures.rs compares it with the CUDA
/// source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamKind {
    /// `const T*`
    ConstPtr,
    /// `T*`
    MutPtr,
    /// `int`
    I32,
    /// `unsigned`
    U32,
    /// `long long`
    I64,
    /// `float`
    F32,
    /// `const __grid_constant__ TmaDesc` (128 bytes by value)
    TmaDesc,
}

/// One kernel parameter as the Rust declaration has it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParamDesc {
    /// The field of the argument struct that fills it.
    pub field: &'static str,
    /// Whether the field is this one parameter (its name must be the CUDA parameter's), or a
    /// part of an array / [`SegArgs`] field that fills several.
    pub whole: bool,
    pub kind: ParamKind,
}

/// One parameter's storage: a scalar or pointer in 8 bytes (little-endian: a pointer to the
/// slot is a pointer to the value, whatever its size), or a tensor map (128 bytes, boxed so
/// that its 64-byte alignment holds).
enum Slot {
    Word(u64),
    Map(Box<sys::CUtensorMap>),
}

/// Argument slots of one launch, one per kernel parameter. Only this module fills them.
pub struct Slots(Vec<Slot>);

impl Slots {
    fn new() -> Slots {
        Slots(Vec::with_capacity(32))
    }

    fn word(&mut self, v: u64) {
        self.0.push(Slot::Word(v));
    }

    /// The pointer array cuLaunchKernel takes: one pointer to each parameter's value. Valid
    /// while `self` is neither moved nor dropped (the boxed maps and the vector's words do not
    /// move while it is borrowed).
    fn param_ptrs(&mut self) -> Vec<*mut c_void> {
        self.0
            .iter_mut()
            .map(|s| match s {
                Slot::Word(v) => v as *mut u64 as *mut c_void,
                Slot::Map(m) => &mut **m as *mut sys::CUtensorMap as *mut c_void,
            })
            .collect()
    }

    #[cfg(test)]
    fn words(&self) -> Vec<u64> {
        self.0
            .iter()
            .map(|s| match s {
                Slot::Word(v) => *v,
                Slot::Map(m) => m.opaque[0],
            })
            .collect()
    }
}

mod sealed {
    pub trait Sealed {}
}

/// A value that can be passed to a kernel: pointers, the scalar types of the kernels'
/// parameter lists, arrays of them, [`SegArgs`]. Sealed: the list is this module's.
pub trait KernelArg: sealed::Sealed {
    /// Appends this value's slots.
    fn push(&self, slots: &mut Slots);
    /// Appends the description of every slot this type fills, for field `field` (`whole`:
    /// the field is nothing but this value).
    fn kinds(field: &'static str, whole: bool, out: &mut Vec<ParamDesc>);
}

macro_rules! scalar_arg {
    ($t:ty, $kind:ident, |$v:ident| $slot:expr) => {
        impl sealed::Sealed for $t {}
        impl KernelArg for $t {
            fn push(&self, slots: &mut Slots) {
                let $v = *self;
                slots.word($slot);
            }
            fn kinds(field: &'static str, whole: bool, out: &mut Vec<ParamDesc>) {
                out.push(ParamDesc {
                    field,
                    whole,
                    kind: ParamKind::$kind,
                });
            }
        }
    };
}
scalar_arg!(i32, I32, |v| v as u32 as u64);
scalar_arg!(u32, U32, |v| v as u64);
scalar_arg!(i64, I64, |v| v as u64);
scalar_arg!(f32, F32, |v| v.to_bits() as u64);
scalar_arg!(DevPtr<'_>, ConstPtr, |v| v.0);
scalar_arg!(DevPtrMut<'_>, MutPtr, |v| v.0);

impl<T: KernelArg, const N: usize> sealed::Sealed for [T; N] {}
impl<T: KernelArg, const N: usize> KernelArg for [T; N] {
    fn push(&self, slots: &mut Slots) {
        for v in self {
            v.push(slots);
        }
    }
    fn kinds(field: &'static str, _whole: bool, out: &mut Vec<ParamDesc>) {
        for _ in 0..N {
            T::kinds(field, false, out);
        }
    }
}

/// A CUtensorMap (made by cuTensorMapEncodeTiled, see `ops::attention_hopper`) passed by value
/// to a `const __grid_constant__ TmaDesc` parameter (kernels/hopper.cuh). It holds a global
/// address: the tensor it describes must outlive the launch like any pointer argument, which
/// the launcher's `// SAFETY:` states (the map does not borrow it).
#[derive(Clone, Copy, Debug)]
pub struct TmaDesc(pub sys::CUtensorMap);

impl TmaDesc {
    /// The tensor map of a rank-3 bf16 tensor at device address `addr` with `dims` (innermost
    /// first, elements) and the byte strides of dims 1 and 2, read in boxes of `box_dims`
    /// elements, SWIZZLE_128B in shared memory, out-of-bounds elements zero-filled, 128-byte
    /// L2 promotion (cuTensorMapEncodeTiled). An error (a shape error naming `what`) for what
    /// the driver rejects: the address must be 16-byte aligned, the strides multiples of 16
    /// below 2^40, every dim in [1, 2^32], every box dim in [1, 256] with box_dims[0] x 2 bytes
    /// a multiple of 16 and at most 128 (the swizzle span).
    pub fn tiled_bf16_3d(
        what: &str,
        addr: u64,
        dims: [u64; 3],
        strides: [u64; 2],
        box_dims: [u32; 3],
    ) -> Result<TmaDesc> {
        let bad = |why: String| {
            Err(crate::shape_err!(
                "{what}: no tensor map for address {addr:#x} dims {dims:?} strides {strides:?} \
                 box {box_dims:?}: {why}"
            ))
        };
        // The driver's rules, checked first so that the error says which one.
        if addr % 16 != 0 {
            return bad("the address is not 16-byte aligned".into());
        }
        if let Some(s) = strides.iter().find(|s| **s % 16 != 0 || **s >= 1 << 40) {
            return bad(format!("stride {s} is not a multiple of 16 below 2^40"));
        }
        if dims.iter().any(|d| *d == 0 || *d > 1 << 32) {
            return bad("a dim is 0 or above 2^32".into());
        }
        if box_dims.iter().any(|b| *b == 0 || *b > 256)
            || (box_dims[0] * 2) % 16 != 0
            || box_dims[0] * 2 > 128
        {
            return bad("the box does not fit the 128-byte swizzle".into());
        }
        let mut map = sys::CUtensorMap { opaque: [0; 16] };
        let elem_strides = [1u32; 3];
        // SAFETY: every pointer is to a live local array of the length the rank (3) implies
        // (strides: rank - 1); `map` is a writable 64-byte aligned CUtensorMap. The call only
        // encodes: it reads no device memory.
        let rc = unsafe {
            sys::cuTensorMapEncodeTiled(
                &mut map,
                sys::CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_BFLOAT16,
                3,
                addr as *mut c_void,
                dims.as_ptr(),
                strides.as_ptr(),
                box_dims.as_ptr(),
                elem_strides.as_ptr(),
                sys::CUtensorMapInterleave::CU_TENSOR_MAP_INTERLEAVE_NONE,
                sys::CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_128B,
                sys::CUtensorMapL2promotion::CU_TENSOR_MAP_L2_PROMOTION_L2_128B,
                sys::CUtensorMapFloatOOBfill::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
            )
        };
        if rc != sys::CUresult::CUDA_SUCCESS {
            return bad(format!("cuTensorMapEncodeTiled returned {rc:?}"));
        }
        Ok(TmaDesc(map))
    }
}

impl sealed::Sealed for TmaDesc {}
impl KernelArg for TmaDesc {
    fn push(&self, slots: &mut Slots) {
        slots.0.push(Slot::Map(Box::new(self.0)));
    }
    fn kinds(field: &'static str, whole: bool, out: &mut Vec<ParamDesc>) {
        out.push(ParamDesc {
            field,
            whole,
            kind: ParamKind::TmaDesc,
        });
    }
}

/// Segments per side the attention kernels take (`SEG_ARGS` in kernels/attention.cu).
pub const SEGMENTS: usize = 4;

/// One side (q, k or v) of the attention kernels, `SEG_ARGS(X)` in kernels/attention.cu:
/// 4 base pointers, 4 lengths (rows), 4 row strides and 4 batch strides (elements). Unused
/// entries have length 0 (their pointer is never dereferenced).
#[derive(Clone, Copy, Debug)]
pub struct SegArgs<'a> {
    pub ptrs: [DevPtr<'a>; SEGMENTS],
    pub lens: [i32; SEGMENTS],
    pub row_strides: [i64; SEGMENTS],
    pub batch_strides: [i64; SEGMENTS],
}

impl sealed::Sealed for SegArgs<'_> {}
impl KernelArg for SegArgs<'_> {
    fn push(&self, slots: &mut Slots) {
        self.ptrs.push(slots);
        self.lens.push(slots);
        self.row_strides.push(slots);
        self.batch_strides.push(slots);
    }
    fn kinds(field: &'static str, _whole: bool, out: &mut Vec<ParamDesc>) {
        <[DevPtr; SEGMENTS]>::kinds(field, false, out);
        <[i32; SEGMENTS]>::kinds(field, false, out);
        <[i64; SEGMENTS]>::kinds(field, false, out);
        <[i64; SEGMENTS]>::kinds(field, false, out);
    }
}

/// The outputs of the attention kernels, `OUT_ARGS(X)` in kernels/attn_out.cuh: one per query
/// segment (query segment i's rows go to output i), 4 base pointers, 4 row strides and 4 batch
/// strides (elements). Entries of unused query segments are never dereferenced.
#[derive(Clone, Copy, Debug)]
pub struct OutSegArgs<'a> {
    pub ptrs: [DevPtrMut<'a>; SEGMENTS],
    pub row_strides: [i64; SEGMENTS],
    pub batch_strides: [i64; SEGMENTS],
}

impl sealed::Sealed for OutSegArgs<'_> {}
impl KernelArg for OutSegArgs<'_> {
    fn push(&self, slots: &mut Slots) {
        self.ptrs.push(slots);
        self.row_strides.push(slots);
        self.batch_strides.push(slots);
    }
    fn kinds(field: &'static str, _whole: bool, out: &mut Vec<ParamDesc>) {
        <[DevPtrMut; SEGMENTS]>::kinds(field, false, out);
        <[i64; SEGMENTS]>::kinds(field, false, out);
        <[i64; SEGMENTS]>::kinds(field, false, out);
    }
}

/// One declaration of the table, for tests/kernel_signatures.rs.
pub struct KernelDecl {
    /// The handle type's name, e.g. "Activation".
    pub rust: &'static str,
    /// The module (kernels/<module>.cu).
    pub module: &'static str,
    /// The kernels that share the signature.
    pub names: &'static [&'static str],
    /// One entry per kernel parameter, in order.
    pub params: fn() -> Vec<ParamDesc>,
}

macro_rules! kernel_names {
    ($K:ident, dtype $base:literal) => {
        impl $K {
            pub const F32: $K = $K(concat!($base, "_f32"));
            pub const BF16: $K = $K(concat!($base, "_bf16"));
            pub const F16: $K = $K(concat!($base, "_f16"));
            pub const NAMES: &'static [&'static str] = &[
                concat!($base, "_f32"),
                concat!($base, "_bf16"),
                concat!($base, "_f16"),
            ];

            /// The instance for `dt`; an error naming `op` for a dtype the kernel has none for.
            pub fn for_dtype(op: &str, dt: DType) -> Result<$K> {
                match dt {
                    DType::F32 => Ok($K::F32),
                    DType::BF16 => Ok($K::BF16),
                    DType::F16 => Ok($K::F16),
                    d => Err(Error::Other(format!(
                        "{op}: dtype {} is not supported on the GPU",
                        d.name()
                    ))),
                }
            }
        }
    };
    ($K:ident, { $($V:ident = $name:literal),+ $(,)? }) => {
        impl $K {
            $(pub const $V: $K = $K($name);)+
            pub const NAMES: &'static [&'static str] = &[$($name),+];
        }
    };
    ($K:ident, $name:literal) => {
        impl $K {
            pub const KERNEL: $K = $K($name);
            pub const NAMES: &'static [&'static str] = &[$name];
        }
    };
}

macro_rules! kernels {
    ($(
        $(#[$doc:meta])*
        $K:ident / $A:ident<$lt:lifetime> = $module:literal :: [$($names:tt)+]
            ( $($arg:ident : $ty:ty),+ $(,)? );
    )+) => {
        $(
            $(#[$doc])*
            #[derive(Clone, Copy, Debug, PartialEq, Eq)]
            pub struct $K(&'static str);

            kernel_names!($K, $($names)+);

            impl $K {
                /// The module: kernels/<MODULE>.cu.
                pub const MODULE: &'static str = $module;

                /// The kernel's name in its module.
                pub fn name(self) -> &'static str {
                    self.0
                }

                /// Queues this kernel on `gpu`'s compute stream with `args` (nothing for an
                /// empty grid).
                ///
                /// # Safety
                /// Every pointer in `args` covers every element the kernel addresses for the
                /// scalar arguments given (see the declaration), all of them are memory of
                /// `gpu`, and outputs do not overlap inputs unless the declaration allows it.
                /// Lifetimes are not an obligation: see the module docs.
                pub unsafe fn launch(self, gpu: &Gpu, cfg: LaunchCfg, args: $A<'_>) -> Result<()> {
                    let mut slots = Slots::new();
                    $(KernelArg::push(&args.$arg, &mut slots);)+
                    // SAFETY: the slots are this kernel's parameter list in order (the
                    // declaration; tests/kernel_signatures.rs checks it against the source);
                    // the pointers are valid for the launch (they borrow live tensors, and pool
                    // memory is stream-ordered) and cover what the kernel addresses (this fn's
                    // contract).
                    unsafe { gpu.launch_slots($module, self.0, cfg, &mut slots.param_ptrs()) }
                }
            }

            #[doc = concat!("The parameters of [`", stringify!($K), "`], in kernel order.")]
            #[derive(Clone, Copy, Debug)]
            pub struct $A<$lt> {
                $(pub $arg: $ty,)+
            }

            impl<$lt> $A<$lt> {
                /// One entry per kernel parameter, in order.
                pub fn kinds() -> Vec<ParamDesc> {
                    let mut out = Vec::new();
                    $(<$ty as KernelArg>::kinds(stringify!($arg), true, &mut out);)+
                    out
                }
            }
        )+

        /// Every declaration, for tests/kernel_signatures.rs.
        pub const DECLS: &[KernelDecl] = &[$(
            KernelDecl {
                rust: stringify!($K),
                module: $module,
                names: $K::NAMES,
                params: <$A<'static>>::kinds,
            },
        )+];
    };
}

kernels! {
    // ----- kernels/ops.cu -------------------------------------------------------------------

    /// `y[i] = act(x[i])`, `i < n`; x, y hold n elements of the dtype. `code`: ops::gemm::Act.
    Activation / ActivationArgs<'a> = "ops" :: [dtype "act"]
        (x: DevPtr<'a>, y: DevPtrMut<'a>, n: i64, code: i32);

    /// Softmax of each of `rows` rows of `cols` elements; one block per row. x, y: rows x cols.
    SoftmaxLast / SoftmaxLastArgs<'a> = "ops" :: [dtype "softmax_last"]
        (x: DevPtr<'a>, y: DevPtrMut<'a>, rows: i32, cols: i32);

    /// LayerNorm over rows of `c`; one block per row. x, y: rows x c; w, b: c f32 or null.
    LayerNorm / LayerNormArgs<'a> = "ops" :: [dtype "layer_norm"]
        (x: DevPtr<'a>, y: DevPtrMut<'a>, w: DevPtr<'a>, b: DevPtr<'a>, rows: i32, c: i32, eps: f32);

    /// adaLN over x [B, s, c] (one block per row): shift, scale hold B rows of c at their
    /// row strides (`shl`, `scl`). y like x.
    LnModulate / LnModulateArgs<'a> = "ops" :: [dtype "ln_modulate"]
        (x: DevPtr<'a>, y: DevPtrMut<'a>, shift: DevPtr<'a>, shl: i64, scale: DevPtr<'a>,
         scl: i64, s: i32, c: i32, eps: f32);

    /// RMSNorm over rows of `c`; one block per row. x, y: rows x c; w: c f32 or null.
    RmsNorm / RmsNormArgs<'a> = "ops" :: [dtype "rms_norm"]
        (x: DevPtr<'a>, y: DevPtrMut<'a>, w: DevPtr<'a>, rows: i32, c: i32, eps: f32);

    /// Per-head RMSNorm of the q and k heads of a fused QKV output, in place: `rows` rows of x
    /// at row stride `ld` elements; `hq` heads of `hd` at column `q_col` (gain wq), `hk` heads
    /// at column `k_col` (gain wk); gains f32 [hd] or null. One warp per (row, head), 256
    /// threads a block: grid = ceil(rows (hq + hk) / 8).
    QkRmsNorm / QkRmsNormArgs<'a> = "ops" :: [dtype "qk_rms_norm"]
        (x: DevPtrMut<'a>, ld: i64, rows: i64, q_col: i32, hq: i32, wq: DevPtr<'a>, k_col: i32,
         hk: i32, wk: DevPtr<'a>, hd: i32, eps: f32);

    /// `y = alpha a + beta b` over n elements; b may be null. Elementwise: y may be a or b.
    Axpby / AxpbyArgs<'a> = "ops" :: [dtype "axpby"]
        (a: DevPtr<'a>, b: DevPtr<'a>, y: DevPtrMut<'a>, n: i64, alpha: f32, beta: f32);

    /// `y = a * b` over n elements. Elementwise: y may be a or b.
    Mul / MulArgs<'a> = "ops" :: [dtype "mul"]
        (a: DevPtr<'a>, b: DevPtr<'a>, y: DevPtrMut<'a>, n: i64);

    /// `y[i] = a[i] + b[i % period]`, `i < n`; a, y: n elements, b: period.
    AddBcast / AddBcastArgs<'a> = "ops" :: [dtype "add_bcast"]
        (a: DevPtr<'a>, b: DevPtr<'a>, y: DevPtrMut<'a>, n: i64, period: i64);

    /// `out = x + gate[b] * y` over n = B s c elements; gate: B rows of c at stride gate_ld.
    GatedResidual / GatedResidualArgs<'a> = "ops" :: [dtype "gated_residual"]
        (x: DevPtr<'a>, y: DevPtr<'a>, gate: DevPtr<'a>, gate_ld: i64, out: DevPtrMut<'a>,
         n: i64, s: i64, c: i64);

    /// Row `ids[r]` of `table` (rows of c) into row r of y; one block per id. Every id must be
    /// a row of the table.
    Embedding / EmbeddingArgs<'a> = "ops" :: [dtype "embedding"]
        (table: DevPtr<'a>, ids: DevPtr<'a>, y: DevPtrMut<'a>, c: i32);

    /// n elements converted from dtype code `sdt` to `ddt` (0 f32, 1 bf16, 2 f16).
    CastAny / CastAnyArgs<'a> = "ops" :: ["cast_any"]
        (x: DevPtr<'a>, y: DevPtrMut<'a>, n: i64, sdt: i32, ddt: i32);

    /// Strided copy of n elements of `esize` bytes (1, 2, 4, 8, 16): index space
    /// `shape[..rank]` (row-major), element strides `src_strides` / `dst_strides`; `wide` 0:
    /// 32-bit index math with the division magic `mul` / `shr` of every dim (n and every offset
    /// below 2^31), 1: 64-bit. Planned by `runtime::copy`.
    CopyNd / CopyNdArgs<'a> = "ops" :: ["copy_nd"]
        (src: DevPtr<'a>, dst: DevPtrMut<'a>, n: i64, esize: i32, rank: i32, wide: i32,
         shape: [i64; 8], src_strides: [i64; 8], dst_strides: [i64; 8], mul: [u32; 8],
         shr: [u32; 8]);

    // ----- kernels/attention.cu -------------------------------------------------------------

    /// FlashAttention-2 forward, bf16, head dim 64: q, k, v segments of B x len rows of h*64
    /// (16-byte aligned), `out` one output per query segment (B x len rows of h*64 at its
    /// strides), bias [sq, sk] f32 or null. Grid (sq / 128, h, B), 128 threads, 48 KiB dynamic
    /// shared memory.
    FlashAttnD64 / FlashAttnD64Args<'a> = "attention" :: ["flash_attn_fwd_d64"]
        (q: SegArgs<'a>, k: SegArgs<'a>, v: SegArgs<'a>, out: OutSegArgs<'a>, bias: DevPtr<'a>,
         h: i32, sq: i32, sk: i32, scale_log2: f32, causal: i32);

    /// Generic attention, head dim d <= 256, one warp per query row; shapes as
    /// [`FlashAttnD64`].
    AttnNaive / AttnNaiveArgs<'a> = "attention" :: [dtype "attn_naive"]
        (q: SegArgs<'a>, k: SegArgs<'a>, v: SegArgs<'a>, out: OutSegArgs<'a>, bias: DevPtr<'a>,
         h: i32, d: i32, sq: i32, sk: i32, scale: f32, causal: i32);

    // ----- kernels/attention_hopper.cu (sm_90a only) -----------------------------------------

    /// FlashAttention-3-style forward for Hopper (sm_90a), bf16, head dim 64, semantics of
    /// [`FlashAttnD64`]: `tq`, `tk`, `tv` are tensor maps of the q, k, v segments (rank 3
    /// {h*64, rows, B}, box {64, 128, 1}, SWIZZLE_128B; unused entries repeat the first), `qn`,
    /// `kn` their lengths (0: unused; v has k's), `out` one output per query segment as for
    /// [`FlashAttnD64`], bias [h, sq, sk] f32 or null. Grid (query tiles of 128 per segment, h, B), 384 threads,
    /// `attention_hopper::SMEM_BYTES` dynamic shared memory.
    FlashAttnHopper / FlashAttnHopperArgs<'a> = "attention_hopper" :: ["flash_attn_hopper_d64"]
        (tq: [TmaDesc; SEGMENTS], tk: [TmaDesc; SEGMENTS], tv: [TmaDesc; SEGMENTS],
         qn: [i32; SEGMENTS], kn: [i32; SEGMENTS], out: OutSegArgs<'a>, bias: DevPtr<'a>, h: i32,
         sq: i32, sk: i32, scale_log2: f32, causal: i32);

    // ----- kernels/conv3d.cu ----------------------------------------------------------------

    /// Implicit-GEMM 3-D convolution (`CONV_KERNEL_ARGS`), f32 activations: x [B, ci, t, hin,
    /// win], ctx (causal context frames) / bias / resid optional (null), y the output of
    /// `out_frames` frames from `out_t0`. w: f32 [co, ci, kt, kh, kw] for F32_SIMT; for BF16_MMA
    /// the bf16 [co_pad, k_pad] of conv_pack_weight_bf16 (76,800 B of dynamic shared memory).
    Conv3d / Conv3dArgs<'a> = "conv3d" :: [{ F32_SIMT = "conv_f32_simt", BF16_MMA = "conv_bf16_mma" }]
        (x: DevPtr<'a>, ctx: DevPtr<'a>, w: DevPtr<'a>, bias: DevPtr<'a>, resid: DevPtr<'a>,
         y: DevPtrMut<'a>, b: i32, ci: i32, co: i32, t: i32, hin: i32, win: i32, kt: i32,
         kh: i32, kw: i32, up: i32, interleave: i32, out_frames: i32, out_t0: i32,
         do_clamp: i32, lo: f32, hi: f32);

    /// f32 conv weight [co, ci * taps] -> bf16 [co_pad, k_pad], K tap-major, zero padded.
    ConvPackWeightBf16 / ConvPackWeightBf16Args<'a> = "conv3d" :: ["conv_pack_weight_bf16"]
        (w: DevPtr<'a>, out: DevPtrMut<'a>, co: i32, ci: i32, taps: i32, co_pad: i32,
         k_pad: i32);

    /// The next causal cache [B, c, nc, hw] from ctx [B, c, nc, hw] (or null: zeros) and
    /// x [B, c, t, hw].
    ConvCacheUpdate / ConvCacheUpdateArgs<'a> = "conv3d" :: ["conv_cache_update"]
        (ctx: DevPtr<'a>, x: DevPtr<'a>, out: DevPtrMut<'a>, b: i32, c: i32, t: i32, nc: i32,
         hw: i64);

    /// Nearest 2x: x [bct, h, w] -> y [bct, 2h, 2w], f32.
    UpsampleNearest2x / UpsampleNearest2xArgs<'a> = "conv3d" :: ["upsample_nearest2x_f32"]
        (x: DevPtr<'a>, y: DevPtrMut<'a>, bct: i64, h: i32, w: i32);

    /// x [b, 2c, t, hw] -> y [b, c, 2t, hw], f32.
    InterleaveTime / InterleaveTimeArgs<'a> = "conv3d" :: ["interleave_time_f32"]
        (x: DevPtr<'a>, y: DevPtrMut<'a>, b: i32, c: i32, t: i32, hw: i64);

    /// Channel RMS norm of x [b, c, n] (gamma: c), f32, SiLU after if `silu`.
    VaeChannelRmsNorm / VaeChannelRmsNormArgs<'a> = "conv3d" :: ["vae_channel_rms_norm_f32"]
        (x: DevPtr<'a>, gamma: DevPtr<'a>, y: DevPtrMut<'a>, b: i32, c: i32, n: i64, silu: i32);

    /// `y[yoff + i ysr + j ysc] = x[xoff + i xsr + j xsc]` for i < r, j < cc, f32.
    VaeCopy2d / VaeCopy2dArgs<'a> = "conv3d" :: ["vae_copy2d_f32"]
        (x: DevPtr<'a>, y: DevPtrMut<'a>, r: i64, cc: i64, xoff: i64, xsr: i64, xsc: i64,
         yoff: i64, ysr: i64, ysc: i64);

    /// In place: softmax over dim 0 of s [j, i], f32.
    VaeSoftmaxDim0 / VaeSoftmaxDim0Args<'a> = "conv3d" :: ["vae_softmax_dim0_f32"]
        (s: DevPtrMut<'a>, j: i32, i: i32);

    // ----- kernels/gemm_int8.cu -------------------------------------------------------------

    /// `w[r, c] = q[r, c] * s[r, c / (k / g)]`: q [n, k] i8, s [n, g] f32 (g groups of scales
    /// per row), w [n, k] of the dtype.
    DequantI8 / DequantI8Args<'a> = "gemm_int8" :: [dtype "dequant_i8"]
        (q: DevPtr<'a>, s: DevPtr<'a>, w: DevPtrMut<'a>, n: i64, k: i64, g: i64);

    /// W8A16 GEMM: y [m, n] = act(x [m, k] (rows at stride lda, 16-byte aligned) q^T scale +
    /// bias); q [n, k] i8 (8-byte aligned), scale [n, groups] f32, bias n f32 or null. MMA_*:
    /// tensor cores, grid (n / 128, m / 128), 256 threads, `w8a16_smem_bytes` dynamic shared
    /// memory (the GROUP_* kernels for groups > 1); GEMV_*: m <= 16 rows, one warp per column,
    /// grid n / 8.
    W8a16 / W8a16Args<'a> = "gemm_int8" :: [{
        MMA_BF16 = "w8a16_mma_bf16",
        MMA_F16 = "w8a16_mma_f16",
        MMA_GROUP_BF16 = "w8a16_mma_group_bf16",
        MMA_GROUP_F16 = "w8a16_mma_group_f16",
        GEMV_BF16 = "w8a16_gemv_bf16",
        GEMV_F16 = "w8a16_gemv_f16",
    }]
        (x: DevPtr<'a>, lda: i64, q: DevPtr<'a>, scale: DevPtr<'a>, groups: i32,
         bias: DevPtr<'a>, y: DevPtrMut<'a>, m: i32, n: i32, k: i32, act: i32);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_declaration_order_and_widths() {
        let mut s = Slots::new();
        let a = CastAnyArgs {
            x: DevPtr(0x1000, PhantomData),
            y: DevPtrMut(0x2000, PhantomData),
            n: -2,
            sdt: -1,
            ddt: 2,
        };
        KernelArg::push(&a.x, &mut s);
        KernelArg::push(&a.y, &mut s);
        KernelArg::push(&a.n, &mut s);
        KernelArg::push(&a.sdt, &mut s);
        KernelArg::push(&a.ddt, &mut s);
        KernelArg::push(&1.5f32, &mut s);
        assert_eq!(
            s.words(),
            vec![
                0x1000,
                0x2000,
                (-2i64) as u64,
                0xffff_ffff,
                2,
                1.5f32.to_bits() as u64
            ]
        );
        let kinds: Vec<ParamKind> = CopyNdArgs::kinds().into_iter().map(|k| k.kind).collect();
        assert_eq!(kinds.len(), 6 + 5 * 8);
        assert_eq!(
            &kinds[..4],
            &[
                ParamKind::ConstPtr,
                ParamKind::MutPtr,
                ParamKind::I64,
                ParamKind::I32
            ]
        );
        assert_eq!(FlashAttnD64Args::kinds().len(), 3 * 16 + 12 + 6);
    }

    #[test]
    fn grid_stride_config() {
        assert!(LaunchCfg::grid_stride(0).is_empty());
        assert_eq!(LaunchCfg::grid_stride(257).grid, (2, 1, 1));
        assert_eq!(LaunchCfg::grid_stride(usize::MAX / 2).grid.0, 65535 * 8);
        assert_eq!(
            Activation::for_dtype("t", DType::BF16).unwrap().name(),
            "act_bf16"
        );
        assert!(Activation::for_dtype("t", DType::I8).is_err());
    }
}
