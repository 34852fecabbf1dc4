//! Chunks: the unit in which sources hand raw records to the dataflow.
//!
//! A source produces chunks of raw records (JSON Lines, Kafka values, generated text), each
//! within a single epoch; the [`crate::operator`] parses them on the worker that pulled them,
//! so parsing runs on every worker in parallel whatever the source.

use std::time::Duration;

use rankmysteps_dataflow::event::{Epoch, Micros};
use rankmysteps_dataflow::output::Position;

/// Raw records of one epoch.
#[derive(Clone, Debug, Default)]
pub struct Chunk {
    /// The epoch every record of this chunk belongs to.
    pub epoch: Epoch,
    /// The wall clock at ingestion (for the `future` check), UTC microseconds.
    pub now: Micros,
    /// The records' bytes, back to back.
    pub data: Vec<u8>,
    /// Each record: its position in input order, and its byte range in `data`.
    pub records: Vec<(u64, u32, u32)>,
    /// The input positions after this chunk (one per partition it read), if the source tracks them.
    pub positions: Vec<Position>,
    /// Per-record ingestion times, when records carry their own (an archive replay uses each
    /// record's Kafka timestamp, so `future` means what it meant when the record arrived);
    /// otherwise every record was ingested at `now`.
    pub record_now: Option<Vec<Micros>>,
    /// Per-record ingestion times for the de-duplication window (design §1), when records carry
    /// the one recorded by the run that consumed them (an archive replay cut into epochs of its
    /// own); otherwise every record was ingested at the start of `epoch`.
    pub record_ingested: Option<Vec<Micros>>,
    /// Per-record Kafka timestamps (milliseconds), when the source has them (empty otherwise).
    pub timestamps: Vec<i64>,
    /// The chunk's sequence number in its source, for sources that track parsing progress.
    pub seq: u64,
    /// The records come from the raw-event archive (a restart's replay): an [`Archiver`] must
    /// not archive them again.
    pub archived: bool,
}

impl Chunk {
    /// An empty chunk for `epoch`.
    pub fn new(epoch: Epoch, now: Micros) -> Self {
        Chunk {
            epoch,
            now,
            ..Default::default()
        }
    }

    /// Appends one record.
    pub fn push(&mut self, pos: u64, record: &[u8]) {
        let start = self.data.len() as u32;
        self.data.extend_from_slice(record);
        self.records.push((pos, start, self.data.len() as u32));
    }

    /// The records as `(position, bytes)`.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &[u8])> {
        self.records
            .iter()
            .map(|&(pos, s, e)| (pos, &self.data[s as usize..e as usize]))
    }
}

/// What a source has for its worker right now.
#[derive(Debug)]
pub enum Pull {
    /// Records to process.
    Chunk(Chunk),
    /// Nothing now; no record of an epoch before `epoch` will follow. Ask again after `retry`.
    Idle {
        /// The least epoch of any record still to come.
        epoch: Epoch,
        /// When to ask again.
        retry: Duration,
    },
    /// The source is exhausted (or was stopped): no more records will follow.
    Done,
}

/// Makes every consumed record durable before its epoch can complete (design §6).
///
/// The source operator hands each chunk to its worker's archiver and, when it leaves an epoch,
/// seals that epoch and holds a capability for it until the archiver says it is durable. No
/// epoch can complete, and so no sink can see it or write its progress record, before the
/// raw records of that epoch are archived.
pub trait Archiver: 'static {
    /// Takes a copy of the records of `chunk` (all of epoch `chunk.epoch`).
    fn add(&mut self, chunk: &Chunk);
    /// No more records of `epoch` will come from this worker: start persisting them.
    fn seal(&mut self, epoch: Epoch);
    /// Whether every sealed epoch up to and including `epoch` is durable.
    fn durable(&mut self, epoch: Epoch) -> bool;
}

/// A per-worker handle on a source of raw records.
pub trait ChunkSource: 'static {
    /// The next chunk, or why there is none. Successive chunks never go back in epochs.
    fn pull(&mut self) -> Pull;

    /// An upper bound of the watermark W(e−1) that admission will use for `chunk`'s epoch e,
    /// if the source knows one: `Some(None)` means no event precedes the epoch. Events whose
    /// day closes after that bound cannot be late, so they need not keep their raw bytes.
    /// `None`: unknown (every event that could be late keeps its raw bytes).
    ///
    /// Required, like [`ChunkSource::parsed`], so that a wrapper of another source says what
    /// it forwards: a wrapper that silently dropped both once made every event of a file replay
    /// keep a copy of its line.
    fn watermark_bound(&self, chunk: &Chunk) -> Option<Option<Micros>>;

    /// Reports the largest time of the events parsed from `chunk` (`None`: no event), for
    /// sources that bound the watermark from what they have already parsed.
    fn parsed(&mut self, chunk: &Chunk, max_time: Option<Micros>);
}

/// The wall clock, UTC microseconds.
pub fn wall_clock() -> Micros {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as Micros)
}
