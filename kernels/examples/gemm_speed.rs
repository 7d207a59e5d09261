//! Quick GFLOP/s probe: `cargo run --release -p kernels --example gemm_speed -- 1024 1024 1024`.
use kernels::{Exec, GemmWorkspace, Isa, MatMut, MatRef, Parallelism, gemm};
use std::time::Instant;
fn main() {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<usize> = raw[..3].iter().map(|a| a.parse().unwrap()).collect();
    let only: Option<Isa> = raw.get(3).map(|s| s.parse().unwrap());
    let (m, n, k) = (args[0], args[1], args[2]);
    let a: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 * 0.1).collect();
    let b: Vec<f32> = (0..k * n).map(|i| (i % 5) as f32 * 0.1).collect();
    let mut c = vec![0.0f32; m * n];
    let mut ws = GemmWorkspace::new();
    for isa in Isa::available() {
        let t = Instant::now();
        let f = kernels::arch::fma_probe(isa, 20_000_000);
        println!(
            "peak {isa}: {:.1} GFLOP/s",
            f / t.elapsed().as_secs_f64() / 1e9
        );
    }
    for isa in Isa::available()
        .into_iter()
        .rev()
        .filter(|i| only.is_none_or(|o| o == *i))
    {
        for par in [Parallelism::Sequential, Parallelism::Rayon] {
            let exec = Exec::new().with_isa(isa).unwrap().with_parallelism(par);
            let mut best = f64::MAX;
            for _ in 0..7 {
                let t = Instant::now();
                gemm(
                    &exec,
                    1.0,
                    MatRef::row_major(&a, m, k).unwrap(),
                    MatRef::row_major(&b, k, n).unwrap(),
                    0.0,
                    &mut MatMut::row_major(&mut c, m, n).unwrap(),
                    &mut ws,
                )
                .unwrap();
                best = best.min(t.elapsed().as_secs_f64());
            }
            let bytes = (k * n * 4) as f64;
            println!(
                "{isa:8} {par:?}: {:.1} GFLOP/s  {:.1} GB/s(B)",
                2.0 * (m * n * k) as f64 / best / 1e9,
                bytes / best / 1e9
            );
        }
    }
    let mut sm = 0.0f32;
    let big: Vec<f32> = vec![1.0; k * n];
    let mut best = f64::MAX;
    for _ in 0..7 {
        let t = Instant::now();
        sm += big.iter().sum::<f32>();
        best = best.min(t.elapsed().as_secs_f64());
    }
    println!(
        "plain sum {:.1} GB/s ({sm})",
        (k * n * 4) as f64 / best / 1e9
    );
}
#[allow(dead_code)]
fn peak() {}
