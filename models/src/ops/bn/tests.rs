//! The BatchNorm ops against their unfused definitions and finite differences.

use super::*;
use candle_core::{Device, Var};

fn v(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

fn close(a: &[f32], b: &[f32], tol: f32) {
    let worst = a
        .iter()
        .zip(b)
        .map(|(p, q)| (p - q).abs())
        .fold(0f32, f32::max);
    assert!(a.len() == b.len() && worst < tol, "differ by {worst}");
}

/// The fused BN + ReLU (train) and affine + ReLU (eval) equal the unfused ops,
/// forward and backward.
#[test]
fn fused_relu_equals_bn_then_relu() {
    let dev = Device::Cpu;
    let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (3, 4, 5, 6), &dev).unwrap()).unwrap();
    let g = Var::from_tensor(&Tensor::randn(1f32, 0.5, 4, &dev).unwrap()).unwrap();
    let b = Var::from_tensor(&Tensor::randn(0f32, 0.5, 4, &dev).unwrap()).unwrap();
    let r = Tensor::randn(0f32, 1.0, (3, 4, 5, 6), &dev).unwrap();
    let run = |fused: bool| {
        let (xs, gs, bs) = (x.as_tensor(), g.as_tensor(), b.as_tensor());
        let y = if fused {
            batch_norm_train(xs, gs, bs, 1e-5, true).unwrap().unwrap().y
        } else {
            let y = batch_norm_train(xs, gs, bs, 1e-5, false)
                .unwrap()
                .unwrap()
                .y;
            crate::ops::relu(&y).unwrap()
        };
        let grads = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let gr = |t: &Tensor| v(grads.get(t).unwrap());
        (v(&y), gr(xs), gr(gs), gr(bs))
    };
    let (a, b2) = (run(true), run(false));
    close(&a.0, &b2.0, 1e-6);
    close(&a.1, &b2.1, 1e-5);
    close(&a.2, &b2.2, 1e-4);
    close(&a.3, &b2.3, 1e-4);
    assert!(a.0.contains(&0.0) && a.0.iter().any(|&y| y > 0.0));

    let (scale, shift) = (vec![0.5f32, -1.0, 2.0, 0.1], vec![0.1f32, 0.2, -0.3, 0.0]);
    let xs = x.as_tensor();
    let fused = channel_affine(xs, scale.clone(), shift.clone(), true)
        .unwrap()
        .unwrap();
    let sc = Tensor::from_slice(&scale, (1, 4, 1, 1), &dev).unwrap();
    let sh = Tensor::from_slice(&shift, (1, 4, 1, 1), &dev).unwrap();
    let plain = xs
        .broadcast_mul(&sc)
        .unwrap()
        .broadcast_add(&sh)
        .unwrap()
        .relu()
        .unwrap();
    close(&v(&fused), &v(&plain), 1e-6);
    let g1 = (&fused * &r)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let g2 = (&plain * &r)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    close(&v(g1.get(xs).unwrap()), &v(g2.get(xs).unwrap()), 1e-6);
}

/// The one-pass shifted statistics equal a two-pass f64 reference, also where the
/// mean is 1e5 standard deviations from zero (an unshifted sum of squares would
/// cancel the variance away in f64 there) and for planes not a multiple of 8.
#[test]
fn one_pass_statistics_equal_two_pass() {
    let (b, c, hw) = (3, 2, 13);
    let x: Vec<f32> = (0..b * c * hw)
        .map(|i| {
            let ch = (i / hw) % c;
            let noise = ((i * 7919 % 101) as f32 - 50.0) / 50.0;
            if ch == 0 {
                1000.0 + 0.01 * noise
            } else {
                noise
            }
        })
        .collect();
    let (mean, var) = channel_stats(&x, b, c, hw);
    for ch in 0..c {
        let vals: Vec<f64> = (0..b)
            .flat_map(|i| x[(i * c + ch) * hw..(i * c + ch + 1) * hw].iter())
            .map(|&v| v as f64)
            .collect();
        let m = vals.iter().sum::<f64>() / vals.len() as f64;
        let v = vals.iter().map(|u| (u - m) * (u - m)).sum::<f64>() / vals.len() as f64;
        assert!(
            (mean[ch] - m).abs() <= 1e-12 * m.abs().max(1.0),
            "mean {ch}"
        );
        assert!(
            (var[ch] - v).abs() <= 1e-9 * v,
            "var {ch}: {} vs {v}",
            var[ch]
        );
    }
}
