//! The machine's own limits, measured at start, and the roofline arithmetic that turns every
//! result into a share of the relevant roof.
//!
//! * FMA roof: [`kernels::arch::fma_probe`] timed on every thread of a pool at once
//!   (`broadcast`), per ISA and thread count.
//! * Read-bandwidth roofs: a plain vectorised sum over arrays of three sizes — L2-sized
//!   (per thread), LLC-sized and DRAM-sized (total) — per thread count.
//!
//! A workload's roof is chosen by its working set (see [`Roofline::tier_for`]); compute work
//! uses `min(FMA peak, arithmetic intensity × bandwidth)`, the classic roofline.

use crate::error::Result;
use crate::machine::fmt_bytes;
use crate::measure::{MeasureOpts, Stats, measure};
use crate::record::Record;
use kernels::{Isa, LargeBuffer};
use rayon::ThreadPool;
use std::time::Instant;

/// The three read-bandwidth tiers, named by size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Tier {
    /// An array that fits each thread's L2 (the size is per thread).
    L2,
    /// An array that fits the last-level cache.
    Llc,
    /// An array well beyond the last-level cache.
    Dram,
}

impl Tier {
    /// Short name for reports.
    pub fn name(self) -> &'static str {
        match self {
            Tier::L2 => "L2-sized",
            Tier::Llc => "LLC-sized",
            Tier::Dram => "DRAM-sized",
        }
    }
}

/// Array sizes of the bandwidth tiers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoofSizes {
    /// L2 tier bytes per thread.
    pub l2: usize,
    /// LLC tier bytes, total.
    pub llc: usize,
    /// DRAM tier bytes, total.
    pub dram: usize,
}

impl Default for RoofSizes {
    fn default() -> Self {
        Self {
            l2: 1 << 20,
            llc: 32 << 20,
            dram: 1 << 30,
        }
    }
}

/// Measured FMA throughput of one ISA on one thread count.
#[derive(Debug, Clone, PartialEq)]
pub struct FmaPeak {
    /// ISA path probed.
    pub isa: Isa,
    /// Threads probing at once.
    pub threads: usize,
    /// GFLOP/s at the median.
    pub gflops: f64,
    /// Timing.
    pub stats: Stats,
}

/// Measured read bandwidth of one tier on one thread count.
#[derive(Debug, Clone, PartialEq)]
pub struct BwPeak {
    /// Which tier.
    pub tier: Tier,
    /// Threads reading at once.
    pub threads: usize,
    /// Bytes read per call (all threads, all passes).
    pub bytes: usize,
    /// Size of the array (all threads' parts).
    pub array_bytes: usize,
    /// GB/s at the median.
    pub gbps: f64,
    /// Timing.
    pub stats: Stats,
}

/// What a roof measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoofKind {
    /// GFLOP/s.
    Compute,
    /// GB/s.
    Bandwidth,
}

/// The roof a result is compared against.
#[derive(Debug, Clone, PartialEq)]
pub struct Roof {
    /// GFLOP/s for [`RoofKind::Compute`], GB/s for [`RoofKind::Bandwidth`].
    pub value: f64,
    /// Unit of `value`.
    pub kind: RoofKind,
    /// Which roof, for the `roof` field.
    pub label: String,
}

impl Roof {
    /// `100 · achieved / value`, in the roof's unit.
    pub fn pct(&self, achieved: f64) -> Option<f64> {
        pct_of(achieved, self.value)
    }
}

/// `100 · achieved / roof`; `None` unless both are finite and the roof positive.
pub fn pct_of(achieved: f64, roof: f64) -> Option<f64> {
    (achieved.is_finite() && roof.is_finite() && roof > 0.0).then(|| 100.0 * achieved / roof)
}

/// All measured roofs of this run, and the cache sizes that pick among them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Roofline {
    /// FMA peaks, per ISA and thread count.
    pub fma: Vec<FmaPeak>,
    /// Read bandwidths, per tier and thread count.
    pub bw: Vec<BwPeak>,
    /// L2 bytes per core (selects the L2 tier).
    pub l2_cache: usize,
    /// LLC bytes (selects the LLC tier).
    pub llc_cache: usize,
}

impl Roofline {
    /// An empty roofline (no measurements: every `pct_peak` is `None`) for these cache sizes.
    pub fn empty(l2_cache: usize, llc_cache: usize) -> Self {
        Self {
            fma: Vec::new(),
            bw: Vec::new(),
            l2_cache,
            llc_cache,
        }
    }

    /// The tier whose roof applies to a working set of `bytes` read by `threads` threads: L2
    /// when it fits in 3/4 of the threads' L2, LLC when it fits in half the LLC (shared with
    /// everything else on the machine), DRAM otherwise.
    pub fn tier_for(&self, bytes: u64, threads: usize) -> Tier {
        let l2 = (self.l2_cache as u64 * threads.max(1) as u64) * 3 / 4;
        if bytes <= l2 {
            Tier::L2
        } else if bytes <= self.llc_cache as u64 / 2 {
            Tier::Llc
        } else {
            Tier::Dram
        }
    }

    /// Nearest measured entry to `threads` (exact if measured, else the closest count).
    fn nearest<'a, T>(
        items: impl Iterator<Item = &'a T>,
        threads: usize,
        t: impl Fn(&T) -> usize,
    ) -> Option<&'a T>
    where
        T: 'a,
    {
        items.min_by_key(|x| (t(x).abs_diff(threads), t(x)))
    }

    /// The FMA roof of `isa` on `threads` threads.
    pub fn fma_roof(&self, isa: Isa, threads: usize) -> Option<Roof> {
        let p = Self::nearest(self.fma.iter().filter(|p| p.isa == isa), threads, |p| {
            p.threads
        })?;
        Some(Roof {
            value: p.gflops,
            kind: RoofKind::Compute,
            label: format!("fma {} {}t", isa.name(), p.threads),
        })
    }

    /// The read-bandwidth roof for a working set of `bytes` on `threads` threads.
    pub fn bw_roof(&self, bytes: u64, threads: usize) -> Option<Roof> {
        let tier = self.tier_for(bytes, threads);
        let p = Self::nearest(self.bw.iter().filter(|p| p.tier == tier), threads, |p| {
            p.threads
        })?;
        Some(Roof {
            value: p.gbps,
            kind: RoofKind::Bandwidth,
            label: format!("read {} {}t", tier.name(), p.threads),
        })
    }

    /// Classic roofline for `flops` over `bytes` of compulsory traffic with a working set of
    /// `working_set` bytes: `min(FMA peak, flops/bytes × bandwidth)`, in GFLOP/s. Falls back to
    /// whichever roof is measured.
    pub fn attainable(
        &self,
        isa: Isa,
        threads: usize,
        flops: f64,
        bytes: u64,
        working_set: u64,
    ) -> Option<Roof> {
        let fma = self.fma_roof(isa, threads);
        let bw = self.bw_roof(working_set, threads).map(|r| {
            let ai = flops / bytes.max(1) as f64;
            Roof {
                value: ai * r.value,
                kind: RoofKind::Compute,
                label: format!("{} × AI {ai:.2} flop/B", r.label),
            }
        });
        match (fma, bw) {
            (Some(f), Some(b)) => Some(if b.value < f.value { b } else { f }),
            (f, b) => f.or(b),
        }
    }

    /// Peak records for the report.
    pub fn records(&self) -> Vec<Record> {
        let mut out = Vec::new();
        for p in &self.fma {
            out.push(Record {
                isa: Some(p.isa.name().into()),
                threads: Some(p.threads),
                shape: Some("fma".into()),
                gflops: Some(p.gflops),
                roof: Some(format!("fma {} {}t", p.isa.name(), p.threads)),
                note: Some(format!(
                    "{} GFLOP/s per thread",
                    crate::report::fmt_num(p.gflops / p.threads as f64)
                )),
                ..Record::new("peak", "fma-probe").with_stats(&p.stats)
            });
        }
        for p in &self.bw {
            let size = match p.tier {
                Tier::L2 => format!("{}/thread", fmt_bytes((p.array_bytes / p.threads) as u64)),
                _ => fmt_bytes(p.array_bytes as u64),
            };
            out.push(Record {
                threads: Some(p.threads),
                shape: Some(format!("{} {size}", p.tier.name())),
                bytes: Some(p.array_bytes as u64),
                gbps: Some(p.gbps),
                roof: Some(format!("read {} {}t", p.tier.name(), p.threads)),
                ..Record::new("peak", "read-sum").with_stats(&p.stats)
            });
        }
        out
    }
}

/// Times the FMA probe on every thread of `pool` at once.
pub fn measure_fma(pool: &ThreadPool, isa: Isa, opts: &MeasureOpts) -> Result<FmaPeak> {
    // One call of about 10 ms per thread (less when timing is minimal).
    let iters = fma_iters(isa, if opts.min_time > 0.0 { 0.01 } else { 0.001 });
    let mut flops = 0.0;
    let stats = measure(opts, || {
        flops = fma_on_every_thread(pool, isa, iters);
        Ok(())
    })?;
    Ok(FmaPeak {
        isa,
        threads: pool.current_num_threads(),
        // A roof is what the machine can do: the fastest sample, not the median, so that a
        // neighbour's burst during the probe does not lower the roof.
        gflops: flops / stats.min / 1e9,
        stats,
    })
}

/// Iterations of the FMA probe that take about `seconds` on one thread.
pub fn fma_iters(isa: Isa, seconds: f64) -> usize {
    let probe = 1usize << 14;
    let t = Instant::now();
    std::hint::black_box(kernels::arch::fma_probe(isa, probe));
    let per_iter = t.elapsed().as_secs_f64().max(1e-9) / probe as f64;
    ((seconds / per_iter) as usize).clamp(1 << 10, 1 << 30)
}

/// Runs `iters` iterations of the FMA probe on every thread of `pool` at once; returns the
/// FLOPs done.
pub fn fma_on_every_thread(pool: &ThreadPool, isa: Isa, iters: usize) -> f64 {
    pool.broadcast(|_| kernels::arch::fma_probe(isa, iters))
        .iter()
        .sum()
}

/// Bytes each thread reads per timed call: small parts are summed repeatedly so the pool's
/// dispatch overhead (microseconds) stays negligible.
pub const READ_BYTES_PER_CALL: usize = 64 << 20;

/// Times a plain sum of `data` split evenly over every thread of `pool` (each thread sums one
/// contiguous part, `data.len() / threads` floats, as many times as it takes to read about
/// [`READ_BYTES_PER_CALL`]).
pub fn measure_read(
    pool: &ThreadPool,
    isa: Isa,
    tier: Tier,
    data: &[f32],
    opts: &MeasureOpts,
) -> Result<BwPeak> {
    let threads = pool.current_num_threads();
    let per = data.len() / threads;
    let passes = (READ_BYTES_PER_CALL / (4 * per).max(1)).clamp(1, 4096);
    let stats = measure(opts, || {
        let sums = pool.broadcast(|ctx| {
            let i = ctx.index();
            let part = &data[i * per..(i + 1) * per];
            let mut total = 0.0;
            for _ in 0..passes {
                total += sum_f32(isa, std::hint::black_box(part));
            }
            total
        });
        std::hint::black_box(sums);
        Ok(())
    })?;
    let bytes = per * threads * 4 * passes;
    Ok(BwPeak {
        tier,
        threads,
        bytes,
        array_bytes: per * threads * 4,
        gbps: bytes as f64 / stats.min / 1e9,
        stats,
    })
}

/// Fills an array with small values on the pool's threads (first touch spreads its pages).
/// It is a [`LargeBuffer`] (huge pages where the OS allows), like the KV cache, so a kernel and
/// the sum it is compared with pay the same address translation.
pub fn filled_array(pool: &ThreadPool, floats: usize) -> Result<LargeBuffer<f32>> {
    use rayon::prelude::*;
    let mut v = LargeBuffer::<f32>::zeroed(floats)?;
    pool.install(|| {
        v.par_chunks_mut(1 << 16)
            .enumerate()
            .for_each(|(c, chunk)| {
                for (i, x) in chunk.iter_mut().enumerate() {
                    *x = ((c + i) % 7) as f32 * 1e-3;
                }
            })
    });
    Ok(v)
}

/// Sum of `x` with the vector width of `isa` (8 independent accumulators, so the adds never
/// limit a read stream).
pub fn sum_f32(isa: Isa, x: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if isa == Isa::Avx512 && std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: AVX-512F was detected on this CPU just above.
            return unsafe { x86::sum_avx512(x) };
        }
        if isa >= Isa::Avx2 && std::arch::is_x86_feature_detected!("avx") {
            // SAFETY: AVX was detected on this CPU just above.
            return unsafe { x86::sum_avx(x) };
        }
    }
    let _ = isa;
    sum_portable(x)
}

/// The portable sum: 32 scalar accumulators, which the compiler vectorises to the baseline
/// width.
pub fn sum_portable(x: &[f32]) -> f32 {
    let mut acc = [0.0f32; 32];
    let chunks = x.chunks_exact(32);
    let rem = chunks.remainder();
    for c in chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a += v;
        }
    }
    acc.iter().sum::<f32>() + rem.iter().sum::<f32>()
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx512f")]
    pub(super) fn sum_avx512(x: &[f32]) -> f32 {
        let mut acc = [_mm512_setzero_ps(); 8];
        let chunks = x.chunks_exact(128);
        let rem = chunks.remainder();
        for c in chunks {
            for (u, a) in acc.iter_mut().enumerate() {
                // SAFETY: `c` holds 128 floats, so floats 16u..16u+16 (u < 8) are in bounds.
                *a = _mm512_add_ps(*a, unsafe { _mm512_loadu_ps(c.as_ptr().add(16 * u)) });
            }
        }
        let mut v = acc[0];
        for a in &acc[1..] {
            v = _mm512_add_ps(v, *a);
        }
        _mm512_reduce_add_ps(v) + super::sum_portable(rem)
    }

    #[target_feature(enable = "avx")]
    pub(super) fn sum_avx(x: &[f32]) -> f32 {
        let mut acc = [_mm256_setzero_ps(); 8];
        let chunks = x.chunks_exact(64);
        let rem = chunks.remainder();
        for c in chunks {
            for (u, a) in acc.iter_mut().enumerate() {
                // SAFETY: `c` holds 64 floats, so floats 8u..8u+8 (u < 8) are in bounds.
                *a = _mm256_add_ps(*a, unsafe { _mm256_loadu_ps(c.as_ptr().add(8 * u)) });
            }
        }
        let mut v = acc[0];
        for a in &acc[1..] {
            v = _mm256_add_ps(v, *a);
        }
        let mut lanes = [0.0f32; 8];
        // SAFETY: `lanes` holds 8 floats.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), v) };
        lanes.iter().sum::<f32>() + super::sum_portable(rem)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats() -> Stats {
        Stats::from_samples(&[1.0], 1)
    }

    fn roofline() -> Roofline {
        let mut r = Roofline::empty(2 << 20, 300 << 20);
        r.fma = vec![
            FmaPeak {
                isa: Isa::Portable,
                threads: 1,
                gflops: 100.0,
                stats: stats(),
            },
            FmaPeak {
                isa: Isa::Portable,
                threads: 2,
                gflops: 190.0,
                stats: stats(),
            },
        ];
        for (tier, gbps) in [(Tier::L2, 200.0), (Tier::Llc, 50.0), (Tier::Dram, 10.0)] {
            for t in [1, 2] {
                r.bw.push(BwPeak {
                    tier,
                    threads: t,
                    bytes: 1 << 20,
                    array_bytes: 1 << 20,
                    gbps: gbps * t as f64,
                    stats: stats(),
                });
            }
        }
        r
    }

    #[test]
    fn sums_agree() {
        let x: Vec<f32> = (0..1000).map(|i| (i % 5) as f32).collect();
        let want: f32 = x.iter().sum();
        for isa in Isa::available() {
            assert_eq!(sum_f32(isa, &x), want, "{isa}");
        }
        assert_eq!(
            sum_portable(&x[..7]),
            0.0 + 1.0 + 2.0 + 3.0 + 4.0 + 0.0 + 1.0
        );
    }

    #[test]
    fn tiers_and_roofs() {
        let r = roofline();
        assert_eq!(r.tier_for(1 << 20, 1), Tier::L2);
        assert_eq!(r.tier_for(3 << 20, 1), Tier::Llc);
        assert_eq!(r.tier_for(3 << 20, 2), Tier::L2);
        assert_eq!(r.tier_for(149 << 20, 2), Tier::Llc);
        assert_eq!(r.tier_for(1 << 30, 2), Tier::Dram);
        let roof = r.bw_roof(1 << 30, 2).unwrap();
        assert_eq!(roof.value, 20.0);
        assert_eq!(roof.label, "read DRAM-sized 2t");
        assert_eq!(roof.pct(5.0), Some(25.0));
        let f = r.fma_roof(Isa::Portable, 2).unwrap();
        assert_eq!(f.value, 190.0);
        assert_eq!(r.fma_roof(Isa::Portable, 4).unwrap().value, 190.0);
        assert!(r.fma_roof(Isa::Avx2, 1).is_none());
    }

    #[test]
    fn roofline_min() {
        let r = roofline();
        // 2 flop per byte on the DRAM tier: 2 × 10 GB/s = 20 GFLOP/s < 100.
        let roof = r
            .attainable(Isa::Portable, 1, 2e9, 1_000_000_000, 1 << 30)
            .unwrap();
        assert_eq!(roof.value, 20.0);
        assert!(roof.label.contains("AI 2.00"));
        // 1000 flop per byte: the FMA roof.
        let roof = r
            .attainable(Isa::Portable, 1, 1e12, 1_000_000_000, 1 << 30)
            .unwrap();
        assert_eq!(roof.value, 100.0);
        assert_eq!(roof.label, "fma portable 1t");
        assert_eq!(pct_of(50.0, 0.0), None);
        assert_eq!(pct_of(f64::NAN, 1.0), None);
        assert_eq!(pct_of(45.0, 90.0), Some(50.0));
    }

    #[test]
    fn probes_run() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let opts = MeasureOpts {
            warmup: 1,
            reps: 1,
            min_time: 0.0,
            max_time: 1.0,
        };
        let f = measure_fma(&pool, Isa::detected(), &opts).unwrap();
        assert!(f.gflops > 0.0);
        let data = filled_array(&pool, 1 << 14).unwrap();
        let b = measure_read(&pool, Isa::detected(), Tier::L2, &data, &opts).unwrap();
        assert_eq!(b.array_bytes, 1 << 16);
        assert_eq!(b.bytes, READ_BYTES_PER_CALL);
        assert!(b.gbps > 0.0);
    }
}
