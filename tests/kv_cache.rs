//! The ring-buffer KV cache: exact slot contents and positions before, at and after the wrap
//! point (with and without attention sinks), bulk appends that cross the wrap or exceed the
//! capacity, rollback, reset, sizes, bf16 storage, and the errors of bad configurations and
//! bad arguments.
//!
//! Every position writes recognisable values (`position · 1000 + head · 100 + element` for K,
//! the negation minus a half for V, a different offset per layer), so each slot can be checked
//! against the position it must hold.

use decode::{CacheConfig, DecodeError, KvCache, KvDtype};
use kernels::{Bf16, KvRows};

const LAYERS: usize = 2;
const KV_HEADS: usize = 2;
const HEAD_DIM: usize = 3;
const ROW: usize = KV_HEADS * HEAD_DIM;

fn config(capacity: usize, sinks: usize) -> CacheConfig {
    CacheConfig {
        layers: LAYERS,
        kv_heads: KV_HEADS,
        head_dim: HEAD_DIM,
        capacity,
        sinks,
        dtype: KvDtype::F32,
    }
}

fn cache(capacity: usize, sinks: usize) -> KvCache {
    KvCache::new(config(capacity, sinks)).expect("valid cache configuration")
}

/// The key element written for (`generation`, `pos`, `layer`, `head`, `i`): exact in f32.
/// `generation` distinguishes values rewritten after a rollback.
fn key(generation: usize, pos: usize, layer: usize, head: usize, i: usize) -> f32 {
    (generation * 1_000_000 + layer * 100_000 + pos * 1000 + head * 100 + i) as f32
}

/// The value element written for the same coordinates (never equal to any key).
fn value(generation: usize, pos: usize, layer: usize, head: usize, i: usize) -> f32 {
    -key(generation, pos, layer, head, i) - 0.5
}

/// One token's K and V rows (`kv_heads × head_dim`, head-major) for `layer`.
fn token(generation: usize, pos: usize, layer: usize) -> (Vec<f32>, Vec<f32>) {
    let mut k = Vec::with_capacity(ROW);
    let mut v = Vec::with_capacity(ROW);
    for head in 0..KV_HEADS {
        for i in 0..HEAD_DIM {
            k.push(key(generation, pos, layer, head, i));
            v.push(value(generation, pos, layer, head, i));
        }
    }
    (k, v)
}

/// `T` tokens' rows for positions `start..start + t`.
fn chunk(generation: usize, start: usize, t: usize, layer: usize) -> (Vec<f32>, Vec<f32>) {
    let mut k = Vec::with_capacity(t * ROW);
    let mut v = Vec::with_capacity(t * ROW);
    for pos in start..start + t {
        let (kt, vt) = token(generation, pos, layer);
        k.extend(kt);
        v.extend(vt);
    }
    (k, v)
}

/// Appends the next position to every layer, one token at a time.
fn append_next(c: &mut KvCache, generation: usize) {
    let pos = c.next_position();
    for layer in 0..LAYERS {
        let (k, v) = token(generation, pos, layer);
        c.append(layer, &k, &v).unwrap();
    }
}

/// Appends `t` positions to every layer with one `append_many` per layer.
fn append_chunk(c: &mut KvCache, generation: usize, t: usize) {
    let start = c.next_position();
    for layer in 0..LAYERS {
        let (k, v) = chunk(generation, start, t, layer);
        c.append_many(layer, &k, &v).unwrap();
    }
}

/// An independent model of the ring: which position each slot holds after positions `0..next`
/// were written one by one (sinks pinned, the rest cycling).
fn model_positions(next: usize, capacity: usize, sinks: usize) -> Vec<usize> {
    let mut slots: Vec<Option<usize>> = vec![None; capacity];
    let mut cursor = sinks; // next ring slot to overwrite
    for pos in 0..next {
        if pos < sinks {
            slots[pos] = Some(pos);
        } else {
            slots[cursor] = Some(pos);
            cursor += 1;
            if cursor == capacity {
                cursor = sinks;
            }
        }
    }
    slots.into_iter().map_while(|s| s).collect()
}

/// Asserts the slot → position map and every stored element of every layer and head.
/// `generation_of(pos)` says which generation of values position `pos` was written with.
fn assert_contents(c: &KvCache, expected: &[usize], generation_of: impl Fn(usize) -> usize) {
    assert_eq!(c.positions(), expected, "positions() per slot");
    assert_eq!(c.len(), expected.len(), "len()");
    for (slot, &pos) in expected.iter().enumerate() {
        assert_eq!(c.slot_of(pos), slot, "slot_of({pos})");
        let generation = generation_of(pos);
        for layer in 0..LAYERS {
            for head in 0..KV_HEADS {
                for i in 0..HEAD_DIM {
                    assert_eq!(
                        c.get(layer, false, head, slot, i),
                        key(generation, pos, layer, head, i),
                        "K layer {layer} head {head} slot {slot} (position {pos}) element {i}"
                    );
                    assert_eq!(
                        c.get(layer, true, head, slot, i),
                        value(generation, pos, layer, head, i),
                        "V layer {layer} head {head} slot {slot} (position {pos}) element {i}"
                    );
                }
            }
        }
    }
}

#[test]
fn model_matches_hand_written_rings() {
    // The model the other tests rely on, checked against rings worked out by hand.
    assert_eq!(model_positions(0, 4, 0), Vec::<usize>::new());
    assert_eq!(model_positions(3, 4, 0), [0, 1, 2]);
    assert_eq!(model_positions(4, 4, 0), [0, 1, 2, 3]);
    assert_eq!(model_positions(9, 4, 0), [8, 5, 6, 7]);
    assert_eq!(model_positions(3, 1, 0), [2]);
    assert_eq!(model_positions(11, 6, 2), [0, 1, 10, 7, 8, 9]);
    assert_eq!(model_positions(15, 7, 0), [14, 8, 9, 10, 11, 12, 13]);
}

#[test]
fn ring_contents_at_the_wrap_points() {
    for w in [1, 4, 7] {
        let checkpoints = [0, w - 1, w, 2 * w + 1];
        let mut c = cache(w, 0);
        for &target in &checkpoints {
            while c.next_position() < target {
                append_next(&mut c, 0);
            }
            assert_eq!(c.next_position(), target, "W={w}");
            assert_eq!(c.is_empty(), target == 0, "W={w}");
            let expected = model_positions(target, w, 0);
            assert_eq!(expected.len(), target.min(w));
            assert_contents(&c, &expected, |_| 0);
        }
    }
}

#[test]
fn ring_contents_hand_checked_for_w4() {
    // W = 4 after 9 positions: slot 0 was overwritten by 4 and then by 8; slots 1..4 hold 5..7.
    let mut c = cache(4, 0);
    for _ in 0..9 {
        append_next(&mut c, 0);
    }
    assert_eq!(c.positions(), [8, 5, 6, 7]);
    assert_eq!(c.get(0, false, 0, 0, 0), 8000.0);
    assert_eq!(
        c.get(1, true, 1, 3, 2),
        -(100_000.0 + 7000.0 + 100.0 + 2.0) - 0.5
    );
    assert_eq!(c.len(), 4);
    assert_eq!(c.next_position(), 9);
}

#[test]
fn sinks_stay_pinned_while_the_ring_turns() {
    // S = 2, W = 6: positions 0 and 1 stay in slots 0 and 1 forever; the other 4 slots cycle.
    let (w, s) = (6, 2);
    let mut c = cache(w, s);
    for next in 1..=40 {
        append_next(&mut c, 0);
        let expected = model_positions(next, w, s);
        assert_contents(&c, &expected, |_| 0);
        if next >= 2 {
            assert_eq!(&expected[..2], [0, 1], "sinks after {next} positions");
        }
        if next > w {
            // The ring part holds exactly the last W − S positions.
            let mut ring = expected[s..].to_vec();
            ring.sort_unstable();
            assert_eq!(ring, (next - (w - s)..next).collect::<Vec<_>>());
        }
    }
    // Worked by hand: after 11 positions the ring holds 7..10, with 10 in slot 2.
    let mut c = cache(w, s);
    for _ in 0..11 {
        append_next(&mut c, 0);
    }
    assert_eq!(c.positions(), [0, 1, 10, 7, 8, 9]);
    assert_eq!(c.slot_of(1), 1);
    assert_eq!(c.slot_of(2), 2);
    assert_eq!(c.slot_of(6), 2);
    assert_eq!(c.slot_of(10), 2);
    assert_eq!(c.slot_of(11), 3);
}

#[test]
fn append_many_crossing_the_wrap_point() {
    // History of 5 in a W = 7 ring, then a chunk of 4 (positions 5..9) that wraps into slot 0.
    let mut c = cache(7, 0);
    for _ in 0..5 {
        append_next(&mut c, 0);
    }
    append_chunk(&mut c, 0, 4);
    assert_eq!(c.next_position(), 9);
    assert_eq!(c.positions(), [7, 8, 2, 3, 4, 5, 6]);
    assert_contents(&c, &model_positions(9, 7, 0), |_| 0);

    // The same with sinks: S = 2, W = 6, history 5, chunk 4 (positions 5..9).
    let mut c = cache(6, 2);
    for _ in 0..5 {
        append_next(&mut c, 0);
    }
    append_chunk(&mut c, 0, 4);
    assert_eq!(c.positions(), [0, 1, 6, 7, 8, 5]);
    assert_contents(&c, &model_positions(9, 6, 2), |_| 0);
}

#[test]
fn append_many_longer_than_the_ring_keeps_the_last_entries() {
    // History 3 in a W = 4 ring, then a chunk of 10 (positions 3..13): only 9..12 survive.
    let mut c = cache(4, 0);
    for _ in 0..3 {
        append_next(&mut c, 0);
    }
    append_chunk(&mut c, 0, 10);
    assert_eq!(c.next_position(), 13);
    assert_eq!(c.positions(), [12, 9, 10, 11]);
    assert_contents(&c, &model_positions(13, 4, 0), |_| 0);

    // A chunk of exactly W on an empty ring, then one of 2·W + 3.
    let mut c = cache(4, 0);
    append_chunk(&mut c, 0, 4);
    assert_contents(&c, &[0, 1, 2, 3], |_| 0);
    append_chunk(&mut c, 0, 11);
    assert_contents(&c, &model_positions(15, 4, 0), |_| 0);

    // With sinks: one sink comes from the history, the other from the chunk.
    let mut c = cache(6, 2);
    append_next(&mut c, 0);
    append_chunk(&mut c, 0, 15);
    assert_eq!(c.next_position(), 16);
    assert_eq!(c.positions(), [0, 1, 14, 15, 12, 13]);
    assert_contents(&c, &model_positions(16, 6, 2), |_| 0);
}

#[test]
fn append_many_equals_appending_one_by_one() {
    // Every split of 0..23 into chunks leaves the same storage as single appends.
    for (w, s) in [(1, 0), (5, 0), (7, 0), (6, 2), (8, 3)] {
        let mut single = cache(w, s);
        for _ in 0..23 {
            append_next(&mut single, 0);
        }
        for chunk_len in [1, 2, 3, 5, 7, 9, 23] {
            let mut bulk = cache(w, s);
            while bulk.next_position() < 23 {
                let t = chunk_len.min(23 - bulk.next_position());
                append_chunk(&mut bulk, 0, t);
            }
            assert_eq!(
                bulk.positions(),
                single.positions(),
                "W={w} S={s} chunk {chunk_len}"
            );
            assert_contents(&bulk, &single.positions(), |_| 0);
        }
    }
}

#[test]
fn empty_append_many_is_a_no_op() {
    let mut c = cache(4, 0);
    append_next(&mut c, 0);
    c.append_many(0, &[], &[]).unwrap();
    assert_eq!(c.next_position(), 1);
    assert_eq!(c.layer_position(0).unwrap(), 1);
    assert_contents(&c, &[0], |_| 0);
}

#[test]
fn layers_advance_independently() {
    let mut c = cache(4, 0);
    let (k, v) = token(0, 0, 0);
    c.append(0, &k, &v).unwrap();
    assert_eq!(c.layer_position(0).unwrap(), 1);
    assert_eq!(c.layer_position(1).unwrap(), 0);
    let (k, v) = token(0, 0, 1);
    c.append(1, &k, &v).unwrap();
    assert_eq!(c.layer_position(1).unwrap(), 1);
    assert_contents(&c, &[0], |_| 0);
}

#[test]
fn truncate_before_the_wrap_then_overwrite() {
    let mut c = cache(8, 0);
    for _ in 0..6 {
        append_next(&mut c, 0);
    }
    // Roll back to 3: positions 3..6 are forgotten.
    c.truncate(3).unwrap();
    assert_eq!(c.next_position(), 3);
    assert_eq!(c.len(), 3);
    assert_contents(&c, &[0, 1, 2], |_| 0);
    // New tokens (generation 1) overwrite the forgotten slots; the old ones are intact.
    for _ in 0..4 {
        append_next(&mut c, 1);
    }
    assert_contents(&c, &[0, 1, 2, 3, 4, 5, 6], |p| usize::from(p >= 3));
    // Continue past the wrap: the ring behaves as if the rollback never happened.
    for _ in 0..5 {
        append_next(&mut c, 1);
    }
    assert_contents(&c, &model_positions(12, 8, 0), |p| usize::from(p >= 3));

    // Rolling back to the current position is a no-op; to position 0 empties the cache.
    let mut c = cache(8, 0);
    for _ in 0..5 {
        append_next(&mut c, 0);
    }
    c.truncate(5).unwrap();
    assert_eq!(c.next_position(), 5);
    c.truncate(0).unwrap();
    assert!(c.is_empty());
    assert_eq!(c.positions(), Vec::<usize>::new());

    // A full but not yet wrapped ring can still roll back anywhere.
    let mut c = cache(4, 0);
    for _ in 0..4 {
        append_next(&mut c, 0);
    }
    c.truncate(1).unwrap();
    append_next(&mut c, 1);
    assert_contents(&c, &[0, 1], |p| usize::from(p >= 1));

    // With sinks, before the ring part has turned over.
    let mut c = cache(6, 2);
    for _ in 0..6 {
        append_next(&mut c, 0);
    }
    c.truncate(2).unwrap();
    for _ in 0..3 {
        append_next(&mut c, 1);
    }
    assert_contents(&c, &[0, 1, 2, 3, 4], |p| usize::from(p >= 2));
}

#[test]
fn truncate_after_the_ring_overwrote_entries_fails() {
    // W = 4 after 6 positions: 0 and 1 were overwritten by 4 and 5, so no rollback can restore
    // the window of a shorter, non-empty history.
    let mut c = cache(4, 0);
    for _ in 0..6 {
        append_next(&mut c, 0);
    }
    let before = c.positions();
    for to in [1, 2, 4, 5] {
        match c.truncate(to) {
            Err(DecodeError::RollbackUnavailable { to: t, earliest }) => {
                assert_eq!(t, to);
                assert!(earliest > to, "earliest {earliest} must exceed {to}");
            }
            other => {
                panic!("truncate({to}) after wrap: expected RollbackUnavailable, got {other:?}")
            }
        }
        // A refused rollback leaves the cache untouched.
        assert_eq!(c.next_position(), 6);
        assert_eq!(c.positions(), before);
        assert_contents(&c, &before, |_| 0);
    }
    // Rolling forward is refused as well.
    assert!(matches!(
        c.truncate(7),
        Err(DecodeError::RollbackBeyondEnd { to: 7, next: 6 })
    ));
    // The current position is always reachable, and so is the empty history.
    c.truncate(6).unwrap();
    c.truncate(0).unwrap();
    assert!(c.is_empty());
    assert_eq!(c.positions(), Vec::<usize>::new());
    append_next(&mut c, 1);
    assert_contents(&c, &[0], |_| 1);

    // With sinks: S = 2, W = 6 after 7 positions (position 2 was overwritten by 6).
    let mut c = cache(6, 2);
    for _ in 0..7 {
        append_next(&mut c, 0);
    }
    assert!(matches!(
        c.truncate(3),
        Err(DecodeError::RollbackUnavailable { to: 3, .. })
    ));
    assert_eq!(c.next_position(), 7);
    // The error explains itself.
    let msg = c.truncate(3).unwrap_err().to_string();
    assert!(msg.contains("roll back"), "{msg}");
    // A history of sinks alone is always there: sinks are never overwritten.
    c.truncate(2).unwrap();
    assert_eq!(c.positions(), vec![0, 1]);
    assert_contents(&c, &[0, 1], |_| 0);
    c.truncate(1).unwrap();
    assert_eq!(c.positions(), vec![0]);
    assert_contents(&c, &[0], |_| 0);
}

/// `get` refuses indices outside the cache's shape (it used to read the neighbouring slot or
/// the V block).
#[test]
fn get_outside_the_shape_panics() {
    let c = cache(4, 0);
    let outside = [
        (LAYERS, 0, 0, 0),
        (0, KV_HEADS, 0, 0),
        (0, 0, 4, 0),
        (0, 0, 0, HEAD_DIM),
    ];
    for (layer, head, slot, i) in outside {
        let r = std::panic::catch_unwind(|| c.get(layer, false, head, slot, i));
        assert!(r.is_err(), "get({layer}, {head}, {slot}, {i}) must panic");
    }
    assert_eq!(c.get(LAYERS - 1, true, KV_HEADS - 1, 3, HEAD_DIM - 1), 0.0);
}

#[test]
fn reset_forgets_everything() {
    let mut c = cache(4, 1);
    for _ in 0..10 {
        append_next(&mut c, 0);
    }
    c.reset();
    assert!(c.is_empty());
    assert_eq!(c.len(), 0);
    assert_eq!(c.next_position(), 0);
    assert_eq!(c.layer_position(1).unwrap(), 0);
    assert_eq!(c.positions(), Vec::<usize>::new());
    for _ in 0..6 {
        append_next(&mut c, 1);
    }
    assert_contents(&c, &model_positions(6, 4, 1), |_| 1);
}

#[test]
fn bytes_counts_both_k_and_v_of_every_layer() {
    for dtype in [KvDtype::F32, KvDtype::Bf16] {
        for (layers, kv_heads, head_dim, capacity) in
            [(1, 1, 1, 1), (2, 2, 3, 7), (32, 8, 128, 4096)]
        {
            let cfg = CacheConfig {
                layers,
                kv_heads,
                head_dim,
                capacity,
                sinks: 0,
                dtype,
            };
            let expected = 2 * layers * kv_heads * capacity * head_dim * dtype.bytes();
            assert_eq!(cfg.bytes(), expected);
            assert_eq!(cfg.bytes_per_token() * capacity, expected);
            if expected < 1 << 20 {
                assert_eq!(KvCache::new(cfg).unwrap().bytes(), expected);
            }
        }
    }
    // A Llama-3-8B-like shape (32 layers, 8 KV heads of 128) holds 8192 bf16 tokens in 1 GiB.
    let cfg = CacheConfig {
        layers: 32,
        kv_heads: 8,
        head_dim: 128,
        capacity: 8192,
        sinks: 0,
        dtype: KvDtype::Bf16,
    };
    assert_eq!(cfg.bytes(), 1 << 30);
}

fn expect_invalid(cfg: CacheConfig, needle: &str) {
    match KvCache::new(cfg) {
        Err(DecodeError::InvalidConfig(m)) => assert!(m.contains(needle), "{m:?} vs {needle:?}"),
        other => panic!("{cfg:?}: expected InvalidConfig, got {other:?}"),
    }
}

#[test]
fn invalid_configurations_are_rejected() {
    expect_invalid(config(0, 0), "capacity");
    expect_invalid(config(4, 4), "sinks");
    expect_invalid(config(4, 9), "sinks");
    expect_invalid(config(1, 1), "sinks");
    expect_invalid(
        CacheConfig {
            layers: 0,
            ..config(4, 0)
        },
        "layers",
    );
    expect_invalid(
        CacheConfig {
            kv_heads: 0,
            ..config(4, 0)
        },
        "kv_heads",
    );
    expect_invalid(
        CacheConfig {
            head_dim: 0,
            ..config(4, 0)
        },
        "head_dim",
    );
    expect_invalid(
        CacheConfig {
            capacity: usize::MAX / 2,
            ..config(4, 0)
        },
        "overflow",
    );
    // The largest valid sink count.
    assert!(KvCache::new(config(4, 3)).is_ok());
}

#[test]
fn bad_arguments_are_rejected_and_change_nothing() {
    let mut c = cache(4, 0);
    append_next(&mut c, 0);
    let (k, v) = token(0, 1, 0);

    // Wrong k or v length for one token.
    assert_eq!(
        c.append(0, &k[..ROW - 1], &v),
        Err(DecodeError::ShapeMismatch {
            what: "appended k length vs kv_heads * head_dim",
            expected: ROW,
            got: ROW - 1,
        })
    );
    assert!(matches!(
        c.append(0, &k, &[v.clone(), vec![0.0]].concat()),
        Err(DecodeError::ShapeMismatch { expected: ROW, got, .. }) if got == ROW + 1
    ));
    // append_many: k and v of different lengths, or not a whole number of tokens.
    let (k2, v2) = chunk(0, 1, 2, 0);
    assert!(matches!(
        c.append_many(0, &k2, &v2[..ROW]),
        Err(DecodeError::ShapeMismatch { .. })
    ));
    assert!(matches!(
        c.append_many(0, &k2[..ROW + 1], &v2[..ROW + 1]),
        Err(DecodeError::ShapeMismatch { expected, got, .. }) if expected == 2 * ROW && got == ROW + 1
    ));
    // Layer out of range, for every call that takes a layer.
    let oob = DecodeError::LayerOutOfRange {
        layer: LAYERS,
        layers: LAYERS,
    };
    assert_eq!(c.append(LAYERS, &k, &v), Err(oob.clone()));
    assert_eq!(c.append_many(LAYERS, &k2, &v2), Err(oob.clone()));
    assert_eq!(c.layer_position(LAYERS), Err(oob.clone()));
    assert!(matches!(
        c.rows(LAYERS, false, 0, 0..1),
        Err(DecodeError::LayerOutOfRange {
            layer: LAYERS,
            layers: LAYERS
        })
    ));
    // Head or slots outside the cache.
    assert!(matches!(
        c.rows(0, false, KV_HEADS, 0..1),
        Err(DecodeError::InvalidConfig(_))
    ));
    assert!(matches!(
        c.rows(0, true, 0, 0..5),
        Err(DecodeError::InvalidConfig(_))
    ));
    // Errors say which quantities disagree.
    let msg = c.append(0, &k[..1], &v).unwrap_err().to_string();
    assert!(msg.contains("expected 6, got 1"), "{msg}");
    let msg = c.append(7, &k, &v).unwrap_err().to_string();
    assert!(msg.contains("layer 7"), "{msg}");

    // None of the refused calls wrote or advanced anything.
    assert_eq!(c.next_position(), 1);
    assert_eq!(c.layer_position(1).unwrap(), 1);
    assert_contents(&c, &[0], |_| 0);
    for i in 0..HEAD_DIM {
        assert_eq!(c.get(0, false, 0, 1, i), 0.0, "slot 1 must still be zeroed");
    }
}

#[test]
fn rows_expose_contiguous_slots() {
    let mut c = cache(4, 0);
    for _ in 0..3 {
        append_next(&mut c, 0);
    }
    match c.rows(1, true, 1, 0..3).unwrap() {
        KvRows::F32(r) => {
            assert_eq!(r.len(), 3 * HEAD_DIM);
            for slot in 0..3 {
                for i in 0..HEAD_DIM {
                    assert_eq!(r[slot * HEAD_DIM + i], value(0, slot, 1, 1, i));
                }
            }
        }
        KvRows::Bf16(_) => panic!("f32 cache returned bf16 rows"),
    }
    assert!(c.rows(0, false, 0, 2..2).unwrap().is_empty());
}

#[test]
fn bf16_cache_stores_rounded_values() {
    let cfg = CacheConfig {
        layers: 1,
        kv_heads: 1,
        head_dim: 4,
        capacity: 3,
        sinks: 0,
        dtype: KvDtype::Bf16,
    };
    let mut c = KvCache::new(cfg).unwrap();
    // bf16 keeps 8 significant bits: near 1 the spacing is 2⁻⁷ = 0.0078125.
    let k = [
        1.0 + 1.0 / 256.0,
        1.0 + 3.0 / 256.0,
        std::f32::consts::PI,
        -1.0e-3,
    ];
    let v = [0.1f32, 1.0, 65_537.0, 5.0];
    c.append(0, &k, &v).unwrap();
    // Hand-rounded, nearest-even: 1 + 2⁻⁸ is a tie and goes down to 1; 1 + 3·2⁻⁸ is a tie and
    // goes up to the even 1 + 2·2⁻⁷; π → 3.140625; 65537 → 65536.
    assert_eq!(c.get(0, false, 0, 0, 0), 1.0);
    assert_eq!(c.get(0, false, 0, 0, 1), 1.015625);
    assert_eq!(c.get(0, false, 0, 0, 2), 3.140625);
    assert_eq!(c.get(0, true, 0, 0, 2), 65_536.0);
    assert_eq!(c.get(0, true, 0, 0, 1), 1.0);
    assert_eq!(c.get(0, true, 0, 0, 3), 5.0);
    for i in 0..4 {
        for (value, src) in [(false, k[i]), (true, v[i])] {
            let got = c.get(0, value, 0, 0, i);
            assert_eq!(got, Bf16::from_f32(src).to_f32());
            assert!(
                (got - src).abs() <= src.abs() / 256.0,
                "{src} stored as {got}"
            );
        }
    }
    assert!(matches!(c.rows(0, false, 0, 0..1).unwrap(), KvRows::Bf16(r) if r.len() == 4));
    // Half the bytes of the f32 cache.
    assert_eq!(c.bytes(), 2 * 3 * 4 * 2);
    assert_eq!(
        c.bytes() * 2,
        KvCache::new(CacheConfig {
            dtype: KvDtype::F32,
            ..cfg
        })
        .unwrap()
        .bytes()
    );
    // The ring logic is the same as for f32: append_many with wrap.
    let ks: Vec<f32> = (0..5 * 4).map(|x| x as f32 + 0.25).collect();
    c.append_many(0, &ks, &ks).unwrap();
    assert_eq!(c.positions(), [3, 4, 5]);
    // Position 4 went to slot 1 (ring of 3): its first element was 3·4 + 0.25 = 12.25, which
    // bf16 holds exactly.
    assert_eq!(c.get(0, false, 0, 1, 0), 12.25);
}

/// A step that stopped part-way (layer 0 appended, layer 1 not) after layer 0 wrapped: rolling
/// back must be refused, since layer 0 already overwrote an entry the earlier window needs.
#[test]
fn rollback_refused_when_any_layer_wrapped() {
    let cfg = decode::CacheConfig {
        layers: 2,
        kv_heads: 1,
        head_dim: 2,
        capacity: 4,
        sinks: 0,
        dtype: kernels::KvDtype::F32,
    };
    let mut c = decode::KvCache::new(cfg).unwrap();
    for p in 0..4 {
        for layer in 0..2 {
            c.append(layer, &[p as f32; 2], &[p as f32; 2]).unwrap();
        }
    }
    c.append(0, &[4.0; 2], &[4.0; 2]).unwrap(); // layer 0 at 5 (wrapped), layer 1 at 4
    assert!(matches!(
        c.truncate(3),
        Err(DecodeError::RollbackUnavailable { to: 3, earliest: 5 })
    ));
    // Even the common position 4 is out of reach: layer 0's write of position 4 overwrote
    // position 0, which the window ending at 3 needs.
    c.truncate(4).unwrap_err();
    assert_eq!(c.layer_position(0).unwrap(), 5);
}

/// A cache of several MiB, large enough to take `LargeBuffer`'s mapping path (huge pages where
/// the OS allows) rather than the heap: it starts zeroed, holds what is appended, and turns
/// over like any other.
#[test]
fn multi_mib_cache_is_zeroed_and_wraps() {
    let (layers, kv_heads, head_dim, capacity) = (2, 2, 128, 2048);
    for dtype in [KvDtype::F32, KvDtype::Bf16] {
        let mut cache = KvCache::new(CacheConfig {
            layers,
            kv_heads,
            head_dim,
            capacity,
            sinks: 0,
            dtype,
        })
        .unwrap();
        assert!(cache.bytes() >= 4 << 20);
        for slot in [0, 1, capacity / 2, capacity - 1] {
            for layer in 0..layers {
                assert_eq!(cache.get(layer, false, 1, slot, head_dim - 1), 0.0);
                assert_eq!(cache.get(layer, true, 0, slot, 0), 0.0);
            }
        }
        // Small integers are exact in bf16 too.
        let elem = |pos: usize, layer: usize, head: usize, i: usize| -> f32 {
            ((pos * 7 + layer * 3 + head * 5 + i) % 251) as f32
        };
        let total = capacity + 5;
        for pos in 0..total {
            for layer in 0..layers {
                let k: Vec<f32> = (0..kv_heads * head_dim)
                    .map(|j| elem(pos, layer, j / head_dim, j % head_dim))
                    .collect();
                let v: Vec<f32> = k.iter().map(|x| -x).collect();
                cache.append(layer, &k, &v).unwrap();
            }
        }
        assert_eq!(cache.len(), capacity);
        for pos in [5, 6, capacity, total - 1] {
            let slot = cache.slot_of(pos);
            assert_eq!(slot, pos % capacity);
            for layer in 0..layers {
                for (head, i) in [(0, 0), (1, head_dim - 1), (1, 37)] {
                    let want = elem(pos, layer, head, i);
                    assert_eq!(
                        cache.get(layer, false, head, slot, i),
                        want,
                        "{dtype:?} {pos}"
                    );
                    assert_eq!(
                        cache.get(layer, true, head, slot, i),
                        -want,
                        "{dtype:?} {pos}"
                    );
                }
            }
        }
    }
}
