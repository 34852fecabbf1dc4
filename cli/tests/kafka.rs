//! Kafka → `rankmysteps worker` → local output, against the sequential reference, on a real
//! Apache Kafka broker (`scripts/services start kafka`). Compiled only with the `integration`
//! feature: `cargo test -p rankmysteps --features integration --test kafka`. It fails (never
//! skips) when the broker is not there.
#![cfg(feature = "integration")]

mod common;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::stream::{
    exit_within, interrupt, logged_worker, phase, producer, reference_epoch, send,
};
use common::Child;
use rankmysteps_dataflow::event::{format_day, format_user, Reason};
use rankmysteps_dataflow::pipeline::Settings;
use rankmysteps_dataflow::random::SplitMix64 as Rng;
use rankmysteps_dataflow::reference::Reference;
use rdkafka::ClientConfig;

#[test]
fn worker_matches_reference_on_real_kafka() {
    let dep = common::Deployment::new("kafka", 4, 3, 10, None);
    let (topic, prefix, config, dir) = (&dep.topic, &dep.prefix, &dep.config, &dep.dir);
    let s3_endpoint = common::s3_endpoint();
    // One day (none closes: epochs do not matter), three offsets, ties, duplicates, bad records
    // of every parse-time reason.
    let records = phase(&mut Rng(42), 3000, &["2026-01-10"]);
    let producer = producer();
    // Keyed by user: one user's records share a partition, in send order.
    send(&producer, topic, &records, 1, Duration::ZERO, |_| {});

    // Reference: one user's records share a partition, so "first in (epoch, partition, offset)"
    // is "first sent" among that user's records.
    let mut reference = Reference::new(Settings {
        k: 10,
        ..Settings::default()
    });
    reference.epoch(0, reference_epoch(&records, 0));
    let bin = env!("CARGO_BIN_EXE_rankmysteps");
    let out = dir.path().join("out");
    let mut child = Child(
        Command::new(env!("CARGO_BIN_EXE_rankmysteps"))
            .args(["worker", "--config"])
            .arg(config)
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
    interrupt(&mut child);

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
            .arg(config)
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
                .arg(config)
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
    let (archive, raw) = common::archived(prefix);
    assert_eq!(raw.len(), records.len(), "every record archived once");
    let mut by_value: BTreeMap<Vec<u8>, usize> = BTreeMap::new();
    for r in &raw {
        *by_value.entry(r.raw.clone()).or_insert(0) += 1;
    }
    let mut expected_values: BTreeMap<Vec<u8>, usize> = BTreeMap::new();
    for sent in &records {
        *expected_values
            .entry(sent.text.clone().into_bytes())
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

/// Sends 100 more records of 10 January to `topic` (of 2 partitions), then deletes every record
/// of it with Kafka's DeleteRecords, as retention would.
fn send_then_delete(producer: &common::stream::TestProducer, topic: &str, rng: &mut Rng) {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::{Offset, TopicPartitionList};
    send(
        producer,
        topic,
        &phase(rng, 100, &["2026-01-10"]),
        1,
        Duration::ZERO,
        |_| {},
    );
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", common::brokers())
        .create()
        .unwrap();
    let mut list = TopicPartitionList::new();
    for p in 0..2 {
        list.add_partition_offset(topic, p, Offset::End).unwrap();
    }
    futures_executor::block_on(admin.delete_records(&list, &AdminOptions::new())).unwrap();
}

/// A worker never resumes past records it did not consume: after retention deleted records
/// beyond the progress record's offsets (here `DeleteRecords`, as retention would), a restart
/// fails with an error that names the partition, the offsets and the way out, instead of
/// jumping to Kafka's earliest offset (the old `auto.offset.reset` would have lost them
/// silently).
#[test]
fn a_resume_offset_kafka_no_longer_has_is_an_error() {
    use common::stream::{progress, wait_for, worker};
    let dep = common::Deployment::new("retention", 2, 1, 5, None);
    let (topic, config, reader) = (&dep.topic, &dep.config, &dep.reader);
    let mut rng = Rng(5);
    let first = phase(&mut rng, 200, &["2026-01-10"]);
    let producer = producer();
    send(&producer, topic, &first, 1, Duration::ZERO, |_| {});
    let mut w = worker(config, &[], None);
    wait_for(reader, topic, &mut w, first.len() as u64);
    interrupt(&mut w);
    assert!(progress(reader, topic).is_some());
    // Records arrive while no worker runs, and are deleted before any consumes them.
    send_then_delete(&producer, topic, &mut rng);

    let fails = |config: &std::path::Path| {
        let log = dep.dir.path().join("worker.err");
        let mut child = logged_worker(config, &log);
        let status = exit_within(
            &mut child,
            Duration::from_secs(90),
            "the worker resumed regardless",
        );
        assert!(!status.success());
        std::fs::read_to_string(&log).unwrap()
    };
    let err = fails(config);
    assert!(
        err.contains("cannot resume from the progress record")
            && err.contains(&format!("of topic {topic}"))
            && err.contains("were deleted (retention) before they were consumed")
            && err.contains("retention.ms"),
        "{err}"
    );
}

/// Records deleted under a running worker (retention overtaking a stalled consumer): librdkafka
/// stops fetching that partition for good (`auto.offset.reset` = error), so the worker must not
/// go on with it silently stalled, but stop with an error that says what happened, its progress
/// record at what it did consume (the restart then names the partition, as above).
#[test]
fn records_deleted_under_a_running_worker_stop_it_with_an_error() {
    use common::stream::{progress, wait_for};
    let dep = common::Deployment::new("deleted", 2, 1, 5, None);
    let (topic, config, reader) = (&dep.topic, &dep.config, &dep.reader);
    let mut rng = Rng(7);
    let first = phase(&mut rng, 200, &["2026-01-10"]);
    let producer = producer();
    send(&producer, topic, &first, 1, Duration::ZERO, |_| {});
    let log = dep.dir.path().join("worker.err");
    let mut w = logged_worker(config, &log);
    wait_for(reader, topic, &mut w, first.len() as u64);
    // Frozen, the worker fetches nothing while records arrive and are deleted.
    let signal = |name: &str| {
        let pid = w.0.id().to_string();
        assert!(Command::new("kill")
            .args([name, &pid])
            .status()
            .unwrap()
            .success());
    };
    signal("-STOP");
    // Long enough for the broker to have answered the fetch it held (fetch.wait.max.ms), so
    // none is waiting to be answered with the records below.
    std::thread::sleep(Duration::from_secs(2));
    send_then_delete(&producer, topic, &mut rng);
    signal("-CONT");
    let status = exit_within(
        &mut w,
        Duration::from_secs(90),
        "the worker went on with a partition it can no longer fetch",
    );
    assert!(!status.success(), "{status:?}");
    let err = std::fs::read_to_string(&log).unwrap();
    assert!(err.contains("no longer in Kafka"), "{err}");
    assert_eq!(
        progress(reader, topic).map(|(_, counted)| counted),
        Some(first.len() as u64),
        "the progress record counts what was consumed, and nothing else"
    );
}

#[test]
fn a_partition_added_while_running_stops_the_worker_and_a_restart_reads_it() {
    use common::stream::{reference_of, verify, wait_for, worker};
    use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions};
    use rdkafka::client::DefaultClientContext;
    let k = 5;
    let dep = common::Deployment::new("grown", 2, 2, k, None);
    let (topic, prefix, config, reader) = (&dep.topic, &dep.prefix, &dep.config, &dep.reader);
    let mut rng = Rng(8);
    let first = phase(&mut rng, 300, &["2026-01-10"]);
    // The second closes the 10th (a record of the 13th first), whichever partition it is in.
    let mut second = phase(&mut rng, 300, &["2026-01-13"]);
    second.insert(0, common::stream::closing_record(9));
    send(&producer(), topic, &first, 1, Duration::ZERO, |_| {});
    let log = dep.dir.path().join("worker.err");
    let mut w = logged_worker(config, &log);
    wait_for(reader, topic, &mut w, first.len() as u64);

    // A third partition, and records in it (a new producer sees it at once).
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", common::brokers())
        .create()
        .unwrap();
    let grown = futures_executor::block_on(
        admin.create_partitions([&NewPartitions::new(topic, 3)], &AdminOptions::new()),
    )
    .unwrap();
    assert!(grown.iter().all(|r| r.is_ok()), "{grown:?}");
    send(&producer(), topic, &second, 1, Duration::ZERO, |_| {});
    let consumer: rdkafka::consumer::BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", common::brokers())
        .create()
        .unwrap();
    let (_, in_new) =
        rdkafka::consumer::Consumer::fetch_watermarks(&consumer, topic, 2, Duration::from_secs(10))
            .unwrap();
    assert!(in_new > 0, "no record in the new partition");

    // The worker notices (within its 10 s check), ends after its epoch, and says why.
    let status = exit_within(
        &mut w,
        Duration::from_secs(60),
        "the partition went unnoticed",
    );
    let err = std::fs::read_to_string(&log).unwrap();
    assert!(!status.success(), "{err}");
    assert!(
        err.contains(&format!(
            "topic {topic:?} now has 3 partitions, not the 2 this job started with"
        )),
        "{err}"
    );

    // A restart consumes the new partition from its beginning: nothing skipped or doubled.
    let mut w = worker(config, &[], None);
    let all: Vec<&common::stream::Sent> = first.iter().chain(&second).collect();
    wait_for(reader, topic, &mut w, all.len() as u64);
    interrupt(&mut w);
    let reference = reference_of(&[&first, &second], k);
    verify(reader, topic, prefix, &reference, &all, k);
}
