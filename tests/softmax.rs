//! Row softmax, its special cases and options, the vectorised `exp`, and the online (blockwise)
//! softmax state, on every available ISA, against f64 references.

mod common;

use common::{exec_cases, exec_for, rng};
use kernels::reference::softmax_f64;
use kernels::{
    Exec, Isa, KernelError, Mask, OnlineSoftmax, SoftmaxOptions, exp, exp2, softmax_rows,
    softmax_rows_into,
};
use rand::Rng;

const INF: f32 = f32::INFINITY;
const NEG_INF: f32 = f32::NEG_INFINITY;

/// One sequential exec per available ISA.
fn isa_execs() -> Vec<Exec> {
    Isa::available().into_iter().map(exec_for).collect()
}

fn opts(scale: f32, mask: Mask) -> SoftmaxOptions {
    SoftmaxOptions { scale, mask }
}

/// Floats of sentinel on each side of every output [`softmax`] writes (odd, so that outputs
/// also start off the vector alignment).
const GUARD: usize = 37;
const SENTINEL: u32 = 0x7fc0_0bad;

/// Softmax of `data` (rows of `row_len`) both out of place and in place, each into the middle
/// of a buffer with [`GUARD`] sentinels on both sides; asserts the two agree bit for bit and
/// that no sentinel changed, and returns the result.
fn softmax(exec: &Exec, data: &[f32], row_len: usize, o: SoftmaxOptions) -> Vec<f32> {
    let guarded = |inner: &[f32]| {
        let mut buf = vec![f32::from_bits(SENTINEL); inner.len() + 2 * GUARD];
        buf[GUARD..GUARD + inner.len()].copy_from_slice(inner);
        buf
    };
    let check_guards = |buf: &[f32], what: &str| {
        let n = buf.len() - 2 * GUARD;
        let intact = buf[..GUARD]
            .iter()
            .chain(&buf[GUARD + n..])
            .all(|v| v.to_bits() == SENTINEL);
        assert!(
            intact,
            "[{}] {what} softmax (row_len {row_len}, {o:?}) wrote outside its output",
            exec.isa()
        );
    };
    let n = data.len();
    let mut out = guarded(&vec![f32::from_bits(SENTINEL); n]);
    softmax_rows_into(exec, data, &mut out[GUARD..GUARD + n], row_len, o)
        .expect("softmax_rows_into");
    check_guards(&out, "out-of-place");
    let mut inplace = guarded(data);
    softmax_rows(exec, &mut inplace[GUARD..GUARD + n], row_len, o).expect("softmax_rows");
    check_guards(&inplace, "in-place");
    let (out, inplace) = (&out[GUARD..GUARD + n], &inplace[GUARD..GUARD + n]);
    assert_eq!(
        bits(out),
        bits(inplace),
        "[{}] in-place and out-of-place softmax differ",
        exec.isa()
    );
    out.to_vec()
}

fn bits(x: &[f32]) -> Vec<u32> {
    x.iter().map(|v| v.to_bits()).collect()
}

/// softmax(scale·row) in f64 (the scale applied in f64), for finite rows.
fn softmax_scaled_f64(row: &[f32], scale: f32) -> Vec<f64> {
    let y: Vec<f64> = row.iter().map(|&x| x as f64 * scale as f64).collect();
    let max = y.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = y.iter().map(|v| (v - max).exp()).collect();
    let sum: f64 = e.iter().sum();
    e.into_iter().map(|v| v / sum).collect()
}

/// Per-element check against the f64 reference: NaN where it is NaN; exactly 0 where the input
/// is −∞ (masked); otherwise |err| ≤ 2e-6, and relative error ≤ 1e-5 above 1e-3.
fn check_row(got: &[f32], input: &[f32], want: &[f64], ctx: &str) {
    assert_eq!(got.len(), want.len());
    for (j, (&g, &w)) in got.iter().zip(want).enumerate() {
        if w.is_nan() {
            assert!(g.is_nan(), "{ctx}: [{j}] = {g}, expected NaN");
            continue;
        }
        if input[j] == NEG_INF {
            assert!(
                g == 0.0,
                "{ctx}: [{j}] (input −∞) = {g:e}, expected exactly 0"
            );
        }
        let err = (g as f64 - w).abs();
        assert!(
            err <= 2e-6,
            "{ctx}: [{j}] = {g:e}, expected {w:e} (abs error {err:e} > 2e-6; input {})",
            input[j]
        );
        if w > 1e-3 {
            assert!(
                err / w <= 1e-5,
                "{ctx}: [{j}] = {g:e}, expected {w:e} (rel error {:e} > 1e-5)",
                err / w
            );
        }
    }
}

/// The row sums to 1 within 1e-6 (summed in f64).
fn check_sum(got: &[f32], ctx: &str) {
    let s: f64 = got.iter().map(|&v| v as f64).sum();
    assert!((s - 1.0).abs() <= 1e-6, "{ctx}: row sums to {s}");
}

const LENGTHS: [usize; 6] = [127, 128, 129, 1000, 4096, 32768];

#[test]
fn random_rows_against_reference() {
    let mut rng = rng(20);
    let lens: Vec<usize> = (1..=70).chain(LENGTHS).collect();
    for exec in isa_execs() {
        for &len in &lens {
            // Three rows per call (one call for the longest rows), logits in ±8 and ±40.
            let rows = if len > 4096 { 1 } else { 3 };
            for spread in [8.0f32, 40.0] {
                let data: Vec<f32> = (0..rows * len)
                    .map(|_| rng.random_range(-spread..=spread))
                    .collect();
                let got = softmax(&exec, &data, len, SoftmaxOptions::default());
                for r in 0..rows {
                    let ctx = format!("[{}] len={len} spread={spread} row={r}", exec.isa());
                    let (input, out) = (&data[r * len..][..len], &got[r * len..][..len]);
                    check_row(out, input, &softmax_f64(input), &ctx);
                    check_sum(out, &ctx);
                }
            }
        }
    }
}

/// Logits far from 0 shift every exponent by the same large amount: rows whose max·scale·log₂e
/// lies on either side of the limit below which the row softmax fuses its exponent into one
/// FMA (2¹³), at several scales, against the f64 reference.
#[test]
fn offset_logits_around_the_fused_exponent_limit() {
    let mut rng = rng(26);
    for exec in isa_execs() {
        for scale in [1.0f32, 0.125, 3.0] {
            for offset in [
                0.0f32, -1e3, 1e3, 5.6e3, 5.7e3, 1e4, 4.5e4, 4.6e4, 1.8e5, 1e6,
            ] {
                let len = 203;
                let row: Vec<f32> = (0..len)
                    .map(|_| offset + rng.random_range(-10.0..=10.0))
                    .collect();
                let out = softmax(&exec, &row, len, opts(scale, Mask::None));
                let ctx = format!("[{}] scale={scale} offset={offset}", exec.isa());
                check_row(&out, &row, &softmax_scaled_f64(&row, scale), &ctx);
                check_sum(&out, &ctx);
            }
        }
    }
}

#[test]
fn masked_entries() {
    let mut rng = rng(21);
    for exec in isa_execs() {
        for len in [1, 2, 7, 8, 9, 15, 16, 17, 31, 33, 70, 129] {
            let isa = exec.isa();
            // Fully masked: zeros, never NaN.
            let out = softmax(&exec, &vec![NEG_INF; len], len, SoftmaxOptions::default());
            assert!(out.iter().all(|&v| v == 0.0), "[{isa}] len={len}: {out:?}");
            // Some −∞ (first, last, every third): exactly 0 there, the softmax elsewhere.
            let mut row: Vec<f32> = (0..len).map(|_| rng.random_range(-5.0..=5.0)).collect();
            for j in (0..len).filter(|j| j % 3 == 0 || *j == len - 1) {
                row[j] = NEG_INF;
            }
            let out = softmax(&exec, &row, len, SoftmaxOptions::default());
            let ctx = format!("[{isa}] len={len} partly masked");
            check_row(&out, &row, &softmax_f64(&row), &ctx);
            if row.iter().any(|v| v.is_finite()) {
                check_sum(&out, &ctx);
            }
        }
        // Empty input.
        let mut empty: [f32; 0] = [];
        softmax_rows(&exec, &mut empty, 0, SoftmaxOptions::default()).unwrap();
        softmax_rows(&exec, &mut empty, 5, SoftmaxOptions::default()).unwrap();
    }
}

#[test]
fn nan_poisons_the_whole_row() {
    let mut rng = rng(22);
    for exec in isa_execs() {
        let isa = exec.isa();
        for len in [1, 2, 7, 8, 9, 15, 16, 17, 31, 33, 70, 129] {
            // Positions in the first vector, the middle, and the tail past the last full vector.
            for pos in [0, len / 2, len - 1] {
                let mut row: Vec<f32> = (0..len).map(|_| rng.random_range(-5.0..=5.0)).collect();
                row[pos] = f32::NAN;
                let out = softmax(&exec, &row, len, SoftmaxOptions::default());
                assert!(
                    out.iter().all(|v| v.is_nan()),
                    "[{isa}] len={len} NaN at {pos}: {out:?}"
                );
                // NaN together with +∞, and in an otherwise masked row.
                let mut with_inf = row.clone();
                with_inf[(pos + 1) % len] = INF;
                with_inf[pos] = f32::NAN;
                let out = softmax(&exec, &with_inf, len, SoftmaxOptions::default());
                assert!(out.iter().all(|v| v.is_nan()), "[{isa}] {with_inf:?}");
                let mut masked = vec![NEG_INF; len];
                masked[pos] = f32::NAN;
                let out = softmax(&exec, &masked, len, SoftmaxOptions::default());
                assert!(out.iter().all(|v| v.is_nan()), "[{isa}] {masked:?}");
            }
        }
        for row in [
            vec![f32::NAN, NEG_INF],
            vec![NEG_INF, f32::NAN],
            vec![f32::NAN],
            vec![INF, f32::NAN],
        ] {
            let out = softmax(&exec, &row, row.len(), SoftmaxOptions::default());
            assert!(out.iter().all(|v| v.is_nan()), "[{isa}] {row:?} -> {out:?}");
        }
    }
}

/// Rows whose result is known exactly.
#[test]
fn exact_special_rows() {
    let third = 1.0f32 / 3.0;
    let big = f32::MAX;
    let cases: Vec<(Vec<f32>, Vec<f32>)> = vec![
        (vec![INF, 1.0], vec![1.0, 0.0]),
        (vec![INF, INF, 0.0], vec![0.5, 0.5, 0.0]),
        (vec![NEG_INF, INF], vec![0.0, 1.0]),
        (
            vec![1.0, INF, NEG_INF, INF, INF],
            vec![0.0, third, 0.0, third, third],
        ),
        (vec![1e30, -1e30, 0.0, 1e30], vec![0.5, 0.0, 0.0, 0.5]),
        (vec![1e30, 0.0], vec![1.0, 0.0]),
        (vec![-1e30, -1e30], vec![0.5, 0.5]),
        (vec![big, -big], vec![1.0, 0.0]),
        (vec![big, big], vec![0.5, 0.5]),
        (vec![-big, -big, NEG_INF], vec![0.5, 0.5, 0.0]),
        (vec![3.0; 64], vec![1.0 / 64.0; 64]),
    ];
    for exec in isa_execs() {
        for (row, want) in &cases {
            let out = softmax(&exec, row, row.len(), SoftmaxOptions::default());
            assert_eq!(&out, want, "[{}] softmax({row:?})", exec.isa());
        }
        // +∞ in the tail past the last full vector of a long row.
        for len in [17, 33, 37, 70] {
            let mut row: Vec<f32> = (0..len).map(|j| j as f32 * 0.5 - 3.0).collect();
            row[len - 1] = INF;
            let out = softmax(&exec, &row, len, SoftmaxOptions::default());
            let mut want = vec![0.0; len];
            want[len - 1] = 1.0;
            assert_eq!(out, want, "[{}] len={len} +∞ last", exec.isa());
        }
        // A row of length 1 is exactly 1 (unless −∞ or NaN), whatever the value and scale.
        for x in [0.0, -5.0, 88.0, -200.0, 1e30, -1e30, INF, f32::MIN_POSITIVE] {
            for scale in [1.0, 0.125, 1e-30] {
                let out = softmax(&exec, &[x], 1, opts(scale, Mask::None));
                assert_eq!(out, [1.0], "[{}] softmax([{x}]) scale {scale}", exec.isa());
            }
        }
        assert_eq!(
            softmax(&exec, &[NEG_INF], 1, SoftmaxOptions::default()),
            [0.0]
        );
        // The same for a dense sweep of logits around where the row softmax switches between
        // its fused and its exact-shift exponent (|x·scale·log₂e| = 2¹³), and for one-hot rows
        // (one finite entry among −∞): the finite entry is exactly 1.
        let sweep = (0..4000)
            .map(|i| (i as f32 - 2000.0) * 3.7)
            .chain((0..200).map(|i| 1000.0 * 1.035f32.powi(i)));
        let mut one_hot = [NEG_INF; 17];
        for x in sweep {
            for scale in [1.0, 0.125, 3.0] {
                let ctx = format!("[{}] x={x} scale={scale}", exec.isa());
                let out = softmax(&exec, &[x], 1, opts(scale, Mask::None));
                assert_eq!(out, [1.0], "{ctx}: length 1");
                one_hot[5] = x;
                let out = softmax(&exec, &one_hot, 17, opts(scale, Mask::None));
                assert_eq!(out[5], 1.0, "{ctx}: one-hot");
            }
        }
    }
}

/// Huge and all-negative logits give the right finite softmax.
#[test]
fn extreme_logits() {
    let mut rng = rng(23);
    for exec in isa_execs() {
        for len in [2, 9, 17, 100] {
            let rows: Vec<Vec<f32>> = vec![
                (0..len)
                    .map(|_| rng.random_range(-1.0f32..=1.0) * 1e30)
                    .collect(),
                (0..len)
                    .map(|_| 1e30 + rng.random_range(0.0f32..=1.0) * 1e24)
                    .collect(),
                (0..len)
                    .map(|_| rng.random_range(-1000.0f32..=-990.0))
                    .collect(),
                (0..len)
                    .map(|_| rng.random_range(-1e30f32..=-1e29))
                    .collect(),
                (0..len)
                    .map(|_| rng.random_range(-90.0f32..=-1.0))
                    .collect(),
            ];
            for row in rows {
                let out = softmax(&exec, &row, len, SoftmaxOptions::default());
                let ctx = format!("[{}] {row:?}", exec.isa());
                assert!(out.iter().all(|v| v.is_finite()), "{ctx}: {out:?}");
                check_row(&out, &row, &softmax_f64(&row), &ctx);
                check_sum(&out, &ctx);
            }
        }
    }
}

#[test]
fn scale_option() {
    let mut rng = rng(24);
    for exec in isa_execs() {
        for scale in [0.125, 1.0 / 128f32.sqrt(), 3.0, 1e-3] {
            for len in [1, 5, 16, 33, 128, 1000] {
                let data: Vec<f32> = (0..2 * len)
                    .map(|_| rng.random_range(-10.0..=10.0))
                    .collect();
                let out = softmax(&exec, &data, len, opts(scale, Mask::None));
                for r in 0..2 {
                    let (input, got) = (&data[r * len..][..len], &out[r * len..][..len]);
                    let ctx = format!("[{}] scale={scale} len={len} row={r}", exec.isa());
                    check_row(got, input, &softmax_scaled_f64(input, scale), &ctx);
                    check_sum(got, &ctx);
                }
            }
        }
    }
}

#[test]
fn invalid_arguments() {
    let exec = Exec::new();
    let orig: Vec<f32> = (0..12).map(|i| i as f32).collect();
    for scale in [0.0, -0.0, -1.0, f32::NAN, INF, NEG_INF] {
        let mut data = orig.clone();
        let r = softmax_rows(&exec, &mut data, 4, opts(scale, Mask::None));
        assert!(
            matches!(r, Err(KernelError::InvalidArgument(_))),
            "scale {scale}: {r:?}"
        );
        assert_eq!(data, orig);
        let mut out = vec![9.0; 12];
        let r = softmax_rows_into(&exec, &orig, &mut out, 4, opts(scale, Mask::None));
        assert!(matches!(r, Err(KernelError::InvalidArgument(_))));
        assert_eq!(out, vec![9.0; 12]);
    }
    let mut data = orig.clone();
    for row_len in [5, 7, 13] {
        let r = softmax_rows(&exec, &mut data, row_len, SoftmaxOptions::default());
        assert!(
            matches!(r, Err(KernelError::ShapeMismatch { got: 12, .. })),
            "row_len {row_len}: {r:?}"
        );
        assert_eq!(data, orig);
    }
    let r = softmax_rows(&exec, &mut data, 0, SoftmaxOptions::default());
    assert!(matches!(r, Err(KernelError::InvalidArgument(_))), "{r:?}");
    let mut short = vec![9.0; 8];
    let r = softmax_rows_into(&exec, &orig, &mut short, 4, SoftmaxOptions::default());
    assert!(matches!(r, Err(KernelError::ShapeMismatch { .. })), "{r:?}");
    assert_eq!(short, vec![9.0; 8]);
    assert_eq!(data, orig);
}

#[test]
fn causal_mask() {
    let mut rng = rng(25);
    for exec in isa_execs() {
        // Short rows, and rows long enough for the fused scale-and-max loop of the row pipeline.
        for row_len in [1, 7, 16, 33, 130, 300] {
            let rows = 6;
            let data: Vec<f32> = (0..rows * row_len)
                .map(|_| rng.random_range(-6.0..=6.0))
                .collect();
            for offset in [0, 2, 64, row_len - 1, row_len + 20] {
                for scale in [1.0, 0.25] {
                    let out = softmax(&exec, &data, row_len, opts(scale, Mask::Causal { offset }));
                    for i in 0..rows {
                        let keep = (i + offset + 1).min(row_len);
                        let (input, got) = (&data[i * row_len..][..keep], &out[i * row_len..]);
                        let ctx = format!(
                            "[{}] row_len={row_len} offset={offset} scale={scale} row={i}",
                            exec.isa()
                        );
                        assert!(
                            got[keep..row_len].iter().all(|&v| v.to_bits() == 0),
                            "{ctx}: masked entries {:?}",
                            &got[keep..row_len]
                        );
                        check_row(&got[..keep], input, &softmax_scaled_f64(input, scale), &ctx);
                        check_sum(&got[..keep], &ctx);
                    }
                }
            }
        }
    }
}

/// Rows are pipelined (a row's 1/sum is applied in the next row's max loop): special rows in the
/// middle of a batch (all −∞, a NaN, all NaN, a +∞) must neither disturb their neighbours nor
/// be disturbed, so every row equals the same row computed alone, bit for bit.
#[test]
fn pipelined_rows_with_special_rows_between() {
    let mut rng = rng(27);
    for exec in isa_execs() {
        for len in [64, 100, 200, 1000, 1023, 1024, 1030] {
            let mut rows: Vec<Vec<f32>> = (0..9)
                .map(|_| (0..len).map(|_| rng.random_range(-8.0..=8.0)).collect())
                .collect();
            rows[1].fill(NEG_INF);
            rows[3][len / 2] = f32::NAN;
            rows[4] = vec![f32::NAN; len];
            rows[6][len - 1] = INF;
            let got = softmax(&exec, &rows.concat(), len, opts(0.5, Mask::None));
            for (i, r) in rows.iter().enumerate() {
                let alone = softmax(&exec, r, len, opts(0.5, Mask::None));
                assert_eq!(
                    bits(&got[i * len..][..len]),
                    bits(&alone),
                    "[{}] len={len} row {i}",
                    exec.isa()
                );
            }
        }
    }
}

/// Causal rows whose valid length crosses the limit below which a row's max is taken one row
/// ahead (and the empty rows of an offset-free mask's start), with special rows among them:
/// every row equals the same row computed alone, bit for bit.
#[test]
fn pipelined_causal_rows_across_the_lookahead_limit() {
    let mut rng = rng(28);
    for exec in isa_execs() {
        for (len, offset) in [(1100, 1016), (300, 0), (40, 0)] {
            let mut rows: Vec<Vec<f32>> = (0..14)
                .map(|_| (0..len).map(|_| rng.random_range(-8.0..=8.0)).collect())
                .collect();
            rows[2].fill(NEG_INF);
            rows[5][3] = f32::NAN;
            rows[9][0] = INF;
            let got = softmax(
                &exec,
                &rows.concat(),
                len,
                opts(0.5, Mask::Causal { offset }),
            );
            for (i, r) in rows.iter().enumerate() {
                let mask = Mask::Causal { offset: offset + i };
                let alone = softmax(&exec, r, len, opts(0.5, mask));
                assert_eq!(
                    bits(&got[i * len..][..len]),
                    bits(&alone),
                    "[{}] len={len} offset={offset} row {i}",
                    exec.isa()
                );
            }
        }
    }
}

/// A scale so large that scale·log₂e overflows f32 still gives the exact softmax.
#[test]
fn scale_near_f32_max() {
    let input = [0.0, -2e-38, -1e-38, 0.0];
    for exec in isa_execs() {
        let got = softmax(&exec, &input, 4, opts(3e38, Mask::None));
        let ctx = format!("[{}] scale 3e38", exec.isa());
        check_row(&got, &input, &softmax_scaled_f64(&input, 3e38), &ctx);
        check_sum(&got, &ctx);
    }
}

/// The same rows give bit-identical results sequentially and on 2 threads, with the batches
/// large enough to be split into several tasks.
#[test]
fn threads_agree_bitwise() {
    let mut rng = rng(26);
    let cases = exec_cases();
    for (row_len, rows) in [(4096, 8), (100, 400), (7, 5000), (129, 300), (20000, 3)] {
        let data: Vec<f32> = (0..row_len * rows)
            .map(|_| rng.random_range(-8.0..=8.0))
            .collect();
        for o in [
            SoftmaxOptions::default(),
            opts(0.125, Mask::Causal { offset: 3 }),
        ] {
            for pair in cases.chunks(2) {
                let results: Vec<Vec<f32>> = pair
                    .iter()
                    .map(|case| case.run(|| softmax(&case.exec, &data, row_len, o)))
                    .collect();
                assert_eq!(
                    bits(&results[0]),
                    bits(&results[1]),
                    "{} vs {}: row_len={row_len} rows={rows} {o:?}",
                    pair[0],
                    pair[1]
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// exp

/// A vectorised exponential under test.
type ExpFn = fn(&Exec, &[f32], &mut [f32]) -> kernels::Result<()>;

/// `f` of each value, embedded at several positions of a 37-long input (full vectors and the
/// partial tail of every ISA).
fn at_positions(exec: &Exec, f: ExpFn, x: f32) -> Vec<f32> {
    let mut results = Vec::new();
    for pos in [0, 20, 36] {
        let mut input = vec![0.0f32; 37];
        input[pos] = x;
        let mut out = vec![f32::NAN; 37];
        f(exec, &input, &mut out).unwrap();
        for (j, &v) in out.iter().enumerate() {
            if j != pos {
                assert_eq!(v, 1.0, "f(0) at {j}");
            }
        }
        results.push(out[pos]);
    }
    results
}

/// Asserts `check` on `name(x)` on every ISA path.
fn expect(f: ExpFn, name: &str, x: f32, check: &dyn Fn(f32) -> bool, what: &str) {
    for exec in isa_execs() {
        for v in at_positions(&exec, f, x) {
            assert!(
                check(v),
                "[{}] {name}({x:e}) = {v:e}, expected {what}",
                exec.isa()
            );
        }
    }
}

#[test]
fn exp_special_values() {
    let all = |x, f: &dyn Fn(f32) -> bool, what| expect(exp, "exp", x, f, what);
    all(NEG_INF, &|v| v.to_bits() == 0, "+0 exactly");
    all(INF, &|v| v == INF, "+inf");
    all(f32::NAN, &|v| v.is_nan(), "NaN");
    all(0.0, &|v| v == 1.0, "1");
    all(-0.0, &|v| v == 1.0, "1");
    all(88.72, &|v| v.is_finite() && v > 3.0e38, "finite, ~3.4e38");
    all(88.73, &|v| v == INF, "+inf (overflow)");
    all(1000.0, &|v| v == INF, "+inf (overflow)");
    all(-103.98, &|v| v.to_bits() == 0, "+0 (underflow)");
    all(-1000.0, &|v| v.to_bits() == 0, "+0 (underflow)");
    all(
        -103.0,
        &|v| v > 0.0 && v < f32::MIN_POSITIVE,
        "a positive subnormal",
    );
    all(-88.0, &|v| v > 0.0, "positive");
    all(1.0, &|v| v == std::f32::consts::E, "e");
    for exec in isa_execs() {
        let mut out = [0.0f32; 3];
        assert!(matches!(
            exp(&exec, &[1.0, 2.0], &mut out),
            Err(KernelError::ShapeMismatch { .. })
        ));
        exp(&exec, &[], &mut []).unwrap();
    }
}

/// exp2 is exact at every integer whose power of two is representable, subnormals included,
/// and rounds to +0 / overflows exactly where 2^t does.
#[test]
fn exp2_special_values() {
    let all = |x, f: &dyn Fn(f32) -> bool, what| expect(exp2, "exp2", x, f, what);
    all(NEG_INF, &|v| v.to_bits() == 0, "+0 exactly");
    all(INF, &|v| v == INF, "+inf");
    all(f32::NAN, &|v| v.is_nan(), "NaN");
    all(-0.0, &|v| v == 1.0, "1");
    for k in -149..=127 {
        let want = (k as f64).exp2() as f32;
        all(k as f32, &|v| v == want, "2^k exactly");
    }
    all(-150.0, &|v| v.to_bits() == 0, "+0 (2^-150 rounds to even)");
    all(-149.5, &|v| v.to_bits() == 1, "the smallest subnormal");
    all(-1e30, &|v| v.to_bits() == 0, "+0");
    all(128.0, &|v| v == INF, "+inf (overflow)");
    all(127.99, &|v| v.is_finite() && v > 3.3e38, "finite, ~3.4e38");
    all(1e30, &|v| v == INF, "+inf");
    for exec in isa_execs() {
        let mut out = [0.0f32; 1];
        assert!(matches!(
            exp2(&exec, &[1.0, 2.0], &mut out),
            Err(KernelError::ShapeMismatch { .. })
        ));
    }
}

/// Distance in units in the last place between two non-NaN results of the same sign (exp is
/// never negative). inf == inf and 0 == 0 give 0; f32::MAX against +inf gives 1.
fn ulps(a: f32, b: f32) -> u64 {
    assert!(!a.is_nan() && !b.is_nan() && a >= 0.0 && b >= 0.0);
    (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs()
}

/// Every 4099th f32 bit pattern (finite inputs only) against f64 exp (exp2) rounded to f32; at
/// most 2 ulp on every path. The exhaustive measurement is `examples/exp_ulp.rs` in kernels.
#[test]
fn exp_and_exp2_sampled_ulp_error() {
    let inputs: Vec<f32> = (0..=u32::MAX)
        .step_by(4099)
        .map(f32::from_bits)
        .filter(|x| x.is_finite())
        .collect();
    type Reference = fn(f64) -> f64;
    let funcs: [(&str, ExpFn, Reference); 2] = [("exp", exp, f64::exp), ("exp2", exp2, f64::exp2)];
    for (name, f, reference) in funcs {
        let want: Vec<f32> = inputs.iter().map(|&x| reference(x as f64) as f32).collect();
        for exec in isa_execs() {
            let mut got = vec![0.0f32; inputs.len()];
            f(&exec, &inputs, &mut got).unwrap();
            let (mut max, mut arg) = (0u64, 0.0f32);
            for ((&x, &g), &w) in inputs.iter().zip(&got).zip(&want) {
                assert!(!g.is_nan(), "[{}] {name}({x:e}) = NaN", exec.isa());
                let u = ulps(g, w);
                if u > max {
                    (max, arg) = (u, x);
                }
            }
            println!(
                "[{}] {name}: max {max} ulp over {} sampled inputs (at x = {arg:e})",
                exec.isa(),
                inputs.len(),
            );
            assert!(
                max <= 2,
                "[{}] {name} error {max} ulp at x = {arg:e}",
                exec.isa()
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// OnlineSoftmax

/// Absorbs `row` block by block the way attention does, keeping a running weight per score
/// (rescaled by every returned factor) and a running weighted sum of `values` (rows of `d`).
/// Returns the final state, the weights and the weighted sum.
fn absorb_in_blocks(
    exec: &Exec,
    row: &[f32],
    block: usize,
    values: &[f32],
    d: usize,
) -> (OnlineSoftmax, Vec<f32>, Vec<f32>) {
    let mut state = OnlineSoftmax::EMPTY;
    let mut weights: Vec<f32> = Vec::new();
    let mut acc = vec![0.0f32; d];
    for (b, chunk) in row.chunks(block).enumerate() {
        let mut w = chunk.to_vec();
        let factor = state.absorb(exec, &mut w);
        weights.iter_mut().for_each(|x| *x *= factor);
        acc.iter_mut().for_each(|x| *x *= factor);
        for (i, &wi) in w.iter().enumerate() {
            let v = &values[(b * block + i) * d..][..d];
            acc.iter_mut().zip(v).for_each(|(a, &vj)| *a += wi * vj);
        }
        weights.extend(w);
    }
    (state, weights, acc)
}

/// `absorb_rows` is `absorb` row by row, bit for bit (states, weights and factors), over two
/// blocks with special rows among them; bad lengths are refused before anything is touched.
#[test]
fn online_absorb_rows_equals_absorb_per_row() {
    let mut rng = rng(98);
    for exec in isa_execs() {
        for row_len in [1, 7, 64, 300] {
            let rows = 9;
            let mut states = vec![OnlineSoftmax::EMPTY; rows];
            let mut alone = states.clone();
            for block in 0..2 {
                let mut scores: Vec<f32> = (0..rows * row_len)
                    .map(|_| rng.random_range(-6.0..=6.0))
                    .collect();
                scores[row_len..2 * row_len].fill(NEG_INF);
                scores[3 * row_len] = f32::NAN;
                scores[5 * row_len + row_len / 2] = INF;
                if block == 1 {
                    scores[7 * row_len] = 40.0;
                }
                let mut by_row = scores.clone();
                let mut keep = vec![f32::NAN; rows];
                OnlineSoftmax::absorb_rows(&exec, &mut states, &mut scores, row_len, &mut keep)
                    .unwrap();
                for (i, state) in alone.iter_mut().enumerate() {
                    let ctx = format!("[{}] row_len={row_len} block {block} row {i}", exec.isa());
                    let k = state.absorb(&exec, &mut by_row[i * row_len..(i + 1) * row_len]);
                    assert_eq!(k.to_bits(), keep[i].to_bits(), "{ctx}: factor");
                    assert_eq!(state.max.to_bits(), states[i].max.to_bits(), "{ctx}: max");
                    assert_eq!(state.sum.to_bits(), states[i].sum.to_bits(), "{ctx}: sum");
                }
                assert_eq!(bits(&scores), bits(&by_row), "[{}] weights", exec.isa());
            }
        }
        let mut states = vec![OnlineSoftmax::EMPTY; 2];
        let mut scores = vec![1.0; 7];
        let mut keep = vec![9.0; 2];
        let r = OnlineSoftmax::absorb_rows(&exec, &mut states, &mut scores, 4, &mut keep);
        assert!(matches!(r, Err(KernelError::ShapeMismatch { .. })), "{r:?}");
        let r = OnlineSoftmax::absorb_rows(&exec, &mut states, &mut scores[..6], 3, &mut keep[..1]);
        assert!(matches!(r, Err(KernelError::ShapeMismatch { .. })), "{r:?}");
        // A row length whose product with the row count overflows is an error, not a panic.
        let r = OnlineSoftmax::absorb_rows(&exec, &mut states, &mut scores, usize::MAX, &mut keep);
        assert!(matches!(r, Err(KernelError::ShapeMismatch { .. })), "{r:?}");
        assert_eq!((scores, keep), (vec![1.0; 7], vec![9.0; 2]));
        assert_eq!(states, vec![OnlineSoftmax::EMPTY; 2]);
    }
}

#[test]
fn online_absorb_in_blocks_matches_one_shot() {
    let mut rng = rng(27);
    let d = 8;
    for exec in isa_execs() {
        for len in [1, 5, 40, 200] {
            let row: Vec<f32> = (0..len).map(|_| rng.random_range(-6.0..=6.0)).collect();
            let values: Vec<f32> = (0..len * d).map(|_| rng.random_range(-1.0..=1.0)).collect();
            let want = softmax_f64(&row);
            let max = row.iter().cloned().fold(NEG_INF, f32::max);
            let want_sum: f64 = row.iter().map(|&x| (x as f64 - max as f64).exp()).sum();
            let want_out: Vec<f64> = (0..d)
                .map(|j| (0..len).map(|i| want[i] * values[i * d + j] as f64).sum())
                .collect();
            for block in [1, 3, 16, 17, len] {
                let ctx = format!("[{}] len={len} block={block}", exec.isa());
                let (state, weights, acc) = absorb_in_blocks(&exec, &row, block, &values, d);
                assert_eq!(state.max, max, "{ctx}");
                assert!(
                    ((state.sum as f64 - want_sum) / want_sum).abs() <= 1e-6,
                    "{ctx}: sum {} vs {want_sum}",
                    state.sum
                );
                let inv = state.inverse_sum();
                let probs: Vec<f32> = weights.iter().map(|w| w * inv).collect();
                check_row(&probs, &row, &want, &ctx);
                for j in 0..d {
                    let got = acc[j] * inv;
                    assert!(
                        (got as f64 - want_out[j]).abs() <= 2e-6,
                        "{ctx}: output[{j}] = {got}, expected {}",
                        want_out[j]
                    );
                }
            }
        }
    }
}

#[test]
fn online_absorb_infinities() {
    for exec in isa_execs() {
        let row = [1.0, INF, 2.0, NEG_INF, INF];
        for block in [1, 2, 5] {
            let (state, weights, _) = absorb_in_blocks(&exec, &row, block, &[0.0; 5], 1);
            assert_eq!(state.max, INF);
            let probs: Vec<f32> = weights.iter().map(|w| w * state.inverse_sum()).collect();
            assert_eq!(probs, [0.0, 0.5, 0.0, 0.0, 0.5], "block {block}");
        }
    }
}

/// One block's state and its weights placed in a full-length vector (zero elsewhere).
type Part = (OnlineSoftmax, Vec<f32>);

fn merge_parts(x: &Part, y: &Part) -> Part {
    let (state, fx, fy) = x.0.merge(y.0);
    let w = x.1.iter().zip(&y.1).map(|(a, b)| a * fx + b * fy).collect();
    (state, w)
}

fn merge_tree(parts: &[Part]) -> Part {
    match parts.len() {
        1 => parts[0].clone(),
        n => merge_parts(&merge_tree(&parts[..n / 2]), &merge_tree(&parts[n / 2..])),
    }
}

#[test]
fn online_merge_any_order_matches_one_shot() {
    let mut rng = rng(28);
    for exec in isa_execs() {
        for (len, block) in [(100, 16), (37, 5), (64, 64), (9, 1)] {
            let mut row: Vec<f32> = (0..len).map(|_| rng.random_range(-6.0..=6.0)).collect();
            // One fully masked block, which must contribute nothing.
            if len / block > 2 {
                row[block..2 * block].fill(NEG_INF);
            }
            let parts: Vec<Part> = (0..len)
                .step_by(block)
                .map(|start| {
                    let end = (start + block).min(len);
                    let mut state = OnlineSoftmax::EMPTY;
                    let mut w = row[start..end].to_vec();
                    let factor = state.absorb(&exec, &mut w);
                    assert_eq!(
                        factor,
                        if state == OnlineSoftmax::EMPTY {
                            1.0
                        } else {
                            0.0
                        }
                    );
                    let mut full = vec![0.0f32; len];
                    full[start..end].copy_from_slice(&w);
                    (state, full)
                })
                .collect();
            let forward = parts[1..]
                .iter()
                .fold(parts[0].clone(), |acc, p| merge_parts(&acc, p));
            let reverse = parts[..parts.len() - 1]
                .iter()
                .rev()
                .fold(parts[parts.len() - 1].clone(), |acc, p| {
                    merge_parts(p, &acc)
                });
            let reverse_swapped = parts[..parts.len() - 1]
                .iter()
                .rev()
                .fold(parts[parts.len() - 1].clone(), |acc, p| {
                    merge_parts(&acc, p)
                });
            let tree = merge_tree(&parts);
            let want = softmax_f64(&row);
            let max = row.iter().cloned().fold(NEG_INF, f32::max);
            for (name, (state, w)) in [
                ("forward", forward),
                ("reverse", reverse),
                ("reverse, swapped operands", reverse_swapped),
                ("tree", tree),
            ] {
                let ctx = format!("[{}] len={len} block={block} {name}", exec.isa());
                assert_eq!(state.max, max, "{ctx}");
                let inv = state.inverse_sum();
                for (j, (&wj, &e)) in w.iter().zip(&want).enumerate() {
                    let got = wj * inv;
                    assert!(
                        (got as f64 - e).abs() <= 1e-6,
                        "{ctx}: [{j}] = {got:e}, expected {e:e}"
                    );
                    if row[j] == NEG_INF {
                        assert_eq!(got, 0.0, "{ctx}: masked [{j}]");
                    }
                }
            }
        }
    }
}

#[test]
fn online_empty_is_identity() {
    let exec = Exec::new();
    let e = OnlineSoftmax::EMPTY;
    assert_eq!(OnlineSoftmax::default(), e);
    assert_eq!(e.inverse_sum(), 0.0);
    assert_eq!(e.merge(e).0, e);

    let mut states = Vec::new();
    for row in [
        vec![1.0, 2.0, 3.0],
        vec![-1e30, 5.0],
        vec![INF, 0.0],
        vec![-50.0],
    ] {
        let mut s = OnlineSoftmax::EMPTY;
        let mut w = row.clone();
        s.absorb(&exec, &mut w);
        states.push(s);
    }
    for s in states {
        let (m, fs, fe) = s.merge(e);
        assert_eq!((m, fs, fe), (s, 1.0, 0.0), "{s:?} merge EMPTY");
        let (m, fe, fs) = e.merge(s);
        assert_eq!((m, fe, fs), (s, 0.0, 1.0), "EMPTY merge {s:?}");
        assert!(s.inverse_sum() > 0.0);

        // Absorbing a fully masked block changes nothing and gives zero weights.
        for len in [1, 7, 16, 40] {
            let mut t = s;
            let mut w = vec![NEG_INF; len];
            let factor = t.absorb(&exec, &mut w);
            assert_eq!(factor, 1.0);
            assert_eq!(t, s);
            assert!(w.iter().all(|&x| x == 0.0), "{w:?}");
        }
    }
    // Absorbing only −∞ (or nothing) leaves EMPTY, with a factor of 1.
    for len in [0, 1, 9, 33] {
        let mut t = OnlineSoftmax::EMPTY;
        let mut w = vec![NEG_INF; len];
        assert_eq!(t.absorb(&exec, &mut w), 1.0);
        assert_eq!(t, OnlineSoftmax::EMPTY);
        assert_eq!(t.inverse_sum(), 0.0);
        assert!(w.iter().all(|&x| x == 0.0));
    }
    // A NaN score poisons the sum.
    let mut t = OnlineSoftmax::EMPTY;
    t.absorb(&exec, &mut [1.0, f32::NAN, 2.0]);
    assert!(t.sum.is_nan());
}

/// Huge logits with a scale that is not a power of two: the exponent is formed as
/// `(x − max)·scale`, so the max element's exponent is exactly 0 and nothing overflows.
#[test]
fn huge_logits_with_non_power_of_two_scale() {
    for case in exec_cases() {
        let e = &case.exec;
        case.run(|| {
            for (row, scale) in [
                (vec![1e30f32, 0.0], 0.1f32),
                (vec![-1e30f32, 1e30, 3.0], 0.125),
                (vec![3e38f32, 1.0], 2.0),
                (vec![1e30f32; 17], 0.3),
            ] {
                let mut data = row.clone();
                let opts = SoftmaxOptions {
                    scale,
                    mask: Mask::None,
                };
                softmax_rows(e, &mut data, row.len(), opts).unwrap();
                let want: Vec<f64> = {
                    let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
                    let w: Vec<f64> = row
                        .iter()
                        .map(|&x| ((x as f64 - max) * scale as f64).exp())
                        .collect();
                    let sum: f64 = w.iter().sum();
                    w.into_iter().map(|v| v / sum).collect()
                };
                for (g, w) in data.iter().zip(&want) {
                    assert!(g.is_finite(), "{row:?} scale {scale}: {data:?}");
                    assert!(
                        (*g as f64 - w).abs() < 1e-6,
                        "{row:?} scale {scale}: {data:?} vs {want:?}"
                    );
                }
            }
        });
    }
}

/// Rows longer than L1 (up to 160 KiB): random rows against the f64 reference, in place and
/// out of place; and the defined results when long stretches hold only −∞, when the only
/// finite entry lies far into the row (exactly 1.0), when +∞ appears late after finite values
/// (it takes all the mass), and when a NaN anywhere meets a +∞ or finite values elsewhere (the
/// whole row NaN); a causal mask with valid lengths of several thousand.
#[test]
fn long_rows_and_their_special_cases() {
    let mut rng = rng(27);
    for exec in isa_execs() {
        for len in [4097, 12288, 40000] {
            let data: Vec<f32> = (0..len)
                .map(|_| rng.random_range(-30.0f32..=30.0))
                .collect();
            let got = softmax(&exec, &data, len, SoftmaxOptions::default());
            let ctx = format!("[{}] long len={len}", exec.isa());
            check_row(&got, &data, &softmax_f64(&data), &ctx);
            check_sum(&got, &ctx);
        }
        let len = 10000;
        let ctx = |what: &str| format!("[{}] len={len} {what}", exec.isa());
        // The first 4096 entries and a middle stretch all −∞: zeros there, the softmax elsewhere.
        let mut row: Vec<f32> = (0..len).map(|j| ((j * 37) % 101) as f32 * 0.1).collect();
        row[..4096].fill(NEG_INF);
        row[5000..9000].fill(NEG_INF);
        let got = softmax(&exec, &row, len, SoftmaxOptions::default());
        check_row(&got, &row, &softmax_f64(&row), &ctx("masked stretches"));
        check_sum(&got, &ctx("masked stretches"));
        // One finite entry far into the row: exactly 1 there, 0 elsewhere; all −∞: zeros.
        for x in [0.0, 5682.0, -1e30, 1e30] {
            let mut row = vec![NEG_INF; len];
            row[9000] = x;
            let got = softmax(&exec, &row, len, SoftmaxOptions::default());
            let mut want = vec![0.0; len];
            want[9000] = 1.0;
            assert_eq!(got, want, "{}", ctx(&format!("one-hot {x}")));
        }
        let got = softmax(&exec, &vec![NEG_INF; len], len, SoftmaxOptions::default());
        assert!(got.iter().all(|&v| v == 0.0), "{}", ctx("all −∞"));
        // +∞ twice late in the row, after thousands of finite entries: they share the mass.
        let mut row: Vec<f32> = (0..len).map(|j| (j % 13) as f32).collect();
        row[8500] = INF;
        row[9999] = INF;
        let got = softmax(&exec, &row, len, SoftmaxOptions::default());
        let mut want = vec![0.0; len];
        want[8500] = 0.5;
        want[9999] = 0.5;
        assert_eq!(got, want, "{}", ctx("late +∞"));
        // A NaN anywhere makes the whole row NaN: before a +∞, after a +∞ (close to it or far
        // from it), among finite values, or in an otherwise −∞ stretch.
        for (nan_at, inf_at, masked) in [
            (10, Some(9000), false),
            (9500, Some(5000), false),
            (4000, Some(4100), false),
            (7777, None, false),
            (100, None, true),
        ] {
            let mut row: Vec<f32> = (0..len).map(|j| (j % 7) as f32).collect();
            if masked {
                row[..4096].fill(NEG_INF);
            }
            row[nan_at] = f32::NAN;
            if let Some(i) = inf_at {
                row[i] = INF;
            }
            let got = softmax(&exec, &row, len, SoftmaxOptions::default());
            assert!(
                got.iter().all(|v| v.is_nan()),
                "{}",
                ctx(&format!(
                    "NaN at {nan_at}, +∞ at {inf_at:?}, masked {masked}"
                ))
            );
        }
        // Causal rows of 10000 whose valid lengths (offset 6000 + i + 1) exceed L1.
        let rows = 3;
        let data: Vec<f32> = (0..rows * len)
            .map(|_| rng.random_range(-8.0f32..=8.0))
            .collect();
        let o = opts(0.5, Mask::Causal { offset: 6000 });
        let got = softmax(&exec, &data, len, o);
        for r in 0..rows {
            let valid = 6000 + r + 1;
            let (input, out) = (&data[r * len..][..len], &got[r * len..][..len]);
            let want = softmax_scaled_f64(&input[..valid], 0.5);
            check_row(
                &out[..valid],
                &input[..valid],
                &want,
                &ctx(&format!("causal row {r}")),
            );
            assert!(out[valid..].iter().all(|&v| v == 0.0));
        }
    }
}

/// Rows long enough to be done chunk by chunk (8192 floats and more, chunks of 2048 or
/// more): lengths at the threshold and past a chunk boundary, a max that grows in every chunk,
/// a max that leaves the fused-exponent range only in a late chunk, rows of more than 64
/// chunks, +∞ in the first chunk, and causal rows whose valid length crosses the threshold
/// from one row to the next. Against the f64 reference, in place and out of place.
#[test]
fn long_rows_chunk_boundaries() {
    let mut rng = rng(28);
    for exec in isa_execs() {
        let ctx = |what: &str| format!("[{}] {what}", exec.isa());
        for len in [8191, 8192, 8193, 8192 + 2048 * 3 + 5, 140_003] {
            let data: Vec<f32> = (0..len)
                .map(|_| rng.random_range(-20.0f32..=20.0))
                .collect();
            let got = softmax(&exec, &data, len, SoftmaxOptions::default());
            check_row(
                &got,
                &data,
                &softmax_f64(&data),
                &ctx(&format!("len={len}")),
            );
            check_sum(&got, &ctx(&format!("len={len}")));
        }
        // A ramp: every chunk raises the max, so every chunk but the last is rescaled.
        let len = 20000;
        let ramp: Vec<f32> = (0..len).map(|j| j as f32 * 1e-3).collect();
        let got = softmax(&exec, &ramp, len, SoftmaxOptions::default());
        check_row(&got, &ramp, &softmax_f64(&ramp), &ctx("ramp"));
        check_sum(&got, &ctx("ramp"));
        // max·log₂e is below the fused-exponent limit (2¹³) in the first chunks and above it
        // from the fifth on: chunks exponentiated in both forms are brought to one shift.
        let shifted: Vec<f32> = (0..len)
            .map(|j| {
                let base = if j < 4 * 2048 { 5670.0 } else { 5690.0 };
                base + rng.random_range(-6.0f32..=6.0)
            })
            .collect();
        let got = softmax(&exec, &shifted, len, SoftmaxOptions::default());
        check_row(&got, &shifted, &softmax_f64(&shifted), &ctx("fused limit"));
        check_sum(&got, &ctx("fused limit"));
        // +∞ in the first chunk (the row's first max is +∞): it takes all the mass.
        let mut row: Vec<f32> = (0..len).map(|j| (j % 11) as f32).collect();
        row[100] = INF;
        let got = softmax(&exec, &row, len, SoftmaxOptions::default());
        let mut want = vec![0.0; len];
        want[100] = 1.0;
        assert_eq!(got, want, "{}", ctx("+∞ in the first chunk"));
        // Causal rows of valid length 8190 ..= 8195: three-pass rows and chunked ones alternate
        // within one call (the chunked row applies the previous row's pending 1/sum).
        let (rows, offset) = (6, 8189);
        let data: Vec<f32> = (0..rows * len)
            .map(|_| rng.random_range(-8.0f32..=8.0))
            .collect();
        let got = softmax(&exec, &data, len, opts(0.25, Mask::Causal { offset }));
        for r in 0..rows {
            let valid = offset + r + 1;
            let (input, out) = (&data[r * len..][..len], &got[r * len..][..len]);
            let want = softmax_scaled_f64(&input[..valid], 0.25);
            check_row(
                &out[..valid],
                &input[..valid],
                &want,
                &ctx(&format!("causal {r}")),
            );
            check_sum(&out[..valid], &ctx(&format!("causal {r}")));
            assert!(out[valid..].iter().all(|&v| v == 0.0));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Long rows: the chunked two-pass path's edge cases

/// The kernel's chunk length for a long row of `n` floats: `max(2048, ⌈n/64⌉)` rounded up to a
/// multiple of 128.
fn chunk_len(n: usize) -> usize {
    2048usize.max(n.div_ceil(64)).next_multiple_of(128)
}

/// scale·log₂e overflows f32 (the exponent is taken as `(x − max)·scale·log₂e`, and each
/// chunk's shift as `max·scale·log₂e` in f64): a long row whose max grows in every chunk.
#[test]
fn long_rows_with_scale_near_f32_max() {
    let mut rng = rng(90);
    let scale = 3e38f32;
    for exec in isa_execs() {
        for len in [8192usize, 20000] {
            // x·scale spans about [−15, 30]: subnormal and small normal logits.
            let ramp: Vec<f32> = (0..len)
                .map(|j| (j as f32 / len as f32) * 1e-37 + rng.random_range(-5e-38f32..=0.0))
                .collect();
            let got = softmax(&exec, &ramp, len, opts(scale, Mask::None));
            let ctx = format!("[{}] len={len} scale 3e38 ramp", exec.isa());
            check_row(&got, &ramp, &softmax_scaled_f64(&ramp, scale), &ctx);
            check_sum(&got, &ctx);
        }
    }
}

/// Huge logits whose max jumps between chunks (the early chunks' shifts are ~1e30 below the
/// row's), the max in a middle chunk, and ±f32::MAX: the early weights are exactly 0.
#[test]
fn long_rows_huge_logits_across_chunks() {
    let mut rng = rng(91);
    let big = f32::MAX;
    for exec in isa_execs() {
        let len = 10000;
        let ctx = |w: &str| format!("[{}] {w}", exec.isa());
        let rows: Vec<(&str, Vec<f32>)> = vec![
            (
                "-1e30 then 1e30",
                (0..len)
                    .map(
                        |j| if j < 5000 { -1e30 } else { 1e30 } + rng.random_range(-1e24f32..=1e24),
                    )
                    .collect(),
            ),
            (
                "max in a middle chunk",
                (0..len)
                    .map(|j| {
                        if (4096..6144).contains(&j) {
                            1e30
                        } else {
                            -1e30
                        }
                    })
                    .collect(),
            ),
            (
                "-big then big",
                (0..len)
                    .map(|j| if j < 9000 { -big } else { big })
                    .collect(),
            ),
            (
                "big then -big",
                (0..len).map(|j| if j < 3 { big } else { -big }).collect(),
            ),
            ("all -big", vec![-big; len]),
        ];
        for (what, row) in rows {
            let got = softmax(&exec, &row, len, SoftmaxOptions::default());
            check_row(&got, &row, &softmax_f64(&row), &ctx(what));
            check_sum(&got, &ctx(what));
        }
    }
}

/// Leading chunks all −∞ (taken with a shift of 0 and filtered out), then negative logits whose
/// shift is far below 0; and a negative max that crosses the fused-exponent limit upwards
/// (exact shift in the first chunks, fused from the fifth on).
#[test]
fn long_rows_negative_logits_after_masked_chunks() {
    let mut rng = rng(92);
    for exec in isa_execs() {
        let len = 20000;
        let ctx = |w: &str| format!("[{}] {w}", exec.isa());
        for base in [-1000.0f32, -1e30, -5680.0] {
            let row: Vec<f32> = (0..len)
                .map(|j| {
                    if j < 4500 {
                        NEG_INF
                    } else {
                        base + rng.random_range(-5.0f32..=5.0)
                    }
                })
                .collect();
            let got = softmax(&exec, &row, len, SoftmaxOptions::default());
            check_row(
                &got,
                &row,
                &softmax_f64(&row),
                &ctx(&format!("masked then {base}")),
            );
            check_sum(&got, &ctx(&format!("masked then {base}")));
        }
        let row: Vec<f32> = (0..len)
            .map(|j| if j < 4 * 2048 { -5690.0 } else { -5670.0 } + rng.random_range(-6.0f32..=6.0))
            .collect();
        let got = softmax(&exec, &row, len, SoftmaxOptions::default());
        check_row(&got, &row, &softmax_f64(&row), &ctx("negative fused limit"));
        check_sum(&got, &ctx("negative fused limit"));
    }
}

/// +∞ at every kind of chunk edge (last of a chunk, first of the next, alone in a last chunk
/// of one float, in a chunk of a >64-chunk row): it takes all the mass, exactly.
#[test]
fn long_rows_inf_at_chunk_edges() {
    for exec in isa_execs() {
        for len in [8192usize, 8193, 10000, 140_003] {
            let ch = chunk_len(len);
            let mut positions = vec![0, ch - 1, ch, 2 * ch - 1, 2 * ch, len - 1];
            positions.push((len - 1) / ch * ch); // first float of the last chunk
            for &p in &positions {
                let mut row: Vec<f32> = (0..len).map(|j| (j % 29) as f32 * 0.7 - 9.0).collect();
                row[p] = INF;
                let got = softmax(&exec, &row, len, SoftmaxOptions::default());
                let mut want = vec![0.0; len];
                want[p] = 1.0;
                assert_eq!(got, want, "[{}] len={len} +∞ at {p}", exec.isa());
            }
            // Two +∞ in different chunks, the first after a −∞ chunk.
            let mut row: Vec<f32> = (0..len).map(|j| (j % 5) as f32).collect();
            row[..ch].fill(NEG_INF);
            row[ch + 3] = INF;
            row[len - 1] = INF;
            let got = softmax(&exec, &row, len, SoftmaxOptions::default());
            let mut want = vec![0.0; len];
            want[ch + 3] = 0.5;
            want[len - 1] = 0.5;
            assert_eq!(got, want, "[{}] len={len} two +∞", exec.isa());
        }
    }
}

/// A NaN after a +∞ in the same lane of the same accumulator (8 to 64 floats on) can hide both from the max
/// (`maxps` keeps the later operand): the row must still be all NaN, wherever that happens.
/// Also a lone NaN alone in a one-float last chunk, and at the first float of a chunk.
#[test]
fn long_rows_nan_hiding_inf_from_the_max() {
    for exec in isa_execs() {
        for len in [8193usize, 20000] {
            let ch = chunk_len(len);
            for p in [5, ch + 5, 2 * ch + 200] {
                let mut row: Vec<f32> = (0..len).map(|j| (j % 7) as f32).collect();
                row[p] = INF;
                for d in [8, 16, 32, 64] {
                    row[p + d] = f32::NAN;
                }
                let got = softmax(&exec, &row, len, SoftmaxOptions::default());
                assert!(
                    got.iter().all(|v| v.is_nan()),
                    "[{}] len={len} +∞/NaN at {p}",
                    exec.isa()
                );
            }
            for p in [len - 1, ch, 2 * ch] {
                let mut row: Vec<f32> = (0..len).map(|j| (j % 7) as f32).collect();
                row[p] = f32::NAN;
                let got = softmax(&exec, &row, len, SoftmaxOptions::default());
                assert!(
                    got.iter().all(|v| v.is_nan()),
                    "[{}] len={len} NaN at {p}",
                    exec.isa()
                );
                // The same in a row that is −∞ up to there.
                row[..p].fill(NEG_INF);
                let got = softmax(&exec, &row, len, SoftmaxOptions::default());
                assert!(
                    got.iter().all(|v| v.is_nan()),
                    "[{}] len={len} −∞, NaN at {p}",
                    exec.isa()
                );
            }
        }
    }
}

/// One finite entry in the first chunk (or on a chunk edge) and −∞ or −1e30 everywhere else:
/// exactly 1.0 there (the module docs' one-hot promise), for logits on both sides of the
/// fused-exponent limit and several scales.
#[test]
fn long_rows_one_hot_early() {
    let len = 9000;
    let ch = chunk_len(len);
    for exec in isa_execs() {
        for x in [0.0f32, 1.0, 5682.0, 5678.5, -5682.0, 8191.0, 1e30, -1e29] {
            for scale in [1.0f32, 0.125, 3.0] {
                for at in [3, ch - 1, ch] {
                    for rest in [NEG_INF, -1e30] {
                        if x <= rest {
                            continue;
                        }
                        let mut row = vec![rest; len];
                        row[at] = x;
                        let got = softmax(&exec, &row, len, opts(scale, Mask::None));
                        let mut want = vec![0.0; len];
                        want[at] = 1.0;
                        assert_eq!(
                            got,
                            want,
                            "[{}] x={x} scale={scale} at={at} rest={rest}",
                            exec.isa()
                        );
                    }
                }
            }
        }
    }
}

/// A constant row: every output is the same, and for zeros of a power-of-two length exactly 1/n.
#[test]
fn long_rows_constant() {
    for exec in isa_execs() {
        for (len, x) in [
            (8192usize, 0.0f32),
            (16384, -2.0),
            (10000, 0.0),
            (140_003, 7.5),
        ] {
            let got = softmax(&exec, &vec![x; len], len, SoftmaxOptions::default());
            assert!(
                got.iter().all(|&v| v == got[0]),
                "[{}] len={len}",
                exec.isa()
            );
            if len.is_power_of_two() && x == 0.0 {
                assert_eq!(got[0], 1.0 / len as f32, "[{}] len={len}", exec.isa());
            } else {
                let want = 1.0 / len as f64;
                assert!(
                    (got[0] as f64 - want).abs() <= want * 1e-6,
                    "[{}] len={len}",
                    exec.isa()
                );
            }
        }
    }
}

/// Causal rows crossing the long-row threshold, with special short rows (+∞, NaN, a −∞ stretch)
/// just before the first long rows and a long row holding a +∞: every row of the batch equals
/// the same valid prefix computed alone, bit for bit, sequentially and on 2 threads (the long
/// row's first-chunk max pass applies the previous short row's pending 1/sum).
#[test]
fn causal_batch_rows_equal_rows_alone() {
    let mut rng = rng(93);
    let (len, rows, offset) = (8300usize, 9, 8186usize);
    let mut data: Vec<f32> = (0..rows * len)
        .map(|_| rng.random_range(-8.0f32..=8.0))
        .collect();
    data[len + 17] = INF; // row 1 (valid 8188): special short row
    data[3 * len + 8000] = f32::NAN; // row 3 (valid 8190): NaN short row
    data[4 * len..4 * len + 8000].fill(NEG_INF); // row 4 (valid 8191): mostly −∞
    data[7 * len + 8193] = INF; // row 7 (valid 8194): long row, +∞ in its last chunk
    let o = opts(0.5, Mask::Causal { offset });
    for case in exec_cases() {
        let got = case.run(|| softmax(&case.exec, &data, len, o));
        for r in 0..rows {
            let valid = offset + r + 1;
            let input = &data[r * len..][..valid];
            let alone = softmax(&case.exec, input, valid, opts(0.5, Mask::None));
            let out = &got[r * len..][..len];
            assert_eq!(
                bits(&out[..valid]),
                bits(&alone),
                "[{case}] row {r} (valid {valid})"
            );
            assert!(
                out[valid..].iter().all(|&v| v == 0.0),
                "[{case}] row {r} masked tail"
            );
        }
    }
}

/// Per-weight relative error over the whole normal range (check_row only sees weights above
/// 1e-3 relatively): within `2·|t|·2⁻²⁴ + 4·2⁻²⁴`, t = (x − max)·log₂e — the bound documented
/// on `exp_shifted_sum` plus the normalisation's roundings — for random rows, a rising ramp
/// (the max grows in every chunk, early chunks are rescaled by tiny factors) and logits near
/// the fused-exponent limit; rows just below the threshold (three passes) for comparison.
/// Measured: at most 0.63 of the bound on every path, the chunked rows no worse.
#[test]
fn long_rows_relative_error_within_documented_bound() {
    let mut rng = rng(94);
    for exec in isa_execs() {
        for len in [8191usize, 8192, 20000, 140_003] {
            for kind in 0..3 {
                let row: Vec<f32> = (0..len)
                    .map(|j| match kind {
                        0 => rng.random_range(-60.0f32..=60.0),
                        1 => {
                            -60.0 + 120.0 * j as f32 / len as f32 + rng.random_range(-1.0f32..=1.0)
                        }
                        _ => {
                            5600.0 + 60.0 * j as f32 / len as f32 + rng.random_range(-30.0f32..=0.0)
                        }
                    })
                    .collect();
                let got = softmax(&exec, &row, len, SoftmaxOptions::default());
                let want = softmax_f64(&row);
                let m = row.iter().cloned().fold(NEG_INF, f32::max) as f64;
                for j in 0..len {
                    if want[j] < 1e-30 {
                        continue;
                    }
                    let rel = (got[j] as f64 - want[j]).abs() / want[j];
                    let t = (row[j] as f64 - m) * std::f64::consts::LOG2_E;
                    let bound = (2.0 * t.abs() + 4.0) * 2f64.powi(-24);
                    assert!(
                        rel <= bound,
                        "[{}] len={len} kind={kind} [{j}]: rel error {rel:e} > {bound:e}",
                        exec.isa()
                    );
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Pipelining: the look-ahead max of short rows, task boundaries, long rows in a batch

/// Rows per task of `run_rows` for `rows` rows of `row_len` on `threads` threads.
fn rows_per_task(rows: usize, row_len: usize, threads: usize) -> usize {
    let min_rows = if rows >= 2 * threads { 2 } else { 1 };
    (16384 / row_len.max(1)).max(min_rows).clamp(1, rows.max(1))
}

/// A row of `len` floats in [−8, 8], then made special per `kind` (0: left as it is).
fn special_row(rng: &mut impl Rng, kind: usize, len: usize) -> Vec<f32> {
    let mut r: Vec<f32> = (0..len).map(|_| rng.random_range(-8.0..=8.0)).collect();
    let last = len - 1;
    match kind {
        1 => r.fill(NEG_INF),
        2 => r.fill(f32::NAN),
        3 => r[len / 3] = f32::NAN,
        4 => r[last] = INF,
        5 => {
            r[0] = INF;
            r[last] = INF;
        }
        6 => {
            // One finite entry among −∞: exactly 1.0 there.
            r.fill(NEG_INF);
            r[len / 2] = 3.0;
        }
        7 => {
            for (j, v) in r.iter_mut().enumerate() {
                *v = if j % 2 == 0 { 1e30 } else { -1e30 };
            }
        }
        8 => {
            r[0] = INF;
            r[last] = f32::NAN;
        }
        9 => r.fill(2.5),
        10 => r[last] = f32::NAN,
        _ => {}
    }
    r
}

/// Kinds of [`special_row`] that make a row special (everything but 0).
const SPECIAL_KINDS: usize = 10;

/// Checks every row of `got` (the batch result for `data`, rows of `row_len`, under `o`) against
/// its valid prefix computed alone (bit for bit, same exec, sequential) and against the f64
/// reference, and its masked tail against 0.
fn check_batch_rows(exec: &Exec, got: &[f32], data: &[f32], row_len: usize, o: SoftmaxOptions) {
    let alone_exec = exec.with_parallelism(kernels::Parallelism::Sequential);
    for r in 0..data.len() / row_len {
        let valid = match o.mask {
            Mask::None => row_len,
            Mask::Causal { offset } => (offset + r + 1).min(row_len),
        };
        let input = &data[r * row_len..][..valid];
        let out = &got[r * row_len..][..row_len];
        let ctx = format!(
            "[{}/{:?}] row_len={row_len} {o:?} row {r} (valid {valid})",
            exec.isa(),
            exec.parallelism()
        );
        let alone = softmax(
            &alone_exec,
            input,
            valid,
            SoftmaxOptions {
                mask: Mask::None,
                ..o
            },
        );
        assert_eq!(bits(&out[..valid]), bits(&alone), "{ctx}: batch vs alone");
        assert!(
            out[valid..].iter().all(|&v| v.to_bits() == 0),
            "{ctx}: masked tail not +0"
        );
        let scaled: Vec<f32> = input.iter().map(|&x| x * o.scale).collect();
        check_row(&out[..valid], &scaled, &softmax_f64(&scaled), &ctx);
    }
}

/// Special rows (all −∞, all NaN, one NaN, +∞, one finite among −∞, ±1e30, constant) on the
/// first and last rows of tasks and of the batch, for row lengths whose max is taken one row
/// ahead (and 1024, whose isn't), and lengths reduced 16 rows at a time on AVX-512 (up to 112,
/// and 113 just past): each row equals the same row alone, bit for bit, and the
/// reference, sequentially and on 2 threads (the task splits are the same for both, so the
/// look-ahead never crosses a task's end in either).
#[test]
fn pipelined_special_rows_at_task_boundaries() {
    let mut rng = rng(95);
    for row_len in [
        1, 5, 7, 8, 9, 15, 16, 17, 24, 31, 32, 33, 100, 112, 113, 300, 700, 1000, 1023, 1024,
    ] {
        let rpt = rows_per_task(usize::MAX / 2 / row_len, row_len, 2);
        let rows = 2 * rpt + 3;
        assert_eq!(rows_per_task(rows, row_len, 1), rpt);
        assert_eq!(rows_per_task(rows, row_len, 2), rpt);
        let at = [
            0,
            1,
            rpt - 1,
            rpt,
            rpt + 1,
            2 * rpt - 1,
            2 * rpt,
            rows - 2,
            rows - 1,
        ];
        let mut kind = 0;
        let data: Vec<f32> = (0..rows)
            .flat_map(|r| {
                let k = if at.contains(&r) {
                    kind += 1;
                    1 + kind % SPECIAL_KINDS
                } else {
                    0
                };
                // Rows of 1 can only hold one value: keep the kinds that fit.
                special_row(&mut rng, if row_len == 1 { k % 3 } else { k }, row_len)
            })
            .collect();
        let o = opts(0.5, Mask::None);
        for case in exec_cases() {
            let got = case.run(|| softmax(&case.exec, &data, row_len, o));
            check_batch_rows(&case.exec, &got, &data, row_len, o);
        }
    }
}

/// Causal rows whose valid length sweeps 1..=300 (every vector-block edge of the max and
/// scaling loops, where the pending row and the row read ahead differ by two floats, and the
/// f32-summed short-row limit; also in rows short enough to be batched), and rows crossing the look-ahead limit (1024) and the long-row
/// limit (8192) on the last row of a task and on the first row of the next; special rows every
/// few rows. Each row equals its valid prefix alone, bit for bit, and the reference,
/// sequentially and on 2 threads.
#[test]
fn pipelined_causal_rows_sweeping_valid_lengths() {
    let mut rng = rng(96);
    // (row_len, offset, rows): 1100 has 14 rows per task, so valid 1024 falls on row 13 (the
    // last of the first task) with offset 1010 and on row 14 (the first of the second) with
    // 1009; 8200 has 2 rows per task and valid 8192 on row 7 or row 6.
    for (row_len, offset, rows) in [
        (300, 0, 300),
        // Rows of at most one vector, one per lane (every valid length of a group differs),
        // and prefixes of one vector in a longer row, done the same way.
        (12, 0, 40),
        (16, 5, 40),
        (20, 0, 40),
        (40, 0, 45),
        // Rows short enough to go 16 at a time on AVX-512, each batch with its own lengths.
        (100, 0, 120),
        (112, 50, 70),
        (1100, 1010, 30),
        (1100, 1009, 30),
        (1030, 1000, 40),
        (8200, 8184, 10),
        (8200, 8185, 10),
    ] {
        let mut kind = 0;
        let data: Vec<f32> = (0..rows)
            .flat_map(|r| {
                let valid = (offset + r + 1).min(row_len);
                let k = if r % 5 == 3 || r == rows - 1 {
                    kind += 1;
                    1 + kind % SPECIAL_KINDS
                } else {
                    0
                };
                // Special within the valid prefix; the masked tail random.
                let mut row = special_row(&mut rng, if valid == 1 { k % 3 } else { k }, valid);
                row.extend((valid..row_len).map(|_| rng.random_range(-8.0f32..=8.0)));
                row
            })
            .collect();
        for scale in [0.5, 1.0] {
            let o = opts(scale, Mask::Causal { offset });
            for case in exec_cases() {
                let got = case.run(|| softmax(&case.exec, &data, row_len, o));
                check_batch_rows(&case.exec, &got, &data, row_len, o);
            }
        }
    }
}

/// Long rows in one batch (one or two per task), scaled chunk by chunk from the last: a rising
/// ramp (every chunk but the last rescaled), a falling one (only the first chunk holds the
/// max), NaN or +∞ in the last chunk only, −∞ everywhere but the last partial chunk, and random
/// rows; a partial last chunk of 1 float, of 5, and rows of more than 64 chunks of 2048. Each
/// row equals itself alone, bit for bit, and the reference, and finite rows sum to 1.
#[test]
fn long_rows_in_a_batch_scaled_backwards() {
    let mut rng = rng(97);
    for row_len in [8193, 8192 + 2048 * 2 + 5, 140_003] {
        let kinds = 7;
        let data: Vec<f32> = (0..kinds)
            .flat_map(|kind| {
                let n = row_len as f32;
                let mut r: Vec<f32> = (0..row_len)
                    .map(|j| match kind {
                        0 => -30.0 + 60.0 * j as f32 / n + rng.random_range(-1.0f32..=1.0),
                        1 => 30.0 - 60.0 * j as f32 / n + rng.random_range(-1.0f32..=1.0),
                        _ => rng.random_range(-20.0f32..=20.0),
                    })
                    .collect();
                match kind {
                    2 => r[row_len - 1] = f32::NAN,
                    3 => r[row_len - 2] = INF,
                    4 => r[..row_len - 3].fill(NEG_INF),
                    _ => {}
                }
                r
            })
            .collect();
        let o = opts(1.0, Mask::None);
        for case in exec_cases() {
            let got = case.run(|| softmax(&case.exec, &data, row_len, o));
            check_batch_rows(&case.exec, &got, &data, row_len, o);
            for kind in [0, 1, 4, 5, 6] {
                check_sum(
                    &got[kind * row_len..][..row_len],
                    &format!("[{case}] row_len={row_len} kind {kind}"),
                );
            }
        }
    }
}
