//! The loader's 8-bit crops normalised on the device (`ops::normalize_levels`): one
//! table lookup per value, so the GPU receives a quarter of the bytes of f32 crops and
//! computes exactly the floats the loader would have (the table is meal-data's
//! `Normalize::lut`).

use candle_core::cuda_backend::cudarc::driver::{CudaView, PushKernelArg};
use candle_core::cuda_backend::{CudaDevice, CudaStorage, WrapErr};
use candle_core::{DType, Layout, Shape};

use super::{func, grid, view, view_of, Elem};
use crate::ops::levels::plane;

/// `lut[c][x]` over NCHW u8 `x` (3 channels), as f32 or bf16 (`out`).
pub(crate) fn normalize_levels(
    out: DType,
    (s1, l1): (&CudaStorage, &Layout),
    (s2, l2): (&CudaStorage, &Layout),
) -> candle_core::Result<(CudaStorage, Shape)> {
    let (x, lut) = (view_of::<u8>(s1, l1)?, view(s2, l2)?);
    let hw = plane(l1, lut.len())?;
    let dev = &s1.device;
    let storage = with_elem!(out, "normalize_levels: to", |T| lookup::<T>(
        dev, &x, &lut, hw
    )?);
    Ok((storage, l1.shape().clone()))
}

/// One launch of `meal_levels{T::SUFFIX}` over the `n` values of `x`.
fn lookup<T: Elem>(
    dev: &CudaDevice,
    x: &CudaView<u8>,
    lut: &CudaView<f32>,
    hw: usize,
) -> candle_core::Result<CudaStorage> {
    let n = x.len();
    // SAFETY: written whole by the kernel
    let mut y = unsafe { super::alloc_written::<T>(dev, n)? };
    if n > 0 {
        let f = func(dev, &format!("meal_levels{}", T::SUFFIX))?;
        let stream = dev.cuda_stream();
        let mut lb = stream.launch_builder(&f);
        lb.arg(x).arg(lut).arg(&mut y).arg(&n).arg(&hw);
        // SAFETY: x and y hold n values, the table 768 (checked by `plane`).
        unsafe { lb.launch(grid(n)?) }.w()?;
    }
    Ok(CudaStorage::wrap_cuda_slice(y, dev.clone()))
}
