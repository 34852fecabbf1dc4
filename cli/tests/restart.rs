//! Stopping and restarting `rankmysteps worker` changes nothing and doubles nothing (design §4),
//! on the real services (`scripts/services start`): a worker that dies in the middle of writing
//! an epoch, one killed with SIGKILL at an arbitrary point, one stopped cleanly, one restarted
//! after a clean stop. Afterwards every Cassandra table (whole partitions, not only the
//! top-k), the cumulative counters, the archive and the dead letters equal what one
//! uninterrupted run gives by the sequential reference. Compiled only with the `integration`
//! feature; fails (never skips) when a service is missing.
#![cfg(feature = "integration")]

mod common;

use std::time::Duration;

use common::stream::{
    interrupt, phase, progress, reference_epoch, send, verify, wait_for, worker, Sent,
};
use rankmysteps_dataflow::event::{parse_day, Reason};
use rankmysteps_dataflow::pipeline::Settings;
use rankmysteps_dataflow::random::SplitMix64 as Rng;
use rankmysteps_dataflow::reference::Reference;

#[test]
fn restarts_change_nothing_and_double_nothing() {
    let k = 5;
    let dep = common::Deployment::new("restart", 4, 3, k, None);
    let (topic, prefix, config, reader) = (&dep.topic, &dep.prefix, &dep.config, &dep.reader);
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

    let producer = common::stream::producer();

    // Run A dies in its third write, after the data and before the progress record: the intent
    // record is ahead, and archive objects of later epochs may exist.
    let (first, rest) = p1.split_at(600);
    send(&producer, topic, first, 1, Duration::ZERO, |_| {});
    let mut a = worker(config, &[], Some(3));
    // In forty bursts over four seconds, so that the crash comes before the end of phase 1:
    // the totals the half-written epoch wrote are not the last ones (stale rows would show),
    // and records produced after the crash make the next run read, in its first epoch, a
    // range that no archive object of run A ends with (objects not deleted would show twice).
    let mut after_crash = 0;
    send(
        &producer,
        topic,
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
    let after_a = progress(reader, topic);
    eprintln!("after the crash of run A: progress {after_a:?}");

    // Run B restarts from there and is killed (SIGKILL) in the middle of phase 2.
    let mut b = worker(config, &[], None);
    wait_for(reader, topic, &mut b, p1.len() as u64);
    send(&producer, topic, &p2, 6, Duration::from_millis(120), |i| {
        if i == 2 {
            b.0.kill().unwrap();
            b.0.wait().unwrap();
        }
    });
    eprintln!(
        "after killing run B: progress {:?}",
        progress(reader, topic)
    );

    // Run C restarts, reads phases 2 and 3, and stops cleanly.
    let mut c = worker(config, &[], None);
    wait_for(reader, topic, &mut c, (p1.len() + p2.len()) as u64);
    send(&producer, topic, &p3, 3, Duration::from_millis(100), |_| {});
    let epoch_c = wait_for(
        reader,
        topic,
        &mut c,
        (p1.len() + p2.len() + p3.len()) as u64,
    );
    interrupt(&mut c);

    // Run D restarts after that clean stop, reads phase 4, and stops cleanly.
    let mut d = worker(config, &[], None);
    send(&producer, topic, &p4, 2, Duration::from_millis(100), |_| {});
    let epoch_d = wait_for(reader, topic, &mut d, total);
    assert!(epoch_d > epoch_c);
    interrupt(&mut d);

    // The counters, cumulative over the four runs, are those of one run; every table, whole
    // partitions; the archive and the dead letters.
    let all: Vec<&Sent> = p1.iter().chain(&p2).chain(&p3).chain(&p4).collect();
    verify(reader, topic, prefix, &reference, &all, k);
}

/// A start stopped in its first epoch leaves archive objects and no record in Cassandra. The
/// next start of the same deployment deletes them (uncommitted) and consumes everything again;
/// but on a keyspace where no start of the process ever ran, existing objects are refused,
/// again and again, and never deleted (another deployment's archive, a wrong keyspace).
#[test]
fn a_first_epoch_never_written_leaves_objects_the_next_start_deletes() {
    use rankmysteps_sinks::s3::ArchiveRecord;
    use std::process::{Command, Stdio};
    let k = 5;
    let dep = common::Deployment::new("unwritten", 2, 1, k, None);
    let (topic, prefix, config, reader) = (&dep.topic, &dep.prefix, &dep.config, &dep.reader);
    let mut rng = Rng(13);
    let p1 = phase(&mut rng, 300, &["2026-01-10"]);
    let mut p2 = phase(&mut rng, 200, &["2026-01-13"]);
    p2.insert(0, common::stream::closing_record(9));
    // Phase 2 is sent only once phase 1 is counted: p2 closes the 10th, so a record of p1
    // read in an epoch after p2's first one would be late, and the reference's one epoch per
    // phase would not hold (with both phases sent up front, the two partitions' records can
    // interleave across epochs in any way).
    let producer = common::stream::producer();
    send(&producer, topic, &p1, 1, Duration::ZERO, |_| {});

    // What a start killed in its first epoch leaves: the first records of partition 0
    // archived, nothing in Cassandra.
    let s3 = rankmysteps::config::ClusterConfig::load(config)
        .unwrap()
        .s3
        .unwrap();
    let archive = rankmysteps_sinks::s3::S3Archive::connect(&s3).unwrap();
    assert!(archive.list(prefix).unwrap().is_empty());
    let today = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / 86_400) as rankmysteps_dataflow::event::Day;
    let left = archive
        .put_raw(
            topic,
            today,
            0,
            &[ArchiveRecord {
                partition: 0,
                offset: 0,
                kafka_timestamp: None,
                epoch: Some(1),
                ingested: Some(0),
                raw: b"{\"left\":\"by the start that died\"}".to_vec(),
            }],
        )
        .unwrap();

    // No start of this process ever claimed a generation here: refused, twice, nothing
    // claimed, nothing deleted.
    let job = rankmysteps::recovery::progress_job(topic);
    for _ in 0..2 {
        let out = Command::new(env!("CARGO_BIN_EXE_rankmysteps"))
            .args(["worker", "--metrics", "off", "--config"])
            .arg(config)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{err}");
        assert!(
            err.contains("this is the first start of this process in keyspace")
                && err.contains(&dep.keyspace),
            "{err}"
        );
        assert_eq!(reader.generation(&job, 0).unwrap(), None);
        assert!(archive.list(prefix).unwrap().contains(&left));
    }

    // The start that left it had claimed its generation: the next start deletes it and
    // consumes everything; every record is archived once, every table equals the reference.
    assert_eq!(reader.claim_generation(&job, 0).unwrap(), 1);
    let mut w = worker(config, &[], None);
    wait_for(reader, topic, &mut w, p1.len() as u64);
    send(&producer, topic, &p2, 1, Duration::ZERO, |_| {});
    let all: Vec<&Sent> = p1.iter().chain(&p2).collect();
    wait_for(reader, topic, &mut w, all.len() as u64);
    interrupt(&mut w);
    assert!(!archive.list(prefix).unwrap().contains(&left));
    let reference = common::stream::reference_of(&[&p1, &p2], k);
    verify(reader, topic, prefix, &reference, &all, k);
}

/// A restart from a checkpoint (design §4) replays only the archive after it: a worker that
/// consumed a stream in bursts (checkpoints are taken while it runs: one a second here), then
/// idled, is killed with SIGKILL; the next start says it starts from a checkpoint, replays
/// nothing (the idle checkpoints read nothing after the progress record), and every table, the
/// counters and the archive equal the reference. Old checkpoints are deleted as new ones
/// complete. (The other tests of this file restart from checkpoints with records after them.)
#[test]
fn a_restart_from_an_idle_checkpoint_replays_nothing() {
    use common::stream::logged_worker;
    let k = 5;
    let dep = common::Deployment::new("checkpoint", 2, 2, k, None);
    let (topic, prefix, config, reader) = (&dep.topic, &dep.prefix, &dep.config, &dep.reader);
    let mut rng = Rng(17);
    // Phase 2 (13 January, sent once phase 1 is counted) closes the 10th: every decision is
    // the same whatever epochs records fall in.
    let p1 = phase(&mut rng, 3000, &["2026-01-10"]);
    let mut p2 = phase(&mut rng, 300, &["2026-01-13"]);
    p2.insert(0, common::stream::closing_record(9));
    let producer = common::stream::producer();
    let first_log = dep.dir.path().join("first.err");
    let mut w = logged_worker(config, &first_log);
    send(
        &producer,
        topic,
        &p1,
        30,
        Duration::from_millis(150),
        |_| {},
    );
    wait_for(reader, topic, &mut w, p1.len() as u64);
    // Idle for a few checkpoints: no epoch commits, so the progress record stays where it
    // is, but the checkpoints after it read nothing more and hold its state: the restart
    // uses one of them and replays nothing.
    std::thread::sleep(Duration::from_secs(3));
    w.0.kill().unwrap();
    w.0.wait().unwrap();
    send(&producer, topic, &p2, 1, Duration::ZERO, |_| {});

    let log = dep.dir.path().join("restart.err");
    let mut w = logged_worker(config, &log);
    let all: Vec<&Sent> = p1.iter().chain(&p2).collect();
    wait_for(reader, topic, &mut w, all.len() as u64);
    interrupt(&mut w);
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(
        said.contains("state from the checkpoint after epoch"),
        "{said}"
    );
    // The records the restart replayed from the archive: fewer than the first run consumed.
    let replayed: u64 = said
        .lines()
        .filter(|l| l.contains("restart replay:") && l.contains("(done)"))
        .filter_map(|l| {
            let (before, _) = l.split_once(" records,")?;
            before.rsplit(' ').next()?.parse().ok()
        })
        .next()
        .unwrap_or(0);
    assert!(
        replayed == 0 && said.contains("replaying 0 archive objects"),
        "replayed {replayed} of {} records: {said}",
        p1.len()
    );
    let reference = common::stream::reference_of(&[&p1, &p2], k);
    verify(reader, topic, prefix, &reference, &all, k);
    // Old checkpoints went: a few marks' parts are left, not one per second of the run.
    let s3 = rankmysteps::config::ClusterConfig::load(config)
        .unwrap()
        .s3
        .unwrap();
    let archive = rankmysteps_sinks::s3::S3Archive::connect(&s3).unwrap();
    let (found, keys) = rankmysteps::checkpoint::list(&archive, topic).unwrap();
    assert!(
        found.len() <= 4 && !keys.is_empty(),
        "{} marks' parts kept: {keys:?}",
        found.len()
    );
}
