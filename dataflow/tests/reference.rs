//! The dataflow against the sequential reference, on seeded random inputs with ties, many time
//! zones, duplicates, late events and source rejections, for 1, 2, 3 and 4 workers; compared
//! after every epoch.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use rankmysteps_dataflow::deliver::{deliver, Routing};
use rankmysteps_dataflow::event::{
    is_closed, Day, Epoch, Event, EventExtra, Reason, Rejection, User, MICROS_PER_DAY,
    MICROS_PER_SEC,
};
use rankmysteps_dataflow::output::{EpochOutput, Position, Stats};
use rankmysteps_dataflow::pipeline::{build, Settings};
use rankmysteps_dataflow::reference::{DayResult, Record, Reference};
use timely::dataflow::operators::Input;

use rankmysteps_dataflow::random::SplitMix64 as Rng;

/// Offsets (minutes) covering the extremes and the odd ones.
const OFFSETS: [i64; 8] = [
    0,
    14 * 60,
    -12 * 60,
    5 * 60 + 45,
    -8 * 60,
    9 * 60 + 30,
    -3 * 60 - 30,
    60,
];

/// Epochs of random records: time moves forward about `step` per epoch with jitter, so days
/// close as the run goes on and some events arrive after their day closed.
fn random_input(seed: u64, epochs: usize, per_epoch: usize, users: u64) -> Vec<Vec<Record>> {
    let mut rng = Rng(seed);
    let start_day: Day = 20_000;
    let mut clock = start_day as i64 * MICROS_PER_DAY;
    let mut pos = 0u64;
    let mut out = Vec::new();
    for _ in 0..epochs {
        clock += (6 + rng.below(12) as i64) * 3600 * MICROS_PER_SEC;
        let mut records = Vec::new();
        for _ in 0..rng.below(per_epoch as u64 + 1) {
            pos += 1 + rng.below(3);
            if rng.below(20) == 0 {
                let reason = Reason::ALL[rng.below(5) as usize];
                records.push(Record::Rejected(pos, reason));
                continue;
            }
            // Mostly recent, sometimes days old (late once those days close).
            let back = if rng.below(10) == 0 {
                rng.below(5 * 24)
            } else {
                rng.below(20)
            } as i64;
            let time =
                clock - back * 3600 * MICROS_PER_SEC - rng.below(3600) as i64 * MICROS_PER_SEC;
            let offset = OFFSETS[rng.below(OFFSETS.len() as u64) as usize] * 60 * MICROS_PER_SEC;
            let day = (time + offset).div_euclid(MICROS_PER_DAY) as Day;
            let user: User = if rng.below(2) == 0 {
                rng.below(users) as u128
            } else {
                (rng.below(users) as u128) << 64 | 0x4000_8000
            };
            let event_id = match rng.below(4) {
                0 => None,
                _ => Some(format!("e{}", rng.below(6)).into_boxed_str()),
            };
            records.push(Record::Event(Event {
                pos,
                user,
                day,
                time,
                steps: rng.below(4) as u32 * 5,
                extra: EventExtra::new(
                    event_id,
                    None,
                    Some(format!("raw-{pos}").into_bytes().into_boxed_slice()),
                ),
            }));
        }
        out.push(records);
    }
    out
}

/// The input handles of a test dataflow: events, source rejections, positions.
type Inputs<'a> = (
    &'a mut timely::dataflow::InputHandleVec<Epoch, Event>,
    &'a mut timely::dataflow::InputHandleVec<Epoch, Rejection>,
    &'a mut timely::dataflow::InputHandleVec<Epoch, Position>,
);

/// Introduces `epoch`'s records on worker `index` of `peers` (record i on worker i mod peers;
/// the epoch's position on worker 0) and advances every input past it; returns `epoch + 1`.
fn feed_epoch(
    (index, peers): (usize, usize),
    epoch: usize,
    records: &[Record],
    (events, rejects, positions): Inputs<'_>,
) -> Epoch {
    for (i, record) in records.iter().enumerate() {
        if i % peers != index {
            continue;
        }
        match record {
            Record::Event(e) => events.send(e.clone()),
            Record::Rejected(pos, reason) => rejects.send(Rejection {
                pos: *pos,
                reason: *reason,
                detail: String::new(),
                raw: format!("raw-{pos}").into_bytes(),
            }),
        }
    }
    if index == 0 {
        positions.send(Position {
            partition: 0,
            next: epoch as u64,
        });
    }
    let next = epoch as Epoch + 1;
    events.advance_to(next);
    rejects.advance_to(next);
    positions.advance_to(next);
    next
}

/// The settings of the tests on [`random_input`]: top-`k`, 6 h of grace, no watermark yet, and
/// epochs of 1 s of ingestion time with a 2 s de-duplication window: a repeat two epochs later
/// is a duplicate, three epochs later (just outside) it is accepted again.
fn random_settings(k: usize) -> Settings {
    Settings {
        k,
        grace: 6 * 3600 * MICROS_PER_SEC,
        initial_watermark: None,
        dedup_window: 2 * MICROS_PER_SEC,
        epoch_length: MICROS_PER_SEC,
    }
}

/// Runs the dataflow on `workers` threads; record i is introduced by worker i mod workers.
fn run_dataflow(workers: usize, input: Vec<Vec<Record>>, settings: Settings) -> Vec<EpochOutput> {
    run_routed(workers, input, settings, Routing::gather())
        .into_iter()
        .map(|(_, out)| out)
        .collect()
}

/// [`run_dataflow`] with `routing`: every delivered epoch with the worker it was delivered on,
/// in epoch order.
fn run_routed(
    workers: usize,
    input: Vec<Vec<Record>>,
    settings: Settings,
    routing: Routing,
) -> Vec<(usize, EpochOutput)> {
    let input = Arc::new(input);
    let results = Arc::new(Mutex::new(Vec::new()));
    let results2 = results.clone();
    timely::execute(timely::Config::process(workers), move |worker| {
        let (index, peers) = (worker.index(), worker.peers());
        let results = results2.clone();
        let settings = settings.clone();
        let (mut events, mut rejects, mut positions) = worker.dataflow::<Epoch, _, _>(|scope| {
            let (ein, events) = scope.new_input::<Vec<Event>>();
            let (rin, rejects) = scope.new_input::<Vec<Rejection>>();
            let (pin, positions) = scope.new_input::<Vec<Position>>();
            let outputs = build(events, &settings);
            deliver(
                outputs,
                rejects,
                positions,
                &settings,
                routing,
                &timely::dataflow::ProbeHandle::new(),
                move |out| results.lock().unwrap().push((index, out)),
            );
            (ein, rin, pin)
        });
        for (epoch, records) in input.iter().enumerate() {
            feed_epoch(
                (index, peers),
                epoch,
                records,
                (&mut events, &mut rejects, &mut positions),
            );
            worker.step();
        }
    })
    .expect("timely");
    let mut out = results.lock().unwrap().clone();
    out.sort_by_key(|(w, o)| (o.epoch, *w));
    out
}

/// Every process writes its own share (design §7): with 4 workers as 2 processes of 2, the
/// shares delivered on workers 0 and 2 add up, epoch by epoch, to what one gathering worker
/// gets; the top-k and the counters are only on worker 0, every leader has every position and
/// the watermark, each rejection is on the leader of its partition's reader, and each share's
/// totals are those of its own workers' keys (no user's rows are written by two processes).
#[test]
fn per_process_shares_add_up_to_the_gathered_output() {
    let settings = random_settings(5);
    let input = random_input(11, 30, 120, 40);
    let gathered = run_dataflow(4, input.clone(), settings.clone());
    // Positions of 3 partitions: partition p is read by worker p mod 4.
    let partition_of: fn(u64) -> u32 = |pos| (pos % 3) as u32;
    let routing = Routing::per_process(2, partition_of);
    let shares = run_routed(4, input, settings, routing);
    assert!(shares.iter().all(|(w, _)| *w == 0 || *w == 2));
    let mut owner: BTreeMap<(Day, User), usize> = BTreeMap::new();
    let (mut on_2, mut rejected_on_2) = (0, 0);
    for whole in &gathered {
        let of = |w: usize| {
            shares
                .iter()
                .find(|(x, o)| *x == w && o.epoch == whole.epoch)
                .map(|(_, o)| o.clone())
                .unwrap_or_else(|| panic!("epoch {} not delivered on worker {w}", whole.epoch))
        };
        let (a, b) = (of(0), of(2));
        for share in [&a, &b] {
            assert_eq!(share.watermark, whole.watermark);
            assert_eq!(share.positions, whole.positions);
        }
        assert_eq!(a.top, whole.top);
        assert!(b.top.is_empty());
        assert_eq!(a.stats, whole.stats);
        assert_eq!(b.stats, Stats::default());
        assert_eq!(a.closed, whole.closed, "worker 0 closes every day");
        let union = |x: &dyn Fn(&EpochOutput) -> Vec<String>| {
            let mut v = x(&a);
            v.extend(x(&b));
            v.sort();
            v
        };
        let all = |x: &dyn Fn(&EpochOutput) -> Vec<String>| {
            let mut v = x(whole);
            v.sort();
            v
        };
        let totals = |o: &EpochOutput| o.totals.iter().map(|t| format!("{t:?}")).collect();
        let histogram = |o: &EpochOutput| o.histogram.iter().map(|t| format!("{t:?}")).collect();
        let users = |o: &EpochOutput| o.users.iter().map(|t| format!("{t:?}")).collect();
        let rejected = |o: &EpochOutput| o.rejected.iter().map(|t| format!("{t:?}")).collect();
        assert_eq!(
            union(&totals),
            all(&totals),
            "totals of epoch {}",
            whole.epoch
        );
        assert_eq!(union(&histogram), all(&histogram));
        assert_eq!(union(&users), all(&users));
        assert_eq!(union(&rejected), all(&rejected));
        for (w, share) in [(0, &a), (2, &b)] {
            for r in &share.rejected {
                assert_eq!(routing.leader_of(partition_of(r.pos) as usize % 4), w);
            }
            for ((day, user, _), _) in &share.totals {
                let first = *owner.entry((*day, *user)).or_insert(w);
                assert_eq!(first, w, "user {user} of day {day} on two processes");
            }
        }
        on_2 += b.totals.len();
        rejected_on_2 += b.rejected.len();
    }
    assert!(
        on_2 > 100 && rejected_on_2 > 5,
        "weak input: {on_2} totals, {rejected_on_2} rejections on worker 2"
    );
}

/// What a sink materializes from the deltas.
#[derive(Default)]
struct Materialized {
    totals: BTreeMap<Day, BTreeMap<User, u64>>,
    top: BTreeMap<Day, BTreeMap<u32, rankmysteps_dataflow::ranking::TopRow>>,
    histogram: BTreeMap<Day, BTreeMap<u64, u64>>,
    users: BTreeMap<Day, u64>,
    closed: BTreeMap<Day, Epoch>,
    stats: Stats,
    rejected: Vec<(Epoch, u64, Reason)>,
}

impl Materialized {
    fn apply(&mut self, out: &EpochOutput) {
        // Consolidated: no record twice.
        let mut keys: Vec<_> = out.totals.iter().map(|(r, _)| r).collect();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), out.totals.len(), "totals not consolidated");
        // Retractions first: each must retract exactly the total the sink holds. Then
        // insertions: each must land where no total is held (the old one was retracted).
        for ((day, user, total), diff) in out.totals.iter().filter(|(_, d)| *d < 0) {
            assert_eq!(*diff, -1, "totals diff");
            let removed = self.totals.entry(*day).or_default().remove(user);
            assert_eq!(
                removed,
                Some(*total),
                "retracted total ({day}, {user}, {total}) was not held"
            );
        }
        for ((day, user, total), diff) in out.totals.iter().filter(|(_, d)| *d > 0) {
            assert_eq!(*diff, 1, "totals diff");
            let old = self.totals.entry(*day).or_default().insert(*user, *total);
            assert_eq!(
                old, None,
                "inserted total ({day}, {user}, {total}) over a total not retracted"
            );
        }
        // Retractions first, then insertions: a position may change rows.
        for ((day, row), diff) in out.top.iter().filter(|(_, d)| *d < 0) {
            assert_eq!(*diff, -1);
            let removed = self.top.entry(*day).or_default().remove(&row.position);
            assert_eq!(removed, Some(*row), "retracted a row that was not there");
        }
        for ((day, row), _) in out.top.iter().filter(|(_, d)| *d > 0) {
            assert!(self
                .top
                .entry(*day)
                .or_default()
                .insert(row.position, *row)
                .is_none());
        }
        for ((day, total, count), diff) in out.histogram.iter().filter(|(_, d)| *d < 0) {
            assert_eq!(*diff, -1);
            assert_eq!(
                self.histogram.entry(*day).or_default().remove(total),
                Some(*count)
            );
        }
        for ((day, total, count), _) in out.histogram.iter().filter(|(_, d)| *d > 0) {
            assert!(self
                .histogram
                .entry(*day)
                .or_default()
                .insert(*total, *count)
                .is_none());
        }
        for ((day, n), diff) in out.users.iter().filter(|(_, d)| *d < 0) {
            assert_eq!(*diff, -1, "users diff");
            assert_eq!(self.users.remove(day), Some(*n), "retracted users not held");
        }
        for ((day, n), diff) in out.users.iter().filter(|(_, d)| *d > 0) {
            assert_eq!(*diff, 1, "users diff");
            assert_eq!(self.users.insert(*day, *n), None, "users not retracted");
        }
        for day in &out.closed {
            assert!(
                self.closed.insert(*day, out.epoch).is_none(),
                "closed twice"
            );
        }
        self.stats.add(&out.stats);
        self.rejected
            .extend(out.rejected.iter().map(|r| (out.epoch, r.pos, r.reason)));
    }

    fn check(&self, reference: &Reference, k: usize, epoch: Epoch) {
        let at = format!("after epoch {epoch}");
        assert_eq!(self.stats, reference.stats, "stats {at}");
        assert_eq!(self.rejected, reference.rejected, "rejections {at}");
        let days: Vec<Day> = reference.days.keys().copied().collect();
        assert_eq!(
            self.totals.keys().copied().collect::<Vec<_>>(),
            days,
            "days {at}"
        );
        for (day, expected) in &reference.days {
            let DayResult { totals, is_final } = expected;
            assert_eq!(&self.totals[day], totals, "totals of {day} {at}");
            let top: Vec<_> = self
                .top
                .get(day)
                .map(|t| t.values().copied().collect())
                .unwrap_or_default();
            assert_eq!(top, expected.top(k), "top of {day} {at}");
            assert_eq!(
                self.histogram.get(day).cloned().unwrap_or_default(),
                expected.histogram(),
                "histogram of {day} {at}"
            );
            assert_eq!(
                self.users.get(day).copied(),
                Some(totals.len() as u64),
                "users of {day} {at}"
            );
            assert_eq!(
                self.closed.contains_key(day),
                *is_final,
                "final flag of {day} {at}"
            );
        }
    }
}

fn compare(seed: u64, workers: usize, k: usize) {
    let settings = random_settings(k);
    let input = random_input(seed, 40, 120, 40);
    let input_again = input.clone();
    let outputs = run_dataflow(workers, input.clone(), settings.clone());
    let mut reference = Reference::new(settings.clone());
    let mut materialized = Materialized::default();
    let mut outputs = outputs.into_iter().peekable();
    let mut checked = 0;
    for (epoch, records) in input.into_iter().enumerate() {
        let epoch = epoch as Epoch;
        reference.epoch(epoch, records);
        while let Some(out) = outputs.next_if(|o| o.epoch <= epoch) {
            assert_eq!(out.epoch, epoch);
            assert_eq!(
                out.watermark, reference.watermark,
                "watermark after epoch {epoch}"
            );
            materialized.apply(&out);
        }
        materialized.check(&reference, k, epoch);
        checked += 1;
    }
    assert!(outputs.next().is_none());
    assert_eq!(checked, 40);
    // Merged groups of consecutive epochs leave a sink exactly where the epochs one by one do.
    let mut merged_state = Materialized::default();
    let all = run_dataflow(workers, input_again, settings.clone());
    for group in all.chunks(3) {
        merged_state.apply(&EpochOutput::merge(group.to_vec()));
    }
    // A merged output carries its rejections under its last epoch: compare them by position.
    let mut by_position = reference.clone();
    by_position.rejected.iter_mut().for_each(|r| r.0 = 0);
    merged_state.rejected.iter_mut().for_each(|r| r.0 = 0);
    merged_state.check(&by_position, k, 40);
    assert_eq!(
        merged_state.closed.keys().collect::<Vec<_>>(),
        materialized.closed.keys().collect::<Vec<_>>()
    );
    // The input must exercise what it claims to.
    let s = reference.stats;
    assert!(
        s.accepted > 500 && s.duplicate > 20 && s.rejected(Reason::Late) > 5,
        "weak input: {s:?}"
    );
    assert!(
        reference.reaccepted > 5,
        "weak input: {} repeats outside the window",
        reference.reaccepted
    );
    assert!(
        reference.days.values().any(|d| d.is_final) && reference.days.values().any(|d| !d.is_final)
    );
}

#[test]
fn one_worker_matches_reference() {
    for seed in 0..4 {
        compare(seed, 1, 5);
    }
}

#[test]
fn several_workers_match_reference() {
    for (seed, workers) in [(10, 2), (11, 3), (12, 4), (13, 4)] {
        compare(seed, workers, 5);
    }
}

#[test]
fn large_k_and_k_one() {
    compare(20, 4, 1);
    compare(21, 3, 1000);
}

/// `out` with its vectors sorted, for comparing outputs whose order does not matter.
fn normalized(mut out: EpochOutput) -> EpochOutput {
    out.totals.sort();
    out.rejected.sort_by_key(|r| r.pos);
    out
}

/// A restart (design §4): a job that replays only the epochs from the first one holding an event
/// of a day still open at epoch P, starting from W(P), must produce after P exactly what the
/// uninterrupted job produced, and hold the same state of the open days at P.
fn restart_matches_uninterrupted(seed: u64, workers: usize, p: usize) {
    let settings = random_settings(5);
    let input = random_input(seed, 40, 120, 40);
    let full = run_dataflow(workers, input.clone(), settings.clone());
    let mut reference = Reference::new(settings.clone());
    for (epoch, records) in input.iter().take(p + 1).enumerate() {
        reference.epoch(epoch as Epoch, records.clone());
    }
    let w_p = reference.watermark;
    let open = |day: Day| !is_closed(day, w_p, settings.grace);
    let start = input
        .iter()
        .position(|records| {
            records
                .iter()
                .any(|r| matches!(r, Record::Event(e) if open(e.day)))
        })
        .expect("some open day");
    // The replay must skip part of the input, and what it replays must hold events that only
    // the initial watermark turns away (else the test could not tell it is needed).
    assert!(start > 0, "seed {seed}: nothing skipped");
    let replayed_late = input[start..=p]
        .iter()
        .flatten()
        .any(|r| matches!(r, Record::Event(e) if !open(e.day)));
    assert!(replayed_late, "seed {seed}: no closed-day event replayed");
    let mut tail = input.clone();
    tail[..start].iter_mut().for_each(Vec::clear);
    let restarted = run_dataflow(
        workers,
        tail,
        Settings {
            initial_watermark: w_p,
            ..settings.clone()
        },
    );
    // The state of the open days at P.
    let (mut before, mut after) = (Materialized::default(), Materialized::default());
    full.iter()
        .filter(|o| o.epoch <= p as Epoch)
        .for_each(|o| before.apply(o));
    restarted
        .iter()
        .filter(|o| o.epoch <= p as Epoch)
        .for_each(|o| after.apply(o));
    let open_days: Vec<Day> = before.totals.keys().copied().filter(|d| open(*d)).collect();
    assert!(!open_days.is_empty());
    // Starting from W(P), the replay never revives a day closed before the restart.
    assert_eq!(
        after.totals.keys().copied().collect::<Vec<_>>(),
        open_days,
        "seed {seed}: the replay touched closed days"
    );
    for day in &open_days {
        assert_eq!(
            before.totals[day], after.totals[day],
            "totals of {day} at P"
        );
        assert_eq!(before.top.get(day), after.top.get(day), "top of {day} at P");
        assert_eq!(before.histogram.get(day), after.histogram.get(day));
    }
    // Everything after P.
    let tail_of = |outs: &[EpochOutput]| -> Vec<EpochOutput> {
        outs.iter()
            .filter(|o| o.epoch > p as Epoch)
            .cloned()
            .map(normalized)
            .collect()
    };
    let (expected, got) = (tail_of(&full), tail_of(&restarted));
    assert_eq!(expected.len(), got.len());
    for (e, g) in expected.iter().zip(&got) {
        assert_eq!(
            e, g,
            "seed {seed}, {workers} workers: epoch {} differs",
            e.epoch
        );
    }
    assert!(
        expected.iter().any(|o| !o.closed.is_empty()),
        "no day closes after P"
    );
}

#[test]
fn restart_from_a_progress_record_changes_nothing() {
    for (seed, workers, p) in [(30, 1, 25), (31, 2, 20), (32, 3, 30), (33, 4, 25)] {
        restart_matches_uninterrupted(seed, workers, p);
    }
}

/// The checker must be able to fail: a retraction of a total the sink does not hold.
#[test]
#[should_panic(expected = "was not held")]
fn checker_refuses_a_retraction_of_an_absent_total() {
    let mut m = Materialized::default();
    m.apply(&EpochOutput {
        totals: vec![((1, 7, 10), 1)],
        ..Default::default()
    });
    // 7 holds 10, not 9.
    m.apply(&EpochOutput {
        epoch: 1,
        totals: vec![((1, 7, 9), -1), ((1, 7, 19), 1)],
        ..Default::default()
    });
}

/// The checker must be able to fail: a new total over one that was not retracted.
#[test]
#[should_panic(expected = "over a total not retracted")]
fn checker_refuses_an_insertion_without_its_retraction() {
    let mut m = Materialized::default();
    m.apply(&EpochOutput {
        totals: vec![((1, 7, 10), 1)],
        ..Default::default()
    });
    m.apply(&EpochOutput {
        epoch: 1,
        totals: vec![((1, 7, 15), 1)],
        ..Default::default()
    });
}

/// The checker must be able to fail: a retraction of a day's user count that is not held.
#[test]
#[should_panic(expected = "retracted users not held")]
fn checker_refuses_a_retraction_of_absent_users() {
    let mut m = Materialized::default();
    m.apply(&EpochOutput {
        users: vec![((1, 2), -1), ((1, 3), 1)],
        ..Default::default()
    });
}

/// Design §1 exactly: with a window of two 1 s epochs, a repeat of (user, day, event_id) two
/// epochs after it was accepted is a duplicate, three epochs after (just outside) it counts
/// again and opens a new window; duplicates never extend a window. `recorded`: the same
/// ingestion times come from the records (an archive replay cut into one epoch) instead of
/// from the epochs.
fn window_input(recorded: bool) -> Vec<Vec<Record>> {
    let day: Day = 20_000;
    let mut pos = 0;
    let mut epochs = vec![Vec::new(); if recorded { 1 } else { 8 }];
    for e in 0..8i64 {
        for user in 0..8u128 {
            let mut event = |id: Option<&str>, steps: u32| {
                pos += 1;
                Record::Event(Event {
                    pos,
                    user: user << 64 | user,
                    day,
                    time: day as i64 * MICROS_PER_DAY + (e + 1) * 3600 * MICROS_PER_SEC,
                    steps,
                    extra: EventExtra::new(
                        id.map(Into::into),
                        recorded.then_some(e * MICROS_PER_SEC),
                        None,
                    ),
                })
            };
            let slot = if recorded { 0 } else { e as usize };
            epochs[slot].push(event(Some("x"), 1));
            if e == 0 || e == 4 {
                epochs[slot].push(event(Some("y"), 10));
            }
            epochs[slot].push(event(None, 100));
        }
    }
    epochs
}

#[test]
fn window_repeats_inside_and_just_outside() {
    let settings = Settings {
        k: 3,
        dedup_window: 2 * MICROS_PER_SEC,
        epoch_length: MICROS_PER_SEC,
        ..Settings::default()
    };
    for recorded in [false, true] {
        for workers in [1, 4] {
            let input = window_input(recorded);
            let outputs = run_dataflow(workers, input.clone(), settings.clone());
            let mut reference = Reference::new(settings.clone());
            let mut materialized = Materialized::default();
            for (epoch, records) in input.into_iter().enumerate() {
                reference.epoch(epoch as Epoch, records);
            }
            outputs.iter().for_each(|o| materialized.apply(o));
            let last = outputs.last().map_or(0, |o| o.epoch);
            materialized.check(&reference, 3, last);
            // x: accepted at 0, 3 and 6 (1, 2, 4, 5, 7 are duplicates); y at 0 and 4.
            let per_user = 3 + 2 + 8;
            assert_eq!(reference.stats.accepted, 8 * per_user, "{recorded}");
            assert_eq!(reference.stats.duplicate, 8 * 5);
            assert_eq!(reference.reaccepted, 8 * 3);
            let totals = &reference.days[&20_000].totals;
            assert!(totals.values().all(|&t| t == 3 + 20 + 800), "{totals:?}");
        }
    }
}

/// What one worker found in live state after one epoch.
#[derive(Debug, Default)]
struct Found {
    /// (epoch, arrangement, days held)
    held: Vec<(Epoch, &'static str, std::collections::BTreeSet<Day>)>,
    /// Lookups checked.
    lookups: usize,
    /// Failures, described.
    failures: Vec<String>,
}

/// Runs the dataflow like [`run_dataflow`], and after every epoch, on every worker, looks up in
/// live state every total, top-k and standing the worker owns and compares them with the
/// reference at that epoch (`snapshots[e]`: the reference after epoch e); records what each
/// arrangement holds.
fn run_with_lookups(
    workers: usize,
    input: Vec<Vec<Record>>,
    settings: Settings,
    snapshots: Vec<Reference>,
) -> Found {
    use rankmysteps_dataflow::state::{DayStatus, LiveState, LookupError};
    let input = Arc::new(input);
    let snapshots = Arc::new(snapshots);
    let found = Arc::new(Mutex::new(Found::default()));
    let found2 = found.clone();
    let guards = timely::execute(timely::Config::process(workers), move |worker| {
        let (index, peers) = (worker.index(), worker.peers());
        let settings = settings.clone();
        let probe = timely::dataflow::ProbeHandle::new();
        let (mut events, mut rejects, mut positions, traces) =
            worker.dataflow::<Epoch, _, _>(|scope| {
                let (ein, events) = scope.new_input::<Vec<Event>>();
                let (rin, rejects) = scope.new_input::<Vec<Rejection>>();
                let (pin, positions) = scope.new_input::<Vec<Position>>();
                let mut outputs = build(events, &settings);
                let traces = outputs.traces.take().expect("traces");
                deliver(outputs, rejects, positions, &settings, Routing::gather(), &probe, |_| {});
                (ein, rin, pin, traces)
            });
        let mut live = LiveState::new(traces, &settings, index, peers);
        let mut local = Found::default();
        let k = settings.k;
        for (epoch, records) in input.iter().enumerate() {
            for (i, record) in records.iter().enumerate() {
                if i % peers != index {
                    continue;
                }
                match record {
                    Record::Event(e) => events.send(e.clone()),
                    Record::Rejected(pos, reason) => rejects.send(Rejection {
                        pos: *pos,
                        reason: *reason,
                        detail: String::new(),
                        raw: Vec::new(),
                    }),
                }
            }
            let e = epoch as Epoch;
            events.advance_to(e + 1);
            rejects.advance_to(e + 1);
            positions.advance_to(e + 1);
            while probe.less_than(&(e + 1)) {
                worker.step();
            }
            let reference = &snapshots[epoch];
            let w_prev = match epoch {
                0 => settings.initial_watermark,
                _ => snapshots[epoch - 1].watermark,
            };
            // Steps the worker until a lookup is ready (the epoch is complete everywhere, its
            // last operators may still have to run here).
            macro_rules! ready {
                ($call:expr) => {{
                    let mut tries = 0;
                    loop {
                        match $call {
                            Err(LookupError::NotYet) if tries < 10_000 => {
                                tries += 1;
                                worker.step();
                            }
                            other => break other,
                        }
                    }
                }};
            }
            for (&day, expected) in &reference.days {
                let retired = is_closed(day, w_prev, settings.grace);
                let mut listing: Vec<(User, u64)> =
                    expected.totals.iter().map(|(&u, &s)| (u, s)).collect();
                rankmysteps_dataflow::ranking::sort_listing(&mut listing);
                for (&user, &total) in &expected.totals {
                    if live.owner_of_user(user) == index {
                        let got = ready!(live.total(day, user, e));
                        local.lookups += 1;
                        let ok = match &got {
                            Err(LookupError::Closed) => retired,
                            Ok(t) => {
                                !retired
                                    && t.total == Some(total)
                                    && t.epoch == e
                                    && (t.status == DayStatus::Final) == expected.is_final
                            }
                            _ => false,
                        };
                        if !ok {
                            local.failures.push(format!(
                                "epoch {e}: total of ({day}, {user:x}) {got:?}, expected {total} (final {}, retired {retired})",
                                expected.is_final
                            ));
                        }
                    }
                    if live.owner_of_day(day) == index {
                        let got = ready!(live.standing(day, user, total, 2, e));
                        local.lookups += 1;
                        let want = rankmysteps_dataflow::ranking::standing(&listing, user, 2);
                        let ok = match &got {
                            Err(LookupError::Closed) => retired,
                            Ok(s) => !retired && *s == want,
                            _ => false,
                        };
                        if !ok {
                            local.failures.push(format!(
                                "epoch {e}: standing of ({day}, {user:x}) {got:?}, expected {want:?}"
                            ));
                        }
                    }
                }
                // A user absent that day.
                let absent: User = 0xdead_beef;
                if live.owner_of_user(absent) == index && !expected.totals.contains_key(&absent) {
                    let got = ready!(live.total(day, absent, e));
                    if !matches!(&got, Ok(t) if t.total.is_none()) && !retired {
                        local.failures.push(format!("epoch {e}: absent user {got:?}"));
                    }
                }
                if live.owner_of_day(day) == index {
                    let got = ready!(live.top(day, e));
                    local.lookups += 1;
                    let ok = match &got {
                        Err(LookupError::Closed) => retired,
                        Ok(rows) => !retired && *rows == expected.top(k),
                        _ => false,
                    };
                    if !ok {
                        local.failures.push(format!(
                            "epoch {e}: top of {day} {got:?}, expected {:?}",
                            expected.top(k)
                        ));
                    }
                }
            }
            for held in live.held(e) {
                local.held.push((e, held.name, held.days));
            }
            live.advance(e);
        }
        let mut found = found2.lock().unwrap();
        found.held.extend(local.held);
        found.lookups += local.lookups;
        found.failures.extend(local.failures);
    })
    .expect("timely");
    for result in guards.join() {
        result.expect("worker");
    }
    Arc::try_unwrap(found).unwrap().into_inner().unwrap()
}

fn lookups_and_held_days(seed: u64, workers: usize) {
    let settings = random_settings(4);
    let input = random_input(seed, 30, 100, 30);
    let mut reference = Reference::new(settings.clone());
    let mut snapshots = Vec::new();
    for (epoch, records) in input.iter().enumerate() {
        reference.epoch(epoch as Epoch, records.clone());
        snapshots.push(reference.clone());
    }
    let found = run_with_lookups(workers, input, settings.clone(), snapshots.clone());
    assert!(
        found.failures.is_empty(),
        "{} of {} lookups differ, first: {:#?}",
        found.failures.len(),
        found.lookups,
        &found.failures[..found.failures.len().min(5)]
    );
    assert!(found.lookups > 1000, "only {} lookups", found.lookups);
    // Every arrangement holds exactly the days not closed before the epoch: a day that closed
    // after epoch e − 1 was retracted from all of them at e.
    let mut union: BTreeMap<(Epoch, &str), std::collections::BTreeSet<Day>> = BTreeMap::new();
    for (e, name, days) in found.held {
        union.entry((e, name)).or_default().extend(days);
    }
    let mut retired_seen = 0;
    for (e, snapshot) in snapshots.iter().enumerate() {
        let w_prev = match e {
            0 => None,
            _ => snapshots[e - 1].watermark,
        };
        let open: std::collections::BTreeSet<Day> = snapshot
            .days
            .keys()
            .copied()
            .filter(|&d| !is_closed(d, w_prev, settings.grace))
            .collect();
        retired_seen += snapshot.days.len() - open.len();
        for name in ["totals", "histogram", "users", "by-total", "top-k"] {
            assert_eq!(
                union.get(&(e as Epoch, name)).cloned().unwrap_or_default(),
                open,
                "{name} after epoch {e}, {workers} workers"
            );
        }
    }
    assert!(retired_seen > 10, "no day was retired");
}

#[test]
fn lookups_match_reference_and_arrangements_hold_open_days_1_worker() {
    lookups_and_held_days(40, 1);
    lookups_and_held_days(41, 1);
}

#[test]
fn lookups_match_reference_and_arrangements_hold_open_days_4_workers() {
    lookups_and_held_days(42, 4);
    lookups_and_held_days(43, 4);
}

/// Runs the dataflow like [`run_dataflow`], taking checkpoints every `every` epochs or starting
/// from `restore[worker]` (then epochs before its mark must be empty in `input`); returns the
/// outputs and every checkpoint part a worker completed, as `(worker, part)`.
fn run_checkpointed(
    workers: usize,
    input: Vec<Vec<Record>>,
    settings: Settings,
    every: Epoch,
    restore: Option<Vec<rankmysteps_dataflow::checkpoint::WorkerState>>,
) -> (
    Vec<EpochOutput>,
    Vec<(usize, rankmysteps_dataflow::checkpoint::WorkerState)>,
    BTreeMap<&'static str, std::collections::BTreeSet<Day>>,
) {
    use rankmysteps_dataflow::checkpoint::{track_positions, CheckpointPlan, DraftBook};
    use rankmysteps_dataflow::pipeline::{build_with, Extras};
    let input = Arc::new(input);
    let results = Arc::new(Mutex::new(Vec::new()));
    let parts = Arc::new(Mutex::new(Vec::new()));
    let held: Arc<Mutex<BTreeMap<&'static str, std::collections::BTreeSet<Day>>>> =
        Default::default();
    let (results2, parts2, held2) = (results.clone(), parts.clone(), held.clone());
    let restore = Arc::new(restore);
    timely::execute(timely::Config::process(workers), move |worker| {
        let (index, peers) = (worker.index(), worker.peers());
        let results = results2.clone();
        let settings = settings.clone();
        let probe = timely::dataflow::ProbeHandle::new();
        let part = restore.as_ref().as_ref().map(|r| r[index].clone());
        let after = part.as_ref().map_or(0, |p| p.mark);
        let drafts = DraftBook::new(settings.grace);
        let plan = CheckpointPlan {
            every,
            after,
            positions: part
                .as_ref()
                .map(|p| p.positions.clone())
                .unwrap_or_default(),
            drafts: drafts.clone(),
        };
        let (mut events, mut rejects, mut positions, traces) =
            worker.dataflow::<Epoch, _, _>(|scope| {
                let (ein, events) = scope.new_input::<Vec<Event>>();
                let (rin, rejects) = scope.new_input::<Vec<Rejection>>();
                let (pin, positions) = scope.new_input::<Vec<Position>>();
                track_positions(positions.clone(), &plan);
                let extras = Extras {
                    restore: part.map(Into::into),
                    checkpoint: (every > 0).then_some(plan),
                };
                let mut outputs = build_with(events, &settings, extras);
                let traces = outputs.traces.take().expect("traces");
                deliver(
                    outputs,
                    rejects,
                    positions,
                    &settings,
                    Routing::gather(),
                    &probe,
                    move |out| results.lock().unwrap().push(out),
                );
                (ein, rin, pin, traces)
            });
        let mut live = rankmysteps_dataflow::state::LiveState::new(traces, &settings, index, peers);
        let take = || {
            if let Some(state) = drafts.borrow_mut().take_complete() {
                parts2.lock().unwrap().push((index, state));
            }
        };
        for (epoch, records) in input.iter().enumerate() {
            let next = feed_epoch(
                (index, peers),
                epoch,
                records,
                (&mut events, &mut rejects, &mut positions),
            );
            while probe.less_than(&next) {
                worker.step();
                take();
            }
        }
        drop((events, rejects, positions));
        while !probe.done() {
            worker.step();
            take();
        }
        // What every arrangement holds after the last epoch: days, by arrangement.
        let last = input.len() as Epoch - 1;
        let mut held = held2.lock().unwrap();
        for h in live.held(last) {
            held.entry(h.name).or_default().extend(h.days);
        }
    })
    .expect("timely");
    let mut out = results.lock().unwrap().clone();
    out.sort_by_key(|o| o.epoch);
    let parts = parts.lock().unwrap().clone();
    let held = held.lock().unwrap().clone();
    (out, parts, held)
}

/// A restart from a checkpoint (design §4): each worker starts from its part of the checkpoint
/// at mark T (totals at T − 1, its window, W(T − 1)) and reads only the epochs from T on; it
/// must then produce exactly what the uninterrupted run produced from T on, and hold the same
/// open days at T − 1. Without the restored window it must differ (the test can fail).
fn checkpoint_restart_matches_uninterrupted(seed: u64, workers: usize) {
    let settings = Settings {
        dedup_window: 8 * MICROS_PER_SEC,
        ..random_settings(5)
    };
    let mut input = random_input(seed, 40, 120, 40);
    // The restart is at mark 20. Repeats in epochs 20 and 21 of ids accepted in 17 to 19
    // (inside the window): only the restored window makes them duplicates.
    let mark: Epoch = 20;
    let repeats: Vec<Record> = input[17..20]
        .iter()
        .flatten()
        .filter(|r| matches!(r, Record::Event(e) if e.event_id().is_some()))
        .cloned()
        .collect();
    for (i, mut r) in repeats.into_iter().enumerate() {
        if let Record::Event(e) = &mut r {
            e.pos = 1_000_000 + i as u64;
        }
        input[20 + i % 2].push(r);
    }
    let (full, parts, held_full) =
        run_checkpointed(workers, input.clone(), settings.clone(), 5, None);
    let plain = run_dataflow(workers, input.clone(), settings.clone());
    same(
        full.iter().cloned().map(normalized).collect(),
        plain.into_iter().map(normalized).collect(),
        "taking checkpoints changed the outputs",
    );
    // Marks every worker completed; the one in the middle.
    let mut by_mark: BTreeMap<Epoch, Vec<Option<rankmysteps_dataflow::checkpoint::WorkerState>>> =
        BTreeMap::new();
    for (w, part) in &parts {
        by_mark
            .entry(part.mark)
            .or_insert_with(|| vec![None; workers])[*w] = Some(part.clone());
    }
    let complete: Vec<Epoch> = by_mark
        .iter()
        .filter(|(_, ps)| ps.iter().all(Option::is_some))
        .map(|(&m, _)| m)
        .collect();
    assert!(
        complete.len() >= 3 && complete.contains(&mark),
        "seed {seed}: complete marks {complete:?}"
    );
    let part: Vec<_> = by_mark[&mark].iter().cloned().map(Option::unwrap).collect();
    // Every part agrees on W(T − 1), which is the reference's; positions are worker 0's.
    let mut reference = Reference::new(settings.clone());
    for (epoch, records) in input.iter().take(mark as usize).enumerate() {
        reference.epoch(epoch as Epoch, records.clone());
    }
    assert!(part.iter().all(|p| p.watermark == reference.watermark));
    assert_eq!(
        part[0].positions,
        [Position {
            partition: 0,
            next: mark - 1
        }]
    );
    assert!(part[1..].iter().all(|p| p.positions.is_empty()));
    assert!(part.iter().any(|p| !p.window.is_empty()), "no window held");
    let held: usize = part.iter().map(|p| p.totals.len()).sum();
    let open_users: usize = reference
        .days
        .iter()
        .filter(|(d, _)| !is_closed(**d, reference.watermark, settings.grace))
        .map(|(_, r)| r.totals.len())
        .sum();
    assert_eq!(held, open_users, "the parts hold the open days' users");

    let mut tail = input.clone();
    tail[..mark as usize].iter_mut().for_each(Vec::clear);
    let restarted_with = |part: Vec<rankmysteps_dataflow::checkpoint::WorkerState>| {
        run_checkpointed(
            workers,
            tail.clone(),
            Settings {
                initial_watermark: part[0].watermark,
                ..settings.clone()
            },
            5,
            Some(part),
        )
    };
    let (restarted, later_parts, held_restarted) = restarted_with(part.clone());
    // The arrangements hold the days open at the last epoch, the restored ones retired as they
    // closed. (This caught retirement skipping days: see `Totals`.)
    let mut before_last = Reference::new(settings.clone());
    for (epoch, records) in input.iter().take(input.len() - 1).enumerate() {
        before_last.epoch(epoch as Epoch, records.clone());
    }
    let open_at_end: std::collections::BTreeSet<Day> = before_last
        .days
        .keys()
        .copied()
        .chain(input.last().into_iter().flatten().filter_map(|r| match r {
            Record::Event(e) => Some(e.day),
            _ => None,
        }))
        .filter(|d| !is_closed(*d, before_last.watermark, settings.grace))
        .collect();
    for (name, days) in &held_full {
        assert_eq!(days, &open_at_end, "seed {seed}: {name} at the end");
    }
    assert_eq!(
        held_full, held_restarted,
        "seed {seed}: days held at the end"
    );
    // The state at T − 1, open days.
    let (mut before, mut after) = (Materialized::default(), Materialized::default());
    full.iter()
        .filter(|o| o.epoch < mark)
        .for_each(|o| before.apply(o));
    restarted
        .iter()
        .filter(|o| o.epoch < mark)
        .for_each(|o| after.apply(o));
    let open = |day: &Day| !is_closed(*day, reference.watermark, settings.grace);
    for (day, totals) in &before.totals {
        if open(day) {
            assert_eq!(
                Some(totals),
                after.totals.get(day),
                "totals of {day} at T − 1"
            );
            assert_eq!(before.top.get(day), after.top.get(day), "top of {day}");
            assert_eq!(before.histogram.get(day), after.histogram.get(day));
        }
    }
    assert!(after.totals.keys().all(open), "a closed day restored");
    let tail_of = |outs: &[EpochOutput]| -> Vec<EpochOutput> {
        outs.iter()
            .filter(|o| o.epoch >= mark)
            .cloned()
            .map(normalized)
            .collect()
    };
    let expected = tail_of(&full);
    same(
        expected.clone(),
        tail_of(&restarted),
        &format!("seed {seed}, {workers} workers, restarted at mark {mark}"),
    );
    assert!(
        expected.iter().any(|o| !o.closed.is_empty()),
        "no day closes after T"
    );
    // Later checkpoints of the restarted run equal the uninterrupted run's.
    for (w, p) in &later_parts {
        if let Some(Some(original)) = by_mark.get(&p.mark).map(|ps| &ps[*w]) {
            assert_eq!(p, original, "part of worker {w} at mark {}", p.mark);
        }
    }
    assert!(later_parts
        .iter()
        .any(|(_, p)| by_mark.contains_key(&p.mark)));
    // Without the window, repeats within it would count again.
    let forgetful = part
        .clone()
        .into_iter()
        .map(|mut p| {
            p.window.clear();
            p
        })
        .collect();
    let (wrong, _, _) = restarted_with(forgetful);
    assert!(
        expected != tail_of(&wrong),
        "seed {seed}: the window made no difference"
    );
}

/// Asserts `a == b`, naming the first epoch that differs and what differs in it.
fn same(a: Vec<EpochOutput>, b: Vec<EpochOutput>, what: &str) {
    for (x, y) in a.iter().zip(&b) {
        if x != y {
            let field = if x.epoch != y.epoch {
                "epoch"
            } else if x.totals != y.totals {
                "totals"
            } else if x.top != y.top {
                "top"
            } else if x.histogram != y.histogram || x.users != y.users {
                "histogram/users"
            } else if x.stats != y.stats {
                "stats"
            } else if x.rejected != y.rejected {
                "rejected"
            } else if x.watermark != y.watermark {
                "watermark"
            } else {
                "closed/positions"
            };
            panic!(
                "{what}: epoch {} ({} here) differs in {field}",
                x.epoch, y.epoch
            );
        }
    }
    assert_eq!(a.len(), b.len(), "{what}: epochs");
}

#[test]
fn restart_from_a_checkpoint_changes_nothing() {
    for (seed, workers) in [(40, 1), (41, 2), (42, 4)] {
        checkpoint_restart_matches_uninterrupted(seed, workers);
    }
}
