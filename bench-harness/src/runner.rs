//! The state a run threads through the suites: the configuration, one rayon pool per thread
//! count, the measured roofline, and the progress bar.

use crate::config::RunConfig;
use crate::error::{HarnessError, Result};
use crate::measure::{Stats, measure, measure_interleaved, median_ratio};
use crate::peak::{Roof, RoofKind, Roofline};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use kernels::{Exec, Isa};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::ThreadPool;
use std::collections::BTreeMap;
use std::io::IsTerminal;

/// What `--paired` interleaves a kernel's samples with.
#[derive(Debug, Clone, Copy)]
pub enum PairedRoof {
    /// A plain sum over the same `bytes`, rotating through `copies` arrays as the kernel's
    /// operand does.
    SameBytes {
        /// Bytes the kernel streams per call.
        bytes: u64,
        /// Copies rotated through (1: one array, re-read).
        copies: usize,
    },
    /// The FMA probe of `isa`, for a kernel doing `flops` per call.
    Fma {
        /// ISA path of the probe.
        isa: Isa,
        /// FLOPs of one kernel call.
        flops: f64,
    },
}

/// Run-wide state handed to every suite.
pub struct Ctx<'a> {
    /// The validated configuration.
    pub cfg: &'a RunConfig,
    /// Roofs measured at start (empty with `--no-peak`).
    pub roofline: Roofline,
    /// Progress on stderr (hidden when quiet or not a terminal).
    pub bar: ProgressBar,
    pools: BTreeMap<usize, ThreadPool>,
    /// Same-bytes read roofs measured so far, by (bytes, threads, copies).
    same_bytes: BTreeMap<(u64, usize, usize), Roof>,
    /// The array those sums read (kept for the next size that fits).
    sum_array: kernels::LargeBuffer<f32>,
}

impl<'a> Ctx<'a> {
    /// A context for `cfg` whose progress bar expects `total` measurements.
    pub fn new(cfg: &'a RunConfig, total: u64) -> Self {
        let bar = if cfg.quiet || !std::io::stderr().is_terminal() {
            ProgressBar::hidden()
        } else {
            let b = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            b.set_style(
                ProgressStyle::with_template(
                    "{elapsed_precise} [{bar:30.cyan/blue}] {pos}/{len} {wide_msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            b
        };
        Ctx {
            cfg,
            roofline: Roofline::empty(
                crate::machine::cache_bytes(2).unwrap_or(1 << 20),
                crate::machine::cache_bytes(3).unwrap_or(32 << 20),
            ),
            bar,
            pools: BTreeMap::new(),
            same_bytes: BTreeMap::new(),
            sum_array: kernels::LargeBuffer::default(),
        }
    }

    /// The read roof for a kernel that streams `bytes` once per call on `threads` threads:
    /// a plain vectorised sum over an array of exactly that size, one pass per timed call
    /// (each pass over the next of `copies` such arrays, as a kernel rotating through copies
    /// of its operand does), measured now in this run (and cached for the run). `None` when
    /// peaks are off.
    pub fn same_bytes_roof(
        &mut self,
        bytes: u64,
        threads: usize,
        copies: usize,
    ) -> Result<Option<Roof>> {
        if !self.cfg.peak {
            return Ok(None);
        }
        let copies = copies.max(1);
        if let Some(r) = self.same_bytes.get(&(bytes, threads, copies)) {
            return Ok(Some(r.clone()));
        }
        let opts = self.cfg.measure;
        let fastest = {
            let mut one_pass = self.sum_passes(bytes, threads, copies)?;
            // The fastest sample of two runs: on a shared machine a neighbour's burst can only
            // make a roof look lower than it is.
            let first = measure(&opts, &mut one_pass)?;
            let second = measure(&opts, &mut one_pass)?;
            first.min.min(second.min)
        };
        let gbps = bytes as f64 / fastest / 1e9;
        let roof = Roof {
            value: gbps,
            kind: RoofKind::Bandwidth,
            label: format!(
                "sum of same {:.1} MiB{} {threads}t: {gbps:.1} GB/s",
                bytes as f64 / (1 << 20) as f64,
                if copies > 1 {
                    format!(" ({copies} copies)")
                } else {
                    String::new()
                }
            ),
        };
        self.same_bytes
            .insert((bytes, threads, copies), roof.clone());
        Ok(Some(roof))
    }

    /// A closure that sums the next of `copies` arrays of `bytes` bytes on the pool of
    /// `threads` threads (one pass per call), the read roof's unit of work.
    fn sum_passes(
        &mut self,
        bytes: u64,
        threads: usize,
        copies: usize,
    ) -> Result<impl FnMut() -> Result<()> + '_> {
        self.pool(threads)?;
        Self::sum_passes_of(&self.pools, &mut self.sum_array, bytes, threads, copies)
    }

    /// [`sum_passes`](Self::sum_passes) over the fields it needs (the pool of `threads` must
    /// exist), so that a kernel's closure can borrow the pools meanwhile.
    fn sum_passes_of<'p>(
        pools: &'p BTreeMap<usize, ThreadPool>,
        sum_array: &'p mut kernels::LargeBuffer<f32>,
        bytes: u64,
        threads: usize,
        copies: usize,
    ) -> Result<impl FnMut() -> Result<()> + 'p> {
        let pool = &pools[&threads];
        let floats = (bytes / 4).max(1) as usize;
        if sum_array.len() < floats * copies {
            // Freed before the larger one is filled, so the two never coexist.
            *sum_array = kernels::LargeBuffer::default();
            *sum_array = crate::peak::filled_array(pool, floats * copies)?;
        }
        let all = &sum_array[..floats * copies];
        let isa = Isa::detected();
        let mut turn = 0usize;
        Ok(move || {
            turn += 1;
            let data = &all[(turn % copies) * floats..][..floats];
            let per = data.len().div_ceil(threads);
            let sums = pool.broadcast(|ctx| {
                let lo = (ctx.index() * per).min(data.len());
                let hi = (lo + per).min(data.len());
                crate::peak::sum_f32(isa, std::hint::black_box(&data[lo..hi]))
            });
            std::hint::black_box(sums);
            Ok(())
        })
    }

    /// [`time`](Self::time), and with `--paired` every sample interleaved with a sample of
    /// `roof` on the same threads. Returns the kernel's stats and the median over rounds of
    /// the percent of the roof reached in each; `None` without `--paired`, without a roof to
    /// pair with, or when that ratio is not finite.
    pub fn time_paired(
        &mut self,
        threads: usize,
        label: &str,
        mut f: impl FnMut() -> Result<()> + Send,
        roof: Option<PairedRoof>,
    ) -> Result<(Stats, Option<f64>)> {
        let Some(roof) = roof.filter(|_| self.cfg.paired && self.cfg.peak) else {
            return Ok((self.time(threads, label, f)?, None));
        };
        self.bar.set_message(format!("{label} (paired)"));
        let opts = self.cfg.measure;
        self.pool(threads)?;
        let mut kernel = |n: usize| -> Result<()> {
            self.pools[&threads].install(|| (0..n).try_for_each(|_| f()))
        };
        let (samples, pct) = match roof {
            PairedRoof::SameBytes { bytes, copies } => {
                let mut sum = Ctx::sum_passes_of(
                    &self.pools,
                    &mut self.sum_array,
                    bytes,
                    threads,
                    copies.max(1),
                )?;
                let mut sums = |n: usize| (0..n).try_for_each(|_| sum());
                let r = measure_interleaved(&opts, &mut [&mut kernel, &mut sums])?;
                // Same bytes on both sides: the time ratio is the share of the sum's bandwidth.
                let pct = 100.0 * median_ratio(&r.samples[1], &r.samples[0]);
                (r, pct)
            }
            PairedRoof::Fma { isa, flops } => {
                let pool = &self.pools[&threads];
                let iters = crate::peak::fma_iters(isa, 0.001);
                let mut probe_flops = 0.0;
                let mut probe = |n: usize| {
                    for _ in 0..n {
                        probe_flops = crate::peak::fma_on_every_thread(pool, isa, iters);
                    }
                    Ok(())
                };
                let r = measure_interleaved(&opts, &mut [&mut kernel, &mut probe])?;
                // (flops / kernel time) / (probe flops / probe time), round by round.
                let pct = 100.0 * flops / probe_flops * median_ratio(&r.samples[1], &r.samples[0]);
                (r, pct)
            }
        };
        self.bar.inc(1);
        Ok((samples.stats(0), pct.is_finite().then_some(pct)))
    }

    /// The rayon pool of `threads` threads (built on first use).
    pub fn pool(&mut self, threads: usize) -> Result<&ThreadPool> {
        match self.pools.entry(threads) {
            std::collections::btree_map::Entry::Occupied(e) => Ok(e.into_mut()),
            std::collections::btree_map::Entry::Vacant(e) => {
                let p = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .thread_name(move |i| format!("bench-{threads}t-{i}"))
                    .build()
                    .map_err(|e| {
                        HarnessError::msg(format!("cannot build a pool of {threads} threads: {e}"))
                    })?;
                Ok(e.insert(p))
            }
        }
    }

    /// Times `f` on the pool of `threads` threads, per the run's timing options, and advances
    /// the progress bar.
    pub fn time(
        &mut self,
        threads: usize,
        label: &str,
        f: impl FnMut() -> Result<()> + Send,
    ) -> Result<Stats> {
        self.bar.set_message(label.to_string());
        let opts = self.cfg.measure;
        let stats = self.pool(threads)?.install(|| measure(&opts, f))?;
        self.bar.inc(1);
        Ok(stats)
    }
}

/// Parallel execution settings on `isa` (the pool is the one the call runs inside).
pub fn exec_for(isa: Isa) -> Result<Exec> {
    Ok(Exec::new().with_isa(isa)?)
}

/// `n` seeded uniform values in [-1, 1), in a [`kernels::LargeBuffer`] (huge pages where the
/// OS allows), as an engine would keep its weights and as the read roofs' arrays are kept.
pub fn random_vec(seed: u64, n: usize) -> Result<kernels::LargeBuffer<f32>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut v = kernels::LargeBuffer::zeroed(n)?;
    v.iter_mut()
        .for_each(|x| *x = rng.random_range(-1.0f32..1.0));
    Ok(v)
}

/// The prefix of the note on a record whose output disagrees with a check; the report lists
/// such records under its table.
pub const MISMATCH: &str = "MISMATCH";
/// The note on a record whose output disagrees with its baseline's.
pub const MISMATCH_BASELINE: &str = "MISMATCH vs baseline";
/// The note on a record whose output disagrees with the f64 reference.
pub const MISMATCH_F64: &str = "MISMATCH vs f64 reference";

/// The note for an implementation whose output `got` differs from `reference` (what `against`
/// names: [`MISMATCH_BASELINE`] or [`MISMATCH_F64`]) by more than `tol` relative to the largest
/// `|reference|`, or `None` when it agrees.
pub fn mismatch_note(against: &str, got: &[f32], reference: &[f32], tol: f64) -> Option<String> {
    let err = max_rel_diff(got, reference);
    (err > tol).then(|| format!("{against}: rel err {err:.2e}"))
}

/// Largest `|a − b|` relative to the largest `|b|` (0 for empty inputs).
fn max_rel_diff(a: &[f32], b: &[f32]) -> f64 {
    let scale = b
        .iter()
        .fold(0.0f64, |m, x| m.max(x.abs() as f64))
        .max(1e-30);
    a.iter()
        .zip(b)
        .map(|(x, y)| ((*x as f64) - (*y as f64)).abs())
        .fold(
            0.0f64,
            |m, d| if d.is_nan() { f64::INFINITY } else { m.max(d) },
        )
        / scale
}

/// Converts a decode error.
pub fn dec(e: decode::DecodeError) -> HarnessError {
    HarnessError::msg(format!("decode error: {e}"))
}
