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
    inspect_both(&metrics, &reference);
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
}

/// `rankmysteps inspect` on both running processes and one address where nothing listens:
/// both report every named arrangement and operator, the live keys of `totals` over both
/// processes are the (day, user) pairs of the open days, and the missing process is an entry
/// with its error (exit status 1), not a failure of the others.
fn inspect_both(metrics: &[String; 2], reference: &Reference) {
    let open_keys: usize = reference
        .days
        .values()
        .filter(|d| !d.is_final)
        .map(|d| d.totals.len())
        .sum();
    let nobody = format!("127.0.0.1:{}", free_port());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = inspect(&[
            "--json",
            "--addr",
            &metrics[0],
            "--addr",
            &metrics[1],
            "--addr",
            &nobody,
        ]);
        assert_eq!(out.status.code(), Some(1), "one process is unreachable");
        let gathered: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let g = gathered.as_array().unwrap();
        assert_eq!(g.len(), 3);
        assert!(
            g[2]["error"].as_str().unwrap().contains("cannot connect"),
            "{}",
            g[2]
        );
        let mut keys = Some(0);
        for p in &g[..2] {
            let s = &p["summary"];
            let names: Vec<&str> = s["arrangements"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a["name"].as_str().unwrap())
                .collect();
            assert_eq!(names, ["totals", "histogram", "users", "by-total", "top-k"]);
            for op in ["Admit", "Totals", "TopK", "Histogram", "Users", "Deliver"] {
                assert!(
                    s["operators"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|o| o["name"] == op),
                    "no operator {op}: {s}"
                );
            }
            assert_eq!(s["workers"].as_array().unwrap().len(), 2);
            let totals = s["arrangements"][0]["live_keys"].as_u64();
            keys = keys.zip(totals).map(|(a, b)| a + b as usize);
        }
        // Process 0 measures the consumer lag of the six partitions: none once all is read.
        let lag = g[0]["summary"]["consumer_lag"].as_array().unwrap();
        let caught_up = lag.len() == 6 && lag.iter().all(|p| p[1] == 0);
        for w in g[..2]
            .iter()
            .flat_map(|p| p["summary"]["workers"].as_array().unwrap())
        {
            // A streaming source is always at an epoch, at or after the last completed one.
            let (input, completed) = (w["input_epoch"].as_u64(), w["completed_epoch"].as_u64());
            assert!(input.is_some() && input >= completed, "{w}");
        }
        if keys == Some(open_keys) && caught_up {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "totals hold {keys:?} live keys, the open days {open_keys} (and the lag): {gathered}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    lookups_equal_the_reference(metrics, reference);
    // The table names every process, the unreachable one too.
    let out = inspect(&["--addr", &metrics[0], "--addr", &nobody]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("ARRANGEMENT") && text.contains("totals") && text.contains("UNREACHABLE"),
        "{text}"
    );
}

/// `rankmysteps inspect lookup` through both processes, for every user of the open day (their
/// workers and the day's are spread over both processes): the total and the standing equal the
/// reference's, at the epoch the answer names; a closed day is answered as closed; an unknown
/// user is not found.
fn lookups_equal_the_reference(metrics: &[String; 2], reference: &Reference) {
    use rankmysteps_dataflow::event::{format_day, format_user};
    use rankmysteps_dataflow::ranking::{sort_listing, standing};
    let lookup = |day: &str, user: &str| {
        inspect(&[
            "--json",
            "--addr",
            &metrics[0],
            "--addr",
            &metrics[1],
            "lookup",
            "--day",
            day,
            "--user",
            user,
            "--neighbours",
            "2",
        ])
    };
    let (day, open) = reference.days.iter().find(|(_, d)| !d.is_final).unwrap();
    let mut listing: Vec<_> = open.totals.iter().map(|(u, t)| (*u, *t)).collect();
    sort_listing(&mut listing);
    let mut across = 0;
    for &(user, total) in &listing {
        let out = lookup(&format_day(*day), &format_user(user));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let want = standing(&listing, user, 2).unwrap();
        assert_eq!(got["total"], total, "{got}");
        assert_eq!(got["final"], false);
        let s = &got["standing"];
        assert_eq!(
            (s["rank"].as_u64(), s["users"].as_u64()),
            (Some(want.rank), Some(want.users)),
            "{got}"
        );
        assert_eq!(s["gap_up"].as_u64(), want.gap_up, "{got}");
        assert_eq!(s["gap_down"].as_u64(), want.gap_down, "{got}");
        let above: Vec<String> = want.above.iter().map(|a| format_user(a.0)).collect();
        let got_above: Vec<&str> = s["above"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["user"].as_str().unwrap())
            .collect();
        assert_eq!(got_above, above, "{got}");
        // The user's worker and the day's are in different processes (two threads each).
        if got["user_worker"].as_u64().unwrap() / 2 != got["day_worker"].as_u64().unwrap() / 2 {
            across += 1;
        }
    }
    assert!(across > 0, "no lookup crossed processes");
    let (closed, result) = reference.days.iter().find(|(_, d)| d.is_final).unwrap();
    let user = format_user(*result.totals.keys().next().unwrap());
    let out = lookup(&format_day(*closed), &user);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("closed"),
        "{stderr}"
    );
    let out = lookup(&format_day(*day), "00000000-0000-0000-0000-00000000abcd");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("no accepted event"),
        "{stderr}"
    );
    let out = lookup("2026-02-30", &user);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("not a YYYY-MM-DD"),
        "{stderr}"
    );
}

/// `rankmysteps inspect ARGS`, run to completion.
fn inspect(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_rankmysteps"))
        .arg("inspect")
        .args(args)
        .output()
        .unwrap()
}
