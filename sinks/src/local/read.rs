//! Readers of the local output directory, behind `rankmysteps top --out DIR --day D [--k K]` and
//! `rankmysteps standing --out DIR --day D --user U`.
//!
//! They read whatever the directory holds now; files are replaced atomically, so each file read is
//! whole, but a live run may replace one file of a day between two reads.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use rankmysteps_dataflow::event::{format_day, parse_day, parse_user, Day, User};
use rankmysteps_dataflow::ranking::{rank_prefix, sort_listing, standing, Standing};

use super::format::{
    day_dir, Progress, RejectedRecord, TopEntry, TopFile, DAYS_DIR, PROGRESS_FILE, REJECTED_FILE,
    TOP_FILE, TOTALS_FILE, TOTALS_HEADER,
};
use crate::SinkError;

/// Reads a whole file, with a [`SinkError::NotFound`] naming `what` when it does not exist (and
/// saying so when the output directory itself is missing).
fn read(out: &Path, path: &Path, what: impl FnOnce() -> String) -> Result<Vec<u8>, SinkError> {
    match fs::read(path) {
        Ok(bytes) => Ok(bytes),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(SinkError::NotFound {
            what: if out.is_dir() {
                format!("{} ({})", what(), path.display())
            } else {
                format!("output directory {}", out.display())
            },
        }),
        Err(e) => Err(SinkError::io(path, e)),
    }
}

fn day_file(out: &Path, day: Day, name: &str) -> PathBuf {
    day_dir(out, day).join(name)
}

fn no_output(day: Day) -> impl FnOnce() -> String {
    move || format!("output for day {}", format_day(day))
}

/// Reads `top.json` of `day` as written.
pub fn read_top_file(dir: &Path, day: Day) -> Result<TopFile, SinkError> {
    let path = day_file(dir, day, TOP_FILE);
    let bytes = read(dir, &path, no_output(day))?;
    serde_json::from_slice(&bytes).map_err(|e| SinkError::corrupt(&path, e.to_string()))
}

/// The first `k` rows (all stored rows with `None`) of `day`'s top-k.
///
/// When `k` exceeds the rows stored in `top.json` and the day has more users than that, the rows
/// are computed from `totals.csv` instead (listing order and competition ranks of
/// [`rankmysteps_dataflow::ranking`]); `users` then counts the rows of that `totals.csv`.
pub fn read_top(dir: &Path, day: Day, k: Option<usize>) -> Result<TopFile, SinkError> {
    let mut file = read_top_file(dir, day)?;
    let Some(k) = k else { return Ok(file) };
    if k <= file.top.len() || file.users <= file.top.len() as u64 {
        file.top.truncate(k);
        return Ok(file);
    }
    let mut listing = read_totals(dir, day)?;
    file.users = listing.len() as u64;
    sort_listing(&mut listing);
    file.top = rank_prefix(listing, k).iter().map(TopEntry::from).collect();
    Ok(file)
}

/// `user`'s standing on `day` with up to `neighbours` users on each side, computed from
/// `totals.csv`, and whether the day is final. `Ok(None)` when the user has no total that day.
pub fn read_standing(
    dir: &Path,
    day: Day,
    user: User,
    neighbours: usize,
) -> Result<Option<(Standing, bool)>, SinkError> {
    let mut listing = read_totals(dir, day)?;
    sort_listing(&mut listing);
    let Some(standing) = standing(&listing, user, neighbours) else {
        return Ok(None);
    };
    // top.json is replaced after totals.csv, so a final top.json vouches for the totals read; a
    // missing one (a day still being written for the first time) means not final.
    let is_final = match read_top_file(dir, day) {
        Ok(top) => top.is_final,
        Err(SinkError::NotFound { .. }) => false,
        Err(e) => return Err(e),
    };
    Ok(Some((standing, is_final)))
}

/// Every `(user, total)` of `day` from `totals.csv`, sorted by user.
pub fn read_totals(dir: &Path, day: Day) -> Result<Vec<(User, u64)>, SinkError> {
    let path = day_file(dir, day, TOTALS_FILE);
    let bytes = read(dir, &path, no_output(day))?;
    let text = std::str::from_utf8(&bytes).map_err(|e| SinkError::corrupt(&path, e.to_string()))?;
    let mut lines = text.lines();
    if lines.next() != Some(TOTALS_HEADER) {
        return Err(SinkError::corrupt(
            &path,
            format!("line 1: header is not `{TOTALS_HEADER}`"),
        ));
    }
    let mut totals: Vec<(User, u64)> = Vec::with_capacity(bytes.len() / 45);
    for (i, line) in lines.enumerate() {
        let bad =
            |what: &str| SinkError::corrupt(&path, format!("line {}: {what}: {line:?}", i + 2));
        let (user, steps) = line
            .split_once(',')
            .ok_or_else(|| bad("not `user,steps`"))?;
        let user = parse_user(user).ok_or_else(|| bad("invalid user"))?;
        let steps: u64 = steps.parse().map_err(|_| bad("invalid steps"))?;
        // Sorted and distinct is part of the format; checking it costs nothing here.
        if totals.last().is_some_and(|&(prev, _)| prev >= user) {
            return Err(bad("users not sorted and distinct"));
        }
        totals.push((user, steps));
    }
    Ok(totals)
}

/// `progress.json`: the last completed epoch the directory reflects. [`SinkError::NotFound`] when
/// the run has not completed (written) an epoch yet.
pub fn read_progress(dir: &Path) -> Result<Progress, SinkError> {
    let path = dir.join(PROGRESS_FILE);
    let bytes = read(dir, &path, || "progress record".to_owned())?;
    serde_json::from_slice(&bytes).map_err(|e| SinkError::corrupt(&path, e.to_string()))
}

/// The days with output, ascending (names under `days/` that are dates; anything else, such as
/// a temporary file, is skipped).
pub fn list_days(dir: &Path) -> Result<Vec<Day>, SinkError> {
    let days_dir = dir.join(DAYS_DIR);
    let entries = match fs::read_dir(&days_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return if dir.is_dir() {
                Ok(Vec::new())
            } else {
                Err(SinkError::NotFound {
                    what: format!("output directory {}", dir.display()),
                })
            };
        }
        Err(e) => return Err(SinkError::io(days_dir, e)),
    };
    let mut days = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| SinkError::io(&days_dir, e))?;
        if let Some(day) = entry.file_name().to_str().and_then(parse_day) {
            days.push(day);
        }
    }
    days.sort_unstable();
    Ok(days)
}

/// Every record of `rejected.jsonl`, in file order. A last line without its newline (a write
/// cut short by a crash) is skipped.
pub fn read_rejected(dir: &Path) -> Result<Vec<RejectedRecord>, SinkError> {
    let path = dir.join(REJECTED_FILE);
    let bytes = read(dir, &path, || "rejected records".to_owned())?;
    let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    bytes[..complete]
        .split(|&b| b == b'\n')
        .enumerate()
        .filter(|(_, line)| !line.is_empty())
        .map(|(i, line)| {
            serde_json::from_slice(line)
                .map_err(|e| SinkError::corrupt(&path, format!("line {}: {e}", i + 1)))
        })
        .collect()
}
