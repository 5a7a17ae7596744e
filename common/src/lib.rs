//! `meal-common`: what both MEAL V2 stages share.
//!
//! - [`device`]: `cpu` / `cuda:N` selection.
//! - [`models`]: timm-compatible ResNet family (one builder, presets as data, timm
//!   state-dict names, train/eval modes), the MEAL V2 discriminator, weight I/O.
//! - [`store`]: the soft-label store (docs/FORMAT.md).
//! - [`loss`]: MEAL V2's losses.
//!
//! The fast CPU ops land here next (see the open issues).

pub mod cli;
pub mod device;
pub mod ensemble;
pub mod error;
pub mod loss;
pub mod models;
pub mod ops;
pub mod optim;
pub mod store;

pub use device::{parse_device, tune_allocator, DeviceError};
pub use error::ModelError;
