//! The "the cat sat on the mat" walkthrough's inputs and steps, shared by
//! `--example cat_sat_on_mat` (which prints them) and its test (which checks them against
//! numbers worked out by hand): six tokens with 4-number embeddings, one attention head of size
//! 3, and hand-picked weights, small enough to check with pencil and paper.

use crate::attention::HeadConfig;
use crate::error::{Result, check_eq};
use crate::layer::{LayerConfig, LayerWeights};
use kernels::{
    Exec, GemmWorkspace, KvRows, MatMut, MatRef, SoftmaxOptions, accumulate_rows, dot_rows, gemm,
    softmax_rows,
};

/// Embedding width.
pub const D_MODEL: usize = 4;
/// Head size (columns of W_Q, W_K, W_V).
pub const HEAD_DIM: usize = 3;

/// The words and their embeddings.
pub const VOCAB: [(&str, [f32; D_MODEL]); 5] = [
    ("the", [0.5, 0.8, 0.1, 0.3]),
    ("cat", [1.0, 0.2, 0.5, 0.1]),
    ("sat", [0.3, 1.0, 0.2, 0.4]),
    ("on", [0.6, 0.4, 0.7, 0.5]),
    ("mat", [0.8, 0.1, 0.9, 0.2]),
];

/// The sentence, one word per token.
pub const SENTENCE: [&str; 6] = ["the", "cat", "sat", "on", "the", "mat"];

/// Row-major 4×3 query weights (one row per embedding dimension).
pub const W_Q: [f32; D_MODEL * HEAD_DIM] = [
    0.2, 0.1, 0.3, //
    0.4, 0.2, 0.1, //
    0.1, 0.5, 0.2, //
    0.3, 0.1, 0.4,
];
/// Row-major 4×3 key weights.
pub const W_K: [f32; D_MODEL * HEAD_DIM] = [
    0.3, 0.2, 0.1, //
    0.1, 0.4, 0.3, //
    0.2, 0.1, 0.5, //
    0.4, 0.3, 0.2,
];
/// Row-major 4×3 value weights.
pub const W_V: [f32; D_MODEL * HEAD_DIM] = [
    0.1, 0.3, 0.2, //
    0.2, 0.1, 0.4, //
    0.5, 0.2, 0.1, //
    0.3, 0.4, 0.3,
];

/// The embedding of `word`, if it is in [`VOCAB`].
pub fn embedding(word: &str) -> Option<[f32; D_MODEL]> {
    VOCAB.iter().find(|(w, _)| *w == word).map(|(_, e)| *e)
}

/// The sentence's embeddings, one row of [`D_MODEL`] per token.
pub fn sentence_embeddings() -> Vec<f32> {
    SENTENCE
        .iter()
        .flat_map(|w| embedding(w).expect("every word of SENTENCE is in VOCAB"))
        .collect()
}

/// `x (rows × D_MODEL) · w (D_MODEL × HEAD_DIM)`, with the library's GEMM.
pub fn project(exec: &Exec, x: &[f32], w: &[f32], ws: &mut GemmWorkspace) -> Result<Vec<f32>> {
    let rows = x.len() / D_MODEL;
    check_eq(
        "x length vs a whole number of embeddings",
        rows * D_MODEL,
        x.len(),
    )?;
    check_eq(
        "w length vs D_MODEL × HEAD_DIM",
        D_MODEL * HEAD_DIM,
        w.len(),
    )?;
    let mut out = vec![0.0; rows * HEAD_DIM];
    gemm(
        exec,
        1.0,
        MatRef::row_major(x, rows, D_MODEL)?,
        MatRef::row_major(w, D_MODEL, HEAD_DIM)?,
        0.0,
        &mut MatMut::row_major(&mut out, rows, HEAD_DIM)?,
        ws,
    )?;
    Ok(out)
}

/// One query's attention over a set of keys and values.
#[derive(Debug, Clone, PartialEq)]
pub struct Attention {
    /// `scale · q·k` for every key.
    pub scores: Vec<f32>,
    /// softmax of the scores.
    pub weights: Vec<f32>,
    /// Σ weight·v.
    pub output: Vec<f32>,
}

/// Scores of `q` against every key row (`k`, rows of [`HEAD_DIM`]) scaled by `scale`, their
/// softmax, and the weighted sum of the value rows `v`, with the library's kernels.
pub fn attend(exec: &Exec, q: &[f32], k: &[f32], v: &[f32], scale: f32) -> Result<Attention> {
    let n = k.len() / HEAD_DIM;
    check_eq("q length vs HEAD_DIM", HEAD_DIM, q.len())?;
    check_eq(
        "k length vs a whole number of key rows",
        n * HEAD_DIM,
        k.len(),
    )?;
    check_eq("v length vs k length", k.len(), v.len())?;
    let mut scores = vec![0.0; n];
    dot_rows(exec, q, KvRows::F32(k), scale, &mut scores)?;
    let mut weights = scores.clone();
    softmax_rows(exec, &mut weights, n, SoftmaxOptions::default())?;
    let mut output = vec![0.0; HEAD_DIM];
    accumulate_rows(exec, &weights, KvRows::F32(v), &mut output)?;
    Ok(Attention {
        scores,
        weights,
        output,
    })
}

/// The walkthrough as a one-head attention layer (d_model 4, head size 3, no RoPE, no W_O).
pub fn layer() -> (LayerConfig, LayerWeights) {
    let config = LayerConfig {
        d_model: D_MODEL,
        heads: HeadConfig {
            heads: 1,
            kv_heads: 1,
            head_dim: HEAD_DIM,
        },
        rope: None,
    };
    let weights = LayerWeights {
        w_q: W_Q.to_vec(),
        w_k: W_K.to_vec(),
        w_v: W_V.to_vec(),
        w_o: None,
    };
    (config, weights)
}
