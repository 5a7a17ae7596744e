//! The one error type of `meal-data`. Every variant names the file, flag or key at fault.

use std::path::PathBuf;

/// Errors of the data pipeline.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file or directory could not be read or written.
    #[error("{path}: {error}")]
    Io {
        /// The file at fault.
        path: PathBuf,
        /// The underlying I/O error: in the message, not a `source()` (or anyhow's
        /// chain would print it twice).
        error: std::io::Error,
    },
    /// An image file is empty, truncated, corrupt or of an unsupported format.
    #[error("{path}: cannot decode image: {reason}")]
    Decode {
        /// The image file at fault.
        path: PathBuf,
        /// What the decoder said.
        reason: String,
    },
    /// An image decodes, but not to what its crops were drawn from (another size than
    /// a label store recorded): a bad file, as one that does not decode.
    #[error("{path}: {reason}")]
    Changed {
        /// The image file at fault.
        path: PathBuf,
        /// How it differs.
        reason: String,
    },
    /// A dataset root or list file is malformed or unsafe.
    #[error("{path}: {reason}")]
    Dataset {
        /// The root, list file or entry at fault.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A symlink of the dataset leads outside its root, which is followed only under
    /// [`crate::LinkPolicy::FollowAnywhere`] (a link to another user's files, or a
    /// copy's link back to the original, is more often a mistake than intended).
    #[error("{}{path}: resolves to {target} outside the dataset root {root} (links that leave the root are not followed unless asked for)", .listed.as_deref().unwrap_or(""))]
    LinkOutsideRoot {
        /// Where a list file names it (`LIST: line N: `), or empty for a folder's.
        listed: Option<String>,
        /// The link, as found under the root.
        path: PathBuf,
        /// Where it leads.
        target: PathBuf,
        /// The dataset root, resolved.
        root: PathBuf,
    },
    /// A parameter (flag or config key) has an invalid value.
    #[error("invalid {name}: {reason}")]
    Param {
        /// The flag or key, as the user spells it.
        name: &'static str,
        /// Why the value is refused.
        reason: String,
    },
    /// Resizing failed (a bug or an impossible geometry).
    #[error("resize of {path}: {reason}")]
    Resize {
        /// The image being resized.
        path: PathBuf,
        /// What the resizer said.
        reason: String,
    },
    /// A loader thread stopped on a panic (a bug, or input that a check let through):
    /// the batches after it were not made.
    #[error("the batch loader stopped: {reason}")]
    Loader {
        /// The panic's message.
        reason: String,
    },
}

impl DataError {
    /// Shorthand for an [`DataError::Io`] error about `path`.
    pub fn io(path: impl Into<PathBuf>, error: std::io::Error) -> Self {
        DataError::Io {
            path: path.into(),
            error,
        }
    }

    /// Shorthand for a [`DataError::Decode`] error about `path`.
    pub fn decode(path: impl Into<PathBuf>, reason: impl std::fmt::Display) -> Self {
        DataError::Decode {
            path: path.into(),
            // decoders' texts may end in a newline (zune-jpeg's), an empty line in a log
            reason: reason.to_string().trim_end().to_string(),
        }
    }

    /// Shorthand for a [`DataError::Dataset`] error about `path`.
    pub fn dataset(path: impl Into<PathBuf>, reason: impl std::fmt::Display) -> Self {
        DataError::Dataset {
            path: path.into(),
            reason: reason.to_string(),
        }
    }

    /// Shorthand for a [`DataError::Param`] error.
    pub fn param(name: &'static str, reason: impl std::fmt::Display) -> Self {
        DataError::Param {
            name,
            reason: reason.to_string(),
        }
    }
}

/// Result alias of `meal-data`.
pub type Result<T, E = DataError> = std::result::Result<T, E>;

/// Log `text` as a warning the first time this process meets it, later as a debug line:
/// what a file's reading warns of (unreadable, cut short) is met again each epoch.
pub(crate) fn warn_once(text: String) {
    use std::sync::{Mutex, OnceLock};
    static WARNED: OnceLock<Mutex<std::collections::HashSet<String>>> = OnceLock::new();
    let first = WARNED
        .get_or_init(Default::default)
        .lock()
        .map_or(true, |mut seen| seen.insert(text.clone()));
    match first {
        true => tracing::warn!("{text}"),
        false => tracing::debug!("{text} (again)"),
    }
}

/// The first `shown` of `items` joined by ", ", with ", ..." when there are more: the
/// one way messages name a few of many (empty classes, stray files, removed shards).
pub fn first_few<S: AsRef<str>>(items: &[S], shown: usize) -> String {
    let mut out = items
        .iter()
        .take(shown)
        .map(AsRef::as_ref)
        .collect::<Vec<_>>()
        .join(", ");
    if items.len() > shown {
        out.push_str(", ...");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::first_few;

    #[test]
    fn first_few_marks_what_it_leaves_out() {
        assert_eq!(first_few(&["a", "b"], 5), "a, b");
        assert_eq!(first_few(&["a", "b", "c"], 3), "a, b, c");
        assert_eq!(first_few(&["a", "b", "c"], 2), "a, b, ...");
        assert_eq!(first_few::<&str>(&[], 2), "");
    }
}
