//! The network's tests: train and eval forwards, weights round trips, presets.

use super::*;
use crate::testing::{cosine, values};

fn bits(t: &Tensor) -> Vec<u32> {
    let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    v.iter().map(|v| v.to_bits()).collect()
}

/// `max|a - b| / max|b|`.
fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
    let (a, b) = (values(a), values(b));
    let scale = b.iter().fold(f32::MIN_POSITIVE, |m, v| m.max(v.abs()));
    let worst = a
        .iter()
        .zip(&b)
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    worst / scale
}

/// Mixed precision (`set_autocast`) wires the network as PyTorch's autocast: half
/// precision activations, f32 logits and f32 gradients for the f32 weights, running
/// statistics updated; its logits and gradients follow the f32 network's within
/// half precision. Here in f16 through candle's generic ops (candle's CPU matmul has
/// no bf16); the layers' wiring is the same for bf16, which runs our ops on a GPU
/// (ops/cuda/tests/).
#[test]
fn mixed_precision_follows_the_f32_network() {
    use candle_core::DType;
    let dev = Device::Cpu;
    // fixed inputs (candle's CPU randn is not seeded)
    let fixed = |n: usize, k: f32| -> Vec<f32> {
        (0..n)
            .map(|i| ((i as f32 * k).sin() * 1.7).fract() * 2.0)
            .collect()
    };
    let x = Tensor::from_vec(fixed(4 * 3 * 32 * 32, 0.37), (4, 3, 32, 32), &dev).unwrap();
    let r = Tensor::from_vec(fixed(40, 1.3), (4, 10), &dev).unwrap();
    let step = |amp: bool| {
        let mut m = ResNet::from_preset("demo_resnet10", 10, &dev, 0).unwrap();
        m.set_autocast(amp.then_some(DType::F16));
        let logits = m.forward_t(&x, true).unwrap();
        let grads = (&logits * &r)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let grad_of = |name: &str| {
            // the stem's first convolution, or the entry of that name
            let e = m.entries().iter().find(|e| match name {
                "stem" => e.shape.len() == 4,
                _ => e.name == name,
            });
            let e = e.unwrap_or_else(|| panic!("no entry {name}"));
            grads.get(e.var.as_tensor()).unwrap().clone()
        };
        let running = m
            .entries()
            .iter()
            .find(|e| e.name.ends_with("running_mean"))
            .unwrap()
            .var
            .as_tensor()
            .clone();
        (logits, grad_of("stem"), grad_of("fc.weight"), running)
    };
    let (l32, c32, f32_, r32) = step(false);
    let (l16, c16, f16, r16) = step(true);
    assert_eq!(l16.dtype(), DType::F32, "logits in f32");
    assert_eq!(c16.dtype(), DType::F32, "the f32 weights' gradients in f32");
    assert_eq!(r16.dtype(), DType::F32, "running statistics stay f32");
    // candle's CPU convolutions sum in f16 (up to ~600 products per output here), so
    // the errors are those of f16 sums, not of f16 values: the values within a few
    // percent, the gradients' directions within a few degrees
    for (what, a, b, tol) in [
        ("logits", &l16, &l32, 0.05),
        ("running mean", &r16, &r32, 0.05),
    ] {
        let e = rel_err(a, b);
        assert!(e < tol, "{what}: relative error {e} (tolerance {tol})");
    }
    // (the stem's weight gradient sums 4096 products per weight in f16: its error
    // is the largest)
    for (what, a, b, min) in [
        ("stem gradient", &c16, &c32, 0.95),
        ("fc gradient", &f16, &f32_, 0.999),
    ] {
        let c = cosine(a, b);
        assert!(c > min, "{what}: cosine {c} with the f32 network's ({min})");
    }
    // and it is not the f32 network itself: the activations were rounded
    assert!(rel_err(&l16, &l32) > 0.0, "autocast changed nothing");
}

/// Frozen BatchNorms give the unfrozen eval forward bit for bit, keep their affine
/// while the running statistics move on (train mode ignores them), and a weight
/// load thaws them.
#[test]
fn frozen_batch_norms_give_the_same_eval_forward_until_a_load() {
    let dev = Device::Cpu;
    let m = ResNet::from_preset("demo_resnet10", 10, &dev, 0).unwrap();
    let x = Tensor::randn(0f32, 1.0, (2, 3, 32, 32), &dev).unwrap();
    // move the running statistics off their initial values
    m.forward_t(&x, true).unwrap();
    let plain = m.forward_t(&x, false).unwrap();
    m.freeze_batch_norms().unwrap();
    let frozen = m.forward_t(&x, false).unwrap();
    assert_eq!(bits(&frozen), bits(&plain));
    let dir = tempfile::tempdir().unwrap();
    let saved = dir.path().join("m.safetensors");
    m.save(&saved).unwrap();
    // a train step moves the statistics; the frozen affine stays
    m.forward_t(&x.affine(2.0, 1.0).unwrap(), true).unwrap();
    assert_eq!(bits(&m.forward_t(&x, false).unwrap()), bits(&plain));
    // the saved weights loaded back: thawed, the saved network's forward again...
    m.load_weights(&saved, LoadOptions::default()).unwrap();
    assert_eq!(bits(&m.forward_t(&x, false).unwrap()), bits(&plain));
    // ...and live: the next train step's statistics show in the eval forward
    m.forward_t(&x.affine(2.0, 1.0).unwrap(), true).unwrap();
    assert_ne!(bits(&m.forward_t(&x, false).unwrap()), bits(&plain));
}

/// Every BatchNorm's affine and running statistics set to varied values, so that a
/// fold that mixes channels up or misses one shows (fresh ones are the identity).
fn vary_batch_norms(m: &ResNet) {
    for e in m.entries() {
        if e.var.dtype() != candle_core::DType::F32 {
            continue; // num_batches_tracked
        }
        let n = e.var.elem_count();
        let k = e.name.len() as f32;
        let v: Vec<f32> = (0..n)
            .map(|i| ((i as f32 * 0.61 + k).sin() + 1.0) * 0.5)
            .collect();
        let v: Vec<f32> = if e.name.ends_with("running_var") || e.name.ends_with("bn1.weight") {
            v.iter().map(|a| 0.25 + a).collect()
        } else if e.name.ends_with("running_mean") || e.name.ends_with(".bias") {
            v.iter().map(|a| a - 0.5).collect()
        } else if e.name.contains("bn") || e.name.ends_with("downsample.1.weight") {
            v.iter().map(|a| 0.5 + a).collect()
        } else {
            continue;
        };
        let t = Tensor::from_vec(v, e.var.dims(), &Device::Cpu).unwrap();
        e.var.set(&t).unwrap();
    }
}

/// The fused eval forward (BatchNorms folded into the convolutions, NHWC, the
/// join in the last convolution: fused.rs) gives the NCHW eval forward's logits,
/// for every kind of stem, shortcut and block the presets have: a deep stem and
/// average-pool shortcuts (resnet18d, resnet50t, basic blocks in the first),
/// grouped bottlenecks with convolution shortcuts (resnext50_32x4d), SE modules
/// (seresnet50). Here through the op's candle reference; on a GPU through cuDNN
/// (ops/cuda/tests/). It applies only once the BatchNorms are frozen.
#[test]
fn fused_forward_equals_the_nchw_forward() {
    let x = Tensor::from_vec(
        (0..2 * 3 * 40 * 40)
            .map(|i| (i as f32 * 0.013).sin() * 1.3)
            .collect::<Vec<_>>(),
        (2, 3, 40, 40),
        &Device::Cpu,
    )
    .unwrap();
    for name in ["resnet18d", "resnet50t", "resnext50_32x4d", "seresnet50"] {
        let m = ResNet::from_preset(name, 7, &Device::Cpu, 3).unwrap();
        vary_batch_norms(&m);
        assert!(
            m.forward_fused(&x).unwrap().is_none(),
            "{name}: fused before the BatchNorms were frozen"
        );
        m.freeze_batch_norms().unwrap();
        let fused = m.forward_fused(&x).unwrap().expect("a fused forward");
        let plain = m.forward_t(&x, false).unwrap();
        assert_eq!(fused.dims(), plain.dims());
        let err = rel_err(&fused, &plain);
        // ~1e-6 here (rounding of the folded weights); a missing shift: 3e-4
        assert!(err < 2e-5, "{name}: fused logits off by {err} (relative)");
    }
}

/// A teacher with a non-finite weight does not run fused, be it a convolution's or an SE
/// block's: cuDNN's fused ReLU would zero the NaN and give finite logits, where the NCHW
/// forward's NaN is named by the caller.
#[test]
fn a_non_finite_weight_keeps_the_nchw_forward() {
    let x = Tensor::ones((1, 3, 32, 32), candle_core::DType::F32, &Device::Cpu).unwrap();
    // (the NCHW forward keeps a convolution's NaN in the logits; this SE weight's NaN
    // does not reach them there either, so only the fused decision is checked for it)
    for (preset, weight, kept) in [
        ("resnet18d", "layer2.0.conv1.weight", true),
        ("seresnet50", "layer3.1.se.fc1.weight", false),
    ] {
        let m = ResNet::from_preset(preset, 5, &Device::Cpu, 3).unwrap();
        let e = m
            .entries()
            .iter()
            .find(|e| e.name.ends_with(weight))
            .unwrap_or_else(|| panic!("{preset}: no {weight}"));
        let mut v = vec![0.01f32; e.var.elem_count()];
        v[7] = f32::NAN;
        let t = Tensor::from_vec(v, e.var.dims(), &Device::Cpu).unwrap();
        e.var.set(&t).unwrap();
        m.freeze_batch_norms().unwrap();
        assert!(
            m.forward_fused(&x).unwrap().is_none(),
            "{preset}: fused despite a NaN in {weight}"
        );
        let plain = m.forward_t(&x, false).unwrap();
        let v = plain.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(
            !kept || v.iter().any(|p| p.is_nan()),
            "{preset}: the NCHW forward keeps the NaN"
        );
    }
}
