//! `rankmysteps bench`: reproducible performance measurements (figures in the README).
//!
//! * `core`: generator → parse → dataflow → consolidated deltas on worker 0, in process, with
//!   1 s epochs, at full speed (throughput) and then at a fixed rate (latency); each worker
//!   count runs in a child process so that peak memory is its own.
//! * `replay`: `run --input` on a generated JSON Lines file (10 M events, 1 M users by default)
//!   into the local output directory: the figure to compare with DuckDB on the same file.

use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use rankmysteps_dataflow::output::EpochOutput;
use rankmysteps_dataflow::pipeline::Settings;
use rankmysteps_sinks::local::{LocalDirSink, LocalOptions};
use rankmysteps_sinks::{Sink, SinkError};
use rankmysteps_sources::generator::{user_uuid, GeneratorConfig};
use rankmysteps_sources::parse::ParseConfig;

use crate::error::CliError;
use crate::job::{self, Input, JobReport, JobSpec};

/// Arguments of `rankmysteps bench`.
#[derive(Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    what: BenchCommand,
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Streaming core: generator → parse → dataflow → deltas, 1 s epochs.
    Core(CoreArgs),
    /// One core measurement in this process (used by `core`; prints one JSON line).
    #[command(hide = true)]
    CoreOnce(CoreOnceArgs),
    /// File replay into a local output directory (generates the file if missing).
    Replay(ReplayArgs),
    /// End to end on the real services: Kafka → worker → Cassandra, throughput and freshness.
    E2e(crate::bench_e2e::E2eArgs),
    /// End-to-end throughput of `launch`ed clusters of 1, 2, 4 … processes on loopback, on
    /// the real services: a preloaded topic, consumed, archived and committed.
    Cluster(crate::bench_cluster::ClusterArgs),
    /// Restart time after 1 M, 10 M, 50 M … events on the real services (a worker killed and
    /// started again, from its checkpoint), and that every total stays exact.
    Restart(crate::bench_restart::RestartArgs),
    /// The web page's API and event streams on Cassandra: latency of top and standing at a
    /// steady request rate, and the cost of 1 000 open event streams.
    Web(crate::bench_web::WebArgs),
    /// The writer of `bench web` (generator → dataflow → Cassandra sink), in its own process.
    #[command(hide = true)]
    WebWriter(crate::bench_web::WebWriterArgs),
    /// Memory of the de-duplication window: peak RSS of file replays of the same users with a
    /// unique event_id on every event, for several event counts (each run in its own process).
    Window(WindowArgs),
    /// One replay of `window` in this process (prints one JSON line).
    #[command(hide = true)]
    WindowOnce(WindowOnceArgs),
}

/// Arguments of `bench window`.
#[derive(Args)]
pub struct WindowArgs {
    /// Event counts to replay, comma separated (one generated file each).
    #[arg(long, value_delimiter = ',', default_value = "2000000,8000000")]
    events: Vec<u64>,
    /// Users of every file.
    #[arg(long, default_value_t = 10_000)]
    users: u64,
    /// The de-duplication window.
    #[arg(long, default_value = "60s")]
    window: String,
    /// Lines per epoch (each epoch is 1 s of ingestion time).
    #[arg(long, default_value_t = 10_000)]
    epoch_events: u64,
    /// Worker threads.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Directory of the generated files (`window-<events>.jsonl`) and outputs.
    #[arg(long, default_value = "/var/tmp/rankmysteps-bench-window")]
    dir: PathBuf,
}

/// Arguments of `bench window-once`.
#[derive(Args)]
pub struct WindowOnceArgs {
    #[arg(long)]
    file: PathBuf,
    #[arg(long)]
    out: PathBuf,
    #[arg(long)]
    window: String,
    #[arg(long)]
    epoch_events: u64,
    #[arg(long)]
    workers: usize,
}

/// Arguments of `bench core`.
#[derive(Args)]
pub struct CoreArgs {
    /// Users per day.
    #[arg(long, default_value_t = 1_000_000)]
    users: u64,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 20.0)]
    seconds: f64,
    /// Worker counts to measure, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    workers: Vec<usize>,
    /// Rows of the top-k.
    #[arg(long, default_value_t = 100)]
    k: usize,
    /// Rate of the latency runs as a fraction of the measured throughput.
    #[arg(long, default_value_t = 0.5)]
    latency_load: f64,
}

/// Arguments of `bench core-once`.
#[derive(Args)]
pub struct CoreOnceArgs {
    #[arg(long)]
    users: u64,
    #[arg(long)]
    seconds: f64,
    #[arg(long)]
    workers: usize,
    #[arg(long)]
    k: usize,
    /// Events per second (absent: as fast as possible).
    #[arg(long)]
    rate: Option<u64>,
}

/// Arguments of `bench replay`.
#[derive(Args)]
pub struct ReplayArgs {
    /// The JSON Lines file (generated if it does not exist).
    #[arg(long, default_value = "/var/tmp/rankmysteps-bench-10m.jsonl")]
    file: PathBuf,
    /// Events in a generated file.
    #[arg(long, default_value_t = 10_000_000)]
    events: u64,
    /// Users in a generated file.
    #[arg(long, default_value_t = 1_000_000)]
    users: u64,
    /// Worker threads.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Lines per epoch.
    #[arg(long, default_value_t = 100_000)]
    epoch_events: u64,
    /// Output directory.
    #[arg(long, default_value = "/var/tmp/rankmysteps-bench-out")]
    out: PathBuf,
    /// Keep the inspector's introspection on (timely's and differential's logging, held trace
    /// handles, sizes published every 500 ms), as a worker does by default: measures its cost.
    #[arg(long)]
    introspection: bool,
}

/// Runs a benchmark.
pub fn bench(args: BenchArgs) -> Result<(), CliError> {
    match args.what {
        BenchCommand::Core(a) => core(a),
        BenchCommand::CoreOnce(a) => core_once(a),
        BenchCommand::Replay(a) => replay(a),
        BenchCommand::E2e(a) => crate::bench_e2e::e2e(a),
        BenchCommand::Cluster(a) => crate::bench_cluster::cluster(a),
        BenchCommand::Restart(a) => crate::bench_restart::restart(a),
        BenchCommand::Web(a) => crate::bench_web::web(a),
        BenchCommand::WebWriter(a) => crate::bench_web::writer(a),
        BenchCommand::Window(a) => window(a),
        BenchCommand::WindowOnce(a) => window_once(a),
    }
}

/// A sink that counts what it receives (the deltas reach worker 0, and stop there).
struct CountingSink {
    deltas: u64,
}

impl Sink for CountingSink {
    fn write_epoch(&mut self, out: &EpochOutput) -> Result<(), SinkError> {
        self.deltas +=
            (out.totals.len() + out.top.len() + out.histogram.len() + out.users.len()) as u64;
        Ok(())
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

/// Peak resident memory of this process, in MiB.
fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// CPU seconds (user + system) used by this process so far.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // After the command name: state is field 0, utime 11, stime 12 (clock ticks, 100 Hz).
    (ticks(11) + ticks(12)) / 100.0
}

fn core_once(a: CoreOnceArgs) -> Result<(), CliError> {
    let spec = JobSpec {
        introspection: None,
        linger: None,
        workers: a.workers,
        settings: Settings {
            k: a.k,
            ..Settings::default()
        },
        parse: ParseConfig::default(),
        input: Input::Generator(GeneratorConfig {
            users: a.users,
            rate: a.rate,
            duration: Some(Duration::from_secs_f64(a.seconds)),
            epoch_ms: 1000,
            ..GeneratorConfig::default()
        }),
        max_epochs_ahead: 2,
        cluster: None,
        metrics: None,
        archive: None,
        coalesce: false,
        recovery: None,
        checkpoint: None,
        progress: crate::progress::Display::Off,
    };
    let cpu0 = cpu_seconds();
    let report = job::run(
        spec,
        Box::new(CountingSink { deltas: 0 }),
        Arc::new(AtomicBool::new(false)),
    )?;
    let cpu = cpu_seconds() - cpu0;
    let JobReport {
        stats,
        elapsed,
        mut epoch_latencies,
        ..
    } = report;
    // The first epoch starts mid-way and the last is cut short by the end of the run.
    if epoch_latencies.len() > 2 {
        epoch_latencies.remove(0);
        epoch_latencies.pop();
    }
    epoch_latencies.sort();
    let events = stats.records();
    println!(
        "{}",
        serde_json::json!({
            "workers": a.workers,
            "users": a.users,
            "rate": a.rate,
            "events": events,
            "seconds": elapsed.as_secs_f64(),
            "events_per_sec": events as f64 / elapsed.as_secs_f64(),
            "events_per_cpu_sec": events as f64 / cpu.max(1e-9),
            "cpu_seconds": cpu,
            "latency_p50_ms": percentile(&epoch_latencies, 0.5),
            "latency_p99_ms": percentile(&epoch_latencies, 0.99),
            "epochs": epoch_latencies.len(),
            "peak_rss_mib": peak_rss_mib(),
        })
    );
    Ok(())
}

fn run_child(
    users: u64,
    seconds: f64,
    workers: usize,
    k: usize,
    rate: Option<u64>,
) -> Result<serde_json::Value, CliError> {
    let exe = std::env::current_exe().map_err(|e| CliError::Worker(e.to_string()))?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args([
        "bench",
        "core-once",
        "--users",
        &users.to_string(),
        "--seconds",
        &seconds.to_string(),
    ]);
    cmd.args(["--workers", &workers.to_string(), "--k", &k.to_string()]);
    if let Some(rate) = rate {
        cmd.args(["--rate", &rate.to_string()]);
    }
    let out = cmd.output().map_err(|e| CliError::Worker(e.to_string()))?;
    if !out.status.success() {
        return Err(CliError::Worker(
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ));
    }
    serde_json::from_slice(&out.stdout)
        .map_err(|e| CliError::Worker(format!("bench child output: {e}")))
}

fn core(a: CoreArgs) -> Result<(), CliError> {
    println!(
        "core benchmark: {} users/day, k = {}, 1 s epochs, {} s per run",
        a.users, a.k, a.seconds
    );
    println!("| workers | mode | events/s | events/s per core | CPU s | epoch latency p50 / p99 (ms) | peak RSS (MiB) |");
    println!("|---|---|---|---|---|---|---|");
    for &workers in &a.workers {
        let full = run_child(a.users, a.seconds, workers, a.k, None)?;
        let rate = (full["events_per_sec"].as_f64().unwrap_or(0.0) * a.latency_load) as u64;
        let paced = run_child(a.users, a.seconds, workers, a.k, Some(rate.max(1)))?;
        for (mode, r) in [
            ("full speed", &full),
            (&*format!("paced at {rate}/s"), &paced),
        ] {
            let eps = r["events_per_sec"].as_f64().unwrap_or(0.0);
            println!(
                "| {workers} | {mode} | {:.0} | {:.0} | {:.1} | {:.0} / {:.0} | {:.0} |",
                eps,
                eps / workers as f64,
                r["cpu_seconds"].as_f64().unwrap_or(0.0),
                r["latency_p50_ms"].as_f64().unwrap_or(f64::NAN),
                r["latency_p99_ms"].as_f64().unwrap_or(f64::NAN),
                r["peak_rss_mib"].as_f64().unwrap_or(f64::NAN),
            );
        }
    }
    Ok(())
}

/// Writes `events` JSON Lines over 1 M users spread over three days (naive timestamps, in
/// time order with jitter, a few malformed lines), like the original producers' data.
fn generate_file(path: &PathBuf, events: u64, users: u64) -> Result<(), CliError> {
    let io = |source| CliError::Io {
        path: path.clone(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let mut w = BufWriter::with_capacity(1 << 20, std::fs::File::create(&tmp).map_err(io)?);
    let start = jiff::civil::date(2026, 11, 1).at(0, 0, 0, 0);
    let span_secs = 3 * 86_400;
    let mut rng = rankmysteps_dataflow::random::SplitMix64(0x5EED);
    for i in 0..events {
        let z = rng.next_u64();
        let user = user_uuid(7, z % users);
        let steps = 1 + (z >> 40) % 10;
        let secs = (i * span_secs / events) as i64 - ((z >> 20) % 600) as i64;
        let t = start
            .checked_add(jiff::SignedDuration::from_secs(secs.max(0)))
            .unwrap_or(start);
        if i % 1_000_000 == 999_999 {
            writeln!(w, "{{not json").map_err(io)?;
            continue;
        }
        writeln!(
            w,
            "{{\"uuid\":\"{}\",\"timestamp\":\"{}\",\"steps\":{},\"source\":\"bench\"}}",
            rankmysteps_dataflow::event::format_user(user),
            t.strftime("%Y-%m-%d %H:%M:%S"),
            steps
        )
        .map_err(io)?;
    }
    w.flush().map_err(io)?;
    drop(w);
    std::fs::rename(&tmp, path).map_err(io)
}

fn replay(a: ReplayArgs) -> Result<(), CliError> {
    if !a.file.exists() {
        let t = Instant::now();
        eprintln!(
            "generating {} ({} events, {} users)…",
            a.file.display(),
            a.events,
            a.users
        );
        generate_file(&a.file, a.events, a.users)?;
        eprintln!("generated in {:.1}s", t.elapsed().as_secs_f64());
    }
    let size = std::fs::metadata(&a.file).map(|m| m.len()).unwrap_or(0);
    let spec = JobSpec {
        introspection: a
            .introspection
            .then(|| Arc::new(crate::introspect::Introspection::default())),
        linger: None,
        workers: a.workers,
        settings: Settings::default(),
        parse: ParseConfig::default(),
        input: Input::File {
            path: a.file.clone(),
            epoch_events: a.epoch_events,
        },
        max_epochs_ahead: 4,
        cluster: None,
        metrics: None,
        archive: None,
        coalesce: false,
        recovery: None,
        checkpoint: None,
        progress: crate::progress::Display::Off,
    };
    let sink = LocalDirSink::create(&a.out, LocalOptions::default())?;
    let cpu0 = cpu_seconds();
    let report = job::run(spec, Box::new(sink), Arc::new(AtomicBool::new(false)))?;
    let cpu = cpu_seconds() - cpu0;
    let secs = report.elapsed.as_secs_f64();
    let s = report.stats;
    println!(
        "replay of {} ({:.0} MB, {} lines) with {} workers: {:.2} s wall, {:.2} CPU s, {:.0} events/s, {:.0} events per CPU-second; accepted {}, rejected {}, {} epochs; peak RSS {:.0} MiB; results in {}",
        a.file.display(),
        size as f64 / 1e6,
        report.lines,
        a.workers,
        secs,
        cpu,
        report.lines as f64 / secs,
        report.lines as f64 / cpu.max(1e-9),
        s.accepted,
        s.rejected_total(),
        report.epochs,
        peak_rss_mib(),
        a.out.display()
    );
    Ok(())
}

/// Writes `events` JSON Lines of `users` users, each with a unique `event_id`, RFC 3339
/// timestamps moving forward one second per 10 000 events from 2026-11-01T00:00:00Z (all within
/// two days, none closing: the days' totals stay bounded by the users).
fn generate_window_file(path: &PathBuf, events: u64, users: u64) -> Result<(), CliError> {
    let io = |source| CliError::Io {
        path: path.clone(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let mut w = BufWriter::with_capacity(1 << 20, std::fs::File::create(&tmp).map_err(io)?);
    let start = jiff::Timestamp::from_second(1_793_491_200).expect("2026-11-01T00:00:00Z");
    let mut rng = rankmysteps_dataflow::random::SplitMix64(0x51D0);
    for i in 0..events {
        let z = rng.next_u64();
        let user = user_uuid(7, z % users);
        let t = start
            .checked_add(jiff::SignedDuration::from_secs((i / 10_000) as i64))
            .unwrap_or(start);
        writeln!(
            w,
            "{{\"uuid\":\"{}\",\"timestamp\":\"{}\",\"steps\":{},\"event_id\":\"ev-{i}\"}}",
            rankmysteps_dataflow::event::format_user(user),
            t.strftime("%Y-%m-%dT%H:%M:%SZ"),
            1 + (z >> 40) % 10
        )
        .map_err(io)?;
    }
    w.flush().map_err(io)?;
    drop(w);
    std::fs::rename(&tmp, path).map_err(io)
}

fn window(a: WindowArgs) -> Result<(), CliError> {
    std::fs::create_dir_all(&a.dir).map_err(|source| CliError::Io {
        path: a.dir.clone(),
        source,
    })?;
    println!(
        "de-duplication window: {} users, unique event_ids, window {}, {} lines (1 s) per epoch, {} workers",
        a.users, a.window, a.epoch_events, a.workers
    );
    println!("| events | epochs | accepted | duplicate | wall s | peak RSS (MiB) |");
    println!("|---|---|---|---|---|---|");
    let mut peaks = Vec::new();
    for &events in &a.events {
        let file = a.dir.join(format!("window-{events}.jsonl"));
        if !file.exists() {
            generate_window_file(&file, events, a.users)?;
        }
        let exe = std::env::current_exe().map_err(|e| CliError::Worker(e.to_string()))?;
        let out = std::process::Command::new(exe)
            .args(["bench", "window-once", "--file"])
            .arg(&file)
            .arg("--out")
            .arg(a.dir.join(format!("out-{events}")))
            .args(["--window", &a.window])
            .args(["--epoch-events", &a.epoch_events.to_string()])
            .args(["--workers", &a.workers.to_string()])
            .output()
            .map_err(|e| CliError::Worker(e.to_string()))?;
        if !out.status.success() {
            return Err(CliError::Worker(
                String::from_utf8_lossy(&out.stderr).into_owned(),
            ));
        }
        let r: serde_json::Value = serde_json::from_slice(&out.stdout)
            .map_err(|e| CliError::Worker(format!("bench child output: {e}")))?;
        let peak = r["peak_rss_mib"].as_f64().unwrap_or(f64::NAN);
        peaks.push(peak);
        println!(
            "| {events} | {} | {} | {} | {:.1} | {:.0} |",
            r["epochs"],
            r["accepted"],
            r["duplicate"],
            r["seconds"].as_f64().unwrap_or(0.0),
            peak
        );
    }
    if let (Some(first), Some(last)) = (peaks.first(), peaks.last()) {
        println!(
            "peak RSS of the largest run / the smallest: {:.2} (flat within 30 %: {})",
            last / first,
            if last / first <= 1.3 { "yes" } else { "no" }
        );
    }
    Ok(())
}

fn window_once(a: WindowOnceArgs) -> Result<(), CliError> {
    let dedup_window = crate::config::parse_duration(&a.window)
        .ok_or_else(|| CliError::Setting(format!("--window: cannot read {:?}", a.window)))?;
    let spec = JobSpec {
        introspection: None,
        linger: None,
        workers: a.workers,
        settings: Settings {
            dedup_window,
            ..Settings::default()
        },
        parse: ParseConfig {
            // The file's timestamps are from 2026-11: none is in the future of a later clock.
            ..ParseConfig::default()
        },
        input: Input::File {
            path: a.file.clone(),
            epoch_events: a.epoch_events,
        },
        max_epochs_ahead: 4,
        cluster: None,
        metrics: None,
        archive: None,
        coalesce: false,
        recovery: None,
        checkpoint: None,
        progress: crate::progress::Display::Off,
    };
    let sink = LocalDirSink::create(&a.out, LocalOptions::default())?;
    let report = job::run(spec, Box::new(sink), Arc::new(AtomicBool::new(false)))?;
    println!(
        "{}",
        serde_json::json!({
            "epochs": report.epochs,
            "accepted": report.stats.accepted,
            "duplicate": report.stats.duplicate,
            "seconds": report.elapsed.as_secs_f64(),
            "peak_rss_mib": peak_rss_mib(),
        })
    );
    Ok(())
}
