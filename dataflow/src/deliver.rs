//! Delivery of completed epochs to the sinks.
//!
//! The outputs are gathered per process ([`Routing`]): on the first worker of each process
//! (its *leader*), buffered per epoch, and handed over as one [`EpochOutput`] once *every*
//! input frontier has passed the epoch: a sink never sees a partial epoch, and sees epochs in
//! increasing order. What each leader gets is its process's share (design §7: every process
//! writes the results it owns):
//! - `totals`, `histogram`, `users`: the records its own workers produced (the keys they own),
//!   which never cross to another process;
//! - `rejected`: the records of the Kafka partitions its workers read (whoever rejected them),
//!   so that each partition's dead-letter objects are written by one process;
//! - `positions`: every partition's (broadcast to every leader: each process's progress rows
//!   then say where every partition stands after the epoch);
//! - `top` and `stats` (the counters, rejections included): only on worker 0, the one place
//!   that writes what is global (the top-k, the cluster's progress record).
//!
//! With one process (or [`Routing::gather`]) worker 0 gets everything, as a single sink needs.
//!
//! Each vector of an `EpochOutput` is consolidated (the producing operators own disjoint keys
//! and emit one net change per key and epoch); the retractions of a closed day leaving the
//! arrangements (the epoch after it closed) are dropped here, and an epoch with nothing else
//! is not delivered. All but `totals` are sorted here so that they do not depend on the number
//! of workers; `totals` (one or two records per changed user: the largest by far) is left in
//! arrival order, which upserting sinks do not need.

use std::collections::{BTreeMap, BTreeSet};

use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::vec::{Broadcast, Map};
use timely::dataflow::operators::Concatenate;
use timely::dataflow::operators::Probe;
use timely::dataflow::ProbeHandle;

use crate::arranged::TotalChange;
use crate::event::{is_closed, Day, Epoch, Micros, Reason, Rejection};
use crate::output::{EpochOutput, Position, Stats};
use crate::pipeline::{epoch_of, Outputs, Settings, VecStream};
use crate::ranking::TopRow;

/// Which worker gathers which outputs (see the module docs).
#[derive(Clone, Copy, Debug)]
pub struct Routing {
    /// Workers per process: worker w belongs to process w / threads, whose leader is the
    /// worker w − w mod threads.
    pub threads: usize,
    /// The partition of a record's position (a Kafka position's high bits; see
    /// `rankmysteps_sources::kafka::record_pos`): its rejections go to the process that reads
    /// that partition, partition p being read by worker p mod workers.
    pub partition_of: fn(u64) -> u32,
}

impl Routing {
    /// Everything to worker 0 (one sink for the whole job).
    pub fn gather() -> Routing {
        Routing {
            threads: usize::MAX,
            partition_of: |_| 0,
        }
    }

    /// Each process's share to its leader, `threads` workers per process; `partition_of`
    /// reads a position's partition.
    pub fn per_process(threads: usize, partition_of: fn(u64) -> u32) -> Routing {
        Routing {
            threads: threads.max(1),
            partition_of,
        }
    }

    /// The leader of worker `worker`'s process.
    pub fn leader_of(&self, worker: usize) -> usize {
        worker - worker % self.threads
    }
}

/// Everything a sink may receive but the totals, as one stream so that it can be gathered in one
/// exchange (the totals, by far the most records, have a stream of their own).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
enum Item {
    Top((Day, TopRow), Epoch, isize),
    Histogram((Day, u64, u64), Epoch, isize),
    Users((Day, u64), Epoch, isize),
    Rejected(Rejection),
    /// One rejection, counted (on worker 0) where its record goes to its partition's process.
    Counted(Reason),
    Stats(Stats),
}

/// Gathers `outputs`, the sources' rejections and positions on the leaders of `routing` and
/// calls `on_epoch` there with each completed epoch of the leader's share, in order (on every
/// other worker it is never called). `probe`'s frontier becomes the first epoch not yet
/// delivered (on every worker).
pub fn deliver<'scope, F>(
    outputs: Outputs<'scope>,
    source_rejected: VecStream<'scope, Rejection>,
    positions: VecStream<'scope, Position>,
    settings: &Settings,
    routing: Routing,
    probe: &ProbeHandle<Epoch>,
    mut on_epoch: F,
) where
    F: FnMut(EpochOutput) + 'static,
{
    let scope = positions.scope();
    let (grace, initial_watermark) = (settings.grace, settings.initial_watermark);
    let (worker, peers) = (scope.index(), scope.peers());
    let own_leader = routing.leader_of(worker);
    let partition_leader = move |pos: u64| {
        routing.leader_of((routing.partition_of)(pos) as usize % peers.max(1)) as u64
    };
    let count = |r: Rejection| {
        let reason = r.reason;
        [Item::Rejected(r), Item::Counted(reason)]
    };
    let items: Vec<VecStream<'scope, Item>> = vec![
        outputs.top.inner.map(|(r, t, d)| Item::Top(r, t, d)),
        outputs
            .histogram
            .inner
            .map(|(r, t, d)| Item::Histogram(r, t, d)),
        outputs.users.inner.map(|(r, t, d)| Item::Users(r, t, d)),
        outputs.rejected.flat_map(count),
        source_rejected.flat_map(count),
        outputs.stats.map(Item::Stats),
    ];
    let items = scope.concatenate(items).probe_with(probe);
    // The totals, by far the largest output, travel as one record per changed user, not as
    // `Item`s: no conversion into the larger enum, half the records of a retraction and an
    // insertion each, and they are bucketed by epoch a run at a time rather than record by
    // record.
    let totals = outputs.totals.probe_with(probe);
    // Every leader keeps every partition's position (a few per epoch).
    let positions = positions.broadcast().probe_with(probe);

    let mut builder = OperatorBuilder::new("Deliver".to_owned(), scope);
    let route = move |item: &Item| match item {
        Item::Histogram(..) | Item::Users(..) => own_leader as u64,
        Item::Rejected(r) => partition_leader(r.pos),
        Item::Top(..) | Item::Counted(_) | Item::Stats(_) => 0,
    };
    let mut input = builder.new_input(items, Exchange::new(route));
    let mut totals_input = builder.new_input(
        totals,
        Exchange::new(move |_: &(TotalChange, Epoch)| own_leader as u64),
    );
    let mut wm_input = builder.new_input(outputs.watermark, Pipeline);
    let mut pos_input = builder.new_input(positions, Pipeline);
    builder.build(move |_capabilities| {
        let mut pending: BTreeMap<Epoch, EpochOutput> = BTreeMap::new();
        let mut watermarks: BTreeMap<Epoch, Micros> = BTreeMap::new();
        // Starts from the job's initial watermark (a restart's), like every operator upstream.
        let mut watermark: Option<Micros> = initial_watermark;
        let mut open_days: BTreeSet<Day> = BTreeSet::new();
        let mut positions: BTreeMap<u32, u64> = BTreeMap::new();
        // The totals of an epoch are sized at once from the last epoch's (with an eighth to
        // spare): grown by doubling, a million-record vector is copied about twenty times.
        let mut totals_hint = 0usize;
        move |frontiers| {
            if worker != own_leader {
                // Everything was routed to the leaders; the watermark and the positions arrive
                // on every worker (broadcast) and are only needed there: drop them.
                input.for_each(|_, data| data.clear());
                totals_input.for_each(|_, data| data.clear());
                wm_input.for_each(|_, data| data.clear());
                pos_input.for_each(|_, data| data.clear());
                return;
            }
            input.for_each(|cap, data| {
                let epoch = epoch_of(&cap);
                for item in data.drain(..) {
                    // Collections' records carry their own epoch (a message may hold several).
                    match item {
                        Item::Top(r, t, d) => pending.entry(t).or_default().top.push((r, d)),
                        Item::Histogram(r, t, d) => {
                            pending.entry(t).or_default().histogram.push((r, d))
                        }
                        Item::Users(r, t, d) => pending.entry(t).or_default().users.push((r, d)),
                        item => absorb(pending.entry(epoch).or_default(), item),
                    }
                }
            });
            // A message's records mostly share one epoch: one map lookup per run of them.
            totals_input.for_each(|_, data| {
                for run in data.chunk_by(|a, b| a.1 == b.1) {
                    let out = &mut pending.entry(run[0].1).or_default().totals;
                    if out.capacity() == 0 {
                        out.reserve(totals_hint);
                    }
                    // A change is the old total's retraction right before the new one's
                    // insertion (sinks rely on that order to skip the retraction).
                    for &((day, user, old, new), _) in run {
                        if let Some(old) = old {
                            out.push(((day, user, old), -1));
                        }
                        out.push(((day, user, new), 1));
                    }
                }
                data.clear();
            });
            fn absorb(out: &mut EpochOutput, item: Item) {
                {
                    match item {
                        Item::Top(..) | Item::Histogram(..) | Item::Users(..) => {
                            unreachable!("collections are bucketed by their records' epochs")
                        }
                        Item::Rejected(r) => out.rejected.push(r),
                        Item::Counted(reason) => out.stats.rejected[reason.index()] += 1,
                        Item::Stats(s) => {
                            // Late rejections are counted from their records, above.
                            out.stats.accepted += s.accepted;
                            out.stats.duplicate += s.duplicate;
                        }
                    }
                }
            }
            pos_input.for_each(|cap, data| {
                pending
                    .entry(epoch_of(&cap))
                    .or_default()
                    .positions
                    .append(data);
            });
            wm_input.for_each(|cap, data| {
                if let Some(&w) = data.iter().max() {
                    let slot = watermarks.entry(epoch_of(&cap)).or_insert(w);
                    *slot = (*slot).max(w);
                }
            });
            while let Some((&epoch, _)) = pending.first_key_value() {
                if frontiers.iter().any(|f| f.less_equal(&epoch)) {
                    break;
                }
                let mut out = pending.remove(&epoch).expect("present");
                totals_hint = out.totals.len() + out.totals.len() / 8;
                fn fold(
                    watermarks: &mut BTreeMap<Epoch, Micros>,
                    watermark: &mut Option<Micros>,
                    through: Epoch,
                ) {
                    while let Some((&t, &w)) = watermarks.first_key_value() {
                        if t > through {
                            break;
                        }
                        watermarks.remove(&t);
                        *watermark = Some(watermark.map_or(w, |c| c.max(w)));
                    }
                }
                // W(epoch − 1): the days it closed left the arrangements at this epoch; their
                // retractions are not news for sinks, which keep a closed day's final state.
                if let Some(previous) = epoch.checked_sub(1) {
                    fold(&mut watermarks, &mut watermark, previous);
                }
                let w_prev = watermark;
                let live = |day: &Day| !is_closed(*day, w_prev, grace);
                out.totals.retain(|((day, _, _), _)| live(day));
                out.top.retain(|((day, _), _)| live(day));
                out.histogram.retain(|((day, _, _), _)| live(day));
                out.users.retain(|((day, _), _)| live(day));
                fold(&mut watermarks, &mut watermark, epoch);
                if out == (EpochOutput::default()) {
                    // Nothing but retractions of closed days: not an epoch for sinks.
                    continue;
                }
                out.epoch = epoch;
                out.watermark = watermark;
                out.top.sort_unstable();
                out.histogram.sort_unstable();
                out.users.sort_unstable();
                out.rejected.sort_unstable_by_key(|r| r.pos);
                // The days this share has seen open: from its totals, and on worker 0 from the
                // top-k, which every day with a user has (so worker 0 closes every day).
                let mut last_day = None;
                let touched = out.totals.iter().map(|((day, _, _), d)| (day, d));
                for (day, d) in touched.chain(out.top.iter().map(|((day, _), d)| (day, d))) {
                    if *d > 0 && last_day != Some(*day) {
                        open_days.insert(*day);
                        last_day = Some(*day);
                    }
                }
                out.closed = open_days
                    .iter()
                    .copied()
                    .filter(|&d| is_closed(d, watermark, grace))
                    .collect();
                for day in &out.closed {
                    open_days.remove(day);
                }
                for p in out.positions.drain(..) {
                    let slot = positions.entry(p.partition).or_insert(p.next);
                    *slot = (*slot).max(p.next);
                }
                out.positions = positions
                    .iter()
                    .map(|(&partition, &next)| Position { partition, next })
                    .collect();
                on_epoch(out);
            }
        }
    });
}
