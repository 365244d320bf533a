//! The cycle as a scheduler, against services on loopback: a drain under heavy faults
//! that ends with every order in a correct state, a stalling Stock Service that ends
//! the cycle in bounded time while status updates still go through (and in `run` is
//! called again at once, not after the interval), and a stop request during a wait.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Action, Request, ScriptServer, late, registered_page, reply};
use ordermanagement::{Config, Stop, Worker};
use standin::{Knobs, Stack, WOODS};

fn config(orders: &str, stocks: &str) -> Config {
    Config {
        max_retries: 3,
        retry_cap: Duration::from_millis(20),
        ..common::quick_config(orders, stocks)
    }
}

#[test]
fn a_drain_under_30_percent_faults_ends_with_every_order_in_a_correct_state() {
    let knobs = Knobs::failing(0.3);
    let stack = Stack::start(0, 0, knobs).unwrap();
    for wood in WOODS {
        stack.add_stock(wood, 1_000_000);
    }
    let ids = stack.seed_orders(400, &mut fastrand::Rng::with_seed(7));
    let mut c = config(&stack.orders_url(), &stack.stocks_url());
    c.error_rate = 0.3;
    c.page_size = 50;
    let mut worker = Worker::new(&c, Stop::new());
    let mut cycles = 0;
    while stack.count_by_status().contains_key("registered") || worker.pending() > 0 {
        cycles += 1;
        assert!(
            cycles <= 30,
            "not drained in 30 cycles: {:?}",
            stack.count_by_status()
        );
        worker.cycle();
    }
    assert_eq!(stack.violations(), Vec::<String>::new());
    let by_status = stack.count_by_status();
    let ready = by_status.get("ready").copied().unwrap_or(0);
    let blocked = by_status.get("blocked").copied().unwrap_or(0);
    assert_eq!(ready + blocked, ids.len(), "{by_status:?}");
    // ERROR_RATE 0.3 blocks about 30% at the stock step; the rest are taken once each.
    assert!((60..=180).contains(&blocked), "{by_status:?}");
    assert_eq!(stack.ledger().len(), ready);
}

/// An Order Service that keeps statuses and pages like the real one, and a Stock
/// Service; both replies decided by the test through `phase`.
struct Shop {
    server: ScriptServer,
    statuses: Arc<Mutex<BTreeMap<u64, String>>>,
}

impl Shop {
    fn start(
        handler: impl Fn(&Request, &Mutex<BTreeMap<u64, String>>) -> Action + Send + Sync + 'static,
    ) -> Shop {
        let statuses: Arc<Mutex<BTreeMap<u64, String>>> = Arc::default();
        let s = statuses.clone();
        let server = ScriptServer::start(move |r: &Request| {
            if r.method == "GET" {
                return registered_page(r, &s.lock().unwrap(), |_| "oak");
            }
            handler(r, &s)
        });
        Shop { server, statuses }
    }

    fn register(&self, ids: impl IntoIterator<Item = u64>) {
        let mut statuses = self.statuses.lock().unwrap();
        for id in ids {
            statuses.insert(id, "registered".into());
        }
    }

    fn status(&self, id: u64) -> String {
        self.statuses.lock().unwrap()[&id].clone()
    }
}

fn set_status(r: &Request, statuses: &Mutex<BTreeMap<u64, String>>) -> Action {
    let id: u64 = r.path()["/orders/".len()..].parse().unwrap();
    let status = r.json()["order_status"].as_str().unwrap().to_string();
    statuses.lock().unwrap().insert(id, status);
    reply(200, "{}")
}

#[test]
fn a_stalling_stock_service_ends_the_cycle_in_bounded_time_while_status_updates_go_through() {
    // First cycle: decreases work, status updates fail until the Order Service is taken
    // out for the cycle, and `once`'s wait for them ends at a short deadline: the
    // orders taken are pending. Second cycle: every decrease stalls 700 ms (more than
    // the HTTP timeout) and ends in 500; each status update fails once, then goes
    // through, its retry due while the first decrease stalls.
    let stalling = Arc::new(AtomicBool::new(false));
    let failed_once: Arc<Mutex<Vec<String>>> = Arc::default();
    let (st, failed) = (stalling.clone(), failed_once.clone());
    let shop = Shop::start(move |r, statuses| match r.method.as_str() {
        "POST" if st.load(Ordering::SeqCst) => late(
            500,
            r#"{"error": "Unexpected error during stock decrease (read)"}"#,
            Duration::from_millis(700),
        ),
        "POST" => reply(200, r#"{"wood_type": "oak", "quantity": 1}"#),
        "PUT" if !st.load(Ordering::SeqCst) => reply(502, r#"{"error": "Simulated API error"}"#),
        "PUT" => {
            let mut failed = failed.lock().unwrap();
            if failed.contains(&r.path().to_string()) {
                drop(failed);
                set_status(r, statuses)
            } else {
                // A 503 asks for the backoff: the retry is due while a decrease stalls.
                failed.push(r.path().to_string());
                reply(503, r#"{"error": "busy"}"#)
            }
        }
        _ => reply(404, "<html>not found</html>"),
    });
    shop.register(1..=3);
    let mut c = config(&shop.server.url(), &shop.server.url());
    c.max_retries = 1;
    c.pending_deadline = Duration::from_millis(100);
    // A status update's retry after a 503 is due 150-300 ms later: while the first
    // decrease stalls, whatever the machine's load.
    c.retry_base = Duration::from_millis(300);
    c.retry_cap = Duration::from_secs(2);
    let mut worker = Worker::new(&c, Stop::new());
    let first = worker.cycle();
    let taken: Vec<u64> = shop
        .server
        .calls("POST", "/stocks/decrease")
        .iter()
        .map(Request::decrease_order_id)
        .collect();
    assert!(!taken.is_empty(), "{first:?}");
    assert_eq!(first.pending, taken.len() as u64, "{first:?}");

    stalling.store(true, Ordering::SeqCst);
    shop.register(4..=10);
    // The deadline counts from each decision and includes the cycle's own retries:
    // long enough now for a retry after a 503.
    worker.set_pending_deadline(Duration::from_secs(5));
    let before = shop.server.requests().len();
    let started = Instant::now();
    let second = worker.cycle();
    let elapsed = started.elapsed();

    // The pending updates went through; no new order was decided.
    for id in 1..=10 {
        let expected = if taken.contains(&id) {
            "ready"
        } else {
            "registered"
        };
        assert_eq!(shop.status(id), expected, "order {id}");
    }
    assert_eq!(
        (second.ready, second.pending),
        (taken.len() as u64, 0),
        "{second:?}"
    );
    assert!(
        second
            .ended_early
            .as_deref()
            .is_some_and(|why| why.contains("Stock Service")),
        "{second:?}"
    );
    // Bounded: the decrease after a stall goes after a 150 ms settle, not a backoff
    // (the real service recovers only at the end of a stall, never while idle), and a
    // second stall in a row takes the Stock Service out of the cycle.
    let requests: Vec<Request> = shop.server.requests().split_off(before);
    let posts: Vec<usize> = (0..requests.len())
        .filter(|&i| requests[i].method == "POST")
        .collect();
    assert_eq!(posts.len(), 2, "{requests:?}");
    assert!(elapsed < Duration::from_secs(4), "{elapsed:?}");
    // Status updates went on after the Stock Service stalled, not only before.
    let puts_after = requests[posts[0]..]
        .iter()
        .filter(|r| r.method == "PUT")
        .count();
    assert!(puts_after > 0, "{requests:?}");
}

#[test]
fn a_stop_request_while_orders_wait_for_their_retry_ends_the_cycle_at_once() {
    let shop = Shop::start(|r, _| match r.method.as_str() {
        "POST" => reply(503, r#"{"error": "busy"}"#),
        _ => reply(404, "<html>not found</html>"),
    });
    shop.register(1..=2);
    let mut c = config(&shop.server.url(), &shop.server.url());
    // The first retry waits 5 to 10 s.
    c.retry_base = Duration::from_secs(10);
    c.retry_cap = Duration::from_secs(30);
    let stop = Stop::new();
    let mut worker = Worker::new(&c, stop.clone());
    let stopper = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        stop.request();
    });
    let started = Instant::now();
    let report = worker.cycle();
    let elapsed = started.elapsed();
    stopper.join().unwrap();
    // Both orders failed once and waited for their retry: the stop request cut the
    // wait, and they stay registered with nothing taken.
    assert_eq!(shop.server.calls("POST", "/stocks/decrease").len(), 2);
    assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");
    assert_eq!(report.deferred, 2, "{report:?}");
    // The list was done: nothing of it was left for the stop to end.
    assert_eq!(report.ended_early, None, "{report:?}");
    assert!(!report.complete());
    assert_eq!(shop.status(1), "registered");
}

#[test]
fn in_run_a_cycle_ended_by_two_stalls_is_followed_at_once_not_after_the_interval() {
    // One order. Its first two decreases stall (answered 500 only after the HTTP
    // timeout, as the real Stock Service's exhausted pool does): the Stock Service is
    // down for the cycle. The stalls were the pause: the next cycle starts at once,
    // not after the 3 s interval, and its decrease goes through.
    let decreases = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let decided = Arc::new(AtomicBool::new(false));
    let server = ScriptServer::start({
        let (decreases, decided) = (decreases.clone(), decided.clone());
        move |r: &Request| match (r.method.as_str(), r.path()) {
            ("GET", "/orders/status/registered") => {
                if decided.load(Ordering::SeqCst) || r.query("skip") != Some(0) {
                    reply(200, "[]")
                } else {
                    reply(
                        200,
                        serde_json::json!([common::order_json(1, "oak", 2)]).to_string(),
                    )
                }
            }
            ("POST", "/stocks/decrease") if decreases.fetch_add(1, Ordering::SeqCst) < 2 => late(
                500,
                r#"{"error": "Unexpected error during stock decrease (read)"}"#,
                Duration::from_millis(400),
            ),
            ("POST", "/stocks/decrease") => reply(200, r#"{"wood_type": "oak", "quantity": 5}"#),
            ("PUT", _) => {
                decided.store(true, Ordering::SeqCst);
                reply(200, r#"{"id": 1, "order_status": "ready"}"#)
            }
            _ => reply(404, "{}"),
        }
    });
    let mut c = config(&server.url(), &server.url());
    c.http_timeout = Duration::from_millis(300);
    let stop = Stop::new();
    let worker_stop = stop.clone();
    let worker =
        std::thread::spawn(move || Worker::new(&c, worker_stop).run_loop(Duration::from_secs(3)));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !decided.load(Ordering::SeqCst) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.request();
    worker.join().expect("the worker thread");
    let posts = server.calls("POST", "/stocks/decrease");
    let t0 = server.requests()[0].at;
    let timeline: Vec<(String, String, Duration)> = server
        .requests()
        .iter()
        .map(|r| (r.method.clone(), r.path().to_string(), r.at - t0))
        .collect();
    assert_eq!(posts.len(), 3, "{timeline:?}");
    assert!(decided.load(Ordering::SeqCst));
    // The second stall's answer came 400 ms after it arrived; the next cycle's list
    // and decrease followed within a second, not the 3 s interval.
    let gap = posts[2].at - posts[1].at;
    assert!(gap < Duration::from_millis(1400), "{gap:?} {timeline:?}");
    let lists_between = server
        .requests()
        .iter()
        .filter(|r| r.method == "GET" && r.at > posts[1].at && r.at < posts[2].at)
        .count();
    assert_eq!(lists_between, 1, "a new cycle's list: {timeline:?}");
}
