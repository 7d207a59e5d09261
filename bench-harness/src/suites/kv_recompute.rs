//! What the KV cache buys: tokens/s of a cached decode step (project only the new token, attend
//! over the cache) against recomputing K and V of the whole context for every new token (what a
//! decoder without a cache does), across context lengths.
//!
//! A naive reading says the cache saves a factor of the context length (~1000× at 1000 tokens).
//! Measured, it is much less: both paths still attend over the whole context (O(C) per token),
//! and the cached step is a GEMV that streams every projection weight once per token (bandwidth
//! bound), while recomputing turns the same weights into a GEMM over C tokens that runs near
//! the FMA roof. The records carry the FLOP ratio next to the measured speed-up.

use super::{attn_fields, mul3};
use crate::config::{AttnSpec, RunConfig};
use crate::error::Result;
use crate::record::Record;
use crate::runner::{Ctx, dec, exec_for};
use decode::bench::RecomputeBench;

/// Measurements taken.
pub fn count(cfg: &RunConfig) -> u64 {
    (cfg.recompute.len() * cfg.contexts.len() * 2 * cfg.isas.len() * cfg.threads.len()) as u64
}

fn dims(s: &AttnSpec) -> (usize, usize) {
    let a = &s.shape;
    (a.heads * a.head_dim, a.kv_heads * a.head_dim)
}

/// Bytes allocated per configuration: the decode bench, embeddings, weights, recomputed K/V.
pub fn bench_bytes(s: &AttnSpec, context: usize) -> u64 {
    let (qn, kn) = dims(s);
    let dm = s.d_model;
    let n = context + 1;
    let f = mul3(n, dm, 1)
        .saturating_add(mul3(dm, qn + 2 * kn, 1))
        .saturating_add(mul3(2 * n, kn, 1))
        .saturating_add(n as u64);
    super::attention::bench_bytes(s, context).saturating_add(f.saturating_mul(4))
}

/// Bytes allocated per configuration.
pub fn estimates(cfg: &RunConfig) -> Vec<(String, u64)> {
    let mut v = Vec::new();
    for s in &cfg.recompute {
        for &c in &cfg.contexts {
            v.push((
                format!(
                    "kv-vs-recompute {} d_model {} context {c}",
                    s.describe(),
                    s.d_model
                ),
                bench_bytes(s, c),
            ));
        }
    }
    v
}

/// FLOPs of one token `(cached, recompute)` at context `c`, as the decode crate's bench does
/// them: cached projects q, k, v of the new token and attends, on every layer; recompute
/// projects q of the new token and k, v of all `c + 1` tokens, and attends, on every layer.
pub fn token_flops(s: &AttnSpec, c: usize) -> (f64, f64) {
    let (qn, kn) = dims(s);
    let a = &s.shape;
    let (dm, n, l) = (s.d_model as f64, (c + 1) as f64, a.layers as f64);
    let attend = 4.0 * a.heads as f64 * n * a.head_dim as f64;
    let cached = l * (2.0 * dm * (qn + 2 * kn) as f64 + attend);
    let recompute = l * (2.0 * dm * qn as f64 + 2.0 * n * dm * (2 * kn) as f64 + attend);
    (cached, recompute)
}

/// Bytes the cached step must read: the projection weights (one set per layer) and the KV
/// cache.
pub fn cached_bytes(s: &AttnSpec, c: usize) -> u64 {
    let (qn, kn) = dims(s);
    4 * mul3(s.d_model, qn + 2 * kn, s.shape.layers) + s.kv_bytes(c + 1)
}

/// Runs the suite.
pub fn run(ctx: &mut Ctx) -> Result<Vec<Record>> {
    let cfg = ctx.cfg;
    let mut out = Vec::new();
    for s in &cfg.recompute {
        for &c in &cfg.contexts {
            let name = format!("kv-vs-recompute {} C={c}", s.describe());
            ctx.bar.set_message(format!("{name}: building"));
            let mut bench = RecomputeBench::new(s.shape, s.d_model, c).map_err(dec)?;
            let (f_cached, f_recompute) = token_flops(s, c);
            let bytes = cached_bytes(s, c);
            let mut template = Record {
                seq_len: Some(c),
                d_model: Some(s.d_model),
                flop_ratio: Some(f_recompute / f_cached),
                baseline: Some("recompute".into()),
                ..Record::new("kv-vs-recompute", "cached")
            };
            attn_fields(&mut template, s);
            for &isa in &cfg.isas {
                let exec = exec_for(isa)?;
                for &t in &cfg.threads {
                    let rec_st = ctx.time(t, &format!("{name} recompute {isa} {t}t"), || {
                        bench.recompute_step(&exec).map_err(dec)
                    })?;
                    let cached_st = ctx.time(t, &format!("{name} cached {isa} {t}t"), || {
                        bench.cached_step(&exec).map_err(dec)
                    })?;
                    let mut cached = Record {
                        isa: Some(isa.name().into()),
                        threads: Some(t),
                        tokens_per_s: Some(1.0 / cached_st.median),
                        gflops: Some(f_cached / cached_st.median / 1e9),
                        gbps: Some(bytes as f64 / cached_st.median / 1e9),
                        bytes: Some(bytes),
                        vs_baseline: Some(rec_st.median / cached_st.median),
                        ..template.clone()
                    }
                    .with_stats(&cached_st);
                    if let Some(roof) = ctx.roofline.bw_roof(bytes, t) {
                        cached.pct_peak = cached.gbps.and_then(|g| roof.pct(g));
                        cached.roof = Some(roof.label);
                    }
                    let mut recompute = Record {
                        implementation: "recompute".into(),
                        isa: Some(isa.name().into()),
                        threads: Some(t),
                        tokens_per_s: Some(1.0 / rec_st.median),
                        gflops: Some(f_recompute / rec_st.median / 1e9),
                        vs_baseline: Some(1.0),
                        ..template.clone()
                    }
                    .with_stats(&rec_st);
                    if let Some(roof) = ctx.roofline.fma_roof(isa, t) {
                        recompute.pct_peak = recompute.gflops.and_then(|g| roof.pct(g));
                        recompute.roof = Some(roof.label);
                    }
                    out.push(cached);
                    out.push(recompute);
                }
            }
        }
    }
    Ok(out)
}
