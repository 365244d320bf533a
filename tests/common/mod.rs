//! What the integration tests share: the worker command with a clean environment; a
//! scripted HTTP/1.1 server on loopback for the fault cases a mock library cannot play
//! (replies that change from one call to the next, replies that come late or never,
//! connections dropped after the request, keep-alive connections closed by the server);
//! a child process killed and reaped when dropped; and, in [`otlp`], what an OTLP
//! receiver got, decoded.
#![allow(dead_code)]

pub mod otlp;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A request as it arrived.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    /// Path and query, as sent.
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// When the whole request had arrived.
    pub at: Instant,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }
    pub fn query(&self, key: &str) -> Option<u64> {
        let query = self.target.split_once('?')?.1;
        query
            .split('&')
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
    /// The order a decrease is for, from its `Idempotency-Key` (`order-<id>`).
    pub fn decrease_order_id(&self) -> u64 {
        self.header("idempotency-key").expect("an Idempotency-Key")["order-".len()..]
            .parse()
            .expect("order-<id>")
    }
}

/// What the server does with a request.
pub enum Action {
    /// Answer after `delay`; with `close`, close the connection after the reply without
    /// saying so (as a server whose keep-alive timed out does).
    Reply {
        status: u16,
        body: Vec<u8>,
        delay: Duration,
        close: bool,
    },
    /// Read the request, wait `after`, close the connection without a reply.
    Drop { after: Duration },
}

pub fn reply(status: u16, body: impl Into<Vec<u8>>) -> Action {
    Action::Reply {
        status,
        body: body.into(),
        delay: Duration::ZERO,
        close: false,
    }
}

pub fn late(status: u16, body: impl Into<Vec<u8>>, delay: Duration) -> Action {
    Action::Reply {
        status,
        body: body.into(),
        delay,
        close: false,
    }
}

type Handler = dyn Fn(&Request) -> Action + Send + Sync;

/// The server; it stops accepting and closes held connections when dropped.
pub struct ScriptServer {
    pub port: u16,
    requests: Arc<Mutex<Vec<Request>>>,
    stopped: Arc<AtomicBool>,
}

impl ScriptServer {
    pub fn start(handler: impl Fn(&Request) -> Action + Send + Sync + 'static) -> ScriptServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stopped = Arc::new(AtomicBool::new(false));
        let handler: Arc<Handler> = Arc::new(handler);
        let (reqs, stop) = (requests.clone(), stopped.clone());
        thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let (reqs, stop, handler) = (reqs.clone(), stop.clone(), handler.clone());
                        thread::spawn(move || serve(stream, &reqs, &stop, &*handler));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        ScriptServer {
            port,
            requests,
            stopped,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The decreases received, counted by order.
    pub fn decreases_per_order(&self) -> BTreeMap<u64, usize> {
        let mut counts = BTreeMap::new();
        for r in self.calls("POST", "/stocks/decrease") {
            *counts.entry(r.decrease_order_id()).or_insert(0) += 1;
        }
        counts
    }

    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }

    /// Requests whose method and path match.
    pub fn calls(&self, method: &str, path: &str) -> Vec<Request> {
        self.requests()
            .into_iter()
            .filter(|r| r.method == method && r.path() == path)
            .collect()
    }
}

impl Drop for ScriptServer {
    fn drop(&mut self) {
        self.stopped.store(true, Ordering::SeqCst);
    }
}

fn serve(
    stream: TcpStream,
    requests: &Mutex<Vec<Request>>,
    stopped: &AtomicBool,
    handler: &Handler,
) {
    stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    stream.set_nodelay(true).unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    loop {
        let request = match read_request(&mut reader, stopped) {
            Some(r) => r,
            None => return,
        };
        requests.lock().unwrap().push(request.clone());
        match handler(&request) {
            Action::Reply {
                status,
                body,
                delay,
                close,
            } => {
                if !wait(delay, stopped) {
                    return;
                }
                // One write: a head and body sent apart meet Nagle and delayed ACKs (40 ms).
                let mut message = format!(
                    "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                )
                .into_bytes();
                message.extend_from_slice(&body);
                if close {
                    // The close travels with the reply: the client has it before it
                    // can send another request on this connection, however fast it is.
                    hold_until_shutdown(&writer);
                }
                if writer.write_all(&message).is_err() {
                    return;
                }
                if close {
                    let _ = writer.shutdown(Shutdown::Write);
                    return;
                }
            }
            Action::Drop { after } => {
                wait(after, stopped);
                return;
            }
        }
    }
}

/// Holds what is written to `stream` until it is shut down (`TCP_CORK`), so that the
/// FIN goes out in the same segment as the last data.
fn hold_until_shutdown(stream: &TcpStream) {
    standin::set_tcp_flag(stream, libc::TCP_CORK).expect("TCP_CORK");
}

/// Sleeps unless the server stops first; false if it did.
fn wait(duration: Duration, stopped: &AtomicBool) -> bool {
    let end = Instant::now() + duration;
    while Instant::now() < end {
        if stopped.load(Ordering::SeqCst) {
            return false;
        }
        thread::sleep(Duration::from_millis(5).min(end - Instant::now()));
    }
    true
}

fn read_request(reader: &mut BufReader<TcpStream>, stopped: &AtomicBool) -> Option<Request> {
    let mut line = String::new();
    loop {
        match reader.read_line(&mut line) {
            Ok(0) => return None,
            Ok(_) => break,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                if stopped.load(Ordering::SeqCst) {
                    return None;
                }
            }
            Err(_) => return None,
        }
    }
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let target = parts.next()?.to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    let length = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some(Request {
        method,
        target,
        headers,
        body,
        at: Instant::now(),
    })
}

/// A page of the registered list as the Order Service answers it: the orders
/// `registered` in `statuses`, from `skip`, at most `limit` (10 unless asked), each of
/// wood `wood(id)` and quantity 1.
pub fn registered_page(
    r: &Request,
    statuses: &BTreeMap<u64, String>,
    wood: impl Fn(u64) -> &'static str,
) -> Action {
    let (skip, limit) = (r.query("skip").unwrap_or(0), r.query("limit").unwrap_or(10));
    let page: Vec<_> = statuses
        .iter()
        .filter(|(_, st)| *st == "registered")
        .skip(skip as usize)
        .take(limit as usize)
        .map(|(id, _)| order_json(*id, wood(*id), 1))
        .collect();
    reply(200, serde_json::Value::Array(page).to_string())
}

/// A library worker's configuration for the services at `orders` and `stocks`: no
/// simulated failures, short timeouts (0.5 s, 2 s for a decrease's reply) and backoffs
/// (2 ms doubling up to 10 ms), so that a test's retries take milliseconds.
pub fn quick_config(orders: &str, stocks: &str) -> ordermanagement::Config {
    ordermanagement::Config {
        orders_url: orders.into(),
        stocks_url: stocks.into(),
        error_rate: 0.0,
        http_timeout: Duration::from_millis(500),
        decrease_timeout: Duration::from_secs(2),
        retry_base: Duration::from_millis(2),
        retry_cap: Duration::from_millis(10),
        ..ordermanagement::Config::default()
    }
}

/// The first page of the registered list answering `orders` (a JSON array).
pub fn first_page_mock<'a>(
    server: &'a httpmock::MockServer,
    orders: &serde_json::Value,
) -> httpmock::Mock<'a> {
    let body = orders.to_string();
    server.mock(|when, then| {
        when.method(httpmock::Method::GET)
            .path("/orders/status/registered")
            .query_param("skip", "0");
        then.status(200)
            .header("content-type", "application/json")
            .body(body);
    })
}

/// The worker binary, as cargo built it for the tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_ordermanagement");

/// The worker with a cleared environment, so that the developer's variables
/// (API_URL_ORDERS, RUST_LOG, http_proxy, OTEL_*, ...) cannot leak in, and no heartbeat
/// file left in /tmp (a test that wants one sets HEARTBEAT_FILE itself).
pub fn worker_command() -> Command {
    // Another build of the worker may be put through the same checks, to compare.
    let bin = std::env::var_os("ORDERMANAGEMENT_TEST_BIN").unwrap_or_else(|| BIN.into());
    let mut cmd = Command::new(bin);
    cmd.env_clear().env("HEARTBEAT_FILE", "");
    // Under `.ci/coverage` the binary writes its profile where cargo-llvm-cov says, so
    // that what the child processes run is counted too.
    if let Some(profile) = std::env::var_os("LLVM_PROFILE_FILE") {
        cmd.env("LLVM_PROFILE_FILE", profile);
    }
    cmd
}

/// [`worker_command`] pointed at the Order and Stock services through their variables.
pub fn worker_at(orders: &str, stocks: &str) -> Command {
    let mut cmd = worker_command();
    cmd.env("API_URL_ORDERS", orders)
        .env("API_URL_STOCKS", stocks);
    cmd
}

/// An order as the Order Service lists it.
pub fn order_json(id: u64, wood: &str, quantity: u32) -> serde_json::Value {
    serde_json::json!({"id": id, "wood_type": wood, "quantity": quantity, "order_status": "registered"})
}

/// A child process that is killed and reaped when dropped, whatever the test did.
pub struct Running {
    pub child: Child,
    stdout: Option<JoinHandle<Vec<u8>>>,
    stderr: Option<JoinHandle<Vec<u8>>>,
}

impl Running {
    /// Starts `cmd` with stdin closed and stdout/stderr read on threads, so a chatty
    /// child never blocks on a full pipe.
    pub fn start(cmd: &mut Command) -> Running {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the binary starts");
        let stdout = child.stdout.take().map(drain);
        let stderr = child.stderr.take().map(drain);
        Running {
            child,
            stdout,
            stderr,
        }
    }

    /// A child started by the caller, with one output (`other`) to collect; it shows up
    /// as the `stdout` of [`Running::wait_for`]'s output.
    pub fn adopt(child: Child, other: Box<dyn Read + Send>) -> Running {
        Running {
            child,
            stdout: Some(drain(other)),
            stderr: None,
        }
    }

    pub fn pid(&self) -> libc::pid_t {
        libc::pid_t::try_from(self.child.id()).expect("pid fits pid_t")
    }

    pub fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) on our own, not yet reaped child: the pid cannot have been reused.
        let rc = unsafe { libc::kill(self.pid(), signal) };
        assert_eq!(rc, 0, "kill({}, {signal}) failed", self.pid());
    }

    /// Waits up to `limit` for the child to exit; `None` if it did not (it is then
    /// killed on drop).
    pub fn wait_for(&mut self, limit: Duration) -> Option<Output> {
        let deadline = Instant::now() + limit;
        let status: ExitStatus = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        };
        let join = |h: Option<JoinHandle<Vec<u8>>>| {
            h.map(|h| h.join().expect("pipe reader"))
                .unwrap_or_default()
        };
        Some(Output {
            status,
            stdout: join(self.stdout.take()),
            stderr: join(self.stderr.take()),
        })
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // Harmless when the child has already exited and been reaped.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn drain(mut pipe: impl Read + Send + 'static) -> JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        bytes
    })
}

/// The wood-shop demo's common environment (`x-common-apps-env` in
/// docker-compose/docker-compose-apps.yml), less its two Python-only keys.
pub const DEMO_ENV: [(&str, &str); 9] = [
    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://otel-collector:4317"),
    ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
    ("OTEL_TRACES_EXPORTER", "otlp"),
    ("OTEL_METRICS_EXPORTER", "otlp"),
    ("OTEL_LOGS_EXPORTER", "otlp"),
    ("OTEL_PROPAGATORS", "tracecontext,baggage"),
    (
        "OTEL_RESOURCE_ATTRIBUTES",
        "deployment.environment.name=local,service.version=0.1.0,service.instance.id=${HOSTNAME},service.namespace=keeper",
    ),
    ("LOG_LEVEL", "INFO"),
    ("ERROR_RATE", "0.1"),
];
