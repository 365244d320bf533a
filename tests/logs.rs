//! What the worker says at the default level: an idle `run` is quiet after start-up,
//! and a service that stays unreachable is told once, not at every cycle.

mod common;

use std::time::{Duration, Instant};

use common::{Action, Running, ScriptServer, reply};

/// The lines at info or above after the start-up lines (up to "worker started").
fn after_start_up(stderr: &str) -> Vec<String> {
    stderr
        .lines()
        .skip_while(|l| !l.contains("worker started"))
        .skip(1)
        .filter(|l| !l.contains(" DEBUG ") && !l.contains(" TRACE "))
        .map(str::to_string)
        .collect()
}

#[test]
fn an_idle_run_writes_no_info_line_after_start_up() {
    let server = ScriptServer::start(|_| reply(200, "[]"));
    let mut child = Running::start(
        common::worker_at(&server.url(), &server.url())
            .env("ERROR_RATE", "0")
            .args(["run", "--interval", "0.5"]),
    );
    std::thread::sleep(Duration::from_secs(10));
    child.signal(libc::SIGTERM);
    let out = child.wait_for(Duration::from_secs(5)).expect("stops");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // About twenty cycles ran, each asking for the list.
    let lists = server.calls("GET", "/orders/status/registered").len();
    assert!(lists >= 10, "{lists} list calls");
    let lines: Vec<String> = after_start_up(&stderr)
        .into_iter()
        .filter(|l| !l.contains("stop requested") && !l.contains("stopped by"))
        .collect();
    assert!(lines.is_empty(), "{lines:#?}\n{stderr}");
}

#[test]
fn a_service_down_for_20_s_gives_at_most_three_lines() {
    // The Order Service drops every connection for 20 s, then answers: no orders.
    let started = Instant::now();
    let server = ScriptServer::start(move |_| {
        if started.elapsed() < Duration::from_secs(20) {
            Action::Drop {
                after: Duration::ZERO,
            }
        } else {
            reply(200, "[]")
        }
    });
    let mut child = Running::start(
        common::worker_at(&server.url(), &server.url())
            .env("ERROR_RATE", "0")
            .args(["run", "--interval", "1"]),
    );
    std::thread::sleep(Duration::from_secs(23));
    child.signal(libc::SIGTERM);
    let out = child.wait_for(Duration::from_secs(5)).expect("stops");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let calls = server.calls("GET", "/orders/status/registered").len();
    assert!(calls >= 20, "it kept trying: {calls} list calls");
    let lines: Vec<String> = after_start_up(&stderr)
        .into_iter()
        .filter(|l| !l.contains("stop requested") && !l.contains("stopped by"))
        .collect();
    assert!(lines.len() <= 3, "{lines:#?}");
    assert!(
        lines[0].contains("ERROR") && lines[0].contains("Order Service unreachable"),
        "{lines:#?}"
    );
    // Back after about the 20 s it was down (counted from the worker's first failed
    // call, a moment after its start: 19 s on a slow, instrumented build).
    let secs: u64 = lines
        .last()
        .unwrap()
        .split("Order Service answers again, after ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("{lines:#?}"));
    assert!((17..=21).contains(&secs), "{lines:#?}");
}
