//! Caller-owned packing buffers, so that a loop of matmul calls allocates nothing.

/// One 64-byte cache line of floats; a `Vec` of these is a cache-line-aligned f32 buffer.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([f32; 16]);

/// A growable, 64-byte-aligned f32 buffer.
#[derive(Default)]
pub(crate) struct AlignedBuf {
    lines: Vec<Line>,
}

impl AlignedBuf {
    /// At least `len` floats, growing (the only allocation) when needed. Contents are
    /// unspecified.
    pub(crate) fn get(&mut self, len: usize) -> &mut [f32] {
        let lines = len.div_ceil(16);
        if self.lines.len() < lines {
            self.lines.resize(lines, Line([0.0; 16]));
        }
        let ptr = self.lines.as_mut_ptr() as *mut f32;
        // SAFETY: `Line` is `repr(C)` over `[f32; 16]`, so `lines.len() * 16 >= len` floats are
        // initialised and contiguous, and the borrow of `self` keeps them alive and unaliased.
        unsafe { std::slice::from_raw_parts_mut(ptr, len) }
    }

    fn capacity_floats(&self) -> usize {
        self.lines.len() * 16
    }
}

/// Packing buffers for [`crate::gemm`]. Keep one per engine (or per thread that issues calls)
/// and pass it to every call: it grows to the largest problem seen and is then reused.
///
/// What it grows to: a few MiB for most products (a kc × nc block of B, an mc × kc block of A
/// per thread, or all m × kc of A for short products); products of 1536 rows or more also pack
/// the whole of a B of up to 32 MiB into it. [`GemmWorkspace::bytes`] says what it holds.
#[derive(Default)]
pub struct GemmWorkspace {
    pub(crate) a: AlignedBuf,
    pub(crate) b: AlignedBuf,
}

impl GemmWorkspace {
    /// An empty workspace; the first call sizes it.
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes currently held.
    pub fn bytes(&self) -> usize {
        (self.a.capacity_floats() + self.b.capacity_floats()) * 4
    }
}

impl std::fmt::Debug for GemmWorkspace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GemmWorkspace")
            .field("bytes", &self.bytes())
            .finish()
    }
}
