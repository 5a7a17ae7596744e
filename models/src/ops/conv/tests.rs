//! The conv op against candle's conv2d and finite differences.

use super::*;
use candle_core::{DType, Device, Var};

fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Forward and both gradients equal candle's reference conv2d (itself checked
/// against PyTorch by the model fixtures) over odd sizes, strides, paddings,
/// different H/W parity and batch 1.
#[test]
fn matches_candle_conv_forward_and_backward() {
    let dev = Device::Cpu;
    for &(b, c, h, w, co, k, s, p) in &[
        (1, 3, 7, 9, 4, 3, 1, 1),
        (2, 3, 8, 7, 5, 3, 2, 1),
        (2, 4, 9, 6, 3, 1, 2, 0),
        (3, 2, 5, 5, 2, 1, 1, 0),
        (1, 3, 11, 10, 4, 7, 2, 3),
        (2, 2, 4, 5, 3, 3, 2, 0),
        (2, 3, 6, 5, 4, 3, 1, 1),
        (2, 2, 5, 6, 3, 5, 1, 1),
        // planes of at least PER_IMAGE_MIN outputs: one GEMM per image (the rest: batch)
        (2, 2, 30, 29, 3, 3, 1, 1),
        (2, 3, 28, 29, 4, 1, 1, 0),
        (2, 2, 58, 56, 3, 3, 2, 1),
        (1, 3, 5, 4, 2, 1, 1, 0),
        // kernel wider than the image: taps that see only padding
        (1, 1, 3, 1, 2, 5, 1, 2),
    ] {
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, c, h, w), &dev).unwrap()).unwrap();
        let wt = Var::from_tensor(&Tensor::randn(0f32, 1.0, (co, c, k, k), &dev).unwrap()).unwrap();
        let ours = conv2d(x.as_tensor(), wt.as_tensor(), s, p, 1).unwrap();
        let theirs = x.as_tensor().conv2d(wt.as_tensor(), p, s, 1, 1).unwrap();
        assert_eq!(ours.dims(), theirs.dims());
        assert!(
            max_abs(&ours, &theirs) < 1e-4,
            "forward {b} {c} {h} {w} k{k} s{s} p{p}"
        );
        // a loss that weights every output differently
        let r = Tensor::randn(0f32, 1.0, ours.dims(), &dev).unwrap();
        let g1 = (ours * &r).unwrap().sum_all().unwrap().backward().unwrap();
        // candle's own backward fails for stride 2 when H and W differ in parity
        // (candle-core 0.11.1 `src/backprop.rs`); those shapes are checked by finite differences below
        let Ok(g2) = (theirs * &r).unwrap().sum_all().unwrap().backward() else {
            assert!(s == 2 && h % 2 != w % 2, "candle failed on {b} {c} {h} {w}");
            continue;
        };
        for v in [&x, &wt] {
            let a = g1.get(v.as_tensor()).unwrap();
            let e = g2.get(v.as_tensor()).unwrap();
            assert!(max_abs(a, e) < 1e-3, "grad {b} {c} {h} {w} k{k} s{s} p{p}");
        }
    }
}

/// Both gradients against central finite differences (stride 2, H and W of
/// different parity, padding: the shape candle cannot back-propagate).
#[test]
fn gradients_match_finite_differences() {
    let dev = Device::Cpu;
    let x0: Vec<f32> = (0..2 * 2 * 5 * 4)
        .map(|i| ((i * 37 % 17) as f32 - 8.0) / 8.0)
        .collect();
    let wt = Tensor::randn(0f32, 1.0, (3, 2, 3, 3), &dev).unwrap();
    let r = Tensor::randn(0f32, 1.0, (2, 3, 3, 2), &dev).unwrap();
    let f = |v: &[f32]| -> f64 {
        let x = Tensor::from_slice(v, (2, 2, 5, 4), &dev).unwrap();
        let y = conv2d(&x, &wt, 2, 1, 1).unwrap();
        (y * &r)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap() as f64
    };
    let x = Var::from_tensor(&Tensor::from_slice(&x0, (2, 2, 5, 4), &dev).unwrap()).unwrap();
    let y = conv2d(x.as_tensor(), &wt, 2, 1, 1).unwrap();
    let g = (y * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let g = g
        .get(x.as_tensor())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let eps = 1e-2f32;
    for i in (0..x0.len()).step_by(3) {
        let (mut a, mut b) = (x0.clone(), x0.clone());
        a[i] += eps;
        b[i] -= eps;
        let fd = (f(&a) - f(&b)) / (2.0 * eps as f64);
        assert!(
            (fd - g[i] as f64).abs() < 1e-2,
            "x[{i}]: fd {fd} vs {}",
            g[i]
        );
    }
    // weight gradient
    let xt = Tensor::from_slice(&x0, (2, 2, 5, 4), &dev).unwrap();
    let w0 = wt.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let fw = |v: &[f32]| -> f64 {
        let w = Tensor::from_slice(v, (3, 2, 3, 3), &dev).unwrap();
        let y = conv2d(&xt, &w, 2, 1, 1).unwrap();
        (y * &r)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap() as f64
    };
    let wv = Var::from_tensor(&wt).unwrap();
    let y = conv2d(&xt, wv.as_tensor(), 2, 1, 1).unwrap();
    let g = (y * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let g = g
        .get(wv.as_tensor())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    for i in (0..w0.len()).step_by(2) {
        let (mut a, mut b) = (w0.clone(), w0.clone());
        a[i] += eps;
        b[i] -= eps;
        let fd = (fw(&a) - fw(&b)) / (2.0 * eps as f64);
        assert!(
            (fd - g[i] as f64).abs() < 1e-2,
            "w[{i}]: fd {fd} vs {}",
            g[i]
        );
    }
}

/// The network's input needs no gradient: the backward leaves it out, and the weight
/// gradient is the one computed alongside an input gradient.
#[test]
fn input_without_gradient_gets_none_and_the_same_weight_gradient() {
    let dev = Device::Cpu;
    for &(b, c, h, w, co, k, s, p) in &[(2, 3, 30, 29, 4, 7, 2, 3), (3, 2, 6, 5, 3, 3, 1, 1)] {
        let x = Tensor::randn(0f32, 1.0, (b, c, h, w), &dev).unwrap();
        let wt = Var::from_tensor(&Tensor::randn(0f32, 1.0, (co, c, k, k), &dev).unwrap()).unwrap();
        let y = conv2d(&x, wt.as_tensor(), s, p, 1).unwrap();
        let r = Tensor::randn(0f32, 1.0, y.dims(), &dev).unwrap();
        let g1 = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
        assert!(g1.get(&x).is_none());
        let xv = Var::from_tensor(&x).unwrap();
        let y2 = conv2d(xv.as_tensor(), wt.as_tensor(), s, p, 1).unwrap();
        let g2 = (&y2 * &r).unwrap().sum_all().unwrap().backward().unwrap();
        assert!(g2.get(xv.as_tensor()).is_some());
        let (a, e) = (
            g1.get(wt.as_tensor()).unwrap(),
            g2.get(wt.as_tensor()).unwrap(),
        );
        assert_eq!(max_abs(a, e), 0.0, "{b} {c} {h} {w} k{k} s{s}");
    }
}

/// Forward and gradients are bit-identical on 1, 2 and 3 threads (images in parallel or
/// in turn, per-image or batch GEMMs): a rerun on other hardware gives the same numbers.
#[test]
fn same_bits_on_any_thread_count() {
    let dev = Device::Cpu;
    type Shape9 = (
        usize,
        usize,
        usize,
        usize,
        usize,
        usize,
        usize,
        usize,
        usize,
    );
    let run = |(b, c, h, w, co, k, s, p, groups): Shape9| {
        let x = Var::from_tensor(
            &Tensor::arange(0u32, (b * c * h * w) as u32, &dev)
                .unwrap()
                .to_dtype(candle_core::DType::F32)
                .unwrap()
                .affine(0.37, 0.0)
                .unwrap()
                .sin()
                .unwrap()
                .reshape((b, c, h, w))
                .unwrap(),
        )
        .unwrap();
        let wt = Var::from_tensor(
            &Tensor::arange(0u32, (co * c / groups * k * k) as u32, &dev)
                .unwrap()
                .to_dtype(candle_core::DType::F32)
                .unwrap()
                .affine(0.11, 0.5)
                .unwrap()
                .cos()
                .unwrap()
                .reshape((co, c / groups, k, k))
                .unwrap(),
        )
        .unwrap();
        let y = conv2d(x.as_tensor(), wt.as_tensor(), s, p, groups).unwrap();
        let r = y.sin().unwrap();
        let g = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
        [
            &y,
            g.get(x.as_tensor()).unwrap(),
            g.get(wt.as_tensor()).unwrap(),
        ]
        .map(|t| t.flatten_all().unwrap().to_vec1::<f32>().unwrap())
    };
    for shape in [
        (4, 3, 30, 29, 8, 3, 1, 1, 1),
        (3, 16, 28, 28, 24, 1, 1, 0, 1),
        (4, 8, 12, 11, 16, 3, 2, 1, 1),
        (5, 16, 7, 7, 8, 1, 1, 0, 1),
        (4, 8, 16, 15, 8, 3, 1, 1, 4),
    ] {
        let on = |n: usize| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build()
                .unwrap()
                .install(|| run(shape))
        };
        let one = on(1);
        for n in [2, 3] {
            assert!(one == on(n), "{shape:?}: 1 vs {n} threads differ");
        }
    }
}

/// Grouped convolutions (depthwise included) equal candle's grouped conv2d, forward and
/// both gradients, on the per-image and the batch paths.
#[test]
fn grouped_matches_candle_forward_and_backward() {
    let dev = Device::Cpu;
    for &(b, c, h, w, co, k, s, p, groups) in &[
        (2, 4, 9, 8, 6, 3, 1, 1, 2),
        (2, 6, 30, 29, 6, 3, 1, 1, 3),
        (1, 8, 7, 7, 8, 3, 1, 1, 8),
        (3, 4, 5, 6, 4, 1, 1, 0, 2),
        (2, 6, 28, 28, 12, 1, 1, 0, 3),
        (2, 4, 8, 8, 8, 3, 2, 1, 4),
    ] {
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, c, h, w), &dev).unwrap()).unwrap();
        let wt = Var::from_tensor(&Tensor::randn(0f32, 1.0, (co, c / groups, k, k), &dev).unwrap())
            .unwrap();
        let what = format!("{b} {c} {h} {w} co{co} k{k} s{s} p{p} g{groups}");
        let ours = conv2d(x.as_tensor(), wt.as_tensor(), s, p, groups).unwrap();
        let theirs = x
            .as_tensor()
            .conv2d(wt.as_tensor(), p, s, 1, groups)
            .unwrap();
        assert_eq!(ours.dims(), theirs.dims());
        assert!(max_abs(&ours, &theirs) < 1e-4, "forward {what}");
        let r = Tensor::randn(0f32, 1.0, ours.dims(), &dev).unwrap();
        let g1 = (ours * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = (theirs * &r)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for v in [&x, &wt] {
            let a = g1.get(v.as_tensor()).unwrap();
            let e = g2.get(v.as_tensor()).unwrap();
            assert!(max_abs(a, e) < 1e-3, "grad {what}");
        }
    }
    // channels that do not split into the groups are an error, not a panic
    let x = Tensor::zeros((1, 6, 5, 5), candle_core::DType::F32, &dev).unwrap();
    let wt = Tensor::zeros((4, 3, 3, 3), candle_core::DType::F32, &dev).unwrap();
    assert!(conv2d(&x, &wt, 1, 1, 4).is_err());
}

/// `Precision::Bf16` (where the CPU has AVX512-BF16) equals the f32 op on inputs and
/// weights rounded to bf16: bf16 products are exact in f32, so only the order of the f32
/// sums differs. Both plans (per image, batch), strides, 1x1, the 7x7 stem and groups.
/// Where the CPU lacks AVX512-BF16 the same call is refused, naming the feature.
#[test]
fn bf16_products_equal_f32_over_rounded_operands_or_are_refused() {
    let dev = Device::Cpu;
    let x = Tensor::randn(0f32, 1.0, (2, 4, 9, 9), &dev).unwrap();
    let w = Tensor::randn(0f32, 1.0, (3, 4, 3, 3), &dev).unwrap();
    if !crate::ops::bf16::available() {
        let e = conv2d_in(&x, &w, 1, 1, 1, Precision::Bf16).unwrap_err();
        assert!(e.to_string().contains("AVX512-BF16"), "{e}");
        return;
    }
    let round = |t: &Tensor| {
        t.to_dtype(DType::BF16)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
    };
    for &(b, c, h, co, k, s, p, groups) in &[
        (3, 8, 16, 6, 3, 1, 1, 1),
        (3, 8, 16, 6, 3, 2, 1, 1),
        (4, 8, 6, 10, 3, 1, 1, 1),
        (3, 8, 15, 5, 1, 1, 0, 1),
        (2, 3, 23, 8, 7, 2, 3, 1),
        (3, 8, 14, 6, 3, 1, 1, 2),
        (1, 5, 7, 33, 3, 1, 1, 1),
        (3, 6, 6, 4, 1, 2, 0, 2),
        (3, 8, 5, 6, 1, 1, 0, 1),
        (2, 6, 14, 6, 3, 1, 1, 3),
        // many groups, so they run in parallel: one image (per image, the groups
        // split over the threads) and a small batch (the batch plan)
        (1, 16, 12, 16, 3, 1, 1, 8),
        (3, 16, 4, 8, 3, 1, 1, 8),
    ] {
        let x = Tensor::randn(0f32, 1.0, (b, c, h, h), &dev).unwrap();
        let w = Tensor::randn(0f32, 1.0, (co, c / groups, k, k), &dev).unwrap();
        let want = conv2d(&round(&x), &round(&w), s, p, groups).unwrap();
        let got = conv2d_in(&x, &w, s, p, groups, Precision::Bf16).unwrap();
        assert_eq!(got.dims(), want.dims());
        let scale = want.abs().unwrap().flatten_all().unwrap().max(0).unwrap();
        let tol = 1e-5 * scale.to_scalar::<f32>().unwrap().max(1.0);
        let d = max_abs(&got, &want);
        assert!(
            d <= tol,
            "{b}x{c}x{h} -> {co} k{k} s{s} p{p} g{groups}: {d} > {tol}"
        );
        // and it is a bf16 result, not the f32 one
        assert!(max_abs(&got, &conv2d(&x, &w, s, p, groups).unwrap()) > 0.0);
    }
}

/// The buffer check of the CUDA forward: a grouped weight holds `co * c/groups * k * k`
/// values (not `co * c * k * k`), one group's input channels per output row.
#[test]
fn geometry_fits_grouped_and_plain_operands() {
    let g = Geom::new(&[2, 8, 5, 5], 3, 1, 1, 4).unwrap();
    let (x, co) = (2 * 8 * 5 * 5, 12);
    assert!(g.fits(co, co * 2 * 9, x));
    assert!(!g.fits(co, co * 8 * 9, x), "the ungrouped weight length");
    assert!(
        !g.fits(10, 10 * 2 * 9, x),
        "co not a multiple of the groups"
    );
    assert!(!g.fits(co, co * 2 * 9, x - 1), "a short input");
    let g = Geom::new(&[2, 8, 5, 5], 3, 1, 1, 1).unwrap();
    assert!(g.fits(co, co * 8 * 9, x));
}

/// The BatchNorm folded into a bf16 convolution's store equals the convolution and then
/// the eval affine (+ReLU) pass, bit for bit (NaN where NaN): both plans, groups, tiles
/// cut by the output's edges, with and without the ReLU, a NaN in the input. Where the
/// CPU lacks AVX512-BF16 the fold declines (`None`) and the caller keeps the two ops.
#[test]
fn bf16_conv_with_folded_affine_equals_conv_then_affine() {
    let dev = Device::Cpu;
    let x = Tensor::randn(0f32, 1.0, (2, 4, 9, 9), &dev).unwrap();
    let w = Tensor::randn(0f32, 1.0, (3, 4, 3, 3), &dev).unwrap();
    let affine = (vec![1.0; 3], vec![0.0; 3], true);
    let folded = conv2d_affine(&x, &w, 1, 1, 1, Precision::Bf16, affine.clone()).unwrap();
    if !crate::ops::bf16::available() {
        assert!(folded.is_none());
        return;
    }
    // f32 products are not folded (their GEMM has no epilogue)
    assert!(conv2d_affine(&x, &w, 1, 1, 1, Precision::F32, affine)
        .unwrap()
        .is_none());
    let bits = |t: &Tensor| -> Vec<u32> {
        let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        v.iter()
            .map(|v| if v.is_nan() { u32::MAX } else { v.to_bits() })
            .collect()
    };
    for &(b, c, h, co, k, s, p, groups) in &[
        (3, 8, 16, 30, 3, 1, 1, 1),
        (4, 8, 6, 10, 3, 1, 1, 1),
        (3, 8, 14, 6, 3, 2, 1, 2),
        (2, 6, 15, 17, 1, 1, 0, 1),
        // groups in parallel: each group's channels get their own scale and shift
        (1, 16, 12, 16, 3, 1, 1, 8),
        (3, 16, 4, 8, 3, 1, 1, 8),
    ] {
        let mut xv = Tensor::randn(0f32, 1.0, (b, c, h, h), &dev)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        xv[5] = f32::NAN;
        let x = Tensor::from_vec(xv, (b, c, h, h), &dev).unwrap();
        let w = Tensor::randn(0f32, 1.0, (co, c / groups, k, k), &dev).unwrap();
        let scale: Vec<f32> = (0..co).map(|i| 0.5 + i as f32 * 0.1).collect();
        let shift: Vec<f32> = (0..co).map(|i| i as f32 * 0.3 - 1.0).collect();
        for relu in [false, true] {
            let conv = conv2d_in(&x, &w, s, p, groups, Precision::Bf16).unwrap();
            let want = crate::ops::channel_affine(&conv, scale.clone(), shift.clone(), relu)
                .unwrap()
                .expect("the CPU affine op");
            let got = conv2d_affine(
                &x,
                &w,
                s,
                p,
                groups,
                Precision::Bf16,
                (scale.clone(), shift.clone(), relu),
            )
            .unwrap()
            .expect("folded on this CPU");
            assert_eq!(got.dims(), want.dims());
            assert_eq!(
                bits(&got),
                bits(&want),
                "{b}x{c}x{h} -> {co} k{k} s{s} p{p} g{groups} relu={relu}"
            );
        }
    }
}
