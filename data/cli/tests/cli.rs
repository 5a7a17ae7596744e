//! The `meal-data` binary: a zero count or a thread count far above the cores is refused
//! naming its flag, before the dataset is read; a report that cannot be written is an error, not a panic.

use std::process::Command;

// the data crate's test fixtures (a tiny synthetic dataset)
#[path = "../../tests/common/mod.rs"]
mod common;

#[test]
fn bench_refuses_zero_counts_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    for (flag, value, said) in [
        ("--threads", "0", "--threads must be at least 1"),
        ("--crops", "0", "--crops must be at least 1"),
        ("--batch", "0", "--batch must be at least 1"),
        // the first pass is untimed: one alone ran two
        ("--passes", "1", "--passes 1: must be at least 2"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_meal-data"))
            .args(["bench", "--data"])
            .arg(dir.path())
            .args([flag, value])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{flag} {value} was accepted");
        assert!(err.contains(said), "{err}");
    }
    // an extra zero (thousands of OS threads stalled the machine) is refused, before the
    // dataset is read, as in the other two binaries
    let out = Command::new(env!("CARGO_BIN_EXE_meal-data"))
        .args(["bench", "--data"])
        .arg(dir.path())
        .args(["--threads", "100000"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("--threads 100000: more than"),
        "{err}"
    );
    // a batch of crops that cannot fit (32 x 100000 crops of 4096 px: 640 TB) is
    // refused, not an allocation abort
    let out = Command::new(env!("CARGO_BIN_EXE_meal-data"))
        .args(["bench", "--data"])
        .arg(dir.path())
        .args(["--crops", "100000", "--res", "4096"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.code() == Some(1) && err.contains("one batch of crops"),
        "{err}"
    );
    // an empty directory is named, under its flag
    let out = Command::new(env!("CARGO_BIN_EXE_meal-data"))
        .args(["bench", "--data"])
        .arg(dir.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--data"), "{err}");
}

/// A report that cannot be written (standard output on a full disk) is an error naming
/// standard output, not a panic; a closed pipe (`| head`) ends the program quietly.
#[test]
fn an_unwritable_stdout_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    common::tiny_dataset(dir.path(), 1);
    let index = || {
        let mut c = Command::new(env!("CARGO_BIN_EXE_meal-data"));
        c.arg("index").arg(dir.path().join("train"));
        c
    };
    let full = std::fs::File::create("/dev/full").unwrap();
    let out = index().stdout(full).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("writing to standard output"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    // a reader that is gone before the report: status 0, nothing on stderr
    let mut child = index()
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && !err.contains("panicked"), "{err}");
}

/// A symlink that leaves the dataset root is refused naming the link and the switch that
/// follows it (the library names no flag); with the switch the dataset opens.
#[test]
fn a_link_leaving_the_root_names_the_switch() {
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    common::tiny_dataset(dir.path(), 1);
    let train = dir.path().join("train");
    let class = std::fs::read_dir(&train)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.is_dir())
        .unwrap();
    let image = std::fs::read_dir(&class)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::copy(&image, outside.path().join("far.jpg")).unwrap();
    std::os::unix::fs::symlink(outside.path().join("far.jpg"), class.join("link.jpg")).unwrap();
    let index = |follow: bool| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_meal-data"));
        c.arg("index").arg(&train);
        if follow {
            c.arg("--follow-links");
        }
        c.output().unwrap()
    };
    let out = index(false);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("link.jpg") && err.contains("--follow-links follows"),
        "{err}"
    );
    assert!(!err.contains("LinkPolicy"), "{err}");
    let out = index(true);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A dataset whose root's path is not UTF-8 is indexed (its root written lossily into
/// the JSON summary: JSON text cannot hold it), not a panic in the JSON writer.
#[test]
fn a_root_that_is_not_utf8_is_indexed() {
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().unwrap();
    let odd = dir.path().join(std::ffi::OsStr::from_bytes(b"nu\xff"));
    std::fs::create_dir(&odd).unwrap();
    common::tiny_dataset(&odd, 1);
    let out = Command::new(env!("CARGO_BIN_EXE_meal-data"))
        .arg("index")
        .arg(odd.join("train"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["root"].as_str().unwrap().contains("nu\u{fffd}"), "{v}");
    assert!(v["samples"].as_u64().unwrap() > 0, "{v}");
}

/// `meal-data index ROOT`'s summary and its warnings (it must succeed).
fn index_warned(root: &std::path::Path) -> (serde_json::Value, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_meal-data"))
        .arg("index")
        .arg(root)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{err}");
    (serde_json::from_slice(&out.stdout).unwrap(), err)
}

/// A class folder that links to another class's folder is indexed as torchvision
/// indexes it (each image under both labels), with a warning naming both.
#[test]
fn a_class_folder_linking_to_another_is_warned_of() {
    let dir = tempfile::tempdir().unwrap();
    common::tiny_dataset(dir.path(), 1);
    let train = dir.path().join("train");
    let mut classes: Vec<String> = std::fs::read_dir(&train)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    classes.sort();
    std::os::unix::fs::symlink(train.join(&classes[0]), train.join("zz-link")).unwrap();
    let (v, err) = index_warned(&train);
    assert!(
        err.contains(&format!("zz-link and {}", classes[0])) && err.contains("same directory"),
        "{err}"
    );
    let counts: Vec<u64> = v["classes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["samples"].as_u64().unwrap())
        .collect();
    assert_eq!(counts.first(), counts.last(), "{v}");
}

/// A directory a class reaches twice (through a link) is indexed once a path, as
/// torchvision's followlinks walk indexes it, with a warning naming the second path;
/// a deep tree of no link is walked without resolving each directory.
#[test]
fn a_directory_reached_again_through_a_link_is_warned_of() {
    let dir = tempfile::tempdir().unwrap();
    let train = dir.path().join("train");
    let deep = (0..300).fold(train.join("c/d"), |p, _| p.join("a"));
    std::fs::create_dir_all(&deep).unwrap();
    std::fs::write(deep.join("x.jpg"), b"x").unwrap();
    std::os::unix::fs::symlink("d", train.join("c/l")).unwrap();
    let (v, err) = index_warned(&train);
    assert!(
        err.contains(": 1 directories are reached again through links") && err.contains("c/l"),
        "{err}"
    );
    assert_eq!(v["samples"], 2, "{v}");
}
