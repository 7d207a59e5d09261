//! Softmax throughput in elements/s over rows of 128…32768, against a plain scalar softmax
//! (max, exp, sum, divide) on the same rows, both out of place (input and output together
//! 512 KiB, L2-resident; no copy inside the timed loop). `cargo bench --bench softmax`.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use kernels::{Exec, SoftmaxOptions, softmax_rows_into};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::hint::black_box;

fn plain_softmax(input: &[f32], output: &mut [f32], row_len: usize) {
    for (src, row) in input
        .chunks_exact(row_len)
        .zip(output.chunks_exact_mut(row_len))
    {
        let max = src.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0;
        for (x, &v) in row.iter_mut().zip(src) {
            *x = (v - max).exp();
            sum += *x;
        }
        row.iter_mut().for_each(|x| *x /= sum);
    }
}

fn softmax(c: &mut Criterion) {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let mut g = c.benchmark_group("softmax");
    g.sample_size(20);
    for row_len in [128, 1024, 4096, 32768] {
        // 256 KiB of rows: L2-resident.
        let rows = (65536 / row_len).max(1);
        let input: Vec<f32> = (0..rows * row_len)
            .map(|_| rng.random_range(-8.0f32..8.0))
            .collect();
        let mut data = input.clone();
        g.throughput(Throughput::Elements((rows * row_len) as u64));
        let exec = Exec::sequential();
        g.bench_function(BenchmarkId::new("kernels-1t", row_len), |b| {
            b.iter(|| {
                softmax_rows_into(&exec, &input, &mut data, row_len, SoftmaxOptions::default())
                    .unwrap();
                black_box(&data);
            })
        });
        g.bench_function(BenchmarkId::new("plain-1t", row_len), |b| {
            b.iter(|| {
                plain_softmax(&input, &mut data, row_len);
                black_box(&data);
            })
        });
    }
    g.finish();
}

criterion_group!(benches, softmax);
criterion_main!(benches);
