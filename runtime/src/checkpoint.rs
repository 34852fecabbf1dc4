//! Checkpoints in the S3 store (design §4): what each worker's part looks like there, how a
//! process writes its workers' parts (a thread of its own: nothing waits for the store under a
//! worker), and how a restart finds the latest complete checkpoint.
//!
//! The dataflow takes the parts ([`rankmysteps_dataflow::checkpoint`]): at mark T, each worker
//! its state after every epoch before T. Here, part i of n at mark T, written by a start of
//! generation g, is the object
//!
//! ```text
//! <prefix>checkpoints/<topic>/<T, 20 digits>/w<i>-of-<n>-g<g>-p<positions digest>.bin.gz
//! ```
//!
//! (a deterministic key; one PUT, so a part is there whole or not at all). A checkpoint is
//! **complete** when all n parts of T are there; a restart uses the latest complete one with
//! T − 1 ≤ P (the progress record's epoch: its state must be committed history) whose n is the
//! restarted cluster's number of workers (a worker's part holds the users, ids and partitions
//! routed to it); or a later one that read nothing after P (an idle job's: see [`choose`]).
//! Other parts of marks after P + 1 are not committed history: the next start deletes its
//! workers' ones, as it deletes archive objects beyond the progress record. Before each
//! write the writer checks that its generation is still the latest (design §4: S3 writes check
//! the claimed generation first). Once all of a process's parts of T are written, the process
//! deletes its parts older than the second-latest complete checkpoint: the latest complete one
//! may still be ahead of the progress record, the one before it is (or both are replaced).

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Instant;

use rankmysteps_dataflow::checkpoint::WorkerState;
use rankmysteps_dataflow::event::Epoch;
use rankmysteps_sinks::cassandra::{CassandraConfig, CassandraReader};
use rankmysteps_sinks::s3::S3Archive;
use rankmysteps_sinks::SinkError;

use crate::error::RuntimeError;

/// The first bytes of a part (before the gzip stream): the format and its version.
const MAGIC: &[u8; 8] = b"RMSCKP01";

/// `<prefix>checkpoints/<topic>/`.
pub fn checkpoint_dir(archive_prefix: &str, topic: &str) -> String {
    format!("{archive_prefix}checkpoints/{topic}/")
}

/// What a part's key says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartKey {
    /// The mark T.
    pub mark: Epoch,
    /// The worker whose part it is.
    pub worker: usize,
    /// The number of workers of the cluster that wrote it.
    pub workers: usize,
    /// The generation of the process that wrote it.
    pub generation: u64,
    /// [`positions_digest`] of the part's positions: a restart can tell from the keys alone
    /// whether a checkpoint after the progress record read anything more (see [`choose`]).
    pub positions: u64,
}

/// A digest of the next offsets of `worker`'s partitions (partition p belongs to worker
/// p mod `workers`) in `positions`, equal for equal positions.
pub fn positions_digest(
    positions: impl IntoIterator<Item = (u32, u64)>,
    worker: usize,
    workers: usize,
) -> u64 {
    let mut owned: Vec<(u32, u64)> = positions
        .into_iter()
        .filter(|&(p, _)| p as usize % workers.max(1) == worker)
        .collect();
    owned.sort_unstable();
    owned.dedup();
    let mut h = rankmysteps_dataflow::random::splitmix64(owned.len() as u64);
    for (p, next) in owned {
        h = rankmysteps_dataflow::random::splitmix64(h ^ u64::from(p));
        h = rankmysteps_dataflow::random::splitmix64(h ^ next);
    }
    h
}

impl PartKey {
    /// The object key under `dir` ([`checkpoint_dir`]).
    pub fn key(&self, dir: &str) -> String {
        format!(
            "{dir}{:020}/w{:04}-of-{:04}-g{:010}-p{:016x}.bin.gz",
            self.mark, self.worker, self.workers, self.generation, self.positions
        )
    }

    /// Reads back a key made by [`PartKey::key`]; `None` for any other.
    pub fn parse(dir: &str, key: &str) -> Option<PartKey> {
        let (mark, name) = key.strip_prefix(dir)?.split_once('/')?;
        let name = name.strip_prefix('w')?.strip_suffix(".bin.gz")?;
        let (worker, rest) = name.split_once("-of-")?;
        let (workers, rest) = rest.split_once("-g")?;
        let (generation, positions) = rest.split_once("-p")?;
        if mark.len() != 20 || positions.len() != 16 {
            return None;
        }
        Some(PartKey {
            mark: mark.parse().ok()?,
            worker: worker.parse().ok()?,
            workers: workers.parse().ok()?,
            generation: generation.parse().ok()?,
            positions: u64::from_str_radix(positions, 16).ok()?,
        })
    }
}

/// Whether `key` is a checkpoint part's, whatever the archive's prefix: `…checkpoints/<topic>/
/// <mark>/w<i>-of-<n>-g<g>.bin.gz`.
pub fn is_part_key(key: &str) -> bool {
    let mut segments = key.rsplit('/');
    let (Some(name), Some(mark), Some(_topic), Some(dir)) = (
        segments.next(),
        segments.next(),
        segments.next(),
        segments.next(),
    ) else {
        return false;
    };
    dir == "checkpoints"
        && mark.len() == 20
        && mark.bytes().all(|b| b.is_ascii_digit())
        && name.starts_with('w')
        && name.ends_with(".bin.gz")
}

/// A part's bytes: [`MAGIC`], then the state in bincode, gzipped.
pub fn encode(state: &WorkerState) -> Result<Vec<u8>, RuntimeError> {
    let mut out = MAGIC.to_vec();
    let mut gz = flate2::write::GzEncoder::new(&mut out, flate2::Compression::fast());
    bincode::serialize_into(&mut gz, state)
        .map_err(|e| RuntimeError::Checkpoint(format!("encoding a checkpoint part: {e}")))?;
    gz.finish()
        .map_err(|e| RuntimeError::Checkpoint(format!("compressing a checkpoint part: {e}")))?;
    Ok(out)
}

/// Reads back [`encode`]'s bytes.
pub fn decode(bytes: &[u8]) -> Result<WorkerState, RuntimeError> {
    let body = bytes.strip_prefix(MAGIC.as_slice()).ok_or_else(|| {
        RuntimeError::Checkpoint("not a checkpoint part of this version (bad magic)".into())
    })?;
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(body)
        .read_to_end(&mut raw)
        .map_err(|e| RuntimeError::Checkpoint(format!("decompressing a checkpoint part: {e}")))?;
    bincode::deserialize(&raw)
        .map_err(|e| RuntimeError::Checkpoint(format!("decoding a checkpoint part: {e}")))
}

/// The parts found under `dir`, by mark, then worker: the latest generation's key of each.
pub type Found = BTreeMap<Epoch, BTreeMap<usize, PartKey>>;

/// Lists the parts of `topic`'s checkpoints (other keys under the directory are ignored).
pub fn list(archive: &S3Archive, topic: &str) -> Result<(Found, Vec<String>), RuntimeError> {
    let dir = checkpoint_dir(archive.prefix(), topic);
    let mut found = Found::new();
    let mut keys = Vec::new();
    for key in archive.list(&dir)? {
        match PartKey::parse(&dir, &key) {
            Some(part) => {
                keys.push(key);
                let slot = found.entry(part.mark).or_default();
                if slot
                    .get(&part.worker)
                    .is_none_or(|p| p.generation < part.generation)
                {
                    slot.insert(part.worker, part);
                }
            }
            None => tracing::warn!(key, "checkpoints: not a checkpoint part key; ignored"),
        }
    }
    Ok((found, keys))
}

/// Whether mark `parts` holds a part of each of `workers` workers, all of that cluster size.
fn complete(parts: &BTreeMap<usize, PartKey>, workers: usize) -> bool {
    parts.len() == workers
        && (0..workers).all(|w| parts.get(&w).is_some_and(|p| p.workers == workers))
}

/// The latest complete checkpoint of `workers` workers that is committed history: its mark T
/// has T − 1 ≤ `through` (the progress record's epoch P), or nothing was read after P
/// (`idle`: P's positions when no epoch after P was under way, i.e. no intent record ahead)
/// and every part's positions are P's. The second case is an idle job's: its epochs after P
/// held no record, so P does not move, while the checkpoints after it hold the same state.
pub fn choose(
    found: &Found,
    through: Epoch,
    workers: usize,
    idle: Option<&BTreeMap<u32, u64>>,
) -> Option<Epoch> {
    let unchanged = |parts: &BTreeMap<usize, PartKey>| {
        idle.is_some_and(|at| {
            parts.iter().all(|(&w, part)| {
                part.positions == positions_digest(at.iter().map(|(&p, &n)| (p, n)), w, workers)
            })
        })
    };
    found
        .iter()
        .rev()
        .find(|(&mark, parts)| {
            mark >= 1 && complete(parts, workers) && (mark - 1 <= through || unchanged(parts))
        })
        .map(|(&mark, _)| mark)
}

/// Where a process checks that its generation is still the latest before each write.
#[derive(Clone, Debug)]
pub struct Fence {
    /// The Cassandra of the generations table.
    pub cassandra: CassandraConfig,
    /// The job (the progress record's key).
    pub job: String,
    /// This process.
    pub process: usize,
    /// Its generation.
    pub generation: u64,
}

/// Writes one process's checkpoint parts on a thread of its own.
///
/// Workers [`offer`](Writer::offer) their parts and never wait: while the writer is busy with
/// earlier parts, a worker's next part is skipped (the next mark brings a newer one), so at
/// most one part per worker is held here.
pub struct Writer {
    sender: SyncSender<(usize, WorkerState)>,
    metrics: Option<Arc<crate::metrics::Metrics>>,
}

impl Writer {
    /// Starts the writer of the parts of `workers` (this process's worker indices) of a
    /// cluster of `total` workers, into `archive` under `topic`'s checkpoint directory.
    pub fn start(
        archive: Arc<S3Archive>,
        topic: String,
        workers: std::ops::Range<usize>,
        total: usize,
        fence: Option<Fence>,
        metrics: Option<Arc<crate::metrics::Metrics>>,
    ) -> Result<Writer, RuntimeError> {
        let (sender, receiver) = sync_channel::<(usize, WorkerState)>(workers.len().max(1));
        let writer_metrics = metrics.clone();
        std::thread::Builder::new()
            .name("rankmysteps-checkpoint".into())
            .spawn(move || {
                let dir = checkpoint_dir(archive.prefix(), &topic);
                let mut reader: Option<CassandraReader> = None;
                // Marks → this process's parts of it written.
                let mut written: BTreeMap<Epoch, usize> = BTreeMap::new();
                while let Ok((worker, mut state)) = receiver.recv() {
                    let mark = state.mark;
                    // Only the worker's own partitions: a restart's replay is shared by a
                    // process's workers, so others' may have passed through it.
                    state
                        .positions
                        .retain(|p| p.partition as usize % total.max(1) == worker);
                    let positions = positions_digest(
                        state.positions.iter().map(|p| (p.partition, p.next)),
                        worker,
                        total,
                    );
                    let started = Instant::now();
                    let result = (|| -> Result<usize, RuntimeError> {
                        let generation = match &fence {
                            Some(f) => {
                                if reader.is_none() {
                                    reader = Some(CassandraReader::connect(&f.cassandra)?);
                                }
                                let reader = reader.as_ref().expect("connected");
                                reader.check_generation(&f.job, f.process, f.generation)?;
                                f.generation
                            }
                            None => 0,
                        };
                        let bytes = encode(&state)?;
                        let len = bytes.len();
                        let key = PartKey {
                            mark,
                            worker,
                            workers: total,
                            generation,
                            positions,
                        }
                        .key(&dir);
                        archive.put_bytes(&key, bytes)?;
                        Ok(len)
                    })();
                    match result {
                        Ok(bytes) => {
                            tracing::info!(
                                mark,
                                worker,
                                users = state.totals.len(),
                                ids = state.window.len(),
                                bytes,
                                ms = started.elapsed().as_millis() as u64,
                                "checkpoint part written"
                            );
                            if let Some(m) = &metrics {
                                m.checkpoint_part("written");
                            }
                            let n = written.entry(mark).or_default();
                            *n += 1;
                            if *n == workers.len() {
                                written = written.split_off(&(mark + 1));
                                if let Some(m) = &metrics {
                                    m.checkpoint_complete(mark);
                                }
                                if let Err(e) = collect(&archive, &topic, &workers, total) {
                                    tracing::warn!(error = %e, "checkpoints: cleaning up old parts failed");
                                }
                            }
                        }
                        Err(RuntimeError::Sink(e @ SinkError::Fenced { .. })) => {
                            tracing::error!(error = %e, "checkpoints: fenced by a newer start; writing no more");
                            break;
                        }
                        Err(e) => {
                            // Not fatal: a restart uses an older checkpoint, or replays more.
                            if let Some(m) = &metrics {
                                m.checkpoint_part("failed");
                            }
                            tracing::warn!(mark, worker, error = %e, "checkpoint part not written");
                        }
                    }
                }
            })
            .map_err(|e| RuntimeError::Worker(format!("cannot start the checkpoint writer: {e}")))?;
        Ok(Writer {
            sender,
            metrics: writer_metrics,
        })
    }

    /// Hands `worker`'s part over; `false` when the writer is still busy (the part is skipped).
    pub fn offer(&self, worker: usize, state: WorkerState) -> bool {
        match self.sender.try_send((worker, state)) {
            Ok(()) => true,
            Err(TrySendError::Full((_, state))) => {
                if let Some(m) = &self.metrics {
                    m.checkpoint_part("skipped");
                }
                tracing::debug!(
                    mark = state.mark,
                    worker,
                    "checkpoint writer busy: part skipped"
                );
                false
            }
            Err(TrySendError::Disconnected(_)) => false,
        }
    }
}

/// Deletes `workers`' parts older than the second-latest complete checkpoint.
fn collect(
    archive: &S3Archive,
    topic: &str,
    workers: &std::ops::Range<usize>,
    total: usize,
) -> Result<(), RuntimeError> {
    let dir = checkpoint_dir(archive.prefix(), topic);
    let (found, keys) = list(archive, topic)?;
    let complete: Vec<Epoch> = found
        .iter()
        .filter(|(_, parts)| complete(parts, total))
        .map(|(&m, _)| m)
        .collect();
    let Some(&keep) = complete.iter().rev().nth(1) else {
        return Ok(());
    };
    for key in keys {
        let Some(part) = PartKey::parse(&dir, &key) else {
            continue;
        };
        if part.mark < keep && workers.contains(&part.worker) {
            archive.delete(&key)?;
        }
    }
    Ok(())
}

/// Deletes `workers`' parts of marks T with T − 1 > `through` (not committed history: a start
/// after a crash computes those epochs again, maybe cut differently), but those of `keep` (the
/// checkpoint chosen, see [`choose`]). Returns how many.
pub fn delete_uncommitted(
    archive: &S3Archive,
    topic: &str,
    workers: &std::ops::Range<usize>,
    through: Option<Epoch>,
    keep: Option<Epoch>,
) -> Result<usize, RuntimeError> {
    let dir = checkpoint_dir(archive.prefix(), topic);
    let (_, keys) = list(archive, topic)?;
    let mut deleted = 0;
    for key in keys {
        let Some(part) = PartKey::parse(&dir, &key) else {
            continue;
        };
        let committed = through.is_some_and(|p| part.mark >= 1 && part.mark - 1 <= p)
            || keep == Some(part.mark);
        if !committed && workers.contains(&part.worker) {
            archive.delete(&key)?;
            deleted += 1;
        }
    }
    Ok(deleted)
}

/// Reads `workers`' parts of the checkpoint at `mark` (from `found`), checking each.
pub fn load(
    archive: &S3Archive,
    topic: &str,
    found: &Found,
    mark: Epoch,
    workers: &std::ops::Range<usize>,
) -> Result<BTreeMap<usize, WorkerState>, RuntimeError> {
    let dir = checkpoint_dir(archive.prefix(), topic);
    let mut out = BTreeMap::new();
    for w in workers.clone() {
        let part = found
            .get(&mark)
            .and_then(|parts| parts.get(&w))
            .ok_or_else(|| RuntimeError::Checkpoint(format!("no part of worker {w} at {mark}")))?;
        let key = part.key(&dir);
        let state = decode(&archive.get_object(&key)?).map_err(|e| {
            RuntimeError::Checkpoint(format!("s3://{}/{key}: {e}", archive.bucket()))
        })?;
        if state.mark != mark {
            return Err(RuntimeError::Checkpoint(format!(
                "s3://{}/{key} holds mark {}, not {mark}",
                archive.bucket(),
                state.mark
            )));
        }
        out.insert(w, state);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rankmysteps_dataflow::output::Position;

    #[test]
    fn keys_read_back() {
        let dir = checkpoint_dir("p/", "steps");
        let part = PartKey {
            mark: 1_800_000_000,
            worker: 3,
            workers: 8,
            generation: 12,
            positions: 0xabc,
        };
        let key = part.key(&dir);
        assert_eq!(
            key,
            "p/checkpoints/steps/00000000001800000000/w0003-of-0008-g0000000012-p0000000000000abc.bin.gz"
        );
        assert_eq!(PartKey::parse(&dir, &key), Some(part));
        assert!(is_part_key(&key));
        assert!(is_part_key(&key["p/".len()..]));
        assert!(!is_part_key(
            "p/raw/steps/2026-01-10/p0-00000000000000000000-00000000000000000009.jsonl.gz"
        ));
        assert_eq!(
            PartKey::parse(&dir, "p/checkpoints/steps/x/w1.bin.gz"),
            None
        );
    }

    #[test]
    fn parts_read_back() {
        let state = WorkerState {
            mark: 40,
            watermark: Some(7),
            totals: vec![(20_000, u128::MAX, 12), (20_001, 5, 0)],
            window: vec![(9, 10)],
            positions: vec![Position {
                partition: 2,
                next: 99,
            }],
        };
        assert_eq!(decode(&encode(&state).unwrap()).unwrap(), state);
        assert!(decode(b"RMSCKP00....").is_err());
    }

    #[test]
    fn the_latest_complete_committed_checkpoint_is_chosen() {
        let mut found = Found::new();
        let part = |mark, worker, workers| PartKey {
            mark,
            worker,
            workers,
            generation: 1,
            positions: positions_digest([(0, 5), (1, 7)], worker, workers),
        };
        for (mark, workers, have) in [(10, 2, 2), (20, 2, 2), (30, 2, 1), (40, 2, 2), (50, 3, 3)] {
            for w in 0..have {
                found
                    .entry(mark)
                    .or_default()
                    .insert(w, part(mark, w, workers));
            }
        }
        assert_eq!(choose(&found, 100, 2, None), Some(40));
        assert_eq!(
            choose(&found, 38, 2, None),
            Some(20),
            "40 is ahead of the progress"
        );
        assert_eq!(choose(&found, 39, 2, None), Some(40));
        assert_eq!(choose(&found, 100, 3, None), Some(50));
        assert_eq!(choose(&found, 5, 2, None), None);
        // Ahead of the progress record, but nothing read since: usable.
        let at_p: BTreeMap<u32, u64> = [(0, 5), (1, 7)].into();
        assert_eq!(choose(&found, 38, 2, Some(&at_p)), Some(40));
        let moved: BTreeMap<u32, u64> = [(0, 5), (1, 6)].into();
        assert_eq!(choose(&found, 38, 2, Some(&moved)), Some(20));
    }
}
