//! Progress of `run --input` when stderr is not a terminal: plain lines with what is done (bytes
//! of the file's size, or records from stdin), a last line when the replay ends, and nothing
//! with `--quiet`. Through the real binary; no service needed.

use std::io::Write;
use std::process::{Command, Stdio};

/// A JSON Lines file of `n` valid events of 100 users on one day.
fn events(n: usize) -> Vec<u8> {
    let mut text = Vec::new();
    for i in 0..n {
        writeln!(
            text,
            "{{\"uuid\":\"00000000-0000-4000-8000-{:012x}\",\"timestamp\":\"2026-11-27 10:{:02}:00\",\"steps\":{}}}",
            i % 100,
            i % 60,
            1 + i % 10
        )
        .unwrap();
    }
    text
}

fn replay(input: &str, stdin: Option<&[u8]>, quiet: bool, out: &std::path::Path) -> String {
    let mut command = Command::new(env!("CARGO_BIN_EXE_rankmysteps"));
    command
        .args(["run", "--input", input, "--epoch-events", "1000", "--out"])
        .arg(out)
        // A line every 10 ms, so that even a short replay shows some before its last.
        .env("RANKMYSTEPS_PROGRESS_INTERVAL", "0.01")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if quiet {
        command.arg("--quiet");
    }
    let mut child = command.spawn().unwrap();
    if let Some(bytes) = stdin {
        child.stdin.take().unwrap().write_all(bytes).unwrap();
    }
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(output.status.success(), "{stderr}");
    stderr
}

#[test]
fn a_file_replay_shows_bytes_of_its_size_then_done() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("events.jsonl");
    let bytes = events(60_000);
    std::fs::write(&file, &bytes).unwrap();
    let stderr = replay(file.to_str().unwrap(), None, false, &dir.path().join("out"));
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("rankmysteps: replay: "))
        .collect();
    let last = lines
        .last()
        .unwrap_or_else(|| panic!("no progress: {stderr}"));
    let size = format!("of {:.1} MiB", bytes.len() as f64 / (1 << 20) as f64);
    assert!(last.contains(&size), "{last} ({size})");
    assert!(last.contains("(100.0%), 60.0k records"), "{last}");
    assert!(last.ends_with("(done)"), "{last}");
    // The summary comes after the last progress line.
    let summary = stderr.find("epochs in").unwrap();
    assert!(stderr.find(last).unwrap() < summary, "{stderr}");
}

#[test]
fn stdin_is_counted_in_records_and_quiet_shows_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = events(20_000);
    let stderr = replay("-", Some(&bytes), false, &dir.path().join("a"));
    let last = stderr
        .lines()
        .rfind(|l| l.starts_with("rankmysteps: replay: "))
        .unwrap_or_else(|| panic!("no progress: {stderr}"));
    assert!(
        last.starts_with("rankmysteps: replay: 20.0k records"),
        "{last}"
    );
    assert!(!last.contains(" of "), "no size is known for stdin: {last}");
    assert!(last.ends_with("(done)"), "{last}");

    let quiet = replay("-", Some(&bytes), true, &dir.path().join("b"));
    assert!(!quiet.contains("replay:"), "{quiet}");
    assert!(quiet.contains("epochs in"), "the summary stays: {quiet}");
}
