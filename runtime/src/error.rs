//! The runtime's error type.

use std::path::PathBuf;

/// Errors of running jobs, restarts, the archive and the launcher.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// A file could not be read or written.
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
    /// A restart cannot rebuild its state.
    #[error("cannot restart from the progress record: {0}")]
    Recovery(String),
    /// The web page or the inspector could not be served.
    #[error(transparent)]
    Web(#[from] rankmysteps_web::WebError),
    /// `launch` cannot start or keep its processes.
    #[error("launch: {0}")]
    Launch(String),
    /// A worker thread failed.
    #[error("worker failed: {0}")]
    Worker(String),
}
