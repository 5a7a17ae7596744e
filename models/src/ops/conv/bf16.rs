//! The forward of [`super::Conv`] with bf16 products (`Precision::Bf16`): the same plans
//! as the f32 op, the GEMMs of `ops::bf16` (weights packed once per call, per group:
//! `co * rows` values, negligible beside the GEMM). The column matrix is never written
//! in f32: its rows are made from the input pair by pair and packed to bf16 at once
//! (`bf16::pack_rows`), where the f32 op's `im2col` writes all of it and the packing
//! then reads it back (that pair of passes was ~18% of a bf16 ResNet-152 forward).

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::cols::{cbn_to_nchw, im2col_row, Geom};
use super::Plan;
use crate::ops::bf16::{gemm_packed, pack_b, pack_rows, Epilogue, PackedA, PackedB};
use crate::ops::fill_chunks;

/// Row `r` of the column matrix of one image `x` (`[C, H, W]`) into `out` (`ho*wo`).
fn image_row(g: &Geom, x: &[f32], r: usize, out: &mut [f32]) {
    let (kk, plane) = (g.k * g.k, g.h * g.w);
    let (ch, t) = (r / kk, r % kk);
    // SAFETY: MaybeUninit<f32> has f32's layout, and im2col_row writes only f32 values
    // (all of them), so `out` stays initialised
    let out = unsafe { &mut *(out as *mut [f32] as *mut [MaybeUninit<f32>]) };
    im2col_row(g, &x[ch * plane..(ch + 1) * plane], t / g.k, t % g.k, out);
}

/// Group `i`'s rows of one image's column matrix (`[rg, ho*wo]`), packed: the input's
/// own rows when pointwise.
fn image_cols(g: &Geom, x: &[f32], i: usize, parallel: bool) -> PackedB {
    let (rg, p) = (g.group_rows(), g.cols());
    if g.pointwise() {
        pack_b(&x[i * rg * p..], rg, p, p, parallel)
    } else {
        pack_rows(rg, p, parallel, |r, out| image_row(g, x, i * rg + r, out))
    }
}

/// Group `i`'s rows of the batch's column matrix (`[rg, B*ho*wo]`, images side by
/// side), packed.
fn batch_cols(g: &Geom, x: &[f32], i: usize, parallel: bool) -> PackedB {
    let (rg, p, img) = (g.group_rows(), g.cols(), g.image());
    pack_rows(rg, g.b * p, parallel, |r, out| {
        for (j, o) in out.chunks_mut(p).enumerate() {
            image_row(g, &x[j * img..(j + 1) * img], i * rg + r, o);
        }
    })
}

/// An eval-mode BatchNorm (+ReLU) folded into the convolution's store: per output
/// channel `scale`, `shift`, and the ReLU (`ops::bf16::Epilogue`).
#[derive(Clone, Debug)]
pub(crate) struct Affine {
    pub scale: Vec<f32>,
    pub shift: Vec<f32>,
    pub relu: bool,
}

impl Affine {
    /// Output channels `rows` of it.
    fn rows(&self, rows: std::ops::Range<usize>) -> Epilogue<'_> {
        Epilogue {
            scale: &self.scale[rows.clone()],
            shift: &self.shift[rows],
            relu: self.relu,
        }
    }
}

/// Whether the groups of a grouped convolution run in parallel, each group's packing and
/// GEMM on one thread, rather than in turn with each split across the threads: with at
/// least as many groups as threads. A group's product is small (SENet-154: 4 output
/// channels a group, 64 groups), and splitting each cost two rayon joins per group, which
/// made a bf16 SENet-154 forward slower than the f32 one (`perf record` of `models infer
/// senet154 64 8`: a third of the time in sched_yield and futex waits).
fn groups_in_parallel(groups: usize) -> bool {
    groups > 1 && groups >= rayon::current_num_threads()
}

/// The groups' GEMMs into `y` (`[co, n]` with row stride `n`, written whole): group `i`'s
/// packed weights `packs[i]` times `cols(i, parallel)` (its `[rg, n]` packed column rows).
fn group_gemms(
    packs: &[PackedA],
    affine: Option<&Affine>,
    n: usize,
    y: &mut [MaybeUninit<f32>],
    parallel: bool,
    cols: impl Fn(usize, bool) -> PackedB + Sync,
) {
    let cog = y.len() / (packs.len() * n);
    let one = |i: usize, yg: &mut [MaybeUninit<f32>], parallel: bool| {
        let epi = affine.map(|e| e.rows(i * cog..(i + 1) * cog));
        // SAFETY: yg is group i's [cog, n] rows of y, which its GEMM writes whole
        unsafe {
            gemm_packed(
                &packs[i],
                &cols(i, parallel),
                yg.as_mut_ptr().cast(),
                n,
                parallel,
                epi,
            )
        };
    };
    if parallel && groups_in_parallel(packs.len()) {
        y.par_chunks_mut(cog * n)
            .enumerate()
            .for_each(|(i, yg)| one(i, yg, false));
    } else {
        for (i, yg) in y.chunks_mut(cog * n).enumerate() {
            one(i, yg, parallel);
        }
    }
}

/// NCHW `y` `[B, Co, Ho, Wo]` of `x` and `w` (`[Co, rows/groups]`), through `affine`
/// (`co` values each) when given.
pub(super) fn forward(
    g: &Geom,
    x: &[f32],
    w: &[f32],
    co: usize,
    affine: Option<&Affine>,
) -> Vec<f32> {
    let (p, img, rg, cog) = (g.cols(), g.image(), g.group_rows(), co / g.groups);
    let packs: Vec<PackedA> = (0..g.groups)
        .map(|i| PackedA::new(&w[i * cog * rg..], cog, rg, rg))
        .collect();
    match Plan::of(g) {
        Plan::PerImage { outer } => fill_chunks(g.b * co * p, co * p, outer, |b, yb| {
            let xb = &x[b * img..(b + 1) * img];
            group_gemms(&packs, affine, p, yb, !outer, |i, par| {
                image_cols(g, xb, i, par)
            });
        }),
        Plan::Batch => {
            let bn = g.b * p;
            let t = fill_chunks(co * bn, co * bn, false, |_, t| {
                group_gemms(&packs, affine, bn, t, true, |i, par| {
                    batch_cols(g, x, i, par)
                });
            });
            cbn_to_nchw(&t, g.b, co, p)
        }
    }
}
