//! `C = α·A·B + β·C` in f32 over strided views: the public entry point, its checks, and the
//! choice of path:
//! - one output row or column: [`gemv`] streams B once (decode's `x·W`, `q·Kᵀ`);
//! - up to 16 rows on AVX-512 (6 on AVX2: one micro-tile panel) against row-contiguous B:
//!   [`direct`] reads B in place, never packing it;
//! - two to four rows against column-contiguous B (`x·Wᵀ`) and row-contiguous A, or (on the
//!   portable path) against row-contiguous B and C: [`skinny`] streams B without packing;
//! - up to one L2 block of rows (`mc`) against row- or column-contiguous B: the blocked nest
//!   with B packed just in time, slab by slab, so its memory stream overlaps the micro-kernel
//!   ([`streamed`]);
//! - from 1536 rows, k over more than one kc block, B up to 32 MiB (AVX2 and AVX-512): all of
//!   B packed into the workspace, then [`gemm_prepacked`]'s nest, which keeps each block of C
//!   in L2 across the k loop ([`prepacked`]);
//! - everything else: the packed, blocked BLIS loops ([`loops`], [`microkernel`], [`pack`]),
//!   block sizes in [`blocking`].
//!
//! [`gemm_prepacked`] multiplies by a B packed once ahead of time ([`PackedB`]: weights),
//! through the streamed nest's structure without its packing step ([`prepacked`]).
//!
//! BLAS semantics: when β = 0, C is never read (NaN or garbage in C cannot leak); when α = 0 or
//! k = 0, A and B are never read and C becomes β·C; empty dimensions are legal and write
//! nothing. Results are bit-identical for every thread count.

/// Evaluates `$run!(s, MR, NV)` with `s` bound to the token of `$isa` and `MR`, `NV` the literal
/// constants of the micro-tile `$tile` (an `(mr, nv)` pair from a blocking table): every tile
/// the tables offer is instantiated here, for each nest that takes them.
macro_rules! with_tile {
    ($isa:expr, $tile:expr, $run:ident) => {
        with_simd!($isa, |s| match $tile {
            (12, 2) => $run!(s, 12, 2),
            (8, 2) => $run!(s, 8, 2),
            (6, 2) => $run!(s, 6, 2),
            (4, 2) => $run!(s, 4, 2),
            other => unreachable!("no micro-kernel instantiated for {other:?}"),
        })
    };
}

mod blocking;
mod direct;
mod gemv;
mod loops;
mod microkernel;
mod pack;
mod prepacked;
mod skinny;
mod streamed;
mod workspace;

pub use prepacked::{PackedB, gemm_prepacked};
pub use workspace::GemmWorkspace;

use crate::arch::with_simd;
use crate::error::{KernelError, Result, check_dim};
use crate::exec::{Exec, SharedMut};
use crate::view::{MatMut, MatRef};
use loops::Out;
use pack::Strided;

/// `C = α·A·B + β·C`, with A m×k, B k×n, C m×n, each with any strides.
///
/// Shapes are checked first; on error nothing is written. `ws` holds the packing buffers and
/// grows to the largest problem seen, so repeated calls allocate nothing.
/// [`KernelError::SizeOverflow`] when zero-stride views make k so large that 16 rows of A
/// over all of k would exceed `isize::MAX` bytes (no real buffer is that large).
///
/// ```
/// use kernels::{gemm, Exec, GemmWorkspace, MatMut, MatRef};
/// let a = [1.0, 2.0, 3.0, 4.0]; // 2×2 row-major
/// let b = [5.0, 6.0, 7.0, 8.0];
/// let mut c = [0.0; 4];
/// let mut ws = GemmWorkspace::new();
/// gemm(&Exec::new(), 1.0, MatRef::row_major(&a, 2, 2)?, MatRef::row_major(&b, 2, 2)?,
///      0.0, &mut MatMut::row_major(&mut c, 2, 2)?, &mut ws)?;
/// assert_eq!(c, [19.0, 22.0, 43.0, 50.0]);
/// # Ok::<(), kernels::KernelError>(())
/// ```
pub fn gemm(
    exec: &Exec,
    alpha: f32,
    a: MatRef<'_>,
    b: MatRef<'_>,
    beta: f32,
    c: &mut MatMut<'_>,
    ws: &mut GemmWorkspace,
) -> Result<()> {
    let Some((m, n, k)) = prologue(&a, (b.rows(), b.cols()), alpha, beta, c)? else {
        return Ok(());
    };
    // One output row (or column, by transposing the whole product) streams B once.
    if m == 1 && (b.col_stride() == 1 || b.row_stride() == 1) {
        gemv_row(exec, alpha, a, b, beta, c, ws);
        return Ok(());
    }
    if n == 1 && m > 1 && (a.row_stride() == 1 || a.col_stride() == 1) {
        let (rsc, csc) = (c.row_stride(), c.col_stride());
        let mut ct = MatMut::new(c.as_mut_slice(), 1, m, csc, rsc)?;
        gemv_row(exec, alpha, b.t(), a.t(), beta, &mut ct, ws);
        return Ok(());
    }
    let out = Out {
        c: SharedMut(c.as_mut_ptr()),
        rsc: c.row_stride(),
        csc: c.col_stride(),
    };
    let (sa, sb) = (strided_of(&a), strided_of(&b));
    // Up to one micro-tile panel of rows against row-contiguous B: B read in place, never
    // packed (every ISA with a tile for it; 2–4 rows measured 0.64–0.85× the time of the
    // row-streaming path below, which now serves the portable path).
    if let Some(tile) = direct::tile_for(exec.isa(), m, &sb) {
        macro_rules! direct {
            ($s:ident, $mr:literal, $nv:literal) => {
                // SAFETY: as for the nests below; `tile_for` checked m ≤ MR and B's unit
                // column stride.
                unsafe {
                    direct::gemm_direct::<_, $mr, $nv>(
                        $s,
                        exec,
                        (m, n, k),
                        alpha,
                        sa,
                        sb,
                        beta,
                        out,
                        ws,
                    )
                }
            };
        }
        with_simd!(exec.isa(), |s| match tile {
            (8, 2) => direct!(s, 8, 2),
            (16, 1) => direct!(s, 16, 1),
            (6, 2) => direct!(s, 6, 2),
            other => unreachable!("no direct micro-kernel instantiated for {other:?}"),
        });
        return Ok(());
    }
    // A few rows against row-contiguous B and C (the portable path): stream B once, without
    // packing it.
    if m <= skinny::MAX_ROWS && b.col_stride() == 1 && c.col_stride() == 1 {
        let (cp, rsc) = (out.c, out.rsc);
        let acc = ws.b.get(skinny::workspace_len(m, n));
        with_simd!(exec.isa(), |s| {
            // SAFETY: A (m×k) and B (k×n, unit column stride) are validated views; C is m×n
            // with unit column stride and distinct elements, borrowed mutably for the call.
            unsafe { skinny::gemm_skinny(s, exec, (m, n, k), alpha, sa, sb, beta, cp, rsc, acc) }
        });
        return Ok(());
    }
    // A few rows against column-contiguous B (x·Wᵀ): each column of B dotted with all of A.
    if m <= skinny::MAX_ROWS && b.row_stride() == 1 && a.col_stride() == 1 {
        let (cp, strides) = (out.c, (out.rsc, out.csc));
        with_simd!(exec.isa(), |s| {
            // SAFETY: A (m×k, unit column stride) and B (k×n, unit row stride) are validated
            // views; C is m×n with distinct elements, borrowed mutably for the call.
            unsafe {
                skinny::gemm_skinny_columns(s, exec, (m, n, k), alpha, sa, sb, beta, cp, strides)
            }
        });
        return Ok(());
    }
    let mut blk = blocking::choose(exec.isa(), m);
    blk.nc = blocking::nc_for(&blk, m);
    macro_rules! run {
        ($s:ident, $mr:literal, $nv:literal) => {
            // SAFETY: the views were validated on construction (A m×k and B k×n readable, C
            // m×n writable with distinct elements), and `c` is borrowed mutably for the call.
            unsafe {
                let nest = if streamed::applies(&blk, m, &sb) {
                    streamed::gemm_streamed::<_, $mr, $nv>
                } else if prepacked::whole_b_applies(exec.isa(), &blk, m, n, k) {
                    prepacked::gemm_whole_b::<_, $mr, $nv>
                } else {
                    loops::gemm_blocked::<_, $mr, $nv>
                };
                nest($s, exec, &blk, (m, n, k), alpha, sa, sb, beta, out, ws)
            }
        };
    }
    with_tile!(exec.isa(), (blk.mr, blk.nv), run);
    Ok(())
}

/// What every entry point does first: checks A (m×k), B (`b_shape` = k×n) and C (m×n)
/// against each other, then settles the cases that need no product: an empty C (nothing to
/// write) and α = 0 or k = 0 (C = β·C, A and B never read). `Some((m, n, k))` when the product
/// remains to be computed.
fn prologue(
    a: &MatRef<'_>,
    (b_rows, b_cols): (usize, usize),
    alpha: f32,
    beta: f32,
    c: &mut MatMut<'_>,
) -> Result<Option<(usize, usize, usize)>> {
    check_dim("a.rows vs c.rows", c.rows(), a.rows())?;
    check_dim("b.cols vs c.cols", c.cols(), b_cols)?;
    check_dim("a.cols vs b.rows", b_rows, a.cols())?;
    let (m, n, k) = (c.rows(), c.cols(), a.cols());
    if m == 0 || n == 0 {
        return Ok(None);
    }
    if alpha == 0.0 || k == 0 {
        scale(c, beta);
        return Ok(None);
    }
    // A view with a zero stride can be far larger than its buffer, and the nests gather or
    // pack up to max(m, 16) rows of A over all of k (the GEMV and direct paths): refuse k
    // whose workspace could not even be sized, instead of letting the size wrap.
    let gathered = k
        .checked_mul(m.max(MAX_ROWS_PACKED_WHOLE))
        .and_then(|floats| floats.checked_mul(std::mem::size_of::<f32>()));
    if gathered.is_none_or(|bytes| bytes > isize::MAX as usize) {
        return Err(KernelError::SizeOverflow);
    }
    Ok(Some((m, n, k)))
}

/// Most rows a nest packs over the whole of k at once (the direct nest's tile, at most 16).
const MAX_ROWS_PACKED_WHOLE: usize = 16;

/// The rows of an m×k view as one contiguous row-major slice: the view's own memory when it
/// already is (rows contiguous and, beyond one row, k apart), else gathered into `buf`.
fn contiguous_rows<'s>(a: &MatRef<'s>, buf: &'s mut workspace::AlignedBuf) -> &'s [f32] {
    let (m, k) = (a.rows(), a.cols());
    if a.col_stride() == 1 && (m == 1 || a.row_stride() == k) {
        return &a.data()[..m * k];
    }
    let buf = buf.get(m * k);
    for (e, v) in buf.iter_mut().enumerate() {
        *v = a.at(e / k, e % k);
    }
    buf
}

/// The raw strided form of a validated view.
fn strided_of(v: &MatRef<'_>) -> Strided {
    Strided {
        ptr: v.data().as_ptr(),
        rs: v.row_stride(),
        cs: v.col_stride(),
    }
}

/// The m = 1 product, after shape checks, with B row- or column-contiguous.
fn gemv_row(
    exec: &Exec,
    alpha: f32,
    a: MatRef<'_>,
    b: MatRef<'_>,
    beta: f32,
    c: &mut MatMut<'_>,
    ws: &mut GemmWorkspace,
) {
    let n = c.cols();
    let x = contiguous_rows(&a, &mut ws.a);
    let acc = ws.b.get(n);
    let sb = Strided {
        ptr: b.data().as_ptr(),
        rs: b.row_stride(),
        cs: b.col_stride(),
    };
    let y = SharedMut(c.as_mut_ptr());
    let ys = c.col_stride();
    with_simd!(exec.isa(), |s| {
        // SAFETY: B is a validated k×n view with a unit stride; y is C's single row of n
        // distinct elements, borrowed mutably.
        unsafe { gemv::gemv(s, exec, alpha, x, sb, n, beta, y, ys, acc) }
    });
}

/// `C = β·C`, and exactly zero when β = 0 (C is not read then).
fn scale(c: &mut MatMut<'_>, beta: f32) {
    let (rs, cs) = (c.row_stride(), c.col_stride());
    let (rows, cols) = (c.rows(), c.cols());
    let data = c.as_mut_slice();
    for i in 0..rows {
        if cs == 1 {
            // Contiguous rows: slice operations the compiler turns into wide stores.
            let row = &mut data[i * rs..i * rs + cols];
            if beta == 0.0 {
                row.fill(0.0);
            } else {
                row.iter_mut().for_each(|e| *e *= beta);
            }
            continue;
        }
        for j in 0..cols {
            let e = &mut data[i * rs + j * cs];
            *e = if beta == 0.0 { 0.0 } else { beta * *e };
        }
    }
}
