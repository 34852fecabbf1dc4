//! The sources crate's error type.

use std::path::PathBuf;

/// Errors of sources (parse errors are not errors: they are rejections with a reason).
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// An input file or directory could not be opened or read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A directory given as input holds no file to read.
    #[error("no input files in directory {0}")]
    EmptyDirectory(PathBuf),
    /// Kafka failed.
    #[error("kafka: {0}")]
    Kafka(String),
    /// A setting is out of range.
    #[error("invalid setting: {0}")]
    Invalid(String),
}
