//! Driving `rankmysteps launch` from a test: its event lines (pids started, restarts,
//! recoveries), SIGKILL to a process, and the services script's stop and start.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// A port free on `ip` right now.
pub fn free_port(ip: &str) -> u16 {
    TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Four processes on the loopback addresses 127.0.0.1 … 127.0.0.4, on free ports: the
/// `[cluster]` lines `hosts = [...]` and `metrics = [...]`, and the metrics addresses.
pub fn loopback_cluster() -> (String, Vec<String>) {
    let ips = ["127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4"];
    let addrs = || -> Vec<String> {
        ips.iter()
            .map(|ip| format!("{ip}:{}", free_port(ip)))
            .collect()
    };
    let quoted = |a: &[String]| {
        a.iter()
            .map(|a| format!("\"{a}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (hosts, metrics) = (addrs(), addrs());
    (
        format!(
            "hosts = [{}]\nmetrics = [{}]",
            quoted(&hosts),
            quoted(&metrics)
        ),
        metrics,
    )
}

/// The pid of every process as the launcher's events last started it.
pub fn started(events: &Path) -> BTreeMap<usize, u32> {
    rankmysteps::launch::started_pids(&std::fs::read_to_string(events).unwrap_or_default())
}

/// Waits until the launcher has started all four processes `starts` times in all.
pub fn wait_started(events: &Path, starts: usize) -> BTreeMap<usize, u32> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = std::fs::read_to_string(events).unwrap_or_default();
        if text.matches(" started (pid ").count() >= starts * 4 {
            return started(events);
        }
        assert!(
            Instant::now() < deadline,
            "not started {starts} times: {text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until the launcher's events say `needle` `count` times; returns them.
pub fn wait_said(events: &Path, needle: &str, count: usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = std::fs::read_to_string(events).unwrap_or_default();
        if text.matches(needle).count() >= count {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "not {count} times {needle:?}: {text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// How many times the launcher has restarted the processes so far.
pub fn restarts(events: &Path) -> usize {
    std::fs::read_to_string(events)
        .unwrap_or_default()
        .matches("restarting every process in")
        .count()
}

/// Runs `scripts/services ARGS` (stop or start one service), which must succeed.
pub fn services(args: &[&str]) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/services");
    let out = Command::new(script).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "scripts/services {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A service stopped by a test ([`Outage::begin`]): started again by [`Outage::end`], or when
/// dropped (a test that fails during an outage leaves the service running for the next).
pub struct Outage(Option<&'static str>);

impl Outage {
    /// Stops `service`.
    pub fn begin(service: &'static str) -> Outage {
        services(&["stop", service]);
        Outage(Some(service))
    }

    /// Starts the service again (waits until it is healthy).
    pub fn end(mut self) {
        if let Some(service) = self.0.take() {
            services(&["start", service]);
        }
    }
}

impl Drop for Outage {
    fn drop(&mut self) {
        if let Some(service) = self.0.take() {
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/services");
            let _ = Command::new(script).args(["start", service]).status();
        }
    }
}

/// SIGKILL to `pid`.
pub fn kill_9(pid: u32) {
    let status = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Waits (up to 3 min) until the launcher's last restart has been recovered from: its events
/// say "recovered in" after the last "restarting every process in".
pub fn wait_recovered(events: &Path) {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let text = std::fs::read_to_string(events).unwrap_or_default();
        let recovered = text.rfind("recovered in ");
        if recovered.is_some() && recovered > text.rfind("restarting every process in") {
            return;
        }
        assert!(Instant::now() < deadline, "not recovered: {text}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The value of the sample `name` (with its labels, e.g. `m{store="s3"}`) in `/metrics` at
/// `addr` (`None`: not served or not there).
pub fn metric(addr: &str, name: &str) -> Option<f64> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Waits (up to `within`) until [`metric`] is `value`.
pub fn wait_metric(addr: &str, name: &str, value: f64, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let got = metric(addr, name);
        if got == Some(value) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} at {addr}: {got:?}, not {value}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// SIGTERM to the launcher, which must then stop every process and exit with status 0;
/// returns its events (`events`, its stderr).
pub fn stop_launcher(launcher: &mut super::Child, events: &Path) -> String {
    let status = Command::new("kill")
        .args(["-TERM", &launcher.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let status = launcher.0.wait().unwrap();
    let text = std::fs::read_to_string(events).unwrap();
    assert!(status.success(), "{status:?}: {text}");
    text
}
