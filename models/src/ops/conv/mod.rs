//! Convolution: candle 0.11 back-propagates conv2d into its input with a naive
//! `conv_transpose2d` loop and runs the weight gradient through naive kernels too; a
//! profile of a demo train step put ~50% of the time in `vec_dot_f32` and strided maps and
//! ~2% in GEMM. Here a convolution is one op whose forward, input gradient and weight
//! gradient are GEMMs (gemm.rs) around one `im2col` gather or `col2im` scatter
//! (cols.rs); 1x1 stride-1 convolutions use the input as their column matrix.
//!
//! Large planes (early layers) take one GEMM per image. With at least as many images as
//! threads the images run in parallel, each GEMM on one thread: the `gemm` crate splits
//! a matrix of 64 output rows badly over two threads. Small planes take one GEMM over
//! the batch. Non-f32 tensors keep candle's `conv2d`; on CUDA
//! (feature `cuda`) the same op runs ops/cuda/conv.rs (grouped ones for inference only).

mod bf16;
pub(super) mod cols;
#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::mem::MaybeUninit;

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use self::cols::{cbn_to_nchw, col2im, col2im_image, im2col, im2col_image, nchw_to_cbn, Geom};
use super::gemm::sgemm;
use super::{contiguous_f32, fill_chunks};
use crate::error::Result;

/// Output planes at least this large (14x14) take one GEMM per image, written straight
/// into the NCHW output; smaller ones (the last stage) one GEMM over the whole batch,
/// whose `[Co, B*Ho*Wo]` result is then scattered into NCHW (a per-image GEMM with few
/// columns runs below the GEMM's peak). With images in parallel, 14x14 planes ran as fast
/// per image as over the batch (ResNet-50 step at 224, 4 rounds), and skip the batch
/// path's transposed copies.
const PER_IMAGE_MIN: usize = 196;

/// How a convolution lays out its GEMMs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Plan {
    /// One GEMM per image. `outer`: images in parallel, each GEMM on one thread (when
    /// there are at least as many images as threads); otherwise images in turn, each
    /// GEMM over all threads.
    PerImage { outer: bool },
    /// One GEMM over the batch's `[C*k*k, B*Ho*Wo]` column matrix.
    Batch,
}

impl Plan {
    fn of(g: &Geom) -> Plan {
        if g.cols() >= PER_IMAGE_MIN || g.b == 1 {
            let threads = rayon::current_num_threads();
            Plan::PerImage {
                outer: threads > 1 && g.b >= threads,
            }
        } else {
            Plan::Batch
        }
    }
}

/// One image's `[C*k*k, Ho*Wo]` column block: its input itself when pointwise.
fn image_cols<'a>(g: &Geom, x: &'a [f32], parallel: bool) -> Cow<'a, [f32]> {
    if g.pointwise() {
        Cow::Borrowed(x)
    } else {
        Cow::Owned(im2col_image(g, x, parallel))
    }
}

/// The batch's `[C*k*k, B*Ho*Wo]` column matrix.
fn batch_cols(g: &Geom, x: &[f32]) -> Vec<f32> {
    if g.pointwise() {
        nchw_to_cbn(x, g.b, g.c, g.cols())
    } else {
        im2col(g, x)
    }
}

/// Convolution of `(x, w)` as one op: the column matrix lives only inside the forward
/// and the backward (recomputed there), so the graph keeps `x`, `w` and `y` alone,
/// as PyTorch's convolution does, not the 9x-larger columns and a transposed copy. The
/// third field, only with bf16 products on the CPU ([`conv2d_affine`], no backward): an
/// eval BatchNorm (+ReLU) folded into the store.
struct Conv(Geom, Precision, Option<bf16::Affine>);

/// `[dx..., dw...]` of [`Conv`] from `(x, w, dy)`; `[dw...]` alone when the input needs
/// no gradient (the network's input image).
struct ConvBackward {
    g: Geom,
    need_dx: bool,
}

/// The GEMMs of one image or of the batch, group by group: `y[co, n] = w[co, rg] *
/// cols[rows, n]` as `groups` products of `co/g` weight rows and `rg` column rows, with
/// `n` columns of which the blocks use row stride `rs`. The pointer arithmetic of every
/// conv GEMM lives here.
#[derive(Clone, Copy)]
struct Gemms {
    groups: usize,
    /// Output channels per group.
    cog: usize,
    /// Column rows per group (the weight row length).
    rg: usize,
    /// Columns of the product.
    n: usize,
    /// Row stride of the column matrix, the output and dy.
    rs: usize,
    parallel: bool,
}

impl Gemms {
    fn new(g: &Geom, co: usize, n: usize, rs: usize, parallel: bool) -> Self {
        Gemms {
            groups: g.groups,
            cog: co / g.groups,
            rg: g.group_rows(),
            n,
            rs,
            parallel,
        }
    }
    /// `y = w * cols` (`y` written whole).
    ///
    /// # Safety
    /// `w` is `[co, rg]`, `cols` `[groups*rg, n]` and `y` `[co, n]`, both with row
    /// stride `rs`; `y` overlaps neither.
    unsafe fn forward(&self, w: *const f32, cols: *const f32, y: *mut f32) {
        let Gemms { cog, rg, n, rs, .. } = *self;
        for i in 0..self.groups {
            sgemm(
                (cog, n, rg),
                y.add(i * cog * rs),
                (rs, 1),
                (w.add(i * cog * rg), (rg, 1)),
                (cols.add(i * rg * rs), (rs, 1)),
                self.parallel,
            );
        }
    }
    /// `dw = dy * cols^T` (`[co, rg]`, written whole).
    ///
    /// # Safety
    /// As [`Gemms::forward`], with `dy` shaped as `y` and `dw` `[co, rg]`.
    unsafe fn weight_grad(&self, dy: *const f32, cols: *const f32, dw: *mut f32) {
        let Gemms { cog, rg, n, rs, .. } = *self;
        for i in 0..self.groups {
            sgemm(
                (cog, rg, n),
                dw.add(i * cog * rg),
                (rg, 1),
                (dy.add(i * cog * rs), (rs, 1)),
                (cols.add(i * rg * rs), (1, rs)),
                self.parallel,
            );
        }
    }
    /// `dcols = w^T * dy` (`[groups*rg, n]` with row stride `rs`, written whole).
    ///
    /// # Safety
    /// As [`Gemms::weight_grad`], `dcols` shaped as `cols`.
    unsafe fn cols_grad(&self, w: *const f32, dy: *const f32, dcols: *mut f32) {
        let Gemms { cog, rg, n, rs, .. } = *self;
        for i in 0..self.groups {
            sgemm(
                (rg, n, cog),
                dcols.add(i * rg * rs),
                (rs, 1),
                (w.add(i * cog * rg), (1, rg)),
                (dy.add(i * cog * rs), (rs, 1)),
                self.parallel,
            );
        }
    }
}

/// A vector of `n` floats that `fill` writes whole.
///
/// # Safety
/// `fill` must initialise all `n` elements behind the pointer.
unsafe fn written(n: usize, fill: impl FnOnce(*mut f32)) -> Vec<f32> {
    let mut v: Vec<f32> = Vec::with_capacity(n);
    fill(v.as_mut_ptr());
    v.set_len(n);
    v
}

impl CustomOp2 for Conv {
    fn name(&self) -> &'static str {
        "meal-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = self.0;
        let (x, w) = (contiguous_f32(s1, l1)?, contiguous_f32(s2, l2)?);
        let (p, co, img) = (g.cols(), l2.dims()[0], g.image());
        if self.1 == Precision::Bf16 {
            let y = bf16::forward(&g, x, w, co, self.2.as_ref());
            return Ok((CpuStorage::F32(y), Shape::from((g.b, co, g.ho, g.wo))));
        }
        let y = match Plan::of(&g) {
            Plan::PerImage { outer } => fill_chunks(g.b * co * p, co * p, outer, |b, yb| {
                let cols = image_cols(&g, &x[b * img..(b + 1) * img], !outer);
                // SAFETY: w is [co, rg], the columns [rows, p], image b's output block
                // yb [co, p] (written whole by the GEMMs).
                unsafe {
                    Gemms::new(&g, co, p, p, !outer).forward(
                        w.as_ptr(),
                        cols.as_ptr(),
                        yb.as_mut_ptr().cast(),
                    )
                }
            }),
            Plan::Batch => {
                let (all, bn) = (batch_cols(&g, x), g.b * p);
                // SAFETY: w [co, rg] times all [rows, bn] into [co, bn]
                let t = unsafe {
                    written(co * bn, |t| {
                        Gemms::new(&g, co, bn, bn, true).forward(w.as_ptr(), all.as_ptr(), t)
                    })
                };
                cbn_to_nchw(&t, g.b, co, p)
            }
        };
        Ok((CpuStorage::F32(y), Shape::from((g.b, co, g.ho, g.wo))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        super::profile::on_cuda("conv forward", s1, || {
            super::cuda::conv_forward(&self.0, (s1, l1), (s2, l2))
        })
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        // the network's input image needs no gradient: skip its GEMM and col2im
        if self.1 == Precision::Bf16 {
            candle_core::bail!("conv2d in bf16: inference only, no backward");
        }
        let need_dx = x.track_op();
        let op = ConvBackward { g: self.0, need_dx };
        let packed = x.apply_op3_no_bwd(w, &grad.contiguous()?, &op)?;
        if !need_dx {
            return Ok((None, Some(packed.reshape(w.dims())?)));
        }
        let (nx, nw) = (x.elem_count(), w.elem_count());
        let dx = packed.narrow(0, 0, nx)?.reshape(x.dims())?;
        let dw = packed.narrow(0, nx, nw)?.reshape(w.dims())?;
        // A view keeps the whole packed buffer alive, and the weight gradient lives until
        // the optimizer step: copy the smaller part out, so the buffer dies with the
        // larger (peak memory of a ResNet-50 step: 3.3 -> 2.x GB).
        Ok(if nw <= nx {
            (Some(dx), Some(dw.force_contiguous()?))
        } else {
            (Some(dx.force_contiguous()?), Some(dw))
        })
    }
}

impl candle_core::CustomOp3 for ConvBackward {
    fn name(&self) -> &'static str {
        "meal-conv2d-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = self.g;
        let (x, w, dy) = (
            contiguous_f32(s1, l1)?,
            contiguous_f32(s2, l2)?,
            contiguous_f32(s3, l3)?,
        );
        let (p, co) = (g.cols(), l2.dims()[0]);
        if dy.len() != g.b * co * p {
            candle_core::bail!(
                "conv2d backward: gradient {:?} for output {co}x{p}",
                l3.dims()
            );
        }
        let nx = if self.need_dx { g.b * g.image() } else { 0 };
        let nw = co * g.group_rows();
        // dx is accumulated into (col2im adds), so it starts at zero
        let mut out = vec![0f32; nx + nw];
        let (dx, dw) = out.split_at_mut(nx);
        match Plan::of(&g) {
            Plan::PerImage { outer } => per_image_backward(&g, (x, w, dy), outer, dx, dw),
            Plan::Batch => batch_backward(&g, (x, w, dy), dx, dw),
        }
        Ok((CpuStorage::F32(out), Shape::from(nx + nw)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        super::profile::on_cuda("conv backward", s1, || {
            super::cuda::conv_backward(&self.g, self.need_dx, (s1, l1), (s2, l2), (s3, l3))
        })
    }
}

/// The backward with one GEMM per image (and group): image b's weight gradient goes to
/// its own block, and the blocks are summed in image order afterwards, so the result
/// does not depend on the thread count or on `outer`. `dx` is empty when not wanted.
fn per_image_backward(
    g: &Geom,
    (x, w, dy): (&[f32], &[f32], &[f32]),
    outer: bool,
    dx: &mut [f32],
    dw: &mut [f32],
) {
    let (rows, p, img, nw) = (g.rows(), g.cols(), g.image(), dw.len());
    let co = nw / g.group_rows();
    let need_dx = !dx.is_empty();
    // image b's weight gradient, written whole by its GEMMs below
    let mut parts: Vec<f32> = Vec::with_capacity(g.b * nw);
    let dxs: Vec<&mut [f32]> = if need_dx {
        dx.chunks_mut(img).collect()
    } else {
        (0..g.b).map(|_| <&mut [f32]>::default()).collect()
    };
    let image = |(b, (part, dxb)): (usize, (&mut [MaybeUninit<f32>], &mut [f32]))| {
        let gemms = Gemms::new(g, co, p, p, !outer);
        let cols = image_cols(g, &x[b * img..(b + 1) * img], !outer);
        let dy_b = dy[b * co * p..(b + 1) * co * p].as_ptr();
        // SAFETY: dy_b [co, p], the columns [rows, p], w [co, rg]; part [co, rg]; dxb
        // [rows, p] when pointwise, else the fresh dcols [rows, p].
        unsafe {
            gemms.weight_grad(dy_b, cols.as_ptr(), part.as_mut_ptr().cast());
            if !need_dx {
                return;
            }
            if g.pointwise() {
                gemms.cols_grad(w.as_ptr(), dy_b, dxb.as_mut_ptr());
            } else {
                let dcols = written(rows * p, |d| gemms.cols_grad(w.as_ptr(), dy_b, d));
                col2im_image(g, &dcols, dxb, !outer);
            }
        }
    };
    let items = parts.spare_capacity_mut()[..g.b * nw]
        .chunks_mut(nw)
        .zip(dxs);
    if outer {
        items
            .collect::<Vec<_>>()
            .into_par_iter()
            .enumerate()
            .for_each(image);
    } else {
        items.enumerate().for_each(image);
    }
    // SAFETY: each image's task wrote its whole block
    unsafe { parts.set_len(g.b * nw) };
    dw.par_chunks_mut(4096).enumerate().for_each(|(j, d)| {
        let o = j * 4096;
        d.copy_from_slice(&parts[o..o + d.len()]);
        for b in 1..g.b {
            for (a, v) in d.iter_mut().zip(&parts[b * nw + o..]) {
                *a += v;
            }
        }
    });
}

/// The backward with one GEMM (per group) over the batch's column matrix (small planes).
fn batch_backward(g: &Geom, (x, w, dy): (&[f32], &[f32], &[f32]), dx: &mut [f32], dw: &mut [f32]) {
    let (rows, p, bn) = (g.rows(), g.cols(), g.b * g.cols());
    let co = dw.len() / g.group_rows();
    let gemms = Gemms::new(g, co, bn, bn, true);
    let all = batch_cols(g, x);
    let dyt = nchw_to_cbn(dy, g.b, co, p);
    // SAFETY: dyt [co, bn], all [rows, bn], w [co, rg]; dw [co, rg] written whole, d
    // [rows, bn] fresh.
    unsafe { gemms.weight_grad(dyt.as_ptr(), all.as_ptr(), dw.as_mut_ptr()) };
    if dx.is_empty() {
        return;
    }
    drop(all);
    let d = unsafe { written(rows * bn, |d| gemms.cols_grad(w.as_ptr(), dyt.as_ptr(), d)) };
    if g.pointwise() {
        dx.copy_from_slice(&cbn_to_nchw(&d, g.b, rows, p));
    } else {
        col2im(g, &d, dx);
    }
}

/// How a convolution multiplies on the CPU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Precision {
    /// f32 products and sums.
    #[default]
    F32,
    /// Inputs and weights rounded to bf16, products summed in f32 (PyTorch's CPU
    /// autocast), on CPUs with AVX512-BF16 ([`super::bf16`]); inference only. Other
    /// devices ignore it (their models hold bf16 weights instead).
    Bf16,
}

/// 2-D convolution of NCHW `x` with `w` (`[Co, C/groups, k, k]`), square kernel,
/// `stride`, zero `padding`, no dilation. Same result as `x.conv2d(w, padding, stride, 1,
/// groups)`; on CPU with f32, our [`Conv`] op (see the module docs).
pub fn conv2d(
    x: &Tensor,
    w: &Tensor,
    stride: usize,
    padding: usize,
    groups: usize,
) -> Result<Tensor> {
    conv2d_in(x, w, stride, padding, groups, Precision::F32)
}

/// [`conv2d`] with the CPU products in `precision`: [`Precision::Bf16`] on a CPU without
/// AVX512-BF16 is an error that says so.
pub fn conv2d_in(
    x: &Tensor,
    w: &Tensor,
    stride: usize,
    padding: usize,
    groups: usize,
    precision: Precision,
) -> Result<Tensor> {
    let precision = if x.device().is_cpu() {
        precision
    } else {
        Precision::F32
    };
    if precision == Precision::Bf16 && !super::bf16::available() {
        return Err(crate::error::ModelError::Unsupported(
            "bf16 convolutions on the CPU need AVX512-BF16, which this CPU lacks".into(),
        ));
    }
    let (_, _, kh, kw) = w.dims4()?;
    // on CUDA our op takes bf16 (tensor-core GEMMs: a bf16 teacher, and mixed-precision
    // training, whose layers hand it bf16 weights) and grouped convolutions (inference:
    // one batched GEMM over the groups; gradients: the GEMMs group by group)
    let infer = super::on_cuda(x) && !x.track_op() && !w.track_op();
    let cuda_bf16 = super::on_cuda(x) && x.dtype() == DType::BF16 && w.dtype() == DType::BF16;
    let fast = (super::ours(x) || cuda_bf16) && kh == kw;
    if !fast {
        return Ok(x.conv2d(w, padding, stride, 1, groups)?);
    }
    let g = geometry(x, w, stride, padding, groups)?;
    let (x, w) = (x.contiguous()?, w.contiguous()?);
    Ok(if infer {
        x.apply_op2_no_bwd(&w, &Conv(g, precision, None))?
    } else {
        x.apply_op2(&w, Conv(g, precision, None))?
    })
}

/// The geometry of convolving `x` with `w` (`[Co, C/groups, k, k]`), refused where the
/// weight does not fit the input's channels in `groups` groups.
fn geometry(x: &Tensor, w: &Tensor, stride: usize, padding: usize, groups: usize) -> Result<Geom> {
    let (co, ci, k, _) = w.dims4()?;
    let g = Geom::new(x.dims(), k, stride, padding, groups)?;
    if g.c != ci * groups || co % groups != 0 {
        return Err(candle_core::Error::Msg(format!(
            "conv2d: input has {} channels, weight {:?} in {groups} groups",
            g.c,
            w.dims()
        ))
        .into());
    }
    Ok(g)
}

/// `relu?(conv2d(x, w) * scale[c] + shift[c])` with bf16 products ([`Precision::Bf16`]):
/// an eval-mode BatchNorm (+ReLU) folded into the convolution's store, the same floats
/// as [`conv2d_in`] followed by [`super::channel_affine`] without their second pass over
/// the output. `None` (the caller keeps the two ops) unless `x` and `w` are f32 on a CPU
/// with AVX512-BF16, `precision` is bf16 and neither tracks gradients.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_affine(
    x: &Tensor,
    w: &Tensor,
    stride: usize,
    padding: usize,
    groups: usize,
    precision: Precision,
    (scale, shift, relu): (Vec<f32>, Vec<f32>, bool),
) -> Result<Option<Tensor>> {
    let (co, _, kh, kw) = w.dims4()?;
    let eligible = precision == Precision::Bf16
        && super::bf16::available()
        && x.device().is_cpu()
        && x.dtype() == DType::F32
        && w.dtype() == DType::F32
        && !x.track_op()
        && !w.track_op()
        && kh == kw;
    if !eligible {
        return Ok(None);
    }
    let g = geometry(x, w, stride, padding, groups)?;
    if scale.len() != co || shift.len() != co {
        return Err(candle_core::Error::Msg(format!(
            "conv2d_affine: {co} output channels, {} scales and {} shifts",
            scale.len(),
            shift.len()
        ))
        .into());
    }
    let op = Conv(g, precision, Some(bf16::Affine { scale, shift, relu }));
    Ok(Some(
        x.contiguous()?.apply_op2_no_bwd(&w.contiguous()?, &op)?,
    ))
}
