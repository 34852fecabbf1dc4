//! The leaderboard page in headless Chromium (Debian's `chromium` and `chromium-driver`,
//! installed by `scripts/browser install`), driven over WebDriver: the page shows what the API
//! gives, follows new epochs without a reload, and its user box, day picker, chart and error
//! message work. Screenshots at 1280 and 390 px go to `$CARGO_TARGET_DIR/screenshots/`.
//! Compiled only with the `integration` feature; fails (never skips) without chromedriver.
#![cfg(feature = "integration")]

mod webutil;

use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use rankmysteps_web::client::get;
use rankmysteps_web::{bind, LocalStore, Server};
use serde_json::{json, Value};
use webutil::*;

/// chromedriver in a process group of its own (so Chromium goes with it), on a free port, with
/// its temporary files in a directory of its own.
struct Driver {
    child: std::process::Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Driver {
    fn start() -> Driver {
        let found = Command::new("sh")
            .args(["-c", "command -v chromedriver"])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            found,
            "chromedriver is not installed: run `scripts/browser install` (Debian's chromium and chromium-driver)"
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .env("TMPDIR", dir.path())
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting chromedriver");
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "chromedriver did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Driver { child, port, dir }
    }

    async fn client(&self, width: u32, height: u32) -> Client {
        let caps = json!({"goog:chromeOptions": {"args": [
            "--headless", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
            format!("--window-size={width},{height}"),
            format!("--user-data-dir={}", self.dir.path().join("profile").display()),
        ]}});
        let c = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps.as_object().unwrap().clone())
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .expect("a WebDriver session");
        c.set_window_size(width, height).await.unwrap();
        c
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", "--", &format!("-{}", self.child.id())])
            .status();
        let _ = self.child.wait();
    }
}

fn screenshots() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let dir = target.join("screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn screenshot(c: &Client, name: &str) {
    let png = c.screenshot().await.unwrap();
    let path = screenshots().join(name);
    std::fs::write(&path, png).unwrap();
    eprintln!("screenshot: {}", path.display());
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// `(rank, user, steps)` of the page's top-k table, as the rows' data attributes say.
async fn page_rows(c: &Client, table: &str) -> Vec<(u64, String, u64)> {
    let v = c
        .execute(
            "return Array.from(document.querySelectorAll(arguments[0] + ' tbody tr'))\
             .map(tr => [tr.dataset.rank, tr.dataset.user, tr.dataset.steps]);",
            vec![json!(table)],
        )
        .await
        .unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r[0].as_str().unwrap_or("0").parse().unwrap_or(0),
                r[1].as_str().unwrap_or("").to_owned(),
                r[2].as_str().unwrap_or("0").parse().unwrap_or(0),
            )
        })
        .collect()
}

fn api_rows(top: &Value) -> Vec<(u64, String, u64)> {
    top.as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["rank"].as_u64().unwrap(),
                e["user"].as_str().unwrap().to_owned(),
                e["steps"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Polls `f` every 50 ms until it is `Some`, at most `timeout`.
async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn text(c: &Client, css: &str) -> String {
    match c.find(Locator::Css(css)).await {
        Ok(e) => e.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

async fn visible(c: &Client, css: &str) -> bool {
    match c.find(Locator::Css(css)).await {
        Ok(e) => e.is_displayed().await.unwrap_or(false),
        Err(_) => false,
    }
}

#[test]
fn page_shows_the_top_k_and_follows_new_epochs() {
    let tmp = tempfile::tempdir().unwrap();
    let input = write_input(tmp.path());
    let out = tmp.path().join("out");
    let (job, go) = spawn_gated_local_job(&input, &out, 20, 100, 2);
    let server = Server::start(
        Arc::new(LocalStore::new(&out)),
        bind("127.0.0.1:0").unwrap(),
    )
    .unwrap();
    let addr = server.addr();
    let driver = Driver::start();
    runtime().block_on(async {
        let c = driver.client(1280, 900).await;
        c.goto(&server.url()).await.unwrap();
        let api = get(addr, &format!("/api/days/{}/top", DAYS[0]))
            .unwrap()
            .json();
        let want = api_rows(&api["top"]);
        assert!(!want.is_empty());
        eventually(Duration::from_secs(10), "the page's top-k", || async {
            (page_rows(&c, "#top").await == want).then_some(())
        })
        .await;
        assert_eq!(text(&c, "#conn").await, "live");
        assert!(text(&c, "#summary")
            .await
            .starts_with(&format!("{} users", api["users"])));
        assert_eq!(text(&c, "#final").await.to_lowercase(), "live");
        // A marker that a reload would lose.
        c.execute("window.__noReload = 42; return null;", vec![])
            .await
            .unwrap();
        let first_row = c
            .execute("return document.querySelector('#top tbody tr');", vec![])
            .await
            .unwrap();

        // One more epoch: on the page within 2 s, without a reload.
        let released = Instant::now();
        go.send(()).unwrap();
        let api = eventually(
            Duration::from_secs(5),
            "the new epoch in the API",
            || async {
                let now = get(addr, &format!("/api/days/{}/top", DAYS[0]))
                    .unwrap()
                    .json();
                (api_rows(&now["top"]) != want).then_some(now)
            },
        )
        .await;
        let want = api_rows(&api["top"]);
        eventually(
            Duration::from_secs(2),
            "the new epoch on the page",
            || async { (page_rows(&c, "#top").await == want).then_some(()) },
        )
        .await;
        let took = released.elapsed();
        assert!(
            took < Duration::from_secs(2),
            "new epoch on the page after {took:?}"
        );
        let marker = c
            .execute("return window.__noReload;", vec![])
            .await
            .unwrap();
        assert_eq!(marker, json!(42), "the page was reloaded");
        // Rows are updated in place: the first row's element is still in the document.
        let kept = c
            .execute(
                "return document.body.contains(arguments[0]);",
                vec![first_row],
            )
            .await
            .unwrap();
        assert_eq!(
            kept,
            json!(true),
            "rows re-rendered instead of updated in place"
        );
        assert!(text(&c, "#updated").await.starts_with("updated "));
        for _ in 0..20 {
            let _ = go.send(());
        }
        c.close().await.unwrap();
    });
    drop(go);
    job.join().unwrap();
}

#[test]
fn user_box_day_picker_chart_and_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let input = write_input(tmp.path());
    let out = tmp.path().join("out");
    replay(&input, &out, 100);
    let server = Server::start(
        Arc::new(LocalStore::new(&out)),
        bind("127.0.0.1:0").unwrap(),
    )
    .unwrap();
    let addr = server.addr();
    let driver = Driver::start();
    runtime().block_on(async {
        let c = driver.client(1280, 900).await;
        c.goto(&format!("{}?day={}", server.url(), DAYS[0])).await.unwrap();
        let top = get(addr, &format!("/api/days/{}/top", DAYS[0])).unwrap().json();
        let want = api_rows(&top["top"]);
        eventually(Duration::from_secs(10), "the top-k of the first day", || async {
            (page_rows(&c, "#top").await == want).then_some(())
        })
        .await;
        assert_eq!(text(&c, "#final").await.to_lowercase(), "final");

        // The chart: one bar per bin of the API's histogram.
        let h = get(addr, &format!("/api/days/{}/histogram", DAYS[0])).unwrap().json();
        let bins = h["bins"].as_array().unwrap().len();
        eventually(Duration::from_secs(5), "the chart's bars", || async {
            let n = c.find_all(Locator::Css("#chart rect.bar")).await.ok()?.len();
            (n == bins).then_some(())
        })
        .await;

        // The user box: paste a UUID, press Enter.
        let u = user(9);
        let field = c.find(Locator::Css("#user")).await.unwrap();
        field.send_keys(&format!("{}\n", u.to_uppercase())).await.unwrap();
        let s = get(addr, &format!("/api/days/{}/standing/{u}?neighbours=3", DAYS[0]))
            .unwrap()
            .json();
        eventually(Duration::from_secs(5), "the pinned standing", || async {
            (visible(&c, "#pinned").await && text(&c, "#me-rank").await == format!("#{}", s["rank"]))
                .then_some(())
        })
        .await;
        assert!(text(&c, "#me-of").await.contains(&s["users"].to_string()));
        let mut want: Vec<(u64, String, u64)> = api_rows(&s["above"]);
        want.push((s["rank"].as_u64().unwrap(), u.clone(), s["steps"].as_u64().unwrap()));
        want.extend(api_rows(&s["below"]));
        assert_eq!(page_rows(&c, "#neighbours").await, want);
        // Marked in the chart and in the table; history of their days.
        assert_eq!(c.find_all(Locator::Css("#chart rect.bar.mine")).await.unwrap().len(), 1);
        assert!(!c.find_all(Locator::Css("#chart line.marker")).await.unwrap().is_empty());
        let history = get(addr, &format!("/api/users/{u}/history")).unwrap().json();
        let days = history["days"].as_array().unwrap().len();
        eventually(Duration::from_secs(5), "the history", || async {
            let n = c.find_all(Locator::Css("#history tbody tr")).await.ok()?.len();
            (n == days).then_some(())
        })
        .await;
        let url = c.current_url().await.unwrap();
        assert!(url.as_str().contains(&format!("user={u}")), "{url}");
        // The whole page: the standing, the table and the chart.
        c.set_window_size(1280, 1500).await.unwrap();
        screenshot(&c, "leaderboard-1280.png").await;
        c.set_window_size(1280, 900).await.unwrap();

        // Switching days: the picker lists every day, the closed ones final.
        let options = c
            .execute(
                "return Array.from(document.querySelectorAll('#day option')).map(o => [o.value, o.textContent]);",
                vec![],
            )
            .await
            .unwrap();
        let options = options.as_array().unwrap();
        assert_eq!(options.len(), DAYS.len());
        for o in options {
            let day = o[0].as_str().unwrap();
            let label = o[1].as_str().unwrap();
            assert!(label.contains(if day == DAYS[2] { "live" } else { "final" }), "{label}");
        }
        c.find(Locator::Css(&format!("#day option[value='{}']", DAYS[1])))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        let top = get(addr, &format!("/api/days/{}/top", DAYS[1])).unwrap().json();
        let want = api_rows(&top["top"]);
        eventually(Duration::from_secs(5), "the second day's top-k", || async {
            (page_rows(&c, "#top").await == want
                && text(&c, "#board-title").await.contains(DAYS[1]))
            .then_some(())
        })
        .await;
        let h = get(addr, &format!("/api/days/{}/histogram", DAYS[1])).unwrap().json();
        let bins = h["bins"].as_array().unwrap().len();
        eventually(Duration::from_secs(5), "the second day's chart", || async {
            let n = c.find_all(Locator::Css("#chart rect.bar")).await.ok()?.len();
            (n == bins).then_some(())
        })
        .await;

        // An invalid UUID: the API's 400 message, shown.
        let field = c.find(Locator::Css("#user")).await.unwrap();
        field.clear().await.unwrap();
        field.send_keys("not-a-uuid\n").await.unwrap();
        let detail = get(addr, &format!("/api/days/{}/standing/not-a-uuid?neighbours=3", DAYS[1]))
            .unwrap()
            .json()["detail"]
            .as_str()
            .unwrap()
            .to_owned();
        eventually(Duration::from_secs(5), "the error message", || async {
            (visible(&c, "#user-error").await && text(&c, "#user-error").await == detail)
                .then_some(())
        })
        .await;
        c.close().await.unwrap();

        // A phone.
        let c = driver.client(390, 844).await;
        c.goto(&format!("{}?day={}&user={}", server.url(), DAYS[0], user(9)))
            .await
            .unwrap();
        eventually(Duration::from_secs(10), "the phone page", || async {
            (visible(&c, "#pinned").await && page_rows(&c, "#top").await.len() == 40)
                .then_some(())
        })
        .await;
        // Nothing wider than the screen.
        let overflow = c
            .execute(
                "return document.documentElement.scrollWidth - document.documentElement.clientWidth;",
                vec![],
            )
            .await
            .unwrap();
        assert!(overflow.as_i64().unwrap_or(1) <= 0, "horizontal overflow {overflow}");
        c.set_window_size(390, 1600).await.unwrap();
        screenshot(&c, "leaderboard-390.png").await;
        c.close().await.unwrap();
    });
}

/// The inspector page (`/debug/ui`, served beside the leaderboard by `run`): its arrangements
/// table shows what `/debug/arrangements` gives, its graph draws the named operators, and its
/// lookup box shows the API's error for a bad key. Screenshot: `inspector-1280.png`.
#[test]
fn inspector_page_shows_arrangements_graph_and_lookup_errors() {
    let dir = tempfile::tempdir().unwrap();
    let input = write_input(dir.path());
    let out = dir.path().join("out");
    let introspection = Arc::new(rankmysteps::introspect::Introspection::default());
    let spec = rankmysteps::job::JobSpec {
        introspection: Some(introspection.clone()),
        ..file_job(&input, 20, 10)
    };
    let sink = rankmysteps_sinks::local::LocalDirSink::create(
        &out,
        rankmysteps_sinks::local::LocalOptions::default(),
    )
    .unwrap();
    rankmysteps::job::run(
        spec,
        Box::new(sink),
        Arc::new(std::sync::atomic::AtomicBool::new(false)),
    )
    .unwrap();
    let server =
        rankmysteps::serve::local(&out, "127.0.0.1:0", false, Some(introspection)).unwrap();
    let api = get(server.addr(), "/debug/arrangements").unwrap().json();
    let want: Vec<(String, String)> = api["arrangements"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["name"].as_str().unwrap().to_owned(),
                a["live_keys"].to_string(),
            )
        })
        .collect();
    assert_eq!(want.len(), 5, "{api}");
    let driver = Driver::start();
    runtime().block_on(async {
        let c = driver.client(1280, 900).await;
        c.goto(&format!("http://{}/debug/ui", server.addr()))
            .await
            .unwrap();
        let rows = eventually(
            Duration::from_secs(20),
            "the arrangements table",
            || async {
                let v = c
                    .execute(
                        "return Array.from(document.querySelectorAll('#arrangements tbody tr'))\
                     .map(tr => [tr.children[0].textContent, tr.children[2].textContent]);",
                        vec![],
                    )
                    .await
                    .ok()?;
                let rows: Vec<(String, String)> = v
                    .as_array()?
                    .iter()
                    .map(|r| {
                        (
                            r[0].as_str().unwrap_or("").to_owned(),
                            r[1].as_str().unwrap_or("").to_owned(),
                        )
                    })
                    .collect();
                (rows.len() == 5).then_some(rows)
            },
        )
        .await;
        assert_eq!(rows, want);
        let graph = eventually(Duration::from_secs(10), "the graph", || async {
            let t = text(&c, "#graph svg").await;
            t.contains("Totals").then_some(t)
        })
        .await;
        for name in ["Admit", "TopK", "Deliver", "FileSource"] {
            assert!(graph.contains(name), "no {name} in the graph: {graph}");
        }
        assert!(text(&c, "#status").await.contains("2 workers"));
        c.find(Locator::Css("#day"))
            .await
            .unwrap()
            .send_keys("2026-11-30")
            .await
            .unwrap();
        c.find(Locator::Css("#user"))
            .await
            .unwrap()
            .send_keys("not-a-uuid")
            .await
            .unwrap();
        c.find(Locator::Css("#lookup button"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        let error = eventually(Duration::from_secs(10), "the lookup's error", || async {
            let t = text(&c, "#answer .error").await;
            (!t.is_empty()).then_some(t)
        })
        .await;
        assert!(error.contains("not a UUID"), "{error}");
        screenshot(&c, "inspector-1280.png").await;
        c.close().await.unwrap();
    });
}
