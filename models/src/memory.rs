//! How much memory a batch needs, at the least: a model's activations measured on its own
//! autograd graph at a small probe size and scaled to the size asked for. A lower bound
//! (im2col scratch, gradients, the optimiser and allocator slack come on top), so a
//! caller can refuse a batch that cannot fit before it is tried, instead of being killed
//! by the kernel's out-of-memory killer half a minute into the first step.

use std::collections::HashSet;

use candle_core::{Device, Tensor, Var};

use crate::error::Result;
use crate::ResNet;

/// Side of the probe's input: small, and a multiple of the network's stride of 32.
pub const PROBE_SIZE: usize = 64;
/// Images in the probe batch. Only graph nodes with this leading dimension count as
/// activations (tensors made from the weights do not grow with the batch); 3 is no
/// channel count of a layer's weights in these networks.
const PROBE_BATCH: usize = 3;

/// A network's activations per image at one input size, in bytes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Activations {
    /// Every activation of one forward (what a training step keeps for its backward,
    /// before BatchNorm's and the loss's own saved tensors).
    pub total: u64,
    /// The largest single activation (an inference pass holds at least it).
    pub largest: u64,
}

impl Activations {
    /// Both figures for `images` images.
    pub fn times(self, images: usize) -> Activations {
        Activations {
            total: self.total.saturating_mul(images as u64),
            largest: self.largest.saturating_mul(images as u64),
        }
    }
}

/// `model`'s activations per image at `size` x `size` input (a model on the CPU): one
/// eval forward of a [`PROBE_SIZE`] batch with the input tracked, its graph's activations
/// summed over distinct storages, scaled by area. An activation's size is the input
/// area over its stride squared, times its channels: exact when `size` is a multiple of
/// the stride of 32, a little low otherwise (its ceiling division). The model's weights
/// and running statistics are not changed.
pub fn activations(model: &ResNet, size: usize) -> Result<Activations> {
    // in the model's dtype, as its inputs come (f16 teachers hold f16 weights)
    let x = Var::zeros(
        (PROBE_BATCH, 3, PROBE_SIZE, PROBE_SIZE),
        model.dtype(),
        &Device::Cpu,
    )?;
    let y = model.forward_t(x.as_tensor(), false)?;
    let side = size as f64 / PROBE_SIZE as f64;
    let (mut total, mut largest) = (0f64, 0f64);
    for (bytes, spatial) in graph_tensors(&y, PROBE_BATCH) {
        // a feature map grows with the area, a partial pooling (one axis summed) with
        // the side, pooled features and logits not at all
        let b = bytes as f64 * side.powi(spatial) / PROBE_BATCH as f64;
        total += b;
        largest = largest.max(b);
    }
    Ok(Activations {
        total: total.round() as u64,
        largest: largest.round() as u64,
    })
}

/// The tensors of `y`'s autograd graph whose leading dimension is `batch`, each storage
/// once (views share their input's): bytes, and how many of the axes after the channel
/// axis are spatial (longer than 1).
fn graph_tensors(y: &Tensor, batch: usize) -> Vec<(u64, i32)> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for t in y.sorted_nodes() {
        if t.dims().first() != Some(&batch) {
            continue;
        }
        let key = {
            let (storage, _) = t.storage_and_layout();
            std::ptr::from_ref(&*storage).addr()
        };
        if seen.insert(key) {
            let bytes = (t.elem_count() * t.dtype().size_in_bytes()) as u64;
            let spatial = t.dims().iter().skip(2).filter(|&&d| d > 1).count() as i32;
            out.push((bytes, spatial));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::DType;

    /// Against the architectures' definitions: ResNet-50's largest activations are the
    /// stem's 64 channels at stride 2 and the first stage's 256 at stride 4, both
    /// 16 x 224^2 / 1 values per image; SENet-154's deep stem ends in 128 channels at
    /// stride 2 (32 x 224^2 / 1 values). And the scaling: the figure scaled from the probe
    /// equals a probe at the size itself.
    #[test]
    fn largest_activations_follow_the_architecture_and_scale_by_area() {
        for (arch, values_per_pixel) in [("resnet50", 16), ("senet154", 32)] {
            let m = ResNet::from_preset(arch, 10, &Device::Cpu, 0).unwrap();
            let a = activations(&m, 224).unwrap();
            assert_eq!(a.largest, 4 * values_per_pixel * 224 * 224, "{arch}");
            assert!(a.total > 10 * a.largest, "{arch}: {a:?}");
        }
        let m = ResNet::from_preset("demo_resnet10", 10, &Device::Cpu, 0).unwrap();
        let x = Var::zeros((PROBE_BATCH, 3, 128, 128), DType::F32, &Device::Cpu).unwrap();
        let y = m.forward_t(x.as_tensor(), false).unwrap();
        let g = graph_tensors(&y, PROBE_BATCH);
        assert!(
            g.iter().any(|&(_, s)| s == 0) && g.iter().any(|&(_, s)| s == 1),
            "logits and partial poolings: {g:?}"
        );
        let total: u64 = g.iter().map(|&(b, _)| b).sum();
        let largest = g.iter().map(|&(b, _)| b).max().unwrap();
        let a = activations(&m, 128).unwrap();
        assert_eq!(
            (a.total, a.largest),
            (total / PROBE_BATCH as u64, largest / PROBE_BATCH as u64)
        );
        assert_eq!(a.times(2).total, 2 * a.total);
    }

    /// A CPU bf16 teacher (bf16 products in its convolutions, f32 tensors) holds the
    /// same activations as in f32: its ops are seen by the probe too. Where the CPU
    /// lacks AVX512-BF16 there is no such teacher: building one is refused.
    #[test]
    fn a_bf16_teacher_is_measured_as_its_f32_twin() {
        let bf16 = ResNet::from_preset_as("resnet50", 10, &Device::Cpu, DType::BF16);
        if !crate::ops::bf16::available() {
            let e = bf16.err().expect("refused without AVX512-BF16").to_string();
            assert!(e.contains("AVX512-BF16"), "{e}");
            return;
        }
        let bf16 = bf16.unwrap();
        let f32 = ResNet::from_preset_as("resnet50", 10, &Device::Cpu, DType::F32).unwrap();
        for m in [&f32, &bf16] {
            m.freeze_batch_norms().unwrap();
        }
        let (a, b) = (
            activations(&f32, 224).unwrap(),
            activations(&bf16, 224).unwrap(),
        );
        assert_eq!(a.largest, 4 * 16 * 224 * 224);
        assert_eq!(a, b);
    }
}
