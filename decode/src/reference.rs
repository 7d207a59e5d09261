//! f64 reference attention: no cache, everything recomputed from the token embeddings. The
//! oracle for tests and the harness; being an oracle, it panics (naming the mismatch) on
//! inputs whose shapes do not fit together, rather than return errors.

use crate::attention::{HeadConfig, visible};
use crate::layer::{LayerConfig, LayerWeights};

fn matvec(x: &[f64], w: &[f32], n: usize) -> Vec<f64> {
    let mut out = vec![0.0; n];
    for (i, xi) in x.iter().enumerate() {
        for j in 0..n {
            out[j] += xi * w[i * n + j] as f64;
        }
    }
    out
}

fn rope_f64(x: &mut [f64], head_dim: usize, pos: usize, base: f64) {
    let half = head_dim / 2;
    for head in x.chunks_exact_mut(head_dim) {
        for i in 0..half {
            let theta = pos as f64 * base.powf(-2.0 * i as f64 / head_dim as f64);
            let (sin, cos) = theta.sin_cos();
            let (a, b) = (head[i], head[i + half]);
            head[i] = a * cos - b * sin;
            head[i + half] = a * sin + b * cos;
        }
    }
}

/// Attention of one query head over explicit keys/values (`n × d` each), in f64.
pub fn attend_f64(q: &[f64], keys: &[Vec<f64>], values: &[Vec<f64>], scale: f64) -> Vec<f64> {
    let d = q.len();
    assert_eq!(keys.len(), values.len(), "attend_f64: keys vs values");
    assert!(
        keys.iter().chain(values).all(|row| row.len() == d),
        "attend_f64: every key and value row must have the query's {d} elements"
    );
    if keys.is_empty() {
        return vec![0.0; d];
    }
    let scores: Vec<f64> = keys
        .iter()
        .map(|k| scale * q.iter().zip(k).map(|(a, b)| a * b).sum::<f64>())
        .collect();
    let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let w: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
    let sum: f64 = w.iter().sum();
    let mut out = vec![0.0; d];
    for (wi, v) in w.iter().zip(values) {
        for (o, x) in out.iter_mut().zip(v) {
            *o += wi / sum * x;
        }
    }
    out
}

/// Outputs of an attention layer for every token of `xs` (`T × d_model`), recomputed from
/// scratch in f64: token `t` at position `t` attends to the positions [`visible`] to it in a
/// ring of `capacity` with `sinks`.
pub fn layer_f64(
    cfg: &LayerConfig,
    w: &LayerWeights,
    xs: &[f32],
    capacity: usize,
    sinks: usize,
) -> Vec<Vec<f64>> {
    let HeadConfig {
        heads,
        kv_heads,
        head_dim: d,
    } = cfg.heads;
    crate::AttentionLayer::check(cfg, w).expect("layer_f64: config and weights");
    assert!(
        xs.len().is_multiple_of(cfg.d_model),
        "layer_f64: xs length {} is not whole tokens of d_model {}",
        xs.len(),
        cfg.d_model
    );
    let g = heads / kv_heads;
    let t = xs.len() / cfg.d_model;
    let mut qs = Vec::new();
    let mut ks = Vec::new();
    let mut vs = Vec::new();
    for i in 0..t {
        let x: Vec<f64> = xs[i * cfg.d_model..(i + 1) * cfg.d_model]
            .iter()
            .map(|&v| v as f64)
            .collect();
        let mut q = matvec(&x, &w.w_q, heads * d);
        let mut k = matvec(&x, &w.w_k, kv_heads * d);
        if let Some(r) = &cfg.rope {
            rope_f64(&mut q, d, i, r.base);
            rope_f64(&mut k, d, i, r.base);
        }
        qs.push(q);
        ks.push(k);
        vs.push(matvec(&x, &w.w_v, kv_heads * d));
    }
    let scale = 1.0 / (d as f64).sqrt();
    (0..t)
        .map(|i| {
            let mut concat = Vec::with_capacity(heads * d);
            for h in 0..heads {
                let kv = h / g;
                let seen: Vec<usize> = (0..=i)
                    .filter(|&p| visible(i, p, capacity, sinks))
                    .collect();
                let keys: Vec<Vec<f64>> = seen
                    .iter()
                    .map(|&p| ks[p][kv * d..(kv + 1) * d].to_vec())
                    .collect();
                let values: Vec<Vec<f64>> = seen
                    .iter()
                    .map(|&p| vs[p][kv * d..(kv + 1) * d].to_vec())
                    .collect();
                concat.extend(attend_f64(
                    &qs[i][h * d..(h + 1) * d],
                    &keys,
                    &values,
                    scale,
                ));
            }
            match &w.w_o {
                Some(w_o) => matvec(&concat, w_o, cfg.d_model),
                None => concat,
            }
        })
        .collect()
}
