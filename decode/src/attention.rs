//! Attention over the cache: the fused one-token decode kernel (flash-decoding) and chunked
//! causal prefill on the matmul kernels.
//!
//! Decode, for a query at the cache's newest position: every occupied slot is visible (the ring
//! holds exactly the window), so each KV head's keys and values are streamed once, block by
//! block: for each block, every query head of the group computes `s = scale·K_blk·q`, folds it
//! into its running [`OnlineSoftmax`] state and adds `softmax weights · V_blk` to its
//! accumulator. A block of K and V (32 KiB together, `kernels::attend_block_rows`) is read from
//! memory once and from L1 by the other heads of the group. Work items are (KV head, sequence split); splits are merged with
//! the exact log-sum-exp rule, so one head at 32k tokens uses every thread.

use crate::cache::KvCache;
use crate::error::{DecodeError, Result, check_len};
use kernels::{Exec, OnlineSoftmax, Parallelism};

/// Head counts and sizes of multi-head attention: `heads` query heads share `kv_heads` KV heads
/// (`heads = kv_heads` is MHA, `kv_heads = 1` MQA, otherwise GQA).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadConfig {
    /// Query heads.
    pub heads: usize,
    /// Key/value heads; must divide `heads`.
    pub kv_heads: usize,
    /// Elements per head.
    pub head_dim: usize,
}

impl HeadConfig {
    /// Checks the head arithmetic.
    pub fn validate(&self) -> Result<()> {
        if self.heads == 0 || self.kv_heads == 0 || self.head_dim == 0 {
            return Err(DecodeError::InvalidConfig(format!(
                "heads ({}), kv_heads ({}) and head_dim ({}) must be positive",
                self.heads, self.kv_heads, self.head_dim
            )));
        }
        if !self.heads.is_multiple_of(self.kv_heads) {
            return Err(DecodeError::InvalidConfig(format!(
                "heads ({}) must be a multiple of kv_heads ({})",
                self.heads, self.kv_heads
            )));
        }
        Ok(())
    }

    /// Query heads per KV head.
    pub fn group(&self) -> usize {
        self.heads / self.kv_heads
    }

    /// `1/√head_dim`.
    pub fn scale(&self) -> f32 {
        1.0 / (self.head_dim as f32).sqrt()
    }

    fn check_cache(&self, cache: &KvCache) -> Result<()> {
        let c = cache.config();
        if c.kv_heads != self.kv_heads || c.head_dim != self.head_dim {
            return Err(DecodeError::InvalidConfig(format!(
                "cache has {} KV heads of {} elements; attention expects {} of {}",
                c.kv_heads, c.head_dim, self.kv_heads, self.head_dim
            )));
        }
        Ok(())
    }
}

/// No split is made shorter than this many keys (below it, merging costs more than it saves).
pub const MIN_SPLIT: usize = 512;

/// One work item's buffers: running states and accumulators for the group's query heads, and a
/// score block per head.
struct Partial {
    states: Vec<OnlineSoftmax>,
    acc: Vec<f32>,
    scores: Vec<f32>,
}

/// Caller-owned buffers of [`decode_attention`], sized once from the head shape and the most
/// sequence splits that will be used; a decode step allocates nothing.
pub struct DecodeScratch {
    heads: HeadConfig,
    max_splits: usize,
    partials: Vec<Partial>,
}

impl DecodeScratch {
    /// Scratch for up to `max_splits` sequence splits per KV head.
    pub fn new(heads: HeadConfig, max_splits: usize) -> Result<Self> {
        heads.validate()?;
        let max_splits = max_splits.max(1);
        let g = heads.group();
        let partials = (0..heads.kv_heads * max_splits)
            .map(|_| Partial {
                states: vec![OnlineSoftmax::EMPTY; g],
                acc: vec![0.0; g * heads.head_dim],
                // Room for the longest block of either storage type.
                scores: vec![0.0; g * kernels::MAX_ATTEND_BLOCK_ROWS],
            })
            .collect();
        Ok(Self {
            heads,
            max_splits,
            partials,
        })
    }

    /// Scratch sized for `threads` threads and the default split policy.
    pub fn for_threads(heads: HeadConfig, threads: usize) -> Result<Self> {
        Self::new(heads, default_max_splits(&heads, threads))
    }

    /// The most splits this scratch supports.
    pub fn max_splits(&self) -> usize {
        self.max_splits
    }
}

fn default_max_splits(heads: &HeadConfig, threads: usize) -> usize {
    // Enough (KV head, split) items for two per thread.
    (2 * threads).div_ceil(heads.kv_heads).max(1)
}

/// The split count the decode kernel uses for `len` keys.
pub fn choose_splits(heads: &HeadConfig, len: usize, threads: usize, max_splits: usize) -> usize {
    if threads <= 1 {
        return 1;
    }
    default_max_splits(heads, threads)
        .min(max_splits)
        .min(len / MIN_SPLIT)
        .max(1)
}

/// Options of [`decode_attention`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DecodeOptions {
    /// Force this many sequence splits per KV head (tests, experiments); `None` chooses from
    /// the thread count and context length.
    pub splits: Option<usize>,
}

/// One decode step of attention for `layer`: `q` holds `heads × head_dim` (already rotated),
/// the cache already holds this token's k and v, and `out` receives `heads × head_dim`.
/// An empty cache gives zeros.
#[allow(clippy::too_many_arguments)]
pub fn decode_attention(
    exec: &Exec,
    heads: &HeadConfig,
    cache: &KvCache,
    layer: usize,
    q: &[f32],
    out: &mut [f32],
    scratch: &mut DecodeScratch,
    opts: DecodeOptions,
) -> Result<()> {
    heads.validate()?;
    heads.check_cache(cache)?;
    if scratch.heads != *heads {
        return Err(DecodeError::InvalidConfig(
            "scratch was sized for a different head configuration".into(),
        ));
    }
    let d = heads.head_dim;
    check_len("q length vs heads * head_dim", heads.heads * d, q.len())?;
    check_len("out length vs heads * head_dim", heads.heads * d, out.len())?;
    let next = cache.layer_position(layer)?;
    let len = next.min(cache.config().capacity);
    let splits = match opts.splits {
        Some(s) if s == 0 || s > scratch.max_splits => {
            return Err(DecodeError::InvalidConfig(format!(
                "splits must be in 1..={} for this scratch, got {s}",
                scratch.max_splits
            )));
        }
        Some(s) => s,
        None => choose_splits(heads, len, exec.threads(), scratch.max_splits),
    };
    let g = heads.group();
    let scale = heads.scale();
    let inner = exec.with_parallelism(Parallelism::Sequential);
    let items = heads.kv_heads * splits;

    let run = |item: usize, part: &mut Partial| -> Result<()> {
        let (kv, split) = (item / splits, item % splits);
        let range = (split * len / splits)..((split + 1) * len / splits);
        part.states
            .iter_mut()
            .for_each(|s| *s = OnlineSoftmax::EMPTY);
        part.acc.iter_mut().for_each(|a| *a = 0.0);
        kernels::attend_partial(
            &inner,
            &q[kv * g * d..(kv + 1) * g * d],
            cache.rows(layer, false, kv, range.clone())?,
            cache.rows(layer, true, kv, range)?,
            scale,
            &mut part.states,
            &mut part.acc,
            &mut part.scores,
        )?;
        Ok(())
    };
    let parts = &mut scratch.partials[..items];
    if exec.threads() > 1 && items > 1 {
        use rayon::prelude::*;
        parts
            .par_iter_mut()
            .enumerate()
            .try_for_each(|(i, p)| run(i, p))?;
    } else {
        parts
            .iter_mut()
            .enumerate()
            .try_for_each(|(i, p)| run(i, p))?;
    }

    // Exact merge of the splits: rescale each by exp(m_s − M), then divide by the merged sum.
    for kv in 0..heads.kv_heads {
        for h in 0..g {
            let o = &mut out[(kv * g + h) * d..(kv * g + h + 1) * d];
            o.iter_mut().for_each(|x| *x = 0.0);
            let mut total = OnlineSoftmax::EMPTY;
            for split in 0..splits {
                let part = &scratch.partials[kv * splits + split];
                let (merged, keep, add) = total.merge(part.states[h]);
                total = merged;
                let acc = &part.acc[h * d..(h + 1) * d];
                for (x, a) in o.iter_mut().zip(acc) {
                    *x = *x * keep + if add == 0.0 { 0.0 } else { a * add };
                }
            }
            let inv = total.inverse_sum();
            o.iter_mut().for_each(|x| *x *= inv);
        }
    }
    Ok(())
}

/// Query rows per prefill tile.
const PREFILL_TILE: usize = 64;

/// Reusable buffers of [`prefill_attention`]; they grow to the largest chunk seen.
#[derive(Default)]
pub struct PrefillScratch {
    keys: Vec<f32>,
    values: Vec<f32>,
    positions: Vec<usize>,
    scores: Vec<f32>,
    ws: kernels::GemmWorkspace,
}

impl PrefillScratch {
    /// Empty scratch.
    pub fn new() -> Self {
        Self::default()
    }
}

/// Whether a query at `query` sees a key at `key` in a ring of `capacity` with `sinks`.
pub fn visible(query: usize, key: usize, capacity: usize, sinks: usize) -> bool {
    key <= query && (key < sinks || key + (capacity - sinks) > query)
}

/// Causal attention of a chunk of `T` tokens at the layer's next positions, then appends the
/// chunk's k and v to the cache. `q`: `T × heads × head_dim`; `k`, `v`: `T × kv_heads ×
/// head_dim` (all rotated already); `out`: `T × heads × head_dim`. Each query attends to exactly
/// what decode would: the sinks and the last `capacity − sinks` positions up to itself, read
/// from the cache *before* the chunk overwrites any of it, so chunks that wrap or exceed the
/// capacity are correct.
#[allow(clippy::too_many_arguments)]
pub fn prefill_attention(
    exec: &Exec,
    heads: &HeadConfig,
    cache: &mut KvCache,
    layer: usize,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &mut [f32],
    scratch: &mut PrefillScratch,
) -> Result<()> {
    heads.validate()?;
    heads.check_cache(cache)?;
    let (d, g) = (heads.head_dim, heads.group());
    let qrow = heads.heads * d;
    let kvrow = heads.kv_heads * d;
    if !q.len().is_multiple_of(qrow) {
        return Err(DecodeError::ShapeMismatch {
            what: "q length vs a multiple of heads * head_dim",
            expected: q.len().div_ceil(qrow) * qrow,
            got: q.len(),
        });
    }
    let t = q.len() / qrow;
    check_len("k length vs T * kv_heads * head_dim", t * kvrow, k.len())?;
    check_len("v length vs T * kv_heads * head_dim", t * kvrow, v.len())?;
    check_len("out length vs T * heads * head_dim", t * qrow, out.len())?;
    let p0 = cache.layer_position(layer)?;
    let (cap, sinks) = (cache.config().capacity, cache.config().sinks);
    let cached = cache.positions_at(p0);
    let bf16 = cache.config().dtype == kernels::KvDtype::Bf16;

    for kv in 0..heads.kv_heads {
        for t0 in (0..t).step_by(PREFILL_TILE) {
            let t1 = (t0 + PREFILL_TILE).min(t);
            let (first, last) = (p0 + t0, p0 + t1 - 1);
            // Keys any query of the tile can see: cached slots, then chunk rows.
            scratch.positions.clear();
            scratch.keys.clear();
            scratch.values.clear();
            let push_row = |s: &mut PrefillScratch, pos: usize, kr: &[f32], vr: &[f32]| {
                s.positions.push(pos);
                s.keys.extend_from_slice(kr);
                s.values.extend_from_slice(vr);
            };
            let mut kbuf = vec![0.0f32; d];
            let mut vbuf = vec![0.0f32; d];
            for (slot, &pos) in cached.iter().enumerate() {
                if visible(last, pos, cap, sinks) || visible(first, pos, cap, sinks) {
                    for i in 0..d {
                        kbuf[i] = cache.get(layer, false, kv, slot, i);
                        vbuf[i] = cache.get(layer, true, kv, slot, i);
                    }
                    push_row(scratch, pos, &kbuf, &vbuf);
                }
            }
            for j in 0..t1 {
                let pos = p0 + j;
                // Some query of the tile sees this row iff the earliest query at or after it
                // does (a later query may have slid past it; `first` may precede it).
                if visible(first.max(pos), pos, cap, sinks) {
                    let r = j * kvrow + kv * d;
                    if bf16 {
                        // Attend to what the cache will hold, so prefill equals decode.
                        let round = |x: &f32| kernels::Bf16::from_f32(*x).to_f32();
                        kbuf.iter_mut()
                            .zip(&k[r..r + d])
                            .for_each(|(o, x)| *o = round(x));
                        vbuf.iter_mut()
                            .zip(&v[r..r + d])
                            .for_each(|(o, x)| *o = round(x));
                        push_row(scratch, pos, &kbuf, &vbuf);
                    } else {
                        push_row(scratch, pos, &k[r..r + d], &v[r..r + d]);
                    }
                }
            }
            let nk = scratch.positions.len();
            let rows = t1 - t0;
            scratch.scores.resize(rows * nk.max(1), 0.0);
            let keys = kernels::MatRef::row_major(&scratch.keys, nk, d)?;
            let values = kernels::MatRef::row_major(&scratch.values, nk, d)?;
            for h in 0..g {
                let head = kv * g + h;
                let qt = kernels::MatRef::new(&q[t0 * qrow + head * d..], rows, d, qrow, 1)?;
                let scores = &mut scratch.scores[..rows * nk];
                kernels::gemm(
                    exec,
                    heads.scale(),
                    qt,
                    keys.t(),
                    0.0,
                    &mut kernels::MatMut::row_major(scores, rows, nk)?,
                    &mut scratch.ws,
                )?;
                for (r, row) in scores.chunks_exact_mut(nk.max(1)).enumerate() {
                    for (s, &pos) in row.iter_mut().zip(&scratch.positions) {
                        if !visible(p0 + t0 + r, pos, cap, sinks) {
                            *s = f32::NEG_INFINITY;
                        }
                    }
                }
                if nk > 0 {
                    kernels::softmax_rows(exec, scores, nk, kernels::SoftmaxOptions::default())?;
                }
                let mut o =
                    kernels::MatMut::new(&mut out[t0 * qrow + head * d..], rows, d, qrow, 1)?;
                kernels::gemm(
                    exec,
                    1.0,
                    kernels::MatRef::row_major(scores, rows, nk)?,
                    values,
                    0.0,
                    &mut o,
                    &mut scratch.ws,
                )?;
            }
        }
    }
    cache.append_many(layer, k, v)
}
