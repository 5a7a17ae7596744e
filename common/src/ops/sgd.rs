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
    /// Momentum (0: plain SGD, and the buffer is not touched).
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

fn mut_f32<'a>(s: &'a mut CpuStorage, l: &Layout) -> candle_core::Result<&'a mut [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&mut v[a..b]),
        _ => candle_core::bail!("meal sgd: contiguous f32 only"),
    }
}

fn same_len(a: usize, b: usize, c: usize) -> candle_core::Result<()> {
    if a != b || a != c {
        candle_core::bail!("meal sgd: parameter, gradient and buffer sizes {a}, {b}, {c}");
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
        let (g, p) = (contiguous_f32(s2, l2)?, contiguous_f32(s3, l3)?);
        let buf = mut_f32(s1, l1)?;
        same_len(p.len(), g.len(), buf.len())?;
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
        let (g, buf) = (contiguous_f32(s2, l2)?, contiguous_f32(s3, l3)?);
        let p = mut_f32(s1, l1)?;
        same_len(p.len(), g.len(), buf.len())?;
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
                let d = if m == 0.0 {
                    g + *p * wd
                } else if nesterov {
                    (g + *p * wd) + b * m
                } else {
                    b
                };
                *p -= d * lr;
            }
        });
        Ok(())
    }
}

/// Whether [`sgd_step`] applies: CPU, f32, contiguous, same shapes.
pub fn sgd_fast(p: &Tensor, g: &Tensor, buf: Option<&Tensor>) -> bool {
    let ok = |t: &Tensor| {
        t.device().is_cpu()
            && t.dtype() == candle_core::DType::F32
            && t.is_contiguous()
            && t.shape() == p.shape()
    };
    ok(p) && ok(g) && buf.is_none_or(ok)
}

/// One SGD step in place on `p` (and on `buf`, which must be `Some` when momentum is
/// non-zero): the buffer update then the parameter update, one pass each. Callers check
/// [`sgd_fast`] first.
pub fn sgd_step(
    p: &Tensor,
    g: &Tensor,
    buf: Option<&Tensor>,
    step: SgdStep,
) -> crate::error::Result<()> {
    match buf {
        Some(b) if step.momentum != 0.0 => {
            b.inplace_op3(g, p, &BufUpdate(step))?;
            p.inplace_op3(g, b, &ParamUpdate(step))?;
        }
        _ => {
            let plain = SgdStep {
                momentum: 0.0,
                ..step
            };
            // the buffer operand is unused without momentum
            p.inplace_op3(g, g, &ParamUpdate(plain))?;
        }
    }
    Ok(())
}
