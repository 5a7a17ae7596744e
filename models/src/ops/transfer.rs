//! Copies between the host and the device the network runs on. On a GPU they go through
//! pinned buffers (cuda/pinned.rs), so that neither direction makes the host wait for
//! work queued before it; elsewhere they are candle's plain copies.

use candle_core::{Device, Shape, Tensor};

use crate::error::Result;

/// 8-bit crops `v` as a u8 tensor of `shape` on `dev`. On a GPU the copy is queued
/// behind the work already there and this returns without waiting for that work
/// (`MEAL_CUDA_PINNED=0`: a pageable copy, as `Tensor::from_slice`). Elsewhere
/// `Tensor::from_slice`.
pub fn upload_levels(v: &[u8], shape: impl Into<Shape>, dev: &Device) -> Result<Tensor> {
    let shape = shape.into();
    #[cfg(feature = "cuda")]
    if let Device::Cuda(d) = dev {
        return Ok(super::cuda::upload_u8(v, shape, d)?);
    }
    Ok(Tensor::from_slice(v, shape, dev)?)
}

/// A tensor's f32 values on their way to the host ([`readback_f32`]).
pub struct Readback(Inner);

enum Inner {
    Done(Vec<f32>),
    /// On a GPU without the pinned path: read at [`Readback::wait`], so that the work
    /// queued meanwhile is not waited for at submit.
    Later(Tensor),
    #[cfg(feature = "cuda")]
    Queued(super::cuda::Pending),
}

impl Readback {
    /// The values (flattened), once the copy and the device work before it are done.
    pub fn wait(self) -> Result<Vec<f32>> {
        match self.0 {
            Inner::Done(v) => Ok(v),
            Inner::Later(t) => Ok(t.flatten_all()?.to_vec1::<f32>()?),
            #[cfg(feature = "cuda")]
            Inner::Queued(p) => Ok(p.wait()?),
        }
    }
}

/// Starts reading f32 `t`'s values (flattened) back to the host. On a GPU the copy is
/// queued right behind the work queued so far and this returns at once, so work queued
/// later (the next batch) does not delay [`Readback::wait`] (without pinned copies, or
/// for a non-contiguous tensor, the values are read at `wait`); on the CPU they are read
/// here.
pub fn readback_f32(t: &Tensor) -> Result<Readback> {
    #[cfg(feature = "cuda")]
    if let Some(p) = super::cuda::readback_f32(t)? {
        return Ok(Readback(Inner::Queued(p)));
    }
    if !t.device().is_cpu() {
        // pinned copies off (MEAL_CUDA_PINNED=0, no pinned memory) or a non-contiguous
        // tensor: read it at wait, as before the pinned path
        return Ok(Readback(Inner::Later(t.clone())));
    }
    Ok(Readback(Inner::Done(t.flatten_all()?.to_vec1::<f32>()?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readback_and_upload_on_the_cpu_are_plain_copies() {
        let dev = Device::Cpu;
        // a transposed (non-contiguous) tensor comes back in its logical order
        let t = Tensor::arange(0f32, 6.0, &dev)
            .unwrap()
            .reshape((2, 3))
            .unwrap();
        let tt = t.t().unwrap();
        let got = readback_f32(&tt).unwrap().wait().unwrap();
        assert_eq!(got, vec![0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
        let up = upload_levels(&[1u8, 2, 3, 4, 5, 6], (1, 1, 2, 3), &dev).unwrap();
        assert_eq!(up.dims(), &[1, 1, 2, 3]);
        assert_eq!(
            up.flatten_all().unwrap().to_vec1::<u8>().unwrap(),
            vec![1, 2, 3, 4, 5, 6]
        );
    }
}
