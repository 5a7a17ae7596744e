//! What the binaries share: logging, thread count, Ctrl-C, TOML configs, progress bars,
//! plots ([`plot`]) and the check that a batch fits in memory ([`memory`]).

pub mod hub;
pub mod memory;
pub mod plot;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;

/// Log to stderr at `RUST_LOG` (default `info`), in colour only on a terminal that does
/// not set `NO_COLOR` (no escape codes in a log redirected to a file).
///
/// Also turns off anyhow's backtrace of an error, which `RUST_BACKTRACE=1` (set by many
/// Rust users) would print under every user error (a bad flag, a missing file): 13
/// frames of `<unknown>` in a stripped binary. Panics keep theirs; `RUST_LIB_BACKTRACE=1`
/// brings the errors' back (anyhow's documented switch). Call it first in `main`,
/// before any thread starts (it sets that variable when unset).
pub fn init_logging() {
    use std::io::IsTerminal;
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        std::env::set_var("RUST_LIB_BACKTRACE", "0");
    }
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .init();
}

/// Write to standard output, as `print!` does, but as an error naming it instead of a
/// panic when it cannot be written (a full disk under a redirect). A closed pipe
/// (`| head`) ends the program quietly with status 0, as `head`'s readers expect (Rust
/// ignores SIGPIPE, so without this every `print!` after it would panic).
pub fn write_stdout(args: std::fmt::Arguments) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_fmt(args).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => Err(anyhow::anyhow!("writing to standard output: {e}")),
    }
}

/// `println!` for the binaries' reports: an error (`?` in a function returning
/// `anyhow::Result`) instead of a panic when standard output cannot be written.
#[macro_export]
macro_rules! outln {
    () => {
        $crate::write_stdout(format_args!("\n"))?
    };
    ($($arg:tt)*) => {
        $crate::write_stdout(format_args!("{}\n", format_args!($($arg)*)))?
    };
}

/// `print!` for the binaries' reports, as [`outln!`].
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::write_stdout(format_args!($($arg)*))?
    };
}

/// The default `--threads`: every core.
pub fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Run candle's CPU kernels on `n` threads: they size their pools from
/// `RAYON_NUM_THREADS`. Call before any tensor work. More threads than cores are
/// warned about, as PyTorch's DataLoader warns of more workers than CPUs (they only
/// compete for the cores, each with its own buffers: on 2 cores 512 threads ran a
/// 30-image precompute 30x slower than 1); more than [`max_threads`] are refused (an
/// extra zero in `--threads 100000` started thousands of OS threads and stalled the
/// machine).
pub fn use_threads(n: usize) -> anyhow::Result<()> {
    check_threads(n)?;
    std::env::set_var("RAYON_NUM_THREADS", n.max(1).to_string());
    Ok(())
}

/// `--threads n` checked as [`use_threads`] checks it (refused above [`max_threads`],
/// warned about above the core count), for a tool whose threads are its own rather than
/// candle's (the loader benchmark).
pub fn check_threads(n: usize) -> anyhow::Result<()> {
    let cores = default_threads();
    if n > max_threads() {
        anyhow::bail!(
            "--threads {n}: more than {} threads on {cores} cores (one per core is the most that helps)",
            max_threads()
        );
    }
    if n > cores {
        tracing::warn!(
            "--threads {n} is more than the {cores} cores here: the extra threads only \
             compete for them"
        );
    }
    Ok(())
}

/// The most `--threads` a run accepts: 8 per core, at least 256.
pub fn max_threads() -> usize {
    (8 * default_threads()).max(256)
}

/// `--follow-links [true|false]`, for the commands that read a dataset (flattened into
/// their arguments): a bare `--follow-links` is true, and `--follow-links false` is
/// accepted as in the commands whose config files may set it.
#[derive(clap::Args, Clone, Copy, Debug, Default)]
pub struct FollowLinks {
    /// Follow symlinks that lead outside the dataset root (refused by default).
    #[arg(
        long,
        num_args = 0..=1,
        default_missing_value = "true",
        default_value_t = false,
        action = clap::ArgAction::Set,
        value_name = "BOOL"
    )]
    pub follow_links: bool,
}

/// What an error opening a dataset is prefixed with: the flag and path, and, when the
/// data library refused a symlink that leaves the root (`outside_root`; it names no
/// flag), the switch that follows it.
pub fn dataset_context(flag: &str, path: &Path, outside_root: bool) -> String {
    let hint = if outside_root {
        " (--follow-links follows links that leave the root)"
    } else {
        ""
    };
    format!("{flag} {}{hint}", path.display())
}

/// The signal that set the flag of [`interrupt_flag`] (0 before any).
static SIGNAL: AtomicI32 = AtomicI32::new(0);

/// The exit status of a run stopped by a signal: 128 + the signal's number, as a shell
/// reports a process the signal killed (130 for Ctrl-C, 143 for SIGTERM, 129 for
/// SIGHUP), so that SLURM, systemd and scripts can tell how the run ended.
pub fn interrupt_exit_code() -> i32 {
    128 + match SIGNAL.load(Ordering::SeqCst) {
        0 => libc::SIGINT,
        s => s,
    }
}

/// `main`'s result, with a run ended by an error after a signal (a download or a
/// wait given up when it came) exiting 128 + the signal's number, as a run stopped by
/// it does, so that a scheduler sees the signal rather than a failure.
pub fn exit_on_signal(r: anyhow::Result<()>) -> anyhow::Result<()> {
    if let Err(e) = &r {
        if interrupted() {
            eprintln!("Error: {e:?}");
            std::process::exit(interrupt_exit_code());
        }
    }
    r
}

/// Whether a Ctrl-C, SIGTERM or SIGHUP has arrived since [`interrupt_flag`] (for a wait
/// that holds no flag, such as a download during set-up).
pub fn interrupted() -> bool {
    SIGNAL.load(Ordering::SeqCst) != 0
}

/// A flag set by the first Ctrl-C, SIGTERM or SIGHUP (after printing `message`, what
/// the program will do); a second one, a second or more after the first, exits at once
/// with [`interrupt_exit_code`] (within that second it is the same request delivered
/// twice). A process started under `nohup` keeps ignoring SIGHUP. SIGTERM is what
/// SLURM's time limit, `docker stop` and systemd send first: a run stops as after
/// Ctrl-C (a student's checkpoint mid-epoch) instead of losing the epoch.
pub fn interrupt_flag(message: &'static str) -> std::io::Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    let mut signals = vec![libc::SIGINT, libc::SIGTERM];
    // started under `nohup` (SIGHUP ignored): a closed terminal must not stop the run
    if !sighup_ignored() {
        signals.push(libc::SIGHUP);
    }
    // signal-hook's iterator runs this loop on its own thread, so printing and exiting
    // are safe here (they are not in a signal handler)
    let mut incoming = signal_hook::iterator::Signals::new(&signals)?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut first: Option<std::time::Instant> = None;
            for signal in incoming.forever() {
                if first.is_none() {
                    // the signal first, so that a run seeing the flag exits with its code
                    SIGNAL.store(signal, Ordering::SeqCst);
                    flag.store(true, Ordering::SeqCst);
                    first = Some(std::time::Instant::now());
                    eprintln!("\ninterrupt: {message} (press again to quit now)");
                } else if first.is_some_and(|t| t.elapsed() >= std::time::Duration::from_secs(1)) {
                    SIGNAL.store(signal, Ordering::SeqCst);
                    std::process::exit(interrupt_exit_code());
                }
                // else: one request delivered twice (GNU timeout and SLURM signal the
                // child and its process group) must not quit, only a second press a
                // moment later does
            }
        })?;
    Ok(stop)
}

/// Bytes free to this user on the file system holding `path` (`statvfs(3)`'s
/// `f_bavail * f_frsize`), or None where it cannot be asked.
pub fn free_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: `c` is a valid NUL-terminated path and `st` a zeroed statvfs that
    // statvfs(3) fills; nothing is read from it unless the call succeeded
    unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        (libc::statvfs(c.as_ptr(), &mut st) == 0)
            .then(|| (st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
    }
}

/// Whether SIGHUP is ignored in this process (as `nohup` leaves it).
fn sighup_ignored() -> bool {
    // SAFETY: sigaction(2) with a null new action only reads the current one into `old`
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        libc::sigaction(libc::SIGHUP, std::ptr::null(), &mut old) == 0
            && old.sa_sigaction == libc::SIG_IGN
    }
}

/// Whether an error's text (`format!("{e:#}")`, its whole chain) says a GPU ran out of
/// memory: the driver's `CUDA_ERROR_OUT_OF_MEMORY` (cudarc formats a `DriverError` as
/// `DriverError(CUDA_ERROR_OUT_OF_MEMORY, "out of memory")`, cudarc driver/result.rs)
/// or cuBLAS's `CUBLAS_STATUS_ALLOC_FAILED`, as candle passes them on. The binaries then
/// say which flag to lower, as PyTorch's "CUDA out of memory" message does.
pub fn gpu_out_of_memory(chain: &str) -> bool {
    chain.contains("CUDA_ERROR_OUT_OF_MEMORY") || chain.contains("CUBLAS_STATUS_ALLOC_FAILED")
}

/// `e` with `hint()` (what to lower, naming the flag) on top when it is a GPU out of
/// memory ([`gpu_out_of_memory`]); otherwise `e` as it is.
pub fn hint_gpu_out_of_memory(e: anyhow::Error, hint: impl FnOnce() -> String) -> anyhow::Error {
    if gpu_out_of_memory(&format!("{e:#}")) {
        e.context(hint())
    } else {
        e
    }
}

/// Parse the TOML file at `path` into `T` (unknown keys are refused when `T` says so);
/// the error text says what is wrong, the caller names the flag and file.
pub fn read_toml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    toml::from_str(&text).map_err(|e| plain_types(&e.to_string()))
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
    ] {
        m = m.replace(rust, words);
    }
    m
}

/// `r`, whose error names a flag, with the `--config` file named too when there is
/// one (the value at fault may have come from it).
pub fn naming_config<T>(r: anyhow::Result<T>, config: Option<&Path>) -> anyhow::Result<T> {
    r.map_err(|e| match config {
        // (the file itself could not be read: nothing came from it)
        Some(_) if e.to_string().starts_with("--config ") => e,
        Some(p) => anyhow::anyhow!(
            "{e:#} (the command line's flags over --config {}, whose keys are the flags' \
             names without --)",
            p.display()
        ),
        None => e,
    })
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

/// Whether `path` is, or would be created, inside the existing directory `dir` (both
/// resolved through symlinks; the part of `path` not made yet, `..` included, walked as
/// `create_dir_all` would make it). An output directory inside an ImageFolder root
/// would be read as a class by the next run, so the binaries refuse it.
pub fn is_inside(path: &Path, dir: &Path) -> bool {
    use std::path::Component;
    let Ok(dir) = dir.canonicalize() else {
        return false;
    };
    if !dir.is_dir() {
        return false;
    }
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        match std::env::current_dir() {
            Ok(cwd) => cwd.join(path),
            Err(_) => return false,
        }
    };
    // component by component, as `create_dir_all` then the kernel would walk it: an
    // existing prefix through its symlinks (canonicalised), `..` as the parent of what
    // came before (of a directory yet to be made too: `data/new/..` is `data`)
    let mut cur = std::path::PathBuf::from("/");
    for c in abs.components() {
        match c {
            Component::Prefix(_) | Component::RootDir | Component::CurDir => {}
            Component::ParentDir => {
                cur.pop();
            }
            Component::Normal(name) => {
                cur.push(name);
                if let Ok(real) = cur.canonicalize() {
                    cur = real;
                }
            }
        }
    }
    cur.starts_with(&dir)
}

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

/// `x` as a user would type it: plain for everyday magnitudes (`0.02`, `5`), in
/// exponent notation outside them (`1e30`, `1e-8`), where Rust's `{}` writes every digit.
pub fn number(x: f64) -> String {
    if x == 0.0 || !x.is_finite() || (1e-4..1e6).contains(&x.abs()) {
        format!("{x}")
    } else {
        format!("{x:e}")
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

    #[test]
    fn numbers_read_as_typed() {
        assert_eq!(number(0.02), "0.02");
        assert_eq!(number(5.0), "5");
        assert_eq!(number(1e30), "1e30");
        assert_eq!(number(-2.5e-8), "-2.5e-8");
        assert_eq!(number(0.0), "0");
    }

    #[test]
    fn free_bytes_are_asked_of_the_file_system() {
        let d = tempfile::tempdir().unwrap();
        let free = free_bytes(d.path()).unwrap();
        // coreutils' df asks the same question (its "avail" column, in bytes); other
        // writers on the machine move it a little between the two calls
        let out = std::process::Command::new("df")
            .args(["-B1", "--output=avail"])
            .arg(d.path())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let df: u64 = text.lines().nth(1).unwrap().trim().parse().unwrap();
        assert!(
            free.abs_diff(df) <= df / 100 + (1 << 20),
            "{free} vs df's {df}"
        );
        assert_eq!(free_bytes(&d.path().join("missing")), None);
    }

    #[test]
    fn an_output_inside_a_dataset_root_is_told_apart() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        std::fs::create_dir_all(data.join("cat")).unwrap();
        assert!(is_inside(&data.join("labels"), &data), "not made yet");
        assert!(is_inside(&data.join("cat"), &data), "existing");
        assert!(
            is_inside(&data.join("a/b/c"), &data),
            "several levels to make"
        );
        assert!(is_inside(&data, &data), "the root itself");
        assert!(!is_inside(&tmp.path().join("labels"), &data), "a sibling");
        assert!(
            !is_inside(&tmp.path().join("data2"), &data),
            "a name prefix only"
        );
        std::os::unix::fs::symlink(&data, tmp.path().join("link")).unwrap();
        assert!(
            is_inside(&tmp.path().join("link/labels"), &data),
            "through a link"
        );
        assert!(!is_inside(&data.join("x"), &tmp.path().join("nowhere")));
        // `..` after a directory not made yet: where create_dir_all would end up
        assert!(
            is_inside(&data.join("new/.."), &data),
            "data/new/.. is data"
        );
        assert!(is_inside(&data.join("new/../run"), &data));
        assert!(
            !is_inside(&data.join("new/../../labels"), &data),
            "a sibling again"
        );
        assert!(
            is_inside(&tmp.path().join("link/x/../y"), &data),
            "link, then .."
        );
    }

    #[test]
    fn gpu_out_of_memory_is_told_from_other_errors() {
        // as candle passes the driver's error on (its Display is the Debug form)
        let oom = "labelling batch 3: DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")";
        assert!(gpu_out_of_memory(oom));
        assert!(gpu_out_of_memory("cublas: CUBLAS_STATUS_ALLOC_FAILED"));
        assert!(!gpu_out_of_memory(
            "DriverError(CUDA_ERROR_ILLEGAL_ADDRESS, \"an illegal memory access\")"
        ));
        assert!(!gpu_out_of_memory("--data /x: no images"));
        let hinted = hint_gpu_out_of_memory(anyhow::anyhow!(oom), || "lower --batch".into());
        assert_eq!(format!("{hinted:#}"), format!("lower --batch: {oom}"));
        let other = hint_gpu_out_of_memory(anyhow::anyhow!("no images"), || "x".into());
        assert_eq!(format!("{other:#}"), "no images");
    }
}
