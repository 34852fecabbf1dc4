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

use common::inspect::{inspect, lookups_equal_the_reference, open_days_held};
use common::stream::{interrupt, producer, send, three_phases, verify, wait_for, worker, Sent};

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
    let metrics = [
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    ];
    let hosts = format!(
        "hosts = [\"127.0.0.1:{}\", \"127.0.0.1:{}\"]\nmetrics = [\"{}\", \"{}\"]",
        free_port(),
        free_port(),
        metrics[0],
        metrics[1]
    );
    let dep = common::Deployment::new("cluster", 6, 2, k, Some(&hosts));
    let (topic, prefix, config, reader) = (&dep.topic, &dep.prefix, &dep.config, &dep.reader);
    let cluster = rankmysteps::config::ClusterConfig::load(config).unwrap();
    assert_eq!(cluster.cluster.hosts.len(), 2);

    let ([p1, p2, p3], reference) = three_phases(11, k);
    let producer = producer();

    assert_eq!(cluster.cluster.metrics, metrics);
    let start = || {
        (
            worker(config, &["--process", "0", "--metrics", &metrics[0]], None),
            worker(config, &["--process", "1", "--metrics", &metrics[1]], None),
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
    // Both processes report every named arrangement and operator, the live keys of `totals`
    // over both are the (day, user) pairs of the open days; an address where nothing listens
    // is an entry with its error (exit status 1), not a failure of the others.
    let nobody = format!("127.0.0.1:{}", free_port());
    let select = [
        "--addr",
        &metrics[0],
        "--addr",
        &metrics[1],
        "--addr",
        &nobody,
    ];
    open_days_held(&select, 2, 2, 6, &reference);
    lookups_equal_the_reference(&select[..4], 2, &reference);
    // The table names every process, the unreachable one too.
    let out = inspect(&["--addr", &metrics[0], "--addr", &nobody]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("ARRANGEMENT") && text.contains("totals") && text.contains("UNREACHABLE"),
        "{text}"
    );
    // `inspect --config` finds both processes from [cluster] metrics.
    let out = inspect(&["--json", "--config", config.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let gathered: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let addrs: Vec<&str> = gathered
        .as_array()
        .unwrap()
        .iter()
        .filter(|g| {
            g["summary"]["workers"]
                .as_array()
                .is_some_and(|w| w.len() == 2)
        })
        .map(|g| g["addr"].as_str().unwrap())
        .collect();
    assert_eq!(addrs, [metrics[0].as_str(), metrics[1].as_str()]);
    // A clean stop of a cluster: every process is told (as a launcher does).
    Command::new("kill")
        .args(["-INT", &b1.0.id().to_string()])
        .status()
        .unwrap();
    interrupt(&mut b0);
    let status = b1.0.wait().unwrap();
    assert!(status.success(), "process 1: {status:?}");

    verify(reader, topic, prefix, &reference, &all, k);
    // Each process wrote its own share and its own progress record (design §7); the cluster's
    // record, process 0's, is published only once the other's has reached it.
    let cluster_record = reader
        .progress(topic)
        .unwrap()
        .expect("the cluster's record");
    let own = reader
        .progress(&format!("{topic}/p1of2x{}", cluster.cluster.threads))
        .unwrap()
        .expect("process 1 writes its own progress record");
    assert!(
        own.epoch >= cluster_record.epoch,
        "process 1's record (epoch {}) is behind the cluster's (epoch {})",
        own.epoch,
        cluster_record.epoch
    );
}
