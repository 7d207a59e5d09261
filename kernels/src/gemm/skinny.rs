//! Very skinny products (m = 2 … 4 rows: decode of a few sequences at once): B streamed once with
//! no packing, in row order when its rows are contiguous, column by column when its columns are
//! (`x·Wᵀ`). On AVX-512 and AVX2 the row-order case now goes to the direct nest (`direct.rs`),
//! which measured 0.64–0.85× this path's time at 2–4 × 4096 × 4096 (B hot or from DRAM, one
//! and two threads); the portable path keeps it.
//!
//! With few rows each element of B is used only m times, so packing B (a copy the size of B)
//! costs about as much as the product and cannot overlap the memory stream. Here C's rows for a
//! column chunk stay in L1 and four rows of B at a time are folded into them:
//! `C[i, j..] += a[i,p]·B[p, j..] + … + a[i,p+3]·B[p+3, j..]` — one load and one store of C per
//! four FMAs, B read once from memory in runs of `CHUNK` contiguous floats.

use super::pack::Strided;
use crate::arch::{Simd, prefetch_l2};
use crate::exec::{Exec, SharedMut};

/// Most rows this path takes. Measured on 4096×4096 B (one thread, A/B in one session): m = 2
/// takes 5.2 ms here against 7.4–7.7 ms packed, m = 4 6.7–6.9 ms against 7.6–8.5 ms; at m = 8
/// the two are even and at m = 16 packing wins, because every four FMAs here also load and
/// store a C vector.
pub(crate) const MAX_ROWS: usize = 4;
/// Columns per chunk: C's rows for a chunk (at most 4 × 512 × 4 B = 8 KiB) stay in L1, and B is read
/// in 2 KiB runs.
const CHUNK: usize = 512;
/// Rows of B ahead of use that are prefetched (one step of four, plus four), into L2: against
/// prefetching into L1, 4–8% faster at 2 and 4 × 4096 × 4096 (in-process paired A/B); 16 or 32
/// rows ahead measured the same as 8.
const PREFETCH_ROWS: usize = 8;

/// Floats of workspace [`gemm_skinny`] needs for an `m × n` product.
pub(crate) fn workspace_len(m: usize, n: usize) -> usize {
    m * CHUNK * n.div_ceil(CHUNK) + 1024
}

/// `C = α·A·B + β·C` for `m ≤ MAX_ROWS`, B and C row-contiguous (`cs = 1`). `acc` is workspace
/// of [`workspace_len`] floats: C's rows are accumulated there, at an address chosen so that
/// they never sit a multiple of 4 KiB away from the B rows being read (B's rows are usually
/// 4 KiB-multiples apart, and a store 4 KiB from a later load stalls that load).
///
/// # Safety
/// `a` is readable on `m × k`, `b` on `k × n` with `b.cs == 1`, `c` readable and writable on
/// `m × n` with column stride 1 and pairwise distinct rows, untouched by others.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_skinny<S: Simd>(
    s: S,
    exec: &Exec,
    (m, n, k): (usize, usize, usize),
    alpha: f32,
    a: Strided,
    b: Strided,
    beta: f32,
    c: SharedMut,
    rsc: usize,
    acc: &mut [f32],
) {
    debug_assert!(m <= MAX_ROWS && b.cs == 1 && acc.len() >= workspace_len(m, n));
    let region = m * CHUNK;
    // Put the accumulator 1 KiB (mod 4 KiB) past B's rows.
    let (b_addr, acc_addr) = (b.ptr as usize, acc.as_ptr() as usize);
    let skew = (b_addr + 1024).wrapping_sub(acc_addr) % 4096 / 4;
    let acc = &mut acc[skew..skew + region * n.div_ceil(CHUNK)];
    exec.for_each_chunk_mut(acc, region, |chunk, acc| {
        let j0 = chunk * CHUNK;
        let cols = CHUNK.min(n - j0);
        s.vectorize(
            #[inline(always)]
            // SAFETY: columns j0..j0+cols < n of B and C, rows < m of A and C; chunks are
            // disjoint column ranges of C, owned by one task each, and `acc` is this chunk's.
            || unsafe {
                chunk_kernel(s, m, k, a, b.offset(0, j0), cols, acc);
                write_back(s, m, cols, alpha, acc, beta, c.at(j0), rsc);
            },
        );
    });
}

/// `C = α·acc + β·C` for one chunk (C is not read when β = 0).
///
/// # Safety
/// `c` is writable (and readable) on `m` rows of `cols` floats, `rsc` apart.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn write_back<S: Simd>(
    s: S,
    m: usize,
    cols: usize,
    alpha: f32,
    acc: &[f32],
    beta: f32,
    c: *mut f32,
    rsc: usize,
) {
    let lanes = S::LANES;
    let full = cols / lanes * lanes;
    let (va, vb) = (s.splat(alpha), s.splat(beta));
    // SAFETY: rows < m and columns < cols of C as vouched; `acc` holds
    // m·CHUNK ≥ m·cols floats.
    unsafe {
        for i in 0..m {
            let (ci, ai) = (c.add(i * rsc), acc.as_ptr().add(i * CHUNK));
            for j in (0..full).step_by(lanes) {
                let t = s.mul(va, s.load(ai.add(j)));
                let v = if beta == 0.0 {
                    t
                } else {
                    s.fmadd(vb, s.load(ci.add(j)), t)
                };
                s.store(ci.add(j), v);
            }
            if full < cols {
                let n = cols - full;
                let t = s.mul(va, s.load_partial(ai.add(full), n));
                let v = if beta == 0.0 {
                    t
                } else {
                    s.fmadd(vb, s.load_partial(ci.add(full), n), t)
                };
                s.store_partial(ci.add(full), n, v);
            }
        }
    }
}

/// `acc[i, 0..cols] = Σ_p A[i, p] · B[p, 0..cols]` for one column chunk (`acc` rows are
/// `CHUNK` apart).
///
/// # Safety
/// `a` readable on `m × k`, `b` on `k × cols` with unit column stride; `acc` holds `m·CHUNK`.
#[inline(always)]
unsafe fn chunk_kernel<S: Simd>(
    s: S,
    m: usize,
    k: usize,
    a: Strided,
    b: Strided,
    cols: usize,
    acc: &mut [f32],
) {
    let lanes = S::LANES;
    let full = cols / lanes * lanes;
    let tail = cols - full;
    acc[..m * CHUNK].fill(0.0);
    let c = acc.as_mut_ptr();
    // SAFETY: rows < m, columns < cols, and B rows < k, as vouched; `acc`
    // rows are CHUNK ≥ cols apart.
    unsafe {
        let mut p = 0;
        while p < k {
            let depth = 4.min(k - p);
            let rows: [*const f32; 4] =
                std::array::from_fn(|u| b.ptr.add((p + u.min(depth - 1)) * b.rs));
            // The next steps' row runs, so their DRAM pages stream in during this step.
            for row in rows.iter().take(depth) {
                let ahead = row.wrapping_add(PREFETCH_ROWS * b.rs);
                (0..cols)
                    .step_by(16)
                    .for_each(|j| prefetch_l2(ahead.wrapping_add(j)));
            }
            for i in 0..m {
                let ai = a.ptr.add(i * a.rs + p * a.cs);
                let mut w = [s.zero(); 4];
                for (u, wu) in w.iter_mut().enumerate() {
                    *wu = s.splat(if u < depth { *ai.add(u * a.cs) } else { 0.0 });
                }
                let ci = c.add(i * CHUNK);
                for j in (0..full).step_by(lanes) {
                    let mut x = s.load(ci.add(j));
                    x = s.fmadd(w[0], s.load(rows[0].add(j)), x);
                    if depth == 4 {
                        x = s.fmadd(w[1], s.load(rows[1].add(j)), x);
                        x = s.fmadd(w[2], s.load(rows[2].add(j)), x);
                        x = s.fmadd(w[3], s.load(rows[3].add(j)), x);
                    } else {
                        for u in 1..depth {
                            x = s.fmadd(w[u], s.load(rows[u].add(j)), x);
                        }
                    }
                    s.store(ci.add(j), x);
                }
                if tail > 0 {
                    let mut x = s.load_partial(ci.add(full), tail);
                    for u in 0..depth {
                        x = s.fmadd(w[u], s.load_partial(rows[u].add(full), tail), x);
                    }
                    s.store_partial(ci.add(full), tail, x);
                }
            }
            p += depth;
        }
    }
}

/// `C = α·A·B + β·C` for `m ≤ MAX_ROWS` with B's *columns* contiguous (`b.rs == 1`: `x·Wᵀ` for
/// W stored n × k row-major, the layout of linear-layer weights) and A's rows contiguous: each
/// column of B is read once, four at a time, and dotted with all m rows of A. No packing and
/// no workspace; each column is a contiguous run the hardware prefetchers follow.
///
/// # Safety
/// `a` is readable on `m × k` with `a.cs == 1`, `b` on `k × n` with `b.rs == 1`; `c` readable
/// and writable at `i·rsc + j·csc` for `i < m`, `j < n`, pairwise distinct, untouched by others.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_skinny_columns<S: Simd>(
    s: S,
    exec: &Exec,
    (m, n, k): (usize, usize, usize),
    alpha: f32,
    a: Strided,
    b: Strided,
    beta: f32,
    c: SharedMut,
    (rsc, csc): (usize, usize),
) {
    debug_assert!(m <= MAX_ROWS && a.cs == 1 && b.rs == 1);
    let tasks = exec.threads().clamp(1, n.div_ceil(4));
    exec.for_each_index(tasks, |t| {
        let columns = (t * n / tasks)..((t + 1) * n / tasks);
        let out = ColumnsOut {
            c,
            rsc,
            csc,
            alpha,
            beta,
        };
        s.vectorize(
            #[inline(always)]
            // SAFETY: rows < m of A and columns in `columns` (< n) of B and C, as vouched;
            // tasks own disjoint column ranges of C.
            || unsafe {
                match m {
                    1 => dot_columns::<S, 1>(s, k, a, b, columns, out),
                    2 => dot_columns::<S, 2>(s, k, a, b, columns, out),
                    3 => dot_columns::<S, 3>(s, k, a, b, columns, out),
                    _ => dot_columns::<S, 4>(s, k, a, b, columns, out),
                }
            },
        );
    });
}

/// Where [`dot_columns`] writes: `C[i, j] = α·dot + β·C[i, j]` at `c + i·rsc + j·csc`.
#[derive(Clone, Copy)]
struct ColumnsOut {
    c: SharedMut,
    rsc: usize,
    csc: usize,
    alpha: f32,
    beta: f32,
}

/// The columns `columns` of `C = α·A·B + β·C` for exactly `M` rows, four columns of B at a
/// time (4·M independent accumulator chains).
///
/// # Safety
/// As for [`gemm_skinny_columns`], with `m = M` and `columns` inside `0..n`.
#[inline(always)]
unsafe fn dot_columns<S: Simd, const M: usize>(
    s: S,
    k: usize,
    a: Strided,
    b: Strided,
    columns: std::ops::Range<usize>,
    out: ColumnsOut,
) {
    let lanes = S::LANES;
    let full = k / lanes * lanes;
    let tail = k - full;
    let mut j = columns.start;
    // SAFETY: columns j.. < columns.end and offsets < k stay inside B; rows < M inside A; the
    // C elements written belong to this range.
    unsafe {
        while j < columns.end {
            let count = 4.min(columns.end - j);
            let col: [*const f32; 4] =
                std::array::from_fn(|u| b.ptr.add((j + u.min(count - 1)) * b.cs));
            let mut acc = [[s.zero(); 4]; M];
            let mut p = 0;
            while p < full {
                let mut w = [s.zero(); 4];
                for (u, wu) in w.iter_mut().enumerate() {
                    *wu = s.load(col[u].add(p));
                }
                for (i, row) in acc.iter_mut().enumerate() {
                    let x = s.load(a.ptr.add(i * a.rs + p));
                    for (u, x_w) in row.iter_mut().enumerate() {
                        *x_w = s.fmadd(x, w[u], *x_w);
                    }
                }
                p += lanes;
            }
            if tail > 0 {
                let mut w = [s.zero(); 4];
                for (u, wu) in w.iter_mut().enumerate() {
                    *wu = s.load_partial(col[u].add(full), tail);
                }
                for (i, row) in acc.iter_mut().enumerate() {
                    let x = s.load_partial(a.ptr.add(i * a.rs + full), tail);
                    for (u, x_w) in row.iter_mut().enumerate() {
                        *x_w = s.fmadd(x, w[u], *x_w);
                    }
                }
            }
            for (i, row) in acc.iter().enumerate() {
                for (u, x_w) in row.iter().enumerate().take(count) {
                    let dot = s.reduce_add(*x_w);
                    let cp = out.c.at(i * out.rsc + (j + u) * out.csc);
                    *cp = if out.beta == 0.0 {
                        out.alpha * dot
                    } else {
                        out.alpha * dot + out.beta * *cp
                    };
                }
            }
            j += count;
        }
    }
}
