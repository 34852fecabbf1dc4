//! What `rankmysteps doctor` asks of a Cassandra cluster: is it reachable with the configured
//! credentials, does the keyspace exist with the tables and columns of `schema.cql`, and does
//! a read at the configured consistency level succeed.
//!
//! Only facts: what they mean for the user (and how to fix them) is the doctor's business.

use std::collections::BTreeMap;

use scylla::client::session::Session;
use scylla::statement::unprepared::Statement;
use scylla::statement::Consistency;

use super::config::CassandraConfig;
use super::schema::statements;
use super::session::{connect_session, Runtime};
use crate::SinkError;

/// Columns of a table: name → CQL type as `system_schema.columns` spells it (`bigint`,
/// `map<int, bigint>`).
pub type Columns = BTreeMap<String, String>;

/// What a Cassandra cluster said.
#[derive(Debug)]
pub struct Probe {
    /// `release_version` of the node answering.
    pub release_version: String,
    /// The keyspace's replication map, `None` if the keyspace does not exist.
    pub replication: Option<BTreeMap<String, String>>,
    /// The keyspace's tables and their columns.
    pub tables: BTreeMap<String, Columns>,
    /// A single-partition read of the keyspace's `progress` table at the configured
    /// consistency level (`None` when there is no such table).
    pub consistency_read: Option<Result<(), SinkError>>,
}

/// The tables and columns that `schema.cql` creates.
pub fn expected_tables() -> BTreeMap<String, Columns> {
    let mut tables = BTreeMap::new();
    for statement in statements("ks", "{}") {
        let Some(rest) = statement.strip_prefix("CREATE TABLE IF NOT EXISTS ks.") else {
            continue;
        };
        let Some((name, body)) = rest.split_once('(') else {
            continue;
        };
        let mut columns = Columns::new();
        for line in body.lines() {
            let line = line.trim().trim_end_matches(',');
            if line.is_empty() || line.starts_with("PRIMARY KEY") || line.starts_with(')') {
                continue;
            }
            if let Some((column, ty)) = line.split_once(char::is_whitespace) {
                // `job text PRIMARY KEY`: the type without the inline key declaration.
                let ty = ty.trim().trim_end_matches("PRIMARY KEY").trim();
                columns.insert(column.to_owned(), ty.to_owned());
            }
        }
        tables.insert(name.trim().to_owned(), columns);
    }
    tables
}

/// Connects with `config` and reads what [`Probe`] holds. An error means the cluster could
/// not be reached (or refused the credentials, or the credentials' variables are missing).
pub fn probe(config: &CassandraConfig) -> Result<Probe, SinkError> {
    config.validate()?;
    let runtime = Runtime::new()?;
    runtime.block_on(async {
        let session = connect_session(config).await?;
        probe_with(&session, config).await
    })
}

/// Runs `query` at `consistency` (the session's, the configured one, when `None`).
async fn rows<R>(
    session: &Session,
    what: &str,
    query: &str,
    consistency: Option<Consistency>,
    values: impl scylla::serialize::row::SerializeRow,
) -> Result<Vec<R>, SinkError>
where
    R: for<'f> scylla::deserialize::row::DeserializeRow<'f, 'f>,
{
    let err = |e: String| SinkError::cassandra(what, e);
    let mut statement = Statement::new(query);
    if let Some(c) = consistency {
        statement.set_consistency(c);
    }
    session
        .query_unpaged(statement, values)
        .await
        .map_err(|e| err(e.to_string()))?
        .into_rows_result()
        .map_err(|e| err(e.to_string()))?
        .rows::<R>()
        .map_err(|e| err(e.to_string()))?
        .collect::<Result<Vec<R>, _>>()
        .map_err(|e| err(e.to_string()))
}

/// The system tables are local to each node: read them at `ONE`, whatever level is
/// configured (a level the cluster cannot reach is the consistency check's finding, not a
/// reason to leave the others out).
const LOCAL: Option<Consistency> = Some(Consistency::One);

async fn probe_with(session: &Session, config: &CassandraConfig) -> Result<Probe, SinkError> {
    let keyspace = config.keyspace.as_str();
    let version: Vec<(String,)> = rows(
        session,
        "reading the release version",
        "SELECT release_version FROM system.local",
        LOCAL,
        (),
    )
    .await?;
    let replication: Vec<(BTreeMap<String, String>,)> = rows(
        session,
        "reading the keyspace",
        "SELECT replication FROM system_schema.keyspaces WHERE keyspace_name = ?",
        LOCAL,
        (keyspace,),
    )
    .await?;
    let columns: Vec<(String, String, String)> = rows(
        session,
        "reading the tables",
        "SELECT table_name, column_name, type FROM system_schema.columns WHERE keyspace_name = ?",
        LOCAL,
        (keyspace,),
    )
    .await?;
    let mut tables: BTreeMap<String, Columns> = BTreeMap::new();
    for (table, column, ty) in columns {
        tables.entry(table).or_default().insert(column, ty);
    }
    // A single-partition read of the progress table (which every worker reads at start) at
    // the configured consistency: Cassandra answers `Unavailable` when too few replicas are up.
    let consistency_read = if tables.contains_key("progress") {
        let read: Result<Vec<(String,)>, SinkError> = rows(
            session,
            &format!(
                "reading {keyspace}.progress at consistency {}",
                config.consistency
            ),
            &format!("SELECT job FROM {keyspace}.progress WHERE job = ?"),
            None,
            ("rankmysteps-doctor",),
        )
        .await;
        Some(read.map(|_| ()))
    } else {
        None
    };
    Ok(Probe {
        release_version: version.into_iter().next().map(|v| v.0).unwrap_or_default(),
        replication: replication.into_iter().next().map(|r| r.0),
        tables,
        consistency_read,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_expected_tables_are_those_of_schema_cql() {
        let tables = expected_tables();
        assert!(tables.len() >= 6, "{tables:?}");
        let progress = &tables["progress"];
        assert_eq!(progress["positions"], "map<int, bigint>");
        assert_eq!(progress["job"], "text");
        let top = &tables["top_by_day"];
        assert_eq!(
            top.keys().map(String::as_str).collect::<Vec<_>>(),
            ["day", "position", "rank", "steps", "user"]
        );
        assert_eq!(top["user"], "uuid");
    }
}
