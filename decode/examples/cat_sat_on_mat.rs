//! Attention, step by step, on "the cat sat on the mat".
//!
//! Six tokens with 4-number embeddings, one attention head of size 3, and hand-picked weights,
//! small enough to check with pencil and paper. The example computes queries, keys and values,
//! the scores of "mat" against every word, the softmax weights and the output, first without
//! and then with the 1/√d scaling real models use; then it decodes the sentence token by token
//! through a KV cache and shows that the cached result equals recomputing from scratch.
//!
//! Run with `cargo run --release -p decode --example cat_sat_on_mat`.

use decode::teaching::{
    Attention, D_MODEL, HEAD_DIM as D, SENTENCE, W_K, W_Q, W_V, attend, project,
    sentence_embeddings,
};
use decode::{AttentionLayer, CacheConfig, Exec, KvCache, KvDtype, LayerScratch};
use kernels::GemmWorkspace;

type Res<T = ()> = Result<T, Box<dyn std::error::Error>>;

/// `[ 0.5200  0.2900  0.3700]`
fn fmt_vec(v: &[f32]) -> String {
    let cells: Vec<String> = v.iter().map(|x| format!("{x:7.4}")).collect();
    format!("[{}]", cells.join(" "))
}

fn print_attention(a: &Attention, score_label: &str) {
    println!("      #  word   {score_label:>12}   weight   weight as a bar");
    for (i, word) in SENTENCE.iter().enumerate() {
        let bar = "#".repeat((a.weights[i] * 100.0).round() as usize);
        println!(
            "      {i}  {word:<5}  {:>12.4}   {:.4}   {bar}",
            a.scores[i], a.weights[i]
        );
    }
    let total: f32 = a.weights.iter().sum();
    println!("                      weights sum to {total:.4}");
    println!("    output = Σ weight·v = {}", fmt_vec(&a.output));
}

fn main() -> Res {
    let exec = Exec::new();
    let mut ws = GemmWorkspace::new();
    let n = SENTENCE.len();
    let last = n - 1;

    println!("Attention, step by step: \"{}\"", SENTENCE.join(" "));
    println!("{}", "=".repeat(50));
    println!();
    println!("Step 1. Every word starts as an embedding: {D_MODEL} numbers learned in training.");
    println!("        (\"the\" appears twice and gets the same embedding both times.)");
    println!();
    let x = sentence_embeddings();
    println!("      #  word   embedding x");
    for (i, word) in SENTENCE.iter().enumerate() {
        println!(
            "      {i}  {word:<5}  {}",
            fmt_vec(&x[i * D_MODEL..(i + 1) * D_MODEL])
        );
    }

    println!();
    println!("Step 2. Three learned {D_MODEL}×{D} matrices give each word three roles (d = {D}):");
    println!("          q = x·W_Q   the query: what this word is looking for");
    println!("          k = x·W_K   the key:   what this word offers to be found by");
    println!("          v = x·W_V   the value: what this word hands over when attended to");
    println!();
    let q = project(&exec, &x, &W_Q, &mut ws)?;
    let k = project(&exec, &x, &W_K, &mut ws)?;
    let v = project(&exec, &x, &W_V, &mut ws)?;
    println!("      #  word   {:<27}{:<27}value v", "query q", "key k");
    for (i, word) in SENTENCE.iter().enumerate() {
        let r = i * D..(i + 1) * D;
        println!(
            "      {i}  {word:<5}  {}  {}  {}",
            fmt_vec(&q[r.clone()]),
            fmt_vec(&k[r.clone()]),
            fmt_vec(&v[r])
        );
    }
    println!("      Worked by hand: q(the) = 0.5·[0.2 0.1 0.3] + 0.8·[0.4 0.2 0.1]");
    println!("                             + 0.1·[0.1 0.5 0.2] + 0.3·[0.3 0.1 0.4]");
    println!("                             = [0.52 0.29 0.37]");

    let q_mat = &q[last * D..];
    println!();
    println!(
        "Step 3. How much should \"mat\" (the last word) attend to each word, itself included?"
    );
    println!("        The score is the dot product q(mat)·k(word): large when the key points the");
    println!("        same way as the query, i.e. when the word offers what \"mat\" looks for.");
    println!("Step 4. Softmax turns the scores into weights: exp(score), divided by their sum,");
    println!("        so every weight is positive and they add up to 1.");
    println!("Step 5. The output is the weighted average of the values.");
    println!();
    println!("  (a) Unscaled scores, q·k:");
    let plain = attend(&exec, q_mat, &k, &v, 1.0)?;
    print_attention(&plain, "q·k");

    let scale = 1.0 / (D as f32).sqrt();
    println!();
    println!("  (b) Scaled scores, q·k/√d with d = {D} (1/√d = {scale:.4}), as real models do:");
    println!("      A score sums d products, so its spread grows like √d. With d = 128 the raw");
    println!("      scores would be so far apart that softmax puts almost all weight on one");
    println!("      word (and its gradients vanish). Dividing by √d keeps the spread the same");
    println!("      for every head size. Here d is tiny, so the weights only get a bit more even.");
    let scaled = attend(&exec, q_mat, &k, &v, scale)?;
    print_attention(&scaled, "q·k/√d");
    println!();
    println!("      Both \"the\"s have identical keys and values, so they get identical scores:");
    println!("      nothing here tells them apart by position. Real models rotate q and k by");
    println!("      their position first (RoPE) so that word order matters.");

    println!();
    println!(
        "Step 6. Generating text, tokens arrive one at a time. The keys and values of earlier"
    );
    println!("        tokens never change, so they are computed once and kept in a KV cache: each");
    println!("        new token computes only its own q, k, v and attends over the cache.");
    println!();
    let (cfg, weights) = decode::teaching::layer();
    let layer = AttentionLayer::new(cfg, weights)?;
    let mut cache = KvCache::new(CacheConfig {
        layers: 1,
        kv_heads: 1,
        head_dim: D,
        capacity: 8,
        sinks: 0,
        dtype: KvDtype::F32,
    })?;
    let mut scratch = LayerScratch::new(&cfg, exec.threads())?;
    let mut out = vec![0.0; D];
    for (i, word) in SENTENCE.iter().enumerate() {
        layer.decode(
            &exec,
            &mut cache,
            0,
            &x[i * D_MODEL..(i + 1) * D_MODEL],
            &mut out,
            &mut scratch,
        )?;
        println!(
            "      decode {word:<5} -> cache holds {} token(s); output {}",
            cache.len(),
            fmt_vec(&out)
        );
    }
    let diff = out
        .iter()
        .zip(&scaled.output)
        .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    println!();
    println!("      \"mat\" with the KV cache:       {}", fmt_vec(&out));
    println!(
        "      \"mat\" recomputed from scratch: {}",
        fmt_vec(&scaled.output)
    );
    println!("      max difference: {diff:.1e}");
    assert!(
        diff < 1e-6,
        "cached decode must equal recomputation (difference {diff:e})"
    );
    println!();
    println!("The cache gives the same answer while computing k and v of each token only once.");
    Ok(())
}
