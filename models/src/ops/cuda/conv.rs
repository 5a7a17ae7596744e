//! Convolution on CUDA: the CPU op's batch plan (conv/mod.rs) with cuBLAS
//! GEMMs. Images go in chunks whose column matrix stays under [`CHUNK_ELEMS`]:
//!
//! - forward: `cols = im2col(x)` (skipped for 1x1 stride-1 unpadded convolutions, whose
//!   input is its own column matrix), then one strided-batched GEMM `y_j = w * cols_j`
//!   per chunk that writes NCHW directly (`colmajor::conv_forward_batched`, tested on
//!   the CPU);
//! - grouped forward (inference: SENet-154's teachers): `im2col` over all channels, one
//!   strided-batched GEMM over the groups into `[Co, nb*P]`, a layout swap to NCHW;
//! - backward: `dyt = swap(dy)`, then per group (a block of rows of each)
//!   `dw += dyt * cols^T`, `dcols = w^T * dyt`, and `dx = col2im(dcols)` (for a 1x1
//!   stride-1 unpadded convolution `dx_j = w^T * dy_j` instead: one strided-batched GEMM
//!   on the NCHW tensors, `colmajor::conv_backward_dx_pointwise`); f32, or bf16
//!   for mixed-precision training (the weight gradient summed over the chunks in f32
//!   and rounded once; `dcols` rounded to bf16 before `col2im` adds its entries in f32).
//!
//! The chunks run in image order and `dw` accumulates them in that order, so a result
//! does not depend on anything but the shapes. With `MEAL_CUDA_CONV=cudnn` the three
//! run through cuDNN instead (cudnn.rs), each one call over the whole batch.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::cublas::{CudaBlas, Gemm};
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView, CudaViewMut, PushKernelArg};
use candle_core::cuda_backend::{CudaDevice, CudaStorage, WrapErr};
use candle_core::{Layout, Shape};

use super::{elem_dtype, func, gemm, gemm_batched, gemm_into_f32, grid, ints, view_of, Elem};
use crate::ops::conv::cols::Geom;

/// Column-matrix elements per chunk of images (256 MB of f32; ResNet-50's first 3x3
/// stage at batch 256 would need 1.8 GB at once). The tests use small chunks, so that
/// their small convolutions run over several (and the weight gradient accumulates).
#[cfg(not(test))]
const CHUNK_ELEMS: usize = 1 << 26;
#[cfg(test)]
const CHUNK_ELEMS: usize = 1 << 12;

/// Images per chunk.
fn chunk(g: &Geom) -> usize {
    (CHUNK_ELEMS / (g.rows() * g.cols()).max(1)).clamp(1, g.b.max(1))
}

/// `im2col` of the `nb` images at `x` into `cols` (`[rows, nb*P]`).
fn im2col<T: Elem>(
    dev: &CudaDevice,
    g: &Geom,
    nb: usize,
    x: &CudaView<T>,
    cols: &mut CudaViewMut<T>,
) -> candle_core::Result<()> {
    let name = format!("meal_im2col{}", T::SUFFIX);
    cols_kernel(dev, &name, g, nb, x, cols, g.rows() * nb * g.cols())
}

/// `col2im` of `dcols` (`[rows, nb*P]`) into the `nb` images at `dx` (written whole).
fn col2im<T: Elem>(
    dev: &CudaDevice,
    g: &Geom,
    nb: usize,
    dcols: &CudaView<T>,
    dx: &mut CudaViewMut<T>,
) -> candle_core::Result<()> {
    let name = format!("meal_col2im{}", T::SUFFIX);
    cols_kernel(dev, &name, g, nb, dcols, dx, nb * g.image())
}

fn cols_kernel<T: Elem>(
    dev: &CudaDevice,
    name: &str,
    g: &Geom,
    nb: usize,
    src: &CudaView<T>,
    dst: &mut CudaViewMut<T>,
    n: usize,
) -> candle_core::Result<()> {
    let f = func(dev, name)?;
    let a = ints([nb, g.c, g.h, g.w, g.k, g.stride, g.pad, g.ho, g.wo])?;
    let stream = dev.cuda_stream();
    let mut b = stream.launch_builder(&f);
    b.arg(src).arg(dst);
    for v in &a {
        b.arg(v);
    }
    // SAFETY: src and dst hold the element counts the geometry gives (the callers'
    // slices), the kernel writes each of its n outputs once.
    unsafe { b.launch(grid(n)?) }.w()?;
    Ok(())
}

/// `dst[j][i][q] = src[i][j][q]` for `src` `[a, b, p]`.
pub(crate) fn swap01<T: Elem>(
    dev: &CudaDevice,
    src: &CudaView<T>,
    dst: &mut CudaViewMut<T>,
    (a, b, p): (usize, usize, usize),
) -> candle_core::Result<()> {
    let n = a * b * p;
    if n == 0 {
        return Ok(());
    }
    if src.len() < n || dst.len() < n {
        candle_core::bail!("meal swap01: [{a}, {b}, {p}] past its buffers");
    }
    let f = func(dev, &format!("meal_swap01{}", T::SUFFIX))?;
    let stream = dev.cuda_stream();
    let mut l = stream.launch_builder(&f);
    l.arg(src).arg(dst).arg(&a).arg(&b).arg(&p);
    // SAFETY: src and dst hold at least a*b*p elements (checked above).
    unsafe { l.launch(grid(n)?) }.w()?;
    Ok(())
}

/// The forward of `Conv` (conv/mod.rs) on CUDA: NCHW `y` `[B, Co, Ho, Wo]`, f32 or bf16
/// (bf16 products summed in f32 by cuBLAS, as PyTorch's autocast convolutions).
pub(crate) fn conv_forward(
    g: &Geom,
    x: (&CudaStorage, &Layout),
    w: (&CudaStorage, &Layout),
) -> candle_core::Result<(CudaStorage, Shape)> {
    let what = "meal conv2d (cuda): input, weight";
    let dt = elem_dtype(what, &[x.0.dtype(), w.0.dtype()])?;
    with_elem!(dt, what, |T| forward::<T>(g, x, w))
}

fn forward<T: Elem>(
    g: &Geom,
    (s1, l1): (&CudaStorage, &Layout),
    (s2, l2): (&CudaStorage, &Layout),
) -> candle_core::Result<(CudaStorage, Shape)>
where
    CudaBlas: Gemm<T>,
{
    let dev = s1.device.clone();
    let (x, w) = (view_of::<T>(s1, l1)?, view_of::<T>(s2, l2)?);
    let (co, rows, p) = (l2.dims()[0], g.rows(), g.cols());
    if !g.fits(co, w.len(), x.len()) {
        candle_core::bail!(
            "meal conv2d (cuda): weight {:?} for input {:?}",
            l2.dims(),
            l1.dims()
        );
    }
    let y = if rows == 0 {
        // no input channels: the sums are empty (cuBLAS refuses k = 0)
        dev.alloc_zeros::<T>(g.b * co * p)?
    } else {
        // SAFETY: written whole below (every chunk's GEMM writes its images' outputs)
        let mut y = unsafe { super::alloc_written::<T>(&dev, g.b * co * p)? };
        if g.b * co * p > 0 {
            // cuDNN when asked for (our path if it fails), else ours
            let by_cudnn = super::cudnn::takes::<T>(g, co, false)
                && super::cudnn::attempt::<T>(g, co, false, || {
                    super::cudnn::forward(&dev, g, co, &x, &w, &mut y.slice_mut(..))
                });
            if !by_cudnn {
                if g.groups > 1 || one_gemm(g) {
                    grouped(&dev, g, co, &x, &w, &mut y)?;
                } else {
                    ungrouped(&dev, g, co, &x, &w, &mut y)?;
                }
            }
        }
        y
    };
    Ok((
        CudaStorage::wrap_cuda_slice(y, dev),
        Shape::from((g.b, co, g.ho, g.wo)),
    ))
}

/// The forward of a one-group convolution into `y` (NCHW, written whole): per chunk of
/// images one strided-batched GEMM over `im2col`'s columns, or over the input itself
/// for a 1x1 stride-1 unpadded convolution.
fn ungrouped<T: Elem>(
    dev: &CudaDevice,
    g: &Geom,
    co: usize,
    x: &CudaView<T>,
    w: &CudaView<T>,
    y: &mut CudaSlice<T>,
) -> candle_core::Result<()>
where
    CudaBlas: Gemm<T>,
{
    let (rows, p, img) = (g.rows(), g.cols(), g.image());
    // a 1x1 stride-1 unpadded convolution reads its input as the column matrix
    let direct = g.pointwise();
    let nbmax = if direct { g.b } else { chunk(g) };
    let mut cols = if direct {
        None
    } else {
        // SAFETY: each chunk's im2col writes the part its GEMM reads
        Some(unsafe { super::alloc_written::<T>(dev, rows * nbmax * p)? })
    };
    for b0 in (0..g.b).step_by(nbmax) {
        let nb = nbmax.min(g.b - b0);
        let xb = x.slice(b0 * img..(b0 + nb) * img);
        let yb = b0 * co * p..(b0 + nb) * co * p;
        // one strided-batched GEMM writes the chunk's NCHW outputs (no layout swap)
        let call = super::super::colmajor::conv_forward_batched(co, rows, p, nb, direct);
        match cols.as_mut() {
            None => gemm_batched(dev, call, &xb, w, &mut y.slice_mut(yb))?,
            Some(cols) => {
                let nc = rows * nb * p;
                im2col(dev, g, nb, &xb, &mut cols.slice_mut(..nc))?;
                gemm_batched(dev, call, &cols.slice(..nc), w, &mut y.slice_mut(yb))?;
            }
        }
    }
    Ok(())
}

/// Whether a one-group forward runs as one GEMM over the chunk's images then a layout
/// swap ([`grouped`] with one group: the layout measured on an H200 at stop 19) instead
/// of the strided-batched GEMM per image: `MEAL_CUDA_ONE_GEMM_BELOW=P` for output planes
/// of fewer than P pixels (default 0: never). Per image, ResNet's 14x14 and 7x7 stages
/// are GEMMs of 196 and 49 rows, which fill GEMM tiles poorly and, in bf16, break cuBLAS's
/// 16-byte alignment; the device check times both (bench/gpu_check.sh) to set it.
fn one_gemm(g: &Geom) -> bool {
    g.cols() < one_gemm_below()
}

/// `MEAL_CUDA_ONE_GEMM_BELOW`, read once (0: never).
pub(crate) fn one_gemm_below() -> usize {
    static BELOW: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *BELOW.get_or_init(|| {
        std::env::var("MEAL_CUDA_ONE_GEMM_BELOW")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    })
}

/// The forward of a grouped convolution into `y` (NCHW, written whole): per chunk,
/// `im2col` over all channels, one strided-batched GEMM over the groups into the
/// channel-major `yt` (`colmajor::conv_forward_grouped`, tested on the CPU), then the
/// layout swap to NCHW.
fn grouped<T: Elem>(
    dev: &CudaDevice,
    g: &Geom,
    co: usize,
    x: &CudaView<T>,
    w: &CudaView<T>,
    y: &mut CudaSlice<T>,
) -> candle_core::Result<()>
where
    CudaBlas: Gemm<T>,
{
    let (rows, p, img) = (g.rows(), g.cols(), g.image());
    let (rg, cog) = (rows / g.groups, co / g.groups);
    let nbmax = chunk(g);
    // SAFETY: each chunk's im2col and GEMM write the parts they then read
    let mut cols = unsafe { super::alloc_written::<T>(dev, rows * nbmax * p)? };
    let mut yt = unsafe { super::alloc_written::<T>(dev, co * nbmax * p)? };
    for b0 in (0..g.b).step_by(nbmax) {
        let nb = nbmax.min(g.b - b0);
        let (nc, nt) = (rows * nb * p, co * nb * p);
        im2col(
            dev,
            g,
            nb,
            &x.slice(b0 * img..(b0 + nb) * img),
            &mut cols.slice_mut(..nc),
        )?;
        let call = super::super::colmajor::conv_forward_grouped(cog, rg, p, nb, g.groups);
        gemm_batched(dev, call, &cols.slice(..nc), w, &mut yt.slice_mut(..nt))?;
        let yb = b0 * co * p..(b0 + nb) * co * p;
        swap01(dev, &yt.slice(..nt), &mut y.slice_mut(yb), (co, nb, p))?;
    }
    Ok(())
}

/// The backward of `Conv` on CUDA from `(x, w, dy)`: `[dx..., dw...]` packed as the
/// CPU op packs them (`dw` alone when `!need_dx`), in their dtype (f32, or bf16).
pub(crate) fn conv_backward(
    g: &Geom,
    need_dx: bool,
    x: (&CudaStorage, &Layout),
    w: (&CudaStorage, &Layout),
    dy: (&CudaStorage, &Layout),
) -> candle_core::Result<(CudaStorage, Shape)> {
    let what = "meal conv2d backward (cuda): input, weight, gradient";
    let dt = elem_dtype(what, &[x.0.dtype(), w.0.dtype(), dy.0.dtype()])?;
    with_elem!(dt, what, |T| backward::<T>(g, need_dx, x, w, dy))
}

fn backward<T: Elem>(
    g: &Geom,
    need_dx: bool,
    (s1, l1): (&CudaStorage, &Layout),
    (s2, l2): (&CudaStorage, &Layout),
    (s3, l3): (&CudaStorage, &Layout),
) -> candle_core::Result<(CudaStorage, Shape)>
where
    CudaBlas: Gemm<T>,
{
    let dev = s1.device.clone();
    let (x, w, dy) = (
        view_of::<T>(s1, l1)?,
        view_of::<T>(s2, l2)?,
        view_of::<T>(s3, l3)?,
    );
    let (co, rows, p, img) = (l2.dims()[0], g.rows(), g.cols(), g.image());
    let (rg, cog) = (g.group_rows(), co / g.groups.max(1));
    if co % g.groups.max(1) != 0 || dy.len() != g.b * co * p || w.len() != co * rg {
        candle_core::bail!(
            "meal conv2d backward (cuda): gradient {:?}, weight {:?}, input {:?}",
            l3.dims(),
            l2.dims(),
            l1.dims()
        );
    }
    let nx = if need_dx { g.b * img } else { 0 };
    let nw = co * rg;
    if super::cudnn::takes::<T>(g, co, true) && g.b * co * p > 0 && rows > 0 {
        // SAFETY: both parts written whole by cuDNN (or dropped if it fails)
        let mut out = unsafe { super::alloc_written::<T>(&dev, nx + nw)? };
        let done = super::cudnn::attempt::<T>(g, co, true, || {
            let (mut dx, mut dw) = out.split_at_mut(nx);
            let dx = need_dx.then_some(&mut dx);
            if (nx * std::mem::size_of::<T>()).is_multiple_of(256) {
                return super::cudnn::backward(&dev, g, co, (&x, &w, &dy), dx, &mut dw);
            }
            // dw would start off the 256-byte alignment of a fresh allocation: cuDNN's
            // legacy API does not say what alignment its kernels assume, and a misaligned
            // access is a sticky error that ends the CUDA context, so dw goes to a
            // buffer of its own (a weight's size: small) and is copied in
            // SAFETY: written whole by cuDNN before it is copied
            let mut own = unsafe { super::alloc_written::<T>(&dev, nw)? };
            super::cudnn::backward(&dev, g, co, (&x, &w, &dy), dx, &mut own.slice_mut(..))?;
            dev.memcpy_dtod(&own, &mut dw)
        });
        if done {
            return Ok((CudaStorage::wrap_cuda_slice(out, dev), Shape::from(nx + nw)));
        }
    }
    // every chunk's GEMMs and col2im (or the pointwise GEMM) write dx and dw whole, so
    // their memory is not cleared first (a pass over an input-sized tensor per
    // convolution); without images, channels or pixels the sums are empty: zeros
    let written = g.b > 0 && rows > 0 && co > 0 && p > 0;
    // SAFETY: written whole below when `written`
    let mut out = unsafe { super::alloc_written_or_zeros::<T>(&dev, nx + nw, written)? };
    // a 1x1 stride-1 unpadded one-group convolution (most of ResNet-50's) takes its input
    // gradient in one strided-batched GEMM over the NCHW tensors after the loop: its
    // column matrix is a copy of the input, so `dcols` and `col2im` would be two more
    // passes over an input-sized tensor for the same values (bf16: the same rounding,
    // as col2im adds one entry per element here)
    let pointwise_dx = need_dx && g.pointwise() && g.groups == 1;
    let cols_dx = need_dx && !pointwise_dx;
    // the weight gradient accumulates over the chunks in f32, whatever T is
    // SAFETY: when `written`, the first chunk's GEMMs (beta 0) write each group's block
    // whole
    let mut dw = unsafe { super::alloc_written_or_zeros::<f32>(&dev, nw, written)? };
    let nbmax = chunk(g);
    // SAFETY: each chunk writes the part of these it then reads
    let mut cols = unsafe { super::alloc_written::<T>(&dev, rows * nbmax * p)? };
    let mut dyt = unsafe { super::alloc_written::<T>(&dev, co * nbmax * p)? };
    for b0 in (0..g.b).step_by(nbmax) {
        let nb = nbmax.min(g.b - b0);
        let (nc, nt) = (rows * nb * p, co * nb * p);
        im2col(
            &dev,
            g,
            nb,
            &x.slice(b0 * img..(b0 + nb) * img),
            &mut cols.slice_mut(..nc),
        )?;
        let dyb = b0 * co * p..(b0 + nb) * co * p;
        swap01(&dev, &dy.slice(dyb), &mut dyt.slice_mut(..nt), (nb, co, p))?;
        let beta = if b0 == 0 { 0.0 } else { 1.0 };
        // group i: rows i*cog.. of dyt and of w (its [cog, rg] block), rows i*rg.. of
        // the column matrix (its channels' rows); each a contiguous row block, so the
        // one-group GEMMs run on views of them
        let n = nb * p;
        for i in 0..g.groups {
            let (ty, tc) = (i * cog * n..(i + 1) * cog * n, i * rg * n..(i + 1) * rg * n);
            gemm_into_f32(
                &dev,
                (cog, rg, n),
                (&dyt.slice(ty.clone()), false),
                (&cols.slice(tc.clone()), true),
                beta,
                &mut dw.slice_mut(i * cog * rg..(i + 1) * cog * rg),
            )?;
            if cols_dx {
                // group i's column rows, read just above, now take their gradient
                gemm(
                    &dev,
                    (rg, n, cog),
                    (&w.slice(i * cog * rg..(i + 1) * cog * rg), true),
                    (&dyt.slice(ty), false),
                    T::ZERO,
                    &mut cols.slice_mut(tc),
                )?;
            }
        }
        if cols_dx {
            let dxb = b0 * img..(b0 + nb) * img;
            col2im(&dev, g, nb, &cols.slice(..nc), &mut out.slice_mut(dxb))?;
        }
    }
    if pointwise_dx && nx > 0 && co > 0 {
        let call = super::super::colmajor::conv_backward_dx_pointwise(g.c, co, p, g.b);
        gemm_batched(&dev, call, &dy, &w, &mut out.slice_mut(..nx))?;
    }
    T::store_f32(&dev, &dw.slice(..), &mut out.slice_mut(nx..nx + nw))?;
    Ok((CudaStorage::wrap_cuda_slice(out, dev), Shape::from(nx + nw)))
}
