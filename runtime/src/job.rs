//! Runs the whole job in one process: a source, the dataflow on worker threads, a sink.
//!
//! The same dataflow code runs in every mode; only the source and the sink differ.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rankmysteps_dataflow::checkpoint::{track_positions, CheckpointPlan, DraftBook};
use rankmysteps_dataflow::deliver::{deliver, Routing};
use rankmysteps_dataflow::event::{Epoch, Micros};
use rankmysteps_dataflow::output::{EpochOutput, Stats};
use rankmysteps_dataflow::pipeline::{build_with, Extras, Settings};
use rankmysteps_sinks::{Sink, SinkError};

use rankmysteps_sources::chunk::wall_clock;
use rankmysteps_sources::file::FileInput;
use rankmysteps_sources::generator::{Generator, GeneratorConfig};
use rankmysteps_sources::kafka::{KafkaConfig, KafkaSource};
use rankmysteps_sources::operator::{parse_source, parse_source_archived, Throttle};
use rankmysteps_sources::parse::{ParseConfig, Parser};
use timely::dataflow::ProbeHandle;

use crate::error::RuntimeError;

/// Where events come from.
#[derive(Clone, Debug)]
pub enum Input {
    /// A JSON Lines file, a directory of them, or `-` for stdin; epochs of `epoch_events` lines.
    File {
        /// The path.
        path: PathBuf,
        /// Lines per epoch.
        epoch_events: u64,
    },
    /// An S3 archive (design §6): every record under `prefix`, in key order, as a file replay
    /// (epochs of `epoch_events` records), each parsed as of its own Kafka timestamp.
    S3 {
        /// Endpoint, region, bucket.
        config: rankmysteps_sinks::s3::S3Config,
        /// Key prefix to read (e.g. `raw/steps/`).
        prefix: String,
        /// Records per epoch.
        epoch_events: u64,
    },
    /// The built-in generator, with wall-clock epochs.
    Generator(GeneratorConfig),
    /// A Kafka topic, partitions assigned statically to the workers, wall-clock epochs.
    Kafka {
        /// Brokers, topic, properties.
        config: KafkaConfig,
        /// The topic's number of partitions.
        partitions: u32,
        /// Epoch length, milliseconds of wall clock.
        epoch_ms: u64,
        /// Where to start each partition (absent: at the beginning).
        start: BTreeMap<u32, u64>,
    },
}

/// Where this process stands in a cluster of worker processes.
#[derive(Clone, Debug)]
pub struct ClusterPlace {
    /// This process's index in `addresses`.
    pub process: usize,
    /// `host:port` of every process, in process order.
    pub addresses: Vec<String>,
    /// The write generation this process claimed, and where the sinks read the one they
    /// write with: the largest that any process of the cluster claimed, agreed on by the
    /// workers before the dataflow starts (see [`agree_generation`]).
    pub generation: Option<(u64, Arc<std::sync::atomic::AtomicU64>)>,
}

/// Everything a job needs.
#[derive(Clone, Debug)]
pub struct JobSpec {
    /// Worker threads.
    pub workers: usize,
    /// Dataflow semantics.
    pub settings: Settings,
    /// Parsing rules.
    pub parse: ParseConfig,
    /// The source.
    pub input: Input,
    /// Flow control: epochs a source may run ahead of the last delivered one.
    pub max_epochs_ahead: u64,
    /// Several processes (`None`: this process alone, `workers` threads).
    pub cluster: Option<ClusterPlace>,
    /// Where to record epoch latencies, if anywhere.
    pub metrics: Option<Arc<crate::metrics::Metrics>>,
    /// Kafka input only: archive every consumed record here before its epoch completes.
    pub archive: Option<rankmysteps_sinks::s3::S3Config>,
    /// When the sink falls behind, merge the epochs waiting for it into one write
    /// ([`EpochOutput::merge`]): each changed record is then written once per write instead of
    /// once per epoch. Rejected records then carry the epoch of the write.
    pub coalesce: bool,
    /// Kafka input only: a restart from a progress record ([`crate::recovery`]): the archive
    /// objects to replay first (read from `archive`), and the epochs that only rebuild state.
    /// Kafka's start offsets and the initial watermark are in `input` and `settings`.
    pub recovery: Option<crate::recovery::Recovery>,
    /// Kafka input only: take checkpoints of the workers' open state (design §4), every
    /// `every` epochs, and hand them to `writer`. A restart's checkpoint to start from is in
    /// `recovery`.
    pub checkpoint: Option<CheckpointSpec>,
    /// How the progress of a replay (a file, an archive, a restart's replay) is shown.
    pub progress: crate::progress::Display,
    /// Where the workers publish what their arrangements and operators hold
    /// ([`crate::introspect`]); `None`: no operator logging, and the traces are dropped.
    pub introspection: Option<Arc<crate::introspect::Introspection>>,
    /// Keep the live state after the input ends (`run --serve`): once every epoch is delivered
    /// and the sink has finished, the callback gets the report (the replay is done), and the
    /// workers stay, parked, answering the inspector's lookups from their arrangements until
    /// `stop` is set; [`run`] returns then. Only with `introspection` (else nothing is kept).
    /// `None`: the job ends with its input.
    pub linger: Option<Linger>,
}

/// How a job takes checkpoints ([`JobSpec::checkpoint`]).
#[derive(Clone)]
pub struct CheckpointSpec {
    /// Marks are the multiples of this many epochs.
    pub every: Epoch,
    /// Where the workers' parts go.
    pub writer: Arc<crate::checkpoint::Writer>,
}

impl std::fmt::Debug for CheckpointSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CheckpointSpec {{ every: {} }}", self.every)
    }
}

/// What [`JobSpec::linger`] calls when the input is done and every output written.
#[derive(Clone)]
pub struct Linger(pub Arc<dyn Fn(&JobReport) + Send + Sync>);

impl std::fmt::Debug for Linger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Linger(..)")
    }
}

/// What a finished job measured.
#[derive(Clone, Debug, Default)]
pub struct JobReport {
    /// Epochs delivered.
    pub epochs: u64,
    /// Counters summed over the run.
    pub stats: Stats,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// Streaming only: per delivered epoch, the time from the epoch's end (wall clock) to its
    /// delivery to the sink.
    pub epoch_latencies: Vec<Duration>,
    /// Lines read (file input).
    pub lines: u64,
    /// Archived records replayed by a restart.
    pub replayed: u64,
    /// Epochs a restart replayed only to rebuild its state (not in `epochs` nor `stats`).
    pub restored: u64,
}

/// The largest of the generations the processes of a cluster claimed (each worker offers its
/// process's `claimed`): a tiny dataflow of its own, run to completion before the job's, so
/// that every process's sink writes with the same generation (see
/// `CassandraSink::generation_cell`).
fn agree_generation(worker: &mut timely::worker::Worker, claimed: u64) -> u64 {
    use timely::dataflow::operators::vec::{Broadcast, Input};
    use timely::dataflow::operators::{Inspect, Probe};
    let agreed = std::rc::Rc::new(std::cell::Cell::new(claimed));
    let seen = agreed.clone();
    let probe = ProbeHandle::new();
    let mut input = worker.dataflow_named::<u64, _, _>("AgreeGeneration", |scope| {
        let (input, stream) = scope.new_input::<u64>();
        stream
            .broadcast()
            .inspect(move |g: &u64| seen.set(seen.get().max(*g)))
            .probe_with(&probe);
        input
    });
    input.send(claimed);
    drop(input);
    while !probe.done() {
        worker.step_or_park(Some(Duration::from_millis(10)));
    }
    agreed.get()
}

/// Runs `spec` to completion (the end of the input, or `stop`), delivering every completed
/// epoch to `sink` on worker 0 (in a cluster: each process's share to its first worker, see
/// [`Routing`]), and finally calling `sink.finish()`.
pub fn run(
    spec: JobSpec,
    sink: Box<dyn Sink>,
    stop: Arc<AtomicBool>,
) -> Result<JobReport, RuntimeError> {
    if spec.workers == 0 {
        return Err(RuntimeError::Setting("workers must be at least 1".into()));
    }
    let file = match &spec.input {
        Input::File { path, epoch_events } => Some(FileInput::open(path, *epoch_events)?.shared()),
        Input::Generator(_) | Input::Kafka { .. } | Input::S3 { .. } => None,
    };
    let s3 = match &spec.input {
        Input::S3 {
            config,
            prefix,
            epoch_events,
        } => Some(SharedS3Input::open(
            config,
            prefix,
            *epoch_events,
            spec.settings.epoch_length,
        )?),
        _ => None,
    };
    // The sink runs on a thread of its own, fed through a small bounded channel: worker 0 only
    // hands over completed epochs (and waits when the sink is two epochs behind), so file and
    // network writes overlap with the dataflow instead of stalling it.
    let (sender, receiver) =
        std::sync::mpsc::sync_channel::<EpochOutput>(if spec.coalesce { 16 } else { 2 });
    let coalesce = spec.coalesce;
    let recovery = spec.recovery.clone().unwrap_or_default();
    // Epochs up to here were written before a restart: they only rebuild the sinks' state.
    let restore_through = recovery.restore_through;
    // Epochs after it up to here may be half written: each is written again alone, never
    // merged (see the sinks' rewrite invariant in `CassandraSink::write_epoch`).
    let rewrite_through = recovery.replay_through;
    let sender = Arc::new(Mutex::new(Some(sender)));
    let report = Arc::new(Mutex::new(JobReport::default()));
    let failure: Arc<Mutex<Option<SinkError>>> = Arc::new(Mutex::new(None));
    let replay = match (&spec.input, &spec.archive) {
        (Input::Kafka { .. }, Some(s3)) if !recovery.replay.is_empty() => {
            Some(crate::recovery::SharedReplay::new(
                Arc::new(rankmysteps_sinks::s3::S3Archive::connect(s3)?),
                recovery.replay.clone(),
                stop.clone(),
                failure.clone(),
            ))
        }
        (_, None) if !recovery.replay.is_empty() => {
            return Err(RuntimeError::Setting(
                "a restart's replay needs the archive ([s3])".into(),
            ))
        }
        _ => None,
    };
    let started = Instant::now();
    // The report as it stands once every epoch is delivered.
    let finalize = {
        let (report, file, s3, replay) = (report.clone(), file.clone(), s3.clone(), replay.clone());
        move || {
            let mut r = report.lock().expect("report lock").clone();
            r.replayed = replay
                .as_ref()
                .map_or(0, crate::recovery::SharedReplay::records);
            r.elapsed = started.elapsed();
            r.lines = file.as_ref().map_or(0, |f| f.lines_read())
                + s3.as_ref().map_or(0, SharedS3Input::records_read);
            r
        }
    };
    // Progress of the replays, drawn by a thread of its own (nothing of it under a worker).
    let progress = if let Some(file) = &file {
        let (bytes, lines) = (file.bytes_read(), file.clone());
        Some(match file.total_bytes() {
            Some(total) => crate::progress::Progress::start(
                "replay",
                crate::progress::Unit::Bytes,
                Some(total),
                spec.progress,
                move || (bytes.load(Ordering::Relaxed), lines.lines_read()),
            ),
            None => crate::progress::Progress::start(
                "replay",
                crate::progress::Unit::Records,
                None,
                spec.progress,
                move || (lines.lines_read(), 0),
            ),
        })
    } else if let Some(s3) = &s3 {
        let input = s3.clone();
        Some(crate::progress::Progress::start(
            "archive replay",
            crate::progress::Unit::Objects,
            Some(s3.objects().1),
            spec.progress,
            move || (input.objects().0, input.records_read()),
        ))
    } else {
        replay.as_ref().map(|r| {
            let replay = r.clone();
            crate::progress::Progress::start_until_total(
                "restart replay",
                crate::progress::Unit::Objects,
                r.objects().1,
                spec.progress,
                move || (replay.objects().0, replay.records()),
            )
        })
    };
    let sink_thread = {
        let (failure, stop) = (failure.clone(), stop.clone());
        let (linger, finalize) = (
            spec.linger.clone().filter(|_| spec.introspection.is_some()),
            finalize.clone(),
        );
        let mut sink = sink;
        let progress = progress;
        std::thread::Builder::new()
            .name("rankmysteps-sink".into())
            .spawn(move || {
                let mut failed = false;
                // Records the first failure and stops the job; nothing is written after it.
                let fail = |e: SinkError, failed: &mut bool| {
                    tracing::error!(error = %e, "sink failed; stopping");
                    failure.lock().expect("failure lock").get_or_insert(e);
                    stop.store(true, Ordering::SeqCst);
                    *failed = true;
                };
                let restored = |out: &EpochOutput| restore_through.is_some_and(|p| out.epoch <= p);
                loop {
                    let out = match receiver.recv_timeout(Duration::from_millis(250)) {
                        Ok(out) if restored(&out) => {
                            if !failed {
                                if let Err(e) = sink.restore(&out) {
                                    fail(e, &mut failed);
                                }
                            }
                            continue;
                        }
                        Ok(out) if coalesce && rewrite_through.is_none_or(|q| out.epoch > q) => {
                            let mut waiting = vec![out];
                            // Restored and rewritten epochs all come before the others
                            // (epoch order): none is here.
                            waiting.extend(receiver.try_iter());
                            if waiting.len() > 1 {
                                tracing::debug!(
                                    epochs = waiting.len(),
                                    "sink behind: merging epochs"
                                );
                            }
                            EpochOutput::merge(waiting)
                        }
                        Ok(out) => out,
                        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                            if !failed {
                                if let Err(e) = sink.tick() {
                                    fail(e, &mut failed);
                                }
                            }
                            continue;
                        }
                        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                    };
                    // An archive failure (or any other) recorded elsewhere: commit nothing more.
                    if !failed && failure.lock().expect("failure lock").is_some() {
                        stop.store(true, Ordering::SeqCst);
                        failed = true;
                    }
                    if failed {
                        continue;
                    }
                    if let Err(e) = sink.write_epoch(&out) {
                        fail(e, &mut failed);
                    }
                }
                // Every sender is gone with the dataflow: the input is done.
                if let Some(progress) = progress {
                    progress.finish();
                }
                if !failed {
                    match sink.finish() {
                        Err(e) => {
                            failure.lock().expect("failure lock").get_or_insert(e);
                        }
                        Ok(()) => {
                            if let Some(Linger(done)) = &linger {
                                done(&finalize());
                            }
                        }
                    }
                }
            })
            .map_err(|e| RuntimeError::Worker(format!("cannot start the sink thread: {e}")))?
    };
    let uploader = match (&spec.archive, &spec.input) {
        (
            Some(s3),
            Input::Kafka {
                config, epoch_ms, ..
            },
        ) => Some(crate::archive::Uploader::start(
            rankmysteps_sinks::s3::S3Archive::connect(s3)?,
            config.topic.clone(),
            epoch_ms.to_owned(),
            stop.clone(),
            failure.clone(),
            spec.metrics.clone(),
        )),
        (Some(_), _) => {
            return Err(RuntimeError::Setting(
                "the raw-event archive needs Kafka input".into(),
            ))
        }
        (None, _) => None,
    };
    let (spec2, file2, report2, stop2) = (spec.clone(), file.clone(), report.clone(), stop.clone());
    // The epochs worker 0 of this process delivered: through the last + 1 (0: none yet).
    let delivered = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let s3_2 = s3.clone();
    let replay2 = replay.clone();
    let failure2 = failure.clone();
    let replay_through = recovery.replay_through;
    let recovery2 = recovery.clone();

    let in_cluster = spec.cluster.is_some();
    let config = match &spec.cluster {
        None => timely::Config::process(spec.workers),
        Some(place) => timely::Config {
            communication: timely::CommunicationConfig::Cluster {
                threads: spec.workers,
                process: place.process,
                addresses: place.addresses.clone(),
                report: false,
                zerocopy: false,
            },
            worker: timely::WorkerConfig::default(),
        },
    };
    // A cluster's processes each write their share ([`Routing`]): its first worker delivers
    // it. Alone, worker 0 delivers everything.
    let routing = match &spec.cluster {
        Some(_) => Routing::per_process(spec.workers, |pos| {
            rankmysteps_sources::kafka::split_pos(pos).0
        }),
        None => Routing::gather(),
    };
    let guards = timely::execute(config, move |worker| {
        let (index, peers) = (worker.index(), worker.peers());
        let spec = spec2.clone();
        if let Some((claimed, cell)) = spec.cluster.as_ref().and_then(|c| c.generation.clone()) {
            let agreed = agree_generation(worker, claimed);
            if index == routing.leader_of(index) {
                if agreed != claimed {
                    tracing::info!(claimed, agreed, "writing as the cluster's generation");
                }
                cell.store(agreed, Ordering::SeqCst);
            }
        }
        let linger = spec.linger.is_some();
        let settings = spec.settings.clone();
        let probe = ProbeHandle::new();
        // The leader (worker 0 of this process) hands completed epochs to the sink thread.
        let sender = if index == routing.leader_of(index) {
            sender.lock().expect("sender lock").take()
        } else {
            None
        };
        let report = report2.clone();
        let delivered2 = delivered.clone();
        let metrics = spec.metrics.clone();
        let epoch_ms = match &spec.input {
            Input::Generator(g) => Some(g.epoch_ms),
            Input::Kafka { epoch_ms, .. } => Some(*epoch_ms),
            Input::File { .. } | Input::S3 { .. } => None,
        };
        let on_epoch = move |out: EpochOutput| {
            let mut report = report.lock().expect("report lock");
            // A restart's restored epochs were counted before it.
            if restore_through.is_some_and(|p| out.epoch <= p) {
                report.restored += 1;
            } else {
                report.epochs += 1;
                report.stats.add(&out.stats);
            }
            // A restart's replayed epochs ended long ago: their latency means nothing.
            let replayed = replay_through.is_some_and(|q| out.epoch <= q);
            if let Some(ms) = epoch_ms.filter(|_| !replayed) {
                let end: Micros = (out.epoch as Micros + 1) * ms as Micros * 1000;
                let latency = Duration::from_micros((wall_clock() - end).max(0) as u64);
                // Bounded: a long-running worker keeps the first 100 000 (metrics see them all).
                if report.epoch_latencies.len() < 100_000 {
                    report.epoch_latencies.push(latency);
                }
                if let Some(m) = &metrics {
                    m.epoch_latency(latency);
                }
                tracing::debug!(
                    epoch = out.epoch,
                    latency_ms = latency.as_millis() as u64,
                    "epoch delivered"
                );
            }
            drop(report);
            delivered2.fetch_max(out.epoch + 1, Ordering::SeqCst);
            if let Some(sender) = &sender {
                // A closed channel means the sink thread is gone; its error is reported below.
                let _ = sender.send(out);
            }
        };
        // A restart's checkpoint part of this worker; and the checkpoints it takes, from the
        // first mark after the epochs a restart replays (they hold no new state).
        let restore = recovery2
            .checkpoint
            .as_ref()
            .and_then(|r| r.parts.get(&index).cloned());
        let drafts = DraftBook::new(settings.grace);
        let plan = match (&spec.checkpoint, &spec.input) {
            (Some(c), Input::Kafka { start, .. }) => Some(CheckpointPlan {
                every: c.every,
                after: recovery2.replay_through.map_or(0, |q| q + 1),
                positions: start
                    .iter()
                    .filter(|(&p, _)| p as usize % peers == index)
                    .map(
                        |(&partition, &next)| rankmysteps_dataflow::output::Position {
                            partition,
                            next,
                        },
                    )
                    .collect(),
                drafts: drafts.clone(),
            }),
            _ => None,
        };
        let writer = spec.checkpoint.as_ref().map(|c| c.writer.clone());
        // Before the dataflow is built, so that its operators are seen.
        let mut inspect = spec
            .introspection
            .as_ref()
            .map(|into| crate::introspect::WorkerIntrospection::register(worker, into));
        let traces = worker.dataflow::<Epoch, _, _>(|scope| {
            let parser = Parser::new(spec.parse.clone());
            let throttle = Throttle {
                completed: probe.clone(),
                max_epochs_ahead: spec.max_epochs_ahead,
                at: inspect.as_ref().map(|i| i.source_at()),
            };
            let parsed = match (&spec.input, &file2) {
                (Input::File { .. }, Some(file)) => parse_source(
                    scope,
                    "FileSource",
                    StoppableFile(file.clone(), stop2.clone()),
                    parser,
                    settings.grace,
                    throttle,
                ),
                (Input::Generator(config), _) => {
                    let generator =
                        Generator::new(config.clone(), index, peers, started, stop2.clone());
                    parse_source(
                        scope,
                        "Generator",
                        generator,
                        parser,
                        settings.grace,
                        throttle,
                    )
                }
                (
                    Input::Kafka {
                        config,
                        partitions,
                        epoch_ms,
                        start,
                    },
                    _,
                ) => {
                    match KafkaSource::new(
                        config,
                        *partitions,
                        index,
                        peers,
                        start,
                        *epoch_ms,
                        stop2.clone(),
                    ) {
                        Ok(source) => parse_source_archived(
                            scope,
                            "KafkaSource",
                            crate::recovery::Resumed {
                                replay: replay2.clone(),
                                kafka: source,
                                failure: failure2.clone(),
                                stop: stop2.clone(),
                            },
                            parser,
                            settings.grace,
                            throttle,
                            uploader.as_ref().map(|u| u.archiver()),
                        ),
                        Err(e) => panic!("worker {index}: cannot start the Kafka source: {e}"),
                    }
                }
                (Input::S3 { .. }, _) => {
                    let source = s3_2.clone().expect("archive opened above");
                    parse_source(scope, "S3Source", source, parser, settings.grace, throttle)
                }
                (Input::File { .. }, None) => unreachable!("file opened above"),
            };
            if let Some(plan) = &plan {
                track_positions(parsed.positions.clone(), plan);
            }
            let extras = Extras {
                restore: restore.map(Into::into),
                checkpoint: plan,
            };
            let mut outputs = build_with(parsed.events, &settings, extras);
            let traces = outputs.traces.take();
            deliver(
                outputs,
                parsed.rejected,
                parsed.positions,
                &settings,
                routing,
                &probe,
                on_epoch,
            );
            traces
        });
        if let (Some(inspect), Some(traces)) = (&mut inspect, traces) {
            inspect.hold(rankmysteps_dataflow::state::LiveState::new(
                traces, &settings, index, peers,
            ));
        }
        // The last epoch every output of which was delivered (the probe is past it).
        let completed = |probe: &ProbeHandle<Epoch>| {
            probe.with_frontier(|f| f.first().and_then(|e| e.checked_sub(1)))
        };
        while !probe.done() {
            worker.step_or_park(Some(Duration::from_millis(20)));
            if let Some(inspect) = &mut inspect {
                inspect.after_step(completed(&probe), false);
            }
            if let Some(writer) = &writer {
                if let Some(state) = drafts.borrow_mut().take_complete() {
                    writer.offer(index, state);
                }
            }
        }
        if let Some(inspect) = &mut inspect {
            // At the end (the probe's frontier is empty): what the arrangements hold last.
            // Worker 0 delivered every epoch before the probe could pass it.
            inspect.ended(delivered.load(Ordering::SeqCst).checked_sub(1));
            if linger {
                // The dataflow is done (timely drops it in these steps, and with it worker 0's
                // sender: the sink thread finishes); the traces stay with the inspector.
                while !stop2.load(Ordering::SeqCst) {
                    worker.step_or_park(Some(Duration::from_millis(50)));
                    inspect.lingering(delivered.load(Ordering::SeqCst).checked_sub(1));
                }
            }
        }
    })
    .map_err(RuntimeError::Worker)?;
    // The workers are joined on a thread of their own, so that a process of a cluster can give
    // up on a failure (below) without waiting for them.
    let (joined_tx, joined_rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("rankmysteps-join".into())
        .spawn(move || {
            let joined: Result<Vec<()>, String> = guards.join().into_iter().collect();
            let _ = joined_tx.send(joined);
        })
        .map_err(|e| RuntimeError::Worker(format!("starting the join thread: {e}")))?;
    let joined = loop {
        match joined_rx.recv_timeout(Duration::from_millis(100)) {
            Ok(joined) => break joined,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                break Err("the join thread ended without a result".into())
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) if in_cluster => {
                // A process of a timely cluster cannot stop alone: its sources would end, but
                // its workers would wait for its peers' epochs forever, and the peers for it.
                // So after a failure (a sink's or the archive's: a store away) it gives up on
                // the dataflow and returns the error; the process exits, its peers lose the
                // connection and stop, and the supervisor starts them all again, resuming
                // from the progress record (nothing was committed past the failure).
                if let Some(e) = failure.lock().expect("failure lock").take() {
                    tracing::error!(error = %e, "failure in a cluster process: leaving the dataflow");
                    return Err(e.into());
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
        }
    };
    // Every sender is gone with its worker: the sink thread drains, finishes and ends.
    sink_thread
        .join()
        .map_err(|_| RuntimeError::Worker("the sink thread panicked".into()))?;
    joined.map_err(RuntimeError::Worker)?;
    if let Some(e) = failure.lock().expect("failure lock").take() {
        return Err(e.into());
    }
    if let Some(file) = &file {
        if let Some(e) = file.take_error() {
            return Err(e.into());
        }
    }
    if let Some(e) = s3.as_ref().and_then(SharedS3Input::take_error) {
        return Err(e.into());
    }
    Ok(finalize())
}

/// A shared file input that also ends when the job is stopped (Ctrl-C, sink failure).
struct StoppableFile(rankmysteps_sources::file::SharedFileInput, Arc<AtomicBool>);

impl rankmysteps_sources::chunk::ChunkSource for StoppableFile {
    fn pull(&mut self) -> rankmysteps_sources::chunk::Pull {
        if self.1.load(Ordering::Relaxed) {
            return rankmysteps_sources::chunk::Pull::Done;
        }
        self.0.pull()
    }

    // Forwarded: without them every event of a file replay kept its raw bytes (for a `late`
    // rejection's dead letter), as if its day could already be closed.
    fn watermark_bound(&self, chunk: &rankmysteps_sources::chunk::Chunk) -> Option<Option<Micros>> {
        self.0.watermark_bound(chunk)
    }

    fn parsed(&mut self, chunk: &rankmysteps_sources::chunk::Chunk, max_time: Option<Micros>) {
        self.0.parsed(chunk, max_time)
    }
}

/// Most records in one chunk of an archive replay.
const S3_CHUNK_RECORDS: u64 = 4096;

/// An S3 archive read in key order, shared by the workers like a file (see `FileInput`).
struct S3Input {
    archive: rankmysteps_sinks::s3::S3Archive,
    keys: std::collections::VecDeque<String>,
    current: std::collections::VecDeque<rankmysteps_sinks::s3::ArchiveRecord>,
    epoch_events: u64,
    /// The ingestion time of one recorded epoch (the records' de-duplication clock).
    epoch_length: Micros,
    next: u64,
    error: Option<SinkError>,
    /// Objects to read in all (`keys` holds those not read yet).
    total: u64,
}

/// A shared [`S3Input`].
#[derive(Clone)]
struct SharedS3Input(Arc<Mutex<S3Input>>);

impl SharedS3Input {
    fn open(
        config: &rankmysteps_sinks::s3::S3Config,
        prefix: &str,
        epoch_events: u64,
        epoch_length: Micros,
    ) -> Result<Self, RuntimeError> {
        if epoch_events == 0 {
            return Err(RuntimeError::Setting(
                "epoch_events must be at least 1".into(),
            ));
        }
        let archive = rankmysteps_sinks::s3::S3Archive::connect(config)?;
        // Checkpoint parts (design §4) hold state, not records: a prefix that covers the
        // archive's root lists them too.
        let (keys, parts): (Vec<String>, Vec<String>) = archive
            .list(prefix)?
            .into_iter()
            .partition(|k| !crate::checkpoint::is_part_key(k));
        if !parts.is_empty() {
            tracing::warn!(
                parts = parts.len(),
                "replay: the prefix holds checkpoint parts (state, not records): skipped; \
                 give a raw/ prefix to read the records only"
            );
        }
        let keys: std::collections::VecDeque<String> = keys.into();
        if keys.is_empty() {
            return Err(RuntimeError::Setting(format!(
                "no archive objects under s3://{}/{prefix}",
                config.bucket
            )));
        }
        Ok(SharedS3Input(Arc::new(Mutex::new(S3Input {
            archive,
            total: keys.len() as u64,
            keys,
            current: Default::default(),
            epoch_events,
            epoch_length,
            next: 0,
            error: None,
        }))))
    }

    fn take_error(&self) -> Option<SinkError> {
        self.0.lock().expect("s3 input lock").error.take()
    }

    fn records_read(&self) -> u64 {
        self.0.lock().expect("s3 input lock").next
    }

    /// `(objects read or being read, objects in all)`.
    fn objects(&self) -> (u64, u64) {
        let input = self.0.lock().expect("s3 input lock");
        (input.total - input.keys.len() as u64, input.total)
    }
}

impl rankmysteps_sources::chunk::ChunkSource for SharedS3Input {
    /// An archive replay: no bound is computed, so the events that could be late keep their
    /// raw bytes.
    fn watermark_bound(
        &self,
        _chunk: &rankmysteps_sources::chunk::Chunk,
    ) -> Option<Option<Micros>> {
        None
    }

    fn parsed(&mut self, _chunk: &rankmysteps_sources::chunk::Chunk, _max_time: Option<Micros>) {}

    fn pull(&mut self) -> rankmysteps_sources::chunk::Pull {
        use rankmysteps_sources::chunk::{Chunk, Pull};
        let mut input = self.0.lock().expect("s3 input lock");
        if input.error.is_some() {
            return Pull::Done;
        }
        let epoch = input.next / input.epoch_events;
        let last = ((epoch + 1) * input.epoch_events).min(input.next + S3_CHUNK_RECORDS);
        let mut chunk = Chunk::new(epoch, wall_clock());
        let mut nows = Vec::new();
        let mut ingested = Vec::new();
        while input.next < last {
            let Some(record) = input.current.pop_front() else {
                let Some(key) = input.keys.pop_front() else {
                    break;
                };
                match input.archive.get_lines(&key) {
                    Ok(records) => input.current = records.into(),
                    Err(e) => {
                        input.error = Some(e);
                        break;
                    }
                }
                continue;
            };
            // Parsed as of its arrival: `future` keeps its meaning in a later replay.
            nows.push(record.kafka_timestamp.map_or(chunk.now, |ms| ms * 1000));
            // The de-duplication window runs on the recorded ingestion time (design §1): the
            // start of the epoch the record was consumed in, else when it was consumed.
            ingested.push(
                record
                    .epoch
                    .map(|e| (e as Micros).saturating_mul(input.epoch_length))
                    .or(record.ingested)
                    .unwrap_or(epoch as Micros * input.epoch_length),
            );
            chunk.push(input.next, &record.raw);
            input.next += 1;
        }
        if chunk.records.is_empty() {
            return Pull::Done;
        }
        chunk.record_now = Some(nows);
        chunk.record_ingested = Some(ingested);
        chunk
            .positions
            .push(rankmysteps_dataflow::output::Position {
                partition: 0,
                next: input.next,
            });
        Pull::Chunk(chunk)
    }
}

#[cfg(test)]
mod tests {
    use rankmysteps_sources::chunk::{ChunkSource, Pull};

    use super::StoppableFile;

    /// The parser keeps a record's raw bytes only when the source cannot bound the watermark
    /// below its day's close: a wrapper that drops the bound makes every event keep them.
    #[test]
    fn a_stoppable_file_forwards_the_watermark_bound() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.jsonl");
        std::fs::write(&path, (0..20).map(|i| format!("{i}\n")).collect::<String>()).unwrap();
        let input = rankmysteps_sources::file::FileInput::open(&path, 10).unwrap();
        let mut file = StoppableFile(input.shared(), Default::default());
        let mut chunks = Vec::new();
        while let Pull::Chunk(c) = file.pull() {
            chunks.push(c);
        }
        assert_eq!(chunks.len(), 2);
        // Nothing precedes epoch 0; epoch 1 waits for chunk 0.
        assert_eq!(file.watermark_bound(&chunks[0]), Some(None));
        assert_eq!(file.watermark_bound(&chunks[1]), None);
        file.parsed(&chunks[0], Some(1_000));
        assert_eq!(file.watermark_bound(&chunks[1]), Some(Some(1_000)));
    }
}
