//! Tolerances of the GPU kernels against the f32 CPU reference, in one place. The tests take
//! them from here so that a kernel change that loses precision fails everywhere at once.
use crate::runtime::DType;

/// `(atol, rtol)` for an op whose output is stored in `dtype` after a reduction of `k` terms
/// (k = 1 for elementwise ops). bf16 has an 8-bit significand: one rounding of the output is
/// 2^-9 relative; accumulation in f32 adds about sqrt(k) * 2^-24.
pub fn for_dtype(dtype: DType, k: usize) -> (f32, f32) {
    let acc = (k.max(1) as f32).sqrt() * 6e-8;
    match dtype {
        DType::F32 => (1e-5 + acc * 4.0, 1e-5),
        DType::F16 => (1e-3 + acc, 1e-3),
        DType::BF16 => (8e-3 + acc, 8e-3),
        DType::I8 => (0.0, 0.0),
    }
}

/// Per-element bounds for the adaLN modulation `y = n * (1 + scale) + shift` (n = LN(x)) against
/// the f32 reference, when the kernel rounds like the PyTorch reference in a 16-bit dtype:
/// `T(T(T(n) * T(1 + scale)) + shift)`. Four roundings of unit roundoff u (2^-8 for bf16, 2^-11
/// for f16): three act on the product, whose size is `|y - shift|`, one on `|y|`. With
/// cancellation (`|y|` much smaller than the product) this is far above `for_dtype`'s bound.
/// `want` and `shift` are the f32 reference output and the shift broadcast to its shape.
pub fn adaln_bounds(dtype: DType, want: &[f32], shift: &[f32], k: usize) -> Vec<f32> {
    let (atol, rtol) = for_dtype(dtype, k);
    let u = match dtype {
        DType::BF16 => 2f32.powi(-8),
        DType::F16 => 2f32.powi(-11),
        _ => 0.0,
    };
    want.iter()
        .zip(shift)
        .map(|(&y, &sh)| atol + rtol * y.abs() + u * (3.0 * (y - sh).abs() + y.abs()))
        .collect()
}

/// Whether `got` is within `bound[i]` of `want[i]` everywhere; returns the worst element.
pub fn check_bounds(got: &[f32], want: &[f32], bound: &[f32]) -> Result<(), String> {
    if got.len() != want.len() || got.len() != bound.len() {
        return Err(format!(
            "length {} vs {} vs {}",
            got.len(),
            want.len(),
            bound.len()
        ));
    }
    let mut worst: Option<(usize, f32)> = None;
    for (i, ((&g, &w), &b)) in got.iter().zip(want).zip(bound).enumerate() {
        let err = (g - w).abs();
        #[allow(clippy::neg_cmp_op_on_partial_ord)]
        if !(err <= b) {
            let excess = if err.is_nan() { f32::INFINITY } else { err - b };
            if worst.is_none_or(|(_, e)| excess > e) {
                worst = Some((i, excess));
            }
        }
    }
    match worst {
        None => Ok(()),
        Some((i, _)) => Err(format!(
            "element {i}: got {} want {} (bound {})",
            got[i], want[i], bound[i]
        )),
    }
}

/// Whether `got` is within `(atol, rtol)` of `want` everywhere; returns the worst element.
pub fn check(got: &[f32], want: &[f32], atol: f32, rtol: f32) -> Result<(), String> {
    if got.len() != want.len() {
        return Err(format!("length {} vs {}", got.len(), want.len()));
    }
    let mut worst: Option<(usize, f32)> = None;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g - w).abs();
        let bound = atol + rtol * w.abs();
        // Written negated on purpose: a NaN on either side fails the check.
        #[allow(clippy::neg_cmp_op_on_partial_ord)]
        let out_of_bounds = !(err <= bound);
        if out_of_bounds {
            let excess = if err.is_nan() {
                f32::INFINITY
            } else {
                err - bound
            };
            if worst.is_none_or(|(_, e)| excess > e) {
                worst = Some((i, excess));
            }
        }
    }
    match worst {
        None => Ok(()),
        Some((i, _)) => Err(format!(
            "element {i}: got {} want {} (atol {atol}, rtol {rtol})",
            got[i], want[i]
        )),
    }
}
