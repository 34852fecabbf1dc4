//! [`CassandraSink`]: writes every completed epoch to Cassandra (design §4, §5).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use futures_util::stream::{self, StreamExt, TryStreamExt};
use rankmysteps_dataflow::event::{Day, Epoch, Micros, Reason};
use rankmysteps_dataflow::output::{EpochOutput, Stats};
use scylla::client::session::Session;

use super::generation::fence_timestamp;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use tracing::{debug, info};

use super::codec::{day_to_cql, to_bigint, user_to_key, user_to_uuid};
use super::config::CassandraConfig;
use super::plan::{plan, DayMark, Write};
use super::schema::Cql;
use super::session::{connect_session, with_retries, Runtime};
use crate::local::Progress;
use crate::{Sink, SinkError};

/// Rows per batch of same-day writes to one of the per-day tables. Such a batch is a single
/// partition's mutation, applied at once by its replicas: far fewer requests than one per row
/// (a changed user costs two or three rows there). Kept small so that a batch stays under
/// Cassandra's default `batch_size_warn_threshold` (5 KiB; a row is about 40 bytes).
const BATCH_ROWS: usize = 64;

/// Users' totals per batch of `totals_by_user` writes (many partitions; see
/// `Writer::write_batch`): a row is about 80 bytes, so 48 stay under the same 5 KiB.
const TOTAL_BATCH_ROWS: usize = 10;

/// A unit of concurrent work: one write, or a batch of writes of one kind: to one day's
/// partition (`users_by_total` or `histogram_by_day`), or users' totals (`totals_by_user`).
#[derive(Debug, PartialEq, Eq)]
enum Unit<'a> {
    One(&'a Write),
    Batch(&'a [Write]),
}

/// Splits `writes` into units: top-k rows and day rows alone; per-day ones (sorted by kind and
/// day so that each batch holds one statement and one partition) in batches of [`BATCH_ROWS`];
/// users' totals (one statement, many partitions) in batches of [`TOTAL_BATCH_ROWS`].
fn units(writes: &mut [Write]) -> Vec<Unit<'_>> {
    fn batch_key(w: &Write) -> Option<(u8, rankmysteps_dataflow::event::Day)> {
        match *w {
            Write::ListingInsert { day, .. } => Some((0, day)),
            Write::ListingDelete { day, .. } => Some((1, day)),
            Write::HistogramUpsert { day, .. } => Some((2, day)),
            Write::HistogramDelete { day, .. } => Some((3, day)),
            // Users' totals: many partitions per batch (see `write_batch`).
            Write::TotalUpsert { .. } => Some((4, 0)),
            Write::TotalDelete { .. } => Some((5, 0)),
            _ => None,
        }
    }
    // Batchable writes last, grouped by (kind, day); the order of writes within an epoch does
    // not matter (they touch distinct keys and share a timestamp).
    writes.sort_by_key(|w| batch_key(w).map_or((0, 0, 0), |(k, d)| (1, k, d)));
    let split = writes.partition_point(|w| batch_key(w).is_none());
    let (single, batched) = writes.split_at(split);
    let mut units: Vec<Unit<'_>> = single.iter().map(Unit::One).collect();
    for group in batched.chunk_by(|a, b| batch_key(a) == batch_key(b)) {
        let rows = match group[0] {
            Write::TotalUpsert { .. } | Write::TotalDelete { .. } => TOTAL_BATCH_ROWS,
            _ => BATCH_ROWS,
        };
        units.extend(group.chunks(rows).map(Unit::Batch));
    }
    units
}

/// The write statements, prepared once.
struct Prepared {
    total_upsert: PreparedStatement,
    total_delete: PreparedStatement,
    listing_insert: PreparedStatement,
    listing_delete: PreparedStatement,
    top_upsert: PreparedStatement,
    top_delete: PreparedStatement,
    histogram_upsert: PreparedStatement,
    histogram_delete: PreparedStatement,
    day_users: PreparedStatement,
    day_users_delete: PreparedStatement,
    day_mark: PreparedStatement,
    progress_upsert: PreparedStatement,
    /// A progress row's epoch and its write time (process 0 of a cluster reads the others').
    progress_epoch: PreparedStatement,
    day_list_upsert: PreparedStatement,
}

/// Prepares `text`, marked idempotent (every statement here is an upsert or delete of absolute
/// values, so the driver may also speculate or retry it).
pub(crate) async fn prepare(session: &Session, text: &str) -> Result<PreparedStatement, SinkError> {
    let mut statement = session
        .prepare(text)
        .await
        .map_err(|e| SinkError::cassandra("preparing a statement", format!("{e}: {text}")))?;
    statement.set_is_idempotent(true);
    Ok(statement)
}

impl Prepared {
    async fn new(session: &Session, cql: &Cql) -> Result<Prepared, SinkError> {
        Ok(Prepared {
            total_upsert: prepare(session, &cql.total_upsert).await?,
            total_delete: prepare(session, &cql.total_delete).await?,
            listing_insert: prepare(session, &cql.listing_insert).await?,
            listing_delete: prepare(session, &cql.listing_delete).await?,
            top_upsert: prepare(session, &cql.top_upsert).await?,
            top_delete: prepare(session, &cql.top_delete).await?,
            histogram_upsert: prepare(session, &cql.histogram_upsert).await?,
            histogram_delete: prepare(session, &cql.histogram_delete).await?,
            day_users: prepare(session, &cql.day_users).await?,
            day_users_delete: prepare(session, &cql.day_users_delete).await?,
            day_mark: prepare(session, &cql.day_mark).await?,
            progress_upsert: prepare(session, &cql.progress_upsert).await?,
            progress_epoch: prepare(session, &cql.progress_epoch).await?,
            day_list_upsert: prepare(session, &cql.day_list_upsert).await?,
        })
    }
}

/// The counters of the progress record's `stats` map: `accepted`, `duplicate`, then one per
/// rejection reason code.
pub fn stats_map(stats: &Stats) -> Result<BTreeMap<String, i64>, SinkError> {
    let mut map = BTreeMap::new();
    map.insert("accepted".to_owned(), to_bigint(stats.accepted)?);
    map.insert("duplicate".to_owned(), to_bigint(stats.duplicate)?);
    for reason in Reason::ALL {
        map.insert(reason.code().to_owned(), to_bigint(stats.rejected(reason))?);
    }
    Ok(map)
}

/// The `progress` row of the intent record of `job`: the same fields as the progress record,
/// for the epoch whose writes are under way. Written before an epoch's first data write, so a
/// restart that finds an intent newer than the progress record knows that this epoch may be
/// half written, and up to which offsets it must replay to write it whole again.
pub fn intent_key(job: &str) -> String {
    format!("{job}/intent")
}

/// The row of process `process`'s own progress record in a cluster of `processes` processes
/// of `threads` worker threads each (design §4, §7): `<job>` for process 0, whose row is also
/// the cluster's (it is written only once every process's row has reached its epoch), and
/// `<job>/p<process>of<processes>x<threads>` for the others. The shape is in the key because
/// it decides which users and partitions a process owns: a restart with another shape must
/// not take a row of the old one for its own. Each process's intent record is [`intent_key`]
/// of its row.
pub fn process_progress_key(job: &str, process: usize, processes: usize, threads: usize) -> String {
    match process {
        0 => job.to_owned(),
        p => format!("{job}/p{p}of{processes}x{threads}"),
    }
}

/// How long [`Sink::finish`] of process 0 waits for the other processes' progress records to
/// reach its last epoch before it leaves the cluster's record behind (a restart then writes
/// the epochs after it again), and how long at most while none of them moves (a peer that
/// died never will).
const PUBLISH_WAIT: std::time::Duration = std::time::Duration::from_secs(30);
const PUBLISH_STALL: std::time::Duration = std::time::Duration::from_secs(4);

/// Writes every completed epoch to the tables of `schema.cql`, then the job's progress record.
///
/// Two lanes, so that the top-k, what most readers look at, stays fresh however far behind the
/// bulk of the tables is:
/// - [`Sink::write_epoch`] (the calling thread) writes the epoch's intent record
///   ([`intent_key`]: what the progress record will say once the epoch is written), then the
///   changed `top_by_day` rows, and returns once they are durable at the configured consistency;
/// - a thread of its own then writes everything else: every data write (`totals_by_user`,
///   `users_by_total`, `histogram_by_day`, `days.users`) as prepared statements and unlogged
///   batches, at most `max_in_flight` at once, each retried with exponential backoff on
///   timeouts and unavailability; then `days.epoch` and `days.final` of every day changed or
///   closed (final once closed); then the progress record: epoch, watermark, next position of
///   every partition seen so far, and the counters cumulative over the run (see
///   [`CassandraSink::resume`]). While it writes, the epochs handed to it are merged into one
///   ([`EpochOutput::merge`]): each changed record is written once per write, at the values of
///   the last merged epoch.
///
/// In a cluster of several processes ([`CassandraSink::set_process`]) every process has a sink
/// of its own, which writes its share of each epoch (its users' rows, its days' counts) and its
/// own progress and intent records ([`process_progress_key`]). Only process 0 writes what is
/// global: the top-k rows, the days' marks and `day_list`, and the cluster's progress record
/// `<job>`, for the latest epoch that it and every other process's record have reached (the
/// others' records are read back before each write of it): so `<job>` never vouches for an
/// epoch some process has not written. A day's final mark waits with it (a reader seeing
/// `final` sees every process's final rows of the day).
///
/// So the progress record vouches for every write of its epoch and the epochs before, and the
/// intent record is never behind anything written: a restart that finds the intent ahead of the
/// progress record writes the epochs in between again (see the `recovery` of the CLI).
/// [`Sink::finish`] waits for the bulk lane to finish; an error of the bulk lane is returned by
/// the next call.
///
/// All writes are idempotent upserts and deletes of absolute values. Every write carries a
/// client timestamp (`USING TIMESTAMP`) derived from the sink's generation and the epoch
/// ([`fence_timestamp`]), strictly greater than those of earlier epochs' writes of the same
/// lane (the two lanes write disjoint rows), and than those of every older generation: a
/// request of an older epoch that reaches a replica late (after a client-side timeout and
/// retry) therefore loses against newer values instead of resurrecting an old one, an older
/// start of the process that still writes loses against this one, and an epoch's deletes and
/// inserts never race each other (they touch distinct keys). No host's clock is involved.
///
/// Readers may observe an epoch half applied (e.g. a user's old listing row deleted before the
/// new one is inserted, or a top-k ahead of the standings): Cassandra has no multi-partition
/// transactions. The progress record says which epoch is complete.
pub struct CassandraSink {
    writer: Arc<Writer>,
    bulk: Arc<BulkLane>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// The last epoch handed over.
    epoch: Option<Epoch>,
    watermark: Option<Micros>,
    /// Next position by partition: merged, so a partition missing from an epoch keeps its last.
    positions: BTreeMap<u32, u64>,
    /// Counters over the run.
    stats: Stats,
    /// The intent record found by a restart: not rewritten for epochs up to it.
    intent_floor: Option<Epoch>,
    /// A restart's restored epochs (at or before the progress record), summed: the state of
    /// the open days there, written whole as this generation's before its first epoch.
    restored: Option<EpochOutput>,
    /// Updates in `restored` when it was last consolidated.
    restored_len: usize,
}

/// Process 0's progress records not yet published as the cluster's, and the final marks
/// waiting with them (see [`CassandraSink`]).
#[derive(Default)]
struct Unpublished {
    /// The records of its bulk writes, by epoch, after the last published one.
    records: BTreeMap<i64, Committed>,
    /// Days closed by those epochs: (closing epoch, day).
    finals: Vec<(i64, Day)>,
    /// Since when nothing could be published while records waited, and when that was last
    /// said in the log.
    held: Option<(Instant, Instant)>,
}

/// How long the cluster's record may wait for the other processes before the log says which
/// holds it back (and again at that interval).
const PUBLISH_HELD_WARNING: std::time::Duration = std::time::Duration::from_secs(10);

/// What the progress record of a bulk write says (cumulative over the run).
#[derive(Clone, Debug)]
struct Committed {
    epoch: i64,
    watermark: Option<Micros>,
    positions: BTreeMap<u32, u64>,
    stats: Stats,
    /// The days whose top-k rows changed in the epochs written (marked with the others: in a
    /// cluster, process 0's share of the totals may not hold every day the top-k holds).
    top_days: std::collections::BTreeSet<Day>,
}

/// The bulk lane's mailbox.
#[derive(Default)]
struct BulkState {
    /// Epochs waiting for the bulk lane, merged, and the progress record they lead to.
    pending: Option<(EpochOutput, Committed)>,
    /// A bulk write is under way.
    busy: bool,
    /// The pending epoch is a restart's rewrite: written at once, whatever the interval.
    urgent: bool,
    /// No more epochs will come: the lane ends once idle.
    closing: bool,
    /// The first failure; nothing is written after it.
    error: Option<SinkError>,
}

#[derive(Default)]
struct BulkLane {
    state: Mutex<BulkState>,
    changed: Condvar,
}

/// The connection, the statements and the write helpers, shared by both lanes.
struct Writer {
    runtime: Runtime,
    session: Session,
    prepared: Prepared,
    job: String,
    max_in_flight: usize,
    retries: u32,
    /// The generation of this start (0 until one is set): the high part of every write
    /// timestamp. Shared, so that a cluster's processes can agree on one after connecting
    /// ([`CassandraSink::generation_cell`]).
    generation: Arc<AtomicU64>,
    /// This process's index, the cluster's number of processes and their threads (see
    /// [`CassandraSink`]).
    process: std::sync::atomic::AtomicUsize,
    processes: std::sync::atomic::AtomicUsize,
    threads: std::sync::atomic::AtomicUsize,
    /// Process 0 of several: what waits to be published.
    unpublished: Mutex<Unpublished>,
    /// The keyspace written.
    keyspace: String,
    /// Bulk writes begun.
    writes: AtomicU64,
    /// The days this sink has written to `day_list`, and whether as final: a day is listed
    /// when it first appears and again when it becomes final, not at every epoch.
    listed: Mutex<BTreeMap<rankmysteps_dataflow::event::Day, bool>>,
    /// Tests only: abort the process during this bulk write (after its data, before its
    /// progress record), from `RANKMYSTEPS_CRASH_AFTER_WRITES`.
    crash_after_writes: Option<u64>,
}

impl CassandraSink {
    /// Connects to the cluster of `config` and prepares the statements; `job` names the
    /// progress record's row. The keyspace and tables must exist ([`super::schema::apply`]).
    pub fn connect(config: &CassandraConfig, job: &str) -> Result<CassandraSink, SinkError> {
        config.validate()?;
        let runtime = Runtime::new()?;
        let (session, prepared) = runtime.block_on(async {
            let session = connect_session(config).await?;
            let prepared = Prepared::new(&session, &Cql::new(&config.keyspace)).await?;
            Ok::<_, SinkError>((session, prepared))
        })?;
        info!(keyspace = %config.keyspace, job, "cassandra sink connected");
        let writer = Arc::new(Writer {
            runtime,
            session,
            prepared,
            job: job.to_owned(),
            max_in_flight: config.max_in_flight,
            retries: config.retries,
            generation: Arc::new(AtomicU64::new(0)),
            process: Default::default(),
            processes: std::sync::atomic::AtomicUsize::new(1),
            threads: std::sync::atomic::AtomicUsize::new(1),
            unpublished: Mutex::default(),
            keyspace: config.keyspace.clone(),
            writes: AtomicU64::new(0),
            listed: Mutex::new(BTreeMap::new()),
            crash_after_writes: std::env::var("RANKMYSTEPS_CRASH_AFTER_WRITES")
                .ok()
                .and_then(|v| v.parse().ok()),
        });
        let bulk = Arc::new(BulkLane::default());
        let interval = std::time::Duration::from_millis(config.bulk_interval_ms);
        let thread = {
            let (writer, bulk) = (writer.clone(), bulk.clone());
            std::thread::Builder::new()
                .name("cassandra-bulk".into())
                .spawn(move || bulk_lane(&writer, &bulk, interval))
                .map_err(|e| SinkError::cassandra("starting the bulk writer", e.to_string()))?
        };
        Ok(CassandraSink {
            writer,
            bulk,
            thread: Some(thread),
            epoch: None,
            watermark: None,
            positions: BTreeMap::new(),
            stats: Stats::default(),
            intent_floor: None,
            restored: None,
            restored_len: 0,
        })
    }

    /// Writes the state of the open days a restart restored, as this generation's own, before
    /// anything else it writes (design §4). First each open day's partitions (`top_by_day`,
    /// `users_by_total`, `histogram_by_day`, its `days` row) are deleted with the timestamp
    /// (g, 0): that tombstone shadows, for good, every row an older start of the process wrote
    /// there, including what a start still running sends late, and rows of intermediate
    /// epochs no rewrite would touch. Then the days' rows as of the restored epoch P are
    /// written with (g, P), below the rewrites and epochs that follow. `totals_by_user` rows
    /// are partitioned by user: they are not deleted, only written again (as (g, P)).
    /// Without a generation (tests of one run) there is nothing to fence and nothing is done.
    fn write_restored(&mut self) -> Result<(), SinkError> {
        let Some(mut state) = self.restored.take() else {
            return Ok(());
        };
        let generation = self.writer.generation.load(Ordering::SeqCst);
        if generation == 0 {
            return Ok(());
        }
        consolidate_output(&mut state);
        let closed: std::collections::BTreeSet<_> = state.closed.iter().copied().collect();
        state.totals.retain(|((d, ..), _)| !closed.contains(d));
        state.top.retain(|((d, _), _)| !closed.contains(d));
        state.histogram.retain(|((d, ..), _)| !closed.contains(d));
        state.users.retain(|((d, _), _)| !closed.contains(d));
        state.closed.clear();
        let days: std::collections::BTreeSet<_> = state
            .totals
            .iter()
            .map(|((d, ..), _)| *d)
            .chain(state.users.iter().map(|((d, _), _)| *d))
            .collect();
        let epoch = i64::try_from(state.epoch)
            .map_err(|_| SinkError::cassandra("encoding the epoch", state.epoch.to_string()))?;
        let (ts0, ts) = (self.writer.timestamp(0)?, self.writer.timestamp(epoch)?);
        let w = &*self.writer;
        let keyspace = w.keyspace.clone();
        let mut plan = plan(&state)?;
        w.runtime.block_on(async {
            w.run_all(days.iter().copied(), |day| {
                let keyspace = keyspace.clone();
                async move { w.delete_day(&keyspace, day, ts0).await }
            })
            .await?;
            w.write_data(&mut plan.data, ts).await?;
            if w.process() == 0 {
                w.run_all(plan.marks.iter().copied(), |m| w.write_mark(m, epoch, ts))
                    .await?;
            } else {
                // Another process of a cluster: its share up to here is this generation's
                // now, which its own record says (process 0 publishes the cluster's record
                // only from records of this generation).
                let record = Committed {
                    epoch,
                    watermark: self.watermark,
                    positions: self.positions.clone(),
                    stats: self.stats,
                    top_days: Default::default(),
                };
                w.write_progress(&w.own_key(), &record, ts).await?;
            }
            Ok::<_, SinkError>(())
        })?;
        info!(
            days = days.len(),
            rows = plan.data.len(),
            epoch,
            generation,
            "cassandra: restored open days written as this generation's"
        );
        Ok(())
    }

    /// Writes as generation `generation` from now on (claimed with
    /// [`super::CassandraReader::claim_generation`] before the first epoch): every write
    /// timestamp derives from it and the epoch, so this start's writes win over every older
    /// start's, whenever those arrive.
    pub fn set_generation(&mut self, generation: u64) {
        self.writer.generation.store(generation, Ordering::SeqCst);
    }

    /// The generation this sink's timestamps derive from, to be set later (before the first
    /// epoch): the processes of a cluster write with one generation, the largest they claimed,
    /// agreed on once connected, so that one process's deletes of a day's partitions at
    /// (g, 0) shadow every older start's rows and none of this start's.
    pub fn generation_cell(&self) -> Arc<AtomicU64> {
        self.writer.generation.clone()
    }

    /// Makes this the sink of process `process` of `processes`, of `threads` worker threads
    /// each (see [`CassandraSink`]); before [`CassandraSink::resume`].
    pub fn set_process(&mut self, process: usize, processes: usize, threads: usize) {
        self.writer.process.store(process, Ordering::SeqCst);
        self.writer
            .processes
            .store(processes.max(1), Ordering::SeqCst);
        self.writer.threads.store(threads.max(1), Ordering::SeqCst);
    }

    /// Continues after a restart from the progress record found (if any): the watermark,
    /// positions and counters start from it, so the next progress record stays cumulative.
    /// `intent` is the epoch of the intent record found with it: the epochs up to it, written
    /// again by the restart, leave that record as it is.
    pub fn resume(&mut self, progress: Option<&Progress>, intent: Option<Epoch>) {
        self.intent_floor = intent;
        let Some(progress) = progress else { return };
        self.watermark = progress.watermark_micros;
        self.positions = progress
            .positions
            .iter()
            .map(|p| (p.partition, p.next))
            .collect();
        // The counters are process 0's (the cluster's); another process's record carries none.
        if self.writer.process() == 0 {
            self.stats = Stats::from(&progress.stats);
        }
    }

    /// The bulk lane's failure, if it failed (reported once; the lane writes nothing more).
    fn bulk_error(&self) -> Result<(), SinkError> {
        match self.bulk.state.lock().expect("bulk lock").error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Waits until everything handed over so far is written (or the bulk lane failed).
    pub fn flush(&self) -> Result<(), SinkError> {
        let mut state = self.bulk.state.lock().expect("bulk lock");
        while state.error.is_none() && (state.busy || state.pending.is_some()) {
            state = self.bulk.changed.wait(state).expect("bulk lock");
        }
        drop(state);
        self.bulk_error()
    }

    /// Closes the bulk lane and waits for it to write what it has.
    fn close(&mut self) -> Result<(), SinkError> {
        {
            let mut state = self.bulk.state.lock().expect("bulk lock");
            state.closing = true;
            self.bulk.changed.notify_all();
        }
        if let Some(thread) = self.thread.take() {
            thread
                .join()
                .map_err(|_| SinkError::cassandra("bulk writer", "panicked"))?;
        }
        self.bulk_error()
    }
}

/// The bulk lane (see [`CassandraSink`]): writes the waiting epochs, merged, until closed.
fn bulk_lane(writer: &Writer, lane: &BulkLane, interval: std::time::Duration) {
    let mut next_start = Instant::now();
    loop {
        let (output, committed) = {
            let mut state = lane.state.lock().expect("bulk lock");
            // Not before `next_start`, unless closing (then everything goes now).
            while !state.closing && !state.urgent && Instant::now() < next_start {
                let wait = next_start.saturating_duration_since(Instant::now());
                state = lane.changed.wait_timeout(state, wait).expect("bulk lock").0;
            }
            loop {
                if state.error.is_none() {
                    if let Some(job) = state.pending.take() {
                        state.busy = true;
                        state.urgent = false;
                        break job;
                    }
                }
                if state.error.is_none() && writer.has_unpublished() {
                    // Process 0 of several: publish once the others' records have caught up
                    // (polled; when closing, for up to PUBLISH_WAIT).
                    let closing = state.closing;
                    drop(state);
                    let deadline = Instant::now() + PUBLISH_WAIT;
                    let (mut floor, mut moved) = (None, Instant::now());
                    loop {
                        match writer.publish() {
                            Err(e) => {
                                tracing::error!(error = %e, "publishing the cluster's progress failed");
                                let mut state = lane.state.lock().expect("bulk lock");
                                state.error.get_or_insert(e);
                                lane.changed.notify_all();
                                break;
                            }
                            Ok(now) if now != floor => (floor, moved) = (now, Instant::now()),
                            Ok(_) => {}
                        }
                        let now = Instant::now();
                        if !closing
                            || !writer.has_unpublished()
                            || now >= deadline
                            || now >= moved + PUBLISH_STALL
                        {
                            break;
                        }
                        std::thread::sleep(std::time::Duration::from_millis(100));
                    }
                    if closing {
                        if writer.has_unpublished() {
                            tracing::warn!(
                                "the other processes' progress records did not reach this \
                                 process's last epoch: the cluster's record stays behind (a \
                                 restart writes the epochs after it again)"
                            );
                        }
                        return;
                    }
                    state = lane.state.lock().expect("bulk lock");
                    if state.pending.is_none() && !state.closing && state.error.is_none() {
                        state = lane
                            .changed
                            .wait_timeout(state, std::time::Duration::from_millis(200))
                            .expect("bulk lock")
                            .0;
                    }
                    continue;
                }
                if state.closing {
                    return;
                }
                state = lane.changed.wait(state).expect("bulk lock");
            }
        };
        next_start = Instant::now() + interval;
        let result = writer.write_bulk(&output, &committed);
        let mut state = lane.state.lock().expect("bulk lock");
        state.busy = false;
        if let Err(e) = result {
            tracing::error!(error = %e, "cassandra bulk write failed");
            state.error.get_or_insert(e);
            state.pending = None;
        }
        lane.changed.notify_all();
    }
}

impl Writer {
    /// The client timestamp of this sink's writes of `epoch`: derived from the generation and
    /// the epoch ([`fence_timestamp`]), never from this host's clock, so that a skewed clock
    /// or an older start of the process still writing can never let an older value win.
    fn timestamp(&self, epoch: i64) -> Result<i64, SinkError> {
        fence_timestamp(self.generation.load(Ordering::SeqCst), epoch.max(0) as u64)
    }

    /// This process's index in its cluster (0 alone).
    fn process(&self) -> usize {
        self.process.load(Ordering::SeqCst)
    }

    /// The number of processes of the cluster (1 alone).
    fn processes(&self) -> usize {
        self.processes.load(Ordering::SeqCst)
    }

    /// This process's own progress row ([`process_progress_key`]).
    fn own_key(&self) -> String {
        self.key_of(self.process())
    }

    /// Process `process`'s progress row.
    fn key_of(&self, process: usize) -> String {
        let threads = self.threads.load(Ordering::SeqCst);
        process_progress_key(&self.job, process, self.processes(), threads)
    }

    /// Process 0 of several: some bulk write's progress record is not yet published.
    fn has_unpublished(&self) -> bool {
        !self
            .unpublished
            .lock()
            .expect("unpublished lock")
            .records
            .is_empty()
    }

    /// The epoch of progress row `job`, if it was written by this generation (a row of an
    /// older start says nothing about this one's writes).
    async fn progress_epoch(&self, job: &str) -> Result<Option<i64>, SinkError> {
        let what = "reading a process's progress record";
        let result = with_retries(self.retries, what, || {
            self.session
                .execute_unpaged(&self.prepared.progress_epoch, (job,))
        })
        .await?;
        let rows = result
            .into_rows_result()
            .map_err(|e| SinkError::cassandra(what, e.to_string()))?;
        let row = rows
            .maybe_first_row::<(Option<i64>, Option<i64>)>()
            .map_err(|e| SinkError::cassandra(what, e.to_string()))?;
        let since = self.timestamp(0)?;
        Ok(match row {
            Some((Some(epoch), Some(written))) if written >= since => Some(epoch),
            _ => None,
        })
    }

    /// Process 0 of several: publishes as the cluster's progress record (`<job>`) the latest
    /// of its bulk writes' records that every other process's own record (of this generation)
    /// has reached, after the final marks of the days closed up to it. Nothing while some
    /// process's record is behind all of them. Returns the epoch every other process's record
    /// has reached (`None`: some has none of this generation).
    fn publish(&self) -> Result<Option<i64>, SinkError> {
        let others = self.runtime.block_on(async {
            let mut others = Vec::new();
            for p in 1..self.processes() {
                others.push(self.progress_epoch(&self.key_of(p)).await?);
            }
            Ok::<_, SinkError>(others)
        })?;
        let floor = others
            .iter()
            .try_fold(i64::MAX, |floor, e| e.map(|e| floor.min(e)));
        let (committed, finals) = {
            let mut waiting = self.unpublished.lock().expect("unpublished lock");
            let ready = floor.and_then(|f| waiting.records.range(..=f).next_back());
            let Some((_, committed)) = ready else {
                // Held back: say by whom, now and then (a peer that stopped writing its
                // record stops the cluster's).
                let now = Instant::now();
                let (since, said) = *waiting.held.get_or_insert((now, now));
                if now >= said + PUBLISH_HELD_WARNING {
                    waiting.held = Some((since, now));
                    let waiting_from = waiting.records.keys().next().copied();
                    // Process p's record (from 1 on): its epoch, or None.
                    let records: BTreeMap<usize, Option<i64>> =
                        (1..).zip(others.iter().copied()).collect();
                    tracing::warn!(
                        held_s = (now - since).as_secs(),
                        oldest_unpublished = ?waiting_from,
                        records = ?records,
                        "the cluster's progress record waits for the other processes' records \
                         (None: none of this generation yet)"
                    );
                }
                return Ok(floor);
            };
            let finals: Vec<(i64, Day)> = waiting
                .finals
                .iter()
                .filter(|(closed, _)| *closed <= committed.epoch)
                .copied()
                .collect();
            (committed.clone(), finals)
        };
        let ts = self.timestamp(committed.epoch)?;
        self.runtime.block_on(async {
            self.run_all(finals.iter().copied(), |(closed, day)| {
                let mark = DayMark {
                    day,
                    is_final: true,
                };
                self.write_mark(mark, closed, ts)
            })
            .await?;
            self.write_progress(&self.job, &committed, ts).await
        })?;
        let mut waiting = self.unpublished.lock().expect("unpublished lock");
        waiting.held = None;
        waiting.records = waiting.records.split_off(&(committed.epoch + 1));
        waiting
            .finals
            .retain(|(closed, _)| *closed > committed.epoch);
        debug!(epoch = committed.epoch, floor = ?floor, "cluster progress published");
        for (_, day) in finals {
            info!(day = %rankmysteps_dataflow::event::format_day(day), "day final in cassandra");
        }
        Ok(floor)
    }

    /// The bulk lane's write of `output` (epochs merged, top-k rows excluded): data, marks,
    /// then the progress record `committed`.
    ///
    /// In a cluster, another process writes its data and its own record only; process 0
    /// writes its data and the days' marks, but the final ones and the cluster's record wait
    /// for the others ([`Writer::publish`]).
    fn write_bulk(&self, output: &EpochOutput, committed: &Committed) -> Result<(), SinkError> {
        let started = Instant::now();
        let (process, processes) = (self.process(), self.processes());
        let mut plan = plan(output)?;
        for &day in &committed.top_days {
            if !plan.marks.iter().any(|m| m.day == day) {
                plan.marks.push(DayMark {
                    day,
                    is_final: output.closed.contains(&day),
                });
            }
        }
        let mut deferred = Vec::new();
        if process > 0 {
            plan.marks.clear();
        } else if processes > 1 {
            deferred = plan.marks.iter().filter(|m| m.is_final).copied().collect();
            plan.marks.retain(|m| !m.is_final);
        }
        // A merged write is written as of its latest epoch (the one its progress record names).
        let ts = self.timestamp(committed.epoch)?;
        let crash = self.crash_after_writes == Some(self.writes.fetch_add(1, Ordering::SeqCst) + 1);
        let own = self.own_key();
        self.runtime.block_on(async {
            self.write_data(&mut plan.data, ts).await?;
            if crash {
                // Fault injection for the restart tests: die with the epoch half written,
                // after a pause as long as a slow write's, in which the job goes on consuming
                // and archiving later epochs.
                tracing::error!(
                    epoch = committed.epoch,
                    "RANKMYSTEPS_CRASH_AFTER_WRITES reached: aborting in 1 s"
                );
                std::thread::sleep(std::time::Duration::from_secs(1));
                std::process::abort();
            }
            self.run_all(plan.marks.iter().copied(), |m| {
                self.write_mark(m, committed.epoch, ts)
            })
            .await?;
            if process == 0 && processes > 1 {
                return Ok(());
            }
            // Last: the progress record vouches for everything above and before.
            self.write_progress(&own, committed, ts).await
        })?;
        debug!(
            epoch = committed.epoch,
            writes = plan.data.len(),
            days = plan.marks.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "cassandra bulk write"
        );
        if process == 0 && processes > 1 {
            {
                let mut waiting = self.unpublished.lock().expect("unpublished lock");
                waiting.records.insert(committed.epoch, committed.clone());
                waiting
                    .finals
                    .extend(deferred.iter().map(|m| (committed.epoch, m.day)));
            }
            return self.publish().map(|_| ());
        }
        if process == 0 {
            for day in &output.closed {
                info!(day = %rankmysteps_dataflow::event::format_day(*day), "day final in cassandra");
            }
        }
        Ok(())
    }

    /// Writes a plan's data rows at `ts`: single writes and batches, bounded in flight.
    async fn write_data(&self, data: &mut [Write], ts: i64) -> Result<(), SinkError> {
        let units = units(data);
        self.run_all(units, |unit| async move {
            match unit {
                Unit::One(w) => self.write_one(w, ts).await,
                Unit::Batch(ws) => self.write_batch(ws, ts).await,
            }
        })
        .await
    }

    /// Deletes `day`'s partitions of the per-day tables and its `days` row at `ts` (with
    /// retries): what an older generation wrote there is shadowed for good.
    async fn delete_day(&self, keyspace: &str, day: Day, ts: i64) -> Result<(), SinkError> {
        for table in ["top_by_day", "users_by_total", "histogram_by_day", "days"] {
            let cql = format!("DELETE FROM {keyspace}.{table} USING TIMESTAMP ? WHERE day = ?");
            with_retries(self.retries, "deleting an open day's rows", || {
                let cql = cql.clone();
                async move {
                    self.session
                        .query_unpaged(cql, (ts, day_to_cql(day)))
                        .await
                        .map(|_| ())
                }
            })
            .await?;
        }
        Ok(())
    }

    /// Executes `write` (with retries).
    async fn write_one(&self, write: &Write, ts: i64) -> Result<(), SinkError> {
        let s = &self.session;
        let p = &self.prepared;
        with_retries(self.retries, write_name(write), || async move {
            match *write {
                Write::TotalUpsert { user, day, steps } => {
                    s.execute_unpaged(
                        &p.total_upsert,
                        (user_to_uuid(user), day_to_cql(day), steps, ts),
                    )
                    .await
                }
                Write::TotalDelete { user, day } => {
                    s.execute_unpaged(&p.total_delete, (ts, user_to_uuid(user), day_to_cql(day)))
                        .await
                }
                Write::ListingInsert { day, steps, user } => {
                    s.execute_unpaged(
                        &p.listing_insert,
                        (day_to_cql(day), steps, user_to_key(user), ts),
                    )
                    .await
                }
                Write::ListingDelete { day, steps, user } => {
                    s.execute_unpaged(
                        &p.listing_delete,
                        (ts, day_to_cql(day), steps, user_to_key(user)),
                    )
                    .await
                }
                Write::TopUpsert { day, row } => {
                    s.execute_unpaged(
                        &p.top_upsert,
                        (
                            day_to_cql(day),
                            row.position as i32,
                            row.rank as i32,
                            user_to_uuid(row.user),
                            i64::try_from(row.steps).unwrap_or(i64::MAX),
                            ts,
                        ),
                    )
                    .await
                }
                Write::TopDelete { day, position } => {
                    s.execute_unpaged(&p.top_delete, (ts, day_to_cql(day), position as i32))
                        .await
                }
                Write::HistogramUpsert { day, steps, users } => {
                    s.execute_unpaged(&p.histogram_upsert, (day_to_cql(day), steps, users, ts))
                        .await
                }
                Write::HistogramDelete { day, steps } => {
                    s.execute_unpaged(&p.histogram_delete, (ts, day_to_cql(day), steps))
                        .await
                }
                Write::DayUsers { day, users } => {
                    s.execute_unpaged(&p.day_users, (ts, users, day_to_cql(day)))
                        .await
                }
                Write::DayUsersDelete { day } => {
                    s.execute_unpaged(&p.day_users_delete, (ts, day_to_cql(day)))
                        .await
                }
            }
            .map(|_| ())
        })
        .await
    }

    /// Executes a batch of writes of one kind (with retries): to one day's partition, or
    /// users' totals (`totals_by_user`, one partition per user).
    ///
    /// A batch of totals spans many partitions. It is unlogged (not atomic, and needs not be:
    /// every write is an idempotent absolute value), so its cost is that of its mutations plus
    /// one request, where single statements cost one request each: most of Cassandra's CPU per
    /// changed user went to those requests. On a cluster of several nodes the coordinator
    /// forwards each mutation to its replicas, a hop that token-aware single statements avoid;
    /// for the cluster sizes this job targets that is far cheaper than the requests saved.
    async fn write_batch(&self, writes: &[Write], ts: i64) -> Result<(), SinkError> {
        let p = &self.prepared;
        let statement = match writes[0] {
            Write::ListingInsert { .. } => &p.listing_insert,
            Write::ListingDelete { .. } => &p.listing_delete,
            Write::HistogramUpsert { .. } => &p.histogram_upsert,
            Write::TotalUpsert { .. } => &p.total_upsert,
            Write::TotalDelete { .. } => &p.total_delete,
            _ => &p.histogram_delete,
        };
        let mut batch = Batch::new(BatchType::Unlogged);
        batch.set_is_idempotent(true);
        for _ in writes {
            batch.append_statement(statement.clone());
        }
        let what = write_name(&writes[0]);
        // Each kind binds its own tuple type; a batch holds one kind only (see `units`).
        macro_rules! run {
            ($values:expr) => {{
                let values: Vec<_> = $values;
                with_retries(self.retries, what, || async {
                    self.session.batch(&batch, &values).await.map(|_| ())
                })
                .await
            }};
        }
        match writes[0] {
            Write::ListingInsert { .. } => run!(writes
                .iter()
                .filter_map(|w| match *w {
                    Write::ListingInsert { day, steps, user } =>
                        Some((day_to_cql(day), steps, user_to_key(user), ts)),
                    _ => None,
                })
                .collect()),
            Write::ListingDelete { .. } => run!(writes
                .iter()
                .filter_map(|w| match *w {
                    Write::ListingDelete { day, steps, user } =>
                        Some((ts, day_to_cql(day), steps, user_to_key(user))),
                    _ => None,
                })
                .collect()),
            Write::HistogramUpsert { .. } => run!(writes
                .iter()
                .filter_map(|w| match *w {
                    Write::HistogramUpsert { day, steps, users } =>
                        Some((day_to_cql(day), steps, users, ts)),
                    _ => None,
                })
                .collect()),
            Write::TotalUpsert { .. } => run!(writes
                .iter()
                .filter_map(|w| match *w {
                    Write::TotalUpsert { user, day, steps } =>
                        Some((user_to_uuid(user), day_to_cql(day), steps, ts)),
                    _ => None,
                })
                .collect()),
            Write::TotalDelete { .. } => run!(writes
                .iter()
                .filter_map(|w| match *w {
                    Write::TotalDelete { user, day } =>
                        Some((ts, user_to_uuid(user), day_to_cql(day))),
                    _ => None,
                })
                .collect()),
            _ => run!(writes
                .iter()
                .filter_map(|w| match *w {
                    Write::HistogramDelete { day, steps } => Some((ts, day_to_cql(day), steps)),
                    _ => None,
                })
                .collect()),
        }
    }

    /// Sets `days.epoch` and `days.final` of one day (with retries), and lists the day in
    /// `day_list` when it is new to this sink or has just become final.
    async fn write_mark(&self, mark: DayMark, epoch: i64, ts: i64) -> Result<(), SinkError> {
        with_retries(self.retries, "marking a day", || async move {
            self.session
                .execute_unpaged(
                    &self.prepared.day_mark,
                    (ts, epoch, mark.is_final, day_to_cql(mark.day)),
                )
                .await
                .map(|_| ())
        })
        .await?;
        let listed = self
            .listed
            .lock()
            .expect("listed lock")
            .get(&mark.day)
            .copied();
        // Once final, a day stays final (a later mark of it, e.g. a replay, does not undo it).
        let is_final = mark.is_final || listed == Some(true);
        if listed == Some(is_final) {
            return Ok(());
        }
        with_retries(self.retries, "listing a day", || async move {
            self.session
                .execute_unpaged(
                    &self.prepared.day_list_upsert,
                    (day_to_cql(mark.day), is_final, ts),
                )
                .await
                .map(|_| ())
        })
        .await?;
        self.listed
            .lock()
            .expect("listed lock")
            .insert(mark.day, is_final);
        Ok(())
    }

    /// Runs `writes` with at most `max_in_flight` in flight; stops at the first failure.
    async fn run_all<'a, T: 'a, F, Fut>(
        &self,
        writes: impl IntoIterator<Item = T>,
        one: F,
    ) -> Result<(), SinkError>
    where
        F: Fn(T) -> Fut,
        Fut: std::future::Future<Output = Result<(), SinkError>>,
    {
        stream::iter(writes)
            .map(one)
            .buffer_unordered(self.max_in_flight)
            .try_for_each(|()| async { Ok(()) })
            .await
    }

    /// Writes `record` as the progress (or intent) record of row `job` at `ts` (with retries).
    async fn write_progress(
        &self,
        job: &str,
        record: &Committed,
        ts: i64,
    ) -> Result<(), SinkError> {
        let positions = record
            .positions
            .iter()
            .map(|(&partition, &next)| {
                let partition = i32::try_from(partition).map_err(|_| {
                    SinkError::cassandra("encoding positions", format!("partition {partition}"))
                })?;
                Ok((partition, to_bigint(next)?))
            })
            .collect::<Result<BTreeMap<i32, i64>, SinkError>>()?;
        let stats = stats_map(&record.stats)?;
        let values = (job, record.epoch, record.watermark, &positions, &stats, ts);
        let what = if job.ends_with("/intent") {
            "writing the intent record"
        } else {
            "writing the progress record"
        };
        with_retries(self.retries, what, || async {
            self.session
                .execute_unpaged(&self.prepared.progress_upsert, &values)
                .await
                .map(|_| ())
        })
        .await
    }
}

/// A short name of a write's statement, for errors and logs.
fn write_name(write: &Write) -> &'static str {
    match write {
        Write::TotalUpsert { .. } => "upserting a total",
        Write::TotalDelete { .. } => "deleting a total",
        Write::ListingInsert { .. } => "inserting a listing row",
        Write::ListingDelete { .. } => "deleting a listing row",
        Write::TopUpsert { .. } => "upserting a top-k row",
        Write::TopDelete { .. } => "deleting a top-k row",
        Write::HistogramUpsert { .. } => "upserting a histogram count",
        Write::HistogramDelete { .. } => "deleting a histogram count",
        Write::DayUsers { .. } => "setting a day's users",
        Write::DayUsersDelete { .. } => "clearing a day's users",
    }
}
/// Sorts `updates` by key and sums the updates of each key, dropping zeros.
fn consolidate<T: Ord>(updates: &mut Vec<(T, isize)>) {
    updates.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out: Vec<(T, isize)> = Vec::with_capacity(updates.len());
    for (key, diff) in updates.drain(..) {
        match out.last_mut() {
            Some((last, d)) if *last == key => *d += diff,
            _ => out.push((key, diff)),
        }
    }
    out.retain(|(_, d)| *d != 0);
    *updates = out;
}

/// Consolidates the deltas of `output` (updates of one key summed, zeros dropped; a user's
/// retraction of an old total sorts before the insertion of the new one, as plans expect).
fn consolidate_output(output: &mut EpochOutput) {
    consolidate(&mut output.totals);
    consolidate(&mut output.top);
    consolidate(&mut output.histogram);
    consolidate(&mut output.users);
}

impl Sink for CassandraSink {
    fn restore(&mut self, output: &EpochOutput) -> Result<(), SinkError> {
        // Summed as they come; consolidated whenever the sum doubles, so memory stays that of
        // the open days' state, and time linear in the updates.
        let state = self.restored.get_or_insert_with(EpochOutput::default);
        state.epoch = output.epoch;
        state.totals.extend_from_slice(&output.totals);
        state.top.extend_from_slice(&output.top);
        state.histogram.extend_from_slice(&output.histogram);
        state.users.extend_from_slice(&output.users);
        state.closed.extend_from_slice(&output.closed);
        let len = state.totals.len() + state.top.len() + state.histogram.len() + state.users.len();
        if len > 2 * self.restored_len + 4096 {
            consolidate_output(state);
            self.restored_len =
                state.totals.len() + state.top.len() + state.histogram.len() + state.users.len();
        }
        Ok(())
    }

    fn write_epoch(&mut self, output: &EpochOutput) -> Result<(), SinkError> {
        self.write_restored()?;
        if let Some(last) = self.epoch.filter(|&last| output.epoch <= last) {
            return Err(SinkError::OutOfOrder {
                epoch: output.epoch,
                last,
            });
        }
        self.bulk_error()?;
        let epoch = i64::try_from(output.epoch)
            .map_err(|_| SinkError::cassandra("encoding the epoch", output.epoch.to_string()))?;
        // What the progress record will claim once the bulk lane has written this epoch.
        let mut stats = self.stats;
        stats.add(&output.stats);
        let watermark = self.watermark.max(output.watermark);
        let mut positions = self.positions.clone();
        positions.extend(output.positions.iter().map(|p| (p.partition, p.next)));
        let committed = Committed {
            epoch,
            watermark,
            positions,
            stats,
            top_days: output.top.iter().map(|((day, _), _)| *day).collect(),
        };
        // The fast lane: the intent record first (it must cover every write that follows),
        // then the top-k rows.
        let top_only = EpochOutput {
            epoch: output.epoch,
            top: output.top.clone(),
            ..EpochOutput::default()
        };
        let mut top = plan(&top_only)?;
        let ts = self.writer.timestamp(epoch)?;
        let w = &*self.writer;
        // The intent never goes back: while a restart writes again the epochs up to the intent
        // it found, that intent stands (should it stop again, they are written again).
        let intent = self.intent_floor.is_none_or(|floor| output.epoch > floor);
        // A rewrite (an epoch up to that intent) is written alone, never merged with another
        // epoch. The run that stopped may have written any of the epochs after its progress
        // record, merged in ways the restart cannot know, and partly: a listing row or a
        // histogram count of an intermediate epoch R may be in the tables. Written one by one,
        // epoch e's deletes remove every row of R that e changes, so after the intent's epoch
        // the tables hold exactly its state. A merged write of R's neighbours would cancel the
        // intermediate row's insert against its delete and leave it there, stale.
        let rewrite = !intent;
        if rewrite {
            self.flush()?;
        }
        w.runtime.block_on(async {
            if intent {
                w.write_progress(&intent_key(&w.own_key()), &committed, ts)
                    .await?;
            }
            let units = units(&mut top.data);
            w.run_all(units, |unit| async move {
                match unit {
                    Unit::One(x) => w.write_one(x, ts).await,
                    Unit::Batch(xs) => w.write_batch(xs, ts).await,
                }
            })
            .await
        })?;
        // The rest to the bulk lane, merged with what waits there.
        // (Not `..output.clone()`: the rejected records, which may be many, are not needed.)
        let rest = EpochOutput {
            epoch: output.epoch,
            watermark: output.watermark,
            totals: output.totals.clone(),
            top: Vec::new(),
            histogram: output.histogram.clone(),
            users: output.users.clone(),
            closed: output.closed.clone(),
            rejected: Vec::new(),
            stats: output.stats,
            positions: output.positions.clone(),
        };
        {
            let mut state = self.bulk.state.lock().expect("bulk lock");
            let mut record = committed.clone();
            let merged = match state.pending.take() {
                Some((waiting, before)) => {
                    record.top_days.extend(before.top_days);
                    EpochOutput::merge(vec![waiting, rest])
                }
                None => rest,
            };
            state.pending = Some((merged, record));
            state.urgent = rewrite;
            self.bulk.changed.notify_all();
        }
        if rewrite {
            self.flush()?;
        }
        self.stats = committed.stats;
        self.watermark = committed.watermark;
        self.positions = committed.positions;
        self.epoch = Some(output.epoch);
        debug!(
            epoch = output.epoch,
            top_writes = top.data.len(),
            "cassandra top-k written"
        );
        Ok(())
    }

    fn tick(&mut self) -> Result<(), SinkError> {
        self.bulk_error()
    }

    fn finish(&mut self) -> Result<(), SinkError> {
        self.write_restored()?;
        // Everything handed to the bulk lane is durable when it has closed.
        self.close()
    }
}

impl Drop for CassandraSink {
    fn drop(&mut self) {
        let _ = self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_batch_one_kind_and_day_per_batch() {
        let mut writes = vec![
            Write::ListingInsert {
                day: 2,
                steps: 5,
                user: 1,
            },
            Write::TotalUpsert {
                user: 1,
                day: 2,
                steps: 5,
            },
            Write::ListingDelete {
                day: 2,
                steps: 4,
                user: 1,
            },
            Write::ListingInsert {
                day: 1,
                steps: 5,
                user: 1,
            },
        ];
        writes.extend(
            (0..BATCH_ROWS as i64 + 1).map(|steps| Write::HistogramUpsert {
                day: 2,
                steps,
                users: 1,
            }),
        );
        let units = units(&mut writes);
        let shape: Vec<(usize, Option<&str>)> = units
            .iter()
            .map(|u| match u {
                Unit::One(w) => (1, Some(write_name(w))),
                Unit::Batch(ws) => (ws.len(), None),
            })
            .collect();
        assert_eq!(
            shape,
            vec![
                (1, None), // listing inserts of day 1
                (1, None), // listing inserts of day 2
                (1, None), // listing deletes of day 2
                (BATCH_ROWS, None),
                (1, None),
                (1, None), // users' totals, whatever their day
            ]
        );
    }
}
