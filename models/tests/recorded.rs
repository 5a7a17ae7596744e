//! What weights record of their training (`meal.trained_on`: classes and side) and how
//! a model or a teacher takes it: classes by name, the recorded side, a record that
//! cannot be true refused.

mod common;

use candle_core::{DType, Device, Tensor};
use common::max_abs;
use meal_models::{state_dict, LoadOptions, ResNet};

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

/// A named pipe given as a teacher's weights or its `classes=` file is refused at once,
/// naming it: opened for reading, one waits for a writer inside `open(2)`, where the
/// stop handler's first signal did not end the run (an adversarial run's hang).
#[test]
fn a_named_pipe_as_a_teachers_file_is_refused_not_waited_on() {
    use meal_models::ensemble::{Ensemble, TeacherArg};
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("pipe");
    if !std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .is_ok_and(|s| s.success())
    {
        println!("no mkfifo here: the named-pipe cases are not checked");
        return;
    }
    let m = ResNet::from_preset("demo_tiny", 3, &Device::Cpu, 1).unwrap();
    let weights = dir.path().join("w.safetensors");
    m.save(&weights).unwrap();
    let classes: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
    for (spec, want) in [
        (
            format!("demo_tiny={}", fifo.display()),
            "not a regular file",
        ),
        (
            format!("demo_tiny={},classes={}", weights.display(), fifo.display()),
            "a named pipe no program writes to",
        ),
    ] {
        // (in a thread: a load that waited would hang the test, not fail it)
        let (tx, rx) = std::sync::mpsc::channel();
        let classes = classes.clone();
        std::thread::spawn(move || {
            let r = spec
                .parse::<TeacherArg>()
                .map_err(|e| e.to_string())
                .and_then(|t| {
                    Ensemble::load(&[t], &classes, &Device::Cpu, DType::F32)
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                });
            let _ = tx.send(r);
        });
        let r = rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("the load waited on the named pipe");
        let e = r.unwrap_err();
        assert!(e.contains("pipe") && e.contains(want), "{e}");
    }
}
