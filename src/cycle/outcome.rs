//! How an order leaves the worker's hands ([`Outcome`]), and the pure decisions that
//! lead there from what the services answered.

use crate::services::http::CallError;
use crate::services::orders::OrderStatus;

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
    /// only the status update is retried, in the next cycles.
    Pending { status: OrderStatus, reason: String },
    /// The Order Service refused the status update (`400`/`404`); nothing more to do.
    StatusRefused { status: OrderStatus, reason: String },
    /// `--dry-run`: nothing was changed.
    DryRun,
    /// An answer about this order alone went wrong (outside the contract, or a stall
    /// while the service answered others): the order is held back and tried again on a
    /// backoff of its own. `status`: decided (stock taken for `ready`), only its update
    /// is left; `None`: nothing taken, it stays `registered`.
    Quarantined {
        status: Option<OrderStatus>,
        reason: String,
    },
}

/// Why an order was left `registered`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deferral {
    /// The Stock Service failed transiently on every attempt, or was out of use.
    Unavailable,
    /// A stop was requested while the order waited for its next attempt.
    Stopped,
    /// The Stock Service answered something no retry fixes, or the state file could
    /// not be written; the cycle takes no more orders.
    Fatal,
}

impl Outcome {
    /// Every outcome's name, as the logs and the `outcome` metric attribute give it.
    pub const NAMES: [&'static str; 8] = [
        "ready",
        "blocked",
        "unknown",
        "deferred",
        "pending",
        "refused",
        "dry-run",
        "quarantined",
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
            Outcome::Quarantined { .. } => "quarantined",
        }
    }

    pub fn reason(&self) -> &str {
        match self {
            Outcome::Ready | Outcome::DryRun => "",
            Outcome::Blocked { reason }
            | Outcome::Unknown { reason }
            | Outcome::Deferred { reason, .. }
            | Outcome::Pending { reason, .. }
            | Outcome::StatusRefused { reason, .. }
            | Outcome::Quarantined { reason, .. } => reason,
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
            Outcome::Quarantined { .. } => "quarantined",
        }
    }

    /// True for the outcomes that are not a failure of any kind (the order's span is
    /// not marked failed).
    pub fn fine(&self) -> bool {
        matches!(
            self,
            Outcome::Ready
                | Outcome::DryRun
                | Outcome::Deferred {
                    cause: Deferral::Stopped,
                    ..
                }
        )
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
    /// Nothing was taken; a later attempt may work.
    Retry(String),
    /// Nothing was taken and no attempt will work in this cycle.
    Defer(String, Deferral),
    /// Nothing was taken, and the answer is outside the contract: the order's trouble
    /// or the service's, as its health judges.
    Odd(String),
}

/// The pure decision after the decrease: taken -> ready; refused -> blocked; in doubt
/// -> unknown; transient -> another attempt, or left for later; fatal -> left, and the
/// cycle takes no more orders.
pub fn after_decrease(result: &Result<(), CallError>) -> Next {
    match result {
        Ok(()) => Next::SetStatus(OrderStatus::Ready, String::new()),
        Err(CallError::Rejected { reason, .. }) => {
            Next::SetStatus(OrderStatus::Blocked, reason.clone())
        }
        Err(CallError::InDoubt { detail, .. }) => Next::SetStatus(
            OrderStatus::Unknown,
            format!("{detail}; stock may have been taken, reconcile by hand"),
        ),
        Err(e @ CallError::Transient { .. }) => Next::Retry(e.to_string()),
        Err(e @ CallError::Unexpected { .. }) => Next::Odd(e.to_string()),
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

/// Two reasons in one: the decision's, then the last cause.
pub fn join(a: &str, b: &str) -> String {
    if a.is_empty() {
        b.to_string()
    } else {
        format!("{a}; {b}")
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
            Outcome::Quarantined {
                status: None,
                reason: reason(),
            },
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
            status: Some(500),
        }
    }

    #[test]
    fn decrease_results_decide_the_status() {
        assert_eq!(
            after_decrease(&Ok(())),
            Next::SetStatus(OrderStatus::Ready, String::new())
        );
        let refused = Err(CallError::Rejected {
            status: 400,
            reason: "Insufficient stock".into(),
        });
        assert_eq!(
            after_decrease(&refused),
            Next::SetStatus(OrderStatus::Blocked, "Insufficient stock".into())
        );
        let in_doubt = Err(CallError::InDoubt {
            detail: "timed out".into(),
            status: None,
        });
        assert!(matches!(
            after_decrease(&in_doubt),
            Next::SetStatus(OrderStatus::Unknown, _)
        ));
        assert!(matches!(after_decrease(&Err(transient())), Next::Retry(_)));
        let fatal = Err(CallError::Fatal {
            detail: "415".into(),
        });
        assert!(matches!(
            after_decrease(&fatal),
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
