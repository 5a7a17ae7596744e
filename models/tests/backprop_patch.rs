//! The vendored candle-core patch (vendor/README.md): backward stores a node's first
//! gradient instead of adding it into zeros. Gradients must be what the calculus says,
//! with fan-in, subtraction, strided (transposed) gradients and a shape check kept.

use candle_core::{Device, Tensor, Var};

fn vec(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

#[test]
fn gradients_with_fan_in_subtraction_and_views() {
    let dev = Device::Cpu;
    let x = Var::from_slice(&[1f32, 2., 3., 4., 5., 6.], (2, 3), &dev).unwrap();
    let y = Var::from_slice(&[0.5f32, -1., 2., 3., 1., -2.], (2, 3), &dev).unwrap();
    let w = Tensor::from_slice(&[1f32, 2., 3., 4., 5., 6.], (3, 2), &dev).unwrap();
    // f = sum((x - y) * x) + sum(x^T * w): x reaches f three times (fan-in), y through
    // a subtraction (first gradient negated), and x^T's gradient is a transposed view
    let xs = x.as_tensor();
    let f = ((xs - y.as_tensor()).unwrap() * xs)
        .unwrap()
        .sum_all()
        .unwrap();
    let g = (xs.t().unwrap() * &w).unwrap().sum_all().unwrap();
    let grads = (f + g).unwrap().backward().unwrap();
    let (xv, yv, wv) = (vec(xs), vec(y.as_tensor()), vec(&w.t().unwrap()));
    // d/dx = 2x - y + w^T, d/dy = -x
    let want_x: Vec<f32> = (0..6).map(|i| 2.0 * xv[i] - yv[i] + wv[i]).collect();
    let want_y: Vec<f32> = xv.iter().map(|v| -v).collect();
    assert_eq!(vec(grads.get(xs).unwrap()), want_x);
    assert_eq!(vec(grads.get(y.as_tensor()).unwrap()), want_y);
    assert!(grads.get(xs).unwrap().is_contiguous());
}
