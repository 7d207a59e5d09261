//! Helpers shared by the integration tests: seeded randomness, thread pools, and the list of
//! execution settings (every available ISA × sequential / 2-thread rayon) each kernel is run
//! under.
#![allow(dead_code)]

use std::sync::OnceLock;

use kernels::{Exec, Isa, Parallelism};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A reproducible random generator.
pub fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// Fills `buf` with values uniform in [-1, 1].
pub fn fill_uniform(rng: &mut impl Rng, buf: &mut [f32]) {
    for x in buf {
        *x = rng.random_range(-1.0f32..=1.0);
    }
}

/// `n` values uniform in [-1, 1].
pub fn random_vec(rng: &mut impl Rng, n: usize) -> Vec<f32> {
    let mut v = vec![0.0; n];
    fill_uniform(rng, &mut v);
    v
}

/// A fresh rayon pool of `n` threads.
pub fn build_pool(n: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build()
        .expect("building a rayon pool")
}

/// A process-wide pool of `n` threads (1 to 4), built once and shared by the tests.
pub fn pool(n: usize) -> &'static rayon::ThreadPool {
    static POOLS: [OnceLock<rayon::ThreadPool>; 4] = [const { OnceLock::new() }; 4];
    assert!(
        (1..=4).contains(&n),
        "only pools of 1 to 4 threads are shared"
    );
    POOLS[n - 1].get_or_init(|| build_pool(n))
}

/// One way of running a kernel: an ISA, and either the calling thread or a 2-thread pool.
#[derive(Debug, Clone, Copy)]
pub struct ExecCase {
    /// The settings passed to the kernel.
    pub exec: Exec,
    /// Threads the kernel may use (1: sequential; more: `Parallelism::Rayon` inside
    /// `pool(threads)`).
    pub threads: usize,
}

impl ExecCase {
    /// Runs `f` in the context this case needs (inside the 2-thread pool when parallel).
    pub fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        match self.exec.parallelism() {
            Parallelism::Sequential => f(),
            Parallelism::Rayon => pool(self.threads).install(f),
        }
    }

    /// The ISA the case forces.
    pub fn isa(&self) -> Isa {
        self.exec.isa()
    }
}

impl std::fmt::Display for ExecCase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}t", self.exec.isa(), self.threads)
    }
}

/// A sequential exec forcing `isa`.
pub fn exec_for(isa: Isa) -> Exec {
    Exec::new()
        .with_isa(isa)
        .expect("ISA listed as available")
        .with_parallelism(Parallelism::Sequential)
}

/// Every execution setting to test: each available ISA × {sequential, rayon on 2 threads}.
/// For a given ISA the sequential case comes first, so results can be compared in pairs.
pub fn exec_cases() -> Vec<ExecCase> {
    Isa::available()
        .into_iter()
        .flat_map(|isa| {
            let seq = exec_for(isa);
            [
                ExecCase {
                    exec: seq,
                    threads: 1,
                },
                ExecCase {
                    exec: seq.with_parallelism(Parallelism::Rayon),
                    threads: 2,
                },
            ]
        })
        .collect()
}
