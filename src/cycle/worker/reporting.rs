//! What the worker says and counts: an order done with for the cycle (its line, its
//! span's end, its counts in the report and the metrics, and the bookkeeping of
//! pending and decided orders), the outage lines of a service that stops answering,
//! and the cycle's summary.

use super::*;

impl Worker {
    /// `level`, or debug while a service's outage has been told already.
    pub(super) fn outage_level(&self, level: log::Level) -> log::Level {
        if self.outages.iter().any(Outage::ongoing) {
            log::Level::Debug
        } else {
            level
        }
    }

    /// Records whether a call was answered, for its service's outage lines.
    pub(super) fn outage(&mut self, call: &Call) {
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

    pub(super) fn shard_attribute(&self) -> Vec<KeyValue> {
        self.shard
            .map(instrument::shard_attribute)
            .into_iter()
            .collect()
    }

    /// An order is done with for this cycle: its line, span, counts and bookkeeping.
    pub(super) fn finish(&mut self, cycle: &mut Cycle, task: Task, outcome: Outcome) {
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
            instrument::count_order(outcome.name(), outcome.reason_kind());
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

    /// The cycle's summary: at warn when it leaves something for a person (an order
    /// `unknown`, the list not fetched or not finished; in `once` also orders pending
    /// or quarantined, which `run` names in its reminders), else at info; in `run`, an
    /// idle cycle at debug, with one info line when work resumes, and a cycle during an
    /// outage already told at debug. `once`'s summary is its closing line.
    pub(super) fn log_summary(&mut self, r: &CycleReport) {
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

/// The one line per order outcome (the order's fields come from its guard); with
/// `quiet`, at debug.
pub(super) fn log_outcome(order: &Order, outcome: &Outcome, quiet: bool) {
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
