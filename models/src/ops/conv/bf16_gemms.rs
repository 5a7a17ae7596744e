//! The gradients' GEMMs of a convolution trained with bf16 products
//! (`Precision::Bf16` on the CPU: mixed precision as PyTorch's CPU autocast, where
//! the backward convolutions run on bf16 tensors): the incoming gradient, the weights and
//! the column matrix rounded to bf16 as they are packed, products summed in f32
//! (`ops::bf16`, AMX where the CPU has it). Everything around them (im2col, col2im, the
//! per-image weight gradients summed in image order) is the f32 op's.

use super::Gemms;
use crate::ops::bf16::{gemm_packed, pack_b, pack_bt, PackedA};

/// `dw = dy * cols^T` as [`Gemms::weight_grad`]: per group, `dy`'s `cog` rows (k = the
/// `n` columns) packed as the first factor, the column rows as the transposed second.
///
/// # Safety
/// As [`Gemms::weight_grad`].
pub(super) unsafe fn weight_grad(g: &Gemms, dy: *const f32, cols: *const f32, dw: *mut f32) {
    let Gemms { cog, rg, n, rs, .. } = *g;
    for i in 0..g.groups {
        // SAFETY: group i's rows of dy ([cog, n]) and of the columns ([rg, n]), row
        // stride rs, inside the buffers of the caller's contract
        let dyg = std::slice::from_raw_parts(dy.add(i * cog * rs), (cog - 1) * rs + n);
        let colg = std::slice::from_raw_parts(cols.add(i * rg * rs), (rg - 1) * rs + n);
        let a = PackedA::new(dyg, cog, n, rs);
        let b = pack_bt(colg, n, rg, rs, g.parallel);
        gemm_packed(&a, &b, dw.add(i * cog * rg), rg, g.parallel, None);
    }
}

/// Each group's weights transposed (`[rg, cog]`) and packed as the first factor of
/// `dcols = w^T * dy`: once per backward, for all its images (a copy of the weights,
/// strided; per image it was a tenth of a bf16 ResNet-50 step).
pub(super) fn pack_wt(g: &super::Geom, w: &[f32], co: usize) -> Vec<PackedA> {
    let (rg, cog) = (g.group_rows(), co / g.groups);
    w.chunks_exact(cog * rg)
        .map(|wg| {
            let mut wt = vec![0f32; rg * cog];
            for (o, row) in wg.chunks_exact(rg).enumerate() {
                for (r, &v) in row.iter().enumerate() {
                    wt[r * cog + o] = v;
                }
            }
            PackedA::new(&wt, rg, cog, cog)
        })
        .collect()
}

/// `dcols = w^T * dy` as [`Gemms::cols_grad`], from the weights packed by [`pack_wt`]:
/// per group, `dy`'s rows as the second factor.
///
/// # Safety
/// As [`Gemms::cols_grad`].
pub(super) unsafe fn cols_grad(g: &Gemms, wt: &[PackedA], dy: *const f32, dcols: *mut f32) {
    let Gemms { cog, rg, n, rs, .. } = *g;
    for (i, a) in wt.iter().enumerate() {
        // SAFETY: group i's rows of dy [cog, n] (row stride rs)
        let dyg = std::slice::from_raw_parts(dy.add(i * cog * rs), (cog - 1) * rs + n);
        let b = pack_b(dyg, cog, n, rs, g.parallel);
        gemm_packed(a, &b, dcols.add(i * rg * rs), rs, g.parallel, None);
    }
}
