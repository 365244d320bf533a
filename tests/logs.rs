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

/// A cron run at `LOG_LEVEL=warn`: its output, and how it exited.
fn cron_run(stack: &standin::Stack, home: &std::path::Path) -> std::process::Output {
    let mut cmd = common::worker_at(&stack.orders_url(), &stack.stocks_url());
    cmd.env("ERROR_RATE", "0.1")
        .env("LOG_LEVEL", "warn")
        .env("HOME", home)
        .arg("once");
    Running::start(&mut cmd)
        .wait_for(Duration::from_secs(120))
        .expect("once ends")
}

#[test]
fn a_cron_run_at_warn_that_decides_every_order_writes_nothing() {
    let home = std::env::temp_dir().join(format!("om-logs-cron-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&home);
    std::fs::create_dir_all(&home).unwrap();
    let stack = standin::Stack::stocked(standin::Knobs::failing(0.1), 1_000_000, 500, 5);
    let out = cron_run(&stack, &home);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "");
    assert_eq!(stderr, "", "nothing for a person, nothing written");
    stack.assert_ledger();
    // Every order ready or blocked, however many retries it took; an order whose
    // decrease failed on every attempt (1 in 10,000 at 10%) stays registered for the
    // next run, which is no one's problem either: exit 1, still nothing written.
    let counts = stack.count_by_status();
    let left = counts.get("registered").copied().unwrap_or(0);
    assert_eq!(
        counts["ready"] + counts["blocked"] + left,
        500,
        "{counts:?}"
    );
    assert_eq!(
        out.status.code(),
        Some(if left == 0 { 0 } else { 1 }),
        "{counts:?}"
    );
    let _ = std::fs::remove_dir_all(&home);
}

#[test]
fn a_cron_run_at_warn_that_leaves_something_for_a_person_names_it_then_sums_up() {
    let home = std::env::temp_dir().join(format!("om-logs-person-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&home);
    std::fs::create_dir_all(&home).unwrap();
    let mut knobs = standin::Knobs::default();
    knobs
        .status_answers
        .insert(1, standin::Answer::new(409, r#"{"error": "conflict"}"#));
    let stack = standin::Stack::stocked(knobs, 1_000_000, 50, 6);
    let out = cron_run(&stack, &home);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!((2..=4).contains(&lines.len()), "a few lines: {stderr}");
    assert!(
        lines[0].contains("order 1 ") && lines[0].contains("quarantined"),
        "{stderr}"
    );
    let summary = lines
        .iter()
        .find(|l| l.contains("cycle done"))
        .expect(&stderr);
    assert!(
        summary.contains(" WARN ") && summary.contains("1 quarantined"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&home);
}
