//! `--config` TOML files under the command line's flags.

use std::path::Path;

/// Parse the TOML file at `path` into `T` (unknown keys are refused when `T` says so);
/// the error text says what is wrong, the caller names the flag and file.
pub fn read_toml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, String> {
    let text = meal_data::files::read_text(path).map_err(|e| e.to_string())?;
    // an empty value is refused as the command line refuses `--out ""` (`out = ""` ran
    // in the current directory, `data = ""` said "--data : : No such file")
    if let Ok(table) = text.parse::<toml::Table>() {
        let empty: Vec<&str> = table
            .iter()
            .filter(|(_, v)| v.as_str().is_some_and(str::is_empty))
            .map(|(k, _)| k.as_str())
            .collect();
        if !empty.is_empty() {
            return Err(format!(
                "{} empty (\"\"): give a value or leave the key out",
                empty.join(", ")
            ));
        }
    }
    // (toml's parse errors end with a newline: a blank line before the next context)
    toml::from_str(&text).map_err(|e| plain_types(e.to_string().trim_end()))
}

/// A config file's repeatable flag given as a list or as one value (`teacher =
/// "resnet50=w.safetensors"` was refused with "expected a sequence"); for
/// `#[serde(default, deserialize_with = "meal_cli::config::one_or_many")]`.
pub fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    use serde::Deserialize;
    match OneOrMany::deserialize(d) {
        Ok(OneOrMany::One(s)) => Ok(vec![s]),
        Ok(OneOrMany::Many(v)) => Ok(v),
        Err(_) => Err(serde::de::Error::custom(
            "expected a string or a list of strings",
        )),
    }
}

/// serde's Rust type names in a message said in words (`expected u32` was all a wrong
/// `crops_per_image = "two"` got).
fn plain_types(message: &str) -> String {
    let mut m = message.to_string();
    for (rust, words) in [
        ("expected usize", "expected a whole number"),
        ("expected u64", "expected a whole number"),
        ("expected u32", "expected a whole number"),
        ("expected u16", "expected a whole number"),
        ("expected u8", "expected a whole number"),
        ("expected f64", "expected a number"),
        ("expected f32", "expected a number"),
        // (a switch's flag takes the same words)
        ("expected a boolean", "expected true or false"),
    ] {
        m = m.replace(rust, words);
    }
    m
}

/// `r`, whose error names a flag, with the `--config` file named too when the value at
/// fault may have come from it: the file sets the flag the error begins with, or the
/// error begins with no flag (a flag only the command line gave, `--batch 0` typed
/// there, is not blamed on the file).
pub fn naming_config<T>(r: anyhow::Result<T>, config: Option<&Path>) -> anyhow::Result<T> {
    name_config(r, config, true)
}

/// As [`naming_config`], for an error met while running on the resolved settings: the
/// file is named only where it sets a flag the error begins with (`--data D: no such
/// directory`, a path the file gave relative to another directory); an error that
/// begins with no flag (a disk full, a diverged loss) is not the file's.
pub fn naming_config_of_flags<T>(r: anyhow::Result<T>, config: Option<&Path>) -> anyhow::Result<T> {
    name_config(r, config, false)
}

/// [`naming_config`]'s work; `unflagged`: whether an error that begins with no flag may
/// be the file's.
fn name_config<T>(
    r: anyhow::Result<T>,
    config: Option<&Path>,
    unflagged: bool,
) -> anyhow::Result<T> {
    r.map_err(|e| match config {
        // (the file itself could not be read: nothing came from it)
        Some(_) if e.to_string().starts_with("--config ") => e,
        Some(p) if unflagged || e.to_string().starts_with("--") => {
            match from_file(&e.to_string(), p) {
                None => e,
                // (what the error is about may be any value of the file)
                Some(flags) if flags.is_empty() => anyhow::anyhow!(
                    "{e:#} (the command line's flags over --config {}, whose keys are the \
                     flags' names without --)",
                    p.display()
                ),
                // the values the error names came from the file: said so, with the rule
                // a path there most often trips on
                Some(flags) => {
                    // (the rule said only where a path was not found: a lock or a
                    // number has nothing to do with it)
                    let text = format!("{e:#}");
                    let missing = text.contains("No such file") || text.contains("not found");
                    anyhow::anyhow!(
                        "{text} ({} as --config {} sets{})",
                        flags
                            .iter()
                            .map(|f| format!("--{f}"))
                            .collect::<Vec<_>>()
                            .join(" and "),
                        p.display(),
                        match missing {
                            true =>
                                "; its relative paths are read from the current \
                                     directory, not the file's",
                            false => "",
                        }
                    )
                }
            }
        }
        _ => e,
    })
}

/// Whether the error `message` may be about a value of the config file at `path`: it
/// does not begin with a flag, or the file has the key (snake_case) of a flag its head
/// names (before its first `: `: `--labels L with --loss ce: ...` names two, either of
/// which the file may have set) and the command line did not give that flag.
#[cfg(test)]
fn may_come_from(message: &str, path: &Path) -> bool {
    from_file(message, path).is_some()
}

/// [`may_come_from`]'s answer with the flags whose values the file gave: `None` when the
/// error is not the file's, an empty list when any value may be (no flag named, or the
/// file unreadable).
fn from_file(message: &str, path: &Path) -> Option<Vec<String>> {
    if !message.starts_with("--") {
        return Some(Vec::new());
    }
    let flags = head_flags(message);
    // (a pipe's text as read before: read again, it gave nothing, or waited)
    let Some(keys) = meal_data::files::read_text(path)
        .ok()
        .and_then(|t| t.parse::<toml::Table>().ok())
    else {
        return Some(Vec::new());
    };
    if flags.is_empty() {
        return Some(Vec::new());
    }
    // (a flag the command line gave wins over the file's key: its value is not the file's)
    let typed = |f: &str| {
        // (args_os: an argument that is not UTF-8, a path, made args() panic)
        std::env::args_os().any(|a| {
            a.to_str()
                .is_some_and(|a| a == format!("--{f}") || a.starts_with(&format!("--{f}=")))
        })
    };
    let mut set: Vec<String> = flags
        .into_iter()
        .filter(|f| keys.contains_key(&f.replace('-', "_")) && !typed(f))
        .collect();
    // (a flag the head names twice is said once: "--loss and --loss")
    let mut seen = std::collections::HashSet::new();
    set.retain(|f| seen.insert(f.clone()));
    (!set.is_empty()).then_some(set)
}

/// The flags (without `--`) an error's head names: the words starting with `--` before
/// its first `: `.
fn head_flags(message: &str) -> Vec<String> {
    let head = message.split(": ").next().unwrap_or(message);
    head.split_whitespace()
        // (a flag in brackets or quotes: `(--loss ce or --disc off)`)
        .filter_map(|w| {
            w.trim_start_matches(['(', '[', '"', '\'', '`'])
                .strip_prefix("--")
        })
        .map(|w| {
            w.chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect::<String>()
        })
        .filter(|f| !f.is_empty())
        .collect()
}

/// Flags over a `--config` file: the two layers of a command's arguments (`T` is the
/// clap struct, also deserialised from the TOML file), read field by field with the
/// command line winning, as cargo's and ripgrep's config files work.
pub struct Layers<T> {
    /// What the command line gave.
    pub cli: T,
    /// What the config file gave (all `None` without one).
    pub file: T,
}

impl<T: Default + serde::de::DeserializeOwned> Layers<T> {
    /// Read the config file at `config` (if any) under `cli`; the error names the file.
    pub fn new(cli: T, config: Option<&Path>) -> Result<Self, String> {
        let file = match config {
            Some(p) => read_toml(p).map_err(|e| format!("{}: {e}", p.display()))?,
            None => T::default(),
        };
        Ok(Layers { cli, file })
    }

    /// An optional value: the command line's, else the file's.
    pub fn pick<V: Clone>(&self, field: impl Fn(&T) -> &Option<V>) -> Option<V> {
        field(&self.cli)
            .clone()
            .or_else(|| field(&self.file).clone())
    }

    /// A repeatable flag: the command line's values if it gave any, else the file's.
    pub fn list<V: Clone>(&self, field: impl Fn(&T) -> &Vec<V>) -> Vec<V> {
        let cli = field(&self.cli);
        if cli.is_empty() {
            field(&self.file).clone()
        } else {
            cli.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_errors_say_types_in_words() {
        let m = plain_types("invalid type: string \"two\", expected u32");
        assert_eq!(m, "invalid type: string \"two\", expected a whole number");
        assert!(plain_types("expected f64").ends_with("a number"));
    }

    /// A repeatable key takes one value or a list; anything else says what it takes.
    #[test]
    fn a_repeatable_key_takes_one_value_or_a_list() {
        #[derive(serde::Deserialize)]
        struct T {
            #[serde(default, deserialize_with = "one_or_many")]
            teacher: Vec<String>,
        }
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        for (text, want) in [
            ("teacher = \"a=w\"", vec!["a=w"]),
            ("teacher = [\"a=w\", \"b=v\"]", vec!["a=w", "b=v"]),
            ("", vec![]),
        ] {
            std::fs::write(&p, text).unwrap();
            assert_eq!(read_toml::<T>(&p).unwrap().teacher, want);
        }
        std::fs::write(&p, "teacher = 3").unwrap();
        let e = read_toml::<T>(&p).err().unwrap();
        assert!(e.contains("expected a string or a list of strings"), "{e}");
    }

    /// A key given as "" is refused, naming it, as the command line refuses an empty
    /// flag value.
    #[test]
    fn an_empty_value_is_refused_naming_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "out = \"\"\nepochs = 2\n").unwrap();
        let e = read_toml::<toml::Table>(&p).unwrap_err();
        assert_eq!(e, "out empty (\"\"): give a value or leave the key out");
        std::fs::write(&p, "out = \"r\"\n").unwrap();
        assert!(read_toml::<toml::Table>(&p).is_ok());
    }

    /// An error naming two flags is blamed on the file when it set either; one naming
    /// a flag only the command line gave is not.
    #[test]
    fn a_config_is_named_when_it_set_a_flag_the_error_names() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "loss = \"ce\"\nlr_schedule = \"step\"\n").unwrap();
        assert!(may_come_from("--labels L with --loss ce: ce trains on", &p));
        assert!(may_come_from("--lr-schedule: bad", &p));
        assert!(may_come_from("no flag named", &p));
        assert!(!may_come_from("--batch 0: expected 1 or more", &p));
        // a flag named after the head (in the reason) is not the value at fault
        assert!(!may_come_from(
            "--batch 0: too big; lower --batch or --loss",
            &p
        ));
        assert_eq!(head_flags("--a 1,2 with --b-c x: --d"), ["a", "b-c"]);
        // (flags in brackets count: the file's `loss = "ce"` turned the discriminator off)
        assert_eq!(
            head_flags("--disc-lr sets its rate; it is off (--loss ce or --disc off): remove it"),
            ["disc-lr", "loss", "disc"]
        );
        assert!(may_come_from(
            "--disc-lr is off (--loss ce or --disc off): no",
            &p
        ));
        // a flag named twice in the head is said once
        assert_eq!(
            from_file("--online-teacher with --loss ce (--loss kd needs): no", &p),
            Some(vec!["loss".to_string()])
        );
        let e = naming_config::<()>(
            Err(anyhow::anyhow!("--labels L with --loss ce: no")),
            Some(&p),
        )
        .unwrap_err();
        assert!(e.to_string().contains("--config"), "{e}");
        // while running: a flag the file set is named, an error of no flag is not
        let e = naming_config_of_flags::<()>(Err(anyhow::anyhow!("--loss x: no")), Some(&p));
        assert!(e.unwrap_err().to_string().contains("--config"));
        let e = naming_config_of_flags::<()>(Err(anyhow::anyhow!("disk full")), Some(&p));
        assert_eq!(e.unwrap_err().to_string(), "disk full");
        let e = naming_config_of_flags::<()>(Err(anyhow::anyhow!("--batch 9: no")), Some(&p));
        assert!(!e.unwrap_err().to_string().contains("--config"));
    }
}
