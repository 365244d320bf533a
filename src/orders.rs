//! The Order Service: its order model, the checks an order from it must pass, and
//! the two calls the worker makes (list registered orders, set an order's status).

use std::fmt;
use std::time::Instant;

use serde_json::Value;

use crate::http::{CallError, Http, SendError};

/// Largest reply accepted for a status update.
const SMALL_REPLY_LIMIT: u64 = 64 * 1024;
/// Bytes allowed per order in a list reply (a real order takes about 80), plus a margin.
const BYTES_PER_LISTED_ORDER: u64 = 1024;

/// The five wood types of the demo.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WoodType {
    Oak,
    Maple,
    Birch,
    Elm,
    Pine,
}

impl WoodType {
    pub const ALL: [WoodType; 5] = [
        WoodType::Oak,
        WoodType::Maple,
        WoodType::Birch,
        WoodType::Elm,
        WoodType::Pine,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            WoodType::Oak => "oak",
            WoodType::Maple => "maple",
            WoodType::Birch => "birch",
            WoodType::Elm => "elm",
            WoodType::Pine => "pine",
        }
    }

    /// The exact lower-case name, as the services write it.
    pub fn parse(name: &str) -> Option<WoodType> {
        WoodType::ALL.into_iter().find(|w| w.as_str() == name)
    }
}

impl fmt::Display for WoodType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The statuses the Order Service accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OrderStatus {
    Registered,
    Ready,
    Shipped,
    Blocked,
    Closed,
    Unknown,
}

impl OrderStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Registered => "registered",
            OrderStatus::Ready => "ready",
            OrderStatus::Shipped => "shipped",
            OrderStatus::Blocked => "blocked",
            OrderStatus::Closed => "closed",
            OrderStatus::Unknown => "unknown",
        }
    }

    /// The exact lower-case name.
    pub fn parse(name: &str) -> Option<OrderStatus> {
        use OrderStatus::*;
        [Registered, Ready, Shipped, Blocked, Closed, Unknown]
            .into_iter()
            .find(|s| s.as_str() == name)
    }
}

impl fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A registered order that passed every check; only such an order is acted on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Order {
    pub id: u64,
    pub wood_type: WoodType,
    pub quantity: u32,
}

/// An entry of the list that cannot be acted on, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidOrder {
    /// The id, when the entry has a valid one.
    pub id: Option<u64>,
    pub problem: String,
}

/// Checks one entry of a `registered` list: a positive integer `id`, one of the five
/// wood types, a positive integer `quantity` and the status `registered`.
pub fn validate(entry: &Value) -> Result<Order, InvalidOrder> {
    let invalid = |id, problem: String| InvalidOrder { id, problem };
    let Value::Object(map) = entry else {
        return Err(invalid(None, format!("not an object: {}", short(entry))));
    };
    let id = match map.get("id") {
        Some(Value::Number(n)) => n.as_u64().filter(|id| *id > 0),
        _ => None,
    }
    .ok_or_else(|| {
        invalid(
            None,
            format!("id is not a positive integer: {}", field(map.get("id"))),
        )
    })?;
    let wood_type = match map.get("wood_type") {
        Some(Value::String(s)) => WoodType::parse(s),
        _ => None,
    }
    .ok_or_else(|| {
        invalid(
            Some(id),
            format!(
                "wood_type is not one of the five: {}",
                field(map.get("wood_type"))
            ),
        )
    })?;
    let quantity = match map.get("quantity") {
        Some(Value::Number(n)) => n
            .as_u64()
            .filter(|q| *q > 0)
            .and_then(|q| u32::try_from(q).ok()),
        _ => None,
    }
    .ok_or_else(|| {
        invalid(
            Some(id),
            format!(
                "quantity is not a positive integer: {}",
                field(map.get("quantity"))
            ),
        )
    })?;
    match map.get("order_status") {
        Some(Value::String(s)) if s == OrderStatus::Registered.as_str() => {}
        other => {
            return Err(invalid(
                Some(id),
                format!("order_status is not registered: {}", field(other)),
            ));
        }
    }
    Ok(Order {
        id,
        wood_type,
        quantity,
    })
}

fn field(value: Option<&Value>) -> String {
    value.map_or_else(|| "missing".into(), short)
}

fn short(value: &Value) -> String {
    crate::http::describe_body(value.to_string().as_bytes())
}

/// The Order Service client: one attempt per call; the caller retries.
#[derive(Clone)]
pub struct OrdersClient {
    http: Http,
    base: String,
}

impl OrdersClient {
    /// `base` is the service's URL without a trailing slash.
    pub fn new(http: Http, base: &str) -> OrdersClient {
        OrdersClient {
            http,
            base: base.trim_end_matches('/').to_string(),
        }
    }

    /// One page of `registered` orders: each entry validated on its own. A reply that is
    /// not a JSON array of objects is a failed call.
    pub fn list_registered(
        &self,
        skip: u64,
        limit: u32,
        resend: u32,
    ) -> Result<Vec<Result<Order, InvalidOrder>>, CallError> {
        let url = format!(
            "{}/orders/status/registered?skip={skip}&limit={limit}",
            self.base
        );
        let what = "Order Service list";
        let started = Instant::now();
        let byte_limit = SMALL_REPLY_LIMIT + u64::from(limit) * BYTES_PER_LISTED_ORDER;
        let reply = self
            .http
            .get(&url, "/orders/status/{status}", resend, byte_limit)
            .map_err(|e| self.send_failed(what, e, started))?;
        if reply.status != 200 {
            // A list call refused means a wrong URL, not a refused order.
            return Err(CallError::from_status(
                what,
                &reply,
                self.slow(started),
                false,
            ));
        }
        let bad = |detail: String| CallError::Transient {
            detail: format!("{what} answered 200 with {detail}"),
            retry_after: None,
            slow: false,
        };
        let body = reply
            .body
            .as_ref()
            .map_err(|e| bad(format!("a body that could not be read: {e}")))?;
        let entries: Vec<Value> = match serde_json::from_slice(body) {
            Ok(Value::Array(entries)) => entries,
            Ok(other) => return Err(bad(format!("JSON that is not an array: {}", short(&other)))),
            Err(e) => {
                return Err(bad(format!(
                    "a body that is not JSON ({e}): {}",
                    reply.describe()
                )));
            }
        };
        if let Some(entry) = entries.iter().find(|e| !e.is_object()) {
            return Err(bad(format!(
                "an array holding a non-object: {}",
                short(entry)
            )));
        }
        Ok(entries.iter().map(validate).collect())
    }

    /// `PUT /orders/<id>` with the new status; `resend` is the attempt's number.
    pub fn set_status(&self, id: u64, status: OrderStatus, resend: u32) -> Result<(), CallError> {
        let url = format!("{}/orders/{id}", self.base);
        let body = format!(r#"{{"order_status":"{}"}}"#, status.as_str());
        let what = "Order Service status update";
        let started = Instant::now();
        let reply = self
            .http
            .put_json(
                &url,
                "/orders/{id}",
                resend,
                body.as_bytes(),
                SMALL_REPLY_LIMIT,
            )
            .map_err(|e| self.send_failed(what, e, started))?;
        match reply.status {
            // The status is set whatever the body says; a bad body is only worth a line.
            200..=299 => {
                if let Err(e) = &reply.body {
                    log::warn!(
                        "{what} of order {id} succeeded but its reply could not be read: {e}"
                    );
                }
                Ok(())
            }
            _ => Err(CallError::from_status(
                what,
                &reply,
                self.slow(started),
                true,
            )),
        }
    }

    fn slow(&self, started: Instant) -> bool {
        started.elapsed() >= self.http.timeout()
    }

    /// Every Order Service call is safe to repeat, so even a lost reply is transient.
    fn send_failed(&self, what: &str, error: SendError, started: Instant) -> CallError {
        CallError::Transient {
            detail: format!("{what} {error}"),
            retry_after: None,
            slow: self.slow(started),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::Reply;
    use serde_json::json;

    #[test]
    fn a_well_formed_order_is_accepted() {
        let o = validate(
            &json!({"id": 17, "wood_type": "oak", "quantity": 3, "order_status": "registered"}),
        );
        assert_eq!(
            o,
            Ok(Order {
                id: 17,
                wood_type: WoodType::Oak,
                quantity: 3
            })
        );
    }

    #[test]
    fn malformed_orders_are_refused_with_the_reason() {
        let cases = [
            (
                json!({"wood_type": "oak", "quantity": 3, "order_status": "registered"}),
                None,
                "id",
            ),
            (
                json!({"id": "17", "wood_type": "oak", "quantity": 3, "order_status": "registered"}),
                None,
                "id",
            ),
            (
                json!({"id": 0, "wood_type": "oak", "quantity": 3, "order_status": "registered"}),
                None,
                "id",
            ),
            (
                json!({"id": -4, "wood_type": "oak", "quantity": 3, "order_status": "registered"}),
                None,
                "id",
            ),
            (
                json!({"id": 1.5, "wood_type": "oak", "quantity": 3, "order_status": "registered"}),
                None,
                "id",
            ),
            (
                json!({"id": 2, "wood_type": "OAK", "quantity": 3, "order_status": "registered"}),
                Some(2),
                "wood_type",
            ),
            (
                json!({"id": 2, "wood_type": "teak", "quantity": 3, "order_status": "registered"}),
                Some(2),
                "wood_type",
            ),
            (
                json!({"id": 2, "wood_type": "oak", "quantity": 0, "order_status": "registered"}),
                Some(2),
                "quantity",
            ),
            (
                json!({"id": 2, "wood_type": "oak", "quantity": "3", "order_status": "registered"}),
                Some(2),
                "quantity",
            ),
            (
                json!({"id": 2, "wood_type": "oak", "quantity": 2.0, "order_status": "registered"}),
                Some(2),
                "quantity",
            ),
            (
                json!({"id": 2, "wood_type": "oak", "quantity": 1e12, "order_status": "registered"}),
                Some(2),
                "quantity",
            ),
            (
                json!({"id": 2, "wood_type": "oak", "quantity": 3, "order_status": "ready"}),
                Some(2),
                "order_status",
            ),
            (
                json!({"id": 2, "wood_type": "oak", "quantity": 3}),
                Some(2),
                "order_status",
            ),
            (json!(["not", "an", "object"]), None, "object"),
        ];
        for (entry, id, word) in cases {
            let e = validate(&entry).expect_err(&entry.to_string());
            assert_eq!(e.id, id, "{entry}");
            assert!(e.problem.contains(word), "{entry}: {}", e.problem);
        }
    }

    fn reply(status: u16, body: &str) -> Reply {
        Reply {
            status,
            body: Ok(body.as_bytes().to_vec()),
            retry_after: None,
        }
    }

    #[test]
    fn statuses_map_to_what_the_caller_does_next() {
        let r = CallError::from_status(
            "x",
            &reply(404, r#"{"error": "Order not found"}"#),
            false,
            true,
        );
        assert_eq!(
            r,
            CallError::Rejected {
                status: 404,
                reason: "Order not found".into()
            }
        );
        assert!(matches!(
            CallError::from_status("x", &reply(404, "<html>"), false, false),
            CallError::Fatal { .. }
        ));
        for s in [408, 429, 500, 502, 503, 504] {
            assert!(
                matches!(
                    CallError::from_status("x", &reply(s, ""), false, true),
                    CallError::Transient { .. }
                ),
                "{s}"
            );
        }
        for s in [301, 308, 401, 403, 405, 415] {
            assert!(
                matches!(
                    CallError::from_status("x", &reply(s, ""), false, true),
                    CallError::Fatal { .. }
                ),
                "{s}"
            );
        }
    }
}
