//! A run's parts: the datasets and label source (opened in inputs.rs), student,
//! discriminator and optimiser, and what each step reads from them (the loader of a
//! pass, the targets of a batch).

use std::sync::Arc;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use meal_cli::memory::Room;
use meal_data::{epoch_order, Batch, CropMode, Dataset, Loader, LoaderConfig};
use meal_models::ensemble::{Crops, Ensemble, TeacherArg};
use meal_models::optim::{split_decay, Sgd, SgdConfig};
use meal_models::{ClassOrder, Discriminator, LoadOptions, ResNet};
use meal_store::LabelStore;

use super::inputs::{open_datasets, open_store};
use super::{State, CHECKPOINT, STUDENT_FILE};
use crate::config::{LossKind, Settings};
use crate::plan::pass_plan;

/// Everything a run holds.
pub(super) struct Run {
    pub(super) s: Settings,
    pub(super) dev: Device,
    pub(super) ds: Arc<Dataset>,
    pub(super) val: Option<Arc<Dataset>>,
    /// The student's logit for each of the validation set's classes (None: the same
    /// classes as `ds`).
    pub(super) val_logits: Option<Vec<usize>>,
    pub(super) store: Option<Arc<LabelStore>>,
    pub(super) online: Option<Ensemble>,
    pub(super) student: ResNet,
    pub(super) disc: Option<Discriminator>,
    pub(super) opt: Sgd,
    /// Sample ids that can be trained on (with stored crops when replaying a store).
    pub(super) usable: Vec<u32>,
}

/// The name of the first parameter or buffer holding a NaN or an infinity (a checkpoint
/// of such weights is refused; loading them is, by meal-models).
pub(super) fn first_non_finite(entries: &[meal_models::Entry]) -> Result<Option<String>> {
    for e in entries {
        if !meal_models::weights::all_finite(e.var.as_tensor())? {
            return Ok(Some(e.name.clone()));
        }
    }
    Ok(None)
}

/// Refuses a `--batch` at `--res` whose step cannot fit the memory available in `room`
/// (meal_cli::memory): the activations (the student's forward graph, kept for the
/// backward), three of the largest alive at once in the backward (a gradient, its
/// input's and the residual's), and four copies of the weights (themselves, their
/// gradients, the momentum and a gradient being summed). The activations alone were
/// 0.82 of a ResNet-50 step's need at 224 px (batch 64: 6.7 GiB counted, the run
/// aborted under an 8 GB `ulimit -v`); these add the rest of it there.
fn check_memory(s: &Settings, student: &ResNet, room: Room) -> Result<()> {
    let act = meal_models::memory::activations(student, s.res as usize)?.times(s.batch);
    let weights = meal_models::params::bytes_of(student.entries());
    let need = act
        .total
        .saturating_add(act.largest.saturating_mul(3))
        .saturating_add(weights.saturating_mul(4));
    meal_cli::memory::check_in(
        room,
        need,
        &format!(
            "--batch {} at --res {}: a training step's activations ({}'s forward graph, \
             measured at {} px and scaled), gradients and weights",
            s.batch,
            s.res,
            s.arch,
            meal_models::memory::PROBE_SIZE
        ),
        "lower --batch or --res",
    )
}

/// The student, from `--init` when given (a classifier of another class count is
/// re-initialised; non-finite weights are refused; weights that record their classes
/// have their classifier's rows taken by name).
fn load_student(s: &Settings, classes: &[String], dev: &Device) -> Result<ResNet> {
    let mut student = ResNet::from_preset(&s.arch, classes.len(), dev, s.seed)?;
    student.set_autocast(s.amp.then_some(candle_core::DType::BF16));
    // a resume loads its checkpoint's weights instead (checkpoint.rs)
    if let Some(init) = s.init.as_ref().filter(|_| !s.resume) {
        let (fresh, order) = student
            .load_weights_for(
                init,
                LoadOptions {
                    fresh_classifier: true,
                },
                classes,
            )
            .with_context(|| format!("--init {}", init.display()))?;
        if !fresh.is_empty() {
            match order {
                // (weights that record classes, some of which --data has: those rows
                // could not all be taken by name)
                ClassOrder::Other(unknown) => tracing::warn!(
                    "--init {}: its classifier re-initialised for --data's {} classes: {} of \
                     them are not among those it records ({})",
                    init.display(),
                    classes.len(),
                    unknown.len(),
                    meal_data::error::first_few(&unknown, 5)
                ),
                _ => tracing::info!(
                    "--init: classifier re-initialised for {} classes",
                    classes.len()
                ),
            }
        } else {
            match order {
                ClassOrder::Permuted(_) => tracing::info!(
                    "--init {}: trained on --data's classes in another order: its classifier's \
                     rows are taken by name",
                    init.display()
                ),
                ClassOrder::Subset { rows, of } => tracing::info!(
                    "--init {}: trained on {of} classes, --data's {} among them: its \
                     classifier's rows for those are taken by name",
                    init.display(),
                    rows.len()
                ),
                ClassOrder::Other(unknown) if !unknown.is_empty() => tracing::warn!(
                    "--init {}: trained on other classes ({} of --data's {} are not among \
                     those it records: {}): its classifier's rows are taken by index, as a \
                     start for fine-tuning",
                    init.display(),
                    unknown.len(),
                    classes.len(),
                    meal_data::error::first_few(&unknown, 5)
                ),
                _ => {}
            }
        }
    }
    Ok(student)
}

/// SGD over the student and the discriminator (at its own rate), with weight decay
/// off for BatchNorm and bias parameters (`split_decay`).
fn optimizer(s: &Settings, student: &ResNet, disc: Option<&Discriminator>) -> Result<Sgd> {
    let (a, b) = split_decay(student.entries(), "student.", s.lr, s.wd);
    let mut groups = vec![a, b];
    if let Some(d) = disc {
        let (a, b) = split_decay(d.entries(), "disc.", s.disc_lr, s.wd);
        groups.extend([a, b]);
    }
    Ok(Sgd::new(
        groups,
        SgdConfig {
            momentum: s.momentum,
            dampening: 0.0,
            nesterov: s.nesterov,
        },
    )?)
}

impl Run {
    /// What the student's weights file records of its training (its header's
    /// `__metadata__`): the classes in logit order and the side, so that `eval` maps a
    /// validation list's class names to the logits, or refuses names it does not know,
    /// and evaluates at the trained side by default.
    pub(super) fn trained_on(&self) -> std::collections::HashMap<String, String> {
        let on = crate::eval::TrainedOn {
            classes: Some(self.ds.classes().to_vec()),
            res: Some(self.s.res),
        };
        std::collections::HashMap::from([(
            meal_models::META_TRAINED_ON.to_string(),
            serde_json::to_string(&on).unwrap_or_default(),
        )])
    }

    /// The error for a non-finite loss: where it happened, whether the labels of the
    /// batch or the weights held the bad value, what checkpoint exists and how to go on.
    pub(super) fn non_finite(
        &self,
        total: f64,
        b: &Batch,
        target: &Tensor,
        epoch: u32,
        batch: usize,
        step: u64,
    ) -> anyhow::Error {
        let at = format!(
            "non-finite loss ({total}) at epoch {} batch {} (step {} of the run)",
            epoch + 1,
            batch + 1,
            step + 1
        );
        let c = self.ds.classes().len();
        if let Ok(t) = target.flatten_all().and_then(|t| t.to_vec1::<f32>()) {
            if let Some(i) = t.iter().position(|v| !v.is_finite()) {
                let r = &b.rows[i / c];
                let from = match &self.s.labels {
                    Some(l) => format!("the label store {}", l.display()),
                    None => "the online teachers".into(),
                };
                return anyhow::anyhow!(
                    "{at}: the target of sample {} crop {} from {from} is not finite (meal-precompute verify checks a store); no weights were written for this step",
                    r.sample_id,
                    r.crop_id
                );
            }
        }
        anyhow::anyhow!("{at}: {}", self.diverged())
    }

    /// The student's and the discriminator's tensors (none when it is off), each with
    /// whose they are ("student", "discriminator").
    pub(super) fn owned_entries(&self) -> [(&[meal_models::Entry], &'static str); 2] {
        let disc = self.disc.as_ref().map(|d| d.entries()).unwrap_or(&[]);
        [(self.student.entries(), "student"), (disc, "discriminator")]
    }

    /// The first weight or statistic of the student, then of the discriminator, that
    /// holds a NaN or an infinity, with whose it is ([`Self::owned_entries`]).
    pub(super) fn first_non_finite_weight(&self) -> Result<Option<(String, &'static str)>> {
        for (entries, whose) in self.owned_entries() {
            if let Some(name) = first_non_finite(entries)? {
                return Ok(Some((name, whose)));
            }
        }
        Ok(None)
    }

    /// After an update: the first BatchNorm statistic (student or discriminator) that is
    /// no longer finite, with whose it is. A running variance can overflow while the loss
    /// stays finite (a train step normalises by its batch's statistics, not the running
    /// ones), and such weights are refused by `--init` and eval: caught at its step
    /// rather than at the epoch's checkpoint. One reduction per buffer and one read of
    /// them all (for ResNet-50, 106 vectors of at most 2048 values).
    pub(super) fn non_finite_statistic(&self) -> Result<Option<(String, &'static str)>> {
        let buffers: Vec<(&meal_models::Entry, &'static str)> = self
            .owned_entries()
            .into_iter()
            .flat_map(|(entries, whose)| entries.iter().map(move |e| (e, whose)))
            .filter(|(e, _)| {
                e.kind == meal_models::Kind::Buffer && e.var.as_tensor().dtype().is_float()
            })
            .collect();
        if buffers.is_empty() {
            return Ok(None);
        }
        // a sum is finite only when every value is (an overflow of the sum itself needs
        // values near f32's largest, a run diverged anyway)
        let sums = buffers
            .iter()
            .map(|(e, _)| e.var.as_tensor().to_dtype(DType::F32)?.sum_all())
            .collect::<candle_core::Result<Vec<_>>>()?;
        let sums = Tensor::stack(&sums, 0)?.to_vec1::<f32>()?;
        Ok(sums
            .iter()
            .position(|v| !v.is_finite())
            .map(|i| (buffers[i].0.name.clone(), buffers[i].1)))
    }

    /// "the training diverged", with where it can go on from: its last checkpoint (a
    /// checkpoint is never saved with a non-finite weight or statistic, so its weights
    /// load as `--init`), or a rerun.
    pub(super) fn diverged(&self) -> String {
        let ckpt = self.s.out.join(CHECKPOINT).join("state.json");
        let saved = meal_data::files::read(&ckpt)
            .ok()
            .and_then(|t| serde_json::from_slice::<State>(&t).ok());
        // the rates that set a step's size: --lr, and --wd and --disc-lr when set above
        // their usual range (a --wd of 1e30 diverged as surely)
        let mut lower = format!("a lower --lr (now {})", meal_cli::number(self.s.lr));
        if self.s.wd > 1e-2 {
            lower += &format!(" or --wd (now {})", meal_cli::number(self.s.wd));
        }
        if self.disc.is_some() && self.s.disc_lr != self.s.lr {
            lower += &format!(" or --disc-lr (now {})", meal_cli::number(self.s.disc_lr));
        }
        match saved {
            Some(st) => format!(
                "the training diverged. The last checkpoint ({}, step {} of the run) is kept in {}: start a new run in another --out from its weights with {lower}: --init {} (should that run fail at its first step too, the steps before this checkpoint had already taken its weights far off, though finite: start from the run's initial weights instead)",
                match (st.epoch, st.batch) {
                    (0, 0) => "before epoch 1".to_string(),
                    (e, 0) => format!("after epoch {e}"),
                    (e, b) => format!("epoch {} after its step {b}", e + 1),
                },
                st.step,
                ckpt.parent().unwrap_or(&self.s.out).display(),
                self.s.out.join(CHECKPOINT).join(STUDENT_FILE).display()
            ),
            None => format!(
                "the training diverged before any checkpoint was written (checkpoints are taken at each epoch's end); rerun with {lower}"
            ),
        }
    }

    pub(super) fn new(s: Settings) -> Result<Self> {
        let dev = meal_models::parse_device(&s.device).context("--device")?;
        meal_models::set_tf32(&dev, s.tf32).context("--tf32")?;
        if s.amp && !dev.is_cuda() {
            bail!(
                "--amp true with --device {}: mixed precision (bf16) runs on a GPU \
                 (--device cuda:N); on the CPU the student trains in f32",
                s.device
            );
        }
        let (ds, val, val_logits) = open_datasets(&s)?;
        // a batch no epoch can fill is told as such, not as a batch too large for memory
        // (prepare() checks it again against the images the store labels)
        let per_step = s.batch / s.crops_per_image as usize;
        if per_step > ds.len() {
            bail!(
                "--batch {}: more images per step ({per_step}) than the {} images of --data",
                s.batch,
                ds.len()
            );
        }
        let classes = ds.classes();
        // before the store's checksums (seconds per GB): a batch that cannot fit is told
        // at once
        let student = load_student(&s, classes, &dev)?;
        let online = if s.online_teacher.is_empty() {
            None
        } else {
            let mut args = TeacherArg::parse_all(&s.online_teacher).context("--online-teacher")?;
            for t in &mut args {
                meal_cli::hub::resolve_teacher("--online-teacher", &t.arch, &mut t.weights)?;
            }
            let dtype = meal_models::ensemble::default_dtype(&dev);
            let ens = Ensemble::load(&args, classes, &dev, dtype).context("--online-teacher")?;
            let said: Vec<String> = s
                .online_teacher
                .iter()
                .map(|t| format!("--online-teacher {t}"))
                .collect();
            for w in ens.repeated_said(&said) {
                tracing::warn!("{w}");
            }
            Some(ens)
        };
        // on a GPU, against its free memory (the student's weights are on it already)
        let room = Room::of(meal_models::device::gpu_free_memory(&dev).context("--device")?);
        check_memory(&s, &student, room)?;
        if let Some(ens) = &online {
            meal_cli::memory::check_forwards(
                room,
                &meal_models::memory::ensemble_floors(ens, s.batch)?,
                s.batch,
                |i| {
                    format!(
                        "--batch {} with --online-teacher {}",
                        s.batch, s.online_teacher[i]
                    )
                },
                "lower --batch or the teacher's size=",
            )?;
        }
        let store = open_store(&s, &ds)?;
        let disc = if s.disc {
            Some(Discriminator::new(
                classes.len(),
                true,
                &dev,
                s.seed.wrapping_add(1),
            )?)
        } else {
            None
        };
        let opt = optimizer(&s, &student, disc.as_ref())?;
        let (store, usable) = match store {
            Some((st, usable)) => (Some(st), usable),
            None => (None, (0..ds.len() as u32).collect()),
        };
        if usable.len() < ds.len() {
            let kept: std::collections::HashSet<u32> = usable.iter().copied().collect();
            let left: Vec<&str> = ds
                .samples()
                .iter()
                .filter(|x| !kept.contains(&x.id))
                .map(|x| x.path.as_str())
                .collect();
            tracing::warn!(
                "{} {} no stored labels (skipped at precompute time: the store's report.json \
                 says why) and {} left out: {}",
                left.len(),
                match left.len() {
                    1 => "image has",
                    _ => "images have",
                },
                match left.len() {
                    1 => "is",
                    _ => "are",
                },
                meal_data::error::first_few(&left, 5)
            );
        }
        Ok(Run {
            s,
            dev,
            ds,
            val,
            val_logits,
            store,
            online,
            student,
            disc,
            opt,
            usable,
        })
    }

    pub(super) fn images_per_batch(&self) -> usize {
        self.s.batch / self.s.crops_per_image as usize
    }

    pub(super) fn loader(&self, epoch: u32, skip_batches: usize) -> Result<Loader> {
        let order: Vec<u32> = epoch_order(self.usable.len(), self.s.seed, epoch as u64, true)
            .into_iter()
            .map(|i| self.usable[i as usize])
            .skip(skip_batches * self.images_per_batch())
            .collect();
        let plan = pass_plan(
            self.store.as_ref(),
            self.s.seed,
            self.s.scale,
            self.s.crops_per_image,
            epoch as u64,
        )?;
        Ok(Loader::new(
            Arc::clone(&self.ds),
            order,
            LoaderConfig {
                images_per_batch: self.images_per_batch(),
                spec: self.s.spec(),
                extra_specs: self
                    .online
                    .as_ref()
                    .map(|e| e.specs().to_vec())
                    .unwrap_or_default(),
                crops: CropMode::Plan(plan),
                prefetch: 2,
                threads: self.s.threads,
                policy: self.s.policy,
                drop_last: true,
                // 8-bit crops, normalised on the training device (a quarter of the bytes
                // to copy to a GPU; the same floats)
                pixels: meal_data::PixelFormat::Levels,
            },
        )?)
    }

    pub(super) fn batches_per_epoch(&self) -> usize {
        self.usable.len() / self.images_per_batch()
    }

    /// The target distributions of a batch's rows.
    pub(super) fn targets(&self, b: &Batch) -> Result<Tensor> {
        let c = self.ds.classes().len();
        let n = b.rows.len();
        let mut t = vec![0f32; n * c];
        match (self.s.loss, &self.online, &self.store) {
            (LossKind::Ce, _, _) => {
                for (i, r) in b.rows.iter().enumerate() {
                    t[i * c + r.label as usize] = 1.0;
                }
            }
            (LossKind::Kd, Some(ens), _) => {
                // the online teachers' specs follow the student's
                let inputs = Crops::of_batch(b).split_off(1);
                t = ens.soft_labels(&inputs, n, n)?.probs;
            }
            (LossKind::Kd, None, Some(store)) => {
                // an image's crops are contiguous: read its stored labels once
                let mut rows = t.chunks_exact_mut(c);
                for group in b.rows.chunk_by(|a, b| a.sample_id == b.sample_id) {
                    let id = group[0].sample_id;
                    let crops = store.view(id)?;
                    for (r, out) in group.iter().zip(rows.by_ref()) {
                        let i = u16::try_from(r.crop_id)
                            .ok()
                            .and_then(|c| crops.position(c))
                            .with_context(|| {
                                format!("sample {id} crop {} missing from the store", r.crop_id)
                            })?;
                        crops.dense_into(i, out);
                        // training reads the mapped bytes without their checksum: a
                        // damaged shard of the right size shows here, named, rather than
                        // as a NaN loss blamed on the learning rate (or a box clamped
                        // into the image: another crop than the label's)
                        let rec = crops.record(i);
                        // (and a row breaking the format's rules: a top-k class beyond
                        // the store's would be dropped from the label unseen)
                        let why = crops.row_error(i, c).or_else(|| match rec.is_valid() {
                            true => meal_store::distribution_error(out)
                                .err()
                                .map(|e| e.to_string()),
                            false => Some(format!("the box ({rec}) is not inside the image")),
                        });
                        if let Some(why) = why {
                            let file = store.shard_path(id).unwrap_or_default();
                            bail!(
                                "{}: sample {id} crop {}: {why}: the label store is damaged (`meal-precompute verify` checks every shard)",
                                file.display(),
                                r.crop_id
                            );
                        }
                    }
                }
            }
            (LossKind::Kd, None, None) => bail!("--loss kd without labels or online teachers"),
        }
        Ok(Tensor::from_vec(t, (n, c), &self.dev)?)
    }
}
