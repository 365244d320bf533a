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
use standin::{Knobs, Stack, WOODS};
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
                    .add_service(TraceServiceServer::new(services.clone()))
                    .add_service(MetricsServiceServer::new(services.clone()))
                    .add_service(LogsServiceServer::new(services))
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
        calls.iter().filter(|c| c.signal == signal).cloned().collect()
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
    let stack = Stack::start(0, 0, Knobs::default()).expect("start the stand-in services");
    for wood in WOODS {
        stack.add_stock(wood, 1_000_000);
    }
    stack.seed_orders(orders, &mut fastrand::Rng::with_seed(5));
    stack
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
        let addr = format!("127.{}.{}.{}:4317", rng.u8(1..255), rng.u8(0..255), rng.u8(2..255));
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
        .inspect(|rm| assert_eq!(resource_attrs(&rm.resource)["service.name"], "ordermanagement"))
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
        .inspect(|rl| assert_eq!(resource_attrs(&rl.resource)["service.name"], "ordermanagement"))
        .flat_map(|rl| &rl.scope_logs)
        .flat_map(|sl| &sl.log_records)
        .collect();
    assert!(!records.is_empty(), "no log records arrived");
    let ready = records
        .iter()
        .filter(|r| text(&r.body).contains(": ready") && r.trace_id.len() == 16)
        .count();
    assert_eq!(
        ready,
        5,
        "{:?}",
        records.iter().map(|r| text(&r.body)).collect::<Vec<_>>()
    );

    // The calls carry gRPC's headers; one connection per signal, reused.
    for call in collector.shared.calls.lock().unwrap().iter() {
        assert_eq!(call.metadata.get("grpc-timeout").map(String::as_str), Some("10000m"));
    }
}
