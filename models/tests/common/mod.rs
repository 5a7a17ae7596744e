//! Helpers shared by meal-models's integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor};
use meal_models::{Block, ResNetConfig, Stem};

/// The committed fixtures directory.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// max |t| over all elements, in f64.
pub fn max_abs(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

/// max |a - b| / max(max |b|, 1e-6)
pub fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
    let diff = max_abs(&(a - b).unwrap());
    (diff / max_abs(b).max(1e-6)) as f32
}

/// The configs of the fixture cases, as the script builds them with timm's ResNet.
pub fn case_config(name: &str) -> ResNetConfig {
    let d = ResNetConfig::default();
    match name {
        "basic_plain" => ResNetConfig {
            block: Block::Basic,
            layers: vec![2, 1, 1, 1],
            channels: vec![8, 16, 16, 32],
            num_classes: 10,
            ..d
        },
        "bottleneck_deep_avgdown" => ResNetConfig {
            layers: vec![1, 2, 1, 1],
            channels: vec![8, 8, 16, 16],
            stem_width: 8,
            stem: Stem::Deep,
            avg_down: true,
            num_classes: 10,
            ..d
        },
        "senet_like" => ResNetConfig {
            layers: vec![1, 1, 2, 1],
            channels: vec![16, 16, 32, 32],
            cardinality: 4,
            base_width: 16,
            stem_width: 8,
            stem: Stem::Deep,
            down_kernel_size: 3,
            block_reduce_first: 2,
            se: true,
            num_classes: 10,
            ..d
        },
        "basic_tiered_se" => ResNetConfig {
            block: Block::Basic,
            layers: vec![1, 1, 1, 1],
            channels: vec![8, 16, 16, 16],
            stem_width: 16,
            stem: Stem::DeepTiered,
            avg_down: true,
            se: true,
            num_classes: 7,
            ..d
        },
        _ => unreachable!(),
    }
}
