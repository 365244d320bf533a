//! The cycle's steps: what runs next (a new order, a retry that is due, the next
//! page, a wait), one order's step run under its span, and decided orders waiting for
//! their record to reach the disk.

use super::*;

impl Worker {
    /// The scheduler's loop: runs what is due, takes new orders, fetches pages and
    /// sleeps, until nothing is left that can run in this cycle or a stop is requested.
    pub(super) fn run(&mut self, cycle: &mut Cycle) {
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
    pub(super) fn run_task(&mut self, cycle: &mut Cycle, mut task: Task) {
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
    pub(super) fn release_awaiting(&mut self, cycle: &mut Cycle, force: bool) {
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
    pub(super) fn wait_or_give_up(
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
}
