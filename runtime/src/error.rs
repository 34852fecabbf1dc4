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
    /// `cluster.toml` is not valid.
    #[error("invalid configuration {path}: {detail}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
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
    /// A system call failed (a listener, a file created).
    #[error("{what}: {source}")]
    Os {
        /// What was being done.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A step of a start failed: what was being done, and why.
    #[error("{context}")]
    Context {
        /// What was being done.
        context: String,
        /// Why it failed.
        #[source]
        source: Box<RuntimeError>,
    },
    /// The topic's partition count changed while the job ran: it stopped after its last
    /// epoch, and a restart consumes the new partitions from their beginning.
    #[error(
        "topic {topic:?} now has {now} partitions, not the {was} this job started with: \
         stopped after the last complete epoch; start it again to consume them (launch does)"
    )]
    TopicChanged {
        /// The topic.
        topic: String,
        /// Its partitions at the start.
        was: u32,
        /// Its partitions now.
        now: u32,
    },
    /// A worker thread failed.
    #[error("worker failed: {0}")]
    Worker(String),

    /// A checkpoint part could not be encoded, read back or found (design §4).
    #[error("checkpoint: {0}")]
    Checkpoint(String),
}

/// `what` failed because of `source`: a [`RuntimeError::Context`].
pub(crate) fn context(source: impl Into<RuntimeError>, what: impl Into<String>) -> RuntimeError {
    RuntimeError::Context {
        context: what.into(),
        source: Box::new(source.into()),
    }
}
