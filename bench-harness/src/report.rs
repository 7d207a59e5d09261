//! Report writers: markdown (a header block, the peak table, one table per suite with a short
//! "how to read" line), CSV (one row per record, every key a column), JSON (an array) and JSONL
//! (one record per line).

use crate::cli::Format;
use crate::machine::fmt_bytes;
use crate::measure::fmt_time;
use crate::record::{HEADER_KEYS, Record};
use std::fmt::Write as _;

/// Renders `records` in `format`.
pub fn render(format: Format, records: &[Record]) -> String {
    match format {
        Format::Md => markdown(records),
        Format::Csv => csv(records),
        Format::Json => json(records),
        Format::Jsonl => jsonl(records),
    }
}

/// One JSON object per line.
pub fn jsonl(records: &[Record]) -> String {
    let mut s = String::new();
    for r in records {
        s.push_str(&serde_json::to_string(r).expect("records always serialize"));
        s.push('\n');
    }
    s
}

/// A JSON array of records.
pub fn json(records: &[Record]) -> String {
    let mut s = serde_json::to_string_pretty(records).expect("records always serialize");
    s.push('\n');
    s
}

/// Every CSV column: the record keys in declaration order, then the header keys.
pub fn csv_columns() -> Vec<String> {
    // Serializing straight to a string keeps the struct's field order.
    let probe = Record::default();
    let text = serde_json::to_string(&probe).expect("records always serialize");
    let mut cols = Vec::new();
    let mut de = serde_json::Deserializer::from_str(&text);
    let ordered: Vec<(String, serde_json::Value)> = {
        use serde::Deserialize;
        let v = OrderedKeys::deserialize(&mut de).expect("valid JSON");
        v.0
    };
    for (k, _) in ordered {
        cols.push(k);
    }
    cols.extend(HEADER_KEYS.iter().map(|k| k.to_string()));
    cols
}

/// Keys of a JSON object in document order.
struct OrderedKeys(Vec<(String, serde_json::Value)>);

impl<'de> serde::Deserialize<'de> for OrderedKeys {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = OrderedKeys;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<OrderedKeys, A::Error> {
                let mut v = Vec::new();
                while let Some((k, val)) = map.next_entry::<String, serde_json::Value>()? {
                    v.push((k, val));
                }
                Ok(OrderedKeys(v))
            }
        }
        d.deserialize_map(V)
    }
}

fn csv_field(v: Option<&serde_json::Value>) -> String {
    use serde_json::Value;
    let raw = match v {
        None | Some(Value::Null) => return String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::Bool(b)) => b.to_string(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| match x {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect::<Vec<_>>()
            .join(" "),
        Some(Value::Object(_)) => v.map(|x| x.to_string()).unwrap_or_default(),
    };
    if raw.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", raw.replace('"', "\"\""))
    } else {
        raw
    }
}

/// One header row, then one row per record; empty cells are nulls.
pub fn csv(records: &[Record]) -> String {
    let cols = csv_columns();
    let mut s = cols.join(",");
    s.push('\n');
    for r in records {
        let v = r.to_json();
        let row: Vec<String> = cols.iter().map(|c| csv_field(v.get(c))).collect();
        s.push_str(&row.join(","));
        s.push('\n');
    }
    s
}

/// A number with about three significant digits.
pub fn fmt_num(x: f64) -> String {
    if !x.is_finite() {
        return "-".into();
    }
    let a = x.abs();
    if a >= 100.0 {
        format!("{x:.0}")
    } else if a >= 10.0 {
        format!("{x:.1}")
    } else if a >= 0.01 || a == 0.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.2e}")
    }
}

/// A rate with an SI prefix (`1.23 G`, `456 M`).
pub fn fmt_si(x: f64) -> String {
    if !x.is_finite() {
        return "-".into();
    }
    for (div, p) in [(1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")] {
        if x.abs() >= div {
            return format!("{} {p}", fmt_num(x / div));
        }
    }
    fmt_num(x)
}

fn opt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map(f).unwrap_or_else(|| "-".into())
}

fn ratio(v: Option<f64>) -> String {
    opt(v, |x| format!("{}×", fmt_num(x)))
}

fn pct(v: Option<f64>) -> String {
    opt(v, |x| format!("{x:.0}%"))
}

fn time(r: &Record) -> String {
    match (r.median_s, r.min_s, r.max_s) {
        (Some(m), Some(lo), Some(hi)) if r.reps.unwrap_or(1) > 1 => {
            format!("{} ({}–{})", fmt_time(m), fmt_time(lo), fmt_time(hi))
        }
        (Some(m), _, _) => fmt_time(m),
        _ => "-".into(),
    }
}

fn table(out: &mut String, headers: &[&str], rows: &[Vec<String>]) {
    let _ = writeln!(out, "| {} |", headers.join(" | "));
    let _ = writeln!(
        out,
        "|{}|",
        headers.iter().map(|_| "---").collect::<Vec<_>>().join("|")
    );
    for r in rows {
        let _ = writeln!(out, "| {} |", r.join(" | "));
    }
    out.push('\n');
}

/// One column of a suite's table: its header and how a record fills the cell.
type Column = (&'static str, fn(&Record) -> String);

const THREADS: Column = ("threads", |r| s(r.threads));
const IMPL_ISA: Column = ("impl", |r| {
    format!("{} {}", r.implementation, r.isa.as_deref().unwrap_or(""))
});
const TIME: Column = ("median (min–max)", time);
const GFLOPS: Column = ("GFLOP/s", |r| opt(r.gflops, fmt_num));
const GBPS: Column = ("GB/s", |r| opt(r.gbps, fmt_num));
const TOKENS: Column = ("tokens/s", |r| opt(r.tokens_per_s, fmt_si));
const PCT_ROOF: Column = ("% of roof", |r| pct(r.pct_peak));
const PCT_PAIRED: Column = ("% of roof (paired)", |r| pct(r.pct_peak_paired));
const ROOF: Column = ("roof", |r| r.roof.clone().unwrap_or_else(|| "-".into()));
const KV_DTYPE: Column = ("KV", |r| r.kv_dtype.clone().unwrap_or_default());
const VS_NAIVE: Column = ("vs naive", |r| ratio(r.vs_baseline));

/// `columns`, with the paired percentage after "% of roof" when a record has one (`--paired`).
fn with_paired(recs: &[&Record], columns: &[Column]) -> Vec<Column> {
    let mut v = columns.to_vec();
    if recs.iter().any(|r| r.pct_peak_paired.is_some())
        && let Some(i) = v.iter().position(|c| c.0 == PCT_ROOF.0)
    {
        v.insert(i + 1, PCT_PAIRED);
    }
    v
}

/// How to read the paired column, when the section has one.
fn paired_how(recs: &[&Record]) -> &'static str {
    if recs.iter().any(|r| r.pct_peak_paired.is_some()) {
        " % of roof (paired) = the median, over rounds that time one sample of the kernel and \
         then one of its roof on the same threads (the FMA probe, or the sum over the same \
         bytes), of the percent reached in that round: a neighbour's load slows both sides."
    } else {
        ""
    }
}

/// A suite's section: heading, one table row per record, and the how-to-read line.
fn section(out: &mut String, title: &str, recs: &[&Record], columns: &[Column], how: &str) {
    let _ = write!(out, "## {title}\n\n");
    let headers: Vec<&str> = columns.iter().map(|(h, _)| *h).collect();
    let rows: Vec<Vec<String>> = recs
        .iter()
        .map(|r| columns.iter().map(|(_, cell)| cell(r)).collect())
        .collect();
    table(out, &headers, &rows);
    let _ = write!(out, "_How to read: {how}_\n\n");
}

fn notes(out: &mut String, recs: &[&Record]) {
    for r in recs {
        if let Some(n) = &r.note
            && n.starts_with(crate::runner::MISMATCH)
        {
            let _ = writeln!(
                out,
                "- **{}** {} {} {}t: {n}",
                r.suite,
                r.shape.as_deref().unwrap_or(""),
                r.implementation,
                r.threads.unwrap_or(0)
            );
        }
    }
}

fn s<T: ToString>(v: Option<T>) -> String {
    v.map(|x| x.to_string()).unwrap_or_else(|| "-".into())
}

fn attn_shape_cell(r: &Record) -> String {
    let mut c = format!(
        "{} h{}/kv{}/d{}×L{}",
        r.shape.as_deref().unwrap_or("-"),
        s(r.heads),
        s(r.kv_heads),
        s(r.head_dim),
        s(r.layers)
    );
    if let Some(w) = r.window {
        let _ = write!(c, " w{w}");
    }
    c
}

/// The markdown report.
pub fn markdown(records: &[Record]) -> String {
    let mut out = String::new();
    let by =
        |suite: &str| -> Vec<&Record> { records.iter().filter(|r| r.suite == suite).collect() };
    out.push_str("# bench-harness report\n\n");
    let mut mem_available = None;
    if let Some(h) = records
        .iter()
        .find_map(|r| r.header.as_ref().map(|h| (r, h)))
    {
        let (r, h) = h;
        mem_available = h.mem_available;
        let caches = match (h.l2_bytes, h.llc_bytes) {
            (Some(l2), Some(l3)) => format!(
                ", L2 {}/core, LLC {}",
                fmt_bytes(l2 as u64),
                fmt_bytes(l3 as u64)
            ),
            _ => String::new(),
        };
        let rows = vec![
            vec![
                "CPU".into(),
                format!("{} — {} cores{caches}", h.cpu, h.cores),
            ],
            vec![
                "ISA path".into(),
                format!(
                    "{} (swept: {})",
                    r.isa.as_deref().unwrap_or("-"),
                    h.isas.join(", ")
                ),
            ],
            vec!["detected features".into(), h.detected_features.join(" ")],
            vec!["compiled-in features".into(), h.compiled_features.join(" ")],
            vec![
                "threads swept".into(),
                h.thread_counts
                    .iter()
                    .map(|t| t.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            ],
            vec![
                "build".into(),
                format!(
                    "bench-harness {}, commit {}, {}",
                    h.version,
                    h.git_commit.as_deref().unwrap_or("unknown"),
                    h.rustc.as_deref().unwrap_or("rustc unknown")
                ),
            ],
            vec![
                "memory available".into(),
                h.mem_available.map_or("unknown".into(), fmt_bytes),
            ],
            vec![
                "huge pages".into(),
                match h.transparent_hugepages.as_deref() {
                    Some(mode @ ("always" | "madvise")) => format!(
                        "THP `{mode}`: the KV cache, operands and roof arrays ask for 2 MiB pages"
                    ),
                    Some(mode) => format!(
                        "THP `{mode}`: 4 KiB pages only (decode measured ~1.3× slower than on huge pages)"
                    ),
                    None => "unknown (no THP information)".into(),
                },
            ],
        ];
        table(&mut out, &["", ""], &rows);
    }

    let peak = by("peak");
    if !peak.is_empty() {
        section(
            &mut out,
            "Peak: this machine's roofs",
            &peak,
            &[
                ("roof", |r| {
                    if r.implementation == "fma-probe" {
                        format!("FMA {}", r.isa.as_deref().unwrap_or("-"))
                    } else {
                        format!("read {}", r.shape.as_deref().unwrap_or("-"))
                    }
                }),
                THREADS,
                TIME,
                GFLOPS,
                GBPS,
                ("", |r| r.note.clone().unwrap_or_default()),
            ],
            "FMA is 24 independent vector FMA chains per thread on every thread at once; read is \
             a plain vectorised sum over an array of that size. A roof is the fastest sample \
             (what the machine can do), the columns show the spread. Every % of roof below is \
             relative to these numbers (bandwidth tier chosen by working-set size: fits 3/4 of \
             the threads' L2 → L2, half the LLC → LLC, else DRAM), except GEMV and decode \
             attention, which use a sum over exactly their bytes.",
        );
    }

    let mm = by("matmul");
    if !mm.is_empty() {
        section(
            &mut out,
            "matmul",
            &mm,
            &with_paired(
                &mm,
                &[
                    ("shape", |r| r.shape.clone().unwrap_or_default()),
                    ("m×n×k", |r| format!("{}×{}×{}", s(r.m), s(r.n), s(r.k))),
                    THREADS,
                    IMPL_ISA,
                    TIME,
                    GFLOPS,
                    GBPS,
                    PCT_ROOF,
                    ROOF,
                    ("vs matrixmultiply", |r| ratio(r.vs_baseline)),
                ],
            ),
            &format!(
                "GFLOP/s = 2mnk / median. GEMV-like shapes (m = 1) stream B once, so their GB/s \
                 (bytes of B / median) is compared with the read roof; the others with min(FMA \
                 peak, arithmetic intensity × read bandwidth). vs matrixmultiply = its median / \
                 ours (> 1: we are faster; it runs on one thread).{}",
                paired_how(&mm)
            ),
        );
        notes(&mut out, &mm);
    }

    let sm = by("softmax");
    if !sm.is_empty() {
        section(
            &mut out,
            "softmax",
            &sm,
            &[
                ("row_len", |r| s(r.row_len)),
                ("rows", |r| s(r.rows)),
                THREADS,
                IMPL_ISA,
                TIME,
                ("elements/s", |r| opt(r.elements_per_s, fmt_si)),
                GBPS,
                PCT_ROOF,
                ROOF,
                VS_NAIVE,
            ],
            "in-place softmax of rows × row_len floats (~1 MiB, L2-resident between calls). GB/s \
             counts one read and one write per element; softmax is usually limited by exp, not \
             memory, so % of the read roof well under 100 is expected. vs naive = scalar \
             max/exp/sum/divide median / ours.",
        );
        notes(&mut out, &sm);
    }

    let at = by("attention");
    if !at.is_empty() {
        section(
            &mut out,
            "attention: one decode step",
            &at,
            &with_paired(
                &at,
                &[
                    ("shape", attn_shape_cell),
                    KV_DTYPE,
                    ("seq_len", |r| s(r.seq_len)),
                    THREADS,
                    IMPL_ISA,
                    TIME,
                    TOKENS,
                    GBPS,
                    PCT_ROOF,
                    ROOF,
                    VS_NAIVE,
                ],
            ),
            &format!(
                "one step = append one token's K/V and attend on every layer; tokens/s = 1 / \
                 median (attention only — no projections or MLP). A step reads the whole KV \
                 cache once, so GB/s = KV bytes / median against the read roof of a working set \
                 that size; bf16 halves the bytes. vs naive = single-threaded scalar step / \
                 ours.{}",
                paired_how(&at)
            ),
        );
        notes(&mut out, &at);
    }

    let pf = by("prefill");
    if !pf.is_empty() {
        section(
            &mut out,
            "prefill: causal attention of a chunk",
            &pf,
            &[
                ("shape", attn_shape_cell),
                KV_DTYPE,
                ("T", |r| s(r.chunk)),
                ("cached", |r| {
                    s(r.seq_len.zip(r.chunk).map(|(len, t)| len.saturating_sub(t)))
                }),
                THREADS,
                ("isa", |r| r.isa.clone().unwrap_or_default()),
                TIME,
                TOKENS,
                GFLOPS,
                PCT_ROOF,
                ROOF,
            ],
            "attention of T new tokens after `cached` tokens already in the cache (q·Kᵀ, \
             masked softmax, P·V per head; `--prefill-context` sets the cached count, 0 by \
             default); GFLOP/s counts the visible (query, key) pairs only (4·head_dim per \
             pair), so it is compared with the FMA roof. tokens/s = T / median.",
        );
    }

    let kv = by("kv-vs-recompute");
    if !kv.is_empty() {
        section(
            &mut out,
            "kv-vs-recompute: what the KV cache buys",
            &kv,
            &[
                ("shape", |r| {
                    format!("{} dm{}", attn_shape_cell(r), s(r.d_model))
                }),
                ("context", |r| s(r.seq_len)),
                THREADS,
                ("impl", |r| r.implementation.clone()),
                TIME,
                TOKENS,
                GFLOPS,
                GBPS,
                PCT_ROOF,
                ROOF,
                ("measured speed-up", |r| {
                    if r.implementation == "cached" {
                        ratio(r.vs_baseline)
                    } else {
                        "-".into()
                    }
                }),
                ("FLOP ratio", |r| ratio(r.flop_ratio)),
            ],
            "per new token, `cached` projects only that token's q, k, v and attends over the \
             cache; `recompute` re-projects K and V of the whole context, then attends. FLOP \
             ratio = recompute FLOPs / cached FLOPs (what counting operations predicts); \
             measured speed-up = recompute median / cached median.",
        );
        out.push_str(&kv_explanation(&kv));
    }

    let mem = by("memory");
    if !mem.is_empty() {
        out.push_str(&memory_table(&mem, mem_available));
    }
    out
}

/// The "why the speed-up is not the context length" paragraph, from the largest context at
/// the most threads.
fn kv_explanation(kv: &[&Record]) -> String {
    let best = kv
        .iter()
        .filter(|r| r.implementation == "cached")
        .max_by_key(|r| (r.seq_len.unwrap_or(0), r.threads.unwrap_or(0)));
    let Some(c) = best else {
        return String::new();
    };
    let r = kv.iter().find(|r| {
        r.implementation == "recompute"
            && r.seq_len == c.seq_len
            && r.threads == c.threads
            && r.isa == c.isa
            && r.kv_dtype == c.kv_dtype
            && r.heads == c.heads
            && r.kv_heads == c.kv_heads
    });
    let Some(r) = r else {
        return String::new();
    };
    let ctx = c.seq_len.unwrap_or(0);
    let mut s = format!(
        "**Why not ~{ctx}× at {ctx} tokens:** recomputing costs {} the FLOPs of a cached step \
         here, and the measured speed-up is {}. ",
        ratio(c.flop_ratio),
        ratio(c.vs_baseline)
    );
    let _ = write!(
        s,
        "The cached step reads {} per token (projection weights + KV cache) at {} GB/s ({} of \
         the {} roof): it is a GEMV, bound by memory, at {} GFLOP/s. Recompute does the same \
         projections as a GEMM over all {ctx} tokens at {} GFLOP/s ({} of {}), so each extra \
         FLOP is far cheaper. Both still attend over the whole context, which the cache does not \
         remove; the cache saves the O(context × d_model × kv_dim) projection work, and for a \
         full model it also avoids re-running every earlier layer's MLP.\n\n",
        c.bytes.map_or("-".into(), fmt_bytes),
        opt(c.gbps, fmt_num),
        pct(c.pct_peak),
        c.roof.as_deref().unwrap_or("-"),
        opt(c.gflops, fmt_num),
        opt(r.gflops, fmt_num),
        pct(r.pct_peak),
        r.roof.as_deref().unwrap_or("-"),
    );
    s
}

/// The memory pivot table: bytes/token and the cache at each context length, and the longest
/// context that fits in 80% of the available memory.
fn memory_table(mem: &[&Record], mem_available: Option<u64>) -> String {
    let mut out = String::from("## memory: KV cache size\n\n");
    let mut contexts: Vec<usize> = mem.iter().filter_map(|r| r.seq_len).collect();
    contexts.sort_unstable();
    contexts.dedup();
    let mut headers: Vec<String> = vec![
        "model".into(),
        "shape".into(),
        "KV".into(),
        "bytes/token".into(),
    ];
    headers.extend(contexts.iter().map(|c| format!("@{c}")));
    headers.push("max context in 80% of free RAM".into());
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut seen = Vec::new();
    for r in mem {
        let key = (
            r.shape.clone(),
            r.heads,
            r.kv_heads,
            r.head_dim,
            r.layers,
            r.kv_dtype.clone(),
            r.window,
        );
        if seen.contains(&key) {
            continue;
        }
        seen.push(key.clone());
        let same: Vec<&&Record> = mem
            .iter()
            .filter(|x| {
                (
                    x.shape.clone(),
                    x.heads,
                    x.kv_heads,
                    x.head_dim,
                    x.layers,
                    x.kv_dtype.clone(),
                    x.window,
                ) == key
            })
            .collect();
        let per_token = r.kv_bytes_per_token.unwrap_or(0);
        let mut row = vec![
            r.shape.clone().unwrap_or_default(),
            format!(
                "h{}/kv{}/d{}×L{}{}",
                s(r.heads),
                s(r.kv_heads),
                s(r.head_dim),
                s(r.layers),
                r.window.map_or(String::new(), |w| format!(" window {w}"))
            ),
            r.kv_dtype.clone().unwrap_or_default(),
            fmt_bytes(per_token),
        ];
        for c in &contexts {
            row.push(
                same.iter()
                    .find(|x| x.seq_len == Some(*c))
                    .and_then(|x| x.kv_bytes_total)
                    .map_or("-".into(), fmt_bytes),
            );
        }
        row.push(match (mem_available, per_token) {
            (Some(avail), p) if p > 0 => {
                let max = (0.8 * avail as f64 / p as f64) as u64;
                match r.window {
                    Some(w) if (w as u64) <= max => "unbounded (window)".into(),
                    _ => format!("{max} tokens"),
                }
            }
            _ => "-".into(),
        });
        rows.push(row);
    }
    let h: Vec<&str> = headers.iter().map(|x| x.as_str()).collect();
    table(&mut out, &h, &rows);
    out.push_str(
        "_How to read: bytes/token = 2 (K and V) × layers × kv_heads × head_dim × dtype bytes; \
         @N = the cache at an N-token context (a sliding window caps the tokens held). This, \
         not compute, is what limits context windows: grouped-query attention (fewer KV heads) \
         and bf16 divide it._\n\n",
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers() {
        assert_eq!(fmt_num(123.4), "123");
        assert_eq!(fmt_num(12.34), "12.3");
        assert_eq!(fmt_num(1.234), "1.23");
        assert_eq!(fmt_si(1.5e9), "1.50 G");
        assert_eq!(fmt_si(2.5e4), "25.0 k");
    }

    #[test]
    fn csv_columns_cover_every_key() {
        let cols = csv_columns();
        for k in crate::record::REQUIRED_KEYS {
            assert!(cols.iter().any(|c| c == k), "{k}");
        }
        assert_eq!(cols[0], "suite");
        assert_eq!(cols[1], "impl");
        let h = crate::record::header_record("portable", &[1], &["portable".into()]);
        let v = h.to_json();
        for k in v.as_object().unwrap().keys() {
            assert!(cols.contains(k), "{k} missing from CSV columns");
        }
    }

    #[test]
    fn csv_quoting() {
        let r = Record {
            note: Some("a, \"b\"".into()),
            ..Record::new("matmul", "kernels")
        };
        let text = csv(&[r]);
        assert!(text.contains("\"a, \"\"b\"\"\""));
    }
}
