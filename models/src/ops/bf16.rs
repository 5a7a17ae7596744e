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
    /// Pack `m` rows of `k` values of `w` (row `i` at `w[i * ld..]`): each row rounded
    /// to bf16 pairs in one vector pass, then laid into its panel.
    pub fn new(w: &[f32], m: usize, k: usize, ld: usize) -> Self {
        use rayon::prelude::*;
        let kp = k.div_ceil(2);
        let panels = m.div_ceil(MR);
        let mut data = vec![0u32; panels * kp * MR];
        data.par_chunks_mut(kp * MR)
            .enumerate()
            .for_each(|(ib, panel)| {
                let mut pairs = vec![0u32; kp];
                for i in 0..MR.min(m - ib * MR) {
                    row_pairs(&w[(ib * MR + i) * ld..][..k], &mut pairs);
                    for (p, &v) in pairs.iter().enumerate() {
                        panel[p * MR + i] = v;
                    }
                }
            });
        PackedA { data, m, kp }
    }
}

/// `row` as bf16 pairs: `pairs[p] = bf(row[2p]) | bf(row[2p + 1]) << 16` (0 past the end).
fn row_pairs(row: &[f32], pairs: &mut [u32]) {
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if available() {
        // SAFETY: the features were detected above.
        done = unsafe { x86::row_pairs(row, pairs) };
    }
    for p in done..pairs.len() {
        let hi = row.get(2 * p + 1).map_or(0, |&v| bf(v));
        pairs[p] = bf(row[2 * p]) | hi << 16;
    }
}

/// A per-row affine applied to the GEMM's sums before they are stored, `c[i][j] =
/// relu?(sum * scale[i] + shift[i])`: an eval-mode BatchNorm (+ReLU) after a
/// convolution, folded into its store instead of a pass of its own over the output. The
/// same operations as the separate pass (`ops::bn` `affine_fill`: a product, then a sum,
/// then the ReLU that keeps NaN), so the same floats.
#[derive(Clone, Copy, Debug)]
pub struct Epilogue<'a> {
    /// Per row of `c`.
    pub scale: &'a [f32],
    /// Per row of `c`.
    pub shift: &'a [f32],
    /// `max(., 0)` after it (NaN kept).
    pub relu: bool,
}

/// The columns operand `[k, n]` packed in [`NR`]-column panels, `[n/NR][k/2][NR]`,
/// zero-padded (from [`pack_b`] or [`pack_rows`]).
pub struct PackedB {
    data: Vec<u32>,
    n: usize,
    kp: usize,
}

/// Pair `p` of rows (`lo`, and `hi` unless `k` is odd and this is the last pair), `n`
/// columns, into its slots of every panel of `out` (`kp` pairs per panel).
///
/// # Safety
/// `out` is valid for writes of `n.div_ceil(NR) * kp * NR` values, and no other thread
/// writes pair `p`'s slots meanwhile.
unsafe fn pack_pair(lo: &[f32], hi: Option<&[f32]>, out: *mut u32, p: usize, kp: usize, n: usize) {
    let at = |c: usize| ((c / NR) * kp + p) * NR + c % NR;
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if available() {
        // SAFETY: features detected; every store is slot at(c..c+16) of pair p, inside
        // `out` (the caller's contract)
        done = x86::pack_pair_row(&lo[..n], hi.map(|h| &h[..n]), out.add(p * NR), kp * NR);
    }
    for c in done..n.div_ceil(NR) * NR {
        let v = if c < n {
            bf(lo[c]) | hi.map_or(0, |h| bf(h[c])) << 16
        } else {
            0
        };
        // SAFETY: as above
        *out.add(at(c)) = v;
    }
}

/// `k` rows of `n` columns packed pair by pair (pairs in parallel when `parallel`):
/// `pair(scratch, p, out)` packs pair `p` into `out` with [`pack_pair`], `scratch` its
/// task's own (from `init`).
fn pack_pairs<S>(
    k: usize,
    n: usize,
    parallel: bool,
    init: impl Fn() -> S + Sync + Send,
    pair: impl Fn(&mut S, usize, *mut u32) + Sync + Send,
) -> PackedB {
    use rayon::prelude::*;
    let kp = k.div_ceil(2);
    let len = n.div_ceil(NR) * kp * NR;
    let mut data: Vec<u32> = Vec::with_capacity(len);
    let optr = data.as_mut_ptr() as usize;
    if parallel {
        (0..kp)
            .into_par_iter()
            .for_each_init(&init, |s, p| pair(s, p, optr as *mut u32));
    } else {
        let mut s = init();
        (0..kp).for_each(|p| pair(&mut s, p, optr as *mut u32));
    }
    // SAFETY: every slot of every pair was written above (columns up to the padded width)
    unsafe { data.set_len(len) };
    PackedB { data, n, kp }
}

/// Rows `[k, n]` of `b` (row `r` at `b[r * ld..]`) packed: each pair of rows read in
/// order, 16 columns at a time stored into their panel; pairs in parallel when
/// `parallel`.
///
/// # Panics
/// When `b` is shorter than the shape says.
pub fn pack_b(b: &[f32], k: usize, n: usize, ld: usize, parallel: bool) -> PackedB {
    let kp = k.div_ceil(2);
    assert!(
        k == 0 || b.len() >= (k - 1) * ld + n,
        "bf16 GEMM: b too short"
    );
    pack_pairs(
        k,
        n,
        parallel,
        || (),
        |_, p, out| {
            let lo = &b[2 * p * ld..][..n];
            let hi = (2 * p + 1 < k).then(|| &b[(2 * p + 1) * ld..][..n]);
            // SAFETY: `out` holds the panels of pack_pairs, pair p is this call's alone
            unsafe { pack_pair(lo, hi, out, p, kp, n) };
        },
    )
}

/// `k` rows of `n` columns packed from `row(r, buf)`, which writes row `r`'s `n` values
/// into `buf`: rows made on the fly (a convolution's column matrix, from its input),
/// never stored whole in f32. Pairs in parallel when `parallel`, each task with its own
/// two row buffers (in cache while they are packed).
pub fn pack_rows(
    k: usize,
    n: usize,
    parallel: bool,
    row: impl Fn(usize, &mut [f32]) + Sync + Send,
) -> PackedB {
    let kp = k.div_ceil(2);
    let bufs = || (vec![0f32; n], vec![0f32; n]);
    pack_pairs(k, n, parallel, bufs, |(lo, hi), p, out| {
        row(2 * p, lo);
        let hi = (2 * p + 1 < k).then(|| {
            row(2 * p + 1, hi);
            &hi[..]
        });
        // SAFETY: `out` holds the panels of pack_pairs, pair p is this call's alone
        unsafe { pack_pair(lo, hi, out, p, kp, n) };
    })
}

/// Row-major `c[m, n] = a * b` (`c` row stride `ldc`, written whole), `a` packed, `b`
/// rows `[k, n]` with row stride `ldb`, in bf16 products with f32 sums: [`pack_b`], then
/// [`gemm_packed`].
///
/// # Safety
/// As [`gemm_packed`].
///
/// # Panics
/// Where [`available`] is false (the callers check it first), or when `b` is shorter
/// than the shape says.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm(
    a: &PackedA,
    b: &[f32],
    k: usize,
    n: usize,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    parallel: bool,
) {
    assert!(available(), "bf16 GEMM on a CPU without AVX512-BF16");
    if a.m == 0 || n == 0 {
        return;
    }
    gemm_packed(a, &pack_b(b, k, n, ldb, parallel), c, ldc, parallel, None)
}

/// Row-major `c[m, n] = a * b` (`c` row stride `ldc`, written whole) of packed operands,
/// in bf16 products with f32 sums, through `epi` when given. Column panels in parallel
/// (rayon) when `parallel`.
///
/// # Safety
/// `c` is valid for writes of `(m - 1) * ldc + n` floats (it may be uninitialised) and
/// nothing else accesses them meanwhile.
///
/// # Panics
/// Where [`available`] is false, when the operands' `k` differ, or when `epi` has fewer
/// than `m` rows.
pub unsafe fn gemm_packed(
    a: &PackedA,
    bp: &PackedB,
    c: *mut f32,
    ldc: usize,
    parallel: bool,
    epi: Option<Epilogue>,
) {
    use rayon::prelude::*;
    assert!(available(), "bf16 GEMM on a CPU without AVX512-BF16");
    assert_eq!(a.kp, bp.kp, "bf16 GEMM: packed k differs");
    let (m, n, kp) = (a.m, bp.n, a.kp);
    if let Some(e) = epi {
        assert!(
            e.scale.len() >= m && e.shift.len() >= m,
            "bf16 GEMM: epilogue for {} rows, {m} wanted",
            e.scale.len().min(e.shift.len())
        );
    }
    if m == 0 || n == 0 {
        return;
    }
    let bp = &bp.data;
    let cptr = c as usize;
    let panel = |j: usize| {
        let (c0, w) = (j * NR, NR.min(n - j * NR));
        let bpan = &bp[j * kp * NR..][..kp * NR];
        let mut tile = [0f32; MR * NR];
        for ib in 0..m.div_ceil(MR) {
            let apan = &a.data[ib * kp * MR..][..kp * MR];
            let rows = MR.min(m - ib * MR);
            let at = (cptr as *mut f32).add(ib * MR * ldc + c0);
            // this panel's rows of the epilogue (padded: the kernel reads MR of each)
            let mut rows_epi = [[0f32; MR]; 2];
            let e = epi.map(|e| {
                rows_epi[0][..rows].copy_from_slice(&e.scale[ib * MR..][..rows]);
                rows_epi[1][..rows].copy_from_slice(&e.shift[ib * MR..][..rows]);
                (&rows_epi, e.relu)
            });
            #[cfg(target_arch = "x86_64")]
            if rows == MR && w == NR {
                // a whole tile: stored straight into c (rows ib*MR.., columns c0..c0+NR,
                // this panel's own)
                x86::kernel(kp, apan.as_ptr(), bpan.as_ptr(), at, ldc, e);
                continue;
            } else {
                x86::kernel(kp, apan.as_ptr(), bpan.as_ptr(), tile.as_mut_ptr(), NR, e);
            }
            for i in 0..rows {
                std::ptr::copy_nonoverlapping(tile.as_ptr().add(i * NR), at.add(i * ldc), w);
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

    /// `out[i * ld + j] = sum_p a[p][i] . b[p][j]` for the `MR x NR` tile, over `kp`
    /// bf16 pairs; with `epi` (`[scale, shift]` of the tile's rows, and the ReLU) through
    /// the affine first: `sum * scale[i] + shift[i]`, a product then a sum as the
    /// separate pass computes it (no FMA), then the ReLU that keeps NaN.
    #[target_feature(enable = "avx512bf16,avx512f")]
    pub(super) unsafe fn kernel(
        kp: usize,
        a: *const u32,
        b: *const u32,
        out: *mut f32,
        ld: usize,
        epi: Option<(&[[f32; MR]; 2], bool)>,
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
        if let Some((e, relu)) = epi {
            for (i, acc) in acc.iter_mut().enumerate() {
                let (sc, sh) = (_mm512_set1_ps(e[0][i]), _mm512_set1_ps(e[1][i]));
                for v in acc.iter_mut() {
                    *v = _mm512_add_ps(_mm512_mul_ps(*v, sc), sh);
                    if relu {
                        // kept where v > 0 or v is NaN (not-less-or-equal, unordered)
                        let keep = _mm512_cmp_ps_mask::<_CMP_NLE_UQ>(*v, _mm512_setzero_ps());
                        *v = _mm512_maskz_mov_ps(keep, *v);
                    }
                }
            }
        }
        for (i, acc) in acc.iter().enumerate() {
            _mm512_storeu_ps(out.add(i * ld), acc[0]);
            _mm512_storeu_ps(out.add(i * ld + 16), acc[1]);
        }
    }

    /// [`super::row_pairs`] 8 pairs (16 values) at a time; returns the pairs done.
    #[target_feature(enable = "avx512bf16,avx512f")]
    pub(super) unsafe fn row_pairs(row: &[f32], pairs: &mut [u32]) -> usize {
        let mut p = 0;
        while 2 * p + 16 <= row.len() && p + 8 <= pairs.len() {
            let v: __m256i =
                std::mem::transmute(_mm512_cvtneps_pbh(_mm512_loadu_ps(row.as_ptr().add(2 * p))));
            _mm256_storeu_si256(pairs.as_mut_ptr().add(p) as *mut __m256i, v);
            p += 8;
        }
        p
    }

    /// Columns `0..16*q` of one pair of rows into their panels (`dst` points at this
    /// pair's slots of the first panel, `panel` is a panel's length); returns the
    /// columns done.
    #[target_feature(enable = "avx512bf16,avx512f")]
    pub(super) unsafe fn pack_pair_row(
        lo: &[f32],
        hi: Option<&[f32]>,
        dst: *mut u32,
        panel: usize,
    ) -> usize {
        let n = lo.len();
        let mut c = 0;
        while c + 16 <= n {
            let l: __m256i =
                std::mem::transmute(_mm512_cvtneps_pbh(_mm512_loadu_ps(lo.as_ptr().add(c))));
            let mut v = _mm512_cvtepu16_epi32(l);
            if let Some(hi) = hi {
                let h: __m256i =
                    std::mem::transmute(_mm512_cvtneps_pbh(_mm512_loadu_ps(hi.as_ptr().add(c))));
                v = _mm512_or_si512(v, _mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
            }
            _mm512_storeu_si512(dst.add((c / NR) * panel + c % NR) as *mut _, v);
            c += 16;
        }
        c
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
}
