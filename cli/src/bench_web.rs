//! `rankmysteps bench web`: the leaderboard's API and event streams against Cassandra.
//!
//! A writer child process (`bench web-writer`: the generator → dataflow → the real Cassandra
//! sink, into a keyspace of its own) keeps the results moving; this process serves them
//! (`rankmysteps_web::Server` over `CassandraStore`, as `rankmysteps serve` does) and measures:
//! - the latency of `/api/days/{day}/top` and `/api/days/{day}/standing/{user}` at a steady
//!   request rate (open loop: each request is due at a fixed time, and its latency counts from
//!   then, so a slow answer delays the next ones' figures rather than hiding them);
//! - the cost of many open event streams: the server's resident memory, the CPU of its threads
//!   (the web runtime and the Cassandra reader's), and the CQL reads per second, first with no
//!   stream, then with `--streams` of them.
//!
//! Loopback only; bounded in requests, streams and time.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use rankmysteps_dataflow::event::format_user;
use rankmysteps_dataflow::pipeline::Settings;
use rankmysteps_sinks::cassandra::{CassandraConfig, CassandraSink};
use rankmysteps_sources::generator::{user_uuid, GeneratorConfig};
use rankmysteps_sources::parse::ParseConfig;
use rankmysteps_web::client::Connection;
use rankmysteps_web::{CassandraStore, Server};

use crate::config::ClusterConfig;
use crate::error::CliError;
use crate::job::{self, Input, JobSpec};

/// The progress record's job of the writer.
const JOB: &str = "bench-web";

/// Arguments of `bench web`.
#[derive(Args)]
pub struct WebArgs {
    /// The deployment description (its [cassandra] contact points and settings).
    #[arg(long, default_value = "cluster.toml")]
    config: PathBuf,
    /// Keyspace of the benchmark (created if missing; never the deployment's own).
    #[arg(long, default_value = "rms_bench_web")]
    keyspace: String,
    /// Users of the writer's generator.
    #[arg(long, default_value_t = 20_000)]
    users: u64,
    /// Events per second of the writer.
    #[arg(long, default_value_t = 5_000)]
    rate: u64,
    /// API requests per second in the latency runs.
    #[arg(long, default_value_t = 100)]
    requests_per_second: u64,
    /// Seconds of each measurement.
    #[arg(long, default_value_t = 15.0)]
    seconds: f64,
    /// Event streams opened at once.
    #[arg(long, default_value_t = 1000)]
    streams: usize,
}

/// Arguments of `bench web-writer` (the child process of `bench web`).
#[derive(Args)]
pub struct WebWriterArgs {
    #[arg(long)]
    config: PathBuf,
    #[arg(long)]
    keyspace: String,
    #[arg(long)]
    users: u64,
    #[arg(long)]
    rate: u64,
    /// Stop after this many seconds at the latest.
    #[arg(long)]
    seconds: f64,
}

fn cassandra(config: &std::path::Path, keyspace: &str) -> Result<CassandraConfig, CliError> {
    let cluster = ClusterConfig::load(config)?;
    let mut c = cluster.cassandra.ok_or_else(|| {
        CliError::Setting(format!("{}: bench web needs [cassandra]", config.display()))
    })?;
    c.keyspace = keyspace.to_owned();
    c.validate()?;
    Ok(c)
}

/// The writer: generator → dataflow → Cassandra sink, 500 ms epochs.
pub fn writer(a: WebWriterArgs) -> Result<(), CliError> {
    let c = cassandra(&a.config, &a.keyspace)?;
    let sink = CassandraSink::connect(&c, JOB)?;
    let spec = JobSpec {
        introspection: None,
        linger: None,
        workers: 1,
        settings: Settings {
            k: 100,
            ..Settings::default()
        },
        parse: ParseConfig::default(),
        input: Input::Generator(GeneratorConfig {
            users: a.users,
            rate: Some(a.rate),
            duration: Some(Duration::from_secs_f64(a.seconds)),
            epoch_ms: 500,
            ..GeneratorConfig::default()
        }),
        max_epochs_ahead: 4,
        cluster: None,
        metrics: None,
        archive: None,
        coalesce: false,
        recovery: None,
        checkpoint: None,
        progress: crate::progress::Display::Off,
    };
    job::run(spec, Box::new(sink), Arc::new(AtomicBool::new(false)))?;
    Ok(())
}

/// Kills the writer when the benchmark ends, however it ends.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    ms(sorted[((sorted.len() as f64 - 1.0) * p).round() as usize])
}

/// CPU seconds of this process's threads whose name starts with one of `prefixes`.
fn threads_cpu(prefixes: &[&str]) -> f64 {
    let mut total = 0.0;
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return f64::NAN;
    };
    for task in tasks.flatten() {
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        let Some((head, tail)) = stat.rsplit_once(')') else {
            continue;
        };
        let name = head.split_once('(').map_or("", |(_, n)| n);
        if !prefixes.iter().any(|p| name.starts_with(p)) {
            continue;
        }
        let f: Vec<&str> = tail.split_whitespace().collect();
        let t = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        total += (t(11) + t(12)) / 100.0;
    }
    total
}

/// Resident memory of this process, MiB.
fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Requests `path(i)` at `rate` per second for `seconds`, open loop, from 4 keep-alive
/// connections; latencies of the 200 answers (from when each request was due), and counts
/// by status.
fn steady(
    addr: SocketAddr,
    rate: u64,
    seconds: f64,
    path: impl Fn(u64) -> String + Sync,
) -> (Vec<Duration>, std::collections::BTreeMap<u16, u64>) {
    const THREADS: u64 = 4;
    let total = (rate as f64 * seconds) as u64;
    let start = Instant::now() + Duration::from_millis(100);
    let results = std::sync::Mutex::new((Vec::new(), std::collections::BTreeMap::new()));
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let (path, results) = (&path, &results);
            s.spawn(move || {
                let mut c = Connection::open(addr, Duration::from_secs(10)).ok();
                let mut mine = (Vec::new(), std::collections::BTreeMap::new());
                for i in (t..total).step_by(THREADS as usize) {
                    let due = start + Duration::from_secs_f64(i as f64 / rate as f64);
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    let status = match c.as_mut().map(|c| c.get(&path(i))) {
                        Some(Ok(r)) => r.status,
                        _ => {
                            c = Connection::open(addr, Duration::from_secs(10)).ok();
                            0
                        }
                    };
                    if status == 200 {
                        mine.0.push(due.elapsed());
                    }
                    *mine.1.entry(status).or_insert(0u64) += 1;
                }
                let mut r = results.lock().expect("results");
                r.0.extend(mine.0);
                for (k, v) in mine.1 {
                    *r.1.entry(k).or_insert(0) += v;
                }
            });
        }
    });
    let (mut lat, statuses) = results.into_inner().expect("results");
    lat.sort_unstable();
    (lat, statuses)
}

/// What the server costs over `seconds`: (CPU cores of its threads, CQL reads per second, RSS
/// MiB at the end).
fn cost(server: &Server, seconds: f64) -> (f64, f64, f64) {
    let cpu0 = threads_cpu(&["web", "cassandra"]);
    let reads0 = server.store_reads();
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(seconds));
    let dt = t0.elapsed().as_secs_f64();
    (
        (threads_cpu(&["web", "cassandra"]) - cpu0) / dt,
        (server.store_reads() - reads0) as f64 / dt,
        rss_mib(),
    )
}

/// Runs the benchmark.
pub fn web(a: WebArgs) -> Result<(), CliError> {
    let c = cassandra(&a.config, &a.keyspace)?;
    rankmysteps_sinks::cassandra::schema::apply(&c)?;
    let budget = 60.0 + 6.0 * a.seconds;
    let exe = std::env::current_exe().map_err(|e| CliError::Setting(e.to_string()))?;
    let _writer = Child(
        std::process::Command::new(exe)
            .args(["bench", "web-writer", "--config"])
            .arg(&a.config)
            .args(["--keyspace", &a.keyspace])
            .args([
                "--users",
                &a.users.to_string(),
                "--rate",
                &a.rate.to_string(),
            ])
            .args(["--seconds", &budget.to_string()])
            .spawn()
            .map_err(|e| CliError::Setting(format!("starting the writer: {e}")))?,
    );
    let server = Server::start(
        Arc::new(CassandraStore::new(c, JOB)),
        rankmysteps_web::bind("127.0.0.1:0")?,
    )?;
    let addr = server.addr();
    eprintln!(
        "bench web: writer at {} events/s over {} users into keyspace {}; server {}",
        a.rate,
        a.users,
        a.keyspace,
        server.url()
    );
    // Warm up: a day with results, and the users' totals of a few bulk writes.
    let started = Instant::now();
    let day = loop {
        let latest = rankmysteps_web::client::get(addr, "/api/days")
            .ok()
            .and_then(|r| r.json()["latest"].as_str().map(str::to_owned));
        if let Some(day) = latest.filter(|_| started.elapsed() > Duration::from_secs(15)) {
            break day;
        }
        if started.elapsed() > Duration::from_secs(90) {
            return Err(CliError::Setting("no results after 90 s".into()));
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let users = a.users;
    let rate = a.requests_per_second.max(1);

    let report =
        |name: &str, (lat, statuses): (Vec<Duration>, std::collections::BTreeMap<u16, u64>)| {
            println!(
            "{name}: {rate} requests/s for {:.0} s: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (statuses {statuses:?})",
            a.seconds,
            pct(&lat, 0.5),
            pct(&lat, 0.99),
            lat.last().map_or(f64::NAN, |d| ms(*d)),
        );
        };
    report(
        "GET /api/days/{day}/top?k=100",
        steady(addr, rate, a.seconds, |_| {
            format!("/api/days/{day}/top?k=100")
        }),
    );
    report(
        "GET /api/days/{day}/standing/{user}?neighbours=3",
        steady(addr, rate, a.seconds, |i| {
            let u = user_uuid(1, i.wrapping_mul(0x9E37_79B9) % users);
            format!("/api/days/{day}/standing/{}?neighbours=3", format_user(u))
        }),
    );

    // Event streams.
    let (cpu, reads, rss) = cost(&server, a.seconds);
    println!(
        "0 event streams: server threads {:.1}% of a core, {reads:.1} CQL reads/s, RSS {rss:.1} MiB",
        cpu * 100.0
    );
    let mut sockets = Vec::with_capacity(a.streams);
    for i in 0..a.streams {
        // A tenth of the clients pin a user: distinct (day, user) standings read once a second.
        let path = if i % 10 == 0 {
            let u = user_uuid(1, i as u64 % users);
            format!("/api/events?day={day}&user={}", format_user(u))
        } else {
            format!("/api/events?day={day}")
        };
        let mut s = TcpStream::connect(addr).map_err(|e| CliError::Setting(e.to_string()))?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n"
        )
        .map_err(|e| CliError::Setting(e.to_string()))?;
        s.set_nonblocking(true)
            .map_err(|e| CliError::Setting(e.to_string()))?;
        sockets.push(s);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let drain = {
        let (stop, received) = (stop.clone(), received.clone());
        std::thread::Builder::new()
            .name("bench-drain".into())
            .spawn(move || {
                let mut buf = vec![0u8; 1 << 16];
                let mut tops = vec![0u64; sockets.len()];
                while !stop.load(Ordering::Relaxed) {
                    for (i, s) in sockets.iter_mut().enumerate() {
                        while let Ok(n) = s.read(&mut buf) {
                            if n == 0 {
                                break;
                            }
                            let text = &buf[..n];
                            tops[i] +=
                                text.windows(10).filter(|w| w == b"event: top").count() as u64;
                            received.fetch_add(n as u64, Ordering::Relaxed);
                        }
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                tops
            })
            .map_err(|e| CliError::Setting(e.to_string()))?
    };
    std::thread::sleep(Duration::from_secs(3));
    let clients = server.clients();
    let (cpu, reads, rss) = cost(&server, a.seconds);
    stop.store(true, Ordering::Relaxed);
    let tops = drain
        .join()
        .map_err(|_| CliError::Setting("drain thread".into()))?;
    let with_top = tops.iter().filter(|&&n| n > 0).count();
    let mean_tops = tops.iter().sum::<u64>() as f64 / tops.len().max(1) as f64;
    println!(
        "{} event streams ({clients} open at the server, {} pinning a user): server threads {:.1}% of a core, {reads:.1} CQL reads/s, RSS {rss:.1} MiB; {with_top} streams received top-k updates, {mean_tops:.1} each on average, {:.1} MiB in all",
        a.streams,
        a.streams.div_ceil(10),
        cpu * 100.0,
        received.load(Ordering::Relaxed) as f64 / (1 << 20) as f64
    );
    Ok(())
}
