//! `rankmysteps launch` runs the four reference processes on loopback (127.0.0.1 … 127.0.0.4,
//! one thread each, eight partitions) on the real services. The test kills a random process
//! with SIGKILL twice, at random moments of the stream; the launcher stops the survivors and
//! starts all four again each time. Then Cassandra and the Kafka broker are restarted while
//! records arrive: the processes fail, the launcher restarts them with backoff until the
//! services are back, and they resume. Then `inspect --config` sees every process of the
//! launched cluster and its lookups equal the reference; after SIGTERM to the launcher (a
//! clean stop of every process) every Cassandra table, the counters, the archive and the dead
//! letters equal the sequential reference. Compiled only with the `integration` feature;
//! fails (never skips) when a service is missing.
#![cfg(feature = "integration")]

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::inspect::{inspect, lookups_equal_the_reference, open_days_held};
use common::launch::{
    kill_9, loopback_cluster, restarts, started, stop_launcher, wait_recovered, wait_said,
    wait_started, Outage,
};
use common::stream::{
    phase, producer, reference_of, send, three_phases, verify, wait_for, wait_for_within, Sent,
};
use common::Child;
use rankmysteps_dataflow::random::SplitMix64 as Rng;

#[test]
fn four_launched_processes_survive_kill_9_and_match_the_reference() {
    let k = 5;
    let (cluster, _) = loopback_cluster();
    let dep = common::Deployment::new("launch", 8, 1, k, Some(&cluster));
    let (topic, prefix, config, reader) = (&dep.topic, &dep.prefix, &dep.config, &dep.reader);
    let config_arg = config.to_str().unwrap();

    let ([p1, p2, p3], _) = three_phases(23, k);
    let producer = producer();
    // When the processes are killed, and which; and a fourth phase (the 13th, still open),
    // sent around the restarts of the services.
    let mut rng = Rng(29);
    let p4 = phase(&mut rng, 400, &["2026-01-13"]);
    let reference = reference_of(&[&p1, &p2, &p3, &p4], k);

    let logs = dep.dir.path().join("logs");
    let events = dep.dir.path().join("launch.log");
    let mut launcher = Child(
        Command::new(env!("CARGO_BIN_EXE_rankmysteps"))
            .args(["launch", "--config", config_arg, "--log-dir"])
            .arg(&logs)
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(&events).unwrap())
            .spawn()
            .unwrap(),
    );
    let first = wait_started(&events, 1);
    assert_eq!(first.keys().copied().collect::<Vec<_>>(), [0, 1, 2, 3]);
    send(&producer, topic, &p1, 1, Duration::ZERO, |_| {});
    wait_for(reader, topic, &mut launcher, p1.len() as u64);

    // A random process dies in the middle of phase 2, another at a random moment of phase 3.
    let victim = rng.below(4) as usize;
    let at = rng.below(3) as usize;
    send(&producer, topic, &p2, 4, Duration::from_millis(150), |i| {
        if i == at {
            kill_9(first[&victim]);
        }
    });
    let second = wait_started(&events, 2);
    assert!(first.values().all(|pid| !second.values().any(|p| p == pid)));
    wait_for(reader, topic, &mut launcher, (p1.len() + p2.len()) as u64);
    // The launcher saw all four complete epochs again (else the next failure would be part of
    // the same recovery).
    wait_said(&events, "recovered in ", 1);
    let victim = rng.below(4) as usize;
    let at = rng.below(4) as usize;
    send(&producer, topic, &p3, 4, Duration::from_millis(100), |i| {
        if i == at {
            kill_9(second[&victim]);
        }
    });
    wait_started(&events, 3);
    wait_for(
        reader,
        topic,
        &mut launcher,
        (p1.len() + p2.len() + p3.len()) as u64,
    );
    wait_said(&events, "recovered in ", 2);

    // Cassandra goes away while records arrive, and comes back; then the broker does.
    let restarts_before = restarts(&events);
    let (p4a, p4b) = p4.split_at(p4.len() / 2);
    let outage = Outage::begin("cassandra");
    send(&producer, topic, p4a, 2, Duration::from_millis(500), |_| {});
    std::thread::sleep(Duration::from_secs(3));
    outage.end();
    let outage = Outage::begin("kafka");
    std::thread::sleep(Duration::from_secs(2));
    outage.end();
    send(&producer, topic, p4b, 2, Duration::from_millis(200), |_| {});
    let all: Vec<&Sent> = p1.iter().chain(&p2).chain(&p3).chain(&p4).collect();
    wait_for_within(
        reader,
        topic,
        &mut launcher,
        all.len() as u64,
        Duration::from_secs(240),
    );
    // Settled: the last restart has been recovered from (a broker just back can still fail a
    // start or two, e.g. NotLeaderForPartition, after the records are all counted).
    wait_recovered(&events);
    let outage = restarts(&events) - restarts_before;
    assert!(outage >= 1, "Cassandra's restart went unnoticed");
    let third = started(&events);

    // The launched cluster, found through its cluster.toml: every process, one worker each,
    // the open days' keys over all four, lookups equal to the reference across processes.
    let select = ["--config", config_arg];
    open_days_held(&select, 4, 1, 8, &reference);
    lookups_equal_the_reference(&select, 1, &reference);
    let out = inspect(&["--config", config_arg]);
    let table = String::from_utf8(out.stdout).unwrap();
    assert_eq!(table.matches("ARRANGEMENT").count(), 4, "{table}");

    // Every failure was recovered from, and said so.
    let text = std::fs::read_to_string(&events).unwrap();
    assert_eq!(
        // The events, not the status lines ("0 exited (killed by SIGKILL) | ...").
        text.matches("exited (killed by SIGKILL) after").count(),
        2,
        "{text}"
    );
    let total = restarts(&events);
    assert_eq!(total, 2 + outage, "{text}");

    // A clean stop: SIGTERM to the launcher stops every process after its epoch.
    let text = stop_launcher(&mut launcher, &events);
    let last = text.lines().last().unwrap();
    assert!(
        last.contains(&format!("stopped cleanly after {total} restarts")),
        "{text}"
    );
    println!("{last} ({outage} of them for the services' restarts)");
    for pid in third.values() {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "{pid} still runs"
        );
    }
    for i in 0..4 {
        let log = std::fs::read_to_string(logs.join(format!("process-{i}.log"))).unwrap();
        assert_eq!(
            log.matches(&format!("--- rankmysteps launch: process {i} "))
                .count(),
            total + 1,
            "{log}"
        );
    }
    verify(reader, topic, prefix, &reference, &all, k);
}
