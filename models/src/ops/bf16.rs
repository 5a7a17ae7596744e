//! bf16 GEMMs for CPU inference, on CPUs with AVX512-BF16: the convolutions of a teacher
//! asked for `bf16` on the CPU run here, with everything else in f32, as PyTorch's CPU
//! autocast does (conv inputs and weights rounded to bf16, products accumulated in f32).
//! `vdpbf16ps` does two bf16 multiply-adds per f32 lane, twice an f32 FMA's work per
//! instruction: a 14x32 microkernel measured 155 vs 77 GFLOP/s for the same kernel in
//! f32 FMAs on one core of the AMD EPYC (Zen 4) of BENCHMARKS.md.
//!
//! Layout: both operands are packed as bf16 pairs along `k` in one `u32` (`k` even and
//! odd in the low and high half), the weights in panels of [`MR`] rows `[k/2][MR]`, the
//! columns in panels of [`NR`] columns `[k/2][NR]`, zero-padded; the kernel computes one
//! `MR x NR` tile over the whole `k` (both panels stay in L2: 28 `vdpbf16ps` per 184 bytes
//! read, far below its bandwidth).

/// Rows of a weight panel (28 accumulators + 2 column vectors + 1 broadcast of 32 zmm).
pub const MR: usize = 14;
/// Columns of a column panel (two zmm of 16 f32).
pub const NR: usize = 32;

/// Whether this CPU has the instructions ([`gemm`] refuses to run elsewhere).
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512bf16")
            && std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `v` rounded to bf16 (nearest, ties to even, as `vcvtneps2bf16`), as its bits.
fn bf(v: f32) -> u32 {
    half::bf16::from_f32(v).to_bits() as u32
}

/// Weights `[m, k]` (row-major, row stride `ld`) packed in [`MR`]-row panels.
pub struct PackedA {
    data: Vec<u32>,
    m: usize,
    kp: usize,
}

impl PackedA {
    /// Pack `m` rows of `k` values of `w` (row `i` at `w[i * ld..]`).
    pub fn new(w: &[f32], m: usize, k: usize, ld: usize) -> Self {
        let kp = k.div_ceil(2);
        let panels = m.div_ceil(MR);
        let mut data = vec![0u32; panels * kp * MR];
        use rayon::prelude::*;
        data.par_chunks_mut(kp * MR)
            .enumerate()
            .for_each(|(ib, panel)| {
                for i in 0..MR.min(m - ib * MR) {
                    let row = &w[(ib * MR + i) * ld..][..k];
                    for (p, pair) in row.chunks(2).enumerate() {
                        let hi = pair.get(1).map_or(0, |&v| bf(v));
                        panel[p * MR + i] = bf(pair[0]) | hi << 16;
                    }
                }
            });
        PackedA { data, m, kp }
    }
}

/// Rows `[k, n]` of `b` (row `r` at `b[r * ld..]`) packed in [`NR`]-column panels.
fn pack_b(b: &[f32], k: usize, n: usize, ld: usize) -> Vec<u32> {
    let kp = k.div_ceil(2);
    let panels = n.div_ceil(NR);
    let mut out = vec![0u32; panels * kp * NR];
    for (j, panel) in out.chunks_mut(kp * NR).enumerate() {
        let (c0, w) = (j * NR, NR.min(n - j * NR));
        for p in 0..kp {
            let lo = &b[2 * p * ld + c0..][..w];
            let dst = &mut panel[p * NR..][..w];
            if 2 * p + 1 < k {
                let hi = &b[(2 * p + 1) * ld + c0..][..w];
                pack_pairs(lo, hi, dst);
            } else {
                for (d, &v) in dst.iter_mut().zip(lo) {
                    *d = bf(v);
                }
            }
        }
    }
    out
}

/// `dst[i] = bf(lo[i]) | bf(hi[i]) << 16`.
fn pack_pairs(lo: &[f32], hi: &[f32], dst: &mut [u32]) {
    #[cfg(target_arch = "x86_64")]
    if available() {
        // SAFETY: the features were detected above; the slices have dst.len() elements.
        unsafe { x86::pack_pairs(lo, hi, dst) };
        return;
    }
    for ((d, &l), &h) in dst.iter_mut().zip(lo).zip(hi) {
        *d = bf(l) | bf(h) << 16;
    }
}

/// Row-major `c[m, n] = a * b` (`c` row stride `ldc`, written whole), `a` packed, `b`
/// rows `[k, n]` with row stride `ldb`, in bf16 products with f32 sums. Column panels
/// in parallel (rayon) when `parallel`.
///
/// # Panics
/// Where [`available`] is false (the callers check it first), or when `b` or `c` is
/// shorter than the shapes say.
pub fn gemm(
    a: &PackedA,
    b: &[f32],
    k: usize,
    n: usize,
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
    parallel: bool,
) {
    use rayon::prelude::*;
    assert!(available(), "bf16 GEMM on a CPU without AVX512-BF16");
    assert_eq!(a.kp, k.div_ceil(2), "bf16 GEMM: packed k differs");
    let m = a.m;
    if m == 0 || n == 0 {
        return;
    }
    assert!(c.len() >= (m - 1) * ldc + n && b.len() >= (k.max(1) - 1) * ldb + n);
    let bp = pack_b(b, k, n, ldb);
    let kp = a.kp;
    let cptr = c.as_mut_ptr() as usize;
    let panel = |j: usize| {
        let (c0, w) = (j * NR, NR.min(n - j * NR));
        let bpan = &bp[j * kp * NR..][..kp * NR];
        let mut tile = [0f32; MR * NR];
        for ib in 0..m.div_ceil(MR) {
            let apan = &a.data[ib * kp * MR..][..kp * MR];
            #[cfg(target_arch = "x86_64")]
            // SAFETY: available() was asserted; the panels hold kp * MR and kp * NR values.
            unsafe {
                x86::kernel(kp, apan.as_ptr(), bpan.as_ptr(), &mut tile)
            };
            for i in 0..MR.min(m - ib * MR) {
                // SAFETY: row ib*MR+i < m, columns c0..c0+w < n: inside c (asserted), and
                // each column panel writes only its own columns.
                let dst = unsafe {
                    std::slice::from_raw_parts_mut(
                        (cptr as *mut f32).add((ib * MR + i) * ldc + c0),
                        w,
                    )
                };
                dst.copy_from_slice(&tile[i * NR..i * NR + w]);
            }
        }
    };
    let panels = n.div_ceil(NR);
    if parallel {
        (0..panels).into_par_iter().for_each(panel);
    } else {
        (0..panels).for_each(panel);
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{MR, NR};
    use std::arch::x86_64::*;

    /// `tile[MR][NR] = sum_p a[p][i] . b[p][j]` over `kp` bf16 pairs.
    #[target_feature(enable = "avx512bf16,avx512f")]
    pub(super) unsafe fn kernel(
        kp: usize,
        a: *const u32,
        b: *const u32,
        tile: &mut [f32; MR * NR],
    ) {
        let mut acc = [[_mm512_setzero_ps(); 2]; MR];
        for p in 0..kp {
            let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(p * NR) as *const _));
            let b1: __m512bh =
                std::mem::transmute(_mm512_loadu_si512(b.add(p * NR + 16) as *const _));
            for (i, acc) in acc.iter_mut().enumerate() {
                let av: __m512bh =
                    std::mem::transmute(_mm512_set1_epi32(*a.add(p * MR + i) as i32));
                acc[0] = _mm512_dpbf16_ps(acc[0], av, b0);
                acc[1] = _mm512_dpbf16_ps(acc[1], av, b1);
            }
        }
        for (i, acc) in acc.iter().enumerate() {
            _mm512_storeu_ps(tile.as_mut_ptr().add(i * NR), acc[0]);
            _mm512_storeu_ps(tile.as_mut_ptr().add(i * NR + 16), acc[1]);
        }
    }

    /// [`super::pack_pairs`] 16 at a time: both rows rounded by `vcvtneps2bf16`, widened
    /// to 32 bits and joined.
    #[target_feature(enable = "avx512bf16,avx512f")]
    pub(super) unsafe fn pack_pairs(lo: &[f32], hi: &[f32], dst: &mut [u32]) {
        let n = dst.len();
        let mut i = 0;
        while i + 16 <= n {
            let l: __m256i =
                std::mem::transmute(_mm512_cvtneps_pbh(_mm512_loadu_ps(lo.as_ptr().add(i))));
            let h: __m256i =
                std::mem::transmute(_mm512_cvtneps_pbh(_mm512_loadu_ps(hi.as_ptr().add(i))));
            let v = _mm512_or_si512(
                _mm512_cvtepu16_epi32(l),
                _mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16),
            );
            _mm512_storeu_si512(dst.as_mut_ptr().add(i) as *mut _, v);
            i += 16;
        }
        for j in i..n {
            dst[j] = super::bf(lo[j]) | super::bf(hi[j]) << 16;
        }
    }
}

#[cfg(test)]
mod tests {
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
            let r =
                std::panic::catch_unwind(move || gemm(&a, &[1.0; 4], 2, 2, 2, &mut c, 2, false));
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
                gemm(
                    &PackedA::new(&a, m, k, lda),
                    &b,
                    k,
                    n,
                    ldb,
                    &mut c,
                    ldc,
                    parallel,
                );
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
}
