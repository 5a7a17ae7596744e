//! What a crash leaves in a store directory, and which of it a writer may remove.

use std::collections::HashSet;
use std::fs;
use std::path::Path;

use crate::manifest::Manifest;

/// Removes the leftovers of a crash from `dir`, in one pass over it, for the writer
/// `worker` whose manifest `name` lists `manifest`'s shards (`was_store`: that manifest
/// was there before this run). Inside a write: temporary files are never read. Only
/// this writer's own: another worker sharing the directory may be writing its files at
/// this very moment. Between a shard's rename and its manifest's write: the shard is
/// unlisted; a resume writes it again, but a store started over under another config
/// may never (another shard size): this writer's unlisted shards go, in a directory
/// that held its manifest only (same-named files of another tool elsewhere stay).
/// `dropped`: shards just dropped from the manifest as damaged (already warned about).
pub(super) fn remove(
    dir: &Path,
    worker: Option<[u32; 2]>,
    name: &str,
    was_store: bool,
    manifest: &Manifest,
    dropped: &[String],
) {
    let listed: HashSet<&str> = manifest.shards.iter().map(|s| s.file.as_str()).collect();
    let mut removed = Vec::new();
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        let file = e.file_name().to_string_lossy().to_string();
        if owns_tmp(&file, worker, name) {
            let _ = fs::remove_file(e.path());
        } else if was_store
            && owned_shard(&file, worker).is_some()
            && !listed.contains(file.as_str())
            && fs::remove_file(e.path()).is_ok()
            && !dropped.contains(&file)
        {
            removed.push(file);
        }
    }
    // said once (a crash leaves up to a second's shards unlisted: 90 lines of one each)
    if !removed.is_empty() {
        removed.sort();
        tracing::warn!(
            "{}: {} shard files not in {name} (left by a crash or a failed write, or copied \
             in) removed: {}",
            dir.display(),
            removed.len(),
            meal_data::error::first_few(&removed, 5)
        );
    }
}

/// The entries of `dir` (sorted) that neither a store nor a crash of its
/// writer left, when `dir` holds no manifest (its own or a worker's): a new store there
/// would overwrite or remove them (a user's `report.json` was replaced and a
/// `manifest.json.tmp` removed). Lock files and our `.NAME.tmp` temporaries are a
/// writer's; a bare `NAME.tmp` is not.
pub(super) fn foreign(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    if names.iter().any(|n| is_manifest(n)) {
        return Vec::new();
    }
    names.retain(|n| !(n.starts_with(".lock") || tmp_of(n).is_some_and(is_ours)));
    names.sort();
    names
}

/// The file a hidden temporary stands for: `.NAME.tmp` (the store's own writes,
/// manifest::write_atomic) or `.NAME.meal-tmp` (`meal_data::atomic::write`'s, as the run
/// report's) give `NAME`; `None` for other names. A bare `NAME.tmp` is a user's (a
/// backup `manifest.json.tmp` was removed), never ours: only versions before the hidden
/// names wrote it, and the crash that left one lost nothing a resume does not write again.
fn tmp_of(name: &str) -> Option<&str> {
    let name = name.strip_prefix('.')?;
    name.strip_suffix(".tmp")
        .or_else(|| name.strip_suffix(".meal-tmp"))
}

/// Whether `name` is a store's manifest or a worker's (`manifest.json`,
/// `manifest.worker-I-of-N.json`): a user's `manifest-webapp.json` is not.
fn is_manifest(name: &str) -> bool {
    name == crate::manifest::MANIFEST
        || name
            .strip_prefix("manifest.worker-")
            .and_then(|r| r.strip_suffix(".json"))
            .and_then(|r| r.split_once("-of-"))
            .is_some_and(|(i, n)| i.parse::<u32>().is_ok() && n.parse::<u32>().is_ok())
}

/// Whether `name` (a temporary's, less its dot and suffix) is a file a store's writers
/// make: a manifest, a shard, the image table, a report. Only such temporaries are a
/// writer's to remove (a user's `.draft.tmp` was removed).
fn is_ours(name: &str) -> bool {
    is_manifest(name)
        || owned_shard(name, None).is_some()
        || name == "images.parquet"
        || (name.starts_with("report") && name.ends_with(".json"))
}

/// Whether `file` is a temporary file (`.NAME.tmp`, manifest::write_atomic) of the writer
/// `worker` whose manifest is `manifest`: its manifest, one of its shards, or for a
/// single writer any file a store's writers make.
fn owns_tmp(file: &str, worker: Option<[u32; 2]>, manifest: &str) -> bool {
    let Some(inner) = tmp_of(file) else {
        return false;
    };
    let Some([i, n]) = worker else {
        return is_ours(inner);
    };
    if inner == manifest {
        return true;
    }
    inner
        .strip_prefix("shard-")
        .and_then(|r| r.split('.').next())
        .and_then(|idx| idx.parse::<u32>().ok())
        .is_some_and(|idx| idx % n == i)
}

/// Whether `file` is a name a store's writer gives a shard (`shard-NNNNNN.parquet` or
/// `.safetensors`, six digits): an unlisted one in a store is removed by a rerun as a
/// crash's leftover; other `shard-*` names are left alone.
pub fn is_shard_name(file: &str) -> bool {
    owned_shard(file, None).is_some()
}

/// The index of a shard file's name (`shard-NNNNNN.parquet` or `.safetensors`) that
/// `worker` writes (all for a single writer); None for any other name.
fn owned_shard(file: &str, worker: Option<[u32; 2]>) -> Option<u32> {
    let stem = file
        .strip_suffix(".parquet")
        .or_else(|| file.strip_suffix(".safetensors"))?;
    let digits = stem.strip_prefix("shard-")?;
    if digits.len() != 6 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let idx: u32 = digits.parse().ok()?;
    match worker {
        Some([i, n]) if idx % n != i => None,
        _ => Some(idx),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::MANIFEST;
    use crate::writer::sharing::manifest_name;

    #[test]
    fn a_writer_removes_only_its_own_temporary_files() {
        let w1 = Some([1, 2]);
        let m1 = manifest_name(w1);
        // worker 1 of 2 owns odd shards and its manifest
        assert!(owns_tmp(".shard-000003.parquet.tmp", w1, &m1));
        assert!(owns_tmp(&format!(".{m1}.tmp"), w1, &m1));
        // worker 0's files, in flight while worker 1 opens, are left alone
        assert!(!owns_tmp(".shard-000002.parquet.tmp", w1, &m1));
        assert!(!owns_tmp(
            &format!(".{}.tmp", manifest_name(Some([0, 2]))),
            w1,
            &m1
        ));
        assert!(!owns_tmp(".images.parquet.tmp", w1, &m1));
        // a bare `NAME.tmp` is a user's backup, whoever's shard it names
        assert!(!owns_tmp("shard-000003.parquet.tmp", w1, &m1));
        assert!(!owns_tmp("shard-000002.parquet.tmp", w1, &m1));
        assert!(!owns_tmp("manifest.json.tmp", None, MANIFEST));
        assert!(!owns_tmp("images.parquet.tmp", None, MANIFEST));
        assert!(!owns_tmp("report.json.tmp", None, MANIFEST));
        // not temporary files at all
        assert!(!owns_tmp("shard-000003.parquet", w1, &m1));
        // a single writer owns every temporary file
        assert!(owns_tmp(".images.parquet.tmp", None, MANIFEST));
        // the run report's temporary (meal_data::atomic::write)
        assert!(owns_tmp(".report.json.meal-tmp", None, MANIFEST));
        assert!(!owns_tmp("notes.txt.meal-tmp", None, MANIFEST));
        assert!(owns_tmp(".shard-000002.parquet.tmp", None, MANIFEST));
    }
}
