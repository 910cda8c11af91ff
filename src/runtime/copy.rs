//! Strided copies on the GPU: making a view contiguous, and writing into a view (concat).
//! Host tensors are handled by [`Tensor`] itself. Kernel: kernels/ops.cu (`copy_nd`).
//!
//! Every copy is planned on the host ([`plan`]): unit dims are dropped and adjacent dims that
//! are contiguous on both sides are merged (a narrow of the rows of a [B, S, D] tensor becomes
//! a rank-2 copy of B runs of S*D elements), so the kernel decomposes as few dims as the copy
//! really has (rank <= 8 after merging, any rank before). When the innermost dim is dense on
//! both sides and the pointers and strides allow, the element is widened up to 16 bytes (a
//! contiguous run moves as 16-byte loads and stores). Below 2^31 elements and offsets the
//! kernel runs 32-bit index math with the division magic of [`FastDiv`] (no 64-bit division
//! per element); larger copies take the 64-bit path.
//!
//! [`copy_stats`] counts the launches and bytes of this thread (tests prove that a code path
//! makes no copy, e.g. the MMDiT block's attention outputs).
use std::cell::Cell;

use crate::error::{Error, Result};
use crate::runtime::kernels::{CopyNd, CopyNdArgs, DevPtr, DevPtrMut, LaunchCfg};
use crate::runtime::Tensor;
use crate::shape_err;

/// Most dims the kernel takes after merging.
pub const MAX_RANK: usize = 8;

/// Launches and bytes of `copy_nd` on one thread.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CopyStats {
    pub launches: u64,
    pub bytes: u64,
}

thread_local! {
    static STATS: Cell<CopyStats> = const { Cell::new(CopyStats { launches: 0, bytes: 0 }) };
}

/// The `copy_nd` launches (and bytes copied) this thread has made since it started. Launches
/// are made on the calling thread, so a test reads the difference around the code it checks.
pub fn copy_stats() -> CopyStats {
    STATS.with(|s| s.get())
}

/// Division by `d` (1 <= d < 2^31) of any x < 2^31 as `(umulhi(x, mul) + x) >> shr`
/// (Granlund and Montgomery, "Division by invariant integers using multiplication", fig. 4.1
/// with the (N+1)-bit sum, which fits 32 bits because x < 2^31).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FastDiv {
    pub mul: u32,
    pub shr: u32,
}

impl FastDiv {
    pub fn new(d: u32) -> FastDiv {
        assert!(
            (1..1 << 31).contains(&d),
            "FastDiv: divisor {d} out of range"
        );
        let l = 32 - (d - 1).leading_zeros(); // ceil(log2 d)
        let mul = (((1u64 << 32) * ((1u64 << l) - d as u64)) / d as u64 + 1) as u32;
        FastDiv { mul, shr: l }
    }
    /// The kernel's arithmetic (x < 2^31).
    pub fn quotient(self, x: u32) -> u32 {
        debug_assert!(x < (1 << 31));
        ((((x as u64 * self.mul as u64) >> 32) as u32) + x) >> self.shr
    }
}

/// One copy as the kernel runs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CopyPlan {
    /// Element size in bytes (the dtype's, or widened: 1, 2, 4, 8, 16).
    pub esize: usize,
    /// Dims after merging (row-major), and the strides in elements of `esize`.
    pub shape: Vec<usize>,
    pub src_strides: Vec<usize>,
    pub dst_strides: Vec<usize>,
    /// 64-bit index math (elements or an offset at or beyond 2^31).
    pub wide: bool,
}

impl CopyPlan {
    pub fn elems(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Drops unit dims and merges dim i into i+1 where both sides are contiguous across them.
fn merge(shape: &[usize], ss: &[usize], ds: &[usize]) -> (Vec<usize>, Vec<usize>, Vec<usize>) {
    let (mut sh, mut s, mut d) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..shape.len() {
        if shape[i] == 1 {
            continue;
        }
        if let Some(k) = sh.len().checked_sub(1) {
            if s[k] == ss[i] * shape[i] && d[k] == ds[i] * shape[i] {
                sh[k] *= shape[i];
                s[k] = ss[i];
                d[k] = ds[i];
                continue;
            }
        }
        sh.push(shape[i]);
        s.push(ss[i]);
        d.push(ds[i]);
    }
    if sh.is_empty() {
        // One element.
        return (vec![1], vec![1], vec![1]);
    }
    (sh, s, d)
}

/// Plans the copy of `shape` (non-empty) from strides `ss` at byte address `src` to strides
/// `ds` at `dst`, elements of `esize` bytes.
pub fn plan(
    shape: &[usize],
    ss: &[usize],
    ds: &[usize],
    esize: usize,
    src: u64,
    dst: u64,
) -> CopyPlan {
    let (mut sh, mut s, mut d) = merge(shape, ss, ds);
    let mut esize = esize;
    // Widen: the innermost dim dense on both sides, its length, every outer stride and both
    // addresses divisible by the factor.
    let r = sh.len();
    if s[r - 1] == 1 && d[r - 1] == 1 {
        for wide_bytes in [16usize, 8, 4, 2] {
            if wide_bytes <= esize || wide_bytes % esize != 0 {
                continue;
            }
            let f = wide_bytes / esize;
            let fits = sh[r - 1] % f == 0
                && (0..r - 1).all(|i| s[i] % f == 0 && d[i] % f == 0)
                && src % wide_bytes as u64 == 0
                && dst % wide_bytes as u64 == 0;
            if fits {
                sh[r - 1] /= f;
                for i in 0..r - 1 {
                    s[i] /= f;
                    d[i] /= f;
                }
                esize = wide_bytes;
                (sh, s, d) = merge(&sh, &s, &d);
                break;
            }
        }
    }
    let n: usize = sh.iter().product();
    let max_off = |st: &[usize]| -> u128 {
        sh.iter()
            .zip(st)
            .map(|(&n, &s)| (n as u128 - 1) * s as u128)
            .sum()
    };
    let limit = 1u128 << 31;
    let wide = n as u128 >= limit || max_off(&s) >= limit || max_off(&d) >= limit;
    CopyPlan {
        esize,
        shape: sh,
        src_strides: s,
        dst_strides: d,
        wide,
    }
}

/// A dense copy of `t` (device tensors; host tensors use `Tensor::contiguous`).
pub fn contiguous(t: &Tensor) -> Result<Tensor> {
    if t.is_contiguous() {
        return Ok(t.clone());
    }
    if !t.device().is_cuda() {
        return t.contiguous();
    }
    let y = Tensor::empty(t.shape(), t.dtype(), t.device())?;
    copy_into(t, &y)?;
    Ok(y)
}

/// Copies `src` into the (possibly strided) view `dst` of the same shape and dtype, on the GPU.
pub fn copy_into(src: &Tensor, dst: &Tensor) -> Result<()> {
    if src.shape() != dst.shape() || src.dtype() != dst.dtype() {
        return Err(shape_err!(
            "copy: {:?} {} into {:?} {}",
            src.shape(),
            src.dtype().name(),
            dst.shape(),
            dst.dtype().name()
        ));
    }
    let gpu = match (src.device().gpu(), dst.device().gpu()) {
        (Some(g), Some(_)) if src.device() == dst.device() => g,
        _ => {
            return Err(Error::Other(
                "copy_into: both tensors must be on the same GPU".into(),
            ))
        }
    };
    let n = src.elem_count();
    if n == 0 {
        return Ok(());
    }
    let (sp, dp) = (src.dev_ptr()?, dst.dev_ptr()?);
    let p = plan(
        src.shape(),
        src.strides(),
        dst.strides(),
        src.dtype().size(),
        sp,
        dp,
    );
    if p.shape.len() > MAX_RANK {
        return Err(shape_err!(
            "copy: {:?} has {} dims that cannot be merged, more than {MAX_RANK}",
            src.shape(),
            p.shape.len()
        ));
    }
    let (mut shape, mut ss, mut ds) = ([1i64; MAX_RANK], [0i64; MAX_RANK], [0i64; MAX_RANK]);
    let (mut mul, mut shr) = ([0u32; MAX_RANK], [0u32; MAX_RANK]);
    for i in 0..p.shape.len() {
        shape[i] = p.shape[i] as i64;
        ss[i] = p.src_strides[i] as i64;
        ds[i] = p.dst_strides[i] as i64;
        if !p.wide {
            let f = FastDiv::new(p.shape[i] as u32);
            (mul[i], shr[i]) = (f.mul, f.shr);
        }
    }
    let elems = p.elems();
    let args = CopyNdArgs {
        src: DevPtr::of(src)?,
        dst: DevPtrMut::of(dst)?,
        n: elems as i64,
        esize: p.esize as i32,
        rank: p.shape.len() as i32,
        wide: p.wide as i32,
        shape,
        src_strides: ss,
        dst_strides: ds,
        mul,
        shr,
    };
    STATS.with(|s| {
        let mut v = s.get();
        v.launches += 1;
        v.bytes += (n * src.dtype().size()) as u64;
        s.set(v)
    });
    // SAFETY: both tensors are views of their own storage with this shape and their strides;
    // the plan visits the same index space (merged dims, widened elements only where the
    // addresses and strides are multiples of the wider element), so every offset lies inside
    // them; the narrow path is taken only when the element count and every offset are below
    // 2^31 (and the grid-stride launch keeps index + stride below 2^32). Both tensors are on
    // this GPU (checked above). A dst that overlaps src is the caller's to avoid, as for any
    // copy.
    unsafe { CopyNd::KERNEL.launch(gpu, LaunchCfg::grid_stride(elems), args) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_division_is_exact() {
        let mut s = 0x1234_5678_9abc_def0u64;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        let mut ds: Vec<u32> = (1..=300).collect();
        ds.extend([
            (1 << 31) - 1,
            (1 << 30) + 1,
            1 << 30,
            641,
            6700417,
            65535,
            65537,
            3 * 5 * 7 * 11 * 13,
        ]);
        ds.extend((0..200).map(|_| (next() % ((1 << 31) - 1)) as u32 + 1));
        for d in ds {
            let f = FastDiv::new(d);
            let mut xs: Vec<u32> = vec![0, 1, d - 1, d, (1 << 31) - 1, (1 << 31) - 2];
            xs.extend(
                [d.saturating_mul(2), d.saturating_mul(3).wrapping_sub(1)]
                    .into_iter()
                    .filter(|&x| x < (1 << 31)),
            );
            xs.extend((0..200).map(|_| (next() % (1 << 31)) as u32));
            for x in xs {
                assert_eq!(
                    f.quotient(x),
                    x / d,
                    "{x} / {d} (mul {}, shr {})",
                    f.mul,
                    f.shr
                );
            }
        }
    }

    #[test]
    fn merges_unit_and_contiguous_dims() {
        // The video rows of a [2, 10, 8] tensor holding [video 6; text 4] rows: two runs.
        let p = plan(&[2, 6, 8], &[80, 8, 1], &[48, 8, 1], 2, 0, 0);
        assert_eq!(p.shape, [2, 6]);
        assert_eq!(
            (p.src_strides.clone(), p.dst_strides.clone()),
            (vec![10, 1], vec![6, 1])
        );
        assert_eq!(p.esize, 16);
        assert!(!p.wide);
        // Fully contiguous: one dim, widened.
        let p = plan(&[1, 3, 1, 4], &[12, 4, 4, 1], &[12, 4, 4, 1], 4, 64, 128);
        assert_eq!((p.shape.clone(), p.esize), (vec![3], 16));
        // A transpose keeps both dims and its element size.
        let p = plan(&[3, 5], &[1, 3], &[5, 1], 2, 0, 0);
        assert_eq!((p.shape.clone(), p.esize), (vec![3, 5], 2));
        assert_eq!(
            (p.src_strides.clone(), p.dst_strides.clone()),
            (vec![1, 3], vec![5, 1])
        );
        // Misaligned addresses: no widening (2-byte elements at a 2-byte offset).
        let p = plan(&[4, 8], &[16, 1], &[8, 1], 2, 2, 0);
        assert_eq!((p.shape.clone(), p.esize), (vec![4, 8], 2));
        // An odd inner length widens by what divides it: 6 bf16 = 3 x 4 bytes.
        let p = plan(&[5, 6], &[8, 1], &[6, 1], 2, 0, 0);
        assert_eq!((p.shape.clone(), p.esize), (vec![5, 3], 4));
        assert_eq!(
            (p.src_strides.clone(), p.dst_strides.clone()),
            (vec![4, 1], vec![3, 1])
        );
        // A single element.
        let p = plan(&[1, 1], &[1, 1], &[1, 1], 1, 1, 3);
        assert_eq!((p.shape.clone(), p.esize), (vec![1], 1));
        // Rank 10 with mergeable dims runs as rank <= 8.
        let shape = [2, 1, 3, 1, 2, 2, 1, 2, 2, 3];
        let dense = crate::runtime::tensor::contiguous_strides(&shape);
        let mut perm_s = dense.clone();
        perm_s.swap(0, 2); // not a real permutation's strides, only a non-mergeable pattern
        let p = plan(&shape, &perm_s, &dense, 4, 0, 0);
        assert!(p.shape.len() <= MAX_RANK, "{p:?}");
        assert_eq!(p.elems() * p.esize, shape.iter().product::<usize>() * 4);
    }

    #[test]
    fn large_copies_take_the_64_bit_path() {
        // 2^31 elements.
        let p = plan(&[2, 1 << 30], &[1 << 30, 1], &[1 << 30, 1], 1, 1, 1);
        assert!(p.wide, "{p:?}");
        // Just below: 2^31 - 1 one-byte elements, dense (misaligned, so not widened).
        let p = plan(&[(1 << 31) - 1], &[1], &[1], 1, 1, 1);
        assert!(!p.wide, "{p:?}");
        // Few elements but a source offset of 2^31 (a strided view of a huge tensor).
        let p = plan(&[3, 2], &[1 << 30, 1], &[2, 1], 2, 2, 2);
        assert!(p.wide, "{p:?}");
        // Widening brings a large contiguous copy below the limit: 2^32 bytes as 16-byte
        // elements (2^28), the narrow path.
        let p = plan(&[1 << 31], &[1], &[1], 2, 0, 0);
        assert_eq!((p.esize, p.elems(), p.wide), (16, 1 << 28, false));
        // Destination offsets alone decide too.
        let p = plan(&[4, 3], &[3, 1], &[1 << 30, 1], 4, 4, 4);
        assert!(p.wide, "{p:?}");
    }

    /// The kernel's index arithmetic on the host (both paths): every element of a strided view
    /// lands where the plain rank-n loop puts it.
    #[test]
    fn plans_visit_every_element_once() {
        fn run(shape: &[usize], ss: &[usize], ds: &[usize], esize: usize, so: u64, dof: u64) {
            let p = plan(shape, ss, ds, esize, so, dof);
            let n: usize = shape.iter().product();
            // Reference byte map: dst byte -> src byte.
            let mut want = std::collections::BTreeMap::new();
            for i in 0..n {
                let (mut x, mut s, mut d) = (i, 0, 0);
                for k in (0..shape.len()).rev() {
                    let idx = x % shape[k];
                    x /= shape[k];
                    s += idx * ss[k];
                    d += idx * ds[k];
                }
                for e in 0..esize {
                    want.insert(d * esize + e, s * esize + e);
                }
            }
            let mut got = std::collections::BTreeMap::new();
            let divs: Vec<FastDiv> = p.shape.iter().map(|&d| FastDiv::new(d as u32)).collect();
            for i in 0..p.elems() {
                let (mut x, mut s, mut d) = (i as u32, 0usize, 0usize);
                for k in (1..p.shape.len()).rev() {
                    let q = divs[k].quotient(x);
                    let idx = (x - q * p.shape[k] as u32) as usize;
                    s += idx * p.src_strides[k];
                    d += idx * p.dst_strides[k];
                    x = q;
                }
                s += x as usize * p.src_strides[0];
                d += x as usize * p.dst_strides[0];
                for e in 0..p.esize {
                    assert!(
                        got.insert(d * p.esize + e, s * p.esize + e).is_none(),
                        "{shape:?}: a destination byte written twice"
                    );
                }
            }
            assert_eq!(got, want, "{shape:?} {ss:?} {ds:?} -> {p:?}");
        }
        // Ranks 1..6, odd sizes, permutations, narrows, widening and not.
        run(&[7], &[3], &[1], 2, 0, 0);
        run(&[5, 3], &[1, 5], &[3, 1], 4, 0, 0);
        run(&[2, 3, 8], &[48, 8, 1], &[24, 8, 1], 2, 0, 0);
        run(&[2, 5, 3, 4], &[60, 1, 20, 5], &[60, 12, 4, 1], 1, 0, 0);
        run(
            &[3, 1, 4, 2, 5],
            &[40, 40, 10, 5, 1],
            &[40, 40, 10, 5, 1],
            2,
            6,
            0,
        );
        run(
            &[2, 3, 2, 3, 2, 5],
            &[180, 1, 90, 3, 45, 9],
            &[180, 60, 30, 10, 5, 1],
            2,
            0,
            0,
        );
        run(&[2, 6, 16], &[160, 16, 1], &[96, 16, 1], 2, 32, 64);
    }
}
