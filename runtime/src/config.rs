//! `cluster.toml`: the description of a RankMySteps deployment (design §7).
//!
//! Every key is documented here and in the repository's `cluster.toml`; unknown keys are errors.
//! This commands use `[dataflow]` (and `[cluster]` threads); the Kafka, Cassandra, S3
//! and web sections are parsed and validated so that one file describes the whole deployment.

use std::path::Path;

use serde::Deserialize;

use crate::error::RuntimeError;

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
    /// One `host:port` per process, in process order, for its `/metrics` and `/debug/` (the
    /// inspector): process i listens on the i-th unless `--metrics` says otherwise, and
    /// `inspect --config` and `doctor` find every process there. Empty: 127.0.0.1:9898.
    #[serde(default)]
    pub metrics: Vec<String>,
}

fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

impl Default for Cluster {
    fn default() -> Self {
        Cluster {
            hosts: Vec::new(),
            threads: default_threads(),
            metrics: Vec::new(),
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
    /// The de-duplication window (design §1), e.g. `"1h"`: a repeat of an accepted event's
    /// (user, day, `event_id`) ingested at most this long after it is a duplicate; later, it
    /// counts again. Ingestion time is the start of the event's epoch.
    #[serde(default = "default_dedup_window")]
    pub dedup_window: String,
    /// How often a streaming worker checkpoints its open state to the S3 store (design §4),
    /// e.g. `"1m"`; `"0s"`: never. A restart loads the latest complete checkpoint and replays
    /// only the archive after it, so restart time follows this interval, not the day.
    #[serde(default = "default_checkpoint_interval")]
    pub checkpoint_interval: String,
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
fn default_dedup_window() -> String {
    "1h".into()
}
fn default_checkpoint_interval() -> String {
    "1m".into()
}

impl Default for Dataflow {
    fn default() -> Self {
        toml::from_str("").expect("defaults")
    }
}

/// The prefix of the environment variables that override keys of `cluster.toml` (design §14):
/// `RANKMYSTEPS__<SECTION>__<KEY>`, e.g. `RANKMYSTEPS__DATAFLOW__K=10`. Double underscores, so
/// that they never clash with `RANKMYSTEPS_LOG` or the variables named for credentials.
pub const ENV_PREFIX: &str = "RANKMYSTEPS__";

impl ClusterConfig {
    /// The leaderboard page's address: `[web] listen`, else [`DEFAULT_LISTEN`].
    pub fn web_listen(&self) -> String {
        self.web
            .as_ref()
            .map_or_else(default_listen, |w| w.listen.clone())
    }

    /// Reads and validates a `cluster.toml`, with the overrides of the process environment
    /// ([`ENV_PREFIX`]) applied on top of the file.
    pub fn load(path: &Path) -> Result<ClusterConfig, RuntimeError> {
        let text = std::fs::read_to_string(path).map_err(|source| RuntimeError::Io {
            path: path.to_owned(),
            source,
        })?;
        ClusterConfig::from_toml(path, &text, std::env::vars())
    }

    /// The defaults with the overrides of the process environment ([`ENV_PREFIX`]): the
    /// configuration of commands run without `--config`.
    pub fn from_env() -> Result<ClusterConfig, RuntimeError> {
        ClusterConfig::from_toml(Path::new("(environment)"), "", std::env::vars())
    }

    /// Parses `text` (the contents of `path`), applies the `RANKMYSTEPS__…` overrides among
    /// `vars`, and validates the result.
    pub fn from_toml(
        path: &Path,
        text: &str,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<ClusterConfig, RuntimeError> {
        let config_err = |detail: String| RuntimeError::Config {
            path: path.to_owned(),
            detail,
        };
        let mut table: toml::Table = toml::from_str(text).map_err(|e| config_err(e.to_string()))?;
        let mut applied = Vec::new();
        for (name, value) in vars {
            let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            apply_override(&mut table, rest, &value)
                .map_err(|detail| config_err(format!("environment variable {name}: {detail}")))?;
            applied.push(name);
        }
        let config: ClusterConfig = table.try_into().map_err(|e: toml::de::Error| {
            let mut detail = e.to_string();
            if !applied.is_empty() {
                applied.sort();
                detail.push_str(&format!(
                    " (after applying the environment overrides {})",
                    applied.join(", ")
                ));
            }
            config_err(detail)
        })?;
        let c = &config.cluster;
        if !c.metrics.is_empty() && c.metrics.len() != c.hosts.len().max(1) {
            return Err(RuntimeError::Config {
                path: path.to_owned(),
                detail: format!(
                    "[cluster] metrics lists {} addresses for {} processes (hosts): one per process, in the same order",
                    c.metrics.len(),
                    c.hosts.len().max(1)
                ),
            });
        }
        config.dataflow.grace_micros()?;
        config.dataflow.skew_micros()?;
        config.dataflow.dedup_window_micros()?;
        config.dataflow.checkpoint_epochs()?;
        config.dataflow.zone()?;
        if let Some(c) = &config.cassandra {
            c.validate().map_err(|e| RuntimeError::Config {
                path: path.to_owned(),
                detail: format!("[cassandra]: {e}"),
            })?;
        }
        Ok(config)
    }
}

impl Dataflow {
    /// `grace` in microseconds.
    pub fn grace_micros(&self) -> Result<i64, RuntimeError> {
        parse_duration(&self.grace).ok_or_else(|| {
            RuntimeError::Setting(format!("grace: cannot read {:?} as a duration", self.grace))
        })
    }

    /// `dedup_window` in microseconds.
    pub fn dedup_window_micros(&self) -> Result<i64, RuntimeError> {
        parse_duration(&self.dedup_window).ok_or_else(|| {
            RuntimeError::Setting(format!(
                "dedup_window: cannot read {:?} as a duration",
                self.dedup_window
            ))
        })
    }

    /// `checkpoint_interval` in epochs of `epoch_ms` (rounded up; `None`: no checkpoints).
    pub fn checkpoint_epochs(&self) -> Result<Option<u64>, RuntimeError> {
        let micros = parse_duration(&self.checkpoint_interval)
            .filter(|m| *m >= 0)
            .ok_or_else(|| {
                RuntimeError::Setting(format!(
                    "checkpoint_interval: cannot read {:?} as a duration (e.g. 1m, 30s, 0s)",
                    self.checkpoint_interval
                ))
            })?;
        let epoch = self.epoch_ms.max(1) as i64 * 1000;
        Ok((micros > 0).then(|| ((micros + epoch - 1) / epoch) as u64))
    }

    /// `max_clock_skew` in microseconds.
    pub fn skew_micros(&self) -> Result<i64, RuntimeError> {
        parse_duration(&self.max_clock_skew).ok_or_else(|| {
            RuntimeError::Setting(format!(
                "max_clock_skew: cannot read {:?} as a duration",
                self.max_clock_skew
            ))
        })
    }

    /// The default time zone.
    pub fn zone(&self) -> Result<jiff::tz::TimeZone, RuntimeError> {
        jiff::tz::TimeZone::get(&self.default_time_zone).map_err(|e| {
            RuntimeError::Setting(format!(
                "default_time_zone {:?}: {e}",
                self.default_time_zone
            ))
        })
    }
}

/// Sets the key that `path` (`SECTION__KEY`, or deeper: `CASSANDRA__REPLICATION__CLASS`;
/// case-insensitive, stored lowercase) names in `table` to `value`.
///
/// The value's type: where the file already holds the key, its type decides (a string stays a
/// string whatever it looks like, and a list of strings may be given comma-separated); a new key
/// is read as a TOML value (`10`, `true`, `["a:1", "b:2"]`, `"quoted"`), and as a plain string
/// when it is not one.
fn apply_override(table: &mut toml::Table, path: &str, value: &str) -> Result<(), String> {
    let keys: Vec<String> = path.split("__").map(str::to_ascii_lowercase).collect();
    if keys.len() < 2 || keys.iter().any(String::is_empty) {
        return Err(format!(
            "expected {ENV_PREFIX}<SECTION>__<KEY> (e.g. {ENV_PREFIX}DATAFLOW__K), got {ENV_PREFIX}{path}"
        ));
    }
    let (last, sections) = keys.split_last().expect("at least two keys");
    let mut here = table;
    for key in sections {
        let entry = here
            .entry(key.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        here = match entry {
            toml::Value::Table(t) => t,
            _ => return Err(format!("{key} is not a section")),
        };
    }
    let literal = || {
        toml::from_str::<toml::Table>(&format!("v = {value}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
    };
    let new = match here.get(last) {
        Some(toml::Value::String(_)) => toml::Value::String(value.to_owned()),
        Some(toml::Value::Array(items))
            if items.iter().all(toml::Value::is_str) && !value.trim_start().starts_with('[') =>
        {
            toml::Value::Array(
                value
                    .split(',')
                    .map(|part| toml::Value::String(part.trim().to_owned()))
                    .filter(|v| v.as_str() != Some(""))
                    .collect(),
            )
        }
        Some(toml::Value::Table(_)) => {
            return Err(format!("{last} is a section: set its keys one by one"))
        }
        _ => literal().unwrap_or_else(|| toml::Value::String(value.to_owned())),
    };
    here.insert(last.clone(), new);
    Ok(())
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
    fn repository_cluster_local_toml_runs_four_processes_here() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../cluster.local.toml");
        let config = ClusterConfig::load(&path).unwrap();
        assert_eq!(
            crate::launch::local_processes(&config.cluster.hosts).unwrap(),
            [0, 1, 2, 3]
        );
        let mut metrics = config.cluster.metrics.clone();
        metrics.dedup();
        assert_eq!(metrics.len(), 4, "one metrics address per process");
        // The rest is cluster.toml's.
        let reference = ClusterConfig::load(&path.with_file_name("cluster.toml")).unwrap();
        assert_eq!(config.dataflow.k, reference.dataflow.k);
        assert_eq!(config.kafka.unwrap().topic, reference.kafka.unwrap().topic);
    }

    #[test]
    fn checkpoint_interval_in_epochs() {
        let df = |interval: &str, epoch_ms: u64| Dataflow {
            checkpoint_interval: interval.into(),
            epoch_ms,
            ..Dataflow::default()
        };
        assert_eq!(df("1m", 500).checkpoint_epochs().unwrap(), Some(120));
        assert_eq!(df("1500ms", 1000).checkpoint_epochs().unwrap(), Some(2));
        assert_eq!(df("0s", 1000).checkpoint_epochs().unwrap(), None);
        assert_eq!(Dataflow::default().checkpoint_epochs().unwrap(), Some(60));
        let e = df("soon", 1000)
            .checkpoint_epochs()
            .unwrap_err()
            .to_string();
        assert!(e.contains("checkpoint_interval"), "{e}");
    }

    fn with_env(text: &str, vars: &[(&str, &str)]) -> Result<ClusterConfig, RuntimeError> {
        ClusterConfig::from_toml(
            Path::new("test.toml"),
            text,
            vars.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    #[test]
    fn metrics_addresses_are_one_per_process() {
        let file = "[cluster]\nhosts = [\"a:1\", \"b:1\"]\nmetrics = [\"127.0.0.1:1\"]\n";
        let e = with_env(file, &[]).unwrap_err().to_string();
        assert!(e.contains("1 addresses for 2 processes"), "{e}");
        let c = with_env(
            file,
            &[("RANKMYSTEPS__CLUSTER__METRICS", "127.0.0.1:1, 127.0.0.1:2")],
        )
        .unwrap();
        assert_eq!(c.cluster.metrics, ["127.0.0.1:1", "127.0.0.1:2"]);
        assert!(with_env("[cluster]\nhosts = [\"a:1\"]\n", &[])
            .unwrap()
            .cluster
            .metrics
            .is_empty());
    }

    #[test]
    fn environment_overrides_keys_of_the_file() {
        let file = "[cluster]\nhosts = [\"a:1\"]\nthreads = 2\n[kafka]\nbrokers = [\"k:9092\"]\ntopic = \"steps\"\n\
                    [s3]\nregion = \"us-east-1\"\nbucket = \"b\"\nprefix = \"\"\n";
        let c = with_env(
            file,
            &[
                ("RANKMYSTEPS__DATAFLOW__K", "10"),
                ("RANKMYSTEPS__CLUSTER__THREADS", "3"),
                ("RANKMYSTEPS__CLUSTER__HOSTS", "h0:2101, h1:2101"),
                ("RANKMYSTEPS__KAFKA__TOPIC", "1234"),
                ("RANKMYSTEPS__S3__PREFIX", "2026"),
                ("RANKMYSTEPS__S3__PATH_STYLE", "true"),
                ("RANKMYSTEPS__WEB__LISTEN", "127.0.0.1:9999"),
                ("RANKMYSTEPS__CASSANDRA__CONTACT_POINTS", "[\"c:9042\"]"),
                (
                    "RANKMYSTEPS__CASSANDRA__REPLICATION__CLASS",
                    "SimpleStrategy",
                ),
                ("RANKMYSTEPS_LOG", "debug"),
                ("UNRELATED", "x"),
            ],
        )
        .unwrap();
        assert_eq!(c.dataflow.k, 10);
        assert_eq!(c.cluster.threads, 3);
        assert_eq!(c.cluster.hosts, ["h0:2101", "h1:2101"]);
        let kafka = c.kafka.unwrap();
        assert_eq!(kafka.topic, "1234");
        assert_eq!(kafka.brokers, ["k:9092"]);
        let s3 = c.s3.unwrap();
        assert_eq!(s3.prefix, "2026");
        assert!(s3.path_style);
        assert_eq!(c.web.unwrap().listen, "127.0.0.1:9999");
        let cassandra = c.cassandra.unwrap();
        assert_eq!(cassandra.contact_points, ["c:9042"]);
        assert_eq!(cassandra.replication["class"], "SimpleStrategy");
    }

    #[test]
    fn environment_overrides_are_checked_like_the_file() {
        let err = with_env("", &[("RANKMYSTEPS__DATAFLOW__KK", "3")]).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("kk") && text.contains("RANKMYSTEPS__DATAFLOW__KK"),
            "{text}"
        );
        let err = with_env("", &[("RANKMYSTEPS__DATAFLOW", "3")]).unwrap_err();
        assert!(err.to_string().contains("<SECTION>__<KEY>"), "{err}");
        let err = with_env("", &[("RANKMYSTEPS__DATAFLOW__K", "ten")]).unwrap_err();
        assert!(err.to_string().contains("invalid type"), "{err}");
        let err = with_env("", &[("RANKMYSTEPS__DATAFLOW__GRACE", "forever")]).unwrap_err();
        assert!(err.to_string().contains("grace"), "{err}");
    }

    #[test]
    fn unknown_keys_are_errors() {
        let err = toml::from_str::<ClusterConfig>("[dataflow]\nkk = 3\n").unwrap_err();
        assert!(err.to_string().contains("kk"), "{err}");
    }
}
