//! Register and cache blocking, one table per ISA. Tuning touches only this file.
//!
//! The loop nest (see `loops.rs`) keeps one kc×NR micro-panel of packed B in L1 while the ir
//! loop streams MR×kc micro-panels of packed A from L2; the packed mc×kc block of A stays in L2
//! across the jr loop, and the packed kc×nc block of B is shared by all threads from L2/L3.
//! Figures below are for the Sapphire/Emerald Rapids class this was tuned on (48 KiB L1d,
//! 2 MiB L2 per core); they are safe, if not optimal, elsewhere.

use crate::arch::Isa;

/// Block sizes of one ISA path. `nr = nv × lanes` columns per micro-tile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Blocking {
    /// Rows of a micro-tile (broadcast A values, one accumulator row each).
    pub mr: usize,
    /// Vectors per micro-tile row.
    pub nv: usize,
    /// Depth of one packed panel: a kc×NR B micro-panel must sit in L1 (AVX-512: 256×32×4 B =
    /// 32 KiB of 48 KiB).
    pub kc: usize,
    /// Rows of A per L2 block: mc×kc×4 B = 240 KiB of the 2 MiB L2 (shrunk per call so that
    /// every thread gets blocks).
    pub mc: usize,
    /// Columns of B per packed block: kc×nc×4 B = 4 MiB, shared by the threads.
    pub nc: usize,
}

/// The micro-tile shapes each ISA provides (the loop nest is instantiated for each).
pub(crate) const AVX512_TALL: Blocking = Blocking {
    mr: 12,
    nv: 2,
    kc: 256,
    mc: 240,
    nc: 4096,
};
/// 8×32 AVX-512 tile for skinny products (m = 8, 16, 24, 32 waste nothing).
pub(crate) const AVX512_SHORT: Blocking = Blocking {
    mr: 8,
    ..AVX512_TALL
};
/// 6×16 AVX2 tile: 12 accumulators + 2 B vectors + 1 broadcast of the 16 ymm registers.
pub(crate) const AVX2: Blocking = Blocking {
    mr: 6,
    nv: 2,
    kc: 256,
    mc: 192,
    nc: 4096,
};
/// 4×16 portable tile. On an SSE2-only build an `f32x8` is two xmm registers, so the 8
/// accumulators already fill the 16 xmm registers and operands spill; builds with AVX keep
/// them all in registers. The portable path is the always-correct fallback, not the fast one.
pub(crate) const PORTABLE: Blocking = Blocking {
    mr: 4,
    nv: 2,
    kc: 256,
    mc: 128,
    nc: 4096,
};

/// The candidate tiles of an ISA, most efficient on large problems first.
pub(crate) fn candidates(isa: Isa) -> &'static [Blocking] {
    match isa {
        Isa::Avx512 => &[AVX512_TALL, AVX512_SHORT],
        Isa::Avx2 => &[AVX2],
        Isa::Portable => &[PORTABLE],
    }
}

/// Columns per packed B block for an `m`-row product in the blocked nest: skinny products (a
/// few MR panels) use each packed panel only a few times, so their block is kept L2-sized
/// (kc × 512 × 4 B = 512 KiB) so that the packed copy never travels beyond L2. (Row-contiguous
/// B of short products takes the streamed nest, which packs slab by slab instead.)
pub(crate) fn nc_for(blk: &Blocking, m: usize) -> usize {
    if m.div_ceil(blk.mr) <= 4 {
        blk.nc.min(512)
    } else {
        blk.nc
    }
}

/// The tile of `isa` that wastes least on `m` rows: the share of computed rows that are real,
/// with a small handicap for the lower-arithmetic-intensity shorter tiles.
pub(crate) fn choose(isa: Isa, m: usize) -> Blocking {
    choose_with(isa, m, 0.04)
}

/// [`choose`] with a handicap of `handicap` per rank below the first (most efficient) tile.
pub(crate) fn choose_with(isa: Isa, m: usize, handicap: f64) -> Blocking {
    let tiles = candidates(isa);
    let score = |b: &Blocking, rank: usize| {
        let padded = m.div_ceil(b.mr) * b.mr;
        (m as f64 / padded.max(1) as f64) * (1.0 - handicap * rank as f64)
    };
    *tiles
        .iter()
        .enumerate()
        .max_by(|(i, a), (j, b)| score(a, *i).total_cmp(&score(b, *j)))
        .map(|(_, b)| b)
        .expect("every ISA has a tile")
}
