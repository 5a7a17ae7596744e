//! `meal-models`: the networks of MEAL V2 and what trains and runs them.
//!
//! - [`resnet`], [`layers`], [`params`], [`weights`], [`pretrained`]: the timm-compatible
//!   ResNet family (one builder, presets as a table with each model's input config,
//!   timm state-dict names, train/eval modes through [`candle_core::ModuleT`]).
//! - [`classes`]: the classes a weights file records, against a dataset's.
//! - [`discriminator`]: MEAL V2's discriminator.
//! - [`ensemble`]: teachers and their mean softmax.
//! - [`loss`]: MEAL V2's losses; [`optim`]: SGD with PyTorch semantics and LR schedules.
//! - [`ops`]: our fast CPU ops (convolution, BatchNorm, ReLU, max-pool, SGD) as candle
//!   custom ops.
//! - [`device`]: `cpu` / `cuda:N` selection; [`memory`]: the least memory a batch needs.
//!
//! The soft-label store is the `meal-store` crate, which builds without candle.

pub mod classes;
pub mod device;
pub mod discriminator;
pub mod ensemble;
pub mod error;
pub mod layers;
pub mod loss;
pub mod memory;
pub mod ops;
pub mod optim;
pub mod params;
pub mod pretrained;
mod pth;
pub mod resnet;
pub mod switches;
#[cfg(test)]
mod testing;
pub mod weights;

pub use classes::{ClassOrder, TrainedOn};
pub use device::{check_device, parse_device, set_tf32, tune_allocator, DeviceError};
pub use discriminator::Discriminator;
pub use error::ModelError;
pub use params::{Entry, Kind};
pub use pretrained::{input_config, InputConfig};
pub use resnet::{preset, presets, Block, ResNet, ResNetConfig, Stem};
pub use weights::{
    load_into, read_state_dict, safetensors_metadata, save_safetensors, save_safetensors_with,
    state_dict, trainable, LoadOptions, META_TRAINED_ON,
};
