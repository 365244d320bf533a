//! One trace per order, through the real binary: what an OTLP/HTTP receiver on
//! loopback gets, decoded with the official protobuf definitions, against what the
//! stand-in services received.

mod common;

use std::collections::{HashMap, HashSet};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::Running;
use common::otlp::{assert_traceparents_name_client_spans, attr, spans};
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use standin::{Knobs, OtlpSink, Stack};

fn worker(stack: &Stack, sink: &OtlpSink) -> Command {
    let mut cmd = common::worker_at(&stack.orders_url(), &stack.stocks_url());
    cmd.env("HTTP_TIMEOUT_SECONDS", "2")
        .env("LOG_LEVEL", "warn")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", sink.url())
        .env("OTEL_BSP_SCHEDULE_DELAY", "50")
        .env("OTEL_METRICS_EXPORTER", "none")
        .env("OTEL_LOGS_EXPORTER", "none")
        .stdin(Stdio::null());
    cmd
}

fn stack(orders: usize, knobs: Knobs) -> Stack {
    Stack::stocked(knobs, 1_000_000, orders, 11)
}

fn by_trace(spans: &[Span]) -> HashMap<Vec<u8>, Vec<&Span>> {
    let mut traces: HashMap<Vec<u8>, Vec<&Span>> = HashMap::new();
    for span in spans {
        traces.entry(span.trace_id.clone()).or_default().push(span);
    }
    traces
}

/// The `order` spans, by order id (an order has several after its update was retried).
fn order_spans(spans: &[Span]) -> HashMap<String, Vec<&Span>> {
    let mut by_order: HashMap<String, Vec<&Span>> = HashMap::new();
    for s in spans.iter().filter(|s| s.name == "order") {
        by_order
            .entry(attr(s, "ordermanagement.order.id").unwrap())
            .or_default()
            .push(s);
    }
    by_order
}

#[test]
fn two_hundred_orders_make_two_hundred_traces_of_one_order_each() {
    // Decreases fail now and then, so that retries are scheduled between other orders;
    // ERROR_RATE adds simulated failures, which are events, not requests.
    let stack = stack(
        200,
        Knobs {
            stock_error_rate: 0.2,
            ..Knobs::default()
        },
    );
    let sink = OtlpSink::start().unwrap();
    let out = Running::start(worker(&stack, &sink).env("ERROR_RATE", "0.1").arg("once"))
        .wait_for(Duration::from_secs(60))
        .expect("once within 60 s");
    assert!(
        matches!(out.status.code(), Some(0 | 1)),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let spans = spans(&sink);
    let cycles: Vec<&Span> = spans.iter().filter(|s| s.name == "cycle").collect();
    assert_eq!(cycles.len(), 1);
    let cycle = cycles[0];
    let traces = by_trace(&spans);

    let mut order_traces = 0;
    let mut order_ids = HashSet::new();
    let mut retried_decreases = 0;
    let mut simulated = 0;
    for (trace_id, members) in &traces {
        if *trace_id == cycle.trace_id {
            // The cycle's own trace: the cycle span and its page fetches, nothing else.
            for s in members {
                assert!(
                    s.name == "cycle" || s.name == "GET /orders/status/{status}",
                    "{} in the cycle's trace",
                    s.name
                );
            }
            continue;
        }
        let orders: Vec<&&Span> = members.iter().filter(|s| s.name == "order").collect();
        assert_eq!(orders.len(), 1, "one order span per trace");
        let order = orders[0];
        order_traces += 1;
        assert!(
            order.parent_span_id.is_empty(),
            "the order span is the root"
        );
        assert!(
            order
                .links
                .iter()
                .any(|l| l.trace_id == cycle.trace_id && l.span_id == cycle.span_id),
            "linked to its cycle"
        );
        order_ids.insert(attr(order, "ordermanagement.order.id").unwrap());
        simulated += order
            .events
            .iter()
            .filter(|e| e.name == "simulated failure")
            .count();
        for s in members.iter().filter(|s| s.name != "order") {
            assert_eq!(s.kind, SpanKind::Client as i32, "{}", s.name);
            assert_eq!(s.parent_span_id, order.span_id, "{}", s.name);
            assert!(
                s.name == "POST /stocks/decrease" || s.name == "PUT /orders/{id}",
                "{} in an order's trace",
                s.name
            );
            if s.name == "POST /stocks/decrease" && attr(s, "http.request.resend_count").is_some() {
                retried_decreases += 1;
            }
        }
    }
    assert!(order_traces >= 200, "{order_traces} order traces");
    assert_eq!(order_ids.len(), 200, "every order has its trace");
    assert!(retried_decreases > 0, "retries stay in their order's trace");
    assert!(
        simulated > 0,
        "simulated failures are events on the order span"
    );

    // Every traceparent the services saw names a client span of the trace it carries.
    assert_traceparents_name_client_spans(&stack.traceparents(), &spans, "request");
}

#[test]
fn a_status_update_retried_in_a_later_cycle_stays_in_its_order_trace() {
    // Every status update fails at first: the orders are decided, their updates
    // pending; then the Order Service takes them, in a later cycle.
    let stack = stack(
        10,
        Knobs {
            status_error_rate: 1.0,
            ..Knobs::default()
        },
    );
    let sink = OtlpSink::start().unwrap();
    let mut child = Running::start(
        worker(&stack, &sink)
            .env("ERROR_RATE", "0")
            .env("MAX_RETRIES", "0")
            .args(["run", "--interval", "0.3"]),
    );
    // Until the Order Service, failing every update, is taken out for the cycle (two
    // failed probes, 2.4 s) and the updates are pending, resumed in later cycles.
    std::thread::sleep(Duration::from_millis(3_500));
    stack.set_knobs(Knobs::default());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while stack.count_by_status().contains_key("registered") {
        assert!(std::time::Instant::now() < deadline, "not set in 20 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    child.signal(libc::SIGTERM);
    child
        .wait_for(Duration::from_secs(5))
        .expect("stops on SIGTERM");

    let spans = spans(&sink);
    let by_order = order_spans(&spans);
    assert_eq!(by_order.len(), 10);
    // The orders decided while every update failed (until the Order Service was taken
    // out for the cycle, and no new order was taken): their first span ends pending.
    let mut decided_then = 0;
    for (id, orders) in &by_order {
        let first = orders
            .iter()
            .find(|s| s.parent_span_id.is_empty())
            .unwrap_or_else(|| panic!("order {id}: no root span"));
        if attr(first, "ordermanagement.order.outcome").as_deref() != Some("pending") {
            assert_eq!(
                attr(first, "ordermanagement.order.outcome").as_deref(),
                Some("ready"),
                "order {id}"
            );
            continue;
        }
        decided_then += 1;
        let resumed: Vec<&&Span> = orders
            .iter()
            .filter(|s| attr(s, "ordermanagement.order.resumed").as_deref() == Some("true"))
            .collect();
        assert!(!resumed.is_empty(), "order {id}: its update was retried");
        // Each retry's span is a child of the order's span before it, in the same trace.
        let ids: HashSet<&[u8]> = orders.iter().map(|s| s.span_id.as_slice()).collect();
        for r in &resumed {
            assert_eq!(r.trace_id, first.trace_id, "order {id}: same trace");
            assert!(ids.contains(r.parent_span_id.as_slice()), "order {id}");
        }
        assert!(
            resumed
                .iter()
                .any(|s| attr(s, "ordermanagement.order.outcome").as_deref() == Some("ready")),
            "order {id}"
        );
        // The successful PUT is in the order's trace, under the resumed span.
        assert!(spans.iter().any(|s| s.name == "PUT /orders/{id}"
            && s.trace_id == first.trace_id
            && attr(s, "http.response.status_code").as_deref() == Some("200")));
    }
    assert!(
        decided_then > 0,
        "no order was decided while updates failed"
    );
}

#[test]
fn a_status_update_retried_after_a_restart_stays_in_its_order_trace() {
    let stack = stack(
        5,
        Knobs {
            status_error_rate: 1.0,
            ..Knobs::default()
        },
    );
    let dir = std::env::temp_dir().join(format!("om-traces-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let state = dir.join("state.jsonl");
    let sink = OtlpSink::start().unwrap();
    let once = |stack: &Stack| {
        let out = Running::start(
            worker(stack, &sink)
                .env("ERROR_RATE", "0")
                .env("MAX_RETRIES", "0")
                .env("PENDING_DEADLINE_SECONDS", "0.5")
                .env("STATE_FILE", &state)
                .arg("once"),
        )
        .wait_for(Duration::from_secs(30))
        .expect("once within 30 s");
        out.status.code()
    };
    // The first run decides every order and cannot set a status: the state file keeps
    // the decisions (with their traces) for the next run.
    assert_eq!(once(&stack), Some(1));
    stack.set_knobs(Knobs::default());
    assert_eq!(once(&stack), Some(0));
    assert_eq!(stack.count_by_status().get("ready"), Some(&5));
    let _ = std::fs::remove_dir_all(&dir);

    let spans = spans(&sink);
    let by_order = order_spans(&spans);
    assert_eq!(by_order.len(), 5);
    let mut decided_then = 0;
    for (id, orders) in &by_order {
        let first = orders
            .iter()
            .find(|s| s.parent_span_id.is_empty())
            .unwrap_or_else(|| panic!("order {id}: no root span"));
        // Taken by the second run only (the first took no new order once the Order
        // Service was out): one trace, ready.
        if attr(first, "ordermanagement.order.outcome").as_deref() == Some("ready") {
            continue;
        }
        decided_then += 1;
        // The first run's wait for its pending updates, then the second run: each
        // resumed span a child of the order's span before it, in the same trace, the
        // last one ready.
        let ids: HashSet<&[u8]> = orders.iter().map(|s| s.span_id.as_slice()).collect();
        let resumed: Vec<&&Span> = orders
            .iter()
            .filter(|s| attr(s, "ordermanagement.order.resumed").as_deref() == Some("true"))
            .collect();
        assert!(!resumed.is_empty(), "order {id}: no span after the restart");
        for r in &resumed {
            assert_eq!(r.trace_id, first.trace_id, "order {id}: same trace");
            assert!(ids.contains(r.parent_span_id.as_slice()), "order {id}");
        }
        let ready: Vec<&&&Span> = resumed
            .iter()
            .filter(|s| attr(s, "ordermanagement.order.outcome").as_deref() == Some("ready"))
            .collect();
        assert_eq!(ready.len(), 1, "order {id}");
    }
    assert!(decided_then > 0, "no order was decided by the first run");
}

#[test]
fn an_order_deferred_and_taken_again_in_a_later_cycle_continues_its_first_trace() {
    // Every decrease of order 1 is answered 503 for its first cycle (the retries are
    // spent: deferred, left registered), then taken in a later cycle of the same run.
    let mut knobs = Knobs::default();
    knobs.decrease_answers.insert(
        1,
        standin::Answer::new(503, r#"{"error": "Service Unavailable"}"#),
    );
    let stack = stack(3, knobs);
    let sink = OtlpSink::start().unwrap();
    let mut running = Running::start(
        worker(&stack, &sink)
            .env("ERROR_RATE", "0")
            .env("MAX_RETRIES", "1")
            .args(["run", "--interval", "0.5"]),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while stack.decrease_calls(1) < 4 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(stack.decrease_calls(1) >= 4, "two cycles tried order 1");
    stack.set_knobs(Knobs::default());
    while stack.status(1).as_deref() != Some("ready") && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(stack.status(1).as_deref(), Some("ready"));
    std::thread::sleep(Duration::from_millis(300));
    running.signal(libc::SIGTERM);
    running.wait_for(Duration::from_secs(10)).expect("stops");
    let spans = spans(&sink);
    let ones = &order_spans(&spans)["1"];
    assert!(ones.len() >= 3, "an order span per cycle: {}", ones.len());
    let traces: HashSet<&Vec<u8>> = ones.iter().map(|s| &s.trace_id).collect();
    assert_eq!(traces.len(), 1, "one trace for order 1 across its cycles");
}
