//! Property tests of event parsing (design §1): arbitrary input never panics, and valid events,
//! written in every accepted way, parse back to their fields.

use jiff::tz::TimeZone;
use jiff::Timestamp;
use proptest::prelude::*;
use rankmysteps_dataflow::event::{day_from_civil, format_user, Micros, Reason};
use rankmysteps_sources::parse::{ParseConfig, Parser};

const NOW: Micros = 1_900_000_000_000_000;

/// Checks the invariants every result must satisfy.
fn check_result(parser: &mut Parser, bytes: &[u8]) {
    let max = parser.config().max_steps;
    match parser.parse(bytes, NOW) {
        Ok(p) => {
            assert!(p.steps <= max);
            assert!(p.time <= NOW + parser.config().max_clock_skew);
            // The day is the local date at an offset within ±26 h (jiff's limit).
            let day_start = i64::from(p.day) * 86_400_000_000;
            let slack = 26 * 3_600_000_000;
            assert!(p.time >= day_start - slack && p.time < day_start + 86_400_000_000 + slack);
        }
        Err(e) => {
            assert_ne!(e.reason, Reason::Late);
            assert!(!e.detail.is_empty());
        }
    }
}

/// A valid record, mutated by a few byte edits.
fn mutated_line() -> impl Strategy<Value = Vec<u8>> {
    let base = br#"{"uuid":"0b6f3c1e-9c2d-4f7a-8e1b-2a3c4d5e6f70","timestamp":"2026-11-27T10:20:47.5+05:45","steps":7,"event_id":"a\u00e9\n","source":[1,{"x":null}]}"#.to_vec();
    prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..6)
        .prop_map(move |edits| edited(&base, edits))
}

/// `base` with each edit applied: 0 replaces the byte at the index, 1 removes it, 2 inserts.
fn edited(base: &[u8], edits: Vec<(prop::sample::Index, u8, u8)>) -> Vec<u8> {
    let mut line = base.to_vec();
    for (at, byte, op) in edits {
        let i = at.index(line.len() + 1);
        match op {
            0 if i < line.len() => line[i] = byte,
            1 if i < line.len() => {
                line.remove(i);
            }
            _ => line.insert(i, byte),
        }
    }
    line
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        check_result(&mut Parser::new(ParseConfig::default()), &bytes);
    }

    #[test]
    fn json_like_text_never_panics(text in r#"[{}\[\]":,0-9a-fA-F .eE+\-\\uTZ]{0,100}"#) {
        check_result(&mut Parser::new(ParseConfig::default()), text.as_bytes());
    }

    #[test]
    fn mutated_records_never_panic(line in mutated_line()) {
        check_result(&mut Parser::new(ParseConfig::default()), &line);
    }
}

/// How a generated event is written.
#[derive(Clone, Debug)]
struct Written {
    user: u128,
    uuid_form: u8,
    /// UTC nanoseconds (for the fraction) and the offset in minutes; `None`: naive local time.
    nanos: i128,
    offset_minutes: Option<i32>,
    frac_digits: usize,
    sep: char,
    zulu: u8,
    steps: u32,
    steps_neg_zero: bool,
    event_id: Option<String>,
    extra_first: bool,
    spaces: bool,
}

fn written() -> impl Strategy<Value = Written> {
    // 1900-01-01 .. 2100-01-01 in nanoseconds.
    let range = -2_208_988_800_000_000_000i128..4_102_444_800_000_000_000i128;
    (
        (
            any::<u128>(),
            0u8..4,
            range,
            prop::option::weighted(0.8, -14 * 60..=14 * 60),
        ),
        (
            0usize..10,
            prop::sample::select(vec!['T', 't', ' ']),
            0u8..3,
        ),
        (0u32..=100_000, any::<bool>()),
        prop::option::of(any::<String>()),
        (any::<bool>(), any::<bool>()),
    )
        .prop_map(
            |(
                (user, uuid_form, nanos, offset_minutes),
                (frac_digits, sep, zulu),
                (steps, steps_neg_zero),
                event_id,
                (extra_first, spaces),
            )| Written {
                user,
                uuid_form,
                nanos,
                offset_minutes,
                frac_digits,
                sep,
                zulu,
                steps,
                steps_neg_zero: steps_neg_zero && steps == 0,
                event_id,
                extra_first,
                spaces,
            },
        )
}

/// The record's text and the expected `(user, day, time, steps, event_id)`.
fn render(w: &Written, zone: &TimeZone) -> (String, (u128, i32, Micros, u32, Option<String>)) {
    let uuid = match w.uuid_form {
        0 => format!("\"{}\"", format_user(w.user)),
        1 => format!("\"{}\"", format_user(w.user).to_uppercase()),
        2 => w.user.to_string(),
        // Every character escaped.
        _ => {
            let escaped: String = format_user(w.user)
                .chars()
                .map(|c| format!("\\u{:04x}", c as u32))
                .collect();
            format!("\"{escaped}\"")
        }
    };
    let (timestamp, day, time) = match w.offset_minutes {
        Some(minutes) => {
            // Independent computation: jiff's civil time at a fixed offset.
            let ts = Timestamp::from_nanosecond(w.nanos).unwrap();
            let offset = jiff::tz::Offset::from_seconds(minutes * 60).unwrap();
            let dt = offset.to_datetime(ts);
            let frac = format!("{:09}", dt.subsec_nanosecond());
            let frac = if w.frac_digits == 0 {
                String::new()
            } else {
                format!("{}{}", ".", &format!("{frac}000")[..w.frac_digits])
            };
            let (sign, abs) = if minutes < 0 {
                ('-', -minutes)
            } else {
                ('+', minutes)
            };
            let off = if minutes == 0 && w.zulu == 1 {
                "Z".to_owned()
            } else if minutes == 0 && w.zulu == 2 {
                "-00:00".to_owned()
            } else {
                format!("{sign}{:02}:{:02}", abs / 60, abs % 60)
            };
            let text = format!(
                "{:04}-{:02}-{:02}{}{:02}:{:02}:{:02}{frac}{off}",
                dt.year(),
                dt.month(),
                dt.day(),
                w.sep,
                dt.hour(),
                dt.minute(),
                dt.second()
            );
            // The written fraction keeps `frac_digits` digits, then parsing floors to µs.
            let kept_nanos = match w.frac_digits {
                0 => 0,
                n if n >= 9 => i64::from(dt.subsec_nanosecond()),
                n => {
                    let unit = 10i64.pow(9 - n as u32);
                    i64::from(dt.subsec_nanosecond()) / unit * unit
                }
            };
            let whole = i64::try_from(w.nanos.div_euclid(1_000_000_000)).unwrap();
            let time = whole * 1_000_000 + kept_nanos / 1000;
            let day = day_from_civil(i32::from(dt.year()), dt.month() as u32, dt.day() as u32);
            (text, day, time)
        }
        None => {
            // A naive local time in the zone: whole seconds of the civil time at the zone's
            // offset for that instant, converted back with jiff's "compatible".
            let ts = Timestamp::from_nanosecond(w.nanos).unwrap();
            let dt = zone.to_datetime(ts);
            let dt = dt.with().subsec_nanosecond(0).build().unwrap();
            let text = dt.strftime("%Y-%m-%d %H:%M:%S").to_string();
            let time = zone
                .to_ambiguous_timestamp(dt)
                .compatible()
                .unwrap()
                .as_microsecond();
            let day = day_from_civil(i32::from(dt.year()), dt.month() as u32, dt.day() as u32);
            (text, day, time)
        }
    };
    let sp = if w.spaces { " " } else { "" };
    let steps = if w.steps_neg_zero {
        "-0".to_owned()
    } else {
        w.steps.to_string()
    };
    let mut fields = vec![
        format!("\"uuid\":{sp}{uuid}"),
        format!("\"timestamp\":{sp}\"{timestamp}\""),
        format!("\"steps\":{sp}{steps}"),
    ];
    if let Some(id) = &w.event_id {
        fields.push(format!(
            "\"event_id\":{sp}{}",
            serde_json::to_string(id).unwrap()
        ));
    }
    let extra = "\"source\":{\"v\":[1,2.5,\"x\",null,true]}".to_owned();
    if w.extra_first {
        fields.insert(0, extra);
    } else {
        fields.push(extra);
    }
    let line = format!("{sp}{{{sp}{}{sp}}}{sp}\r", fields.join(&format!(",{sp}")));
    (line, (w.user, day, time, w.steps, w.event_id.clone()))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn valid_events_parse_back(events in prop::collection::vec(written(), 1..20)) {
        let zone = TimeZone::get("America/Los_Angeles").unwrap();
        // One parser for the batch, so its zone cache is exercised across records.
        let mut parser = Parser::new(ParseConfig::default());
        for w in &events {
            let (line, (user, day, time, steps, event_id)) = render(w, &zone);
            let p = parser
                .parse(line.as_bytes(), time)
                .unwrap_or_else(|e| panic!("{line}: {e}"));
            prop_assert_eq!(p.user, user, "{}", line);
            prop_assert_eq!(p.day, day, "{}", line);
            prop_assert_eq!(p.time, time, "{}", line);
            prop_assert_eq!(p.steps, steps, "{}", line);
            prop_assert_eq!(p.event_id.as_deref(), event_id.as_deref(), "{}", line);
        }
    }
}

/// The same answer (fields, or reason and detail) from the scanner of flat objects and from
/// serde_json alone: the scanner must accept nothing serde_json refuses and read every value
/// as serde_json does.
fn same_as_serde(bytes: &[u8]) -> Result<(), TestCaseError> {
    let fast = Parser::new(ParseConfig::default()).parse(bytes, NOW);
    let serde = Parser::new(ParseConfig::default()).parse_with_serde(bytes, NOW);
    prop_assert_eq!(fast, serde, "{:?}", String::from_utf8_lossy(bytes));
    Ok(())
}

/// A record of the flat shape the scanner reads, mutated by a few byte edits (most stay in
/// that shape or leave it by one token).
fn mutated_flat_line() -> impl Strategy<Value = Vec<u8>> {
    let base = br#"{"uuid":"0b6f3c1e-9c2d-4f7a-8e1b-2a3c4d5e6f70", "timestamp":"2026-11-27 10:20:47","steps":7,"event_id":12,"x":-1.5e3,"y":true,"z":null,"steps":0}"#.to_vec();
    let bytes =
        prop::sample::select(b" \t\r\n\"\\{}[]:,-+.eE0123456789tfnul\x01\xc3\xa9x".to_vec());
    prop::collection::vec((any::<prop::sample::Index>(), bytes, 0u8..3), 1..4)
        .prop_map(move |edits| edited(&base, edits))
}

/// A record of the commonest shape, the one `Parser::parse` reads at fixed offsets, mutated by
/// a few byte edits (a replaced byte keeps the offsets: most such edits test what the fast path
/// checks; an inserted or removed one sends the record to the general path).
fn mutated_common_line() -> impl Strategy<Value = Vec<u8>> {
    let u = "0b6f3c1e-9c2d-4f7a-8e1b-2a3c4d5e6f70";
    let t = "2026-11-27 10:20:47";
    let bases: Vec<Vec<u8>> = [
        format!(r#"{{"uuid":"{u}","timestamp":"{t}","steps":7}}"#),
        format!(r#"{{"uuid":"{u}","timestamp":"{t}","steps":1234,"source":"bench"}}"#),
        format!(
            r#"{{"uuid":"{u}","timestamp":"{t}","steps":50000, "x" : -1.5e3 ,"y":true,"z":null}} "#
        ),
        format!(r#"{{"uuid":"{u}","timestamp":"{t}","steps":9,"event_id":"e-1"}}"#),
        format!(r#"{{"uuid":"{u}","timestamp":"{t}","steps":9,"source":"b","steps":3}}"#),
    ]
    .into_iter()
    .map(String::into_bytes)
    .collect();
    let bytes =
        prop::sample::select(b" \t\r\"\\{}:,-.eE0123456789abcdefABCDEFTZz\x01\xc3\xa9x".to_vec());
    (
        prop::sample::select(bases),
        prop::collection::vec((any::<prop::sample::Index>(), bytes, 0u8..4), 1..3),
    )
        .prop_map(|(base, edits)| {
            // Op 3 replaces as 0 does: replacements are what keeps the record's offsets.
            let edits = edits
                .into_iter()
                .map(|(at, byte, op)| (at, byte, if op == 3 { 0 } else { op }))
                .collect();
            edited(&base, edits)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn scanner_equals_serde_on_flat_records(line in mutated_flat_line()) {
        same_as_serde(&line)?;
    }

    #[test]
    fn fast_path_equals_serde_on_common_records(line in mutated_common_line()) {
        same_as_serde(&line)?;
    }

    #[test]
    fn scanner_equals_serde_on_mutated_records(line in mutated_line()) {
        same_as_serde(&line)?;
    }

    #[test]
    fn scanner_equals_serde_on_json_like_text(
        text in r#"[{}\[\]":,0-9a-z .eE+\-\\\t\n]{0,60}"#
    ) {
        same_as_serde(text.as_bytes())?;
    }

    #[test]
    fn scanner_equals_serde_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..80)) {
        same_as_serde(&bytes)?;
    }

    #[test]
    fn scanner_equals_serde_on_valid_events(w in written()) {
        let zone = TimeZone::get("America/Los_Angeles").unwrap();
        let (line, _) = render(&w, &zone);
        same_as_serde(line.as_bytes())?;
    }
}

/// Hand-picked edges of the scanner: each line gets the same answer both ways.
#[test]
fn scanner_edges_equal_serde() {
    let u = "0b6f3c1e-9c2d-4f7a-8e1b-2a3c4d5e6f70";
    let lines = [
        format!(r#"{{"uuid":"{u}","timestamp":"2026-11-27 10:20:47","steps":7}}"#),
        format!(r#" {{ "uuid" : "{u}" , "timestamp" : "2026-11-27 10:20:47" , "steps" : 7 }} "#),
        format!(r#"{{"uuid":"{u}","timestamp":"2026-11-27 10:20:47","steps":7,}}"#),
        format!(r#"{{"uuid":"{u}","timestamp":"2026-11-27 10:20:47","steps":07}}"#),
        format!(r#"{{"uuid":"{u}","timestamp":"2026-11-27 10:20:47","steps":-0}}"#),
        format!(r#"{{"uuid":"{u}","timestamp":"2026-11-27 10:20:47","steps":7.}}"#),
        format!(r#"{{"uuid":"{u}","timestamp":"2026-11-27 10:20:47","steps":7e}}"#),
        format!(r#"{{"uuid":"{u}","timestamp":"2026-11-27 10:20:47","steps":1E+2}}"#),
        format!(r#"{{"uuid":"{u}","timestamp":"2026-11-27 10:20:47","steps":7}}x"#),
        format!(r#"{{"uuid":"{u}","timestamp":"2026-11-27 10:20:47","steps":7}}{{}}"#),
        format!(r#"{{"uuid":"{u}","timestamp":"2026-11-27 10:20:47","steps":7,"steps":null}}"#),
        format!(r#"{{"uuid":"{u}","timestamp":"2026-11-27 10:20:47","steps":tru}}"#),
        format!(r#"{{"uuid":"{u}","timestamp":"2026-11-27 10:20:47","steps":truex}}"#),
        format!(r#"{{"uuid":"{u}","timestamp":"2026-11-27 10:20:47","steps":7,"e":"a	b"}}"#),
        format!(r#"{{"uuid":"{u}","timestamp":"2026-11-27 10:20:47","steps":7,"event_id":""}}"#),
        format!(r#"{{"uu\u0069d":"{u}","timestamp":"2026-11-27 10:20:47","steps":7}}"#),
        format!("{{\"uuid\":\"{u}\",\"timestamp\":\"2026-11-27 10:20:47\",\"steps\":7\u{a0}}}"),
        format!(
            r#"{{"uuid":{},"timestamp":"2026-11-27 10:20:47","steps":7}}"#,
            u128::MAX
        ),
        // The commonest shape (read at fixed offsets) and its edges.
        format!(r#"{{"uuid":"{u}","timestamp":"2026-11-27 10:20:47","steps":0}}"#),
        format!(r#"{{"uuid":"{u}","timestamp":"2026-11-27 10:20:47","steps":00}}"#),
        format!(r#"{{"uuid":"{u}","timestamp":"2026-11-27 10:20:47","steps":01}}"#),
        format!(r#"{{"uuid":"{u}","timestamp":"2026-11-27 10:20:47","steps":100000}}"#),
        format!(r#"{{"uuid":"{u}","timestamp":"2026-11-27 10:20:47","steps":100001}}"#),
        format!(r#"{{"uuid":"{u}","timestamp":"2026-11-27 10:20:47","steps":4294967295}}"#),
        format!(r#"{{"uuid":"{u}","timestamp":"2026-11-27 10:20:47","steps":99999999999}}"#),
        format!(r#"{{"uuid":"{u}","timestamp":"2026-11-27 10:20:47","steps":7 }}"#),
        format!(r#"{{"uuid":"{u}","timestamp":"2026-11-27 10:20:47","steps":7}} "#),
        format!(r#"{{"uuid":"{u}","timestamp":"2026-11-27 10:20:47","steps":7,"source":"b"}}"#),
        format!(r#"{{"uuid":"{u}","timestamp":"2026-11-27 10:20:47","steps":7, "s" : 1 }}"#),
        format!(r#"{{"uuid":"{u}","timestamp":"2026-11-27 10:20:47","steps":7,"s":1,}}"#),
        format!(r#"{{"uuid":"{u}","timestamp":"2026-11-27 10:20:47","steps":7,"s":[1]}}"#),
        format!(r#"{{"uuid":"{u}","timestamp":"2026-11-27 10:20:47","steps":7,"s":"
"}}"#),
        format!(r#"{{"uuid":"{u}","timestamp":"2026-11-27 10:20:47","steps":7,"event_id":"e"}}"#),
        format!(r#"{{"uuid":"{u}","timestamp":"2026-11-27 10:20:47","steps":7,"steps":8}}"#),
        format!(r#"{{"uuid":"{u}","timestamp":"2026-11-27 10:20:47","steps":7,"uuid":"x"}}"#),
        format!(r#"{{"uuid":"{u}","timestamp":"2026-11-27 10:20:47","steps":7,"timestamp":1}}"#),
        format!(r#"{{"uuid":"{u}","timestamp":"2026-02-30 10:20:47","steps":7}}"#),
        format!(r#"{{"uuid":"{u}","timestamp":"2099-11-27 10:20:47","steps":7}}"#),
        format!(r#"{{"uuid":"{u}","timestamp":"2026-11-27T10:20:47","steps":7}}"#),
        format!(
            r#"{{"uuid":"{}","timestamp":"2026-11-27 10:20:47","steps":7}}"#,
            u.to_uppercase()
        ),
        format!(r#"{{"uuid":"{}","timestamp":"2026-11-27 10:20:47","steps":7}}"#, &u[..35]),
        "{\"uuid\":\"0b6f3c1e-9c2d-4f7a-8e1b-2a3c4d5e6f70\",\"timestamp\":\"2026-11-27 10:20:47\",\"steps\":7,\"\u{e9}\":1}".to_owned(),
        "{}".to_owned(),
        "{".to_owned(),
        "".to_owned(),
        "[]".to_owned(),
        "null".to_owned(),
        r#"{"steps":-}"#.to_owned(),
        r#"{"steps":1}  "#.to_owned(),
    ];
    for line in &lines {
        let fast = Parser::new(ParseConfig::default()).parse(line.as_bytes(), NOW);
        let serde = Parser::new(ParseConfig::default()).parse_with_serde(line.as_bytes(), NOW);
        assert_eq!(fast, serde, "{line}");
    }
    // The commonest shape with invalid UTF-8 after the fields read at fixed offsets.
    let mut line =
        br#"{"uuid":"0b6f3c1e-9c2d-4f7a-8e1b-2a3c4d5e6f70","timestamp":"2026-11-27 10:20:47","steps":7,"s":"#
            .to_vec();
    line.extend_from_slice(b"\"\xff\"}");
    let fast = Parser::new(ParseConfig::default()).parse(&line, NOW);
    assert_eq!(fast.map_err(|e| e.reason), Err(Reason::Malformed));
}
