//! The Cassandra sink and readers (design §4, §5).
//!
//! - `schema.cql` ([`schema::SCHEMA_CQL`]): the keyspace and tables, applied by
//!   [`schema::apply`] (the `schema` command); every app query is a single-partition read.
//! - [`CassandraSink`]: writes each completed epoch as idempotent upserts and deletes of
//!   absolute values (prepared statements, bounded concurrency, retries), then the progress
//!   record.
//! - [`CassandraReader`]: the app's queries: a day's top-k, a user's total, history and
//!   standing (rank, gaps, neighbours), the progress record.
//! - [`CassandraConfig`]: the `[cassandra]` section of `cluster.toml`.

mod codec;
mod config;
mod generation;
pub mod plan;
pub mod probe;
mod read;
pub mod schema;
mod session;
mod sink;
#[cfg(test)]
mod tests;

pub use codec::{
    day_from_cql, day_to_cql, user_from_key, user_from_uuid, user_to_key, user_to_uuid,
};
pub use config::{parse_consistency, CassandraConfig};
pub use generation::{fence_timestamp, MAX_GENERATION};
pub use read::{stats_from_map, CassandraReader};
pub use sink::{intent_key, process_progress_key, stats_map, CassandraSink};
