//! Introspection of a running job (design §12): what each worker's arrangements hold, how its
//! operators spend their time, and how far it has got, published by the workers themselves
//! between two steps (never by blocking one) and served as JSON under `/debug/` next to
//! `/metrics`.
//!
//! Each worker keeps its arrangements' trace handles ([`LiveState`]) and advances their
//! compaction frontier to [`LOOKUP_WINDOW`] epochs behind its last completed one at every
//! step, so holding them never stops merges; every [`PUBLISH_EVERY`] it walks the spines
//! (batches only, not records) and copies what it found, with its operators' scheduling totals
//! from timely's own logging (registered before the dataflow is built), into the process's
//! [`Introspection`]. Counting live keys walks every record, so it is done only when a request
//! asks for it ([`Introspection::walked`]) and at the end. Lookups ([`Query`]) wait in a
//! channel per worker, which the worker drains after each step.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use differential_dataflow::logging::{DifferentialEvent, DifferentialEventBuilder};
use rankmysteps_dataflow::event::{Day, Epoch, User};
use rankmysteps_dataflow::ranking::{Standing, TopRow};
use rankmysteps_dataflow::state::{
    day_owner, user_owner, ArrangementSize, DayStatus, LiveState, LookupError, TotalAt,
};
use serde::Serialize;
use timely::logging::{StartStop, TimelyEvent, TimelyEventBuilder};

/// How often a worker publishes what it holds.
pub const PUBLISH_EVERY: Duration = Duration::from_millis(500);

/// How long a `/debug/` request waits for the workers to walk their traces for it.
pub const WALK_WAIT: Duration = Duration::from_secs(2);

/// What the workers of this process last published, read by the `/debug/` routes.
#[derive(Default)]
pub struct Introspection {
    workers: Mutex<BTreeMap<usize, WorkerView>>,
    /// Workers in the whole cluster (set by the first worker to register).
    peers: Mutex<usize>,
    /// Each local worker's lookup inbox.
    inboxes: Mutex<BTreeMap<usize, std::sync::mpsc::Sender<Request>>>,
    /// Walks of the traces requested so far: a worker whose last walk answered an older
    /// request walks (and publishes) at its next step.
    wanted: std::sync::atomic::AtomicU64,
    /// Where the workers' log events are also written (`worker --capture`).
    capture: Option<Arc<Capture>>,
    /// The process's metrics, for the consumer lag they measure.
    metrics: Option<Arc<crate::metrics::Metrics>>,
}

impl Introspection {
    /// This introspection, showing the consumer lag that `metrics` measures in the summary.
    pub fn with_metrics(self, metrics: Arc<crate::metrics::Metrics>) -> Introspection {
        Introspection {
            metrics: Some(metrics),
            ..self
        }
    }

    /// Ends the capture, if any, once the job has ended ([`Capture::finish`]).
    pub fn finish(&self) {
        if let Some(capture) = &self.capture {
            capture.finish();
        }
    }

    /// An introspection whose workers also write every log event to `capture`.
    pub fn with_capture(capture: Arc<Capture>) -> Introspection {
        Introspection {
            capture: Some(capture),
            ..Introspection::default()
        }
    }
}

impl std::fmt::Debug for Introspection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Introspection")
            .field("peers", &*self.peers.lock().expect("peers lock"))
            .finish_non_exhaustive()
    }
}

/// One worker's view of itself.
#[derive(Clone, Debug, Default, Serialize)]
pub struct WorkerView {
    /// The worker's index in the cluster.
    pub worker: usize,
    /// The last epoch whose outputs were delivered, as this worker's probe says.
    pub completed_epoch: Option<Epoch>,
    /// The epoch this worker's source is at (its input frontier; `None` once it is done).
    pub input_epoch: Option<Epoch>,
    /// How many epochs the source runs ahead of the last completed one (bounded by
    /// `max_epochs_ahead`).
    pub source_ahead: Option<u64>,
    /// The epoch at which its arrangements' live keys were last counted.
    pub live_keys_epoch: Option<Epoch>,
    /// The request generation that walk answered (see [`Introspection::walked`]).
    pub walked: u64,
    /// Its named arrangements.
    pub arrangements: Vec<ArrangementSize>,
    /// Its operators, by scheduling time (largest first).
    pub operators: Vec<OperatorView>,
    /// Its dataflow's channels, by id, with what this worker sent and received on them.
    pub channels: Vec<ChannelView>,
    /// Its arrangements' batches and merges, by arrangement operator.
    pub merges: Vec<MergeView>,
    /// Milliseconds since this view was taken (filled in when served).
    pub age_ms: u64,
    #[serde(skip)]
    taken: Option<Instant>,
}

/// One operator of one worker, from timely's `Operates` and `Schedule` events.
#[derive(Clone, Debug, Default, Serialize)]
pub struct OperatorView {
    /// Timely's worker-unique operator id.
    pub id: usize,
    /// Its name (the dataflow names every operator it builds).
    pub name: String,
    /// Its address: the path of scope indices from the root.
    pub address: Vec<usize>,
    /// Times it was scheduled.
    pub activations: u64,
    /// Total time it ran, nanoseconds.
    pub elapsed_ns: u64,
    /// Time it ran per epoch, over the worker's last advance of its completed epoch: the time
    /// between the last two advances the worker saw, divided by the epochs it advanced by.
    pub last_epoch_ns: u64,
    /// Time it ran per epoch on average since the worker started: `elapsed_ns` over the epochs
    /// it completed (the first completion it saw counts as one, so a restart from epoch 1 000
    /// is not averaged over a thousand epochs it never ran).
    pub per_epoch_ns: u64,
    /// It has shut down (its dataflow ended).
    pub shut_down: bool,
    /// `elapsed_ns` at the worker's last advance of its completed epoch.
    #[serde(skip)]
    mark_ns: u64,
}

impl OperatorView {
    /// This operator with no activations or time yet (to sum other workers' into).
    fn zeroed(&self) -> OperatorView {
        OperatorView {
            activations: 0,
            elapsed_ns: 0,
            last_epoch_ns: 0,
            per_epoch_ns: 0,
            ..self.clone()
        }
    }

    /// Adds another worker's activations and time of the same operator.
    fn add(&mut self, other: &OperatorView) {
        self.activations += other.activations;
        self.elapsed_ns += other.elapsed_ns;
        self.last_epoch_ns += other.last_epoch_ns;
        self.per_epoch_ns += other.per_epoch_ns;
        self.shut_down &= other.shut_down;
    }
}

/// One channel of the dataflow graph, from timely's `Channels` and `Messages` events.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ChannelView {
    /// Timely's channel id (the same on every worker).
    pub id: usize,
    /// The address of the scope the channel is in.
    pub scope: Vec<usize>,
    /// (operator index within the scope, output port); index 0 is the scope's own inputs.
    pub source: (usize, usize),
    /// (operator index within the scope, input port); index 0 is the scope's own outputs.
    pub target: (usize, usize),
    /// Messages and records sent on it (by this worker, or summed over workers).
    pub messages_sent: u64,
    /// See `messages_sent`.
    pub records_sent: u64,
    /// Messages and records received on it.
    pub messages_received: u64,
    /// See `messages_received`.
    pub records_received: u64,
}

impl ChannelView {
    /// This channel with nothing sent or received yet (to sum other workers' into).
    fn zeroed(&self) -> ChannelView {
        ChannelView {
            messages_sent: 0,
            records_sent: 0,
            messages_received: 0,
            records_received: 0,
            ..self.clone()
        }
    }

    /// Adds what another worker sent and received on the same channel.
    fn add(&mut self, other: &ChannelView) {
        self.messages_sent += other.messages_sent;
        self.records_sent += other.records_sent;
        self.messages_received += other.messages_received;
        self.records_received += other.records_received;
    }
}

/// What differential's `"differential/arrange"` log says of one arrangement operator: the
/// batches it built and the merges of its spine.
#[derive(Clone, Debug, Default, Serialize)]
pub struct MergeView {
    /// The arrangement operator's name (`totals`, `by-total`, ...).
    pub name: String,
    /// Batches built from new updates, and their updates.
    pub batches_built: u64,
    /// See `batches_built`.
    pub records_built: u64,
    /// Merges begun and completed.
    pub merges_started: u64,
    /// See `merges_started`.
    pub merges_completed: u64,
    /// Updates that went into completed merges, and that came out (the difference is what
    /// consolidation removed).
    pub merged_in: u64,
    /// See `merged_in`.
    pub merged_out: u64,
    /// Merges that could not complete in time (`MergeShortfall`), and by how much in all.
    pub shortfalls: u64,
    /// See `shortfalls`.
    pub shortfall: u64,
}

impl MergeView {
    /// Adds another worker's batches and merges of the same arrangement.
    fn add(&mut self, other: &MergeView) {
        self.batches_built += other.batches_built;
        self.records_built += other.records_built;
        self.merges_started += other.merges_started;
        self.merges_completed += other.merges_completed;
        self.merged_in += other.merged_in;
        self.merged_out += other.merged_out;
        self.shortfalls += other.shortfalls;
        self.shortfall += other.shortfall;
    }
}

/// The dataflow graph of a process: its operators (by address) and channels, with the
/// messages and records that went through each channel, summed over the workers.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Graph {
    /// Every operator, with its address (the same on every worker).
    pub operators: Vec<OperatorView>,
    /// Every channel.
    pub channels: Vec<ChannelView>,
}

impl Graph {
    /// The graph in Graphviz's dot language: one node per operator inside the dataflow, one
    /// edge per channel, labelled with the records sent on it.
    pub fn dot(&self) -> String {
        use std::fmt::Write as _;
        let node = |address: &[usize]| {
            address
                .iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join("_")
        };
        let quote = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
        let mut t = String::from(
            "digraph dataflow {\n  rankdir=LR;\n  node [shape=box, fontname=\"monospace\"];\n",
        );
        for o in &self.operators {
            let _ = writeln!(
                t,
                "  op_{} [label=\"{}\\n{:.1} ms, {} activations\"];",
                node(&o.address),
                quote(&o.name),
                o.elapsed_ns as f64 / 1e6,
                o.activations
            );
        }
        for c in &self.channels {
            // Index 0 within a scope stands for the scope itself (its inputs and outputs).
            let end = |index: usize| {
                let mut address = c.scope.clone();
                if index > 0 {
                    address.push(index);
                }
                node(&address)
            };
            let _ = writeln!(
                t,
                "  op_{} -> op_{} [label=\"{} records\"];",
                end(c.source.0),
                end(c.target.0),
                c.records_sent
            );
        }
        t.push_str("}\n");
        t
    }
}

/// Totals over the workers of this process.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Summary {
    /// Per arrangement name: sums over workers.
    pub arrangements: Vec<ArrangementSize>,
    /// Per operator name: sums over workers, by scheduling time (largest first).
    pub operators: Vec<OperatorView>,
    /// Per arrangement operator name: batches and merges summed over workers.
    pub merges: Vec<MergeView>,
    /// The least completed epoch over the workers (what every one of them has delivered).
    pub completed_epoch: Option<Epoch>,
    /// Records behind each partition's end, `(partition, records)`, as the process measures it
    /// (process 0 of a Kafka job; empty elsewhere).
    pub consumer_lag: Vec<(u32, i64)>,
    /// The workers, each as it published itself.
    pub workers: Vec<WorkerView>,
}

impl Introspection {
    /// Stores `view` as its worker's latest.
    pub fn publish(&self, mut view: WorkerView) {
        view.taken = Some(Instant::now());
        self.workers
            .lock()
            .expect("introspection lock")
            .insert(view.worker, view);
    }

    /// The dataflow graph: operators and channels (the same on every worker), with their times,
    /// activations, messages and records summed over this process's workers.
    pub fn graph(&self) -> Graph {
        let workers = self.workers.lock().expect("introspection lock");
        let mut operators: BTreeMap<Vec<usize>, OperatorView> = BTreeMap::new();
        let mut channels: BTreeMap<usize, ChannelView> = BTreeMap::new();
        for w in workers.values() {
            for o in &w.operators {
                operators
                    .entry(o.address.clone())
                    .or_insert_with(|| o.zeroed())
                    .add(o);
            }
            for c in &w.channels {
                channels.entry(c.id).or_insert_with(|| c.zeroed()).add(c);
            }
        }
        Graph {
            operators: operators.into_values().collect(),
            channels: channels.into_values().collect(),
        }
    }

    /// Asks every local worker to count its live keys, and waits (at most [`WALK_WAIT`]) for
    /// their views to show it: what a `/debug/` request for sizes does first.
    pub async fn walked(&self) {
        let generation = self
            .wanted
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            + 1;
        let local = self.inboxes.lock().expect("inboxes lock").len();
        let deadline = Instant::now() + WALK_WAIT;
        while Instant::now() < deadline {
            let done = self
                .workers
                .lock()
                .expect("introspection lock")
                .values()
                .filter(|w| w.walked >= generation)
                .count();
            if done >= local {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Every worker's latest view, and the sums over them.
    pub fn summary(&self) -> Summary {
        let mut workers: Vec<WorkerView> = self
            .workers
            .lock()
            .expect("introspection lock")
            .values()
            .cloned()
            .collect();
        let mut arrangements: Vec<ArrangementSize> = Vec::new();
        let mut operators: BTreeMap<String, OperatorView> = BTreeMap::new();
        for w in &mut workers {
            w.age_ms = w.taken.map_or(0, |t| t.elapsed().as_millis() as u64);
            for a in &w.arrangements {
                match arrangements.iter_mut().find(|x| x.name == a.name) {
                    Some(x) => x.add(a),
                    None => arrangements.push(a.clone()),
                }
            }
            for o in &w.operators {
                operators
                    .entry(o.name.clone())
                    .or_insert_with(|| o.zeroed())
                    .add(o);
            }
        }
        let mut merges: BTreeMap<String, MergeView> = BTreeMap::new();
        for m in workers.iter().flat_map(|w| &w.merges) {
            merges
                .entry(m.name.clone())
                .or_insert_with(|| MergeView {
                    name: m.name.clone(),
                    ..MergeView::default()
                })
                .add(m);
        }
        let merges = merges.into_values().collect();
        let mut operators: Vec<OperatorView> = operators.into_values().collect();
        operators.sort_by_key(|o| std::cmp::Reverse(o.elapsed_ns));
        let completed_epoch = if workers.iter().any(|w| w.completed_epoch.is_none()) {
            None
        } else {
            workers.iter().filter_map(|w| w.completed_epoch).min()
        };
        let consumer_lag = self.metrics.as_ref().map(|m| m.lag()).unwrap_or_default();
        Summary {
            arrangements,
            operators,
            merges,
            consumer_lag,
            completed_epoch,
            workers,
        }
    }
}

/// Scheduling totals of one worker's operators, fed by timely's `"timely"` log stream.
#[derive(Debug, Default)]
struct OperatorLog {
    operators: BTreeMap<usize, (OperatorView, Option<Duration>)>,
    channels: BTreeMap<usize, ChannelView>,
    /// By arrangement operator id.
    merges: BTreeMap<usize, MergeView>,
    /// Epochs completed since the worker started (see [`OperatorView::per_epoch_ns`]).
    epochs: u64,
}

impl OperatorLog {
    /// The worker's completed epoch advanced by `epochs`: each operator's time since the last
    /// advance becomes its time per epoch.
    fn epochs_completed(&mut self, epochs: u64) {
        let epochs = epochs.max(1);
        self.epochs += epochs;
        for (op, _) in self.operators.values_mut() {
            op.last_epoch_ns = (op.elapsed_ns - op.mark_ns) / epochs;
            op.mark_ns = op.elapsed_ns;
            op.per_epoch_ns = op.elapsed_ns / self.epochs;
        }
    }

    /// Folds one of differential's arrangement log events into the log.
    fn apply_differential(&mut self, event: DifferentialEvent) {
        let operator = match &event {
            DifferentialEvent::Batch(e) => e.operator,
            DifferentialEvent::Merge(e) => e.operator,
            DifferentialEvent::MergeShortfall(e) => e.operator,
            _ => return,
        };
        let operators = &self.operators;
        let m = self.merges.entry(operator).or_insert_with(|| MergeView {
            name: operators
                .get(&operator)
                .map_or_else(|| format!("operator {operator}"), |(o, _)| o.name.clone()),
            ..MergeView::default()
        });
        match event {
            DifferentialEvent::Batch(e) => {
                m.batches_built += 1;
                m.records_built += e.length as u64;
            }
            DifferentialEvent::Merge(e) => match e.complete {
                None => m.merges_started += 1,
                Some(out) => {
                    m.merges_completed += 1;
                    m.merged_in += (e.length1 + e.length2) as u64;
                    m.merged_out += out as u64;
                }
            },
            DifferentialEvent::MergeShortfall(e) => {
                m.shortfalls += 1;
                m.shortfall += e.shortfall as u64;
            }
            _ => {}
        }
    }

    /// What the log holds, as a worker publishes it: operators by scheduling time (largest
    /// first), channels and merges by id.
    fn views(&self) -> (Vec<OperatorView>, Vec<ChannelView>, Vec<MergeView>) {
        let mut operators: Vec<OperatorView> =
            self.operators.values().map(|(o, _)| o.clone()).collect();
        operators.sort_by_key(|o| std::cmp::Reverse(o.elapsed_ns));
        (
            operators,
            self.channels.values().cloned().collect(),
            self.merges.values().cloned().collect(),
        )
    }

    /// Folds one of timely's log events (at `time` since the worker started) into the log.
    fn apply(&mut self, time: Duration, event: TimelyEvent) {
        match event {
            TimelyEvent::Operates(e) => {
                self.operators.insert(
                    e.id,
                    (
                        OperatorView {
                            id: e.id,
                            name: e.name,
                            address: e.addr,
                            ..OperatorView::default()
                        },
                        None,
                    ),
                );
            }
            TimelyEvent::Schedule(e) => {
                if let Some((op, started)) = self.operators.get_mut(&e.id) {
                    match e.start_stop {
                        StartStop::Start => *started = Some(time),
                        StartStop::Stop => {
                            if let Some(s) = started.take() {
                                op.activations += 1;
                                op.elapsed_ns += time.saturating_sub(s).as_nanos() as u64;
                            }
                        }
                    }
                }
            }
            TimelyEvent::Channels(e) => {
                self.channels.insert(
                    e.id,
                    ChannelView {
                        id: e.id,
                        scope: e.scope_addr,
                        source: e.source,
                        target: e.target,
                        ..ChannelView::default()
                    },
                );
            }
            TimelyEvent::Messages(e) => {
                if let Some(c) = self.channels.get_mut(&e.channel) {
                    let records = e.record_count.max(0) as u64;
                    if e.is_send {
                        c.messages_sent += 1;
                        c.records_sent += records;
                    } else {
                        c.messages_received += 1;
                        c.records_received += records;
                    }
                }
            }
            TimelyEvent::Shutdown(e) => {
                // Kept, marked: the job builds one dataflow, so what it ran
                // stays bounded and readable after it ends.
                if let Some((op, _)) = self.operators.get_mut(&e.id) {
                    op.shut_down = true;
                }
            }
            _ => {}
        }
    }
}

/// The worker's side: its traces, its operator log, and when it last published.
pub struct WorkerIntrospection {
    /// Where this worker publishes.
    into: Arc<Introspection>,
    index: usize,
    state: Option<LiveState>,
    log: Rc<RefCell<OperatorLog>>,
    last: Option<Instant>,
    completed: Option<Epoch>,
    /// The last walk's live keys per arrangement, its epoch, and the request generation it
    /// answered.
    live_keys: Vec<(&'static str, usize)>,
    live_keys_epoch: Option<Epoch>,
    walked: u64,
    inbox: std::sync::mpsc::Receiver<Request>,
    /// The epoch the worker's source is at ([`WorkerIntrospection::source_at`]).
    source: Rc<std::cell::Cell<Option<Epoch>>>,
}

impl WorkerIntrospection {
    /// Registers timely's operator logging on `worker`: call it before building the dataflow
    /// (operators built before are never seen).
    pub fn register(
        worker: &mut timely::worker::Worker,
        into: &Arc<Introspection>,
    ) -> WorkerIntrospection {
        let (sender, inbox) = std::sync::mpsc::channel();
        into.inboxes
            .lock()
            .expect("inboxes lock")
            .insert(worker.index(), sender);
        *into.peers.lock().expect("peers lock") = worker.peers();
        let log = Rc::new(RefCell::new(OperatorLog::default()));
        if let Some(mut registry) = worker.log_register() {
            let log = log.clone();
            let (capture, index) = (into.capture.clone(), worker.index());
            registry.insert::<TimelyEventBuilder, _>(
                "timely",
                move |now, data: &mut Option<Vec<(Duration, TimelyEvent)>>| {
                    let Some(events) = data else { return };
                    if let Some(capture) = &capture {
                        capture.send(index, *now, events);
                    }
                    let mut log = log.borrow_mut();
                    for (time, event) in events.drain(..) {
                        log.apply(time, event);
                    }
                },
            );
        }
        if let Some(mut registry) = worker.log_register() {
            let log = log.clone();
            registry.insert::<DifferentialEventBuilder, _>(
                "differential/arrange",
                move |_now, data: &mut Option<Vec<(Duration, DifferentialEvent)>>| {
                    let Some(events) = data else { return };
                    let mut log = log.borrow_mut();
                    for (_, event) in events.drain(..) {
                        log.apply_differential(event);
                    }
                },
            );
        }
        WorkerIntrospection {
            into: into.clone(),
            index: worker.index(),
            state: None,
            log,
            last: None,
            completed: None,
            live_keys: Vec::new(),
            live_keys_epoch: None,
            walked: 0,
            inbox,
            source: Rc::new(std::cell::Cell::new(None)),
        }
    }

    /// The cell the worker's source updates with the epoch it is at (see the sources'
    /// `Throttle::at`).
    pub fn source_at(&self) -> Rc<std::cell::Cell<Option<Epoch>>> {
        self.source.clone()
    }

    /// Keeps the worker's arrangements for inspection (see the module docs).
    pub fn hold(&mut self, state: LiveState) {
        self.state = Some(state);
    }

    /// After each step: advances the traces' compaction to `completed` (the last completed
    /// epoch, if the probe names one), answers the lookups waiting, and publishes when it is
    /// time (or with `force`, at the end).
    pub fn after_step(&mut self, completed: Option<Epoch>, force: bool) {
        self.step(completed, force, false);
    }

    /// At the end of the input (the probe's frontier is empty, so it names no epoch): publishes
    /// what the arrangements hold last, walked at the last time. `last` is the last epoch
    /// delivered, if this process knows it (it runs worker 0): later lookups are answered at
    /// it; else at the last epoch this worker saw complete.
    pub fn ended(&mut self, last: Option<Epoch>) {
        self.step(last.max(self.completed), true, true);
    }

    /// After each step of a worker that stays after the end ([`crate::job::JobSpec::linger`]):
    /// answers lookups, and publishes; `last` is the last epoch delivered, which may still grow
    /// after the end (the probe passes an epoch before worker 0 has delivered it).
    pub fn lingering(&mut self, last: Option<Epoch>) {
        if last > self.completed {
            self.ended(last);
        } else {
            self.after_step(None, false);
        }
    }

    fn step(&mut self, completed: Option<Epoch>, force: bool, end: bool) {
        let into = self.into.clone();
        if let Some(c) = completed {
            match self.completed {
                None => self.log.borrow_mut().epochs_completed(1),
                Some(before) if c > before => self.log.borrow_mut().epochs_completed(c - before),
                Some(_) => {}
            }
            self.completed = self.completed.max(Some(c));
            if let Some(state) = &mut self.state {
                state.advance(c.saturating_sub(LOOKUP_WINDOW));
            }
        }
        self.answer();
        // Live keys need a walk of every record (about 0.1 s per million): only when a
        // request asked for them since the last walk, and at the end.
        let wanted = into.wanted.load(std::sync::atomic::Ordering::SeqCst);
        let walk = force || wanted > self.walked;
        if !walk && self.last.is_some_and(|t| t.elapsed() < PUBLISH_EVERY) {
            return;
        }
        self.last = Some(Instant::now());
        let (operators, channels, merges) = self.log.borrow().views();
        let mut arrangements = Vec::new();
        if let Some(state) = &mut self.state {
            arrangements = state.sizes();
            // At the end: at the last time.
            let at = if end {
                Some(Epoch::MAX)
            } else {
                self.completed
            };
            if let Some(at) = at.filter(|_| walk) {
                self.live_keys = state
                    .held(at)
                    .into_iter()
                    .map(|h| (h.name, h.keys))
                    .collect();
                self.live_keys_epoch = Some(at).filter(|&a| a != Epoch::MAX).or(self.completed);
                self.walked = wanted;
            }
            for a in &mut arrangements {
                a.live_keys = self
                    .live_keys
                    .iter()
                    .find(|(name, _)| *name == a.name)
                    .map(|&(_, k)| k);
            }
        }
        let input_epoch = self.source.get();
        into.publish(WorkerView {
            worker: self.index,
            completed_epoch: self.completed,
            input_epoch,
            source_ahead: input_epoch.map(|i| i.saturating_sub(self.completed.unwrap_or(0))),
            live_keys_epoch: self.live_keys_epoch,
            walked: self.walked,
            arrangements,
            operators,
            channels,
            merges,
            ..WorkerView::default()
        });
    }
}

/// What `rankmysteps inspect` found at one process's address.
#[derive(Clone, Debug, Serialize)]
pub struct Gathered {
    /// The address asked (`HOST:PORT` of the process's `--metrics`).
    pub addr: String,
    /// Its `/debug/summary`, or why there is none.
    #[serde(flatten)]
    pub result: GatherResult,
}

/// A process's summary, or the error that stands for it.
#[derive(Clone, Debug, Serialize)]
#[serde(untagged)]
pub enum GatherResult {
    /// The process answered.
    Summary {
        /// Its `/debug/summary` as served.
        summary: serde_json::Value,
    },
    /// It did not.
    Error {
        /// What went wrong, for a person.
        error: String,
    },
}

/// Asks every address for its `/debug/summary`; an unreachable process is an entry with its
/// error (the others are still gathered).
pub fn gather(addrs: &[String], timeout: Duration) -> Vec<Gathered> {
    addrs
        .iter()
        .map(|addr| Gathered {
            addr: addr.clone(),
            result: match fetch_summary(addr, timeout) {
                Ok(summary) => GatherResult::Summary { summary },
                Err(error) => GatherResult::Error { error },
            },
        })
        .collect()
}

fn fetch_summary(addr: &str, timeout: Duration) -> Result<serde_json::Value, String> {
    let (status, body) = get_json(addr, "/debug/summary", timeout)
        .map_err(|e| format!("{e} (is the process running, with --metrics {addr}?)"))?;
    match status {
        200 => Ok(body),
        404 => Err(format!(
            "{addr} serves no /debug/ (a process started with --no-introspection, or not a rankmysteps worker)"
        )),
        status => Err(format!("{addr}: {}", describe(status, &body))),
    }
}

/// How `inspect` sorts its tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SortBy {
    /// Arrangements by updates, operators by scheduling time (the default).
    Size,
    /// Operators and arrangements by name.
    Name,
}

/// The summary tables of `inspect`, one block per process (unreachable ones say why).
pub fn render(gathered: &[Gathered], sort: SortBy, operators: usize) -> String {
    use std::fmt::Write as _;
    let mut t = String::new();
    for g in gathered {
        let s = match &g.result {
            GatherResult::Error { error } => {
                let _ = writeln!(t, "process {}: UNREACHABLE: {error}\n", g.addr);
                continue;
            }
            GatherResult::Summary { summary } => summary,
        };
        let workers = s["workers"].as_array().map_or(0, Vec::len);
        let age = s["workers"]
            .as_array()
            .and_then(|w| w.iter().filter_map(|w| w["age_ms"].as_u64()).max())
            .unwrap_or(0);
        let ahead = s["workers"]
            .as_array()
            .and_then(|w| w.iter().filter_map(|w| w["source_ahead"].as_u64()).max());
        let lag: i64 = s["consumer_lag"]
            .as_array()
            .map_or(0, |l| l.iter().filter_map(|p| p[1].as_i64()).sum());
        let _ = writeln!(
            t,
            "process {}: {workers} workers, completed epoch {}{}{}, views {age} ms old",
            g.addr,
            s["completed_epoch"]
                .as_u64()
                .map_or("none yet".to_owned(), |e| e.to_string()),
            ahead.map_or(String::new(), |a| format!(
                ", sources up to {a} epochs ahead"
            )),
            if s["consumer_lag"].as_array().is_some_and(|l| !l.is_empty()) {
                format!(", consumer lag {lag} records")
            } else {
                String::new()
            },
        );
        let mut arrangements: Vec<&serde_json::Value> = s["arrangements"]
            .as_array()
            .map(|a| a.iter().collect())
            .unwrap_or_default();
        match sort {
            SortBy::Size => arrangements.sort_by_key(|a| std::cmp::Reverse(a["updates"].as_u64())),
            SortBy::Name => arrangements.sort_by_key(|a| a["name"].as_str().map(str::to_owned)),
        }
        let _ = writeln!(
            t,
            "  {:<18} {:>12} {:>12} {:>8} {:>12} {:>8} {:>12}",
            "ARRANGEMENT", "UPDATES", "LIVE KEYS", "BATCHES", "BYTES", "MERGES", "MERGED"
        );
        for a in arrangements {
            let name = a["name"].as_str().unwrap_or("?");
            let merges = s["merges"]
                .as_array()
                .and_then(|m| m.iter().find(|m| m["name"] == name));
            let field = |f: &str| merges.and_then(|m| m[f].as_u64()).unwrap_or(0);
            let _ = writeln!(
                t,
                "  {:<18} {:>12} {:>12} {:>8} {:>12} {:>8} {:>12}",
                name,
                a["updates"].as_u64().unwrap_or(0),
                a["live_keys"]
                    .as_u64()
                    .map_or("-".to_owned(), |k| k.to_string()),
                a["batches"].as_u64().unwrap_or(0),
                human_bytes(a["bytes"].as_u64().unwrap_or(0)),
                field("merges_completed"),
                field("merged_in"),
            );
        }
        let mut ops: Vec<&serde_json::Value> = s["operators"]
            .as_array()
            .map(|a| a.iter().collect())
            .unwrap_or_default();
        // A scope's time includes its operators': shares are of the operators' own time.
        let is_scope = |o: &serde_json::Value| o["address"].as_array().is_some_and(|a| a.len() < 2);
        let total_ns: u64 = ops
            .iter()
            .filter(|o| !is_scope(o))
            .filter_map(|o| o["elapsed_ns"].as_u64())
            .sum();
        match sort {
            SortBy::Size => ops.sort_by_key(|o| std::cmp::Reverse(o["elapsed_ns"].as_u64())),
            SortBy::Name => ops.sort_by_key(|o| o["name"].as_str().map(str::to_owned)),
        }
        let _ = writeln!(
            t,
            "  {:<28} {:>12} {:>12} {:>7} {:>13} {:>13}",
            "OPERATOR", "ACTIVATIONS", "TIME (ms)", "SHARE", "LAST EPOCH µs", "MEAN EPOCH µs"
        );
        for o in ops.iter().take(operators) {
            let ns = o["elapsed_ns"].as_u64().unwrap_or(0);
            let share = if is_scope(o) {
                "scope".to_owned()
            } else {
                format!("{:.1}%", 100.0 * ns as f64 / total_ns.max(1) as f64)
            };
            let _ = writeln!(
                t,
                "  {:<28} {:>12} {:>12.1} {:>7} {:>13.1} {:>13.1}",
                o["name"].as_str().unwrap_or("?"),
                o["activations"].as_u64().unwrap_or(0),
                ns as f64 / 1e6,
                share,
                o["last_epoch_ns"].as_u64().unwrap_or(0) as f64 / 1e3,
                o["per_epoch_ns"].as_u64().unwrap_or(0) as f64 / 1e3,
            );
        }
        if ops.len() > operators {
            let _ = writeln!(
                t,
                "  ({} more operators; --operators N)",
                ops.len() - operators
            );
        }
        t.push('\n');
    }
    t
}

fn human_bytes(b: u64) -> String {
    match b {
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

/// Epochs a worker keeps readable behind its last completed one, so that a standing (a total
/// read on the user's worker at epoch t, then the rank on the day's worker at the same t) can
/// be answered although the day's worker has moved on meanwhile.
pub const LOOKUP_WINDOW: Epoch = 2;

/// A lookup in live state, answered by the worker that owns the key between two steps.
#[derive(Clone, Debug)]
pub enum Query {
    /// The (day, user) total at the owner's last completed epoch.
    Total {
        /// The day.
        day: Day,
        /// The user.
        user: User,
    },
    /// The standing of a user with `total` (read at `at`) on the day's worker.
    Standing {
        /// The day.
        day: Day,
        /// The user.
        user: User,
        /// The user's total at `at`.
        total: u64,
        /// Neighbours each side.
        neighbours: usize,
        /// The epoch of the total.
        at: Epoch,
    },
    /// The day's top-k at the day's worker's last completed epoch.
    Top {
        /// The day.
        day: Day,
    },
}

/// The answer to a [`Query`].
#[derive(Clone, Debug)]
pub enum Answer {
    /// To [`Query::Total`].
    Total(Result<TotalAt, LookupError>),
    /// To [`Query::Standing`]: at which epoch, and the standing if the user is ranked.
    Standing(Result<(Epoch, Option<Standing>), LookupError>),
    /// To [`Query::Top`]: at which epoch, the day's status then, and its rows in listing order.
    Top(Result<(Epoch, DayStatus, Vec<TopRow>), LookupError>),
}

struct Request {
    query: Query,
    reply: tokio::sync::oneshot::Sender<Answer>,
}

/// Where a lookup goes wrong before a worker answers it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AskError {
    /// The owning worker is not in this process.
    Elsewhere {
        /// The worker that owns the key.
        worker: usize,
    },
    /// The worker did not answer in time (or its job ended).
    NoAnswer,
}

impl Introspection {
    /// The worker that owns `user`'s totals and the one that owns `day`'s ranking (`None`
    /// before the workers started).
    pub fn owners(&self, day: Day, user: User) -> Option<(usize, usize)> {
        let peers = *self.peers.lock().expect("peers lock");
        (peers > 0).then(|| (user_owner(user, peers), day_owner(day, peers)))
    }

    /// The worker that owns `day`'s ranking.
    pub fn day_owner(&self, day: Day) -> Option<usize> {
        let peers = *self.peers.lock().expect("peers lock");
        (peers > 0).then(|| day_owner(day, peers))
    }

    /// Asks `worker` (of this process) `query`, waiting at most `timeout` for its next step.
    pub async fn ask(
        &self,
        worker: usize,
        query: Query,
        timeout: Duration,
    ) -> Result<Answer, AskError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        {
            let inboxes = self.inboxes.lock().expect("inboxes lock");
            let inbox = inboxes.get(&worker).ok_or(AskError::Elsewhere { worker })?;
            inbox
                .send(Request { query, reply })
                .map_err(|_| AskError::NoAnswer)?;
        }
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(answer)) => Ok(answer),
            _ => Err(AskError::NoAnswer),
        }
    }
}

impl WorkerIntrospection {
    /// Answers the lookups waiting for this worker (between two steps).
    fn answer(&mut self) {
        while let Ok(request) = self.inbox.try_recv() {
            let answer = match (&mut self.state, self.completed) {
                (None, _) | (_, None) => match request.query {
                    Query::Total { .. } => Answer::Total(Err(LookupError::NotYet)),
                    Query::Standing { .. } => Answer::Standing(Err(LookupError::NotYet)),
                    Query::Top { .. } => Answer::Top(Err(LookupError::NotYet)),
                },
                (Some(state), Some(completed)) => match request.query {
                    Query::Total { day, user } => Answer::Total(state.total(day, user, completed)),
                    Query::Standing {
                        day,
                        user,
                        total,
                        neighbours,
                        at,
                    } => Answer::Standing(
                        state
                            .standing(day, user, total, neighbours, at)
                            .map(|s| (at, s)),
                    ),
                    Query::Top { day } => {
                        Answer::Top(state.top(day, completed).and_then(|rows| {
                            Ok((completed, state.day_status(day, completed)?, rows))
                        }))
                    }
                },
            };
            // The asker may have given up: nothing to do then.
            let _ = request.reply.send(answer);
        }
    }
}

/// How long a lookup waits for a worker's step (a worker parks at most 20 ms when idle, but a
/// busy one answers only after its current step).
const ASK_TIMEOUT: Duration = Duration::from_secs(5);

/// The most neighbours a lookup returns each side.
pub const MAX_NEIGHBOURS: usize = 50;

/// The query string of `/debug/lookup` and `/debug/lookup/standing`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LookupParams {
    /// `YYYY-MM-DD`.
    day: Option<String>,
    /// A UUID (or the integer form of design §1).
    user: Option<String>,
    /// Neighbours each side (default 3, at most [`MAX_NEIGHBOURS`]).
    neighbours: Option<usize>,
    /// `/debug/lookup/standing` only: the user's total at `at`.
    total: Option<u64>,
    /// `/debug/lookup/standing` only: the epoch of `total`.
    at: Option<Epoch>,
}

type Reply = (axum::http::StatusCode, axum::Json<serde_json::Value>);

fn reply(status: u16, body: serde_json::Value) -> Reply {
    (
        axum::http::StatusCode::from_u16(status).unwrap_or(axum::http::StatusCode::OK),
        axum::Json(body),
    )
}

fn error(status: u16, message: String) -> Reply {
    reply(status, serde_json::json!({ "error": message }))
}

/// The day, user and neighbours of a lookup, or the 400 that says what is wrong.
fn key(p: &LookupParams) -> Result<(Day, User, usize), Reply> {
    use rankmysteps_dataflow::event::{parse_day, parse_user};
    let day = p
        .day
        .as_deref()
        .ok_or_else(|| error(400, "day=YYYY-MM-DD is required".into()))?;
    let day = parse_day(day)
        .ok_or_else(|| error(400, format!("day {day:?} is not a YYYY-MM-DD date")))?;
    let user = p
        .user
        .as_deref()
        .ok_or_else(|| error(400, "user=UUID is required".into()))?;
    let user =
        parse_user(user).ok_or_else(|| error(400, format!("user {user:?} is not a UUID")))?;
    let neighbours = p.neighbours.unwrap_or(3);
    if neighbours > MAX_NEIGHBOURS {
        return Err(error(
            400,
            format!("neighbours must be at most {MAX_NEIGHBOURS}, not {neighbours}"),
        ));
    }
    Ok((day, user, neighbours))
}

/// The reply for a lookup error of a worker.
fn lookup_error(e: LookupError, what: &str) -> Reply {
    match e {
        LookupError::Closed => error(
            410,
            format!("the day has closed and left live state: its final {what} is in the sinks"),
        ),
        LookupError::NotYet => error(503, "no epoch is complete yet: ask again".into()),
        LookupError::Compacted { since } => error(
            503,
            format!("the epoch asked was compacted away (readable from {since}): ask again"),
        ),
        LookupError::NotOwner { owner } => misdirected(owner),
    }
}

fn misdirected(worker: usize) -> Reply {
    reply(
        421,
        serde_json::json!({
            "error": format!("the key is owned by worker {worker}, which is not in this process: ask the process that runs it"),
            "owner_worker": worker,
        }),
    )
}

fn ask_error(e: AskError) -> Reply {
    match e {
        AskError::Elsewhere { worker } => misdirected(worker),
        AskError::NoAnswer => error(503, "the worker did not answer in time".into()),
    }
}

fn standing_json(s: &Standing) -> serde_json::Value {
    use rankmysteps_dataflow::event::format_user;
    let neighbour = |&(u, steps, rank): &(User, u64, u64)| serde_json::json!({"user": format_user(u), "steps": steps, "rank": rank});
    serde_json::json!({
        "rank": s.rank,
        "steps": s.steps,
        "users": s.users,
        "gap_up": s.gap_up,
        "gap_down": s.gap_down,
        "above": s.above.iter().map(neighbour).collect::<Vec<_>>(),
        "below": s.below.iter().map(neighbour).collect::<Vec<_>>(),
    })
}

/// `/debug/lookup?day=D&user=U&neighbours=N`: the user's total at the last epoch its worker
/// completed, whether the day is final then, and the standing at that same epoch when the
/// day's worker is in this process too (else `standing` is null and `day_worker` says whom to
/// ask, with `/debug/lookup/standing`).
async fn lookup(i: Arc<Introspection>, p: LookupParams) -> Reply {
    use rankmysteps_dataflow::event::{format_day, format_user};
    let (day, user, neighbours) = match key(&p) {
        Ok(k) => k,
        Err(r) => return r,
    };
    let Some((user_worker, day_worker)) = i.owners(day, user) else {
        return error(503, "the workers have not started yet".into());
    };
    let total = match i
        .ask(user_worker, Query::Total { day, user }, ASK_TIMEOUT)
        .await
    {
        Ok(Answer::Total(Ok(t))) => t,
        Ok(Answer::Total(Err(e))) => return lookup_error(e, "total"),
        Ok(_) => return error(500, "a worker answered another question".into()),
        Err(e) => return ask_error(e),
    };
    let Some(steps) = total.total else {
        return error(
            404,
            format!(
                "user {} has no accepted event on {} (at epoch {})",
                format_user(user),
                format_day(day),
                total.epoch
            ),
        );
    };
    let standing =
        match standing_at(&i, day_worker, day, user, steps, neighbours, total.epoch).await {
            Ok(s) => s,
            Err(r) if r.0 == axum::http::StatusCode::MISDIRECTED_REQUEST => None,
            Err(r) => return r,
        };
    reply(
        200,
        serde_json::json!({
            "day": format_day(day),
            "user": format_user(user),
            "epoch": total.epoch,
            "total": steps,
            "final": total.status == DayStatus::Final,
            "user_worker": user_worker,
            "day_worker": day_worker,
            "standing": standing.as_ref().map(standing_json),
        }),
    )
}

/// The standing at `at` from `worker`, retried while that worker has not completed `at` yet.
async fn standing_at(
    i: &Introspection,
    worker: usize,
    day: Day,
    user: User,
    total: u64,
    neighbours: usize,
    at: Epoch,
) -> Result<Option<Standing>, Reply> {
    let deadline = Instant::now() + ASK_TIMEOUT;
    loop {
        let query = Query::Standing {
            day,
            user,
            total,
            neighbours,
            at,
        };
        match i.ask(worker, query, ASK_TIMEOUT).await {
            Ok(Answer::Standing(Ok((_, s)))) => return Ok(s),
            Ok(Answer::Standing(Err(LookupError::NotYet))) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Ok(Answer::Standing(Err(e))) => return Err(lookup_error(e, "standing")),
            Ok(_) => return Err(error(500, "a worker answered another question".into())),
            Err(e) => return Err(ask_error(e)),
        }
    }
}

/// `/debug/lookup/standing?day=D&user=U&total=T&at=E&neighbours=N`: the second half of a
/// lookup whose day's worker is in this process.
async fn lookup_standing(i: Arc<Introspection>, p: LookupParams) -> Reply {
    let (day, user, neighbours) = match key(&p) {
        Ok(k) => k,
        Err(r) => return r,
    };
    let (Some(total), Some(at)) = (p.total, p.at) else {
        return error(400, "total=T and at=EPOCH are required".into());
    };
    let Some(worker) = i.day_owner(day) else {
        return error(503, "the workers have not started yet".into());
    };
    match standing_at(&i, worker, day, user, total, neighbours, at).await {
        Ok(Some(s)) => reply(
            200,
            serde_json::json!({"epoch": at, "standing": standing_json(&s)}),
        ),
        Ok(None) => error(
            404,
            format!("no user with total {total} on that day at epoch {at}"),
        ),
        Err(r) => r,
    }
}

/// The query string of `/debug/lookup/top`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopParams {
    /// `YYYY-MM-DD`.
    day: Option<String>,
    /// Rows wanted (default: all the top-k holds).
    limit: Option<usize>,
}

/// `/debug/lookup/top?day=D&limit=N`: the day's top-k at the last epoch the day's worker
/// completed (named), whether the day is final then, and its rows in listing order (position,
/// competition rank, user, steps), from the `top-k` arrangement; 421 with `owner_worker` when
/// the day's worker runs in another process.
async fn lookup_top(i: Arc<Introspection>, p: TopParams) -> Reply {
    use rankmysteps_dataflow::event::{format_day, format_user, parse_day};
    let Some(text) = p.day.as_deref() else {
        return error(400, "day=YYYY-MM-DD is required".into());
    };
    let Some(day) = parse_day(text) else {
        return error(400, format!("day {text:?} is not a YYYY-MM-DD date"));
    };
    if p.limit == Some(0) {
        return error(400, "limit must be at least 1".into());
    }
    let Some(worker) = i.day_owner(day) else {
        return error(503, "the workers have not started yet".into());
    };
    match i.ask(worker, Query::Top { day }, ASK_TIMEOUT).await {
        Ok(Answer::Top(Ok((epoch, status, rows)))) => reply(
            200,
            serde_json::json!({
                "day": format_day(day),
                "epoch": epoch,
                "final": status == DayStatus::Final,
                "day_worker": worker,
                "top": rows.iter().take(p.limit.unwrap_or(usize::MAX)).map(|r| serde_json::json!({
                    "position": r.position,
                    "rank": r.rank,
                    "user": format_user(r.user),
                    "steps": r.steps,
                })).collect::<Vec<_>>(),
            }),
        ),
        Ok(Answer::Top(Err(e))) => lookup_error(e, "top-k"),
        Ok(_) => error(500, "a worker answered another question".into()),
        Err(e) => ask_error(e),
    }
}

/// The query string of `/debug/graph`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GraphParams {
    /// `dot` for Graphviz; absent for JSON.
    format: Option<String>,
}

/// A route's query string, or the 400 that says what is wrong with it.
fn query_params<T>(
    q: Result<axum::extract::Query<T>, axum::extract::rejection::QueryRejection>,
) -> Result<T, Reply> {
    q.map(|axum::extract::Query(p)| p)
        .map_err(|e| error(400, format!("bad query string: {}", e.body_text())))
}

/// The `/debug/` routes of `introspection` (JSON; bad input gets a JSON error with a reason).
pub fn routes(introspection: Arc<Introspection>) -> axum::Router {
    use axum::extract::rejection::QueryRejection;
    use axum::extract::{Query as Q, State};
    use axum::routing::get;
    type S = State<Arc<Introspection>>;
    let params = query_params::<LookupParams>;
    let asset = |content_type: &'static str, body: &'static str| {
        move || async move {
            (
                [
                    (axum::http::header::CONTENT_TYPE, content_type),
                    (
                        axum::http::header::CONTENT_SECURITY_POLICY,
                        "default-src 'self'; script-src 'self'; style-src 'self'; frame-ancestors 'none'",
                    ),
                    (axum::http::header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
                ],
                body,
            )
        }
    };
    axum::Router::new()
        .route(
            "/debug/ui",
            get(asset(
                "text/html; charset=utf-8",
                include_str!("inspector/index.html"),
            )),
        )
        .route(
            "/debug/ui.js",
            get(asset(
                "text/javascript; charset=utf-8",
                include_str!("inspector/ui.js"),
            )),
        )
        .route(
            "/debug/ui.css",
            get(asset("text/css; charset=utf-8", include_str!("inspector/ui.css"))),
        )
        .route(
            "/debug/",
            get(|| async {
                axum::Json(serde_json::json!({
                    "routes": {
                        "/debug/ui": "the inspector page: arrangement sizes over time, operators, the graph, a lookup box",
                        "/debug/summary": "arrangements and operators summed over this process's workers, and each worker's own",
                        "/debug/arrangements": "per named arrangement: batches, updates, live keys and estimated bytes",
                        "/debug/operators": "per named operator: activations and scheduling time",
                        "/debug/graph": "the dataflow graph (operators, channels with messages and records); ?format=dot for Graphviz",
                        "/debug/lookup?day=D&user=U&neighbours=N": "a user's total, finality and standing in live state, at the epoch named",
                        "/debug/lookup/standing?day=D&user=U&total=T&at=E&neighbours=N": "the standing half of a lookup, from the process of the day's worker",
                        "/debug/lookup/top?day=D&limit=N": "a day's top-k in live state (position, rank, user, steps), at the epoch named, from the process of the day's worker",
                    }
                }))
            }),
        )
        .route(
            "/debug/summary",
            get(|State(i): S| async move {
                i.walked().await;
                axum::Json(i.summary())
            }),
        )
        .route(
            "/debug/arrangements",
            get(|State(i): S| async move {
                i.walked().await;
                let s = i.summary();
                axum::Json(serde_json::json!({
                    "completed_epoch": s.completed_epoch,
                    "arrangements": s.arrangements,
                    "workers": s.workers.iter().map(|w| serde_json::json!({
                        "worker": w.worker,
                        "completed_epoch": w.completed_epoch,
                        "live_keys_epoch": w.live_keys_epoch,
                        "age_ms": w.age_ms,
                        "arrangements": w.arrangements,
                    })).collect::<Vec<_>>(),
                }))
            }),
        )
        .route(
            "/debug/operators",
            get(|State(i): S| async move {
                let s = i.summary();
                axum::Json(serde_json::json!({
                    "operators": s.operators,
                    "workers": s.workers.iter().map(|w| serde_json::json!({
                        "worker": w.worker,
                        "age_ms": w.age_ms,
                        "operators": w.operators,
                    })).collect::<Vec<_>>(),
                }))
            }),
        )
        .route(
            "/debug/graph",
            get(
                |State(i): S, q: Result<Q<GraphParams>, QueryRejection>| async move {
                    use axum::response::IntoResponse;
                    match query_params(q) {
                        Ok(GraphParams { format: Some(f) }) if f == "dot" => (
                            [(axum::http::header::CONTENT_TYPE, "text/vnd.graphviz; charset=utf-8")],
                            i.graph().dot(),
                        )
                            .into_response(),
                        Ok(GraphParams { format: None }) => axum::Json(i.graph()).into_response(),
                        Ok(GraphParams { format: Some(f) }) => {
                            error(400, format!("format {f:?}: use format=dot, or none for JSON"))
                                .into_response()
                        }
                        Err(r) => r.into_response(),
                    }
                },
            ),
        )
        .route(
            "/debug/lookup",
            get(move |State(i): S, p| async move {
                match params(p) {
                    Ok(p) => lookup(i, p).await,
                    Err(r) => r,
                }
            }),
        )
        .route(
            "/debug/lookup/standing",
            get(move |State(i): S, p| async move {
                match params(p) {
                    Ok(p) => lookup_standing(i, p).await,
                    Err(r) => r,
                }
            }),
        )
        .route(
            "/debug/lookup/top",
            get(move |State(i): S, p| async move {
                match query_params::<TopParams>(p) {
                    Ok(p) => lookup_top(i, p).await,
                    Err(r) => r,
                }
            }),
        )
        .with_state(introspection)
}

/// `rankmysteps inspect lookup`: asks each process at `addrs` for the (day, user) lookup until
/// the one running the user's worker answers, then, if the day's worker runs elsewhere, the
/// process that runs it for the standing at the same epoch. The JSON of `/debug/lookup`, with
/// `standing` filled in, or an error for a person.
pub fn lookup_cluster(
    addrs: &[String],
    day: &str,
    user: &str,
    neighbours: usize,
    timeout: Duration,
) -> Result<serde_json::Value, String> {
    let plain = |s: &str| s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    if !plain(day) || !plain(user) {
        return Err("--day and --user take a YYYY-MM-DD date and a UUID".into());
    }
    let mut found = ask_owner(
        addrs,
        &format!("/debug/lookup?day={day}&user={user}&neighbours={neighbours}"),
        "the user's worker",
        timeout,
    )?;
    if found["standing"].is_null() {
        let (total, at) = (&found["total"], &found["epoch"]);
        for addr in addrs {
            match get_json(
                addr,
                &format!(
                    "/debug/lookup/standing?day={day}&user={user}&neighbours={neighbours}&total={total}&at={at}"
                ),
                timeout,
            ) {
                Ok((200, body)) => {
                    found["standing"] = body["standing"].clone();
                    return Ok(found);
                }
                Ok((421, _)) | Err(_) => {}
                Ok((status, body)) => return Err(format!("{addr}: {}", describe(status, &body))),
            }
        }
        return Err(format!(
            "no process of {} runs the day's worker {} (the standing is not known here)",
            addrs.join(", "),
            found["day_worker"]
        ));
    }
    Ok(found)
}

/// `rankmysteps inspect top`: asks each process at `addrs` for the day's top-k until the one
/// running the day's worker answers. The JSON of `/debug/lookup/top`, or an error for a person.
pub fn top_cluster(
    addrs: &[String],
    day: &str,
    limit: Option<usize>,
    timeout: Duration,
) -> Result<serde_json::Value, String> {
    if !day.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        return Err("--day takes a YYYY-MM-DD date".into());
    }
    let path = match limit {
        Some(n) => format!("/debug/lookup/top?day={day}&limit={n}"),
        None => format!("/debug/lookup/top?day={day}"),
    };
    ask_owner(addrs, &path, "the day's worker", timeout)
}

/// `GET path` from each of `addrs` in turn until one answers 200 (a 421 means the owning
/// worker runs elsewhere: the next is asked); any other error status ends the search. `owner`
/// names the worker sought, for the error when no process runs it.
fn ask_owner(
    addrs: &[String],
    path: &str,
    owner: &str,
    timeout: Duration,
) -> Result<serde_json::Value, String> {
    let mut unreachable = Vec::new();
    for addr in addrs {
        match get_json(addr, path, timeout) {
            Ok((200, body)) => return Ok(body),
            Ok((421, _)) => {}
            Ok((status, body)) => return Err(format!("{addr}: {}", describe(status, &body))),
            Err(e) => unreachable.push(e),
        }
    }
    let mut message = format!("no process of {} runs {owner}", addrs.join(", "));
    if !unreachable.is_empty() {
        message.push_str(&format!(" (unreachable: {})", unreachable.join("; ")));
    }
    Err(message)
}

/// A top-k lookup's JSON for a person.
pub fn render_top(found: &serde_json::Value) -> String {
    use std::fmt::Write as _;
    let mut t = String::new();
    let _ = writeln!(
        t,
        "{} top at epoch {} ({}), from worker {}",
        found["day"].as_str().unwrap_or("?"),
        found["epoch"],
        if found["final"] == true {
            "final"
        } else {
            "open"
        },
        found["day_worker"],
    );
    let _ = writeln!(t, "{:>5} {:>7} {:>10}  USER", "POS", "RANK", "STEPS");
    for r in found["top"].as_array().into_iter().flatten() {
        let _ = writeln!(
            t,
            "{:>5} {:>7} {:>10}  {}",
            r["position"].as_u64().unwrap_or(0),
            r["rank"].as_u64().unwrap_or(0),
            r["steps"].as_u64().unwrap_or(0),
            r["user"].as_str().unwrap_or("?")
        );
    }
    t
}

fn describe(status: u16, body: &serde_json::Value) -> String {
    match body["error"].as_str() {
        Some(e) => format!("{e} (HTTP {status})"),
        None => format!("HTTP {status}: {body}"),
    }
}

/// `GET path` from `addr`, with errors for a person.
fn get(
    addr: &str,
    path: &str,
    timeout: Duration,
) -> Result<rankmysteps_web::client::Response, String> {
    use std::net::ToSocketAddrs;
    let socket = addr
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {addr}: {e}"))?
        .next()
        .ok_or_else(|| format!("{addr} resolves to no address"))?;
    let mut connection = rankmysteps_web::client::Connection::open(socket, timeout)
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    connection.get(path).map_err(|e| format!("{addr}: {e}"))
}

fn get_json(addr: &str, path: &str, timeout: Duration) -> Result<(u16, serde_json::Value), String> {
    get(addr, path, timeout).map(|r| (r.status, r.json()))
}

/// The body of `GET path` from the first of `addrs` that answers it with 200 (the others'
/// errors, if none does).
pub fn get_text(addrs: &[String], path: &str, timeout: Duration) -> Result<String, String> {
    let mut errors = Vec::new();
    for addr in addrs {
        match get(addr, path, timeout) {
            Ok(r) if r.status == 200 => return Ok(r.text()),
            Ok(r) => errors.push(format!("{addr}: {}", describe(r.status, &r.json()))),
            Err(e) => errors.push(e),
        }
    }
    Err(errors.join("; "))
}

/// A lookup's JSON for a person.
pub fn render_lookup(found: &serde_json::Value) -> String {
    use std::fmt::Write as _;
    let mut t = String::new();
    let s = &found["standing"];
    let _ = writeln!(
        t,
        "{} user {}: {} steps at epoch {} ({}); rank {} of {}, {} to the next total up, {} to the next down",
        found["day"].as_str().unwrap_or("?"),
        found["user"].as_str().unwrap_or("?"),
        found["total"],
        found["epoch"],
        if found["final"] == true { "final" } else { "open" },
        s["rank"],
        s["users"],
        s["gap_up"].as_u64().map_or("none (first)".to_owned(), |g| g.to_string()),
        s["gap_down"].as_u64().map_or("none (last)".to_owned(), |g| g.to_string()),
    );
    for (label, side) in [("above", &s["above"]), ("below", &s["below"])] {
        for n in side.as_array().into_iter().flatten() {
            let _ = writeln!(
                t,
                "  {label}: rank {:>7}  {:>10} steps  {}",
                n["rank"].as_u64().unwrap_or(0),
                n["steps"].as_u64().unwrap_or(0),
                n["user"].as_str().unwrap_or("?")
            );
        }
    }
    t
}

/// One captured batch: the worker, the batch's time, and its events.
type CapturedBatch = (usize, Duration, Vec<(Duration, TimelyEvent)>);

/// The container of a capture file's events: (time, worker, event).
type CapturedEvents = Vec<(Duration, usize, TimelyEvent)>;

/// `worker --capture FILE`: every timely log event of this process's workers, written by a
/// thread of its own (never under a worker) in timely's event format: each record a
/// little-endian u64 length and the bincode of a
/// `timely::dataflow::operators::core::capture::Event<Duration, Vec<(Duration, usize,
/// TimelyEvent)>>` (`Messages` only; the `usize` is the worker), as timely's `EventWriter`
/// frames them, so `EventReader` reads it too. A write error is logged and ends the capture,
/// not the job.
pub struct Capture {
    sender: Mutex<Option<std::sync::mpsc::Sender<CapturedBatch>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl std::fmt::Debug for Capture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Capture").finish_non_exhaustive()
    }
}

impl Capture {
    /// Creates `path` (replacing it) and starts the writer thread.
    pub fn create(path: &std::path::Path) -> std::io::Result<Arc<Capture>> {
        let file = std::fs::File::create(path)?;
        let (sender, receiver) = std::sync::mpsc::channel::<CapturedBatch>();
        let path = path.to_owned();
        let writer = std::thread::Builder::new()
            .name("rankmysteps-capture".into())
            .spawn(move || {
                use std::io::Write as _;
                let mut out = std::io::BufWriter::new(file);
                let write = |out: &mut std::io::BufWriter<std::fs::File>, batch: CapturedBatch| {
                    let (worker, now, events) = batch;
                    let events: CapturedEvents =
                        events.into_iter().map(|(t, e)| (t, worker, e)).collect();
                    let event: timely::dataflow::operators::core::capture::Event<
                        Duration,
                        CapturedEvents,
                    > = timely::dataflow::operators::core::capture::Event::Messages(
                        timely::progress::Stamp::from_elem(now),
                        events,
                    );
                    let len = bincode::serialized_size(&event).map_err(std::io::Error::other)?;
                    out.write_all(&len.to_le_bytes())?;
                    bincode::serialize_into(&mut *out, &event).map_err(std::io::Error::other)
                };
                for batch in receiver {
                    if let Err(e) = write(&mut out, batch) {
                        tracing::error!(error = %e, path = %path.display(), "capture failed; no more events are captured");
                        return;
                    }
                }
                if let Err(e) = out.flush() {
                    tracing::error!(error = %e, path = %path.display(), "capture failed at the end");
                }
            })?;
        Ok(Arc::new(Capture {
            sender: Mutex::new(Some(sender)),
            writer: Mutex::new(Some(writer)),
        }))
    }

    /// Ends the capture once the job has ended: closes the channel and waits until the writer
    /// has written and flushed everything (else the process could exit mid-record).
    pub fn finish(&self) {
        self.sender.lock().expect("capture lock").take();
        if let Some(writer) = self.writer.lock().expect("capture lock").take() {
            let _ = writer.join();
        }
    }

    /// Hands a copy of a worker's batch to the writer thread.
    fn send(&self, worker: usize, now: Duration, events: &[(Duration, TimelyEvent)]) {
        // The writer may have stopped after an error (or the capture ended): the job goes on.
        if let Some(sender) = &*self.sender.lock().expect("capture lock") {
            let _ = sender.send((worker, now, events.to_vec()));
        }
    }
}

/// `inspect --replay FILE`: the operators and the graph of a capture file, as the process that
/// wrote it would have shown them (arrangement sizes are not in timely's log: none).
pub fn replay(path: &std::path::Path) -> Result<Introspection, String> {
    use std::io::Read as _;
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut input = std::io::BufReader::new(file);
    let mut logs: BTreeMap<usize, OperatorLog> = BTreeMap::new();
    let mut records = 0u64;
    loop {
        let mut len = [0u8; 8];
        match input.read_exact(&mut len) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(format!("{}: {e}", path.display())),
        }
        let len = u64::from_le_bytes(len);
        if len > 1 << 30 {
            return Err(format!(
                "{}: record {records} claims {len} bytes: not a capture file of rankmysteps worker --capture",
                path.display()
            ));
        }
        let mut bytes = vec![0u8; len as usize];
        if let Err(e) = input.read_exact(&mut bytes) {
            // A process that died mid-write leaves a last record cut short: the rest stands.
            tracing::warn!(
                path = %path.display(),
                records,
                error = %e,
                "the capture ends mid-record (its process did not stop cleanly): replaying what precedes"
            );
            break;
        }
        let event: timely::dataflow::operators::core::capture::Event<Duration, CapturedEvents> =
            bincode::deserialize(&bytes).map_err(|e| {
                format!("{}: record {records} does not decode ({e}): not a capture file of rankmysteps worker --capture", path.display())
            })?;
        if let timely::dataflow::operators::core::capture::Event::Messages(_, events) = event {
            for (time, worker, event) in events {
                logs.entry(worker).or_default().apply(time, event);
            }
        }
        records += 1;
    }
    if logs.is_empty() {
        return Err(format!("{}: no events", path.display()));
    }
    let introspection = Introspection::default();
    for (worker, log) in logs {
        let (operators, channels, merges) = log.views();
        introspection.publish(WorkerView {
            worker,
            operators,
            channels,
            merges,
            ..WorkerView::default()
        });
    }
    Ok(introspection)
}
