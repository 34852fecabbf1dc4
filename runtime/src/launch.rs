//! `rankmysteps launch`: starts this machine's worker processes of a cluster and supervises
//! them (design §7).
//!
//! Timely cannot go on without a peer: when one process of a cluster dies, the others lose
//! their connections to it and fail. The unit of supervision is therefore the whole set of
//! this machine's processes. When any of them exits, the launcher stops the others (SIGTERM,
//! then SIGKILL after a short grace) and starts them all again, after a backoff that doubles
//! up to a ceiling and starts over once the processes have run for a while. A restarted
//! process resumes from the progress record and restores its open days from the archive, so a
//! restart loses nothing and doubles nothing. On the other hosts, their own launchers do the
//! same; timely's connection set-up retries until every peer is up.
//!
//! Every process runs in its own process group, so a Ctrl-C on the launcher's terminal reaches
//! only the launcher, which forwards SIGTERM to each process: they stop cleanly after the
//! current epoch. Each one also watches its parent (`worker --supervised`) and stops cleanly
//! should the launcher vanish without telling it (SIGKILL), so no process is left orphaned.
//!
//! Nothing here runs under a timely worker: the launcher is a separate process.

use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{TcpListener, ToSocketAddrs};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::RuntimeError;

/// How long survivors of a crash get to stop on SIGTERM before SIGKILL: their cluster is
/// already broken, so there is no epoch left for them to finish.
const SURVIVOR_GRACE: Duration = Duration::from_secs(5);

/// Which processes of `[cluster] hosts` belong on this machine: those whose address can be
/// bound here (every 127/8 address is on the loopback interface, so a local cluster on
/// 127.0.0.1 … 127.0.0.4 is all here). A file listing at most one host is process 0. An
/// error says, for every host, why it is not here.
pub fn local_processes(hosts: &[String]) -> Result<Vec<usize>, RuntimeError> {
    if hosts.len() <= 1 {
        return Ok(vec![0]);
    }
    let mut local = Vec::new();
    let mut why = Vec::new();
    for (i, host) in hosts.iter().enumerate() {
        match host.to_socket_addrs() {
            Err(e) => why.push(format!("{i} {host}: does not resolve ({e})")),
            Ok(addrs) => {
                let addrs: Vec<_> = addrs.collect();
                if addrs.iter().any(|a| TcpListener::bind((a.ip(), 0)).is_ok()) {
                    local.push(i);
                } else {
                    why.push(format!("{i} {host}: not an address of this machine"));
                }
            }
        }
    }
    if local.is_empty() {
        return Err(RuntimeError::Launch(format!(
            "no process of [cluster] hosts is on this machine ({}); run launch on the worker \
             hosts, or name the processes with --process",
            why.join("; ")
        )));
    }
    Ok(local)
}

/// When to start the processes again after a failure.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    /// The first delay.
    pub initial: Duration,
    /// The longest delay (each failure doubles it up to this).
    pub max: Duration,
    /// The delay starts over from `initial` after the processes ran this long.
    pub reset_after: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(30),
            reset_after: Duration::from_secs(60),
        }
    }
}

/// What to launch and how.
pub struct LaunchSpec {
    /// The `rankmysteps` executable the processes run (normally the launcher's own).
    pub exe: PathBuf,
    /// The deployment description, passed on as `worker --config`.
    pub config: PathBuf,
    /// The processes to run here: their index in `[cluster] hosts`, its address, and the
    /// address of its `/debug/summary` (none: its state is judged by its being alive).
    pub processes: Vec<(usize, String, Option<String>)>,
    /// More arguments for every `worker`.
    pub worker_args: Vec<String>,
    /// Where each process's output goes (`process-I.log`, appended).
    pub log_dir: PathBuf,
    /// Delays between restarts.
    pub backoff: Backoff,
    /// How long a process may take to stop cleanly on SIGTERM before it gets SIGKILL.
    pub grace: Duration,
    /// Give up after this many restarts (none: never).
    pub max_restarts: Option<u32>,
    /// Redraw a status table every second (a terminal) instead of printing lines.
    pub terminal: bool,
    /// `[dataflow] epoch_ms` of the deployment: a process counts as running once it completes
    /// an epoch that began after its start (none: once it completes any epoch).
    pub epoch_ms: Option<u64>,
}

/// The wall clock, milliseconds since 1970.
fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// How a launch ended.
#[derive(Debug, Default)]
pub struct LaunchReport {
    /// Times the processes were started again after one failed.
    pub restarts: u32,
    /// For every restart after which all processes completed an epoch again: the time from
    /// the failure's detection to that.
    pub recoveries: Vec<Duration>,
    /// Whether every process stopped cleanly (status 0) at the end.
    pub clean: bool,
}

/// The state of one process, as shown.
#[derive(Clone, Debug, PartialEq)]
enum State {
    /// Started; it has not completed an epoch yet (restoring, or waiting for its peers).
    Starting,
    /// It completes epochs.
    Running,
    /// Stopped after a failure; started again at the instant.
    Restarting(Instant),
    /// Told to stop.
    Stopping,
    /// Gone, with this status.
    Exited(String),
}

/// One supervised process.
struct Proc {
    index: usize,
    host: String,
    metrics: Option<String>,
    child: Option<Child>,
    started: Instant,
    /// The wall clock at the start, milliseconds since 1970.
    started_ms: u64,
    state: State,
    epoch: Option<u64>,
    lag: Option<i64>,
}

impl Proc {
    fn log_path(&self, dir: &Path) -> PathBuf {
        dir.join(format!("process-{}.log", self.index))
    }

    /// Starts the process, its output appended to its log after a header line.
    fn start(&mut self, spec: &LaunchSpec, attempt: u32) -> Result<(), RuntimeError> {
        let path = self.log_path(&spec.log_dir);
        let io = |source| RuntimeError::Io {
            path: path.clone(),
            source,
        };
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io)?;
        writeln!(
            log,
            "--- rankmysteps launch: process {} ({}), start {attempt}, at {}",
            self.index,
            self.host,
            jiff::Timestamp::now()
        )
        .map_err(io)?;
        let err = log.try_clone().map_err(io)?;
        let child = Command::new(&spec.exe)
            .arg("worker")
            .arg("--config")
            .arg(&spec.config)
            .args(["--process", &self.index.to_string(), "--supervised"])
            .args(&spec.worker_args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            // Its own group: a terminal's Ctrl-C reaches the launcher only, which forwards it.
            .process_group(0)
            .spawn()
            .map_err(|e| {
                RuntimeError::Launch(format!("cannot start {}: {e}", spec.exe.display()))
            })?;
        self.child = Some(child);
        self.started = Instant::now();
        self.started_ms = wall_ms();
        self.state = State::Starting;
        self.epoch = None;
        self.lag = None;
        Ok(())
    }

    /// Its status if it has exited (it is then reaped).
    fn exited(&mut self) -> Option<ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok().flatten()?;
        self.child = None;
        self.state = State::Exited(describe(status));
        Some(status)
    }

    fn signal(&self, signal: Signal) {
        if let Some(child) = &self.child {
            // It may have exited since: ESRCH is then the expected answer.
            let _ = kill(Pid::from_raw(child.id() as i32), signal);
        }
    }
}

/// An exit status for a person: "status 0", "status 101", "killed by SIGKILL".
fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("status {code}"),
        (None, Some(sig)) => match Signal::try_from(sig) {
            Ok(s) => format!("killed by {}", s.as_str()),
            Err(_) => format!("killed by signal {sig}"),
        },
        (None, None) => "an unknown status".to_owned(),
    }
}

/// The last line of a log file (its last 4 KiB read), to say why a process exited.
fn last_line(path: &Path) -> Option<String> {
    let mut file = std::fs::File::open(path).ok()?;
    let len = file.metadata().ok()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(4096))).ok()?;
    let mut tail = String::new();
    file.read_to_string(&mut tail).ok()?;
    tail.lines()
        .rev()
        .find(|l| !l.trim().is_empty() && !l.starts_with("--- rankmysteps launch"))
        .map(|l| l.trim().to_owned())
}

/// The latest `/debug/summary` of each process, from the poller thread, with when it came.
type Polls = Arc<Mutex<Vec<(Instant, Option<serde_json::Value>)>>>;

/// Asks every process with an address for its summary once a second (off the supervising
/// loop, so a slow process never delays noticing an exit), until `stop`.
fn spawn_poller(
    addrs: Vec<Option<String>>,
    polls: Polls,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name("launch-poller".into())
        .spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                for (i, addr) in addrs.iter().enumerate() {
                    let Some(addr) = addr else { continue };
                    let got = crate::introspect::gather(
                        std::slice::from_ref(addr),
                        Duration::from_millis(800),
                    );
                    let summary = match got.into_iter().next().map(|g| g.result) {
                        Some(crate::introspect::GatherResult::Summary { summary }) => Some(summary),
                        _ => None,
                    };
                    polls.lock().unwrap()[i] = (Instant::now(), summary);
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        })
        .expect("spawning a thread")
}

/// Events and the status table, on stderr.
struct Output {
    terminal: bool,
    events: Vec<String>,
    drawn: Instant,
    header: String,
    /// Restarts so far, shown.
    restarts: u32,
}

impl Output {
    fn event(&mut self, text: String) {
        let line = format!("{} {text}", jiff::Timestamp::now().strftime("%H:%M:%S"));
        if self.terminal {
            self.events.push(line);
            if self.events.len() > 12 {
                self.events.remove(0);
            }
        } else {
            eprintln!("rankmysteps launch: {line}");
        }
    }

    /// The table every second on a terminal, a status line every 10 s otherwise.
    fn status(&mut self, procs: &[Proc]) {
        let restarts = self.restarts;
        let every = if self.terminal { 1 } else { 10 };
        if self.drawn.elapsed() < Duration::from_secs(every) {
            return;
        }
        self.drawn = Instant::now();
        if !self.terminal {
            let line: Vec<String> = procs
                .iter()
                .map(|p| format!("{} {}", p.index, state_text(p)))
                .collect();
            eprintln!(
                "rankmysteps launch: status: {} (restarts {restarts})",
                line.join(" | ")
            );
            return;
        }
        let mut t = String::from("\x1b[2J\x1b[H");
        t.push_str(&self.header);
        t.push_str(&format!(
            "\nrestarts: {restarts}    (Ctrl-C stops every process after its current epoch)\n\n"
        ));
        t.push_str(&format!(
            "{:<8} {:<22} {:>8} {:<26} {:>8} {:>10} {:>10}\n",
            "PROCESS", "HOST", "PID", "STATE", "UP", "EPOCH", "LAG"
        ));
        for p in procs {
            let pid = p.child.as_ref().map(|c| c.id().to_string());
            let up = p
                .child
                .as_ref()
                .map(|_| format!("{}s", p.started.elapsed().as_secs()));
            t.push_str(&format!(
                "{:<8} {:<22} {:>8} {:<26} {:>8} {:>10} {:>10}\n",
                p.index,
                p.host,
                pid.as_deref().unwrap_or("-"),
                state_text(p),
                up.as_deref().unwrap_or("-"),
                p.epoch.map_or("-".into(), |e| e.to_string()),
                p.lag.map_or("-".into(), |l| l.to_string()),
            ));
        }
        t.push('\n');
        for e in &self.events {
            t.push_str(e);
            t.push('\n');
        }
        eprint!("{t}");
    }
}

fn state_text(p: &Proc) -> String {
    match &p.state {
        State::Starting => "starting".into(),
        State::Running => match p.epoch {
            Some(e) => format!("running (epoch {e})"),
            None => "running".into(),
        },
        State::Restarting(at) => format!(
            "restarting in {}s",
            at.saturating_duration_since(Instant::now()).as_secs()
        ),
        State::Stopping => "stopping".into(),
        State::Exited(how) => format!("exited ({how})"),
    }
}

/// Runs and supervises `spec`'s processes until `stop` counts a signal (a second one kills
/// them at once), or until more than `max_restarts` restarts.
pub fn launch(spec: LaunchSpec, stop: Arc<AtomicUsize>) -> Result<LaunchReport, RuntimeError> {
    std::fs::create_dir_all(&spec.log_dir).map_err(|source| RuntimeError::Io {
        path: spec.log_dir.clone(),
        source,
    })?;
    let mut procs: Vec<Proc> = spec
        .processes
        .iter()
        .map(|(index, host, metrics)| Proc {
            index: *index,
            host: host.clone(),
            metrics: metrics.clone(),
            child: None,
            started: Instant::now(),
            started_ms: wall_ms(),
            state: State::Starting,
            epoch: None,
            lag: None,
        })
        .collect();
    let polls: Polls = Arc::new(Mutex::new(vec![(Instant::now(), None); procs.len()]));
    let poller_stop = Arc::new(AtomicBool::new(false));
    let poller = spawn_poller(
        procs.iter().map(|p| p.metrics.clone()).collect(),
        polls.clone(),
        poller_stop.clone(),
    );
    let mut out = Output {
        terminal: spec.terminal,
        events: Vec::new(),
        drawn: Instant::now() - Duration::from_secs(60),
        restarts: 0,
        header: format!(
            "rankmysteps launch: processes {} of {}, logs in {}",
            procs
                .iter()
                .map(|p| p.index.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            spec.config.display(),
            spec.log_dir.display()
        ),
    };
    let mut report = LaunchReport::default();
    let mut delay = spec.backoff.initial;
    let mut failed_at: Option<Instant> = None;
    let result = 'run: loop {
        if let Err(e) = start_all(&mut procs, &spec, report.restarts + 1, &mut out) {
            // The poller is stopped below, as on every way out.
            break 'run Err(e);
        }
        let started = Instant::now();
        // Supervise until a process exits or a signal comes.
        let exited = loop {
            if stop.load(Ordering::SeqCst) > 0 {
                break None;
            }
            if let Some((i, status)) = procs
                .iter_mut()
                .enumerate()
                .find_map(|(i, p)| p.exited().map(|s| (i, s)))
            {
                break Some((i, status));
            }
            observe(&mut procs, &polls, spec.epoch_ms);
            if let Some(at) = failed_at {
                if procs.iter().all(|p| p.state == State::Running) {
                    let took = at.elapsed();
                    report.recoveries.push(took);
                    failed_at = None;
                    out.event(format!(
                        "recovered in {:.1} s: every process completes epochs again",
                        took.as_secs_f64()
                    ));
                }
            }
            out.status(&procs);
            std::thread::sleep(Duration::from_millis(100));
        };
        let Some((i, status)) = exited else {
            out.event(
                "stopping: SIGTERM to every process (each stops after its current epoch)".into(),
            );
            out.status(&procs);
            break 'run Ok(terminate(&mut procs, spec.grace, &stop, &mut out));
        };
        let p = &procs[i];
        let why = last_line(&p.log_path(&spec.log_dir))
            .map(|l| format!(": {l}"))
            .unwrap_or_default();
        out.event(format!(
            "process {} exited ({}) after {:.1} s{why}",
            p.index,
            describe(status),
            p.started.elapsed().as_secs_f64()
        ));
        if procs.iter().any(|p| p.child.is_some()) {
            out.event(
                "stopping the other processes: a timely cluster cannot go on without a peer".into(),
            );
        }
        terminate(&mut procs, SURVIVOR_GRACE, &stop, &mut out);
        if stop.load(Ordering::SeqCst) > 0 {
            break 'run Ok(false);
        }
        if spec.max_restarts.is_some_and(|m| report.restarts >= m) {
            break 'run Err(RuntimeError::Launch(format!(
                "giving up after {} restarts (--max-restarts); the logs are in {}",
                report.restarts,
                spec.log_dir.display()
            )));
        }
        if started.elapsed() >= spec.backoff.reset_after {
            delay = spec.backoff.initial;
        }
        let until = Instant::now() + delay;
        for p in &mut procs {
            p.state = State::Restarting(until);
        }
        out.event(format!(
            "restarting every process in {:.0} s",
            delay.as_secs_f64()
        ));
        failed_at.get_or_insert_with(Instant::now);
        while Instant::now() < until {
            if stop.load(Ordering::SeqCst) > 0 {
                break 'run Ok(false);
            }
            out.status(&procs);
            std::thread::sleep(Duration::from_millis(100));
        }
        delay = (delay * 2).min(spec.backoff.max);
        report.restarts += 1;
        out.restarts = report.restarts;
    };
    poller_stop.store(true, Ordering::SeqCst);
    let _ = poller.join();
    match result {
        Ok(clean) => {
            report.clean = clean;
            Ok(report)
        }
        Err(e) => Err(e),
    }
}

/// The pid of every process as a launcher's event lines (its output) last say it started
/// ("process I started (pid P, ..."), by process index: for tools and tests that watch a
/// launch from outside.
pub fn started_pids(events: &str) -> std::collections::BTreeMap<usize, u32> {
    let mut pids = std::collections::BTreeMap::new();
    for line in events.lines() {
        let Some(rest) = line.split("process ").nth(1) else {
            continue;
        };
        if let Some((index, pid)) = rest.split_once(" started (pid ") {
            if let (Ok(i), Some(Ok(p))) = (
                index.parse::<usize>(),
                pid.split(',').next().map(str::parse::<u32>),
            ) {
                pids.insert(i, p);
            }
        }
    }
    pids
}

/// Starts every process (attempt `attempt`); if one cannot be started, the started ones are
/// stopped again and that is the error.
fn start_all(
    procs: &mut [Proc],
    spec: &LaunchSpec,
    attempt: u32,
    out: &mut Output,
) -> Result<(), RuntimeError> {
    for i in 0..procs.len() {
        if let Err(e) = procs[i].start(spec, attempt) {
            for p in procs.iter_mut() {
                p.signal(Signal::SIGKILL);
                if let Some(mut c) = p.child.take() {
                    let _ = c.wait();
                }
            }
            return Err(e);
        }
        let p = &procs[i];
        out.event(format!(
            "process {} started (pid {}, log {})",
            p.index,
            p.child.as_ref().map_or(0, Child::id),
            p.log_path(&spec.log_dir).display()
        ));
    }
    Ok(())
}

/// Takes the processes' states from the poller's latest summaries: running once a summary
/// newer than the process names a completed epoch that began after the process started (with
/// `epoch_ms`; streaming epochs are wall-clock intervals, so the epochs a restart replays from
/// the archive do not count: it is running once it is past them, consuming live); a process
/// without an address: once it has lived 5 s.
fn observe(procs: &mut [Proc], polls: &Polls, epoch_ms: Option<u64>) {
    let polls = polls.lock().unwrap();
    for (p, (at, summary)) in procs.iter_mut().zip(polls.iter()) {
        if p.child.is_none() || p.state != State::Starting && p.state != State::Running {
            continue;
        }
        if p.metrics.is_none() {
            if p.started.elapsed() >= Duration::from_secs(5) {
                p.state = State::Running;
            }
            continue;
        }
        let Some(summary) = summary.as_ref().filter(|_| *at > p.started) else {
            continue;
        };
        p.epoch = summary["completed_epoch"].as_u64();
        p.lag = summary["consumer_lag"]
            .as_array()
            .filter(|l| !l.is_empty())
            .map(|l| l.iter().filter_map(|p| p[1].as_i64()).sum());
        let live = |e: u64| {
            epoch_ms.is_none_or(|ms| e.saturating_add(1).saturating_mul(ms) >= p.started_ms)
        };
        if p.epoch.is_some_and(live) {
            p.state = State::Running;
        }
    }
}

/// SIGTERM to every live process, SIGKILL to those still alive after `grace` (or at once on
/// a further signal); reaps them all. True when every one exited with status 0.
fn terminate(procs: &mut [Proc], grace: Duration, stop: &AtomicUsize, out: &mut Output) -> bool {
    let asked = stop.load(Ordering::SeqCst);
    for p in procs.iter_mut().filter(|p| p.child.is_some()) {
        p.signal(Signal::SIGTERM);
        p.state = State::Stopping;
    }
    let deadline = Instant::now() + grace;
    let mut clean = true;
    let mut killed = false;
    loop {
        for p in procs.iter_mut() {
            if let Some(status) = p.exited() {
                clean &= status.success();
                out.event(format!(
                    "process {} stopped ({})",
                    p.index,
                    describe(status)
                ));
            }
        }
        if procs.iter().all(|p| p.child.is_none()) {
            return clean && !killed;
        }
        if !killed && (Instant::now() >= deadline || stop.load(Ordering::SeqCst) > asked.max(1)) {
            for p in procs.iter().filter(|p| p.child.is_some()) {
                out.event(format!("process {} did not stop in time: SIGKILL", p.index));
                p.signal(Signal::SIGKILL);
            }
            killed = true;
        }
        out.status(procs);
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts_are_local_and_others_are_not() {
        let hosts: Vec<String> = ["127.0.0.1:2101", "127.0.0.2:2101", "192.0.2.1:2101"]
            .map(String::from)
            .into();
        assert_eq!(local_processes(&hosts).unwrap(), [0, 1]);
        let single = vec!["worker-0:2101".to_owned()];
        assert_eq!(local_processes(&single).unwrap(), [0]);
        let remote: Vec<String> = ["192.0.2.1:2101", "no-such-host.invalid:2101"]
            .map(String::from)
            .into();
        let e = local_processes(&remote).unwrap_err().to_string();
        assert!(
            e.contains("0 192.0.2.1:2101: not an address of this machine")
                && e.contains("1 no-such-host.invalid:2101: does not resolve")
                && e.contains("--process"),
            "{e}"
        );
    }

    #[test]
    fn exit_statuses_read_as_words() {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(describe(ExitStatus::from_raw(0)), "status 0");
        assert_eq!(describe(ExitStatus::from_raw(101 << 8)), "status 101");
        assert_eq!(describe(ExitStatus::from_raw(9)), "killed by SIGKILL");
    }

    #[test]
    fn the_last_line_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.log");
        std::fs::write(
            &path,
            "--- rankmysteps launch: x\nfirst\nError: no broker\n\n",
        )
        .unwrap();
        assert_eq!(last_line(&path).as_deref(), Some("Error: no broker"));
        assert_eq!(last_line(&dir.path().join("none")), None);
    }
}

#[cfg(test)]
mod supervision {
    //! The supervisor on stand-in processes (shell scripts in place of `rankmysteps worker`):
    //! restarts with backoff, the limit, and a clean stop. No services.
    use super::*;

    /// A spec of `n` processes running `script` (given the worker's arguments), logs in `dir`.
    fn spec(dir: &Path, script: &str, n: usize, max_restarts: Option<u32>) -> LaunchSpec {
        let exe = dir.join("worker.sh");
        std::fs::write(&exe, format!("#!/bin/sh\n{script}\n")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        LaunchSpec {
            exe,
            config: dir.join("cluster.toml"),
            processes: (0..n)
                .map(|i| (i, format!("127.0.0.1:{i}"), None))
                .collect(),
            worker_args: vec!["--extra".into()],
            log_dir: dir.join("logs"),
            backoff: Backoff {
                initial: Duration::from_millis(50),
                max: Duration::from_millis(200),
                reset_after: Duration::from_secs(60),
            },
            grace: Duration::from_secs(5),
            max_restarts,
            terminal: false,
            epoch_ms: None,
        }
    }

    #[test]
    fn a_process_that_keeps_failing_is_restarted_with_all_others_until_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        // Process 1 fails at once; process 0 would run for a minute.
        let script = "echo \"args: $*\"\ncase \"$*\" in *'--process 1'*) echo 'Error: no broker'; exit 3;; esac\nexec sleep 60";
        let stop = Arc::new(AtomicUsize::new(0));
        let started = Instant::now();
        let e = launch(spec(dir.path(), script, 2, Some(3)), stop).unwrap_err();
        assert!(e.to_string().contains("giving up after 3 restarts"), "{e}");
        // Four starts of each (the first and three restarts); process 0 was stopped each time.
        for i in 0..2 {
            let log =
                std::fs::read_to_string(dir.path().join(format!("logs/process-{i}.log"))).unwrap();
            assert_eq!(
                log.matches("--- rankmysteps launch: process").count(),
                4,
                "{log}"
            );
            assert!(
                log.contains(&format!(
                    "args: worker --config {} --process {i} --supervised --extra",
                    dir.path().join("cluster.toml").display()
                )),
                "{log}"
            );
        }
        // Backoff 50 + 100 + 200 ms, far from the sleeps' minute: survivors were not waited for.
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(
            last_line(&dir.path().join("logs/process-1.log")).as_deref(),
            Some("Error: no broker")
        );
    }

    #[test]
    fn a_signal_stops_every_process_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        // A stand-in that stops cleanly on SIGTERM, as a worker does after its epoch.
        let script = "trap 'echo stopping; exit 0' TERM\nwhile true; do sleep 0.1; done";
        let stop = Arc::new(AtomicUsize::new(0));
        let signal = stop.clone();
        let stopper = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(700));
            signal.fetch_add(1, Ordering::SeqCst);
        });
        let report = launch(spec(dir.path(), script, 3, None), stop).unwrap();
        stopper.join().unwrap();
        assert!(report.clean, "{report:?}");
        assert_eq!(report.restarts, 0);
        for i in 0..3 {
            let log =
                std::fs::read_to_string(dir.path().join(format!("logs/process-{i}.log"))).unwrap();
            assert!(log.ends_with("stopping\n"), "{log}");
        }
    }

    #[test]
    fn a_process_that_ignores_sigterm_is_killed_after_the_grace() {
        let dir = tempfile::tempdir().unwrap();
        let script = "trap '' TERM\nwhile true; do sleep 0.1; done";
        let stop = Arc::new(AtomicUsize::new(1));
        let mut spec = spec(dir.path(), script, 1, None);
        spec.grace = Duration::from_millis(300);
        let report = launch(spec, stop).unwrap();
        assert!(!report.clean, "killed is not clean: {report:?}");
    }
}
