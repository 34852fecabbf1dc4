//! `cluster.toml`: the description of a RankMySteps deployment (design §7).
//!
//! Every key is documented here and in the repository's `cluster.toml`; unknown keys are errors.
//! This commands use `[dataflow]` (and `[cluster]` threads); the Kafka, Cassandra, S3
//! and web sections are parsed and validated so that one file describes the whole deployment.

use std::path::Path;

use serde::Deserialize;

use crate::error::CliError;

/// The whole file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Worker processes.
    #[serde(default)]
    pub cluster: Cluster,
    /// Kafka input.
    #[serde(default)]
    pub kafka: Option<rankmysteps_sources::kafka::KafkaConfig>,
    /// Cassandra output.
    #[serde(default)]
    pub cassandra: Option<rankmysteps_sinks::cassandra::CassandraConfig>,
    /// S3 archive.
    #[serde(default)]
    pub s3: Option<rankmysteps_sinks::s3::S3Config>,
    /// Dataflow semantics and limits.
    #[serde(default)]
    pub dataflow: Dataflow,
    /// The web listener.
    #[serde(default)]
    pub web: Option<Web>,
}

/// `[cluster]`: the worker processes, in process order.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    /// One `host:port` per process, in process order (process i binds the i-th).
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Worker threads per process.
    #[serde(default = "default_threads")]
    pub threads: usize,
}

fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

impl Default for Cluster {
    fn default() -> Self {
        Cluster {
            hosts: Vec::new(),
            threads: default_threads(),
        }
    }
}

/// `[web]`: the leaderboard page.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Web {
    /// Listen address, `host:port` (default [`DEFAULT_LISTEN`]: loopback only).
    #[serde(default = "default_listen")]
    pub listen: String,
}

/// The leaderboard page's default address: loopback only, never every interface unless
/// configured.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

fn default_listen() -> String {
    DEFAULT_LISTEN.to_owned()
}

/// `[dataflow]`: semantics and limits (design §1-3).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dataflow {
    /// Rows of each day's top-k.
    #[serde(default = "default_k")]
    pub k: usize,
    /// Streaming epoch length, milliseconds of wall clock.
    #[serde(default = "default_epoch_ms")]
    pub epoch_ms: u64,
    /// File replay epoch length, in lines.
    #[serde(default = "default_epoch_events")]
    pub epoch_events: u64,
    /// How long a day stays open after its end in UTC−12, e.g. `"24h"`, `"90m"`, `"3600s"`.
    #[serde(default = "default_grace")]
    pub grace: String,
    /// IANA zone of timestamps written without an offset.
    #[serde(default = "default_zone")]
    pub default_time_zone: String,
    /// Largest `steps` of one event.
    #[serde(default = "default_max_steps")]
    pub max_steps_per_event: u32,
    /// How far ahead of the wall clock a timestamp may be, e.g. `"1h"`.
    #[serde(default = "default_skew")]
    pub max_clock_skew: String,
    /// How many epochs a source may run ahead of the last delivered one.
    #[serde(default = "default_ahead")]
    pub max_epochs_ahead: u64,
}

fn default_k() -> usize {
    100
}
fn default_epoch_ms() -> u64 {
    1000
}
fn default_epoch_events() -> u64 {
    100_000
}
fn default_grace() -> String {
    "24h".into()
}
fn default_zone() -> String {
    "America/Los_Angeles".into()
}
fn default_max_steps() -> u32 {
    100_000
}
fn default_skew() -> String {
    "1h".into()
}
fn default_ahead() -> u64 {
    4
}

impl Default for Dataflow {
    fn default() -> Self {
        toml::from_str("").expect("defaults")
    }
}

impl ClusterConfig {
    /// The leaderboard page's address: `[web] listen`, else [`DEFAULT_LISTEN`].
    pub fn web_listen(&self) -> String {
        self.web
            .as_ref()
            .map_or_else(default_listen, |w| w.listen.clone())
    }

    /// Reads and validates a `cluster.toml`.
    pub fn load(path: &Path) -> Result<ClusterConfig, CliError> {
        let text = std::fs::read_to_string(path).map_err(|source| CliError::Io {
            path: path.to_owned(),
            source,
        })?;
        let config: ClusterConfig = toml::from_str(&text).map_err(|e| CliError::Config {
            path: path.to_owned(),
            detail: e.to_string(),
        })?;
        config.dataflow.grace_micros()?;
        config.dataflow.skew_micros()?;
        config.dataflow.zone()?;
        if let Some(c) = &config.cassandra {
            c.validate().map_err(|e| CliError::Config {
                path: path.to_owned(),
                detail: format!("[cassandra]: {e}"),
            })?;
        }
        Ok(config)
    }
}

impl Dataflow {
    /// `grace` in microseconds.
    pub fn grace_micros(&self) -> Result<i64, CliError> {
        parse_duration(&self.grace).ok_or_else(|| {
            CliError::Setting(format!("grace: cannot read {:?} as a duration", self.grace))
        })
    }

    /// `max_clock_skew` in microseconds.
    pub fn skew_micros(&self) -> Result<i64, CliError> {
        parse_duration(&self.max_clock_skew).ok_or_else(|| {
            CliError::Setting(format!(
                "max_clock_skew: cannot read {:?} as a duration",
                self.max_clock_skew
            ))
        })
    }

    /// The default time zone.
    pub fn zone(&self) -> Result<jiff::tz::TimeZone, CliError> {
        jiff::tz::TimeZone::get(&self.default_time_zone).map_err(|e| {
            CliError::Setting(format!(
                "default_time_zone {:?}: {e}",
                self.default_time_zone
            ))
        })
    }
}

/// An S3 configuration from the environment that `scripts/services env` prints
/// (`RANKMYSTEPS_S3_ENDPOINT`, `AWS_REGION`, `RANKMYSTEPS_S3_BUCKET`), for S3-compatible stores
/// (path-style, checksums when required). `None` without `RANKMYSTEPS_S3_ENDPOINT`.
pub fn s3_from_env() -> Option<rankmysteps_sinks::s3::S3Config> {
    let endpoint = std::env::var("RANKMYSTEPS_S3_ENDPOINT").ok()?;
    Some(rankmysteps_sinks::s3::S3Config {
        endpoint: Some(endpoint),
        region: std::env::var("AWS_REGION").unwrap_or_else(|_| "us-east-1".into()),
        bucket: std::env::var("RANKMYSTEPS_S3_BUCKET")
            .unwrap_or_else(|_| "rankmysteps-archive".into()),
        prefix: String::new(),
        path_style: true,
        checksums_when_required: true,
    })
}

/// Parses `90s`, `15m`, `24h`, `2d` or `500ms` (a non-negative integer and a unit) to microseconds.
pub fn parse_duration(text: &str) -> Option<i64> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(split);
    let n: i64 = number.parse().ok()?;
    let unit_micros: i64 = match unit.trim() {
        "ms" => 1_000,
        "s" => 1_000_000,
        "m" | "min" => 60_000_000,
        "h" => 3_600_000_000,
        "d" => 86_400_000_000,
        _ => return None,
    };
    n.checked_mul(unit_micros)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("24h"), Some(86_400_000_000));
        assert_eq!(parse_duration("90 s"), Some(90_000_000));
        assert_eq!(parse_duration("500ms"), Some(500_000));
        assert_eq!(parse_duration("h"), None);
        assert_eq!(parse_duration("-1h"), None);
        assert_eq!(parse_duration("3 weeks"), None);
    }

    #[test]
    fn repository_cluster_toml_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../cluster.toml");
        let config = ClusterConfig::load(&path).unwrap();
        assert_eq!(config.cluster.hosts.len(), 4);
        assert_eq!(config.dataflow.k, 100);
    }

    #[test]
    fn unknown_keys_are_errors() {
        let err = toml::from_str::<ClusterConfig>("[dataflow]\nkk = 3\n").unwrap_err();
        assert!(err.to_string().contains("kk"), "{err}");
    }
}
