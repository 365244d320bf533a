//! The end of a cycle's work: `once` settling the status updates still pending
//! before it exits, and a stop's wind-down (pending updates tried first, then every
//! order in hand abandoned in a correct state).

use super::*;

impl Worker {
    /// The latest instant a status update left is still tried in `once`: each is
    /// given `--pending-deadline` from its decision.
    pub(super) fn settle_deadline(&self) -> Option<Instant> {
        let limit = self.pending_deadline;
        self.pending
            .values()
            .map(|u| u.decided_at.unwrap_or_else(Instant::now) + limit)
            .max()
    }

    /// `once` has pending status updates left to try. Quarantined ones do not hold it:
    /// an answer about one order that went wrong is not mended in seconds; the next
    /// run tries them (with the state file) when their quarantine is over.
    pub(super) fn settling(&self) -> bool {
        !self.pending.is_empty()
    }

    /// `once`'s wait for the status updates left pending by its cycle (their service
    /// was down): rounds of attempts, a backoff apart (capped at `--retry-cap`), each
    /// round respecting the Order Service's health, until they land, a stop is
    /// requested, or the deadline passes. No new order is taken meanwhile. Without a
    /// state file the process is the only record that their stock is taken: a new run
    /// would take it again.
    pub(super) fn settle(&mut self, report: &mut CycleReport) {
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

    /// After a stop request: orders with nothing taken are left registered, and the
    /// status updates of decided orders (those in hand, and those pending from earlier
    /// cycles) get [`STOP_GRACE`] to land, the Order Service's health respected. What
    /// is left then stays pending.
    pub(super) fn wind_down(&mut self, cycle: &mut Cycle) {
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
    pub(super) fn abandon_all(&mut self, cycle: &mut Cycle) {
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
    pub(super) fn abandon(&mut self, cycle: &mut Cycle, service: Service, tasks: Vec<Task>) {
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
}
