//! `rankmysteps produce`: the original producers, done right.
//!
//! Users drawn uniformly (default 72 000, as the original demo), 1–10 steps per event, the
//! naive timestamp format or RFC 3339 with offsets, optional `event_id`s, an optional share of
//! deliberately bad records; keyed by the user's UUID (one user's events stay in order), sent
//! by an idempotent producer at a target rate or as fast as possible. Creates the topic if it
//! is missing.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rankmysteps_dataflow::event::format_user;
use rankmysteps_sources::generator::{Generator, GeneratorConfig};
use rankmysteps_sources::kafka::KafkaConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;

use crate::error::CliError;

/// What to produce.
#[derive(Clone, Debug)]
pub struct ProduceSpec {
    /// Brokers and topic.
    pub kafka: KafkaConfig,
    /// Partitions of the topic if it has to be created.
    pub partitions: u32,
    /// The records (users, rate, limits, format, event ids, seed).
    pub generator: GeneratorConfig,
    /// Share (0..=1) of records replaced by a deliberately bad one.
    pub bad_share: f64,
    /// How progress is shown on stderr.
    pub progress: crate::progress::Display,
}

/// What was produced.
#[derive(Clone, Debug, Default)]
pub struct ProduceReport {
    /// Records acknowledged by the broker.
    pub delivered: u64,
    /// Records whose delivery failed.
    pub failed: u64,
    /// Of the delivered, how many were deliberately bad.
    pub bad: u64,
    /// Wall time.
    pub elapsed: Duration,
}

/// Counts delivery reports.
#[derive(Default)]
struct Counting {
    /// Shared with the progress display.
    delivered: Arc<AtomicU64>,
    failed: AtomicU64,
}

impl ClientContext for Counting {}

impl ProducerContext for Counting {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => self.delivered.fetch_add(1, Ordering::Relaxed),
            Err((e, _)) => {
                tracing::warn!(error = %e, "delivery failed");
                self.failed.fetch_add(1, Ordering::Relaxed)
            }
        };
    }
}

/// Creates `topic` with `partitions` partitions unless it exists.
pub fn ensure_topic(kafka: &KafkaConfig, partitions: u32) -> Result<(), CliError> {
    let admin: AdminClient<DefaultClientContext> =
        kafka.client_config().create().map_err(kafka_error)?;
    let topic = NewTopic::new(&kafka.topic, partitions as i32, TopicReplication::Fixed(1));
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results =
        futures_executor::block_on(admin.create_topics([&topic], &options)).map_err(kafka_error)?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(CliError::Setting(format!(
                    "cannot create topic {name}: {code}"
                )))
            }
        }
    }
    Ok(())
}

fn kafka_error(e: KafkaError) -> CliError {
    CliError::Source(rankmysteps_sources::SourceError::Kafka(e.to_string()))
}

/// A deliberately bad record, one kind after the other.
fn bad_record(i: u64, user: u128) -> Vec<u8> {
    let u = format_user(user);
    match i % 5 {
        0 => b"{\"uuid\": not json".to_vec(),
        1 => format!("{{\"uuid\":\"{u}-x\",\"timestamp\":\"2026-01-01 00:00:00\",\"steps\":3}}")
            .into_bytes(),
        2 => format!("{{\"uuid\":\"{u}\",\"timestamp\":\"2026-02-30 00:00:00\",\"steps\":3}}")
            .into_bytes(),
        3 => format!("{{\"uuid\":\"{u}\",\"timestamp\":\"2026-01-01 00:00:00\",\"steps\":-1}}")
            .into_bytes(),
        _ => format!("{{\"uuid\":\"{u}\",\"timestamp\":\"2999-01-01T00:00:00Z\",\"steps\":3}}")
            .into_bytes(),
    }
}

/// Sends `record`, waiting while the producer's queue is full.
pub fn send_waiting<C: ProducerContext<DeliveryOpaque = ()>>(
    producer: &ThreadedProducer<C>,
    mut record: BaseRecord<'_, String, [u8]>,
) -> Result<(), CliError> {
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                record = r;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err((e, _)) => return Err(kafka_error(e)),
        }
    }
}

/// Produces until the generator's limits (events, duration) or `stop`.
pub fn produce(spec: ProduceSpec, stop: Arc<AtomicBool>) -> Result<ProduceReport, CliError> {
    ensure_topic(&spec.kafka, spec.partitions)?;
    let mut client = spec.kafka.client_config();
    client
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("batch.num.messages", "10000")
        .set("compression.type", "lz4");
    let producer: ThreadedProducer<Counting> = client
        .create_with_context(Counting::default())
        .map_err(kafka_error)?;
    let started = Instant::now();
    let mut generator = Generator::new(spec.generator.clone(), 0, 1, started, stop.clone());
    let rate = spec.generator.rate;
    let limit = spec.generator.max_events;
    let mut sent: u64 = 0;
    let mut bad: u64 = 0;
    let mut line = Vec::with_capacity(160);
    let mut timestamp = generator.timestamp_now();
    let mut last_tick = Instant::now();
    let progress = {
        let delivered = producer.context().delivered.clone();
        crate::progress::Progress::start(
            "produce",
            crate::progress::Unit::Records,
            limit,
            spec.progress,
            move || (delivered.load(Ordering::Relaxed), 0),
        )
    };
    let bad_every = if spec.bad_share > 0.0 {
        (1.0 / spec.bad_share).round().max(1.0) as u64
    } else {
        0
    };
    loop {
        if stop.load(Ordering::Relaxed)
            || limit.is_some_and(|l| sent >= l)
            || spec
                .generator
                .duration
                .is_some_and(|d| started.elapsed() >= d)
        {
            break;
        }
        if let Some(rate) = rate {
            let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
            if sent >= due {
                std::thread::sleep(Duration::from_micros(500));
                continue;
            }
        }
        if last_tick.elapsed() >= Duration::from_millis(200) {
            timestamp = generator.timestamp_now();
            last_tick = Instant::now();
        }
        let user = generator.render(&timestamp, sent, &mut line);
        let payload = if bad_every > 0 && sent % bad_every == bad_every - 1 {
            bad += 1;
            bad_record(bad, user)
        } else {
            std::mem::take(&mut line)
        };
        let key = format_user(user);
        send_waiting(
            &producer,
            BaseRecord::to(&spec.kafka.topic)
                .key(&key)
                .payload(&payload),
        )?;
        if payload.capacity() >= 100 {
            line = payload;
        }
        sent += 1;
    }
    producer
        .flush(Duration::from_secs(60))
        .map_err(kafka_error)?;
    progress.finish();
    let context = producer.context();
    Ok(ProduceReport {
        delivered: context.delivered.load(Ordering::Relaxed),
        failed: context.failed.load(Ordering::Relaxed),
        bad,
        elapsed: started.elapsed(),
    })
}
