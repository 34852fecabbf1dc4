//! Prometheus metrics of a worker process, served on `/metrics`.
//!
//! Rendered by `prometheus-client` (the Prometheus project's Rust client, OpenMetrics text) and
//! served by axum on a runtime of its own: every connection is a task of its own, so a client
//! that connects and never reads (or never sends its request) stalls nobody, not the job and
//! not the other scrapers. Latencies are histograms, so a scraper can compute quantiles over
//! any window instead of a maximum since start.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use rankmysteps_dataflow::event::Reason;
use rankmysteps_dataflow::output::EpochOutput;
use rankmysteps_sinks::{Sink, SinkError};

use crate::introspect::Introspection;

/// A metric's labels: one name and its value.
type Label = [(&'static str, String); 1];

/// Counters, gauges and histograms, updated by the job and rendered by the HTTP endpoint.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    events_in: Counter,
    accepted: Counter,
    duplicate: Counter,
    rejected: Family<Label, Counter>,
    epochs: Counter,
    last_epoch: Gauge,
    watermark_seconds: Gauge<f64, AtomicU64>,
    /// End of an epoch's wall-clock interval → its delivery to the sinks.
    epoch_latency: Histogram,
    /// One sink write of an epoch (or of merged epochs).
    sink_write: Histogram,
    /// Records behind each partition's end, set by the lag thread.
    lag: Family<Label, Gauge>,
    /// The same, as last measured, for the inspector.
    lag_now: Mutex<Vec<(u32, i64)>>,
    /// Next offset by partition as of the last delivered epoch.
    positions: Mutex<BTreeMap<u32, u64>>,
    /// Failed requests to a store that are retried in place (`s3`: archive uploads, `kafka`:
    /// the lag thread's reads of the partition ends).
    store_errors: Family<Label, Counter>,
    /// 1 while a store's requests fail (the job then waits for it), else 0.
    store_failing: Family<Label, Gauge>,
    /// Checkpoint parts by outcome: written, failed, skipped (the writer was busy).
    checkpoint_parts: Family<Label, Counter>,
    /// The last mark of which this process wrote every part.
    checkpoint_mark: Gauge,
}

/// Seconds, from 1 ms to about 33 s (16 buckets, doubling).
fn latency_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.001, 2.0, 16)
}

impl Default for Metrics {
    fn default() -> Self {
        let mut m = Metrics {
            registry: Registry::default(),
            events_in: Counter::default(),
            accepted: Counter::default(),
            duplicate: Counter::default(),
            rejected: Family::default(),
            epochs: Counter::default(),
            last_epoch: Gauge::default(),
            watermark_seconds: Gauge::default(),
            epoch_latency: Histogram::new(latency_buckets()),
            sink_write: Histogram::new(latency_buckets()),
            lag: Family::default(),
            lag_now: Mutex::new(Vec::new()),
            positions: Mutex::new(BTreeMap::new()),
            store_errors: Family::default(),
            store_failing: Family::default(),
            checkpoint_parts: Family::default(),
            checkpoint_mark: Gauge::default(),
        };
        for outcome in ["written", "failed", "skipped"] {
            let _ = m
                .checkpoint_parts
                .get_or_create(&[("outcome", outcome.to_owned())]);
        }
        for store in ["s3", "kafka"] {
            let _ = m.store_errors.get_or_create(&[("store", store.to_owned())]);
            let _ = m
                .store_failing
                .get_or_create(&[("store", store.to_owned())]);
        }
        // Every reason is shown from the start (at 0), so rates exist before the first rejection.
        for r in Reason::ALL {
            let _ = m.rejected.get_or_create(&[("reason", r.code().to_owned())]);
        }
        let r = &mut m.registry;
        // Counters get the `_total` suffix from the encoder.
        r.register(
            "rankmysteps_events_in",
            "Records consumed",
            m.events_in.clone(),
        );
        r.register(
            "rankmysteps_events_accepted",
            "Events accepted",
            m.accepted.clone(),
        );
        r.register(
            "rankmysteps_events_duplicate",
            "Events skipped as duplicates",
            m.duplicate.clone(),
        );
        r.register(
            "rankmysteps_events_rejected",
            "Records rejected, by reason",
            m.rejected.clone(),
        );
        r.register(
            "rankmysteps_epochs",
            "Epochs delivered to the sinks",
            m.epochs.clone(),
        );
        r.register(
            "rankmysteps_last_epoch",
            "Last delivered epoch",
            m.last_epoch.clone(),
        );
        r.register(
            "rankmysteps_watermark_seconds",
            "Watermark (largest accepted event time), Unix seconds",
            m.watermark_seconds.clone(),
        );
        r.register(
            "rankmysteps_epoch_latency_seconds",
            "Epoch latency: end of the epoch's wall-clock interval to its delivery to the sinks",
            m.epoch_latency.clone(),
        );
        r.register(
            "rankmysteps_sink_write_seconds",
            "Time of one sink write (an epoch, or epochs merged while the sink was behind)",
            m.sink_write.clone(),
        );
        r.register(
            "rankmysteps_consumer_lag",
            "Records behind the partition's end (measured every 2 s by process 0)",
            m.lag.clone(),
        );
        r.register(
            "rankmysteps_store_errors",
            "Failed requests to a store, retried in place (s3: archive uploads; kafka: reads of \
             the partition ends by process 0)",
            m.store_errors.clone(),
        );
        r.register(
            "rankmysteps_checkpoint_parts",
            "Checkpoint parts of this process's workers, by outcome (written; failed: retried at              the next mark; skipped: the writer was still busy)",
            m.checkpoint_parts.clone(),
        );
        r.register(
            "rankmysteps_checkpoint_mark",
            "The last checkpoint mark (an epoch) of which this process wrote every part",
            m.checkpoint_mark.clone(),
        );
        r.register(
            "rankmysteps_store_failing",
            "1 while a store's requests fail (epochs wait for it), else 0",
            m.store_failing.clone(),
        );
        m
    }
}

impl Metrics {
    /// Records a delivered epoch's counters.
    pub fn epoch(&self, out: &EpochOutput) {
        let s = &out.stats;
        self.events_in.inc_by(s.records());
        self.accepted.inc_by(s.accepted);
        self.duplicate.inc_by(s.duplicate);
        for r in Reason::ALL {
            let n = s.rejected(r);
            if n > 0 {
                self.rejected
                    .get_or_create(&[("reason", r.code().to_owned())])
                    .inc_by(n);
            }
        }
        self.epochs.inc();
        self.last_epoch
            .set(i64::try_from(out.epoch).unwrap_or(i64::MAX));
        if let Some(w) = out.watermark {
            self.watermark_seconds.set(w as f64 / 1e6);
        }
        self.positions(out);
    }

    /// Records where an epoch's records end, by partition (what the lag is measured from).
    pub fn positions(&self, out: &EpochOutput) {
        self.positions
            .lock()
            .expect("positions lock")
            .extend(out.positions.iter().map(|p| (p.partition, p.next)));
    }

    /// Measures the consumer lag (partition end − next offset delivered) every `every`, from a
    /// background thread with its own Kafka client, until `stop` is set.
    pub fn watch_lag(
        self: &Arc<Self>,
        kafka: rankmysteps_sources::kafka::KafkaConfig,
        partitions: u32,
        every: Duration,
        stop: Arc<AtomicBool>,
    ) -> Option<std::thread::JoinHandle<()>> {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        let metrics = self.clone();
        let consumer: BaseConsumer = match kafka.client_config().create() {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "no lag metric: cannot create a Kafka client");
                return None;
            }
        };
        let spawned = std::thread::Builder::new()
            .name("rankmysteps-lag".into())
            .spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let positions = metrics.positions.lock().expect("positions lock").clone();
                    let mut lag = Vec::new();
                    for p in 0..partitions {
                        if stop.load(Ordering::SeqCst) {
                            return;
                        }
                        let ends = consumer.fetch_watermarks(
                            &kafka.topic,
                            p as i32,
                            Duration::from_secs(5),
                        );
                        metrics.store_request("kafka", ends.is_ok());
                        if let Ok((_, high)) = ends {
                            lag.push((p, high - positions.get(&p).copied().unwrap_or(0) as i64));
                        }
                    }
                    metrics.set_lag(lag);
                    // Sleeps in short steps, so the thread ends soon after the job.
                    let until = std::time::Instant::now() + every;
                    while !stop.load(Ordering::SeqCst) && std::time::Instant::now() < until {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
            });
        match spawned {
            Ok(handle) => Some(handle),
            Err(e) => {
                tracing::warn!(error = %e, "no lag metric: cannot start its thread");
                None
            }
        }
    }

    /// Records the outcome of a request to `store` ("s3", "kafka"): a failure counts, and the
    /// store is failing until a request succeeds again.
    pub fn store_request(&self, store: &str, ok: bool) {
        let label = [("store", store.to_owned())];
        if !ok {
            self.store_errors.get_or_create(&label).inc();
        }
        self.store_failing.get_or_create(&label).set(i64::from(!ok));
    }

    /// Counts a checkpoint part by `outcome` ("written", "failed", "skipped").
    pub fn checkpoint_part(&self, outcome: &str) {
        self.checkpoint_parts
            .get_or_create(&[("outcome", outcome.to_owned())])
            .inc();
    }

    /// Records that every part of this process at `mark` is written.
    pub fn checkpoint_complete(&self, mark: u64) {
        self.checkpoint_mark.set(mark as i64);
    }

    /// Records the latency of an epoch (end of its wall-clock interval → delivery).
    pub fn epoch_latency(&self, d: Duration) {
        self.epoch_latency.observe(d.as_secs_f64());
    }

    /// The consumer lag as last measured, `(partition, records)`.
    pub fn lag(&self) -> Vec<(u32, i64)> {
        self.lag_now.lock().expect("lag lock").clone()
    }

    /// Records how long a sink took to write an epoch.
    pub fn sink_write(&self, d: Duration) {
        self.sink_write.observe(d.as_secs_f64());
    }

    /// Sets the consumer lag of each partition.
    pub fn set_lag(&self, lag: Vec<(u32, i64)>) {
        self.lag_now.lock().expect("lag lock").clone_from(&lag);
        for (p, records) in lag {
            self.lag
                .get_or_create(&[("partition", p.to_string())])
                .set(records);
        }
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }

    /// Serves `/metrics` on `listener` from a background thread (its own runtime: axum on
    /// tokio and hyper 1, the stack of the web page), and with `introspection` the `/debug/`
    /// routes ([`crate::introspect`]).
    pub fn serve(
        self: &Arc<Self>,
        listener: std::net::TcpListener,
        introspection: Option<Arc<Introspection>>,
    ) -> std::io::Result<()> {
        listener.set_nonblocking(true)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()?;
        let app = router(self.clone(), introspection);
        std::thread::Builder::new()
            .name("rankmysteps-metrics".into())
            .spawn(move || {
                runtime.block_on(async move {
                    match tokio::net::TcpListener::from_std(listener) {
                        Ok(listener) => {
                            if let Err(e) = axum::serve(listener, app).await {
                                tracing::error!(error = %e, "the metrics server stopped");
                            }
                        }
                        Err(e) => tracing::error!(error = %e, "the metrics server cannot start"),
                    }
                })
            })?;
        Ok(())
    }
}

/// `/metrics`, with `introspection` the `/debug/` routes (JSON); anything else is a JSON 404
/// naming what is there.
fn router(metrics: Arc<Metrics>, introspection: Option<Arc<Introspection>>) -> axum::Router {
    use axum::http::{header, StatusCode};
    use axum::response::IntoResponse;
    let debug = introspection
        .map(crate::introspect::routes)
        .unwrap_or_default();
    axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(move || {
                let metrics = metrics.clone();
                async move {
                    (
                        [(
                            header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        metrics.render(),
                    )
                }
            }),
        )
        .merge(debug)
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                axum::Json(serde_json::json!({"error": "not found: see /metrics and /debug/"})),
            )
                .into_response()
        })
}

/// A [`Sink`] wrapper that times each write and counts each epoch.
pub struct Measured {
    /// The wrapped sink.
    pub inner: Box<dyn Sink>,
    /// Where to record.
    pub metrics: Arc<Metrics>,
}

impl Sink for Measured {
    fn write_epoch(&mut self, output: &EpochOutput) -> Result<(), SinkError> {
        let start = std::time::Instant::now();
        let result = self.inner.write_epoch(output);
        self.metrics.sink_write(start.elapsed());
        self.metrics.epoch(output);
        result
    }

    fn restore(&mut self, output: &EpochOutput) -> Result<(), SinkError> {
        // A restart's restored epochs were counted before it, but the lag is measured from
        // their positions too (else it shows the whole topic until the next new epoch).
        self.metrics.positions(output);
        self.inner.restore(output)
    }

    fn tick(&mut self) -> Result<(), SinkError> {
        self.inner.tick()
    }

    fn finish(&mut self) -> Result<(), SinkError> {
        self.inner.finish()
    }
}

#[cfg(test)]
mod tests {
    use std::net::{TcpListener, TcpStream};

    use rankmysteps_web::client::get;

    use super::*;

    #[test]
    fn renders_counters_and_histograms_and_serves_them() {
        let metrics = Arc::new(Metrics::default());
        let mut out = EpochOutput::default();
        out.stats.accepted = 5;
        out.stats.rejected[Reason::Late.index()] = 2;
        metrics.epoch(&out);
        metrics.epoch_latency(Duration::from_millis(30));
        metrics.epoch_latency(Duration::from_millis(3));
        metrics.set_lag(vec![(3, 17)]);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        metrics.serve(listener, None).unwrap();
        // A client that connects and never sends nor reads does not stall the others.
        let _silent = TcpStream::connect(addr).unwrap();
        let response = get(addr, "/metrics").unwrap();
        let body = response.text();
        assert_eq!(response.status, 200, "{body}");
        for line in [
            "rankmysteps_events_in_total 7",
            "rankmysteps_events_rejected_total{reason=\"late\"} 2",
            "rankmysteps_events_rejected_total{reason=\"future\"} 0",
            "rankmysteps_consumer_lag{partition=\"3\"} 17",
            "rankmysteps_epoch_latency_seconds_count 2",
            // 3 ms falls in the (2 ms, 4 ms] bucket, 30 ms in (16 ms, 32 ms]: cumulative counts.
            "rankmysteps_epoch_latency_seconds_bucket{le=\"0.004\"} 1",
            "rankmysteps_epoch_latency_seconds_bucket{le=\"0.032\"} 2",
            "# EOF",
        ] {
            assert!(body.lines().any(|l| l == line), "no {line:?} in {body}");
        }
        let missing = get(addr, "/nothing").unwrap();
        assert!(
            missing.status == 404 && missing.json()["error"].is_string(),
            "{}",
            missing.text()
        );
    }
}
