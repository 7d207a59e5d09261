//! The one self-describing record type every suite emits, and the header record.
//!
//! Every key of [`Record`] is always present in JSON/JSONL/CSV output; a quantity that does not
//! apply to a record is `null` (empty in CSV). The header record (`suite: "header"`) carries the
//! same keys plus the [`HeaderInfo`] keys.

use serde::Serialize;

/// One measured (or computed) configuration.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Record {
    /// `header`, `peak`, `matmul`, `softmax`, `attention`, `prefill`, `kv-vs-recompute`, `memory`.
    pub suite: String,
    /// Implementation: `kernels`, `kernels-prepacked` (matmul with B packed ahead of time),
    /// `matrixmultiply(1t)`, `naive(1t)`, `cached`, `recompute`,
    /// `fma-probe`, `read-sum`, `arithmetic`.
    #[serde(rename = "impl")]
    pub implementation: String,
    /// ISA path that ran (`avx512`, `avx2`, `portable`); for baselines `auto`
    /// (matrixmultiply's own dispatch) or `scalar`; absent where no kernel ran (`memory`).
    pub isa: Option<String>,
    /// Threads of the rayon pool the configuration ran on.
    pub threads: Option<usize>,
    /// Human label of the shape (`square`, `gemv`, `q·Kᵀ`, a preset name, ...).
    pub shape: Option<String>,
    /// Matmul: rows of A and C.
    pub m: Option<usize>,
    /// Matmul: columns of B and C.
    pub n: Option<usize>,
    /// Matmul: inner dimension.
    pub k: Option<usize>,
    /// Attention: tokens in the cache (context length).
    pub seq_len: Option<usize>,
    /// Attention: query heads.
    pub heads: Option<usize>,
    /// Attention: key/value heads.
    pub kv_heads: Option<usize>,
    /// Attention: elements per head.
    pub head_dim: Option<usize>,
    /// Attention: KV cache element type (`f32`, `bf16`).
    pub kv_dtype: Option<String>,
    /// Attention: layers per step.
    pub layers: Option<usize>,
    /// Attention: sliding window, when the model has one.
    pub window: Option<usize>,
    /// Prefill: tokens per chunk.
    pub chunk: Option<usize>,
    /// kv-vs-recompute: model width of the K/V projections.
    pub d_model: Option<usize>,
    /// Softmax: elements per row.
    pub row_len: Option<usize>,
    /// Softmax: rows per call.
    pub rows: Option<usize>,
    /// Working-set bytes (what decides the bandwidth roof).
    pub bytes: Option<u64>,
    /// Timed samples.
    pub reps: Option<usize>,
    /// Median seconds per call.
    pub median_s: Option<f64>,
    /// Fastest sample, seconds per call.
    pub min_s: Option<f64>,
    /// Slowest sample, seconds per call.
    pub max_s: Option<f64>,
    /// Standard deviation of the samples, seconds.
    pub stddev_s: Option<f64>,
    /// GFLOP/s at the median.
    pub gflops: Option<f64>,
    /// GB/s (10⁹ bytes) at the median.
    pub gbps: Option<f64>,
    /// Softmax: elements per second at the median.
    pub elements_per_s: Option<f64>,
    /// Tokens per second at the median.
    pub tokens_per_s: Option<f64>,
    /// Percent of the roof named in `roof`, measured in this run.
    pub pct_peak: Option<f64>,
    /// Baseline median / this median (> 1: faster than the baseline).
    pub vs_baseline: Option<f64>,
    /// Which roof `pct_peak` refers to.
    pub roof: Option<String>,
    /// Which implementation `vs_baseline` compares against.
    pub baseline: Option<String>,
    /// Memory: KV cache bytes per token, all layers, K and V.
    pub kv_bytes_per_token: Option<u64>,
    /// Memory: KV cache bytes at `seq_len` (capped by the window).
    pub kv_bytes_total: Option<u64>,
    /// kv-vs-recompute: the FLOP-count ratio recompute/cached (what a naive reading predicts).
    pub flop_ratio: Option<f64>,
    /// Free-form remark.
    pub note: Option<String>,
    /// With `--paired`: the median over interleaved rounds (one kernel sample, one sample of
    /// the roof on the same threads) of the percent of the roof reached in that round. The
    /// roof is the one in `roof`: the same-bytes sum for attention and GEMV-like matmul
    /// shapes; for other matmul shapes only when it is the FMA peak (null otherwise).
    pub pct_peak_paired: Option<f64>,
    /// Header keys, present only on the header record.
    #[serde(flatten)]
    pub header: Option<HeaderInfo>,
}

/// What the header record adds: the machine and the build.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct HeaderInfo {
    /// CPU model (`/proc/cpuinfo` model name).
    pub cpu: String,
    /// Logical CPUs available.
    pub cores: usize,
    /// CPU features the runtime detector sees.
    pub detected_features: Vec<String>,
    /// Target features compiled into this build.
    pub compiled_features: Vec<String>,
    /// Thread counts swept.
    pub thread_counts: Vec<usize>,
    /// ISA paths swept.
    pub isas: Vec<String>,
    /// bench-harness crate version.
    pub version: String,
    /// Git commit of the sources, if available.
    pub git_commit: Option<String>,
    /// `rustc --version`, if available.
    pub rustc: Option<String>,
    /// OS / architecture.
    pub target: String,
    /// L2 cache per core, bytes (sysfs), if known.
    pub l2_bytes: Option<usize>,
    /// Last-level cache, bytes (sysfs), if known.
    pub llc_bytes: Option<usize>,
    /// MemAvailable at start, bytes.
    pub mem_available: Option<u64>,
    /// The command line.
    pub command: String,
    /// Seconds since the Unix epoch at start.
    pub unix_time: u64,
    /// The transparent-huge-page mode (`always`, `madvise`, `never`), if known: the KV cache,
    /// operands and roof arrays ask for huge pages, which only `always`/`madvise` grant.
    pub transparent_hugepages: Option<String>,
}

/// Keys every record carries (the contract of the JSON/CSV schema).
pub const REQUIRED_KEYS: [&str; 28] = [
    "suite",
    "impl",
    "isa",
    "threads",
    "m",
    "n",
    "k",
    "seq_len",
    "heads",
    "kv_heads",
    "head_dim",
    "kv_dtype",
    "layers",
    "row_len",
    "median_s",
    "min_s",
    "max_s",
    "gflops",
    "gbps",
    "elements_per_s",
    "tokens_per_s",
    "pct_peak",
    "pct_peak_paired",
    "vs_baseline",
    "roof",
    "shape",
    "bytes",
    "reps",
];

/// Keys the header record adds.
pub const HEADER_KEYS: [&str; 16] = [
    "cpu",
    "cores",
    "detected_features",
    "compiled_features",
    "thread_counts",
    "isas",
    "version",
    "git_commit",
    "rustc",
    "target",
    "l2_bytes",
    "llc_bytes",
    "mem_available",
    "command",
    "unix_time",
    "transparent_hugepages",
];

impl Record {
    /// A record of `suite` and `implementation`, everything else empty.
    pub fn new(suite: &str, implementation: &str) -> Self {
        Record {
            suite: suite.into(),
            implementation: implementation.into(),
            ..Default::default()
        }
    }

    /// Fills the timing fields from [`crate::measure::Stats`].
    pub fn with_stats(mut self, s: &crate::measure::Stats) -> Self {
        self.median_s = Some(s.median);
        self.min_s = Some(s.min);
        self.max_s = Some(s.max);
        self.stddev_s = Some(s.stddev);
        self.reps = Some(s.samples);
        self
    }

    /// The record as a JSON object (every key present).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("records always serialize")
    }
}

/// Builds the header record from the machine and the run's settings.
pub fn header_record(isa: &str, threads: &[usize], isas: &[String]) -> Record {
    let info = HeaderInfo {
        cpu: crate::machine::cpu_model(),
        cores: crate::machine::cores(),
        detected_features: kernels::arch::detected_cpu_features()
            .into_iter()
            .map(String::from)
            .collect(),
        compiled_features: kernels::arch::compiled_target_features()
            .into_iter()
            .map(String::from)
            .collect(),
        thread_counts: threads.to_vec(),
        isas: isas.to_vec(),
        version: env!("CARGO_PKG_VERSION").into(),
        git_commit: crate::machine::git_commit(),
        rustc: crate::machine::rustc_version(),
        target: format!("{}-{}", std::env::consts::ARCH, std::env::consts::OS),
        l2_bytes: crate::machine::cache_bytes(2),
        llc_bytes: crate::machine::cache_bytes(3),
        mem_available: crate::machine::mem_available(),
        transparent_hugepages: crate::machine::transparent_hugepages(),
        // `args_os`: `args` panics on an argument that is not UTF-8 (a path, say).
        command: std::env::args_os()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" "),
        unix_time: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    };
    Record {
        isa: Some(isa.into()),
        threads: threads.iter().copied().max(),
        header: Some(info),
        ..Record::new("header", "bench-harness")
    }
}
