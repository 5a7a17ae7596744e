//! Joining the parts of a store written by workers `i of n` (each its own
//! `manifest.worker-I-of-N.json` and shards) into one store, checking that they labelled
//! the same dataset with the same config, that every worker finished, and that every
//! shard is the file its worker listed.

use std::path::Path;

use meal_data::dirlock::DirLock;
use meal_data::Dataset;

use super::images;
use super::manifest::{require_same_config, Manifest, State, MANIFEST};
use super::writer::summary;
use super::StoreError;

/// What [`merge`] made of a directory of worker parts.
#[derive(Debug)]
pub struct Merged {
    /// The joined store's manifest.
    pub manifest: Manifest,
    /// Whether this call wrote it: false when the parts were merged before, and the
    /// store was left as it was.
    pub written: bool,
}

/// Join the manifests of workers `0..n` in `dir` into `manifest.json`: refused when
/// their configs differ (naming the keys) or a shard is missing.
pub fn merge(dir: &Path, dataset: &Dataset) -> Result<Merged, StoreError> {
    merge_with(dir, dataset, &|_, _| {})
}

/// [`merge`], calling `progress(done, of)` as each shard is checked (hashed: the
/// merge's long part).
pub fn merge_with(
    dir: &Path,
    dataset: &Dataset,
    progress: &dyn Fn(u64, u64),
) -> Result<Merged, StoreError> {
    let samples = dataset.samples();
    if !dir.is_dir() {
        // checked before the lock, which would create the directory
        return Err(StoreError::Mismatch {
            path: dir.to_path_buf(),
            reason: match dir.exists() {
                true => "a file, not a store directory: no worker parts to merge".into(),
                false => "no such directory: no worker parts to merge".into(),
            },
        });
    }
    let none = || StoreError::Mismatch {
        path: dir.to_path_buf(),
        reason: match Manifest::read(dir).map(|m| m.state) {
            // a single run's store: nothing to merge, said as such
            Ok(State::Complete) => "a single run's complete store (manifest.json): it needs \
                                    no merge"
                .into(),
            Ok(_) => "a single run's partial store (manifest.json): rerun the run that wrote \
                      it to finish it; only the parts of workers are merged"
                .into(),
            Err(_) => "no worker manifests (manifest.worker-I-of-N.json) to merge".into(),
        },
    };
    // also checked before the lock: a directory that holds no store (a class folder
    // named by mistake) is refused without being locked
    if super::writer::worker_manifests(dir)?.is_empty() {
        return Err(none());
    }
    // a merge over a merged store on a read-only (or full) mount: nothing to write
    // when it is already merged, which is checked below before any write
    let _lock = match DirLock::acquire(dir) {
        Err(e) if super::writer::complete_without_lock(&e, dir, MANIFEST) => None,
        r => Some(r?),
    };
    let names = super::writer::worker_manifests(dir)?;
    if names.is_empty() {
        return Err(none());
    }
    let parts: Vec<Manifest> = names
        .iter()
        .map(|n| Manifest::read_file(&dir.join(n)))
        .collect::<Result<_, _>>()?;
    // parts labelled before some images changed size (the same files listed): their
    // workers' reruns keep what is unchanged (writer::renew); starting over is not needed.
    // The dataset's hashes are made once per shard size the parts give (one, in a split)
    use super::writer::renew::{renewal, shard_hashes, Renewal};
    let mut hashes = std::collections::BTreeMap::new();
    let mut stale: Vec<&str> = Vec::new();
    for (p, name) in parts.iter().zip(&names) {
        let fingerprint = dataset.fingerprint();
        if let Some(e) =
            crate::reader::edited_fingerprint(&dir.join(name), &p.config.dataset, fingerprint)
        {
            return Err(e);
        }
        if &p.config.dataset == fingerprint {
            continue;
        }
        let mut now = p.config.clone();
        now.dataset = dataset.fingerprint().clone();
        // (a class folder renamed is no size change: the names take part in the
        // comparison, and a part whose own shards are unchanged is not called stale)
        now.classes = dataset.classes().to_vec();
        let per_shard = p.config.samples_per_shard;
        let h = hashes
            .entry(per_shard)
            .or_insert_with(|| shard_hashes(dataset.samples(), per_shard));
        match renewal(p, &parts, &now, h) {
            Renewal::Yes => stale.push(name),
            r => {
                if let Some(e) = r.refusal(dir) {
                    return Err(e);
                }
            }
        }
    }
    if !stale.is_empty() {
        return Err(StoreError::Mismatch {
            path: dir.to_path_buf(),
            reason: format!(
                "{} labelled {} before some of its images changed size (the same files \
                 listed): rerun those workers on it (each keeps its unchanged shards), then \
                 merge",
                stale.join(", "),
                dataset.source().display()
            ),
        });
    }
    let first = &parts[0];
    // the images.parquet written below comes from `dataset`: it must be the dataset the
    // workers labelled, or paths and labels would shift against the shards
    let c = &first.config;
    if &c.dataset == dataset.fingerprint() && c.classes != dataset.classes() {
        // the same images under other class names: an edited part (the fingerprints
        // below would read the same)
        let (at, part, data) = crate::reader::first_other_names(&c.classes, dataset.classes());
        return Err(StoreError::Mismatch {
            path: dir.join(&names[0]),
            reason: format!(
                "config.classes is not the class list of {} (class {at}: {part} there, \
                 {data} in the data), whose images it labelled: the part was edited; \
                 restore it, or rerun its worker",
                dataset.source().display(),
            ),
        });
    }
    if &c.dataset != dataset.fingerprint() || c.classes != dataset.classes() {
        return Err(StoreError::Mismatch {
            path: dir.join(&names[0]),
            reason: format!(
                "the workers labelled another dataset ({} samples, fingerprint {}) than {} ({} samples, fingerprint {}): give merge the dataset the workers labelled, as they read it",
                c.dataset.samples,
                c.dataset.sha256,
                dataset.source().display(),
                dataset.fingerprint().samples,
                dataset.fingerprint().sha256
            ),
        });
    }
    let n = first.worker.map(|w| w[1]).unwrap_or(1);
    // the workers seen, as a set: `n` is read from a file (an edited
    // `"worker": [0, 4000000000]` allocated 4 GB as a Vec<bool>)
    let mut seen = std::collections::BTreeSet::new();
    for (p, name) in parts.iter().zip(&names) {
        require_same_config(
            &dir.join(name),
            &p.config,
            &first.config,
            &format!(
                "config differs from {}: remove the odd part's manifest and rerun its \
                 worker with the others' settings (its shards are written again), then \
                 merge",
                names[0]
            ),
            [name.as_str(), names[0].as_str()],
        )?;
        match p.worker {
            Some([i, m]) if m == n && i < n => {
                seen.insert(i);
            }
            Some([i, m]) => {
                return Err(StoreError::Mismatch {
                    path: dir.join(name),
                    reason: format!(
                        "written by worker {i} of {m}, but {} is worker {} of {n}: the parts \
                         of two splits are here; remove those of the split not to merge \
                         (manifest.worker-*-of-{m}.json, or the -of-{n}.json ones; the \
                         shards, the same bytes either way, stay), then merge",
                        names[0],
                        first.worker.map(|w| w[0]).unwrap_or(0)
                    ),
                })
            }
            None => {
                return Err(StoreError::Mismatch {
                    path: dir.join(name),
                    reason: "not a worker manifest".into(),
                })
            }
        }
    }
    // (after every part is known to be of this split: a stray unfinished part of
    // another split was to be "rerun", which its split's count refused)
    // (every unfinished worker named: the first alone was rerun, then the next met)
    let unfinished: Vec<(&String, &Manifest)> = names
        .iter()
        .zip(&parts)
        .filter(|(_, p)| p.state != State::Complete)
        .collect();
    if let Some((name, _)) = unfinished.first() {
        let who: Vec<String> = unfinished
            .iter()
            .map(|(_, p)| p.worker.map_or(0, |w| w[0]).to_string())
            .collect();
        let written: Vec<String> = unfinished
            .iter()
            .map(|(_, p)| p.shards.len().to_string())
            .collect();
        return Err(StoreError::Mismatch {
            path: dir.join(name),
            reason: match unfinished.len() {
                1 => format!(
                    "worker {} of {n} has not finished ({}): rerun it, then merge",
                    who[0],
                    crate::reader::things(
                        unfinished[0].1.shards.len(),
                        "shard written",
                        "shards written"
                    )
                ),
                _ => format!(
                    "workers {} of {n} have not finished (shards written: {}): rerun them, \
                     then merge",
                    meal_data::error::first_few(&who, 10),
                    meal_data::error::first_few(&written, 10)
                ),
            },
        });
    }
    if (seen.len() as u64) < u64::from(n) {
        // the first ten named, found without listing every absent index (a split into
        // 2^32 - 1 workers, most of which hold no shard, ran out of memory)
        let absent: Vec<u32> = (0..n).filter(|i| !seen.contains(i)).take(11).collect();
        let list = |f: &dyn Fn(&u32) -> String| {
            meal_data::error::first_few(&absent.iter().map(f).collect::<Vec<_>>(), 10)
        };
        return Err(StoreError::Mismatch {
            path: dir.to_path_buf(),
            reason: match absent.len() {
                1 => format!(
                    "worker {} of {n} is missing (no {}): run it, then merge",
                    list(&|i| i.to_string()),
                    list(&|i| crate::manifest::manifest_name(Some([*i, n])))
                ),
                _ => format!(
                    "workers {} of {n} are missing (no {}): run them, then merge",
                    list(&|i| i.to_string()),
                    list(&|i| crate::manifest::manifest_name(Some([*i, n])))
                ),
            },
        });
    }
    let mut m = first.clone();
    m.worker = None;
    m.shards = parts
        .iter()
        .flat_map(|p| p.shards.iter().cloned())
        .collect();
    m.shards.sort_by_key(|s| s.index);
    let total = (samples.len() as u32).div_ceil(m.config.samples_per_shard);
    let have: Vec<u32> = m.shards.iter().map(|s| s.index).collect();
    // (`have` is sorted: a search, not a scan per shard; ImageNet at one image per
    // shard has 1.28M)
    let missing: Vec<u32> = (0..total)
        .filter(|s| have.binary_search(s).is_err())
        .collect();
    let duplicated: Vec<u32> = have
        .windows(2)
        .filter(|w| w[0] == w[1])
        .map(|w| w[0])
        .collect();
    if !missing.is_empty() || !duplicated.is_empty() {
        // name the parts that list a duplicated shard
        let by: Vec<String> = names
            .iter()
            .zip(&parts)
            .filter(|(_, p)| p.shards.iter().any(|s| duplicated.contains(&s.index)))
            .map(|(name, _)| name.clone())
            .collect();
        return Err(StoreError::Mismatch {
            path: dir.to_path_buf(),
            reason: format!(
                "the workers' shards do not cover the dataset once: missing shards {missing:?}, listed twice {duplicated:?}{}",
                match by.is_empty() {
                    true => String::new(),
                    false => format!(" (by {})", by.join(", ")),
                }
            ),
        });
    }
    // every worker shard is checked against its manifest while merging: a damaged or
    // replaced file fails here, not at training time
    let of = m.shards.len() as u64;
    for (done, s) in m.shards.iter().enumerate() {
        progress(done as u64, of);
        // the worker that wrote it (shard s % n), whose rerun writes it again
        let who = format!("rerun worker {} of {n}, then merge", s.index % n);
        s.check_written(dir, &m.config).map_err(|e| match e {
            StoreError::Corrupt { path, reason } => StoreError::Corrupt {
                path,
                reason: format!("{reason}: {who}"),
            },
            StoreError::Io { path, error } => StoreError::Corrupt {
                reason: format!("listed by its worker's manifest but unreadable ({error}): {who}"),
                path,
            },
            e => e,
        })?;
        // the images it records (paths and labels) are the dataset's, which the
        // fingerprint checked above: another listing is a part's manifest edited, which
        // the merged store's readers would refuse
        let range = samples.get(s.first_sample as usize..s.end_sample as usize);
        if let (Some(l), Some(r)) = (&s.listing_sha256, range) {
            if *l != meal_data::dataset::listing_sha256(r) {
                return Err(StoreError::corrupt(
                    &dir.join(crate::manifest::manifest_name(Some([s.index % n, n]))),
                    format!(
                        "its entry for {} records another listing of its images than the \
                         dataset's (listing_sha256 edited?): {who}",
                        s.file
                    ),
                ));
            }
        }
    }
    m.summary = Some(summary(&m));
    m.state = State::Complete;
    // merged before with the same parts: its manifest and intact image table are kept,
    // unwritten (a rerun of a pipeline over a finished store on a read-only mount)
    if let Ok(done) = Manifest::read(dir) {
        let same = Manifest {
            images_sha256: done.images_sha256.clone(),
            ..m.clone()
        };
        if done == same && images::intact(dir, &done) {
            return Ok(Merged {
                manifest: done,
                written: false,
            });
        }
    }
    let labels: Vec<u32> = samples.iter().map(|s| s.label).collect();
    let paths: Vec<String> = samples.iter().map(|s| s.path.clone()).collect();
    m.images_sha256 = Some(images::write(dir, &m, &paths, &labels)?);
    m.write(dir, MANIFEST)?;
    Ok(Merged {
        manifest: m,
        written: true,
    })
}
