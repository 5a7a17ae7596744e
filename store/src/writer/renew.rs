//! A store continued after some of its images changed since their shards were written
//! (an unreadable image fixed after `--on-bad-file fail` stopped the run, a file
//! re-encoded): the dataset's fingerprint differs, so the store's config does, yet the
//! shards whose images are the same files of the same sizes still hold their labels.
//! Only where the files listed (paths, labels, count, classes) are the same: a store is
//! never taken over by another dataset of the same size.

use std::path::Path;

use meal_data::dataset::{listing_sha256, sizes_sha256};
use meal_data::Sample;

use super::{shard_count, State};
use crate::manifest::{config_diff, Manifest, StoreConfig};
use crate::StoreError;

/// Per shard of a store of `samples`, `per_shard` images each: the listing and sizes
/// hashes of its images, as its record keeps them.
pub(crate) fn shard_hashes(samples: &[Sample], per_shard: u32) -> Vec<[String; 2]> {
    let per = per_shard.max(1) as usize;
    (0..shard_count(samples.len(), per_shard) as usize)
        .map(|i| {
            let range = &samples[i * per..((i + 1) * per).min(samples.len())];
            [listing_sha256(range), sizes_sha256(range)]
        })
        .collect()
}

/// Whether a store's manifest `m` (a single run's, or one worker's part) may go on
/// under `config` though its dataset changed ([`Renewal`]): the configs differ in the
/// dataset's fingerprint only (the same count, classes and every other key), each shard
/// it holds lists the files `hashes` list for its range (only their sizes may differ),
/// and at most half of the shards of the whole store (`store`: every manifest of the
/// directory, its parts for workers) hold a changed image: a few files fixed, not
/// another copy of the data under the same names (a resized or re-encoded tree given by
/// mistake had every shard of the store recomputed). Counted over the store, not the
/// part: two fixed images in one worker's shards are a few of the store's. Stores of
/// earlier versions, without the hashes, may not.
pub(crate) fn renewal(
    m: &Manifest,
    store: &[Manifest],
    config: &StoreConfig,
    hashes: &[[String; 2]],
) -> Renewal {
    let listed = |m: &Manifest| {
        config_diff(&m.config, config) == ["dataset.sha256"]
            && m.shards.iter().all(|s| {
                s.sizes_sha256.is_some()
                    && hashes
                        .get(s.index as usize)
                        .is_some_and(|h| s.listing_sha256.as_deref() == Some(h[0].as_str()))
            })
    };
    if !listed(m) {
        return Renewal::No;
    }
    // (parts of the store already renewed count as they are now: unchanged)
    let of_store = store.iter().filter(|p| listed(p) || p.config == *config);
    // (out of the store's shards, written or not: a worker not yet started holds none,
    // and three fixed images of one part were "3 of the store's 5")
    let changed = of_store.map(|p| changed(p, hashes).len()).sum::<usize>();
    let total = hashes.len();
    // (a store of one or two shards, the demo's or a small one's, recomputes little
    // either way: one fixed image there was "1 of the store's 1 shards")
    match 2 * changed <= total || changed <= SMALL {
        true => Renewal::Yes,
        false => Renewal::TooMany { changed, total },
    }
}

/// Shards that may always be recomputed for images of another size, whatever the
/// store's size.
const SMALL: usize = 2;

/// Whether a store may be renewed ([`renewal`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Renewal {
    /// Not by its sizes: its config or files differ otherwise (refused as any change).
    No,
    /// Yes: its shards of unchanged images are kept.
    Yes,
    /// The same files listed, but `changed` of the store's `total` shards (written or
    /// not) hold images of another size: more than half, taken for another copy of the
    /// data.
    TooMany {
        /// Shards holding a changed image.
        changed: usize,
        /// Shards of the store.
        total: usize,
    },
}

impl Renewal {
    /// The refusal of the store in `dir` that [`Renewal::TooMany`] keeps from going on,
    /// or `None` (named by the store, whichever part met it).
    pub(crate) fn refusal(self, dir: &Path) -> Option<StoreError> {
        let Renewal::TooMany { changed, total } = self else {
            return None;
        };
        Some(StoreError::Mismatch {
            path: dir.to_path_buf(),
            reason: format!(
                "the dataset lists the same files, but {changed} of the store's {total} \
                 shards hold images whose size changed since: more than half, so this is \
                 taken for another copy of the data under the same names (resized or \
                 re-encoded), not a few files fixed; write the store in another directory \
                 (or remove this one to start over)"
            ),
        })
    }
}

/// The manifests of the store `m` (`worker`'s part, or a single run's) belongs to:
/// with the workers' `parts` the directory holds (as [`super::sharing::check_neighbours`]
/// read them), `m` in place of its own, for a worker; `m` alone otherwise.
pub(crate) fn store_of(
    m: &Manifest,
    parts: Vec<Manifest>,
    worker: Option<[u32; 2]>,
) -> Vec<Manifest> {
    if worker.is_none() {
        return vec![m.clone()];
    }
    let mut store: Vec<Manifest> = parts.into_iter().filter(|p| p.worker != m.worker).collect();
    store.push(m.clone());
    store
}

/// The files of `m`'s shards whose images' sizes are not those `hashes` give.
fn changed(m: &Manifest, hashes: &[[String; 2]]) -> Vec<String> {
    m.shards
        .iter()
        .filter(|s| {
            hashes
                .get(s.index as usize)
                .is_none_or(|h| s.sizes_sha256.as_deref() != Some(h[1].as_str()))
        })
        .map(|s| s.file.clone())
        .collect()
}

/// Take the store `m` (at `path`, [`renewal`]) over to `config`: the shards
/// whose images changed size are dropped (recomputed by this run; their files are
/// returned, for removal), the others kept. Said in a warning.
pub(super) fn renew(
    m: &mut Manifest,
    config: &StoreConfig,
    hashes: &[[String; 2]],
    path: &Path,
) -> Vec<String> {
    let dropped = changed(m, hashes);
    m.shards.retain(|s| !dropped.contains(&s.file));
    match dropped.is_empty() {
        // (the shards written list and size their images as now: the change is in the
        // images of shards not written yet, labelled as they are now)
        true => tracing::warn!(
            "{}: the dataset changed since it was written, in images of shards not written \
             yet (the same count and classes): its {} shards are kept, the others are \
             labelled as the images are now",
            path.display(),
            m.shards.len()
        ),
        false => tracing::warn!(
            "{}: images of the dataset changed size since it was written (fixed or \
             replaced; the same files listed): {} of its shards hold changed images and \
             will be recomputed, {} are kept",
            path.display(),
            dropped.len(),
            m.shards.len()
        ),
    }
    m.config = config.clone();
    m.state = State::Partial;
    m.summary = None;
    m.images_sha256 = None;
    dropped
}
