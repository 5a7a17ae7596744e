//! Fast ops where stock candle is slow or broken on CPU (shared/REFERENCE.md §5).
//!
//! - [`conv2d`] (conv.rs): im2col + GEMM, with col2im as the input gradient.
//! - [`batch_norm_train`] (bn.rs): fused train-mode BatchNorm, forward and backward.
//! - [`max_pool2d`] (pool.rs): max-pool with padding and kernel != stride, whose
//!   backward routes each gradient to its window's first maximum.
//! - [`relu`] (relu.rs): ReLU whose backward is one pass over the output.
//!
//! Each falls back to candle's generic ops off CPU or for non-f32 tensors.

mod bn;
mod conv;
mod pool;
mod relu;

pub use bn::{batch_norm_train, BnOut, BnStats};
pub use conv::conv2d;
pub use pool::max_pool2d;
pub use relu::relu;

use candle_core::{CpuStorage, Layout};

pub(crate) fn contiguous_f32<'a>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&v[a..b]),
        (CpuStorage::F32(_), None) => candle_core::bail!("meal op: non-contiguous input"),
        _ => candle_core::bail!("meal op: f32 only"),
    }
}
