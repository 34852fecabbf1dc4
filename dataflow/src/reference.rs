//! A sequential reference implementation of design §1-3: sort, sum, rank. No dataflow.
//!
//! Tests run the same inputs through the dataflow (any number of workers) and through this, and
//! compare the results exactly, epoch by epoch. It is deliberately simple: it keeps every day
//! and every event id in memory, recomputes rankings from scratch, and never prunes.

use std::collections::BTreeMap;

use crate::event::{is_closed, Day, Epoch, Event, Micros, Reason, User};
use crate::output::Stats;
use crate::pipeline::Settings;
use crate::ranking::{rank_prefix, sort_listing, TopRow};

/// One input record as the sources deliver it: a parsed event, or a record they rejected.
#[derive(Clone, Debug)]
pub enum Record {
    /// An event that passed parsing and the `future` check.
    Event(Event),
    /// A record rejected by the source (position, reason).
    Rejected(u64, Reason),
}

impl Record {
    fn pos(&self) -> u64 {
        match self {
            Record::Event(e) => e.pos,
            Record::Rejected(pos, _) => *pos,
        }
    }
}

/// The state of every day after some epoch, as the sinks should show it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DayResult {
    /// Totals by user.
    pub totals: BTreeMap<User, u64>,
    /// Whether the day is closed (final).
    pub is_final: bool,
}

impl DayResult {
    /// The day's top-k rows.
    pub fn top(&self, k: usize) -> Vec<TopRow> {
        let mut listing: Vec<(User, u64)> = self.totals.iter().map(|(&u, &s)| (u, s)).collect();
        sort_listing(&mut listing);
        rank_prefix(listing, k)
    }

    /// The day's histogram: total → number of users.
    pub fn histogram(&self) -> BTreeMap<u64, u64> {
        let mut h = BTreeMap::new();
        for &s in self.totals.values() {
            *h.entry(s).or_insert(0) += 1;
        }
        h
    }
}

/// The sequential reference: feed it epochs in order.
#[derive(Clone, Debug, Default)]
pub struct Reference {
    settings: Settings,
    /// W after the last epoch.
    pub watermark: Option<Micros>,
    /// Every day seen so far.
    pub days: BTreeMap<Day, DayResult>,
    /// Counters over all epochs so far.
    pub stats: Stats,
    /// Every rejection so far, as (epoch, position, reason), in order.
    pub rejected: Vec<(Epoch, u64, Reason)>,
    /// Events accepted again because their window had passed (a repeat of an accepted
    /// `(user, day, event_id)` more than `dedup_window` after it): tests check they occur.
    pub reaccepted: u64,
    /// Every `(user, day, event_id)` accepted so far, with the latest ingestion time it was
    /// accepted at (never forgotten: the reference is simple, not bounded).
    seen: BTreeMap<(User, Day, Box<str>), Micros>,
}

impl Reference {
    /// A reference with these settings.
    pub fn new(settings: Settings) -> Self {
        Reference {
            settings,
            ..Default::default()
        }
    }

    /// Processes one epoch's records (any order; input order is their position).
    pub fn epoch(&mut self, epoch: Epoch, mut records: Vec<Record>) {
        records.sort_by_key(Record::pos);
        let grace = self.settings.grace;
        let mut max: Option<Micros> = None;
        for record in records {
            let event = match record {
                Record::Rejected(pos, reason) => {
                    self.reject(epoch, pos, reason);
                    continue;
                }
                Record::Event(e) => e,
            };
            if is_closed(event.day, self.watermark, grace) {
                self.reject(epoch, event.pos, Reason::Late);
                continue;
            }
            if let Some(id) = event.event_id() {
                // Design §1: a duplicate if ingested at most `dedup_window` after an accepted
                // event of the same (user, day, event_id); duplicates do not extend the window.
                let t = self.settings.ingestion_time(epoch, &event);
                let key = (event.user, event.day, Box::<str>::from(id));
                match self.seen.get_mut(&key) {
                    Some(t0) if t <= *t0 + self.settings.dedup_window => {
                        self.stats.duplicate += 1;
                        continue;
                    }
                    Some(t0) => {
                        *t0 = (*t0).max(t);
                        self.reaccepted += 1;
                    }
                    None => {
                        self.seen.insert(key, t);
                    }
                }
            }
            self.stats.accepted += 1;
            *self
                .days
                .entry(event.day)
                .or_default()
                .totals
                .entry(event.user)
                .or_insert(0) += u64::from(event.steps);
            max = max.max(Some(event.time));
        }
        self.watermark = self.watermark.max(max);
        for (&day, result) in self.days.iter_mut() {
            if is_closed(day, self.watermark, grace) {
                result.is_final = true;
            }
        }
    }

    fn reject(&mut self, epoch: Epoch, pos: u64, reason: Reason) {
        self.stats.rejected[reason.index()] += 1;
        self.rejected.push((epoch, pos, reason));
    }
}
