//! The cycle and the loop: paging through the registered orders, handling them one at
//! a time, retrying pending status updates, stopping early when a service keeps
//! failing, and sleeping between cycles until a stop is requested.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use crate::config::{Config, Shard};
use crate::heartbeat::Heartbeat;
use crate::http::{CallError, Http, RetryPolicy};
use crate::orders::{Order, OrderStatus, OrdersClient};
use crate::process::{Deferral, InFlight, Journal, Journey, NoJournal, Outcome};
use crate::stock::StockClient;
use crate::stop::Stop;
use crate::telemetry::{self, Scope};
use opentelemetry::KeyValue;
use opentelemetry::trace::SpanKind;

/// Orders in a row for which one service failed every attempt before the cycle stops
/// taking new orders (the rest stay `registered` for the next cycle).
pub const FAILURES_IN_A_ROW: u32 = 3;

/// What one cycle did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CycleReport {
    /// Orders seen in the registered list (each once per cycle).
    pub fetched: u64,
    pub ready: u64,
    pub blocked: u64,
    pub unknown: u64,
    /// Left `registered` with nothing taken, for a later cycle.
    pub deferred: u64,
    /// Decided but status not set (stock taken for `ready`), after this cycle's retries.
    pub pending: u64,
    /// Listed entries that could not be acted on (bad data) or whose status update was refused.
    pub skipped: u64,
    /// Orders only logged because of `--dry-run`.
    pub dry_run: u64,
    /// The registered list could not be fetched (from the start, or part way).
    pub list_failed: bool,
    /// Why the cycle stopped taking orders before the end of the list, if it did.
    pub ended_early: Option<String>,
    pub duration: Duration,
}

impl CycleReport {
    /// True when every fetched order reached a final state and nothing is left to retry:
    /// `once` exits 0 then, 1 otherwise.
    pub fn complete(&self) -> bool {
        !self.list_failed
            && self.ended_early.is_none()
            && self.deferred == 0
            && self.pending == 0
            && self.skipped == 0
    }

    fn count(&mut self, outcome: &Outcome) {
        match outcome {
            Outcome::Ready => self.ready += 1,
            Outcome::Blocked { .. } => self.blocked += 1,
            Outcome::Unknown { .. } => self.unknown += 1,
            Outcome::Deferred { .. } => self.deferred += 1,
            Outcome::Pending { .. } => {} // counted from the pending list at the end
            Outcome::StatusRefused { .. } => self.skipped += 1,
            Outcome::DryRun => self.dry_run += 1,
        }
    }
}

/// An order whose fate is decided but whose status is not yet set.
#[derive(Debug, Clone)]
struct PendingUpdate {
    order: Order,
    status: OrderStatus,
    reason: String,
}

/// Consecutive orders for which a service failed every attempt.
#[derive(Debug, Default)]
struct Streaks {
    stock: u32,
    orders: u32,
}

impl Streaks {
    /// Updates the streaks with an outcome; returns why to stop the cycle, if it must.
    fn record(&mut self, outcome: &Outcome) -> Option<String> {
        match outcome {
            Outcome::Deferred {
                cause: Deferral::Fatal,
                reason,
            } => return Some(reason.clone()),
            // A decrease that failed every attempt, or got no reply at all, counts
            // against the Stock Service: a service that never answers must not turn
            // the whole backlog unknown.
            Outcome::Deferred {
                cause: Deferral::Unavailable,
                reason,
            }
            | Outcome::Unknown { reason } => {
                self.stock += 1;
                if self.stock >= FAILURES_IN_A_ROW {
                    return Some(format!(
                        "Stock Service failed for {} orders in a row, last: {reason}",
                        self.stock
                    ));
                }
            }
            Outcome::Deferred {
                cause: Deferral::Stopped,
                ..
            }
            | Outcome::DryRun => {}
            Outcome::Pending { reason, .. } => {
                self.stock = 0;
                self.orders += 1;
                if self.orders >= FAILURES_IN_A_ROW {
                    return Some(format!(
                        "Order Service failed for {} orders in a row, last: {reason}",
                        self.orders
                    ));
                }
            }
            _ => {
                self.stock = 0;
                self.orders = 0;
            }
        }
        None
    }
}

/// Paging through a list that shrinks as statuses change.
///
/// Orders that leave the list (ready, blocked, unknown) shift the ones behind them
/// forward, so the next page starts after the orders that *stay* (`skip` counts only
/// those). Other replicas' orders (with `--shard`) do not count: their replicas remove
/// them at their own pace; they are remembered, and only a full page holding nothing new
/// moves `skip` past the ones on it. An order seen twice in one cycle is not handled
/// again, and a page identical to the one before ends the paging, so no page is fetched
/// forever, even from a service that ignores `skip`.
#[derive(Debug, Default)]
pub struct Pager {
    skip: u64,
    stayed: HashSet<u64>,
    passed: HashSet<u64>,
    new_in_page: u32,
    passed_in_page: u64,
    page_hash: u64,
    last_hash: Option<u64>,
}

/// What to do after a page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageEnd {
    /// Fetch the next page at [`Pager::skip`].
    Fetch,
    /// The page was not full: the list is done.
    Last,
    /// The list is not moving (nothing new, or the same page again): stop.
    NothingNew,
}

impl Pager {
    /// Where the next page starts.
    pub fn skip(&self) -> u64 {
        self.skip
    }

    /// True if the entry is new to this cycle and must be handled (an entry without a
    /// valid id always is).
    pub fn admit(&mut self, id: Option<u64>) -> bool {
        self.page_hash = self
            .page_hash
            .wrapping_mul(0x100_0000_01b3)
            .wrapping_add(id.unwrap_or(0) + 1);
        match id {
            Some(id) if self.passed.contains(&id) => {
                self.passed_in_page += 1;
                false
            }
            Some(id) if self.stayed.contains(&id) => false,
            _ => {
                self.new_in_page += 1;
                true
            }
        }
    }

    /// The admitted entry stays in the list: later pages start behind it.
    pub fn stays(&mut self, id: Option<u64>) {
        self.skip += 1;
        if let Some(id) = id {
            self.stayed.insert(id);
        }
    }

    /// The admitted entry is another replica's: remembered, `skip` unchanged.
    pub fn passes(&mut self, id: u64) {
        self.passed.insert(id);
        self.passed_in_page += 1;
    }

    /// After a page of `len` entries, when `page_size` were asked for.
    pub fn after_page(&mut self, len: usize, page_size: u32) -> PageEnd {
        let new = std::mem::take(&mut self.new_in_page);
        let passed = std::mem::take(&mut self.passed_in_page);
        let hash = std::mem::take(&mut self.page_hash);
        if len < page_size as usize {
            return PageEnd::Last;
        }
        if self.last_hash.replace(hash) == Some(hash) {
            return PageEnd::NothingNew;
        }
        if new == 0 {
            if passed == 0 {
                return PageEnd::NothingNew;
            }
            self.skip += passed;
        }
        PageEnd::Fetch
    }
}

/// The worker: its clients, what it remembers between cycles, and the stop flag.
pub struct Worker {
    journey: Journey,
    page_size: u32,
    shard: Option<Shard>,
    stop: Stop,
    /// Decided orders whose status is still to be set, by id. Survives cycles (and
    /// restarts, with a state file): an order here never has its stock decreased again.
    pending: BTreeMap<u64, PendingUpdate>,
    /// Orders whose status update the Order Service refused (`400`/`404`): they may stay
    /// `registered`, and are never handled again by this process.
    refused: HashSet<u64>,
    /// Rewritten after every finished order and every cycle, for `healthcheck`.
    heartbeat: Option<Heartbeat>,
}

impl Worker {
    pub fn new(config: &Config, stop: Stop) -> Worker {
        Worker::with_journal(config, stop, Box::new(NoJournal))
    }

    /// A worker whose steps are written to `journal`; the orders a previous run left in
    /// flight become pending status updates: `ready`/`blocked`/`unknown` as decided, and
    /// `unknown` for a decrease whose outcome was never recorded (never sent again).
    pub fn with_journal(config: &Config, stop: Stop, journal: Box<dyn Journal>) -> Worker {
        let recovered = journal.in_flight();
        let http = Http::new(config.http_timeout);
        let journey = Journey {
            orders: OrdersClient::new(http.clone(), &config.orders_url),
            stock: StockClient::new(http, &config.stocks_url, config.decrease_timeout),
            policy: RetryPolicy {
                max_retries: config.max_retries,
                base: config.retry_base,
                cap: config.retry_cap,
            },
            error_rate: config.error_rate,
            dry_run: config.dry_run,
            journal,
        };
        let mut worker = Worker {
            journey,
            page_size: config.page_size,
            shard: config.shard,
            stop,
            pending: BTreeMap::new(),
            refused: HashSet::new(),
            heartbeat: None,
        };
        for (order, state) in recovered {
            let (status, reason) = match state {
                InFlight::Decided(status) => (
                    status,
                    "decided before a restart; status update retried".to_string(),
                ),
                InFlight::Sent => {
                    log::error!(
                        order_id = order.id, wood_type = order.wood_type.as_str(), quantity = order.quantity;
                        "order {}: a decrease was sent before a restart and its outcome is not known; \
                         it is set unknown and never sent again: reconcile by hand",
                        order.id
                    );
                    if let Err(e) = worker.journey.journal.decided(&order, OrderStatus::Unknown) {
                        log::error!(
                            "order {}: could not write its decision to the state file: {e}",
                            order.id
                        );
                    }
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

    /// Records a finished order in the heartbeat; an outcome that set a status means the
    /// Order Service answered.
    fn beat_order(&mut self, outcome: &Outcome) {
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
    }

    /// Orders whose status update is still pending.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Runs cycles every `interval` (counted from the end of a cycle) until a stop is
    /// requested. Returns the last cycle's report.
    pub fn run_loop(&mut self, interval: Duration) -> CycleReport {
        log::info!("worker started: a cycle every {} s", interval.as_secs_f64());
        loop {
            let report = self.cycle();
            if self.stop.requested() || !self.stop.sleep(interval) {
                log::info!("stop requested: worker stopping");
                return report;
            }
        }
    }

    /// One cycle: every order registered at its start, then the pending status updates.
    pub fn cycle(&mut self) -> CycleReport {
        let started = Instant::now();
        let scope = Scope::start("cycle", SpanKind::Internal, self.shard_attribute());
        let mut report = CycleReport::default();
        self.drain(&mut report);
        self.retry_pending(&mut report);
        report.pending = self.pending.len() as u64;
        report.duration = started.elapsed();
        log_summary(&report);
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
        let metrics = telemetry::instruments();
        let shard = self.shard_attribute();
        metrics
            .cycle_duration
            .record(report.duration.as_secs_f64(), &shard);
        metrics.orders_pending.record(report.pending, &shard);
        // Only a cycle that saw the whole list knows how many orders were registered.
        if !report.list_failed && report.ended_early.is_none() {
            metrics.orders_registered.record(report.fetched, &shard);
        }
        report
    }

    fn shard_attribute(&self) -> Vec<KeyValue> {
        self.shard
            .map(|s| KeyValue::new("ordermanagement.shard", s.to_string()))
            .into_iter()
            .collect()
    }

    /// Pages through the registered list (see [`Pager`]), handling each order once.
    fn drain(&mut self, report: &mut CycleReport) {
        let mut pager = Pager::default();
        let mut streaks = Streaks::default();
        let orders = self.journey.orders.clone();
        loop {
            if self.stop.requested() {
                report.ended_early = Some("stop requested".into());
                return;
            }
            let skip = pager.skip();
            let page = self.journey.policy.run(
                "fetching registered orders",
                Some(&self.stop),
                |attempt| orders.list_registered(skip, self.page_size, attempt),
            );
            let page = match page {
                Ok(page) => {
                    if let Some(heartbeat) = &mut self.heartbeat {
                        heartbeat.orders_answered();
                    }
                    page
                }
                Err(e) => {
                    log::error!("could not fetch registered orders (skip {skip}): {e}");
                    report.list_failed = true;
                    if let CallError::Fatal { .. } = e {
                        report.ended_early = Some(e.to_string());
                    }
                    return;
                }
            };
            let len = page.len();
            for entry in page {
                let id = match &entry {
                    Ok(order) => Some(order.id),
                    Err(invalid) => invalid.id,
                };
                if !pager.admit(id) {
                    continue;
                }
                // Another replica's order (an entry with no valid id is shard 0's to report).
                if let Some(shard) = self.shard
                    && !shard.contains(id.unwrap_or(0))
                {
                    match id {
                        Some(id) => pager.passes(id),
                        None => pager.stays(None),
                    }
                    continue;
                }
                if self.stop.requested() {
                    report.ended_early = Some("stop requested".into());
                    return;
                }
                report.fetched += 1;
                let order = match entry {
                    Ok(order) => order,
                    Err(invalid) => {
                        report.skipped += 1;
                        pager.stays(id);
                        log::error!(
                            order_id = id.unwrap_or(0), outcome = "skipped", reason = invalid.problem.as_str();
                            "order {}: skipped, bad data from the Order Service: {}",
                            id.map_or_else(|| "(no valid id)".into(), |id| id.to_string()),
                            invalid.problem
                        );
                        continue;
                    }
                };
                if self.pending.contains_key(&order.id) || self.refused.contains(&order.id) {
                    // Stock already decided: only its status update is retried, below
                    // (or, refused by the Order Service, left alone).
                    pager.stays(id);
                    continue;
                }
                let (scope, _fields) = order_scope(&order);
                let outcome = self.journey.process(&order, &self.stop);
                finish_order(&scope, &order, &outcome);
                self.beat_order(&outcome);
                report.count(&outcome);
                if !outcome.left_registered() {
                    pager.stays(id);
                }
                let stop_reason = streaks.record(&outcome);
                match outcome {
                    Outcome::Pending { status, reason } => {
                        let update = PendingUpdate {
                            order,
                            status,
                            reason,
                        };
                        self.pending.insert(order.id, update);
                    }
                    Outcome::StatusRefused { .. } => {
                        self.refused.insert(order.id);
                    }
                    _ => {}
                }
                if let Some(reason) = stop_reason {
                    log::error!(
                        "cycle ended early, the rest stays registered for the next cycle: {reason}"
                    );
                    report.ended_early = Some(reason);
                    return;
                }
            }
            match pager.after_page(len, self.page_size) {
                PageEnd::Fetch => {}
                PageEnd::Last => return,
                PageEnd::NothingNew => {
                    log::warn!(
                        "the registered list returned only orders already seen this cycle (skip {skip}); paging stops"
                    );
                    return;
                }
            }
        }
    }

    /// Retries the status update of every pending order; stops after
    /// [`FAILURES_IN_A_ROW`] failures in a row.
    fn retry_pending(&mut self, report: &mut CycleReport) {
        let ids: Vec<u64> = self.pending.keys().copied().collect();
        let mut failures = 0;
        for id in ids {
            if failures >= FAILURES_IN_A_ROW {
                log::error!(
                    "Order Service keeps failing: {} status updates stay pending",
                    self.pending.len()
                );
                return;
            }
            let Some(update) = self.pending.remove(&id) else {
                continue;
            };
            let (scope, _fields) = order_scope(&update.order);
            // After a stop request the waits between attempts are cut short: the update
            // stays pending (and in the state file) rather than delaying the exit.
            let result = self
                .journey
                .set_status(&update.order, update.status, Some(&self.stop));
            let outcome =
                crate::process::after_status_update(update.status, update.reason.clone(), result);
            if let Outcome::Pending { .. } = &outcome {
                failures += 1;
                finish_order(&scope, &update.order, &outcome);
                self.beat_order(&outcome);
                self.pending.insert(id, update);
                continue;
            }
            failures = 0;
            if let Outcome::StatusRefused { .. } = outcome {
                self.refused.insert(id);
            }
            finish_order(&scope, &update.order, &outcome);
            self.beat_order(&outcome);
            report.count(&outcome);
        }
    }
}

/// The span of one order's journey (current until dropped); the order id also travels
/// to the services as baggage when the baggage propagator is on. The guard puts the
/// order's fields on every JSON log line until dropped.
fn order_scope(order: &Order) -> (Scope, crate::logging::OrderGuard) {
    let fields = crate::logging::order_fields(crate::logging::OrderFields {
        id: order.id,
        wood_type: order.wood_type.as_str(),
        quantity: order.quantity,
    });
    let scope = Scope::with_baggage(
        "order",
        SpanKind::Internal,
        vec![
            KeyValue::new("ordermanagement.order.id", order.id as i64),
            KeyValue::new("ordermanagement.order.wood_type", order.wood_type.as_str()),
            KeyValue::new("ordermanagement.order.quantity", i64::from(order.quantity)),
        ],
        vec![KeyValue::new("ordermanagement.order.id", order.id as i64)],
    );
    (scope, fields)
}

/// Logs the outcome (inside the order's span, so the line carries its trace) and
/// records it on the span and in the metrics.
fn finish_order(scope: &Scope, order: &Order, outcome: &Outcome) {
    log_outcome(order, outcome);
    scope.set(vec![
        KeyValue::new("ordermanagement.order.outcome", outcome.name()),
        KeyValue::new("ordermanagement.order.reason", outcome.reason().to_string()),
    ]);
    let fine = matches!(
        outcome,
        Outcome::Ready
            | Outcome::DryRun
            | Outcome::Deferred {
                cause: Deferral::Stopped,
                ..
            }
    );
    if !fine {
        scope.fail(format!("{}: {}", outcome.name(), outcome.reason()));
    }
    let mut attributes = vec![KeyValue::new("outcome", outcome.name())];
    if !outcome.reason_kind().is_empty() {
        attributes.push(KeyValue::new("reason", outcome.reason_kind()));
    }
    telemetry::instruments()
        .orders_processed
        .add(1, &attributes);
}

/// The one line per order outcome, with its fields as key-values as well.
fn log_outcome(order: &Order, outcome: &Outcome) {
    let level = match outcome {
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
        order_id = order.id, wood_type = order.wood_type.as_str(), quantity = order.quantity,
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

fn log_summary(r: &CycleReport) {
    let level = if r.complete() {
        log::Level::Info
    } else {
        log::Level::Warn
    };
    log::log!(
        level,
        fetched = r.fetched, ready = r.ready, blocked = r.blocked, unknown = r.unknown,
        deferred = r.deferred, pending = r.pending, skipped = r.skipped,
        dry_run = r.dry_run, duration_ms = r.duration.as_millis() as u64;
        "cycle done in {} ms{}",
        r.duration.as_millis(),
        if r.list_failed { " (order list could not be fetched)" } else { "" }
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deferred(cause: Deferral) -> Outcome {
        Outcome::Deferred {
            reason: "500".into(),
            cause,
        }
    }

    /// One cycle of replicas sharing a registered list (ascending ids), each draining it
    /// with its own `Pager` one page at a time, in turns; `stays` decides which orders
    /// stay registered. Returns, per replica, the ids it handled and the pages it fetched.
    fn simulate_cycle(
        registered: &mut Vec<u64>,
        page_size: u32,
        shards: u64,
        stays: &dyn Fn(u64) -> bool,
    ) -> (Vec<Vec<u64>>, Vec<usize>) {
        let mut pagers: Vec<Pager> = (0..shards).map(|_| Pager::default()).collect();
        let mut done = vec![false; shards as usize];
        let mut handled = vec![Vec::new(); shards as usize];
        let mut pages = vec![0; shards as usize];
        while done.iter().any(|d| !d) {
            for r in 0..shards as usize {
                if done[r] {
                    continue;
                }
                pages[r] += 1;
                assert!(pages[r] < 10_000, "paging does not end");
                let pager = &mut pagers[r];
                let page: Vec<u64> = registered
                    .iter()
                    .copied()
                    .skip(pager.skip() as usize)
                    .take(page_size as usize)
                    .collect();
                for &id in &page {
                    if !pager.admit(Some(id)) {
                        continue;
                    }
                    if id % shards != r as u64 {
                        pager.passes(id);
                        continue;
                    }
                    handled[r].push(id);
                    if stays(id) {
                        pager.stays(Some(id));
                    } else {
                        registered.retain(|x| *x != id);
                    }
                }
                done[r] = pager.after_page(page.len(), page_size) != PageEnd::Fetch;
            }
        }
        (handled, pages)
    }

    fn simulate(total: u64, page_size: u32, stays: impl Fn(u64) -> bool) -> (Vec<u64>, usize) {
        let mut registered: Vec<u64> = (1..=total).collect();
        let (mut handled, pages) = simulate_cycle(&mut registered, page_size, 1, &stays);
        (handled.remove(0), pages[0])
    }

    #[test]
    fn paging_a_shrinking_list_handles_every_order_once() {
        let (handled, pages) = simulate(1050, 100, |_| false);
        assert_eq!(handled, (1..=1050).collect::<Vec<_>>());
        assert_eq!(pages, 11);
        let (handled, _) = simulate(1000, 100, |id| id % 3 == 0);
        assert_eq!(handled, (1..=1000).collect::<Vec<_>>());
        let (handled, pages) = simulate(500, 50, |_| true);
        assert_eq!(handled, (1..=500).collect::<Vec<_>>());
        assert_eq!(pages, 11);
    }

    /// Replicas paging at once may step past a few of their own orders in one cycle
    /// (the others remove orders behind their back); those stay registered for the next
    /// cycle. Across cycles each order is handled exactly once, by its own replica.
    #[test]
    fn sharded_replicas_paging_together_handle_each_of_their_orders_once() {
        for shards in [2, 3, 4] {
            let mut registered: Vec<u64> = (1..=2000).collect();
            let mut handled = vec![Vec::new(); shards as usize];
            let mut cycles = 0;
            while !registered.is_empty() {
                cycles += 1;
                assert!(
                    cycles <= 4,
                    "{shards} replicas: {} left after {cycles} cycles",
                    registered.len()
                );
                let (ids, _) = simulate_cycle(&mut registered, 100, shards, &|_| false);
                for (r, ids) in ids.into_iter().enumerate() {
                    handled[r].extend(ids);
                }
            }
            for (r, ids) in handled.iter_mut().enumerate() {
                ids.sort_unstable();
                let mine: Vec<u64> = (1..=2000).filter(|id| id % shards == r as u64).collect();
                assert_eq!(ids, &mine, "replica {r} of {shards}");
            }
        }
    }

    #[test]
    fn a_list_that_ignores_skip_ends_the_paging() {
        let mut pager = Pager::default();
        for id in 1..=10 {
            assert!(pager.admit(Some(id)));
            pager.stays(Some(id));
        }
        assert_eq!(pager.after_page(10, 10), PageEnd::Fetch);
        for id in 1..=10 {
            assert!(!pager.admit(Some(id)));
        }
        assert_eq!(pager.after_page(10, 10), PageEnd::NothingNew);
        // Entries without an id are new every time, but the same page twice ends it.
        let mut pager = Pager::default();
        let mut ends = Vec::new();
        for _ in 0..2 {
            for id in [None, Some(1), Some(2)] {
                if pager.admit(id) {
                    pager.stays(id);
                }
            }
            ends.push(pager.after_page(3, 3));
        }
        assert_eq!(ends, [PageEnd::Fetch, PageEnd::NothingNew]);
    }

    #[test]
    fn a_full_page_of_known_other_replicas_orders_is_stepped_over() {
        let mut pager = Pager::default();
        for id in 1..=10 {
            assert!(pager.admit(Some(id)));
            pager.passes(id);
        }
        assert_eq!(pager.after_page(10, 10), PageEnd::Fetch);
        assert_eq!(pager.skip(), 0, "the other replicas may still remove those");
        // The next page: the same ten, already known, and nothing new: step over them.
        for id in (1..=10).rev() {
            assert!(!pager.admit(Some(id)));
        }
        assert_eq!(pager.after_page(10, 10), PageEnd::Fetch);
        assert_eq!(pager.skip(), 10);
    }

    #[test]
    fn a_short_page_is_the_last_and_entries_without_id_always_count() {
        let mut pager = Pager::default();
        assert!(pager.admit(None));
        pager.stays(None);
        assert!(pager.admit(None));
        assert_eq!(pager.skip(), 1);
        assert_eq!(pager.after_page(2, 100), PageEnd::Last);
    }

    #[test]
    fn three_stock_failures_in_a_row_end_the_cycle() {
        let mut s = Streaks::default();
        assert_eq!(s.record(&deferred(Deferral::Unavailable)), None);
        assert_eq!(s.record(&deferred(Deferral::Unavailable)), None);
        assert!(
            s.record(&deferred(Deferral::Unavailable))
                .unwrap()
                .contains("Stock Service")
        );
    }

    #[test]
    fn decreases_without_a_reply_count_against_the_stock_service() {
        let mut s = Streaks::default();
        let unknown = Outcome::Unknown {
            reason: "no reply".into(),
        };
        assert_eq!(s.record(&unknown), None);
        assert_eq!(s.record(&deferred(Deferral::Unavailable)), None);
        assert!(s.record(&unknown).is_some());
    }

    #[test]
    fn a_success_resets_the_streak() {
        let mut s = Streaks::default();
        s.record(&deferred(Deferral::Unavailable));
        s.record(&deferred(Deferral::Unavailable));
        assert_eq!(
            s.record(&Outcome::Blocked {
                reason: "Insufficient stock".into()
            }),
            None
        );
        assert_eq!(s.record(&deferred(Deferral::Unavailable)), None);
        assert_eq!(s.record(&deferred(Deferral::Unavailable)), None);
    }

    #[test]
    fn order_service_failures_count_separately_and_fatal_ends_at_once() {
        let mut s = Streaks::default();
        let pending = Outcome::Pending {
            status: OrderStatus::Ready,
            reason: "502".into(),
        };
        assert_eq!(s.record(&pending), None);
        assert_eq!(s.record(&pending), None);
        assert!(s.record(&pending).unwrap().contains("Order Service"));
        assert!(
            Streaks::default()
                .record(&deferred(Deferral::Fatal))
                .is_some()
        );
    }

    #[test]
    fn only_a_clean_cycle_is_complete() {
        assert!(CycleReport::default().complete());
        assert!(
            !CycleReport {
                deferred: 1,
                ..Default::default()
            }
            .complete()
        );
        assert!(
            !CycleReport {
                pending: 1,
                ..Default::default()
            }
            .complete()
        );
        assert!(
            !CycleReport {
                list_failed: true,
                ..Default::default()
            }
            .complete()
        );
        assert!(
            !CycleReport {
                ended_early: Some("x".into()),
                ..Default::default()
            }
            .complete()
        );
        assert!(
            CycleReport {
                unknown: 2,
                ready: 3,
                blocked: 1,
                ..Default::default()
            }
            .complete()
        );
    }
}
