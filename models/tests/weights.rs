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

/// Weights that record their classes (`meal.trained_on`) in another order than the
/// data's are loaded by name (a classifier taken by index scored 0 %), as are weights
/// that record more classes than the data's; a teacher that records other classes is
/// refused, naming them; weights that record nothing, or a dataset of numbered classes,
/// are taken by index.
#[test]
fn recorded_classes_are_taken_by_name() {
    use meal_models::ensemble::Teacher;
    use meal_models::{ClassOrder, META_TRAINED_ON};
    let dir = tempfile::tempdir().unwrap();
    let names = |c: &[&str]| c.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let tiny = |seed| ResNet::from_preset("demo_tiny", 3, &Device::Cpu, seed).unwrap();
    let a = tiny(1);
    // the same model with its classifier's rows reversed, recording classes c, b, a
    let b = tiny(2);
    let rev = Tensor::new(&[2u32, 1, 0], &Device::Cpu).unwrap();
    for e in b.entries() {
        let t = state_dict(a.entries())[&e.name].clone();
        let t = match e.name.starts_with("fc.") {
            true => t.index_select(&rev, 0).unwrap(),
            false => t,
        };
        e.var.set(&t).unwrap();
    }
    let perm = dir.path().join("perm.safetensors");
    let meta = [(
        META_TRAINED_ON.to_string(),
        r#"{"classes":["c","b","a"],"res":null}"#.to_string(),
    )];
    meal_models::save_safetensors_with(b.entries(), &perm, Some(meta.into_iter().collect()))
        .unwrap();
    let x = Tensor::randn(0f32, 1., (2, 3, 32, 32), &Device::Cpu).unwrap();
    let want = a.forward_t(&x, false).unwrap();
    let c = tiny(3);
    let (_, order) = c
        .load_weights_for(&perm, LoadOptions::default(), &names(&["a", "b", "c"]))
        .unwrap();
    assert_eq!(order, ClassOrder::Permuted(vec![2, 1, 0]));
    assert_eq!(
        max_abs(&(c.forward_t(&x, false).unwrap() - &want).unwrap()),
        0.0
    );
    // numbered classes: by index (the file's own order)
    let (_, order) = c
        .load_weights_for(&perm, LoadOptions::default(), &names(&["0", "1", "2"]))
        .unwrap();
    assert_eq!(order, ClassOrder::Same);
    let got = c.forward_t(&x, false).unwrap();
    assert_eq!(
        max_abs(&(got - b.forward_t(&x, false).unwrap()).unwrap()),
        0.0
    );
    // a teacher recording other classes is refused, naming them
    let spec = meal_data::CropSpec::new(
        32,
        meal_data::Filter::Bilinear,
        meal_data::Normalize::default(),
    )
    .unwrap();
    let e = Teacher::load(
        "demo_tiny",
        &perm,
        &names(&["a", "x", "c"]),
        spec,
        &Device::Cpu,
        DType::F32,
    );
    let e = e.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(
        e.contains("trained on other classes") && e.contains("1 of the data's 3 classes"),
        "{e}"
    );
    // the same classes in the data's order: taken as they are
    Teacher::load(
        "demo_tiny",
        &perm,
        &names(&["c", "b", "a"]),
        spec,
        &Device::Cpu,
        DType::F32,
    )
    .unwrap();
    // some of its classes (an ImageNet subset taught by 1000-class weights): the
    // logits of the data's classes, by name
    let sub = ResNet::from_preset("demo_tiny", 2, &Device::Cpu, 4).unwrap();
    let (_, order) = sub
        .load_weights_for(&perm, LoadOptions::default(), &names(&["c", "a"]))
        .unwrap();
    assert_eq!(
        order,
        ClassOrder::Subset {
            rows: vec![0, 2],
            of: 3
        }
    );
    let idx = Tensor::new(&[2u32, 0], &Device::Cpu).unwrap();
    let want_sub = want.index_select(&idx, 1).unwrap();
    assert_eq!(
        max_abs(&(sub.forward_t(&x, false).unwrap() - &want_sub).unwrap()),
        0.0
    );
    let t = Teacher::load(
        "demo_tiny",
        &perm,
        &names(&["c", "a"]),
        spec,
        &Device::Cpu,
        DType::F32,
    )
    .unwrap();
    assert_eq!(t.model.forward_t(&x, false).unwrap().dims(), [2, 2]);
    // weights that record nothing (timm's), with a class list (classes=): by name too
    let plain = dir.path().join("plain.safetensors");
    meal_models::save_safetensors_with(b.entries(), &plain, None).unwrap();
    let list = |c: &[&str]| Some(names(c));
    let t = Teacher::load_named(
        "demo_tiny",
        &plain,
        list(&["c", "b", "a"]),
        &names(&["c", "a"]),
        spec,
        &Device::Cpu,
        DType::F32,
    )
    .unwrap();
    assert_eq!(
        max_abs(&(t.model.forward_t(&x, false).unwrap() - &want_sub).unwrap()),
        0.0
    );
    let load = |path: &std::path::Path, logits| {
        Teacher::load_named(
            "demo_tiny",
            path,
            logits,
            &names(&["c", "a"]),
            spec,
            &Device::Cpu,
            DType::F32,
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default()
    };
    // a list of another length than the classifier's rows; a list that contradicts
    // the weights' own record
    let e = load(&plain, list(&["c", "b", "a", "d"]));
    assert!(e.contains("has 3 rows and its class list names 4"), "{e}");
    // a list of the data's classes alone, for weights of more: the list is named
    let e = load(&plain, list(&["c", "a"]));
    assert!(
        e.contains("the weights classify 3 classes") && e.contains("its classes= list names 2"),
        "{e}"
    );
    // a list that does not name the data's classes: refused by name, before the
    // classifier's shape is compared; a list of "name description" lines said so
    let e = load(&plain, list(&["c", "b", "x", "y"]));
    assert!(
        e.contains("1 of the data's 2 classes are not among those its classes= list names (a)"),
        "{e}"
    );
    let e = load(&plain, list(&["c big cat", "b bird", "a ant"]));
    assert!(e.contains("one class name per line"), "{e}");
    // a record that names a class twice, or does not parse: refused, naming the file
    for (name, record) in [
        ("twice", r#"{"classes":["c","a","c"],"res":null}"#),
        ("garbled", r#"{"classes":"oops"}"#),
        ("side", r#"{"classes":null,"res":0}"#),
        ("more", r#"{"classes":["a","b","c","d"],"res":null}"#),
        ("empty", r#"{"classes":[],"res":null}"#),
    ] {
        let path = dir.path().join(format!("{name}.safetensors"));
        let meta = [(META_TRAINED_ON.to_string(), record.to_string())];
        meal_models::save_safetensors_with(b.entries(), &path, Some(meta.into_iter().collect()))
            .unwrap();
        let e = load(&path, None);
        assert!(
            e.contains(&format!("{name}.safetensors: its meal.trained_on record")),
            "{e}"
        );
    }
    assert!(load(&dir.path().join("twice.safetensors"), None).contains("names class \"c\" twice"));
    // a record that cannot be true (it read as a bad --res, or as the data's count)
    for (name, said) in [
        ("side", "gives a side of 0 px"),
        ("more", "names 4 classes for a classifier of 3 logits"),
        ("empty", "names no class"),
    ] {
        let e = load(&dir.path().join(format!("{name}.safetensors")), None);
        assert!(e.contains(said), "{name}: {e}");
    }
    // no list: the classifier's shape, and the way to name its classes
    let e = load(&plain, None);
    assert!(
        e.contains("the weights classify 3 classes") && e.contains("classes=FILE"),
        "{e}"
    );
    // weights of fewer classes than the data's: no way to a subset is offered
    let one = dir.path().join("one.safetensors");
    ResNet::from_preset("demo_tiny", 1, &Device::Cpu, 4)
        .unwrap()
        .save(&one)
        .unwrap();
    let e = load(&one, None);
    assert!(
        e.contains("the weights classify 1 classes") && !e.contains("classes=FILE"),
        "{e}"
    );
    let e = load(&perm, list(&["a", "b", "c"]));
    assert!(
        e.contains("perm.safetensors") && e.contains("leave classes= out"),
        "{e}"
    );
}

/// A teacher whose weights record the side they were trained at (meal-student's) runs
/// at that side unless its spec gives `size=`, as `eval --weights` does: a student
/// trained at 32 px reused as a teacher ran at the preset's 64 px.
#[test]
fn a_teacher_runs_at_its_recorded_side_unless_the_spec_gives_one() {
    use meal_models::ensemble::{Ensemble, TeacherArg};
    use meal_models::META_TRAINED_ON;
    let dir = tempfile::tempdir().unwrap();
    let m = ResNet::from_preset("demo_tiny", 3, &Device::Cpu, 1).unwrap();
    let recorded = dir.path().join("at32.safetensors");
    let meta = [(
        META_TRAINED_ON.to_string(),
        r#"{"classes":null,"res":32}"#.to_string(),
    )];
    meal_models::save_safetensors_with(m.entries(), &recorded, Some(meta.into_iter().collect()))
        .unwrap();
    let plain = dir.path().join("plain.safetensors");
    m.save(&plain).unwrap();
    let classes: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
    let side = |spec: String| {
        let t: TeacherArg = spec.parse().unwrap();
        let e = Ensemble::load(&[t], &classes, &Device::Cpu, DType::F32).unwrap();
        e.specs()[0].size
    };
    let preset = meal_models::input_config("demo_tiny").unwrap().size;
    assert_ne!(preset, 32);
    assert_eq!(side(format!("demo_tiny={}", recorded.display())), 32);
    assert_eq!(
        side(format!("demo_tiny={},size=48", recorded.display())),
        48
    );
    assert_eq!(side(format!("demo_tiny={}", plain.display())), preset);
    // the same weights seen the same way twice are named (the mean counts them twice);
    // at another side they are another view
    let specs: Vec<TeacherArg> = [
        format!("demo_tiny={}", plain.display()),
        format!("demo_tiny={},size=48", plain.display()),
        format!("demo_tiny={}", plain.display()),
    ]
    .iter()
    .map(|s| s.parse().unwrap())
    .collect();
    let e = Ensemble::load(&specs, &classes, &Device::Cpu, DType::F32).unwrap();
    assert_eq!(e.repeated(), [(0, 2)]);
    let said = e.repeated_said(&["A".into(), "B".into(), "C".into()]);
    assert!(
        said.len() == 1 && said[0].starts_with("A and C are the same weights (sha256 "),
        "{said:?}"
    );
}
