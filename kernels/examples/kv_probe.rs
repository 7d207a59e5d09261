//! Throughput of the attention primitives on cache-resident data (development probe).
use kernels::{Exec, KvRows, OnlineSoftmax};
use std::time::Instant;
fn main() {
    let exec = Exec::sequential();
    let d = 128;
    for (g, rows) in [(1usize, 32usize), (4, 32), (1, 4096), (4, 4096)] {
        let keys: Vec<f32> = (0..rows * d).map(|i| (i % 13) as f32 * 0.01).collect();
        let qg: Vec<f32> = (0..g * d).map(|i| (i % 7) as f32 * 0.1).collect();
        let mut states = vec![OnlineSoftmax::EMPTY; g];
        let mut acc = vec![0.0f32; g * d];
        let mut sc = vec![0.0f32; kernels::attend_scratch_len(g, d)];
        let reps = 4_000_000 / rows;
        let t = Instant::now();
        for _ in 0..reps {
            states.iter_mut().for_each(|s| *s = OnlineSoftmax::EMPTY);
            kernels::attend_partial(
                &exec,
                &qg,
                KvRows::F32(&keys),
                KvRows::F32(&keys),
                0.1,
                &mut states,
                &mut acc,
                &mut sc,
            )
            .unwrap();
        }
        let ns = t.elapsed().as_secs_f64() * 1e9 / (reps * rows * g) as f64;
        println!(
            "attend g={g} rows={rows}: {ns:.2} ns/(head*key) = {:.1} cycles @2.45GHz",
            ns * 2.45
        );
    }
}
