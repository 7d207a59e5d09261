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
    let mut acc: [S::V; CHAINS] = std::array::from_fn(|i| s.splat(i as f32 * 1e-3));
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
    (iterations * CHAINS * S::LANES * 2) as f64
}
