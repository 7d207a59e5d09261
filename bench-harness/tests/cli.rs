//! Command-line parsing, the record schema (JSON, JSONL, CSV), the roofline arithmetic, bad
//! input, and a fast smoke run of every suite with tiny shapes — all through the library API.

use bench_harness::cli::Format;
use bench_harness::config::{RunConfig, Suite};
use bench_harness::peak::{Roofline, Tier, pct_of};
use bench_harness::record::{HEADER_KEYS, REQUIRED_KEYS};
use bench_harness::{Invocation, RunOutput, parse, run};
use serde_json::Value;
use std::ffi::OsString;
use std::path::PathBuf;

/// Fast timing and tiny roofs for every smoke run.
const FAST: &[&str] = &[
    "--reps",
    "1",
    "--min-time",
    "0",
    "--roof-sizes",
    "64K,256K,1M",
    "--no-save",
    "--quiet",
    "--threads",
    "1,2",
];

/// Tiny shapes for every suite.
const TINY: &[&str] = &[
    "--sizes",
    "8x8x8,1x64x32,qk:1x64x16",
    "--row-lens",
    "16",
    "--seq-lens",
    "16..64*2",
    "--heads",
    "4",
    "--kv-heads",
    "2",
    "--head-dim",
    "16",
    "--chunks",
    "16",
    "--d-model",
    "64",
];

fn argv(args: &[&str]) -> Vec<String> {
    std::iter::once("bench-harness")
        .chain(args.iter().copied())
        .map(String::from)
        .collect()
}

fn config(args: &[&str]) -> bench_harness::Result<RunConfig> {
    match parse(argv(args))? {
        Invocation::Run(c) => Ok(*c),
        Invocation::Profile(_) => panic!("expected a run"),
    }
}

fn err(args: &[&str]) -> String {
    match parse(argv(args)) {
        Ok(Invocation::Run(c)) => run(&c).expect_err("expected an error").to_string(),
        Ok(Invocation::Profile(_)) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

fn smoke(extra: &[&str]) -> RunOutput {
    let mut a: Vec<&str> = extra.to_vec();
    a.extend(FAST);
    a.extend(TINY);
    run(&config(&a).unwrap()).unwrap()
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("bench-harness-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn parses_lists_ranges_and_presets() {
    let c = config(&[
        "attention",
        "--threads",
        "1,2",
        "--seq-lens",
        "256..32768*2",
        "--kv-dtype",
        "f32,bf16",
        "--preset",
        "llama3-8b",
    ])
    .unwrap();
    assert_eq!(c.suites, vec![Suite::Attention]);
    assert_eq!(c.threads, vec![1, 2]);
    assert_eq!(
        c.seq_lens,
        vec![256, 512, 1024, 2048, 4096, 8192, 16384, 32768]
    );
    assert_eq!(c.attention.len(), 2);
    let a = &c.attention[0];
    assert_eq!(
        (
            a.shape.heads,
            a.shape.kv_heads,
            a.shape.head_dim,
            a.shape.layers
        ),
        (32, 8, 128, 32)
    );

    let c = config(&[
        "matmul",
        "softmax",
        "--sizes",
        "512,16x4096x4096",
        "--row-lens",
        "64..256+64",
    ])
    .unwrap();
    assert_eq!(c.suites, vec![Suite::Matmul, Suite::Softmax]);
    assert_eq!(c.sizes.len(), 2);
    assert_eq!((c.sizes[1].m, c.sizes[1].n, c.sizes[1].k), (16, 4096, 4096));
    assert_eq!(c.row_lens, vec![64, 128, 192, 256]);

    let c = config(&["--preset", "mistral-7b", "memory"]).unwrap();
    assert_eq!(c.memory[0].shape.window, Some(4096));
    let c = config(&["--preset", "llama2-7b,gpt3-175b,tiny", "attention"]).unwrap();
    let layers: Vec<usize> = c.attention.iter().map(|a| a.shape.layers).collect();
    assert_eq!(layers, vec![32, 32, 96, 96, 2, 2]);

    // `run` subcommand and the default job.
    let c = config(&["run", "kv-vs-recompute", "--threads", "2"]).unwrap();
    assert_eq!(c.suites, vec![Suite::KvVsRecompute]);
    let c = config(&[]).unwrap();
    assert!(c.peak && c.suites.len() == 6 && c.results_dir.is_some());
    // Only the default job saves under target/bench-results by default.
    assert!(config(&["attention"]).unwrap().results_dir.is_none());
    assert!(config(&["--no-save"]).unwrap().results_dir.is_none());
    assert_eq!(c.format, Format::Md);
}

#[test]
fn bad_input_is_a_clear_error() {
    assert!(err(&["nosuch"]).contains("unknown suite `nosuch`"));
    assert!(err(&["--threads", ""]).contains("empty list"));
    assert!(err(&["--threads", "1,,2"]).contains("empty item"));
    assert!(err(&["--seq-lens", "1.."]).contains("malformed range `1..`"));
    assert!(err(&["--threads", "0"]).contains("at least 1"));
    assert!(err(&["--heads", "32", "--kv-heads", "5"]).contains("not a multiple of --kv-heads 5"));
    assert!(err(&["--sizes", "2x3"]).contains("MxNxK"));
    assert!(err(&["--kv-dtype", "f16"]).contains("unknown KV dtype"));
    assert!(err(&["--preset", "gpt9"]).contains("unknown preset"));
    assert!(err(&["--format", "xml"]).contains("xml"));
    assert!(err(&["profile", "memory"]).contains("nothing to loop"));
    assert!(err(&["profile", "matmul", "--seconds", "0"]).contains("--seconds"));
    // Sizes that cannot fit are refused with the estimate, before anything is allocated.
    let e = err(&[
        "attention",
        "--no-save",
        "--no-peak",
        "--seq-lens",
        "100000000",
        "--heads",
        "96",
        "--kv-heads",
        "96",
        "--layers",
        "96",
    ]);
    assert!(e.contains("would need") && e.contains("GiB, have"), "{e}");
    let e = err(&["matmul", "--no-save", "--sizes", "1000000x1000000x1000000"]);
    assert!(e.contains("would need"), "{e}");
    // Outputs that could not be written at the end are refused before anything runs.
    let missing = "/nonexistent-bench-harness-dir/report.md";
    let e = err(&["softmax", "--no-save", "--out", missing]);
    assert!(e.contains("no such directory"), "{e}");
    let dir = temp_dir("plot-is-dir");
    let e = err(&["attention", "--no-save", "--plot", dir.to_str().unwrap()]);
    assert!(e.contains("is a directory"), "{e}");
}

#[test]
fn main_exit_codes() {
    let run_main = |args: &[&str]| {
        let (mut out, mut errb) = (Vec::new(), Vec::new());
        let args: Vec<OsString> = argv(args).into_iter().map(OsString::from).collect();
        let code = bench_harness::main_with(args, &mut out, &mut errb);
        (
            code,
            String::from_utf8(out).unwrap(),
            String::from_utf8(errb).unwrap(),
        )
    };
    let (code, _, e) = run_main(&["bogus"]);
    assert_eq!(code, 2);
    assert!(e.starts_with("error: unknown suite"), "{e}");
    assert!(!e.contains("panicked") && !e.contains("backtrace"));
    let (code, _, e) = run_main(&["--threads", "x"]);
    assert_eq!(code, 2);
    assert!(e.starts_with("error:"), "{e}");
    let (code, _, e) = run_main(&["--bogus-flag"]);
    assert_eq!(code, 2);
    assert!(e.starts_with("error:"), "{e}");
    let (code, out, _) = run_main(&["--help"]);
    assert_eq!(code, 0);
    for flag in [
        "--threads",
        "--seq-lens",
        "--kv-dtype",
        "--preset",
        "--format",
        "--plot",
    ] {
        assert!(out.contains(flag), "help lacks {flag}");
    }
    let (code, out, e) = run_main(&["profile", "matmul", "--sizes", "8x8x8", "--seconds", "0.05"]);
    assert_eq!(code, 0, "{e}");
    assert!(
        out.contains("iterations") && out.contains("per iteration"),
        "{out}"
    );
    assert!(!out.contains("gemm_prepacked"), "{out}");
    let (code, out, e) = run_main(&[
        "profile",
        "prepacked",
        "--sizes",
        "9x40x33",
        "--seconds",
        "0.05",
    ]);
    assert_eq!(code, 0, "{e}");
    assert!(
        out.contains("gemm_prepacked") && out.contains("9x40x33"),
        "{out}"
    );
    let (code, out, e) = run_main(&[
        "profile",
        "attention",
        "--seq-lens",
        "32",
        "--heads",
        "4",
        "--kv-heads",
        "2",
        "--head-dim",
        "16",
        "--threads",
        "1",
        "--seconds",
        "0.05",
    ]);
    assert_eq!(code, 0, "{e}");
    assert!(out.contains("attention"), "{out}");
}

fn check_schema(obj: &serde_json::Map<String, Value>) {
    for k in REQUIRED_KEYS {
        assert!(obj.contains_key(k), "record lacks `{k}`: {obj:?}");
    }
    assert!(obj["suite"].is_string() && obj["impl"].is_string());
    for k in ["isa", "kv_dtype", "roof", "shape"] {
        assert!(obj[k].is_string() || obj[k].is_null(), "{k}");
    }
    for k in [
        "threads", "m", "n", "k", "seq_len", "heads", "kv_heads", "head_dim", "layers", "row_len",
        "bytes", "reps",
    ] {
        assert!(obj[k].is_u64() || obj[k].is_null(), "{k} = {}", obj[k]);
    }
    for k in [
        "median_s",
        "min_s",
        "max_s",
        "gflops",
        "gbps",
        "elements_per_s",
        "tokens_per_s",
        "pct_peak",
        "vs_baseline",
    ] {
        assert!(obj[k].is_number() || obj[k].is_null(), "{k} = {}", obj[k]);
    }
    if obj["suite"] == "header" {
        for k in HEADER_KEYS {
            assert!(obj.contains_key(k), "header lacks `{k}`");
        }
        assert!(obj["cpu"].is_string() && obj["version"].is_string());
        assert!(obj["detected_features"].is_array() && obj["compiled_features"].is_array());
        assert!(obj["git_commit"].is_string() || obj["git_commit"].is_null());
        assert!(obj["rustc"].is_string() || obj["rustc"].is_null());
    } else if obj["suite"] != "memory" {
        // Every timed record has its times and a positive median.
        assert!(obj["median_s"].as_f64().unwrap() > 0.0);
        assert!(obj["min_s"].as_f64().unwrap() <= obj["max_s"].as_f64().unwrap());
    }
}

#[test]
fn every_suite_smoke_and_json_schema() {
    let out = smoke(&["all", "--format", "json"]);
    let v: Value = serde_json::from_str(&out.report).unwrap();
    let recs = v.as_array().unwrap();
    assert_eq!(recs[0]["suite"], "header");
    for r in recs {
        check_schema(r.as_object().unwrap());
    }
    let count = |suite: &str| recs.iter().filter(|r| r["suite"] == suite).count();
    for suite in [
        "peak",
        "matmul",
        "softmax",
        "attention",
        "prefill",
        "kv-vs-recompute",
        "memory",
    ] {
        assert!(count(suite) > 0, "no {suite} records");
    }
    // matmul: 3 shapes × (baseline + 2 thread counts × (gemm, gemm_prepacked)).
    assert_eq!(count("matmul"), 3 * 5);
    assert_eq!(
        recs.iter()
            .filter(|r| r["impl"] == "kernels-prepacked")
            .map(|r| (r["m"].as_u64(), r["threads"].as_u64()))
            .collect::<Vec<_>>(),
        [(8, 1), (8, 2), (1, 1), (1, 2), (1, 1), (1, 2)].map(|(m, t)| (Some(m), Some(t)))
    );
    // attention: 3 seq lens × (f32, bf16) × (naive + 2 thread counts).
    assert_eq!(count("attention"), 18);
    for r in recs
        .iter()
        .filter(|r| r["suite"] == "matmul" && r["impl"].as_str().unwrap().starts_with("kernels"))
    {
        assert!(r["gflops"].as_f64().unwrap() > 0.0);
        assert!(r["pct_peak"].as_f64().unwrap() > 0.0);
        assert!(r["vs_baseline"].as_f64().unwrap() > 0.0);
        assert!(r["roof"].is_string());
        assert!(
            r["note"].is_null(),
            "result differs from matrixmultiply: {}",
            r["note"]
        );
    }
    // Without --paired nothing is paired.
    assert!(recs.iter().all(|r| r["pct_peak_paired"].is_null()));
    for r in recs.iter().filter(|r| r["suite"] == "attention") {
        assert!(r["tokens_per_s"].as_f64().unwrap() > 0.0);
        assert!(r["gbps"].as_f64().unwrap() > 0.0);
        assert!(
            r["note"].is_null(),
            "result differs from naive: {}",
            r["note"]
        );
    }
    for r in recs.iter().filter(|r| r["suite"] == "softmax") {
        assert!(r["elements_per_s"].as_f64().unwrap() > 0.0);
        assert!(r["note"].is_null(), "{}", r["note"]);
    }
    for r in recs
        .iter()
        .filter(|r| r["suite"] == "kv-vs-recompute" && r["impl"] == "cached")
    {
        assert!(r["vs_baseline"].as_f64().unwrap() > 0.0);
        assert!(r["flop_ratio"].as_f64().unwrap() > 1.0);
    }
    // Memory: 2 × layers × kv_heads × head_dim × bytes per token.
    let mem = recs
        .iter()
        .find(|r| r["suite"] == "memory" && r["kv_dtype"] == "f32" && r["seq_len"] == 32)
        .unwrap();
    assert_eq!(mem["kv_bytes_per_token"], 2 * 2 * 16 * 4);
    assert_eq!(mem["kv_bytes_total"], 32 * 2 * 2 * 16 * 4);
}

/// `--paired`: our records (`kernels`, `kernels-prepacked`) of attention and of GEMV-like matmul
/// shapes carry the median per-round percent of their same-bytes roof, those of other matmul
/// shapes exactly when their roof is the FMA peak; baselines carry none; the markdown gains
/// the column.
#[test]
fn paired_rounds_report_a_percent_of_the_roof() {
    // TINY, with a 32×32×32 product (arithmetic intensity 5.3 flop/B: the FMA peak is its
    // roof) in place of the 8×8×8 one.
    let mut args = vec!["matmul", "attention", "--paired", "--format", "json"];
    args.extend(FAST);
    args.extend(TINY);
    let sizes = args.iter().position(|a| *a == "--sizes").unwrap() + 1;
    args[sizes] = "32x32x32,1x64x32,qk:1x64x16";
    let out = run(&config(&args).unwrap()).unwrap();
    let v: Value = serde_json::from_str(&out.report).unwrap();
    let recs = v.as_array().unwrap();
    let ours = |r: &Value| r["impl"].as_str().unwrap().starts_with("kernels");
    // Counts of paired records: attention, GEMV-like matmul, other matmul; and of our other
    // matmul records (their roof is the FMA peak or a bandwidth roof, whichever the measured
    // peaks make lower, so how many of them pair depends on the machine's timing).
    let mut paired = [0; 3];
    let mut ours_other = 0;
    for r in recs
        .iter()
        .filter(|r| r["suite"] == "attention" || r["suite"] == "matmul")
    {
        let kind = if r["suite"] == "attention" {
            0
        } else if r["m"] == 1 {
            1
        } else {
            2
        };
        if ours(r) && kind == 2 {
            ours_other += 1;
        }
        let pairs = ours(r) && (kind < 2 || r["roof"].as_str().unwrap().starts_with("fma"));
        let p = &r["pct_peak_paired"];
        if pairs {
            let p = p.as_f64().unwrap_or_else(|| panic!("unpaired: {r}"));
            assert!(p.is_finite() && p > 0.0, "{r}");
            paired[kind] += 1;
        } else {
            assert!(p.is_null(), "{r}");
        }
    }
    // attention: 3 seq lens × 2 dtypes × 2 thread counts; GEMV-like matmul: 2 shapes × 2
    // thread counts × (gemm, gemm_prepacked); 32×32×32: the same 4 records, paired exactly
    // where the FMA peak is the roof (checked record by record above). Usually all 4 are,
    // but a busy moment during the bandwidth probe can make the L2 roof the lower one, so the
    // count is not asserted (it failed once that way in a clean-clone run of `.ci/run`).
    assert_eq!((paired[0], paired[1], ours_other), (12, 8, 4));
    assert!(paired[2] <= ours_other);
    let md =
        run(&config(&[&["matmul", "attention", "--paired"][..], FAST, TINY].concat()).unwrap())
            .unwrap()
            .report;
    assert!(md.contains("% of roof (paired)"), "{md}");
}

#[test]
fn jsonl_csv_markdown_and_plot() {
    let dir = temp_dir("formats");
    let jl = dir.join("r.jsonl");
    let svg = dir.join("p.svg");
    let out = smoke(&[
        "attention",
        "memory",
        "--no-peak",
        "--format",
        "jsonl",
        "--out",
        jl.to_str().unwrap(),
        "--plot",
        svg.to_str().unwrap(),
    ]);
    let text = std::fs::read_to_string(&jl).unwrap();
    assert_eq!(text, out.report);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), out.records.len());
    for l in &lines {
        let v: Value = serde_json::from_str(l).unwrap();
        check_schema(v.as_object().unwrap());
    }
    let plot = std::fs::read_to_string(&svg).unwrap();
    assert!(plot.contains("<svg") && plot.contains("tokens/s"));

    // CSV: one header row naming every key, one row per record, numbers where numeric.
    let csv = bench_harness::report::csv(&out.records);
    let mut rows = csv.lines();
    let cols: Vec<&str> = rows.next().unwrap().split(',').collect();
    for k in REQUIRED_KEYS.iter().chain(HEADER_KEYS.iter()) {
        assert!(cols.contains(k), "CSV lacks column {k}");
    }
    let rows: Vec<Vec<String>> = rows.map(split_csv).collect();
    assert_eq!(rows.len(), out.records.len());
    for row in &rows {
        assert_eq!(row.len(), cols.len(), "{row:?}");
        let cell = |k: &str| &row[cols.iter().position(|c| *c == k).unwrap()];
        assert!(!cell("suite").is_empty() && !cell("impl").is_empty());
        for k in [
            "median_s",
            "gbps",
            "tokens_per_s",
            "pct_peak",
            "vs_baseline",
            "threads",
            "seq_len",
        ] {
            let c = cell(k);
            assert!(c.is_empty() || c.parse::<f64>().is_ok(), "{k} = {c}");
        }
        if cell("suite") == "attention" {
            assert!(cell("median_s").parse::<f64>().unwrap() > 0.0);
            assert!(
                cell("pct_peak").is_empty(),
                "no roofs measured with --no-peak"
            );
        }
    }

    let md = bench_harness::report::markdown(&out.records);
    assert!(md.contains("## attention") && md.contains("## memory") && md.contains("How to read"));
    assert!(!md.contains("## Peak"));
    std::fs::remove_dir_all(&dir).ok();
}

/// Splits one CSV line (RFC 4180 quoting).
fn split_csv(line: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                chars.next();
                out.last_mut().unwrap().push('"');
            }
            ('"', _) => quoted = !quoted,
            (',', false) => out.push(String::new()),
            (c, _) => out.last_mut().unwrap().push(c),
        }
    }
    out
}

#[test]
fn saves_results_dir() {
    let dir = temp_dir("results");
    let mut a = vec!["attention", "--results-dir", dir.to_str().unwrap()];
    a.extend(FAST.iter().filter(|x| **x != "--no-save"));
    a.extend(TINY);
    let out = run(&config(&a).unwrap()).unwrap();
    for f in ["report.md", "report.jsonl", "attention.svg"] {
        assert!(dir.join(f).exists(), "{f} not written");
    }
    assert_eq!(out.files.len(), 3);
    assert!(
        std::fs::read_to_string(dir.join("report.md"))
            .unwrap()
            .contains("# bench-harness report")
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn roofline_arithmetic() {
    use bench_harness::measure::Stats;
    use bench_harness::peak::{BwPeak, FmaPeak};
    use kernels::Isa;
    let st = Stats::from_samples(&[1.0], 1);
    let mut r = Roofline::empty(1 << 20, 64 << 20);
    r.fma.push(FmaPeak {
        isa: Isa::Portable,
        threads: 2,
        gflops: 200.0,
        stats: st,
    });
    for (tier, gbps) in [(Tier::L2, 400.0), (Tier::Llc, 100.0), (Tier::Dram, 20.0)] {
        r.bw.push(BwPeak {
            tier,
            threads: 2,
            bytes: 1,
            array_bytes: 1,
            gbps,
            stats: st,
        });
    }
    // Roof selection by working set (2 threads: L2 holds 1.5 MiB, LLC half of 64 MiB).
    assert_eq!(r.tier_for(1 << 20, 2), Tier::L2);
    assert_eq!(r.tier_for(16 << 20, 2), Tier::Llc);
    assert_eq!(r.tier_for(33 << 20, 2), Tier::Dram);
    // A decode step reading 512 MiB at 15 GB/s is 75% of the DRAM roof.
    let roof = r.bw_roof(512 << 20, 2).unwrap();
    assert_eq!(roof.pct(15.0), Some(75.0));
    assert!(roof.label.contains("DRAM"));
    // GEMM roofline: min(FMA, AI × bandwidth).
    let compute = r
        .attainable(Isa::Portable, 2, 1e12, 1 << 20, 1 << 20)
        .unwrap();
    assert_eq!(compute.value, 200.0);
    let memory = r
        .attainable(Isa::Portable, 2, 1e9, 1_000_000_000, 1 << 30)
        .unwrap();
    assert!((memory.value - 20.0).abs() < 1e-9, "{}", memory.value);
    assert_eq!(pct_of(100.0, 200.0), Some(50.0));
    assert_eq!(pct_of(1.0, 0.0), None);
}

#[test]
fn prefill_after_a_context() {
    let c = config(&["prefill", "--prefill-context", "0,40"]).unwrap();
    assert_eq!(c.prefill_contexts, vec![0, 40]);
    assert_eq!(config(&["prefill"]).unwrap().prefill_contexts, vec![0]);
    assert!(err(&["prefill", "--prefill-context", "4x"]).contains("--prefill-context"));
    let out = smoke(&["prefill", "--prefill-context", "0,40", "--format", "json"]);
    let v: Value = serde_json::from_str(&out.report).unwrap();
    let mut lens: Vec<(u64, u64)> = v
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["suite"] == "prefill")
        .map(|r| (r["chunk"].as_u64().unwrap(), r["seq_len"].as_u64().unwrap()))
        .collect();
    lens.sort();
    lens.dedup();
    // The chunk of 16 (TINY) into an empty cache and after 40 cached tokens.
    assert_eq!(lens, [(16, 16), (16, 56)]);
    let md = smoke(&["prefill", "--prefill-context", "40"]).report;
    assert!(md.contains("| T | cached |"), "{md}");
    // A sliding window must hold the context and the chunk.
    let e = err(&["prefill", "--prefill-context", "40", "--window", "50"]);
    assert!(e.contains("window"), "{e}");
}
