//! The SGD update in place, one pass per tensor: candle's ops made it seven (weight
//! decay, momentum, update), each allocating a parameter-sized tensor, ~4% of a ResNet-50
//! step. Same operation order as `torch.optim.SGD` (and as the generic path in
//! optim.rs): `d = g + wd * p`, `buf = momentum * buf + (1 - dampening) * d`,
//! `d = nesterov ? d + momentum * buf : buf`, `p = p - lr * d`.

use candle_core::{CpuStorage, InplaceOp3, Layout, Tensor};
use rayon::prelude::*;

use super::contiguous_f32;

/// The update's constants, in f32 as candle's scalar ops apply them.
#[derive(Clone, Copy, Debug)]
pub struct SgdStep {
    /// Learning rate.
    pub lr: f32,
    /// Weight decay (L2 added to the gradient).
    pub weight_decay: f32,
    /// Momentum (non-zero: without momentum there is no buffer, and the generic path
    /// in optim.rs runs).
    pub momentum: f32,
    /// Dampening of the gradient in the buffer.
    pub dampening: f32,
    /// Nesterov momentum.
    pub nesterov: bool,
}

/// `buf = momentum * buf + (1 - dampening) * (g + wd * p)`, in place on `buf`.
struct BufUpdate(SgdStep);

/// `p = p - lr * d`, in place on `p`, with `d` from `g`, `p` and the updated `buf`.
struct ParamUpdate(SgdStep);

const CHUNK: usize = 1 << 14;

/// The tensor written in place and the two read, as contiguous f32 slices of one length.
fn operands<'a>(
    (s1, l1): (&'a mut CpuStorage, &Layout),
    (s2, l2): (&'a CpuStorage, &Layout),
    (s3, l3): (&'a CpuStorage, &Layout),
) -> candle_core::Result<(&'a mut [f32], &'a [f32], &'a [f32])> {
    let (b, c) = (contiguous_f32(s2, l2)?, contiguous_f32(s3, l3)?);
    let a = match (s1, l1.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((i, j))) => &mut v[i..j],
        _ => candle_core::bail!("meal sgd: contiguous f32 only"),
    };
    same_len(a.len(), b.len(), c.len())?;
    Ok((a, b, c))
}

/// The three tensors of an SGD update (CPU or CUDA) hold one number of values.
pub(super) fn same_len(a: usize, b: usize, c: usize) -> candle_core::Result<()> {
    if a != b || a != c {
        candle_core::bail!("meal sgd: tensor sizes {a}, {b}, {c} differ");
    }
    Ok(())
}

impl InplaceOp3 for BufUpdate {
    fn name(&self) -> &'static str {
        "meal-sgd-buffer"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<()> {
        let (buf, g, p) = operands((s1, l1), (s2, l2), (s3, l3))?;
        let SgdStep {
            weight_decay: wd,
            momentum: m,
            dampening,
            ..
        } = self.0;
        let keep = 1.0 - dampening;
        buf.par_chunks_mut(CHUNK).enumerate().for_each(|(i, b)| {
            let o = i * CHUNK;
            for ((b, &g), &p) in b.iter_mut().zip(&g[o..]).zip(&p[o..]) {
                let d = g + p * wd;
                *b = *b * m + d * keep;
            }
        });
        Ok(())
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &mut candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> candle_core::Result<()> {
        let dev = candle_core::backend::BackendStorage::device(&*s1).clone();
        super::profile::on_device("sgd", &dev, || {
            super::cuda::sgd_buffer(&self.0, (s1, l1), (s2, l2), (s3, l3))
        })
    }
}

impl InplaceOp3 for ParamUpdate {
    fn name(&self) -> &'static str {
        "meal-sgd-param"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<()> {
        let (p, g, buf) = operands((s1, l1), (s2, l2), (s3, l3))?;
        let SgdStep {
            lr,
            weight_decay: wd,
            momentum: m,
            nesterov,
            ..
        } = self.0;
        p.par_chunks_mut(CHUNK).enumerate().for_each(|(i, p)| {
            let o = i * CHUNK;
            for ((p, &g), &b) in p.iter_mut().zip(&g[o..]).zip(&buf[o..]) {
                let d = if nesterov { (g + *p * wd) + b * m } else { b };
                *p -= d * lr;
            }
        });
        Ok(())
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &mut candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> candle_core::Result<()> {
        let dev = candle_core::backend::BackendStorage::device(&*s1).clone();
        super::profile::on_device("sgd", &dev, || {
            super::cuda::sgd_param(&self.0, (s1, l1), (s2, l2), (s3, l3))
        })
    }
}

/// Whether [`sgd_step`] applies: CPU, f32, contiguous, one shape.
pub fn sgd_fast(p: &Tensor, g: &Tensor, buf: &Tensor) -> bool {
    let ok = |t: &Tensor| {
        super::ours(t)
            && t.device().same_device(p.device())
            && t.is_contiguous()
            && t.shape() == p.shape()
    };
    ok(p) && ok(g) && ok(buf)
}

/// One SGD step with momentum in place on `p` and its buffer `buf`: the buffer update,
/// then the parameter update, one pass each. Callers check [`sgd_fast`] first.
pub fn sgd_step(p: &Tensor, g: &Tensor, buf: &Tensor, step: SgdStep) -> crate::error::Result<()> {
    buf.inplace_op3(g, p, &BufUpdate(step))?;
    p.inplace_op3(g, buf, &ParamUpdate(step))?;
    Ok(())
}
