//! A batcher for totally ordered times that sorts each batch once.
//!
//! Differential's `MergeBatcher` sorts every incoming chunk and merges chunks into a geometric
//! ladder as they arrive, so each update is copied about log₂(updates per epoch / 1024) times,
//! and every merge fills fresh chunks (page faults). That suits many small batches over partially
//! ordered times. Our arrangements receive one large batch per epoch over `u64` epochs, sealed
//! once the epoch completes: gathering the updates and sorting them once when the batch is sealed
//! does the same work with one in-place sort (measured in README, Performance).
//!
//! Invariant: `pending` holds every update inserted and not yet extracted, unsorted; `frontier`
//! is the least time among them after each extraction (empty when none is left).

use std::marker::PhantomData;

use differential_dataflow::batcher::{Batcher, Extract};
use differential_dataflow::consolidation::consolidate_updates;
use differential_dataflow::difference::Semigroup;
use differential_dataflow::logging::{BatcherEvent, Logger};
use differential_dataflow::trace::implementations::ord_neu::{OrdKeyBuilder, OrdValBuilder};
use differential_dataflow::trace::implementations::Layout;
use differential_dataflow::trace::Builder;
use timely::progress::frontier::{Antichain, AntichainRef};

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
/// Its two buffers keep their capacity from epoch to epoch (at most the largest epoch's
/// updates): fresh buffers of that size every epoch are fresh pages the kernel must zero.
pub struct SortBatcher<K, V, T, R, S> {
    /// Updates inserted and not yet extracted, in arrival order.
    pending: Vec<((K, V), T, R)>,
    /// The updates being extracted; empty (with its capacity) between extractions.
    ready: Vec<((K, V), T, R)>,
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
    K: Ord + Clone + 'static,
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
            let mut kept = Vec::new();
            for update in self.pending.drain(..) {
                if upper.less_equal(&update.1) {
                    kept.push(update);
                } else {
                    self.ready.push(update);
                }
            }
            self.pending = kept;
        }
        self.log(-((held - self.pending.len()) as isize));
        self.frontier.clear();
        if let Some(least) = self.pending.iter().map(|(_, t, _)| t).min() {
            self.frontier.insert(least.clone());
        }
        consolidate_updates(&mut self.ready);
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
