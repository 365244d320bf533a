//! Telemetry through the real binary: what arrives at an OTLP/HTTP receiver on loopback,
//! decoded with the official OTLP protobuf definitions, and what the services receive.

mod common;

use std::collections::{HashMap, HashSet};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Running;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message;
use standin::{Knobs, OtlpSink, Stack, WOODS};

const BIN: &str = env!("CARGO_BIN_EXE_ordermanagement");

fn worker(stack: &Stack) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env_clear()
        .env("API_URL_ORDERS", stack.orders_url())
        .env("API_URL_STOCKS", stack.stocks_url())
        .env("ERROR_RATE", "0")
        .env("HTTP_TIMEOUT_SECONDS", "2")
        .stdin(Stdio::null());
    cmd
}

fn stack(orders: usize) -> Stack {
    let stack = Stack::start(0, 0, Knobs::default()).expect("start the stand-in services");
    for wood in WOODS {
        stack.add_stock(wood, 1_000_000);
    }
    stack.seed_orders(orders, &mut fastrand::Rng::with_seed(3));
    stack
}

fn text(v: &Option<AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn attrs(kvs: &[KeyValue]) -> HashMap<String, String> {
    kvs.iter()
        .map(|kv| (kv.key.clone(), text(&kv.value)))
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn traces_metrics_and_logs_arrive_and_the_services_join_the_trace() {
    let stack = stack(5);
    let sink = OtlpSink::start().unwrap();
    let out = worker(&stack)
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", sink.url())
        .env(
            "OTEL_RESOURCE_ATTRIBUTES",
            "service.namespace=keeper,deployment.environment.name=local",
        )
        .env("LOG_LEVEL", "info")
        .arg("once")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Traces.
    let mut spans: Vec<Span> = Vec::new();
    let mut resources = Vec::new();
    for body in sink.bodies("/v1/traces") {
        let request =
            ExportTraceServiceRequest::decode(body.as_slice()).expect("OTLP traces decode");
        for rs in request.resource_spans {
            resources.push(attrs(&rs.resource.unwrap_or_default().attributes));
            for ss in rs.scope_spans {
                spans.extend(ss.spans);
            }
        }
    }
    assert!(!resources.is_empty(), "no traces arrived");
    for r in &resources {
        assert_eq!(r["service.name"], "ordermanagement");
        assert_eq!(r["service.namespace"], "keeper");
        assert_eq!(r["deployment.environment.name"], "local");
        assert_eq!(r["service.version"], env!("CARGO_PKG_VERSION"));
    }
    let named = |name: &str| spans.iter().filter(|s| s.name == name).collect::<Vec<_>>();
    let cycles = named("cycle");
    assert_eq!(cycles.len(), 1);
    let cycle = cycles[0];
    let orders = named("order");
    assert_eq!(orders.len(), 5);
    let order_ids: HashSet<&[u8]> = orders.iter().map(|s| s.span_id.as_slice()).collect();
    for order in &orders {
        assert_eq!(
            order.parent_span_id, cycle.span_id,
            "order spans are children of the cycle"
        );
        assert_eq!(order.trace_id, cycle.trace_id);
        let a = attrs(&order.attributes);
        assert_eq!(a["ordermanagement.order.outcome"], "ready");
        assert!(
            a.contains_key("ordermanagement.order.id")
                && a.contains_key("ordermanagement.order.wood_type")
        );
    }
    let decreases = named("POST /stocks/decrease");
    assert_eq!(decreases.len(), 5);
    for d in &decreases {
        assert_eq!(d.kind, SpanKind::Client as i32);
        assert!(
            order_ids.contains(d.parent_span_id.as_slice()),
            "a decrease is a child of its order"
        );
        let a = attrs(&d.attributes);
        assert_eq!(a["http.request.method"], "POST");
        assert_eq!(a["server.address"], "127.0.0.1");
        assert_eq!(a["server.port"], stack.stock_port.to_string());
        assert_eq!(
            a["url.full"],
            format!("{}/stocks/decrease", stack.stocks_url())
        );
        assert_eq!(a["http.response.status_code"], "200");
    }
    assert_eq!(named("PUT /orders/{id}").len(), 5);
    let lists = named("GET /orders/status/{status}");
    assert!(!lists.is_empty());
    assert!(lists.iter().all(|s| s.parent_span_id == cycle.span_id));

    // The services received traceparent headers of those very client spans.
    let client_spans: HashSet<String> = spans
        .iter()
        .filter(|s| s.kind == SpanKind::Client as i32)
        .map(|s| hex(&s.span_id))
        .collect();
    let traceparents = stack.traceparents();
    assert_eq!(
        traceparents.len(),
        client_spans.len(),
        "one traceparent per call"
    );
    for tp in &traceparents {
        let parts: Vec<&str> = tp.split('-').collect();
        assert_eq!(parts.len(), 4, "{tp}");
        assert_eq!(parts[1], hex(&cycle.trace_id), "{tp}");
        assert!(
            client_spans.contains(parts[2]),
            "{tp} names an exported client span"
        );
    }

    // Metrics: names and units.
    let mut metrics: HashMap<String, String> = HashMap::new();
    for body in sink.bodies("/v1/metrics") {
        let request =
            ExportMetricsServiceRequest::decode(body.as_slice()).expect("OTLP metrics decode");
        for rm in request.resource_metrics {
            for sm in rm.scope_metrics {
                for m in sm.metrics {
                    metrics.insert(m.name, m.unit);
                }
            }
        }
    }
    for (name, unit) in [
        ("http.client.request.duration", "s"),
        ("ordermanagement.orders.processed", "{order}"),
        ("ordermanagement.cycle.duration", "s"),
        ("ordermanagement.orders.registered", "{order}"),
        ("ordermanagement.stock.taken", "{item}"),
    ] {
        assert_eq!(
            metrics.get(name).map(String::as_str),
            Some(unit),
            "{name} in {metrics:?}"
        );
    }

    // Logs: the order lines carry the trace and span of their order.
    let mut with_trace = 0;
    let trace_id = hex(&cycle.trace_id);
    for body in sink.bodies("/v1/logs") {
        let request = ExportLogsServiceRequest::decode(body.as_slice()).expect("OTLP logs decode");
        for rl in request.resource_logs {
            for sl in rl.scope_logs {
                for record in sl.log_records {
                    let body = text(&record.body);
                    assert!(
                        !body.contains("export failed"),
                        "exporter messages stay out of OTLP: {body}"
                    );
                    if body.contains(": ready") {
                        assert_eq!(hex(&record.trace_id), trace_id, "{body}");
                        assert!(order_ids.contains(record.span_id.as_slice()), "{body}");
                        with_trace += 1;
                    }
                }
            }
        }
    }
    assert_eq!(with_trace, 5, "one exported line per order, in its span");
}

#[test]
fn a_collector_that_is_down_neither_slows_cycles_nor_delays_shutdown() {
    let stack = stack(20);
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let mut child = Running::start(
        worker(&stack)
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
            .env("OTEL_METRIC_EXPORT_INTERVAL", "200")
            .env("OTEL_BSP_SCHEDULE_DELAY", "100")
            .env("LOG_LEVEL", "info")
            .args(["run", "--interval", "0.2"]),
    );
    std::thread::sleep(Duration::from_millis(2000));
    child.signal(libc::SIGTERM);
    let signalled = Instant::now();
    let out = child
        .wait_for(Duration::from_secs(3))
        .expect("stopped within 3 s of SIGTERM with the collector down");
    let stopped_in = signalled.elapsed();
    let (status, stderr) = (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(stopped_in < Duration::from_secs(3), "{stopped_in:?}");
    // About one cycle per 0.2 s, as without telemetry.
    let cycles = stderr.matches("cycle done").count();
    assert!(cycles >= 5, "{cycles} cycles in 2 s:\n{stderr}");
    // A few lines, not one per export.
    let complaints = stderr.matches("export failed").count();
    assert!(
        (1..=3).contains(&complaints),
        "{complaints} export complaints:\n{stderr}"
    );
    assert_eq!(stack.count_by_status().get("ready").copied(), Some(20));
}

#[test]
fn a_collector_that_never_answers_does_not_hold_the_exit() {
    let stack = stack(10);
    // Connections complete in the kernel's backlog, and nothing ever answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", silent.local_addr().unwrap());
    let mut child = Running::start(
        worker(&stack)
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
            .env("OTEL_METRIC_EXPORT_INTERVAL", "300")
            .env("OTEL_BSP_SCHEDULE_DELAY", "100")
            .args(["run", "--interval", "0.2"]),
    );
    std::thread::sleep(Duration::from_millis(1500));
    child.signal(libc::SIGTERM);
    let signalled = Instant::now();
    let out = child
        .wait_for(Duration::from_secs(3))
        .expect("stopped within 3 s of SIGTERM with a silent collector");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(signalled.elapsed() < Duration::from_secs(3));
    assert_eq!(stack.count_by_status().get("ready").copied(), Some(10));
    drop(silent);
}

#[test]
fn the_exporters_own_complaints_stay_out_of_the_exported_logs() {
    let stack = stack(3);
    let sink = OtlpSink::start_failing(Some("/v1/traces")).unwrap();
    let mut child = Running::start(
        worker(&stack)
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", sink.url())
            .env("OTEL_BSP_SCHEDULE_DELAY", "50")
            .env("OTEL_BLRP_SCHEDULE_DELAY", "1000")
            .env("LOG_LEVEL", "info")
            .args(["run", "--interval", "0.3"]),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while sink.bodies("/v1/traces").is_empty() || sink.bodies("/v1/logs").is_empty() {
        assert!(
            Instant::now() < deadline,
            "no traces and logs exported within 10 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    child.signal(libc::SIGTERM);
    let out = child.wait_for(Duration::from_secs(3)).expect("stopped");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        stderr.contains("traces export failed"),
        "the failure is reported on stderr:\n{stderr}"
    );
    let mut bodies = Vec::new();
    for body in sink.bodies("/v1/logs") {
        let request = ExportLogsServiceRequest::decode(body.as_slice()).expect("OTLP logs decode");
        for rl in request.resource_logs {
            for sl in rl.scope_logs {
                bodies.extend(sl.log_records.iter().map(|r| text(&r.body)));
            }
        }
    }
    assert!(
        bodies.iter().any(|b| b.contains(": ready")),
        "the worker's own lines are exported: {bodies:?}"
    );
    assert!(
        !bodies.iter().any(|b| b.contains("export failed")),
        "no feedback: {bodies:?}"
    );
}
