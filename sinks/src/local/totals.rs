//! [`DayTotals`]: the total of every user of one open day, as the local sink rebuilds it.
//!
//! A day may have millions of users and every epoch changes many of them. A hash map of them
//! costs a cache miss per change (the map is far larger than the caches) and must be sorted
//! again for every write of `totals.csv`. Here the changes are appended to a log, which is
//! sequential, and merged into a run sorted by user when the log has grown to half the run
//! (or before the day is written): a radix pass and small sorts of the log, then one pass over
//! both. The merges copy each user a bounded number of times per doubling of the day, so the
//! cost follows the changes; the memory follows the users (the run, a log of at most half of
//! it, and the sink's two scratch buffers, [`Scratch`]).

use rankmysteps_dataflow::event::User;

/// A user as two 64-bit halves, most significant first: ordered like the `u128`, 8-byte
/// aligned (a `(u128, u64)` pair takes 32 bytes, a `([u64; 2], u64)` 24).
type Key = [u64; 2];

fn key(user: User) -> Key {
    [(user >> 64) as u64, user as u64]
}

fn user(key: Key) -> User {
    (u128::from(key[0]) << 64) | u128::from(key[1])
}

/// The log is merged into the run once it holds this many changes, or half the run's users.
const LOG_MIN: usize = 1 << 14;

/// Bits of a user's most significant half that the log's radix pass buckets by: enough for
/// about [`BUCKET_TARGET`] changes per bucket, within these bounds.
const RADIX_BITS: std::ops::RangeInclusive<u32> = 8..=16;

/// Changes per bucket the radix pass aims at: the standard stable sort sorts buckets this small
/// by insertion, without a scratch buffer (4 096 buckets of a half-million-change log held about
/// 120 changes each, merge-sorted through a scratch buffer each).
const BUCKET_TARGET: usize = 8;

/// Buffers the merges of every day share (each as large as the largest merge so far).
#[derive(Default)]
pub(super) struct Scratch {
    /// The log, bucketed by the radix pass.
    bucketed: Vec<(Key, u64)>,
    /// The merged run, swapped with the day's.
    merged: Vec<(Key, u64)>,
}

/// One day's totals (see the module docs).
#[derive(Default)]
pub(super) struct DayTotals {
    /// `(user, total)`, sorted by user, one per user.
    run: Vec<(Key, u64)>,
    /// Totals set since the run was merged, in arrival order (a later one wins).
    log: Vec<(Key, u64)>,
}

impl DayTotals {
    /// Sets the user's total.
    #[inline]
    pub(super) fn set(&mut self, user: User, total: u64, scratch: &mut Scratch) {
        self.log.push((key(user), total));
        if self.log.len() >= LOG_MIN.max(self.run.len() / 2) {
            self.merge(scratch);
        }
    }

    /// Removes the user's total if it is `total` (a retraction without an insertion; the
    /// dataflow sends none for an open day, but a sink must apply what it is given).
    pub(super) fn remove_if(&mut self, user: User, total: u64, scratch: &mut Scratch) {
        self.merge(scratch);
        if let Ok(i) = self.run.binary_search_by_key(&key(user), |&(k, _)| k) {
            if self.run[i].1 == total {
                self.run.remove(i);
            }
        }
    }

    /// The number of users (merges the log first).
    pub(super) fn len(&mut self, scratch: &mut Scratch) -> usize {
        self.merge(scratch);
        self.run.len()
    }

    /// Every `(user, total)`, sorted by user (merges the log first).
    pub(super) fn sorted(
        &mut self,
        scratch: &mut Scratch,
    ) -> impl ExactSizeIterator<Item = (User, u64)> + '_ {
        self.merge(scratch);
        self.run.iter().map(|&(k, t)| (user(k), t))
    }

    /// Merges the log into the run.
    fn merge(&mut self, scratch: &mut Scratch) {
        if self.log.is_empty() {
            return;
        }
        sort_log(&mut self.log, &mut scratch.bucketed);
        let merged = &mut scratch.merged;
        merged.clear();
        merged.reserve(self.run.len() + self.log.len());
        let (run, log) = (&self.run, &scratch.bucketed);
        let (mut i, mut j) = (0, 0);
        while j < log.len() {
            let k = log[j].0;
            // The run's users before the log's next one, as they are.
            let from = i;
            while i < run.len() && run[i].0 < k {
                i += 1;
            }
            merged.extend_from_slice(&run[from..i]);
            if i < run.len() && run[i].0 == k {
                i += 1;
            }
            // The last of the log's entries for this user wins (the sort kept their order).
            while j + 1 < log.len() && log[j + 1].0 == k {
                j += 1;
            }
            merged.push(log[j]);
            j += 1;
        }
        merged.extend_from_slice(&run[i..]);
        std::mem::swap(&mut self.run, merged);
        self.log.clear();
    }
}

/// Sorts `log` by user into `out`, equal users in arrival order (stable): one counting pass
/// on the users' top bits (see [`RADIX_BITS`]; random UUIDs spread evenly over the buckets), then a
/// stable sort of each bucket. Users that share their top bits (small integer ids) fall into
/// one bucket: still sorted, by the stable sort alone.
fn sort_log(log: &mut Vec<(Key, u64)>, out: &mut Vec<(Key, u64)>) {
    let bits = (usize::BITS - (log.len() / BUCKET_TARGET).leading_zeros())
        .clamp(*RADIX_BITS.start(), *RADIX_BITS.end());
    let bucket = |k: &Key| (k[0] >> (64 - bits)) as usize;
    let mut starts = vec![0usize; (1 << bits) + 1];
    for (k, _) in log.iter() {
        starts[bucket(k) + 1] += 1;
    }
    for b in 1..starts.len() {
        starts[b] += starts[b - 1];
    }
    out.clear();
    out.resize(log.len(), ([0, 0], 0));
    let mut next = starts.clone();
    for &entry in log.iter() {
        let b = bucket(&entry.0);
        out[next[b]] = entry;
        next[b] += 1;
    }
    for b in 0..1 << bits {
        let bucket = &mut out[starts[b]..starts[b + 1]];
        if bucket.len() > 1 {
            bucket.sort_by_key(|&(k, _)| k);
        }
    }
    log.clear();
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use rankmysteps_dataflow::random::SplitMix64;

    use super::*;

    /// Against a `BTreeMap` applying the same changes, on random UUIDs and on small integer
    /// ids (one radix bucket), with removals in between.
    #[test]
    fn equals_a_map() {
        for (seed, narrow) in [(1u64, false), (2, true), (3, false)] {
            let mut rng = SplitMix64(seed);
            let mut scratch = Scratch::default();
            let mut day = DayTotals::default();
            let mut map: BTreeMap<User, u64> = BTreeMap::new();
            let users: Vec<User> = (0..5_000)
                .map(|i| {
                    if narrow {
                        i as User
                    } else {
                        (u128::from(rng.next_u64()) << 64) | u128::from(rng.next_u64())
                    }
                })
                .collect();
            for step in 0..200_000u64 {
                let u = users[(rng.next_u64() % users.len() as u64) as usize];
                let total = rng.next_u64() % 50;
                if step % 997 == 0 {
                    day.remove_if(u, total, &mut scratch);
                    if map.get(&u) == Some(&total) {
                        map.remove(&u);
                    }
                } else {
                    day.set(u, total, &mut scratch);
                    map.insert(u, total);
                }
                if step % 50_000 == 0 || step == 199_999 {
                    let got: Vec<(User, u64)> = day.sorted(&mut scratch).collect();
                    let want: Vec<(User, u64)> = map.iter().map(|(&u, &t)| (u, t)).collect();
                    assert_eq!(got, want, "seed {seed}, step {step}");
                    assert_eq!(day.len(&mut scratch), map.len());
                }
            }
        }
    }

    /// Repeated changes of one user within one log: the last one wins.
    #[test]
    fn the_last_change_wins() {
        let mut scratch = Scratch::default();
        let mut day = DayTotals::default();
        let u: User = 0x0123_4567_89ab_cdef_0123_4567_89ab_cdef;
        for total in [5, 9, 7] {
            day.set(u, total, &mut scratch);
        }
        day.set(u - 1, 1, &mut scratch);
        day.set(u, 8, &mut scratch);
        let got: Vec<(User, u64)> = day.sorted(&mut scratch).collect();
        assert_eq!(got, vec![(u - 1, 1), (u, 8)]);
        day.remove_if(u, 7, &mut scratch);
        assert_eq!(day.len(&mut scratch), 2, "7 is not the current total");
        day.remove_if(u, 8, &mut scratch);
        let got: Vec<(User, u64)> = day.sorted(&mut scratch).collect();
        assert_eq!(got, vec![(u - 1, 1)]);
    }
}
