//! What a run reads: the training and validation sets (the validation set's classes
//! mapped to the student's logits) and the label store, each checked before the first
//! step.

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use meal_data::{Dataset, LinkPolicy};
use meal_store::LabelStore;

use crate::config::Settings;

/// Open the dataset at `p` (named by `flag` in errors), refusing an empty one.
pub fn open_dataset(p: &Path, flag: &str, follow_links: bool) -> Result<Arc<Dataset>> {
    let ds = meal_cli::open_dataset(p, flag, LinkPolicy::follow_if(follow_links))?;
    if ds.is_empty() {
        bail!("{flag} {}: no images", p.display());
    }
    Ok(Arc::new(ds))
}

/// Under `--on-bad-file fail`: every file of `ds` opens and starts as a JPEG or PNG
/// (its first bytes: a second per 50k files), so a missing, empty or foreign validation
/// file fails the run now, not at the end of its first epoch. A file damaged further in
/// still fails at its validation.
fn check_headers(ds: &Dataset) -> Result<()> {
    use std::io::Read;
    for sample in ds.samples() {
        let path = ds.full_path(sample);
        let mut head = [0u8; 8];
        let n = meal_data::files::open(&path)
            .and_then(|mut f| f.read(&mut head))
            .with_context(|| format!("{}", path.display()))?;
        if n == 0 {
            bail!(
                "{}: an empty file (--on-bad-file fail checks each file's first bytes before \
                 training)",
                path.display()
            );
        }
        if meal_data::decode::sniff(&head[..n]).is_none() {
            bail!(
                "{}: not a JPEG or PNG file (--on-bad-file fail checks each file's first \
                 bytes before training)",
                path.display()
            );
        }
    }
    Ok(())
}

/// The training set and the validation set, with the student's logit for each of the
/// validation set's classes where they are not the same list (a validation set of some
/// of the classes, scored by name as `eval` scores one).
#[allow(clippy::type_complexity)]
pub(super) fn open_datasets(
    s: &Settings,
) -> Result<(Arc<Dataset>, Option<Arc<Dataset>>, Option<Vec<usize>>)> {
    let ds = open_dataset(&s.data, "--data", s.follow_links)?;
    let Some(v) = &s.val else {
        return Ok((ds, None, None));
    };
    let vd = open_dataset(v, "--val", s.follow_links)?;
    // the student's logits are --data's classes in order: a --val of some of them, or
    // numbered (ImageNet's val as `path,65` beside wnid folders), is mapped as eval maps
    // a list to a student's weights
    let student = crate::eval::TrainedOn {
        classes: Some(ds.classes().to_vec()),
        res: None,
    };
    let logits = crate::eval::logit_of(&student, &vd, crate::eval::Logits::TrainingSet)
        .with_context(|| format!("--val {}", v.display()))?;
    if s.policy == meal_data::BadFilePolicy::Fail {
        check_headers(&vd).with_context(|| format!("--val {}", v.display()))?;
    }
    Ok((ds, Some(vd), logits))
}

/// The label store of `--labels`, checked to label `ds`, with the ids of the samples it
/// labels (from its checked image table).
pub(super) fn open_store(
    s: &Settings,
    ds: &Dataset,
) -> Result<Option<(Arc<LabelStore>, Vec<u32>)>> {
    let Some(l) = &s.labels else {
        return Ok(None);
    };
    let st = LabelStore::open(l).with_context(|| format!("--labels {}", l.display()))?;
    // the image table the usable images come from, checked first (cheap): an edited
    // manifest's class names are named as such, not as another dataset's (a store
    // written before its checksum was recorded is cross-checked with the shards)
    let usable: Vec<u32> = st
        .verify_images()
        .with_context(|| format!("--labels {}", l.display()))?
        .iter()
        .map(|i| i.sample_id)
        .collect();
    st.check_dataset(ds.fingerprint(), ds.classes(), ds.samples())
        .with_context(|| format!("--labels {} with --data {}", l.display(), s.data.display()))?;
    let pool = st.manifest().config.crop_pool.crops_per_image;
    if s.crops_per_image > pool {
        tracing::warn!(
            "--crops-per-image {} is more than the {pool} crops per image of --labels {}: \
             each step holds repeats of the same crops (the pool cycles)",
            s.crops_per_image,
            l.display()
        );
    }
    // a shard changed in place (same size) would replay wrong crops or labels silently:
    // every shard is hashed once per run (seconds per GB, against a training's hours)
    let t0 = std::time::Instant::now();
    st.verify_checksums(s.threads)
        .with_context(|| format!("--labels {}", l.display()))?;
    // the images precompute could not read are bad files too: `fail` stops here, as it
    // stops at one found while training (they were warned of and left out)
    if s.policy == meal_data::BadFilePolicy::Fail && usable.len() < ds.len() {
        let skipped: Vec<&meal_data::Skipped> = st
            .manifest()
            .shards
            .iter()
            .flat_map(|sh| &sh.skipped)
            .collect();
        let first = skipped
            .first()
            .map(|k| format!(", first {}: {}", k.path, k.reason))
            .unwrap_or_default();
        bail!(
            "--on-bad-file fail: {} images of --data have no labels in --labels {} (unreadable \
             when it was made{first})",
            ds.len() - usable.len(),
            l.display()
        );
    }
    tracing::info!(
        "--labels {}: {} shards' checksums match ({:.1} s)",
        l.display(),
        st.manifest().shards.len(),
        t0.elapsed().as_secs_f64()
    );
    Ok(Some((Arc::new(st), usable)))
}
