//! The cycle and the loop: paging through the registered orders, handling them one at
//! a time, retrying pending status updates, stopping early when a service keeps
//! failing, and sleeping between cycles until a stop is requested.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use crate::config::{Config, Shard};
use crate::http::{CallError, Http, RetryPolicy};
use crate::orders::{Order, OrderStatus, OrdersClient};
use crate::process::{Deferral, InFlight, Journal, Journey, NoJournal, Outcome};
use crate::stock::StockClient;
use crate::stop::Stop;

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
            Outcome::Deferred {
                cause: Deferral::Unavailable,
                reason,
            } => {
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
/// those). An order seen twice in one cycle is not handled again, and a page holding
/// nothing new ends the paging, so no page is fetched forever, even from a service
/// that ignores `skip`. Only ids of orders that stay are kept.
#[derive(Debug, Default)]
pub struct Pager {
    skip: u64,
    stayed: HashSet<u64>,
    new_in_page: u32,
}

/// What to do after a page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageEnd {
    /// Fetch the next page at [`Pager::skip`].
    Fetch,
    /// The page was not full: the list is done.
    Last,
    /// A full page of orders already seen: the list is not moving; stop.
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
        let new = id.is_none_or(|id| !self.stayed.contains(&id));
        if new {
            self.new_in_page += 1;
        }
        new
    }

    /// The admitted entry stays in the list: later pages start behind it.
    pub fn stays(&mut self, id: Option<u64>) {
        self.skip += 1;
        if let Some(id) = id {
            self.stayed.insert(id);
        }
    }

    /// After a page of `len` entries, when `page_size` were asked for.
    pub fn after_page(&mut self, len: usize, page_size: u32) -> PageEnd {
        let new = std::mem::take(&mut self.new_in_page);
        if len < page_size as usize {
            PageEnd::Last
        } else if new == 0 {
            PageEnd::NothingNew
        } else {
            PageEnd::Fetch
        }
    }
}

/// The worker: its clients, what it remembers between cycles, and the stop flag.
pub struct Worker {
    journey: Journey,
    page_size: u32,
    shard: Option<Shard>,
    stop: Stop,
    /// Decided orders whose status is still to be set, by id. Survives cycles (not
    /// restarts): an order here never has its stock decreased again.
    pending: BTreeMap<u64, PendingUpdate>,
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
        let mut report = CycleReport::default();
        self.drain(&mut report);
        self.retry_pending(&mut report);
        report.pending = self.pending.len() as u64;
        report.duration = started.elapsed();
        log_summary(&report);
        report
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
            let page =
                self.journey
                    .policy
                    .run("fetching registered orders", Some(&self.stop), |_| {
                        orders.list_registered(skip, self.page_size)
                    });
            let page = match page {
                Ok(page) => page,
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
                    pager.stays(id);
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
                if self.pending.contains_key(&order.id) {
                    // Stock already decided: only its status update is retried, below.
                    pager.stays(id);
                    continue;
                }
                let outcome = self.journey.process(&order, &self.stop);
                log_outcome(&order, &outcome);
                report.count(&outcome);
                if !outcome.left_registered() {
                    pager.stays(id);
                }
                let stop_reason = streaks.record(&outcome);
                if let Outcome::Pending { status, reason } = outcome {
                    self.pending.insert(
                        order.id,
                        PendingUpdate {
                            order,
                            status,
                            reason,
                        },
                    );
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
            let result = self.journey.set_status(&update.order, update.status);
            let outcome =
                crate::process::after_status_update(update.status, update.reason.clone(), result);
            if let Outcome::Pending { reason, .. } = &outcome {
                failures += 1;
                log::warn!(
                    "order {id}: status update to {} still pending: {reason}",
                    update.status
                );
                self.pending.insert(id, update);
                continue;
            }
            failures = 0;
            log_outcome(&update.order, &outcome);
            report.count(&outcome);
        }
    }
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

    /// Drains a simulated registered list (ascending ids, shrinking as orders leave it)
    /// with `Pager`; `stays` decides which orders stay registered. Returns the ids
    /// handled, in order, and the number of pages fetched.
    fn simulate(total: u64, page_size: u32, stays: impl Fn(u64) -> bool) -> (Vec<u64>, usize) {
        let mut registered: Vec<u64> = (1..=total).collect();
        let mut pager = Pager::default();
        let (mut handled, mut pages) = (Vec::new(), 0);
        loop {
            pages += 1;
            assert!(pages < 10_000, "paging does not end");
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
                handled.push(id);
                if stays(id) {
                    pager.stays(Some(id));
                } else {
                    registered.retain(|r| *r != id);
                }
            }
            if pager.after_page(page.len(), page_size) != PageEnd::Fetch {
                return (handled, pages);
            }
        }
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

    #[test]
    fn a_list_that_ignores_skip_ends_the_paging() {
        let mut pager = Pager::default();
        for id in 1..=10 {
            assert!(pager.admit(Some(id)));
            pager.stays(Some(id));
        }
        assert_eq!(pager.after_page(10, 10), PageEnd::Fetch);
        // The same page again: nothing new.
        for id in 1..=10 {
            assert!(!pager.admit(Some(id)));
        }
        assert_eq!(pager.after_page(10, 10), PageEnd::NothingNew);
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
