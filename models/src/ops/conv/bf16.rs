//! The forward of [`super::Conv`] with bf16 products (`Precision::Bf16`): the same plans
//! and column matrices as the f32 op, the GEMMs of `ops::bf16` (weights packed once per
//! call, per group: `co * rows` values, negligible beside the GEMM).

use super::cols::{cbn_to_nchw, Geom};
use super::{batch_cols, image_cols, Plan};
use crate::ops::bf16::{gemm, PackedA};
use crate::ops::fill_chunks;

/// NCHW `y` `[B, Co, Ho, Wo]` of `x` and `w` (`[Co, rows/groups]`).
pub(super) fn forward(g: &Geom, x: &[f32], w: &[f32], co: usize) -> Vec<f32> {
    let (p, img, rg, cog) = (g.cols(), g.image(), g.group_rows(), co / g.groups);
    let packs: Vec<PackedA> = (0..g.groups)
        .map(|i| PackedA::new(&w[i * cog * rg..], cog, rg, rg))
        .collect();
    match Plan::of(g) {
        Plan::PerImage { outer } => fill_chunks(g.b * co * p, co * p, outer, |b, yb| {
            let cols = image_cols(g, &x[b * img..(b + 1) * img], !outer);
            let y: *mut f32 = yb.as_mut_ptr().cast();
            for (i, a) in packs.iter().enumerate() {
                // SAFETY: group i's rows of image b's [co, p] output block (the groups
                // write it whole)
                unsafe {
                    gemm(
                        a,
                        &cols[i * rg * p..],
                        rg,
                        p,
                        p,
                        y.add(i * cog * p),
                        p,
                        !outer,
                    )
                };
            }
        }),
        Plan::Batch => {
            let (all, bn) = (batch_cols(g, x), g.b * p);
            let mut t = vec![0f32; co * bn];
            for (i, a) in packs.iter().enumerate() {
                // SAFETY: group i's rows of t [co, bn]
                let ti = unsafe { t.as_mut_ptr().add(i * cog * bn) };
                unsafe { gemm(a, &all[i * rg * bn..], rg, bn, bn, ti, bn, true) };
            }
            cbn_to_nchw(&t, g.b, co, p)
        }
    }
}
