//! Telemetry through the real binary: what arrives at an OTLP/HTTP receiver on loopback,
//! decoded with the official OTLP protobuf definitions, and what the services receive.

mod common;

use std::collections::{HashMap, HashSet};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Running;
use common::otlp::{assert_traceparents_name_client_spans, attrs, hex, resources_and_spans, text};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{Metric, metric, number_data_point};
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message;
use standin::{Knobs, OtlpSink, Stack};

fn worker(stack: &Stack) -> Command {
    let mut cmd = common::worker_at(&stack.orders_url(), &stack.stocks_url());
    cmd.env("ERROR_RATE", "0")
        .env("HTTP_TIMEOUT_SECONDS", "2")
        .stdin(Stdio::null());
    cmd
}

fn stack(orders: usize) -> Stack {
    Stack::stocked(Knobs::default(), 1_000_000, orders, 3)
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
        .env("LOG_LEVEL", "debug") // `once` logs its ready orders at debug
        .arg("once")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Everything delivered: no word of telemetry left behind at the exit.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("could not be delivered"), "{stderr}");

    // Traces.
    let (resources, spans) = resources_and_spans(&sink);
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
    // Each order is the root of a trace of its own, linked to the cycle.
    let order_of_trace: HashMap<&[u8], &Span> =
        orders.iter().map(|s| (s.trace_id.as_slice(), *s)).collect();
    assert_eq!(order_of_trace.len(), 5, "one trace per order");
    for order in &orders {
        assert!(order.parent_span_id.is_empty(), "an order span is a root");
        assert_ne!(order.trace_id, cycle.trace_id);
        assert!(
            order
                .links
                .iter()
                .any(|l| l.trace_id == cycle.trace_id && l.span_id == cycle.span_id),
            "an order span links to its cycle"
        );
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
        let order = order_of_trace[d.trace_id.as_slice()];
        assert_eq!(
            d.parent_span_id, order.span_id,
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
    let puts = named("PUT /orders/{id}");
    assert_eq!(puts.len(), 5);
    for p in &puts {
        let order = order_of_trace[p.trace_id.as_slice()];
        assert_eq!(p.parent_span_id, order.span_id, "{p:?}");
    }
    let lists = named("GET /orders/status/{status}");
    assert!(!lists.is_empty());
    assert!(
        lists
            .iter()
            .all(|s| s.parent_span_id == cycle.span_id && s.trace_id == cycle.trace_id)
    );

    // The services received traceparent headers of those very client spans, in the
    // trace of the order each call was made for (the page fetches in the cycle's).
    assert_traceparents_name_client_spans(&stack.traceparents(), &spans, "call");

    // Metrics: names and units.
    let exported = all_metrics(&sink);
    let metrics: HashMap<String, String> = exported
        .iter()
        .map(|m| (m.name.clone(), m.unit.clone()))
        .collect();
    for (name, unit) in [
        ("http.client.request.duration", "s"),
        ("ordermanagement.orders.processed", "{order}"),
        ("ordermanagement.cycle.duration", "s"),
        ("ordermanagement.orders.registered", "{order}"),
        ("ordermanagement.orders.pending", "{order}"),
        ("ordermanagement.stock.taken", "{item}"),
    ] {
        assert_eq!(
            metrics.get(name).map(String::as_str),
            Some(unit),
            "{name} in {metrics:?}"
        );
    }

    // Metrics: values, from the last export of each (cumulative) metric. The per-order
    // measurements are recorded through instruments bound to their attributes.
    let last: HashMap<String, Metric> = exported.into_iter().map(|m| (m.name.clone(), m)).collect();
    // Only the worker's own: none of the SDK's metrics about itself (otel.sdk.*), which
    // the bound instruments' feature builds in.
    assert!(
        last.keys().all(|name| !name.starts_with("otel.sdk")),
        "{:?}",
        last.keys()
    );
    let sum_points = |name: &str| match &last[name].data {
        Some(metric::Data::Sum(sum)) => sum
            .data_points
            .iter()
            .map(|p| {
                let value = match p.value {
                    Some(number_data_point::Value::AsInt(v)) => v,
                    other => panic!("{name}: {other:?}"),
                };
                (attrs(&p.attributes), value)
            })
            .collect::<Vec<_>>(),
        other => panic!("{name}: {other:?}"),
    };
    let processed = sum_points("ordermanagement.orders.processed");
    assert_eq!(processed.len(), 1, "{processed:?}");
    assert_eq!(processed[0].0["outcome"], "ready");
    assert_eq!(processed[0].1, 5);
    let mut taken_by_wood: HashMap<String, i64> = HashMap::new();
    for entry in stack.ledger() {
        *taken_by_wood.entry(entry.wood_type).or_default() += entry.quantity as i64;
    }
    let exported: HashMap<String, i64> = sum_points("ordermanagement.stock.taken")
        .into_iter()
        .map(|(a, v)| (a["wood_type"].clone(), v))
        .collect();
    assert_eq!(exported, taken_by_wood);
    let Some(metric::Data::Histogram(durations)) = &last["http.client.request.duration"].data
    else {
        panic!("{:?}", last["http.client.request.duration"]);
    };
    let count = |method: &str, template: &str| -> u64 {
        durations
            .data_points
            .iter()
            .filter(|p| {
                let a = attrs(&p.attributes);
                a["http.request.method"] == method
                    && a["url.template"] == template
                    && a["http.response.status_code"] == "200"
                    && a["server.address"] == "127.0.0.1"
                    && a.contains_key("server.port")
            })
            .map(|p| p.count)
            .sum()
    };
    assert_eq!(count("POST", "/stocks/decrease"), 5, "{durations:?}");
    assert_eq!(count("PUT", "/orders/{id}"), 5, "{durations:?}");
    // One page held all five (a short page ends the cycle).
    assert_eq!(count("GET", "/orders/status/{status}"), 1, "{durations:?}");

    // Logs: the order lines carry the trace and span of their order.
    let mut with_trace = 0;
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
                        let order = order_of_trace[record.trace_id.as_slice()];
                        assert_eq!(record.span_id, order.span_id, "{body}");
                        assert!(order_ids.contains(record.span_id.as_slice()), "{body}");
                        with_trace += 1;
                    }
                }
            }
        }
    }
    assert_eq!(with_trace, 5, "one exported line per order, in its span");
}

/// `once` over three orders on a stack answering as `knobs` say, exporting to a sink.
fn three_orders(knobs: Knobs) -> (Stack, OtlpSink) {
    let stack = Stack::stocked(knobs, 1_000_000, 3, 3);
    let sink = OtlpSink::start().unwrap();
    run_once(
        worker(&stack)
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", sink.url())
            .arg("once"),
    );
    (stack, sink)
}

/// The last export of each metric the sink got, by name.
fn last_metrics(sink: &OtlpSink) -> HashMap<String, Metric> {
    all_metrics(sink)
        .into_iter()
        .map(|m| (m.name.clone(), m))
        .collect()
}

/// The calls of the last `http.client.request.duration` export, by method, status and
/// error type (each empty when the call has none).
fn duration_counts(sink: &OtlpSink) -> HashMap<(String, String, String), u64> {
    let last = last_metrics(sink);
    let Some(metric::Data::Histogram(durations)) = &last["http.client.request.duration"].data
    else {
        panic!("{:?}", last["http.client.request.duration"]);
    };
    let mut counts: HashMap<(String, String, String), u64> = HashMap::new();
    for point in &durations.data_points {
        let a = attrs(&point.attributes);
        let key = (
            a["http.request.method"].clone(),
            a.get("http.response.status_code")
                .cloned()
                .unwrap_or_default(),
            a.get("error.type").cloned().unwrap_or_default(),
        );
        *counts.entry(key).or_default() += point.count;
    }
    counts
}

#[test]
fn each_call_duration_is_recorded_with_its_own_status_and_error_type() {
    let mut knobs = Knobs::default();
    knobs.decrease_answers.insert(
        2,
        standin::Answer::new(400, r#"{"error": "Insufficient stock"}"#),
    );
    let (stack, sink) = three_orders(knobs);
    assert_eq!(stack.status(2).as_deref(), Some("blocked"));
    // Each outcome, with its reason, is counted in a set of its own.
    let Some(metric::Data::Sum(processed)) =
        &last_metrics(&sink)["ordermanagement.orders.processed"].data
    else {
        panic!("no ordermanagement.orders.processed sum");
    };
    let mut outcomes: Vec<(String, String, i64)> = processed
        .data_points
        .iter()
        .map(|p| {
            let a = attrs(&p.attributes);
            let value = match p.value {
                Some(number_data_point::Value::AsInt(v)) => v,
                other => panic!("{other:?}"),
            };
            let reason = a.get("reason").cloned().unwrap_or_default();
            (a["outcome"].clone(), reason, value)
        })
        .collect();
    outcomes.sort();
    assert_eq!(
        outcomes,
        [
            ("blocked".to_string(), "rejected".to_string(), 1),
            ("ready".to_string(), String::new(), 2)
        ]
    );
    let counts = duration_counts(&sink);
    let count = |method: &str, status: &str, error: &str| {
        counts
            .get(&(method.into(), status.into(), error.into()))
            .copied()
            .unwrap_or(0)
    };
    assert_eq!(count("POST", "200", ""), 2, "{counts:?}");
    assert_eq!(count("POST", "400", "400"), 1, "{counts:?}");
    assert_eq!(count("PUT", "200", ""), 3, "{counts:?}");
    assert_eq!(count("GET", "200", ""), 1, "{counts:?}");
    assert_eq!(counts.values().sum::<u64>(), 7, "{counts:?}");
}

#[test]
fn a_reply_whose_body_fails_after_its_status_keeps_both_in_its_duration() {
    // Order 2's status update is answered 200 with a body over the worker's 64 KiB
    // limit for such a reply: the call has a status and an error type.
    let mut knobs = Knobs::default();
    knobs
        .status_answers
        .insert(2, standin::Answer::new(200, &"x".repeat(70 * 1024)));
    let (_, sink) = three_orders(knobs);
    let counts = duration_counts(&sink);
    let with_error = |status: &str| {
        counts
            .iter()
            .filter(|((_, s, e), _)| s == status && e == "response_body")
            .map(|(_, n)| n)
            .sum::<u64>()
    };
    // A 2xx update is not resent: that one call, and no other, has the error type.
    assert_eq!(with_error("200"), 1, "{counts:?}");
    assert_eq!(
        counts.get(&("PUT".into(), "200".into(), "response_body".into())),
        Some(&1),
        "{counts:?}"
    );
    assert_eq!(
        counts
            .iter()
            .filter(|((_, _, e), _)| e == "response_body")
            .map(|(_, n)| n)
            .sum::<u64>(),
        with_error("200"),
        "{counts:?}"
    );
    // The other orders' updates kept their own set, without an error type.
    let plain_puts = counts
        .get(&("PUT".into(), "200".into(), String::new()))
        .copied()
        .unwrap_or(0);
    assert_eq!(plain_puts, 2, "{counts:?}");
}

/// Runs `run --interval 0.2` (spans exported every 100 ms) for `run_for`, sends SIGTERM
/// and waits up to 3 s; returns the output and how long the stop took.
fn run_then_sigterm(
    cmd: &mut Command,
    run_for: Duration,
    what: &str,
) -> (std::process::Output, Duration) {
    let mut child = Running::start(cmd.env("OTEL_BSP_SCHEDULE_DELAY", "100").args([
        "run",
        "--interval",
        "0.2",
    ]));
    std::thread::sleep(run_for);
    child.signal(libc::SIGTERM);
    let signalled = Instant::now();
    let out = child
        .wait_for(Duration::from_secs(3))
        .unwrap_or_else(|| panic!("stopped within 3 s of SIGTERM with {what}"));
    (out, signalled.elapsed())
}

#[test]
fn a_collector_that_is_down_neither_slows_cycles_nor_delays_shutdown() {
    let stack = stack(20);
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let (out, stopped_in) = run_then_sigterm(
        worker(&stack)
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
            .env("OTEL_METRIC_EXPORT_INTERVAL", "200")
            // Idle cycles are logged at debug.
            .env("LOG_LEVEL", "debug"),
        Duration::from_millis(2000),
        "the collector down",
    );
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
fn an_exit_with_the_collector_down_says_so_in_one_plain_line() {
    for protocol in ["http/protobuf", "grpc"] {
        let stack = stack(3);
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", closed.local_addr().unwrap());
        drop(closed);
        let out = Running::start(
            worker(&stack)
                .env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
                .env("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
                .arg("once"),
        )
        .wait_for(Duration::from_secs(20))
        .expect("once ends within 20 s");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(0), "{protocol}: {stderr}");
        assert_eq!(stack.count_by_status().get("ready").copied(), Some(3));
        let lines: Vec<&str> = stderr
            .lines()
            .filter(|l| l.contains("could not be delivered"))
            .collect();
        assert_eq!(lines.len(), 1, "{protocol}: {stderr}");
        // Every signal, with the reason the client saw.
        let says = format!(
            "the last telemetry (traces, metrics, logs) could not be delivered to the \
             collector at {endpoint}: "
        );
        assert!(lines[0].contains(&says), "{protocol}: {stderr}");
        assert!(lines[0].contains(" WARN "), "{protocol}: {stderr}");
        // No SDK error's Debug form, no promise of a later line from a process that exits.
        for never in [
            "telemetry shutdown",
            "Operation failed",
            "InternalFailure",
            "next report in a minute",
        ] {
            assert!(!stderr.contains(never), "{protocol}: {never}: {stderr}");
        }
    }
}

#[test]
fn a_collector_that_never_answers_does_not_hold_the_exit() {
    let stack = stack(10);
    // Connections complete in the kernel's backlog, and nothing ever answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", silent.local_addr().unwrap());
    let (out, stopped_in) = run_then_sigterm(
        worker(&stack)
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
            .env("OTEL_METRIC_EXPORT_INTERVAL", "300"),
        Duration::from_millis(1500),
        "a silent collector",
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stopped_in < Duration::from_secs(3));
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

// ---------------------------------------------------------------- the demo's own settings

/// The demo block with the endpoint pointed at `endpoint` and the protocol set to
/// `protocol`, `${HOSTNAME}` as compose would fill it in, and `edit` applied to the
/// resource attributes. The block says `grpc`; the [`OtlpSink`] of these tests speaks
/// OTLP/HTTP, so they ask for `http/protobuf`, their one change (tests/grpc.rs runs the
/// block as it is against a gRPC collector).
fn demo_worker(
    stack: &Stack,
    endpoint: &str,
    protocol: &str,
    edit: impl Fn(&str) -> String,
) -> Command {
    let mut cmd = worker(stack);
    // The demo's block (shared with the compose test), JSON lines on.
    cmd.env("LOG_FORMAT", "json");
    for (key, value) in common::DEMO_ENV {
        let value = match key {
            "OTEL_EXPORTER_OTLP_ENDPOINT" => endpoint.to_string(),
            "OTEL_EXPORTER_OTLP_PROTOCOL" => protocol.to_string(),
            "OTEL_RESOURCE_ATTRIBUTES" => edit(&value.replace("${HOSTNAME}", "worker-7f3a")),
            _ => value.to_string(),
        };
        cmd.env(key, value);
    }
    // Every order's line: `once` logs its ready orders at debug.
    cmd.env("OTEL_BSP_SCHEDULE_DELAY", "50")
        .env("OTEL_BLRP_SCHEDULE_DELAY", "50")
        .env("LOG_LEVEL", "debug")
        .arg("once");
    cmd
}

/// The trace request's body is the worker's own encoding (src/telemetry/spans.rs),
/// sent through the exporter's retry: a refused export is sent again, the same bytes.
#[test]
fn spans_refused_once_arrive_with_the_exporters_retry() {
    let stack = stack(3);
    let sink = OtlpSink::start_refusing(Some("/v1/traces"), 503, 1).unwrap();
    let out = run_once(
        worker(&stack)
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", sink.url())
            .arg("once"),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("could not be delivered"), "{stderr}");
    let bodies = sink.bodies("/v1/traces");
    assert!(bodies.len() >= 2, "{} trace requests", bodies.len());
    assert_eq!(bodies[0], bodies[1], "the retry sends what was refused");
    let orders = bodies[1..]
        .iter()
        .flat_map(|body| {
            use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
            ExportTraceServiceRequest::decode(body.as_slice())
                .expect("OTLP traces decode")
                .resource_spans
        })
        .flat_map(|rs| rs.scope_spans)
        .flat_map(|ss| ss.spans)
        .filter(|s| s.name == "order")
        .count();
    assert_eq!(orders, 3, "{stderr}");
}

fn run_once(cmd: &mut Command) -> std::process::Output {
    let out = Running::start(cmd)
        .wait_for(Duration::from_secs(30))
        .expect("once finished within 30 s");
    assert!(
        matches!(out.status.code(), Some(0 | 1)),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn log_records(sink: &OtlpSink) -> Vec<opentelemetry_proto::tonic::logs::v1::LogRecord> {
    let mut records = Vec::new();
    for body in sink.bodies("/v1/logs") {
        let request = ExportLogsServiceRequest::decode(body.as_slice()).expect("OTLP logs decode");
        for rl in request.resource_logs {
            for sl in rl.scope_logs {
                records.extend(sl.log_records);
            }
        }
    }
    records
}

#[test]
fn the_demo_block_gives_resources_baggage_and_json_logs_linked_to_traces() {
    let stack = stack(20);
    let sink = OtlpSink::start().unwrap();
    let out = run_once(&mut demo_worker(
        &stack,
        &sink.url(),
        "http/protobuf",
        str::to_string,
    ));

    // Every line on stderr is one JSON object with the fields Grafana reads.
    let stderr = String::from_utf8_lossy(&out.stderr);
    let (mut order_lines, mut outcome_lines) = (0, 0);
    for line in stderr.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        for field in [
            "timestamp",
            "level",
            "logger",
            "message",
            "trace_id",
            "span_id",
        ] {
            assert!(v[field].is_string(), "{field} in {line}");
        }
        if v.get("order_id").is_some() {
            order_lines += 1;
            assert_eq!(v["trace_id"].as_str().unwrap().len(), 32, "{line}");
            assert_eq!(v["span_id"].as_str().unwrap().len(), 16, "{line}");
            assert!(v["order_id"].is_u64() && v["quantity"].is_u64(), "{line}");
            assert!(v["wood_type"].is_string(), "{line}");
        }
        if v.get("outcome").is_some() {
            outcome_lines += 1;
            assert!(v["order_id"].is_u64() && v["reason"].is_string(), "{line}");
        }
    }
    assert!(order_lines >= 20, "{order_lines} order lines:\n{stderr}");
    assert!(
        outcome_lines >= 20,
        "{outcome_lines} outcome lines:\n{stderr}"
    );

    // Every resource attribute of the block arrives.
    let (resources, spans) = resources_and_spans(&sink);
    assert!(!resources.is_empty(), "no traces arrived:\n{stderr}");
    for r in &resources {
        assert_eq!(r["service.name"], "ordermanagement");
        assert_eq!(r["service.namespace"], "keeper");
        assert_eq!(r["service.instance.id"], "worker-7f3a");
        assert_eq!(r["deployment.environment.name"], "local");
        assert_eq!(r["service.version"], "0.1.0");
    }

    // OTEL_PROPAGATORS: the order travels as baggage, beside the traceparent.
    let baggage = stack.baggage();
    assert!(
        !baggage.is_empty(),
        "no baggage header reached the services"
    );
    assert!(
        baggage
            .iter()
            .all(|b| b.contains("ordermanagement.order.id=")),
        "{baggage:?}"
    );
    // Every order's calls carry it (the list calls belong to the cycle, not an order).
    assert!(baggage.len() >= 20, "{baggage:?}");

    // The exported log bodies are the same JSON lines, and the demo's Loki derived
    // field finds in them trace ids of exported spans.
    let derived_field = regex::Regex::new(r#""trace_id":\s*"([a-f0-9]{32})""#).unwrap();
    let span_traces: HashSet<String> = spans.iter().map(|s| hex(&s.trace_id)).collect();
    let records = log_records(&sink);
    let mut linked = 0;
    for record in &records {
        let body = text(&record.body);
        let v: serde_json::Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
        assert!(
            stderr.contains(&body),
            "the body is the stderr line: {body}"
        );
        if let Some(found) = derived_field.captures(&body) {
            let id = &found[1];
            assert!(span_traces.contains(id), "{id} is no exported span's trace");
            assert_eq!(id, hex(&record.trace_id), "the record's own field agrees");
            linked += 1;
        }
        if v.get("order_id").is_some() {
            let a = attrs(&record.attributes);
            assert_eq!(a["order_id"], v["order_id"].to_string(), "{body}");
            assert_eq!(a["wood_type"], v["wood_type"], "{body}");
            if let Some(outcome) = v.get("outcome") {
                assert_eq!(a["outcome"], *outcome, "{body}");
            }
        }
    }
    assert!(linked >= 20, "{linked} of {} bodies linked", records.len());

    // Without service.version in the block, the crate's version.
    let sink = OtlpSink::start().unwrap();
    let stack = self::stack(2);
    run_once(
        demo_worker(&stack, &sink.url(), "http/protobuf", |attributes| {
            attributes.replace("service.version=0.1.0,", "")
        })
        .env("OTEL_PROPAGATORS", "tracecontext"),
    );
    let (resources, _) = resources_and_spans(&sink);
    assert!(!resources.is_empty());
    for r in &resources {
        assert_eq!(r["service.version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(r["service.instance.id"], "worker-7f3a");
    }
    assert!(
        stack.baggage().is_empty(),
        "no baggage without the propagator"
    );
    assert!(!stack.traceparents().is_empty());
}

#[test]
fn with_traces_off_the_orders_still_carry_their_baggage_and_metrics_arrive() {
    let stack = self::stack(3);
    let sink = OtlpSink::start().unwrap();
    run_once(
        worker(&stack)
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", sink.url())
            .env("OTEL_TRACES_EXPORTER", "none")
            .arg("once"),
    );
    assert_eq!(stack.status(1).as_deref(), Some("ready"));
    assert!(
        sink.bodies("/v1/traces").is_empty(),
        "no trace was exported"
    );
    assert!(stack.traceparents().is_empty(), "no span, no traceparent");
    // Each order's decrease and status update carry its id.
    let mut baggage = stack.baggage();
    baggage.sort();
    let expected: Vec<String> = (1..=3)
        .flat_map(|id| vec![format!("ordermanagement.order.id={id}"); 2])
        .collect();
    assert_eq!(baggage, expected);
    assert!(last_metrics(&sink).contains_key("ordermanagement.orders.processed"));
}

#[test]
fn the_demo_block_with_its_grpc_endpoint_down_costs_the_orders_nothing() {
    let stack = stack(5);
    // The block as it is (port 4317, OTLP/gRPC, tests/grpc.rs has a collector there),
    // with nothing listening: export fails now and then, the orders are handled.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let out = run_once(&mut demo_worker(&stack, &endpoint, "grpc", str::to_string));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("exporting traces, metrics, logs over OTLP/gRPC"),
        "the block's OTEL_EXPORTER_OTLP_PROTOCOL=grpc is followed: {stderr}"
    );
    assert!(stderr.contains("export failed"), "{stderr}");
    assert_eq!(
        stack.count_by_status().values().sum::<usize>(),
        5,
        "and the orders are handled"
    );
    assert_eq!(stack.count_by_status().get("registered"), None, "{stderr}");
}

// ---------------------------------------------------------------- the Grafana dashboard

/// A metric as the receiver saw it: name, unit, kind and attribute keys.
struct Exported {
    name: String,
    unit: String,
    kind: Kind,
    labels: HashSet<String>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Every metric of every export the receiver got, in arrival order.
fn all_metrics(sink: &OtlpSink) -> Vec<Metric> {
    sink.bodies("/v1/metrics")
        .iter()
        .flat_map(|body| {
            ExportMetricsServiceRequest::decode(body.as_slice())
                .expect("OTLP metrics decode")
                .resource_metrics
        })
        .flat_map(|rm| rm.scope_metrics)
        .flat_map(|sm| sm.metrics)
        .collect()
}

fn exported_metrics(sink: &OtlpSink) -> Vec<Exported> {
    use opentelemetry_proto::tonic::metrics::v1::metric::Data;
    let mut found: HashMap<String, Exported> = HashMap::new();
    for m in all_metrics(sink) {
        let (kind, points): (Kind, Vec<&[KeyValue]>) = match &m.data {
            Some(Data::Sum(s)) if s.is_monotonic => (
                Kind::Counter,
                s.data_points.iter().map(|p| &p.attributes[..]).collect(),
            ),
            Some(Data::Gauge(g)) => (
                Kind::Gauge,
                g.data_points.iter().map(|p| &p.attributes[..]).collect(),
            ),
            Some(Data::Histogram(h)) => (
                Kind::Histogram,
                h.data_points.iter().map(|p| &p.attributes[..]).collect(),
            ),
            other => panic!(
                "{}: a kind the dashboard test does not know: {other:?}",
                m.name
            ),
        };
        let entry = found.entry(m.name.clone()).or_insert_with(|| Exported {
            name: m.name.clone(),
            unit: m.unit.clone(),
            kind,
            labels: HashSet::new(),
        });
        for kv in points.into_iter().flatten() {
            entry.labels.insert(kv.key.replace('.', "_"));
        }
    }
    found.into_values().collect()
}

/// The series names an OTLP-to-Prometheus translation gives `m`: with suffixes off (the
/// demo's Mimir: dots to underscores, nothing added) or on (unit and `_total` added).
fn prometheus_names(m: &Exported, suffixes: bool) -> Vec<String> {
    let mut base = m.name.replace(['.', '-', '/'], "_");
    if suffixes {
        // Units in braces are annotations and give no suffix.
        let unit = match m.unit.as_str() {
            u if u.is_empty() || (u.starts_with('{') && u.ends_with('}')) => "",
            "s" => "seconds",
            "ms" => "milliseconds",
            "By" => "bytes",
            other => panic!("{}: add the translation of unit {other:?}", m.name),
        };
        if !unit.is_empty() && !base.ends_with(unit) {
            base = format!("{base}_{unit}");
        }
        if m.kind == Kind::Counter {
            base.push_str("_total");
        }
    }
    match m.kind {
        Kind::Histogram => ["_bucket", "_sum", "_count"]
            .iter()
            .map(|s| format!("{base}{s}"))
            .collect(),
        _ => vec![base],
    }
}

/// Every vector selector in `expr`, and the grouping labels used.
fn selectors(
    expr: &promql_parser::parser::Expr,
    found: &mut Vec<promql_parser::parser::VectorSelector>,
    grouping: &mut Vec<String>,
) {
    use promql_parser::parser::{Expr, LabelModifier};
    let mut modifier = |m: &Option<LabelModifier>| {
        if let Some(LabelModifier::Include(l) | LabelModifier::Exclude(l)) = m {
            grouping.extend(l.labels.iter().cloned());
        }
    };
    match expr {
        Expr::Aggregate(a) => {
            modifier(&a.modifier);
            selectors(&a.expr, found, grouping);
            if let Some(p) = &a.param {
                selectors(p, found, grouping);
            }
        }
        Expr::Unary(u) => selectors(&u.expr, found, grouping),
        Expr::Binary(b) => {
            if let Some(m) = &b.modifier {
                modifier(&m.matching);
            }
            selectors(&b.lhs, found, grouping);
            selectors(&b.rhs, found, grouping);
        }
        Expr::Paren(p) => selectors(&p.expr, found, grouping),
        Expr::Subquery(s) => selectors(&s.expr, found, grouping),
        Expr::VectorSelector(v) => found.push(v.clone()),
        Expr::MatrixSelector(m) => found.push(m.vs.clone()),
        Expr::Call(c) => {
            for arg in &c.args.args {
                selectors(arg, found, grouping);
            }
        }
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
    }
}

/// Grafana's variables as a query would see them.
fn substitute(query: &str) -> String {
    query
        .replace("$__rate_interval", "1m")
        .replace("$__range", "1h")
        .replace("$job", "keeper/ordermanagement")
        .replace("$instance", ".*")
        .replace("$shard", ".*")
}

#[test]
fn the_dashboard_selects_only_metrics_and_labels_the_worker_exports() {
    // A sharded run with failures, so that every attribute the worker can set appears.
    let stack = stack(30);
    stack.set_knobs(Knobs {
        stock_error_rate: 0.2,
        ..Knobs::default()
    });
    let sink = OtlpSink::start().unwrap();
    let out = Running::start(
        worker(&stack)
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", sink.url())
            .env("ERROR_RATE", "0.1")
            .env("MAX_RETRIES", "0")
            .env("SHARD", "0/1")
            .arg("once"),
    )
    .wait_for(Duration::from_secs(30))
    .expect("once finished within 30 s");
    assert!(matches!(out.status.code(), Some(0 | 1)), "{out:?}");
    // Failures may end that cycle early, and only a complete cycle records the backlog:
    // a second, clean one to the same receiver.
    stack.set_knobs(Knobs::default());
    stack.seed_orders(5, &mut fastrand::Rng::with_seed(9));
    let out = Running::start(
        worker(&stack)
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", sink.url())
            .env("SHARD", "0/1")
            .arg("once"),
    )
    .wait_for(Duration::from_secs(30))
    .expect("once finished within 30 s");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let exported = exported_metrics(&sink);
    assert!(exported.len() >= 6, "{} metrics exported", exported.len());

    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/grafana/dashboards/ordermanagement.json"
    );
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("the dashboard"))
            .expect("valid JSON");

    // Datasources: variables whose defaults are the demo's uids; every panel and target
    // names one of them.
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("variables");
    let variable = |name: &str| {
        variables
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("variable {name}"))
    };
    for (name, kind, uid) in [
        ("metrics", "prometheus", "mymimir"),
        ("logs", "loki", "myloki"),
        ("traces", "tempo", "mytempo"),
    ] {
        let v = variable(name);
        assert_eq!(
            (v["type"].as_str(), v["query"].as_str()),
            (Some("datasource"), Some(kind))
        );
        assert_eq!(v["current"]["value"], uid, "{name}'s default");
    }
    let datasource_uids = ["${metrics}", "${logs}", "${traces}"];
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut ids = HashSet::new();
    let mut queries: Vec<String> = Vec::new();
    for panel in panels {
        let title = panel["title"].as_str().unwrap_or_default();
        assert!(
            ids.insert(panel["id"].as_u64().expect("a numeric id")),
            "duplicate id: {title}"
        );
        assert!(
            datasource_uids.contains(&panel["datasource"]["uid"].as_str().unwrap_or_default()),
            "{title}: datasource {}",
            panel["datasource"]
        );
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no query");
        for target in targets {
            let uid = target["datasource"]["uid"].as_str().unwrap_or_default();
            assert!(
                datasource_uids.contains(&uid),
                "{title}: a target's datasource"
            );
            if uid == "${metrics}" {
                queries.push(target["expr"].as_str().expect("a PromQL expr").to_string());
            }
        }
    }
    // Series overrides by outcome name use the names the worker gives.
    for panel in panels {
        for o in panel["fieldConfig"]["overrides"]
            .as_array()
            .into_iter()
            .flatten()
        {
            if o["matcher"]["id"] == "byName"
                && panel["title"].as_str().unwrap().contains("outcome")
            {
                let name = o["matcher"]["options"].as_str().unwrap();
                assert!(
                    ordermanagement::Outcome::NAMES.contains(&name),
                    "{}: override for {name:?}, no such outcome",
                    panel["title"]
                );
            }
        }
    }
    let label_values = regex::Regex::new(r"^label_values\((.*),\s*(\w+)\)$").unwrap();
    for v in variables.iter().filter(|v| v["type"] == "query") {
        let query = v["query"]["query"]
            .as_str()
            .or(v["query"].as_str())
            .expect("a query");
        let parts = label_values
            .captures(query)
            .unwrap_or_else(|| panic!("{query}"));
        queries.push(parts[1].to_string());
        let label = parts[2].to_string();
        assert!(
            ["job", "instance"].contains(&label.as_str())
                || exported.iter().any(|m| m.labels.contains(&label)),
            "variable {} reads label {label}, which no metric has",
            v["name"]
        );
    }
    assert!(queries.len() >= 10, "{queries:?}");

    // Every selector names, through a `__name__` pattern, exactly one series name of the
    // worker under each translation, and only labels that series has.
    let known = ["job", "instance", "le", "__name__"];
    for query in &queries {
        let expr = promql_parser::parser::parse(&substitute(query))
            .unwrap_or_else(|e| panic!("PromQL does not parse: {e}\n{query}"));
        let (mut found, mut grouping) = (Vec::new(), Vec::new());
        selectors(&expr, &mut found, &mut grouping);
        assert!(!found.is_empty(), "no selector in {query}");
        let mut series_labels: HashSet<String> = HashSet::new();
        for vs in &found {
            let name_matcher = vs
                .matchers
                .matchers
                .iter()
                .find(|m| m.name == "__name__")
                .unwrap_or_else(|| panic!("a selector without a __name__ pattern in {query}"));
            let pattern = regex::Regex::new(&format!("^(?:{})$", name_matcher.value)).unwrap();
            for suffixes in [false, true] {
                let matched: Vec<(&Exported, String)> = exported
                    .iter()
                    .flat_map(|m| {
                        prometheus_names(m, suffixes)
                            .into_iter()
                            .map(move |n| (m, n))
                    })
                    .filter(|(_, n)| pattern.is_match(n))
                    .collect();
                assert_eq!(
                    matched.len(),
                    1,
                    "{} matches {:?} with suffixes {}: {query}",
                    name_matcher.value,
                    matched.iter().map(|(_, n)| n).collect::<Vec<_>>(),
                    if suffixes { "on" } else { "off" }
                );
                series_labels.extend(matched[0].0.labels.iter().cloned());
            }
            for m in &vs.matchers.matchers {
                assert!(
                    known.contains(&m.name.as_str()) || series_labels.contains(&m.name),
                    "label {} is not on {}: {query}",
                    m.name,
                    name_matcher.value
                );
            }
        }
        for label in &grouping {
            assert!(
                known.contains(&label.as_str()) || series_labels.contains(label),
                "grouping by {label}, which the selected series do not have: {query}"
            );
        }
    }

    // Tempo: the span names and attributes the TraceQL queries name are the worker's,
    // and the order id an integer, as `span.ordermanagement.order.id = $order_id`
    // compares it without quotes.
    let (resources, spans) = resources_and_spans(&sink);
    let span_name = regex::Regex::new(r#"(?:^|[\s{(&|])name\s*=\s*"([^"]*)""#).unwrap();
    let span_attr = regex::Regex::new(r"\bspan\.([\w.]+)").unwrap();
    let resource_attr = regex::Regex::new(r#"\bresource\.([\w.]+)\s*=\s*"([^"]*)""#).unwrap();
    let by_id = regex::Regex::new(r"\bspan\.([\w.]+)\s*=\s*\$order_id\b").unwrap();
    let mut tempo = 0;
    for target in panels.iter().flat_map(|p| p["targets"].as_array().unwrap()) {
        if target["datasource"]["uid"] != "${traces}" {
            continue;
        }
        tempo += 1;
        let query = target["query"].as_str().expect("a TraceQL query");
        for c in resource_attr.captures_iter(query) {
            assert!(
                resources
                    .iter()
                    .all(|r| r.get(&c[1]) == Some(&c[2].to_string())),
                "resource {} is not {:?} on the exported spans: {query}",
                &c[1],
                &c[2]
            );
        }
        let named: Vec<&Span> = match span_name.captures(query) {
            Some(c) => spans.iter().filter(|s| s.name == c[1]).collect(),
            None => spans.iter().collect(),
        };
        assert!(!named.is_empty(), "no exported span is named as in {query}");
        for c in span_attr.captures_iter(query) {
            assert!(
                named
                    .iter()
                    .any(|s| s.attributes.iter().any(|kv| kv.key == c[1])),
                "no exported span of {query} has {}",
                &c[1]
            );
        }
        for c in by_id.captures_iter(query) {
            for s in &named {
                let value = s.attributes.iter().find(|kv| kv.key == c[1]);
                assert!(
                    matches!(
                        value.and_then(|kv| kv.value.as_ref()?.value.as_ref()),
                        Some(any_value::Value::IntValue(_))
                    ),
                    "{} must be an integer on every span {query} selects: {value:?}",
                    &c[1]
                );
            }
        }
    }
    assert!(tempo >= 4, "{tempo} Tempo queries");
}

#[test]
fn batch_sizes_out_of_bounds_are_clamped_with_one_warning_and_export_goes_on() {
    let stack = stack(3);
    let sink = OtlpSink::start().unwrap();
    // A queue of 10^11 spans would be allocated whole at start; a batch of 0 exports
    // nothing useful.
    let out = run_once(
        worker(&stack)
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", sink.url())
            .env("OTEL_BSP_MAX_QUEUE_SIZE", "100000000000")
            .env("OTEL_BLRP_MAX_QUEUE_SIZE", "100000000000")
            .env("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "0")
            .env("OTEL_BLRP_MAX_EXPORT_BATCH_SIZE", "99999999")
            .arg("once"),
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let warnings: Vec<&str> = stderr.lines().filter(|l| l.contains("taken as")).collect();
    assert_eq!(warnings.len(), 1, "{stderr}");
    for said in [
        "OTEL_BSP_MAX_QUEUE_SIZE=100000000000 taken as 8192",
        "OTEL_BLRP_MAX_QUEUE_SIZE=100000000000 taken as 8192",
        "OTEL_BSP_MAX_EXPORT_BATCH_SIZE=0 taken as 1",
        "OTEL_BLRP_MAX_EXPORT_BATCH_SIZE=99999999 taken as 2048",
    ] {
        assert!(warnings[0].contains(said), "{said}: {}", warnings[0]);
    }
    // The orders were handled, and their spans and log lines exported.
    assert_eq!(stack.ledger().len(), 3);
    let (_, spans) = resources_and_spans(&sink);
    assert_eq!(spans.iter().filter(|s| s.name == "order").count(), 3);
    assert!(!log_records(&sink).is_empty());
}

#[test]
fn an_https_endpoint_on_a_plain_port_is_named_as_such() {
    use std::io::{Read, Write};
    // A plain-HTTP server, as a collector's OTLP/HTTP port is: it answers a TLS hello
    // with an HTTP error.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(16) {
            let Ok(mut stream) = stream else { continue };
            let mut buf = [0u8; 1024];
            let _ = stream.read(&mut buf);
            let _ = stream.write_all(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n");
        }
    });
    let stack = stack(2);
    let out = run_once(
        worker(&stack)
            .env(
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                format!("https://127.0.0.1:{port}"),
            )
            .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
            .arg("once"),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("does not speak TLS (a plain-HTTP port?): use http://"),
        "{stderr}"
    );
    assert!(!stderr.contains("InvalidContentType"), "{stderr}");
}
