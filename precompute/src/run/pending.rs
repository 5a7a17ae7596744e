//! The shards a precompute run is filling: labels grouped by shard until each shard's
//! samples are all labelled or skipped, then handed to the store writer. Each image is
//! encoded as it is labelled (`StoreWriter::encode_image`): a shard waits as the store
//! will keep it, not as dense f32 probabilities.

use std::collections::BTreeMap;

use meal_data::Batch;
use meal_models::ensemble::EnsembleOut;
use meal_store::{CropProbs, EncodedImage, ImageProbs, ShardNotes, StoreError, StoreWriter};

/// The shards being filled: each image's crops and the shard's notes, until every
/// sample of the shard is labelled or skipped.
#[derive(Default)]
pub(super) struct Pending {
    images: BTreeMap<u32, Vec<EncodedImage>>,
    notes: BTreeMap<u32, ShardNotes>,
    /// Samples accounted for (labelled or skipped) per shard.
    done: BTreeMap<u32, usize>,
}

impl Pending {
    /// Add one batch's labels: group rows into images (an image's crops are
    /// contiguous) and count each teacher's agreement with the hard label.
    pub(super) fn add(
        &mut self,
        batch: &Batch,
        out: &EnsembleOut,
        classes: usize,
        per_shard: u32,
        writer: &StoreWriter,
    ) -> Result<(), StoreError> {
        let teachers = out.teacher_top1.len();
        let mut k = 0; // first row of the group
        for group in batch.rows.chunk_by(|a, b| a.sample_id == b.sample_id) {
            let row = group[0];
            let sh = row.sample_id / per_shard;
            let notes = self.notes.entry(sh).or_default();
            notes.teacher_top1_agree.resize(teachers, 0);
            for (t, top) in out.teacher_top1.iter().enumerate() {
                notes.teacher_top1_agree[t] += top[k..k + group.len()]
                    .iter()
                    .filter(|&&c| c == row.label)
                    .count() as u64;
            }
            let image = writer.encode_image(ImageProbs {
                sample_id: row.sample_id,
                width: row.image_width,
                height: row.image_height,
                crops: group
                    .iter()
                    .zip(out.probs[k * classes..].chunks_exact(classes))
                    .map(|(r, p)| CropProbs {
                        crop_id: r.crop_id as u16,
                        record: r.record,
                        probs: p.to_vec(),
                    })
                    .collect(),
            })?;
            self.images.entry(sh).or_default().push(image);
            *self.done.entry(sh).or_default() += 1;
            k += group.len();
        }
        for sk in &batch.skipped {
            let sh = sk.sample_id / per_shard;
            self.notes.entry(sh).or_default().skipped.push(sk.clone());
            *self.done.entry(sh).or_default() += 1;
        }
        Ok(())
    }

    /// Take the shards of `expected` whose samples are all accounted for (of those being
    /// filled: `expected` holds every shard left, thousands in a store of small shards).
    pub(super) fn take_complete(
        &mut self,
        expected: &mut BTreeMap<u32, usize>,
    ) -> Vec<(u32, Vec<EncodedImage>, ShardNotes)> {
        let complete: Vec<u32> = self
            .done
            .iter()
            .filter(|(sh, n)| expected.get(sh) == Some(n))
            .map(|(sh, _)| *sh)
            .collect();
        complete
            .into_iter()
            .map(|sh| {
                expected.remove(&sh);
                self.done.remove(&sh);
                let images = self.images.remove(&sh).unwrap_or_default();
                (sh, images, self.notes.remove(&sh).unwrap_or_default())
            })
            .collect()
    }
}
