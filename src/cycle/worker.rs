//! The cycle and the loop. A cycle is a small single-threaded scheduler: it pages
//! through the registered orders and takes them one at a time; an order whose call
//! failed transiently waits for its next attempt while the worker goes on with the
//! others (see [`crate::cycle::schedule`] for what runs next and when a service is out of
//! use). Between cycles the loop sleeps until a stop is requested.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use crate::config::{Config, Shard};
use crate::cycle::outcome::{Deferral, Outcome};
use crate::cycle::pager::{PageEnd, Pager};
use crate::cycle::process::{Call, Journey, StepEnd, Task, order_fields};
pub use crate::cycle::report::CycleReport;
use crate::cycle::retry::{Attempts, pace};
use crate::cycle::schedule::{Blame, Next, Rules, Scheduler, Service, Subject, Work};
use crate::services::http::CallError;
use crate::services::orders::{Order, OrderStatus};
use crate::services::outage::{Line, Outage};
use crate::state::heartbeat::Heartbeat;
use crate::state::in_flight::{InFlight, Journal, NoJournal};
use crate::stop::Stop;
use crate::telemetry::instrument::{self, Scope};
use opentelemetry::KeyValue;
use opentelemetry::trace::{SpanContext, SpanKind};

/// Orders that may wait for a retry at once. At the cap, no new order is taken until
/// one of them is done.
pub const WAITING_CAP: usize = 1024;

/// Decided orders whose status update is pending (their attempts spent in this cycle,
/// retried from the next). At the cap the cycle takes no new orders, so that a failing
/// Order Service cannot pile up decided orders without bound (about 150 bytes each).
pub const PENDING_CAP: usize = 4096;

/// Orders that may be in quarantine at once ([`Outcome::Quarantined`]). At the cap the
/// cycle takes no new orders: a service that answers every order oddly, one by one,
/// cannot grow the quarantine without bound (about 200 bytes each).
pub const QUARANTINE_CAP: usize = 1000;

/// An order's first quarantine; each further one doubles it, up to
/// [`QUARANTINE_MAX`].
pub const QUARANTINE_FIRST: Duration = Duration::from_secs(10);

/// The longest quarantine.
pub const QUARANTINE_MAX: Duration = Duration::from_secs(300);

/// The quarantined and pending orders are named again at most this often.
pub const REMINDER_EVERY: Duration = Duration::from_secs(600);

/// After an answer not blamed on its order, the order waits this much past the
/// service's cool-down, so that a call about another subject probes the service first.
const SUSPECT_GAP: Duration = Duration::from_millis(50);

/// Orders this process decided (`ready`, `blocked`, `unknown`) that it remembers: one
/// listed as `registered` again (a service that lost the update, or a stale list) gets
/// only its status update again, never a second decrease. About 40 bytes each: 400 KB
/// once full, whatever the backlog.
pub const RECENT_DECISIONS: usize = 10_000;

/// After a stop request, how long the status updates of decided orders still get to
/// start before the worker exits (a second signal exits at once); the last one started
/// may take its `--timeout` (5 s) more. So it fits within Docker's default of 10 s, and
/// well within the grace periods of `compose.yaml` and `deploy/kubernetes` (60 s): a
/// healthy Order Service takes them in milliseconds, and one that is down is found so
/// by the health rules in a few seconds.
pub const STOP_GRACE: Duration = Duration::from_secs(4);

/// An order whose fate is decided but whose status is not yet set.
#[derive(Debug, Clone)]
struct PendingUpdate {
    order: Order,
    status: OrderStatus,
    /// The decision's reason (the last cause of the delay is in the log line, not here:
    /// a reason never grows).
    reason: String,
    /// The order's trace, continued by the retries.
    trace: Option<SpanContext>,
    /// When it was decided (or taken up again after a restart).
    decided_at: Option<Instant>,
}

/// An order held back after an answer about it alone went wrong.
#[derive(Debug, Clone)]
struct Quarantined {
    order: Order,
    /// Decided: only its status update is left, never given up. `None`: nothing
    /// taken; the order is taken again when it is listed after `due`.
    status: Option<OrderStatus>,
    /// The decision's reason.
    decision: String,
    /// The last cause.
    cause: String,
    /// Times quarantined in a row.
    times: u32,
    due: Instant,
    trace: Option<SpanContext>,
    decided_at: Option<Instant>,
}

/// What this process remembers of the last [`RECENT_DECISIONS`] orders it put in, by
/// id, oldest forgotten first: the decisions it set (about 40 bytes each), and the
/// traces of orders left `registered`, so that one taken again in a later cycle
/// continues its first trace (about 60 bytes each).
#[derive(Debug)]
struct Remembered<V> {
    /// Ids in the order they were put in, each with the put's number: an id taken out
    /// and put in again is forgotten by its newer number only.
    order: VecDeque<(u64, u64)>,
    values: HashMap<u64, (u64, V)>,
    puts: u64,
}

impl<V> Default for Remembered<V> {
    fn default() -> Self {
        Remembered {
            order: VecDeque::new(),
            values: HashMap::new(),
            puts: 0,
        }
    }
}

impl<V> Remembered<V> {
    fn insert(&mut self, id: u64, value: V) {
        self.puts += 1;
        self.values.insert(id, (self.puts, value));
        self.order.push_back((id, self.puts));
        while self.order.len() > RECENT_DECISIONS {
            if let Some((old, put)) = self.order.pop_front()
                && self.values.get(&old).is_some_and(|(p, _)| *p == put)
            {
                self.values.remove(&old);
            }
        }
    }

    fn get(&self, id: u64) -> Option<&V> {
        self.values.get(&id).map(|(_, v)| v)
    }

    fn take(&mut self, id: u64) -> Option<V> {
        self.values.remove(&id).map(|(_, v)| v)
    }
}

/// The worker: its journey, what it remembers between cycles, and the stop flag.
pub struct Worker {
    journey: Journey,
    page_size: u32,
    shard: Option<Shard>,
    stop: Stop,
    rules: Rules,
    /// Decided orders whose status is still to be set, by id. Survives cycles (and
    /// restarts, with a state file): an order here never has its stock decreased again.
    pending: BTreeMap<u64, PendingUpdate>,
    /// Orders whose status update the Order Service refused (`400`/`404`) after their
    /// fate was decided (stock taken for `ready`): they may stay `registered`, are never
    /// handled again by this process, stay in the state file, and are named at exit.
    refused: BTreeMap<u64, OrderStatus>,
    recent: Remembered<(Order, OrderStatus)>,
    /// Traces of deferred orders, continued when they are taken again.
    deferred: Remembered<SpanContext>,
    pending_cap: usize,
    max_orders_per_cycle: u64,
    /// `once`: how long pending status updates are tried after the cycle.
    pending_deadline: Duration,
    /// Each service's outage, across cycles, so that one that stays unreachable is
    /// logged once a minute, not at every call ([`crate::services::outage`]).
    outages: [Outage; 2],
    /// The last cycle found nothing to do: idle cycles are logged at debug.
    idle: bool,
    /// The line saying idle cycles are logged at debug was said (and not yet undone).
    idle_told: bool,
    /// `once`: an order made `ready` is logged at debug (a big backlog's cron mail
    /// holds only what went wrong and the summary).
    quiet_success: bool,
    /// Rewritten as orders finish and after every cycle, for `healthcheck`.
    heartbeat: Option<Heartbeat>,
    /// Orders held back after an answer about them alone went wrong, by id.
    quarantine: BTreeMap<u64, Quarantined>,
    quarantine_cap: usize,
    /// When the quarantined and pending orders were last named (or the first entered).
    reminded: Option<Instant>,
    /// `once`: a decided order's status update is left pending this long after its
    /// decision (`--pending-deadline`), whatever its retries ask.
    decision_deadline: Option<Duration>,
}

/// One cycle's state.
struct Cycle {
    scheduler: Scheduler<Task>,
    pager: Pager,
    /// Orders of the current page not taken yet.
    page: VecDeque<Order>,
    /// When the next page may be fetched; `None` once the list is done.
    next_page: Option<Instant>,
    page_attempts: Attempts,
    /// A refill of the page (asked for while orders of it were left) brought nothing
    /// new: the next page waits until the page is used up (a service that ignores
    /// `skip` answers a refill with the orders still held).
    no_refill: bool,
    /// Status updates resumed in this cycle (they are not in the list's count yet).
    resumed: HashSet<u64>,
    /// Decided orders listed again whose status was sent again in this cycle: the
    /// list is not trusted about them, they stay counted in `skip`.
    resent: HashSet<u64>,
    report: CycleReport,
    link: Option<SpanContext>,
    /// `run`: the cycle ends once the list is done and nothing is due, and the orders
    /// still waiting for a retry carry over (they run during the interval and into the
    /// next cycle). `once` waits for them.
    carry: bool,
    /// A stop request gives the status updates in hand [`STOP_GRACE`] to land (not in
    /// `once`'s wait for pending updates, which a stop ends at once).
    grace: bool,
    /// The cycle ends at this time, its tasks left as they are (`once`'s wait for
    /// pending updates, bounded by `--pending-deadline`).
    until: Option<Instant>,
    /// Between two cycles of `run`: the outcomes reached now are of carried orders.
    between: bool,
    /// Quarantined orders listed again once their quarantine was over: the times they
    /// were quarantined and their trace, for the task taken from the page.
    requeued: HashMap<u64, (u32, Option<SpanContext>)>,
    /// Quarantined orders seen in the list in this cycle (the others left it).
    listed: HashSet<u64>,
    /// Decided orders whose decision is written but not yet synced: their status
    /// update waits for the next sync (the next order's `sending` record, or one of
    /// its own when nothing else comes), so one sync serves two records.
    awaiting: Vec<Task>,
    /// The stop's wind-down ran ([`Worker::wind_down`]).
    wound_down: bool,
}

impl Cycle {
    /// A cycle, with the orders left waiting by the one before (in `run`).
    fn new(
        rules: Rules,
        cap: usize,
        carried: Option<Cycle>,
        link: Option<SpanContext>,
        carry: bool,
    ) -> Cycle {
        let (scheduler, report, resumed) = match carried {
            Some(before) => {
                let mut scheduler = before.scheduler;
                scheduler.reset_health();
                let resumed = scheduler.tasks().map(|t| t.order().id).collect();
                (scheduler, before.report, resumed)
            }
            None => (
                Scheduler::new(rules, cap),
                CycleReport::default(),
                HashSet::new(),
            ),
        };
        let mut report = report;
        report.duration = Duration::ZERO;
        Cycle {
            scheduler,
            pager: Pager::default(),
            page: VecDeque::new(),
            next_page: Some(Instant::now()),
            page_attempts: Attempts::default(),
            no_refill: false,
            resumed,
            resent: HashSet::new(),
            report,
            link,
            carry,
            grace: true,
            until: None,
            between: false,
            requeued: HashMap::new(),
            listed: HashSet::new(),
            awaiting: Vec::new(),
            wound_down: false,
        }
    }

    /// True when the cycle saw the whole list (an order not in it has left it).
    fn saw_whole_list(&self) -> bool {
        self.next_page.is_none()
            && self.page.is_empty()
            && !self.report.list_failed
            && self.report.ended_early.is_none()
    }

    /// No more new orders in this cycle; the rest stay registered.
    fn end_list(&mut self, why: String) {
        self.end_list_at(why, log::Level::Error);
    }

    /// [`Cycle::end_list`], logged at `level` (debug during an outage already told).
    fn end_list_at(&mut self, why: String, level: log::Level) {
        self.page.clear();
        self.next_page = None;
        if self.report.ended_early.is_none() {
            log::log!(
                level,
                "cycle ended early, the rest stays registered for the next cycle: {why}"
            );
            self.report.ended_early = Some(why);
        }
    }
}

impl Worker {
    pub fn new(config: &Config, stop: Stop) -> Worker {
        Worker::with_journal(config, stop, Box::new(NoJournal))
    }

    /// A worker whose steps are written to `journal`; the orders a previous run left in
    /// flight become pending status updates: `ready`/`blocked`/`unknown` as decided, and
    /// `unknown` for a decrease whose outcome was never recorded (never sent again).
    pub fn with_journal(config: &Config, stop: Stop, journal: Box<dyn Journal>) -> Worker {
        let journey = Journey::new(config, journal);
        let recovered = journey.in_flight();
        let mut worker = Worker {
            rules: Rules::from_backoff(config.retry_base, config.retry_cap),
            journey,
            page_size: config.page_size,
            shard: config.shard,
            stop,
            pending: BTreeMap::new(),
            refused: BTreeMap::new(),
            recent: Remembered::default(),
            deferred: Remembered::default(),
            pending_cap: PENDING_CAP,
            max_orders_per_cycle: config.max_orders_per_cycle,
            pending_deadline: config.pending_deadline,
            outages: [Outage::default(), Outage::default()],
            // Start-up has said enough: a first cycle with nothing to do says no more.
            idle: true,
            idle_told: false,
            quiet_success: false,
            heartbeat: None,
            quarantine: BTreeMap::new(),
            quarantine_cap: QUARANTINE_CAP,
            reminded: None,
            decision_deadline: None,
        };
        for (order, state, trace) in recovered {
            let (status, reason) = match state {
                InFlight::Quarantined {
                    status,
                    times,
                    until_ms,
                } => {
                    // Its quarantine goes on where the previous run left it.
                    let now_ms = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
                    let left =
                        Duration::from_millis(until_ms.saturating_sub(now_ms)).min(QUARANTINE_MAX);
                    worker.quarantine.insert(
                        order.id,
                        Quarantined {
                            order,
                            status,
                            decision: "decided before a restart".into(),
                            cause: "quarantined before a restart".into(),
                            times,
                            due: Instant::now() + left,
                            trace,
                            decided_at: status.map(|_| Instant::now()),
                        },
                    );
                    continue;
                }
                InFlight::Decided(status) => (
                    status,
                    "decided before a restart; status update retried".to_string(),
                ),
                InFlight::Sent => {
                    let _fields = order_fields(&order);
                    log::error!(
                        "order {}: a decrease was sent before a restart and its outcome is not known; \
                         it is set unknown and never sent again: reconcile by hand",
                        order.id
                    );
                    worker.journey.decided(&order, OrderStatus::Unknown);
                    (
                        OrderStatus::Unknown,
                        "decrease sent before a restart, outcome not known; reconcile by hand"
                            .into(),
                    )
                }
            };
            worker.pending.insert(
                order.id,
                PendingUpdate {
                    order,
                    status,
                    reason,
                    trace,
                    decided_at: Some(Instant::now()),
                },
            );
        }
        if !worker.pending.is_empty() {
            log::info!(
                "state file: {} orders left in flight by a previous run; only their status updates are retried",
                worker.pending.len()
            );
        }
        if !worker.quarantine.is_empty() {
            let (count, orders) = worker.quarantined_orders();
            log::info!(
                "state file: {} quarantined by a previous run, each tried again when its \
                 quarantine is over: {orders}",
                crate::cycle::report::counted(count as u64, "order")
            );
            worker.reminded = Some(Instant::now());
        }
        worker
    }

    /// Beats `heartbeat` from now on.
    pub fn set_heartbeat(&mut self, heartbeat: Heartbeat) {
        self.heartbeat = Some(heartbeat);
    }

    /// Sets the cap on pending status updates ([`PENDING_CAP`] by default).
    pub fn set_pending_cap(&mut self, cap: usize) {
        self.pending_cap = cap.max(1);
    }

    /// Orders whose status update is still pending.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Sets `once`'s `--pending-deadline`.
    pub fn set_pending_deadline(&mut self, deadline: Duration) {
        self.pending_deadline = deadline;
    }

    /// Sets the cap on quarantined orders ([`QUARANTINE_CAP`] by default).
    pub fn set_quarantine_cap(&mut self, cap: usize) {
        self.quarantine_cap = cap.max(1);
    }

    /// The quarantined orders, as a log line names them (`12 (ready), 15 (registered)`),
    /// with how many there are.
    pub fn quarantined_orders(&self) -> (usize, String) {
        (
            self.quarantine.len(),
            name_quarantined(self.quarantine.values()),
        )
    }

    /// The orders whose status update is pending, as a log line names them: `161
    /// (ready), 170 (blocked)`, the first 20 and how many more.
    pub fn pending_orders(&self) -> String {
        name_orders(self.pending.values().map(|u| (u.order.id, u.status)))
    }

    /// The orders whose status update the Order Service refused after their fate was
    /// decided, as a log line names them (as [`Worker::pending_orders`]); empty if none.
    pub fn refused_orders(&self) -> (usize, String) {
        let named = self.refused.iter().map(|(id, status)| (*id, *status));
        (self.refused.len(), name_orders(named))
    }

    /// Runs cycles every `interval` (counted from the end of a cycle) until a stop is
    /// requested; a cycle that the Stock Service's stalls ended is followed at once
    /// ([`Worker::between_cycles`]). Returns the last cycle's report.
    pub fn run_loop(&mut self, interval: Duration) -> CycleReport {
        log::info!("worker started: a cycle every {} s", interval.as_secs_f64());
        let mut carried = None;
        loop {
            let (report, mut cycle) = self.cycle_with(carried.take(), true);
            carried = if self.stop.requested() {
                // A stop that came as the cycle ended: its waiting orders still get the
                // stop's grace, and what is left is pending (named at exit).
                self.wind_down(&mut cycle);
                None
            } else {
                self.between_cycles(cycle, interval)
            };
            if carried.is_none() {
                log::info!("stop requested: worker stopping");
                return report;
            }
        }
    }

    /// One cycle (`once`): the pending status updates and every order registered at its
    /// start, until nothing is left that can run; then the status updates still pending
    /// are tried until they land, a stop is requested, or `--pending-deadline` passes.
    pub fn cycle(&mut self) -> CycleReport {
        self.quiet_success = true;
        self.decision_deadline = Some(self.pending_deadline);
        // Updates left by an earlier run count from this one's start.
        let now = Instant::now();
        for update in self.pending.values_mut() {
            update.decided_at = Some(now);
        }
        for q in self.quarantine.values_mut() {
            q.decided_at = q.decided_at.map(|_| now);
        }
        let started = Instant::now();
        let mut report = self.cycle_with(None, false).0;
        if self.settling() && !self.stop.requested() {
            self.settle(&mut report);
        }
        report.quarantined = self.quarantine.len() as u64;
        report.duration = started.elapsed();
        self.log_summary(&report);
        report
    }

    /// The latest instant a status update left is still tried in `once`: each is
    /// given `--pending-deadline` from its decision.
    fn settle_deadline(&self) -> Option<Instant> {
        let limit = self.pending_deadline;
        self.pending
            .values()
            .map(|u| u.decided_at.unwrap_or_else(Instant::now) + limit)
            .max()
    }

    /// `once` has pending status updates left to try. Quarantined ones do not hold it:
    /// an answer about one order that went wrong is not mended in seconds; the next
    /// run tries them (with the state file) when their quarantine is over.
    fn settling(&self) -> bool {
        !self.pending.is_empty()
    }

    /// `once`'s wait for the status updates left pending by its cycle (their service
    /// was down): rounds of attempts, a backoff apart (capped at `--retry-cap`), each
    /// round respecting the Order Service's health, until they land, a stop is
    /// requested, or the deadline passes. No new order is taken meanwhile. Without a
    /// state file the process is the only record that their stock is taken: a new run
    /// would take it again.
    fn settle(&mut self, report: &mut CycleReport) {
        let started = Instant::now();
        let Some(deadline) = self.settle_deadline() else {
            return;
        };
        if Instant::now() >= deadline {
            // Each update's own line said its deadline passed.
            report.pending = self.pending.len() as u64;
            return;
        }
        log::info!(
            "{} status updates pending: orders {}; trying them until they land, a stop, or \
             --pending-deadline ({} s from each decision)",
            self.pending.len(),
            self.pending_orders(),
            self.pending_deadline.as_secs_f64()
        );
        let mut round = 0;
        while self.settling() {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            let pause = self
                .journey
                .policy()
                .delay(round, None, fastrand::f64())
                .min(deadline - now);
            if !self.stop.sleep(pause) {
                break;
            }
            round = round.saturating_add(1);
            let mut cycle = Cycle::new(self.rules.clone(), WAITING_CAP, None, None, false);
            cycle.next_page = None;
            cycle.grace = false;
            cycle.until = Some(deadline);
            self.resume_pending(&mut cycle);
            self.run(&mut cycle);
            report.absorb(&cycle.report);
        }
        report.pending = self.pending.len() as u64;
        report.quarantined = self.quarantine.len() as u64;
        if self.pending.is_empty() {
            log::info!(
                "every pending status update landed, after {} ms",
                started.elapsed().as_millis()
            );
        }
    }

    /// A cycle; with `carry`, it ends once the list is done and nothing is due, and the
    /// orders still waiting for a retry are handed back with it.
    fn cycle_with(&mut self, carried: Option<Cycle>, carry: bool) -> (CycleReport, Cycle) {
        let started = Instant::now();
        let scope = Scope::start("cycle", SpanKind::Internal, self.shard_attribute());
        let mut cycle = Cycle::new(
            self.rules.clone(),
            WAITING_CAP,
            carried,
            Some(scope.span_context()),
            carry,
        );
        self.resume_pending(&mut cycle);
        self.run(&mut cycle);
        self.forget_departed(&cycle);
        let mut report = std::mem::take(&mut cycle.report);
        report.pending = self.pending.len() as u64;
        report.quarantined = self.quarantine.len() as u64;
        report.waiting = cycle.scheduler.len() as u64;
        report.duration = started.elapsed();
        // `once` says its summary after its wait for pending updates.
        if carry {
            self.log_summary(&report);
        }
        if let Some(heartbeat) = &mut self.heartbeat {
            heartbeat.cycle_ended(report.beat());
        }
        let count = |name: &'static str, n: u64| KeyValue::new(name, n as i64);
        scope.set(vec![
            count("ordermanagement.cycle.fetched", report.fetched),
            count("ordermanagement.cycle.ready", report.ready),
            count("ordermanagement.cycle.blocked", report.blocked),
            count("ordermanagement.cycle.unknown", report.unknown),
            count("ordermanagement.cycle.deferred", report.deferred),
            count("ordermanagement.cycle.pending", report.pending),
        ]);
        if report.list_failed {
            scope.fail("the order list could not be fetched".into());
        } else if let Some(why) = report
            .ended_early
            .as_ref()
            .filter(|_| !self.stop.requested())
        {
            scope.fail(format!("ended early: {why}"));
        }
        let metrics = instrument::instruments();
        let shard = self.shard_attribute();
        metrics
            .cycle_duration
            .record(report.duration.as_secs_f64(), &shard);
        metrics.orders_pending.record(report.pending, &shard);
        metrics
            .orders_quarantined
            .record(report.quarantined, &shard);
        self.remind();
        // Only a cycle that saw the whole list knows how many orders were registered.
        if !report.list_failed && report.ended_early.is_none() {
            metrics
                .orders_registered
                .record(report.fetched + report.held, &shard);
        }
        (report, cycle)
    }

    /// Between two cycles of `run`: the orders carried over run when their retry is
    /// due, until `interval` has passed; outcomes reached meanwhile count in the next
    /// cycle's report. `None` after a stop request.
    ///
    /// Once the Stock Service is down because it stalled
    /// [`crate::cycle::schedule::STALLS_DOWN`] times in a row (in the cycle or here), the next
    /// cycle starts at once, unless the Order Service is down too: the stalls were the
    /// pause already, and idle time never frees the real Stock Service's pool
    /// (docs/how-it-works.md, "when a service fails"). Never a busy loop: the stalls
    /// took at least two `--timeout`s.
    fn between_cycles(&mut self, mut cycle: Cycle, interval: Duration) -> Option<Cycle> {
        let end = Instant::now() + interval;
        cycle.link = None;
        cycle.between = true;
        loop {
            if self.stop.requested() {
                self.wind_down(&mut cycle);
                return None;
            }
            let work = Work {
                new_orders: false,
                page_low: true,
                next_page: Some(end),
            };
            self.release_awaiting(&mut cycle, true);
            match cycle.scheduler.next(Instant::now(), work) {
                Next::Run(task) => self.run_task(&mut cycle, task),
                Next::Sleep(duration) => {
                    self.stop.sleep(duration);
                }
                Next::Abandon(service, tasks) => self.abandon(&mut cycle, service, tasks),
                // The interval is over (or a service is down until the next cycle).
                Next::FetchPage | Next::EndList(_) | Next::Done | Next::NewOrder => {
                    let scheduler = &cycle.scheduler;
                    if scheduler.health(Service::Stock).stalled_out()
                        && scheduler.health(Service::Orders).down().is_none()
                    {
                        log::info!(
                            "the next cycle starts at once: the Stock Service's stalls were \
                             its pause"
                        );
                    } else {
                        self.stop
                            .sleep(end.saturating_duration_since(Instant::now()));
                    }
                    return Some(cycle);
                }
            }
        }
    }

    /// After a stop request: orders with nothing taken are left registered, and the
    /// status updates of decided orders (those in hand, and those pending from earlier
    /// cycles) get [`STOP_GRACE`] to land, the Order Service's health respected. What
    /// is left then stays pending.
    fn wind_down(&mut self, cycle: &mut Cycle) {
        // Once per cycle: `run` winds down on a stop, and the loop around it must not
        // give the same updates a second grace.
        if std::mem::replace(&mut cycle.wound_down, true) {
            return;
        }
        self.release_awaiting(cycle, true);
        for task in cycle.scheduler.drain_service(Service::Stock) {
            let outcome = task.abandon("stop requested", Deferral::Stopped);
            self.finish(cycle, task, outcome);
        }
        // A stop is no error: the rest stays registered for the next run (said only
        // when some of the list was left).
        if !cycle.page.is_empty() || cycle.next_page.is_some() {
            cycle.end_list_at("stop requested".into(), log::Level::Info);
        }
        if !cycle.grace {
            self.abandon_all(cycle);
            return;
        }
        if !self.pending.is_empty() {
            // Pending because the Order Service was down: give it a fresh start.
            cycle.scheduler.reset_health();
            self.resume_pending(cycle);
        }
        if cycle.scheduler.is_empty() {
            return;
        }
        log::info!(
            "stop requested: {} status updates of decided orders get up to {} s to land \
             (a second signal exits at once)",
            cycle.scheduler.len(),
            STOP_GRACE.as_secs()
        );
        let until = Instant::now() + STOP_GRACE;
        loop {
            let now = Instant::now();
            if cycle.scheduler.is_empty() || now >= until {
                break;
            }
            let work = Work {
                new_orders: false,
                page_low: true,
                next_page: None,
            };
            self.release_awaiting(cycle, true);
            match cycle.scheduler.next(now, work) {
                Next::Run(task) => self.run_task(cycle, task),
                // The stop flag is set: a plain sleep (a second signal ends the process).
                Next::Sleep(duration) => std::thread::sleep(duration.min(until - now)),
                Next::Abandon(service, tasks) => self.abandon(cycle, service, tasks),
                Next::NewOrder | Next::FetchPage | Next::EndList(_) | Next::Done => break,
            }
        }
        self.abandon_all(cycle);
    }

    /// Every waiting order is left as it is (nothing taken yet: registered; decided:
    /// its status update pending).
    fn abandon_all(&mut self, cycle: &mut Cycle) {
        self.release_awaiting(cycle, true);
        let why = if self.stop.requested() {
            "stop requested".to_string()
        } else {
            format!(
                "--pending-deadline ({} s) passed",
                self.pending_deadline.as_secs_f64()
            )
        };
        for task in cycle.scheduler.drain() {
            let outcome = task.abandon(&why, Deferral::Stopped);
            self.finish(cycle, task, outcome);
        }
    }

    /// A service is down: the orders waiting for it stay for the next cycle.
    fn abandon(&mut self, cycle: &mut Cycle, service: Service, tasks: Vec<Task>) {
        let why = cycle
            .scheduler
            .health(service)
            .down()
            .unwrap_or("out of use")
            .to_string();
        for task in tasks {
            let outcome = task.abandon(&why, Deferral::Unavailable);
            self.finish(cycle, task, outcome);
        }
        // With the list already done, nothing of it is left behind: the orders handed
        // back are counted as deferred or pending, which say so.
        if cycle.page.is_empty() && cycle.next_page.is_none() {
            return;
        }
        let level = self.outage_level(log::Level::Error);
        cycle.end_list_at(why, level);
    }

    /// `level`, or debug while a service's outage has been told already.
    fn outage_level(&self, level: log::Level) -> log::Level {
        if self.outages.iter().any(Outage::ongoing) {
            log::Level::Debug
        } else {
            level
        }
    }

    /// Records whether a call was answered, for its service's outage lines.
    fn outage(&mut self, call: &Call) {
        let now = Instant::now();
        let name = call.service.name();
        let outage = &mut self.outages[match call.service {
            Service::Orders => 0,
            Service::Stock => 1,
        }];
        let line = if call.answered {
            outage.answered(name, now)
        } else {
            outage.failed(name, now)
        };
        match line {
            Line::Quiet => {}
            // `once` may end before a minute has passed: it promises no later line.
            Line::Down if self.quiet_success => {
                log::error!("{name} unreachable: {}", call.detail)
            }
            Line::Down => log::error!(
                "{name} unreachable: {}; while it stays so, this is logged once a minute",
                call.detail
            ),
            Line::Still(text) => log::warn!("{text}"),
            Line::Back(text) => log::info!("{text}"),
        }
    }

    fn shard_attribute(&self) -> Vec<KeyValue> {
        self.shard
            .map(instrument::shard_attribute)
            .into_iter()
            .collect()
    }

    /// The status updates left pending by earlier cycles (or runs) go first.
    fn resume_pending(&mut self, cycle: &mut Cycle) {
        let now = Instant::now();
        for (id, update) in std::mem::take(&mut self.pending) {
            let mut task = self.journey.resume(
                update.order,
                update.status,
                update.reason,
                update.trace,
                cycle.link.clone(),
            );
            if let Some(at) = update.decided_at {
                task.set_decided_at(at);
            }
            cycle.resumed.insert(id);
            cycle.scheduler.wait(Service::Orders, now, task);
        }
        // Quarantined status updates whose time has come.
        let due: Vec<u64> = self
            .quarantine
            .values()
            .filter(|q| q.status.is_some() && q.due <= now)
            .map(|q| q.order.id)
            .collect();
        for id in due {
            let Some(q) = self.quarantine.remove(&id) else {
                continue;
            };
            let Some(status) = q.status else { continue };
            let mut task =
                self.journey
                    .resume(q.order, status, q.decision, q.trace, cycle.link.clone());
            if let Some(at) = q.decided_at {
                task.set_decided_at(at);
            }
            task.set_quarantined(q.times);
            cycle.resumed.insert(id);
            cycle.scheduler.wait(Service::Orders, now, task);
        }
    }

    /// Quarantined orders with nothing taken that a cycle which saw the whole list did
    /// not find in it have left the registered list: forgotten.
    fn forget_departed(&mut self, cycle: &Cycle) {
        if !cycle.saw_whole_list() {
            return;
        }
        let departed: Vec<Order> = self
            .quarantine
            .values()
            .filter(|q| q.status.is_none() && !cycle.listed.contains(&q.order.id))
            .map(|q| q.order)
            .collect();
        for order in departed {
            log::info!(
                "order {}: no longer registered while quarantined (nothing was taken); \
                 forgotten",
                order.id
            );
            self.quarantine.remove(&order.id);
            self.journey.forget(&order);
        }
    }

    /// Past the cap, quarantined orders with nothing taken are let go, those due
    /// soonest first: they are taken again as new orders when listed.
    fn trim_quarantine(&mut self) {
        if self.quarantine.len() <= self.quarantine_cap {
            return;
        }
        let mut undecided: Vec<(Instant, Order)> = self
            .quarantine
            .values()
            .filter(|q| q.status.is_none())
            .map(|q| (q.due, q.order))
            .collect();
        undecided.sort_by_key(|(due, order)| (*due, order.id));
        let over = self.quarantine.len() - self.quarantine_cap;
        let mut let_go = 0;
        for (_, order) in undecided.into_iter().take(over) {
            self.quarantine.remove(&order.id);
            self.journey.forget(&order);
            let_go += 1;
        }
        if let_go > 0 {
            log::warn!(
                "quarantine at its cap ({}): {} with nothing taken, due soonest, leave it \
                 and are taken again as new orders",
                self.quarantine_cap,
                crate::cycle::report::counted(let_go as u64, "order")
            );
        }
    }

    /// Names the quarantined and pending orders at most every [`REMINDER_EVERY`].
    fn remind(&mut self) {
        if self.quarantine.is_empty() && self.pending.is_empty() {
            self.reminded = None;
            return;
        }
        let now = Instant::now();
        let last = *self.reminded.get_or_insert(now);
        if now.saturating_duration_since(last) < REMINDER_EVERY {
            return;
        }
        self.reminded = Some(now);
        let (count, orders) = self.quarantined_orders();
        log::warn!(
            quarantined = count as u64, pending = self.pending.len() as u64;
            "still stuck: {} quarantined (each tried again alone, on a backoff up to {} s){}{}; \
             {} pending{}{}",
            crate::cycle::report::counted(count as u64, "order"),
            QUARANTINE_MAX.as_secs(),
            if count > 0 { ": " } else { "" },
            orders,
            crate::cycle::report::counted(self.pending.len() as u64, "status update"),
            if self.pending.is_empty() { "" } else { ": orders " },
            self.pending_orders()
        );
    }

    /// Orders that entered quarantine in a run of failures the service has since shown
    /// to be its own (it fails for other orders too) leave it: nothing taken, they are
    /// taken again as usual; decided, their status update is pending as usual.
    fn release(&mut self, orders: &[u64], service: Service) {
        for id in orders {
            let Some(q) = self.quarantine.get(id) else {
                continue;
            };
            if q.times > 1 {
                continue;
            }
            let Some(q) = self.quarantine.remove(id) else {
                continue;
            };
            let _fields = order_fields(&q.order);
            log::info!(
                "order {id}: out of quarantine: the {} fails for other orders too",
                service.name()
            );
            if q.status.is_none() {
                self.journey.forget(&q.order);
            }
            if let Some(status) = q.status {
                self.pending.insert(
                    *id,
                    PendingUpdate {
                        order: q.order,
                        status,
                        reason: q.decision,
                        trace: q.trace,
                        decided_at: q.decided_at,
                    },
                );
            }
        }
    }

    /// The scheduler's loop: runs what is due, takes new orders, fetches pages and
    /// sleeps, until nothing is left that can run in this cycle or a stop is requested.
    fn run(&mut self, cycle: &mut Cycle) {
        loop {
            if self.stop.requested() {
                self.wind_down(cycle);
                return;
            }
            if cycle.until.is_some_and(|until| Instant::now() >= until) {
                self.abandon_all(cycle);
                return;
            }
            if self.pending.len() >= self.pending_cap
                && (!cycle.page.is_empty() || cycle.next_page.is_some())
            {
                cycle.end_list(format!(
                    "{} status updates pending: no new orders until they go through",
                    self.pending.len()
                ));
            }
            // Decided orders in quarantine hold stock taken: at the cap, no new order.
            // Those with nothing taken hold nothing: past the cap the ones due soonest
            // are let go (taken again as new orders), so the cap never stops the list.
            // Counted only at the cap, not on every turn of the loop.
            let decided = || {
                self.quarantine
                    .values()
                    .filter(|q| q.status.is_some())
                    .count()
            };
            if self.quarantine.len() >= self.quarantine_cap
                && (!cycle.page.is_empty() || cycle.next_page.is_some())
                && decided() >= self.quarantine_cap
            {
                cycle.end_list(format!(
                    "{} decided orders quarantined (the cap): no new orders until some leave \
                     quarantine",
                    decided()
                ));
            }
            self.trim_quarantine();
            let work = Work {
                new_orders: !cycle.page.is_empty(),
                page_low: cycle.page.is_empty()
                    || (!cycle.no_refill && cycle.page.len() <= self.page_size as usize / 2),
                next_page: cycle.next_page,
            };
            self.release_awaiting(cycle, false);
            let next = cycle.scheduler.next(Instant::now(), work);
            // Anything but a new order (whose `sending` record syncs theirs): the
            // waiting status updates get a sync of their own and go first.
            if !cycle.awaiting.is_empty() && !matches!(next, Next::NewOrder) {
                self.release_awaiting(cycle, true);
                if matches!(next, Next::Sleep(_) | Next::Done) {
                    continue;
                }
            }
            match next {
                Next::Run(task) => self.run_task(cycle, task),
                Next::NewOrder => {
                    let Some(order) = cycle.page.pop_front() else {
                        continue;
                    };
                    cycle.report.fetched += 1;
                    let requeued = cycle.requeued.remove(&order.id);
                    let trace = requeued
                        .as_ref()
                        .and_then(|(_, trace)| trace.clone())
                        .or_else(|| self.deferred.take(order.id));
                    let mut task = self.journey.take(order, cycle.link.clone(), trace);
                    if let Some((times, _)) = requeued {
                        task.set_quarantined(times);
                    }
                    self.run_task(cycle, task);
                }
                Next::FetchPage => self.fetch_page(cycle),
                // With the list done, `run` carries the waiting orders over.
                Next::Sleep(_)
                    if cycle.carry && cycle.page.is_empty() && cycle.next_page.is_none() =>
                {
                    return;
                }
                Next::Sleep(duration) => {
                    let left = cycle
                        .until
                        .map_or(duration, |u| u.saturating_duration_since(Instant::now()));
                    self.stop
                        .sleep(duration.min(left).max(Duration::from_millis(1)));
                }
                Next::Abandon(service, tasks) => self.abandon(cycle, service, tasks),
                Next::EndList(service) => {
                    let why = cycle
                        .scheduler
                        .health(service)
                        .down()
                        .unwrap_or(service.name())
                        .to_string();
                    let level = self.outage_level(log::Level::Error);
                    cycle.end_list_at(why, level);
                }
                Next::Done => return,
            }
        }
    }

    /// Runs a task's steps while they follow at once (the status update right after
    /// the decrease), then leaves it finished or waiting for its next attempt.
    fn run_task(&mut self, cycle: &mut Cycle, mut task: Task) {
        loop {
            let ran = self.journey.step(task);
            let mut blame = Blame::Nobody;
            let mut detail = String::new();
            if let Some(call) = ran.call {
                self.outage(&call);
                blame = cycle.scheduler.record_from(
                    call.service,
                    Instant::now(),
                    call.verdict,
                    &call.detail,
                    call.subject,
                );
                detail = call.detail;
                if let Blame::Service(orders) = &blame {
                    self.release(orders, call.service);
                }
            }
            match ran.end {
                StepEnd::Finished(task, outcome) => {
                    self.finish(cycle, task, outcome);
                    return;
                }
                // The order in hand is finished even after a stop request.
                StepEnd::Then(next, service) => {
                    if !self.journey.durable(&next) {
                        cycle.awaiting.push(next);
                        return;
                    }
                    if cycle.scheduler.health(service).usable(Instant::now()) {
                        task = next;
                        continue;
                    }
                    cycle.scheduler.wait(service, Instant::now(), next);
                    return;
                }
                // After a stop request, a decrease is not tried again; a status update is,
                // within the stop's grace ([`Worker::wind_down`]).
                // The order's own trouble: quarantined; the other orders go on.
                StepEnd::Odd(task, _, reason) if blame == Blame::Order => {
                    self.enter_quarantine(cycle, task, reason);
                    return;
                }
                StepEnd::Again(task, Service::Orders, _, _) if blame == Blame::Order => {
                    self.enter_quarantine(cycle, task, detail);
                    return;
                }
                StepEnd::Again(task, Service::Stock, _, _)
                | StepEnd::Odd(task, Service::Stock, _)
                    if self.stop.requested() =>
                {
                    let outcome = task.abandon("stop requested", Deferral::Stopped);
                    self.finish(cycle, task, outcome);
                    return;
                }
                // Not blamed on the order: again once another call has probed the
                // service (a service that is down hands it back).
                StepEnd::Odd(task, service, _) => {
                    let now = Instant::now();
                    let due = cycle
                        .scheduler
                        .health(service)
                        .usable_at(now)
                        .map_or(now, |at| at + SUSPECT_GAP);
                    self.wait_or_give_up(cycle, task, service, due, &detail);
                    return;
                }
                StepEnd::Again(task, service, delay, pace) => {
                    let now = Instant::now();
                    let mut due = cycle.scheduler.retry_at(service, now, delay, pace);
                    if matches!(blame, Blame::Service(_))
                        && let Some(at) = cycle.scheduler.health(service).usable_at(now)
                    {
                        due = due.max(at + SUSPECT_GAP);
                    }
                    self.wait_or_give_up(cycle, task, service, due, &detail);
                    return;
                }
            }
        }
    }

    /// The status updates waiting for their decision to be synced go to the scheduler,
    /// due at once: those already durable, or, with `force`, all of them after a sync
    /// of their own (a failed sync makes each write its decision again, synced,
    /// before its update).
    fn release_awaiting(&mut self, cycle: &mut Cycle, force: bool) {
        if cycle.awaiting.is_empty() {
            return;
        }
        if force
            && cycle.awaiting.iter().any(|t| !self.journey.durable(t))
            && let Err(e) = self.journey.sync()
        {
            log::error!("the state file could not be synced: {e}; each decision is written again");
            for task in &mut cycle.awaiting {
                task.record_again();
            }
        }
        let now = Instant::now();
        let (ready, left): (Vec<Task>, Vec<Task>) = std::mem::take(&mut cycle.awaiting)
            .into_iter()
            .partition(|t| self.journey.durable(t));
        cycle.awaiting = left;
        for task in ready {
            cycle.scheduler.wait(Service::Orders, now, task);
        }
    }

    /// Puts a task to wait until `due`; in `once`, a status update due after its
    /// `--pending-deadline` is left pending instead.
    fn wait_or_give_up(
        &mut self,
        cycle: &mut Cycle,
        task: Task,
        service: Service,
        due: Instant,
        detail: &str,
    ) {
        if let (Some(limit), Some(at), Some(_)) =
            (self.decision_deadline, task.decided_at(), task.decided())
            && due > at + limit
        {
            let why = format!(
                "--pending-deadline ({} s) passes before its next attempt; last: {detail}",
                limit.as_secs_f64()
            );
            let outcome = task.abandon(&why, Deferral::Stopped);
            self.finish(cycle, task, outcome);
            return;
        }
        cycle.scheduler.wait(service, due, task);
    }

    /// An answer about this order alone went wrong: it is held back, on a backoff of
    /// its own, and named once ([`Worker::remind`] names all of them now and then).
    fn enter_quarantine(&mut self, cycle: &mut Cycle, task: Task, cause: String) {
        // `once` without a state file: nothing would remember a decided order after the
        // run, so it stays pending, tried until `--pending-deadline` like any other.
        if self.decision_deadline.is_some()
            && task.decided().is_some()
            && !self.journey.keeps_state()
        {
            let why = format!("{cause}; not quarantined: no state file would keep it");
            let now = Instant::now();
            let due = now + self.journey.policy().cap;
            self.wait_or_give_up(cycle, task, Service::Orders, due, &why);
            return;
        }
        let times = task.quarantined().saturating_add(1);
        let delay = quarantine_delay(times, fastrand::f64());
        let what = if task.decided().is_some() {
            "status update"
        } else {
            "decrease"
        };
        let reason = format!(
            "{cause}; its {what} is tried again in {} s, alone (other orders go on)",
            delay.as_secs()
        );
        let outcome = Outcome::Quarantined {
            status: task.decided(),
            reason,
        };
        let order = *task.order();
        // Seen in this cycle's list (or resumed from an earlier one): not departed.
        cycle.listed.insert(order.id);
        self.quarantine.insert(
            order.id,
            Quarantined {
                order,
                status: task.decided(),
                decision: task.decision_reason().to_string(),
                cause,
                times,
                due: Instant::now() + delay,
                trace: Some(task.trace()),
                decided_at: task.decided_at(),
            },
        );
        self.journey.quarantined(
            &order,
            task.decided(),
            times,
            std::time::SystemTime::now() + delay,
        );
        self.reminded.get_or_insert_with(Instant::now);
        self.finish(cycle, task, outcome);
    }

    /// Fetches the entries at the pager's `skip` that fill the page up (so that at most
    /// a page of new orders is held) and admits them.
    fn fetch_page(&mut self, cycle: &mut Cycle) {
        let skip = cycle.pager.skip();
        let refill = !cycle.page.is_empty();
        cycle.no_refill = false;
        // At most a page held, and never more than --max-orders-per-cycle in the cycle.
        let left = self
            .max_orders_per_cycle
            .saturating_sub(cycle.report.fetched + cycle.page.len() as u64);
        let limit = self
            .page_size
            .saturating_sub(cycle.page.len() as u32)
            .min(u32::try_from(left).unwrap_or(u32::MAX))
            .max(1);
        let started = Instant::now();
        let result = self.journey.list(skip, limit, cycle.page_attempts.made);
        let call = Call::of(Service::Orders, Subject::List, &result);
        self.outage(&call);
        cycle
            .scheduler
            .record(Service::Orders, Instant::now(), call.verdict, &call.detail);
        let told = self.outages[0].ongoing();
        let entries = match result {
            Ok(entries) => entries,
            Err(e) => {
                let attempt = cycle.page_attempts.made + 1;
                let policy = self.journey.policy();
                match policy.after_failure(&mut cycle.page_attempts, &e, fastrand::f64()) {
                    Some(delay) => {
                        let now = Instant::now();
                        let due = cycle
                            .scheduler
                            .retry_at(Service::Orders, now, delay, pace(&e));
                        log::log!(
                            if told {
                                log::Level::Debug
                            } else {
                                log::Level::Info
                            },
                            "fetching registered orders failed (attempt {attempt} of {}, after {} ms): {e}; retrying in {} ms",
                            policy.max_retries + 1,
                            started.elapsed().as_millis(),
                            (due - now).as_millis()
                        );
                        cycle.next_page = Some(due);
                    }
                    None => {
                        log::log!(
                            if told {
                                log::Level::Debug
                            } else {
                                log::Level::Error
                            },
                            "could not fetch registered orders (skip {skip}): {e}"
                        );
                        cycle.report.list_failed = true;
                        cycle.next_page = None;
                        if let CallError::Fatal { .. } | CallError::Unexpected { .. } = e {
                            cycle.report.ended_early = Some(e.to_string());
                        }
                    }
                }
                return;
            }
        };
        cycle.page_attempts = Attempts::default();
        if let Some(heartbeat) = &mut self.heartbeat {
            heartbeat.orders_answered();
        }
        let len = entries.len();
        // Bad entries: a line each for the first few of a page, then one summary line.
        let mut invalid_log = crate::services::orders::InvalidLog::new();
        for entry in entries {
            self.admit(cycle, entry, &mut invalid_log);
        }
        drop(invalid_log);
        cycle.next_page = match cycle.pager.after_page(len, limit) {
            PageEnd::Fetch => Some(Instant::now()),
            PageEnd::Last => None,
            PageEnd::NothingNew if refill => {
                cycle.no_refill = true;
                Some(Instant::now())
            }
            PageEnd::NothingNew => {
                log::warn!(
                    "the registered list returned only orders already seen this cycle (skip {skip}); paging stops"
                );
                None
            }
        };
        let most = self.max_orders_per_cycle;
        if cycle.report.fetched + cycle.page.len() as u64 >= most && cycle.next_page.is_some() {
            cycle.next_page = None;
            cycle.report.ended_early = Some(format!(
                "{most} orders taken in this cycle (--max-orders-per-cycle); the rest waits for the next"
            ));
            log::info!(
                "{}",
                cycle.report.ended_early.as_deref().unwrap_or_default()
            );
        }
    }

    /// One entry of a page: a new order of this worker's is queued; anything else is
    /// counted, skipped or stepped over.
    fn admit(
        &mut self,
        cycle: &mut Cycle,
        entry: Result<Order, crate::services::orders::InvalidOrder>,
        invalid_log: &mut crate::services::orders::InvalidLog,
    ) {
        let id = match &entry {
            Ok(order) => Some(order.id),
            Err(invalid) => invalid.id,
        };
        let pager = &mut cycle.pager;
        if !pager.admit(id) {
            return;
        }
        // Another replica's order (an entry with no valid id is shard 0's to report).
        if let Some(shard) = self.shard
            && !shard.contains(id.unwrap_or(0))
        {
            match id {
                Some(id) => pager.passes(id),
                None => pager.holds(None),
            }
            return;
        }
        pager.holds(id);
        let order = match entry {
            Ok(order) => order,
            Err(invalid) => {
                cycle.report.fetched += 1;
                cycle.report.skipped += 1;
                invalid_log.entry(&invalid);
                return;
            }
        };
        if cycle.resumed.contains(&order.id) || self.refused.contains_key(&order.id) {
            // Stock already decided: only its status update is retried (or, refused by
            // the Order Service, left alone).
            cycle.report.fetched += 1;
            return;
        }
        if let Some(q) = self.quarantine.get(&order.id) {
            cycle.listed.insert(order.id);
            if q.status.is_some() || q.due > Instant::now() {
                // Held back: its own backoff decides when it is tried again.
                cycle.report.held += 1;
                return;
            }
            let (times, trace) = (q.times, q.trace.clone());
            self.quarantine.remove(&order.id);
            cycle.requeued.insert(order.id, (times, trace));
        }
        if cycle.report.fetched + cycle.page.len() as u64 >= self.max_orders_per_cycle {
            // More than was asked for (a service ignoring `limit`): left registered.
            return;
        }
        if let Some(&(decided, status)) = self.recent.get(order.id) {
            // Decided by this process and set, yet listed as registered again: the
            // Order Service lost the update or serves a stale list. Never decreased
            // twice: only the status is sent again.
            cycle.report.fetched += 1;
            let _fields = order_fields(&decided);
            log::error!(
                "order {}: listed as registered again although this worker set it {status}: \
                 the Order Service lost the update or serves a stale list; only its status is sent again",
                order.id
            );
            let task = self.journey.resume(
                decided,
                status,
                "listed as registered again after its status was set".into(),
                None,
                cycle.link.clone(),
            );
            cycle.resumed.insert(order.id);
            cycle.scheduler.wait(Service::Orders, Instant::now(), task);
            return;
        }
        cycle.page.push_back(order);
    }

    /// An order is done with for this cycle: its line, span, counts and bookkeeping.
    fn finish(&mut self, cycle: &mut Cycle, task: Task, outcome: Outcome) {
        let order = *task.order();
        {
            let _entered = task.enter();
            let quiet = match &outcome {
                Outcome::Ready | Outcome::DryRun => self.quiet_success,
                // Told when it entered quarantine; then in the reminders.
                Outcome::Quarantined { .. } => task.quarantined() > 0,
                // A resumed update still pending was told in an earlier cycle.
                Outcome::Pending { .. } => cycle.resumed.contains(&order.id),
                Outcome::Deferred {
                    cause: Deferral::Unavailable,
                    ..
                } => self.outages.iter().any(Outage::ongoing),
                _ => false,
            };
            log_outcome(&order, &outcome, quiet);
        }
        if instrument::active() {
            let mut attributes = vec![KeyValue::new("outcome", outcome.name())];
            if !outcome.reason_kind().is_empty() {
                attributes.push(KeyValue::new("reason", outcome.reason_kind()));
            }
            instrument::instruments()
                .orders_processed
                .add(1, &attributes);
        }
        if let Some(heartbeat) = &mut self.heartbeat {
            if matches!(
                outcome,
                Outcome::Ready
                    | Outcome::Blocked { .. }
                    | Outcome::Unknown { .. }
                    | Outcome::StatusRefused { .. }
            ) {
                heartbeat.orders_answered();
            }
            heartbeat.order_finished();
        }
        let resumed = cycle.resumed.contains(&order.id);
        match &outcome {
            Outcome::Ready | Outcome::Blocked { .. } | Outcome::Unknown { .. } => {
                let status = match outcome {
                    Outcome::Ready => OrderStatus::Ready,
                    Outcome::Blocked { .. } => OrderStatus::Blocked,
                    _ => OrderStatus::Unknown,
                };
                self.recent.insert(order.id, (order, status));
                if !cycle.resent.contains(&order.id) {
                    cycle.pager.left(order.id);
                }
            }
            Outcome::Pending { status, .. } => {
                self.pending.insert(
                    order.id,
                    PendingUpdate {
                        order,
                        status: *status,
                        reason: task.decision_reason().to_string(),
                        trace: Some(task.trace()),
                        decided_at: task.decided_at(),
                    },
                );
            }
            Outcome::StatusRefused { status, .. } => {
                self.refused.insert(order.id, *status);
            }
            Outcome::Deferred { cause, reason } => {
                let trace = task.trace();
                if trace.is_valid() {
                    self.deferred.insert(order.id, trace);
                }
                if *cause == Deferral::Fatal {
                    cycle.end_list(reason.clone());
                }
            }
            Outcome::DryRun | Outcome::Quarantined { .. } => {}
        }
        // A resumed update's success is not a new decision in this cycle's counts
        // unless it finished the order (as before: a pending update that goes through
        // counts as its outcome).
        if !(resumed
            && matches!(
                outcome,
                Outcome::Pending { .. } | Outcome::Quarantined { .. }
            ))
        {
            cycle.report.count(&outcome);
            if resumed || cycle.between {
                cycle.report.carried += 1;
            }
        }
        task.finish(&outcome);
    }
}

/// Orders as an exit line names them: `161 (ready), 170 (blocked)`, the first 20 and
/// how many more.
fn name_orders<S: std::fmt::Display>(orders: impl ExactSizeIterator<Item = (u64, S)>) -> String {
    const SHOWN: usize = 20;
    let more = orders.len().saturating_sub(SHOWN);
    let mut text = orders
        .take(SHOWN)
        .map(|(id, status)| format!("{id} ({status})"))
        .collect::<Vec<_>>()
        .join(", ");
    if more > 0 {
        text.push_str(&format!(" and {more} more"));
    }
    text
}

/// Quarantined orders as a line names them: `12 (ready: 409 ...), 15 (registered: ...)`.
fn name_quarantined<'a>(orders: impl ExactSizeIterator<Item = &'a Quarantined>) -> String {
    name_orders(orders.map(|q| {
        let status = q.status.map_or("registered", |s| s.as_str());
        (
            q.order.id,
            format!("{status}: {}", crate::logging::shorten(&q.cause, 120)),
        )
    }))
}

/// The delay of an order's `times`-th quarantine in a row: [`QUARANTINE_FIRST`],
/// doubled each time, up to [`QUARANTINE_MAX`], with 10% of jitter (`jitter` in
/// `[0, 1)`).
pub fn quarantine_delay(times: u32, jitter: f64) -> Duration {
    let base = QUARANTINE_FIRST
        .saturating_mul(1u32 << times.saturating_sub(1).min(16))
        .min(QUARANTINE_MAX);
    base.mul_f64(0.9 + 0.2 * jitter.clamp(0.0, 1.0))
}

/// The one line per order outcome (the order's fields come from its guard); with
/// `quiet`, at debug.
fn log_outcome(order: &Order, outcome: &Outcome, quiet: bool) {
    let level = match outcome {
        _ if quiet => log::Level::Debug,
        Outcome::Unknown { .. } | Outcome::StatusRefused { .. } => log::Level::Error,
        Outcome::Pending {
            status: OrderStatus::Ready,
            ..
        } => log::Level::Error,
        // Left registered, nothing taken: the next cycle or run takes it again.
        Outcome::Deferred { .. } => log::Level::Info,
        Outcome::Pending { .. } | Outcome::Quarantined { .. } => log::Level::Warn,
        _ => log::Level::Info,
    };
    let reason = outcome.reason();
    log::log!(
        level,
        outcome = outcome.name(), reason = reason;
        "order {} ({} x{}): {}{}{}",
        order.id,
        order.wood_type,
        order.quantity,
        outcome.name(),
        if reason.is_empty() { "" } else { ": " },
        reason
    );
}

impl Worker {
    /// The cycle's summary: at warn when it leaves something for a person (an order
    /// `unknown`, the list not fetched or not finished; in `once` also orders pending
    /// or quarantined, which `run` names in its reminders), else at info; in `run`, an
    /// idle cycle at debug, with one info line when work resumes, and a cycle during an
    /// outage already told at debug. `once`'s summary is its closing line.
    fn log_summary(&mut self, r: &CycleReport) {
        let once = self.quiet_success;
        let idle = r.fetched == 0 && r.carried == 0 && r.waiting == 0;
        // A stop, or the cycle's cap on orders, ends a list early with nothing wrong.
        let ended_badly = r
            .ended_early
            .as_deref()
            .is_some_and(|why| !self.stop.requested() && !why.contains("--max-orders-per-cycle"));
        let person = r.unknown > 0
            || r.skipped > 0
            || r.list_failed
            || ended_badly
            || (once && (r.pending > 0 || r.quarantined > 0));
        let told = self.outage_level(log::Level::Warn) == log::Level::Debug;
        let level = match (once, person) {
            (true, true) => log::Level::Warn,
            (true, false) => log::Level::Info,
            (false, _) if (idle && !person) || (person && told) => log::Level::Debug,
            (false, true) => log::Level::Warn,
            (false, false) => log::Level::Info,
        };
        if self.idle && !idle && !self.quiet_success && self.idle_told {
            log::info!("orders to handle: cycles are logged again");
            self.idle_told = false;
        }
        if idle && !self.idle {
            log::info!("no registered orders left; idle cycles are logged at debug");
            self.idle_told = true;
        }
        self.idle = idle;
        log::log!(
            level,
            fetched = r.fetched, carried = r.carried, ready = r.ready, blocked = r.blocked,
            unknown = r.unknown, deferred = r.deferred, pending = r.pending, waiting = r.waiting,
            skipped = r.skipped, dry_run = r.dry_run, duration_ms = r.duration.as_millis() as u64;
            "cycle done in {} ms: {}",
            r.duration.as_millis(),
            r.prose()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::{RECENT_DECISIONS, Remembered};

    #[test]
    fn remembered_forgets_the_oldest_and_never_a_value_put_in_again() {
        let mut r = Remembered::default();
        r.insert(1, "first");
        assert_eq!(r.take(1), Some("first"));
        r.insert(1, "again");
        for id in 2..=RECENT_DECISIONS as u64 {
            r.insert(id, "other");
        }
        // Order 1's first put, taken out already, is the oldest entry, now pushed out:
        // its newer value stays.
        assert_eq!(r.get(1), Some(&"again"));
        assert_eq!(r.values.len(), RECENT_DECISIONS);
        // Then the oldest value still in (order 1's second put) goes first.
        r.insert(RECENT_DECISIONS as u64 + 1, "newest");
        assert_eq!(r.get(1), None);
        assert_eq!(r.get(2), Some(&"other"));
        assert_eq!(r.values.len(), RECENT_DECISIONS);
    }
}
