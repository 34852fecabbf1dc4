//! [`LocalDirSink`]: writes the local output directory (design §10).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rankmysteps_dataflow::event::{format_day, format_micros, Day, Epoch, Micros, User};
use rankmysteps_dataflow::output::{EpochOutput, Position, Stats};
use rankmysteps_dataflow::ranking::TopRow;
use rustc_hash::FxHashSet;
use tracing::{debug, info};

use super::format::{
    day_dir, push_u64, push_user, sync_dir, sync_file, temp_path, write_atomic, Progress,
    RejectedRecord, StatsFile, TopEntry, TopFile, DAYS_DIR, PROGRESS_FILE, REJECTED_FILE, TOP_FILE,
    TOTALS_FILE, TOTALS_HEADER,
};
use super::totals::{DayTotals, Scratch};
use crate::{Sink, SinkError};

/// Buffered rejected lines beyond this size are written at the next epoch even if
/// `min_write_interval` has not elapsed, so that a long interval cannot hold an unbounded
/// dead-letter backlog in memory.
const REJECTED_BUFFER_LIMIT: usize = 8 << 20;

/// Bytes of totals.csv rows formatted before they are handed to the file's writer.
const WRITE_BLOCK: usize = 1 << 16;

/// With a non-zero `min_write_interval`, the next write waits at least this many times as long as
/// the last one took, so that rewriting the files stays under a tenth of the sink's time.
pub const WRITE_COST_FACTOR: u32 = 9;

/// Options of a [`LocalDirSink`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalOptions {
    /// Open days' files, `rejected.jsonl` and `progress.json` are written at most once per this
    /// interval (the latest completed epoch wins); closed days are written as soon as they close,
    /// and [`Sink::finish`] writes everything pending. `Duration::ZERO` writes after every epoch.
    ///
    /// A non-zero interval also stretches with the cost of a write: the next one waits at least
    /// [`WRITE_COST_FACTOR`] times as long as the last one took. A day of a million users is a
    /// totals.csv of ~50 MB, rewritten whole; without the stretch a long replay would spend a
    /// quarter of its CPU rewriting it every second.
    pub min_write_interval: Duration,
}

impl Default for LocalOptions {
    /// One write per second.
    fn default() -> LocalOptions {
        LocalOptions {
            min_write_interval: Duration::from_secs(1),
        }
    }
}

/// The current results of one open day, rebuilt from the deltas of every epoch so far.
#[derive(Default)]
struct DayState {
    /// Total of every user of the day ([`DayTotals`]: a day may have millions of users and
    /// every epoch changes many of them, while totals.csv, sorted by user, is written far less
    /// often).
    totals: DayTotals,
    /// The top-k rows by position (1-based, listing order).
    top: BTreeMap<u32, TopRow>,
    /// The number of ranked users, once the dataflow has said.
    users: Option<u64>,
}

/// Applies one delta of an absolute record to `map`.
///
/// The deltas of an epoch are consolidated and sorted by record, so a change of `key` from `a`
/// to `b` arrives as `(a, -1)` and `(b, +1)` in either order. Inserting overwrites whatever is
/// there, and retracting removes only if the retracted value is the current one: then both orders
/// leave `b`, and a retraction of a value we never saw (or already replaced) is a no-op.
fn apply<K: Ord, V: PartialEq>(map: &mut BTreeMap<K, V>, key: K, value: V, diff: isize) {
    if diff > 0 {
        map.insert(key, value);
    } else if diff < 0 && map.get(&key) == Some(&value) {
        map.remove(&key);
    }
}

/// [`apply`] for a day's totals.
fn apply_total(totals: &mut DayTotals, user: User, total: u64, diff: isize, scratch: &mut Scratch) {
    if diff > 0 {
        totals.set(user, total, scratch);
    } else if diff < 0 {
        totals.remove_if(user, total, scratch);
    }
}

/// Writes the local output directory of design §10 (see the [module docs](super)).
///
/// The sink rebuilds every open day's totals, top-k and number of users from the epochs' deltas
/// in memory and rewrites the files of the days that changed; a day's memory is released as soon
/// as it closes (its files are then final). Writes are coalesced: see [`LocalOptions`].
///
/// The per-day histogram of [`EpochOutput`] is not part of the directory and is ignored.
///
/// Consistency: a write brings the whole directory to the latest completed epoch E, day files
/// first, then `rejected.jsonl`, then `progress.json`; so whenever `progress.json` says E, every
/// other file reflects E or a later epoch (a write under way, or a day that closed since: closed
/// days are written at once). Within a day, `totals.csv` is replaced before `top.json`, so a
/// `top.json` marked final implies a final `totals.csv`; the two are not replaced together, so a
/// reader racing a write may see a `totals.csv` one write newer than `top.json`.
pub struct LocalDirSink {
    dir: PathBuf,
    options: LocalOptions,
    /// Open days with output.
    days: BTreeMap<Day, DayState>,
    /// Days whose final files are written: later changes to them are ignored (the dataflow
    /// rejects events of closed days as `late`, so there should be none).
    closed: FxHashSet<Day>,
    /// Open days changed since their files were last written.
    dirty: BTreeSet<Day>,
    /// Days whose files were written without fsync (synced by `finish`).
    unsynced: BTreeSet<Day>,
    /// `rejected.jsonl` lines not yet written.
    rejected: Vec<u8>,
    /// `rejected.jsonl`, opened for appending.
    rejected_file: File,
    /// The last epoch received.
    epoch: Option<Epoch>,
    /// Whether an epoch completed since `progress.json` was last written.
    progress_dirty: bool,
    watermark: Option<Micros>,
    /// Next position by partition: merged, so a partition missing from an epoch keeps its last.
    positions: BTreeMap<u32, u64>,
    /// Counters over the run.
    stats: Stats,
    /// The buffers of the days' totals' merges.
    scratch: Scratch,
    last_write: Instant,
    /// How long the last write took (see [`WRITE_COST_FACTOR`]).
    last_write_cost: Duration,
    finished: bool,
}

impl LocalDirSink {
    /// Creates (or takes over) the output directory `dir` for a new run.
    ///
    /// A run rewrites the directory: the previous run's `days/`, `rejected.jsonl` and
    /// `progress.json` (and a leftover `progress.json` temp file) are removed; anything else in
    /// `dir` is left alone. An empty `rejected.jsonl` is created, so a run with no rejection
    /// still has one.
    pub fn create(dir: &Path, options: LocalOptions) -> Result<LocalDirSink, SinkError> {
        fs::create_dir_all(dir).map_err(|e| SinkError::io(dir, e))?;
        let days = dir.join(DAYS_DIR);
        match fs::remove_dir_all(&days) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(SinkError::io(days, e)),
            _ => {}
        }
        // progress.json first: from here on the directory claims no completed epoch.
        let progress = dir.join(PROGRESS_FILE);
        for path in [
            progress.clone(),
            temp_path(&progress),
            dir.join(REJECTED_FILE),
        ] {
            match fs::remove_file(&path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    return Err(SinkError::io(path, e));
                }
                _ => {}
            }
        }
        let rejected_path = dir.join(REJECTED_FILE);
        let rejected_file = File::options()
            .create(true)
            .append(true)
            .open(&rejected_path)
            .map_err(|e| SinkError::io(&rejected_path, e))?;
        info!(dir = %dir.display(), "local output directory created");
        Ok(LocalDirSink {
            dir: dir.to_path_buf(),
            options,
            days: BTreeMap::new(),
            closed: FxHashSet::default(),
            dirty: BTreeSet::new(),
            unsynced: BTreeSet::new(),
            rejected: Vec::new(),
            rejected_file,
            epoch: None,
            progress_dirty: false,
            watermark: None,
            positions: BTreeMap::new(),
            stats: Stats::default(),
            scratch: Scratch::default(),
            // The first write waits one interval too: a fast replay writes nothing until then.
            last_write: Instant::now(),
            last_write_cost: Duration::ZERO,
            finished: false,
        })
    }

    /// The output directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The state of `day` if it is still open (created on first use), `None` once closed.
    fn open_day(&mut self, day: Day) -> Option<&mut DayState> {
        if self.closed.contains(&day) {
            return None;
        }
        self.dirty.insert(day);
        Some(self.days.entry(day).or_default())
    }

    /// Applies the epoch's deltas to the in-memory state; returns how many deltas were ignored
    /// because their day had already closed.
    fn apply(&mut self, output: &EpochOutput) -> usize {
        let mut ignored = 0;
        let mut scratch = std::mem::take(&mut self.scratch);
        // Deltas of one day mostly come in runs (`top` is sorted by day; `totals`, unsorted,
        // rarely spans many days): look a day up once per run.
        for run in output.totals.chunk_by(|a, b| a.0 .0 == b.0 .0) {
            match self.open_day(run[0].0 .0) {
                Some(state) => {
                    for (i, &((_, user, total), diff)) in run.iter().enumerate() {
                        // The dataflow emits a change as the retraction of the old total right
                        // before the insertion of the new one: the insertion alone does it (a
                        // lone retraction costs a merge of the day's log).
                        if diff < 0 && run.get(i + 1).is_some_and(|n| n.0 .1 == user && n.1 > 0) {
                            continue;
                        }
                        apply_total(&mut state.totals, user, total, diff, &mut scratch);
                    }
                }
                None => ignored += run.len(),
            }
        }
        for run in output.top.chunk_by(|a, b| a.0 .0 == b.0 .0) {
            match self.open_day(run[0].0 .0) {
                Some(state) => {
                    for &((_, row), diff) in run {
                        apply(&mut state.top, row.position, row, diff);
                    }
                }
                None => ignored += run.len(),
            }
        }
        for &((day, users), diff) in &output.users {
            match self.open_day(day) {
                Some(state) => {
                    if diff > 0 {
                        state.users = Some(users);
                    } else if diff < 0 && state.users == Some(users) {
                        state.users = None;
                    }
                }
                None => ignored += 1,
            }
        }
        self.scratch = scratch;
        ignored
    }

    /// Writes a day's two files: totals.csv first, then top.json, whose `final` flag therefore
    /// also vouches for totals.csv.
    fn write_day(
        out: &Path,
        scratch: &mut Scratch,
        day: Day,
        state: &mut DayState,
        is_final: bool,
        sync: bool,
    ) -> Result<(), SinkError> {
        let dir = day_dir(out, day);
        fs::create_dir_all(&dir).map_err(|e| SinkError::io(&dir, e))?;
        write_atomic(&dir.join(TOTALS_FILE), sync, |w| {
            // Rows are formatted into a block handed to the writer whole (one copy per block,
            // not one call per row).
            let mut block = Vec::with_capacity(WRITE_BLOCK + 64);
            block.extend_from_slice(TOTALS_HEADER.as_bytes());
            block.push(b'\n');
            for (user, total) in state.totals.sorted(scratch) {
                push_user(&mut block, user);
                block.push(b',');
                push_u64(&mut block, total);
                block.push(b'\n');
                if block.len() >= WRITE_BLOCK {
                    w.write_all(&block)?;
                    block.clear();
                }
            }
            w.write_all(&block)
        })?;
        let top = TopFile {
            day: format_day(day),
            is_final,
            // The dataflow's count of ranked users; until it has given one, the users we know of.
            users: match state.users {
                Some(users) => users,
                None => state.totals.len(scratch) as u64,
            },
            top: state.top.values().map(TopEntry::from).collect(),
        };
        write_atomic(&dir.join(TOP_FILE), sync, |w| {
            serde_json::to_writer(&mut *w, &top)?;
            w.write_all(b"\n")
        })?;
        if sync {
            sync_dir(&dir)?;
        }
        Ok(())
    }

    /// Writes the final files of the days that closed in this epoch and forgets them.
    fn close_days(&mut self, closed: &[Day]) -> Result<(), SinkError> {
        for &day in closed {
            if !self.closed.insert(day) {
                continue; // already final
            }
            self.dirty.remove(&day);
            self.unsynced.remove(&day);
            match self.days.remove(&day) {
                // Final files are written once per day: sync them now rather than at `finish`,
                // so the day's memory can go and it never needs touching again.
                Some(mut state) => {
                    Self::write_day(&self.dir, &mut self.scratch, day, &mut state, true, true)?;
                    sync_dir(&self.dir.join(DAYS_DIR))?;
                    let users = state.totals.len(&mut self.scratch);
                    info!(day = %format_day(day), users, "day final");
                }
                // No output was ever seen for the day: there is nothing to finalise.
                None => debug!(day = %format_day(day), "closed day without output"),
            }
        }
        Ok(())
    }

    /// Brings the directory up to the latest completed epoch: dirty days, then the buffered
    /// rejected lines, then progress.json, which must come last since it vouches for the rest.
    fn write_pending(&mut self, sync: bool) -> Result<(), SinkError> {
        let started = Instant::now();
        // A day leaves `dirty` only once written, so a failed write is retried by the next call.
        while let Some(&day) = self.dirty.first() {
            if let Some(state) = self.days.get_mut(&day) {
                Self::write_day(&self.dir, &mut self.scratch, day, state, false, sync)?;
                if sync {
                    self.unsynced.remove(&day);
                } else {
                    self.unsynced.insert(day);
                }
            }
            self.dirty.remove(&day);
        }
        if !self.rejected.is_empty() {
            // One append of all buffered lines. A crash can cut it short and leave a partial
            // last line (without its newline), which readers skip.
            self.rejected_file
                .write_all(&self.rejected)
                .map_err(|e| SinkError::io(self.dir.join(REJECTED_FILE), e))?;
            self.rejected.clear();
        }
        if sync {
            self.rejected_file
                .sync_data()
                .map_err(|e| SinkError::io(self.dir.join(REJECTED_FILE), e))?;
        }
        if let (true, Some(epoch)) = (self.progress_dirty, self.epoch) {
            let progress = Progress {
                epoch,
                watermark: self.watermark.map(format_micros),
                watermark_micros: self.watermark,
                positions: self
                    .positions
                    .iter()
                    .map(|(&partition, &next)| Position { partition, next })
                    .collect(),
                stats: StatsFile::from(&self.stats),
            };
            write_atomic(&self.dir.join(PROGRESS_FILE), sync, |w| {
                serde_json::to_writer(&mut *w, &progress)?;
                w.write_all(b"\n")
            })?;
            self.progress_dirty = false;
        }
        self.last_write = Instant::now();
        self.last_write_cost = self.last_write - started;
        Ok(())
    }

    /// Whether a write of the open days is due (see [`LocalOptions::min_write_interval`]).
    fn write_due(&self) -> bool {
        let interval = self.options.min_write_interval;
        let wait = if interval.is_zero() {
            interval
        } else {
            interval.max(self.last_write_cost * WRITE_COST_FACTOR)
        };
        self.last_write.elapsed() >= wait
    }
}

impl Sink for LocalDirSink {
    /// Writes what is pending once `min_write_interval` has passed since the last write, so
    /// a quiet stream still reaches the directory.
    fn tick(&mut self) -> Result<(), SinkError> {
        let pending = self.progress_dirty || !self.dirty.is_empty() || !self.rejected.is_empty();
        if pending && self.write_due() {
            self.write_pending(false)?;
        }
        Ok(())
    }

    /// Rebuilds the state of the days a restart replays (written at the next write); the
    /// rejections and counters of a restored epoch were reported before the restart.
    fn restore(&mut self, output: &EpochOutput) -> Result<(), SinkError> {
        if let Some(last) = self.epoch.filter(|&last| output.epoch <= last) {
            return Err(SinkError::OutOfOrder {
                epoch: output.epoch,
                last,
            });
        }
        self.apply(output);
        self.close_days(&output.closed)?;
        self.watermark = self.watermark.max(output.watermark);
        self.positions
            .extend(output.positions.iter().map(|p| (p.partition, p.next)));
        self.epoch = Some(output.epoch);
        self.progress_dirty = true;
        Ok(())
    }

    fn write_epoch(&mut self, output: &EpochOutput) -> Result<(), SinkError> {
        if let Some(last) = self.epoch.filter(|&last| output.epoch <= last) {
            return Err(SinkError::OutOfOrder {
                epoch: output.epoch,
                last,
            });
        }
        let ignored = self.apply(output);
        self.close_days(&output.closed)?;
        for rejection in &output.rejected {
            let record = RejectedRecord::new(rejection, output.epoch);
            serde_json::to_writer(&mut self.rejected, &record)
                .map_err(|e| SinkError::io(self.dir.join(REJECTED_FILE), e.into()))?;
            self.rejected.push(b'\n');
        }
        self.stats.add(&output.stats);
        // The watermark never goes back (None < Some), whatever an epoch reports.
        self.watermark = self.watermark.max(output.watermark);
        self.positions
            .extend(output.positions.iter().map(|p| (p.partition, p.next)));
        self.epoch = Some(output.epoch);
        self.progress_dirty = true;

        let due = self.write_due() || self.rejected.len() >= REJECTED_BUFFER_LIMIT;
        let dirty_days = self.dirty.len();
        if due {
            self.write_pending(false)?;
        }
        debug!(
            epoch = output.epoch,
            open_days = self.days.len(),
            dirty_days,
            closed = output.closed.len(),
            rejected = output.rejected.len(),
            written = due,
            "local sink epoch"
        );
        if ignored > 0 {
            debug!(
                epoch = output.epoch,
                ignored, "ignored changes to closed days"
            );
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<(), SinkError> {
        if self.finished {
            return Ok(());
        }
        // Rewritten (with fsync) even if unchanged since its last, unsynced, write.
        self.progress_dirty = true;
        self.write_pending(true)?;
        // Days written earlier without fsync and unchanged since.
        while let Some(&day) = self.unsynced.first() {
            let dir = day_dir(&self.dir, day);
            sync_file(&dir.join(TOTALS_FILE))?;
            sync_file(&dir.join(TOP_FILE))?;
            sync_dir(&dir)?;
            self.unsynced.remove(&day);
        }
        if self.dir.join(DAYS_DIR).exists() {
            sync_dir(&self.dir.join(DAYS_DIR))?;
        }
        sync_dir(&self.dir)?;
        self.finished = true;
        info!(
            dir = %self.dir.display(),
            epoch = self.epoch,
            open_days = self.days.len(),
            final_days = self.closed.len(),
            "local output written"
        );
        Ok(())
    }
}
