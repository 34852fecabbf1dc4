//! Key batches (keys without values, `u64` epochs) with a merge and a builder written for them.
//!
//! The batches are differential's own ([`OrdKeyBatch`] over vectors: the keys, then each key's
//! `(time, diff)` list, bracketed by offsets), so cursors, lookups and the inspector read them as
//! before. What changes is how they are made. Differential's merger and builder are generic over
//! containers: every update goes through a staging vector that is consolidated (sorted) per key,
//! then copied out, whatever its shape. In our key arrangements nearly every key has one update
//! per batch, and a merged batch of the `totals` trace is rewritten once per level of the spine
//! as the trace grows to a million keys per worker: those merges were the largest item of the
//! replay's profile (15 % of the samples, about 28 ns per key). Here a key with one update on
//! each side is copied straight through, and only a key with several updates takes the general
//! path (a small stash, sorted and consolidated).
//!
//! Invariants of every batch built here, as of differential's: keys strictly increasing; each
//! key's list non-empty, its times strictly increasing, no zero diff; a list of one update that
//! equals the update stored just before it is stored as an empty range (offsets equal), which
//! [`Upds::bounds`] reads back as that update (differential's "singleton" encoding: after
//! compaction every update of `by-total` is `(since, +1)`, so its batches keep one time and one
//! diff for all keys).

use std::ops::Deref;
use std::rc::Rc;

use differential_dataflow::consolidation::consolidate;
use differential_dataflow::difference::Semigroup;
use differential_dataflow::trace::cursor::Navigable;
use differential_dataflow::trace::implementations::ord_neu::key_batch::{
    OrdKeyCursor, OrdKeyStorage,
};
use differential_dataflow::trace::implementations::ord_neu::{OrdKeyBatch, Upds};
use differential_dataflow::trace::implementations::spine_fueled::{Merger, Spine, SpineBatch};
use differential_dataflow::trace::implementations::{BatchContainer, OffsetList, Vector};
use differential_dataflow::trace::{Builder, Cursor};
use timely::progress::frontier::AntichainRef;

use crate::batcher::SortedBuilder;
use crate::event::Epoch;

/// Differential's layout of our key batches: vectors of keys, epochs and diffs.
pub type KeyLayout<K, R> = Vector<((K, ()), Epoch, R)>;

/// A spine of [`KeyBatch`]es: the trace of a key arrangement.
pub type KeyBatchSpine<K, R> = Spine<Rc<KeyBatch<K, R>>>;

/// What a key may be: ordered, cloned, owned.
pub trait BatchKey: Ord + Clone + 'static {}
impl<K: Ord + Clone + 'static> BatchKey for K {}

/// What a diff may be: a semigroup, ordered (differential's layouts compare diffs), cloned.
pub trait BatchDiff: Semigroup + Ord + Clone + 'static {}
impl<R: Semigroup + Ord + Clone + 'static> BatchDiff for R {}

/// One batch of a key arrangement: differential's [`OrdKeyBatch`] (read through it), merged by
/// [`KeyMerger`] and built by [`KeyBuilder`].
pub struct KeyBatch<K: BatchKey, R: BatchDiff> {
    /// The batch as differential lays it out.
    pub inner: OrdKeyBatch<KeyLayout<K, R>>,
}

impl<K: BatchKey, R: BatchDiff> Deref for KeyBatch<K, R> {
    type Target = OrdKeyBatch<KeyLayout<K, R>>;
    fn deref(&self) -> &Self::Target {
        &self.inner
    }
}

impl<K: BatchKey, R: BatchDiff> KeyBatch<K, R> {
    /// A batch of these columns, absent when it holds no update; `updates` counts the updates
    /// the columns stand for (singletons included).
    fn from_parts(keys: Vec<K>, upds: Columns<R>, updates: usize) -> Option<Self> {
        (updates > 0).then(|| KeyBatch {
            inner: OrdKeyBatch {
                storage: OrdKeyStorage {
                    keys,
                    upds: Upds {
                        offs: upds.offs,
                        times: upds.times,
                        diffs: upds.diffs,
                    },
                },
                updates,
                value: OrdKeyBatch::<KeyLayout<K, R>>::create_value(),
            },
        })
    }
}

impl<K: BatchKey, R: BatchDiff> KeyBatch<K, R> {
    /// The keys, sorted.
    #[inline]
    pub fn keys(&self) -> &[K] {
        &self.inner.storage.keys
    }

    /// The position of the first key at or after `from` that is not less than `key`: a gallop
    /// from `from` (as differential's cursors seek), for lookups that walk forward.
    #[inline]
    pub fn seek(&self, from: usize, key: &K) -> usize {
        let keys = self.keys();
        if from >= keys.len() || keys[from] >= *key {
            return from;
        }
        // keys[lo] < key; find the first step whose key is not less.
        let mut lo = from;
        let mut step = 1;
        while lo + step < keys.len() && keys[lo + step] < *key {
            lo += step;
            step <<= 1;
        }
        let hi = (lo + step).min(keys.len());
        lo + 1 + keys[lo + 1..hi].partition_point(|k| k < key)
    }

    /// The diffs of the key at `position` (whatever their times).
    #[inline]
    pub fn diffs(&self, position: usize) -> &[R] {
        let upds = &self.inner.storage.upds;
        let (lower, upper) = upds.bounds(position);
        &upds.diffs[lower..upper]
    }
}

impl<K: BatchKey, R: BatchDiff> SpineBatch for KeyBatch<K, R> {
    type Time = Epoch;
    type Merger = KeyMerger<K, R>;
    fn len(&self) -> usize {
        self.inner.updates
    }
}

impl<K: BatchKey, R: BatchDiff> Navigable for KeyBatch<K, R> {
    type Cursor = KeyCursor<K, R>;
    fn cursor(&self) -> Self::Cursor {
        KeyCursor(self.inner.cursor())
    }
}

/// Differential's cursor of the batch inside a [`KeyBatch`].
pub struct KeyCursor<K: BatchKey, R: BatchDiff>(OrdKeyCursor<KeyLayout<K, R>>);

type Inner<K, R> = OrdKeyCursor<KeyLayout<K, R>>;

impl<K: BatchKey, R: BatchDiff> Cursor for KeyCursor<K, R> {
    type Storage = KeyBatch<K, R>;

    type Key<'a> = <Inner<K, R> as Cursor>::Key<'a>;
    type ValOwn = <Inner<K, R> as Cursor>::ValOwn;
    type Val<'a> = <Inner<K, R> as Cursor>::Val<'a>;
    type Time = <Inner<K, R> as Cursor>::Time;
    type TimeGat<'a> = <Inner<K, R> as Cursor>::TimeGat<'a>;
    type Diff = <Inner<K, R> as Cursor>::Diff;
    type DiffGat<'a> = <Inner<K, R> as Cursor>::DiffGat<'a>;
    type KeyContainer = <Inner<K, R> as Cursor>::KeyContainer;
    type ValContainer = <Inner<K, R> as Cursor>::ValContainer;
    type TimeContainer = <Inner<K, R> as Cursor>::TimeContainer;
    type DiffContainer = <Inner<K, R> as Cursor>::DiffContainer;

    #[inline]
    fn key_valid(&self, storage: &Self::Storage) -> bool {
        self.0.key_valid(&storage.inner)
    }
    #[inline]
    fn val_valid(&self, storage: &Self::Storage) -> bool {
        self.0.val_valid(&storage.inner)
    }
    #[inline]
    fn key<'a>(&self, storage: &'a Self::Storage) -> Self::Key<'a> {
        self.0.key(&storage.inner)
    }
    #[inline]
    fn val<'a>(&self, storage: &'a Self::Storage) -> Self::Val<'a> {
        self.0.val(&storage.inner)
    }
    #[inline]
    fn get_key<'a>(&self, storage: &'a Self::Storage) -> Option<Self::Key<'a>> {
        self.0.get_key(&storage.inner)
    }
    #[inline]
    fn get_val<'a>(&self, storage: &'a Self::Storage) -> Option<Self::Val<'a>> {
        self.0.get_val(&storage.inner)
    }
    #[inline]
    fn map_times<L: FnMut(Self::TimeGat<'_>, Self::DiffGat<'_>)>(
        &mut self,
        storage: &Self::Storage,
        logic: L,
    ) {
        self.0.map_times(&storage.inner, logic)
    }
    #[inline]
    fn step_key(&mut self, storage: &Self::Storage) {
        self.0.step_key(&storage.inner)
    }
    #[inline]
    fn seek_key(&mut self, storage: &Self::Storage, key: Self::Key<'_>) {
        self.0.seek_key(&storage.inner, key)
    }
    #[inline]
    fn step_val(&mut self, storage: &Self::Storage) {
        self.0.step_val(&storage.inner)
    }
    #[inline]
    fn seek_val(&mut self, storage: &Self::Storage, val: Self::Val<'_>) {
        self.0.seek_val(&storage.inner, val)
    }
    #[inline]
    fn rewind_keys(&mut self, storage: &Self::Storage) {
        self.0.rewind_keys(&storage.inner)
    }
    #[inline]
    fn rewind_vals(&mut self, storage: &Self::Storage) {
        self.0.rewind_vals(&storage.inner)
    }
}

/// The update columns of a batch being made: offsets (one per key, after a leading 0), times
/// and diffs.
struct Columns<R> {
    offs: OffsetList,
    times: Vec<Epoch>,
    diffs: Vec<R>,
}

impl<R: BatchDiff> Columns<R> {
    fn with_capacity(keys: usize, upds: usize) -> Self {
        let mut offs = <OffsetList as BatchContainer>::with_capacity(keys + 1);
        offs.push(0);
        Columns {
            offs,
            times: Vec::with_capacity(upds),
            diffs: Vec::with_capacity(upds),
        }
    }

    /// Closes a key whose list holds the one update `(time, diff)`: stored as an empty range
    /// when it equals the update stored last (see the module docs).
    #[inline]
    fn push_single(&mut self, time: Epoch, diff: R) {
        if self.times.last() != Some(&time) || self.diffs.last() != Some(&diff) {
            self.times.push(time);
            self.diffs.push(diff);
        }
        self.offs.push(self.times.len());
    }

    /// Closes a key whose list is `list` (sorted by time, consolidated, at least two updates).
    fn push_list(&mut self, list: &[(Epoch, R)]) {
        for (t, d) in list {
            self.times.push(*t);
            self.diffs.push(d.clone());
        }
        self.offs.push(self.times.len());
    }
}

/// Merges two [`KeyBatch`]es, a bounded amount of work at a time, advancing times to the
/// compaction frontier and consolidating each key's updates (the output is consolidated).
pub struct KeyMerger<K: BatchKey, R: BatchDiff> {
    /// The next key of each source to merge.
    next: [usize; 2],
    keys: Vec<K>,
    upds: Columns<R>,
    /// Updates written (singletons included): the effort spent, and the batch's length.
    updates: usize,
    /// Times are advanced to this one (the frontier of a totally ordered time has at most
    /// one element; none: times stay).
    since: Option<Epoch>,
    /// A key's updates on the general path.
    stash: Vec<(Epoch, R)>,
}

impl<K: BatchKey, R: BatchDiff> KeyMerger<K, R> {
    #[inline]
    fn advance(&self, t: Epoch) -> Epoch {
        self.since.map_or(t, |s| t.max(s))
    }

    /// Adds key `i` of `s`'s updates, advanced, to the stash.
    fn stash_key(&mut self, s: &OrdKeyStorage<KeyLayout<K, R>>, i: usize) {
        let (lower, upper) = s.upds.bounds(i);
        for j in lower..upper {
            let t = self.advance(s.upds.times[j]);
            self.stash.push((t, s.upds.diffs[j].clone()));
        }
    }

    /// Writes `key` with the stash's updates (consolidated; nothing if they cancel).
    fn seal_stash(&mut self, key: &K) {
        // Sorted by time, equal times added up, cancelled ones dropped.
        consolidate(&mut self.stash);
        match self.stash.len() {
            0 => {}
            1 => {
                let (t, d) = self.stash.pop().expect("one update");
                self.upds.push_single(t, d);
                self.keys.push(key.clone());
                self.updates += 1;
            }
            n => {
                self.upds.push_list(&self.stash);
                self.keys.push(key.clone());
                self.updates += n;
            }
        }
        self.stash.clear();
    }

    /// Copies key `i` of `s` (its updates advanced and consolidated).
    #[inline]
    fn copy_key(&mut self, s: &OrdKeyStorage<KeyLayout<K, R>>, i: usize) {
        let (lower, upper) = s.upds.bounds(i);
        if upper - lower == 1 {
            // One update, not zero (batches hold no zero diff): straight through.
            let t = self.advance(s.upds.times[lower]);
            self.upds.push_single(t, s.upds.diffs[lower].clone());
            self.keys.push(s.keys[i].clone());
            self.updates += 1;
        } else {
            self.stash_key(s, i);
            self.seal_stash(&s.keys[i]);
        }
    }

    /// Merges key `i` of `a` with key `j` of `b` (equal keys).
    #[inline]
    fn merge_key(
        &mut self,
        a: &OrdKeyStorage<KeyLayout<K, R>>,
        i: usize,
        b: &OrdKeyStorage<KeyLayout<K, R>>,
        j: usize,
    ) {
        let (la, ua) = a.upds.bounds(i);
        let (lb, ub) = b.upds.bounds(j);
        if ua - la == 1 && ub - lb == 1 {
            let (ta, tb) = (
                self.advance(a.upds.times[la]),
                self.advance(b.upds.times[lb]),
            );
            if ta == tb {
                let mut d = a.upds.diffs[la].clone();
                d.plus_equals(&b.upds.diffs[lb]);
                if !d.is_zero() {
                    self.upds.push_single(ta, d);
                    self.keys.push(a.keys[i].clone());
                    self.updates += 1;
                }
                return;
            }
        }
        self.stash_key(a, i);
        self.stash_key(b, j);
        self.seal_stash(&a.keys[i]);
    }
}

impl<K: BatchKey, R: BatchDiff> Merger<KeyBatch<K, R>> for KeyMerger<K, R> {
    fn new(a: &KeyBatch<K, R>, b: &KeyBatch<K, R>, frontier: AntichainRef<Epoch>) -> Self {
        let (a, b) = (&a.inner.storage, &b.inner.storage);
        KeyMerger {
            next: [0, 0],
            keys: Vec::with_capacity(a.keys.len() + b.keys.len()),
            upds: Columns::with_capacity(
                a.keys.len() + b.keys.len(),
                a.upds.times.len() + b.upds.times.len(),
            ),
            updates: 0,
            since: frontier.iter().min().copied(),
            stash: Vec::new(),
        }
    }

    /// As differential's mergers: stops once the updates written reach `fuel`, and leaves
    /// `fuel` positive exactly when the merge is complete.
    fn work(&mut self, a: &KeyBatch<K, R>, b: &KeyBatch<K, R>, fuel: &mut isize) {
        let (a, b) = (&a.inner.storage, &b.inner.storage);
        let start = self.updates;
        let effort = |m: &Self| (m.updates - start) as isize;
        let [mut i, mut j] = self.next;
        while i < a.keys.len() && j < b.keys.len() && effort(self) < *fuel {
            match a.keys[i].cmp(&b.keys[j]) {
                std::cmp::Ordering::Less => {
                    self.copy_key(a, i);
                    i += 1;
                }
                std::cmp::Ordering::Greater => {
                    self.copy_key(b, j);
                    j += 1;
                }
                std::cmp::Ordering::Equal => {
                    self.merge_key(a, i, b, j);
                    i += 1;
                    j += 1;
                }
            }
        }
        while i < a.keys.len() && effort(self) < *fuel {
            self.copy_key(a, i);
            i += 1;
        }
        while j < b.keys.len() && effort(self) < *fuel {
            self.copy_key(b, j);
            j += 1;
        }
        self.next = [i, j];
        *fuel -= effort(self);
    }

    fn done(self) -> Option<KeyBatch<K, R>> {
        KeyBatch::from_parts(self.keys, self.upds, self.updates)
    }
}

/// Builds a [`KeyBatch`] from updates sorted by (key, time) and consolidated (no (key, time)
/// twice, no zero diff), as [`crate::batcher::SortBatcher`] hands them over.
pub struct KeyBuilder<K: BatchKey, R: BatchDiff> {
    keys: Vec<K>,
    upds: Columns<R>,
    /// The updates of the last key, not yet closed.
    open: Vec<(Epoch, R)>,
    updates: usize,
}

impl<K: BatchKey, R: BatchDiff> KeyBuilder<K, R> {
    /// Closes the last key.
    fn close(&mut self) {
        match self.open.len() {
            0 => {}
            1 => {
                let (t, d) = self.open.pop().expect("one update");
                self.upds.push_single(t, d);
            }
            _ => {
                self.upds.push_list(&self.open);
                self.open.clear();
            }
        }
    }
}

impl<K: BatchKey, R: BatchDiff> Default for KeyBuilder<K, R> {
    fn default() -> Self {
        <Self as SortedBuilder<K, (), Epoch, R>>::with_capacity(0, 0, 0)
    }
}

impl<K: BatchKey, R: BatchDiff> Builder for KeyBuilder<K, R> {
    type Input = Vec<((K, ()), Epoch, R)>;
    type Time = Epoch;
    type Output = KeyBatch<K, R>;

    fn push(&mut self, chunk: &mut Self::Input) {
        for ((key, ()), time, diff) in chunk.drain(..) {
            debug_assert!(!diff.is_zero(), "consolidated input");
            if self.keys.last() != Some(&key) {
                debug_assert!(
                    self.keys.last().is_none_or(|last| *last < key),
                    "sorted input"
                );
                self.close();
                self.keys.push(key);
            }
            debug_assert!(
                self.open.last().is_none_or(|(t, _)| *t < time),
                "sorted, consolidated input"
            );
            self.open.push((time, diff));
            self.updates += 1;
        }
    }

    fn done(mut self) -> Option<Self::Output> {
        self.close();
        KeyBatch::from_parts(self.keys, self.upds, self.updates)
    }
}

impl<K: BatchKey, R: BatchDiff> SortedBuilder<K, (), Epoch, R> for KeyBuilder<K, R> {
    fn with_capacity(keys: usize, _: usize, upds: usize) -> Self {
        KeyBuilder {
            keys: Vec::with_capacity(keys),
            upds: Columns::with_capacity(keys, upds),
            open: Vec::new(),
            updates: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use differential_dataflow::consolidation::consolidate_updates;
    use proptest::prelude::*;
    use timely::progress::Antichain;

    use super::*;

    /// A batch of `updates` (any order, any diffs), built as the batcher does: sorted,
    /// consolidated, handed over in chunks of `chunk`.
    fn build<R: BatchDiff>(
        mut updates: Vec<((u64, ()), Epoch, R)>,
        chunk: usize,
    ) -> Option<KeyBatch<u64, R>> {
        consolidate_updates(&mut updates);
        let mut builder = <KeyBuilder<u64, R> as SortedBuilder<u64, (), Epoch, R>>::with_capacity(
            updates.len(),
            0,
            updates.len(),
        );
        for piece in updates.chunks(chunk.max(1)) {
            builder.push(&mut piece.to_vec());
        }
        builder.done()
    }

    /// A batch's updates, read through its cursor (singletons decoded), in order.
    fn contents<R: BatchDiff>(batch: &Option<KeyBatch<u64, R>>) -> Vec<(u64, Epoch, R)> {
        let mut out = Vec::new();
        if let Some(batch) = batch {
            let mut cursor = batch.cursor();
            while let Some(key) = cursor.get_key(batch) {
                cursor.map_times(batch, |t, d| out.push((*key, *t, d.clone())));
                cursor.step_key(batch);
            }
            assert_eq!(batch.len(), out.len(), "len counts every update");
        }
        out
    }

    /// `updates` advanced to `since` and consolidated, in (key, time) order.
    fn reference<R: BatchDiff>(
        updates: &[(u64, Epoch, R)],
        since: Option<Epoch>,
    ) -> Vec<(u64, Epoch, R)> {
        let mut out: Vec<((u64, ()), Epoch, R)> = updates
            .iter()
            .map(|(k, t, d)| ((*k, ()), since.map_or(*t, |s| (*t).max(s)), d.clone()))
            .collect();
        consolidate_updates(&mut out);
        out.into_iter().map(|((k, ()), t, d)| (k, t, d)).collect()
    }

    /// Merges `a` and `b` with `fuel` per call of `work`, as the spine does.
    fn merge<R: BatchDiff>(
        a: &KeyBatch<u64, R>,
        b: &KeyBatch<u64, R>,
        since: Option<Epoch>,
        fuel: isize,
    ) -> Option<KeyBatch<u64, R>> {
        let frontier = since.map_or_else(Antichain::new, Antichain::from_elem);
        let mut merger = KeyMerger::new(a, b, frontier.borrow());
        let mut calls = 0;
        loop {
            let mut left = fuel;
            merger.work(a, b, &mut left);
            calls += 1;
            assert!(calls < 100_000, "the merge makes progress");
            if left > 0 {
                break;
            }
        }
        merger.done()
    }

    fn updates(
        max_key: u64,
        max_time: u64,
    ) -> impl Strategy<Value = Vec<((u64, ()), Epoch, isize)>> {
        prop::collection::vec(
            (
                (0..max_key, Just(())),
                0..max_time,
                prop::sample::select(vec![-2isize, -1, 1, 1, 1, 2]),
            ),
            0..200,
        )
    }

    proptest! {
        #[test]
        fn a_built_batch_holds_its_consolidated_updates(u in updates(40, 4), chunk in 1usize..50) {
            let plain: Vec<_> = u.iter().map(|((k, ()), t, d)| (*k, *t, *d)).collect();
            prop_assert_eq!(contents(&build(u, chunk)), reference(&plain, None));
        }

        #[test]
        fn a_merge_advances_and_consolidates(
            a in updates(40, 6),
            b in updates(40, 6),
            since in prop::option::of(0u64..7),
            fuel in 1isize..20,
        ) {
            let mut all: Vec<_> = a.iter().chain(&b).map(|((k, ()), t, d)| (*k, *t, *d)).collect();
            let (a, b) = (build(a, 7), build(b, 7));
            let merged = match (&a, &b) {
                (Some(a), Some(b)) => merge(a, b, since, fuel),
                _ => return Ok(()),
            };
            all.sort();
            prop_assert_eq!(contents(&merged), reference(&all, since));
        }

        #[test]
        fn two_part_diffs_merge_as_sums(
            a in prop::collection::vec((0u64..30, 0u64..3, -3i64..4, -1i64..2), 0..100),
            b in prop::collection::vec((0u64..30, 0u64..3, -3i64..4, -1i64..2), 0..100),
            since in prop::option::of(0u64..4),
        ) {
            let to = |v: &[(u64, u64, i64, i64)]| -> Vec<((u64, ()), Epoch, (i64, i64))> {
                v.iter().map(|&(k, t, s, c)| ((k, ()), t, (s, c))).collect()
            };
            let all: Vec<_> = a.iter().chain(&b).map(|&(k, t, s, c)| (k, t, (s, c))).collect();
            let (a, b) = (build(to(&a), 5), build(to(&b), 5));
            if let (Some(a), Some(b)) = (&a, &b) {
                prop_assert_eq!(contents(&merge(a, b, since, 3)), reference(&all, since));
            }
        }
    }

    #[test]
    fn seek_finds_what_a_search_finds() {
        let mut rng = crate::random::SplitMix64(5);
        for n in [0u64, 1, 2, 9, 100, 5000] {
            let u: Vec<_> = (0..n).map(|k| ((3 * k + 1, ()), 0, 1isize)).collect();
            let Some(batch) = build(u, 64) else { continue };
            for _ in 0..2000 {
                let from = (rng.next_u64() % (n + 1)) as usize;
                let key = rng.next_u64() % (3 * n + 3);
                let want = from + batch.keys()[from..].partition_point(|k| *k < key);
                assert_eq!(
                    batch.seek(from, &key),
                    want,
                    "n {n}, from {from}, key {key}"
                );
            }
        }
    }

    #[test]
    fn equal_single_updates_are_stored_once() {
        // After compaction every key of `by-total` is (since, +1): one time and one diff.
        let u: Vec<_> = (0..1000u64).map(|k| ((k, ()), 5, 1isize)).collect();
        let batch = build(u.clone(), 100).expect("non-empty");
        assert_eq!(batch.inner.storage.upds.times.len(), 1);
        assert_eq!(batch.len(), 1000);
        let other: Vec<_> = (1000..2000u64).map(|k| ((k, ()), 3, 1isize)).collect();
        let other = build(other, 100).expect("non-empty");
        let merged = merge(&batch, &other, Some(6), 64).expect("non-empty");
        assert_eq!(merged.inner.storage.upds.times.len(), 1);
        assert_eq!(
            contents(&Some(merged)),
            (0..2000).map(|k| (k, 6, 1)).collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_merge_that_cancels_is_empty() {
        let a: Vec<_> = (0..100u64).map(|k| ((k, ()), k % 3, 1isize)).collect();
        let b: Vec<_> = (0..100u64).map(|k| ((k, ()), 9, -1isize)).collect();
        let (a, b) = (build(a, 10).expect("a"), build(b, 10).expect("b"));
        assert!(merge(&a, &b, Some(9), 5).is_none());
        // Not yet compacted to one time: nothing cancels.
        assert_eq!(contents(&merge(&a, &b, Some(1), 5)).len(), 200);
    }
}
