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

use std::collections::BTreeMap;

use differential_dataflow::VecCollection;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::{Operator, OutputBuilder};
use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::operators::{Capability, ConnectLoop, Feedback};
use timely::dataflow::Stream;

use crate::arranged::{DayUser, Steps};
use crate::checkpoint::{CheckpointPlan, Restore};
use crate::dedup::{id_key, DedupWindow};
use crate::event::{close_of_day, is_closed, Day, Epoch, Event, Micros, Reason, Rejection, User};
use crate::output::Stats;
use crate::ranking::TopRow;

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
            .ingested()
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
///
/// The collections carry each record's epoch in its time field (a message may hold several
/// epochs' records); each is consolidated per epoch. A closed day's records leave the
/// arrangements one epoch after it closed: `histogram` and `users` then carry their
/// retractions, which sinks must not apply ([`crate::deliver`] drops them).
pub struct Outputs<'scope> {
    /// `((day, user, old total, new total), epoch)`: a change of the user's total that day, at
    /// most one per user and epoch, standing for the old total's retraction (absent for a new
    /// user) and the new one's insertion.
    pub totals: VecStream<'scope, (crate::arranged::TotalChange, Epoch)>,
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
    /// This worker's arrangements (design §13), for lookups ([`crate::state::LiveState`]):
    /// take them before [`crate::deliver::deliver`], which drops them (a dropped handle never
    /// holds back compaction).
    pub traces: Option<crate::arranged::Traces>,
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

/// What a checkpointing or restarted job adds to [`build`] (design §4).
#[derive(Clone, Default)]
pub struct Extras {
    /// This worker's checkpoint part to start from: its totals enter at epoch `mark − 1`, its
    /// window is admission's (the initial watermark, in [`Settings`], must be the part's).
    pub restore: Option<Restore>,
    /// Take checkpoints ([`crate::checkpoint`]).
    pub checkpoint: Option<CheckpointPlan>,
}

/// Builds the whole dataflow from parsed events (see [`Outputs`]).
pub fn build<'scope>(events: VecStream<'scope, Event>, settings: &Settings) -> Outputs<'scope> {
    build_with(events, settings, Extras::default())
}

/// [`build`], restored from a checkpoint part and taking checkpoints as `extras` says.
pub fn build_with<'scope>(
    events: VecStream<'scope, Event>,
    settings: &Settings,
    extras: Extras,
) -> Outputs<'scope> {
    let scope = events.scope();
    // W(e-1) must reach admission at epoch e: a feedback edge delays the watermark by one epoch.
    let (feedback, delayed_watermark) = scope.feedback::<Vec<Micros>>(1);
    let (window, totals) = match extras.restore {
        Some(r) => (r.window, Some((r.mark - 1, r.totals))),
        None => (Vec::new(), None),
    };
    let admitted = admit(
        events,
        delayed_watermark,
        settings,
        window,
        extras.checkpoint.clone(),
    );
    let watermark = watermark(admitted.local_max, settings.initial_watermark);
    watermark.clone().connect_loop(feedback);
    let state = crate::arranged::state(
        admitted.accepted,
        watermark.clone(),
        settings,
        totals,
        extras.checkpoint,
    );
    Outputs {
        totals: state.totals,
        top: state.top,
        histogram: state.histogram,
        users: state.users,
        rejected: admitted.rejected,
        stats: admitted.stats,
        watermark,
        traces: Some(state.traces),
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
    /// `(((day, user), ()), epoch, (steps, 1))`: one update of the `totals` arrangement per
    /// accepted event (not consolidated: the arrangement's batcher sums them).
    accepted: VecStream<'scope, ((DayUser, ()), Epoch, Steps)>,
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
/// [`DedupWindow`]); otherwise it is accepted. Output `accepted`: one `totals` update per
/// accepted event, `((day, user), (steps, 1))`, **not consolidated**: the `totals` arrangement's
/// batcher sorts and sums an epoch's updates anyway, and summing them here first (a hash map of
/// the epoch's users) cost a cache miss per event. The window forgets ids as it passes, so its
/// memory follows the ids of one window, not the events of a day.
///
/// With a checkpoint plan, before it applies an epoch ≥ a mark T (or once both inputs have
/// passed T), it files the window and W(T − 1) as T's piece ([`crate::checkpoint`]).
fn admit<'scope>(
    events: VecStream<'scope, Event>,
    watermark: VecStream<'scope, Micros>,
    settings: &Settings,
    restored_window: Vec<(u64, Micros)>,
    plan: Option<CheckpointPlan>,
) -> Admitted<'scope> {
    let (grace, initial_watermark) = (settings.grace, settings.initial_watermark);
    let settings = settings.clone();
    let mut builder = OperatorBuilder::new("Admit".to_owned(), events.scope());
    let mut input = builder.new_input(events, Exchange::new(|e: &Event| route_user(e.user)));
    let mut wm_input = builder.new_input(watermark, Pipeline);
    let (accepted_out, accepted) = builder.new_output::<Vec<((DayUser, ()), Epoch, Steps)>>();
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
        window.restore(&restored_window);
        drop(restored_window);
        let latest = {
            let plan = plan.clone();
            move |epoch: Epoch| plan.as_ref().and_then(|p| p.latest(epoch))
        };
        // The last mark filed.
        let mut filed: Option<Epoch> = None;
        let mut file = move |mark: Epoch, window: &DedupWindow, wm: &mut WatermarkView| {
            if let Some(plan) = plan.as_ref().filter(|_| filed.is_none_or(|f| mark > f)) {
                // W(T − 1): the values stamped up to T (all in: both frontiers are past T).
                let w = wm.at(mark);
                plan.drafts
                    .borrow_mut()
                    .put_admission(mark, window.entries(), w);
                filed = Some(mark);
            }
        };
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
                // Before an epoch ≥ T is applied, the window is the state before T.
                if let Some(mark) = latest(time) {
                    file(mark, &window, &mut wm);
                }
                let w_prev = wm.at(time);
                let mut stats = Stats::default();
                let mut late = Vec::new();
                let mut max: Option<Micros> = None;
                // Straight into the session, which sends small containers: a vector of the
                // epoch's size would be fresh pages for the kernel to zero, every epoch.
                let mut accepted = accepted_h.session(&caps[0]);
                // Only events with an `event_id` depend on input order (the first one wins):
                // sort just those by position; the others go in any order (the batcher sums them).
                let mut with_id: Vec<Event> = Vec::new();
                let without_id = batches.into_iter().flatten().filter_map(|e| {
                    if e.event_id().is_some() {
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
                    if let Some(id) = event.event_id() {
                        let t = settings.ingestion_time(time, &event);
                        if !window.admit(id_key(event.user, event.day, id), t) {
                            stats.duplicate += 1;
                            return;
                        }
                    }
                    stats.accepted += 1;
                    max = Some(max.map_or(event.time, |m| m.max(event.time)));
                    let key = DayUser::new(event.day, event.user);
                    accepted.give(((key, ()), time, (i64::from(event.steps), 1)));
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
            // Both inputs past a mark T: no epoch before T can still change the window.
            let first = |i: usize| frontiers[i].frontier().first().copied();
            if let (Some(a), Some(b)) = (first(0), first(1)) {
                if let Some(mark) = a.min(b).checked_sub(1).and_then(&latest) {
                    file(mark, &window, &mut wm);
                }
            }
        }
    });

    Admitted {
        accepted,
        rejected,
        stats,
        local_max,
    }
}

/// The dead-letter record of a late event.
fn late_rejection(mut event: Event, watermark: Option<Micros>, grace: Micros) -> Rejection {
    let detail = format!(
        "day {} closed at {} (watermark {})",
        crate::event::format_day(event.day),
        crate::event::format_micros(close_of_day(event.day, grace)),
        watermark.map_or_else(|| "none".to_owned(), crate::event::format_micros),
    );
    // Sources keep the raw record of every event whose day could be closed (its close is not
    // after ingestion time + max clock skew, the watermark's upper bound); this is a fallback.
    let raw = match event.take_raw() {
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
