//! The attention half of an inference engine's loop, as an embedder would write it: weights
//! packed once at load, one KV cache for every layer (a ring with attention sinks, so
//! generation runs past its capacity), buffers allocated once, the caller's own thread pool,
//! a prompt prefilled in one chunk per layer, then tokens decoded one at a time, and a
//! speculative draft rolled back. The model is random (no MLP, no sampling): the point is the
//! calls, their buffers and their cost.
//!
//! `cargo run --release -p decode --example engine_loop -- [threads] [tokens]`

use decode::{
    AttentionLayer, CacheConfig, HeadConfig, KvCache, KvDtype, LayerConfig, LayerScratch,
    LayerWeights, Rope,
};
use kernels::Exec;
use std::time::Instant;

type Res<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const LAYERS: usize = 4;
const D_MODEL: usize = 1024;
const HEADS: HeadConfig = HeadConfig {
    heads: 16,
    kv_heads: 4,
    head_dim: 64,
};
const PROMPT: usize = 128;
/// Token slots per layer; generation goes past it, evicting the oldest non-sink tokens.
const CAPACITY: usize = 512;
const SINKS: usize = 4;

/// Deterministic pseudo-random values in ±scale (a stand-in for trained weights).
fn values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ((x >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// `x += attention(x)` through every layer, for `tokens` rows of `x`.
fn forward(
    exec: &Exec,
    layers: &[AttentionLayer],
    cache: &mut KvCache,
    x: &mut [f32],
    out: &mut [f32],
    scratch: &mut LayerScratch,
) -> Res {
    for (l, layer) in layers.iter().enumerate() {
        if x.len() == D_MODEL {
            layer.decode(exec, cache, l, x, out, scratch)?;
        } else {
            layer.prefill(exec, cache, l, x, out, scratch)?;
        }
        x.iter_mut().zip(out.iter()).for_each(|(a, b)| *a += b);
    }
    Ok(())
}

/// Refills the residual stream `rows` with the prompt, prefills it through every layer, and
/// leaves its last row in `x` (the next token's input).
#[allow(clippy::too_many_arguments)]
fn prefill_prompt(
    exec: &Exec,
    layers: &[AttentionLayer],
    cache: &mut KvCache,
    prompt: &[f32],
    rows: &mut [f32],
    out: &mut [f32],
    x: &mut [f32],
    scratch: &mut LayerScratch,
) -> Res {
    rows.copy_from_slice(prompt);
    forward(exec, layers, cache, rows, out, scratch)?;
    x.copy_from_slice(&rows[rows.len() - D_MODEL..]);
    Ok(())
}

fn main() -> Res {
    let mut args = std::env::args().skip(1);
    let threads: usize = args.next().map_or(Ok(2), |a| a.parse())?;
    let tokens: usize = args.next().map_or(Ok(600), |a| a.parse())?;

    // The engine's own pool: the kernels use whichever pool they are called from.
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()?;
    let exec = Exec::new();
    let cfg = LayerConfig {
        d_model: D_MODEL,
        heads: HEADS,
        rope: Some(Rope::default()),
    };
    let (qw, kw) = (
        HEADS.heads * HEADS.head_dim,
        HEADS.kv_heads * HEADS.head_dim,
    );
    let scale = 1.0 / (D_MODEL as f32).sqrt();
    // Load time: every weight matrix packed once for this CPU's ISA path.
    let layers = (0..LAYERS as u64)
        .map(|l| {
            let w = LayerWeights {
                w_q: values(D_MODEL * qw, 4 * l + 1, scale),
                w_k: values(D_MODEL * kw, 4 * l + 2, scale),
                w_v: values(D_MODEL * kw, 4 * l + 3, scale),
                w_o: Some(values(qw * D_MODEL, 4 * l + 4, scale)),
            };
            AttentionLayer::new_packed(&exec, cfg, w)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut cache = KvCache::new(CacheConfig {
        layers: LAYERS,
        kv_heads: HEADS.kv_heads,
        head_dim: HEADS.head_dim,
        capacity: CAPACITY,
        sinks: SINKS,
        dtype: KvDtype::Bf16,
    })?;
    // Buffers sized once: the scratch for this many threads, the token rows, the outputs.
    let mut scratch = LayerScratch::new(&cfg, threads)?;
    let prompt = values(PROMPT * D_MODEL, 99, 1.0);
    // The residual stream of the prompt (the layers add into it), and the layers' outputs.
    let mut rows = vec![0.0; PROMPT * D_MODEL];
    let mut prompt_out = vec![0.0; PROMPT * D_MODEL];
    let mut x = vec![0.0; D_MODEL];
    let mut out = vec![0.0; D_MODEL];
    println!(
        "{LAYERS} layers, d_model {D_MODEL}, {} query / {} KV heads of {}, bf16 cache of {} \
         slots ({} sinks): {:.1} MiB; ISA {}, {threads} threads",
        HEADS.heads,
        HEADS.kv_heads,
        HEADS.head_dim,
        CAPACITY,
        SINKS,
        cache.bytes() as f64 / (1 << 20) as f64,
        exec.isa()
    );

    pool.install(|| -> Res {
        let t = Instant::now();
        prefill_prompt(
            &exec,
            &layers,
            &mut cache,
            &prompt,
            &mut rows,
            &mut prompt_out,
            &mut x,
            &mut scratch,
        )?;
        let prefill = t.elapsed().as_secs_f64();
        println!(
            "prefill: {PROMPT} tokens in {:.2} ms ({:.0} tokens/s)",
            prefill * 1e3,
            PROMPT as f64 / prefill
        );
        // Each next input: the last output row (a real engine would run the MLP and sample).
        let t = Instant::now();
        for _ in 0..tokens {
            forward(&exec, &layers, &mut cache, &mut x, &mut out, &mut scratch)?;
            let norm = x.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-6);
            x.iter_mut().for_each(|v| *v /= norm);
        }
        let decode = t.elapsed().as_secs_f64();
        let mut held = cache.positions();
        held.sort_unstable();
        println!(
            "decode: {tokens} tokens in {:.2} ms ({:.0} tokens/s); the cache holds {} of {} \
             positions: sinks {:?} and {}..={}",
            decode * 1e3,
            tokens as f64 / decode,
            cache.len(),
            cache.next_position(),
            &held[..SINKS],
            held[SINKS],
            held[held.len() - 1],
        );
        // Speculative decoding: four draft tokens, two accepted. Rolling back works while the
        // ring has not evicted what it goes back to, so drafts are decoded into a cache that
        // still has room for them (reset and refilled with the prompt here).
        cache.reset();
        prefill_prompt(
            &exec,
            &layers,
            &mut cache,
            &prompt,
            &mut rows,
            &mut prompt_out,
            &mut x,
            &mut scratch,
        )?;
        let accepted = cache.next_position() + 2;
        for _ in 0..4 {
            forward(&exec, &layers, &mut cache, &mut x, &mut out, &mut scratch)?;
        }
        cache.truncate(accepted)?;
        println!(
            "speculative: 4 drafted after the prompt, rolled back to {} positions",
            cache.next_position()
        );
        Ok(())
    })?;
    Ok(())
}
