//! Exhaustive accuracy of the vectorised `exp` and `exp2`: every finite f32 input, on every
//! available ISA path, against `f64::exp` (`f64::exp2`) rounded to f32. Prints the largest error
//! in ulps, the input that produced it, and how many inputs were exact (0 ulp) or within 1 ulp.
//!
//! `cargo run --release -p kernels --example exp_ulp [-- exp exp2 portable avx2 avx512]`
//!
//! ulps are counted as the distance between the bit patterns of the two results (exp is never
//! negative, so both are non-negative); +∞ against +∞ and 0 against 0 are 0 ulp, and
//! `f32::MAX` against +∞ is 1 ulp.
use kernels::{Exec, Isa, exp, exp2};
use rayon::prelude::*;
use std::time::Instant;

/// One of the functions under test: the vectorised kernel and its f64 reference.
#[derive(Clone, Copy)]
struct Func {
    name: &'static str,
    kernel: fn(&Exec, &[f32], &mut [f32]) -> kernels::Result<()>,
    reference: fn(f64) -> f64,
}

const FUNCS: [Func; 2] = [
    Func {
        name: "exp",
        kernel: exp,
        reference: f64::exp,
    },
    Func {
        name: "exp2",
        kernel: exp2,
        reference: f64::exp2,
    },
];

/// Bit patterns per task.
const CHUNK: u64 = 1 << 16;

/// Error statistics over a set of inputs.
#[derive(Clone, Copy, Debug, Default)]
struct Stats {
    /// Finite inputs checked.
    inputs: u64,
    /// Inputs with a result exactly equal to the rounded f64 value.
    exact: u64,
    /// Inputs with an error of exactly 1 ulp.
    one_ulp: u64,
    /// Inputs with an error above 1 ulp.
    more: u64,
    /// Finite inputs whose result was NaN (never expected).
    nan: u64,
    /// Largest error seen, and the input bit pattern that produced it.
    max_ulp: u64,
    max_at: u32,
}

impl Stats {
    fn merge(self, o: Stats) -> Stats {
        let (max_ulp, max_at) =
            if o.max_ulp > self.max_ulp || (o.max_ulp == self.max_ulp && o.max_at < self.max_at) {
                (o.max_ulp, o.max_at)
            } else {
                (self.max_ulp, self.max_at)
            };
        Stats {
            inputs: self.inputs + o.inputs,
            exact: self.exact + o.exact,
            one_ulp: self.one_ulp + o.one_ulp,
            more: self.more + o.more,
            nan: self.nan + o.nan,
            max_ulp,
            max_at,
        }
    }
}

/// Checks the bit patterns `base .. base + CHUNK`, reusing the two buffers.
fn check_chunk(
    f: Func,
    exec: &Exec,
    base: u64,
    input: &mut Vec<f32>,
    output: &mut Vec<f32>,
) -> Stats {
    input.clear();
    input.extend(
        (base..base + CHUNK)
            .map(|b| f32::from_bits(b as u32))
            .filter(|x| x.is_finite()),
    );
    output.resize(input.len(), 0.0);
    (f.kernel)(exec, input, output).expect("equal lengths");
    let mut s = Stats {
        inputs: input.len() as u64,
        ..Stats::default()
    };
    for (&x, &got) in input.iter().zip(output.iter()) {
        if got.is_nan() {
            s.nan += 1;
            continue;
        }
        let want = (f.reference)(x as f64) as f32;
        let ulp = (got.to_bits() as i64 - want.to_bits() as i64).unsigned_abs();
        match ulp {
            0 => s.exact += 1,
            1 => s.one_ulp += 1,
            _ => s.more += 1,
        }
        if ulp > s.max_ulp {
            s.max_ulp = ulp;
            s.max_at = x.to_bits();
        }
    }
    s
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let funcs: Vec<Func> = FUNCS
        .into_iter()
        .filter(|f| !args.iter().any(|a| a.starts_with("exp")) || args.iter().any(|a| a == f.name))
        .collect();
    let only: Vec<Isa> = args
        .iter()
        .filter(|a| !a.starts_with("exp"))
        .map(|a| a.parse().unwrap_or_else(|e| panic!("{e}")))
        .collect();
    for f in funcs {
        println!(
            "{} over every finite f32 input vs f64::{} rounded to f32 ({} threads)",
            f.name,
            f.name,
            rayon::current_num_threads()
        );
        for isa in Isa::available()
            .into_iter()
            .filter(|i| only.is_empty() || only.contains(i))
        {
            let exec = Exec::sequential().with_isa(isa).expect("available ISA");
            let start = Instant::now();
            let s = (0..(1u64 << 32) / CHUNK)
                .into_par_iter()
                .map_init(
                    || (Vec::with_capacity(CHUNK as usize), Vec::new()),
                    |(input, output), c| check_chunk(f, &exec, c * CHUNK, input, output),
                )
                .reduce(Stats::default, Stats::merge);
            let x = f32::from_bits(s.max_at);
            let mut got = [0.0f32];
            (f.kernel)(&exec, &[x], &mut got).expect("equal lengths");
            println!(
                "{isa:>8}: max {} ulp at x = {x:e} ({:#010x}): got {:e}, f64 {:e}; \
                 {} inputs: {} exact (0 ulp), {} at 1 ulp, {} above 1 ulp, {} NaN; {:.1} s",
                s.max_ulp,
                s.max_at,
                got[0],
                (f.reference)(x as f64),
                s.inputs,
                s.exact,
                s.one_ulp,
                s.more,
                s.nan,
                start.elapsed().as_secs_f64()
            );
        }
    }
}
