//! What stops a run or an eval midway: damaged weights, losses that diverge and data
//! that cannot be read stop it, naming the cause and keeping what was done.

use super::*;

#[test]
fn a_non_finite_loss_stops_the_run() {
    let f = fixture();
    // initial weights with one NaN (a corrupt checkpoint): the first step's loss is NaN
    let m = ResNet::from_preset("demo_tiny", 10, &Device::Cpu, 0).unwrap();
    let p = f.root.join("nan.safetensors");
    save_with(&m, &p, "fc.weight", 3, f32::NAN);
    let mut a = args(&f, "nan");
    a.init = Some(p);
    let e = go(a).unwrap_err();
    let msg = format!("{e:#}");
    // refused before training, naming the file and the tensor
    assert!(
        msg.contains("non-finite") && msg.contains("nan.safetensors") && msg.contains("fc.weight"),
        "{msg}"
    );
    assert!(
        !f.root.join("nan/student.safetensors").exists(),
        "no weights written after NaN"
    );
    // a diverging lr: says where, that no checkpoint exists yet, and what to change
    let mut a = args(&f, "diverged");
    a.lr = Some(1e12);
    let msg = format!("{:#}", go(a).unwrap_err());
    assert!(
        msg.contains("non-finite loss")
            && msg.contains("before any checkpoint")
            && msg.contains("--lr"),
        "{msg}"
    );
    assert!(!f.root.join("diverged/checkpoint").exists(), "{msg}");
    // with a checkpoint at every step: the one before the non-finite loss is offered as
    // a start, and so is the run's initial weights, for a checkpoint its steps had
    // already taken far off (its weights finite, its first step's loss not)
    let mut a = args(&f, "diverged_saved");
    a.lr = Some(1e12);
    a.checkpoint_every = Some("1".into());
    let msg = format!("{:#}", go(a).unwrap_err());
    assert!(
        msg.contains("the training diverged")
            && msg.contains("The last checkpoint (epoch 1 after its step 1, step 1 of the run)")
            && msg.contains("start from the run's initial weights instead"),
        "{msg}"
    );
    let mut a = args(&f, "from_saved");
    a.init = Some(f.root.join("diverged_saved/checkpoint/student.safetensors"));
    a.lr = Some(1e-3);
    let msg = format!("{:#}", go(a).unwrap_err());
    assert!(
        msg.contains("at epoch 1 batch 1") || msg.contains("after step 1 of the run"),
        "{msg}"
    );
}

/// A running variance that overflows while the loss stays finite (a train step
/// normalises by its batch's statistics) stops the run at that step, naming the
/// statistic, with no checkpoint written: stem weights scaled by 1e25 give the stem a
/// batch variance past f32's range (its output, normalised by the BatchNorm op's f64
/// statistics, stays finite, and so does the loss).
#[test]
fn an_overflowing_batchnorm_statistic_stops_the_run_at_its_step() {
    let f = fixture();
    let m = ResNet::from_preset("demo_tiny", 10, &Device::Cpu, 0).unwrap();
    let p = f.root.join("huge.safetensors");
    m.save(&p).unwrap();
    let mut sd = read_state_dict(&p, &Device::Cpu).unwrap();
    let w = sd.get_mut("conv1.0.weight").unwrap();
    *w = (&*w * 1e25).unwrap();
    candle_core::safetensors::save(&sd, &p).unwrap();
    let mut a = args(&f, "huge");
    a.init = Some(p);
    let msg = format!("{:#}", go(a).unwrap_err());
    assert!(
        msg.contains(
            "after step 1 of the run (epoch 1 batch 1) the student's conv1.1.running_var is not finite"
        ) && msg.contains("before any checkpoint"),
        "{msg}"
    );
    assert!(!f.root.join("huge/checkpoint").exists(), "{msg}");
}

/// Evaluating a model with a NaN weight is an error naming the image, not 100% top-1
/// (a NaN score compares false with every other); a dataset whose every file is
/// unreadable is an error, not 0 images at 0%.
#[test]
fn eval_refuses_non_finite_scores_and_empty_data() {
    let f = fixture();
    let val = std::sync::Arc::new(
        meal_data::Dataset::open(&f.root.join("data/val"), meal_data::LinkPolicy::StayInside)
            .unwrap(),
    );
    let model = ResNet::from_preset("demo_tiny", 10, &Device::Cpu, 1).unwrap();
    let nan = f.root.join("nan.safetensors");
    save_with(&model, &nan, "fc.bias", 3, f32::NAN);
    // such a file is refused at load, naming the tensor
    let broken = ResNet::from_preset("demo_tiny", 10, &Device::Cpu, 1).unwrap();
    let e = broken
        .load_weights(&nan, meal_models::LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("tensor fc.bias holds non-finite values"), "{e}");
    // a model that holds one all the same (set in memory) scores NaN
    let fc = broken
        .entries()
        .iter()
        .find(|e| e.name == "fc.bias")
        .unwrap();
    let mut v = fc.var.as_tensor().to_vec1::<f32>().unwrap();
    v[3] = f32::NAN;
    fc.var
        .set(&candle_core::Tensor::from_vec(v, 10, &Device::Cpu).unwrap())
        .unwrap();
    let read = meal_student::eval::EvalRead {
        threads: 1,
        policy: meal_data::BadFilePolicy::Skip,
        bar: false,
        batch: meal_student::eval::EVAL_BATCH,
    };
    let spec = meal_data::CropSpec::new(
        24,
        meal_data::Filter::Bilinear,
        meal_data::Normalize::IMAGENET,
    )
    .unwrap();
    let ok = meal_student::eval::evaluate(&model, &val, spec, read, &Device::Cpu, None).unwrap();
    assert_eq!(ok.images, 10);
    let e = meal_student::eval::evaluate(&broken, &val, spec, read, &Device::Cpu, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("not finite"), "{e}");

    for s in val.samples() {
        std::fs::write(val.full_path(s), b"").unwrap();
    }
    let e = meal_student::eval::evaluate(&model, &val, spec, read, &Device::Cpu, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no image could be read"), "{e}");
    // a list file's dataset is named by the list, not its directory
    let list = f.root.join("data/val-list.csv");
    let rows: String = val
        .samples()
        .iter()
        .map(|s| format!("val/{},{}\n", s.path, s.label))
        .collect();
    std::fs::write(&list, rows).unwrap();
    let listed = std::sync::Arc::new(
        meal_data::Dataset::open(&list, meal_data::LinkPolicy::FollowAnywhere).unwrap(),
    );
    let e = meal_student::eval::evaluate(&model, &listed, spec, read, &Device::Cpu, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("val-list.csv: no image could be read"), "{e}");
}

/// An epoch in which every image was unreadable fails naming --data (it reported a loss
/// of 0 and wrote an untrained student), while an unreadable --val leaves the epoch's
/// val figures empty; a resume already at `--max-steps` runs no step.
#[test]
fn an_empty_epoch_fails_and_a_reached_step_limit_runs_nothing() {
    let f = fixture();
    let mut a = args(&f, "limited");
    a.max_steps = Some(2);
    let r = go(a.clone()).unwrap();
    assert!(r.interrupted);
    assert_eq!(r.steps, 2);
    a.resume = Some(true);
    let again = go(a).unwrap();
    assert_eq!((again.steps, again.step_losses.len()), (2, 0));

    // a --val with no readable image: the epoch ends, its val figures null (not 0)
    let val_dir = f.root.join("data/val");
    let val = meal_data::Dataset::open(&val_dir, meal_data::LinkPolicy::StayInside).unwrap();
    for s in val.samples() {
        std::fs::write(val.full_path(s), b"").unwrap();
    }
    let mut a = args(&f, "unreadable_val");
    a.val = Some(val_dir);
    a.epochs = Some(1);
    let r = go(a).unwrap();
    assert_eq!(r.history.len(), 1);
    assert_eq!(r.history[0].val_top1, None);

    let ds = meal_data::Dataset::open(&f.data, meal_data::LinkPolicy::StayInside).unwrap();
    for s in ds.samples() {
        std::fs::write(ds.full_path(s), b"").unwrap();
    }
    let mut a = args(&f, "unreadable");
    a.labels = None;
    a.loss = Some("ce".into());
    a.epochs = Some(1);
    let e = format!("{:#}", go(a).unwrap_err());
    assert!(e.contains("no crop could be read from --data"), "{e}");
    assert!(!f.root.join("unreadable/student.safetensors").exists());
}

/// `eval --weights` refuses non-finite weights by tensor name, as `--init` does (an
/// infinite running mean gave finite, wrong scores); a checkpoint without its
/// state.json is named as incomplete on --resume (a plain run says to resume it).
#[test]
fn eval_refuses_non_finite_weights_and_an_incomplete_checkpoint_is_named() {
    let f = fixture();
    let model = ResNet::from_preset("demo_tiny", 10, &Device::Cpu, 1).unwrap();
    let w = f.root.join("inf.safetensors");
    save_with(&model, &w, "bn1.running_mean", 0, f32::INFINITY);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_meal-student"))
        .arg("eval")
        .arg("--data")
        .arg(f.root.join("data/val"))
        .args(["--arch", "demo_tiny", "--threads", "1", "--weights"])
        .arg(&w)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("tensor bn1.running_mean holds non-finite values"),
        "{err}"
    );
    // a negative running variance is refused by the loader (it trained as --init, and
    // its student evaluated to NaN)
    let neg = f.root.join("neg.safetensors");
    save_with(&model, &neg, "bn1.running_var", 0, -1.0);
    let eval = |extra: &[&str], w: &Path| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_meal-student"))
            .arg("eval")
            .arg("--data")
            .arg(f.root.join("data/val"))
            .args(["--threads", "1"])
            .args(extra)
            .arg(w)
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let err = eval(&["--arch", "demo_tiny", "--weights"], &neg);
    assert!(
        err.contains("bn1.running_var: a negative running variance"),
        "{err}"
    );
    // the hint to score a subset by name only for weights of more classes than the
    // data's (10): it was given for weights of fewer
    for (n, hinted) in [(3, false), (12, true)] {
        let w = f.root.join(format!("classes-{n}.safetensors"));
        ResNet::from_preset("demo_tiny", n, &Device::Cpu, 1)
            .unwrap()
            .save(&w)
            .unwrap();
        let err = eval(&["--arch", "demo_tiny", "--weights"], &w);
        assert!(
            err.contains(&format!("the weights classify {n} classes"))
                && err.contains("weights of more classes than --data's") == hinted,
            "{n}: {err}"
        );
    }
    // a negative real in exponent form (or -inf) reaches the flag's own check: clap
    // had called it an unexpected argument '-1'
    for v in ["-1e-3", "-inf", "-0.1"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_meal-student"))
            .args([
                "train", "--loss", "ce", "--epochs", "1", "--lr", v, "--data",
            ])
            .arg(f.root.join("data/train"))
            .arg("--out")
            .arg(f.root.join("neg-lr"))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success()
                && err.contains("must be a positive number")
                && err.contains("--lr -"),
            "{v}: {err}"
        );
    }
    assert!(!f.root.join("neg-lr").exists());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_meal-student"))
        .args([
            "train",
            "--loss",
            "ce",
            "--epochs",
            "1",
            "--checkpoint-every",
            "-1",
        ])
        .arg("--data")
        .arg(f.root.join("data/train"))
        .arg("--out")
        .arg(f.root.join("neg-lr"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--checkpoint-every \"-1\"") && err.contains("not a negative one"),
        "{err}"
    );
    // a missing value is said as such, not taken from the next flag
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_meal-student"))
        .args(["train", "--lr", "--epochs", "1"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("a value is required for '--lr"), "{err}");
    // --res does nothing to teachers (each has its size=): refused
    let err = eval(
        &["--res", "16", "--teacher"],
        Path::new("demo_tiny=w.safetensors"),
    );
    assert!(
        err.contains("--res 16 with --teacher") && err.contains(",size=16"),
        "{err}"
    );
    // a size no teacher takes is not offered
    let err = eval(
        &["--res", "0", "--teacher"],
        Path::new("demo_tiny=w.safetensors"),
    );
    assert!(
        err.contains("remove --res") && !err.contains("size=0"),
        "{err}"
    );
    // a flag's problem said with the flag, on the error's line (not the flag alone above a
    // "Caused by:" list)
    let good = f.root.join("good.safetensors");
    save_with(&model, &good, "bn1.running_mean", 0, 0.0);
    let err = eval(&["--arch", "demo_tiny", "--res", "0", "--weights"], &good);
    assert!(
        err.starts_with("Error: --res: invalid size: 0") && !err.contains("Caused by"),
        "{err}"
    );

    let mut a = args(&f, "torn");
    a.epochs = Some(1);
    go(a.clone()).unwrap();
    std::fs::remove_file(f.root.join("torn/checkpoint/state.json")).unwrap();
    a.resume = Some(true);
    let e = format!("{:#}", go(a).unwrap_err());
    assert!(e.contains("is incomplete (no state.json"), "{e}");
}
