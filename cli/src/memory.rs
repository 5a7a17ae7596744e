//! Refusing a batch that cannot fit in memory before it is tried: on Linux an
//! allocation past the machine's memory is not an error but the out-of-memory killer
//! (or minutes of swapping) once the first step runs.

/// Memory this process can still get: `MemAvailable` and `SwapFree` of `/proc/meminfo`,
/// in bytes (None where there is no such file), the first no more than what its cgroup's
/// `memory.max` leaves (a container's or a SLURM job's limit: the kernel kills a process
/// past it whatever the machine has free), and both together no more than what its
/// address-space limit leaves (`ulimit -v`, SGE's `h_vmem`: an allocation past it
/// fails, and Rust aborts).
pub fn available() -> Option<(u64, u64)> {
    let (ram, swap) = parse_meminfo(&std::fs::read_to_string("/proc/meminfo").ok()?)?;
    let left = std::fs::read_to_string("/proc/self/cgroup")
        .ok()
        .map(|t| cgroup_left(std::path::Path::new("/sys/fs/cgroup"), &t))
        .unwrap_or_default();
    let cap = |v: u64, c: Option<u64>| c.map_or(v, |c| c.min(v));
    let (ram, swap) = (cap(ram, left.memory), cap(swap, left.swap));
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    Some(match address_space_left(&limits, &status) {
        Some(a) => (ram.min(a), swap.min(a.saturating_sub(ram.min(a)))),
        None => (ram, swap),
    })
}

/// What the soft address-space limit (`Max address space` of `/proc/self/limits`)
/// leaves above the process's mapped size (`VmSize` of `/proc/self/status`); None
/// when unlimited or unreadable.
fn address_space_left(limits: &str, status: &str) -> Option<u64> {
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max address space"))?;
    let soft: u64 = line["Max address space".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let size_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmSize:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    Some(soft.saturating_sub(size_kib * 1024))
}

/// What the memory cgroup limits of a process leave it (None: no limit).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct CgroupLeft {
    /// Memory: the limit less what is charged that is not page cache (which the kernel
    /// reclaims first).
    memory: Option<u64>,
    /// Swap: v2's `memory.swap.max` less its use; v1's memory+swap limit less its use
    /// and the memory left.
    swap: Option<u64>,
}

/// The files of a memory cgroup, v2 (`0::PATH` under the root) then v1 (`N:memory:PATH`
/// under `root/memory`): the limit, what is charged, the `memory.stat` key of its page
/// cache, and the swap (v2) or memory+swap (v1) limit and use.
const CGROUP_FILES: [(&str, &str, [&str; 5]); 2] = [
    (
        "0::",
        "",
        [
            "memory.max",
            "memory.current",
            "file ",
            "memory.swap.max",
            "memory.swap.current",
        ],
    ),
    (
        ":memory:",
        "memory",
        [
            "memory.limit_in_bytes",
            "memory.usage_in_bytes",
            "total_cache ",
            "memory.memsw.limit_in_bytes",
            "memory.memsw.usage_in_bytes",
        ],
    ),
];

/// [`CgroupLeft`] of the process whose `/proc/self/cgroup` text is `proc_cgroup`, its
/// cgroups under `root`: the least over each cgroup and its ancestors (v2's `max` and
/// v1's near-2^63 are no limit).
fn cgroup_left(root: &std::path::Path, proc_cgroup: &str) -> CgroupLeft {
    let read = |dir: &std::path::Path, name: &str| -> Option<u64> {
        std::fs::read_to_string(dir.join(name))
            .ok()?
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|&v| v < 1 << 62)
    };
    let least = |a: Option<u64>, b: u64| Some(a.map_or(b, |a| a.min(b)));
    let mut left = CgroupLeft::default();
    for (v1, (tag, sub, [limit, usage, cache, swap_limit, swap_usage])) in
        CGROUP_FILES.into_iter().enumerate()
    {
        let Some(rel) = proc_cgroup
            .lines()
            .find_map(|l| l.split_once(tag).map(|(_, p)| p))
        else {
            continue;
        };
        let top = root.join(sub);
        let mut dir = top.join(rel.trim().trim_start_matches('/'));
        loop {
            let (max, swap_max) = (read(&dir, limit), read(&dir, swap_limit));
            // the page cache charged here (read once, where a limit is set)
            let cached = if max.is_some() || swap_max.is_some() {
                std::fs::read_to_string(dir.join("memory.stat"))
                    .ok()
                    .and_then(|t| {
                        t.lines()
                            .find_map(|l| l.strip_prefix(cache)?.trim().parse::<u64>().ok())
                    })
                    .unwrap_or(0)
            } else {
                0
            };
            let memory = max.map(|max| {
                max.saturating_sub(read(&dir, usage).unwrap_or(0).saturating_sub(cached))
            });
            if let Some(m) = memory {
                left.memory = least(left.memory, m);
            }
            if let Some(max) = swap_max {
                let used = read(&dir, swap_usage).unwrap_or(0);
                let mut swap = max.saturating_sub(used);
                if v1 == 1 {
                    // memory and swap together: all that is left, of which the memory
                    // takes what its own limit leaves, the swap the rest
                    let both = swap.saturating_add(cached);
                    left.memory = least(left.memory, both);
                    swap = both.saturating_sub(memory.unwrap_or(0));
                }
                left.swap = least(left.swap, swap);
            }
            if dir == top || !dir.pop() {
                break;
            }
        }
    }
    left
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

/// Bytes as GiB with one decimal, or as MiB below one GiB ("0.0 GiB needed, more than
/// the 0.0 GiB" said nothing under a small limit).
pub fn gib(bytes: u64) -> String {
    let mib = bytes as f64 / (1u64 << 20) as f64;
    match bytes {
        b if b < 10 << 20 => format!("{mib:.1} MiB"),
        b if b < 1 << 30 => format!("{mib:.0} MiB"),
        _ => format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64),
    }
}

/// Where the bytes a check counts must fit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Room {
    /// The host's memory and swap ([`available`]).
    Host,
    /// A GPU with this many bytes free (meal_models::device::gpu_free_memory): no swap.
    Gpu(u64),
}

impl Room {
    /// The GPU's room where the work runs on one (its free bytes), else the host's.
    pub fn of(gpu_free: Option<u64>) -> Room {
        gpu_free.map_or(Room::Host, Room::Gpu)
    }
}

/// Refuses `need` bytes (a lower bound of what the work holds) when the memory and swap
/// available cannot give them; warns when only swap could (it would run, slowly).
/// `what` says what needs them, `fix` which flags lower the need.
pub fn check(need: u64, what: &str, fix: &str) -> anyhow::Result<()> {
    check_in(Room::Host, need, what, fix)
}

/// [`check`] in `room`: on a GPU, refuses `need` past its free memory (a CUDA
/// allocation past it fails in the middle of the work, after the set-up).
pub fn check_in(room: Room, need: u64, what: &str, fix: &str) -> anyhow::Result<()> {
    if let Room::Gpu(free) = room {
        if need > free {
            anyhow::bail!(
                "{what}: at least {} needed, more than the {} free on the GPU: {fix}",
                gib(need),
                gib(free)
            );
        }
        return Ok(());
    }
    let Some((ram, swap)) = available() else {
        return Ok(());
    };
    if need > ram.saturating_add(swap) {
        anyhow::bail!(
            "{what}: at least {} needed, more than the {} of memory available here \
             (memory {} + swap {}: /proc/meminfo, the cgroup's limit and the \
             address-space limit, ulimit -v): {fix}",
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

/// [`check_in`] `room` of each forward of an ensemble over `rows` crops: `needs[i]` the bytes of
/// teacher `i`'s (its input and activations, [`meal_models::memory::inference_floor`]), `what(i)` names the
/// teacher by its flag and spec.
pub fn check_forwards(
    room: Room,
    needs: &[u64],
    rows: usize,
    what: impl Fn(usize) -> String,
    fix: &str,
) -> anyhow::Result<()> {
    for (i, &need) in needs.iter().enumerate() {
        check_in(
            room,
            need,
            &format!(
                "{}: a forward over {rows} crops (its input and activations, \
                 measured on small inputs and scaled)",
                what(i)
            ),
            fix,
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_address_space_limit_caps_what_is_available() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max stack size            8388608              unlimited            bytes     \n\
                      Max address space         8192000000           unlimited            bytes     \n";
        let status = "Name:\tx\nVmPeak:\t  900000 kB\nVmSize:\t  800000 kB\nVmRSS:\t 10 kB\n";
        assert_eq!(
            address_space_left(limits, status),
            Some(8192000000 - 800000 * 1024)
        );
        // unlimited: no cap
        let unlimited = limits.replace("8192000000  ", "unlimited   ");
        assert_eq!(address_space_left(&unlimited, status), None);
        assert_eq!(address_space_left("", status), None);
    }

    #[test]
    fn meminfo_fields_are_read_in_bytes() {
        let text = "MemTotal:       16384000 kB\nMemFree:  100 kB\nMemAvailable:    8192000 kB\n\
                    SwapTotal:  0 kB\nSwapFree:       2048 kB\n";
        assert_eq!(parse_meminfo(text), Some((8192000 * 1024, 2048 * 1024)));
        // no swap line (some containers): none
        assert_eq!(parse_meminfo("MemAvailable: 1 kB\n"), Some((1024, 0)));
        assert_eq!(parse_meminfo("MemTotal: 1 kB\n"), None);
        assert_eq!(gib(3 << 29), "1.5 GiB");
        assert_eq!(gib(300 << 20), "300 MiB");
        // a GPU's room is its free memory, without swap
        let e = check_in(Room::Gpu(1 << 30), 3 << 29, "a step", "lower --batch").unwrap_err();
        assert_eq!(
            e.to_string(),
            "a step: at least 1.5 GiB needed, more than the 1.0 GiB free on the GPU: lower --batch"
        );
        assert!(check_in(Room::Gpu(1 << 30), 1 << 30, "a step", "").is_ok());
        assert_eq!(Room::of(None), Room::Host);
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
    /// what is charged that is not page cache, in cgroup v2 and v1, and so does a swap
    /// limit; no limit: none.
    #[test]
    fn cgroup_limits_bound_what_is_available() {
        let root = tempfile::tempdir().unwrap();
        let job = root.path().join("slurm/job_1");
        std::fs::create_dir_all(&job).unwrap();
        let put =
            |dir: &std::path::Path, name: &str, v: &str| std::fs::write(dir.join(name), v).unwrap();
        let left = |proc: &str| cgroup_left(root.path(), proc);
        put(&job, "memory.max", "1000000\n");
        put(&job, "memory.current", "400000\n");
        put(&job, "memory.stat", "anon 300000\nfile 100000\nkernel 0\n");
        put(&root.path().join("slurm"), "memory.max", "max\n");
        let proc = "0::/slurm/job_1\n";
        assert_eq!(left(proc).memory, Some(700_000));
        assert_eq!(left(proc).swap, None);
        // a tighter ancestor wins; a job without swap has none
        put(&root.path().join("slurm"), "memory.max", "500000\n");
        put(&root.path().join("slurm"), "memory.current", "450000\n");
        put(&job, "memory.swap.max", "0\n");
        assert_eq!(
            left(proc),
            CgroupLeft {
                memory: Some(50_000),
                swap: Some(0)
            }
        );
        // no limit anywhere
        put(&job, "memory.max", "max\n");
        put(&job, "memory.swap.max", "max\n");
        put(&root.path().join("slurm"), "memory.max", "max\n");
        assert_eq!(left(proc), CgroupLeft::default());
        // cgroup v1: memory.limit_in_bytes (near 2^63 when unlimited) and its cache;
        // memory+swap 2.5 MB, 1.2 MB of it used, of which 0.3 MB cache: 1.6 MB left, the
        // memory taking 1.4 MB of it
        let v1 = root.path().join("memory/docker/abc");
        std::fs::create_dir_all(&v1).unwrap();
        put(&v1, "memory.limit_in_bytes", "2000000\n");
        put(&v1, "memory.usage_in_bytes", "900000\n");
        put(
            &v1,
            "memory.stat",
            "cache 1\ntotal_cache 300000\nrss 600000\n",
        );
        put(&v1, "memory.memsw.limit_in_bytes", "2500000\n");
        put(&v1, "memory.memsw.usage_in_bytes", "1200000\n");
        put(
            &root.path().join("memory"),
            "memory.limit_in_bytes",
            "9223372036854771712\n",
        );
        let v1_proc = "4:memory:/docker/abc\n0::/\n";
        assert_eq!(
            left(v1_proc),
            CgroupLeft {
                memory: Some(1_400_000),
                swap: Some(200_000)
            }
        );
        assert_eq!(left("4:memory:/elsewhere\n"), CgroupLeft::default());
        // memory+swap nearly used up: it bounds the memory too
        put(&v1, "memory.memsw.usage_in_bytes", "2400000\n");
        assert_eq!(
            left(v1_proc),
            CgroupLeft {
                memory: Some(400_000),
                swap: Some(0)
            }
        );
    }
}
