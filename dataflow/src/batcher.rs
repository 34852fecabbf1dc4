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

use differential_dataflow::batcher::merge::Sealer;
use differential_dataflow::batcher::{Batcher, Extract};
use differential_dataflow::consolidation::consolidate_updates;
use differential_dataflow::difference::Semigroup;
use differential_dataflow::logging::{BatcherEvent, Logger};
use timely::progress::frontier::{Antichain, AntichainRef};

/// Sorts and consolidates the updates of a batch once, when it is sealed; `S` builds the batch.
pub struct SortBatcher<D, T, R, S> {
    /// Updates inserted and not yet extracted, in arrival order.
    pending: Vec<(D, T, R)>,
    /// The least time in `pending` after the last extraction.
    frontier: Antichain<T>,
    /// Reports the records held, as differential's own batchers do.
    logger: Option<Logger>,
    operator: usize,
    sealer: PhantomData<S>,
}

impl<D, T, R, S> SortBatcher<D, T, R, S> {
    /// An empty batcher; `logger` and `operator` attribute its records in differential's log.
    pub fn new(logger: Option<Logger>, operator: usize) -> Self {
        SortBatcher {
            pending: Vec::new(),
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
                size_diff: records * std::mem::size_of::<(D, T, R)>() as isize,
                capacity_diff: 0,
                allocations_diff: 0,
            });
        }
    }
}

impl<D, T, R, S> Batcher<Vec<(D, T, R)>> for SortBatcher<D, T, R, S>
where
    D: Ord + Clone + 'static,
    T: Ord + Clone + timely::progress::Timestamp,
    R: Semigroup + 'static,
    S: Sealer<Vec<(D, T, R)>>,
{
    fn insert(&mut self, container: &mut Vec<(D, T, R)>) {
        self.log(container.len() as isize);
        if self.pending.is_empty() {
            // Take the buffer as it is: no copy for the first message of a batch.
            std::mem::swap(&mut self.pending, container);
        } else {
            self.pending.append(container);
        }
    }
}

impl<D, T, R, S> Extract for SortBatcher<D, T, R, S>
where
    D: Ord + Clone + 'static,
    T: Ord + Clone + timely::progress::Timestamp,
    R: Semigroup + 'static,
    S: Sealer<Vec<(D, T, R)>>,
{
    type Time = T;
    type Output = S::Output;

    /// Extracts the updates whose time is not in advance of `upper`, sorted and consolidated.
    fn extract<'a>(
        &'a mut self,
        upper: AntichainRef<'_, T>,
    ) -> (Option<S::Output>, AntichainRef<'a, T>) {
        let held = self.pending.len();
        let mut ready = if self.pending.iter().all(|(_, t, _)| !upper.less_equal(t)) {
            std::mem::take(&mut self.pending)
        } else {
            let (ready, kept): (Vec<_>, Vec<_>) = self
                .pending
                .drain(..)
                .partition(|(_, t, _)| !upper.less_equal(t));
            self.pending = kept;
            ready
        };
        self.log(-((held - self.pending.len()) as isize));
        self.frontier.clear();
        if let Some(least) = self.pending.iter().map(|(_, t, _)| t).min() {
            self.frontier.insert(least.clone());
        }
        consolidate_updates(&mut ready);
        let batch = if ready.is_empty() {
            None
        } else {
            S::seal(&mut vec![ready])
        };
        (batch, self.frontier.borrow())
    }
}
