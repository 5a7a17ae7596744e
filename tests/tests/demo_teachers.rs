//! The demo's shipped teachers (assets/demo-teachers, made by `make teachers`): the files
//! are the ones listed (SHA-256), and each teacher and their ensemble reach the val top-1
//! stated in teachers.json on the demo val split, which the deterministic generator
//! rebuilds here (the same images `make train` evaluates on).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device};
use meal_data::synth::{generate, SynthConfig};
use meal_data::{Dataset, LinkPolicy};
use meal_models::ensemble::{Ensemble, TeacherArg};
use meal_models::{input_config, LoadOptions, ResNet};
use meal_student::eval::{evaluate, evaluate_ensemble, EvalRead};

/// Two decode threads; a bad file fails the check; batches of 7 (not the command's 64:
/// the figures, recorded by PyTorch, do not depend on it).
const READ: EvalRead = EvalRead {
    threads: 2,
    policy: meal_data::BadFilePolicy::Fail,
    bar: false,
    batch: 7,
};

/// Accuracies may move by a few images across CPUs (AVX2 vs AVX-512 rounding).
const TOLERANCE: f64 = 0.01;

fn assets() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets/demo-teachers")
}

#[test]
fn shipped_teachers_are_the_listed_files_and_reach_their_stated_accuracy() {
    let dir = assets();
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("teachers.json")).unwrap()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    // the demo val split: the default generator's (seed 0), no train images needed
    let cfg = SynthConfig {
        train_per_class: 0,
        ..SynthConfig::default()
    };
    generate(tmp.path(), &cfg, || {}).unwrap();
    let val = Arc::new(Dataset::open(&tmp.path().join("val"), LinkPolicy::default()).unwrap());
    assert_eq!(val.len(), 500);
    let dev = Device::Cpu;
    let mut args = Vec::new();
    for t in meta["teachers"].as_array().unwrap() {
        let file = dir.join(t["file"].as_str().unwrap());
        let bytes = std::fs::read(&file).unwrap();
        assert_eq!(
            meal_store::sha256_hex(&bytes),
            t["sha256"].as_str().unwrap(),
            "{} is not the file teachers.json lists",
            file.display()
        );
        let arch = t["arch"].as_str().unwrap();
        let size = t["size"].as_u64().unwrap() as u32;
        let model = ResNet::from_preset(arch, 10, &dev, 0).unwrap();
        model.load_weights(&file, LoadOptions::default()).unwrap();
        let spec = input_config(arch).unwrap().spec_at(size).unwrap();
        let acc = evaluate(&model, &val, spec, READ, &dev, None).unwrap();
        let stated = t["val_top1"].as_f64().unwrap();
        assert!(
            (acc.top1 - stated).abs() <= TOLERANCE,
            "{arch}: val top-1 {} vs stated {stated}",
            acc.top1
        );
        args.push(format!("{arch}={},size={size}", file.display()));
    }
    let ens = Ensemble::load(
        &TeacherArg::parse_all(&args).unwrap(),
        val.classes(),
        &dev,
        DType::F32,
    )
    .unwrap();
    let acc = evaluate_ensemble(&ens, &val, READ).unwrap();
    let stated = meta["ensemble_val_top1"].as_f64().unwrap();
    assert!(
        (acc.top1 - stated).abs() <= TOLERANCE,
        "ensemble: val top-1 {} vs stated {stated}",
        acc.top1
    );
}
