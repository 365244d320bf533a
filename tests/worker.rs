//! The worker's cycle against services on loopback: httpmock for fixed replies, the
//! scripted server for replies that change, come late, never come, or drop the connection.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Action, Request, ScriptServer, late, order_json, registered_page, reply};
use httpmock::{Method, MockServer};
use ordermanagement::{Config, CycleReport, Stop, Worker};
use serde_json::json;

fn config(orders: &str, stocks: &str) -> Config {
    Config {
        max_retries: 2,
        ..common::quick_config(orders, stocks)
    }
}

fn cycle(config: &Config) -> CycleReport {
    Worker::new(config, Stop::new()).cycle()
}

fn list_once(server: &MockServer, orders: serde_json::Value) -> httpmock::Mock<'_> {
    common::first_page_mock(server, &orders)
}

fn put_status<'a>(server: &'a MockServer, id: u64, status: &str) -> httpmock::Mock<'a> {
    server.mock(|when, then| {
        when.method(Method::PUT)
            .path(format!("/orders/{id}"))
            .header("content-type", "application/json")
            .json_body(json!({"order_status": status}));
        then.status(200)
            .json_body(json!({"id": id, "order_status": status}));
    })
}

#[test]
fn a_taken_order_is_set_ready_with_well_formed_requests() {
    let server = MockServer::start();
    let list = list_once(
        &server,
        json!([order_json(1, "oak", 3), order_json(2, "pine", 100)]),
    );
    let decrease1 = server.mock(|when, then| {
        when.method(Method::POST)
            .path("/stocks/decrease")
            .header("content-type", "application/json")
            .header("idempotency-key", "order-1")
            .json_body(json!({"wood_type": "oak", "quantity": 3}));
        then.status(200)
            .json_body(json!({"wood_type": "oak", "quantity": 97}));
    });
    let decrease2 = server.mock(|when, then| {
        when.method(Method::POST)
            .path("/stocks/decrease")
            .header("idempotency-key", "order-2")
            .json_body(json!({"wood_type": "pine", "quantity": 100}));
        then.status(200)
            .json_body(json!({"wood_type": "pine", "quantity": 0}));
    });
    let ready1 = put_status(&server, 1, "ready");
    let ready2 = put_status(&server, 2, "ready");

    let report = cycle(&config(&server.base_url(), &(server.base_url() + "/")));

    list.assert_calls(1);
    decrease1.assert_calls(1);
    decrease2.assert_calls(1);
    ready1.assert_calls(1);
    ready2.assert_calls(1);
    assert_eq!((report.fetched, report.ready), (2, 2));
    assert!(report.complete(), "{report:?}");
}

#[test]
fn business_refusals_block_the_order() {
    for (status, reason) in [
        (400, "Insufficient stock"),
        (404, "Stock not found"),
        (400, "Invalid input"),
    ] {
        let server = MockServer::start();
        list_once(&server, json!([order_json(5, "elm", 40)]));
        let decrease = server.mock(|when, then| {
            when.method(Method::POST).path("/stocks/decrease");
            then.status(status).json_body(json!({"error": reason}));
        });
        let blocked = put_status(&server, 5, "blocked");
        let report = cycle(&config(&server.base_url(), &server.base_url()));
        decrease.assert_calls(1);
        blocked.assert_calls(1);
        assert_eq!(report.blocked, 1, "{status} {reason}");
        assert!(report.complete());
    }
}

#[test]
fn an_html_415_to_every_decrease_stops_the_cycle_and_leaves_the_orders_registered() {
    let server = MockServer::start();
    list_once(
        &server,
        json!([order_json(1, "oak", 3), order_json(2, "oak", 3)]),
    );
    let decrease = server.mock(|when, then| {
        when.method(Method::POST).path("/stocks/decrease");
        then.status(415)
            .header("content-type", "text/html")
            .body("<!doctype html><title>415 Unsupported Media Type</title>");
    });
    let any_put = server.mock(|when, then| {
        when.method(Method::PUT);
        then.status(200);
    });
    let report = cycle(&config(&server.base_url(), &server.base_url()));
    // One order's odd answer is not the service's: the other order probes it, and
    // the answer to both (and to the first one's second try) takes it down.
    assert!((2..=3).contains(&decrease.calls()), "{}", decrease.calls());
    any_put.assert_calls(0);
    assert_eq!(report.deferred, 2, "{report:?}");
    assert!(!report.complete());
}

#[test]
fn a_decrease_failing_until_retries_are_spent_leaves_the_order_registered() {
    let server = MockServer::start();
    list_once(&server, json!([order_json(1, "oak", 3)]));
    let decrease = server.mock(|when, then| {
        when.method(Method::POST).path("/stocks/decrease");
        then.status(500)
            .json_body(json!({"error": "Simulated DB error during stock decrease"}));
    });
    let any_put = server.mock(|when, then| {
        when.method(Method::PUT);
        then.status(200);
    });
    let report = cycle(&config(&server.base_url(), &server.base_url()));
    decrease.assert_calls(3); // first attempt + MAX_RETRIES 2
    any_put.assert_calls(0);
    assert_eq!((report.deferred, report.ready, report.blocked), (1, 0, 0));
    assert!(!report.complete());
}

#[test]
fn a_5xx_then_success_ends_ready_with_one_idempotency_key() {
    let n = Arc::new(AtomicUsize::new(0));
    let server = ScriptServer::start({
        let n = n.clone();
        move |r: &Request| match (r.method.as_str(), r.path()) {
            ("GET", _) => reply(200, json!([order_json(9, "birch", 2)]).to_string()),
            ("POST", _) if n.fetch_add(1, Ordering::SeqCst) < 2 => {
                reply(502, r#"{"error": "Simulated API error"}"#)
            }
            ("POST", _) => reply(200, r#"{"wood_type": "birch", "quantity": 8}"#),
            _ => reply(200, "{}"),
        }
    });
    let report = cycle(&config(&server.url(), &server.url()));
    let decreases = server.calls("POST", "/stocks/decrease");
    assert_eq!(decreases.len(), 3);
    assert!(
        decreases
            .iter()
            .all(|r| r.header("idempotency-key") == Some("order-9"))
    );
    let puts = server.calls("PUT", "/orders/9");
    assert_eq!(puts.len(), 1);
    assert_eq!(puts[0].json(), json!({"order_status": "ready"}));
    assert_eq!(report.ready, 1);
}

#[test]
fn list_replies_that_are_not_an_array_of_objects_are_a_failed_fetch() {
    for body in [
        r#"{"orders": []}"#,
        "[1, 2]",
        "<html>oops</html>",
        "[{\"id\": 1,",
    ] {
        let server = MockServer::start();
        let list = server.mock(|when, then| {
            when.method(Method::GET).path("/orders/status/registered");
            then.status(200).body(body);
        });
        let report = cycle(&config(&server.base_url(), &server.base_url()));
        list.assert_calls(3); // retried as transient, then given up
        assert!(report.list_failed, "{body}");
        assert!(!report.complete());
    }
}

#[test]
fn an_oversized_list_reply_is_refused() {
    let server = MockServer::start();
    let huge = format!(
        "[{}]",
        vec![order_json(1, "oak", 1).to_string(); 20_000].join(",")
    );
    server.mock(|when, then| {
        when.method(Method::GET).path("/orders/status/registered");
        then.status(200).body(huge);
    });
    let mut c = config(&server.base_url(), &server.base_url());
    c.page_size = 10;
    c.max_retries = 0;
    let report = cycle(&c);
    assert!(report.list_failed);
    // Refused for its size, not for anything else.
    let client = ordermanagement::services::orders::OrdersClient::new(
        ordermanagement::services::http::Http::new(Duration::from_secs(2)),
        &server.base_url(),
    );
    let error = client.list_registered(0, 10, 0).expect_err("refused");
    assert!(error.to_string().contains("larger than"), "{error}");
}

#[test]
fn orders_with_bad_fields_are_skipped_and_the_rest_handled() {
    let server = MockServer::start();
    list_once(
        &server,
        json!([
            {"id": "1", "wood_type": "oak", "quantity": 3, "order_status": "registered"},
            {"id": 2, "wood_type": "teak", "quantity": 3, "order_status": "registered"},
            {"id": 3, "wood_type": "oak", "quantity": -3, "order_status": "registered"},
            {"id": 4, "wood_type": "oak", "order_status": "registered"},
            order_json(5, "maple", 4),
        ]),
    );
    let decrease = server.mock(|when, then| {
        when.method(Method::POST).path("/stocks/decrease");
        then.status(200)
            .json_body(json!({"wood_type": "maple", "quantity": 1}));
    });
    let ready = put_status(&server, 5, "ready");
    let report = cycle(&config(&server.base_url(), &server.base_url()));
    decrease.assert_calls(1);
    ready.assert_calls(1);
    assert_eq!((report.fetched, report.skipped, report.ready), (5, 4, 1));
    assert!(
        !report.complete(),
        "bad orders stay registered: once must not say all is done"
    );
}

#[test]
fn a_garbled_200_to_a_decrease_still_counts_as_taken() {
    let server = MockServer::start();
    list_once(&server, json!([order_json(1, "oak", 3)]));
    server.mock(|when, then| {
        when.method(Method::POST).path("/stocks/decrease");
        then.status(200).body("<<not json>>");
    });
    let ready = put_status(&server, 1, "ready");
    let report = cycle(&config(&server.base_url(), &server.base_url()));
    ready.assert_calls(1);
    assert_eq!(report.ready, 1);
}

#[test]
fn a_stall_that_ends_in_500_within_the_decrease_timeout_is_never_unknown() {
    // Longer than --timeout (0.5 s), shorter than --decrease-timeout (2 s): the
    // service's own answer arrives and says nothing was changed.
    let n = Arc::new(AtomicUsize::new(0));
    let server = ScriptServer::start({
        let n = n.clone();
        move |r: &Request| match r.method.as_str() {
            "GET" => reply(200, json!([order_json(1, "oak", 3)]).to_string()),
            "POST" if n.fetch_add(1, Ordering::SeqCst) == 0 => late(
                500,
                r#"{"error": "Unexpected error during stock decrease (read)"}"#,
                Duration::from_millis(800),
            ),
            "POST" => reply(200, r#"{"wood_type": "oak", "quantity": 1}"#),
            _ => reply(200, "{}"),
        }
    });
    // The stall's 500 says nothing was taken: the decrease goes again after the 150 ms
    // settle, not the backoff (1-2 s here: the real service recovers only at the end
    // of a stall, never while idle), and it is ready.
    let mut c = config(&server.url(), &server.url());
    c.retry_base = Duration::from_secs(2);
    c.retry_cap = Duration::from_secs(4);
    let mut worker = Worker::new(&c, Stop::new());
    let first = worker.cycle();
    assert_eq!((first.ready, first.unknown), (1, 0), "{first:?}");
    let decreases = server.calls("POST", "/stocks/decrease");
    assert_eq!(decreases.len(), 2);
    // 800 ms of stall, then 150 ms: the backoff would put it 1.8 s or more after.
    let gap = decreases[1].at - decreases[0].at;
    assert!(
        gap >= Duration::from_millis(950) && gap < Duration::from_millis(1500),
        "{gap:?}"
    );
}

#[test]
fn a_decrease_with_no_reply_within_the_decrease_timeout_is_unknown_and_not_repeated() {
    let server = ScriptServer::start(|r: &Request| match r.method.as_str() {
        "GET" => reply(200, json!([order_json(1, "oak", 3)]).to_string()),
        "POST" => late(200, "{}", Duration::from_secs(60)),
        _ => reply(200, "{}"),
    });
    let started = Instant::now();
    let report = cycle(&config(&server.url(), &server.url()));
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(server.calls("POST", "/stocks/decrease").len(), 1);
    let puts = server.calls("PUT", "/orders/1");
    assert_eq!(puts.len(), 1);
    assert_eq!(puts[0].json(), json!({"order_status": "unknown"}));
    assert_eq!(report.unknown, 1);
    assert!(report.complete(), "unknown is a final state: {report:?}");
}

#[test]
fn a_connection_dropped_after_the_decrease_was_sent_is_unknown() {
    let server = ScriptServer::start(|r: &Request| match r.method.as_str() {
        "GET" => reply(200, json!([order_json(1, "oak", 3)]).to_string()),
        "POST" => Action::Drop {
            after: Duration::from_millis(50),
        },
        _ => reply(200, "{}"),
    });
    let report = cycle(&config(&server.url(), &server.url()));
    assert_eq!(server.calls("POST", "/stocks/decrease").len(), 1);
    assert_eq!(
        server.calls("PUT", "/orders/1")[0].json(),
        json!({"order_status": "unknown"})
    );
    assert_eq!(report.unknown, 1);
}

#[test]
fn a_keep_alive_connection_closed_by_the_server_does_not_make_an_order_unknown() {
    // Every reply closes its connection without saying so: the next request must go
    // on a new connection, not into the dead one.
    let server = ScriptServer::start(|r: &Request| {
        let body = match r.method.as_str() {
            "GET" => json!([
                order_json(1, "oak", 1),
                order_json(2, "oak", 1),
                order_json(3, "oak", 1)
            ])
            .to_string(),
            _ => r#"{"wood_type": "oak", "quantity": 5}"#.to_string(),
        };
        Action::Reply {
            status: 200,
            body: body.into_bytes(),
            delay: Duration::ZERO,
            close: true,
        }
    });
    let report = cycle(&config(&server.url(), &server.url()));
    assert_eq!((report.ready, report.unknown), (3, 0), "{report:?}");
    assert_eq!(server.calls("POST", "/stocks/decrease").len(), 3);
}

#[test]
fn a_stock_service_that_stalls_every_decrease_ends_the_cycle_early_in_bounded_time() {
    let orders: Vec<_> = (1..=10).map(|id| order_json(id, "oak", 1)).collect();
    let server = ScriptServer::start(move |r: &Request| match r.method.as_str() {
        "GET" => reply(200, serde_json::Value::Array(orders.clone()).to_string()),
        "POST" => late(
            500,
            r#"{"error": "Unexpected error during stock decrease (read)"}"#,
            Duration::from_millis(700),
        ),
        _ => reply(200, "{}"),
    });
    let mut c = config(&server.url(), &server.url());
    c.max_retries = 5;
    let started = Instant::now();
    let report = cycle(&c);
    let elapsed = started.elapsed();
    // A second stall in a row takes the Stock Service out of the cycle (the first is
    // followed, after the settle, by the stalled order's retry): order 1 stays
    // registered, and so does every order after it.
    assert_eq!(server.calls("POST", "/stocks/decrease").len(), 2);
    assert!(server.calls("PUT", "/orders/1").is_empty());
    assert_eq!(report.deferred, 1);
    assert!(
        report
            .ended_early
            .as_deref()
            .unwrap()
            .contains("Stock Service"),
        "{report:?}"
    );
    assert!(elapsed < Duration::from_secs(8), "{elapsed:?}");
}

/// An Order Service that keeps its orders in memory and pages like the real one,
/// with a Stock Service whose decrease is decided by `decide`.
struct Shop {
    server: ScriptServer,
    statuses: Arc<Mutex<BTreeMap<u64, String>>>,
}

impl Shop {
    fn start(
        n: u64,
        put_fails: bool,
        decide: impl Fn(&Request, u64) -> Action + Send + Sync + 'static,
    ) -> Shop {
        let statuses: Arc<Mutex<BTreeMap<u64, String>>> = Arc::new(Mutex::new(
            (1..=n).map(|id| (id, "registered".to_string())).collect(),
        ));
        let s = statuses.clone();
        let server = ScriptServer::start(move |r: &Request| match (r.method.as_str(), r.path()) {
            ("GET", "/orders/status/registered") => registered_page(r, &s.lock().unwrap(), |id| {
                ["oak", "elm"][(id % 2) as usize]
            }),
            ("POST", "/stocks/decrease") => decide(r, r.decrease_order_id()),
            ("PUT", path) if !put_fails => {
                let id: u64 = path["/orders/".len()..].parse().unwrap();
                let status = r.json()["order_status"].as_str().unwrap().to_string();
                s.lock().unwrap().insert(id, status);
                reply(200, "{}")
            }
            ("PUT", _) => reply(502, r#"{"error": "Simulated API error"}"#),
            _ => reply(404, "<html>not found</html>"),
        });
        Shop { server, statuses }
    }

    fn decreases_per_order(&self) -> BTreeMap<u64, usize> {
        self.server.decreases_per_order()
    }

    fn count(&self, status: &str) -> usize {
        self.statuses
            .lock()
            .unwrap()
            .values()
            .filter(|s| *s == status)
            .count()
    }
}

#[test]
fn a_backlog_larger_than_a_page_is_drained_in_one_cycle() {
    let shop = Shop::start(1050, false, |_, _| {
        reply(200, r#"{"wood_type": "oak", "quantity": 1}"#)
    });
    let mut c = config(&shop.server.url(), &shop.server.url());
    c.page_size = 100;
    let report = cycle(&c);
    assert_eq!((report.fetched, report.ready), (1050, 1050), "{report:?}");
    assert_eq!(shop.count("ready"), 1050);
    assert!(shop.decreases_per_order().values().all(|n| *n == 1));
    // The page is refilled when half of it is left: about 21 list calls of 50 orders
    // after the first of 100, and the shrunken list answers empty once.
    assert!(shop.server.calls("GET", "/orders/status/registered").len() <= 23);
}

#[test]
fn orders_left_registered_do_not_make_paging_skip_or_repeat_orders() {
    // Every 7th order's decrease fails transiently (never three in a row): those stay
    // registered, and the pages behind them must still be found.
    let shop = Shop::start(500, false, |_, id| {
        if id % 7 == 0 {
            reply(503, r#"{"error": "busy"}"#)
        } else {
            reply(200, r#"{"quantity": 1}"#)
        }
    });
    let mut c = config(&shop.server.url(), &shop.server.url());
    c.page_size = 25;
    c.max_retries = 0;
    let report = cycle(&c);
    let left = (1..=500).filter(|id| id % 7 == 0).count();
    assert_eq!(report.deferred as usize, left);
    assert_eq!(report.ready as usize, 500 - left);
    assert_eq!(shop.count("registered"), left);
    assert!(
        shop.decreases_per_order().values().all(|n| *n == 1),
        "no order decreased twice in a cycle"
    );
    assert_eq!(shop.decreases_per_order().len(), 500, "every order tried");
}

#[test]
fn a_pending_status_update_never_takes_stock_again() {
    // Every status update fails: the Order Service is taken out for the cycle by its
    // health, the decided orders stay pending, and `once`'s wait for them ends at a
    // short deadline.
    let shop = Shop::start(2, true, |_, _| reply(200, r#"{"quantity": 1}"#));
    let mut c = config(&shop.server.url(), &shop.server.url());
    c.pending_deadline = Duration::from_millis(200);
    let mut worker = Worker::new(&c, Stop::new());
    let first = worker.cycle();
    let decided = shop.decreases_per_order();
    assert!(!decided.is_empty());
    assert_eq!(first.pending, decided.len() as u64, "{first:?}");
    assert!(!first.complete());
    let puts = |shop: &Shop| {
        shop.server
            .requests()
            .into_iter()
            .filter(|r| r.method == "PUT")
            .count()
    };
    let after_first = puts(&shop);
    let second = worker.cycle();
    // The orders decided in the first cycle were decreased then, once; the second
    // cycle only retried their status (and may have taken the other order).
    let after = shop.decreases_per_order();
    assert!(after.values().all(|n| *n == 1), "{after:?}");
    assert!(decided.keys().all(|id| after.contains_key(id)));
    assert!(
        puts(&shop) > after_first,
        "status retried in the second cycle"
    );
    assert_eq!(second.pending, after.len() as u64, "{second:?}");
    assert_eq!(worker.pending(), after.len());
}

#[test]
fn a_dry_run_changes_nothing_and_pages_through_everything() {
    let shop = Shop::start(230, false, |_, _| reply(200, "{}"));
    let mut c = config(&shop.server.url(), &shop.server.url());
    c.dry_run = true;
    c.page_size = 100;
    let report = cycle(&c);
    assert_eq!((report.fetched, report.dry_run), (230, 230));
    assert!(shop.server.requests().iter().all(|r| r.method == "GET"));
    assert_eq!(shop.count("registered"), 230);
}

#[test]
fn simulated_failures_block_orders_without_calling_the_stock_service() {
    let shop = Shop::start(20, false, |_, _| reply(200, "{}"));
    let mut c = config(&shop.server.url(), &shop.server.url());
    c.error_rate = 1.0;
    c.max_retries = 0;
    let report = Worker::new(&c, Stop::new()).cycle();
    assert!(shop.server.calls("POST", "/stocks/decrease").is_empty());
    // The status step's simulated failure costs one attempt, whatever the rate and
    // --max-retries: then `blocked` is set, with one request each.
    assert_eq!((report.blocked, report.pending), (20, 0), "{report:?}");
    assert_eq!(shop.count("blocked"), 20);
    assert_eq!(
        shop.server
            .requests()
            .iter()
            .filter(|r| r.method == "PUT")
            .count(),
        20
    );
}

#[test]
fn a_refused_status_update_after_the_stock_was_taken_is_never_decreased_again() {
    for status in [400, 404] {
        let shop = ScriptServer::start(move |r: &Request| match r.method.as_str() {
            "GET" => reply(200, json!([order_json(1, "oak", 3)]).to_string()),
            "POST" => reply(200, r#"{"wood_type": "oak", "quantity": 1}"#),
            _ => reply(status, r#"{"error": "Invalid order status"}"#),
        });
        let mut worker = Worker::new(&config(&shop.url(), &shop.url()), Stop::new());
        let first = worker.cycle();
        let second = worker.cycle();
        assert_eq!(shop.calls("POST", "/stocks/decrease").len(), 1, "{status}");
        assert_eq!((first.skipped, second.skipped), (1, 0), "{status}");
        assert!(!first.complete());
    }
}

#[test]
fn a_stock_service_that_refuses_connections_leaves_orders_registered_not_unknown() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let stocks = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let server = MockServer::start();
    list_once(
        &server,
        json!(
            (1..=10)
                .map(|id| order_json(id, "oak", 1))
                .collect::<Vec<_>>()
        ),
    );
    let any_put = server.mock(|when, then| {
        when.method(Method::PUT);
        then.status(200);
    });
    let report = cycle(&config(&server.base_url(), &stocks));
    any_put.assert_calls(0);
    // Sixteen refused connections put the service out; two failed probes take it out
    // of the cycle, and the orders still waiting stay registered (the list was done:
    // the cycle did not end early, but it is not complete).
    assert_eq!((report.deferred, report.unknown), (10, 0), "{report:?}");
    assert!(!report.complete(), "{report:?}");
}
