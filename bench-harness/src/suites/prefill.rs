//! Causal attention of a chunk of T tokens (every layer) after a number of cached tokens (0 by
//! default: an empty cache; more with `--prefill-context`), per ISA and thread count. Prefill
//! is matrix-shaped (q·Kᵀ and P·V over the chunk), so it is compared with the FMA roof.

use super::{attn_fields, mul3};
use crate::config::{AttnSpec, RunConfig};
use crate::error::Result;
use crate::record::Record;
use crate::runner::{Ctx, dec, exec_for};
use decode::bench::{PrefillBench, estimate_bytes};

/// Measurements taken.
pub fn count(cfg: &RunConfig) -> u64 {
    (cfg.prefill.len()
        * cfg.chunks.len()
        * cfg.prefill_contexts.len()
        * cfg.isas.len()
        * cfg.threads.len()) as u64
}

/// Bytes allocated per configuration: cache, q/k/v/out (and the context's k/v while it is
/// cached), and the per-tile keys, values and scores.
pub fn bench_bytes(s: &AttnSpec, chunk: usize, context: usize) -> u64 {
    let a = &s.shape;
    let qn = a.heads * a.head_dim;
    let kn = a.kv_heads * a.head_dim;
    let total = chunk.saturating_add(context);
    let io = 4 * (mul3(chunk, 2 * qn + 2 * kn, 1) + mul3(context, 2 * kn, 1));
    let tile_rows = 64 * (a.heads / a.kv_heads.max(1));
    let scratch = 4 * (mul3(2 * total, a.head_dim, 1) + mul3(tile_rows, total, 1));
    (estimate_bytes(&s.shape, total) as u64)
        .saturating_add(io)
        .saturating_add(scratch)
}

/// Bytes allocated per configuration.
pub fn estimates(cfg: &RunConfig) -> Vec<(String, u64)> {
    let mut v = Vec::new();
    for s in &cfg.prefill {
        for &c in &cfg.chunks {
            for &x in &cfg.prefill_contexts {
                v.push((
                    format!(
                        "prefill {} {} chunk {c} after {x}",
                        s.describe(),
                        s.shape.dtype
                    ),
                    bench_bytes(s, c, x),
                ));
            }
        }
    }
    v
}

/// Useful FLOPs of causal attention over `t` tokens after `context` cached ones: each query
/// scores and mixes the keys up to itself (t·context + t(t+1)/2 pairs per head, fewer under a
/// window, which a context must fit), 4·head_dim flops per pair.
pub fn prefill_flops(s: &AttnSpec, t: usize, context: usize) -> f64 {
    let a = &s.shape;
    let own = (t as f64) * (t as f64 + 1.0) / 2.0;
    let pairs = match a.window {
        Some(w) if w < t && context == 0 => (w * (w + 1) / 2 + (t - w) * w) as f64,
        _ => t as f64 * context as f64 + own,
    };
    4.0 * a.layers as f64 * a.heads as f64 * a.head_dim as f64 * pairs
}

/// Runs the suite.
pub fn run(ctx: &mut Ctx) -> Result<Vec<Record>> {
    let cfg = ctx.cfg;
    let mut out = Vec::new();
    for s in &cfg.prefill {
        for (&chunk, &context) in cfg
            .chunks
            .iter()
            .flat_map(|c| cfg.prefill_contexts.iter().map(move |x| (c, x)))
        {
            let mut bench = PrefillBench::new(s.shape, chunk, context).map_err(dec)?;
            let flops = prefill_flops(s, chunk, context);
            for &isa in &cfg.isas {
                let exec = exec_for(isa)?;
                for &t in &cfg.threads {
                    let label = format!(
                        "prefill {} {} T={chunk} after {context} {isa} {t}t",
                        s.describe(),
                        s.shape.dtype
                    );
                    let st = ctx.time(t, &label, || bench.run(&exec).map_err(dec))?;
                    let mut r = Record {
                        seq_len: Some(context + chunk),
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
