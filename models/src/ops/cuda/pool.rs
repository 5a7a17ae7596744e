//! Max-pool on CUDA, as pool.rs on CPU: the forward writes each window's first maximum;
//! the backward gathers, for each input position, the gradient of every window whose
//! first maximum it is (in window order, as the CPU op adds; no atomics).

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::PushKernelArg;
use candle_core::cuda_backend::{CudaStorage, WrapErr};
use candle_core::{Layout, Shape};

use super::{elem_dtype, func, grid, ints, view_of, Elem};

/// Kernel size, stride and padding.
pub(crate) type PoolGeom = (usize, usize, usize);

fn planes(l: &Layout) -> candle_core::Result<(usize, usize, usize)> {
    match l.dims() {
        [b, c, h, w] => Ok((b * c, *h, *w)),
        d => candle_core::bail!("max_pool2d: expected NCHW, got {d:?}"),
    }
}

fn out(n: usize, (k, stride, pad): PoolGeom) -> usize {
    (n + 2 * pad - k) / stride + 1
}

/// The forward of the max-pool on CUDA.
pub(crate) fn pool_forward(
    pg: PoolGeom,
    (s, l): (&CudaStorage, &Layout),
) -> candle_core::Result<(CudaStorage, Shape)> {
    let (np, h, w) = planes(l)?;
    let (ho, wo) = (out(h, pg), out(w, pg));
    let y = with_elem!(s.dtype(), "max_pool2d (cuda)", |T| forward::<T>(
        pg,
        (s, l),
        (np, h, w),
        (ho, wo)
    )?);
    let mut shape = l.dims().to_vec();
    shape[2] = ho;
    shape[3] = wo;
    Ok((y, Shape::from(shape)))
}

fn forward<T: Elem>(
    pg: PoolGeom,
    (s, l): (&CudaStorage, &Layout),
    (np, h, w): (usize, usize, usize),
    (ho, wo): (usize, usize),
) -> candle_core::Result<CudaStorage> {
    let dev = s.device.clone();
    let n = np * ho * wo;
    let x = view_of::<T>(s, l)?;
    // SAFETY: written whole by the kernel
    let mut y = unsafe { super::alloc_written::<T>(&dev, n)? };
    if n > 0 {
        let f = func(&dev, &format!("meal_maxpool_fwd{}", T::SUFFIX))?;
        let a = ints([h, w, ho, wo, pg.0, pg.1, pg.2])?;
        let stream = dev.cuda_stream();
        let mut lb = stream.launch_builder(&f);
        lb.arg(&x).arg(&mut y).arg(&np);
        for v in &a {
            lb.arg(v);
        }
        // SAFETY: x holds np*h*w values, y np*ho*wo.
        unsafe { lb.launch(grid(n)?) }.w()?;
    }
    Ok(CudaStorage::wrap_cuda_slice(y, dev))
}

/// `dx` of the max-pool on CUDA from `(x, dy)`, f32 or bf16 (mixed-precision training:
/// the gradients of a position summed in f32, rounded once).
pub(crate) fn pool_backward(
    pg: PoolGeom,
    x: (&CudaStorage, &Layout),
    dy: (&CudaStorage, &Layout),
) -> candle_core::Result<(CudaStorage, Shape)> {
    let what = "max_pool2d backward (cuda): input, gradient";
    let dt = elem_dtype(what, &[x.0.dtype(), dy.0.dtype()])?;
    let dx = with_elem!(dt, what, |T| backward::<T>(pg, x, dy)?);
    Ok((dx, Shape::from(x.1.dims())))
}

fn backward<T: Elem>(
    pg: PoolGeom,
    (s1, l1): (&CudaStorage, &Layout),
    (s2, l2): (&CudaStorage, &Layout),
) -> candle_core::Result<CudaStorage> {
    let dev = s1.device.clone();
    let (np, h, w) = planes(l1)?;
    let (ho, wo) = (out(h, pg), out(w, pg));
    if planes(l2)? != (np, ho, wo) {
        candle_core::bail!(
            "max_pool2d backward: gradient {:?} for input {:?}",
            l2.dims(),
            l1.dims()
        );
    }
    let (x, dy) = (view_of::<T>(s1, l1)?, view_of::<T>(s2, l2)?);
    let n = np * h * w;
    // SAFETY: written whole by the kernel
    let mut dx = unsafe { super::alloc_written::<T>(&dev, n)? };
    if n > 0 {
        let f = func(&dev, &format!("meal_maxpool_bwd{}", T::SUFFIX))?;
        let a = ints([h, w, ho, wo, pg.0, pg.1, pg.2])?;
        let stream = dev.cuda_stream();
        let mut lb = stream.launch_builder(&f);
        lb.arg(&x).arg(&dy).arg(&mut dx).arg(&np);
        for v in &a {
            lb.arg(v);
        }
        // SAFETY: x and dx hold np*h*w values, dy np*ho*wo.
        unsafe { lb.launch(grid(n)?) }.w()?;
    }
    Ok(CudaStorage::wrap_cuda_slice(dx, dev))
}
