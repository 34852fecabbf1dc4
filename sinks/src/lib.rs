//! RankMySteps sinks: where the results of every completed epoch go (design §4, §10).
//!
//! The dataflow hands each sink one [`EpochOutput`] per completed epoch, in increasing epoch
//! order. An `EpochOutput` holds *consolidated deltas of absolute records* (a user's total, a
//! top-k row, a day's number of users): a change is the retraction (`-1`) of the old record and
//! the insertion (`+1`) of the new one. Sinks therefore never add increments; they upsert and
//! delete absolute values, which makes rewriting an epoch (a replay) idempotent.
//!
//! The crate is laid out one folder per sink:
//! - [`cassandra`]: the Cassandra tables of design §5 (sink, schema, readers).
//! - [`local`]: the local output directory of design §10 (embedded default, file replays,
//!   tests), and the readers behind `rankmysteps top` and `rankmysteps standing`.
//! - [`s3`]: the archive of raw and rejected records of design §6 (gzip JSON Lines objects
//!   with deterministic keys) and its readers for replays.
//!
//! [`Fanout`] sends every epoch to several sinks.

use std::path::PathBuf;

use rankmysteps_dataflow::event::Epoch;
use rankmysteps_dataflow::output::EpochOutput;

pub mod cassandra;
pub mod local;
pub mod s3;

/// A destination for the results of completed epochs.
///
/// Contract:
/// - [`write_epoch`](Sink::write_epoch) is called once per completed epoch (after the dataflow's
///   frontier has passed it), in strictly increasing epoch order, with that epoch's consolidated
///   deltas of absolute records (see [`EpochOutput`]). Epochs with no change are still delivered
///   (they advance progress: positions, watermark, counters).
/// - A sink may buffer or coalesce writes, but whatever it has written must describe some
///   completed epoch's state (never a partially applied epoch), and its progress record, if it
///   has one, must only be written after everything it covers.
/// - [`finish`](Sink::finish) is called once at the end of a run (after the last epoch); on
///   return everything received must be written and durable.
/// - An error is fatal for the run: callers stop delivering epochs to a sink that failed.
pub trait Sink: Send {
    /// Applies the changes of one completed epoch.
    fn write_epoch(&mut self, output: &EpochOutput) -> Result<(), SinkError>;

    /// Takes in an epoch that a restart replays only to rebuild the dataflow's state: its
    /// results were written before the restart (it is at or before the progress record), so
    /// nothing may be written for it. A sink that keeps state in memory (the local directory)
    /// applies it; the default ignores it. Restored epochs come in increasing order, before
    /// every epoch given to [`write_epoch`](Sink::write_epoch).
    fn restore(&mut self, _output: &EpochOutput) -> Result<(), SinkError> {
        Ok(())
    }

    /// Called regularly (a few times a second) while no epoch arrives, so that a sink that
    /// coalesces writes still writes what is due when the input goes quiet.
    fn tick(&mut self) -> Result<(), SinkError> {
        Ok(())
    }

    /// Writes everything still pending and makes it durable. Called once, at the end of a run.
    fn finish(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
}

impl<S: Sink + ?Sized> Sink for Box<S> {
    fn write_epoch(&mut self, output: &EpochOutput) -> Result<(), SinkError> {
        (**self).write_epoch(output)
    }

    fn restore(&mut self, output: &EpochOutput) -> Result<(), SinkError> {
        (**self).restore(output)
    }

    fn tick(&mut self) -> Result<(), SinkError> {
        (**self).tick()
    }

    fn finish(&mut self) -> Result<(), SinkError> {
        (**self).finish()
    }
}

/// Several sinks fed the same epochs, in order.
///
/// `write_epoch` stops at the first sink that fails (the run is over anyway). `finish` calls
/// every sink's `finish`, even after a failure, so that the others still make their outputs
/// durable, and returns the first error.
pub struct Fanout(pub Vec<Box<dyn Sink>>);

impl Sink for Fanout {
    fn write_epoch(&mut self, output: &EpochOutput) -> Result<(), SinkError> {
        for sink in &mut self.0 {
            sink.write_epoch(output)?;
        }
        Ok(())
    }

    fn restore(&mut self, output: &EpochOutput) -> Result<(), SinkError> {
        for sink in &mut self.0 {
            sink.restore(output)?;
        }
        Ok(())
    }

    fn tick(&mut self) -> Result<(), SinkError> {
        for sink in &mut self.0 {
            sink.tick()?;
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<(), SinkError> {
        let mut first = Ok(());
        for sink in &mut self.0 {
            let result = sink.finish();
            if first.is_ok() {
                first = result;
            }
        }
        first
    }
}

/// Everything that can go wrong writing or reading a sink's output.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// A file system operation failed.
    #[error("{path}: {source}", path = path.display())]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A file exists but does not have the expected format.
    #[error("{path}: corrupt: {detail}", path = path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong (with a line number where it applies).
        detail: String,
    },
    /// Something asked for does not exist (a day with no output, an output directory).
    #[error("{what} not found")]
    NotFound {
        /// What was looked for, and where.
        what: String,
    },
    /// A Cassandra request, connection or configuration failed (after its retries).
    #[error("cassandra: {what}: {detail}")]
    Cassandra {
        /// What was being done.
        what: String,
        /// The error.
        detail: String,
    },
    /// An S3 request, connection or configuration failed (after the SDK's retries), or an
    /// archive object could not be encoded or decoded.
    #[error("s3: {what}: {detail}")]
    S3 {
        /// What was being done (with the bucket and key where it applies).
        what: String,
        /// The error.
        detail: String,
    },
    /// A newer start of this process claimed a later generation: this one is fenced and must
    /// write and delete nothing more (design §4).
    #[error("fenced: this process runs generation {generation}, but generation {current} has been claimed since (a newer start of the same process took over)")]
    Fenced {
        /// The generation this process claimed.
        generation: u64,
        /// The latest claimed (0: none).
        current: u64,
    },
    /// The job's input failed for good (a Kafka partition whose next records are gone): the
    /// job stops and commits nothing after it.
    #[error("input: {detail}")]
    Input {
        /// What went wrong, and what to do.
        detail: String,
    },
    /// An epoch was delivered after a later (or the same) one: a breach of the [`Sink`] contract.
    #[error("epoch {epoch} delivered after epoch {last}: sinks take epochs in increasing order")]
    OutOfOrder {
        /// The epoch delivered.
        epoch: Epoch,
        /// The last epoch delivered before it.
        last: Epoch,
    },
}

impl SinkError {
    /// Wraps an I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> SinkError {
        SinkError::Io {
            path: path.into(),
            source,
        }
    }

    /// A [`SinkError::Cassandra`]: `detail` went wrong while doing `what`.
    pub fn cassandra(what: impl Into<String>, detail: impl Into<String>) -> SinkError {
        SinkError::Cassandra {
            what: what.into(),
            detail: detail.into(),
        }
    }

    /// A [`SinkError::S3`]: `detail` went wrong while doing `what`.
    pub fn s3(what: impl Into<String>, detail: impl Into<String>) -> SinkError {
        SinkError::S3 {
            what: what.into(),
            detail: detail.into(),
        }
    }

    /// A [`SinkError::Corrupt`] for `path`.
    pub fn corrupt(path: impl Into<PathBuf>, detail: impl Into<String>) -> SinkError {
        SinkError::Corrupt {
            path: path.into(),
            detail: detail.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Counting(std::sync::Arc<std::sync::Mutex<Vec<Epoch>>>, bool);

    impl Sink for Counting {
        fn write_epoch(&mut self, output: &EpochOutput) -> Result<(), SinkError> {
            self.0.lock().unwrap().push(output.epoch);
            Ok(())
        }
        fn finish(&mut self) -> Result<(), SinkError> {
            self.0.lock().unwrap().push(u64::MAX);
            if self.1 {
                Err(SinkError::NotFound { what: "x".into() })
            } else {
                Ok(())
            }
        }
    }

    #[test]
    fn fanout_calls_every_sink() {
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut fanout = Fanout(vec![
            Box::new(Counting(seen.clone(), true)),
            Box::new(Counting(seen.clone(), false)),
        ]);
        let output = EpochOutput {
            epoch: 3,
            ..EpochOutput::default()
        };
        fanout.write_epoch(&output).unwrap();
        assert!(fanout.finish().is_err());
        assert_eq!(*seen.lock().unwrap(), vec![3, 3, u64::MAX, u64::MAX]);
    }
}
