//! The loop nest for short products (all m rows in one L2 block of A: prefill chunks, batched
//! decode): B packed just in time, one slab at a time, between the micro-kernel calls.
//!
//! ```text
//! jc: n in steps sized so that the m × nc block of C stays in L2 across the k loop
//!  pc: k in steps of kc      pack A[.., pc..] → m×kc (all of it; L2-resident)
//!   thread chunk of NR panels
//!    slab of SLAB_PANELS:    pack B[pc.., slab] → kc × SLAB_PANELS·NR (L1/L2), while asking
//!                            for the next slab's rows to be prefetched into L2
//!     jr: NR panels of the slab
//!      ir: MR panels of A    micro-kernel
//! ```
//! With few rows, each packed B element is used only m/MR times, so the blocked nest's separate
//! packing phase (a full kc × nc copy of B that streams from memory while no FMA runs) costs
//! a large share of the product; here the copy is a small slab that the next micro-kernel calls
//! consume from cache, and the memory stream of B overlaps them. Each output element still sees
//! the same sequence of micro-kernel calls whatever the thread count.
//!
//! Products of up to 16 rows (AVX-512; 6 on AVX2) against row-contiguous B take the direct nest
//! instead (B read in place; see `direct.rs`); this nest serves the rest.
//!
//! Measured against the blocked nest on 4096×4096 B, in one process with the two alternating
//! call by call (median of the paired ratios, busy shared machine): m = 16 1.2–1.4× faster on
//! one thread and 1.8–1.9× on two; m = 64 and 128 1.05–1.1×; m = 240 within ±3%.

use super::blocking::Blocking;
use super::loops::{Out, column_of_tiles, pack_a_block};
use super::microkernel::{BPanel, PACKED};
use super::pack::{Strided, pack_b_panels};
use super::workspace::GemmWorkspace;
use crate::arch::Simd;
use crate::exec::Exec;

/// NR panels packed at once: a 256 × 128 × 4 B = 128 KiB slab, read from B as 512-byte runs
/// per row. Measured at 16×4096×4096: 1 panel (an L1-resident slab) is 2.3× slower with one
/// slab of prefetch lookahead and no faster with four; 2, 8 and 16 panels no better than 4.
const SLAB_PANELS: usize = 4;
/// Bytes of C each thread keeps in its L2 across the k loop (half of this CPU's 2 MiB L2, next
/// to the ≤ 240 KiB packed A block and the 128 KiB slab). Measured against 512 KiB: equal on one
/// thread, 4% faster on two at m = 240 (fewer C blocks, so fewer repacks of A).
const C_BLOCK_BYTES: usize = 1024 * 1024;

/// Whether the streamed nest serves an `m`-row product with this blocking and B layout: all
/// rows fit one L2 block of A, and B's rows or columns are contiguous (row-contiguous slabs are
/// also prefetched; column-contiguous ones are runs the hardware prefetchers follow).
pub(crate) fn applies(blk: &Blocking, m: usize, b: &Strided) -> bool {
    m <= blk.mc && (b.cs == 1 || b.rs == 1)
}

/// Columns of C per jc block for `m` rows: C's block fills [`C_BLOCK_BYTES`], in whole slabs.
fn block_cols(m: usize, nr: usize) -> usize {
    let slab = SLAB_PANELS * nr;
    (C_BLOCK_BYTES / (4 * m.max(1))).max(slab) / slab * slab
}

/// `C = α·A·B + β·C` for `m, n, k ≥ 1` with [`applies`] true.
///
/// # Safety
/// As for [`super::loops::gemm_blocked`], and B's rows or columns contiguous (`b.cs == 1` or
/// `b.rs == 1`).
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_streamed<S: Simd, const MR: usize, const NV: usize>(
    s: S,
    exec: &Exec,
    blk: &Blocking,
    (m, n, k): (usize, usize, usize),
    alpha: f32,
    a: Strided,
    b: Strided,
    beta: f32,
    out: Out,
    ws: &mut GemmWorkspace,
) {
    debug_assert!((blk.mr, blk.nv) == (MR, NV) && applies(blk, m, &b));
    let nr = NV * S::LANES;
    let kc_max = blk.kc.min(k);
    let a_buf = ws.a.get(m.div_ceil(MR) * MR * kc_max);
    let slab_len = SLAB_PANELS * kc_max * nr;
    let threads = exec.threads().max(1);
    let b_buf = ws.b.get(threads * slab_len);
    // Each thread keeps its share of the C block in its own L2.
    let nc_max = block_cols(m, nr) * threads;

    // The NR panels of thread chunk `chunk` in the C block that starts at column `jc`.
    let chunk_panels = |jc: usize, chunk: usize| {
        let n_panels = nc_max.min(n - jc).div_ceil(nr);
        let chunks = threads.min(n_panels);
        (chunk * n_panels / chunks)..((chunk + 1) * n_panels / chunks)
    };
    // Where the next (jc, pc) step after this one starts, if any.
    let next_step = |jc: usize, pc: usize| {
        if pc + blk.kc < k {
            Some((jc, pc + blk.kc))
        } else {
            (jc + nc_max < n).then_some((jc + nc_max, 0))
        }
    };
    // The slab `ahead` slabs after the one at panel `first` of step (jc, pc) in thread chunk
    // `chunk`'s sequence (across steps), as the B view of its first row and its width.
    let slab_ahead = |chunk: usize, (mut jc, mut pc, mut first): (usize, usize, usize), ahead| {
        for _ in 0..ahead {
            if first + SLAB_PANELS < chunk_panels(jc, chunk).end {
                first += SLAB_PANELS;
            } else {
                (jc, pc) = next_step(jc, pc)?;
                first = chunk_panels(jc, chunk).start;
            }
        }
        let count = SLAB_PANELS.min(chunk_panels(jc, chunk).end - first);
        Some((b.offset(pc, jc + first * nr), count * nr))
    };

    for jc in (0..n).step_by(nc_max) {
        let nc = nc_max.min(n - jc);
        let n_panels = nc.div_ceil(nr);
        let chunks = threads.min(n_panels);
        for pc in (0..k).step_by(blk.kc) {
            let kc = blk.kc.min(k - pc);
            let beta = if pc == 0 { beta } else { 1.0 };
            // SAFETY: columns pc..pc+kc lie inside `a`'s m × k.
            unsafe { pack_a_block::<MR>(exec, a.offset(0, pc), m, kc, a_buf) };
            let a_packed = &a_buf[..];
            exec.for_each_chunk_mut(&mut b_buf[..chunks * slab_len], slab_len, |chunk, slab| {
                let panels = chunk_panels(jc, chunk);
                s.vectorize(
                    #[inline(always)]
                    || {
                        for first in panels.clone().step_by(SLAB_PANELS) {
                            let count = SLAB_PANELS.min(panels.end - first);
                            let j0 = first * nr;
                            let cols = (count * nr).min(nc - j0);
                            let src = b.offset(pc, jc + j0);
                            // Measured: prefetching 2 or 3 slabs ahead instead of 1 changes
                            // nothing; not prefetching costs 2–6%.
                            let next = slab_ahead(chunk, (jc, pc, first), 1);
                            // SAFETY: rows pc..pc+kc and columns jc+j0 .. +cols lie inside B;
                            // the slab holds SLAB_PANELS panels of kc·NR floats.
                            unsafe { pack_b_panels::<S, NV>(s, src, kc, cols, next, slab) };
                            for jp in 0..count {
                                let cols = nr.min(cols - jp * nr);
                                let block = out.at(0, jc + j0 + jp * nr, (m, cols), alpha, beta);
                                // SAFETY: A is packed for all m rows and the slab holds panel
                                // jp; the block lies inside C and belongs to this chunk alone.
                                unsafe {
                                    column_of_tiles::<S, MR, NV, PACKED>(
                                        s,
                                        kc,
                                        a_packed.as_ptr(),
                                        BPanel::packed(slab[jp * kc * nr..].as_ptr(), nr),
                                        block,
                                    )
                                };
                            }
                        }
                    },
                );
            });
        }
    }
}
