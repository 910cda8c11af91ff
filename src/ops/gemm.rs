//! Dense GEMM: `y = act(x W^T + b)` through cuBLASLt on the GPU (bf16 or f32 operands, f32
//! accumulation, bias and tanh-GELU fused in the epilogue), with a plain threaded f32 CPU
//! reference beside it. INT8 weights go to [`crate::ops::quant::linear_int8`].
use std::ffi::{c_int, c_void};

use crate::runtime::blaslt as lt;

use crate::error::{Error, Result};
use crate::ops::{common_gpu, flat_rows, host, par_rows};
use crate::runtime::{DType, Gpu, Linear, Tensor, Weight};
use crate::shape_err;

/// Activation fused after the bias.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Act {
    #[default]
    None,
    Silu,
    /// GELU, tanh approximation (diffusers `gelu-approximate`, T5 `gelu_new`).
    GeluTanh,
    /// Exact GELU with erf (OpenCLIP-bigG `gelu`).
    GeluErf,
    /// `x * sigmoid(1.702 x)` (CLIP-L).
    QuickGelu,
}

impl Act {
    /// The f32 reference of the activation.
    #[inline]
    pub fn apply(self, x: f32) -> f32 {
        match self {
            Act::None => x,
            Act::Silu => x / (1.0 + (-x).exp()),
            Act::GeluTanh => {
                let c = 0.797_884_6_f32; // sqrt(2/pi)
                0.5 * x * (1.0 + (c * (x + 0.044715 * x * x * x)).tanh())
            }
            Act::GeluErf => 0.5 * x * (1.0 + libm::erff(x * std::f32::consts::FRAC_1_SQRT_2)),
            Act::QuickGelu => x / (1.0 + (-1.702 * x).exp()),
        }
    }
    /// The code the kernels use (kernels/common.cuh `act_apply`).
    pub fn code(self) -> i32 {
        match self {
            Act::None => 0,
            Act::Silu => 1,
            Act::GeluTanh => 2,
            Act::GeluErf => 3,
            Act::QuickGelu => 4,
        }
    }
}

/// `x W^T + b`: x [.., K], W [N, K] (PyTorch layout) -> [.., N].
pub fn linear(x: &Tensor, l: &Linear) -> Result<Tensor> {
    linear_act(x, l, Act::None)
}

/// `act(x W^T + b)`: x [.., K] (last dim dense, rows may be strided) -> [.., N] contiguous.
pub fn linear_act(x: &Tensor, l: &Linear, act: Act) -> Result<Tensor> {
    let xs = x.shape();
    let (n, k) = (l.out_features(), l.in_features());
    if xs.is_empty() || xs[xs.len() - 1] != k {
        return Err(shape_err!(
            "linear: input {xs:?} does not end in {k} (weight {:?})",
            l.weight.shape()
        ));
    }
    if let Some(b) = &l.bias {
        if b.shape() != [n] {
            return Err(shape_err!(
                "linear: bias {:?} does not match weight {:?}",
                b.shape(),
                l.weight.shape()
            ));
        }
    }
    let rows: usize = xs[..xs.len() - 1].iter().product();
    super::trace::record(
        super::trace::OpClass::Gemm,
        2.0 * rows as f64 * n as f64 * k as f64,
    );
    let w = match &l.weight {
        Weight::Dense(w) => w,
        Weight::Int8 { q, scale } => {
            return crate::ops::quant::linear_int8(x, q, scale, l.bias.as_ref(), act)
        }
    };
    let m: usize = xs[..xs.len() - 1].iter().product();
    let mut out_shape = xs.to_vec();
    *out_shape.last_mut().unwrap() = n;
    let mut ts = vec![x, w];
    if let Some(b) = &l.bias {
        ts.push(b);
    }
    match common_gpu("linear", &ts)? {
        None => {
            let xv = x.cpu_f32()?;
            let wv = w.cpu_f32()?;
            let bv = match &l.bias {
                Some(b) => Some(b.cpu_f32()?),
                None => None,
            };
            let y = linear_cpu(&xv, &wv, bv.as_deref(), m, k, n, act);
            host(y, &out_shape)
        }
        Some(gpu) => {
            // Rows of x may be strided: flatten all but the last dim when the layout allows it.
            let x2 = flat_rows(x)?;
            let lda = x2.row_stride()?;
            // W [N, K] with ld >= K (a size-1 N may carry any stride).
            let w2 = flat_rows(w)?;
            let y = Tensor::empty(&out_shape, x.dtype(), x.device())?;
            let fused = matches!(act, Act::None | Act::GeluTanh);
            gemm_cuda(
                gpu,
                GemmCall {
                    m,
                    n,
                    k,
                    a: x2.dev_ptr()?,
                    lda,
                    w: w2.dev_ptr()?,
                    ldw: w2.row_stride()?,
                    w_transposed: true,
                    y: y.dev_ptr()?,
                    bias: match &l.bias {
                        Some(b) => Some((b.dev_ptr()?, b.dtype())),
                        None => None,
                    },
                    gelu: act == Act::GeluTanh,
                    batch: 1,
                    stride_a: 0,
                    stride_w: 0,
                    stride_y: 0,
                    dtype: x.dtype(),
                    w_dtype: w.dtype(),
                },
            )?;
            if !fused {
                return crate::ops::act::apply(&y, act);
            }
            Ok(y)
        }
    }
}

/// Batched matmul: a [B?, M, K] x b [B?, K, N] -> [B?, M, N]. `b` may be a transposed view
/// ([B, N, K] data with swapped strides), which the GPU path uses without a copy.
pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (ash, bsh) = (a.shape(), b.shape());
    let r = ash.len();
    if !(r == 2 || r == 3)
        || bsh.len() != r
        || ash[r - 1] != bsh[r - 2]
        || (r == 3 && ash[0] != bsh[0])
    {
        return Err(shape_err!(
            "matmul: shapes {ash:?} x {bsh:?} do not match ([B,M,K] x [B,K,N])"
        ));
    }
    let batch = if r == 3 { ash[0] } else { 1 };
    let (m, k, n) = (ash[r - 2], ash[r - 1], bsh[r - 1]);
    let out_shape: Vec<usize> = if r == 3 {
        vec![batch, m, n]
    } else {
        vec![m, n]
    };
    match common_gpu("matmul", &[a, b])? {
        None => {
            let av = a.cpu_f32()?;
            // b^T as [B, N, K] rows so the inner loop is a dense dot product.
            let bt = if r == 3 {
                b.transpose(1, 2)?
            } else {
                b.transpose(0, 1)?
            };
            let btv = bt.to_vec_f32()?;
            let mut y = vec![0f32; batch * m * n];
            for bi in 0..batch {
                let yb = linear_cpu(
                    &av[bi * m * k..(bi + 1) * m * k],
                    &btv[bi * n * k..(bi + 1) * n * k],
                    None,
                    m,
                    k,
                    n,
                    Act::None,
                );
                y[bi * m * n..(bi + 1) * m * n].copy_from_slice(&yb);
            }
            host(y, &out_shape)
        }
        Some(gpu) => {
            if a.dtype() != b.dtype() {
                return Err(Error::Other(format!(
                    "matmul: dtypes {} and {} differ",
                    a.dtype().name(),
                    b.dtype().name()
                )));
            }
            let a = if a.is_contiguous() {
                a.clone()
            } else {
                a.contiguous()?
            };
            // b as stored: row-major [K, N] (plain) or [N, K] (a transposed view).
            let bs = b.strides();
            let (b, w_transposed) = if b.is_contiguous() {
                (b.clone(), false)
            } else if bs[r - 2] == 1 && bs[r - 1] == k && (r == 2 || bs[0] == n * k) {
                (b.clone(), true)
            } else {
                (b.contiguous()?, false)
            };
            let y = Tensor::empty(&out_shape, a.dtype(), a.device())?;
            gemm_cuda(
                gpu,
                GemmCall {
                    m,
                    n,
                    k,
                    a: a.dev_ptr()?,
                    lda: k,
                    w: b.dev_ptr()?,
                    ldw: if w_transposed { k } else { n },
                    w_transposed,
                    y: y.dev_ptr()?,
                    bias: None,
                    gelu: false,
                    batch,
                    stride_a: m * k,
                    stride_w: n * k,
                    stride_y: m * n,
                    dtype: a.dtype(),
                    w_dtype: b.dtype(),
                },
            )?;
            Ok(y)
        }
    }
}

/// CPU reference: `y[m, n] = act(sum_k x[m, k] w[n, k] + b[n])`, f32, threaded over rows.
pub fn linear_cpu(
    x: &[f32],
    w: &[f32],
    b: Option<&[f32]>,
    m: usize,
    k: usize,
    n: usize,
    act: Act,
) -> Vec<f32> {
    assert_eq!(x.len(), m * k);
    assert_eq!(w.len(), n * k);
    let mut y = vec![0f32; m * n];
    if n == 0 {
        return y;
    }
    par_rows(&mut y, n, |row0, out| {
        let rows = out.len() / n;
        // Block over 4 rows of x and the columns so a block of W stays in cache.
        const NB: usize = 64;
        for nb in (0..n).step_by(NB) {
            let ne = (nb + NB).min(n);
            let mut r = 0;
            while r < rows {
                let rr = (rows - r).min(4);
                for j in nb..ne {
                    let wr = &w[j * k..(j + 1) * k];
                    for q in 0..rr {
                        let xr = &x[(row0 + r + q) * k..(row0 + r + q + 1) * k];
                        out[(r + q) * n + j] = dot(xr, wr);
                    }
                }
                r += rr;
            }
        }
        for (i, v) in out.iter_mut().enumerate() {
            let j = i % n;
            let z = *v + b.map_or(0.0, |b| b[j]);
            *v = act.apply(z);
        }
    });
    y
}

/// f32 dot product with 8 independent accumulators (vectorises).
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let ca = a.chunks_exact(8);
    let cb = b.chunks_exact(8);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

// ----- cuBLASLt -------------------------------------------------------------------------------

const WORKSPACE: usize = 32 << 20;

struct GemmCall {
    m: usize,
    n: usize,
    k: usize,
    /// x: row-major [M, K], row stride `lda`.
    a: u64,
    lda: usize,
    /// W: row-major [N, K] (`w_transposed`, PyTorch linear layout) or [K, N], row stride `ldw`.
    w: u64,
    ldw: usize,
    w_transposed: bool,
    /// y: row-major [M, N], dense.
    y: u64,
    bias: Option<(u64, DType)>,
    gelu: bool,
    batch: usize,
    stride_a: usize,
    stride_w: usize,
    stride_y: usize,
    dtype: DType,
    w_dtype: DType,
}

/// A cuBLASLt status as an error (0 is success).
fn check(what: &str, status: lt::Status) -> Result<()> {
    if status == 0 {
        Ok(())
    } else {
        Err(Error::Cuda(format!("cuBLASLt {what}: status {status}")))
    }
}

fn cuda_type(d: DType) -> Result<c_int> {
    Ok(match d {
        DType::F32 => lt::CUDA_R_32F,
        DType::BF16 => lt::CUDA_R_16BF,
        DType::F16 => lt::CUDA_R_16F,
        DType::I8 => {
            return Err(Error::Other(
                "cuBLASLt GEMM: i8 operands go through ops::quant".into(),
            ))
        }
    })
}

/// Whether cuBLASLt can be loaded.
pub fn cublaslt_available() -> bool {
    lt::lib().is_ok()
}

/// Row-major `Y = X op(W) (+ bias) (gelu)` expressed column-major: `Y^T [N, M] = op(W)^T X^T`,
/// i.e. A = W (col-major [K, N] with ld, transposed when W is [N, K]), B = X (col-major [K, M]).
fn gemm_cuda(gpu: &Gpu, c: GemmCall) -> Result<()> {
    if c.m == 0 || c.n == 0 {
        return Ok(());
    }
    if c.dtype != c.w_dtype {
        return Err(Error::Other(format!(
            "linear: activation dtype {} and weight dtype {} differ",
            c.dtype.name(),
            c.w_dtype.name()
        )));
    }
    let lib = lt::lib().map_err(Error::Cuda)?;
    gpu.bind()?;
    let mut guard = gpu.blas.lock().unwrap();
    if guard.is_none() {
        *guard = Some(blas_state(gpu, lib)?);
    }
    let blas = guard.as_ref().unwrap();
    let ty = cuda_type(c.dtype)?;
    // SAFETY: every descriptor is created here and destroyed by its guard; the pointers passed
    // to cublasLtMatmul are device buffers of the sizes the layouts describe (the callers check
    // shapes), and the matmul is queued on the compute stream like every kernel.
    unsafe {
        let mut desc: lt::MatmulDesc = std::ptr::null_mut();
        check(
            "matmul desc",
            (lib.desc_create)(&mut desc, lt::COMPUTE_32F, lt::CUDA_R_32F),
        )?;
        let _cleanup_desc = Guard(move || {
            (lib.desc_destroy)(desc);
        });
        set_matmul_desc(lib, desc, &c)?;
        // A = W: stored row-major with row stride ldw = col-major with ld ldw.
        let (a_rows, a_cols) = if c.w_transposed {
            (c.k, c.n)
        } else {
            (c.n, c.k)
        };
        let la = layout(lib, ty, a_rows, a_cols, c.ldw, c.batch, c.stride_w)?;
        let _cla = Guard(move || {
            (lib.layout_destroy)(la);
        });
        let lb = layout(lib, ty, c.k, c.m, c.lda, c.batch, c.stride_a)?;
        let _clb = Guard(move || {
            (lib.layout_destroy)(lb);
        });
        let ly = layout(lib, ty, c.n, c.m, c.n, c.batch, c.stride_y)?;
        let _cly = Guard(move || {
            (lib.layout_destroy)(ly);
        });
        let heur = pick_algo(lib, blas.handle, desc, [la, lb, ly], &c)?;
        let alpha = 1f32;
        let beta = 0f32;
        check(
            "matmul",
            (lib.matmul)(
                blas.handle,
                desc,
                &alpha as *const f32 as *const c_void,
                c.w as *const c_void,
                la,
                c.a as *const c_void,
                lb,
                &beta as *const f32 as *const c_void,
                c.y as *const c_void,
                ly,
                c.y as *mut c_void,
                ly,
                &heur.algo,
                blas.workspace.ptr() as *mut c_void,
                WORKSPACE,
                gpu.stream() as *mut c_void,
            ),
        )?;
    }
    Ok(())
}

/// The device's cuBLASLt handle and workspace, made on its first GEMM.
fn blas_state(gpu: &Gpu, lib: &'static lt::Lib) -> Result<lt::BlasLt> {
    let mut handle: lt::Handle = std::ptr::null_mut();
    // SAFETY: out-pointer to a live handle slot.
    check("create handle", unsafe { (lib.create)(&mut handle) })?;
    let workspace = gpu.alloc(WORKSPACE)?;
    Ok(lt::BlasLt {
        lib,
        handle,
        workspace,
    })
}

/// The matmul descriptor's attributes for `c`: op(W) (transposed or not), X as is, and the
/// epilogue (bias pointer and type, GELU).
///
/// # Safety
/// `desc` is a live matmul descriptor; `c.bias` (if any) points to device memory that outlives
/// the matmul.
unsafe fn set_matmul_desc(lib: &lt::Lib, desc: lt::MatmulDesc, c: &GemmCall) -> Result<()> {
    // cublasOperation_t: CUBLAS_OP_N = 0, CUBLAS_OP_T = 1 (a 32-bit enum).
    let op_t: i32 = 1;
    let op_n: i32 = 0;
    let ta = if c.w_transposed { op_t } else { op_n };
    set_desc(lib, desc, "transa", lt::DESC_TRANSA, &ta)?;
    set_desc(lib, desc, "transb", lt::DESC_TRANSB, &op_n)?;
    let epi = match (c.bias.is_some(), c.gelu) {
        (false, false) => lt::EPILOGUE_DEFAULT,
        (true, false) => lt::EPILOGUE_BIAS,
        (false, true) => lt::EPILOGUE_GELU,
        (true, true) => lt::EPILOGUE_GELU_BIAS,
    };
    set_desc(lib, desc, "epilogue", lt::DESC_EPILOGUE, &epi)?;
    if let Some((bp, bdt)) = c.bias {
        let bptr = bp as *const c_void;
        set_desc(lib, desc, "bias pointer", lt::DESC_BIAS_POINTER, &bptr)?;
        let bty = cuda_type(bdt)?;
        set_desc(lib, desc, "bias type", lt::DESC_BIAS_DATA_TYPE, &bty)?;
    }
    Ok(())
}

/// cuBLASLt's first heuristic choice for the matmul `desc` over the layouts [A, B, Y] (Y also
/// the C input), within WORKSPACE bytes; an error naming the GEMM when it has none.
///
/// # Safety
/// `handle`, `desc` and the layouts are live cuBLASLt objects.
unsafe fn pick_algo(
    lib: &lt::Lib,
    handle: lt::Handle,
    desc: lt::MatmulDesc,
    [la, lb, ly]: [lt::Layout; 3],
    c: &GemmCall,
) -> Result<lt::HeuristicResult> {
    let mut pref: lt::Preference = std::ptr::null_mut();
    check("preference", (lib.pref_create)(&mut pref))?;
    let _cp = Guard(move || {
        (lib.pref_destroy)(pref);
    });
    let ws = WORKSPACE;
    check(
        "workspace preference",
        (lib.pref_set)(
            pref,
            lt::PREF_MAX_WORKSPACE_BYTES,
            &ws as *const usize as *const c_void,
            std::mem::size_of::<usize>(),
        ),
    )?;
    let mut heur: lt::HeuristicResult = std::mem::zeroed();
    let mut found: c_int = 0;
    let st = (lib.heuristic)(handle, desc, la, lb, ly, ly, pref, 1, &mut heur, &mut found);
    if st != 0 || found < 1 {
        return Err(Error::Cuda(format!(
            "cuBLASLt ({}) has no algorithm for a {} GEMM m={} n={} k={} (lda {}, ldw {}): status {st}",
            lib.path,
            c.dtype.name(),
            c.m,
            c.n,
            c.k,
            c.lda,
            c.ldw
        )));
    }
    Ok(heur)
}

struct Guard<F: FnMut()>(F);
impl<F: FnMut()> Drop for Guard<F> {
    fn drop(&mut self) {
        (self.0)()
    }
}

/// # Safety
/// `desc` is live and `T` is the attribute's type.
unsafe fn set_desc<T>(
    lib: &lt::Lib,
    desc: lt::MatmulDesc,
    what: &str,
    attr: c_int,
    v: &T,
) -> Result<()> {
    check(
        what,
        (lib.desc_set)(
            desc,
            attr,
            v as *const T as *const c_void,
            std::mem::size_of::<T>(),
        ),
    )
}

/// # Safety
/// Creates a layout the caller destroys.
unsafe fn layout(
    lib: &lt::Lib,
    ty: c_int,
    rows: usize,
    cols: usize,
    ld: usize,
    batch: usize,
    stride: usize,
) -> Result<lt::Layout> {
    let mut l: lt::Layout = std::ptr::null_mut();
    check(
        "layout",
        (lib.layout_create)(&mut l, ty, rows as u64, cols as u64, ld as i64),
    )?;
    if batch > 1 {
        let b = batch as i32;
        let s = stride as i64;
        let r = check(
            "batch count",
            (lib.layout_set)(
                l,
                lt::LAYOUT_BATCH_COUNT,
                &b as *const i32 as *const c_void,
                4,
            ),
        )
        .and_then(|_| {
            check(
                "batch stride",
                (lib.layout_set)(
                    l,
                    lt::LAYOUT_STRIDED_BATCH_OFFSET,
                    &s as *const i64 as *const c_void,
                    8,
                ),
            )
        });
        if let Err(e) = r {
            (lib.layout_destroy)(l);
            return Err(e);
        }
    }
    Ok(l)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_cpu_matches_naive() {
        let (m, k, n) = (7, 37, 13);
        let x: Vec<f32> = (0..m * k)
            .map(|i| ((i * 7919) % 97) as f32 / 50.0 - 1.0)
            .collect();
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 104729) % 89) as f32 / 45.0 - 1.0)
            .collect();
        let b: Vec<f32> = (0..n).map(|i| i as f32 * 0.1).collect();
        let y = linear_cpu(&x, &w, Some(&b), m, k, n, Act::Silu);
        for i in 0..m {
            for j in 0..n {
                let mut s = 0f64;
                for q in 0..k {
                    s += x[i * k + q] as f64 * w[j * k + q] as f64;
                }
                let z = (s + b[j] as f64) as f32;
                let want = z / (1.0 + (-z).exp());
                assert!(
                    (y[i * n + j] - want).abs() < 1e-4,
                    "{i},{j}: {} vs {want}",
                    y[i * n + j]
                );
            }
        }
    }

    #[test]
    fn activations() {
        assert!((Act::GeluErf.apply(1.0) - 0.841_344_7).abs() < 1e-6);
        assert!((Act::GeluTanh.apply(1.0) - 0.841_192).abs() < 1e-5);
        assert!((Act::QuickGelu.apply(1.0) - 1.0 / (1.0 + (-1.702f32).exp())).abs() < 1e-7);
        assert!((Act::Silu.apply(-2.0) - (-2.0 / (1.0 + 2f32.exp()))).abs() < 1e-7);
    }
}
