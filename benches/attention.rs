//! One decode step of attention (H = 32, head_dim = 128, one layer) over context lengths
//! 256…32768, for H_kv = 32 and 8 and for f32 and bf16 KV, with `Throughput::Bytes` of KV read
//! per step, so criterion's rate is the KV read bandwidth; `plain-sum` reads the same number of
//! bytes with a vectorised sum on the same threads, for the roofline. `cargo bench --bench attention`.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use decode::bench::{AttnShape, DecodeBench};
use kernels::{Exec, KvDtype};
use std::hint::black_box;

fn decode_step(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode-step");
    g.sample_size(10);
    for kv_heads in [32, 8] {
        for dtype in [KvDtype::F32, KvDtype::Bf16] {
            for seq_len in [256, 1024, 4096, 16384, 32768] {
                let shape = AttnShape {
                    heads: 32,
                    kv_heads,
                    head_dim: 128,
                    layers: 1,
                    dtype,
                    window: None,
                };
                let mut bench = DecodeBench::new(shape, seq_len).unwrap();
                g.throughput(Throughput::Bytes(bench.kv_bytes_per_step() as u64));
                let exec = Exec::new();
                let id = format!("hkv{kv_heads}-{dtype}-L{seq_len}");
                g.bench_function(BenchmarkId::new("kernels-pool", &id), |b| {
                    b.iter(|| bench.step(&exec).unwrap())
                });
                let plain: Vec<f32> = vec![1.0; bench.kv_bytes_per_step() / 4];
                g.bench_function(BenchmarkId::new("plain-sum", &id), |b| {
                    b.iter(|| {
                        black_box(kernels::arch::sum_probe(
                            kernels::Isa::detected(),
                            &plain,
                            rayon::current_num_threads(),
                        ))
                    })
                });
            }
        }
    }
    g.finish();
}

criterion_group!(benches, decode_step);
criterion_main!(benches);
