//! The state of the dataflow in named differential arrangements (design §13).
//!
//! | arrangement | key → diff | worker |
//! |---|---|---|
//! | `totals` | (day, user) → (steps, accepted events) | the user's |
//! | `histogram` | (day, total) → number of users | the day's |
//! | `users` | day → number of users | the day's |
//! | `by-total` | (day, Reverse(total), user) → 1: the day's users in listing order | the day's |
//! | `top-k candidates` | day → (Reverse(total), user): each worker's k best | the day's |
//! | `top-k` | day → [`TopRow`] | the day's |
//!
//! The operators that maintain them ([`totals`], [`top_k`], `Histogram`, `Users`) keep no copy of
//! what the arrangements hold: they read the old state from the traces (one seek per changed key)
//! and the new one from the batches. Their only private working set is each worker's top-k
//! candidates per open day (at most k entries), which totals that only grow make exact.
//!
//! **Retirement.** When a day closes after epoch e (W(e) ≥ close), [`totals`] walks its keys in
//! the `totals` trace and feeds their negation back (a feedback edge, epoch e + 1): every
//! arrangement derived from `totals` then retracts the day at e + 1, through the same code as any
//! change. Those retractions are marked as such where they leave for sinks (`totals` and `top-k`
//! rows are not sent; `histogram` and `users` changes of a closed day are dropped by
//! [`crate::deliver`]): sinks keep a closed day's final state (design §4).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

use differential_dataflow::operators::arrange::arrangement::arrange_core;
use differential_dataflow::operators::arrange::{Arranged, TraceAgent};
use differential_dataflow::trace::cursor::{cursor_list, Cursor};
use differential_dataflow::trace::implementations::ord_neu::VecOrdValBuilder;
use differential_dataflow::trace::implementations::ValSpine;
use differential_dataflow::trace::{SpanOf, TraceReader};
use differential_dataflow::AsCollection;
use rustc_hash::{FxHashMap, FxHashSet};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::{InputHandleCore, Operator, OutputBuilder, Session};
use timely::dataflow::operators::{Capability, CapabilityTrait, Concat};
use timely::progress::frontier::Antichain;

use crate::batcher::SortBatcher;
use crate::checkpoint::CheckpointPlan;
use crate::event::{is_closed, Day, Epoch, Micros, User};
use crate::keybatch::{KeyBatchSpine, KeyBuilder};
use crate::pipeline::{epoch_of, route_day, Coll, Settings, VecStream};
use crate::ranking::{rank_prefix, TopRow};

/// A user's accumulated `(steps, accepted events)` on a day; the second part keeps users whose
/// steps sum to 0 in the arrangement (a user is present while it is positive).
pub type Steps = (i64, i64);
/// A change of a user's total on a day, for sinks: `(day, user, old total, new total)`, the old
/// total absent when the user is new to the day.
pub type TotalChange = (Day, User, Option<u64>, u64);

/// A `totals` key: a (day, user) pair in 24 bytes, ordered as the pair. The tuple
/// `(Day, User)` takes 32 (its `u128` aligns to 16 bytes), and every sort, batch, merge and seek
/// of the million-key `totals` trace moves these keys.
#[derive(
    Copy,
    Clone,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    serde::Serialize,
    serde::Deserialize,
)]
pub struct DayUser {
    /// The day.
    pub day: Day,
    /// The user's 64 high bits, then its 64 low bits (ordered as the `u128`).
    user: [u64; 2],
}

impl DayUser {
    /// The key of `user` on `day`.
    #[inline]
    pub fn new(day: Day, user: User) -> DayUser {
        DayUser {
            day,
            user: [(user >> 64) as u64, user as u64],
        }
    }

    /// The user.
    #[inline]
    pub fn user(&self) -> User {
        (u128::from(self.user[0]) << 64) | u128::from(self.user[1])
    }
}

impl crate::batcher::SortPrefix for DayUser {
    /// By day, then the user's 96 high bits (as `(Day, User)`'s prefix).
    #[inline]
    fn sort_prefix(&self) -> u128 {
        crate::batcher::SortPrefix::sort_prefix(&(self.day, self.user()))
    }
}

/// `totals`: (day, user) → [`Steps`], on the user's worker.
pub type TotalsTrace = TraceAgent<KeyBatchSpine<DayUser, Steps>>;
/// A batch of `totals`.
type TotalsBatch = <TotalsTrace as TraceReader>::Batch;
/// `histogram`: (day, total) → number of users with that total, on the day's worker.
pub type HistogramTrace = TraceAgent<KeyBatchSpine<(Day, u64), isize>>;
/// `users`: day → number of ranked users, on the day's worker.
pub type UsersTrace = TraceAgent<KeyBatchSpine<Day, isize>>;
/// `by-total`: (day, Reverse(total), user), the day's users in listing order, on the day's worker.
pub type ByTotalTrace = TraceAgent<KeyBatchSpine<(Day, Reverse<u64>, User), isize>>;
/// `top-k candidates`: day → (Reverse(total), user), every worker's local top-k.
pub type CandidatesTrace = TraceAgent<ValSpine<Day, (Reverse<u64>, User), Epoch, isize>>;
/// `top-k`: day → the day's top-k rows, on the day's worker.
pub type TopTrace = TraceAgent<ValSpine<Day, TopRow, Epoch, isize>>;

/// The batcher of a key arrangement: one sort per sealed epoch ([`SortBatcher`]).
type KeyBatcher<K, R> = SortBatcher<K, (), Epoch, R, KeyBuilder<K, R>>;
/// The batcher of a key-value arrangement ([`SortBatcher`]).
type ValBatcher<K, V, R> = SortBatcher<K, V, Epoch, R, VecOrdValBuilder<K, V, Epoch, R>>;

/// The watermarks one worker has seen: W(e) for every epoch e before `through`.
#[derive(Debug, Default)]
pub struct WatermarkHistory {
    /// W(e) at every epoch e where it changed.
    changes: BTreeMap<Epoch, Micros>,
    /// W(e) is known for every e before this epoch.
    pub through: Epoch,
}

impl WatermarkHistory {
    /// W(e) (`None`: no change up to e; the job's initial watermark applies).
    pub fn at(&self, e: Epoch) -> Option<Micros> {
        self.changes.range(..=e).next_back().map(|(_, w)| *w)
    }

    /// Keeps what answers W(e) for e ≥ `epoch` − 1 only.
    pub fn forget_before(&mut self, epoch: Epoch) {
        let Some(last) = epoch.checked_sub(1) else {
            return;
        };
        let keep = self.at(last);
        self.changes = self.changes.split_off(&epoch);
        if let Some(w) = keep {
            self.changes.insert(last, w);
        }
    }
}

/// A watermark history shared by the operators of one worker and its [`crate::state::LiveState`].
pub type WatermarkLog = std::rc::Rc<std::cell::RefCell<WatermarkHistory>>;

/// The traces of one worker, for lookups ([`crate::state::LiveState`]).
pub struct Traces {
    /// See [`TotalsTrace`].
    pub totals: TotalsTrace,
    /// See [`HistogramTrace`].
    pub histogram: HistogramTrace,
    /// See [`UsersTrace`].
    pub users: UsersTrace,
    /// See [`ByTotalTrace`].
    pub by_total: ByTotalTrace,
    /// See [`TopTrace`].
    pub top: TopTrace,
    /// W(e) at every epoch e where it changed, as this worker saw it.
    pub watermarks: WatermarkLog,
}

/// What [`state`] produces for sinks, and the traces.
pub struct State<'scope> {
    /// `((day, user, old total, new total), epoch)`: one record per change of a user's total for
    /// sinks (the old total absent for a new user; retirements left out), at most one per user
    /// and epoch. [`crate::deliver`] hands sinks the retraction and the insertion it stands for.
    pub totals: VecStream<'scope, (TotalChange, Epoch)>,
    /// `(day, row)` changes of the top-k for sinks (retirements left out), consolidated per epoch.
    pub top: Coll<'scope, (Day, TopRow)>,
    /// `(day, total, n)` changes of the histogram, consolidated per epoch (a closed day's
    /// retirement included: sinks drop it).
    pub histogram: Coll<'scope, (Day, u64, u64)>,
    /// `(day, n)` changes of the number of users, consolidated per epoch (retirement included).
    pub users: Coll<'scope, (Day, u64)>,
    /// This worker's traces.
    pub traces: Traces,
}

/// Builds every arrangement from the accepted steps (`((day, user), (steps, 1))` per accepted
/// event, on the user's worker, not consolidated) and the watermark.
///
/// `restored`: `(epoch, (day, user, total) of this worker's users)` from a checkpoint part,
/// entered into `totals` at that epoch. `plan`: `Totals` files its piece of each checkpoint.
pub fn state<'scope>(
    accepted: VecStream<'scope, ((DayUser, ()), Epoch, Steps)>,
    watermark: VecStream<'scope, Micros>,
    settings: &Settings,
    restored: Option<(Epoch, Vec<(Day, User, i64)>)>,
    plan: Option<CheckpointPlan>,
) -> State<'scope> {
    let scope = accepted.scope();
    let (retire_handle, retired) = timely::dataflow::operators::Feedback::feedback::<
        Vec<((DayUser, ()), Epoch, Steps)>,
    >(&scope, 1);
    let mut steps = accepted.concat(retired);
    if let Some((epoch, totals)) = restored {
        steps = steps.concat(restore(scope, epoch, totals));
    }
    let totals_arranged: Arranged<'scope, TotalsTrace> =
        arrange_core::<_, _, KeyBatcher<DayUser, Steps>, _>(
            steps,
            Pipeline,
            "totals",
            KeyBatcher::new,
        );
    let watermarks: WatermarkLog = Default::default();
    let changes = totals(
        totals_arranged.clone(),
        watermark,
        settings,
        watermarks.clone(),
        plan,
    );
    timely::dataflow::operators::ConnectLoop::connect_loop(changes.retire, retire_handle);

    let histogram_arranged: Arranged<'scope, HistogramTrace> =
        arrange_core::<_, _, KeyBatcher<(Day, u64), isize>, _>(
            changes.contributions,
            Exchange::new(|((k, ()), _, _): &(((Day, u64), ()), Epoch, isize)| route_day(k.0)),
            "histogram",
            KeyBatcher::new,
        );
    let histogram = count_changes(
        histogram_arranged.clone(),
        "Histogram",
        |&(day, total), n| (day, total, n as u64),
    );
    let users_arranged: Arranged<'scope, UsersTrace> =
        arrange_core::<_, _, KeyBatcher<Day, isize>, _>(
            changes.presence,
            Exchange::new(|((day, ()), _, _): &((Day, ()), Epoch, isize)| route_day(*day)),
            "users",
            KeyBatcher::new,
        );
    let users = count_changes(users_arranged.clone(), "Users", |&day, n| (day, n as u64));
    let by_total: Arranged<'scope, ByTotalTrace> =
        arrange_core::<_, _, KeyBatcher<(Day, Reverse<u64>, User), isize>, _>(
            changes.index,
            Exchange::new(
                |((k, ()), _, _): &(((Day, Reverse<u64>, User), ()), Epoch, isize)| route_day(k.0),
            ),
            "by-total",
            KeyBatcher::new,
        );
    let candidates: Arranged<'scope, CandidatesTrace> =
        arrange_core::<_, _, ValBatcher<Day, (Reverse<u64>, User), isize>, _>(
            changes.candidates,
            Exchange::new(
                |((day, _), _, _): &((Day, (Reverse<u64>, User)), Epoch, isize)| route_day(*day),
            ),
            "top-k candidates",
            ValBatcher::new,
        );
    let rows = top_k(candidates, settings.k);
    let top_arranged: Arranged<'scope, TopTrace> =
        arrange_core::<_, _, ValBatcher<Day, TopRow, isize>, _>(
            rows.all,
            Pipeline,
            "top-k",
            ValBatcher::new,
        );
    State {
        totals: changes.totals,
        top: rows.sink.as_collection(),
        histogram,
        users,
        traces: Traces {
            totals: totals_arranged.trace,
            histogram: histogram_arranged.trace,
            users: users_arranged.trace,
            by_total: by_total.trace,
            top: top_arranged.trace,
            watermarks,
        },
    }
}

/// The `Restore` source: a checkpoint part's totals as updates of the `totals` arrangement at
/// `epoch` (one per user and day, as if its steps had been accepted then); then nothing.
fn restore<'scope>(
    scope: timely::dataflow::Scope<'scope, Epoch>,
    epoch: Epoch,
    totals: Vec<(Day, User, i64)>,
) -> VecStream<'scope, ((DayUser, ()), Epoch, Steps)> {
    use timely::container::CapacityContainerBuilder;
    let mut totals = Some(totals);
    timely::dataflow::operators::generic::operator::source::<
        _,
        CapacityContainerBuilder<Vec<((DayUser, ()), Epoch, Steps)>>,
        _,
        _,
    >(scope, "Restore", move |cap, _info| {
        let mut cap = Some(cap);
        move |output| {
            if let (Some(cap), Some(totals)) = (cap.take(), totals.take()) {
                let at = cap.delayed(&epoch);
                output.session(&at).give_iterator(
                    totals.into_iter().map(|(day, user, steps)| {
                        ((DayUser::new(day, user), ()), epoch, (steps, 1))
                    }),
                );
            }
        }
    })
}

/// `(day, user, total)` of every user in `before` (all of its updates) and `new` (its updates
/// before `mark`): the `totals` trace before `mark`, when `before` holds every batch before the
/// ones taken (`new`) and those start at or before `mark`. Sorted by (day, user).
fn totals_before(
    before: Vec<TotalsBatch>,
    new: Vec<TotalsBatch>,
    mark: Epoch,
) -> Vec<(Day, User, i64)> {
    let walk = |batches: Vec<TotalsBatch>, keep: &dyn Fn(Epoch) -> bool| {
        let mut out: Vec<(DayUser, Steps)> = Vec::new();
        let (mut cursor, storage) = cursor_list(batches);
        while let Some(&key) = cursor.get_key(&storage) {
            let mut acc: Steps = (0, 0);
            cursor.map_times(&storage, |t, d| {
                if keep(*t) {
                    acc.0 += d.0;
                    acc.1 += d.1;
                }
            });
            if acc != (0, 0) {
                out.push((key, acc));
            }
            cursor.step_key(&storage);
        }
        out
    };
    let old = walk(before, &|_| true);
    let new = walk(new, &|t| t < mark);
    // Merge two sorted runs; a user is present while it has accepted events.
    let mut out = Vec::with_capacity(old.len() + new.len());
    let (mut a, mut b) = (old.into_iter().peekable(), new.into_iter().peekable());
    loop {
        let next = match (a.peek(), b.peek()) {
            (Some(x), Some(y)) if x.0 == y.0 => {
                let (k, s) = a.next().expect("peeked");
                let (_, t) = b.next().expect("peeked");
                (k, (s.0 + t.0, s.1 + t.1))
            }
            (Some(x), Some(y)) if x.0 < y.0 => a.next().expect("peeked"),
            (Some(_), Some(_)) | (None, Some(_)) => b.next().expect("peeked"),
            (Some(_), None) => a.next().expect("peeked"),
            (None, None) => break,
        };
        if next.1 .1 > 0 {
            out.push((next.0.day, next.0.user(), next.1 .0));
        }
    }
    out
}

/// What an operator following an arrangement keeps between activations: a handle on the trace
/// (for each key's value before the batches it receives) and how far it has read.
///
/// Invariant: `lower` is the upper bound of the batches already processed (all in the trace),
/// `upper` that of the batches last taken; [`Follower::advance`] lets the trace compact to
/// `upper`, so a follower never holds back merges beyond what it has read.
struct Follower<Tr: TraceReader<Time = Epoch>> {
    trace: Tr,
    lower: Antichain<Epoch>,
    upper: Antichain<Epoch>,
}

impl<Tr: TraceReader<Time = Epoch>> Follower<Tr> {
    fn new(trace: Tr) -> Self {
        Follower {
            trace,
            lower: Antichain::from_elem(0),
            upper: Antichain::from_elem(0),
        }
    }

    /// Drains `input`: the batches received, with capabilities for `ports` outputs at the
    /// first message's time; `None` when no batch came (an empty span only moves `upper`).
    fn take<P>(
        &mut self,
        input: &mut InputHandleCore<Epoch, Vec<SpanOf<Tr>>, P>,
        ports: usize,
    ) -> Option<(Vec<Capability<Epoch>>, Vec<Tr::Batch>)>
    where
        P: timely::communication::Pull<timely::dataflow::channels::Message<Epoch, Vec<SpanOf<Tr>>>>,
    {
        let mut batches = Vec::new();
        let mut caps: Option<Vec<Capability<Epoch>>> = None;
        input.for_each(|c, data| {
            if caps.is_none() {
                caps = Some(
                    (0..ports)
                        .map(|p| c.retain_least(p).expect("capability"))
                        .collect(),
                );
            }
            for span in data.drain(..) {
                self.upper.clone_from(span.upper());
                if let Some(batch) = span.inner {
                    batches.push(batch);
                }
            }
        });
        caps.filter(|_| !batches.is_empty())
            .map(|caps| (caps, batches))
    }

    /// The trace's batches before those last taken (the old values).
    fn before(&mut self) -> Vec<Tr::Batch> {
        self.trace
            .batches_through(self.lower.borrow())
            .expect("the trace through the last batch")
    }

    /// The trace's batches through those last taken.
    fn through_last(&mut self) -> Vec<Tr::Batch> {
        self.trace
            .batches_through(self.upper.borrow())
            .expect("the trace through the last batch")
    }

    /// After the batches taken are processed: the trace may compact through them.
    fn advance(&mut self) {
        self.trace.set_logical_compaction(self.upper.borrow());
        self.trace.set_physical_compaction(self.upper.borrow());
        self.lower.clone_from(&self.upper);
    }
}

/// What [`totals`] produces.
struct TotalsChanges<'scope> {
    /// One record per change of a user's total for sinks (see [`State::totals`]).
    totals: VecStream<'scope, (TotalChange, Epoch)>,
    /// `((day, total), n)`: the net number of users who reached (n > 0) or left (n < 0) that
    /// total at the epoch (input of `histogram`), consolidated per epoch.
    contributions: VecStream<'scope, (((Day, u64), ()), Epoch, isize)>,
    /// `(day, n)`: the net number of users who appeared on (n > 0), or were retired from
    /// (n < 0), the day at the epoch (input of `users`), consolidated per epoch.
    presence: VecStream<'scope, ((Day, ()), Epoch, isize)>,
    /// `((day, Reverse(total), user), ±1)` (input of `by-total`).
    index: VecStream<'scope, (((Day, Reverse<u64>, User), ()), Epoch, isize)>,
    /// `(day, (Reverse(total), user), ±1)`: this worker's top-k candidates of the day.
    candidates: VecStream<'scope, ((Day, (Reverse<u64>, User)), Epoch, isize)>,
    /// Negated `totals` of the days that closed (fed back into `totals` one epoch later).
    retire: VecStream<'scope, ((DayUser, ()), Epoch, Steps)>,
}

/// One change of a user's total at one epoch: `old`/`new` absent when the user had/has none.
struct Change {
    time: Epoch,
    day: Day,
    user: User,
    old: Option<u64>,
    new: Option<u64>,
}

/// Derives every output of a change of a user's total: the change for sinks (retirements left
/// out), the `by-total` index, the histogram's
/// and `users`' contributions (summed per epoch in the maps) and the worker's top-k candidates.
/// Changes must come in time order (per user and, for the candidates, across users).
struct Emit<'a, T, I, K> {
    k: usize,
    local_top: &'a mut FxHashMap<Day, BTreeSet<(Reverse<u64>, User)>>,
    contributions: &'a mut FxHashMap<(Day, u64, Epoch), isize>,
    presences: &'a mut FxHashMap<(Day, Epoch), isize>,
    totals: T,
    index: I,
    candidates: K,
}

impl<T, I, K> Emit<'_, T, I, K>
where
    T: Give<(TotalChange, Epoch)>,
    I: Give<(((Day, Reverse<u64>, User), ()), Epoch, isize)>,
    K: Give<((Day, (Reverse<u64>, User)), Epoch, isize)>,
{
    fn change(&mut self, c: Change) {
        let Change {
            time,
            day,
            user,
            old,
            new,
        } = c;
        if let Some(old) = old {
            *self.contributions.entry((day, old, time)).or_default() -= 1;
            self.index
                .give((((day, Reverse(old), user), ()), time, -1isize));
        }
        match (old, new) {
            (None, Some(_)) => *self.presences.entry((day, time)).or_default() += 1,
            (Some(_), None) => *self.presences.entry((day, time)).or_default() -= 1,
            _ => {}
        }
        let set = self.local_top.entry(day).or_default();
        if let Some(new) = new {
            // One record for the retraction and the insertion: half the records handed to the
            // exchange to the sinks' worker.
            self.totals.give(((day, user, old, new), time));
            *self.contributions.entry((day, new, time)).or_default() += 1;
            self.index
                .give((((day, Reverse(new), user), ()), time, 1isize));
            // Local top-k by insertion only (totals only grow).
            let entry = (Reverse(new), user);
            if set.len() < self.k || set.last().is_some_and(|last| entry < *last) {
                if let Some(old) = old {
                    if set.remove(&(Reverse(old), user)) {
                        self.candidates
                            .give(((day, (Reverse(old), user)), time, -1isize));
                    }
                }
                set.insert(entry);
                self.candidates.give(((day, entry), time, 1isize));
                if set.len() > self.k {
                    let evicted = set.pop_last().expect("non-empty");
                    self.candidates.give(((day, evicted), time, -1isize));
                }
            }
        } else if let Some(old) = old {
            // Retirement: the day's candidates leave with its users.
            if set.remove(&(Reverse(old), user)) {
                self.candidates
                    .give(((day, (Reverse(old), user)), time, -1isize));
            }
        }
    }
}

/// Something records can be given to one at a time: an output's session.
trait Give<D> {
    fn give(&mut self, record: D);
}

impl<D, CT> Give<D> for Session<'_, '_, Epoch, CapacityContainerBuilder<Vec<D>>, CT>
where
    CT: CapabilityTrait<Epoch>,
    D: Clone + 'static,
{
    #[inline]
    fn give(&mut self, record: D) {
        Session::give(self, record);
    }
}

/// Changed keys whose old values `Totals` looks up together, one trace batch after another.
const BLOCK: usize = 1024;

/// The `Totals` operator: reads each changed (day, user) in the `totals` batches and its old
/// value in the trace, and derives the changes of every other arrangement's input.
///
/// All outputs are consolidated per epoch: the totals hold one change per changed user and
/// epoch, the index and the candidates one retraction and one insertion; the histogram's and `users`' inputs
/// hold one net count per (day, total) and per day. On the watermark it retires closed days (see
/// the module docs).
fn totals<'scope>(
    arranged: Arranged<'scope, TotalsTrace>,
    watermark: VecStream<'scope, Micros>,
    settings: &Settings,
    log: WatermarkLog,
    plan: Option<CheckpointPlan>,
) -> TotalsChanges<'scope> {
    let (k, grace, initial) = (settings.k, settings.grace, settings.initial_watermark);
    let mut follower = Follower::new(arranged.trace.clone());
    let mut builder = OperatorBuilder::new("Totals".to_owned(), arranged.stream.scope());
    let mut input = builder.new_input(arranged.stream, Pipeline);
    let mut wm_input = builder.new_input(watermark, Pipeline);
    let (totals_out, totals) = builder.new_output::<Vec<(TotalChange, Epoch)>>();
    let (contrib_out, contributions) =
        builder.new_output::<Vec<(((Day, u64), ()), Epoch, isize)>>();
    let (presence_out, presence) = builder.new_output::<Vec<((Day, ()), Epoch, isize)>>();
    let (index_out, index) =
        builder.new_output::<Vec<(((Day, Reverse<u64>, User), ()), Epoch, isize)>>();
    let (cand_out, candidates) =
        builder.new_output::<Vec<((Day, (Reverse<u64>, User)), Epoch, isize)>>();
    let (retire_out, retire) = builder.new_output::<Vec<((DayUser, ()), Epoch, Steps)>>();
    let mut totals_out = OutputBuilder::from(totals_out);
    let mut contrib_out = OutputBuilder::from(contrib_out);
    let mut presence_out = OutputBuilder::from(presence_out);
    let mut index_out = OutputBuilder::from(index_out);
    let mut cand_out = OutputBuilder::from(cand_out);
    let mut retire_out = OutputBuilder::from(retire_out);

    builder.build(move |_capabilities| {
        // Per open day with users on this worker: its first k users in listing order.
        let mut local_top: FxHashMap<Day, BTreeSet<(Reverse<u64>, User)>> = FxHashMap::default();
        // Days retired, until their retraction has come back.
        let mut retiring: FxHashSet<Day> = FxHashSet::default();
        // Watermark values by epoch, each with a capability for the retirement output.
        let mut pending: BTreeMap<Epoch, (Capability<Epoch>, Micros)> = BTreeMap::new();
        let mut current: Option<Micros> = initial;
        let mut changes: Vec<Change> = Vec::new();
        // The epoch's histogram and presence changes, summed before they leave: a day has few
        // distinct totals, so two updates per changed user collapse to a few hundred records
        // (instead of being exchanged, sorted and consolidated by the arrangements' batchers).
        let mut contributions: FxHashMap<(Day, u64, Epoch), isize> = FxHashMap::default();
        let mut presences: FxHashMap<(Day, Epoch), isize> = FxHashMap::default();
        // A block of changed keys: each with the end of its updates in `updates` and its old
        // value; kept between activations (at most `BLOCK` keys).
        let mut block: Vec<(DayUser, usize, Steps)> = Vec::with_capacity(BLOCK);
        let mut updates: Vec<(Epoch, Steps)> = Vec::new();
        // The last checkpoint mark filed.
        let mut filed: Option<Epoch> = None;
        move |frontiers| {
            wm_input.for_each(|cap, data| {
                if let Some(&w) = data.iter().max() {
                    let t = epoch_of(&cap);
                    let entry = pending.entry(t).or_insert_with(|| (cap.delayed(&t, 5), w));
                    entry.1 = entry.1.max(w);
                }
            });
            let taken = follower.take(&mut input, 5);
            // A mark T the input has reached (lower ≤ T, and T ≤ upper or T ≤ the input's
            // frontier): the trace before T is the trace through `lower` plus the new batches'
            // updates before T, readable only now, before `advance` lets the trace compact
            // past T. The frontier counts: an idle arrangement holds no capability and sends no
            // batch while its frontier moves, and every batch before the frontier is in.
            let reached = frontiers[0]
                .frontier()
                .first()
                .copied()
                .max(follower.upper.elements().first().copied());
            if let (Some(plan), Some(&lower), Some(reached)) =
                (&plan, follower.lower.elements().first(), reached)
            {
                if let Some(mark) = plan
                    .latest(reached)
                    .filter(|&m| m >= lower && filed.is_none_or(|f| m > f))
                {
                    let new = taken.as_ref().map_or_else(Vec::new, |(_, b)| b.clone());
                    let at = totals_before(follower.before(), new, mark);
                    plan.drafts.borrow_mut().put_totals(mark, at);
                    filed = Some(mark);
                }
            }
            if let Some((caps, batches)) = taken {
                // The batches span one epoch (the usual case): each change is emitted as it is
                // found, straight into the outputs' sessions. Otherwise the changes are
                // gathered and emitted in time order, which the top-k candidates need.
                let one_epoch = match (follower.lower.first(), follower.upper.first()) {
                    (Some(&lower), Some(&upper)) => upper == lower + 1,
                    _ => false,
                };
                let (mut batch_cursor, batch_storage) = cursor_list(batches);
                // One position per batch of the trace, each moving forward through the blocks.
                let before = follower.before();
                let mut positions: Vec<usize> = vec![0; before.len()];
                // The outputs' sessions chunk the records into small containers: one vector of
                // the epoch's size per output would be fresh pages, zeroed by the kernel, every
                // epoch (the allocator returns such large blocks once freed).
                let mut totals_h = totals_out.activate();
                let mut index_h = index_out.activate();
                let mut cand_h = cand_out.activate();
                let mut emit = Emit {
                    k,
                    local_top: &mut local_top,
                    contributions: &mut contributions,
                    presences: &mut presences,
                    totals: totals_h.session(&caps[0]),
                    index: index_h.session(&caps[3]),
                    candidates: cand_h.session(&caps[4]),
                };
                // The changed keys a block at a time: their new updates, then their old values
                // read one trace batch after another (a tight forward walk of each batch's keys,
                // rather than a cursor over all of them that compares every batch's current key
                // at every seek), then their changes.
                loop {
                    block.clear();
                    updates.clear();
                    while let Some(&key) = batch_cursor.get_key(&batch_storage) {
                        let start = updates.len();
                        batch_cursor.map_times(&batch_storage, |t, d| updates.push((*t, *d)));
                        updates[start..].sort_unstable_by_key(|(t, _)| *t);
                        block.push((key, updates.len(), (0, 0)));
                        batch_cursor.step_key(&batch_storage);
                        if block.len() == BLOCK {
                            break;
                        }
                    }
                    for (batch, pos) in before.iter().zip(positions.iter_mut()) {
                        for (key, _, old) in block.iter_mut() {
                            *pos = batch.seek(*pos, key);
                            match batch.keys().get(*pos) {
                                None => break,
                                // Every time counts (the batch is before the new ones): the
                                // diffs alone, not the times (a cache miss fewer per key).
                                Some(found) if found == key => {
                                    for d in batch.diffs(*pos) {
                                        old.0 += d.0;
                                        old.1 += d.1;
                                    }
                                }
                                Some(_) => {}
                            }
                        }
                    }
                    let mut start = 0;
                    for &(key, end, old) in &block {
                        let (day, user) = (key.day, key.user());
                        let mut acc: Steps = old;
                        for &(time, d) in &updates[start..end] {
                            let old = (acc.1 > 0).then_some(acc.0 as u64);
                            acc.0 += d.0;
                            acc.1 += d.1;
                            let new = (acc.1 > 0).then_some(acc.0 as u64);
                            if old != new {
                                let change = Change {
                                    time,
                                    day,
                                    user,
                                    old,
                                    new,
                                };
                                if one_epoch {
                                    emit.change(change);
                                } else {
                                    changes.push(change);
                                }
                            }
                        }
                        start = end;
                    }
                    if block.len() < BLOCK {
                        break;
                    }
                }
                // The top-k candidates must follow the epochs in order.
                changes.sort_by_key(|c| c.time);
                for change in changes.drain(..) {
                    emit.change(change);
                }
                drop(emit);
                local_top.retain(|day, set| {
                    let keep = !set.is_empty();
                    if !keep {
                        retiring.remove(day);
                    }
                    keep
                });
                contrib_out.activate().session(&caps[1]).give_iterator(
                    contributions
                        .drain()
                        .filter(|(_, n)| *n != 0)
                        .map(|((day, total, time), n)| (((day, total), ()), time, n)),
                );
                presence_out.activate().session(&caps[2]).give_iterator(
                    presences
                        .drain()
                        .filter(|(_, n)| *n != 0)
                        .map(|((day, time), n)| ((day, ()), time, n)),
                );
            }
            follower.advance();

            // Retire the days W(t) closed, once W(t) is final and every batch through t is in.
            while let Some((&t, _)) = pending.first_key_value() {
                if frontiers[1].less_equal(&t) || frontiers[0].less_equal(&t) {
                    break;
                }
                let (cap, w) = pending.remove(&t).expect("present");
                if current.is_some_and(|c| w <= c) {
                    continue;
                }
                current = Some(w);
                log.borrow_mut().changes.insert(t, w);
                let mut closing: Vec<Day> = local_top
                    .keys()
                    .copied()
                    .filter(|&d| is_closed(d, current, grace) && !retiring.contains(&d))
                    .collect();
                // In key order: a cursor's seeks only go forward (in the hash map's order, a
                // day sorting before one already walked was skipped and never retired).
                closing.sort_unstable();
                if closing.is_empty() {
                    continue;
                }
                let (mut cursor, storage) = cursor_list(follower.through_last());
                // Straight into the session (small containers): a closing day's retirement is
                // one update per user of the day.
                let mut retire_h = retire_out.activate();
                let mut out = retire_h.session(&cap);
                for day in closing {
                    retiring.insert(day);
                    cursor.seek_key(&storage, &DayUser::new(day, 0));
                    while let Some(&key) = cursor.get_key(&storage) {
                        if key.day != day {
                            break;
                        }
                        let mut acc: Steps = (0, 0);
                        cursor.map_times(&storage, |_, diff| {
                            acc.0 += diff.0;
                            acc.1 += diff.1;
                        });
                        if acc != (0, 0) {
                            // Stamped t + 1 in the record as in the message: the feedback edge
                            // delays the message's timestamp, not the records' own times, and
                            // an update at t would land behind every frontier downstream (in
                            // an epoch already delivered, or in the one being delivered).
                            out.give(((key, ()), t + 1, (-acc.0, -acc.1)));
                        }
                        cursor.step_key(&storage);
                    }
                }
            }
            // W(e) is final here for every e both inputs have passed.
            let through = |f: &timely::progress::frontier::MutableAntichain<Epoch>| {
                f.frontier().first().copied().unwrap_or(Epoch::MAX)
            };
            let through = through(&frontiers[0]).min(through(&frontiers[1]));
            let through = pending
                .first_key_value()
                .map_or(through, |(&t, _)| t.min(through));
            log.borrow_mut().through = through;
        }
    });

    TotalsChanges {
        totals,
        contributions,
        presence,
        index,
        candidates,
        retire,
    }
}

/// The rows [`top_k`] produces.
struct Rows<'scope> {
    /// Every change of the `top-k` rows (`((day, row), ()), ±1`), retirements included.
    all: VecStream<'scope, ((Day, TopRow), Epoch, isize)>,
    /// The same for sinks, retirements left out.
    sink: VecStream<'scope, ((Day, TopRow), Epoch, isize)>,
}

/// The `TopK` operator: for every day whose candidates changed, the rows before (from the
/// `top-k candidates` trace) and after (with the batch), and their difference.
///
/// Output consolidated per epoch: for every position whose row changed, the old row retracted
/// and the new one inserted.
fn top_k<'scope>(candidates: Arranged<'scope, CandidatesTrace>, k: usize) -> Rows<'scope> {
    let mut follower = Follower::new(candidates.trace.clone());
    let mut builder = OperatorBuilder::new("TopK".to_owned(), candidates.stream.scope());
    let mut input = builder.new_input(candidates.stream, Pipeline);
    let (all_out, all) = builder.new_output::<Vec<((Day, TopRow), Epoch, isize)>>();
    let (sink_out, sink) = builder.new_output::<Vec<((Day, TopRow), Epoch, isize)>>();
    let mut all_out = OutputBuilder::from(all_out);
    let mut sink_out = OutputBuilder::from(sink_out);
    builder.build(move |_capabilities| {
        move |_frontiers| {
            if let Some((caps, batches)) = follower.take(&mut input, 2) {
                let (mut batch_cursor, batch_storage) = cursor_list(batches);
                let (mut trace_cursor, trace_storage) = cursor_list(follower.before());
                let (mut all_buf, mut sink_buf) = (Vec::new(), Vec::new());
                while let Some(&day) = batch_cursor.get_key(&batch_storage) {
                    // The day's candidates before this batch.
                    let mut set: BTreeSet<(Reverse<u64>, User)> = BTreeSet::new();
                    trace_cursor.seek_key(&trace_storage, &day);
                    if trace_cursor.get_key(&trace_storage) == Some(&day) {
                        while let Some(&val) = trace_cursor.get_val(&trace_storage) {
                            let mut n = 0isize;
                            trace_cursor.map_times(&trace_storage, |_, d| n += *d);
                            if n > 0 {
                                set.insert(val);
                            }
                            trace_cursor.step_val(&trace_storage);
                        }
                    }
                    // The batch's changes, epoch by epoch.
                    let mut updates: Vec<(Epoch, (Reverse<u64>, User), isize)> = Vec::new();
                    while let Some(&val) = batch_cursor.get_val(&batch_storage) {
                        batch_cursor.map_times(&batch_storage, |t, d| updates.push((*t, val, *d)));
                        batch_cursor.step_val(&batch_storage);
                    }
                    updates.sort_unstable();
                    let mut rows = rank_prefix(set.iter().map(|&(Reverse(s), u)| (u, s)), k);
                    let mut i = 0;
                    while i < updates.len() {
                        let time = updates[i].0;
                        while i < updates.len() && updates[i].0 == time {
                            let (_, val, d) = updates[i];
                            if d > 0 {
                                set.insert(val);
                            } else {
                                set.remove(&val);
                            }
                            i += 1;
                        }
                        let new_rows = rank_prefix(set.iter().map(|&(Reverse(s), u)| (u, s)), k);
                        // An empty day was retired: its rows leave the arrangement only.
                        let retired = set.is_empty();
                        for p in 0..rows.len().max(new_rows.len()) {
                            let (old, new) = (rows.get(p), new_rows.get(p));
                            if old != new {
                                for (row, d) in [(old, -1isize), (new, 1)] {
                                    if let Some(row) = row {
                                        all_buf.push(((day, *row), time, d));
                                        if !retired {
                                            sink_buf.push(((day, *row), time, d));
                                        }
                                    }
                                }
                            }
                        }
                        rows = new_rows;
                    }
                    batch_cursor.step_key(&batch_storage);
                }
                all_out
                    .activate()
                    .session(&caps[0])
                    .give_container(&mut all_buf);
                sink_out
                    .activate()
                    .session(&caps[1])
                    .give_container(&mut sink_buf);
            }
            follower.advance();
        }
    });
    Rows { all, sink }
}

/// A count arrangement's changes: for every key whose count changed at an epoch, the old
/// `(key, count)` retracted and the new one inserted (absent when zero), as `out(key, count)`;
/// consolidated per epoch. Like differential's `count_total`, with a name of its own.
fn count_changes<'scope, K, D>(
    arranged: Arranged<'scope, TraceAgent<KeyBatchSpine<K, isize>>>,
    name: &str,
    out: impl Fn(&K, isize) -> D + 'static,
) -> Coll<'scope, D>
where
    K: Ord + Clone + 'static,
    D: differential_dataflow::Data,
{
    let mut follower = Follower::new(arranged.trace.clone());
    arranged
        .stream
        .unary(Pipeline, name, move |_, _| {
            move |input, output| {
                if let Some((caps, batches)) = follower.take(input, 1) {
                    let mut session = output.session(&caps[0]);
                    let (mut batch_cursor, batch_storage) = cursor_list(batches);
                    let (mut trace_cursor, trace_storage) = cursor_list(follower.before());
                    let mut times: Vec<(Epoch, isize)> = Vec::new();
                    while let Some(key) = batch_cursor.get_key(&batch_storage) {
                        let mut count = 0isize;
                        trace_cursor.seek_key(&trace_storage, key);
                        if trace_cursor.get_key(&trace_storage) == Some(key) {
                            trace_cursor.map_times(&trace_storage, |_, d| count += *d);
                        }
                        times.clear();
                        batch_cursor.map_times(&batch_storage, |t, d| times.push((*t, *d)));
                        times.sort_unstable();
                        for &(time, d) in &times {
                            if count != 0 {
                                session.give((out(key, count), time, -1isize));
                            }
                            count += d;
                            if count != 0 {
                                session.give((out(key, count), time, 1isize));
                            }
                        }
                        batch_cursor.step_key(&batch_storage);
                    }
                }
                follower.advance();
            }
        })
        .as_collection()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batcher::SortPrefix;
    use crate::random::SplitMix64;

    /// `DayUser` orders, round-trips and prefixes as the `(Day, User)` pair it stands for.
    #[test]
    fn day_user_is_the_pair() {
        let mut rng = SplitMix64(13);
        let mut user = || match rng.next_u64() % 4 {
            0 => u128::from(rng.next_u64()),
            1 => u128::MAX - u128::from(rng.next_u64() % 3),
            _ => (u128::from(rng.next_u64()) << 64) | u128::from(rng.next_u64()),
        };
        let days = [i32::MIN, -1, 0, 1, 20_000, i32::MAX];
        let pairs: Vec<(Day, User)> = (0..2_000).map(|i| (days[i % days.len()], user())).collect();
        for a in &pairs {
            let ka = DayUser::new(a.0, a.1);
            assert_eq!((ka.day, ka.user()), *a);
            assert_eq!(ka.sort_prefix(), a.sort_prefix());
            for b in pairs.iter().take(200) {
                let kb = DayUser::new(b.0, b.1);
                assert_eq!(ka.cmp(&kb), a.cmp(b), "{a:?} {b:?}");
            }
        }
        assert_eq!(std::mem::size_of::<DayUser>(), 24);
    }
}
