//! The command line (clap derive). `bench-harness` alone runs the default job; suite names may
//! be given directly (`bench-harness matmul softmax`) or after `run`; `profile <suite>` loops one
//! configuration for a profiler.
//!
//! List-valued options are taken as text and parsed by [`crate::sweep`], so that empty or
//! malformed lists get a message that names the option.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

const EXAMPLES: &str = "\
Examples:
  bench-harness                                   the default job (~1 min): every suite, report
                                                  and plot under target/bench-results/
  bench-harness matmul --sizes 512,1x4096x4096 --threads 1,2
  bench-harness attention --preset llama3-8b --layers 1 --seq-lens 256..32768*2 --kv-dtype f32,bf16
  bench-harness kv-vs-recompute --seq-lens 128..4096*2 --format jsonl --out kv.jsonl
  bench-harness memory --preset mistral-7b --seq-lens 4096,32768,131072
  bench-harness profile attention --seq-lens 32768 --heads 32 --kv-heads 8 --seconds 10

Lists: `1,2`, ranges `256..32768*2` (geometric), `64..256+64` (step), `1..4` (every integer).
Suites: peak, matmul, softmax, attention, prefill, kv-vs-recompute, memory, all.
Presets: llama2-7b, llama3-8b, mistral-7b, gpt3-175b, tiny.";

/// SIMD kernel and decode-attention benchmarks with rooflines: how fast matmul, softmax and
/// decode attention run on this machine, and how close that is to what it can do.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "bench-harness",
    version,
    args_conflicts_with_subcommands = true,
    after_help = EXAMPLES
)]
pub struct Cli {
    /// `run` (the default) or `profile`.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Options of the default `run`.
    #[command(flatten)]
    pub run: RunArgs,
}

/// Subcommands.
#[derive(Subcommand, Debug, Clone)]
pub enum Command {
    /// Run benchmark suites and print a report (the default when no subcommand is given).
    #[command(after_help = EXAMPLES)]
    Run(RunArgs),
    /// Loop one configuration of a suite for N seconds with nothing else running, for `perf
    /// record` or `cargo flamegraph`. The first value of each list option is used.
    Profile(ProfileArgs),
}

/// Options of `run`.
#[derive(Args, Debug, Clone, Default)]
pub struct RunArgs {
    /// Suites to run: peak, matmul, softmax, attention, prefill, kv-vs-recompute, memory, all
    /// [default: all]. The machine's peaks are measured whenever a timed suite runs.
    #[arg(value_name = "SUITE")]
    pub suites: Vec<String>,
    /// Shapes and sweeps.
    #[command(flatten)]
    pub shape: ShapeArgs,
    /// Timing.
    #[command(flatten)]
    pub timing: TimingArgs,
    /// Output.
    #[command(flatten)]
    pub output: OutputArgs,
}

/// Options of `profile`.
#[derive(Args, Debug, Clone)]
pub struct ProfileArgs {
    /// The suite whose configuration to loop: matmul, softmax, attention, prefill,
    /// kv-vs-recompute (`recompute` loops the recompute path; `cached` the cached one;
    /// `prepacked` loops matmul's `gemm_prepacked`, B packed before the loop).
    #[arg(value_name = "SUITE")]
    pub suite: String,
    /// Shape of the configuration (first value of each list).
    #[command(flatten)]
    pub shape: ShapeArgs,
    /// Seconds to loop.
    #[arg(long, default_value_t = 10.0, value_name = "N")]
    pub seconds: f64,
}

/// Shape and sweep options shared by `run` and `profile`.
#[derive(Args, Debug, Clone, Default)]
pub struct ShapeArgs {
    /// Thread counts; each configuration runs on its own rayon pool of that size
    /// [default: 1 up to the number of cores].
    #[arg(long, value_name = "LIST", help_heading = "Sweeps")]
    pub threads: Option<String>,
    /// ISA paths to run: avx512, avx2, portable [default: the widest this CPU has].
    #[arg(long, value_name = "LIST", help_heading = "Sweeps")]
    pub isa: Option<String>,
    /// Matmul shapes: `N` (square), `MxNxK`, or `qk:MxNxK` (B read as Kᵀ of a row-major key
    /// matrix) [default: 256,512,1024 square, 1x4096x4096, 16x4096x4096, 128x2048x2048,
    /// qk:1x4096x128].
    #[arg(long, value_name = "LIST", help_heading = "Sweeps")]
    pub sizes: Option<String>,
    /// Matmul: rotate each call through copies of B (and GEMV's same-bytes sum through copies of
    /// its array) that together exceed twice the last-level cache, so B streams from DRAM as a
    /// model's weights do, instead of being re-read from the LLC.
    #[arg(long, help_heading = "Sweeps")]
    pub cold_b: bool,
    /// Softmax row lengths [default: 128,1024,4096,32768].
    #[arg(long, value_name = "LIST", help_heading = "Sweeps")]
    pub row_lens: Option<String>,
    /// Context lengths of attention, kv-vs-recompute and the memory table
    /// [default: 256..16384*4; kv-vs-recompute 256..4096*4; memory 4096,32768,131072].
    #[arg(long, value_name = "LIST", help_heading = "Sweeps")]
    pub seq_lens: Option<String>,
    /// Prefill chunk sizes T [default: 64,256,1024].
    #[arg(long, value_name = "LIST", help_heading = "Sweeps")]
    pub chunks: Option<String>,
    /// Prefill: tokens already cached before the chunk, as in chunked prefill of a long
    /// prompt or a later turn of a chat [default: 0].
    #[arg(long, value_name = "LIST", help_heading = "Sweeps")]
    pub prefill_context: Option<String>,
    /// Model presets: llama2-7b, llama3-8b, mistral-7b, gpt3-175b, tiny. Explicit --heads,
    /// --kv-heads, --head-dim, --layers, --window override the preset's values.
    #[arg(long, value_name = "LIST", help_heading = "Attention shape")]
    pub preset: Option<String>,
    /// Query heads [default: 32].
    #[arg(long, value_name = "LIST", help_heading = "Attention shape")]
    pub heads: Option<String>,
    /// Key/value heads; must divide --heads [default: attention 8,32; others 8; with --heads
    /// given, the defaults that divide it, or --heads itself when none does].
    #[arg(long, value_name = "LIST", help_heading = "Attention shape")]
    pub kv_heads: Option<String>,
    /// Elements per head [default: 128].
    #[arg(long, value_name = "LIST", help_heading = "Attention shape")]
    pub head_dim: Option<String>,
    /// Layers per decode step [default: 1; presets: the model's].
    #[arg(long, value_name = "LIST", help_heading = "Attention shape")]
    pub layers: Option<String>,
    /// KV cache element types: f32, bf16 [default: attention f32,bf16; others f32].
    #[arg(long, value_name = "LIST", help_heading = "Attention shape")]
    pub kv_dtype: Option<String>,
    /// Sliding attention window in tokens (the cache never holds more).
    #[arg(long, value_name = "N", help_heading = "Attention shape")]
    pub window: Option<usize>,
    /// Model width for the K/V projections of kv-vs-recompute [default: heads × head_dim].
    #[arg(long, value_name = "N", help_heading = "Attention shape")]
    pub d_model: Option<usize>,
}

/// Timing options.
#[derive(Args, Debug, Clone, Default)]
pub struct TimingArgs {
    /// Minimum timed repetitions per configuration (at most 10000).
    #[arg(long, default_value_t = 3, value_name = "N", help_heading = "Timing")]
    pub reps: usize,
    /// Minimum seconds of timed repetitions per configuration (0: exactly --reps calls).
    #[arg(
        long,
        default_value_t = 0.2,
        value_name = "SECONDS",
        help_heading = "Timing"
    )]
    pub min_time: f64,
    /// Stop sampling a configuration after this many seconds, even below --reps or
    /// --min-time.
    #[arg(
        long,
        default_value_t = 2.0,
        value_name = "SECONDS",
        help_heading = "Timing"
    )]
    pub max_time: f64,
    /// Untimed warm-up calls per configuration (at least 1 always runs; at most 1000000, and
    /// none after --max-time).
    #[arg(long, default_value_t = 1, value_name = "N", help_heading = "Timing")]
    pub warmup: usize,
    /// Array sizes of the read-bandwidth roofs: L2 (per thread), LLC, DRAM.
    #[arg(
        long,
        default_value = "1MiB,32MiB,1GiB",
        value_name = "L2,LLC,DRAM",
        help_heading = "Timing"
    )]
    pub roof_sizes: String,
    /// Skip measuring the peaks (no % of roof).
    #[arg(long, help_heading = "Timing")]
    pub no_peak: bool,
    /// Matmul and attention: interleave every timed sample with a sample of the kernel's roof
    /// (the FMA probe on the same threads, or the sum over the same bytes) and report the
    /// median of the per-round ratios as `pct_peak_paired`. On a shared machine a neighbour's
    /// load then slows both sides of each ratio alike. About doubles those measurements' time.
    #[arg(long, help_heading = "Timing")]
    pub paired: bool,
}

/// Report formats.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// Markdown tables.
    #[default]
    #[value(alias = "markdown")]
    Md,
    /// One CSV table, every record one row.
    Csv,
    /// One JSON array of records.
    Json,
    /// One JSON record per line.
    Jsonl,
}

/// Output options.
#[derive(Args, Debug, Clone, Default)]
pub struct OutputArgs {
    /// Report format.
    #[arg(long, value_enum, default_value_t = Format::Md, help_heading = "Output")]
    pub format: Format,
    /// Write the report to FILE instead of stdout.
    #[arg(long, value_name = "FILE", help_heading = "Output")]
    pub out: Option<PathBuf>,
    /// Write an SVG plot of tokens/s against context length (one line per thread count and
    /// KV dtype).
    #[arg(long, value_name = "FILE.svg", help_heading = "Output")]
    pub plot: Option<PathBuf>,
    /// Also save report.md, report.jsonl and attention.svg here. The default job (no suite
    /// named, no --out) saves to target/bench-results unless --no-save is given.
    #[arg(long, value_name = "DIR", help_heading = "Output")]
    pub results_dir: Option<PathBuf>,
    /// Do not save anything under the results directory.
    #[arg(long, help_heading = "Output", conflicts_with = "results_dir")]
    pub no_save: bool,
    /// No progress bar (it is also hidden when stderr is not a terminal).
    #[arg(long, short, help_heading = "Output")]
    pub quiet: bool,
}
