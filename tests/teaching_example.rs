//! The computation of the `cat_sat_on_mat` example (decode/examples), run here through the
//! same inputs and steps (`decode::teaching`) and checked against numbers worked out by hand
//! and against an f64 recomputation: Q, K, V of every word, the scores of "mat", the softmax weights (unscaled and
//! scaled by 1/√d), the output, and the KV-cache decode of "mat" against recomputation.

mod common;

use common::exec_cases;
use decode::reference::{attend_f64, layer_f64};
use decode::teaching::{
    D_MODEL, HEAD_DIM as D, SENTENCE, W_K, W_Q, W_V, attend, sentence_embeddings,
};
use decode::{AttentionLayer, CacheConfig, Exec, KvCache, KvDtype, LayerScratch};
use kernels::GemmWorkspace;

/// Worked by hand (exact in decimal): q, k, v of "the", "cat", "sat", "on", "the", "mat".
const Q_HAND: [[f64; 3]; 6] = [
    [0.52, 0.29, 0.37],
    [0.36, 0.40, 0.46],
    [0.60, 0.37, 0.39],
    [0.50, 0.54, 0.56],
    [0.52, 0.29, 0.37],
    [0.35, 0.57, 0.51],
];
const K_HAND: [[f64; 3]; 6] = [
    [0.37, 0.52, 0.40],
    [0.46, 0.36, 0.43],
    [0.39, 0.60, 0.51],
    [0.56, 0.50, 0.63],
    [0.37, 0.52, 0.40],
    [0.51, 0.35, 0.60],
];
const V_HAND: [[f64; 3]; 6] = [
    [0.35, 0.37, 0.52],
    [0.42, 0.46, 0.36],
    [0.45, 0.39, 0.60],
    [0.64, 0.56, 0.50],
    [0.35, 0.37, 0.52],
    [0.61, 0.51, 0.35],
];
/// q(mat)·k(word), exact in decimal: e.g. q(mat)·k(the) = 0.35·0.37 + 0.57·0.52 + 0.51·0.40.
const SCORES_HAND: [f64; 6] = [0.6299, 0.5855, 0.7386, 0.8023, 0.6299, 0.6840];
/// softmax(scores / √3), rounded to 6 decimals.
const WEIGHTS_SCALED: [f64; 6] = [0.161921, 0.157823, 0.172409, 0.178867, 0.161921, 0.167059];
/// softmax(scores), rounded to 6 decimals.
const WEIGHTS_PLAIN: [f64; 6] = [0.158350, 0.151473, 0.176533, 0.188144, 0.158350, 0.167152];
/// Σ weight·v with the scaled weights, rounded to 6 decimals.
const OUTPUT_SCALED: [f64; 3] = [0.473595, 0.445025, 0.476564];

fn inputs() -> Vec<f32> {
    sentence_embeddings()
}

fn project(exec: &Exec, x: &[f32], w: &[f32]) -> Vec<f32> {
    decode::teaching::project(exec, x, w, &mut GemmWorkspace::new()).unwrap()
}

/// f64 softmax.
fn softmax(x: &[f64]) -> Vec<f64> {
    let m = x.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = x.iter().map(|a| (a - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|a| a / s).collect()
}

fn assert_close(what: &str, got: &[f32], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (*g as f64 - w).abs() <= tol,
            "{what}[{i}]: got {g}, expected {w} (±{tol:e})"
        );
    }
}

#[test]
fn projections_match_hand_computation() {
    let x = inputs();
    for case in exec_cases() {
        let (q, k, v) = case.run(|| {
            (
                project(&case.exec, &x, &W_Q),
                project(&case.exec, &x, &W_K),
                project(&case.exec, &x, &W_V),
            )
        });
        for (name, got, hand) in [("Q", &q, &Q_HAND), ("K", &k, &K_HAND), ("V", &v, &V_HAND)] {
            for (i, row) in hand.iter().enumerate() {
                let what = format!("{name}({}) {case}", SENTENCE[i]);
                assert_close(&what, &got[i * D..(i + 1) * D], row, 1e-6);
            }
        }
        // The two "the"s are indistinguishable: no positional information in this example.
        assert_eq!(q[..D], q[4 * D..5 * D]);
        assert_eq!(k[..D], k[4 * D..5 * D]);
    }
}

#[test]
fn scores_weights_and_output_of_mat() {
    let x = inputs();
    let q_mat: Vec<f64> = Q_HAND[5].to_vec();
    let keys: Vec<Vec<f64>> = K_HAND.iter().map(|r| r.to_vec()).collect();
    let values: Vec<Vec<f64>> = V_HAND.iter().map(|r| r.to_vec()).collect();
    let scale = 1.0 / 3f64.sqrt();

    // The hand-written constants agree with an f64 recomputation from the hand-worked rows.
    for (i, k) in keys.iter().enumerate() {
        let s: f64 = q_mat.iter().zip(k).map(|(a, b)| a * b).sum();
        assert!((s - SCORES_HAND[i]).abs() < 1e-12, "score {i}: {s}");
    }
    let w_plain = softmax(&SCORES_HAND);
    let w_scaled = softmax(&SCORES_HAND.map(|s| s * scale));
    for i in 0..6 {
        assert!((w_plain[i] - WEIGHTS_PLAIN[i]).abs() < 6e-7);
        assert!((w_scaled[i] - WEIGHTS_SCALED[i]).abs() < 6e-7);
    }
    let out_scaled = attend_f64(&q_mat, &keys, &values, scale);
    let out_plain = attend_f64(&q_mat, &keys, &values, 1.0);
    assert_close(
        "f64 output",
        &out_scaled.iter().map(|&x| x as f32).collect::<Vec<_>>(),
        &OUTPUT_SCALED,
        1e-6,
    );

    for case in exec_cases() {
        let (plain, scaled) = case.run(|| {
            let (q, k, v) = (
                project(&case.exec, &x, &W_Q),
                project(&case.exec, &x, &W_K),
                project(&case.exec, &x, &W_V),
            );
            let q_mat = &q[5 * D..];
            (
                attend(&case.exec, q_mat, &k, &v, 1.0).unwrap(),
                attend(&case.exec, q_mat, &k, &v, scale as f32).unwrap(),
            )
        });
        let (scores, weights, output) = (&plain.scores, &plain.weights, &plain.output);
        assert_close(&format!("scores {case}"), scores, &SCORES_HAND, 1e-6);
        assert_close(&format!("weights {case}"), weights, &w_plain, 1e-6);
        assert_close(&format!("output {case}"), output, &out_plain, 1e-6);

        let (scores, weights, output) = (&scaled.scores, &scaled.weights, &scaled.output);
        let want_scores = SCORES_HAND.map(|s| s * scale);
        assert_close(&format!("scaled scores {case}"), scores, &want_scores, 1e-6);
        assert_close(&format!("scaled weights {case}"), weights, &w_scaled, 1e-6);
        assert_close(
            &format!("scaled weights {case}"),
            weights,
            &WEIGHTS_SCALED,
            1.5e-6,
        );
        let total: f32 = weights.iter().sum();
        assert!((total - 1.0).abs() < 1e-6, "weights sum to {total}");
        assert_close(&format!("scaled output {case}"), output, &out_scaled, 1e-6);
        assert_close(
            &format!("scaled output {case}"),
            output,
            &OUTPUT_SCALED,
            1.5e-6,
        );

        // What the example's text says: "on" gets the most attention, "cat" the least, the two
        // "the"s the same, and scaling makes the weights more even.
        let argmax = (0..6)
            .max_by(|&a, &b| weights[a].total_cmp(&weights[b]))
            .unwrap();
        let argmin = (0..6)
            .min_by(|&a, &b| weights[a].total_cmp(&weights[b]))
            .unwrap();
        assert_eq!((SENTENCE[argmax], SENTENCE[argmin]), ("on", "cat"));
        assert_eq!(weights[0], weights[4]);
        let spread = |w: &[f32]| w[argmax] - w[argmin];
        assert!(spread(weights) < spread(&plain.weights));
    }
}

#[test]
fn kv_cache_decode_of_mat_equals_recompute() {
    let x = inputs();
    let (cfg, weights) = decode::teaching::layer();
    let layer = AttentionLayer::new(cfg, weights.clone()).unwrap();
    // Every token's output recomputed without a cache, in f64.
    let reference = layer_f64(&cfg, &weights, &x, 8, 0);
    assert_close(
        "reference mat",
        &reference[5].iter().map(|&v| v as f32).collect::<Vec<_>>(),
        &OUTPUT_SCALED,
        1e-6,
    );
    // The first token attends only to itself: its output is its own value.
    assert_close(
        "reference the",
        &reference[0].iter().map(|&v| v as f32).collect::<Vec<_>>(),
        &V_HAND[0],
        1e-6,
    );

    for case in exec_cases() {
        let (outs, recompute) = case.run(|| {
            let mut cache = KvCache::new(CacheConfig {
                layers: 1,
                kv_heads: 1,
                head_dim: D,
                capacity: 8,
                sinks: 0,
                dtype: KvDtype::F32,
            })
            .unwrap();
            let mut scratch = LayerScratch::new(&cfg, case.threads).unwrap();
            let mut outs = Vec::new();
            for (i, xi) in x.chunks_exact(D_MODEL).enumerate() {
                let mut out = vec![f32::NAN; D];
                layer
                    .decode(&case.exec, &mut cache, 0, xi, &mut out, &mut scratch)
                    .unwrap();
                assert_eq!(cache.len(), i + 1);
                outs.push(out);
            }
            // The cache holds the five earlier words' keys and "mat"'s, as computed by hand.
            assert_eq!(cache.positions(), [0, 1, 2, 3, 4, 5]);
            for (slot, row) in K_HAND.iter().enumerate() {
                for (i, &want) in row.iter().enumerate() {
                    assert!((cache.get(0, false, 0, slot, i) as f64 - want).abs() < 1e-6);
                    assert!((cache.get(0, true, 0, slot, i) as f64 - V_HAND[slot][i]).abs() < 1e-6);
                }
            }
            // Recompute "mat" from scratch, as the example's step 5(b) does.
            let (q, k, v) = (
                project(&case.exec, &x, &W_Q),
                project(&case.exec, &x, &W_K),
                project(&case.exec, &x, &W_V),
            );
            let recompute = attend(&case.exec, &q[5 * D..], &k, &v, 1.0 / (D as f32).sqrt())
                .unwrap()
                .output;
            (outs, recompute)
        });
        let diff = outs[5]
            .iter()
            .zip(&recompute)
            .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(
            diff < 1e-6,
            "{case}: cached vs recomputed differ by {diff:e}"
        );
        for (t, (o, r)) in outs.iter().zip(&reference).enumerate() {
            assert_close(&format!("token {t} {case}"), o, r, 1e-6);
        }
    }
}
