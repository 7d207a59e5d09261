//! Machine-limit probes for rooflines: FMA throughput of a path, measured on this CPU.

use super::{Isa, Simd, with_simd};

/// Runs `iterations` rounds of 24 independent vector FMAs on `isa` (enough chains to cover the
/// FMA latency on two ports) and returns the flops performed. Time it to get the FMA roof.
pub fn fma_probe(isa: Isa, iterations: usize) -> f64 {
    if !isa.is_available() {
        return 0.0;
    }
    with_simd!(isa, |s| s.vectorize(
        #[inline(always)]
        || if has_32_registers(s) {
            fma_chains::<_, 24>(s, iterations)
        } else {
            fma_chains::<_, 12>(s, iterations)
        }
    ))
}

/// 32 vector registers (AVX-512) hold 24 chains; 16 (AVX2, SSE) hold 12 without spilling.
#[inline(always)]
fn has_32_registers<S: Simd>(_: S) -> bool {
    S::LANES >= 16
}

#[inline(always)]
fn fma_chains<S: Simd, const CHAINS: usize>(s: S, iterations: usize) -> f64 {
    let mut acc = [s.zero(); CHAINS];
    for (i, a) in acc.iter_mut().enumerate() {
        *a = s.splat(i as f32 * 1e-3);
    }
    let x = s.splat(std::hint::black_box(0.999_999));
    let y = s.splat(std::hint::black_box(1e-7));
    for _ in 0..iterations {
        for a in acc.iter_mut() {
            *a = s.fmadd(*a, x, y);
        }
    }
    let mut total = s.zero();
    for a in acc {
        total = s.add(total, a);
    }
    std::hint::black_box(s.reduce_add(total));
    iterations as f64 * (CHAINS * S::LANES * 2) as f64
}

/// Sums `data` with the widest loads of `isa` and four independent accumulators: the "plain
/// sum over the same bytes" that bandwidth-bound kernels are compared against. Split over the
/// current rayon pool when `threads > 1`.
pub fn sum_probe(isa: Isa, data: &[f32], threads: usize) -> f32 {
    if threads > 1 && data.len() >= 1 << 14 {
        use rayon::prelude::*;
        let chunk = data
            .len()
            .div_ceil(threads.saturating_mul(4))
            .next_multiple_of(64);
        return data.par_chunks(chunk).map(|c| sum_probe(isa, c, 1)).sum();
    }
    let isa = if isa.is_available() {
        isa
    } else {
        Isa::Portable
    };
    with_simd!(isa, |s| s.vectorize(
        #[inline(always)]
        || sum_lanes(s, data)
    ))
}

#[inline(always)]
fn sum_lanes<S: Simd>(s: S, data: &[f32]) -> f32 {
    let mut acc = [s.zero(); 4];
    let mut blocks = data.chunks_exact(4 * S::LANES);
    for b in &mut blocks {
        for (u, a) in acc.iter_mut().enumerate() {
            // SAFETY: each block holds 4·LANES floats.
            *a = s.add(*a, unsafe { s.load(b.as_ptr().add(u * S::LANES)) });
        }
    }
    let total = s.add(s.add(acc[0], acc[1]), s.add(acc[2], acc[3]));
    s.reduce_add(total) + blocks.remainder().iter().sum::<f32>()
}
