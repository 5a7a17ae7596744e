//! The models: timm's ResNet family (teachers and student) and MEAL V2's discriminator.

pub mod discriminator;
pub mod layers;
pub mod params;
pub mod pretrained;
pub mod resnet;
pub mod weights;

pub use discriminator::Discriminator;
pub use params::{Entry, Kind};
pub use pretrained::{input_config, InputConfig};
pub use resnet::{preset, presets, Block, ResNet, ResNetConfig, Stem};
pub use weights::{
    load_into, read_state_dict, save_safetensors, state_dict, trainable, LoadOptions,
};
