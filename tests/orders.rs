//! The registered list from an Order Service that ignores `limit` and `skip`: the real
//! binary keeps at most a page of `--page-size` entries, says once per page how many it
//! dropped, and still handles every order exactly once.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Request, Running, ScriptServer, order_json, reply};
use serde_json::json;

#[test]
fn a_service_that_ignores_limit_gets_pages_of_the_limit_and_every_order_once() {
    // id -> status; every list call answers every registered order.
    let orders: Arc<Mutex<BTreeMap<u64, String>>> = Arc::new(Mutex::new(
        (1..=25).map(|id| (id, "registered".to_string())).collect(),
    ));
    let shop = orders.clone();
    let server = ScriptServer::start(move |r: &Request| {
        let mut orders = shop.lock().unwrap();
        match (r.method.as_str(), r.path()) {
            ("GET", "/orders/status/registered") => {
                let page: Vec<_> = orders
                    .iter()
                    .filter(|(_, s)| *s == "registered")
                    .map(|(id, _)| order_json(*id, "oak", 1))
                    .collect();
                reply(200, json!(page).to_string())
            }
            ("POST", "/stocks/decrease") => reply(200, r#"{"wood_type": "oak", "quantity": 9}"#),
            ("PUT", path) => {
                let id: u64 = path.trim_start_matches("/orders/").parse().unwrap();
                let status = r.json()["order_status"].as_str().unwrap().to_string();
                orders.insert(id, status);
                reply(200, "{}")
            }
            _ => reply(404, "{}"),
        }
    });
    let mut cmd = common::worker_at(&server.url(), &server.url());
    cmd.env("ERROR_RATE", "0")
        .env("HTTP_TIMEOUT_SECONDS", "2")
        .env("PAGE_SIZE", "10")
        .arg("once");
    let out = Running::start(&mut cmd)
        .wait_for(Duration::from_secs(20))
        .expect("once finished");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    // Every order decreased exactly once and set ready.
    let mut keys: Vec<String> = server
        .calls("POST", "/stocks/decrease")
        .iter()
        .map(|r| r.header("idempotency-key").unwrap().to_string())
        .collect();
    keys.sort();
    let mut expected: Vec<String> = (1..=25).map(|id| format!("order-{id}")).collect();
    expected.sort();
    assert_eq!(keys, expected);
    assert!(orders.lock().unwrap().values().all(|s| s == "ready"));
    // Pages of 25 and 15 entries: 15, then 5, dropped, one line each; the last page (5)
    // is within the limit.
    let dropped: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("beyond the 10 asked for"))
        .collect();
    assert_eq!(dropped.len(), 2, "{stderr}");
    assert!(
        dropped[0].contains("answered 15 entries beyond"),
        "{}",
        dropped[0]
    );
    assert!(
        dropped[1].contains("answered 5 entries beyond"),
        "{}",
        dropped[1]
    );
}
