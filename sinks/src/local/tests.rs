//! Tests of the local output directory: the sink's files, byte for byte, and the readers.

use std::fs;
use std::path::Path;
use std::time::Duration;

use rankmysteps_dataflow::event::{day_from_civil, format_user, Day, Reason, Rejection, User};
use rankmysteps_dataflow::output::{EpochOutput, Position, Stats};
use rankmysteps_dataflow::ranking::TopRow;

use super::format::{from_hex, push_u64, push_user, to_hex};
use super::*;
use crate::{Sink, SinkError};

fn d1() -> Day {
    day_from_civil(2026, 11, 27)
}

fn d2() -> Day {
    day_from_civil(2026, 11, 28)
}

fn uid(n: u128) -> String {
    format_user(n)
}

fn row(position: u32, rank: u32, user: User, steps: u64) -> TopRow {
    TopRow {
        position,
        rank,
        user,
        steps,
    }
}

/// Sorts every delta vector, as the dataflow delivers them.
fn sorted(mut o: EpochOutput) -> EpochOutput {
    o.totals.sort();
    o.top.sort();
    o.users.sort();
    o.closed.sort();
    o
}

fn stats(accepted: u64, rejected: &[(Reason, u64)]) -> Stats {
    let mut s = Stats {
        accepted,
        ..Stats::default()
    };
    for &(r, n) in rejected {
        s.rejected[r.index()] = n;
    }
    s
}

/// Epoch 1: day 1 has users 1..=4 (90, 80, 80, 70; a tie), top-3; day 2 has user 5; two
/// rejections, one not UTF-8.
fn epoch1() -> EpochOutput {
    let (a, b) = (d1(), d2());
    sorted(EpochOutput {
        epoch: 1,
        watermark: Some(1_795_000_000_000_000),
        totals: vec![
            ((a, 1, 90), 1),
            ((a, 2, 80), 1),
            ((a, 3, 80), 1),
            ((a, 4, 70), 1),
            ((b, 5, 10), 1),
        ],
        top: vec![
            ((a, row(1, 1, 1, 90)), 1),
            ((a, row(2, 2, 2, 80)), 1),
            ((a, row(3, 2, 3, 80)), 1),
            ((b, row(1, 1, 5, 10)), 1),
        ],
        histogram: vec![((a, 80, 2), 1)],
        users: vec![((a, 4), 1), ((b, 1), 1)],
        closed: vec![],
        rejected: vec![
            Rejection {
                pos: 3,
                reason: Reason::Malformed,
                detail: "not JSON".into(),
                raw: b"not \"json\"".to_vec(),
            },
            Rejection {
                pos: 5,
                reason: Reason::Malformed,
                detail: "not UTF-8".into(),
                raw: vec![0xff, b'{', b'}'],
            },
        ],
        stats: stats(5, &[(Reason::Malformed, 2)]),
        positions: vec![Position {
            partition: 0,
            next: 7,
        }],
    })
}

/// Epoch 2: user 4 goes 70 -> 100 and takes the lead (retraction sorted before insertion);
/// day 2's user 5 goes 10 -> 8 (insertion sorted before retraction); one `late` rejection.
fn epoch2() -> EpochOutput {
    let (a, b) = (d1(), d2());
    sorted(EpochOutput {
        epoch: 2,
        watermark: Some(1_795_000_100_000_000),
        totals: vec![
            ((a, 4, 70), -1),
            ((a, 4, 100), 1),
            ((b, 5, 10), -1),
            ((b, 5, 8), 1),
        ],
        top: vec![
            ((a, row(1, 1, 1, 90)), -1),
            ((a, row(2, 2, 2, 80)), -1),
            ((a, row(3, 2, 3, 80)), -1),
            ((a, row(1, 1, 4, 100)), 1),
            ((a, row(2, 2, 1, 90)), 1),
            ((a, row(3, 3, 2, 80)), 1),
            ((b, row(1, 1, 5, 10)), -1),
            ((b, row(1, 1, 5, 8)), 1),
        ],
        rejected: vec![Rejection {
            pos: 9,
            reason: Reason::Late,
            detail: "day closed".into(),
            raw: b"{\"uuid\":1}".to_vec(),
        }],
        stats: stats(2, &[(Reason::Late, 1)]),
        positions: vec![Position {
            partition: 0,
            next: 10,
        }],
        ..EpochOutput::default()
    })
}

/// Epoch 3: day 1 closes; nothing else changes.
fn epoch3() -> EpochOutput {
    EpochOutput {
        epoch: 3,
        watermark: Some(1_795_000_200_000_000),
        closed: vec![d1()],
        stats: stats(1, &[]),
        positions: vec![Position {
            partition: 0,
            next: 11,
        }],
        ..EpochOutput::default()
    }
}

/// Epoch 4: a (contract-breaking) change to closed day 1, ignored; user 6 joins day 2.
fn epoch4() -> EpochOutput {
    let (a, b) = (d1(), d2());
    sorted(EpochOutput {
        epoch: 4,
        watermark: Some(1_795_000_300_000_000),
        totals: vec![((a, 9, 1), 1), ((b, 6, 20), 1)],
        top: vec![
            ((b, row(1, 1, 5, 8)), -1),
            ((b, row(1, 1, 6, 20)), 1),
            ((b, row(2, 2, 5, 8)), 1),
        ],
        users: vec![((b, 1), -1), ((b, 2), 1)],
        stats: stats(1, &[]),
        positions: vec![Position {
            partition: 0,
            next: 12,
        }],
        ..EpochOutput::default()
    })
}

fn text(path: impl AsRef<Path>) -> String {
    fs::read_to_string(path).unwrap()
}

fn json(path: impl AsRef<Path>) -> serde_json::Value {
    serde_json::from_str(&text(path)).unwrap()
}

fn top_path(out: &Path, day: Day) -> std::path::PathBuf {
    day_dir(out, day).join(TOP_FILE)
}

fn totals_path(out: &Path, day: Day) -> std::path::PathBuf {
    day_dir(out, day).join(TOTALS_FILE)
}

/// Every file under `dir`, relative, sorted.
fn files(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                out.push(path.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

fn immediate() -> LocalOptions {
    LocalOptions {
        min_write_interval: Duration::ZERO,
    }
}

#[test]
fn writes_design_files() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let mut sink = LocalDirSink::create(&out, immediate()).unwrap();
    assert_eq!(files(&out), vec!["rejected.jsonl"]);

    sink.write_epoch(&epoch1()).unwrap();
    let top1 = format!(
        concat!(
            r#"{{"day":"2026-11-27","final":false,"users":4,"top":["#,
            r#"{{"rank":1,"user":"{}","steps":90}},"#,
            r#"{{"rank":2,"user":"{}","steps":80}},"#,
            r#"{{"rank":2,"user":"{}","steps":80}}]}}"#,
            "\n"
        ),
        uid(1),
        uid(2),
        uid(3)
    );
    assert_eq!(text(top_path(&out, d1())), top1);
    assert_eq!(
        text(totals_path(&out, d1())),
        format!(
            "user,steps\n{},90\n{},80\n{},80\n{},70\n",
            uid(1),
            uid(2),
            uid(3),
            uid(4)
        )
    );
    assert_eq!(
        text(totals_path(&out, d2())),
        format!("user,steps\n{},10\n", uid(5))
    );
    assert_eq!(
        text(out.join(REJECTED_FILE)),
        concat!(
            r#"{"reason":"malformed","raw":"not \"json\"","detail":"not JSON","pos":3,"epoch":1}"#,
            "\n",
            r#"{"reason":"malformed","raw":"\ufffd{}","raw_hex":"ff7b7d","detail":"not UTF-8","pos":5,"epoch":1}"#,
            "\n"
        )
        .replace("\\ufffd", "\u{fffd}")
    );
    assert_eq!(
        json(out.join(PROGRESS_FILE)),
        serde_json::json!({
            "epoch": 1,
            "watermark": "2026-11-18T11:06:40.000000Z",
            "watermark_micros": 1_795_000_000_000_000_i64,
            "positions": [{"partition": 0, "next": 7}],
            "stats": {"accepted": 5, "duplicate": 0, "rejected": {
                "malformed": 2, "invalid_uuid": 0, "invalid_timestamp": 0,
                "invalid_steps": 0, "future": 0, "late": 0}}
        })
    );

    sink.write_epoch(&epoch2()).unwrap();
    assert_eq!(
        json(top_path(&out, d1())),
        serde_json::json!({"day": "2026-11-27", "final": false, "users": 4, "top": [
            {"rank": 1, "user": uid(4), "steps": 100},
            {"rank": 2, "user": uid(1), "steps": 90},
            {"rank": 3, "user": uid(2), "steps": 80},
        ]})
    );
    assert_eq!(
        text(totals_path(&out, d1())),
        format!(
            "user,steps\n{},90\n{},80\n{},80\n{},100\n",
            uid(1),
            uid(2),
            uid(3),
            uid(4)
        )
    );
    // 10 -> 8 with the insertion delivered before the retraction.
    assert_eq!(
        text(totals_path(&out, d2())),
        format!("user,steps\n{},8\n", uid(5))
    );
    assert_eq!(json(top_path(&out, d2()))["top"][0]["steps"], 8);
    let progress = read_progress(&out).unwrap();
    assert_eq!(progress.epoch, 2);
    assert_eq!(progress.stats.accepted, 7);
    assert_eq!(progress.stats.rejected.malformed, 2);
    assert_eq!(progress.stats.rejected.late, 1);
    assert_eq!(text(out.join(REJECTED_FILE)).lines().count(), 3);

    sink.write_epoch(&epoch3()).unwrap();
    assert!(top_file(&out, d1()).is_final);
    assert!(!top_file(&out, d2()).is_final);
    assert_eq!(read_progress(&out).unwrap().epoch, 3);

    sink.write_epoch(&epoch4()).unwrap();
    // Day 1 is final: the stray change was ignored.
    assert_eq!(read_totals(&out, d1()).unwrap().len(), 4);
    assert!(top_file(&out, d1()).is_final);
    assert_eq!(
        json(top_path(&out, d2())),
        serde_json::json!({"day": "2026-11-28", "final": false, "users": 2, "top": [
            {"rank": 1, "user": uid(6), "steps": 20},
            {"rank": 2, "user": uid(5), "steps": 8},
        ]})
    );
    sink.finish().unwrap();
    sink.finish().unwrap();

    let progress = read_progress(&out).unwrap();
    assert_eq!(progress.epoch, 4);
    assert_eq!(
        Stats::from(&progress.stats),
        Stats {
            accepted: 9,
            duplicate: 0,
            rejected: [2, 0, 0, 0, 0, 1]
        }
    );
    // Atomic writes leave no temporary file behind.
    assert_eq!(
        files(&out),
        vec![
            "days/2026-11-27/top.json",
            "days/2026-11-27/totals.csv",
            "days/2026-11-28/top.json",
            "days/2026-11-28/totals.csv",
            "progress.json",
            "rejected.jsonl",
        ]
    );
}

fn top_file(out: &Path, day: Day) -> TopFile {
    read_top_file(out, day).unwrap()
}

#[test]
fn coalesces_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path();
    let options = LocalOptions {
        min_write_interval: Duration::from_secs(3600),
    };
    let mut sink = LocalDirSink::create(out, options).unwrap();
    sink.write_epoch(&epoch1()).unwrap();
    sink.write_epoch(&epoch2()).unwrap();
    // Nothing written yet: the first interval has not elapsed.
    assert_eq!(files(out), vec!["rejected.jsonl"]);
    assert_eq!(text(out.join(REJECTED_FILE)), "");

    sink.write_epoch(&epoch3()).unwrap();
    // Closed days are written at once, and only they.
    assert_eq!(
        files(out),
        vec![
            "days/2026-11-27/top.json",
            "days/2026-11-27/totals.csv",
            "rejected.jsonl"
        ]
    );
    let top = top_file(out, d1());
    assert!(top.is_final);
    assert_eq!(top.top[0].user, uid(4));
    assert!(matches!(
        read_progress(out),
        Err(SinkError::NotFound { .. })
    ));

    sink.write_epoch(&epoch4()).unwrap();
    sink.finish().unwrap();
    assert_eq!(read_progress(out).unwrap().epoch, 4);
    assert_eq!(read_rejected(out).unwrap().len(), 3);
    assert_eq!(
        read_totals(out, d2()).unwrap(),
        vec![(5, 8), (6, 20)],
        "the latest epoch wins"
    );
    assert_eq!(files(out).len(), 6);
}

/// The same epochs give the same files whatever the write cadence.
#[test]
fn cadence_does_not_change_results() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    for (dir, secs) in [(a.path(), 0), (b.path(), 3600)] {
        let options = LocalOptions {
            min_write_interval: Duration::from_secs(secs),
        };
        let mut sink = LocalDirSink::create(dir, options).unwrap();
        for e in [epoch1(), epoch2(), epoch3(), epoch4()] {
            sink.write_epoch(&e).unwrap();
        }
        sink.finish().unwrap();
    }
    assert_eq!(files(a.path()), files(b.path()));
    for f in files(a.path()) {
        assert_eq!(
            fs::read(a.path().join(&f)).unwrap(),
            fs::read(b.path().join(&f)).unwrap(),
            "{f}"
        );
    }
}

#[test]
fn create_wipes_previous_outputs() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path();
    let mut sink = LocalDirSink::create(out, immediate()).unwrap();
    sink.write_epoch(&epoch1()).unwrap();
    sink.finish().unwrap();
    fs::write(out.join("keep.txt"), "mine").unwrap();
    fs::write(out.join(".progress.json.tmp"), "{").unwrap();
    assert_eq!(files(out).len(), 8);

    let mut sink = LocalDirSink::create(out, immediate()).unwrap();
    assert_eq!(files(out), vec!["keep.txt", "rejected.jsonl"]);
    assert_eq!(text(out.join("keep.txt")), "mine");
    assert_eq!(text(out.join(REJECTED_FILE)), "");
    assert_eq!(list_days(out).unwrap(), Vec::<Day>::new());
    sink.write_epoch(&epoch2()).unwrap();
    // Only this run's deltas: the retractions of epoch 1's records find nothing to retract.
    assert_eq!(read_totals(out, d1()).unwrap(), vec![(4, 100)]);
}

#[test]
fn epochs_must_increase() {
    let tmp = tempfile::tempdir().unwrap();
    let mut sink = LocalDirSink::create(tmp.path(), immediate()).unwrap();
    sink.write_epoch(&epoch2()).unwrap();
    let err = sink.write_epoch(&epoch1()).unwrap_err();
    assert!(
        matches!(err, SinkError::OutOfOrder { epoch: 1, last: 2 }),
        "{err}"
    );
    assert!(sink.write_epoch(&epoch2()).is_err());
}

fn written() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let mut sink = LocalDirSink::create(tmp.path(), immediate()).unwrap();
    sink.write_epoch(&epoch1()).unwrap();
    sink.write_epoch(&epoch2()).unwrap();
    sink.write_epoch(&epoch3()).unwrap();
    sink.finish().unwrap();
    tmp
}

#[test]
fn reads_top() {
    let tmp = written();
    let out = tmp.path();
    let entry = |rank, user, steps| TopEntry {
        rank,
        user: uid(user),
        steps,
    };
    let all = read_top(out, d1(), None).unwrap();
    assert_eq!(
        (all.day.as_str(), all.is_final, all.users),
        ("2026-11-27", true, 4)
    );
    assert_eq!(
        all.top,
        vec![entry(1, 4, 100), entry(2, 1, 90), entry(3, 2, 80)]
    );
    assert_eq!(read_top(out, d1(), Some(2)).unwrap().top, all.top[..2]);
    assert_eq!(read_top(out, d1(), Some(0)).unwrap().top, vec![]);
    // More than the stored top-3: computed from totals.csv, ties ranked alike.
    let more = read_top(out, d1(), Some(10)).unwrap();
    assert_eq!(
        more.top,
        vec![
            entry(1, 4, 100),
            entry(2, 1, 90),
            entry(3, 2, 80),
            entry(3, 3, 80)
        ]
    );
    assert_eq!((more.users, more.is_final), (4, true));
    // Day 2 has one user: asking for more changes nothing.
    assert_eq!(
        read_top(out, d2(), Some(5)).unwrap().top,
        vec![entry(1, 5, 8)]
    );

    let missing = day_from_civil(2026, 1, 1);
    let err = read_top(out, missing, None).unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, SinkError::NotFound { .. }), "{message}");
    assert!(message.contains("2026-01-01"), "{message}");
    assert!(
        message.contains(&out.join("days").display().to_string()),
        "{message}"
    );
    let gone = out.join("nope");
    let message = read_top(&gone, d1(), None).unwrap_err().to_string();
    assert!(
        message.contains("output directory") && message.contains("nope"),
        "{message}"
    );
}

#[test]
fn reads_standing() {
    let tmp = written();
    let out = tmp.path();
    let (s, is_final) = read_standing(out, d1(), 3, 1).unwrap().unwrap();
    assert!(is_final);
    assert_eq!((s.user, s.rank, s.steps, s.users), (3, 3, 80, 4));
    assert_eq!((s.gap_up, s.gap_down), (Some(10), None));
    assert_eq!(s.above, vec![(2, 80, 3)]);
    assert_eq!(s.below, vec![]);
    let (s, is_final) = read_standing(out, d2(), 5, 3).unwrap().unwrap();
    assert!(!is_final);
    assert_eq!((s.rank, s.users, s.gap_up, s.gap_down), (1, 1, None, None));
    assert_eq!(read_standing(out, d1(), 77, 1).unwrap(), None);
    assert!(matches!(
        read_standing(out, day_from_civil(2020, 1, 1), 1, 1),
        Err(SinkError::NotFound { .. })
    ));
}

#[test]
fn reads_days_progress_and_rejections() {
    let tmp = written();
    let out = tmp.path();
    assert_eq!(list_days(out).unwrap(), vec![d1(), d2()]);
    assert!(list_days(&out.join("nope")).is_err());
    let progress = read_progress(out).unwrap();
    assert_eq!(progress.epoch, 3);
    assert_eq!(
        progress.watermark.as_deref(),
        Some("2026-11-18T11:10:00.000000Z")
    );
    assert_eq!(
        progress.positions,
        vec![Position {
            partition: 0,
            next: 11
        }]
    );

    let rejected = read_rejected(out).unwrap();
    assert_eq!(rejected.len(), 3);
    assert_eq!(rejected[1].raw_bytes().unwrap(), vec![0xff, b'{', b'}']);
    assert_eq!(rejected[0].raw_bytes().unwrap(), b"not \"json\"");
    assert_eq!(rejected[2].reason(), Some(Reason::Late));
    assert_eq!((rejected[2].pos, rejected[2].epoch), (9, 2));

    // A last line cut short by a crash is skipped.
    let path = out.join(REJECTED_FILE);
    let mut bytes = fs::read(&path).unwrap();
    bytes.extend_from_slice(b"{\"reason\":\"mal");
    fs::write(&path, bytes).unwrap();
    assert_eq!(read_rejected(out).unwrap().len(), 3);
}

#[test]
fn rejects_corrupt_totals() {
    let tmp = written();
    let out = tmp.path();
    let path = totals_path(out, d1());
    for bad in [
        "user,total\n".to_owned(),
        format!("user,steps\n{},x\n", uid(1)),
        format!("user,steps\n{},1\n{},2\n", uid(2), uid(1)),
        "user,steps\nnope,1\n".to_owned(),
    ] {
        fs::write(&path, bad).unwrap();
        let err = read_totals(out, d1()).unwrap_err();
        assert!(matches!(err, SinkError::Corrupt { .. }), "{err}");
    }
}

#[test]
fn encodings() {
    for user in [
        0,
        1,
        7,
        u128::MAX,
        0xa0ee_bc99_9c0b_4ef8_bb6d_6bb9_bd38_0a11,
    ] {
        let mut buf = Vec::new();
        push_user(&mut buf, user);
        assert_eq!(String::from_utf8(buf).unwrap(), format_user(user));
    }
    for n in [0, 9, 10, 1234, u64::MAX] {
        let mut buf = Vec::new();
        push_u64(&mut buf, n);
        assert_eq!(String::from_utf8(buf).unwrap(), n.to_string());
    }
    let bytes: Vec<u8> = (0..=255).collect();
    assert_eq!(from_hex(&to_hex(&bytes)).unwrap(), bytes);
    assert_eq!(from_hex("f"), None);
    assert_eq!(from_hex("zz"), None);
}

/// A day with a million users: how long applying and writing take (run with `--ignored
/// --nocapture`; timings are printed, not asserted).
#[test]
#[ignore = "performance check"]
fn large_day() {
    use std::time::Instant;
    let tmp = tempfile::tempdir().unwrap();
    let mut sink = LocalDirSink::create(tmp.path(), immediate()).unwrap();
    let day = d1();
    let n: u128 = 1_000_000;
    let user = |i: u128| i.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835);
    let mut first = EpochOutput {
        epoch: 1,
        totals: (0..n)
            .map(|i| ((day, user(i), (i % 5000) as u64), 1))
            .collect(),
        users: vec![((day, n as u64), 1)],
        ..EpochOutput::default()
    };
    first.totals.sort();
    let t = Instant::now();
    sink.write_epoch(&first).unwrap();
    println!(
        "epoch of 1M inserts, applied and written: {:?}",
        t.elapsed()
    );
    let mut update = EpochOutput {
        epoch: 2,
        totals: (0..100_000u128)
            .flat_map(|i| {
                let old = (i % 5000) as u64;
                [((day, user(i), old), -1), ((day, user(i), old + 7), 1)]
            })
            .collect(),
        ..EpochOutput::default()
    };
    update.totals.sort();
    let t = Instant::now();
    sink.write_epoch(&update).unwrap();
    println!(
        "epoch of 100k changes, applied and written: {:?}",
        t.elapsed()
    );
    let t = Instant::now();
    sink.finish().unwrap();
    println!("finish (rewrite + fsync): {:?}", t.elapsed());
    let t = Instant::now();
    let totals = read_totals(tmp.path(), day).unwrap();
    println!("read_totals: {:?}", t.elapsed());
    assert_eq!(totals.len(), n as usize);
    let t = Instant::now();
    let (s, _) = read_standing(tmp.path(), day, user(42), 5)
        .unwrap()
        .unwrap();
    println!("read_standing: {:?} (rank {})", t.elapsed(), s.rank);
}
