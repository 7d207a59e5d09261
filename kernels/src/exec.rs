//! How a kernel call runs: which instruction-set path, and whether it may use threads.

use crate::arch::Isa;
use crate::error::{KernelError, Result};

/// Whether a call may split its work across threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parallelism {
    /// Run on the calling thread only.
    Sequential,
    /// Split work over the rayon pool the call is made from: the global pool, or the caller's
    /// own pool when called inside `pool.install(..)`. The kernels never create a pool.
    Rayon,
}

/// Execution settings passed to every kernel: an ISA this CPU is known to have, and a
/// [`Parallelism`]. Cheap to copy; build it once.
///
/// The matmul and softmax kernels of this crate split work over output tiles or rows (never over
/// a reduction), so their results are bit-identical for every thread count. Different ISAs may
/// differ in the last bits (vector width changes summation order). (Split-sequence attention in
/// the `decode` crate is the exception: it documents its own rule.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exec {
    isa: Isa,
    par: Parallelism,
}

impl Default for Exec {
    fn default() -> Self {
        Self::new()
    }
}

impl Exec {
    /// The widest detected ISA ([`Isa::detected`]) on the current rayon pool.
    pub fn new() -> Self {
        Self {
            isa: Isa::detected(),
            par: Parallelism::Rayon,
        }
    }

    /// The widest detected ISA on the calling thread only.
    pub fn sequential() -> Self {
        Self::new().with_parallelism(Parallelism::Sequential)
    }

    /// Forces an ISA path; fails when this CPU cannot run it.
    pub fn with_isa(self, isa: Isa) -> Result<Self> {
        if isa.is_available() {
            Ok(Self { isa, ..self })
        } else {
            Err(KernelError::IsaUnavailable(isa))
        }
    }

    /// Sets the parallelism.
    pub fn with_parallelism(self, par: Parallelism) -> Self {
        Self { par, ..self }
    }

    /// The ISA path that runs.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// The parallelism.
    pub fn parallelism(&self) -> Parallelism {
        self.par
    }

    /// Threads a call may use: 1 when sequential, else the current rayon pool's size.
    pub fn threads(&self) -> usize {
        match self.par {
            Parallelism::Sequential => 1,
            Parallelism::Rayon => rayon::current_num_threads(),
        }
    }

    /// Runs `f(i)` for every `i` in `0..n`, on the pool when parallel and `n > 1`.
    pub(crate) fn for_each_index(&self, n: usize, f: impl Fn(usize) + Sync + Send) {
        use rayon::prelude::*;
        if self.threads() > 1 && n > 1 {
            (0..n).into_par_iter().with_max_len(1).for_each(f);
        } else {
            (0..n).for_each(f);
        }
    }

    /// Runs `f(i, chunk)` over `chunk`-sized pieces of `data`, on the pool when parallel.
    pub(crate) fn for_each_chunk_mut<T: Send>(
        &self,
        data: &mut [T],
        chunk: usize,
        f: impl Fn(usize, &mut [T]) + Sync + Send,
    ) {
        use rayon::prelude::*;
        if self.threads() > 1 && data.len() > chunk {
            data.par_chunks_mut(chunk)
                .enumerate()
                .for_each(|(i, c)| f(i, c));
        } else {
            data.chunks_mut(chunk)
                .enumerate()
                .for_each(|(i, c)| f(i, c));
        }
    }
}

/// A raw output pointer shared by tasks that write provably disjoint parts of it.
#[derive(Clone, Copy)]
pub(crate) struct SharedMut(pub(crate) *mut f32);

impl SharedMut {
    /// The pointer `offset` elements further (arithmetic only; no access).
    pub(crate) fn at(self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

// SAFETY: `SharedMut` is only built over an exclusively borrowed output, and every user splits
// the writes so that no element is written by two tasks or read while another writes it.
unsafe impl Send for SharedMut {}
// SAFETY: as for `Send`; the pointer itself is never mutated.
unsafe impl Sync for SharedMut {}
