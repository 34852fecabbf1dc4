//! Restarting a streaming worker from its progress record (design §4).
//!
//! What a restart must rebuild is the dataflow's state at the progress record's epoch P: the
//! totals and the duplicate sets of the days still open, and the watermark. Cassandra holds
//! the totals but not which `event_id`s were seen, and it may hold a half-written epoch after
//! P, so the state is rebuilt from the raw-event archive instead, which holds every consumed
//! record with the epoch it was consumed in and its ingestion time (see
//! [`ArchiveRecord`]):
//!
//! 1. Read the progress record (epoch P, next offsets, W(P)) and the intent record (the epoch
//!    Q whose writes were under way, see [`rankmysteps_sinks::cassandra::intent_key`]). If
//!    Q > P, epoch Q may be half written: the replay goes on to Q's offsets, and the epochs
//!    P+1..=Q are written again (the same values: every decision is replayed as it was made).
//! 2. Delete the archive objects beyond those offsets (epochs that never completed: they are
//!    consumed again from Kafka and archived again, under keys that may differ), and the
//!    `rejected/` objects beyond P's offsets (written again with P+1..=Q).
//! 3. Replay, at their original epochs and ingestion times, the archived records from the
//!    first that can belong to a day open at P, starting from W(P): days closed before the
//!    restart stay closed, and every event of an open day is replayed (an event is consumed
//!    at most `max_clock_skew` before its time, and its day starts at most 14 hours before
//!    its UTC date). Epochs up to P only rebuild state ([`Sink::restore`]); later ones are
//!    written.
//! 4. Then consume Kafka from Q's offsets.
//!
//! In a cluster of several processes each process writes its own share (design §7) and has
//! its own progress and intent records
//! ([`rankmysteps_sinks::cassandra::process_progress_key`]); process 0's is the
//! cluster's P. Q is then the furthest record of any process; every process rebuilds state
//! up to P and writes again its share of the epochs after it (see [`plan`]).
//!
//! With a checkpoint ([`crate::checkpoint`]): if the store holds a complete checkpoint at a mark
//! T with T − 1 ≤ P (for as many workers as this cluster has), each worker starts from its
//! part instead (its open days' totals at epoch T − 1, its de-duplication window, W(T − 1) as
//! the initial watermark), and step 3 replays only the archived records after the part's
//! offsets: a restart then reads about one checkpoint interval of the archive, however long
//! the job has run. Parts of marks after P + 1 are deleted in step 2, like archive objects.
//!
//! [`Sink::restore`]: rankmysteps_sinks::Sink::restore

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use rankmysteps_dataflow::event::{
    close_of_day, format_day, Day, Epoch, Micros, MICROS_PER_DAY, MICROS_PER_SEC,
};
use rankmysteps_dataflow::output::Position;
use rankmysteps_sinks::cassandra::CassandraReader;
use rankmysteps_sinks::local::Progress;
use rankmysteps_sinks::s3::{parse_object_key, ArchiveRecord, ObjectKind, S3Archive};
use rankmysteps_sinks::SinkError;
use rankmysteps_sources::chunk::{wall_clock, Chunk, ChunkSource, Pull};
use rankmysteps_sources::kafka::record_pos;

use crate::error::{context, RuntimeError};

/// The `job` of the progress record of a worker consuming `topic`: the topic itself, so that
/// a worker pointed at another topic never resumes at offsets recorded for a different one.
pub fn progress_job(topic: &str) -> String {
    topic.to_owned()
}

/// Where a restarted worker process starts.
#[derive(Clone, Debug, Default)]
pub struct Recovery {
    /// The progress record found (`None`: no epoch was ever committed): the cluster's (P).
    pub progress: Option<Progress>,
    /// The last epoch that only rebuilds state (P); `None` when there is no progress record.
    pub restore_through: Option<Epoch>,
    /// The last epoch the replay reaches (Q ≥ P): epochs after P up to it are written again.
    pub replay_through: Option<Epoch>,
    /// Where Kafka resumes: the next offset of every partition after Q.
    pub start: BTreeMap<u32, u64>,
    /// W(P), the dataflow's initial watermark.
    pub initial_watermark: Option<Micros>,
    /// The archive objects to replay, this process's partitions only.
    pub replay: Vec<ReplayObject>,
    /// Archive objects deleted (beyond the recorded offsets).
    pub deleted: usize,
    /// This start's generation, when [`plan`] claimed one.
    pub generation: Option<u64>,
    /// The checkpoint the workers of this process start from (`None`: the whole replay).
    pub checkpoint: Option<Arc<Restored>>,
    /// Checkpoint parts deleted (marks after the progress record).
    pub deleted_parts: usize,
}

/// The checkpoint a restart starts from: its mark T, and this process's workers' parts.
#[derive(Clone, Debug)]
pub struct Restored {
    /// The mark T: the state after every epoch before it.
    pub mark: Epoch,
    /// W(T − 1).
    pub watermark: Option<Micros>,
    /// This process's workers' parts, by worker index.
    pub parts: BTreeMap<usize, rankmysteps_dataflow::checkpoint::WorkerState>,
}

/// An archive object to replay: its key, partition, and the offsets to keep (below `until`).
#[derive(Clone, Debug)]
pub struct ReplayObject {
    /// The object's key.
    pub key: String,
    /// Its partition.
    pub partition: u32,
    /// Its first offset.
    pub first: u64,
    /// Records before this offset are not replayed (they are in the checkpoint).
    pub from: u64,
    /// Records at this offset and beyond are not replayed.
    pub until: u64,
}

/// How a process's share of the topic is decided (partition p goes to worker p mod workers).
#[derive(Clone, Copy, Debug)]
pub struct Share {
    /// This process's index.
    pub process: usize,
    /// Worker threads per process.
    pub threads: usize,
    /// Processes in the cluster.
    pub processes: usize,
}

impl Share {
    /// Whether partition `p` is consumed by a worker of this process.
    pub fn owns(&self, p: u32) -> bool {
        let workers = (self.threads * self.processes).max(1);
        (p as usize % workers) / self.threads.max(1) == self.process
    }

    /// Workers in the cluster.
    pub fn workers(&self) -> usize {
        (self.threads * self.processes).max(1)
    }

    /// This process's worker indices.
    pub fn local_workers(&self) -> std::ops::Range<usize> {
        let t = self.threads.max(1);
        self.process * t..(self.process + 1) * t
    }
}

/// The UTC day of the start of epoch `epoch` of `epoch_ms` (the archive's ingest day of it).
pub fn ingest_day_of(epoch: Epoch, epoch_ms: u64) -> Day {
    (epoch.saturating_mul(epoch_ms) / 86_400_000) as Day
}

/// The UTC day from which on archive objects can hold events of days open at watermark `w`.
///
/// The first open day D is the least with close(D) > w. An event of day D happens at or after
/// the start of D in UTC+14 (D − 14 h in UTC), is consumed no earlier than `skew` before its
/// time, in an epoch that started at most `epoch_ms` before that; one more day of margin.
pub fn first_ingest_day(w: Micros, grace: Micros, skew: Micros, epoch_ms: u64) -> Day {
    let mut day = (w - grace).div_euclid(MICROS_PER_DAY) as Day - 2;
    while close_of_day(day, grace) <= w {
        day += 1;
    }
    let earliest = day as Micros * MICROS_PER_DAY
        - 14 * 3600 * MICROS_PER_SEC
        - skew
        - epoch_ms as Micros * 1000;
    earliest.div_euclid(MICROS_PER_DAY) as Day - 1
}

/// Reads the progress and intent records, claims this start's generation (design §4; with
/// `claim`), loads the latest complete checkpoint (with `checkpoints`), deletes the archive
/// objects and checkpoint parts of uncommitted epochs (this process's partitions and workers;
/// its partitions' `rejected/` objects beyond its own record) and lists what to replay. See
/// the module docs.
///
/// The generation is claimed only once the restart is known to be possible: an archive that
/// holds objects while Cassandra holds no record of any start of this process is refused
/// without claiming, so that starting again (a launcher retrying) refuses it again rather
/// than deleting another deployment's archive. Nothing is deleted unless the claimed
/// generation is still the latest of this process: an older start still running must not
/// delete what a newer one has archived.
#[allow(clippy::too_many_arguments)]
pub fn plan(
    reader: &CassandraReader,
    job: &str,
    claim: bool,
    archive: Option<&S3Archive>,
    topic: &str,
    share: Share,
    grace: Micros,
    skew: Micros,
    epoch_ms: u64,
    checkpoints: bool,
    partitions: u32,
) -> Result<Recovery, RuntimeError> {
    let progress = reader.progress(job)?;
    // Every process's own records: in a cluster each writes its share and its own progress
    // and intent records (process 0's progress record is the cluster's, P, published once
    // every other process's record has reached its epoch). Each record carries every
    // partition's positions. All of them, whatever the shape of the cluster that wrote them
    // (one of another shape may have written epochs after P too).
    //
    // Every process rebuilds state up to P only, and writes again everything after it, even
    // when its own record is further: the days open at P are the same for every process (the
    // watermark is the cluster's), so each one's restart deletes and writes again exactly
    // those. Up to its own record instead, a day that closed between two processes' records
    // would be deleted by the one behind (still open there) and never written again by the
    // one ahead (closed there, restored only).
    let records: Vec<Progress> = reader
        .progress_under(job)?
        .into_iter()
        .map(|(_, record)| record)
        .collect();
    let positions = |p: &Progress| -> BTreeMap<u32, u64> {
        p.positions.iter().map(|x| (x.partition, x.next)).collect()
    };
    let committed = progress.as_ref().map(positions).unwrap_or_default();
    // The epoch the replay must reach: Q, the furthest record of any process, if writes may
    // have begun after P.
    let intent = records.into_iter().max_by_key(|r| r.epoch);
    let ahead = intent
        .as_ref()
        .filter(|i| progress.as_ref().is_none_or(|p| i.epoch > p.epoch));
    let (replay_through, start) = match (ahead, &progress) {
        (Some(i), _) => (Some(i.epoch), positions(i)),
        (None, Some(p)) => (Some(p.epoch), committed.clone()),
        (None, None) => (None, BTreeMap::new()),
    };
    let mut initial_watermark = progress.as_ref().and_then(|p| p.watermark_micros);
    // The latest complete checkpoint of committed history (mark T with T − 1 ≤ P), if any:
    // then the state comes from it, and only the archive after its offsets is replayed.
    let found = match (archive, &progress, checkpoints) {
        (Some(archive), Some(_), true) => Some(crate::checkpoint::list(archive, topic)?.0),
        _ => None,
    };
    // P's positions, when no epoch after P was under way (an idle job's checkpoints after P
    // hold P's state: see `checkpoint::choose`).
    let idle = ahead.is_none().then_some(&committed);
    let chosen = match (&found, &progress) {
        (Some(found), Some(p)) => crate::checkpoint::choose(found, p.epoch, share.workers(), idle),
        _ => None,
    };
    let mut restored = None;
    if let (Some(mark), Some(archive), Some(found)) = (chosen, archive, &found) {
        let parts = crate::checkpoint::load(archive, topic, found, mark, &share.local_workers())?;
        let watermark = parts.values().next().and_then(|p| p.watermark);
        if parts.values().any(|p| p.watermark != watermark) {
            return Err(RuntimeError::Checkpoint(format!(
                "the parts of the checkpoint at mark {mark} disagree on the watermark"
            )));
        }
        initial_watermark = watermark;
        restored = Some(Restored {
            mark,
            watermark,
            parts,
        });
    }
    // A checkpoint after P (an idle job's) is restored, not written: its epoch T − 1 only
    // rebuilds the state, like the epochs up to P.
    let restore_through = match (&progress, &restored) {
        (Some(p), Some(r)) => Some(p.epoch.max(r.mark - 1)),
        (Some(p), None) => Some(p.epoch),
        (None, _) => None,
    };
    let mut recovery = Recovery {
        restore_through,
        progress,
        replay_through,
        start,
        initial_watermark,
        ..Recovery::default()
    };
    // Objects after a checkpoint are of its epochs' days or later; else, from the days open
    // at W(P).
    let from = match &restored {
        Some(r) => Some(ingest_day_of(r.mark, epoch_ms) - 1),
        None => initial_watermark.map(|w| first_ingest_day(w, grace, skew, epoch_ms)),
    };
    // This process's partitions' offsets at the checkpoint (absent: nothing read before it).
    // The largest of the parts': a restart's replay is shared by a process's workers, so a
    // part may also hold older offsets of a partition another worker reads live.
    let mut at_checkpoint: BTreeMap<u32, u64> = BTreeMap::new();
    for x in restored
        .iter()
        .flat_map(|r| r.parts.values())
        .flat_map(|p| p.positions.iter())
    {
        let next = at_checkpoint.entry(x.partition).or_insert(x.next);
        *next = (*next).max(x.next);
    }
    // After a checkpoint: only this process's partitions' objects from its offsets on (an
    // object holds one epoch of one partition, under the ingest day of that epoch), listed
    // per partition and day, so that the listing too follows the checkpoint interval, not the
    // day. Otherwise every object of the days that can hold open days' events.
    let days_after = |mark: Epoch| ingest_day_of(mark, epoch_ms)..=wall_day() + 1;
    let raw = match (archive, &restored) {
        (Some(archive), Some(r)) => {
            let mut raw = Vec::new();
            for p in (0..partitions).filter(|&p| share.owns(p)) {
                let from = at_checkpoint.get(&p).copied().unwrap_or(0);
                raw.extend(partition_objects(
                    archive,
                    ObjectKind::Raw,
                    topic,
                    p,
                    days_after(r.mark),
                    from,
                )?);
            }
            raw
        }
        (Some(archive), None) => objects(archive, ObjectKind::Raw, topic, from)?,
        (None, _) => Vec::new(),
    };
    // No progress and no intent record: nothing was ever committed. If an earlier start of
    // this process claimed a generation in this keyspace, the objects are that start's,
    // archived before it was stopped in its first epoch: they are uncommitted, deleted below
    // like any beyond the recorded offsets, and everything is consumed again. Only on a first
    // start is an existing archive an error (and no generation is claimed): then it was
    // written against another keyspace, and deleting it could lose another deployment's data.
    if let (None, Some(archive), Some((key, _))) = (recovery.replay_through, archive, raw.first()) {
        if reader.generation(job, share.process)?.is_none() {
            return Err(RuntimeError::Recovery(format!(
                "the archive holds objects of topic {topic} (e.g. s3://{}/{key}) but Cassandra \
                 has no progress record for them, and this is the first start of this process \
                 in keyspace {}: [cassandra] does not point at the keyspace the run that wrote \
                 them used (or the keyspace was created again); point it there, or delete \
                 {}raw/{topic}/ and {}rejected/{topic}/ to start over",
                archive.bucket(),
                reader.keyspace(),
                archive.prefix(),
                archive.prefix()
            )));
        }
    }
    if claim {
        let g = reader.claim_generation(job, share.process).map_err(|e| {
            context(
                e,
                "claiming a generation in Cassandra (does the keyspace have the generations \
                 table? rankmysteps schema apply)",
            )
        })?;
        recovery.generation = Some(g);
    }
    let Some(archive) = archive else {
        if recovery.replay_through.is_some() {
            return Err(RuntimeError::Recovery(
                "Cassandra holds a progress record, but without the archive ([s3]) the state of \
                 the open days cannot be rebuilt; configure the [s3] section the job ran with"
                    .into(),
            ));
        }
        return Ok(recovery);
    };
    if recovery.replay_through.is_none() && raw.is_empty() && found.is_none() {
        return Ok(recovery);
    }
    if let Some(g) = recovery.generation {
        reader.check_generation(job, share.process, g)?;
    }
    if found.is_some() {
        recovery.deleted_parts = crate::checkpoint::delete_uncommitted(
            archive,
            topic,
            &share.local_workers(),
            recovery.progress.as_ref().map(|p| p.epoch),
            restored.as_ref().map(|r| r.mark),
        )?;
    }
    for (key, k) in raw {
        if !share.owns(k.partition) {
            continue;
        }
        let until = recovery.start.get(&k.partition).copied().unwrap_or(0);
        let from = at_checkpoint.get(&k.partition).copied().unwrap_or(0);
        if k.first >= until {
            archive.delete(&key)?;
            recovery.deleted += 1;
        } else if restored.is_some() && k.last < from {
            // In the checkpoint.
        } else {
            recovery.replay.push(ReplayObject {
                key,
                partition: k.partition,
                first: k.first,
                from,
                until,
            });
        }
    }
    // The dead letters of this process's partitions beyond P's positions (written again with
    // the epochs after P).
    {
        let rejected = match &restored {
            Some(r) => {
                let mut out = Vec::new();
                for p in (0..partitions).filter(|&p| share.owns(p)) {
                    let from = committed.get(&p).copied().unwrap_or(0);
                    out.extend(partition_objects(
                        archive,
                        ObjectKind::Rejected,
                        topic,
                        p,
                        days_after(r.mark),
                        from,
                    )?);
                }
                out
            }
            None => objects(archive, ObjectKind::Rejected, topic, from)?,
        };
        for (key, k) in rejected {
            if !share.owns(k.partition) {
                continue;
            }
            if k.first >= committed.get(&k.partition).copied().unwrap_or(0) {
                archive.delete(&key)?;
                recovery.deleted += 1;
            }
        }
    }
    if let Some(r) = &restored {
        let days: std::collections::BTreeSet<Day> = r
            .parts
            .values()
            .flat_map(|p| p.totals.iter().map(|t| t.0))
            .collect();
        tracing::info!(
            mark = r.mark,
            watermark = ?r.watermark,
            ?days,
            positions = ?at_checkpoint,
            start = ?recovery.start,
            objects = recovery.replay.len(),
            "restart from a checkpoint"
        );
    }
    recovery.checkpoint = restored.map(Arc::new);
    recovery.replay.sort_by_key(|o| (o.partition, o.first));
    Ok(recovery)
}

/// The `kind` objects of `topic` from ingest day `from` on (all without it), parsed keys.
fn objects(
    archive: &S3Archive,
    kind: ObjectKind,
    topic: &str,
    from: Option<Day>,
) -> Result<Vec<(String, rankmysteps_sinks::s3::ObjectKey)>, RuntimeError> {
    let prefix = format!("{}{}/{topic}/", archive.prefix(), kind.dir());
    // Keys of day D start with `<prefix>D/`; every key of D and later sorts after `<prefix>D`.
    let after = from.map(|d| format!("{prefix}{}", format_day(d)));
    let mut out = Vec::new();
    for key in archive.list_after(&prefix, after.as_deref())? {
        match parse_object_key(archive.prefix(), &key) {
            Some(k) if k.kind == kind && k.topic == topic => out.push((key, k)),
            _ => tracing::warn!(key, "recovery: not an archive object key; ignored"),
        }
    }
    Ok(out)
}

/// The `kind` objects of `topic`'s partition `partition` under the ingest days `days` whose
/// first offset is `from` or later (an object holds one epoch: none straddles `from` when it
/// is an epoch's boundary, as checkpoint and progress positions are).
fn partition_objects(
    archive: &S3Archive,
    kind: ObjectKind,
    topic: &str,
    partition: u32,
    days: std::ops::RangeInclusive<Day>,
    from: u64,
) -> Result<Vec<(String, rankmysteps_sinks::s3::ObjectKey)>, RuntimeError> {
    let mut out = Vec::new();
    for day in days {
        let first = rankmysteps_sinks::s3::object_key(
            archive.prefix(),
            kind,
            topic,
            day,
            partition,
            from,
            0,
        );
        // `<dir>/p<partition>-`: the partition's objects of that day (not p<partition>0-...).
        let cut = first.len() - "-.jsonl.gz".len() - 2 * rankmysteps_sinks::s3::OFFSET_DIGITS;
        let prefix = &first[..cut];
        // Keys sort by first offset: every key after `<prefix><from>-<0…>` starts at `from` or
        // later (from > 0; from 0: every key of the prefix).
        let after = (from > 0).then_some(first.as_str());
        for key in archive.list_after(prefix, after)? {
            match parse_object_key(archive.prefix(), &key) {
                Some(k) if k.kind == kind && k.topic == topic && k.partition == partition => {
                    out.push((key, k))
                }
                _ => tracing::warn!(key, "recovery: not an archive object key; ignored"),
            }
        }
    }
    Ok(out)
}

/// Today's UTC day by the wall clock.
fn wall_day() -> Day {
    wall_clock().div_euclid(MICROS_PER_DAY) as Day
}

/// Most records in one chunk of a replay.
const CHUNK_RECORDS: usize = 4096;

/// The replay of [`Recovery::replay`], shared by the workers of a process: chunks in epoch
/// order, each of one epoch, with the records' original ingestion times.
///
/// The objects of one partition hold increasing offsets and therefore increasing epochs (one
/// object per epoch and partition), so a merge over partitions by the epoch of each one's next
/// object yields epoch order while holding one object per partition in memory.
#[derive(Clone)]
pub struct SharedReplay(Arc<Mutex<Replay>>);

struct Replay {
    archive: Arc<S3Archive>,
    /// Per partition: objects not yet read.
    objects: BTreeMap<u32, VecDeque<ReplayObject>>,
    /// Per partition: the records of its current object not yet handed out.
    heads: BTreeMap<u32, VecDeque<ArchiveRecord>>,
    failed: bool,
    stop: Arc<AtomicBool>,
    failure: Arc<Mutex<Option<SinkError>>>,
    records: u64,
    /// Objects read so far.
    read: u64,
    /// Objects to read in all.
    total: u64,
}

impl SharedReplay {
    /// A replay of `objects`. A failure to read one is recorded in `failure` and stops the job
    /// (`stop`) before any epoch it leaves incomplete can be written: the sink thread commits
    /// nothing once `failure` is set.
    pub fn new(
        archive: Arc<S3Archive>,
        objects: Vec<ReplayObject>,
        stop: Arc<AtomicBool>,
        failure: Arc<Mutex<Option<SinkError>>>,
    ) -> SharedReplay {
        let mut by_partition: BTreeMap<u32, VecDeque<ReplayObject>> = BTreeMap::new();
        let total = objects.len() as u64;
        for o in objects {
            by_partition.entry(o.partition).or_default().push_back(o);
        }
        SharedReplay(Arc::new(Mutex::new(Replay {
            archive,
            objects: by_partition,
            heads: BTreeMap::new(),
            failed: false,
            stop,
            failure,
            records: 0,
            read: 0,
            total,
        })))
    }

    /// Records handed out so far.
    pub fn records(&self) -> u64 {
        self.0.lock().expect("replay lock").records
    }

    /// `(objects read, objects in all)`, for progress.
    pub fn objects(&self) -> (u64, u64) {
        let replay = self.0.lock().expect("replay lock");
        (replay.read, replay.total)
    }
}

impl Replay {
    /// Makes sure every partition with objects left has a non-empty head.
    fn fill(&mut self) -> Result<(), SinkError> {
        let partitions: Vec<u32> = self.objects.keys().copied().collect();
        for p in partitions {
            while self.heads.get(&p).is_none_or(VecDeque::is_empty) {
                let Some(object) = self.objects.get_mut(&p).and_then(VecDeque::pop_front) else {
                    break;
                };
                let records: VecDeque<ArchiveRecord> = self
                    .archive
                    .get_lines(&object.key)?
                    .into_iter()
                    .filter(|r| r.offset >= object.from && r.offset < object.until)
                    .collect();
                self.read += 1;
                if let Some(r) = records
                    .iter()
                    .find(|r| r.epoch.is_none() || r.partition != p)
                {
                    return Err(SinkError::s3(
                        format!("replaying s3://{}/{}", self.archive.bucket(), object.key),
                        format!(
                            "offset {} {}",
                            r.offset,
                            if r.partition != p {
                                "is of another partition"
                            } else {
                                "has no epoch (written before epochs were archived)"
                            }
                        ),
                    ));
                }
                self.heads.insert(p, records);
            }
        }
        Ok(())
    }

    fn next_chunk(&mut self) -> Result<Option<Chunk>, SinkError> {
        self.fill()?;
        // The partition whose next record has the least epoch.
        let Some((&p, epoch)) = self
            .heads
            .iter()
            .filter_map(|(p, h)| h.front().map(|r| (p, r.epoch.unwrap_or(0))))
            .min_by_key(|&(p, e)| (e, *p))
        else {
            return Ok(None);
        };
        let head = self.heads.get_mut(&p).expect("present");
        let mut chunk = Chunk::new(epoch, wall_clock());
        chunk.archived = true;
        let mut nows = Vec::new();
        let mut next = None;
        while chunk.records.len() < CHUNK_RECORDS {
            if head.front().is_none_or(|r| r.epoch != Some(epoch)) {
                break;
            }
            let r = head.pop_front().expect("checked");
            chunk.push(record_pos(p, r.offset), &r.raw);
            chunk.timestamps.push(r.kafka_timestamp.unwrap_or(-1));
            nows.push(r.ingested.unwrap_or(chunk.now));
            next = Some(r.offset + 1);
        }
        chunk.record_now = Some(nows);
        if let Some(next) = next {
            chunk.positions.push(Position { partition: p, next });
        }
        self.records += chunk.records.len() as u64;
        Ok(Some(chunk))
    }
}

impl ChunkSource for SharedReplay {
    /// The archive's records of a restart: no bound is computed, so the events that could be
    /// late keep their raw bytes (a replay is short: the epochs since the checkpoint).
    fn watermark_bound(&self, _chunk: &Chunk) -> Option<Option<Micros>> {
        None
    }

    fn parsed(&mut self, _chunk: &Chunk, _max_time: Option<Micros>) {}

    fn pull(&mut self) -> Pull {
        let mut replay = self.0.lock().expect("replay lock");
        if replay.failed {
            return Pull::Done;
        }
        match replay.next_chunk() {
            Ok(Some(chunk)) => Pull::Chunk(chunk),
            Ok(None) => Pull::Done,
            Err(e) => {
                tracing::error!(error = %e, "recovery replay failed; stopping");
                replay.failed = true;
                // Failure first: no epoch completes before this worker's next pull returns.
                replay
                    .failure
                    .lock()
                    .expect("failure lock")
                    .get_or_insert(e);
                replay.stop.store(true, Ordering::SeqCst);
                Pull::Done
            }
        }
    }
}

/// A worker's source after a restart: its share of the replay, then Kafka.
pub struct Resumed {
    /// The replay (shared by the process's workers); `None` once it is over for this worker.
    pub replay: Option<SharedReplay>,
    /// Kafka, positioned at [`Recovery::start`].
    pub kafka: rankmysteps_sources::kafka::KafkaSource,
    /// The job's first failure: a partition Kafka can no longer serve is one (see
    /// [`rankmysteps_sources::kafka::KafkaSource::lost`]); nothing is committed after it.
    pub failure: Arc<Mutex<Option<SinkError>>>,
    /// Stops the job's sources.
    pub stop: Arc<AtomicBool>,
}

impl ChunkSource for Resumed {
    /// The source of the chunk: the replay while it lasts (a chunk pulled from it leaves
    /// `replay` set), then Kafka.
    fn watermark_bound(&self, chunk: &Chunk) -> Option<Option<Micros>> {
        match &self.replay {
            Some(replay) => replay.watermark_bound(chunk),
            None => self.kafka.watermark_bound(chunk),
        }
    }

    fn parsed(&mut self, chunk: &Chunk, max_time: Option<Micros>) {
        match &mut self.replay {
            Some(replay) => replay.parsed(chunk, max_time),
            None => self.kafka.parsed(chunk, max_time),
        }
    }

    fn pull(&mut self) -> Pull {
        if let Some(replay) = self.replay.as_mut() {
            match replay.pull() {
                Pull::Done => self.replay = None,
                other => return other,
            }
        }
        let pull = self.kafka.pull();
        if let (Pull::Done, Some(lost)) = (&pull, self.kafka.lost()) {
            // Failure first: no epoch completes before this worker's next pull returns.
            self.failure
                .lock()
                .expect("failure lock")
                .get_or_insert_with(|| SinkError::Input {
                    detail: lost.to_owned(),
                });
            self.stop.store(true, Ordering::SeqCst);
        }
        pull
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rankmysteps_dataflow::event::is_closed;

    #[test]
    fn shares_follow_the_worker_assignment() {
        // 2 processes of 3 threads: workers 0-2 on process 0, 3-5 on process 1.
        let (a, b) = (
            Share {
                process: 0,
                threads: 3,
                processes: 2,
            },
            Share {
                process: 1,
                threads: 3,
                processes: 2,
            },
        );
        let owned: Vec<bool> = (0..12).map(|p| a.owns(p)).collect();
        assert_eq!(
            owned,
            [true, true, true, false, false, false, true, true, true, false, false, false]
        );
        assert!((0..12).all(|p| a.owns(p) != b.owns(p)));
    }

    #[test]
    fn the_first_ingest_day_precedes_every_open_day() {
        let hour = 3600 * MICROS_PER_SEC;
        for (w, grace, skew) in [
            (20_000 * MICROS_PER_DAY + 5 * hour, 24 * hour, hour),
            (20_000 * MICROS_PER_DAY + 13 * hour, 0, 0),
            (20_000 * MICROS_PER_DAY, 72 * hour, 10 * hour),
        ] {
            let from = first_ingest_day(w, grace, skew, 1000);
            // The least open day.
            let open = (19_990..20_010)
                .find(|d| !is_closed(*d, Some(w), grace))
                .unwrap();
            assert!(is_closed(open - 1, Some(w), grace));
            // Its earliest event (UTC+14 midnight), consumed `skew` early, in an epoch that
            // started a second before: on or after `from`.
            let earliest = open as Micros * MICROS_PER_DAY - 14 * hour - skew - MICROS_PER_SEC;
            assert!(earliest.div_euclid(MICROS_PER_DAY) as Day >= from);
            // And not absurdly early.
            assert!(open - from <= 3 + (skew / MICROS_PER_DAY) as Day);
        }
    }
}
