//! One order's journey: simulated failure or stock decrease, then the status update.
//!
//! The decisions are pure functions ([`after_decrease`], [`after_status_update`]);
//! [`Journey`] does the I/O through the clients and tells the [`Journal`] before
//! each step that could be lost in a crash.

use std::io;

use crate::http::{CallError, RetryPolicy};
use crate::orders::{Order, OrderStatus, OrdersClient};
use crate::stock::StockClient;
use crate::stop::Stop;
use crate::telemetry;
use opentelemetry::KeyValue;

/// The reason given for an order blocked by a simulated failure.
pub const SIMULATED_STOCK_FAILURE: &str = "simulated stock failure";

/// How an order left the worker's hands.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Stock taken once, status `ready`.
    Ready,
    /// Stock not taken (refused, or a simulated failure), status `blocked`.
    Blocked { reason: String },
    /// A decrease was sent and no reply came: stock taken at most once, status `unknown`.
    Unknown { reason: String },
    /// Nothing taken; the order stays `registered` for a later cycle.
    Deferred { reason: String, cause: Deferral },
    /// The decision is made (stock taken for `ready`) but the status could not be set;
    /// only the status update is retried, at the end of this cycle and in later ones.
    Pending { status: OrderStatus, reason: String },
    /// The Order Service refused the status update (`400`/`404`); nothing more to do.
    StatusRefused { status: OrderStatus, reason: String },
    /// `--dry-run`: nothing was changed.
    DryRun,
}

/// Why an order was left `registered`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deferral {
    /// The Stock Service failed transiently on every attempt.
    Unavailable,
    /// A stop was requested while waiting to retry.
    Stopped,
    /// The Stock Service answered something no retry fixes; the cycle ends.
    Fatal,
}

impl Outcome {
    /// Every outcome's name, as the logs and the `outcome` metric attribute give it.
    pub const NAMES: [&'static str; 7] = [
        "ready", "blocked", "unknown", "deferred", "pending", "refused", "dry-run",
    ];

    /// The outcome's name in logs and the summary.
    pub fn name(&self) -> &'static str {
        match self {
            Outcome::Ready => "ready",
            Outcome::Blocked { .. } => "blocked",
            Outcome::Unknown { .. } => "unknown",
            Outcome::Deferred { .. } => "deferred",
            Outcome::Pending { .. } => "pending",
            Outcome::StatusRefused { .. } => "refused",
            Outcome::DryRun => "dry-run",
        }
    }

    pub fn reason(&self) -> &str {
        match self {
            Outcome::Ready | Outcome::DryRun => "",
            Outcome::Blocked { reason }
            | Outcome::Unknown { reason }
            | Outcome::Deferred { reason, .. }
            | Outcome::Pending { reason, .. }
            | Outcome::StatusRefused { reason, .. } => reason,
        }
    }

    /// The reason as a small fixed set, for metric attributes.
    pub fn reason_kind(&self) -> &'static str {
        match self {
            Outcome::Ready | Outcome::DryRun => "",
            Outcome::Blocked { reason } if reason == SIMULATED_STOCK_FAILURE => "simulated",
            Outcome::Blocked { .. } => "rejected",
            Outcome::Unknown { .. } => "no_reply",
            Outcome::Deferred {
                cause: Deferral::Unavailable,
                ..
            } => "unavailable",
            Outcome::Deferred {
                cause: Deferral::Stopped,
                ..
            } => "stopped",
            Outcome::Deferred {
                cause: Deferral::Fatal,
                ..
            } => "misconfigured",
            Outcome::Pending { .. } => "status_not_set",
            Outcome::StatusRefused { .. } => "status_refused",
        }
    }

    /// True when the order has left the `registered` list.
    pub fn left_registered(&self) -> bool {
        matches!(
            self,
            Outcome::Ready | Outcome::Blocked { .. } | Outcome::Unknown { .. }
        )
    }
}

/// What follows a decrease attempt (or a simulated failure in its place).
#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    /// Set this status, with this reason for the logs.
    SetStatus(OrderStatus, String),
    /// Leave the order registered.
    Defer(String, Deferral),
}

/// The pure decision after the decrease: taken -> ready; refused -> blocked; in doubt
/// -> unknown; transient -> left for later; fatal -> left, and the cycle ends.
pub fn after_decrease(result: &Result<(), CallError>, stopped: bool) -> Next {
    match result {
        Ok(()) => Next::SetStatus(OrderStatus::Ready, String::new()),
        Err(CallError::Rejected { reason, .. }) => {
            Next::SetStatus(OrderStatus::Blocked, reason.clone())
        }
        Err(CallError::InDoubt { detail }) => Next::SetStatus(
            OrderStatus::Unknown,
            format!("{detail}; stock may have been taken, reconcile by hand"),
        ),
        Err(e @ CallError::Transient { .. }) if stopped => {
            Next::Defer(e.to_string(), Deferral::Stopped)
        }
        Err(e @ CallError::Transient { .. }) => Next::Defer(e.to_string(), Deferral::Unavailable),
        Err(e @ CallError::Fatal { .. }) => Next::Defer(e.to_string(), Deferral::Fatal),
    }
}

/// The pure decision after the status update of an order whose fate is decided.
pub fn after_status_update(
    status: OrderStatus,
    reason: String,
    result: Result<(), CallError>,
) -> Outcome {
    match (result, status) {
        (Ok(()), OrderStatus::Ready) => Outcome::Ready,
        (Ok(()), OrderStatus::Unknown) => Outcome::Unknown { reason },
        (Ok(()), _) => Outcome::Blocked { reason },
        (
            Err(CallError::Rejected {
                reason: refusal, ..
            }),
            status,
        ) => Outcome::StatusRefused {
            status,
            reason: join(&reason, &format!("status update refused: {refusal}")),
        },
        (Err(e), status) => Outcome::Pending {
            status,
            reason: join(&reason, &format!("status not set: {e}")),
        },
    }
}

fn join(a: &str, b: &str) -> String {
    if a.is_empty() {
        b.to_string()
    } else {
        format!("{a}; {b}")
    }
}

/// What a previous run left unfinished for an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InFlight {
    /// A decrease was (perhaps) sent and its outcome is not recorded: in doubt.
    Sent,
    /// The status to set is decided (`ready`: stock taken); only the update is left.
    Decided(OrderStatus),
}

/// Where the worker writes down, before each step, what it is about to do, so that a
/// crash leaves a record of what may have happened (see [`crate::journal`]).
pub trait Journal {
    /// Before a decrease is sent. An error stops the order before anything is sent.
    fn sending(&mut self, order: &Order) -> io::Result<()>;
    /// The decrease's outcome is known and the status chosen; before the status update.
    fn decided(&mut self, order: &Order, status: OrderStatus) -> io::Result<()>;
    /// The status is set, or nothing was taken: the order can be forgotten.
    fn finished(&mut self, order: &Order) -> io::Result<()>;
    /// Orders a previous run left unfinished.
    fn in_flight(&self) -> Vec<(Order, InFlight)>;
}

/// The in-memory default: the worker's own pending list is the only record, and a
/// restart forgets it.
#[derive(Debug, Default)]
pub struct NoJournal;

impl Journal for NoJournal {
    fn sending(&mut self, _: &Order) -> io::Result<()> {
        Ok(())
    }
    fn decided(&mut self, _: &Order, _: OrderStatus) -> io::Result<()> {
        Ok(())
    }
    fn finished(&mut self, _: &Order) -> io::Result<()> {
        Ok(())
    }
    fn in_flight(&self) -> Vec<(Order, InFlight)> {
        Vec::new()
    }
}

/// Carries an order through its steps.
pub struct Journey {
    pub orders: OrdersClient,
    pub stock: StockClient,
    pub policy: RetryPolicy,
    pub error_rate: f64,
    pub dry_run: bool,
    pub journal: Box<dyn Journal>,
}

impl Journey {
    /// Takes one order from `registered` to its outcome. A stop request only cuts short
    /// the waits before a decrease is retried (nothing was taken then).
    pub fn process(&mut self, order: &Order, stop: &Stop) -> Outcome {
        if self.dry_run {
            log::info!(
                order_id = order.id, wood_type = order.wood_type.as_str(), quantity = order.quantity;
                "order {}: would decrease {} {} and set it ready (dry run)",
                order.id,
                order.quantity,
                order.wood_type
            );
            return Outcome::DryRun;
        }
        let next = if self.simulated_stock_failure(order) {
            log::error!(
                order_id = order.id, wood_type = order.wood_type.as_str(), quantity = order.quantity;
                "order {}: simulated failure at the stock step (ERROR_RATE {}), stock not touched",
                order.id, self.error_rate
            );
            telemetry::event(
                "simulated failure",
                vec![KeyValue::new("ordermanagement.step", "stock")],
            );
            Next::SetStatus(OrderStatus::Blocked, SIMULATED_STOCK_FAILURE.into())
        } else {
            if let Err(e) = self.journal.sending(order) {
                let reason = format!("state file not writable, decrease not sent: {e}");
                return Outcome::Deferred {
                    reason,
                    cause: Deferral::Fatal,
                };
            }
            let stock = &self.stock;
            let result = self.policy.run(
                &format!("order {}: stock decrease", order.id),
                Some(stop),
                |attempt| stock.decrease(order, attempt),
            );
            if result.is_ok() {
                let wood = KeyValue::new("wood_type", order.wood_type.as_str());
                telemetry::instruments()
                    .stock_taken
                    .add(u64::from(order.quantity), &[wood]);
            }
            after_decrease(&result, stop.requested())
        };
        match next {
            Next::Defer(reason, cause) => {
                // Nothing was taken: the order is no longer in flight.
                self.journal_finished(order);
                Outcome::Deferred { reason, cause }
            }
            Next::SetStatus(status, reason) => {
                if let Err(e) = self.journal.decided(order, status) {
                    log::error!(
                        order_id = order.id, wood_type = order.wood_type.as_str(), quantity = order.quantity;
                        "order {}: could not write its decision ({status}) to the state file: {e}",
                        order.id
                    );
                }
                let result = self.set_status(order, status, None);
                after_status_update(status, reason, result)
            }
        }
    }

    /// Sets the status, retrying transient failures; a simulated failure (at
    /// ERROR_RATE) counts as a transient failure of one attempt. With `stop`, a stop
    /// request cuts the waits between attempts short.
    pub fn set_status(
        &mut self,
        order: &Order,
        status: OrderStatus,
        stop: Option<&Stop>,
    ) -> Result<(), CallError> {
        let what = format!("order {}: status update to {status}", order.id);
        let result = self.policy.run(&what, stop, |attempt| {
            if self.error_rate > 0.0 && fastrand::f64() < self.error_rate {
                telemetry::event(
                    "simulated failure",
                    vec![KeyValue::new("ordermanagement.step", "status")],
                );
                return Err(CallError::Transient {
                    detail: format!(
                        "simulated failure at the status step (ERROR_RATE {})",
                        self.error_rate
                    ),
                    retry_after: None,
                    slow: false,
                });
            }
            self.orders.set_status(order.id, status, attempt)
        });
        if result.is_ok() {
            self.journal_finished(order);
        }
        result
    }

    fn journal_finished(&mut self, order: &Order) {
        if let Err(e) = self.journal.finished(order) {
            log::error!(
                order_id = order.id, wood_type = order.wood_type.as_str(), quantity = order.quantity;
                "order {}: could not write to the state file that it is finished: {e}",
                order.id
            );
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_outcome_name_is_listed() {
        let reason = || "r".to_string();
        let names: Vec<&str> = [
            Outcome::Ready,
            Outcome::Blocked { reason: reason() },
            Outcome::Unknown { reason: reason() },
            Outcome::Deferred {
                reason: reason(),
                cause: Deferral::Stopped,
            },
            Outcome::Pending {
                status: OrderStatus::Ready,
                reason: reason(),
            },
            Outcome::StatusRefused {
                status: OrderStatus::Ready,
                reason: reason(),
            },
            Outcome::DryRun,
        ]
        .iter()
        .map(Outcome::name)
        .collect();
        assert_eq!(names, Outcome::NAMES);
    }

    fn transient() -> CallError {
        CallError::Transient {
            detail: "Stock Service answered 500".into(),
            retry_after: None,
            slow: false,
        }
    }

    #[test]
    fn the_simulated_stock_failure_is_the_same_for_an_order_every_time() {
        let journey = |error_rate| Journey {
            orders: OrdersClient::new(
                crate::http::Http::new(std::time::Duration::from_secs(1)),
                "http://127.0.0.1:9",
            ),
            stock: StockClient::new(
                crate::http::Http::new(std::time::Duration::from_secs(1)),
                "http://127.0.0.1:9",
                std::time::Duration::from_secs(1),
            ),
            policy: RetryPolicy {
                max_retries: 0,
                base: Default::default(),
                cap: Default::default(),
            },
            error_rate,
            dry_run: false,
            journal: Box::new(NoJournal),
        };
        let j = journey(0.1);
        let order = |id| Order {
            id,
            wood_type: crate::orders::WoodType::Oak,
            quantity: 1,
        };
        let failed = (1..=20_000)
            .filter(|id| j.simulated_stock_failure(&order(*id)))
            .count();
        assert!(
            (1_700..=2_300).contains(&failed),
            "{failed} of 20000 at rate 0.1"
        );
        for id in 1..=200 {
            assert_eq!(
                j.simulated_stock_failure(&order(id)),
                j.simulated_stock_failure(&order(id))
            );
        }
        assert!(!(1..=1000).any(|id| journey(0.0).simulated_stock_failure(&order(id))));
        assert!((1..=1000).all(|id| journey(1.0).simulated_stock_failure(&order(id))));
    }

    #[test]
    fn decrease_results_decide_the_status() {
        assert_eq!(
            after_decrease(&Ok(()), false),
            Next::SetStatus(OrderStatus::Ready, String::new())
        );
        let refused = Err(CallError::Rejected {
            status: 400,
            reason: "Insufficient stock".into(),
        });
        assert_eq!(
            after_decrease(&refused, false),
            Next::SetStatus(OrderStatus::Blocked, "Insufficient stock".into())
        );
        let in_doubt = Err(CallError::InDoubt {
            detail: "timed out".into(),
        });
        assert!(matches!(
            after_decrease(&in_doubt, false),
            Next::SetStatus(OrderStatus::Unknown, _)
        ));
        assert!(matches!(
            after_decrease(&Err(transient()), false),
            Next::Defer(_, Deferral::Unavailable)
        ));
        assert!(matches!(
            after_decrease(&Err(transient()), true),
            Next::Defer(_, Deferral::Stopped)
        ));
        let fatal = Err(CallError::Fatal {
            detail: "415".into(),
        });
        assert!(matches!(
            after_decrease(&fatal, false),
            Next::Defer(_, Deferral::Fatal)
        ));
    }

    #[test]
    fn a_failed_status_update_leaves_the_decision_pending() {
        assert_eq!(
            after_status_update(OrderStatus::Ready, String::new(), Ok(())),
            Outcome::Ready
        );
        let o = after_status_update(OrderStatus::Ready, String::new(), Err(transient()));
        assert!(
            matches!(
                o,
                Outcome::Pending {
                    status: OrderStatus::Ready,
                    ..
                }
            ),
            "{o:?}"
        );
        assert!(!o.left_registered());
        let o = after_status_update(OrderStatus::Blocked, "Insufficient stock".into(), Ok(()));
        assert_eq!(
            o,
            Outcome::Blocked {
                reason: "Insufficient stock".into()
            }
        );
        assert!(o.left_registered());
        let refused = Err(CallError::Rejected {
            status: 404,
            reason: "Order not found".into(),
        });
        let o = after_status_update(OrderStatus::Ready, String::new(), refused);
        assert!(
            matches!(
                o,
                Outcome::StatusRefused {
                    status: OrderStatus::Ready,
                    ..
                }
            ),
            "{o:?}"
        );
    }
}
