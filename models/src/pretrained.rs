//! The input configuration a model expects (timm's `pretrained_cfg`): size, resize
//! filter, `crop_pct` for the eval transform, mean/std. Each preset carries one in the
//! preset table (crate::resnet::presets), as timm keeps `default_cfgs` beside its
//! model functions.
//!
//! Figures from timm 1.0's default pretrained tags (`timm.models.resnet.default_cfgs`,
//! `timm.data.resolve_data_config`): the gluon tags of the MEAL V2 teachers
//! (`resnet152s.gluon_in1k`, `senet154.gluon_in1k`) are 224 px, bicubic, crop_pct 0.875;
//! the `a1_in1k` tags of resnet18/34/50/101/152 and the `*_d` variants are 224 px,
//! bicubic, crop_pct 0.95. The demo presets are ours: 64 px, bilinear, 0.875.

use meal_data::{CropSpec, Filter, Normalize};
use serde::{Deserialize, Serialize};

use crate::error::Result;

/// What a model's inputs look like.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct InputConfig {
    /// Side of the square input.
    pub size: u32,
    /// Resize filter.
    pub filter: Filter,
    /// Fraction of the resized image the eval centre crop keeps: the shorter side is
    /// resized to `floor(size / crop_pct)` first (timm `transforms_imagenet_eval`).
    pub crop_pct: f64,
    /// Normalisation.
    pub normalize: Normalize,
}

impl InputConfig {
    /// The crop spec of this config at side `size` (a `--res` override keeps the
    /// filter, crop_pct and normalisation).
    pub fn spec_at(&self, size: u32) -> Result<CropSpec> {
        Ok(CropSpec::new(size, self.filter, self.normalize)?.with_crop_pct(self.crop_pct)?)
    }
}

/// Input side of the demo presets.
pub const DEMO_INPUT_SIZE: u32 = 64;

/// timm's gluon tags (the MEAL V2 teachers): 224 px, bicubic, crop_pct 0.875.
pub const GLUON: InputConfig = InputConfig {
    size: 224,
    filter: Filter::Bicubic,
    crop_pct: 0.875,
    normalize: Normalize::IMAGENET,
};

/// timm's `a1_in1k` tags (resnet18..152 and the `-d` variants): 224 px, bicubic,
/// crop_pct 0.95.
pub const TIMM_A1: InputConfig = InputConfig {
    crop_pct: 0.95,
    ..GLUON
};

/// The demo presets: 64 px, bilinear, crop_pct 0.875.
pub const DEMO: InputConfig = InputConfig {
    size: DEMO_INPUT_SIZE,
    filter: Filter::Bilinear,
    crop_pct: 0.875,
    normalize: Normalize::IMAGENET,
};

/// The input configuration of preset `arch`; an unknown name is an error listing the
/// known ones.
pub fn input_config(arch: &str) -> Result<InputConfig> {
    Ok(crate::resnet::preset(arch)?.input)
}
