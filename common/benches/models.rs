//! Model throughput, the Rust side of `bench/models.sh`:
//!   cargo bench -p meal-common --bench models -- infer ARCH RES BATCH ITERS
//!   cargo bench -p meal-common --bench models -- train ARCH RES BATCH ITERS
//! `infer`: eval-mode forward (teacher). `train`: MEAL V2 student step - train-mode
//! forward, soft CE to random teacher probabilities + discriminator BCE on
//! [softmax(student); teacher], one backward, plain SGD over student and discriminator
//! (momentum arrives with the fast-kernels issue). Threads: RAYON_NUM_THREADS.

use std::time::Instant;

use candle_core::{DType, Device, Tensor, D};
use meal_common::loss::{bce_with_logits, soft_cross_entropy};
use meal_common::models::{trainable, Discriminator, ResNet};

fn main() -> anyhow::Result<()> {
    meal_common::tune_allocator();
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    if args.len() != 5 {
        anyhow::bail!("usage: models infer|train ARCH RES BATCH ITERS");
    }
    let (mode, arch) = (args[0].as_str(), args[1].as_str());
    let res: usize = args[2].parse()?;
    let batch: usize = args[3].parse()?;
    let iters: usize = args[4].parse()?;
    let dev = Device::Cpu;
    let classes = 1000;
    let model = ResNet::from_preset(arch, classes, &dev, 0)?;
    let x = Tensor::randn(0f32, 1.0, (batch, 3, res, res), &dev)?;
    let disc = Discriminator::new(classes, true, &dev, 1)?;
    let teacher = candle_nn::ops::softmax(
        &Tensor::randn(0f32, 1.0, (batch, classes), &dev)?,
        D::Minus1,
    )?;
    let targets = Tensor::cat(
        &[
            Tensor::new(&[1f32, 0.0], &dev)?.broadcast_as((batch, 2))?,
            Tensor::new(&[0f32, 1.0], &dev)?.broadcast_as((batch, 2))?,
        ],
        0,
    )?;
    let mut vars = trainable(model.entries());
    vars.extend(trainable(disc.entries()));
    let lr = 0.01;
    let step = || -> anyhow::Result<()> {
        match mode {
            "infer" => {
                let y = model.forward_t(&x, false)?;
                let _ = candle_nn::ops::softmax(&y, D::Minus1)?
                    .to_dtype(DType::F32)?
                    .sum_all()?
                    .to_scalar::<f32>()?;
            }
            _ => {
                let logits = model.forward_t(&x, true)?;
                let kd = soft_cross_entropy(&logits, &teacher)?;
                let sp = candle_nn::ops::softmax(&logits, D::Minus1)?;
                let d = disc.forward(&Tensor::cat(&[&sp, &teacher], 0)?)?;
                let loss = (kd + bce_with_logits(&d, &targets)?)?;
                let grads = loss.backward()?;
                for (_, v) in &vars {
                    if let Some(g) = grads.get(v.as_tensor()) {
                        v.set(&(v.as_tensor() - (g * lr)?)?)?;
                    }
                }
            }
        }
        Ok(())
    };
    step()?; // warm-up
    let t = Instant::now();
    for _ in 0..iters {
        step()?;
    }
    let dt = t.elapsed().as_secs_f64() / iters as f64;
    println!(
        "ours {mode} {arch} res {res} batch {batch}: {:.2} img/s ({:.3} s/step, {} threads)",
        batch as f64 / dt,
        dt,
        candle_core::utils::get_num_threads()
    );
    Ok(())
}
