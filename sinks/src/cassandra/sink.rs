//! [`CassandraSink`]: writes every completed epoch to Cassandra (design §4, §5).

use std::collections::BTreeMap;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use futures_util::stream::{self, StreamExt, TryStreamExt};
use rankmysteps_dataflow::event::{Epoch, Micros, Reason};
use rankmysteps_dataflow::output::{EpochOutput, Stats};
use scylla::client::session::Session;
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

/// A unit of concurrent work: one write, or a batch of writes of one kind to one day's
/// partition (`users_by_total` or `histogram_by_day`).
#[derive(Debug, PartialEq, Eq)]
enum Unit<'a> {
    One(&'a Write),
    Batch(&'a [Write]),
}

/// Splits `writes` into units: per-user writes alone, and per-day ones (sorted by kind and day
/// so that each batch holds one statement and one partition) in batches of [`BATCH_ROWS`].
fn units(writes: &mut [Write]) -> Vec<Unit<'_>> {
    fn batch_key(w: &Write) -> Option<(u8, rankmysteps_dataflow::event::Day)> {
        match *w {
            Write::ListingInsert { day, .. } => Some((0, day)),
            Write::ListingDelete { day, .. } => Some((1, day)),
            Write::HistogramUpsert { day, .. } => Some((2, day)),
            Write::HistogramDelete { day, .. } => Some((3, day)),
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
        units.extend(group.chunks(BATCH_ROWS).map(Unit::Batch));
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

/// Writes every completed epoch to the tables of `schema.cql`, then the job's progress record.
///
/// Per epoch ([`Sink::write_epoch`] returns once all of it is durable at the configured
/// consistency):
/// 0. the intent record ([`intent_key`]): what the progress record will say once the epoch is
///    written;
/// 1. every data write (`totals_by_user`, `users_by_total`, `top_by_day`, `histogram_by_day`,
///    `days.users`) as prepared statements, at most `max_in_flight` at once, each retried with
///    exponential backoff on timeouts and unavailability;
/// 2. then `days.epoch` and `days.final` of every day changed or closed (final once closed);
/// 3. then the progress record: epoch, watermark, next position of every partition seen so far,
///    and the counters cumulative over the run (see [`CassandraSink::resume`]).
///
/// All writes are idempotent upserts and deletes of absolute values. Every write of an epoch
/// carries the same client timestamp (`USING TIMESTAMP`), strictly greater than the previous
/// epoch's: a request of an older epoch that reaches a replica late (after a client-side
/// timeout and retry) therefore loses against newer values instead of resurrecting an old
/// one, and an epoch's deletes and inserts never race each other (they touch distinct keys).
///
/// Readers may observe an epoch half applied (e.g. a user's old listing row deleted before the
/// new one is inserted): Cassandra has no multi-partition transactions. The progress record
/// says which epoch is complete.
pub struct CassandraSink {
    runtime: Runtime,
    session: Session,
    prepared: Prepared,
    job: String,
    max_in_flight: usize,
    retries: u32,
    /// The last epoch written.
    epoch: Option<Epoch>,
    /// The client timestamp of the last epoch's writes (microseconds).
    last_timestamp: i64,
    watermark: Option<Micros>,
    /// Next position by partition: merged, so a partition missing from an epoch keeps its last.
    positions: BTreeMap<u32, u64>,
    /// Counters over the run.
    stats: Stats,
    /// Epoch writes begun.
    writes: u64,
    /// Tests only: abort the process during this write (after its data, before its progress
    /// record), from `RANKMYSTEPS_CRASH_AFTER_WRITES`.
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
        Ok(CassandraSink {
            runtime,
            session,
            prepared,
            job: job.to_owned(),
            max_in_flight: config.max_in_flight,
            retries: config.retries,
            epoch: None,
            last_timestamp: 0,
            watermark: None,
            positions: BTreeMap::new(),
            stats: Stats::default(),
            writes: 0,
            crash_after_writes: std::env::var("RANKMYSTEPS_CRASH_AFTER_WRITES")
                .ok()
                .and_then(|v| v.parse().ok()),
        })
    }

    /// Continues from a progress record read back after a restart: the watermark, positions and
    /// counters start from it, so the next progress record stays cumulative.
    pub fn resume(&mut self, progress: &Progress) {
        self.watermark = progress.watermark_micros;
        self.positions = progress
            .positions
            .iter()
            .map(|p| (p.partition, p.next))
            .collect();
        self.stats = Stats::from(&progress.stats);
    }

    /// A client timestamp for the next epoch: wall clock in microseconds, but always after the
    /// previous epoch's (a clock step back must not let an old value win).
    fn next_timestamp(&mut self) -> i64 {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX));
        self.last_timestamp = now.max(self.last_timestamp + 1);
        self.last_timestamp
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

    /// Executes a batch of writes of one kind to one partition (with retries).
    async fn write_batch(&self, writes: &[Write], ts: i64) -> Result<(), SinkError> {
        let p = &self.prepared;
        let statement = match writes[0] {
            Write::ListingInsert { .. } => &p.listing_insert,
            Write::ListingDelete { .. } => &p.listing_delete,
            Write::HistogramUpsert { .. } => &p.histogram_upsert,
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
            _ => run!(writes
                .iter()
                .filter_map(|w| match *w {
                    Write::HistogramDelete { day, steps } => Some((ts, day_to_cql(day), steps)),
                    _ => None,
                })
                .collect()),
        }
    }

    /// Sets `days.epoch` and `days.final` of one day (with retries).
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
        .await
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

    /// Writes the progress record, or with `intent` the intent record (with retries).
    async fn write_progress(
        &self,
        intent: bool,
        epoch: i64,
        ts: i64,
        watermark: Option<Micros>,
        positions: &BTreeMap<u32, u64>,
        stats: &Stats,
    ) -> Result<(), SinkError> {
        let positions = positions
            .iter()
            .map(|(&partition, &next)| {
                let partition = i32::try_from(partition).map_err(|_| {
                    SinkError::cassandra("encoding positions", format!("partition {partition}"))
                })?;
                Ok((partition, to_bigint(next)?))
            })
            .collect::<Result<BTreeMap<i32, i64>, SinkError>>()?;
        let stats = stats_map(stats)?;
        let job = if intent {
            intent_key(&self.job)
        } else {
            self.job.clone()
        };
        let values = (&job, epoch, watermark, &positions, &stats, ts);
        let what = if intent {
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

impl Sink for CassandraSink {
    fn write_epoch(&mut self, output: &EpochOutput) -> Result<(), SinkError> {
        if let Some(last) = self.epoch.filter(|&last| output.epoch <= last) {
            return Err(SinkError::OutOfOrder {
                epoch: output.epoch,
                last,
            });
        }
        let started = Instant::now();
        let mut plan = plan(output)?;
        let epoch = i64::try_from(output.epoch)
            .map_err(|_| SinkError::cassandra("encoding the epoch", output.epoch.to_string()))?;
        let ts = self.next_timestamp();
        // The counters and positions the progress record will claim; committed to `self` only
        // once every write of the epoch succeeded.
        let mut stats = self.stats;
        stats.add(&output.stats);
        let watermark = self.watermark.max(output.watermark);
        let mut positions = self.positions.clone();
        positions.extend(output.positions.iter().map(|p| (p.partition, p.next)));

        self.writes += 1;
        let crash = self.crash_after_writes == Some(self.writes);
        let this = &*self;
        self.runtime.block_on(async {
            // First: the intent record says which epoch the writes below belong to, so that a
            // restart knows which epoch may be half written (see [`intent_key`]).
            this.write_progress(true, epoch, ts, watermark, &positions, &stats)
                .await?;
            let units = units(&mut plan.data);
            this.run_all(units, |unit| async move {
                match unit {
                    Unit::One(w) => this.write_one(w, ts).await,
                    Unit::Batch(ws) => this.write_batch(ws, ts).await,
                }
            })
            .await?;
            if crash {
                // Fault injection for the restart tests: die with the epoch half written,
                // after a pause as long as a slow write's, in which the job goes on consuming
                // and archiving later epochs.
                tracing::error!(
                    epoch,
                    "RANKMYSTEPS_CRASH_AFTER_WRITES reached: aborting in 1 s"
                );
                std::thread::sleep(std::time::Duration::from_secs(1));
                std::process::abort();
            }
            this.run_all(plan.marks.iter().copied(), |m| {
                this.write_mark(m, epoch, ts)
            })
            .await?;
            // Last: the progress record vouches for everything above.
            this.write_progress(false, epoch, ts, watermark, &positions, &stats)
                .await
        })?;
        self.stats = stats;
        self.watermark = watermark;
        self.positions = positions;
        self.epoch = Some(output.epoch);
        debug!(
            epoch = output.epoch,
            writes = plan.data.len(),
            days = plan.marks.len(),
            closed = output.closed.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "cassandra sink epoch"
        );
        for day in &output.closed {
            info!(day = %rankmysteps_dataflow::event::format_day(*day), "day final in cassandra");
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<(), SinkError> {
        // Every epoch is durable when `write_epoch` returns: nothing is pending.
        Ok(())
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
                (1, Some("upserting a total")),
                (1, None), // listing inserts of day 1
                (1, None), // listing inserts of day 2
                (1, None), // listing deletes of day 2
                (BATCH_ROWS, None),
                (1, None),
            ]
        );
    }
}
