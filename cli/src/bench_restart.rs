//! `rankmysteps bench restart`: how long a worker takes to restart after 1 M, 10 M, 50 M …
//! events, on the real services, and whether the result stays exact.
//!
//! For each event count N it loads a fresh topic with N generated events (the same users
//! throughout, all of today), runs `worker` on a fresh keyspace and archive prefix until the
//! progress record counts all N, lets it take a checkpoint of the idle state, kills it with
//! SIGKILL, loads `--after` more events, and starts it again: the **restart time** is from that
//! start until the progress record counts N + `--after` (the restart plan, the checkpoint's
//! load, the replay of the archive after it, and the new events). Then every user's total of
//! every day in Cassandra is compared with the totals of the events produced, computed here
//! with the same parser. With `--full-replay-upto`, runs up to that size are measured again
//! without checkpoints (`checkpoint_interval = "0s"`): the replay of every open day's archive
//! that checkpoints avoid.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use rankmysteps_dataflow::event::{format_user, Day, User};
use rankmysteps_sinks::cassandra::{CassandraConfig, CassandraReader};
use rankmysteps_sources::chunk::wall_clock;
use rankmysteps_sources::generator::{Generator, GeneratorConfig};
use rankmysteps_sources::kafka::KafkaConfig;
use rankmysteps_sources::parse::{ParseConfig, Parser};
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

use crate::config::ClusterConfig;
use crate::error::CliError;

/// Arguments of `bench restart`.
#[derive(Args)]
pub struct RestartArgs {
    /// The deployment: its [kafka], [cassandra], [s3] and [dataflow] sections (the topic, the
    /// keyspace, the archive prefix and the checkpoint interval are replaced for every run; one
    /// process, `--threads` threads).
    #[arg(long, default_value = "cluster.local.toml")]
    config: PathBuf,
    /// The event counts to measure, comma separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1000000,10000000,50000000"
    )]
    events: Vec<u64>,
    /// Users of the events (the open state a checkpoint holds).
    #[arg(long, default_value_t = 100_000)]
    users: u64,
    /// Events loaded after the kill, which the restarted worker must count.
    #[arg(long, default_value_t = 10_000)]
    after: u64,
    /// Partitions of each run's topic.
    #[arg(long, default_value_t = 4)]
    partitions: u32,
    /// Worker threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// The checkpoint interval of the runs with checkpoints.
    #[arg(long, default_value = "5s")]
    checkpoint_interval: String,
    /// Also measure, for event counts up to this one, a restart without checkpoints.
    #[arg(long, default_value_t = 0)]
    full_replay_upto: u64,
    /// Give up on a run after this many seconds.
    #[arg(long, default_value_t = 3600)]
    timeout: u64,
}

/// Per (day, user): the total of the events produced.
type Tally = BTreeMap<(Day, User), u64>;

/// Produces `n` events of `generator` (positions `first..first + n`) into `kafka`, keyed by
/// user, and adds each one's steps to `tally` (parsed as the worker parses them).
fn load(
    kafka: &KafkaConfig,
    generator: &mut Generator,
    parser: &mut Parser,
    first: u64,
    n: u64,
    tally: &mut Tally,
) -> Result<(), CliError> {
    let kafka_error = |e: KafkaError| CliError::Setting(format!("kafka: {e}"));
    let producer: ThreadedProducer<DefaultProducerContext> = kafka
        .client_config()
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("batch.num.messages", "10000")
        .set("compression.type", "lz4")
        .create()
        .map_err(kafka_error)?;
    let mut line = Vec::with_capacity(160);
    let mut timestamp = generator.timestamp_now();
    let started = Instant::now();
    let mut shown = Instant::now();
    for i in first..first + n {
        if i % 4096 == 0 {
            timestamp = generator.timestamp_now();
        }
        line.clear();
        let user = generator.render(&timestamp, i, &mut line);
        let parsed = parser
            .parse(&line, wall_clock())
            .map_err(|e| CliError::Setting(format!("a generated event does not parse: {e:?}")))?;
        *tally.entry((parsed.day, parsed.user)).or_insert(0) += u64::from(parsed.steps);
        let key = format_user(user);
        crate::produce::send_waiting(
            &producer,
            BaseRecord::to(&kafka.topic).key(&key).payload(&line[..]),
        )?;
        if shown.elapsed() > Duration::from_secs(10) {
            shown = Instant::now();
            eprintln!(
                "bench restart: loaded {} of {n} events ({:.0}/s)",
                i - first,
                (i - first) as f64 / started.elapsed().as_secs_f64()
            );
        }
    }
    producer
        .flush(Duration::from_secs(120))
        .map_err(kafka_error)?;
    Ok(())
}

/// Starts `worker` on `config`, its stderr appended to `log`.
fn start_worker(exe: &Path, config: &Path, log: &Path) -> Result<Child, CliError> {
    let err = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|source| CliError::Io {
            path: log.to_owned(),
            source,
        })?;
    Command::new(exe)
        .args(["worker", "--standalone", "--metrics", "off", "--config"])
        .arg(config)
        .stdin(Stdio::null())
        .stderr(err)
        .spawn()
        .map_err(|e| CliError::Worker(format!("starting the worker: {e}")))
}

/// Waits until the progress record of `job` counts `n` records; the time it took.
fn wait_counted(
    reader: &CassandraReader,
    job: &str,
    n: u64,
    worker: &mut Child,
    timeout: Duration,
    log: &Path,
) -> Result<Duration, CliError> {
    let started = Instant::now();
    loop {
        let counted = reader
            .progress(job)
            .ok()
            .flatten()
            .map(|p| rankmysteps_dataflow::output::Stats::from(&p.stats).records());
        if counted == Some(n) {
            return Ok(started.elapsed());
        }
        if counted.is_some_and(|c| c > n) {
            return Err(CliError::Setting(format!(
                "the progress record counts {counted:?} records of {n}: doubled"
            )));
        }
        if let Ok(Some(status)) = worker.try_wait() {
            return Err(CliError::Worker(format!(
                "the worker ended ({status}); its log is {}",
                log.display()
            )));
        }
        if started.elapsed() > timeout {
            return Err(CliError::Setting(format!(
                "not all {n} records counted within {} s (counted {counted:?}); the worker's \
                 log is {}",
                timeout.as_secs(),
                log.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One measured restart.
struct Run {
    events: u64,
    checkpoints: bool,
    consumed: Duration,
    restart: Duration,
    replayed: String,
    state: String,
}

/// Runs `bench restart`.
pub fn restart(args: RestartArgs) -> Result<(), CliError> {
    let base = ClusterConfig::load(&args.config)?;
    let kafka = base
        .kafka
        .clone()
        .ok_or_else(|| CliError::Setting("bench restart needs [kafka]".into()))?;
    let cassandra = base
        .cassandra
        .clone()
        .ok_or_else(|| CliError::Setting("bench restart needs [cassandra]".into()))?;
    if base.s3.is_none() {
        return Err(CliError::Setting("bench restart needs [s3]".into()));
    }
    let text = std::fs::read_to_string(&args.config).map_err(|source| CliError::Io {
        path: args.config.clone(),
        source,
    })?;
    let exe = std::env::current_exe().map_err(|e| CliError::Worker(e.to_string()))?;
    let dir =
        std::env::temp_dir().join(format!("rankmysteps-bench-restart-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|source| CliError::Io {
        path: dir.clone(),
        source,
    })?;
    let parse = ParseConfig {
        max_steps: base.dataflow.max_steps_per_event,
        max_clock_skew: base.dataflow.skew_micros()?,
        time_zone: base.dataflow.zone()?,
    };
    let timeout = Duration::from_secs(args.timeout);
    let mut plan: Vec<(u64, bool)> = args.events.iter().map(|&n| (n, true)).collect();
    plan.extend(
        args.events
            .iter()
            .filter(|&&n| n <= args.full_replay_upto)
            .map(|&n| (n, false)),
    );
    let mut runs = Vec::new();
    for (n, checkpoints) in plan {
        let stamp = wall_clock() / 1_000_000;
        let name = format!("rms-bench-restart-{n}-{}-{stamp}", u8::from(checkpoints));
        let mut kafka = kafka.clone();
        kafka.topic = name.clone();
        crate::produce::ensure_topic(&kafka, args.partitions)?;
        let cassandra = CassandraConfig {
            keyspace: name.replace('-', "_"),
            ..cassandra.clone()
        };
        rankmysteps_sinks::cassandra::schema::apply(&cassandra)?;
        let reader = CassandraReader::connect(&cassandra)?;
        // This run's deployment.
        let mut doc: toml::Table =
            toml::from_str(&text).map_err(|e| CliError::Setting(e.to_string()))?;
        let table = |doc: &mut toml::Table, name: &str| -> Result<toml::Table, CliError> {
            match doc.remove(name) {
                Some(toml::Value::Table(t)) => Ok(t),
                None => Ok(toml::Table::new()),
                Some(_) => Err(CliError::Setting(format!("[{name}] is not a table"))),
            }
        };
        let mut k = table(&mut doc, "kafka")?;
        k.insert("topic".into(), toml::Value::String(name.clone()));
        doc.insert("kafka".into(), toml::Value::Table(k));
        let mut c = table(&mut doc, "cassandra")?;
        c.insert(
            "keyspace".into(),
            toml::Value::String(cassandra.keyspace.clone()),
        );
        doc.insert("cassandra".into(), toml::Value::Table(c));
        let mut s = table(&mut doc, "s3")?;
        s.insert(
            "prefix".into(),
            toml::Value::String(format!("bench/{name}/")),
        );
        doc.insert("s3".into(), toml::Value::Table(s));
        let mut d = table(&mut doc, "dataflow")?;
        d.insert(
            "checkpoint_interval".into(),
            toml::Value::String(if checkpoints {
                args.checkpoint_interval.clone()
            } else {
                "0s".into()
            }),
        );
        doc.insert("dataflow".into(), toml::Value::Table(d));
        let mut cl = table(&mut doc, "cluster")?;
        cl.insert(
            "threads".into(),
            toml::Value::Integer(args.threads.max(1) as i64),
        );
        doc.insert("cluster".into(), toml::Value::Table(cl));
        let config = dir.join(format!("{name}.toml"));
        let log = dir.join(format!("{name}.log"));
        std::fs::write(
            &config,
            toml::to_string(&doc).map_err(|e| CliError::Setting(e.to_string()))?,
        )
        .map_err(|source| CliError::Io {
            path: config.clone(),
            source,
        })?;
        let job = crate::recovery::progress_job(&name);
        let interval_s = if checkpoints {
            crate::config::parse_duration(&args.checkpoint_interval).unwrap_or(0) as f64 / 1e6
        } else {
            0.0
        };

        eprintln!("bench restart: {name}: loading {n} events");
        let mut generator = Generator::new(
            GeneratorConfig {
                users: args.users,
                rate: None,
                seed: stamp as u64,
                ..GeneratorConfig::default()
            },
            0,
            1,
            Instant::now(),
            Arc::new(AtomicBool::new(false)),
        );
        let mut parser = Parser::new(parse.clone());
        let mut tally = Tally::new();
        load(&kafka, &mut generator, &mut parser, 0, n, &mut tally)?;
        let mut worker = start_worker(&exe, &config, &log)?;
        let consumed = wait_counted(&reader, &job, n, &mut worker, timeout, &log)?;
        eprintln!(
            "bench restart: {name}: {n} events consumed and committed in {:.1} s",
            consumed.as_secs_f64()
        );
        // A checkpoint of the idle state (one is taken every interval), then the crash.
        std::thread::sleep(Duration::from_secs_f64(2.0 * interval_s + 1.0));
        let _ = worker.kill();
        let _ = worker.wait();
        load(
            &kafka,
            &mut generator,
            &mut parser,
            n,
            args.after,
            &mut tally,
        )?;
        let before = std::fs::read_to_string(&log).unwrap_or_default().len();
        let started = Instant::now();
        let mut worker = start_worker(&exe, &config, &log)?;
        let waited = wait_counted(&reader, &job, n + args.after, &mut worker, timeout, &log);
        let restart = started.elapsed();
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let said = &text[before.min(text.len())..];
        let line_of = |needle: &str| {
            said.lines()
                .rev()
                .find(|l| l.contains(needle))
                .map(|l| l.trim_start_matches("rankmysteps: ").to_owned())
                .unwrap_or_else(|| "-".into())
        };
        let replayed = line_of("restart replay:");
        let state =
            line_of("state from the checkpoint").replace("state from the checkpoint", "checkpoint");
        // Every user's total of every day equals the events produced.
        let exact = waited.and_then(|_| {
            let mut days: BTreeMap<Day, BTreeMap<User, u64>> = BTreeMap::new();
            for (&(day, user), &t) in &tally {
                days.entry(day).or_default().insert(user, t);
            }
            for (day, expected) in &days {
                let (listing, _) = reader.day_rows(*day, expected.len() + 1)?;
                let got: BTreeMap<User, u64> = listing.into_iter().collect();
                if &got != expected {
                    let differ = expected
                        .iter()
                        .filter(|(u, t)| got.get(u) != Some(t))
                        .count();
                    return Err(CliError::Setting(format!(
                        "{name}: day {day}: {differ} of {} users' totals differ from the events \
                         produced ({} users in Cassandra)",
                        expected.len(),
                        got.len()
                    )));
                }
            }
            Ok(())
        });
        let _ = Command::new("kill")
            .args(["-INT", &worker.id().to_string()])
            .status();
        let _ = worker.wait();
        exact?;
        println!(
            "bench restart: {n} events, checkpoints {}: restart {:.2} s (consumed in {:.1} s); \
             {replayed}; {state}; every total exact",
            if checkpoints { "on" } else { "off" },
            restart.as_secs_f64(),
            consumed.as_secs_f64()
        );
        runs.push(Run {
            events: n,
            checkpoints,
            consumed,
            restart,
            replayed,
            state,
        });
    }
    println!("| events before the kill | checkpoints | consumed in | restart time | restart replay | restored state |");
    println!("|---|---|---|---|---|---|");
    for r in &runs {
        println!(
            "| {} | {} | {:.1} s | {:.2} s | {} | {} |",
            r.events,
            if r.checkpoints {
                "every ".to_owned() + &args.checkpoint_interval
            } else {
                "off".into()
            },
            r.consumed.as_secs_f64(),
            r.restart.as_secs_f64(),
            r.replayed,
            r.state
        );
    }
    Ok(())
}
