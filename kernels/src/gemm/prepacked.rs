//! B packed once, ahead of time, and the loop nest that consumes it.
//!
//! An inference engine multiplies by the same weight matrices on every step. [`PackedB`] holds
//! such a B in the micro-kernel's own layout, so [`gemm_prepacked`] never packs B again:
//!
//! ```text
//! packed B: for each kc block of rows (pc), for each NR panel (jp): a kc × NR micro-panel
//!           (the last panel zero-padded past n), all of one pc block's panels contiguous
//!
//! jc: n in steps sized so that each thread's part of the mc × nc block of C stays in its L2
//!  ic: m in steps of mc      threads take whole ic blocks when there are enough of them,
//!                            else each takes a chunk of the block's NR panels
//!   pc: k in steps of kc     pack A[ic.., pc..] → mc×kc (by each thread, L2-resident)
//!    jr: NR panels           the packed micro-panel, read straight from the PackedB
//!     ir: MR panels          micro-kernel
//! ```
//! Up to four rows take a GEMV over the panels instead (`rows_prepacked`). The nest is the
//! streamed nest without its slab packing: measured in that nest, packing B did
//! not overlap the micro-kernel at all (pack-only and compute-only times added up to the full
//! time), and a prefill-shaped product spent 15–20% of its time there. Each thread reads its
//! panels in memory order (kc·NR floats each: 32 KiB on AVX-512), prefetching 16 KiB ahead.
//!
//! The layout depends on the ISA path (its NR and kc), so a `PackedB` remembers the path it was
//! packed for and [`gemm_prepacked`] refuses an `Exec` on another path. Results are
//! bit-identical for every thread count (how k is split into blocks and partial sums never
//! depends on it), though not to [`gemm`]'s
//! (other paths sum in another order).
//!
//! [`gemm`]: super::gemm

use super::blocking::{self, Blocking};
use super::loops::{Out, TaskGrid, column_of_tiles};
use super::microkernel::{BPanel, PACKED_AHEAD_L1, PACKED_AHEAD_L2, TileOut};
use super::pack::{Strided, pack_a_panel, pack_b_panels};
use super::workspace::{AlignedBuf, GemmWorkspace};
use super::{contiguous_rows, prologue, strided_of};
use crate::arch::{Isa, Simd, with_simd};
use crate::buffer::LargeBuffer;
use crate::error::{KernelError, Result};
use crate::exec::{Exec, SharedMut};
use crate::view::{MatMut, MatRef};
use std::ops::Range;

/// Bytes of C each thread keeps in its L2 across the k loop (as in the streamed nest).
const C_BLOCK_BYTES: usize = 1024 * 1024;

/// A k × n matrix B packed for [`gemm_prepacked`] on one ISA path: pack the weights once
/// (on huge pages where the OS offers them), then multiply by them any number of times.
///
/// ```
/// use kernels::{Exec, GemmWorkspace, MatMut, MatRef, PackedB, gemm_prepacked};
/// let w = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]; // 2×3 row-major
/// let exec = Exec::new();
/// let packed = PackedB::new(&exec, MatRef::row_major(&w, 2, 3)?)?;
/// let x = [1.0, 1.0, 0.0, 2.0]; // two tokens of width 2
/// let mut y = [0.0; 6];
/// gemm_prepacked(&exec, 1.0, MatRef::row_major(&x, 2, 2)?, &packed, 0.0,
///                &mut MatMut::row_major(&mut y, 2, 3)?, &mut GemmWorkspace::new())?;
/// assert_eq!(y, [5.0, 7.0, 9.0, 8.0, 10.0, 12.0]);
/// # Ok::<(), kernels::KernelError>(())
/// ```
pub struct PackedB {
    /// The panels, starting at element `start` (the first 64-byte boundary of `data`).
    data: LargeBuffer<f32>,
    start: usize,
    k: usize,
    n: usize,
    isa: Isa,
    kc: usize,
    nr: usize,
}

impl PackedB {
    /// Packs `b` (any strides) for the ISA path of `exec`, using its threads.
    /// [`KernelError::SizeOverflow`] when the packed size overflows.
    pub fn new(exec: &Exec, b: MatRef<'_>) -> Result<Self> {
        let isa = exec.isa();
        let blk = layout_of(isa);
        let nr = blk.nv * isa.f32_lanes();
        let (k, n) = (b.rows(), b.cols());
        let len = n
            .div_ceil(nr)
            .checked_mul(nr)
            .and_then(|cols| cols.checked_mul(k))
            .and_then(|l| l.checked_add(16))
            .ok_or(KernelError::SizeOverflow)?;
        let mut data = LargeBuffer::<f32>::zeroed(len)?;
        // Whole panels start on cache lines (huge-page mappings already do; heap ones may not).
        let start = data.as_ptr().align_offset(64).min(15);
        pack_panels(exec, &blk, strided_of(&b), (k, n), &mut data[start..]);
        Ok(Self {
            data,
            start,
            k,
            n,
            isa,
            kc: blk.kc,
            nr,
        })
    }

    /// Rows of B (the inner dimension of the product).
    pub fn k(&self) -> usize {
        self.k
    }

    /// Columns of B.
    pub fn n(&self) -> usize {
        self.n
    }

    /// The ISA path this B was packed for; [`gemm_prepacked`] runs only on it.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// Bytes held: the panels, padded to whole NR columns, and up to 64 bytes of alignment.
    pub fn bytes(&self) -> usize {
        self.data.len() * 4
    }

    /// The packed kc × NR panel `jp` of the kc block starting at row `pc`.
    fn panel(&self, pc: usize, jp: usize) -> *const f32 {
        self.layout().panel(pc, jp)
    }

    fn layout(&self) -> PanelLayout {
        PanelLayout {
            base: self.data[self.start..].as_ptr(),
            k: self.k,
            n: self.n,
            kc: self.kc,
            nr: self.nr,
        }
    }
}

/// Panels in [`PackedB`]'s layout, wherever they are held (a `PackedB`, or a workspace that
/// [`pack_panels`] filled for one call).
#[derive(Clone, Copy)]
pub(crate) struct PanelLayout {
    pub base: *const f32,
    pub k: usize,
    pub n: usize,
    pub kc: usize,
    pub nr: usize,
}

// SAFETY: a `PanelLayout` points into panels that are only read while it is in use, and
// outlive it (the `PackedB` or workspace it was made from is borrowed for the call).
unsafe impl Send for PanelLayout {}
// SAFETY: as above.
unsafe impl Sync for PanelLayout {}

impl PanelLayout {
    /// Where panel `jp` of the k block starting at row `pc` starts.
    fn panel(&self, pc: usize, jp: usize) -> *const f32 {
        let kc = self.kc.min(self.k - pc);
        let panels = self.n.div_ceil(self.nr);
        self.base.wrapping_add((pc * panels + jp * kc) * self.nr)
    }
}

/// Packs the k × n matrix `sb` into `packed` in [`PackedB`]'s layout for `blk` (its kc and NR),
/// threads splitting each kc block's panels.
pub(crate) fn pack_panels(
    exec: &Exec,
    blk: &Blocking,
    sb: Strided,
    (k, n): (usize, usize),
    packed: &mut [f32],
) {
    let isa = exec.isa();
    let nr = blk.nv * isa.f32_lanes();
    let panels = n.div_ceil(nr);
    for pc in (0..k).step_by(blk.kc) {
        let kc = blk.kc.min(k - pc);
        let block = &mut packed[pc * panels * nr..(pc + kc) * panels * nr];
        // Each thread packs a contiguous range of panels, row by row (long sequential runs
        // of each row of a row-major B).
        let per_thread = panels.div_ceil(exec.threads().max(1)).max(1);
        exec.for_each_chunk_mut(block, per_thread * kc * nr, |chunk, dst| {
            let jp0 = chunk * per_thread;
            let cols = (n - jp0 * nr).min(per_thread * nr);
            let src = sb.offset(pc, jp0 * nr);
            with_simd!(isa, |s| match blk.nv {
                // SAFETY: rows pc..pc+kc and columns jp0·NR .. + cols lie inside the
                // k × n view the caller vouches for; `dst` holds the chunk's ceil(cols/NR)
                // panels of kc·NR floats.
                2 => s.vectorize(|| unsafe { pack_b_panels::<_, 2>(s, src, kc, cols, None, dst) }),
                other => unreachable!("no packing instantiated for NV = {other}"),
            });
        });
    }
}

impl Clone for PackedB {
    /// A copy whose panels start on its own first 64-byte boundary. Aborts if memory is
    /// exhausted, as cloning a `Vec` does.
    fn clone(&self) -> Self {
        let used = self.data.len() - 16;
        let mut data =
            LargeBuffer::<f32>::zeroed(self.data.len()).expect("a buffer of this length exists");
        let start = data.as_ptr().align_offset(64).min(15);
        data[start..start + used].copy_from_slice(&self.data[self.start..self.start + used]);
        Self {
            data,
            start,
            ..*self
        }
    }
}

impl std::fmt::Debug for PackedB {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackedB")
            .field("k", &self.k)
            .field("n", &self.n)
            .field("isa", &self.isa)
            .field("bytes", &self.bytes())
            .finish()
    }
}

/// The register blocking whose NR and kc the packed layout of `isa` follows (every tile of an
/// ISA shares them, so any tile can consume the panels).
fn layout_of(isa: Isa) -> Blocking {
    let tiles = blocking::candidates(isa);
    debug_assert!(
        tiles
            .iter()
            .all(|t| (t.nv, t.kc) == (tiles[0].nv, tiles[0].kc))
    );
    tiles[0]
}

/// `C = α·A·B + β·C` with B packed ahead of time ([`PackedB`]), A m×k and C m×n with any
/// strides. The same semantics and checks as [`gemm`](super::gemm) (β = 0 never reads C,
/// α = 0 or k = 0 never reads A or B, empty shapes are legal), plus
/// [`KernelError::PackedForOtherIsa`] when `exec` runs another path than the one `b` was
/// packed for.
pub fn gemm_prepacked(
    exec: &Exec,
    alpha: f32,
    a: MatRef<'_>,
    b: &PackedB,
    beta: f32,
    c: &mut MatMut<'_>,
    ws: &mut GemmWorkspace,
) -> Result<()> {
    if exec.isa() != b.isa {
        return Err(KernelError::PackedForOtherIsa {
            packed: b.isa,
            requested: exec.isa(),
        });
    }
    let Some((m, n, k)) = prologue(&a, (b.k, b.n), alpha, beta, c)? else {
        return Ok(());
    };
    let out = Out {
        c: SharedMut(c.as_mut_ptr()),
        rsc: c.row_stride(),
        csc: c.col_stride(),
    };
    if m <= 4 {
        // Up to four rows (decode's x·W, small batches), contiguous (A's own memory when it
        // already is).
        let x = contiguous_rows(&a, &mut ws.a);
        macro_rules! rows {
            ($s:ident, $r:literal, $g:expr) => {
                // SAFETY: C is a validated m×n view with distinct elements, borrowed mutably
                // for the call; `x` holds m·k floats; `b` holds k × n packed for this path
                // (NV = 2 on every path).
                unsafe { rows_prepacked::<_, 2, $r, $g>($s, exec, alpha, x, b, beta, out) }
            };
        }
        with_simd!(exec.isa(), |s| match m {
            1 => rows!(s, 1, GEMV_STREAMS),
            2 => rows!(s, 2, ROWS_STREAMS),
            3 => rows!(s, 3, ROWS_STREAMS),
            _ => rows!(s, 4, ROWS_STREAMS),
        });
        return Ok(());
    }
    // Panels that stream from memory make the shorter tile's lower arithmetic intensity cost
    // less than in the nests that pack B just before use: half the handicap. Measured, paired
    // against the 12-row tile: 8 rows 0.96–0.98× the time at m = 128 and 256 (where 12 wastes
    // 3%), 12 rows faster at m = 96 and 192 (both exact).
    let blk = blocking::choose_with(exec.isa(), m, 0.02);
    let sa = strided_of(&a);
    macro_rules! run {
        ($s:ident, $mr:literal, $nv:literal) => {
            // SAFETY: A is a validated m×k view, C a validated m×n view with distinct
            // elements borrowed mutably for the call, and `b` holds k × n packed for this
            // path's NR and kc.
            unsafe {
                nest::<_, $mr, $nv>(
                    $s,
                    exec,
                    &blk,
                    (m, n, k),
                    alpha,
                    sa,
                    b.layout(),
                    beta,
                    out,
                    &mut ws.a,
                )
            }
        };
    }
    with_tile!(exec.isa(), (blk.mr, blk.nv), run);
    Ok(())
}

/// The loop nest of the module documentation.
///
/// # Safety
/// `a` readable on `m × k`; `b` packed for `S`'s path with `b.k == k`, `b.n == n`; `out`
/// readable and writable on `m × n` with distinct element addresses, touched by nothing else
/// during the call.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn nest<S: Simd, const MR: usize, const NV: usize>(
    s: S,
    exec: &Exec,
    blk: &Blocking,
    (m, n, k): (usize, usize, usize),
    alpha: f32,
    a: Strided,
    b: PanelLayout,
    beta: f32,
    out: Out,
    a_buf: &mut AlignedBuf,
) {
    let nr = NV * S::LANES;
    debug_assert!(b.nr == nr && b.kc == blk.kc && (b.k, b.n) == (k, n));
    let threads = exec.threads().max(1);
    let kc_max = blk.kc.min(k);
    // mc is a multiple of MR, so every block of rows packs into mc·kc floats.
    let grid = TaskGrid::new(blk, m, n.div_ceil(nr), threads);
    let mc = grid.mc;
    // With a block of rows for every thread, threads take whole row blocks (each packs its
    // own A and reads every panel); otherwise they split each block's panels.
    let by_rows = threads > 1 && grid.jr_chunks == 1;
    // Each thread's part of a block of C fills C_BLOCK_BYTES, in whole panels.
    let panels_per_thread = (C_BLOCK_BYTES / (4 * mc * nr)).max(1);
    let nc_max = panels_per_thread * nr * if by_rows { 1 } else { threads };
    for jc in (0..n).step_by(nc_max) {
        let nc = nc_max.min(n - jc);
        let panels = jc / nr..(jc + nc).div_ceil(nr);
        // The tiles of rows ic.. (their A packed at `a_block`) against `panels` of kc block pc.
        let run = |ic: usize, rows: usize, pc: usize, a_block: &[f32], panels: Range<usize>| {
            let kc = blk.kc.min(k - pc);
            let beta = if pc == 0 { beta } else { 1.0 };
            s.vectorize(
                #[inline(always)]
                || {
                    for jp in panels {
                        let cols = nr.min(n - jp * nr);
                        let block = out.at(ic, jp * nr, (rows, cols), alpha, beta);
                        // SAFETY: A's block is packed for `rows` rows; panel jp of block pc
                        // holds kc·NR floats (prefetch hints past it never fault); the block
                        // lies inside C and belongs to this task alone.
                        unsafe {
                            column_of_prepacked_tiles::<S, MR, NV>(
                                s,
                                kc,
                                a_block.as_ptr(),
                                b.panel(pc, jp),
                                block,
                            )
                        };
                    }
                },
            );
        };
        // Packs A's rows ic..ic+rows, columns pc..pc+kc, into `a_block` on this thread.
        let pack_rows = |ic: usize, rows: usize, pc: usize, a_block: &mut [f32]| {
            let kc = blk.kc.min(k - pc);
            for ip in 0..rows.div_ceil(MR) {
                // SAFETY: rows ic + ip·MR.. (< m) and columns pc..pc+kc lie inside `a`; the
                // block holds mc/MR ≥ ceil(rows/MR) panels of MR·kc floats.
                unsafe {
                    pack_a_panel::<MR>(
                        a.offset(ic + ip * MR, pc),
                        MR.min(rows - ip * MR),
                        kc,
                        &mut a_block[ip * MR * kc..],
                    )
                };
            }
        };
        if by_rows {
            let a_all = a_buf.get(grid.ic_blocks * mc * kc_max);
            exec.for_each_chunk_mut(a_all, mc * kc_max, |ic_index, a_block| {
                let ic = ic_index * mc;
                let rows = mc.min(m - ic);
                for pc in (0..k).step_by(blk.kc) {
                    pack_rows(ic, rows, pc, a_block);
                    run(ic, rows, pc, a_block, panels.clone());
                }
            });
            continue;
        }
        // Threads split the block's panels once and each packs A's rows for itself, so a
        // product joins its threads once per block of C, not twice per kc step.
        let chunks = threads.min(panels.len());
        let a_all = a_buf.get(chunks * mc * kc_max);
        for ic in (0..m).step_by(mc) {
            let rows = mc.min(m - ic);
            exec.for_each_chunk_mut(&mut a_all[..], mc * kc_max, |chunk, a_block| {
                let (first, count) = (panels.start, panels.len());
                let own = first + chunk * count / chunks..first + (chunk + 1) * count / chunks;
                for pc in (0..k).step_by(blk.kc) {
                    pack_rows(ic, rows, pc, a_block);
                    run(ic, rows, pc, a_block, own.clone());
                }
            });
        }
    }
}

/// Rows from which [`super::gemm`] packs all of B into the workspace and runs [`nest`] (C's
/// blocks stay in L2 across the k loop) instead of the blocked nest (B packed a kc × nc block
/// at a time, so every kc step reloads C), when B is at most [`WHOLE_B_MAX_BYTES`]. With many
/// rows, the C traffic saved outweighs writing and re-reading the packed B. In-process against
/// the blocked nest, calls alternating, one thread (median time ratios, results
/// cross-checked): 2048³ 0.91–0.92, 3000×2000×1500 0.92, 1536×2048×2048 0.94,
/// 4096×1024×1024 0.93, 2048×4096×1024 0.98, 2048×1024×4096 0.99, 4096×4096×1024 1.0; two
/// threads 2048³ 0.95–0.96, 1536×2048×2048 0.975. Below it the blocked nest wins or ties:
/// 1024×2048×2048 1.0, 1024³ 0.98–1.0, 480×4096×1024 1.02–1.03, 512×4096×4096 1.11.
const WHOLE_B_MIN_ROWS: usize = 1536;

/// Largest packed B (bytes) [`super::gemm`] packs whole: what the workspace may grow by on
/// this path. Larger B measured 0.98× at 2048×4096×4096 (64 MiB) but 1.03–1.12× at
/// 1600×8192×4096 (128 MiB) packed in 32 MiB blocks of columns (A repacked per block, and
/// blocks that a busy neighbour pushes out of the LLC), so they keep the blocked nest.
const WHOLE_B_MAX_BYTES: usize = 32 << 20;

/// Whether [`super::gemm`] takes [`gemm_whole_b`] on `isa` for `m` rows and a k × n B packed
/// for `blk` (past the skinny and short nests). Only when k spans more than one kc block: with
/// one, the blocked nest never reloads C, and this path measured 1.01–1.06× its time
/// (1536×4000×100, 1600×1000×64), against 0.91–0.93× at k = 300 and 600 (1536×4000×k), and
/// 0.84–0.86× for tall products with few columns (4096×64×4096, 2048×32×2048). (8192×128×128
/// measured 0.93× too, but its k fits one block, so the rule leaves it to the blocked nest: a
/// finer rule would need more shapes measured.) Not on the portable path, whose arithmetic
/// is slow enough that C's reloads cost little: there it measured 1.04–1.06× the blocked
/// nest's time at 1536×2048×2048 and 2048³, where AVX2 measured 0.93–0.95×.
pub(crate) fn whole_b_applies(isa: Isa, blk: &Blocking, m: usize, n: usize, k: usize) -> bool {
    let nr = blk.nv * isa.f32_lanes();
    isa != Isa::Portable
        && k > blk.kc
        && m >= WHOLE_B_MIN_ROWS
        && n.div_ceil(nr)
            .checked_mul(nr)
            .and_then(|cols| cols.checked_mul(k))
            .is_some_and(|floats| floats <= WHOLE_B_MAX_BYTES / 4)
}

/// `C = α·A·B + β·C` for `m, n, k ≥ 1`: B packed whole into the workspace (at most
/// [`WHOLE_B_MAX_BYTES`]), then [`nest`] as for a [`PackedB`].
///
/// # Safety
/// As for [`super::loops::gemm_blocked`].
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_whole_b<S: Simd, const MR: usize, const NV: usize>(
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
    let nr = NV * S::LANES;
    let packed = ws.b.get(n.div_ceil(nr) * nr * k);
    pack_panels(exec, blk, b, (k, n), packed);
    let layout = PanelLayout {
        base: packed.as_ptr(),
        k,
        n,
        kc: blk.kc,
        nr,
    };
    // SAFETY: the caller vouches for A, C and `out`; `layout` describes the panels just packed
    // from B (k × n) in the workspace, which stays borrowed, unchanged, until the call ends.
    unsafe {
        nest::<S, MR, NV>(
            s,
            exec,
            blk,
            (m, n, k),
            alpha,
            a,
            layout,
            beta,
            out,
            &mut ws.a,
        )
    }
}

/// kc blocks of a panel column that [`rows_prepacked`] reads at once for one row (in-process
/// against `gemm`'s GEMV at 1×4096×4096 and 1×11008×4096, one thread: 8 streams 0.93–0.97× its
/// time, 4 streams 0.995–1.01×). Two to four rows read 4 (2·4·NV to 4·4·NV accumulators):
/// against `gemm`'s direct nest at 2, 3 and 4 × 4096×4096 (and 4×11008×4096), 0.90–0.94×,
/// 0.96–0.98× and 0.98–1.01× the time, where 2 or 3 streams took 1.04–1.25× at four rows and
/// the 8-row micro-tile 1.02–1.19×.
const GEMV_STREAMS: usize = 8;
/// [`GEMV_STREAMS`] for two to four rows.
const ROWS_STREAMS: usize = 4;

/// `Y = α·X·B + β·Y` for `R` ≤ 4 rows `X` (`R × k`, contiguous) over a [`PackedB`]: threads
/// split the NR panels once; for each panel column the kc blocks are read `G` at a time, each
/// its own sequential run of one panel, into per-stream partial sums that are added up per
/// group (the whole k accumulates without touching Y), and Y is written once. (R·G·NV
/// partial sums fill the 32 AVX-512 registers at four rows; on AVX2's 16 some spill. With
/// AVX2 forced, against `gemm` on the same path: 0.92× the time at one row, 0.82× at two,
/// 1.10–1.15× at four, where 1 or 2 streams were slower still.) Several concurrent streams
/// keep more lines in flight than the single stream a micro-kernel tile reads (`gemm`'s GEMV
/// gets the same from four rows of B at a time): for one row a 1×NR tile ran at 0.7–0.9×
/// `gemm`'s GEMV in the harness (paired with the same-bytes sum), this at 0.9–1.2× (99–128% of
/// the sum on one thread, 94–124% on two).
///
/// # Safety
/// `b` is packed for `S`'s path with NV vectors per panel row and `x.len() == R·b.k`; `out.c`
/// points at R rows of `b.n` elements of C (strides `out.rsc`, `out.csc`), writable and
/// touched by nothing else during the call.
unsafe fn rows_prepacked<S: Simd, const NV: usize, const R: usize, const G: usize>(
    s: S,
    exec: &Exec,
    alpha: f32,
    x: &[f32],
    b: &PackedB,
    beta: f32,
    out: Out,
) {
    let (lanes, nr) = (S::LANES, NV * S::LANES);
    debug_assert!(b.nr == nr && R * b.k == x.len());
    let (k, n, kc_full) = (b.k, b.n, b.kc);
    let panels = n.div_ceil(nr);
    let chunks = exec.threads().max(1).min(panels);
    // The first rows of the kc blocks, full ones grouped by G; the partial last block (k not a
    // multiple of kc) and the leftovers go one at a time.
    let grouped = k / kc_full / G * G;
    /// `acc[r] += Σ_p x[r][pc_h + p] · panel_h[p]` over the H kc blocks starting at rows
    /// `pcs` of panel column `jp`, `kc` rows each.
    ///
    /// # Safety
    /// `b`'s panels are NV·LANES wide; each `pcs[h] + kc` lies within `b.k` and within one kc
    /// block; `x` holds `R·k` floats.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn blocks<S: Simd, const NV: usize, const R: usize, const H: usize>(
        s: S,
        x: &[f32],
        k: usize,
        b: &PackedB,
        jp: usize,
        pcs: [usize; H],
        kc: usize,
        acc: &mut [[S::V; NV]; R],
    ) {
        let panel_rows: [*const f32; H] = pcs.map(|pc| b.panel(pc, jp));
        let mut part = [[[s.zero(); NV]; R]; H];
        for p in 0..kc {
            for h in 0..H {
                // SAFETY: row p < kc of the kc × NR panel holds NR = NV·LANES floats (the
                // caller's contract).
                let mut bv = [s.zero(); NV];
                for (v, x) in bv.iter_mut().enumerate() {
                    // SAFETY: as above.
                    *x = unsafe { s.load(panel_rows[h].add(p * NV * S::LANES + v * S::LANES)) };
                }
                for (r, row) in part[h].iter_mut().enumerate() {
                    let xv = s.splat(x[r * k + pcs[h] + p]);
                    for (a, bv) in row.iter_mut().zip(bv) {
                        *a = s.fmadd(xv, bv, *a);
                    }
                }
            }
        }
        for ph in part {
            for (ar, pr) in acc.iter_mut().zip(ph) {
                for (a, v) in ar.iter_mut().zip(pr) {
                    *a = s.add(*a, v);
                }
            }
        }
    }
    exec.for_each_index(chunks, |chunk| {
        s.vectorize(
            #[inline(always)]
            || {
                for jp in chunk * panels / chunks..(chunk + 1) * panels / chunks {
                    let mut acc = [[s.zero(); NV]; R];
                    for first in (0..grouped).step_by(G) {
                        let pcs = std::array::from_fn(|g| (first + g) * kc_full);
                        // SAFETY: G full kc blocks of panel column jp; x holds R·k floats.
                        unsafe { blocks::<S, NV, R, G>(s, x, k, b, jp, pcs, kc_full, &mut acc) };
                    }
                    for pc in (grouped * kc_full..k).step_by(kc_full) {
                        let kc = kc_full.min(k - pc);
                        // SAFETY: one (possibly partial) kc block of panel column jp.
                        unsafe { blocks::<S, NV, R, 1>(s, x, k, b, jp, [pc], kc, &mut acc) };
                    }
                    let cols = nr.min(n - jp * nr);
                    for (r, ar) in acc.iter().enumerate() {
                        let mut vals = [0.0f32; 64];
                        debug_assert!(nr <= 64);
                        for (v, a) in ar.iter().enumerate() {
                            // SAFETY: `vals` holds 64 ≥ NR floats.
                            unsafe {
                                s.store(vals.as_mut_ptr().add(v * lanes), s.mul(s.splat(alpha), *a))
                            };
                        }
                        for (j, val) in vals.iter().enumerate().take(cols) {
                            let y = out.c.at(r * out.rsc + (jp * nr + j) * out.csc);
                            // SAFETY: row r < R and column jp·NR + j < n of C; this chunk alone
                            // owns panel jp's columns. β = 0 never reads C.
                            unsafe { *y = if beta == 0.0 { *val } else { beta * *y + *val } };
                        }
                    }
                }
            },
        )
    });
}

/// How far ahead in the packed stream each tile prefetches: 16 KiB (half a panel on AVX-512, a
/// whole one on AVX2 and the portable path).
/// Measured in-process on 4096×4096 B, one thread, paired medians against `gemm` on a busy
/// shared machine: without prefetch the nest took 1.04–1.32× `gemm`'s time (m = 16, 128);
/// with 8–32 KiB of lookahead 0.88–1.03×; 16 KiB gave 0.88–1.02× at m = 16 and 0.68–0.97×
/// at m = 8 (L1 hints), 0.89–1.0× at m = 128 (L2 hints; L1 hints there 0.92–0.99×).
const PREFETCH_FLOATS: usize = 4096;

/// Runs the micro-kernel down one column of tiles against a panel of the [`PackedB`],
/// prefetching the packed stream [`PREFETCH_FLOATS`] ahead: into L1 when at most two tiles
/// use the panel (skinny products are done with it soon), into L2 when more do (the panel in
/// use keeps L1). Every tile of the column issues the hints (after the first they hit in
/// cache; see [`column_of_tiles`] for why not only the first).
///
/// # Safety
/// `a_packed` holds `ceil(block.rows/MR)·MR·kc` floats and `b_panel` `kc·NR`; the block lies
/// inside C and no other thread touches it.
#[inline(always)]
unsafe fn column_of_prepacked_tiles<S: Simd, const MR: usize, const NV: usize>(
    s: S,
    kc: usize,
    a_packed: *const f32,
    b_panel: *const f32,
    block: TileOut,
) {
    let b = BPanel {
        ptr: b_panel,
        rs: NV * S::LANES,
        ahead: PREFETCH_FLOATS,
    };
    // SAFETY: forwarded from the caller; the hints may point past the panel (into the next
    // panels, another thread's, or past the buffer), which never faults.
    unsafe {
        if block.rows <= 2 * MR {
            column_of_tiles::<S, MR, NV, PACKED_AHEAD_L1>(s, kc, a_packed, b, block)
        } else {
            column_of_tiles::<S, MR, NV, PACKED_AHEAD_L2>(s, kc, a_packed, b, block)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A clone's panels start on a 64-byte boundary and hold the same values, whatever the
    /// alignment of the copy's buffer.
    #[test]
    fn clones_realign_their_panels() {
        let exec = Exec::sequential();
        for (k, n) in [(1, 1), (3, 5), (7, 40), (300, 33), (1000, 600)] {
            let b: Vec<f32> = (0..k * n).map(|i| i as f32).collect();
            let packed = PackedB::new(&exec, MatRef::row_major(&b, k, n).unwrap()).unwrap();
            let used = packed.data.len() - 16;
            for p in [packed.clone(), packed.clone().clone()] {
                assert_eq!(p.data[p.start..].as_ptr() as usize % 64, 0, "{k}×{n}");
                assert_eq!(
                    &p.data[p.start..p.start + used],
                    &packed.data[packed.start..packed.start + used]
                );
            }
        }
    }
}
