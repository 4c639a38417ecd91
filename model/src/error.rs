//! Errors of the model crate.

use std::path::PathBuf;

/// Everything that can go wrong when building, saving or loading a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A configuration is internally inconsistent (lists of the wrong length, channels not divisible...).
    #[error("invalid model configuration: {0}")]
    InvalidConfig(String),
    /// A preset name that does not exist.
    #[error("unknown preset `{name}` (known presets: {known})")]
    UnknownPreset {
        /// The name asked for.
        name: String,
        /// The known names, comma separated.
        known: String,
    },
    /// An input tensor whose shape the configured model cannot take.
    #[error("input shape {got:?} does not fit the model: {reason}")]
    InputShape {
        /// The shape received.
        got: Vec<usize>,
        /// Why it does not fit.
        reason: String,
    },
    /// A checkpoint file could not be read or written.
    #[error("checkpoint {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A file that is not a checkpoint of this crate, or a damaged one.
    #[error("checkpoint {path} is not a valid mtmed3d checkpoint: {reason}")]
    CorruptCheckpoint {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A checkpoint made with another configuration than the one asked for.
    #[error(
        "checkpoint {path} was saved with a different model configuration: \
         `{field}` is {saved} in the checkpoint but {expected} in the requested configuration"
    )]
    ConfigMismatch {
        /// The file.
        path: PathBuf,
        /// The first differing field, as a dotted path.
        field: String,
        /// Its value in the checkpoint (JSON).
        saved: String,
        /// Its value in the requested configuration (JSON).
        expected: String,
    },
    /// The record inside a checkpoint could not be decoded into the model.
    #[error("checkpoint {path}: cannot decode the weights: {reason}")]
    Record {
        /// The file.
        path: PathBuf,
        /// The recorder's message.
        reason: String,
    },
    /// JSON (de)serialisation of a configuration or summary failed.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
}

/// Result alias of this crate.
pub type Result<T, E = ModelError> = std::result::Result<T, E>;
