//! Top-1 / top-5 with the eval transform (resize to `S / 0.875`, centre crop S), of one
//! model or of an ensemble (mean softmax, each member at its own input config).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use meal_data::{BadFilePolicy, Batch, CropMode, CropSpec, Dataset, Loader, LoaderConfig};
use meal_models::ensemble::{Crops, Ensemble};
use meal_models::{ClassOrder, ResNet};
use serde::{Deserialize, Serialize};

/// Images per eval batch.
pub const EVAL_BATCH: usize = 64;

/// Accuracy on a dataset.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Accuracy {
    /// Images evaluated.
    pub images: u64,
    /// Top-1 accuracy.
    pub top1: f64,
    /// Top-5 accuracy (top-k with k = min(5, classes)).
    pub top5: f64,
    /// Images of the dataset left out as unreadable (not in `images`, nor in the
    /// accuracies' denominator): a script reading `--json` can tell a partial count.
    #[serde(default)]
    pub skipped: u64,
}

/// How an evaluation reads its images.
#[derive(Clone, Copy, Debug)]
pub struct EvalRead {
    /// Decode threads.
    pub threads: usize,
    /// Unreadable images: skipped (not counted) or an error naming the file.
    pub policy: BadFilePolicy,
    /// A progress bar over the images (the `eval` command's; a training's validation
    /// runs under its own epoch's line).
    pub bar: bool,
    /// Images a forward pass takes ([`EVAL_BATCH`] unless the command asks otherwise).
    pub batch: usize,
}

/// Run `scores` (rows x classes, row-major) over `ds` at `specs` and count hits; None
/// when `stop` is set before the last batch (the count is left unfinished).
fn eval_loop(
    ds: &Arc<Dataset>,
    specs: &[CropSpec],
    classes: usize,
    logit_of: Option<&[usize]>,
    read: EvalRead,
    stop: &AtomicBool,
    mut scores: impl FnMut(&Batch) -> Result<Vec<f32>>,
) -> Result<Option<Accuracy>> {
    if logit_of.is_none() && ds.classes().len() != classes {
        bail!(
            "{}: {} classes, the model has {classes}",
            ds.source().display(),
            ds.classes().len()
        );
    }
    if let Some(m) = logit_of {
        check_map(m, classes, ds)?;
    }
    let loader = Loader::new(
        Arc::clone(ds),
        (0..ds.len() as u32).collect(),
        LoaderConfig {
            images_per_batch: read.batch.max(1),
            spec: specs[0],
            extra_specs: specs[1..].to_vec(),
            crops: CropMode::Eval,
            prefetch: 2,
            threads: read.threads,
            policy: read.policy,
            drop_last: false,
            pixels: meal_data::PixelFormat::Levels,
        },
    )?;
    let k = 5.min(classes);
    let (mut n, mut c1, mut c5) = (0u64, 0u64, 0u64);
    let bar = read.bar.then(|| {
        meal_cli::progress_bar(
            ds.len() as u64,
            "eval [{bar:30}] {pos}/{len} images  {per_sec}  {elapsed} (eta {eta})",
        )
    });
    for b in loader {
        if stop.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let b = b.with_context(|| format!("evaluating on {}", ds.source().display()))?;
        if let Some(bar) = &bar {
            bar.inc(b.rows.len() as u64);
        }
        if b.is_empty() {
            continue;
        }
        let s = scores(&b)?;
        for (r, l) in b.rows.iter().zip(s.chunks_exact(classes)) {
            // a NaN compares false with everything: counted as it is, a broken model
            // (one NaN weight) would score 100%
            if l.iter().any(|v| !v.is_finite()) {
                bail!(
                    "the model's scores for {} are not finite (NaN or infinite): its weights \
                     or inputs hold non-finite values",
                    ds.samples()[r.sample_id as usize].path
                );
            }
            // (the dataset's class, as the model's logit where they are numbered apart)
            let label = match logit_of {
                Some(m) => m[r.label as usize],
                None => r.label as usize,
            };
            let rank = rank_of(l, label);
            c1 += (rank == 0) as u64;
            c5 += (rank < k) as u64;
            n += 1;
        }
    }
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    if n == 0 {
        bail!(
            "{}: no image could be read (every file was skipped as unreadable)",
            ds.source().display()
        );
    }
    let d = n as f64;
    Ok(Some(Accuracy {
        images: n,
        top1: c1 as f64 / d,
        top5: c5 as f64 / d,
        skipped: ds.len() as u64 - n,
    }))
}

/// What a finished loop gives: it has no stop to heed.
fn finished(a: Option<Accuracy>) -> Result<Accuracy> {
    a.context("evaluation stopped")
}

/// The label's place in the classes ordered by score, ties going to the lower class
/// index (the first maximum, as argmax picks it): a model
/// scoring every class alike ranks the label at its index, not first.
fn rank_of(scores: &[f32], label: usize) -> usize {
    let target = scores[label];
    scores
        .iter()
        .enumerate()
        .filter(|&(j, &v)| v > target || (v == target && j < label))
        .count()
}

/// Evaluate `model` on `ds` at `spec`; with `logit_of`, the dataset's class `i` is
/// scored as the model's logit `logit_of[i]`: a validation set of some of the classes
/// the model was trained on, named as they were (the model's classes from its
/// weights' metadata, [`TrainedOn`]).
pub fn evaluate(
    model: &ResNet,
    ds: &Arc<Dataset>,
    spec: CropSpec,
    read: EvalRead,
    device: &Device,
    logit_of: Option<&[usize]>,
) -> Result<Accuracy> {
    let never = AtomicBool::new(false);
    finished(evaluate_until(
        model, ds, spec, read, device, &never, logit_of,
    )?)
}

/// [`evaluate`], given up (None) once `stop`
/// is set: a training's validation must not hold a stop signal for a whole pass (a
/// scheduler's grace period is seconds).
pub fn evaluate_until(
    model: &ResNet,
    ds: &Arc<Dataset>,
    spec: CropSpec,
    read: EvalRead,
    device: &Device,
    stop: &AtomicBool,
    logit_of: Option<&[usize]>,
) -> Result<Option<Accuracy>> {
    let classes = model.config().num_classes;
    eval_loop(ds, &[spec], classes, logit_of, read, stop, |b| {
        let x = Crops::of_batch(b)[0].tensor(0..b.rows.len(), &spec, DType::F32, device)?;
        let logits = model.forward_t(&x, false)?.to_device(&Device::Cpu)?;
        Ok(logits.flatten_all()?.to_vec1::<f32>()?)
    })
}

/// Refuse a class map that does not give each of `ds`'s classes one of `classes` logits
/// (a caller's error: the loop would index past the logits).
fn check_map(logit_of: &[usize], classes: usize, ds: &Dataset) -> Result<()> {
    if logit_of.len() != ds.classes().len() || logit_of.iter().any(|&l| l >= classes) {
        bail!(
            "a class map of {} entries into {classes} logits for {} classes",
            logit_of.len(),
            ds.classes().len()
        );
    }
    Ok(())
}

pub use meal_models::TrainedOn;

/// Whose logits a class map goes into, for its messages.
#[derive(Clone, Copy, Debug)]
pub enum Logits {
    /// A weights file's (eval's `--weights`, `--teacher`).
    Weights,
    /// The student's being trained: the training set's classes, in order (its `--val`).
    TrainingSet,
}

impl Logits {
    fn among(self) -> &'static str {
        match self {
            Logits::Weights => "the weights were trained on",
            Logits::TrainingSet => "--data has",
        }
    }
    fn short(self) -> &'static str {
        match self {
            Logits::Weights => "the model",
            Logits::TrainingSet => "--data",
        }
    }
    /// Who names the classes by number (the weights' record, or `--data`'s list).
    fn short_record(self) -> &'static str {
        match self {
            Logits::Weights => "the weights record",
            Logits::TrainingSet => "--data names",
        }
    }
    fn count(self, n: usize) -> String {
        match self {
            Logits::Weights => format!("the weights have {n} logits"),
            Logits::TrainingSet => format!("--data has {n} classes"),
        }
    }
}

/// The model's logit for each of `data`'s classes, where they are not the same list
/// ([`meal_models::ClassOrder`], the rule every loader follows): by name (a validation
/// set of some of the classes), or by number for a list whose labels are the logits'
/// indices (`0`, `1`, ...). An error names the classes the model was not trained on:
/// their accuracy would be counted against other logits.
pub fn logit_of(trained: &TrainedOn, ds: &Dataset, whose: Logits) -> Result<Option<Vec<usize>>> {
    let Some(names) = &trained.classes else {
        return Ok(None);
    };
    let data = ds.classes();
    let numbered = |c: &[String]| c.iter().all(|c| c.parse::<usize>().is_ok());
    match trained.order_of(data) {
        ClassOrder::Same => Ok(None),
        ClassOrder::Permuted(rows) | ClassOrder::Subset { rows, .. } => {
            // (a numbered list against named logits: its labels are their indices)
            if numbered(names) && !numbered(data) {
                tracing::info!(
                    "the logits' classes are numbered (0 to {}): the data's class i is the \
                     logit numbered i",
                    names.len() - 1
                );
            } else if !numbered(data) || numbered(names) {
                tracing::info!(
                    "{} classes of the {} {}: scored by name",
                    data.len(),
                    names.len(),
                    whose.among()
                );
            }
            Ok(Some(rows))
        }
        ClassOrder::Other(unknown) if numbered(data) => {
            let labels: Vec<usize> = data.iter().filter_map(|c| c.parse().ok()).collect();
            let high = labels.iter().copied().max().unwrap_or(0);
            let n = names.len();
            if high < n {
                bail!(
                    "its labels are numbers, and {} name the same logit ({}): one label a class",
                    unknown.len(),
                    meal_data::error::first_few(&unknown, 5)
                );
            }
            // (one past the last logit: a list counted from 1, whose loader left class
            // 0 empty)
            let why = match high == n {
                true => "a numbered list counts from 0".to_string(),
                false => format!("the list numbers more classes than {} has", whose.short()),
            };
            bail!(
                "its labels are numbers, up to {high}, and {} (0 to {}): {why}",
                whose.count(n),
                n.saturating_sub(1)
            )
        }
        ClassOrder::Other(unknown) => {
            // a folder of no image (a stray `.ipynb_checkpoints`) is a class all the
            // same, and not one to rename
            let counts = ds.class_counts();
            let empty: Vec<&String> = unknown
                .iter()
                .filter(|u| {
                    data.iter()
                        .position(|c| c == *u)
                        .is_some_and(|i| counts[i] == 0)
                })
                .collect();
            let advice = match empty.len() {
                // (named classes against numbered logits are taken by index only when
                // they are as many: a subset has no index to take)
                0 if numbered(names) => format!(
                    "{} its classes by number (0 to {}): give the data as a list file \
                     labelled by those numbers",
                    whose.short_record(),
                    names.len() - 1
                ),
                0 => "name them as the training set's folders were named".to_string(),
                n if n == unknown.len() => {
                    "they hold no image (a stray folder, as .ipynb_checkpoints): remove them"
                        .to_string()
                }
                _ => format!(
                    "name them as the training set's folders were named; {} hold no image \
                     (a stray folder, as .ipynb_checkpoints): remove those",
                    meal_data::error::first_few(&empty, 5)
                ),
            };
            bail!(
                "{} of its {} classes are not among the {} {} ({}): {advice}",
                unknown.len(),
                data.len(),
                names.len(),
                whose.among(),
                meal_data::error::first_few(&unknown, 5)
            )
        }
    }
}

/// Evaluate the mean softmax of an ensemble, each member at its own spec, its outputs
/// the dataset's classes in order (teachers of more classes loaded for the dataset's:
/// each one's softmax over those logits, as the labels of a store).
pub fn evaluate_ensemble(ens: &Ensemble, ds: &Arc<Dataset>, read: EvalRead) -> Result<Accuracy> {
    let never = AtomicBool::new(false);
    let batch = read.batch.max(1);
    finished(eval_loop(
        ds,
        ens.specs(),
        ens.num_classes(),
        None,
        read,
        &never,
        |b| {
            let inputs = Crops::of_batch(b);
            Ok(ens.soft_labels(&inputs, b.rows.len(), batch)?.probs)
        },
    )?)
}

#[cfg(test)]
mod tests {
    use super::rank_of;

    /// Ties go to the lower class index, as argmax picks the first maximum: a model
    /// scoring every class alike is right only for class 0, not for every label.
    #[test]
    fn ties_rank_by_class_index() {
        let flat = [0.5f32; 4];
        assert_eq!(
            (0..4).map(|l| rank_of(&flat, l)).collect::<Vec<_>>(),
            [0, 1, 2, 3]
        );
        let s = [0.1f32, 0.7, 0.7, 0.2];
        assert_eq!(rank_of(&s, 1), 0);
        assert_eq!(rank_of(&s, 2), 1);
        assert_eq!(rank_of(&s, 3), 2);
        assert_eq!(rank_of(&s, 0), 3);
    }
}
