//! Two worker processes on loopback (timely's cluster mode from `[cluster] hosts`), two threads
//! each, six partitions (so the processes own unequal shares): one is killed with SIGKILL (the
//! cluster stops as a whole), both are started again (each restores its own partitions from the
//! archive), and after a clean stop every Cassandra table, the counters, the archive and the
//! dead letters equal the sequential reference. Compiled only with the `integration` feature;
//! fails (never skips) when a service is missing.
#![cfg(feature = "integration")]

mod common;

use std::net::TcpListener;
use std::process::Command;
use std::time::{Duration, Instant};

use common::stream::{interrupt, phase, reference_epoch, send, verify, wait_for, worker, Sent};
use rankmysteps_dataflow::event::parse_day;
use rankmysteps_dataflow::pipeline::Settings;
use rankmysteps_dataflow::random::SplitMix64 as Rng;
use rankmysteps_dataflow::reference::Reference;
use rdkafka::producer::{DefaultProducerContext, ThreadedProducer};
use rdkafka::ClientConfig;

/// A port free on loopback right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn two_processes_match_the_reference_across_a_crash() {
    let k = 5;
    let hosts = format!(
        "hosts = [\"127.0.0.1:{}\", \"127.0.0.1:{}\"]",
        free_port(),
        free_port()
    );
    let dep = common::Deployment::new("cluster", 6, 2, k, Some(&hosts));
    let (topic, prefix, config, reader) = (&dep.topic, &dep.prefix, &dep.config, &dep.reader);
    let cluster = rankmysteps::config::ClusterConfig::load(config).unwrap();
    assert_eq!(cluster.cluster.hosts.len(), 2);

    // As in the restart test: phase 1 closes no day, phase 2 closes the 10th and the 11th,
    // phase 3 brings late events; every decision is independent of the epochs.
    let mut rng = Rng(11);
    let p1 = phase(&mut rng, 1200, &["2026-01-10", "2026-01-11"]);
    let mut p2 = phase(&mut rng, 800, &["2026-01-13"]);
    let closing = parse_day("2026-01-13").unwrap();
    p2.insert(
        0,
        Sent {
            user: 9,
            text: "{\"uuid\":9,\"timestamp\":\"2026-01-13T20:00:00Z\",\"steps\":1}".into(),
            meaning: Ok((
                closing,
                (closing as i64 * 86_400 + 20 * 3600) * 1_000_000,
                1,
                None,
            )),
        },
    );
    let p3 = phase(&mut rng, 600, &["2026-01-10", "2026-01-11", "2026-01-13"]);
    let mut reference = Reference::new(Settings {
        k,
        ..Settings::default()
    });
    reference.epoch(0, reference_epoch(&p1, 0));
    reference.epoch(1, reference_epoch(&p2, p1.len() as u64));
    reference.epoch(2, reference_epoch(&p3, (p1.len() + p2.len()) as u64));
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", common::brokers())
        .set("enable.idempotence", "true")
        .create()
        .unwrap();

    let start = || {
        (
            worker(config, &["--process", "0"], None),
            worker(config, &["--process", "1"], None),
        )
    };
    send(&producer, topic, &p1, 1, Duration::ZERO, |_| {});
    let (mut a0, mut a1) = start();
    wait_for(reader, topic, &mut a0, p1.len() as u64);
    // Process 1 dies in the middle of phase 2; process 0 must stop too.
    send(&producer, topic, &p2, 4, Duration::from_millis(150), |i| {
        if i == 1 {
            a1.0.kill().unwrap();
            a1.0.wait().unwrap();
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    while a0.0.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "process 0 still runs a minute after process 1 died"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let (mut b0, mut b1) = start();
    wait_for(reader, topic, &mut b0, (p1.len() + p2.len()) as u64);
    send(&producer, topic, &p3, 2, Duration::from_millis(100), |_| {});
    let all: Vec<&Sent> = p1.iter().chain(&p2).chain(&p3).collect();
    wait_for(reader, topic, &mut b0, all.len() as u64);
    assert!(b1.0.try_wait().unwrap().is_none(), "process 1 exited early");
    // A clean stop of a cluster: every process is told (as a launcher does).
    Command::new("kill")
        .args(["-INT", &b1.0.id().to_string()])
        .status()
        .unwrap();
    interrupt(&mut b0);
    let status = b1.0.wait().unwrap();
    assert!(status.success(), "process 1: {status:?}");

    verify(reader, topic, prefix, &reference, &all, k);
}
