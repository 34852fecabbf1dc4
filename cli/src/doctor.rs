//! `rankmysteps doctor`: checks every configured part of a deployment with the real clients
//! and says, for each, what is wrong and how to fix it.
//!
//! Each check is one [`Check`]: a part (`kafka`, `cassandra`, `s3`, `cluster`, `web`,
//! `metrics`), a name, a status, what was found, and a fix when something is wrong. A part
//! that cannot be reached gets one failed check; the checks that need it are then left out
//! (they could only repeat the same failure).

use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::time::Duration;

use rankmysteps_sinks::cassandra::probe::{expected_tables, probe as probe_cassandra};
use rankmysteps_sinks::s3::S3Archive;
use rankmysteps_sources::kafka::KafkaConfig;
use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use serde::Serialize;

use crate::config::ClusterConfig;

/// The outcome of one check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// As it should be.
    Ok,
    /// Works, but deserves a look (the exit status stays 0).
    Warn,
    /// Broken: the job would fail or lose data (the exit status is 1).
    Fail,
}

/// One check: `part` / `check`, what was found, and a fix when it is not ok.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    /// `kafka`, `cassandra`, `s3`, `cluster`, `web` or `metrics`.
    pub part: &'static str,
    /// What was checked, e.g. `reachable`, `topic`, `schema`.
    pub check: String,
    /// The outcome.
    pub status: Status,
    /// What was found.
    pub detail: String,
    /// How to fix it (absent when ok).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Check {
    fn new(part: &'static str, check: &str, status: Status, detail: String) -> Check {
        Check {
            part,
            check: check.to_owned(),
            status,
            detail,
            fix: None,
        }
    }

    fn ok(part: &'static str, check: &str, detail: String) -> Check {
        Check::new(part, check, Status::Ok, detail)
    }

    fn fail(part: &'static str, check: &str, detail: String, fix: String) -> Check {
        Check {
            fix: Some(fix),
            ..Check::new(part, check, Status::Fail, detail)
        }
    }

    fn warn(part: &'static str, check: &str, detail: String, fix: String) -> Check {
        Check {
            fix: Some(fix),
            ..Check::new(part, check, Status::Warn, detail)
        }
    }
}

/// What to check.
#[derive(Clone, Debug)]
pub struct DoctorSpec {
    /// The deployment.
    pub config: ClusterConfig,
    /// Where it was read from (named in the fixes).
    pub config_path: String,
    /// The metrics addresses the processes will listen on.
    pub metrics: Vec<String>,
    /// How long to wait for a service to answer.
    pub timeout: Duration,
}

/// Runs every check of `spec`, part by part.
pub fn diagnose(spec: &DoctorSpec) -> Vec<Check> {
    let mut checks = Vec::new();
    let config = &spec.config;
    match &config.kafka {
        Some(kafka) => checks.extend(check_kafka(kafka, spec)),
        None => checks.push(Check::warn(
            "kafka",
            "configured",
            "no [kafka] section".into(),
            "workers need one: add [kafka] brokers and topic".into(),
        )),
    }
    match &config.cassandra {
        Some(_) => checks.extend(check_cassandra(spec)),
        None => checks.push(Check::warn(
            "cassandra",
            "configured",
            "no [cassandra] section: no results table and no progress record (no restarts)".into(),
            "add [cassandra] contact_points and keyspace".into(),
        )),
    }
    match &config.s3 {
        Some(_) => checks.extend(check_s3(spec)),
        None => checks.push(Check::warn(
            "s3",
            "configured",
            "no [s3] section: no raw-event archive (no replays, no restarts)".into(),
            "add [s3] endpoint, region and bucket".into(),
        )),
    }
    checks.extend(check_hosts(&config.cluster.hosts));
    let web = config
        .web
        .as_ref()
        .map_or("127.0.0.1:8080", |w| w.listen.as_str());
    checks.push(check_listen("web", web, "[web] listen"));
    for address in &spec.metrics {
        checks.push(check_listen("metrics", address, "--metrics"));
    }
    checks
}

// ------------------------------------------------------------------------------------ Kafka

fn check_kafka(kafka: &KafkaConfig, spec: &DoctorSpec) -> Vec<Check> {
    let brokers = kafka.brokers.join(", ");
    let mut client = kafka.client_config();
    // A metadata request must not create the topic it asks about.
    client.set("allow.auto.create.topics", "false");
    let consumer: BaseConsumer = match client.create() {
        Ok(c) => c,
        Err(e) => {
            return vec![Check::fail(
                "kafka",
                "client",
                format!("cannot configure the Kafka client: {e}"),
                "check [kafka] properties (they are passed to librdkafka as they are)".into(),
            )]
        }
    };
    let metadata = match consumer.fetch_metadata(None, spec.timeout) {
        Ok(m) => m,
        Err(e) => {
            return vec![Check::fail(
                "kafka",
                "reachable",
                format!("no broker of [{brokers}] answered within {:?}: {e}", spec.timeout),
                format!(
                    "check [kafka] brokers in {} (or RANKMYSTEPS__KAFKA__BROKERS) and that Kafka runs there (locally: scripts/services start kafka)",
                    spec.config_path
                ),
            )]
        }
    };
    let mut checks = vec![Check::ok(
        "kafka",
        "reachable",
        format!(
            "{} broker(s): {}",
            metadata.brokers().len(),
            metadata
                .brokers()
                .iter()
                .map(|b| format!("{}:{}", b.host(), b.port()))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    )];
    let topic = metadata
        .topics()
        .iter()
        .find(|t| t.name() == kafka.topic && t.error().is_none());
    let Some(topic) = topic else {
        checks.push(Check::fail(
            "kafka",
            "topic",
            format!("topic {:?} does not exist", kafka.topic),
            format!(
                "create it: scripts/services kafka topics --create --topic {} --partitions 4 (or `rankmysteps produce --config {}` creates it)",
                kafka.topic, spec.config_path
            ),
        ));
        return checks;
    };
    let partitions = topic.partitions().len();
    let workers = spec.config.cluster.threads * spec.config.cluster.hosts.len().max(1);
    checks.push(if partitions < workers {
        Check::warn(
            "kafka",
            "topic",
            format!(
                "topic {:?}: {partitions} partitions for {workers} workers: {} workers will have no partition",
                kafka.topic,
                workers - partitions
            ),
            format!(
                "add partitions (scripts/services kafka topics --alter --topic {} --partitions {workers}) or run fewer threads",
                kafka.topic
            ),
        )
    } else {
        Check::ok(
            "kafka",
            "topic",
            format!("topic {:?}: {partitions} partitions", kafka.topic),
        )
    });
    checks.push(check_retention(kafka, spec));
    checks
}

/// The topic's `cleanup.policy` and `retention.ms`: compaction would drop a user's older
/// records (they share a key) before a restart reads them; a short retention loses the
/// records a stopped worker has not consumed yet.
fn check_retention(kafka: &KafkaConfig, spec: &DoctorSpec) -> Check {
    let admin: AdminClient<DefaultClientContext> = match kafka.client_config().create() {
        Ok(a) => a,
        Err(e) => {
            return Check::fail(
                "kafka",
                "retention",
                format!("cannot create an admin client: {e}"),
                "check [kafka] properties".into(),
            )
        }
    };
    let options = AdminOptions::new().request_timeout(Some(spec.timeout));
    let described = futures_executor::block_on(
        admin.describe_configs([&ResourceSpecifier::Topic(&kafka.topic)], &options),
    );
    let entries = match described.as_ref().map(|r| r.first()) {
        Ok(Some(Ok(resource))) => &resource.entries,
        Ok(Some(Err(code))) => {
            return Check::fail(
                "kafka",
                "retention",
                format!(
                    "cannot read the configuration of topic {:?}: {code}",
                    kafka.topic
                ),
                "the client needs DescribeConfigs on the topic".into(),
            )
        }
        Ok(None) => {
            return Check::fail(
                "kafka",
                "retention",
                "the broker returned no configuration".into(),
                "check the broker".into(),
            )
        }
        Err(e) => {
            return Check::fail(
                "kafka",
                "retention",
                format!(
                    "cannot read the configuration of topic {:?}: {e}",
                    kafka.topic
                ),
                "the client needs DescribeConfigs on the topic".into(),
            )
        }
    };
    let value = |name: &str| {
        entries
            .iter()
            .find(|e| e.name == name)
            .and_then(|e| e.value.clone())
    };
    let policy = value("cleanup.policy").unwrap_or_else(|| "delete".into());
    if policy.contains("compact") {
        return Check::fail(
            "kafka",
            "retention",
            format!("topic {:?} has cleanup.policy={policy}: compaction keeps only the last record of each user", kafka.topic),
            format!(
                "scripts/services kafka configs --alter --entity-type topics --entity-name {} --add-config cleanup.policy=delete",
                kafka.topic
            ),
        );
    }
    let retention: Option<i64> = value("retention.ms").and_then(|v| v.parse().ok());
    match retention {
        Some(ms) if (0..24 * 3_600_000).contains(&ms) => Check::warn(
            "kafka",
            "retention",
            format!(
                "topic {:?} keeps records {}: a worker stopped for longer loses what it had not consumed (its restart then stops with an error)",
                kafka.topic,
                human_ms(ms)
            ),
            format!(
                "raise it: scripts/services kafka configs --alter --entity-type topics --entity-name {} --add-config retention.ms=604800000",
                kafka.topic
            ),
        ),
        Some(ms) if ms >= 0 => Check::ok(
            "kafka",
            "retention",
            format!("cleanup.policy={policy}, records kept {}", human_ms(ms)),
        ),
        _ => Check::ok(
            "kafka",
            "retention",
            format!("cleanup.policy={policy}, records kept forever"),
        ),
    }
}

/// The SDK's errors end with their whole debug structure: one line of a report keeps the
/// first 300 characters.
fn short(text: &str) -> String {
    match text.char_indices().nth(300) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_owned(),
    }
}

fn human_ms(ms: i64) -> String {
    let hours = ms as f64 / 3_600_000.0;
    if hours >= 48.0 {
        format!("{:.1} days", hours / 24.0)
    } else if hours >= 1.0 {
        format!("{hours:.1} hours")
    } else {
        format!("{:.0} s", ms as f64 / 1000.0)
    }
}

// -------------------------------------------------------------------------------- Cassandra

fn check_cassandra(spec: &DoctorSpec) -> Vec<Check> {
    let c = spec
        .config
        .cassandra
        .as_ref()
        .expect("called with [cassandra]");
    let path = &spec.config_path;
    let probe = match probe_cassandra(c) {
        Ok(p) => p,
        Err(e) => {
            let text = e.to_string();
            let fix = if text.contains("environment variable") {
                "export the variables that [cassandra] username_env / password_env name".into()
            } else if text.to_ascii_lowercase().contains("authenticat") {
                "check the Cassandra user and password (the variables named by username_env / password_env)".into()
            } else {
                format!(
                    "check [cassandra] contact_points in {path} (or RANKMYSTEPS__CASSANDRA__CONTACT_POINTS) and that Cassandra runs there (locally: scripts/services start cassandra)"
                )
            };
            return vec![Check::fail(
                "cassandra",
                "reachable",
                format!("[{}]: {text}", c.contact_points.join(", ")),
                fix,
            )];
        }
    };
    let mut checks = vec![Check::ok(
        "cassandra",
        "reachable",
        format!(
            "[{}]: Cassandra {}",
            c.contact_points.join(", "),
            probe.release_version
        ),
    )];
    let Some(replication) = &probe.replication else {
        checks.push(Check::fail(
            "cassandra",
            "keyspace",
            format!("keyspace {:?} does not exist", c.keyspace),
            format!("create it and its tables: rankmysteps schema apply --config {path}"),
        ));
        return checks;
    };
    checks.push(Check::ok(
        "cassandra",
        "keyspace",
        format!(
            "keyspace {:?}, replication {}",
            c.keyspace,
            replication
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    ));
    let expected = expected_tables();
    let mut missing = Vec::new();
    let mut different = Vec::new();
    for (table, columns) in &expected {
        let Some(found) = probe.tables.get(table) else {
            missing.push(table.clone());
            continue;
        };
        for (column, ty) in columns {
            match found.get(column) {
                None => different.push(format!("{table}.{column} is missing")),
                Some(t) if t != ty => {
                    different.push(format!("{table}.{column} is {t}, schema.cql says {ty}"))
                }
                Some(_) => {}
            }
        }
    }
    checks.push(if !missing.is_empty() {
        Check::fail(
            "cassandra",
            "schema",
            format!(
                "keyspace {:?} lacks the tables {}",
                c.keyspace,
                missing.join(", ")
            ),
            format!("create them: rankmysteps schema apply --config {path}"),
        )
    } else if !different.is_empty() {
        Check::fail(
            "cassandra",
            "schema",
            format!("tables differ from schema.cql: {}", different.join("; ")),
            "these tables predate the current schema.cql: migrate them (ALTER TABLE) or recreate the keyspace".into(),
        )
    } else {
        Check::ok(
            "cassandra",
            "schema",
            format!("{} tables match schema.cql", expected.len()),
        )
    });
    match &probe.consistency_read {
        Some(Ok(())) => checks.push(Check::ok(
            "cassandra",
            "consistency",
            format!("a read at {} succeeds", c.consistency),
        )),
        Some(Err(e)) => checks.push(Check::fail(
            "cassandra",
            "consistency",
            e.to_string(),
            format!(
                "too few replicas for {}: lower [cassandra] consistency, or raise the keyspace's replication and bring its replicas up",
                c.consistency
            ),
        )),
        None => {}
    }
    checks
}

// ------------------------------------------------------------------------------------- S3

fn check_s3(spec: &DoctorSpec) -> Vec<Check> {
    let s3 = spec.config.s3.as_ref().expect("called with [s3]");
    let endpoint = s3.endpoint.as_deref().unwrap_or("AWS");
    let archive = match S3Archive::connect(s3) {
        Ok(a) => a,
        Err(e) => {
            let text = e.to_string();
            let fix = if text.contains("SignatureDoesNotMatch") {
                "the secret key is wrong: check AWS_SECRET_ACCESS_KEY (or the profile) of the standard AWS chain".to_owned()
            } else if text.contains("InvalidAccessKeyId") {
                "the access key is unknown to the store: check AWS_ACCESS_KEY_ID (or the profile)"
                    .into()
            } else if text.contains("dispatch failure") && !text.contains("credentials") {
                format!(
                    "check [s3] endpoint and region in {} and that the store runs there (locally: scripts/services start s3)",
                    spec.config_path
                )
            } else if text.contains("NoSuchBucket") || text.contains("HTTP 404") {
                format!("create the bucket {:?} (or fix [s3] bucket)", s3.bucket)
            } else if text.contains("credentials") {
                "no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or a profile)"
                    .into()
            } else if text.contains("AccessDenied") || text.contains("HTTP 403") {
                "the credentials are refused for this bucket: check its policy".into()
            } else {
                format!(
                    "check [s3] endpoint and region in {} and that the store runs there (locally: scripts/services start s3)",
                    spec.config_path
                )
            };
            return vec![Check::fail(
                "s3",
                "bucket",
                format!("bucket {:?} at {endpoint}: {}", s3.bucket, short(&text)),
                fix,
            )];
        }
    };
    let mut checks = vec![Check::ok(
        "s3",
        "bucket",
        format!("bucket {:?} at {endpoint} answers", s3.bucket),
    )];
    let key = format!(
        "{}doctor/{}-{}",
        archive.prefix(),
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    );
    let body = b"rankmysteps doctor write check\n".to_vec();
    let written = archive
        .put_bytes(&key, body.clone())
        .and_then(|()| archive.get_object(&key))
        .and_then(|read| {
            archive.delete(&key)?;
            Ok(read)
        });
    checks.push(match written {
        Ok(read) if read == body => Check::ok(
            "s3",
            "write",
            format!(
                "wrote, read back and deleted s3://{}/{key} (checksums {})",
                s3.bucket,
                if s3.checksums_when_required {
                    "when required"
                } else {
                    "always"
                }
            ),
        ),
        Ok(_) => Check::fail(
            "s3",
            "write",
            format!("s3://{}/{key} read back differently", s3.bucket),
            "the store does not keep what it is given: check it".into(),
        ),
        Err(e) => Check::fail(
            "s3",
            "write",
            e.to_string(),
            if s3.checksums_when_required {
                "the credentials need write and delete permissions on the bucket".into()
            } else {
                "many S3-compatible stores need [s3] checksums_when_required = true; the credentials also need write and delete permissions".into()
            },
        ),
    });
    checks
}

// -------------------------------------------------------------------------- local addresses

/// `[cluster] hosts`: each resolves; those on this machine have their port free.
fn check_hosts(hosts: &[String]) -> Vec<Check> {
    hosts
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let name = format!("process {i}");
            let addresses: Vec<SocketAddr> = match host.to_socket_addrs() {
                Ok(a) => a.collect(),
                Err(e) => {
                    return Check::fail(
                        "cluster",
                        &name,
                        format!("{host}: cannot resolve: {e}"),
                        "fix [cluster] hosts (host:port of each worker process, in process order) or the host's DNS / /etc/hosts entry".into(),
                    )
                }
            };
            // An address of this machine can be bound (port 0); another machine's cannot.
            let local = addresses
                .iter()
                .find(|a| TcpListener::bind(SocketAddr::new(a.ip(), 0)).is_ok());
            match local {
                None => Check::ok(
                    "cluster",
                    &name,
                    format!(
                        "{host} resolves to {} (another machine)",
                        addresses.first().map_or(String::new(), |a| a.to_string())
                    ),
                ),
                Some(a) => match TcpListener::bind(a) {
                    Ok(_) => Check::ok("cluster", &name, format!("{host} ({a}) is on this machine and free")),
                    Err(e) => Check::fail(
                        "cluster",
                        &name,
                        format!("{host} ({a}) is on this machine but cannot be bound: {e}"),
                        "another program (or a worker already running) holds the port: stop it or pick another port in [cluster] hosts".into(),
                    ),
                },
            }
        })
        .collect()
}

/// A listener's address: valid, and free on this machine.
fn check_listen(part: &'static str, address: &str, setting: &str) -> Check {
    let resolved = address.to_socket_addrs().map(|mut a| a.next());
    match resolved {
        Ok(Some(a)) => match TcpListener::bind(a) {
            Ok(_) => {
                let mut check = Check::ok(part, "listen", format!("{address} is free"));
                if a.ip().is_unspecified() {
                    check.status = Status::Warn;
                    check.detail = format!("{address} is free, and listens on every interface");
                    check.fix = Some(format!(
                        "{setting} exposes internals beyond this machine: prefer 127.0.0.1 unless that is what you want"
                    ));
                }
                check
            }
            Err(e) => Check::fail(
                part,
                "listen",
                format!("{address} cannot be bound: {e}"),
                format!("another program holds it: stop it or choose another {setting}"),
            ),
        },
        Ok(None) | Err(_) => Check::fail(
            part,
            "listen",
            format!("{address:?} is not a host:port address"),
            format!("fix {setting}"),
        ),
    }
}

/// One line per check: `ok    kafka      reachable    1 broker(s) ...`, then the fix.
pub fn render(checks: &[Check]) -> String {
    let mut out = String::new();
    for c in checks {
        let status = match c.status {
            Status::Ok => "ok",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        };
        out.push_str(&format!(
            "{status:<5} {:<10} {:<12} {}\n",
            c.part, c.check, c.detail
        ));
        if let Some(fix) = &c.fix {
            out.push_str(&format!("{:<29}fix: {fix}\n", ""));
        }
    }
    let failed = checks.iter().filter(|c| c.status == Status::Fail).count();
    let warned = checks.iter().filter(|c| c.status == Status::Warn).count();
    out.push_str(&format!(
        "{} checks: {} ok, {warned} warnings, {failed} failed\n",
        checks.len(),
        checks.len() - failed - warned
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_taken_port_fails_and_a_free_one_passes() {
        let held = TcpListener::bind("127.0.0.1:0").unwrap();
        let taken = held.local_addr().unwrap().to_string();
        let c = check_listen("web", &taken, "[web] listen");
        assert_eq!(c.status, Status::Fail, "{c:?}");
        assert!(c.fix.as_deref().unwrap().contains("[web] listen"));
        drop(held);
        assert_eq!(
            check_listen("web", &taken, "[web] listen").status,
            Status::Ok
        );
        assert_eq!(check_listen("web", "nonsense", "x").status, Status::Fail);
        assert_eq!(check_listen("web", "0.0.0.0:0", "x").status, Status::Warn);
    }

    #[test]
    fn hosts_resolve_and_local_ports_are_free() {
        let held = TcpListener::bind("127.0.0.1:0").unwrap();
        let taken = held.local_addr().unwrap().to_string();
        let checks = check_hosts(&[
            taken,
            "127.0.0.1:0".into(),
            "no-such-host.invalid:2101".into(),
        ]);
        let statuses: Vec<Status> = checks.iter().map(|c| c.status).collect();
        assert_eq!(
            statuses,
            [Status::Fail, Status::Ok, Status::Fail],
            "{checks:?}"
        );
        assert!(checks[2].detail.contains("cannot resolve"), "{checks:?}");
    }

    #[test]
    fn render_counts_and_shows_fixes() {
        let text = render(&[
            Check::ok("web", "listen", "a".into()),
            Check::fail("s3", "bucket", "b".into(), "do c".into()),
        ]);
        assert!(text.contains("FAIL  s3"), "{text}");
        assert!(text.contains("fix: do c"), "{text}");
        assert!(
            text.ends_with("2 checks: 1 ok, 0 warnings, 1 failed\n"),
            "{text}"
        );
    }
}
