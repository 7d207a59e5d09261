//! Values: `acc += Σ_i w_i·v_i` for one or several query heads, each value row read once.

use super::prefetch_ahead;
use super::types::Elem;
use crate::arch::Simd;

/// `acc[h] += Σ_r weights[h·block + r] · vb[r]` for every head `h` of the group. With heads
/// of whole W-vector chunks (W = 4 on 16-lane paths, 2 on 8-lane ones), up to four heads share
/// each loaded (and widened) chunk of a value row, their 4×W accumulators in registers; other
/// shapes take the per-head path.
#[inline(always)]
pub(super) fn accumulate_group<S: Simd, T: Elem, const PERM: bool>(
    s: S,
    weights: &[f32],
    vb: &[T],
    d: usize,
    rows: usize,
    block: usize,
    acc: &mut [f32],
) {
    // Four heads × W vectors of accumulators, plus W value vectors and a weight, must fit the
    // registers: 16 of them on 8-lane paths (W = 4 spilled there; W = 2 measured 1.02–1.08×
    // faster), 32 on 16-lane ones.
    if S::LANES == 8 {
        accumulate_group_w::<S, T, PERM, 2>(s, weights, vb, d, rows, block, acc)
    } else {
        accumulate_group_w::<S, T, PERM, 4>(s, weights, vb, d, rows, block, acc)
    }
}

/// [`accumulate_group`] with `W` vectors of each head's accumulator in registers per pass.
#[inline(always)]
fn accumulate_group_w<S: Simd, T: Elem, const PERM: bool, const W: usize>(
    s: S,
    weights: &[f32],
    vb: &[T],
    d: usize,
    rows: usize,
    block: usize,
    acc: &mut [f32],
) {
    let g = acc.len() / d;
    if !d.is_multiple_of(W * S::LANES) {
        for h in 0..g {
            let w = &weights[h * block..h * block + rows];
            accumulate_rows_impl(s, w, vb, &mut acc[h * d..(h + 1) * d]);
        }
        return;
    }
    debug_assert!(vb.len() >= rows * d && weights.len() >= g * block);
    let mut h0 = 0;
    while h0 < g {
        let heads = (g - h0).min(4);
        for c0 in (0..d).step_by(W * S::LANES) {
            // A chunk narrower than a line (AVX2 bf16: 32 bytes) shares its line with the
            // next chunk: only the chunk that starts the line asks for it (the repeated
            // hints took load slots; in-process, AVX2 bf16 attend_partial 0.977–0.984×
            // the time with them gone, 8 KV heads × 4096–65536 rows).
            let fetch = (c0 * std::mem::size_of::<T>()).is_multiple_of(64);
            let (w, v, a) = (
                weights[h0 * block..].as_ptr(),
                vb[c0..].as_ptr(),
                acc[h0 * d + c0..].as_mut_ptr(),
            );
            // SAFETY: heads h0.. h0+heads ≤ g, columns c0 .. c0 + W·LANES ≤ d, rows ≤ block:
            // all inside `weights`, `vb` and `acc`.
            unsafe {
                match heads {
                    4 => accumulate_chunk_heads::<S, T, 4, W, PERM>(
                        s, w, block, v, d, rows, a, fetch,
                    ),
                    3 => accumulate_chunk_heads::<S, T, 3, W, PERM>(
                        s, w, block, v, d, rows, a, fetch,
                    ),
                    2 => accumulate_chunk_heads::<S, T, 2, W, PERM>(
                        s, w, block, v, d, rows, a, fetch,
                    ),
                    _ => accumulate_chunk_heads::<S, T, 1, W, PERM>(
                        s, w, block, v, d, rows, a, fetch,
                    ),
                }
            }
        }
        h0 += heads;
    }
}

/// `G` heads × `W` vectors of accumulators in registers; each value row chunk is loaded once,
/// and with `fetch` the same chunk of rows further on is prefetched.
///
/// # Safety
/// `weights` holds `G·block` floats (`rows ≤ block`), `vb` points at `rows` rows of stride `d`
/// with `W·LANES` readable elements each, `acc` at `G` rows of stride `d` with `W·LANES`
/// writable floats each.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn accumulate_chunk_heads<
    S: Simd,
    T: Elem,
    const G: usize,
    const W: usize,
    const PERM: bool,
>(
    s: S,
    weights: *const f32,
    block: usize,
    vb: *const T,
    d: usize,
    rows: usize,
    acc: *mut f32,
    fetch: bool,
) {
    let lanes = S::LANES;
    // SAFETY: every offset below is inside the ranges the caller vouched for.
    unsafe {
        let mut a = [[s.zero(); W]; G];
        for (h, ah) in a.iter_mut().enumerate() {
            for (w, x) in ah.iter_mut().enumerate() {
                *x = s.load(acc.add(h * d + w * lanes));
            }
        }
        let chunk_bytes = W * lanes * std::mem::size_of::<T>();
        for r in 0..rows {
            let row = vb.add(r * d);
            if fetch {
                prefetch_ahead(row as *const u8, chunk_bytes);
            }
            let v: [S::V; W] = T::load_vecs::<S, W, PERM>(s, row);
            for (h, ah) in a.iter_mut().enumerate() {
                let wt = s.splat(*weights.add(h * block + r));
                for (x, vw) in ah.iter_mut().zip(&v) {
                    *x = s.fmadd(wt, *vw, *x);
                }
            }
        }
        for (h, ah) in a.iter().enumerate() {
            for (w, x) in ah.iter().enumerate() {
                s.store(acc.add(h * d + w * lanes), *x);
            }
        }
    }
}

#[inline(always)]
pub(super) fn accumulate_rows_impl<S: Simd, T: Elem>(
    s: S,
    weights: &[f32],
    rows: &[T],
    acc: &mut [f32],
) {
    let (d, lanes) = (acc.len(), S::LANES);
    // The accumulator is processed in chunks of up to 8 vectors held in registers while every
    // row streams past (head_dim 128 is one chunk on AVX-512); each chunk width has its own
    // fully unrolled loop so the accumulators never leave registers.
    let mut c0 = 0;
    while c0 + lanes <= d {
        let vecs = ((d - c0) / lanes).min(8);
        // SAFETY: columns c0 .. c0 + vecs·lanes lie inside `acc` and inside every row.
        unsafe {
            match vecs {
                8 => accumulate_chunk::<S, T, 8>(s, weights, rows, d, c0, acc),
                7 => accumulate_chunk::<S, T, 7>(s, weights, rows, d, c0, acc),
                6 => accumulate_chunk::<S, T, 6>(s, weights, rows, d, c0, acc),
                5 => accumulate_chunk::<S, T, 5>(s, weights, rows, d, c0, acc),
                4 => accumulate_chunk::<S, T, 4>(s, weights, rows, d, c0, acc),
                3 => accumulate_chunk::<S, T, 3>(s, weights, rows, d, c0, acc),
                2 => accumulate_chunk::<S, T, 2>(s, weights, rows, d, c0, acc),
                _ => accumulate_chunk::<S, T, 1>(s, weights, rows, d, c0, acc),
            }
        }
        c0 += vecs * lanes;
    }
    let tail = d - c0;
    if tail > 0 {
        // SAFETY: `tail < lanes` columns from c0 lie inside `acc` and every row.
        unsafe {
            let a = acc.as_mut_ptr().add(c0);
            let mut t = s.load_partial(a, tail);
            for (i, w) in weights.iter().enumerate() {
                let row = rows.as_ptr().add(i * d + c0);
                t = s.fmadd(s.splat(*w), T::load_partial(s, row, tail), t);
            }
            s.store_partial(a, tail, t);
        }
    }
}

/// `acc[c0 .. c0 + V·LANES] += Σ_i weights[i] · rows[i][c0 ..]` with the V accumulators in
/// registers.
///
/// # Safety
/// `c0 + V·LANES ≤ d = acc.len()` and `rows` holds `weights.len() · d` elements.
#[inline(always)]
unsafe fn accumulate_chunk<S: Simd, T: Elem, const V: usize>(
    s: S,
    weights: &[f32],
    rows: &[T],
    d: usize,
    c0: usize,
    acc: &mut [f32],
) {
    let lanes = S::LANES;
    // SAFETY: guaranteed by the caller.
    unsafe {
        let a = acc.as_mut_ptr().add(c0);
        let mut reg = [s.zero(); V];
        for (v, x) in reg.iter_mut().enumerate() {
            *x = s.load(a.add(v * lanes));
        }
        let mut row = rows.as_ptr().add(c0);
        for w in weights {
            let w = s.splat(*w);
            for (v, r) in reg.iter_mut().enumerate() {
                *r = s.fmadd(w, T::load(s, row.add(v * lanes)), *r);
            }
            row = row.wrapping_add(d);
        }
        for (v, r) in reg.iter().enumerate() {
            s.store(a.add(v * lanes), *r);
        }
    }
}
