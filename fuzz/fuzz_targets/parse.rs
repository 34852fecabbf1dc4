//! Fuzzes event parsing: any bytes give `Ok` or `Err` (never a panic), and accepted events
//! satisfy the design's invariants.
#![no_main]

use std::sync::{Mutex, OnceLock};

use libfuzzer_sys::fuzz_target;
use rankmysteps_dataflow::event::{format_micros, format_user, Reason, MICROS_PER_DAY};
use rankmysteps_sources::parse::{ParseConfig, Parser};

/// 2030-03-17T17:46:40Z.
const NOW: i64 = 1_900_000_000_000_000;

fn config() -> &'static ParseConfig {
    static CONFIG: OnceLock<ParseConfig> = OnceLock::new();
    CONFIG.get_or_init(ParseConfig::default)
}

/// A parser kept across inputs, so its zone cache is exercised.
fn shared() -> &'static Mutex<Parser> {
    static PARSER: OnceLock<Mutex<Parser>> = OnceLock::new();
    PARSER.get_or_init(|| Mutex::new(Parser::new(config().clone())))
}

fuzz_target!(|data: &[u8]| {
    let result = shared().lock().unwrap().parse(data, NOW);
    // Same answer from a fresh parser (empty cache).
    let fresh = Parser::new(config().clone()).parse(data, NOW);
    assert_eq!(result, fresh);
    // Same answer without the scanner of flat objects (serde_json only).
    let serde = Parser::new(config().clone()).parse_with_serde(data, NOW);
    assert_eq!(fresh, serde);
    match result {
        Err(e) => {
            assert_ne!(e.reason, Reason::Late);
            assert!(!e.detail.is_empty());
            if std::str::from_utf8(data).is_err() {
                assert_eq!(e.reason, Reason::Malformed);
            }
        }
        Ok(p) => {
            let cfg = config();
            assert!(p.steps <= cfg.max_steps);
            assert!(p.time <= NOW + cfg.max_clock_skew);
            // The day is the local date at an offset strictly within ±24 h (RFC 3339 offsets
            // are at most 23:59; America/Los_Angeles is within -8 h).
            let day_start = i64::from(p.day) * MICROS_PER_DAY;
            assert!(p.time > day_start - MICROS_PER_DAY, "{p:?}");
            assert!(p.time < day_start + 2 * MICROS_PER_DAY, "{p:?}");
            assert!(std::str::from_utf8(data).is_ok());
            // A canonical rewrite of an accepted event parses to the same fields (its day may
            // differ: it is written in UTC).
            let ts = format_micros(p.time);
            if ts.len() == 27 && !ts.starts_with("0000") && !ts.starts_with('-') {
                let line = format!(
                    r#"{{"uuid":"{}","timestamp":"{ts}","steps":{},"event_id":{}}}"#,
                    format_user(p.user),
                    p.steps,
                    serde_json::to_string(&p.event_id).unwrap()
                );
                let q = Parser::new(cfg.clone())
                    .parse(line.as_bytes(), NOW)
                    .unwrap();
                assert_eq!(
                    (q.user, q.time, q.steps, q.event_id),
                    (p.user, p.time, p.steps, p.event_id),
                    "{line}"
                );
            }
        }
    }
});
