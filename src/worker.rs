//! The cycle and the loop. A cycle is a small single-threaded scheduler: it pages
//! through the registered orders and takes them one at a time; an order whose call
//! failed transiently waits for its next attempt while the worker goes on with the
//! others (see [`crate::schedule`] for what runs next and when a service is out of
//! use). Between cycles the loop sleeps until a stop is requested.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use crate::config::{Config, Shard};
use crate::heartbeat::Heartbeat;
use crate::http::CallError;
use crate::orders::{Order, OrderStatus};
use crate::outage::{Line, Outage};
use crate::outcome::{Deferral, Outcome};
use crate::pager::{PageEnd, Pager};
use crate::process::{Call, InFlight, Journal, Journey, NoJournal, StepEnd, Task, order_fields};
pub use crate::report::CycleReport;
use crate::retry::{Attempts, pace};
use crate::schedule::{Next, Rules, Scheduler, Service, Work};
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
    reason: String,
    /// The order's trace, continued by the retries.
    trace: Option<SpanContext>,
}

/// The last [`RECENT_DECISIONS`] decisions, oldest forgotten first.
#[derive(Debug, Default)]
struct Recent {
    order: VecDeque<u64>,
    status: HashMap<u64, (Order, OrderStatus)>,
}

impl Recent {
    fn insert(&mut self, order: Order, status: OrderStatus) {
        if self.status.insert(order.id, (order, status)).is_none() {
            self.order.push_back(order.id);
        }
        while self.order.len() > RECENT_DECISIONS {
            if let Some(old) = self.order.pop_front() {
                self.status.remove(&old);
            }
        }
    }

    fn get(&self, id: u64) -> Option<(Order, OrderStatus)> {
        self.status.get(&id).copied()
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
    recent: Recent,
    pending_cap: usize,
    max_orders_per_cycle: u64,
    /// `once`: how long pending status updates are tried after the cycle.
    pending_deadline: Duration,
    /// Each service's outage, across cycles, so that one that stays unreachable is
    /// logged once a minute, not at every call ([`crate::outage`]).
    outages: [Outage; 2],
    /// The last cycle found nothing to do: idle cycles are logged at debug.
    idle: bool,
    /// `once`: an order made `ready` is logged at debug (a big backlog's cron mail
    /// holds only what went wrong and the summary).
    quiet_success: bool,
    /// Rewritten as orders finish and after every cycle, for `healthcheck`.
    heartbeat: Option<Heartbeat>,
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
        }
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
            recent: Recent::default(),
            pending_cap: PENDING_CAP,
            max_orders_per_cycle: config.max_orders_per_cycle,
            pending_deadline: config.pending_deadline,
            outages: [Outage::default(), Outage::default()],
            // Start-up has said enough: a first cycle with nothing to do says no more.
            idle: true,
            quiet_success: false,
            heartbeat: None,
        };
        for (order, state, trace) in recovered {
            let (status, reason) = match state {
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
                },
            );
        }
        if !worker.pending.is_empty() {
            log::warn!(
                "state file: {} orders left in flight by a previous run; only their status updates are retried",
                worker.pending.len()
            );
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
        let mut report = self.cycle_with(None, false).0;
        if !self.pending.is_empty() && !self.stop.requested() {
            self.settle(&mut report);
        }
        report
    }

    /// `once`'s wait for the status updates left pending by its cycle (their service
    /// was down): rounds of attempts, a backoff apart (capped at `--retry-cap`), each
    /// round respecting the Order Service's health, until they land, a stop is
    /// requested, or the deadline passes. No new order is taken meanwhile. Without a
    /// state file the process is the only record that their stock is taken: a new run
    /// would take it again.
    fn settle(&mut self, report: &mut CycleReport) {
        let started = Instant::now();
        let deadline = started + self.pending_deadline;
        log::warn!(
            "{} status updates pending: orders {}; trying them until they land, a stop, or \
             --pending-deadline ({} s)",
            self.pending.len(),
            self.pending_orders(),
            self.pending_deadline.as_secs_f64()
        );
        let mut round = 0;
        while !self.pending.is_empty() {
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
        let mut report = std::mem::take(&mut cycle.report);
        report.pending = self.pending.len() as u64;
        report.waiting = cycle.scheduler.len() as u64;
        report.duration = started.elapsed();
        self.log_summary(&report);
        if let Some(heartbeat) = &mut self.heartbeat {
            heartbeat.cycle_ended(&report);
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
        // Only a cycle that saw the whole list knows how many orders were registered.
        if !report.list_failed && report.ended_early.is_none() {
            metrics.orders_registered.record(report.fetched, &shard);
        }
        (report, cycle)
    }

    /// Between two cycles of `run`: the orders carried over run when their retry is
    /// due, until `interval` has passed; outcomes reached meanwhile count in the next
    /// cycle's report. `None` after a stop request.
    ///
    /// Once the Stock Service is down because it stalled
    /// [`crate::schedule::STALLS_DOWN`] times in a row (in the cycle or here), the next
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
        for task in cycle.scheduler.drain_service(Service::Stock) {
            let outcome = task.abandon("stop requested", Deferral::Stopped);
            self.finish(cycle, task, outcome);
        }
        // A stop is no error: the rest stays registered for the next run.
        cycle.end_list_at("stop requested".into(), log::Level::Info);
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
        for task in cycle.scheduler.drain() {
            let outcome = task.abandon("stop requested", Deferral::Stopped);
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
            let task = self.journey.resume(
                update.order,
                update.status,
                update.reason,
                update.trace,
                cycle.link.clone(),
            );
            cycle.resumed.insert(id);
            cycle.scheduler.wait(Service::Orders, now, task);
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
            let work = Work {
                new_orders: !cycle.page.is_empty(),
                page_low: cycle.page.is_empty()
                    || (!cycle.no_refill && cycle.page.len() <= self.page_size as usize / 2),
                next_page: cycle.next_page,
            };
            match cycle.scheduler.next(Instant::now(), work) {
                Next::Run(task) => self.run_task(cycle, task),
                Next::NewOrder => {
                    let Some(order) = cycle.page.pop_front() else {
                        continue;
                    };
                    cycle.report.fetched += 1;
                    let task = self.journey.take(order, cycle.link.clone());
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
            if let Some(call) = ran.call {
                self.outage(&call);
                cycle
                    .scheduler
                    .record(call.service, Instant::now(), call.verdict, &call.detail);
            }
            match ran.end {
                StepEnd::Finished(task, outcome) => {
                    self.finish(cycle, task, outcome);
                    return;
                }
                // The order in hand is finished even after a stop request.
                StepEnd::Then(next, service) => {
                    if cycle.scheduler.health(service).usable(Instant::now()) {
                        task = next;
                        continue;
                    }
                    cycle.scheduler.wait(service, Instant::now(), next);
                    return;
                }
                // After a stop request, a decrease is not tried again; a status update is,
                // within the stop's grace ([`Worker::wind_down`]).
                StepEnd::Again(task, Service::Stock, _, _) if self.stop.requested() => {
                    let outcome = task.abandon("stop requested", Deferral::Stopped);
                    self.finish(cycle, task, outcome);
                    return;
                }
                StepEnd::Again(task, service, delay, pace) => {
                    let now = Instant::now();
                    let due = cycle.scheduler.retry_at(service, now, delay, pace);
                    cycle.scheduler.wait(service, due, task);
                    return;
                }
            }
        }
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
        let call = Call::of(Service::Orders, &result);
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
                                log::Level::Warn
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
                        if let CallError::Fatal { .. } = e {
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
        let mut invalid_log = crate::orders::InvalidLog::new();
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
            log::warn!(
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
        entry: Result<Order, crate::orders::InvalidOrder>,
        invalid_log: &mut crate::orders::InvalidLog,
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
        if cycle.report.fetched + cycle.page.len() as u64 >= self.max_orders_per_cycle {
            // More than was asked for (a service ignoring `limit`): left registered.
            return;
        }
        if let Some((decided, status)) = self.recent.get(order.id) {
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
                self.recent.insert(order, status);
                if !cycle.resent.contains(&order.id) {
                    cycle.pager.left(order.id);
                }
            }
            Outcome::Pending { status, reason } => {
                self.pending.insert(
                    order.id,
                    PendingUpdate {
                        order,
                        status: *status,
                        reason: reason.clone(),
                        trace: Some(task.trace()),
                    },
                );
            }
            Outcome::StatusRefused { status, .. } => {
                self.refused.insert(order.id, *status);
            }
            Outcome::Deferred {
                cause: Deferral::Fatal,
                reason,
            } => cycle.end_list(reason.clone()),
            Outcome::Deferred { .. } | Outcome::DryRun => {}
        }
        // A resumed update's success is not a new decision in this cycle's counts
        // unless it finished the order (as before: a pending update that goes through
        // counts as its outcome).
        if !(resumed && matches!(outcome, Outcome::Pending { .. })) {
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
fn name_orders(orders: impl ExactSizeIterator<Item = (u64, OrderStatus)>) -> String {
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
        Outcome::Deferred { .. } | Outcome::Pending { .. } => log::Level::Warn,
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
    /// The cycle's summary: at info (warn when work is left); an idle cycle (nothing
    /// listed, waiting or pending) at debug, with one info line when work resumes; a
    /// cycle during an outage already told, at debug.
    fn log_summary(&mut self, r: &CycleReport) {
        // Nothing handled: an idle cycle, or one whose list failed during an outage (the
        // outage has lines of its own).
        let idle = r.fetched == 0 && r.carried == 0 && r.waiting == 0 && r.pending == 0;
        let level = if (idle && r.complete())
            || (!r.complete() && self.outage_level(log::Level::Warn) == log::Level::Debug)
        {
            log::Level::Debug
        } else if r.complete() {
            log::Level::Info
        } else {
            log::Level::Warn
        };
        if self.idle && !idle && !self.quiet_success {
            log::info!("orders to handle: cycles are logged again");
        }
        if idle && !self.idle {
            log::info!("no registered orders left; idle cycles are logged at debug");
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
