//! The RankMySteps runtime: what runs a job and keeps it running, as library code that the
//! `run`, `worker` and `launch` commands call (the CLI keeps argument parsing and printing).
//!
//! - [`config`]: the deployment description, `cluster.toml` (with environment overrides);
//! - [`worker`]: one process of a deployment: its restart, sinks and job, wired from the
//!   configuration;
//! - [`job`]: the job runner: sources, the dataflow on timely workers (one process or a
//!   cluster), the sink thread, lingering live state;
//! - [`recovery`]: a restart from the progress record (what to replay, what to delete);
//! - [`archive`]: the raw-event archive uploader and the dead letters;
//! - [`checkpoint`]: checkpoints of the workers' open state in the S3 store;
//! - [`launch`]: the launcher that starts and supervises a machine's processes;
//! - [`introspect`]: the inspector's data (timely and differential logging, live lookups);
//! - [`metrics`]: `/metrics` and the lag thread;
//! - [`progress`]: progress of long work on a terminal or in a log.

pub mod archive;
pub mod checkpoint;
pub mod config;
pub mod error;
pub mod introspect;
pub mod job;
pub mod launch;
pub mod metrics;
pub mod progress;
pub mod recovery;
pub mod worker;

pub use error::RuntimeError;
