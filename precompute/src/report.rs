//! What a precompute run reports (`report.json` next to the store): the store's totals
//! from the manifest, this run's own figures, and the low-precision labels' distance
//! from f32 labels of the same crops.

use std::path::Path;

use anyhow::{Context, Result};
use meal_data::Skipped;
use meal_store::{top1, Manifest};
use serde::{Deserialize, Serialize};

/// Per-teacher agreement with the hard labels.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TeacherReport {
    /// Preset name.
    pub arch: String,
    /// Weights file.
    pub weights: String,
    /// Fraction of the store's crops whose top-1 is the image's hard label (`None` for a
    /// store whose older shards do not record it).
    pub top1_agreement: Option<f64>,
}

/// What the store holds after a run, and what this run did. The store-wide figures are
/// summed from the manifest's per-shard records, so a resumed, rerun or worker store
/// reports every shard (and every skipped file), not just the last invocation's.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunReport {
    /// Images with labels in the store (this worker's part for a worker).
    pub images: u64,
    /// Crops labelled in the store.
    pub crops: u64,
    /// Shards in the store.
    pub shards: u32,
    /// The store's classes (absent in older reports: 0).
    #[serde(default)]
    pub classes: usize,
    /// Images left out of the store as unreadable, with reasons.
    pub skipped: Vec<Skipped>,
    /// Per teacher, over the store.
    pub teachers: Vec<TeacherReport>,
    /// The ensemble's top-1 agreement with the hard labels over the store's crops.
    pub ensemble_top1_agreement: f64,
    /// Mean entropy (nats) of the ensemble's distributions over the store's crops.
    pub mean_entropy: f64,
    /// Whether this writer's part is complete.
    pub complete: bool,
    /// Images labelled by this run and kept in the store (an interrupted run's
    /// half-filled shard is not: it is recomputed on resume).
    pub images_labelled: u64,
    /// Crops labelled by this run and kept in the store.
    pub crops_labelled: u64,
    /// Shards written by this run.
    pub shards_written: u32,
    /// Shards already present when this run started (resume).
    pub shards_present: u32,
    /// This run's wall time in seconds.
    pub seconds: f64,
    /// Of it, the labelling loop's (waiting for decoded batches, the copy to the device,
    /// the teachers, shard writes), without set-up (opening the data, loading teachers)
    /// and without the dtype check's f32 pass: `crops_labelled / labelling_seconds`
    /// compares with the teachers' pure inference speed. With several devices, the
    /// longest part's.
    pub labelling_seconds: f64,
    /// Bytes of shards written by this run.
    pub bytes_written: u64,
    /// The dtype the teachers ran in.
    pub dtype: String,
    /// With a dtype other than f32: this run's first batch labelled again in f32, compared.
    pub dtype_check: Option<DtypeCheck>,
}

impl RunReport {
    /// The teachers whose top-1 agrees with the hard labels near chance, under twice
    /// 1/C, over enough crops (20 a class, from 10 classes: with fewer, twice chance is
    /// a fair teacher's agreement): weights of other classes, or of these in another
    /// order taken by index (weights from elsewhere record no classes).
    pub fn near_chance(&self) -> impl Iterator<Item = &TeacherReport> {
        let c = self.classes;
        let enough = c >= 10 && self.crops >= 20 * c as u64;
        self.teachers
            .iter()
            .filter(move |t| enough && t.top1_agreement.is_some_and(|a| a < 2.0 / c as f64))
    }
}

/// How far labels made in a lower precision are from f32 labels of the same crops.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DtypeCheck {
    /// Crops compared (the run's first batch).
    pub crops: usize,
    /// Largest absolute difference of an ensemble probability.
    pub max_abs_diff: f64,
    /// Mean over crops of the total variation distance (half the L1 distance).
    pub mean_tv: f64,
    /// Fraction of crops whose ensemble top-1 class is the same.
    pub top1_agreement: f64,
}

/// Compare labels `low` (rows x classes) with the f32 labels `f32s` of the same crops.
pub fn compare_labels(low: &[f32], f32s: &[f32], classes: usize) -> DtypeCheck {
    let rows = low.len() / classes.max(1);
    let (mut max, mut tv, mut agree) = (0f64, 0f64, 0usize);
    for (a, b) in low.chunks_exact(classes).zip(f32s.chunks_exact(classes)) {
        let mut l1 = 0f64;
        for (x, y) in a.iter().zip(b) {
            let d = (*x as f64 - *y as f64).abs();
            max = max.max(d);
            l1 += d;
        }
        tv += l1 / 2.0;
        agree += (top1(a) == top1(b)) as usize;
    }
    DtypeCheck {
        crops: rows,
        max_abs_diff: max,
        mean_tv: tv / rows.max(1) as f64,
        top1_agreement: agree as f64 / rows.max(1) as f64,
    }
}

/// The store-wide part of a [`RunReport`], from the manifest's per-shard records (the
/// run's own fields zero).
pub fn store_report(m: &Manifest, complete: bool) -> RunReport {
    let totals = meal_store::summary(m);
    let teachers = &m.config.teachers;
    let per_teacher = (totals.teacher_top1_agreement.len() == teachers.len()
        && m.shards
            .iter()
            .all(|s| s.stats.rows == 0 || s.stats.teacher_top1_agree.len() == teachers.len()))
    .then_some(&totals.teacher_top1_agreement);
    RunReport {
        images: totals.images,
        crops: totals.rows,
        shards: m.shards.len() as u32,
        classes: m.config.classes.len(),
        skipped: m.shards.iter().flat_map(|s| s.skipped.clone()).collect(),
        teachers: teachers
            .iter()
            .enumerate()
            .map(|(i, t)| TeacherReport {
                arch: t.arch.clone(),
                weights: t.weights.clone(),
                top1_agreement: per_teacher.map(|v| v[i]),
            })
            .collect(),
        ensemble_top1_agreement: totals.top1_agreement,
        mean_entropy: totals.mean_entropy,
        complete,
        images_labelled: 0,
        crops_labelled: 0,
        shards_written: 0,
        shards_present: 0,
        seconds: 0.0,
        labelling_seconds: 0.0,
        bytes_written: 0,
        dtype: String::new(),
        dtype_check: None,
    }
}

/// `store` (a store's figures, [`store_report`]) with the run figures of the workers'
/// `parts` that wrote it: counts and bytes summed, times the longest part's (parts run
/// side by side), the dtype and its check the first part's that has one.
pub fn combine(mut store: RunReport, parts: &[RunReport]) -> RunReport {
    store.images_labelled = parts.iter().map(|r| r.images_labelled).sum();
    store.crops_labelled = parts.iter().map(|r| r.crops_labelled).sum();
    store.shards_written = parts.iter().map(|r| r.shards_written).sum();
    store.shards_present = parts.iter().map(|r| r.shards_present).sum();
    store.bytes_written = parts.iter().map(|r| r.bytes_written).sum();
    store.seconds = parts.iter().map(|r| r.seconds).fold(0.0, f64::max);
    store.labelling_seconds = parts
        .iter()
        .map(|r| r.labelling_seconds)
        .fold(0.0, f64::max);
    if let Some(p) = parts.iter().find(|r| !r.dtype.is_empty()) {
        store.dtype = p.dtype.clone();
    }
    store.dtype_check = parts.iter().find_map(|r| r.dtype_check.clone());
    store
}

/// The reports of the workers' parts in `out` (`report.worker-I-of-N.json`), in name
/// order; one that cannot be read is warned of and left out (a report is no part of the
/// store).
pub fn worker_reports(out: &Path) -> Vec<RunReport> {
    let mut names: Vec<String> = std::fs::read_dir(out)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with("report.worker-") && n.ends_with(".json"))
        .collect();
    names.sort();
    names
        .iter()
        .filter_map(|n| {
            let p = out.join(n);
            let r = meal_data::files::read(&p)
                .map_err(anyhow::Error::from)
                .and_then(|b| Ok(serde_json::from_slice::<RunReport>(&b)?));
            r.map_err(|e| tracing::warn!("{}: not read ({e:#})", p.display()))
                .ok()
        })
        .collect()
}

/// Write `report` next to the store (`report.json`, or `report.worker-I-of-N.json`). A
/// run that wrote no shard leaves an existing report of the same store as it is (the
/// same state, shards, images, crops and teachers): a rerun of a complete store would
/// replace the figures of the run that made it (its time, its bytes) with zeros.
pub fn write_report(out: &Path, worker: Option<[u32; 2]>, report: &RunReport) -> Result<()> {
    let name = match worker {
        None => "report.json".to_string(),
        Some([i, n]) => format!("report.worker-{i}-of-{n}.json"),
    };
    let path = out.join(name);
    if report.shards_written == 0 && describes_the_same_store(&path, report) {
        tracing::debug!("{}: kept (this run wrote no shard)", path.display());
        return Ok(());
    }
    let bytes = serde_json::to_vec_pretty(report)?;
    // (a second merge of the same parts: the same report, left as it is)
    if meal_data::files::read(&path).is_ok_and(|old| old == bytes) {
        return Ok(());
    }
    match meal_data::atomic::write(&path, &bytes) {
        // a rerun that wrote nothing over a finished store on a read-only or full mount
        // (which it read without the lock): the store is whole, only the summary is not
        // refreshed (a store merged by an earlier version has no report to keep)
        Err(e)
            if report.shards_written == 0
                && report.complete
                && matches!(
                    e.kind(),
                    std::io::ErrorKind::ReadOnlyFilesystem | std::io::ErrorKind::StorageFull
                ) =>
        {
            tracing::warn!("{}: not written ({e})", path.display());
            Ok(())
        }
        r => r.with_context(|| format!("writing {}", path.display())),
    }
}

/// Whether the report at `path` gives the store-wide figures of `report` (an unreadable
/// or older one does not).
fn describes_the_same_store(path: &Path, report: &RunReport) -> bool {
    let (Ok(old), Ok(new)) = (
        meal_data::files::read(path)
            .map_err(anyhow::Error::from)
            .and_then(|b| Ok(serde_json::from_slice::<serde_json::Value>(&b)?)),
        serde_json::to_value(report),
    ) else {
        return false;
    };
    [
        "complete", "shards", "images", "crops", "teachers", "skipped",
    ]
    .iter()
    .all(|k| old.get(k).is_some() && old.get(k) == new.get(k))
}
