//! Progress bars, one switch (`MEAL_NO_PROGRESS`) for all of them, and their lines in
//! a log where standard error is no terminal.

/// Whether `MEAL_NO_PROGRESS`'s value hides the bars: set, and not `0`, `false`, `no`,
/// `off` or empty (`MEAL_NO_PROGRESS=0` hid them too).
fn progress_off(value: Option<&str>) -> bool {
    value.is_some_and(|v| {
        !matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "" | "0" | "false" | "no" | "off"
        )
    })
}

/// A progress bar of `len` steps drawn with indicatif's `template`, hidden when the
/// environment sets `MEAL_NO_PROGRESS` (to 1; CI logs, scripts) so every long loop of
/// both binaries honours one switch.
///
/// Where standard error is not a terminal (a log file, `nohup`, a SLURM job), indicatif
/// draws nothing: the bar's line is logged instead every [`LOG_EVERY`] ([`LogLines`]),
/// as timm's train loop logs every N steps, so a long batch job's log shows its rate
/// and ETA without a redraw per step.
pub fn progress_bar(len: u64, template: &str) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    let bar = indicatif::ProgressBar::new(len);
    // a bad template is a programming error in this crate's callers, caught by any run;
    // fall back to the default style rather than panic
    if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    if progress_off(std::env::var("MEAL_NO_PROGRESS").ok().as_deref()) {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    } else if !std::io::stderr().is_terminal() {
        let lines = LogLines::new(LOG_EVERY, |line| tracing::info!("{line}"));
        bar.set_draw_target(indicatif::ProgressDrawTarget::term_like_with_hz(
            Box::new(lines),
            1,
        ));
    }
    bar
}

/// How often a progress bar's line is logged where standard error is not a terminal.
pub const LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// A "terminal" for indicatif that passes a bar's line on (to the log) at most once
/// every `every`, the first after `every` has passed (a short run logs none).
pub struct LogLines {
    every: std::time::Duration,
    state: std::sync::Mutex<(std::time::Instant, String)>,
    emit: Box<dyn Fn(&str) + Send + Sync>,
}

impl LogLines {
    /// Lines drawn go to `emit`, at most once every `every`.
    pub fn new(every: std::time::Duration, emit: impl Fn(&str) + Send + Sync + 'static) -> Self {
        LogLines {
            every,
            state: std::sync::Mutex::new((std::time::Instant::now(), String::new())),
            emit: Box::new(emit),
        }
    }
}

impl std::fmt::Debug for LogLines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogLines")
            .field("every", &self.every)
            .finish()
    }
}

impl indicatif::TermLike for LogLines {
    fn width(&self) -> u16 {
        120
    }
    fn move_cursor_up(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_down(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_right(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_left(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn write_line(&self, s: &str) -> std::io::Result<()> {
        self.write_str(s)
    }
    fn write_str(&self, s: &str) -> std::io::Result<()> {
        if let Ok(mut state) = self.state.lock() {
            state.1.push_str(s);
        }
        Ok(())
    }
    fn clear_line(&self) -> std::io::Result<()> {
        Ok(())
    }
    /// A drawn line is complete: passed on when `every` has passed since the last.
    fn flush(&self) -> std::io::Result<()> {
        if let Ok(mut state) = self.state.lock() {
            let line = std::mem::take(&mut state.1);
            let line = line.trim();
            if !line.is_empty() && state.0.elapsed() >= self.every {
                (self.emit)(line);
                state.0 = std::time::Instant::now();
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_progress_takes_its_value() {
        for on in [
            None,
            Some(""),
            Some("0"),
            Some("false"),
            Some("No"),
            Some(" off "),
        ] {
            assert!(!progress_off(on), "{on:?}");
        }
        for off in [Some("1"), Some("true"), Some("yes")] {
            assert!(progress_off(off), "{off:?}");
        }
    }

    /// A bar's lines reach the log at most once per interval, the first only after it,
    /// each line whole (as drawn before a flush), blank ones never.
    #[test]
    fn a_bar_logs_a_line_per_interval() {
        use indicatif::TermLike;
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let sink = seen.clone();
        let every = std::time::Duration::from_millis(200);
        let lines = LogLines::new(every, move |l| sink.lock().unwrap().push(l.to_string()));
        let draw = |text: &str| {
            lines.clear_line().unwrap();
            lines.write_str(text).unwrap();
            lines.flush().unwrap();
        };
        draw("1/10 images");
        assert!(
            seen.lock().unwrap().is_empty(),
            "logged before the interval"
        );
        std::thread::sleep(every);
        draw("5/10 images");
        draw("6/10 images");
        draw("   ");
        assert_eq!(*seen.lock().unwrap(), ["5/10 images"]);
        std::thread::sleep(every);
        draw("9/10 images");
        assert_eq!(*seen.lock().unwrap(), ["5/10 images", "9/10 images"]);
    }
}
