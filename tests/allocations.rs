//! "A loop of calls allocates nothing": every hot entry point, called again with buffers sized
//! by an earlier call, must not touch the heap. A counting global allocator sees every
//! allocation of the process (rayon's workers included) while a measured section runs; the
//! sections run one at a time from the single test below.

mod common;

use common::{pool, random_vec, rng};
use decode::{
    AttentionLayer, CacheConfig, HeadConfig, KvCache, KvDtype, LayerConfig, LayerScratch,
    LayerWeights, Rope,
};
use kernels::{
    Exec, GemmWorkspace, Isa, KvRows, MatMut, MatRef, OnlineSoftmax, PackedB, Parallelism,
    SoftmaxOptions,
};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// The system allocator, counting the allocations made while `COUNTING` is set.
struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);
static LAST_SIZE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator; counting has no effect
// on the memory handed out.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
            LAST_SIZE.store(layout.size(), Ordering::Relaxed);
        }
        // SAFETY: the caller's contract for `alloc` is passed on.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: the caller's contract for `realloc` is passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations made while `f` runs (on any thread).
fn allocations_in(f: impl FnOnce()) -> usize {
    ALLOCATIONS.store(0, Ordering::SeqCst);
    COUNTING.store(true, Ordering::SeqCst);
    f();
    COUNTING.store(false, Ordering::SeqCst);
    ALLOCATIONS.load(Ordering::SeqCst)
}

/// Runs `call` once to size its buffers, then `REPEATS` more times while counting, in every
/// setting (each ISA, sequential and on a 2-thread pool); returns the failures.
fn check_steady_state(what: &str, mut call: impl FnMut(&Exec) + Send, failures: &mut Vec<String>) {
    const REPEATS: usize = 5;
    let pool = pool(2);
    // Every worker has started (thread start-up allocates) before anything is counted.
    pool.broadcast(|_| ());
    for isa in Isa::available() {
        for par in [Parallelism::Sequential, Parallelism::Rayon] {
            let exec = Exec::new()
                .with_isa(isa)
                .expect("available ISA")
                .with_parallelism(par);
            // Two warm-up calls, then the counted ones; on the pool, all inside one
            // `install`, as an engine runs its loop (each `install` from outside the pool
            // queues a job on rayon's injector, which allocates a block every 63 jobs).
            let mut measure = || {
                call(&exec);
                call(&exec);
                allocations_in(|| {
                    for _ in 0..REPEATS {
                        call(&exec);
                    }
                })
            };
            let n = if par == Parallelism::Rayon {
                pool.install(measure)
            } else {
                measure()
            };
            if n != 0 {
                failures.push(format!(
                    "{what} ({isa}, {par:?}): {n} allocations in {REPEATS} calls (the last of {} bytes)", LAST_SIZE.load(Ordering::Relaxed)
                ));
            }
        }
    }
}

/// A layer of `cfg` with random weights (W_O included when `with_out`), and a one-layer cache
/// for it.
fn layer_and_cache(
    rng: &mut impl rand::Rng,
    cfg: LayerConfig,
    with_out: bool,
    (capacity, sinks, dtype): (usize, usize, KvDtype),
) -> (AttentionLayer, KvCache) {
    let h = cfg.heads;
    let (qw, kw) = (h.heads * h.head_dim, h.kv_heads * h.head_dim);
    let weights = LayerWeights {
        w_q: random_vec(rng, cfg.d_model * qw),
        w_k: random_vec(rng, cfg.d_model * kw),
        w_v: random_vec(rng, cfg.d_model * kw),
        w_o: with_out.then(|| random_vec(rng, qw * cfg.d_model)),
    };
    let cache = KvCache::new(CacheConfig {
        layers: 1,
        kv_heads: h.kv_heads,
        head_dim: h.head_dim,
        capacity,
        sinks,
        dtype,
    })
    .unwrap();
    (AttentionLayer::new(cfg, weights).unwrap(), cache)
}

#[test]
fn hot_loops_allocate_nothing() {
    let mut rng = rng(41);
    let mut failures = Vec::new();

    // GEMM through each nest: GEMV, skinny, streamed, blocked, whole B packed; with a reused
    // workspace.
    for (m, n, k) in [
        (1, 300, 200),
        (5, 300, 200),
        (40, 96, 70),
        (150, 200, 130),
        (300, 200, 130),
        (1600, 40, 300),
    ] {
        let a = random_vec(&mut rng, m * k);
        let b = random_vec(&mut rng, k * n);
        let mut c = vec![0.0; m * n];
        let mut ws = GemmWorkspace::new();
        check_steady_state(
            &format!("gemm {m}x{n}x{k}"),
            |exec| {
                let a = MatRef::row_major(&a, m, k).unwrap();
                let b = MatRef::row_major(&b, k, n).unwrap();
                let mut c = MatMut::row_major(&mut c, m, n).unwrap();
                kernels::gemm(exec, 1.0, a, b, 0.0, &mut c, &mut ws).unwrap();
            },
            &mut failures,
        );
        // B packed once per ISA (outside the counted calls), as an engine packs its weights.
        let mut packed: Vec<(Isa, PackedB)> = Vec::new();
        check_steady_state(
            &format!("gemm_prepacked {m}x{n}x{k}"),
            |exec| {
                if !packed.iter().any(|(isa, _)| *isa == exec.isa()) {
                    let b = MatRef::row_major(&b, k, n).unwrap();
                    packed.push((exec.isa(), PackedB::new(exec, b).unwrap()));
                }
                let pb = &packed.iter().find(|(isa, _)| *isa == exec.isa()).unwrap().1;
                let a = MatRef::row_major(&a, m, k).unwrap();
                let mut c = MatMut::row_major(&mut c, m, n).unwrap();
                kernels::gemm_prepacked(exec, 1.0, a, pb, 0.0, &mut c, &mut ws).unwrap();
            },
            &mut failures,
        );
    }

    // Softmax: short rows (16 at a time on AVX-512), medium and long (two-pass) rows.
    for (row_len, rows) in [(100, 40), (3000, 4), (9000, 4)] {
        let mut data = random_vec(&mut rng, rows * row_len);
        check_steady_state(
            &format!("softmax rows of {row_len}"),
            |exec| {
                kernels::softmax_rows(exec, &mut data, row_len, SoftmaxOptions::default()).unwrap()
            },
            &mut failures,
        );
    }

    // The flash-decoding primitive for a group of 4 query heads.
    let (g, d, rows) = (4, 128, 700);
    let q = random_vec(&mut rng, g * d);
    let keys = random_vec(&mut rng, rows * d);
    let values = random_vec(&mut rng, rows * d);
    let mut scores = vec![0.0; kernels::attend_scratch_len(g, d)];
    let mut acc = vec![0.0; g * d];
    let mut states = vec![OnlineSoftmax::EMPTY; g];
    check_steady_state(
        "attend_partial",
        |exec| {
            kernels::attend_partial(
                exec,
                &q,
                KvRows::F32(&keys),
                KvRows::F32(&values),
                0.1,
                &mut states,
                &mut acc,
                &mut scores,
            )
            .unwrap()
        },
        &mut failures,
    );

    // A layer's decode step over a ring cache with sinks, past its capacity (the ring wraps
    // during the counted calls), for both storage types; and a prefill chunk after the
    // scratch has seen one of its size.
    for dtype in [KvDtype::F32, KvDtype::Bf16] {
        let heads = HeadConfig {
            heads: 8,
            kv_heads: 2,
            head_dim: 64,
        };
        let cfg = LayerConfig {
            d_model: 96,
            heads,
            rope: Some(Rope::default()),
        };
        let (layer, mut cache) = layer_and_cache(&mut rng, cfg, true, (12, 2, dtype));
        let mut scratch = LayerScratch::new(&cfg, 2).unwrap();
        let x = random_vec(&mut rng, 96);
        let mut out = vec![0.0; 96];
        check_steady_state(
            &format!("decode step ({dtype:?} cache)"),
            |exec| {
                layer
                    .decode(exec, &mut cache, 0, &x, &mut out, &mut scratch)
                    .unwrap()
            },
            &mut failures,
        );
        let chunk = random_vec(&mut rng, 5 * 96);
        let mut chunk_out = vec![0.0; 5 * 96];
        check_steady_state(
            &format!("prefill chunk of 5 ({dtype:?} cache)"),
            |exec| {
                layer
                    .prefill(exec, &mut cache, 0, &chunk, &mut chunk_out, &mut scratch)
                    .unwrap()
            },
            &mut failures,
        );
    }

    // One KV head over 1100+ cached positions: on two threads the decode step splits the
    // sequence (flash-decoding) and merges the parts.
    let heads = HeadConfig {
        heads: 4,
        kv_heads: 1,
        head_dim: 32,
    };
    let cfg = LayerConfig {
        d_model: 32,
        heads,
        rope: None,
    };
    let (layer, mut cache) = layer_and_cache(&mut rng, cfg, false, (2048, 0, KvDtype::F32));
    let mut scratch = LayerScratch::new(&cfg, 2).unwrap();
    let prompt = random_vec(&mut rng, 1100 * 32);
    let mut prompt_out = vec![0.0; 1100 * 128];
    layer
        .prefill(
            &Exec::new(),
            &mut cache,
            0,
            &prompt,
            &mut prompt_out,
            &mut scratch,
        )
        .unwrap();
    assert_eq!(
        decode::choose_splits(&heads, 1100, 2, 2),
        2,
        "the case below must split"
    );
    let x = random_vec(&mut rng, 32);
    let mut out = vec![0.0; 128];
    check_steady_state(
        "decode step over 1100+ positions (split on 2 threads)",
        |exec| {
            layer
                .decode(exec, &mut cache, 0, &x, &mut out, &mut scratch)
                .unwrap()
        },
        &mut failures,
    );

    assert!(
        failures.is_empty(),
        "allocations in steady state:\n{}",
        failures.join("\n")
    );
}
