//! Opening a store for writing: its locks, the workers' parts beside it, a resumed or
//! renewed manifest (or a new one), and the leftovers of a crash removed.

use std::path::Path;

use meal_data::Sample;

use super::sharing::{check_neighbours, lock_or_read_only, manifest_name};
use super::{leftovers, renew, shard_count, shard_file, StoreWriter, MANIFEST_EVERY};
use crate::manifest::{
    require_same_config, Manifest, State, StoreConfig, FORMAT_NAME, FORMAT_VERSION,
};
use crate::StoreError;

impl StoreWriter {
    /// Create the store in `dir`, or resume the partial one there. A store there with
    /// another config is refused, naming the keys that differ. `samples` are the
    /// dataset's samples (their count and hard labels); `worker` is `[i, n]` or `None`.
    pub fn open(
        dir: &Path,
        config: StoreConfig,
        samples: &[Sample],
        worker: Option<[u32; 2]>,
    ) -> Result<Self, StoreError> {
        if let Some([i, n]) = worker {
            if n == 0 || i >= n {
                return Err(StoreError::Param {
                    name: "worker",
                    reason: format!("{i}/{n} (expected I/N with I < N)"),
                });
            }
        }
        // refused before any file is written: a manifest with an impossible config
        // would block the corrected command
        config
            .check()
            .map_err(|(name, reason)| StoreError::Param { name, reason })?;
        if config.dataset.samples != samples.len() as u64 {
            return Err(StoreError::Param {
                name: "dataset",
                reason: "config fingerprint and samples disagree".into(),
            });
        }
        let hashes = renew::shard_hashes(samples, config.samples_per_shard);
        // the lock creates `dir` (and removes it again if this run writes nothing)
        let (locks, mut opening) = lock_or_read_only(dir, worker)?;
        let parts = check_neighbours(dir, &config, worker, &hashes)?;
        let name = manifest_name(worker);
        let path = dir.join(&name);
        let was_store = path.exists();
        if !was_store {
            let other = leftovers::foreign(dir);
            if !other.is_empty() {
                return Err(StoreError::Mismatch {
                    path: dir.to_path_buf(),
                    reason: format!(
                        "not empty, and no label store is there ({}): a new store needs an \
                         empty or new directory",
                        meal_data::error::first_few(&other, 5)
                    ),
                });
            }
        }
        let existing = match was_store {
            true => Some(Manifest::read_file(&path)?),
            false => None,
        };
        // a store (or a worker's part) that holds no shard yet (a run that failed on its
        // first batch, say on a bad image since fixed: the dataset's fingerprint changed)
        // has nothing to keep: a run of another config starts it over instead of being
        // refused with nothing to resume
        let existing = existing.filter(|m| {
            let diff = crate::manifest::config_diff(&m.config, &config);
            let fresh = m.shards.is_empty() && !diff.is_empty();
            if fresh {
                tracing::warn!(
                    "{}: no shard was written under its config; starting it over with this \
                     run's (differing keys: {})",
                    path.display(),
                    diff.join(", ")
                );
            }
            !fresh
        });
        if let Some(e) = existing.as_ref().and_then(|m| {
            crate::reader::edited_fingerprint(&path, &m.config.dataset, &config.dataset)
        }) {
            return Err(e);
        }
        // shards dropped as damaged: removed with the crash's leftovers, said once
        let mut dropped = Vec::new();
        let manifest = if let Some(mut m) = existing {
            let store = renew::store_of(&m, parts, worker);
            match renew::renewal(&m, &store, &config, &hashes) {
                renew::Renewal::Yes => {
                    dropped = renew::renew(&mut m, &config, &hashes, &path);
                    m.write(dir, &name)?;
                    if worker.is_some() && !dropped.is_empty() {
                        unmerge(dir)?;
                    }
                }
                r => {
                    if let Some(e) = r.refusal(dir) {
                        return Err(e);
                    }
                }
            }
            require_same_config(
                &path,
                &m.config,
                &config,
                "the store there was made with another config",
                ["store", "now"],
            )
            .map_err(|e| with_first_difference(e, dir, &m, &config, samples, &hashes))?;
            // its config is this run's: other workers may open theirs while the shards
            // are checked
            opening.take();
            // shards are deterministic: one that is missing, truncated or altered since
            // it was listed is dropped from the manifest and written again
            let before = m.shards.len();
            // in index order, as written (an edited manifest's order is not relied on:
            // the writer finds shards by binary search; a stable sort keeps a twice
            // listed shard's first entry first)
            m.shards.sort_by_key(|s| s.index);
            // an entry no writer makes (a shard listed twice, under another name, or
            // another worker's: an edited or damaged manifest) is dropped too, so the
            // store is not called complete while verify refuses it
            let format = m.config.format;
            let count = shard_count(samples.len(), m.config.samples_per_shard);
            let (i, n) = worker.map_or((0, 1), |[i, n]| (i, n));
            let mut seen = std::collections::HashSet::new();
            m.shards.retain(|s| {
                let ours = s.file == shard_file(s.index, format)
                    && s.index < count
                    && s.index % n == i
                    && seen.insert(s.index);
                if !ours {
                    tracing::warn!(
                        "{}: its entry for {} (shard {}) is not one this writer makes \
                         (listed twice, misnamed or another worker's); it will be recomputed",
                        path.display(),
                        s.file,
                        s.index
                    );
                    return false;
                }
                match s.check_written(dir, &m.config) {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::warn!("{e}; it will be recomputed");
                        dropped.push(s.file.clone());
                        false
                    }
                }
            });
            if m.shards.len() != before {
                m.state = State::Partial;
                m.summary = None;
                m.images_sha256 = None;
                m.write(dir, &name)?;
            }
            m
        } else {
            let m = Manifest {
                format: FORMAT_NAME.into(),
                format_version: FORMAT_VERSION,
                producer: format!("meal-v2-rs {}", env!("CARGO_PKG_VERSION")),
                config,
                worker,
                shards: Vec::new(),
                state: State::Partial,
                summary: None,
                images_sha256: None,
            };
            m.write(dir, &name)?;
            m
        };
        drop(opening);
        leftovers::remove(dir, worker, &name, was_store, &manifest, &dropped);
        // a complete store kept whole: finish() then has nothing to rewrite
        let complete = manifest.state == State::Complete;
        Ok(StoreWriter {
            complete,
            unlisted: 0,
            listed_at: std::time::Instant::now(),
            list_every: MANIFEST_EVERY,
            failed: false,
            dir: dir.to_path_buf(),
            manifest,
            manifest_name: name,
            labels: samples.iter().map(|s| s.label).collect(),
            paths: samples.iter().map(|s| s.path.clone()).collect(),
            hashes,
            hook: None,
            step: 0,
            _locks: locks,
        })
    }
}

/// `e` (a refusal of the store `m` in `dir` for `config`), with the first difference
/// between its images and the dataset's (`samples`, whose shard hashes are `hashes`)
/// named when only the dataset differs: from `images.parquet` for a complete store,
/// else the first written shard whose files or labels differ.
fn with_first_difference(
    e: StoreError,
    dir: &Path,
    m: &Manifest,
    config: &StoreConfig,
    samples: &[Sample],
    hashes: &[[String; 2]],
) -> StoreError {
    let StoreError::Mismatch { path, reason } = e else {
        return e;
    };
    // other class names where the store's image table records the run's: the manifest
    // was edited, not the data's classes renamed
    if m.config.classes != config.classes {
        let recorded = crate::images::read_with_classes(dir, m.images_sha256.as_deref())
            .ok()
            .and_then(|(_, c)| c);
        if let Some(e) = crate::reader::edited_classes(dir, m, recorded.as_deref()) {
            return e;
        }
        // a partial store has no table, but its dataset fingerprint hashes the class
        // names it was made with: the same fingerprint now, the names are the data's
        if recorded.is_none() && m.config.dataset == config.dataset {
            if let Some(e) = crate::reader::edited_classes_by(
                dir,
                m,
                Some(&config.classes),
                "its dataset fingerprint (config.dataset.sha256)",
            ) {
                return e;
            }
        }
    }
    let dataset_only = crate::manifest::config_diff(&m.config, config)
        .iter()
        .all(|k| k.starts_with("dataset.") || k == "classes");
    // (other class names are the first difference, which the reason names already)
    let renamed = m.config.classes != config.classes;
    let detail = match (dataset_only, m.images_sha256.is_some()) {
        (false, _) => None,
        _ if renamed => None,
        (true, true) => crate::reader::difference(dir, m, &config.classes, samples),
        (true, false) => m
            .shards
            .iter()
            .find(|s| {
                hashes
                    .get(s.index as usize)
                    .is_none_or(|h| s.listing_sha256.as_deref() != Some(h[0].as_str()))
            })
            .map(|s| {
                let now = |i: u32| samples.get(i as usize).map_or("none", |x| x.path.as_str());
                // every written shard's images of the sizes they had (in order), their
                // paths or labels other: most often the same files from another root (a
                // partial store keeps no paths to compare)
                let same_sizes = m.shards.iter().all(|s| {
                    hashes
                        .get(s.index as usize)
                        .is_some_and(|h| s.sizes_sha256.as_deref() == Some(h[1].as_str()))
                });
                format!(
                    "the first shard written whose files or labels differ is {} (samples \
                     {}..{}: now {} to {}){}",
                    s.file,
                    s.first_sample,
                    s.end_sample,
                    now(s.first_sample),
                    now(s.end_sample.saturating_sub(1)),
                    match same_sizes {
                        true =>
                            "; the written shards' images have the sizes they had, in \
                                 order: if these are the same files under another root (a \
                                 list file in a parent folder), give them from the same \
                                 root as before to keep the shards",
                        false => "",
                    }
                )
            }),
    };
    StoreError::Mismatch {
        path,
        reason: match detail {
            Some(d) => format!("{reason}. First difference: {d}"),
            None => reason,
        },
    }
}

/// Remove the store merged from the workers' parts in `dir` (its `manifest.json`), if
/// any, when a worker's rerun is to write some of its shards again: that manifest
/// lists their old checksums, so every reader would call the store damaged. The parts
/// stay; `merge` makes it again once every worker is done. Said in a warning.
fn unmerge(dir: &Path) -> Result<(), StoreError> {
    let merged = dir.join(crate::manifest::MANIFEST);
    if !merged.exists() {
        return Ok(());
    }
    std::fs::remove_file(&merged).map_err(|e| StoreError::io(&merged, e))?;
    meal_data::atomic::sync_dir(dir).map_err(|e| StoreError::io(dir, e))?;
    tracing::warn!(
        "{}: removed (the store merged from the workers' parts): this worker writes some \
         of its shards again; run merge once every worker's part is complete",
        merged.display()
    );
    Ok(())
}
