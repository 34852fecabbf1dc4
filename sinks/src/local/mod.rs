//! The local output directory (design §10): a [`LocalDirSink`] writes it, the readers
//! ([`read_top`], [`read_standing`], …) read it back for `rankmysteps top` and `rankmysteps standing`.
//!
//! Layout of `OUT`:
//! - `days/YYYY-MM-DD/top.json`: a [`TopFile`], the day's top-k in listing order;
//! - `days/YYYY-MM-DD/totals.csv`: header `user,steps`, then one `uuid,total` row per user of the
//!   day, sorted by user (lowercase hyphenated UUID, so text order is numeric order);
//! - `rejected.jsonl`: one [`RejectedRecord`] per line per rejected event, in epoch then input order;
//! - `progress.json`: a [`Progress`], the last completed epoch the directory reflects.
//!
//! Every JSON and CSV file is replaced atomically (written to `.NAME.tmp` in the same directory,
//! then renamed over `NAME`), so a reader sees either the old or the new version of a file, never
//! a torn one. Files ending in `.tmp` or starting with `.` are never outputs.
//!
//! A run rewrites the directory: [`LocalDirSink::create`] removes the previous run's `days/`,
//! `rejected.jsonl` and `progress.json` (nothing else in `OUT` is touched).

mod format;
mod read;
mod sink;
#[cfg(test)]
mod tests;
mod totals;

pub use format::{
    day_dir, Progress, RejectedCounts, RejectedRecord, StatsFile, TopEntry, TopFile, DAYS_DIR,
    PROGRESS_FILE, REJECTED_FILE, TOP_FILE, TOTALS_FILE, TOTALS_HEADER,
};
pub use read::{
    list_days, read_progress, read_rejected, read_standing, read_top, read_top_file, read_totals,
};
pub use sink::{LocalDirSink, LocalOptions, WRITE_COST_FACTOR};
