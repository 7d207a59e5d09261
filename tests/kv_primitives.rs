//! The KV streaming primitives (`dot_rows`, `accumulate_rows`, `scale_slice`) in f32 and bf16
//! storage on every available ISA against f64 loops, and the bf16 conversion.
//!
//! Tolerances follow the dot-product bound |ŝ − s| ≤ γ_k·Σ|x||y| (see tests/gemm.rs), with
//! 4·(k + 2)·ε in place of γ_k; bf16 rows are compared against the f64 result of the
//! bf16-rounded values, since the kernels widen bf16 to f32 exactly.

mod common;

use common::{exec_for, random_vec, rng};
use kernels::{
    Bf16, Exec, Isa, KernelError, KvDtype, KvRows, accumulate_rows, dot_rows, scale_slice, to_bf16,
};
use rand::Rng;

const DIMS: [usize; 8] = [1, 7, 16, 64, 80, 100, 128, 129];
const ROW_COUNTS: [usize; 7] = [0, 1, 3, 4, 5, 17, 256];

fn isa_execs() -> Vec<Exec> {
    Isa::available().into_iter().map(exec_for).collect()
}

fn bf16_vec(x: &[f32]) -> Vec<Bf16> {
    let mut out = vec![Bf16::default(); x.len()];
    to_bf16(x, &mut out).unwrap();
    out
}

/// The values the kernel sees: f32 as is, bf16 widened.
fn widened(rows: &KvRows<'_>) -> Vec<f64> {
    match rows {
        KvRows::F32(x) => x.iter().map(|&v| v as f64).collect(),
        KvRows::Bf16(x) => x.iter().map(|v| v.to_f32() as f64).collect(),
    }
}

fn gamma(k: usize) -> f64 {
    4.0 * (k as f64 + 2.0) * f32::EPSILON as f64
}

#[test]
fn dot_rows_against_f64() {
    let mut rng = rng(40);
    for exec in isa_execs() {
        for d in DIMS {
            for n in ROW_COUNTS {
                let q = random_vec(&mut rng, d);
                let rows_f32 = random_vec(&mut rng, n * d);
                let rows_bf16 = bf16_vec(&rows_f32);
                let scale = rng.random_range(0.05f32..=2.0);
                for rows in [KvRows::F32(&rows_f32), KvRows::Bf16(&rows_bf16)] {
                    let ctx = format!(
                        "[{}] d={d} n={n} {}",
                        exec.isa(),
                        if matches!(rows, KvRows::F32(_)) {
                            "f32"
                        } else {
                            "bf16"
                        }
                    );
                    let r = widened(&rows);
                    let mut scores = vec![f32::NAN; n];
                    dot_rows(&exec, &q, rows, scale, &mut scores).unwrap();
                    for i in 0..n {
                        let row = &r[i * d..][..d];
                        let dot: f64 = q.iter().zip(row).map(|(&a, &b)| a as f64 * b).sum();
                        let abs: f64 = q.iter().zip(row).map(|(&a, &b)| (a as f64 * b).abs()).sum();
                        let want = scale as f64 * dot;
                        let tol = gamma(d) * scale as f64 * abs + 1e-30;
                        let err = (scores[i] as f64 - want).abs();
                        assert!(
                            err <= tol,
                            "{ctx}: scores[{i}] = {}, expected {want} ± {tol}",
                            scores[i]
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn accumulate_rows_against_f64() {
    let mut rng = rng(41);
    for exec in isa_execs() {
        for d in DIMS {
            for n in ROW_COUNTS {
                let weights: Vec<f32> = (0..n).map(|_| rng.random_range(-0.5f32..=1.0)).collect();
                let rows_f32 = random_vec(&mut rng, n * d);
                let rows_bf16 = bf16_vec(&rows_f32);
                let acc0 = random_vec(&mut rng, d);
                for rows in [KvRows::F32(&rows_f32), KvRows::Bf16(&rows_bf16)] {
                    let ctx = format!("[{}] d={d} n={n} {:?}", exec.isa(), dtype(&rows));
                    let r = widened(&rows);
                    let mut acc = acc0.clone();
                    accumulate_rows(&exec, &weights, rows, &mut acc).unwrap();
                    for j in 0..d {
                        let mut want = acc0[j] as f64;
                        let mut abs = (acc0[j] as f64).abs();
                        for (i, &w) in weights.iter().enumerate() {
                            want += w as f64 * r[i * d + j];
                            abs += (w as f64 * r[i * d + j]).abs();
                        }
                        let tol = gamma(n) * abs + 1e-30;
                        let err = (acc[j] as f64 - want).abs();
                        assert!(
                            err <= tol,
                            "{ctx}: acc[{j}] = {}, expected {want} ± {tol}",
                            acc[j]
                        );
                    }
                }
            }
        }
    }
}

fn dtype(rows: &KvRows<'_>) -> KvDtype {
    match rows {
        KvRows::F32(_) => KvDtype::F32,
        KvRows::Bf16(_) => KvDtype::Bf16,
    }
}

/// d = 0: every score is 0 and accumulation is a no-op.
#[test]
fn zero_dimension() {
    for exec in isa_execs() {
        let mut scores = vec![f32::NAN; 3];
        dot_rows(&exec, &[], KvRows::F32(&[]), 1.0, &mut scores).unwrap();
        assert_eq!(scores, [0.0; 3]);
        let mut acc: [f32; 0] = [];
        accumulate_rows(&exec, &[1.0, 2.0], KvRows::Bf16(&[]), &mut acc).unwrap();
    }
}

#[test]
fn scale_slice_is_an_exact_multiply() {
    let mut rng = rng(42);
    let lens: Vec<usize> = (0..=70).chain([127, 128, 129, 1000]).collect();
    for exec in isa_execs() {
        for &len in &lens {
            let x = random_vec(&mut rng, len);
            for factor in [0.5f32, -3.0, 0.0, 1e-20, 0.7] {
                let mut y = x.clone();
                scale_slice(&exec, &mut y, factor);
                for (j, (&a, &b)) in x.iter().zip(&y).enumerate() {
                    assert_eq!(
                        (a * factor).to_bits(),
                        b.to_bits(),
                        "[{}] len={len} factor={factor} [{j}]",
                        exec.isa()
                    );
                }
            }
        }
    }
}

#[test]
fn shape_errors() {
    let exec = Exec::new();
    let q = [1.0f32; 4];
    let rows = [1.0f32; 12];
    let rows_bf = [Bf16::from_f32(1.0); 12];
    // 12 elements are 3 rows of 4, not 2 or 4 rows.
    for n in [2, 4] {
        let mut scores = vec![7.0; n];
        for r in [KvRows::F32(&rows), KvRows::Bf16(&rows_bf)] {
            let e = dot_rows(&exec, &q, r, 1.0, &mut scores);
            assert!(matches!(e, Err(KernelError::ShapeMismatch { .. })), "{e:?}");
            assert_eq!(scores, vec![7.0; n]);
            let mut acc = [7.0f32; 4];
            let w = vec![1.0; n];
            let e = accumulate_rows(&exec, &w, r, &mut acc);
            assert!(matches!(e, Err(KernelError::ShapeMismatch { .. })), "{e:?}");
            assert_eq!(acc, [7.0; 4]);
        }
    }
    // q of the wrong length.
    let mut scores = [7.0f32; 3];
    let e = dot_rows(&exec, &q[..3], KvRows::F32(&rows), 1.0, &mut scores);
    assert!(matches!(e, Err(KernelError::ShapeMismatch { .. })), "{e:?}");
    let mut acc = [7.0f32; 5];
    let e = accumulate_rows(&exec, &[1.0; 3], KvRows::F32(&rows), &mut acc);
    assert!(matches!(e, Err(KernelError::ShapeMismatch { .. })), "{e:?}");
    assert_eq!(acc, [7.0; 5]);
    // to_bf16 needs a destination at least as long as the source.
    let mut short = [Bf16(0x1234); 11];
    assert!(matches!(
        to_bf16(&rows, &mut short),
        Err(KernelError::BufferTooSmall {
            needed: 12,
            len: 11,
            ..
        })
    ));
    assert!(short.iter().all(|b| b.0 == 0x1234));
    let mut long = [Bf16(0x1234); 14];
    to_bf16(&rows, &mut long).unwrap();
    assert!(long[..12].iter().all(|b| b.to_f32() == 1.0));
    assert!(long[12..].iter().all(|b| b.0 == 0x1234));
}

#[test]
fn kv_rows_and_dtype() {
    let f = [0.0f32; 6];
    let b = [Bf16::default(); 4];
    assert_eq!(KvRows::F32(&f).len(), 6);
    assert_eq!(KvRows::Bf16(&b).len(), 4);
    assert!(KvRows::F32(&[]).is_empty());
    assert!(!KvRows::Bf16(&b).is_empty());
    assert_eq!(KvDtype::F32.bytes(), 4);
    assert_eq!(KvDtype::Bf16.bytes(), 2);
    for d in [KvDtype::F32, KvDtype::Bf16] {
        assert_eq!(d.name().parse::<KvDtype>(), Ok(d));
        assert_eq!(d.to_string(), d.name());
    }
    assert!("f16".parse::<KvDtype>().is_err());
}

// ---------------------------------------------------------------------------------------------
// bf16 conversion

/// Value of a bf16 bit pattern for rounding decisions, with the infinity pattern standing for
/// 2¹²⁸ (the next power of two past the largest bf16), as IEEE rounding treats it.
fn bf16_pattern_value(bits: u16) -> f64 {
    let v = Bf16(bits).to_f32();
    if v.is_infinite() {
        v.signum() as f64 * 2f64.powi(128)
    } else {
        v as f64
    }
}

#[test]
fn bf16_ties_to_even() {
    let cases: [(u32, u16); 12] = [
        (0x3f80_8000, 0x3f80), // tie, even below: stays
        (0x3f81_8000, 0x3f82), // tie, odd below: up
        (0x3f80_8001, 0x3f81), // above the tie: up
        (0x3f80_7fff, 0x3f80), // below the tie: down
        (0xbf80_8000, 0xbf80), // negative tie, even: stays
        (0xbf81_8000, 0xbf82), // negative tie, odd: away from zero
        (0x3fff_8000, 0x4000), // carry into the exponent
        (0x7f7f_7fff, 0x7f7f), // just below the tie past the largest bf16
        (0x7f7f_8000, 0x7f80), // tie with odd largest bf16: rounds to +inf
        (0x7f7f_ffff, 0x7f80), // f32::MAX rounds to +inf
        (0x0000_0001, 0x0000), // smallest subnormal: to +0
        (0x0000_8000, 0x0000), // tie at the smallest bf16 subnormal: even (0)
    ];
    for (bits, want) in cases {
        let got = Bf16::from_f32(f32::from_bits(bits));
        assert_eq!(got.0, want, "from_f32({bits:#010x}) = {:#06x}", got.0);
    }
}

#[test]
fn bf16_specials() {
    for x in [f32::INFINITY, f32::NEG_INFINITY, 0.0, -0.0, 1.0, -2.0, 0.5] {
        assert_eq!(Bf16::from_f32(x).to_f32().to_bits(), x.to_bits(), "{x}");
    }
    for bits in [
        0x7fc0_0000u32,
        0xffc0_0000,
        0x7f80_0001, // signalling NaN whose payload is all in the dropped low half
        0xff80_0001,
        0x7fff_ffff,
        0x7f80_8000,
    ] {
        let b = Bf16::from_f32(f32::from_bits(bits));
        assert!(b.to_f32().is_nan(), "{bits:#010x} -> {:#06x}", b.0);
        assert_eq!(b.0 >> 15, (bits >> 31) as u16, "sign of NaN {bits:#010x}");
    }
}

/// Over a sample of all f32 bit patterns: the result is one of the two bf16 neighbours, the
/// nearer one, and the even one on a tie; normal values round-trip within 2⁻⁸ relative.
#[test]
fn bf16_round_to_nearest_even_sampled() {
    let bf16_max = Bf16(0x7f7f).to_f32();
    let mut checked = 0u64;
    for bits in (0..=u32::MAX).step_by(251) {
        let x = f32::from_bits(bits);
        if !x.is_finite() {
            continue;
        }
        checked += 1;
        let got = Bf16::from_f32(x);
        let lo = (bits >> 16) as u16;
        let hi = lo + 1;
        assert!(
            got.0 == lo || got.0 == hi,
            "{bits:#010x}: {:#06x} is not a neighbour",
            got.0
        );
        let (dlo, dhi) = (
            (x as f64 - bf16_pattern_value(lo)).abs(),
            (x as f64 - bf16_pattern_value(hi)).abs(),
        );
        let want = if dlo < dhi {
            lo
        } else if dhi < dlo {
            hi
        } else if lo.is_multiple_of(2) {
            lo
        } else {
            hi
        };
        assert_eq!(got.0, want, "{bits:#010x} ({x:e})");
        if x.is_normal() && x.abs() <= bf16_max {
            let rel = ((got.to_f32() as f64 - x as f64) / x as f64).abs();
            assert!(rel <= 2f64.powi(-8), "{x:e}: relative error {rel:e}");
        }
    }
    assert!(checked > 16_000_000);
}

#[test]
fn to_bf16_matches_from_f32() {
    let mut rng = rng(43);
    let x: Vec<f32> = (0..1000)
        .map(|_| f32::from_bits(rng.random::<u32>()))
        .collect();
    let got = bf16_vec(&x);
    for (a, b) in x.iter().zip(&got) {
        assert_eq!(Bf16::from_f32(*a), *b);
    }
}

/// `attend_partial` (the fused flash-decoding loop for a group of heads) against an f64
/// softmax-weighted sum, over group sizes, head sizes on and off the fast paths, row counts
/// that span several blocks, both storage types, every ISA; and continued over two calls.
#[test]
fn attend_partial_against_f64() {
    let mut r = rng(77);
    for exec in isa_execs() {
        for &g in &[1usize, 2, 3, 4, 5, 7, 8, 12] {
            // 128 and 256: the chunked group path (8-lane paths; 16-lane from 256).
            for &d in &[16usize, 20, 64, 80, 128, 256] {
                for &n in &[0usize, 1, 7, 600] {
                    for dtype in [KvDtype::F32, KvDtype::Bf16] {
                        let q = random_vec(&mut r, g * d);
                        let kf = random_vec(&mut r, n * d);
                        let vf = random_vec(&mut r, n * d);
                        let (kb, vb) = (bf16_vec(&kf), bf16_vec(&vf));
                        let (keys, values) = match dtype {
                            KvDtype::F32 => (KvRows::F32(&kf), KvRows::F32(&vf)),
                            KvDtype::Bf16 => (KvRows::Bf16(&kb), KvRows::Bf16(&vb)),
                        };
                        let (k64, v64) = (widened(&keys), widened(&values));
                        let scale = 1.0 / (d as f32).sqrt();
                        let mut states = vec![kernels::OnlineSoftmax::EMPTY; g];
                        let mut acc = vec![0.0f32; g * d];
                        let mut scores = vec![0.0f32; kernels::attend_scratch_len(g, d)];
                        // Two calls: rows [0, n/3) then [n/3, n), as a caller streaming a ring.
                        let cut = n / 3;
                        for (lo, hi) in [(0, cut), (cut, n)] {
                            fn part<'a>(x: KvRows<'a>, r: std::ops::Range<usize>) -> KvRows<'a> {
                                match x {
                                    KvRows::F32(s) => KvRows::F32(&s[r]),
                                    KvRows::Bf16(s) => KvRows::Bf16(&s[r]),
                                }
                            }
                            kernels::attend_partial(
                                &exec,
                                &q,
                                part(keys, lo * d..hi * d),
                                part(values, lo * d..hi * d),
                                scale,
                                &mut states,
                                &mut acc,
                                &mut scores,
                            )
                            .unwrap();
                        }
                        for h in 0..g {
                            let qh = &q[h * d..(h + 1) * d];
                            let s: Vec<f64> = (0..n)
                                .map(|i| {
                                    scale as f64
                                        * (0..d).map(|j| qh[j] as f64 * k64[i * d + j]).sum::<f64>()
                                })
                                .collect();
                            let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                            let w: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
                            let total: f64 = w.iter().sum();
                            let inv = states[h].inverse_sum() as f64;
                            for j in 0..d {
                                let want = if n == 0 {
                                    0.0
                                } else {
                                    (0..n).map(|i| w[i] * v64[i * d + j]).sum::<f64>() / total
                                };
                                let got = acc[h * d + j] as f64 * inv;
                                assert!(
                                    (got - want).abs() <= 2e-5,
                                    "{:?} g={g} d={d} n={n} {dtype}: head {h} elem {j}: {got} vs {want}",
                                    exec.isa()
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The sizing helpers saturate instead of wrapping or dividing by zero on sizes no buffer has.
#[test]
fn sizing_helpers_saturate() {
    assert_eq!(kernels::attend_scratch_len(usize::MAX / 2, 1), usize::MAX);
    assert_eq!(kernels::attend_scratch_len(2, usize::MAX / 2), usize::MAX);
    assert_eq!(
        kernels::attend_block_rows(1 << 62, kernels::KvDtype::F32),
        8
    );
    assert!(kernels::attend_scratch_len(4, 128) >= 4 * 2 * 128);
}
