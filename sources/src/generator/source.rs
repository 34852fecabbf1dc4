use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rankmysteps_dataflow::event::{user_text, Epoch, Micros, User};
use rankmysteps_dataflow::random::{splitmix64, SplitMix64};

use crate::chunk::{wall_clock, Chunk, ChunkSource, Pull};

/// Most events in one chunk.
const CHUNK_EVENTS: u64 = 4096;

/// How generated timestamps are written.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum TimestampFormat {
    /// `YYYY-MM-DD HH:MM:SS`, local time in the zone (the original producers' format).
    Naive,
    /// RFC 3339 with the zone's current offset, millisecond precision.
    Rfc3339,
}

/// What the generator produces.
#[derive(Clone, Debug)]
pub struct GeneratorConfig {
    /// Number of distinct users, drawn uniformly.
    pub users: u64,
    /// Events per second over all workers; `None`: as fast as possible.
    pub rate: Option<u64>,
    /// Stop after this long; `None`: until stopped.
    pub duration: Option<Duration>,
    /// Stop after this many events over all workers; `None`: no limit.
    pub max_events: Option<u64>,
    /// Epoch length in milliseconds of wall clock.
    pub epoch_ms: u64,
    /// Seed of the user ids and of the random draws.
    pub seed: u64,
    /// Timestamp format.
    pub format: TimestampFormat,
    /// Whether events carry an `event_id` (unique per event).
    pub event_ids: bool,
    /// The zone of the generated local times.
    pub zone: jiff::tz::TimeZone,
}

impl Default for GeneratorConfig {
    fn default() -> Self {
        GeneratorConfig {
            users: 50_000,
            rate: Some(20_000),
            duration: None,
            max_events: None,
            epoch_ms: 1000,
            seed: 1,
            format: TimestampFormat::Naive,
            event_ids: false,
            zone: jiff::tz::TimeZone::get("America/Los_Angeles").expect("bundled time zone"),
        }
    }
}

/// One worker's share of the generator (`1/peers` of the rate and of the events).
pub struct Generator {
    config: GeneratorConfig,
    index: u64,
    peers: u64,
    started: Instant,
    produced: u64,
    rng: SplitMix64,
    stop: Arc<AtomicBool>,
    line: Vec<u8>,
}

/// The UUID of generated user `i` (a random-looking version 4 UUID, fixed by the seed).
pub fn user_uuid(seed: u64, i: u64) -> User {
    let hi = splitmix64(seed ^ i.wrapping_mul(0x2545_F491_4F6C_DD1D));
    let lo = splitmix64(hi ^ i);
    let v = (u128::from(hi) << 64) | u128::from(lo);
    // Version 4, variant RFC 4122.
    (v & !(0xF << 76) & !(0x3 << 62)) | (0x4 << 76) | (0x2 << 62)
}

impl Generator {
    /// Worker `index` of `peers`; all workers must share `started` so they agree on epochs.
    pub fn new(
        config: GeneratorConfig,
        index: usize,
        peers: usize,
        started: Instant,
        stop: Arc<AtomicBool>,
    ) -> Self {
        Generator {
            rng: SplitMix64(splitmix64(
                config.seed ^ (index as u64).wrapping_mul(0xA24B_AED4_963E_E407),
            )),
            config,
            index: index as u64,
            peers: peers as u64,
            started,
            produced: 0,
            stop,
            line: Vec::with_capacity(160),
        }
    }

    fn next_random(&mut self) -> u64 {
        self.rng.next_u64()
    }

    fn epoch_at(&self, now: Micros) -> Epoch {
        (now / 1000).max(0) as u64 / self.config.epoch_ms.max(1)
    }

    /// The timestamp text of `now` in the configured format and zone.
    fn timestamp(&self, now: Micros) -> String {
        let ts = jiff::Timestamp::from_microsecond(now).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
        let zoned = ts.to_zoned_datetime(self.config.zone.clone());
        match self.config.format {
            TimestampFormat::Naive => zoned.strftime("%Y-%m-%d %H:%M:%S").to_string(),
            TimestampFormat::Rfc3339 => zoned.strftime("%Y-%m-%dT%H:%M:%S%.3f%:z").to_string(),
        }
    }

    /// Renders the next event (a random user, 1–10 steps, `timestamp`) into `line`; returns the
    /// user. `pos` names the event in its `event_id`, when those are on.
    pub fn render(&mut self, timestamp: &str, pos: u64, line: &mut Vec<u8>) -> User {
        let r = self.next_random();
        let user = user_uuid(self.config.seed, r % self.config.users.max(1));
        let steps = 1 + (r >> 40) % 10;
        line.clear();
        line.extend_from_slice(b"{\"uuid\":\"");
        line.extend_from_slice(&user_text(user));
        line.extend_from_slice(b"\",\"timestamp\":\"");
        line.extend_from_slice(timestamp.as_bytes());
        line.extend_from_slice(b"\",\"steps\":");
        line.extend_from_slice(steps.to_string().as_bytes());
        if self.config.event_ids {
            line.extend_from_slice(format!(",\"event_id\":\"g{pos}\"").as_bytes());
        }
        line.extend_from_slice(b",\"source\":\"rankmysteps-generator\"}");
        user
    }

    /// The current timestamp text (wall clock) in the configured format and zone.
    pub fn timestamp_now(&self) -> String {
        self.timestamp(wall_clock())
    }

    /// This worker's share of a total count.
    fn share(&self, total: u64) -> u64 {
        total / self.peers + u64::from(self.index < total % self.peers)
    }
}

impl ChunkSource for Generator {
    /// A stream: the watermark follows every worker's events as they come; no bound is known
    /// ahead.
    fn watermark_bound(&self, _chunk: &Chunk) -> Option<Option<Micros>> {
        None
    }

    fn parsed(&mut self, _chunk: &Chunk, _max_time: Option<Micros>) {}

    fn pull(&mut self) -> Pull {
        let elapsed = self.started.elapsed();
        if self.stop.load(Ordering::Relaxed) || self.config.duration.is_some_and(|d| elapsed >= d) {
            return Pull::Done;
        }
        let limit = self.config.max_events.map(|m| self.share(m));
        if limit.is_some_and(|l| self.produced >= l) {
            return Pull::Done;
        }
        let now = wall_clock();
        let epoch = self.epoch_at(now);
        let mut batch = CHUNK_EVENTS;
        if let Some(rate) = self.config.rate {
            let rate = self.share(rate).max(1);
            let due = (elapsed.as_secs_f64() * rate as f64) as u64;
            if due <= self.produced {
                let wait = Duration::from_secs_f64(1.0 / rate as f64)
                    .clamp(Duration::from_micros(200), Duration::from_millis(50));
                return Pull::Idle { epoch, retry: wait };
            }
            batch = batch.min(due - self.produced);
        }
        if let Some(l) = limit {
            batch = batch.min(l - self.produced);
        }
        let timestamp = self.timestamp(now);
        let mut chunk = Chunk::new(epoch, now);
        chunk.data.reserve(batch as usize * 130);
        let mut line = std::mem::take(&mut self.line);
        for _ in 0..batch {
            let pos = self.produced * self.peers + self.index;
            self.render(&timestamp, pos, &mut line);
            chunk.push(pos, &line);
            self.produced += 1;
        }
        self.line = line;
        Pull::Chunk(chunk)
    }
}
