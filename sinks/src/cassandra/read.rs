//! [`CassandraReader`]: the app's queries (design §5), behind `rankmysteps top` and
//! `rankmysteps standing` given a cluster config. Every query is a single-partition read with a
//! small bound.
//!
//! Reads are not a snapshot: a live sink may apply an epoch between two reads of one call.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use rankmysteps_dataflow::event::{format_day, format_micros, Day, Epoch, User};
use rankmysteps_dataflow::output::{Position, Stats};
use rankmysteps_dataflow::ranking::{rank_prefix, Standing};
use scylla::client::session::Session;
use scylla::deserialize::row::DeserializeRow;
use scylla::response::query_result::QueryResult;
use scylla::serialize::row::SerializeRow;
use scylla::statement::prepared::PreparedStatement;
use scylla::value::CqlDate;
use uuid::Uuid;

use super::codec::{
    day_from_cql, day_to_cql, from_bigint, to_bigint, user_from_key, user_from_uuid, user_to_key,
    user_to_uuid,
};
use super::config::CassandraConfig;
use super::schema::Cql;
use super::session::{connect_session, with_retries, Runtime};
use super::sink::prepare;
use crate::local::{Progress, StatsFile, TopEntry, TopFile};
use crate::SinkError;

/// The read statements, prepared once.
struct Prepared {
    top_select: PreparedStatement,
    day_select: PreparedStatement,
    total_select: PreparedStatement,
    history_select: PreparedStatement,
    users_above: PreparedStatement,
    users_all: PreparedStatement,
    next_above: PreparedStatement,
    next_below: PreparedStatement,
    histogram_range: PreparedStatement,
    listing_tied_before: PreparedStatement,
    listing_above: PreparedStatement,
    listing_tied_after: PreparedStatement,
    listing_below: PreparedStatement,
    listing_first: PreparedStatement,
    progress_select: PreparedStatement,
    day_list_select: PreparedStatement,
    histogram_all: PreparedStatement,
}

/// Reads the tables written by a [`super::CassandraSink`].
pub struct CassandraReader {
    runtime: Runtime,
    session: Session,
    prepared: Prepared,
    keyspace: String,
    retries: u32,
    /// CQL requests executed (each attempt of a read counts once).
    queries: AtomicU64,
}

/// A `LIMIT` bind value (CQL `int`, positive).
fn limit(n: usize) -> i32 {
    i32::try_from(n.max(1)).unwrap_or(i32::MAX)
}

fn decode_err(what: &str) -> impl Fn(String) -> SinkError + '_ {
    move |detail| SinkError::cassandra(what, detail)
}

impl CassandraReader {
    /// Connects and prepares the read statements of `config`'s keyspace.
    pub fn connect(config: &CassandraConfig) -> Result<CassandraReader, SinkError> {
        config.validate()?;
        let runtime = Runtime::new()?;
        let (session, prepared) = runtime.block_on(async {
            let session = connect_session(config).await?;
            let cql = Cql::new(&config.keyspace);
            let s = &session;
            let prepared = Prepared {
                top_select: prepare(s, &cql.top_select).await?,
                day_select: prepare(s, &cql.day_select).await?,
                total_select: prepare(s, &cql.total_select).await?,
                history_select: prepare(s, &cql.history_select).await?,
                users_above: prepare(s, &cql.users_above).await?,
                users_all: prepare(s, &cql.users_all).await?,
                next_above: prepare(s, &cql.next_above).await?,
                next_below: prepare(s, &cql.next_below).await?,
                histogram_range: prepare(s, &cql.histogram_range).await?,
                listing_tied_before: prepare(s, &cql.listing_tied_before).await?,
                listing_above: prepare(s, &cql.listing_above).await?,
                listing_tied_after: prepare(s, &cql.listing_tied_after).await?,
                listing_below: prepare(s, &cql.listing_below).await?,
                listing_first: prepare(s, &cql.listing_first).await?,
                progress_select: prepare(s, &cql.progress_select).await?,
                day_list_select: prepare(s, &cql.day_list_select).await?,
                histogram_all: prepare(s, &cql.histogram_all).await?,
            };
            Ok::<_, SinkError>((session, prepared))
        })?;
        Ok(CassandraReader {
            runtime,
            session,
            prepared,
            keyspace: config.keyspace.clone(),
            retries: config.retries,
            queries: AtomicU64::new(0),
        })
    }

    /// The keyspace read.
    pub fn keyspace(&self) -> &str {
        &self.keyspace
    }

    /// The driver's session.
    pub(super) fn session(&self) -> &Session {
        &self.session
    }

    /// Runs `future` on the reader's runtime.
    pub(super) fn block_on<F: std::future::Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }

    /// How many CQL requests this reader has executed (retries included).
    pub fn queries(&self) -> u64 {
        self.queries.load(Ordering::Relaxed)
    }

    /// Every day listed in `day_list` (one partition), ascending, with whether it is final.
    pub fn days(&self) -> Result<Vec<(Day, bool)>, SinkError> {
        self.runtime.block_on(async {
            let rows: Vec<(CqlDate, Option<bool>)> = self
                .rows(
                    "reading the list of days",
                    &self.prepared.day_list_select,
                    (),
                )
                .await?;
            Ok(rows
                .into_iter()
                .map(|(day, is_final)| (day_from_cql(day), is_final.unwrap_or(false)))
                .collect())
        })
    }

    /// `day`'s whole histogram of totals, `(total, number of users)`, total descending (one
    /// partition: a row per distinct total of the day).
    pub fn histogram(&self, day: Day) -> Result<Vec<(u64, u64)>, SinkError> {
        self.runtime.block_on(async {
            let rows: Vec<(i64, Option<i64>)> = self
                .rows(
                    "reading the histogram",
                    &self.prepared.histogram_all,
                    (day_to_cql(day),),
                )
                .await?;
            rows.into_iter()
                .map(|(t, c)| Ok((from_bigint(t)?, from_bigint(c.unwrap_or(0))?)))
                .collect()
        })
    }

    /// Executes a read (with retries) and deserializes every row.
    async fn rows<R>(
        &self,
        what: &str,
        statement: &PreparedStatement,
        values: impl SerializeRow,
    ) -> Result<Vec<R>, SinkError>
    where
        R: for<'f> DeserializeRow<'f, 'f>,
    {
        let result: QueryResult = with_retries(self.retries, what, || {
            self.queries.fetch_add(1, Ordering::Relaxed);
            self.session.execute_unpaged(statement, &values)
        })
        .await?;
        let rows = result
            .into_rows_result()
            .map_err(|e| SinkError::cassandra(what, e.to_string()))?;
        let rows = rows
            .rows::<R>()
            .map_err(|e| SinkError::cassandra(what, e.to_string()))?
            .collect::<Result<Vec<R>, _>>()
            .map_err(|e| SinkError::cassandra(what, e.to_string()));
        rows
    }

    /// The `days` row of `day`: `(users, final)`, `None` if the day has no row.
    async fn day_row(&self, day: Day) -> Result<Option<(Option<u64>, bool)>, SinkError> {
        let rows: Vec<(Option<i64>, Option<bool>)> = self
            .rows(
                "reading a day",
                &self.prepared.day_select,
                (day_to_cql(day),),
            )
            .await?;
        rows.into_iter()
            .next()
            .map(|(users, is_final)| {
                Ok((
                    users.map(from_bigint).transpose()?,
                    is_final.unwrap_or(false),
                ))
            })
            .transpose()
    }

    /// The first `k` rows of `day`'s top-k (all stored rows with `None`), with the day's number
    /// of users and finality, as the local directory's `top.json` (so the CLI prints both alike).
    ///
    /// When `k` exceeds the stored rows and the day has more users, the rows come from
    /// `users_by_total` (its first `k` rows, ranked by [`rank_prefix`]).
    pub fn top(&self, day: Day, k: Option<usize>) -> Result<TopFile, SinkError> {
        self.runtime.block_on(async {
            let day_row = self.day_row(day).await?;
            let rows: Vec<(i32, i32, Uuid, i64)> = self
                .rows(
                    "reading the top-k",
                    &self.prepared.top_select,
                    (day_to_cql(day), limit(k.unwrap_or(i32::MAX as usize))),
                )
                .await?;
            if day_row.is_none() && rows.is_empty() {
                return Err(SinkError::NotFound {
                    what: format!(
                        "output for day {} in keyspace {}",
                        format_day(day),
                        self.keyspace
                    ),
                });
            }
            let (users, is_final) = day_row.unwrap_or((None, false));
            let users = users.unwrap_or(rows.len() as u64);
            let mut top = rows
                .into_iter()
                .map(|(_, rank, user, steps)| {
                    Ok(TopEntry {
                        rank: u64::try_from(rank)
                            .map_err(|e| SinkError::cassandra("decoding a rank", e.to_string()))?,
                        user: rankmysteps_dataflow::event::format_user(user_from_uuid(user)),
                        steps: from_bigint(steps)?,
                    })
                })
                .collect::<Result<Vec<TopEntry>, SinkError>>()?;
            if let Some(k) = k.filter(|&k| k > top.len() && users > top.len() as u64) {
                let listing = self.listing_first(day, k).await?;
                top = rank_prefix(listing, k).iter().map(TopEntry::from).collect();
            }
            Ok(TopFile {
                day: format_day(day),
                is_final,
                users,
                top,
            })
        })
    }

    /// The first `k` users of `day` in listing order, from `users_by_total`.
    async fn listing_first(&self, day: Day, k: usize) -> Result<Vec<(User, u64)>, SinkError> {
        let rows: Vec<(i64, Vec<u8>)> = self
            .rows(
                "reading the listing",
                &self.prepared.listing_first,
                (day_to_cql(day), limit(k)),
            )
            .await?;
        decode_listing(rows)
    }

    /// Every row of `day`'s `users_by_total` (listing order: `(user, total)`) and
    /// `histogram_by_day` (total descending: `(total, users)`). Whole-partition reads, for
    /// checks and exports, not a serving query: `limit` bounds the listing.
    pub fn day_rows(
        &self,
        day: Day,
        limit: usize,
    ) -> Result<(Vec<(User, u64)>, Vec<(u64, u64)>), SinkError> {
        self.runtime.block_on(async {
            let listing = self.listing_first(day, limit).await?;
            let rows: Vec<(i64, Option<i64>)> = self
                .rows(
                    "reading the histogram",
                    &self.prepared.histogram_range,
                    (day_to_cql(day), -1i64, i64::MAX),
                )
                .await?;
            let histogram = rows
                .into_iter()
                .map(|(t, c)| Ok((from_bigint(t)?, from_bigint(c.unwrap_or(0))?)))
                .collect::<Result<_, SinkError>>()?;
            Ok((listing, histogram))
        })
    }

    /// `user`'s total on `day`, if any.
    pub fn total(&self, day: Day, user: User) -> Result<Option<u64>, SinkError> {
        self.runtime.block_on(self.total_async(day, user))
    }

    async fn total_async(&self, day: Day, user: User) -> Result<Option<u64>, SinkError> {
        let rows: Vec<(Option<i64>,)> = self
            .rows(
                "reading a total",
                &self.prepared.total_select,
                (user_to_uuid(user), day_to_cql(day)),
            )
            .await?;
        rows.into_iter()
            .next()
            .and_then(|(steps,)| steps)
            .map(from_bigint)
            .transpose()
    }

    /// Every day `user` has a total, with it, most recent first.
    pub fn user_history(&self, user: User) -> Result<Vec<(Day, u64)>, SinkError> {
        self.runtime.block_on(async {
            let rows: Vec<(CqlDate, Option<i64>)> = self
                .rows(
                    "reading a user's history",
                    &self.prepared.history_select,
                    (user_to_uuid(user),),
                )
                .await?;
            rows.into_iter()
                .filter_map(|(day, steps)| steps.map(|s| (day, s)))
                .map(|(day, steps)| Ok((day_from_cql(day), from_bigint(steps)?)))
                .collect()
        })
    }

    /// `user`'s standing on `day` with up to `neighbours` users on each side, and whether the
    /// day is final; `None` when the user has no total that day.
    ///
    /// Reads (all in the day's or the user's partition): the user's total; the `days` row;
    /// rank = 1 + `sum(users)` of the histogram above the total; the nearest histogram totals
    /// above and below (gaps); the neighbours from `users_by_total` (ties first, then strictly
    /// above / below, `LIMIT n` each); and the histogram rows between the farthest neighbours'
    /// totals, which give every neighbour's rank from the user's.
    pub fn standing(
        &self,
        day: Day,
        user: User,
        neighbours: usize,
    ) -> Result<Option<(Standing, bool)>, SinkError> {
        self.runtime.block_on(async {
            let Some(steps) = self.total_async(day, user).await? else {
                return Ok(None);
            };
            let d = day_to_cql(day);
            let s = to_bigint(steps)?;
            let p = &self.prepared;
            let (users, is_final) = self.day_row(day).await?.unwrap_or((None, false));
            let sum = |rows: Vec<(Option<i64>,)>| -> Result<u64, SinkError> {
                rows.into_iter()
                    .next()
                    .and_then(|(x,)| x)
                    .map_or(Ok(0), from_bigint)
            };
            let above_count = sum(self.rows("ranking", &p.users_above, (d, s)).await?)?;
            let users = match users {
                Some(users) => users,
                None => sum(self.rows("counting users", &p.users_all, (d,)).await?)?,
            };
            let rank = above_count + 1;
            let nearest = |rows: Vec<(i64,)>| -> Result<Option<u64>, SinkError> {
                rows.into_iter()
                    .next()
                    .map(|(x,)| from_bigint(x))
                    .transpose()
            };
            let gap_up =
                nearest(self.rows("gap up", &p.next_above, (d, s)).await?)?.map(|t| t - steps);
            let gap_down =
                nearest(self.rows("gap down", &p.next_below, (d, s)).await?)?.map(|t| steps - t);

            let mut standing = Standing {
                user,
                rank,
                steps,
                users,
                gap_up,
                gap_down,
                above: Vec::new(),
                below: Vec::new(),
            };
            if neighbours == 0 {
                return Ok(Some((standing, is_final)));
            }
            let key = user_to_key(user);
            let n = neighbours;
            // Nearest first on both sides.
            let mut above = decode_listing(
                self.rows(
                    "neighbours above",
                    &p.listing_tied_before,
                    (d, s, key, limit(n)),
                )
                .await?,
            )?;
            if above.len() < n {
                let more = self
                    .rows(
                        "neighbours above",
                        &p.listing_above,
                        (d, s, limit(n - above.len())),
                    )
                    .await?;
                above.extend(decode_listing(more)?);
            }
            let mut below = decode_listing(
                self.rows(
                    "neighbours below",
                    &p.listing_tied_after,
                    (d, s, key, limit(n)),
                )
                .await?,
            )?;
            if below.len() < n {
                let more = self
                    .rows(
                        "neighbours below",
                        &p.listing_below,
                        (d, s, limit(n - below.len())),
                    )
                    .await?;
                below.extend(decode_listing(more)?);
            }
            above.truncate(n);
            below.truncate(n);

            // rank(t) = 1 + users above t. From the user's own count: for t > steps subtract the
            // users with totals in (steps, t]; for t < steps add those in (t, steps]. One range
            // read covers both: every total between the farthest neighbours belongs to a
            // neighbour (they are contiguous in listing order), so it has at most 2n + 1 rows.
            let lo = below.last().map_or(steps, |&(_, t)| t);
            let hi = above.last().map_or(steps, |&(_, t)| t);
            let histogram: BTreeMap<u64, u64> = if lo < hi {
                let rows: Vec<(i64, Option<i64>)> = self
                    .rows(
                        "ranking neighbours",
                        &p.histogram_range,
                        (d, to_bigint(lo)?, to_bigint(hi)?),
                    )
                    .await?;
                rows.into_iter()
                    .map(|(t, c)| Ok((from_bigint(t)?, from_bigint(c.unwrap_or(0))?)))
                    .collect::<Result<_, SinkError>>()?
            } else {
                BTreeMap::new()
            };
            let rank_of = |t: u64| -> u64 {
                if t > steps {
                    let between: u64 = histogram.range(steps + 1..=t).map(|(_, c)| c).sum();
                    (above_count + 1).saturating_sub(between)
                } else if t < steps {
                    let between: u64 = histogram.range(t + 1..=steps).map(|(_, c)| c).sum();
                    above_count + 1 + between
                } else {
                    rank
                }
            };
            // `Standing.above` is in listing order (nearest last).
            standing.above = above
                .iter()
                .rev()
                .map(|&(u, t)| (u, t, rank_of(t)))
                .collect();
            standing.below = below.iter().map(|&(u, t)| (u, t, rank_of(t))).collect();
            Ok(Some((standing, is_final)))
        })
    }

    /// The progress record of `job`, in the local directory's format; `None` if none was written.
    pub fn progress(&self, job: &str) -> Result<Option<Progress>, SinkError> {
        self.runtime.block_on(async {
            let rows: Vec<ProgressRow> = self
                .rows("reading progress", &self.prepared.progress_select, (job,))
                .await?;
            rows.into_iter().next().map(decode_progress).transpose()
        })
    }

    /// Every progress and intent record of `job`: its own row and every row under `<job>/`
    /// (the intent record, and in a cluster each process's, whatever the cluster's shape
    /// when they were written), by row key. The progress table holds a few rows per job: this
    /// reads it whole (one small scan, at a restart only).
    pub fn progress_under(&self, job: &str) -> Result<Vec<(String, Progress)>, SinkError> {
        let text = format!(
            "SELECT job, epoch, watermark, positions, stats FROM {}.progress",
            self.keyspace()
        );
        self.runtime.block_on(async {
            let statement = prepare(&self.session, &text).await?;
            let rows: Vec<(
                String,
                Option<i64>,
                Option<i64>,
                ProgressMaps,
                ProgressStats,
            )> = self
                .rows("reading the progress records", &statement, ())
                .await?;
            let under = format!("{job}/");
            rows.into_iter()
                .filter(|r| r.0 == job || r.0.starts_with(&under))
                .map(|(key, epoch, watermark, positions, stats)| {
                    Ok((key, decode_progress((epoch, watermark, positions, stats))?))
                })
                .collect()
        })
    }
}

/// A progress row's positions and stats columns.
type ProgressMaps = Option<BTreeMap<i32, i64>>;
type ProgressStats = Option<BTreeMap<String, i64>>;
/// A progress row: `(epoch, watermark, positions, stats)`.
type ProgressRow = (Option<i64>, Option<i64>, ProgressMaps, ProgressStats);

/// Decodes a progress row into the local directory's format.
fn decode_progress(
    (epoch, watermark, positions, stats): ProgressRow,
) -> Result<Progress, SinkError> {
    let bad = decode_err("decoding progress");
    let epoch: Epoch = from_bigint(epoch.ok_or_else(|| bad("no epoch".into()))?)?;
    let positions = positions
        .unwrap_or_default()
        .into_iter()
        .map(|(partition, next)| {
            Ok(Position {
                partition: u32::try_from(partition)
                    .map_err(|_| bad(format!("partition {partition}")))?,
                next: from_bigint(next)?,
            })
        })
        .collect::<Result<Vec<Position>, SinkError>>()?;
    let stats = stats_from_map(&stats.unwrap_or_default())?;
    Ok(Progress {
        epoch,
        watermark: watermark.map(format_micros),
        watermark_micros: watermark,
        positions,
        stats: StatsFile::from(&stats),
    })
}

/// Decodes `(steps, user key)` rows of `users_by_total` into `(user, total)`.
fn decode_listing(rows: Vec<(i64, Vec<u8>)>) -> Result<Vec<(User, u64)>, SinkError> {
    rows.into_iter()
        .map(|(steps, key)| Ok((user_from_key(&key)?, from_bigint(steps)?)))
        .collect()
}

/// The counters of a progress record's `stats` map (missing keys count 0).
pub fn stats_from_map(map: &BTreeMap<String, i64>) -> Result<Stats, SinkError> {
    let get = |key: &str| map.get(key).copied().map_or(Ok(0), from_bigint);
    let mut stats = Stats {
        accepted: get("accepted")?,
        duplicate: get("duplicate")?,
        rejected: [0; 6],
    };
    for reason in rankmysteps_dataflow::event::Reason::ALL {
        stats.rejected[reason.index()] = get(reason.code())?;
    }
    Ok(stats)
}
