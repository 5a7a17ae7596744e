//! timm's ResNet family (timm/models/resnet.py) in candle: one builder, named presets
//! as data, timm's state-dict names, train and eval modes.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};

use super::classes::{permute_classifier, ClassOrder, TrainedOn};
use super::layers::{
    avg_pool_2x2_ceil, global_avg_pool, max_pool_3x3_s2_p1, BatchNorm2d, Conv2d, ConvConfig,
    Linear, SqueezeExcite,
};
use super::params::{Entry, ParamBuilder};
use super::weights::{load_into, read_state_dict, save_safetensors, LoadOptions};
use crate::error::{ModelError, Result};

mod config;
mod fused;
#[cfg(test)]
mod tests;

pub use config::{preset, presets, Block, Preset, ResNetConfig, Stem};

#[derive(Clone, Debug)]
enum Downsample {
    /// `downsample.0` conv (k, stride), `downsample.1` BN.
    Conv(Conv2d, BatchNorm2d),
    /// `downsample.0` avg-pool (when strided), `.1` 1x1 conv, `.2` BN.
    Avg {
        pool: bool,
        conv: Conv2d,
        bn: BatchNorm2d,
    },
}

impl Downsample {
    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        match self {
            Downsample::Conv(c, b) => c.forward_bn(x, b, false, train),
            Downsample::Avg { pool, conv, bn } => {
                let x = if *pool {
                    avg_pool_2x2_ceil(x)?
                } else {
                    x.clone()
                };
                conv.forward_bn(&x, bn, false, train)
            }
        }
    }
}

#[derive(Clone, Debug)]
struct ResBlock {
    convs: Vec<(Conv2d, BatchNorm2d)>,
    se: Option<SqueezeExcite>,
    downsample: Option<Downsample>,
}

impl ResBlock {
    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut y = x.clone();
        let last = self.convs.len() - 1;
        for (i, (c, b)) in self.convs.iter().enumerate() {
            y = c.forward_bn(&y, b, i < last, train)?;
        }
        if let Some(se) = &self.se {
            y = se.forward(&y, train)?;
        }
        let shortcut = match &self.downsample {
            Some(d) => d.forward(x, train)?,
            None => x.clone(),
        };
        crate::ops::add_relu(&y, &shortcut)
    }
}

/// A ResNet-family network.
pub struct ResNet {
    name: String,
    config: ResNetConfig,
    stem: Vec<(Conv2d, Option<BatchNorm2d>)>,
    bn1: BatchNorm2d,
    stages: Vec<Vec<ResBlock>>,
    fc: Linear,
    entries: Vec<Entry>,
    /// Mixed precision ([`ResNet::set_autocast`]): the activations' dtype.
    autocast: Option<candle_core::DType>,
    /// The folded network of the fused eval forward (fused.rs), built at first use.
    fused: std::sync::Mutex<fused::State>,
}

impl ResNet {
    /// Build `config` on `device` with fresh weights from `seed`.
    pub fn new(config: &ResNetConfig, device: &Device, seed: u64) -> Result<Self> {
        Self::build(config, ParamBuilder::new(device, seed))
    }

    /// The preset `name` with `num_classes` outputs, fresh weights from `seed`.
    pub fn from_preset(name: &str, num_classes: usize, device: &Device, seed: u64) -> Result<Self> {
        let config = ResNetConfig {
            num_classes,
            ..preset(name)?.config
        };
        let mut m = Self::new(&config, device, seed)?;
        m.name = name.to_string();
        Ok(m)
    }

    /// The preset `name` for inference in `dtype` (teachers: bf16/f16 on a GPU); the
    /// weights to load are converted to `dtype` by [`ResNet::load_weights`].
    pub fn from_preset_as(
        name: &str,
        num_classes: usize,
        device: &Device,
        dtype: candle_core::DType,
    ) -> Result<Self> {
        let config = ResNetConfig {
            num_classes,
            ..preset(name)?.config
        };
        let pb = ParamBuilder::new(device, 0);
        // bf16 on the CPU: f32 weights, convolutions in bf16 products (ops::bf16), as
        // PyTorch's CPU autocast; candle's CPU convolution has no bf16 kernel
        let pb = if device.is_cpu() && dtype == candle_core::DType::BF16 {
            if !crate::ops::bf16::available() {
                return Err(crate::error::ModelError::Unsupported(
                    "bf16 on the CPU needs AVX512-BF16, which this CPU lacks (use f32)".into(),
                ));
            }
            pb.with_conv_precision(crate::ops::Precision::Bf16)
        } else {
            pb.with_dtype(dtype)
        };
        let mut m = Self::build(&config, pb)?;
        m.name = name.to_string();
        Ok(m)
    }

    /// The dtype of its parameters (f32 for a CPU bf16 model, whose convolutions
    /// multiply in bf16 over f32 weights).
    pub fn dtype(&self) -> candle_core::DType {
        self.entries()
            .iter()
            .find(|e| e.kind == crate::Kind::Param)
            .map(|e| e.var.dtype())
            .unwrap_or(candle_core::DType::F32)
    }

    /// The preset name (`custom` when built from a config).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The state-dict names and shapes `config` has, without allocating its weights.
    pub fn layout(config: &ResNetConfig) -> Result<Vec<(String, Vec<usize>)>> {
        let m = Self::build(config, ParamBuilder::dry(&Device::Cpu))?;
        Ok(m.entries.into_iter().map(|e| (e.name, e.shape)).collect())
    }

    /// Every BatchNorm of the network.
    fn batch_norms(&self) -> Vec<&BatchNorm2d> {
        let mut all: Vec<&BatchNorm2d> = self.stem.iter().filter_map(|(_, b)| b.as_ref()).collect();
        all.push(&self.bn1);
        for block in self.stages.iter().flatten() {
            all.extend(block.convs.iter().map(|(_, b)| b));
            match &block.downsample {
                Some(Downsample::Conv(_, b)) | Some(Downsample::Avg { bn: b, .. }) => all.push(b),
                None => {}
            }
        }
        all
    }

    /// Freeze every BatchNorm's eval affine ([`BatchNorm2d::freeze`]): for a teacher
    /// whose weights are loaded, so that eval forwards stop recomputing it. A later
    /// [`ResNet::load_weights`] thaws them.
    pub fn freeze_batch_norms(&self) -> Result<()> {
        self.forget_fused();
        self.batch_norms().iter().try_for_each(|b| b.freeze())
    }

    /// Drop the fused forward's fold (the weights or their freezing change).
    fn forget_fused(&self) {
        *self.fused.lock().unwrap_or_else(|p| p.into_inner()) = fused::State::Unbuilt;
    }

    /// Load a timm state dict (safetensors or `.pth`) strictly; see [`LoadOptions`].
    /// Returns the names kept fresh (the classifier under `fresh_classifier`).
    pub fn load_weights(&self, path: &Path, opts: LoadOptions) -> Result<Vec<String>> {
        self.load_weights_rows(path, opts, None)
    }

    /// [`ResNet::load_weights`] for a dataset of `classes`: a file that records the same
    /// classes in another order, or more classes ([`TrainedOn`], `meal-student train`'s
    /// weights), has its classifier's rows for the dataset's classes taken by name. Also
    /// returns how the classes stood ([`ClassOrder::Other`] is the caller's to refuse or
    /// warn about).
    pub fn load_weights_for(
        &self,
        path: &Path,
        opts: LoadOptions,
        classes: &[String],
    ) -> Result<(Vec<String>, ClassOrder)> {
        let order = TrainedOn::of(path)?.order_of(classes);
        Ok((self.load_weights_rows(path, opts, order.rows())?, order))
    }

    /// [`ResNet::load_weights_for`] with the classes already placed: `order` is the
    /// weights' [`TrainedOn::order_of`] the data's classes (from a class list given for
    /// weights that record none, as timm's).
    pub fn load_weights_ordered(
        &self,
        path: &Path,
        opts: LoadOptions,
        order: &ClassOrder,
    ) -> Result<Vec<String>> {
        self.load_weights_rows(path, opts, order.rows())
    }

    fn load_weights_rows(
        &self,
        path: &Path,
        opts: LoadOptions,
        rows: Option<(&[usize], usize)>,
    ) -> Result<Vec<String>> {
        self.batch_norms().iter().for_each(|b| b.thaw());
        self.forget_fused();
        let device = self.entries[0].var.device().clone();
        let mut sd = read_state_dict(path, &device)?;
        if let Some((rows, of)) = rows {
            // a class list of another length than the classifier's rows names other logits
            if let Some(n) = sd.get("fc.weight").and_then(|w| w.dims().first().copied()) {
                if n != of {
                    return Err(ModelError::Mismatch {
                        path: path.to_path_buf(),
                        arch: self.name.clone(),
                        details: format!(
                            " its classifier (fc.weight) has {n} rows and its class list names {of}"
                        ),
                    });
                }
            }
            permute_classifier(&mut sd, rows, of)?;
        }
        load_into(&self.entries, &sd, opts, path, &self.name).map_err(|e| match e {
            ModelError::Mismatch {
                path,
                arch,
                mut details,
            } => {
                details.push_str(&fitting_hint(&sd, &arch));
                ModelError::Mismatch {
                    path,
                    arch,
                    details,
                }
            }
            e => e,
        })
    }

    /// Save the state dict in timm's names as safetensors (atomic write).
    pub fn save(&self, path: &Path) -> Result<()> {
        save_safetensors(&self.entries, path)
    }

    /// [`Self::save`] with `metadata` in the file's header (the classes trained on).
    pub fn save_with(&self, path: &Path, metadata: HashMap<String, String>) -> Result<()> {
        crate::weights::save_safetensors_with(&self.entries, path, Some(metadata))
    }

    fn build(config: &ResNetConfig, mut pb: ParamBuilder) -> Result<Self> {
        let c = config;
        if c.layers.len() != c.channels.len() || c.layers.is_empty() || c.layers.contains(&0) {
            return Err(ModelError::Config(
                "layers and channels need one non-zero entry per stage".into(),
            ));
        }
        if c.block == Block::Basic && (c.cardinality != 1 || c.base_width != 64) {
            return Err(ModelError::Config(
                "BasicBlock supports cardinality 1 and base_width 64 only (as timm)".into(),
            ));
        }
        if c.block_reduce_first == 0 || c.cardinality == 0 || c.num_classes == 0 {
            return Err(ModelError::Config(
                "block_reduce_first, cardinality and num_classes must be >= 1".into(),
            ));
        }
        let deep = c.stem != Stem::Plain;
        let inplanes0 = if deep { c.stem_width * 2 } else { 64 };
        let mut stem = Vec::new();
        if deep {
            let (s0, s1) = if c.stem == Stem::DeepTiered {
                (3 * (c.stem_width / 4), c.stem_width)
            } else {
                (c.stem_width, c.stem_width)
            };
            stem.push((
                Conv2d::new(&mut pb, "conv1.0", c.in_chans, s0, ConvConfig::new(3, 2))?,
                Some(BatchNorm2d::new(&mut pb, "conv1.1", s0)?),
            ));
            stem.push((
                Conv2d::new(&mut pb, "conv1.3", s0, s1, ConvConfig::new(3, 1))?,
                Some(BatchNorm2d::new(&mut pb, "conv1.4", s1)?),
            ));
            stem.push((
                Conv2d::new(&mut pb, "conv1.6", s1, inplanes0, ConvConfig::new(3, 1))?,
                None,
            ));
        } else {
            stem.push((
                Conv2d::new(
                    &mut pb,
                    "conv1",
                    c.in_chans,
                    inplanes0,
                    ConvConfig::new(7, 2),
                )?,
                None,
            ));
        }
        let bn1 = BatchNorm2d::new(&mut pb, "bn1", inplanes0)?;
        let mut inplanes = inplanes0;
        let mut stages = Vec::new();
        for (si, (&planes, &n)) in c.channels.iter().zip(&c.layers).enumerate() {
            let stride = if si == 0 { 1 } else { 2 };
            let out = planes * c.block.expansion();
            let stage = pb.scope(format!("layer{}", si + 1), |pb| {
                let mut blocks = Vec::new();
                for bi in 0..n {
                    let s = if bi == 0 { stride } else { 1 };
                    let down = bi == 0 && (stride != 1 || inplanes != out);
                    let blk = pb.scope(bi, |pb| build_block(pb, c, inplanes, planes, s, down))?;
                    blocks.push(blk);
                    inplanes = out;
                }
                Ok(blocks)
            })?;
            stages.push(stage);
        }
        let fc = Linear::new(&mut pb, "fc", inplanes, c.num_classes)?;
        Ok(ResNet {
            name: "custom".into(),
            config: c.clone(),
            stem,
            bn1,
            stages,
            fc,
            entries: pb.finish(),
            autocast: None,
            fused: Default::default(),
        })
    }

    /// The configuration built.
    pub fn config(&self) -> &ResNetConfig {
        &self.config
    }

    /// Mixed precision as PyTorch's autocast runs a ResNet (`Some(DType::BF16)`): the
    /// input and every activation in that dtype, the f32 weights cast to it at each use
    /// (their gradients come back in f32), BatchNorm statistics and the running ones in
    /// f32/f64, the pooled features and the classifier in the weights' f32, so the
    /// logits and the loss are f32. `None` (the default): all in the weights' dtype.
    /// On CUDA every layer of the ResNet-50 step then runs our bf16 ops (tensor-core
    /// GEMMs); elsewhere candle's generic ops run it.
    pub fn set_autocast(&mut self, dtype: Option<candle_core::DType>) {
        self.autocast = dtype;
    }

    /// The dtype of [`ResNet::set_autocast`].
    pub fn autocast(&self) -> Option<candle_core::DType> {
        self.autocast
    }

    /// Logits `[N, num_classes]` of an NCHW batch. `train`: BatchNorm on batch
    /// statistics (and running-stat update) with an autograd graph; otherwise running
    /// statistics and detached weights (no graph).
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        // a frozen teacher on a GPU with cuDNN: fused convolutions in NHWC (fused.rs)
        if !train {
            if let Some(y) = self.forward_fused_if_on(x)? {
                return Ok(y);
            }
        }
        let last = self.stem.len() - 1;
        let mut y = match self.autocast {
            Some(dt) => x.to_dtype(dt)?,
            None => x.clone(),
        };
        for (i, (conv, bn)) in self.stem.iter().enumerate() {
            y = match bn {
                Some(bn) => conv.forward_bn(&y, bn, true, train)?,
                None if i == last => conv.forward_bn(&y, &self.bn1, true, train)?,
                None => conv.forward(&y, train)?,
            };
            if i == last && bn.is_some() {
                y = self.bn1.forward_relu(&y, train)?;
            }
        }
        y = max_pool_3x3_s2_p1(&y)?;
        for stage in &self.stages {
            for b in stage {
                y = b.forward(&y, train)?;
            }
        }
        // mixed precision: the pooled features and the classifier in the weights' dtype
        let y = y.to_dtype(self.fc.dtype())?;
        self.fc.forward(&global_avg_pool(&y)?, train)
    }

    /// Every tensor in timm's state-dict order.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }
}

fn build_block(
    pb: &mut ParamBuilder,
    c: &ResNetConfig,
    inplanes: usize,
    planes: usize,
    stride: usize,
    downsample: bool,
) -> Result<ResBlock> {
    let out = planes * c.block.expansion();
    let convs = match c.block {
        Block::Basic => {
            let first = planes / c.block_reduce_first;
            vec![
                (
                    Conv2d::new(pb, "conv1", inplanes, first, ConvConfig::new(3, stride))?,
                    BatchNorm2d::new(pb, "bn1", first)?,
                ),
                (
                    Conv2d::new(pb, "conv2", first, out, ConvConfig::new(3, 1))?,
                    BatchNorm2d::new(pb, "bn2", out)?,
                ),
            ]
        }
        Block::Bottleneck => {
            let width = (planes * c.base_width / 64) * c.cardinality;
            let first = width / c.block_reduce_first;
            vec![
                (
                    Conv2d::new(pb, "conv1", inplanes, first, ConvConfig::new(1, 1))?,
                    BatchNorm2d::new(pb, "bn1", first)?,
                ),
                (
                    Conv2d::new(
                        pb,
                        "conv2",
                        first,
                        width,
                        ConvConfig::new(3, stride).groups(c.cardinality),
                    )?,
                    BatchNorm2d::new(pb, "bn2", width)?,
                ),
                (
                    Conv2d::new(pb, "conv3", width, out, ConvConfig::new(1, 1))?,
                    BatchNorm2d::new(pb, "bn3", out)?,
                ),
            ]
        }
    };
    let se = if c.se {
        Some(SqueezeExcite::new(pb, "se", out)?)
    } else {
        None
    };
    let downsample = if !downsample {
        None
    } else if c.avg_down {
        Some(Downsample::Avg {
            pool: stride != 1,
            conv: Conv2d::new(pb, "downsample.1", inplanes, out, ConvConfig::new(1, 1))?,
            bn: BatchNorm2d::new(pb, "downsample.2", out)?,
        })
    } else {
        let k = if stride == 1 { 1 } else { c.down_kernel_size };
        Some(Downsample::Conv(
            Conv2d::new(
                pb,
                "downsample.0",
                inplanes,
                out,
                ConvConfig::new(k, stride),
            )?,
            BatchNorm2d::new(pb, "downsample.1", out)?,
        ))
    };
    Ok(ResBlock {
        convs,
        se,
        downsample,
    })
}

impl candle_core::ModuleT for ResNet {
    fn forward_t(&self, xs: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        ResNet::forward_t(self, xs, train).map_err(candle_core::Error::wrap)
    }
}

/// The presets whose architecture `sd` is, whatever its class count: their state-dict
/// names and shapes, the classifier's rows aside, are the file's.
pub fn fitting_presets(sd: &HashMap<String, Tensor>) -> Vec<&'static str> {
    let counter = |n: &str| n.ends_with("num_batches_tracked");
    let classes = sd.get("fc.weight").and_then(|t| t.dims().first().copied());
    presets()
        .into_iter()
        .filter(|p| {
            let config = ResNetConfig {
                num_classes: classes.unwrap_or(p.config.num_classes),
                ..p.config.clone()
            };
            let Ok(layout) = ResNet::layout(&config) else {
                return false;
            };
            let wanted = layout.iter().filter(|(n, _)| !counter(n)).count();
            wanted == sd.keys().filter(|n| !counter(n)).count()
                && layout.iter().all(|(n, shape)| {
                    counter(n) || sd.get(n).is_some_and(|t| t.dims() == shape.as_slice())
                })
        })
        .map(|p| p.name)
        .collect()
}

/// What a mismatch adds: the presets the file is (`--arch` named another), or that it
/// is none of them.
fn fitting_hint(sd: &HashMap<String, Tensor>, arch: &str) -> String {
    match fitting_presets(sd).as_slice() {
        [] => "\n  the file is none of the presets' architectures (another model family, or \
               a model changed by hand?)"
            .to_string(),
        fits if fits.contains(&arch) => String::new(),
        fits => format!(
            "\n  the file's architecture is {}'s, not {arch}'s",
            fits.join("'s or ")
        ),
    }
}
