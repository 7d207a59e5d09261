//! The MR×NR register-blocked micro-kernel: `C_tile := α·A_panel·B_panel + β·C_tile`.
//!
//! ```text
//!                 B micro-panel: kc × NR (NV vectors per row, from L1)
//!                 ┌──────────┬──────────┐
//!                 │ b[p, 0..]│ b[p, 16..]│   ← loaded once per p
//!                 └──────────┴──────────┘
//!  A micro-panel  ┌─────────────────────┐
//!  MR × kc        │ acc[0][0]  acc[0][1] │ ← a[0,p] broadcast, NV FMAs
//!  (from L2,      │ acc[1][0]  acc[1][1] │
//!   one broadcast │    …          …      │
//!   per row)      │ acc[MR-1][0] …       │
//!                 └─────────────────────┘
//! ```
//! The MR·NV accumulators stay in registers for the whole k loop (AVX-512: 12×2 = 24 of 32
//! zmm). When β = 0, C is never read, so NaN or garbage in C cannot leak into the result.
//! Full-width tiles of row-contiguous C (any number of valid rows) are updated with vector
//! loads and stores; right-edge tiles and other strides go through a small stack tile and are
//! written element by element, so nothing outside the `rows × cols` tile is ever touched.
//! B is a packed panel, or B's own rows read in place ([`BPanel`]).

use crate::arch::{Simd, prefetch, prefetch_l2};

/// Where a micro-tile's results go.
#[derive(Clone, Copy)]
pub(crate) struct TileOut {
    /// Element (0, 0) of the tile in C.
    pub c: *mut f32,
    pub rsc: usize,
    pub csc: usize,
    /// Valid rows and columns of the tile (≤ MR, ≤ NR).
    pub rows: usize,
    pub cols: usize,
    pub alpha: f32,
    pub beta: f32,
}

/// Where the micro-kernel reads B: row `p` of the kc × NR panel starts at `ptr + p·rs`.
#[derive(Clone, Copy)]
pub(crate) struct BPanel {
    pub ptr: *const f32,
    /// `NR` for a packed panel; B's own row stride when B is read in place.
    pub rs: usize,
    /// How far ahead of each row (in floats) the prefetching modes of [`BRead`] ask for
    /// lines as the row is used: for B read in place, the next tiles' lines along the same
    /// row; for a panel packed ahead of time, lines further on in the packed stream.
    pub ahead: usize,
}

impl BPanel {
    /// A packed kc × NR panel.
    pub(crate) fn packed(ptr: *const f32, nr: usize) -> Self {
        Self {
            ptr,
            rs: nr,
            ahead: 0,
        }
    }
}

/// How [`microkernel`] reads B (a const parameter, so each nest's k loop carries only what it
/// needs).
pub(crate) type BRead = u8;
/// A packed panel just packed into cache: stride NR, `b.rs` and `b.ahead` ignored, no
/// prefetch.
pub(crate) const PACKED: BRead = 0;
/// A packed panel streaming from memory (packed ahead of time): stride NR, and each row's
/// lines `b.ahead` floats further on (the rest of the panel, then what follows it in memory:
/// usually the next panel) are prefetched into L1.
pub(crate) const PACKED_AHEAD_L1: BRead = 1;
/// As [`PACKED_AHEAD_L1`], prefetching into L2 only: for panels that many A panels reuse,
/// whose L1 space the panel in use needs.
pub(crate) const PACKED_AHEAD_L2: BRead = 2;
/// B's rows in place, `b.rs` apart, with the L1 prefetch when `b.ahead` is nonzero.
pub(crate) const IN_PLACE: BRead = 3;

/// Runs one micro-tile, reading B as `B_READ` says.
///
/// # Safety
/// `a` holds `MR·kc` readable floats (a packed panel), and `b.ptr + p·rs` holds `NV·LANES`
/// readable floats for every `p < kc`, where `rs` is `b.rs` for [`IN_PLACE`] and NR
/// otherwise; `out.c` is valid for reads and writes at every `(i, j)` with `i < rows`,
/// `j < cols`, and no other thread accesses those elements during the call.
#[inline(always)]
pub(crate) unsafe fn microkernel<S: Simd, const MR: usize, const NV: usize, const B_READ: BRead>(
    s: S,
    kc: usize,
    a: *const f32,
    b: BPanel,
    out: TileOut,
) {
    let lanes = S::LANES;
    let nr = NV * lanes;
    // Ask for the C tile now so that its lines arrive during the k loop: once C outgrows the
    // caches (2048² floats is 16 MiB, re-read for every kc block of k), the update at the end
    // otherwise waits on memory. Paired in-process runs: 2048³ +1–14%, 1024³ and 512³ ±1%.
    if out.csc == 1 {
        for i in 0..out.rows {
            let row = out.c.wrapping_add(i * out.rsc);
            for v in (0..out.cols).step_by(16) {
                prefetch(row.wrapping_add(v));
            }
        }
    }
    let mut acc = [[s.zero(); NV]; MR];
    #[inline(always)]
    fn step<S: Simd, const MR: usize, const NV: usize>(
        s: S,
        acc: &mut [[S::V; NV]; MR],
        ap: *const f32,
        bp: *const f32,
    ) {
        let mut bv = [s.zero(); NV];
        for (v, x) in bv.iter_mut().enumerate() {
            // SAFETY: the caller passes row pointers inside the packed panels.
            *x = unsafe { s.load(bp.add(v * S::LANES)) };
        }
        for (i, row) in acc.iter_mut().enumerate() {
            // SAFETY: each packed A row holds MR floats.
            let ai = s.splat(unsafe { *ap.add(i) });
            for (v, x) in row.iter_mut().enumerate() {
                *x = s.fmadd(ai, bv[v], *x);
            }
        }
    }
    let rs = if B_READ == IN_PLACE { b.rs } else { nr };
    let prefetch_ahead = |p: usize| {
        // A hint, never a fault, wherever it points.
        let row = b.ptr.wrapping_add(p * rs + b.ahead);
        if B_READ == PACKED_AHEAD_L1 || (B_READ == IN_PLACE && b.ahead != 0) {
            for v in 0..NV {
                prefetch(row.wrapping_add(v * lanes));
            }
        } else if B_READ == PACKED_AHEAD_L2 {
            for v in 0..NV {
                prefetch_l2(row.wrapping_add(v * lanes));
            }
        }
    };
    let mut p = 0;
    while p + 2 <= kc {
        prefetch_ahead(p);
        prefetch_ahead(p + 1);
        // SAFETY: rows p and p + 1 < kc of both panels are in bounds.
        unsafe {
            step::<S, MR, NV>(s, &mut acc, a.add(p * MR), b.ptr.add(p * rs));
            step::<S, MR, NV>(s, &mut acc, a.add((p + 1) * MR), b.ptr.add((p + 1) * rs));
        }
        p += 2;
    }
    if p < kc {
        // SAFETY: `p < kc`, so row `p` of both panels is in bounds.
        unsafe { step::<S, MR, NV>(s, &mut acc, a.add(p * MR), b.ptr.add(p * rs)) };
    }

    let alpha = s.splat(out.alpha);
    // Full-width rows of row-contiguous C (all tiles but the right edge and other strides),
    // however many of the MR rows are valid: vector loads and stores.
    if out.cols == nr && out.csc == 1 {
        let beta = s.splat(out.beta);
        // A test per row rather than `take(rows)`: a dynamic trip count over `acc` made LLVM
        // keep the accumulators in memory for the whole k loop (2× slower at 512³).
        for (i, row) in acc.iter().enumerate() {
            if i >= out.rows {
                continue;
            }
            for (v, x) in row.iter().enumerate() {
                // SAFETY: the tile is NR wide and row-contiguous and `i < rows`, so these NR
                // floats of row `i` are inside it; the caller gave us exclusive access.
                unsafe {
                    let cp = out.c.add(i * out.rsc + v * lanes);
                    let r = if out.beta == 0.0 {
                        s.mul(alpha, *x)
                    } else {
                        s.fmadd(beta, s.load(cp), s.mul(alpha, *x))
                    };
                    s.store(cp, r);
                }
            }
        }
    } else {
        let mut tile = [[0.0f32; 64]; MR];
        debug_assert!(nr <= 64);
        for (i, row) in acc.iter().enumerate() {
            for (v, x) in row.iter().enumerate() {
                // SAFETY: `tile[i]` has 64 ≥ NR floats.
                unsafe { s.store(tile[i].as_mut_ptr().add(v * lanes), s.mul(alpha, *x)) };
            }
        }
        for (i, trow) in tile.iter().enumerate().take(out.rows) {
            for (j, t) in trow.iter().enumerate().take(out.cols) {
                // SAFETY: `(i, j)` is inside the valid tile the caller vouched for.
                unsafe {
                    let cp = out.c.add(i * out.rsc + j * out.csc);
                    *cp = if out.beta == 0.0 {
                        *t
                    } else {
                        out.beta * *cp + *t
                    };
                }
            }
        }
    }
}
