//! The copies between host and GPU: 8-bit crops normalised on the device, pinned uploads
//! and read-backs queued behind work.

use candle_core::{DType, Device, Tensor};

use super::{close, gpu};

#[test]
#[ignore = "needs a CUDA GPU: cargo test --features cuda -- --ignored --test-threads 1"]
fn eight_bit_crops_normalise_on_the_device_as_on_the_cpu() {
    let dev = gpu("eight_bit_crops_normalise_on_the_device_as_on_the_cpu");
    let levels: Vec<u8> = (0..2 * 3 * 9 * 11)
        .map(|i| ((i * 97 + 5) % 256) as u8)
        .collect();
    let x = Tensor::from_vec(levels, (2, 3, 9, 11), &Device::Cpu).unwrap();
    let norm = meal_data::Normalize {
        mean: [0.5, 0.4, 0.3],
        std: [0.2, 0.3, 0.25],
    };
    for dtype in [DType::F32, DType::BF16] {
        let want = crate::ops::normalize_levels(&x, &norm, dtype).unwrap();
        let got = crate::ops::normalize_levels(&x.to_device(&dev).unwrap(), &norm, dtype).unwrap();
        assert_eq!(got.dtype(), dtype);
        // a table lookup (and one rounding to bf16): equal bit for bit
        close(
            &format!("levels to {dtype:?}"),
            &got.to_dtype(DType::F32).unwrap(),
            &want.to_dtype(DType::F32).unwrap(),
            0.0,
        );
    }
}

#[test]
#[ignore = "needs a CUDA GPU: cargo test --features cuda -- --ignored --test-threads 1"]
fn pinned_uploads_queued_behind_work_keep_every_batch() {
    let dev = gpu("pinned_uploads_queued_behind_work_keep_every_batch");
    // a long product first, so the copies below wait behind it on the stream while
    // their pinned buffers come round again (ring of 4, 11 batches): a buffer rewritten
    // before its copy ran would show another batch's bytes
    let a = Tensor::randn(0f32, 1.0, (4096, 4096), &dev).unwrap();
    let mut slow = a.clone();
    for _ in 0..4 {
        slow = slow.matmul(&a).unwrap();
    }
    let batches: Vec<Vec<u8>> = (0..11u32)
        .map(|b| {
            (0..2 * 3 * 5 * 7)
                .map(|i| ((i * 31 + b * 7) % 256) as u8)
                .collect()
        })
        .collect();
    let up: Vec<Tensor> = batches
        .iter()
        .map(|v| crate::ops::upload_levels(v, (2, 3, 5, 7), &dev).unwrap())
        .collect();
    // the shorter last batch of a run gets buffers of its own size
    let short: Vec<u8> = (0..3 * 5 * 7).map(|i| (i % 251) as u8).collect();
    let up_short = crate::ops::upload_levels(&short, (1, 3, 5, 7), &dev).unwrap();
    drop(slow);
    for (b, (t, want)) in up.iter().zip(&batches).enumerate() {
        assert!(t.device().is_cuda(), "batch {b} left the GPU");
        assert_eq!(t.dims(), &[2, 3, 5, 7]);
        let got = t.flatten_all().unwrap().to_vec1::<u8>().unwrap();
        assert_eq!(&got, want, "batch {b}");
    }
    assert_eq!(
        up_short.flatten_all().unwrap().to_vec1::<u8>().unwrap(),
        short
    );
}

#[test]
#[ignore = "needs a CUDA GPU: cargo test --features cuda -- --ignored --test-threads 1"]
fn pinned_readbacks_return_each_tensor_as_it_was_when_queued() {
    let dev = gpu("pinned_readbacks_return_each_tensor_as_it_was_when_queued");
    let a = Tensor::randn(0f32, 1.0, (2048, 2048), &dev).unwrap();
    // 20 read-backs in flight (more than the pool keeps), each queued behind a product,
    // and a product queued after each: every wait gets its own tensor's values
    // The expected values are computed on the host, so nothing synchronises the stream
    // before a read-back is queued: each one waits behind its product, and `x` depends on
    // that product (times 0), so a read-back that does not wait for its own batch's
    // kernels reads a value not yet written.
    let mut want = Vec::new();
    let mut pending = Vec::new();
    let x0: Vec<f32> = (0..21).map(|i| i as f32 * 0.25 - 2.0).collect();
    let mut host = x0.clone();
    let mut x = Tensor::from_vec(x0, (3, 7), &dev).unwrap();
    for i in 0..20 {
        let slow = a.matmul(&a).unwrap().sum_all().unwrap();
        let nothing = (slow * 0.0).unwrap();
        x = ((&x * 0.5).unwrap() + i as f64)
            .unwrap()
            .broadcast_add(&nothing)
            .unwrap();
        host = host.iter().map(|v| v * 0.5 + i as f32).collect();
        want.push(host.clone());
        pending.push(crate::ops::readback_f32(&x).unwrap());
        let _after = a.matmul(&a).unwrap();
    }
    // one dropped without waiting: its buffer is released only after its copy
    drop(pending.remove(3));
    want.remove(3);
    for (i, (p, w)) in pending.into_iter().zip(&want).enumerate() {
        assert_eq!(&p.wait().unwrap(), w, "read-back {i}");
    }
    // a non-contiguous tensor comes back in its logical order
    let t = Tensor::arange(0f32, 12.0, &dev)
        .unwrap()
        .reshape((3, 4))
        .unwrap()
        .t()
        .unwrap();
    let got = crate::ops::readback_f32(&t).unwrap().wait().unwrap();
    assert_eq!(got, t.flatten_all().unwrap().to_vec1::<f32>().unwrap());
}

/// The free memory the binaries check a batch against: a 1 GiB tensor takes about
/// 1 GiB of it, and dropping it gives it back (to the driver, or to the pool the
/// device keeps, which the figure counts as free).
#[test]
#[ignore = "needs a CUDA GPU: cargo test --features cuda -- --ignored --test-threads 1"]
fn free_gpu_memory_follows_allocations() {
    let dev = gpu("free_gpu_memory_follows_allocations");
    let free = || crate::device::gpu_free_memory(&dev).unwrap().unwrap();
    let gib = 1u64 << 30;
    let before = free();
    let t = Tensor::zeros((gib as usize / 4,), DType::F32, &dev).unwrap();
    dev.synchronize().unwrap();
    let during = free();
    let took = before.saturating_sub(during);
    assert!(
        took >= gib - gib / 16 && took <= gib + gib / 4,
        "free {before} before, {during} holding 1 GiB"
    );
    drop(t);
    dev.synchronize().unwrap();
    let after = free();
    assert!(
        after + gib / 16 >= before,
        "free {before} before, {after} after"
    );
    assert_eq!(crate::device::gpu_free_memory(&Device::Cpu).unwrap(), None);
}

/// A model on the GPU is measured as its architecture's twin on the CPU, at the bytes of
/// the dtype it computes in: a bf16 teacher holds half its f32 twin's activations, and a
/// student under bf16 autocast is counted at bf16 too (a lower bound).
#[test]
#[ignore = "needs a CUDA GPU: cargo test --features cuda -- --ignored --test-threads 1"]
fn a_gpu_model_is_measured_as_its_cpu_twin() {
    use crate::memory::activations;
    use crate::ResNet;
    let dev = gpu("a_gpu_model_is_measured_as_its_cpu_twin");
    let cpu = activations(
        &ResNet::from_preset("resnet50", 10, &Device::Cpu, 0).unwrap(),
        96,
    )
    .unwrap();
    let f32_gpu = ResNet::from_preset("resnet50", 10, &dev, 0).unwrap();
    assert_eq!(activations(&f32_gpu, 96).unwrap(), cpu);
    let bf16 = ResNet::from_preset_as("resnet50", 10, &dev, DType::BF16).unwrap();
    let half = activations(&bf16, 96).unwrap();
    assert_eq!((half.total, half.largest), (cpu.total / 2, cpu.largest / 2));
    let mut amp = ResNet::from_preset("resnet50", 10, &dev, 0).unwrap();
    amp.set_autocast(Some(DType::BF16));
    assert_eq!(activations(&amp, 96).unwrap(), half);
}
