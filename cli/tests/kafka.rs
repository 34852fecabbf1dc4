//! Kafka → `rankmysteps worker` → local output, against the sequential reference, on a real
//! Apache Kafka broker (`scripts/services start kafka`). Compiled only with the `integration`
//! feature: `cargo test -p rankmysteps --features integration --test kafka`. It fails (never
//! skips) when the broker is not there.
#![cfg(feature = "integration")]

mod common;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{brokers, Child};
use rankmysteps_dataflow::event::{
    format_day, format_user, parse_day, Event, Reason, User, MICROS_PER_SEC,
};
use rankmysteps_dataflow::pipeline::Settings;
use rankmysteps_dataflow::reference::{Record, Reference};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::ClientConfig;

use rankmysteps_dataflow::random::SplitMix64 as Rng;

/// Records with their meaning: recent days (none closes: the watermark stays below), several
/// offsets, ties, duplicates by event_id, and bad records of every parse-time reason.
fn records(
    n: usize,
) -> Vec<(
    User,
    String,
    Result<(User, i32, i64, u32, Option<String>), Reason>,
)> {
    let mut rng = Rng(42);
    let users: Vec<User> = (1..=30u128).map(|i| i * 0x1_0000_0001).collect();
    let day = parse_day("2026-01-10").unwrap();
    let mut out = Vec::new();
    for _ in 0..n {
        let user = users[rng.below(users.len() as u64) as usize];
        let u = format_user(user);
        let bad = rng.below(20);
        let (text, meaning) = match bad {
            0 => ("{not json".to_owned(), Err(Reason::Malformed)),
            1 => (
                format!("{{\"uuid\":\"{u}0\",\"timestamp\":\"2026-01-10T10:00:00Z\",\"steps\":1}}"),
                Err(Reason::InvalidUuid),
            ),
            2 => (
                format!("{{\"uuid\":\"{u}\",\"timestamp\":\"2026-01-32T10:00:00Z\",\"steps\":1}}"),
                Err(Reason::InvalidTimestamp),
            ),
            3 => (
                format!(
                    "{{\"uuid\":\"{u}\",\"timestamp\":\"2026-01-10T10:00:00Z\",\"steps\":\"7\"}}"
                ),
                Err(Reason::InvalidSteps),
            ),
            4 => (
                format!("{{\"uuid\":\"{u}\",\"timestamp\":\"2999-01-10T10:00:00Z\",\"steps\":1}}"),
                Err(Reason::Future),
            ),
            _ => {
                let hour = rng.below(10) as i64;
                let steps = rng.below(3) as u32 * 5;
                let id = (rng.below(3) == 0).then(|| format!("e{}", rng.below(4)));
                let id_json = id
                    .as_ref()
                    .map(|i| format!(",\"event_id\":\"{i}\""))
                    .unwrap_or_default();
                let text = format!("{{\"uuid\":\"{u}\",\"timestamp\":\"2026-01-10T{:02}:00:00+05:45\",\"steps\":{steps}{id_json}}}", hour + 6);
                let time = (day as i64 * 86_400 + (hour + 6) * 3600 - (5 * 3600 + 45 * 60))
                    * MICROS_PER_SEC;
                (text, Ok((user, day, time, steps, id)))
            }
        };
        out.push((user, text, meaning));
    }
    out
}

#[test]
fn worker_matches_reference_on_real_kafka() {
    common::s3_credentials();
    let topic = common::unique("rms-it-");
    let keyspace = common::unique("rms_it_").replace('-', "_");
    let prefix = format!("{}/", common::unique("it-kafka-"));
    let s3_endpoint = common::s3_endpoint();
    let mut client = ClientConfig::new();
    client.set("bootstrap.servers", brokers());
    common::create_topic(&topic, 4);

    let records = records(3000);
    let producer: ThreadedProducer<DefaultProducerContext> = client
        .clone()
        .set("enable.idempotence", "true")
        .create()
        .unwrap();
    // Keyed by user: one user's records share a partition, in send order.
    for (user, text, _) in &records {
        let key = format_user(*user);
        producer
            .send(BaseRecord::to(&topic).key(&key).payload(text))
            .unwrap();
    }
    producer.flush(Duration::from_secs(30)).unwrap();

    // Reference: one user's records share a partition, so "first in (epoch, partition, offset)"
    // is "first sent" among that user's records; no day closes, so epochs do not matter.
    let settings = Settings {
        k: 10,
        ..Settings::default()
    };
    let mut reference = Reference::new(settings.clone());
    let batch: Vec<Record> = records
        .iter()
        .enumerate()
        .map(|(i, (_, _, meaning))| match meaning {
            Err(reason) => Record::Rejected(i as u64, *reason),
            Ok((user, day, time, steps, id)) => Record::Event(Event {
                pos: i as u64,
                user: *user,
                day: *day,
                time: *time,
                steps: *steps,
                event_id: id.clone().map(Into::into),
                raw: None,
            }),
        })
        .collect();
    reference.epoch(0, batch);

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cluster.toml");
    std::fs::write(
        &config,
        common::cluster_toml(&topic, &keyspace, &prefix, 3, 10),
    )
    .unwrap();
    let bin = env!("CARGO_BIN_EXE_rankmysteps");
    let schema = Command::new(bin)
        .args(["schema", "apply", "--config"])
        .arg(&config)
        .status()
        .unwrap();
    assert!(
        schema.success(),
        "schema apply (Cassandra must be running: scripts/services start cassandra)"
    );
    let out = dir.path().join("out");
    let mut child = Child(
        Command::new(env!("CARGO_BIN_EXE_rankmysteps"))
            .args(["worker", "--config"])
            .arg(&config)
            .arg("--out")
            .arg(&out)
            .args(["--metrics", "off"])
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let consumed = loop {
        let progress: Option<serde_json::Value> =
            std::fs::read_to_string(out.join("progress.json"))
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok());
        let done = progress.as_ref().and_then(|p| {
            let s = &p["stats"];
            let n = s["accepted"].as_u64()?
                + s["duplicate"].as_u64()?
                + Reason::ALL
                    .iter()
                    .map(|r| s["rejected"][r.code()].as_u64().unwrap_or(0))
                    .sum::<u64>();
            Some(n)
        });
        if done == Some(records.len() as u64) {
            break progress.unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "worker did not consume everything: {progress:?}"
        );
        assert!(child.0.try_wait().unwrap().is_none(), "worker exited early");
        std::thread::sleep(Duration::from_millis(200));
    };
    // Graceful stop (Ctrl-C): the worker writes its last epoch and exits 0.
    Command::new("kill")
        .args(["-INT", &child.0.id().to_string()])
        .status()
        .unwrap();
    let status = child.0.wait().unwrap();
    assert!(status.success(), "{status:?}");

    let next: u64 = consumed["positions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["next"].as_u64().unwrap())
        .sum();
    assert_eq!(next, records.len() as u64, "positions cover every record");
    let s = &reference.stats;
    assert_eq!(consumed["stats"]["accepted"], s.accepted);
    assert_eq!(consumed["stats"]["duplicate"], s.duplicate);
    for r in Reason::ALL {
        assert_eq!(
            consumed["stats"]["rejected"][r.code()],
            s.rejected(r),
            "{}",
            r.code()
        );
    }
    assert!(s.duplicate > 0 && s.rejected_total() > 0);
    for (day, result) in &reference.days {
        let top: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(out.join("days").join(format_day(*day)).join("top.json"))
                .unwrap(),
        )
        .unwrap();
        let expected: Vec<serde_json::Value> = result.top(10).iter().map(|r| serde_json::json!({"rank": r.rank, "user": format_user(r.user), "steps": r.steps})).collect();
        assert_eq!(top["top"], serde_json::Value::from(expected));
        assert_eq!(top["users"], result.totals.len());
        let totals: BTreeMap<String, u64> =
            std::fs::read_to_string(out.join("days").join(format_day(*day)).join("totals.csv"))
                .unwrap()
                .lines()
                .skip(1)
                .map(|l| {
                    let (u, s) = l.split_once(',').unwrap();
                    (u.to_owned(), s.parse().unwrap())
                })
                .collect();
        let expected: BTreeMap<String, u64> = result
            .totals
            .iter()
            .map(|(u, s)| (format_user(*u), *s))
            .collect();
        assert_eq!(totals, expected);
    }
    // The same answers from Cassandra, through the CLI.
    for (day, result) in &reference.days {
        let d = format_day(*day);
        let from_dir = Command::new(bin)
            .args(["top", "--out"])
            .arg(&out)
            .args(["--day", &d, "--json"])
            .output()
            .unwrap();
        let from_cassandra = Command::new(bin)
            .args(["top", "--config"])
            .arg(&config)
            .args(["--day", &d, "--json"])
            .output()
            .unwrap();
        assert!(
            from_cassandra.status.success(),
            "{}",
            String::from_utf8_lossy(&from_cassandra.stderr)
        );
        assert_eq!(from_cassandra.stdout, from_dir.stdout, "top of {d}");
        for user in result.totals.keys().take(12) {
            let u = format_user(*user);
            let args = [
                "--day",
                d.as_str(),
                "--user",
                u.as_str(),
                "--neighbours",
                "2",
                "--json",
            ];
            let a = Command::new(bin)
                .args(["standing", "--out"])
                .arg(&out)
                .args(args)
                .output()
                .unwrap();
            let b = Command::new(bin)
                .args(["standing", "--config"])
                .arg(&config)
                .args(args)
                .output()
                .unwrap();
            assert!(a.status.success() && b.status.success());
            assert_eq!(
                String::from_utf8_lossy(&b.stdout),
                String::from_utf8_lossy(&a.stdout),
                "standing of {u} on {d}"
            );
        }
    }
    // The archive holds every consumed record exactly once, byte for byte, and the rejected ones
    // under rejected/ with their reasons.
    std::env::set_var("RANKMYSTEPS_S3_ENDPOINT", &s3_endpoint);
    let s3 = rankmysteps::config::s3_from_env().expect("endpoint set above");
    let archive = rankmysteps_sinks::s3::S3Archive::connect(&s3).unwrap();
    let raw: Vec<rankmysteps_sinks::s3::ArchiveRecord> = archive
        .read_all(&format!("{prefix}raw/"))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(raw.len(), records.len(), "every record archived once");
    let mut by_value: BTreeMap<Vec<u8>, usize> = BTreeMap::new();
    for r in &raw {
        *by_value.entry(r.raw.clone()).or_insert(0) += 1;
    }
    let mut expected_values: BTreeMap<Vec<u8>, usize> = BTreeMap::new();
    for (_, text, _) in &records {
        *expected_values
            .entry(text.clone().into_bytes())
            .or_insert(0) += 1;
    }
    assert_eq!(
        by_value, expected_values,
        "archived values are the produced ones"
    );
    let mut offsets: Vec<(u32, u64)> = raw.iter().map(|r| (r.partition, r.offset)).collect();
    offsets.sort();
    offsets.dedup();
    assert_eq!(offsets.len(), records.len(), "no (partition, offset) twice");
    let rejected_keys = archive.list(&format!("{prefix}rejected/")).unwrap();
    let rejected: usize = rejected_keys
        .iter()
        .map(|k| archive.get_lines(k).unwrap().len())
        .sum();
    assert_eq!(rejected as u64, s.rejected_total());
    // A replay of the archive rebuilds the same days.
    let replay = dir.path().join("replay");
    let status = Command::new(bin)
        .args([
            "run",
            "--input",
            &format!("s3://rankmysteps-archive/{prefix}raw/"),
            "--out",
        ])
        .arg(&replay)
        .args(["--k", "10", "--workers", "2"])
        .env("RANKMYSTEPS_S3_ENDPOINT", &s3_endpoint)
        .status()
        .unwrap();
    assert!(status.success());
    for day in reference.days.keys() {
        let d = format_day(*day);
        for file in ["top.json", "totals.csv"] {
            let a = std::fs::read_to_string(out.join("days").join(&d).join(file)).unwrap();
            let b = std::fs::read_to_string(replay.join("days").join(&d).join(file)).unwrap();
            assert_eq!(a, b, "{file} of {d} from the archive");
        }
    }
}
