//! The live terminal view: the latest day's top 10, refreshed at every delivered epoch.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Instant;

use rankmysteps_dataflow::event::{format_day, format_micros, format_user, Day, Reason};
use rankmysteps_dataflow::output::{EpochOutput, Stats};
use rankmysteps_dataflow::ranking::TopRow;
use rankmysteps_sinks::{Sink, SinkError};

/// A [`Sink`] that draws the leaderboard of the latest day on a terminal.
pub struct TerminalView {
    rows: usize,
    top: BTreeMap<Day, BTreeMap<u32, TopRow>>,
    users: BTreeMap<Day, u64>,
    stats: Stats,
    started: Instant,
    ansi: bool,
    out: Box<dyn Write + Send>,
    url: Option<String>,
}

impl TerminalView {
    /// A view of `rows` rows on stdout; `ansi` clears the screen between frames.
    pub fn new(rows: usize, ansi: bool) -> Self {
        TerminalView {
            rows,
            top: BTreeMap::new(),
            users: BTreeMap::new(),
            stats: Stats::default(),
            started: Instant::now(),
            ansi,
            out: Box::new(std::io::stdout()),
            url: None,
        }
    }

    /// Shows the address of the leaderboard page under every frame.
    pub fn with_url(mut self, url: String) -> Self {
        self.url = Some(url);
        self
    }

    fn apply(&mut self, out: &EpochOutput) {
        for ((day, row), diff) in out.top.iter().filter(|(_, d)| *d < 0) {
            if let Some(rows) = self.top.get_mut(day) {
                if rows.get(&row.position) == Some(row) && *diff < 0 {
                    rows.remove(&row.position);
                }
            }
        }
        for ((day, row), _) in out.top.iter().filter(|(_, d)| *d > 0) {
            self.top.entry(*day).or_default().insert(row.position, *row);
        }
        for ((day, n), diff) in &out.users {
            if *diff > 0 {
                self.users.insert(*day, *n);
            }
        }
        self.stats.add(&out.stats);
        // Closed days can no longer change; keep only the latest few in memory.
        while self.top.len() > 3 {
            let first = *self.top.keys().next().expect("non-empty");
            self.top.remove(&first);
            self.users.remove(&first);
        }
    }

    /// Renders the frame for the latest day.
    pub fn frame(&self, out: &EpochOutput) -> String {
        let mut text = String::new();
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        let rejected: Vec<String> = Reason::ALL
            .iter()
            .filter(|r| self.stats.rejected(**r) > 0)
            .map(|r| format!("{} {}", r.code(), self.stats.rejected(*r)))
            .collect();
        text.push_str(&format!(
            "RankMySteps — epoch {}  watermark {}\naccepted {} ({:.0}/s)  duplicates {}  rejected {}{}\n",
            out.epoch,
            out.watermark.map_or_else(|| "-".into(), format_micros),
            self.stats.accepted,
            self.stats.accepted as f64 / secs,
            self.stats.duplicate,
            self.stats.rejected_total(),
            if rejected.is_empty() { String::new() } else { format!(" ({})", rejected.join(", ")) },
        ));
        match self.top.iter().next_back() {
            None => text.push_str("\nno events yet\n"),
            Some((day, rows)) => {
                text.push_str(&format!(
                    "\nTop {} of {} ({} users)\n{:>5}  {:<36}  {:>10}\n",
                    self.rows,
                    format_day(*day),
                    self.users.get(day).copied().unwrap_or(0),
                    "rank",
                    "user",
                    "steps"
                ));
                for row in rows.values().take(self.rows) {
                    text.push_str(&format!(
                        "{:>5}  {:<36}  {:>10}\n",
                        row.rank,
                        format_user(row.user),
                        row.steps
                    ));
                }
            }
        }
        if let Some(url) = &self.url {
            text.push_str(&format!("\nLeaderboard page: {url}\n"));
        }
        text.push_str("\nCtrl-C stops (the last epoch is written first).\n");
        text
    }
}

impl Sink for TerminalView {
    fn write_epoch(&mut self, output: &EpochOutput) -> Result<(), SinkError> {
        self.apply(output);
        let frame = self.frame(output);
        let clear = if self.ansi { "\x1b[2J\x1b[H" } else { "\n" };
        // A closed stdout (e.g. a pipe) must not stop the job: the view is best effort.
        let _ = write!(self.out, "{clear}{frame}");
        let _ = self.out.flush();
        Ok(())
    }
}
