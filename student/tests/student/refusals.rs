//! What meal-student refuses, and how: bad settings and inputs are errors naming the
//! flag or file before anything is written (what stops a run midway: `stops`).

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

/// A two-flag refusal whose other flag the `--config` file set names the file: its
/// `loss = "ce"` turned off the discriminator `--disc-lr` tunes, its `labels` store fixed
/// the crops `--scale` would draw (neither named the file).
#[test]
fn a_refusal_over_a_flag_the_config_file_set_names_the_file() {
    let f = fixture();
    let file = f.root.join("run.toml");
    std::fs::write(&file, "loss = \"ce\"\n").unwrap();
    let mut a = args(&f, "cfg-disc");
    a.config = Some(file.clone());
    a.labels = None;
    a.disc_lr = Some(0.1);
    let e = format!("{:#}", go(a).unwrap_err());
    assert!(
        e.starts_with("--disc-lr")
            && e.contains(&format!("(--loss as --config {} sets)", file.display())),
        "{e}"
    );
    std::fs::write(
        &file,
        format!("labels = {:?}\n", f.labels.display().to_string()),
    )
    .unwrap();
    let mut a = args(&f, "cfg-scale");
    a.config = Some(file.clone());
    a.labels = None;
    a.scale = Some(meal_cli::Pair([0.3, 1.0]));
    let e = format!("{:#}", go(a).unwrap_err());
    assert!(
        e.starts_with("--scale 0.3,1 with --labels")
            && e.contains(&format!("(--labels as --config {} sets)", file.display())),
        "{e}"
    );
    assert!(!f.root.join("cfg-disc").exists() && !f.root.join("cfg-scale").exists());
}
