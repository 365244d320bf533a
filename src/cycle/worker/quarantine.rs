//! Quarantine: an order whose answer alone went wrong held back on a backoff of
//! its own, kept within its cap, named in a reminder now and then, and released when
//! the trouble proves to be the service's.

use super::*;

impl Worker {
    /// Past the cap, quarantined orders with nothing taken are let go, those due
    /// soonest first: they are taken again as new orders when listed.
    pub(super) fn trim_quarantine(&mut self) {
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
    pub(super) fn remind(&mut self) {
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
    pub(super) fn release(&mut self, orders: &[u64], service: Service) {
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

    /// An answer about this order alone went wrong: it is held back, on a backoff of
    /// its own, and named once ([`Worker::remind`] names all of them now and then).
    pub(super) fn enter_quarantine(&mut self, cycle: &mut Cycle, task: Task, cause: String) {
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
}

/// Quarantined orders as a line names them: `12 (ready: 409 ...), 15 (registered: ...)`.
pub(super) fn name_quarantined<'a>(
    orders: impl ExactSizeIterator<Item = &'a Quarantined>,
) -> String {
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
