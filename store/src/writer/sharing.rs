//! How writers share a store directory: the locks a single writer, a worker and a merge
//! take, the opening lock workers take one at a time, and the check of the manifests
//! already there (one directory holds one store, of one config).

use std::fs;
use std::path::Path;

use meal_data::dirlock::{DirLock, LockError, LOCK_FILE};

use crate::manifest::{require_same_config, Manifest, State, StoreConfig, MANIFEST};
use crate::StoreError;

/// A single writer (and merge) locks `.lock` exclusively. Workers share the directory by
/// design: each holds `.lock` shared, which keeps a single writer and a merge out while
/// any of them runs, and its own part's lock exclusively. Released (dropped) part lock
/// first: a run that wrote nothing then leaves neither file (`DirLock`'s drop).
/// A worker also returns the store's opening lock ([`OPENING_LOCK`]), taken before its
/// part lock: its caller holds it until the part's manifest is current.
pub(super) fn lock(
    dir: &Path,
    worker: Option<[u32; 2]>,
) -> Result<(Vec<DirLock>, Option<DirLock>), StoreError> {
    Ok(match worker {
        None => (vec![DirLock::acquire_named(dir, LOCK_FILE)?], None),
        Some([i, n]) => {
            let shared = DirLock::acquire_shared_named(dir, LOCK_FILE)?;
            let opening = opening_lock(dir)?;
            let part = DirLock::acquire_named(dir, &format!("{LOCK_FILE}.worker-{i}-of-{n}"))?;
            (vec![part, shared], Some(opening))
        }
    })
}

/// [`lock`], or no lock where [`complete_without_lock`] allows it.
pub(super) fn lock_or_read_only(
    dir: &Path,
    worker: Option<[u32; 2]>,
) -> Result<(Vec<DirLock>, Option<DirLock>), StoreError> {
    match lock(dir, worker) {
        Err(StoreError::Locked(e)) if complete_without_lock(&e, dir, &manifest_name(worker)) => {
            Ok((Vec::new(), None))
        }
        r => r,
    }
}

/// Whether a lock of the store `dir` that failed with `e` may be gone without: no lock
/// file can be made there (a read-only or full file system) and its manifest `name` is
/// complete, so a rerun, a device-list rerun or a merge has nothing to write and only
/// reads it, as a pipeline rerun over a finished store on a shared read-only mount does
/// (it failed on the lock file). Warns when so; anything still written fails naming the
/// file.
pub fn complete_without_lock(e: &LockError, dir: &Path, name: &str) -> bool {
    let LockError::Io { path, error } = e else {
        return false;
    };
    let unlocked = matches!(
        error.kind(),
        std::io::ErrorKind::ReadOnlyFilesystem | std::io::ErrorKind::StorageFull
    ) && Manifest::read_file(&dir.join(name))
        .is_ok_and(|m| m.state == State::Complete);
    if unlocked {
        tracing::warn!(
            "{}: {error}; the store there is complete, so this run reads it without the lock",
            path.display()
        );
    }
    unlocked
}

/// Held by a worker while it opens its part (its part lock taken, its neighbours
/// checked, its manifest made current), one worker at a time: a worker checking its
/// neighbours then finds each not started, or running with its manifest current, and
/// its probe of their part locks never meets another worker taking its own.
const OPENING_LOCK: &str = ".lock.opening";

/// [`OPENING_LOCK`], waited for: each holder keeps it for the time of a manifest's reads
/// and write, so the wait ends in a refusal only after one holder kept it a minute.
fn opening_lock(dir: &Path) -> Result<DirLock, StoreError> {
    use meal_data::dirlock::LockError;
    let mut since = (std::time::Instant::now(), String::new());
    let mut said = false;
    loop {
        match DirLock::acquire_named(dir, OPENING_LOCK) {
            Err(LockError::Busy { dir, holder }) => {
                // a wait of seconds (a slow disk) is said, not silent
                if !said && since.0.elapsed() > std::time::Duration::from_secs(3) {
                    tracing::info!(
                        "{}: waiting for another worker ({holder}) to open its part",
                        dir.display()
                    );
                    said = true;
                }
                // the queue moves while the holder changes
                if holder != since.1 {
                    since = (std::time::Instant::now(), holder);
                } else if since.0.elapsed() > std::time::Duration::from_secs(60) {
                    return Err(LockError::Busy {
                        dir,
                        holder: format!(
                            "a worker ({holder}) that has been opening its part for over a \
                             minute ({OPENING_LOCK})"
                        ),
                    }
                    .into());
                }
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            r => return Ok(r?),
        }
    }
}

/// The worker manifests in `dir` (`manifest.worker-I-of-N.json`), sorted.
pub fn worker_manifests(dir: &Path) -> Result<Vec<String>, StoreError> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map_err(|e| StoreError::io(dir, e))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with("manifest.worker-") && n.ends_with(".json"))
        .collect();
    names.sort();
    Ok(names)
}

/// Whether a writer of `config` (worker `worker`) may write in `dir` beside the manifests
/// already there. One directory holds one store: a single run's, or the parts of one
/// split into workers (then their merge). A writer of one kind must not replace the
/// shards another manifest lists (their checksums would no longer match), and every
/// manifest there must have been made with the same config. Returns the workers' parts
/// it read (none for a single writer), for the renewal rule ([`super::renew::store_of`]).
pub(super) fn check_neighbours(
    dir: &Path,
    config: &StoreConfig,
    worker: Option<[u32; 2]>,
    hashes: &[[String; 2]],
) -> Result<Vec<Manifest>, StoreError> {
    let parts = worker_manifests(dir)?;
    let own = manifest_name(worker);
    let single = dir.join(MANIFEST).exists();
    match worker {
        None if !single && !parts.is_empty() => {
            // parts left unfinished (an interrupted worker or device-list run) cannot be
            // merged yet: name what finishes them
            let mut unfinished = Vec::new();
            let (mut present, mut of) = (Vec::new(), 0);
            for p in &parts {
                let m = Manifest::read_file(&dir.join(p))?;
                if m.state != State::Complete {
                    unfinished.push(p.as_str());
                }
                if let Some([i, n]) = m.worker {
                    present.push(i);
                    of = n;
                }
            }
            let missing: Vec<String> = (0..of)
                .filter(|i| !present.contains(i))
                .map(|i| format!("{i}/{of}"))
                .collect();
            let what = if !unfinished.is_empty() {
                format!(
                    "not merged, and {} unfinished: rerun those workers (or the same device \
                     list) to finish them, then merge",
                    unfinished.join(", ")
                )
            } else if !missing.is_empty() {
                format!(
                    "not merged, and worker(s) {} have not run: run them, then merge",
                    missing.join(", ")
                )
            } else {
                "all complete, not yet merged: merge them".to_string()
            };
            return Err(StoreError::Mismatch {
                path: dir.to_path_buf(),
                reason: format!(
                    "the directory holds the parts of workers ({}), {what}; or write this \
                     store in another directory",
                    parts.join(", ")
                ),
            });
        }
        // a single writer over a single or merged store: its manifest.json is compared
        // when it is opened (the parts of a merged store have its config)
        None => return Ok(Vec::new()),
        Some([_, n]) => {
            let of_n = format!("-of-{n}.json");
            if single
                && !parts.is_empty()
                && !parts.contains(&own)
                && parts.iter().all(|p| p.ends_with(&of_n))
            {
                // the parts of this very split, this worker's own gone (removed by hand):
                // not another writer's store
                return Err(StoreError::Mismatch {
                    path: dir.join(&own),
                    reason: format!(
                        "missing from a store merged from this split's parts ({}): removed? \
                         Restore it, or rerun as a single run (not a worker) to check or \
                         renew the merged store as one",
                        parts.join(", ")
                    ),
                });
            }
            if single && !parts.contains(&own) {
                let made = if parts.is_empty() {
                    "a store written by a single run".to_string()
                } else {
                    format!(
                        "a store merged from the parts of workers ({})",
                        parts.join(", ")
                    )
                };
                return Err(StoreError::Mismatch {
                    path: dir.join(MANIFEST),
                    reason: format!(
                        "the directory holds {made}: another worker's part would replace \
                         its shards; write the parts in another directory"
                    ),
                });
            }
            let suffix = format!("-of-{n}.json");
            if let Some(other) = parts.iter().find(|p| !p.ends_with(&suffix)) {
                // the way on: the split the directory holds, by its part's name
                let theirs = other
                    .strip_suffix(".json")
                    .and_then(|r| r.rsplit_once("-of-"))
                    .and_then(|(_, m)| m.parse::<usize>().ok())
                    .filter(|&m| m > 0);
                let way = match theirs {
                    Some(m) => format!(
                        "this directory holds a split into {m}: run its parts 0/{m} to {}/{m}, \
                         or write a split into {n} in another directory",
                        m - 1
                    ),
                    None => "write this split in another directory".to_string(),
                };
                return Err(StoreError::Mismatch {
                    path: dir.join(other),
                    reason: format!(
                        "written by a split into another number of workers than {n}: the two \
                         splits would write the same shards; {way}"
                    ),
                });
            }
        }
    }
    // (read once: each part's renewal counts the shards of all of them)
    let manifests: Vec<Manifest> = parts
        .iter()
        .map(|name| Manifest::read_file(&dir.join(name)))
        .collect::<Result<_, _>>()?;
    for (name, part) in parts.iter().zip(&manifests).filter(|(n, _)| **n != own) {
        let path = dir.join(name);
        // a part that holds no shard has nothing to keep: its worker starts it over
        // (a split that failed on its first batch, rerun once its image is fixed); a
        // merge refuses parts of two configs whatever happens. Unless its worker is
        // running (it holds its part's lock): workers started together are compared
        if part.shards.is_empty() {
            let lock = name
                .strip_prefix("manifest")
                .and_then(|r| r.strip_suffix(".json"))
                .map(|w| format!("{LOCK_FILE}{w}"));
            if !lock.is_some_and(|l| meal_data::dirlock::is_held(dir, &l)) {
                continue;
            }
        }
        // (a part whose images changed size since, the same files listed: its worker
        // takes it over to this config when it reruns, super::renew)
        match super::renew::renewal(part, &manifests, config, hashes) {
            super::renew::Renewal::Yes => continue,
            r => {
                if let Some(e) = r.refusal(dir) {
                    return Err(e);
                }
            }
        }
        require_same_config(
            &path,
            &part.config,
            config,
            "another worker's part was made with another config",
            ["that part", "now"],
        )?;
    }
    Ok(manifests)
}

/// After a single run renewed a merged store `m` in `dir` (images changed size, the same
/// files listed: [`super::renew`]), the workers' manifests beside it still list the old
/// dataset and the recomputed shards' old checksums, and a later `merge` or worker rerun
/// would ask for every worker to be run again. Each such part is brought to `m`: its
/// config, and `m`'s records of its shards. Parts of any other config, or listing other
/// files, are left alone (the single writer does not own them). Not part of the store:
/// a part that cannot be rewritten is warned of (its worker's rerun renews it).
pub(super) fn follow_parts(dir: &Path, m: &Manifest) {
    let Ok(parts) = worker_manifests(dir) else {
        return;
    };
    for name in parts {
        let path = dir.join(&name);
        let Ok(mut part) = Manifest::read_file(&path) else {
            continue;
        };
        let Some([i, n]) = part.worker else { continue };
        let ours: Vec<_> = m
            .shards
            .iter()
            .filter(|s| n > 0 && s.index % n == i)
            .cloned()
            .collect();
        let same_files = part.shards.len() == ours.len()
            && part.shards.iter().zip(&ours).all(|(a, b)| {
                a.index == b.index && a.file == b.file && a.listing_sha256 == b.listing_sha256
            });
        let renewed = crate::manifest::config_diff(&part.config, &m.config) == ["dataset.sha256"];
        if !(renewed && same_files && part.state == State::Complete) {
            continue;
        }
        part.config = m.config.clone();
        part.shards = ours;
        if let Err(e) = part.write(dir, &name) {
            tracing::warn!(
                "{e}: this worker's part still lists the images as they were; its rerun \
                 renews it"
            );
        }
    }
}

pub(super) use crate::manifest::manifest_name;
