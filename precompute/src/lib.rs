//! `meal-precompute`, stage 1 of the pipeline: the teacher ensemble run once over a fixed
//! crop pool per image, its mean softmax written to a soft-label store (docs/FORMAT.md).
//!
//! - [`config`]: flags, TOML config file, defaults.
//! - [`run`]: the job (decode once, crops, ensemble, shards; resume, workers).
//! - [`report`]: what a run reports (`report.json`).
//! - [`inspect`]: `inspect` and `verify` of a store.
//! - [`hints`]: what errors add for the user (a dataset's flag, a read-only `--out`).

pub mod config;
pub mod hints;
pub mod inspect;
pub mod report;
pub mod run;
