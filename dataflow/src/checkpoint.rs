//! Checkpoints of a worker's open state (design §4), taken inside the dataflow, as data.
//!
//! A checkpoint at **mark** T (a multiple of [`CheckpointPlan::every`] epochs) is, on each
//! worker, its state after every epoch before T: the totals of its users on the days still
//! open ([`WorkerState::totals`]), its de-duplication window, the next offsets of its Kafka
//! partitions, and W(T − 1). From it a restart rebuilds the dataflow as it was after epoch
//! T − 1 ([`Restore`]: the totals enter the `totals` arrangement at epoch T − 1, the window is
//! loaded into admission, W(T − 1) is the initial watermark) and replays only the archive after
//! the checkpoint's offsets, so its time follows the checkpoint interval, not the day.
//!
//! Three operators hold the pieces, and each files its own into the worker's [`DraftBook`]:
//! admission (the window and W(T − 1), before it applies any epoch ≥ T), `Totals` (the
//! `totals` trace before T, read in the activation whose batches reach T, before the trace is
//! allowed to compact past them) and [`track_positions`]. Each does so at the latest mark its
//! input has reached, so when an idle stream makes frontiers jump, operators may file
//! different marks: a mark is complete only when all three filed it, and the worker loop
//! ([`DraftBook::take_complete`]) ships the latest complete one. Every piece is "the state
//! after every epoch before T", whatever epochs this worker saw, so the pieces of one mark
//! agree with each other and with the other workers'.
//!
//! Taking a checkpoint costs one walk of this worker's `totals` trace (its users of open days)
//! per mark, in an operator; nothing in the dataflow waits for the store: the runtime encodes
//! and uploads on a thread of its own.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use serde::{Deserialize, Serialize};
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;

use crate::event::{is_closed, Day, Epoch, Micros, User};
use crate::output::Position;
use crate::pipeline::{epoch_of, VecStream};

/// One worker's part of the checkpoint at `mark`: its state after every epoch before it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerState {
    /// The mark T.
    pub mark: Epoch,
    /// W(T − 1) (`None`: no accepted event yet).
    pub watermark: Option<Micros>,
    /// `(day, user, total)` of this worker's users on the days open after T − 1, sorted.
    pub totals: Vec<(Day, User, i64)>,
    /// The de-duplication window: `(id hash, accepted ingestion time)` ([`crate::dedup`]).
    pub window: Vec<(u64, Micros)>,
    /// The next offset of each of this worker's partitions (absent: none read before T).
    pub positions: Vec<Position>,
}

/// Which epochs are marks, and where the pieces go.
#[derive(Clone)]
pub struct CheckpointPlan {
    /// Marks are the multiples of this many epochs (at least 1).
    pub every: Epoch,
    /// Only marks after this one are taken (a restart's replayed epochs hold no new state).
    pub after: Epoch,
    /// The positions this worker's sources start from (partition → next offset).
    pub positions: Vec<Position>,
    /// Where the pieces go.
    pub drafts: Drafts,
}

impl CheckpointPlan {
    /// The latest mark T ≤ `epoch` that may be taken.
    pub fn latest(&self, epoch: Epoch) -> Option<Epoch> {
        let every = self.every.max(1);
        let t = epoch / every * every;
        (t > self.after).then_some(t)
    }
}

/// What a restarted worker starts from: the state of its checkpoint part, at epoch
/// `mark − 1`.
#[derive(Clone, Debug, Default)]
pub struct Restore {
    /// The mark T of the checkpoint: the restored totals enter at epoch T − 1.
    pub mark: Epoch,
    /// `(day, user, total)` of this worker's users.
    pub totals: Vec<(Day, User, i64)>,
    /// The de-duplication window.
    pub window: Vec<(u64, Micros)>,
}

impl From<WorkerState> for Restore {
    fn from(s: WorkerState) -> Restore {
        Restore {
            mark: s.mark,
            totals: s.totals,
            window: s.window,
        }
    }
}

/// Most marks with pieces held at once by a [`DraftBook`].
pub const MAX_DRAFTS: usize = 4;

/// The pieces of one worker's checkpoints, shared by its operators and its worker loop.
pub type Drafts = Rc<RefCell<DraftBook>>;

/// The pieces filed so far, by mark.
#[derive(Debug)]
pub struct DraftBook {
    grace: Micros,
    drafts: BTreeMap<Epoch, Draft>,
}

#[derive(Debug, Default)]
struct Draft {
    totals: Option<Vec<(Day, User, i64)>>,
    admission: Option<(Vec<(u64, Micros)>, Option<Micros>)>,
    positions: Option<Vec<Position>>,
}

impl DraftBook {
    /// An empty book; days closed by a mark's watermark (after `grace`) are left out of it.
    pub fn new(grace: Micros) -> Drafts {
        Rc::new(RefCell::new(DraftBook {
            grace,
            drafts: BTreeMap::new(),
        }))
    }

    /// The draft of `mark`; at most [`MAX_DRAFTS`] are held (the oldest goes first), so
    /// pieces of marks that never complete cannot pile up.
    fn draft(&mut self, mark: Epoch) -> &mut Draft {
        while self.drafts.len() >= MAX_DRAFTS && !self.drafts.contains_key(&mark) {
            self.drafts.pop_first();
        }
        self.drafts.entry(mark).or_default()
    }

    /// Files `Totals`' piece of `mark`.
    pub fn put_totals(&mut self, mark: Epoch, totals: Vec<(Day, User, i64)>) {
        self.draft(mark).totals = Some(totals);
    }

    /// Files admission's piece of `mark`.
    pub fn put_admission(
        &mut self,
        mark: Epoch,
        window: Vec<(u64, Micros)>,
        watermark: Option<Micros>,
    ) {
        self.draft(mark).admission = Some((window, watermark));
    }

    /// Files the positions piece of `mark`.
    pub fn put_positions(&mut self, mark: Epoch, positions: Vec<Position>) {
        self.draft(mark).positions = Some(positions);
    }

    /// Marks with pieces filed (complete or not).
    pub fn pending(&self) -> usize {
        self.drafts.len()
    }

    /// The latest complete mark's state, if any; every draft up to it is dropped (an
    /// incomplete older one can no longer complete usefully). The totals of days closed by
    /// W(T − 1) are left out: the dataflow retires them at T, and they are final in the sinks.
    pub fn take_complete(&mut self) -> Option<WorkerState> {
        let mark = *self
            .drafts
            .iter()
            .rev()
            .find(|(_, d)| d.totals.is_some() && d.admission.is_some() && d.positions.is_some())?
            .0;
        let draft = self.drafts.remove(&mark).expect("found");
        self.drafts = self.drafts.split_off(&mark);
        let (window, watermark) = draft.admission.expect("complete");
        let mut totals = draft.totals.expect("complete");
        let grace = self.grace;
        totals.retain(|&(day, _, _)| !is_closed(day, watermark, grace));
        Some(WorkerState {
            mark,
            watermark,
            totals,
            window,
            positions: draft.positions.expect("complete"),
        })
    }
}

/// Files, at each mark, the next offset of every partition this worker's source has read
/// (from `plan.positions`, then each epoch's [`Position`]s, in epoch order). No output.
pub fn track_positions(positions: VecStream<'_, Position>, plan: &CheckpointPlan) {
    let plan = plan.clone();
    let mut current: BTreeMap<u32, u64> = plan
        .positions
        .iter()
        .map(|p| (p.partition, p.next))
        .collect();
    let mut stash: BTreeMap<Epoch, Vec<Position>> = BTreeMap::new();
    let mut last: Option<Epoch> = None;
    positions.sink(Pipeline, "CheckpointPositions", move |(input, frontier)| {
        input.for_each(|cap, data| {
            stash.entry(epoch_of(&cap)).or_default().append(data);
        });
        let file = |mark: Epoch, current: &BTreeMap<u32, u64>, last: &mut Option<Epoch>| {
            if last.is_none_or(|l| mark > l) {
                let at: Vec<Position> = current
                    .iter()
                    .map(|(&partition, &next)| Position { partition, next })
                    .collect();
                plan.drafts.borrow_mut().put_positions(mark, at);
                *last = Some(mark);
            }
        };
        while let Some((&epoch, _)) = stash.first_key_value() {
            if frontier.less_equal(&epoch) {
                break;
            }
            // Before an epoch ≥ T is applied, `current` is the state before T.
            if let Some(mark) = plan.latest(epoch) {
                file(mark, &current, &mut last);
            }
            for p in stash.remove(&epoch).expect("present") {
                let next = current.entry(p.partition).or_insert(p.next);
                // Positions only move forward (a restart's replay repeats older ones).
                *next = (*next).max(p.next);
            }
        }
        // Every epoch ≤ T is in: nothing before T can still change.
        if let Some(&f) = frontier.frontier().first() {
            if let Some(mark) = f.checked_sub(1).and_then(|e| plan.latest(e)) {
                file(mark, &current, &mut last);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_latest_complete_mark_wins_and_older_drafts_go() {
        let drafts = DraftBook::new(0);
        let mut book = drafts.borrow_mut();
        for mark in [10, 20, 30] {
            book.put_totals(mark, vec![(1, 7, 5), (20_000, 7, 3)]);
            book.put_positions(
                mark,
                vec![Position {
                    partition: 0,
                    next: mark,
                }],
            );
        }
        // 30 has no admission piece: 20 is the latest complete one.
        book.put_admission(10, vec![], None);
        book.put_admission(20, vec![(1, 2)], Some(5 * crate::event::MICROS_PER_DAY));
        let state = book.take_complete().unwrap();
        assert_eq!(state.mark, 20);
        // Day 1 closed under the watermark; 20 000 is open.
        assert_eq!(state.totals, vec![(20_000, 7, 3)]);
        assert_eq!(state.window, vec![(1, 2)]);
        assert_eq!(book.pending(), 1, "10 dropped, 30 kept");
        assert!(book.take_complete().is_none());
    }

    #[test]
    fn drafts_that_never_complete_do_not_pile_up() {
        let drafts = DraftBook::new(0);
        let mut book = drafts.borrow_mut();
        for mark in 1..100 {
            book.put_totals(mark, vec![(1, 1, 1)]);
        }
        assert_eq!(book.pending(), MAX_DRAFTS);
        // The newest marks are kept: one completes.
        book.put_admission(99, vec![], None);
        book.put_positions(99, vec![]);
        assert_eq!(book.take_complete().map(|s| s.mark), Some(99));
    }

    #[test]
    fn marks_are_multiples_after_the_restored_ones() {
        let plan = CheckpointPlan {
            every: 10,
            after: 20,
            positions: Vec::new(),
            drafts: DraftBook::new(0),
        };
        assert_eq!(plan.latest(25), None);
        assert_eq!(plan.latest(30), Some(30));
        assert_eq!(plan.latest(39), Some(30));
    }
}
