//! The BLIS loop nest around the micro-kernel, and its threading.
//!
//! ```text
//! jc: n in steps of nc      pack B[pc.., jc..] → kc×nc (threads split the NR panels)
//!  pc: k in steps of kc
//!   ic × jr-chunk tasks     threads split the output into (mc rows × NR-panel range) tasks;
//!                           with one task per ic block, each packs its mc×kc block of A just
//!                           before its jr loop, otherwise A[.., pc..] is packed up front
//!    jr: NR panels          B micro-panel stays in L1
//!     ir: MR panels         A micro-panels stream from the L2-resident mc×kc block
//!      micro-kernel
//! ```
//! The k loop (pc) is never split: every output element sees the same sequence of
//! micro-kernel calls whatever the thread count, so results are bit-identical across thread
//! counts. mc is always a multiple of MR and tasks start on MR/NR boundaries for that reason.

use super::blocking::Blocking;
use super::microkernel::{BPanel, BRead, PACKED, PACKED_AHEAD_L2, TileOut, microkernel};
use super::pack::{Strided, pack_a_panel, pack_b_panels};
use super::workspace::GemmWorkspace;
use crate::arch::Simd;
use crate::exec::{Exec, SharedMut};
use std::ops::Range;

/// The strided output of a blocked product.
#[derive(Clone, Copy)]
pub(crate) struct Out {
    pub c: SharedMut,
    pub rsc: usize,
    pub csc: usize,
}

impl Out {
    /// The `rows × cols` block of C at `(i, j)`, as the tile description of its top tile.
    pub(crate) fn at(
        self,
        i: usize,
        j: usize,
        (rows, cols): (usize, usize),
        alpha: f32,
        beta: f32,
    ) -> TileOut {
        TileOut {
            c: self.c.at(i * self.rsc + j * self.csc),
            rsc: self.rsc,
            csc: self.csc,
            rows,
            cols,
            alpha,
            beta,
        }
    }
}

/// Packs all `m` rows of the `m × kc` block `a` into MR×kc micro-panels, threads splitting them.
///
/// # Safety
/// `a` must be readable on `m × kc`; `a_buf` holds at least `ceil(m/MR)·MR·kc` floats.
pub(crate) unsafe fn pack_a_block<const MR: usize>(
    exec: &Exec,
    a: Strided,
    m: usize,
    kc: usize,
    a_buf: &mut [f32],
) {
    let m_panels = m.div_ceil(MR);
    exec.for_each_chunk_mut(&mut a_buf[..m_panels * MR * kc], MR * kc, |ip, dst| {
        let rows = MR.min(m - ip * MR);
        // SAFETY: rows ip·MR.. (< m) lie inside the caller's m × kc block.
        unsafe { pack_a_panel::<MR>(a.offset(ip * MR, 0), rows, kc, dst) };
    });
}

/// Runs the micro-kernel down one column of tiles: `block.rows` rows (MR at a time, from the
/// packed A starting at `a_packed`) against one kc×NR panel of B, read as `B_READ` says (one
/// micro-kernel instantiation per loop: a loop that mixed a prefetching first tile with plain
/// ones compiled 1.7–2.4× slower).
///
/// # Safety
/// `a_packed` holds `ceil(block.rows/MR)·MR·kc` floats and `b` is a panel of kc rows of NR
/// readable floats as [`microkernel`] requires for `B_READ`; the block lies inside C and no
/// other thread touches it.
#[inline(always)]
pub(crate) unsafe fn column_of_tiles<
    S: Simd,
    const MR: usize,
    const NV: usize,
    const B_READ: BRead,
>(
    s: S,
    kc: usize,
    a_packed: *const f32,
    b: BPanel,
    block: TileOut,
) {
    for ir in (0..block.rows).step_by(MR) {
        let tile = TileOut {
            c: block.c.wrapping_add(ir * block.rsc),
            rows: MR.min(block.rows - ir),
            ..block
        };
        // SAFETY: the caller vouches for the panels and the block; this tile is rows
        // ir..ir+MR of it.
        unsafe { microkernel::<S, MR, NV, B_READ>(s, kc, a_packed.add(ir * kc), b, tile) };
    }
}

/// [`column_of_tiles`] against a freshly packed panel, whose first tile also asks the next
/// panel of the block (`kc·NR` floats on) into L2: blocks of B larger than L2 (kc × nc is
/// 4 MiB; 2 MiB at n = 2048) would otherwise bring each panel from the LLC on its first
/// tile's demand misses. Paired in-process, one thread: 0.96–0.98× the time at 512³–2048³.
///
/// # Safety
/// As for [`column_of_tiles`] with `B_READ = PACKED` and `b` the panel (the prefetch is a
/// hint, so the panel may be the block's last).
#[inline(always)]
unsafe fn packed_column<S: Simd, const MR: usize, const NV: usize>(
    s: S,
    kc: usize,
    a_packed: *const f32,
    b: *const f32,
    block: TileOut,
) {
    let nr = NV * S::LANES;
    let panel = BPanel::packed(b, nr);
    // SAFETY: the caller vouches for the panels and the block; the first tile is rows 0..MR
    // of it and the rest rows MR.., whose packed A starts MR·kc floats on.
    unsafe {
        if block.rows <= MR {
            return column_of_tiles::<S, MR, NV, PACKED>(s, kc, a_packed, panel, block);
        }
        let ahead = BPanel {
            ahead: kc * nr,
            ..panel
        };
        microkernel::<S, MR, NV, PACKED_AHEAD_L2>(
            s,
            kc,
            a_packed,
            ahead,
            TileOut { rows: MR, ..block },
        );
        let rest = TileOut {
            c: block.c.add(MR * block.rsc),
            rows: block.rows - MR,
            ..block
        };
        column_of_tiles::<S, MR, NV, PACKED>(s, kc, a_packed.add(MR * kc), panel, rest);
    }
}

/// How the m rows and the NR panels of an nc block are cut into tasks for `threads` threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TaskGrid {
    /// Rows per ic block (a multiple of MR).
    pub mc: usize,
    /// Number of ic blocks.
    pub ic_blocks: usize,
    /// Number of chunks the NR panels of one nc block are split into.
    pub jr_chunks: usize,
}

impl TaskGrid {
    pub(crate) fn new(blk: &Blocking, m: usize, n_panels: usize, threads: usize) -> Self {
        let m_panels = m.div_ceil(blk.mr);
        let mut ic_blocks = m.div_ceil(blk.mc);
        // Split rows only when there are blocks for every thread; otherwise split columns, so
        // that a skinny product's threads each stream their own part of B.
        if threads > 1 && ic_blocks >= threads {
            // A multiple of the thread count, so no thread idles in the last round.
            ic_blocks = ic_blocks.div_ceil(threads) * threads;
        }
        let ic_blocks = ic_blocks.clamp(1, m_panels.max(1));
        let mc = m_panels.div_ceil(ic_blocks) * blk.mr;
        let ic_blocks = m.div_ceil(mc).max(1);
        let jr_chunks = if ic_blocks >= threads {
            1
        } else {
            threads.div_ceil(ic_blocks).min(n_panels.max(1))
        };
        Self {
            mc,
            ic_blocks,
            jr_chunks,
        }
    }
}

/// `C = α·A·B + β·C` for `m, n, k ≥ 1`, through packing and the micro-kernel.
///
/// # Safety
/// `a` is readable on `m × k`, `b` on `k × n`, `out` readable and writable on `m × n` with
/// pairwise distinct element addresses, and nothing else accesses `out` during the call.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_blocked<S: Simd, const MR: usize, const NV: usize>(
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
    debug_assert_eq!((blk.mr, blk.nv), (MR, NV));
    let nr = NV * S::LANES;
    let kc_max = blk.kc.min(k);
    let nc_max = blk.nc.min(n.div_ceil(nr) * nr);
    let b_buf = ws.b.get(nc_max.div_ceil(nr) * nr * kc_max);

    for jc in (0..n).step_by(blk.nc) {
        let nc = blk.nc.min(n - jc);
        let n_panels = nc.div_ceil(nr);
        let grid = TaskGrid::new(blk, m, n_panels, exec.threads());
        for pc in (0..k).step_by(blk.kc) {
            let kc = blk.kc.min(k - pc);
            let beta = if pc == 0 { beta } else { 1.0 };

            // Each thread packs a contiguous range of panels, row by row, so that it reads its
            // part of every row of B as one sequential run (a memory stream, not kc short
            // reads a leading dimension apart per panel).
            let per_thread = n_panels.div_ceil(exec.threads().max(1));
            exec.for_each_chunk_mut(
                &mut b_buf[..n_panels * kc * nr],
                per_thread * kc * nr,
                |chunk, dst| {
                    let jp0 = chunk * per_thread;
                    let cols = (nc - jp0 * nr).min(per_thread * nr);
                    let src = b.offset(pc, jc + jp0 * nr);
                    // SAFETY: rows pc..pc+kc and columns jc+jp0·NR .. + cols lie inside B's
                    // k × n; `dst` holds the chunk's ceil(cols/NR) panels of kc·NR floats.
                    s.vectorize(|| unsafe { pack_b_panels::<S, NV>(s, src, kc, cols, None, dst) });
                },
            );
            let b_packed = &b_buf[..];
            // The tiles of rows ic.. (A packed at `a_block`) against NR panels `jp_range`.
            let run = |ic: usize, rows: usize, a_block: &[f32], jp_range: Range<usize>| {
                s.vectorize(
                    #[inline(always)]
                    || {
                        for jp in jp_range {
                            let cols = nr.min(nc - jp * nr);
                            let panel_out = out.at(ic, jc + jp * nr, (rows, cols), alpha, beta);
                            // SAFETY: the packed panels hold rows·kc and kc·NR floats; the
                            // block lies inside C, and tasks own disjoint (ic, jr) ranges.
                            unsafe {
                                packed_column::<S, MR, NV>(
                                    s,
                                    kc,
                                    a_block.as_ptr(),
                                    b_packed[jp * kc * nr..].as_ptr(),
                                    panel_out,
                                )
                            };
                        }
                    },
                )
            };
            if grid.jr_chunks == 1 {
                // One task per ic block: it packs its own block of A right before using it, so
                // the block is hot in L2 (packing all of A first let the early blocks fall to
                // L3 once m·kc outgrew L2: 3–5% at m ≥ 2048, paired in-process A/B).
                let block = grid.mc * kc;
                let a_buf = ws.a.get(grid.ic_blocks * block);
                exec.for_each_chunk_mut(a_buf, block, |ic_index, a_block| {
                    let ic = ic_index * grid.mc;
                    let rows = grid.mc.min(m - ic);
                    for ip in 0..rows.div_ceil(MR) {
                        let src = a.offset(ic + ip * MR, pc);
                        // SAFETY: rows ic + ip·MR.. (< m) and columns pc..pc+kc lie inside
                        // `a`; the block holds mc/MR panels of MR·kc floats.
                        unsafe {
                            pack_a_panel::<MR>(
                                src,
                                MR.min(rows - ip * MR),
                                kc,
                                &mut a_block[ip * MR * kc..],
                            )
                        };
                    }
                    run(ic, rows, a_block, 0..n_panels);
                });
            } else {
                // Several tasks share each ic block: A is packed once, up front.
                let a_buf = ws.a.get(m.div_ceil(MR) * MR * kc);
                // SAFETY: columns pc..pc+kc lie inside `a`'s m × k.
                unsafe { pack_a_block::<MR>(exec, a.offset(0, pc), m, kc, a_buf) };
                let a_packed = &a_buf[..];
                exec.for_each_index(grid.ic_blocks * grid.jr_chunks, |task| {
                    let (ic_index, chunk) = (task / grid.jr_chunks, task % grid.jr_chunks);
                    let ic = ic_index * grid.mc;
                    let jp_range = (chunk * n_panels / grid.jr_chunks)
                        ..((chunk + 1) * n_panels / grid.jr_chunks);
                    run(ic, grid.mc.min(m - ic), &a_packed[ic * kc..], jp_range);
                });
            }
        }
    }
}
