//! The Order Service: its order model, the checks an order from it must pass, and
//! the two calls the worker makes (list registered orders, set an order's status).

use std::fmt;
use std::ops::Deref;
use std::time::Instant;

use serde::de::{DeserializeSeed, SeqAccess, Visitor};
use serde_json::Value;

use crate::http::{CallError, Http, Route, SendError};

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

/// Bad entries of one page that get a log line each; the others share one line.
pub const INVALID_LINES_PER_PAGE: usize = 5;

/// One page of the `registered` list: at most the `limit` asked for, each entry
/// validated on its own. It reads like the slice of its entries (`len`, `iter`, a
/// `for` loop over it).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Page {
    entries: Vec<Result<Order, InvalidOrder>>,
    /// Entries the service sent beyond `limit`: counted and dropped (one warning line
    /// said how many). Later pages or cycles reach those orders.
    pub dropped: u64,
}

impl Page {
    /// The entries, in the order the service sent them.
    pub fn entries(&self) -> &[Result<Order, InvalidOrder>] {
        &self.entries
    }

    /// How many entries cannot be acted on.
    pub fn invalid(&self) -> usize {
        self.entries.iter().filter(|e| e.is_err()).count()
    }
}

impl Deref for Page {
    type Target = [Result<Order, InvalidOrder>];

    fn deref(&self) -> &Self::Target {
        &self.entries
    }
}

impl IntoIterator for Page {
    type Item = Result<Order, InvalidOrder>;
    type IntoIter = std::vec::IntoIter<Result<Order, InvalidOrder>>;

    fn into_iter(self) -> Self::IntoIter {
        self.entries.into_iter()
    }
}

impl<'a> IntoIterator for &'a Page {
    type Item = &'a Result<Order, InvalidOrder>;
    type IntoIter = std::slice::Iter<'a, Result<Order, InvalidOrder>>;

    fn into_iter(self) -> Self::IntoIter {
        self.entries.iter()
    }
}

/// Logs the bad entries of one page that the caller skips: the first
/// [`INVALID_LINES_PER_PAGE`] get a line each (id, problem), the others are counted,
/// and one line sums them up when the log is dropped (at the end of the page, or an
/// early return). A service answering thousands of bad entries costs a few lines.
///
/// ```ignore
/// let mut invalid_log = InvalidLog::new();      // once per page
/// // for each bad entry the cycle skips (after its shard and seen-before checks):
/// invalid_log.entry(&invalid);
/// // dropped with the page: "N more entries of this page skipped ..."
/// ```
#[derive(Debug, Default)]
pub struct InvalidLog {
    logged: usize,
    more: u64,
    /// The first ids of the entries not logged one by one, for the summary.
    more_ids: Vec<u64>,
}

/// Ids named in the summary line at most.
const SUMMARY_IDS: usize = 20;

impl InvalidLog {
    pub fn new() -> InvalidLog {
        InvalidLog::default()
    }

    /// One bad entry the caller skips; returns true if it got its own line.
    pub fn entry(&mut self, invalid: &InvalidOrder) -> bool {
        if self.logged < INVALID_LINES_PER_PAGE {
            self.logged += 1;
            log::error!(
                order_id = invalid.id.unwrap_or(0), outcome = "skipped", reason = invalid.problem.as_str();
                "order {}: skipped, bad data from the Order Service: {}",
                invalid.id.map_or_else(|| "(no valid id)".into(), |id| id.to_string()),
                invalid.problem
            );
            return true;
        }
        self.more += 1;
        if let Some(id) = invalid.id
            && self.more_ids.len() < SUMMARY_IDS
        {
            self.more_ids.push(id);
        }
        false
    }

    /// The line for the entries not logged one by one, if there were any.
    pub fn summary(&self) -> Option<String> {
        if self.more == 0 {
            return None;
        }
        let mut ids: Vec<String> = self.more_ids.iter().map(u64::to_string).collect();
        if self.more > ids.len() as u64 {
            ids.push("…".into());
        }
        Some(format!(
            "{} more entries of this page skipped, bad data from the Order Service \
             (only the first {INVALID_LINES_PER_PAGE} of a page get a line each); ids: {}",
            self.more,
            ids.join(", ")
        ))
    }
}

impl Drop for InvalidLog {
    fn drop(&mut self) {
        if let Some(line) = self.summary() {
            log::error!(outcome = "skipped", count = self.more; "{line}");
        }
    }
}

/// Reads a list reply's array entry by entry: the first `limit` entries are validated,
/// the rest only counted (each dropped as soon as it is read), and a non-object fails
/// the page.
struct PageReader {
    limit: usize,
}

/// What [`PageReader`] found.
struct ReadPage {
    page: Page,
    /// The first entry that is not a JSON object, described.
    non_object: Option<String>,
}

impl<'de> DeserializeSeed<'de> for PageReader {
    type Value = ReadPage;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<ReadPage, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for PageReader {
    type Value = ReadPage;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON array of orders")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ReadPage, A::Error> {
        let mut entries = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(self.limit));
        let mut non_object = None;
        while entries.len() < self.limit && non_object.is_none() {
            match seq.next_element::<Value>()? {
                Some(entry) if entry.is_object() => entries.push(validate(&entry)),
                Some(entry) => non_object = Some(short(&entry)),
                None => break,
            }
        }
        // Read one at a time and dropped at once: never kept.
        let mut dropped = 0;
        while seq.next_element::<Value>()?.is_some() {
            dropped += 1;
        }
        Ok(ReadPage {
            page: Page { entries, dropped },
            non_object,
        })
    }
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

/// The registered list's route, in telemetry.
const LIST: Route = Route {
    span_name: "GET /orders/status/{status}",
    template: "/orders/status/{status}",
};

/// The status update's route, in telemetry.
const STATUS_UPDATE: Route = Route {
    span_name: "PUT /orders/{id}",
    template: "/orders/{id}",
};

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

    /// One page of `registered` orders: at most `limit` entries whatever the service
    /// sends (the rest are counted, dropped, and named in one warning line), each
    /// validated on its own. A reply that is not a JSON array of objects is a failed call.
    pub fn list_registered(&self, skip: u64, limit: u32, resend: u32) -> Result<Page, CallError> {
        let url = format!(
            "{}/orders/status/registered?skip={skip}&limit={limit}",
            self.base
        );
        let what = "Order Service list";
        let started = Instant::now();
        let byte_limit = SMALL_REPLY_LIMIT + u64::from(limit) * BYTES_PER_LISTED_ORDER;
        let reply = self
            .http
            .get(&url, LIST, resend, byte_limit)
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
            status: Some(200),
        };
        let body = reply
            .body
            .as_ref()
            .map_err(|e| bad(format!("a body that could not be read: {e}")))?;
        let reader = PageReader {
            limit: limit as usize,
        };
        let mut json = serde_json::Deserializer::from_slice(body);
        let read = reader
            .deserialize(&mut json)
            .and_then(|read| json.end().map(|()| read))
            .map_err(|e| {
                bad(format!(
                    "a body that is not a JSON array of orders ({e}): {}",
                    reply.describe()
                ))
            })?;
        if let Some(entry) = read.non_object {
            return Err(bad(format!("an array holding a non-object: {entry}")));
        }
        if read.page.dropped > 0 {
            log::warn!(
                "{what} answered {} entries beyond the {limit} asked for (skip {skip}); \
                 they are dropped, later pages or cycles reach them",
                read.page.dropped
            );
        }
        Ok(read.page)
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
                STATUS_UPDATE,
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
        self.http.slow_since(started)
    }

    /// Every Order Service call is safe to repeat, so even a lost reply is transient.
    fn send_failed(&self, what: &str, error: SendError, started: Instant) -> CallError {
        CallError::Transient {
            detail: format!("{what} {error}"),
            retry_after: None,
            slow: self.slow(started),
            status: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::reply;
    use serde_json::json;
    use std::time::Duration;

    #[test]
    fn a_call_cut_by_the_timeout_is_transient_and_slow() {
        // A service that takes the connection and never answers.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let timeout = Duration::from_millis(300);
        let client = OrdersClient::new(Http::new(timeout), &base);
        let started = Instant::now();
        let result = client.list_registered(0, 10, 0);
        let took = started.elapsed();
        assert!(
            matches!(result, Err(CallError::Transient { slow: true, .. })),
            "{result:?}"
        );
        assert!(took < Duration::from_secs(2), "{took:?}");
        drop(listener);
    }

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

    /// `list_registered(0, limit)` against a server answering `body`.
    fn list(limit: u32, body: String) -> Result<Page, CallError> {
        let server = httpmock::MockServer::start();
        server.mock(|when, then| {
            when.method(httpmock::Method::GET)
                .path("/orders/status/registered");
            then.status(200)
                .header("content-type", "application/json")
                .body(body);
        });
        let http = Http::new(std::time::Duration::from_secs(5));
        OrdersClient::new(http, &server.base_url()).list_registered(0, limit, 0)
    }

    fn order_entry(id: u64) -> Value {
        json!({"id": id, "wood_type": "oak", "quantity": 1, "order_status": "registered"})
    }

    #[test]
    fn a_page_holds_at_most_the_limit_whatever_the_service_sends() {
        let entries: Vec<Value> = (1..=7).map(order_entry).collect();
        let page = list(5, Value::Array(entries).to_string()).unwrap();
        assert_eq!(page.len(), 5);
        assert_eq!(page.dropped, 2);
        let ids: Vec<u64> = page.iter().map(|e| e.as_ref().unwrap().id).collect();
        assert_eq!(ids, [1, 2, 3, 4, 5]);
        // Within the limit: nothing dropped.
        let entries: Vec<Value> = (1..=3).map(order_entry).collect();
        let page = list(5, Value::Array(entries).to_string()).unwrap();
        assert_eq!((page.len(), page.dropped), (3, 0));
    }

    #[test]
    fn entries_beyond_the_limit_are_counted_and_dropped() {
        // 30,000 entries past the limit, of any kind (a non-object there is not looked
        // at), in a body within the byte limit of a 10-order page.
        let mut body = String::from("[");
        for id in 1..=10 {
            body.push_str(&order_entry(id).to_string());
            body.push(',');
        }
        body.push_str(&vec!["0"; 30_000].join(","));
        body.push(']');
        let page = list(10, body).unwrap();
        assert_eq!((page.len(), page.dropped, page.invalid()), (10, 30_000, 0));
    }

    #[test]
    fn a_reply_that_is_not_an_array_of_objects_fails_the_call() {
        for body in [
            r#"{"orders": []}"#.to_string(),
            "<html>oops</html>".to_string(),
            json!([order_entry(1), 7]).to_string(),
            json!([order_entry(1)]).to_string() + " trailing",
            "[{\"id\": 1},".to_string(),
        ] {
            let e = list(10, body.clone()).expect_err(&body);
            assert!(matches!(e, CallError::Transient { .. }), "{body}: {e:?}");
        }
    }

    #[test]
    fn bad_entries_are_kept_for_the_caller_with_their_problem() {
        let body = json!([order_entry(1), {"id": 2, "wood_type": "teak"}, order_entry(3)]);
        let page = list(10, body.to_string()).unwrap();
        assert_eq!((page.len(), page.invalid()), (3, 1));
        let bad = page[1].as_ref().unwrap_err();
        assert_eq!(bad.id, Some(2));
        assert!(bad.problem.contains("wood_type"), "{}", bad.problem);
    }

    #[test]
    fn only_the_first_bad_entries_of_a_page_get_a_line_each() {
        let bad = |id| InvalidOrder {
            id: Some(id),
            problem: "quantity is not a positive integer: 0".into(),
        };
        let mut log = InvalidLog::new();
        let own_lines = (1..=1000).filter(|id| log.entry(&bad(*id))).count();
        assert_eq!(own_lines, INVALID_LINES_PER_PAGE);
        let summary = log.summary().expect("a summary line");
        assert!(
            summary.starts_with("995 more entries of this page skipped"),
            "{summary}"
        );
        assert!(
            summary.ends_with(
                "ids: 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, …"
            ),
            "{summary}"
        );
        let mut log = InvalidLog::new();
        assert!(log.entry(&bad(1)));
        assert_eq!(log.summary(), None, "nothing to sum up");
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
