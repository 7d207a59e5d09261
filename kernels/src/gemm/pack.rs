//! Packing of A and B into the contiguous micro-panels the micro-kernel streams.
//!
//! ```text
//! packed A (one MR×kc micro-panel)        packed B (one kc×NR micro-panel)
//!   p=0: a[0,0] a[1,0] … a[MR-1,0]          p=0: b[0,0] b[0,1] … b[0,NR-1]
//!   p=1: a[0,1] a[1,1] … a[MR-1,1]          p=1: b[1,0] b[1,1] … b[1,NR-1]
//!   …                                        …
//! ```
//! Rows (of A) or columns (of B) past the matrix edge are zero-filled, so the micro-kernel
//! always runs a full MR×NR tile and never branches on the edge in its k loop.

use crate::arch::{Simd, prefetch_l2};

/// A strided read-only source: element `(i, j)` at `ptr + i*rs + j*cs`.
#[derive(Clone, Copy)]
pub(crate) struct Strided {
    pub ptr: *const f32,
    pub rs: usize,
    pub cs: usize,
}

impl Strided {
    /// The sub-view starting at element `(i, j)` (pointer arithmetic only; no access).
    pub(crate) fn offset(self, i: usize, j: usize) -> Strided {
        Strided {
            ptr: self.ptr.wrapping_add(i * self.rs + j * self.cs),
            ..self
        }
    }
}

// SAFETY: `Strided` is only built from a shared borrow of an f32 slice (a `MatRef`), which may
// be read from any thread.
unsafe impl Send for Strided {}
// SAFETY: as above; it is never written through.
unsafe impl Sync for Strided {}

/// Packs rows `0..rows` (≤ MR) and columns `0..kc` of `a` into one MR×kc micro-panel.
///
/// # Safety
/// `a` must be readable at every `(i, p)` with `i < rows`, `p < kc`; `dst.len() >= MR*kc`.
#[inline(always)]
pub(crate) unsafe fn pack_a_panel<const MR: usize>(
    a: Strided,
    rows: usize,
    kc: usize,
    dst: &mut [f32],
) {
    debug_assert!(rows <= MR && dst.len() >= MR * kc);
    let dst = &mut dst[..MR * kc];
    #[cfg(x86_simd)]
    if a.cs == 1 && MR.is_multiple_of(4) {
        // SAFETY: forwarded from the caller.
        unsafe { pack_a_rows_4x4::<MR>(a, rows, kc, dst) };
        return;
    }
    for i in 0..MR {
        if i < rows {
            let row = a.ptr.wrapping_add(i * a.rs);
            for (p, d) in dst.iter_mut().skip(i).step_by(MR).enumerate() {
                // SAFETY: `(i, p)` is inside the block the caller vouched for.
                *d = unsafe { *row.add(p * a.cs) };
            }
        } else {
            dst.iter_mut().skip(i).step_by(MR).for_each(|d| *d = 0.0);
        }
    }
}

/// [`pack_a_panel`] for row-contiguous A (`a.cs == 1`) and MR a multiple of 4: 4×4 blocks are
/// transposed in SSE registers (baseline on x86-64, so no dispatch), four 16-byte stores per
/// 16 elements instead of sixteen scalar ones. Rows past `rows` are zero-filled.
///
/// # Safety
/// As for [`pack_a_panel`].
#[cfg(x86_simd)]
#[inline(always)]
unsafe fn pack_a_rows_4x4<const MR: usize>(a: Strided, rows: usize, kc: usize, dst: &mut [f32]) {
    use std::arch::x86_64::*;
    let full = kc / 4 * 4;
    let out = dst.as_mut_ptr();
    for g in (0..MR).step_by(4) {
        if g + 4 > rows {
            // A partial group of rows: element by element, zeros past the edge.
            for i in g..g + 4 {
                for p in 0..kc {
                    // SAFETY: `(i, p)` is inside the vouched block when `i < rows`; the
                    // destination index is below MR·kc.
                    unsafe {
                        *out.add(p * MR + i) = if i < rows {
                            *a.ptr.add(i * a.rs + p)
                        } else {
                            0.0
                        };
                    }
                }
            }
            continue;
        }
        let r: [*const f32; 4] = std::array::from_fn(|u| a.ptr.wrapping_add((g + u) * a.rs));
        // SAFETY: rows g..g+4 < rows and columns p..p+4 ≤ kc are inside the vouched block;
        // stores go to p'·MR + g .. + 4 with p' < kc, inside the MR·kc destination.
        unsafe {
            for p in (0..full).step_by(4) {
                let x = [
                    _mm_loadu_ps(r[0].add(p)),
                    _mm_loadu_ps(r[1].add(p)),
                    _mm_loadu_ps(r[2].add(p)),
                    _mm_loadu_ps(r[3].add(p)),
                ];
                let lo01 = _mm_unpacklo_ps(x[0], x[1]);
                let lo23 = _mm_unpacklo_ps(x[2], x[3]);
                let hi01 = _mm_unpackhi_ps(x[0], x[1]);
                let hi23 = _mm_unpackhi_ps(x[2], x[3]);
                let cols = [
                    _mm_movelh_ps(lo01, lo23),
                    _mm_movehl_ps(lo23, lo01),
                    _mm_movelh_ps(hi01, hi23),
                    _mm_movehl_ps(hi23, hi01),
                ];
                for (j, c) in cols.iter().enumerate() {
                    _mm_storeu_ps(out.add((p + j) * MR + g), *c);
                }
            }
            for p in full..kc {
                for (u, row) in r.iter().enumerate() {
                    *out.add(p * MR + g + u) = *row.add(p);
                }
            }
        }
    }
}

/// Packs rows `0..kc` and columns `0..cols` of `b` into consecutive kc×NR micro-panels
/// (columns past `cols` zero-filled), traversing B row by row so that each row is read as one
/// run: vector copies when its rows are contiguous, element by element otherwise.
///
/// With `prefetch = Some((next, width))`, packing row `p` also asks for row `p` of `next`
/// (`width` floats, contiguous) to be brought into L2: the next slab of a just-in-time packing
/// loop, whose rows sit in as many different pages as it has rows, where the hardware
/// prefetchers cannot follow. Prefetches never fault, so `next` need not be readable.
///
/// # Safety
/// `b` must be readable at every `(p, j)` with `p < kc`, `j < cols`;
/// `dst.len() >= ceil(cols/NR)·kc·NR`.
#[inline(always)]
pub(crate) unsafe fn pack_b_panels<S: Simd, const NV: usize>(
    s: S,
    b: Strided,
    kc: usize,
    cols: usize,
    prefetch: Option<(Strided, usize)>,
    dst: &mut [f32],
) {
    let nr = NV * S::LANES;
    let panels = cols.div_ceil(nr);
    debug_assert!(dst.len() >= panels * kc * nr);
    if b.rs == 1 && b.cs != 1 {
        // SAFETY: forwarded from the caller.
        return unsafe { pack_b_columns::<S, NV>(s, b, kc, cols, dst) };
    }
    let out = dst.as_mut_ptr();
    for p in 0..kc {
        let src = b.ptr.wrapping_add(p * b.rs);
        if let Some((next, width)) = prefetch {
            let row = next.ptr.wrapping_add(p * next.rs);
            for line in (0..width).step_by(16) {
                prefetch_l2(row.wrapping_add(line));
            }
        }
        for jp in 0..panels {
            let row_out = out.wrapping_add(jp * kc * nr + p * nr);
            let j0 = jp * nr;
            if b.cs != 1 {
                for j in 0..nr {
                    // SAFETY: `(p, j0 + j)` is inside the vouched block when `j0 + j < cols`;
                    // the destination row of panel jp has NR writable floats.
                    unsafe {
                        *row_out.add(j) = if j0 + j < cols {
                            *src.add((j0 + j) * b.cs)
                        } else {
                            0.0
                        };
                    }
                }
                continue;
            }
            if j0 + nr <= cols {
                // A full panel row: plain vector copies, no per-vector edge arithmetic.
                for v in 0..NV {
                    // SAFETY: columns j0 .. j0+NR ≤ cols of row p are inside the vouched
                    // block; the destination row of panel jp has NR writable floats.
                    unsafe {
                        let x = s.load(src.add(j0 + v * S::LANES));
                        s.store(row_out.add(v * S::LANES), x);
                    }
                }
                continue;
            }
            for v in 0..NV {
                let j = j0 + v * S::LANES;
                let n = cols.saturating_sub(j).min(S::LANES);
                // SAFETY: lanes j..j+n < cols of row p are inside the vouched block; the
                // destination row of panel jp has NR writable floats; partial loads zero the
                // lanes past `cols`.
                unsafe {
                    let x = if n == S::LANES {
                        s.load(src.add(j))
                    } else if n > 0 {
                        s.load_partial(src.add(j), n)
                    } else {
                        s.zero()
                    };
                    s.store(row_out.add(v * S::LANES), x);
                }
            }
        }
    }
}

/// [`pack_b_panels`] for column-major B (`b.rs == 1`, as for `x·Wᵀ` with W stored row-major):
/// each LANES-wide strip of a panel is the transpose of LANES contiguous columns, done one
/// LANES×LANES block at a time in registers; partial blocks at the edges go element by
/// element, zero-filling columns past `cols`.
///
/// # Safety
/// As for [`pack_b_panels`].
#[inline(always)]
unsafe fn pack_b_columns<S: Simd, const NV: usize>(
    s: S,
    b: Strided,
    kc: usize,
    cols: usize,
    dst: &mut [f32],
) {
    let lanes = S::LANES;
    let nr = NV * lanes;
    let full_rows = kc / lanes * lanes;
    let out = dst.as_mut_ptr();
    for jp in 0..cols.div_ceil(nr) {
        let panel = out.wrapping_add(jp * kc * nr);
        for v in 0..NV {
            let j0 = jp * nr + v * lanes;
            let strip = panel.wrapping_add(v * lanes);
            let width = cols.saturating_sub(j0).min(lanes);
            let col = |p: usize, c: usize| b.ptr.wrapping_add(p + (j0 + c) * b.cs);
            let first_scalar_row = if width == lanes {
                for p0 in (0..full_rows).step_by(lanes) {
                    // SAFETY: columns j0..j0+LANES ≤ cols and rows p0..p0+LANES ≤ kc are inside
                    // the vouched block; the strip's rows p0.. of the panel are inside `dst`.
                    unsafe { s.transpose_block(col(p0, 0), b.cs, strip.add(p0 * nr), nr) };
                }
                full_rows
            } else {
                0
            };
            for p in first_scalar_row..kc {
                for c in 0..lanes {
                    // SAFETY: `(p, j0 + c)` is inside the vouched block when `c < width`; the
                    // destination is row p of the strip, inside `dst`.
                    unsafe { *strip.add(p * nr + c) = if c < width { *col(p, c) } else { 0.0 } };
                }
            }
        }
    }
}
