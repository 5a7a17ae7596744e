//! The teacher ensemble of MEAL V2: each teacher in eval mode on the crop at its own
//! input config, softmax at temperature 1, arithmetic mean over teachers
//! (szq0214/MEAL-V2 `train.py`: `torch.stack([F.softmax(t(x), 1) ...]).mean(0)`).

use std::path::Path;

use candle_core::{Device, Tensor, D};
use meal_data::CropSpec;
use sha2::{Digest, Sha256};

use crate::error::{ModelError, Result};
use crate::models::{LoadOptions, ResNet};
use crate::store::TeacherInfo;

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
    /// Build preset `arch` with `classes` outputs on `device` and load `weights`
    /// strictly (safetensors or `.pth`); the file's sha256 goes to `info`.
    pub fn load(
        arch: &str,
        weights: &Path,
        classes: usize,
        spec: CropSpec,
        device: &Device,
    ) -> Result<Self> {
        let model = ResNet::from_preset(arch, classes, device, 0)?;
        model.load_weights(weights, LoadOptions::default())?;
        let bytes = std::fs::read(weights).map_err(|e| ModelError::Io {
            path: weights.to_path_buf(),
            reason: e.to_string(),
        })?;
        let info = TeacherInfo {
            arch: arch.to_string(),
            weights: weights
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default(),
            sha256: hex::encode(Sha256::digest(&bytes)),
            input_size: spec.size,
            filter: format!("{:?}", spec.filter).to_lowercase(),
            mean: spec.normalize.mean,
            std: spec.normalize.std,
        };
        Ok(Teacher { model, spec, info })
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
    /// An ensemble of at least one teacher, all with the same number of classes.
    pub fn new(teachers: Vec<Teacher>) -> Result<Self> {
        let Some(first) = teachers.first() else {
            return Err(ModelError::Config("an ensemble needs at least one teacher".into()));
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
    /// `specs()[i]` (NCHW f32); the forward runs `batch` crops at a time. A crop's
    /// output does not depend on which others share its forward beyond float rounding.
    pub fn soft_labels(&self, inputs: &[&[f32]], rows: usize, batch: usize) -> Result<EnsembleOut> {
        if inputs.len() != self.specs.len() {
            return Err(ModelError::Config(format!(
                "{} input buffers for {} crop specs",
                inputs.len(),
                self.specs.len()
            )));
        }
        let c = self.classes;
        let mut sum = vec![0f32; rows * c];
        let mut teacher_top1 = Vec::with_capacity(self.teachers.len());
        let batch = batch.max(1);
        for (t, &si) in self.teachers.iter().zip(&self.spec_of) {
            let spec = &self.specs[si];
            let per = spec.len();
            let s = spec.size as usize;
            if inputs[si].len() != rows * per {
                return Err(ModelError::Config(format!(
                    "input buffer {si} holds {} floats, need {}",
                    inputs[si].len(),
                    rows * per
                )));
            }
            let dev = t.model.entries()[0].var.device().clone();
            let mut top1 = Vec::with_capacity(rows);
            for start in (0..rows).step_by(batch) {
                let n = batch.min(rows - start);
                let x = Tensor::from_slice(
                    &inputs[si][start * per..(start + n) * per],
                    (n, 3, s, s),
                    &dev,
                )?;
                let logits = t.model.forward_t(&x, false)?;
                let p = candle_nn::ops::softmax(&logits, D::Minus1)?;
                top1.extend(p.argmax(D::Minus1)?.to_vec1::<u32>()?);
                let p = p.flatten_all()?.to_vec1::<f32>()?;
                for (acc, v) in sum[start * c..(start + n) * c].iter_mut().zip(&p) {
                    *acc += v;
                }
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
