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

use crate::arch::Simd;

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

/// Packs rows `0..kc` and columns `0..cols` (≤ NR = NV·LANES) of `b` into one kc×NR
/// micro-panel, with vector copies when `b`'s rows are contiguous.
///
/// # Safety
/// `b` must be readable at every `(p, j)` with `p < kc`, `j < cols`; `dst.len() >= kc*NR`.
#[inline(always)]
pub(crate) unsafe fn pack_b_panel<S: Simd, const NV: usize>(
    s: S,
    b: Strided,
    kc: usize,
    cols: usize,
    dst: &mut [f32],
) {
    let nr = NV * S::LANES;
    debug_assert!(cols <= nr && dst.len() >= kc * nr);
    if b.cs == 1 {
        for p in 0..kc {
            let src = b.ptr.wrapping_add(p * b.rs);
            let out = dst[p * nr..(p + 1) * nr].as_mut_ptr();
            for v in 0..NV {
                let j = v * S::LANES;
                let n = cols.saturating_sub(j).min(S::LANES);
                // SAFETY: lanes `j..j+n` of row `p` are inside the vouched block; `out` has `nr`
                // writable floats; partial loads zero the lanes past `cols`.
                unsafe {
                    let x = if n == S::LANES {
                        s.load(src.add(j))
                    } else if n > 0 {
                        s.load_partial(src.add(j), n)
                    } else {
                        s.zero()
                    };
                    s.store(out.add(j), x);
                }
            }
        }
    } else {
        for p in 0..kc {
            let out = &mut dst[p * nr..(p + 1) * nr];
            let src = b.ptr.wrapping_add(p * b.rs);
            for (j, o) in out.iter_mut().enumerate() {
                *o = if j < cols {
                    // SAFETY: `(p, j)` with `j < cols` is inside the vouched block.
                    unsafe { *src.add(j * b.cs) }
                } else {
                    0.0
                };
            }
        }
    }
}
