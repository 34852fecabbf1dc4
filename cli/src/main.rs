//! `rankmysteps`: a live per-day step leaderboard on timely + differential dataflow.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use rankmysteps::config::{parse_duration, ClusterConfig};
use rankmysteps::job::{self, Input, JobSpec};
use rankmysteps::progress::Display;
use rankmysteps::view::TerminalView;
use rankmysteps::worker::DEFAULT_METRICS;
use rankmysteps_dataflow::event::{format_day, format_user, parse_day, parse_user, Reason};
use rankmysteps_dataflow::pipeline::Settings;
use rankmysteps_sinks::local::{read_standing, read_top, LocalDirSink, LocalOptions};
use rankmysteps_sinks::{Fanout, Sink};
use rankmysteps_sources::generator::{GeneratorConfig, TimestampFormat};
use rankmysteps_sources::parse::ParseConfig;

/// mimalloc: the dataflow allocates and frees many small buffers across threads, where it is
/// measurably cheaper than the system allocator (see README, Performance).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// RankMySteps ranks the users of a step-counting app per day, live.
///
/// With no arguments, `rankmysteps run` runs the whole job in this process: a built-in
/// generator of users, the dataflow on several worker threads, results in ./out, a live
/// leaderboard in the terminal and the leaderboard web page (its address is printed;
/// http://127.0.0.1:8080/ unless that port is taken).
#[derive(Parser)]
#[command(
    name = "rankmysteps",
    version,
    propagate_version = true,
    after_help = "Configuration: every key of cluster.toml can be overridden by an environment \
variable RANKMYSTEPS__<SECTION>__<KEY> (double underscores; e.g. RANKMYSTEPS__DATAFLOW__K=10, \
RANKMYSTEPS__KAFKA__BROKERS=host1:9092,host2:9092, RANKMYSTEPS__CASSANDRA__REPLICATION__CLASS=...), \
applied on top of --config (or of the defaults without it). Credentials never need to be in the \
file: Cassandra's come from the variables that [cassandra] username_env/password_env name, S3's \
from the standard AWS chain (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, profiles). \
RANKMYSTEPS_LOG sets the log filter (default warn)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the job: the embedded generator (default) or a replay of JSON Lines (--input).
    ///
    /// Results go to the output directory (--out): days/YYYY-MM-DD/top.json and totals.csv,
    /// rejected.jsonl and progress.json. A run rewrites those files.
    ///
    /// The leaderboard web page serves that directory while the job runs: by default with the
    /// generator (--no-serve turns it off), with --serve for a replay. It listens on --listen,
    /// else [web] listen of --config, else 127.0.0.1:8080; a default generator run whose port
    /// is taken serves on a free port instead (and says which). The inspector's /debug/ is
    /// served beside it. With --serve the page stays up after the replay (or the generator) has
    /// finished, until Ctrl-C, and so does the live state: `rankmysteps inspect lookup` and
    /// `inspect top` then answer from the final arrangements.
    Run(RunArgs),
    /// Serve the leaderboard web page and its JSON API over Cassandra ([cassandra] of --config).
    ///
    /// Routes: / (the page; ?day=YYYY-MM-DD&user=UUID), /api/days, /api/days/{day}/top?k=K,
    /// /api/days/{day}/standing/{user}?neighbours=N, /api/days/{day}/histogram,
    /// /api/users/{user}/history, /api/events?day=D&user=U (server-sent events). The live
    /// updates follow the progress record of the workers' job (their [kafka] topic). Listens on
    /// --listen, else [web] listen, else 127.0.0.1:8080. Runs until Ctrl-C/SIGTERM.
    Serve(ServeArgs),
    /// Print a day's top-k from an output directory.
    Top(TopArgs),
    /// Print a user's standing on a day (rank, total, gaps, neighbours) from an output directory.
    Standing(StandingArgs),
    /// Run a streaming worker process: Kafka → dataflow → sinks, as described by cluster.toml.
    ///
    /// Partitions are assigned statically (partition p to worker p mod workers). Results go to
    /// Cassandra ([cassandra]), every consumed record to the S3 archive ([s3]). A worker resumes
    /// from its topic's progress record in Cassandra: it rebuilds the open days from the
    /// archive, writes again an epoch that was half written, and continues Kafka where that
    /// epoch ended. Start every process of [cluster] hosts (--process N), or one with
    /// --standalone. Ctrl-C/SIGTERM stop cleanly. Serves Prometheus metrics on --metrics.
    Worker(WorkerArgs),
    /// Start and supervise this machine's worker processes of a cluster ([cluster] hosts).
    ///
    /// Starts `rankmysteps worker --config FILE --process I` for every process whose host
    /// address is on this machine (can be bound here; every 127/8 address is on loopback, so
    /// cluster.local.toml runs all four here), or for the --process ones. Shows each one's
    /// state (starting, running, epoch, lag, restarting): a table redrawn every second on a
    /// terminal, else a line per event and a status line every 10 s. Each process's output
    /// goes to LOG_DIR/process-I.log. When one exits, the others are stopped and all are
    /// started again with backoff (1 s doubling to --backoff-max; back to 1 s after a minute up): a
    /// timely cluster cannot go on without a peer, and every process resumes from the
    /// progress record, so nothing is lost or doubled. Ctrl-C/SIGTERM stop every process
    /// after its current epoch (a second Ctrl-C kills them). On real hosts, run launch on each
    /// one (or `worker --process I` under systemd, see the README).
    Launch(LaunchArgs),
    /// Create (or check) the Cassandra keyspace and tables of cluster.toml's [cassandra].
    Schema(SchemaArgs),
    /// Produce generated step events to Kafka (the original producers, done right).
    Produce(ProduceArgs),
    /// Benchmark the core (generator → parse → dataflow → deltas) and file replays.
    Bench(rankmysteps::bench::BenchArgs),
    /// Check every configured part with the real clients and say what is wrong and how to fix it.
    ///
    /// Kafka: reachable, the topic and its partitions, retention and cleanup policy. Cassandra:
    /// reachable with the configured credentials, the keyspace, its tables against schema.cql,
    /// a read at the configured consistency level. S3: the bucket answers with the configured
    /// credentials, an object can be written, read back and deleted (with the configured
    /// checksum mode). [cluster] hosts: each resolves, and those on this machine have their
    /// port free; the web and metrics listeners are free. One line per check (ok / WARN / FAIL,
    /// what was found, the fix); exit status 1 if any check failed.
    Doctor(DoctorArgs),
    /// Look inside running worker processes: what each named arrangement holds and how each
    /// named operator spends its time.
    ///
    /// Asks every --addr (a process's --metrics address) for /debug/summary and prints, per
    /// process, the arrangements (updates held, live keys at the last completed epoch found
    /// by walking the trace, batches, estimated bytes) and the operators (activations, scheduling
    /// time, share). An unreachable process is reported and the others still shown; the exit
    /// status is then 1. --watch refreshes every second until Ctrl-C; --json prints
    /// [{addr, summary | error}] for scripts.
    Inspect(InspectArgs),
}

#[derive(Args)]
struct InspectArgs {
    /// Every process of this deployment, at the addresses of its [cluster] metrics.
    #[arg(long, value_name = "FILE", conflicts_with = "addr")]
    config: Option<PathBuf>,
    /// Show the operators and the graph of a capture file (`worker --capture`) instead of a
    /// running process.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["addr", "config", "watch"])]
    replay: Option<PathBuf>,
    /// A process's metrics address (repeat for several processes) [default: 127.0.0.1:9898].
    #[arg(long, value_name = "HOST:PORT")]
    addr: Vec<String>,
    /// Print what every process serves as JSON instead of tables.
    #[arg(long)]
    json: bool,
    /// Refresh every second (like top) until Ctrl-C.
    #[arg(long, conflicts_with = "json")]
    watch: bool,
    /// Sort the tables by size (arrangements by updates, operators by time) or by name.
    #[arg(long, value_enum, default_value = "size")]
    sort: InspectSort,
    /// Operators shown per process.
    #[arg(long, value_name = "N", default_value_t = 15)]
    operators: usize,
    /// Seconds to wait for each process.
    #[arg(long, value_name = "SECS", default_value_t = 3.0)]
    timeout: f64,
    #[command(subcommand)]
    what: Option<InspectWhat>,
}

#[derive(clap::Subcommand)]
enum InspectWhat {
    /// What the dataflow thinks right now of a (day, user): the total at the last epoch the
    /// user's worker completed (named), whether the day is final, and the standing at that
    /// same epoch (rank of N, gaps, neighbours), read from the arrangements by the workers that
    /// own the keys, asked in turn through each --addr.
    Lookup {
        /// The day (YYYY-MM-DD).
        #[arg(long)]
        day: String,
        /// The user's UUID.
        #[arg(long)]
        user: String,
        /// Users shown above and below (at most 50).
        #[arg(long, value_name = "N", default_value_t = 3)]
        neighbours: usize,
    },
    /// A day's top-k as the dataflow holds it right now: the rows of the `top-k` arrangement
    /// (position, competition rank, user, steps) at the last epoch the day's worker completed
    /// (named), and whether the day is final then; the process running the day's worker is
    /// found by asking each --addr in turn.
    Top {
        /// The day (YYYY-MM-DD).
        #[arg(long)]
        day: String,
        /// Rows shown (default: all of the top-k).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        limit: Option<u64>,
    },
    /// The dataflow graph of the first --addr that answers, in Graphviz's dot language
    /// (operators with their time and activations, channels with the records sent on them);
    /// with --json as JSON. E.g. `rankmysteps inspect graph | dot -Tsvg > graph.svg`.
    Graph,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum InspectSort {
    Size,
    Name,
}

#[derive(Args)]
struct DoctorArgs {
    /// The deployment description.
    #[arg(long, value_name = "FILE", default_value = "cluster.toml")]
    config: PathBuf,
    /// Metrics addresses the processes will listen on (repeat for several) [default: [cluster]
    /// metrics, else 127.0.0.1:9898].
    #[arg(long, value_name = "HOST:PORT")]
    metrics: Vec<String>,
    /// Seconds to wait for each service to answer.
    #[arg(long, value_name = "SECS", default_value_t = 5.0)]
    timeout: f64,
    /// Print the checks as JSON: {"ok": bool, "checks": [{part, check, status, detail, fix}]}.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct RunArgs {
    /// Replay JSON Lines from a file (plain or gzip), a directory of them, or `-` (stdin),
    /// instead of the generator; exits once every epoch is written.
    #[arg(long, value_name = "PATH")]
    input: Option<PathBuf>,
    /// Output directory.
    #[arg(long, value_name = "DIR", default_value = "out")]
    out: PathBuf,
    /// Read [dataflow] and [cluster] settings from this file (flags override it).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Worker threads [default: [cluster] threads, or the number of cores].
    #[arg(long, value_name = "N")]
    workers: Option<usize>,
    /// Lines per epoch when replaying a file [default: 100000].
    #[arg(long, value_name = "N")]
    epoch_events: Option<u64>,
    /// Epoch length in milliseconds of wall clock when streaming [default: 1000].
    #[arg(long, value_name = "MS")]
    epoch_ms: Option<u64>,
    /// Rows of each day's top-k [default: 100].
    #[arg(long, value_name = "K")]
    k: Option<usize>,
    /// How long a day stays open after its end in UTC−12, e.g. 24h, 90m [default: 24h].
    #[arg(long, value_name = "DURATION")]
    grace: Option<String>,
    /// How far ahead of the wall clock a timestamp may be [default: 1h].
    #[arg(long, value_name = "DURATION")]
    max_clock_skew: Option<String>,
    /// De-duplication window of event_ids, in ingestion time (a file replay's epoch e is
    /// ingested at e × epoch-ms), e.g. 1h, 60s [default: [dataflow] dedup_window, 1h].
    #[arg(long, value_name = "DURATION")]
    dedup_window: Option<String>,
    /// IANA zone of timestamps without offset [default: America/Los_Angeles].
    #[arg(long, value_name = "ZONE")]
    time_zone: Option<String>,
    /// Largest steps of one event [default: 100000].
    #[arg(long, value_name = "N")]
    max_steps: Option<u32>,
    /// Generator: number of users.
    #[arg(long, value_name = "N", default_value_t = 50_000)]
    users: u64,
    /// Generator: events per second over all workers (0: as fast as possible).
    #[arg(long, value_name = "N", default_value_t = 20_000)]
    rate: u64,
    /// Generator: stop after this many seconds (default: until Ctrl-C).
    #[arg(long, value_name = "SECS")]
    duration: Option<f64>,
    /// Generator: stop after this many events.
    #[arg(long, value_name = "N")]
    events: Option<u64>,
    /// Generator: seed of users and draws.
    #[arg(long, value_name = "N", default_value_t = 1)]
    seed: u64,
    /// Generator: timestamp format.
    #[arg(long, value_enum, default_value_t = Format::Naive)]
    timestamp_format: Format,
    /// Generator: give every event an event_id.
    #[arg(long)]
    event_ids: bool,
    /// Do not draw the live leaderboard.
    #[arg(long)]
    no_view: bool,
    /// Rewrite output files at most this often, in milliseconds, and no sooner than nine times
    /// the last rewrite's duration (0: after every epoch). Final results are always written.
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    write_interval_ms: u64,
    /// Show no progress of the replay (by default: a bar on a terminal, else a plain line
    /// every 5 s, or every RANKMYSTEPS_PROGRESS_INTERVAL seconds).
    #[arg(long, short)]
    quiet: bool,
    /// Serve the leaderboard page over the output directory, and keep serving it, and the
    /// live state for the inspector's lookups, after the job ends, until Ctrl-C (the default
    /// with the generator, without staying up).
    #[arg(long, conflicts_with = "no_serve")]
    serve: bool,
    /// Do not serve the leaderboard page (with the generator, where it is the default).
    #[arg(long)]
    no_serve: bool,
    /// Address of the leaderboard page, host:port [default: [web] listen, else 127.0.0.1:8080].
    #[arg(long, value_name = "HOST:PORT")]
    listen: Option<String>,
}

#[derive(Args)]
struct ServeArgs {
    /// The deployment description (its [cassandra], [kafka] topic and [web] listen).
    #[arg(long, value_name = "FILE", default_value = "cluster.toml")]
    config: PathBuf,
    /// Listen address, host:port [default: [web] listen, else 127.0.0.1:8080].
    #[arg(long, value_name = "HOST:PORT")]
    listen: Option<String>,
}

#[derive(Args)]
struct SchemaArgs {
    /// `apply` creates the keyspace and tables (idempotent); `print` shows the CQL.
    #[arg(value_parser = ["apply", "print"])]
    action: String,
    /// The deployment description (its [cassandra] section).
    #[arg(long, value_name = "FILE", default_value = "cluster.toml")]
    config: PathBuf,
}

/// A number of seconds for clap: finite, not negative, at most a day.
fn seconds(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(s) if (0.0..=86_400.0).contains(&s) => Ok(s),
        Ok(_) => Err("must be between 0 and 86400 seconds".into()),
        Err(e) => Err(format!("not a number of seconds: {e}")),
    }
}

#[derive(Args)]
struct LaunchArgs {
    /// The deployment description.
    #[arg(long, value_name = "FILE", default_value = "cluster.toml")]
    config: PathBuf,
    /// Run this process of [cluster] hosts (repeat for several) [default: every one whose
    /// address is on this machine].
    #[arg(long, value_name = "I")]
    process: Vec<usize>,
    /// Directory of the processes' logs (process-I.log, appended across restarts).
    #[arg(long, value_name = "DIR", default_value = "logs")]
    log_dir: PathBuf,
    /// Seconds a process may take to stop cleanly (finish its epoch) before it is killed.
    #[arg(long, value_name = "SECONDS", default_value_t = 30.0, value_parser = seconds)]
    grace: f64,
    /// Give up (stop everything, exit status 1) after this many restarts [default: never].
    #[arg(long, value_name = "N")]
    max_restarts: Option<u32>,
    /// The longest wait before a restart, in seconds: the wait starts at 1 s and doubles at
    /// each failure up to this (a service that is down is not hammered), and starts over after
    /// a minute without failure.
    #[arg(long, value_name = "SECONDS", default_value_t = 30.0, value_parser = seconds)]
    backoff_max: f64,
    /// More arguments for every `worker` (after --), e.g. -- --dedup-window 1h.
    #[arg(last = true, value_name = "WORKER_ARGS")]
    worker_args: Vec<String>,
}

#[derive(Args)]
struct WorkerArgs {
    /// The deployment description.
    #[arg(long, value_name = "FILE", default_value = "cluster.toml")]
    config: PathBuf,
    /// This process's index in [cluster] hosts (ignored when hosts lists at most one).
    #[arg(long, value_name = "N", default_value_t = 0)]
    process: usize,
    /// Run this process alone, as if [cluster] hosts listed only it: it consumes every
    /// partition (local runs and tests with a configuration written for several hosts).
    #[arg(long, conflicts_with = "process")]
    standalone: bool,
    /// Worker threads of this process [default: [cluster] threads].
    #[arg(long, value_name = "N")]
    workers: Option<usize>,
    /// Also write the local output directory (alone or --standalone only: in a cluster each
    /// process writes its own share to Cassandra). It is rewritten at every start:
    /// after a restart it holds the days the restart rebuilt (those still open) and what
    /// follows.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Serve Prometheus metrics on this address ("off" to disable), and the inspector's JSON
    /// under /debug/ (what each worker's arrangements hold, its operators' times) [default:
    /// this process's entry of [cluster] metrics, else 127.0.0.1:9898].
    #[arg(long, value_name = "HOST:PORT")]
    metrics: Option<String>,
    /// Keep no introspection: no timely operator logging, no held trace handles, no /debug/
    /// routes (saves the logging's cost; /metrics stays).
    #[arg(long)]
    no_introspection: bool,
    /// Also write every timely log event of this process's workers to FILE (timely's event
    /// format; `rankmysteps inspect --replay FILE` shows the operators and the graph from it).
    #[arg(long, value_name = "FILE", conflicts_with = "no_introspection")]
    capture: Option<PathBuf>,
    /// Show no progress of a restart's replay of the archive (by default: a bar on a
    /// terminal, else a plain line every 5 s, or every RANKMYSTEPS_PROGRESS_INTERVAL seconds).
    #[arg(long, short)]
    quiet: bool,
    /// De-duplication window of event_ids, in ingestion time (the wall-clock start of an
    /// event's epoch), e.g. 1h, 60s [default: [dataflow] dedup_window].
    #[arg(long, value_name = "DURATION")]
    dedup_window: Option<String>,
    /// Started by `launch`: stop cleanly if the launcher goes away.
    #[arg(long, hide = true)]
    supervised: bool,
}

#[derive(Args)]
struct ProduceArgs {
    /// Read brokers and topic from this file's [kafka] section.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Bootstrap brokers, comma separated (overrides --config).
    #[arg(long, value_name = "HOST:PORT,...")]
    brokers: Option<String>,
    /// Topic (overrides --config) [default: steps].
    #[arg(long)]
    topic: Option<String>,
    /// Partitions of the topic if it has to be created.
    #[arg(long, default_value_t = 4)]
    partitions: u32,
    /// Number of users, drawn uniformly.
    #[arg(long, default_value_t = 72_000)]
    users: u64,
    /// Records per second (0: as fast as possible).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Stop after this many records.
    #[arg(long)]
    events: Option<u64>,
    /// Stop after this many seconds.
    #[arg(long, value_name = "SECS")]
    duration: Option<f64>,
    /// Timestamp format.
    #[arg(long, value_enum, default_value_t = Format::Naive)]
    timestamp_format: Format,
    /// IANA zone of the timestamps.
    #[arg(long, default_value = "America/Los_Angeles")]
    time_zone: String,
    /// Give every record an event_id.
    #[arg(long)]
    event_ids: bool,
    /// Share of deliberately bad records (0 to 1), for testing the dead-letter path.
    #[arg(long, default_value_t = 0.0)]
    bad_share: f64,
    /// Seed of users and draws.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Show no progress (by default: a bar on a terminal, else a plain line every 5 s, or
    /// every RANKMYSTEPS_PROGRESS_INTERVAL seconds).
    #[arg(long, short)]
    quiet: bool,
}

#[derive(Copy, Clone, ValueEnum)]
enum Format {
    /// YYYY-MM-DD HH:MM:SS in the time zone, as the original producers.
    Naive,
    /// RFC 3339 with the zone's offset.
    Rfc3339,
}

#[derive(Args)]
struct TopArgs {
    /// Output directory written by `rankmysteps run`.
    #[arg(long, value_name = "DIR", default_value = "out")]
    out: PathBuf,
    /// Read Cassandra (cluster.toml's [cassandra]) instead of an output directory.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The day, YYYY-MM-DD.
    #[arg(long, value_name = "YYYY-MM-DD")]
    day: String,
    /// How many rows (default: all stored rows).
    #[arg(long, value_name = "K")]
    k: Option<usize>,
    /// Print JSON (the top.json layout) instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct StandingArgs {
    /// Output directory written by `rankmysteps run`.
    #[arg(long, value_name = "DIR", default_value = "out")]
    out: PathBuf,
    /// Read Cassandra (cluster.toml's [cassandra]) instead of an output directory.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The day, YYYY-MM-DD.
    #[arg(long, value_name = "YYYY-MM-DD")]
    day: String,
    /// The user's UUID.
    #[arg(long, value_name = "UUID")]
    user: String,
    /// How many users to show just above and below.
    #[arg(long, value_name = "N", default_value_t = 0)]
    neighbours: usize,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RANKMYSTEPS_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run(args),
        Command::Serve(args) => serve(args),
        Command::Top(args) => top(args),
        Command::Standing(args) => standing(args),
        Command::Produce(args) => produce(args),
        Command::Worker(args) => worker(args),
        Command::Launch(args) => launch(args),
        Command::Schema(args) => schema(args),
        Command::Bench(args) => rankmysteps::bench::bench(args).map_err(Into::into),
        Command::Doctor(args) => doctor(args),
        Command::Inspect(args) => inspect(args),
    };
    if let Err(e) = result {
        eprintln!("rankmysteps: error: {e:#}");
        std::process::exit(1);
    }
}

fn run(args: RunArgs) -> Result<()> {
    let config = match &args.config {
        Some(path) => ClusterConfig::load(path)?,
        None => ClusterConfig::from_env()?,
    };
    let df = &config.dataflow;
    let duration = |flag: &Option<String>, default: &str, name: &str| -> Result<i64> {
        let text = flag.as_deref().unwrap_or(default);
        parse_duration(text).with_context(|| {
            format!("--{name}: cannot read {text:?} as a duration (e.g. 24h, 90m, 30s)")
        })
    };
    let grace = duration(&args.grace, &df.grace, "grace")?;
    let skew = duration(&args.max_clock_skew, &df.max_clock_skew, "max-clock-skew")?;
    let dedup_window = duration(&args.dedup_window, &df.dedup_window, "dedup-window")?;
    let zone_name = args
        .time_zone
        .clone()
        .unwrap_or_else(|| df.default_time_zone.clone());
    let zone = jiff::tz::TimeZone::get(&zone_name)
        .with_context(|| format!("unknown time zone {zone_name:?}"))?;
    let k = args.k.unwrap_or(df.k);
    let epoch_ms = args.epoch_ms.unwrap_or(df.epoch_ms);
    let epoch_events = args.epoch_events.unwrap_or(df.epoch_events);
    if k == 0 || epoch_ms == 0 || epoch_events == 0 {
        bail!("--k, --epoch-ms and --epoch-events must be at least 1");
    }
    let workers = args.workers.unwrap_or(config.cluster.threads);
    if workers == 0 {
        bail!("--workers must be at least 1");
    }
    let stop = Arc::new(AtomicBool::new(false));
    let s3_url = args
        .input
        .as_ref()
        .and_then(|p| p.to_str())
        .and_then(rankmysteps_sinks::s3::parse_s3_url);
    let input = match &args.input {
        Some(path) if path.to_str().is_some_and(|p| p.starts_with("s3://")) => {
            let (bucket, prefix) = s3_url.with_context(|| {
                format!(
                    "--input: {} is not an s3://bucket/prefix URL",
                    path.display()
                )
            })?;
            let mut s3 = config.s3.clone().or_else(rankmysteps::config::s3_from_env).with_context(|| "--input s3://…: give --config with an [s3] section, or RANKMYSTEPS_S3_ENDPOINT and AWS_REGION")?;
            s3.bucket = bucket;
            Input::S3 {
                config: s3,
                prefix,
                epoch_events,
            }
        }
        Some(path) => Input::File {
            path: path.clone(),
            epoch_events,
        },
        None => Input::Generator(GeneratorConfig {
            users: args.users.max(1),
            rate: (args.rate > 0).then_some(args.rate),
            duration: args.duration.map(Duration::from_secs_f64),
            max_events: args.events,
            epoch_ms,
            seed: args.seed,
            format: match args.timestamp_format {
                Format::Naive => TimestampFormat::Naive,
                Format::Rfc3339 => TimestampFormat::Rfc3339,
            },
            event_ids: args.event_ids,
            zone: zone.clone(),
        }),
    };
    let streaming = matches!(input, Input::Generator(_));
    stop_on_signal(&stop)?;
    let local = LocalDirSink::create(
        &args.out,
        LocalOptions {
            min_write_interval: Duration::from_millis(args.write_interval_ms),
        },
    )?;
    // The page serves the directory the sink has just emptied, and the inspector's /debug/
    // of this job beside it.
    let serving = args.serve || (streaming && !args.no_serve);
    let introspection =
        serving.then(|| Arc::new(rankmysteps::introspect::Introspection::default()));
    let server = if serving {
        let listen = args.listen.clone().unwrap_or_else(|| config.web_listen());
        // A default generator run falls back to a free port rather than failing.
        let fallback = !args.serve && args.listen.is_none();
        let server =
            rankmysteps::serve::local(&args.out, &listen, fallback, introspection.clone())?;
        eprintln!("rankmysteps: leaderboard at {}", server.url());
        Some(server)
    } else {
        None
    };
    let mut sinks: Vec<Box<dyn Sink>> = vec![Box::new(local)];
    if streaming && !args.no_view {
        use std::io::IsTerminal;
        let mut view = TerminalView::new(10, std::io::stdout().is_terminal());
        if let Some(server) = &server {
            view = view.with_url(server.url());
        }
        sinks.push(Box::new(view));
    }
    // With --serve the workers keep their live state after the input for the inspector's
    // lookups, until Ctrl-C; the summary is printed when the input is done.
    let out_dir = args.out.clone();
    let summary = move |report: &job::JobReport| summary_line(report, &out_dir);
    let linger = server.as_ref().filter(|_| args.serve).map(|server| {
        let (url, stop, summary) = (server.url(), stop.clone(), summary.clone());
        job::Linger(Arc::new(move |report: &job::JobReport| {
            eprintln!("{}", summary(report));
            if !stop.load(Ordering::SeqCst) {
                eprintln!(
                    "rankmysteps: the job is done; still serving the leaderboard at {url} and its live state under /debug/ until Ctrl-C"
                );
            }
        }))
    });
    let lingering = linger.is_some();
    let spec = JobSpec {
        introspection,
        linger,
        workers,
        settings: Settings {
            k,
            grace,
            initial_watermark: None,
            dedup_window,
            epoch_length: epoch_ms as i64 * 1000,
        },
        parse: ParseConfig {
            max_steps: args.max_steps.unwrap_or(df.max_steps_per_event),
            max_clock_skew: skew,
            time_zone: zone,
        },
        input,
        max_epochs_ahead: df.max_epochs_ahead,
        cluster: None,
        metrics: None,
        archive: None,
        coalesce: false,
        recovery: None,
        checkpoint: None,
        progress: Display::quiet_if(args.quiet),
    };
    let report = job::run(spec, Box::new(Fanout(sinks)), stop.clone())?;
    if !lingering {
        eprintln!("{}", summary(&report));
    }
    drop(server);
    Ok(())
}

/// `run`'s last line: what the job did and where its results are.
fn summary_line(report: &job::JobReport, out: &std::path::Path) -> String {
    let s = &report.stats;
    let rejected: Vec<String> = Reason::ALL
        .iter()
        .map(|r| format!("{}={}", r.code(), s.rejected(*r)))
        .collect();
    format!(
        "rankmysteps: {} epochs in {:.2}s: accepted {}, duplicate {}, rejected {} ({}); results in {}",
        report.epochs,
        report.elapsed.as_secs_f64(),
        s.accepted,
        s.duplicate,
        s.rejected_total(),
        rejected.join(" "),
        out.display()
    )
}

/// `rankmysteps serve`: the page over Cassandra until Ctrl-C.
fn serve(args: ServeArgs) -> Result<()> {
    let config = ClusterConfig::load(&args.config)?;
    let listen = args.listen.clone().unwrap_or_else(|| config.web_listen());
    let server = rankmysteps::serve::cassandra(&config, &listen)
        .with_context(|| format!("serving {}", args.config.display()))?;
    eprintln!("rankmysteps: leaderboard at {}", server.url());
    let stop = Arc::new(AtomicBool::new(false));
    stop_on_signal(&stop)?;
    wait_for(&stop);
    Ok(())
}

/// Blocks until `stop` is set (by Ctrl-C or SIGTERM).
fn wait_for(stop: &AtomicBool) {
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn worker(args: WorkerArgs) -> Result<()> {
    use rankmysteps::worker::{Worker, WorkerOptions};
    let config = ClusterConfig::load(&args.config)?;
    let stop = Arc::new(AtomicBool::new(false));
    stop_on_signal(&stop)?;
    if args.supervised {
        stop_without_parent(stop.clone());
    }
    let worker = Worker::prepare(
        WorkerOptions {
            config_path: args.config,
            config,
            process: args.process,
            standalone: args.standalone,
            workers: args.workers,
            out: args.out,
            metrics: args.metrics,
            introspection: !args.no_introspection,
            capture: args.capture,
            quiet: args.quiet,
            dedup_window: args.dedup_window,
        },
        stop,
    )?;
    if let Some(r) = worker.recovery() {
        if let Some(p) = &r.progress {
            eprintln!(
                "rankmysteps: resuming after epoch {} (watermark {}): replaying {} archive objects (through epoch {}), {} uncommitted objects deleted",
                p.epoch,
                p.watermark.as_deref().unwrap_or("none"),
                r.replay.len(),
                r.replay_through.unwrap_or(p.epoch),
                r.deleted
            );
            match &r.checkpoint {
                Some(c) => eprintln!(
                    "rankmysteps: state from the checkpoint after epoch {} ({} users of open days, {} remembered ids in this process's parts); the replay starts after it{}",
                    c.mark - 1,
                    c.parts.values().map(|p| p.totals.len()).sum::<usize>(),
                    c.parts.values().map(|p| p.window.len()).sum::<usize>(),
                    match r.deleted_parts {
                        0 => String::new(),
                        n => format!(" ({n} uncommitted checkpoint parts deleted)"),
                    }
                ),
                None => eprintln!(
                    "rankmysteps: no complete checkpoint of committed epochs: the replay rebuilds the open days' state"
                ),
            }
        } else if r.replay_through.is_some() {
            eprintln!(
                "rankmysteps: the first epoch was being written when the last run stopped: replaying {} archive objects",
                r.replay.len()
            );
        } else if r.deleted > 0 {
            eprintln!(
                "rankmysteps: the last run stopped before its first epoch was written: {} uncommitted archive objects deleted, consuming from the beginning",
                r.deleted
            );
        }
    }
    eprintln!(
        "rankmysteps: worker process {} consuming {} ({} partitions) with {} threads{}",
        worker.process,
        worker.topic,
        worker.partitions,
        worker.workers,
        worker
            .generation
            .map_or(String::new(), |g| format!(", generation {g}"))
    );
    let report = worker.run()?;
    eprintln!(
        "rankmysteps: stopped after {} epochs ({} more, {} archived records, replayed to restore the state): accepted {}, duplicate {}, rejected {}",
        report.epochs,
        report.restored,
        report.replayed,
        report.stats.accepted,
        report.stats.duplicate,
        report.stats.rejected_total()
    );
    Ok(())
}

/// Sets `stop` when this process's parent changes (the launcher is gone; the process was
/// re-parented), so a process `launch` started never outlives it.
fn stop_without_parent(stop: Arc<AtomicBool>) {
    let parent = std::os::unix::process::parent_id();
    std::thread::spawn(move || {
        while !stop.load(Ordering::SeqCst) {
            if std::os::unix::process::parent_id() != parent {
                eprintln!("rankmysteps: the launcher is gone: stopping after the current epoch");
                stop.store(true, Ordering::SeqCst);
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    });
}

fn launch(args: LaunchArgs) -> Result<()> {
    use rankmysteps::launch::{local_processes, Backoff, LaunchSpec};
    use std::io::IsTerminal;
    let config = ClusterConfig::load(&args.config)?;
    let hosts = &config.cluster.hosts;
    if !(args.grace.is_finite() && args.grace >= 0.0) {
        bail!("--grace must be a number of seconds");
    }
    for flag in [
        "--process",
        "--standalone",
        "--config",
        "--metrics",
        "--supervised",
    ] {
        if args
            .worker_args
            .iter()
            .any(|a| a == flag || a.starts_with(&format!("{flag}=")))
        {
            bail!("{flag} cannot be passed to the workers: launch sets it for each process ([cluster] metrics sets each one's metrics address)");
        }
    }
    let processes = if args.process.is_empty() {
        local_processes(hosts)?
    } else {
        let mut p = args.process.clone();
        p.sort_unstable();
        p.dedup();
        if let Some(bad) = p.iter().find(|&&i| i >= hosts.len().max(1)) {
            bail!(
                "--process {bad} but [cluster] hosts lists {} processes",
                hosts.len().max(1)
            );
        }
        p
    };
    if processes.len() > 1 && config.cluster.metrics.is_empty() {
        bail!(
            "{}: {} processes here would all serve their metrics on {DEFAULT_METRICS}: set \
             [cluster] metrics, one address per process",
            args.config.display(),
            processes.len()
        );
    }
    let introspection = !args.worker_args.iter().any(|a| a == "--no-introspection");
    let processes = processes
        .into_iter()
        .map(|i| {
            let host = hosts
                .get(i)
                .cloned()
                .unwrap_or_else(|| "(this machine)".into());
            let metrics = config
                .cluster
                .metrics
                .get(i)
                .cloned()
                .unwrap_or_else(|| DEFAULT_METRICS.to_owned());
            (
                i,
                host,
                (introspection && metrics != "off").then_some(metrics),
            )
        })
        .collect();
    let stop = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = stop.clone();
    ctrlc::set_handler(move || {
        counter.fetch_add(1, Ordering::SeqCst);
    })
    .context("installing the Ctrl-C handler")?;
    let spec = LaunchSpec {
        exe: std::env::current_exe().context("finding this executable")?,
        config: args.config.clone(),
        processes,
        worker_args: args.worker_args,
        log_dir: args.log_dir,
        backoff: Backoff {
            max: Duration::from_secs_f64(args.backoff_max),
            ..Backoff::default()
        },
        grace: Duration::from_secs_f64(args.grace),
        max_restarts: args.max_restarts,
        terminal: std::io::stderr().is_terminal(),
        epoch_ms: Some(config.dataflow.epoch_ms.max(1)),
    };
    let report = rankmysteps::launch::launch(spec, stop)?;
    let mut recoveries = report.recoveries.clone();
    recoveries.sort();
    let recovery = match (
        recoveries.get(recoveries.len().saturating_sub(1) / 2),
        recoveries.last(),
    ) {
        (Some(p50), Some(max)) => format!(
            ", recovery p50 {:.1} s, max {:.1} s",
            p50.as_secs_f64(),
            max.as_secs_f64()
        ),
        _ => String::new(),
    };
    eprintln!(
        "rankmysteps launch: stopped{} after {} restarts{recovery}",
        if report.clean { " cleanly" } else { "" },
        report.restarts
    );
    if !report.clean {
        std::process::exit(1);
    }
    Ok(())
}

fn inspect(args: InspectArgs) -> Result<()> {
    use rankmysteps::introspect::{gather, render, GatherResult, SortBy};
    if !(args.timeout.is_finite() && args.timeout > 0.0) {
        bail!("--timeout must be a positive number of seconds");
    }
    let timeout = Duration::from_secs_f64(args.timeout);
    let sort = match args.sort {
        InspectSort::Size => SortBy::Size,
        InspectSort::Name => SortBy::Name,
    };
    if let Some(path) = &args.replay {
        let replayed = rankmysteps::introspect::replay(path).map_err(|e| anyhow::anyhow!("{e}"))?;
        match &args.what {
            Some(InspectWhat::Lookup { .. } | InspectWhat::Top { .. }) => {
                bail!("--replay: a capture holds the log events, not the live state a lookup reads")
            }
            Some(InspectWhat::Graph) if args.json => {
                println!("{}", serde_json::to_string_pretty(&replayed.graph())?)
            }
            Some(InspectWhat::Graph) => print!("{}", replayed.graph().dot()),
            None => {
                let gathered = vec![rankmysteps::introspect::Gathered {
                    addr: path.display().to_string(),
                    result: GatherResult::Summary {
                        summary: serde_json::to_value(replayed.summary())?,
                    },
                }];
                print_gathered(&gathered, &args, sort)?;
            }
        }
        return Ok(());
    }
    let mut args = args;
    if let Some(path) = &args.config {
        let config = ClusterConfig::load(path)?;
        if config.cluster.metrics.is_empty() {
            bail!(
                "{}: [cluster] metrics lists no addresses: add one per process, or give --addr",
                path.display()
            );
        }
        args.addr = config.cluster.metrics;
    }
    if args.addr.is_empty() {
        args.addr.push(DEFAULT_METRICS.to_owned());
    }
    if let Some(InspectWhat::Lookup {
        day,
        user,
        neighbours,
    }) = &args.what
    {
        use rankmysteps::introspect::{lookup_cluster, render_lookup};
        let found = lookup_cluster(&args.addr, day, user, *neighbours, timeout)
            .map_err(|e| anyhow::anyhow!("lookup: {e}"))?;
        return print_found(&found, args.json, render_lookup);
    }
    if let Some(InspectWhat::Top { day, limit }) = &args.what {
        use rankmysteps::introspect::{render_top, top_cluster};
        let found = top_cluster(&args.addr, day, limit.map(|n| n as usize), timeout)
            .map_err(|e| anyhow::anyhow!("top: {e}"))?;
        return print_found(&found, args.json, render_top);
    }
    if let Some(InspectWhat::Graph) = &args.what {
        let path = if args.json {
            "/debug/graph"
        } else {
            "/debug/graph?format=dot"
        };
        let text = rankmysteps::introspect::get_text(&args.addr, path, timeout)
            .map_err(|e| anyhow::anyhow!("graph: {e}"))?;
        print!("{text}");
        return Ok(());
    }
    if args.watch {
        let stop = Arc::new(AtomicBool::new(false));
        stop_on_signal(&stop)?;
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            let gathered = gather(&args.addr, timeout);
            // Clear the screen and go home, then the tables.
            print!("\x1b[2J\x1b[H{}", render(&gathered, sort, args.operators));
            println!("(every 1 s; Ctrl-C to stop)");
            std::thread::sleep(Duration::from_secs(1));
        }
        return Ok(());
    }
    let gathered = gather(&args.addr, timeout);
    print_gathered(&gathered, &args, sort)?;
    if gathered
        .iter()
        .any(|g| matches!(g.result, GatherResult::Error { .. }))
    {
        std::process::exit(1);
    }
    Ok(())
}

/// A lookup's answer: its JSON with --json, else `render`'s text.
fn print_found(
    found: &serde_json::Value,
    json: bool,
    render: fn(&serde_json::Value) -> String,
) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(found)?);
    } else {
        print!("{}", render(found));
    }
    Ok(())
}

/// `inspect`'s output: the JSON of every process with --json, else the tables.
fn print_gathered(
    gathered: &[rankmysteps::introspect::Gathered],
    args: &InspectArgs,
    sort: rankmysteps::introspect::SortBy,
) -> Result<()> {
    if args.json {
        println!("{}", serde_json::to_string_pretty(gathered)?);
    } else {
        print!(
            "{}",
            rankmysteps::introspect::render(gathered, sort, args.operators)
        );
    }
    Ok(())
}

fn doctor(args: DoctorArgs) -> Result<()> {
    use rankmysteps::doctor::{diagnose, render, DoctorSpec, Status};
    let config = ClusterConfig::load(&args.config)?;
    if !(args.timeout.is_finite() && args.timeout > 0.0) {
        bail!("--timeout must be a positive number of seconds");
    }
    let metrics = if !args.metrics.is_empty() {
        args.metrics
    } else if !config.cluster.metrics.is_empty() {
        config.cluster.metrics.clone()
    } else {
        vec![DEFAULT_METRICS.to_owned()]
    };
    let checks = diagnose(&DoctorSpec {
        config,
        config_path: args.config.display().to_string(),
        metrics,
        timeout: Duration::from_secs_f64(args.timeout),
    });
    let ok = checks.iter().all(|c| c.status != Status::Fail);
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"ok": ok, "checks": checks}))?
        );
    } else {
        print!("{}", render(&checks));
    }
    if !ok {
        std::process::exit(1);
    }
    Ok(())
}

fn schema(args: SchemaArgs) -> Result<()> {
    let config = ClusterConfig::load(&args.config)?;
    let c = config
        .cassandra
        .with_context(|| format!("{}: no [cassandra] section", args.config.display()))?;
    if args.action == "print" {
        for statement in
            rankmysteps_sinks::cassandra::schema::statements(&c.keyspace, &c.replication_cql())
        {
            println!("{statement};");
        }
        return Ok(());
    }
    rankmysteps_sinks::cassandra::schema::apply(&c)
        .with_context(|| format!("applying the schema at {:?}", c.contact_points))?;
    eprintln!("rankmysteps: schema of keyspace {} applied", c.keyspace);
    Ok(())
}

/// The Cassandra section of `--config`, when given.
fn cassandra_of(
    config: &Option<PathBuf>,
) -> Result<Option<rankmysteps_sinks::cassandra::CassandraConfig>> {
    let Some(path) = config else { return Ok(None) };
    let c = ClusterConfig::load(path)?
        .cassandra
        .with_context(|| format!("{}: no [cassandra] section", path.display()))?;
    Ok(Some(c))
}

fn produce(args: ProduceArgs) -> Result<()> {
    let from_file = match &args.config {
        Some(path) => ClusterConfig::load(path)?.kafka,
        None => ClusterConfig::from_env()?.kafka,
    };
    let mut kafka = from_file.unwrap_or_else(|| rankmysteps_sources::kafka::KafkaConfig {
        brokers: vec!["127.0.0.1:9092".into()],
        topic: "steps".into(),
        properties: Default::default(),
    });
    if let Some(b) = &args.brokers {
        kafka.brokers = b.split(',').map(str::to_owned).collect();
    }
    if let Some(t) = &args.topic {
        kafka.topic = t.clone();
    }
    if !(0.0..=1.0).contains(&args.bad_share) {
        bail!("--bad-share must be between 0 and 1");
    }
    if args.events.is_none() && args.duration.is_none() {
        eprintln!(
            "rankmysteps: producing until Ctrl-C (use --events or --duration to stop by itself)"
        );
    }
    let stop = Arc::new(AtomicBool::new(false));
    stop_on_signal(&stop)?;
    let zone = jiff::tz::TimeZone::get(&args.time_zone)
        .with_context(|| format!("unknown time zone {:?}", args.time_zone))?;
    let spec = rankmysteps::produce::ProduceSpec {
        kafka: kafka.clone(),
        partitions: args.partitions.max(1),
        generator: GeneratorConfig {
            users: args.users.max(1),
            rate: (args.rate > 0).then_some(args.rate),
            duration: args.duration.map(Duration::from_secs_f64),
            max_events: args.events,
            epoch_ms: 1000,
            seed: args.seed,
            format: match args.timestamp_format {
                Format::Naive => TimestampFormat::Naive,
                Format::Rfc3339 => TimestampFormat::Rfc3339,
            },
            event_ids: args.event_ids,
            zone,
        },
        bad_share: args.bad_share,
        progress: Display::quiet_if(args.quiet),
    };
    let report = rankmysteps::produce::produce(spec, stop)?;
    let secs = report.elapsed.as_secs_f64();
    eprintln!(
        "rankmysteps: produced {} records to {} in {:.2}s ({:.0}/s), {} deliberately bad, {} failed",
        report.delivered,
        kafka.topic,
        secs,
        report.delivered as f64 / secs.max(1e-9),
        report.bad,
        report.failed
    );
    if report.failed > 0 {
        bail!("{} records could not be delivered", report.failed);
    }
    Ok(())
}

/// First Ctrl-C (or SIGTERM): set `stop`, so sources end and the last epochs are written;
/// a second one exits at once.
fn stop_on_signal(stop: &Arc<AtomicBool>) -> Result<()> {
    let stop = stop.clone();
    ctrlc::set_handler(move || {
        if stop.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
    })
    .context("installing the Ctrl-C handler")
}

fn day_arg(text: &str) -> Result<rankmysteps_dataflow::event::Day> {
    parse_day(text).with_context(|| format!("--day: {text:?} is not a date of the form YYYY-MM-DD"))
}

fn top(args: TopArgs) -> Result<()> {
    let day = day_arg(&args.day)?;
    let top = match cassandra_of(&args.config)? {
        Some(c) => rankmysteps_sinks::cassandra::CassandraReader::connect(&c)?.top(day, args.k)?,
        None => read_top(&args.out, day, args.k)?,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&top)?);
        return Ok(());
    }
    println!(
        "Top {} of {} ({} users{})",
        top.top.len(),
        top.day,
        top.users,
        if top.is_final { ", final" } else { ", live" }
    );
    println!("{:>5}  {:<36}  {:>10}", "rank", "user", "steps");
    for e in &top.top {
        println!("{:>5}  {:<36}  {:>10}", e.rank, e.user, e.steps);
    }
    Ok(())
}

fn standing(args: StandingArgs) -> Result<()> {
    let day = day_arg(&args.day)?;
    let user = parse_user(&args.user).with_context(|| {
        format!(
            "--user: {:?} is not a UUID (8-4-4-4-12 hex digits)",
            args.user
        )
    })?;
    let found = match cassandra_of(&args.config)? {
        Some(c) => rankmysteps_sinks::cassandra::CassandraReader::connect(&c)?.standing(
            day,
            user,
            args.neighbours,
        )?,
        None => read_standing(&args.out, day, user, args.neighbours)?,
    };
    let Some((s, is_final)) = found else {
        bail!(
            "user {} has no steps on {}",
            format_user(user),
            format_day(day)
        );
    };
    if args.json {
        // The same document as the web API's /api/days/{day}/standing/{user}.
        let v = rankmysteps_web::json::standing_json(day, user, &s, is_final);
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "{} on {}{}",
        format_user(user),
        format_day(day),
        if is_final { " (final)" } else { " (live)" }
    );
    println!("rank {} of {} with {} steps", s.rank, s.users, s.steps);
    match s.gap_up {
        Some(g) => println!("{g} steps behind the next total up"),
        None => println!("at the top"),
    }
    match s.gap_down {
        Some(g) => println!("{g} steps ahead of the next total down"),
        None => println!("no one below"),
    }
    for (u, steps, rank) in s
        .above
        .iter()
        .chain(std::iter::once(&(user, s.steps, s.rank)))
        .chain(&s.below)
    {
        let me = if *u == user { "  <- you" } else { "" };
        println!("{:>5}  {:<36}  {:>10}{me}", rank, format_user(*u), steps);
    }
    Ok(())
}
