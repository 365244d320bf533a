//! One order's journey, as steps the cycle schedules: the stock decrease (or a
//! simulated failure in its place), then the status update. A step makes at most one
//! request; a transient failure hands the order back with the time of its next
//! attempt, and the worker goes on with other orders meanwhile (see
//! [`crate::cycle::schedule`]). The decisions are pure functions in [`crate::cycle::outcome`]; the
//! [`crate::state::in_flight::Journal`] is told before each step that could be lost in a crash.

use std::io;
use std::time::Duration;

use crate::config::Config;
use crate::cycle::outcome::{
    Deferral, Next, Outcome, SIMULATED_STOCK_FAILURE, after_decrease, after_status_update,
};
use crate::cycle::retry::{Attempts, RetryPolicy, pace};
use crate::cycle::schedule::{Pace, Service, Subject, Verdict};
use crate::logging::{OrderFields, OrderGuard};
use crate::services::http::{CallError, Http};
use crate::services::orders::{Order, OrderStatus, OrdersClient, Page};
use crate::services::stock::StockClient;
use crate::state::in_flight::{InFlight, Journal, parse_trace_ref};
use crate::telemetry::instrument::{self, OrderSpan};
use opentelemetry::KeyValue;
use opentelemetry::trace::SpanContext;

/// An order on its way: the step it is at, its attempts at that step, and its span.
pub struct Task {
    order: Order,
    step: Step,
    attempts: Attempts,
    /// Requests really sent at this step (simulated failures are not requests).
    sent: u32,
    /// The status step's simulated failure was drawn already (at its first attempt, or
    /// in an earlier cycle or run for a resumed update).
    drawn: bool,
    span: OrderSpan,
    /// When its status was decided (a resumed update: when it was taken up again), for
    /// `once`'s `--pending-deadline`.
    decided_at: Option<std::time::Instant>,
    /// Times the order was quarantined before (its backoff grows with them).
    quarantined: u32,
    /// Its decision is durable once the journal's durable mark reaches this (0: at
    /// once); its status update waits until then.
    durable_at: u64,
}

#[derive(Debug, Clone)]
enum Step {
    Decrease,
    Status {
        status: OrderStatus,
        reason: String,
        /// The decision is in the journal: only then may the status be set (a restart
        /// must not find the order merely "sent" once its status is set).
        recorded: bool,
    },
}

impl Task {
    pub fn order(&self) -> &Order {
        &self.order
    }

    /// The service the task's next step calls.
    pub fn service(&self) -> Service {
        match self.step {
            Step::Decrease => Service::Stock,
            Step::Status { .. } => Service::Orders,
        }
    }

    /// Makes the order's span current and puts its fields on every log line, until
    /// dropped.
    pub fn enter(&self) -> (Option<opentelemetry::ContextGuard>, OrderGuard) {
        (self.span.enter(), order_fields(&self.order))
    }

    /// The order's trace, to continue it in a later cycle or run.
    pub fn trace(&self) -> SpanContext {
        self.span.span_context()
    }

    /// The decided status, when the order is at its status update.
    pub fn decided(&self) -> Option<OrderStatus> {
        match self.step {
            Step::Decrease => None,
            Step::Status { status, .. } => Some(status),
        }
    }

    /// The reason its status was decided with (empty at the decrease, or for `ready`).
    pub fn decision_reason(&self) -> &str {
        match &self.step {
            Step::Decrease => "",
            Step::Status { reason, .. } => reason,
        }
    }

    /// When its status was decided, or taken up again after a restart.
    pub fn decided_at(&self) -> Option<std::time::Instant> {
        self.decided_at
    }

    pub fn set_decided_at(&mut self, at: std::time::Instant) {
        self.decided_at = Some(at);
    }

    /// Times the order was quarantined before.
    pub fn quarantined(&self) -> u32 {
        self.quarantined
    }

    pub fn set_quarantined(&mut self, times: u32) {
        self.quarantined = times;
    }

    /// The journal mark its decision is durable at (0: at once).
    pub fn durable_at(&self) -> u64 {
        self.durable_at
    }

    /// Its decision must be written again, durably, before its status update (the
    /// sync it waited for failed).
    pub fn record_again(&mut self) {
        if let Step::Status { recorded, .. } = &mut self.step {
            *recorded = false;
        }
        self.durable_at = 0;
    }

    /// The outcome of a task that cannot go on in this cycle (a stop was requested, or
    /// its service is down): nothing taken yet leaves it registered; a decided order
    /// keeps its status update pending.
    pub fn abandon(&self, why: &str, cause: Deferral) -> Outcome {
        match &self.step {
            Step::Decrease => Outcome::Deferred {
                reason: why.to_string(),
                cause,
            },
            Step::Status { status, reason, .. } => Outcome::Pending {
                status: *status,
                reason: crate::cycle::outcome::join(reason, &format!("status not set: {why}")),
            },
        }
    }

    /// Ends the order's span with its outcome.
    pub fn finish(self, outcome: &Outcome) {
        if !self.span.on() {
            return;
        }
        self.span.set(vec![
            KeyValue::new("ordermanagement.order.outcome", outcome.name()),
            KeyValue::new("ordermanagement.order.reason", outcome.reason().to_string()),
        ]);
        if !outcome.fine() {
            self.span
                .fail(format!("{}: {}", outcome.name(), outcome.reason()));
        }
        self.span.end();
    }
}

/// The order fields of every line about one order.
pub fn order_fields(order: &Order) -> OrderGuard {
    crate::logging::order_fields(OrderFields {
        id: order.id,
        wood_type: order.wood_type.as_str(),
        quantity: order.quantity,
    })
}

/// How a step ended.
pub enum StepEnd {
    /// The order is done with, for this cycle.
    Finished(Task, Outcome),
    /// The next step is due at once, at this service.
    Then(Task, Service),
    /// The step failed transiently: again at this service, after the delay or sooner as
    /// the pace allows ([`crate::cycle::schedule::Scheduler::retry_at`]).
    Again(Task, Service, Duration, Pace),
    /// The service answered outside its contract (nothing was changed): the order is
    /// quarantined, or tried again once another call has probed the service, as the
    /// service's health judges ([`crate::cycle::schedule::Health::record_from`]). The reason.
    Odd(Task, Service, String),
}

/// What one request told about the service it called.
pub struct Call {
    pub service: Service,
    /// What the call was about.
    pub subject: Subject,
    pub verdict: Verdict,
    /// What went wrong, for the log lines; empty for a success.
    pub detail: String,
    /// The service answered (whatever the status); false when the connection was
    /// refused or not made, or no reply came.
    pub answered: bool,
}

impl Call {
    pub fn of<T>(service: Service, subject: Subject, result: &Result<T, CallError>) -> Call {
        Call {
            service,
            subject,
            verdict: verdict(result),
            detail: detail(result),
            answered: answered(result),
        }
    }
}

/// True when the service answered the call, whatever its status.
pub fn answered<T>(result: &Result<T, CallError>) -> bool {
    match result {
        Ok(_)
        | Err(
            CallError::Rejected { .. } | CallError::Unexpected { .. } | CallError::Fatal { .. },
        ) => true,
        Err(CallError::Transient { status, .. }) => status.is_some(),
        Err(CallError::InDoubt { status, .. }) => status.is_some(),
    }
}

/// A step's end, and what its request told about the service it called (none for a
/// step that sent nothing).
pub struct Ran {
    pub end: StepEnd,
    pub call: Option<Call>,
}

/// The clients, the retry policy and the journal that carry orders through their steps.
pub struct Journey {
    orders: OrdersClient,
    stock: StockClient,
    policy: RetryPolicy,
    error_rate: f64,
    dry_run: bool,
    journal: Box<dyn Journal>,
}

impl Journey {
    pub fn new(config: &Config, journal: Box<dyn Journal>) -> Journey {
        let http = Http::new(config.http_timeout);
        Journey {
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
        }
    }

    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }

    /// True when what the worker writes down outlives the process (a state file).
    pub fn keeps_state(&self) -> bool {
        self.journal.keeps_state()
    }

    /// True when `task`'s decision is on disk, so its status update may go.
    pub fn durable(&self, task: &Task) -> bool {
        self.journal.durable() >= task.durable_at
    }

    /// Makes every record written so far durable.
    pub fn sync(&mut self) -> io::Result<()> {
        self.journal.sync()
    }

    /// Writes down that `order` is quarantined until `until` (a failure only costs the
    /// quarantine's memory across a restart: logged).
    pub fn quarantined(
        &mut self,
        order: &Order,
        status: Option<OrderStatus>,
        times: u32,
        until: std::time::SystemTime,
    ) {
        let until_ms = until
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        if let Err(e) = self.journal.quarantined(order, status, times, until_ms) {
            log::error!(
                "order {}: could not write its quarantine to the state file: {e}",
                order.id
            );
        }
    }

    /// Forgets `order` in the journal (a quarantined order with nothing taken that left
    /// quarantine or the list).
    pub fn forget(&mut self, order: &Order) {
        self.journal_finished(order);
    }

    /// Orders a previous run left unfinished, from the journal, with their traces.
    pub fn in_flight(&self) -> Vec<(Order, InFlight, Option<SpanContext>)> {
        self.journal
            .in_flight()
            .into_iter()
            .map(|(order, state)| {
                let trace = self
                    .journal
                    .trace_of(order.id)
                    .and_then(|t| parse_trace_ref(&t));
                (order, state, trace)
            })
            .collect()
    }

    /// Writes down that `order`'s status is decided (after a restart, say).
    pub fn decided(&mut self, order: &Order, status: OrderStatus) {
        if let Err(e) = self.journal.decided(order, status) {
            log::error!(
                "order {}: could not write its decision ({status}) to the state file: {e}",
                order.id
            );
        }
    }

    /// One page of the registered list; `attempt` is its number (0 for the first).
    pub fn list(&self, skip: u64, limit: u32, attempt: u32) -> Result<Page, CallError> {
        self.orders.list_registered(skip, limit, attempt)
    }

    /// A new order, taken from the list: its span starts (a trace of its own, linked
    /// to the cycle's, or the trace it started in an earlier cycle), its first step is
    /// the decrease.
    pub fn take(
        &self,
        order: Order,
        cycle: Option<SpanContext>,
        trace: Option<SpanContext>,
    ) -> Task {
        Task {
            span: OrderSpan::start(|| span_attributes(&order), || baggage(&order), cycle, trace),
            order,
            step: Step::Decrease,
            attempts: Attempts::default(),
            sent: 0,
            drawn: false,
            decided_at: None,
            quarantined: 0,
            durable_at: 0,
        }
    }

    /// An order whose status is decided and whose update is left from an earlier cycle
    /// or run: only the update is retried, in the order's trace when it is known.
    pub fn resume(
        &self,
        order: Order,
        status: OrderStatus,
        reason: String,
        trace: Option<SpanContext>,
        cycle: Option<SpanContext>,
    ) -> Task {
        let attributes = || {
            let mut attributes = span_attributes(&order);
            attributes.push(KeyValue::new("ordermanagement.order.resumed", true));
            attributes
        };
        Task {
            span: OrderSpan::start(attributes, || baggage(&order), cycle, trace),
            order,
            step: Step::Status {
                status,
                reason,
                recorded: false,
            },
            attempts: Attempts::default(),
            sent: 0,
            drawn: true,
            decided_at: Some(std::time::Instant::now()),
            quarantined: 0,
            durable_at: 0,
        }
    }

    /// Runs the task's next step: at most one request.
    pub fn step(&mut self, mut task: Task) -> Ran {
        let _entered = task.enter();
        match task.step.clone() {
            Step::Decrease if self.dry_run => {
                let order = task.order;
                log::info!(
                    "order {}: would decrease {} {} and set it ready (dry run)",
                    order.id,
                    order.quantity,
                    order.wood_type
                );
                Ran {
                    end: StepEnd::Finished(task, Outcome::DryRun),
                    call: None,
                }
            }
            Step::Decrease => self.decrease(task),
            Step::Status {
                status,
                reason,
                recorded,
            } => {
                if !recorded {
                    if let Err(e) = self.journal.decided_in(&task.order, status, &task.trace()) {
                        let outcome = Outcome::Pending {
                            status,
                            reason: format!(
                                "{reason}; status not set: the state file could not record the decision: {e}"
                            ),
                        };
                        return Ran {
                            end: StepEnd::Finished(task, outcome),
                            call: None,
                        };
                    }
                    if let Step::Status { recorded, .. } = &mut task.step {
                        *recorded = true;
                    }
                }
                self.set_status(task, status, reason)
            }
        }
    }

    fn decrease(&mut self, mut task: Task) -> Ran {
        let order = task.order;
        if task.attempts.made == 0 && self.simulated_stock_failure(&order) {
            log::info!(
                "order {}: simulated failure at the stock step (ERROR_RATE {}), stock not touched",
                order.id,
                self.error_rate
            );
            instrument::event(
                "simulated failure",
                vec![KeyValue::new("ordermanagement.step", "stock")],
            );
            return self.decide(
                task,
                OrderStatus::Blocked,
                SIMULATED_STOCK_FAILURE.into(),
                None,
            );
        }
        if let Err(e) = self.journal.sending(&order) {
            let reason = format!("state file not writable, decrease not sent: {e}");
            return Ran {
                end: StepEnd::Finished(
                    task,
                    Outcome::Deferred {
                        reason,
                        cause: Deferral::Fatal,
                    },
                ),
                call: None,
            };
        }
        let started = std::time::Instant::now();
        let result = self.stock.decrease(&order, task.sent);
        task.sent += 1;

        let call = Some(Call::of(Service::Stock, Subject::Order(order.id), &result));
        if result.is_ok() && instrument::active() {
            let wood = KeyValue::new("wood_type", order.wood_type.as_str());
            instrument::instruments()
                .stock_taken
                .add(u64::from(order.quantity), &[wood]);
        }
        match after_decrease(&result) {
            Next::SetStatus(status, reason) => self.decide(task, status, reason, call),
            Next::Odd(reason) => {
                // Nothing was taken: the order is no longer in flight.
                self.journal_finished(&order);
                Ran {
                    end: StepEnd::Odd(task, Service::Stock, reason),
                    call,
                }
            }
            Next::Defer(reason, cause) => {
                // Nothing was taken: the order is no longer in flight.
                self.journal_finished(&order);
                Ran {
                    end: StepEnd::Finished(task, Outcome::Deferred { reason, cause }),
                    call,
                }
            }
            Next::Retry(reason) => {
                self.journal_finished(&order);
                // A retry follows a failure: `after_decrease` says so only for one.
                let Err(error) = result else {
                    return Ran {
                        end: StepEnd::Finished(
                            task,
                            Outcome::Deferred {
                                reason,
                                cause: Deferral::Unavailable,
                            },
                        ),
                        call,
                    };
                };
                let end = match self.retry(&mut task, &error, "stock decrease", started) {
                    Some(delay) => StepEnd::Again(task, Service::Stock, delay, pace(&error)),
                    None => StepEnd::Finished(
                        task,
                        Outcome::Deferred {
                            reason,
                            cause: Deferral::Unavailable,
                        },
                    ),
                };
                Ran { end, call }
            }
        }
    }

    /// The decrease's outcome is known: written down, then on to the status update.
    fn decide(
        &mut self,
        mut task: Task,
        status: OrderStatus,
        reason: String,
        call: Option<Call>,
    ) -> Ran {
        let recorded = match self
            .journal
            .decided_soon(&task.order, status, &task.trace())
        {
            Ok(mark) => {
                task.durable_at = mark;
                true
            }
            Err(e) => {
                log::error!(
                    "order {}: could not write its decision ({status}) to the state file: {e}; \
                     its status is not set until it can be",
                    task.order.id
                );
                false
            }
        };
        task.step = Step::Status {
            status,
            reason,
            recorded,
        };
        task.decided_at = Some(std::time::Instant::now());
        task.attempts = Attempts::default();
        task.sent = 0;
        Ran {
            end: StepEnd::Then(task, Service::Orders),
            call,
        }
    }

    /// One attempt of the status update of a decided order. It is never given up while
    /// the process lives (the stock of a `ready` order is taken: a new run would take it
    /// again): a failure schedules the next attempt, with a backoff capped at
    /// `--retry-cap`'s few seconds, and the Order Service's health decides when calls go
    /// (a service that is down hands the order back as pending, tried again later).
    /// Only a refusal (`400`/`404`) or an answer no retry fixes ends it. A simulated
    /// failure (at ERROR_RATE) is drawn on the step's first attempt only: it costs that
    /// one attempt, an event on the order's span, and the next attempt follows at once.
    fn set_status(&mut self, mut task: Task, status: OrderStatus, reason: String) -> Ran {
        let order = task.order;
        let started = std::time::Instant::now();
        let first = !std::mem::replace(&mut task.drawn, true);
        if first && self.error_rate > 0.0 && fastrand::f64() < self.error_rate {
            instrument::event(
                "simulated failure",
                vec![KeyValue::new("ordermanagement.step", "status")],
            );
            task.attempts.made += 1;
            log::info!(
                "order {}: simulated failure at the status step (ERROR_RATE {}); retrying at once",
                order.id,
                self.error_rate
            );
            return Ran {
                end: StepEnd::Then(task, Service::Orders),
                call: None,
            };
        }
        let result = self.orders.set_status(order.id, status, task.sent);
        task.sent += 1;
        let call = Some(Call::of(Service::Orders, Subject::Order(order.id), &result));
        let end = match result {
            Ok(()) => {
                self.journal_finished(&order);
                StepEnd::Finished(task, after_status_update(status, reason, Ok(())))
            }
            Err(error @ (CallError::Transient { .. } | CallError::InDoubt { .. })) => {
                let attempt = task.attempts.made + 1;
                let delay = self
                    .policy
                    .status_delay(&mut task.attempts, &error, fastrand::f64());
                log::debug!(
                    "order {}: status update failed (attempt {attempt}, after {} ms): {error}; \
                     retried until it lands",
                    order.id,
                    started.elapsed().as_millis(),
                );
                StepEnd::Again(task, Service::Orders, delay, pace(&error))
            }
            Err(CallError::Unexpected { detail, .. }) => {
                StepEnd::Odd(task, Service::Orders, detail)
            }
            Err(error) => StepEnd::Finished(task, after_status_update(status, reason, Err(error))),
        };
        Ran { end, call }
    }

    /// After a failed attempt: the delay before the next, logged, or `None` when spent.
    fn retry(
        &self,
        task: &mut Task,
        error: &CallError,
        what: &str,
        started: std::time::Instant,
    ) -> Option<Duration> {
        let attempt = task.attempts.made + 1;
        let delay = self
            .policy
            .after_failure(&mut task.attempts, error, fastrand::f64())?;
        log::debug!(
            "order {}: {what} failed (attempt {attempt} of {}, after {} ms): {error}; retrying",
            task.order.id,
            self.policy.max_retries + 1,
            started.elapsed().as_millis(),
        );
        Some(delay)
    }

    fn journal_finished(&mut self, order: &Order) {
        if let Err(e) = self.journal.finished(order) {
            log::error!(
                "order {}: could not write to the state file that it is finished: {e}",
                order.id
            );
        }
    }

    /// Takes `order` through every step at once, retries without their delays: for
    /// tests of the journal.
    #[cfg(test)]
    pub(crate) fn run_to_end(&mut self, order: Order) -> Outcome {
        let mut task = self.take(order, None, None);
        loop {
            match self.step(task).end {
                StepEnd::Finished(_, outcome) => return outcome,
                StepEnd::Then(next, _) | StepEnd::Again(next, ..) => task = next,
                StepEnd::Odd(task, _, reason) => {
                    return Outcome::Quarantined {
                        status: task.decided(),
                        reason,
                    };
                }
            }
        }
    }

    /// The simulated failure at the stock step is drawn once per order, from a generator
    /// seeded with its id: an order whose decrease was ever sent (and perhaps took the
    /// stock, then failed) is never blocked by a simulated failure in a later cycle,
    /// after a restart, or on another replica. Over many orders the rate is ERROR_RATE.
    fn simulated_stock_failure(&self, order: &Order) -> bool {
        self.error_rate > 0.0 && fastrand::Rng::with_seed(order.id).f64() < self.error_rate
    }
}

/// What a call's result says about the service's health.
pub fn verdict<T>(result: &Result<T, CallError>) -> Verdict {
    match result {
        Ok(_) | Err(CallError::Rejected { .. }) => Verdict::Answered,
        Err(
            CallError::Transient { slow: false, .. }
            | CallError::InDoubt {
                status: Some(_), ..
            },
        ) => Verdict::Failed,
        Err(CallError::Transient { slow: true, .. } | CallError::InDoubt { status: None, .. }) => {
            Verdict::Stalled
        }
        Err(CallError::Unexpected { detail, .. }) => Verdict::Odd(detail.clone()),
        Err(CallError::Fatal { detail }) => Verdict::Broken(detail.clone()),
    }
}

/// What went wrong with a call, for the health's log lines; empty for a success.
pub fn detail<T>(result: &Result<T, CallError>) -> String {
    match result {
        Ok(_) => String::new(),
        Err(e) => e.to_string(),
    }
}

/// The order's attributes on its span.
fn span_attributes(order: &Order) -> Vec<KeyValue> {
    vec![
        order_id(order),
        KeyValue::new("ordermanagement.order.wood_type", order.wood_type.as_str()),
        KeyValue::new("ordermanagement.order.quantity", i64::from(order.quantity)),
    ]
}

/// The order id also travels to the services as baggage when the baggage propagator
/// is on.
fn baggage(order: &Order) -> Vec<KeyValue> {
    vec![order_id(order)]
}

fn order_id(order: &Order) -> KeyValue {
    KeyValue::new("ordermanagement.order.id", order.id as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::in_flight::NoJournal;

    #[test]
    fn the_simulated_stock_failure_is_the_same_for_an_order_every_time() {
        let journey = |error_rate| {
            let config = crate::Config {
                orders_url: "http://127.0.0.1:9".into(),
                stocks_url: "http://127.0.0.1:9".into(),
                error_rate,
                ..crate::Config::default()
            };
            Journey::new(&config, Box::new(NoJournal))
        };
        let j = journey(0.1);
        let order = |id| Order {
            id,
            wood_type: crate::services::orders::WoodType::Oak,
            quantity: 1,
        };
        let failed = (1..=20_000)
            .filter(|id| j.simulated_stock_failure(&order(*id)))
            .count();
        assert!(
            (1_700..=2_300).contains(&failed),
            "{failed} of 20000 at rate 0.1"
        );
        // Another journey (a later run, a restart, another replica) draws the same.
        let again = journey(0.1);
        for id in 1..=20_000 {
            assert_eq!(
                j.simulated_stock_failure(&order(id)),
                again.simulated_stock_failure(&order(id)),
                "order {id}"
            );
        }
        assert!(!(1..=1000).any(|id| journey(0.0).simulated_stock_failure(&order(id))));
        assert!((1..=1000).all(|id| journey(1.0).simulated_stock_failure(&order(id))));
    }
}
