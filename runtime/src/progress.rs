//! Progress of long work (replays, a restart's replay, `produce`), shown on stderr.
//!
//! On a terminal: a bar (`indicatif`) with what is done, the rate and, where the size is known,
//! the ETA. Elsewhere (a log file, CI, a pipe): one plain line every few seconds
//! ([`PLAIN_INTERVAL_ENV`] sets how often), and a last one at the end, so that a long run in a
//! log is never silent. `--quiet` turns both off.
//!
//! The work itself only keeps its counters; a thread of its own samples them a few times a
//! second and draws, so nothing is drawn under a worker or per record.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Environment variable: seconds between two plain progress lines when stderr is not a
/// terminal (default 5; fractions allowed).
pub const PLAIN_INTERVAL_ENV: &str = "RANKMYSTEPS_PROGRESS_INTERVAL";

/// What the main counter counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    /// Bytes of input (files: the bytes on disk, compressed or not).
    Bytes,
    /// Records (events, Kafka records).
    Records,
    /// Archive objects.
    Objects,
}

/// How progress is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Display {
    /// A bar on a terminal, plain lines elsewhere (stderr decides).
    Auto,
    /// Plain lines, whatever stderr is.
    Plain,
    /// Nothing (`--quiet`).
    Off,
}

impl Display {
    /// `Off` when `quiet`, else `Auto`.
    pub fn quiet_if(quiet: bool) -> Display {
        if quiet {
            Display::Off
        } else {
            Display::Auto
        }
    }
}

/// What the drawing thread reads: `(units done, records done)`, sampled a few times a second.
type Sample = Box<dyn Fn() -> (u64, u64) + Send>;

/// A progress display running on a thread of its own until [`Progress::finish`] (or drop).
pub struct Progress {
    stop: Arc<(Mutex<bool>, Condvar)>,
    finished: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Progress {
    /// Starts showing the progress of `what` (e.g. "replay"), counted in `unit`, out of
    /// `total` units when known. `sample` tells what is done: `(units, records)`; it is called
    /// by the drawing thread only, a few times a second.
    pub fn start(
        what: &str,
        unit: Unit,
        total: Option<u64>,
        display: Display,
        sample: impl Fn() -> (u64, u64) + Send + 'static,
    ) -> Progress {
        Progress::spawn(what, unit, total, display, false, sample)
    }

    /// Like [`Progress::start`], for work that ends before the job that runs it (a restart's
    /// replay, followed by streaming): the display ends, as done, once `total` units are done.
    pub fn start_until_total(
        what: &str,
        unit: Unit,
        total: u64,
        display: Display,
        sample: impl Fn() -> (u64, u64) + Send + 'static,
    ) -> Progress {
        Progress::spawn(what, unit, Some(total), display, true, sample)
    }

    fn spawn(
        what: &str,
        unit: Unit,
        total: Option<u64>,
        display: Display,
        until_total: bool,
        sample: impl Fn() -> (u64, u64) + Send + 'static,
    ) -> Progress {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let finished = Arc::new(AtomicBool::new(false));
        let terminal = display == Display::Auto && std::io::stderr().is_terminal();
        let thread = (display != Display::Off).then(|| {
            let (stop, what, finished) = (stop.clone(), what.to_owned(), finished.clone());
            let sample: Sample = Box::new(sample);
            let total = total.filter(|t| *t > 0);
            // Where the display may end by itself: once `end` units are done.
            let end = total.filter(|_| until_total);
            std::thread::Builder::new()
                .name("rankmysteps-progress".into())
                .spawn(move || {
                    if terminal {
                        draw_bar(&what, unit, total, end, &sample, &stop, &finished)
                    } else {
                        draw_plain(&what, unit, total, end, &sample, &stop, &finished)
                    }
                })
                .expect("spawning the progress thread")
        });
        Progress {
            stop,
            finished,
            thread,
        }
    }

    /// The work ended well: a last line (plain) or a completed bar (terminal). Dropping a
    /// `Progress` instead ends it as stopped.
    pub fn finish(mut self) {
        self.finished.store(true, Ordering::Relaxed);
        self.end();
    }

    fn end(&mut self) {
        {
            let (lock, wake) = &*self.stop;
            *lock.lock().expect("progress lock") = true;
            wake.notify_all();
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.end();
    }
}

/// Waits up to `timeout` for the stop flag; true once stopped.
fn wait_stop(stop: &(Mutex<bool>, Condvar), timeout: Duration) -> bool {
    let (lock, wake) = stop;
    let guard = lock.lock().expect("progress lock");
    let (guard, _) = wake
        .wait_timeout_while(guard, timeout, |stopped| !*stopped)
        .expect("progress lock");
    *guard
}

fn draw_bar(
    what: &str,
    unit: Unit,
    total: Option<u64>,
    end: Option<u64>,
    sample: &Sample,
    stop: &(Mutex<bool>, Condvar),
    finished: &AtomicBool,
) {
    use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
    let bar = ProgressBar::with_draw_target(total, ProgressDrawTarget::stderr_with_hz(8));
    let amounts = match unit {
        Unit::Bytes => ("{bytes}/{total_bytes}", "{bytes}", "{binary_bytes_per_sec}"),
        Unit::Records | Unit::Objects => ("{human_pos}/{human_len}", "{human_pos}", "{per_sec}"),
    };
    let template = if total.is_some() {
        format!(
            "{what} {{bar:30.cyan/blue}} {} {} ETA {{eta}} {{msg}}",
            amounts.0, amounts.2
        )
    } else {
        format!("{what} {{spinner}} {} {} {{msg}}", amounts.1, amounts.2)
    };
    if let Ok(style) = ProgressStyle::with_template(&template) {
        bar.set_style(style.progress_chars("=> "));
    }
    let update = |bar: &ProgressBar| {
        let (done, records) = sample();
        bar.set_position(done);
        if unit != Unit::Records {
            bar.set_message(format!("{} records", human(records as f64)));
        }
    };
    // Until stopped, or until `end` units are done (a restart's replay ends long before its job).
    while !wait_stop(stop, Duration::from_millis(125)) {
        update(&bar);
        if end.is_some_and(|t| sample().0 >= t) {
            bar.finish();
            return;
        }
    }
    update(&bar);
    if finished.load(Ordering::Relaxed) {
        bar.finish();
    } else {
        bar.abandon();
    }
}

fn draw_plain(
    what: &str,
    unit: Unit,
    total: Option<u64>,
    end: Option<u64>,
    sample: &Sample,
    stop: &(Mutex<bool>, Condvar),
    finished: &AtomicBool,
) {
    let interval = std::env::var(PLAIN_INTERVAL_ENV)
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0)
        .map_or(Duration::from_secs(5), Duration::from_secs_f64);
    let started = Instant::now();
    loop {
        let stopped = wait_stop(stop, interval);
        let (done, records) = sample();
        let line = plain_line(what, unit, done, records, total, started.elapsed());
        // A restart's replay is done before its job ends.
        if end.is_some_and(|t| done >= t) {
            eprintln!("rankmysteps: {line} (done)");
            return;
        }
        if stopped {
            let end = if finished.load(Ordering::Relaxed) {
                "done"
            } else {
                "stopped"
            };
            eprintln!("rankmysteps: {line} ({end})");
            return;
        }
        eprintln!("rankmysteps: {line}");
    }
}

/// One plain progress line: `replay: 120.0 MiB of 1.0 GiB (11.7%), 1.2M records, 24.0 MiB/s,
/// 350k records/s, ETA 37s`.
pub fn plain_line(
    what: &str,
    unit: Unit,
    done: u64,
    records: u64,
    total: Option<u64>,
    elapsed: Duration,
) -> String {
    let secs = elapsed.as_secs_f64().max(1e-3);
    let amount = |n: u64| match unit {
        Unit::Bytes => bytes(n),
        Unit::Records => format!("{} records", human(n as f64)),
        Unit::Objects => format!("{n} objects"),
    };
    let mut line = format!("{what}: {}", amount(done));
    if let Some(total) = total {
        line.push_str(&format!(
            " of {} ({:.1}%)",
            amount(total),
            100.0 * done as f64 / total as f64
        ));
    }
    if unit != Unit::Records {
        line.push_str(&format!(", {} records", human(records as f64)));
    }
    match unit {
        Unit::Bytes => line.push_str(&format!(", {}/s", bytes((done as f64 / secs) as u64))),
        Unit::Objects => line.push_str(&format!(", {:.1} objects/s", done as f64 / secs)),
        Unit::Records => {}
    }
    line.push_str(&format!(
        ", {} records/s",
        human(records_of(unit, done, records) as f64 / secs)
    ));
    if let Some(total) = total.filter(|&t| done > 0 && done < t) {
        let eta = (total - done) as f64 * secs / done as f64;
        line.push_str(&format!(", ETA {}", duration(eta)));
    }
    line
}

fn records_of(unit: Unit, done: u64, records: u64) -> u64 {
    if unit == Unit::Records {
        done
    } else {
        records
    }
}

/// 1234 → "1234", 12 345 → "12.3k", 1 234 567 → "1.23M".
fn human(n: f64) -> String {
    if n >= 1e9 {
        format!("{:.2}G", n / 1e9)
    } else if n >= 1e6 {
        format!("{:.2}M", n / 1e6)
    } else if n >= 1e4 {
        format!("{:.1}k", n / 1e3)
    } else {
        format!("{n:.0}")
    }
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn duration(secs: f64) -> String {
    let s = secs.round() as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, s % 3600 / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_lines_say_what_is_done_and_what_is_left() {
        let line = plain_line(
            "replay",
            Unit::Bytes,
            512 << 20,
            2_500_000,
            Some(1 << 30),
            Duration::from_secs(10),
        );
        assert_eq!(
            line,
            "replay: 512.0 MiB of 1.0 GiB (50.0%), 2.50M records, 51.2 MiB/s, 250.0k records/s, ETA 10s"
        );
        let line = plain_line(
            "replay",
            Unit::Records,
            12_345,
            0,
            None,
            Duration::from_secs(2),
        );
        assert_eq!(line, "replay: 12.3k records, 6172 records/s");
        let line = plain_line(
            "restart replay",
            Unit::Objects,
            3,
            300,
            Some(12),
            Duration::from_secs(3),
        );
        assert_eq!(
            line,
            "restart replay: 3 objects of 12 objects (25.0%), 300 records, 1.0 objects/s, 100 records/s, ETA 9s"
        );
    }

    #[test]
    fn finish_joins_the_drawing_thread() {
        let sampled = Arc::new(AtomicBool::new(false));
        let seen = sampled.clone();
        let p = Progress::start("test", Unit::Records, Some(10), Display::Plain, move || {
            seen.store(true, Ordering::Relaxed);
            (10, 10)
        });
        p.finish();
        assert!(
            sampled.load(Ordering::Relaxed),
            "the last line samples the counters"
        );
        let p = Progress::start("test", Unit::Records, None, Display::Off, || (0, 0));
        assert!(p.thread.is_none());
    }
}
