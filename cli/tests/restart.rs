//! Stopping and restarting `rankmysteps worker` changes nothing and doubles nothing (design §4),
//! on the real services (`scripts/services start`): a worker that dies in the middle of writing
//! an epoch, one killed with SIGKILL at an arbitrary point, one stopped cleanly, one restarted
//! after a clean stop. Afterwards every Cassandra table (whole partitions, not only the
//! top-k), the cumulative counters, the archive and the dead letters equal what one
//! uninterrupted run gives by the sequential reference. Compiled only with the `integration`
//! feature; fails (never skips) when a service is missing.
#![cfg(feature = "integration")]

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Child;
use rankmysteps_dataflow::event::{format_user, parse_day, Day, Event, Reason, User};
use rankmysteps_dataflow::output::Stats;
use rankmysteps_dataflow::pipeline::Settings;
use rankmysteps_dataflow::random::SplitMix64 as Rng;
use rankmysteps_dataflow::reference::{Record, Reference};
use rankmysteps_sinks::cassandra::CassandraReader;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::ClientConfig;

/// One produced record: its user (the key), its text, and what it means.
struct Sent {
    user: User,
    text: String,
    meaning: Result<(Day, i64, u32, Option<String>), Reason>,
}

/// `n` records of the given days (local civil dates), with ties (steps in multiples of 5),
/// duplicates (few event ids), three UTC offsets, and a tenth of bad records.
fn phase(rng: &mut Rng, n: usize, days: &[&str]) -> Vec<Sent> {
    let users: Vec<User> = (1..=40u128).map(|i| i * 0x1_0000_0001).collect();
    let offsets = [
        ("+05:45", 5 * 3600 + 45 * 60),
        ("-08:00", -8 * 3600),
        ("Z", 0),
    ];
    (0..n)
        .map(|_| {
            let user = users[rng.below(users.len() as u64) as usize];
            let u = format_user(user);
            let (text, meaning) = match rng.below(30) {
                0 => ("{\"uuid\":".to_owned(), Err(Reason::Malformed)),
                1 => (
                    format!("{{\"uuid\":\"{u}x\",\"timestamp\":\"2026-01-10T10:00:00Z\",\"steps\":1}}"),
                    Err(Reason::InvalidUuid),
                ),
                2 => (
                    format!("{{\"uuid\":\"{u}\",\"timestamp\":\"2026-02-30T10:00:00Z\",\"steps\":1}}"),
                    Err(Reason::InvalidTimestamp),
                ),
                3 => (
                    format!("{{\"uuid\":\"{u}\",\"timestamp\":\"2026-01-10T10:00:00Z\",\"steps\":2.5}}"),
                    Err(Reason::InvalidSteps),
                ),
                4 => (
                    format!("{{\"uuid\":\"{u}\",\"timestamp\":\"2999-01-10T10:00:00Z\",\"steps\":1}}"),
                    Err(Reason::Future),
                ),
                _ => {
                    let date = days[rng.below(days.len() as u64) as usize];
                    let day = parse_day(date).unwrap();
                    let hour = 6 + rng.below(15) as i64;
                    let (offset, offset_secs) = offsets[rng.below(3) as usize];
                    let steps = rng.below(4) as u32 * 5;
                    let id = (rng.below(3) == 0).then(|| format!("e{}", rng.below(5)));
                    let id_json = id
                        .as_ref()
                        .map(|i| format!(",\"event_id\":\"{i}\""))
                        .unwrap_or_default();
                    let text = format!(
                        "{{\"uuid\":\"{u}\",\"timestamp\":\"{date}T{hour:02}:00:00{offset}\",\"steps\":{steps}{id_json}}}"
                    );
                    let time = (day as i64 * 86_400 + hour * 3600 - offset_secs) * 1_000_000;
                    (text, Ok((day, time, steps, id)))
                }
            };
            Sent {
                user,
                text,
                meaning,
            }
        })
        .collect()
}

/// The records of a phase as one reference epoch (positions: their index in `all`).
fn reference_epoch(sent: &[Sent], first_pos: u64) -> Vec<Record> {
    sent.iter()
        .enumerate()
        .map(|(i, s)| {
            let pos = first_pos + i as u64;
            match &s.meaning {
                Err(reason) => Record::Rejected(pos, *reason),
                Ok((day, time, steps, id)) => Record::Event(Event {
                    pos,
                    user: s.user,
                    day: *day,
                    time: *time,
                    steps: *steps,
                    event_id: id.clone().map(Into::into),
                    raw: None,
                }),
            }
        })
        .collect()
}

/// Sends `records` keyed by user in `bursts` bursts, `pause` apart; `between(i)` runs after
/// burst `i`.
fn send(
    producer: &ThreadedProducer<DefaultProducerContext>,
    topic: &str,
    records: &[Sent],
    bursts: usize,
    pause: Duration,
    mut between: impl FnMut(usize),
) {
    for (i, burst) in records.chunks(records.len().div_ceil(bursts)).enumerate() {
        for s in burst {
            let key = format_user(s.user);
            producer
                .send(BaseRecord::to(topic).key(&key).payload(&s.text))
                .unwrap();
        }
        producer.flush(Duration::from_secs(30)).unwrap();
        between(i);
        std::thread::sleep(pause);
    }
}

fn worker(config: &Path, crash_after_writes: Option<u64>) -> Child {
    let mut command = Command::new(env!("CARGO_BIN_EXE_rankmysteps"));
    command
        .args(["worker", "--config"])
        .arg(config)
        .args(["--metrics", "off"])
        .stdin(Stdio::null());
    if let Some(n) = crash_after_writes {
        command.env("RANKMYSTEPS_CRASH_AFTER_WRITES", n.to_string());
    }
    Child(command.spawn().unwrap())
}

/// The progress record's epoch and number of records counted, if there is one.
fn progress(reader: &CassandraReader, topic: &str) -> Option<(u64, u64)> {
    let p = reader
        .progress(&rankmysteps::recovery::progress_job(topic))
        .unwrap()?;
    let s = Stats::from(&p.stats);
    Some((p.epoch, s.accepted + s.duplicate + s.rejected_total()))
}

/// Waits until the progress record counts `n` records (the worker must keep running).
fn wait_for(reader: &CassandraReader, topic: &str, child: &mut Child, n: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let p = progress(reader, topic);
        if let Some((epoch, counted)) = p {
            assert!(counted <= n, "counted {counted} records of {n}: doubled");
            if counted == n {
                return epoch;
            }
        }
        assert!(Instant::now() < deadline, "not all consumed: {p:?} of {n}");
        assert!(child.0.try_wait().unwrap().is_none(), "worker exited early");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn interrupt(child: &mut Child) {
    Command::new("kill")
        .args(["-INT", &child.0.id().to_string()])
        .status()
        .unwrap();
    let status = child.0.wait().unwrap();
    assert!(status.success(), "clean stop: {status:?}");
}

#[test]
fn restarts_change_nothing_and_double_nothing() {
    common::s3_credentials();
    let topic = common::unique("rms-restart-");
    let keyspace = common::unique("rms_restart_").replace('-', "_");
    let prefix = format!("{}/", common::unique("it-restart-"));
    common::create_topic(&topic, 4);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cluster.toml");
    let k = 5;
    std::fs::write(
        &config,
        common::cluster_toml(&topic, &keyspace, &prefix, 3, k),
    )
    .unwrap();
    let bin = env!("CARGO_BIN_EXE_rankmysteps");
    let schema = Command::new(bin)
        .args(["schema", "apply", "--config"])
        .arg(&config)
        .status()
        .unwrap();
    assert!(schema.success(), "schema apply (is Cassandra running?)");
    let cluster = rankmysteps::config::ClusterConfig::load(&config).unwrap();
    let reader = CassandraReader::connect(cluster.cassandra.as_ref().unwrap()).unwrap();

    // Phase 1: 10 and 11 January (no day closes). Phase 2: 13 January only, which closes the
    // 10th and the 11th. Phases 3 and 4: late events of the 10th and 11th, more of the 13th. So
    // every decision is the same whatever epochs the records fall in, as the reference's one
    // epoch per phase assumes.
    let mut rng = Rng(7);
    let p1 = phase(&mut rng, 1800, &["2026-01-10", "2026-01-11"]);
    let mut p2 = phase(&mut rng, 1200, &["2026-01-13"]);
    // W reaches 13 January 20:00 UTC in phase 2, past the close of the 11th (13th, 12:00).
    p2.insert(
        0,
        Sent {
            user: 7,
            text: "{\"uuid\":7,\"timestamp\":\"2026-01-13T20:00:00Z\",\"steps\":1}".into(),
            meaning: Ok((
                parse_day("2026-01-13").unwrap(),
                (parse_day("2026-01-13").unwrap() as i64 * 86_400 + 20 * 3600) * 1_000_000,
                1,
                None,
            )),
        },
    );
    let p3 = phase(&mut rng, 900, &["2026-01-10", "2026-01-11", "2026-01-13"]);
    let p4 = phase(&mut rng, 300, &["2026-01-10", "2026-01-13"]);
    let total = (p1.len() + p2.len() + p3.len() + p4.len()) as u64;
    let mut reference = Reference::new(Settings {
        k,
        ..Settings::default()
    });
    reference.epoch(0, reference_epoch(&p1, 0));
    reference.epoch(1, reference_epoch(&p2, p1.len() as u64));
    reference.epoch(2, reference_epoch(&p3, (p1.len() + p2.len()) as u64));
    reference.epoch(
        3,
        reference_epoch(&p4, (p1.len() + p2.len() + p3.len()) as u64),
    );
    let s = reference.stats;
    assert!(s.duplicate > 20 && s.rejected(Reason::Late) > 20 && s.rejected_total() > 200);

    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", common::brokers())
        .set("enable.idempotence", "true")
        .create()
        .unwrap();

    // Run A dies in its third write, after the data and before the progress record: the intent
    // record is ahead, and archive objects of later epochs may exist.
    let (first, rest) = p1.split_at(600);
    send(&producer, &topic, first, 1, Duration::ZERO, |_| {});
    let mut a = worker(&config, Some(3));
    // In forty bursts over four seconds, so that the crash comes before the end of phase 1:
    // the totals the half-written epoch wrote are not the last ones (stale rows would show),
    // and records produced after the crash make the next run read, in its first epoch, a
    // range that no archive object of run A ends with (objects not deleted would show twice).
    let mut after_crash = 0;
    send(
        &producer,
        &topic,
        rest,
        40,
        Duration::from_millis(100),
        |_| {
            if a.0.try_wait().unwrap().is_some() {
                after_crash += 1;
            }
        },
    );
    let status = a.0.try_wait().unwrap();
    assert!(
        status.is_some_and(|s| !s.success()) && after_crash > 1,
        "run A should have aborted during phase 1: {status:?}"
    );
    let after_a = progress(&reader, &topic);
    eprintln!("after the crash of run A: progress {after_a:?}");

    // Run B restarts from there and is killed (SIGKILL) in the middle of phase 2.
    let mut b = worker(&config, None);
    wait_for(&reader, &topic, &mut b, p1.len() as u64);
    send(&producer, &topic, &p2, 6, Duration::from_millis(120), |i| {
        if i == 2 {
            b.0.kill().unwrap();
            b.0.wait().unwrap();
        }
    });
    eprintln!(
        "after killing run B: progress {:?}",
        progress(&reader, &topic)
    );

    // Run C restarts, reads phases 2 and 3, and stops cleanly.
    let mut c = worker(&config, None);
    wait_for(&reader, &topic, &mut c, (p1.len() + p2.len()) as u64);
    send(
        &producer,
        &topic,
        &p3,
        3,
        Duration::from_millis(100),
        |_| {},
    );
    let epoch_c = wait_for(
        &reader,
        &topic,
        &mut c,
        (p1.len() + p2.len() + p3.len()) as u64,
    );
    interrupt(&mut c);

    // Run D restarts after that clean stop, reads phase 4, and stops cleanly.
    let mut d = worker(&config, None);
    send(
        &producer,
        &topic,
        &p4,
        2,
        Duration::from_millis(100),
        |_| {},
    );
    let epoch_d = wait_for(&reader, &topic, &mut d, total);
    assert!(epoch_d > epoch_c);
    interrupt(&mut d);

    // The counters, cumulative over the four runs, are those of one run.
    let p = reader
        .progress(&rankmysteps::recovery::progress_job(&topic))
        .unwrap()
        .unwrap();
    assert_eq!(Stats::from(&p.stats), reference.stats, "counters");
    assert_eq!(
        p.positions.iter().map(|p| p.next).sum::<u64>(),
        total,
        "positions cover every record once"
    );
    // Every table, whole partitions.
    for (day, result) in &reference.days {
        let top = reader.top(*day, None).unwrap();
        let expected = result.top(k);
        assert_eq!(top.top.len(), expected.len());
        for (got, want) in top.top.iter().zip(&expected) {
            assert_eq!(
                (got.rank, got.user.as_str(), got.steps),
                (
                    want.rank as u64,
                    format_user(want.user).as_str(),
                    want.steps
                ),
                "top of day {day}"
            );
        }
        assert_eq!(top.users, result.totals.len() as u64, "users of day {day}");
        assert_eq!(top.is_final, result.is_final, "final flag of day {day}");
        let (listing, histogram) = reader.day_rows(*day, 100_000).unwrap();
        let mut expected_listing: Vec<(User, u64)> =
            result.totals.iter().map(|(u, t)| (*u, *t)).collect();
        expected_listing.sort_by_key(|&(u, t)| (std::cmp::Reverse(t), u));
        assert_eq!(listing, expected_listing, "users_by_total of day {day}");
        let expected_histogram: Vec<(u64, u64)> = result.histogram().into_iter().rev().collect();
        assert_eq!(
            histogram, expected_histogram,
            "histogram_by_day of day {day}"
        );
    }
    assert!(reference.days.values().any(|d| d.is_final));
    assert!(reference.days.values().any(|d| !d.is_final));
    let mut histories: BTreeMap<User, Vec<(Day, u64)>> = BTreeMap::new();
    for (day, result) in reference.days.iter().rev() {
        for (user, total) in &result.totals {
            histories.entry(*user).or_default().push((*day, *total));
        }
    }
    for (user, history) in &histories {
        assert_eq!(
            &reader.user_history(*user).unwrap(),
            history,
            "totals_by_user of {}",
            format_user(*user)
        );
    }

    // The archive: every record exactly once; the dead letters: every rejected record once.
    std::env::set_var("RANKMYSTEPS_S3_ENDPOINT", common::s3_endpoint());
    let s3 = rankmysteps::config::s3_from_env().unwrap();
    let archive = rankmysteps_sinks::s3::S3Archive::connect(&s3).unwrap();
    let raw: Vec<rankmysteps_sinks::s3::ArchiveRecord> = archive
        .read_all(&format!("{prefix}raw/"))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let mut offsets: Vec<(u32, u64)> = raw.iter().map(|r| (r.partition, r.offset)).collect();
    offsets.sort();
    offsets.dedup();
    assert_eq!(offsets.len(), raw.len(), "an archived record twice");
    assert_eq!(raw.len() as u64, total, "every record archived");
    assert!(raw
        .iter()
        .all(|r| r.epoch.is_some() && r.ingested.is_some()));
    let mut rejected: Vec<(String, String)> = Vec::new();
    for key in archive.list(&format!("{prefix}rejected/")).unwrap() {
        for r in archive.get_rejected(&key).unwrap() {
            rejected.push((r.reason, String::from_utf8(r.record.raw).unwrap()));
        }
    }
    rejected.sort();
    let all: Vec<&Sent> = p1.iter().chain(&p2).chain(&p3).chain(&p4).collect();
    let mut expected_rejected: Vec<(String, String)> = reference
        .rejected
        .iter()
        .map(|&(_, pos, reason)| (reason.code().to_owned(), all[pos as usize].text.clone()))
        .collect();
    expected_rejected.sort();
    assert_eq!(rejected, expected_rejected, "dead letters");
}
