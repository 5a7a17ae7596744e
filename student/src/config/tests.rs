//! Settings resolved from flags and a config file.

use super::*;

/// `--checkpoint-every` refused with the flag and a config file's number or text
/// read (its parsing: config/every.rs).
#[test]
fn checkpoint_every_from_flags_and_files() {
    let a = TrainArgs {
        data: Some("d".into()),
        arch: Some("demo_tiny".into()),
        loss: Some("ce".into()),
        epochs: Some(1),
        out: Some("o".into()),
        checkpoint_every: Some("5d".into()),
        ..Default::default()
    };
    let e = format!("{:#}", a.resolve().unwrap_err());
    assert!(
        e.starts_with("--checkpoint-every \"5d\": unknown unit"),
        "{e}"
    );
    // a config file's number or text
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("c.toml");
    for (line, want) in [
        ("checkpoint_every = 500", "500"),
        ("checkpoint_every = \"30m\"", "30m"),
    ] {
        std::fs::write(&f, line).unwrap();
        let a: TrainArgs = meal_cli::read_toml(&f).unwrap();
        assert_eq!(a.checkpoint_every.as_deref(), Some(want));
    }
    // another type says what it takes, not serde's enum
    std::fs::write(&f, "checkpoint_every = -5").unwrap();
    let e = meal_cli::read_toml::<TrainArgs>(&f).unwrap_err();
    assert!(
        e.contains("-5: expected a time (\"30m\"), a number of steps (500) or \"off\""),
        "{e}"
    );
    // the discriminator's switch as a boolean too
    for (line, want) in [
        ("disc = true", "on"),
        ("disc = false", "off"),
        ("disc = \"off\"", "off"),
    ] {
        std::fs::write(&f, line).unwrap();
        let a: TrainArgs = meal_cli::read_toml(&f).unwrap();
        assert_eq!(a.disc.as_deref(), Some(want));
    }
    std::fs::write(&f, "disc = 1").unwrap();
    let e = meal_cli::read_toml::<TrainArgs>(&f).unwrap_err();
    assert!(e.contains("expected \"on\" or \"off\""), "{e}");
}

/// A path a checkpoint cannot record as UTF-8 text is refused naming its flag (serde's
/// "path contains invalid UTF-8 characters" named nothing); one reached through a link
/// of another name is recorded by its target's path, and taken.
#[test]
fn a_path_that_is_not_utf8_is_refused_naming_its_flag() {
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().unwrap();
    let odd = dir.path().join(std::ffi::OsStr::from_bytes(b"nu\xff"));
    std::fs::create_dir_all(odd.join("d")).unwrap();
    let base = || TrainArgs {
        data: Some(dir.path().join("d")),
        arch: Some("demo_tiny".into()),
        loss: Some("ce".into()),
        epochs: Some(1),
        out: Some(dir.path().join("o")),
        ..Default::default()
    };
    for (flag, a) in [
        (
            "--data",
            TrainArgs {
                data: Some(odd.join("d")),
                ..base()
            },
        ),
        (
            "--out",
            TrainArgs {
                out: Some(odd.join("o")),
                ..base()
            },
        ),
        (
            "--init",
            TrainArgs {
                init: Some(odd.join("w.safetensors")),
                ..base()
            },
        ),
    ] {
        let e = format!("{:#}", a.resolve().unwrap_err());
        assert!(
            e.starts_with(&format!("{flag} ")) && e.contains("is not UTF-8"),
            "{flag}: {e}"
        );
    }
    // a link of an odd name to a UTF-8 folder
    std::fs::create_dir_all(dir.path().join("d")).unwrap();
    std::os::unix::fs::symlink(dir.path().join("d"), odd.join("link")).unwrap();
    let s = TrainArgs {
        data: Some(odd.join("link")),
        ..base()
    }
    .resolve()
    .unwrap();
    assert!(s.recorded().data.to_str().is_some());
}
