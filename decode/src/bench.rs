//! Harness-ready workloads: one decode step, one prefill chunk, and cached decode against full
//! recompute, each built once (allocation outside the timed call) and run repeatedly.

use crate::attention::{
    DecodeOptions, DecodeScratch, HeadConfig, PrefillScratch, decode_attention, prefill_attention,
};
use crate::cache::{CacheConfig, KvCache};
use crate::error::{DecodeError, Result};
use kernels::{Exec, GemmWorkspace, KvDtype, KvRows, MatMut, MatRef, gemm};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Shape of the attention being measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttnShape {
    /// Query heads.
    pub heads: usize,
    /// KV heads.
    pub kv_heads: usize,
    /// Elements per head.
    pub head_dim: usize,
    /// Layers (each with its own cache region).
    pub layers: usize,
    /// KV storage type.
    pub dtype: KvDtype,
    /// Sliding window (cache capacity); `None` for full attention.
    pub window: Option<usize>,
}

impl AttnShape {
    /// KV bytes one token occupies across all layers.
    /// (Saturating at `usize::MAX` for a shape too large to exist.)
    pub fn kv_bytes_per_token(&self) -> usize {
        self.cache_config(0).bytes_per_token()
    }
    /// Checks the head arithmetic, the layer count and the window.
    pub fn validate(&self) -> Result<()> {
        self.head_config().validate()?;
        if self.layers == 0 {
            return Err(DecodeError::InvalidConfig("layers must be positive".into()));
        }
        if self.window == Some(0) {
            return Err(DecodeError::InvalidConfig(
                "a sliding window must hold at least one token".into(),
            ));
        }
        Ok(())
    }
    fn head_config(&self) -> HeadConfig {
        HeadConfig {
            heads: self.heads,
            kv_heads: self.kv_heads,
            head_dim: self.head_dim,
        }
    }
    fn cache_config(&self, seq_len: usize) -> CacheConfig {
        CacheConfig {
            layers: self.layers,
            kv_heads: self.kv_heads,
            head_dim: self.head_dim,
            // (A context of usize::MAX saturates here; `KvCache::new` then refuses the size.)
            capacity: self.window.unwrap_or(seq_len.saturating_add(1)),
            sinks: 0,
            dtype: self.dtype,
        }
    }
}

/// Bytes [`DecodeBench::new`] would allocate for this shape and context (to refuse early).
pub fn estimate_bytes(shape: &AttnShape, seq_len: usize) -> usize {
    let vectors = (4 * (4 + DECODE_SLACK))
        .saturating_mul(shape.heads)
        .saturating_mul(shape.head_dim);
    shape.cache_config(seq_len).bytes().saturating_add(vectors)
}
const DECODE_SLACK: usize = 64;

/// Floats in a `rows × width` buffer, or an error when the product overflows.
fn buffer_len(rows: usize, width: usize) -> Result<usize> {
    rows.checked_mul(width).ok_or_else(|| {
        DecodeError::InvalidConfig(format!(
            "a buffer of {rows} × {width} floats overflows usize"
        ))
    })
}

fn random(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// One decode step (all layers) over a cache holding `seq_len` tokens.
pub struct DecodeBench {
    heads: HeadConfig,
    cache: KvCache,
    seq_len: usize,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    out: Vec<f32>,
    scratch: DecodeScratch,
    naive_scores: Vec<f32>,
}

impl DecodeBench {
    /// Builds and fills the cache with `seq_len` random tokens.
    pub fn new(shape: AttnShape, seq_len: usize) -> Result<Self> {
        shape.validate()?;
        let heads = shape.head_config();
        let mut cache = KvCache::new(shape.cache_config(seq_len))?;
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let row = shape.kv_heads * shape.head_dim;
        let fill = seq_len.min(cache.config().capacity);
        let k = random(&mut rng, fill * row);
        let v = random(&mut rng, fill * row);
        for layer in 0..shape.layers {
            cache.append_many(layer, &k, &v)?;
        }
        let qn = shape.heads * shape.head_dim;
        Ok(Self {
            heads,
            seq_len: fill,
            q: random(&mut rng, qn),
            k: random(&mut rng, row),
            v: random(&mut rng, row),
            out: vec![0.0; qn],
            scratch: DecodeScratch::new(heads, 64)?,
            naive_scores: vec![0.0; fill + 1],
            cache,
        })
    }

    /// Appends one token and attends, on every layer; then rolls back so every step sees the
    /// same context.
    pub fn step(&mut self, exec: &Exec) -> Result<()> {
        for layer in 0..self.cache.config().layers {
            self.cache.append(layer, &self.k, &self.v)?;
            decode_attention(
                exec,
                &self.heads,
                &self.cache,
                layer,
                &self.q,
                &mut self.out,
                &mut self.scratch,
                DecodeOptions::default(),
            )?;
        }
        self.rollback()
    }

    fn rollback(&mut self) -> Result<()> {
        if self.cache.next_position() <= self.cache.config().capacity {
            self.cache.truncate(self.seq_len)?;
        }
        Ok(())
    }

    /// The same step written plainly: a full score vector per head, scalar loops, one thread,
    /// each query head reading its KV head's cache on its own.
    pub fn step_naive(&mut self) -> Result<()> {
        let (d, g) = (self.heads.head_dim, self.heads.group());
        let scale = self.heads.scale();
        for layer in 0..self.cache.config().layers {
            self.cache.append(layer, &self.k, &self.v)?;
            let len = self.cache.len();
            for h in 0..self.heads.heads {
                let q = &self.q[h * d..(h + 1) * d];
                let keys = to_f32_rows(self.cache.rows(layer, false, h / g, 0..len)?);
                let values = to_f32_rows(self.cache.rows(layer, true, h / g, 0..len)?);
                let scores = &mut self.naive_scores[..len];
                for (i, s) in scores.iter_mut().enumerate() {
                    *s = scale * (0..d).map(|j| q[j] * keys.get(i * d + j)).sum::<f32>();
                }
                let max = scores.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0.0;
                for s in scores.iter_mut() {
                    *s = (*s - max).exp();
                    sum += *s;
                }
                let out = &mut self.out[h * d..(h + 1) * d];
                out.iter_mut().for_each(|o| *o = 0.0);
                for (i, s) in scores.iter().enumerate() {
                    for (j, o) in out.iter_mut().enumerate() {
                        *o += s / sum * values.get(i * d + j);
                    }
                }
            }
        }
        self.rollback()
    }

    /// Bytes of K and V the step reads (all layers).
    pub fn kv_bytes_per_step(&self) -> usize {
        let c = self.cache.config();
        (self.seq_len + 1).min(c.capacity) * c.bytes_per_token()
    }

    /// Output of the last step (for checks).
    pub fn output(&self) -> &[f32] {
        &self.out
    }
}

/// Element access for the naive path, converting bf16 on the fly.
struct Rows<'a>(KvRows<'a>);
impl Rows<'_> {
    #[inline]
    fn get(&self, i: usize) -> f32 {
        match self.0 {
            KvRows::F32(r) => r[i],
            KvRows::Bf16(r) => r[i].to_f32(),
        }
    }
}
fn to_f32_rows(r: KvRows<'_>) -> Rows<'_> {
    Rows(r)
}

/// Causal attention of a `chunk`-token prefill (all layers) after `context` cached tokens:
/// 0 is a first prompt, more is chunked prefill of a long prompt or a later turn of a chat.
pub struct PrefillBench {
    heads: HeadConfig,
    cache: KvCache,
    context: usize,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    out: Vec<f32>,
    scratch: PrefillScratch,
}

impl PrefillBench {
    /// Random q, k, v for `chunk` tokens, and `context` random cached tokens before them.
    /// [`DecodeError::InvalidConfig`] when a sliding window would not hold context and chunk
    /// (the cache is rolled back to the context before every run, which a wrapped ring
    /// cannot do).
    pub fn new(shape: AttnShape, chunk: usize, context: usize) -> Result<Self> {
        shape.validate()?;
        let total = context.saturating_add(chunk);
        if context > 0 && shape.window.is_some_and(|w| w < total) {
            return Err(DecodeError::InvalidConfig(format!(
                "prefill after {context} cached tokens needs a window of at least context + \
                 chunk = {total}"
            )));
        }
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let (qn, kn) = (
            shape.heads * shape.head_dim,
            shape.kv_heads * shape.head_dim,
        );
        let (q_len, kv_len) = (buffer_len(chunk, qn)?, buffer_len(chunk, kn)?);
        let mut cache = KvCache::new(shape.cache_config(total))?;
        if context > 0 {
            let (k, v) = (
                random(&mut rng, context * kn),
                random(&mut rng, context * kn),
            );
            for layer in 0..shape.layers {
                cache.append_many(layer, &k, &v)?;
            }
        }
        Ok(Self {
            heads: shape.head_config(),
            cache,
            context,
            q: random(&mut rng, q_len),
            k: random(&mut rng, kv_len),
            v: random(&mut rng, kv_len),
            out: vec![0.0; q_len],
            scratch: PrefillScratch::new(),
        })
    }

    /// One prefill of the chunk on every layer, after the context.
    pub fn run(&mut self, exec: &Exec) -> Result<()> {
        self.cache.truncate(self.context)?;
        for layer in 0..self.cache.config().layers {
            prefill_attention(
                exec,
                &self.heads,
                &mut self.cache,
                layer,
                &self.q,
                &self.k,
                &self.v,
                &mut self.out,
                &mut self.scratch,
            )?;
        }
        Ok(())
    }
}

/// Cost of one new token with the KV cache (project the new token only, attend over cached
/// K/V) against recomputing K and V for the whole context (what a cache-less decoder does).
pub struct RecomputeBench {
    bench: DecodeBench,
    d_model: usize,
    context: usize,
    xs: Vec<f32>,
    w_q: Vec<f32>,
    w_k: Vec<f32>,
    w_v: Vec<f32>,
    keys: Vec<f32>,
    values: Vec<f32>,
    scores: Vec<f32>,
    ws: GemmWorkspace,
}

impl RecomputeBench {
    /// A context of `context` random embeddings of width `d_model`.
    pub fn new(shape: AttnShape, d_model: usize, context: usize) -> Result<Self> {
        let bench = DecodeBench::new(shape, context)?;
        if d_model == 0 {
            return Err(DecodeError::InvalidConfig(
                "d_model must be positive".into(),
            ));
        }
        let mut rng = ChaCha8Rng::seed_from_u64(13);
        // The shape validated, so these two fit; the products with the context or d_model
        // are checked.
        let (qn, kn) = (
            shape.heads * shape.head_dim,
            shape.kv_heads * shape.head_dim,
        );
        let rows = context.saturating_add(1);
        Ok(Self {
            bench,
            d_model,
            context,
            xs: random(&mut rng, buffer_len(rows, d_model)?),
            w_q: random(&mut rng, buffer_len(d_model, qn)?),
            w_k: random(&mut rng, buffer_len(d_model, kn)?),
            w_v: random(&mut rng, buffer_len(d_model, kn)?),
            keys: vec![0.0; buffer_len(rows, kn)?],
            values: vec![0.0; buffer_len(rows, kn)?],
            scores: vec![0.0; rows],
            ws: GemmWorkspace::new(),
        })
    }

    fn project(&mut self, exec: &Exec, rows: std::ops::Range<usize>) -> Result<()> {
        let t = rows.len();
        let dm = self.d_model;
        let x = MatRef::row_major(&self.xs[rows.start * dm..rows.end * dm], t, dm)?;
        let h = self.bench.heads;
        let (qn, kn) = (h.heads * h.head_dim, h.kv_heads * h.head_dim);
        let q_row = MatRef::row_major(&self.xs[(rows.end - 1) * dm..rows.end * dm], 1, dm)?;
        gemm(
            exec,
            1.0,
            q_row,
            MatRef::row_major(&self.w_q, dm, qn)?,
            0.0,
            &mut MatMut::row_major(&mut self.bench.q, 1, qn)?,
            &mut self.ws,
        )?;
        gemm(
            exec,
            1.0,
            x,
            MatRef::row_major(&self.w_k, dm, kn)?,
            0.0,
            &mut MatMut::row_major(&mut self.keys[..t * kn], t, kn)?,
            &mut self.ws,
        )?;
        gemm(
            exec,
            1.0,
            x,
            MatRef::row_major(&self.w_v, dm, kn)?,
            0.0,
            &mut MatMut::row_major(&mut self.values[..t * kn], t, kn)?,
            &mut self.ws,
        )?;
        Ok(())
    }

    /// With the cache: project the new token (q, k, v), append, attend (all layers).
    pub fn cached_step(&mut self, exec: &Exec) -> Result<()> {
        let last = self.context;
        // Every layer projects its own new token (as `recompute_step` re-projects the context
        // on every layer); the workload reuses one weight set, so the bytes and flops match.
        for _ in 0..self.bench.cache.config().layers {
            self.project(exec, last..last + 1)?;
        }
        let kn = self.bench.heads.kv_heads * self.bench.heads.head_dim;
        self.bench.k.copy_from_slice(&self.keys[..kn]);
        self.bench.v.copy_from_slice(&self.values[..kn]);
        self.bench.step(exec)
    }

    /// Without a cache: project K and V of every context token again, then attend (all
    /// layers).
    pub fn recompute_step(&mut self, exec: &Exec) -> Result<()> {
        let layers = self.bench.cache.config().layers;
        let h = self.bench.heads;
        let (d, g, n) = (h.head_dim, h.group(), self.context + 1);
        let kn = h.kv_heads * d;
        for _ in 0..layers {
            self.project(exec, 0..n)?;
            for head in 0..h.heads {
                let kv = head / g;
                let q = &self.bench.q[head * d..(head + 1) * d];
                let out = &mut self.bench.out[head * d..(head + 1) * d];
                out.iter_mut().for_each(|o| *o = 0.0);
                let mut state = kernels::OnlineSoftmax::EMPTY;
                for t in 0..n {
                    let k = &self.keys[t * kn + kv * d..t * kn + (kv + 1) * d];
                    self.scores[t] = h.scale() * k.iter().zip(q).map(|(a, b)| a * b).sum::<f32>();
                }
                let factor = state.absorb(exec, &mut self.scores[..n]);
                debug_assert_eq!(factor, 0.0);
                for t in 0..n {
                    let v = &self.values[t * kn + kv * d..t * kn + (kv + 1) * d];
                    let w = self.scores[t] * state.inverse_sum();
                    out.iter_mut().zip(v).for_each(|(o, x)| *o += w * x);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(window: Option<usize>) -> AttnShape {
        AttnShape {
            heads: 4,
            kv_heads: 2,
            head_dim: 8,
            layers: 2,
            dtype: KvDtype::F32,
            window,
        }
    }

    /// Degenerate shapes are errors and sizes saturate instead of wrapping.
    #[test]
    fn degenerate_workloads_are_refused() {
        assert!(DecodeBench::new(shape(Some(0)), 10).is_err());
        assert!(DecodeBench::new(shape(None), usize::MAX).is_err());
        assert_eq!(estimate_bytes(&shape(None), usize::MAX), usize::MAX);
        assert!(estimate_bytes(&shape(None), 100) >= 101 * shape(None).kv_bytes_per_token());
        let huge = AttnShape {
            layers: usize::MAX,
            ..shape(None)
        };
        assert_eq!(huge.kv_bytes_per_token(), usize::MAX);
        assert!(RecomputeBench::new(shape(None), 0, 10).is_err());
        assert!(PrefillBench::new(shape(None), usize::MAX / 8, 0).is_err());
    }

    /// A first prompt longer than a sliding window runs again and again (each run rolls the
    /// cache back to empty, which needs nothing the ring overwrote).
    #[test]
    fn prefill_longer_than_the_window_repeats() {
        let mut b = PrefillBench::new(shape(Some(16)), 32, 0).unwrap();
        let exec = Exec::sequential();
        for _ in 0..3 {
            b.run(&exec).unwrap();
        }
    }
}
