//! A registered list that lies: ids repeated on a page, pages repeated or overlapping,
//! and a status update answered `200` that does not stick. Whatever the list says, no
//! order is decreased twice; the decreases are counted on the server.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use common::{Request, ScriptServer, order_json, reply};
use ordermanagement::{Config, Stop, Worker};
use serde_json::json;

fn config(url: &str) -> Config {
    Config {
        max_retries: 1,
        page_size: 10,
        ..common::quick_config(url, url)
    }
}

/// A server whose list answers `list(skip, call number)`; decreases answer 200, status
/// updates 200 (recorded, and kept only when `sticks`).
struct Liar {
    server: ScriptServer,
    statuses: Arc<Mutex<BTreeMap<u64, String>>>,
}

impl Liar {
    fn start(
        sticks: bool,
        list: impl Fn(u64, usize, &BTreeMap<u64, String>) -> Vec<u64> + Send + Sync + 'static,
    ) -> Liar {
        let statuses: Arc<Mutex<BTreeMap<u64, String>>> = Arc::default();
        let calls = Arc::new(Mutex::new(0usize));
        let s = statuses.clone();
        let server = ScriptServer::start(move |r: &Request| match r.method.as_str() {
            "GET" => {
                let mut n = calls.lock().unwrap();
                *n += 1;
                let ids = list(r.query("skip").unwrap_or(0), *n, &s.lock().unwrap());
                let page: Vec<_> = ids.iter().map(|id| order_json(*id, "oak", 1)).collect();
                reply(200, json!(page).to_string())
            }
            "POST" => reply(200, r#"{"wood_type": "oak", "quantity": 1}"#),
            "PUT" => {
                let id: u64 = r.path()["/orders/".len()..].parse().unwrap();
                if sticks {
                    let status = r.json()["order_status"].as_str().unwrap().to_string();
                    s.lock().unwrap().insert(id, status);
                }
                reply(200, "{}")
            }
            _ => reply(404, "{}"),
        });
        Liar { server, statuses }
    }

    fn decreases(&self) -> BTreeMap<u64, usize> {
        self.server.decreases_per_order()
    }

    fn puts(&self, id: u64) -> usize {
        self.server.calls("PUT", &format!("/orders/{id}")).len()
    }
}

fn registered(statuses: &BTreeMap<u64, String>, ids: impl Iterator<Item = u64>) -> Vec<u64> {
    ids.filter(|id| statuses.get(id).is_none_or(|s| s == "registered"))
        .collect()
}

#[test]
fn the_same_id_four_times_on_a_page_is_decreased_once() {
    let liar = Liar::start(true, |_, _, statuses| {
        let mut page = registered(statuses, [7, 7, 7, 7].into_iter());
        page.extend(registered(statuses, 8..=9));
        page
    });
    Worker::new(&config(&liar.server.url()), Stop::new()).cycle();
    assert_eq!(liar.decreases(), BTreeMap::from([(7, 1), (8, 1), (9, 1)]));
}

#[test]
fn a_page_returned_twice_or_pages_overlapping_take_no_stock_twice() {
    // Whatever `skip` says, a full page of ten: the first call 1..=10, then pages that
    // start five orders back (overlapping by half), until 40; no order ever leaves.
    let start = |n: u64| 1 + 5 * (n - 1).min(7);
    let liar = Liar::start(false, move |_, n, _| {
        let start = start(n as u64);
        (start..start + 10).collect()
    });
    let mut worker = Worker::new(&config(&liar.server.url()), Stop::new());
    for _ in 0..3 {
        worker.cycle();
    }
    // Every order any page listed was decreased, and exactly once.
    let pages = liar.server.calls("GET", "/orders/status/registered").len() as u64;
    let listed: BTreeMap<u64, usize> = (1..=pages)
        .flat_map(|n| start(n)..start(n) + 10)
        .map(|id| (id, 1))
        .collect();
    assert!(listed.len() >= 20, "{pages} pages");
    assert_eq!(liar.decreases(), listed);
}

#[test]
fn an_update_that_does_not_stick_gets_only_its_status_again_each_cycle() {
    // The PUT answers 200 but the order stays registered: listed again every cycle.
    let liar = Liar::start(false, |skip, _, _| (1..=3).skip(skip as usize).collect());
    let mut worker = Worker::new(&config(&liar.server.url()), Stop::new());
    for _ in 0..5 {
        worker.cycle();
    }
    assert_eq!(liar.decreases(), BTreeMap::from([(1, 1), (2, 1), (3, 1)]));
    // Its status went out once per cycle: the first, then again in each later one.
    for id in 1..=3 {
        assert_eq!(liar.puts(id), 5, "order {id}");
    }
    assert!(liar.statuses.lock().unwrap().is_empty());
}

#[test]
fn a_list_that_never_ends_stops_at_the_cycle_bound() {
    // Every page is full of new orders.
    let liar = Liar::start(true, |_, n, _| {
        let start = (n as u64 - 1) * 10 + 1;
        (start..start + 10).collect()
    });
    let mut c = config(&liar.server.url());
    c.max_orders_per_cycle = 55;
    let report = Worker::new(&c, Stop::new()).cycle();
    // Exactly the bound, though every page holds ten (the list ignores `limit`).
    assert_eq!(report.fetched, 55, "{report:?}");
    assert_eq!(liar.decreases().len(), 55);
    assert!(
        report
            .ended_early
            .as_deref()
            .is_some_and(|why| why.contains("max-orders-per-cycle")),
        "{report:?}"
    );
    assert!(liar.decreases().values().all(|n| *n == 1));
}

#[test]
fn max_orders_per_cycle_is_exact_whatever_the_page_size() {
    // 1,000 orders, page size 500: a cycle takes 5, then 600.
    let liar = Liar::start(true, |skip, _, statuses| {
        registered(statuses, 1..=1000)
            .into_iter()
            .skip(skip as usize)
            .take(500)
            .collect()
    });
    for (most, expected) in [(5, 5), (600, 600)] {
        let mut c = config(&liar.server.url());
        c.page_size = 500;
        c.max_orders_per_cycle = most;
        let before = liar.decreases().len();
        let report = Worker::new(&c, Stop::new()).cycle();
        assert_eq!(report.fetched, expected, "{report:?}");
        assert_eq!(liar.decreases().len() - before, expected as usize);
    }
    assert!(liar.decreases().values().all(|n| *n == 1));
}
