//! `meal-common`: what both MEAL V2 stages share.
//!
//! Today: device selection ([`device`]). The models (timm-compatible ResNet family,
//! discriminator), fast ops and the soft-label store land here next (see the open
//! issues); `meal-data` holds the image pipeline.

pub mod device;

pub use device::{parse_device, DeviceError};
