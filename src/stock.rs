//! The Stock Service: the one call the worker makes, a decrease of one wood type's stock.

use std::time::{Duration, Instant};

use crate::http::{CallError, Http, Route, SendError};
use crate::orders::Order;

/// The call, in log lines.
const WHAT: &str = "Stock Service decrease";

/// The decrease's route, in telemetry.
const DECREASE: Route = Route {
    span_name: "POST /stocks/decrease",
    template: "/stocks/decrease",
};

/// Largest reply accepted for a decrease.
const REPLY_LIMIT: u64 = 64 * 1024;

/// The Stock Service client: one attempt per call; the caller retries.
#[derive(Clone)]
pub struct StockClient {
    http: Http,
    base: String,
    reply_timeout: Duration,
}

impl StockClient {
    /// `base` is the service's URL without a trailing slash; `reply_timeout` bounds the
    /// wait for a decrease's reply once it is sent (the HTTP timeout bounds the rest).
    pub fn new(http: Http, base: &str, reply_timeout: Duration) -> StockClient {
        StockClient {
            http,
            base: base.trim_end_matches('/').to_string(),
            reply_timeout,
        }
    }

    /// The `Idempotency-Key` of an order's decrease: the same on every attempt.
    pub fn idempotency_key(order: &Order) -> String {
        format!("order-{}", order.id)
    }

    /// `POST /stocks/decrease` for one order. A `200` means the stock was taken, whatever
    /// its body says.
    pub fn decrease(&self, order: &Order, resend: u32) -> Result<(), CallError> {
        let url = format!("{}/stocks/decrease", self.base);
        let body = format!(
            r#"{{"wood_type":"{}","quantity":{}}}"#,
            order.wood_type.as_str(),
            order.quantity
        );
        let started = Instant::now();
        let result = self.http.post_json(
            &url,
            DECREASE,
            resend,
            body.as_bytes(),
            &StockClient::idempotency_key(order),
            self.reply_timeout,
            REPLY_LIMIT,
        );
        let slow = self.http.slow_since(started);
        let reply = match result {
            Ok(reply) => reply,
            Err(SendError::NotSent(d)) => {
                return Err(CallError::Transient {
                    detail: format!("Stock Service decrease not sent: {d}"),
                    retry_after: None,
                    slow,
                    status: None,
                });
            }
            Err(SendError::NoResources(d)) => {
                return Err(CallError::Fatal {
                    detail: format!("Stock Service decrease not sent: {d}"),
                });
            }
            Err(SendError::NoReply(d)) => {
                return Err(CallError::InDoubt {
                    detail: format!(
                        "Stock Service decrease sent, no reply after {} ms: {d}",
                        started.elapsed().as_millis()
                    ),
                });
            }
        };
        if (200..300).contains(&reply.status) {
            if let Err(e) = &reply.body {
                log::warn!(
                    "stock decrease for order {} succeeded but its reply could not be read: {e}",
                    order.id
                );
            }
            return Ok(());
        }
        Err(CallError::from_status(WHAT, &reply, slow, true))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::reply;

    #[test]
    fn business_refusals_carry_the_reason() {
        assert_eq!(
            CallError::from_status(
                WHAT,
                &reply(400, r#"{"error": "Insufficient stock"}"#),
                false,
                true
            ),
            CallError::Rejected {
                status: 400,
                reason: "Insufficient stock".into()
            }
        );
        assert_eq!(
            CallError::from_status(
                WHAT,
                &reply(404, r#"{"error": "Stock not found"}"#),
                false,
                true
            ),
            CallError::Rejected {
                status: 404,
                reason: "Stock not found".into()
            }
        );
    }

    #[test]
    fn a_stalled_500_is_transient_and_slow() {
        let stalled = reply(
            500,
            r#"{"error": "Unexpected error during stock decrease (read)"}"#,
        );
        let e = CallError::from_status(WHAT, &stalled, true, true);
        assert!(
            matches!(e, CallError::Transient { slow: true, .. }),
            "{e:?}"
        );
    }

    #[test]
    fn a_refused_content_type_stops_the_cycle() {
        assert!(matches!(
            CallError::from_status(WHAT, &reply(415, "<!doctype html>"), false, true),
            CallError::Fatal { .. }
        ));
        assert!(matches!(
            CallError::from_status(WHAT, &reply(308, ""), false, true),
            CallError::Fatal { .. }
        ));
    }
}
