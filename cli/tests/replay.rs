//! `rankmysteps run --input` against the sequential reference, through the real binary.
//!
//! Seeded random JSON Lines with ties, many time zones (+14:00, −12:00, +05:45, …), the naive
//! format, integer user ids, duplicate event ids, late, future and malformed lines. The test
//! generator knows what every line must mean (it wrote it), so the reference does not use the
//! parser under test. Outputs for 1 and 4 workers and several epoch sizes must equal the
//! reference exactly: every day's top.json and totals.csv, rejected.jsonl and the counters.

use std::path::Path;
use std::process::Command;

use rankmysteps_dataflow::event::{
    day_from_civil, format_day, format_user, Day, Event, EventExtra, Micros, Reason, MICROS_PER_SEC,
};
use rankmysteps_dataflow::pipeline::Settings;
use rankmysteps_dataflow::reference::{Record, Reference};

use rankmysteps_dataflow::random::SplitMix64 as Rng;

/// Offsets in minutes: the extremes and the odd ones.
const OFFSETS: [i64; 9] = [
    0,
    14 * 60,
    -12 * 60,
    5 * 60 + 45,
    -8 * 60,
    9 * 60 + 30,
    -(3 * 60 + 30),
    60,
    -7 * 60,
];

/// A line and what it must mean: `Ok((user, day, time, steps, event_id))` or `Err(reason)`.
type Expected = Result<(u128, Day, Micros, u32, Option<String>), Reason>;

fn civil(t: Micros) -> (i32, u32, u32, i64, i64, i64) {
    let day = t.div_euclid(86_400 * MICROS_PER_SEC) as i32;
    let (y, m, d) = rankmysteps_dataflow::event::civil_from_day(day);
    let secs = t.rem_euclid(86_400 * MICROS_PER_SEC) / MICROS_PER_SEC;
    (y, m, d, secs / 3600, secs / 60 % 60, secs % 60)
}

fn uuid_text(rng: &mut Rng, user: u128) -> String {
    let text = format_user(user);
    if rng.below(4) == 0 {
        text.to_uppercase()
    } else {
        text
    }
}

/// One random line with its meaning; `clock` is the current UTC time of the stream.
fn line(rng: &mut Rng, clock: Micros, users: &[u128]) -> (String, Expected) {
    let user = users[rng.below(users.len() as u64) as usize];
    let steps = rng.below(4) as u32 * 10 + u32::from(rng.below(8) == 0);
    match rng.below(40) {
        0 => return ("{\"uuid\": \"broken".into(), Err(Reason::Malformed)),
        1 => return ("[1,2,3]".into(), Err(Reason::Malformed)),
        2 => {
            return (
                format!(
                    "{{\"uuid\":\"{}x\",\"timestamp\":\"2025-06-01T00:00:00Z\",\"steps\":\"7\"}}",
                    format_user(user)
                ),
                Err(Reason::InvalidUuid),
            )
        }
        3 => {
            return (
                format!(
                    "{{\"uuid\":\"{}\",\"timestamp\":\"2025-02-29T10:00:00Z\",\"steps\":1}}",
                    format_user(user)
                ),
                Err(Reason::InvalidTimestamp),
            )
        }
        4 => {
            return (
                format!(
                    "{{\"uuid\":\"{}\",\"timestamp\":\"2025-06-01T10:00:00Z\",\"steps\":2.5}}",
                    format_user(user)
                ),
                Err(Reason::InvalidSteps),
            )
        }
        5 => {
            return (
                format!(
                    "{{\"uuid\":\"{}\",\"timestamp\":\"2099-06-01T10:00:00Z\",\"steps\":3}}",
                    format_user(user)
                ),
                Err(Reason::Future),
            )
        }
        6 => {
            return (
                format!(
                    "{{\"uuid\":\"{}\",\"timestamp\":\"2025-06-01T10:00:00Z\",\"steps\":100001}}",
                    format_user(user)
                ),
                Err(Reason::InvalidSteps),
            )
        }
        _ => {}
    }
    // Mostly recent; sometimes two or three days old (late once those days have closed).
    let back = if rng.below(25) == 0 {
        40 + rng.below(40)
    } else {
        rng.below(3)
    } as i64;
    let time = clock - back * 3600 * MICROS_PER_SEC - rng.below(3600) as i64 * MICROS_PER_SEC;
    let event_id = match rng.below(5) {
        0 | 1 => None,
        _ => Some(format!("dev-{}", rng.below(8))),
    };
    let uuid_json = if user < 1 << 20 && rng.below(2) == 0 {
        user.to_string()
    } else {
        format!("\"{}\"", uuid_text(rng, user))
    };
    let (timestamp, day) = if rng.below(3) == 0 {
        // The original naive format: local time in America/Los_Angeles.
        let zone = jiff::tz::TimeZone::get("America/Los_Angeles").unwrap();
        let ts = jiff::Timestamp::from_microsecond(time).unwrap();
        let dt = zone.to_datetime(ts);
        let text = dt.strftime("%Y-%m-%d %H:%M:%S").to_string();
        let instant = zone
            .to_ambiguous_timestamp(dt)
            .compatible()
            .unwrap()
            .as_microsecond();
        let day = day_from_civil(dt.year() as i32, dt.month() as u32, dt.day() as u32);
        (text, (day, instant))
    } else {
        let offset = OFFSETS[rng.below(OFFSETS.len() as u64) as usize];
        let local = time + offset * 60 * MICROS_PER_SEC;
        let (y, m, d, h, mi, s) = civil(local);
        let sign = if offset < 0 { '-' } else { '+' };
        let zone = if offset == 0 && rng.below(2) == 0 {
            "Z".to_owned()
        } else {
            format!("{sign}{:02}:{:02}", offset.abs() / 60, offset.abs() % 60)
        };
        let text = format!("{y:04}-{m:02}-{d:02}T{h:02}:{mi:02}:{s:02}{zone}");
        (
            text,
            (
                day_from_civil(y, m, d),
                time - time.rem_euclid(MICROS_PER_SEC),
            ),
        )
    };
    let id_json = event_id
        .as_ref()
        .map(|id| format!(",\"event_id\":\"{id}\""))
        .unwrap_or_default();
    let extra = if rng.below(3) == 0 {
        ",\"source\":\"watch\",\"battery\":0.5"
    } else {
        ""
    };
    let text = format!(
        "{{\"uuid\":{uuid_json},\"timestamp\":\"{timestamp}\",\"steps\":{steps}{id_json}{extra}}}"
    );
    (text, Ok((user, day.0, day.1, steps, event_id)))
}

fn random_file(seed: u64, lines: usize) -> (String, Vec<Option<Expected>>) {
    let mut rng = Rng(seed);
    let users: Vec<u128> = (0..60)
        .map(|i| {
            if i < 20 {
                i as u128 + 1
            } else {
                (u128::from(rng.next_u64()) << 64) | u128::from(rng.next_u64())
            }
        })
        .collect();
    let mut clock: Micros = (day_from_civil(2025, 6, 1) as i64) * 86_400 * MICROS_PER_SEC;
    let mut text = String::new();
    let mut expected = Vec::new();
    for _ in 0..lines {
        clock += rng.below(240) as i64 * MICROS_PER_SEC;
        if rng.below(50) == 0 {
            text.push_str("   \n");
            expected.push(None);
            continue;
        }
        let (l, e) = line(&mut rng, clock, &users);
        text.push_str(&l);
        text.push('\n');
        expected.push(Some(e));
    }
    (text, expected)
}

fn reference(expected: &[Option<Expected>], epoch_events: usize, settings: &Settings) -> Reference {
    let mut reference = Reference::new(settings.clone());
    for (epoch, lines) in expected.chunks(epoch_events).enumerate() {
        let records = lines
            .iter()
            .enumerate()
            .filter_map(|(i, e)| {
                let pos = (epoch * epoch_events + i) as u64;
                Some(match e.clone()? {
                    Err(reason) => Record::Rejected(pos, reason),
                    Ok((user, day, time, steps, event_id)) => Record::Event(Event {
                        pos,
                        user,
                        day,
                        time,
                        steps,
                        extra: EventExtra::new(event_id.map(Into::into), None, None),
                    }),
                })
            })
            .collect();
        reference.epoch(epoch as u64, records);
    }
    reference
}

fn run(input: &Path, out: &Path, workers: usize, epoch_events: usize, k: usize) {
    let status = Command::new(env!("CARGO_BIN_EXE_rankmysteps"))
        .args(["run", "--input"])
        .arg(input)
        .arg("--out")
        .arg(out)
        .args([
            "--workers",
            &workers.to_string(),
            "--epoch-events",
            &epoch_events.to_string(),
        ])
        .args([
            "--k",
            &k.to_string(),
            "--grace",
            "2h",
            "--write-interval-ms",
            "0",
        ])
        .status()
        .unwrap();
    assert!(status.success());
}

fn check(out: &Path, reference: &Reference, k: usize, lines: &[&str]) {
    let mut days_on_disk: Vec<String> = std::fs::read_dir(out.join("days"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    days_on_disk.sort();
    let expected_days: Vec<String> = reference.days.keys().map(|d| format_day(*d)).collect();
    assert_eq!(days_on_disk, expected_days);
    for (day, result) in &reference.days {
        let dir = out.join("days").join(format_day(*day));
        let top: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("top.json")).unwrap()).unwrap();
        let expected_top: Vec<serde_json::Value> = result
            .top(k)
            .iter()
            .map(|r| serde_json::json!({"rank": r.rank, "user": format_user(r.user), "steps": r.steps}))
            .collect();
        assert_eq!(
            top,
            serde_json::json!({"day": format_day(*day), "final": result.is_final, "users": result.totals.len(), "top": expected_top}),
            "top.json of {}",
            format_day(*day)
        );
        let mut csv = String::from("user,steps\n");
        for (user, steps) in &result.totals {
            csv.push_str(&format!("{},{}\n", format_user(*user), steps));
        }
        assert_eq!(
            std::fs::read_to_string(dir.join("totals.csv")).unwrap(),
            csv,
            "totals.csv of {}",
            format_day(*day)
        );
    }
    let rejected: Vec<(String, String)> = std::fs::read_to_string(out.join("rejected.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["reason"].as_str().unwrap().to_owned(),
                v["raw"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let expected: Vec<(String, String)> = reference
        .rejected
        .iter()
        .map(|(_, pos, reason)| (reason.code().to_owned(), lines[*pos as usize].to_owned()))
        .collect();
    assert_eq!(rejected, expected, "rejected.jsonl");
    let progress: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("progress.json")).unwrap()).unwrap();
    let s = &reference.stats;
    assert_eq!(progress["stats"]["accepted"], s.accepted);
    assert_eq!(progress["stats"]["duplicate"], s.duplicate);
    for reason in Reason::ALL {
        assert_eq!(
            progress["stats"]["rejected"][reason.code()],
            s.rejected(reason),
            "{}",
            reason.code()
        );
    }
    assert_eq!(progress["positions"][0]["next"], lines.len());
}

/// The settings `run` uses with `--k k --grace 2h`.
fn settings(k: usize) -> Settings {
    Settings {
        k,
        grace: 2 * 3600 * MICROS_PER_SEC,
        initial_watermark: None,
        ..Settings::default()
    }
}

#[test]
fn replay_matches_reference_for_1_and_4_workers() {
    let dir = tempfile::tempdir().unwrap();
    let k = 7;
    let settings = settings(k);
    for (seed, epoch_events) in [(1u64, 50usize), (2, 333), (3, 1)] {
        let lines_n = if epoch_events == 1 { 600 } else { 4000 };
        let (text, expected) = random_file(seed, lines_n);
        let input = dir.path().join(format!("in-{seed}.jsonl"));
        std::fs::write(&input, &text).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let reference = reference(&expected, epoch_events, &settings);
        // The input exercises what it claims to.
        let s = reference.stats;
        assert!(
            s.duplicate > 0 && s.rejected(Reason::Late) > 0 && s.rejected(Reason::Future) > 0,
            "weak input: {s:?}"
        );
        assert!(reference.days.values().any(|d| d.is_final) && reference.days.len() > 2);
        let ties = reference
            .days
            .values()
            .any(|d| d.top(k).windows(2).any(|w| w[0].rank == w[1].rank));
        assert!(ties, "no ties in the top");
        for workers in [1, 4] {
            let out = dir.path().join(format!("out-{seed}-{workers}"));
            run(&input, &out, workers, epoch_events, k);
            check(&out, &reference, k, &lines);
        }
    }
}

#[test]
fn top_and_standing_commands_read_the_output() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let user = |i: u32| format!("00000000-0000-0000-0000-{i:012}");
    let mut text = String::new();
    for (i, steps) in [(1, 90), (2, 80), (3, 80), (4, 70)] {
        text.push_str(&format!(
            "{{\"uuid\":\"{}\",\"timestamp\":\"2025-06-01T10:00:00Z\",\"steps\":{steps}}}\n",
            user(i)
        ));
    }
    std::fs::write(&input, text).unwrap();
    let out = dir.path().join("out");
    run(&input, &out, 2, 10, 100);
    let bin = env!("CARGO_BIN_EXE_rankmysteps");
    let top = Command::new(bin)
        .args(["top", "--out"])
        .arg(&out)
        .args(["--day", "2025-06-01", "--json"])
        .output()
        .unwrap();
    assert!(top.status.success());
    let v: serde_json::Value = serde_json::from_slice(&top.stdout).unwrap();
    let ranks: Vec<u64> = v["top"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["rank"].as_u64().unwrap())
        .collect();
    assert_eq!(ranks, vec![1, 2, 2, 4]);
    let standing = Command::new(bin)
        .args(["standing", "--out"])
        .arg(&out)
        .args([
            "--day",
            "2025-06-01",
            "--user",
            &user(3),
            "--json",
            "--neighbours",
            "1",
        ])
        .output()
        .unwrap();
    assert!(standing.status.success());
    let v: serde_json::Value = serde_json::from_slice(&standing.stdout).unwrap();
    assert_eq!(
        (
            v["rank"].as_u64(),
            v["users"].as_u64(),
            v["gap_up"].as_u64(),
            v["gap_down"].as_u64()
        ),
        (Some(2), Some(4), Some(10), Some(10))
    );
    assert_eq!(v["above"][0]["user"], user(2));
    assert_eq!(v["below"][0]["user"], user(4));
    let missing = Command::new(bin)
        .args(["standing", "--out"])
        .arg(&out)
        .args(["--day", "2025-06-01", "--user", &user(9)])
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no steps"));
    let bad_day = Command::new(bin)
        .args(["top", "--out"])
        .arg(&out)
        .args(["--day", "2025-13-01"])
        .output()
        .unwrap();
    assert!(!bad_day.status.success());
}

/// `rankmysteps run --input F --serve` keeps its live state after the replay: through its
/// `/debug/lookup` and `/debug/lookup/top` (and `rankmysteps inspect lookup` / `inspect top`),
/// every (day, user) total, finality and standing, and every day's top-k, equal the sequential
/// reference at the last epoch, which the answers name, with 1 and 4 workers; they equal what
/// the sink wrote (top.json); a day closed before the last epoch is answered as closed (410).
#[test]
fn live_lookups_equal_the_reference_for_1_and_4_workers() {
    use rankmysteps_dataflow::ranking::{sort_listing, standing};
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let k = 7;
    let settings = settings(k);
    let epoch_events = 100;
    let (text, expected) = random_file(11, 3000);
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, &text).unwrap();
    let last = (expected.len().div_ceil(epoch_events) - 1) as u64;
    let at_last = reference(&expected, epoch_events, &settings);
    let before_last = reference(
        &expected[..last as usize * epoch_events],
        epoch_events,
        &settings,
    );
    let closed_before: Vec<Day> = before_last
        .days
        .iter()
        .filter(|(_, d)| d.is_final)
        .map(|(d, _)| *d)
        .collect();
    assert!(
        !closed_before.is_empty() && at_last.days.len() > closed_before.len() + 1,
        "weak input: {} days, {} closed before the last epoch",
        at_last.days.len(),
        closed_before.len()
    );
    for workers in [1usize, 4] {
        let out = dir.path().join(format!("out-{workers}"));
        let addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let mut child = Killed(
            Command::new(env!("CARGO_BIN_EXE_rankmysteps"))
                .args(["run", "--quiet", "--serve", "--listen", &addr.to_string()])
                .arg("--input")
                .arg(&input)
                .arg("--out")
                .arg(&out)
                .args(["--workers", &workers.to_string()])
                .args(["--epoch-events", &epoch_events.to_string()])
                .args(["--k", &k.to_string(), "--grace", "2h"])
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap(),
        );
        let stderr = std::io::BufReader::new(child.0.stderr.take().unwrap());
        let mut said = String::new();
        for line in stderr.lines() {
            let line = line.unwrap();
            said.push_str(&line);
            said.push('\n');
            if line.contains("the job is done") {
                break;
            }
        }
        assert!(said.contains("the job is done"), "{said}");
        let get = |path: &str| {
            let r = rankmysteps_web::client::get(addr, path).unwrap();
            (r.status, r.json())
        };
        let mut looked_up = 0;
        for (day, result) in &at_last.days {
            let d = format_day(*day);
            let (status, top) = get(&format!("/debug/lookup/top?day={d}"));
            if closed_before.contains(day) {
                assert_eq!(status, 410, "{d}: {top}");
                let user = format_user(*result.totals.keys().next().unwrap());
                let (status, body) = get(&format!("/debug/lookup?day={d}&user={user}"));
                assert_eq!(status, 410, "{d}: {body}");
                continue;
            }
            assert_eq!(status, 200, "{d}: {top}");
            assert_eq!(top["epoch"], last, "{top}");
            assert_eq!(top["final"], result.is_final, "{d}: {top}");
            let want: Vec<serde_json::Value> = result
                .top(k)
                .iter()
                .map(|r| serde_json::json!({"position": r.position, "rank": r.rank, "user": format_user(r.user), "steps": r.steps}))
                .collect();
            assert_eq!(top["top"], serde_json::Value::from(want.clone()), "{d}");
            // What the sink wrote for the same epoch.
            let written: serde_json::Value = serde_json::from_str(
                &std::fs::read_to_string(out.join("days").join(&d).join("top.json")).unwrap(),
            )
            .unwrap();
            let without_position: Vec<serde_json::Value> = want
                .iter()
                .map(|r| serde_json::json!({"rank": r["rank"], "user": r["user"], "steps": r["steps"]}))
                .collect();
            assert_eq!(written["top"], serde_json::Value::from(without_position));
            let mut listing: Vec<(u128, u64)> =
                result.totals.iter().map(|(u, t)| (*u, *t)).collect();
            sort_listing(&mut listing);
            for &(user, total) in listing.iter().step_by(3) {
                let u = format_user(user);
                let (status, got) = get(&format!("/debug/lookup?day={d}&user={u}&neighbours=2"));
                assert_eq!(status, 200, "{d} {u}: {got}");
                let want = standing(&listing, user, 2).unwrap();
                assert_eq!(
                    (&got["total"], &got["epoch"], &got["final"]),
                    (&total.into(), &last.into(), &result.is_final.into()),
                    "{got}"
                );
                let s = &got["standing"];
                assert_eq!(
                    (
                        s["rank"].as_u64(),
                        s["users"].as_u64(),
                        s["gap_up"].as_u64(),
                        s["gap_down"].as_u64()
                    ),
                    (
                        Some(want.rank),
                        Some(want.users),
                        want.gap_up,
                        want.gap_down
                    ),
                    "{got}"
                );
                let side = |v: &serde_json::Value| -> Vec<(String, u64, u64)> {
                    v.as_array()
                        .unwrap()
                        .iter()
                        .map(|n| {
                            (
                                n["user"].as_str().unwrap().to_owned(),
                                n["steps"].as_u64().unwrap(),
                                n["rank"].as_u64().unwrap(),
                            )
                        })
                        .collect()
                };
                let named = |v: &[(u128, u64, u64)]| -> Vec<(String, u64, u64)> {
                    v.iter().map(|&(u, s, r)| (format_user(u), s, r)).collect()
                };
                assert_eq!(side(&s["above"]), named(&want.above), "{got}");
                assert_eq!(side(&s["below"]), named(&want.below), "{got}");
                looked_up += 1;
            }
        }
        assert!(looked_up > 20, "{looked_up} lookups");
        // The same through the CLI, for one open day.
        let (day, result) = at_last
            .days
            .iter()
            .find(|(d, r)| !closed_before.contains(d) && !r.is_final)
            .unwrap();
        let inspect = |args: &[&str]| {
            let o = Command::new(env!("CARGO_BIN_EXE_rankmysteps"))
                .args(["inspect", "--json", "--addr", &addr.to_string()])
                .args(args)
                .output()
                .unwrap();
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()
        };
        let top = inspect(&["top", "--day", &format_day(*day), "--limit", "3"]);
        let want: Vec<String> = result
            .top(k)
            .iter()
            .take(3)
            .map(|r| format_user(r.user))
            .collect();
        let got: Vec<String> = top["top"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["user"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(got, want);
        let (user, total) = result.totals.iter().next().unwrap();
        let found = inspect(&[
            "lookup",
            "--day",
            &format_day(*day),
            "--user",
            &format_user(*user),
        ]);
        assert_eq!(found["total"], *total);
        // Ctrl-C (SIGTERM) ends it cleanly.
        let pid = child.0.id().to_string();
        assert!(Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
        let status = child.0.wait().unwrap();
        assert!(status.success(), "{status}");
    }
}

/// A child process killed when the test ends, passed or not.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
