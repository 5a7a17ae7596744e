//! The error type of the model code.

use std::path::PathBuf;

/// Errors of model building, running and weight I/O.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// An unknown preset name; lists the known ones.
    #[error("unknown architecture {name:?}; known presets: {known}")]
    UnknownArch {
        /// The name asked for.
        name: String,
        /// Comma-separated known names.
        known: String,
    },
    /// An architecture configuration that timm would refuse.
    #[error("invalid architecture config: {0}")]
    Config(String),
    /// A dtype name that is not one of the teachers' (`f32`, `bf16`, `f16`).
    #[error("dtype {0:?}: expected f32, bf16 or f16")]
    UnknownDtype(String),
    /// A teacher spec (`ARCH=WEIGHTS[,key=value...]`) that does not parse.
    #[error("invalid teacher spec {spec:?}: {reason}")]
    Spec {
        /// The spec as given.
        spec: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A weights file does not match the model (strict loading).
    #[error("{path}: weights do not match {arch}:{details}")]
    Mismatch {
        /// The weights file.
        path: PathBuf,
        /// The model's name.
        arch: String,
        /// Missing, unexpected and mis-shaped tensors, one per line.
        details: String,
    },
    /// A weights file holds a NaN or an infinity (a run that diverged, a damaged file):
    /// refused at load, not met as a non-finite output later.
    #[error("{path}: tensor {tensor} holds non-finite values (NaN or inf)")]
    NonFiniteWeights {
        /// The weights file.
        path: PathBuf,
        /// The first such tensor (timm's name).
        tensor: String,
    },
    /// A weights file could not be read or written.
    #[error("{path}: {reason}")]
    Io {
        /// The file at fault.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// Weights that record other classes than the dataset's (a teacher's probabilities
    /// would be taken for other classes).
    #[error("{path}: trained on other classes than the data's: {reason}")]
    OtherClasses {
        /// The weights file.
        path: PathBuf,
        /// Which classes.
        reason: String,
    },
    /// A teacher's class list (`classes=`) that does not fit its weights.
    #[error("{path}: {reason}")]
    ClassList {
        /// The weights file.
        path: PathBuf,
        /// What does not fit.
        reason: String,
    },
    /// What this machine cannot run (a CPU feature it lacks).
    #[error("not supported on this machine: {0}")]
    Unsupported(String),
    /// A teacher of an ensemble could not be built or loaded.
    #[error("teacher {teacher}: {error}")]
    Teacher {
        /// `ARCH=WEIGHTS`, the weights as a file (a hub name resolved to its cache).
        teacher: String,
        /// Why (in the message, not a `source()`: anyhow would print it twice).
        error: Box<ModelError>,
    },
    /// A teacher's softmax holds a NaN or an infinity (its weights, or an overflow in a
    /// low-precision dtype): the labels would be garbage.
    #[error("teacher {teacher} gave a non-finite probability for row {row} of the batch (it ran in {dtype}{hint})")]
    NonFinite {
        /// `arch (weights file)`.
        teacher: String,
        /// The row (crop) of the batch.
        row: usize,
        /// The dtype the teacher ran in.
        dtype: String,
        /// What to try: empty in f32 (where its weights are the likely cause).
        hint: &'static str,
    },
    /// A tensor operation failed (shapes, device).
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// An input transform that cannot be built (side, crop fraction).
    #[error(transparent)]
    Data(#[from] meal_data::DataError),
}

/// Result alias of the model code.
pub type Result<T, E = ModelError> = std::result::Result<T, E>;

impl ModelError {
    /// [`ModelError::Spec`] of `spec`.
    pub(crate) fn spec(spec: &str, reason: String) -> Self {
        ModelError::Spec {
            spec: spec.to_string(),
            reason,
        }
    }
}
