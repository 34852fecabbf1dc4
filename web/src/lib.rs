//! The RankMySteps web leaderboard (design §11): one page, its JSON API and live updates by
//! server-sent events, over the results of the sinks: the local output directory
//! ([`LocalStore`]) or Cassandra ([`CassandraStore`]).
//!
//! - [`Server`] runs [`router`] on a tokio runtime of its own; `rankmysteps serve` and
//!   `rankmysteps run --serve` start one.
//! - Routes: `/` (the page; `?day=YYYY-MM-DD&user=UUID`), `/api/days`,
//!   `/api/days/{day}/top?k=K`, `/api/days/{day}/standing/{user}?neighbours=N`,
//!   `/api/days/{day}/histogram`, `/api/users/{user}/history`, `/api/events?day=D&user=U`.
//!   Errors are JSON `{"error": "<code>", "detail": "..."}` ([`WebError`]).
//! - Live: one watcher ([`live::Hub`]) polls the store's version every 250 ms and reads the
//!   results once per change, for every client.
//! - Every asset (HTML, JS, CSS) is embedded in the binary; every response carries a
//!   Content-Security-Policy without inline scripts or styles.

pub mod client;
pub mod error;
pub mod json;
pub mod live;
pub mod server;
pub mod store;

pub use error::WebError;
pub use server::{bind, router, Server};
pub use store::{CassandraStore, LocalStore, Store, Version};
