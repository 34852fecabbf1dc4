//! Helpers shared by the integration tests that run on the real services.
#![allow(dead_code)]

use std::time::Duration;

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

/// A `cluster.toml` for the services script's Kafka, Cassandra and MinIO.
pub fn cluster_toml(topic: &str, keyspace: &str, prefix: &str, threads: usize, k: usize) -> String {
    format!(
        "[cluster]\nthreads = {threads}\n[kafka]\nbrokers = [\"{}\"]\ntopic = \"{topic}\"\n\
         [cassandra]\ncontact_points = [\"{}\"]\nkeyspace = \"{keyspace}\"\nconsistency = \"ONE\"\n\
         [s3]\nendpoint = \"{}\"\nregion = \"us-east-1\"\nbucket = \"rankmysteps-archive\"\n\
         prefix = \"{prefix}\"\npath_style = true\nchecksums_when_required = true\n\
         [dataflow]\nk = {k}\nepoch_ms = 200\n",
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

pub mod stream;
