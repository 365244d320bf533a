//! The cycle and the loop. A cycle is a small single-threaded scheduler: it pages
//! through the registered orders and takes them one at a time; an order whose call
//! failed transiently waits for its next attempt while the worker goes on with the
//! others (see [`crate::cycle::schedule`] for what runs next and when a service is out of
//! use). Between cycles the loop sleeps until a stop is requested.
//!
//! [`Worker`]'s methods are split by job: the loop and the cycle here, then one file
//! each in `worker/`: the steps (`steps.rs`), the intake of pages and orders
//! (`intake.rs`), quarantine (`quarantine.rs`), the wind-down at the end of a cycle or
//! on a stop (`wind_down.rs`), and what is logged and counted (`reporting.rs`).

mod intake;
mod quarantine;
mod reporting;
mod steps;
mod wind_down;

use quarantine::name_quarantined;
pub use quarantine::quarantine_delay;

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
