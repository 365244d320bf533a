//! Hostile input, end to end: the real binary against a scripted or stand-in service
//! that answers what no well-behaved service would, checked on the service's side (its
//! ledger, the requests it received, the statuses it holds), not only by exit codes.

mod common;

use std::collections::BTreeMap;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Request, Running, ScriptServer, order_json, reply};

/// Longest one run may take before the test gives up on it (it is then killed).
const RUN_LIMIT: Duration = Duration::from_secs(20);

fn run(cmd: &mut Command) -> Output {
    Running::start(cmd)
        .wait_for(RUN_LIMIT)
        .unwrap_or_else(|| panic!("{cmd:?} still running after {RUN_LIMIT:?}; killed"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The worker against both services at `orders` and `stocks`: no simulated failures,
/// short timeouts, no retries.
fn worker(orders: &str, stocks: &str) -> Command {
    let mut cmd = common::worker_at(orders, stocks);
    cmd.env("ERROR_RATE", "0")
        .env("HTTP_TIMEOUT_SECONDS", "2")
        .env("DECREASE_TIMEOUT_SECONDS", "2")
        .env("MAX_RETRIES", "0");
    cmd
}

// ------------------------------------------------------- one unreadable list entry

/// Both services on one scripted server: the registered list holds orders 1 to 20, the
/// 9th written as `bad` (and never leaving the list); decreases answer 200, status
/// updates are kept.
struct ListWithOneBadEntry {
    server: ScriptServer,
    statuses: Arc<Mutex<BTreeMap<u64, String>>>,
}

const BAD_ID: u64 = 9;

impl ListWithOneBadEntry {
    fn start(bad: Vec<u8>) -> ListWithOneBadEntry {
        let statuses: Arc<Mutex<BTreeMap<u64, String>>> = Arc::new(Mutex::new(
            (1..=20).map(|id| (id, "registered".to_string())).collect(),
        ));
        let s = statuses.clone();
        let server = ScriptServer::start(move |r: &Request| match r.method.as_str() {
            "GET" => {
                let statuses = s.lock().unwrap();
                let entries: Vec<Vec<u8>> = statuses
                    .iter()
                    .filter(|(id, st)| **id == BAD_ID || *st == "registered")
                    .map(|(id, _)| match *id {
                        BAD_ID => bad.clone(),
                        id => order_json(id, "oak", 1).to_string().into_bytes(),
                    })
                    .skip(r.query("skip").unwrap_or(0) as usize)
                    .take(r.query("limit").unwrap_or(10) as usize)
                    .collect();
                let mut body = b"[".to_vec();
                body.extend(entries.join(&b","[..]));
                body.push(b']');
                reply(200, body)
            }
            "POST" => reply(200, r#"{"wood_type": "oak", "quantity": 1}"#),
            "PUT" => {
                let id: u64 = r.path()["/orders/".len()..].parse().unwrap();
                let status = r.json()["order_status"].as_str().unwrap().to_string();
                s.lock().unwrap().insert(id, status);
                reply(200, "{}")
            }
            _ => reply(404, "<html>not found</html>"),
        });
        ListWithOneBadEntry { server, statuses }
    }
}

#[test]
fn one_unreadable_entry_among_twenty_is_skipped_alone() {
    let deep = format!(
        r#"{{"id": 9, "wood_type": "oak", "quantity": 1, "order_status": "registered", "x": {}{}}}"#,
        "[".repeat(200),
        "]".repeat(200)
    );
    let entry = |rest: &[u8]| {
        let mut e = br#"{"id": 9, "order_status": "registered", "#.to_vec();
        e.extend_from_slice(rest);
        e.push(b'}');
        e
    };
    let cases: [(&str, Vec<u8>); 6] = [
        ("nested 200 deep", deep.into_bytes()),
        (
            "a number out of range",
            entry(br#""wood_type": "oak", "quantity": 1e400"#),
        ),
        (
            "invalid UTF-8",
            entry(b"\"wood_type\": \"oak\xff\xfe\", \"quantity\": 1"),
        ),
        (
            "a raw control character",
            entry(b"\"wood_type\": \"o\x01ak\", \"quantity\": 1"),
        ),
        (
            "a bad escape",
            entry(br#""wood_type": "\uD8", "quantity": 1"#),
        ),
        (
            "a duplicate id",
            entry(br#""wood_type": "oak", "quantity": 1, "id": 10"#),
        ),
    ];
    for (case, bad) in cases {
        let shop = ListWithOneBadEntry::start(bad);
        let url = shop.server.url();
        let out = run(worker(&url, &url).arg("once"));
        let stderr = text(&out.stderr);
        // Work is left (the bad entry), so exit 1; nothing else is lost.
        assert_eq!(out.status.code(), Some(1), "{case}:\n{stderr}");
        let decreased = shop.server.decreases_per_order();
        let expected: BTreeMap<u64, usize> = (1..=20)
            .filter(|id| *id != BAD_ID)
            .map(|id| (id, 1))
            .collect();
        assert_eq!(
            decreased, expected,
            "{case}: each good order once:\n{stderr}"
        );
        let statuses = shop.statuses.lock().unwrap().clone();
        for (id, status) in &statuses {
            let want = if *id == BAD_ID { "registered" } else { "ready" };
            assert_eq!(status, want, "{case}: order {id}");
        }
        let lines: Vec<&str> = stderr
            .lines()
            .filter(|l| l.contains("skipped, bad data from the Order Service"))
            .collect();
        assert_eq!(
            lines.len(),
            1,
            "{case}: one line for the bad entry:\n{stderr}"
        );
        assert!(lines[0].contains("ERROR"), "{case}: {}", lines[0]);
        assert!(!stderr.contains("panicked"), "{case}:\n{stderr}");
    }
}
