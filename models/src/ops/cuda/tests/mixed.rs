//! Mixed precision: each op in bf16 on the GPU (weights f32, cast as the layers cast
//! them) against the op in f32 on the CPU on the same rounded inputs.

use candle_core::{DType, Device, Tensor};

use super::{close, gpu, randn, run, CudnnCalls, GROUPED};
use crate::ops::{batch_norm_train, conv2d, max_pool2d};

/// `f` under mixed precision on the GPU against `f` in f32 on the CPU: the inputs
/// marked in `half` go to `f` in bf16 on the GPU (the weights f32 and cast as the
/// layers cast them), and the CPU reference gets their rounded values in f32; the output
/// (widened) and every input's f32 gradient within `tol` of the CPU's. What differs is
/// bf16's rounding of the outputs, of the incoming gradient and of the intermediate
/// column gradient.
fn twin_mixed(
    gpu: &Device,
    name: &str,
    inputs: &[Tensor],
    half: &[bool],
    f: &dyn Fn(&[Tensor]) -> Tensor,
    tol: f32,
) {
    let rounded: Vec<Tensor> = inputs
        .iter()
        .zip(half)
        .map(|(t, &h)| {
            if h {
                t.to_dtype(DType::BF16)
                    .unwrap()
                    .to_dtype(DType::F32)
                    .unwrap()
            } else {
                t.clone()
            }
        })
        .collect();
    let y_cpu = f(&rounded);
    let r = Tensor::randn(0f32, 1.0, y_cpu.dims(), &Device::Cpu).unwrap();
    let (y0, g0) = run(&Device::Cpu, &rounded, &r, f);
    let cast = |t: &[Tensor]| -> Tensor {
        let ts: Vec<Tensor> = t
            .iter()
            .zip(half)
            .map(|(t, &h)| {
                if h {
                    t.to_dtype(DType::BF16).unwrap()
                } else {
                    t.clone()
                }
            })
            .collect();
        let y = f(&ts);
        assert_eq!(y.dtype(), DType::BF16, "{name}: output dtype");
        y.to_dtype(DType::F32).unwrap()
    };
    let (y1, g1) = run(gpu, &rounded, &r, &cast);
    assert!(y1.device().is_cuda(), "{name}: output left the GPU");
    close(&format!("{name} y"), &y1, &y0, tol);
    for (i, (a, b)) in g1.iter().zip(&g0).enumerate() {
        assert_eq!(a.dtype(), DType::F32, "{name} d{i}: dtype");
        close(&format!("{name} d{i}"), a, b, tol);
    }
}

#[test]
#[ignore = "needs a CUDA GPU: cargo test --features cuda -- --ignored --test-threads 1"]
fn mixed_precision_ops_follow_the_f32_cpu_ops() {
    let dev = gpu("mixed_precision_ops_follow_the_f32_cpu_ops");
    let cudnn = CudnnCalls::start();
    // bf16 values and sums in f32: half a bf16 step (2^-9) per rounding, a few in a row
    let tol = 2e-2;
    for (b, ci, h, w, co, k, s, p) in [
        (5, 3, 9, 7, 4, 3, 1, 1),
        (3, 6, 10, 10, 5, 3, 2, 1),
        (4, 8, 6, 5, 7, 1, 1, 0),
        (2, 3, 23, 21, 8, 7, 2, 3),
    ] {
        let name = format!("bf16 conv {b}x{ci}x{h}x{w} -> {co}, k{k} s{s} p{p}");
        let f = move |t: &[Tensor]| conv2d(&t[0], &t[1], s, p, 1).unwrap();
        let inputs = [randn(&[b, ci, h, w]), randn(&[co, ci, k, k])];
        twin_mixed(&dev, &name, &inputs, &[true, true], &f, tol);
    }
    // a ResNeXt student's grouped convolutions under mixed precision: the backward's
    // per-group GEMMs on bf16 views, the weight gradient summed in f32
    for [b, ci, h, w, co, k, s, p, groups] in GROUPED {
        let name = format!("bf16 grouped conv {b}x{ci}x{h}x{w} -> {co}, k{k} s{s} p{p} g{groups}");
        let f = move |t: &[Tensor]| conv2d(&t[0], &t[1], s, p, groups).unwrap();
        let inputs = [randn(&[b, ci, h, w]), randn(&[co, ci / groups, k, k])];
        twin_mixed(&dev, &name, &inputs, &[true, true], &f, tol);
    }
    for (relu, shape) in [
        (false, [4, 5, 6, 7]),
        (true, [4, 5, 6, 7]),
        (true, [5, 300, 17, 17]),
    ] {
        let c = shape[1];
        let x = (randn(&shape) + 3.0).unwrap();
        let gamma = ((randn(&[c]) * 0.5).unwrap() + 1.0).unwrap();
        let beta = (randn(&[c]) * 0.5).unwrap();
        let f = move |t: &[Tensor]| {
            batch_norm_train(&t[0], &t[1], &t[2], 1e-5, relu)
                .unwrap()
                .expect("our op takes bf16 with f32 weights on CUDA")
                .y
        };
        let name = format!("bf16 batch norm {shape:?} relu={relu}");
        twin_mixed(
            &dev,
            &name,
            &[x, gamma, beta],
            &[true, false, false],
            &f,
            tol,
        );
    }
    let (a, b) = (randn(&[2, 3, 5, 7]), randn(&[2, 3, 5, 7]));
    let relu = |t: &[Tensor]| crate::ops::relu(&t[0]).unwrap();
    twin_mixed(
        &dev,
        "bf16 relu",
        std::slice::from_ref(&a),
        &[true],
        &relu,
        tol,
    );
    let join = |t: &[Tensor]| crate::ops::add_relu(&t[0], &t[1]).unwrap();
    twin_mixed(&dev, "bf16 add_relu", &[a, b], &[true, true], &join, tol);
    let pool = |t: &[Tensor]| max_pool2d(&t[0], 3, 2, 1).unwrap().expect("our op");
    twin_mixed(
        &dev,
        "bf16 max-pool",
        &[randn(&[2, 3, 11, 10])],
        &[true],
        &pool,
        tol,
    );
    cudnn.check("mixed_precision_ops_follow_the_f32_cpu_ops", false);
}
