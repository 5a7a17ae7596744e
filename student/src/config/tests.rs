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
