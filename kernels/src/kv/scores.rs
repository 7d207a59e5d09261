//! Scores: `scale · K·q` for one or several query heads, each key row read once.

use super::types::Elem;
use super::{prefetch_ahead, prefetch_l2_now};
use crate::arch::Simd;

/// Evaluates `$call`, generic over a head count `$g`, with `$g` the const equal to the run-time
/// `$heads` (one of the listed counts): the one place group sizes become types.
macro_rules! for_heads {
    ($heads:expr, [$($n:literal),+], |$g:ident| $call:expr) => {
        match $heads {
            $($n => {
                const $g: usize = $n;
                $call
            })+
            other => unreachable!("no instantiation for a group of {other} heads"),
        }
    };
}

/// `scores[h·block + r] = scale · (q_h · kb[r])` for every head `h` of the group and row `r`.
/// Each key row is loaded (and widened, for bf16) once into registers and reused by every
/// head, when the head fits in 8 vectors; other head sizes take the per-head path. `vb`: the
/// block's value rows, which the 8-lane path asks into L2 as it scores the key rows (see
/// [`dot_rows_transposed8`]).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(super) fn dot_rows_group<S: Simd, T: Elem, const PERM: bool>(
    s: S,
    q: &[f32],
    kb: &[T],
    vb: &[T],
    d: usize,
    rows: usize,
    block: usize,
    scale: f32,
    scores: &mut [f32],
) {
    let g = q.len() / d;
    if S::HAS_TRANSPOSE_SUM8 && d.is_multiple_of(2 * S::LANES) {
        // 8-lane paths: heads in fours, then the rest (1–3), take 8 (row, head) pairs at a
        // time through one transposed reduction (6 for three heads: against splitting them as
        // 2 + 1, which reads the key block twice, 0.85–0.90× the time at head_dim 128).
        let mut h0 = 0;
        while h0 < g {
            let heads = (g - h0).min(4);
            let (qg, sc) = (&q[h0 * d..], &mut scores[h0 * block..]);
            // SAFETY: LANES = 8 and d is a multiple of 16; `kb` and `vb` hold rows·d elements,
            // `qg` heads·d from head h0 on, `sc` (heads−1)·block + rows; rows ≤ block.
            for_heads!(heads, [1, 2, 3, 4], |G| unsafe {
                dot_rows_transposed8::<S, T, PERM, G>(s, qg, kb, vb, d, rows, block, scale, sc)
            });
            h0 += heads;
        }
        return;
    }
    macro_rules! fixed {
        ($v:literal) => {{
            let d = $v * S::LANES;
            // On 16-lane paths, heads in groups of up to eight, one group for the rest: each
            // group's whole sets of 16/heads rows go through the shared transposed reduction,
            // its last rows through the per-pair one (which other paths take throughout).
            // Against the per-pair reduction, in-process at head_dim 128 / 64: one group of 3
            // heads 0.90–1.0× / 0.80–0.97× the time, 5–7 heads 0.84–0.995× / 0.83–0.95×, 8
            // heads 0.90–0.94×; splitting 5–7 heads as 4 + 1..3 instead measured 0.98–1.10×
            // (each group reads the key block again).
            if !(S::HAS_TRANSPOSE_SUM16 && $v % 2 == 0) {
                // SAFETY: `kb` holds rows·d elements, `q` g·d, `scores` (g−1)·block + rows.
                unsafe {
                    dot_rows_group_fixed::<S, T, $v, PERM>(s, q, kb, g, rows, block, scale, scores)
                }
            } else {
                let mut h0 = 0;
                while h0 < g {
                    let heads = (g - h0).min(8);
                    let done = rows / (16 / heads) * (16 / heads);
                    let (qg, sc) = (&q[h0 * d..], &mut scores[h0 * block..]);
                    // SAFETY: d = $v·LANES, `kb` holds rows·d elements, `qg` heads·d from head
                    // h0 on, `sc` (heads−1)·block + rows; done ≤ rows ≤ block.
                    for_heads!(heads, [1, 2, 3, 4, 5, 6, 7, 8], |G| unsafe {
                        dot_rows_transposed::<S, T, $v, PERM, G>(
                            s, qg, kb, done, block, scale, sc,
                        )
                    });
                    // SAFETY: as above, for rows done.. of the group.
                    unsafe {
                        dot_rows_group_fixed::<S, T, $v, PERM>(
                            s,
                            qg,
                            &kb[done * d..],
                            heads,
                            rows - done,
                            block,
                            scale,
                            &mut sc[done..],
                        )
                    }
                    h0 += heads;
                }
            }
        }};
    }
    if d.is_multiple_of(S::LANES) {
        match d / S::LANES {
            v if chunked_applies(v) => {
                // Heads in groups of up to four (their accumulators stay in registers); each
                // group reads the key rows again, from cache.
                let mut h0 = 0;
                while h0 < g {
                    let heads = (g - h0).min(4);
                    let (q, sc) = (&q[h0 * d..], &mut scores[h0 * block..]);
                    // SAFETY: d = v·LANES with v a multiple of 8; `kb` holds rows·d elements,
                    // `q` from head h0 on holds heads·d, `sc` (heads−1)·block + rows.
                    for_heads!(heads, [1, 2, 3, 4], |G| unsafe {
                        dot_rows_chunked::<S, T, PERM, G>(s, q, kb, d, rows, block, scale, sc)
                    });
                    h0 += heads;
                }
                return;
            }
            8 => return fixed!(8),
            7 => return fixed!(7),
            6 => return fixed!(6),
            5 => return fixed!(5),
            4 => return fixed!(4),
            3 => return fixed!(3),
            2 => return fixed!(2),
            1 => return fixed!(1),
            _ => {}
        }
    }
    for h in 0..g {
        let sc = &mut scores[h * block..h * block + rows];
        dot_rows_impl(s, &q[h * d..(h + 1) * d], kb, scale, sc);
    }
}

/// [`dot_rows_group`] for `rows` (a multiple of 16/G) rows and `G` heads (1 to 8) of exactly
/// `V` vectors, G·⌊16/G⌋ (row, head) pairs at a time (15 for three heads): their partial
/// products accumulate lane-wise in 16 registers (two key vectors and 2·G query vectors live
/// at once; with 8 heads some of q is reloaded), and one [`Simd::transpose_sum16`] turns them
/// into 16 scores, head-major, each head's run of 16/G scores copied out together.
///
/// # Safety
/// `S::LANES == 16`, `V` even, `d = V·16`; `kb` holds `rows·d`, `q` holds `G·d` and `scores`
/// holds `(G−1)·block + rows` elements, `rows ≤ block`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn dot_rows_transposed<
    S: Simd,
    T: Elem,
    const V: usize,
    const PERM: bool,
    const G: usize,
>(
    s: S,
    q: &[f32],
    kb: &[T],
    rows: usize,
    block: usize,
    scale: f32,
    scores: &mut [f32],
) {
    let lanes = S::LANES;
    let d = V * lanes;
    let per = 16 / G;
    debug_assert!(lanes == 16 && V.is_multiple_of(2) && rows.is_multiple_of(per));
    debug_assert!(
        kb.len() >= rows * d && q.len() >= G * d && scores.len() >= (G - 1) * block + rows
    );
    let vscale = s.splat(scale);
    let row_bytes = d * std::mem::size_of::<T>();
    let mut r0 = 0;
    // SAFETY: every offset below stays inside the lengths the caller vouched for.
    unsafe {
        while r0 < rows {
            let mut acc = [s.zero(); 16];
            for v in (0..V).step_by(2) {
                let mut qv = [[s.zero(); 2]; G];
                for (h, qh2) in qv.iter_mut().enumerate() {
                    let qh = q.as_ptr().add(h * d + v * lanes);
                    *qh2 = [s.load(qh), s.load(qh.add(lanes))];
                }
                for r in 0..per {
                    let row = kb.as_ptr().add((r0 + r) * d);
                    if v == 0 {
                        prefetch_ahead(row as *const u8, row_bytes);
                    }
                    let k = T::load_vecs::<S, 2, PERM>(s, row.add(v * lanes));
                    for (h, qh) in qv.iter().enumerate() {
                        let a = &mut acc[h * per + r];
                        *a = s.fmadd(qh[0], k[0], *a);
                        *a = s.fmadd(qh[1], k[1], *a);
                    }
                }
            }
            let sums = s.mul(s.transpose_sum16(&acc), vscale);
            let mut lanes_out = [0.0f32; 16];
            s.store(lanes_out.as_mut_ptr(), sums);
            for h in 0..G {
                scores[h * block + r0..h * block + r0 + per]
                    .copy_from_slice(&lanes_out[h * per..(h + 1) * per]);
            }
            r0 += per;
        }
    }
}

/// [`dot_rows_group`] on 8-lane paths for `G` heads of `d` elements (an even number of
/// vectors): the partial products of 8 (row, head) pairs (8/G rows) accumulate lane-wise in 8
/// registers, each step loading two vectors of each key row (widened once) and taking q from
/// memory, and one [`Simd::transpose_sum8`] turns them into 8 scores, head-major: ~21
/// operations per 8 scores instead of ~6 per score. A last group of fewer rows repeats its
/// last row and keeps only the valid scores. The value rows of the block (`vb`, same
/// indices) are asked into L2 alongside: the value pass that follows walks each row 8 times
/// (two vectors at a time), too fast for its own prefetches to cover DRAM latency. In-process,
/// AVX2, against a sum over the same bytes (`examples/attend_vs_sum`-style, two runs each):
/// 79% → 85–87% with the cache in DRAM (128 MiB), 58–60% → 57–58% in the LLC (32 MiB); the
/// same on AVX-512 (two value passes) measured 0.97–1.0× from DRAM and 0.92× in the LLC, so
/// only this path does it. AVX2, `attend_partial` over 8 KV heads,
/// in-process against the paths it replaced: head_dim 128 with 4 heads per KV head 0.90–0.98×
/// the time (f32, bf16; caches in L2 or the LLC), 1 or 2 heads 0.96–1.0×; head_dim 80
/// 0.67–0.68× (one head at a time before); head_dim 96 with 3 heads 0.83–0.91×.
///
/// # Safety
/// `S::LANES == 8`, `d` a multiple of 16; `kb` holds `rows·d`, `q` holds `G·d` and `scores`
/// holds `(G−1)·block + rows` elements, `rows ≤ block`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn dot_rows_transposed8<S: Simd, T: Elem, const PERM: bool, const G: usize>(
    s: S,
    q: &[f32],
    kb: &[T],
    vb: &[T],
    d: usize,
    rows: usize,
    block: usize,
    scale: f32,
    scores: &mut [f32],
) {
    let lanes = S::LANES;
    let per = 8 / G;
    debug_assert!(lanes == 8 && d.is_multiple_of(2 * lanes));
    debug_assert!(
        kb.len() >= rows * d
            && vb.len() >= rows * d
            && q.len() >= G * d
            && scores.len() + block >= G * block + rows
    );
    let mut r0 = 0;
    // SAFETY: every offset below stays inside the lengths the caller vouched for.
    unsafe {
        // Whole groups: the row count and the score copies are constants.
        while r0 + per <= rows {
            let out = transposed8_group::<S, T, PERM, G>(
                s,
                q,
                kb.as_ptr().add(r0 * d),
                vb.as_ptr().add(r0 * d),
                d,
                per,
                scale,
            );
            for h in 0..G {
                scores[h * block + r0..h * block + r0 + per]
                    .copy_from_slice(&out[h * per..(h + 1) * per]);
            }
            r0 += per;
        }
        if r0 < rows {
            let valid = rows - r0;
            let out = transposed8_group::<S, T, PERM, G>(
                s,
                q,
                kb.as_ptr().add(r0 * d),
                vb.as_ptr().add(r0 * d),
                d,
                valid,
                scale,
            );
            for h in 0..G {
                for r in 0..valid {
                    scores[h * block + r0 + r] = out[h * per + r];
                }
            }
        }
    }
}

/// The scores of one group of [`dot_rows_transposed8`]: `8/G` rows from `rows` (the last
/// repeated past `valid`) against the `G` heads, times `scale`, head-major; the same rows of
/// `values` are asked into L2.
///
/// # Safety
/// `rows` points at `valid ≥ 1` rows of `d` elements; `q` holds `G·d`. (`values` is only
/// prefetched, which never faults.)
#[inline(always)]
unsafe fn transposed8_group<S: Simd, T: Elem, const PERM: bool, const G: usize>(
    s: S,
    q: &[f32],
    rows: *const T,
    values: *const T,
    d: usize,
    valid: usize,
    scale: f32,
) -> [f32; 8] {
    let (lanes, per) = (S::LANES, 8 / G);
    let row_bytes = d * std::mem::size_of::<T>();
    let mut out = [0.0f32; 8];
    // SAFETY: rows `r.min(valid − 1) < valid` and q's `G·d` floats, as the caller vouched.
    unsafe {
        for r in 0..per {
            let at = r.min(valid - 1) * d;
            prefetch_ahead(rows.add(at) as *const u8, row_bytes);
            prefetch_l2_now(values.wrapping_add(at) as *const u8, row_bytes);
        }
        let mut acc = [s.zero(); 8];
        for v in (0..d).step_by(2 * lanes) {
            for r in 0..per {
                let k = T::load_vecs::<S, 2, PERM>(s, rows.add(r.min(valid - 1) * d + v));
                for h in 0..G {
                    let qh = q.as_ptr().add(h * d + v);
                    let a = &mut acc[h * per + r];
                    *a = s.fmadd(s.load(qh), k[0], *a);
                    *a = s.fmadd(s.load(qh.add(lanes)), k[1], *a);
                }
            }
        }
        s.store(
            out.as_mut_ptr(),
            s.mul(s.transpose_sum8(&acc), s.splat(scale)),
        );
    }
    out
}

/// [`dot_rows_group`] for a head of exactly `V` vectors, the key row held in `V` registers.
///
/// # Safety
/// `d = V·LANES`; `kb` holds `rows·d`, `q` holds `g·d` and `scores` holds
/// `(g−1)·block + rows` elements, `rows ≤ block`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn dot_rows_group_fixed<S: Simd, T: Elem, const V: usize, const PERM: bool>(
    s: S,
    q: &[f32],
    kb: &[T],
    g: usize,
    rows: usize,
    block: usize,
    scale: f32,
    scores: &mut [f32],
) {
    let lanes = S::LANES;
    let d = V * lanes;
    debug_assert!(
        kb.len() >= rows * d && q.len() >= g * d && scores.len() + block >= g * block + rows
    );
    // SAFETY: every offset below stays inside the lengths the caller vouched for.
    unsafe {
        let row_bytes = d * std::mem::size_of::<T>();
        for r in 0..rows {
            let row = kb.as_ptr().add(r * d);
            prefetch_ahead(row as *const u8, row_bytes);
            let k: [S::V; V] = T::load_vecs::<S, V, PERM>(s, row);
            for h in 0..g {
                let qh = q.as_ptr().add(h * d);
                // Two chains per head; heads are independent, so their chains overlap.
                let mut even = s.mul(s.load(qh), k[0]);
                let mut odd = s.zero();
                for (v, kv) in k.iter().enumerate().skip(1) {
                    let qv = s.load(qh.add(v * lanes));
                    if v % 2 == 0 {
                        even = s.fmadd(qv, *kv, even);
                    } else {
                        odd = s.fmadd(qv, *kv, odd);
                    }
                }
                *scores.get_unchecked_mut(h * block + r) = scale * s.reduce_add(s.add(even, odd));
            }
        }
    }
}

/// Whether heads of `vecs` vectors take [`dot_rows_chunked`]: a multiple of 8 vectors, more
/// than the fixed paths hold in registers (head_dim 128 on 8-lane paths, 256 on 16-lane ones).
/// The bf16 element order of [`super::attend`] depends on it.
pub(super) fn chunked_applies(vecs: usize) -> bool {
    vecs > 8 && vecs.is_multiple_of(8)
}

/// [`dot_rows_group`] for `G ≤ 4` heads of [`chunked_applies`] size (on 16-lane paths; 8-lane
/// ones take [`dot_rows_transposed8`]): each key row is loaded (and widened) 8 vectors at a
/// time, once for all `G` heads, whose partial dot products accumulate in two registers each.
/// Against one head at a time (each re-reading the row), measured on the AVX2 path with
/// head_dim 128 and four heads per KV head before the transposed form replaced it there:
/// 1.31–1.42× the speed of `attend_partial` (f32 and bf16 caches of 32 MiB, in-process).
///
/// # Safety
/// `d` is a multiple of `8·LANES`; `kb` holds `rows·d`, `q` holds `G·d` and `scores` holds
/// `(G−1)·block + rows` elements, `rows ≤ block`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn dot_rows_chunked<S: Simd, T: Elem, const PERM: bool, const G: usize>(
    s: S,
    q: &[f32],
    kb: &[T],
    d: usize,
    rows: usize,
    block: usize,
    scale: f32,
    scores: &mut [f32],
) {
    const C: usize = 8;
    let lanes = S::LANES;
    debug_assert!(
        d.is_multiple_of(C * lanes)
            && kb.len() >= rows * d
            && q.len() >= G * d
            && scores.len() + block >= G * block + rows
    );
    let row_bytes = d * std::mem::size_of::<T>();
    // SAFETY: every offset below stays inside the lengths the caller vouched for.
    unsafe {
        for r in 0..rows {
            let row = kb.as_ptr().add(r * d);
            prefetch_ahead(row as *const u8, row_bytes);
            // Two chains per head (even and odd vectors), so that the FMA latency is covered.
            let mut acc = [[s.zero(); 2]; G];
            for c0 in (0..d).step_by(C * lanes) {
                let k: [S::V; C] = T::load_vecs::<S, C, PERM>(s, row.add(c0));
                for (h, a) in acc.iter_mut().enumerate() {
                    let qh = q.as_ptr().add(h * d + c0);
                    for (v, kv) in k.iter().enumerate() {
                        a[v % 2] = s.fmadd(s.load(qh.add(v * lanes)), *kv, a[v % 2]);
                    }
                }
            }
            for (h, a) in acc.iter().enumerate() {
                *scores.get_unchecked_mut(h * block + r) = scale * s.reduce_add(s.add(a[0], a[1]));
            }
        }
    }
}

#[inline(always)]
pub(super) fn dot_rows_impl<S: Simd, T: Elem>(
    s: S,
    q: &[f32],
    rows: &[T],
    scale: f32,
    scores: &mut [f32],
) {
    debug_assert!(rows.len() >= scores.len() * q.len());
    // SAFETY: the `scores.len()` rows of `q.len()` elements, `q.len()` apart, lie in `rows`.
    unsafe {
        dot_strided_rows(
            s,
            q,
            rows.as_ptr(),
            q.len(),
            scores.len(),
            scale,
            scores.as_mut_ptr(),
        )
    }
}

/// `out[i] = scale · (q · row_i)` for `n` rows of `q.len()` contiguous elements starting at
/// `rows`, `stride` elements apart: four rows at a time, two accumulators each to cover the
/// FMA latency. Shared by the attention primitives and the column-contiguous GEMV.
///
/// # Safety
/// Rows `0..n` (each `q.len()` elements at `rows + i·stride`) are readable; `out` has `n`
/// writable floats.
#[inline(always)]
pub(crate) unsafe fn dot_strided_rows<S: Simd, T: Elem>(
    s: S,
    q: &[f32],
    rows: *const T,
    stride: usize,
    n: usize,
    scale: f32,
    out: *mut f32,
) {
    let (d, lanes) = (q.len(), S::LANES);
    let full = d / lanes * lanes;
    let tail = d - full;
    let mut i = 0;
    // SAFETY: row pointers index rows < n, offsets stay below d, `q` has d floats, `out` n.
    unsafe {
        while i < n {
            let count = 4.min(n - i);
            let r: [*const T; 4] =
                std::array::from_fn(|u| rows.add((i + u.min(count - 1)) * stride));
            let mut lo = [s.zero(); 4];
            let mut hi = [s.zero(); 4];
            let mut p = 0;
            while p + 2 * lanes <= full {
                let q0 = s.load(q.as_ptr().add(p));
                let q1 = s.load(q.as_ptr().add(p + lanes));
                for u in 0..4 {
                    lo[u] = s.fmadd(q0, T::load(s, r[u].add(p)), lo[u]);
                    hi[u] = s.fmadd(q1, T::load(s, r[u].add(p + lanes)), hi[u]);
                }
                p += 2 * lanes;
            }
            if p < full {
                let q0 = s.load(q.as_ptr().add(p));
                for u in 0..4 {
                    lo[u] = s.fmadd(q0, T::load(s, r[u].add(p)), lo[u]);
                }
            }
            if tail > 0 {
                let q0 = s.load_partial(q.as_ptr().add(full), tail);
                for u in 0..4 {
                    hi[u] = s.fmadd(q0, T::load_partial(s, r[u].add(full), tail), hi[u]);
                }
            }
            for u in 0..count {
                *out.add(i + u) = scale * s.reduce_add(s.add(lo[u], hi[u]));
            }
            i += count;
        }
    }
}
