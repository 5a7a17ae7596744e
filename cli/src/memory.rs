//! Refusing a batch that cannot fit in memory before it is tried: on Linux an
//! allocation past the machine's memory is not an error but the out-of-memory killer
//! (or minutes of swapping) once the first step runs.

/// Memory this process can still get: `MemAvailable` and `SwapFree` of `/proc/meminfo`,
/// in bytes (None where there is no such file).
pub fn available() -> Option<(u64, u64)> {
    parse_meminfo(&std::fs::read_to_string("/proc/meminfo").ok()?)
}

/// `MemAvailable` and `SwapFree` (bytes) from `/proc/meminfo`'s text.
fn parse_meminfo(text: &str) -> Option<(u64, u64)> {
    let field = |name: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(name))?;
        let kib: u64 = line[name.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kib * 1024)
    };
    Some((field("MemAvailable:")?, field("SwapFree:").unwrap_or(0)))
}

/// Bytes as GiB with one decimal.
pub fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

/// Refuses `need` bytes (a lower bound of what the work holds) when the memory and swap
/// available cannot give them; warns when only swap could (it would run, slowly).
/// `what` says what needs them, `fix` which flags lower the need.
pub fn check(need: u64, what: &str, fix: &str) -> anyhow::Result<()> {
    let Some((ram, swap)) = available() else {
        return Ok(());
    };
    if need > ram.saturating_add(swap) {
        anyhow::bail!(
            "{what}: at least {} needed, more than the {} of memory available here \
             (MemAvailable {} + SwapFree {} in /proc/meminfo): {fix}",
            gib(need),
            gib(ram.saturating_add(swap)),
            gib(ram),
            gib(swap)
        );
    }
    if need > ram {
        tracing::warn!(
            "{what}: at least {} needed, more than the {} of memory available here: it \
             will swap and run slowly ({fix})",
            gib(need),
            gib(ram)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_fields_are_read_in_bytes() {
        let text = "MemTotal:       16384000 kB\nMemFree:  100 kB\nMemAvailable:    8192000 kB\n\
                    SwapTotal:  0 kB\nSwapFree:       2048 kB\n";
        assert_eq!(parse_meminfo(text), Some((8192000 * 1024, 2048 * 1024)));
        // no swap line (some containers): none
        assert_eq!(parse_meminfo("MemAvailable: 1 kB\n"), Some((1024, 0)));
        assert_eq!(parse_meminfo("MemTotal: 1 kB\n"), None);
        assert_eq!(gib(3 << 29), "1.5 GiB");
        // the refusal names the need, the memory and the fix
        let e = check(u64::MAX, "a step's activations", "lower --batch").unwrap_err();
        let e = e.to_string();
        assert!(
            e.contains("a step's activations: at least")
                && e.contains("MemAvailable")
                && e.ends_with(": lower --batch"),
            "{e}"
        );
        check(0, "nothing", "none").unwrap();
    }
}
