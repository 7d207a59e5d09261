//! The contiguous ring-buffer KV cache: one allocation, fixed capacity, every layer.
//!
//! Layout: `[layer][K | V][kv_head][slot][head_dim]`. For one KV head, the keys (and values) of
//! consecutive slots are contiguous, so a decode step streams one block per head.
//!
//! Ring semantics with `S` sinks and capacity `W`: positions `0..S` go to slots `0..S` and are
//! never overwritten; position `p ≥ S` goes to slot `S + (p − S) mod (W − S)`, overwriting the
//! oldest non-sink entry once full. The cache therefore holds the sinks plus the last `W − S`
//! positions, and a query at position `p` attends exactly to those (sliding-window attention;
//! with `S = 0` the window is the last `W` positions, the query's own included). Attention is
//! order-invariant, so occupied slots are read in slot order: `0..len` is always contiguous.

use crate::error::{DecodeError, Result, check_eq};
use kernels::{Bf16, KvDtype, KvRows, LargeBuffer};

/// Shape and policy of a [`KvCache`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheConfig {
    /// Transformer layers.
    pub layers: usize,
    /// Key/value heads per layer.
    pub kv_heads: usize,
    /// Elements per head.
    pub head_dim: usize,
    /// Token slots `W` (the attention window).
    pub capacity: usize,
    /// Leading positions pinned forever (attention sinks); `< capacity`.
    pub sinks: usize,
    /// Storage type.
    pub dtype: KvDtype,
}

impl CacheConfig {
    /// Checks the configuration.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(DecodeError::InvalidConfig(m));
        if self.layers == 0 || self.kv_heads == 0 || self.head_dim == 0 {
            return bad(format!(
                "layers ({}), kv_heads ({}) and head_dim ({}) must be positive",
                self.layers, self.kv_heads, self.head_dim
            ));
        }
        if self.capacity == 0 {
            return bad("capacity must be positive".into());
        }
        if self.sinks >= self.capacity {
            return bad(format!(
                "sinks ({}) must be fewer than capacity ({})",
                self.sinks, self.capacity
            ));
        }
        self.total_elements()
            .and_then(|e| e.checked_mul(self.dtype.bytes()))
            .ok_or_else(|| DecodeError::InvalidConfig("cache size overflows usize".into()))?;
        Ok(())
    }

    fn total_elements(&self) -> Option<usize> {
        2usize
            .checked_mul(self.layers)?
            .checked_mul(self.kv_heads)?
            .checked_mul(self.capacity)?
            .checked_mul(self.head_dim)
    }

    /// Bytes of K and V one token occupies across all layers (saturating at `usize::MAX` for
    /// a config too large to exist, which [`validate`](Self::validate) rejects).
    pub fn bytes_per_token(&self) -> usize {
        [
            self.layers,
            self.kv_heads,
            self.head_dim,
            self.dtype.bytes(),
        ]
        .into_iter()
        .fold(2usize, usize::saturating_mul)
    }

    /// Bytes of the whole cache (saturating, as [`bytes_per_token`](Self::bytes_per_token)).
    pub fn bytes(&self) -> usize {
        self.bytes_per_token().saturating_mul(self.capacity)
    }
}

/// On huge pages where the OS allows: a step streams the whole cache, and with 4 KiB pages the
/// TLB misses slow that stream (see [`LargeBuffer`]).
enum Storage {
    F32(LargeBuffer<f32>),
    Bf16(LargeBuffer<Bf16>),
}

/// A fixed-capacity ring of keys and values for every layer, allocated once.
pub struct KvCache {
    cfg: CacheConfig,
    storage: Storage,
    /// Next position to be written, per layer (layers advance one after another in a step).
    next: Vec<usize>,
}

impl std::fmt::Debug for KvCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvCache")
            .field("cfg", &self.cfg)
            .field("next", &self.next)
            .finish()
    }
}

impl KvCache {
    /// Allocates the cache (zeroed), the only allocation it ever makes.
    pub fn new(cfg: CacheConfig) -> Result<Self> {
        cfg.validate()?;
        let n = cfg.total_elements().expect("validated");
        let storage = match cfg.dtype {
            KvDtype::F32 => Storage::F32(LargeBuffer::zeroed(n)?),
            KvDtype::Bf16 => Storage::Bf16(LargeBuffer::zeroed(n)?),
        };
        Ok(Self {
            cfg,
            storage,
            next: vec![0; cfg.layers],
        })
    }

    /// The configuration.
    pub fn config(&self) -> &CacheConfig {
        &self.cfg
    }

    /// Bytes allocated for keys and values.
    pub fn bytes(&self) -> usize {
        self.cfg.bytes()
    }

    /// The next position layer 0 will write (= tokens appended so far).
    pub fn next_position(&self) -> usize {
        self.next[0]
    }

    /// The next position of `layer`.
    pub fn layer_position(&self, layer: usize) -> Result<usize> {
        self.check_layer(layer)?;
        Ok(self.next[layer])
    }

    /// Tokens held (layer 0): `min(next_position, capacity)`.
    pub fn len(&self) -> usize {
        self.len_at(self.next[0])
    }

    /// True when nothing has been appended.
    pub fn is_empty(&self) -> bool {
        self.next[0] == 0
    }

    fn len_at(&self, next: usize) -> usize {
        next.min(self.cfg.capacity)
    }

    /// The slot that position `pos` occupies.
    pub fn slot_of(&self, pos: usize) -> usize {
        let (s, w) = (self.cfg.sinks, self.cfg.capacity);
        if pos < s {
            pos
        } else {
            s + (pos - s) % (w - s)
        }
    }

    /// The earliest non-sink position still held when `next` positions have been written.
    fn window_start(&self, next: usize) -> usize {
        let (s, w) = (self.cfg.sinks, self.cfg.capacity);
        if next <= w { 0 } else { next - (w - s) }
    }

    /// The position held by each occupied slot of layer 0, in slot order.
    pub fn positions(&self) -> Vec<usize> {
        self.positions_at(self.next[0])
    }

    pub(crate) fn positions_at(&self, next: usize) -> Vec<usize> {
        let mut out = vec![0; self.len_at(next)];
        for p in self.held_at(next) {
            out[self.slot_of(p)] = p;
        }
        out
    }

    /// The positions held when `next` is the next one, in increasing order (the sinks, then
    /// the window), without allocating.
    pub(crate) fn held_at(&self, next: usize) -> impl Iterator<Item = usize> + use<> {
        let sinks = self.cfg.sinks.min(next);
        (0..sinks).chain(self.window_start(next).max(sinks)..next)
    }

    /// Forgets every position (storage is kept, not cleared).
    pub fn reset(&mut self) {
        self.next.iter_mut().for_each(|n| *n = 0);
    }

    /// Rolls every layer back so that `pos` is the next position (speculative decoding).
    /// Fails when the ring has already overwritten entries the shorter history would attend to.
    pub fn truncate(&mut self, pos: usize) -> Result<()> {
        let (lo, hi) = self
            .next
            .iter()
            .fold((usize::MAX, 0), |(lo, hi), &n| (lo.min(n), hi.max(n)));
        if pos > lo {
            return Err(DecodeError::RollbackBeyondEnd { to: pos, next: lo });
        }
        // Any layer that has wrapped (even one a step ahead of the others) has overwritten
        // entries an earlier position's window needs; a history of sinks alone is always
        // there (sinks are never overwritten).
        let earliest = if hi <= self.cfg.capacity { 0 } else { hi };
        if pos < earliest && pos > self.cfg.sinks {
            return Err(DecodeError::RollbackUnavailable { to: pos, earliest });
        }
        self.next.iter_mut().for_each(|n| *n = pos);
        Ok(())
    }

    fn check_layer(&self, layer: usize) -> Result<()> {
        if layer < self.cfg.layers {
            Ok(())
        } else {
            Err(DecodeError::LayerOutOfRange {
                layer,
                layers: self.cfg.layers,
            })
        }
    }

    /// Element offset of slot 0 of (layer, K or V, head).
    fn base(&self, layer: usize, value: bool, head: usize) -> usize {
        let c = &self.cfg;
        ((layer * 2 + value as usize) * c.kv_heads + head) * c.capacity * c.head_dim
    }

    /// Writes one token's keys and values (`kv_heads × head_dim` each, head-major) for `layer`
    /// at its next position, and advances that layer.
    pub fn append(&mut self, layer: usize, k: &[f32], v: &[f32]) -> Result<()> {
        self.check_layer(layer)?;
        let row = self.cfg.kv_heads * self.cfg.head_dim;
        check_eq("appended k length vs kv_heads * head_dim", row, k.len())?;
        check_eq("appended v length vs kv_heads * head_dim", row, v.len())?;
        let slot = self.slot_of(self.next[layer]);
        self.write_slot(layer, slot, k, v);
        self.next[layer] += 1;
        Ok(())
    }

    /// Writes `T` tokens (`k`, `v`: `T × kv_heads × head_dim`) for `layer`; when `T` exceeds
    /// what the ring keeps, only the entries that survive are written.
    pub fn append_many(&mut self, layer: usize, k: &[f32], v: &[f32]) -> Result<()> {
        self.check_layer(layer)?;
        let row = self.cfg.kv_heads * self.cfg.head_dim;
        check_eq("appended k length vs v length", k.len(), v.len())?;
        if !k.len().is_multiple_of(row) {
            return Err(DecodeError::ShapeMismatch {
                what: "appended k length vs a multiple of kv_heads * head_dim",
                expected: k.len().div_ceil(row) * row,
                got: k.len(),
            });
        }
        let t = k.len() / row;
        let start = self.next[layer];
        let end = start + t;
        let keep_from = self.window_start(end).max(start);
        let sinks = self.cfg.sinks;
        for p in (start..end).filter(|&p| p < sinks || p >= keep_from) {
            let i = p - start;
            let slot = self.slot_of(p);
            self.write_slot(
                layer,
                slot,
                &k[i * row..(i + 1) * row],
                &v[i * row..(i + 1) * row],
            );
        }
        self.next[layer] = end;
        Ok(())
    }

    fn write_slot(&mut self, layer: usize, slot: usize, k: &[f32], v: &[f32]) {
        let d = self.cfg.head_dim;
        for h in 0..self.cfg.kv_heads {
            let kb = self.base(layer, false, h) + slot * d;
            let vb = self.base(layer, true, h) + slot * d;
            let (ks, vs) = (&k[h * d..(h + 1) * d], &v[h * d..(h + 1) * d]);
            match &mut self.storage {
                Storage::F32(s) => {
                    s[kb..kb + d].copy_from_slice(ks);
                    s[vb..vb + d].copy_from_slice(vs);
                }
                Storage::Bf16(s) => {
                    kernels::to_bf16(ks, &mut s[kb..kb + d]).expect("lengths match");
                    kernels::to_bf16(vs, &mut s[vb..vb + d]).expect("lengths match");
                }
            }
        }
    }

    /// Keys (`value = false`) or values of `head` in `layer` for slots `slots`, row-major.
    pub fn rows(
        &self,
        layer: usize,
        value: bool,
        head: usize,
        slots: std::ops::Range<usize>,
    ) -> Result<KvRows<'_>> {
        self.check_layer(layer)?;
        if head >= self.cfg.kv_heads || slots.end > self.cfg.capacity || slots.start > slots.end {
            return Err(DecodeError::InvalidConfig(format!(
                "head {head} / slots {slots:?} outside the cache ({} heads, {} slots)",
                self.cfg.kv_heads, self.cfg.capacity
            )));
        }
        let d = self.cfg.head_dim;
        let b = self.base(layer, value, head);
        let r = b + slots.start * d..b + slots.end * d;
        Ok(match &self.storage {
            Storage::F32(s) => KvRows::F32(&s[r]),
            Storage::Bf16(s) => KvRows::Bf16(&s[r]),
        })
    }

    /// One stored element as f32 (for tests and references).
    ///
    /// # Panics
    /// When `layer`, `head`, `slot` or `i` is outside the cache's shape.
    pub fn get(&self, layer: usize, value: bool, head: usize, slot: usize, i: usize) -> f32 {
        let c = &self.cfg;
        assert!(
            layer < c.layers && head < c.kv_heads && slot < c.capacity && i < c.head_dim,
            "KvCache::get: (layer {layer}, head {head}, slot {slot}, element {i}) outside \
             {} layers × {} heads × {} slots × {} elements",
            c.layers,
            c.kv_heads,
            c.capacity,
            c.head_dim
        );
        let idx = self.base(layer, value, head) + slot * self.cfg.head_dim + i;
        match &self.storage {
            Storage::F32(s) => s[idx],
            Storage::Bf16(s) => s[idx].to_f32(),
        }
    }
}
