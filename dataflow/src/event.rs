//! The event model shared by sources, the dataflow and sinks (design §1-2).
//!
//! Times are UTC microseconds since the Unix epoch (`Micros`); days are civil dates
//! counted in days since 1970-01-01 (`Day`), always the date part of the event's own
//! local time (the offset it was written with, or `default_time_zone`).

use serde::{Deserialize, Serialize};

/// A user's day: days since 1970-01-01 of the civil date in the user's local time.
pub type Day = i32;
/// A user: the 128-bit value of their UUID.
pub type User = u128;
/// A dataflow timestamp: an epoch of ingestion (design §2), not event time.
pub type Epoch = u64;
/// An instant: microseconds since 1970-01-01T00:00:00Z.
pub type Micros = i64;

/// Microseconds in one second.
pub const MICROS_PER_SEC: Micros = 1_000_000;
/// Microseconds in one day.
pub const MICROS_PER_DAY: Micros = 86_400 * MICROS_PER_SEC;

/// One accepted-looking event, after parsing and the `future` check, on its way to admission.
///
/// Whether it is late or a duplicate is decided by the dataflow's `admit` operator, which alone
/// knows the watermark and the events seen before.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Event {
    /// Position in input order within the input (line index of a file, or
    /// `partition << 48 | offset` for Kafka): the tie-break for "first in input order".
    pub pos: u64,
    /// The user.
    pub user: User,
    /// The user's day (date part of the local time).
    pub day: Day,
    /// When the steps were taken, UTC.
    pub time: Micros,
    /// Steps since the device's last report, `0..=max_steps_per_event`.
    pub steps: u32,
    /// What few events carry (an `event_id`, a recorded ingestion time, the raw record), behind
    /// one pointer: an event is 48 bytes instead of 96, and every event is copied through the
    /// exchange to its user's worker. `None` when it carries none of them.
    pub extra: Option<Box<EventExtra>>,
}

/// The rarer parts of an [`Event`].
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EventExtra {
    /// The device's id for this report, if any.
    pub event_id: Option<Box<str>>,
    /// The ingestion time recorded for this record by the run that first consumed it (a replay
    /// of the archive cut into epochs of its own), UTC microseconds; `None`: the start of its
    /// epoch, `epoch × epoch_length` (design §1: the de-duplication window's clock).
    pub ingested: Option<Micros>,
    /// The raw record, kept only when the event could still be rejected as `late`
    /// (its day may already be closed); `None` otherwise to keep the hot path cheap.
    pub raw: Option<Box<[u8]>>,
}

impl EventExtra {
    /// The extra parts of an event, boxed; `None` when there are none.
    #[inline]
    pub fn new(
        event_id: Option<Box<str>>,
        ingested: Option<Micros>,
        raw: Option<Box<[u8]>>,
    ) -> Option<Box<EventExtra>> {
        (event_id.is_some() || ingested.is_some() || raw.is_some()).then(|| {
            Box::new(EventExtra {
                event_id,
                ingested,
                raw,
            })
        })
    }
}

impl Event {
    /// The device's id for this report, if any.
    #[inline]
    pub fn event_id(&self) -> Option<&str> {
        self.extra.as_ref().and_then(|x| x.event_id.as_deref())
    }

    /// The recorded ingestion time, if any (see [`EventExtra::ingested`]).
    #[inline]
    pub fn ingested(&self) -> Option<Micros> {
        self.extra.as_ref().and_then(|x| x.ingested)
    }

    /// Takes the raw record, if it was kept (see [`EventExtra::raw`]).
    #[inline]
    pub fn take_raw(&mut self) -> Option<Box<[u8]>> {
        self.extra.as_mut().and_then(|x| x.raw.take())
    }
}

/// Why an event was rejected, in the order the checks apply (design §1): the first that applies wins.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Reason {
    /// Not UTF-8, not JSON, or not a JSON object.
    Malformed,
    /// `uuid` missing, not a string or non-negative integer, or not an RFC 4122 UUID.
    InvalidUuid,
    /// `timestamp` missing, not a string, unparsable, or an impossible date or time.
    InvalidTimestamp,
    /// `steps` missing, not an integer, or out of `0..=max_steps_per_event`.
    InvalidSteps,
    /// More than `max_clock_skew` ahead of the wall clock at ingestion.
    Future,
    /// The event's day had closed after an earlier epoch.
    Late,
}

impl Reason {
    /// Every reason, in check order.
    pub const ALL: [Reason; 6] = [
        Reason::Malformed,
        Reason::InvalidUuid,
        Reason::InvalidTimestamp,
        Reason::InvalidSteps,
        Reason::Future,
        Reason::Late,
    ];

    /// The reason code written to dead-letter outputs and metrics.
    pub fn code(self) -> &'static str {
        match self {
            Reason::Malformed => "malformed",
            Reason::InvalidUuid => "invalid_uuid",
            Reason::InvalidTimestamp => "invalid_timestamp",
            Reason::InvalidSteps => "invalid_steps",
            Reason::Future => "future",
            Reason::Late => "late",
        }
    }

    /// Index of this reason in [`Reason::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// The reason with this code, if any.
    pub fn from_code(code: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.code() == code)
    }
}

/// A rejected record, kept for inspection (dead-letter).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Rejection {
    /// Position in input order (as [`Event::pos`]).
    pub pos: u64,
    /// Why it was rejected.
    pub reason: Reason,
    /// A short human-readable explanation.
    pub detail: String,
    /// The original bytes of the record.
    pub raw: Vec<u8>,
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
pub fn day_from_civil(year: i32, month: u32, day: u32) -> Day {
    let y = if month <= 2 { year - 1 } else { year };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let m = month as i32;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day as i32 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The proleptic Gregorian date `(year, month, day)` of a [`Day`] (H. Hinnant's `civil_from_days`).
pub fn civil_from_day(z: Day) -> (i32, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// `YYYY-MM-DD` of a day.
pub fn format_day(day: Day) -> String {
    let (y, m, d) = civil_from_day(day);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Parses `YYYY-MM-DD` (a real calendar date) into a day.
pub fn parse_day(text: &str) -> Option<Day> {
    let b = text.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let num = |s: &[u8]| -> Option<u32> {
        s.iter().try_fold(0u32, |acc, &c| {
            c.is_ascii_digit().then(|| acc * 10 + u32::from(c - b'0'))
        })
    };
    let (y, m, d) = (num(&b[0..4])?, num(&b[5..7])?, num(&b[8..10])?);
    if !(1..=12).contains(&m) || d == 0 || d > days_in_month(y as i32, m) {
        return None;
    }
    Some(day_from_civil(y as i32, m, d))
}

/// Days in a month of the proleptic Gregorian calendar.
pub fn days_in_month(year: i32, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        _ => 0,
    }
}

/// The instant day `day` closes, given the grace period (design §2):
/// `(day + 1) at 12:00 UTC` (the end of `day` in UTC−12, the last time zone) `+ grace`.
pub fn close_of_day(day: Day, grace: Micros) -> Micros {
    (day as Micros + 1) * MICROS_PER_DAY + 12 * 3600 * MICROS_PER_SEC + grace
}

/// Whether `day` is closed once the watermark is `watermark` (`None`: no accepted event yet).
pub fn is_closed(day: Day, watermark: Option<Micros>, grace: Micros) -> bool {
    watermark.is_some_and(|w| w >= close_of_day(day, grace))
}

/// Formats an instant as RFC 3339 UTC with microseconds, e.g. `2026-11-27T10:20:47.000000Z`.
pub fn format_micros(t: Micros) -> String {
    let day = t.div_euclid(MICROS_PER_DAY) as Day;
    let rem = t.rem_euclid(MICROS_PER_DAY);
    let (h, mi, s, us) = (
        rem / 3_600_000_000,
        rem / 60_000_000 % 60,
        rem / 1_000_000 % 60,
        rem % 1_000_000,
    );
    format!("{}T{h:02}:{mi:02}:{s:02}.{us:06}Z", format_day(day))
}

/// The lowercase hyphenated text of a user's UUID.
pub fn format_user(user: User) -> String {
    user_text(user).iter().map(|&b| char::from(b)).collect()
}

/// The lowercase hyphenated text of a user's UUID as 36 bytes, without allocating (the
/// generator writes one per event, the local sink one per row of a million-row totals.csv):
/// eight hex digits at a time ([`hex8`]), no per-digit branch or bounds check.
#[inline]
pub fn user_text(user: User) -> [u8; 36] {
    let mut text = [b'-'; 36];
    let (hi, lo) = ((user >> 64) as u64, user as u64);
    text[0..8].copy_from_slice(&hex8((hi >> 32) as u32));
    let mid = hex8(hi as u32);
    text[9..13].copy_from_slice(&mid[..4]);
    text[14..18].copy_from_slice(&mid[4..]);
    let low = hex8((lo >> 32) as u32);
    text[19..23].copy_from_slice(&low[..4]);
    text[24..28].copy_from_slice(&low[4..]);
    text[28..36].copy_from_slice(&hex8(lo as u32));
    text
}

/// The eight lowercase hex digits of `x`, most significant first, computed in one word: the
/// nibbles are spread one per byte, then each byte gets `'0'` added, and `'a' - '0' - 10`
/// more where the nibble is 10 or above (`nibble + 6` carries into bit 4 exactly then).
#[inline]
fn hex8(x: u32) -> [u8; 8] {
    let mut v = u64::from(x);
    v = (v | v << 16) & 0x0000_FFFF_0000_FFFF;
    v = (v | v << 8) & 0x00FF_00FF_00FF_00FF;
    v = (v | v << 4) & 0x0F0F_0F0F_0F0F_0F0F;
    let letters = ((v + 0x0606_0606_0606_0606) >> 4) & 0x0101_0101_0101_0101;
    (v + 0x3030_3030_3030_3030 + letters * u64::from(b'a' - b'0' - 10)).to_be_bytes()
}

/// Hex digit values, 0xFF for non-digits.
const HEX_VALUE: [u8; 256] = {
    let mut t = [0xFF; 256];
    let mut i = 0;
    while i < 10 {
        t[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        t[b'a' as usize + i] = 10 + i as u8;
        t[b'A' as usize + i] = 10 + i as u8;
        i += 1;
    }
    t
};

/// Parses an RFC 4122 UUID string: the hyphenated `8-4-4-4-12` hex form, any case.
pub fn parse_user(text: &str) -> Option<User> {
    parse_user_bytes(text.as_bytes())
}

/// [`parse_user`] on bytes (accepted bytes are ASCII hex digits and hyphens only).
#[inline]
pub fn parse_user_bytes(b: &[u8]) -> Option<User> {
    if b.len() != 36 || b[8] != b'-' || b[13] != b'-' || b[18] != b'-' || b[23] != b'-' {
        return None;
    }
    let mut value: u128 = 0;
    let mut bad = 0u8;
    for group in [&b[0..8], &b[9..13], &b[14..18], &b[19..23], &b[24..36]] {
        for &c in group {
            let d = HEX_VALUE[c as usize];
            bad |= d;
            value = value << 4 | u128::from(d & 15);
        }
    }
    // Any non-digit has the high bit set.
    (bad & 0x80 == 0).then_some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A user's text is its 32 lowercase hex digits cut 8-4-4-4-12, on edge values (every
    /// digit, every nibble at 9 and 10, where letters start) and on random ones.
    #[test]
    fn user_text_is_the_hyphenated_hex() {
        let reference = |user: User| {
            let h = format!("{user:032x}");
            format!(
                "{}-{}-{}-{}-{}",
                &h[0..8],
                &h[8..12],
                &h[12..16],
                &h[16..20],
                &h[20..32]
            )
        };
        let mut rng = crate::random::SplitMix64(5);
        let edges = [
            0,
            1,
            u128::MAX,
            0x0123_4567_89ab_cdef_fedc_ba98_7654_3210,
            0x9999_9999_9999_9999_9999_9999_9999_9999,
            0xaaaa_aaaa_aaaa_aaaa_aaaa_aaaa_aaaa_aaaa,
        ];
        let random =
            (0..10_000).map(|_| (u128::from(rng.next_u64()) << 64) | u128::from(rng.next_u64()));
        for user in edges.into_iter().chain(random) {
            assert_eq!(format_user(user), reference(user));
            assert_eq!(&user_text(user)[..], reference(user).as_bytes());
        }
    }

    /// An event without extras is 48 bytes and allocates nothing; the extras read back.
    #[test]
    fn extras_live_behind_one_pointer() {
        assert_eq!(std::mem::size_of::<Event>(), 48);
        assert!(EventExtra::new(None, None, None).is_none());
        let mut e = Event {
            pos: 1,
            user: 2,
            day: 3,
            time: 4,
            steps: 5,
            extra: EventExtra::new(Some("id".into()), Some(7), Some(b"raw".to_vec().into())),
        };
        assert_eq!((e.event_id(), e.ingested()), (Some("id"), Some(7)));
        assert_eq!(e.take_raw().as_deref(), Some(&b"raw"[..]));
        assert_eq!(e.take_raw(), None);
        e.extra = EventExtra::new(None, Some(9), None);
        assert_eq!((e.event_id(), e.ingested()), (None, Some(9)));
    }

    #[test]
    fn civil_round_trip() {
        for day in -800_000..800_000 {
            let (y, m, d) = civil_from_day(day);
            assert_eq!(day_from_civil(y, m, d), day);
        }
        assert_eq!(day_from_civil(1970, 1, 1), 0);
        assert_eq!(format_day(day_from_civil(2026, 11, 27)), "2026-11-27");
        assert_eq!(parse_day("2024-02-29"), Some(day_from_civil(2024, 2, 29)));
        assert_eq!(parse_day("2026-02-29"), None);
        assert_eq!(parse_day("2026-13-01"), None);
    }

    #[test]
    fn closing() {
        let d = day_from_civil(2026, 11, 27);
        let close = close_of_day(d, 24 * 3600 * MICROS_PER_SEC);
        assert_eq!(format_micros(close), "2026-11-29T12:00:00.000000Z");
        assert!(!is_closed(d, Some(close - 1), 24 * 3600 * MICROS_PER_SEC));
        assert!(is_closed(d, Some(close), 24 * 3600 * MICROS_PER_SEC));
        assert!(!is_closed(d, None, 0));
    }

    #[test]
    fn users() {
        let u = parse_user("00000000-0000-0000-0000-000000000007").unwrap();
        assert_eq!(u, 7);
        assert_eq!(format_user(7), "00000000-0000-0000-0000-000000000007");
        let v = parse_user("A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11").unwrap();
        assert_eq!(format_user(v), "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11");
        assert_eq!(parse_user("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1"), None);
        assert_eq!(parse_user("g0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"), None);
        assert_eq!(parse_user("a0eebc999c0b4ef8bb6d6bb9bd380a11"), None);
        assert_eq!(parse_user("{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}"), None);
        assert_eq!(parse_user("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1g"), None);
        assert_eq!(
            u128::from_str_radix("a0eebc999c0b4ef8bb6d6bb9bd380a11", 16).ok(),
            Some(v)
        );
        // Both halves, every digit position: seeded values round-trip.
        let mut rng = crate::random::SplitMix64(7);
        for _ in 0..10_000 {
            let x = u128::from(rng.next_u64()) << 64 | u128::from(rng.next_u64());
            assert_eq!(parse_user(&format_user(x)), Some(x));
        }
    }
}
