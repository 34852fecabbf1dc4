//! The dataflow: events → admitted steps → per-(day, user) totals → per-day ranking.
//!
//! Each stage is a function from streams/collections to collections. All stages work per
//! *epoch* (the dataflow timestamp, design §2): an operator buffers an epoch's input and processes
//! it once its input frontiers have passed that epoch, so every output below is **consolidated per
//! epoch**: within one epoch no record appears twice and no diff is zero, because every stateful
//! operator owns its keys (exchange by key) and emits one net change per key.
//!
//! Invariant exploited throughout: totals only grow. Steps are non-negative, accepted events are
//! never retracted (late events are rejected before they count, duplicates are skipped), and a
//! closed day never changes again. Hence a per-worker top-k can be kept exactly by insertion
//! alone (a user leaves it only when displaced by a larger one, and can re-enter only by growing),
//! and the global top-k is the top-k of the union of the workers' top-k (workers × k candidates).
//! The cost of an epoch therefore follows the number of changed users, never the users of a day.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

use differential_dataflow::{AsCollection, VecCollection};
use rustc_hash::FxHashMap;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::{Operator, OutputBuilder};
use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::operators::{Capability, ConnectLoop, Feedback};
use timely::dataflow::Stream;

use crate::dedup::{id_key, DedupWindow};
use crate::event::{close_of_day, is_closed, Day, Epoch, Event, Micros, Reason, Rejection, User};
use crate::output::Stats;
use crate::ranking::{rank_prefix, TopRow};

/// A stream of plain records, one `Vec` per message.
pub type VecStream<'scope, D> = Stream<'scope, Epoch, Vec<D>>;
/// A differential collection over epochs, with `isize` diffs unless said otherwise.
pub type Coll<'scope, D, R = isize> = VecCollection<'scope, Epoch, D, R>;

/// Semantic settings of the dataflow (design §2-3).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// How many rows each day's top-k holds.
    pub k: usize,
    /// How long after the end of a day (in UTC−12) the day stays open, in microseconds.
    pub grace: Micros,
    /// The watermark before the first epoch, W(−1) (`None`: no event yet). A restarted job
    /// replays only the recent part of its input and starts from its progress record's
    /// watermark, so that days closed before the restart stay closed (their events are `late`)
    /// exactly as they were; every watermark the dataflow uses is then at least this value.
    pub initial_watermark: Option<Micros>,
    /// The de-duplication window (design §1), microseconds of ingestion time.
    pub dedup_window: Micros,
    /// The ingestion time one epoch spans, in microseconds: epoch e starts at
    /// `e × epoch_length` (streaming epochs are `epoch_ms` of wall clock since 1970, file
    /// replays take the same length per epoch so that they stay deterministic).
    pub epoch_length: Micros,
}

impl Settings {
    /// The ingestion time of `event` in `epoch` (design §1): its recorded one, or its epoch's
    /// start.
    #[inline]
    pub fn ingestion_time(&self, epoch: Epoch, event: &Event) -> Micros {
        event
            .ingested
            .unwrap_or_else(|| (epoch as Micros).saturating_mul(self.epoch_length))
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            k: 100,
            grace: 24 * 3600 * crate::event::MICROS_PER_SEC,
            initial_watermark: None,
            dedup_window: 3600 * crate::event::MICROS_PER_SEC,
            epoch_length: crate::event::MICROS_PER_SEC,
        }
    }
}

/// The collections and streams the dataflow produces; see each field for what its records mean.
pub struct Outputs<'scope> {
    /// `(day, user, total)`: the user's current total that day (a change retracts the old total).
    pub totals: Coll<'scope, (Day, User, u64)>,
    /// `(day, row)`: the day's top-k rows in listing order (a change retracts the old row).
    pub top: Coll<'scope, (Day, TopRow)>,
    /// `(day, total, n)`: n > 0 users of the day have exactly this total.
    pub histogram: Coll<'scope, (Day, u64, u64)>,
    /// `(day, n)`: the day has n ranked users.
    pub users: Coll<'scope, (Day, u64)>,
    /// Events rejected as `late` by admission.
    pub rejected: VecStream<'scope, Rejection>,
    /// Per-worker per-epoch counters of accepted and duplicate events.
    pub stats: VecStream<'scope, Stats>,
    /// W(e), on every worker, at epoch e, whenever it changed.
    pub watermark: VecStream<'scope, Micros>,
}

/// A well-mixed 64-bit hash (SplitMix64's output function); exchange uses its low bits.
#[inline]
pub fn mix(x: u64) -> u64 {
    crate::random::splitmix64(x)
}

/// The exchange route of a user: all of a user's events and totals live on one worker.
#[inline]
pub fn route_user(user: User) -> u64 {
    mix(user as u64 ^ (user >> 64) as u64)
}

/// The exchange route of a day: a day's ranking lives on one worker.
#[inline]
pub fn route_day(day: Day) -> u64 {
    mix(day as u64)
}

/// Builds the whole dataflow from parsed events (see [`Outputs`]).
pub fn build<'scope>(events: VecStream<'scope, Event>, settings: &Settings) -> Outputs<'scope> {
    let scope = events.scope();
    // W(e-1) must reach admission at epoch e: a feedback edge delays the watermark by one epoch.
    let (feedback, delayed_watermark) = scope.feedback::<Vec<Micros>>(1);
    let admitted = admit(events, delayed_watermark, settings);
    let watermark = watermark(admitted.local_max, settings.initial_watermark);
    watermark.clone().connect_loop(feedback);
    let totals = totals(admitted.accepted, watermark.clone(), settings);
    let top = top_k(totals.candidates, watermark.clone(), settings);
    let (histogram, users) = histogram(totals.contributions, watermark.clone(), settings);
    Outputs {
        totals: totals.totals,
        top,
        histogram,
        users,
        rejected: admitted.rejected,
        stats: admitted.stats,
        watermark,
    }
}

/// The epoch of a message (epochs are totally ordered, so a stamp has one least element).
#[inline]
pub fn epoch_of(cap: &timely::dataflow::operators::InputCapability<Epoch>) -> Epoch {
    *cap.least().expect("a message's stamp is never empty")
}

/// Per-epoch buffer of one input, each epoch held with one capability per output port.
///
/// Received batches are kept as they came (timely hands over its buffers): appending them to
/// one vector would copy every record and, for large epochs, keep growing (and page-faulting
/// in) fresh memory.
struct Stash<D> {
    epochs: BTreeMap<Epoch, (Vec<Capability<Epoch>>, Vec<Vec<D>>)>,
}

impl<D> Stash<D> {
    fn new() -> Self {
        Stash {
            epochs: BTreeMap::new(),
        }
    }

    /// Buffers `data` under `cap`, keeping capabilities for `ports` outputs.
    fn absorb(
        &mut self,
        cap: &timely::dataflow::operators::InputCapability<Epoch>,
        ports: usize,
        data: &mut Vec<D>,
    ) {
        let time = epoch_of(cap);
        let entry = self.epochs.entry(time).or_insert_with(|| {
            (
                (0..ports).map(|p| cap.delayed(&time, p)).collect(),
                Vec::new(),
            )
        });
        entry.1.push(std::mem::take(data));
    }

    /// Removes and returns the earliest epoch if no frontier could still deliver data for it.
    fn pop_complete(
        &mut self,
        frontiers: &[&timely::progress::frontier::MutableAntichain<Epoch>],
    ) -> Option<(Epoch, Vec<Capability<Epoch>>, Vec<Vec<D>>)> {
        let (&time, _) = self.epochs.first_key_value()?;
        if frontiers.iter().any(|f| f.less_equal(&time)) {
            return None;
        }
        let (caps, data) = self.epochs.remove(&time)?;
        Some((time, caps, data))
    }
}

/// Latest watermark value seen on a watermark input, folding in epochs as they complete.
struct WatermarkView {
    current: Option<Micros>,
    pending: BTreeMap<Epoch, Micros>,
}

impl WatermarkView {
    fn new(initial: Option<Micros>) -> Self {
        WatermarkView {
            current: initial,
            pending: BTreeMap::new(),
        }
    }

    fn absorb(&mut self, time: Epoch, values: &[Micros]) {
        if let Some(&max) = values.iter().max() {
            let slot = self.pending.entry(time).or_insert(max);
            *slot = (*slot).max(max);
        }
    }

    /// The watermark after every value stamped `<= time` (the caller ensures they all arrived).
    fn at(&mut self, time: Epoch) -> Option<Micros> {
        while let Some((&t, &w)) = self.pending.first_key_value() {
            if t > time {
                break;
            }
            self.pending.remove(&t);
            self.current = Some(self.current.map_or(w, |c| c.max(w)));
        }
        self.current
    }
}

/// What admission produces.
struct Admitted<'scope> {
    /// `((day, user), steps)` as a collection whose diff is the steps accepted in the epoch.
    accepted: Coll<'scope, (Day, User), i64>,
    /// Events rejected as `late`.
    rejected: VecStream<'scope, Rejection>,
    /// Per-worker per-epoch counts of accepted and duplicate events.
    stats: VecStream<'scope, Stats>,
    /// The largest time of the epoch's accepted events on this worker (absent if none).
    local_max: VecStream<'scope, Micros>,
}

/// Admission: decides per epoch, in input order, which events count.
///
/// Events are exchanged by user. At epoch e, with W(e-1) from `watermark` (stamped e), an event
/// whose day is closed is rejected as `late`; otherwise an event whose `(user, day, event_id)`
/// was accepted at most `dedup_window` of ingestion time before it is a `duplicate` (design §1,
/// [`DedupWindow`]); otherwise it is accepted. Output `accepted`: one record per `(day, user)`
/// with diff = the steps accepted in the epoch, consolidated per epoch. The window forgets ids
/// as it passes, so its memory follows the ids of one window, not the events of a day.
fn admit<'scope>(
    events: VecStream<'scope, Event>,
    watermark: VecStream<'scope, Micros>,
    settings: &Settings,
) -> Admitted<'scope> {
    let (grace, initial_watermark) = (settings.grace, settings.initial_watermark);
    let settings = settings.clone();
    let mut builder = OperatorBuilder::new("Admit".to_owned(), events.scope());
    let mut input = builder.new_input(events, Exchange::new(|e: &Event| route_user(e.user)));
    let mut wm_input = builder.new_input(watermark, Pipeline);
    let (accepted_out, accepted) = builder.new_output::<Vec<((Day, User), Epoch, i64)>>();
    let (rejected_out, rejected) = builder.new_output::<Vec<Rejection>>();
    let (stats_out, stats) = builder.new_output::<Vec<Stats>>();
    let (max_out, local_max) = builder.new_output::<Vec<Micros>>();
    let mut accepted_out = OutputBuilder::from(accepted_out);
    let mut rejected_out = OutputBuilder::from(rejected_out);
    let mut stats_out = OutputBuilder::from(stats_out);
    let mut max_out = OutputBuilder::from(max_out);

    builder.build(move |_capabilities| {
        let mut stash: Stash<Event> = Stash::new();
        let mut wm = WatermarkView::new(initial_watermark);
        // The ids of this worker's users accepted within the window.
        let mut window = DedupWindow::new(settings.dedup_window);
        let mut sums: FxHashMap<(Day, User), i64> = FxHashMap::default();
        move |frontiers| {
            input.for_each(|cap, data| stash.absorb(&cap, 4, data));
            wm_input.for_each(|cap, data| wm.absorb(epoch_of(&cap), data));
            let mut accepted_h = accepted_out.activate();
            let mut rejected_h = rejected_out.activate();
            let mut stats_h = stats_out.activate();
            let mut max_h = max_out.activate();
            while let Some((time, caps, batches)) =
                stash.pop_complete(&[&frontiers[0], &frontiers[1]])
            {
                let w_prev = wm.at(time);
                let mut stats = Stats::default();
                let mut late = Vec::new();
                let mut max: Option<Micros> = None;
                // Only events with an `event_id` depend on input order (the first one wins):
                // sort just those by position; the others are summed in any order.
                let mut with_id: Vec<Event> = Vec::new();
                let without_id = batches.into_iter().flatten().filter_map(|e| {
                    if e.event_id.is_some() {
                        with_id.push(e);
                        None
                    } else {
                        Some(e)
                    }
                });
                let mut admit_one = |event: Event, stats: &mut Stats, window: &mut DedupWindow| {
                    if is_closed(event.day, w_prev, grace) {
                        late.push(late_rejection(event, w_prev, grace));
                        return;
                    }
                    if let Some(id) = &event.event_id {
                        let t = settings.ingestion_time(time, &event);
                        if !window.admit(id_key(event.user, event.day, id), t) {
                            stats.duplicate += 1;
                            return;
                        }
                    }
                    stats.accepted += 1;
                    max = Some(max.map_or(event.time, |m| m.max(event.time)));
                    *sums.entry((event.day, event.user)).or_insert(0) += i64::from(event.steps);
                };
                for event in without_id {
                    admit_one(event, &mut stats, &mut window);
                }
                with_id.sort_unstable_by_key(|e| e.pos);
                // Every later event is ingested at this epoch's time or after (a replay cut
                // into epochs of its own: at its earliest recorded time or after, per key).
                if let Some(now) = with_id
                    .iter()
                    .map(|e| settings.ingestion_time(time, e))
                    .min()
                {
                    window.advance(now);
                }
                for event in with_id {
                    admit_one(event, &mut stats, &mut window);
                }
                // Rejections leave in input order.
                late.sort_unstable_by_key(|r| r.pos);
                stats.rejected[Reason::Late.index()] = late.len() as u64;
                accepted_h
                    .session(&caps[0])
                    .give_iterator(sums.drain().map(|(k, s)| (k, time, s)));
                if !late.is_empty() {
                    rejected_h.session(&caps[1]).give_iterator(late.into_iter());
                }
                if stats != Stats::default() {
                    stats_h.session(&caps[2]).give(stats);
                }
                if let Some(max) = max {
                    max_h.session(&caps[3]).give(max);
                }
            }
        }
    });

    Admitted {
        accepted: accepted.as_collection(),
        rejected,
        stats,
        local_max,
    }
}

/// The dead-letter record of a late event.
fn late_rejection(event: Event, watermark: Option<Micros>, grace: Micros) -> Rejection {
    let detail = format!(
        "day {} closed at {} (watermark {})",
        crate::event::format_day(event.day),
        crate::event::format_micros(close_of_day(event.day, grace)),
        watermark.map_or_else(|| "none".to_owned(), crate::event::format_micros),
    );
    // Sources keep the raw record of every event whose day could be closed (its close is not
    // after ingestion time + max clock skew, the watermark's upper bound); this is a fallback.
    let raw = match event.raw {
        Some(raw) => raw.into_vec(),
        None => format!(
            "{{\"uuid\":\"{}\",\"day\":\"{}\",\"steps\":{}}}",
            crate::event::format_user(event.user),
            crate::event::format_day(event.day),
            event.steps
        )
        .into_bytes(),
    };
    Rejection {
        pos: event.pos,
        reason: Reason::Late,
        detail,
        raw,
    }
}

/// The global watermark W(e) = max over epochs ≤ e of the workers' local maxima, emitted on every
/// worker at epoch e when it changed (values not above `initial` are not news: every consumer
/// starts from it). Output: one value per change, not consolidated across epochs (a later value
/// supersedes an earlier one).
fn watermark<'scope>(
    local_max: VecStream<'scope, Micros>,
    initial: Option<Micros>,
) -> VecStream<'scope, Micros> {
    let mut current: Option<Micros> = initial;
    let mut pending: BTreeMap<Epoch, (Capability<Epoch>, Micros)> = BTreeMap::new();
    local_max
        .broadcast()
        .unary_frontier(Pipeline, "Watermark", move |_cap, _info| {
            move |(input, frontier), output| {
                input.for_each(|cap, data| {
                    let time = epoch_of(&cap);
                    if let Some(&max) = data.iter().max() {
                        let entry = pending
                            .entry(time)
                            .or_insert_with(|| (cap.retain_least(0).expect("capability"), max));
                        entry.1 = entry.1.max(max);
                    }
                });
                while let Some((&time, _)) = pending.first_key_value() {
                    if frontier.less_equal(&time) {
                        break;
                    }
                    let (cap, max) = pending.remove(&time).expect("present");
                    if current.is_none_or(|c| max > c) {
                        current = Some(max);
                        output.session(&cap).give(max);
                    }
                }
            }
        })
}

/// What the totals stage produces.
struct Totals<'scope> {
    /// See [`Outputs::totals`].
    totals: Coll<'scope, (Day, User, u64)>,
    /// `(day, total)` with diff = change in the number of this worker's users at that total.
    contributions: Coll<'scope, (Day, u64)>,
    /// `(day, (Reverse(total), user))`: this worker's top-k candidates of the day.
    candidates: Coll<'scope, (Day, (Reverse<u64>, User))>,
}

/// One day's state on one worker: its users' totals and its local top-k.
#[derive(Default)]
struct DayTotals {
    totals: FxHashMap<User, u64>,
    /// The first k of this worker's users in listing order.
    top: BTreeSet<(Reverse<u64>, User)>,
}

/// Per-(day, user) totals, keyed by user (same partitioning as admission, so no exchange).
///
/// Outputs are consolidated per epoch: a user changed in an epoch yields at most one retraction
/// and one insertion. A closed day's state is dropped after the epoch that closed it.
fn totals<'scope>(
    accepted: Coll<'scope, (Day, User), i64>,
    watermark: VecStream<'scope, Micros>,
    settings: &Settings,
) -> Totals<'scope> {
    let (k, grace, initial_watermark) = (settings.k, settings.grace, settings.initial_watermark);
    let mut builder = OperatorBuilder::new("Totals".to_owned(), accepted.inner.scope());
    let mut input = builder.new_input(accepted.inner, Pipeline);
    let mut wm_input = builder.new_input(watermark, Pipeline);
    let (totals_out, totals) = builder.new_output::<Vec<((Day, User, u64), Epoch, isize)>>();
    let (contrib_out, contributions) = builder.new_output::<Vec<((Day, u64), Epoch, isize)>>();
    let (cand_out, candidates) =
        builder.new_output::<Vec<((Day, (Reverse<u64>, User)), Epoch, isize)>>();
    let mut totals_out = OutputBuilder::from(totals_out);
    let mut contrib_out = OutputBuilder::from(contrib_out);
    let mut cand_out = OutputBuilder::from(cand_out);

    builder.build(move |_capabilities| {
        let mut stash: Stash<((Day, User), Epoch, i64)> = Stash::new();
        let mut wm = WatermarkView::new(initial_watermark);
        let mut days: FxHashMap<Day, DayTotals> = FxHashMap::default();
        let mut contrib: FxHashMap<(Day, u64), isize> = FxHashMap::default();
        let mut cand: FxHashMap<(Day, (Reverse<u64>, User)), isize> = FxHashMap::default();
        let mut changes: Vec<((Day, User, u64), Epoch, isize)> = Vec::new();
        move |frontiers| {
            input.for_each(|cap, data| stash.absorb(&cap, 3, data));
            wm_input.for_each(|cap, data| wm.absorb(epoch_of(&cap), data));
            let mut totals_h = totals_out.activate();
            let mut contrib_h = contrib_out.activate();
            let mut cand_h = cand_out.activate();
            while let Some((time, caps, updates)) =
                stash.pop_complete(&[&frontiers[0], &frontiers[1]])
            {
                for ((day, user), _, steps) in updates.into_iter().flatten() {
                    let state = days.entry(day).or_default();
                    let slot = state.totals.entry(user);
                    let (old, new) = match slot {
                        std::collections::hash_map::Entry::Occupied(mut o) => {
                            if steps == 0 {
                                continue;
                            }
                            let old = *o.get();
                            *o.get_mut() = old + steps as u64;
                            (Some(old), old + steps as u64)
                        }
                        std::collections::hash_map::Entry::Vacant(v) => {
                            v.insert(steps as u64);
                            (None, steps as u64)
                        }
                    };
                    if let Some(old) = old {
                        changes.push(((day, user, old), time, -1));
                        *contrib.entry((day, old)).or_insert(0) -= 1;
                    }
                    changes.push(((day, user, new), time, 1));
                    *contrib.entry((day, new)).or_insert(0) += 1;
                    // Local top-k by insertion only (totals only grow, see module docs).
                    let entry = (Reverse(new), user);
                    let full = state.top.len() >= k;
                    if !full || state.top.last().is_some_and(|last| entry < *last) {
                        if let Some(old) = old {
                            if state.top.remove(&(Reverse(old), user)) {
                                *cand.entry((day, (Reverse(old), user))).or_insert(0) -= 1;
                            }
                        }
                        state.top.insert(entry);
                        *cand.entry((day, entry)).or_insert(0) += 1;
                        if state.top.len() > k {
                            let evicted = state.top.pop_last().expect("non-empty");
                            *cand.entry((day, evicted)).or_insert(0) -= 1;
                        }
                    }
                }
                totals_h.session(&caps[0]).give_iterator(changes.drain(..));
                contrib_h.session(&caps[1]).give_iterator(
                    contrib
                        .drain()
                        .filter(|(_, d)| *d != 0)
                        .map(|(r, d)| (r, time, d)),
                );
                cand_h.session(&caps[2]).give_iterator(
                    cand.drain()
                        .filter(|(_, d)| *d != 0)
                        .map(|(r, d)| (r, time, d)),
                );
                // Drop the days W(time) closed: their totals are final.
                let w = wm.at(time);
                days.retain(|&day, _| !is_closed(day, w, grace));
            }
            // Epochs with no accepted data still advance the watermark view.
            if let Some(front) = frontiers[0].frontier().first().copied() {
                if !frontiers[1].less_equal(&front) && stash.epochs.is_empty() && front > 0 {
                    let w = wm.at(front - 1);
                    days.retain(|&day, _| !is_closed(day, w, grace));
                }
            }
        }
    });

    Totals {
        totals: totals.as_collection(),
        contributions: contributions.as_collection(),
        candidates: candidates.as_collection(),
    }
}

/// The day's top-k rows, merged from the workers' candidates (exchanged by day).
///
/// Output consolidated per epoch: for every position whose row changed, the old row is retracted
/// and the new one inserted. A closed day's candidates are dropped after the epoch that closed it.
fn top_k<'scope>(
    candidates: Coll<'scope, (Day, (Reverse<u64>, User))>,
    watermark: VecStream<'scope, Micros>,
    settings: &Settings,
) -> Coll<'scope, (Day, TopRow)> {
    let (k, grace, initial_watermark) = (settings.k, settings.grace, settings.initial_watermark);
    candidates
        .inner
        .binary_frontier(
            watermark,
            Exchange::new(
                |((day, _), _, _): &((Day, (Reverse<u64>, User)), Epoch, isize)| route_day(*day),
            ),
            Pipeline,
            "TopK",
            move |_cap, _info| {
                let mut stash: Stash<((Day, (Reverse<u64>, User)), Epoch, isize)> = Stash::new();
                let mut wm = WatermarkView::new(initial_watermark);
                // Per day: the candidate set, and the rows last emitted.
                let mut days: FxHashMap<Day, (BTreeSet<(Reverse<u64>, User)>, Vec<TopRow>)> =
                    FxHashMap::default();
                move |(input, frontier), (wm_input, wm_frontier), output| {
                    input.for_each(|cap, data| stash.absorb(&cap, 1, data));
                    wm_input.for_each(|cap, data| wm.absorb(epoch_of(&cap), data));
                    while let Some((time, caps, updates)) =
                        stash.pop_complete(&[frontier, wm_frontier])
                    {
                        let mut changed: BTreeSet<Day> = BTreeSet::new();
                        for ((day, entry), _, diff) in updates.into_iter().flatten() {
                            let (set, _) = days.entry(day).or_default();
                            if diff > 0 {
                                set.insert(entry);
                            } else {
                                set.remove(&entry);
                            }
                            changed.insert(day);
                        }
                        let mut session = output.session(&caps[0]);
                        for day in changed {
                            let (set, rows) = days.get_mut(&day).expect("present");
                            let new_rows =
                                rank_prefix(set.iter().map(|&(Reverse(s), u)| (u, s)), k);
                            for i in 0..rows.len().max(new_rows.len()) {
                                let (old, new) = (rows.get(i), new_rows.get(i));
                                if old != new {
                                    if let Some(old) = old {
                                        session.give(((day, *old), time, -1isize));
                                    }
                                    if let Some(new) = new {
                                        session.give(((day, *new), time, 1isize));
                                    }
                                }
                            }
                            *rows = new_rows;
                        }
                        let w = wm.at(time);
                        days.retain(|&day, _| !is_closed(day, w, grace));
                    }
                }
            },
        )
        .as_collection()
}

/// The per-day histogram of totals and the number of users per day (exchanged by day).
///
/// Outputs consolidated per epoch: a changed `(day, total)` count retracts the old count and
/// inserts the new one (absent when zero); likewise the day's number of users.
fn histogram<'scope>(
    contributions: Coll<'scope, (Day, u64)>,
    watermark: VecStream<'scope, Micros>,
    settings: &Settings,
) -> (Coll<'scope, (Day, u64, u64)>, Coll<'scope, (Day, u64)>) {
    let (grace, initial_watermark) = (settings.grace, settings.initial_watermark);
    let mut builder = OperatorBuilder::new("Histogram".to_owned(), contributions.inner.scope());
    let mut input = builder.new_input(
        contributions.inner,
        Exchange::new(|((day, _), _, _): &((Day, u64), Epoch, isize)| route_day(*day)),
    );
    let mut wm_input = builder.new_input(watermark, Pipeline);
    let (hist_out, hist) = builder.new_output::<Vec<((Day, u64, u64), Epoch, isize)>>();
    let (users_out, users) = builder.new_output::<Vec<((Day, u64), Epoch, isize)>>();
    let mut hist_out = OutputBuilder::from(hist_out);
    let mut users_out = OutputBuilder::from(users_out);
    builder.build(move |_capabilities| {
        let mut stash: Stash<((Day, u64), Epoch, isize)> = Stash::new();
        let mut wm = WatermarkView::new(initial_watermark);
        let mut days: FxHashMap<Day, (BTreeMap<u64, u64>, u64)> = FxHashMap::default();
        move |frontiers| {
            input.for_each(|cap, data| stash.absorb(&cap, 2, data));
            wm_input.for_each(|cap, data| wm.absorb(epoch_of(&cap), data));
            let mut hist_h = hist_out.activate();
            let mut users_h = users_out.activate();
            while let Some((time, caps, batches)) =
                stash.pop_complete(&[&frontiers[0], &frontiers[1]])
            {
                // Workers' contributions to one (day, total) arrive separately: net them first.
                let mut updates: Vec<_> = batches.into_iter().flatten().collect();
                differential_dataflow::consolidation::consolidate_updates(&mut updates);
                let mut user_delta: BTreeMap<Day, i64> = BTreeMap::new();
                let mut hist_session = hist_h.session(&caps[0]);
                for ((day, total), _, diff) in updates {
                    let (counts, _) = days.entry(day).or_default();
                    let old = counts.get(&total).copied().unwrap_or(0);
                    let new = (old as i64 + diff as i64) as u64;
                    if old > 0 {
                        hist_session.give(((day, total, old), time, -1isize));
                    }
                    if new > 0 {
                        hist_session.give(((day, total, new), time, 1isize));
                        counts.insert(total, new);
                    } else {
                        counts.remove(&total);
                    }
                    *user_delta.entry(day).or_insert(0) += diff as i64;
                }
                drop(hist_session);
                let mut users_session = users_h.session(&caps[1]);
                for (day, delta) in user_delta {
                    if delta == 0 {
                        continue;
                    }
                    let (_, n) = days.get_mut(&day).expect("present");
                    if *n > 0 {
                        users_session.give(((day, *n), time, -1isize));
                    }
                    *n = (*n as i64 + delta) as u64;
                    users_session.give(((day, *n), time, 1isize));
                }
                let w = wm.at(time);
                days.retain(|&day, _| !is_closed(day, w, grace));
            }
        }
    });
    (hist.as_collection(), users.as_collection())
}
