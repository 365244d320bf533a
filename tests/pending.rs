//! A decided order's status update is never given up while the process lives: `once`
//! repeated as cron runs it, with no state file, never takes an order's stock twice;
//! `once` waits for pending updates until they land, a stop, or `--pending-deadline`;
//! a stop in `run` first tries them. Checked against the stand-in's ledger, which
//! records every decrease with its order (the stand-in, like the real Stock Service,
//! takes stock on every decrease whatever its key).

mod common;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{Running, ScriptServer, late, order_json, reply};
use standin::{Knobs, Stack};

fn worker(stack: &Stack, error_rate: &str, args: &[&str]) -> Command {
    let mut cmd = common::worker_at(&stack.orders_url(), &stack.stocks_url());
    cmd.env("ERROR_RATE", error_rate)
        .env("LOG_LEVEL", "warn")
        .env("HTTP_TIMEOUT_SECONDS", "2")
        .env("DECREASE_TIMEOUT_SECONDS", "3")
        .args(args)
        .stdin(Stdio::null());
    cmd
}

fn stack(orders: usize, seed: u64, knobs: Knobs) -> Stack {
    Stack::stocked(knobs, 1_000_000, orders, seed)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs `once` again and again, as cron would, with no state file, until no order is
/// registered (at most `limit` runs, each bounded by two minutes). Returns the runs.
fn cron(stack: &Stack, error_rate: &str, limit: usize) -> usize {
    cron_with(stack, error_rate, limit, None)
}

/// [`cron`], with `STATE_FILE` when given.
fn cron_with(
    stack: &Stack,
    error_rate: &str,
    limit: usize,
    state: Option<&std::path::Path>,
) -> usize {
    let mut runs = 0;
    while stack.count_by_status().contains_key("registered") {
        runs += 1;
        assert!(
            runs <= limit,
            "orders still registered after {limit} runs: {:?}",
            stack.count_by_status()
        );
        let mut cmd = worker(stack, error_rate, &["once"]);
        if let Some(state) = state {
            cmd.env("STATE_FILE", state);
        }
        let out = Running::start(&mut cmd)
            .wait_for(Duration::from_secs(120))
            .expect("once hung and was killed after 120 s");
        assert!(
            matches!(out.status.code(), Some(0 | 1)),
            "{:?}: {}",
            out.status,
            stderr(&out)
        );
    }
    runs
}

/// Every order's decreases, counted from the ledger: exactly one for `ready`, none for
/// `blocked` or `registered`, at most one for `unknown`.
fn assert_ledger(stack: &Stack) {
    stack.assert_ledger();
}

#[test]
fn thirty_percent_faults_on_every_endpoint_never_take_stock_twice_over_cron_runs() {
    for seed in [1, 2, 3] {
        let stack = stack(300, seed, Knobs::failing(0.3));
        let runs = cron(&stack, "0", 30);
        assert_ledger(&stack);
        let counts = stack.count_by_status();
        assert_eq!(
            counts.get("ready").copied(),
            Some(300),
            "seed {seed}: {counts:?}"
        );
        assert_eq!(
            stack.ledger().len(),
            300,
            "seed {seed}: one decrease per order"
        );
        println!("seed {seed}: drained in {runs} runs");
    }
}

#[test]
fn thirty_percent_faults_over_cron_runs_with_a_state_file_take_no_stock_twice() {
    let dir = std::env::temp_dir().join(format!("om-cron-state-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let stack = stack(300, 4, Knobs::failing(0.3));
    cron_with(&stack, "0.3", 30, Some(&dir.join("state.jsonl")));
    assert_ledger(&stack);
    let counts = stack.count_by_status();
    assert_eq!(counts["ready"] + counts["blocked"], 300, "{counts:?}");
    assert_eq!(stack.ledger().len(), counts["ready"]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_demos_defaults_with_2000_orders_never_take_stock_twice_over_cron_runs() {
    let stack = stack(2_000, 11, Knobs::failing(0.1));
    cron(&stack, "0.1", 30);
    assert_ledger(&stack);
    let counts = stack.count_by_status();
    let (ready, blocked) = (counts["ready"], counts["blocked"]);
    assert_eq!(ready + blocked, 2_000, "{counts:?}");
    // About a tenth blocked by the simulated stock failure, with nothing taken.
    assert!((100..=320).contains(&blocked), "{counts:?}");
    assert_eq!(stack.ledger().len(), ready);
}

/// A stand-in whose status updates all fail (`502`) until told otherwise.
fn failing_updates(orders: usize) -> Stack {
    stack(
        orders,
        5,
        Knobs {
            status_error_rate: 1.0,
            ..Knobs::default()
        },
    )
}

/// Waits until the stand-in has taken stock `n` times.
fn wait_for_decreases(stack: &Stack, n: usize, child: &mut Running) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while stack.ledger().len() < n {
        if Instant::now() >= deadline {
            child.signal(libc::SIGKILL);
            let out = child.wait_for(Duration::from_secs(5));
            panic!(
                "{} decreases of {n} within 20 s: {}",
                stack.ledger().len(),
                out.map(|o| stderr(&o)).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The orders whose stock was taken, from the ledger's keys.
fn taken(stack: &Stack) -> Vec<u64> {
    let mut ids: Vec<u64> = stack
        .ledger()
        .iter()
        .filter_map(|e| e.key.as_deref()?.strip_prefix("order-")?.parse().ok())
        .collect();
    ids.sort();
    ids
}

/// Waits until the worker has given up its in-cycle attempts: the Order Service,
/// failing every update, is down for the cycle (its health), and the updates are
/// pending. New orders are not taken meanwhile: the orders after the first stay
/// registered with nothing taken.
fn wait_until_pending(stack: &Stack, child: &mut Running) -> Vec<u64> {
    wait_for_decreases(stack, 1, child);
    std::thread::sleep(Duration::from_secs(3));
    let taken = taken(stack);
    let registered = stack.count_by_status().get("registered").copied();
    assert_eq!(registered, Some(stack.orders().len()), "no status was set");
    taken
}

#[test]
fn once_waits_for_pending_updates_and_they_land_when_the_order_service_recovers() {
    let stack = failing_updates(3);
    let mut child = Running::start(&mut worker(&stack, "0", &["once"]));
    // Long past the retries a cycle used to give an update.
    let taken = wait_until_pending(&stack, &mut child);
    assert!(child.child.try_wait().unwrap().is_none(), "once gave up");
    stack.set_knobs(Knobs::default());
    let out = child
        .wait_for(Duration::from_secs(15))
        .expect("once ends once the updates land");
    // Work is left (the orders not taken while the Order Service was down): exit 1.
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    for id in &taken {
        let order = stack.orders().into_iter().find(|o| o.id == *id).unwrap();
        assert_eq!(order.status, "ready", "order {id}");
    }
    assert_ledger(&stack);
    // The next runs take the rest, and never the stock of those again.
    cron(&stack, "0", 3);
    assert_eq!(stack.count_by_status().get("ready").copied(), Some(3));
    assert_eq!(stack.ledger().len(), 3);
    assert_ledger(&stack);
}

#[test]
fn a_stop_during_the_pending_wait_exits_promptly_naming_the_orders() {
    let stack = failing_updates(3);
    let mut child = Running::start(&mut worker(&stack, "0", &["once"]));
    let taken = wait_until_pending(&stack, &mut child);
    let signalled = Instant::now();
    child.signal(libc::SIGTERM);
    let out = child
        .wait_for(Duration::from_secs(3))
        .expect("exit within 3 s of SIGTERM");
    let took = signalled.elapsed();
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let text = stderr(&out);
    let head = format!(
        "exiting with {} pending",
        ordermanagement::cycle::report::counted(taken.len() as u64, "status update")
    );
    let line = text
        .lines()
        .find(|l| l.contains(&head))
        .unwrap_or_else(|| panic!("no line names the pending orders: {text}"));
    assert!(line.contains("ERROR"), "{line}");
    assert!(line.contains("stopped by SIGTERM"), "{line}");
    for id in &taken {
        assert!(line.contains(&format!("{id} (ready)")), "{id}: {line}");
    }
    // The stock was taken once each and the orders are still registered: what the
    // line tells the operator to set by hand.
    assert_eq!(taken, self::taken(&stack));
    assert_eq!(stack.count_by_status().get("registered").copied(), Some(3));
}

#[test]
fn the_pending_deadline_ends_once_with_exit_1_naming_the_orders() {
    let stack = failing_updates(2);
    let started = Instant::now();
    let out = Running::start(&mut worker(
        &stack,
        "0",
        &["once", "--pending-deadline", "1.5"],
    ))
    .wait_for(Duration::from_secs(30))
    .expect("once ends at its deadline");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    // The cycle's own attempts, then 1.5 s, then at most one round's calls.
    assert!(
        started.elapsed() < Duration::from_secs(12),
        "{:?}",
        started.elapsed()
    );
    let text = stderr(&out);
    let taken = taken(&stack);
    assert!(!taken.is_empty());
    assert!(
        text.contains(&format!(
            "exiting with {} pending (the Order Service did not take them in time)",
            ordermanagement::cycle::report::counted(taken.len() as u64, "status update")
        )),
        "{text}"
    );
    for id in &taken {
        assert!(text.contains(&format!("{id} (ready)")), "{id}: {text}");
    }
}

#[test]
fn a_sigterm_in_run_first_tries_the_pending_updates() {
    let stack = failing_updates(4);
    let mut child = Running::start(&mut worker(&stack, "0", &["run", "--interval", "30"]));
    // The cycle gives the updates up as pending (the Order Service, failing every
    // update, is taken out by its health) and waits out its interval.
    let taken = wait_until_pending(&stack, &mut child);
    stack.set_knobs(Knobs::default());
    child.signal(libc::SIGTERM);
    let out = child
        .wait_for(Duration::from_secs(10))
        .expect("exit within the stop's grace");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stack.count_by_status().get("ready").copied(),
        Some(taken.len()),
        "{}",
        stderr(&out)
    );
    assert_eq!(taken, self::taken(&stack));
    assert_ledger(&stack);
}

#[test]
fn a_decrease_that_stalls_once_is_retried_after_its_settle() {
    // One order; its first decrease is answered 500 only after the HTTP timeout (a
    // stall, as the real Stock Service's exhausted pool does), the second 150 ms after
    // that answer (the settle; that it is not the backoff, tests/worker.rs shows with a
    // longer one).
    let server = ScriptServer::start(|r| match (r.method.as_str(), r.path()) {
        ("GET", "/orders/status/registered") if r.query("skip") == Some(0) => reply(
            200,
            serde_json::json!([order_json(1, "oak", 2)]).to_string(),
        ),
        ("GET", _) => reply(200, "[]"),
        ("PUT", _) => reply(200, r#"{"id": 1, "order_status": "ready"}"#),
        _ => reply(404, "{}"),
    });
    // The stall: the first decrease to arrive is held 800 ms and answered 500.
    let stall = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let first = stall.clone();
    let stock = ScriptServer::start(move |_| {
        if first.swap(false, std::sync::atomic::Ordering::SeqCst) {
            late(
                500,
                r#"{"error": "Unexpected error during stock decrease (read)"}"#,
                Duration::from_millis(800),
            )
        } else {
            reply(200, r#"{"wood_type": "oak", "quantity": 5}"#)
        }
    });
    let out = Running::start(
        common::worker_at(&server.url(), &stock.url())
            .env("ERROR_RATE", "0")
            .env("HTTP_TIMEOUT_SECONDS", "0.5")
            .env("DECREASE_TIMEOUT_SECONDS", "3")
            .arg("once"),
    )
    .wait_for(Duration::from_secs(20))
    .expect("once ends");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let decreases = stock.calls("POST", "/stocks/decrease");
    assert_eq!(decreases.len(), 2, "{}", stderr(&out));
    // The second went 150 ms after the first's reply (800 ms after it arrived).
    let gap = decreases[1].at - decreases[0].at;
    assert!(
        gap >= Duration::from_millis(950) && gap < Duration::from_millis(1045),
        "{gap:?}"
    );
    assert!(
        stderr(&out).contains("the next decrease goes in 150 ms"),
        "{}",
        stderr(&out)
    );
    assert_eq!(server.calls("PUT", "/orders/1").len(), 1);
}

#[test]
fn a_status_update_refused_after_the_decrease_is_named_at_exit_and_kept_in_the_state_file() {
    // The Order Service refuses every status update (400) and so keeps listing the
    // orders as registered.
    let server = ScriptServer::start(|r| match (r.method.as_str(), r.path()) {
        ("GET", _) if r.query("skip") == Some(0) => reply(
            200,
            serde_json::json!([order_json(1, "oak", 2), order_json(2, "elm", 3)]).to_string(),
        ),
        ("GET", _) => reply(200, "[]"),
        ("POST", "/stocks/decrease") => reply(200, r#"{"wood_type": "oak", "quantity": 5}"#),
        _ => reply(400, r#"{"error": "Invalid order status"}"#),
    });
    let dir = std::env::temp_dir().join(format!("om-refused-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let state = dir.join("state.jsonl");
    for run in 1..=3 {
        let out = Running::start(
            common::worker_at(&server.url(), &server.url())
                .env("ERROR_RATE", "0")
                .env("STATE_FILE", &state)
                .arg("once"),
        )
        .wait_for(Duration::from_secs(30))
        .expect("once ends");
        assert_eq!(out.status.code(), Some(1), "run {run}: {}", stderr(&out));
        let text = stderr(&out);
        let line = text
            .lines()
            .find(|l| l.contains("orders decided but their status update refused"))
            .unwrap_or_else(|| panic!("run {run}: no line names them: {text}"));
        assert!(
            line.contains("ERROR") && line.contains("2 orders"),
            "{line}"
        );
        assert!(line.contains("1 (ready), 2 (ready)"), "{line}");
    }
    // The state file kept the decisions: later runs only sent the status again.
    assert_eq!(
        server.decreases_per_order(),
        std::collections::BTreeMap::from([(1, 1), (2, 1)])
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn run_stopped_by_sigterm_again_and_again_without_a_state_file_takes_no_stock_twice() {
    // 30% faults on every endpoint; each run is stopped part way, as a deployment that
    // restarts the worker often would: the status updates in hand land within the
    // stop's grace.
    let stack = stack(300, 21, Knobs::failing(0.3));
    let mut rng = fastrand::Rng::with_seed(21);
    let mut stops = 0;
    while stack.count_by_status().contains_key("registered") {
        stops += 1;
        assert!(stops <= 60, "not drained: {:?}", stack.count_by_status());
        let mut child = Running::start(&mut worker(&stack, "0", &["run", "--interval", "0.1"]));
        std::thread::sleep(Duration::from_millis(rng.u64(50..300)));
        child.signal(libc::SIGTERM);
        let out = child
            .wait_for(Duration::from_secs(12))
            .expect("stopped within the grace");
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        assert_ledger(&stack);
    }
    assert_eq!(stack.count_by_status().get("ready").copied(), Some(300));
    assert_eq!(stack.ledger().len(), 300);
    println!("drained over {stops} stopped runs");
}

#[test]
fn a_dry_run_with_a_state_file_left_by_a_crash_sends_nothing_and_leaves_the_file() {
    use ordermanagement::services::orders::WoodType;
    use ordermanagement::{Journal, Order, OrderStatus};
    let dir = std::env::temp_dir().join(format!("om-dry-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let state = dir.join("state.jsonl");
    {
        let mut journal = ordermanagement::state::journal::FileJournal::open(&state).unwrap();
        let order = |id| Order {
            id,
            wood_type: WoodType::Oak,
            quantity: 2,
        };
        journal.sending(&order(7)).unwrap();
        journal.sending(&order(8)).unwrap();
        journal.decided(&order(8), OrderStatus::Ready).unwrap();
    }
    let before = std::fs::read(&state).unwrap();
    let server = ScriptServer::start(|r| match r.method.as_str() {
        "GET" => reply(
            200,
            serde_json::json!([order_json(9, "elm", 1)]).to_string(),
        ),
        _ => reply(200, "{}"),
    });
    for command in ["once", "run"] {
        let mut child = Running::start(
            common::worker_at(&server.url(), &server.url())
                .env("STATE_FILE", &state)
                .env("DRY_RUN", "true")
                // From the environment, as a shared env file sets it: `once` ignores it
                // (on its command line, `--interval` would be refused).
                .env("INTERVAL_SECONDS", "0.2")
                .arg(command),
        );
        if command == "run" {
            std::thread::sleep(Duration::from_millis(700));
            child.signal(libc::SIGTERM);
        }
        let out = child.wait_for(Duration::from_secs(10)).expect("ends");
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let text = stderr(&out);
        assert!(
            text.contains("holds 2 orders in flight; a real run would only set their status: 7 (decrease sent, outcome not known: set unknown), 8 (set ready)"),
            "{text}"
        );
    }
    assert!(
        server.requests().iter().all(|r| r.method == "GET"),
        "{:?}",
        server.requests()
    );
    assert_eq!(
        std::fs::read(&state).unwrap(),
        before,
        "the file is left as it is"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
