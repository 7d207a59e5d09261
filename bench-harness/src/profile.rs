//! `bench-harness profile <suite> [shape options] --seconds N`: builds one configuration (the
//! first value of every list option) and loops it for N seconds with nothing else running, so a
//! profiler attached to the process sees only the kernel. Prints the iteration count and the
//! time per iteration at the end only.

use crate::cli::{OutputArgs, ProfileArgs, RunArgs, TimingArgs};
use crate::config::{self, Suite};
use crate::error::{HarnessError, Result};
use crate::measure::fmt_time;
use crate::runner::{dec, exec_for, random_vec};
use crate::suites::matmul::b_strides;
use decode::bench::{DecodeBench, PrefillBench, RecomputeBench};
use kernels::{
    GemmWorkspace, MatMut, MatRef, PackedB, SoftmaxOptions, gemm, gemm_prepacked, softmax_rows,
};
use std::io::Write;
use std::time::{Duration, Instant};

fn suite_of(p: &ProfileArgs) -> Result<Suite> {
    let suite = Suite::parse(&p.suite).map_err(HarnessError::Msg)?;
    if !suite.is_timed() {
        return Err(HarnessError::msg(format!(
            "profile: suite `{}` has nothing to loop (expected matmul, softmax, attention, \
             prefill or kv-vs-recompute)",
            suite.name()
        )));
    }
    Ok(suite)
}

fn run_config(p: &ProfileArgs) -> Result<config::RunConfig> {
    config::run_config(&RunArgs {
        suites: vec![suite_of(p)?.name().into()],
        shape: p.shape.clone(),
        timing: TimingArgs {
            reps: 1,
            min_time: 0.0,
            max_time: 1.0,
            warmup: 1,
            roof_sizes: "1MiB,32MiB,1GiB".into(),
            no_peak: true,
            paired: false,
        },
        output: OutputArgs {
            no_save: true,
            quiet: true,
            ..Default::default()
        },
    })
}

/// Checks the arguments without allocating.
pub fn validate(p: &ProfileArgs) -> Result<()> {
    if !(p.seconds.is_finite() && p.seconds > 0.0 && p.seconds <= 1e9) {
        return Err(HarnessError::msg(
            "--seconds: must be a positive number of seconds, at most 1e9",
        ));
    }
    let cfg = run_config(p)?;
    let suite = suite_of(p)?;
    let avail = crate::machine::mem_available();
    if let Some((what, bytes)) = crate::suites::estimates(suite, &cfg).into_iter().next() {
        crate::machine::check_fits(&what, bytes, avail)?;
    }
    Ok(())
}

type Step = Box<dyn FnMut() -> Result<()> + Send>;

/// Builds the configuration and loops it.
pub fn run(p: &ProfileArgs, out: &mut dyn Write) -> Result<()> {
    validate(p)?;
    let suite = suite_of(p)?;
    let cfg = run_config(p)?;
    let threads = if p.shape.threads.is_some() {
        cfg.threads[0]
    } else {
        crate::machine::cores()
    };
    let isa = cfg.isas[0];
    let exec = exec_for(isa)?;
    let (desc, mut step): (String, Step) = match suite {
        Suite::Matmul => {
            let s = cfg.sizes[0].clone();
            let (m, n, k) = (s.m, s.n, s.k);
            let a = random_vec(1, m * k)?;
            // `--cold-b`: identical copies of B in rotation, as in the matmul suite.
            let bs = crate::suites::matmul::b_buffers(&cfg, &s)?;
            let copies = bs.len();
            let mut turn = 0usize;
            let mut c = vec![0.0f32; m * n];
            let mut ws = GemmWorkspace::new();
            let (rsb, csb) = b_strides(&s);
            // `profile prepacked`: B packed before the loop, `gemm_prepacked` in it.
            let packed = if p.suite.trim().eq_ignore_ascii_case("prepacked") {
                bs.iter()
                    .map(|b| PackedB::new(&exec, MatRef::new(b, k, n, rsb, csb)?))
                    .collect::<std::result::Result<Vec<_>, _>>()?
            } else {
                Vec::new()
            };
            (
                format!(
                    "matmul {} {m}x{n}x{k} (B copies: {copies}){}",
                    s.label,
                    if packed.is_empty() {
                        ""
                    } else {
                        ", gemm_prepacked"
                    }
                ),
                Box::new(move || {
                    turn += 1;
                    let a = MatRef::row_major(&a, m, k)?;
                    let mut c = MatMut::row_major(&mut c, m, n)?;
                    if packed.is_empty() {
                        let b = MatRef::new(&bs[turn % copies], k, n, rsb, csb)?;
                        gemm(&exec, 1.0, a, b, 0.0, &mut c, &mut ws)?;
                    } else {
                        gemm_prepacked(
                            &exec,
                            1.0,
                            a,
                            &packed[turn % copies],
                            0.0,
                            &mut c,
                            &mut ws,
                        )?;
                    }
                    Ok(())
                }),
            )
        }
        Suite::Softmax => {
            let len = cfg.row_lens[0];
            let rows = crate::suites::softmax::rows_for(len);
            let mut data = random_vec(3, rows * len)?;
            (
                format!("softmax {rows}×{len}"),
                Box::new(move || {
                    softmax_rows(&exec, &mut data, len, SoftmaxOptions::default())?;
                    Ok(())
                }),
            )
        }
        Suite::Attention => {
            let s = cfg.attention[0].clone();
            let len = cfg.seq_lens[0];
            let mut bench = DecodeBench::new(s.shape, len).map_err(dec)?;
            (
                format!("attention {} {} seq_len {len}", s.describe(), s.shape.dtype),
                Box::new(move || bench.step(&exec).map_err(dec)),
            )
        }
        Suite::Prefill => {
            let s = cfg.prefill[0].clone();
            let (chunk, context) = (cfg.chunks[0], cfg.prefill_contexts[0]);
            let mut bench = PrefillBench::new(s.shape, chunk, context).map_err(dec)?;
            (
                format!(
                    "prefill {} {} T={chunk} after {context}",
                    s.describe(),
                    s.shape.dtype
                ),
                Box::new(move || bench.run(&exec).map_err(dec)),
            )
        }
        Suite::KvVsRecompute => {
            let s = cfg.recompute[0].clone();
            let c = cfg.contexts[0];
            let mut bench = RecomputeBench::new(s.shape, s.d_model, c).map_err(dec)?;
            if p.suite.trim().eq_ignore_ascii_case("recompute") {
                (
                    format!(
                        "recompute step {} d_model {} context {c}",
                        s.describe(),
                        s.d_model
                    ),
                    Box::new(move || bench.recompute_step(&exec).map_err(dec)),
                )
            } else {
                (
                    format!(
                        "cached step {} d_model {} context {c}",
                        s.describe(),
                        s.d_model
                    ),
                    Box::new(move || bench.cached_step(&exec).map_err(dec)),
                )
            }
        }
        Suite::Peak | Suite::Memory => unreachable!("suite_of refuses untimed suites"),
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| HarnessError::msg(format!("cannot build a pool of {threads} threads: {e}")))?;
    let budget = Duration::from_secs_f64(p.seconds);
    let (iters, elapsed) = pool.install(|| -> Result<(u64, f64)> {
        step()?;
        let start = Instant::now();
        let mut iters = 0u64;
        while start.elapsed() < budget {
            step()?;
            iters += 1;
        }
        Ok((iters, start.elapsed().as_secs_f64()))
    })?;
    writeln!(
        out,
        "profile {desc}, {threads} threads, isa {isa}: {iters} iterations in {elapsed:.2} s, \
         {} per iteration",
        fmt_time(elapsed / iters.max(1) as f64)
    )?;
    Ok(())
}
