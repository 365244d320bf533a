//! The real binary against the in-memory stand-in services: end states and the stock
//! ledger, not just the calls.

mod common;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::Running;

use standin::{Knobs, Stack};

fn worker(stack: &Stack, args: &[&str]) -> Command {
    let mut cmd = common::worker_at(&stack.orders_url(), &stack.stocks_url());
    cmd.env("ERROR_RATE", "0")
        .env("LOG_LEVEL", "warn")
        .env("HTTP_TIMEOUT_SECONDS", "2")
        .env("DECREASE_TIMEOUT_SECONDS", "3")
        .args(args)
        .stdin(Stdio::null());
    cmd
}

/// Runs `once` to its end, or kills it after a minute: a hang fails the test.
fn once(stack: &Stack) -> Output {
    Running::start(&mut worker(stack, &["once"]))
        .wait_for(Duration::from_secs(60))
        .expect("the worker hung and was killed after 60 s")
}

fn stack(orders: usize, stock_each: u64, knobs: Knobs) -> Stack {
    Stack::stocked(knobs, stock_each, orders, 7)
}

fn assert_invariants(stack: &Stack) {
    stack.assert_ledger();
    let taken: u64 = stack.ledger().iter().map(|e| e.quantity).sum();
    let ready: u64 = stack
        .orders()
        .iter()
        .filter(|o| o.status == "ready")
        .map(|o| o.quantity)
        .sum();
    let unknown = stack
        .orders()
        .iter()
        .filter(|o| o.status == "unknown")
        .count();
    if unknown == 0 {
        assert_eq!(
            taken, ready,
            "stock taken equals the quantities of ready orders"
        );
    }
}

#[test]
fn five_hundred_orders_without_faults_end_ready_or_blocked_for_insufficient_stock() {
    // About half the stock the orders ask for: many orders are refused.
    let stack = stack(500, 2_500, Knobs::default());
    let out = once(&stack);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let counts = stack.count_by_status();
    assert_eq!(
        counts.get("ready").copied().unwrap_or(0) + counts.get("blocked").copied().unwrap_or(0),
        500,
        "{counts:?}"
    );
    assert!(counts["blocked"] > 0 && counts["ready"] > 0, "{counts:?}");
    assert_invariants(&stack);
    // Each ready order's key is in the ledger exactly once (checked by violations),
    // and the ledger holds nothing else.
    assert_eq!(stack.ledger().len(), counts["ready"]);
}

#[test]
fn thirty_percent_faults_everywhere_lose_nothing_over_repeated_runs() {
    let knobs = Knobs::failing(0.3);
    let stack = stack(150, 1_000_000, knobs);
    let mut runs = 0;
    while stack.count_by_status().contains_key("registered") {
        runs += 1;
        assert!(
            runs <= 20,
            "orders still registered after 20 runs: {:?}",
            stack.count_by_status()
        );
        let out = once(&stack);
        assert!(
            matches!(out.status.code(), Some(0 | 1)),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(
        stack.count_by_status().get("ready").copied(),
        Some(150),
        "{:?}",
        stack.count_by_status()
    );
    assert_invariants(&stack);
}

#[test]
fn a_500_after_the_stock_was_taken_never_takes_it_twice() {
    let knobs = Knobs {
        stock_fail_after_change_rate: 0.3,
        ..Knobs::default()
    };
    let stack = stack(200, 1_000_000, knobs);
    let out = once(&stack);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The stand-in takes stock on every decrease, whatever the key, as the real one
    // does: an order answered `500 ... (update)` is in doubt (`unknown`), never sent
    // again; the others are `ready`. Each order's stock was taken exactly once.
    let counts = stack.count_by_status();
    let (ready, unknown) = (counts["ready"], counts["unknown"]);
    assert_eq!(ready + unknown, 200, "{counts:?}");
    assert!((30..=90).contains(&unknown), "{counts:?}");
    assert_eq!(stack.ledger().len(), 200);
    assert_invariants(&stack);
}

#[test]
fn sigterm_during_a_large_backlog_exits_0_promptly_and_leaves_no_stock_unaccounted() {
    let stack = stack(5_000, 1_000_000, Knobs::default());
    let mut child = Running::start(&mut worker(&stack, &["run", "--interval", "30"]));
    // Let it get well into the backlog.
    let deadline = Instant::now() + Duration::from_secs(20);
    while stack.ledger().len() < 200 {
        assert!(
            Instant::now() < deadline,
            "the worker did not start on the backlog"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let signalled = Instant::now();
    child.signal(libc::SIGTERM);
    let out = child
        .wait_for(Duration::from_secs(2))
        .expect("exit within 2 s of SIGTERM");
    assert_eq!(out.status.code(), Some(0));
    assert!(signalled.elapsed() < Duration::from_secs(2));
    let counts = stack.count_by_status();
    assert!(
        counts.get("registered").copied().unwrap_or(0) > 0,
        "stopped before the end: {counts:?}"
    );
    assert_invariants(&stack);
}
