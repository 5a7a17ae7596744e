//! Each of our ops alone at the shapes of a ResNet-50 train step (224 px, batch 32), on
//! `MEAL_DEVICE` (default cpu): milliseconds per call of the forward and of the backward
//! alone, and the convolutions' achieved TFLOP/s (2 * B*Co*Ho*Wo * Ci*k*k per GEMM; the
//! backward has two). Where a step's time goes, op by op, when no GPU profiler is at
//! hand; `MEAL_CUDA_OPS=0` gives candle's ops on the same shapes, `MEAL_DTYPE=bf16` adds
//! the bf16 inference convolutions; SENet-154's grouped convolutions run forward only.
//!   cargo bench -p meal-models --bench ops -- [BATCH] [ITERS]

mod common;

use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use meal_models::ops::{
    batch_norm_train, channel_affine_dev, conv2d, conv2d_in, max_pool2d, Precision,
};

/// Seconds per call of `f` (after one warm-up call), the device synchronised around.
fn time(
    dev: &Device,
    iters: usize,
    f: &mut dyn FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<f64> {
    f()?;
    dev.synchronize()?;
    let t = Instant::now();
    for _ in 0..iters {
        f()?;
    }
    dev.synchronize()?;
    Ok(t.elapsed().as_secs_f64() / iters as f64)
}

/// The backward alone of `f` over `inputs`, in seconds per call: `sum(f(vars))` with its
/// backward, less the same without the backward (the sum's gradient, a broadcast of
/// ones that the ops make contiguous, stays in: one pass over the output).
fn backward_time(
    dev: &Device,
    iters: usize,
    inputs: &[Tensor],
    f: &dyn Fn(&[Tensor]) -> anyhow::Result<Tensor>,
) -> anyhow::Result<f64> {
    let vars: Vec<Var> = inputs
        .iter()
        .map(Var::from_tensor)
        .collect::<Result<_, _>>()?;
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let fwd = time(dev, iters, &mut || {
        f(&ts)?.sum_all()?;
        Ok(())
    })?;
    let both = time(dev, iters, &mut || {
        f(&ts)?.sum_all()?.backward()?;
        Ok(())
    })?;
    Ok((both - fwd).max(0.0))
}

/// `", bf16 fwd .. ms (.. TFLOP/s)"`: the bf16 inference convolution of `x` and `w` (f32)
/// timed. On the CPU bf16 products of the f32 tensors (`Precision::Bf16`, AVX512-BF16),
/// elsewhere bf16 tensors (converted before the clock starts).
fn bf16_fwd(
    dev: &Device,
    iters: usize,
    (x, w): (&Tensor, &Tensor),
    (stride, pad, groups): (usize, usize, usize),
    flops: f64,
) -> anyhow::Result<String> {
    let t = if x.device().is_cpu() {
        time(dev, iters, &mut || {
            conv2d_in(x, w, stride, pad, groups, Precision::Bf16)?;
            Ok(())
        })?
    } else {
        let (x, w) = (x.to_dtype(DType::BF16)?, w.to_dtype(DType::BF16)?);
        time(dev, iters, &mut || {
            conv2d(&x, &w, stride, pad, groups)?;
            Ok(())
        })?
    };
    Ok(format!(
        ", bf16 fwd {:7.3} ms ({:5.1} TFLOP/s)",
        t * 1e3,
        flops / t / 1e12
    ))
}

fn main() -> anyhow::Result<()> {
    common::log_to_stderr();
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let batch: usize = args.first().map_or(Ok(32), |a| a.parse())?;
    let iters: usize = args.get(1).map_or(Ok(10), |a| a.parse())?;
    let dev = meal_models::parse_device(&std::env::var("MEAL_DEVICE").unwrap_or("cpu".into()))?;
    let bf16 = std::env::var("MEAL_DTYPE").is_ok_and(|d| d == "bf16");
    let randn = |dims: &[usize]| Tensor::randn(0f32, 1.0, dims, &dev);
    println!(
        "# ops at ResNet-50 shapes, batch {batch}, {:?}, {} CPU threads",
        dev.location(),
        candle_core::utils::get_num_threads()
    );
    // (cin, size, cout, kernel, stride, padding): the stem, then each stage's 1x1 and 3x3
    let convs = [
        (3, 224, 64, 7, 2, 3),
        (64, 56, 64, 1, 1, 0),
        (64, 56, 64, 3, 1, 1),
        (64, 56, 256, 1, 1, 0),
        (256, 56, 128, 1, 1, 0),
        (128, 56, 128, 3, 2, 1),
        (512, 28, 128, 1, 1, 0),
        (128, 28, 128, 3, 1, 1),
        (1024, 14, 256, 1, 1, 0),
        (256, 14, 256, 3, 1, 1),
        (2048, 7, 512, 1, 1, 0),
        (512, 7, 512, 3, 1, 1),
    ];
    for (ci, s, co, k, st, p) in convs {
        let (x, w) = (randn(&[batch, ci, s, s])?, randn(&[co, ci, k, k])?);
        let o = (s + 2 * p - k) / st + 1;
        let flops = 2.0 * (batch * co * o * o * ci * k * k) as f64;
        let fwd = time(&dev, iters, &mut || {
            conv2d(&x, &w, st, p, 1)?;
            Ok(())
        })?;
        let bwd = backward_time(&dev, iters, &[x.clone(), w.clone()], &|t| {
            Ok(conv2d(&t[0], &t[1], st, p, 1)?)
        })?;
        let mut line = format!(
            "conv {ci:>4}->{co:<4} k{k} s{st} @{s:<3}: fwd {:7.3} ms ({:5.1} TFLOP/s), bwd {:7.3} ms ({:5.1} TFLOP/s)",
            fwd * 1e3,
            flops / fwd / 1e12,
            bwd * 1e3,
            2.0 * flops / bwd / 1e12
        );
        if bf16 {
            line += &bf16_fwd(&dev, iters, (&x, &w), (st, p, 1), flops)?;
        }
        println!("{line}");
    }
    // SENet-154's grouped 3x3 convolutions (64 groups), forward only: a teacher's
    // inference (on CUDA one batched GEMM over the groups; candle's runs one per group)
    for (ci, s, co) in [
        (128, 56, 256),
        (256, 28, 512),
        (512, 14, 1024),
        (1024, 7, 2048),
    ] {
        let groups = 64;
        let (x, w) = (randn(&[batch, ci, s, s])?, randn(&[co, ci / groups, 3, 3])?);
        let flops = 2.0 * (batch * co * s * s * (ci / groups) * 9) as f64;
        let fwd = time(&dev, iters, &mut || {
            conv2d(&x, &w, 1, 1, groups)?;
            Ok(())
        })?;
        let mut line = format!(
            "conv {ci:>4}->{co:<4} k3 s1 @{s:<3} g{groups}: fwd {:7.3} ms ({:5.1} TFLOP/s)",
            fwd * 1e3,
            flops / fwd / 1e12
        );
        if bf16 {
            line += &bf16_fwd(&dev, iters, (&x, &w), (1, 1, groups), flops)?;
        }
        println!("{line}");
    }
    let x = randn(&[batch, 64, 112, 112])?;
    if max_pool2d(&x, 3, 2, 1)?.is_some() {
        let pool = |t: &[Tensor]| -> anyhow::Result<Tensor> {
            max_pool2d(&t[0], 3, 2, 1)?.ok_or_else(|| anyhow::anyhow!("max-pool declined"))
        };
        let ins = [x.clone()];
        let fwd = time(&dev, iters, &mut || {
            pool(&ins)?;
            Ok(())
        })?;
        let bwd = backward_time(&dev, iters, &ins, &pool)?;
        println!(
            "max-pool 64 @112 k3 s2 p1: fwd {:7.3} ms, bwd {:7.3} ms",
            fwd * 1e3,
            bwd * 1e3
        );
    } else {
        println!("max-pool: not our op here (the layers build it from slices)");
    }
    for (c, s) in [(64, 112), (256, 56), (512, 28), (2048, 7)] {
        let x = randn(&[batch, c, s, s])?;
        let (g, b) = (randn(&[c])?, randn(&[c])?);
        let bn = |t: &[Tensor]| -> anyhow::Result<Tensor> {
            Ok(match batch_norm_train(&t[0], &t[1], &t[2], 1e-5, true)? {
                Some(o) => o.y,
                None => {
                    // candle's: the normalisation from batch statistics, then ReLU
                    let m = t[0].mean_keepdim(0)?.mean_keepdim(2)?.mean_keepdim(3)?;
                    let d = t[0].broadcast_sub(&m)?;
                    let v = d.sqr()?.mean_keepdim(0)?.mean_keepdim(2)?.mean_keepdim(3)?;
                    let y = d.broadcast_div(&(v + 1e-5)?.sqrt()?)?;
                    let sh = (1, c, 1, 1);
                    y.broadcast_mul(&t[1].reshape(sh)?)?
                        .broadcast_add(&t[2].reshape(sh)?)?
                        .relu()?
                }
            })
        };
        let ins = [x.clone(), g.clone(), b.clone()];
        let fwd = time(&dev, iters, &mut || {
            bn(&ins)?;
            Ok(())
        })?;
        let bwd = backward_time(&dev, iters, &ins, &bn)?;
        let (sc, sh) = (g.reshape((1, c, 1, 1))?, b.reshape((1, c, 1, 1))?);
        let eval = time(&dev, iters, &mut || {
            if channel_affine_dev(&x, &sc, &sh, true)?.is_none() {
                x.broadcast_mul(&sc)?.broadcast_add(&sh)?.relu()?;
            }
            Ok(())
        })?;
        println!(
            "batch-norm+relu {c} @{s}: train fwd {:7.3} ms, train bwd {:7.3} ms, eval (device affine) {:7.3} ms",
            fwd * 1e3,
            bwd * 1e3,
            eval * 1e3
        );
    }
    Ok(())
}
