//! The `rankmysteps` command: runs the job (embedded or file replay), reads results back, and
//! benchmarks the core. The binary (`main.rs`) is a thin clap layer over this library.

pub mod bench;
pub mod bench_cluster;
pub mod bench_e2e;
pub mod bench_restart;
pub mod bench_web;
pub mod doctor;
pub mod error;
pub mod produce;
pub mod serve;
pub mod view;

pub use error::CliError;
// The runtime's modules under their old paths: `rankmysteps::job`, `rankmysteps::recovery`, ...
pub use rankmysteps_runtime::{
    archive, checkpoint, config, introspect, job, launch, metrics, progress, recovery, worker,
};
