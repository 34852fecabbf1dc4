//! `rankmysteps inspect` on running worker processes, checked against the sequential
//! reference: what the arrangements hold, and lookups of totals and standings.

use std::process::Command;
use std::time::{Duration, Instant};

use rankmysteps_dataflow::reference::Reference;

/// `rankmysteps inspect ARGS`, run to completion.
pub fn inspect(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_rankmysteps"))
        .arg("inspect")
        .args(args)
        .output()
        .unwrap()
}

/// Waits until `inspect --json SELECT` (the processes: `--config F` or `--addr`s) shows the
/// first `processes` processes, `threads` workers each, reporting every named arrangement and
/// operator, the live keys of `totals` over all of them equal to the (day, user) pairs of the
/// reference's open days, and no consumer lag left on any of `partitions`. Further entries
/// must be unreachable addresses: reported with their error, exit status 1, the others shown.
pub fn open_days_held(
    select: &[&str],
    processes: usize,
    threads: usize,
    partitions: usize,
    reference: &Reference,
) {
    let open_keys: usize = reference
        .days
        .values()
        .filter(|d| !d.is_final)
        .map(|d| d.totals.len())
        .sum();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = inspect(&[&["--json"], select].concat());
        let gathered: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let g = gathered.as_array().unwrap();
        assert!(g.len() >= processes, "{gathered}");
        for unreachable in &g[processes..] {
            assert!(
                unreachable["error"]
                    .as_str()
                    .unwrap()
                    .contains("cannot connect"),
                "{unreachable}"
            );
        }
        let want_status = if g.len() > processes { 1 } else { 0 };
        let mut keys = Some(0);
        let mut lag = Vec::new();
        let reachable = g[..processes]
            .iter()
            .all(|p| p["summary"]["workers"].is_array());
        if reachable {
            assert_eq!(out.status.code(), Some(want_status), "{gathered}");
            for p in &g[..processes] {
                let s = &p["summary"];
                let names: Vec<&str> = s["arrangements"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|a| a["name"].as_str().unwrap())
                    .collect();
                assert_eq!(names, ["totals", "histogram", "users", "by-total", "top-k"]);
                for op in ["Admit", "Totals", "TopK", "Histogram", "Users", "Deliver"] {
                    assert!(
                        s["operators"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .any(|o| o["name"] == op),
                        "no operator {op}: {s}"
                    );
                }
                assert_eq!(s["workers"].as_array().unwrap().len(), threads);
                let totals = s["arrangements"][0]["live_keys"].as_u64();
                keys = keys.zip(totals).map(|(a, b)| a + b as usize);
                lag.extend(s["consumer_lag"].as_array().unwrap().iter().cloned());
                for w in s["workers"].as_array().unwrap() {
                    // A streaming source is always at an epoch, at or after the last completed.
                    let (input, completed) =
                        (w["input_epoch"].as_u64(), w["completed_epoch"].as_u64());
                    assert!(input.is_some() && input >= completed, "{w}");
                }
            }
        }
        // Process 0 measures the consumer lag of every partition: none once all is read.
        let caught_up = lag.len() == partitions && lag.iter().all(|p| p[1] == 0);
        if reachable && keys == Some(open_keys) && caught_up {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "totals hold {keys:?} live keys, the open days {open_keys} (and the lag): {gathered}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// `rankmysteps inspect SELECT lookup` for every user of an open day (their workers and the
/// day's spread over the processes, `threads` workers each): the total and the standing equal
/// the reference's; some lookups cross processes; a closed day is answered as closed, an
/// unknown user as not found, a bad date as such.
pub fn lookups_equal_the_reference(select: &[&str], threads: u64, reference: &Reference) {
    use rankmysteps_dataflow::event::{format_day, format_user};
    use rankmysteps_dataflow::ranking::{sort_listing, standing};
    let lookup = |day: &str, user: &str| {
        let args = [
            &["--json"],
            select,
            &["lookup", "--day", day, "--user", user, "--neighbours", "2"],
        ]
        .concat();
        inspect(&args)
    };
    let (day, open) = reference.days.iter().find(|(_, d)| !d.is_final).unwrap();
    let mut listing: Vec<_> = open.totals.iter().map(|(u, t)| (*u, *t)).collect();
    sort_listing(&mut listing);
    let mut across = 0;
    for &(user, total) in &listing {
        let out = lookup(&format_day(*day), &format_user(user));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let want = standing(&listing, user, 2).unwrap();
        assert_eq!(got["total"], total, "{got}");
        assert_eq!(got["final"], false);
        let s = &got["standing"];
        assert_eq!(
            (s["rank"].as_u64(), s["users"].as_u64()),
            (Some(want.rank), Some(want.users)),
            "{got}"
        );
        assert_eq!(s["gap_up"].as_u64(), want.gap_up, "{got}");
        assert_eq!(s["gap_down"].as_u64(), want.gap_down, "{got}");
        let above: Vec<String> = want.above.iter().map(|a| format_user(a.0)).collect();
        let got_above: Vec<&str> = s["above"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["user"].as_str().unwrap())
            .collect();
        assert_eq!(got_above, above, "{got}");
        // The user's worker and the day's are in different processes.
        if got["user_worker"].as_u64().unwrap() / threads
            != got["day_worker"].as_u64().unwrap() / threads
        {
            across += 1;
        }
    }
    assert!(across > 0, "no lookup crossed processes");
    let (closed, result) = reference.days.iter().find(|(_, d)| d.is_final).unwrap();
    let user = format_user(*result.totals.keys().next().unwrap());
    let out = lookup(&format_day(*closed), &user);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("closed"),
        "{stderr}"
    );
    let out = lookup(&format_day(*day), "00000000-0000-0000-0000-00000000abcd");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("no accepted event"),
        "{stderr}"
    );
    let out = lookup("2026-02-30", &user);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("not a YYYY-MM-DD"),
        "{stderr}"
    );
}
