//! `meal-data`: images to tensors for the MEAL V2 pipeline.
//!
//! - [`atomic`]: crash-safe file replacement (write, sync, rename), used by every stage.
//! - [`dirlock`]: an exclusive lock on an output directory (store, run).
//! - [`files`]: reading an input file whole, refusing a FIFO that would block.
//! - [`dataset`]: the index (ImageFolder or CSV list), stable sample ids, fingerprint.
//! - [`decode`]: JPEG/PNG to RGB8 as PIL's `convert("RGB")`.
//! - [`crop`]: torchvision's RandomResizedCrop sampling from a counter-based RNG, and the
//!   FKD-normalised [`CropRecord`].
//! - [`transform`]: replaying a crop (PIL-like resize, flip, normalise) and the eval
//!   transform, into a caller's CHW f32 buffer.
//! - [`resample`]: PIL's antialiased bilinear/bicubic resize, bit for bit.
//! - [`loader`]: the parallel, bounded, deterministic batch loader.
//! - [`synth`]: the synthetic demo dataset.
//!
//! docs/DATA.md describes the behaviour and the choices made.

pub mod atomic;
pub mod crop;
pub mod dataset;
pub mod decode;
pub mod dirlock;
pub mod error;
pub mod files;
pub mod loader;
pub mod mapped;
pub mod resample;
pub mod synth;
pub mod transform;

pub use crop::{CropRecord, CropRng, CropSampler, PixelBox, RrcParams, UniformSource};
pub use dataset::{Dataset, Fingerprint, LinkPolicy, Sample, MAX_CLASSES};
pub use decode::{decode_bytes, decode_file, RgbImage};
pub use error::{DataError, Result};
pub use loader::{
    epoch_order, BadFilePolicy, Batch, CropMode, CropPlan, LoadReport, Loader, LoaderConfig,
    PixelFormat, PoolCrops, Row, Skipped,
};
pub use transform::{CropPixel, CropSpec, Filter, Normalize, Replayer};
