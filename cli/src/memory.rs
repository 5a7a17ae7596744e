//! Refusing a batch that cannot fit in memory before it is tried: on Linux an
//! allocation past the machine's memory is not an error but the out-of-memory killer
//! (or minutes of swapping) once the first step runs.

/// Memory this process can still get: `MemAvailable` and `SwapFree` of `/proc/meminfo`,
/// in bytes (None where there is no such file), the first no more than what its cgroup's
/// `memory.max` leaves (a container's or a SLURM job's limit: the kernel kills a process
/// past it whatever the machine has free).
pub fn available() -> Option<(u64, u64)> {
    let (ram, swap) = parse_meminfo(&std::fs::read_to_string("/proc/meminfo").ok()?)?;
    let limit = std::fs::read_to_string("/proc/self/cgroup")
        .ok()
        .and_then(|t| cgroup_available(std::path::Path::new("/sys/fs/cgroup"), &t));
    Some((limit.map_or(ram, |l| l.min(ram)), swap))
}

/// The files of a memory cgroup: v2 (`0::PATH` under the root) or v1 (`N:memory:PATH`
/// under `root/memory`): its limit, what is charged to it, and the `memory.stat` key of
/// its page cache.
const CGROUP_FILES: [(&str, &str, [&str; 3]); 2] = [
    ("0::", "", ["memory.max", "memory.current", "file "]),
    (
        ":memory:",
        "memory",
        [
            "memory.limit_in_bytes",
            "memory.usage_in_bytes",
            "total_cache ",
        ],
    ),
];

/// What the memory cgroup limits of the process (`/proc/self/cgroup`'s text, under
/// `root`) leave: the least over its cgroup and their ancestors of the limit less the
/// memory charged that is not page cache (which the kernel reclaims first); None where
/// no limit is set (v2's `max`, v1's near-2^63).
fn cgroup_available(root: &std::path::Path, proc_cgroup: &str) -> Option<u64> {
    let read = |dir: &std::path::Path, name: &str| std::fs::read_to_string(dir.join(name)).ok();
    let mut least: Option<u64> = None;
    for (tag, sub, [limit, usage, cache]) in CGROUP_FILES {
        let Some(rel) = proc_cgroup
            .lines()
            .find_map(|l| l.split_once(tag).map(|(_, p)| p))
        else {
            continue;
        };
        let top = root.join(sub);
        let mut dir = top.join(rel.trim().trim_start_matches('/'));
        loop {
            let max = read(&dir, limit)
                .and_then(|v| v.trim().parse::<u64>().ok())
                .filter(|&m| m < 1 << 62);
            if let Some(max) = max {
                let charged = read(&dir, usage)
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .unwrap_or(0);
                let file = read(&dir, "memory.stat")
                    .and_then(|t| {
                        t.lines()
                            .find_map(|l| l.strip_prefix(cache)?.trim().parse::<u64>().ok())
                    })
                    .unwrap_or(0);
                let left = max.saturating_sub(charged.saturating_sub(file));
                least = Some(least.map_or(left, |l| l.min(left)));
            }
            if dir == top || !dir.pop() {
                break;
            }
        }
    }
    least
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
             (memory {} + swap {}: /proc/meminfo, and the cgroup's limit): {fix}",
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
                && e.contains("/proc/meminfo")
                && e.ends_with(": lower --batch"),
            "{e}"
        );
        check(0, "nothing", "none").unwrap();
    }

    /// A cgroup's limit counts, its ancestors' too (the least is what is left), less
    /// what is charged that is not page cache, in cgroup v2 and v1; no limit: none.
    #[test]
    fn cgroup_limits_bound_what_is_available() {
        let root = tempfile::tempdir().unwrap();
        let job = root.path().join("slurm/job_1");
        std::fs::create_dir_all(&job).unwrap();
        let put =
            |dir: &std::path::Path, name: &str, v: &str| std::fs::write(dir.join(name), v).unwrap();
        put(&job, "memory.max", "1000000\n");
        put(&job, "memory.current", "400000\n");
        put(&job, "memory.stat", "anon 300000\nfile 100000\nkernel 0\n");
        put(&root.path().join("slurm"), "memory.max", "max\n");
        let proc = "0::/slurm/job_1\n";
        assert_eq!(cgroup_available(root.path(), proc), Some(700_000));
        // a tighter ancestor wins
        put(&root.path().join("slurm"), "memory.max", "500000\n");
        put(&root.path().join("slurm"), "memory.current", "450000\n");
        assert_eq!(cgroup_available(root.path(), proc), Some(50_000));
        // no limit anywhere, or a cgroup v1 system (no 0:: line)
        put(&job, "memory.max", "max\n");
        put(&root.path().join("slurm"), "memory.max", "max\n");
        assert_eq!(cgroup_available(root.path(), proc), None);
        // cgroup v1: memory.limit_in_bytes (near 2^63 when unlimited) and its cache
        let v1 = root.path().join("memory/docker/abc");
        std::fs::create_dir_all(&v1).unwrap();
        put(&v1, "memory.limit_in_bytes", "2000000\n");
        put(&v1, "memory.usage_in_bytes", "900000\n");
        put(
            &v1,
            "memory.stat",
            "cache 1\ntotal_cache 300000\nrss 600000\n",
        );
        put(
            &root.path().join("memory"),
            "memory.limit_in_bytes",
            "9223372036854771712\n",
        );
        let v1_proc = "4:memory:/docker/abc\n0::/\n";
        assert_eq!(cgroup_available(root.path(), v1_proc), Some(1_400_000));
        assert_eq!(cgroup_available(root.path(), "4:memory:/elsewhere\n"), None);
    }
}
