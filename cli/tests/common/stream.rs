//! A seeded stream with its meaning, and the checks of what a worker leaves in Cassandra and
//! the archive, shared by the tests that run workers on the real services.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rankmysteps_dataflow::event::{format_user, parse_day, Day, Event, EventExtra, Reason, User};
use rankmysteps_dataflow::output::Stats;
use rankmysteps_dataflow::random::SplitMix64 as Rng;
use rankmysteps_dataflow::reference::{Record, Reference};
use rankmysteps_sinks::cassandra::CassandraReader;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;

use super::Child;

/// One produced record: its user (the key), its text, and what it means.
pub struct Sent {
    /// The user (the record's key).
    pub user: User,
    /// The record's value.
    pub text: String,
    /// What it means: an event, or the reason it is rejected.
    pub meaning: Result<(Day, i64, u32, Option<String>), Reason>,
}

/// `n` records of 40 users on the given days: see [`phase_among`].
pub fn phase(rng: &mut Rng, n: usize, days: &[&str]) -> Vec<Sent> {
    phase_among(rng, n, days, &users(40))
}

/// `n` distinct users.
pub fn users(n: u128) -> Vec<User> {
    (1..=n).map(|i| i * 0x1_0000_0001).collect()
}

/// `n` records of `users` on the given days (local civil dates), with ties (steps in
/// multiples of 5), duplicates (few event ids), three UTC offsets, and a tenth of bad records.
pub fn phase_among(rng: &mut Rng, n: usize, days: &[&str], users: &[User]) -> Vec<Sent> {
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
pub fn reference_epoch(sent: &[Sent], first_pos: u64) -> Vec<Record> {
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
                    extra: EventExtra::new(id.clone().map(Into::into), None, None),
                }),
            }
        })
        .collect()
}

/// Sends `records` keyed by user in `bursts` bursts, `pause` apart; `between(i)` runs after
/// burst `i`.
pub fn send(
    producer: &TestProducer,
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
        let failed = producer
            .context()
            .failed
            .load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(
            failed,
            0,
            "the test's producer could not deliver {failed} records (first error: {:?}): the \
             topic does not hold what the reference expects",
            producer.context().first_error.lock().unwrap()
        );
        between(i);
        std::thread::sleep(pause);
    }
}

/// Starts `rankmysteps worker --config config` with `args`; with `crash_after_writes`, it
/// aborts in that bulk write (see `RANKMYSTEPS_CRASH_AFTER_WRITES`).
pub fn worker(config: &Path, args: &[&str], crash_after_writes: Option<u64>) -> Child {
    let mut command = Command::new(env!("CARGO_BIN_EXE_rankmysteps"));
    command
        .args(["worker", "--config"])
        .arg(config)
        .args(args)
        .args(if args.contains(&"--metrics") {
            &[][..]
        } else {
            &["--metrics", "off"][..]
        })
        .stdin(Stdio::null());
    if let Some(n) = crash_after_writes {
        command.env("RANKMYSTEPS_CRASH_AFTER_WRITES", n.to_string());
    }
    Child(command.spawn().unwrap())
}

/// `rankmysteps worker --metrics off --config config`, its stderr written to `log`.
pub fn logged_worker(config: &Path, log: &Path) -> Child {
    Child(
        Command::new(env!("CARGO_BIN_EXE_rankmysteps"))
            .args(["worker", "--metrics", "off", "--config"])
            .arg(config)
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap(),
    )
}

/// Waits until `child` exits, which it must within `within` (else: `why` it should have).
pub fn exit_within(child: &mut Child, within: Duration, why: &str) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "{why}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The progress record's epoch and number of records counted, if there is one.
pub fn progress(reader: &CassandraReader, topic: &str) -> Option<(u64, u64)> {
    try_progress(reader, topic).unwrap()
}

/// [`progress`], or the read's error (Cassandra away).
fn try_progress(
    reader: &CassandraReader,
    topic: &str,
) -> Result<Option<(u64, u64)>, rankmysteps_sinks::SinkError> {
    Ok(reader
        .progress(&rankmysteps::recovery::progress_job(topic))?
        .map(|p| (p.epoch, Stats::from(&p.stats).records())))
}

/// Waits until the progress record counts `n` records (the worker must keep running).
pub fn wait_for(reader: &CassandraReader, topic: &str, child: &mut Child, n: u64) -> u64 {
    wait_for_within(reader, topic, child, n, Duration::from_secs(90))
}

/// [`wait_for`] with its own deadline (reads that fail while Cassandra is away count as not
/// yet).
pub fn wait_for_within(
    reader: &CassandraReader,
    topic: &str,
    child: &mut Child,
    n: u64,
    within: Duration,
) -> u64 {
    let deadline = Instant::now() + within;
    loop {
        let p = try_progress(reader, topic).ok().flatten();
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

/// Stops `child` with SIGINT and checks that it exits cleanly.
pub fn interrupt(child: &mut Child) {
    Command::new("kill")
        .args(["-INT", &child.0.id().to_string()])
        .status()
        .unwrap();
    let status = child.0.wait().unwrap();
    assert!(status.success(), "clean stop: {status:?}");
}

/// Checks everything a run over `all` (in send order) must leave, against `reference`: the
/// progress record's counters and positions; every Cassandra table, whole partitions (the
/// top-k with ranks, users and finality, `users_by_total`, `histogram_by_day`,
/// `totals_by_user`); every record archived exactly once under `prefix`, and every rejected one
/// under `rejected/` with its reason.
pub fn verify(
    reader: &CassandraReader,
    topic: &str,
    prefix: &str,
    reference: &Reference,
    all: &[&Sent],
    k: usize,
) {
    let total = all.len() as u64;
    let p = reader
        .progress(&rankmysteps::recovery::progress_job(topic))
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
    let (archive, raw) = super::archived(prefix);
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
    let mut expected_rejected: Vec<(String, String)> = reference
        .rejected
        .iter()
        .map(|&(_, pos, reason)| (reason.code().to_owned(), all[pos as usize].text.clone()))
        .collect();
    expected_rejected.sort();
    assert_eq!(rejected, expected_rejected, "dead letters");
}

/// A record of `user` at 13 January 2026 20:00 UTC: the watermark passes the close of the
/// 11th (13 January 12:00 UTC), so the 10th and the 11th close when it is read.
pub fn closing_record(user: User) -> Sent {
    let day = parse_day("2026-01-13").unwrap();
    Sent {
        user,
        text: format!("{{\"uuid\":{user},\"timestamp\":\"2026-01-13T20:00:00Z\",\"steps\":1}}"),
        meaning: Ok((day, (day as i64 * 86_400 + 20 * 3600) * 1_000_000, 1, None)),
    }
}

/// The reference after `phases`, one epoch each (positions in send order), top `k`.
pub fn reference_of(phases: &[&[Sent]], k: usize) -> Reference {
    let mut reference = Reference::new(rankmysteps_dataflow::pipeline::Settings {
        k,
        ..Default::default()
    });
    let mut first = 0;
    for (epoch, phase) in phases.iter().enumerate() {
        reference.epoch(epoch as u64, reference_epoch(phase, first));
        first += phase.len() as u64;
    }
    reference
}

/// The stream of the cluster tests, seeded, with its reference (top `k`): phase 1 closes no
/// day (10 and 11 January), phase 2 (13 January) closes the 10th and the 11th, phase 3 brings
/// late events of all three. Every decision is independent of the epochs the records fall in,
/// as the reference's one epoch per phase assumes.
pub fn three_phases(seed: u64, k: usize) -> ([Vec<Sent>; 3], Reference) {
    let mut rng = Rng(seed);
    let p1 = phase(&mut rng, 1200, &["2026-01-10", "2026-01-11"]);
    let mut p2 = phase(&mut rng, 800, &["2026-01-13"]);
    p2.insert(0, closing_record(9));
    let p3 = phase(&mut rng, 600, &["2026-01-10", "2026-01-11", "2026-01-13"]);
    let reference = reference_of(&[&p1, &p2, &p3], k);
    ([p1, p2, p3], reference)
}

/// A producer context that counts the records librdkafka gave up on. Its default context
/// drops delivery reports, so a record that failed (a fatal error of the idempotent producer
/// around a broker's restart, say) left `flush` to return `Ok` and the test to wait minutes
/// for a record that was never written; [`send`] now fails at once, naming the error.
#[derive(Default)]
pub struct Deliveries {
    failed: std::sync::atomic::AtomicU64,
    first_error: std::sync::Mutex<Option<String>>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            self.failed
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.first_error
                .lock()
                .unwrap()
                .get_or_insert_with(|| e.to_string());
        }
    }
}

/// The test's producer: delivery failures are counted (see [`Deliveries`]).
pub type TestProducer = ThreadedProducer<Deliveries>;

/// An idempotent producer to the services' Kafka.
pub fn producer() -> TestProducer {
    rdkafka::ClientConfig::new()
        .set("bootstrap.servers", super::brokers())
        .set("enable.idempotence", "true")
        .create_with_context(Deliveries::default())
        .unwrap()
}
