//! The ResNet family's architectures: the block and stem types, the builder's config and
//! the named presets (timm's model names), as data.

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
