//! `rankmysteps doctor` on the real services (`scripts/services start`): a deployment that works
//! passes every check; then each part is broken in turn — Kafka, Cassandra and S3 on a port
//! where nothing listens (a stopped service), a missing topic, a missing keyspace, a wrong S3
//! secret, an unreachable consistency level, a taken web port and a taken worker port — and the
//! doctor names exactly that part, with a fix, and exits 1. The breakages are made with the
//! `RANKMYSTEPS__<SECTION>__<KEY>` environment overrides, so those are tested too. Compiled only
//! with the `integration` feature; fails (never skips) when a service is not there.
#![cfg(feature = "integration")]

mod common;

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::process::Command;

use common::Deployment;

/// A port on which nothing listens (bound, then released).
fn closed_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Outcome {
    code: i32,
    /// (part, check) → (status, detail, fix)
    checks: BTreeMap<(String, String), (String, String, Option<String>)>,
    text: String,
}

fn doctor(d: &Deployment, web: &str, metrics: &str, env: &[(&str, String)]) -> Outcome {
    let mut command = Command::new(env!("CARGO_BIN_EXE_rankmysteps"));
    command
        .args([
            "doctor",
            "--json",
            "--timeout",
            "3",
            "--metrics",
            metrics,
            "--config",
        ])
        .arg(&d.config)
        .env("RANKMYSTEPS__WEB__LISTEN", web);
    for (k, v) in env {
        command.env(k, v);
    }
    let out = command.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!(
            "doctor --json printed no JSON ({e}): {text}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let checks = json["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                (
                    c["part"].as_str().unwrap().to_owned(),
                    c["check"].as_str().unwrap().to_owned(),
                ),
                (
                    c["status"].as_str().unwrap().to_owned(),
                    c["detail"].as_str().unwrap().to_owned(),
                    c["fix"].as_str().map(str::to_owned),
                ),
            )
        })
        .collect();
    assert_eq!(
        json["ok"].as_bool().unwrap(),
        out.status.code() == Some(0),
        "ok and the exit status agree: {text}"
    );
    Outcome {
        code: out.status.code().unwrap_or(-1),
        checks,
        text,
    }
}

/// Every check is ok except those in `failed` (part, check), which fail with a fix that
/// contains the given words; the exit status says so.
fn expect(outcome: &Outcome, failed: &[(&str, &str, &str)]) {
    let text = &outcome.text;
    for ((part, check), (status, detail, fix)) in &outcome.checks {
        match failed.iter().find(|(p, c, _)| p == part && c == check) {
            Some((_, _, words)) => {
                assert_eq!(status, "fail", "{part} {check} should fail: {text}");
                let fix = fix.as_deref().unwrap_or_else(|| panic!("no fix: {text}"));
                assert!(
                    fix.contains(words) || detail.contains(words),
                    "{part} {check}: {words:?} not said: {detail} / {fix}"
                );
            }
            None => assert_eq!(status, "ok", "{part} {check} should be ok: {text}"),
        }
    }
    for (part, check, _) in failed {
        assert!(
            outcome
                .checks
                .contains_key(&(part.to_string(), check.to_string())),
            "no {part} {check} check: {text}"
        );
    }
    let expected_code = if failed.is_empty() { 0 } else { 1 };
    assert_eq!(outcome.code, expected_code, "{text}");
}

#[test]
fn doctor_names_each_broken_part() {
    let worker_port = closed_port();
    let d = Deployment::new(
        "doctor",
        4,
        2,
        10,
        Some(&format!("hosts = [\"127.0.0.1:{worker_port}\"]")),
    );
    let web = format!("127.0.0.1:{}", closed_port());
    let metrics = format!("127.0.0.1:{}", closed_port());

    // Everything as it should be.
    let healthy = doctor(&d, &web, &metrics, &[]);
    expect(&healthy, &[]);
    for part in ["kafka", "cassandra", "s3", "cluster", "web", "metrics"] {
        assert!(
            healthy.checks.keys().any(|(p, _)| p == part),
            "no {part} check: {}",
            healthy.text
        );
    }
    assert_eq!(
        healthy.checks[&("cassandra".to_owned(), "schema".to_owned())].0,
        "ok"
    );

    // Kafka stopped (nothing on its port): one failure, the topic checks left out.
    let closed = format!("127.0.0.1:{}", closed_port());
    let o = doctor(
        &d,
        &web,
        &metrics,
        &[("RANKMYSTEPS__KAFKA__BROKERS", closed)],
    );
    expect(
        &o,
        &[("kafka", "reachable", "scripts/services start kafka")],
    );
    assert!(!o.checks.contains_key(&("kafka".into(), "topic".into())));

    // The topic missing.
    let o = doctor(
        &d,
        &web,
        &metrics,
        &[("RANKMYSTEPS__KAFKA__TOPIC", format!("{}-missing", d.topic))],
    );
    expect(&o, &[("kafka", "topic", "--create")]);

    // Cassandra stopped.
    let o = doctor(
        &d,
        &web,
        &metrics,
        &[(
            "RANKMYSTEPS__CASSANDRA__CONTACT_POINTS",
            format!("127.0.0.1:{}", closed_port()),
        )],
    );
    expect(
        &o,
        &[("cassandra", "reachable", "scripts/services start cassandra")],
    );

    // The keyspace missing.
    let o = doctor(
        &d,
        &web,
        &metrics,
        &[(
            "RANKMYSTEPS__CASSANDRA__KEYSPACE",
            format!("{}_missing", d.keyspace),
        )],
    );
    expect(&o, &[("cassandra", "keyspace", "schema apply")]);

    // A consistency level that one replica cannot satisfy.
    let o = doctor(
        &d,
        &web,
        &metrics,
        &[("RANKMYSTEPS__CASSANDRA__CONSISTENCY", "THREE".into())],
    );
    expect(&o, &[("cassandra", "consistency", "replicas")]);

    // A wrong S3 secret.
    let o = doctor(
        &d,
        &web,
        &metrics,
        &[("AWS_SECRET_ACCESS_KEY", "not-the-secret".into())],
    );
    expect(&o, &[("s3", "bucket", "secret key is wrong")]);

    // The S3 store stopped.
    let o = doctor(
        &d,
        &web,
        &metrics,
        &[(
            "RANKMYSTEPS__S3__ENDPOINT",
            format!("http://127.0.0.1:{}", closed_port()),
        )],
    );
    expect(&o, &[("s3", "bucket", "scripts/services start s3")]);

    // The web port and the worker's port taken by someone else.
    let held_web = TcpListener::bind(&web).unwrap();
    let held_worker = TcpListener::bind(("127.0.0.1", worker_port)).unwrap();
    let o = doctor(&d, &web, &metrics, &[]);
    expect(
        &o,
        &[
            ("web", "listen", "[web] listen"),
            ("cluster", "process 0", "[cluster] hosts"),
        ],
    );
    drop((held_web, held_worker));

    // Human output: one line per check, the fix under a failure.
    let out = Command::new(env!("CARGO_BIN_EXE_rankmysteps"))
        .args([
            "doctor",
            "--timeout",
            "3",
            "--metrics",
            &metrics,
            "--config",
        ])
        .arg(&d.config)
        .env("RANKMYSTEPS__WEB__LISTEN", &web)
        .env(
            "RANKMYSTEPS__CASSANDRA__KEYSPACE",
            format!("{}_missing", d.keyspace),
        )
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("FAIL  cassandra  keyspace"), "{text}");
    assert!(
        text.contains("fix: create it and its tables: rankmysteps schema apply"),
        "{text}"
    );
    assert!(text.contains(" failed\n"), "{text}");
}
