//! `C = A·B` with `kernels::gemm` on every ISA and thread count, against matrixmultiply's
//! `sgemm` (single-threaded: its threading feature is off) on the same buffers.

use crate::config::RunConfig;
use crate::error::Result;
use crate::record::Record;
use crate::runner::{
    Ctx, MISMATCH_BASELINE, MISMATCH_F64, PairedRoof, exec_for, mismatch_note, random_vec,
};
use crate::sweep::MatShape;
use kernels::{GemmWorkspace, MatMut, MatRef, PackedB, gemm, gemm_prepacked};

/// Name of the baseline implementation.
pub const BASELINE: &str = "matrixmultiply(1t)";

/// Name of `kernels::gemm`.
pub const KERNELS: &str = "kernels";

/// Name of `kernels::gemm_prepacked` with B packed ahead of time (not timed), as an engine
/// packs its weights once at load.
pub const PREPACKED: &str = "kernels-prepacked";

/// Measurements taken: the baseline, then per ISA and thread count `gemm` and
/// `gemm_prepacked`.
pub fn count(cfg: &RunConfig) -> u64 {
    (cfg.sizes.len() * (1 + 2 * cfg.isas.len() * cfg.threads.len())) as u64
}

/// Bytes allocated per shape: A, B (every copy, with `--cold-b`, and as many packed copies),
/// C, a reference copy of C, and packing buffers.
pub fn estimates(cfg: &RunConfig) -> Vec<(String, u64)> {
    cfg.sizes
        .iter()
        .map(|s| {
            let all_b = s.b_bytes() + extra_b_bytes(cfg, s);
            // Packed copies: B padded to whole 32-column panels.
            let packed_b = all_b + (all_b / s.n.max(1) as u64) * 32;
            (
                format!("matmul {}x{}x{}", s.m, s.n, s.k),
                s.bytes()
                    .saturating_add(extra_b_bytes(cfg, s))
                    .saturating_add(packed_b)
                    .saturating_add(4 * s.m as u64 * s.n as u64)
                    .saturating_add(16 << 20),
            )
        })
        .collect()
}

/// Copies of a `bytes`-sized operand that together exceed twice the last-level cache (32 MiB
/// when unknown), so that rotating through them streams it from DRAM: 1 unless `--cold-b`;
/// at most 64.
pub fn b_copies(cfg: &RunConfig, bytes: u64) -> usize {
    if !cfg.cold_b {
        return 1;
    }
    let llc = crate::machine::cache_bytes(3).unwrap_or(32 << 20) as u64;
    (2 * llc).div_ceil(bytes.max(1)).clamp(2, 64) as usize
}

/// Bytes of the copies of B beyond the first (0 unless `--cold-b`).
fn extra_b_bytes(cfg: &RunConfig, s: &MatShape) -> u64 {
    s.b_bytes() * (b_copies(cfg, s.b_bytes()) as u64 - 1)
}

/// B's buffer(s): [`b_copies`] identical copies of seeded random values, so every call
/// computes the same C whichever copy it reads.
pub fn b_buffers(cfg: &RunConfig, s: &MatShape) -> Result<Vec<kernels::LargeBuffer<f32>>> {
    let copies = b_copies(cfg, s.b_bytes());
    let first = random_vec(2, s.k * s.n)?;
    let mut bs = Vec::with_capacity(copies);
    for _ in 1..copies {
        let mut copy = kernels::LargeBuffer::zeroed(first.len())?;
        copy.copy_from_slice(&first);
        bs.push(copy);
    }
    bs.push(first);
    Ok(bs)
}

/// Where B's elements sit: `(row_stride, col_stride)` within its buffer.
pub fn b_strides(s: &MatShape) -> (usize, usize) {
    if s.b_transposed { (1, s.k) } else { (s.n, 1) }
}

/// Fills GFLOP/s, GB/s and the roof of a matmul record from its median.
pub fn fill_rates(
    ctx: &mut Ctx,
    r: &mut Record,
    s: &MatShape,
    isa: kernels::Isa,
    threads: usize,
) -> Result<()> {
    let Some(median) = r.median_s else {
        return Ok(());
    };
    let gflops = s.flops() / median / 1e9;
    r.gflops = Some(gflops);
    r.bytes = Some(s.bytes());
    if s.is_gemv() {
        // Streaming B is the whole cost: compare bytes/s with the read roof.
        let gbps = s.b_bytes() as f64 / median / 1e9;
        r.gbps = Some(gbps);
        // The roof: a plain sum over the same bytes as B, on the same threads, in this run
        // (rotating through as many copies as B does).
        let copies = b_copies(ctx.cfg, s.b_bytes());
        if let Some(roof) = ctx.same_bytes_roof(s.b_bytes(), threads, copies)? {
            r.pct_peak = roof.pct(gbps);
            r.roof = Some(roof.label);
        }
    } else {
        r.gbps = Some(s.bytes() as f64 / median / 1e9);
        // The bandwidth tier follows the working set: every copy of B when they rotate.
        let working_set = s.bytes() + extra_b_bytes(ctx.cfg, s);
        if let Some(roof) = ctx
            .roofline
            .attainable(isa, threads, s.flops(), s.bytes(), working_set)
        {
            r.pct_peak = roof.pct(gflops);
            r.roof = Some(roof.label);
        }
    }
    Ok(())
}

/// What `--paired` interleaves this configuration with: GEMV's same-bytes sum, or the FMA
/// probe when the FMA peak is the shape's roof (not when the roofline's bandwidth side is).
fn paired_roof(ctx: &Ctx, s: &MatShape, isa: kernels::Isa, threads: usize) -> Option<PairedRoof> {
    if s.is_gemv() {
        return Some(PairedRoof::SameBytes {
            bytes: s.b_bytes(),
            copies: b_copies(ctx.cfg, s.b_bytes()),
        });
    }
    let working_set = s.bytes() + extra_b_bytes(ctx.cfg, s);
    let fma = ctx.roofline.fma_roof(isa, threads)?;
    let roof = ctx
        .roofline
        .attainable(isa, threads, s.flops(), s.bytes(), working_set)?;
    (roof.value >= fma.value).then_some(PairedRoof::Fma {
        isa,
        flops: s.flops(),
    })
}

/// Compares 64 entries of `c = a·b` (row-major) spread over the matrix with the f64
/// reference, against the worst-case bound of a k-term f32 dot product (k·ε relative to
/// `Σ|a||b|`): a note when one is outside it.
fn spot_check(a: MatRef<'_>, b: MatRef<'_>, c: &[f32]) -> Option<String> {
    let (m, n, k) = (a.rows(), b.cols(), a.cols());
    if m == 0 || n == 0 {
        return None;
    }
    (0..64usize).find_map(|t| {
        let (i, j) = (t * 7919 % m, t * 104_729 % n);
        let (want, scale) = kernels::reference::dot_f64(a, b, i, j);
        let err = (c[i * n + j] as f64 - want).abs();
        (err.is_nan() || err > k.max(1) as f64 * f32::EPSILON as f64 * scale).then(|| {
            format!(
                "{MISMATCH_F64}: C[{i},{j}] = {} against {want:e}",
                c[i * n + j]
            )
        })
    })
}

fn base_record(s: &MatShape, copies: usize) -> Record {
    Record {
        shape: Some(if copies > 1 {
            format!("{} (B cold: {copies} copies)", s.label)
        } else {
            s.label.clone()
        }),
        m: Some(s.m),
        n: Some(s.n),
        k: Some(s.k),
        baseline: Some(BASELINE.into()),
        ..Record::new("matmul", "kernels")
    }
}

/// Runs the suite.
pub fn run(ctx: &mut Ctx) -> Result<Vec<Record>> {
    let cfg = ctx.cfg;
    let mut out = Vec::new();
    for s in &cfg.sizes {
        let (m, n, k) = (s.m, s.n, s.k);
        let a = random_vec(1, m * k)?;
        let bs = b_buffers(cfg, s)?;
        let copies = bs.len();
        let mut c = vec![0.0f32; m * n];
        let (rsb, csb) = b_strides(s);
        let av = MatRef::row_major(&a, m, k)?;
        let bvs = bs
            .iter()
            .map(|b| MatRef::new(b, k, n, rsb, csb))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let name = format!("{} {m}x{n}x{k}", s.label);
        // The copy each timed call reads next.
        let mut turn = 0usize;
        let mut next_b = move || {
            turn += 1;
            turn % copies
        };

        let base = ctx.time(1, &format!("matmul {name} {BASELINE}"), || {
            let b = &bs[next_b()];
            // SAFETY: `a` holds m×k row-major floats, `b` holds the k×n view with strides
            // (rsb, csb) (checked by `MatRef::new` above), `c` holds m×n row-major floats and
            // is exclusively borrowed; all outlive the call.
            unsafe {
                matrixmultiply::sgemm(
                    m,
                    k,
                    n,
                    1.0,
                    a.as_ptr(),
                    k as isize,
                    1,
                    b.as_ptr(),
                    rsb as isize,
                    csb as isize,
                    0.0,
                    c.as_mut_ptr(),
                    n as isize,
                    1,
                )
            };
            Ok(())
        })?;
        let reference = c.clone();
        let detected = kernels::Isa::detected();
        let mut rec = Record {
            implementation: BASELINE.into(),
            isa: Some("auto".into()),
            threads: Some(1),
            vs_baseline: Some(1.0),
            ..base_record(s, copies)
        }
        .with_stats(&base);
        fill_rates(ctx, &mut rec, s, detected, 1)?;
        out.push(rec);

        for &isa in &cfg.isas {
            let exec = exec_for(isa)?;
            // B packed once per copy, outside the timing, as an engine packs its weights at
            // load time.
            let packed = bvs
                .iter()
                .map(|b| PackedB::new(&exec, *b))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            for &t in &cfg.threads {
                let mut ws = GemmWorkspace::new();
                let pair = paired_roof(ctx, s, isa, t);
                for implementation in [KERNELS, PREPACKED] {
                    c.fill(0.0);
                    let (st, paired) = ctx.time_paired(
                        t,
                        &format!("matmul {name} {isa} {t}t {implementation}"),
                        || {
                            let mut cv = MatMut::row_major(&mut c, m, n)?;
                            if implementation == PREPACKED {
                                let b = &packed[next_b()];
                                gemm_prepacked(&exec, 1.0, av, b, 0.0, &mut cv, &mut ws)?;
                            } else {
                                gemm(&exec, 1.0, av, bvs[next_b()], 0.0, &mut cv, &mut ws)?;
                            }
                            Ok(())
                        },
                        pair,
                    )?;
                    let mut rec = Record {
                        implementation: implementation.into(),
                        isa: Some(isa.name().into()),
                        threads: Some(t),
                        vs_baseline: Some(base.median / st.median),
                        note: mismatch_note(MISMATCH_BASELINE, &c, &reference, 1e-3)
                            .or_else(|| spot_check(av, bvs[0], &c)),
                        pct_peak_paired: paired,
                        ..base_record(s, copies)
                    }
                    .with_stats(&st);
                    fill_rates(ctx, &mut rec, s, isa, t)?;
                    out.push(rec);
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The spot check passes a correct product and flags a sampled entry off by 1e-3 of its
    /// `Σ|a||b|` (~30× the bound at k = 300), or NaN.
    #[test]
    fn spot_check_flags_wrong_entries() {
        let (m, n, k) = (37, 53, 300);
        let a: Vec<f32> = (0..m * k).map(|i| ((i * 7) % 13) as f32 - 6.0).collect();
        let b: Vec<f32> = (0..k * n).map(|i| ((i * 5) % 11) as f32 * 0.25).collect();
        let (av, bv) = (
            MatRef::row_major(&a, m, k).unwrap(),
            MatRef::row_major(&b, k, n).unwrap(),
        );
        let mut c = vec![0.0f32; m * n];
        gemm(
            &kernels::Exec::sequential(),
            1.0,
            av,
            bv,
            0.0,
            &mut MatMut::row_major(&mut c, m, n).unwrap(),
            &mut GemmWorkspace::new(),
        )
        .unwrap();
        assert_eq!(spot_check(av, bv, &c), None);
        // Entry (7919 % m, 104729 % n) is the check's second sample.
        let at = (7919 % m) * n + 104_729 % n;
        let (i, j) = (at / n, at % n);
        c[at] += (1e-3 * kernels::reference::dot_f64(av, bv, i, j).1) as f32;
        let note = spot_check(av, bv, &c).expect("a wrong entry is flagged");
        assert!(note.starts_with(MISMATCH_F64), "{note}");
        c[at] = f32::NAN;
        assert!(spot_check(av, bv, &c).is_some());
    }
}
