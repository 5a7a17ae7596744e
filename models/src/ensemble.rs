//! The teacher ensemble of MEAL V2: each teacher in eval mode on the crop at its own
//! input config, softmax at temperature 1, arithmetic mean over teachers
//! (szq0214/MEAL-V2 `train.py`: `torch.stack([F.softmax(t(x), 1) ...]).mean(0)`).

use std::path::Path;

use candle_core::{DType, Device, Tensor, D};
use meal_data::CropSpec;

use crate::error::{ModelError, Result};
use crate::{LoadOptions, ResNet};
use meal_store::TeacherInfo;

mod repeated;
mod spec;
pub use spec::TeacherArg;

/// The name of a teacher dtype as flags and manifests spell it.
pub fn dtype_name(d: DType) -> &'static str {
    match d {
        DType::BF16 => "bf16",
        DType::F16 => "f16",
        DType::F32 => "f32",
        _ => "other",
    }
}

/// Parse a teacher dtype: `f32`, `bf16` or `f16`.
pub fn parse_dtype(s: &str) -> Result<DType> {
    match s.trim().to_ascii_lowercase().as_str() {
        "f32" => Ok(DType::F32),
        "bf16" => Ok(DType::BF16),
        "f16" => Ok(DType::F16),
        _ => Err(ModelError::UnknownDtype(s.to_string())),
    }
}

/// The teachers' default dtype on `device`: f32 everywhere for now. On CUDA a bf16
/// teacher ran candle's generic bf16 ops, measured at 0.6x of our f32 CUDA ops on an
/// H200 (ResNet-152 at 224, BENCHMARKS.md "GPU"); its convolutions and BatchNorms now
/// run our ops (tensor-core GEMMs), not yet measured on a GPU, so f32 stays the default
/// until a device run shows bf16 faster. On the CPU, bf16 (AVX512-BF16 only) is opt-in
/// so that a store's dtype does not depend on the machine that started it.
pub fn default_dtype(_device: &Device) -> DType {
    DType::F32
}

/// The ensemble rule written to manifests.
pub const ENSEMBLE_RULE: &str = "mean_softmax";

/// One teacher: the model, the crop spec its inputs are made with, and what the
/// manifest records about it.
pub struct Teacher {
    /// The network (run in eval mode).
    pub model: ResNet,
    /// Size, filter and normalisation of its inputs.
    pub spec: CropSpec,
    /// Arch, weights file name and checksum, input config.
    pub info: TeacherInfo,
}

impl Teacher {
    /// Build preset `arch` with an output per class of `classes` (the dataset's) on
    /// `device` and load `weights` strictly (safetensors or `.pth`); the file's sha256
    /// goes to `info`. Weights that record their classes ([`crate::TrainedOn`]) give
    /// their probabilities by name: the same classes in another order are reordered,
    /// more classes restricted to the data's (the softmax over those logits), other
    /// classes refused.
    pub fn load(
        arch: &str,
        weights: &Path,
        classes: &[String],
        spec: CropSpec,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        Self::load_named(arch, weights, None, classes, spec, device, dtype)
    }

    /// [`Teacher::load`] with the weights' classes in logit order as `logits` names them
    /// (a teacher spec's `classes=` file), for weights that record none; weights that
    /// record other classes than the list are refused.
    pub fn load_named(
        arch: &str,
        weights: &Path,
        logits: Option<Vec<String>>,
        classes: &[String],
        spec: CropSpec,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        let model = ResNet::from_preset_as(arch, classes.len(), device, dtype)?;
        let mut record = crate::TrainedOn::of(weights)?;
        let listed = logits.is_some();
        if let Some(logits) = logits {
            if record.classes.as_ref().is_some_and(|r| *r != logits) {
                return Err(ModelError::ClassList {
                    path: weights.to_path_buf(),
                    reason: "the weights record their classes, other than its classes= \
                             list names: leave classes= out"
                        .into(),
                });
            }
            record.classes = Some(logits);
        }
        // other classes are refused before the weights' shapes are compared: a list or
        // record of 1000 classes met with 100 would fail on the classifier's shape
        let order = record.order_of(classes);
        if let crate::ClassOrder::Other(unknown) = &order {
            let mut reason = format!(
                "{} of the data's {} classes are not among those {} ({}): its \
                 probabilities would be taken for other classes",
                unknown.len(),
                classes.len(),
                if listed {
                    "its classes= list names"
                } else {
                    "it records"
                },
                meal_data::error::first_few(unknown, 5)
            );
            let firsts: std::collections::HashSet<&str> = record
                .classes
                .iter()
                .flatten()
                .filter_map(|l| l.split_whitespace().next())
                .collect();
            if listed && unknown.iter().all(|c| firsts.contains(c.as_str())) {
                reason.push_str(
                    "; its lines hold more than a name (as LOC_synset_mapping.txt's \
                     \"n01440764 tench, Tinca tinca\"): give one class name per line",
                );
            }
            return Err(ModelError::OtherClasses {
                path: weights.to_path_buf(),
                reason,
            });
        }
        let named = record.classes.is_some();
        model
            .load_weights_ordered(weights, LoadOptions::default(), &order)
            .map_err(|e| match e {
                // weights of more classes that name none of them: the way to a subset
                ModelError::Mismatch {
                    path,
                    arch,
                    mut details,
                } if details.contains("the weights classify")
                    && (listed
                        // (the way to a subset: for weights of more classes than the data's)
                        || (!named
                            && crate::weights::classifier_rows(weights)
                                .is_none_or(|n| n > classes.len()))) =>
                {
                    details.push_str(&match listed {
                        true => format!(
                            "\n  its classes= list names {} classes: one per logit, in order",
                            record.classes.as_ref().map_or(0, Vec::len)
                        ),
                        false => "\n  for a teacher trained on more classes than the data's \
                                  (ImageNet's 1000 for a subset), name its classes in logit \
                                  order with classes=FILE in its spec: the data's are then \
                                  taken by name"
                            .to_string(),
                    });
                    ModelError::Mismatch {
                        path,
                        arch,
                        details,
                    }
                }
                e => e,
            })?;
        let logits = order.rows().map(|(rows, _)| rows.to_vec());
        match order {
            crate::ClassOrder::Permuted(_) => tracing::info!(
                "{}: trained on the data's classes in another order: its outputs are taken by name",
                weights.display()
            ),
            // FKD/MEAL V2 subsets of ImageNet (ImageNet-100) taught by 1000-class
            // teachers: the softmax over the data's logits is the teacher's distribution
            // given that the image is one of the data's classes
            crate::ClassOrder::Subset { rows, of } => tracing::info!(
                "{}: trained on {of} classes, the data's {} among them: its probabilities \
                 are over the data's classes (its other logits left out)",
                weights.display(),
                rows.len()
            ),
            _ => {}
        }
        // a teacher's weights never change: its BatchNorms' eval affine once, not per batch
        model.freeze_batch_norms()?;
        let (sha256, _) = meal_data::files::sha256(weights).map_err(|e| ModelError::Io {
            path: weights.to_path_buf(),
            reason: e.to_string(),
        })?;
        let info = TeacherInfo {
            arch: arch.to_string(),
            weights: weights
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default(),
            sha256,
            input_size: spec.size,
            filter: format!("{:?}", spec.filter).to_lowercase(),
            mean: spec.normalize.mean,
            std: spec.normalize.std,
            dtype: dtype_name(dtype).to_string(),
            logits,
        };
        Ok(Teacher { model, spec, info })
    }
}

/// The crops of one input spec, as the loader wrote them ([`meal_data::PixelFormat`]).
#[derive(Clone, Copy, Debug)]
pub enum Crops<'a> {
    /// Normalised f32, NCHW.
    Normalized(&'a [f32]),
    /// 8-bit levels, NCHW: normalised on the teachers' device
    /// ([`crate::ops::normalize_levels`]), a quarter of the bytes to copy there.
    Levels(&'a [u8]),
}

impl Crops<'_> {
    /// Values held (floats or bytes).
    pub fn len(&self) -> usize {
        match self {
            Crops::Normalized(v) => v.len(),
            Crops::Levels(v) => v.len(),
        }
    }

    /// Whether no values are held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Crops `rows` (each `3 x S x S` of `spec`) as an NCHW tensor of `dtype` on `dev`:
    /// normalised floats copied as they are, 8-bit levels copied as bytes and normalised
    /// there with the spec's table (the same floats).
    pub fn tensor(
        &self,
        rows: std::ops::Range<usize>,
        spec: &CropSpec,
        dtype: DType,
        dev: &Device,
    ) -> Result<Tensor> {
        let (per, s) = (spec.len(), spec.size as usize);
        let (lo, hi, shape) = (rows.start * per, rows.end * per, (rows.len(), 3, s, s));
        if hi > self.len() || lo > hi {
            return Err(ModelError::Config(format!(
                "crops {rows:?} of {per} values each: the buffer holds {}",
                self.len()
            )));
        }
        Ok(match *self {
            Crops::Normalized(v) => {
                let x = Tensor::from_slice(&v[lo..hi], shape, dev)?;
                if dtype == DType::F32 {
                    x
                } else {
                    x.to_dtype(dtype)?
                }
            }
            Crops::Levels(v) => {
                // on a GPU through a pinned buffer: queued without waiting for the
                // batch before it (precompute keeps two in flight)
                let x = crate::ops::upload_levels(&v[lo..hi], shape, dev)?;
                crate::ops::normalize_levels(&x, &spec.normalize, dtype)?
            }
        })
    }

    /// Every buffer of a loader batch, in spec order: its levels if it has them, else
    /// its normalised crops.
    pub fn of_batch(b: &meal_data::Batch) -> Vec<Crops<'_>> {
        if b.levels.is_empty() {
            std::iter::once(&b.data)
                .chain(&b.extra)
                .map(|v| Crops::Normalized(v))
                .collect()
        } else {
            b.levels.iter().map(|v| Crops::Levels(v)).collect()
        }
    }
}

impl<'a> From<&'a [f32]> for Crops<'a> {
    fn from(v: &'a [f32]) -> Self {
        Crops::Normalized(v)
    }
}

impl<'a> From<&'a [u8]> for Crops<'a> {
    fn from(v: &'a [u8]) -> Self {
        Crops::Levels(v)
    }
}

/// What the ensemble makes of a batch of crops.
#[derive(Clone, Debug)]
pub struct EnsembleOut {
    /// `rows x classes` mean of the teachers' softmax, row-major.
    pub probs: Vec<f32>,
    /// For each teacher, its top-1 class per row.
    pub teacher_top1: Vec<Vec<u32>>,
}

/// The teachers and the distinct crop specs they need (the loader makes one buffer per
/// spec; teachers sharing a spec share the buffer).
pub struct Ensemble {
    teachers: Vec<Teacher>,
    specs: Vec<CropSpec>,
    spec_of: Vec<usize>,
    classes: usize,
}

impl Ensemble {
    /// Load the teachers `args` say (preset, weights, input config) with an output per
    /// class of `classes` (the dataset's, by name: [`Teacher::load`]) on `device`: the one way both binaries build an ensemble. An error names
    /// the teacher (the caller adds its flag).
    pub fn load(
        args: &[TeacherArg],
        classes: &[String],
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        let mut teachers = Vec::with_capacity(args.len());
        for t in args {
            let named = |e: ModelError| ModelError::Teacher {
                teacher: format!("{}={}", t.arch, t.weights.display()),
                error: Box::new(e),
            };
            // weights that record the side they were trained at (meal-student's) run at
            // it unless the spec gives size=, as `eval --weights` does and as timm's
            // pretrained config gives each model its own input size
            let mut t = t.clone();
            if !t.size_given {
                if let Some(r) = crate::TrainedOn::of(&t.weights).map_err(named)?.res {
                    if r != t.size {
                        tracing::info!(
                            "teacher {}={}: at {r} px, the side its weights were trained at \
                             (size= in its spec sets another)",
                            t.arch,
                            t.weights.display()
                        );
                        t.size = r;
                    }
                }
            }
            let spec = t.spec().map_err(named)?;
            let logits = t.class_list().map_err(named)?;
            teachers.push(
                Teacher::load_named(&t.arch, &t.weights, logits, classes, spec, device, dtype)
                    .map_err(named)?,
            );
        }
        Self::new(teachers)
    }

    /// An ensemble of at least one teacher, all with the same number of classes.
    pub fn new(teachers: Vec<Teacher>) -> Result<Self> {
        let Some(first) = teachers.first() else {
            return Err(ModelError::Config(
                "an ensemble needs at least one teacher".into(),
            ));
        };
        let classes = first.model.config().num_classes;
        let mut specs: Vec<CropSpec> = Vec::new();
        let mut spec_of = Vec::new();
        for t in &teachers {
            if t.model.config().num_classes != classes {
                return Err(ModelError::Config(format!(
                    "teacher {} has {} classes, {} has {classes}",
                    t.info.arch,
                    t.model.config().num_classes,
                    first.info.arch
                )));
            }
            let i = match specs.iter().position(|s| *s == t.spec) {
                Some(i) => i,
                None => {
                    specs.push(t.spec);
                    specs.len() - 1
                }
            };
            spec_of.push(i);
        }
        Ok(Ensemble {
            teachers,
            specs,
            spec_of,
            classes,
        })
    }

    /// The distinct input specs, in first-use order.
    pub fn specs(&self) -> &[CropSpec] {
        &self.specs
    }

    /// The teachers.
    pub fn teachers(&self) -> &[Teacher] {
        &self.teachers
    }

    /// Number of classes.
    pub fn num_classes(&self) -> usize {
        self.classes
    }

    /// Run every teacher over `rows` crops. `inputs[i]` holds the crops made with
    /// `specs()[i]` (NCHW, normalised f32 or 8-bit levels); the forward runs `batch`
    /// crops at a time. A crop's output does not depend on which others share its
    /// forward beyond float rounding, nor on which form its crops came in (levels are
    /// normalised on the teachers' device with the spec's table, to the same floats).
    /// [`Ensemble::submit`] then [`Ensemble::finish`].
    pub fn soft_labels(
        &self,
        inputs: &[Crops<'_>],
        rows: usize,
        batch: usize,
    ) -> Result<EnsembleOut> {
        self.finish(self.submit(inputs, rows, batch)?)
    }

    /// The first half of [`Ensemble::soft_labels`]: every teacher's forward over every
    /// chunk of `batch` crops, with its softmax (in f32), queued on the teachers'
    /// device; nothing is read back. On a GPU this returns once the work is queued (the
    /// crops copied there), so a caller can queue the next batch before it reads this
    /// one ([`Ensemble::finish`]) and the GPU never waits for the host between batches;
    /// on the CPU the work is done here.
    pub fn submit(&self, inputs: &[Crops<'_>], rows: usize, batch: usize) -> Result<Submitted> {
        let never = std::sync::atomic::AtomicBool::new(false);
        Ok(self
            .submit_until(inputs, rows, batch, &never)?
            .expect("never stopped"))
    }

    /// [`Ensemble::submit`], given up between two chunks once `stop` is set (`None`):
    /// the rows of one image's crops (`--crops-per-image` above `batch`) are many
    /// chunks, and a Ctrl-C waited for all of them (60 s and more at 65,536 crops).
    pub fn submit_until(
        &self,
        inputs: &[Crops<'_>],
        rows: usize,
        batch: usize,
        stop: &std::sync::atomic::AtomicBool,
    ) -> Result<Option<Submitted>> {
        if inputs.len() != self.specs.len() {
            return Err(ModelError::Config(format!(
                "{} input buffers for {} crop specs",
                inputs.len(),
                self.specs.len()
            )));
        }
        let batch = batch.max(1);
        for (si, spec) in self.specs.iter().enumerate() {
            let need = rows * spec.len();
            if inputs[si].len() != need {
                return Err(ModelError::Config(format!(
                    "input buffer {si} holds {} values, need {need}",
                    inputs[si].len()
                )));
            }
        }
        let mut probs: Vec<Vec<crate::ops::Readback>> = (0..self.teachers.len())
            .map(|_| Vec::with_capacity(rows.div_ceil(batch)))
            .collect();
        for start in (0..rows).step_by(batch) {
            if stop.load(std::sync::atomic::Ordering::Relaxed) {
                return Ok(None);
            }
            let n = batch.min(rows - start);
            // each spec's crops reach a device once per chunk, in the dtype its teachers
            // run in, and are shared by those teachers
            let mut xs: Vec<(usize, DType, Device, Tensor)> = Vec::new();
            for (ti, (t, &si)) in self.teachers.iter().zip(&self.spec_of).enumerate() {
                let (dev, dt) = (t.model.entries()[0].var.device().clone(), t.model.dtype());
                let have = xs
                    .iter()
                    .find(|(s, d, v, _)| *s == si && *d == dt && v.same_device(&dev));
                let x = match have {
                    Some((.., x)) => x.clone(),
                    None => {
                        let x = inputs[si].tensor(start..start + n, &self.specs[si], dt, &dev)?;
                        xs.push((si, dt, dev, x.clone()));
                        x
                    }
                };
                // softmax (and the mean over teachers) in f32 whatever the model ran in
                let logits = t.model.forward_t(&x, false)?.to_dtype(DType::F32)?;
                let p = candle_nn::ops::softmax(&logits, D::Minus1)?;
                // on a GPU the read-back is queued right behind this chunk's kernels, so
                // finish() waits for them and not for the next batch queued after them
                probs[ti].push(crate::ops::readback_f32(&p)?);
            }
        }
        Ok(Some(Submitted { rows, probs }))
    }

    /// The second half of [`Ensemble::soft_labels`]: the submitted probabilities read
    /// back (on a GPU: one wait per chunk, for work queued before), each teacher's
    /// top-1 per row by the store's rule (the first maximum), and their mean.
    pub fn finish(&self, sub: Submitted) -> Result<EnsembleOut> {
        let (c, rows) = (self.classes, sub.rows);
        let mut sum = vec![0f32; rows * c];
        let mut teacher_top1 = Vec::with_capacity(sub.probs.len());
        for (t, chunks) in self.teachers.iter().zip(sub.probs) {
            let mut top1 = Vec::with_capacity(rows);
            let mut start = 0;
            for p in chunks {
                let p = p.wait()?;
                if let Some(i) = p.iter().position(|v| !v.is_finite()) {
                    // named here, where the teacher is known: the store would only see
                    // a bad mean
                    return Err(ModelError::NonFinite {
                        teacher: format!("{} ({})", t.info.arch, t.info.weights),
                        row: start + i / c.max(1),
                        dtype: t.info.dtype.clone(),
                        hint: if t.info.dtype == "f32" {
                            ": check its weights file"
                        } else {
                            "; f32 may not overflow"
                        },
                    });
                }
                top1.extend(p.chunks_exact(c.max(1)).map(|r| meal_store::top1(r) as u32));
                let n = p.len() / c.max(1);
                if start + n > rows {
                    return Err(ModelError::Config(format!(
                        "submitted chunks hold more than {rows} rows"
                    )));
                }
                for (acc, v) in sum[start * c..(start + n) * c].iter_mut().zip(&p) {
                    *acc += v;
                }
                start += n;
            }
            teacher_top1.push(top1);
        }
        let k = self.teachers.len() as f32;
        for v in &mut sum {
            *v /= k;
        }
        Ok(EnsembleOut {
            probs: sum,
            teacher_top1,
        })
    }
}

/// A batch's teacher work queued by [`Ensemble::submit`]: each teacher's softmax per
/// chunk, on a GPU on its way to the host (read-backs queued behind the chunk's kernels),
/// not yet waited for.
pub struct Submitted {
    rows: usize,
    probs: Vec<Vec<crate::ops::Readback>>,
}
