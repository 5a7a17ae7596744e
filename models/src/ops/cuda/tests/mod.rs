//! Every CUDA op against its CPU twin on the same inputs, forward and gradients.
//!
//! They need a GPU, and libtest cannot skip at run time, so they are `#[ignore]`d with
//! that reason: `cargo test` without a GPU reports them as ignored, never as passed (CI
//! builds them in `make check-cuda`). On a GPU machine run them with `--ignored`
//! (bench/gpu_check.sh does); there a missing device fails them with the reason.

use candle_core::{DType, Device, Tensor, Var};

use crate::ops::{
    batch_norm_train, channel_affine, channel_affine_dev, conv2d, max_pool2d, sgd_step, SgdStep,
};
use crate::testing::values;

#[path = "../../../../benches/common/mod.rs"]
mod bench_common;
mod mixed;
mod networks;
mod transfer;

/// The first CUDA device; a test asked to run without one fails with the reason, and
/// so does one run under `MEAL_CUDA_OPS=0`: the ops would fall back to candle's, and the
/// twin tests would compare candle's with the CPU ops, not ours.
fn gpu(test: &str) -> Device {
    bench_common::log_to_stderr();
    assert!(
        crate::ops::cuda::enabled(),
        "{test} tests our CUDA ops, which MEAL_CUDA_OPS turns off"
    );
    crate::device::parse_device("cuda:0")
        .unwrap_or_else(|e| panic!("{test} runs on a GPU and none opened here: {e}"))
}

/// Under `MEAL_CUDA_CONV=cudnn` (the device check's second run of the convolution
/// tests), what a test's convolutions ran: cuDNN must be on, and the calls it refused
/// (run by our own path, so the comparison checked ours) are printed, or fail the test
/// where `all` (configurations cuDNN's FLOAT convolutions document).
struct CudnnCalls(usize);

impl CudnnCalls {
    fn start() -> Self {
        Self(crate::ops::cudnn_refused_calls())
    }

    fn check(self, test: &str, all: bool) {
        if !super::cudnn::asked() {
            return;
        }
        assert!(
            crate::ops::cudnn_convs(),
            "{test}: MEAL_CUDA_CONV=cudnn, but cuDNN is off (its warning is above)"
        );
        let refused = crate::ops::cudnn_refused_calls() - self.0;
        println!("{test}: cuDNN refused {refused} convolution calls (our path ran those)");
        assert!(
            !all || refused == 0,
            "{test}: cuDNN refused {refused} calls (warnings above)"
        );
    }
}

/// `|a - b| <= tol * max(1, max|b|)` elementwise (NaN only where the other is NaN).
fn close(what: &str, a: &Tensor, b: &Tensor, tol: f32) {
    assert_eq!(a.dims(), b.dims(), "{what}: shapes");
    let (a, b) = (values(a), values(b));
    let scale = b.iter().fold(1f32, |m, v| m.max(v.abs()));
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        let ok = (x.is_nan() && y.is_nan()) || (x - y).abs() <= tol * scale;
        assert!(
            ok,
            "{what}[{i}]: cuda {x} vs cpu {y} (tolerance {tol} x {scale})"
        );
    }
}

/// `f(inputs)` and the gradients of `sum(f(inputs) * r)` on `dev`, from host values.
fn run(
    dev: &Device,
    inputs: &[Tensor],
    r: &Tensor,
    f: &dyn Fn(&[Tensor]) -> Tensor,
) -> (Tensor, Vec<Tensor>) {
    let vars: Vec<Var> = inputs
        .iter()
        .map(|t| Var::from_tensor(&t.to_device(dev).unwrap()).unwrap())
        .collect();
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let y = f(&ts);
    let loss = (&y * r.to_device(dev).unwrap()).unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    let g = ts.iter().map(|t| grads.get(t).unwrap().clone()).collect();
    (y, g)
}

/// `f` on the GPU and on the CPU: outputs and gradients within `tol`.
fn twin(gpu: &Device, name: &str, inputs: &[Tensor], f: &dyn Fn(&[Tensor]) -> Tensor, tol: f32) {
    let y_cpu = f(inputs);
    let r = Tensor::randn(0f32, 1.0, y_cpu.dims(), &Device::Cpu).unwrap();
    let (y0, g0) = run(&Device::Cpu, inputs, &r, f);
    let (y1, g1) = run(gpu, inputs, &r, f);
    assert!(y1.device().is_cuda(), "{name}: output left the GPU");
    close(&format!("{name} y"), &y1, &y0, tol);
    for (i, (a, b)) in g1.iter().zip(&g0).enumerate() {
        close(&format!("{name} d{i}"), a, b, tol);
    }
}

fn randn(dims: &[usize]) -> Tensor {
    Tensor::randn(0f32, 1.0, dims, &Device::Cpu).unwrap()
}

#[test]
#[ignore = "needs a CUDA GPU: cargo test --features cuda -- --ignored --test-threads 1"]
fn conv2d_equals_the_cpu_op() {
    let dev = gpu("conv2d_equals_the_cpu_op");
    let cudnn = CudnnCalls::start();
    // (batch, cin, h, w, cout, kernel, stride, padding): 3x3 s1/s2, 1x1 s1/s2, the 7x7
    // stem; the tests' small chunks split every batch (conv.rs CHUNK_ELEMS)
    for (b, ci, h, w, co, k, s, p) in [
        (5, 3, 9, 7, 4, 3, 1, 1),
        (3, 6, 10, 10, 5, 3, 2, 1),
        (4, 8, 6, 5, 7, 1, 1, 0),
        (3, 8, 9, 9, 6, 1, 2, 0),
        (2, 3, 23, 21, 8, 7, 2, 3),
    ] {
        let name = format!("conv {b}x{ci}x{h}x{w} -> {co}, k{k} s{s} p{p}");
        let f = move |t: &[Tensor]| conv2d(&t[0], &t[1], s, p, 1).unwrap();
        twin(
            &dev,
            &name,
            &[randn(&[b, ci, h, w]), randn(&[co, ci, k, k])],
            &f,
            1e-4,
        );
    }
    // the network's first convolution: its input is no variable, so the backward makes
    // the weight gradient only (conv.rs `need_dx`)
    let x = randn(&[2, 3, 23, 21]);
    let f =
        move |t: &[Tensor]| conv2d(&x.to_device(t[0].device()).unwrap(), &t[0], 2, 3, 1).unwrap();
    twin(
        &dev,
        "stem conv, input not a variable",
        &[randn(&[8, 3, 7, 7])],
        &f,
        1e-4,
    );
    cudnn.check("conv2d_equals_the_cpu_op", true);
}

#[test]
#[ignore = "needs a CUDA GPU: cargo test --features cuda -- --ignored --test-threads 1"]
fn batch_norm_equals_the_cpu_op() {
    let dev = gpu("batch_norm_equals_the_cpu_op");
    // [5, 300, 17, 17]: 3 blocks per channel over 5 images (uneven ranges, bn::splits),
    // each over more values than a block has threads
    for (relu, shape) in [
        (false, [4, 5, 6, 7]),
        (true, [4, 5, 6, 7]),
        (true, [5, 300, 17, 17]),
    ] {
        let c = shape[1];
        // a large mean as well: the shifted sums must keep the variance
        for offset in [0f32, 100.0] {
            let x = (randn(&shape) + offset as f64).unwrap();
            let gamma = ((randn(&[c]) * 0.5).unwrap() + 1.0).unwrap();
            let beta = (randn(&[c]) * 0.5).unwrap();
            let f = move |t: &[Tensor]| {
                batch_norm_train(&t[0], &t[1], &t[2], 1e-5, relu)
                    .unwrap()
                    .expect("our op takes f32 NCHW")
                    .y
            };
            let name = format!("batch norm {shape:?} relu={relu} offset={offset}");
            twin(
                &dev,
                &name,
                &[x.clone(), gamma.clone(), beta.clone()],
                &f,
                1e-4,
            );
            // the statistics handed to the running averages
            let on = |d: &Device| {
                let t = |v: &Tensor| v.to_device(d).unwrap();
                let o = batch_norm_train(&t(&x), &t(&gamma), &t(&beta), 1e-5, relu)
                    .unwrap()
                    .unwrap();
                // the GPU's stay on the GPU (no wait for a copy to the host)
                assert_eq!(
                    o.mean.device().is_cuda(),
                    d.is_cuda(),
                    "{name}: statistics' device"
                );
                let host = |t: &Tensor| {
                    t.to_device(&Device::Cpu)
                        .and_then(|t| t.to_vec1::<f64>())
                        .expect("statistics to host")
                };
                (host(&o.mean), host(&o.var))
            };
            let ((m0, v0), (m1, v1)) = (on(&Device::Cpu), on(&dev));
            for (a, b) in m1.iter().zip(&m0).chain(v1.iter().zip(&v0)) {
                assert!(
                    (a - b).abs() <= 1e-9 * b.abs().max(1.0),
                    "{name}: statistic {a} vs {b}"
                );
            }
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU: cargo test --features cuda -- --ignored --test-threads 1"]
fn max_pool_equals_the_cpu_op_with_ties_and_nan() {
    let dev = gpu("max_pool_equals_the_cpu_op_with_ties_and_nan");
    // values rounded to halves: many ties, which must go to the first maximum
    let x = (randn(&[2, 3, 11, 10]) * 2.0).unwrap().round().unwrap();
    let f = |t: &[Tensor]| {
        max_pool2d(&t[0], 3, 2, 1)
            .unwrap()
            .expect("our op takes f32")
    };
    twin(
        &dev,
        "max-pool 3x3 s2 p1",
        std::slice::from_ref(&x),
        &f,
        0.0,
    );
    let f2 = |t: &[Tensor]| {
        max_pool2d(&t[0], 2, 2, 0)
            .unwrap()
            .expect("our op takes f32")
    };
    twin(&dev, "max-pool 2x2 s2", std::slice::from_ref(&x), &f2, 0.0);
    // a NaN propagates to every window that holds it; of two in one window (row 1,
    // columns 7 and 8 of the first plane) the last takes the gradient (PyTorch's CPU
    // rule, pool.rs `Pool::argmax`)
    let mut v = values(&x);
    v[17] = f32::NAN;
    v[18] = f32::NAN;
    let xn = Tensor::from_vec(v, x.dims(), &Device::Cpu).unwrap();
    twin(
        &dev,
        "max-pool with two NaNs",
        std::slice::from_ref(&xn),
        &f,
        0.0,
    );
    let y1 = max_pool2d(&xn.to_device(&dev).unwrap(), 3, 2, 1)
        .unwrap()
        .unwrap();
    assert!(values(&y1).iter().any(|v| v.is_nan()));
}

#[test]
#[ignore = "needs a CUDA GPU: cargo test --features cuda -- --ignored --test-threads 1"]
fn sgd_step_equals_the_cpu_op() {
    let dev = gpu("sgd_step_equals_the_cpu_op");
    for nesterov in [false, true] {
        let step = SgdStep {
            lr: 0.1,
            weight_decay: 1e-4,
            momentum: 0.9,
            // not 0: the launch passes `1 - dampening`, which 0 would leave untested
            dampening: 0.1,
            nesterov,
        };
        let (p, g) = (randn(&[1000, 7]), randn(&[1000, 7]));
        let on = |d: &Device| {
            let p = p.to_device(d).unwrap().copy().unwrap();
            let buf = Tensor::zeros(p.dims(), DType::F32, d).unwrap();
            for k in 0..3 {
                let g = (g.to_device(d).unwrap() * (1.0 + k as f64)).unwrap();
                assert!(crate::ops::sgd_fast(&p, &g, &buf));
                sgd_step(&p, &g, &buf, step).unwrap();
            }
            (p, buf)
        };
        let ((p0, b0), (p1, b1)) = (on(&Device::Cpu), on(&dev));
        close(&format!("sgd p nesterov={nesterov}"), &p1, &p0, 1e-6);
        close(&format!("sgd buf nesterov={nesterov}"), &b1, &b0, 1e-6);
    }
}

#[test]
#[ignore = "needs a CUDA GPU: cargo test --features cuda -- --ignored --test-threads 1"]
fn eval_batch_norm_on_the_device_equals_the_cpu_op() {
    let dev = gpu("eval_batch_norm_on_the_device_equals_the_cpu_op");
    let x = randn(&[3, 6, 5, 7]);
    let (scale, shift) = (values(&randn(&[6])), values(&randn(&[6])));
    for relu in [false, true] {
        let want = channel_affine(&x, scale.clone(), shift.clone(), relu)
            .unwrap()
            .unwrap();
        let t = |v: &[f32]| Tensor::from_slice(v, (1, 6, 1, 1), &dev).unwrap();
        let got = channel_affine_dev(&x.to_device(&dev).unwrap(), &t(&scale), &t(&shift), relu)
            .unwrap()
            .expect("our op on CUDA outside a graph");
        // the same f32 multiply then add, never fused (build.rs --fmad=false): bit for bit
        close(&format!("eval batch norm relu={relu}"), &got, &want, 0.0);
    }
}

#[test]
#[ignore = "needs a CUDA GPU: cargo test --features cuda -- --ignored --test-threads 1"]
fn bf16_eval_batch_norm_equals_the_cpu_twin() {
    let dev = gpu("bf16_eval_batch_norm_equals_the_cpu_twin");
    let x = randn(&[3, 6, 5, 7]).to_dtype(DType::BF16).unwrap();
    let (scale, shift) = (randn(&[6]), randn(&[6]));
    for relu in [false, true] {
        // the CPU forward of the same op: the f32 affine of the widened input, rounded once
        let want = channel_affine_dev_cpu(&x, &scale, &shift, relu);
        let on = |t: &Tensor| t.to_device(&dev).unwrap();
        let got = channel_affine_dev(&on(&x), &on(&scale), &on(&shift), relu)
            .unwrap()
            .expect("our op on CUDA for bf16 outside a graph");
        assert_eq!(got.dtype(), DType::BF16);
        // the same f32 affine (multiply, then add: the kernel's __fadd_rn(__fmul_rn),
        // Rust's `v * sc + sh`) rounded once to nearest-even on each side: bit for bit
        close(
            &format!("bf16 eval batch norm relu={relu}"),
            &got.to_dtype(DType::F32).unwrap(),
            &want.to_dtype(DType::F32).unwrap(),
            0.0,
        );
    }
}

/// The CPU forward of the device affine op (its twin for bf16), called directly: the
/// public entry point declines CPU tensors.
fn channel_affine_dev_cpu(x: &Tensor, scale: &Tensor, shift: &Tensor, relu: bool) -> Tensor {
    crate::ops::bn::device_affine_cpu(x, scale, shift, relu).unwrap()
}

#[test]
#[ignore = "needs a CUDA GPU: cargo test --features cuda -- --ignored --test-threads 1"]
fn bf16_conv2d_inference_equals_the_f32_cpu_op_on_rounded_inputs() {
    let dev = gpu("bf16_conv2d_inference_equals_the_f32_cpu_op_on_rounded_inputs");
    let cudnn = CudnnCalls::start();
    // through im2col (3x3 s2, the 7x7 stem) and straight from the input (1x1 s1)
    for (b, ci, h, w, co, k, s, p) in [
        (3, 6, 10, 10, 5, 3, 2, 1),
        (4, 8, 6, 5, 7, 1, 1, 0),
        (2, 3, 23, 21, 8, 7, 2, 3),
    ] {
        let round = |t: Tensor| t.to_dtype(DType::BF16).unwrap();
        let (x, wt) = (round(randn(&[b, ci, h, w])), round(randn(&[co, ci, k, k])));
        let widen = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
        let want = conv2d(&widen(&x), &widen(&wt), s, p, 1).unwrap();
        let on = |t: &Tensor| t.to_device(&dev).unwrap();
        let got = conv2d(&on(&x), &on(&wt), s, p, 1).unwrap();
        assert_eq!(got.dtype(), DType::BF16);
        // exact products, f32 sums in another order, one rounding to bf16 (2^-8 relative)
        close(
            &format!("bf16 conv {b}x{ci}x{h}x{w} -> {co}, k{k} s{s} p{p}"),
            &widen(&got),
            &want,
            1.0 / 64.0,
        );
    }
    cudnn.check(
        "bf16_conv2d_inference_equals_the_f32_cpu_op_on_rounded_inputs",
        false,
    );
}

/// Grouped convolutions `(batch, cin, h, w, cout, kernel, stride, padding, groups)`:
/// SENet-154's and ResNeXt's grouped 3x3 (stride 1 and 2), a grouped 1x1 and depthwise,
/// batches over several chunks of the test build's small CHUNK_ELEMS.
const GROUPED: [[usize; 9]; 4] = [
    [3, 8, 9, 9, 12, 3, 1, 1, 4],
    [4, 6, 10, 11, 6, 3, 2, 1, 3],
    [2, 6, 5, 5, 9, 1, 1, 0, 3],
    [2, 4, 7, 7, 4, 3, 1, 1, 4],
];

#[test]
#[ignore = "needs a CUDA GPU: cargo test --features cuda -- --ignored --test-threads 1"]
fn grouped_conv2d_inference_equals_the_cpu_op() {
    let dev = gpu("grouped_conv2d_inference_equals_the_cpu_op");
    let cudnn = CudnnCalls::start();
    for [b, ci, h, w, co, k, s, p, groups] in GROUPED {
        let what = format!("grouped conv {b}x{ci}x{h}x{w} -> {co}, k{k} s{s} p{p} g{groups}");
        let (x, wt) = (randn(&[b, ci, h, w]), randn(&[co, ci / groups, k, k]));
        let want = conv2d(&x, &wt, s, p, groups).unwrap();
        let on = |t: &Tensor| t.to_device(&dev).unwrap();
        let got = conv2d(&on(&x), &on(&wt), s, p, groups).unwrap();
        close(&format!("{what} f32"), &got, &want, 1e-4);
        // bf16: the f32 CPU op on the rounded inputs, one rounding of the f32 sums
        let round = |t: &Tensor| t.to_dtype(DType::BF16).unwrap();
        let widen = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
        let (xr, wr) = (widen(&round(&x)), widen(&round(&wt)));
        let want = conv2d(&xr, &wr, s, p, groups).unwrap();
        let got = conv2d(&on(&round(&x)), &on(&round(&wt)), s, p, groups).unwrap();
        assert_eq!(got.dtype(), DType::BF16, "{what}");
        close(&format!("{what} bf16"), &widen(&got), &want, 1.0 / 64.0);
    }
    cudnn.check("grouped_conv2d_inference_equals_the_cpu_op", false);
}

#[test]
#[ignore = "needs a CUDA GPU: cargo test --features cuda -- --ignored --test-threads 1"]
fn grouped_conv2d_with_gradients_equals_the_cpu_op() {
    let dev = gpu("grouped_conv2d_with_gradients_equals_the_cpu_op");
    let cudnn = CudnnCalls::start();
    // a ResNeXt student's: output, input and weight gradients against the CPU op
    for [b, ci, h, w, co, k, s, p, groups] in GROUPED {
        let name = format!("grouped conv {b}x{ci}x{h}x{w} -> {co}, k{k} s{s} p{p} g{groups}");
        let f = move |t: &[Tensor]| conv2d(&t[0], &t[1], s, p, groups).unwrap();
        twin(
            &dev,
            &name,
            &[randn(&[b, ci, h, w]), randn(&[co, ci / groups, k, k])],
            &f,
            1e-4,
        );
    }
    cudnn.check("grouped_conv2d_with_gradients_equals_the_cpu_op", false);
}

#[test]
#[ignore = "needs a CUDA GPU: cargo test --features cuda -- --ignored --test-threads 1"]
fn relu_and_residual_join_equal_the_cpu_ops() {
    let dev = gpu("relu_and_residual_join_equal_the_cpu_ops");
    let (a, b) = (randn(&[2, 3, 5, 7]), randn(&[2, 3, 5, 7]));
    let relu = |t: &[Tensor]| crate::ops::relu(&t[0]).unwrap();
    twin(&dev, "relu", std::slice::from_ref(&a), &relu, 0.0);
    let join = |t: &[Tensor]| crate::ops::add_relu(&t[0], &t[1]).unwrap();
    twin(&dev, "add_relu", &[a.clone(), b.clone()], &join, 0.0);
    // bf16 (a teacher's inference): the f32 CPU ops on the rounded inputs, rounded once
    let round = |t: &Tensor| t.to_dtype(DType::BF16).unwrap();
    let widen = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
    let on = |t: &Tensor| round(t).to_device(&dev).unwrap();
    let got = crate::ops::relu(&on(&a)).unwrap();
    assert_eq!(got.dtype(), DType::BF16);
    close(
        "relu bf16",
        &widen(&got),
        &crate::ops::relu(&widen(&round(&a))).unwrap(),
        0.0,
    );
    let got = crate::ops::add_relu(&on(&a), &on(&b)).unwrap();
    let want = crate::ops::add_relu(&widen(&round(&a)), &widen(&round(&b))).unwrap();
    close("add_relu bf16", &widen(&got), &widen(&round(&want)), 0.0);
}

#[test]
#[ignore = "needs a CUDA GPU: cargo test --features cuda -- --ignored --test-threads 1"]
fn bf16_max_pool_equals_the_f32_cpu_op_on_rounded_inputs() {
    let dev = gpu("bf16_max_pool_equals_the_f32_cpu_op_on_rounded_inputs");
    let x = randn(&[2, 3, 11, 10]).to_dtype(DType::BF16).unwrap();
    let got = max_pool2d(&x.to_device(&dev).unwrap(), 3, 2, 1)
        .unwrap()
        .expect("our op takes bf16 on CUDA for inference");
    assert_eq!(got.dtype(), DType::BF16);
    let widen = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
    let want = max_pool2d(&widen(&x), 3, 2, 1).unwrap().unwrap();
    // a selection: the same values
    close("bf16 max-pool", &widen(&got), &want, 0.0);
}

/// cuDNN's fused NHWC convolution (`ops::cuda::conv_nhwc`: bias, residual, ReLU in one
/// call) against the op's candle reference on the CPU, for 1x1, strided 3x3, grouped
/// and a 7x7 stem's 3-channel geometry, with and without each part: f32 (cuDNN's FMA
/// math) and bf16 (against the reference on the same rounded inputs).
#[test]
#[ignore = "needs a CUDA GPU: cargo test --features cuda -- --ignored --test-threads 1"]
fn fused_nhwc_convolution_equals_the_reference() {
    let dev = gpu("fused_nhwc_convolution_equals_the_reference");
    // SAFETY: only tries to dlopen the library's candidate names
    let present = unsafe { cudarc::cudnn::sys::is_culib_present() };
    assert!(
        present,
        "libcudnn (libcudnn.so.9) could not be loaded: set LD_LIBRARY_PATH"
    );
    let geoms = [
        // b, h, w, c, co, k, stride, groups
        [2, 9, 9, 16, 32, 1, 1, 1],
        [2, 9, 9, 16, 24, 3, 2, 1],
        [2, 8, 8, 32, 32, 3, 1, 8],
        [2, 15, 15, 3, 16, 7, 2, 1],
    ];
    let parts = [
        // bias, residual, relu
        (true, false, true),
        (true, true, true),
        (true, false, false),
        (false, false, false),
    ];
    for (gi, &[b, h, w, c, co, k, stride, groups]) in geoms.iter().enumerate() {
        let slide = crate::ops::Slide {
            stride,
            padding: ((stride - 1) + (k - 1)) / 2,
            groups,
        };
        let (ho, wo) = (
            (h + 2 * slide.padding - k) / stride + 1,
            (w + 2 * slide.padding - k) / stride + 1,
        );
        let x = randn(&[b, h, w, c]);
        let wt = randn(&[co, k, k, c / groups]);
        let bias = randn(&[co]);
        let z = randn(&[b, ho, wo, co]);
        for (has_bias, has_z, relu) in parts {
            let what = format!("{b}x{h}x{w}x{c} -> {co}, k{k} s{stride} g{groups}, bias {has_bias} residual {has_z} relu {relu}");
            for dt in [DType::F32, DType::BF16] {
                let t = |v: &Tensor| v.to_dtype(dt).unwrap().to_device(&dev).unwrap();
                let (xd, wd, bd, zd) = (t(&x), t(&wt), t(&bias), t(&z));
                let (bd, zd) = (has_bias.then_some(&bd), has_z.then_some(&zd));
                let before = super::nhwc::refused_shapes(dt);
                if !has_z {
                    // without a residual cuDNN is given the (uninitialised) output as z,
                    // with alpha2 = 0, as PyTorch does: leave NaN where the output will be
                    // allocated (the pool hands freed blocks back), so that a kernel
                    // computing 0 * z shows here as NaN
                    let poison = Tensor::full(f32::NAN, (b, ho, wo, co), &dev)
                        .and_then(|t| t.to_dtype(dt))
                        .unwrap();
                    drop(poison);
                }
                let got = super::conv_nhwc(&xd, &wd, bd, zd, relu, slide)
                    .unwrap_or_else(|e| panic!("{what} {dt:?}: {e}"));
                // the plainest FLOAT configuration (ungrouped, 16 input channels, bias and
                // ReLU) must fuse, or this test would check only the unfused fallback
                assert!(
                    !(dt == DType::F32 && gi < 2 && relu && has_bias)
                        || super::nhwc::refused_shapes(dt) == before,
                    "{what} {dt:?}: cuDNN refused the fused call (warning above)"
                );
                assert!(got.device().is_cuda(), "{what}: output left the GPU");
                let got = got.to_dtype(DType::F32).unwrap();
                // the reference on the values the GPU saw (bf16-rounded for bf16)
                let round = |v: &Tensor| v.to_dtype(dt).unwrap().to_dtype(DType::F32).unwrap();
                let want = crate::ops::conv_nhwc_reference(
                    &round(&x),
                    &round(&wt),
                    has_bias.then_some(&round(&bias)),
                    has_z.then_some(&round(&z)),
                    relu,
                    slide,
                )
                .unwrap();
                let tol = if dt == DType::F32 { 1e-4 } else { 2e-2 };
                close(&format!("{what} {dt:?}"), &got, &want, tol);
            }
        }
    }
    // a refused fused call ran as the plain convolution and separate passes (equal, as
    // checked above): said here, so the device log shows which configurations fuse
    let refused = |dt| super::nhwc::refused_shapes(dt);
    println!(
        "cuDNN refused the fused call for {} f32 and {} bf16 shapes of the {} with a bias each",
        refused(DType::F32),
        refused(DType::BF16),
        geoms.len() * 3
    );
    // the others may be refused: no document says that the legacy call takes each of
    // these (grouped, 3 input channels, the identity activation's one algorithm), and a
    // refused shape runs unfused, equal as checked, so it is printed, not a failure
}
