//! In-memory stand-ins of the wood-shop demo's Order and Stock services, faithful to
//! `shared/api-contract.md`: same paths, methods, bodies, status codes and rough edges
//! (`limit` defaults to 10, `415` without a JSON content type, `308` for `POST /orders`,
//! HTML error pages, each service's own error rate), plus knobs for tests: a stock `500`
//! after the change, a delay, a stalled reply. As the real Stock Service does, a decrease
//! takes stock every time, whatever its `Idempotency-Key`; every decrease that took
//! stock is written to a ledger with its key, so that a second decrease for one order
//! shows. Honouring the key is a knob ([`Knobs::honour_idempotency_key`]), off by
//! default, for the one test that is about it.
//!
//! Multi-threaded and keep-alive (tiny_http), so that a benchmark measures the client.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use serde_json::{Value, json};
use tiny_http::{Header, Request, Response, Server};

pub const WOODS: [&str; 5] = ["oak", "maple", "birch", "elm", "pine"];
pub const STATUSES: [&str; 6] = [
    "registered",
    "ready",
    "shipped",
    "blocked",
    "closed",
    "unknown",
];

/// Threads serving each service.
const THREADS: usize = 8;

/// Faults and delays; all off by default.
#[derive(Debug, Clone, Default)]
pub struct Knobs {
    /// Share of Order Service calls answered `502` (`500` for create) before any change.
    pub order_error_rate: f64,
    /// Share of status updates (`PUT /orders/<id>`) answered `502` before any change, on
    /// top of `order_error_rate`.
    pub status_error_rate: f64,
    /// Share of decreases answered `500` before any change.
    pub stock_error_rate: f64,
    /// Share of decreases answered `500` *after* the stock was taken.
    pub stock_fail_after_change_rate: f64,
    /// Share of decreases held for `stall` and then answered `500` before any change,
    /// as the real service does when its database pool is exhausted.
    pub stall_rate: f64,
    pub stall: Duration,
    /// Added to every reply of both services.
    pub delay: Duration,
    /// A second decrease with a key already seen is answered as the first one and takes
    /// nothing. The real Stock Service ignores the header: off by default.
    pub honour_idempotency_key: bool,
    /// One order's status update (`PUT /orders/<id>`) answered so, nothing changed: an
    /// answer outside the contract, or one that hangs.
    pub status_answers: HashMap<u64, Answer>,
    /// One order's decreases (by their `Idempotency-Key`, `order-<id>`) answered so,
    /// nothing taken.
    pub decrease_answers: HashMap<u64, Answer>,
}

/// A fixed answer to one order's calls, instead of the service's own.
#[derive(Debug, Clone, Default)]
pub struct Answer {
    pub status: u16,
    pub body: String,
    /// Held this long first.
    pub delay: Duration,
    /// A `Retry-After` header.
    pub retry_after: Option<String>,
}

impl Answer {
    pub fn new(status: u16, body: &str) -> Answer {
        Answer {
            status,
            body: body.to_string(),
            ..Answer::default()
        }
    }

    fn reply(&self) -> Reply {
        thread::sleep(self.delay);
        Reply {
            status: self.status,
            body: self.body.clone(),
            html: false,
            location: None,
            retry_after: self.retry_after.clone(),
        }
    }
}

impl Knobs {
    /// Both services failing `rate` of their calls before any change, nothing else.
    pub fn failing(rate: f64) -> Knobs {
        Knobs {
            order_error_rate: rate,
            stock_error_rate: rate,
            ..Knobs::default()
        }
    }
}

/// One decrease that took stock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerEntry {
    pub key: Option<String>,
    pub wood_type: String,
    pub quantity: u64,
}

#[derive(Debug, Clone)]
pub struct OrderRecord {
    pub id: u64,
    pub wood_type: String,
    pub quantity: u64,
    pub status: String,
}

#[derive(Default)]
struct Shop {
    orders: BTreeMap<u64, OrderRecord>,
    /// Order ids by status, so that a list call does not scan every order.
    by_status: HashMap<String, BTreeSet<u64>>,
    next_id: u64,
    stock: HashMap<String, u64>,
    ledger: Vec<LedgerEntry>,
    keys: HashSet<String>,
}

struct Shared {
    shop: Mutex<Shop>,
    knobs: Mutex<Knobs>,
    /// `traceparent` headers received, by both services.
    traceparents: Mutex<Vec<String>>,
    /// `baggage` headers received, by both services.
    baggage: Mutex<Vec<String>>,
    /// Calls about one order: (`"status"` or `"decrease"`, order id) -> count.
    calls: Mutex<HashMap<(&'static str, u64), usize>>,
}

/// Both services, running until dropped (or [`Stack::shutdown`]).
pub struct Stack {
    shared: Arc<Shared>,
    servers: Vec<Arc<Server>>,
    threads: Vec<JoinHandle<()>>,
    pub order_port: u16,
    pub stock_port: u16,
}

impl Stack {
    /// Starts both services on 127.0.0.1; port 0 picks a free one.
    pub fn start(order_port: u16, stock_port: u16, knobs: Knobs) -> std::io::Result<Stack> {
        let shared = Arc::new(Shared {
            shop: Mutex::new(Shop {
                next_id: 1,
                ..Shop::default()
            }),
            knobs: Mutex::new(knobs),
            traceparents: Mutex::new(Vec::new()),
            baggage: Mutex::new(Vec::new()),
            calls: Mutex::new(HashMap::new()),
        });
        let mut stack = Stack {
            shared,
            servers: Vec::new(),
            threads: Vec::new(),
            order_port: 0,
            stock_port: 0,
        };
        stack.order_port = stack.serve(order_port, order_service)?;
        stack.stock_port = stack.serve(stock_port, stock_service)?;
        Ok(stack)
    }

    fn serve(
        &mut self,
        port: u16,
        handler: fn(&Shared, &mut Request) -> Reply,
    ) -> std::io::Result<u16> {
        let server =
            Server::from_listener(no_delay_listener(port)?, None).map_err(std::io::Error::other)?;
        let port = server
            .server_addr()
            .to_ip()
            .map(|a| a.port())
            .unwrap_or(port);
        let server = Arc::new(server);
        for _ in 0..THREADS {
            let (server, shared) = (server.clone(), self.shared.clone());
            self.threads.push(thread::spawn(move || {
                while let Ok(mut request) = server.recv() {
                    if let Some(tp) = header(&request, "traceparent") {
                        shared.traceparents.lock().unwrap().push(tp);
                    }
                    if let Some(b) = header(&request, "baggage") {
                        shared.baggage.lock().unwrap().push(b);
                    }
                    let delay = shared.knobs.lock().unwrap().delay;
                    if !delay.is_zero() {
                        thread::sleep(delay);
                    }
                    let reply = handler(&shared, &mut request);
                    let _ = request.respond(reply.into_response());
                }
            }));
        }
        self.servers.push(server);
        Ok(port)
    }

    pub fn orders_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.order_port)
    }

    pub fn stocks_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.stock_port)
    }

    /// The `traceparent` headers the services received, in order.
    pub fn traceparents(&self) -> Vec<String> {
        self.shared.traceparents.lock().unwrap().clone()
    }

    /// The `baggage` headers the services received, in order.
    pub fn baggage(&self) -> Vec<String> {
        self.shared.baggage.lock().unwrap().clone()
    }

    pub fn set_knobs(&self, knobs: Knobs) {
        *self.shared.knobs.lock().unwrap() = knobs;
    }

    /// Registers `n` orders of random wood and quantity 1..=100; returns the new ids.
    pub fn seed_orders(&self, n: usize, rng: &mut fastrand::Rng) -> Vec<u64> {
        let mut shop = self.shared.shop.lock().unwrap();
        (0..n)
            .map(|_| shop.add_order(WOODS[rng.usize(..WOODS.len())], rng.u64(1..=100)))
            .collect()
    }

    /// Registers one order.
    pub fn add_order(&self, wood_type: &str, quantity: u64) -> u64 {
        self.shared
            .shop
            .lock()
            .unwrap()
            .add_order(wood_type, quantity)
    }

    /// Adds stock of one wood type (creating its row).
    pub fn add_stock(&self, wood_type: &str, quantity: u64) {
        *self
            .shared
            .shop
            .lock()
            .unwrap()
            .stock
            .entry(wood_type.to_string())
            .or_insert(0) += quantity;
    }

    pub fn stock(&self, wood_type: &str) -> Option<u64> {
        self.shared
            .shop
            .lock()
            .unwrap()
            .stock
            .get(wood_type)
            .copied()
    }

    pub fn orders(&self) -> Vec<OrderRecord> {
        self.shared
            .shop
            .lock()
            .unwrap()
            .orders
            .values()
            .cloned()
            .collect()
    }

    pub fn ledger(&self) -> Vec<LedgerEntry> {
        self.shared.shop.lock().unwrap().ledger.clone()
    }

    /// Orders by status.
    pub fn count_by_status(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for o in self.shared.shop.lock().unwrap().orders.values() {
            *counts.entry(o.status.clone()).or_insert(0) += 1;
        }
        counts
    }

    /// Checks the invariants that a correct worker keeps, given the orders' statuses
    /// and the ledger: a `ready` order's key taken exactly once, a `blocked` or
    /// `registered` order's never, an `unknown` order's at most once, and every ledger
    /// entry matching its order. Returns the violations found (empty when all hold).
    pub fn violations(&self) -> Vec<String> {
        let shop = self.shared.shop.lock().unwrap();
        let mut taken: HashMap<u64, Vec<&LedgerEntry>> = HashMap::new();
        let mut problems = Vec::new();
        for entry in &shop.ledger {
            let id = entry
                .key
                .as_deref()
                .and_then(|k| k.strip_prefix("order-"))
                .and_then(|id| id.parse().ok());
            match id.and_then(|id| shop.orders.get(&id)) {
                Some(order)
                    if order.wood_type == entry.wood_type && order.quantity == entry.quantity =>
                {
                    taken.entry(order.id).or_default().push(entry)
                }
                _ => problems.push(format!("ledger entry {entry:?} matches no order")),
            }
        }
        for order in shop.orders.values() {
            let times = taken.get(&order.id).map_or(0, Vec::len);
            let allowed = match order.status.as_str() {
                "ready" | "shipped" | "closed" => 1..=1,
                "unknown" => 0..=1,
                _ => 0..=0,
            };
            if !allowed.contains(&times) {
                problems.push(format!(
                    "order {} is {} with its stock taken {times} times",
                    order.id, order.status
                ));
            }
        }
        problems
    }

    /// Panics, naming the first few, when [`Stack::violations`] finds any.
    pub fn assert_ledger(&self) {
        let violations = self.violations();
        assert!(
            violations.is_empty(),
            "{} violations, first: {:?}",
            violations.len(),
            &violations[..violations.len().min(5)]
        );
    }

    /// Status updates (`PUT /orders/<id>`) received for order `id`.
    pub fn status_calls(&self, id: u64) -> usize {
        self.shared
            .calls
            .lock()
            .unwrap()
            .get(&("status", id))
            .copied()
            .unwrap_or(0)
    }

    /// Decreases received for order `id` (by their `Idempotency-Key`), whatever their answer.
    pub fn decrease_calls(&self, id: u64) -> usize {
        self.shared
            .calls
            .lock()
            .unwrap()
            .get(&("decrease", id))
            .copied()
            .unwrap_or(0)
    }

    /// Decreases that took stock for order `id`, from the ledger.
    pub fn taken(&self, id: u64) -> usize {
        let key = format!("order-{id}");
        self.ledger()
            .iter()
            .filter(|e| e.key.as_deref() == Some(key.as_str()))
            .count()
    }

    /// The status of order `id`.
    pub fn status(&self, id: u64) -> Option<String> {
        self.shared
            .shop
            .lock()
            .unwrap()
            .orders
            .get(&id)
            .map(|o| o.status.clone())
    }

    /// Both services with `stock_each` of every wood and `orders` registered orders
    /// seeded from `seed` (random wood, quantity 1..=100).
    pub fn stocked(knobs: Knobs, stock_each: u64, orders: usize, seed: u64) -> Stack {
        let stack = Stack::start(0, 0, knobs).expect("start the stand-in services");
        for wood in WOODS {
            stack.add_stock(wood, stock_each);
        }
        stack.seed_orders(orders, &mut fastrand::Rng::with_seed(seed));
        stack
    }

    /// Stops both services and waits for their threads.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        for server in &self.servers {
            for _ in 0..THREADS {
                server.unblock();
            }
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Shop {
    fn add_order(&mut self, wood_type: &str, quantity: u64) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let record = OrderRecord {
            id,
            wood_type: wood_type.into(),
            quantity,
            status: "registered".into(),
        };
        self.orders.insert(id, record);
        self.by_status
            .entry("registered".into())
            .or_default()
            .insert(id);
        id
    }

    fn set_status(&mut self, id: u64, status: &str) -> Option<&OrderRecord> {
        let order = self.orders.get_mut(&id)?;
        if let Some(ids) = self.by_status.get_mut(&order.status) {
            ids.remove(&id);
        }
        order.status = status.to_string();
        self.by_status
            .entry(status.to_string())
            .or_default()
            .insert(id);
        Some(order)
    }
}

fn order_json(o: &OrderRecord) -> Value {
    json!({"id": o.id, "wood_type": o.wood_type, "quantity": o.quantity, "order_status": o.status})
}

/// A reply: status, and a JSON or HTML body.
struct Reply {
    status: u16,
    body: String,
    html: bool,
    location: Option<&'static str>,
    retry_after: Option<String>,
}

impl Reply {
    fn json(status: u16, body: Value) -> Reply {
        Reply {
            status,
            body: body.to_string(),
            html: false,
            location: None,
            retry_after: None,
        }
    }
    fn error(status: u16, message: &str) -> Reply {
        Reply::json(status, json!({ "error": message }))
    }
    /// Flask's HTML error page.
    fn html(status: u16, title: &str) -> Reply {
        let body = format!(
            "<!doctype html>\n<html lang=en>\n<title>{status} {title}</title>\n<h1>{title}</h1>\n"
        );
        Reply {
            status,
            body,
            html: true,
            location: None,
            retry_after: None,
        }
    }
    fn into_response(self) -> Response<std::io::Cursor<Vec<u8>>> {
        let kind = if self.html {
            "text/html; charset=utf-8"
        } else {
            "application/json"
        };
        let mut r = Response::from_string(self.body)
            .with_status_code(self.status)
            .with_header(Header::from_bytes("Content-Type", kind).unwrap());
        if let Some(after) = &self.retry_after {
            r = r.with_header(Header::from_bytes("Retry-After", after.as_bytes()).unwrap());
        }
        if let Some(location) = self.location {
            r = r.with_header(Header::from_bytes("Location", location).unwrap());
        }
        r
    }
}

/// A listener on 127.0.0.1 whose connections send small writes at once (TCP_NODELAY,
/// which Linux hands down to accepted sockets). Without it, a reply that tiny_http
/// writes in pieces waits for the client's delayed ACK: about 40 ms per list call, which
/// made the services, not the client, set the pace of every benchmark row.
fn no_delay_listener(port: u16) -> std::io::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", port))?;
    set_tcp_flag(&listener, libc::TCP_NODELAY)?;
    Ok(listener)
}

/// Turns on a TCP socket option that takes an int flag (`TCP_NODELAY`, `TCP_CORK`).
pub fn set_tcp_flag(
    socket: &impl std::os::fd::AsRawFd,
    option: libc::c_int,
) -> std::io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: setsockopt on a valid socket, with a c_int option value of the size given.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            option,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn chance(rate: f64) -> bool {
    rate > 0.0 && fastrand::f64() < rate
}

fn is_json(request: &Request) -> bool {
    request.headers().iter().any(|h| {
        h.field.equiv("Content-Type")
            && h.value
                .as_str()
                .trim()
                .to_ascii_lowercase()
                .starts_with("application/json")
    })
}

fn header(request: &Request, name: &'static str) -> Option<String> {
    request
        .headers()
        .iter()
        .find(|h| h.field.equiv(name))
        .map(|h| h.value.as_str().to_string())
}

/// The JSON body of a PUT or POST, or the reply Flask gives when there is none.
fn json_body(request: &mut Request) -> Result<Value, Reply> {
    if !is_json(request) {
        return Err(Reply::html(415, "Unsupported Media Type"));
    }
    let mut body = String::new();
    if request.as_reader().read_to_string(&mut body).is_err() {
        return Err(Reply::html(400, "Bad Request"));
    }
    serde_json::from_str(&body).map_err(|_| Reply::html(400, "Bad Request"))
}

/// `skip` and `limit` as Flask reads them: defaults 0 and 10, non-numeric is a 500.
fn paging(url: &str) -> Result<(usize, usize), Reply> {
    let (mut skip, mut limit) = (0, 10);
    if let Some((_, query)) = url.split_once('?') {
        for pair in query.split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let slot = match k {
                "skip" => &mut skip,
                "limit" => &mut limit,
                _ => continue,
            };
            *slot = v
                .parse()
                .map_err(|_| Reply::html(500, "Internal Server Error"))?;
        }
    }
    Ok((skip, limit))
}

fn order_service(shared: &Shared, request: &mut Request) -> Reply {
    let url = request.url().to_string();
    let path = url.split('?').next().unwrap_or("").to_string();
    let method = request.method().as_str().to_string();
    if path == "/health" {
        return Reply::json(200, json!({"status": "healthy", "service": "order"}));
    }
    if method == "POST" && path == "/orders" {
        let mut r = Reply::html(308, "Permanent Redirect");
        r.location = Some("/orders/");
        return r;
    }
    let (error_rate, status_error_rate, status_answers) = {
        let knobs = shared.knobs.lock().unwrap();
        (
            knobs.order_error_rate,
            knobs.status_error_rate,
            knobs.status_answers.clone(),
        )
    };
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (method.as_str(), segments.as_slice()) {
        ("GET", ["orders", "status", status]) => {
            let (skip, limit) = match paging(&url) {
                Ok(p) => p,
                Err(r) => return r,
            };
            if !STATUSES.contains(status) {
                return Reply::html(500, "Internal Server Error");
            }
            if chance(error_rate) {
                return Reply::error(502, "Simulated API error while listing orders");
            }
            let shop = shared.shop.lock().unwrap();
            let ids = shop.by_status.get(*status).into_iter().flatten();
            let page: Vec<Value> = ids
                .skip(skip)
                .take(limit)
                .map(|id| order_json(&shop.orders[id]))
                .collect();
            Reply::json(200, Value::Array(page))
        }
        ("GET", ["orders", ""]) => {
            let (skip, limit) = match paging(&url) {
                Ok(p) => p,
                Err(r) => return r,
            };
            if chance(error_rate) {
                return Reply::error(502, "Simulated API error while listing orders");
            }
            let shop = shared.shop.lock().unwrap();
            Reply::json(
                200,
                Value::Array(
                    shop.orders
                        .values()
                        .skip(skip)
                        .take(limit)
                        .map(order_json)
                        .collect(),
                ),
            )
        }
        ("GET", ["orders", id]) => {
            let Ok(id) = id.parse::<u64>() else {
                return Reply::html(404, "Not Found");
            };
            if chance(error_rate) {
                return Reply::error(502, "Simulated API error while reading an order");
            }
            match shared.shop.lock().unwrap().orders.get(&id) {
                Some(o) => Reply::json(200, order_json(o)),
                None => Reply::error(404, "Order not found"),
            }
        }
        ("PUT", ["orders", id]) => {
            let Ok(id) = id.parse::<u64>() else {
                return Reply::html(404, "Not Found");
            };
            let body = match json_body(request) {
                Ok(b) => b,
                Err(r) => return r,
            };
            *shared
                .calls
                .lock()
                .unwrap()
                .entry(("status", id))
                .or_default() += 1;
            if let Some(answer) = status_answers.get(&id) {
                return answer.reply();
            }
            if chance(error_rate) || chance(status_error_rate) {
                return Reply::error(502, "Simulated API error while updating an order");
            }
            let Some(status) = body.get("order_status") else {
                return Reply::error(400, "Missing 'order_status' in request body");
            };
            let Some(status) = status.as_str().filter(|s| STATUSES.contains(s)) else {
                return Reply::error(400, "Invalid order status");
            };
            match shared.shop.lock().unwrap().set_status(id, status) {
                Some(o) => Reply::json(200, order_json(o)),
                None => Reply::error(404, "Order not found"),
            }
        }
        ("POST", ["orders", ""]) => {
            let body = match json_body(request) {
                Ok(b) => b,
                Err(r) => return r,
            };
            if chance(error_rate) {
                return Reply::error(500, "Simulated API error while creating an order");
            }
            let wood = body
                .get("wood_type")
                .and_then(Value::as_str)
                .filter(|w| WOODS.contains(w));
            let quantity = body
                .get("quantity")
                .and_then(Value::as_u64)
                .filter(|q| *q > 0);
            let (Some(wood), Some(quantity)) = (wood, quantity) else {
                return Reply::error(400, "Invalid input");
            };
            let mut shop = shared.shop.lock().unwrap();
            let id = shop.add_order(wood, quantity);
            Reply::json(201, order_json(&shop.orders[&id]))
        }
        _ => Reply::html(404, "Not Found"),
    }
}

/// A quantity as the real service reads it: leniently (`"2"`, `2.0`, `true`).
fn lenient_quantity(value: Option<&Value>) -> Option<i64> {
    match value? {
        Value::Number(n) => n
            .as_i64()
            .or_else(|| n.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64)),
        Value::String(s) => s.trim().parse().ok(),
        Value::Bool(b) => Some(i64::from(*b)),
        _ => None,
    }
}

/// A stock body's wood type and positive quantity, read as leniently as the real service.
fn stock_body(body: &Value) -> Option<(String, u64)> {
    let wood = body
        .get("wood_type")
        .and_then(Value::as_str)?
        .to_ascii_lowercase();
    let quantity = lenient_quantity(body.get("quantity")).filter(|q| *q > 0)?;
    Some((wood, quantity as u64))
}

fn stock_service(shared: &Shared, request: &mut Request) -> Reply {
    let url = request.url().to_string();
    let path = url.split('?').next().unwrap_or("").to_string();
    let method = request.method().as_str().to_string();
    let knobs = shared.knobs.lock().unwrap().clone();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (method.as_str(), segments.as_slice()) {
        ("GET", ["health"]) => Reply::json(200, json!({"status": "healthy", "service": "stock"})),
        ("POST", ["stocks", "decrease"]) => {
            let body = match json_body(request) {
                Ok(b) => b,
                Err(r) => return r,
            };
            let order = header(request, "Idempotency-Key").and_then(|k| {
                k.strip_prefix("order-")
                    .and_then(|id| id.parse::<u64>().ok())
            });
            if let Some(id) = order {
                *shared
                    .calls
                    .lock()
                    .unwrap()
                    .entry(("decrease", id))
                    .or_default() += 1;
            }
            if let Some(answer) = order.and_then(|id| knobs.decrease_answers.get(&id)) {
                return answer.reply();
            }
            if chance(knobs.stock_error_rate) {
                return Reply::error(500, "Simulated DB error during stock decrease");
            }
            if chance(knobs.stall_rate) {
                thread::sleep(knobs.stall);
                return Reply::error(500, "Unexpected error during stock decrease (read)");
            }
            let Some((wood, quantity)) = stock_body(&body) else {
                return Reply::error(400, "Invalid input");
            };
            let key = header(request, "Idempotency-Key");
            let mut shop = shared.shop.lock().unwrap();
            let Some(&left) = shop.stock.get(&wood) else {
                return Reply::error(404, "Stock not found");
            };
            if knobs.honour_idempotency_key && key.as_ref().is_some_and(|k| shop.keys.contains(k)) {
                // Already done for this key: answer as the first time, take nothing.
                return Reply::json(200, json!({"wood_type": wood, "quantity": left}));
            }
            if left < quantity {
                return Reply::error(400, "Insufficient stock");
            }
            shop.stock.insert(wood.clone(), left - quantity);
            if let Some(k) = &key {
                shop.keys.insert(k.clone());
            }
            shop.ledger.push(LedgerEntry {
                key,
                wood_type: wood.clone(),
                quantity,
            });
            if chance(knobs.stock_fail_after_change_rate) {
                return Reply::error(500, "Unexpected error during stock decrease (update)");
            }
            Reply::json(200, json!({"wood_type": wood, "quantity": left - quantity}))
        }
        ("GET", ["stocks", ""]) => {
            let (skip, limit) = match paging(&url) {
                Ok(p) => p,
                Err(r) => return r,
            };
            let shop = shared.shop.lock().unwrap();
            let mut rows: Vec<(&String, &u64)> = shop.stock.iter().collect();
            rows.sort();
            let rows = rows
                .into_iter()
                .skip(skip)
                .take(limit)
                .map(|(w, q)| json!({"wood_type": w, "quantity": q}));
            Reply::json(200, Value::Array(rows.collect()))
        }
        ("GET", ["stocks", wood]) => match shared.shop.lock().unwrap().stock.get(*wood) {
            Some(q) => Reply::json(200, json!({"wood_type": wood, "quantity": q})),
            None => Reply::error(404, "Stock not found"),
        },
        ("POST", ["stocks", ""]) => {
            let body = match json_body(request) {
                Ok(b) => b,
                Err(r) => return r,
            };
            let Some((wood, quantity)) = stock_body(&body) else {
                return Reply::error(400, "Invalid input");
            };
            let mut shop = shared.shop.lock().unwrap();
            let row = shop.stock.entry(wood.clone()).or_insert(0);
            *row += quantity;
            Reply::json(201, json!({"wood_type": wood, "quantity": *row}))
        }
        _ => Reply::html(404, "Not Found"),
    }
}

/// Request bodies by path, in arrival order.
type Received = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// An OTLP/HTTP receiver on loopback that keeps every request body by path
/// (`/v1/traces`, `/v1/metrics`, `/v1/logs`) and answers `200`.
pub struct OtlpSink {
    server: Arc<Server>,
    thread: Option<JoinHandle<()>>,
    received: Received,
    pub port: u16,
}

impl OtlpSink {
    pub fn start() -> std::io::Result<OtlpSink> {
        OtlpSink::start_failing(None)
    }

    /// Like [`OtlpSink::start`], but requests to `failing` (e.g. `/v1/traces`) are
    /// kept and answered `500`.
    pub fn start_failing(failing: Option<&str>) -> std::io::Result<OtlpSink> {
        OtlpSink::start_refusing(failing, 500, usize::MAX)
    }

    /// Like [`OtlpSink::start`], but the first `times` requests to `path` are kept and
    /// answered `status`.
    pub fn start_refusing(
        path: Option<&str>,
        status: u16,
        mut times: usize,
    ) -> std::io::Result<OtlpSink> {
        let failing = path.map(str::to_string);
        let server = Arc::new(
            Server::from_listener(no_delay_listener(0)?, None).map_err(std::io::Error::other)?,
        );
        let port = server.server_addr().to_ip().map(|a| a.port()).unwrap_or(0);
        let received: Received = Arc::new(Mutex::new(Vec::new()));
        let (srv, got) = (server.clone(), received.clone());
        let thread = thread::spawn(move || {
            while let Ok(mut request) = srv.recv() {
                let mut body = Vec::new();
                let _ = request.as_reader().read_to_end(&mut body);
                let status = if times > 0 && failing.as_deref() == Some(request.url()) {
                    times -= 1;
                    status
                } else {
                    200
                };
                got.lock().unwrap().push((request.url().to_string(), body));
                let _ = request.respond(Response::empty(status));
            }
        });
        Ok(OtlpSink {
            server,
            thread: Some(thread),
            received,
            port,
        })
    }

    /// The base URL, for `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The bodies received at `path`.
    pub fn bodies(&self, path: &str) -> Vec<Vec<u8>> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _)| p == path)
            .map(|(_, b)| b.clone())
            .collect()
    }
}

impl Drop for OtlpSink {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
