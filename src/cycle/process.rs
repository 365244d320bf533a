//! One order's journey, as steps the cycle schedules: the stock decrease (or a
//! simulated failure in its place), then the status update. A step makes at most one
//! request; a transient failure hands the order back with the time of its next
//! attempt, and the worker goes on with other orders meanwhile (see
//! [`crate::cycle::schedule`]). The decisions are pure functions in [`crate::cycle::outcome`]; the
//! [`crate::state::in_flight::Journal`] is told before each step that could be lost in a crash.
//!
//! Laid out by job: this file holds the task, the calls and what they tell of their
//! service, and the journey's set-up, its journal records and the orders it takes up;
//! `steps` runs the steps.

mod steps;

use std::io;
use std::time::Duration;

use crate::config::Config;
use crate::cycle::outcome::{Deferral, Outcome};
use crate::cycle::retry::{Attempts, RetryPolicy};
use crate::cycle::schedule::{Pace, Service, Subject, Verdict};
use crate::logging::{OrderFields, OrderGuard};
use crate::services::http::{CallError, Http};
use crate::services::orders::{Order, OrderStatus, OrdersClient, Page};
use crate::services::stock::StockClient;
use crate::state::in_flight::{InFlight, Journal, parse_trace_ref};
use crate::telemetry::instrument::OrderSpan;
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

    fn journal_finished(&mut self, order: &Order) {
        if let Err(e) = self.journal.finished(order) {
            log::error!(
                "order {}: could not write to the state file that it is finished: {e}",
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
