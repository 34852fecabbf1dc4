//! The archive's object keys and its gzip JSON Lines encoding (design §6). No I/O.

use std::io::{Read, Write};

use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;
use rankmysteps_dataflow::event::{format_day, Day};
use serde::{Deserialize, Serialize};

use crate::SinkError;

/// One consumed record as archived: where it came from and its value, byte for byte.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ArchiveRecord {
    /// Kafka partition.
    pub partition: u32,
    /// Offset in the partition.
    pub offset: u64,
    /// Kafka timestamp in milliseconds since 1970-01-01 UTC, if the record had one.
    pub kafka_timestamp: Option<i64>,
    /// The dataflow epoch the worker consumed it in (raw objects of a streaming worker). A
    /// restart replays the archive at these epochs, so that every decision that depends on
    /// epochs (`late`, which duplicate is first) comes out as it did the first time.
    pub epoch: Option<u64>,
    /// The wall clock when the worker consumed it, UTC microseconds (raw objects of a streaming
    /// worker): the `now` of its `future` check, reused by a restart's replay.
    pub ingested: Option<i64>,
    /// The record's value, exactly as consumed (not necessarily UTF-8, not necessarily valid).
    pub raw: Vec<u8>,
}

/// A rejected record read back from a `rejected/` object.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct RejectedRecord {
    /// The record.
    pub record: ArchiveRecord,
    /// Its reason code (design §1: `malformed`, `invalid_uuid`, ..., `late`).
    pub reason: String,
    /// A human-readable detail.
    pub detail: String,
}

/// The two kinds of archive objects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ObjectKind {
    /// Every consumed record, accepted or not: `raw/...`.
    Raw,
    /// Rejected records with their reason: `rejected/...`.
    Rejected,
}

impl ObjectKind {
    /// The first component of the key after the configured prefix.
    pub fn dir(self) -> &'static str {
        match self {
            ObjectKind::Raw => "raw",
            ObjectKind::Rejected => "rejected",
        }
    }
}

/// Digits of a zero-padded offset in a key: `u64::MAX` has 20, so keys sort by offset.
pub const OFFSET_DIGITS: usize = 20;

/// The key of the object holding `partition`'s records `first..=last` of `topic` ingested on
/// `ingest_day`: `{prefix}{raw|rejected}/<topic>/<YYYY-MM-DD>/p<partition>-<first>-<last>.jsonl.gz`,
/// offsets zero-padded to [`OFFSET_DIGITS`]. `prefix` is used as given (empty or ending with
/// `/`, see [`S3Config::key_prefix`](super::S3Config::key_prefix)).
pub fn object_key(
    prefix: &str,
    kind: ObjectKind,
    topic: &str,
    ingest_day: Day,
    partition: u32,
    first: u64,
    last: u64,
) -> String {
    format!(
        "{prefix}{dir}/{topic}/{day}/p{partition}-{first:0width$}-{last:0width$}.jsonl.gz",
        dir = kind.dir(),
        day = format_day(ingest_day),
        width = OFFSET_DIGITS,
    )
}

/// What an archive object's key says, read back by [`parse_object_key`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectKey {
    /// `raw/` or `rejected/`.
    pub kind: ObjectKind,
    /// The topic.
    pub topic: String,
    /// The ingest day.
    pub ingest_day: Day,
    /// The partition.
    pub partition: u32,
    /// The first offset held.
    pub first: u64,
    /// The last offset held.
    pub last: u64,
}

/// Reads back a key made by [`object_key`] with the same `prefix`; `None` for any other key.
pub fn parse_object_key(prefix: &str, key: &str) -> Option<ObjectKey> {
    let rest = key.strip_prefix(prefix)?;
    let (dir, rest) = rest.split_once('/')?;
    let kind = match dir {
        "raw" => ObjectKind::Raw,
        "rejected" => ObjectKind::Rejected,
        _ => return None,
    };
    let (topic, rest) = rest.split_once('/')?;
    let (day, name) = rest.split_once('/')?;
    let ingest_day = rankmysteps_dataflow::event::parse_day(day)?;
    let name = name.strip_prefix('p')?.strip_suffix(".jsonl.gz")?;
    let mut parts = name.split('-');
    let (partition, first, last) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || first.len() != OFFSET_DIGITS || last.len() != OFFSET_DIGITS {
        return None;
    }
    Some(ObjectKey {
        kind,
        topic: topic.to_owned(),
        ingest_day,
        partition: partition.parse().ok()?,
        first: first.parse().ok()?,
        last: last.parse().ok()?,
    })
}

/// Checks that `topic` can be a key component: a Kafka topic name (1 to 249 of
/// `[A-Za-z0-9._-]`, not `.` or `..`).
pub fn check_topic(topic: &str) -> Result<(), SinkError> {
    let valid = !topic.is_empty()
        && topic.len() <= 249
        && topic != "."
        && topic != ".."
        && topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if valid {
        Ok(())
    } else {
        Err(SinkError::s3(
            "archive key",
            format!("{topic:?} is not a Kafka topic name (1-249 of [A-Za-z0-9._-])"),
        ))
    }
}

/// Splits `s3://bucket/prefix` into `("bucket", "prefix")` (the prefix may be empty:
/// `s3://bucket` and `s3://bucket/` give `""`). `None` for anything else.
pub fn parse_s3_url(url: &str) -> Option<(String, String)> {
    let rest = url.strip_prefix("s3://")?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let bucket_ok = !bucket.is_empty()
        && !bucket
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '\\');
    bucket_ok.then(|| (bucket.to_owned(), prefix.to_owned()))
}

/// One line as written.
#[derive(Serialize)]
struct LineOut<'a> {
    raw: std::borrow::Cow<'a, str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    raw_hex: Option<String>,
    partition: u32,
    offset: u64,
    kafka_timestamp: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    epoch: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ingested: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<&'a str>,
}

/// One line as read (unknown fields are ignored, for later additions).
#[derive(Deserialize)]
struct LineIn {
    raw: String,
    #[serde(default)]
    raw_hex: Option<String>,
    partition: u32,
    offset: u64,
    #[serde(default)]
    kafka_timestamp: Option<i64>,
    #[serde(default)]
    epoch: Option<u64>,
    #[serde(default)]
    ingested: Option<i64>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    detail: Option<String>,
}

/// Appends one JSON line for `record` (with `reason` and `detail` for a rejected record) to
/// `out`: `raw` is the value as a string; when the value is not valid UTF-8, `raw` holds it
/// with invalid sequences replaced by U+FFFD and `raw_hex` holds the exact bytes in hex.
pub fn encode_line(
    out: &mut Vec<u8>,
    record: &ArchiveRecord,
    rejection: Option<(&str, &str)>,
) -> Result<(), SinkError> {
    let (raw, raw_hex) = match std::str::from_utf8(&record.raw) {
        Ok(text) => (std::borrow::Cow::Borrowed(text), None),
        Err(_) => (
            String::from_utf8_lossy(&record.raw),
            Some(hex_encode(&record.raw)),
        ),
    };
    let line = LineOut {
        raw,
        raw_hex,
        partition: record.partition,
        offset: record.offset,
        kafka_timestamp: record.kafka_timestamp,
        epoch: record.epoch,
        ingested: record.ingested,
        reason: rejection.map(|(reason, _)| reason),
        detail: rejection.map(|(_, detail)| detail),
    };
    serde_json::to_writer(&mut *out, &line)
        .map_err(|e| SinkError::s3("encoding an archive line", e.to_string()))?;
    out.push(b'\n');
    Ok(())
}

/// Gzip level of archive objects: level 1 compresses step events about 5 to 1, several times
/// faster than the default level 6 that gains little more on such data.
const GZIP_LEVEL: u32 = 1;

/// Gzip-compresses JSON Lines bytes.
pub fn gzip(lines: &[u8]) -> Result<Vec<u8>, SinkError> {
    let mut encoder = GzEncoder::new(
        Vec::with_capacity(lines.len() / 4 + 64),
        Compression::new(GZIP_LEVEL),
    );
    encoder
        .write_all(lines)
        .and_then(|()| encoder.finish())
        .map_err(|e| SinkError::s3("gzip", e.to_string()))
}

/// Encodes `records` (with their rejection, for a `rejected/` object) as one gzip-compressed
/// JSON Lines object. Returns the object and the size of the uncompressed lines.
pub fn encode_object<'a>(
    records: impl IntoIterator<Item = (&'a ArchiveRecord, Option<(&'a str, &'a str)>)>,
) -> Result<(Vec<u8>, usize), SinkError> {
    let mut lines = Vec::new();
    for (record, rejection) in records {
        encode_line(&mut lines, record, rejection)?;
    }
    Ok((gzip(&lines)?, lines.len()))
}

/// Decodes one gzip-compressed JSON Lines object (`what` names it in errors): every line with
/// its reason and detail, if any. The exact value bytes are restored from `raw_hex` when
/// present. Blank lines are skipped.
pub fn decode_object(what: &str, gz: &[u8]) -> Result<Vec<RejectedRecord>, SinkError> {
    let mut lines = Vec::with_capacity(gz.len() * 5);
    MultiGzDecoder::new(gz)
        .read_to_end(&mut lines)
        .map_err(|e| SinkError::s3(format!("reading {what}"), format!("gunzip: {e}")))?;
    let mut records = Vec::new();
    for (number, line) in lines.split(|&b| b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let corrupt = |detail: String| {
            SinkError::s3(
                format!("reading {what}"),
                format!("line {}: {detail}", number + 1),
            )
        };
        let line: LineIn = serde_json::from_slice(line).map_err(|e| corrupt(e.to_string()))?;
        let raw = match line.raw_hex {
            Some(hex) => hex_decode(&hex).ok_or_else(|| corrupt("`raw_hex` is not hex".into()))?,
            None => line.raw.into_bytes(),
        };
        records.push(RejectedRecord {
            record: ArchiveRecord {
                partition: line.partition,
                offset: line.offset,
                kafka_timestamp: line.kafka_timestamp,
                epoch: line.epoch,
                ingested: line.ingested,
                raw,
            },
            reason: line.reason.unwrap_or_default(),
            detail: line.detail.unwrap_or_default(),
        });
    }
    Ok(records)
}

/// Lower-case hex of `bytes`.
pub fn hex_encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 15)] as char);
    }
    out
}

/// The bytes of a hex string (either case); `None` if it is not hex.
pub fn hex_decode(hex: &str) -> Option<Vec<u8>> {
    let hex = hex.as_bytes();
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    let nibble = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    hex.chunks_exact(2)
        .map(|pair| Some(nibble(pair[0])? << 4 | nibble(pair[1])?))
        .collect()
}

#[cfg(test)]
mod tests {
    use rankmysteps_dataflow::event::day_from_civil;

    use super::*;

    fn record(offset: u64, raw: &[u8]) -> ArchiveRecord {
        ArchiveRecord {
            partition: 3,
            offset,
            kafka_timestamp: Some(1_764_268_847_123),
            epoch: None,
            ingested: None,
            raw: raw.to_vec(),
        }
    }

    #[test]
    fn keys_are_deterministic_and_zero_padded() {
        let day = day_from_civil(2026, 11, 27);
        assert_eq!(
            object_key("", ObjectKind::Raw, "steps", day, 3, 0, 41),
            "raw/steps/2026-11-27/p3-00000000000000000000-00000000000000000041.jsonl.gz"
        );
        assert_eq!(
            object_key("a/", ObjectKind::Rejected, "steps", day, 12, 7, u64::MAX),
            "a/rejected/steps/2026-11-27/p12-00000000000000000007-18446744073709551615.jsonl.gz"
        );
        // Keys of one partition sort by offset, and p1 sorts before p10.
        let mut keys: Vec<String> = [(1, 1000), (1, 99), (10, 5), (1, 100_000)]
            .iter()
            .map(|&(p, o)| object_key("", ObjectKind::Raw, "t", day, p, o, o + 1))
            .collect();
        keys.sort();
        let order: Vec<(u32, u64)> = keys
            .iter()
            .map(|k| {
                let name = k.rsplit('/').next().unwrap();
                let mut parts = name.trim_start_matches('p').split(['-', '.']);
                let p = parts.next().unwrap().parse().unwrap();
                (p, parts.next().unwrap().parse().unwrap())
            })
            .collect();
        assert_eq!(order, [(1, 99), (1, 1000), (1, 100_000), (10, 5)]);
    }

    #[test]
    fn keys_read_back() {
        let key = object_key("a/b/", ObjectKind::Rejected, "steps.v1", 20_000, 3, 7, 120);
        assert_eq!(
            parse_object_key("a/b/", &key),
            Some(ObjectKey {
                kind: ObjectKind::Rejected,
                topic: "steps.v1".into(),
                ingest_day: 20_000,
                partition: 3,
                first: 7,
                last: 120,
            })
        );
        assert_eq!(parse_object_key("", &key), None);
        assert_eq!(
            parse_object_key("a/b/", "a/b/raw/t/2026-01-01/p1-2-3.jsonl.gz"),
            None
        );
        assert_eq!(parse_object_key("a/b/", "a/b/other/t/2026-01-01/x"), None);
    }

    #[test]
    fn topic_names() {
        for good in ["steps", "a.b_c-D9", &"x".repeat(249)] {
            check_topic(good).unwrap();
        }
        for bad in ["", ".", "..", "a/b", "a b", "é", &"x".repeat(250)] {
            assert!(check_topic(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn s3_urls() {
        let ok = |b: &str, p: &str| Some((b.to_owned(), p.to_owned()));
        assert_eq!(parse_s3_url("s3://bucket"), ok("bucket", ""));
        assert_eq!(parse_s3_url("s3://bucket/"), ok("bucket", ""));
        assert_eq!(
            parse_s3_url("s3://bucket/raw/steps/"),
            ok("bucket", "raw/steps/")
        );
        assert_eq!(
            parse_s3_url("s3://b.x-1/raw/steps/2026-11-27/p1"),
            ok("b.x-1", "raw/steps/2026-11-27/p1")
        );
        for bad in [
            "s3://",
            "s3:///x",
            "S3://b",
            "http://b/x",
            "bucket/x",
            "s3://a b/x",
            "",
        ] {
            assert_eq!(parse_s3_url(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn utf8_lines_hold_the_value_as_a_string() {
        let mut out = Vec::new();
        let value = br#"{"uuid": "0b6f3c1e-9c2d-4f7a-8e1b-2a3c4d5e6f70", "steps": 7}"#;
        encode_line(&mut out, &record(5, value), None).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"raw\":\"{\\\"uuid\\\": \\\"0b6f3c1e-9c2d-4f7a-8e1b-2a3c4d5e6f70\\\", \
             \\\"steps\\\": 7}\",\"partition\":3,\"offset\":5,\"kafka_timestamp\":1764268847123}\n"
        );
        let mut out = Vec::new();
        let mut r = record(6, b"x");
        r.kafka_timestamp = None;
        encode_line(&mut out, &r, Some(("malformed", "expected value"))).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"raw\":\"x\",\"partition\":3,\"offset\":6,\"kafka_timestamp\":null,\
             \"reason\":\"malformed\",\"detail\":\"expected value\"}\n"
        );
    }

    #[test]
    fn non_utf8_values_round_trip_through_raw_hex() {
        let mut out = Vec::new();
        encode_line(&mut out, &record(1, b"a\xff\x00b"), None).unwrap();
        let line: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(line["raw"], "a\u{fffd}\u{0}b");
        assert_eq!(line["raw_hex"], "61ff0062");
        assert!(hex_decode("61FF0062") == Some(b"a\xff\x00b".to_vec()));
        assert_eq!(hex_decode("6"), None);
        assert_eq!(hex_decode("zz"), None);
    }

    #[test]
    fn objects_round_trip_byte_for_byte() {
        let mut values: Vec<Vec<u8>> = vec![
            b"".to_vec(),
            b"plain".to_vec(),
            "ünïcödé \u{1F600} \"quoted\" \\ \t\r\n".as_bytes().to_vec(),
            b"\xc3\x28 invalid utf-8".to_vec(),
            (0..=255u8).collect(),
            b"   ".to_vec(),
        ];
        values.push(vec![b'\n'; 3]);
        let records: Vec<ArchiveRecord> = values
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let mut r = record(i as u64 * 7, v);
                if i % 2 == 1 {
                    r.kafka_timestamp = None;
                }
                r
            })
            .collect();
        let (gz, plain) = encode_object(records.iter().map(|r| (r, None))).unwrap();
        assert_eq!(&gz[..2], b"\x1f\x8b", "gzip magic");
        assert!(plain > 0);
        let back = decode_object("test", &gz).unwrap();
        let back: Vec<ArchiveRecord> = back.into_iter().map(|r| r.record).collect();
        assert_eq!(back, records);

        let rejected: Vec<(&ArchiveRecord, Option<(&str, &str)>)> = records
            .iter()
            .map(|r| (r, Some(("invalid_steps", "steps: -1"))))
            .collect();
        let (gz, _) = encode_object(rejected).unwrap();
        let back = decode_object("test", &gz).unwrap();
        assert!(back
            .iter()
            .all(|r| r.reason == "invalid_steps" && r.detail == "steps: -1"));
        assert_eq!(back.len(), records.len());
    }

    #[test]
    fn corrupt_objects_are_errors() {
        assert!(decode_object("x", b"not gzip").is_err());
        let gz = gzip(b"{\"raw\":\"a\",\"partition\":0,\"offset\":1}\n\n{oops\n").unwrap();
        let err = decode_object("x", &gz).unwrap_err().to_string();
        assert!(err.contains("line 3"), "{err}");
        let gz = gzip(b"{\"raw\":\"a\",\"raw_hex\":\"6\",\"partition\":0,\"offset\":1}\n").unwrap();
        assert!(decode_object("x", &gz).is_err());
        assert_eq!(decode_object("x", &gzip(b"").unwrap()).unwrap(), vec![]);
    }
}
