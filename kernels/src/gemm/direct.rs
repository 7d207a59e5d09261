//! The loop nest for products of one MR panel of rows (batched decode, short prefill chunks:
//! 2 to 16 rows on AVX-512, 2 to 6 on AVX2; one row is GEMV) against row-contiguous B: the
//! micro-kernel reads B where it lies, and B is never packed.
//!
//! ```text
//! A packed once: all m rows (one MR panel), all of k
//! thread: its own range of NR-column tiles, in blocks whose C rows stay in L2
//!  pc: k in steps of KB rows (64 when B's row stride is a multiple of 4 KiB, else 32)
//!   jr: NR tiles               micro-kernel on B's rows in place (stride = B's row stride),
//!                              prefetching each row's tile after next into L1 as it goes
//! ```
//! Why: with one MR panel each element of B is used once, so a packed copy costs as much as
//! the arithmetic it feeds: every element is stored once more (stores that miss L1 and limit
//! the copy to about L2 speed), and the copy runs as a phase in which no FMA runs, so memory
//! time and arithmetic add up. Read in place, the loads of B are interleaved with the FMAs that
//! use them, as KB sequential row streams. Tiles: on AVX-512 8×32 up to 8 rows, 16×16 from 9
//! to 16, so that one pass over B serves every row; on AVX2 the 6×16 tile up to 6 rows (a
//! 12×8 tile for 7–12 rows measured 0.86–1.13× the streamed nest's time: not used). A tile
//! narrower than NR (B's right edge) is copied into a zero-padded panel first, so nothing
//! beyond B is read.
//!
//! Measured against the streamed nest (B packed slab by slab), paired call by call in one
//! process, huge-page operands, median time ratios. One thread, the same B every call (it
//! stays in this machine's 300 MiB LLC, as in the harness): 8×4096×4096 0.62×, 12×4096×4096
//! 0.95×, 16×4096×4096 0.92×, 16×11008×4096 0.79×; B streaming from DRAM (five B in rotation):
//! 0.60×, 0.79×, 0.75×, 1.02×. Two threads: 0.85–0.97× (B hot), 0.90–1.02× (from DRAM). The
//! AVX2 path forced on the same machine: 5 and 6 rows × 4096 × 4096 0.61–0.65×.

use super::loops::{Out, pack_a_block};
use super::microkernel::{BPanel, IN_PLACE, microkernel};
use super::pack::{Strided, pack_b_panels};
use super::workspace::GemmWorkspace;
use crate::arch::Simd;
use crate::exec::Exec;

/// Rows of B per k block: KB row streams in flight, and C's tiles reloaded once per KB rows.
/// 16 and 32 measured alike; 48 and 64 were up to 1.2× faster at 16×4096×4096 but half as
/// fast at the row stride of 11008 floats (too many streams for the hardware prefetchers).
const KB: usize = 32;
/// [`KB`] when B's rows lie a whole number of 4 KiB pages apart (n a multiple of 1024 floats,
/// as most weight matrices are). In-process against 32, one thread: 0.84–0.94× the time at
/// 16 rows × n ∈ {2048, 4096, 5120, 8192, 12288, 14336} × 4096 (and k = 11008), 0.91× at 12
/// rows, 0.98× at 8 (0.94× on two threads), 1.0× at 4; 96 and 128 rows 1.1–1.6× slower. The
/// AVX2 6×16 tile: 0.99–1.01× at 2–6 rows.
/// Strides off the page multiple measured 1.0× (n = 4112) and 1.45× (n = 11008) with 64, so
/// they keep [`KB`]. (Why the page-aligned strides want more rows per block is not
/// established here: with them every row's tile falls into the same L1 sets.)
const KB_PAGE_ALIGNED: usize = 64;

/// Rows of B per k block for B rows `rs` floats apart.
fn rows_per_block(rs: usize) -> usize {
    if (rs * 4).is_multiple_of(4096) {
        KB_PAGE_ALIGNED
    } else {
        KB
    }
}

/// How far along each row of B the micro-kernel prefetches: the tile after the next (128 B
/// ahead of a 16-wide tile, 256 B of a 32-wide one). 1, 2 and 4 tiles ahead measured alike;
/// without it the row stride of 11008 floats ran 1.5× (8 rows) to 2.7× (16 rows) slower.
const PREFETCH_TILES: usize = 2;

/// Bytes of C rows a thread keeps in L2 across the k loop.
const C_BLOCK_BYTES: usize = 1024 * 1024;

/// The tile (MR, NV) this nest uses for an `m`-row product on `isa`, if it serves it (B's
/// rows contiguous): AVX-512 8×32 up to 8 rows and 16×16 (one vector per row) from 9 to 16;
/// AVX2 6×16 up to 6 rows. (The portable path has no tile here: its few-row products take
/// the skinny row-streaming path.)
pub(crate) fn tile_for(isa: crate::Isa, m: usize, b: &Strided) -> Option<(usize, usize)> {
    if b.cs != 1 {
        return None;
    }
    match (isa, m) {
        (crate::Isa::Avx512, 1..=8) => Some((8, 2)),
        (crate::Isa::Avx512, 9..=16) => Some((16, 1)),
        (crate::Isa::Avx2, 1..=6) => Some((6, 2)),
        _ => None,
    }
}

/// `C = α·A·B + β·C` for `m, n, k ≥ 1`, `m ≤ MR`, `b.cs == 1`.
///
/// # Safety
/// As for [`super::loops::gemm_blocked`], and `b.cs == 1`.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_direct<S: Simd, const MR: usize, const NV: usize>(
    s: S,
    exec: &Exec,
    (m, n, k): (usize, usize, usize),
    alpha: f32,
    a: Strided,
    b: Strided,
    beta: f32,
    out: Out,
    ws: &mut GemmWorkspace,
) {
    debug_assert!(m <= MR && b.cs == 1 && MR <= super::MAX_ROWS_PACKED_WHOLE);
    let nr = NV * S::LANES;
    let kb_max = rows_per_block(b.rs).min(k);
    let a_buf = ws.a.get(MR * k);
    // SAFETY: A is readable on m × k; `a_buf` holds MR·k floats.
    unsafe { pack_a_block::<MR>(exec, a, m, k, a_buf) };
    let a_packed = &a_buf[..];
    let tiles = n.div_ceil(nr);
    let chunks = exec.threads().max(1).min(tiles);
    let block_tiles = (C_BLOCK_BYTES / (m * 4 * nr)).max(1);
    let edge_len = kb_max * nr;
    let edge_bufs = ws.b.get(chunks * edge_len);
    exec.for_each_chunk_mut(
        &mut edge_bufs[..chunks * edge_len],
        edge_len,
        |chunk, edge| {
            let chunk_tiles = (chunk * tiles / chunks)..((chunk + 1) * tiles / chunks);
            s.vectorize(
                #[inline(always)]
                || {
                    for block_start in chunk_tiles.clone().step_by(block_tiles) {
                        let block = block_start..(block_start + block_tiles).min(chunk_tiles.end);
                        for pc in (0..k).step_by(kb_max) {
                            let kb = kb_max.min(k - pc);
                            let beta = if pc == 0 { beta } else { 1.0 };
                            let a_rows = a_packed[pc * MR..].as_ptr();
                            for jt in block.clone() {
                                let j = jt * nr;
                                let cols = nr.min(n - j);
                                let tile = out.at(0, j, (m, cols), alpha, beta);
                                let src = b.offset(pc, j);
                                let panel = if cols == nr {
                                    BPanel {
                                        ptr: src.ptr,
                                        rs: b.rs,
                                        ahead: PREFETCH_TILES * nr,
                                    }
                                } else {
                                    // SAFETY: rows pc..pc+kb and columns j..n lie inside B; `edge`
                                    // holds kb_max·NR ≥ kb·NR floats.
                                    unsafe { pack_b_panels::<S, NV>(s, src, kb, cols, None, edge) };
                                    BPanel::packed(edge.as_ptr(), nr)
                                };
                                // SAFETY: A's packed rows pc..pc+kb hold MR·kb floats; the panel's
                                // kb rows hold NR floats each (B's rows pc.., columns j..j+NR, or
                                // the padded copy); the tile lies inside C and this chunk alone
                                // owns its columns.
                                unsafe {
                                    microkernel::<S, MR, NV, IN_PLACE>(s, kb, a_rows, panel, tile)
                                };
                            }
                        }
                    }
                },
            );
        },
    );
}
