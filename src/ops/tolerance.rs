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

/// The element that exceeds its bound `bound(i, want[i])` by the most (a NaN on either side
/// exceeds every bound), or `None`.
fn worst(got: &[f32], want: &[f32], bound: impl Fn(usize, f32) -> f32) -> Option<usize> {
    let mut worst: Option<(usize, f32)> = None;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g - w).abs();
        let b = bound(i, w);
        // Written negated on purpose: a NaN on either side fails the check.
        #[allow(clippy::neg_cmp_op_on_partial_ord)]
        if !(err <= b) {
            let excess = if err.is_nan() { f32::INFINITY } else { err - b };
            if worst.is_none_or(|(_, e)| excess > e) {
                worst = Some((i, excess));
            }
        }
    }
    worst.map(|(i, _)| i)
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
    match worst(got, want, |i, _| bound[i]) {
        None => Ok(()),
        Some(i) => Err(format!(
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
    match worst(got, want, |_, w| atol + rtol * w.abs()) {
        None => Ok(()),
        Some(i) => Err(format!(
            "element {i}: got {} want {} (atol {atol}, rtol {rtol})",
            got[i], want[i]
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_fail_on_nan_and_name_the_worst_element() {
        assert!(check(&[1.0, 2.0], &[1.0, 2.05], 0.1, 0.0).is_ok());
        let e = check(&[1.0, 2.0, 3.0], &[1.2, 2.5, 3.0], 0.1, 0.0).unwrap_err();
        assert!(e.starts_with("element 1:"), "{e}");
        assert!(check(&[f32::NAN], &[0.0], 1.0, 1.0).is_err());
        assert!(check(&[0.0], &[f32::NAN], 1.0, 1.0).is_err());
        assert!(check_bounds(&[1.0, 5.0], &[1.0, 4.0], &[0.0, 2.0]).is_ok());
        let e = check_bounds(&[1.0, 5.0], &[1.5, 4.0], &[0.1, 2.0]).unwrap_err();
        assert!(e.starts_with("element 0:"), "{e}");
        assert!(check_bounds(&[1.0], &[1.0, 2.0], &[1.0]).is_err());
        // adaLN: the product's size widens the bound under cancellation.
        let b = adaln_bounds(DType::BF16, &[0.01], &[-3.99], 1);
        assert!(b[0] > 0.04, "{b:?}");
        assert_eq!(
            adaln_bounds(DType::F32, &[0.01], &[-3.99], 1)[0],
            for_dtype(DType::F32, 1).0 + 1e-5 * 0.01
        );
    }
}
