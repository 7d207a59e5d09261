//! Attention over the cache: the fused one-token decode kernel (flash-decoding) and chunked
//! causal prefill on the matmul kernels.
//!
//! Decode, for a query at the cache's newest position: every occupied slot is visible (the ring
//! holds exactly the window), so each KV head's keys and values are streamed once, block by
//! block: for each block, every query head of the group computes `s = scale·K_blk·q`, folds it
//! into its running [`OnlineSoftmax`] state and adds `softmax weights · V_blk` to its
//! accumulator (`kernels::attend_partial`). Each key and value row is loaded once, into
//! registers, and used by every query head of the group, so a KV head's cache is read from
//! memory once per step however many query heads share it. Work items are (KV head, sequence
//! split); splits are merged with the exact log-sum-exp rule, so one head at 32k tokens uses
//! every thread.
//!
//! Prefill, for a chunk of T queries: work items are (KV head, 64-query tile), the group's
//! query heads stacked into one (64·g) × head_dim matrix. The keys a tile sees form a few runs
//! of consecutive positions (the sinks, the ring's one or two runs of slots, the chunk's own
//! rows); f32 runs are read where they lie, bf16 runs widened once. Keys go in blocks (flash
//! attention on the matmul kernels): `scores = scale·Q·K_blkᵀ` by GEMM into an L2-sized
//! tile, the causal and window mask, each query row's running [`OnlineSoftmax`] state, the
//! output rows rescaled by its factor and `P·V_blk` added by GEMM; one division at the end. A
//! tile whose keys are one short run (a first prompt of up to ~1k tokens) takes them as one
//! block with a plain row softmax.

use crate::cache::KvCache;
use crate::error::{DecodeError, Result, check_eq};
use kernels::{Exec, OnlineSoftmax, Parallelism};
use std::ops::Range;

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
        // Every buffer sized from a config (a token's queries, a group's attention scratch)
        // must be allocatable: at most isize::MAX bytes.
        let fits = |floats: Option<usize>| {
            floats
                .and_then(|f| f.checked_mul(std::mem::size_of::<f32>()))
                .is_some_and(|bytes| bytes <= isize::MAX as usize)
        };
        if !fits(self.heads.checked_mul(self.head_dim))
            || !fits(Some(kernels::attend_scratch_len(
                self.group(),
                self.head_dim,
            )))
        {
            return Err(DecodeError::InvalidConfig(format!(
                "heads ({}) × head_dim ({}) is too large for any buffer",
                self.heads, self.head_dim
            )));
        }
        Ok(())
    }

    /// Query heads per KV head (0 when `kv_heads` is 0, which [`validate`](Self::validate)
    /// rejects).
    pub fn group(&self) -> usize {
        self.heads.checked_div(self.kv_heads).unwrap_or(0)
    }

    /// `1/√head_dim`.
    pub fn scale(&self) -> f32 {
        1.0 / (self.head_dim as f32).sqrt()
    }

    pub(crate) fn check_cache(&self, cache: &KvCache) -> Result<()> {
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
        if max_splits > MAX_SPLITS {
            return Err(DecodeError::InvalidConfig(format!(
                "max_splits ({max_splits}) exceeds MAX_SPLITS ({MAX_SPLITS})"
            )));
        }
        let g = heads.group();
        let partials = (0..heads.kv_heads * max_splits)
            .map(|_| Partial {
                states: vec![OnlineSoftmax::EMPTY; g],
                acc: vec![0.0; g * heads.head_dim],
                // Room for the longest block of either storage type.
                scores: vec![0.0; kernels::attend_scratch_len(g, heads.head_dim)],
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

    /// Fails unless this scratch was sized for `heads`.
    pub fn check(&self, heads: &HeadConfig) -> Result<()> {
        if self.heads == *heads {
            Ok(())
        } else {
            Err(DecodeError::InvalidConfig(format!(
                "decode scratch was sized for {:?}, called with {:?}",
                self.heads, heads
            )))
        }
    }

    /// The most splits this scratch supports.
    pub fn max_splits(&self) -> usize {
        self.max_splits
    }
}

/// Most sequence splits per KV head a [`DecodeScratch`] may hold: far more than any thread
/// count needs (the default policy uses two work items per thread), and a bound on the
/// scratch's size.
pub const MAX_SPLITS: usize = 1024;

fn default_max_splits(heads: &HeadConfig, threads: usize) -> usize {
    // Enough (KV head, split) items for two per thread.
    // (`max(1)`: an unvalidated config must not divide by zero; `DecodeScratch::new`
    // validates it after.)
    threads
        .saturating_mul(2)
        .div_ceil(heads.kv_heads.max(1))
        .clamp(1, MAX_SPLITS)
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
///
/// The split count follows the thread count (unless forced with [`DecodeOptions::splits`]), and
/// splits change the f32 summation order, so outputs for different thread counts agree to
/// rounding (≈1e-6 relative), not bit for bit; force `splits` for reproducible output.
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
    scratch.check(heads)?;
    let d = heads.head_dim;
    check_eq("q length vs heads * head_dim", heads.heads * d, q.len())?;
    check_eq("out length vs heads * head_dim", heads.heads * d, out.len())?;
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

/// One worker's buffers for a prefill tile: the runs of keys it sees, the keys and values of
/// bf16 runs widened (f32 runs, in the cache or the chunk, are read in place; `Q·Kᵀ` reads
/// keys through a transposed view, which the GEMM packs with register transposes), one key
/// block's scores, each query row's softmax state and the output tile.
#[derive(Default)]
struct TileScratch {
    queries: Vec<f32>,
    key_rows: Vec<f32>,
    values: Vec<f32>,
    scores: Vec<f32>,
    out: Vec<f32>,
    runs: Vec<KeyRun>,
    states: Vec<OnlineSoftmax>,
    keep: Vec<f32>,
    ws: kernels::GemmWorkspace,
}

/// Bytes of one key block's scores in a prefill tile: with the block's keys and values they
/// stay in L2 (a block is 512 keys at 4 query heads per KV head, 256 at 8). A tile whose keys
/// are one run of up to twice that takes them as one block, with a plain softmax.
const SCORE_BLOCK_BYTES: usize = 512 << 10;

/// Keys per block for a tile of `qrows` query rows (whole multiples of 32 keys, 256 to 1024).
fn key_block(qrows: usize) -> usize {
    (SCORE_BLOCK_BYTES / (4 * qrows.max(1))).clamp(256, 1024) / 32 * 32
}

/// Keys at consecutive positions `pos .. pos + len`, and where their rows are.
struct KeyRun {
    pos: usize,
    len: usize,
    src: RunSource,
}

/// Where a [`KeyRun`]'s rows are.
#[derive(Clone, Copy)]
enum RunSource {
    /// Slots `slot ..` of an f32 cache, in place.
    Cache(usize),
    /// The chunk's rows `j ..` (`k` and `v`, a row of all KV heads apart), in place.
    Chunk(usize),
    /// Rows `at ..` of the tile's gathered (widened) keys and values.
    Gathered(usize),
}

/// Reusable buffers of [`prefill_attention`]: one tile scratch per worker thread, and the list
/// of cached positions; they grow to the largest chunk (and cache) seen, after which a prefill
/// allocates nothing.
#[derive(Default)]
pub struct PrefillScratch {
    workers: Vec<std::sync::Mutex<TileScratch>>,
    cached: Vec<(usize, usize)>,
}

impl PrefillScratch {
    /// Empty scratch.
    pub fn new() -> Self {
        Self::default()
    }
}

/// The output of a prefill, written by tiles that own disjoint (row, head) blocks.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);

impl SharedOut {
    /// The pointer `offset` floats further (arithmetic only; no access).
    fn at(self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}
// SAFETY: built from the exclusively borrowed `out` of `prefill_attention`; each tile writes
// only its own rows × its KV group's heads, which no other tile touches.
unsafe impl Send for SharedOut {}
// SAFETY: as above; the pointer itself is never changed.
unsafe impl Sync for SharedOut {}

/// Sets to −∞ the scores of the keys at positions `keys` (one score each, in order) that
/// `query` does not see: the visible ones are the sinks up to the query and the contiguous run
/// of the last `capacity − sinks` positions up to it.
fn mask_invisible(
    scores: &mut [f32],
    keys: Range<usize>,
    query: usize,
    capacity: usize,
    sinks: usize,
) {
    // How many of the keys lie before position `p`.
    let before = |p: usize| p.clamp(keys.start, keys.end) - keys.start;
    let sink_end = before(sinks.min(query + 1));
    let window_start = sinks.max((query + 1).saturating_sub(capacity - sinks));
    let lo = before(window_start);
    let hi = before(query + 1);
    let neg = f32::NEG_INFINITY;
    if hi <= lo {
        scores[sink_end..].fill(neg);
    } else {
        scores[sink_end..lo].fill(neg);
        scores[hi..].fill(neg);
    }
    // With finite scores, exactly the invisible keys are −∞.
    debug_assert!(
        scores
            .iter()
            .zip(keys)
            .all(|(s, p)| !s.is_finite() || visible(query, p, capacity, sinks))
    );
}

/// Appends stored rows to `out` as f32 (bf16 widens exactly).
fn push_stored(out: &mut Vec<f32>, rows: kernels::KvRows<'_>) {
    match rows {
        kernels::KvRows::F32(r) => out.extend_from_slice(r),
        kernels::KvRows::Bf16(r) => out.extend(r.iter().map(|x| x.to_f32())),
    }
}

/// Appends `row` as the cache will store it: rounded through bf16 when `bf16`.
fn push_as_stored(out: &mut Vec<f32>, row: &[f32], bf16: bool) {
    if bf16 {
        out.extend(row.iter().map(|x| kernels::Bf16::from_f32(*x).to_f32()));
    } else {
        out.extend_from_slice(row);
    }
}

/// Whether a query at `query` sees a key at `key` in a ring of `capacity` with `sinks`.
pub fn visible(query: usize, key: usize, capacity: usize, sinks: usize) -> bool {
    key <= query && (key < sinks || query - key < capacity.saturating_sub(sinks))
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
    check_eq("k length vs T * kv_heads * head_dim", t * kvrow, k.len())?;
    check_eq("v length vs T * kv_heads * head_dim", t * kvrow, v.len())?;
    check_eq("out length vs T * heads * head_dim", t * qrow, out.len())?;
    let p0 = cache.layer_position(layer)?;
    let (cap, sinks) = (cache.config().capacity, cache.config().sinks);
    // (slot, position) of what the cache holds, in position order.
    scratch.cached.clear();
    scratch
        .cached
        .extend(cache.held_at(p0).map(|pos| (cache.slot_of(pos), pos)));
    let cached = &scratch.cached;
    let bf16 = cache.config().dtype == kernels::KvDtype::Bf16;

    let tiles = t.div_ceil(PREFILL_TILE);
    let items = heads.kv_heads * tiles;
    let threads = exec.threads();
    if scratch.workers.len() < threads + 1 {
        scratch.workers.resize_with(threads + 1, Default::default);
    }
    let inner = exec.with_parallelism(Parallelism::Sequential);
    let shared = SharedOut(out.as_mut_ptr());
    let cache_ref = &*cache;
    let workers = &scratch.workers;
    let run = |item: usize| -> Result<()> {
        let (kv, t0) = (item / tiles, (item % tiles) * PREFILL_TILE);
        let t1 = (t0 + PREFILL_TILE).min(t);
        let (first, last) = (p0 + t0, p0 + t1 - 1);
        // The pool's worker index picks the buffers; the lock is never contended (a worker
        // runs one item at a time and items make no nested parallel calls).
        let slot = rayon::current_thread_index().map_or(threads, |i| i.min(threads));
        let mut guard = workers[slot].lock().unwrap_or_else(|e| e.into_inner());
        let TileScratch {
            queries,
            key_rows,
            values,
            scores,
            out: tile_out,
            runs,
            states,
            keep,
            ws,
        } = &mut *guard;
        key_rows.clear();
        values.clear();
        runs.clear();
        let tile_sees =
            |pos: usize| visible(last, pos, cap, sinks) || visible(first, pos, cap, sinks);
        // Keys any query of the tile can see, in position order, as runs of consecutive
        // positions: cached slots, then the chunk's own rows (all later than anything cached).
        // An f32 run is read where it lies; bf16 rows are widened into the scratch.
        let mut i = 0;
        while i < cached.len() {
            let (slot, pos) = cached[i];
            if !tile_sees(pos) {
                i += 1;
                continue;
            }
            let mut n = 1;
            while i + n < cached.len() && cached[i + n] == (slot + n, pos + n) && tile_sees(pos + n)
            {
                n += 1;
            }
            let src = if bf16 {
                let at = key_rows.len() / d;
                push_stored(key_rows, cache_ref.rows(layer, false, kv, slot..slot + n)?);
                push_stored(values, cache_ref.rows(layer, true, kv, slot..slot + n)?);
                RunSource::Gathered(at)
            } else {
                RunSource::Cache(slot)
            };
            runs.push(KeyRun { pos, len: n, src });
            i += n;
        }
        // The chunk's own rows this tile sees: some query of the tile sees row j iff the
        // earliest query at or after it does (a later query may have slid past it; `first`
        // may precede it).
        let seen = |j: usize| visible(first.max(p0 + j), p0 + j, cap, sinks);
        let mut j = 0;
        while j < t1 {
            if !seen(j) {
                j += 1;
                continue;
            }
            let mut n = 1;
            while j + n < t1 && seen(j + n) {
                n += 1;
            }
            let src = if bf16 {
                // A bf16 cache is attended as what it will hold, so prefill equals decode.
                let at = key_rows.len() / d;
                for r in j..j + n {
                    let row = r * kvrow + kv * d;
                    push_as_stored(key_rows, &k[row..row + d], true);
                    push_as_stored(values, &v[row..row + d], true);
                }
                RunSource::Gathered(at)
            } else {
                RunSource::Chunk(j)
            };
            runs.push(KeyRun {
                pos: p0 + j,
                len: n,
                src,
            });
            j += n;
        }
        let rows = t1 - t0;
        // The group's query heads as one (rows·g) × d matrix: one product per key block.
        queries.resize(rows * g * d, 0.0);
        for r in 0..rows {
            let src = &q[(t0 + r) * qrow + kv * g * d..(t0 + r) * qrow + (kv + 1) * g * d];
            queries[r * g * d..(r + 1) * g * d].copy_from_slice(src);
        }
        let qrows = rows * g;
        let queries = kernels::MatRef::row_major(queries, qrows, d)?;
        tile_out.clear();
        tile_out.resize(qrows * d, 0.0);
        states.clear();
        states.resize(qrows, OnlineSoftmax::EMPTY);
        let block = key_block(qrows);
        let single_block = runs.len() == 1 && runs[0].len <= 2 * block;
        let block = if single_block { runs[0].len } else { block };
        // Flash-attention order: block by block of keys, scores into an L2-sized tile, each
        // query row's running softmax state, and the output rescaled and accumulated.
        for run in runs.iter() {
            let (kr, vr, stride) = match run.src {
                RunSource::Cache(slot) => {
                    let (kr, vr) = (
                        cache_ref.rows(layer, false, kv, slot..slot + run.len)?,
                        cache_ref.rows(layer, true, kv, slot..slot + run.len)?,
                    );
                    match (kr, vr) {
                        (kernels::KvRows::F32(kr), kernels::KvRows::F32(vr)) => (kr, vr, d),
                        _ => unreachable!("in-place runs are f32"),
                    }
                }
                RunSource::Chunk(j) => (&k[j * kvrow + kv * d..], &v[j * kvrow + kv * d..], kvrow),
                RunSource::Gathered(at) => (&key_rows[at * d..], &values[at * d..], d),
            };
            for b0 in (0..run.len).step_by(block) {
                let nb = block.min(run.len - b0);
                let (kb, vb) = (&kr[b0 * stride..], &vr[b0 * stride..]);
                scores.resize(qrows * nb, 0.0);
                kernels::gemm(
                    &inner,
                    heads.scale(),
                    queries,
                    kernels::MatRef::new(kb, nb, d, stride, 1)?.t(),
                    0.0,
                    &mut kernels::MatMut::row_major(scores, qrows, nb)?,
                    ws,
                )?;
                let keys = run.pos + b0..run.pos + b0 + nb;
                for (i, row) in scores.chunks_exact_mut(nb).enumerate() {
                    mask_invisible(row, keys.clone(), p0 + t0 + i / g, cap, sinks);
                }
                if single_block {
                    // All the tile's keys in one block: a plain softmax, normalised weights.
                    kernels::softmax_rows(&inner, scores, nb, kernels::SoftmaxOptions::default())?;
                } else {
                    keep.resize(qrows, 1.0);
                    OnlineSoftmax::absorb_rows(&inner, states, scores, nb, keep)?;
                    // A factor of 0 comes only before the first finite score, when the row
                    // holds nothing yet (or NaN, which stays NaN either way).
                    for (o, &f) in tile_out.chunks_exact_mut(d).zip(keep.iter()) {
                        if f != 1.0 && f != 0.0 {
                            o.iter_mut().for_each(|x| *x *= f);
                        }
                    }
                }
                kernels::gemm(
                    &inner,
                    1.0,
                    kernels::MatRef::row_major(scores, qrows, nb)?,
                    kernels::MatRef::new(vb, nb, d, stride, 1)?,
                    1.0,
                    &mut kernels::MatMut::row_major(tile_out, qrows, d)?,
                    ws,
                )?;
            }
        }
        if !single_block {
            for (o, state) in tile_out.chunks_exact_mut(d).zip(states.iter()) {
                let inv = state.inverse_sum();
                o.iter_mut().for_each(|x| *x *= inv);
            }
        }
        for r in 0..rows {
            let dst = shared.at((t0 + r) * qrow + kv * g * d);
            // SAFETY: row t0 + r < T and the group's heads kv·g .. (kv+1)·g ≤ heads, so these
            // g·d floats lie inside `out` (checked to be T·heads·d long); only this tile
            // writes them.
            unsafe { std::ptr::copy_nonoverlapping(tile_out[r * g * d..].as_ptr(), dst, g * d) };
        }
        Ok(())
    };
    if threads > 1 && items > 1 {
        use rayon::prelude::*;
        (0..items).into_par_iter().try_for_each(run)?;
    } else {
        (0..items).try_for_each(run)?;
    }
    cache.append_many(layer, k, v)
}
