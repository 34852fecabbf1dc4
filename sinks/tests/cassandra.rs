//! Integration tests of the Cassandra sink and readers against a real Cassandra on
//! 127.0.0.1:9042 (`scripts/services start cassandra`; override with `RANKMYSTEPS_CASSANDRA`).
//!
//! Compiled only with `--features integration`; with it, a missing Cassandra fails the tests
//! (never a silent skip). Each test works in a fresh keyspace of its own.
//!
//! The epochs are built the way the dataflow emits them: from the previous and the new totals
//! of every (day, user), as consolidated deltas of totals, top-k rows, histogram counts and
//! users per day; what is read back is compared with `rankmysteps_dataflow::ranking` over the
//! same totals.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use rankmysteps_dataflow::event::{day_from_civil, format_day, Day, User};
use rankmysteps_dataflow::output::{EpochOutput, Position, Stats};
use rankmysteps_dataflow::ranking::{rank_prefix, sort_listing, standing};
use rankmysteps_sinks::cassandra::{schema, CassandraConfig, CassandraReader, CassandraSink};
use rankmysteps_sinks::local::{StatsFile, TopEntry};
use rankmysteps_sinks::Sink;

type Totals = BTreeMap<(Day, User), u64>;

fn config() -> CassandraConfig {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let contact = std::env::var("RANKMYSTEPS_CASSANDRA").unwrap_or("127.0.0.1:9042".into());
    CassandraConfig {
        contact_points: vec![contact],
        keyspace: format!("rms_test_{}_{}", std::process::id(), nanos % 1_000_000_000),
        consistency: "ONE".into(),
        ..CassandraConfig::default()
    }
}

/// A day's listing (listing order) from all totals.
fn listing(totals: &Totals, day: Day) -> Vec<(User, u64)> {
    let mut l: Vec<(User, u64)> = totals
        .range((day, 0)..=(day, User::MAX))
        .map(|(&(_, u), &t)| (u, t))
        .collect();
    sort_listing(&mut l);
    l
}

/// Consolidated `-old`/`+new` deltas between two sets of records.
fn deltas<T: Ord + Copy>(old: &BTreeSet<T>, new: &BTreeSet<T>) -> Vec<(T, isize)> {
    let mut out: Vec<(T, isize)> = old.difference(new).map(|&r| (r, -1)).collect();
    out.extend(new.difference(old).map(|&r| (r, 1)));
    out.sort();
    out
}

/// The epoch output taking `old` to `new` (as the dataflow would emit it) with top-`k`.
fn epoch_output(epoch: u64, old: &Totals, new: &Totals, k: usize, closed: Vec<Day>) -> EpochOutput {
    let days: BTreeSet<Day> = old.keys().chain(new.keys()).map(|&(d, _)| d).collect();
    let (mut top_old, mut top_new) = (BTreeSet::new(), BTreeSet::new());
    let (mut hist_old, mut hist_new) = (BTreeSet::new(), BTreeSet::new());
    let (mut users_old, mut users_new) = (BTreeSet::new(), BTreeSet::new());
    for &day in &days {
        for (totals, top, hist, users) in [
            (old, &mut top_old, &mut hist_old, &mut users_old),
            (new, &mut top_new, &mut hist_new, &mut users_new),
        ] {
            let l = listing(totals, day);
            top.extend(
                rank_prefix(l.iter().copied(), k)
                    .into_iter()
                    .map(|r| (day, r)),
            );
            let mut counts: BTreeMap<u64, u64> = BTreeMap::new();
            for &(_, t) in &l {
                *counts.entry(t).or_default() += 1;
            }
            hist.extend(counts.into_iter().map(|(t, c)| (day, t, c)));
            if !l.is_empty() {
                users.insert((day, l.len() as u64));
            }
        }
    }
    // Totals: a change is the old total's retraction immediately followed by the new one.
    let mut totals = Vec::new();
    for (&(day, user), &t) in new {
        match old.get(&(day, user)) {
            Some(&o) if o == t => {}
            Some(&o) => {
                totals.push(((day, user, o), -1));
                totals.push(((day, user, t), 1));
            }
            None => totals.push(((day, user, t), 1)),
        }
    }
    let mut stats = Stats {
        accepted: totals.len() as u64,
        ..Stats::default()
    };
    stats.rejected[5] = epoch;
    EpochOutput {
        epoch,
        watermark: Some(1_700_000_000_000_000 + epoch as i64),
        totals,
        top: deltas(&top_old, &top_new),
        histogram: deltas(&hist_old, &hist_new),
        users: deltas(&users_old, &users_new),
        closed,
        rejected: Vec::new(),
        stats,
        positions: vec![Position {
            partition: (epoch % 2) as u32,
            next: epoch * 100,
        }],
    }
}

/// Checks everything readable for `days` against the reference over `totals`.
fn check(reader: &CassandraReader, totals: &Totals, days: &[Day], k: usize, finals: &[Day]) {
    for &day in days {
        let l = listing(totals, day);
        let is_final = finals.contains(&day);
        let top = reader.top(day, Some(k)).unwrap();
        let want: Vec<TopEntry> = rank_prefix(l.iter().copied(), k)
            .iter()
            .map(TopEntry::from)
            .collect();
        assert_eq!(top.top, want, "top of {}", format_day(day));
        assert_eq!((top.users, top.is_final), (l.len() as u64, is_final));
        // Beyond the stored top-k: computed from the listing table.
        let more = reader.top(day, Some(l.len() + 5)).unwrap();
        let want: Vec<TopEntry> = rank_prefix(l.iter().copied(), l.len())
            .iter()
            .map(TopEntry::from)
            .collect();
        assert_eq!(more.top, want, "full listing of {}", format_day(day));
        for &(user, _) in &l {
            for n in [0, 1, 3] {
                let got = reader.standing(day, user, n).unwrap();
                let want = standing(&l, user, n).unwrap();
                assert_eq!(got, Some((want, is_final)), "standing of {user} (n = {n})");
            }
        }
        assert_eq!(reader.standing(day, 999_999, 2).unwrap(), None);
    }
    let users: BTreeSet<User> = totals.keys().map(|&(_, u)| u).collect();
    for user in users {
        let mut want: Vec<(Day, u64)> = totals
            .iter()
            .filter(|((_, u), _)| *u == user)
            .map(|(&(d, _), &t)| (d, t))
            .collect();
        want.reverse();
        assert_eq!(
            reader.user_history(user).unwrap(),
            want,
            "history of {user}"
        );
        for &(d, t) in &want {
            assert_eq!(reader.total(d, user).unwrap(), Some(t));
        }
    }
}

#[test]
fn epochs_read_back_like_the_reference() {
    let config = config();
    schema::apply(&config).unwrap();
    // Applying again is a no-op.
    schema::apply(&config).unwrap();
    let mut sink = CassandraSink::connect(&config, "job-a").unwrap();
    let reader = CassandraReader::connect(&config).unwrap();
    assert_eq!(reader.progress("job-a").unwrap(), None);

    let d = day_from_civil(2026, 11, 27);
    let k = 3;
    let days = [d - 1, d];
    let e0 = Totals::new();
    // Epoch 1: two days; ties at 40.
    let mut e1 = e0.clone();
    for (user, t) in [(1, 50), (2, 40), (3, 40), (4, 30), (5, 20), (6, 10)] {
        e1.insert((d, user), t);
    }
    e1.insert((d - 1, 1), 7);
    e1.insert((d - 1, 2), 9);
    // Epoch 2: user 6 jumps over three users, user 7 arrives tied at 40: top rows shift.
    let mut e2 = e1.clone();
    e2.insert((d, 6), 45);
    e2.insert((d, 7), 40);
    e2.insert((d - 1, 1), 9);
    // Epoch 3: day d-1 closes; user 4 takes the lead.
    let mut e3 = e2.clone();
    e3.insert((d, 4), 60);
    let outputs = [
        epoch_output(1, &e0, &e1, k, vec![]),
        epoch_output(2, &e1, &e2, k, vec![]),
        epoch_output(3, &e2, &e3, k, vec![d - 1]),
    ];
    let states = [&e1, &e2, &e3];
    let mut stats = Stats::default();
    for (i, output) in outputs.iter().enumerate() {
        sink.write_epoch(output).unwrap();
        // The top-k is written when `write_epoch` returns; the rest once the bulk lane is done.
        let top = reader.top(d, None).unwrap();
        assert_eq!(top.top.len(), k.min(listing(states[i], d).len()));
        sink.flush().unwrap();
        stats.add(&output.stats);
        let finals: &[Day] = if i == 2 { &[d - 1] } else { &[] };
        check(&reader, states[i], &days, k, finals);
    }
    // A stale listing row of user 6 (old total 10) would show up here.
    let last = reader.standing(d, 5, 3).unwrap().unwrap().0;
    assert_eq!((last.rank, last.gap_down, last.below.len()), (7, None, 0));
    // Just above user 5 (20): the last of the users tied at 40, user 7.
    assert_eq!(last.above.last().unwrap().0, 7);

    let progress = reader.progress("job-a").unwrap().unwrap();
    assert_eq!(progress.epoch, 3);
    assert_eq!(progress.watermark_micros, Some(1_700_000_000_000_003));
    assert_eq!(
        progress.positions,
        vec![
            Position {
                partition: 0,
                next: 200
            },
            Position {
                partition: 1,
                next: 300
            },
        ]
    );
    assert_eq!(progress.stats, StatsFile::from(&stats));
    assert_eq!(reader.progress("another-job").unwrap(), None);

    // Idempotence: a restarted sink rewrites epoch 3 (twice): nothing changes.
    for _ in 0..2 {
        let mut again = CassandraSink::connect(&config, "job-a").unwrap();
        again.resume(Some(&progress), Some(3));
        again.write_epoch(&outputs[2]).unwrap();
        again.finish().unwrap();
        check(&reader, &e3, &days, k, &[d - 1]);
    }
    let after = reader.progress("job-a").unwrap().unwrap();
    assert_eq!((after.epoch, &after.positions), (3, &progress.positions));
    // Each restarted sink resumed from the same record and added epoch 3's counters once.
    let mut resumed = stats;
    resumed.add(&outputs[2].stats);
    assert_eq!(after.stats, StatsFile::from(&resumed));

    // Out of order is refused.
    assert!(sink.write_epoch(&outputs[1]).is_err());
    sink.finish().unwrap();

    // A day with no output.
    assert!(reader.top(d + 10, Some(3)).is_err());

    // Epochs handed over faster than the bulk lane writes are merged there: the tables end up
    // the same (a fresh keyspace, all three epochs at once, the bulk lane writing at most every
    // 10 s: `finish` writes what waits at once).
    let config = CassandraConfig {
        bulk_interval_ms: 10_000,
        ..self::config()
    };
    schema::apply(&config).unwrap();
    let mut sink = CassandraSink::connect(&config, "job-b").unwrap();
    for output in &outputs {
        sink.write_epoch(output).unwrap();
    }
    sink.finish().unwrap();
    let reader = CassandraReader::connect(&config).unwrap();
    check(&reader, &e3, &days, k, &[d - 1]);
    assert_eq!(reader.progress("job-b").unwrap().unwrap().epoch, 3);
}

/// A restart writes again the epochs after the progress record up to the intent it found, one
/// by one: the run that stopped may have written an intermediate epoch's rows, which a merged
/// rewrite would leave behind (its insert and the next epoch's delete cancel in the merge).
/// Fencing (design §4): claims give every start of a process a larger generation, an older
/// generation is told it is fenced, and whatever an older start still writes (later epochs,
/// later in wall-clock time) loses against the newer start's writes and progress record.
#[test]
fn an_older_generation_can_no_longer_win_a_write() {
    let config = config();
    schema::apply(&config).unwrap();
    let reader = CassandraReader::connect(&config).unwrap();
    assert_eq!(reader.generation("job", 0).unwrap(), None);
    let old = reader.claim_generation("job", 0).unwrap();
    assert_eq!(old, 1);
    reader.check_generation("job", 0, old).unwrap();
    let new = reader.claim_generation("job", 0).unwrap();
    assert_eq!(new, 2);
    // Processes and jobs have generations of their own.
    assert_eq!(reader.claim_generation("job", 1).unwrap(), 1);
    assert_eq!(reader.claim_generation("other", 0).unwrap(), 1);
    let fenced = reader.check_generation("job", 0, old).unwrap_err();
    assert!(
        matches!(
            fenced,
            rankmysteps_sinks::SinkError::Fenced {
                generation: 1,
                current: 2
            }
        ),
        "{fenced}"
    );
    reader.check_generation("job", 0, new).unwrap();
    // Claims racing from threads each get a generation of their own.
    let claimed: BTreeSet<u64> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    CassandraReader::connect(&config)
                        .unwrap()
                        .claim_generation("race", 0)
                        .unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(claimed, (1..=4).collect());

    let (d, k) = (day_from_civil(2026, 11, 27), 2);
    let mut a = Totals::new();
    a.insert((d, 1), 50);
    a.insert((d, 2), 40);
    let mut b = a.clone();
    b.insert((d, 2), 45);
    let mut zombie_state = b.clone();
    zombie_state.insert((d, 1), 999);
    zombie_state.insert((d, 3), 5);
    let out3 = epoch_output(3, &Totals::new(), &a, k, vec![]);
    // Generation 1 writes epochs up to 3 and stops being heard from (it still runs).
    let mut zombie = CassandraSink::connect(&config, "job").unwrap();
    zombie.set_generation(old);
    zombie.write_epoch(&out3).unwrap();
    zombie.flush().unwrap();
    // Generation 2 restarts from its progress record (epoch 3): it restores epoch 3, so it
    // writes the open day whole as its own, then epoch 4.
    let mut newer = CassandraSink::connect(&config, "job").unwrap();
    newer.set_generation(new);
    newer.resume(reader.progress("job").unwrap().as_ref(), Some(3));
    newer.restore(&out3).unwrap();
    newer
        .write_epoch(&epoch_output(4, &a, &b, k, vec![]))
        .unwrap();
    newer.finish().unwrap();
    // Generation 1 then writes epoch 6 (a later epoch, later in time): other totals, a new
    // user, a new histogram count, its progress record. None of it shows.
    zombie
        .write_epoch(&epoch_output(6, &b, &zombie_state, k, vec![]))
        .unwrap();
    zombie.finish().unwrap();
    check(&reader, &b, &[d], k, &[]);
    // Only a user's own `totals_by_user` row of a user generation 2 has not seen yet can show
    // what generation 1 wrote (that table is partitioned by user, so no day's delete covers
    // it): until generation 2 reads the same records and writes it as its own.
    assert_eq!(reader.total(d, 3).unwrap(), Some(5));
    assert_eq!(reader.progress("job").unwrap().unwrap().epoch, 4);
}

/// Process `process`'s share of `out` in a cluster of two (design §7, as `deliver` routes
/// it): the totals of its users (odd users on process 1), the histogram and users per day on
/// process 1, the top-k and the counters on process 0, every partition's positions on both.
fn share(out: &EpochOutput, process: usize) -> EpochOutput {
    let mine = |user: User| (user % 2) as usize == process;
    EpochOutput {
        totals: out
            .totals
            .iter()
            .filter(|((_, u, _), _)| mine(*u))
            .copied()
            .collect(),
        top: if process == 0 {
            out.top.clone()
        } else {
            vec![]
        },
        histogram: if process == 1 {
            out.histogram.clone()
        } else {
            vec![]
        },
        users: if process == 1 {
            out.users.clone()
        } else {
            vec![]
        },
        stats: if process == 0 {
            out.stats
        } else {
            Stats::default()
        },
        ..out.clone()
    }
}

#[test]
fn a_cluster_publishes_its_progress_once_every_process_has_written() {
    let config = config();
    schema::apply(&config).unwrap();
    let reader = CassandraReader::connect(&config).unwrap();
    let (d, k) = (day_from_civil(2026, 11, 28), 2);
    let mut a = Totals::new();
    a.insert((d, 1), 50);
    a.insert((d, 2), 40);
    a.insert((d, 3), 45);
    let mut b = a.clone();
    b.insert((d, 2), 60);
    let out1 = epoch_output(1, &Totals::new(), &a, k, vec![]);
    // Epoch 2 changes process 1's user 2 and closes the day.
    let out2 = epoch_output(2, &a, &b, k, vec![d]);
    let connect = |process| {
        let mut sink = CassandraSink::connect(&config, "job").unwrap();
        sink.set_process(process, 2, 1);
        sink.set_generation(1);
        sink
    };
    let (mut s0, mut s1) = (connect(0), connect(1));
    // Each epoch written on its own, as a running job's would be: handed over back to back, the
    // bulk lane may merge them into one write of epoch 2, whose day is first seen closing, and
    // such a day is listed only with the cluster's record (this test once failed so, under load).
    s0.write_epoch(&share(&out1, 0)).unwrap();
    s0.flush().unwrap();
    s0.write_epoch(&share(&out2, 0)).unwrap();
    s0.flush().unwrap();
    // Process 0 wrote its share of both epochs, but process 1 nothing: no cluster record,
    // and the day is not final, though process 0 knows it closed.
    assert!(reader.progress("job").unwrap().is_none());
    assert_eq!(reader.days().unwrap(), vec![(d, false)]);
    s1.write_epoch(&share(&out1, 1)).unwrap();
    s1.flush().unwrap();
    assert_eq!(reader.progress("job/p1of2x1").unwrap().unwrap().epoch, 1);
    // Process 1 reached epoch 1: process 0 publishes it (it polls), the day still not final.
    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    while reader.progress("job").unwrap().is_none() {
        assert!(Instant::now() < deadline, "epoch 1 never published");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let published = reader.progress("job").unwrap().unwrap();
    assert_eq!(published.epoch, 1);
    assert_eq!(published.stats.accepted, out1.stats.accepted);
    assert_eq!(reader.days().unwrap(), vec![(d, false)]);
    s1.write_epoch(&share(&out2, 1)).unwrap();
    s1.finish().unwrap();
    s0.finish().unwrap();
    let published = reader.progress("job").unwrap().unwrap();
    assert_eq!(published.epoch, 2);
    assert_eq!(
        published.stats.accepted,
        out1.stats.accepted + out2.stats.accepted
    );
    // Both shares together are the whole state, final.
    check(&reader, &b, &[d], k, &[d]);
    assert_eq!(reader.days().unwrap(), vec![(d, true)]);
}

#[test]
fn a_restart_rewrites_half_written_epochs_one_by_one() {
    // The bulk lane writes at most every 10 s: without the rule, the rewrites of epochs 3 and 4
    // would wait there together and be merged.
    let config = CassandraConfig {
        bulk_interval_ms: 10_000,
        ..config()
    };
    schema::apply(&config).unwrap();
    let reader = CassandraReader::connect(&config).unwrap();
    let (d, k) = (day_from_civil(2026, 11, 27), 2);
    let mut states = vec![Totals::new()];
    // User 6's total changes at every epoch: 10, 45, 70, 80; user 1 stays at 50.
    for t in [10, 45, 70, 80] {
        let mut next = states.last().unwrap().clone();
        next.insert((d, 1), 50);
        next.insert((d, 6), t);
        states.push(next);
    }
    let outputs: Vec<EpochOutput> = (1..states.len())
        .map(|e| epoch_output(e as u64, &states[e - 1], &states[e], k, vec![]))
        .collect();
    // The run that stops: its progress record says epoch 1; it went on to write epochs 2 and
    // 3 (rows (d, 45, 6) then (d, 70, 6)) and had begun epoch 4 (its intent).
    // As workers do, every start claims a generation: the stopped run's, then the restart's.
    let stopped = reader.claim_generation("job", 0).unwrap();
    let mut first = CassandraSink::connect(&config, "job").unwrap();
    first.set_generation(stopped);
    first.write_epoch(&outputs[0]).unwrap();
    first.finish().unwrap();
    let progress = reader.progress("job").unwrap().unwrap();
    assert_eq!(progress.epoch, 1);
    for output in &outputs[1..3] {
        let mut more = CassandraSink::connect(&config, "job-stopped").unwrap();
        more.set_generation(stopped);
        more.write_epoch(output).unwrap();
        more.finish().unwrap();
    }
    // The restart rewrites epochs 2 to 4 (the intent): the tables hold epoch 4 exactly.
    let started = Instant::now();
    let mut again = CassandraSink::connect(&config, "job").unwrap();
    again.set_generation(reader.claim_generation("job", 0).unwrap());
    again.resume(Some(&progress), Some(4));
    for output in &outputs[1..] {
        again.write_epoch(output).unwrap();
    }
    // Rewrites are written at once, whatever the interval.
    assert!(started.elapsed().as_secs() < 10, "{:?}", started.elapsed());
    again.finish().unwrap();
    // A stale listing row (d, 70, 6) would show in the full listing and the standings.
    check(&reader, &states[4], &[d], k, &[]);
    assert_eq!(reader.progress("job").unwrap().unwrap().epoch, 4);
}

#[test]
#[ignore = "measures throughput: run with --ignored --nocapture"]
fn throughput() {
    let config = CassandraConfig {
        max_in_flight: std::env::var("RMS_IN_FLIGHT")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(256),
        ..config()
    };
    schema::apply(&config).unwrap();
    let mut sink = CassandraSink::connect(&config, "bench").unwrap();
    let users: u64 = 100_000;
    let d = day_from_civil(2026, 11, 27);
    let mut old = Totals::new();
    let mut epoch = 0;
    for round in 1..=2u64 {
        let mut new = Totals::new();
        for u in 0..users {
            new.insert(
                (d, u128::from(u) * 0x9E37_79B9_7F4A_7C15),
                (u * 7919 + round * 13) % 100_003 * round,
            );
        }
        epoch += 1;
        let output = epoch_output(epoch, &old, &new, 100, vec![]);
        let started = Instant::now();
        sink.write_epoch(&output).unwrap();
        sink.flush().unwrap();
        let secs = started.elapsed().as_secs_f64();
        println!(
            "epoch {epoch}: {users} changed users ({} total deltas, {} histogram deltas) in {secs:.2} s: \
             {:.0} changed users/s",
            output.totals.len(),
            output.histogram.len(),
            users as f64 / secs
        );
        old = new;
    }
}
