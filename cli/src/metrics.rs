//! Prometheus metrics of a worker process, served as text on `/metrics`.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rankmysteps_dataflow::event::Reason;
use rankmysteps_dataflow::output::EpochOutput;
use rankmysteps_sinks::{Sink, SinkError};

/// Counters and gauges, updated by the job and read by the HTTP endpoint.
#[derive(Debug, Default)]
pub struct Metrics {
    events_in: AtomicU64,
    accepted: AtomicU64,
    duplicate: AtomicU64,
    rejected: [AtomicU64; 6],
    epochs: AtomicU64,
    last_epoch: AtomicU64,
    watermark_micros: AtomicI64,
    /// Histogram-free latency summaries: last and max, in microseconds.
    epoch_latency_last_us: AtomicU64,
    epoch_latency_max_us: AtomicU64,
    sink_write_last_us: AtomicU64,
    sink_write_max_us: AtomicU64,
    /// Consumer lag by partition (records), set by whoever measures it.
    lag: Mutex<Vec<(u32, i64)>>,
    /// Next offset by partition as of the last delivered epoch.
    positions: Mutex<std::collections::BTreeMap<u32, u64>>,
}

impl Metrics {
    /// Records a delivered epoch's counters.
    pub fn epoch(&self, out: &EpochOutput) {
        let s = &out.stats;
        let total = s.accepted + s.duplicate + s.rejected_total();
        self.events_in.fetch_add(total, Ordering::Relaxed);
        self.accepted.fetch_add(s.accepted, Ordering::Relaxed);
        self.duplicate.fetch_add(s.duplicate, Ordering::Relaxed);
        for r in Reason::ALL {
            self.rejected[r.index()].fetch_add(s.rejected(r), Ordering::Relaxed);
        }
        self.epochs.fetch_add(1, Ordering::Relaxed);
        self.last_epoch.store(out.epoch, Ordering::Relaxed);
        if let Some(w) = out.watermark {
            self.watermark_micros.store(w, Ordering::Relaxed);
        }
        self.positions
            .lock()
            .expect("positions lock")
            .extend(out.positions.iter().map(|p| (p.partition, p.next)));
    }

    /// Measures the consumer lag (partition end − next offset delivered) every `every`, from a
    /// background thread with its own Kafka client.
    pub fn watch_lag(
        self: &Arc<Self>,
        kafka: rankmysteps_sources::kafka::KafkaConfig,
        partitions: u32,
        every: Duration,
    ) {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        let metrics = self.clone();
        let consumer: BaseConsumer = match kafka.client_config().create() {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "no lag metric: cannot create a Kafka client");
                return;
            }
        };
        let _ = std::thread::Builder::new()
            .name("rankmysteps-lag".into())
            .spawn(move || loop {
                let positions = metrics.positions.lock().expect("positions lock").clone();
                let mut lag = Vec::new();
                for p in 0..partitions {
                    if let Ok((_, high)) =
                        consumer.fetch_watermarks(&kafka.topic, p as i32, Duration::from_secs(5))
                    {
                        lag.push((p, high - positions.get(&p).copied().unwrap_or(0) as i64));
                    }
                }
                metrics.set_lag(lag);
                std::thread::sleep(every);
            });
    }

    /// Records the latency of an epoch (end of its wall-clock interval → delivery).
    pub fn epoch_latency(&self, d: Duration) {
        let us = d.as_micros() as u64;
        self.epoch_latency_last_us.store(us, Ordering::Relaxed);
        self.epoch_latency_max_us.fetch_max(us, Ordering::Relaxed);
    }

    /// Records how long a sink took to write an epoch.
    pub fn sink_write(&self, d: Duration) {
        let us = d.as_micros() as u64;
        self.sink_write_last_us.store(us, Ordering::Relaxed);
        self.sink_write_max_us.fetch_max(us, Ordering::Relaxed);
    }

    /// Sets the consumer lag of each partition.
    pub fn set_lag(&self, lag: Vec<(u32, i64)>) {
        *self.lag.lock().expect("lag lock") = lag;
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut t = String::new();
        let mut counter = |name: &str, help: &str, value: u64| {
            let _ = writeln!(
                t,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        };
        counter(
            "rankmysteps_events_in_total",
            "Records consumed.",
            self.events_in.load(Ordering::Relaxed),
        );
        counter(
            "rankmysteps_events_accepted_total",
            "Events accepted.",
            self.accepted.load(Ordering::Relaxed),
        );
        counter(
            "rankmysteps_events_duplicate_total",
            "Events skipped as duplicates.",
            self.duplicate.load(Ordering::Relaxed),
        );
        counter(
            "rankmysteps_epochs_total",
            "Epochs delivered to the sinks.",
            self.epochs.load(Ordering::Relaxed),
        );
        let _ = writeln!(t, "# HELP rankmysteps_events_rejected_total Records rejected, by reason.\n# TYPE rankmysteps_events_rejected_total counter");
        for r in Reason::ALL {
            let _ = writeln!(
                t,
                "rankmysteps_events_rejected_total{{reason=\"{}\"}} {}",
                r.code(),
                self.rejected[r.index()].load(Ordering::Relaxed)
            );
        }
        let mut gauge = |name: &str, help: &str, value: f64| {
            let _ = writeln!(
                t,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        };
        gauge(
            "rankmysteps_last_epoch",
            "Last delivered epoch.",
            self.last_epoch.load(Ordering::Relaxed) as f64,
        );
        gauge(
            "rankmysteps_watermark_seconds",
            "Watermark (largest accepted event time), Unix seconds.",
            self.watermark_micros.load(Ordering::Relaxed) as f64 / 1e6,
        );
        gauge(
            "rankmysteps_epoch_latency_seconds",
            "Last epoch's latency (end of epoch to delivery).",
            self.epoch_latency_last_us.load(Ordering::Relaxed) as f64 / 1e6,
        );
        gauge(
            "rankmysteps_epoch_latency_max_seconds",
            "Largest epoch latency so far.",
            self.epoch_latency_max_us.load(Ordering::Relaxed) as f64 / 1e6,
        );
        gauge(
            "rankmysteps_sink_write_seconds",
            "Last epoch's sink write time.",
            self.sink_write_last_us.load(Ordering::Relaxed) as f64 / 1e6,
        );
        gauge(
            "rankmysteps_sink_write_max_seconds",
            "Largest sink write time so far.",
            self.sink_write_max_us.load(Ordering::Relaxed) as f64 / 1e6,
        );
        let _ = writeln!(t, "# HELP rankmysteps_consumer_lag Records behind the partition's end.\n# TYPE rankmysteps_consumer_lag gauge");
        for (p, lag) in self.lag.lock().expect("lag lock").iter() {
            let _ = writeln!(t, "rankmysteps_consumer_lag{{partition=\"{p}\"}} {lag}");
        }
        t
    }

    /// Serves `/metrics` on `listener` from a background thread.
    pub fn serve(self: &Arc<Self>, listener: TcpListener) {
        let metrics = self.clone();
        std::thread::Builder::new()
            .name("rankmysteps-metrics".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    let Ok(mut stream) = stream else { continue };
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                    let mut request = [0u8; 1024];
                    let n = stream.read(&mut request).unwrap_or(0);
                    let line = String::from_utf8_lossy(&request[..n]);
                    let (status, body) = if line.starts_with("GET /metrics") {
                        ("200 OK", metrics.render())
                    } else {
                        ("404 Not Found", "see /metrics\n".to_owned())
                    };
                    let _ = write!(
                        stream,
                        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                }
            })
            .expect("spawning the metrics thread");
    }
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
    use super::*;

    #[test]
    fn renders_counters_and_serves_them() {
        let metrics = Arc::new(Metrics::default());
        let mut out = EpochOutput::default();
        out.stats.accepted = 5;
        out.stats.rejected[Reason::Late.index()] = 2;
        metrics.epoch(&out);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        metrics.serve(listener);
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut body = String::new();
        stream.read_to_string(&mut body).unwrap();
        assert!(body.contains("rankmysteps_events_in_total 7"), "{body}");
        assert!(
            body.contains("rankmysteps_events_rejected_total{reason=\"late\"} 2"),
            "{body}"
        );
    }
}
