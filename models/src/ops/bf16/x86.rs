//! The AVX512-BF16 kernels of the bf16 GEMM and its packing.

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
        let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(p * NR + 16) as *const _));
        for (i, acc) in acc.iter_mut().enumerate() {
            let av: __m512bh = std::mem::transmute(_mm512_set1_epi32(*a.add(p * MR + i) as i32));
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
