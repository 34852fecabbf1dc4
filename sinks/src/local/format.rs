//! The files of the local output directory: names, serde types and low-level writing helpers.

use std::fs::{self, File};
use std::io::{self, BufWriter};
use std::path::{Path, PathBuf};

use rankmysteps_dataflow::event::{
    format_day, format_user, user_text, Day, Epoch, Micros, Reason, Rejection, User,
};
use rankmysteps_dataflow::output::{Position, Stats};
use rankmysteps_dataflow::ranking::TopRow;
use serde::{Deserialize, Serialize};

use crate::SinkError;

/// The directory under `OUT` holding one directory per day.
pub const DAYS_DIR: &str = "days";
/// A day's top-k, in its day directory.
pub const TOP_FILE: &str = "top.json";
/// A day's totals, in its day directory.
pub const TOTALS_FILE: &str = "totals.csv";
/// The dead-letter file, in `OUT`.
pub const REJECTED_FILE: &str = "rejected.jsonl";
/// The progress record, in `OUT`.
pub const PROGRESS_FILE: &str = "progress.json";
/// The header line of `totals.csv` (without the newline).
pub const TOTALS_HEADER: &str = "user,steps";

/// `OUT/days/YYYY-MM-DD`: the directory of one day's files.
pub fn day_dir(out: &Path, day: Day) -> PathBuf {
    out.join(DAYS_DIR).join(format_day(day))
}

/// `top.json`: a day's top-k in listing order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopFile {
    /// The day, `YYYY-MM-DD`.
    pub day: String,
    /// Whether the day has closed: these results will never change again.
    #[serde(rename = "final")]
    pub is_final: bool,
    /// The number of ranked users of the day (may exceed `top.len()`).
    pub users: u64,
    /// The first users in listing order (total descending, then UUID ascending).
    pub top: Vec<TopEntry>,
}

/// One row of a [`TopFile`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopEntry {
    /// Competition rank: 1 + the number of users with a strictly greater total.
    pub rank: u64,
    /// The user's UUID, lowercase hyphenated.
    pub user: String,
    /// The user's total steps that day.
    pub steps: u64,
}

impl From<&TopRow> for TopEntry {
    fn from(row: &TopRow) -> TopEntry {
        TopEntry {
            rank: u64::from(row.rank),
            user: format_user(row.user),
            steps: row.steps,
        }
    }
}

/// One line of `rejected.jsonl`: a rejected event with why, where and when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectedRecord {
    /// The reason code (`malformed`, `invalid_uuid`, …, see [`Reason::code`]).
    pub reason: String,
    /// The original record as text (lossy UTF-8 conversion when it was not valid UTF-8).
    pub raw: String,
    /// The exact original bytes in lowercase hex, present only when `raw` is not valid UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_hex: Option<String>,
    /// A short human-readable explanation.
    pub detail: String,
    /// Position in input order (line index of a file, or `partition << 48 | offset`).
    pub pos: u64,
    /// The epoch the record was read in.
    pub epoch: Epoch,
}

impl RejectedRecord {
    /// The record of `rejection`, rejected in `epoch`.
    pub fn new(rejection: &Rejection, epoch: Epoch) -> RejectedRecord {
        let (raw, raw_hex) = match std::str::from_utf8(&rejection.raw) {
            Ok(text) => (text.to_owned(), None),
            Err(_) => (
                String::from_utf8_lossy(&rejection.raw).into_owned(),
                Some(to_hex(&rejection.raw)),
            ),
        };
        RejectedRecord {
            reason: rejection.reason.code().to_owned(),
            raw,
            raw_hex,
            detail: rejection.detail.clone(),
            pos: rejection.pos,
            epoch,
        }
    }

    /// The exact original bytes: `raw_hex` decoded when present, else `raw`.
    /// `None` when `raw_hex` is not valid hex.
    pub fn raw_bytes(&self) -> Option<Vec<u8>> {
        match &self.raw_hex {
            Some(hex) => from_hex(hex),
            None => Some(self.raw.as_bytes().to_vec()),
        }
    }

    /// The reason, if the code is known.
    pub fn reason(&self) -> Option<Reason> {
        Reason::from_code(&self.reason)
    }
}

/// `progress.json`: the last completed epoch the directory reflects.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// The last completed epoch written.
    pub epoch: Epoch,
    /// The watermark after that epoch, RFC 3339 UTC; `null` before any accepted event.
    pub watermark: Option<String>,
    /// The same watermark in microseconds since the Unix epoch.
    pub watermark_micros: Option<Micros>,
    /// For every partition read, the next position to read, by partition.
    pub positions: Vec<Position>,
    /// Counters, cumulative over the run.
    pub stats: StatsFile,
}

/// The counters of [`Progress`], with rejections by reason code.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsFile {
    /// Events accepted.
    pub accepted: u64,
    /// Events skipped as duplicates.
    pub duplicate: u64,
    /// Rejected events by reason.
    pub rejected: RejectedCounts,
}

/// Rejections by reason; the field names are the reason codes, in check order.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectedCounts {
    /// Not UTF-8, not JSON, or not a JSON object.
    pub malformed: u64,
    /// Missing or invalid `uuid`.
    pub invalid_uuid: u64,
    /// Missing or invalid `timestamp`.
    pub invalid_timestamp: u64,
    /// Missing or invalid `steps`.
    pub invalid_steps: u64,
    /// Too far ahead of the wall clock.
    pub future: u64,
    /// For a day already closed.
    pub late: u64,
}

impl From<&Stats> for StatsFile {
    fn from(stats: &Stats) -> StatsFile {
        let r = |reason| stats.rejected(reason);
        StatsFile {
            accepted: stats.accepted,
            duplicate: stats.duplicate,
            rejected: RejectedCounts {
                malformed: r(Reason::Malformed),
                invalid_uuid: r(Reason::InvalidUuid),
                invalid_timestamp: r(Reason::InvalidTimestamp),
                invalid_steps: r(Reason::InvalidSteps),
                future: r(Reason::Future),
                late: r(Reason::Late),
            },
        }
    }
}

impl From<&StatsFile> for Stats {
    fn from(file: &StatsFile) -> Stats {
        let c = &file.rejected;
        // Indexed by `Reason::index`, i.e. in `Reason::ALL` order.
        Stats {
            accepted: file.accepted,
            duplicate: file.duplicate,
            rejected: [
                c.malformed,
                c.invalid_uuid,
                c.invalid_timestamp,
                c.invalid_steps,
                c.future,
                c.late,
            ],
        }
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Lowercase hex of `bytes`.
pub(crate) fn to_hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(HEX[usize::from(b >> 4)] as char);
        s.push(HEX[usize::from(b & 15)] as char);
    }
    s
}

/// Decodes hex (any case); `None` if malformed.
pub(crate) fn from_hex(text: &str) -> Option<Vec<u8>> {
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let b = text.as_bytes();
    if !b.len().is_multiple_of(2) {
        return None;
    }
    b.chunks_exact(2)
        .map(|p| Some(digit(p[0])? << 4 | digit(p[1])?))
        .collect()
}

/// Appends the lowercase hyphenated UUID of `user` (same text as [`format_user`], without
/// allocating: totals.csv may have a million rows, rewritten as the day grows).
#[inline]
pub(crate) fn push_user(buf: &mut Vec<u8>, user: User) {
    buf.extend_from_slice(&user_text(user));
}

/// Appends the decimal text of `n`.
#[inline]
pub(crate) fn push_u64(buf: &mut Vec<u8>, n: u64) {
    buf.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// The temporary file `path` is written to before being renamed over it: same directory (so the
/// rename is atomic), hidden, and ending in `.tmp` so readers and listings skip it.
pub(crate) fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp"))
}

/// Replaces `path` atomically with what `fill` writes: a reader sees the old file or the new
/// one, never a mix. With `sync`, the data is on disk before the rename (the rename itself is
/// durable once the directory is synced, see [`sync_dir`]).
pub(crate) fn write_atomic(
    path: &Path,
    sync: bool,
    fill: impl FnOnce(&mut BufWriter<File>) -> io::Result<()>,
) -> Result<(), SinkError> {
    let tmp = temp_path(path);
    let result = (|| {
        let mut writer = BufWriter::with_capacity(1 << 18, File::create(&tmp)?);
        fill(&mut writer)?;
        let file = writer.into_inner().map_err(|e| e.into_error())?;
        if sync {
            file.sync_all()?;
        }
        drop(file);
        fs::rename(&tmp, path)
    })();
    result.map_err(|e| {
        // Best effort: a leftover temp file is harmless (hidden, and removed with `days/`) but
        // untidy.
        let _ = fs::remove_file(&tmp);
        SinkError::io(path, e)
    })
}

/// Flushes a file's data to disk.
pub(crate) fn sync_file(path: &Path) -> Result<(), SinkError> {
    File::options()
        .write(true)
        .open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| SinkError::io(path, e))
}

/// Makes the entries of a directory (created files, renames) durable. A no-op where directories
/// cannot be opened for syncing (not Unix).
pub(crate) fn sync_dir(path: &Path) -> Result<(), SinkError> {
    if cfg!(unix) {
        File::open(path)
            .and_then(|f| f.sync_all())
            .map_err(|e| SinkError::io(path, e))
    } else {
        Ok(())
    }
}
