//! The Order Service: its order model, the checks an order from it must pass, and
//! the two calls the worker makes (list registered orders, set an order's status).

// Parses what a peer or a file sends: no index or slice that could panic.
#![cfg_attr(not(test), deny(clippy::indexing_slicing))]

use std::fmt;
use std::ops::Deref;
use std::time::Instant;

use serde::de::{MapAccess, Visitor};
use serde_json::Value;

use crate::services::http::{Call, CallError, Http, Route, SendError, Target};

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

/// Why a list reply's body is refused as a page.
#[derive(Debug)]
pub enum ListError {
    /// Not one JSON array (another value, text, an array cut off or followed by more).
    NotArray(String),
    /// An array holding a value other than an object: this one, shortened.
    NonObject(String),
}

/// A list reply's body as the worker reads it: at most `limit` entries, each parsed
/// and validated alone (a bad one costs only itself), and a count of those beyond.
pub fn read_list_body(body: &[u8], limit: usize) -> Result<Page, ListError> {
    let split = split_array(body, limit).map_err(ListError::NotArray)?;
    let mut entries = Vec::with_capacity(split.entries.len());
    for entry in split.entries {
        match parse_entry(entry) {
            Ok(Ok(object)) => entries.push(validate(&object)),
            Ok(Err(other)) => return Err(ListError::NonObject(short(&other))),
            Err(problem) => entries.push(Err(InvalidOrder { id: None, problem })),
        }
    }
    Ok(Page {
        entries,
        dropped: split.beyond,
    })
}

/// A list reply's array, split into its top-level entries without parsing them.
struct SplitPage<'a> {
    /// The first `limit` entries, each its bytes (surrounding white space trimmed).
    entries: Vec<&'a [u8]>,
    /// Entries beyond `limit`: counted only.
    beyond: u64,
}

/// Splits a JSON array into its top-level entries with a scanner that follows strings,
/// escapes and bracket depth (a counter, so no nesting is too deep for it), without
/// reading the entries themselves: each is then parsed alone ([`parse_entry`]), and an
/// entry that is not valid JSON costs only itself. A body that is not one array
/// (another value, text, an array cut off or followed by more) is an error for the page.
fn split_array(body: &[u8], limit: usize) -> Result<SplitPage<'_>, String> {
    let ws = |b: &u8| matches!(b, b' ' | b'\t' | b'\n' | b'\r');
    let mut i = body.iter().position(|b| !ws(b)).unwrap_or(body.len());
    if body.get(i) != Some(&b'[') {
        return Err("not a JSON array".into());
    }
    i += 1;
    let mut page = SplitPage {
        entries: Vec::new(),
        beyond: 0,
    };
    let mut first = true;
    loop {
        let start = i;
        let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
        let (end, last) = loop {
            let Some(&b) = body.get(i) else {
                return Err("the array is cut off (no closing ])".into());
            };
            if in_string {
                match b {
                    _ if escaped => escaped = false,
                    b'\\' => escaped = true,
                    b'"' => in_string = false,
                    _ => {}
                }
            } else {
                match b {
                    b'"' => in_string = true,
                    b'[' | b'{' => depth += 1,
                    b']' if depth == 0 => break (i, true),
                    b'}' if depth == 0 => return Err("an unbalanced } in the array".into()),
                    b']' | b'}' => depth -= 1,
                    b',' if depth == 0 => break (i, false),
                    _ => {}
                }
            }
            i += 1;
        };
        let mut entry = body.get(start..end).unwrap_or_default();
        while let [b, rest @ ..] = entry
            && ws(b)
        {
            entry = rest;
        }
        while let [rest @ .., b] = entry
            && ws(b)
        {
            entry = rest;
        }
        // `[]`, or `[ ]`: no entry at all.
        if !(first && last && entry.is_empty()) {
            if page.entries.len() < limit {
                page.entries.push(entry);
            } else {
                page.beyond += 1;
            }
        }
        first = false;
        i = end + 1;
        if last {
            break;
        }
    }
    if body.get(i..).unwrap_or_default().iter().all(ws) {
        Ok(page)
    } else {
        Err("more after the array's end".into())
    }
}

/// One entry of a list, parsed alone: a JSON object with no key twice, or why it is
/// not one. `Ok(Err(value))`: valid JSON, but not an object.
fn parse_entry(entry: &[u8]) -> Result<Result<Value, Value>, String> {
    let value: Value = serde_json::from_slice(entry).map_err(|e| {
        format!(
            "not valid JSON ({e}): {}",
            crate::services::http::describe_body(entry)
        )
    })?;
    if !value.is_object() {
        return Ok(Err(value));
    }
    // The value kept the last of a repeated key: which one the service meant is unknown.
    serde_json::from_slice::<UniqueKeys>(entry).map_err(|e| {
        format!(
            "{e}, so which value holds is unknown: {}",
            crate::services::http::describe_body(entry)
        )
    })?;
    Ok(Ok(value))
}

/// Reads a JSON object's keys (values skipped) and fails on the first one found twice.
struct UniqueKeys;

impl<'de> serde::Deserialize<'de> for UniqueKeys {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<UniqueKeys, D::Error> {
        d.deserialize_map(UniqueKeys)
    }
}

impl<'de> Visitor<'de> for UniqueKeys {
    type Value = UniqueKeys;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<UniqueKeys, A::Error> {
        let mut seen: Vec<String> = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            if seen.contains(&key) {
                return Err(serde::de::Error::custom(format!(
                    "the key {key:?} is there twice"
                )));
            }
            seen.push(key);
            map.next_value::<serde::de::IgnoredAny>()?;
        }
        Ok(UniqueKeys)
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
        Some(Value::Number(n)) => n.as_u64().filter(|q| *q > 0),
        _ => None,
    };
    let quantity = match quantity.map(u32::try_from) {
        Some(Ok(quantity)) => quantity,
        Some(Err(_)) => {
            return Err(invalid(
                Some(id),
                format!(
                    "quantity is too large: {} (at most {})",
                    field(map.get("quantity")),
                    u32::MAX
                ),
            ));
        }
        None => {
            return Err(invalid(
                Some(id),
                format!(
                    "quantity is not a positive integer: {}",
                    field(map.get("quantity"))
                ),
            ));
        }
    };
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
    crate::services::http::describe_body(value.to_string().as_bytes())
}

/// The registered list's route, in telemetry.
const LIST: Route = Route {
    span_name: "GET /orders/status/{status}",
    template: "/orders/status/{status}",
};

/// The Order Service, in error messages.
pub const ORDER_SERVICE: Target = Target {
    service: "Order Service",
    variable: "API_URL_ORDERS (--orders-url)",
};

/// The `error` texts with which the Order Service refuses a status update (`400`:
/// missing or invalid status; `404`: no such order).
const STATUS_REFUSALS: [&str; 3] = [
    "Missing 'order_status' in request body",
    "Invalid order status",
    "Order not found",
];

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
        // A list call refused means a wrong URL, not a refused order.
        let call = self.call(what, &url, &[]);
        let started = Instant::now();
        let byte_limit = SMALL_REPLY_LIMIT + u64::from(limit) * BYTES_PER_LISTED_ORDER;
        let reply = self
            .http
            .get(&url, LIST, resend, byte_limit)
            .map_err(|e| self.send_failed(&call, e, started))?;
        if reply.status != 200 {
            return Err(call.from_status(&reply, self.slow(started)));
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
        let read = read_list_body(body, limit as usize).map_err(|e| match e {
            ListError::NotArray(e) => bad(format!(
                "a body that is not a JSON array of orders ({e}): {}",
                reply.describe()
            )),
            ListError::NonObject(other) => bad(format!("an array holding a non-object: {other}")),
        })?;
        if read.dropped > 0 {
            log::warn!(
                "{what} answered {} entries beyond the {limit} asked for (skip {skip}); \
                 they are dropped, later pages or cycles reach them",
                read.dropped
            );
        }
        Ok(read)
    }

    /// `PUT /orders/<id>` with the new status; `resend` is the attempt's number.
    pub fn set_status(&self, id: u64, status: OrderStatus, resend: u32) -> Result<(), CallError> {
        let url = format!("{}/orders/{id}", self.base);
        let body = format!(r#"{{"order_status":"{}"}}"#, status.as_str());
        let what = "Order Service status update";
        let call = self.call(what, &url, &STATUS_REFUSALS);
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
            .map_err(|e| self.send_failed(&call, e, started))?;
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
            _ => Err(call.from_status(&reply, self.slow(started))),
        }
    }

    /// A call to `url`, for what its failures say.
    fn call<'a>(&self, what: &'a str, url: &'a str, refusals: &'a [&'a str]) -> Call<'a> {
        Call {
            what,
            target: ORDER_SERVICE,
            url,
            refusals,
        }
    }

    fn slow(&self, started: Instant) -> bool {
        self.http.slow_since(started)
    }

    /// Every Order Service call is safe to repeat, so even a lost reply is transient;
    /// a process out of resources stops the cycle.
    fn send_failed(&self, call: &Call, error: SendError, started: Instant) -> CallError {
        call.send_failed(error, self.slow(started), true, started.elapsed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::http::reply;
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
        list_bytes(limit, body.into_bytes())
    }

    /// [`list`], with a body that need not be text.
    fn list_bytes(limit: u32, body: Vec<u8>) -> Result<Page, CallError> {
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

    /// The entries `split_array` finds, as text.
    fn split(body: &str, limit: usize) -> Result<(Vec<String>, u64), String> {
        let page = split_array(body.as_bytes(), limit)?;
        let entries = page
            .entries
            .iter()
            .map(|e| String::from_utf8_lossy(e).into_owned())
            .collect();
        Ok((entries, page.beyond))
    }

    #[test]
    fn a_page_is_split_into_its_top_level_entries_unread() {
        assert_eq!(split("[]", 10), Ok((vec![], 0)));
        assert_eq!(split(" \n[ \t]\r\n", 10), Ok((vec![], 0)));
        let (entries, beyond) = split(
            r#"[ {"a": "],}\"[{"} , [1, {"b": [2]}], 1e400,"x\\",
            {"deep": [[[[]]]]} ]"#,
            10,
        )
        .unwrap();
        assert_eq!(
            entries,
            [
                r#"{"a": "],}\"[{"}"#,
                r#"[1, {"b": [2]}]"#,
                "1e400",
                r#""x\\""#,
                r#"{"deep": [[[[]]]]}"#
            ]
        );
        assert_eq!(beyond, 0);
        // An empty entry is an entry (that will not parse), not the end.
        assert_eq!(
            split("[1,,2,]", 10),
            Ok((vec!["1".into(), "".into(), "2".into(), "".into()], 0))
        );
        // Beyond the limit: counted, not kept.
        assert_eq!(
            split(r#"[1,2,3,{"a":[]}]"#, 2),
            Ok((vec!["1".into(), "2".into()], 2))
        );
        // Nesting far beyond any parser's recursion limit: one entry, no stack used.
        let deep = format!("[{}{}]", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(split(&deep, 10).unwrap().0.len(), 1);
        for not_an_array in [
            "",
            "{}",
            r#"{"orders": []}"#,
            "<html>oops</html>",
            "[1, 2",
            r#"[{"a": "]"#,
            "[1] trailing",
            "[1]]",
            "[1}",
        ] {
            assert!(split(not_an_array, 10).is_err(), "{not_an_array}");
        }
    }

    #[test]
    fn one_unreadable_entry_among_twenty_costs_only_itself() {
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        let hostile: [(&[u8], &str); 7] = [
            (deep.as_bytes(), "recursion limit"),
            (
                br#"{"id": 9, "wood_type": "oak", "quantity": 1e400, "order_status": "registered"}"#,
                "number out of range",
            ),
            (
                b"{\"id\": 9, \"wood_type\": \"oak\xff\", \"quantity\": 1, \"order_status\": \"registered\"}",
                "invalid unicode",
            ),
            (
                b"{\"id\": 9, \"wood_type\": \"o\x01ak\", \"quantity\": 1, \"order_status\": \"registered\"}",
                "control character",
            ),
            (
                br#"{"id": 9, "wood_type": "\uZZZZ", "quantity": 1, "order_status": "registered"}"#,
                "escape",
            ),
            (
                br#"{"id": 9, "wood_type": "oak", "quantity": 1, "order_status": "registered", "id": 10}"#,
                r#"the key "id" is there twice"#,
            ),
            (
                br#"{"id": 9, "wood_type": "oak", "quantity": 1, "order_status": "registered", "\u0069d": 10}"#,
                r#"the key "id" is there twice"#,
            ),
        ];
        for (entry, word) in hostile {
            let mut body = b"[".to_vec();
            for id in 1..=20u64 {
                if id > 1 {
                    body.push(b',');
                }
                if id == 9 {
                    body.extend_from_slice(entry);
                } else {
                    body.extend_from_slice(order_entry(id).to_string().as_bytes());
                }
            }
            body.push(b']');
            let page = list_bytes(20, body).unwrap();
            let case = String::from_utf8_lossy(entry);
            assert_eq!((page.len(), page.invalid()), (20, 1), "{case}");
            let bad = page[8].as_ref().unwrap_err();
            assert!(bad.problem.contains(word), "{case}: {}", bad.problem);
            let good: Vec<u64> = page
                .iter()
                .filter_map(|e| e.as_ref().ok())
                .map(|o| o.id)
                .collect();
            assert_eq!(
                good,
                (1..=20).filter(|id| *id != 9).collect::<Vec<_>>(),
                "{case}"
            );
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

    /// A status update of order 1 at `http://h:1`, for the mapping's tests.
    fn update() -> Call<'static> {
        Call {
            what: "Order Service status update",
            target: ORDER_SERVICE,
            url: "http://u:secret@h:1/orders/1",
            refusals: &STATUS_REFUSALS,
        }
    }

    #[test]
    fn statuses_map_to_what_the_caller_does_next() {
        let r = update().from_status(&reply(404, r#"{"error": "Order not found"}"#), false);
        assert_eq!(
            r,
            CallError::Rejected {
                status: 404,
                reason: "Order not found".into()
            }
        );
        let list = Call {
            refusals: &[],
            ..update()
        };
        assert!(matches!(
            list.from_status(&reply(404, r#"{"error": "Order not found"}"#), false),
            CallError::Unexpected { status: 404, .. }
        ));
        for s in [408, 429, 500, 502, 503, 504] {
            assert!(
                matches!(
                    update().from_status(&reply(s, ""), false),
                    CallError::Transient { .. }
                ),
                "{s}"
            );
        }
        for s in [301, 308, 401, 403, 405, 409, 415, 422] {
            assert!(
                matches!(
                    update().from_status(&reply(s, ""), false),
                    CallError::Unexpected { status, .. } if status == s
                ),
                "{s}"
            );
        }
    }

    #[test]
    fn a_404_or_400_the_contract_does_not_know_asks_whether_the_url_is_right() {
        let html = "<!doctype html><html><head><title>404 Not Found</title></head><body><h1>Not Found</h1><p>The requested URL was not found on the server.</p></body></html>";
        for (status, body) in [
            (404, html),
            (404, r#"{"error": "Not found"}"#),
            (404, r#"{"detail": "Order not found"}"#),
            (400, "<h1>Bad Request</h1>"),
            (400, r#"{"error": "Insufficient stock"}"#),
            (404, ""),
        ] {
            let CallError::Unexpected { detail, .. } =
                update().from_status(&reply(status, body), false)
            else {
                panic!("{status} {body}: not unexpected");
            };
            assert!(
                detail.starts_with(&format!(
                    "Order Service status update answered {status} at http://REDACTED:REDACTED@h:1/orders/1: "
                )),
                "{detail}"
            );
            assert!(
                detail.ends_with(
                    "; the Order Service gives no such answer there: \
                     is API_URL_ORDERS (--orders-url) the Order Service's base URL?"
                ),
                "{detail}"
            );
            assert!(
                detail.chars().count() < 300,
                "an HTML page is cut short: {detail}"
            );
        }
    }

    #[test]
    fn a_network_error_names_the_service_the_url_what_happened_and_what_to_check() {
        let e = update().send_failed(
            SendError::NotSent("connection refused".into()),
            false,
            true,
            Duration::ZERO,
        );
        assert_eq!(
            e.to_string(),
            "Order Service status update not sent to http://REDACTED:REDACTED@h:1/orders/1: \
             connection refused; is the Order Service running there? check API_URL_ORDERS (--orders-url)"
        );
        let e = update().send_failed(
            SendError::NoReply("no reply within 5 s (--timeout)".into()),
            true,
            true,
            Duration::from_secs(5),
        );
        assert!(
            matches!(e, CallError::Transient { slow: true, .. }),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            "Order Service status update sent to http://REDACTED:REDACTED@h:1/orders/1, no reply: \
             no reply within 5 s (--timeout); is the Order Service overloaded? it is tried again"
        );
    }
}
