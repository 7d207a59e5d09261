//! The one-token path: `y(1×n) = α·x(1×k)·B(k×n) + β·y`, streaming B once with no packing.
//!
//! Decode is bandwidth-bound: each element of B is used once, so the only goal is to read B
//! at memory speed. Two layouts are streamed in memory order:
//! - B rows contiguous (`x·W` with W row-major): four rows at a time are FMA'd into an f32
//!   accumulator row of length n that lives in L1/L2; each thread owns a column range.
//! - B columns contiguous (`x·Wᵀ`, and `q·Kᵀ` where the keys are rows): four dot products at a
//!   time, two accumulators each to cover FMA latency; threads own column ranges.
//!
//! Other strides go through the blocked GEMM.

use super::pack::Strided;
use crate::arch::Simd;
use crate::exec::{Exec, SharedMut};

/// Columns per task: large enough to amortise the task, small enough to balance threads.
fn column_chunk(n: usize, threads: usize, align: usize) -> usize {
    let per_thread = n.div_ceil(threads.max(1));
    per_thread.div_ceil(align).max(1) * align
}

/// `acc[0..n] = x · B[.., 0..n]` for B with contiguous rows (`b.cs == 1`).
///
/// # Safety
/// `x` has `k` readable floats, `b` is readable on `k × n`, `acc` has `n` writable floats
/// that no one else touches.
#[inline(always)]
unsafe fn rows_into<S: Simd>(s: S, x: &[f32], b: Strided, n: usize, acc: *mut f32) {
    let lanes = S::LANES;
    let k = x.len();
    let full = n / lanes * lanes;
    // SAFETY: every pointer below indexes rows < k and columns < n of `b`, or
    // columns < n of `acc`, as the caller vouched.
    unsafe {
        for j in (0..full).step_by(lanes) {
            s.store(acc.add(j), s.zero());
        }
        if full < n {
            s.store_partial(acc.add(full), n - full, s.zero());
        }
        let mut p = 0;
        while p < k {
            let rows = 4.min(k - p);
            let mut xs = [s.zero(); 4];
            for (i, xi) in xs.iter_mut().enumerate() {
                *xi = s.splat(if i < rows { x[p + i] } else { 0.0 });
            }
            let r: [*const f32; 4] =
                std::array::from_fn(|i| b.ptr.add((p + i.min(rows - 1)) * b.rs));
            if rows == 4 {
                for j in (0..full).step_by(lanes) {
                    let mut y = s.load(acc.add(j));
                    y = s.fmadd(xs[0], s.load(r[0].add(j)), y);
                    y = s.fmadd(xs[1], s.load(r[1].add(j)), y);
                    y = s.fmadd(xs[2], s.load(r[2].add(j)), y);
                    y = s.fmadd(xs[3], s.load(r[3].add(j)), y);
                    s.store(acc.add(j), y);
                }
            } else {
                for j in (0..full).step_by(lanes) {
                    let mut y = s.load(acc.add(j));
                    for i in 0..rows {
                        y = s.fmadd(xs[i], s.load(r[i].add(j)), y);
                    }
                    s.store(acc.add(j), y);
                }
            }
            if full < n {
                let t = n - full;
                let mut y = s.load_partial(acc.add(full), t);
                for i in 0..rows {
                    y = s.fmadd(xs[i], s.load_partial(r[i].add(full), t), y);
                }
                s.store_partial(acc.add(full), t, y);
            }
            p += rows;
        }
    }
}

/// `acc[j] = x · B[.., j]` for `j < n`, for B with contiguous columns (`b.rs == 1`): the
/// columns are rows of Bᵀ, so this is the attention primitive's strided dot product.
///
/// # Safety
/// As for [`rows_into`].
#[inline(always)]
unsafe fn columns_into<S: Simd>(s: S, x: &[f32], b: Strided, n: usize, acc: *mut f32) {
    // SAFETY: column j < n holds x.len() contiguous floats at `b.ptr + j·b.cs`.
    unsafe { crate::kv::dot_strided_rows(s, x, b.ptr, b.cs, n, 1.0, acc) }
}

/// `y = α·x·B + β·y` with `x` contiguous (length k ≥ 1), `B` (k × n) with contiguous rows or
/// columns, `acc` a scratch of n floats, and `y` at `y.0 + j*ys`.
///
/// # Safety
/// `b` is readable on `k × n` and has `b.cs == 1` or `b.rs == 1`; `y` is readable and
/// writable at `j*ys` for `j < n`, distinct for distinct `j`, and untouched by others.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemv<S: Simd>(
    s: S,
    exec: &Exec,
    alpha: f32,
    x: &[f32],
    b: Strided,
    n: usize,
    beta: f32,
    y: SharedMut,
    ys: usize,
    acc: &mut [f32],
) {
    let rows_layout = b.cs == 1;
    debug_assert!(rows_layout || b.rs == 1);
    let chunk = column_chunk(
        n,
        exec.threads(),
        if rows_layout { 4 * S::LANES } else { 16 },
    );
    exec.for_each_chunk_mut(&mut acc[..n], chunk, |index, acc| {
        let j0 = index * chunk;
        let cols = acc.len();
        let bj = b.offset(0, j0);
        s.vectorize(
            #[inline(always)]
            || {
                // SAFETY: columns j0..j0+cols < n of `b`; `acc` is this task's own chunk.
                unsafe {
                    if rows_layout {
                        rows_into(s, x, bj, cols, acc.as_mut_ptr())
                    } else {
                        columns_into(s, x, bj, cols, acc.as_mut_ptr())
                    }
                }
                for (j, t) in acc.iter().enumerate() {
                    // SAFETY: element j0 + j < n of `y`, owned by this task's column range.
                    unsafe {
                        let yp = y.at((j0 + j) * ys);
                        *yp = if beta == 0.0 {
                            alpha * t
                        } else {
                            alpha * t + beta * *yp
                        };
                    }
                }
            },
        );
    });
}
