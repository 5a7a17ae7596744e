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
//! the batch. Grouped convolutions, non-f32 tensors and non-CPU devices keep candle's
//! `conv2d`.

mod cols;
#[cfg(test)]
mod tests;

use std::borrow::Cow;

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

use self::cols::{cbn_to_nchw, col2im, col2im_image, im2col, im2col_image, nchw_to_cbn, Geom};
use super::gemm::{sgemm, sgemm_new};
use super::{contiguous_f32, fill_chunks};
use crate::error::Result;

/// Output planes at least this large take one GEMM per image, written straight into
/// the NCHW output; smaller ones (late layers) one GEMM over the whole batch, whose
/// `[Co, B*Ho*Wo]` result is then scattered into NCHW (a per-image GEMM with few columns
/// runs far below the GEMM's peak).
const PER_IMAGE_MIN: usize = 784;

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
/// as PyTorch's convolution does, not the 9x-larger columns and a transposed copy.
struct Conv(Geom);

/// `[dx..., dw...]` of [`Conv`] from `(x, w, dy)`; `[dw...]` alone when the input needs
/// no gradient (the network's input image).
struct ConvBackward {
    g: Geom,
    need_dx: bool,
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
        let (rows, p, co, img) = (g.rows(), g.cols(), l2.dims()[0], g.image());
        let y = match Plan::of(&g) {
            Plan::PerImage { outer } => fill_chunks(g.b * co * p, co * p, outer, |b, yb| {
                let cols = image_cols(&g, &x[b * img..(b + 1) * img], !outer);
                // SAFETY: w is [co, rows], the columns [rows, p], image b's output block
                // yb [co, p] (written whole by the GEMM, which does not read it).
                unsafe {
                    sgemm(
                        (co, p, rows),
                        yb.as_mut_ptr().cast(),
                        (p, 1),
                        (w.as_ptr(), (rows, 1)),
                        (cols.as_ptr(), (p, 1)),
                        !outer,
                    )
                }
            }),
            Plan::Batch => {
                let (all, bn) = (batch_cols(&g, x), g.b * p);
                // SAFETY: w [co, rows] times all [rows, bn]
                let t = unsafe {
                    sgemm_new(
                        (co, bn, rows),
                        (w.as_ptr(), (rows, 1)),
                        (all.as_ptr(), (bn, 1)),
                        true,
                    )
                };
                cbn_to_nchw(&t, g.b, co, p)
            }
        };
        Ok((CpuStorage::F32(y), Shape::from((g.b, co, g.ho, g.wo))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        // the network's input image needs no gradient: skip its GEMM and col2im
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
        let (rows, p, co) = (g.rows(), g.cols(), l2.dims()[0]);
        if dy.len() != g.b * co * p {
            candle_core::bail!(
                "conv2d backward: gradient {:?} for output {co}x{p}",
                l3.dims()
            );
        }
        let nx = if self.need_dx { g.b * g.image() } else { 0 };
        // dx is accumulated into (col2im adds), so it starts at zero
        let mut out = vec![0f32; nx + co * rows];
        let (dx, dw) = out.split_at_mut(nx);
        match Plan::of(&g) {
            Plan::PerImage { outer } => per_image_backward(&g, (x, w, dy), outer, dx, dw),
            Plan::Batch => batch_backward(&g, (x, w, dy), dx, dw),
        }
        Ok((CpuStorage::F32(out), Shape::from(nx + co * rows)))
    }
}

/// The backward with one GEMM per image: image b's weight gradient goes to its own
/// `[Co, C*k*k]` block, and the blocks are summed in image order afterwards, so the
/// result does not depend on the thread count or on `outer`. `dx` is empty when not
/// wanted.
fn per_image_backward(
    g: &Geom,
    (x, w, dy): (&[f32], &[f32], &[f32]),
    outer: bool,
    dx: &mut [f32],
    dw: &mut [f32],
) {
    let (rows, p, img) = (g.rows(), g.cols(), g.image());
    let co = dw.len() / rows;
    let need_dx = !dx.is_empty();
    let mut parts = vec![0f32; g.b * co * rows];
    let dxs: Vec<&mut [f32]> = if need_dx {
        dx.chunks_mut(img).collect()
    } else {
        (0..g.b).map(|_| <&mut [f32]>::default()).collect()
    };
    let image = |(b, (part, dxb)): (usize, (&mut [f32], &mut [f32]))| {
        let inner = !outer;
        let cols = image_cols(g, &x[b * img..(b + 1) * img], inner);
        let dy_b = dy[b * co * p..(b + 1) * co * p].as_ptr();
        // SAFETY (all GEMMs): dy_b [co, p]; the columns [rows, p], read transposed as
        // [p, rows]; w [co, rows], read transposed; part [co, rows], dxb [rows, p] when
        // pointwise, the fresh dcols [rows, p].
        unsafe {
            sgemm(
                (co, rows, p),
                part.as_mut_ptr(),
                (rows, 1),
                (dy_b, (p, 1)),
                (cols.as_ptr(), (1, p)),
                inner,
            );
            if !need_dx {
                return;
            }
            let wt = (w.as_ptr(), (1, rows));
            if g.pointwise() {
                sgemm(
                    (rows, p, co),
                    dxb.as_mut_ptr(),
                    (p, 1),
                    wt,
                    (dy_b, (p, 1)),
                    inner,
                );
            } else {
                let dcols = sgemm_new((rows, p, co), wt, (dy_b, (p, 1)), inner);
                col2im_image(g, &dcols, dxb, inner);
            }
        }
    };
    let items = parts.chunks_mut(co * rows).zip(dxs);
    if outer {
        items
            .collect::<Vec<_>>()
            .into_par_iter()
            .enumerate()
            .for_each(image);
    } else {
        items.enumerate().for_each(image);
    }
    let cr = co * rows;
    dw.par_chunks_mut(4096).enumerate().for_each(|(j, d)| {
        let o = j * 4096;
        d.copy_from_slice(&parts[o..o + d.len()]);
        for b in 1..g.b {
            for (a, v) in d.iter_mut().zip(&parts[b * cr + o..]) {
                *a += v;
            }
        }
    });
}

/// The backward with one GEMM over the batch's column matrix (small planes).
fn batch_backward(g: &Geom, (x, w, dy): (&[f32], &[f32], &[f32]), dx: &mut [f32], dw: &mut [f32]) {
    let (rows, p, bn) = (g.rows(), g.cols(), g.b * g.cols());
    let co = dw.len() / rows;
    let all = batch_cols(g, x);
    let dyt = nchw_to_cbn(dy, g.b, co, p);
    // SAFETY: dyt [co, bn], all [rows, bn] read transposed, w [co, rows] read
    // transposed; dw [co, rows] is written whole.
    unsafe {
        sgemm(
            (co, rows, bn),
            dw.as_mut_ptr(),
            (rows, 1),
            (dyt.as_ptr(), (bn, 1)),
            (all.as_ptr(), (1, bn)),
            true,
        );
    }
    if dx.is_empty() {
        return;
    }
    drop(all);
    // SAFETY: w^T [rows, co] times dyt [co, bn]
    let d = unsafe {
        sgemm_new(
            (rows, bn, co),
            (w.as_ptr(), (1, rows)),
            (dyt.as_ptr(), (bn, 1)),
            true,
        )
    };
    if g.pointwise() {
        dx.copy_from_slice(&cbn_to_nchw(&d, g.b, rows, p));
    } else {
        col2im(g, &d, dx);
    }
}

/// 2-D convolution of NCHW `x` with `w` (`[Co, C/groups, k, k]`), square kernel,
/// `stride`, zero `padding`, no dilation. Same result as `x.conv2d(w, padding, stride, 1,
/// groups)`; on CPU with f32 and one group, our [`Conv`] op (see the module docs).
pub fn conv2d(
    x: &Tensor,
    w: &Tensor,
    stride: usize,
    padding: usize,
    groups: usize,
) -> Result<Tensor> {
    let (_, ci, kh, kw) = w.dims4()?;
    let fast =
        x.device().is_cpu() && x.dtype() == candle_core::DType::F32 && groups == 1 && kh == kw;
    if !fast {
        return Ok(x.conv2d(w, padding, stride, 1, groups)?);
    }
    let g = Geom::new(x.dims(), kh, stride, padding)?;
    if g.c != ci {
        return Err(candle_core::Error::Msg(format!(
            "conv2d: input has {} channels, weight expects {ci}",
            g.c
        ))
        .into());
    }
    Ok(x.contiguous()?.apply_op2(&w.contiguous()?, Conv(g))?)
}
