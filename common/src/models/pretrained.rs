//! The input configuration a model expects (timm's `pretrained_cfg`): size, resize
//! filter, `crop_pct` for the eval transform, mean/std.
//!
//! Figures from timm 1.0's default pretrained tags (`timm.models.resnet.default_cfgs`,
//! `timm.data.resolve_data_config`): the gluon tags of the MEAL V2 teachers
//! (`resnet152s.gluon_in1k`, `senet154.gluon_in1k`) are 224 px, bicubic, crop_pct 0.875;
//! the `a1_in1k` tags of resnet18/34/50/101/152 and the `*_d` variants are 224 px,
//! bicubic, crop_pct 0.95. The demo presets are ours: 64 px, bilinear, 0.875.

use meal_data::{Filter, Normalize};
use serde::{Deserialize, Serialize};

/// What a model's inputs look like.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct InputConfig {
    /// Side of the square input.
    pub size: u32,
    /// Resize filter.
    pub filter: Filter,
    /// Fraction of the resized image the eval centre crop keeps.
    pub crop_pct: f64,
    /// Normalisation.
    pub normalize: Normalize,
}

/// Input side of the demo presets.
pub const DEMO_INPUT_SIZE: u32 = 64;

/// The default input configuration of preset `arch` (see the module docs).
pub fn input_config(arch: &str) -> InputConfig {
    let (size, filter, crop_pct) = match arch {
        a if a.starts_with("demo_") => (DEMO_INPUT_SIZE, Filter::Bilinear, 0.875),
        "resnet152s" | "senet154" | "resnext50_32x4d" | "seresnet50" | "wide_resnet50_2" => {
            (224, Filter::Bicubic, 0.875)
        }
        _ => (224, Filter::Bicubic, 0.95),
    };
    InputConfig {
        size,
        filter,
        crop_pct,
        normalize: Normalize::default(),
    }
}
