//! What meal-student refuses, and how: bad settings and inputs are errors naming the
//! flag or file before anything is written; damaged stores, weights and losses stop a
//! run keeping what was done.

use super::*;

/// Two trainings into one run directory: the second is refused, naming the first's pid.
#[test]
fn a_run_directory_in_use_is_refused() {
    let f = fixture();
    let out = f.root.join("busy");
    let _held = meal_data::dirlock::DirLock::acquire(&out).unwrap();
    let e = format!("{:#}", go(args(&f, "busy")).unwrap_err());
    assert!(
        e.contains("in use by process") && e.contains(&std::process::id().to_string()),
        "{e}"
    );
}

/// A finished run whose checkpoint was removed is not overwritten by a fresh run into
/// the same directory: refused, naming what it holds, the weights left as they were.
#[test]
fn a_finished_run_without_its_checkpoint_is_not_overwritten() {
    let f = fixture();
    let mut a = args(&f, "done");
    a.epochs = Some(1);
    go(a.clone()).unwrap();
    let out = f.root.join("done");
    std::fs::remove_dir_all(out.join("checkpoint")).unwrap();
    let before = std::fs::read(out.join("student.safetensors")).unwrap();
    let e = format!("{:#}", go(a).unwrap_err());
    assert!(
        e.contains("already holds a run's results (student.safetensors"),
        "{e}"
    );
    assert_eq!(
        std::fs::read(out.join("student.safetensors")).unwrap(),
        before
    );
    // a plain file named `checkpoint`: one message, with or without --resume, and kept
    let mine = f.root.join("mine");
    std::fs::create_dir(&mine).unwrap();
    std::fs::write(mine.join("checkpoint"), b"notes").unwrap();
    for resume in [false, true] {
        let mut a = args(&f, "mine");
        a.resume = Some(resume);
        let e = format!("{:#}", go(a).unwrap_err());
        assert!(
            e.contains("checkpoint is a file, not a run's checkpoint directory"),
            "{e}"
        );
    }
    assert_eq!(std::fs::read(mine.join("checkpoint")).unwrap(), b"notes");
    // a broken link of that name: refused before training, not when saving
    let linked = f.root.join("linked");
    std::fs::create_dir(&linked).unwrap();
    std::os::unix::fs::symlink(f.root.join("nowhere"), linked.join("checkpoint")).unwrap();
    let e = format!("{:#}", go(args(&f, "linked")).unwrap_err());
    assert!(
        e.contains("checkpoint is a link to nothing, not a run's checkpoint directory"),
        "{e}"
    );
    assert!(!linked.join("metrics.jsonl").exists());
    // an empty checkpoint directory (or a link to one) saves no run: not "holds a run"
    let empty = f.root.join("empty");
    std::fs::create_dir_all(f.root.join("empty-target")).unwrap();
    std::fs::create_dir(&empty).unwrap();
    std::os::unix::fs::symlink(f.root.join("empty-target"), empty.join("checkpoint")).unwrap();
    let e = format!("{:#}", go(args(&f, "empty")).unwrap_err());
    assert!(
        e.contains("checkpoint holds no saved run (no state.json): remove it"),
        "{e}"
    );
    assert!(!empty.join("metrics.jsonl").exists());
}

/// Mixed precision is a GPU mode: asked for on the CPU it is refused with the flag
/// named, before anything is written.
#[test]
fn mixed_precision_on_the_cpu_is_refused() {
    let f = fixture();
    let mut a = args(&f, "amp");
    a.amp = Some(true);
    let e = format!("{:#}", go(a).unwrap_err());
    assert!(e.contains("--amp") && e.contains("cuda"), "{e}");
    assert!(!f.root.join("amp").exists());
}

/// A side above the crop limit, a batch that cannot fit in memory, Nesterov without
/// momentum, or a run directory inside the dataset is refused under its flag before
/// anything is written, not a panic or an unnamed error later.
#[test]
fn settings_out_of_range_are_errors_naming_the_flag() {
    let f = fixture();
    let mut a = args(&f, "res");
    a.res = Some(100_000);
    let e = format!("{:#}", go(a).unwrap_err());
    assert!(e.contains("--res 100000"), "{e}");
    // a batch whose activations cannot fit in any machine's memory (demo_tiny at 4096 px:
    // about 2.6 GB a crop; 4000 crops of the 20 images a step) is refused before it is
    // tried, naming both flags
    let mut a = args(&f, "huge");
    a.res = Some(4096);
    a.batch = Some(4000);
    a.crops_per_image = Some(200);
    let e = format!("{:#}", go(a).unwrap_err());
    assert!(
        e.contains("--batch 4000 at --res 4096") && e.contains("lower --batch or --res"),
        "{e}"
    );
    assert!(!f.root.join("huge").exists());
    // one no epoch could fill is told as such, not as one too large for memory
    let mut a = args(&f, "huge");
    a.res = Some(4096);
    a.batch = Some(4096);
    let e = format!("{:#}", go(a).unwrap_err());
    assert!(
        e.contains("--batch 4096: more images per step (2048) than the 20 images of --data"),
        "{e}"
    );
    assert!(!f.root.join("huge").exists());
    // the online teachers' inference too: 4000 crops at 4096 px a step
    let mut a = args(&f, "huge-online");
    a.labels = None;
    a.online_teacher = vec![f.teachers[0].replace("size=24", "size=4096")];
    a.batch = Some(4000);
    a.crops_per_image = Some(200);
    let e = format!("{:#}", go(a).unwrap_err());
    assert!(
        e.contains("--batch 4000 with --online-teacher demo_tiny=")
            && e.contains("lower --batch or the teacher's size="),
        "{e}"
    );
    assert!(!f.root.join("huge-online").exists());
    // crop_pct (the eval transform's) does nothing to the training crops online
    // teachers label: refused, as precompute refuses it
    let mut a = args(&f, "pct");
    a.labels = None;
    a.online_teacher = vec![format!("{},crop_pct=0.5", f.teachers[0])];
    let e = format!("{:#}", go(a).unwrap_err());
    assert!(
        e.contains("--online-teacher demo_tiny=")
            && e.contains("crop_pct")
            && e.contains("remove it"),
        "{e}"
    );
    assert!(!f.root.join("pct").exists());
    // --scale draws fresh crops: with a store, whose crops are replayed, it would
    // do nothing
    let mut a = args(&f, "scale");
    a.scale = Some(meal_cli::Pair([0.5, 1.0]));
    let e = format!("{:#}", go(a).unwrap_err());
    assert!(
        e.contains("--scale 0.5,1") && e.contains("--labels") && e.contains("replayed"),
        "{e}"
    );
    assert!(!f.root.join("scale").exists());
    // --loss ce trains on hard labels and fresh crops: a store would only be hashed
    let mut a = args(&f, "ce-labels");
    a.loss = Some("ce".into());
    a.disc = None;
    let e = format!("{:#}", go(a).unwrap_err());
    assert!(e.contains("--labels") && e.contains("--loss ce"), "{e}");
    assert!(!f.root.join("ce-labels").exists());
    // one crop of 24 px: one value per channel in the last stage's BatchNorms
    let mut a = args(&f, "one");
    a.batch = Some(1);
    a.crops_per_image = Some(1);
    let e = format!("{:#}", go(a).unwrap_err());
    assert!(
        e.contains("--batch 1 at --res 24") && e.contains("one value per channel"),
        "{e}"
    );
    let mut a = args(&f, "nesterov");
    a.nesterov = Some(true);
    a.momentum = Some(0.0);
    let e = format!("{:#}", go(a).unwrap_err());
    assert!(e.contains("--nesterov") && e.contains("--momentum"), "{e}");
    assert!(!f.root.join("nesterov").exists());
    // a run directory inside the dataset would be a class of the next run
    let mut a = args(&f, "unused");
    a.out = Some(f.data.join("run"));
    let e = format!("{:#}", go(a).unwrap_err());
    assert!(e.contains("--out") && e.contains("inside --data"), "{e}");
    assert!(!f.data.join("run").exists());
    // nor into a file
    let file = f.root.join("a_file");
    std::fs::write(&file, b"keep").unwrap();
    let mut a = args(&f, "a_file");
    a.out = Some(file.clone());
    let e = format!("{:#}", go(a).unwrap_err());
    assert!(e.contains("a file, not a directory"), "{e}");
    assert_eq!(std::fs::read(&file).unwrap(), b"keep");
    // nor into a label store
    let mut a = args(&f, "unused");
    a.out = Some(f.labels.clone());
    let e = format!("{:#}", go(a).unwrap_err());
    assert!(e.contains("a label store is there"), "{e}");
    assert!(!f.labels.join("metrics.jsonl").exists());
}

#[test]
fn a_store_of_another_dataset_is_refused() {
    let f = fixture();
    synth(&f.root.join("other"), 3, 4);
    let mut a = args(&f, "x");
    a.data = Some(f.root.join("other/train"));
    let e = go(a).unwrap_err();
    assert!(format!("{e:#}").contains("another dataset"), "{e:#}");
    // refused before its first write: no empty run directory is left behind (nor the
    // parents it made), and one that existed before is kept
    assert!(!f.root.join("x").exists());
    let mut a = args(&f, "new/deeper/run");
    a.data = Some(f.root.join("other/train"));
    go(a).unwrap_err();
    assert!(!f.root.join("new").exists());
    std::fs::create_dir(f.root.join("mine")).unwrap();
    let mut a = args(&f, "mine");
    a.data = Some(f.root.join("other/train"));
    go(a).unwrap_err();
    assert!(f.root.join("mine").is_dir());
    // a store whose manifest names its classes in another order (edited by hand) is
    // named as edited, not as a store of another dataset's classes
    let edited = f.root.join("edited");
    std::fs::create_dir(&edited).unwrap();
    for e in std::fs::read_dir(&f.labels).unwrap().flatten() {
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), edited.join(e.file_name())).unwrap();
        }
    }
    let mpath = edited.join("manifest.json");
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&mpath).unwrap()).unwrap();
    let names = m["config"]["classes"].as_array_mut().unwrap();
    names.swap(0, 1);
    std::fs::write(&mpath, m.to_string()).unwrap();
    let mut a = args(&f, "on-edited");
    a.labels = Some(edited);
    let e = format!("{:#}", go(a).unwrap_err());
    assert!(
        e.contains("config.classes is not the class list images.parquet records")
            && e.contains("the manifest was edited"),
        "{e}"
    );
    // --resume of a run that never was (a requeued job): it starts from the beginning
    // (main.rs's resume_equals_an_uninterrupted_run... checks its weights)
    let mut a = args(&f, "never");
    a.resume = Some(true);
    go(a).unwrap();
    assert!(f.root.join("never/student.safetensors").exists());
    // --resume of a run whose checkpoint was removed (results kept): refused, saying so
    // and offering its weights as --init (it was a raw "No such file" error)
    std::fs::remove_dir_all(f.root.join("never/checkpoint")).unwrap();
    let mut a = args(&f, "never");
    a.resume = Some(true);
    let e = format!("{:#}", go(a).unwrap_err());
    assert!(
        e.contains("no checkpoint to resume")
            && e.contains("student.safetensors")
            && e.contains("--init")
            && !e.contains("os error"),
        "{e}"
    );
}

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
