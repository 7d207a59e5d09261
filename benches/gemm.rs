//! Matmul throughput in flops: `Throughput::Elements(2·m·n·k)`, so criterion's "elem/s" reads
//! as flop/s. Each group runs this crate (`gemm` on one thread and on the pool, and
//! `gemm_prepacked` on one thread with B packed ahead of time) and matrixmultiply on the same
//! inputs; the
//! `peak` group times the FMA probe of the detected ISA in the same run, for % of peak.
//!
//! `cargo bench --bench gemm` (all) or `cargo bench --bench gemm -- square/1024`.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use kernels::{Exec, GemmWorkspace, Isa, MatMut, MatRef, PackedB, gemm, gemm_prepacked};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::hint::black_box;

fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// One shape: `b_transposed` stores B as its transpose (the q·Kᵀ layout).
fn bench_shape(c: &mut Criterion, group: &str, m: usize, n: usize, k: usize, b_transposed: bool) {
    let a = random(m * k, 1);
    let b = random(k * n, 2);
    let mut out = vec![0.0f32; m * n];
    let mut g = c.benchmark_group(group);
    g.throughput(Throughput::Elements(2 * (m * n * k) as u64));
    g.sample_size(10);
    let label = format!("{m}x{n}x{k}");
    let b_view = || {
        if b_transposed {
            MatRef::row_major(&b, n, k).unwrap().t()
        } else {
            MatRef::row_major(&b, k, n).unwrap()
        }
    };
    let seq = Exec::sequential();
    let mut ws = GemmWorkspace::new();
    g.bench_function(BenchmarkId::new("kernels-1t", &label), |bench| {
        bench.iter(|| {
            let a_view = MatRef::row_major(&a, m, k).unwrap();
            let mut c_view = MatMut::row_major(&mut out, m, n).unwrap();
            gemm(&seq, 1.0, a_view, b_view(), 0.0, &mut c_view, &mut ws).unwrap();
            black_box(&out);
        })
    });
    let par = Exec::new();
    g.bench_function(BenchmarkId::new("kernels-pool", &label), |bench| {
        bench.iter(|| {
            let a_view = MatRef::row_major(&a, m, k).unwrap();
            let mut c_view = MatMut::row_major(&mut out, m, n).unwrap();
            gemm(&par, 1.0, a_view, b_view(), 0.0, &mut c_view, &mut ws).unwrap();
            black_box(&out);
        })
    });
    // B packed once, outside the timing (an engine's weights).
    let packed = PackedB::new(&seq, b_view()).unwrap();
    g.bench_function(BenchmarkId::new("kernels-prepacked-1t", &label), |bench| {
        bench.iter(|| {
            let a_view = MatRef::row_major(&a, m, k).unwrap();
            let mut c_view = MatMut::row_major(&mut out, m, n).unwrap();
            gemm_prepacked(&seq, 1.0, a_view, &packed, 0.0, &mut c_view, &mut ws).unwrap();
            black_box(&out);
        })
    });
    let (rsb, csb) = if b_transposed {
        (1, k as isize)
    } else {
        (n as isize, 1)
    };
    g.bench_function(BenchmarkId::new("matrixmultiply-1t", &label), |bench| {
        bench.iter(|| {
            // SAFETY: a is m×k row-major, b is k×n with strides (rsb, csb) inside its k·n
            // elements, out is m×n row-major; none overlap.
            unsafe {
                matrixmultiply::sgemm(
                    m,
                    k,
                    n,
                    1.0,
                    a.as_ptr(),
                    k as isize,
                    1,
                    b.as_ptr(),
                    rsb,
                    csb,
                    0.0,
                    out.as_mut_ptr(),
                    n as isize,
                    1,
                )
            };
            black_box(&out);
        })
    });
    g.finish();
}

fn peak(c: &mut Criterion) {
    let isa = Isa::detected();
    let iters = 100_000;
    let flops = kernels::arch::fma_probe(isa, 1);
    let mut g = c.benchmark_group("peak");
    g.throughput(Throughput::Elements((flops * iters as f64) as u64));
    g.bench_function(BenchmarkId::new("fma", isa.name()), |b| {
        b.iter(|| kernels::arch::fma_probe(isa, black_box(iters)))
    });
    g.finish();
}

fn square(c: &mut Criterion) {
    for n in [64, 128, 256, 512, 1024, 2048] {
        bench_shape(c, "square", n, n, n, false);
    }
}

fn llm_shapes(c: &mut Criterion) {
    bench_shape(c, "gemv", 1, 4096, 4096, false);
    // Both orientations of a 4096 ↔ 11008 MLP matrix: up (n = 11008) and down (k = 11008).
    bench_shape(c, "gemv", 1, 11008, 4096, false);
    bench_shape(c, "gemv", 1, 4096, 11008, false);
    bench_shape(c, "skinny", 16, 4096, 4096, false);
    bench_shape(c, "prefill", 128, 4096, 4096, false);
    bench_shape(c, "qkt", 1, 4096, 128, true);
}

criterion_group!(benches, peak, square, llm_shapes);
criterion_main!(benches);
