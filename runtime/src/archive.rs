//! The raw-event archive of a streaming worker (design §6): every consumed record, accepted or
//! not, is written to S3 before its epoch can complete; rejected records also go to
//! `rejected/` with their reason.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rankmysteps_dataflow::event::{Day, Epoch};
use rankmysteps_dataflow::output::EpochOutput;
use rankmysteps_sinks::s3::{ArchiveRecord, S3Archive};
use rankmysteps_sinks::{Sink, SinkError};
use rankmysteps_sources::chunk::{Archiver, Chunk};
use rankmysteps_sources::kafka::split_pos;

/// One sealed epoch of one worker: its records by partition.
struct Job {
    epoch: Epoch,
    batches: BTreeMap<u32, Vec<ArchiveRecord>>,
    in_flight: Arc<Mutex<BTreeSet<Epoch>>>,
}

/// Uploads sealed epochs on a thread of its own, shared by the workers of a process.
///
/// A failed upload is retried with backoff for as long as the job runs: the epoch stays open,
/// so the pipeline waits rather than committing progress past unarchived records. When the job
/// is stopped during failures, the error is recorded in `failure`, which the sink thread checks
/// before every epoch: nothing after an archive failure is ever committed.
pub struct Uploader {
    sender: Mutex<Sender<Job>>,
}

impl Uploader {
    /// Starts the upload thread.
    pub fn start(
        archive: S3Archive,
        topic: String,
        epoch_ms: u64,
        stop: Arc<AtomicBool>,
        failure: Arc<Mutex<Option<SinkError>>>,
        metrics: Option<Arc<crate::metrics::Metrics>>,
    ) -> Arc<Uploader> {
        let (sender, receiver) = channel::<Job>();
        std::thread::Builder::new()
            .name("rankmysteps-archive".into())
            .spawn(move || {
                // Every job waiting (one per worker and sealed epoch) is uploaded at once, one
                // thread per object: encoding and compressing run in parallel and the requests
                // overlap, so an epoch is held open for about one object's upload, not the sum.
                while let Ok(first) = receiver.recv() {
                    let started = std::time::Instant::now();
                    let mut jobs = vec![first];
                    jobs.extend(receiver.try_iter());
                    std::thread::scope(|scope| {
                        for job in &jobs {
                            let day = ingest_day(job.epoch, epoch_ms);
                            for (partition, records) in &job.batches {
                                let (archive, topic, stop, failure, metrics) =
                                    (&archive, &topic, &stop, &failure, metrics.as_deref());
                                scope.spawn(move || {
                                    put_with_retries(
                                        archive, topic, day, *partition, records, job.epoch, stop,
                                        failure, metrics,
                                    )
                                });
                            }
                        }
                    });
                    for job in &jobs {
                        job.in_flight
                            .lock()
                            .expect("in-flight lock")
                            .remove(&job.epoch);
                    }
                    tracing::debug!(
                        jobs = jobs.len(),
                        objects = jobs.iter().map(|j| j.batches.len()).sum::<usize>(),
                        ms = started.elapsed().as_millis() as u64,
                        "epochs archived"
                    );
                }
            })
            .expect("spawning the archive thread");
        Arc::new(Uploader {
            sender: Mutex::new(sender),
        })
    }

    /// A worker's archiver.
    pub fn archiver(self: &Arc<Self>) -> Box<dyn Archiver> {
        Box::new(WorkerArchiver {
            uploader: self.clone(),
            open: BTreeMap::new(),
            in_flight: Arc::new(Mutex::new(BTreeSet::new())),
        })
    }
}

/// Writes one object, retrying with backoff for as long as the job runs (see [`Uploader`]);
/// a failure once the job stops is recorded in `failure`.
#[allow(clippy::too_many_arguments)]
fn put_with_retries(
    archive: &S3Archive,
    topic: &str,
    day: Day,
    partition: u32,
    records: &[ArchiveRecord],
    epoch: Epoch,
    stop: &AtomicBool,
    failure: &Mutex<Option<SinkError>>,
    metrics: Option<&crate::metrics::Metrics>,
) {
    let put = retry_in_place("archive put", epoch, stop, metrics, || {
        archive.put_raw(topic, day, partition, records)
    });
    if let Err(e) = put {
        tracing::error!(error = %e, epoch, "archive failed while stopping");
        failure.lock().expect("failure lock").get_or_insert(e);
    }
}

/// Runs `put` (a write to S3 of epoch `epoch`) until it succeeds, with backoff (200 ms
/// doubling to 10 s), each outcome recorded in `metrics` as a request to `s3`; once `stop` is
/// set, a failure is returned instead of retried.
fn retry_in_place<T>(
    what: &str,
    epoch: Epoch,
    stop: &AtomicBool,
    metrics: Option<&crate::metrics::Metrics>,
    mut put: impl FnMut() -> Result<T, SinkError>,
) -> Result<T, SinkError> {
    let mut backoff = Duration::from_millis(200);
    loop {
        let outcome = put();
        if let Some(m) = metrics {
            m.store_request("s3", outcome.is_ok());
        }
        match outcome {
            Ok(done) => return Ok(done),
            Err(e) if stop.load(Ordering::SeqCst) => return Err(e),
            Err(e) => {
                tracing::warn!(error = %e, epoch, ?backoff, "{what} failed; retrying");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// The UTC day an epoch started: the `<ingest-date>` of its archive keys.
fn ingest_day(epoch: Epoch, epoch_ms: u64) -> Day {
    (epoch.saturating_mul(epoch_ms) / 86_400_000) as Day
}

/// One worker's side: buffers records per epoch and partition until the epoch is sealed.
struct WorkerArchiver {
    uploader: Arc<Uploader>,
    open: BTreeMap<Epoch, BTreeMap<u32, Vec<ArchiveRecord>>>,
    in_flight: Arc<Mutex<BTreeSet<Epoch>>>,
}

impl Archiver for WorkerArchiver {
    fn add(&mut self, chunk: &Chunk) {
        if chunk.archived {
            // A restart's replay of the archive itself: those objects exist already.
            return;
        }
        let batches = self.open.entry(chunk.epoch).or_default();
        for (i, (pos, raw)) in chunk.iter().enumerate() {
            let (partition, offset) = split_pos(pos);
            batches.entry(partition).or_default().push(ArchiveRecord {
                partition,
                offset,
                kafka_timestamp: chunk.timestamps.get(i).copied().filter(|t| *t >= 0),
                epoch: Some(chunk.epoch),
                ingested: Some(chunk.record_now.as_ref().map_or(chunk.now, |n| n[i])),
                raw: raw.to_vec(),
            });
        }
    }

    fn seal(&mut self, epoch: Epoch) {
        let sealed: Vec<Epoch> = self.open.range(..=epoch).map(|(e, _)| *e).collect();
        for e in sealed {
            let batches = self.open.remove(&e).expect("present");
            if batches.is_empty() {
                continue;
            }
            self.in_flight.lock().expect("in-flight lock").insert(e);
            let job = Job {
                epoch: e,
                batches,
                in_flight: self.in_flight.clone(),
            };
            if self
                .uploader
                .sender
                .lock()
                .expect("sender lock")
                .send(job)
                .is_err()
            {
                // The upload thread is gone (it never exits while the job runs): keep the epoch
                // in flight, so it is never committed.
                tracing::error!(epoch = e, "archive thread gone");
            }
        }
    }

    fn durable(&mut self, epoch: Epoch) -> bool {
        self.in_flight
            .lock()
            .expect("in-flight lock")
            .first()
            .is_none_or(|first| *first > epoch)
    }
}

/// A [`Sink`] writing each epoch's rejected records to `rejected/`, one object per partition.
///
/// Like the raw archive's uploads, a failed write is retried with backoff while the job runs
/// (the sink thread waits, and the epochs behind it wait for it: a store that is down stops
/// the job from advancing, and it resumes by itself when the store is back); once `stop` is
/// set, a failure is the sink's error, so nothing after it is committed.
pub struct RejectedArchive {
    /// The archive.
    pub archive: Arc<S3Archive>,
    /// The topic (a key component).
    pub topic: String,
    /// Epoch length, for the ingest day of the keys.
    pub epoch_ms: u64,
    /// The job's stop flag.
    pub stop: Arc<AtomicBool>,
    /// Where failed writes are counted.
    pub metrics: Option<Arc<crate::metrics::Metrics>>,
}

impl Sink for RejectedArchive {
    fn write_epoch(&mut self, output: &EpochOutput) -> Result<(), SinkError> {
        let mut by_partition: BTreeMap<u32, Vec<(ArchiveRecord, &str, &str)>> = BTreeMap::new();
        for r in &output.rejected {
            let (partition, offset) = split_pos(r.pos);
            by_partition.entry(partition).or_default().push((
                ArchiveRecord {
                    partition,
                    offset,
                    kafka_timestamp: None,
                    epoch: None,
                    ingested: None,
                    raw: r.raw.clone(),
                },
                r.reason.code(),
                r.detail.as_str(),
            ));
        }
        let day = ingest_day(output.epoch, self.epoch_ms);
        for (partition, mut records) in by_partition {
            records.sort_by_key(|(r, _, _)| r.offset);
            let (first, last) = (records[0].0.offset, records[records.len() - 1].0.offset);
            retry_in_place(
                "dead letters' put",
                output.epoch,
                &self.stop,
                self.metrics.as_deref(),
                || {
                    self.archive
                        .put_rejected(&self.topic, day, partition, first, last, &records)
                },
            )?;
        }
        Ok(())
    }
}
