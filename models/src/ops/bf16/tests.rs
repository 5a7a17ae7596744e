use super::*;

fn round(v: f32) -> f64 {
    half::bf16::from_f32(v).to_f64()
}

/// The GEMM equals f64 sums of the bf16-rounded operands (products of two bf16 are
/// exact in f32: only the f32 sums round), over shapes with partial panels and odd k.
#[test]
fn gemm_equals_sums_of_rounded_operands_or_is_unavailable() {
    if !available() {
        // here the GEMM refuses to run (and conv2d and the teachers refuse bf16
        // before reaching it, their own tests check that)
        let a = PackedA::new(&[1.0; 4], 2, 2, 2);
        let mut c = [0f32; 4];
        // SAFETY: c holds the 2x2 result
        let r = std::panic::catch_unwind(move || unsafe {
            gemm(&a, &[1.0; 4], 2, 2, 2, c.as_mut_ptr(), 2, false)
        });
        assert!(r.is_err());
        return;
    }
    let mut s = 1u32;
    let mut rnd = || {
        s = s.wrapping_mul(1664525).wrapping_add(1013904223);
        (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5
    };
    for (m, k, n) in [(14, 2, 32), (29, 577, 70), (3, 9, 5), (64, 64, 200)] {
        let (lda, ldb, ldc) = (k + 3, n + 1, n + 2);
        let a: Vec<f32> = (0..m * lda).map(|_| rnd()).collect();
        let b: Vec<f32> = (0..k * ldb).map(|_| rnd()).collect();
        let mut c = vec![f32::NAN; m * ldc];
        for parallel in [false, true] {
            let pa = PackedA::new(&a, m, k, lda);
            // SAFETY: c holds m rows of ldc
            unsafe { gemm(&pa, &b, k, n, ldb, c.as_mut_ptr(), ldc, parallel) };
            for i in 0..m {
                for j in 0..n {
                    let want: f64 = (0..k)
                        .map(|p| round(a[i * lda + p]) * round(b[p * ldb + j]))
                        .sum();
                    let got = c[i * ldc + j] as f64;
                    assert!(
                        (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                        "{m}x{k}x{n} [{i},{j}]: {got} vs {want}"
                    );
                }
            }
        }
    }
}

/// A deterministic generator of values in [-0.5, 0.5).
fn values(seed: u32, len: usize) -> Vec<f32> {
    let mut s = seed;
    (0..len)
        .map(|_| {
            s = s.wrapping_mul(1664525).wrapping_add(1013904223);
            (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        })
        .collect()
}

/// Both kernels (AMX's where it runs) give the f64 sums of the rounded operands through
/// the epilogue `relu(sum * scale + shift)`, over shapes that take every path of the AMX
/// panel: whole 32x32 tiles, a last block of 16 rows or fewer (one row of tiles), of
/// 17-31 rows, partial column panels, `k` odd and not a multiple of the tile's 32.
#[test]
fn both_kernels_with_the_epilogue_equal_sums_of_rounded_operands() {
    if !available() {
        eprintln!("skipped: this CPU has no AVX512-BF16 (the GEMM refuses to run)");
        return;
    }
    let kernels: &[bool] = if amx::available() {
        &[false, true]
    } else {
        eprintln!("the AMX kernel is not checked: no AMX-BF16 here (or MEAL_AMX=0)");
        &[false]
    };
    for (m, k, n) in [
        (32, 64, 32),
        (16, 33, 40),
        (48, 577, 70),
        (61, 9, 31),
        (96, 300, 96),
    ] {
        let (lda, ldc) = (k + 1, n + 3);
        let a = values(m as u32, m * lda);
        let b = values(k as u32, k * n);
        let scale = values(7, m);
        let shift = values(8, m);
        for &amx in kernels {
            for (relu, parallel) in [(false, false), (true, true)] {
                let pa = PackedA::with_kernel(&a, m, k, lda, amx);
                let pb = pack_b(&b, k, n, n, parallel);
                let mut c = vec![f32::NAN; m * ldc];
                let epi = Epilogue {
                    scale: &scale,
                    shift: &shift,
                    relu,
                };
                // SAFETY: c holds m rows of ldc
                unsafe { gemm_packed(&pa, &pb, c.as_mut_ptr(), ldc, parallel, Some(epi)) };
                for i in 0..m {
                    for j in 0..n {
                        let sum: f64 = (0..k)
                            .map(|p| round(a[i * lda + p]) * round(b[p * n + j]))
                            .sum();
                        let y = sum * scale[i] as f64 + shift[i] as f64;
                        let want = if relu { y.max(0.0) } else { y };
                        let got = c[i * ldc + j] as f64;
                        assert!(
                            (got - want).abs() <= 1e-5 * (1.0 + sum.abs()),
                            "amx {amx} {m}x{k}x{n} [{i},{j}]: {got} vs {want}"
                        );
                    }
                    // the row stride's gap is not written
                    assert!(c[i * ldc + n..(i + 1) * ldc].iter().all(|v| v.is_nan()));
                }
            }
        }
    }
}
