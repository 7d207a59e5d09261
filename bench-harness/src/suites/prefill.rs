//! Causal attention of a chunk of T tokens into an empty cache (every layer), per ISA and thread
//! count. Prefill is matrix-shaped (q·Kᵀ and P·V over the chunk), so it is compared with the
//! FMA roof.

use super::{attn_fields, mul3};
use crate::config::{AttnSpec, RunConfig};
use crate::error::Result;
use crate::record::Record;
use crate::runner::{Ctx, dec, exec_for};
use decode::bench::{PrefillBench, estimate_bytes};

/// Measurements taken.
pub fn count(cfg: &RunConfig) -> u64 {
    (cfg.prefill.len() * cfg.chunks.len() * cfg.isas.len() * cfg.threads.len()) as u64
}

/// Bytes allocated per configuration: cache, q/k/v/out, and the per-tile keys, values and
/// scores.
pub fn bench_bytes(s: &AttnSpec, chunk: usize) -> u64 {
    let a = &s.shape;
    let qn = a.heads * a.head_dim;
    let kn = a.kv_heads * a.head_dim;
    let io = 4 * mul3(chunk, 2 * qn + 2 * kn, 1);
    let scratch = 4 * (mul3(2 * chunk, a.head_dim, 1) + mul3(chunk, chunk.min(1024), 1));
    (estimate_bytes(&s.shape, chunk) as u64)
        .saturating_add(io)
        .saturating_add(scratch)
}

/// Bytes allocated per configuration.
pub fn estimates(cfg: &RunConfig) -> Vec<(String, u64)> {
    let mut v = Vec::new();
    for s in &cfg.prefill {
        for &c in &cfg.chunks {
            v.push((
                format!("prefill {} {} chunk {c}", s.describe(), s.shape.dtype),
                bench_bytes(s, c),
            ));
        }
    }
    v
}

/// Useful FLOPs of causal attention over `t` tokens: each query scores and mixes the keys up
/// to itself (t(t+1)/2 pairs per head), 4·head_dim flops per pair.
pub fn prefill_flops(s: &AttnSpec, t: usize) -> f64 {
    let a = &s.shape;
    let pairs = match a.window {
        Some(w) if w < t => (w * (w + 1) / 2 + (t - w) * w) as f64,
        _ => (t as f64) * (t as f64 + 1.0) / 2.0,
    };
    4.0 * a.layers as f64 * a.heads as f64 * a.head_dim as f64 * pairs
}

/// Runs the suite.
pub fn run(ctx: &mut Ctx) -> Result<Vec<Record>> {
    let cfg = ctx.cfg;
    let mut out = Vec::new();
    for s in &cfg.prefill {
        for &chunk in &cfg.chunks {
            let mut bench = PrefillBench::new(s.shape, chunk).map_err(dec)?;
            let flops = prefill_flops(s, chunk);
            for &isa in &cfg.isas {
                let exec = exec_for(isa)?;
                for &t in &cfg.threads {
                    let label = format!(
                        "prefill {} {} T={chunk} {isa} {t}t",
                        s.describe(),
                        s.shape.dtype
                    );
                    let st = ctx.time(t, &label, || bench.run(&exec).map_err(dec))?;
                    let mut r = Record {
                        seq_len: Some(chunk),
                        chunk: Some(chunk),
                        isa: Some(isa.name().into()),
                        threads: Some(t),
                        tokens_per_s: Some(chunk as f64 / st.median),
                        gflops: Some(flops / st.median / 1e9),
                        ..Record::new("prefill", "kernels")
                    }
                    .with_stats(&st);
                    attn_fields(&mut r, s);
                    if let Some(roof) = ctx.roofline.fma_roof(isa, t) {
                        r.pct_peak = r.gflops.and_then(|g| roof.pct(g));
                        r.roof = Some(roof.label);
                    }
                    out.push(r);
                }
            }
        }
    }
    Ok(out)
}
