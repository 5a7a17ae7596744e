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

/// Whether the store `m` may go on under `config` though its dataset changed: the
/// configs differ in the dataset's fingerprint only (the same count, classes and every
/// other key), each shard it holds lists the files `hashes` list for its range (only
/// their sizes may differ), and at most half of its shards hold a changed image: a few
/// files fixed, not another copy of the data under the same names (a resized or
/// re-encoded tree given by mistake had every shard of the store recomputed). Stores of
/// earlier versions, without the hashes, may not.
pub(crate) fn only_sizes_changed(
    m: &Manifest,
    config: &StoreConfig,
    hashes: &[[String; 2]],
) -> bool {
    let listed = config_diff(&m.config, config) == ["dataset.sha256"]
        && m.shards.iter().all(|s| {
            s.sizes_sha256.is_some()
                && hashes
                    .get(s.index as usize)
                    .is_some_and(|h| s.listing_sha256.as_deref() == Some(h[0].as_str()))
        });
    listed && 2 * changed(m, hashes).len() <= m.shards.len()
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

/// Take the store `m` (at `path`, [`only_sizes_changed`]) over to `config`: the shards
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
    tracing::warn!(
        "{}: images of the dataset changed size since it was written (fixed or replaced; \
         the same files listed): {} of its shards hold changed images and will be \
         recomputed, {} are kept",
        path.display(),
        dropped.len(),
        m.shards.len()
    );
    m.config = config.clone();
    m.state = State::Partial;
    m.summary = None;
    m.images_sha256 = None;
    dropped
}
