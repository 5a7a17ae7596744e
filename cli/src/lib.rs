//! What the binaries share: logging, thread count, signals ([`signals`]), TOML configs
//! ([`config`]), progress bars ([`progress`]), plots ([`plot`]), the hub ([`hub`]) and
//! the check that a batch fits in memory ([`memory`]).

pub mod config;
pub mod dataset;
pub mod hub;
pub mod memory;
pub mod pair;
pub mod plot;
pub mod progress;
pub mod signals;
pub mod text;

pub use config::{naming_config, naming_config_of_flags, read_toml, Layers};
pub use dataset::open_dataset;
pub use pair::Pair;
pub use text::Utf8Text;

/// A command-line count (`--batch`, `--epochs`, ...): a whole number, 0 or more, said as
/// such when it is not one (clap's own words were "invalid digit found in string" for
/// `--batch=-1`, and "-2 is not in 0..=4294967295" for `--epochs=-2`); for
/// `#[arg(value_parser = meal_cli::whole::<usize>)]`.
pub fn whole<T: std::str::FromStr>(s: &str) -> Result<T, String> {
    let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    match s.strip_prefix('-') {
        Some(r) if digits(r) => {
            Err("expected a whole number, 0 or more: not a negative one".into())
        }
        _ if digits(s) => s.parse().map_err(|_| "too large a number".to_string()),
        _ => Err("expected a whole number (0, 1, 2, ...)".into()),
    }
}
pub use progress::{progress_bar, LogLines, LOG_EVERY};

/// The command line `args` with each of `flags` given as `--flag VALUE`, where VALUE
/// begins with `-` (`--lr -1e-3`, `--scale -1,1`, `--lr -inf`), joined into
/// `--flag=VALUE`: clap takes only plain negative numbers as values, and a flag that
/// took any value beginning with `-` swallowed the next flag when its own value was
/// missing (`--lr --epochs 3`). A value that is a long flag (`--x`) or `-h`/`-V` is
/// left alone, so clap says the value is missing.
pub fn join_hyphen_values(
    args: impl IntoIterator<Item = std::ffi::OsString>,
    flags: &[&str],
) -> Vec<std::ffi::OsString> {
    let mut out: Vec<std::ffi::OsString> = Vec::new();
    let mut args = args.into_iter().peekable();
    while let Some(a) = args.next() {
        let ours = a.to_str().is_some_and(|a| flags.contains(&a));
        let value = args
            .peek()
            .and_then(|v| v.to_str())
            .filter(|v| v.starts_with('-') && !v.starts_with("--") && !matches!(*v, "-h" | "-V"));
        match (ours, value) {
            (true, Some(v)) => {
                let joined = format!("{}={v}", a.to_string_lossy());
                args.next();
                out.push(joined.into());
            }
            _ => out.push(a),
        }
    }
    out
}
pub use signals::{
    error_text, finish, interrupt_exit_code, interrupt_flag, interrupted, report_bus_errors,
};

use std::path::Path;

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

/// Refuses an output directory flag's `out` (`--out`) that cannot be one: a file, or a
/// symbolic link whose target is missing (its lock file's "No such file or directory"
/// named neither the link nor its target).
pub fn check_out_dir(flag: &str, out: &Path) -> anyhow::Result<()> {
    // (one look through any link: what the run's own first write would meet)
    match std::fs::metadata(out) {
        Ok(m) if !m.is_dir() => {
            anyhow::bail!("{flag} {}: a file, not a directory", out.display())
        }
        Ok(_) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => anyhow::bail!(
            "{flag} {}: a loop of symbolic links, which leads to no directory",
            out.display()
        ),
        Err(_) => match std::fs::read_link(out) {
            Ok(target) => anyhow::bail!(
                "{flag} {}: a symbolic link to {}, which does not exist: make that \
                 directory, or give another",
                out.display(),
                target.display()
            ),
            // not there yet: the run makes it
            Err(_) => Ok(()),
        },
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
    /// An output directory that is a file, or a link to nothing, is refused naming the
    /// flag and (for the link) its target; a directory, a link to one, or a path not
    /// made yet is taken.
    #[test]
    fn out_dirs_that_cannot_be_one_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        std::fs::write(p.join("file"), b"x").unwrap();
        std::os::unix::fs::symlink(p.join("gone"), p.join("dangling")).unwrap();
        std::fs::create_dir(p.join("dir")).unwrap();
        std::os::unix::fs::symlink(p.join("dir"), p.join("link")).unwrap();
        let e = super::check_out_dir("--out", &p.join("file")).unwrap_err();
        assert!(
            e.to_string().ends_with("file: a file, not a directory"),
            "{e}"
        );
        let e = super::check_out_dir("--out", &p.join("dangling"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("--out ")
                && e.contains(&format!(
                    "a symbolic link to {}, which does not exist",
                    p.join("gone").display()
                )),
            "{e}"
        );
        std::os::unix::fs::symlink(p.join("loop"), p.join("loop")).unwrap();
        let e = super::check_out_dir("--out", &p.join("loop")).unwrap_err();
        assert!(
            e.to_string()
                .ends_with("loop: a loop of symbolic links, which leads to no directory"),
            "{e}"
        );
        for ok in ["dir", "link", "new/sub"] {
            super::check_out_dir("--out", &p.join(ok)).unwrap();
        }
    }

    /// A value beginning with `-` is joined to its flag; a flag in its place, or a
    /// flag not listed, is left alone.
    #[test]
    fn hyphen_values_are_joined_to_their_flags() {
        let join = |a: &[&str]| {
            super::join_hyphen_values(a.iter().map(|s| s.into()), &["--lr", "--scale"])
                .into_iter()
                .map(|s| s.into_string().unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            join(&["x", "--lr", "-1e-3", "--scale", "-1,1", "--seed", "-2"]),
            ["x", "--lr=-1e-3", "--scale=-1,1", "--seed", "-2"]
        );
        assert_eq!(join(&["--lr", "--epochs", "3"]), ["--lr", "--epochs", "3"]);
        assert_eq!(join(&["--lr", "-h"]), ["--lr", "-h"]);
        assert_eq!(join(&["--lr", "0.1", "--lr"]), ["--lr", "0.1", "--lr"]);
    }

    #[test]
    fn a_count_says_what_it_takes() {
        assert_eq!(super::whole::<usize>("12"), Ok(12));
        assert!(super::whole::<usize>("-1")
            .unwrap_err()
            .contains("not a negative one"));
        assert!(super::whole::<u32>("99999999999")
            .unwrap_err()
            .contains("too large"));
        assert!(super::whole::<u32>("2.5")
            .unwrap_err()
            .contains("a whole number"));
        assert!(super::whole::<u32>("")
            .unwrap_err()
            .contains("a whole number"));
    }

    use super::*;

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
