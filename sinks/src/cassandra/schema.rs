//! The schema (`schema.cql`) and the text of every statement the sink and readers prepare.

use scylla::client::session::Session;
use tracing::info;

use super::config::CassandraConfig;
use super::session::{connect_session, Runtime};
use crate::SinkError;

/// The schema, with `{keyspace}` and `{replication}` placeholders.
pub const SCHEMA_CQL: &str = include_str!("schema.cql");

/// The schema's statements for `keyspace` and the CQL `replication` map, in order, without
/// comments or the trailing `;`.
pub fn statements(keyspace: &str, replication: &str) -> Vec<String> {
    let text: String = SCHEMA_CQL
        .lines()
        .filter(|line| !line.trim_start().starts_with("--"))
        .map(|line| format!("{line}\n"))
        .collect();
    text.split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.replace("{keyspace}", keyspace)
                .replace("{replication}", replication)
        })
        .collect()
}

/// Creates the keyspace and tables of `config` if they do not exist (idempotent).
pub fn apply(config: &CassandraConfig) -> Result<(), SinkError> {
    config.validate()?;
    let runtime = Runtime::new()?;
    runtime.block_on(async {
        let session = connect_session(config).await?;
        apply_with(&session, config).await
    })
}

/// [`apply`] on an existing session.
pub(crate) async fn apply_with(
    session: &Session,
    config: &CassandraConfig,
) -> Result<(), SinkError> {
    for statement in statements(&config.keyspace, &config.replication_cql()) {
        // DDL is rare and not prepared; the driver waits for schema agreement after each one,
        // so the next statement (and the sink's prepares) see the new tables.
        session
            .query_unpaged(statement.as_str(), &[])
            .await
            .map_err(|e| {
                SinkError::cassandra("applying the schema", format!("{e}: {statement}"))
            })?;
    }
    info!(keyspace = %config.keyspace, "cassandra schema applied");
    Ok(())
}

/// The text of every prepared statement, for one keyspace. Writes carry `USING TIMESTAMP ?`: the
/// sink gives every write of an epoch the same client timestamp, later epochs larger ones, so a
/// late retry of an older epoch can never overwrite a newer value (see `sink.rs`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cql {
    /// Upsert a user's total of a day: `(user, day, steps, timestamp)`.
    pub total_upsert: String,
    /// Delete a user's total of a day: `(timestamp, user, day)`.
    pub total_delete: String,
    /// Insert a listing row: `(day, steps, user key, timestamp)`.
    pub listing_insert: String,
    /// Delete a listing row: `(timestamp, day, steps, user key)`.
    pub listing_delete: String,
    /// Upsert a top-k row: `(day, position, rank, user, steps, timestamp)`.
    pub top_upsert: String,
    /// Delete a top-k row: `(timestamp, day, position)`.
    pub top_delete: String,
    /// Upsert a histogram count: `(day, steps, users, timestamp)`.
    pub histogram_upsert: String,
    /// Delete a histogram count: `(timestamp, day, steps)`.
    pub histogram_delete: String,
    /// Set a day's number of ranked users: `(timestamp, users, day)`.
    pub day_users: String,
    /// Clear a day's number of ranked users: `(timestamp, day)`.
    pub day_users_delete: String,
    /// Mark a day changed by an epoch, and whether it is final: `(timestamp, epoch, final, day)`.
    pub day_mark: String,
    /// Write the progress record: `(job, epoch, watermark, positions, stats, timestamp)`.
    pub progress_upsert: String,
    /// List a day (bucket `'all'`), and whether it is final: `(day, final, timestamp)`.
    pub day_list_upsert: String,
    /// Read a day's top-k rows: `(day, limit)` → `(position, rank, user, steps)`.
    pub top_select: String,
    /// Read a day's row: `(day)` → `(users, final)`.
    pub day_select: String,
    /// Read a user's total of a day: `(user, day)` → `(steps)`.
    pub total_select: String,
    /// Read a user's history: `(user)` → `(day, steps)`, most recent first.
    pub history_select: String,
    /// Users with a greater total: `(day, steps)` → `(sum(users))`.
    pub users_above: String,
    /// All ranked users of a day (fallback when `days.users` is missing): `(day)` → `(sum(users))`.
    pub users_all: String,
    /// The nearest greater total: `(day, steps)` → `(steps)`.
    pub next_above: String,
    /// The nearest smaller total: `(day, steps)` → `(steps)`.
    pub next_below: String,
    /// Histogram rows with `lo < steps <= hi`: `(day, lo, hi)` → `(steps, users)`.
    pub histogram_range: String,
    /// Tied users before a user, nearest first: `(day, steps, user key, limit)` → `(steps, user)`.
    pub listing_tied_before: String,
    /// Users with a greater total, nearest first: `(day, steps, limit)` → `(steps, user)`.
    pub listing_above: String,
    /// Tied users after a user, nearest first: `(day, steps, user key, limit)` → `(steps, user)`.
    pub listing_tied_after: String,
    /// Users with a smaller total, nearest first: `(day, steps, limit)` → `(steps, user)`.
    pub listing_below: String,
    /// The first users in listing order: `(day, limit)` → `(steps, user)`.
    pub listing_first: String,
    /// Read the progress record: `(job)` → `(epoch, watermark, positions, stats)`.
    pub progress_select: String,
    /// Read a progress row's epoch and when it was written: `(job)` → `(epoch, writetime)`.
    pub progress_epoch: String,
    /// Read the list of days: `()` → `(day, final)`, ascending (one partition).
    pub day_list_select: String,
    /// Read a day's whole histogram: `(day)` → `(steps, users)`, total descending.
    pub histogram_all: String,
}

impl Cql {
    /// The statements for `keyspace` (a validated identifier).
    pub fn new(keyspace: &str) -> Cql {
        let k = keyspace;
        Cql {
            total_upsert: format!(
                "INSERT INTO {k}.totals_by_user (user, day, steps) VALUES (?, ?, ?) USING TIMESTAMP ?"
            ),
            total_delete: format!(
                "DELETE FROM {k}.totals_by_user USING TIMESTAMP ? WHERE user = ? AND day = ?"
            ),
            listing_insert: format!(
                "INSERT INTO {k}.users_by_total (day, steps, user) VALUES (?, ?, ?) USING TIMESTAMP ?"
            ),
            listing_delete: format!(
                "DELETE FROM {k}.users_by_total USING TIMESTAMP ? WHERE day = ? AND steps = ? AND user = ?"
            ),
            top_upsert: format!(
                "INSERT INTO {k}.top_by_day (day, position, rank, user, steps) VALUES (?, ?, ?, ?, ?) USING TIMESTAMP ?"
            ),
            top_delete: format!(
                "DELETE FROM {k}.top_by_day USING TIMESTAMP ? WHERE day = ? AND position = ?"
            ),
            histogram_upsert: format!(
                "INSERT INTO {k}.histogram_by_day (day, steps, users) VALUES (?, ?, ?) USING TIMESTAMP ?"
            ),
            histogram_delete: format!(
                "DELETE FROM {k}.histogram_by_day USING TIMESTAMP ? WHERE day = ? AND steps = ?"
            ),
            day_users: format!("UPDATE {k}.days USING TIMESTAMP ? SET users = ? WHERE day = ?"),
            day_users_delete: format!("DELETE users FROM {k}.days USING TIMESTAMP ? WHERE day = ?"),
            day_mark: format!(
                "UPDATE {k}.days USING TIMESTAMP ? SET epoch = ?, final = ? WHERE day = ?"
            ),
            progress_upsert: format!(
                "INSERT INTO {k}.progress (job, epoch, watermark, positions, stats) VALUES (?, ?, ?, ?, ?) USING TIMESTAMP ?"
            ),
            top_select: format!(
                "SELECT position, rank, user, steps FROM {k}.top_by_day WHERE day = ? LIMIT ?"
            ),
            day_select: format!("SELECT users, final FROM {k}.days WHERE day = ?"),
            total_select: format!(
                "SELECT steps FROM {k}.totals_by_user WHERE user = ? AND day = ?"
            ),
            history_select: format!("SELECT day, steps FROM {k}.totals_by_user WHERE user = ?"),
            users_above: format!(
                "SELECT sum(users) FROM {k}.histogram_by_day WHERE day = ? AND steps > ?"
            ),
            users_all: format!("SELECT sum(users) FROM {k}.histogram_by_day WHERE day = ?"),
            next_above: format!(
                "SELECT steps FROM {k}.histogram_by_day WHERE day = ? AND steps > ? ORDER BY steps ASC LIMIT 1"
            ),
            next_below: format!(
                "SELECT steps FROM {k}.histogram_by_day WHERE day = ? AND steps < ? LIMIT 1"
            ),
            histogram_range: format!(
                "SELECT steps, users FROM {k}.histogram_by_day WHERE day = ? AND steps > ? AND steps <= ?"
            ),
            listing_tied_before: format!(
                "SELECT steps, user FROM {k}.users_by_total WHERE day = ? AND steps = ? AND user < ? ORDER BY steps ASC, user DESC LIMIT ?"
            ),
            listing_above: format!(
                "SELECT steps, user FROM {k}.users_by_total WHERE day = ? AND steps > ? ORDER BY steps ASC, user DESC LIMIT ?"
            ),
            listing_tied_after: format!(
                "SELECT steps, user FROM {k}.users_by_total WHERE day = ? AND steps = ? AND user > ? LIMIT ?"
            ),
            listing_below: format!(
                "SELECT steps, user FROM {k}.users_by_total WHERE day = ? AND steps < ? LIMIT ?"
            ),
            listing_first: format!("SELECT steps, user FROM {k}.users_by_total WHERE day = ? LIMIT ?"),
            progress_select: format!(
                "SELECT epoch, watermark, positions, stats FROM {k}.progress WHERE job = ?"
            ),
            progress_epoch: format!(
                "SELECT epoch, WRITETIME(epoch) FROM {k}.progress WHERE job = ?"
            ),
            day_list_upsert: format!(
                "INSERT INTO {k}.day_list (bucket, day, final) VALUES ('all', ?, ?) USING TIMESTAMP ?"
            ),
            day_list_select: format!(
                "SELECT day, final FROM {k}.day_list WHERE bucket = 'all'"
            ),
            histogram_all: format!("SELECT steps, users FROM {k}.histogram_by_day WHERE day = ?"),
        }
    }
}
