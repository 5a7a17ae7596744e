//! ReLU and the residual join + ReLU on CUDA, as relu.rs on CPU: one pass forward, and
//! the ReLU's gradient in one pass from the output, in f32 or bf16 (a teacher's
//! inference, mixed-precision training). candle's ReLU backward is four passes and
//! three allocations, and its residual join two ops.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::PushKernelArg;
use candle_core::cuda_backend::{CudaDevice, CudaStorage, WrapErr};
use candle_core::{Layout, Shape};

use super::{elem_dtype, func, grid, view_of, Elem};

/// `relu(x)` or, with `b`, `relu(x + b)`, elementwise over f32 or bf16 of one shape.
pub(crate) fn relu_forward(
    (s1, l1): (&CudaStorage, &Layout),
    b: Option<(&CudaStorage, &Layout)>,
) -> candle_core::Result<(CudaStorage, Shape)> {
    if let Some((_, l2)) = b {
        if l2.shape() != l1.shape() {
            candle_core::bail!("add_relu: {:?} and {:?}", l1.dims(), l2.dims());
        }
    }
    let y = with_elem!(s1.dtype(), "meal relu (cuda)", |T| forward::<T>(
        &s1.device,
        (s1, l1),
        b
    )?);
    Ok((y, l1.shape().clone()))
}

fn forward<T: Elem>(
    dev: &CudaDevice,
    (s1, l1): (&CudaStorage, &Layout),
    b: Option<(&CudaStorage, &Layout)>,
) -> candle_core::Result<CudaStorage> {
    let x = view_of::<T>(s1, l1)?;
    let n = x.len();
    // SAFETY: written whole by the kernel
    let mut y = unsafe { super::alloc_written::<T>(dev, n)? };
    if n > 0 {
        let stream = dev.cuda_stream();
        match b {
            None => {
                let f = func(dev, &format!("meal_relu{}", T::SUFFIX))?;
                let mut lb = stream.launch_builder(&f);
                lb.arg(&x).arg(&mut y).arg(&n);
                // SAFETY: x and y hold n values.
                unsafe { lb.launch(grid(n)?) }.w()?;
            }
            Some((s2, l2)) => {
                let bv = view_of::<T>(s2, l2)?;
                if bv.len() != n {
                    candle_core::bail!("add_relu: {n} and {} values", bv.len());
                }
                let f = func(dev, &format!("meal_add_relu{}", T::SUFFIX))?;
                let mut lb = stream.launch_builder(&f);
                lb.arg(&x).arg(&bv).arg(&mut y).arg(&n);
                // SAFETY: x, b and y hold n values.
                unsafe { lb.launch(grid(n)?) }.w()?;
            }
        }
    }
    Ok(CudaStorage::wrap_cuda_slice(y, dev.clone()))
}

/// `dx = dy` where the output `y` is positive, else 0 (f32, or bf16 for
/// mixed-precision training).
pub(crate) fn relu_backward(
    y: (&CudaStorage, &Layout),
    dy: (&CudaStorage, &Layout),
) -> candle_core::Result<(CudaStorage, Shape)> {
    let what = "meal relu backward (cuda): output, gradient";
    let dt = elem_dtype(what, &[y.0.dtype(), dy.0.dtype()])?;
    let dx = with_elem!(dt, what, |T| backward::<T>(y, dy)?);
    Ok((dx, y.1.shape().clone()))
}

fn backward<T: Elem>(
    (s1, l1): (&CudaStorage, &Layout),
    (s2, l2): (&CudaStorage, &Layout),
) -> candle_core::Result<CudaStorage> {
    let dev = &s1.device;
    let (y, dy) = (view_of::<T>(s1, l1)?, view_of::<T>(s2, l2)?);
    let n = y.len();
    if dy.len() != n {
        candle_core::bail!(
            "relu backward: gradient {:?} for {:?}",
            l2.dims(),
            l1.dims()
        );
    }
    // SAFETY: written whole by the kernel
    let mut dx = unsafe { super::alloc_written::<T>(dev, n)? };
    if n > 0 {
        let f = func(dev, &format!("meal_relu_grad{}", T::SUFFIX))?;
        let stream = dev.cuda_stream();
        let mut lb = stream.launch_builder(&f);
        lb.arg(&y).arg(&dy).arg(&mut dx).arg(&n);
        // SAFETY: y, dy and dx hold n values.
        unsafe { lb.launch(grid(n)?) }.w()?;
    }
    Ok(CudaStorage::wrap_cuda_slice(dx, dev.clone()))
}
