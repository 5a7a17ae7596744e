//! Resume equals an uninterrupted run, after a crash anywhere in its saves and with its
//! inputs moved; its inputs are compared by content, and a changed flag is named.

use super::*;

#[test]
fn resume_equals_an_uninterrupted_run_and_settings_must_match() {
    let f = fixture();
    let whole = go(args(&f, "whole")).unwrap();
    assert_eq!(whole.history.len(), 2);
    assert!(!whole.interrupted);
    // --resume where no run saved anything yet (a requeue after a kill before the first
    // checkpoint): the run from the beginning, the same weights
    let mut a = args(&f, "requeued");
    a.resume = Some(true);
    go(a).unwrap();
    assert_eq!(
        weights(&f.root.join("requeued/student.safetensors")),
        weights(&f.root.join("whole/student.safetensors"))
    );
    // stop in the middle of the first epoch (5 steps an epoch here), then resume
    let mut a = args(&f, "resumed");
    a.max_steps = Some(1);
    let r = go(a).unwrap();
    assert!(r.interrupted);
    let mut bad = args(&f, "resumed");
    bad.resume = Some(true);
    bad.lr = Some(0.02);
    let e = format!("{:#}", go(bad).unwrap_err());
    // the flag with both values; --disc-lr, which follows --lr, is not named
    assert!(
        e.contains("--lr (run: 0.05, now: 0.02)") && !e.contains("--disc-lr"),
        "{e}"
    );
    // a changed bad-file policy is taken (every file reads: the same steps)
    let mut b = args(&f, "resumed");
    b.resume = Some(true);
    b.on_bad_file = Some("fail".into());
    // (and --data given relative to the working directory)
    let cwd = std::env::current_dir().unwrap();
    let up: PathBuf = cwd.components().skip(1).map(|_| "..").collect();
    b.data = Some(up.join(f.data.strip_prefix("/").unwrap()));
    assert!(b.data.as_ref().unwrap().is_relative());
    let r = go(b).unwrap();
    assert!(!r.interrupted);
    assert_eq!(r.steps, whole.steps);
    // the checkpoint records the resumed run's settings (the change is warned of once,
    // not again on each later resume) and its --data as an absolute path (a resume from
    // another working directory still finds the run's data to compare with)
    let state: serde_json::Value = serde_json::from_slice(
        &std::fs::read(f.root.join("resumed/checkpoint/state.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(state["settings"]["policy"], "fail");
    let data = state["settings"]["data"].as_str().unwrap();
    assert!(Path::new(data).is_absolute(), "{data}");
    let (x, y) = (
        std::fs::read(f.root.join("whole/student.safetensors")).unwrap(),
        std::fs::read(f.root.join("resumed/student.safetensors")).unwrap(),
    );
    assert!(x == y, "resumed weights differ from the uninterrupted run");
    for (p, q) in whole.history.iter().zip(&r.history) {
        assert_eq!(
            (p.epoch, p.loss, p.kd, p.disc, p.crops),
            (q.epoch, q.loss, q.kd, q.disc, q.crops)
        );
    }
    // the logs a person reads
    let jsonl = std::fs::read_to_string(f.root.join("resumed/metrics.jsonl")).unwrap();
    assert_eq!(jsonl.lines().count(), 2);
    let csv = std::fs::read_to_string(f.root.join("resumed/summary.csv")).unwrap();
    assert!(csv.starts_with("epoch,lr,loss"));
    let curves = image::open(f.root.join("resumed/curves.png")).unwrap();
    assert_eq!((curves.width(), curves.height()), (1440, 400));
    // checkpoints within an epoch (--checkpoint-every 1: after each step but the
    // epoch's last, which its end saves) leave the run as it was: the same weights
    let mut every = args(&f, "every");
    every.checkpoint_every = Some("1".into());
    let r = go(every).unwrap();
    let per = whole.steps as usize / 2;
    let want: Vec<(u32, usize)> = (0..2).flat_map(|e| (1..per).map(move |b| (e, b))).collect();
    assert_eq!(r.periodic_saves, want);
    assert!(std::fs::read(f.root.join("every/student.safetensors")).unwrap() == x);
    let mut off = args(&f, "off");
    off.checkpoint_every = Some("off".into());
    assert!(go(off).unwrap().periodic_saves.is_empty());
    // a fresh run into a used directory is refused
    let e = go(args(&f, "whole")).unwrap_err();
    assert!(format!("{e:#}").contains("--resume"), "{e:#}");
    // a finished run goes on to more epochs (the step schedule's rates do not depend on
    // them): the weights of a run of that many from the start, the history extended
    // (its checkpoint moved to another disk and linked back: saved there, the link kept)
    let moved = f.root.join("bigger_disk/ckpt");
    std::fs::create_dir_all(moved.parent().unwrap()).unwrap();
    std::fs::rename(f.root.join("whole/checkpoint"), &moved).unwrap();
    std::os::unix::fs::symlink(&moved, f.root.join("whole/checkpoint")).unwrap();
    let mut more = args(&f, "whole");
    more.resume = Some(true);
    more.epochs = Some(3);
    assert_eq!(go(more).unwrap().history.len(), 3);
    let link = std::fs::symlink_metadata(f.root.join("whole/checkpoint")).unwrap();
    assert!(
        link.is_symlink(),
        "the link to the moved checkpoint was replaced"
    );
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(moved.join("state.json")).unwrap()).unwrap();
    assert_eq!(
        state["epoch"], 3,
        "the moved checkpoint holds the last save"
    );
    let mut three = args(&f, "three");
    three.epochs = Some(3);
    go(three).unwrap();
    let (x, y) = (
        std::fs::read(f.root.join("whole/student.safetensors")).unwrap(),
        std::fs::read(f.root.join("three/student.safetensors")).unwrap(),
    );
    assert!(x == y, "3 epochs by a resume differ from 3 from the start");
    // not fewer than it has run
    let mut fewer = args(&f, "whole");
    fewer.resume = Some(true);
    fewer.epochs = Some(2);
    let e = format!("{:#}", go(fewer).unwrap_err());
    assert!(e.contains("already begun 3 epochs"), "{e}");
    // under cosine every step's rate follows --epochs: refused, saying why
    let mut cos = args(&f, "cos");
    cos.schedule = Some("cosine".into());
    cos.max_steps = Some(1);
    go(cos.clone()).unwrap();
    cos.resume = Some(true);
    cos.epochs = Some(3);
    let e = format!("{:#}", go(cos).unwrap_err());
    assert!(
        e.contains("--epochs (run: 2, now: 3)") && e.contains("not under cosine"),
        "{e}"
    );
}

/// A crash after the last checkpoint, in the middle of writing the final weights and
/// tables, or between the checkpoint directory's two renames: `--resume` ends with the
/// uninterrupted run's files and no leftovers, and a plain rerun still sees the run.
#[test]
fn a_crash_inside_the_last_saves_is_recovered_on_resume() {
    let f = fixture();
    go(args(&f, "whole")).unwrap();
    let read = |run: &str, name: &str| std::fs::read(f.root.join(run).join(name)).unwrap();
    let cut = f.root.join("cut");
    // the run as a crash after its last checkpoint leaves it: the finished run's
    // checkpoint, older weights (here another run's), a torn temporary of the new ones,
    // one line of metrics
    let mut one = args(&f, "one");
    one.epochs = Some(1);
    go(one).unwrap();
    std::fs::create_dir_all(cut.join("checkpoint")).unwrap();
    for sub in ["", "checkpoint"] {
        for e in std::fs::read_dir(f.root.join("whole").join(sub)).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_file() {
                std::fs::copy(e.path(), cut.join(sub).join(e.file_name())).unwrap();
            }
        }
    }
    std::fs::write(
        cut.join("student.safetensors"),
        read("one", "student.safetensors"),
    )
    .unwrap();
    std::fs::write(cut.join(".student.safetensors.meal-tmp"), b"torn").unwrap();
    let jsonl = String::from_utf8(read("cut", "metrics.jsonl")).unwrap();
    std::fs::write(cut.join("metrics.jsonl"), jsonl.lines().next().unwrap()).unwrap();
    // and between the checkpoint swap's two renames: the old one moved aside and a
    // whole temporary
    std::fs::rename(cut.join("checkpoint"), cut.join(".checkpoint.meal-old")).unwrap();
    std::fs::create_dir(cut.join(".checkpoint.meal-tmp")).unwrap();
    for e in std::fs::read_dir(cut.join(".checkpoint.meal-old")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(
            e.path(),
            cut.join(".checkpoint.meal-tmp").join(e.file_name()),
        )
        .unwrap();
    }
    // a user's backups under the plain names are theirs: neither removed nor used
    std::fs::create_dir(cut.join("checkpoint.old")).unwrap();
    std::fs::write(cut.join("checkpoint.old/mine"), b"mine").unwrap();
    std::fs::write(cut.join("student.safetensors.tmp"), b"mine").unwrap();
    // a plain rerun still finds the run
    let e = format!("{:#}", go(args(&f, "cut")).unwrap_err());
    assert!(e.contains("--resume"), "{e}");
    let mut b = args(&f, "cut");
    b.resume = Some(true);
    let r = go(b).unwrap();
    assert_eq!(r.history.len(), 2);
    assert!(
        read("cut", "student.safetensors") == read("whole", "student.safetensors"),
        "the final weights are the last checkpoint's"
    );
    assert_eq!(
        String::from_utf8(read("cut", "metrics.jsonl"))
            .unwrap()
            .lines()
            .count(),
        2
    );
    for left in [
        ".student.safetensors.meal-tmp",
        ".checkpoint.meal-old",
        ".checkpoint.meal-tmp",
    ] {
        assert!(!cut.join(left).exists(), "{left} left behind");
    }
    assert_eq!(read("cut", "checkpoint.old/mine"), b"mine");
    assert_eq!(read("cut", "student.safetensors.tmp"), b"mine");
}

/// Resume compares inputs by content: moved data, a renamed run directory, a trailing
/// slash and another thread count are accepted and give the uninterrupted run's bytes;
/// another label store at the same path, or images added to the data, are refused.
#[test]
fn resume_checks_inputs_by_content_not_by_path() {
    let f = fixture();
    let whole = go(args(&f, "whole")).unwrap();
    let mut a = args(&f, "part");
    a.max_steps = Some(1);
    assert!(go(a).unwrap().interrupted);
    // move the run, the data and the store, resume with other spellings and one thread
    std::fs::rename(f.root.join("part"), f.root.join("moved")).unwrap();
    let data2 = f.root.join("data-moved");
    std::fs::rename(&f.data, &data2).unwrap();
    let labels2 = f.root.join("labels-moved");
    std::fs::rename(&f.labels, &labels2).unwrap();
    let mut b = args(&f, "moved/");
    b.data = Some(PathBuf::from(format!("{}/./", data2.display())));
    b.labels = Some(labels2.clone());
    b.threads = Some(1);
    b.resume = Some(true);
    b.max_steps = Some(2);
    assert!(go(b).unwrap().interrupted);
    // another store at the same path: refused, by content
    let other = f.root.join("other-labels");
    precompute(&data2, &other, &f.teachers[..1]);
    std::fs::rename(&labels2, f.root.join("labels-aside")).unwrap();
    std::fs::rename(&other, &labels2).unwrap();
    let mut c = args(&f, "moved");
    c.data = Some(data2.clone());
    c.labels = Some(labels2.clone());
    c.resume = Some(true);
    let e = format!("{:#}", go(c).unwrap_err());
    // (the run's store is where its last resume read it)
    assert!(
        e.contains(&format!(
            "--labels (the label store {} changed since the run",
            labels2.display()
        )) && e.contains("start a new run in another --out with --init"),
        "{e}"
    );
    std::fs::rename(&labels2, &other).unwrap();
    std::fs::rename(f.root.join("labels-aside"), &f.labels).unwrap();
    // another store at another path: named as another than the run's
    let mut c = args(&f, "moved");
    c.data = Some(data2.clone());
    c.labels = Some(other.clone());
    c.resume = Some(true);
    let e = format!("{:#}", go(c).unwrap_err());
    assert!(
        e.contains("--labels (another label store than the run's"),
        "{e}"
    );
    std::fs::rename(&data2, &f.data).unwrap();
    // the rest of the run, back on the original paths, with a --val the run did not
    // have (validation trains nothing): the uninterrupted run's bytes
    let mut d = args(&f, "moved");
    d.resume = Some(true);
    d.val = Some(f.data.clone());
    let r = go(d).unwrap();
    assert!(!r.interrupted);
    assert_eq!(r.steps, whole.steps);
    assert!(
        std::fs::read(f.root.join("whole/student.safetensors")).unwrap()
            == std::fs::read(f.root.join("moved/student.safetensors")).unwrap(),
        "a resume across moves, thread counts and an added --val changed the result"
    );
    assert!(r.history.last().is_some_and(|m| m.val_top1.is_some()));
}

/// A resume refused for a changed setting names its flag: one that sizes an epoch
/// (`--batch`; an intact state.json was called altered) and the step schedule's
/// (`--lr-steps`, not the schedule's record). A store rebuilt with renamed copies of its
/// teachers is the same store.
#[test]
fn a_resume_names_the_flag_changed_and_takes_a_rebuilt_store() {
    let f = fixture();
    let mut a = args(&f, "r");
    a.schedule = Some("step".into());
    a.lr_steps = Some(2);
    a.max_steps = Some(3);
    assert!(go(a.clone()).unwrap().interrupted);
    a.resume = Some(true);
    let mut b = a.clone();
    b.batch = Some(32); // an epoch of fewer steps than the 3 taken
    let e = format!("{:#}", go(b).unwrap_err());
    assert!(
        e.contains("--batch (run: 8, now: 32)") && !e.contains("altered"),
        "{e}"
    );
    // a batch no epoch can fill is the change it is, not "more images than the data"
    // (the settings are compared before the run is set up)
    let mut b = a.clone();
    b.batch = Some(10_000);
    let e = format!("{:#}", go(b).unwrap_err());
    assert!(e.contains("--batch (run: 8, now: 10000)"), "{e}");
    let mut c = a.clone();
    c.lr_steps = Some(3);
    let e = format!("{:#}", go(c).unwrap_err());
    assert!(
        e.contains("--lr-steps (run: 2, now: 3)") && !e.contains("kind"),
        "{e}"
    );
    let specs: Vec<String> = f
        .teachers
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let (arch, rest) = t.split_once('=').unwrap();
            let (path, opts) = rest.split_once(',').unwrap();
            let copy = f.root.join(format!("copy-{i}.safetensors"));
            std::fs::copy(path, &copy).unwrap();
            format!("{arch}={},{opts}", copy.display())
        })
        .collect();
    let rebuilt = f.root.join("rebuilt");
    precompute(&f.data, &rebuilt, &specs);
    let mut d = a.clone();
    d.labels = Some(rebuilt);
    d.max_steps = Some(4);
    assert!(
        go(d).unwrap().interrupted,
        "the same store, its teachers renamed"
    );
}

/// A resume reads its checkpoint's weights, not `--init`: a removed `--init` (or none)
/// is accepted. Online teachers are inputs by content: other weights at the same path
/// are refused, the same weights at another path accepted.
#[test]
fn a_resume_needs_no_init_and_compares_online_teachers_by_content() {
    let f = fixture();
    let init = f.root.join("init.safetensors");
    ResNet::from_preset("demo_tiny", 10, &Device::Cpu, 5)
        .unwrap()
        .save(&init)
        .unwrap();
    let mut a = args(&f, "r");
    a.init = Some(init.clone());
    a.max_steps = Some(1);
    assert!(go(a.clone()).unwrap().interrupted);
    std::fs::remove_file(&init).unwrap();
    a.resume = Some(true);
    a.max_steps = Some(2);
    assert!(go(a.clone()).unwrap().interrupted, "a removed --init");
    a.init = None;
    a.max_steps = Some(3);
    assert!(go(a).unwrap().interrupted, "no --init");

    let teacher = f.root.join("ot.safetensors");
    std::fs::copy(f.teachers[0].split(['=', ',']).nth(1).unwrap(), &teacher).unwrap();
    let spec = |p: &Path| format!("demo_tiny={},size=24", p.display());
    let mut o = args(&f, "online");
    o.online_teacher = vec![spec(&teacher)];
    o.max_steps = Some(1);
    assert!(go(o.clone()).unwrap().interrupted);
    // other weights at the same path
    let moved = f.root.join("ot-moved.safetensors");
    std::fs::rename(&teacher, &moved).unwrap();
    ResNet::from_preset("demo_tiny", 10, &Device::Cpu, 99)
        .unwrap()
        .save(&teacher)
        .unwrap();
    o.resume = Some(true);
    o.max_steps = Some(2);
    let e = format!("{:#}", go(o.clone()).unwrap_err());
    assert!(
        e.contains("--online-teacher (other teachers or weights)"),
        "{e}"
    );
    // the same weights at another path
    o.online_teacher = vec![spec(&moved)];
    assert!(
        go(o.clone()).unwrap().interrupted,
        "the same teacher, moved"
    );
    // the same weights, their classes named in another order (classes=): said so
    let list = f.root.join("reversed.txt");
    let mut names = meal_data::synth::class_names();
    names.reverse();
    std::fs::write(&list, names.join("\n")).unwrap();
    o.online_teacher = vec![format!("{},classes={}", spec(&moved), list.display())];
    o.max_steps = Some(3);
    let e = format!("{:#}", go(o).unwrap_err());
    assert!(
        e.contains("the same teachers, their classes taken from other logits"),
        "{e}"
    );
    // a store given to the resume of a run that had none: to be left out
    let mut n = args(&f, "online-only");
    n.labels = None;
    n.online_teacher = vec![spec(&moved)];
    n.max_steps = Some(1);
    assert!(go(n.clone()).unwrap().interrupted);
    n.labels = Some(f.labels.clone());
    n.resume = Some(true);
    let e = format!("{:#}", go(n).unwrap_err());
    assert!(
        e.contains("--labels (the run had no label store); leave out --labels, or start"),
        "{e}"
    );
}

/// A resume on other data (a run without a store, whose data is checked only by its
/// fingerprint) names the first difference from the run's own `--data` where that is
/// still there: a copy with one image replaced names the image and its sizes.
#[test]
fn a_resume_on_other_data_names_the_first_difference() {
    let f = fixture();
    let mut a = args(&f, "ce");
    a.labels = None;
    a.loss = Some("ce".into());
    a.max_steps = Some(1);
    assert!(go(a.clone()).unwrap().interrupted);
    let copy = f.root.join("data-copy");
    std::fs::create_dir_all(&copy).unwrap();
    let ds = meal_data::Dataset::open(&f.data, meal_data::LinkPolicy::StayInside).unwrap();
    for s in ds.samples() {
        let to = copy.join(&s.path);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(ds.full_path(s), &to).unwrap();
    }
    // the first image replaced by another of another size
    let first = &ds.samples()[0];
    let other = ds
        .samples()
        .iter()
        .find(|s| s.bytes != first.bytes)
        .unwrap();
    std::fs::copy(ds.full_path(other), copy.join(&first.path)).unwrap();
    let mut b = a.clone();
    b.resume = Some(true);
    b.data = Some(copy.clone());
    let e = format!("{:#}", go(b).unwrap_err());
    let was = std::fs::metadata(ds.full_path(first)).unwrap().len();
    let now = std::fs::metadata(copy.join(&first.path)).unwrap().len();
    assert!(
        e.contains(&format!(
            "--data (other images or labels than the run's {}: {} changed ({was} bytes then, {now} now))",
            f.data.display(),
            first.path
        )),
        "{e}"
    );
    // a --data that is not there (a relative path from another directory): where the
    // run read its data is said
    let mut g = a.clone();
    g.resume = Some(true);
    g.data = Some(PathBuf::from("no-such/train"));
    let e = format!("{:#}", go(g).unwrap_err());
    assert!(
        e.contains(&format!(
            "--data: not found; the run read its data at {}",
            f.data.canonicalize().unwrap().display()
        )),
        "{e}"
    );
    // the run's own data changed in place: named as such
    std::fs::copy(copy.join(&first.path), ds.full_path(first)).unwrap();
    let mut c = a.clone();
    c.resume = Some(true);
    let e = format!("{:#}", go(c).unwrap_err());
    assert!(
        e.contains(&format!(
            "--data ({}: its images or labels changed since the run",
            f.data.display()
        )),
        "{e}"
    );
}
