//! Weight files: strict loading errors, `.pth` checkpoints, fresh classifiers, saving in
//! timm's names, presets by name, the discriminator.

mod common;

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use common::{case_config, fixtures, max_abs};
use meal_models::ModelError;
use meal_models::ResNetConfig;
use meal_models::{preset, read_state_dict, state_dict, Discriminator, LoadOptions, ResNet};

/// The basic_plain fixture model with `num_classes` outputs.
fn basic_plain(num_classes: usize) -> ResNet {
    let c = ResNetConfig {
        num_classes,
        ..case_config("basic_plain")
    };
    ResNet::new(&c, &Device::Cpu, 3).unwrap()
}

fn same_tensors(a: &ResNet, b: &ResNet) {
    let (sa, sb) = (state_dict(a.entries()), state_dict(b.entries()));
    assert_eq!(sa.len(), sb.len());
    for (k, ta) in &sa {
        let tb = &sb[k];
        let d = max_abs(
            &(ta.to_dtype(DType::F64).unwrap() - tb.to_dtype(DType::F64).unwrap()).unwrap(),
        );
        assert_eq!(d, 0.0, "{k}");
    }
}

#[test]
fn pth_and_safetensors_give_the_same_model() {
    let a = basic_plain(10);
    a.load_weights(
        &fixtures().join("basic_plain.safetensors"),
        LoadOptions::default(),
    )
    .unwrap();
    let b = basic_plain(10);
    b.load_weights(&fixtures().join("basic_plain.pth"), LoadOptions::default())
        .unwrap();
    same_tensors(&a, &b);
}

#[test]
fn save_then_load_round_trips_in_timm_names() {
    let a = basic_plain(10);
    a.load_weights(
        &fixtures().join("basic_plain.safetensors"),
        LoadOptions::default(),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("w.safetensors");
    a.save(&p).unwrap();
    let saved = read_state_dict(&p, &Device::Cpu).unwrap();
    let orig = read_state_dict(&fixtures().join("basic_plain.safetensors"), &Device::Cpu).unwrap();
    let mut names: Vec<_> = saved.keys().collect();
    let mut want: Vec<_> = orig.keys().collect();
    names.sort();
    want.sort();
    assert_eq!(names, want, "the saved file has exactly timm's names");
    assert_eq!(saved["bn1.num_batches_tracked"].dtype(), DType::I64);
    let b = basic_plain(10);
    b.load_weights(&p, LoadOptions::default()).unwrap();
    same_tensors(&a, &b);
}

#[test]
fn strict_loading_lists_every_problem_in_one_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut sd =
        read_state_dict(&fixtures().join("basic_plain.safetensors"), &Device::Cpu).unwrap();
    sd.remove("layer1.0.conv1.weight");
    sd.remove("bn1.num_batches_tracked"); // tolerated, as PyTorch does
    sd.insert(
        "head.extra".into(),
        Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap(),
    );
    sd.insert(
        "layer2.0.bn1.bias".into(),
        Tensor::zeros(5, DType::F32, &Device::Cpu).unwrap(),
    );
    let p = dir.path().join("bad.safetensors");
    candle_core::safetensors::save(&sd, &p).unwrap();
    let m = basic_plain(10);
    let e = m.load_weights(&p, LoadOptions::default()).unwrap_err();
    assert!(matches!(e, ModelError::Mismatch { .. }));
    let s = e.to_string();
    for needle in [
        "bad.safetensors",
        "missing (1): layer1.0.conv1.weight",
        "unexpected (1): head.extra",
        "layer2.0.bn1.bias: file [5], model [16]",
    ] {
        assert!(s.contains(needle), "{needle:?} not in: {s}");
    }
    assert!(!s.contains("num_batches_tracked"), "{s}");
}

#[test]
fn another_architecture_is_named_not_listed_whole() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("r10.safetensors");
    ResNet::from_preset("demo_resnet10", 7, &Device::Cpu, 1)
        .unwrap()
        .save(&p)
        .unwrap();
    // another preset: the names are cut short and the file's own preset is named
    let e = ResNet::from_preset("demo_resnet14", 7, &Device::Cpu, 1)
        .unwrap()
        .load_weights(&p, LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("the file's architecture is demo_resnet10's, not demo_resnet14's"),
        "{e}"
    );
    assert!(
        e.contains(", ...") && e.len() < 1500,
        "{} bytes: {e}",
        e.len()
    );
    // the same preset with another class count: the class count is the cause, no preset
    // is named
    let e = ResNet::from_preset("demo_resnet10", 4, &Device::Cpu, 1)
        .unwrap()
        .load_weights(&p, LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("the weights classify 7 classes, the model is built for 4"),
        "{e}"
    );
    assert!(!e.contains("architecture"), "{e}");
    // a file of no preset's architecture is said to be none
    let e = ResNet::from_preset("demo_resnet10", 10, &Device::Cpu, 1)
        .unwrap()
        .load_weights(
            &fixtures().join("basic_plain.safetensors"),
            LoadOptions::default(),
        )
        .unwrap_err();
    assert!(
        e.to_string().contains("none of the presets' architectures"),
        "{e}"
    );
}

#[test]
fn fresh_classifier_on_request_only() {
    let m = basic_plain(4);
    let p = fixtures().join("basic_plain.safetensors");
    let e = m
        .load_weights(&p, LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("fc.weight: file [10, 32], model [4, 32]"), "{e}");
    assert!(
        e.contains("the weights classify 10 classes, the model is built for 4"),
        "{e}"
    );
    let before = state_dict(m.entries())["fc.weight"]
        .to_vec2::<f32>()
        .unwrap();
    let fresh = m
        .load_weights(
            &p,
            LoadOptions {
                fresh_classifier: true,
            },
        )
        .unwrap();
    assert_eq!(fresh, ["fc.weight", "fc.bias"]);
    let sd = state_dict(m.entries());
    assert_eq!(
        sd["fc.weight"].to_vec2::<f32>().unwrap(),
        before,
        "classifier kept fresh"
    );
    let orig = read_state_dict(&p, &Device::Cpu).unwrap();
    assert_eq!(
        sd["conv1.weight"]
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap(),
        orig["conv1.weight"]
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    );
}

#[test]
fn missing_and_corrupt_files_are_named() {
    let m = basic_plain(10);
    let e = m
        .load_weights(Path::new("/nope/w.safetensors"), LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("/nope/w.safetensors"), "{e}");
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("trunc.safetensors");
    let bytes = std::fs::read(fixtures().join("basic_plain.safetensors")).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    let e = m
        .load_weights(&p, LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("trunc.safetensors") && e.contains("cut short"),
        "{e}"
    );
    // a safetensors file under a .pth name is read by its content
    let p = dir.path().join("renamed.pth");
    std::fs::write(&p, &bytes).unwrap();
    m.load_weights(&p, LoadOptions::default()).unwrap();
    let p = dir.path().join("junk.pth");
    std::fs::write(&p, b"not a zip").unwrap();
    let e = m
        .load_weights(&p, LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("junk.pth"), "{e}");
    // a FIFO is refused, not opened (opening one for reading waits for a writer)
    let p = dir.path().join("fifo.pth");
    let made = std::process::Command::new("mkfifo").arg(&p).status();
    if made.is_ok_and(|s| s.success()) {
        let e = m
            .load_weights(&p, LoadOptions::default())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("fifo.pth") && e.contains("not a regular file"),
            "{e}"
        );
    } else {
        println!("no mkfifo here: the FIFO case is not checked");
    }
}

#[test]
fn unknown_preset_lists_the_known_ones() {
    let e = preset("resnet5O").unwrap_err().to_string();
    assert!(
        e.contains("resnet5O") && e.contains("resnet50") && e.contains("senet154"),
        "{e}"
    );
    let m = ResNet::from_preset("demo_tiny", 3, &Device::Cpu, 0).unwrap();
    assert_eq!(m.name(), "demo_tiny");
    let y = m
        .forward_t(
            &Tensor::zeros((2, 3, 32, 32), DType::F32, &Device::Cpu).unwrap(),
            false,
        )
        .unwrap();
    assert_eq!(y.dims(), [2, 3]);
}

#[test]
fn fresh_weights_are_seeded() {
    let a = ResNet::from_preset("demo_tiny", 10, &Device::Cpu, 7).unwrap();
    let b = ResNet::from_preset("demo_tiny", 10, &Device::Cpu, 7).unwrap();
    let c = ResNet::from_preset("demo_tiny", 10, &Device::Cpu, 8).unwrap();
    same_tensors(&a, &b);
    let w = |m: &ResNet| {
        state_dict(m.entries())["conv1.0.weight"]
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    assert_ne!(w(&a), w(&c));
    // Kaiming fan-out: std sqrt(2 / (cout * 9)) for the first 3x3 conv (cout 16)
    let v = w(&a);
    let std = (v.iter().map(|x| x * x).sum::<f32>() / v.len() as f32).sqrt();
    let want = (2.0f32 / (16.0 * 9.0)).sqrt();
    assert!((std / want - 1.0).abs() < 0.15, "std {std} vs {want}");
}

#[test]
fn discriminator_is_meal_v2s() {
    let d = Discriminator::new(1000, true, &Device::Cpu, 0).unwrap();
    let shapes: Vec<(String, Vec<usize>)> = d
        .entries()
        .iter()
        .map(|e| (e.name.clone(), e.shape.clone()))
        .collect();
    let want = [
        ("fc1.weight", vec![125, 1000]),
        ("fc1.bias", vec![125]),
        ("fc2.weight", vec![15, 125]),
        ("fc2.bias", vec![15]),
        ("fc3.weight", vec![2, 15]),
        ("fc3.bias", vec![2]),
    ];
    assert_eq!(shapes.len(), want.len());
    for ((n, s), (wn, ws)) in shapes.iter().zip(want.iter()) {
        assert_eq!((n.as_str(), s), (*wn, ws));
    }
    let x = Tensor::randn(0f32, 1.0, (4, 1000), &Device::Cpu).unwrap();
    let y = d.forward(&x).unwrap();
    assert_eq!(y.dims(), [4, 2]);
    assert!(
        y.flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .all(|v| *v >= 0.0),
        "final ReLU"
    );
    let d2 = Discriminator::new(1000, false, &Device::Cpu, 0).unwrap();
    let y2 = d2.forward(&x).unwrap();
    // same weights (same seed); without the final ReLU the negatives survive
    let relu = y2.relu().unwrap();
    assert_eq!(relu.to_vec2::<f32>().unwrap(), y.to_vec2::<f32>().unwrap());
}

/// Saved weights and optimizer state are ordinary files: the mode a plain file created
/// here gets (the umask's), not the 0600 of a private temporary, so other users of a
/// shared runs directory can load a trained student.
#[test]
fn saved_weights_have_an_ordinary_files_mode() {
    use std::os::unix::fs::PermissionsExt;
    // the usual umask, whatever this process inherited (under 077 every file is 0600
    // and the check could not fail); only ever makes this binary's files more readable
    // SAFETY: umask(2) cannot fail
    unsafe { libc::umask(0o022) };
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("plain");
    std::fs::File::create(&plain).unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let w = dir.path().join("w.safetensors");
    basic_plain(4).save(&w).unwrap();
    assert_eq!(mode(&plain), 0o644);
    assert_eq!(mode(&w), 0o644, "{:o}", mode(&w));
    let m = basic_plain(4);
    let opt = meal_models::optim::Sgd::new(
        vec![meal_models::optim::ParamGroup {
            name: "all".into(),
            lr: 0.1,
            weight_decay: 0.0,
            params: meal_models::trainable(m.entries()),
        }],
        meal_models::optim::SgdConfig::default(),
    )
    .unwrap();
    let s = dir.path().join("optim.safetensors");
    opt.save_state(&s).unwrap();
    assert_eq!(mode(&s), 0o644, "{:o}", mode(&s));
}
