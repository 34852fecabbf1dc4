//! The CLI library's error type.

use std::path::PathBuf;

/// Errors of the `rankmysteps` commands.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A setting is out of range or unreadable.
    #[error("invalid setting: {0}")]
    Setting(String),
    /// A source failed.
    #[error(transparent)]
    Source(#[from] rankmysteps_sources::SourceError),
    /// A sink failed.
    #[error(transparent)]
    Sink(#[from] rankmysteps_sinks::SinkError),
    /// The web page could not be served.
    #[error(transparent)]
    Web(#[from] rankmysteps_web::WebError),
    /// Running the job, a restart, the archive or the launcher failed.
    #[error(transparent)]
    Runtime(#[from] rankmysteps_runtime::RuntimeError),
    /// A worker thread failed.
    #[error("worker failed: {0}")]
    Worker(String),
}
