//! The in-place SGD update on CUDA (sgd.rs on CPU): one pass over the momentum buffer,
//! one over the parameter.

use candle_core::cuda_backend::cudarc::driver::{CudaViewMut, PushKernelArg};
use candle_core::cuda_backend::{CudaStorage, WrapErr};
use candle_core::Layout;

use super::{func, grid, view};
use crate::ops::SgdStep;

/// The updated tensor (in place) and the two it reads, all of one length.
fn operands<'a>(
    (s1, l1): (&'a mut CudaStorage, &Layout),
    (s2, l2): (&'a CudaStorage, &Layout),
    (s3, l3): (&'a CudaStorage, &Layout),
) -> candle_core::Result<(
    CudaViewMut<'a, f32>,
    candle_core::cuda_backend::cudarc::driver::CudaView<'a, f32>,
    candle_core::cuda_backend::cudarc::driver::CudaView<'a, f32>,
)> {
    let (b, c) = (view(s2, l2)?, view(s3, l3)?);
    let a = match l1.contiguous_offsets() {
        Some((i, j)) => s1.as_cuda_slice_mut::<f32>()?.slice_mut(i..j),
        None => candle_core::bail!("meal sgd: contiguous f32 only"),
    };
    crate::ops::sgd::same_len(a.len(), b.len(), c.len())?;
    Ok((a, b, c))
}

/// `buf = buf * momentum + (g + p * wd) * (1 - dampening)` over `(buf, g, p)`.
pub(crate) fn sgd_buffer(
    step: &SgdStep,
    buf: (&mut CudaStorage, &Layout),
    g: (&CudaStorage, &Layout),
    p: (&CudaStorage, &Layout),
) -> candle_core::Result<()> {
    let dev = buf.0.device.clone();
    let (mut buf, g, p) = operands(buf, g, p)?;
    let n = buf.len();
    if n == 0 {
        return Ok(());
    }
    let keep = 1.0 - step.dampening;
    let f = func(&dev, "meal_sgd_buffer")?;
    let stream = dev.cuda_stream();
    let mut l = stream.launch_builder(&f);
    l.arg(&mut buf).arg(&g).arg(&p).arg(&n);
    l.arg(&step.weight_decay).arg(&step.momentum).arg(&keep);
    // SAFETY: the three hold n values each (checked in operands).
    unsafe { l.launch(grid(n)?) }.w()?;
    Ok(())
}

/// `p -= lr * (nesterov ? (g + p * wd) + buf * momentum : buf)` over `(p, g, buf)`.
pub(crate) fn sgd_param(
    step: &SgdStep,
    p: (&mut CudaStorage, &Layout),
    g: (&CudaStorage, &Layout),
    buf: (&CudaStorage, &Layout),
) -> candle_core::Result<()> {
    let dev = p.0.device.clone();
    let (mut p, g, buf) = operands(p, g, buf)?;
    let n = p.len();
    if n == 0 {
        return Ok(());
    }
    let nesterov = step.nesterov as i32;
    let f = func(&dev, "meal_sgd_param")?;
    let stream = dev.cuda_stream();
    let mut l = stream.launch_builder(&f);
    l.arg(&mut p).arg(&g).arg(&buf).arg(&n);
    l.arg(&step.lr)
        .arg(&step.weight_decay)
        .arg(&step.momentum)
        .arg(&nesterov);
    // SAFETY: the three hold n values each (checked in operands).
    unsafe { l.launch(grid(n)?) }.w()?;
    Ok(())
}
