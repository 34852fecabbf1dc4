//! The web API over a local output directory written by the real job (no services): every
//! route's JSON equals what `rankmysteps top --json` / `standing --json` print for the same
//! directory; errors, security headers, and the event stream.

mod webutil;

use std::sync::Arc;
use std::time::{Duration, Instant};

use rankmysteps_sinks::local::read_totals;
use rankmysteps_web::client::{get, Connection, EventStream};
use rankmysteps_web::{bind, LocalStore, Server};
use serde_json::Value;
use webutil::*;

const K: usize = 5;

fn serve(dir: &std::path::Path) -> Server {
    Server::start(Arc::new(LocalStore::new(dir)), bind("127.0.0.1:0").unwrap()).unwrap()
}

fn day_of(text: &str) -> i32 {
    rankmysteps_dataflow::event::parse_day(text).unwrap()
}

#[test]
fn api_equals_the_cli_on_a_replay() {
    let tmp = tempfile::tempdir().unwrap();
    let input = write_input(tmp.path());
    let out = tmp.path().join("out");
    replay(&input, &out, K);
    let out_s = out.to_str().unwrap();
    let server = serve(&out);
    let addr = server.addr();
    let mut c = Connection::open(addr, Duration::from_secs(5)).unwrap();

    // Days: every day directory, the closed ones final.
    let days = c.get("/api/days").unwrap();
    assert_eq!(days.status, 200);
    assert_eq!(days.header("content-type"), Some("application/json"));
    let days = days.json();
    let listed: Vec<(String, bool)> = days["days"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["day"].as_str().unwrap().to_owned(),
                d["final"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        vec![
            (DAYS[0].to_owned(), true),
            (DAYS[1].to_owned(), true),
            (DAYS[2].to_owned(), false)
        ]
    );
    assert_eq!(days["latest"], DAYS[2]);

    for day in DAYS {
        // The top-k, whole and cut, field by field as `top --json`.
        let cli = cli_json(&["top", "--out", out_s, "--day", day, "--json"]).unwrap();
        let api = c.get(&format!("/api/days/{day}/top")).unwrap();
        assert_eq!(api.status, 200, "{}", api.text());
        assert_eq!(api.json(), cli, "top of {day}");
        for k in [1, 3, K] {
            let cli = cli_json(&[
                "top",
                "--out",
                out_s,
                "--day",
                day,
                "--k",
                &k.to_string(),
                "--json",
            ])
            .unwrap();
            let api = c.get(&format!("/api/days/{day}/top?k={k}")).unwrap().json();
            assert_eq!(api, cli, "top {k} of {day}");
        }
        // Ties are shown as competition ranks.
        let ranks: Vec<u64> = cli["top"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["rank"].as_u64().unwrap())
            .collect();
        let steps: Vec<u64> = cli["top"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["steps"].as_u64().unwrap())
            .collect();
        for i in 1..ranks.len() {
            let want = if steps[i] == steps[i - 1] {
                ranks[i - 1]
            } else {
                i as u64 + 1
            };
            assert_eq!(ranks[i], want, "{day}: {ranks:?} {steps:?}");
        }

        // Standings of every user, with and without neighbours.
        let totals = read_totals(&out, day_of(day)).unwrap();
        for (u, _) in totals.iter().step_by(3) {
            let u = rankmysteps_dataflow::event::format_user(*u);
            for n in [0usize, 3] {
                let cli = cli_json(&[
                    "standing",
                    "--out",
                    out_s,
                    "--day",
                    day,
                    "--user",
                    &u,
                    "--neighbours",
                    &n.to_string(),
                    "--json",
                ])
                .unwrap();
                let path = if n == 0 {
                    format!("/api/days/{day}/standing/{u}")
                } else {
                    format!("/api/days/{day}/standing/{u}?neighbours={n}")
                };
                let api = c.get(&path).unwrap();
                assert_eq!(api.status, 200, "{}", api.text());
                assert_eq!(api.json(), cli, "standing of {u} on {day} (n = {n})");
            }
        }

        // The histogram: bins covering every user once.
        let h = c.get(&format!("/api/days/{day}/histogram")).unwrap().json();
        let mut rows: Vec<(u64, u64)> = Vec::new();
        for (_, t) in &totals {
            match rows.iter_mut().find(|(x, _)| x == t) {
                Some(r) => r.1 += 1,
                None => rows.push((*t, 1)),
            }
        }
        let want = rankmysteps_web::json::histogram_json(day_of(day), day != DAYS[2], &rows);
        assert_eq!(h, want, "histogram of {day}");
        let bins = h["bins"].as_array().unwrap();
        assert!(!bins.is_empty() && bins.len() <= 40);
        let sum: u64 = bins.iter().map(|b| b["users"].as_u64().unwrap()).sum();
        assert_eq!(sum, cli["users"].as_u64().unwrap(), "bins of {day}");
    }

    // A user's history: every day they have steps, most recent first, with the CLI's rank.
    for i in [0u64, 3, 7] {
        let u = user(i);
        let h = c.get(&format!("/api/users/{u}/history")).unwrap();
        assert_eq!(h.status, 200, "{}", h.text());
        let h = h.json();
        assert_eq!(h["user"], u.as_str());
        let mut want = Vec::new();
        for day in DAYS.iter().rev() {
            if let Some(s) = cli_json(&[
                "standing", "--out", out_s, "--day", day, "--user", &u, "--json",
            ]) {
                want.push(serde_json::json!({
                    "day": day, "final": s["final"], "steps": s["steps"],
                    "rank": s["rank"], "users": s["users"],
                }));
            }
        }
        assert_eq!(h["days"], Value::Array(want), "history of {u}");
    }
    drop(server);
}

#[test]
fn errors_are_json_with_the_right_status() {
    let tmp = tempfile::tempdir().unwrap();
    let input = write_input(tmp.path());
    let out = tmp.path().join("out");
    replay(&input, &out, K);
    let server = serve(&out);
    let mut c = Connection::open(server.addr(), Duration::from_secs(5)).unwrap();
    let day = DAYS[0];
    let known = user(1);
    let absent = "ffffffff-ffff-4fff-bfff-ffffffffffff";
    let cases: Vec<(String, u16, &str)> = vec![
        ("/api/days/2026-13-01/top".to_owned(), 400, "invalid_date"),
        (
            "/api/days/yesterday/histogram".to_owned(),
            400,
            "invalid_date",
        ),
        (
            format!("/api/days/2026-02-30/standing/{known}"),
            400,
            "invalid_date",
        ),
        (
            format!("/api/days/{day}/standing/not-a-uuid"),
            400,
            "invalid_uuid",
        ),
        (
            format!("/api/days/{day}/standing/{known}x"),
            400,
            "invalid_uuid",
        ),
        ("/api/users/1234/history".to_owned(), 400, "invalid_uuid"),
        (format!("/api/days/{day}/top?k=0"), 400, "invalid_k"),
        (format!("/api/days/{day}/top?k=1001"), 400, "invalid_k"),
        (format!("/api/days/{day}/top?k=-3"), 400, "invalid_k"),
        (format!("/api/days/{day}/top?k=abc"), 400, "invalid_k"),
        // More than the stored top-k (5 of 40 users).
        (format!("/api/days/{day}/top?k={}", K + 1), 400, "invalid_k"),
        (
            format!("/api/days/{day}/standing/{known}?neighbours=51"),
            400,
            "invalid_neighbours",
        ),
        (
            format!("/api/days/{day}/standing/{known}?neighbours=x"),
            400,
            "invalid_neighbours",
        ),
        ("/api/days/%FF/top".to_owned(), 400, "bad_request"),
        (format!("/api/days/{day}/top?k=%FF"), 400, "invalid_k"),
        ("/api/events?day=tomorrow".to_owned(), 400, "invalid_date"),
        (
            format!("/api/events?day={day}&user=nope"),
            400,
            "invalid_uuid",
        ),
        ("/api/days/2020-01-01/top".to_owned(), 404, "unknown_day"),
        (
            "/api/days/2020-01-01/histogram".to_owned(),
            404,
            "unknown_day",
        ),
        (
            format!("/api/days/2020-01-01/standing/{known}"),
            404,
            "unknown_day",
        ),
        (
            format!("/api/days/{day}/standing/{absent}"),
            404,
            "unknown_user",
        ),
        (format!("/api/users/{absent}/history"), 404, "unknown_user"),
        ("/api/nothing".to_owned(), 404, "not_found"),
        ("/api/days".to_owned(), 405, "method_not_allowed"),
    ];
    for (path, status, code) in cases {
        let method = if status == 405 { "POST" } else { "GET" };
        let r = c.request(method, &path).unwrap();
        assert_eq!(r.status, status, "{method} {path}: {}", r.text());
        let body = r.json();
        assert_eq!(body["error"], code, "{path}: {body}");
        assert!(
            body["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "{path}: {body}"
        );
        assert_eq!(r.header("content-type"), Some("application/json"), "{path}");
        assert_security_headers(&r, &path);
    }
    // The connection survived every error (no panic closed it).
    assert_eq!(c.get("/api/days").unwrap().status, 200);
}

fn assert_security_headers(r: &rankmysteps_web::client::Response, what: &str) {
    let csp = r.header("content-security-policy").unwrap_or_default();
    assert!(csp.contains("default-src 'self'"), "{what}: {csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{what}: {csp}");
    assert!(!csp.contains("unsafe-inline"), "{what}: {csp}");
    assert_eq!(
        r.header("x-content-type-options"),
        Some("nosniff"),
        "{what}"
    );
    assert_eq!(r.header("x-frame-options"), Some("DENY"), "{what}");
    assert!(r.header("referrer-policy").is_some(), "{what}");
}

#[test]
fn page_and_assets_are_embedded_with_security_headers() {
    let tmp = tempfile::tempdir().unwrap();
    let server = serve(tmp.path());
    let addr = server.addr();
    let page = get(addr, "/?day=2026-11-27&user=x").unwrap();
    assert_eq!(page.status, 200);
    assert!(page
        .header("content-type")
        .unwrap()
        .starts_with("text/html"));
    assert_security_headers(&page, "/");
    let html = page.text();
    // No inline script or style: every <script> has a src, no style attribute or element.
    assert_eq!(
        html.matches("<script").count(),
        html.matches("<script src=").count()
    );
    assert!(
        !html.contains("<style") && !html.contains(" style="),
        "inline style"
    );
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "no CDN"
    );
    for (path, kind) in [
        ("/assets/app.js", "text/javascript"),
        ("/assets/app.css", "text/css"),
    ] {
        let r = get(addr, path).unwrap();
        assert_eq!(r.status, 200, "{path}");
        assert!(
            r.header("content-type").unwrap().starts_with(kind),
            "{path}"
        );
        assert_security_headers(&r, path);
    }
    let js = get(addr, "/assets/app.js").unwrap().text();
    assert!(
        !js.contains("innerHTML"),
        "text is set with textContent only"
    );
    // An empty directory: no days yet, not an error.
    let days = get(addr, "/api/days").unwrap();
    assert_eq!(days.status, 200);
    assert_eq!(days.json()["days"], serde_json::json!([]));
}

#[test]
fn unreachable_cassandra_is_503() {
    // Nothing listens on port 1 of loopback.
    let config = rankmysteps_sinks::cassandra::CassandraConfig {
        contact_points: vec!["127.0.0.1:1".into()],
        ..Default::default()
    };
    let store = rankmysteps_web::CassandraStore::new(config, "steps");
    let server = Server::start(Arc::new(store), bind("127.0.0.1:0").unwrap()).unwrap();
    let mut c = Connection::open(server.addr(), Duration::from_secs(20)).unwrap();
    let u = user(1);
    for path in [
        "/api/days".to_owned(),
        "/api/days/2026-11-27/top".to_owned(),
        format!("/api/days/2026-11-27/standing/{u}?neighbours=3"),
        "/api/days/2026-11-27/histogram".to_owned(),
        format!("/api/users/{u}/history"),
    ] {
        let r = c.get(&path).unwrap();
        assert_eq!(r.status, 503, "{path}: {}", r.text());
        assert_eq!(r.json()["error"], "store_unavailable", "{path}");
        assert_security_headers(&r, &path);
    }
    // Bad input is still 400, before the store is asked.
    assert_eq!(
        c.get("/api/days/2026-11-27/standing/bad").unwrap().status,
        400
    );
    // The event stream says the store is unavailable (the page shows "reconnecting").
    let mut events = EventStream::open(
        server.addr(),
        "/api/events?day=2026-11-27",
        Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(events.status, 200);
    let status = wait_until(Duration::from_secs(10), || {
        let e = events.next_event().ok()?;
        (e.event == "status").then_some(e)
    })
    .expect("a status event");
    let status: Value = serde_json::from_str(&status.data).unwrap();
    assert_eq!(status["store"], "unavailable", "{status}");
}

#[test]
fn the_event_stream_delivers_a_new_epoch() {
    let tmp = tempfile::tempdir().unwrap();
    let input = write_input(tmp.path());
    let out = tmp.path().join("out");
    // 20-line epochs: the first day's 80 lines are epochs 0-3; hold the job after epoch 2.
    let (job, go) = spawn_gated_local_job(&input, &out, 20, K, 3);
    let server = serve(&out);
    // Many clients, one read per epoch: count the store's reads around one epoch.
    let mut streams: Vec<EventStream> = (0..20)
        .map(|_| {
            EventStream::open(
                server.addr(),
                &format!("/api/events?day={}", DAYS[0]),
                Duration::from_secs(5),
            )
            .unwrap()
        })
        .collect();
    for s in &streams {
        assert_eq!(s.status, 200);
        assert_eq!(
            s.headers
                .iter()
                .find(|(k, _)| k == "content-type")
                .map(|(_, v)| v.as_str()),
            Some("text/event-stream")
        );
    }
    // Each stream starts with the current top-k of the day.
    let first_top = |s: &mut EventStream| -> Value {
        loop {
            let e = s.next_event().unwrap();
            if e.event == "top" {
                return serde_json::from_str(&e.data).unwrap();
            }
        }
    };
    let before: Vec<Value> = streams.iter_mut().map(first_top).collect();
    assert!(before.iter().all(|t| t == &before[0]));
    let reads_before = server.store_reads();
    // Let one epoch through: every stream gets the new top-k within 2 s.
    let released = Instant::now();
    go.send(()).unwrap();
    for s in &mut streams {
        let top = first_top(s);
        assert_ne!(top, before[0], "a changed top-k");
        assert_eq!(top["day"], DAYS[0]);
    }
    let took = released.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "new epoch on every stream in {took:?}"
    );
    // One top-k read for the epoch, not one per client (the rest: polls of progress.json and
    // the list of days).
    std::thread::sleep(Duration::from_millis(600));
    let reads = server.store_reads() - reads_before;
    assert!(
        reads < 20,
        "{reads} store reads for one epoch and 20 clients"
    );
    // Let the job finish.
    for _ in 0..20 {
        let _ = go.send(());
    }
    drop(go);
    job.join().unwrap();
}
