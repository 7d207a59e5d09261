//! Attention over the KV cache against the f64 reference, under every available ISA on 1 and 2
//! threads: decode at every step (MHA, GQA, MQA; several head sizes, one not a multiple of any
//! SIMD width; with and without RoPE; full and sliding-window caches, with and without sinks),
//! every split count of the flash-decoding kernel, a 32k-token context, chunked prefill
//! (including chunks that wrap the ring or exceed it) against token-by-token decode, GQA
//! against MHA with repeated KV heads, multi-head against independent single heads, bf16 KV
//! against f32 KV, the empty cache, and the error paths.
//!
//! Accuracy is measured per token as `max |got − ref| / max |ref|` (the "relative error").

mod common;

use common::{ExecCase, exec_cases, random_vec, rng};
use decode::reference::{attend_f64, layer_f64};
use decode::{
    AttentionLayer, CacheConfig, DecodeError, DecodeOptions, DecodeScratch, HeadConfig, KvCache,
    KvDtype, LayerConfig, LayerScratch, LayerWeights, MAX_SPLITS, PrefillScratch, Rope,
    choose_splits, decode_attention, prefill_attention, visible,
};
use kernels::Exec;

/// Tolerance of f32-KV results against the f64 reference.
const TOL: f64 = 1e-5;

/// `max |got − want| / max |want|` (plain max difference when `want` is all zeros).
fn rel_err(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len(), "lengths differ");
    assert!(got.iter().all(|x| x.is_finite()), "non-finite output");
    let max_ref = want.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    let diff = got
        .iter()
        .zip(want)
        .fold(0.0f64, |m, (g, w)| m.max((*g as f64 - w).abs()));
    if max_ref == 0.0 { diff } else { diff / max_ref }
}

/// [`rel_err`] between two f32 results.
fn rel_err32(got: &[f32], want: &[f32]) -> f64 {
    let want: Vec<f64> = want.iter().map(|&x| x as f64).collect();
    rel_err(got, &want)
}

fn heads(heads: usize, kv_heads: usize, head_dim: usize) -> HeadConfig {
    HeadConfig {
        heads,
        kv_heads,
        head_dim,
    }
}

/// Random weights whose projections have roughly unit variance, so that scores spread over a
/// few units: attention is neither uniform nor one-hot.
fn layer_with(
    seed: u64,
    d_model: usize,
    h: HeadConfig,
    rope: bool,
    w_o: bool,
) -> (LayerConfig, LayerWeights) {
    let mut r = rng(seed);
    let scale = 3.0 / (d_model as f32).sqrt();
    let mut w = |n: usize, s: f32| -> Vec<f32> {
        random_vec(&mut r, n).into_iter().map(|x| x * s).collect()
    };
    let weights = LayerWeights {
        w_q: w(d_model * h.heads * h.head_dim, scale),
        w_k: w(d_model * h.kv_heads * h.head_dim, scale),
        w_v: w(d_model * h.kv_heads * h.head_dim, scale),
        w_o: w_o.then(|| {
            w(
                h.heads * h.head_dim * d_model,
                1.0 / (h.heads as f32).sqrt(),
            )
        }),
    };
    let cfg = LayerConfig {
        d_model,
        heads: h,
        rope: rope.then(Rope::default),
    };
    (cfg, weights)
}

fn cache_for(h: HeadConfig, capacity: usize, sinks: usize, dtype: KvDtype) -> KvCache {
    KvCache::new(CacheConfig {
        layers: 1,
        kv_heads: h.kv_heads,
        head_dim: h.head_dim,
        capacity,
        sinks,
        dtype,
    })
    .expect("valid cache")
}

/// Decodes `xs` (`T × d_model`) token by token, returning each token's output.
fn decode_tokens(
    case: &ExecCase,
    layer: &AttentionLayer,
    cache: &mut KvCache,
    xs: &[f32],
) -> Vec<Vec<f32>> {
    case.run(|| {
        let cfg = layer.config();
        let mut scratch = LayerScratch::new(cfg, case.threads).unwrap();
        xs.chunks_exact(cfg.d_model)
            .map(|x| {
                let mut out = vec![f32::NAN; layer.out_dim()];
                layer
                    .decode(&case.exec, cache, 0, x, &mut out, &mut scratch)
                    .unwrap();
                out
            })
            .collect()
    })
}

/// Asserts every token's output against the reference; returns the largest error seen.
fn check_tokens(what: &str, got: &[Vec<f32>], want: &[Vec<f64>], tol: f64) -> f64 {
    assert_eq!(got.len(), want.len(), "{what}: token counts");
    let mut worst = 0.0f64;
    for (t, (g, w)) in got.iter().zip(want).enumerate() {
        let e = rel_err(g, w);
        assert!(
            e <= tol,
            "{what}: token {t}: relative error {e:.3e} > {tol:.0e}"
        );
        worst = worst.max(e);
    }
    worst
}

/// The MHA, GQA and MQA shapes every accuracy test sweeps.
const SHAPES: [(usize, usize, &str); 3] = [(4, 4, "MHA"), (8, 2, "GQA"), (4, 1, "MQA")];

#[test]
fn decode_matches_reference_at_every_step() {
    let (d_model, tokens) = (32, 96);
    let xs = random_vec(&mut rng(1), tokens * d_model);
    let mut worst = 0.0f64;
    for (si, &(h, kv, name)) in SHAPES.iter().enumerate() {
        for (di, head_dim) in [64, 80, 128, 20].into_iter().enumerate() {
            for rope in [false, true] {
                let w_o = (si + di) % 2 == 0;
                let (cfg, w) = layer_with(
                    100 + (si * 10 + di) as u64,
                    d_model,
                    heads(h, kv, head_dim),
                    rope,
                    w_o,
                );
                let want = layer_f64(&cfg, &w, &xs, tokens, 0);
                let layer = AttentionLayer::new(cfg, w).unwrap();
                for case in exec_cases() {
                    let mut cache = cache_for(cfg.heads, tokens, 0, KvDtype::F32);
                    let got = decode_tokens(&case, &layer, &mut cache, &xs);
                    let what = format!("{name} d={head_dim} rope={rope} w_o={w_o} {case}");
                    worst = worst.max(check_tokens(&what, &got, &want, TOL));
                }
            }
        }
    }
    println!("decode vs f64 reference: worst relative error {worst:.2e}");
}

#[test]
fn visibility_rule() {
    // Full attention (capacity ≥ context): every earlier position and the query itself.
    assert!(visible(5, 0, 100, 0));
    assert!(visible(5, 5, 100, 0));
    assert!(!visible(5, 6, 100, 0));
    // Window of 4, no sinks: the query and the 3 before it.
    assert!(visible(10, 7, 4, 0));
    assert!(!visible(10, 6, 4, 0));
    // Window of 6 with 2 sinks: positions 0 and 1, and the last 4 up to the query.
    assert!(visible(10, 0, 6, 2));
    assert!(visible(10, 1, 6, 2));
    assert!(!visible(10, 2, 6, 2));
    assert!(!visible(10, 6, 6, 2));
    assert!(visible(10, 7, 6, 2));
    assert!(!visible(1, 2, 6, 2));
    // Positions near usize::MAX: no overflow (it once wrapped to "not visible").
    assert!(visible(usize::MAX, usize::MAX, 2, 0));
    assert!(visible(usize::MAX, usize::MAX - 1, 2, 0));
    assert!(!visible(usize::MAX, usize::MAX - 2, 2, 0));
    assert!(visible(usize::MAX, 1, 5, 2));
}

#[test]
fn sliding_window_decode_equals_recompute_over_the_window() {
    let (d_model, tokens, w) = (32, 60, 16);
    let xs = random_vec(&mut rng(2), tokens * d_model);
    let mut worst = 0.0f64;
    for (si, &(h, kv, name)) in SHAPES.iter().enumerate() {
        for (head_dim, rope) in [(64, true), (36, false), (20, true)] {
            let (cfg, wts) = layer_with(
                200 + si as u64,
                d_model,
                heads(h, kv, head_dim),
                rope,
                si != 1,
            );
            let layer = AttentionLayer::new(cfg, wts.clone()).unwrap();
            for sinks in [0, 3] {
                let want = layer_f64(&cfg, &wts, &xs, w, sinks);
                if sinks == 0 {
                    // Independent of the visibility rule: after the wrap, token t's output is
                    // that of the last token of a fresh sequence made of the W tokens ending at
                    // t (RoPE only sees relative positions, so the shift does not matter).
                    for t in [w, w + 1, 37, tokens - 1] {
                        let window = &xs[(t + 1 - w) * d_model..(t + 1) * d_model];
                        let fresh = layer_f64(&cfg, &wts, window, w, 0);
                        let lhs: Vec<f32> = want[t].iter().map(|&x| x as f32).collect();
                        let e = rel_err(&lhs, &fresh[w - 1]);
                        assert!(e < 1e-6, "{name} d={head_dim} token {t}: {e:.2e}");
                    }
                }
                for case in exec_cases() {
                    let mut cache = cache_for(cfg.heads, w, sinks, KvDtype::F32);
                    let got = decode_tokens(&case, &layer, &mut cache, &xs);
                    assert_eq!(cache.len(), w);
                    let what = format!("{name} d={head_dim} rope={rope} W={w} S={sinks} {case}");
                    worst = worst.max(check_tokens(&what, &got, &want, TOL));
                }
            }
        }
    }
    println!("sliding-window decode vs f64 reference: worst relative error {worst:.2e}");
}

/// Fills `layer` 0 of a fresh cache with `n` random tokens via `append_many`: keys uniform in
/// [-1, 1], values uniform in [-1, 1] plus `value_offset`. An offset keeps the output well away
/// from zero (zero-mean values average out to ~1/√n), so the relative error measures the
/// kernel's rounding, with every accumulator carrying a large common component.
fn filled_cache(seed: u64, h: HeadConfig, capacity: usize, n: usize, value_offset: f32) -> KvCache {
    let mut r = rng(seed);
    let mut cache = cache_for(h, capacity, 0, KvDtype::F32);
    let row = h.kv_heads * h.head_dim;
    let k = random_vec(&mut r, n * row);
    let v: Vec<f32> = random_vec(&mut r, n * row)
        .into_iter()
        .map(|x| x + value_offset)
        .collect();
    cache.append_many(0, &k, &v).unwrap();
    cache
}

/// f64 attention of every query head over the cache's occupied slots (read back with `get`).
fn attend_cache_f64(h: HeadConfig, cache: &KvCache, q: &[f32]) -> Vec<f64> {
    let d = h.head_dim;
    let len = cache.len();
    let mut out = Vec::with_capacity(h.heads * d);
    for kv in 0..h.kv_heads {
        let read = |value: bool| -> Vec<Vec<f64>> {
            (0..len)
                .map(|s| {
                    (0..d)
                        .map(|i| cache.get(0, value, kv, s, i) as f64)
                        .collect()
                })
                .collect()
        };
        let (keys, values) = (read(false), read(true));
        for g in 0..h.group() {
            let head = kv * h.group() + g;
            let qh: Vec<f64> = q[head * d..(head + 1) * d]
                .iter()
                .map(|&x| x as f64)
                .collect();
            out.extend(attend_f64(&qh, &keys, &values, 1.0 / (d as f64).sqrt()));
        }
    }
    out
}

/// A query whose scores (`q·k/√d` with unit-range keys) spread over a few units.
fn query(seed: u64, h: HeadConfig) -> Vec<f32> {
    random_vec(&mut rng(seed), h.heads * h.head_dim)
        .into_iter()
        .map(|x| 4.0 * x)
        .collect()
}

/// Agreement between split counts. Each split keeps one f32 accumulator per head over its keys,
/// so one split over ~3000 keys is itself ~2e-6 from the f64 value (more splits are closer:
/// shorter sums), and two split counts differ by up to that much: measured 2.8e-6 at worst
/// (8 heads/2 KV heads of 64, portable). 1e-6 would fail on rounding alone; 5e-6 is asserted.
const SPLIT_TOL: f64 = 5e-6;

#[test]
fn every_split_count_agrees() {
    // ~3000 positions in a ring of 2900 (so it has wrapped): splits of 1..=8 are all ≥ 362 keys
    // and cut through the 256-key blocks at different places.
    let mut worst_ref = 0.0f64;
    let mut worst_split = 0.0f64;
    for (seed, h) in [
        (30, heads(8, 2, 64)),
        (31, heads(4, 1, 36)),
        (32, heads(3, 3, 128)),
    ] {
        let cache = filled_cache(seed, h, 2900, 3000, 0.25);
        assert_eq!(cache.len(), 2900);
        let q = query(seed + 100, h);
        let want = attend_cache_f64(h, &cache, &q);
        for case in exec_cases() {
            let outs: Vec<Vec<f32>> = case.run(|| {
                let mut scratch = DecodeScratch::new(h, 8).unwrap();
                (1..=8)
                    .map(|s| {
                        let mut out = vec![f32::NAN; h.heads * h.head_dim];
                        let opts = DecodeOptions { splits: Some(s) };
                        decode_attention(
                            &case.exec,
                            &h,
                            &cache,
                            0,
                            &q,
                            &mut out,
                            &mut scratch,
                            opts,
                        )
                        .unwrap();
                        out
                    })
                    .collect()
            });
            for (i, out) in outs.iter().enumerate() {
                let e = rel_err(out, &want);
                assert!(e <= TOL, "{h:?} {case} splits {}: vs f64 {e:.2e}", i + 1);
                worst_ref = worst_ref.max(e);
                let e = rel_err32(out, &outs[0]);
                assert!(
                    e <= SPLIT_TOL,
                    "{h:?} {case} splits {} vs 1 split: {e:.2e}",
                    i + 1
                );
                worst_split = worst_split.max(e);
            }
        }
    }
    println!(
        "split counts 1..=8: worst vs f64 {worst_ref:.2e}, worst between split counts {worst_split:.2e}"
    );
}

#[test]
fn more_splits_than_keys_and_tiny_caches() {
    // Splits that get no keys at all must contribute nothing (not NaN).
    let h = heads(4, 2, 20);
    for n in [1, 3, 7] {
        let cache = filled_cache(40 + n as u64, h, 16, n, 0.0);
        let q = query(50, h);
        let want = attend_cache_f64(h, &cache, &q);
        for case in exec_cases() {
            case.run(|| {
                let mut scratch = DecodeScratch::new(h, 8).unwrap();
                for s in 1..=8 {
                    let mut out = vec![f32::NAN; h.heads * h.head_dim];
                    let opts = DecodeOptions { splits: Some(s) };
                    decode_attention(&case.exec, &h, &cache, 0, &q, &mut out, &mut scratch, opts)
                        .unwrap();
                    let e = rel_err(&out, &want);
                    assert!(e <= TOL, "{n} keys, {s} splits, {case}: {e:.2e}");
                }
            });
        }
    }
}

/// Measured (relative error vs f64): about 5.6e-6 on one thread (one split: a single f32
/// accumulator per head over all 32768 keys) and 2.1e-6 on two (four splits), every ISA.
#[test]
fn long_context_32k_matches_f64() {
    let h = heads(2, 1, 64);
    let n = 32_768;
    let cache = filled_cache(60, h, n, n, 0.25);
    let q = query(61, h);
    let want = attend_cache_f64(h, &cache, &q);
    let mut worst = 0.0f64;
    for case in exec_cases() {
        let out = case.run(|| {
            let mut scratch = DecodeScratch::for_threads(h, case.threads).unwrap();
            let mut out = vec![f32::NAN; h.heads * h.head_dim];
            decode_attention(
                &case.exec,
                &h,
                &cache,
                0,
                &q,
                &mut out,
                &mut scratch,
                DecodeOptions::default(),
            )
            .unwrap();
            out
        });
        let e = rel_err(&out, &want);
        println!("32768 positions, {case}: relative error {e:.2e}");
        assert!(e <= TOL, "32k positions, {case}: relative error {e:.2e}");
        worst = worst.max(e);
    }
    println!("32768 positions vs f64: worst relative error {worst:.2e}");
}

#[test]
fn empty_cache_gives_zeros() {
    for h in [heads(4, 4, 64), heads(8, 2, 20), heads(4, 1, 128)] {
        let mut cache = KvCache::new(CacheConfig {
            layers: 2,
            kv_heads: h.kv_heads,
            head_dim: h.head_dim,
            capacity: 8,
            sinks: 2,
            dtype: KvDtype::F32,
        })
        .unwrap();
        let q = query(70, h);
        // Layer 0 gets tokens; layer 1 stays empty.
        let row = h.kv_heads * h.head_dim;
        let kv = random_vec(&mut rng(71), 3 * row);
        cache.append_many(0, &kv, &kv).unwrap();
        for case in exec_cases() {
            case.run(|| {
                let mut scratch = DecodeScratch::new(h, 4).unwrap();
                for splits in [None, Some(1), Some(4)] {
                    let mut out = vec![f32::NAN; h.heads * h.head_dim];
                    let opts = DecodeOptions { splits };
                    decode_attention(&case.exec, &h, &cache, 1, &q, &mut out, &mut scratch, opts)
                        .unwrap();
                    assert!(out.iter().all(|&x| x == 0.0), "{case} {splits:?}: {out:?}");
                }
            });
        }
        // A fresh cache too.
        let empty = cache_for(h, 4, 0, KvDtype::Bf16);
        let mut out = vec![1.0; h.heads * h.head_dim];
        let mut scratch = DecodeScratch::new(h, 1).unwrap();
        decode_attention(
            &Exec::sequential(),
            &h,
            &empty,
            0,
            &q,
            &mut out,
            &mut scratch,
            DecodeOptions::default(),
        )
        .unwrap();
        assert!(out.iter().all(|&x| x == 0.0));
    }
}

/// One prefill scenario: `history` tokens decoded one by one, then a chunk of `chunk` tokens
/// prefilled at once, then `after` more tokens decoded — against decoding all of them token by
/// token, and against the reference.
struct PrefillCase {
    capacity: usize,
    sinks: usize,
    history: usize,
    chunk: usize,
    after: usize,
}

#[test]
fn prefill_equals_decode_token_by_token() {
    let d_model = 32;
    let scenarios = [
        // Empty cache, one chunk.
        PrefillCase {
            capacity: 128,
            sinks: 0,
            history: 0,
            chunk: 40,
            after: 4,
        },
        // After some history, no wrap.
        PrefillCase {
            capacity: 128,
            sinks: 0,
            history: 7,
            chunk: 30,
            after: 4,
        },
        // A chunk that crosses the wrap point.
        PrefillCase {
            capacity: 16,
            sinks: 0,
            history: 10,
            chunk: 12,
            after: 6,
        },
        // A chunk longer than the ring, after existing history.
        PrefillCase {
            capacity: 8,
            sinks: 0,
            history: 5,
            chunk: 20,
            after: 5,
        },
        // The same two with sinks.
        PrefillCase {
            capacity: 16,
            sinks: 3,
            history: 10,
            chunk: 12,
            after: 6,
        },
        PrefillCase {
            capacity: 8,
            sinks: 2,
            history: 5,
            chunk: 20,
            after: 5,
        },
        // More than one 64-row tile, with and without a window shorter than a tile.
        PrefillCase {
            capacity: 256,
            sinks: 0,
            history: 3,
            chunk: 100,
            after: 3,
        },
        PrefillCase {
            capacity: 24,
            sinks: 1,
            history: 2,
            chunk: 150,
            after: 3,
        },
        // Sinks inside the chunk and a window that slides past them: the chunk rows a tile
        // sees are not one run, so even an f32 cache gathers them.
        PrefillCase {
            capacity: 16,
            sinks: 4,
            history: 0,
            chunk: 150,
            after: 3,
        },
        PrefillCase {
            capacity: 16,
            sinks: 4,
            history: 2,
            chunk: 150,
            after: 3,
        },
    ];
    let shapes = [
        (heads(8, 2, 64), true, false),
        (heads(4, 4, 20), false, true),
        (heads(4, 1, 80), true, true),
    ];
    let mut worst = 0.0f64;
    for (si, &(h, rope, w_o)) in shapes.iter().enumerate() {
        let (cfg, wts) = layer_with(300 + si as u64, d_model, h, rope, w_o);
        let layer = AttentionLayer::new(cfg, wts.clone()).unwrap();
        for (ci, sc) in scenarios.iter().enumerate() {
            let total = sc.history + sc.chunk + sc.after;
            let xs = random_vec(&mut rng(400 + ci as u64), total * d_model);
            let want = layer_f64(&cfg, &wts, &xs, sc.capacity, sc.sinks);
            let what = |case: &ExecCase| {
                format!(
                    "{h:?} rope={rope} W={} S={} history {} chunk {} {case}",
                    sc.capacity, sc.sinks, sc.history, sc.chunk
                )
            };
            for case in exec_cases() {
                // Token by token all the way.
                let mut c_dec = cache_for(h, sc.capacity, sc.sinks, KvDtype::F32);
                let by_token = decode_tokens(&case, &layer, &mut c_dec, &xs);
                let mut c_dec_mid = cache_for(h, sc.capacity, sc.sinks, KvDtype::F32);
                let upto = (sc.history + sc.chunk) * d_model;
                decode_tokens(&case, &layer, &mut c_dec_mid, &xs[..upto]);

                // History by decode, chunk by prefill, rest by decode, one scratch throughout.
                let mut c_pre = cache_for(h, sc.capacity, sc.sinks, KvDtype::F32);
                let (chunk_out, after_out, mid_positions) = case.run(|| {
                    let mut s = LayerScratch::new(&cfg, case.threads).unwrap();
                    let od = layer.out_dim();
                    let mut out = vec![0.0; od];
                    for x in xs[..sc.history * d_model].chunks_exact(d_model) {
                        layer
                            .decode(&case.exec, &mut c_pre, 0, x, &mut out, &mut s)
                            .unwrap();
                    }
                    let mut chunk_out = vec![f32::NAN; sc.chunk * od];
                    let xc = &xs[sc.history * d_model..upto];
                    layer
                        .prefill(&case.exec, &mut c_pre, 0, xc, &mut chunk_out, &mut s)
                        .unwrap();
                    let mid_positions = c_pre.positions();
                    // The cache now holds what token-by-token decode left.
                    assert_eq!(c_pre.next_position(), sc.history + sc.chunk);
                    assert_same_entries(&c_pre, &c_dec_mid, &what(&case));
                    let mut after_out = Vec::new();
                    for x in xs[upto..].chunks_exact(d_model) {
                        let mut o = vec![f32::NAN; od];
                        layer
                            .decode(&case.exec, &mut c_pre, 0, x, &mut o, &mut s)
                            .unwrap();
                        after_out.push(o);
                    }
                    (chunk_out, after_out, mid_positions)
                });
                assert_eq!(mid_positions, c_dec_mid.positions());
                let od = layer.out_dim();
                for (i, out) in chunk_out.chunks_exact(od).enumerate() {
                    let t = sc.history + i;
                    let e = rel_err32(out, &by_token[t]);
                    assert!(
                        e <= TOL,
                        "{}: chunk token {i} vs decode: {e:.2e}",
                        what(&case)
                    );
                    let e = rel_err(out, &want[t]);
                    assert!(e <= TOL, "{}: chunk token {i} vs f64: {e:.2e}", what(&case));
                    worst = worst.max(e);
                }
                for (i, out) in after_out.iter().enumerate() {
                    let t = sc.history + sc.chunk + i;
                    let e = rel_err32(out, &by_token[t]);
                    assert!(
                        e <= TOL,
                        "{}: decode after prefill, token {t}: {e:.2e}",
                        what(&case)
                    );
                }
                assert_eq!(c_pre.positions(), c_dec.positions());
                assert_same_entries(&c_pre, &c_dec, &what(&case));
            }
        }
    }
    println!("prefill vs f64 reference: worst relative error {worst:.2e}");
}

/// Same positions in the same slots, and stored K and V equal to within f32 rounding (prefill
/// projects a whole chunk with one GEMM, decode one token at a time).
fn assert_same_entries(a: &KvCache, b: &KvCache, what: &str) {
    assert_eq!(a.positions(), b.positions(), "{what}: positions");
    let c = a.config();
    for value in [false, true] {
        for head in 0..c.kv_heads {
            for slot in 0..a.len() {
                for i in 0..c.head_dim {
                    let (x, y) = (
                        a.get(0, value, head, slot, i),
                        b.get(0, value, head, slot, i),
                    );
                    assert!(
                        (x - y).abs() <= 1e-5 * (1.0 + y.abs()),
                        "{what}: value={value} head {head} slot {slot} [{i}]: {x} vs {y}"
                    );
                }
            }
        }
    }
}

/// Prefills the chunk (`q`, `k`, `v` rows) into layer 0 of `cache` with a fresh scratch and
/// returns its output.
fn prefill_out(
    exec: &Exec,
    h: HeadConfig,
    cache: &mut KvCache,
    q: &[f32],
    k: &[f32],
    v: &[f32],
) -> Vec<f32> {
    let mut out = vec![0.0; q.len()];
    prefill_attention(
        exec,
        &h,
        cache,
        0,
        q,
        k,
        v,
        &mut out,
        &mut PrefillScratch::new(),
    )
    .unwrap();
    out
}

/// Appends the chunk's tokens (`q`, `k`, `v` rows) to `cache` one at a time and decodes each:
/// the outputs a prefill of the same chunk must match.
fn decode_each(
    h: HeadConfig,
    cache: &mut KvCache,
    q: &[f32],
    k: &[f32],
    v: &[f32],
) -> Vec<Vec<f32>> {
    let (qw, kw) = (h.heads * h.head_dim, h.kv_heads * h.head_dim);
    let exec = Exec::sequential();
    let mut scratch = DecodeScratch::new(h, 1).unwrap();
    (0..q.len() / qw)
        .map(|i| {
            cache
                .append(0, &k[i * kw..(i + 1) * kw], &v[i * kw..(i + 1) * kw])
                .unwrap();
            let mut o = vec![0.0; qw];
            decode_attention(
                &exec,
                &h,
                cache,
                0,
                &q[i * qw..(i + 1) * qw],
                &mut o,
                &mut scratch,
                DecodeOptions::default(),
            )
            .unwrap();
            o
        })
        .collect()
}

#[test]
fn prefill_attention_direct_with_bf16_cache() {
    // prefill_attention called directly on a bf16 cache agrees with decode_attention on it:
    // a short chunk into an empty cache, and a chunk of several tiles after history that has
    // already wrapped a ring with sinks.
    let h = heads(4, 2, 36);
    let (qw, kw) = (h.heads * h.head_dim, h.kv_heads * h.head_dim);
    let exec = Exec::sequential();
    for (capacity, sinks, history, t) in [(32, 0, 0, 10), (20, 3, 37, 130)] {
        let mut r = rng(80 + history as u64);
        let hk = random_vec(&mut r, history * kw);
        let hv = random_vec(&mut r, history * kw);
        let q = random_vec(&mut r, t * qw);
        let k = random_vec(&mut r, t * kw);
        let v = random_vec(&mut r, t * kw);
        let mut pc = cache_for(h, capacity, sinks, KvDtype::Bf16);
        let mut dc = cache_for(h, capacity, sinks, KvDtype::Bf16);
        for i in 0..history {
            let (kr, vr) = (&hk[i * kw..(i + 1) * kw], &hv[i * kw..(i + 1) * kw]);
            pc.append(0, kr, vr).unwrap();
            dc.append(0, kr, vr).unwrap();
        }
        let out = prefill_out(&exec, h, &mut pc, &q, &k, &v);
        for (i, o) in decode_each(h, &mut dc, &q, &k, &v).iter().enumerate() {
            // Prefill attends to the chunk's rows rounded to bf16, exactly what decode reads
            // back from the cache, so the two agree to f32 rounding.
            let e = rel_err32(&out[i * qw..(i + 1) * qw], o);
            assert!(
                e < 1e-5,
                "W={capacity} S={sinks} history {history}: token {i}: {e:.2e}"
            );
        }
        assert_eq!(pc.positions(), dc.positions());
    }
}

/// Prefill goes over the keys in blocks of 512 with a running softmax per query row: runs of
/// cached keys longer than a block (f32 read in place, bf16 widened), a ring that has wrapped
/// (two runs of slots) with sinks, a chunk longer than the window, and 1 and 2 threads. Each
/// token's output agrees with decoding it after the same cache to f32 rounding.
#[test]
fn prefill_after_long_history_in_key_blocks() {
    for (h, dtype) in [
        (heads(3, 1, 64), KvDtype::F32),
        (heads(4, 2, 36), KvDtype::F32),
        (heads(4, 2, 36), KvDtype::Bf16),
    ] {
        let (qw, kw) = (h.heads * h.head_dim, h.kv_heads * h.head_dim);
        for (capacity, sinks, history, t) in
            [(1300, 0, 1100, 70), (1200, 5, 2000, 150), (600, 0, 0, 900)]
        {
            let mut r = rng(90 + history as u64 + t as u64);
            let hk = random_vec(&mut r, history * kw);
            let hv = random_vec(&mut r, history * kw);
            let q = random_vec(&mut r, t * qw);
            let k = random_vec(&mut r, t * kw);
            let v = random_vec(&mut r, t * kw);
            let with_history = || {
                let mut c = cache_for(h, capacity, sinks, dtype);
                for i in 0..history {
                    c.append(0, &hk[i * kw..(i + 1) * kw], &hv[i * kw..(i + 1) * kw])
                        .unwrap();
                }
                c
            };
            let mut dc = with_history();
            let mut outs = Vec::new();
            for exec in [Exec::sequential(), Exec::new()] {
                let mut c = with_history();
                outs.push(prefill_out(&exec, h, &mut c, &q, &k, &v));
                assert_eq!(c.next_position(), history + t);
            }
            for (i, o) in decode_each(h, &mut dc, &q, &k, &v).iter().enumerate() {
                for out in &outs {
                    let e = rel_err32(&out[i * qw..(i + 1) * qw], o);
                    assert!(
                        e < 1e-5,
                        "{h:?} {dtype:?} W={capacity} S={sinks} history {history}: token {i}: {e:.2e}"
                    );
                }
            }
        }
    }
}

#[test]
fn gqa_equals_mha_with_repeated_kv_heads() {
    let (d_model, tokens) = (32, 40);
    let xs = random_vec(&mut rng(5), tokens * d_model);
    for (h, rope) in [
        (heads(8, 2, 64), true),
        (heads(6, 3, 20), false),
        (heads(4, 1, 80), true),
    ] {
        let (cfg, w) = layer_with(500, d_model, h, rope, true);
        let g = h.group();
        let d = h.head_dim;
        // MHA weights: column block `head` of W_K / W_V is the GQA block `head / g`.
        let repeat = |src: &[f32]| -> Vec<f32> {
            let mut out = Vec::with_capacity(d_model * h.heads * d);
            for r in 0..d_model {
                for head in 0..h.heads {
                    let base = r * h.kv_heads * d + (head / g) * d;
                    out.extend_from_slice(&src[base..base + d]);
                }
            }
            out
        };
        let mha_cfg = LayerConfig {
            heads: heads(h.heads, h.heads, d),
            ..cfg
        };
        let mha_w = LayerWeights {
            w_k: repeat(&w.w_k),
            w_v: repeat(&w.w_v),
            ..w.clone()
        };
        let gqa = AttentionLayer::new(cfg, w).unwrap();
        let mha = AttentionLayer::new(mha_cfg, mha_w).unwrap();
        for capacity in [tokens, 12] {
            for case in exec_cases() {
                let mut c1 = cache_for(gqa.config().heads, capacity, 0, KvDtype::F32);
                let mut c2 = cache_for(mha.config().heads, capacity, 0, KvDtype::F32);
                let a = decode_tokens(&case, &gqa, &mut c1, &xs);
                let b = decode_tokens(&case, &mha, &mut c2, &xs);
                for (t, (x, y)) in a.iter().zip(&b).enumerate() {
                    let e = rel_err32(x, y);
                    assert!(e <= 1e-6, "{h:?} W={capacity} {case} token {t}: {e:.2e}");
                }
            }
        }
        // The GQA cache is `group` times smaller.
        assert_eq!(
            cache_for(mha_cfg.heads, 64, 0, KvDtype::F32).bytes(),
            g * cache_for(h, 64, 0, KvDtype::F32).bytes()
        );
    }
}

#[test]
fn multi_head_equals_single_heads_then_output_projection() {
    let (d_model, tokens) = (32, 36);
    let xs = random_vec(&mut rng(6), tokens * d_model);
    for (h, rope, capacity) in [
        (heads(4, 4, 20), false, tokens),
        (heads(8, 2, 64), true, tokens),
        (heads(4, 1, 36), true, 10),
    ] {
        let (cfg, w) = layer_with(600, d_model, h, rope, true);
        let (d, g) = (h.head_dim, h.group());
        let w_o = w.w_o.clone().unwrap();
        let full = AttentionLayer::new(cfg, w.clone()).unwrap();
        // Columns `block·d .. (block+1)·d` of a `d_model × (blocks·d)` matrix.
        let columns = |src: &[f32], blocks: usize, block: usize| -> Vec<f32> {
            (0..d_model)
                .flat_map(|r| {
                    let base = r * blocks * d + block * d;
                    src[base..base + d].to_vec()
                })
                .collect()
        };
        let singles: Vec<AttentionLayer> = (0..h.heads)
            .map(|head| {
                AttentionLayer::new(
                    LayerConfig {
                        heads: heads(1, 1, d),
                        ..cfg
                    },
                    LayerWeights {
                        w_q: columns(&w.w_q, h.heads, head),
                        w_k: columns(&w.w_k, h.kv_heads, head / g),
                        w_v: columns(&w.w_v, h.kv_heads, head / g),
                        w_o: None,
                    },
                )
                .unwrap()
            })
            .collect();
        for case in exec_cases() {
            let mut cache = cache_for(h, capacity, 0, KvDtype::F32);
            let got = decode_tokens(&case, &full, &mut cache, &xs);
            let per_head: Vec<Vec<Vec<f32>>> = singles
                .iter()
                .map(|l| {
                    let mut c = cache_for(heads(1, 1, d), capacity, 0, KvDtype::F32);
                    decode_tokens(&case, l, &mut c, &xs)
                })
                .collect();
            for t in 0..tokens {
                let concat: Vec<f64> = per_head
                    .iter()
                    .flat_map(|outs| outs[t].iter().map(|&x| x as f64))
                    .collect();
                let want: Vec<f64> = (0..d_model)
                    .map(|j| {
                        concat
                            .iter()
                            .enumerate()
                            .map(|(i, c)| c * w_o[i * d_model + j] as f64)
                            .sum()
                    })
                    .collect();
                let e = rel_err(&got[t], &want);
                assert!(e <= TOL, "{h:?} W={capacity} {case} token {t}: {e:.2e}");
            }
        }
    }
}

#[test]
fn bf16_kv_stays_close_to_f32_kv() {
    // Measured on this test's data: the largest error is about 2.3e-3 × max|v| (bf16 keeps 8
    // significant bits: each stored value is within 2⁻⁹ relative, and key rounding moves the
    // scores by a few 1e-3); the bound asserted is 2e-2 × max|v|.
    let (d_model, tokens) = (32, 64);
    let xs = random_vec(&mut rng(7), tokens * d_model);
    let mut worst = 0.0f64;
    for (h, rope, capacity, sinks) in [
        (heads(4, 4, 64), false, tokens, 0),
        (heads(8, 2, 128), true, tokens, 0),
        (heads(4, 1, 20), true, 24, 2),
    ] {
        let (cfg, w) = layer_with(700, d_model, h, rope, false);
        let layer = AttentionLayer::new(cfg, w.clone()).unwrap();
        // max |v| over every token's value vector, in f64.
        let max_v = xs
            .chunks_exact(d_model)
            .flat_map(|x| {
                let n = h.kv_heads * h.head_dim;
                (0..n)
                    .map(|j| {
                        x.iter()
                            .enumerate()
                            .map(|(i, &xi)| xi as f64 * w.w_v[i * n + j] as f64)
                            .sum::<f64>()
                            .abs()
                    })
                    .collect::<Vec<_>>()
            })
            .fold(0.0f64, f64::max);
        for case in exec_cases() {
            let mut c32 = cache_for(h, capacity, sinks, KvDtype::F32);
            let mut c16 = cache_for(h, capacity, sinks, KvDtype::Bf16);
            let a = decode_tokens(&case, &layer, &mut c32, &xs);
            let b = decode_tokens(&case, &layer, &mut c16, &xs);
            for (t, (x, y)) in a.iter().zip(&b).enumerate() {
                let diff = x
                    .iter()
                    .zip(y)
                    .fold(0.0f64, |m, (p, q)| m.max((p - q).abs() as f64));
                let ratio = diff / max_v;
                assert!(
                    ratio <= 2e-2,
                    "{h:?} {case} token {t}: {ratio:.2e} × max|v|"
                );
                worst = worst.max(ratio);
            }
        }
        // And through prefill.
        let mut c16 = cache_for(h, capacity, sinks, KvDtype::Bf16);
        let mut out = vec![0.0; tokens * layer.out_dim()];
        let exec = Exec::sequential();
        let mut s = LayerScratch::new(&cfg, 1).unwrap();
        layer
            .prefill(&exec, &mut c16, 0, &xs, &mut out, &mut s)
            .unwrap();
        let want = layer_f64(&cfg, &w, &xs, capacity, sinks);
        for (t, o) in out.chunks_exact(layer.out_dim()).enumerate() {
            let diff = o
                .iter()
                .zip(&want[t])
                .fold(0.0f64, |m, (p, q)| m.max((*p as f64 - q).abs()));
            assert!(
                diff / max_v <= 2e-2,
                "{h:?} prefill token {t}: {:.2e}",
                diff / max_v
            );
        }
    }
    println!("bf16 KV vs f32 KV: max abs error = {worst:.2e} × max|v| (bound asserted: 2e-2)");
}

#[test]
fn invalid_head_and_cache_configurations() {
    let bad = heads(6, 4, 8);
    assert!(matches!(bad.validate(), Err(DecodeError::InvalidConfig(m)) if m.contains("multiple")));
    assert!(matches!(
        DecodeScratch::new(bad, 1),
        Err(DecodeError::InvalidConfig(_))
    ));
    // Every constructor reports a bad config as an error (none divides by zero first), and
    // the public split policy stays defined for one.
    for h in [
        heads(0, 1, 8),
        heads(2, 0, 8),
        heads(2, 1, 0),
        heads(usize::MAX / 2 + 1, 1, 2),
        // Products that fit usize but no allocation: 2^62 floats per query row.
        heads(1, 1, 1 << 62),
        heads(1 << 31, 1 << 31, 1 << 31),
    ] {
        let invalid = |r: Result<(), DecodeError>| matches!(r, Err(DecodeError::InvalidConfig(_)));
        assert!(invalid(h.validate()), "{h:?}");
        assert!(invalid(DecodeScratch::new(h, 1).map(drop)), "{h:?}");
        assert!(invalid(DecodeScratch::for_threads(h, 4).map(drop)), "{h:?}");
        let (cfg, _) = layer_with(1, 8, heads(4, 4, 8), false, false);
        assert!(
            invalid(LayerScratch::new(&LayerConfig { heads: h, ..cfg }, 4).map(drop)),
            "{h:?}"
        );
        assert!(choose_splits(&h, 4096, 4, 8) >= 1);
    }
    assert!(matches!(
        DecodeScratch::new(heads(4, 2, 8), usize::MAX),
        Err(DecodeError::InvalidConfig(m)) if m.contains("max_splits")
    ));
    assert!(DecodeScratch::new(heads(4, 2, 8), MAX_SPLITS + 1).is_err());
    let most = DecodeScratch::for_threads(heads(4, 2, 8), usize::MAX).unwrap();
    assert_eq!(most.max_splits(), MAX_SPLITS);
    // Weight sizes whose product overflows are an error, not a wrapped length that empty
    // weights match.
    let huge = LayerConfig {
        d_model: 1 << 32,
        heads: heads(1, 1, 1 << 32),
        rope: None,
    };
    let empty = LayerWeights {
        w_q: vec![],
        w_k: vec![],
        w_v: vec![],
        w_o: None,
    };
    assert!(matches!(
        AttentionLayer::new(huge, empty),
        Err(DecodeError::InvalidConfig(m)) if m.contains("overflows")
    ));
    let (cfg, w) = layer_with(1, 8, heads(4, 4, 8), false, false);
    assert!(matches!(
        AttentionLayer::new(LayerConfig { heads: bad, ..cfg }, w.clone()),
        Err(DecodeError::InvalidConfig(_))
    ));
    assert!(matches!(
        LayerScratch::new(&LayerConfig { heads: bad, ..cfg }, 1),
        Err(DecodeError::InvalidConfig(_))
    ));
    assert!(matches!(
        AttentionLayer::new(LayerConfig { d_model: 0, ..cfg }, w.clone()),
        Err(DecodeError::InvalidConfig(_))
    ));
    // Weight lengths.
    let short = LayerWeights {
        w_k: w.w_k[1..].to_vec(),
        ..w.clone()
    };
    assert!(matches!(
        AttentionLayer::new(cfg, short),
        Err(DecodeError::ShapeMismatch { .. })
    ));
    let bad_o = LayerWeights {
        w_o: Some(vec![0.0; 3]),
        ..w.clone()
    };
    assert!(matches!(
        AttentionLayer::new(cfg, bad_o),
        Err(DecodeError::ShapeMismatch {
            expected: 256,
            got: 3,
            ..
        })
    ));
    // RoPE needs an even head size and a base above 1.
    let (odd_cfg, odd_w) = layer_with(2, 8, heads(2, 2, 9), true, false);
    assert!(matches!(
        AttentionLayer::new(odd_cfg, odd_w),
        Err(DecodeError::InvalidConfig(m)) if m.contains("even")
    ));
    assert!(matches!(
        AttentionLayer::new(
            LayerConfig {
                rope: Some(Rope { base: 1.0 }),
                ..cfg
            },
            w
        ),
        Err(DecodeError::InvalidConfig(_))
    ));
    // Zero capacity and too many sinks.
    for (capacity, sinks) in [(0, 0), (4, 4), (4, 5)] {
        assert!(matches!(
            KvCache::new(CacheConfig {
                layers: 1,
                kv_heads: 1,
                head_dim: 8,
                capacity,
                sinks,
                dtype: KvDtype::F32,
            }),
            Err(DecodeError::InvalidConfig(_))
        ));
    }
}

#[test]
fn decode_attention_rejects_bad_arguments() {
    let h = heads(4, 2, 16);
    let exec = Exec::sequential();
    let mut cache = cache_for(h, 8, 0, KvDtype::F32);
    let row = h.kv_heads * h.head_dim;
    cache.append(0, &vec![0.5; row], &vec![0.25; row]).unwrap();
    let q = vec![0.1; h.heads * h.head_dim];
    let mut out = vec![7.0; h.heads * h.head_dim];
    let mut scratch = DecodeScratch::new(h, 8).unwrap();
    let opts = DecodeOptions::default();
    let mut run = |hc: &HeadConfig,
                   cache: &KvCache,
                   layer: usize,
                   q: &[f32],
                   out: &mut [f32],
                   opts: DecodeOptions| {
        decode_attention(&exec, hc, cache, layer, q, out, &mut scratch, opts)
    };

    // Wrong q and out lengths.
    assert_eq!(
        run(&h, &cache, 0, &q[1..], &mut out, opts),
        Err(DecodeError::ShapeMismatch {
            what: "q length vs heads * head_dim",
            expected: 64,
            got: 63
        })
    );
    assert!(matches!(
        run(&h, &cache, 0, &q, &mut out[..10], opts),
        Err(DecodeError::ShapeMismatch {
            expected: 64,
            got: 10,
            ..
        })
    ));
    // Layer out of range.
    assert_eq!(
        run(&h, &cache, 1, &q, &mut out, opts),
        Err(DecodeError::LayerOutOfRange {
            layer: 1,
            layers: 1
        })
    );
    // Split counts outside 1..=max_splits.
    for s in [0, 9] {
        assert!(matches!(
            run(&h, &cache, 0, &q, &mut out, DecodeOptions { splits: Some(s) }),
            Err(DecodeError::InvalidConfig(m)) if m.contains("splits")
        ));
    }
    // Heads not divisible by KV heads.
    assert!(matches!(
        run(&heads(3, 2, 16), &cache, 0, &q[..48], &mut out[..48], opts),
        Err(DecodeError::InvalidConfig(_))
    ));
    // A cache of another head size or KV-head count.
    let other_dim = cache_for(heads(4, 2, 8), 8, 0, KvDtype::F32);
    assert!(matches!(
        run(&h, &other_dim, 0, &q, &mut out, opts),
        Err(DecodeError::InvalidConfig(m)) if m.contains("cache")
    ));
    let other_kv = cache_for(heads(4, 4, 16), 8, 0, KvDtype::F32);
    assert!(matches!(
        run(&h, &other_kv, 0, &q, &mut out, opts),
        Err(DecodeError::InvalidConfig(_))
    ));
    // Nothing was written to the output by any refused call.
    assert!(out.iter().all(|&x| x == 7.0));
    // A scratch sized for another head configuration.
    let mut wrong = DecodeScratch::new(heads(2, 2, 16), 8).unwrap();
    assert!(matches!(
        decode_attention(&exec, &h, &cache, 0, &q, &mut out, &mut wrong, opts),
        Err(DecodeError::InvalidConfig(m)) if m.contains("scratch")
    ));
    // A scratch asked for 0 splits supports exactly 1.
    let mut one = DecodeScratch::new(h, 0).unwrap();
    assert_eq!(one.max_splits(), 1);
    decode_attention(
        &exec,
        &h,
        &cache,
        0,
        &q,
        &mut out,
        &mut one,
        DecodeOptions { splits: Some(1) },
    )
    .unwrap();
    assert!(
        decode_attention(
            &exec,
            &h,
            &cache,
            0,
            &q,
            &mut out,
            &mut one,
            DecodeOptions { splits: Some(2) }
        )
        .is_err()
    );
    // One key: the output is its value exactly.
    assert!(out.iter().all(|&x| x == 0.25), "{out:?}");
}

#[test]
fn prefill_and_layer_reject_bad_arguments() {
    let h = heads(4, 2, 16);
    let exec = Exec::sequential();
    let (qw, kw) = (h.heads * h.head_dim, h.kv_heads * h.head_dim);
    let mut cache = cache_for(h, 8, 0, KvDtype::F32);
    let mut ps = PrefillScratch::new();
    let (q, k, v) = (vec![0.1; 3 * qw], vec![0.2; 3 * kw], vec![0.3; 3 * kw]);
    let mut out = vec![0.0; 3 * qw];
    let mut pre =
        |cache: &mut KvCache, hc: &HeadConfig, q: &[f32], k: &[f32], v: &[f32], out: &mut [f32]| {
            prefill_attention(&exec, hc, cache, 0, q, k, v, out, &mut ps)
        };
    assert!(matches!(
        pre(&mut cache, &h, &q[1..], &k, &v, &mut out),
        Err(DecodeError::ShapeMismatch { .. })
    ));
    assert!(matches!(
        pre(&mut cache, &h, &q, &k[kw..], &v, &mut out),
        Err(DecodeError::ShapeMismatch { .. })
    ));
    assert!(matches!(
        pre(&mut cache, &h, &q, &k, &v[1..], &mut out),
        Err(DecodeError::ShapeMismatch { .. })
    ));
    assert!(matches!(
        pre(&mut cache, &h, &q, &k, &v, &mut out[1..]),
        Err(DecodeError::ShapeMismatch { .. })
    ));
    assert!(matches!(
        pre(&mut cache, &heads(3, 2, 16), &q, &k, &v, &mut out),
        Err(DecodeError::InvalidConfig(_))
    ));
    let mut other = cache_for(heads(4, 2, 32), 8, 0, KvDtype::F32);
    assert!(matches!(
        pre(&mut other, &h, &q, &k, &v, &mut out),
        Err(DecodeError::InvalidConfig(_))
    ));
    assert_eq!(cache.next_position(), 0, "refused prefill must not append");
    assert_eq!(other.next_position(), 0);

    // Through the layer.
    let d_model = 12;
    let (cfg, w) = layer_with(9, d_model, h, true, true);
    let layer = AttentionLayer::new(cfg, w).unwrap();
    let mut s = LayerScratch::new(&cfg, 1).unwrap();
    let x = vec![0.5; d_model];
    let mut o = vec![3.0; d_model];
    assert!(matches!(
        layer.decode(&exec, &mut cache, 0, &x[1..], &mut o, &mut s),
        Err(DecodeError::ShapeMismatch {
            what: "x length vs d_model",
            ..
        })
    ));
    assert!(matches!(
        layer.decode(&exec, &mut cache, 0, &x, &mut o[1..], &mut s),
        Err(DecodeError::ShapeMismatch { .. })
    ));
    assert!(matches!(
        layer.decode(&exec, &mut other, 0, &x, &mut o, &mut s),
        Err(DecodeError::InvalidConfig(_))
    ));
    assert!(matches!(
        layer.decode(&exec, &mut cache, 3, &x, &mut o, &mut s),
        Err(DecodeError::LayerOutOfRange {
            layer: 3,
            layers: 1
        })
    ));
    let xs = vec![0.5; 3 * d_model];
    let mut os = vec![0.0; 3 * d_model];
    assert!(matches!(
        layer.prefill(&exec, &mut cache, 0, &xs[1..], &mut os, &mut s),
        Err(DecodeError::ShapeMismatch { .. })
    ));
    assert!(matches!(
        layer.prefill(&exec, &mut cache, 0, &xs, &mut os[1..], &mut s),
        Err(DecodeError::ShapeMismatch { .. })
    ));
    assert!(matches!(
        layer.prefill(&exec, &mut other, 0, &xs, &mut os, &mut s),
        Err(DecodeError::InvalidConfig(_))
    ));
    // Nothing was appended or written.
    assert_eq!(cache.next_position(), 0);
    assert!(o.iter().all(|&x| x == 3.0));
    // Both storage types are accepted everywhere: there is no dtype for a caller to mismatch.
    for dtype in [KvDtype::F32, KvDtype::Bf16] {
        let mut c = cache_for(h, 8, 0, dtype);
        layer
            .prefill(&exec, &mut c, 0, &xs, &mut os, &mut s)
            .unwrap();
        layer.decode(&exec, &mut c, 0, &x, &mut o, &mut s).unwrap();
        assert_eq!(c.next_position(), 4);
    }
}

#[test]
fn prefill_and_decode_interleave_with_one_scratch() {
    // Chunks of every size, the empty one included, between single decode steps, sharing one
    // scratch (prefill resizes its buffers to the chunk; decode must still see one token).
    let d_model = 24;
    let plan: [(bool, usize); 9] = [
        (true, 0),
        (false, 1),
        (true, 5),
        (false, 1),
        (true, 0),
        (false, 1),
        (true, 1),
        (true, 13),
        (false, 1),
    ];
    let total: usize = plan.iter().map(|p| p.1).sum();
    let xs = random_vec(&mut rng(90), total * d_model);
    for (h, rope, capacity, sinks) in [
        (heads(4, 2, 20), true, 64, 0),
        (heads(2, 1, 36), false, 6, 1),
    ] {
        let (cfg, w) = layer_with(91, d_model, h, rope, true);
        let want = layer_f64(&cfg, &w, &xs, capacity, sinks);
        let layer = AttentionLayer::new(cfg, w).unwrap();
        for case in exec_cases() {
            let got = case.run(|| {
                let mut cache = cache_for(h, capacity, sinks, KvDtype::F32);
                let mut s = LayerScratch::new(&cfg, case.threads).unwrap();
                let mut got = Vec::new();
                let mut at = 0;
                for &(prefill, t) in &plan {
                    let x = &xs[at * d_model..(at + t) * d_model];
                    let mut out = vec![f32::NAN; t * d_model];
                    if prefill {
                        layer
                            .prefill(&case.exec, &mut cache, 0, x, &mut out, &mut s)
                            .unwrap();
                    } else {
                        layer
                            .decode(&case.exec, &mut cache, 0, x, &mut out, &mut s)
                            .unwrap();
                    }
                    got.extend(out.chunks_exact(d_model).map(|o| o.to_vec()));
                    at += t;
                }
                assert_eq!(cache.next_position(), total);
                got
            });
            check_tokens(&format!("{h:?} W={capacity} {case}"), &got, &want, TOL);
        }
    }
}

/// A decode that fails (scratch sized for another head shape) leaves the cache untouched.
#[test]
fn failed_decode_leaves_cache_unchanged() {
    let d_model = 16;
    let (cfg, w) = layer_with(9, d_model, heads(4, 2, 8), false, true);
    let layer = AttentionLayer::new(cfg, w).unwrap();
    let other = LayerConfig {
        heads: heads(4, 4, 8),
        ..cfg
    };
    let mut wrong = LayerScratch::new(&other, 1).unwrap();
    let mut cache = cache_for(heads(4, 2, 8), 8, 0, KvDtype::F32);
    let x = vec![0.5f32; d_model];
    let mut out = vec![0.0f32; d_model];
    let exec = kernels::Exec::sequential();
    assert!(
        layer
            .decode(&exec, &mut cache, 0, &x, &mut out, &mut wrong)
            .is_err()
    );
    assert_eq!(cache.next_position(), 0);
}

/// A layer built with `new_packed` (weights packed once for the case's ISA path) matches the
/// f64 reference at every decode step and through a prefill, like the row-major layer; it
/// reports its path; a call on another path is an error that leaves the cache as it was.
#[test]
fn packed_weights_layer_matches_reference() {
    let (d_model, tokens) = (48, 40);
    let xs = random_vec(&mut rng(31), tokens * d_model);
    for (si, &(h, kv, name)) in SHAPES.iter().enumerate() {
        let (cfg, w) = layer_with(300 + si as u64, d_model, heads(h, kv, 40), si != 2, si != 1);
        let want = layer_f64(&cfg, &w, &xs, tokens, 0);
        assert_eq!(
            AttentionLayer::new(cfg, w.clone()).unwrap().packed_for(),
            None
        );
        for case in exec_cases() {
            let layer = AttentionLayer::new_packed(&case.exec, cfg, w.clone()).unwrap();
            assert_eq!(layer.packed_for(), Some(case.isa()));
            let what = format!("{name} packed {case}");
            let mut cache = cache_for(cfg.heads, tokens, 0, KvDtype::F32);
            let got = decode_tokens(&case, &layer, &mut cache, &xs);
            check_tokens(&what, &got, &want, TOL);
            // A prefill of the first 30 tokens, then decode of the rest.
            let mut cache = cache_for(cfg.heads, tokens, 0, KvDtype::F32);
            let split = 30;
            let out_dim = layer.out_dim();
            let mut out = vec![f32::NAN; split * out_dim];
            case.run(|| {
                let mut s = LayerScratch::new(&cfg, case.threads).unwrap();
                layer
                    .prefill(
                        &case.exec,
                        &mut cache,
                        0,
                        &xs[..split * d_model],
                        &mut out,
                        &mut s,
                    )
                    .unwrap()
            });
            let prefilled: Vec<Vec<f32>> = out.chunks(out_dim).map(|c| c.to_vec()).collect();
            check_tokens(&format!("{what} prefill"), &prefilled, &want[..split], TOL);
            let rest = decode_tokens(&case, &layer, &mut cache, &xs[split * d_model..]);
            check_tokens(
                &format!("{what} decode after prefill"),
                &rest,
                &want[split..],
                TOL,
            );
        }
    }
    // Another path than the packing's: refused before the cache is touched.
    let isas = kernels::Isa::available();
    if isas.len() < 2 {
        return;
    }
    let (cfg, w) = layer_with(310, d_model, heads(4, 2, 16), true, true);
    let packed_on = Exec::new().with_isa(isas[0]).unwrap();
    let other = Exec::new().with_isa(isas[1]).unwrap();
    let layer = AttentionLayer::new_packed(&packed_on, cfg, w).unwrap();
    let mut cache = cache_for(cfg.heads, 8, 0, KvDtype::F32);
    let mut s = LayerScratch::new(&cfg, 1).unwrap();
    let mut out = vec![0.0; layer.out_dim()];
    let err = layer
        .decode(&other, &mut cache, 0, &xs[..d_model], &mut out, &mut s)
        .unwrap_err();
    assert!(
        matches!(
            err,
            DecodeError::Kernel(kernels::KernelError::PackedForOtherIsa { .. })
        ),
        "{err}"
    );
    let mut out2 = vec![0.0; 2 * layer.out_dim()];
    assert!(
        layer
            .prefill(&other, &mut cache, 0, &xs[..2 * d_model], &mut out2, &mut s)
            .is_err()
    );
    assert_eq!(
        cache.layer_position(0).unwrap(),
        0,
        "cache written on error"
    );
    // An empty chunk is legal for a packed layer too.
    let (cfg, w) = layer_with(311, d_model, heads(4, 2, 16), true, true);
    let layer = AttentionLayer::new_packed(&packed_on, cfg, w).unwrap();
    layer
        .prefill(&packed_on, &mut cache, 0, &[], &mut [], &mut s)
        .unwrap();
    assert_eq!(cache.layer_position(0).unwrap(), 0);
}
