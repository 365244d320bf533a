//! OTLP/gRPC through the real binary: a real tonic server of the three OTLP collector
//! services on loopback (in a tokio runtime of its own, in the test), hand-scripted
//! HTTP/2 servers for what tonic will not do on demand (RST_STREAM), and raw sockets
//! that never answer or trickle bytes.

mod common;

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use common::Running;
use common::otlp::{attrs, text};
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{
    LogsService, LogsServiceServer,
};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;
use standin::{Knobs, Stack};
use tonic::codec::CompressionEncoding::Gzip;
use tonic::transport::Server;
use tonic::{Code, Status};

// ---------------------------------------------------------------- a tonic collector

/// One call the collector received.
#[derive(Clone)]
struct Call {
    signal: &'static str,
    peer: Option<SocketAddr>,
    metadata: HashMap<String, String>,
    /// The request message, re-encoded, and its size.
    bytes: Vec<u8>,
    answered: Code,
}

#[derive(Clone, Default)]
struct Shared {
    calls: Arc<Mutex<Vec<Call>>>,
    /// Codes to answer, per signal, before OK.
    script: Arc<Mutex<HashMap<&'static str, VecDeque<Code>>>>,
}

impl Shared {
    fn record<T: Message>(
        &self,
        signal: &'static str,
        request: tonic::Request<T>,
    ) -> Result<(), Status> {
        let answered = self
            .script
            .lock()
            .unwrap()
            .get_mut(signal)
            .and_then(VecDeque::pop_front)
            .unwrap_or(Code::Ok);
        let metadata = request
            .metadata()
            .iter()
            .filter_map(|kv| match kv {
                tonic::metadata::KeyAndValueRef::Ascii(k, v) => {
                    Some((k.to_string(), v.to_str().unwrap_or("").to_string()))
                }
                _ => None,
            })
            .collect();
        self.calls.lock().unwrap().push(Call {
            signal,
            peer: request.remote_addr(),
            metadata,
            bytes: request.get_ref().encode_to_vec(),
            answered,
        });
        match answered {
            Code::Ok => Ok(()),
            code => Err(Status::new(code, "scripted failure")),
        }
    }
}

#[tonic::async_trait]
impl TraceService for Shared {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, Status> {
        self.record("traces", request)?;
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Shared {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, Status> {
        self.record("metrics", request)?;
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl LogsService for Shared {
    async fn export(
        &self,
        request: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, Status> {
        self.record("logs", request)?;
        Ok(tonic::Response::new(ExportLogsServiceResponse::default()))
    }
}

/// The three OTLP collector services, served by tonic on a loopback listener from a
/// thread of its own; stopped when dropped.
struct Collector {
    shared: Shared,
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Collector {
    fn start(listener: TcpListener, tune: impl FnOnce(Server) -> Server + Send + 'static) -> Self {
        let shared = Shared::default();
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let services = shared.clone();
        let thread = thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let incoming = tonic::transport::server::TcpIncoming::from(listener);
                let _ = tune(Server::builder())
                    .add_service(TraceServiceServer::new(services.clone()).accept_compressed(Gzip))
                    .add_service(
                        MetricsServiceServer::new(services.clone()).accept_compressed(Gzip),
                    )
                    .add_service(LogsServiceServer::new(services).accept_compressed(Gzip))
                    .serve_with_incoming_shutdown(incoming, async {
                        let _ = stopped.await;
                    })
                    .await;
            });
        });
        Collector {
            shared,
            addr,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn on_loopback(tune: impl FnOnce(Server) -> Server + Send + 'static) -> Self {
        Collector::start(TcpListener::bind("127.0.0.1:0").unwrap(), tune)
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Answers `codes` to the next calls of `signal`, then OK.
    fn script(&self, signal: &'static str, codes: &[Code]) {
        self.shared
            .script
            .lock()
            .unwrap()
            .insert(signal, codes.iter().copied().collect());
    }

    fn calls(&self, signal: &str) -> Vec<Call> {
        let calls = self.shared.calls.lock().unwrap();
        calls
            .iter()
            .filter(|c| c.signal == signal)
            .cloned()
            .collect()
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

// ---------------------------------------------------------------- the worker

fn stack(orders: usize) -> Stack {
    Stack::stocked(Knobs::default(), 1_000_000, orders, 5)
}

/// The worker against the stand-in services, errors off, with no OTEL_* set.
fn worker(stack: &Stack) -> Command {
    let mut cmd = common::worker_at(&stack.orders_url(), &stack.stocks_url());
    cmd.env("ERROR_RATE", "0")
        .env("HTTP_TIMEOUT_SECONDS", "2")
        .stdin(Stdio::null());
    cmd
}

/// Runs `cmd` (with `once`) to its end, within 30 s; exit 0 asked.
fn run_once(cmd: &mut Command) -> (std::process::Output, String) {
    let out = Running::start(cmd.arg("once"))
        .wait_for(Duration::from_secs(30))
        .expect("once finished within 30 s");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    (out, stderr)
}

fn resource_attrs(resource: &Option<Resource>) -> HashMap<String, String> {
    attrs(&resource.as_ref().expect("a resource").attributes)
}

fn traces(collector: &Collector) -> Vec<ExportTraceServiceRequest> {
    collector
        .calls("traces")
        .iter()
        .filter(|c| c.answered == Code::Ok)
        .map(|c| ExportTraceServiceRequest::decode(c.bytes.as_slice()).unwrap())
        .collect()
}

fn spans_named(requests: &[ExportTraceServiceRequest], name: &str) -> usize {
    requests
        .iter()
        .flat_map(|r| &r.resource_spans)
        .flat_map(|rs| &rs.scope_spans)
        .flat_map(|ss| &ss.spans)
        .filter(|s| s.name == name)
        .count()
}

/// A loopback address with port 4317 free on it: 127.0.0.1 is left alone (a developer's
/// collector may be there), other addresses of 127.0.0.0/8 reach the same interface.
fn listener_on_4317() -> TcpListener {
    let mut rng = fastrand::Rng::new();
    for _ in 0..50 {
        let addr = format!(
            "127.{}.{}.{}:4317",
            rng.u8(1..255),
            rng.u8(0..255),
            rng.u8(2..255)
        );
        if let Ok(listener) = TcpListener::bind(&addr) {
            return listener;
        }
    }
    panic!("no loopback address with port 4317 free");
}

// ---------------------------------------------------------------- tests

#[test]
fn the_demo_block_as_it_is_exports_traces_metrics_and_logs_over_grpc() {
    let stack = stack(5);
    let collector = Collector::start(listener_on_4317(), |s| s);
    // The demo's block exactly: an endpoint on port 4317, the three exporters, nothing else.
    let (_, stderr) = run_once(
        worker(&stack)
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url())
            .env("OTEL_TRACES_EXPORTER", "otlp")
            .env("OTEL_METRICS_EXPORTER", "otlp")
            .env("OTEL_LOGS_EXPORTER", "otlp"),
    );
    assert!(
        stderr.contains("exporting traces, metrics, logs over OTLP/gRPC"),
        "{stderr}"
    );
    assert!(!stderr.contains("export failed"), "{stderr}");
    assert_eq!(stack.count_by_status().get("ready").copied(), Some(5));

    // Traces: the resource, and each order's span with its attributes.
    let traces = traces(&collector);
    assert!(!traces.is_empty(), "no traces arrived:\n{stderr}");
    for request in &traces {
        for rs in &request.resource_spans {
            let resource = resource_attrs(&rs.resource);
            assert_eq!(resource["service.name"], "ordermanagement");
            assert_eq!(resource["service.version"], env!("CARGO_PKG_VERSION"));
        }
    }
    assert_eq!(spans_named(&traces, "order"), 5);
    let orders: Vec<_> = traces
        .iter()
        .flat_map(|r| &r.resource_spans)
        .flat_map(|rs| &rs.scope_spans)
        .flat_map(|ss| &ss.spans)
        .filter(|s| s.name == "order")
        .collect();
    for span in orders {
        let a = attrs(&span.attributes);
        assert_eq!(a["ordermanagement.order.outcome"], "ready");
        assert!(a.contains_key("ordermanagement.order.id"));
    }
    assert_eq!(spans_named(&traces, "POST /stocks/decrease"), 5);

    // Metrics: the worker's instruments, under the same resource.
    let metrics: Vec<ExportMetricsServiceRequest> = collector
        .calls("metrics")
        .iter()
        .map(|c| ExportMetricsServiceRequest::decode(c.bytes.as_slice()).unwrap())
        .collect();
    let names: HashSet<String> = metrics
        .iter()
        .flat_map(|r| &r.resource_metrics)
        .inspect(|rm| {
            assert_eq!(
                resource_attrs(&rm.resource)["service.name"],
                "ordermanagement"
            )
        })
        .flat_map(|rm| &rm.scope_metrics)
        .flat_map(|sm| &sm.metrics)
        .map(|m| m.name.clone())
        .collect();
    for name in [
        "http.client.request.duration",
        "ordermanagement.orders.processed",
        "ordermanagement.cycle.duration",
    ] {
        assert!(names.contains(name), "{name} in {names:?}");
    }

    // Logs: the worker's lines, with their order fields.
    let logs: Vec<ExportLogsServiceRequest> = collector
        .calls("logs")
        .iter()
        .map(|c| ExportLogsServiceRequest::decode(c.bytes.as_slice()).unwrap())
        .collect();
    let records: Vec<_> = logs
        .iter()
        .flat_map(|r| &r.resource_logs)
        .inspect(|rl| {
            assert_eq!(
                resource_attrs(&rl.resource)["service.name"],
                "ordermanagement"
            )
        })
        .flat_map(|rl| &rl.scope_logs)
        .flat_map(|sl| &sl.log_records)
        .collect();
    assert!(!records.is_empty(), "no log records arrived");
    // A `once` logs its ready orders at debug (the demo's block asks for info): the
    // cycle's summary arrives. (Order lines linked to their traces: tests/telemetry.rs.)
    let summaries = records
        .iter()
        .filter(|r| text(&r.body).contains("5 listed, 5 ready"))
        .count();
    assert_eq!(
        summaries,
        1,
        "{:?}",
        records.iter().map(|r| text(&r.body)).collect::<Vec<_>>()
    );

    // The calls carry gRPC's headers; one connection per signal, reused.
    for call in collector.shared.calls.lock().unwrap().iter() {
        assert_eq!(
            call.metadata.get("grpc-timeout").map(String::as_str),
            Some("10000m")
        );
    }
}

#[test]
fn resource_headers_and_a_batch_larger_than_the_flow_control_window_arrive_whole() {
    let stack = stack(300);
    // The server's stream window at 4 KiB and its connection window at the protocol's
    // 65,535: a batch of a few hundred spans waits for many WINDOW_UPDATEs.
    let collector = Collector::on_loopback(|s| {
        s.initial_stream_window_size(Some(4096))
            .initial_connection_window_size(Some(65_535))
    });
    let (_, stderr) = run_once(
        worker(&stack)
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url())
            .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
            .env(
                "OTEL_EXPORTER_OTLP_HEADERS",
                "x-tenant=wood-shop,authorization=Bearer%20s3cret",
            )
            .env("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "5000")
            .env(
                "OTEL_RESOURCE_ATTRIBUTES",
                "service.namespace=keeper,deployment.environment.name=local",
            )
            .env("OTEL_SERVICE_NAME", "om-grpc")
            .env("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "2048")
            .env("OTEL_BSP_MAX_QUEUE_SIZE", "8192")
            .env("OTEL_BSP_SCHEDULE_DELAY", "60000")
            .env("LOG_LEVEL", "info"),
    );
    assert!(!stderr.contains("export failed"), "{stderr}");
    assert!(!stderr.contains("s3cret"), "metadata is never printed");
    assert_eq!(stack.count_by_status().get("ready").copied(), Some(300));
    let calls = collector.calls("traces");
    let largest = calls.iter().map(|c| c.bytes.len()).max().unwrap_or(0);
    assert!(
        largest > 65_535,
        "one request larger than the window: {largest} bytes"
    );
    let traces = traces(&collector);
    assert_eq!(spans_named(&traces, "order"), 300, "every span, once");
    for rs in traces.iter().flat_map(|r| &r.resource_spans) {
        let resource = resource_attrs(&rs.resource);
        assert_eq!(resource["service.name"], "om-grpc");
        assert_eq!(resource["service.namespace"], "keeper");
        assert_eq!(resource["deployment.environment.name"], "local");
    }
    for call in collector.shared.calls.lock().unwrap().iter() {
        assert_eq!(call.metadata["x-tenant"], "wood-shop");
        assert_eq!(call.metadata["authorization"], "Bearer s3cret");
    }
    assert_eq!(
        collector
            .calls("traces")
            .iter()
            .map(|c| c.metadata["grpc-timeout"].as_str())
            .collect::<HashSet<_>>(),
        HashSet::from(["5000m"]),
        "the signal's own timeout"
    );
}

/// Runs `run --interval 0.2` for `run_for` with spans exported every 100 ms and
/// metrics every 200 ms, then SIGTERM; the stop must take under 3 s.
fn run_for(cmd: &mut Command, run_for: Duration) -> String {
    let mut child = Running::start(
        cmd.env("OTEL_BSP_SCHEDULE_DELAY", "100")
            .env("OTEL_BLRP_SCHEDULE_DELAY", "100")
            .env("OTEL_METRIC_EXPORT_INTERVAL", "1000")
            .args(["run", "--interval", "0.2"]),
    );
    thread::sleep(run_for);
    child.signal(libc::SIGTERM);
    let signalled = Instant::now();
    let out = child
        .wait_for(Duration::from_secs(3))
        .expect("stopped within 3 s of SIGTERM");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(signalled.elapsed() < Duration::from_secs(3));
    stderr
}

#[test]
fn goaway_mid_run_the_next_exports_land_on_a_new_connection() {
    let stack = stack(20);
    // The server sends GOAWAY to every connection 400 ms old and closes it.
    let collector = Collector::on_loopback(|s| {
        s.max_connection_age(Duration::from_millis(400))
            .max_connection_age_grace(Duration::from_millis(200))
    });
    // Metrics every second (the floor of OTEL_METRIC_EXPORT_INTERVAL), spans every
    // 100 ms: exports on connections GOAWAY keeps closing.
    let stderr = run_for(
        worker(&stack)
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url())
            .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        Duration::from_millis(4500),
    );
    let metrics = collector.calls("metrics");
    let connections: HashSet<SocketAddr> = metrics.iter().filter_map(|c| c.peer).collect();
    assert!(
        metrics.len() >= 4,
        "{} metrics exports in 4.5 s:\n{stderr}",
        metrics.len()
    );
    assert!(
        connections.len() >= 3,
        "{} connections: GOAWAY every 400 ms",
        connections.len()
    );
    // Several exports per connection: it is kept open between exports.
    assert!(metrics.len() > connections.len());
    assert!(!stderr.contains("export failed"), "{stderr}");
    assert_eq!(stack.count_by_status().get("ready").copied(), Some(20));
}

#[test]
fn unavailable_then_ok_is_retried_and_invalid_argument_is_dropped_with_one_line() {
    let stack = stack(5);
    let collector = Collector::on_loopback(|s| s);
    // tonic answers an error as a trailers-only reply (grpc-status in the HEADERS).
    collector.script("traces", &[Code::Unavailable]);
    collector.script("logs", &[Code::InvalidArgument; 100]);
    let (_, stderr) = run_once(
        worker(&stack)
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url())
            .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
            .env("OTEL_METRICS_EXPORTER", "none")
            .env("LOG_LEVEL", "info"),
    );
    let calls = collector.calls("traces");
    assert!(calls.len() >= 2, "{stderr}");
    assert_eq!(calls[0].answered, Code::Unavailable);
    assert_eq!(calls[1].answered, Code::Ok);
    assert_eq!(calls[0].bytes, calls[1].bytes, "the same batch, sent again");
    assert_eq!(spans_named(&traces(&collector), "order"), 5);
    assert!(
        stderr.contains("traces export failed (1 so far)") && stderr.contains("UNAVAILABLE (14)"),
        "{stderr}"
    );
    // INVALID_ARGUMENT: each batch once, never again, and one line said.
    let logs = collector.calls("logs");
    assert!(!logs.is_empty());
    let distinct: HashSet<&[u8]> = logs.iter().map(|c| c.bytes.as_slice()).collect();
    assert_eq!(
        distinct.len(),
        logs.len(),
        "a dropped batch is not sent again"
    );
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("logs export failed"))
        .collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].contains("INVALID_ARGUMENT (3): scripted failure"),
        "{stderr}"
    );
}

// ---------------------------------------------------------------- hand-scripted servers

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    out.extend([kind, flags]);
    out.extend(stream.to_be_bytes());
    out.extend(payload);
    out
}

/// A server on loopback whose connections are each handled by `serve` on a thread of
/// their own (with a stop flag to watch); stopped and joined when dropped.
struct Raw {
    addr: SocketAddr,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Raw {
    fn start(
        serve: impl Fn(usize, TcpStream, &std::sync::atomic::AtomicBool) + Send + Sync + 'static,
    ) -> Raw {
        use std::sync::atomic::Ordering;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let serve = Arc::new(serve);
        let flag = stop.clone();
        let thread = thread::spawn(move || {
            let mut connections = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((socket, _)) => {
                        socket.set_nonblocking(false).unwrap();
                        socket
                            .set_read_timeout(Some(Duration::from_millis(20)))
                            .unwrap();
                        let (serve, flag, n) = (serve.clone(), flag.clone(), connections.len());
                        connections.push(thread::spawn(move || serve(n, socket, &flag)));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(10)),
                }
            }
            for c in connections {
                let _ = c.join();
            }
        });
        Raw {
            addr,
            stop,
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Raw {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One frame read whole: its type, flags, stream and payload (`None` at the end of
/// the connection or a stop).
fn read_frame(
    socket: &mut TcpStream,
    stop: &std::sync::atomic::AtomicBool,
) -> Option<(u8, u8, u32, Vec<u8>)> {
    let mut head = [0u8; 9];
    if !read_all(socket, &mut head, stop) {
        return None;
    }
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let id = u32::from_be_bytes([head[5], head[6], head[7], head[8]]);
    let mut payload = vec![0u8; len];
    read_all(socket, &mut payload, stop).then_some((head[3], head[4], id, payload))
}

/// Reads exactly `buf.len()` bytes unless stopped or closed.
fn read_all(socket: &mut TcpStream, buf: &mut [u8], stop: &std::sync::atomic::AtomicBool) -> bool {
    let mut got = 0;
    while got < buf.len() {
        if stop.load(std::sync::atomic::Ordering::Relaxed) {
            return false;
        }
        match socket.read(&mut buf[got..]) {
            Ok(0) => return false,
            Ok(n) => got += n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return false,
        }
    }
    true
}

/// A request stream the scripted server read whole: connection, stream id, gRPC body.
type Streams = Arc<Mutex<Vec<(usize, u32, Vec<u8>)>>>;

/// The trailers-only `:status 200, grpc-status 0` of stream `id`.
fn trailers_only_ok(id: u32) -> Vec<u8> {
    let mut block = vec![0x88, 0x00, 11];
    block.extend(b"grpc-status");
    block.extend([1, b'0']);
    frame(0x1, 0x5, id, &block)
}

/// HTTP/2 by hand: SETTINGS, then each request answered once its END_STREAM is read,
/// by `answer(n, id)` for the n-th request overall (stream `id`): the bytes to write,
/// and whether to keep the connection open after them. The requests read are kept.
fn h2_server(
    answer: impl Fn(usize, u32) -> (Vec<u8>, bool) + Send + Sync + 'static,
) -> (Raw, Streams) {
    let streams: Streams = Arc::default();
    let seen = streams.clone();
    let server = Raw::start(move |n, mut socket, stop| {
        let mut preface = [0u8; 24];
        if !read_all(&mut socket, &mut preface, stop) || preface != PREFACE {
            return;
        }
        socket.write_all(&frame(0x4, 0, 0, &[])).unwrap();
        let mut bodies: HashMap<u32, Vec<u8>> = HashMap::new();
        loop {
            let Some((kind, flags, id, payload)) = read_frame(&mut socket, stop) else {
                return;
            };
            match kind {
                0x4 if flags & 0x1 == 0 => socket.write_all(&frame(0x4, 0x1, 0, &[])).unwrap(),
                0x0 => bodies.entry(id).or_default().extend(&payload),
                _ => {}
            }
            if matches!(kind, 0x0 | 0x1) && flags & 0x1 != 0 {
                let body = bodies.remove(&id).unwrap_or_default();
                let index = {
                    let mut seen = seen.lock().unwrap();
                    seen.push((n, id, body));
                    seen.len() - 1
                };
                let (bytes, keep) = answer(index, id);
                socket.write_all(&bytes).unwrap();
                if !keep {
                    return;
                }
            }
        }
    });
    (server, streams)
}

#[test]
fn rst_stream_is_retried_on_the_same_connection_and_a_trailers_only_ok_is_success() {
    // The first request reset with REFUSED_STREAM, the others a trailers-only OK.
    let (server, streams) = h2_server(|n, id| match n {
        0 => (frame(0x3, 0, id, &7u32.to_be_bytes()), true),
        _ => (trailers_only_ok(id), true),
    });
    let stack = stack(3);
    let (_, stderr) = run_once(
        worker(&stack)
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", server.url())
            .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
            .env("OTEL_METRICS_EXPORTER", "none")
            .env("OTEL_LOGS_EXPORTER", "none"),
    );
    drop(server);
    let streams = streams.lock().unwrap();
    assert!(streams.len() >= 2, "{stderr}");
    assert_eq!(
        (streams[0].0, streams[0].1, streams[1].0, streams[1].1),
        (0, 1, 0, 3),
        "sent again as the next stream of the same connection"
    );
    assert_eq!(streams[0].2, streams[1].2, "the same batch");
    let body = &streams[1].2;
    assert_eq!(body[0], 0, "not compressed");
    assert_eq!(
        u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize,
        body.len() - 5
    );
    let request = ExportTraceServiceRequest::decode(&body[5..]).unwrap();
    assert_eq!(spans_named(&[request], "order"), 3);
    assert!(
        stderr.contains("traces export failed (1 so far)")
            && stderr.contains("reset the stream (HTTP/2 error 7): UNAVAILABLE"),
        "{stderr}"
    );
    assert_eq!(stack.count_by_status().get("ready").copied(), Some(3));
}

/// How long each connection to a server that never answers stayed open, as the
/// server saw it (until the client closed it).
fn never_answering(trickle: bool) -> (Raw, Arc<Mutex<Vec<Duration>>>) {
    let lifetimes: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let kept = lifetimes.clone();
    let server = Raw::start(move |_, mut socket, stop| {
        let opened = Instant::now();
        // A SETTINGS frame of 600 bytes, one byte every 50 ms: never whole in time.
        let mut settings = frame(0x4, 0, 0, &[0; 600]).into_iter();
        let mut buf = [0u8; 4096];
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            if trickle {
                if let Some(b) = settings.next()
                    && socket.write_all(&[b]).is_err()
                {
                    break;
                }
                thread::sleep(Duration::from_millis(30));
            }
            match socket.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => break,
            }
        }
        kept.lock().unwrap().push(opened.elapsed());
    });
    (server, lifetimes)
}

#[test]
fn a_collector_that_never_answers_or_trickles_costs_an_export_its_timeout() {
    for trickle in [false, true] {
        let (server, lifetimes) = never_answering(trickle);
        let stack = stack(20);
        let stderr = run_for(
            worker(&stack)
                .env("OTEL_EXPORTER_OTLP_ENDPOINT", server.url())
                .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
                .env("OTEL_EXPORTER_OTLP_TIMEOUT", "700")
                // Idle cycles are logged at debug.
                .env("LOG_LEVEL", "debug"),
            Duration::from_millis(2500),
        );
        // The worker is unaffected: its cycles run and every order is handled.
        assert_eq!(stack.count_by_status().get("ready").copied(), Some(20));
        let cycles = stderr.matches("cycle done").count();
        assert!(cycles >= 8, "{cycles} cycles in 2.5 s:\n{stderr}");
        assert!(stderr.contains("export failed"), "{stderr}");
        assert!(stderr.contains("timed out"), "{stderr}");
        drop(server);
        // Each export gave up on its connection after its 700 ms (the first ones; the
        // last may have been cut short by the exit).
        let lifetimes = lifetimes.lock().unwrap();
        assert!(lifetimes.len() >= 3, "{lifetimes:?}");
        let finished: Vec<&Duration> = lifetimes
            .iter()
            .filter(|d| **d >= Duration::from_millis(650))
            .collect();
        assert!(finished.len() >= 3, "trickle {trickle}: {lifetimes:?}");
        assert!(
            finished.iter().all(|d| **d < Duration::from_millis(1300)),
            "trickle {trickle}: {lifetimes:?}"
        );
    }
}

#[test]
fn gzip_compressed_exports_arrive() {
    let stack = stack(5);
    let collector = Collector::on_loopback(|s| s);
    let (_, stderr) = run_once(
        worker(&stack)
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url())
            .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
            .env("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
    );
    assert!(!stderr.contains("export failed"), "{stderr}");
    assert_eq!(spans_named(&traces(&collector), "order"), 5);
    let calls = collector.shared.calls.lock().unwrap();
    let signals: HashSet<&str> = calls.iter().map(|c| c.signal).collect();
    assert_eq!(signals, HashSet::from(["traces", "metrics", "logs"]));
    for call in calls.iter() {
        assert_eq!(call.metadata["grpc-encoding"], "gzip", "{}", call.signal);
    }
}

/// TLS with ALPN h2, against tonic with the test certificate of tests/data/tls (a CA of
/// its own and a server certificate for localhost and 127.0.0.1, made with openssl for
/// these tests only).
#[cfg(feature = "tls")]
#[test]
fn tls_with_alpn_h2_checks_the_server_against_the_given_certificate() {
    use tonic::transport::{Identity, ServerTlsConfig};
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/tls");
    let read = |name: &str| std::fs::read(format!("{dir}/{name}")).unwrap();
    let identity = Identity::from_pem(read("server.pem"), read("server.key"));
    let collector = Collector::on_loopback(move |s| {
        s.tls_config(ServerTlsConfig::new().identity(identity))
            .unwrap()
    });
    let endpoint = format!("https://localhost:{}", collector.addr.port());
    let stack = stack(3);
    // `run` until all three signals have arrived (a TLS handshake in this debug build,
    // on a busy machine, may not fit in the exit's flush).
    let mut child = Running::start(
        worker(&stack)
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
            .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
            .env("OTEL_EXPORTER_OTLP_CERTIFICATE", format!("{dir}/ca.pem"))
            .env("OTEL_BSP_SCHEDULE_DELAY", "100")
            .env("OTEL_BLRP_SCHEDULE_DELAY", "100")
            .env("OTEL_METRIC_EXPORT_INTERVAL", "200")
            .args(["run", "--interval", "0.2"]),
    );
    let signals = || -> HashSet<&'static str> {
        let calls = collector.shared.calls.lock().unwrap();
        calls.iter().map(|c| c.signal).collect()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while signals().len() < 3 || spans_named(&traces(&collector), "order") < 3 {
        if Instant::now() >= deadline {
            child.signal(libc::SIGTERM);
            let out = child.wait_for(Duration::from_secs(5)).expect("stopped");
            panic!(
                "in 20 s only {:?}, {} order spans:\n{}",
                signals(),
                spans_named(&traces(&collector), "order"),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        thread::sleep(Duration::from_millis(50));
    }
    child.signal(libc::SIGTERM);
    let out = child.wait_for(Duration::from_secs(5)).expect("stopped");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("export failed"), "{stderr}");
    assert_eq!(spans_named(&traces(&collector), "order"), 3);

    // Without it, the bundled roots do not know the test CA: nothing is sent.
    let before = collector.shared.calls.lock().unwrap().len();
    let mut child = Running::start(
        worker(&stack)
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
            .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
            .env("OTEL_METRICS_EXPORTER", "none")
            .env("OTEL_LOGS_EXPORTER", "none")
            .env("OTEL_BSP_SCHEDULE_DELAY", "100")
            .args(["run", "--interval", "0.2"]),
    );
    thread::sleep(Duration::from_secs(3));
    child.signal(libc::SIGTERM);
    let out = child.wait_for(Duration::from_secs(5)).expect("stopped");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("traces export failed") && stderr.contains("certificate"),
        "{stderr}"
    );
    assert_eq!(collector.shared.calls.lock().unwrap().len(), before);
}

#[test]
fn a_collector_that_closes_mid_reply_costs_one_retry_on_a_new_connection() {
    // The first reply stops after its HEADERS and half a message, and the connection
    // closes; the next connection answers.
    let (server, streams) = h2_server(|n, id| match n {
        0 => {
            let mut bytes = frame(0x1, 0x4, id, &[0x88]);
            bytes.extend(frame(0x0, 0, id, &[0, 0, 0, 0, 9, 1, 2]));
            (bytes, false)
        }
        _ => (trailers_only_ok(id), true),
    });
    let stack = stack(3);
    let started = Instant::now();
    let (_, stderr) = run_once(
        worker(&stack)
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", server.url())
            .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
            .env("OTEL_METRICS_EXPORTER", "none")
            .env("OTEL_LOGS_EXPORTER", "none"),
    );
    let took = started.elapsed();
    drop(server);
    let streams = streams.lock().unwrap();
    assert!(streams.len() >= 2, "{stderr}");
    assert_eq!(
        (streams[0].0, streams[1].0),
        (0, 1),
        "sent again on a new connection"
    );
    assert_eq!(streams[0].2, streams[1].2, "the same batch");
    let request = ExportTraceServiceRequest::decode(&streams[1].2[5..]).unwrap();
    assert_eq!(spans_named(&[request], "order"), 3);
    assert!(
        stderr.contains("traces export failed (1 so far)"),
        "{stderr}"
    );
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert_eq!(stack.count_by_status().get("ready").copied(), Some(3));
}

// ---------------------------------------------------------------- a hostile collector

/// What a scripted server saw of one connection: when it opened and when the client
/// closed it, and every frame the client wrote on it.
#[derive(Clone, Default)]
struct Seen {
    opened: Option<Instant>,
    ended: Option<Instant>,
    frames: Vec<(u8, u8, u32, Vec<u8>)>,
}

impl Seen {
    /// The error codes of the GOAWAY frames the client sent.
    fn goaways(&self) -> Vec<u32> {
        self.frames
            .iter()
            .filter(|f| f.0 == 0x7 && f.3.len() >= 8)
            .map(|f| u32::from_be_bytes([f.3[4], f.3[5], f.3[6], f.3[7]]))
            .collect()
    }
}

type Connections = Arc<Mutex<Vec<Seen>>>;

/// What the writing side of a scripted connection is asked to do.
enum Out {
    Ack,
    Answer(Vec<u8>, u32),
}

/// HTTP/2 by hand, for a hostile collector: SETTINGS, then each request (its header
/// block and stream id) answered by `answer`, whatever it writes (a flood included:
/// a write the client no longer reads just ends). Every frame the client writes is
/// read on a thread of its own, so that it is kept even while a flood is written.
fn h2_peer(answer: impl Fn(&[u8], u32) -> Vec<u8> + Send + Sync + 'static) -> (Raw, Connections) {
    let connections: Connections = Arc::default();
    let seen = connections.clone();
    let answer = Arc::new(answer);
    let server = Raw::start(move |n, socket, stop| {
        {
            let mut seen = seen.lock().unwrap();
            if seen.len() <= n {
                seen.resize(n + 1, Seen::default());
            }
            seen[n].opened = Some(Instant::now());
        }
        let mut reading = socket.try_clone().unwrap();
        let mut writing = socket;
        let (tx, rx) = std::sync::mpsc::channel::<Out>();
        thread::scope(|scope| {
            scope.spawn(|| {
                let mut preface = [0u8; 24];
                if read_all(&mut reading, &mut preface, stop) && preface == PREFACE {
                    let mut block = Vec::new();
                    while let Some((kind, flags, id, payload)) = read_frame(&mut reading, stop) {
                        match kind {
                            0x4 if flags & 0x1 == 0 => {
                                let _ = tx.send(Out::Ack);
                            }
                            0x1 => block = payload.clone(),
                            _ => {}
                        }
                        if matches!(kind, 0x0 | 0x1) && flags & 0x1 != 0 {
                            let _ = tx.send(Out::Answer(std::mem::take(&mut block), id));
                        }
                        seen.lock().unwrap()[n]
                            .frames
                            .push((kind, flags, id, payload));
                    }
                }
                seen.lock().unwrap()[n].ended = Some(Instant::now());
                drop(tx);
            });
            if writing.write_all(&frame(0x4, 0, 0, &[])).is_ok() {
                for out in rx {
                    let bytes = match out {
                        Out::Ack => frame(0x4, 0x1, 0, &[]),
                        Out::Answer(block, id) => answer(&block, id),
                    };
                    if writing.write_all(&bytes).is_err() {
                        break;
                    }
                }
            }
        });
    });
    (server, connections)
}

/// Runs `cmd` (`run`, traces only, spans exported every 100 ms) for `run_for`, then
/// SIGTERM; exit 0 within 3 s asked. Its stderr, and its peak RSS in KiB (VmHWM) just
/// before the signal.
fn run_for_measured(cmd: &mut Command, run_for: Duration) -> (String, u64) {
    let mut child = Running::start(
        cmd.env("OTEL_METRICS_EXPORTER", "none")
            .env("OTEL_LOGS_EXPORTER", "none")
            .env("OTEL_BSP_SCHEDULE_DELAY", "100")
            .args(["run", "--interval", "0.2"]),
    );
    thread::sleep(run_for);
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.pid())).unwrap();
    let peak = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/<pid>/status");
    child.signal(libc::SIGTERM);
    let out = child
        .wait_for(Duration::from_secs(3))
        .expect("stopped within 3 s of SIGTERM");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    (stderr, peak)
}

/// A header block of `:status` `status` (a literal, the name from the static table).
fn status_block(status: &[u8]) -> Vec<u8> {
    let mut block = vec![0x08, status.len() as u8];
    block.extend(status);
    block
}

#[test]
fn a_status_that_is_no_status_code_costs_the_worker_nothing() {
    // Each used to abort the worker (panic = "abort") at the exporter's response.
    for status in [&b"42"[..], b"1000"] {
        let (server, connections) =
            h2_peer(move |_, id| frame(0x1, 0x5, id, &status_block(status)));
        let stack = stack(3);
        let (_, stderr) = run_once(
            worker(&stack)
                .env("OTEL_EXPORTER_OTLP_ENDPOINT", server.url())
                .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
                .env("OTEL_METRICS_EXPORTER", "none")
                .env("OTEL_LOGS_EXPORTER", "none"),
        );
        drop(server);
        assert_eq!(stack.count_by_status().get("ready").copied(), Some(3));
        assert!(
            stderr.contains("traces export failed")
                && stderr.contains("protocol error: a :status that is not a status code"),
            "{stderr}"
        );
        // The connection was closed with GOAWAY PROTOCOL_ERROR.
        let connections = connections.lock().unwrap();
        assert!(!connections.is_empty());
        assert_eq!(connections[0].goaways(), [0x1]);
    }
}

#[test]
fn an_informational_reply_before_the_final_one_is_skipped_and_the_batch_exported() {
    // 103 Early Hints, then the trailers-only OK.
    let (server, connections) = h2_peer(|_, id| {
        let mut bytes = frame(0x1, 0x4, id, &status_block(b"103"));
        bytes.extend(trailers_only_ok(id));
        bytes
    });
    let stack = stack(3);
    let (_, stderr) = run_once(
        worker(&stack)
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", server.url())
            .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
            .env("OTEL_METRICS_EXPORTER", "none")
            .env("OTEL_LOGS_EXPORTER", "none"),
    );
    drop(server);
    assert!(!stderr.contains("export failed"), "{stderr}");
    assert_eq!(stack.count_by_status().get("ready").copied(), Some(3));
    let connections = connections.lock().unwrap();
    // The spans arrived, once: one connection, its requests' bodies.
    assert_eq!(connections.len(), 1);
    let bodies: Vec<Vec<u8>> = connections[0]
        .frames
        .iter()
        .filter(|f| f.0 == 0x0)
        .map(|f| f.3.clone())
        .collect();
    let requests: Vec<ExportTraceServiceRequest> = bodies
        .iter()
        .map(|b| ExportTraceServiceRequest::decode(&b[5..]).unwrap())
        .collect();
    assert_eq!(spans_named(&requests, "order"), 3);
    assert_eq!(connections[0].goaways(), [0u32; 0]);
}

/// A literal field without indexing, its name new, without Huffman.
fn literal(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.push(0x00);
    for s in [name, value] {
        let mut len = s.len();
        if len < 127 {
            out.push(len as u8);
        } else {
            out.push(127);
            len -= 127;
            while len >= 128 {
                out.push((len % 128) as u8 | 0x80);
                len /= 128;
            }
            out.push(len as u8);
        }
        out.extend(s);
    }
}

/// A flood of `count` copies of `frame`.
fn flood(count: usize, one: Vec<u8>) -> Vec<u8> {
    one.repeat(count)
}

#[test]
fn floods_an_hpack_bomb_and_a_large_body_are_cut_short_and_the_next_connection_waits() {
    // The HPACK bomb: one 4,000-byte field into the dynamic table, then indexed 12,000
    // times (48 MB decoded, were it decoded), in one HEADERS frame.
    let mut bomb = vec![0x40, 0x01, b'b', 0x7f, 0x80, 0x1e];
    bomb.extend([b'v'; 3967]);
    bomb.extend([0xbe; 12_000]);
    type Attack = Arc<dyn Fn(u32) -> Vec<u8> + Send + Sync>;
    let attacks: Vec<(&str, Attack)> = vec![
        (
            "PING",
            Arc::new(|_| flood(100_000, frame(0x6, 0, 0, b"12345678"))),
        ),
        (
            "CONTINUATION",
            Arc::new(|id| {
                let mut bytes = frame(0x1, 0, id, &[0x88]);
                bytes.extend(flood(100_000, frame(0x9, 0, id, &[])));
                bytes
            }),
        ),
        (
            "SETTINGS_MAX_HEADER_LIST_SIZE",
            Arc::new(move |id| frame(0x1, 0x5, id, &bomb)),
        ),
        // A reply body of 4 MiB (gRPC's default limit).
        (
            "reply body larger than",
            Arc::new(|id| {
                let mut bytes = frame(0x1, 0x4, id, &[0x88]);
                let mut message = vec![0u8, 0, 0x3f, 0xfc, 0];
                message.extend(vec![0x0a; 4 * 1024 * 1024 - 1024 - 5]);
                for chunk in message.chunks(16_384) {
                    bytes.extend(frame(0x0, 0, id, chunk));
                }
                let mut trailers = vec![0x00, 11];
                trailers.extend(b"grpc-status");
                trailers.extend([1, b'0']);
                bytes.extend(frame(0x1, 0x5, id, &trailers));
                bytes
            }),
        ),
    ];
    for (what, attack) in attacks {
        let (server, connections) = h2_peer(move |_, id| attack(id));
        let stack = stack(20);
        let (stderr, peak_kib) = run_for_measured(
            worker(&stack)
                .env("OTEL_EXPORTER_OTLP_ENDPOINT", server.url())
                .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            Duration::from_millis(3500),
        );
        drop(server);
        println!("{what}: peak RSS of the worker {peak_kib} KiB");
        // The worker is unaffected: every order handled, the failure said once.
        assert_eq!(stack.count_by_status().get("ready").copied(), Some(20));
        assert!(
            stderr.contains("traces export failed")
                && stderr.contains(what)
                && stderr.contains("ENHANCE_YOUR_CALM"),
            "{what}: {stderr}"
        );
        assert!(peak_kib < 16 * 1024, "{what}: peak RSS {peak_kib} KiB");
        // Each connection was closed with GOAWAY ENHANCE_YOUR_CALM, having answered at
        // most a budget's worth of the flood: 128 frames, and one more per 256 bytes of
        // the request's body.
        let connections = connections.lock().unwrap();
        assert!(!connections.is_empty(), "{what}: {stderr}");
        for seen in connections.iter() {
            assert_eq!(seen.goaways(), [0xb], "{what}");
            let pongs = seen.frames.iter().filter(|f| f.0 == 0x6).count();
            let sent: usize = seen
                .frames
                .iter()
                .filter(|f| f.0 == 0x0)
                .map(|f| f.3.len())
                .sum();
            assert!(
                pongs <= 128 + sent / 256,
                "{what}: {pongs} PINGs answered, {sent} bytes sent"
            );
        }
        // The next connection waited 1 s, the one after 2 s (an export every 100 ms
        // would have opened one each time): at most 3 in 3.5 s.
        assert!(
            connections.len() <= 3,
            "{what}: {} connections",
            connections.len()
        );
        let opened: Vec<Instant> = connections.iter().map(|s| s.opened.unwrap()).collect();
        for (i, pair) in opened.windows(2).enumerate() {
            let gap = pair[1] - pair[0];
            let wait = Duration::from_millis(1000 << i);
            assert!(
                gap + Duration::from_millis(50) >= wait,
                "{what}: connection {} opened {gap:?} after the one before",
                i + 1
            );
        }
    }
}

/// The fields of a request's header block as the worker writes it: indexed fields
/// from the static table (skipped) and literals never indexed, without Huffman.
fn request_fields(block: &[u8]) -> Vec<(String, String)> {
    fn int(rest: &mut &[u8], bits: u32) -> usize {
        let max = (1usize << bits) - 1;
        let mut value = rest[0] as usize & max;
        *rest = &rest[1..];
        if value == max {
            let mut shift = 0;
            loop {
                let b = rest[0];
                *rest = &rest[1..];
                value += ((b & 0x7f) as usize) << shift;
                shift += 7;
                if b & 0x80 == 0 {
                    break;
                }
            }
        }
        value
    }
    fn string(rest: &mut &[u8]) -> String {
        assert_eq!(rest[0] & 0x80, 0, "no Huffman");
        let len = int(rest, 7);
        let s = String::from_utf8(rest[..len].to_vec()).unwrap();
        *rest = &rest[len..];
        s
    }
    let mut rest = block;
    let mut fields = Vec::new();
    while !rest.is_empty() {
        if rest[0] & 0x80 != 0 {
            rest = &rest[1..];
            continue;
        }
        assert_eq!(rest[0] & 0xf0, 0x10, "never indexed");
        let name = match int(&mut rest, 4) {
            0 => string(&mut rest),
            1 => ":authority".into(),
            4 => ":path".into(),
            other => panic!("name index {other}"),
        };
        fields.push((name, string(&mut rest)));
    }
    fields
}

#[test]
fn a_collector_that_echoes_the_headers_shows_no_secret_on_stderr() {
    // INVALID_ARGUMENT, with every request header echoed in grpc-message (percent-
    // encoded, as gRPC sends it), with a terminal escape and a right-to-left override.
    let (server, connections) = h2_peer(|block, id| {
        let mut echo = String::from("%1B[31mbad request%E2%80%AE:");
        for (name, value) in request_fields(block) {
            if !name.starts_with(':') {
                echo.push_str(&format!(" {name}={}", value.replace(' ', "%20")));
            }
        }
        let mut reply = vec![0x88];
        literal(&mut reply, b"grpc-status", b"3");
        literal(&mut reply, b"grpc-message", echo.as_bytes());
        frame(0x1, 0x5, id, &reply)
    });
    let stack = stack(3);
    let (_, stderr) = run_once(
        worker(&stack)
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", server.url())
            .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
            .env(
                "OTEL_EXPORTER_OTLP_HEADERS",
                "authorization=Bearer%20s3cret-token-123,x-api-key=k3y-abcdef",
            )
            .env("OTEL_METRICS_EXPORTER", "none")
            .env("OTEL_LOGS_EXPORTER", "none"),
    );
    drop(server);
    // The server did echo them: the secrets were in the request it answered.
    let connections = connections.lock().unwrap();
    let sent = request_fields(&connections[0].frames.iter().find(|f| f.0 == 0x1).unwrap().3);
    assert!(sent.contains(&("authorization".into(), "Bearer s3cret-token-123".into())));
    assert!(sent.contains(&("x-api-key".into(), "k3y-abcdef".into())));
    let line = stderr
        .lines()
        .find(|l| l.contains("traces export failed"))
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(
        line.contains("INVALID_ARGUMENT (3): [31mbad request: content-type=application/grpc")
            && line.contains(" authorization=REDACTED")
            && line.contains(" x-api-key=REDACTED"),
        "{line}"
    );
    assert!(
        !stderr.contains("s3cret") && !stderr.contains("k3y-abcdef"),
        "{stderr}"
    );
    assert!(
        !stderr.contains('\u{1b}') && !stderr.contains('\u{202e}'),
        "{stderr}"
    );
    assert_eq!(stack.count_by_status().get("ready").copied(), Some(3));
}
