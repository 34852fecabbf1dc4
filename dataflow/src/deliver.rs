//! Delivery of completed epochs to a sink.
//!
//! All outputs are gathered on worker 0, buffered per epoch, and handed over as one
//! [`EpochOutput`] once *every* input frontier has passed the epoch: a sink never sees a partial
//! epoch, and sees epochs in increasing order. Each vector of an `EpochOutput` is consolidated
//! (the producing operators own disjoint keys and emit one net change per key and epoch); the
//! retractions of a closed day leaving the arrangements (the epoch after it closed) are dropped
//! here, and an epoch with nothing else is not delivered. All
//! but `totals` are sorted here so that they do not depend on the number of workers; `totals`
//! (one or two records per changed user: the largest by far) is left in arrival order, which
//! upserting sinks do not need.

use std::collections::{BTreeMap, BTreeSet};

use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::vec::Map;
use timely::dataflow::operators::Concatenate;
use timely::dataflow::operators::Probe;
use timely::dataflow::ProbeHandle;

use crate::event::{is_closed, Day, Epoch, Micros, Rejection, User};
use crate::output::{EpochOutput, Position, Stats};
use crate::pipeline::{epoch_of, Outputs, Settings, VecStream};
use crate::ranking::TopRow;

/// Everything a sink may receive, as one stream so that it can be gathered in one exchange.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
enum Item {
    Total((Day, User, u64), Epoch, isize),
    Top((Day, TopRow), Epoch, isize),
    Histogram((Day, u64, u64), Epoch, isize),
    Users((Day, u64), Epoch, isize),
    Rejected(Rejection),
    Stats(Stats),
    Position(Position),
}

/// Gathers `outputs`, the sources' rejections and positions on worker 0 and calls `on_epoch`
/// there with each completed epoch, in order. `probe`'s frontier becomes the first epoch not yet
/// delivered (on every worker).
pub fn deliver<'scope, F>(
    outputs: Outputs<'scope>,
    source_rejected: VecStream<'scope, Rejection>,
    positions: VecStream<'scope, Position>,
    settings: &Settings,
    probe: &ProbeHandle<Epoch>,
    mut on_epoch: F,
) where
    F: FnMut(EpochOutput) + 'static,
{
    let scope = positions.scope();
    let (grace, initial_watermark) = (settings.grace, settings.initial_watermark);
    let worker = scope.index();
    let items: Vec<VecStream<'scope, Item>> = vec![
        outputs.totals.inner.map(|(r, t, d)| Item::Total(r, t, d)),
        outputs.top.inner.map(|(r, t, d)| Item::Top(r, t, d)),
        outputs
            .histogram
            .inner
            .map(|(r, t, d)| Item::Histogram(r, t, d)),
        outputs.users.inner.map(|(r, t, d)| Item::Users(r, t, d)),
        outputs.rejected.map(Item::Rejected),
        source_rejected.map(Item::Rejected),
        outputs.stats.map(Item::Stats),
        positions.map(Item::Position),
    ];
    let items = scope.concatenate(items).probe_with(probe);

    let mut builder = OperatorBuilder::new("Deliver".to_owned(), scope);
    let mut input = builder.new_input(items, Exchange::new(|_: &Item| 0));
    let mut wm_input = builder.new_input(outputs.watermark, Pipeline);
    builder.build(move |_capabilities| {
        let mut pending: BTreeMap<Epoch, EpochOutput> = BTreeMap::new();
        let mut watermarks: BTreeMap<Epoch, Micros> = BTreeMap::new();
        // Starts from the job's initial watermark (a restart's), like every operator upstream.
        let mut watermark: Option<Micros> = initial_watermark;
        let mut open_days: BTreeSet<Day> = BTreeSet::new();
        let mut positions: BTreeMap<u32, u64> = BTreeMap::new();
        move |frontiers| {
            if worker != 0 {
                // Everything was routed to worker 0; the watermark arrives on every worker
                // (broadcast) and is only needed here on worker 0: drop it, keep nothing.
                input.for_each(|_, data| data.clear());
                wm_input.for_each(|_, data| data.clear());
                return;
            }
            input.for_each(|cap, data| {
                let epoch = epoch_of(&cap);
                for item in data.drain(..) {
                    // Collections' records carry their own epoch (a message may hold several).
                    match item {
                        Item::Total(r, t, d) => pending.entry(t).or_default().totals.push((r, d)),
                        Item::Top(r, t, d) => pending.entry(t).or_default().top.push((r, d)),
                        Item::Histogram(r, t, d) => {
                            pending.entry(t).or_default().histogram.push((r, d))
                        }
                        Item::Users(r, t, d) => pending.entry(t).or_default().users.push((r, d)),
                        item => absorb(pending.entry(epoch).or_default(), item),
                    }
                }
            });
            fn absorb(out: &mut EpochOutput, item: Item) {
                {
                    match item {
                        Item::Total(..) | Item::Top(..) | Item::Histogram(..) | Item::Users(..) => {
                            unreachable!("collections are bucketed by their records' epochs")
                        }
                        Item::Rejected(r) => {
                            out.stats.rejected[r.reason.index()] += 1;
                            out.rejected.push(r);
                        }
                        Item::Stats(s) => {
                            // Late rejections are counted from their records, above.
                            out.stats.accepted += s.accepted;
                            out.stats.duplicate += s.duplicate;
                        }
                        Item::Position(p) => out.positions.push(p),
                    }
                }
            }
            wm_input.for_each(|cap, data| {
                if let Some(&w) = data.iter().max() {
                    let slot = watermarks.entry(epoch_of(&cap)).or_insert(w);
                    *slot = (*slot).max(w);
                }
            });
            while let Some((&epoch, _)) = pending.first_key_value() {
                if frontiers[0].less_equal(&epoch) || frontiers[1].less_equal(&epoch) {
                    break;
                }
                let mut out = pending.remove(&epoch).expect("present");
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
                let mut last_day = None;
                for ((day, _, _), d) in &out.totals {
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
