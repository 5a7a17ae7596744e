//! The soft-label store (docs/FORMAT.md): a directory of `manifest.json`,
//! `images.parquet` and Parquet or safetensors shards, written crash-safely and read
//! through memory maps.

pub mod crops;
pub mod images;
pub mod label;
pub mod manifest;
pub mod merge;
pub mod reader;
pub mod shard;
mod shard_index;
mod shard_pages;
pub mod shard_read;
pub mod writer;

use std::path::{Path, PathBuf};

pub use crops::Crops;
pub use images::ImageInfo;
pub use label::{entropy, top1, Encoding, SoftLabel};
pub use manifest::{
    config_diff, manifest_name, CropPool, Manifest, ShardFormat, State, StoreConfig, Summary,
    TeacherInfo, MANIFEST,
};
pub use merge::{merge, merge_with, Merged};
pub use reader::{
    distribution_error, LabelStore, NotADistribution, UncheckedListings, VerifyReport,
    PROB_SUM_TOLERANCE,
};
pub use shard::{CropLabel, ImageRows};
pub use shard_read::ShardReader;
pub use writer::worker_manifests;
pub use writer::{
    complete_without_lock, summary, CropProbs, EncodedImage, ImageProbs, ShardNotes, StoreWriter,
};

/// Errors of the label store; each names the file, flag or key at fault.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file could not be read or written.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        error: std::io::Error,
    },
    /// A file is truncated, corrupt or not what the manifest says.
    #[error("{path}: corrupt label store file: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A well-formed Parquet file that this reader does not take: another schema,
    /// nullable columns, a codec not compiled in.
    #[error("{path}: not a shard this reader takes: {reason}")]
    Foreign {
        /// The file.
        path: PathBuf,
        /// What it is and what to write instead.
        reason: String,
    },
    /// A manifest of another format version.
    #[error("{path}: format version {found}, this build reads version {supported}")]
    Version {
        /// The manifest.
        path: PathBuf,
        /// Its version.
        found: u64,
        /// Ours.
        supported: u32,
    },
    /// The store was made from another dataset or with another config.
    #[error("{path}: {reason}")]
    Mismatch {
        /// The store's manifest.
        path: PathBuf,
        /// What differs.
        reason: String,
    },
    /// Encoding a table or tensor file in memory failed (arrow, Parquet, safetensors):
    /// a bug or an exhausted resource, never the user's input.
    #[error("encoding {format} failed: {reason}")]
    Encode {
        /// `arrow`, `parquet` or `safetensors`.
        format: &'static str,
        /// The encoder's error.
        reason: String,
    },
    /// A bad parameter.
    #[error("invalid {name}: {reason}")]
    Param {
        /// Flag or key.
        name: &'static str,
        /// Why.
        reason: String,
    },
    /// Another process writes the store.
    #[error(transparent)]
    Locked(#[from] meal_data::dirlock::LockError),
    /// A crash injected by a test hook.
    #[error("injected failure at step {0}")]
    Injected(u32),
}

impl StoreError {
    /// Whether writing failed because the store's file system is mounted read-only (the
    /// store or its lock file): the binaries then say why the run had to write there.
    pub fn is_read_only(&self) -> bool {
        match self {
            StoreError::Io { error, .. } => error.kind() == std::io::ErrorKind::ReadOnlyFilesystem,
            StoreError::Locked(e) => e.is_read_only(),
            _ => false,
        }
    }

    pub(crate) fn io(path: &Path, error: std::io::Error) -> Self {
        StoreError::Io {
            path: path.to_path_buf(),
            error,
        }
    }
    pub(crate) fn corrupt(path: &Path, reason: impl std::fmt::Display) -> Self {
        StoreError::Corrupt {
            path: path.to_path_buf(),
            reason: reason.to_string(),
        }
    }
    pub(crate) fn arrow(e: arrow::error::ArrowError) -> Self {
        StoreError::Encode {
            format: "arrow",
            reason: e.to_string(),
        }
    }
    pub(crate) fn parquet(e: parquet::errors::ParquetError) -> Self {
        StoreError::Encode {
            format: "parquet",
            reason: e.to_string(),
        }
    }
}

/// SHA-256 of a byte slice, hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}
