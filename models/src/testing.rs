//! Helpers of this crate's tests.

use candle_core::{DType, Device, Tensor};

/// The values of `t`, on any device and of any float dtype, as host f32 in row-major
/// order.
pub(crate) fn values(t: &Tensor) -> Vec<f32> {
    t.to_device(&Device::Cpu)
        .and_then(|t| t.to_dtype(DType::F32))
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<f32>())
        .expect("tensor to host")
}

/// The cosine of the angle between `a` and `b` as flat vectors, summed in f64 (0 where
/// either is zero): how well a gradient computed in lower precision keeps the
/// direction of its f32 reference.
pub(crate) fn cosine(a: &Tensor, b: &Tensor) -> f64 {
    let (a, b) = (values(a), values(b));
    let dot = |x: &[f32], y: &[f32]| {
        x.iter()
            .zip(y)
            .map(|(p, q)| *p as f64 * *q as f64)
            .sum::<f64>()
    };
    dot(&a, &b) / (dot(&a, &a) * dot(&b, &b)).sqrt().max(1e-30)
}
