//! The timely operator that pulls chunks from a [`ChunkSource`] and parses them.
//!
//! It runs on every worker with that worker's handle on the source. Parsed events, rejections
//! and input positions leave on three outputs, stamped with the chunk's epoch. Its
//! capabilities follow the source's epochs, so the dataflow's frontier tells which epochs are
//! complete. It never runs more than `max_epochs_ahead` epochs ahead of the `completed` probe,
//! which bounds the memory held by epochs in flight.

use std::time::Duration;

use rankmysteps_dataflow::event::{close_of_day, Epoch, Event, EventExtra, Micros, Rejection};
use rankmysteps_dataflow::output::Position;
use rankmysteps_dataflow::pipeline::VecStream;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::{ProbeHandle, Scope};

use crate::chunk::{Archiver, ChunkSource, Pull};
use crate::parse::Parser;

/// The three outputs of [`parse_source`].
pub struct Parsed<'scope> {
    /// Events that parsed and are not in the future.
    pub events: VecStream<'scope, Event>,
    /// Records rejected by parsing or as `future`.
    pub rejected: VecStream<'scope, Rejection>,
    /// Input positions reached, per chunk.
    pub positions: VecStream<'scope, Position>,
}

/// Flow control of a source.
#[derive(Clone)]
pub struct Throttle {
    /// The frontier of delivered epochs.
    pub completed: ProbeHandle<Epoch>,
    /// How many epochs a source may run ahead of `completed`.
    pub max_epochs_ahead: u64,
    /// Where the source shows the epoch it is at (its input frontier), for the inspector: read
    /// on the same worker thread, between steps.
    pub at: Option<std::rc::Rc<std::cell::Cell<Option<Epoch>>>>,
}

/// Builds the source operator named `name` (see the module docs). `grace` is the dataflow's
/// grace period: events whose day could already be closed keep their raw bytes, for the
/// dead-letter record should admission reject them as late.
pub fn parse_source<'scope, S: ChunkSource>(
    scope: Scope<'scope, Epoch>,
    name: &str,
    source: S,
    parser: Parser,
    grace: Micros,
    throttle: Throttle,
) -> Parsed<'scope> {
    parse_source_archived(scope, name, source, parser, grace, throttle, None)
}

/// [`parse_source`], and every record also goes to `archiver`, each epoch held open until its
/// records are durable there (see [`Archiver`]).
pub fn parse_source_archived<'scope, S: ChunkSource>(
    scope: Scope<'scope, Epoch>,
    name: &str,
    mut source: S,
    mut parser: Parser,
    grace: Micros,
    throttle: Throttle,
    mut archiver: Option<Box<dyn Archiver>>,
) -> Parsed<'scope> {
    let mut builder = OperatorBuilder::new(name.to_owned(), scope);
    let info = builder.operator_info();
    let activator = scope.activator_for(info.address);
    let (events_out, events) = builder.new_output::<Vec<Event>>();
    let (rejected_out, rejected) = builder.new_output::<Vec<Rejection>>();
    let (positions_out, positions) = builder.new_output::<Vec<Position>>();
    let mut events_out = OutputBuilder::from(events_out);
    let mut rejected_out = OutputBuilder::from(rejected_out);
    let mut positions_out = OutputBuilder::from(positions_out);
    let skew = parser.config().max_clock_skew;

    builder.build(move |capabilities| {
        let mut caps = Some(capabilities);
        // Sealed epochs whose archive is not yet durable, each held open by a capability.
        let mut holds: Holds = Default::default();
        move |_frontiers| {
            if let Some(archiver) = archiver.as_mut() {
                while let Some((&epoch, _)) = holds.first_key_value() {
                    if !archiver.durable(epoch) {
                        break;
                    }
                    holds.remove(&epoch);
                }
                if !holds.is_empty() {
                    activator.activate_after(Duration::from_millis(5));
                }
            }
            let Some(held) = caps.as_mut() else {
                if let Some(at) = &throttle.at {
                    at.set(None);
                }
                return;
            };
            let current = *held[0].time();
            if let Some(at) = &throttle.at {
                at.set(Some(current));
            }
            // Flow control: wait while too far ahead of what has been delivered.
            if throttle
                .completed
                .less_than(&current.saturating_sub(throttle.max_epochs_ahead))
            {
                activator.activate_after(Duration::from_millis(1));
                return;
            }
            // A few chunks per activation, then yield so downstream operators run.
            for _ in 0..4 {
                match source.pull() {
                    Pull::Done => {
                        leave(&mut archiver, &mut holds, &activator, held, None);
                        caps = None;
                        return;
                    }
                    Pull::Idle { epoch, retry } => {
                        leave(&mut archiver, &mut holds, &activator, held, Some(epoch));
                        activator.activate_after(retry);
                        return;
                    }
                    Pull::Chunk(mut chunk) => {
                        let epoch = chunk.epoch.max(*held[0].time());
                        leave(&mut archiver, &mut holds, &activator, held, Some(epoch));
                        chunk.epoch = epoch;
                        if let Some(archiver) = archiver.as_mut() {
                            archiver.add(&chunk);
                        }
                        let bound = source.watermark_bound(&chunk);
                        let mut max_time: Option<Micros> = None;
                        let mut events = Vec::with_capacity(chunk.records.len());
                        let mut rejected = Vec::new();
                        for (i, (pos, raw)) in chunk.iter().enumerate() {
                            let now = chunk.record_now.as_ref().map_or(chunk.now, |n| n[i]);
                            match parser.parse(raw, now) {
                                Ok(p) => {
                                    // Keep the raw bytes only where the day could be closed: by
                                    // W's upper bounds, now + skew and the source's own bound.
                                    let close = close_of_day(p.day, grace);
                                    let maybe_late = close <= chunk.now.max(now) + skew
                                        && bound.is_none_or(|b| b.is_some_and(|w| close <= w));
                                    max_time = max_time.max(Some(p.time));
                                    events.push(Event {
                                        pos,
                                        user: p.user,
                                        day: p.day,
                                        time: p.time,
                                        steps: p.steps,
                                        extra: EventExtra::new(
                                            p.event_id,
                                            chunk.record_ingested.as_ref().map(|n| n[i]),
                                            maybe_late.then(|| raw.into()),
                                        ),
                                    });
                                }
                                Err(e) => rejected.push(Rejection {
                                    pos,
                                    reason: e.reason,
                                    detail: e.detail,
                                    raw: raw.to_vec(),
                                }),
                            }
                        }
                        source.parsed(&chunk, max_time);
                        if !events.is_empty() {
                            events_out
                                .activate()
                                .session(&held[0])
                                .give_container(&mut events);
                        }
                        if !rejected.is_empty() {
                            rejected_out
                                .activate()
                                .session(&held[1])
                                .give_container(&mut rejected);
                        }
                        if !chunk.positions.is_empty() {
                            positions_out
                                .activate()
                                .session(&held[2])
                                .give_iterator(chunk.positions.drain(..));
                        }
                        if throttle
                            .completed
                            .less_than(&epoch.saturating_sub(throttle.max_epochs_ahead))
                        {
                            break;
                        }
                    }
                }
            }
            activator.activate();
        }
    });

    Parsed {
        events,
        rejected,
        positions,
    }
}

/// Epochs held open until their archive is durable.
type Holds = std::collections::BTreeMap<Epoch, timely::dataflow::operators::Capability<Epoch>>;

/// Moves the source's capabilities from their epoch to `next` (`None`: the source is done),
/// sealing the epoch left in the archive and holding it open until it is durable.
fn leave(
    archiver: &mut Option<Box<dyn Archiver>>,
    holds: &mut Holds,
    activator: &timely::scheduling::Activator,
    held: &mut [timely::dataflow::operators::Capability<Epoch>],
    next: Option<Epoch>,
) {
    let current = *held[0].time();
    if next.is_some_and(|n| n <= current) {
        return;
    }
    if let Some(archiver) = archiver.as_mut() {
        archiver.seal(current);
        holds.entry(current).or_insert_with(|| held[0].clone());
        activator.activate_after(Duration::from_millis(5));
    }
    if let Some(next) = next {
        held.iter_mut().for_each(|c| c.downgrade(&next));
    }
}
