//! `rankmysteps bench cluster`: end-to-end throughput of a cluster of 1, 2, 4 … processes on
//! this machine, on the real services.
//!
//! For each process count N it loads a fresh topic with `--events` generated events, writes a
//! copy of the deployment with N hosts on loopback (127.0.0.1 … 127.0.0.N, one thread each, on
//! free ports), runs `rankmysteps launch` on it, and waits until the progress record counts
//! every event: Kafka → the dataflow → the archive in S3 → Cassandra, committed. It prints the
//! wall time from the launch, the rate from the first committed epoch to the last, and the CPU
//! time of the worker processes (from /proc, read just before they are stopped).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use rankmysteps_sinks::cassandra::CassandraReader;
use rankmysteps_sources::chunk::wall_clock;
use rankmysteps_sources::generator::GeneratorConfig;

use crate::config::ClusterConfig;
use crate::error::CliError;
use crate::produce::{produce, ProduceSpec};

/// Arguments of `bench cluster`.
#[derive(Args)]
pub struct ClusterArgs {
    /// The deployment: its [kafka], [cassandra], [s3] and [dataflow] sections (the topic and
    /// [cluster] are replaced for every run).
    #[arg(long, default_value = "cluster.toml")]
    config: PathBuf,
    /// The process counts to measure, comma separated (at most 254: one loopback address
    /// each).
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    processes: Vec<usize>,
    /// Events loaded into each run's topic before the cluster starts.
    #[arg(long, default_value_t = 2_000_000)]
    events: u64,
    /// Users of the events.
    #[arg(long, default_value_t = 100_000)]
    users: u64,
    /// Partitions of each run's topic.
    #[arg(long, default_value_t = 8)]
    partitions: u32,
    /// Give up on a run after this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
}

/// A free port on `ip`.
fn free_port(ip: &str) -> Result<u16, CliError> {
    std::net::TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| CliError::Setting(format!("no free port on {ip}: {e}")))
}

/// CPU seconds (user + system) of the live process `pid`, from /proc.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name (which may hold spaces) start after its ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // USER_HZ is 100 on Linux.
    Some(ticks as f64 / 100.0)
}

/// One run's figures.
struct Run {
    processes: usize,
    wall: f64,
    steady: f64,
    cpu: f64,
    restarts: usize,
}

/// Runs the benchmark and prints a line per process count, then a table.
pub fn cluster(args: ClusterArgs) -> Result<(), CliError> {
    let base = ClusterConfig::load(&args.config)?;
    let kafka = base
        .kafka
        .clone()
        .ok_or_else(|| CliError::Setting("bench cluster needs [kafka]".into()))?;
    let cassandra = base
        .cassandra
        .clone()
        .ok_or_else(|| CliError::Setting("bench cluster needs [cassandra]".into()))?;
    let text = std::fs::read_to_string(&args.config).map_err(|source| CliError::Io {
        path: args.config.clone(),
        source,
    })?;
    let exe = std::env::current_exe().map_err(|e| CliError::Worker(e.to_string()))?;
    rankmysteps_sinks::cassandra::schema::apply(&cassandra)?;
    let reader = CassandraReader::connect(&cassandra)?;
    let dir =
        std::env::temp_dir().join(format!("rankmysteps-bench-cluster-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|source| CliError::Io {
        path: dir.clone(),
        source,
    })?;
    let mut runs = Vec::new();
    for &n in &args.processes {
        if n == 0 || n > 254 {
            return Err(CliError::Setting(format!(
                "--processes: {n} is not in 1..=254"
            )));
        }
        let mut kafka = kafka.clone();
        kafka.topic = format!("rankmysteps-bench-cluster-{n}-{}", wall_clock() / 1_000_000);
        eprintln!(
            "bench cluster: loading {} events into {}",
            args.events, kafka.topic
        );
        let loaded = produce(
            ProduceSpec {
                kafka: kafka.clone(),
                partitions: args.partitions,
                generator: GeneratorConfig {
                    users: args.users,
                    rate: None,
                    max_events: Some(args.events),
                    ..GeneratorConfig::default()
                },
                bad_share: 0.0,
                progress: crate::progress::Display::Off,
            },
            Arc::new(AtomicBool::new(false)),
        )?;
        if loaded.delivered != args.events {
            return Err(CliError::Setting(format!(
                "only {} of {} events were delivered to Kafka",
                loaded.delivered, args.events
            )));
        }
        // The deployment with this run's topic and hosts.
        let mut doc: toml::Table =
            toml::from_str(&text).map_err(|e| CliError::Setting(e.to_string()))?;
        if let Some(toml::Value::Table(k)) = doc.get_mut("kafka") {
            k.insert("topic".into(), toml::Value::String(kafka.topic.clone()));
        }
        let mut hosts = Vec::new();
        let mut metrics = Vec::new();
        for i in 1..=n {
            let ip = format!("127.0.0.{i}");
            hosts.push(toml::Value::String(format!("{ip}:{}", free_port(&ip)?)));
            metrics.push(toml::Value::String(format!("{ip}:{}", free_port(&ip)?)));
        }
        let mut cluster = toml::Table::new();
        cluster.insert("hosts".into(), toml::Value::Array(hosts));
        cluster.insert("metrics".into(), toml::Value::Array(metrics));
        cluster.insert("threads".into(), toml::Value::Integer(1));
        doc.insert("cluster".into(), toml::Value::Table(cluster));
        let config = dir.join(format!("cluster-{n}.toml"));
        let events_log = dir.join(format!("launch-{n}.log"));
        let io = |path: &PathBuf| {
            let path = path.clone();
            move |source| CliError::Io { path, source }
        };
        std::fs::write(
            &config,
            toml::to_string(&doc).map_err(|e| CliError::Setting(e.to_string()))?,
        )
        .map_err(io(&config))?;
        let started = Instant::now();
        let mut launcher = Command::new(&exe)
            .args(["launch", "--config"])
            .arg(&config)
            .arg("--log-dir")
            .arg(dir.join(format!("logs-{n}")))
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(&events_log).map_err(io(&events_log))?)
            .spawn()
            .map_err(|e| CliError::Worker(format!("starting launch: {e}")))?;
        let job = crate::recovery::progress_job(&kafka.topic);
        let mut first: Option<(Instant, u64)> = None;
        let deadline = started + Duration::from_secs(args.timeout);
        let outcome = loop {
            let counted = reader
                .progress(&job)
                .ok()
                .flatten()
                .map(|p| rankmysteps_dataflow::output::Stats::from(&p.stats).records());
            if let Some(c) = counted {
                first.get_or_insert((Instant::now(), c));
                if c >= args.events {
                    break Ok(Instant::now());
                }
            }
            if Instant::now() > deadline {
                break Err(CliError::Setting(format!(
                    "{n} processes: not every event committed within {} s (counted {counted:?}); \
                     the launcher's events are in {}",
                    args.timeout,
                    events_log.display()
                )));
            }
            if let Ok(Some(status)) = launcher.try_wait() {
                break Err(CliError::Worker(format!(
                    "launch ended ({status}); its events are in {}",
                    events_log.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let events = std::fs::read_to_string(&events_log).unwrap_or_default();
        let cpu: f64 = crate::launch::started_pids(&events)
            .into_values()
            .filter_map(cpu_seconds)
            .sum();
        let _ = Command::new("kill")
            .args(["-TERM", &launcher.id().to_string()])
            .status();
        let _ = launcher.wait();
        let done = outcome?;
        let (first_at, first_count) = first.unwrap_or((started, 0));
        let run = Run {
            processes: n,
            wall: done.duration_since(started).as_secs_f64(),
            steady: (args.events - first_count) as f64
                / done.duration_since(first_at).as_secs_f64().max(1e-3),
            cpu,
            restarts: events.matches("restarting every process in").count(),
        };
        println!(
            "bench cluster: {n} processes: {} events committed in {:.1} s from the launch \
             ({:.0} events/s), {:.0} events/s from the first committed epoch to the last; \
             workers' CPU {:.1} s ({:.0} events per CPU-second); {} restarts",
            args.events,
            run.wall,
            args.events as f64 / run.wall,
            run.steady,
            run.cpu,
            args.events as f64 / run.cpu.max(1e-3),
            run.restarts
        );
        runs.push(run);
    }
    println!("| processes | wall from launch | events/s (whole run) | events/s (steady) | workers' CPU-s | events per CPU-s |");
    println!("|---|---|---|---|---|---|");
    for r in &runs {
        println!(
            "| {} | {:.1} s | {:.0} | {:.0} | {:.1} | {:.0} |",
            r.processes,
            r.wall,
            args.events as f64 / r.wall,
            r.steady,
            r.cpu,
            args.events as f64 / r.cpu.max(1e-3)
        );
    }
    Ok(())
}
