//! The web API over Cassandra (`rankmysteps serve`): results written by the real sink from the
//! real job; every route's JSON equals `rankmysteps top/standing --config` for the same
//! keyspace. Compiled only with the `integration` feature; fails (never skips) when Cassandra
//! is not there (`scripts/services start cassandra`).
#![cfg(feature = "integration")]

mod common;
mod webutil;

use std::time::Duration;

use rankmysteps::config::ClusterConfig;
use rankmysteps_sinks::cassandra::CassandraSink;
use rankmysteps_web::client::{Connection, EventStream};
use serde_json::Value;
use webutil::*;

const K: usize = 5;

#[test]
fn api_equals_the_cli_on_cassandra() {
    let d = common::Deployment::new("web", 1, 2, K, None);
    let cluster = ClusterConfig::load(&d.config).unwrap();
    let c = cluster.cassandra.clone().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let input = write_input(tmp.path());
    let job = rankmysteps::recovery::progress_job(&d.topic);
    let sink = CassandraSink::connect(&c, &job).unwrap();
    spawn_job(&input, 20, K, Box::new(sink)).join().unwrap();

    let server = rankmysteps::serve::cassandra(&cluster, "127.0.0.1:0").unwrap();
    let mut http = Connection::open(server.addr(), Duration::from_secs(10)).unwrap();
    let config = d.config.to_str().unwrap();

    // The list of days: one partition of day_list, written by the sink.
    let days = http.get("/api/days").unwrap();
    assert_eq!(days.status, 200, "{}", days.text());
    let days = days.json();
    let want: Vec<Value> = DAYS
        .iter()
        .map(|&day| serde_json::json!({"day": day, "final": day != DAYS[2]}))
        .collect();
    assert_eq!(days["days"], Value::Array(want));

    for day in DAYS {
        let cli = cli_json(&["top", "--config", config, "--day", day, "--json"]).unwrap();
        let api = http.get(&format!("/api/days/{day}/top")).unwrap();
        assert_eq!(api.status, 200, "{}", api.text());
        assert_eq!(api.json(), cli, "top of {day}");
        let cli3 = cli_json(&[
            "top", "--config", config, "--day", day, "--k", "3", "--json",
        ])
        .unwrap();
        assert_eq!(
            http.get(&format!("/api/days/{day}/top?k=3"))
                .unwrap()
                .json(),
            cli3
        );

        let day_n = rankmysteps_dataflow::event::parse_day(day).unwrap();
        let (listing, histogram) = d.reader.day_rows(day_n, 10_000).unwrap();
        for (u, _) in listing.iter().step_by(4) {
            let u = rankmysteps_dataflow::event::format_user(*u);
            for n in [0usize, 3] {
                let cli = cli_json(&[
                    "standing",
                    "--config",
                    config,
                    "--day",
                    day,
                    "--user",
                    &u,
                    "--neighbours",
                    &n.to_string(),
                    "--json",
                ])
                .unwrap();
                let api = http
                    .get(&format!("/api/days/{day}/standing/{u}?neighbours={n}"))
                    .unwrap();
                assert_eq!(api.status, 200, "{}", api.text());
                assert_eq!(api.json(), cli, "standing of {u} on {day} (n = {n})");
            }
        }
        let h = http
            .get(&format!("/api/days/{day}/histogram"))
            .unwrap()
            .json();
        let want = rankmysteps_web::json::histogram_json(day_n, day != DAYS[2], &histogram);
        assert_eq!(h, want, "histogram of {day}");
        let sum: u64 = h["bins"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["users"].as_u64().unwrap())
            .sum();
        assert_eq!(sum, cli["users"].as_u64().unwrap());
    }

    let u = user(4);
    let h = http.get(&format!("/api/users/{u}/history")).unwrap().json();
    let mut want = Vec::new();
    for day in DAYS.iter().rev() {
        if let Some(s) = cli_json(&[
            "standing", "--config", config, "--day", day, "--user", &u, "--json",
        ]) {
            want.push(serde_json::json!({
                "day": day, "final": s["final"], "steps": s["steps"],
                "rank": s["rank"], "users": s["users"],
            }));
        }
    }
    assert_eq!(h["days"], Value::Array(want), "history of {u}");

    for (path, status) in [
        ("/api/days/2020-01-01/top".to_owned(), 404),
        (format!("/api/days/2020-01-01/standing/{u}"), 404),
        ("/api/days/2020-01-01/histogram".to_owned(), 404),
        (
            format!(
                "/api/days/{}/standing/ffffffff-ffff-4fff-bfff-ffffffffffff",
                DAYS[0]
            ),
            404,
        ),
        (format!("/api/days/{}/top?k=6", DAYS[0]), 400),
    ] {
        assert_eq!(http.get(&path).unwrap().status, status, "{path}");
    }

    // The event stream follows the job's progress record.
    let progress = d.reader.progress(&job).unwrap().unwrap();
    let mut events = EventStream::open(
        server.addr(),
        &format!("/api/events?day={}&user={u}", DAYS[0]),
        Duration::from_secs(10),
    )
    .unwrap();
    let mut seen = (false, false, false);
    while seen != (true, true, true) {
        let e = events.next_event().unwrap();
        let data: Value = serde_json::from_str(&e.data).unwrap();
        match e.event.as_str() {
            "status" => {
                assert_eq!(data["store"], "ok");
                assert_eq!(data["epoch"], progress.epoch);
                seen.0 = true;
            }
            "top" => {
                let cli =
                    cli_json(&["top", "--config", config, "--day", DAYS[0], "--json"]).unwrap();
                assert_eq!(data, cli);
                seen.1 = true;
            }
            "standing" => {
                let cli = cli_json(&[
                    "standing",
                    "--config",
                    config,
                    "--day",
                    DAYS[0],
                    "--user",
                    &u,
                    "--neighbours",
                    "3",
                    "--json",
                ])
                .unwrap();
                assert_eq!(data, cli);
                seen.2 = true;
            }
            _ => {}
        }
    }
}
