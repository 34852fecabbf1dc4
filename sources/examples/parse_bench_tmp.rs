use rankmysteps_sources::parse::{parse_timestamp, ParseConfig, Parser};
use std::hint::black_box;
use std::time::Instant;

fn bench(name: &str, lines: &[Vec<u8>], p: &mut Parser) {
    let now = 1_900_000_000_000_000;
    let n = 2_000_000;
    for l in lines { black_box(p.parse(l, now).unwrap()); }
    let t = Instant::now();
    for i in 0..n {
        let l = &lines[i % lines.len()];
        black_box(p.parse(black_box(l), now).unwrap());
    }
    println!("{name}: {:.1} ns/record", t.elapsed().as_nanos() as f64 / n as f64);
}

fn main() {
    let mut p = Parser::new(ParseConfig::default());
    let u = "0b6f3c1e-9c2d-4f7a-8e1b-2a3c4d5e6f70";
    let naive: Vec<Vec<u8>> = (0..1000).map(|i| format!(r#"{{"uuid":"{u}","timestamp":"2026-11-{:02} {:02}:{:02}:47","steps":7,"source":"device"}}"#, 1 + i % 28, i % 24, i % 60).into_bytes()).collect();
    let rfc: Vec<Vec<u8>> = (0..1000).map(|i| format!(r#"{{"uuid":"{u}","timestamp":"2026-11-{:02}T{:02}:{:02}:47-08:00","steps":7,"source":"device"}}"#, 1 + i % 28, i % 24, i % 60).into_bytes()).collect();
    let eid: Vec<Vec<u8>> = (0..1000).map(|i| format!(r#"{{"uuid":"{u}","timestamp":"2026-11-{:02}T{:02}:{:02}:47.123456+05:45","steps":7,"event_id":"evt-{i}","source":"device"}}"#, 1 + i % 28, i % 24, i % 60).into_bytes()).collect();
    let intu: Vec<Vec<u8>> = (0..1000).map(|i| format!(r#"{{"uuid":{},"timestamp":"2026-11-27 10:20:47","steps":{}}}"#, i * 7919, i % 11).into_bytes()).collect();
    let one = vec![format!(r#"{{"uuid":"{u}","timestamp":"2026-11-27 10:20:47","steps":7,"source":"device"}}"#).into_bytes()];
    bench("naive same line", &one, &mut p);
    bench("naive 1000 lines (672 distinct hours)", &naive, &mut p);
    bench("rfc3339 -08:00", &rfc, &mut p);
    bench("rfc3339 frac+event_id", &eid, &mut p);
    bench("integer uuid naive", &intu, &mut p);
    // uncached jiff path
    let zone = ParseConfig::default().time_zone;
    let texts: Vec<String> = (0..1000).map(|i| format!("2026-11-{:02} {:02}:{:02}:47", 1 + i % 28, i % 24, i % 60)).collect();
    let n = 2_000_000;
    let t = Instant::now();
    for i in 0..n { black_box(parse_timestamp(black_box(&texts[i % 1000]), &zone).unwrap()); }
    println!("parse_timestamp naive (jiff, uncached): {:.1} ns", t.elapsed().as_nanos() as f64 / n as f64);
    // serde_json Value for reference
    let t = Instant::now();
    for i in 0..n { black_box(serde_json::from_slice::<serde_json::Value>(black_box(&naive[i % 1000])).unwrap()); }
    println!("serde_json::Value reference: {:.1} ns", t.elapsed().as_nanos() as f64 / n as f64);
}
