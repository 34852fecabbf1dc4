//! The tokio runtime, session and retry loop shared by the sink and the readers.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::errors::{DbError, ExecutionError, RequestAttemptError};
use scylla::policies::retry::FallthroughRetryPolicy;
use tracing::debug;

use super::config::CassandraConfig;
use crate::SinkError;

/// First backoff after a retryable failure; doubled after each retry up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
/// Longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// A tokio runtime owned by a synchronous sink or reader.
///
/// Multi-threaded with two workers rather than current-thread: the driver's connection tasks
/// (heartbeats, metadata refresh) must keep running between epochs, while no one is blocked in
/// [`Runtime::block_on`].
pub(crate) struct Runtime(tokio::runtime::Runtime);

impl Runtime {
    pub(crate) fn new() -> Result<Runtime, SinkError> {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("cassandra")
            .enable_all()
            .build()
            .map(Runtime)
            .map_err(|e| SinkError::cassandra("starting the tokio runtime", e.to_string()))
    }

    pub(crate) fn block_on<F: Future>(&self, future: F) -> F::Output {
        self.0.block_on(future)
    }
}

/// Connects to the cluster of `config` (no keyspace selected: statements name it).
pub(crate) async fn connect_session(config: &CassandraConfig) -> Result<Session, SinkError> {
    let profile = ExecutionProfile::builder()
        .consistency(config.consistency()?)
        .request_timeout(Some(config.request_timeout()))
        // Retries are ours (`with_retries`), counted by `retries` and with backoff; the
        // driver's default policy would retry some errors again underneath.
        .retry_policy(Arc::new(FallthroughRetryPolicy))
        .build();
    let mut builder = SessionBuilder::new()
        .known_nodes(&config.contact_points)
        .default_execution_profile_handle(profile.into_handle());
    if let Some((user, password)) = config.credentials()? {
        builder = builder.user(user, password);
    }
    builder.build().await.map_err(|e| {
        SinkError::cassandra(
            "connecting",
            format!("{}: {e}", config.contact_points.join(", ")),
        )
    })
}

/// Whether a failed request may succeed if sent again: timeouts, too few replicas, overload,
/// broken connections. Anything else (a bad statement, a type mismatch) would fail again.
pub(crate) fn is_retryable(error: &ExecutionError) -> bool {
    match error {
        ExecutionError::RequestTimeout(_) | ExecutionError::ConnectionPoolError(_) => true,
        ExecutionError::LastAttemptError(attempt) => match attempt {
            RequestAttemptError::DbError(db, _) => matches!(
                db,
                DbError::Unavailable { .. }
                    | DbError::Overloaded
                    | DbError::IsBootstrapping
                    | DbError::ReadTimeout { .. }
                    | DbError::WriteTimeout { .. }
                    | DbError::ServerError
                    | DbError::RateLimitReached { .. }
            ),
            RequestAttemptError::BrokenConnectionError(_)
            | RequestAttemptError::UnableToAllocStreamId => true,
            _ => false,
        },
        _ => false,
    }
}

/// The wait before retry number `retry` (0-based): 50 ms, 100 ms, 200 ms, … capped at 5 s.
pub(crate) fn backoff(retry: u32) -> Duration {
    FIRST_BACKOFF
        .saturating_mul(1u32.checked_shl(retry).unwrap_or(u32::MAX))
        .min(MAX_BACKOFF)
}

/// Runs `attempt` until it succeeds, fails with an error that is not retryable, or has been
/// retried `retries` times; waits [`backoff`] between attempts.
pub(crate) async fn with_retries<T, F, Fut>(
    retries: u32,
    what: &str,
    mut attempt: F,
) -> Result<T, SinkError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ExecutionError>>,
{
    let mut retry = 0;
    loop {
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(e) if retry < retries && is_retryable(&e) => {
                debug!(what, retry, error = %e, "cassandra request failed, retrying");
                tokio::time::sleep(backoff(retry)).await;
                retry += 1;
            }
            Err(e) => {
                return Err(SinkError::cassandra(
                    what,
                    format!("{e} (after {retry} retries)"),
                ))
            }
        }
    }
}
