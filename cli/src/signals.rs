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
