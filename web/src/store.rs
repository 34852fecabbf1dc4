//! [`Store`]: where the server reads results: the local output directory ([`LocalStore`],
//! design §10) or Cassandra ([`CassandraStore`], design §5).
//!
//! The methods block (file reads, or the Cassandra reader's own runtime): the server calls them
//! on tokio's blocking pool, never on its event loop.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rankmysteps_dataflow::event::{Day, User};
use rankmysteps_dataflow::ranking::Standing;
use rankmysteps_sinks::cassandra::{CassandraConfig, CassandraReader};
use rankmysteps_sinks::local::{self, TopFile};
use rankmysteps_sinks::SinkError;

/// What the store says about how far its results are: when it changes, new results may be
/// readable. The watcher polls it (one small read) and re-reads the results only when it moves.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Version {
    /// The last completed epoch whose results are all written (the progress record).
    pub epoch: Option<u64>,
    /// Cassandra: the epoch being written (the intent record; its top-k is written before the
    /// rest, so the page shows it before the progress record moves). `None` for a directory.
    pub writing: Option<u64>,
}

/// A read-only view of the results.
pub trait Store: Send + Sync + 'static {
    /// Where the results are read from, for logs and the page.
    fn describe(&self) -> String;
    /// How far the results are (see [`Version`]).
    fn version(&self) -> Result<Version, SinkError>;
    /// Every day with results, ascending, with whether it is final.
    fn days(&self) -> Result<Vec<(Day, bool)>, SinkError>;
    /// `day`'s stored top-k (every stored row). [`SinkError::NotFound`] for a day with no results.
    fn top(&self, day: Day) -> Result<TopFile, SinkError>;
    /// `user`'s standing on `day` with `neighbours` users on each side, and whether the day is
    /// final; `None` when the user has no total that day.
    fn standing(
        &self,
        day: Day,
        user: User,
        neighbours: usize,
    ) -> Result<Option<(Standing, bool)>, SinkError>;
    /// `day`'s histogram of totals: `(total, number of users)`, one row per distinct total.
    fn histogram(&self, day: Day) -> Result<Vec<(u64, u64)>, SinkError>;
    /// Every day `user` has a total, with it, most recent first.
    fn history(&self, user: User) -> Result<Vec<(Day, u64)>, SinkError>;
    /// Requests made to the store so far (Cassandra: CQL requests; a directory: file reads).
    fn reads(&self) -> u64;
}

/// The local output directory written by `rankmysteps run` (design §10).
pub struct LocalStore {
    dir: PathBuf,
    reads: std::sync::atomic::AtomicU64,
}

impl LocalStore {
    /// The directory `dir` (it may not exist yet: a run creates it).
    pub fn new(dir: impl Into<PathBuf>) -> LocalStore {
        LocalStore {
            dir: dir.into(),
            reads: Default::default(),
        }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn count(&self, n: u64) {
        self.reads
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Store for LocalStore {
    fn describe(&self) -> String {
        format!("output directory {}", self.dir.display())
    }

    fn version(&self) -> Result<Version, SinkError> {
        self.count(1);
        match local::read_progress(&self.dir) {
            Ok(p) => Ok(Version {
                epoch: Some(p.epoch),
                writing: None,
            }),
            Err(SinkError::NotFound { .. }) => Ok(Version::default()),
            Err(e) => Err(e),
        }
    }

    fn days(&self) -> Result<Vec<(Day, bool)>, SinkError> {
        let days = match local::list_days(&self.dir) {
            Ok(days) => days,
            // No directory yet: a run that has not written anything.
            Err(SinkError::NotFound { .. }) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        self.count(1 + days.len() as u64);
        let mut out = Vec::with_capacity(days.len());
        for day in days {
            match local::read_top_file(&self.dir, day) {
                Ok(top) => out.push((day, top.is_final)),
                // A day directory whose top.json is not written yet.
                Err(SinkError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    fn top(&self, day: Day) -> Result<TopFile, SinkError> {
        self.count(1);
        local::read_top_file(&self.dir, day)
    }

    fn standing(
        &self,
        day: Day,
        user: User,
        neighbours: usize,
    ) -> Result<Option<(Standing, bool)>, SinkError> {
        self.count(2);
        local::read_standing(&self.dir, day, user, neighbours)
    }

    fn histogram(&self, day: Day) -> Result<Vec<(u64, u64)>, SinkError> {
        self.count(1);
        let mut totals: Vec<u64> = local::read_totals(&self.dir, day)?
            .into_iter()
            .map(|(_, t)| t)
            .collect();
        totals.sort_unstable();
        let mut rows: Vec<(u64, u64)> = Vec::new();
        for t in totals {
            match rows.last_mut() {
                Some((last, n)) if *last == t => *n += 1,
                _ => rows.push((t, 1)),
            }
        }
        Ok(rows)
    }

    fn history(&self, user: User) -> Result<Vec<(Day, u64)>, SinkError> {
        let mut out = Vec::new();
        for (day, _) in self.days()?.into_iter().rev() {
            self.count(1);
            let totals = match local::read_totals(&self.dir, day) {
                Ok(t) => t,
                Err(SinkError::NotFound { .. }) => continue,
                Err(e) => return Err(e),
            };
            // totals.csv is sorted by user.
            if let Ok(i) = totals.binary_search_by_key(&user, |&(u, _)| u) {
                out.push((day, totals[i].1));
            }
        }
        Ok(out)
    }

    fn reads(&self) -> u64 {
        self.reads.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// The Cassandra tables written by the sink (design §5), read with prepared statements only.
///
/// Connects lazily, and again after a failed attempt (at most once a second), so a server
/// started while Cassandra is down answers 503 and recovers by itself once it is up.
pub struct CassandraStore {
    config: CassandraConfig,
    job: String,
    reader: Mutex<Option<Arc<CassandraReader>>>,
    last_attempt: Mutex<Option<(Instant, String)>>,
}

/// The least time between two connection attempts.
const RECONNECT: Duration = Duration::from_secs(1);

impl CassandraStore {
    /// A store over `config`'s keyspace; `job` names the progress record (a worker's is its
    /// Kafka topic). Nothing is connected yet.
    pub fn new(config: CassandraConfig, job: impl Into<String>) -> CassandraStore {
        CassandraStore {
            config,
            job: job.into(),
            reader: Mutex::new(None),
            last_attempt: Mutex::new(None),
        }
    }

    fn reader(&self) -> Result<Arc<CassandraReader>, SinkError> {
        let mut reader = self.reader.lock().expect("reader lock");
        if let Some(r) = &*reader {
            return Ok(r.clone());
        }
        let mut last = self.last_attempt.lock().expect("attempt lock");
        if let Some((at, error)) = &*last {
            if at.elapsed() < RECONNECT {
                return Err(SinkError::cassandra("connecting", error.clone()));
            }
        }
        match CassandraReader::connect(&self.config) {
            Ok(r) => {
                tracing::info!(keyspace = %self.config.keyspace, "web: connected to cassandra");
                let r = Arc::new(r);
                *reader = Some(r.clone());
                *last = None;
                Ok(r)
            }
            Err(e) => {
                tracing::warn!(error = %e, "web: cannot connect to cassandra");
                let detail = match &e {
                    SinkError::Cassandra { detail, .. } => detail.clone(),
                    other => other.to_string(),
                };
                *last = Some((Instant::now(), detail));
                Err(e)
            }
        }
    }
}

impl Store for CassandraStore {
    fn describe(&self) -> String {
        format!(
            "cassandra {} keyspace {}",
            self.config.contact_points.join(","),
            self.config.keyspace
        )
    }

    fn version(&self) -> Result<Version, SinkError> {
        let r = self.reader()?;
        let epoch = r.progress(&self.job)?.map(|p| p.epoch);
        let writing = r
            .progress(&rankmysteps_sinks::cassandra::intent_key(&self.job))?
            .map(|p| p.epoch);
        Ok(Version { epoch, writing })
    }

    fn days(&self) -> Result<Vec<(Day, bool)>, SinkError> {
        self.reader()?.days()
    }

    fn top(&self, day: Day) -> Result<TopFile, SinkError> {
        self.reader()?.top(day, None)
    }

    fn standing(
        &self,
        day: Day,
        user: User,
        neighbours: usize,
    ) -> Result<Option<(Standing, bool)>, SinkError> {
        self.reader()?.standing(day, user, neighbours)
    }

    fn histogram(&self, day: Day) -> Result<Vec<(u64, u64)>, SinkError> {
        self.reader()?.histogram(day)
    }

    fn history(&self, user: User) -> Result<Vec<(Day, u64)>, SinkError> {
        self.reader()?.user_history(user)
    }

    fn reads(&self) -> u64 {
        self.reader
            .lock()
            .expect("reader lock")
            .as_ref()
            .map_or(0, |r| r.queries())
    }
}
