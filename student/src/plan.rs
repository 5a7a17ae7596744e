//! Which crops a pass replays: the stored pool of each image (exact box and flip), or
//! fresh RandomResizedCrop draws when there is no store (hard-label runs, online KD).

use std::path::Path;
use std::sync::Arc;

use meal_data::{CropPlan, CropRecord, CropSampler, DataError, PoolCrops, RrcParams, Sample};
use meal_store::LabelStore;

/// Size of the virtual pool of fresh crops: large enough that passes never cycle.
pub const FRESH_POOL: u32 = 1 << 30;

/// Pass `pass` of `count` crops per image over the crops stored for each image: pass e
/// takes stored crops `e*C .. e*C + C` modulo the image's pool size (docs/PIPELINE.md, "Which crops").
pub struct StorePlan {
    /// The store.
    pub store: Arc<LabelStore>,
    /// Crops per image per pass.
    pub count: u32,
    /// The pass (epoch).
    pub pass: u64,
}

impl CropPlan for StorePlan {
    fn crops_per_image(&self) -> usize {
        self.count as usize
    }
    fn crops(
        &self,
        sample: &Sample,
        width: u32,
        height: u32,
    ) -> meal_data::Result<Vec<(u32, CropRecord)>> {
        // a file replaced by another of the same byte count (the dataset's fingerprint
        // unchanged) would get the old image's boxes and labels: its size tells
        if let Some((w, h)) = self.store.image_size(sample.id) {
            if (w, h) != (width, height) {
                return Err(DataError::Changed {
                    path: sample.path.clone().into(),
                    reason: format!(
                        "decodes to {width}x{height}, the label store's image was {w}x{h}: the \
                         file changed since its labels were made"
                    ),
                });
            }
        }
        let stored = self
            .store
            .view(sample.id)
            .map_err(|e| DataError::dataset(Path::new(&sample.path), e))?;
        if stored.is_empty() {
            return Err(DataError::dataset(
                Path::new(&sample.path),
                "no crops in the label store (skipped at precompute time)",
            ));
        }
        let p = stored.len() as u64;
        let first = self.pass * self.count as u64;
        Ok((0..self.count as u64)
            .map(|k| {
                let i = ((first + k) % p) as usize;
                (stored.crop_id(i) as u32, stored.record(i))
            })
            .collect())
    }
}

/// The plan of pass `pass`: the store's crops when there is a store, else fresh draws
/// (a different set every pass) from `seed`.
pub fn pass_plan(
    store: Option<&Arc<LabelStore>>,
    seed: u64,
    scale: [f64; 2],
    count: u32,
    pass: u64,
) -> meal_data::Result<Arc<dyn CropPlan>> {
    Ok(match store {
        Some(s) => Arc::new(StorePlan {
            store: Arc::clone(s),
            count,
            pass,
        }),
        None => Arc::new(PoolCrops::pass(
            CropSampler::new(
                seed,
                RrcParams::new((scale[0], scale[1]), meal_data::crop::DEFAULT_RATIO)?,
            ),
            FRESH_POOL,
            count,
            pass,
        )?),
    })
}
