//! `meal-student`, stage 2 of the pipeline: MEAL V2 training of a student (and its
//! discriminator) against the soft labels of a label store, replaying the stored crops;
//! also hard-label training (teachers, baselines) and evaluation.
//!
//! - [`config`]: flags, TOML config, MEAL V2 defaults.
//! - [`plan`]: which stored crops each pass replays.
//! - [`train`]: the step, the loop, checkpoints and resume.
//! - [`eval`]: top-1 / top-5 with the eval transform.
//! - [`logs`]: metrics.jsonl, summary.csv, curves.png.

pub mod config;
pub mod eval;
pub mod logs;
pub mod plan;
pub mod train;
