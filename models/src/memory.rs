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

/// `model`'s activations per image at `size` x `size` input (on the CPU, or a GPU model's
/// twin there): eval
/// forwards of a [`PROBE_SIZE`] batch and of one at half that side, with the input
/// tracked; each tensor of the graph (producers first, so a view never stands for its
/// storage) grows as the side to the power of its axes that doubled between the two
/// probes: a feature map with the area, a partial pooling (one axis summed) with the
/// side, pooled features, logits and fixed axes (an avg-down pool's 2x2 windows) not at
/// all. Exact when `size` is a multiple of the stride of 32, a little low otherwise (its
/// ceiling divisions). The model's weights and running statistics are not changed.
pub fn activations(model: &ResNet, size: usize) -> Result<Activations> {
    let on_cpu = model
        .entries()
        .first()
        .is_none_or(|e| e.var.device().is_cpu());
    if !on_cpu {
        return twin_activations(model, size);
    }
    let probe = |side: usize| -> Result<Vec<(u64, Vec<usize>)>> {
        // in the model's dtype, as its inputs come (f16 teachers hold f16 weights)
        let x = Var::zeros((PROBE_BATCH, 3, side, side), model.dtype(), &Device::Cpu)?;
        let y = model.forward_t(x.as_tensor(), false)?;
        Ok(graph_tensors(&y, PROBE_BATCH))
    };
    let (half, full) = (probe(PROBE_SIZE / 2)?, probe(PROBE_SIZE)?);
    let side = size as f64 / PROBE_SIZE as f64;
    let (mut total, mut largest) = (0f64, 0f64);
    for (i, (bytes, dims)) in full.iter().enumerate() {
        let grows = match half.get(i) {
            // the same op in the half-size graph (the same network, the same order)
            Some((_, h)) if half.len() == full.len() && h.len() == dims.len() => {
                dims.iter().zip(h).filter(|(&d, &h)| d == 2 * h).count()
            }
            // (graphs that differ: every axis after the channels that is longer than 1)
            _ => dims.iter().skip(2).filter(|&&d| d > 1).count(),
        };
        let b = *bytes as f64 * side.powi(grows as i32) / PROBE_BATCH as f64;
        total += b;
        largest = largest.max(b);
    }
    Ok(Activations {
        total: total.round() as u64,
        largest: largest.round() as u64,
    })
}

/// [`activations`] of a model on a GPU: an f32 twin of its architecture is probed on the
/// CPU (only the shapes matter, the probe then takes no device memory, and a GPU
/// teacher's eval forward, fused in resnet/fused.rs, keeps no graph to walk), its bytes
/// scaled to the dtype the model computes in (under autocast the f32 parts are counted at
/// that dtype's size too: still a lower bound).
fn twin_activations(model: &ResNet, size: usize) -> Result<Activations> {
    let twin = ResNet::new(model.config(), &Device::Cpu, 0)?;
    let a = activations(&twin, size)?;
    let bytes = model.autocast().unwrap_or(model.dtype()).size_in_bytes() as u64;
    Ok(Activations {
        total: a.total * bytes / 4,
        largest: a.largest * bytes / 4,
    })
}

/// What an inference pass of `model` over `rows` crops at `size` x `size` holds at once
/// (a teacher's forward; an eval's): its input batch and three activations of the
/// largest size (a layer's input and output, and the residual block's identity, alive
/// together). With one, an eval at 1024 px of `demo_resnet10` (30 images) was counted
/// 1.3 GB and peaked at 3.0 GB resident; at 2048 px it passed an 8 GB `ulimit -v` and
/// aborted on an allocation. Three give 3.2 GB there.
pub fn inference_floor(model: &ResNet, size: usize, rows: usize) -> Result<u64> {
    let input = (3 * size * size * model.dtype().size_in_bytes()) as u64;
    let a = activations(model, size)?;
    Ok((a.largest.saturating_mul(3) + input).saturating_mul(rows as u64))
}

/// [`inference_floor`] of each teacher of `ens` at its own input size.
pub fn ensemble_floors(ens: &crate::ensemble::Ensemble, rows: usize) -> Result<Vec<u64>> {
    ens.teachers()
        .iter()
        .map(|t| inference_floor(&t.model, t.spec.size as usize, rows))
        .collect()
}

/// The tensors of `y`'s autograd graph whose leading dimension is `batch`, each storage
/// once, by the tensor that made it (the graph walked from the input: views, such as a
/// broadcast of SE's channel weights or an avg-down pool's windows, come after it and
/// share its storage): bytes and dims.
fn graph_tensors(y: &Tensor, batch: usize) -> Vec<(u64, Vec<usize>)> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    // sorted_nodes lists consumers before what they consume
    for t in y.sorted_nodes().into_iter().rev() {
        if t.dims().first() != Some(&batch) {
            continue;
        }
        let (key, len) = {
            let (storage, _) = t.storage_and_layout();
            (std::ptr::from_ref(&*storage).addr(), storage_len(&storage))
        };
        if seen.insert(key) {
            // the buffer's own length: a broadcast view spans more elements than it holds
            let bytes = (len.unwrap_or(t.elem_count()) * t.dtype().size_in_bytes()) as u64;
            out.push((bytes, t.dims().to_vec()));
        }
    }
    out
}

/// Elements in a CPU buffer of the dtypes networks compute in (None for others).
fn storage_len(s: &candle_core::Storage) -> Option<usize> {
    use candle_core::{CpuStorage as C, Storage};
    match s {
        Storage::Cpu(C::F32(v)) => Some(v.len()),
        Storage::Cpu(C::BF16(v)) => Some(v.len()),
        Storage::Cpu(C::F16(v)) => Some(v.len()),
        Storage::Cpu(C::F64(v)) => Some(v.len()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::DType;

    /// Against the architectures' definitions: ResNet-50's largest activations are the
    /// stem's 64 channels at stride 2 and the first stage's 256 at stride 4, both
    /// 16 x 224^2 values per image; SENet-154's deep stem ends in 128 channels at stride
    /// 2 (32 x 224^2); ResNet-50-D's too (its 64 at stride 2 are 16 x 224^2, the
    /// avg-down pools' windows are views of their input, not 4-D maps to scale twice).
    #[test]
    fn largest_activations_follow_the_architecture() {
        for (arch, values_per_pixel) in [("resnet50", 16), ("senet154", 32), ("resnet50d", 16)] {
            let m = ResNet::from_preset(arch, 10, &Device::Cpu, 0).unwrap();
            let a = activations(&m, 224).unwrap();
            assert_eq!(a.largest, 4 * values_per_pixel * 224 * 224, "{arch}");
            assert!(a.total > 10 * a.largest, "{arch}: {a:?}");
        }
    }

    /// The figure scaled from the probes equals the buffers of a forward's graph at the
    /// size itself, each counted once at its own length, for plain, avg-down (2x2
    /// pooling windows, a view of the block's input) and SE (channel weights broadcast
    /// over the map: a view far larger than its buffer) networks.
    #[test]
    fn the_scaled_figure_equals_a_forward_at_the_size() {
        for arch in ["demo_resnet10", "resnet50d", "seresnet50"] {
            let m = ResNet::from_preset(arch, 10, &Device::Cpu, 0).unwrap();
            for size in [128, 160] {
                let x = Var::zeros((PROBE_BATCH, 3, size, size), DType::F32, &Device::Cpu).unwrap();
                let y = m.forward_t(x.as_tensor(), false).unwrap();
                // each buffer once at its own length, whatever view of it comes first
                let mut buffers = std::collections::HashMap::new();
                for t in y.sorted_nodes() {
                    if t.dims()[0] == PROBE_BATCH {
                        let (st, _) = t.storage_and_layout();
                        let len = storage_len(&st).unwrap();
                        buffers.insert(std::ptr::from_ref(&*st).addr(), 4 * len as u64);
                    }
                }
                let total: u64 = buffers.values().sum();
                let largest = *buffers.values().max().unwrap();
                let a = activations(&m, size).unwrap();
                let per = |b: u64| b as f64 / PROBE_BATCH as f64;
                assert!(
                    (a.total as f64 - per(total)).abs() <= 1.0
                        && (a.largest as f64 - per(largest)).abs() <= 1.0,
                    "{arch} at {size}: {a:?} vs {} / {}",
                    per(total),
                    per(largest)
                );
            }
        }
        let m = ResNet::from_preset("demo_resnet10", 10, &Device::Cpu, 0).unwrap();
        let a = activations(&m, 128).unwrap();
        assert_eq!(a.times(2).total, 2 * a.total);
    }

    /// The twin a GPU model is measured as has the model's own graph: the same figures
    /// for plain, avg-down and SE networks built from their presets; at half the bytes
    /// under bf16 autocast.
    #[test]
    fn the_twin_of_a_model_measures_as_the_model() {
        for arch in ["demo_resnet10", "resnet50d", "seresnet50"] {
            let mut m = ResNet::from_preset(arch, 10, &Device::Cpu, 0).unwrap();
            let a = activations(&m, 96).unwrap();
            assert_eq!(twin_activations(&m, 96).unwrap(), a, "{arch}");
            m.set_autocast(Some(DType::BF16));
            let half = twin_activations(&m, 96).unwrap();
            assert_eq!((half.total, half.largest), (a.total / 2, a.largest / 2));
        }
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
