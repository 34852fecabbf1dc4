//! A batcher for totally ordered times that sorts each batch once.
//!
//! Differential's `MergeBatcher` sorts every incoming chunk and merges chunks into a geometric
//! ladder as they arrive, so each update is copied about log₂(updates per epoch / 1024) times,
//! and every merge fills fresh chunks (page faults). That suits many small batches over partially
//! ordered times. Our arrangements receive one large batch per epoch over `u64` epochs, sealed
//! once the epoch completes: gathering the updates and sorting them once when the batch is sealed
//! does the same work with one sort (measured in README, Performance).
//!
//! The sort itself is a radix sort of 8-byte proxies, made of each key's 128-bit prefix
//! ([`SortPrefix`]: the day, then the total or the user's first bits), on the prefixes' most
//! significant bytes that differ (at most four), then a comparison sort of each run of proxies
//! those bytes leave tied (one or two updates in `by-total` and `totals`). The updates do not
//! move: the builder is fed from the proxies' order, consolidating through a small chunk. An
//! epoch's 100 000 updates of 48 to 64 bytes took a comparison sort about seventeen levels of
//! data-dependent branches and moves.
//!
//! Invariant: `pending` holds every update inserted and not yet extracted, unsorted; `frontier`
//! is the least time among them after each extraction (empty when none is left).

use std::marker::PhantomData;

use differential_dataflow::batcher::{Batcher, Extract};
use differential_dataflow::difference::Semigroup;
use differential_dataflow::logging::{BatcherEvent, Logger};
use differential_dataflow::trace::implementations::ord_neu::{OrdKeyBuilder, OrdValBuilder};
use differential_dataflow::trace::implementations::Layout;
use differential_dataflow::trace::Builder;
use timely::progress::frontier::{Antichain, AntichainRef};

/// A key whose order starts with a 128-bit prefix: `a < b` implies
/// `a.sort_prefix() <= b.sort_prefix()` (equal prefixes say nothing; the full order decides).
pub trait SortPrefix {
    /// The prefix; the more it tells keys apart, the less is left to comparisons.
    fn sort_prefix(&self) -> u128;
}

/// A day's order as the high 32 bits (the sign bit flipped, so that negative days come first).
#[inline]
fn day_bits(day: i32) -> u128 {
    u128::from((day as u32) ^ 0x8000_0000) << 96
}

/// `top-k candidates`, `top-k`, `users`: by day.
impl SortPrefix for i32 {
    #[inline]
    fn sort_prefix(&self) -> u128 {
        day_bits(*self)
    }
}

/// `histogram`: by day, then total.
impl SortPrefix for (i32, u64) {
    #[inline]
    fn sort_prefix(&self) -> u128 {
        day_bits(self.0) | u128::from(self.1) << 32
    }
}

/// (day, user) pairs: by day, then the user's 96 high bits (the prefix of `totals`' key,
/// [`crate::arranged::DayUser`]).
impl SortPrefix for (i32, u128) {
    #[inline]
    fn sort_prefix(&self) -> u128 {
        day_bits(self.0) | self.1 >> 32
    }
}

/// `by-total`: by day, then total, largest first (saturated to 32 bits: larger totals tie, and
/// compare), then the user's 64 high bits.
impl SortPrefix for (i32, std::cmp::Reverse<u64>, u128) {
    #[inline]
    fn sort_prefix(&self) -> u128 {
        let total = u64::from(u32::MAX) - self.1 .0.min(u64::from(u32::MAX));
        day_bits(self.0) | u128::from(total) << 64 | self.2 >> 64
    }
}

/// Below this many updates, a comparison sort is as fast as the radix passes.
const RADIX_MIN: usize = 2048;

/// At most this many bytes of the prefixes are radix-sorted: the most significant ones that
/// differ (a day, a total's low bytes, a user's first byte leave runs of one or two updates for
/// the comparison sort).
const MAX_BYTES: usize = 4;

/// Bits of the proxies' high half sorted per radix pass: 2 048 buckets, whose counts (8 KiB)
/// stay in the first-level cache.
const DIGIT_BITS: usize = 11;
const DIGIT_MASK: u64 = (1 << DIGIT_BITS) - 1;

/// Indexes take the proxies' low half.
const LOW: u64 = 0xFFFF_FFFF;

/// The order of `updates` by `(data, time)`, as `proxies[0]`: one `u64` per update, its index
/// in the low half (`proxies[1]` is the radix passes' second buffer, left empty). The updates
/// themselves do not move.
///
/// The updates are 48 to 64 bytes, so the radix passes sort 8-byte proxies instead: each
/// update's prefix's (see [`SortPrefix`]) most significant bytes that differ (at most
/// [`MAX_BYTES`]) above its index. Each run of proxies whose bytes tie is then sorted by
/// comparing the updates it points to (one or two updates in `by-total` and `totals`). Small
/// inputs, and inputs whose prefixes are all equal, are sorted by comparison alone (their high
/// halves are zero). Invariant of the result: two updates whose proxies' high halves differ
/// have different keys (equal keys have equal prefixes), which [`key_counts`] relies on.
///
/// `proxies` are buffers the caller keeps between calls (fresh ones every epoch are fresh pages
/// to fault in). `updates` must hold fewer than 2³² - 1 updates.
pub fn sort_order<K, V, T, R>(updates: &[((K, V), T, R)], proxies: &mut [Vec<u64>; 2])
where
    K: Ord + SortPrefix,
    V: Ord,
    T: Ord,
{
    let by_data_time = |a: &((K, V), T, R), b: &((K, V), T, R)| (&a.0, &a.1).cmp(&(&b.0, &b.1));
    let n = updates.len();
    debug_assert!((n as u64) < LOW);
    let [sorted, other] = proxies;
    sorted.clear();
    other.clear();
    let by_index =
        |a: &u64, b: &u64| by_data_time(&updates[(a & LOW) as usize], &updates[(b & LOW) as usize]);
    let prefix = |u: &((K, V), T, R)| u.0 .0.sort_prefix();
    // Which bytes differ: the OR of every prefix's XOR with the first one.
    let bytes: Vec<u32> = match updates.first() {
        Some(first) if n >= RADIX_MIN => {
            let first = prefix(first);
            let differ = updates
                .iter()
                .fold(0u128, |acc, u| acc | (prefix(u) ^ first));
            (0..16u32)
                .rev()
                .filter(|b| (differ >> (8 * b)) & 0xFF != 0)
                .take(MAX_BYTES)
                .collect()
        }
        _ => Vec::new(),
    };
    if bytes.is_empty() {
        sorted.extend(0..n as u64);
        sorted.sort_unstable_by(by_index);
        return;
    }
    // The chosen bytes, most significant first, as the high half of a proxy; the index below.
    sorted.extend(updates.iter().enumerate().map(|(i, u)| {
        let p = prefix(u);
        let key = bytes
            .iter()
            .fold(0u64, |key, &b| key << 8 | ((p >> (8 * b)) & 0xFF) as u64);
        key << 32 | i as u64
    }));
    // Least significant digit first, [`DIGIT_BITS`] at a time (the key takes the low
    // `8 × bytes.len()` bits of the half): three passes for four bytes where bytes took four,
    // and every digit counted in one read of the proxies. A digit all proxies share is skipped.
    let digits = (8 * bytes.len()).div_ceil(DIGIT_BITS);
    let mut counts = vec![[0u32; 1 << DIGIT_BITS]; digits];
    for &x in sorted.iter() {
        for (digit, count) in counts.iter_mut().enumerate() {
            count[((x >> (32 + DIGIT_BITS * digit)) & DIGIT_MASK) as usize] += 1;
        }
    }
    other.resize(n, 0);
    for (digit, next) in counts.iter_mut().enumerate() {
        if next.contains(&(n as u32)) {
            continue;
        }
        let shift = 32 + DIGIT_BITS * digit;
        let mut sum = 0;
        for slot in next.iter_mut() {
            let c = *slot;
            *slot = sum;
            sum += c;
        }
        for &x in sorted.iter() {
            let d = ((x >> shift) & DIGIT_MASK) as usize;
            other[next[d] as usize] = x;
            next[d] += 1;
        }
        std::mem::swap(sorted, other);
    }
    other.clear();
    // Runs whose chosen bytes tie, sorted by comparing their updates.
    let mut start = 0;
    for i in 1..=n {
        if i == n || sorted[i] >> 32 != sorted[start] >> 32 {
            if i - start > 1 {
                sorted[start..i].sort_unstable_by(by_index);
            }
            start = i;
        }
    }
}

/// The number of distinct keys and of distinct (key, value) pairs of `updates`, given their
/// order from [`sort_order`]. Only neighbours whose proxies tie are compared (others differ in
/// their keys), so this reads few updates besides those of tied runs.
pub fn key_counts<K: Eq, V: Eq, T, R>(updates: &[((K, V), T, R)], order: &[u64]) -> (usize, usize) {
    let (mut keys, mut vals) = (0, 0);
    for (i, &p) in order.iter().enumerate() {
        let tied = i > 0 && order[i - 1] >> 32 == p >> 32;
        let previous = tied.then(|| &updates[(order[i - 1] & LOW) as usize].0);
        let (k, v) = &updates[(p & LOW) as usize].0;
        match previous {
            Some((pk, pv)) if pk == k => vals += usize::from(pv != v),
            _ => {
                keys += 1;
                vals += 1;
            }
        }
    }
    (keys, vals)
}

/// Pushes `updates`, in `order` (from [`sort_order`]), consolidated into `builder`: one update
/// per `(data, time)`, diffs added, zero diffs dropped. The updates are gathered through `chunk`
/// (a small buffer the caller keeps), handed over every [`CHUNK`] updates.
pub fn push_consolidated<K, V, T, R, S>(
    updates: &[((K, V), T, R)],
    order: &[u64],
    chunk: &mut Vec<((K, V), T, R)>,
    builder: &mut S,
) where
    K: Eq + Clone,
    V: Eq + Clone,
    T: Eq + Clone,
    R: Semigroup + Clone,
    S: SortedBuilder<K, V, T, R>,
{
    chunk.clear();
    for &p in order {
        let u = &updates[(p & LOW) as usize];
        match chunk.last_mut() {
            Some(last) if last.0 == u.0 && last.1 == u.1 => last.2.plus_equals(&u.2),
            _ => {
                // The last update is complete: dropped if it cancelled out. A pair of equal
                // (data, time) never straddles two chunks.
                if chunk.last().is_some_and(|l| l.2.is_zero()) {
                    chunk.pop();
                }
                if chunk.len() >= CHUNK {
                    builder.push_chunk(chunk);
                }
                chunk.push(u.clone());
            }
        }
    }
    if chunk.last().is_some_and(|l| l.2.is_zero()) {
        chunk.pop();
    }
    builder.push_chunk(chunk);
}

/// Updates handed to a builder at a time by [`push_consolidated`]: small enough to stay in the
/// first-level cache, large enough that the hand-over costs nothing.
const CHUNK: usize = 1024;

/// Consolidates updates sorted by `(data, time)`: one update per `(data, time)`, diffs added,
/// zero diffs dropped.
pub fn consolidate_sorted<D: Eq, T: Eq, R: Semigroup>(updates: &mut Vec<(D, T, R)>) {
    let mut kept = 0;
    for i in 0..updates.len() {
        if kept > 0 && updates[kept - 1].0 == updates[i].0 && updates[kept - 1].1 == updates[i].1 {
            let (done, rest) = updates.split_at_mut(i);
            done[kept - 1].2.plus_equals(&rest[0].2);
        } else {
            if kept > 0 && updates[kept - 1].2.is_zero() {
                kept -= 1;
            }
            updates.swap(kept, i);
            kept += 1;
        }
    }
    if kept > 0 && updates[kept - 1].2.is_zero() {
        kept -= 1;
    }
    updates.truncate(kept);
}

/// A differential builder of batches from sorted, consolidated chunks, sized at once.
pub trait SortedBuilder<K, V, T, R>: Builder<Input = Vec<((K, V), T, R)>> {
    /// A builder for `keys` distinct keys, `vals` distinct (key, value) pairs and at most
    /// `upds` updates.
    fn with_capacity(keys: usize, vals: usize, upds: usize) -> Self;

    /// Appends `chunk`'s updates, which follow those already pushed in order; leaves `chunk`
    /// empty with its capacity (differential's `Sealer` takes the chunk and drops its
    /// allocation).
    fn push_chunk(&mut self, chunk: &mut Vec<((K, V), T, R)>) {
        self.push(chunk);
        chunk.clear();
    }
}

impl<L: Layout, K, V, T, R> SortedBuilder<K, V, T, R> for OrdKeyBuilder<L, Vec<((K, V), T, R)>>
where
    Self: Builder<Input = Vec<((K, V), T, R)>>,
{
    fn with_capacity(keys: usize, _: usize, upds: usize) -> Self {
        OrdKeyBuilder::with_capacity(keys, keys, upds)
    }
}

impl<L: Layout, K, V, T, R> SortedBuilder<K, V, T, R> for OrdValBuilder<L, Vec<((K, V), T, R)>>
where
    Self: Builder<Input = Vec<((K, V), T, R)>>,
{
    fn with_capacity(keys: usize, vals: usize, upds: usize) -> Self {
        OrdValBuilder::with_capacity(keys, vals, upds)
    }
}

/// Sorts and consolidates the updates of a batch once, when it is sealed; `S` builds the batch.
///
/// Its buffers keep their capacity from epoch to epoch (at most the largest epoch's
/// updates): fresh buffers of that size every epoch are fresh pages the kernel must zero.
pub struct SortBatcher<K, V, T, R, S> {
    /// Updates inserted and not yet extracted, in arrival order.
    pending: Vec<((K, V), T, R)>,
    /// The updates being extracted, when some of `pending` are not; empty (with its capacity)
    /// between extractions.
    ready: Vec<((K, V), T, R)>,
    /// The sort's order and its radix passes' second buffer; empty between extractions.
    proxies: [Vec<u64>; 2],
    /// Consolidated updates on their way to the builder ([`CHUNK`] at most).
    chunk: Vec<((K, V), T, R)>,
    /// The least time in `pending` after the last extraction.
    frontier: Antichain<T>,
    /// Reports the records held, as differential's own batchers do.
    logger: Option<Logger>,
    operator: usize,
    sealer: PhantomData<S>,
}

impl<K, V, T, R, S> SortBatcher<K, V, T, R, S> {
    /// An empty batcher; `logger` and `operator` attribute its records in differential's log.
    pub fn new(logger: Option<Logger>, operator: usize) -> Self {
        SortBatcher {
            pending: Vec::new(),
            ready: Vec::new(),
            proxies: Default::default(),
            chunk: Vec::new(),
            frontier: Antichain::new(),
            logger,
            operator,
            sealer: PhantomData,
        }
    }

    fn log(&self, records: isize) {
        if let Some(logger) = &self.logger {
            logger.log(BatcherEvent {
                operator: self.operator,
                records_diff: records,
                size_diff: records * std::mem::size_of::<((K, V), T, R)>() as isize,
                capacity_diff: 0,
                allocations_diff: 0,
            });
        }
    }
}

// Inserting needs nothing of the types; the bounds are those of extraction, below.
impl<K, V, T, R, S> Batcher<Vec<((K, V), T, R)>> for SortBatcher<K, V, T, R, S>
where
    Self: Extract,
{
    fn insert(&mut self, container: &mut Vec<((K, V), T, R)>) {
        self.log(container.len() as isize);
        if self.pending.is_empty() && self.pending.capacity() < container.len() {
            // Take the buffer as it is: no copy, and nothing of ours worth keeping.
            std::mem::swap(&mut self.pending, container);
        } else {
            self.pending.append(container);
        }
    }
}

impl<K, V, T, R, S> Extract for SortBatcher<K, V, T, R, S>
where
    K: Ord + Clone + SortPrefix + 'static,
    V: Ord + Clone + 'static,
    T: Ord + Clone + timely::progress::Timestamp,
    R: Semigroup + 'static,
    S: SortedBuilder<K, V, T, R>,
{
    type Time = T;
    type Output = S::Output;

    /// Extracts the updates whose time is not in advance of `upper`, sorted and consolidated.
    ///
    /// The updates are not moved into their order: the builder is fed from their order's
    /// indexes through a small chunk (one read of each update, where moving them first took a
    /// swap of two 48 to 64-byte updates per update, at random places, then three passes).
    fn extract<'a>(
        &'a mut self,
        upper: AntichainRef<'_, T>,
    ) -> (Option<S::Output>, AntichainRef<'a, T>) {
        let held = self.pending.len();
        debug_assert!(self.ready.is_empty());
        let all = self.pending.iter().all(|(_, t, _)| !upper.less_equal(t));
        if !all {
            // In place: `pending` keeps its buffer (a fresh one, grown by doubling while the
            // next epochs arrive, would be fresh pages every time the source runs ahead).
            self.ready.extend(
                self.pending
                    .extract_if(.., |(_, t, _)| !upper.less_equal(t)),
            );
        }
        let updates = if all {
            &mut self.pending
        } else {
            &mut self.ready
        };
        let batch = if (updates.len() as u64) < LOW {
            sort_order(updates, &mut self.proxies);
            let order = &self.proxies[0];
            let (keys, vals) = key_counts(updates, order);
            let mut builder = S::with_capacity(keys, vals, updates.len());
            push_consolidated(updates, order, &mut self.chunk, &mut builder);
            self.proxies[0].clear();
            builder.done()
        } else {
            // Too many for 32-bit indexes (never met: billions of updates in one epoch).
            updates.sort_unstable_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
            consolidate_sorted(updates);
            let mut keys = 0;
            let mut vals = 0;
            for (i, ((k, v), _, _)) in updates.iter().enumerate() {
                let previous = i.checked_sub(1).map(|j| &updates[j].0);
                if previous.is_none_or(|(pk, _)| pk != k) {
                    keys += 1;
                    vals += 1;
                } else if previous.is_some_and(|(_, pv)| pv != v) {
                    vals += 1;
                }
            }
            let mut builder = S::with_capacity(keys, vals, updates.len());
            builder.push_chunk(updates);
            builder.done()
        };
        updates.clear();
        self.log(-((held - self.pending.len()) as isize));
        self.frontier.clear();
        if let Some(least) = self.pending.iter().map(|(_, t, _)| t).min() {
            self.frontier.insert(least.clone());
        }
        (batch, self.frontier.borrow())
    }
}

#[cfg(test)]
mod tests {
    use std::cmp::Reverse;

    use differential_dataflow::consolidation::consolidate_updates;
    use proptest::prelude::*;

    use super::*;

    /// Collects what [`push_consolidated`] hands over, checking that chunks come at most
    /// [`CHUNK`] at a time.
    struct Collect<K, V>(Vec<((K, V), u64, isize)>);

    impl<K, V> Default for Collect<K, V> {
        fn default() -> Self {
            Collect(Vec::new())
        }
    }

    impl<K, V> Builder for Collect<K, V> {
        type Input = Vec<((K, V), u64, isize)>;
        type Time = u64;
        type Output = Vec<((K, V), u64, isize)>;
        fn push(&mut self, chunk: &mut Self::Input) {
            assert!(chunk.len() <= CHUNK);
            self.0.append(chunk);
        }
        fn done(self) -> Option<Self::Output> {
            (!self.0.is_empty()).then_some(self.0)
        }
    }

    impl<K, V> SortedBuilder<K, V, u64, isize> for Collect<K, V> {
        fn with_capacity(_: usize, _: usize, _: usize) -> Self {
            Collect::default()
        }
    }

    /// Sorted and consolidated through [`sort_order`] and [`push_consolidated`] (by radix when
    /// `n` is above [`RADIX_MIN`]) as by differential's comparison sort, and counted by
    /// [`key_counts`] as in the result.
    fn check<K, V>(updates: Vec<((K, V), u64, isize)>)
    where
        K: Ord + Clone + SortPrefix + std::fmt::Debug,
        V: Ord + Clone + std::fmt::Debug,
    {
        let mut expected = updates.clone();
        consolidate_updates(&mut expected);
        let mut proxies = Default::default();
        sort_order(&updates, &mut proxies);
        let order = std::mem::take(&mut proxies[0]);
        let mut seen: Vec<u64> = order.iter().map(|p| p & LOW).collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..updates.len() as u64).collect::<Vec<_>>());
        // Counted before consolidation: keys whose updates all cancel still count (an upper
        // bound, as a capacity needs), so the expected counts come from the sorted input.
        let mut sorted = updates.clone();
        sorted.sort_by(|a, b| a.0.cmp(&b.0));
        let mut keys: Vec<&K> = sorted.iter().map(|((k, _), _, _)| k).collect();
        keys.dedup();
        let mut vals: Vec<&(K, V)> = sorted.iter().map(|(kv, _, _)| kv).collect();
        vals.dedup();
        assert_eq!(key_counts(&updates, &order), (keys.len(), vals.len()));
        let mut builder = Collect::with_capacity(0, 0, 0);
        let mut chunk = Vec::new();
        push_consolidated(&updates, &order, &mut chunk, &mut builder);
        assert!(chunk.is_empty());
        assert_eq!(builder.done().unwrap_or_default(), expected);
        // The in-place path for the largest inputs.
        let mut in_place = updates;
        in_place.sort_unstable_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        consolidate_sorted(&mut in_place);
        assert_eq!(in_place, expected);
    }

    /// Random updates: few days, totals that tie a lot (and some above 32 bits, which saturate
    /// the prefix), users that tie in their high bits, a few times, and ±1 diffs that often
    /// cancel.
    fn updates<K>(
        n: usize,
        seed: u64,
        negative_days: bool,
        key: impl Fn(i32, u64, u128) -> K,
    ) -> Vec<((K, ()), u64, isize)> {
        let mut rng = crate::random::SplitMix64(seed);
        (0..n)
            .map(|_| {
                let negative = negative_days && rng.below(10) == 0;
                let day = 20_000 + (rng.below(3) as i32) - if negative { 40_000 } else { 0 };
                let total = match rng.below(4) {
                    0 => (1 << 32) + rng.below(3),
                    _ => rng.below(300),
                };
                let user = (u128::from(rng.below(4)) << 120)
                    | (u128::from(rng.below(1000)) << 64)
                    | u128::from(rng.below(50));
                let diff = if rng.below(2) == 0 { 1 } else { -1 };
                ((key(day, total, user), ()), rng.below(3), diff)
            })
            .collect()
    }

    #[test]
    fn the_radix_sort_orders_and_consolidates_like_differential() {
        // Negative days make every byte of the day differ: the passes are spent on the day, the
        // rest is left to comparisons. Without them the passes reach totals and users.
        for negative in [false, true] {
            for (n, seed) in [(0, 1), (5, 2), (RADIX_MIN + 1, 3), (50_000, 4)] {
                check(updates(n, seed, negative, |d, t, u| (d, Reverse(t), u)));
                check(updates(n, seed, negative, |d, _, u| (d, u)));
                check(updates(n, seed, negative, |d, t, _| (d, t)));
                check(updates(n, seed, negative, |d, _, _| d));
                // Keys with values, as `top-k candidates`: many values per key.
                let with_vals = updates(n, seed, negative, |d, t, u| (d, (Reverse(t), u)));
                check(
                    with_vals
                        .into_iter()
                        .map(|(((d, v), ()), t, r)| ((d, v), t, r))
                        .collect(),
                );
            }
        }
    }

    proptest! {
        /// Any keys; `narrow` keeps days and totals in small ranges, so that the passes reach
        /// the users' bits (random days spend them all on the day).
        #[test]
        fn the_radix_sort_on_any_keys(
            narrow in any::<bool>(),
            keys in prop::collection::vec(
                (any::<i32>(), any::<u64>(), any::<u128>(), 0u64..3, -2isize..3),
                RADIX_MIN..RADIX_MIN * 2,
            ),
        ) {
            let keys = keys.into_iter().map(|(d, t, u, e, r)| {
                if narrow { (d.rem_euclid(3), t % 5, u, e, r) } else { (d, t, u, e, r) }
            });
            let keys: Vec<_> = keys.collect();
            let by_total: Vec<_> =
                keys.iter().map(|&(d, t, u, e, r)| (((d, Reverse(t), u), ()), e, r)).collect();
            check(by_total);
            let totals: Vec<_> = keys.iter().map(|&(d, _, u, e, r)| (((d, u), ()), e, r)).collect();
            check(totals);
        }
    }
}
