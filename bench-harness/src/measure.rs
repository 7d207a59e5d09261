//! Timing: warm-up, calibrated batches, repetitions until `--reps` and `--min-time` are both
//! met (or `--max-time` is spent), and the median / min / max / stddev of the per-call time.

use crate::error::HarnessError;
use std::time::Instant;

/// How long and how often each configuration is timed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MeasureOpts {
    /// Untimed calls before sampling (at least one always runs: it also calibrates batching).
    pub warmup: usize,
    /// Minimum timed samples.
    pub reps: usize,
    /// Minimum seconds of timed samples. 0 disables batching: each sample is one call.
    pub min_time: f64,
    /// Sampling stops once this many seconds are spent, even below `reps` (at least one sample
    /// is always taken), so one slow configuration cannot eat the whole budget.
    pub max_time: f64,
}

impl Default for MeasureOpts {
    fn default() -> Self {
        Self {
            warmup: 1,
            reps: 3,
            min_time: 0.2,
            max_time: 2.0,
        }
    }
}

/// Summary of the per-call times of one configuration, in seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stats {
    /// Median per-call time.
    pub median: f64,
    /// Fastest sample.
    pub min: f64,
    /// Slowest sample.
    pub max: f64,
    /// Mean per-call time.
    pub mean: f64,
    /// Sample standard deviation (0 with one sample).
    pub stddev: f64,
    /// Timed samples taken.
    pub samples: usize,
    /// Calls per sample (batching of very short calls).
    pub batch: usize,
}

impl Stats {
    /// Summarises per-call sample times. Panics on an empty slice.
    pub fn from_samples(samples: &[f64], batch: usize) -> Stats {
        assert!(!samples.is_empty(), "no samples");
        let mut s = samples.to_vec();
        s.sort_by(f64::total_cmp);
        let n = s.len();
        let median = if n % 2 == 1 {
            s[n / 2]
        } else {
            0.5 * (s[n / 2 - 1] + s[n / 2])
        };
        let mean = s.iter().sum::<f64>() / n as f64;
        let var = if n > 1 {
            s.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (n - 1) as f64
        } else {
            0.0
        };
        Stats {
            median,
            min: s[0],
            max: s[n - 1],
            mean,
            stddev: var.sqrt(),
            samples: n,
            batch,
        }
    }
}

/// Hard cap on samples per configuration (`--reps` above it is refused).
pub const MAX_SAMPLES: usize = 10_000;
/// Hard cap on warm-up calls (`--warmup` above it is refused); the warm-up also stops once
/// `max_time` has passed.
pub const MAX_WARMUP: usize = 1_000_000;

/// Times `f` per [`MeasureOpts`]: warm-up, then samples of `batch` calls each, where `batch` is
/// chosen so one sample lasts about `min_time / 20` (at least 1 call; 1 when `min_time` is 0).
pub fn measure(
    opts: &MeasureOpts,
    mut f: impl FnMut() -> Result<(), HarnessError>,
) -> Result<Stats, HarnessError> {
    let batch = warm_up(opts, &mut f)?;
    let reps = opts.reps.max(1);
    let mut samples = Vec::with_capacity(reps.clamp(16, MAX_SAMPLES));
    let start = Instant::now();
    loop {
        let t = Instant::now();
        for _ in 0..batch {
            f()?;
        }
        samples.push(t.elapsed().as_secs_f64() / batch as f64);
        let spent = start.elapsed().as_secs_f64();
        if (samples.len() >= reps && spent >= opts.min_time)
            || spent >= opts.max_time
            || samples.len() >= MAX_SAMPLES
        {
            break;
        }
    }
    Ok(Stats::from_samples(&samples, batch))
}

/// Runs the warm-up calls and returns the calls per sample: enough for one sample to last
/// about `min_time / 20` (1 when `min_time` is 0).
fn warm_up(
    opts: &MeasureOpts,
    f: &mut impl FnMut() -> Result<(), HarnessError>,
) -> Result<usize, HarnessError> {
    let mut last = 0.0;
    let start = Instant::now();
    for _ in 0..opts.warmup.max(1) {
        let t = Instant::now();
        f()?;
        last = t.elapsed().as_secs_f64();
        if start.elapsed().as_secs_f64() >= opts.max_time {
            break;
        }
    }
    Ok(if opts.min_time > 0.0 {
        let target = (opts.min_time / 20.0).clamp(1e-4, 0.02);
        ((target / last.max(1e-9)).ceil() as usize).clamp(1, 1_000_000)
    } else {
        1
    })
}

/// One batch of calls: `run(n)` makes `n` calls (one closure per batch, so that a kernel can
/// enter its thread pool once per sample rather than once per call).
pub type Batch<'a> = &'a mut dyn FnMut(usize) -> Result<(), HarnessError>;

/// Samples of [`measure_interleaved`].
#[derive(Debug, Clone, PartialEq)]
pub struct Interleaved {
    /// Per closure, its per-call sample times, round by round.
    pub samples: Vec<Vec<f64>>,
    /// Per closure, the calls each of its samples averaged.
    pub batches: Vec<usize>,
}

impl Interleaved {
    /// The stats of closure `i`'s samples.
    pub fn stats(&self, i: usize) -> Stats {
        Stats::from_samples(&self.samples[i], self.batches[i])
    }
}

/// Times several closures in alternation, per [`MeasureOpts`] (each one warmed up and batched
/// on its own; `min_time`/`max_time` bound the time spent per closure, on average): every
/// round takes one sample of each in turn, so a neighbour's burst on a shared machine slows
/// all of them alike and the per-round ratios stay steady where the separate medians drift.
pub fn measure_interleaved(
    opts: &MeasureOpts,
    batches: &mut [Batch<'_>],
) -> Result<Interleaved, HarnessError> {
    if batches.is_empty() {
        return Ok(Interleaved {
            samples: Vec::new(),
            batches: Vec::new(),
        });
    }
    let mut sizes = Vec::with_capacity(batches.len());
    for run in batches.iter_mut() {
        sizes.push(warm_up(opts, &mut || run(1))?);
    }
    let n = batches.len() as f64;
    let mut samples = vec![Vec::new(); batches.len()];
    let start = Instant::now();
    loop {
        for ((run, &batch), out) in batches.iter_mut().zip(&sizes).zip(&mut samples) {
            let t = Instant::now();
            run(batch)?;
            out.push(t.elapsed().as_secs_f64() / batch as f64);
        }
        let rounds = samples.first().map_or(0, Vec::len);
        let spent = start.elapsed().as_secs_f64() / n;
        if (rounds >= opts.reps.max(1) && spent >= opts.min_time)
            || spent >= opts.max_time
            || rounds >= MAX_SAMPLES
        {
            break;
        }
    }
    Ok(Interleaved {
        samples,
        batches: sizes,
    })
}

/// Median over rounds of `num[i] / den[i]` (NaN when empty).
pub fn median_ratio(num: &[f64], den: &[f64]) -> f64 {
    let mut r: Vec<f64> = num.iter().zip(den).map(|(a, b)| a / b).collect();
    if r.is_empty() {
        return f64::NAN;
    }
    r.sort_by(f64::total_cmp);
    let n = r.len();
    if n % 2 == 1 {
        r[n / 2]
    } else {
        0.5 * (r[n / 2 - 1] + r[n / 2])
    }
}

/// Formats seconds with a unit that keeps 3–4 significant digits (`812 ns`, `3.41 ms`).
pub fn fmt_time(s: f64) -> String {
    if !s.is_finite() {
        return "-".into();
    }
    let (v, unit) = if s < 1e-6 {
        (s * 1e9, "ns")
    } else if s < 1e-3 {
        (s * 1e6, "µs")
    } else if s < 1.0 {
        (s * 1e3, "ms")
    } else {
        (s, "s")
    };
    if v >= 100.0 {
        format!("{v:.0} {unit}")
    } else if v >= 10.0 {
        format!("{v:.1} {unit}")
    } else {
        format!("{v:.2} {unit}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats() {
        let s = Stats::from_samples(&[3.0, 1.0, 2.0], 1);
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert!((s.stddev - 1.0).abs() < 1e-12);
        let s = Stats::from_samples(&[4.0, 1.0, 2.0, 3.0], 1);
        assert_eq!(s.median, 2.5);
        assert_eq!(Stats::from_samples(&[5.0], 1).stddev, 0.0);
    }

    #[test]
    fn measure_counts_reps() {
        let mut calls = 0;
        let opts = MeasureOpts {
            warmup: 2,
            reps: 5,
            min_time: 0.0,
            max_time: 10.0,
        };
        let s = measure(&opts, || {
            calls += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(s.samples, 5);
        assert_eq!(calls, 7);
    }

    #[test]
    fn interleaved_rounds_alternate() {
        let opts = MeasureOpts {
            warmup: 1,
            reps: 4,
            min_time: 0.0,
            max_time: 10.0,
        };
        let order = std::cell::RefCell::new(Vec::new());
        let mut a = |n: usize| {
            order.borrow_mut().push(('a', n));
            Ok(())
        };
        let mut b = |n: usize| {
            order.borrow_mut().push(('b', n));
            Ok(())
        };
        let r = measure_interleaved(&opts, &mut [&mut a, &mut b]).unwrap();
        let s = &r.samples;
        assert_eq!((s.len(), s[0].len(), s[1].len()), (2, 4, 4));
        assert_eq!(r.batches, [1, 1]);
        assert_eq!(r.stats(1).samples, 4);
        let order = order.into_inner();
        // Warm-up of each, then a, b, a, b, ... one call per sample (min_time 0).
        assert_eq!(&order[..2], &[('a', 1), ('b', 1)]);
        for pair in order[2..].chunks(2) {
            assert_eq!(pair, &[('a', 1), ('b', 1)]);
        }
        assert_eq!(median_ratio(&[2.0, 9.0, 4.0], &[1.0, 3.0, 1.0]), 3.0);
        assert_eq!(median_ratio(&[1.0, 3.0], &[1.0, 1.0]), 2.0);
        assert!(median_ratio(&[], &[]).is_nan());
        assert!(
            measure_interleaved(&opts, &mut [])
                .unwrap()
                .samples
                .is_empty()
        );
    }

    #[test]
    fn errors_propagate() {
        let r = measure(&MeasureOpts::default(), || Err(HarnessError::msg("boom")));
        assert!(r.is_err());
    }

    #[test]
    fn time_format() {
        assert_eq!(fmt_time(3.41e-3), "3.41 ms");
        assert_eq!(fmt_time(812e-9), "812 ns");
        assert_eq!(fmt_time(12.0), "12.0 s");
    }
}
