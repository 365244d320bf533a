//! `--state-file` through the real binary: what a restart does with the orders a
//! previous run left in flight, and what it refuses.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Request, ScriptServer, order_json, reply};
use ordermanagement::Journal;
use ordermanagement::journal::FileJournal;
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_ordermanagement");

fn worker(server: &ScriptServer, state: &std::path::Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env_clear()
        // No heartbeat file left in /tmp by a test.
        .env("HEARTBEAT_FILE", "")
        .env("API_URL_ORDERS", server.url())
        .env("API_URL_STOCKS", server.url())
        .env("ERROR_RATE", "0")
        .env("HTTP_TIMEOUT_SECONDS", "2")
        .env("STATE_FILE", state)
        .stdin(Stdio::null());
    cmd
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("om-journal-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn shop() -> ScriptServer {
    ScriptServer::start(|r: &Request| match r.method.as_str() {
        "GET" => reply(
            200,
            json!([
                order_json(1, "oak", 3),
                order_json(2, "elm", 4),
                order_json(3, "pine", 5)
            ])
            .to_string(),
        ),
        "POST" => reply(200, r#"{"quantity": 1}"#),
        _ => reply(200, "{}"),
    })
}

#[test]
fn a_restart_retries_only_the_status_of_decided_orders_and_sets_in_doubt_ones_unknown() {
    let dir = temp_dir("replay");
    let state = dir.join("state.jsonl");
    std::fs::write(
        &state,
        concat!(
            "{\"op\":\"sending\",\"id\":1,\"wood_type\":\"oak\",\"quantity\":3}\n",
            "{\"op\":\"decided\",\"id\":1,\"wood_type\":\"oak\",\"quantity\":3,\"status\":\"ready\"}\n",
            "{\"op\":\"sending\",\"id\":2,\"wood_type\":\"elm\",\"quantity\":4}\n",
        ),
    )
    .unwrap();
    let server = shop();
    let out = worker(&server, &state).arg("once").output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Only order 3 was new: 1's stock is known taken, 2's decrease may have been.
    let decreases = server.calls("POST", "/stocks/decrease");
    assert_eq!(decreases.len(), 1);
    assert_eq!(decreases[0].header("idempotency-key"), Some("order-3"));
    assert_eq!(
        server.calls("PUT", "/orders/1")[0].json(),
        json!({"order_status": "ready"})
    );
    assert_eq!(
        server.calls("PUT", "/orders/2")[0].json(),
        json!({"order_status": "unknown"})
    );
    assert_eq!(
        server.calls("PUT", "/orders/3")[0].json(),
        json!({"order_status": "ready"})
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("reconcile"));
    // Everything finished: nothing left in flight.
    assert!(FileJournal::open(&state).unwrap().in_flight().is_empty());
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_damaged_state_file_stops_the_worker_before_any_request() {
    let dir = temp_dir("damaged");
    let state = dir.join("state.jsonl");
    std::fs::write(
        &state,
        "not json\n{\"op\":\"sending\",\"id\":1,\"wood_type\":\"oak\",\"quantity\":3}\n",
    )
    .unwrap();
    let server = shop();
    let out = worker(&server, &state).arg("once").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("damaged at line 1"));
    assert!(server.requests().is_empty());
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_second_worker_on_the_same_state_file_refuses_to_start() {
    let dir = temp_dir("lock");
    let state = dir.join("state.jsonl");
    let server = shop();
    let mut first = worker(&server, &state)
        .args(["run", "--interval", "30"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.calls("GET", "/orders/status/registered").is_empty() {
        assert!(Instant::now() < deadline, "the first worker did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    let second = worker(&server, &state).arg("once").output().unwrap();
    let _ = first.kill();
    let _ = first.wait();
    assert_eq!(second.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&second.stderr).contains("in use by another worker"));
    std::fs::remove_dir_all(dir).unwrap();
}
