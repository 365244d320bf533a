//! The Stock Service: the one call the worker makes, a decrease of one wood type's stock.

// Parses what a peer or a file sends: no index or slice that could panic.
#![cfg_attr(not(test), deny(clippy::indexing_slicing))]

use std::time::{Duration, Instant};

use crate::services::http::{Call, CallError, Http, Route, Target};
use crate::services::orders::Order;

/// The call, in log lines.
const WHAT: &str = "Stock Service decrease";

/// The Stock Service, in error messages.
pub const STOCK_SERVICE: Target = Target {
    service: "Stock Service",
    variable: "API_URL_STOCKS (--stocks-url)",
};

/// The `error` texts with which the Stock Service refuses a decrease: `400` not enough
/// left or a bad body, `404` no stock row for the wood type. Only these block an order.
const REFUSALS: [&str; 3] = ["Insufficient stock", "Invalid input", "Stock not found"];

/// The decrease's route, in telemetry.
const DECREASE: Route = Route {
    span_name: "POST /stocks/decrease",
    template: "/stocks/decrease",
};

/// What the real Stock Service's `500` says when its write or commit failed, and the
/// stock may be taken (`Unexpected error during stock decrease (update)`). Sending
/// the decrease again could take it twice, so that answer leaves the order in doubt.
/// This reading only ever adds caution: any other `500` is retried, as the contract's
/// `500`s come before the change (the simulated one, and the stall's `(read)`).
const AT_THE_WRITE: &str = "stock decrease (update)";

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
        let call = Call {
            what: WHAT,
            target: STOCK_SERVICE,
            url: &url,
            refusals: &REFUSALS,
        };
        // A decrease is not safe to repeat: a lost reply leaves it in doubt.
        let reply = result.map_err(|e| call.send_failed(e, slow, false, started.elapsed()))?;
        if (200..300).contains(&reply.status) {
            if let Err(e) = &reply.body {
                log::warn!(
                    "stock decrease for order {} succeeded but its reply could not be read: {e}",
                    order.id
                );
            }
            return Ok(());
        }
        if reply.status == 500 && reply.describe().contains(AT_THE_WRITE) {
            return Err(CallError::InDoubt {
                detail: format!(
                    "Stock Service decrease failed at its write (500 {})",
                    reply.describe()
                ),
                status: Some(reply.status),
            });
        }
        Err(call.from_status(&reply, slow))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::http::{SendError, reply};

    fn decrease() -> Call<'static> {
        Call {
            what: WHAT,
            target: STOCK_SERVICE,
            url: "http://stock:5001/v1/stocks/decrease",
            refusals: &REFUSALS,
        }
    }

    #[test]
    fn business_refusals_carry_the_reason() {
        for (status, reason) in [
            (400, "Insufficient stock"),
            (400, "Invalid input"),
            (404, "Stock not found"),
        ] {
            let body = format!(r#"{{"error": "{reason}"}}"#);
            assert_eq!(
                decrease().from_status(&reply(status, &body), false),
                CallError::Rejected {
                    status,
                    reason: reason.into()
                }
            );
        }
    }

    #[test]
    fn a_404_page_from_a_wrong_url_blocks_nothing_and_names_the_url() {
        for (status, body) in [
            (
                404,
                "<!doctype html><title>404 Not Found</title><h1>Not Found</h1>",
            ),
            (404, r#"{"error": "Order not found"}"#),
            (404, r#"{"message": "Stock not found"}"#),
            (400, "<h1>Bad Request</h1>"),
            (
                400,
                r#"{"error": "Missing 'order_status' in request body"}"#,
            ),
        ] {
            let e = decrease().from_status(&reply(status, body), false);
            let CallError::Unexpected { detail, .. } = &e else {
                panic!("{status} {body}: {e:?}");
            };
            assert!(
                detail.contains("at http://stock:5001/v1/stocks/decrease")
                    && detail.ends_with(
                        "is API_URL_STOCKS (--stocks-url) the Stock Service's base URL?"
                    ),
                "{detail}"
            );
        }
    }

    #[test]
    fn a_stalled_500_is_transient_and_slow() {
        let stalled = reply(
            500,
            r#"{"error": "Unexpected error during stock decrease (read)"}"#,
        );
        let e = decrease().from_status(&stalled, true);
        assert!(
            matches!(e, CallError::Transient { slow: true, .. }),
            "{e:?}"
        );
    }

    #[test]
    fn a_500_at_the_write_leaves_the_decrease_in_doubt_and_others_are_retried() {
        // Against a stand-in answering as the real service does: its `500` bodies.
        let server = httpmock::MockServer::start();
        let stock = StockClient::new(
            Http::new(Duration::from_secs(2)),
            &server.base_url(),
            Duration::from_secs(2),
        );
        let order = Order {
            id: 1,
            wood_type: crate::services::orders::WoodType::Oak,
            quantity: 2,
        };
        let mut answer = server.mock(|when, then| {
            when.path("/stocks/decrease");
            then.status(500)
                .body(r#"{"error": "Unexpected error during stock decrease (update)"}"#);
        });
        let e = stock.decrease(&order, 0).unwrap_err();
        assert!(matches!(e, CallError::InDoubt { .. }), "{e:?}");
        answer.delete();
        for body in [
            r#"{"error": "Simulated DB error during stock decrease"}"#,
            r#"{"error": "Unexpected error during stock decrease (read)"}"#,
            "<html>Internal Server Error</html>",
        ] {
            let mut answer = server.mock(|when, then| {
                when.path("/stocks/decrease");
                then.status(500).body(body);
            });
            let e = stock.decrease(&order, 0).unwrap_err();
            assert!(matches!(e, CallError::Transient { .. }), "{body}: {e:?}");
            answer.delete();
        }
    }

    #[test]
    fn a_refused_content_type_or_a_redirect_is_outside_the_contract() {
        for (status, body) in [(415, "<!doctype html>"), (308, "")] {
            let e = decrease().from_status(&reply(status, body), false);
            assert!(
                matches!(e, CallError::Unexpected { status: s, .. } if s == status),
                "{status}: {e:?}"
            );
        }
    }

    #[test]
    fn a_lost_reply_is_in_doubt_and_says_so() {
        let e = decrease().send_failed(
            SendError::NoReply("no reply within 35 s (--decrease-timeout)".into()),
            true,
            false,
            std::time::Duration::from_millis(35_002),
        );
        assert_eq!(
            e,
            CallError::InDoubt {
                detail: "Stock Service decrease sent to http://stock:5001/v1/stocks/decrease, \
                         no reply after 35002 ms: no reply within 35 s (--decrease-timeout)"
                    .into(),
                status: None,
            }
        );
        let e = decrease().send_failed(
            SendError::NotSent("connection refused".into()),
            false,
            false,
            std::time::Duration::ZERO,
        );
        assert!(matches!(e, CallError::Transient { .. }), "{e:?}");
        assert!(e.to_string().ends_with(
            "connection refused; is the Stock Service running there? check API_URL_STOCKS (--stocks-url)"
        ));
    }
}
