//! Orders coming in: pages of the registered list fetched and their orders admitted
//! (checked, skipped when decided, held or out of the shard), pending updates of an
//! earlier cycle or run resumed, and orders that left the list forgotten.

use super::*;

impl Worker {
    /// The status updates left pending by earlier cycles (or runs) go first.
    pub(super) fn resume_pending(&mut self, cycle: &mut Cycle) {
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
    pub(super) fn forget_departed(&mut self, cycle: &Cycle) {
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

    /// Fetches the entries at the pager's `skip` that fill the page up (so that at most
    /// a page of new orders is held) and admits them.
    pub(super) fn fetch_page(&mut self, cycle: &mut Cycle) {
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
    pub(super) fn admit(
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
}
