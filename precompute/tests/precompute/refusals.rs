//! Runs refused before they write anything wrong: an impossible encoding, no image
//! labelled, a histogram not named .png, a teacher giving NaN, a batch that cannot fit.

use super::runs::{cli_run, cli_run_with};
use super::*;

/// A store config no store can have (top-k above the class count, top-k in safetensors)
/// or a store inside the dataset is refused before anything is written, naming the flag
/// that asked for it.
#[test]
fn an_impossible_encoding_names_its_flag_and_writes_nothing() {
    let f = fixture(1);
    let cases = [
        ("topk:11", "parquet", "--encoding", "top-11 of 10 classes"),
        ("topk:2", "safetensors", "--format", "dense encoding only"),
    ];
    for (enc, format, flag, said) in cases {
        let mut a = args(&f, "impossible");
        a.encoding = Some(enc.into());
        a.format = Some(format.into());
        if format == "safetensors" {
            // (row groups are Parquet's: refused with safetensors, below)
            a.images_per_row_group = None;
        }
        let e = run::run(&a.resolve().unwrap(), &AtomicBool::new(false)).unwrap_err();
        let msg = format!("{e:#}");
        assert!(msg.starts_with(flag) && msg.contains(said), "{msg}");
        assert!(!msg.contains("--out"), "{msg}");
        assert!(!f.root.join("impossible").exists(), "{enc} {format}");
    }
    let mut a = args(&f, "impossible");
    a.format = Some("safetensors".into());
    let e = format!("{:#}", a.resolve().unwrap_err());
    assert!(
        e.starts_with("--images-per-row-group with --format safetensors"),
        "{e}"
    );
    // a store inside the ImageFolder root would be a class of the next run
    let mut a = args(&f, "unused");
    a.out = Some(f.data.join("labels"));
    let e = format!("{:#}", a.resolve().unwrap_err());
    assert!(e.contains("--out") && e.contains("inside --data"), "{e}");
    // nor into a student's run directory
    let run = f.root.join("a_run");
    std::fs::create_dir_all(run.join("checkpoint")).unwrap();
    let mut a = args(&f, "a_run");
    a.out = Some(run.clone());
    let e = format!(
        "{:#}",
        run::run(&a.resolve().unwrap(), &AtomicBool::new(false)).unwrap_err()
    );
    assert!(e.contains("a meal-student run is there"), "{e}");
    assert!(!run.join("manifest.json").exists());
}

/// A dataset whose every file is unreadable makes an empty store: the run says so and
/// fails (a script's `&&` must not go on to train on nothing), after writing it, and the
/// report it prints neither calls the store complete nor gives an agreement of nothing.
#[test]
fn a_run_that_labels_no_image_fails() {
    let f = fixture(1);
    let ds = Dataset::open(&f.data, LinkPolicy::default()).unwrap();
    for s in ds.samples() {
        std::fs::write(ds.full_path(s), b"").unwrap();
    }
    let run = cli_run(&f, "empty");
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success(), "{err}");
    assert!(
        err.contains(&format!("every one of the {} images", ds.samples().len()))
            && err.contains("the store holds no labels"),
        "{err}"
    );
    // the report above the error does not call it complete, nor give figures of nothing
    let out = String::from_utf8_lossy(&run.stdout);
    assert!(
        !out.contains("store complete") && out.contains("ensemble         no crops labelled"),
        "{out}"
    );
    // verify finds it intact but says it labels nothing, and fails
    let e = inspect::verify(&f.root.join("empty"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("label no image") && e.contains(&format!("the {} images", ds.samples().len())),
        "{e}"
    );
    // inspect shows it (it is what inspect is for) and says so
    let text = inspect::inspect(&f.root.join("empty"), 0).unwrap().text;
    assert!(
        text.contains("every image of the dataset was skipped"),
        "{text}"
    );
}

/// `inspect --histogram` writes a PNG: another extension is refused before the store is
/// read, naming the flag.
#[test]
fn the_histogram_must_be_named_png() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_meal-precompute"))
        .args(["inspect", "no-such-store", "--histogram", "plot.jpg"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("--histogram plot.jpg") && err.contains("PNG"),
        "{err}"
    );
}

/// An error met while running over a value the `--config` file set (a relative --data
/// read from another directory) names the file; one over a flag given on the command
/// line does not.
#[test]
fn a_config_value_that_fails_while_running_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("pre.toml");
    std::fs::write(
        &cfg,
        "data = \"no-such/train\"\nteacher = \"demo_resnet10=t.safetensors\"\nout = \"labels\"\n",
    )
    .unwrap();
    let run = |extra: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_meal-precompute"))
            .current_dir(dir.path())
            .args(["run", "--config", "pre.toml", "--threads", "1"])
            .args(extra)
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let err = run(&[]);
    assert!(
        err.contains("--data no-such/train") && err.contains("(--data as --config pre.toml sets; its relative paths are read from the current directory"),
        "{err}"
    );
    let err = run(&["--data", "gone/train"]);
    assert!(
        err.contains("--data gone/train") && !err.contains("--config pre.toml"),
        "{err}"
    );
}

/// A worker that owns no shard (more workers than the store has shards) says so and
/// what it did, not "its 0 shards were there already".
#[test]
fn a_worker_without_shards_says_so() {
    let f = fixture(1);
    let worker = |w: &str| {
        let out = cli_run_with(&f, "w", &["--worker", w, "--samples-per-shard", "4"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        (
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (so, se) = worker("3/4");
    // 10 images, 4 a shard: shards 0..3, none of them worker 3's
    assert!(
        se.contains("--worker 3/4: the store has 3 shards (of --samples-per-shard 4), none of them this worker's"),
        "{se}"
    );
    assert!(
        so.contains("this run: nothing to write (see above)"),
        "{so}"
    );
    // its part is merged with the others', and a rerun after the merge says so
    for w in ["0/4", "1/4", "2/4"] {
        worker(w);
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_meal-precompute"))
        .args(["merge", "--data"])
        .arg(&f.data)
        .arg("--out")
        .arg(f.root.join("w"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (so, _) = worker("3/4");
    assert!(
        so.contains("its part is complete, and the store is merged"),
        "{so}"
    );
}

/// A device list rerun with another count of devices is refused once, not once per
/// device with the same words.
#[test]
fn a_device_list_of_another_count_is_refused_once() {
    let f = fixture(1);
    let run = |devices: &str| {
        let out = cli_run_with(
            &f,
            "d",
            &[
                "--samples-per-shard",
                "4",
                "--limit",
                "4",
                "--device",
                devices,
            ],
        );
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (ok, err) = run("cpu,cpu");
    assert!(ok, "{err}");
    let (ok, err) = run("cpu,cpu,cpu");
    assert!(!ok);
    assert_eq!(
        err.matches("written by a split into another number of workers than 3")
            .count(),
        1,
        "{err}"
    );
    assert!(
        err.contains("worker 1, 2 of 3 failed the same way"),
        "{err}"
    );
}

/// A NaN in a teacher's weights is refused at load, naming the tensor, before any store
/// is made; a teacher whose softmax is NaN from finite weights (an overflow) stops the
/// run naming the teacher and the image, not the store's generic "finite
/// probabilities" check.
#[test]
fn a_non_finite_teacher_is_named() {
    let f = fixture(1);
    let m = ResNet::from_preset("demo_resnet10", 10, &Device::Cpu, 2).unwrap();
    let set = |name: &str, value: f32, count: usize| {
        let e = m.entries().iter().find(|e| e.name == name).unwrap();
        let mut v = e
            .var
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        v[..count].fill(value);
        e.var
            .set(&Tensor::from_vec(v, e.shape.as_slice(), &Device::Cpu).unwrap())
            .unwrap();
    };
    set("fc.bias", f32::NAN, 1);
    m.save(&f.t2).unwrap();
    let e = run::run(&args(&f, "nan").resolve().unwrap(), &AtomicBool::new(false)).unwrap_err();
    let msg = format!("{e:#}");
    assert!(
        msg.contains("t2.safetensors: tensor fc.bias holds non-finite values"),
        "{msg}"
    );
    assert!(!f.root.join("nan").exists(), "a store was started: {msg}");
    // finite weights whose logits overflow: the first class's row at f32's largest
    set("fc.bias", 0.0, 1);
    set("fc.weight", f32::MAX, 128);
    m.save(&f.t2).unwrap();
    let e = run::run(&args(&f, "nan").resolve().unwrap(), &AtomicBool::new(false)).unwrap_err();
    let msg = format!("{e:#}");
    assert!(
        msg.contains("teacher demo_resnet10 (t2.safetensors)")
            && msg.contains("non-finite")
            && msg.contains(".jpg (crop "),
        "{msg}"
    );
}

/// A batch whose activations cannot fit in memory (a teacher at 4096 px: about 270 MB
/// a crop for demo_tiny's stem alone, 8192 crops of one image a forward) is refused
/// naming --batch and the teacher, before a crop is decoded or a file written.
#[test]
fn a_batch_that_cannot_fit_in_memory_is_refused() {
    let f = fixture(1);
    let mut a = args(&f, "huge");
    a.teacher = vec![format!("demo_tiny={},size=4096", f.t1.display())];
    a.batch = Some(8192);
    a.crops_per_image = Some(8192);
    let e = run::run(&a.resolve().unwrap(), &AtomicBool::new(false)).unwrap_err();
    let msg = format!("{e:#}");
    assert!(
        msg.contains("--batch 8192 with --teacher demo_tiny=")
            && msg.contains("at 4096 px")
            && msg.contains("lower --batch or the teacher's size="),
        "{msg}"
    );
    assert!(!f.root.join("huge").exists());

    // --limit does not bound a forward (it labels whole shards): 4 of a shard's 7
    // images, 512 crops each, a forward, with --limit 1 too
    let mut a = args(&f, "huge-limit");
    a.teacher = vec![format!("demo_tiny={},size=4096", f.t1.display())];
    a.batch = Some(2048);
    a.crops_per_image = Some(512);
    a.limit = Some(1);
    let e = run::run(&a.clone().resolve().unwrap(), &AtomicBool::new(false)).unwrap_err();
    let msg = format!("{e:#}");
    assert!(msg.contains("a forward over 2048 crops"), "{msg}");
    // the CPU devices of a list each hold their forward at once (any spelling of cpu),
    // as many as there are shards to share
    a.device = Some("CPU,cpu".into());
    a.limit = None;
    a.batch = Some(512);
    a.samples_per_shard = Some(4);
    let e = run::run(&a.clone().resolve().unwrap(), &AtomicBool::new(false)).unwrap_err();
    let msg = format!("{e:#}");
    assert!(
        msg.contains("a forward over 512 crops")
            && msg.contains("on each of the 2 CPU devices of --device at once"),
        "{msg}"
    );
    a.samples_per_shard = Some(16);
    let e = run::run(&a.resolve().unwrap(), &AtomicBool::new(false)).unwrap_err();
    let msg = format!("{e:#}");
    assert!(
        msg.contains("a forward over 512 crops") && !msg.contains("CPU devices"),
        "{msg}"
    );
    assert!(!f.root.join("huge-limit").exists());

    // the shard being filled is held until written: its labels, past the memory there
    // is (an address-space limit here), are refused before any labelling (a run aborted
    // with "memory allocation failed" once the shard was labelled), the forward fitting
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg("ulimit -v 600000 && exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_meal-precompute"))
        .arg("run")
        .arg("--data")
        .arg(&f.data)
        .arg("--out")
        .arg(f.root.join("big-shard"))
        .args([
            "--crops-per-image",
            "65536",
            "--batch",
            "64",
            "--threads",
            "1",
        ])
        .arg("--teacher")
        .arg(format!("demo_tiny={},size=16", f.t1.display()))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("x --crops-per-image 65536 crops of 10 classes, held until it is written")
            && err.contains("batches of 65536 crops loaded")
            && err
                .contains("lower --samples-per-shard, --images-per-row-group or --crops-per-image"),
        "{err}"
    );
    assert!(!f.root.join("big-shard").exists());
}

/// A teacher whose weights record the side they were trained at runs at it; a store
/// made at another side (before teachers did, or with size=) is refused on a rerun
/// without size=, with the spec that continues it.
#[test]
fn a_store_made_at_another_side_than_the_recorded_one_names_size() {
    let f = fixture(1);
    let w = f.root.join("recorded.safetensors");
    let m = ResNet::from_preset("demo_tiny", 10, &Device::Cpu, 5).unwrap();
    let meta = [(
        meal_models::META_TRAINED_ON.to_string(),
        r#"{"classes":null,"res":12}"#.to_string(),
    )];
    meal_models::save_safetensors_with(m.entries(), &w, Some(meta.into_iter().collect())).unwrap();
    let mut a = args(&f, "sided");
    a.teacher = vec![format!("demo_tiny={},size=16", w.display())];
    a.limit = Some(7);
    assert!(!go(&a.clone().resolve().unwrap()).complete);
    a.teacher = vec![format!("demo_tiny={}", w.display())];
    let e = format!(
        "{:#}",
        run::run(&a.resolve().unwrap(), &AtomicBool::new(false)).unwrap_err()
    );
    assert!(
        e.contains("input_size")
            && e.contains("runs at 12 px, the side its weights record")
            && e.contains("add ,size=16 to its spec"),
        "{e}"
    );
}
