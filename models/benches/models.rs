//! Model throughput, the Rust side of `bench/models.sh`:
//!   cargo bench -p meal-models --bench models -- infer ARCH RES BATCH ITERS
//!   cargo bench -p meal-models --bench models -- train|online|ce ARCH RES BATCH ITERS
//! `infer`: eval-mode forward (teacher). `train`: the offline MEAL V2 student step -
//! train-mode forward, soft CE to cached teacher probabilities + discriminator BCE on
//! [softmax(student); teacher], one backward, SGD momentum 0.9 over student and
//! discriminator. `online`: the same with the teachers (resnet152s + senet154, eval
//! mode, mean softmax) run on the batch every step. `ce`: the pure student step
//! (hard-label CE, no discriminator). Threads: RAYON_NUM_THREADS. Device: MEAL_DEVICE
//! (`cpu` default, `cuda:0`); teacher dtype for `infer`: MEAL_DTYPE (`f32` default,
//! `bf16`, `f16`; softmax in f32); for the train modes on a GPU MEAL_DTYPE=bf16 is
//! mixed precision (`meal-student --amp true`: `ResNet::set_autocast`). On a GPU the
//! train modes run their f32 GEMMs on TF32 as `meal-student` does by default, `infer`
//! in exact f32 as precompute does;
//! `MEAL_CUDA_TF32=0|1` sets it for all. Each step ends by reading a scalar, so GPU work is
//! synchronised before the clock stops. `MEAL_OP_PROFILE=1` adds the time of each of our
//! ops on CUDA per step (`ops::profile`).

mod common;

use std::time::Instant;

use candle_core::{DType, Device, Tensor, D};
use meal_models::loss::{bce_with_logits, soft_cross_entropy};
use meal_models::optim::{split_decay, Sgd, SgdConfig};
use meal_models::{Discriminator, ResNet};

/// The CUDA switches off their defaults, named in the throughput line (gpu_summary.py
/// reads them as variants): the memory pool released at each synchronisation, one GEMM
/// per chunk for small planes.
fn cuda_switches(dev: &Device) -> String {
    let mut s = String::new();
    if dev.is_cuda() {
        if !meal_models::device::pool_kept() {
            s += ", pool-release";
        }
        match meal_models::ops::cuda_one_gemm_below() {
            0 => {}
            p => s += &format!(", one-gemm below {p}"),
        }
    }
    s
}

fn main() -> anyhow::Result<()> {
    common::log_to_stderr();
    // MEAL_NO_TUNE=1 keeps glibc's defaults, to compare
    if std::env::var_os("MEAL_NO_TUNE").is_none() {
        meal_models::tune_allocator();
    }
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    if args.len() != 5 {
        anyhow::bail!("usage: models infer|train|online|ce ARCH RES BATCH ITERS");
    }
    let (mode, arch) = (args[0].as_str(), args[1].as_str());
    let res: usize = args[2].parse()?;
    let batch: usize = args[3].parse()?;
    let iters: usize = args[4].parse()?;
    let dev = meal_models::parse_device(&std::env::var("MEAL_DEVICE").unwrap_or("cpu".into()))?;
    let dtype =
        meal_models::ensemble::parse_dtype(&std::env::var("MEAL_DTYPE").unwrap_or("f32".into()))?;
    // TF32 GEMMs on a GPU as meal-student trains by default (`--tf32`); teachers exact
    // f32 as precompute runs them; MEAL_CUDA_TF32=0|1 sets it for every mode
    let tf32 = match std::env::var("MEAL_CUDA_TF32").as_deref() {
        Ok("1") => true,
        Ok("0") => false,
        _ => mode != "infer",
    };
    meal_models::set_tf32(&dev, tf32)?;
    let classes = 1000;
    let model = if mode == "infer" {
        // as a teacher: its BatchNorms' eval affine computed once (Teacher::load)
        let m = ResNet::from_preset_as(arch, classes, &dev, dtype)?;
        m.freeze_batch_norms()?;
        m
    } else {
        let mut m = ResNet::from_preset(arch, classes, &dev, 0)?;
        if dtype != DType::F32 {
            if !dev.is_cuda() {
                anyhow::bail!("MEAL_DTYPE={dtype:?} for {mode}: mixed precision trains on a GPU");
            }
            m.set_autocast(Some(dtype));
        }
        m
    };
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
    let (a, b) = split_decay(model.entries(), "s.", 0.01, 0.0);
    let (c, d) = split_decay(disc.entries(), "d.", 0.01, 0.0);
    let mut opt = Sgd::new(vec![a, b, c, d], SgdConfig::default())?;
    let teachers = if mode == "online" {
        let t = vec![
            ResNet::from_preset("resnet152s", classes, &dev, 2)?,
            ResNet::from_preset("senet154", classes, &dev, 3)?,
        ];
        t.iter().try_for_each(|m| m.freeze_batch_norms())?;
        t
    } else {
        vec![]
    };
    let mut hard = vec![0f32; batch * classes];
    for i in 0..batch {
        hard[i * classes + (i * 37) % classes] = 1.0;
    }
    let hard = Tensor::from_vec(hard, (batch, classes), &dev)?;
    let mut step = || -> anyhow::Result<()> {
        match mode {
            "infer" => {
                // the model's own dtype: f32 for a CPU bf16 model (bf16 products only)
                let y = model
                    .forward_t(&x.to_dtype(model.dtype())?, false)?
                    .to_dtype(DType::F32)?;
                let _ = candle_nn::ops::softmax(&y, D::Minus1)?
                    .to_dtype(DType::F32)?
                    .sum_all()?
                    .to_scalar::<f32>()?;
            }
            "ce" => {
                let loss = soft_cross_entropy(&model.forward_t(&x, true)?, &hard)?;
                opt.step(&loss.backward()?, 1.0)?;
                loss.to_scalar::<f32>()?;
            }
            _ => {
                let mut t = teacher.clone();
                if !teachers.is_empty() {
                    let mut sum =
                        candle_nn::ops::softmax(&teachers[0].forward_t(&x, false)?, D::Minus1)?;
                    for tm in &teachers[1..] {
                        sum =
                            (sum + candle_nn::ops::softmax(&tm.forward_t(&x, false)?, D::Minus1)?)?;
                    }
                    t = (sum / teachers.len() as f64)?;
                }
                let logits = model.forward_t(&x, true)?;
                let kd = soft_cross_entropy(&logits, &t)?;
                let sp = candle_nn::ops::softmax(&logits, D::Minus1)?;
                let d = disc.forward(&Tensor::cat(&[&sp, &t], 0)?)?;
                let loss = (kd + bce_with_logits(&d, &targets)?)?;
                opt.step(&loss.backward()?, 1.0)?;
                loss.to_scalar::<f32>()?;
            }
        }
        Ok(())
    };
    step()?; // warm-up
    meal_models::ops::profile::take();
    let t = Instant::now();
    for _ in 0..iters {
        step()?;
    }
    let dt = t.elapsed().as_secs_f64() / iters as f64;
    println!(
        "ours {mode} {arch} res {res} batch {batch}: {:.2} img/s ({:.3} s/step, {} threads, {:?} {}{}{}{}{}{})",
        batch as f64 / dt,
        dt,
        candle_core::utils::get_num_threads(),
        dev.location(),
        meal_models::ensemble::dtype_name(dtype),
        if tf32 && dev.is_cuda() { ", tf32" } else { "" },
        if meal_models::ops::cudnn_convs() && dev.is_cuda() {
            // calls cuDNN refused ran ours: say how many, so the line is honest
            match meal_models::ops::cudnn_refused_calls() {
                0 => ", cuDNN convolutions".to_string(),
                n => format!(", cuDNN convolutions ({n} calls refused: ours ran those)"),
            }
        } else {
            String::new()
        },
        // a frozen teacher's fused NHWC forward (resnet/fused.rs) under cuDNN
        if mode == "infer" && model.runs_fused() { ", fused" } else { "" },
        if meal_models::ops::profile::enabled() { ", profiled" } else { "" },
        cuda_switches(&dev)
    );
    if meal_models::ops::profile::enabled() {
        // our ops' share of the (profiled, so slower) step; the rest is candle's
        let ops = meal_models::ops::profile::take();
        if ops.is_empty() {
            println!("profile: none of our ops ran on a CUDA device");
        }
        let ours: f64 = ops.iter().map(|o| o.seconds).sum::<f64>() / iters as f64;
        println!(
            "profile (MEAL_OP_PROFILE=1, device synchronised around each of our ops): our ops {:.1} ms of {:.1} ms per step ({:.0}%), the rest candle's ops, launches and copies",
            ours * 1e3,
            dt * 1e3,
            100.0 * ours / dt
        );
        for o in ops {
            println!(
                "  {:<28} {:>7.1} calls/step {:8.2} ms/step {:5.1}%",
                o.op,
                o.calls as f64 / iters as f64,
                o.seconds / iters as f64 * 1e3,
                100.0 * o.seconds / iters as f64 / dt
            );
        }
    }
    Ok(())
}
