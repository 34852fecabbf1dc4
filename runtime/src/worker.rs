//! One process of a deployment (`rankmysteps worker`, and each process `launch` starts): wired
//! from `cluster.toml`. [`Worker::prepare`] connects to the services, claims this start's
//! generation, plans the restart from the progress record and checks that Kafka still holds
//! everything from there on; [`Worker::run`] runs the job until `stop` (or a failure).
//!
//! Two are split so that the caller can say what the restart will do before it starts (the CLI
//! prints it; this module prints nothing).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rankmysteps_dataflow::pipeline::Settings;
use rankmysteps_sinks::local::{LocalDirSink, LocalOptions};
use rankmysteps_sinks::{Fanout, Sink};
use rankmysteps_sources::kafka::KafkaConfig;
use rankmysteps_sources::parse::ParseConfig;

use crate::config::{parse_duration, ClusterConfig};
use crate::error::{context, RuntimeError};
use crate::introspect::{Capture, Introspection};
use crate::job::{self, ClusterPlace, Input, JobReport, JobSpec};
use crate::metrics::{Measured, Metrics};
use crate::progress::Display;
use crate::recovery::{self, Recovery, Share};

/// Where a process serves `/metrics` and `/debug/` when neither the options nor `[cluster]
/// metrics` say.
pub const DEFAULT_METRICS: &str = "127.0.0.1:9898";

/// How often every process checks the topic's partition count (a partition added while the
/// job runs must not go unread).
const TOPIC_CHECK: Duration = Duration::from_secs(10);

/// How to run one process (the `worker` command's options).
pub struct WorkerOptions {
    /// The deployment description's file (named in errors).
    pub config_path: PathBuf,
    /// The deployment description.
    pub config: ClusterConfig,
    /// This process's index in `[cluster] hosts`.
    pub process: usize,
    /// Run this process alone, as if `[cluster] hosts` listed only it.
    pub standalone: bool,
    /// Worker threads (`None`: `[cluster] threads`).
    pub workers: Option<usize>,
    /// Also write the local output directory (alone only: refused in a cluster).
    pub out: Option<PathBuf>,
    /// The metrics address (`"off"`: none; `None`: `[cluster] metrics`, else
    /// [`DEFAULT_METRICS`]).
    pub metrics: Option<String>,
    /// Keep the inspector's data (timely logging, held traces, `/debug/`).
    pub introspection: bool,
    /// Also write every timely log event to this file.
    pub capture: Option<PathBuf>,
    /// Show no progress of the restart's replay.
    pub quiet: bool,
    /// The de-duplication window (`None`: `[dataflow] dedup_window`), e.g. `1h`.
    pub dedup_window: Option<String>,
}

/// A process ready to run: its services connected, its generation claimed, its restart
/// planned, its metrics served.
pub struct Worker {
    /// This process's index.
    pub process: usize,
    /// The topic consumed.
    pub topic: String,
    /// Its partitions at the start.
    pub partitions: u32,
    /// Worker threads.
    pub workers: usize,
    /// This start's generation (with `[cassandra]`).
    pub generation: Option<u64>,
    kafka: KafkaConfig,
    spec: JobSpec,
    sink: Measured,
    metrics: Arc<Metrics>,
    introspection: Option<Arc<Introspection>>,
    stop: Arc<AtomicBool>,
}

impl Worker {
    /// Connects, claims a generation, plans the restart and checks the Kafka positions it
    /// resumes from (see the module docs). `stop`, once set, ends the job after its current
    /// epoch, and the retries of a store that is down.
    pub fn prepare(opts: WorkerOptions, stop: Arc<AtomicBool>) -> Result<Worker, RuntimeError> {
        let WorkerOptions {
            config_path,
            config,
            process,
            standalone,
            workers,
            out,
            metrics: metrics_addr,
            introspection,
            capture,
            quiet,
            dedup_window,
        } = opts;
        let df = &config.dataflow;
        let kafka = config.kafka.clone().ok_or_else(|| RuntimeError::Config {
            path: config_path.clone(),
            detail: "a worker needs a [kafka] section".into(),
        })?;
        let partitions =
            rankmysteps_sources::kafka::partition_count(&kafka, Duration::from_secs(15)).map_err(
                |e| {
                    context(
                        e,
                        format!("reading the partitions of topic {:?}", kafka.topic),
                    )
                },
            )?;
        let hosts = if standalone {
            &config.cluster.hosts[..config.cluster.hosts.len().min(1)]
        } else {
            &config.cluster.hosts[..]
        };
        let mut cluster = (hosts.len() > 1).then(|| ClusterPlace {
            process,
            addresses: hosts.to_vec(),
            generation: None,
        });
        if cluster.is_some() && out.is_some() {
            return Err(RuntimeError::Setting(
                "--out writes the whole output to one local directory, but in a cluster each \
                 process writes its own share (design §7): use --out with --standalone, or \
                 read the results from Cassandra"
                    .into(),
            ));
        }
        if cluster
            .as_ref()
            .is_some_and(|c| c.process >= c.addresses.len())
        {
            return Err(RuntimeError::Setting(format!(
                "--process {process} but [cluster] hosts lists {} processes",
                hosts.len()
            )));
        }
        // Alone, this is process 0 whatever --process said ("ignored when hosts lists at most
        // one").
        let process = if cluster.is_some() { process } else { 0 };
        let workers = workers.unwrap_or(config.cluster.threads).max(1);
        let metrics = Arc::new(Metrics::default());
        let introspection = match (capture, introspection) {
            (_, false) => None,
            (None, true) => Some(Introspection::default()),
            (Some(path), true) => {
                let capture = Capture::create(&path).map_err(|source| RuntimeError::Os {
                    what: format!("--capture: cannot create {}", path.display()),
                    source,
                })?;
                Some(Introspection::with_capture(capture))
            }
        }
        .map(|i| Arc::new(i.with_metrics(metrics.clone())));
        let metrics_addr = metrics_addr
            .or_else(|| config.cluster.metrics.get(process).cloned())
            .unwrap_or_else(|| DEFAULT_METRICS.to_owned());
        if metrics_addr != "off" {
            let os = |what: &str, source: std::io::Error| RuntimeError::Os {
                what: format!("metrics: cannot {what} on {metrics_addr}"),
                source,
            };
            let listener =
                std::net::TcpListener::bind(&metrics_addr).map_err(|e| os("listen", e))?;
            metrics
                .serve(listener, introspection.clone())
                .map_err(|e| os("serve", e))?;
        }
        let grace = df.grace_micros()?;
        let skew = df.skew_micros()?;
        let dedup_window = match &dedup_window {
            Some(text) => parse_duration(text).ok_or_else(|| {
                RuntimeError::Setting(format!(
                    "--dedup-window: cannot read {text:?} as a duration (e.g. 1h, 60s)"
                ))
            })?,
            None => df.dedup_window_micros()?,
        };
        let epoch_ms = df.epoch_ms.max(1);
        // One connection to the archive, for the restart and the dead letters.
        let archive = match &config.s3 {
            Some(s3) => Some(Arc::new(
                rankmysteps_sinks::s3::S3Archive::connect(s3).map_err(|e| {
                    context(
                        e,
                        format!("connecting to the S3 archive (bucket {})", s3.bucket),
                    )
                })?,
            )),
            None => None,
        };
        let job_name = recovery::progress_job(&kafka.topic);
        let cassandra_context = |c: &rankmysteps_sinks::cassandra::CassandraConfig,
                                 e: rankmysteps_sinks::SinkError| {
            context(
                e,
                format!("connecting to Cassandra at {:?}", c.contact_points),
            )
        };
        // A restart: where the last run's progress record says to resume, and what to replay.
        let mut generation = None;
        let recovery: Option<Recovery> = match &config.cassandra {
            Some(c) => {
                let reader = rankmysteps_sinks::cassandra::CassandraReader::connect(c)
                    .map_err(|e| cassandra_context(c, e))?;
                let share = Share {
                    process,
                    threads: workers,
                    processes: hosts.len().max(1),
                };
                // This start's generation (design §4), claimed by the plan: its writes'
                // timestamps derive from it, and a newer start of the same process fences
                // this one.
                let recovery = recovery::plan(
                    &reader,
                    &job_name,
                    true,
                    archive.as_deref(),
                    &kafka.topic,
                    share,
                    grace,
                    skew,
                    epoch_ms,
                    true,
                    partitions,
                )?;
                generation = recovery.generation;
                Some(recovery)
            }
            None if config.s3.is_some() => {
                return Err(RuntimeError::Config {
                    path: config_path,
                    detail: "[s3] without [cassandra]: the archive stays free of duplicates \
                             across restarts only with the progress record, which lives in \
                             Cassandra"
                        .into(),
                })
            }
            None => {
                tracing::warn!("no [cassandra]: no progress record, consuming from the beginning");
                None
            }
        };
        if let Some(r) = &recovery {
            // Kafka must still hold everything from the recorded positions on (never a silent
            // jump).
            rankmysteps_sources::kafka::check_start(
                &kafka,
                partitions,
                &r.start,
                Duration::from_secs(15),
            )
            .map_err(|e| context(e, "cannot resume from the progress record"))?;
        }
        // Every process writes its share (design §7): the dead letters of its partitions,
        // the Cassandra rows of the keys its workers own (and process 0 the top-k and the
        // cluster's progress record).
        let mut sinks: Vec<Box<dyn Sink>> = Vec::new();
        {
            // The dead letters first: an epoch's rejected records are durable before the
            // progress record that covers them.
            if let Some(archive) = &archive {
                sinks.push(Box::new(crate::archive::RejectedArchive {
                    archive: archive.clone(),
                    topic: kafka.topic.clone(),
                    epoch_ms,
                    stop: stop.clone(),
                    metrics: Some(metrics.clone()),
                }));
            }
            if let Some(c) = &config.cassandra {
                let mut sink = rankmysteps_sinks::cassandra::CassandraSink::connect(c, &job_name)
                    .map_err(|e| cassandra_context(c, e))?;
                sink.set_process(process, hosts.len(), workers);
                if let Some(r) = &recovery {
                    sink.resume(r.progress.as_ref(), r.replay_through);
                }
                if let Some(g) = generation {
                    sink.set_generation(g);
                    if let Some(cluster) = &mut cluster {
                        cluster.generation = Some((g, sink.generation_cell()));
                    }
                }
                sinks.push(Box::new(sink));
            }
            if let Some(out) = &out {
                sinks.push(Box::new(LocalDirSink::create(
                    out,
                    LocalOptions::default(),
                )?));
            }
        }
        // Checkpoints of the open state, written by a thread of this process's own.
        let checkpoint = match (df.checkpoint_epochs()?, &archive) {
            (Some(every), Some(archive)) => {
                let share = Share {
                    process,
                    threads: workers,
                    processes: hosts.len().max(1),
                };
                let fence = match (&config.cassandra, generation) {
                    (Some(c), Some(g)) => Some(crate::checkpoint::Fence {
                        cassandra: c.clone(),
                        job: job_name.clone(),
                        process,
                        generation: g,
                    }),
                    _ => None,
                };
                let writer = crate::checkpoint::Writer::start(
                    archive.clone(),
                    kafka.topic.clone(),
                    share.local_workers(),
                    share.workers(),
                    fence,
                    Some(metrics.clone()),
                )?;
                Some(job::CheckpointSpec {
                    every,
                    writer: Arc::new(writer),
                })
            }
            _ => None,
        };
        let sink = Measured {
            inner: Box::new(Fanout(sinks)),
            metrics: metrics.clone(),
        };
        let spec = JobSpec {
            introspection: introspection.clone(),
            linger: None,
            workers,
            settings: Settings {
                k: df.k,
                grace,
                initial_watermark: recovery.as_ref().and_then(|r| r.initial_watermark),
                dedup_window,
                epoch_length: epoch_ms as i64 * 1000,
            },
            parse: ParseConfig {
                max_steps: df.max_steps_per_event,
                max_clock_skew: skew,
                time_zone: df.zone()?,
            },
            input: Input::Kafka {
                config: kafka.clone(),
                partitions,
                epoch_ms,
                start: recovery
                    .as_ref()
                    .map(|r| r.start.clone())
                    .unwrap_or_default(),
            },
            max_epochs_ahead: df.max_epochs_ahead,
            cluster,
            metrics: Some(metrics.clone()),
            archive: config.s3.clone(),
            coalesce: true,
            checkpoint,
            recovery,
            progress: Display::quiet_if(quiet),
        };
        Ok(Worker {
            process,
            topic: kafka.topic.clone(),
            partitions,
            workers,
            generation,
            kafka,
            spec,
            sink,
            metrics,
            introspection,
            stop,
        })
    }

    /// What the restart will do: the progress record resumed from and the archive replayed
    /// (`None`: no `[cassandra]`).
    pub fn recovery(&self) -> Option<&Recovery> {
        self.spec.recovery.as_ref()
    }

    /// Runs the job until its stop flag is set or it fails. A partition added to the topic while it
    /// runs ends it with [`RuntimeError::TopicChanged`] (after its current epoch, everything
    /// committed): a restart consumes the new partitions from their beginning, so nothing in
    /// them is skipped.
    pub fn run(self) -> Result<JobReport, RuntimeError> {
        let Worker {
            process,
            topic,
            partitions,
            kafka,
            spec,
            sink,
            metrics,
            introspection,
            stop,
            ..
        } = self;
        // The helper threads end with the job (set after it returns, however it ends).
        let done = Arc::new(AtomicBool::new(false));
        // Process 0 delivers the epochs, so it knows the positions the lag is measured from.
        let lag = (process == 0)
            .then(|| {
                metrics.watch_lag(
                    kafka.clone(),
                    partitions,
                    Duration::from_secs(2),
                    done.clone(),
                )
            })
            .flatten();
        let changed = Arc::new(Mutex::new(None));
        let watch = watch_topic(
            kafka,
            partitions,
            stop.clone(),
            done.clone(),
            changed.clone(),
        );
        let report = job::run(spec, Box::new(sink), stop);
        if let Some(introspection) = &introspection {
            introspection.finish();
        }
        done.store(true, Ordering::SeqCst);
        for thread in [lag, watch].into_iter().flatten() {
            let _ = thread.join();
        }
        let report = report?;
        // Whatever the job delivered is committed; only then is the change an error.
        let changed = changed.lock().expect("topic watch lock").take();
        match changed {
            Some(now) => Err(RuntimeError::TopicChanged {
                topic,
                was: partitions,
                now,
            }),
            None => Ok(report),
        }
    }
}

/// Checks the topic's partition count every [`TOPIC_CHECK`] until `done`; when it is no
/// longer `partitions`, records the new count in `changed` and sets `stop`.
fn watch_topic(
    kafka: KafkaConfig,
    partitions: u32,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicBool>,
    changed: Arc<Mutex<Option<u32>>>,
) -> Option<JoinHandle<()>> {
    let consumer: rdkafka::consumer::BaseConsumer = match kafka.client_config().create() {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "no check of the partition count: cannot create a Kafka client");
            return None;
        }
    };
    let spawned = std::thread::Builder::new()
        .name("rankmysteps-topic".into())
        .spawn(move || {
            let mut next = std::time::Instant::now() + TOPIC_CHECK;
            while !done.load(Ordering::SeqCst) {
                if std::time::Instant::now() < next {
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
                next = std::time::Instant::now() + TOPIC_CHECK;
                let count = rankmysteps_sources::kafka::partition_count_with(
                    &consumer,
                    &kafka,
                    Duration::from_secs(5),
                );
                match count {
                    Ok(now) if now != partitions => {
                        tracing::error!(
                            topic = kafka.topic,
                            was = partitions,
                            now,
                            "the topic's partition count changed: stopping after this epoch"
                        );
                        *changed.lock().expect("topic watch lock") = Some(now);
                        stop.store(true, Ordering::SeqCst);
                        return;
                    }
                    Ok(_) => {}
                    // Kafka away: the consumer says so; the count is checked again later.
                    Err(e) => tracing::debug!(error = %e, "cannot read the partition count"),
                }
            }
        });
    match spawned {
        Ok(handle) => Some(handle),
        Err(e) => {
            tracing::warn!(error = %e, "cannot start the topic watch thread");
            None
        }
    }
}
