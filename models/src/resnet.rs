//! timm's ResNet family (timm/models/resnet.py) in candle: one builder, named presets
//! as data, timm's state-dict names, train and eval modes.

use std::path::Path;

use candle_core::{Device, Tensor};

use super::layers::{
    avg_pool_2x2_ceil, global_avg_pool, max_pool_3x3_s2_p1, BatchNorm2d, Conv2d, ConvConfig,
    Linear, SqueezeExcite,
};
use super::params::{Entry, ParamBuilder};
use super::weights::{load_into, read_state_dict, save_safetensors, LoadOptions};
use crate::error::{ModelError, Result};
use crate::pretrained::InputConfig;

/// Residual block type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Block {
    /// Two 3x3 convs, expansion 1 (`BasicBlock`).
    Basic,
    /// 1x1, grouped 3x3, 1x1, expansion 4 (`Bottleneck`).
    Bottleneck,
}

impl Block {
    /// Output channels per `planes`.
    pub fn expansion(self) -> usize {
        match self {
            Block::Basic => 1,
            Block::Bottleneck => 4,
        }
    }
}

/// Stem type (timm's `stem_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stem {
    /// `''`: one 7x7 stride-2 conv to 64 channels.
    Plain,
    /// `'deep'`: three 3x3 convs, widths `stem_width, stem_width, 2 * stem_width`.
    Deep,
    /// `'deep_tiered'`: widths `3 * (stem_width / 4), stem_width, 2 * stem_width`.
    DeepTiered,
}

/// The arguments of timm's `ResNet` that this builder supports.
#[derive(Clone, Debug, PartialEq)]
pub struct ResNetConfig {
    /// Block type of every stage.
    pub block: Block,
    /// Blocks per stage.
    pub layers: Vec<usize>,
    /// `planes` per stage (timm default 64, 128, 256, 512).
    pub channels: Vec<usize>,
    /// Groups of the bottleneck 3x3 conv.
    pub cardinality: usize,
    /// Bottleneck width factor: `width = floor(planes * base_width / 64) * cardinality`.
    pub base_width: usize,
    /// Stem width.
    pub stem_width: usize,
    /// Stem type.
    pub stem: Stem,
    /// Average-pool downsampling in the shortcut (the "-d" variants).
    pub avg_down: bool,
    /// Kernel of the shortcut conv when it strides (3 for senets).
    pub down_kernel_size: usize,
    /// First conv width reduction of each block (2 for senets).
    pub block_reduce_first: usize,
    /// Squeeze-excite after the last BN of each block (`attn_layer='se'`).
    pub se: bool,
    /// Classifier outputs.
    pub num_classes: usize,
    /// Input channels.
    pub in_chans: usize,
}

impl Default for ResNetConfig {
    fn default() -> Self {
        ResNetConfig {
            block: Block::Bottleneck,
            layers: vec![3, 4, 6, 3],
            channels: vec![64, 128, 256, 512],
            cardinality: 1,
            base_width: 64,
            stem_width: 64,
            stem: Stem::Plain,
            avg_down: false,
            down_kernel_size: 1,
            block_reduce_first: 1,
            se: false,
            num_classes: 1000,
            in_chans: 3,
        }
    }
}

/// One named model: its architecture and the input config of its weights, side by side
/// as in timm's `default_cfgs` (timm/models/resnet.py).
#[derive(Clone, Debug, PartialEq)]
pub struct Preset {
    /// The name (`--arch`, `--teacher ARCH=...`).
    pub name: &'static str,
    /// The architecture.
    pub config: ResNetConfig,
    /// What its inputs look like (train and eval transforms).
    pub input: InputConfig,
}

/// The named presets: timm's model functions' arguments (timm/models/resnet.py), plus
/// small ones for tests and the demo (`demo_*`: channels 16..128, deep stem), each with
/// its input config (crate::pretrained).
pub fn presets() -> Vec<Preset> {
    use crate::pretrained::{DEMO, GLUON, TIMM_A1};
    use Block::*;
    let d = ResNetConfig::default;
    let basic = |layers: Vec<usize>| ResNetConfig {
        block: Basic,
        layers,
        ..d()
    };
    let bott = |layers: Vec<usize>| ResNetConfig { layers, ..d() };
    let dstem = |c: ResNetConfig, w: usize| ResNetConfig {
        stem_width: w,
        stem: Stem::Deep,
        avg_down: true,
        ..c
    };
    let senet = ResNetConfig {
        layers: vec![3, 8, 36, 3],
        cardinality: 64,
        base_width: 4,
        stem: Stem::Deep,
        down_kernel_size: 3,
        block_reduce_first: 2,
        se: true,
        ..d()
    };
    let demo = |block, layers: Vec<usize>, channels: Vec<usize>| ResNetConfig {
        block,
        layers,
        channels,
        stem_width: 16,
        stem: Stem::Deep,
        num_classes: 10,
        ..d()
    };
    [
        ("resnet18", TIMM_A1, basic(vec![2, 2, 2, 2])),
        ("resnet18d", TIMM_A1, dstem(basic(vec![2, 2, 2, 2]), 32)),
        ("resnet26", TIMM_A1, bott(vec![2, 2, 2, 2])),
        ("resnet34", TIMM_A1, basic(vec![3, 4, 6, 3])),
        ("resnet50", TIMM_A1, bott(vec![3, 4, 6, 3])),
        ("resnet50d", TIMM_A1, dstem(bott(vec![3, 4, 6, 3]), 32)),
        (
            "resnet50t",
            TIMM_A1,
            ResNetConfig {
                stem: Stem::DeepTiered,
                ..dstem(bott(vec![3, 4, 6, 3]), 32)
            },
        ),
        ("resnet101", TIMM_A1, bott(vec![3, 4, 23, 3])),
        ("resnet152", TIMM_A1, bott(vec![3, 8, 36, 3])),
        ("resnet152d", TIMM_A1, dstem(bott(vec![3, 8, 36, 3]), 32)),
        (
            "resnet152s",
            GLUON,
            ResNetConfig {
                stem: Stem::Deep,
                ..bott(vec![3, 8, 36, 3])
            },
        ),
        (
            "resnext50_32x4d",
            GLUON,
            ResNetConfig {
                cardinality: 32,
                base_width: 4,
                ..bott(vec![3, 4, 6, 3])
            },
        ),
        (
            "seresnet50",
            GLUON,
            ResNetConfig {
                se: true,
                ..bott(vec![3, 4, 6, 3])
            },
        ),
        ("senet154", GLUON, senet),
        (
            "wide_resnet50_2",
            GLUON,
            ResNetConfig {
                base_width: 128,
                ..bott(vec![3, 4, 6, 3])
            },
        ),
        // small members for tests and the demo (not timm models; same builder)
        (
            "demo_resnet10",
            DEMO,
            demo(Basic, vec![1, 1, 1, 1], vec![16, 32, 64, 128]),
        ),
        (
            "demo_resnet14",
            DEMO,
            demo(Bottleneck, vec![1, 1, 1, 1], vec![16, 32, 64, 128]),
        ),
        (
            "demo_tiny",
            DEMO,
            demo(Basic, vec![1, 1, 1, 1], vec![8, 8, 16, 16]),
        ),
    ]
    .into_iter()
    .map(|(name, input, config)| Preset {
        name,
        config,
        input,
    })
    .collect()
}

/// The preset `name` (its architecture and input config).
pub fn preset(name: &str) -> Result<Preset> {
    let all = presets();
    all.iter()
        .find(|p| p.name == name)
        .cloned()
        .ok_or_else(|| ModelError::UnknownArch {
            name: name.to_string(),
            known: all.iter().map(|p| p.name).collect::<Vec<_>>().join(", "),
        })
}

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
        self.batch_norms().iter().try_for_each(|b| b.freeze())
    }

    /// Load a timm state dict (safetensors or `.pth`) strictly; see [`LoadOptions`].
    /// Returns the names kept fresh (the classifier under `fresh_classifier`).
    pub fn load_weights(&self, path: &Path, opts: LoadOptions) -> Result<Vec<String>> {
        self.batch_norms().iter().for_each(|b| b.thaw());
        let device = self.entries[0].var.device().clone();
        let sd = read_state_dict(path, &device)?;
        load_into(&self.entries, &sd, opts, path, &self.name)
    }

    /// Save the state dict in timm's names as safetensors (atomic write).
    pub fn save(&self, path: &Path) -> Result<()> {
        save_safetensors(&self.entries, path)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{cosine, values};

    fn bits(t: &Tensor) -> Vec<u32> {
        let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        v.iter().map(|v| v.to_bits()).collect()
    }

    /// `max|a - b| / max|b|`.
    fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
        let (a, b) = (values(a), values(b));
        let scale = b.iter().fold(f32::MIN_POSITIVE, |m, v| m.max(v.abs()));
        let worst = a
            .iter()
            .zip(&b)
            .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        worst / scale
    }

    /// Mixed precision (`set_autocast`) wires the network as PyTorch's autocast: half
    /// precision activations, f32 logits and f32 gradients for the f32 weights, running
    /// statistics updated; its logits and gradients follow the f32 network's within
    /// half precision. Here in f16 through candle's generic ops (candle's CPU matmul has
    /// no bf16); the layers' wiring is the same for bf16, which runs our ops on a GPU
    /// (ops/cuda/tests.rs).
    #[test]
    fn mixed_precision_follows_the_f32_network() {
        use candle_core::DType;
        let dev = Device::Cpu;
        // fixed inputs (candle's CPU randn is not seeded)
        let fixed = |n: usize, k: f32| -> Vec<f32> {
            (0..n)
                .map(|i| ((i as f32 * k).sin() * 1.7).fract() * 2.0)
                .collect()
        };
        let x = Tensor::from_vec(fixed(4 * 3 * 32 * 32, 0.37), (4, 3, 32, 32), &dev).unwrap();
        let r = Tensor::from_vec(fixed(40, 1.3), (4, 10), &dev).unwrap();
        let step = |amp: bool| {
            let mut m = ResNet::from_preset("demo_resnet10", 10, &dev, 0).unwrap();
            m.set_autocast(amp.then_some(DType::F16));
            let logits = m.forward_t(&x, true).unwrap();
            let grads = (&logits * &r)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let grad_of = |name: &str| {
                // the stem's first convolution, or the entry of that name
                let e = m.entries().iter().find(|e| match name {
                    "stem" => e.shape.len() == 4,
                    _ => e.name == name,
                });
                let e = e.unwrap_or_else(|| panic!("no entry {name}"));
                grads.get(e.var.as_tensor()).unwrap().clone()
            };
            let running = m
                .entries()
                .iter()
                .find(|e| e.name.ends_with("running_mean"))
                .unwrap()
                .var
                .as_tensor()
                .clone();
            (logits, grad_of("stem"), grad_of("fc.weight"), running)
        };
        let (l32, c32, f32_, r32) = step(false);
        let (l16, c16, f16, r16) = step(true);
        assert_eq!(l16.dtype(), DType::F32, "logits in f32");
        assert_eq!(c16.dtype(), DType::F32, "the f32 weights' gradients in f32");
        assert_eq!(r16.dtype(), DType::F32, "running statistics stay f32");
        // candle's CPU convolutions sum in f16 (up to ~600 products per output here), so
        // the errors are those of f16 sums, not of f16 values: the values within a few
        // percent, the gradients' directions within a few degrees
        for (what, a, b, tol) in [
            ("logits", &l16, &l32, 0.05),
            ("running mean", &r16, &r32, 0.05),
        ] {
            let e = rel_err(a, b);
            assert!(e < tol, "{what}: relative error {e} (tolerance {tol})");
        }
        // (the stem's weight gradient sums 4096 products per weight in f16: its error
        // is the largest)
        for (what, a, b, min) in [
            ("stem gradient", &c16, &c32, 0.95),
            ("fc gradient", &f16, &f32_, 0.999),
        ] {
            let c = cosine(a, b);
            assert!(c > min, "{what}: cosine {c} with the f32 network's ({min})");
        }
        // and it is not the f32 network itself: the activations were rounded
        assert!(rel_err(&l16, &l32) > 0.0, "autocast changed nothing");
    }

    /// Frozen BatchNorms give the unfrozen eval forward bit for bit, keep their affine
    /// while the running statistics move on (train mode ignores them), and a weight
    /// load thaws them.
    #[test]
    fn frozen_batch_norms_give_the_same_eval_forward_until_a_load() {
        let dev = Device::Cpu;
        let m = ResNet::from_preset("demo_resnet10", 10, &dev, 0).unwrap();
        let x = Tensor::randn(0f32, 1.0, (2, 3, 32, 32), &dev).unwrap();
        // move the running statistics off their initial values
        m.forward_t(&x, true).unwrap();
        let plain = m.forward_t(&x, false).unwrap();
        m.freeze_batch_norms().unwrap();
        let frozen = m.forward_t(&x, false).unwrap();
        assert_eq!(bits(&frozen), bits(&plain));
        let dir = tempfile::tempdir().unwrap();
        let saved = dir.path().join("m.safetensors");
        m.save(&saved).unwrap();
        // a train step moves the statistics; the frozen affine stays
        m.forward_t(&x.affine(2.0, 1.0).unwrap(), true).unwrap();
        assert_eq!(bits(&m.forward_t(&x, false).unwrap()), bits(&plain));
        // the saved weights loaded back: thawed, the saved network's forward again...
        m.load_weights(&saved, LoadOptions::default()).unwrap();
        assert_eq!(bits(&m.forward_t(&x, false).unwrap()), bits(&plain));
        // ...and live: the next train step's statistics show in the eval forward
        m.forward_t(&x.affine(2.0, 1.0).unwrap(), true).unwrap();
        assert_ne!(bits(&m.forward_t(&x, false).unwrap()), bits(&plain));
    }
}
