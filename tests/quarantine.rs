//! One bad answer stays with its order: an answer the contract does not list about one
//! order's call (`409`, `422`, a `400` with an unknown body), or a status update that
//! hangs while the Order Service answers the others, quarantines that order alone. The
//! other orders flow, in `run` and in `once`; the quarantined order's stock is taken at
//! most once, counted order by order in the stand-in's ledger.

mod common;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::Running;
use standin::{Answer, Knobs, Stack};

fn worker(stack: &Stack, args: &[&str]) -> Command {
    let mut cmd = common::worker_at(&stack.orders_url(), &stack.stocks_url());
    cmd.env("ERROR_RATE", "0")
        .env("LOG_LEVEL", "info")
        .env("HTTP_TIMEOUT_SECONDS", "1")
        .env("DECREASE_TIMEOUT_SECONDS", "3")
        .env("STATE_FILE", "")
        .args(args)
        .stdin(Stdio::null());
    cmd
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Waits up to `limit` until `done` holds; false if it never did.
fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    done()
}

/// Orders of `ids` that are `ready`.
fn ready(stack: &Stack, ids: &[u64]) -> usize {
    ids.iter()
        .filter(|id| stack.status(**id).as_deref() == Some("ready"))
        .count()
}

/// Every order's stock taken at most once, and exactly once for a `ready` one.
fn assert_taken_at_most_once(stack: &Stack) {
    for order in stack.orders() {
        let taken = stack.taken(order.id);
        assert!(taken <= 1, "order {} taken {taken} times", order.id);
        if order.status == "ready" {
            assert_eq!(taken, 1, "order {} ready, taken {taken} times", order.id);
        }
    }
}

fn stack_with(orders: usize, knobs: Knobs) -> (Stack, Vec<u64>) {
    let stack = Stack::stocked(knobs, 1_000_000, orders, 7);
    let ids = stack.orders().iter().map(|o| o.id).collect();
    (stack, ids)
}

/// `run`: order 1's status update is answered `status` `body`, and the other orders,
/// those listed with it and those added later, are all set `ready`; order 1's stock is
/// taken once, its update tried again on its own backoff, and it is named once.
fn one_odd_status_answer_in_run(status: u16, body: &str) {
    let mut knobs = Knobs::default();
    knobs.status_answers.insert(1, Answer::new(status, body));
    let (stack, ids) = stack_with(10, knobs);
    let mut running = Running::start(&mut worker(&stack, &["run", "--interval", "1"]));
    let others: Vec<u64> = ids.iter().copied().filter(|id| *id != 1).collect();
    assert!(
        wait_until(Duration::from_secs(10), || ready(&stack, &others) == 9),
        "{status}: {} of the 9 other orders ready",
        ready(&stack, &others)
    );
    let later: Vec<u64> = (0..40).map(|_| stack.add_order("oak", 2)).collect();
    assert!(
        wait_until(Duration::from_secs(10), || ready(&stack, &later) == 40),
        "{status}: {} of 40 later orders ready",
        ready(&stack, &later)
    );
    std::thread::sleep(Duration::from_secs(2));
    running.signal(libc::SIGTERM);
    let out = running.wait_for(Duration::from_secs(10)).expect("stops");
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert_eq!(stack.status(1).as_deref(), Some("registered"));
    assert_eq!(stack.taken(1), 1, "order 1's stock taken once");
    // Its first attempt, and at most one more (its first quarantine is about 10 s).
    let calls = stack.status_calls(1);
    assert!((1..=3).contains(&calls), "{status}: {calls} status updates");
    assert_taken_at_most_once(&stack);
    let entered = err
        .lines()
        .filter(|l| l.contains("order 1 ") && l.contains("quarantined"))
        .count();
    assert_eq!(
        entered, 1,
        "{status}: one line when it enters quarantine:\n{err}"
    );
    assert!(!err.contains("cycle ended early"), "{status}:\n{err}");
    assert!(
        err.lines().all(|l| l.len() <= 2048),
        "{status}: a line over 2 KB"
    );
}

#[test]
fn a_409_status_update_holds_back_only_its_order() {
    one_odd_status_answer_in_run(409, r#"{"error": "conflict"}"#);
}

#[test]
fn a_422_status_update_holds_back_only_its_order() {
    one_odd_status_answer_in_run(422, r#"{"detail": "unprocessable"}"#);
}

#[test]
fn a_400_with_a_body_outside_the_contract_holds_back_only_its_order() {
    one_odd_status_answer_in_run(400, r#"{"error":"weird"}"#);
}

#[test]
fn a_status_update_that_never_answers_holds_back_only_its_order() {
    let mut knobs = Knobs::default();
    knobs.status_answers.insert(
        2,
        Answer {
            status: 200,
            body: "{}".into(),
            delay: Duration::from_secs(4),
            retry_after: None,
        },
    );
    let (stack, ids) = stack_with(85, knobs);
    let mut running = Running::start(&mut worker(&stack, &["run", "--interval", "1"]));
    let others: Vec<u64> = ids.iter().copied().filter(|id| *id != 2).collect();
    let started = Instant::now();
    assert!(
        wait_until(Duration::from_secs(15), || ready(&stack, &others) == 84),
        "{} of the 84 other orders ready",
        ready(&stack, &others)
    );
    println!(
        "84 other orders ready in {} ms",
        started.elapsed().as_millis()
    );
    running.signal(libc::SIGTERM);
    let out = running.wait_for(Duration::from_secs(15)).expect("stops");
    let err = stderr(&out);
    assert_eq!(stack.taken(2), 1, "{err}");
    assert!(stack.status_calls(2) <= 3, "{}", stack.status_calls(2));
    assert_taken_at_most_once(&stack);
    assert!(
        err.lines()
            .any(|l| l.contains("order 2 ") && l.contains("quarantined")),
        "{err}"
    );
}

#[test]
fn a_decrease_answered_outside_the_contract_holds_back_only_its_order() {
    let mut knobs = Knobs::default();
    // The first order listed: nothing has shown yet that the Stock Service answers.
    knobs.decrease_answers.insert(
        1,
        Answer::new(400, r#"{"error": "Wood type discontinued"}"#),
    );
    let (stack, ids) = stack_with(35, knobs);
    let mut running = Running::start(&mut worker(&stack, &["run", "--interval", "1"]));
    let others: Vec<u64> = ids.iter().copied().filter(|id| *id != 1).collect();
    assert!(
        wait_until(Duration::from_secs(10), || ready(&stack, &others) == 34),
        "{} of the 34 other orders ready",
        ready(&stack, &others)
    );
    std::thread::sleep(Duration::from_secs(4));
    running.signal(libc::SIGTERM);
    let out = running.wait_for(Duration::from_secs(10)).expect("stops");
    let err = stderr(&out);
    assert_eq!(stack.status(1).as_deref(), Some("registered"));
    assert_eq!(stack.taken(1), 0);
    // The first attempt, the one after the probe, at most one after its quarantine.
    let calls = stack.decrease_calls(1);
    assert!((2..=3).contains(&calls), "{calls} decreases:\n{err}");
    let entered = err
        .lines()
        .filter(|l| l.contains("order 1 ") && l.contains("quarantined"))
        .count();
    assert_eq!(entered, 1, "one line when it enters quarantine:\n{err}");
    assert_taken_at_most_once(&stack);
}

#[test]
fn cron_runs_with_a_409_take_its_stock_once_and_process_the_others_at_the_first_run() {
    let dir = std::env::temp_dir().join(format!("om-quarantine-cron-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let state = dir.join("state.jsonl");
    let mut knobs = Knobs::default();
    knobs
        .status_answers
        .insert(1, Answer::new(409, r#"{"error": "conflict"}"#));
    let (stack, ids) = stack_with(10, knobs);
    let others: Vec<u64> = ids.iter().copied().filter(|id| *id != 1).collect();
    for run in 1..=4 {
        let mut cmd = worker(&stack, &["once"]);
        cmd.env("STATE_FILE", &state).env("LOG_LEVEL", "warn");
        let started = Instant::now();
        let out = Running::start(&mut cmd)
            .wait_for(Duration::from_secs(60))
            .expect("once ends");
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "run {run}: {err}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "run {run} took {:?}: a quarantined order does not hold once",
            started.elapsed()
        );
        assert_eq!(ready(&stack, &others), 9, "run {run}: {err}");
        assert!(err.contains("quarantined"), "run {run}: {err}");
    }
    assert_eq!(stack.taken(1), 1);
    // The state file keeps its quarantine: the runs that followed within its first
    // 10 s left it alone.
    assert_eq!(
        stack.status_calls(1),
        1,
        "one status update in four quick runs"
    );
    let text = std::fs::read_to_string(&state).unwrap();
    assert!(
        text.lines()
            .any(|l| l.contains("\"op\":\"quarantined\"") && l.contains("\"id\":1,")),
        "{text}"
    );
    assert_taken_at_most_once(&stack);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn once_pending_deadline_counts_from_the_decision_whatever_retry_after_says() {
    let mut knobs = Knobs::default();
    knobs.status_answers.insert(
        3,
        Answer {
            status: 429,
            body: r#"{"error": "slow down"}"#.into(),
            delay: Duration::ZERO,
            retry_after: Some("90".into()),
        },
    );
    let (stack, _) = stack_with(10, knobs);
    let started = Instant::now();
    let out = Running::start(&mut worker(&stack, &["once", "--pending-deadline", "5"]))
        .wait_for(Duration::from_secs(60))
        .expect("once ends");
    let took = started.elapsed();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(took < Duration::from_secs(9), "once took {took:?}:\n{err}");
    assert!(err.contains("--pending-deadline"), "{err}");
    assert!(!err.contains("stop requested"), "no stop was sent:\n{err}");
    assert_eq!(stack.taken(3), 1);
}

#[test]
fn once_without_a_state_file_keeps_trying_a_decided_order_it_cannot_keep() {
    // Order 1's status update is answered 409 for its first 2 s. With no state file,
    // quarantine would forget it at exit: it is retried instead, until it lands.
    let mut knobs = Knobs::default();
    knobs
        .status_answers
        .insert(1, Answer::new(409, r#"{"error": "conflict"}"#));
    let (stack, _) = stack_with(5, knobs);
    let shared = std::sync::Arc::new(stack);
    let fixer = {
        let stack = shared.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(2));
            stack.set_knobs(Knobs::default());
        })
    };
    let out = Running::start(&mut worker(&shared, &["once", "--pending-deadline", "20"]))
        .wait_for(Duration::from_secs(60))
        .expect("once ends");
    fixer.join().unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert_eq!(shared.status(1).as_deref(), Some("ready"), "{err}");
    assert_eq!(shared.taken(1), 1);
    assert_taken_at_most_once(&shared);
}

#[test]
fn the_quarantine_cap_never_stops_the_list() {
    use ordermanagement::{Stop, Worker};
    // Three orders answered 422 at their decrease, each between orders answered as
    // usual (so each is its own trouble), a cap of 2: the quarantine keeps 2, and
    // later orders still flow.
    let mut knobs = Knobs::default();
    for id in [2, 4, 6] {
        knobs
            .decrease_answers
            .insert(id, Answer::new(422, r#"{"detail": "no"}"#));
    }
    let (stack, _) = stack_with(7, knobs);
    let config = common::quick_config(&stack.orders_url(), &stack.stocks_url());
    let mut worker = Worker::new(&config, Stop::new());
    worker.set_quarantine_cap(2);
    let first = worker.cycle();
    assert_eq!(first.quarantined, 2, "{first:?}");
    assert_eq!(first.ready, 4, "{first:?}");
    let later: Vec<u64> = (0..5).map(|_| stack.add_order("oak", 1)).collect();
    worker.cycle();
    assert_eq!(ready(&stack, &later), 5, "new orders taken at the cap");
    assert_taken_at_most_once(&stack);
}
