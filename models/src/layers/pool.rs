//! The pools of the ResNet family: the stem's 3x3 max-pool, ResNet-D's 2x2 average pool
//! (timm's `avg_down`), and the global average pool before the classifier.

use candle_core::{Tensor, D};

use crate::error::Result;

/// `nn.MaxPool2d(3, stride=2, padding=1)`: our op where it applies
/// ([`crate::ops::max_pool2d`]: f32 on CPU and CUDA, bf16 on CUDA); elsewhere
/// built from differentiable ops (slices and `maximum`), because candle's
/// max-pool backward fails when kernel != stride. Padding is -inf, so padded positions
/// are never the maximum.
pub fn max_pool_3x3_s2_p1(x: &Tensor) -> Result<Tensor> {
    if let Some(y) = crate::ops::max_pool2d(x, 3, 2, 1)? {
        return Ok(y);
    }
    max_pool_3x3_s2_p1_generic(x)
}

/// The device-generic [`max_pool_3x3_s2_p1`] (two separable 1-D maxima).
pub fn max_pool_3x3_s2_p1_generic(x: &Tensor) -> Result<Tensor> {
    let x = pool_axis_3_2_1(x, 2)?;
    pool_axis_3_2_1(&x, 3)
}

/// Max over windows of 3, stride 2, padding 1 along `axis`.
fn pool_axis_3_2_1(x: &Tensor, axis: usize) -> Result<Tensor> {
    let n = x.dim(axis)?;
    let out = (n - 1) / 2 + 1; // floor((n + 2 - 3) / 2) + 1
    let total = 2 * out + 2; // padded length: xp[2o], xp[2o+1], xp[2o+2] for o < out
    let mut pad_shape = x.dims().to_vec();
    pad_shape[axis] = 1;
    let left =
        Tensor::full(f32::NEG_INFINITY, pad_shape.as_slice(), x.device())?.to_dtype(x.dtype())?;
    pad_shape[axis] = total - n - 1;
    let right =
        Tensor::full(f32::NEG_INFINITY, pad_shape.as_slice(), x.device())?.to_dtype(x.dtype())?;
    let xp = Tensor::cat(&[&left, x, &right], axis)?;
    let mut pairs = xp.dims().to_vec();
    pairs[axis] = out;
    pairs.insert(axis + 1, 2);
    let a = xp.narrow(axis, 0, 2 * out)?.reshape(pairs.as_slice())?;
    let b = xp.narrow(axis, 2, 2 * out)?.reshape(pairs.as_slice())?;
    let even = a.narrow(axis + 1, 0, 1)?.squeeze(axis + 1)?;
    let odd = a.narrow(axis + 1, 1, 1)?.squeeze(axis + 1)?;
    let next = b.narrow(axis + 1, 0, 1)?.squeeze(axis + 1)?;
    Ok(even.maximum(&odd)?.maximum(&next)?)
}

/// `nn.AvgPool2d(2, stride=2, ceil_mode=True, count_include_pad=False)`: odd sides get a
/// last window of one row/column, averaged over its real elements only.
pub fn avg_pool_2x2_ceil(x: &Tensor) -> Result<Tensor> {
    let (n, c, h, wd) = x.dims4()?;
    let (ho, wo) = (h.div_ceil(2), wd.div_ceil(2));
    let x = if h % 2 == 1 {
        x.pad_with_zeros(2, 0, 1)?
    } else {
        x.clone()
    };
    let x = if wd % 2 == 1 {
        x.pad_with_zeros(3, 0, 1)?
    } else {
        x
    };
    let sums = x.reshape((n, c, ho, 2, wo, 2))?.sum(5)?.sum(3)?;
    if h % 2 == 0 && wd % 2 == 0 {
        return Ok((sums * 0.25)?);
    }
    let count = |len: usize, out: usize| -> Vec<f32> {
        (0..out)
            .map(|i| if 2 * i + 1 < len { 2.0 } else { 1.0 })
            .collect()
    };
    let (rh, rw) = (count(h, ho), count(wd, wo));
    let inv: Vec<f32> = rh
        .iter()
        .flat_map(|a| rw.iter().map(move |b| 1.0 / (a * b)))
        .collect();
    let inv = Tensor::from_vec(inv, (1, 1, ho, wo), x.device())?.to_dtype(x.dtype())?;
    Ok(sums.broadcast_mul(&inv)?)
}

/// Global average pool: `[N, C, H, W]` to `[N, C]`.
pub fn global_avg_pool(x: &Tensor) -> Result<Tensor> {
    Ok(x.mean(D::Minus1)?.mean(D::Minus1)?)
}
