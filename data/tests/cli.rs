//! The `meal-data` binary's flag checks: a zero count is refused naming its flag, before
//! the dataset is read.

use std::process::Command;

#[test]
fn bench_refuses_zero_counts_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    for flag in ["--threads", "--crops", "--batch", "--passes"] {
        let out = Command::new(env!("CARGO_BIN_EXE_meal-data"))
            .args(["bench", "--data"])
            .arg(dir.path())
            .args([flag, "0"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{flag} 0 was accepted");
        assert!(err.contains(&format!("{flag} must be at least 1")), "{err}");
    }
    // an empty directory is named, under its flag
    let out = Command::new(env!("CARGO_BIN_EXE_meal-data"))
        .args(["bench", "--data"])
        .arg(dir.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--data"), "{err}");
}
