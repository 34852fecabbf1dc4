//! Integration tests of the S3 archive against a real S3-compatible store (`scripts/services
//! start s3`: MinIO on http://127.0.0.1:9000, bucket `rankmysteps-archive`; override with
//! `RANKMYSTEPS_S3_ENDPOINT`, `RANKMYSTEPS_S3_BUCKET`, `AWS_REGION`).
//!
//! Compiled only with `--features integration`; with it, a missing store fails the tests
//! (never a silent skip). Credentials come from the standard AWS chain: the environment of
//! `eval "$(scripts/services env)"`, or, when `AWS_ACCESS_KEY_ID` is not set, the service's
//! test key, put into the environment before any client is built. Each test writes under a
//! prefix of its own (`it-<pid>-<time>/<test>/`), so runs never see each other's objects.

use std::sync::Once;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use rankmysteps_dataflow::event::day_from_civil;
use rankmysteps_sinks::s3::format::encode_object;
use rankmysteps_sinks::s3::{ArchiveRecord, S3Archive, S3Config};

const ACCESS_KEY: &str = "rankmysteps";
const SECRET_KEY: &str = "rankmysteps-secret";

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

/// The test store's configuration, writing under a fresh prefix named after `test`.
fn config(test: &str) -> S3Config {
    static ENV: Once = Once::new();
    ENV.call_once(|| {
        // Before any client exists (every test comes through here first), so no other thread
        // reads the environment meanwhile.
        if std::env::var_os("AWS_ACCESS_KEY_ID").is_none() {
            std::env::set_var("AWS_ACCESS_KEY_ID", ACCESS_KEY);
            std::env::set_var("AWS_SECRET_ACCESS_KEY", SECRET_KEY);
        }
    });
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    S3Config {
        endpoint: Some(env_or("RANKMYSTEPS_S3_ENDPOINT", "http://127.0.0.1:9000")),
        region: env_or("AWS_REGION", "us-east-1"),
        bucket: env_or("RANKMYSTEPS_S3_BUCKET", "rankmysteps-archive"),
        prefix: format!(
            "it-{}-{}/{test}",
            std::process::id(),
            nanos % 1_000_000_000_000
        ),
        path_style: true,
        checksums_when_required: true,
    }
}

fn connect(config: &S3Config) -> S3Archive {
    S3Archive::connect(config)
        .unwrap_or_else(|e| panic!("{e}\n(is the S3 store running? `scripts/services start s3`)"))
}

/// An event-like value of about 110 bytes, with a pseudo-random user, time and device (so that
/// it compresses like real events, not like a repeated line).
fn event(partition: u32, offset: u64) -> Vec<u8> {
    // splitmix64
    let mut z = (u64::from(partition) << 40 ^ offset).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    format!(
        r#"{{"uuid": "{:08x}-9c2d-4f7a-8e1b-{:012x}", "timestamp": "2026-11-27 {:02}:{:02}:{:02}", "steps": {}, "event_id": "d{}"}}"#,
        z >> 32,
        z & 0xffff_ffff_ffff,
        z % 24,
        z / 24 % 60,
        z / 1440 % 60,
        z % 10 + 1,
        z % 1000,
    )
    .into_bytes()
}

fn records(partition: u32, offsets: impl IntoIterator<Item = u64>) -> Vec<ArchiveRecord> {
    offsets
        .into_iter()
        .map(|offset| ArchiveRecord {
            partition,
            offset,
            kafka_timestamp: (offset % 3 != 0).then_some(1_764_268_847_000 + offset as i64),
            epoch: (offset % 2 == 0).then_some(offset / 10),
            ingested: (offset % 2 == 0).then_some(1_764_268_847_000_000 + offset as i64),
            raw: event(partition, offset),
        })
        .collect()
}

#[test]
fn raw_objects_of_two_partitions_read_back_exactly() {
    let config = config("raw");
    let archive = connect(&config);
    let day = day_from_civil(2026, 11, 27);
    let prefix = archive.prefix().to_owned();
    assert!(prefix.ends_with("/raw/"), "{prefix}");

    // Partition 0 in two objects; partition 1 with offset gaps and odd values (not UTF-8,
    // empty, newlines, quotes).
    let p0a = records(0, 0..250);
    let p0b = records(0, 250..500);
    let mut p1 = records(1, (1000..1100).step_by(3));
    p1[0].raw = b"\xff\xfe not utf-8 \x00".to_vec();
    p1[1].raw = Vec::new();
    p1[2].raw = b"line\nbreak \"quoted\" \\ \xc3\xa9".to_vec();
    // Written out of key order: the listing sorts.
    let k1 = archive.put_raw("steps", day, 1, &p1).unwrap();
    let k0b = archive.put_raw("steps", day, 0, &p0b).unwrap();
    let k0a = archive.put_raw("steps", day, 0, &p0a).unwrap();
    assert_eq!(
        k0a,
        format!(
            "{prefix}raw/steps/2026-11-27/p0-00000000000000000000-00000000000000000249.jsonl.gz"
        )
    );
    assert_eq!(
        k1,
        format!(
            "{prefix}raw/steps/2026-11-27/p1-00000000000000001000-00000000000000001099.jsonl.gz"
        )
    );

    let keys = archive.list(&prefix).unwrap();
    assert_eq!(keys, vec![k0a.clone(), k0b.clone(), k1.clone()]);
    assert_eq!(archive.get_lines(&k0a).unwrap(), p0a);
    assert_eq!(archive.get_lines(&k0b).unwrap(), p0b);
    assert_eq!(archive.get_lines(&k1).unwrap(), p1);

    // read_all: every record, in key order (partition, then offset), bytes equal.
    let all: Vec<ArchiveRecord> = archive
        .read_all(&format!("{prefix}raw/steps/"))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let expected: Vec<ArchiveRecord> = [p0a, p0b, p1].concat();
    assert_eq!(all, expected);
    // A narrower prefix: one partition.
    let p1_only = archive
        .read_all(&format!("{prefix}raw/steps/2026-11-27/p1-"))
        .unwrap()
        .count();
    assert_eq!(p1_only, 34);
    assert!(archive
        .list(&format!("{prefix}nothing/"))
        .unwrap()
        .is_empty());
    // A missing object is an error.
    assert!(archive
        .get_lines(&format!("{prefix}missing.jsonl.gz"))
        .is_err());
}

#[test]
fn rewriting_a_range_replaces_its_object() {
    let config = config("rewrite");
    let archive = connect(&config);
    let day = day_from_civil(2026, 11, 28);
    let batch = records(2, 40..60);
    let key = archive.put_raw("steps", day, 2, &batch).unwrap();
    let first = archive.get_object(&key).unwrap();
    assert_eq!(archive.put_raw("steps", day, 2, &batch).unwrap(), key);
    assert_eq!(archive.list(archive.prefix()).unwrap(), vec![key.clone()]);
    assert_eq!(archive.get_object(&key).unwrap(), first, "same bytes");
    assert_eq!(archive.get_lines(&key).unwrap(), batch);

    // Records that do not fit their key are refused before anything is written.
    let mut unordered = batch.clone();
    unordered.swap(0, 1);
    assert!(archive.put_raw("steps", day, 2, &unordered).is_err());
    assert!(archive.put_raw("steps", day, 3, &batch).is_err());
    assert!(archive.put_raw("steps", day, 2, &[]).is_err());
    assert!(archive.put_raw("a/b", day, 2, &batch).is_err());
    assert_eq!(archive.list(archive.prefix()).unwrap(), vec![key]);
}

#[test]
fn rejected_records_keep_their_reason() {
    let config = config("rejected");
    let archive = connect(&config);
    let day = day_from_civil(2026, 11, 27);
    let batch = records(0, 100..120);
    let raw_key = archive.put_raw("steps", day, 0, &batch).unwrap();
    let mut bad = batch[3].clone();
    bad.raw = b"{not json\xff".to_vec();
    let rejected = vec![
        (bad, "malformed", "expected ident at line 1 column 2"),
        (batch[7].clone(), "late", "day 2026-11-26 closed"),
        (batch[19].clone(), "invalid_steps", "steps: -4"),
    ];
    let key = archive
        .put_rejected("steps", day, 0, 100, 119, &rejected)
        .unwrap();
    assert_eq!(
        key,
        raw_key.replacen("/raw/", "/rejected/", 1),
        "same range, same name"
    );
    let back = archive.get_rejected(&key).unwrap();
    assert_eq!(back.len(), 3);
    for (got, (record, reason, detail)) in back.iter().zip(&rejected) {
        assert_eq!(&got.record, record);
        assert_eq!(got.reason, *reason);
        assert_eq!(got.detail, *detail);
    }
    let prefix = archive.prefix();
    assert_eq!(
        archive.list(&format!("{prefix}raw/")).unwrap(),
        vec![raw_key]
    );
    assert_eq!(
        archive.list(&format!("{prefix}rejected/")).unwrap(),
        vec![key]
    );

    // Outside the range: refused. No rejection: nothing written.
    assert!(archive
        .put_rejected("steps", day, 0, 100, 118, &rejected)
        .is_err());
    let empty = archive
        .put_rejected("steps", day, 0, 200, 299, &[])
        .unwrap();
    assert!(archive.list(&empty).unwrap().is_empty());
}

#[test]
fn wrong_credentials_are_refused() {
    let config = config("credentials");
    // The right key works (so what follows fails because of the credentials alone)...
    S3Archive::connect_with_credentials(&config, ACCESS_KEY, SECRET_KEY).unwrap();
    // ... a wrong secret or an unknown key does not.
    let wrong_secret = S3Archive::connect_with_credentials(&config, ACCESS_KEY, "wrong-secret")
        .expect_err("a wrong secret must be refused");
    let unknown_key = S3Archive::connect_with_credentials(&config, "nobody", SECRET_KEY)
        .expect_err("an unknown key must be refused");
    for err in [wrong_secret, unknown_key] {
        let text = err.to_string();
        println!("refused as expected: {text}");
        assert!(text.contains("Forbidden") || text.contains("403"), "{text}");
    }
}

#[test]
fn default_checksums_work_too() {
    let mut config = config("checksums");
    config.checksums_when_required = false;
    let archive = connect(&config);
    let batch = records(0, 0..10);
    let key = archive
        .put_raw("steps", day_from_civil(2026, 1, 1), 0, &batch)
        .unwrap();
    assert_eq!(archive.get_lines(&key).unwrap(), batch);
}

/// 100 000 records of about 110 bytes in one object: prints the time and throughput of the
/// put (encoding + gzip + upload) and of the read back (download + gunzip + parse).
#[test]
fn put_100k_records() {
    let config = config("bench");
    let archive = connect(&config);
    let batch = records(0, 0..100_000);
    let bytes: usize = batch.iter().map(|r| r.raw.len()).sum();
    let day = day_from_civil(2026, 11, 27);
    // One warm-up put (connection pool, first-use costs), then the measured ones.
    archive.put_raw("steps", day, 0, &batch[..10]).unwrap();
    let mut best = f64::MAX;
    let mut key = String::new();
    for _ in 0..3 {
        let start = Instant::now();
        key = archive.put_raw("steps", day, 0, &batch).unwrap();
        best = best.min(start.elapsed().as_secs_f64());
    }
    // The share of encoding (JSON lines + gzip) in the put, without the upload.
    let start = Instant::now();
    let (object, lines) = encode_object(batch.iter().map(|r| (r, None))).unwrap();
    let encode = start.elapsed().as_secs_f64();
    let size = archive.get_object(&key).unwrap().len();
    assert_eq!(size, object.len());
    let start = Instant::now();
    let back = archive.get_lines(&key).unwrap();
    let read = start.elapsed().as_secs_f64();
    assert_eq!(back, batch);
    let mb = bytes as f64 / 1e6;
    println!(
        "put_raw of 100 000 records ({mb:.1} MB of values, {:.0} B each; object {:.2} MB gzip): \
         best of 3 {:.0} ms = {:.0} MB/s, {:.0} records/s (of which encoding {:.1} MB of JSON \
         lines + gzip: {:.0} ms); get_lines {:.0} ms = {:.0} MB/s",
        bytes as f64 / 1e5,
        size as f64 / 1e6,
        best * 1e3,
        mb / best,
        1e5 / best,
        lines as f64 / 1e6,
        encode * 1e3,
        read * 1e3,
        mb / read,
    );
}
