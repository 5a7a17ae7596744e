//! The demo dataset through the input pipeline, as both stages will use it: generate,
//! index train/ and val/, load a training pass (decode once, several crops) and an eval
//! pass, and check what comes out.

use std::sync::Arc;

use meal_data::synth::{class_names, generate, SynthConfig};
use meal_data::transform::{IMAGENET_MEAN, IMAGENET_STD};
use meal_data::{
    epoch_order, BadFilePolicy, CropMode, CropSampler, CropSpec, Dataset, Filter, LinkPolicy,
    Loader, LoaderConfig, Normalize, PoolCrops, RrcParams,
};

#[test]
fn demo_dataset_through_the_loader() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = SynthConfig {
        train_per_class: 6,
        val_per_class: 2,
        ..SynthConfig::default()
    };
    generate(dir.path(), &cfg, || {}).unwrap();
    let train = Arc::new(Dataset::open(&dir.path().join("train"), LinkPolicy::StayInside).unwrap());
    let val = Arc::new(Dataset::open(&dir.path().join("val"), LinkPolicy::StayInside).unwrap());
    assert_eq!(train.classes(), class_names().as_slice());
    assert_eq!(val.classes(), train.classes());
    assert_eq!((train.len(), val.len()), (60, 20));
    assert_ne!(train.fingerprint(), val.fingerprint());
    for c in 0..10 {
        assert_eq!(train.samples().iter().filter(|s| s.label == c).count(), 6);
    }

    let spec = CropSpec::new(32, Filter::Bilinear, Normalize::default()).unwrap();
    let plan = PoolCrops::pass(CropSampler::new(0, RrcParams::default()), 8, 2, 0).unwrap();
    let loader = Loader::new(
        train.clone(),
        epoch_order(train.len(), 0, 0, true),
        LoaderConfig {
            images_per_batch: 8,
            spec,
            extra_specs: Vec::new(),
            crops: CropMode::Plan(Arc::new(plan)),
            prefetch: 2,
            threads: 2,
            policy: BadFilePolicy::Fail,
            drop_last: true,
            pixels: meal_data::PixelFormat::Normalized,
        },
    )
    .unwrap();
    assert_eq!(loader.batches(), 7, "60 images, 8 a batch, last dropped");
    let lo: Vec<f32> = (0..3)
        .map(|c| (0.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c])
        .collect();
    let hi: Vec<f32> = (0..3)
        .map(|c| (1.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c])
        .collect();
    let mut seen = std::collections::HashSet::new();
    for b in loader {
        let b = b.unwrap();
        assert_eq!(b.len(), 16, "8 images x 2 crops");
        let plane = 32 * 32;
        for (i, x) in b.data.iter().enumerate() {
            let c = (i / plane) % 3;
            assert!(
                x.is_finite() && *x >= lo[c] - 1e-6 && *x <= hi[c] + 1e-6,
                "value {x} channel {c}"
            );
        }
        for r in &b.rows {
            assert!(r.record.is_valid());
            seen.insert(r.sample_id);
        }
    }
    assert_eq!(seen.len(), 56);

    let eval = Loader::new(
        val.clone(),
        epoch_order(val.len(), 0, 0, false),
        LoaderConfig {
            images_per_batch: 16,
            spec,
            extra_specs: Vec::new(),
            crops: CropMode::Eval,
            prefetch: 1,
            threads: 2,
            policy: BadFilePolicy::Fail,
            drop_last: false,
            pixels: meal_data::PixelFormat::Normalized,
        },
    )
    .unwrap();
    let rows: usize = eval.map(|b| b.unwrap().len()).sum();
    assert_eq!(rows, 20);
}
