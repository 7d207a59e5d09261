//! `kernels::gemm` against the f64 reference, over every available ISA, 1 and 2 threads,
//! tile-edge shapes, the GEMV paths, every stride layout, the BLAS α/β semantics, guard zones,
//! error cases, and a seeded randomized differential test.
//!
//! Error bound (per element): the f32 value of a length-k dot product, summed in any order
//! with or without FMA, satisfies |ŝ − s| ≤ γ_k · Σ_p |a_ip|·|b_pj| with γ_k = k·u/(1 − k·u)
//! and u = ε/2 the unit roundoff (Higham, *Accuracy and Stability of Numerical Algorithms*,
//! §3.1). Scaling by α and adding β·c₀ costs at most 3 more roundings, each relative to
//! |α|·Σ|a||b| + |β·c₀|. So
//!
//! |c − ref| ≤ γ_{k+3} · (|α|·Σ|a||b| + |β·c₀|) < 4·(k + 2)·ε · (|α|·Σ|a||b| + |β·c₀|),
//!
//! which is the tolerance used below (a factor ~8 of slack over the worst case, plus 1e-30 so
//! that an all-zero product needs an exact zero). The f64 reference's own error (~k·2⁻⁵³
//! relative) is negligible against it.

mod common;

use std::collections::HashMap;
use std::fmt::Display;

use common::{ExecCase, exec_cases, exec_for, rng};
use kernels::reference::{gemm_abs_f64, gemm_f64};
use kernels::{
    Exec, GemmWorkspace, Isa, KernelError, MatMut, MatRef, PackedB, Parallelism, gemm,
    gemm_prepacked,
};
use rand::Rng;

/// Floats of guard zone before and after every buffer.
const GUARD: usize = 64;

/// Guard zones and the gaps a view does not cover hold this NaN: any read of them poisons a
/// result (so stray reads of A or B show up as NaN in C), and any write to them is detected
/// bit for bit.
fn sentinel() -> f32 {
    f32::from_bits(0x7fc0_5a5a)
}

/// What C holds when β = 0, and A and B hold when α = 0: garbage the kernel must never read.
fn poison() -> f32 {
    f32::from_bits(0x7fc0_beef)
}

/// How a matrix is laid out in its buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Layout {
    RowMajor,
    ColMajor,
    /// Row-major with leading dimension `cols + pad`.
    RowPadded(usize),
    /// Column-major with leading dimension `rows + pad`.
    ColPadded(usize),
    /// Row stride `2·cols + 1`, column stride 2: neither stride is 1.
    General,
    /// Column stride `2·rows + 1`, row stride 2 (the transpose of `General`).
    GeneralT,
    /// Row stride 0: every row is the same vector (inputs only; `MatMut` refuses it).
    RowBroadcast,
    /// Column stride 0: every column is the same vector (inputs only).
    ColBroadcast,
}

const LAYOUTS: [Layout; 6] = [
    Layout::RowMajor,
    Layout::ColMajor,
    Layout::RowPadded(3),
    Layout::ColPadded(3),
    Layout::General,
    Layout::GeneralT,
];

impl Layout {
    /// `(row_stride, col_stride)` of a `rows × cols` matrix.
    fn strides(self, rows: usize, cols: usize) -> (usize, usize) {
        match self {
            Layout::RowMajor => (cols, 1),
            Layout::ColMajor => (1, rows),
            Layout::RowPadded(p) => (cols + p, 1),
            Layout::ColPadded(p) => (1, rows + p),
            Layout::General => (2 * cols + 1, 2),
            Layout::GeneralT => (2, 2 * rows + 1),
            Layout::RowBroadcast => (0, 1),
            Layout::ColBroadcast => (1, 0),
        }
    }

    fn random(rng: &mut impl Rng) -> Self {
        match rng.random_range(0..6) {
            0 => Layout::RowMajor,
            1 => Layout::ColMajor,
            2 => Layout::RowPadded(rng.random_range(1..=5)),
            3 => Layout::ColPadded(rng.random_range(1..=5)),
            4 => Layout::General,
            _ => Layout::GeneralT,
        }
    }
}

/// A strided matrix inside a buffer with guard zones of `GUARD` sentinels on both sides.
#[derive(Clone)]
struct Mat {
    buf: Vec<f32>,
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

impl Mat {
    /// A `rows × cols` matrix whose elements, row by row, come from `val`; every other float of
    /// the buffer is the sentinel.
    fn new(rows: usize, cols: usize, layout: Layout, mut val: impl FnMut() -> f32) -> Self {
        let (rs, cs) = layout.strides(rows, cols);
        let span = if rows == 0 || cols == 0 {
            0
        } else {
            (rows - 1) * rs + (cols - 1) * cs + 1
        };
        let mut buf = vec![sentinel(); GUARD + span + GUARD];
        for i in 0..rows {
            for j in 0..cols {
                buf[GUARD + i * rs + j * cs] = val();
            }
        }
        Self {
            buf,
            rows,
            cols,
            rs,
            cs,
        }
    }

    fn inner(&self) -> std::ops::Range<usize> {
        GUARD..self.buf.len() - GUARD
    }

    fn view(&self) -> MatRef<'_> {
        MatRef::new(
            &self.buf[self.inner()],
            self.rows,
            self.cols,
            self.rs,
            self.cs,
        )
        .expect("valid test view")
    }

    fn view_mut(&mut self) -> MatMut<'_> {
        let r = self.inner();
        MatMut::new(&mut self.buf[r], self.rows, self.cols, self.rs, self.cs)
            .expect("valid test view")
    }

    /// Buffer index of element `(i, j)`.
    fn index(&self, i: usize, j: usize) -> usize {
        GUARD + i * self.rs + j * self.cs
    }

    fn get(&self, i: usize, j: usize) -> f32 {
        self.buf[self.index(i, j)]
    }

    /// Bit patterns of the view's elements, row by row.
    fn element_bits(&self) -> Vec<u32> {
        let mut out = Vec::with_capacity(self.rows * self.cols);
        for i in 0..self.rows {
            for j in 0..self.cols {
                out.push(self.get(i, j).to_bits());
            }
        }
        out
    }
}

/// One product to check: `C = α·A·B + β·C₀`.
struct Problem {
    a: Mat,
    b: Mat,
    c0: Mat,
    alpha: f32,
    beta: f32,
    label: String,
}

impl Problem {
    /// Random A, B, C₀ in [-1, 1]; A and B are poison when α = 0 and C₀ is poison when β = 0.
    fn new(
        rng: &mut impl Rng,
        (m, n, k): (usize, usize, usize),
        (la, lb, lc): (Layout, Layout, Layout),
        alpha: f32,
        beta: f32,
    ) -> Self {
        let mut val = |poisoned: bool| {
            if poisoned {
                poison()
            } else {
                rng.random_range(-1.0f32..=1.0)
            }
        };
        let a = Mat::new(m, k, la, || val(alpha == 0.0));
        let b = Mat::new(k, n, lb, || val(alpha == 0.0));
        let c0 = Mat::new(m, n, lc, || val(beta == 0.0));
        Self {
            a,
            b,
            c0,
            alpha,
            beta,
            label: format!(
                "m={m} n={n} k={k} A={la:?} B={lb:?} C={lc:?} alpha={alpha} beta={beta}"
            ),
        }
    }

    fn dims(&self) -> (usize, usize, usize) {
        (self.a.rows, self.b.cols, self.a.cols)
    }
}

/// The expected result of a problem: exact values when A·B does not take part (α = 0 or
/// k = 0), else f64 values with per-element tolerances.
enum Expected {
    Exact(Vec<f32>),
    Approx { val: Vec<f64>, tol: Vec<f64> },
}

fn expected(p: &Problem) -> Expected {
    let (m, n, k) = p.dims();
    let (alpha, beta) = (p.alpha, p.beta);
    let prior = |i: usize, j: usize| {
        if beta == 0.0 {
            0.0
        } else {
            beta * p.c0.get(i, j)
        }
    };
    if alpha == 0.0 || k == 0 {
        // BLAS semantics: C = β·C₀ computed as one f32 multiply, exactly 0 when β = 0.
        let exact = (0..m)
            .flat_map(|i| (0..n).map(move |j| (i, j)))
            .map(|(i, j)| prior(i, j))
            .collect();
        return Expected::Exact(exact);
    }
    let val = gemm_f64(alpha, p.a.view(), p.b.view(), beta, p.c0.view());
    let abs = gemm_abs_f64(p.a.view(), p.b.view());
    let gamma = 4.0 * (k as f64 + 2.0) * f32::EPSILON as f64;
    let tol = (0..m * n)
        .map(|e| {
            let c_term = (prior(e / n, e % n) as f64).abs();
            gamma * ((alpha as f64).abs() * abs[e] + c_term) + 1e-30
        })
        .collect();
    Expected::Approx { val, tol }
}

/// Which entry point computes the product.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Via {
    Gemm,
    /// `PackedB::new` (on the case's ISA and threads), then `gemm_prepacked`.
    Prepacked,
}

/// Runs the problem's product under `case` on a copy of C₀ and returns C.
fn run(case: &ExecCase, p: &Problem, ws: &mut GemmWorkspace) -> Mat {
    run_via(case, p, ws, Via::Gemm)
}

fn run_via(case: &ExecCase, p: &Problem, ws: &mut GemmWorkspace, via: Via) -> Mat {
    let mut c = p.c0.clone();
    let result = case.run(|| {
        let mut cv = c.view_mut();
        match via {
            Via::Gemm => gemm(
                &case.exec,
                p.alpha,
                p.a.view(),
                p.b.view(),
                p.beta,
                &mut cv,
                ws,
            ),
            Via::Prepacked => PackedB::new(&case.exec, p.b.view()).and_then(|b| {
                gemm_prepacked(&case.exec, p.alpha, p.a.view(), &b, p.beta, &mut cv, ws)
            }),
        }
    });
    if let Err(e) = result {
        panic!("{} [{case}]: gemm returned {e}", p.label);
    }
    c
}

/// Checks C against the expectation, and that no float outside C's view (guard zones and
/// padding gaps) changed.
fn verify(c: &Mat, p: &Problem, exp: &Expected, ctx: &dyn Display) {
    let (m, n, _) = p.dims();
    let mut in_view = vec![false; c.buf.len()];
    for i in 0..m {
        for j in 0..n {
            in_view[c.index(i, j)] = true;
        }
    }
    for (idx, (after, before)) in c.buf.iter().zip(&p.c0.buf).enumerate() {
        if !in_view[idx] {
            assert_eq!(
                after.to_bits(),
                before.to_bits(),
                "{ctx}: float {idx} of C's buffer (outside the view; guard zone is the first \
                 and last {GUARD}) was overwritten"
            );
        }
    }
    let mut failures = 0;
    let mut first = None;
    for i in 0..m {
        for j in 0..n {
            let got = c.get(i, j);
            let e = i * n + j;
            let ok = match exp {
                Expected::Exact(want) => got == want[e],
                Expected::Approx { val, tol } => {
                    !got.is_nan() && (got as f64 - val[e]).abs() <= tol[e]
                }
            };
            if !ok {
                failures += 1;
                if first.is_none() {
                    let want = match exp {
                        Expected::Exact(want) => format!("exactly {:e}", want[e]),
                        Expected::Approx { val, tol } => format!("{:e} ± {:e}", val[e], tol[e]),
                    };
                    first = Some(format!("C[{i},{j}] = {got:e}, expected {want}"));
                }
            }
        }
    }
    assert!(
        failures == 0,
        "{ctx}: {failures} of {} elements wrong; first: {}",
        m * n,
        first.unwrap_or_default()
    );
}

/// Checks one problem under every exec case, and that the thread counts of an ISA agree bit
/// for bit.
fn check(cases: &[ExecCase], p: &Problem, ws: &mut GemmWorkspace) {
    check_via(cases, p, ws, Via::Gemm)
}

fn check_via(cases: &[ExecCase], p: &Problem, ws: &mut GemmWorkspace, via: Via) {
    let exp = expected(p);
    let mut first_bits: HashMap<Isa, (ExecCase, Vec<u32>)> = HashMap::new();
    for case in cases {
        let c = run_via(case, p, ws, via);
        let ctx = format!("{} [{case}] via {via:?}", p.label);
        verify(&c, p, &exp, &ctx);
        let bits = c.element_bits();
        match first_bits.get(&case.isa()) {
            Some((other, reference)) => assert!(
                *reference == bits,
                "{ctx}: result differs from [{other}] (must be bit-identical across thread \
                 counts)"
            ),
            None => {
                first_bits.insert(case.isa(), (*case, bits));
            }
        }
    }
}

const ROW3: (Layout, Layout, Layout) = (Layout::RowMajor, Layout::RowMajor, Layout::RowMajor);

#[test]
fn exec_cases_cover_every_available_isa() {
    let cases = exec_cases();
    assert!(!cases.is_empty());
    for isa in Isa::available() {
        assert!(cases.iter().any(|c| c.isa() == isa && c.threads == 1));
        assert!(cases.iter().any(|c| c.isa() == isa && c.threads == 2));
    }
    println!("ISAs tested: {:?}", Isa::available());
}

/// Every m in 0..=24 and n in 0..=65 (twice the widest tile, 12×32, plus one) with small k:
/// full tiles, every partial-tile shape, and the m = 1 / n = 1 GEMV paths.
#[test]
fn tile_edges_small_k() {
    let cases = exec_cases();
    let mut rng = rng(1);
    let mut ws = GemmWorkspace::new();
    let ab = [(1.0, 0.0), (2.5, 1.0), (1.0, 2.5)];
    let mut idx = 0;
    for m in 0..=24 {
        for n in 0..=65 {
            for k in [1, 7, 16, 17] {
                let (alpha, beta) = ab[idx % ab.len()];
                idx += 1;
                let p = Problem::new(&mut rng, (m, n, k), ROW3, alpha, beta);
                check(&cases, &p, &mut ws);
            }
        }
    }
}

/// Tile edges again with C not row-contiguous (so no vector stores into C) and A, B packed
/// from strided sources; a stride-3 subset of the shapes above.
#[test]
fn tile_edges_strided_operands() {
    let cases = exec_cases();
    let mut rng = rng(2);
    let mut ws = GemmWorkspace::new();
    let layouts = [
        (Layout::ColMajor, Layout::ColMajor, Layout::ColPadded(3)),
        (Layout::RowPadded(3), Layout::General, Layout::RowPadded(3)),
    ];
    let ns: Vec<usize> = (0..=13)
        .chain([16, 17, 31, 32, 33, 48, 63, 64, 65])
        .collect();
    for (li, &l) in layouts.iter().enumerate() {
        for m in (0..=24).filter(|m| m % 3 == li || *m <= 13) {
            for &n in &ns {
                let p = Problem::new(&mut rng, (m, n, 17), l, 2.5, 1.0);
                check(&cases, &p, &mut ws);
            }
        }
    }
}

/// Primes and powers of two ± 1 for m, n, k; k across several kc = 256 blocks; m across the
/// mc block; n across the nc = 4096 block.
#[test]
fn primes_and_block_edges() {
    let cases = exec_cases();
    let mut rng = rng(3);
    let mut ws = GemmWorkspace::new();
    let shapes = [
        (17, 19, 23),
        (19, 23, 17),
        (23, 17, 19),
        (257, 17, 19),
        (17, 257, 23),
        (19, 23, 257),
        (127, 128, 129),
        (128, 129, 127),
        (129, 127, 128),
        (129, 65, 2048),
        (257, 33, 300),
        (3, 4100, 300),
        (200, 200, 200),
    ];
    for (s, &shape) in shapes.iter().enumerate() {
        let layouts = [
            ROW3,
            (Layout::ColMajor, Layout::ColMajor, Layout::RowPadded(3)),
        ];
        let (alpha, beta) = if s % 2 == 0 { (1.0, 0.0) } else { (2.5, 1.0) };
        for l in layouts {
            let p = Problem::new(&mut rng, shape, l, alpha, beta);
            check(&cases, &p, &mut ws);
        }
    }
}

/// m = 1 (the GEMV path, `x·W` with W row-major and `x·Wᵀ` with W stored n×k row-major) and
/// n = 1 (the transposed GEMV path), with k up to 4096.
#[test]
fn gemv_shapes() {
    let cases = exec_cases();
    let mut rng = rng(4);
    let mut ws = GemmWorkspace::new();
    let ns = [1, 2, 5, 16, 17, 64, 65, 300, 1000];
    let ks = [1, 2, 3, 4, 5, 8, 17, 128, 513, 4096];
    let mut idx = 0;
    for &n in &ns {
        for &k in &ks {
            let (alpha, beta) = [(1.0, 0.0), (2.5, 1.0), (1.0, 2.5)][idx % 3];
            idx += 1;
            for b_layout in [Layout::RowMajor, Layout::ColMajor] {
                let p = Problem::new(
                    &mut rng,
                    (1, n, k),
                    (Layout::RowMajor, b_layout, Layout::RowMajor),
                    alpha,
                    beta,
                );
                if b_layout == Layout::ColMajor {
                    // B column-major is exactly the transposed view of W (n × k, row-major).
                    let w = MatRef::row_major(&p.b.buf[p.b.inner()], n, k).unwrap();
                    let bt = w.t();
                    let bv = p.b.view();
                    assert_eq!(
                        (bt.rows(), bt.cols(), bt.row_stride(), bt.col_stride()),
                        (bv.rows(), bv.cols(), bv.row_stride(), bv.col_stride())
                    );
                }
                check(&cases, &p, &mut ws);
            }
            for a_layout in [Layout::RowMajor, Layout::ColMajor] {
                let p = Problem::new(
                    &mut rng,
                    (n, 1, k),
                    (a_layout, Layout::RowMajor, Layout::RowMajor),
                    alpha,
                    beta,
                );
                check(&cases, &p, &mut ws);
            }
        }
    }
}

/// Wide single rows: n across the 4096 block of the blocked path, and column chunks split
/// over threads.
#[test]
fn gemv_wide() {
    let cases = exec_cases();
    let mut rng = rng(11);
    let mut ws = GemmWorkspace::new();
    for (n, k) in [(4096, 300), (4100, 64), (4097, 7)] {
        for lb in [Layout::RowMajor, Layout::ColMajor] {
            let l = (Layout::RowMajor, lb, Layout::RowMajor);
            check(
                &cases,
                &Problem::new(&mut rng, (1, n, k), l, 1.0, 0.0),
                &mut ws,
            );
            let l = (lb, Layout::RowMajor, Layout::RowMajor);
            check(
                &cases,
                &Problem::new(&mut rng, (n, 1, k), l, 2.5, 1.0),
                &mut ws,
            );
        }
    }
}

/// The GEMV paths with non-contiguous operands and outputs: x with a stride (copied first),
/// C as a column or with a stride, B with no unit stride (falls back to the blocked path).
#[test]
fn gemv_strided() {
    let cases = exec_cases();
    let mut rng = rng(5);
    let mut ws = GemmWorkspace::new();
    for (n, k) in [(1, 1), (7, 33), (70, 130), (33, 1000)] {
        for la in LAYOUTS {
            for lb in LAYOUTS {
                for lc in [Layout::RowMajor, Layout::ColPadded(3), Layout::General] {
                    let p = Problem::new(&mut rng, (1, n, k), (la, lb, lc), 2.5, 1.0);
                    check(&cases, &p, &mut ws);
                    let p = Problem::new(&mut rng, (n, 1, k), (la, lb, lc), 1.0, 0.0);
                    check(&cases, &p, &mut ws);
                }
            }
        }
    }
}

/// Decode-batch shapes: m = 2..=32 rows against a 513 × 300 weight, both B layouts.
#[test]
fn skinny_m() {
    let cases = exec_cases();
    let mut rng = rng(6);
    let mut ws = GemmWorkspace::new();
    for m in 2..=32 {
        let lb = if m % 2 == 0 {
            Layout::RowMajor
        } else {
            Layout::ColMajor
        };
        let p = Problem::new(
            &mut rng,
            (m, 300, 513),
            (Layout::RowMajor, lb, Layout::RowMajor),
            1.0,
            0.0,
        );
        check(&cases, &p, &mut ws);
    }
}

/// Short products on the just-in-time B path (m ≤ 240 on AVX-512, row- or column-contiguous B,
/// the latter packed through register transposes; up to 16 rows against row-contiguous B take
/// the direct nest on AVX-512): n across 128-column slabs, thread chunks
/// that end mid-slab, k across kc blocks and not a multiple of the transpose block, tiles of 8
/// and 12 rows with partial last tiles.
#[test]
fn streamed_b_edges() {
    let cases = exec_cases();
    let mut rng = rng(11);
    let mut ws = GemmWorkspace::new();
    let shapes = [
        (5, 1000, 520),
        (16, 129, 257),
        (33, 300, 64),
        (128, 200, 300),
        (200, 1400, 40),
        (240, 700, 17),
    ];
    for (s, &shape) in shapes.iter().enumerate() {
        let lc = if s % 2 == 0 {
            Layout::RowMajor
        } else {
            Layout::ColPadded(3)
        };
        let (alpha, beta) = if s % 3 == 0 { (1.0, 0.0) } else { (2.5, 1.0) };
        for lb in [Layout::RowPadded(3), Layout::ColPadded(3)] {
            let p = Problem::new(&mut rng, shape, (Layout::RowPadded(5), lb, lc), alpha, beta);
            check(&cases, &p, &mut ws);
        }
    }
}

/// Up to 16 rows against row-contiguous B on AVX-512 (6 on AVX2) read B in place (the direct
/// nest): tiles of 8×32 (≤ 8 rows) and 16×16 (9–16 rows), and AVX2's 6×16, with partial rows, k across its 32-row
/// blocks and k = 1, a right edge narrower than one tile (copied and zero-padded), n that is
/// only an edge, several 1 MiB C blocks per thread on 1 and 2 threads (1024 tiles each: 16 rows
/// × 32805 columns, 8 × 65573), strided C (the element-wise epilogue; 3 rows reach this nest
/// only then), α/β combinations.
#[test]
fn direct_b_in_place_edges() {
    let cases = exec_cases();
    let mut rng = rng(13);
    let mut ws = GemmWorkspace::new();
    let (row, strided) = (Layout::RowMajor, Layout::ColPadded(3));
    let shapes = [
        ((5, 1000, 520), row),
        ((16, 32805, 70), row),
        ((8, 65573, 33), row),
        ((12, 700, 100), strided),
        ((9, 47, 1), row),
        ((13, 16, 64), strided),
        ((16, 15, 40), row),
        ((7, 33, 95), strided),
        ((3, 70, 40), strided),
    ];
    for (s, &(shape, lc)) in shapes.iter().enumerate() {
        let (alpha, beta) = if s % 2 == 0 { (1.0, 0.0) } else { (2.5, 1.0) };
        let lb = if s % 2 == 0 {
            Layout::RowMajor
        } else {
            Layout::RowPadded(3)
        };
        let p = Problem::new(&mut rng, shape, (Layout::RowPadded(5), lb, lc), alpha, beta);
        check(&cases, &p, &mut ws);
    }
}

/// The streamed nest over several C blocks (each thread keeps 1 MiB of C: 1280 columns per
/// thread at m = 200), including a last block narrower than one NR panel per thread
/// (96 × 5377: on every ISA's tiles).
#[test]
fn streamed_several_c_blocks() {
    let cases = exec_cases();
    let mut rng = rng(12);
    let mut ws = GemmWorkspace::new();
    for shape in [(96, 5377, 40), (240, 2049, 70), (200, 2600, 33)] {
        for lb in [Layout::RowPadded(3), Layout::ColPadded(3)] {
            let p = Problem::new(
                &mut rng,
                shape,
                (Layout::RowMajor, lb, Layout::RowMajor),
                2.5,
                1.0,
            );
            check(&cases, &p, &mut ws);
        }
    }
}

/// `isa` sequential, and on a pool of `threads`.
fn sequential_and(isa: Isa, threads: usize) -> [ExecCase; 2] {
    [
        ExecCase {
            exec: exec_for(isa),
            threads: 1,
        },
        ExecCase {
            exec: exec_for(isa).with_parallelism(Parallelism::Rayon),
            threads,
        },
    ]
}

/// From 1536 rows (k over more than one kc block, B up to 32 MiB) `gemm` packs all of B and
/// runs the prepacked nest (the portable path keeps the blocked nest): every B layout (row-
/// and column-major, padded, neither stride 1, the edge panel narrower than NR, k across
/// several kc blocks with a partial last one), strided A and C, β = 0 over a NaN C and β ≠ 0,
/// on every ISA path, 1 and 2 threads bit-identical; then 3 threads (row blocks that are not
/// a multiple of the thread count) against 1.
#[test]
fn many_rows_pack_whole_b() {
    let cases = exec_cases();
    let mut rng = rng(14);
    let mut ws = GemmWorkspace::new();
    for (shape, layouts, alpha, beta) in [
        ((1536, 37, 300), ROW3, 1.0, 0.0),
        (
            (1541, 70, 513),
            (
                Layout::RowPadded(5),
                Layout::ColPadded(3),
                Layout::RowPadded(2),
            ),
            2.5,
            1.0,
        ),
        (
            (1600, 33, 257),
            (Layout::ColMajor, Layout::General, Layout::ColMajor),
            -1.0,
            2.5,
        ),
    ] {
        let p = Problem::new(&mut rng, shape, layouts, alpha, beta);
        check(&cases, &p, &mut ws);
    }
    for isa in Isa::available() {
        let cases = sequential_and(isa, 3);
        let p = Problem::new(&mut rng, (1700, 100, 300), ROW3, 1.0, 0.0);
        check(&cases, &p, &mut ws);
    }
}

/// 3 and 4 threads (the other tests use 1 and 2): uneven chunk splits in the streamed nest,
/// and the blocked nest with both several ic blocks and several column chunks per block (and
/// `gemm_prepacked`, whose threads take row blocks — 1000 rows: more blocks than threads,
/// not a multiple of them — or column chunks); the result must still equal the sequential one
/// bit for bit.
#[test]
fn three_and_four_threads_agree_bitwise() {
    let mut rng = rng(13);
    let mut ws = GemmWorkspace::new();
    for isa in Isa::available() {
        for threads in [3, 4] {
            let cases = sequential_and(isa, threads);
            for shape in [
                (300, 200, 300),
                (64, 1000, 300),
                (7, 300, 100),
                (1000, 70, 60),
            ] {
                let p = Problem::new(&mut rng, shape, ROW3, 1.0, 0.0);
                check(&cases, &p, &mut ws);
                check_via(&cases, &p, &mut ws, Via::Prepacked);
            }
        }
    }
}

/// Two to four rows against B = Wᵀ (column-contiguous, also padded), which stream B column by
/// column: n not a multiple of the 4 columns taken at a time, k with a partial vector, C
/// row-major and column-major, β = 0 (C pre-filled with NaN) and β ≠ 0.
#[test]
fn skinny_rows_against_transposed_b() {
    let cases = exec_cases();
    let mut rng = rng(14);
    let mut ws = GemmWorkspace::new();
    for m in 2..=4 {
        for (n, k) in [(301, 517), (5, 16), (1030, 33)] {
            for lb in [Layout::ColMajor, Layout::ColPadded(3)] {
                for (lc, (alpha, beta)) in [
                    (Layout::RowMajor, (1.0, 0.0)),
                    (Layout::ColPadded(2), (2.5, 1.0)),
                ] {
                    let p =
                        Problem::new(&mut rng, (m, n, k), (Layout::RowMajor, lb, lc), alpha, beta);
                    check(&cases, &p, &mut ws);
                }
            }
        }
    }
}

/// Every combination of A, B and C layouts (row-major, column-major, padded, general).
#[test]
fn all_layouts() {
    let cases = exec_cases();
    let mut rng = rng(7);
    let mut ws = GemmWorkspace::new();
    let ab = [(1.0, 0.0), (2.5, 1.0), (1.0, 2.5), (2.5, 2.5)];
    let mut idx = 0;
    for la in LAYOUTS {
        for lb in LAYOUTS {
            for lc in LAYOUTS {
                for shape in [(13, 37, 29), (25, 70, 300)] {
                    let (alpha, beta) = ab[idx % ab.len()];
                    idx += 1;
                    let p = Problem::new(&mut rng, shape, (la, lb, lc), alpha, beta);
                    check(&cases, &p, &mut ws);
                }
            }
        }
    }
}

/// Operands with a zero stride (`MatRef` allows them: one row or column standing for all),
/// as A and as B, against row- and column-major C, on shapes that take each nest: GEMV,
/// direct and skinny rows, the streamed nest and the blocked one (k over several blocks).
#[test]
fn broadcast_operands() {
    let cases = exec_cases();
    let mut rng = rng(11);
    let mut ws = GemmWorkspace::new();
    let broadcasts = [Layout::RowBroadcast, Layout::ColBroadcast];
    let mut idx = 0;
    for shape in [(1, 300, 200), (5, 70, 129), (40, 100, 300), (300, 70, 600)] {
        for la in broadcasts.into_iter().chain([Layout::RowMajor]) {
            for lb in broadcasts.into_iter().chain([Layout::ColMajor]) {
                if !broadcasts.contains(&la) && !broadcasts.contains(&lb) {
                    continue;
                }
                let lc = [Layout::RowMajor, Layout::ColMajor][idx % 2];
                let (alpha, beta) = [(1.0, 0.0), (2.5, 1.0)][idx / 2 % 2];
                idx += 1;
                let p = Problem::new(&mut rng, shape, (la, lb, lc), alpha, beta);
                check(&cases, &p, &mut ws);
            }
        }
    }
}

/// A zero-stride view may be far longer than its buffer: k = 2^14 over one float of A and
/// one row of B is computed exactly (every partial sum is a multiple of 1/8 below 2^11), and
/// a k whose packed rows could not be sized (2^61 + 1) is a `SizeOverflow` error that leaves
/// C untouched, on the GEMV, direct, streamed and blocked paths alike.
#[test]
fn broadcast_views_of_huge_k() {
    let one_a = [0.5f32];
    let row_b = [0.25f32; 64];
    for case in exec_cases() {
        for (m, n) in [(1, 64), (2, 64), (40, 64), (300, 64)] {
            let ctx = format!("[{case}] m={m} n={n}");
            let mut ws = GemmWorkspace::new();
            let k = 1 << 14;
            let a = MatRef::new(&one_a, m, k, 0, 0).unwrap();
            let b = MatRef::new(&row_b, k, n, 0, 1).unwrap();
            let mut c = vec![poison(); m * n];
            let mut cv = MatMut::row_major(&mut c, m, n).unwrap();
            case.run(|| gemm(&case.exec, 1.0, a, b, 0.0, &mut cv, &mut ws))
                .unwrap_or_else(|e| panic!("{ctx}: {e}"));
            assert!(c.iter().all(|&v| v == 2048.0), "{ctx}: {:?}", &c[..4]);

            let k = (1usize << 61) + 1;
            let a = MatRef::new(&one_a, m, k, 0, 0).unwrap();
            let b = MatRef::new(&row_b, k, n, 0, 1).unwrap();
            let mut c = vec![3.0f32; m * n];
            let mut cv = MatMut::row_major(&mut c, m, n).unwrap();
            let r = case.run(|| gemm(&case.exec, 1.0, a, b, 0.0, &mut cv, &mut ws));
            assert_eq!(r, Err(KernelError::SizeOverflow), "{ctx}");
            assert!(c.iter().all(|&v| v == 3.0), "{ctx}: C changed");
        }
    }
}

/// α, β ∈ {0, 1, 2.5}: β = 0 never reads C (pre-filled with NaN), α = 0 never reads A or B
/// (NaN) and gives exactly β·C₀ (0 when β = 0); k = 0 behaves as α = 0.
#[test]
fn alpha_beta_semantics() {
    let cases = exec_cases();
    let mut rng = rng(8);
    let mut ws = GemmWorkspace::new();
    let shapes = [
        (0, 0, 0),
        (5, 0, 3),
        (0, 5, 3),
        (4, 6, 0),
        (1, 1, 1),
        (1, 40, 70),
        (40, 1, 70),
        (13, 37, 29),
        (24, 64, 260),
    ];
    for shape in shapes {
        for alpha in [0.0, 1.0, 2.5] {
            for beta in [0.0, 1.0, 2.5] {
                for l in [
                    ROW3,
                    (Layout::ColMajor, Layout::General, Layout::ColPadded(3)),
                ] {
                    let p = Problem::new(&mut rng, shape, l, alpha, beta);
                    check(&cases, &p, &mut ws);
                    let (m, n, _) = shape;
                    if (alpha == 0.0 || shape.2 == 0) && beta == 0.0 && m * n > 0 {
                        // Spot check of the exact-zero rule on one case.
                        let c = run(&cases[0], &p, &mut ws);
                        assert!(c.element_bits().iter().all(|&b| f32::from_bits(b) == 0.0));
                    }
                }
            }
        }
    }
}

/// Negative α and β and non-trivial values, for sign handling in the scaling epilogue.
#[test]
fn negative_scalars() {
    let cases = exec_cases();
    let mut rng = rng(9);
    let mut ws = GemmWorkspace::new();
    for shape in [(1, 33, 40), (33, 1, 40), (13, 37, 29)] {
        for (alpha, beta) in [(-1.0, 0.0), (-0.75, -2.0), (3.0e-3, 1.0e3)] {
            let p = Problem::new(&mut rng, shape, ROW3, alpha, beta);
            check(&cases, &p, &mut ws);
        }
    }
}

#[test]
fn shape_mismatch_errors_leave_c_unchanged() {
    let a = vec![1.0f32; 64];
    let b = vec![1.0f32; 64];
    let mut ws = GemmWorkspace::new();
    // (A rows×cols, B rows×cols, C rows×cols, the check that fails)
    let bad = [
        ((3, 4), (5, 2), (3, 2), "a.cols vs b.rows"),
        ((3, 4), (4, 2), (2, 2), "a.rows vs c.rows"),
        ((3, 4), (4, 2), (3, 3), "b.cols vs c.cols"),
        ((1, 4), (4, 2), (1, 3), "b.cols vs c.cols"),
        ((3, 4), (4, 1), (2, 1), "a.rows vs c.rows"),
        ((0, 4), (3, 2), (0, 2), "a.cols vs b.rows"),
    ];
    for case in exec_cases() {
        for &((ar, ac), (br, bc), (cr, cc), what) in &bad {
            let mut c = vec![7.0f32; 16];
            let before = c.clone();
            let err = {
                let mut cv = MatMut::row_major(&mut c, cr, cc).unwrap();
                case.run(|| {
                    gemm(
                        &case.exec,
                        1.0,
                        MatRef::row_major(&a, ar, ac).unwrap(),
                        MatRef::row_major(&b, br, bc).unwrap(),
                        0.0,
                        &mut cv,
                        &mut ws,
                    )
                })
            };
            match err {
                Err(KernelError::ShapeMismatch { what: w, .. }) => assert_eq!(w, what),
                other => panic!("[{case}] expected ShapeMismatch({what}), got {other:?}"),
            }
            assert_eq!(c, before, "[{case}] C changed on error");
        }
    }
}

#[test]
fn view_construction_errors() {
    let data = vec![0.0f32; 12];
    let mut out = vec![0.0f32; 12];
    // Too short.
    assert!(matches!(
        MatRef::row_major(&data[..5], 2, 3),
        Err(KernelError::BufferTooSmall {
            needed: 6,
            len: 5,
            ..
        })
    ));
    assert!(matches!(
        MatRef::new(&data, 3, 4, 5, 1),
        Err(KernelError::BufferTooSmall {
            needed: 14,
            len: 12,
            ..
        })
    ));
    assert!(matches!(
        MatMut::col_major(&mut out[..11], 3, 4),
        Err(KernelError::BufferTooSmall {
            needed: 12,
            len: 11,
            ..
        })
    ));
    // Aliasing mutable views; read-only views may alias (broadcast).
    for (r, c, rs, cs) in [
        (2, 2, 1, 1),
        (3, 4, 1, 1),
        (2, 3, 2, 1),
        (3, 2, 1, 2),
        (2, 2, 0, 1),
    ] {
        let before = out.clone();
        match MatMut::new(&mut out, r, c, rs, cs) {
            Err(KernelError::AliasingStrides {
                rows,
                cols,
                row_stride,
                col_stride,
            }) => assert_eq!((rows, cols, row_stride, col_stride), (r, c, rs, cs)),
            other => panic!("{r}x{c} strides ({rs},{cs}): expected AliasingStrides, got {other:?}"),
        }
        assert_eq!(out, before);
        assert!(MatRef::new(&data, r, c, rs, cs).is_ok());
    }
    // Degenerate shapes with a zero stride are not aliasing.
    assert!(MatMut::new(&mut out, 1, 5, 0, 1).is_ok());
    assert!(MatMut::new(&mut out, 5, 1, 1, 0).is_ok());
    // Empty views never alias, whatever their strides: `row_major(_, m, 0)` has row stride 0.
    assert!(MatMut::new(&mut [], 0, 5, 0, 0).is_ok());
    assert!(MatMut::row_major(&mut [], 2, 0).is_ok());
    assert!(MatMut::col_major(&mut [], 0, 3).is_ok());
    // Shape arithmetic that overflows.
    assert!(matches!(
        MatRef::new(&data, 3, 2, usize::MAX, 1),
        Err(KernelError::SizeOverflow)
    ));
}

#[test]
fn isa_availability() {
    for isa in Isa::ALL {
        match Exec::new().with_isa(isa) {
            Ok(e) => {
                assert!(isa.is_available());
                assert_eq!(e.isa(), isa);
            }
            Err(err) => {
                assert!(!isa.is_available());
                assert_eq!(err, KernelError::IsaUnavailable(isa));
            }
        }
    }
    assert!(Isa::Portable.is_available());
    assert!(Isa::detected().is_available());
}

/// 300 seeded random problems: shapes in 0..70, random layouts (with random padding), α, β,
/// ISA and thread count, against the f64 reference. `GEMM_FUZZ_SEED` overrides the seed.
#[test]
fn randomized_differential() {
    let seed: u64 = std::env::var("GEMM_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_6e33);
    let cases = exec_cases();
    let mut rng = rng(seed);
    let mut ws = GemmWorkspace::new();
    let scalars = [0.0, 1.0, 2.5, -1.5, 0.3];
    for i in 0..300 {
        let shape = (
            rng.random_range(0..70),
            rng.random_range(0..70),
            rng.random_range(0..70),
        );
        let layouts = (
            Layout::random(&mut rng),
            Layout::random(&mut rng),
            Layout::random(&mut rng),
        );
        let alpha = scalars[rng.random_range(0..scalars.len())];
        let beta = scalars[rng.random_range(0..scalars.len())];
        let case = cases[rng.random_range(0..cases.len())];
        let mut p = Problem::new(&mut rng, shape, layouts, alpha, beta);
        p.label = format!("seed={seed:#x} case={i} {}", p.label);
        let exp = expected(&p);
        let c = run(&case, &p, &mut ws);
        verify(&c, &p, &exp, &format!("{} [{case}]", p.label));
    }
}

/// A reused workspace gives identical results and does not grow on an identical call (nor on
/// a smaller one).
#[test]
fn workspace_reuse() {
    let mut rng = rng(10);
    for case in exec_cases() {
        for shape in [(100, 200, 300), (1, 500, 300), (37, 1, 300)] {
            let p = Problem::new(&mut rng, shape, ROW3, 1.0, 0.0);
            let mut ws = GemmWorkspace::new();
            let first = run(&case, &p, &mut ws);
            let bytes = ws.bytes();
            let second = run(&case, &p, &mut ws);
            assert_eq!(first.element_bits(), second.element_bits(), "[{case}]");
            assert_eq!(
                ws.bytes(),
                bytes,
                "[{case}] workspace grew on a repeated call"
            );
            if shape.0 > 1 && shape.1 > 1 {
                let small = Problem::new(&mut rng, (20, 30, 40), ROW3, 1.0, 0.0);
                let _ = run(&case, &small, &mut ws);
                assert_eq!(
                    ws.bytes(),
                    bytes,
                    "[{case}] workspace grew on a smaller call"
                );
            }
            // A fresh workspace gives the same bits as a reused one.
            let third = run(&case, &p, &mut GemmWorkspace::new());
            assert_eq!(first.element_bits(), third.element_bits(), "[{case}]");
        }
    }
}

/// `gemm_prepacked` against the f64 reference: tile edges in m (both tile heights, and one to
/// four rows, whose path reads eight or four kc blocks at a time: k = 2100, 1100, 1300, 1025
/// have full groups, leftover full blocks and a partial one),
/// n (partial and zero-padded last panels) and k (partial kc blocks), B in every layout (the
/// packing reads any strides), strided A and C, the α/β semantics with C pre-filled with NaN when β = 0,
/// every ISA, 1 and 2 threads agreeing bit for bit, guard zones intact.
#[test]
fn prepacked_matches_reference() {
    let cases = exec_cases();
    let mut rng = rng(21);
    let mut ws = GemmWorkspace::new();
    for (m, n, k) in [
        (1, 1, 1),
        (1, 257, 513),
        (1, 45, 2100),
        (2, 33, 17),
        (2, 70, 1100),
        (3, 40, 1300),
        (4, 97, 1025),
        (7, 31, 255),
        (8, 32, 256),
        (12, 64, 257),
        (13, 65, 100),
        (16, 97, 513),
        (17, 40, 3),
        (33, 129, 64),
        (128, 70, 300),
    ] {
        for lb in LAYOUTS {
            let p = Problem::new(
                &mut rng,
                (m, n, k),
                (Layout::RowMajor, lb, Layout::RowMajor),
                1.0,
                0.0,
            );
            check_via(&cases, &p, &mut ws, Via::Prepacked);
        }
        for (la, lc) in [
            (Layout::ColPadded(2), Layout::RowPadded(5)),
            (Layout::General, Layout::ColMajor),
            (Layout::RowMajor, Layout::General),
        ] {
            for (alpha, beta) in [(2.5, 1.0), (1.0, 2.5), (0.0, 2.5), (2.5, 0.0)] {
                let p = Problem::new(&mut rng, (m, n, k), (la, Layout::RowMajor, lc), alpha, beta);
                check_via(&cases, &p, &mut ws, Via::Prepacked);
            }
        }
    }
}

/// Several blocks of C in every direction: more than one mc block of rows, more than one C
/// block of columns per thread, more than one kc block of k, with β ≠ 0 accumulating across
/// them; and the empty and k = 0 shapes.
#[test]
fn prepacked_several_blocks_and_empty_shapes() {
    let cases = exec_cases();
    let mut rng = rng(22);
    let mut ws = GemmWorkspace::new();
    for shape in [
        (300, 2300, 300),
        (250, 1100, 520),
        (0, 5, 3),
        (4, 0, 3),
        (4, 5, 0),
    ] {
        let p = Problem::new(&mut rng, shape, ROW3, 2.5, 1.0);
        check_via(&cases, &p, &mut ws, Via::Prepacked);
        let p = Problem::new(&mut rng, shape, ROW3, 1.0, 0.0);
        check_via(&cases, &p, &mut ws, Via::Prepacked);
    }
}

/// A packed B reports its shape and path, and its clone multiplies like it; calls on another
/// path, or with shapes that do not match it, are errors that leave C untouched.
#[test]
fn prepacked_errors() {
    let b: Vec<f32> = (0..6 * 40).map(|i| i as f32).collect();
    let a = vec![1.0f32; 3 * 6];
    let mut ws = GemmWorkspace::new();
    for isa in Isa::available() {
        let exec = exec_for(isa);
        let packed = PackedB::new(&exec, MatRef::row_major(&b, 6, 40).unwrap()).unwrap();
        assert_eq!((packed.k(), packed.n(), packed.isa()), (6, 40, isa));
        assert!(packed.bytes() >= 6 * 40 * 4);
        // A clone multiplies like the original, bit for bit.
        let copy = packed.clone();
        let mut products = [vec![0.0f32; 3 * 40], vec![0.0f32; 3 * 40]];
        for (p, c) in [&packed, &copy].into_iter().zip(&mut products) {
            let a = MatRef::row_major(&a, 3, 6).unwrap();
            let mut cv = MatMut::row_major(c, 3, 40).unwrap();
            gemm_prepacked(&exec, 1.0, a, p, 0.0, &mut cv, &mut ws).unwrap();
        }
        assert_eq!(products[0], products[1]);
        assert_eq!(
            products[0][41],
            (0..6).map(|p| (p * 40 + 1) as f32).sum::<f32>()
        );
        let mut c = vec![7.0f32; 3 * 40];
        for other in Isa::available().into_iter().filter(|&o| o != isa) {
            let err = gemm_prepacked(
                &exec_for(other),
                1.0,
                MatRef::row_major(&a, 3, 6).unwrap(),
                &packed,
                0.0,
                &mut MatMut::row_major(&mut c, 3, 40).unwrap(),
                &mut ws,
            )
            .unwrap_err();
            assert_eq!(
                err,
                KernelError::PackedForOtherIsa {
                    packed: isa,
                    requested: other
                }
            );
            assert!(err.to_string().contains(isa.name()), "{err}");
        }
        // k of A against k of the packed B, and n of C against its n.
        let err = gemm_prepacked(
            &exec,
            1.0,
            MatRef::row_major(&a, 3, 6).unwrap(),
            &packed,
            0.0,
            &mut MatMut::row_major(&mut c[..3 * 39], 3, 39).unwrap(),
            &mut ws,
        )
        .unwrap_err();
        assert!(matches!(err, KernelError::ShapeMismatch { .. }), "{err}");
        let err = gemm_prepacked(
            &exec,
            1.0,
            MatRef::row_major(&a, 6, 3).unwrap(),
            &packed,
            0.0,
            &mut MatMut::row_major(&mut c, 3, 40).unwrap(),
            &mut ws,
        );
        assert!(
            matches!(err, Err(KernelError::ShapeMismatch { .. })),
            "{err:?}"
        );
        assert!(c.iter().all(|&x| x == 7.0), "C written on error");
    }
}
