//! The column matrix of a convolution: `im2col` (gather the input under every kernel
//! tap) and its adjoint `col2im` (scatter-add back), per channel, so that one image's
//! `[C*k*k, Ho*Wo]` block and the whole batch's `[C*k*k, B*Ho*Wo]` matrix share one
//! gather and one scatter.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::super::fill_chunks;

/// Geometry of an `im2col` over NCHW input.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Geom {
    pub b: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub k: usize,
    pub stride: usize,
    pub pad: usize,
    pub ho: usize,
    pub wo: usize,
    /// Channel groups: group `i` sees input channels `i*c/groups..` only.
    pub groups: usize,
}

impl Geom {
    pub fn new(
        dims: &[usize],
        k: usize,
        stride: usize,
        pad: usize,
        groups: usize,
    ) -> candle_core::Result<Self> {
        let [b, c, h, w] = *dims else {
            candle_core::bail!("im2col: expected NCHW, got {dims:?}")
        };
        if h + 2 * pad < k || w + 2 * pad < k || stride == 0 {
            candle_core::bail!("im2col: {h}x{w} input, kernel {k}, padding {pad}, stride {stride}");
        }
        if groups == 0 || c % groups != 0 {
            candle_core::bail!("conv2d: {c} input channels in {groups} groups");
        }
        Ok(Geom {
            b,
            c,
            h,
            w,
            k,
            stride,
            pad,
            ho: (h + 2 * pad - k) / stride + 1,
            wo: (w + 2 * pad - k) / stride + 1,
            groups,
        })
    }
    /// Rows of the column matrix of one image (`c * k * k`).
    pub fn rows(&self) -> usize {
        self.c * self.k * self.k
    }
    /// Rows of one group's block of the column matrix (`c / groups * k * k`): also the
    /// length of a weight row.
    pub fn group_rows(&self) -> usize {
        self.rows() / self.groups
    }
    /// Columns of one image (`ho * wo`).
    pub fn cols(&self) -> usize {
        self.ho * self.wo
    }
    /// Elements of one input image (`c * h * w`).
    pub fn image(&self) -> usize {
        self.c * self.h * self.w
    }
    /// A 1x1 stride-1 unpadded convolution: the input is its own column matrix.
    pub fn pointwise(&self) -> bool {
        self.k == 1 && self.stride == 1 && self.pad == 0
    }
    /// Whether a weight of `w_len` values with `co` output channels (`[co, c/groups, k,
    /// k]`: co rows of one group's column rows) and an input of `x_len` values fit this
    /// geometry (the CUDA forward's check of its buffers).
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub fn fits(&self, co: usize, w_len: usize, x_len: usize) -> bool {
        self.groups > 0
            && co.is_multiple_of(self.groups)
            && w_len == co * self.group_rows()
            && x_len == self.b * self.image()
    }
    /// At stride 1, the output columns `lo..hi` (`lo <= hi`) of kernel column `kx` that
    /// see the input row (from input column `lo + kx - pad`); the rest see padding.
    fn run(&self, kx: usize) -> (usize, usize) {
        let lo = self.pad.saturating_sub(kx).min(self.wo);
        let hi = (self.w + self.pad).saturating_sub(kx).min(self.wo).max(lo);
        (lo, hi)
    }
    /// The input row under output row `oy` and kernel row `ky`, if not padding.
    fn in_row(&self, oy: usize, ky: usize) -> Option<usize> {
        (oy * self.stride + ky)
            .checked_sub(self.pad)
            .filter(|&iy| iy < self.h)
    }
}

fn zero(o: &mut [MaybeUninit<f32>]) {
    for v in o {
        v.write(0.0);
    }
}

/// The `k*k` column-matrix rows of one channel `plane` (`h*w`): row `ky*k + kx` starts
/// at `dst[(ky*k + kx) * rs]` and holds `ho*wo` values. Every one is written (padding as
/// zeros), so `dst` need not be initialised.
fn im2col_channel(g: &Geom, plane: &[f32], dst: &mut [MaybeUninit<f32>], rs: usize) {
    let cols = g.cols();
    for ky in 0..g.k {
        for kx in 0..g.k {
            let r = (ky * g.k + kx) * rs;
            im2col_row(g, plane, ky, kx, &mut dst[r..r + cols]);
        }
    }
}

/// One row of the column matrix: the channel `plane` under kernel tap `(ky, kx)` at
/// every output position (`ho*wo` values in `row`, all written; zeros in the padding).
pub(super) fn im2col_row(
    g: &Geom,
    plane: &[f32],
    ky: usize,
    kx: usize,
    row: &mut [MaybeUninit<f32>],
) {
    for oy in 0..g.ho {
        let o = &mut row[oy * g.wo..(oy + 1) * g.wo];
        let Some(iy) = g.in_row(oy, ky) else {
            zero(o);
            continue;
        };
        let src = &plane[iy * g.w..(iy + 1) * g.w];
        if g.stride == 1 {
            // a contiguous run of the source row, zeros either side
            let (lo, hi) = g.run(kx);
            zero(&mut o[..lo]);
            if lo < hi {
                let s0 = lo + kx - g.pad;
                for (d, &v) in o[lo..hi].iter_mut().zip(&src[s0..]) {
                    d.write(v);
                }
            }
            zero(&mut o[hi..]);
            continue;
        }
        for (ox, v) in o.iter_mut().enumerate() {
            let ix = (ox * g.stride + kx).wrapping_sub(g.pad);
            v.write(if ix < g.w { src[ix] } else { 0.0 });
        }
    }
}

/// The adjoint of [`im2col_channel`]: add the `k*k` rows at `src[(ky*k + kx) * rs..]`
/// into the channel `plane`.
fn col2im_channel(g: &Geom, src: &[f32], rs: usize, plane: &mut [f32]) {
    let cols = g.cols();
    for ky in 0..g.k {
        for kx in 0..g.k {
            let r = (ky * g.k + kx) * rs;
            let row = &src[r..r + cols];
            for oy in 0..g.ho {
                let Some(iy) = g.in_row(oy, ky) else {
                    continue;
                };
                let dst = &mut plane[iy * g.w..(iy + 1) * g.w];
                let s = &row[oy * g.wo..(oy + 1) * g.wo];
                if g.stride == 1 {
                    // a contiguous run, as in im2col (vectorises)
                    let (lo, hi) = g.run(kx);
                    if lo < hi {
                        let s0 = lo + kx - g.pad;
                        for (d, v) in dst[s0..s0 + hi - lo].iter_mut().zip(&s[lo..hi]) {
                            *d += v;
                        }
                    }
                    continue;
                }
                for (ox, v) in s.iter().enumerate() {
                    let ix = (ox * g.stride + kx).wrapping_sub(g.pad);
                    if ix < g.w {
                        dst[ix] += v;
                    }
                }
            }
        }
    }
}

/// `[B, C, H, W]` to `[C*k*k, B*Ho*Wo]`: row `(c, ky, kx)` holds the input under that
/// kernel tap for every (image, output position), zero in the padding. Images side by
/// side make the convolution one GEMM whose weight gradient needs no reduction.
pub(super) fn im2col(g: &Geom, x: &[f32]) -> Vec<f32> {
    let (kk, cols, bn) = (g.k * g.k, g.cols(), g.b * g.cols());
    let plane = g.h * g.w;
    // one task per channel: its k*k rows of the column matrix
    fill_chunks(g.rows() * bn, kk * bn, true, |c, dst| {
        for b in 0..g.b {
            let src = &x[(b * g.c + c) * plane..(b * g.c + c + 1) * plane];
            im2col_channel(g, src, &mut dst[b * cols..], bn);
        }
    })
}

/// One image's `[C*k*k, Ho*Wo]` column block from its `[C, H, W]` input, over channels
/// in parallel when `parallel`.
pub(super) fn im2col_image(g: &Geom, x: &[f32], parallel: bool) -> Vec<f32> {
    let (kk, cols, plane) = (g.k * g.k, g.cols(), g.h * g.w);
    fill_chunks(g.rows() * cols, kk * cols, parallel, |c, dst| {
        im2col_channel(g, &x[c * plane..(c + 1) * plane], dst, cols)
    })
}

/// The adjoint of [`im2col`]: scatter-add `[C*k*k, B*Ho*Wo]` back to `[B, C, H, W]`.
pub(super) fn col2im(g: &Geom, m: &[f32], out: &mut [f32]) {
    let (kk, cols, bn) = (g.k * g.k, g.cols(), g.b * g.cols());
    out.par_chunks_mut(g.h * g.w)
        .enumerate()
        .for_each(|(bc, plane)| {
            let (b, c) = (bc / g.c, bc % g.c);
            col2im_channel(g, &m[c * kk * bn + b * cols..], bn, plane)
        });
}

/// The adjoint of [`im2col_image`]: add one image's `[C*k*k, Ho*Wo]` block into its
/// `[C, H, W]` gradient, over channels in parallel when `parallel`.
pub(super) fn col2im_image(g: &Geom, m: &[f32], out: &mut [f32], parallel: bool) {
    let (kk, cols) = (g.k * g.k, g.cols());
    let one = |(c, plane): (usize, &mut [f32])| col2im_channel(g, &m[c * kk * cols..], cols, plane);
    if parallel {
        out.par_chunks_mut(g.h * g.w).enumerate().for_each(one);
    } else {
        out.chunks_mut(g.h * g.w).enumerate().for_each(one);
    }
}

/// `[B, C, P]` to `[C, B*P]`.
pub(super) fn nchw_to_cbn(x: &[f32], b: usize, c: usize, p: usize) -> Vec<f32> {
    fill_chunks(b * c * p, b * p, true, |ch, row| {
        for i in 0..b {
            let src = &x[(i * c + ch) * p..(i * c + ch + 1) * p];
            for (d, &v) in row[i * p..(i + 1) * p].iter_mut().zip(src) {
                d.write(v);
            }
        }
    })
}

/// `[C, B*P]` to `[B, C, P]`.
pub(super) fn cbn_to_nchw(y: &[f32], b: usize, c: usize, p: usize) -> Vec<f32> {
    fill_chunks(b * c * p, p, true, |bc, row| {
        let (i, ch) = (bc / c, bc % c);
        for (d, &v) in row.iter_mut().zip(&y[ch * b * p + i * p..]) {
            d.write(v);
        }
    })
}
