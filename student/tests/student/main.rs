//! meal-student on a tiny dataset: one offline KD step equals one online KD step on the
//! same crops; a hard-label run learns; eval scores classes by name. Resume is in
//! `resume`, what it refuses in `refusals`, what stops it midway in `stops`.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use candle_core::Device;
use meal_models::{read_state_dict, ResNet};
use meal_student::config::TrainArgs;
use meal_student::train::{train, TrainReport};

mod bad_inputs;
mod refusals;
mod resume;
mod stops;

struct Fx {
    _dir: tempfile::TempDir,
    root: PathBuf,
    data: PathBuf,
    teachers: Vec<String>,
    labels: PathBuf,
}

fn synth(dir: &Path, per_class: u32, seed: u64) {
    let cfg = meal_data::synth::SynthConfig {
        seed,
        train_per_class: per_class,
        val_per_class: 1,
        min_side: 28,
        max_side: 40,
        quality: 90,
    };
    meal_data::synth::generate(dir, &cfg, || {}).unwrap();
}

fn fixture() -> Fx {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    synth(&root.join("data"), 2, 4);
    let mut teachers = Vec::new();
    for (i, arch) in ["demo_tiny", "demo_resnet10"].iter().enumerate() {
        let p = root.join(format!("t{i}.safetensors"));
        ResNet::from_preset(arch, 10, &Device::Cpu, 10 + i as u64)
            .unwrap()
            .save(&p)
            .unwrap();
        teachers.push(format!("{arch}={},size={}", p.display(), 24 + 4 * i));
    }
    let labels = root.join("labels");
    precompute(&root.join("data/train"), &labels, &teachers);
    Fx {
        data: root.join("data/train"),
        root,
        _dir: dir,
        teachers,
        labels,
    }
}

/// A label store of `data` by `teachers` at `out` (4 crops per image).
fn precompute(data: &Path, out: &Path, teachers: &[String]) {
    let s = meal_precompute::config::RunArgs {
        data: Some(data.to_path_buf()),
        out: Some(out.to_path_buf()),
        teacher: teachers.to_vec(),
        crops_per_image: Some(4),
        threads: Some(2),
        ..Default::default()
    }
    .resolve()
    .unwrap();
    meal_precompute::run::run(&s, &AtomicBool::new(false)).unwrap();
}

fn args(f: &Fx, out: &str) -> TrainArgs {
    TrainArgs {
        data: Some(f.data.clone()),
        labels: Some(f.labels.clone()),
        arch: Some("demo_tiny".into()),
        res: Some(24),
        epochs: Some(2),
        batch: Some(8),
        crops_per_image: Some(2),
        lr: Some(0.05),
        threads: Some(2),
        seed: Some(3),
        out: Some(f.root.join(out)),
        ..Default::default()
    }
}

/// `meal-student eval --json` of demo_tiny weights `w` on `data`.
fn eval_json(data: &Path, w: &Path) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_meal-student"))
        .arg("eval")
        .arg("--data")
        .arg(data)
        .args([
            "--arch",
            "demo_tiny",
            "--threads",
            "1",
            "--json",
            "--weights",
        ])
        .arg(w)
        .output()
        .unwrap()
}

fn go(a: TrainArgs) -> anyhow::Result<TrainReport> {
    train(a.resolve()?, &AtomicBool::new(false))
}

fn weights(p: &Path) -> Vec<(String, Vec<f32>)> {
    let sd = read_state_dict(p, &Device::Cpu).unwrap();
    let mut v: Vec<(String, Vec<f32>)> = sd
        .into_iter()
        .filter(|(k, _)| !k.ends_with("num_batches_tracked"))
        .map(|(k, t)| (k, t.flatten_all().unwrap().to_vec1::<f32>().unwrap()))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// `model`'s weights saved at `path` with element `i` (of the flattened tensor) of
/// tensor `name` set to `v` (a corrupt file: NaN, inf).
fn save_with(model: &ResNet, path: &Path, name: &str, i: usize, v: f32) {
    model.save(path).unwrap();
    let mut sd = read_state_dict(path, &Device::Cpu).unwrap();
    let t = sd.get_mut(name).unwrap();
    let mut vals = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    vals[i] = v;
    *t = candle_core::Tensor::from_vec(vals, t.dims(), &Device::Cpu).unwrap();
    candle_core::safetensors::save(&sd, path).unwrap();
}

fn max_diff(a: &[(String, Vec<f32>)], b: &[(String, Vec<f32>)]) -> f32 {
    a.iter()
        .zip(b)
        .flat_map(|((_, x), (_, y))| x.iter().zip(y).map(|(p, q)| (p - q).abs()))
        .fold(0.0, f32::max)
}

#[test]
fn one_offline_kd_step_equals_one_online_step() {
    let f = fixture();
    let mut off = args(&f, "off");
    off.max_steps = Some(1);
    let mut on = args(&f, "on");
    on.max_steps = Some(1);
    on.online_teacher = f.teachers.clone(); // the store still says which crops to replay
    let a = go(off).unwrap();
    let b = go(on).unwrap();
    assert!(a.interrupted && b.interrupted);
    let (la, lb) = (a.step_losses[0], b.step_losses[0]);
    // the store holds float16 probabilities: the losses agree to its precision
    assert!(
        (la - lb).abs() < 2e-3 * la.abs(),
        "offline {la} vs online {lb}"
    );
    let wa = weights(&f.root.join("off/checkpoint/student.safetensors"));
    let wb = weights(&f.root.join("on/checkpoint/student.safetensors"));
    let init = ResNet::from_preset("demo_tiny", 10, &Device::Cpu, 3).unwrap();
    let p0 = f.root.join("init.safetensors");
    init.save(&p0).unwrap();
    let w0 = weights(&p0);
    let moved = max_diff(&wa, &w0);
    let gap = max_diff(&wa, &wb);
    assert!(moved > 1e-3, "the step changed the weights by {moved}");
    assert!(
        gap < moved * 1e-2,
        "offline and online steps differ by {gap} (step moved {moved})"
    );
}

#[test]
fn a_hard_label_run_learns() {
    let dir = tempfile::tempdir().unwrap();
    synth(dir.path(), 6, 9);
    let data = dir.path().join("train");
    let a = TrainArgs {
        data: Some(data.clone()),
        val: Some(data),
        loss: Some("ce".into()),
        arch: Some("demo_resnet10".into()),
        res: Some(32),
        // 60 epochs: over seeds 1-4 on an Intel Xeon (AVX-512) top-1 0.40-0.75; at 30 it
        // was 0.23-0.50, below the bound for seed 1 there though not on the machines it
        // was set on (a GEMM's summation order, hence the run, differs between CPUs)
        epochs: Some(60),
        batch: Some(10),
        crops_per_image: Some(1),
        lr: Some(0.1),
        schedule: Some("cosine".into()),
        threads: Some(2),
        seed: Some(1),
        out: Some(dir.path().join("ce")),
        ..Default::default()
    };
    let r = go(a).unwrap();
    let first = &r.history[0];
    let last = r.history.last().unwrap();
    assert!(
        last.loss < first.loss * 0.85,
        "loss {} -> {}",
        first.loss,
        last.loss
    );
    let acc = last.val_top1.unwrap();
    // deterministic on one CPU (fixed seeds and threads); 60 images, chance is 0.1
    assert!(
        acc >= 0.3,
        "top-1 {acc} on the training images (chance 0.1)"
    );
}

/// A student's weights record its classes and side (safetensors `__metadata__`, which
/// timm ignores); `eval` takes the side by default and scores a validation list by
/// class name: a list of some of the classes counts each image against its own logit
/// (the same hits as the whole set's), and a name the student never saw is refused,
/// naming it, rather than counted against another class's logit.
#[test]
fn eval_scores_classes_by_the_names_the_weights_record() {
    let f = fixture();
    let mut a = args(&f, "named");
    a.epochs = Some(1);
    go(a).unwrap();
    let w = f.root.join("named/student.safetensors");
    let meta = meal_models::safetensors_metadata(&w).expect("metadata");
    let on: serde_json::Value = serde_json::from_str(&meta[meal_models::META_TRAINED_ON]).unwrap();
    let classes: Vec<String> = serde_json::from_value(on["classes"].clone()).unwrap();
    assert_eq!(classes, meal_data::synth::class_names());
    assert_eq!(on["res"], 24);
    let eval = |data: &Path| eval_weights(data, &w);
    let (whole, err, ok) = eval(&f.root.join("data/val"));
    assert!(ok && err.contains("evaluating at 24 px, the side"), "{err}");
    let whole: serde_json::Value = serde_json::from_str(&whole).unwrap();
    assert_eq!(whole["images"].as_u64(), Some(10), "{whole}");
    // the val set's images of the last 4 classes, listed by name, and again by the
    // logits' indices (6..9): each image scored against its own class's logit both ways
    let val = f.root.join("data/val");
    let (mut list, mut numbered) = (String::from("path,label\n"), String::from("path,label\n"));
    for (i, c) in classes.iter().enumerate().skip(6) {
        for e in std::fs::read_dir(val.join(c)).unwrap() {
            let name = e.unwrap().file_name().to_string_lossy().to_string();
            list.push_str(&format!("{c}/{name},{c}\n"));
            numbered.push_str(&format!("{c}/{name},{i}\n"));
        }
    }
    std::fs::write(val.join("part.csv"), &list).unwrap();
    std::fs::write(val.join("part_numbered.csv"), &numbered).unwrap();
    let (part, err, ok) = eval(&val.join("part.csv"));
    assert!(ok && err.contains("4 classes of the 10"), "{err}");
    // weights of 10 classes that record none (timm's): the refusal names classes=
    let t0 = f.root.join("t0.safetensors");
    let (_, err, ok) = eval_weights(&val.join("part.csv"), &t0);
    assert!(
        !ok && err.contains("the weights classify 10 classes")
            && err.contains(&format!(
                "--teacher demo_tiny={},classes=FILE",
                t0.display()
            )),
        "{err}"
    );
    let (by_index, err, ok) = eval(&val.join("part_numbered.csv"));
    assert!(ok, "{err}");
    let part: serde_json::Value = serde_json::from_str(&part).unwrap();
    let by_index: serde_json::Value = serde_json::from_str(&by_index).unwrap();
    assert_eq!(part["images"].as_u64(), Some(4), "{part}");
    assert_eq!(part, by_index);
    // the same weights as a --teacher: its probabilities are its softmax over the
    // data's 4 logits (a store's labels), so each image is ranked among those 4 only:
    // the figures of the classifier cut down to those rows (an independent 4-class
    // model). A numbered list's classes are all 10 numbers (6 of them empty): ranked
    // among all 10, as the weights are
    let mut sd = read_state_dict(&w, &Device::Cpu).unwrap();
    for k in ["fc.weight", "fc.bias"] {
        let t = sd[k].narrow(0, 6, 4).unwrap();
        sd.insert(k.to_string(), t);
    }
    let cut = f.root.join("cut.safetensors");
    candle_core::safetensors::save(&sd, &cut).unwrap();
    let four = ResNet::from_preset("demo_tiny", 4, &Device::Cpu, 0).unwrap();
    four.load_weights(&cut, meal_models::LoadOptions::default())
        .unwrap();
    let on = serde_json::json!({"classes": &classes[6..], "res": 24});
    four.save_with(
        &cut,
        [(meal_models::META_TRAINED_ON.to_string(), on.to_string())].into(),
    )
    .unwrap();
    let (four_classes, err, ok) = eval_weights(&val.join("part.csv"), &cut);
    assert!(ok, "{err}");
    let four_classes: serde_json::Value = serde_json::from_str(&four_classes).unwrap();
    assert_eq!(four_classes["top5"].as_f64(), Some(1.0), "{four_classes}");
    for (list, want) in [
        ("part.csv", &four_classes),
        ("part_numbered.csv", &by_index),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_meal-student"))
            .args(["eval", "--threads", "1", "--json", "--data"])
            .arg(val.join(list))
            .arg("--teacher")
            .arg(format!("demo_tiny={},size=24", w.display()))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{err}");
        let as_teacher: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(&as_teacher, want, "{list}: {err}");
    }
    std::fs::write(
        val.join("other.csv"),
        list.replacen(&format!(",{}\n", classes[6]), ",tench\n", 1),
    )
    .unwrap();
    let (_, err, ok) = eval(&val.join("other.csv"));
    assert!(
        !ok && err.contains("are not among the 10 the weights were trained on (tench)")
            && err.contains("name them as the training set's folders were named"),
        "{err}"
    );
    // weights trained on a numbered list, against a named part of the classes: no
    // index to take, and the advice is a list numbered as theirs was
    let numbered_w = f.root.join("numbered.safetensors");
    let on = serde_json::json!({"classes": (0..10).map(|i| i.to_string()).collect::<Vec<_>>(), "res": 24});
    ResNet::from_preset("demo_tiny", 10, &Device::Cpu, 0)
        .unwrap()
        .save_with(
            &numbered_w,
            [(meal_models::META_TRAINED_ON.to_string(), on.to_string())].into(),
        )
        .unwrap();
    let (_, err, ok) = eval_weights(&val.join("part.csv"), &numbered_w);
    assert!(
        !ok && err.contains(
            "the weights record its classes by number (0 to 9): give the data as a list file \
             labelled by those numbers"
        ),
        "{err}"
    );
    // a stray folder of no image is not one to rename: said to be removed
    let stray = val.join(".ipynb_checkpoints");
    std::fs::create_dir(&stray).unwrap();
    let (_, err, ok) = eval(&val);
    std::fs::remove_dir(&stray).unwrap();
    assert!(
        !ok && err.contains("(.ipynb_checkpoints): they hold no image")
            && err.contains("remove them"),
        "{err}"
    );
    // a numbered list one past the logits (counted from 1) is said to be that
    std::fs::write(val.join("from1.csv"), numbered.replacen(",9\n", ",10\n", 1)).unwrap();
    let (_, err, ok) = eval(&val.join("from1.csv"));
    assert!(
        !ok && err.contains(
            "up to 10, and the weights have 10 logits (0 to 9): a numbered list counts from 0"
        ),
        "{err}"
    );
    // numbers well past the logits: a list of more classes (ImageNet's 1000 against
    // a 100-class student)
    std::fs::write(val.join("wide.csv"), numbered.replacen(",9\n", ",27\n", 1)).unwrap();
    let (_, err, ok) = eval(&val.join("wide.csv"));
    assert!(
        !ok && err.contains(
            "up to 27, and the weights have 10 logits (0 to 9): the list numbers more classes \
             than the model has"
        ),
        "{err}"
    );
    // train --val with the same subset: scored by name as eval scores it (the epoch's
    // val figures equal eval's of the run's weights); a class --data has not is refused
    let mut t = args(&f, "part_val");
    t.epochs = Some(1);
    t.val = Some(val.join("part.csv"));
    let r = go(t).unwrap();
    let (ev, _, ok) = eval_weights(
        &val.join("part.csv"),
        &f.root.join("part_val/student.safetensors"),
    );
    assert!(ok);
    let ev: serde_json::Value = serde_json::from_str(&ev).unwrap();
    assert_eq!(r.history[0].val_top1, ev["top1"].as_f64(), "{ev}");
    let mut t = args(&f, "other_val");
    t.val = Some(val.join("other.csv"));
    let e = format!("{:#}", go(t).unwrap_err());
    assert!(
        e.contains("1 of its 4 classes are not among the 10 --data has (tench)"),
        "{e}"
    );
    // a numbered --val list (ImageNet's val as `path,65`): its labels are the student's
    // logits, as eval takes them; one past them is said to count from 0
    let mut t = args(&f, "numbered_val");
    t.epochs = Some(1);
    t.val = Some(val.join("part_numbered.csv"));
    let r = go(t).unwrap();
    let (ev, _, ok) = eval_weights(
        &val.join("part_numbered.csv"),
        &f.root.join("numbered_val/student.safetensors"),
    );
    assert!(ok);
    let ev: serde_json::Value = serde_json::from_str(&ev).unwrap();
    assert_eq!(r.history[0].val_top1, ev["top1"].as_f64(), "{ev}");
    let mut t = args(&f, "from1_val");
    t.val = Some(val.join("from1.csv"));
    let e = format!("{:#}", go(t).unwrap_err());
    assert!(
        e.contains("up to 10, and --data has 10 classes (0 to 9): a numbered list counts from 0"),
        "{e}"
    );
}

/// `meal-student eval --json` of `w` on `data`: stdout, stderr, success.
fn eval_weights(data: &Path, w: &Path) -> (String, String, bool) {
    let out = eval_json(data, w);
    (
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
        out.status.success(),
    )
}
