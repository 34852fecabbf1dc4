use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use rankmysteps_dataflow::event::format_user;

use super::*;
use crate::chunk::{ChunkSource, Pull};
use crate::parse::{ParseConfig, Parser};

#[test]
fn uuids_are_version_4_and_stable() {
    let u = format_user(user_uuid(1, 42));
    assert_eq!(u.as_bytes()[14], b'4', "{u}");
    assert!(matches!(u.as_bytes()[19], b'8' | b'9' | b'a' | b'b'), "{u}");
    assert_eq!(user_uuid(1, 42), user_uuid(1, 42));
    assert_ne!(user_uuid(1, 42), user_uuid(1, 43));
}

#[test]
fn generated_records_parse_and_respect_limits() {
    for format in [TimestampFormat::Naive, TimestampFormat::Rfc3339] {
        let config = GeneratorConfig {
            users: 100,
            rate: None,
            max_events: Some(10_001),
            format,
            event_ids: true,
            ..Default::default()
        };
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let mut gens: Vec<_> = (0..2)
            .map(|i| Generator::new(config.clone(), i, 2, started, stop.clone()))
            .collect();
        let mut parser = Parser::new(ParseConfig::default());
        let mut seen = std::collections::BTreeSet::new();
        for g in gens.iter_mut() {
            loop {
                match g.pull() {
                    Pull::Chunk(chunk) => {
                        for (pos, bytes) in chunk.iter() {
                            let p = parser.parse(bytes, chunk.now).unwrap_or_else(|e| {
                                panic!("{e:?}: {}", String::from_utf8_lossy(bytes))
                            });
                            assert!((1..=10).contains(&p.steps));
                            assert!(p.event_id.is_some());
                            assert!(seen.insert(pos), "position {pos} twice");
                        }
                    }
                    Pull::Done => break,
                    Pull::Idle { .. } => panic!("unlimited rate never idles"),
                }
            }
        }
        assert_eq!(seen.len(), 10_001);
    }
}
