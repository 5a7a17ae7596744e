//! The loader's 8-bit crops normalised on the device (`ops::normalize_levels`): one
//! table lookup per value, so the GPU receives a quarter of the bytes of f32 crops and
//! computes exactly the floats the loader would have (the table is meal-data's
//! `Normalize::lut`).

use candle_core::cuda_backend::cudarc::driver::PushKernelArg;
use candle_core::cuda_backend::{CudaStorage, WrapErr};
use candle_core::{DType, Layout, Shape};
use half::bf16;

use super::{func, grid, view, view_of};

/// `lut[c][x]` over NCHW u8 `x` (3 channels), as f32 or bf16 (`out`).
pub(crate) fn normalize_levels(
    out: DType,
    (s1, l1): (&CudaStorage, &Layout),
    (s2, l2): (&CudaStorage, &Layout),
) -> candle_core::Result<(CudaStorage, Shape)> {
    let dev = s1.device.clone();
    let hw = match l1.dims() {
        [_, 3, h, w] => h * w,
        d => candle_core::bail!("normalize_levels: expected [B, 3, H, W] u8, got {d:?}"),
    };
    let (x, lut) = (view_of::<u8>(s1, l1)?, view(s2, l2)?);
    if lut.len() != 3 * 256 {
        candle_core::bail!(
            "normalize_levels: a table of {} values, need 768",
            lut.len()
        );
    }
    let n = x.len();
    let stream = dev.cuda_stream();
    let storage = match out {
        DType::F32 => {
            // SAFETY: written whole by the kernel
            let mut y = unsafe { dev.alloc::<f32>(n)? };
            if n > 0 {
                let f = func(&dev, "meal_levels_f32")?;
                let mut lb = stream.launch_builder(&f);
                lb.arg(&x).arg(&lut).arg(&mut y).arg(&n).arg(&hw);
                // SAFETY: x and y hold n values, the table 768.
                unsafe { lb.launch(grid(n)?) }.w()?;
            }
            CudaStorage::wrap_cuda_slice(y, dev.clone())
        }
        DType::BF16 => {
            // SAFETY: written whole by the kernel
            let mut y = unsafe { dev.alloc::<bf16>(n)? };
            if n > 0 {
                let f = func(&dev, "meal_levels_bf16")?;
                let mut lb = stream.launch_builder(&f);
                lb.arg(&x).arg(&lut).arg(&mut y).arg(&n).arg(&hw);
                // SAFETY: x and y hold n values, the table 768.
                unsafe { lb.launch(grid(n)?) }.w()?;
            }
            CudaStorage::wrap_cuda_slice(y, dev.clone())
        }
        d => candle_core::bail!("normalize_levels: to {d:?} (f32 or bf16)"),
    };
    Ok((storage, l1.shape().clone()))
}
