//! [`CassandraConfig`]: the `[cassandra]` section of `cluster.toml`.

use std::collections::BTreeMap;
use std::time::Duration;

use scylla::statement::Consistency;
use serde::{Deserialize, Serialize};

use crate::SinkError;

/// Where and how results are written to Cassandra (design §5, §7).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CassandraConfig {
    /// Contact points, `host:port` (e.g. `["127.0.0.1:9042"]`); the driver discovers the other
    /// nodes from them.
    pub contact_points: Vec<String>,
    /// Keyspace of the tables (default `rankmysteps`): letters, digits and `_`, at most 48,
    /// starting with a letter (it is written into statements, so nothing else is accepted).
    #[serde(default = "default_keyspace")]
    pub keyspace: String,
    /// Replication map of the keyspace, used when the `schema` command creates it, e.g.
    /// `{ class = "NetworkTopologyStrategy", dc1 = "3" }` (default SimpleStrategy, factor 1).
    #[serde(default = "default_replication")]
    pub replication: BTreeMap<String, String>,
    /// Consistency level of every read and write (default `LOCAL_QUORUM`): `ONE`, `TWO`,
    /// `THREE`, `QUORUM`, `ALL`, `LOCAL_QUORUM`, `EACH_QUORUM` or `LOCAL_ONE`, any case.
    #[serde(default = "default_consistency")]
    pub consistency: String,
    /// Name of the environment variable holding the user name when authentication is on
    /// (credentials never go into the file). Set together with `password_env`.
    #[serde(default)]
    pub username_env: Option<String>,
    /// Name of the environment variable holding the password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// Most requests in flight at once per sink lane (default 32; most are batches): enough to
    /// keep a small cluster busy. More does not write faster, it only queues requests in
    /// Cassandra, where the next epoch's top-k rows then wait behind them (measured on the
    /// test services: 32 writes the bulk of an epoch as fast as 256, with a third of the
    /// top-k's tail latency).
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// Least time between the starts of two writes of the bulk lane (everything but the
    /// top-k), in milliseconds (default 0: back to back). Epochs arriving meanwhile are merged,
    /// so a longer interval costs the standings freshness and saves Cassandra the rewrites of
    /// users who changed again: room for the top-k when Cassandra shares its cores.
    #[serde(default)]
    pub bulk_interval_ms: u64,
    /// Client-side timeout of one request attempt, in milliseconds (default 5000).
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// Retries of a request that timed out or found too few replicas, with exponential backoff
    /// (default 5). Writes are idempotent upserts, so retrying is always safe.
    #[serde(default = "default_retries")]
    pub retries: u32,
}

fn default_keyspace() -> String {
    "rankmysteps".into()
}

fn default_replication() -> BTreeMap<String, String> {
    BTreeMap::from([
        ("class".to_owned(), "SimpleStrategy".to_owned()),
        ("replication_factor".to_owned(), "1".to_owned()),
    ])
}

fn default_consistency() -> String {
    "LOCAL_QUORUM".into()
}

fn default_max_in_flight() -> usize {
    32
}

fn default_request_timeout_ms() -> u64 {
    5000
}

fn default_retries() -> u32 {
    5
}

impl Default for CassandraConfig {
    /// A local single node: `127.0.0.1:9042`, every other key at its default.
    fn default() -> CassandraConfig {
        CassandraConfig {
            contact_points: vec!["127.0.0.1:9042".into()],
            keyspace: default_keyspace(),
            replication: default_replication(),
            consistency: default_consistency(),
            username_env: None,
            password_env: None,
            max_in_flight: default_max_in_flight(),
            bulk_interval_ms: 0,
            request_timeout_ms: default_request_timeout_ms(),
            retries: default_retries(),
        }
    }
}

impl CassandraConfig {
    /// Checks every key that can be checked without connecting.
    pub fn validate(&self) -> Result<(), SinkError> {
        let bad = |detail: String| SinkError::cassandra("configuration", detail);
        if self.contact_points.is_empty() {
            return Err(bad("contact_points is empty".into()));
        }
        if !is_identifier(&self.keyspace) {
            return Err(bad(format!(
                "keyspace {:?}: expected a letter then letters, digits or `_`, at most 48",
                self.keyspace
            )));
        }
        if !self.replication.contains_key("class") {
            return Err(bad("replication has no `class`".into()));
        }
        self.consistency()?;
        if self.username_env.is_some() != self.password_env.is_some() {
            return Err(bad("username_env and password_env go together".into()));
        }
        if self.max_in_flight == 0 {
            return Err(bad("max_in_flight must be at least 1".into()));
        }
        if self.request_timeout_ms == 0 {
            return Err(bad("request_timeout_ms must be at least 1".into()));
        }
        Ok(())
    }

    /// The driver's consistency level for `consistency`.
    pub fn consistency(&self) -> Result<Consistency, SinkError> {
        parse_consistency(&self.consistency)
    }

    /// The client-side timeout of one request attempt.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    /// `replication` as a CQL map literal, e.g. `{'class': 'SimpleStrategy', 'replication_factor': '1'}`.
    pub fn replication_cql(&self) -> String {
        let quote = |s: &str| format!("'{}'", s.replace('\'', "''"));
        let entries: Vec<String> = self
            .replication
            .iter()
            .map(|(k, v)| format!("{}: {}", quote(k), quote(v)))
            .collect();
        format!("{{{}}}", entries.join(", "))
    }

    /// The user name and password from the environment variables named by `username_env` and
    /// `password_env`; `None` when authentication is off.
    pub fn credentials(&self) -> Result<Option<(String, String)>, SinkError> {
        let (Some(user_var), Some(password_var)) = (&self.username_env, &self.password_env) else {
            return Ok(None);
        };
        let read = |var: &str| {
            std::env::var(var).map_err(|e| {
                SinkError::cassandra("configuration", format!("environment variable {var}: {e}"))
            })
        };
        Ok(Some((read(user_var)?, read(password_var)?)))
    }
}

/// A CQL identifier safe to write unquoted into statements (Cassandra's own rule for keyspace
/// names, restricted to a leading letter).
fn is_identifier(name: &str) -> bool {
    let b = name.as_bytes();
    (1..=48).contains(&b.len())
        && b[0].is_ascii_alphabetic()
        && b.iter().all(|&c| c.is_ascii_alphanumeric() || c == b'_')
}

/// Parses a consistency level name, any case. `ANY`, `SERIAL` and `LOCAL_SERIAL` are refused:
/// the level applies to reads and writes alike, and those are valid for only one of them.
pub fn parse_consistency(name: &str) -> Result<Consistency, SinkError> {
    Ok(match name.to_ascii_uppercase().as_str() {
        "ONE" => Consistency::One,
        "TWO" => Consistency::Two,
        "THREE" => Consistency::Three,
        "QUORUM" => Consistency::Quorum,
        "ALL" => Consistency::All,
        "LOCAL_QUORUM" => Consistency::LocalQuorum,
        "EACH_QUORUM" => Consistency::EachQuorum,
        "LOCAL_ONE" => Consistency::LocalOne,
        _ => {
            return Err(SinkError::cassandra(
                "configuration",
                format!(
                    "consistency {name:?}: expected one of ONE, TWO, THREE, QUORUM, ALL, \
                     LOCAL_QUORUM, EACH_QUORUM, LOCAL_ONE"
                ),
            ))
        }
    })
}
