//! Helpers shared by the data crate's integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use meal_data::{decode_file, RgbImage};

/// The committed fixtures directory.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Read a fixture file as JSON.
pub fn json(name: &str) -> serde_json::Value {
    let p = fixtures().join(name);
    let s = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&s).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Decode a fixture image with our decoder.
pub fn image(name: &str) -> RgbImage {
    let p = fixtures().join(name);
    decode_file(&p).unwrap_or_else(|e| panic!("{e}"))
}

/// Mean and max absolute difference of two equally sized byte buffers.
pub fn diff(a: &[u8], b: &[u8]) -> (f64, u8) {
    assert_eq!(a.len(), b.len(), "sizes differ");
    let mut sum = 0u64;
    let mut max = 0u8;
    for (x, y) in a.iter().zip(b) {
        let d = x.abs_diff(*y);
        sum += d as u64;
        max = max.max(d);
    }
    (sum as f64 / a.len() as f64, max)
}

/// A tiny synthetic ImageFolder (train split only) under `dir`: 10 classes x `per_class`.
pub fn tiny_dataset(dir: &Path, per_class: u32) -> std::sync::Arc<meal_data::Dataset> {
    let cfg = meal_data::synth::SynthConfig {
        seed: 5,
        train_per_class: per_class,
        val_per_class: 0,
        min_side: 24,
        max_side: 40,
        quality: 90,
    };
    meal_data::synth::generate(dir, &cfg, || {}).unwrap();
    std::sync::Arc::new(
        meal_data::Dataset::open(&dir.join("train"), meal_data::LinkPolicy::StayInside).unwrap(),
    )
}
