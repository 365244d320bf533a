//! The cycle and the loop: paging through the registered orders, handling them one at
//! a time, retrying pending status updates, stopping early when a service keeps
//! failing, and sleeping between cycles until a stop is requested.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::http::{CallError, Http, RetryPolicy};
use crate::orders::{Order, OrderStatus, OrdersClient};
use crate::process::{Deferral, Journal, Journey, NoJournal, Outcome};
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

/// The worker: its clients, what it remembers between cycles, and the stop flag.
pub struct Worker {
    journey: Journey,
    page_size: u32,
    stop: Stop,
    /// Decided orders whose status is still to be set, by id. Survives cycles (not
    /// restarts): an order here never has its stock decreased again.
    pending: BTreeMap<u64, PendingUpdate>,
}

impl Worker {
    pub fn new(config: &Config, stop: Stop) -> Worker {
        Worker::with_journal(config, stop, Box::new(NoJournal))
    }

    pub fn with_journal(config: &Config, stop: Stop, journal: Box<dyn Journal>) -> Worker {
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
        Worker {
            journey,
            page_size: config.page_size,
            stop,
            pending: BTreeMap::new(),
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
        let mut report = CycleReport::default();
        self.drain(&mut report);
        self.retry_pending(&mut report);
        report.pending = self.pending.len() as u64;
        report.duration = started.elapsed();
        log_summary(&report);
        report
    }

    /// Pages through the registered list. Orders that leave the list (ready, blocked,
    /// unknown) shift the ones behind them forward, so the next page starts after the
    /// orders that stay (`skip` counts only those). An order seen twice in one cycle is
    /// not handled again, and a page holding nothing new ends the paging, so no page is
    /// fetched forever.
    fn drain(&mut self, report: &mut CycleReport) {
        let mut skip: u64 = 0;
        let mut stayed: HashSet<u64> = HashSet::new();
        let mut streaks = Streaks::default();
        let orders = self.journey.orders.clone();
        loop {
            if self.stop.requested() {
                report.ended_early = Some("stop requested".into());
                return;
            }
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
            let full_page = page.len() as u64 >= u64::from(self.page_size);
            let mut new_here = 0;
            for entry in page {
                let order = match entry {
                    Ok(order) => order,
                    Err(invalid) => {
                        if invalid.id.is_some_and(|id| !stayed.insert(id)) {
                            continue;
                        }
                        new_here += 1;
                        skip += 1;
                        report.fetched += 1;
                        report.skipped += 1;
                        log::error!(
                            order_id = invalid.id.unwrap_or(0), outcome = "skipped", reason = invalid.problem.as_str();
                            "order {}: skipped, bad data from the Order Service: {}",
                            invalid.id.map_or_else(|| "(no valid id)".into(), |id| id.to_string()),
                            invalid.problem
                        );
                        continue;
                    }
                };
                if stayed.contains(&order.id) {
                    continue;
                }
                if self.stop.requested() {
                    report.ended_early = Some("stop requested".into());
                    return;
                }
                new_here += 1;
                report.fetched += 1;
                if self.pending.contains_key(&order.id) {
                    // Stock already decided: only its status update is retried, below.
                    stayed.insert(order.id);
                    skip += 1;
                    continue;
                }
                let outcome = self.journey.process(&order, &self.stop);
                log_outcome(&order, &outcome);
                report.count(&outcome);
                if !outcome.left_registered() {
                    stayed.insert(order.id);
                    skip += 1;
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
            if !full_page {
                return;
            }
            if new_here == 0 {
                log::warn!(
                    "the registered list returned only orders already seen this cycle (skip {skip}); paging stops"
                );
                return;
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
