//! The whole chain of `make train` at tiny scale, through the libraries the binaries
//! wrap: two teachers on hard labels -> precompute their ensemble -> a hard-label
//! pre-trained student distilled from the store -> evaluation. Checks what each stage
//! hands the next, not accuracy (that is the README's table).

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use meal_data::{CropSpec, Dataset, Filter, LinkPolicy, Normalize};
use meal_models::{LoadOptions, ResNet};
use meal_store::LabelStore;
use meal_student::config::TrainArgs;
use meal_student::eval::EvalRead;

/// Two decode threads; a bad file fails the check.
const READ: EvalRead = EvalRead {
    threads: 2,
    policy: meal_data::BadFilePolicy::Fail,
    bar: false,
    batch: meal_student::eval::EVAL_BATCH,
};

#[test]
fn teachers_precompute_distil_evaluate() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let cfg = meal_data::synth::SynthConfig {
        train_per_class: 3,
        val_per_class: 1,
        min_side: 28,
        max_side: 40,
        ..Default::default()
    };
    meal_data::synth::generate(&root.join("data"), &cfg, || {}).unwrap();
    let stop = AtomicBool::new(false);
    let base = |out: &str, arch: &str, loss: &str| TrainArgs {
        data: Some(root.join("data/train")),
        val: Some(root.join("data/val")),
        arch: Some(arch.into()),
        loss: Some(loss.into()),
        res: Some(24),
        epochs: Some(2),
        batch: Some(10),
        crops_per_image: Some(2),
        lr: Some(0.02),
        scale: Some(meal_precompute::config::Pair([0.35, 1.0])),
        threads: Some(2),
        out: Some(root.join(out)),
        ..Default::default()
    };
    for (out, arch) in [
        ("ta", "demo_resnet10"),
        ("tb", "demo_tiny"),
        ("pre", "demo_tiny"),
    ] {
        let r =
            meal_student::train::train(base(out, arch, "ce").resolve().unwrap(), &stop).unwrap();
        assert_eq!(r.history.len(), 2);
        assert!(r.history.iter().all(|m| m.val_top1.is_some()));
    }
    let s = meal_precompute::config::RunArgs {
        data: Some(root.join("data/train")),
        out: Some(root.join("labels")),
        teacher: vec![
            format!(
                "demo_resnet10={},size=24",
                root.join("ta/student.safetensors").display()
            ),
            format!(
                "demo_tiny={},size=24",
                root.join("tb/student.safetensors").display()
            ),
        ],
        crops_per_image: Some(4),
        scale: Some(meal_precompute::config::Pair([0.35, 1.0])),
        threads: Some(2),
        ..Default::default()
    }
    .resolve()
    .unwrap();
    let rep = meal_precompute::run::run(&s, &stop).unwrap();
    assert!(rep.complete);
    assert_eq!(rep.crops, 120);
    assert!(meal_precompute::inspect::verify(&root.join("labels"))
        .unwrap()
        .starts_with("ok"));
    let store = LabelStore::open(&root.join("labels")).unwrap();
    assert_eq!(store.manifest().config.teachers.len(), 2);

    let mut kd = base("kd", "demo_tiny", "kd");
    kd.labels = Some(root.join("labels"));
    kd.scale = None; // the store's crops are replayed
    kd.init = Some(root.join("pre/student.safetensors"));
    let r = meal_student::train::train(kd.resolve().unwrap(), &stop).unwrap();
    let last = r.history.last().unwrap();
    assert!(
        last.disc.is_some_and(|d| d > 0.0) && last.kd.is_finite(),
        "{last:?}"
    );
    // two passes of 2 crops over a pool of 4: every stored crop was replayed once
    assert_eq!(r.history.iter().map(|m| m.crops).sum::<u64>(), 120);

    // the distilled student loads strictly as a timm state dict and evaluates
    let dev = candle_core::Device::Cpu;
    let m = ResNet::from_preset("demo_tiny", 10, &dev, 0).unwrap();
    m.load_weights(&r.weights, LoadOptions::default()).unwrap();
    let val = Arc::new(Dataset::open(&root.join("data/val"), LinkPolicy::StayInside).unwrap());
    let spec = CropSpec::new(24, Filter::Bilinear, Normalize::default()).unwrap();
    let acc = meal_student::eval::evaluate(&m, &val, spec, READ, &dev, None).unwrap();
    assert_eq!(acc.images, 10);
    assert!(
        (acc.top1 - last.val_top1.unwrap()).abs() < 1e-9,
        "eval = the run's last val"
    );
}
