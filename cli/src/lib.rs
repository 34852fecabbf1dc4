//! The `rankmysteps` command: runs the job (embedded or file replay), reads results back, and
//! benchmarks the core. The binary (`main.rs`) is a thin clap layer over this library.

pub mod archive;
pub mod bench;
pub mod bench_e2e;
pub mod bench_web;
pub mod config;
pub mod doctor;
pub mod error;
pub mod introspect;
pub mod job;
pub mod launch;
pub mod metrics;
pub mod produce;
pub mod progress;
pub mod recovery;
pub mod serve;
pub mod view;

pub use error::CliError;
