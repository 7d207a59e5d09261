//! Development probe: the grouped-query decode loop (`attend_partial`, 8 KV heads of L rows,
//! 4 query heads each, head_dim 128, f32, on huge pages) against a plain sum over the same
//! bytes, timed in alternating rounds in one process; prints the median per-round ratio. On a
//! shared machine this is steadier than comparing medians taken at different moments.
//!
//! `cargo run --release -p kernels --example attend_vs_sum -- [L=4096] [rounds=100] [isa]`
use kernels::{Exec, Isa, KvRows, OnlineSoftmax};
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let count = |i: usize, default: usize| {
        args.get(i)
            .map_or(default, |a| a.parse().expect("a row or round count"))
    };
    let (rows, rounds) = (count(0, 4096), count(1, 100).max(1));
    let isa = args
        .get(2)
        .map_or(Isa::detected(), |a| a.parse().expect("an ISA name"));
    let exec = Exec::new().with_isa(isa).expect("an ISA this CPU has");
    let (d, g, heads) = (128, 4, 8);
    let mut kv = kernels::LargeBuffer::<f32>::zeroed(2 * heads * rows * d).expect("allocation");
    // Pseudo-random contents: zero pages would be read from one physical page.
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for v in kv.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *v = (x >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
    }
    let (keys, values) = kv.split_at(heads * rows * d);
    let q: Vec<f32> = (0..g * d).map(|i| (i % 7) as f32 * 0.1).collect();
    let mut states = vec![OnlineSoftmax::EMPTY; g];
    let mut acc = vec![0.0f32; g * d];
    let mut scores = vec![0.0f32; kernels::attend_scratch_len(g, d)];
    let mut ratios = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let start = Instant::now();
        for h in 0..heads {
            states.fill(OnlineSoftmax::EMPTY);
            let r = h * rows * d..(h + 1) * rows * d;
            let (k, v) = (KvRows::F32(&keys[r.clone()]), KvRows::F32(&values[r]));
            kernels::attend_partial(&exec, &q, k, v, 0.088, &mut states, &mut acc, &mut scores)
                .expect("shapes are consistent");
        }
        let attend = start.elapsed().as_secs_f64();
        let start = Instant::now();
        std::hint::black_box(kernels::arch::sum_probe(exec.isa(), &kv, 1));
        ratios.push(start.elapsed().as_secs_f64() / attend);
    }
    ratios.sort_by(f64::total_cmp);
    let at = |f: f64| 100.0 * ratios[((rounds - 1) as f64 * f) as usize];
    println!(
        "L = {rows}, {} MiB of K and V, {}: attend at {:.1}% of the same-bytes sum \
         (median of {rounds} paired rounds; quartiles {:.1}%, {:.1}%)",
        (kv.len() * 4) >> 20,
        exec.isa(),
        at(0.5),
        at(0.25),
        at(0.75)
    );
}
