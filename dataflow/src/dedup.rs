//! The de-duplication window (design §1), as a compact structure of its own.
//!
//! Key K = (user, day, `event_id`). An accepted event of K at ingestion time t makes every later
//! event of K with ingestion time t′ ≤ t + window a duplicate; duplicates do not extend the
//! window; the first event of K after t + window is accepted and opens a new window.
//!
//! A remembered id costs 16 bytes: a 64-bit hash of (user, day, `event_id`) ([`id_key`]) and the
//! ingestion time of its accepted event. Ids live in buckets of `window` of ingestion time (by
//! the time they were accepted); a bucket is dropped whole once every id in it has left its
//! window, so at most about two windows of ids are held, whatever the number of events.
//!
//! Two different keys of one worker share a hash with probability 2⁻⁶⁴ per pair (about 3·10⁻⁴
//! for 10⁸ ids held at once); the later of such a pair would be counted as a duplicate.

use std::collections::BTreeMap;

use rustc_hash::FxHashMap;

use crate::event::{Day, Micros, User};
use crate::random::splitmix64;

/// The 64-bit hash that stands for K = (user, day, `event_id`) in the window (stable across
/// versions, processes and runs: a restart must decide as the first run did).
pub fn id_key(user: User, day: Day, id: &str) -> u64 {
    let mut h = splitmix64(user as u64);
    h = splitmix64(h ^ (user >> 64) as u64);
    h = splitmix64(h ^ (day as u32 as u64) ^ ((id.len() as u64) << 32));
    for chunk in id.as_bytes().chunks(8) {
        let mut word = [0u8; 8];
        word[..chunk.len()].copy_from_slice(chunk);
        h = splitmix64(h ^ u64::from_le_bytes(word));
    }
    h
}

/// One worker's de-duplication window: the ids of its users accepted within the last window.
#[derive(Debug, Default)]
pub struct DedupWindow {
    /// The window, microseconds of ingestion time.
    window: Micros,
    /// Bucket width (the window, at least 1 µs).
    width: Micros,
    /// Bucket index (accepted time / width) → id hash → accepted ingestion time.
    buckets: BTreeMap<Micros, FxHashMap<u64, Micros>>,
}

impl DedupWindow {
    /// An empty window of `window` microseconds (0: only repeats within one epoch are
    /// duplicates).
    pub fn new(window: Micros) -> Self {
        let window = window.max(0);
        DedupWindow {
            window,
            width: window.max(1),
            buckets: BTreeMap::new(),
        }
    }

    /// Forgets the ids whose window ended before ingestion time `now` (every later event is
    /// ingested at `now` or after): whole buckets, once all of their ids are past their window.
    pub fn advance(&mut self, now: Micros) {
        while let Some((&b, _)) = self.buckets.first_key_value() {
            // Every id in bucket b was accepted before (b + 1) · width.
            if (b + 1)
                .saturating_mul(self.width)
                .saturating_add(self.window)
                >= now
            {
                break;
            }
            self.buckets.pop_first();
        }
    }

    /// Decides an event of K (`key` = [`id_key`]) ingested at `t`: `true` if it is accepted (and
    /// then remembered at `t`), `false` if it is a duplicate of an event accepted at most
    /// `window` before it.
    pub fn admit(&mut self, key: u64, t: Micros) -> bool {
        let b = t.div_euclid(self.width);
        // Any accepted event of K at t0 with t ≤ t0 + window lies in bucket ≥ b − 1.
        let duplicate = self
            .buckets
            .range(b - 1..)
            .any(|(_, ids)| ids.get(&key).is_some_and(|&t0| t <= t0 + self.window));
        if duplicate {
            return false;
        }
        self.buckets.entry(b).or_default().insert(key, t);
        true
    }

    /// Every remembered `(id hash, accepted ingestion time)`, sorted, for a checkpoint.
    pub fn entries(&self) -> Vec<(u64, Micros)> {
        let mut out = Vec::with_capacity(self.len());
        for ids in self.buckets.values() {
            out.extend(ids.iter().map(|(&k, &t)| (k, t)));
        }
        // Deterministic: equal windows give equal checkpoints.
        out.sort_unstable();
        out
    }

    /// Remembers `entries` (from [`entries`](DedupWindow::entries)) as if their events had
    /// been accepted at their times: each in the bucket it was in.
    pub fn restore(&mut self, entries: &[(u64, Micros)]) {
        for &(key, t) in entries {
            self.buckets
                .entry(t.div_euclid(self.width))
                .or_default()
                .insert(key, t);
        }
    }

    /// Ids remembered.
    pub fn len(&self) -> usize {
        self.buckets.values().map(|ids| ids.len()).sum()
    }

    /// Whether no id is remembered.
    pub fn is_empty(&self) -> bool {
        self.buckets.values().all(|ids| ids.is_empty())
    }

    /// Bytes allocated for the remembered ids (table slots of 16 bytes plus a control byte each).
    pub fn bytes(&self) -> usize {
        self.buckets
            .values()
            .map(|ids| ids.capacity() * (std::mem::size_of::<(u64, Micros)>() + 1))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_inside_and_just_outside_the_window() {
        let mut w = DedupWindow::new(10);
        let k = id_key(7, 3, "a");
        assert!(w.admit(k, 0));
        assert!(!w.admit(k, 0), "same epoch");
        assert!(!w.admit(k, 10), "at t + window");
        assert!(w.admit(k, 11), "just outside: a new window opens at 11");
        assert!(!w.admit(k, 21));
        assert!(w.admit(k, 22));
        // Duplicates never extend a window.
        let k2 = id_key(7, 3, "b");
        assert!(w.admit(k2, 100));
        assert!(!w.admit(k2, 105));
        assert!(!w.admit(k2, 110));
        assert!(w.admit(k2, 111));
    }

    #[test]
    fn keys_differ_by_user_day_and_id() {
        let base = id_key(1, 2, "abcdefgh");
        assert_ne!(base, id_key(2, 2, "abcdefgh"));
        assert_ne!(base, id_key(1 << 64 | 1, 2, "abcdefgh"));
        assert_ne!(base, id_key(1, 3, "abcdefgh"));
        assert_ne!(base, id_key(1, 2, "abcdefgi"));
        assert_ne!(base, id_key(1, 2, "abcdefgh\0"));
        assert_ne!(id_key(1, 2, ""), id_key(1, 2, "\0"));
    }

    #[test]
    fn a_restored_window_decides_as_the_original() {
        let mut w = DedupWindow::new(10);
        for (i, t) in [(1u64, 0), (2, 7), (3, 15), (4, 19)] {
            w.advance(t);
            assert!(w.admit(i, t));
        }
        let mut r = DedupWindow::new(10);
        r.restore(&w.entries());
        assert_eq!(r.len(), w.len());
        for (key, t) in [
            (1, 20),
            (2, 17),
            (2, 18),
            (3, 25),
            (3, 26),
            (4, 29),
            (5, 29),
        ] {
            w.advance(t);
            r.advance(t);
            assert_eq!(w.admit(key, t), r.admit(key, t), "{key} at {t}");
        }
    }

    #[test]
    fn forgets_as_the_window_passes() {
        let mut w = DedupWindow::new(10);
        for t in 0..1000 {
            w.advance(t);
            assert!(w.admit(id_key(1, 1, &t.to_string()), t));
            assert!(w.len() <= 31, "{} ids held at {t}", w.len());
        }
        // Nothing is forgotten before its window ended.
        let mut w = DedupWindow::new(10);
        assert!(w.admit(5, 9));
        w.advance(19);
        assert!(!w.admit(5, 19));
        w.advance(40);
        assert!(w.is_empty());
    }
}
