//! Ctrl-C, SIGTERM and SIGHUP: a run stops where it can resume, and exits as the
//! signal would have it.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;

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

/// `main`'s end: an error printed ([`error_text`]) and the exit status, 1, or 128 + the
/// signal's number for a run ended by an error after a signal (a download or a wait
/// given up when it came), as a run stopped by it exits, so that a scheduler sees the
/// signal rather than a failure.
pub fn finish(r: anyhow::Result<()>) -> std::process::ExitCode {
    match r {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // anyhow's own form where its backtrace was asked for (init_logging)
            if std::env::var_os("RUST_LIB_BACKTRACE").is_some_and(|v| v != "0") {
                eprintln!("Error: {e:?}");
            } else {
                eprintln!("{}", error_text(&e));
            }
            let code = if interrupted() {
                interrupt_exit_code()
            } else {
                1
            };
            std::process::ExitCode::from(u8::try_from(code).unwrap_or(1))
        }
    }
}

/// An error as `main` prints it: anyhow's "Error: ... / Caused by:" form, except that a
/// context that only names a flag (`--res`, or `--res 0`: the flag and its value, no
/// sentence) is joined with what its cause says of it, on one line: "Error: --res 0:
/// invalid size: 0 (expected 1..=4096)", not the flag alone above a "Caused by:" list.
pub fn error_text(e: &anyhow::Error) -> String {
    let mut chain: Vec<String> = e.chain().map(|c| c.to_string()).collect();
    let flag_only = |s: &str| s.starts_with("--") && !s.contains(": ") && !s.contains('\n');
    if chain.len() > 1 && flag_only(&chain[0]) {
        let said = chain.remove(1);
        chain[0] = format!("{}: {said}", chain[0]);
    }
    let mut text = format!("Error: {}", chain[0]);
    match &chain[1..] {
        [] => {}
        [one] => text.push_str(&format!("\n\nCaused by:\n    {one}")),
        many => {
            text.push_str("\n\nCaused by:");
            for (i, c) in many.iter().enumerate() {
                text.push_str(&format!("\n    {i}: {c}"));
            }
        }
    }
    text
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
                    // named: a SIGTERM from a scheduler's time limit is no keypress
                    let (name, again) = match signal {
                        libc::SIGINT => ("interrupt (Ctrl-C)", "press Ctrl-C again"),
                        libc::SIGTERM => ("SIGTERM", "send another signal"),
                        _ => ("SIGHUP", "send another signal"),
                    };
                    eprintln!("\n{name}: {message} ({again} to quit now)");
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

/// What the SIGBUS report prints (set once by [`report_bus_errors`]).
static BUS_MESSAGE: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();

/// Names the file mapped at an address into a buffer, returning the name's length (0:
/// none known); called from the signal handler, so it must be async-signal-safe (the
/// label store's table: `meal_data::mapped::name_at`).
pub type FileAt = fn(usize, &mut [u8]) -> usize;

/// The SIGBUS report's [`FileAt`] (set once by [`report_bus_errors`]).
static BUS_FILE_AT: std::sync::OnceLock<FileAt> = std::sync::OnceLock::new();

/// A SIGBUS, which reading a memory-mapped file raises when the file was truncated
/// under the process (a label shard rewritten in place while a run reads it: the store
/// is read through its mapped pages), reported as `message` on stderr before the process
/// dies of it as before (exit status 135), instead of a bare "Bus error"; `file_at`
/// names the file whose read faulted, where it knows the address.
pub fn report_bus_errors(message: &'static str, file_at: FileAt) {
    if BUS_MESSAGE.set(message).is_err() {
        return;
    }
    let _ = BUS_FILE_AT.set(file_at);
    extern "C" fn on_bus(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
        // only write(2) and raise(3) here (async-signal-safe). SA_RESETHAND has put the
        // default action back: the raised SIGBUS, pending until this returns, ends the
        // process (a fault's read would run again and fault anyway). A SIGBUS sent by
        // kill(1) (si_code <= 0) is no cut file: nothing is said of one.
        // SAFETY: the kernel passes a valid siginfo_t under SA_SIGINFO
        let fault = !info.is_null() && unsafe { (*info).si_code } > 0;
        if let Some(m) = BUS_MESSAGE.get().filter(|_| fault) {
            // the file mapped at the faulting address, where it was registered (the
            // label store's shards): a lookup of atomics, no allocation
            let mut name = [0u8; 512];
            // SAFETY: a fault's siginfo_t carries the faulting address
            let addr = unsafe { (*info).si_addr() } as usize;
            let n = BUS_FILE_AT.get().map_or(0, |f| f(addr, &mut name));
            let head = b"\nError: bus error (SIGBUS)";
            let reading = b" reading ";
            // SAFETY: writing valid buffers to fd 2
            unsafe {
                libc::write(2, head.as_ptr().cast(), head.len());
                if n > 0 {
                    libc::write(2, reading.as_ptr().cast(), reading.len());
                    libc::write(2, name.as_ptr().cast(), n);
                }
                libc::write(2, b": ".as_ptr().cast(), 2);
                libc::write(2, m.as_ptr().cast(), m.len());
                libc::write(2, b"\n".as_ptr().cast(), 1);
            }
        }
        // SAFETY: raise(3) is async-signal-safe
        unsafe {
            libc::raise(libc::SIGBUS);
        }
    }
    // SAFETY: a zeroed sigaction with a valid handler and an empty mask is installed
    // for SIGBUS; the old action is not needed
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction =
            on_bus as extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) as usize;
        sa.sa_flags = libc::SA_RESETHAND | libc::SA_SIGINFO;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGBUS, &sa, std::ptr::null_mut());
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Where the test's file is mapped (0: not yet).
    static MAPPED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

    /// The test's [`FileAt`]: its mapping's 64 KiB are "/the/shard.parquet".
    fn the_shard_at(addr: usize, out: &mut [u8]) -> usize {
        let start = MAPPED.load(Ordering::SeqCst);
        let name = b"/the/shard.parquet";
        if start == 0 || !(start..start + (1 << 16)).contains(&addr) || out.len() < name.len() {
            return 0;
        }
        out[..name.len()].copy_from_slice(name);
        name.len()
    }

    /// In a child process (this test binary run again): a file mapped, cut short, then
    /// read past its new end dies of SIGBUS, having said so in words, naming the file
    /// its [`FileAt`] gives for the faulting address.
    #[test]
    fn a_bus_error_is_reported() {
        use std::os::unix::process::ExitStatusExt;
        if std::env::var_os("MEAL_BUS_KILLED").is_some() {
            // a SIGBUS sent, not a fault: nothing said, and the process dies of it
            report_bus_errors("the test's words", the_shard_at);
            // SAFETY: raising a signal in this process
            unsafe {
                libc::raise(libc::SIGBUS);
            }
            std::thread::sleep(std::time::Duration::from_secs(1));
            panic!("survived a SIGBUS");
        }
        if let Some(dir) = std::env::var_os("MEAL_BUS_CHILD") {
            report_bus_errors("the test's words", the_shard_at);
            let p = std::path::Path::new(&dir).join("f");
            std::fs::write(&p, vec![1u8; 1 << 16]).unwrap();
            let f = std::fs::File::open(&p).unwrap();
            // SAFETY: a read-only shared map of the file's 64 KiB, read once below
            let m = unsafe {
                use std::os::fd::AsRawFd;
                libc::mmap(
                    std::ptr::null_mut(),
                    1 << 16,
                    libc::PROT_READ,
                    libc::MAP_SHARED,
                    f.as_raw_fd(),
                    0,
                )
            };
            assert_ne!(m, libc::MAP_FAILED);
            MAPPED.store(m as usize, Ordering::SeqCst);
            std::fs::OpenOptions::new()
                .write(true)
                .open(&p)
                .unwrap()
                .set_len(0)
                .unwrap();
            // SAFETY: inside the mapping; the page past the file's end faults (SIGBUS)
            let v = unsafe { std::ptr::read_volatile((m as *const u8).add(1 << 15)) };
            panic!("read {v} past the end without a bus error");
        }
        // (the parent's directory: the child dies before it could remove one)
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "signals::tests::a_bus_error_is_reported",
                "--nocapture",
            ])
            .env("MEAL_BUS_CHILD", dir.path())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.signal(), Some(libc::SIGBUS), "{err}");
        assert!(
            err.contains("Error: bus error (SIGBUS) reading /the/shard.parquet: the test's words"),
            "{err}"
        );
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "signals::tests::a_bus_error_is_reported",
                "--nocapture",
            ])
            .env("MEAL_BUS_KILLED", "1")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.signal(), Some(libc::SIGBUS), "{err}");
        assert!(!err.contains("bus error"), "{err}");
    }

    /// Printed as anyhow prints an error (its `{:?}` without a backtrace), except that a
    /// bare flag is joined with what its cause says.
    #[test]
    fn a_flag_is_said_with_its_problem() {
        let e = anyhow::anyhow!("invalid size: 0 (expected 1..=4096)").context("--res");
        assert_eq!(
            error_text(&e),
            "Error: --res: invalid size: 0 (expected 1..=4096)"
        );
        // anything else as anyhow's `{:?}` says it
        let cases = [
            (anyhow::anyhow!("no images"), "Error: no images"),
            (
                anyhow::anyhow!("disk full").context("writing shard 3"),
                "Error: writing shard 3\n\nCaused by:\n    disk full",
            ),
            (
                anyhow::anyhow!("c").context("b: why").context("a: what"),
                "Error: a: what\n\nCaused by:\n    0: b: why\n    1: c",
            ),
            // a flag with its value, then a chain below
            (
                anyhow::anyhow!("c").context("b").context("--data x y"),
                "Error: --data x y: b\n\nCaused by:\n    c",
            ),
        ];
        for (e, said) in cases {
            assert_eq!(error_text(&e), said);
        }
    }
}
