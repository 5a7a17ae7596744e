//! Top-1 / top-5 with the eval transform (resize to `S / 0.875`, centre crop S).

use std::sync::Arc;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use meal_common::models::ResNet;
use meal_data::{BadFilePolicy, CropMode, CropSpec, Dataset, Loader, LoaderConfig};
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
}

/// Evaluate `model` on `ds` at `spec`.
pub fn evaluate(
    model: &ResNet,
    ds: &Arc<Dataset>,
    spec: CropSpec,
    threads: usize,
    device: &Device,
) -> Result<Accuracy> {
    if ds.classes().len() != model.config().num_classes {
        bail!(
            "{}: {} classes, the model has {}",
            ds.root().display(),
            ds.classes().len(),
            model.config().num_classes
        );
    }
    let loader = Loader::new(
        Arc::clone(ds),
        (0..ds.len() as u32).collect(),
        LoaderConfig {
            images_per_batch: EVAL_BATCH,
            spec,
            extra_specs: Vec::new(),
            crops: CropMode::Eval,
            prefetch: 2,
            threads,
            policy: BadFilePolicy::Skip,
            drop_last: false,
        },
    )?;
    let k = 5.min(model.config().num_classes);
    let (mut n, mut c1, mut c5) = (0u64, 0u64, 0u64);
    let s = spec.size as usize;
    for b in loader {
        let b = b.with_context(|| format!("evaluating on {}", ds.root().display()))?;
        if b.is_empty() {
            continue;
        }
        let x = Tensor::from_vec(b.data, (b.rows.len(), 3, s, s), device)?;
        let logits = model.forward_t(&x, false)?.to_device(&Device::Cpu)?;
        let rows = logits.to_vec2::<f32>()?;
        for (r, l) in b.rows.iter().zip(rows) {
            let target = l[r.label as usize];
            // rank = how many classes score strictly higher (ties favour the label)
            let rank = l.iter().filter(|&&v| v > target).count();
            c1 += (rank == 0) as u64;
            c5 += (rank < k) as u64;
            n += 1;
        }
    }
    let d = n.max(1) as f64;
    Ok(Accuracy {
        images: n,
        top1: c1 as f64 / d,
        top5: c5 as f64 / d,
    })
}
