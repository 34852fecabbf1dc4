//! `run --input s3://bucket/prefix` replays an archive exactly like the same records in a file,
//! on a real S3-compatible store (MinIO from `scripts/services start s3`). Compiled only with
//! the `integration` feature; fails (never skips) when the store is not there.
#![cfg(feature = "integration")]

mod common;

use std::process::Command;

use rankmysteps_sinks::s3::{ArchiveRecord, S3Archive, S3Config};

fn config() -> S3Config {
    // The local MinIO of scripts/services unless the environment says otherwise.
    if std::env::var("RANKMYSTEPS_S3_ENDPOINT").is_err() {
        std::env::set_var("RANKMYSTEPS_S3_ENDPOINT", "http://127.0.0.1:9000");
    }
    rankmysteps::config::s3_from_env().expect("endpoint set above")
}

#[test]
fn archive_replay_equals_file_replay() {
    // Credentials as scripts/services sets them, unless the environment has others.
    common::s3_credentials();
    let users = [
        "0b6f3c1e-9c2d-4f7a-8e1b-2a3c4d5e6f70",
        "00000000-0000-0000-0000-000000000007",
        "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11",
    ];
    let mut lines: Vec<String> = Vec::new();
    for i in 0..600u32 {
        let u = users[(i % 3) as usize];
        lines.push(match i % 50 {
            7 => "{\"uuid\": broken".to_owned(),
            8 => format!("{{\"uuid\":\"{u}\",\"timestamp\":\"2999-01-01T00:00:00Z\",\"steps\":1}}"),
            _ => format!(
                "{{\"uuid\":\"{u}\",\"timestamp\":\"2026-01-{:02}T{:02}:00:00+14:00\",\"steps\":{},\"event_id\":\"e{}\"}}",
                10 + i / 100,
                i % 24,
                i % 7,
                i % 13
            ),
        });
    }
    let prefix = format!("{}/raw/steps/", common::unique("it-replay-"));
    let mut cfg = config();
    cfg.prefix = prefix.clone();
    let archive = S3Archive::connect(&cfg).expect("S3 must be running: scripts/services start s3");
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    // Two objects of one partition (keys sort by offset).
    for (part, range) in [(0usize, 0..300usize), (1, 300..600)] {
        let records: Vec<ArchiveRecord> = range
            .map(|i| ArchiveRecord {
                partition: 0,
                offset: i as u64,
                kafka_timestamp: Some(now_ms),
                epoch: None,
                ingested: None,
                raw: lines[i].clone().into_bytes(),
            })
            .collect();
        let key = archive
            .put_raw("steps", 20_500 + part as i32, 0, &records)
            .unwrap();
        assert!(key.starts_with(&prefix), "{key}");
    }
    // A checkpoint part under the prefix (state, not records) is skipped.
    archive
        .put_bytes(
            &format!(
                "{prefix}checkpoints/steps/{:020}/w0000-of-0001-g0000000001.bin.gz",
                42
            ),
            b"RMSCKP01 not records".to_vec(),
        )
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("in.jsonl");
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    let bin = env!("CARGO_BIN_EXE_rankmysteps");
    let run = |input: &str, out: &str| {
        let status = Command::new(bin)
            .args(["run", "--input", input, "--out"])
            .arg(dir.path().join(out))
            .args(["--workers", "3", "--epoch-events", "64", "--grace", "1h"])
            .env("RANKMYSTEPS_S3_ENDPOINT", cfg.endpoint.clone().unwrap())
            .env("AWS_REGION", &cfg.region)
            .status()
            .unwrap();
        assert!(status.success(), "run --input {input}");
    };
    run(file.to_str().unwrap(), "from-file");
    run(&format!("s3://{}/{prefix}", cfg.bucket), "from-s3");
    let days = |out: &str| -> Vec<(String, String, String)> {
        let mut days: Vec<_> = std::fs::read_dir(dir.path().join(out).join("days"))
            .unwrap()
            .map(|e| {
                let p = e.unwrap().path();
                (
                    p.file_name().unwrap().to_string_lossy().into_owned(),
                    std::fs::read_to_string(p.join("top.json")).unwrap(),
                    std::fs::read_to_string(p.join("totals.csv")).unwrap(),
                )
            })
            .collect();
        days.sort();
        days
    };
    let a = days("from-file");
    assert!(a.len() >= 3, "{a:?}");
    assert_eq!(a, days("from-s3"));
    // Everything but the human-readable detail, which says how far ahead of "now" it was.
    let rejected = |out: &str| -> Vec<(
        serde_json::Value,
        serde_json::Value,
        serde_json::Value,
        serde_json::Value,
    )> {
        std::fs::read_to_string(dir.path().join(out).join("rejected.jsonl"))
            .unwrap()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                (
                    v["reason"].clone(),
                    v["raw"].clone(),
                    v["pos"].clone(),
                    v["epoch"].clone(),
                )
            })
            .collect()
    };
    assert_eq!(rejected("from-file").len(), 24);
    assert_eq!(rejected("from-file"), rejected("from-s3"));
}
