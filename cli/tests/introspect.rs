//! The inspector's view of a job (`rankmysteps::introspect`, served under `/debug/`): after a
//! known input, each named arrangement holds the known number of live keys, summed over two
//! workers; a closed day leaves them; the named operators are there with their scheduling
//! times; the HTTP routes serve the same. No service needed (a file replay in this process).

use std::net::TcpListener;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use rankmysteps::introspect::{Introspection, Summary};
use rankmysteps::job::{self, JobSpec};
use rankmysteps_sinks::local::{LocalDirSink, LocalOptions};

mod webutil;

/// Runs `rankmysteps run --input` on `lines` (epochs of `epoch_events` lines, top-10, two
/// workers) and returns what the workers published last.
fn inspect(dir: &Path, lines: &[String], epoch_events: u64) -> Arc<Introspection> {
    inspect_with(dir, lines, epoch_events, Introspection::default())
}

/// [`inspect`] into `introspection` (e.g. one that captures).
fn inspect_with(
    dir: &Path,
    lines: &[String],
    epoch_events: u64,
    introspection: Introspection,
) -> Arc<Introspection> {
    let input = dir.join("input.jsonl");
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    let introspection = Arc::new(introspection);
    let spec = JobSpec {
        introspection: Some(introspection.clone()),
        ..webutil::file_job(&input, epoch_events, 10)
    };
    let sink = LocalDirSink::create(&dir.join("out"), LocalOptions::default()).unwrap();
    job::run(spec, Box::new(sink), Arc::new(AtomicBool::new(false))).unwrap();
    introspection
}

/// `n` users' events on `date` (10:00 UTC), user i with 10 × (i + 1) steps.
fn day(date: &str, first_user: u64, n: u64) -> Vec<String> {
    (first_user..first_user + n)
        .map(|u| {
            format!(
                "{{\"uuid\":{u},\"timestamp\":\"{date}T10:00:00Z\",\"steps\":{}}}",
                10 * (u - first_user + 1)
            )
        })
        .collect()
}

/// (name → live keys) summed over the workers.
fn keys(summary: &Summary) -> Vec<(&'static str, Option<usize>)> {
    summary
        .arrangements
        .iter()
        .map(|a| (a.name, a.live_keys))
        .collect()
}

#[test]
fn arrangements_hold_the_open_days_and_operators_are_named() {
    let dir = tempfile::tempdir().unwrap();
    // One open day, 50 users with distinct totals, one epoch.
    let s = inspect(dir.path(), &day("2026-01-10", 1, 50), 1000).summary();
    assert_eq!(s.workers.len(), 2);
    assert_eq!(
        keys(&s),
        vec![
            ("totals", Some(50)),
            ("histogram", Some(50)),
            ("users", Some(1)),
            ("by-total", Some(50)),
            ("top-k", Some(10)),
        ]
    );
    for a in &s.arrangements {
        assert!(a.updates >= a.live_keys.unwrap() && a.batches > 0, "{a:?}");
        assert!(a.bytes >= a.updates * 8, "{a:?}");
    }
    // Bytes are the batches' columns: at least each live key once ((day, user) is 32 bytes).
    let totals = s.arrangements.iter().find(|a| a.name == "totals").unwrap();
    assert!(totals.bytes >= 50 * 32, "{totals:?}");
    // Differential's log: every arrangement built batches of the updates it holds.
    for name in ["totals", "histogram", "users", "by-total", "top-k"] {
        let m = s.merges.iter().find(|m| m.name == name);
        let m = m.unwrap_or_else(|| panic!("no merges of {name}: {:?}", s.merges));
        let held = s.arrangements.iter().find(|a| a.name == name).unwrap();
        assert!(
            m.batches_built > 0 && m.records_built >= held.live_keys.unwrap() as u64,
            "{m:?}"
        );
        assert!(m.merged_out <= m.merged_in, "{m:?}");
    }
    for name in ["Totals", "TopK", "Histogram", "Users", "Deliver"] {
        let op = s
            .operators
            .iter()
            .find(|o| o.name == name)
            .unwrap_or_else(|| panic!("no operator {name} in {:?}", s.operators));
        assert!(op.activations > 0 && op.elapsed_ns > 0, "{op:?}");
    }

    // Then 30 users on the 13th, in a second epoch: W passes the close of the 10th (the 12th at
    // 12:00 with 24 h of grace), whose records leave every arrangement.
    let dir = tempfile::tempdir().unwrap();
    let mut lines = day("2026-01-10", 1, 50);
    lines.extend(day("2026-01-13", 1000, 30));
    let s = inspect(dir.path(), &lines, 50).summary();
    assert_eq!(
        keys(&s),
        vec![
            ("totals", Some(30)),
            ("histogram", Some(30)),
            ("users", Some(1)),
            ("by-total", Some(30)),
            ("top-k", Some(10)),
        ]
    );
    assert!(s.completed_epoch.is_some());
    // Two epochs: time per epoch, the mean and the last, within the total.
    let op = s.operators.iter().find(|o| o.name == "Totals").unwrap();
    assert!(
        op.per_epoch_ns > 0
            && op.per_epoch_ns <= op.elapsed_ns
            && op.last_epoch_ns <= op.elapsed_ns,
        "{op:?}"
    );
}

/// The status and JSON body of `GET path`.
fn get(addr: std::net::SocketAddr, path: &str) -> (u16, serde_json::Value) {
    let response = rankmysteps_web::client::get(addr, path).unwrap();
    (response.status, response.json())
}

#[test]
fn debug_routes_serve_the_same_as_json() {
    let dir = tempfile::tempdir().unwrap();
    let introspection = inspect(dir.path(), &day("2026-01-10", 1, 20), 1000);
    let metrics = Arc::new(rankmysteps::metrics::Metrics::default());
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    metrics
        .serve(listener, Some(introspection.clone()))
        .unwrap();
    let (head, body) = get(addr, "/debug/arrangements");
    assert_eq!(head, 200);
    let totals = body["arrangements"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "totals")
        .unwrap();
    assert_eq!(totals["live_keys"], 20, "{body}");
    assert_eq!(body["workers"].as_array().unwrap().len(), 2);
    let (_, body) = get(addr, "/debug/operators");
    assert!(
        body["operators"]
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o["name"] == "TopK" && o["activations"].as_u64() > Some(0)),
        "{body}"
    );
    // The graph: every named operator, channels carrying the records.
    let (head, graph) = get(addr, "/debug/graph");
    assert_eq!(head, 200);
    let names: Vec<&str> = graph["operators"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["name"].as_str().unwrap())
        .collect();
    for name in [
        "FileSource",
        "Admit",
        "Totals",
        "TopK",
        "Histogram",
        "Users",
        "Deliver",
    ] {
        assert!(names.contains(&name), "no {name} in {names:?}");
    }
    let channels = graph["channels"].as_array().unwrap();
    assert!(channels.len() >= names.len() - 2, "{graph}");
    assert!(
        channels
            .iter()
            .any(|c| c["records_sent"].as_u64() >= Some(20)),
        "{graph}"
    );
    let dot = rankmysteps_web::client::get(addr, "/debug/graph?format=dot").unwrap();
    let text = dot.text();
    assert!(
        dot.status == 200 && text.starts_with("digraph dataflow {"),
        "{text}"
    );
    assert!(
        text.contains("label=\"Totals\\n") && text.contains(" -> "),
        "{text}"
    );
    assert_eq!(get(addr, "/debug/graph?format=svg").0, 400);
    let (_, body) = get(addr, "/debug/summary");
    assert_eq!(body["workers"].as_array().unwrap().len(), 2);
    let (head, body) = get(addr, "/debug/nothing");
    assert!(head == 404 && body["error"].is_string());
    // Bad lookups get a 400 with the reason; the job has ended, so a good one gets no answer.
    let user = "00000000-0000-0000-0000-000000000001";
    for (query, reason) in [
        (format!("day=2026-01-10&user={user}x"), "not a UUID"),
        (format!("day=2026-13-10&user={user}"), "not a YYYY-MM-DD"),
        ("day=2026-01-10".to_owned(), "user=UUID is required"),
        (
            format!("day=2026-01-10&user={user}&neighbours=51"),
            "at most 50",
        ),
        (
            format!("day=2026-01-10&user={user}&neighbours=-1"),
            "bad query string",
        ),
        (
            format!("day=2026-01-10&user={user}&colour=red"),
            "bad query string",
        ),
    ] {
        let (head, body) = get(addr, &format!("/debug/lookup?{query}"));
        assert_eq!(head, 400, "{query}");
        assert!(
            body["error"].as_str().unwrap().contains(reason),
            "{query}: {body}"
        );
    }
    let (head, body) = get(addr, &format!("/debug/lookup?day=2026-01-10&user={user}"));
    assert_eq!(head, 503, "{body}");
    for (query, reason) in [
        ("", "day=YYYY-MM-DD is required"),
        ("day=2026-01-32", "not a YYYY-MM-DD"),
        ("day=2026-01-10&limit=0", "at least 1"),
        ("day=2026-01-10&limit=x", "bad query string"),
        ("day=2026-01-10&user=1", "bad query string"),
    ] {
        let (head, body) = get(addr, &format!("/debug/lookup/top?{query}"));
        assert_eq!(head, 400, "{query}");
        assert!(
            body["error"].as_str().unwrap().contains(reason),
            "{query}: {body}"
        );
    }
    let (head, body) = get(addr, "/debug/lookup/top?day=2026-01-10");
    assert_eq!(head, 503, "{body}");
}

/// `worker --capture`'s file replays to the operators and the graph the live job showed.
#[test]
fn a_capture_replays_to_the_same_operators_and_graph() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("capture.timely");
    let capture = rankmysteps::introspect::Capture::create(&path).unwrap();
    let live = inspect_with(
        dir.path(),
        &day("2026-01-10", 1, 30),
        10,
        Introspection::with_capture(capture),
    );
    // As the worker does after its job: everything written and flushed.
    live.finish();
    let (live_graph, live_summary) = (live.graph(), live.summary());
    let replayed = rankmysteps::introspect::replay(&path).unwrap();
    let names = |ops: &[rankmysteps::introspect::OperatorView]| {
        let mut n: Vec<(Vec<usize>, String)> = ops
            .iter()
            .map(|o| (o.address.clone(), o.name.clone()))
            .collect();
        n.sort();
        n
    };
    let graph = replayed.graph();
    assert_eq!(names(&graph.operators), names(&live_graph.operators));
    assert_eq!(
        graph.dot().lines().count(),
        live_graph.dot().lines().count()
    );
    let summary = replayed.summary();
    assert_eq!(summary.workers.len(), 2);
    let totals = summary
        .operators
        .iter()
        .find(|o| o.name == "Totals")
        .unwrap();
    let live_totals = live_summary
        .operators
        .iter()
        .find(|o| o.name == "Totals")
        .unwrap();
    // The capture has every event the live view had, and perhaps the last few after it.
    assert!(totals.activations >= live_totals.activations && totals.activations > 0);
    assert!(summary.arrangements.is_empty());
    // A last record cut short (a process that died mid-write): what precedes it replays.
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
    let cut = rankmysteps::introspect::replay(&path).unwrap();
    assert!(!cut.graph().operators.is_empty());
    // Not a capture file: a clear error.
    std::fs::write(&path, b"not a capture").unwrap();
    let e = rankmysteps::introspect::replay(&path).unwrap_err();
    assert!(e.contains("not a capture file"), "{e}");
}

/// `run --serve`: the page's server also serves the embedded job's `/debug/` (one HTTP stack).
#[test]
fn the_embedded_page_serves_the_inspector_too() {
    let dir = tempfile::tempdir().unwrap();
    let introspection = inspect(dir.path(), &day("2026-01-10", 1, 12), 1000);
    let server = rankmysteps::serve::local(
        &dir.path().join("out"),
        "127.0.0.1:0",
        false,
        Some(introspection),
    )
    .unwrap();
    let (status, body) = get(server.addr(), "/debug/arrangements");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["arrangements"][0]["live_keys"], 12, "{body}");
    let (status, days) = get(server.addr(), "/api/days");
    assert_eq!(status, 200, "{days}");
    let (status, body) = get(server.addr(), "/debug/nothing");
    assert!(status == 404 && body["error"].is_string(), "{body}");
}

/// A held inspection does not stop compaction: the same 20 users change in each of 80 epochs,
/// and the traces the workers hold for the inspector end up with a bounded number of updates,
/// not one per user per epoch (which they would hold if the handles never advanced).
#[test]
fn held_traces_keep_compacting() {
    let dir = tempfile::tempdir().unwrap();
    let lines: Vec<String> = (0..80u64)
        .flat_map(|epoch| {
            (1..=20u64).map(move |u| {
                format!(
                    "{{\"uuid\":{u},\"timestamp\":\"2026-01-10T10:{:02}:00Z\",\"steps\":{}}}",
                    epoch % 60,
                    u + epoch
                )
            })
        })
        .collect();
    let s = inspect(dir.path(), &lines, 20).summary();
    let totals = s.arrangements.iter().find(|a| a.name == "totals").unwrap();
    assert_eq!(totals.live_keys, Some(20));
    // 80 epochs × 20 changed users would be 3 200 updates (a retraction and an insertion
    // each) without compaction.
    assert!(totals.updates <= 20 * 2 * 8, "{totals:?}");
    let by_total = s
        .arrangements
        .iter()
        .find(|a| a.name == "by-total")
        .unwrap();
    assert!(by_total.updates <= 20 * 2 * 8, "{by_total:?}");
}
