//! What sinks receive: the consolidated changes of one completed epoch.

use serde::{Deserialize, Serialize};

use crate::event::{Day, Epoch, Micros, Reason, Rejection, User};
use crate::ranking::TopRow;

/// Counters of one epoch (or, summed, of a whole run).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Events accepted (neither rejected nor duplicate).
    pub accepted: u64,
    /// Events skipped as duplicates of an earlier `event_id` (not rejections).
    pub duplicate: u64,
    /// Rejected events, indexed by [`Reason::index`].
    pub rejected: [u64; 6],
}

impl Stats {
    /// Adds another set of counters into this one.
    pub fn add(&mut self, other: &Stats) {
        self.accepted += other.accepted;
        self.duplicate += other.duplicate;
        for (a, b) in self.rejected.iter_mut().zip(other.rejected) {
            *a += b;
        }
    }

    /// The number of rejections for `reason`.
    pub fn rejected(&self, reason: Reason) -> u64 {
        self.rejected[reason.index()]
    }

    /// All rejections.
    pub fn rejected_total(&self) -> u64 {
        self.rejected.iter().sum()
    }

    /// Every record counted: accepted, duplicate or rejected.
    pub fn records(&self) -> u64 {
        self.accepted + self.duplicate + self.rejected_total()
    }
}

/// An input position: the next record to read of one partition (for a file: partition 0 and the
/// next line index).
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Position {
    /// Kafka partition (0 for files).
    pub partition: u32,
    /// The next offset (or line index) to read.
    pub next: u64,
}

/// The consolidated changes of one completed epoch, handed to sinks in epoch order.
///
/// Every collection holds *absolute* records (a total, a top-k row, a histogram count), so a
/// change is a retraction (`-1`) of the old record and an insertion (`+1`) of the new one.
/// Each vector is consolidated (no record twice, no zero diff) and sorted, except `totals` whose
/// order is unspecified; sinks apply insertions as idempotent upserts and retractions without a
/// matching insertion as deletes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochOutput {
    /// The epoch these changes complete.
    pub epoch: Epoch,
    /// W(epoch): the largest event time of all accepted events so far.
    pub watermark: Option<Micros>,
    /// Changes of per-(day, user) totals: `((day, user, total), diff)`.
    pub totals: Vec<((Day, User, u64), isize)>,
    /// Changes of the per-day top-k: `((day, row), diff)`.
    pub top: Vec<((Day, TopRow), isize)>,
    /// Changes of the per-day histogram of totals: `((day, total, number of users), diff)`.
    pub histogram: Vec<((Day, u64, u64), isize)>,
    /// Changes of the number of ranked users per day: `((day, users), diff)`.
    pub users: Vec<((Day, u64), isize)>,
    /// Days that closed after this epoch: their results are now final and their state is gone.
    pub closed: Vec<Day>,
    /// Records rejected in this epoch, in input order.
    pub rejected: Vec<Rejection>,
    /// This epoch's counters.
    pub stats: Stats,
    /// For every partition read so far, the next position after this epoch.
    pub positions: Vec<Position>,
}

impl EpochOutput {
    /// Merges consecutive epochs' outputs (in epoch order) into one output for the last of them:
    /// the deltas are added up and consolidated (a record changed twice keeps only its first
    /// retraction and its last insertion), closed days and rejections are concatenated, the
    /// counters summed, positions and watermark taken from the last. Writing the merged output
    /// leaves a sink exactly as writing each epoch in turn would, with fewer writes.
    pub fn merge(outputs: Vec<EpochOutput>) -> EpochOutput {
        let mut outputs = outputs.into_iter();
        let Some(mut merged) = outputs.next() else {
            return EpochOutput::default();
        };
        let mut any = false;
        for out in outputs {
            any = true;
            merged.epoch = out.epoch;
            merged.watermark = merged.watermark.max(out.watermark);
            merged.totals.extend(out.totals);
            merged.top.extend(out.top);
            merged.histogram.extend(out.histogram);
            merged.users.extend(out.users);
            merged.closed.extend(out.closed);
            merged.rejected.extend(out.rejected);
            merged.stats.add(&out.stats);
            if !out.positions.is_empty() {
                let mut positions: std::collections::BTreeMap<u32, u64> = merged
                    .positions
                    .iter()
                    .map(|p| (p.partition, p.next))
                    .collect();
                positions.extend(out.positions.iter().map(|p| (p.partition, p.next)));
                merged.positions = positions
                    .into_iter()
                    .map(|(partition, next)| Position { partition, next })
                    .collect();
            }
        }
        if any {
            differential_dataflow::consolidation::consolidate(&mut merged.totals);
            // Consolidation sorts by (day, user, total): for one user the old (smaller) total's
            // retraction now comes right before the new total's insertion, as sinks expect.
            differential_dataflow::consolidation::consolidate(&mut merged.top);
            differential_dataflow::consolidation::consolidate(&mut merged.histogram);
            differential_dataflow::consolidation::consolidate(&mut merged.users);
        }
        merged
    }

    /// Days with any change (or closing) in this epoch, sorted and distinct.
    pub fn changed_days(&self) -> Vec<Day> {
        let mut days: Vec<Day> = self
            .totals
            .iter()
            .map(|((d, _, _), _)| *d)
            .chain(self.top.iter().map(|((d, _), _)| *d))
            .chain(self.users.iter().map(|((d, _), _)| *d))
            .chain(self.closed.iter().copied())
            .collect();
        days.sort_unstable();
        days.dedup();
        days
    }
}
