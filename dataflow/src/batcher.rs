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
//! significant bytes that differ (at most four), then one move of the updates into that order
//! (in place) and a comparison sort of each run those bytes leave tied (one or two updates in
//! `by-total` and `totals`). An epoch's 100 000 updates of 48 to 64 bytes took a comparison sort
//! about seventeen levels of data-dependent branches and moves.
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

/// Sorts `updates` by `(data, time)`.
///
/// The updates are 48 to 64 bytes, so they are not moved by the radix passes: each gets an
/// 8-byte proxy, its prefix's (see [`SortPrefix`]) most significant bytes that differ (at most
/// [`MAX_BYTES`]) above its index. The proxies are radix-sorted, the updates moved once into
/// their order (in place, along the permutation's cycles), and each run of updates whose bytes
/// tie is sorted by comparison. `proxies` are buffers the caller keeps between calls (fresh
/// ones every epoch are fresh pages to fault in); they are left empty.
pub fn sort_updates<K, V, T, R>(updates: &mut [((K, V), T, R)], proxies: &mut [Vec<u64>; 2])
where
    K: Ord + SortPrefix,
    V: Ord,
    T: Ord,
{
    let by_data_time = |a: &((K, V), T, R), b: &((K, V), T, R)| (&a.0, &a.1).cmp(&(&b.0, &b.1));
    let n = updates.len();
    // Indexes take the proxies' low half, all ones marking one done.
    const LOW: u64 = 0xFFFF_FFFF;
    const DONE: u64 = LOW;
    if n < RADIX_MIN || n >= LOW as usize {
        updates.sort_unstable_by(by_data_time);
        return;
    }
    let prefix = |u: &((K, V), T, R)| u.0 .0.sort_prefix();
    // Which bytes differ: the OR of every prefix's XOR with the first one.
    let first = prefix(&updates[0]);
    let differ = updates
        .iter()
        .fold(0u128, |acc, u| acc | (prefix(u) ^ first));
    let bytes: Vec<u32> = (0..16u32)
        .rev()
        .filter(|b| (differ >> (8 * b)) & 0xFF != 0)
        .take(MAX_BYTES)
        .collect();
    if bytes.is_empty() {
        updates.sort_unstable_by(by_data_time);
        return;
    }
    // The chosen bytes, most significant first, as the high half of a proxy; the index below.
    let [mut sorted, mut other] = std::mem::take(proxies);
    sorted.clear();
    sorted.extend(updates.iter().enumerate().map(|(i, u)| {
        let p = prefix(u);
        let key = bytes
            .iter()
            .fold(0u64, |key, &b| key << 8 | ((p >> (8 * b)) & 0xFF) as u64);
        key << 32 | i as u64
    }));
    // Least significant digit first; the key takes the low `bytes.len()` bytes of the half.
    other.clear();
    other.resize(n, 0);
    for digit in 0..bytes.len() {
        let shift = 32 + 8 * digit;
        let mut next = [0usize; 256];
        for &x in &sorted {
            next[((x >> shift) & 0xFF) as usize] += 1;
        }
        let mut sum = 0;
        for slot in next.iter_mut() {
            let c = *slot;
            *slot = sum;
            sum += c;
        }
        for &x in &sorted {
            let d = ((x >> shift) & 0xFF) as usize;
            other[next[d]] = x;
            next[d] += 1;
        }
        std::mem::swap(&mut sorted, &mut other);
    }
    // The updates moved in place into the proxies' order, a cycle of the permutation at a
    // time: position j takes the update at index `sorted[j]`'s low half, which is then marked
    // done. No second epoch-sized buffer of updates (a closing day's retirement makes an epoch
    // of all its users, and such a buffer would stay at that size).
    for i in 0..n {
        if sorted[i] & LOW == DONE {
            continue;
        }
        let mut j = i;
        loop {
            let source = (sorted[j] & LOW) as usize;
            sorted[j] |= DONE;
            if source == i {
                break;
            }
            updates.swap(j, source);
            j = source;
        }
    }
    // Runs whose chosen bytes tie, sorted by comparison.
    let mut start = 0;
    for i in 1..=n {
        if i == n || sorted[i] >> 32 != sorted[start] >> 32 {
            if i - start > 1 {
                updates[start..i].sort_unstable_by(by_data_time);
            }
            start = i;
        }
    }
    sorted.clear();
    other.clear();
    *proxies = [sorted, other];
}

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

/// Builds a batch from one sorted, consolidated chunk, sized exactly, and leaves the chunk empty
/// with its capacity (differential's `Sealer` takes the chunk and drops its allocation).
pub trait SealChunk<K, V, T, R> {
    /// The batch built.
    type Batch;
    /// A batch of `chunk`'s updates (`None` if it is empty), which has `keys` distinct keys and
    /// `vals` distinct (key, value) pairs; `chunk` is drained.
    fn seal_chunk(chunk: &mut Vec<((K, V), T, R)>, keys: usize, vals: usize)
        -> Option<Self::Batch>;
}

impl<L: Layout, K, V, T, R> SealChunk<K, V, T, R> for OrdKeyBuilder<L, Vec<((K, V), T, R)>>
where
    Self: Builder<Input = Vec<((K, V), T, R)>>,
{
    type Batch = <Self as Builder>::Output;
    fn seal_chunk(chunk: &mut Vec<((K, V), T, R)>, keys: usize, _: usize) -> Option<Self::Batch> {
        let mut builder = Self::with_capacity(keys, keys, chunk.len());
        builder.push(chunk);
        builder.done()
    }
}

impl<L: Layout, K, V, T, R> SealChunk<K, V, T, R> for OrdValBuilder<L, Vec<((K, V), T, R)>>
where
    Self: Builder<Input = Vec<((K, V), T, R)>>,
{
    type Batch = <Self as Builder>::Output;
    fn seal_chunk(
        chunk: &mut Vec<((K, V), T, R)>,
        keys: usize,
        vals: usize,
    ) -> Option<Self::Batch> {
        let mut builder = Self::with_capacity(keys, vals, chunk.len());
        builder.push(chunk);
        builder.done()
    }
}

/// Sorts and consolidates the updates of a batch once, when it is sealed; `S` builds the batch.
///
/// Its buffers keep their capacity from epoch to epoch (at most the largest epoch's
/// updates): fresh buffers of that size every epoch are fresh pages the kernel must zero.
pub struct SortBatcher<K, V, T, R, S> {
    /// Updates inserted and not yet extracted, in arrival order.
    pending: Vec<((K, V), T, R)>,
    /// The updates being extracted; empty (with its capacity) between extractions.
    ready: Vec<((K, V), T, R)>,
    /// The sort's proxies and their radix passes' second buffer; empty between extractions.
    proxies: [Vec<u64>; 2],
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
    S: SealChunk<K, V, T, R>,
{
    type Time = T;
    type Output = S::Batch;

    /// Extracts the updates whose time is not in advance of `upper`, sorted and consolidated.
    fn extract<'a>(
        &'a mut self,
        upper: AntichainRef<'_, T>,
    ) -> (Option<S::Batch>, AntichainRef<'a, T>) {
        let held = self.pending.len();
        debug_assert!(self.ready.is_empty());
        if self.pending.iter().all(|(_, t, _)| !upper.less_equal(t)) {
            std::mem::swap(&mut self.pending, &mut self.ready);
        } else {
            // In place: `pending` keeps its buffer (a fresh one, grown by doubling while the
            // next epochs arrive, would be fresh pages every time the source runs ahead).
            self.ready.extend(
                self.pending
                    .extract_if(.., |(_, t, _)| !upper.less_equal(t)),
            );
        }
        self.log(-((held - self.pending.len()) as isize));
        self.frontier.clear();
        if let Some(least) = self.pending.iter().map(|(_, t, _)| t).min() {
            self.frontier.insert(least.clone());
        }
        sort_updates(&mut self.ready, &mut self.proxies);
        consolidate_sorted(&mut self.ready);
        let (mut keys, mut vals) = (0, 0);
        for (i, ((k, v), _, _)) in self.ready.iter().enumerate() {
            let previous = i.checked_sub(1).map(|j| &self.ready[j].0);
            if previous.is_none_or(|(pk, _)| pk != k) {
                keys += 1;
                vals += 1;
            } else if previous.is_some_and(|(_, pv)| pv != v) {
                vals += 1;
            }
        }
        let batch = S::seal_chunk(&mut self.ready, keys, vals);
        self.ready.clear();
        (batch, self.frontier.borrow())
    }
}

#[cfg(test)]
mod tests {
    use std::cmp::Reverse;

    use differential_dataflow::consolidation::consolidate_updates;
    use proptest::prelude::*;

    use super::*;

    /// Sorted and consolidated by the radix path (`n` above [`RADIX_MIN`]) as by differential's
    /// comparison sort.
    fn check<K: Ord + Clone + SortPrefix + std::fmt::Debug>(
        mut updates: Vec<((K, ()), u64, isize)>,
    ) {
        let mut expected = updates.clone();
        consolidate_updates(&mut expected);
        let mut proxies = Default::default();
        sort_updates(&mut updates, &mut proxies);
        consolidate_sorted(&mut updates);
        assert_eq!(updates, expected);
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
