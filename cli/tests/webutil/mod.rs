//! Helpers of the web tests: a seeded input with ties, the real job writing it (binary or
//! library), the server, the CLI's JSON for the same results.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rankmysteps::job::{self, Input, JobSpec};
use rankmysteps_dataflow::output::EpochOutput;
use rankmysteps_dataflow::pipeline::Settings;
use rankmysteps_sinks::{Sink, SinkError};
use rankmysteps_sources::parse::ParseConfig;
use serde_json::Value;

/// The days of the seeded input (both closed by its last event, which opens a third day).
pub const DAYS: [&str; 3] = ["2026-11-27", "2026-11-28", "2026-11-30"];

/// The user of index `i`.
pub fn user(i: u64) -> String {
    format!("{:08x}-0000-4000-8000-{:012x}", (i * 7919) % 0xffff_ffff, i)
}

/// Seeded events with many ties: 40 users on the first day (totals `(i % 7) * 1000 + 500`, two
/// events each), 20 on the second, then one event late enough to close both.
pub fn input_lines() -> Vec<String> {
    let mut lines = Vec::new();
    for i in 0..40u64 {
        let total = (i % 7) * 1000 + 500;
        for (h, steps) in [(8, total / 2), (18, total - total / 2)] {
            lines.push(format!(
                r#"{{"uuid": "{}", "timestamp": "2026-11-27T{h:02}:00:00Z", "steps": {steps}}}"#,
                user(i)
            ));
        }
    }
    for i in (0..40u64).step_by(2) {
        let total = (i % 5) * 300 + 100;
        lines.push(format!(
            r#"{{"uuid": "{}", "timestamp": "2026-11-28T12:00:00Z", "steps": {total}}}"#,
            user(i)
        ));
    }
    lines.push(format!(
        r#"{{"uuid": "{}", "timestamp": "2026-11-30T13:00:00Z", "steps": 42}}"#,
        user(3)
    ));
    lines
}

/// Writes [`input_lines`] to `dir/input.jsonl`.
pub fn write_input(dir: &Path) -> PathBuf {
    let path = dir.join("input.jsonl");
    std::fs::write(&path, input_lines().join("\n") + "\n").unwrap();
    path
}

/// `rankmysteps run --input input --out out` with top-k `k`, 20-line epochs.
pub fn replay(input: &Path, out: &Path, k: usize) {
    let status = Command::new(env!("CARGO_BIN_EXE_rankmysteps"))
        .args([
            "run",
            "--workers",
            "2",
            "--epoch-events",
            "20",
            "--write-interval-ms",
            "0",
        ])
        .args(["--k", &k.to_string(), "--input"])
        .arg(input)
        .arg("--out")
        .arg(out)
        .status()
        .unwrap();
    assert!(status.success());
}

/// Runs `rankmysteps ARGS` and parses what it prints as JSON (`None` when it fails).
pub fn cli_json(args: &[&str]) -> Option<Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_rankmysteps"))
        .args(args)
        .output()
        .unwrap();
    if !out.status.success() {
        return None;
    }
    Some(serde_json::from_slice(&out.stdout).expect("JSON on stdout"))
}

/// A sink that lets `free` epochs through, then one more per message on the gate.
pub struct Gated {
    pub inner: Box<dyn Sink>,
    pub free: usize,
    pub gate: mpsc::Receiver<()>,
}

impl Sink for Gated {
    fn write_epoch(&mut self, output: &EpochOutput) -> Result<(), SinkError> {
        if self.free == 0 {
            let _ = self.gate.recv();
        } else {
            self.free -= 1;
        }
        self.inner.write_epoch(output)
    }

    fn tick(&mut self) -> Result<(), SinkError> {
        self.inner.tick()
    }

    fn finish(&mut self) -> Result<(), SinkError> {
        self.inner.finish()
    }
}

/// The job of `rankmysteps run --input` on `input` (`epoch_events`-line epochs, top-`k`, two
/// workers, the default settings), as the CLI builds it.
pub fn file_job(input: &Path, epoch_events: u64, k: usize) -> JobSpec {
    JobSpec {
        introspection: None,
        linger: None,
        workers: 2,
        settings: Settings {
            k,
            grace: 24 * 3_600_000_000,
            initial_watermark: None,
            ..Settings::default()
        },
        parse: ParseConfig {
            max_steps: 100_000,
            max_clock_skew: 3_600_000_000,
            time_zone: jiff::tz::TimeZone::get("America/Los_Angeles").unwrap(),
        },
        input: Input::File {
            path: input.to_owned(),
            epoch_events,
        },
        max_epochs_ahead: 4,
        cluster: None,
        metrics: None,
        archive: None,
        coalesce: false,
        recovery: None,
        checkpoint: None,
        progress: rankmysteps::progress::Display::Off,
    }
}

/// [`file_job`] into `sink`, in this process (the real dataflow), on a thread of its own.
pub fn spawn_job(
    input: &Path,
    epoch_events: u64,
    k: usize,
    sink: Box<dyn Sink>,
) -> std::thread::JoinHandle<()> {
    let spec = file_job(input, epoch_events, k);
    std::thread::spawn(move || {
        job::run(spec, sink, Arc::new(AtomicBool::new(false))).unwrap();
    })
}

/// [`spawn_job`] on `input` in `epoch_events`-line epochs into a local output directory `out`
/// that writes every epoch at once, held by a [`Gated`] sink after `free` epochs; returns once
/// those are written, with the job and the gate's sender (one epoch more per message).
pub fn spawn_gated_local_job(
    input: &Path,
    out: &Path,
    epoch_events: u64,
    k: usize,
    free: usize,
) -> (std::thread::JoinHandle<()>, mpsc::Sender<()>) {
    let sink = rankmysteps_sinks::local::LocalDirSink::create(
        out,
        rankmysteps_sinks::local::LocalOptions {
            min_write_interval: Duration::ZERO,
        },
    )
    .unwrap();
    let (go, gate) = mpsc::channel();
    let job = spawn_job(
        input,
        epoch_events,
        k,
        Box::new(Gated {
            inner: Box::new(sink),
            free,
            gate,
        }),
    );
    let last = free as u64 - 1;
    wait_until(Duration::from_secs(20), || {
        rankmysteps_sinks::local::read_progress(out)
            .ok()
            .filter(|p| p.epoch >= last)
    })
    .unwrap_or_else(|| panic!("epoch {last} written"));
    (job, go)
}

/// Polls `f` every 20 ms until it returns `Some`, for at most `timeout`.
pub fn wait_until<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if start.elapsed() > timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
