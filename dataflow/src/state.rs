//! Lookups in live state (design §12): totals, standings and top-k read from the arrangements of
//! [`crate::arranged`] on the worker that owns the key, at a completed epoch, between two steps
//! of the worker (never blocking the dataflow).
//!
//! A (day, user) total lives on the user's worker ([`LiveState::owner_of_user`]); a day's
//! histogram, `by-total` index and top-k on the day's worker ([`LiveState::owner_of_day`]). A
//! standing is two lookups at the same epoch t: [`LiveState::total`] on the user's worker, then
//! [`LiveState::standing`] with that total on the day's worker. Each answers at t only if t is
//! complete in every arrangement it reads and not yet compacted away ([`LiveState::advance`]).
//! A day that closed after t−1 has left live state: it is reported [`LookupError::Closed`].

use std::cmp::Reverse;
use std::collections::VecDeque;

use differential_dataflow::trace::cursor::{cursor_list, Cursor};
use differential_dataflow::trace::implementations::ord_neu::{OrdValBatch, Upds};
use differential_dataflow::trace::implementations::spine_fueled::SpineBatch;
use differential_dataflow::trace::implementations::{OffsetList, Update, Vector};
use differential_dataflow::trace::TraceReader;
use timely::progress::frontier::{Antichain, AntichainRef};

use crate::arranged::{DayUser, Traces};
use crate::event::{is_closed, Day, Epoch, Micros, User};
use crate::keybatch::{BatchDiff, BatchKey, KeyBatch};
use crate::pipeline::{route_day, route_user, Settings};
use crate::ranking::{Standing, TopRow};

/// Why a lookup has no answer here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LookupError {
    /// The key lives on another worker.
    NotOwner {
        /// The worker that owns it.
        owner: usize,
    },
    /// The day closed after an epoch before the one asked: its state has left the dataflow
    /// (its final results are in the sinks).
    Closed,
    /// The epoch is not complete in this worker's arrangements yet: ask again after a step.
    NotYet,
    /// The arrangements were compacted past the epoch asked.
    Compacted {
        /// The earliest epoch still readable.
        since: Epoch,
    },
}

/// A day's status at an epoch.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum DayStatus {
    /// Still open: its results may change.
    Open,
    /// Closed after this very epoch: the results read at this epoch are final.
    Final,
}

/// A (day, user) total at an epoch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TotalAt {
    /// The epoch the answer holds at.
    pub epoch: Epoch,
    /// The user's total (`None`: no accepted event of the user that day).
    pub total: Option<u64>,
    /// Whether the day is final at that epoch.
    pub status: DayStatus,
}

/// The worker (of `peers`) that owns a user's totals: where the exchange by user sends them.
pub fn user_owner(user: User, peers: usize) -> usize {
    (route_user(user) % peers as u64) as usize
}

/// The worker (of `peers`) that owns a day's histogram, index and top-k.
pub fn day_owner(day: Day, peers: usize) -> usize {
    (route_day(day) % peers as u64) as usize
}

/// One worker's handle on the live state.
pub struct LiveState {
    traces: Traces,
    index: usize,
    peers: usize,
    grace: Micros,
    initial_watermark: Option<Micros>,
    since: Epoch,
}

impl LiveState {
    /// The live state of worker `index` of `peers`, from the dataflow's traces.
    pub fn new(traces: Traces, settings: &Settings, index: usize, peers: usize) -> Self {
        LiveState {
            traces,
            index,
            peers,
            grace: settings.grace,
            initial_watermark: settings.initial_watermark,
            since: 0,
        }
    }

    /// The worker that owns a user's totals.
    pub fn owner_of_user(&self, user: User) -> usize {
        user_owner(user, self.peers)
    }

    /// The worker that owns a day's histogram, index and top-k.
    pub fn owner_of_day(&self, day: Day) -> usize {
        day_owner(day, self.peers)
    }

    /// Lets the arrangements forget the distinctions between epochs before `completed`: later
    /// lookups must ask at `completed` or after. Call it regularly (each step of the worker, with
    /// the last completed epoch): a handle that never advances holds back every merge.
    pub fn advance(&mut self, completed: Epoch) {
        if completed <= self.since {
            return;
        }
        self.since = completed;
        let frontier = [completed];
        let f = AntichainRef::new(&frontier);
        let t = &mut self.traces;
        t.totals.set_logical_compaction(f);
        t.totals.set_physical_compaction(f);
        t.histogram.set_logical_compaction(f);
        t.histogram.set_physical_compaction(f);
        t.users.set_logical_compaction(f);
        t.users.set_physical_compaction(f);
        t.by_total.set_logical_compaction(f);
        t.by_total.set_physical_compaction(f);
        t.top.set_logical_compaction(f);
        t.top.set_physical_compaction(f);
        t.watermarks.borrow_mut().forget_before(completed);
    }

    /// W(at), if this worker knows it.
    fn watermark_at(&self, at: Epoch) -> Result<Option<Micros>, LookupError> {
        let log = self.traces.watermarks.borrow();
        if at >= log.through {
            return Err(LookupError::NotYet);
        }
        Ok(log.at(at).max(self.initial_watermark))
    }

    /// Checks `at` and the day's status: `Closed` if it left live state before `at`.
    fn check(&self, day: Day, at: Epoch) -> Result<DayStatus, LookupError> {
        if at < self.since {
            return Err(LookupError::Compacted { since: self.since });
        }
        let w = self.watermark_at(at)?;
        let w_prev = match at.checked_sub(1) {
            Some(p) => self.watermark_at(p)?,
            None => self.initial_watermark,
        };
        if is_closed(day, w_prev, self.grace) {
            return Err(LookupError::Closed);
        }
        Ok(if is_closed(day, w, self.grace) {
            DayStatus::Final
        } else {
            DayStatus::Open
        })
    }

    /// Whether `day` is open or final at epoch `at` (from the watermarks this worker saw), or
    /// why that cannot be said: closed before `at`, `at` not complete yet, or compacted away.
    pub fn day_status(&self, day: Day, at: Epoch) -> Result<DayStatus, LookupError> {
        self.check(day, at)
    }

    /// The user's total on `day` at epoch `at` (one seek in `totals`), on the user's worker.
    pub fn total(&mut self, day: Day, user: User, at: Epoch) -> Result<TotalAt, LookupError> {
        let owner = self.owner_of_user(user);
        if owner != self.index {
            return Err(LookupError::NotOwner { owner });
        }
        let status = self.check(day, at)?;
        if !complete(&mut self.traces.totals, at) {
            return Err(LookupError::NotYet);
        }
        let batches = self
            .traces
            .totals
            .batches_through(Antichain::new().borrow())
            .expect("every batch");
        let (mut cursor, storage) = cursor_list(batches);
        let key = DayUser::new(day, user);
        cursor.seek_key(&storage, &key);
        let mut acc = (0i64, 0i64);
        if cursor.get_key(&storage) == Some(&key) {
            cursor.map_times(&storage, |t, d| {
                if *t <= at {
                    acc.0 += d.0;
                    acc.1 += d.1;
                }
            });
        }
        Ok(TotalAt {
            epoch: at,
            total: (acc.1 > 0).then_some(acc.0 as u64),
            status,
        })
    }

    /// The day's top-k rows at epoch `at`, in listing order, on the day's worker.
    pub fn top(&mut self, day: Day, at: Epoch) -> Result<Vec<TopRow>, LookupError> {
        let owner = self.owner_of_day(day);
        if owner != self.index {
            return Err(LookupError::NotOwner { owner });
        }
        self.check(day, at)?;
        if !complete(&mut self.traces.top, at) {
            return Err(LookupError::NotYet);
        }
        let batches = self
            .traces
            .top
            .batches_through(Antichain::new().borrow())
            .expect("every batch");
        let (mut cursor, storage) = cursor_list(batches);
        let mut rows = Vec::new();
        cursor.seek_key(&storage, &day);
        if cursor.get_key(&storage) == Some(&day) {
            while let Some(row) = cursor.get_val(&storage) {
                let mut n = 0isize;
                cursor.map_times(&storage, |t, d| {
                    if *t <= at {
                        n += *d;
                    }
                });
                if n > 0 {
                    rows.push(*row);
                }
                cursor.step_val(&storage);
            }
        }
        rows.sort_by_key(|r| r.position);
        Ok(rows)
    }

    /// The standing of `user` with total `total` (read by [`LiveState::total`] at the same
    /// epoch) on `day` at epoch `at`, with `n` neighbours each side, from the day's
    /// `histogram`, `users` and `by-total` arrangements, on the day's worker. `Ok(None)` if no
    /// user of the day has that total and UUID.
    pub fn standing(
        &mut self,
        day: Day,
        user: User,
        total: u64,
        n: usize,
        at: Epoch,
    ) -> Result<Option<Standing>, LookupError> {
        let owner = self.owner_of_day(day);
        if owner != self.index {
            return Err(LookupError::NotOwner { owner });
        }
        self.check(day, at)?;
        if !complete(&mut self.traces.histogram, at)
            || !complete(&mut self.traces.users, at)
            || !complete(&mut self.traces.by_total, at)
        {
            return Err(LookupError::NotYet);
        }
        // The day's histogram, ascending totals with their numbers of users.
        let mut histogram: Vec<(u64, u64)> = Vec::new();
        {
            let batches = self
                .traces
                .histogram
                .batches_through(Antichain::new().borrow())
                .expect("every batch");
            let (mut cursor, storage) = cursor_list(batches);
            cursor.seek_key(&storage, &(day, 0));
            while let Some(&(d, t)) = cursor.get_key(&storage) {
                if d != day {
                    break;
                }
                let mut count = 0isize;
                cursor.map_times(&storage, |time, diff| {
                    if *time <= at {
                        count += *diff;
                    }
                });
                if count > 0 {
                    histogram.push((t, count as u64));
                }
                cursor.step_key(&storage);
            }
        }
        let users = {
            let batches = self
                .traces
                .users
                .batches_through(Antichain::new().borrow())
                .expect("every batch");
            let (mut cursor, storage) = cursor_list(batches);
            cursor.seek_key(&storage, &day);
            let mut count = 0isize;
            if cursor.get_key(&storage) == Some(&day) {
                cursor.map_times(&storage, |time, diff| {
                    if *time <= at {
                        count += *diff;
                    }
                });
            }
            count.max(0) as u64
        };
        let Ok(i) = histogram.binary_search_by_key(&total, |&(t, _)| t) else {
            return Ok(None);
        };
        // above[j]: users with a total strictly above histogram[j]'s.
        let mut above = vec![0u64; histogram.len()];
        for j in (0..histogram.len().saturating_sub(1)).rev() {
            above[j] = above[j + 1] + histogram[j + 1].1;
        }
        let rank_of = |s: u64| -> u64 {
            let j = histogram.partition_point(|&(t, _)| t < s);
            above.get(j).map_or(0, |a| *a) + 1
        };
        // The first key of the neighbours above: the smallest total above whose users, with
        // those of the totals between, make `n`.
        let mut start = (day, Reverse(total), 0u128);
        let mut need = n as u64;
        for &(t, c) in histogram[i + 1..].iter() {
            if need == 0 {
                break;
            }
            start = (day, Reverse(t), 0);
            need = need.saturating_sub(c);
        }
        let me = (day, Reverse(total), user);
        let batches = self
            .traces
            .by_total
            .batches_through(Antichain::new().borrow())
            .expect("every batch");
        let (mut cursor, storage) = cursor_list(batches);
        let mut above_users: VecDeque<(User, u64)> = VecDeque::new();
        let mut found = false;
        {
            cursor.seek_key(&storage, &start);
            while let Some(&key) = cursor.get_key(&storage) {
                if key.0 != day || key > me {
                    break;
                }
                let mut count = 0isize;
                cursor.map_times(&storage, |time, diff| {
                    if *time <= at {
                        count += *diff;
                    }
                });
                if count > 0 {
                    if key == me {
                        found = true;
                        cursor.step_key(&storage);
                        break;
                    }
                    if n > 0 {
                        above_users.push_back((key.2, key.1 .0));
                        if above_users.len() > n {
                            above_users.pop_front();
                        }
                    }
                }
                cursor.step_key(&storage);
            }
        }
        if !found {
            return Ok(None);
        }
        let mut below_users: Vec<(User, u64)> = Vec::new();
        while below_users.len() < n {
            let Some(&key) = cursor.get_key(&storage) else {
                break;
            };
            if key.0 != day {
                break;
            }
            let mut count = 0isize;
            cursor.map_times(&storage, |time, diff| {
                if *time <= at {
                    count += *diff;
                }
            });
            if count > 0 {
                below_users.push((key.2, key.1 .0));
            }
            cursor.step_key(&storage);
        }
        Ok(Some(Standing {
            user,
            rank: rank_of(total),
            steps: total,
            users,
            gap_up: histogram.get(i + 1).map(|&(t, _)| t - total),
            gap_down: i.checked_sub(1).map(|j| total - histogram[j].0),
            above: above_users
                .into_iter()
                .map(|(u, s)| (u, s, rank_of(s)))
                .collect(),
            below: below_users
                .into_iter()
                .map(|(u, s)| (u, s, rank_of(s)))
                .collect(),
        }))
    }
}

/// Whether every update at `at` or before is in `trace` (its upper is past `at`).
fn complete<Tr: TraceReader<Time = Epoch>>(trace: &mut Tr, at: Epoch) -> bool {
    let mut upper = Antichain::new();
    trace.read_upper(&mut upper);
    !upper.less_equal(&at)
}

/// The days each arrangement holds, and its live keys (keys whose updates up to `at` do not
/// cancel), as walked from this worker's shard of the traces.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Held {
    /// The arrangement's name.
    pub name: &'static str,
    /// The distinct days of its live keys.
    pub days: std::collections::BTreeSet<Day>,
    /// Its live keys (for `top-k`: live rows).
    pub keys: usize,
}

impl LiveState {
    /// What every arrangement of this worker holds at epoch `at` (a walk of each trace: for
    /// tests and the inspector, O(records)).
    pub fn held(&mut self, at: Epoch) -> Vec<Held> {
        let t = &mut self.traces;
        let mut out = Vec::new();
        // Each arrangement: walk keys and values, accumulating diffs up to `at`.
        macro_rules! held {
            ($name:expr, $trace:expr, $day:expr, $zero:expr, $add:expr, $live:expr) => {{
                let batches = $trace
                    .batches_through(Antichain::new().borrow())
                    .expect("every batch");
                let (mut cursor, storage) = cursor_list(batches);
                let mut held = Held {
                    name: $name,
                    ..Held::default()
                };
                while let Some(key) = cursor.get_key(&storage) {
                    let day: Day = $day(key);
                    while cursor.val_valid(&storage) {
                        let mut acc = $zero;
                        cursor.map_times(&storage, |time, diff| {
                            if *time <= at {
                                $add(&mut acc, diff);
                            }
                        });
                        if $live(&acc) {
                            held.days.insert(day);
                            held.keys += 1;
                        }
                        cursor.step_val(&storage);
                    }
                    cursor.step_key(&storage);
                }
                out.push(held);
            }};
        }
        held!(
            "totals",
            t.totals,
            |k: &DayUser| k.day,
            (0i64, 0i64),
            |a: &mut (i64, i64), d: &(i64, i64)| {
                a.0 += d.0;
                a.1 += d.1
            },
            |a: &(i64, i64)| *a != (0, 0)
        );
        held!(
            "histogram",
            t.histogram,
            |k: &(Day, u64)| k.0,
            0isize,
            |a: &mut isize, d: &isize| *a += *d,
            |a: &isize| *a != 0
        );
        held!(
            "users",
            t.users,
            |k: &Day| *k,
            0isize,
            |a: &mut isize, d: &isize| *a += *d,
            |a: &isize| *a != 0
        );
        held!(
            "by-total",
            t.by_total,
            |k: &(Day, Reverse<u64>, User)| k.0,
            0isize,
            |a: &mut isize, d: &isize| *a += *d,
            |a: &isize| *a != 0
        );
        held!(
            "top-k",
            t.top,
            |k: &Day| *k,
            0isize,
            |a: &mut isize, d: &isize| *a += *d,
            |a: &isize| *a != 0
        );
        out
    }
}

/// The size of one arrangement on one worker, as its trace holds it now.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ArrangementSize {
    /// The arrangement's name (as `arrange_named` gave it).
    pub name: &'static str,
    /// Batches in its spine (merges in progress count their inputs).
    pub batches: usize,
    /// Updates held (what differential's logging counts as records): (key, value, time,
    /// diff) tuples, not distinct keys; they shrink when
    /// merges consolidate and when closed days are retracted.
    pub updates: usize,
    /// Bytes held by its batches' containers, walked batch by batch: the capacity of every
    /// column (keys, values, times, diffs and their offset lists) times its element's size
    /// (differential reports no sizes). The element types hold nothing on the heap, so this is
    /// what the batches allocated, spare capacity included; what it leaves out is small and
    /// bounded: allocator overhead, each batch's `Rc` and description, and the output of a
    /// merge still being built (its inputs are counted).
    pub bytes: usize,
    /// Live keys (for `top-k`: live rows) at the last completed epoch, when walked (an
    /// O(records) walk of the trace, [`LiveState::held`]; `None` when not walked).
    pub live_keys: Option<usize>,
}

impl ArrangementSize {
    /// Adds `other`'s sizes (another worker's shard of the same arrangement); the live keys
    /// are known only if both are.
    pub fn add(&mut self, other: &ArrangementSize) {
        self.batches += other.batches;
        self.updates += other.updates;
        self.bytes += other.bytes;
        self.live_keys = self.live_keys.zip(other.live_keys).map(|(a, b)| a + b);
    }
}

impl LiveState {
    /// The size of each arrangement of this worker (cheap: a walk of the spines' batches, not
    /// of their records), in the order of [`LiveState::held`].
    pub fn sizes(&mut self) -> Vec<ArrangementSize> {
        let t = &mut self.traces;
        let mut out = Vec::new();
        macro_rules! size {
            ($name:expr, $trace:expr, $bytes:ident) => {{
                let batches = $trace
                    .batches_through(Antichain::new().borrow())
                    .unwrap_or_default();
                out.push(ArrangementSize {
                    name: $name,
                    batches: batches.len(),
                    updates: batches.iter().map(|b| b.len()).sum(),
                    bytes: batches.iter().map(|b| $bytes(b)).sum(),
                    live_keys: None,
                });
            }};
        }
        size!("totals", t.totals, key_batch_bytes);
        size!("histogram", t.histogram, key_batch_bytes);
        size!("users", t.users, key_batch_bytes);
        size!("by-total", t.by_total, key_batch_bytes);
        size!("top-k", t.top, val_batch_bytes);
        out
    }
}

/// The bytes a vector's allocation holds (its capacity, not its length).
fn vec_bytes<T>(v: &Vec<T>) -> usize {
    v.capacity() * std::mem::size_of::<T>()
}

/// The bytes of a batch's offset list (u32 offsets while they fit, then u64).
fn offsets_bytes(o: &OffsetList) -> usize {
    vec_bytes(&o.smol) + vec_bytes(&o.chonk)
}

/// The bytes of a batch's updates: their offsets, times and diffs.
fn upds_bytes<T, D>(u: &Upds<OffsetList, Vec<T>, Vec<D>>) -> usize {
    offsets_bytes(&u.offs) + vec_bytes(&u.times) + vec_bytes(&u.diffs)
}

/// The bytes of a key batch's columns: keys, and the updates'.
fn key_batch_bytes<K: BatchKey, R: BatchDiff>(b: &KeyBatch<K, R>) -> usize {
    vec_bytes(&b.inner.storage.keys) + upds_bytes(&b.inner.storage.upds)
}

/// The bytes of a key-value batch's columns: keys, values and their offsets, and the updates'.
fn val_batch_bytes<U: Update<Diff: Ord>>(b: &OrdValBatch<Vector<U>>) -> usize {
    let s = &b.storage;
    vec_bytes(&s.keys) + offsets_bytes(&s.vals.offs) + vec_bytes(&s.vals.vals) + upds_bytes(&s.upds)
}
