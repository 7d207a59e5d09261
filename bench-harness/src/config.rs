//! Turns parsed command-line options into a validated [`RunConfig`]: defaults per suite, list
//! expansion, presets, and every check that can fail before anything is allocated.

use crate::cli::{Format, RunArgs, ShapeArgs, TimingArgs};
use crate::error::{HarnessError, Result};
use crate::measure::MeasureOpts;
use crate::peak::RoofSizes;
use crate::sweep::{self, MatShape};
use decode::bench::AttnShape;
use kernels::{Isa, KvDtype};
use std::path::PathBuf;

/// A benchmark suite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Suite {
    /// The machine's FMA and read-bandwidth roofs.
    Peak,
    /// GEMM / GEMV shapes against matrixmultiply.
    Matmul,
    /// Row softmax against a scalar baseline.
    Softmax,
    /// One decode step over a KV cache against a naive baseline.
    Attention,
    /// Causal attention of a chunk of T tokens.
    Prefill,
    /// Cached decode against recomputing K/V of the whole context.
    KvVsRecompute,
    /// KV cache bytes per token and per context (arithmetic).
    Memory,
}

impl Suite {
    /// Every suite, in run order.
    pub const ALL: [Suite; 7] = [
        Suite::Peak,
        Suite::Matmul,
        Suite::Softmax,
        Suite::Attention,
        Suite::Prefill,
        Suite::KvVsRecompute,
        Suite::Memory,
    ];

    /// The name on the command line and in records.
    pub fn name(self) -> &'static str {
        match self {
            Suite::Peak => "peak",
            Suite::Matmul => "matmul",
            Suite::Softmax => "softmax",
            Suite::Attention => "attention",
            Suite::Prefill => "prefill",
            Suite::KvVsRecompute => "kv-vs-recompute",
            Suite::Memory => "memory",
        }
    }

    /// Parses a suite name (a few aliases accepted).
    pub fn parse(s: &str) -> Result<Suite, String> {
        let t = s.trim().to_ascii_lowercase().replace('_', "-");
        Ok(match t.as_str() {
            "peak" | "roofline" => Suite::Peak,
            "matmul" | "gemm" | "prepacked" => Suite::Matmul,
            "softmax" => Suite::Softmax,
            "attention" | "decode" => Suite::Attention,
            "prefill" => Suite::Prefill,
            "kv-vs-recompute" | "kv" | "recompute" | "kv-cache" => Suite::KvVsRecompute,
            "memory" | "mem" => Suite::Memory,
            _ => {
                return Err(format!(
                    "unknown suite `{}` (expected one of: peak, matmul, softmax, attention, \
                     prefill, kv-vs-recompute, memory, all)",
                    s.trim()
                ));
            }
        })
    }

    /// True for suites that time something (and so want the roofs measured).
    pub fn is_timed(self) -> bool {
        !matches!(self, Suite::Memory | Suite::Peak)
    }
}

/// One attention shape of a sweep: the decode crate's workload shape, plus what the harness
/// needs around it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttnSpec {
    /// Preset name, or `custom`.
    pub label: String,
    /// Heads, head size, layers, KV element type and window.
    pub shape: AttnShape,
    /// Model width (K/V projections of kv-vs-recompute).
    pub d_model: usize,
}

impl AttnSpec {
    /// KV cache bytes per token: `2 × layers × kv_heads × head_dim × dtype bytes`.
    pub fn kv_bytes_per_token(&self) -> u64 {
        self.shape.kv_bytes_per_token() as u64
    }

    /// Tokens the cache holds at context `seq_len` (the window caps it).
    pub fn cached_tokens(&self, seq_len: usize) -> usize {
        self.shape.window.map_or(seq_len, |w| seq_len.min(w))
    }

    /// KV cache bytes at context `seq_len`.
    pub fn kv_bytes(&self, seq_len: usize) -> u64 {
        self.kv_bytes_per_token()
            .saturating_mul(self.cached_tokens(seq_len) as u64)
    }

    /// `h32/kv8/d128×L1` style description.
    pub fn describe(&self) -> String {
        let a = &self.shape;
        let mut s = format!(
            "h{}/kv{}/d{}×L{}",
            a.heads, a.kv_heads, a.head_dim, a.layers
        );
        if let Some(w) = a.window {
            s.push_str(&format!(" w{w}"));
        }
        s
    }
}

/// Everything a run needs, validated.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// Suites, in run order (never [`Suite::Peak`]: see `peak`).
    pub suites: Vec<Suite>,
    /// Thread counts.
    pub threads: Vec<usize>,
    /// ISA paths.
    pub isas: Vec<Isa>,
    /// Matmul shapes.
    pub sizes: Vec<MatShape>,
    /// Matmul: B (and the GEMV roof's array) rotated through copies beyond the LLC.
    pub cold_b: bool,
    /// Softmax row lengths.
    pub row_lens: Vec<usize>,
    /// Attention shapes.
    pub attention: Vec<AttnSpec>,
    /// Attention context lengths.
    pub seq_lens: Vec<usize>,
    /// Prefill shapes.
    pub prefill: Vec<AttnSpec>,
    /// Prefill chunk sizes.
    pub chunks: Vec<usize>,
    /// Tokens cached before each prefill chunk.
    pub prefill_contexts: Vec<usize>,
    /// kv-vs-recompute shapes.
    pub recompute: Vec<AttnSpec>,
    /// kv-vs-recompute context lengths.
    pub contexts: Vec<usize>,
    /// Memory-table shapes.
    pub memory: Vec<AttnSpec>,
    /// Memory-table context lengths.
    pub memory_contexts: Vec<usize>,
    /// Timing.
    pub measure: MeasureOpts,
    /// Measure the roofs (and report them): when `peak` is named, or a timed suite runs
    /// without `--no-peak`.
    pub peak: bool,
    /// Interleave matmul and attention samples with their roof's (`--paired`).
    pub paired: bool,
    /// Roof array sizes.
    pub roof_sizes: RoofSizes,
    /// Report format.
    pub format: Format,
    /// Report file (stdout when `None`).
    pub out: Option<PathBuf>,
    /// Plot file.
    pub plot: Option<PathBuf>,
    /// Where report.md, report.jsonl and attention.svg are saved (`None`: nowhere).
    pub results_dir: Option<PathBuf>,
    /// No progress bar.
    pub quiet: bool,
}

fn opt_list(what: &str, text: &Option<String>, default: &[usize]) -> Result<Vec<usize>, String> {
    match text {
        Some(t) => sweep::parse_positive_list(what, t),
        None => Ok(default.to_vec()),
    }
}

/// Defaults of an attention-shaped suite.
struct AttnDefaults {
    heads: &'static [usize],
    kv_heads: &'static [usize],
    head_dim: &'static [usize],
    layers: &'static [usize],
    dtypes: &'static [KvDtype],
}

/// `v` without repeated values, first occurrences kept in order.
fn dedup<T: PartialEq>(v: Vec<T>) -> Vec<T> {
    let mut out: Vec<T> = Vec::with_capacity(v.len());
    for x in v {
        if !out.contains(&x) {
            out.push(x);
        }
    }
    out
}

/// Expands presets or explicit shape lists into validated attention shapes.
fn attn_specs(s: &ShapeArgs, d: &AttnDefaults) -> Result<Vec<AttnSpec>, String> {
    let dtypes = match &s.kv_dtype {
        Some(t) => sweep::parse_dtypes(t)?,
        None => d.dtypes.to_vec(),
    };
    if s.window == Some(0) {
        return Err("--window: must be at least 1".into());
    }
    let heads = opt_list("--heads", &s.heads, d.heads)?;
    let kv = opt_list("--kv-heads", &s.kv_heads, d.kv_heads)?;
    let hd = opt_list("--head-dim", &s.head_dim, d.head_dim)?;
    let layers = opt_list("--layers", &s.layers, d.layers)?;
    if s.d_model == Some(0) {
        return Err("--d-model: must be at least 1".into());
    }
    let mut out = Vec::new();
    let presets = match &s.preset {
        Some(t) => Some(sweep::parse_list("--preset", t, sweep::preset)?),
        None => None,
    };
    let bases: Vec<Option<sweep::Preset>> = match presets {
        Some(p) => p.into_iter().map(Some).collect(),
        None => vec![None],
    };
    // Refuse an oversized product before building it (each list alone is capped, their
    // product is not).
    let combinations = [
        bases.len(),
        heads.len(),
        kv.len(),
        hd.len(),
        layers.len(),
        dtypes.len(),
    ]
    .into_iter()
    .fold(1usize, usize::saturating_mul);
    if combinations > sweep::MAX_LIST_LEN {
        return Err("attention shapes: too many combinations".into());
    }
    for base in bases {
        let pick = |given: &Option<String>, list: &[usize], preset_v: Option<usize>| match (
            given, preset_v,
        ) {
            (None, Some(v)) => vec![v],
            _ => list.to_vec(),
        };
        let hs = pick(&s.heads, &heads, base.map(|p| p.heads));
        let ks = pick(&s.kv_heads, &kv, base.map(|p| p.kv_heads));
        let ds = pick(&s.head_dim, &hd, base.map(|p| p.head_dim));
        let ls = pick(&s.layers, &layers, base.map(|p| p.layers));
        for &h in &hs {
            // With --heads given and --kv-heads not, the default KV head counts that do not
            // divide it are left out (the user never asked for them), and a head count none
            // divides runs as multi-head attention.
            let ks: Vec<usize> = if s.heads.is_some() && s.kv_heads.is_none() {
                let fitting: Vec<usize> = ks.iter().copied().filter(|k| h % k == 0).collect();
                if fitting.is_empty() { vec![h] } else { fitting }
            } else {
                ks.clone()
            };
            for &k in &ks {
                if h % k != 0 {
                    return Err(format!(
                        "--heads {h} is not a multiple of --kv-heads {k}: each KV head must \
                         serve a whole number of query heads"
                    ));
                }
                for &dim in &ds {
                    for &l in &ls {
                        for &dtype in &dtypes {
                            out.push(AttnSpec {
                                label: base.map_or("custom", |p| p.name).to_string(),
                                shape: AttnShape {
                                    heads: h,
                                    kv_heads: k,
                                    head_dim: dim,
                                    layers: l,
                                    dtype,
                                    window: s.window.or(base.and_then(|p| p.window)),
                                },
                                d_model: s.d_model.unwrap_or_else(|| match base {
                                    Some(p) if h == p.heads && dim == p.head_dim => p.d_model,
                                    _ => h * dim,
                                }),
                            });
                        }
                    }
                }
            }
        }
    }
    if out.len() > sweep::MAX_LIST_LEN {
        return Err("attention shapes: too many combinations".into());
    }
    Ok(dedup(out))
}

fn parse_isas(text: &Option<String>) -> Result<Vec<Isa>, String> {
    let Some(t) = text else {
        return Ok(vec![Isa::detected()]);
    };
    let isas = sweep::parse_list("--isa", t, |s| s.parse::<Isa>())?;
    for isa in &isas {
        if !isa.is_available() {
            let avail: Vec<&str> = Isa::available().iter().map(|i| i.name()).collect();
            return Err(format!(
                "--isa: {isa} is not available on this CPU (available: {})",
                avail.join(", ")
            ));
        }
    }
    Ok(isas)
}

fn measure_opts(t: &TimingArgs) -> Result<MeasureOpts, String> {
    if t.reps == 0 || t.reps > crate::measure::MAX_SAMPLES {
        return Err(format!(
            "--reps: must be between 1 and {}",
            crate::measure::MAX_SAMPLES
        ));
    }
    if t.warmup > crate::measure::MAX_WARMUP {
        return Err(format!(
            "--warmup: must be at most {}",
            crate::measure::MAX_WARMUP
        ));
    }
    if !(t.min_time.is_finite() && t.min_time >= 0.0) {
        return Err("--min-time: must be a finite number of seconds ≥ 0".into());
    }
    if t.max_time.is_nan() || t.max_time <= 0.0 {
        return Err("--max-time: must be positive".into());
    }
    Ok(MeasureOpts {
        warmup: t.warmup,
        reps: t.reps,
        min_time: t.min_time,
        max_time: t.max_time,
    })
}

fn roof_sizes(text: &str) -> Result<RoofSizes, String> {
    let v = sweep::parse_list("--roof-sizes", text, sweep::parse_bytes)?;
    if v.len() != 3 {
        return Err(format!(
            "--roof-sizes: expected three sizes L2,LLC,DRAM (e.g. 1MiB,32MiB,1GiB), got `{text}`"
        ));
    }
    if v.iter().any(|&b| b < 4096) {
        return Err(format!(
            "--roof-sizes: every size must be at least 4 KiB, got `{text}`"
        ));
    }
    Ok(RoofSizes {
        l2: v[0],
        llc: v[1],
        dram: v[2],
    })
}

/// The default thread counts: 1 up to the number of cores.
pub fn default_threads() -> Vec<usize> {
    (1..=crate::machine::cores()).collect()
}

/// The default results directory: `target/bench-results` of the workspace that built this
/// binary (found from the executable's path, or `CARGO_TARGET_DIR`), else `./target`.
pub fn default_results_dir() -> PathBuf {
    if let Ok(t) = std::env::var("CARGO_TARGET_DIR") {
        return PathBuf::from(t).join("bench-results");
    }
    if let Ok(exe) = std::env::current_exe() {
        for dir in exe.ancestors() {
            if dir.file_name().is_some_and(|n| n == "target") {
                return dir.join("bench-results");
            }
        }
    }
    PathBuf::from("target").join("bench-results")
}

/// Validates `run` options into a [`RunConfig`].
pub fn run_config(a: &RunArgs) -> Result<RunConfig> {
    build(a).map_err(HarnessError::Msg)
}

fn build(a: &RunArgs) -> Result<RunConfig, String> {
    let mut suites = Vec::new();
    for s in &a.suites {
        for part in s.split(',') {
            if part.trim().eq_ignore_ascii_case("all") {
                suites.extend(Suite::ALL);
            } else {
                suites.push(Suite::parse(part)?);
            }
        }
    }
    // `peak` named on the command line runs even with --no-peak.
    let named_peak = a.suites.iter().any(|s| {
        s.split(',')
            .any(|p| matches!(Suite::parse(p), Ok(Suite::Peak)))
    });
    if suites.is_empty() {
        suites.extend(Suite::ALL);
    }
    suites.sort();
    suites.dedup();
    suites.retain(|s| *s != Suite::Peak);
    let s = &a.shape;
    let threads = match &s.threads {
        Some(t) => sweep::parse_positive_list("--threads", t)?,
        None => default_threads(),
    };
    let isas = parse_isas(&s.isa)?;
    let sizes = match &s.sizes {
        Some(t) => sweep::parse_sizes(t)?,
        None => sweep::default_matmul_shapes(),
    };
    let row_lens = opt_list("--row-lens", &s.row_lens, &[128, 1024, 4096, 32768])?;
    let seq_lens = opt_list("--seq-lens", &s.seq_lens, &[256, 1024, 4096, 16384])?;
    let contexts = opt_list("--seq-lens", &s.seq_lens, &[256, 1024, 4096])?;
    let memory_contexts = opt_list("--seq-lens", &s.seq_lens, &[4096, 32768, 131072])?;
    let chunks = opt_list("--chunks", &s.chunks, &[64, 256, 1024])?;
    let prefill_contexts = match &s.prefill_context {
        Some(t) => sweep::parse_usize_list(t).map_err(|e| format!("--prefill-context: {e}"))?,
        None => vec![0],
    };
    // Repeated values would only time the same configuration again.
    let (threads, isas, sizes) = (dedup(threads), dedup(isas), dedup(sizes));
    let (row_lens, seq_lens, contexts) = (dedup(row_lens), dedup(seq_lens), dedup(contexts));
    let (memory_contexts, chunks) = (dedup(memory_contexts), dedup(chunks));
    let prefill_contexts = dedup(prefill_contexts);
    let attention = attn_specs(
        s,
        &AttnDefaults {
            heads: &[32],
            kv_heads: &[8, 32],
            head_dim: &[128],
            layers: &[1],
            dtypes: &[KvDtype::F32, KvDtype::Bf16],
        },
    )?;
    let single = AttnDefaults {
        heads: &[32],
        kv_heads: &[8],
        head_dim: &[128],
        layers: &[1],
        dtypes: &[KvDtype::F32],
    };
    let prefill = attn_specs(s, &single)?;
    let recompute = attn_specs(s, &single)?;
    let memory = if s.preset.is_some()
        || s.heads.is_some()
        || s.kv_heads.is_some()
        || s.head_dim.is_some()
        || s.layers.is_some()
    {
        attn_specs(
            s,
            &AttnDefaults {
                dtypes: &[KvDtype::F32, KvDtype::Bf16],
                ..single
            },
        )?
    } else {
        let all: Vec<&str> = sweep::PRESETS.iter().map(|p| p.name).collect();
        let with_presets = ShapeArgs {
            preset: Some(all.join(",")),
            kv_dtype: s.kv_dtype.clone().or(Some("f32,bf16".into())),
            ..s.clone()
        };
        attn_specs(&with_presets, &single)?
    };
    if a.timing.paired && a.timing.no_peak {
        return Err("--paired pairs samples with the roofs, which --no-peak turns off".into());
    }
    let measure = measure_opts(&a.timing)?;
    let roof_sizes = roof_sizes(&a.timing.roof_sizes)?;
    let o = &a.output;
    // The default job (no suite named) saves its results; other runs only when asked to.
    let results_dir = if o.no_save {
        None
    } else if o.results_dir.is_some() {
        o.results_dir.clone()
    } else if a.suites.is_empty() && o.out.is_none() {
        Some(default_results_dir())
    } else {
        None
    };
    Ok(RunConfig {
        peak: named_peak || (!a.timing.no_peak && suites.iter().any(|s| s.is_timed())),
        paired: a.timing.paired,
        suites,
        threads,
        isas,
        sizes,
        cold_b: a.shape.cold_b,
        row_lens,
        attention,
        seq_lens,
        prefill,
        chunks,
        prefill_contexts,
        recompute,
        contexts,
        memory,
        memory_contexts,
        measure,
        roof_sizes,
        format: o.format,
        out: o.out.clone(),
        plot: o.plot.clone(),
        results_dir,
        quiet: o.quiet,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Cli;
    use clap::Parser;

    fn cfg(args: &[&str]) -> Result<RunConfig> {
        let mut v = vec!["bench-harness"];
        v.extend(args);
        let cli = Cli::try_parse_from(v)?;
        run_config(&cli.run)
    }

    /// Bounds that keep a run finite and its sizes honest, repeated values dropped, and
    /// default KV head counts fitted to the heads asked for.
    #[test]
    fn limits_dedup_and_fitted_defaults() {
        let err = |args: &[&str]| cfg(args).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err(&["softmax", "--reps", "10001"]).contains("--reps"));
        assert!(err(&["softmax", "--warmup", "18446744073709551615"]).contains("--warmup"));
        assert!(err(&["matmul", "--sizes", "1x4611686018427387904x4"]).contains("overflow"));
        assert!(err(&["peak", "--roof-sizes", "1,1,1"]).contains("4 KiB"));
        assert!(
            err(&["memory", "--heads", "1..4096", "--head-dim", "1..1024"])
                .contains("too many combinations")
        );
        assert!(err(&["memory", "--no-save", "--results-dir", "x"]).contains("--no-save"));

        let c = cfg(&[
            "softmax",
            "--threads",
            "1,2,1",
            "--row-lens",
            "16,16,8",
            "--isa",
            "portable,portable",
        ])
        .unwrap();
        assert_eq!(c.threads, vec![1, 2]);
        assert_eq!(c.row_lens, vec![16, 8]);
        assert_eq!(c.isas, vec![Isa::Portable]);

        let kv = |c: &RunConfig| -> Vec<usize> {
            c.attention.iter().map(|a| a.shape.kv_heads).collect()
        };
        assert_eq!(
            kv(&cfg(&["attention", "--heads", "4", "--kv-dtype", "f32"]).unwrap()),
            vec![4]
        );
        assert_eq!(
            kv(&cfg(&["attention", "--heads", "16", "--kv-dtype", "f32"]).unwrap()),
            vec![8]
        );
        assert_eq!(
            kv(&cfg(&["attention", "--heads", "32", "--kv-dtype", "f32"]).unwrap()),
            vec![8, 32]
        );
        assert!(cfg(&["attention", "--heads", "4", "--kv-heads", "8"]).is_err());
    }

    #[test]
    fn cold_b_rotates_copies_beyond_the_llc() {
        let hot = cfg(&["matmul", "--sizes", "16x4096x4096"]).unwrap();
        assert!(!hot.cold_b);
        assert_eq!(crate::suites::matmul::b_copies(&hot, 64 << 20), 1);
        let cold = cfg(&["matmul", "--sizes", "16x4096x4096", "--cold-b"]).unwrap();
        assert!(cold.cold_b);
        let llc = crate::machine::cache_bytes(3).unwrap_or(32 << 20) as u64;
        for bytes in [1u64 << 20, 64 << 20, 1 << 30] {
            let copies = crate::suites::matmul::b_copies(&cold, bytes) as u64;
            assert!((2..=64).contains(&copies), "{bytes}: {copies}");
            assert!(
                copies * bytes >= (2 * llc).min(64 * bytes),
                "{bytes}: {copies}"
            );
        }
    }

    #[test]
    fn defaults() {
        let c = cfg(&[]).unwrap();
        assert_eq!(c.suites, Suite::ALL[1..].to_vec());
        assert_eq!(c.threads, default_threads());
        assert_eq!(c.attention.len(), 4); // kv 8/32 × f32/bf16
        assert_eq!(c.seq_lens, vec![256, 1024, 4096, 16384]);
        assert_eq!(c.memory.len(), 10); // 5 presets × 2 dtypes
        assert!(c.peak);
    }

    #[test]
    fn presets_and_overrides() {
        let c = cfg(&[
            "attention",
            "--preset",
            "llama3-8b,mistral-7b",
            "--layers",
            "1",
        ])
        .unwrap();
        assert_eq!(c.suites, vec![Suite::Attention]);
        assert_eq!(c.attention.len(), 4);
        let m = c
            .attention
            .iter()
            .find(|a| a.label == "mistral-7b")
            .unwrap();
        assert_eq!(
            (
                m.shape.heads,
                m.shape.kv_heads,
                m.shape.layers,
                m.shape.window
            ),
            (32, 8, 1, Some(4096))
        );
        assert_eq!(m.d_model, 4096);
        let g = cfg(&["memory", "--preset", "gpt3-175b", "--kv-dtype", "bf16"]).unwrap();
        assert_eq!(g.memory.len(), 1);
        assert_eq!(g.memory[0].kv_bytes_per_token(), 2 * 96 * 96 * 128 * 2);
        assert!(!g.peak);
    }

    #[test]
    fn paired_needs_the_roofs() {
        assert!(cfg(&["matmul", "--paired"]).unwrap().paired);
        assert!(!cfg(&["matmul"]).unwrap().paired);
        let e = cfg(&["matmul", "--paired", "--no-peak"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--no-peak"), "{e}");
    }

    #[test]
    fn bad_input() {
        let e = |args: &[&str]| cfg(args).unwrap_err().to_string();
        assert!(e(&["bogus"]).contains("unknown suite `bogus`"));
        assert!(e(&["--threads", ""]).contains("empty list"));
        assert!(e(&["--threads", "0"]).contains("at least 1"));
        assert!(e(&["--seq-lens", "1.."]).contains("malformed range"));
        assert!(e(&["--heads", "32", "--kv-heads", "5"]).contains("not a multiple"));
        assert!(e(&["--preset", "gpt9"]).contains("unknown preset"));
        assert!(e(&["--reps", "0"]).contains("--reps"));
        assert!(e(&["--roof-sizes", "1M,2M"]).contains("three sizes"));
        assert!(e(&["--format", "xml"]).contains("xml"));
    }

    #[test]
    fn subcommands_and_suites() {
        let cli = Cli::try_parse_from(["bench-harness", "matmul", "softmax"]).unwrap();
        assert!(cli.command.is_none());
        assert_eq!(cli.run.suites, vec!["matmul", "softmax"]);
        let cli =
            Cli::try_parse_from(["bench-harness", "run", "matmul", "--threads", "1"]).unwrap();
        assert!(matches!(cli.command, Some(crate::cli::Command::Run(_))));
        let cli = Cli::try_parse_from(["bench-harness", "profile", "attention", "--seconds", "1"])
            .unwrap();
        assert!(matches!(cli.command, Some(crate::cli::Command::Profile(_))));
    }
}
