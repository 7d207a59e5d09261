//! Plain f64 references: the oracle of the tests and of the harness's checks (the benches
//! time only; the tests vouch for what they time).
//! Written for clarity, not speed. Being oracles, they panic (with the mismatch named) on
//! operands whose shapes do not fit together, rather than return errors.

use crate::view::MatRef;

/// `α·A·B + β·C₀` in f64, returned row-major (m × n). When β = 0 or α = 0, the ignored operand
/// is not read, matching [`crate::gemm`]'s semantics.
pub fn gemm_f64(alpha: f32, a: MatRef<'_>, b: MatRef<'_>, beta: f32, c0: MatRef<'_>) -> Vec<f64> {
    let (m, n) = (a.rows(), b.cols());
    assert_eq!(a.cols(), b.rows(), "gemm_f64: A's columns vs B's rows");
    assert_eq!(
        (c0.rows(), c0.cols()),
        (m, n),
        "gemm_f64: C₀'s shape vs m × n"
    );
    let mut out = vec![0.0f64; m * n];
    for i in 0..m {
        for j in 0..n {
            let dot = if alpha != 0.0 {
                dot_f64(a, b, i, j).0
            } else {
                0.0
            };
            let prior = if beta == 0.0 {
                0.0
            } else {
                beta as f64 * c0.at(i, j) as f64
            };
            out[i * n + j] = alpha as f64 * dot + prior;
        }
    }
    out
}

/// Element (i, j) of A·B in f64, and `Σ_p |A[i,p]|·|B[p,j]|` (the scale of its rounding
/// error): for spot checks of products too large to recompute whole.
pub fn dot_f64(a: MatRef<'_>, b: MatRef<'_>, i: usize, j: usize) -> (f64, f64) {
    assert_eq!(a.cols(), b.rows(), "dot_f64: A's columns vs B's rows");
    (0..a.cols()).fold((0.0, 0.0), |(dot, abs), p| {
        let t = a.at(i, p) as f64 * b.at(p, j) as f64;
        (dot + t, abs + t.abs())
    })
}

/// `Σ_p |A[i,p]|·|B[p,j]|` for every (i, j): the scale that bounds rounding error of a dot
/// product (error ≤ γ_k · this), used to set per-element tolerances.
pub fn gemm_abs_f64(a: MatRef<'_>, b: MatRef<'_>) -> Vec<f64> {
    let (m, n) = (a.rows(), b.cols());
    let mut out = vec![0.0f64; m * n];
    for i in 0..m {
        for j in 0..n {
            out[i * n + j] = dot_f64(a, b, i, j).1;
        }
    }
    out
}

/// Softmax of one row in f64 with the crate's documented special cases: any NaN gives all NaN;
/// +∞ entries share the mass equally; a row with no finite or +∞ entry (all −∞) gives zeros.
pub fn softmax_f64(row: &[f32]) -> Vec<f64> {
    if row.iter().any(|x| x.is_nan()) {
        return vec![f64::NAN; row.len()];
    }
    let max = row.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x as f64));
    if max == f64::NEG_INFINITY {
        return vec![0.0; row.len()];
    }
    if max == f64::INFINITY {
        let count = row.iter().filter(|x| **x == f32::INFINITY).count() as f64;
        return row
            .iter()
            .map(|&x| if x == f32::INFINITY { 1.0 / count } else { 0.0 })
            .collect();
    }
    let e: Vec<f64> = row.iter().map(|&x| (x as f64 - max).exp()).collect();
    let sum: f64 = e.iter().sum();
    e.into_iter().map(|v| v / sum).collect()
}
