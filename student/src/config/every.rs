//! `--checkpoint-every`: a number of steps or a time.

/// How often a checkpoint is saved within an epoch (`--checkpoint-every`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Every {
    /// After this many steps.
    Steps(u64),
    /// After this much time.
    Time(std::time::Duration),
}

/// The default `--checkpoint-every`: at most half an hour of steps lost to a kill (a
/// ResNet-50 checkpoint, ~300 MB with its momentum, takes seconds to write).
pub const DEFAULT_CHECKPOINT_EVERY: Every = Every::Time(std::time::Duration::from_secs(30 * 60));

impl std::str::FromStr for Every {
    type Err = String;

    /// `500` (steps), `90s`, `30m`, `2h`, `0.5h` (time).
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        if t.starts_with('-') {
            return Err(format!(
                "{s:?}: expected a number of steps, a time as 90s, 30m, 2h, or off, not a \
                 negative one"
            ));
        }
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (n, unit) = t.split_at(split);
        let seconds = match unit {
            "" => {
                return match n.parse::<u64>() {
                    Ok(0) => Err(format!("{s:?}: must be at least 1 step (or off)")),
                    Ok(n) => Ok(Every::Steps(n)),
                    Err(_) if n.contains('.') => Err(format!(
                        "{s:?}: a number of steps is whole (a time has a unit: 90s, 30m, 2h)"
                    )),
                    Err(_) if !n.is_empty() => Err(format!("{s:?}: too many steps")),
                    Err(_) => Err(format!(
                        "{s:?}: expected a number of steps, a time as 90s, 30m, 2h, or off"
                    )),
                }
            }
            "s" => 1.0,
            "m" | "min" => 60.0,
            "h" => 3600.0,
            u => {
                return Err(format!(
                    "{s:?}: unknown unit {u:?} (s, m or h for a time; none for steps)"
                ))
            }
        };
        let n: f64 = n
            .parse()
            .map_err(|_| format!("{s:?}: expected a time as 90s, 30m, 0.5h"))?;
        let t = std::time::Duration::try_from_secs_f64(n * seconds)
            .map_err(|_| format!("{s:?}: not a time this can wait"))?;
        if t.as_secs() < 1 {
            return Err(format!("{s:?}: at least a second (or off)"));
        }
        Ok(Every::Time(t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn checkpoint_every_reads_steps_and_times() {
        let p = |s: &str| s.parse::<Every>();
        assert_eq!(p("500"), Ok(Every::Steps(500)));
        assert_eq!(p("90s"), Ok(Every::Time(Duration::from_secs(90))));
        assert_eq!(p("30m"), Ok(Every::Time(Duration::from_secs(1800))));
        assert_eq!(p("2h"), Ok(Every::Time(Duration::from_secs(7200))));
        assert_eq!(p("0.5h"), Ok(Every::Time(Duration::from_secs(1800))));
        for bad in ["0", "5d", "m", "", "1.5", "0s", "99999999999999999999"] {
            assert!(p(bad).is_err(), "{bad}");
        }
        // (it read as a number of no digits and the unit "-1")
        for neg in ["-1", "-30m"] {
            assert!(p(neg).unwrap_err().contains("not a negative one"), "{neg}");
        }
    }
}
