use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rankmysteps_dataflow::event::{Epoch, Micros};
use rankmysteps_dataflow::output::Position;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::KafkaConfig;
use crate::chunk::{wall_clock, Chunk, ChunkSource, Pull};
use crate::error::SourceError;

/// Most records in one chunk.
const CHUNK_RECORDS: usize = 4096;

/// The position of a Kafka record in input order: partition, then offset.
pub fn record_pos(partition: u32, offset: u64) -> u64 {
    (u64::from(partition) << 48) | (offset & ((1 << 48) - 1))
}

/// The `(partition, offset)` of a position made by [`record_pos`].
pub fn split_pos(pos: u64) -> (u32, u64) {
    ((pos >> 48) as u32, pos & ((1 << 48) - 1))
}

/// The number of partitions of the topic.
pub fn partition_count(config: &KafkaConfig, timeout: Duration) -> Result<u32, SourceError> {
    let consumer: BaseConsumer = config.client_config().create().map_err(kafka_error)?;
    partition_count_with(&consumer, config, timeout)
}

/// [`partition_count`] through an existing client (one that asks again and again need not
/// connect each time).
pub fn partition_count_with(
    consumer: &BaseConsumer,
    config: &KafkaConfig,
    timeout: Duration,
) -> Result<u32, SourceError> {
    let metadata = consumer
        .fetch_metadata(Some(&config.topic), timeout)
        .map_err(kafka_error)?;
    let topic = metadata
        .topics()
        .iter()
        .find(|t| t.name() == config.topic)
        .ok_or_else(|| SourceError::Kafka(format!("topic {} not found", config.topic)))?;
    if let Some(e) = topic.error() {
        return Err(SourceError::Kafka(format!("topic {}: {e:?}", config.topic)));
    }
    Ok(topic.partitions().len() as u32)
}

/// Checks that Kafka still holds every record from the recorded next offsets `start` on (the
/// progress record's) of a topic of `partitions` partitions, before a worker resumes there.
///
/// Offsets live in the progress record, not in Kafka, and a resumed consumer must never jump:
/// an offset below a partition's earliest (retention deleted records that were never
/// consumed) or past its end (the topic was deleted and created again), or a recorded
/// partition the topic no longer has, is an error that names the partition and the way out,
/// never a silent reset (`auto.offset.reset` is `error`, see [`KafkaSource::new`]).
pub fn check_start(
    config: &KafkaConfig,
    partitions: u32,
    start: &BTreeMap<u32, u64>,
    timeout: Duration,
) -> Result<(), SourceError> {
    let topic = &config.topic;
    if let Some(p) = start.keys().find(|&&p| p >= partitions) {
        return Err(SourceError::Kafka(format!(
            "the progress record has offsets of partition {p} of topic {topic}, which has \
             {partitions} partitions now: the topic was recreated or its partitions changed, so \
             the recorded positions no longer describe it (start over with a new topic, or \
             delete the progress record to consume it again from the beginning)"
        )));
    }
    let consumer: BaseConsumer = config.client_config().create().map_err(kafka_error)?;
    for (&p, &next) in start {
        let (low, high) = consumer
            .fetch_watermarks(topic, p as i32, timeout)
            .map_err(|e| SourceError::Kafka(format!("offsets of {topic}/{p}: {e}")))?;
        let (low, high) = (low.max(0) as u64, high.max(0) as u64);
        if next < low {
            return Err(SourceError::Kafka(format!(
                "partition {p} of topic {topic}: the progress record resumes at offset {next}, \
                 but Kafka's earliest offset is now {low}: records {next}..{low} were deleted \
                 (retention) before they were consumed, and skipping them would lose data \
                 silently. Raise the topic's retention.ms above the longest stop; to accept the \
                 loss, delete the progress record and start over"
            )));
        }
        if next > high {
            return Err(SourceError::Kafka(format!(
                "partition {p} of topic {topic}: the progress record resumes at offset {next}, \
                 past the partition's end ({high}): the topic was deleted and created again \
                 since (start over with a new topic or delete the progress record)"
            )));
        }
    }
    Ok(())
}

fn kafka_error(e: rdkafka::error::KafkaError) -> SourceError {
    SourceError::Kafka(e.to_string())
}

/// One worker's share of a topic: partitions `p` with `p mod workers == worker`.
///
/// A worker with no partition still reports epochs (idle pulls advance with the wall clock), so
/// it never holds the dataflow back.
pub struct KafkaSource {
    consumer: BaseConsumer,
    /// Next offset of each assigned partition.
    next: BTreeMap<u32, u64>,
    epoch_ms: u64,
    stop: Arc<AtomicBool>,
    /// Why a partition can no longer be consumed, once one cannot (see [`KafkaSource::lost`]).
    lost: Option<String>,
}

impl KafkaSource {
    /// Assigns this worker's partitions of `partitions`, starting each at `start[p]` (the
    /// progress record's next offset) or at the beginning.
    pub fn new(
        config: &KafkaConfig,
        partitions: u32,
        worker: usize,
        workers: usize,
        start: &BTreeMap<u32, u64>,
        epoch_ms: u64,
        stop: Arc<AtomicBool>,
    ) -> Result<KafkaSource, SourceError> {
        let mut client = config.client_config();
        // Offsets live in the progress record, not in Kafka: no group coordination, no commits.
        client
            .set("group.id", "rankmysteps")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            // Never jump: a recorded offset Kafka no longer has is an error (see
            // `check_start`), not a silent reset to the earliest or latest record.
            .set("auto.offset.reset", "error");
        let consumer: BaseConsumer = client.create().map_err(kafka_error)?;
        let mut list = TopicPartitionList::new();
        let mut next = BTreeMap::new();
        for p in (0..partitions).filter(|p| *p as usize % workers == worker) {
            // A partition never consumed starts at its earliest record (offset 0 may be gone).
            let (offset, from) = match start.get(&p) {
                Some(&o) => (o, Offset::Offset(o as i64)),
                None => (0, Offset::Beginning),
            };
            list.add_partition_offset(&config.topic, p as i32, from)
                .map_err(kafka_error)?;
            next.insert(p, offset);
        }
        consumer.assign(&list).map_err(kafka_error)?;
        Ok(KafkaSource {
            consumer,
            next,
            epoch_ms: epoch_ms.max(1),
            stop,
            lost: None,
        })
    }

    /// Why consuming cannot go on, once it cannot: librdkafka stopped fetching a partition
    /// because its next record is not in Kafka (deleted by retention, or a log truncated
    /// under the consumer). With `auto.offset.reset` = error that partition is never fetched
    /// again, so carrying on would stall it silently: the source stops (its pulls say
    /// [`Pull::Done`]) and the job must fail, so that a restart's `check_start` decides
    /// (it resumes if Kafka has the records after all, and names the partition if not).
    pub fn lost(&self) -> Option<&str> {
        self.lost.as_deref()
    }

    /// Next offset of each assigned partition.
    pub fn positions(&self) -> Vec<Position> {
        self.next
            .iter()
            .map(|(&partition, &next)| Position { partition, next })
            .collect()
    }
}

impl ChunkSource for KafkaSource {
    /// A stream: the watermark follows every partition's events as they come; no bound is
    /// known ahead.
    fn watermark_bound(&self, _chunk: &Chunk) -> Option<Option<Micros>> {
        None
    }

    fn parsed(&mut self, _chunk: &Chunk, _max_time: Option<Micros>) {}

    fn pull(&mut self) -> Pull {
        if self.stop.load(Ordering::Relaxed) || self.lost.is_some() {
            return Pull::Done;
        }
        let now = wall_clock();
        let epoch: Epoch = (now / 1000).max(0) as u64 / self.epoch_ms;
        let mut chunk = Chunk::new(epoch, now);
        if !self.next.is_empty() {
            while chunk.records.len() < CHUNK_RECORDS {
                match self.consumer.poll(Duration::ZERO) {
                    None => break,
                    Some(Ok(message)) => {
                        let partition = message.partition() as u32;
                        let offset = message.offset() as u64;
                        chunk.push(
                            record_pos(partition, offset),
                            message.payload().unwrap_or(b""),
                        );
                        chunk
                            .timestamps
                            .push(message.timestamp().to_millis().unwrap_or(-1));
                        self.next.insert(partition, offset + 1);
                    }
                    Some(Err(e)) => {
                        // With `auto.offset.reset` = error, librdkafka reports records deleted
                        // under a running consumer here instead of jumping past them; a
                        // restart's `check_start` then names the partition and the way out.
                        use rdkafka::types::RDKafkaErrorCode::{AutoOffsetReset, LogTruncation};
                        if matches!(
                            e.rdkafka_error_code(),
                            Some(AutoOffsetReset | LogTruncation)
                        ) {
                            tracing::error!(error = %e, "kafka: a partition's next records are gone (deleted or truncated); stopping, a restart names the partition");
                            self.lost = Some(format!(
                                "{e}: a partition's next records are no longer in Kafka \
                                 (retention, or a truncated log); a restart checks the \
                                 recorded positions and names the partition"
                            ));
                            return Pull::Done;
                        } else {
                            tracing::warn!(error = %e, "kafka poll error");
                        }
                        break;
                    }
                }
            }
        }
        if chunk.records.is_empty() {
            return Pull::Idle {
                epoch,
                retry: Duration::from_millis(5),
            };
        }
        chunk.positions = self.positions();
        Pull::Chunk(chunk)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recorded_partition_the_topic_no_longer_has_is_an_error() {
        // Decided before any broker is asked: no Kafka needed.
        let config = KafkaConfig {
            brokers: vec!["127.0.0.1:1".into()],
            topic: "steps".into(),
            properties: BTreeMap::new(),
        };
        let start: BTreeMap<u32, u64> = [(0, 10), (5, 3)].into();
        let e = check_start(&config, 4, &start, Duration::from_millis(10))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("partition 5 of topic steps, which has 4 partitions now"),
            "{e}"
        );
    }
}
