//! Parsing one event record (design §1): bytes → [`Parsed`] or a [`ParseError`] with its reason.
//!
//! The record is validated with `serde_json` (so "valid JSON" means exactly what `serde_json`
//! accepts), except that records of the common flat shape are read by a scanner of their own
//! ([`scan_flat`]: in the replay benchmark's profile parsing costs about 110 ns per event with it,
//! about 200 ns with serde_json alone) that accepts a strict subset of what `serde_json`
//! accepts and yields the same raw values (property tests and the fuzz target compare both
//! paths). The four known fields are read as borrowed raw JSON text and classified here:
//! `serde_json` would turn integers beyond `u64` into floats, and the rules distinguish `7`
//! from `7.0`. Unknown fields are skipped without allocating; duplicate keys are not an
//! error, the last one wins.
//!
//! Checks run in the design's order and the first failing one decides the reason:
//! `malformed`, `invalid_uuid`, `invalid_timestamp`, `invalid_steps`, `future`.

use std::borrow::Cow;
use std::fmt;

use jiff::civil::DateTime;
use jiff::tz::TimeZone;
use jiff::Timestamp;
use rankmysteps_dataflow::event::{
    day_from_civil, days_in_month, parse_user, parse_user_bytes, Day, Micros, Reason, User,
    MICROS_PER_SEC,
};
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

/// Limits and defaults that parsing depends on.
#[derive(Clone, Debug)]
pub struct ParseConfig {
    /// Largest accepted `steps` (`max_steps_per_event`, default 100000).
    pub max_steps: u32,
    /// How far ahead of the ingestion wall clock a timestamp may be (default 1 h).
    pub max_clock_skew: Micros,
    /// The zone of timestamps written without an offset (`default_time_zone`,
    /// default `America/Los_Angeles`).
    pub time_zone: TimeZone,
}

impl Default for ParseConfig {
    fn default() -> Self {
        ParseConfig {
            max_steps: 100_000,
            max_clock_skew: 3600 * MICROS_PER_SEC,
            time_zone: TimeZone::get("America/Los_Angeles")
                .expect("the bundled tzdb has America/Los_Angeles"),
        }
    }
}

/// The fields of a record that passed every check of parsing (all but `late`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parsed {
    /// The user (the UUID's 128-bit value).
    pub user: User,
    /// The user's day: the date part of the timestamp in its own offset or zone.
    pub day: Day,
    /// The instant, UTC microseconds.
    pub time: Micros,
    /// Steps, `0..=max_steps`.
    pub steps: u32,
    /// The device's id for this report: a string's value, or an integer's text as written.
    pub event_id: Option<Box<str>>,
}

/// Why a record was rejected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    /// The reason code (never [`Reason::Late`], which the dataflow decides).
    pub reason: Reason,
    /// A short human-readable explanation.
    pub detail: String,
}

impl ParseError {
    fn new(reason: Reason, detail: impl Into<String>) -> ParseError {
        ParseError {
            reason,
            detail: detail.into(),
        }
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.reason.code(), self.detail)
    }
}

impl std::error::Error for ParseError {}

/// Parses event records; keeps a small cache of zone conversions between calls.
#[derive(Debug)]
pub struct Parser {
    config: ParseConfig,
    /// Ranges of local time known to convert with one fixed offset (see [`ZoneRange`]).
    zone_cache: [ZoneRange; ZONE_CACHE_SIZE],
    /// The entry of `zone_cache` to replace next.
    zone_cache_next: usize,
    /// Direct-mapped cache of local hours (seconds / 3600, as if UTC) whose every second maps
    /// unambiguously to `local - offset`: `(hour, offset)`. Serves the hours near transitions
    /// that `zone_cache` leaves out (e.g. data from the days around a DST change).
    hour_cache: [(i64, i64); HOUR_CACHE_SIZE],
}

/// Entries of a [`Parser`]'s hour cache.
const HOUR_CACHE_SIZE: usize = 64;

/// Number of [`ZoneRange`]s remembered by a [`Parser`].
const ZONE_CACHE_SIZE: usize = 4;

/// Local times (seconds since the epoch as if UTC) in `lo..hi` that are more than 26 h away
/// from any transition of the zone: each maps to exactly one instant, `local - offset`.
#[derive(Clone, Copy, Debug)]
struct ZoneRange {
    lo: i64,
    hi: i64,
    offset: i64,
}

const EMPTY_RANGE: ZoneRange = ZoneRange {
    lo: 0,
    hi: 0,
    offset: 0,
};

impl Parser {
    /// A parser with this configuration.
    pub fn new(config: ParseConfig) -> Parser {
        Parser {
            config,
            zone_cache: [EMPTY_RANGE; ZONE_CACHE_SIZE],
            zone_cache_next: 0,
            hour_cache: [(i64::MIN, 0); HOUR_CACHE_SIZE],
        }
    }

    /// The configuration.
    pub fn config(&self) -> &ParseConfig {
        &self.config
    }

    /// Parses one record (one line without its trailing '\n'; may end with '\r' or spaces, which JSON treats as whitespace).
    ///
    /// `now` is the wall clock at ingestion, for the `future` check.
    pub fn parse(&mut self, record: &[u8], now: Micros) -> Result<Parsed, ParseError> {
        if let Some(parsed) = self.parse_common(record, now) {
            return Ok(parsed);
        }
        let text = utf8(record)?;
        // The common shape (a flat object of plain strings, numbers and literals) is read by a
        // scanner that accepts nothing serde_json would refuse and yields the same raw values;
        // anything else (nesting, escapes, invalid JSON) goes through serde_json.
        let fields = match scan_flat(text) {
            Some(fields) => fields,
            None => serde_fields(text)?,
        };
        self.classify(fields, now)
    }

    /// The commonest shape of a record, read at fixed offsets: `{"uuid":"` a 36-character
    /// UUID `","timestamp":"` a 19-character naive timestamp `","steps":` an integer, then `}`
    /// or more fields of the flat shape ([`scan_flat`]) none of which is a known field.
    ///
    /// Invariant: `Some` only for a record the general path accepts, with the same result
    /// (its values are read by the same functions); `None` means "not this shape or not
    /// accepted" and the general path decides, errors included. The property tests compare
    /// [`Parser::parse`] with [`Parser::parse_with_serde`] on records of this shape mutated
    /// byte by byte.
    #[inline]
    fn parse_common(&mut self, b: &[u8], now: Micros) -> Option<Parsed> {
        const UUID_KEY: &[u8] = b"{\"uuid\":\"";
        const TIMESTAMP_KEY: &[u8] = b"\",\"timestamp\":\"";
        const STEPS_KEY: &[u8] = b"\",\"steps\":";
        // {"uuid":" [0, 9) · uuid [9, 45) · ","timestamp":" [45, 60) · timestamp [60, 79) ·
        // ","steps": [79, 89) · digits from 89. The UUID and the timestamp, once accepted, are
        // ASCII digits, letters and separators: no quote or escape can hide in them.
        if b.len() < 91
            || &b[..9] != UUID_KEY
            || &b[45..60] != TIMESTAMP_KEY
            || &b[79..89] != STEPS_KEY
        {
            return None;
        }
        let user = parse_user_bytes(&b[9..45])?;
        let (time, day) = match lex_timestamp(&b[60..79])? {
            lexed @ Lexed::Naive { .. } => self.lexed(lexed)?,
            Lexed::Offset { .. } => return None,
        };
        // A JSON integer: no leading zero, and no fraction or exponent after it.
        let digits = b[89..].iter().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 || digits > 10 || (b[89] == b'0' && digits > 1) {
            return None;
        }
        let steps = b[89..89 + digits]
            .iter()
            .fold(0u64, |v, &d| v * 10 + u64::from(d - b'0'));
        if steps > u64::from(self.config.max_steps) {
            return None;
        }
        let mut i = 89 + digits;
        match b.get(i) {
            Some(b'}') => i += 1,
            Some(b',') => {
                // The other fields: plain scalars, none of them a known field (a repeated
                // known key would override the values read above: the general path decides).
                // ASCII only here (the general path checks anything else for UTF-8): a
                // word-at-a-time test, where `from_utf8` was a call per record.
                let rest = &b[i..];
                if !rest.is_ascii() {
                    return None;
                }
                i += scan_members(rest, skip_ws(rest, 1), |key, _| {
                    (!matches!(key, b"uuid" | b"timestamp" | b"steps" | b"event_id")).then_some(())
                })?;
            }
            _ => return None,
        }
        if skip_ws(b, i) != b.len() || time > now.saturating_add(self.config.max_clock_skew) {
            return None;
        }
        Some(Parsed {
            user,
            day,
            time,
            steps: steps as u32,
            event_id: None,
        })
    }

    /// [`Parser::parse`] without the scanner of flat objects: every record through
    /// serde_json. The reference the scanner is tested against (same results on every input).
    #[doc(hidden)]
    pub fn parse_with_serde(&mut self, record: &[u8], now: Micros) -> Result<Parsed, ParseError> {
        let text = utf8(record)?;
        let fields = serde_fields(text)?;
        self.classify(fields, now)
    }

    /// The checks of design §1 on a record's known fields, in order.
    fn classify(&mut self, fields: RawFields<'_>, now: Micros) -> Result<Parsed, ParseError> {
        // Decode the known fields' strings first: one that cannot be decoded (a lone surrogate
        // escape such as "\ud800", which serde_json only checks when decoding) is malformed.
        let uuid = Val::new(fields.uuid)?;
        let timestamp = Val::new(fields.timestamp)?;
        let steps = Val::new(fields.steps)?;
        let event_id = Val::new(fields.event_id)?;

        let user = parse_uuid_field(uuid)?;

        let (time, day) = match timestamp {
            None => return Err(missing("timestamp", Reason::InvalidTimestamp)),
            Some(v) => v
                .text
                .as_deref()
                .and_then(|s| self.timestamp(s))
                .ok_or_else(|| {
                    ParseError::new(
                        Reason::InvalidTimestamp,
                        format!("invalid timestamp {}", snippet(v.raw)),
                    )
                })?,
        };

        let steps = parse_steps_field(steps, self.config.max_steps)?;

        let event_id = event_id.and_then(|v| match v.text {
            Some(text) => Some(text.into()),
            None if classify_integer(v.raw).is_some() => Some(v.raw.into()),
            None => None,
        });

        let limit = now.saturating_add(self.config.max_clock_skew);
        if time > limit {
            return Err(ParseError::new(
                Reason::Future,
                format!(
                    "timestamp {} µs ahead of now (max clock skew {} µs)",
                    time.saturating_sub(now),
                    self.config.max_clock_skew
                ),
            ));
        }

        Ok(Parsed {
            user,
            day,
            time,
            steps,
            event_id,
        })
    }

    /// [`parse_timestamp`] with this parser's zone and cache.
    fn timestamp(&mut self, text: &str) -> Option<(Micros, Day)> {
        self.lexed(lex_timestamp(text.as_bytes())?)
    }

    /// The instant and day of a lexed timestamp, naive ones in this parser's zone (cached).
    #[inline]
    fn lexed(&mut self, lexed: Lexed) -> Option<(Micros, Day)> {
        match lexed {
            Lexed::Offset { local, day, offset } => Some((local - offset * MICROS_PER_SEC, day)),
            Lexed::Naive { local_secs, day } => {
                for r in &self.zone_cache {
                    if r.lo <= local_secs && local_secs < r.hi {
                        return Some(((local_secs - r.offset) * MICROS_PER_SEC, day));
                    }
                }
                let hour = local_secs.div_euclid(3600);
                let slot = hour.rem_euclid(HOUR_CACHE_SIZE as i64) as usize;
                if self.hour_cache[slot].0 == hour {
                    return Some(((local_secs - self.hour_cache[slot].1) * MICROS_PER_SEC, day));
                }
                let time = naive_to_instant(local_secs, &self.config.time_zone)?;
                if let Some(range) = safe_range(time, &self.config.time_zone) {
                    if range.lo <= local_secs && local_secs < range.hi {
                        self.zone_cache[self.zone_cache_next] = range;
                        self.zone_cache_next = (self.zone_cache_next + 1) % ZONE_CACHE_SIZE;
                        return Some((time, day));
                    }
                }
                if let Some(offset) = unambiguous_hour(hour, &self.config.time_zone) {
                    self.hour_cache[slot] = (hour, offset);
                }
                Some((time, day))
            }
        }
    }
}

/// A line that is only ASCII whitespace (or empty): skipped by file sources, not an event.
pub fn is_blank(line: &[u8]) -> bool {
    line.iter().all(u8::is_ascii_whitespace)
}

/// Parses a timestamp string as above; returns (utc instant micros, day). Exposed for tests/generator.
///
/// Accepted: RFC 3339 (`YYYY-MM-DD`, `T`/`t`/space, `HH:MM:SS`, optional fraction truncated to
/// microseconds, `Z`/`z` or `±HH:MM`), whose day is its local date; or exactly
/// `YYYY-MM-DD HH:MM:SS`, a local time in `zone` (RFC 5545 "compatible" disambiguation), whose
/// day is its date part.
pub fn parse_timestamp(text: &str, zone: &TimeZone) -> Option<(Micros, Day)> {
    match lex_timestamp(text.as_bytes())? {
        Lexed::Offset { local, day, offset } => Some((local - offset * MICROS_PER_SEC, day)),
        Lexed::Naive { local_secs, day } => Some((naive_to_instant(local_secs, zone)?, day)),
    }
}

/// The known fields of a record, as raw JSON text (`null` counts as absent).
struct Fields<'a> {
    uuid: Option<&'a RawValue>,
    timestamp: Option<&'a RawValue>,
    steps: Option<&'a RawValue>,
    event_id: Option<&'a RawValue>,
}

/// A key of the record's object.
enum Key {
    Uuid,
    Timestamp,
    Steps,
    EventId,
    Other,
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Key, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key, E> {
                Ok(match v {
                    "uuid" => Key::Uuid,
                    "timestamp" => Key::Timestamp,
                    "steps" => Key::Steps,
                    "event_id" => Key::EventId,
                    _ => Key::Other,
                })
            }
        }
        deserializer.deserialize_identifier(KeyVisitor)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Fields<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Fields<'a>, D::Error> {
        struct FieldsVisitor<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for FieldsVisitor<'a> {
            type Value = Fields<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields<'a>, A::Error> {
                let mut fields = Fields {
                    uuid: None,
                    timestamp: None,
                    steps: None,
                    event_id: None,
                };
                while let Some(key) = map.next_key::<Key>()? {
                    let slot = match key {
                        Key::Uuid => &mut fields.uuid,
                        Key::Timestamp => &mut fields.timestamp,
                        Key::Steps => &mut fields.steps,
                        Key::EventId => &mut fields.event_id,
                        Key::Other => {
                            map.next_value::<IgnoredAny>()?;
                            continue;
                        }
                    };
                    let raw: &'de RawValue = map.next_value()?;
                    // Last duplicate wins; `null` is the same as absent.
                    *slot = (raw.get() != "null").then_some(raw);
                }
                Ok(fields)
            }
        }
        deserializer.deserialize_map(FieldsVisitor(std::marker::PhantomData))
    }
}

/// The record as text, or `malformed` if it is not UTF-8.
fn utf8(record: &[u8]) -> Result<&str, ParseError> {
    std::str::from_utf8(record).map_err(|e| {
        ParseError::new(
            Reason::Malformed,
            format!("not UTF-8 (invalid byte at {})", e.valid_up_to()),
        )
    })
}

/// The known fields of a record through serde_json (any valid JSON object), or `malformed`.
fn serde_fields(text: &str) -> Result<RawFields<'_>, ParseError> {
    let fields: Fields<'_> = serde_json::from_str(text)
        .map_err(|e| ParseError::new(Reason::Malformed, malformed_detail(&e)))?;
    fn raw(v: Option<&RawValue>) -> Option<&str> {
        v.map(RawValue::get)
    }
    Ok(RawFields {
        uuid: raw(fields.uuid),
        timestamp: raw(fields.timestamp),
        steps: raw(fields.steps),
        event_id: raw(fields.event_id),
    })
}

/// The known fields of a record as raw JSON text (`null` counts as absent).
#[derive(Default)]
struct RawFields<'a> {
    uuid: Option<&'a str>,
    timestamp: Option<&'a str>,
    steps: Option<&'a str>,
    event_id: Option<&'a str>,
}

/// Reads a record of the common shape without serde_json: one JSON object whose keys are
/// strings without escapes and whose values are strings without escapes, numbers, `true`,
/// `false` or `null`, with JSON whitespace anywhere between tokens.
///
/// Invariant: `Some` only for text that is valid JSON, with the raw value serde_json's
/// `RawValue` would give for each known key (the last duplicate wins, `null` is absent).
/// `None` means "not this shape" (nested values, escapes, or invalid JSON), never "invalid":
/// the caller then asks serde_json, which decides. The property tests compare both paths.
fn scan_flat(text: &str) -> Option<RawFields<'_>> {
    let b = text.as_bytes();
    let mut fields = RawFields::default();
    let mut other = None;
    let mut i = skip_ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    i = skip_ws(b, i + 1);
    if b.get(i) == Some(&b'}') {
        i += 1;
    } else {
        i = scan_members(b, i, |key, value| {
            // Token boundaries are ASCII: the range is on char boundaries.
            let raw = &text[value];
            let slot = match key {
                b"uuid" => &mut fields.uuid,
                b"timestamp" => &mut fields.timestamp,
                b"steps" => &mut fields.steps,
                b"event_id" => &mut fields.event_id,
                _ => &mut other,
            };
            *slot = (raw != "null").then_some(raw);
            Some(())
        })?;
    }
    (skip_ws(b, i) == b.len()).then_some(fields)
}

/// Scans the members of a flat object from its first key at `i` through its closing `}`:
/// `"key": scalar` pairs (keys without escapes, values as [`scan_scalar`] reads them) separated
/// by commas, JSON whitespace anywhere between tokens. Calls `member(key, raw value's range)`
/// on each, in order; returns the index after the `}`, or `None` if the text is not of that
/// shape or `member` refused a pair. Bytes, not text: the caller has checked the encoding.
#[inline]
fn scan_members<'a>(
    b: &'a [u8],
    mut i: usize,
    mut member: impl FnMut(&'a [u8], std::ops::Range<usize>) -> Option<()>,
) -> Option<usize> {
    loop {
        let key_end = scan_string(b, i)?;
        let key = &b[i + 1..key_end - 1];
        i = skip_ws(b, key_end);
        if b.get(i) != Some(&b':') {
            return None;
        }
        i = skip_ws(b, i + 1);
        let value_end = scan_scalar(b, i)?;
        member(key, i..value_end)?;
        i = skip_ws(b, value_end);
        match b.get(i) {
            Some(b',') => i = skip_ws(b, i + 1),
            Some(b'}') => return Some(i + 1),
            _ => return None,
        }
    }
}

/// The first index at or after `i` that is not JSON whitespace.
#[inline]
fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while matches!(b.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        i += 1;
    }
    i
}

/// The end (after the closing quote) of a string starting at `i` without escapes or control
/// characters; `None` if there is none such.
#[inline]
fn scan_string(b: &[u8], i: usize) -> Option<usize> {
    if b.get(i) != Some(&b'"') {
        return None;
    }
    let mut j = i + 1;
    loop {
        match *b.get(j)? {
            b'"' => return Some(j + 1),
            b'\\' | 0..=0x1f => return None,
            _ => j += 1,
        }
    }
}

/// The end of a plain scalar (string without escapes, number, `true`, `false`, `null`) at `i`.
#[inline]
fn scan_scalar(b: &[u8], i: usize) -> Option<usize> {
    let literal = |word: &[u8]| b[i..].starts_with(word).then_some(i + word.len());
    match *b.get(i)? {
        b'"' => scan_string(b, i),
        b't' => literal(b"true"),
        b'f' => literal(b"false"),
        b'n' => literal(b"null"),
        b'-' | b'0'..=b'9' => scan_number(b, i),
        _ => None,
    }
}

/// The end of a JSON number at `i` (RFC 8259: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`).
#[inline]
fn scan_number(b: &[u8], mut i: usize) -> Option<usize> {
    let digits = |b: &[u8], i: usize| i + b[i..].iter().take_while(|c| c.is_ascii_digit()).count();
    if b.get(i) == Some(&b'-') {
        i += 1;
    }
    match *b.get(i)? {
        b'0' => i += 1,
        b'1'..=b'9' => i = digits(b, i),
        _ => return None,
    }
    if b.get(i) == Some(&b'.') {
        let end = digits(b, i + 1);
        if end == i + 1 {
            return None;
        }
        i = end;
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let end = digits(b, i);
        if end == i {
            return None;
        }
        i = end;
    }
    Some(i)
}

fn malformed_detail(e: &serde_json::Error) -> String {
    if e.is_data() {
        // Valid JSON of the wrong type (array, string, number, null, ...).
        "not a JSON object".to_owned()
    } else {
        format!("invalid JSON: {e}")
    }
}

fn missing(field: &str, reason: Reason) -> ParseError {
    ParseError::new(reason, format!("missing field `{field}`"))
}

/// The start of a raw JSON value, for error details.
fn snippet(raw: &str) -> Cow<'_, str> {
    const MAX: usize = 48;
    if raw.len() <= MAX {
        return Cow::Borrowed(raw);
    }
    let mut end = MAX;
    while !raw.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}…", &raw[..end]))
}

/// A known field's value: its raw JSON text, and its decoded value if it is a string.
struct Val<'a> {
    raw: &'a str,
    text: Option<Cow<'a, str>>,
}

impl<'a> Val<'a> {
    /// Decodes a string value (borrowed unless it has escapes); other values stay raw.
    fn new(raw: Option<&'a str>) -> Result<Option<Val<'a>>, ParseError> {
        let Some(raw) = raw else { return Ok(None) };
        if !raw.starts_with('"') {
            return Ok(Some(Val { raw, text: None }));
        }
        // serde_json or [`scan_flat`] validated the string's syntax: no control characters,
        // valid escapes (and the scanner lets none through).
        let inner = &raw[1..raw.len() - 1];
        let text = if memchr::memchr(b'\\', inner.as_bytes()).is_none() {
            Cow::Borrowed(inner)
        } else {
            Cow::Owned(serde_json::from_str::<String>(raw).map_err(|e| {
                ParseError::new(Reason::Malformed, format!("invalid JSON string: {e}"))
            })?)
        };
        Ok(Some(Val {
            raw,
            text: Some(text),
        }))
    }
}

/// Whether raw JSON number text is an integer (no fraction, no exponent).
fn is_integer_text(raw: &str) -> bool {
    !raw.bytes().any(|c| matches!(c, b'.' | b'e' | b'E'))
}

/// A raw JSON integer: `Some((negative, magnitude))`, `magnitude` `None` when beyond `u128`.
/// `None` when `raw` is not an integer. `-0` is non-negative.
fn classify_integer(raw: &str) -> Option<(bool, Option<u128>)> {
    let b = raw.as_bytes();
    if !matches!(b[0], b'-' | b'0'..=b'9') || !is_integer_text(raw) {
        return None;
    }
    let (neg, digits) = match b[0] {
        b'-' => (true, &b[1..]),
        _ => (false, b),
    };
    let mut value: Option<u128> = Some(0);
    for &d in digits {
        value = value
            .and_then(|v| v.checked_mul(10))
            .and_then(|v| v.checked_add(u128::from(d - b'0')));
    }
    Some((neg && value != Some(0), value))
}

fn parse_uuid_field(val: Option<Val<'_>>) -> Result<User, ParseError> {
    let Some(Val { raw, text }) = val else {
        return Err(missing("uuid", Reason::InvalidUuid));
    };
    let user = match text {
        Some(text) => parse_user(&text),
        None => match classify_integer(raw) {
            Some((false, value)) => value,
            _ => None,
        },
    };
    user.ok_or_else(|| {
        ParseError::new(
            Reason::InvalidUuid,
            format!(
                "invalid uuid {} (want an RFC 4122 UUID string or a non-negative integer)",
                snippet(raw)
            ),
        )
    })
}

fn parse_steps_field(val: Option<Val<'_>>, max: u32) -> Result<u32, ParseError> {
    let Some(Val { raw, .. }) = val else {
        return Err(missing("steps", Reason::InvalidSteps));
    };
    match classify_integer(raw) {
        Some((false, Some(v))) if v <= u128::from(max) => Ok(v as u32),
        Some(_) => Err(ParseError::new(
            Reason::InvalidSteps,
            format!("steps {} out of range 0..={max}", snippet(raw)),
        )),
        None => Err(ParseError::new(
            Reason::InvalidSteps,
            format!("steps {} is not an integer", snippet(raw)),
        )),
    }
}

/// A syntactically valid timestamp.
enum Lexed {
    /// With an explicit offset: local time (µs since the epoch, as if UTC), its day, and the
    /// offset in seconds east of UTC.
    Offset {
        local: Micros,
        day: Day,
        offset: i64,
    },
    /// `YYYY-MM-DD HH:MM:SS` without offset: local seconds (as if UTC) and its day.
    Naive { local_secs: i64, day: Day },
}

/// The value of exactly `N` ASCII digits.
#[inline]
fn digits<const N: usize>(b: &[u8]) -> Option<u32> {
    let b: &[u8; N] = b.get(..N)?.try_into().ok()?;
    let mut v = 0u32;
    for &c in b {
        let d = c.wrapping_sub(b'0');
        if d > 9 {
            return None;
        }
        v = v * 10 + u32::from(d);
    }
    Some(v)
}

fn lex_timestamp(b: &[u8]) -> Option<Lexed> {
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let year = digits::<4>(&b[0..])?;
    let month = digits::<2>(&b[5..])?;
    let mday = digits::<2>(&b[8..])?;
    let hour = digits::<2>(&b[11..])?;
    let minute = digits::<2>(&b[14..])?;
    let second = digits::<2>(&b[17..])?;
    if year == 0
        || !(1..=12).contains(&month)
        || mday == 0
        || mday > days_in_month(year as i32, month)
        || hour > 23
        || minute > 59
        || second > 59
    {
        return None;
    }
    let day = day_from_civil(year as i32, month, mday);
    let local_secs = i64::from(day) * 86_400
        + i64::from(hour) * 3600
        + i64::from(minute) * 60
        + i64::from(second);
    let sep = b[10];
    if b.len() == 19 {
        return (sep == b' ').then_some(Lexed::Naive { local_secs, day });
    }
    if !matches!(sep, b'T' | b't' | b' ') {
        return None;
    }
    let mut rest = &b[19..];
    let mut micros = 0i64;
    if rest[0] == b'.' {
        let n = rest[1..].iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 {
            return None;
        }
        for i in 0..6 {
            let d = if i < n {
                i64::from(rest[1 + i] - b'0')
            } else {
                0
            };
            micros = micros * 10 + d;
        }
        rest = &rest[1 + n..];
    }
    let offset = match rest {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let oh = digits::<2>(&[*h1, *h2])?;
            let om = digits::<2>(&[*m1, *m2])?;
            if oh > 23 || om > 59 {
                return None;
            }
            let secs = i64::from(oh * 3600 + om * 60);
            if *sign == b'-' {
                -secs
            } else {
                secs
            }
        }
        _ => return None,
    };
    Some(Lexed::Offset {
        local: local_secs * MICROS_PER_SEC + micros,
        day,
        offset,
    })
}

/// The civil datetime of local seconds (as if UTC) in years 1..=9999.
fn civil(local_secs: i64) -> DateTime {
    let day = local_secs.div_euclid(86_400) as Day;
    let secs = local_secs.rem_euclid(86_400);
    let (y, m, d) = rankmysteps_dataflow::event::civil_from_day(day);
    DateTime::new(
        y as i16,
        m as i8,
        d as i8,
        (secs / 3600) as i8,
        (secs / 60 % 60) as i8,
        (secs % 60) as i8,
        0,
    )
    .expect("a valid civil datetime")
}

/// A naive local time in `zone` → UTC µs, RFC 5545 "compatible".
fn naive_to_instant(local_secs: i64, zone: &TimeZone) -> Option<Micros> {
    let ts = match zone.to_ambiguous_timestamp(civil(local_secs)).compatible() {
        Ok(ts) => ts,
        // Beyond jiff's timestamp range (the last or first day of years 9999 / 1 in a zone
        // far from UTC): use the zone's offset at that end of the range, there is no
        // transition there.
        Err(_) => {
            let end = if local_secs > 0 {
                Timestamp::MAX
            } else {
                Timestamp::MIN
            };
            let offset = i64::from(zone.to_offset(end).seconds());
            return Some((local_secs - offset) * MICROS_PER_SEC);
        }
    };
    Some(ts.as_microsecond())
}

/// The offset of local hour `hour` (seconds / 3600 since the epoch, as if UTC) if its first and
/// last second are both unambiguous with the same offset. Time zone transitions are hours
/// apart, so no gap or fold can then lie inside the hour: every second of it maps to
/// `local - offset`.
fn unambiguous_hour(hour: i64, zone: &TimeZone) -> Option<i64> {
    use jiff::tz::AmbiguousOffset;
    let first = hour.checked_mul(3600)?;
    let offset_at = |secs: i64| -> Option<i64> {
        match zone.to_ambiguous_timestamp(civil(secs)).offset() {
            AmbiguousOffset::Unambiguous { offset } => Some(i64::from(offset.seconds())),
            _ => None,
        }
    };
    let a = offset_at(first)?;
    (offset_at(first + 3599)? == a).then_some(a)
}

/// The local times that convert with the same offset as instant `time` (UTC µs) and are
/// more than 26 h from any transition of `zone`.
///
/// A transition at UTC instant `T` from offset `p` to `n` makes the local times in
/// `[T + min(p, n), T + max(p, n))` a gap or a fold, and offsets are within ±26 h. So with
/// `Tp` the last transition at or before `time` and `Tn` the first after it, every local time
/// `L` in `[Tp + 26 h, Tn - 26 h)` is in no gap or fold and `L - offset` lies in `(Tp, Tn)`,
/// where the offset is the one at `time`. Conservative (no caching within about a day of a
/// transition), but exact.
fn safe_range(time: Micros, zone: &TimeZone) -> Option<ZoneRange> {
    const MARGIN: i64 = 26 * 3600;
    let secs = time.div_euclid(MICROS_PER_SEC);
    let ts = Timestamp::from_second(secs).ok()?;
    let after = Timestamp::from_second(secs.checked_add(1)?).ok()?;
    let lo = match zone.preceding(after).next() {
        Some(t) if t.timestamp().as_second() > secs => return None,
        Some(t) => t.timestamp().as_second() + MARGIN,
        None => i64::MIN,
    };
    let hi = match zone.following(ts).next() {
        Some(t) if t.timestamp().as_second() <= secs => return None,
        Some(t) => t.timestamp().as_second() - MARGIN,
        None => i64::MAX,
    };
    Some(ZoneRange {
        lo,
        hi,
        offset: i64::from(zone.to_offset(ts).seconds()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rankmysteps_dataflow::event::format_micros;

    const NOW: Micros = 1_900_000_000 * MICROS_PER_SEC; // 2030-03-17
    const U: &str = "0b6f3c1e-9c2d-4f7a-8e1b-2a3c4d5e6f70";
    const U_VAL: u128 = 0x0b6f3c1e_9c2d_4f7a_8e1b_2a3c4d5e6f70;

    fn parser() -> Parser {
        Parser::new(ParseConfig::default())
    }

    fn parse(line: &str) -> Result<Parsed, ParseError> {
        parser().parse(line.as_bytes(), NOW)
    }

    fn reason(line: &str) -> Reason {
        match parse(line) {
            Ok(p) => panic!("{line} parsed as {p:?}"),
            Err(e) => e.reason,
        }
    }

    fn ok(line: &str) -> Parsed {
        parse(line).unwrap_or_else(|e| panic!("{line}: {e}"))
    }

    fn rec(uuid: &str, ts: &str, steps: &str) -> String {
        format!(r#"{{"uuid":{uuid},"timestamp":{ts},"steps":{steps}}}"#)
    }

    fn ts(text: &str) -> Option<(String, String)> {
        let zone = ParseConfig::default().time_zone;
        parse_timestamp(text, &zone)
            .map(|(t, d)| (format_micros(t), rankmysteps_dataflow::event::format_day(d)))
    }

    fn ts_ok(text: &str, instant: &str, day: &str) {
        assert_eq!(
            ts(text),
            Some((instant.to_owned(), day.to_owned())),
            "timestamp {text}"
        );
    }

    #[test]
    fn typical_lines() {
        let p = ok(&format!(
            r#"{{"uuid":"{U}","timestamp":"2026-11-27 10:20:47","steps":7,"source":"device"}}"#
        ));
        assert_eq!(p.user, U_VAL);
        assert_eq!(p.steps, 7);
        assert_eq!(format_micros(p.time), "2026-11-27T18:20:47.000000Z");
        assert_eq!(p.day, day_from_civil(2026, 11, 27));
        assert_eq!(p.event_id, None);

        let p = ok(&format!(
            r#"{{"uuid":"{U}","timestamp":"2026-11-27T10:20:47-08:00","steps":100000,"event_id":"e-1"}}"#
        ));
        assert_eq!(format_micros(p.time), "2026-11-27T18:20:47.000000Z");
        assert_eq!(p.steps, 100_000);
        assert_eq!(p.event_id.as_deref(), Some("e-1"));
    }

    /// The common shape with more fields that are not ASCII: valid UTF-8 is an event (the
    /// general path reads it), invalid UTF-8 is malformed, a known key among them is read.
    #[test]
    fn common_shape_with_other_fields() {
        let line = |rest: &[u8]| {
            let mut b = format!(r#"{{"uuid":"{U}","timestamp":"2026-11-27 10:20:47","steps":7,"#)
                .into_bytes();
            b.extend_from_slice(rest);
            b
        };
        let parse = |b: &[u8]| parser().parse(b, NOW);
        let p = parse(&line("\"source\":\"caf\u{e9}\"}".as_bytes())).unwrap();
        assert_eq!((p.user, p.steps), (U_VAL, 7));
        assert_eq!(
            parse(&line(b"\"source\":\"caf\xe9\"}")).unwrap_err().reason,
            Reason::Malformed
        );
        let p = parse(&line(br#""source":"a","steps":9}"#)).unwrap();
        assert_eq!(p.steps, 9, "the last duplicate wins");
        let p = parse(&line(br#""event_id":"e-2"}"#)).unwrap();
        assert_eq!(p.event_id.as_deref(), Some("e-2"));
    }

    #[test]
    fn whitespace_and_crlf() {
        let line = format!(" \t{{ \"uuid\" : \"{U}\" , \"timestamp\" : \"2026-11-27T10:20:47Z\" , \"steps\" : 0 }} \r");
        assert_eq!(ok(&line).steps, 0);
        assert_eq!(
            ok(&format!("{}\r", rec("7", r#""2026-11-27T10:20:47Z""#, "1"))).user,
            7
        );
    }

    #[test]
    fn blank_lines() {
        assert!(is_blank(b""));
        assert!(is_blank(b"   \t\r"));
        assert!(is_blank(b"\n"));
        assert!(!is_blank(b" x "));
        assert!(!is_blank(b"{}"));
        assert!(!is_blank("\u{a0}".as_bytes()));
        // A blank line given to the parser anyway is malformed.
        assert_eq!(reason("  "), Reason::Malformed);
        assert_eq!(reason(""), Reason::Malformed);
    }

    #[test]
    fn malformed() {
        let mut p = parser();
        let e = p.parse(b"{\"uuid\":\"\xff\"}", NOW).unwrap_err();
        assert_eq!(e.reason, Reason::Malformed);
        assert!(e.detail.contains("UTF-8"), "{}", e.detail);
        for line in [
            "null",
            "[]",
            "[1,2]",
            "7",
            "\"x\"",
            "true",
            "{",
            "{\"uuid\":}",
            "not json",
            "{\"uuid\":7,}",
            "{\"x\":\"\\q\"}",
            "{\"uuid\":\"\\q\"}",
            "{\"x\":\"\\u12\"}",
            "{\"x\":\"a\u{1}b\"}",
            "{\"x\":\"a\tb\"}",
            "{\"x\":01}",
            "{\"x\":+1}",
            "{\"x\":.5}",
            "{\"x\":NaN}",
            "{} {}",
            "{}x",
            "{'uuid':7}",
        ] {
            assert_eq!(reason(line), Reason::Malformed, "{line}");
        }
        assert_eq!(parse("[]").unwrap_err().detail, "not a JSON object");
        // Malformed wins over everything, even with a JSON syntax error far after bad fields.
        assert_eq!(
            reason(r#"{"uuid":"x","steps":-1,"timestamp":3,}"#),
            Reason::Malformed
        );
        // Skipped values are scanned without recursion: deep nesting is valid and cannot
        // overflow the stack, in unknown fields and in known ones.
        let deep = format!(
            "{{\"uuid\":7,\"timestamp\":\"2026-01-01T00:00:00Z\",\"steps\":1,\"x\":{}{}}}",
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert_eq!(ok(&deep).steps, 1);
        let deep = format!(
            "{{\"uuid\":{}{}}}",
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert_eq!(reason(&deep), Reason::InvalidUuid);
        let deep = format!("{{\"uuid\":{}}}", "[".repeat(100_000));
        assert_eq!(reason(&deep), Reason::Malformed);
    }

    #[test]
    fn reason_order() {
        let good_ts = r#""2026-11-27T10:20:47Z""#;
        let bad_ts = r#""2026-02-29T10:20:47Z""#;
        let future_ts = r#""2031-01-01T00:00:00Z""#;
        let u = format!("\"{U}\"");
        assert_eq!(reason(&rec("\"x\"", bad_ts, "-1")), Reason::InvalidUuid);
        assert_eq!(reason(&rec("\"x\"", good_ts, "2.5")), Reason::InvalidUuid);
        assert_eq!(reason(&rec("\"x\"", future_ts, "1")), Reason::InvalidUuid);
        assert_eq!(reason(&rec(&u, bad_ts, "-1")), Reason::InvalidTimestamp);
        assert_eq!(reason(&rec(&u, bad_ts, "1")), Reason::InvalidTimestamp);
        assert_eq!(reason(&rec(&u, future_ts, "100001")), Reason::InvalidSteps);
        assert_eq!(reason(&rec(&u, future_ts, "1")), Reason::Future);
        assert_eq!(reason("{}"), Reason::InvalidUuid);
        assert_eq!(reason(r#"{"uuid":7}"#), Reason::InvalidTimestamp);
        assert_eq!(
            reason(&format!(r#"{{"uuid":7,"timestamp":{good_ts}}}"#)),
            Reason::InvalidSteps
        );
        assert_eq!(parse("{}").unwrap_err().detail, "missing field `uuid`");
        assert_eq!(
            parse(r#"{"uuid":7}"#).unwrap_err().detail,
            "missing field `timestamp`"
        );
    }

    #[test]
    fn uuid_strings() {
        let t = r#""2026-11-27T10:20:47Z""#;
        assert_eq!(ok(&rec(&format!("\"{U}\""), t, "1")).user, U_VAL);
        assert_eq!(
            ok(&rec(&format!("\"{}\"", U.to_uppercase()), t, "1")).user,
            U_VAL
        );
        // Escapes are decoded: \u0030 is '0'.
        let escaped = format!("\"\\u0030{}\"", &U[1..]);
        assert_eq!(ok(&rec(&escaped, t, "1")).user, U_VAL);
        for bad in [
            "\"\"",
            "\"0b6f3c1e9c2d4f7a8e1b2a3c4d5e6f70\"",
            "\"{0b6f3c1e-9c2d-4f7a-8e1b-2a3c4d5e6f70}\"",
            "\"0b6f3c1e-9c2d-4f7a-8e1b-2a3c4d5e6f7\"",
            "\"0b6f3c1e-9c2d-4f7a-8e1b-2a3c4d5e6f70 \"",
            "\"g b6f3c1e-9c2d-4f7a-8e1b-2a3c4d5e6f7\"",
            "true",
            "false",
            "[]",
            "[\"0b6f3c1e-9c2d-4f7a-8e1b-2a3c4d5e6f70\"]",
            "{}",
        ] {
            assert_eq!(reason(&rec(bad, t, "1")), Reason::InvalidUuid, "{bad}");
        }
        // null is missing.
        assert_eq!(reason(&rec("null", t, "1")), Reason::InvalidUuid);
        // A string that cannot be decoded (lone surrogate) in a known field is malformed, even
        // before a bad uuid; in an unknown field it is skipped.
        assert_eq!(reason(&rec("\"\\ud800\"", t, "1")), Reason::Malformed);
        let line = format!(r#"{{"uuid":"x","timestamp":{t},"steps":1,"event_id":"\udc00"}}"#);
        assert_eq!(reason(&line), Reason::Malformed);
        let line = format!(r#"{{"uuid":7,"timestamp":{t},"steps":1,"x":"\ud800"}}"#);
        assert_eq!(ok(&line).user, 7);
        assert_eq!(
            parse(&rec("null", t, "1")).unwrap_err().detail,
            "missing field `uuid`"
        );
    }

    #[test]
    fn uuid_integers() {
        let t = r#""2026-11-27T10:20:47Z""#;
        assert_eq!(ok(&rec("7", t, "1")).user, 7);
        assert_eq!(ok(&rec("0", t, "1")).user, 0);
        assert_eq!(ok(&rec("-0", t, "1")).user, 0);
        assert_eq!(ok(&rec("18446744073709551616", t, "1")).user, 1 << 64);
        let max = u128::MAX.to_string();
        assert_eq!(max, "340282366920938463463374607431768211455");
        assert_eq!(ok(&rec(&max, t, "1")).user, u128::MAX);
        for bad in [
            "340282366920938463463374607431768211456",
            "3402823669209384634633746074317682114550",
            "99999999999999999999999999999999999999999999999999",
            "-1",
            "-340282366920938463463374607431768211455",
            "7.0",
            "1e3",
            "1E3",
            "0.5",
            "-0.0",
        ] {
            assert_eq!(reason(&rec(bad, t, "1")), Reason::InvalidUuid, "{bad}");
        }
    }

    #[test]
    fn steps() {
        let t = r#""2026-11-27T10:20:47Z""#;
        assert_eq!(ok(&rec("7", t, "0")).steps, 0);
        assert_eq!(ok(&rec("7", t, "-0")).steps, 0);
        assert_eq!(ok(&rec("7", t, "100000")).steps, 100_000);
        assert_eq!(
            parse(&rec("7", t, "100001")).unwrap_err(),
            ParseError::new(Reason::InvalidSteps, "steps 100001 out of range 0..=100000")
        );
        for bad in [
            "100001",
            "-1",
            "4294967296",
            "18446744073709551616",
            "340282366920938463463374607431768211456",
            "2.5",
            "7.0",
            "1e2",
            "-0.0",
            "\"7\"",
            "true",
            "null",
            "[7]",
            "{}",
        ] {
            assert_eq!(reason(&rec("7", t, bad)), Reason::InvalidSteps, "{bad}");
        }
        let mut p = Parser::new(ParseConfig {
            max_steps: 10,
            ..ParseConfig::default()
        });
        assert_eq!(p.config().max_steps, 10);
        assert!(p.parse(rec("7", t, "10").as_bytes(), NOW).is_ok());
        let e = p.parse(rec("7", t, "11").as_bytes(), NOW).unwrap_err();
        assert_eq!(e.detail, "steps 11 out of range 0..=10");
    }

    #[test]
    fn event_ids() {
        let base = r#"{"uuid":7,"timestamp":"2026-11-27T10:20:47Z","steps":1"#;
        let id = |extra: &str| ok(&format!("{base}{extra}}}")).event_id;
        assert_eq!(id(""), None);
        assert_eq!(id(r#","event_id":null"#), None);
        assert_eq!(id(r#","event_id":"abc""#).as_deref(), Some("abc"));
        assert_eq!(id(r#","event_id":"""#).as_deref(), Some(""));
        assert_eq!(
            id(r#","event_id":"a\"b\\c\u00e9\n\ud83d\ude00""#).as_deref(),
            Some("a\"b\\c\u{e9}\n\u{1f600}")
        );
        assert_eq!(id(r#","event_id":"é😀""#).as_deref(), Some("é😀"));
        assert_eq!(id(r#","event_id":42"#).as_deref(), Some("42"));
        assert_eq!(id(r#","event_id":-42"#).as_deref(), Some("-42"));
        assert_eq!(
            id(r#","event_id":123456789012345678901234567890123456789012345"#).as_deref(),
            Some("123456789012345678901234567890123456789012345")
        );
        assert_eq!(id(r#","event_id":4.2"#), None);
        assert_eq!(id(r#","event_id":1e3"#), None);
        assert_eq!(id(r#","event_id":true"#), None);
        assert_eq!(id(r#","event_id":["a"]"#), None);
        assert_eq!(id(r#","event_id":{"a":1}"#), None);
        // Last duplicate wins, also when the last is null.
        assert_eq!(
            id(r#","event_id":"a","event_id":"b""#).as_deref(),
            Some("b")
        );
        assert_eq!(id(r#","event_id":"a","event_id":null"#), None);
    }

    #[test]
    fn duplicates_unknown_fields_and_case() {
        let t = r#""2026-11-27T10:20:47Z""#;
        // Last wins: a bad first value is overridden, a good first value is overridden by a bad one.
        let line = format!(r#"{{"uuid":"x","uuid":5,"timestamp":{t},"steps":-1,"steps":3}}"#);
        let p = ok(&line);
        assert_eq!((p.user, p.steps), (5, 3));
        let line = format!(r#"{{"uuid":5,"timestamp":{t},"steps":3,"uuid":"x"}}"#);
        assert_eq!(reason(&line), Reason::InvalidUuid);
        // Field names are case-sensitive; unknown fields of any type are ignored.
        let line = format!(r#"{{"UUID":5,"timestamp":{t},"steps":3}}"#);
        assert_eq!(reason(&line), Reason::InvalidUuid);
        let line = format!(
            r#"{{"source":{{"a":[1,2,{{"b":null}}]}},"uuid":5,"x":1e400,"timestamp":{t},"steps":3,"Steps":"no","":[]}}"#
        );
        // Grammatically valid JSON numbers beyond f64 in skipped fields are fine (serde_json
        // only scans skipped values).
        assert_eq!(ok(&line).steps, 3);
        let line = format!(
            r#"{{"source":{{"a":[1,2,{{"b":null}}]}},"uuid":5,"x":1e300,"timestamp":{t},"steps":3,"Steps":"no","":[]}}"#
        );
        assert_eq!(ok(&line).steps, 3);
        // Escaped field names are decoded.
        let line = format!(r#"{{"\u0075uid":5,"timestamp":{t},"steps":3}}"#);
        assert_eq!(ok(&line).user, 5);
    }

    #[test]
    fn timestamp_types() {
        for bad in ["null", "1700000000", "true", "[]", "{}", "\"\""] {
            assert_eq!(
                reason(&rec("7", bad, "1")),
                Reason::InvalidTimestamp,
                "{bad}"
            );
        }
        // Escapes are decoded.
        let p = ok(&rec("7", r#""\u0032026-11-27T10:20:47Z""#, "1"));
        assert_eq!(format_micros(p.time), "2026-11-27T10:20:47.000000Z");
    }

    #[test]
    fn rfc3339() {
        ts_ok(
            "2026-11-27T10:20:47Z",
            "2026-11-27T10:20:47.000000Z",
            "2026-11-27",
        );
        ts_ok(
            "2026-11-27t10:20:47z",
            "2026-11-27T10:20:47.000000Z",
            "2026-11-27",
        );
        ts_ok(
            "2026-11-27 10:20:47Z",
            "2026-11-27T10:20:47.000000Z",
            "2026-11-27",
        );
        ts_ok(
            "2026-11-27T10:20:47-08:00",
            "2026-11-27T18:20:47.000000Z",
            "2026-11-27",
        );
        ts_ok(
            "2026-11-27T10:20:47-00:00",
            "2026-11-27T10:20:47.000000Z",
            "2026-11-27",
        );
        ts_ok(
            "2026-11-27T10:20:47+00:00",
            "2026-11-27T10:20:47.000000Z",
            "2026-11-27",
        );
        ts_ok(
            "2026-11-27T01:00:00+14:00",
            "2026-11-26T11:00:00.000000Z",
            "2026-11-27",
        );
        ts_ok(
            "2026-11-27T23:00:00-12:00",
            "2026-11-28T11:00:00.000000Z",
            "2026-11-27",
        );
        ts_ok(
            "2026-11-27T02:00:00+05:45",
            "2026-11-26T20:15:00.000000Z",
            "2026-11-27",
        );
        ts_ok(
            "2026-11-27T00:00:00+23:59",
            "2026-11-26T00:01:00.000000Z",
            "2026-11-27",
        );
        ts_ok(
            "2026-11-27T10:20:47.5Z",
            "2026-11-27T10:20:47.500000Z",
            "2026-11-27",
        );
        ts_ok(
            "2026-11-27T10:20:47.123456Z",
            "2026-11-27T10:20:47.123456Z",
            "2026-11-27",
        );
        ts_ok(
            "2026-11-27T10:20:47.1234569999Z",
            "2026-11-27T10:20:47.123456Z",
            "2026-11-27",
        );
        ts_ok(
            "2026-11-27T10:20:47.000001+01:00",
            "2026-11-27T09:20:47.000001Z",
            "2026-11-27",
        );
        ts_ok(
            "2024-02-29T23:59:59Z",
            "2024-02-29T23:59:59.000000Z",
            "2024-02-29",
        );
        ts_ok(
            "2000-02-29T00:00:00Z",
            "2000-02-29T00:00:00.000000Z",
            "2000-02-29",
        );
        ts_ok(
            "0001-01-01T00:00:00Z",
            "0001-01-01T00:00:00.000000Z",
            "0001-01-01",
        );
        ts_ok(
            "9999-12-31T23:59:59.999999Z",
            "9999-12-31T23:59:59.999999Z",
            "9999-12-31",
        );
        ts_ok(
            "1969-12-31T23:59:59.5Z",
            "1969-12-31T23:59:59.500000Z",
            "1969-12-31",
        );
    }

    #[test]
    fn invalid_timestamps() {
        for bad in [
            "",
            "2026-02-29T10:20:47Z",
            "1900-02-29T10:20:47Z",
            "2026-04-31T10:20:47Z",
            "2026-13-01T10:20:47Z",
            "2026-00-01T10:20:47Z",
            "2026-01-00T10:20:47Z",
            "0000-01-01T00:00:00Z",
            "2026-11-27T24:00:00Z",
            "2026-11-27T23:60:00Z",
            "2026-11-27T23:59:60Z",
            "2026-11-27 24:00:00",
            "2026-02-29 10:20:47",
            "2026-04-31 10:20:47",
            "2026-11-27T10:20:47",
            "2026-11-27t10:20:47",
            "2026-11-27  10:20:47",
            "2026-11-27 10:20",
            "2026-11-27T10:20Z",
            "2026-11-27 10:20:47.5",
            "2026-11-27 10:20:47 ",
            " 2026-11-27 10:20:47",
            "2026-11-27T10:20:47Z ",
            " 2026-11-27T10:20:47Z",
            "2026-11-27T10:20:47.Z",
            "2026-11-27T10:20:47.",
            "2026-11-27T10:20:47.5",
            "2026-11-27T10:20:47ZZ",
            "2026-11-27T10:20:47+0800",
            "2026-11-27T10:20:47+08",
            "2026-11-27T10:20:47+8:00",
            "2026-11-27T10:20:47+08:00:00",
            "2026-11-27T10:20:47+24:00",
            "2026-11-27T10:20:47+08:60",
            "2026-11-27T10:20:47 +08:00",
            "2026-11-27T10:20:47UTC",
            "2026-11-27T10:20:47GMT",
            "2026-11-27X10:20:47Z",
            "2026/11/27T10:20:47Z",
            "26-11-27T10:20:47Z",
            "+2026-11-27T10:20:47Z",
            "20261-11-27T10:20:47Z",
            "2026-1-27T10:20:47Z",
            "2026-11-27T1:20:47Z",
            "2026-11-27T10:20:4Z",
            "2026-11-27T10:2 :47Z",
            "２０２６-11-27T10:20:47Z",
            "2026-11-27T10:20:47.１Z",
            "1700000000",
            "2026-11-27",
        ] {
            assert_eq!(ts(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn naive_in_zone() {
        ts_ok(
            "2026-11-27 10:20:47",
            "2026-11-27T18:20:47.000000Z",
            "2026-11-27",
        );
        ts_ok(
            "2026-07-01 23:30:00",
            "2026-07-02T06:30:00.000000Z",
            "2026-07-01",
        );
        // DST gap: 02:30 does not exist, shifted forward to 03:30 PDT.
        ts_ok(
            "2026-03-08 02:30:00",
            "2026-03-08T10:30:00.000000Z",
            "2026-03-08",
        );
        ts_ok(
            "2026-03-08 02:00:00",
            "2026-03-08T10:00:00.000000Z",
            "2026-03-08",
        );
        ts_ok(
            "2026-03-08 01:59:59",
            "2026-03-08T09:59:59.000000Z",
            "2026-03-08",
        );
        ts_ok(
            "2026-03-08 03:00:00",
            "2026-03-08T10:00:00.000000Z",
            "2026-03-08",
        );
        // DST overlap: 01:30 happens twice, the earlier (PDT) instant.
        ts_ok(
            "2026-11-01 01:30:00",
            "2026-11-01T08:30:00.000000Z",
            "2026-11-01",
        );
        ts_ok(
            "2026-11-01 00:59:59",
            "2026-11-01T07:59:59.000000Z",
            "2026-11-01",
        );
        ts_ok(
            "2026-11-01 02:00:00",
            "2026-11-01T10:00:00.000000Z",
            "2026-11-01",
        );
        // Far dates: the LMT of 1883 and the ends of the range.
        ts_ok(
            "1800-01-01 00:00:00",
            "1800-01-01T07:52:58.000000Z",
            "1800-01-01",
        );
        ts_ok(
            "0001-01-01 00:00:00",
            "0001-01-01T07:52:58.000000Z",
            "0001-01-01",
        );
        ts_ok(
            "9999-12-31 23:59:59",
            "10000-01-01T07:59:59.000000Z",
            "9999-12-31",
        );
        // Other zones.
        let utc = TimeZone::UTC;
        assert_eq!(
            parse_timestamp("2026-11-27 10:20:47", &utc),
            Some((
                (i64::from(day_from_civil(2026, 11, 27)) * 86_400 + 37_247) * MICROS_PER_SEC,
                day_from_civil(2026, 11, 27)
            ))
        );
        let kolkata = TimeZone::get("Asia/Kolkata").unwrap();
        let (t, d) = parse_timestamp("2026-11-27 00:10:00", &kolkata).unwrap();
        assert_eq!(format_micros(t), "2026-11-26T18:40:00.000000Z");
        assert_eq!(d, day_from_civil(2026, 11, 27));
    }

    /// The parser's cached conversion agrees with jiff for every half hour over several years
    /// in several zones, in both orders of first use.
    #[test]
    fn zone_cache_matches_jiff() {
        for name in [
            "America/Los_Angeles",
            "Europe/London",
            "Australia/Lord_Howe",
            "Pacific/Apia",
            "America/Sao_Paulo",
            "Asia/Kathmandu",
        ] {
            let zone = TimeZone::get(name).unwrap();
            let mut parser = Parser::new(ParseConfig {
                time_zone: zone.clone(),
                ..ParseConfig::default()
            });
            let spans = [
                ((2010, 1, 1), (2013, 1, 1), 1800),
                ((2035, 1, 1), (2045, 1, 1), 3 * 3600 + 7 * 60 + 1),
                ((1880, 1, 1), (1950, 1, 1), 5 * 3600 + 11 * 60 + 1),
            ];
            for (pass, ((y0, m0, d0), (y1, m1, d1), step)) in
                (0..2).flat_map(|p| spans.map(|s| (p, s)))
            {
                let start = i64::from(day_from_civil(y0, m0, d0)) * 86_400;
                let end = i64::from(day_from_civil(y1, m1, d1)) * 86_400;
                let mut local = start + pass * 1234;
                while local < end {
                    let text = format!("{}", civil(local)).replace('T', " ");
                    let expected = zone
                        .to_ambiguous_timestamp(civil(local))
                        .compatible()
                        .unwrap()
                        .as_microsecond();
                    let got = parser.timestamp(&text).unwrap();
                    assert_eq!(got.0, expected, "{name} {text}");
                    assert_eq!(parse_timestamp(&text, &zone).unwrap(), got);
                    local += step + pass * 7;
                }
            }
        }
    }

    #[test]
    fn future() {
        let mut p = parser();
        let now = (i64::from(day_from_civil(2026, 11, 27)) * 86_400 + 36_000) * MICROS_PER_SEC;
        let line = |t: &str| rec("7", &format!("\"{t}\""), "1");
        // now = 10:00:00Z; limit = 11:00:00Z exactly.
        assert!(p
            .parse(line("2026-11-27T11:00:00Z").as_bytes(), now)
            .is_ok());
        let e = p
            .parse(line("2026-11-27T11:00:00.000001Z").as_bytes(), now)
            .unwrap_err();
        assert_eq!(e.reason, Reason::Future);
        assert!(p
            .parse(line("2026-11-27T12:00:00+01:00").as_bytes(), now)
            .is_ok());
        assert!(p
            .parse(line("2026-11-27T12:00:01+01:00").as_bytes(), now)
            .is_err());
        // 03:00 PST = 11:00Z.
        assert!(p.parse(line("2026-11-27 03:00:00").as_bytes(), now).is_ok());
        assert!(p
            .parse(line("2026-11-27 03:00:01").as_bytes(), now)
            .is_err());
        // Past events are fine, however old.
        assert!(p
            .parse(line("0001-01-01T00:00:00Z").as_bytes(), now)
            .is_ok());
        // No overflow with extreme clocks.
        assert!(p
            .parse(line("2026-11-27T11:00:00Z").as_bytes(), Micros::MAX)
            .is_ok());
        assert_eq!(
            p.parse(line("2026-11-27T11:00:00Z").as_bytes(), Micros::MIN)
                .unwrap_err()
                .reason,
            Reason::Future
        );
    }
}
