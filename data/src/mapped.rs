//! Which file a memory-mapped address belongs to, readable from a signal handler.
//!
//! A read of a mapped file that was truncated under the process faults (SIGBUS, with
//! the address in `si_addr`); the handler can only call async-signal-safe code, so the
//! mapped ranges and their file names live in a fixed table of atomics: registering
//! and dropping take a slot, looking up only loads. The label store registers each
//! shard it maps, and `meal-cli`'s SIGBUS report names the shard that was cut short.

use std::path::Path;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

/// Mapped files tracked at once (a 1.28 M-image store at 1024 images a shard maps
/// 1251; past this, a mapping is simply not named).
const SLOTS: usize = 4096;
/// Bytes of a file's name kept: its path's tail, which holds the file name.
const NAME: usize = 240;

const FREE: usize = 0;
const WRITING: usize = 1;
const LIVE: usize = 2;

struct Slot {
    state: AtomicUsize,
    start: AtomicUsize,
    end: AtomicUsize,
    len: AtomicUsize,
    name: [AtomicU8; NAME],
}

#[allow(clippy::declare_interior_mutable_const)] // (each array element is its own slot)
const EMPTY: Slot = Slot {
    state: AtomicUsize::new(FREE),
    start: AtomicUsize::new(0),
    end: AtomicUsize::new(0),
    len: AtomicUsize::new(0),
    name: [const { AtomicU8::new(0) }; NAME],
};

static TABLE: [Slot; SLOTS] = [EMPTY; SLOTS];

/// A mapped range named in the table until this is dropped (drop it before unmapping).
#[derive(Debug)]
pub struct Registration(usize);

impl Drop for Registration {
    fn drop(&mut self) {
        TABLE[self.0].state.store(FREE, Ordering::Release);
    }
}

/// Name `bytes` (a mapping of the file at `path`) in the table; `None` when the table
/// is full (the mapping then goes unnamed) or `bytes` is empty.
pub fn register(bytes: &[u8], path: &Path) -> Option<Registration> {
    if bytes.is_empty() {
        return None;
    }
    let i = TABLE.iter().position(|s| {
        s.state
            .compare_exchange(FREE, WRITING, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    })?;
    let slot = &TABLE[i];
    let full = path.as_os_str().as_encoded_bytes();
    let name = &full[full.len().saturating_sub(NAME)..];
    for (d, s) in slot.name.iter().zip(name) {
        d.store(*s, Ordering::Relaxed);
    }
    slot.len.store(name.len(), Ordering::Relaxed);
    let start = bytes.as_ptr() as usize;
    slot.start.store(start, Ordering::Relaxed);
    slot.end.store(start + bytes.len(), Ordering::Relaxed);
    slot.state.store(LIVE, Ordering::Release);
    Some(Registration(i))
}

/// Copy the name of the registered file mapped at `addr` into `out`; returns its
/// length (0: no registered mapping holds `addr`). Async-signal-safe: atomic loads
/// and stores into `out` only, no allocation or lock. A name cut to its tail starts
/// with `...`.
pub fn name_at(addr: usize, out: &mut [u8]) -> usize {
    for slot in &TABLE {
        if slot.state.load(Ordering::Acquire) != LIVE {
            continue;
        }
        let (start, end) = (
            slot.start.load(Ordering::Relaxed),
            slot.end.load(Ordering::Relaxed),
        );
        if !(start..end).contains(&addr) {
            continue;
        }
        let len = slot.len.load(Ordering::Relaxed).min(NAME);
        // (a path cut to its tail is marked, so it is not taken for a relative one)
        let cut: &[u8] = match len == NAME {
            true => b"...",
            false => b"",
        };
        let mut n = 0;
        for b in cut
            .iter()
            .copied()
            .chain(slot.name[..len].iter().map(|b| b.load(Ordering::Relaxed)))
        {
            if n == out.len() {
                break;
            }
            out[n] = b;
            n += 1;
        }
        return n;
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(addr: usize) -> String {
        let mut buf = [0u8; 512];
        let n = name_at(addr, &mut buf);
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[test]
    fn an_address_is_named_by_the_mapping_that_holds_it_until_dropped() {
        let a = vec![0u8; 100];
        let b = vec![0u8; 10];
        let ra = register(&a, Path::new("/s/shard-000001.parquet")).unwrap();
        let rb = register(&b, Path::new("/s/shard-000002.parquet")).unwrap();
        let (pa, pb) = (a.as_ptr() as usize, b.as_ptr() as usize);
        assert_eq!(name(pa), "/s/shard-000001.parquet");
        assert_eq!(name(pa + 99), "/s/shard-000001.parquet");
        assert_eq!(name(pb + 5), "/s/shard-000002.parquet");
        drop(ra);
        assert_eq!(name(pa + 1), "");
        assert_eq!(name(pb), "/s/shard-000002.parquet");
        // a long path keeps its tail, marked as cut
        let long = format!("/{}/shard-000003.parquet", "d".repeat(400));
        let c = vec![0u8; 4];
        let _rc = register(&c, Path::new(&long)).unwrap();
        let n = name(c.as_ptr() as usize);
        assert!(
            n.starts_with("...") && n.ends_with("/shard-000003.parquet"),
            "{n}"
        );
        assert_eq!(n.len(), NAME + 3);
        // a buffer too small gets the name's start
        let mut small = [0u8; 4];
        assert_eq!(name_at(pb, &mut small), 4);
        assert_eq!(&small, b"/s/s");
        drop(rb);
        assert!(register(&[], Path::new("empty")).is_none());
    }
}
