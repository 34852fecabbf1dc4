//! Helpers shared by the integration tests that run on the real services.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use rankmysteps_sinks::cassandra::CassandraReader;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::ClientConfig;

/// Cassandra's CQL address (`RANKMYSTEPS_CASSANDRA`, default the services script's).
pub fn cassandra() -> String {
    std::env::var("RANKMYSTEPS_CASSANDRA").unwrap_or_else(|_| "127.0.0.1:9042".into())
}

/// Kafka's bootstrap address (`RANKMYSTEPS_KAFKA`, default the services script's).
pub fn brokers() -> String {
    std::env::var("RANKMYSTEPS_KAFKA").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// The S3 endpoint (`RANKMYSTEPS_S3_ENDPOINT`, default the services script's MinIO).
pub fn s3_endpoint() -> String {
    std::env::var("RANKMYSTEPS_S3_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:9000".into())
}

/// Sets the services script's S3 credentials where the environment has none. Call it first
/// thing in a test, before any client or thread exists.
pub fn s3_credentials() {
    for (k, v) in [
        ("AWS_ACCESS_KEY_ID", "rankmysteps"),
        ("AWS_SECRET_ACCESS_KEY", "rankmysteps-secret"),
        ("AWS_REGION", "us-east-1"),
    ] {
        if std::env::var(k).is_err() {
            std::env::set_var(k, v);
        }
    }
}

/// A name unique to this test run: `<stem><pid>-<milliseconds>`.
pub fn unique(stem: &str) -> String {
    format!(
        "{stem}{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis()
    )
}

/// Creates `topic` with `partitions` partitions; fails clearly when Kafka is not there.
pub fn create_topic(topic: &str, partitions: i32) {
    let mut client = ClientConfig::new();
    client.set("bootstrap.servers", brokers());
    let admin: AdminClient<DefaultClientContext> = client.create().unwrap();
    let created = futures_executor::block_on(admin.create_topics(
        [&NewTopic::new(
            topic,
            partitions,
            TopicReplication::Fixed(1),
        )],
        &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
    ))
    .expect("Kafka must be running: scripts/services start kafka");
    assert!(created.iter().all(|r| r.is_ok()), "{created:?}");
}

/// A `cluster.toml` for the services script's Kafka, Cassandra and MinIO. Checkpoints every
/// second (5 epochs), so that the restarts of the tests start from checkpoints.
pub fn cluster_toml(topic: &str, keyspace: &str, prefix: &str, threads: usize, k: usize) -> String {
    format!(
        "[cluster]\nthreads = {threads}\n[kafka]\nbrokers = [\"{}\"]\ntopic = \"{topic}\"\n\
         [cassandra]\ncontact_points = [\"{}\"]\nkeyspace = \"{keyspace}\"\nconsistency = \"ONE\"\n\
         [s3]\nendpoint = \"{}\"\nregion = \"us-east-1\"\nbucket = \"rankmysteps-archive\"\n\
         prefix = \"{prefix}\"\npath_style = true\nchecksums_when_required = true\n\
         [dataflow]\nk = {k}\nepoch_ms = 200\ncheckpoint_interval = \"1s\"\n",
        brokers(),
        cassandra(),
        s3_endpoint()
    )
}

/// A child process killed (and reaped) if the test fails before it is stopped.
pub struct Child(pub std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A fresh deployment on the services: a topic, a keyspace with the schema applied (by
/// `rankmysteps schema apply`), an archive prefix, and their `cluster.toml`.
pub struct Deployment {
    /// The topic.
    pub topic: String,
    /// The keyspace.
    pub keyspace: String,
    /// The archive's key prefix (ends with `/`).
    pub prefix: String,
    /// The `cluster.toml`.
    pub config: PathBuf,
    /// A reader of the keyspace.
    pub reader: CassandraReader,
    /// Holds `config`.
    pub dir: tempfile::TempDir,
}

impl Drop for Deployment {
    /// A failed test keeps its directory (the config, the launcher's and the processes' logs)
    /// and says where, so that a failure in CI can be read afterwards; so does every test
    /// with `RANKMYSTEPS_KEEP_TEST_DIRS` set.
    fn drop(&mut self) {
        if std::env::var_os("RANKMYSTEPS_KEEP_TEST_DIRS").is_some() {
            self.dir.disable_cleanup(true);
            eprintln!("kept the test's directory: {}", self.dir.path().display());
        } else if std::thread::panicking() {
            self.dir.disable_cleanup(true);
            eprintln!(
                "kept the failed test's directory: {}",
                self.dir.path().display()
            );
            // And the end of every log in it, for a CI run whose machine is gone.
            let mut stack = vec![self.dir.path().to_path_buf()];
            while let Some(dir) = stack.pop() {
                let Ok(entries) = std::fs::read_dir(&dir) else {
                    continue;
                };
                for path in entries.flatten().map(|e| e.path()) {
                    if path.is_dir() {
                        stack.push(path);
                    } else if path.extension().is_some_and(|e| e == "log") {
                        let text = std::fs::read_to_string(&path).unwrap_or_default();
                        let lines: Vec<&str> = text.lines().collect();
                        let tail = &lines[lines.len().saturating_sub(60)..];
                        eprintln!("--- {} (last {} lines)", path.display(), tail.len());
                        eprintln!("{}", tail.join("\n"));
                    }
                }
            }
        }
    }
}

impl Deployment {
    /// Names from `stem` (`rms-<stem>-…` topic of `partitions`, `rms_<stem>_…` keyspace,
    /// `it-<stem>-…/` prefix); `threads` and `k` as in [`cluster_toml`]; `hosts` (a TOML
    /// `hosts = [...]` line) for a cluster of several processes.
    pub fn new(
        stem: &str,
        partitions: i32,
        threads: usize,
        k: usize,
        hosts: Option<&str>,
    ) -> Deployment {
        s3_credentials();
        let topic = unique(&format!("rms-{stem}-"));
        let keyspace = unique(&format!("rms_{stem}_")).replace('-', "_");
        let prefix = format!("{}/", unique(&format!("it-{stem}-")));
        create_topic(&topic, partitions);
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("cluster.toml");
        let mut text = cluster_toml(&topic, &keyspace, &prefix, threads, k);
        if let Some(hosts) = hosts {
            text = text.replace("[cluster]\n", &format!("[cluster]\n{hosts}\n"));
        }
        std::fs::write(&config, text).unwrap();
        let schema = Command::new(env!("CARGO_BIN_EXE_rankmysteps"))
            .args(["schema", "apply", "--config"])
            .arg(&config)
            .status()
            .unwrap();
        assert!(
            schema.success(),
            "schema apply (Cassandra must be running: scripts/services start cassandra)"
        );
        let cluster = rankmysteps::config::ClusterConfig::load(&config).unwrap();
        let reader = CassandraReader::connect(cluster.cassandra.as_ref().unwrap()).unwrap();
        Deployment {
            topic,
            keyspace,
            prefix,
            config,
            reader,
            dir,
        }
    }
}

/// The archive of the services' MinIO, and every record of its `raw/` objects under `prefix`
/// (in key order).
pub fn archived(
    prefix: &str,
) -> (
    rankmysteps_sinks::s3::S3Archive,
    Vec<rankmysteps_sinks::s3::ArchiveRecord>,
) {
    std::env::set_var("RANKMYSTEPS_S3_ENDPOINT", s3_endpoint());
    let s3 = rankmysteps::config::s3_from_env().expect("endpoint set above");
    let archive = rankmysteps_sinks::s3::S3Archive::connect(&s3).unwrap();
    let raw = archive
        .read_all(&format!("{prefix}raw/"))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    (archive, raw)
}

pub mod inspect;
pub mod launch;
pub mod stream;
