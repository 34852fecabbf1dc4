use rankmysteps_sources::parse::{ParseConfig, Parser};
use std::hint::black_box;
use std::time::Instant;
fn bench(name: &str, lines: &[Vec<u8>], p: &mut Parser) {
    let now = 1_900_000_000_000_000;
    let n = 3_000_000;
    for l in lines { black_box(p.parse(l, now).unwrap()); }
    let mut best = f64::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        for i in 0..n { let l = &lines[i % lines.len()]; black_box(p.parse(black_box(l), now).unwrap()); }
        best = best.min(t.elapsed().as_nanos() as f64 / n as f64);
    }
    println!("{name}: {best:.1} ns/record (best of 3)");
}
fn main() {
    let mut p = Parser::new(ParseConfig::default());
    let u = "0b6f3c1e-9c2d-4f7a-8e1b-2a3c4d5e6f70";
    let naive: Vec<Vec<u8>> = (0..1000).map(|i| format!(r#"{{"uuid":"{u}","timestamp":"2026-11-{:02} {:02}:{:02}:47","steps":7,"source":"device"}}"#, 1 + i % 28, i % 24, i % 60).into_bytes()).collect();
    let rfc: Vec<Vec<u8>> = (0..1000).map(|i| format!(r#"{{"uuid":"{u}","timestamp":"2026-11-{:02}T{:02}:{:02}:47-08:00","steps":7,"source":"device"}}"#, 1 + i % 28, i % 24, i % 60).into_bytes()).collect();
    let eid: Vec<Vec<u8>> = (0..1000).map(|i| format!(r#"{{"uuid":"{u}","timestamp":"2026-11-{:02}T{:02}:{:02}:47.123456+05:45","steps":7,"event_id":"evt-{i}","source":"device"}}"#, 1 + i % 28, i % 24, i % 60).into_bytes()).collect();
    bench("naive (typical line, 1000 variants)", &naive, &mut p);
    bench("rfc3339 -08:00", &rfc, &mut p);
    bench("rfc3339 frac + event_id", &eid, &mut p);
}
