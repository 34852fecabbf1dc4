//! Live updates (design §11): one watcher per server reads the store once per epoch and
//! broadcasts what changed to every event stream; pinned standings are read at most once a
//! second per distinct (day, user) watched, shared by every client watching it.
//!
//! Messages go through one [`broadcast`] channel of pre-rendered events: a client that does
//! not read falls behind alone (it skips what it missed and is told to resynchronise), never
//! stalling the watcher or the other clients.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rankmysteps_dataflow::event::{format_day, format_user, Day, User};
use rankmysteps_sinks::local::TopFile;
use serde_json::{json, Value};
use tokio::sync::{broadcast, watch, Notify};

use crate::error::WebError;
use crate::json::standing_json;
use crate::store::{Store, Version};

/// Neighbours on each side of a pinned standing.
pub const PIN_NEIGHBOURS: usize = 3;
/// The least time between two reads of one pinned standing.
pub const PIN_INTERVAL: Duration = Duration::from_secs(1);
/// Messages a slow client may fall behind before it skips ahead.
const CHANNEL: usize = 256;

/// One server-sent event, rendered once for every client.
#[derive(Debug)]
pub struct Message {
    /// The SSE event name: `status`, `days`, `top` or `standing`.
    pub event: &'static str,
    /// The day it is about (`top`, `standing`), else `None` (for everyone).
    pub day: Option<Day>,
    /// The user it is about (`standing`).
    pub user: Option<User>,
    /// The JSON data.
    pub data: String,
}

/// The store's state as the watcher last saw it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Seen {
    /// The store's version (`None` before the first successful poll).
    pub version: Option<Version>,
    /// Why the last poll failed, if it did.
    pub error: Option<String>,
}

struct Pin {
    clients: usize,
    last: Option<Arc<Message>>,
    task: Option<tokio::task::AbortHandle>,
}

#[derive(Default)]
struct State {
    days: Arc<Vec<(Day, bool)>>,
    days_message: Option<Arc<Message>>,
    status_message: Option<Arc<Message>>,
    /// Top-k read per day, with the version it was read at.
    tops: HashMap<Day, (Version, Arc<TopFile>, Arc<Message>)>,
    /// Days with at least one event stream, by number of streams.
    watched: HashMap<Day, usize>,
    pins: HashMap<(Day, User), Pin>,
    /// Histograms read per day, with the version they were read at.
    histograms: HashMap<Day, (Version, Arc<Vec<(u64, u64)>>)>,
}

/// The watcher's shared state; one per server.
pub struct Hub {
    store: Arc<dyn Store>,
    tx: broadcast::Sender<Arc<Message>>,
    seen: watch::Sender<Seen>,
    state: Mutex<State>,
    poke: Notify,
    poll: Duration,
}

/// Runs a blocking store read on tokio's blocking pool.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, WebError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| WebError::Internal(format!("store read failed: {e}")))
}

fn message(
    event: &'static str,
    day: Option<Day>,
    user: Option<User>,
    data: &Value,
) -> Arc<Message> {
    Arc::new(Message {
        event,
        day,
        user,
        data: data.to_string(),
    })
}

/// What a new event stream starts from, and its registration (dropping it unregisters).
pub struct Subscription {
    /// Every later message (filter by day and user).
    pub rx: broadcast::Receiver<Arc<Message>>,
    /// The current state to send first.
    pub initial: Vec<Arc<Message>>,
    /// The day watched.
    pub day: Option<Day>,
    /// The user pinned.
    pub user: Option<User>,
    hub: Arc<Hub>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut state = self.hub.state.lock().expect("hub lock");
        if let Some(day) = self.day {
            if let Some(n) = state.watched.get_mut(&day) {
                *n -= 1;
                if *n == 0 {
                    state.watched.remove(&day);
                }
            }
            if let Some(user) = self.user {
                if let Some(pin) = state.pins.get_mut(&(day, user)) {
                    pin.clients -= 1;
                    if pin.clients == 0 {
                        if let Some(task) = pin.task.take() {
                            task.abort();
                        }
                        state.pins.remove(&(day, user));
                    }
                }
            }
        }
    }
}

impl Hub {
    /// A hub over `store`, polling its version every `poll`. Start its watcher with
    /// [`Hub::run`].
    pub fn new(store: Arc<dyn Store>, poll: Duration) -> Arc<Hub> {
        let (tx, _) = broadcast::channel(CHANNEL);
        Arc::new(Hub {
            store,
            tx,
            seen: watch::Sender::new(Seen::default()),
            state: Mutex::new(State::default()),
            poke: Notify::new(),
            poll,
        })
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// What the watcher last saw.
    pub fn seen(&self) -> Seen {
        self.seen.borrow().clone()
    }

    /// The list of days as of the last epoch.
    pub fn days(&self) -> Arc<Vec<(Day, bool)>> {
        self.state.lock().expect("hub lock").days.clone()
    }

    /// Event streams open now.
    pub fn clients(&self) -> usize {
        self.tx.receiver_count()
    }

    /// The watcher: runs until the server stops.
    pub async fn run(self: Arc<Self>) {
        let mut last: Option<Version> = None;
        loop {
            let store = self.store.clone();
            match blocking(move || store.version())
                .await
                .and_then(|r| r.map_err(|e| WebError::from_store(e, None)))
            {
                Ok(version) => {
                    let moved = last != Some(version);
                    if moved || self.seen.borrow().error.is_some() {
                        self.refresh(version, moved).await;
                    } else {
                        self.refresh_unread(version).await;
                    }
                    last = Some(version);
                }
                Err(e) => {
                    let detail = e.to_string();
                    if self.seen.borrow().error.as_deref() != Some(detail.as_str()) {
                        tracing::warn!(error = %detail, "web: store unavailable");
                        self.seen.send_replace(Seen {
                            version: last,
                            error: Some(detail),
                        });
                        self.publish_status();
                    }
                }
            }
            let _ = tokio::time::timeout(self.poll, self.poke.notified()).await;
        }
    }

    fn publish_status(&self) {
        let seen = self.seen();
        let v = seen.version.unwrap_or_default();
        let m = message(
            "status",
            None,
            None,
            &json!({
                "store": if seen.error.is_some() { "unavailable" } else { "ok" },
                "detail": seen.error,
                "epoch": v.epoch,
                "writing": v.writing,
            }),
        );
        self.state.lock().expect("hub lock").status_message = Some(m.clone());
        let _ = self.tx.send(m);
    }

    /// After the version moved (or the store came back): the days, then the top-k of every
    /// watched day (and the latest), then the status.
    async fn refresh(&self, version: Version, moved: bool) {
        let store = self.store.clone();
        let days = match blocking(move || store.days()).await {
            Ok(Ok(days)) => days,
            Ok(Err(e)) => return self.failed(WebError::from_store(e, None)),
            Err(e) => return self.failed(e),
        };
        {
            let mut state = self.state.lock().expect("hub lock");
            if *state.days != days || state.days_message.is_none() {
                let m = message("days", None, None, &days_json(&days));
                state.days = Arc::new(days);
                state.days_message = Some(m.clone());
                let _ = self.tx.send(m);
            }
        }
        self.read_tops(version, moved).await;
        self.seen.send_replace(Seen {
            version: Some(version),
            error: None,
        });
        self.publish_status();
    }

    /// The version did not move: read only the days a new client watches that are not read yet.
    async fn refresh_unread(&self, version: Version) {
        self.read_tops(version, false).await;
    }

    fn failed(&self, e: WebError) {
        let detail = e.to_string();
        self.seen.send_modify(|s| s.error = Some(detail));
        self.publish_status();
    }

    async fn read_tops(&self, version: Version, moved: bool) {
        let days: Vec<Day> = {
            let state = self.state.lock().expect("hub lock");
            let finals: HashMap<Day, bool> = state.days.iter().copied().collect();
            let mut days: Vec<Day> = state.watched.keys().copied().collect();
            days.extend(state.days.last().map(|&(d, _)| d));
            days.sort_unstable();
            days.dedup();
            days.retain(|d| match state.tops.get(d) {
                None => true,
                // A final day read as final never changes again.
                Some((_, top, _)) if top.is_final => false,
                Some(_) => moved || finals.get(d).copied().unwrap_or(false),
            });
            days
        };
        for day in days {
            let store = self.store.clone();
            let top = match blocking(move || store.top(day)).await {
                Ok(Ok(top)) => top,
                // Not there yet (a day being written), or gone: nothing to show.
                Ok(Err(rankmysteps_sinks::SinkError::NotFound { .. })) => continue,
                Ok(Err(e)) => return self.failed(WebError::from_store(e, None)),
                Err(e) => return self.failed(e),
            };
            let mut state = self.state.lock().expect("hub lock");
            let changed = state.tops.get(&day).is_none_or(|(_, old, _)| **old != top);
            if changed {
                let m = message(
                    "top",
                    Some(day),
                    None,
                    &serde_json::to_value(&top).unwrap_or_default(),
                );
                state.tops.insert(day, (version, Arc::new(top), m.clone()));
                let _ = self.tx.send(m);
            } else if let Some(entry) = state.tops.get_mut(&day) {
                entry.0 = version;
            }
        }
    }

    /// The top-k of `day` as of the current version: from the watcher's cache when it is
    /// current, else read (and cached). One read per epoch per day, whatever the clients.
    pub async fn top(&self, day: Day) -> Result<Arc<TopFile>, WebError> {
        let version = self.seen().version;
        if let Some((v, top, _)) = self.state.lock().expect("hub lock").tops.get(&day) {
            if Some(*v) == version || top.is_final {
                return Ok(top.clone());
            }
        }
        let store = self.store.clone();
        let top = blocking(move || store.top(day))
            .await?
            .map_err(|e| WebError::from_store(e, Some(&format_day(day))))?;
        let top = Arc::new(top);
        if let Some(v) = version {
            let m = message(
                "top",
                Some(day),
                None,
                &serde_json::to_value(&*top).unwrap_or_default(),
            );
            self.state
                .lock()
                .expect("hub lock")
                .tops
                .insert(day, (v, top.clone(), m));
        }
        Ok(top)
    }

    /// The histogram of `day` as of the current version (cached like [`Hub::top`]).
    pub async fn histogram(&self, day: Day) -> Result<Arc<Vec<(u64, u64)>>, WebError> {
        let version = self.seen().version;
        if let Some((v, rows)) = self.state.lock().expect("hub lock").histograms.get(&day) {
            if Some(*v) == version {
                return Ok(rows.clone());
            }
        }
        let store = self.store.clone();
        let rows = blocking(move || store.histogram(day))
            .await?
            .map_err(|e| WebError::from_store(e, Some(&format_day(day))))?;
        if rows.is_empty() {
            return Err(WebError::UnknownDay(format_day(day)));
        }
        let rows = Arc::new(rows);
        if let Some(v) = version {
            let mut state = self.state.lock().expect("hub lock");
            // Bounded: only the days asked about recently.
            if state.histograms.len() > 64 {
                state.histograms.clear();
            }
            state.histograms.insert(day, (v, rows.clone()));
        }
        Ok(rows)
    }

    /// Registers an event stream watching `day` (default: the latest day) and pinning `user`.
    pub fn subscribe(self: &Arc<Self>, day: Option<Day>, user: Option<User>) -> Subscription {
        // Subscribe before registering, so nothing read for this client is missed.
        let rx = self.tx.subscribe();
        let mut state = self.state.lock().expect("hub lock");
        let day = day.or_else(|| state.days.last().map(|&(d, _)| d));
        let mut initial: Vec<Arc<Message>> = Vec::new();
        initial.extend(state.status_message.clone());
        initial.extend(state.days_message.clone());
        let mut poke = false;
        if let Some(day) = day {
            *state.watched.entry(day).or_insert(0) += 1;
            match state.tops.get(&day) {
                Some((_, _, m)) => initial.push(m.clone()),
                None => poke = true,
            }
            if let Some(user) = user {
                let pin = state.pins.entry((day, user)).or_insert(Pin {
                    clients: 0,
                    last: None,
                    task: None,
                });
                pin.clients += 1;
                initial.extend(pin.last.clone());
                if pin.task.is_none() {
                    let hub = self.clone();
                    let task = tokio::spawn(async move { hub.watch_pin(day, user).await });
                    pin.task = Some(task.abort_handle());
                }
            }
        }
        drop(state);
        if poke {
            self.poke.notify_one();
        }
        Subscription {
            rx,
            initial,
            day,
            user: user.filter(|_| day.is_some()),
            hub: self.clone(),
        }
    }

    /// A pinned standing: read when the version moves, at most once per [`PIN_INTERVAL`].
    async fn watch_pin(self: Arc<Self>, day: Day, user: User) {
        let mut seen = self.seen.subscribe();
        let mut read_at: Option<Version> = None;
        loop {
            let version = seen.borrow_and_update().version;
            if version.is_some() && version != read_at {
                let store = self.store.clone();
                let result = blocking(move || store.standing(day, user, PIN_NEIGHBOURS)).await;
                let data = match result {
                    Ok(Ok(Some((s, is_final)))) => Some(standing_json(day, user, &s, is_final)),
                    Ok(Ok(None)) => Some(unknown_user(day, user).body()),
                    // Unavailable: the status says so; keep the last standing shown.
                    Ok(Err(_)) | Err(_) => None,
                };
                if let Some(mut data) = data {
                    data["day"] = format_day(day).into();
                    data["user"] = format_user(user).into();
                    let final_read = data["final"] == true;
                    let mut state = self.state.lock().expect("hub lock");
                    let Some(pin) = state.pins.get_mut(&(day, user)) else {
                        return;
                    };
                    let text = data.to_string();
                    if pin.last.as_ref().is_none_or(|m| m.data != text) {
                        let m = Arc::new(Message {
                            event: "standing",
                            day: Some(day),
                            user: Some(user),
                            data: text,
                        });
                        pin.last = Some(m.clone());
                        let _ = self.tx.send(m);
                    }
                    read_at = version;
                    if final_read {
                        // A final standing never changes.
                        return;
                    }
                }
                tokio::time::sleep(PIN_INTERVAL).await;
            } else if seen.changed().await.is_err() {
                return;
            }
        }
    }
}

/// The 404 of a user with no total on `day`.
pub fn unknown_user(day: Day, user: User) -> WebError {
    WebError::UnknownUser(format!(
        "user {} has no steps on {}",
        format_user(user),
        format_day(day)
    ))
}

/// The days document: `{"days": [{"day", "final"}, ...]}`, ascending, and `latest`.
pub fn days_json(days: &[(Day, bool)]) -> Value {
    json!({
        "days": days.iter().map(|&(d, f)| json!({"day": format_day(d), "final": f})).collect::<Vec<_>>(),
        "latest": days.last().map(|&(d, _)| format_day(d)),
    })
}
