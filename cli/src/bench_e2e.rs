//! `rankmysteps bench e2e`: end to end on the real services — sustained throughput from Kafka
//! through a worker into Cassandra, and freshness (a marker event produced → visible in
//! Cassandra's top-k), p50 and p99.
//!
//! It starts a worker (this binary, `worker --config`) on a fresh topic, produces background
//! load at `--rate` with `produce`, and every `--marker-ms` sends one marker event for a
//! dedicated user with the largest allowed steps, so the marker user is always first of its
//! day: the time until `top_by_day` shows the new total is that marker's freshness.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use rankmysteps_dataflow::event::{format_user, Day, MICROS_PER_DAY};
use rankmysteps_sinks::cassandra::CassandraReader;
use rankmysteps_sources::chunk::wall_clock;
use rankmysteps_sources::generator::GeneratorConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

use crate::config::ClusterConfig;
use crate::error::CliError;
use crate::produce::{ensure_topic, produce, ProduceSpec};

/// Arguments of `bench e2e`.
#[derive(Args)]
pub struct E2eArgs {
    /// The deployment (its [kafka] and [cassandra] sections; the topic is replaced by a fresh one).
    #[arg(long, default_value = "cluster.toml")]
    config: PathBuf,
    /// Background load, events per second.
    #[arg(long, default_value_t = 100_000)]
    rate: u64,
    /// Seconds of load.
    #[arg(long, default_value_t = 30.0)]
    seconds: f64,
    /// Users of the background load.
    #[arg(long, default_value_t = 72_000)]
    users: u64,
    /// Milliseconds between a marker's visibility and the next marker (plus a random pause of
    /// up to one epoch).
    #[arg(long, default_value_t = 200)]
    marker_ms: u64,
}

/// Records the freshness of every pending marker whose total `marker` has reached on `day`.
fn poll_standings(
    reader: &CassandraReader,
    day: Day,
    marker: u128,
    pending: &mut VecDeque<(Instant, u64)>,
    standings: &mut Vec<f64>,
) {
    let Some(total) = reader.total(day, marker).ok().flatten() else {
        return;
    };
    while let Some(&(sent, _)) = pending.front().filter(|(_, expected)| *expected <= total) {
        standings.push(sent.elapsed().as_secs_f64());
        pending.pop_front();
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Runs the end-to-end benchmark and prints its figures.
pub fn e2e(args: E2eArgs) -> Result<(), CliError> {
    let mut config = ClusterConfig::load(&args.config)?;
    let mut kafka = config
        .kafka
        .clone()
        .ok_or_else(|| CliError::Setting("bench e2e needs [kafka]".into()))?;
    let cassandra = config
        .cassandra
        .clone()
        .ok_or_else(|| CliError::Setting("bench e2e needs [cassandra]".into()))?;
    kafka.topic = format!("rankmysteps-e2e-{}", wall_clock() / 1_000_000);
    config.kafka = Some(kafka.clone());
    ensure_topic(&kafka, 4)?;
    // The worker reads a copy of the configuration with the fresh topic.
    let text = std::fs::read_to_string(&args.config).map_err(|source| CliError::Io {
        path: args.config.clone(),
        source,
    })?;
    let mut doc: toml::Table =
        toml::from_str(&text).map_err(|e| CliError::Setting(e.to_string()))?;
    if let Some(toml::Value::Table(k)) = doc.get_mut("kafka") {
        k.insert("topic".into(), toml::Value::String(kafka.topic.clone()));
    }
    let worker_config =
        std::env::temp_dir().join(format!("rankmysteps-e2e-{}.toml", std::process::id()));
    std::fs::write(
        &worker_config,
        toml::to_string(&doc).map_err(|e| CliError::Setting(e.to_string()))?,
    )
    .map_err(|source| CliError::Io {
        path: worker_config.clone(),
        source,
    })?;
    let exe = std::env::current_exe().map_err(|e| CliError::Worker(e.to_string()))?;
    rankmysteps_sinks::cassandra::schema::apply(&cassandra)?;
    let mut worker = Command::new(&exe)
        .args(["worker", "--standalone", "--metrics", "off", "--config"])
        .arg(&worker_config)
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| CliError::Worker(format!("starting the worker: {e}")))?;
    std::thread::sleep(Duration::from_secs(3));

    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let spec = ProduceSpec {
            kafka: kafka.clone(),
            partitions: 4,
            generator: GeneratorConfig {
                users: args.users,
                rate: Some(args.rate),
                duration: Some(Duration::from_secs_f64(args.seconds)),
                ..GeneratorConfig::default()
            },
            bad_share: 0.0,
            progress: crate::progress::Display::Off,
        };
        let stop = stop.clone();
        std::thread::spawn(move || produce(spec, stop))
    };

    let marker_user: u128 = 0x0000_0000_0000_4000_8000_0000_0000_0001;
    let key = format_user(marker_user);
    let producer: BaseProducer = kafka
        .client_config()
        .set("linger.ms", "0")
        .create()
        .map_err(|e| CliError::Setting(e.to_string()))?;
    let reader = CassandraReader::connect(&cassandra)?;
    let started = Instant::now();
    let epoch_ms = config.dataflow.epoch_ms;
    let mut rng = rankmysteps_dataflow::random::SplitMix64(wall_clock() as u64);
    let mut freshness = Vec::new();
    let mut standings = Vec::new();
    let mut pending: VecDeque<(Instant, u64)> = VecDeque::new();
    let mut missed = 0;
    let mut expected: u64 = 0;
    let mut current_day: Option<Day> = None;
    while started.elapsed().as_secs_f64() < args.seconds {
        let now = wall_clock();
        let day = now.div_euclid(MICROS_PER_DAY) as Day;
        if current_day != Some(day) {
            current_day = Some(day);
            expected = 0;
            pending.clear();
        }
        let ts =
            jiff::Timestamp::from_microsecond(now).map_err(|e| CliError::Setting(e.to_string()))?;
        let payload = format!(
            "{{\"uuid\":\"{key}\",\"timestamp\":\"{}\",\"steps\":100000}}",
            ts.strftime("%Y-%m-%dT%H:%M:%S%.6fZ")
        );
        producer
            .send(BaseRecord::to(&kafka.topic).key(&key).payload(&payload))
            .map_err(|(e, _)| CliError::Setting(e.to_string()))?;
        let _ = producer.flush(Duration::from_secs(5));
        let sent = Instant::now();
        expected += 100_000;
        let deadline = sent + Duration::from_secs(30);
        pending.push_back((sent, expected));
        // The top-k (written first) decides when the next marker goes; the marker's own total
        // (written by the bulk lane, with the rest of the standings) is watched meanwhile.
        loop {
            poll_standings(&reader, day, marker_user, &mut pending, &mut standings);
            let seen = reader
                .top(day, Some(1))
                .ok()
                .and_then(|t| t.top.first().filter(|r| r.user == key).map(|r| r.steps));
            if seen.is_some_and(|s| s >= expected) {
                freshness.push(sent.elapsed().as_secs_f64());
                break;
            }
            if Instant::now() > deadline {
                missed += 1;
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // A random extra pause of up to one epoch: markers are not sent at a fixed phase of
        // the epochs (which would bias the freshness either way).
        let jitter = rng.below(epoch_ms.max(1));
        std::thread::sleep(Duration::from_millis(args.marker_ms + jitter));
    }
    // The last markers' totals.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !pending.is_empty() && Instant::now() < deadline {
        let day = current_day.unwrap_or_default();
        poll_standings(&reader, day, marker_user, &mut pending, &mut standings);
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::SeqCst);
    let report = load
        .join()
        .map_err(|_| CliError::Worker("producer thread panicked".into()))??;
    let _ = Command::new("kill")
        .args(["-INT", &worker.id().to_string()])
        .status();
    let _ = worker.wait();
    let _ = std::fs::remove_file(&worker_config);
    freshness.sort_by(f64::total_cmp);
    standings.sort_by(f64::total_cmp);
    println!(
        "end to end: {} background events in {:.1} s ({:.0}/s offered), {} markers: freshness \
         (top-k) p50 {:.2} s, p99 {:.2} s, max {:.2} s; the marker's total (standings) p50 \
         {:.2} s, p99 {:.2} s, max {:.2} s; {} not visible within 30 s ({} totals)",
        report.delivered,
        report.elapsed.as_secs_f64(),
        report.delivered as f64 / report.elapsed.as_secs_f64().max(1e-9),
        freshness.len(),
        percentile(&freshness, 0.5),
        percentile(&freshness, 0.99),
        freshness.last().copied().unwrap_or(f64::NAN),
        percentile(&standings, 0.5),
        percentile(&standings, 0.99),
        standings.last().copied().unwrap_or(f64::NAN),
        missed,
        pending.len()
    );
    Ok(())
}
