//! The real binary, run as a child process against httpmock on 127.0.0.1: help text,
//! configuration errors (exit 2, nothing sent), `once` exit codes, options from the
//! environment or before the command, and `run` stopping on SIGTERM/SIGINT.
//!
//! Every child runs with a cleared environment, so the developer's variables
//! (API_URL_ORDERS, RUST_LOG, http_proxy, ...) cannot leak in, and every child is killed
//! and reaped if a test fails or it outlives its time limit.

mod common;

use std::net::TcpListener;
use std::process::{Command, Output};
use std::thread;
use std::time::{Duration, Instant};

use common::{Request, Running, ScriptServer, first_page_mock, order_json, reply};

use httpmock::{Method, Mock, MockServer};
use serde_json::json;

/// Longest a `once` or a failing command may take before the test gives up on it.
const RUN_LIMIT: Duration = Duration::from_secs(20);

/// The promise of `run`: stopped within 2 s of SIGTERM/SIGINT.
const STOP_LIMIT: Duration = Duration::from_secs(2);

/// The binary with an empty environment (the heartbeat tests set their own file).
fn cmd() -> Command {
    common::worker_command()
}

/// `cmd()` pointed at the two services, no simulated failures, short timeouts.
/// `--max-retries` is left to each test (clap refuses a flag given twice).
fn with_services(orders: &str, stocks: &str) -> Command {
    let mut cmd = cmd();
    cmd.args(["--orders-url", orders, "--stocks-url", stocks])
        .args([
            "--error-rate",
            "0",
            "--timeout",
            "2",
            "--decrease-timeout",
            "2",
        ])
        .args(["--log-level", "info"]);
    cmd
}

/// Runs `cmd` to its end, within [`RUN_LIMIT`].
fn run(cmd: &mut Command) -> Output {
    let mut child = Running::start(cmd);
    child
        .wait_for(RUN_LIMIT)
        .unwrap_or_else(|| panic!("{cmd:?} still running after {RUN_LIMIT:?}; killed"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Asserts the exit code, showing the child's output when it is not the expected one.
fn assert_exit(out: &Output, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "exit status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// A port on 127.0.0.1 with nothing listening on it (bound, then released).
fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

/// Answers every request with 418, to count requests that must never be made.
fn catch_all(server: &MockServer) -> Mock<'_> {
    server.mock(|when, then| {
        when.any_request();
        then.status(418);
    })
}

fn oak_order() -> serde_json::Value {
    json!([{"id": 1, "wood_type": "oak", "quantity": 3, "order_status": "registered"}])
}

/// The decrease for order 1 (3 oak), as the worker must send it.
fn decrease_mock(server: &MockServer) -> Mock<'_> {
    server.mock(|when, then| {
        when.method(Method::POST)
            .path("/stocks/decrease")
            .header("Idempotency-Key", "order-1")
            .header("Content-Type", "application/json")
            .json_body(json!({"wood_type": "oak", "quantity": 3}));
        then.status(200)
            .header("content-type", "application/json")
            .json_body(json!({"wood_type": "oak", "quantity": 7}));
    })
}

/// Order 1 set `ready`.
fn ready_mock(server: &MockServer) -> Mock<'_> {
    server.mock(|when, then| {
        when.method(Method::PUT)
            .path("/orders/1")
            .json_body(json!({"order_status": "ready"}));
        then.status(200)
            .header("content-type", "application/json")
            .json_body(json!({"id": 1, "order_status": "ready"}));
    })
}

/// Order 1 (3 oak) through one cycle: its list, its decrease and its status set
/// `ready`, each as the worker must send it.
struct OakOrder<'a> {
    list: Mock<'a>,
    decrease: Mock<'a>,
    ready: Mock<'a>,
}

impl OakOrder<'_> {
    fn mock(server: &MockServer) -> OakOrder<'_> {
        OakOrder {
            list: first_page_mock(server, &oak_order()),
            decrease: decrease_mock(server),
            ready: ready_mock(server),
        }
    }

    /// One list call (one order is less than a page: no second page), one decrease,
    /// one status update.
    fn assert_one_cycle(&self) {
        self.list.assert_calls(1);
        self.decrease.assert_calls(1);
        self.ready.assert_calls(1);
    }
}

// ---------------------------------------------------------------- help

#[test]
fn help_lists_every_variable_and_the_exit_codes() {
    let out = run(cmd().arg("--help"));
    assert_exit(&out, 0);
    let help = text(&out.stdout);
    for var in [
        "API_URL_ORDERS",
        "API_URL_STOCKS",
        "ERROR_RATE",
        "LOG_LEVEL",
        "HTTP_TIMEOUT_SECONDS",
        "DECREASE_TIMEOUT_SECONDS",
        "MAX_RETRIES",
        "PAGE_SIZE",
        "MAX_ORDERS_PER_CYCLE",
        "DRY_RUN",
    ] {
        assert!(help.contains(var), "--help does not mention {var}:\n{help}");
    }
    assert!(help.contains("Exit codes:"), "{help}");
    for line in [
        "  0  done",
        "  1  work left",
        "  2  usage or configuration error",
    ] {
        assert!(help.contains(line), "--help lacks {line:?}:\n{help}");
    }

    let out = run(cmd().args(["run", "--help"]));
    assert_exit(&out, 0);
    let help = text(&out.stdout);
    assert!(help.contains("INTERVAL_SECONDS"), "{help}");
    assert!(
        help.contains("API_URL_ORDERS"),
        "global options shown: {help}"
    );

    let out = run(cmd().args(["once", "--help"]));
    assert_exit(&out, 0);
    assert!(text(&out.stdout).contains("Exit codes:"));
}

#[test]
fn help_has_headings_examples_and_the_otel_variables_and_fits_the_width() {
    let out = run(cmd().env("COLUMNS", "80").arg("--help"));
    assert_exit(&out, 0);
    let help = text(&out.stdout);
    for heading in [
        "\nServices:\n",
        "\nCycle:\n",
        "\nFiles:\n",
        "\nLogging:\n",
        "\nTelemetry (environment only",
        "\nExamples:\n",
        "\nExit codes:\n",
        "  3  another run holds the state file",
    ] {
        assert!(help.contains(heading), "--help lacks {heading:?}:\n{help}");
    }
    for var in [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        "OTEL_SERVICE_NAME",
        "OTEL_RESOURCE_ATTRIBUTES",
        "OTEL_EXPORTER_OTLP_HEADERS",
        "OTEL_SDK_DISABLED",
    ] {
        assert!(help.contains(var), "--help lacks {var}:\n{help}");
    }
    // Wrapped to the terminal's width (COLUMNS when there is no terminal), at most 100.
    let widest = |help: &str| help.lines().map(|l| l.chars().count()).max().unwrap_or(0);
    assert!(widest(&help) <= 80, "{help}");
    for args in [
        &["--help"][..],
        &["run", "--help"],
        &["healthcheck", "--help"],
    ] {
        let out = run(cmd().args(args));
        assert!(widest(&text(&out.stdout)) <= 100, "{args:?}: {out:?}");
    }
    // No variable is set here: no `[env: NAME=]` that looks like a broken value.
    assert!(!help.contains("=]"), "{help}");
    let flat = help.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(flat.contains("[env: API_URL_ORDERS]"), "{help}");
    // A variable that is set shows its value (redacted).
    let out = run(cmd()
        .env("API_URL_ORDERS", "http://u:secret@order:5000")
        .arg("--help"));
    let help = text(&out.stdout);
    assert!(
        help.contains("API_URL_ORDERS=http://REDACTED:REDACTED@order:5000]"),
        "{help}"
    );
    assert!(!help.contains("secret"), "{help}");
}

#[test]
fn healthcheck_help_shows_only_its_own_options() {
    let out = run(cmd().args(["healthcheck", "--help"]));
    assert_exit(&out, 0);
    let help = text(&out.stdout);
    for own in [
        "--max-age",
        "--max-cut-off",
        "--heartbeat-file",
        "Exit codes:",
    ] {
        assert!(help.contains(own), "{own} missing:\n{help}");
    }
    for worker in [
        "--orders-url",
        "--error-rate",
        "--interval",
        "--state-file",
        "--log-level",
        "--dry-run",
    ] {
        assert!(!help.contains(worker), "{worker} shown:\n{help}");
    }
    // `once` does not show `--interval`, which only `run` reads.
    let out = run(cmd().args(["once", "--help"]));
    assert!(!text(&out.stdout).contains("--interval"), "{out:?}");
}

#[test]
fn a_typo_gets_a_suggestion() {
    for (args, tip) in [
        (&["onec"][..], "a similar subcommand exists: 'once'"),
        (
            &["--eror-rate", "1", "once"],
            "a similar argument exists: '--error-rate'",
        ),
    ] {
        let out = run(cmd().args(args));
        assert_exit(&out, 2);
        assert!(text(&out.stderr).contains(tip), "{args:?}: {out:?}");
    }
}

// ---------------------------------------------------------------- configuration errors

const URL: &str = "an http:// or https:// URL with a host, such as http://order:5000";
const PORT: &str = "a port from 1 to 65535 after the host, such as http://order:5000";
const TIMEOUT: &str = "a number of seconds from 0.1 to 86400";

/// A bad value for a setting: (command, variable, flag, value, what the message says
/// is expected).
const BAD_SETTINGS: [(&str, &str, &str, &str, &str); 25] = [
    (
        "once",
        "ERROR_RATE",
        "--error-rate",
        "1.5",
        "a number from 0.0 to 1.0",
    ),
    (
        "once",
        "ERROR_RATE",
        "--error-rate",
        "abc",
        "a number from 0.0 to 1.0",
    ),
    (
        "run",
        "INTERVAL_SECONDS",
        "--interval",
        "0",
        "a positive number of seconds",
    ),
    (
        "run",
        "INTERVAL_SECONDS",
        "--interval",
        "-1",
        "a positive number of seconds",
    ),
    ("once", "API_URL_ORDERS", "--orders-url", "ftp://x", URL),
    ("once", "API_URL_STOCKS", "--stocks-url", "ftp://x", URL),
    (
        "once",
        "API_URL_ORDERS",
        "--orders-url",
        "http://order:notaport",
        PORT,
    ),
    (
        "once",
        "API_URL_STOCKS",
        "--stocks-url",
        "http://stock:65536",
        PORT,
    ),
    (
        "once",
        "API_URL_ORDERS",
        "--orders-url",
        "http://order:5000/#top",
        "a base URL without a #fragment, such as http://order:5000",
    ),
    (
        "once",
        "API_URL_STOCKS",
        "--stocks-url",
        "http://stock:5001?debug=1",
        "a base URL without a ?query (the worker adds its own), such as http://order:5000",
    ),
    ("once", "HTTP_TIMEOUT_SECONDS", "--timeout", "0.05", TIMEOUT),
    ("once", "HTTP_TIMEOUT_SECONDS", "--timeout", "0", TIMEOUT),
    (
        "once",
        "DECREASE_TIMEOUT_SECONDS",
        "--decrease-timeout",
        "0.01",
        TIMEOUT,
    ),
    // Below the default HTTP timeout of 5 s.
    (
        "once",
        "DECREASE_TIMEOUT_SECONDS",
        "--decrease-timeout",
        "4",
        "a number of seconds no smaller than --timeout (HTTP_TIMEOUT_SECONDS)",
    ),
    (
        "once",
        "MAX_ORDERS_PER_CYCLE",
        "--max-orders-per-cycle",
        "0",
        "a whole number, 1 or more",
    ),
    (
        "once",
        "PAGE_SIZE",
        "--page-size",
        "0",
        "a whole number from 1 to 10000",
    ),
    (
        "once",
        "LOG_LEVEL",
        "--log-level",
        "loud",
        "one of error, warn, info, debug, trace",
    ),
    (
        "once",
        "SHARD",
        "--shard",
        "3/3",
        "INDEX/COUNT with 0 <= INDEX < COUNT, such as 2/4",
    ),
    (
        "run",
        "SHARD",
        "--shard",
        "one/two",
        "INDEX/COUNT with 0 <= INDEX < COUNT, such as 2/4",
    ),
    ("once", "LOG_FORMAT", "--log-format", "yaml", "text or json"),
    (
        "healthcheck",
        "HEALTHCHECK_MAX_CUT_OFF_SECONDS",
        "--max-cut-off",
        "-5",
        "a positive number of seconds",
    ),
    ("once", "HTTP_TIMEOUT_SECONDS", "--timeout", "-2", TIMEOUT),
    ("once", "HTTP_TIMEOUT_SECONDS", "--timeout", "inf", TIMEOUT),
    (
        "once",
        "API_URL_ORDERS",
        "--orders-url",
        "http://order:0",
        PORT,
    ),
    (
        "once",
        "API_URL_ORDERS",
        "--orders-url",
        "http://[::1]:70000",
        PORT,
    ),
];

#[test]
fn each_bad_setting_exits_2_with_one_line_naming_it_and_sends_nothing() {
    let server = MockServer::start();
    let any = catch_all(&server);
    let url = server.base_url();
    for (command, var, flag, value, expected) in BAD_SETTINGS {
        for from_env in [true, false] {
            let mut cmd = cmd();
            // Both services on the mock; the bad variable replaces one of these, and a
            // flag wins over its variable.
            cmd.env("API_URL_ORDERS", &url).env("API_URL_STOCKS", &url);
            if from_env {
                cmd.env(var, value).arg(command);
            } else {
                cmd.args([command, flag, value]);
            }
            let case = if from_env {
                format!("{var}={value} {command}")
            } else {
                format!("{command} {flag} {value}")
            };
            let out = run(&mut cmd);
            assert_eq!(out.status.code(), Some(2), "{case}: {out:?}");
            assert!(out.stdout.is_empty(), "{case}: {out:?}");
            let stderr = text(&out.stderr);
            // A URL's query or fragment is not echoed (a token may travel there).
            let shown = match value.find(['?', '#']) {
                Some(i) if value.starts_with("http") => {
                    format!("{}{}REDACTED", &value[..i], &value[i..=i])
                }
                _ => value.to_string(),
            };
            assert_eq!(
                stderr.lines().collect::<Vec<_>>(),
                [format!(
                    "ordermanagement: error: invalid {flag} ({var}) {shown:?}: expected {expected}"
                )],
                "{case}"
            );
        }
    }
    any.assert_calls(0);
}

#[test]
fn an_unknown_flag_is_a_usage_error_and_sends_nothing() {
    let server = MockServer::start();
    let any = catch_all(&server);
    let url = server.base_url();
    let out = run(with_services(&url, &url).args(["once", "--frobnicate"]));
    assert_exit(&out, 2);
    assert!(text(&out.stderr).contains("--frobnicate"), "{out:?}");

    let out = run(with_services(&url, &url).arg("twice"));
    assert_exit(&out, 2);

    let out = run(&mut with_services(&url, &url));
    assert_exit(&out, 2); // a command is required
    any.assert_calls(0);
}

// ---------------------------------------------------------------- once: exit 0

#[test]
fn once_with_nothing_registered_exits_0() {
    let server = MockServer::start();
    let list = server.mock(|when, then| {
        when.method(Method::GET)
            .path("/orders/status/registered")
            .query_param("skip", "0")
            .query_param("limit", "500");
        then.status(200)
            .header("content-type", "application/json")
            .body("[]");
    });
    let url = server.base_url();
    let out = run(with_services(&url, &url).arg("once"));
    assert_exit(&out, 0);
    list.assert_calls(1);
}

#[test]
fn once_takes_the_stock_of_an_order_sets_it_ready_and_exits_0() {
    let server = MockServer::start();
    let oak = OakOrder::mock(&server);
    let url = server.base_url();
    let out = run(with_services(&url, &url).arg("once"));
    assert_exit(&out, 0);
    oak.assert_one_cycle();
}

// ---------------------------------------------------------------- once: exit 1

#[test]
fn once_exits_1_when_the_order_list_cannot_be_fetched() {
    let orders = format!("http://127.0.0.1:{}", closed_port());
    let server = MockServer::start();
    let any = catch_all(&server);
    let out = run(with_services(&orders, &server.base_url()).args(["once", "--max-retries", "0"]));
    assert_exit(&out, 1);
    any.assert_calls(0); // no stock taken without a list
}

#[test]
fn once_exits_1_and_leaves_the_order_registered_when_the_stock_service_fails() {
    let server = MockServer::start();
    let list = first_page_mock(&server, &oak_order());
    let decrease = server.mock(|when, then| {
        when.method(Method::POST).path("/stocks/decrease");
        then.status(502).body("Bad Gateway");
    });
    let any_put = server.mock(|when, then| {
        when.method(Method::PUT);
        then.status(200);
    });
    let url = server.base_url();
    let out = run(with_services(&url, &url).args(["once", "--max-retries", "1"]));
    assert_exit(&out, 1);
    list.assert_calls(1);
    decrease.assert_calls(2); // the attempt and its one retry
    any_put.assert_calls(0); // still registered
}

// ---------------------------------------------------------------- run: signals

/// `run --interval 30` with nothing registered: after its first cycle, `signal` must
/// stop it with exit 0 within [`STOP_LIMIT`].
fn run_stops_on(signal: libc::c_int) {
    let server = MockServer::start();
    let list = first_page_mock(&server, &json!([]));
    let url = server.base_url();
    let mut child = Running::start(with_services(&url, &url).args(["run", "--interval", "30"]));

    let deadline = Instant::now() + RUN_LIMIT;
    while list.calls() == 0 {
        if let Some(status) = child.child.try_wait().expect("try_wait") {
            panic!("run exited before its first cycle: {status:?}");
        }
        assert!(
            Instant::now() < deadline,
            "no list call within {RUN_LIMIT:?}"
        );
        thread::sleep(Duration::from_millis(10));
    }

    child.signal(signal);
    let sent = Instant::now();
    let out = child
        .wait_for(STOP_LIMIT)
        .unwrap_or_else(|| panic!("still running {STOP_LIMIT:?} after signal {signal}"));
    assert_exit(&out, 0);
    assert!(sent.elapsed() < STOP_LIMIT);
    list.assert_calls(1); // stopped during the 30 s sleep, not after another cycle
}

#[test]
fn run_stops_on_sigterm_with_exit_0() {
    run_stops_on(libc::SIGTERM);
}

#[test]
fn run_stops_on_sigint_with_exit_0() {
    run_stops_on(libc::SIGINT);
}

#[test]
fn run_stops_on_sighup_sigquit_and_sigusr1_with_exit_0() {
    for signal in [libc::SIGHUP, libc::SIGQUIT, libc::SIGUSR1] {
        run_stops_on(signal);
    }
}

/// Stand-in services whose every reply takes 700 ms, two oak orders registered, and a
/// `run` worker on them; returns once the first order's decrease has taken the stock
/// and its status update is under way (the stand-in holds it for 700 ms).
fn mid_order() -> (standin::Stack, [u64; 2], Running) {
    let stack = standin::Stack::start(0, 0, standin::Knobs::default()).expect("stand-ins");
    stack.add_stock("oak", 100);
    let ids = [stack.add_order("oak", 3), stack.add_order("oak", 4)];
    stack.set_knobs(standin::Knobs {
        delay: Duration::from_millis(700),
        ..standin::Knobs::default()
    });
    let child = Running::start(
        with_services(&stack.orders_url(), &stack.stocks_url()).args([
            "--max-retries",
            "0",
            "run",
            "--interval",
            "30",
        ]),
    );
    let deadline = Instant::now() + RUN_LIMIT;
    while stack.ledger().is_empty() {
        assert!(
            Instant::now() < deadline,
            "no decrease within {RUN_LIMIT:?}"
        );
        thread::sleep(Duration::from_millis(5));
    }
    (stack, ids, child)
}

fn status(stack: &standin::Stack, id: u64) -> String {
    stack
        .orders()
        .into_iter()
        .find(|o| o.id == id)
        .map(|o| o.status)
        .unwrap_or_default()
}

/// The first `signal` mid-order: that order is finished (stock taken once, status set
/// ready), the next one is not started, exit 0.
fn a_stop_signal_finishes_the_order_in_flight(signal: libc::c_int, name: &str) {
    let (stack, [first, second], mut child) = mid_order();
    child.signal(signal);
    let out = child
        .wait_for(Duration::from_secs(5))
        .unwrap_or_else(|| panic!("still running 5 s after {name}"));
    assert_exit(&out, 0);
    assert_eq!(
        stack.ledger().len(),
        1,
        "only the first order's stock is taken"
    );
    assert_eq!(
        status(&stack, first),
        "ready",
        "the order in flight is finished"
    );
    assert_eq!(
        status(&stack, second),
        "registered",
        "no new order after {name}"
    );
    assert!(
        text(&out.stderr).contains(&format!("stopped by {name}")),
        "{}",
        text(&out.stderr)
    );
    assert!(stack.violations().is_empty(), "{:?}", stack.violations());
}

#[test]
fn sighup_mid_order_finishes_that_order_and_starts_no_other() {
    a_stop_signal_finishes_the_order_in_flight(libc::SIGHUP, "SIGHUP");
}

#[test]
fn sigquit_mid_order_finishes_that_order_and_starts_no_other() {
    a_stop_signal_finishes_the_order_in_flight(libc::SIGQUIT, "SIGQUIT");
}

/// A second `signal` exits at once with 128 + its number, and starts nothing new.
fn a_second_stop_signal_exits_at_once(signal: libc::c_int) {
    let (stack, [_, second], mut child) = mid_order();
    child.signal(signal);
    thread::sleep(Duration::from_millis(100));
    assert!(
        child.child.try_wait().expect("try_wait").is_none(),
        "the first signal must not cut the order short"
    );
    child.signal(signal);
    let sent = Instant::now();
    let out = child
        .wait_for(Duration::from_secs(1))
        .expect("the second signal exits at once");
    assert_exit(&out, 128 + signal);
    assert!(sent.elapsed() < Duration::from_secs(1));
    // Give a stray decrease time to arrive: there must be none.
    thread::sleep(Duration::from_millis(800));
    assert_eq!(stack.ledger().len(), 1);
    assert_eq!(status(&stack, second), "registered");
}

#[test]
fn a_second_sighup_exits_129_at_once() {
    a_second_stop_signal_exits_at_once(libc::SIGHUP);
}

#[test]
fn a_second_sigquit_exits_131_at_once() {
    a_second_stop_signal_exits_at_once(libc::SIGQUIT);
}

// ---------------------------------------------------------------- where options come from

#[test]
fn the_environment_configures_a_whole_cycle() {
    let server = MockServer::start();
    let oak = OakOrder::mock(&server);
    let url = server.base_url();
    let out = run(cmd()
        .env("API_URL_ORDERS", format!("{url}/")) // the trailing slash is dropped
        .env("API_URL_STOCKS", &url)
        .env("ERROR_RATE", "0")
        .env("HTTP_TIMEOUT_SECONDS", "2")
        .env("DECREASE_TIMEOUT_SECONDS", "2")
        .arg("once"));
    assert_exit(&out, 0);
    oak.assert_one_cycle();
}

#[test]
fn options_may_stand_before_the_command() {
    let server = MockServer::start();
    let oak = OakOrder::mock(&server);
    let url = server.base_url();
    let out = run(cmd()
        .args([
            "--error-rate",
            "0",
            "--orders-url",
            &url,
            "--stocks-url",
            &url,
        ])
        .args(["--timeout", "2", "--decrease-timeout", "2", "once"]));
    assert_exit(&out, 0);
    oak.assert_one_cycle();
}

#[test]
fn interval_may_stand_before_run_too() {
    let server = MockServer::start();
    let list = first_page_mock(&server, &json!([]));
    let url = server.base_url();
    let mut child = Running::start(with_services(&url, &url).args(["--interval", "0.2", "run"]));
    let deadline = Instant::now() + RUN_LIMIT;
    // A cycle every 0.2 s, not every 5 s (the default).
    while list.calls() < 3 {
        assert!(
            Instant::now() < deadline,
            "fewer than 3 cycles in {RUN_LIMIT:?}"
        );
        thread::sleep(Duration::from_millis(20));
    }
    child.signal(libc::SIGTERM);
    assert_exit(&child.wait_for(STOP_LIMIT).expect("stopped"), 0);
}

#[test]
fn an_option_before_the_command_is_applied_not_just_accepted() {
    // ERROR_RATE 1: every stock step fails by simulation, so nothing reaches the Stock
    // Service (at the default 0.1, this order's decrease would be sent); the status
    // step's simulated failure costs one attempt, then `blocked` is set.
    let server = MockServer::start();
    let list = first_page_mock(&server, &oak_order());
    let any_post = server.mock(|when, then| {
        when.method(Method::POST);
        then.status(200);
    });
    let blocked = server.mock(|when, then| {
        when.method(Method::PUT)
            .path("/orders/1")
            .json_body(json!({"order_status": "blocked"}));
        then.status(200);
    });
    let url = server.base_url();
    let out = run(cmd()
        .args(["--error-rate", "1", "--orders-url", &url])
        .args(["--stocks-url", &url, "--timeout", "2", "once"]));
    assert_exit(&out, 0);
    list.assert_calls(1);
    any_post.assert_calls(0);
    blocked.assert_calls(1);
    assert!(
        text(&out.stderr).contains("simulated failure at the status step (ERROR_RATE 1)"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn dry_run_is_read_like_the_other_settings() {
    let server = MockServer::start();
    let any = catch_all(&server);
    let url = server.base_url();
    let refused = "ordermanagement: error: invalid --dry-run (DRY_RUN) \"maybe\": expected true or false (or empty)";
    let mut from_env = with_services(&url, &url);
    let out = run(from_env.env("DRY_RUN", "maybe").arg("once"));
    assert_exit(&out, 2);
    assert_eq!(text(&out.stderr).lines().collect::<Vec<_>>(), [refused]);
    let out = run(with_services(&url, &url).args(["once", "--dry-run=maybe"]));
    assert_exit(&out, 2);
    assert_eq!(text(&out.stderr).lines().collect::<Vec<_>>(), [refused]);
    any.assert_calls(0);

    // An empty DRY_RUN (as compose files write it) means off; a dry run changes nothing.
    let server = MockServer::start();
    let url = server.base_url();
    let oak = OakOrder::mock(&server);
    let out = run(with_services(&url, &url)
        .env("DRY_RUN", "")
        .env("ERROR_RATE", "0")
        .arg("once"));
    assert_exit(&out, 0);
    oak.decrease.assert_calls(1);
    oak.ready.assert_calls(1);
    let out = run(with_services(&url, &url).env("DRY_RUN", "true").arg("once"));
    assert_exit(&out, 0);
    oak.list.assert_calls(2);
    oak.decrease.assert_calls(1);
    oak.ready.assert_calls(1);
}

#[test]
fn a_second_sigterm_exits_at_once_while_a_decrease_is_in_flight() {
    let server = MockServer::start();
    first_page_mock(&server, &oak_order());
    let decrease = server.mock(|when, then| {
        when.method(Method::POST).path("/stocks/decrease");
        then.status(200).delay(Duration::from_secs(15)).body("{}");
    });
    let url = server.base_url();
    let mut child = Running::start(with_services(&url, &url).args([
        "run",
        "--interval",
        "30",
        "--decrease-timeout",
        "20",
    ]));
    // Wait until the decrease is in flight (httpmock counts it before the delay).
    let deadline = Instant::now() + RUN_LIMIT;
    while decrease.calls() == 0 {
        assert!(
            Instant::now() < deadline,
            "no decrease within {RUN_LIMIT:?}"
        );
        thread::sleep(Duration::from_millis(10));
    }
    child.signal(libc::SIGTERM);
    // The first signal lets the order in flight finish: the worker keeps waiting.
    thread::sleep(Duration::from_millis(300));
    assert!(
        child.child.try_wait().expect("try_wait").is_none(),
        "the first SIGTERM must not cut the order short"
    );
    child.signal(libc::SIGTERM);
    let sent = Instant::now();
    let out = child
        .wait_for(Duration::from_secs(1))
        .expect("the second SIGTERM exits at once");
    assert_exit(&out, 143);
    assert!(sent.elapsed() < Duration::from_secs(1));
    assert_eq!(
        decrease.calls(),
        1,
        "the decrease was in flight when the signals came"
    );
}

// ---------------------------------------------------------------- heartbeat and healthcheck

/// A fresh directory under the system temp dir, removed when dropped.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("om-cli-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn healthcheck(beat: &std::path::Path, extra: &[&str]) -> Output {
    let mut cmd = cmd();
    cmd.env("HEARTBEAT_FILE", beat)
        .arg("healthcheck")
        .args(extra);
    run(&mut cmd)
}

#[test]
fn healthcheck_never_blocks_on_what_sits_at_its_path() {
    let dir = TempDir::new("healthcheck-fifo");
    let fifo = dir.0.join("beat");
    let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    // A FIFO with no writer: a plain open for reading would wait forever.
    for path in [
        fifo.as_path(),
        dir.0.as_path(),
        std::path::Path::new("/dev/zero"),
    ] {
        let started = Instant::now();
        let out = healthcheck(path, &[]);
        assert_exit(&out, 1);
        assert!(
            text(&out.stdout).contains("not a regular file"),
            "{path:?}: {}",
            text(&out.stdout)
        );
        assert!(started.elapsed() < Duration::from_secs(5), "{path:?}");
    }
}

#[test]
fn healthcheck_follows_the_heartbeat_of_a_running_worker() {
    let dir = TempDir::new("healthcheck");
    let beat = dir.0.join("beat");
    let server = MockServer::start();
    let oak = OakOrder::mock(&server);
    let url = server.base_url();

    // No worker yet: no heartbeat, unhealthy.
    let out = healthcheck(&beat, &[]);
    assert_exit(&out, 1);
    assert!(
        text(&out.stdout).starts_with("unhealthy: no heartbeat at"),
        "{out:?}"
    );

    let mut child = Running::start(
        with_services(&url, &url)
            .env("HEARTBEAT_FILE", &beat)
            .args(["run", "--interval", "0.2"]),
    );
    let deadline = Instant::now() + RUN_LIMIT;
    while oak.ready.calls() == 0 || oak.list.calls() < 3 {
        assert!(Instant::now() < deadline, "no cycles within {RUN_LIMIT:?}");
        thread::sleep(Duration::from_millis(20));
    }
    let out = healthcheck(&beat, &["--max-age", "1"]);
    assert_exit(&out, 0);
    let line = text(&out.stdout);
    assert!(
        line.starts_with("healthy: last beat 0 s ago (max 1 s"),
        "{line}"
    );
    assert!(line.contains("last cycle ended"), "{line}");
    assert!(line.contains("; Order Service answered "), "{line}");
    // Without --max-age, the worker's own figure from the file.
    let out = healthcheck(&beat, &[]);
    assert_exit(&out, 0);

    child.signal(libc::SIGTERM);
    let out = child.wait_for(STOP_LIMIT).expect("stopped after SIGTERM");
    assert_exit(&out, 0);
    // The mock lists the same order every cycle; the worker remembers its decision:
    // one decrease in all, its status sent again in later cycles.
    assert_eq!(oak.decrease.calls(), 1);
    // Stopped: unhealthy at once, however fresh the last beat.
    let out = healthcheck(&beat, &[]);
    assert_exit(&out, 1);
    assert!(
        text(&out.stdout).starts_with("unhealthy: stopped at "),
        "{out:?}"
    );
    // The judgement of a beat that just ages: the stop and the exit taken out of the
    // file, and a pid that still runs (this test's) put in.
    let mut last: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&beat).expect("the last beat")).expect("JSON");
    assert_eq!(last["stopped"]["signal"], "SIGTERM", "{last}");
    assert_eq!(last["exited"]["code"], 0, "{last}");
    let fields = last.as_object_mut().expect("an object");
    fields.remove("stopped");
    fields.remove("exited");
    fields.insert("pid".into(), std::process::id().into());
    std::fs::write(&beat, last.to_string()).expect("rewrite the beat");
    thread::sleep(Duration::from_millis(1_200));
    let out = healthcheck(&beat, &["--max-age", "1"]);
    assert_exit(&out, 1);
    assert!(
        text(&out.stdout).starts_with("unhealthy: no progress for 1 s"),
        "{out:?}"
    );
    // From the environment too, and a silent Order Service only with a cut-off.
    let mut cmd = cmd();
    cmd.env("HEARTBEAT_FILE", &beat)
        .env("HEALTHCHECK_MAX_AGE_SECONDS", "1")
        .arg("healthcheck");
    assert_exit(&run(&mut cmd), 1);
    assert_exit(&healthcheck(&beat, &["--max-age", "60"]), 0);
    let out = healthcheck(&beat, &["--max-age", "60", "--max-cut-off", "1"]);
    assert_exit(&out, 1);
    assert!(
        text(&out.stdout).contains("Order Service silent for 1 s"),
        "{out:?}"
    );
}

#[test]
fn healthcheck_after_a_clean_stop_says_when_and_on_which_signal_and_exits_1() {
    for (signal, name) in [(libc::SIGINT, "SIGINT"), (libc::SIGTERM, "SIGTERM")] {
        let dir = TempDir::new(&format!("healthcheck-stop-{name}"));
        let beat = dir.0.join("beat");
        let server = MockServer::start();
        let list = first_page_mock(&server, &json!([]));
        let url = server.base_url();
        let mut child = Running::start(
            with_services(&url, &url)
                .env("HEARTBEAT_FILE", &beat)
                .args(["run", "--interval", "30"]),
        );
        let deadline = Instant::now() + RUN_LIMIT;
        while list.calls() == 0 {
            assert!(Instant::now() < deadline, "no cycle within {RUN_LIMIT:?}");
            thread::sleep(Duration::from_millis(10));
        }
        // Healthy while it runs (the first cycle's beat may still be on its way).
        while healthcheck(&beat, &[]).status.code() != Some(0) {
            assert!(Instant::now() < deadline, "never healthy");
            thread::sleep(Duration::from_millis(20));
        }
        let before = std::time::SystemTime::now();
        child.signal(signal);
        let out = child.wait_for(STOP_LIMIT).expect("stopped");
        assert_exit(&out, 0);
        let out = healthcheck(&beat, &[]);
        assert_exit(&out, 1);
        let line = text(&out.stdout);
        // "unhealthy: stopped at 2026-12-05T06:40:01.123Z (SIGINT): last beat 0 s ago ..."
        let at = line
            .strip_prefix("unhealthy: stopped at ")
            .and_then(|rest| rest.split_once(' '))
            .map(|(at, rest)| (at.to_string(), rest.to_string()));
        let Some((at, rest)) = at else {
            panic!("{line}")
        };
        assert!(rest.starts_with(&format!("({name}): last beat ")), "{line}");
        let earliest = ordermanagement::logging::rfc3339_millis(before - Duration::from_millis(1));
        assert!(
            at.len() == 24 && at.ends_with('Z') && at >= earliest,
            "{line}"
        );
    }
}

#[test]
fn a_heartbeat_file_that_cannot_be_written_stops_the_worker_at_start() {
    let server = MockServer::start();
    let any = catch_all(&server);
    let url = server.base_url();
    let out = run(with_services(&url, &url)
        .env("HEARTBEAT_FILE", "/nonexistent-dir/beat")
        .arg("once"));
    assert_exit(&out, 2);
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("invalid --heartbeat-file (HEARTBEAT_FILE) \"/nonexistent-dir/beat\""),
        "{stderr}"
    );
    // Never renamed over something that is not a regular file.
    let out = run(with_services(&url, &url)
        .env("HEARTBEAT_FILE", "/dev/null")
        .arg("once"));
    assert_exit(&out, 2);
    assert!(
        text(&out.stderr).contains("it is a device, not a regular file"),
        "{out:?}"
    );
    assert!(
        std::fs::metadata("/dev/null").is_ok_and(|m| !m.is_file()),
        "/dev/null untouched"
    );
    any.assert_calls(0);
    // Empty turns the heartbeat off; healthcheck then has nothing to read.
    let out = run(cmd().env("HEARTBEAT_FILE", "").arg("healthcheck"));
    assert_exit(&out, 2);
    let out = run(cmd().args(["healthcheck", "--max-age", "soon"]));
    assert_exit(&out, 2);
    assert!(
        text(&out.stderr).contains("invalid --max-age (HEALTHCHECK_MAX_AGE_SECONDS) \"soon\""),
        "{out:?}"
    );
}

#[test]
fn healthcheck_reads_only_its_own_settings() {
    // A fresh beat, written by hand in the heartbeat's format.
    let dir = TempDir::new("healthcheck-own");
    let beat = dir.0.join("beat");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as u64;
    let fresh = json!({
        "pid": 1,
        "started_ms": now,
        "at_ms": now,
        "stale_after_s": 60,
        "orders_answered_ms": now,
        "last_cycle": null,
    });
    std::fs::write(&beat, fresh.to_string()).expect("write the beat");
    // Worker settings a probe does not use, each bad, from the environment or a flag.
    for (var, flag, value) in [
        ("ERROR_RATE", "--error-rate", "abc"),
        ("API_URL_ORDERS", "--orders-url", "ftp://x"),
        ("LOG_LEVEL", "--log-level", "loud"),
        ("PAGE_SIZE", "--page-size", "0"),
        ("SHARD", "--shard", "3/3"),
    ] {
        let out = run(cmd()
            .env("HEARTBEAT_FILE", &beat)
            .env(var, value)
            .arg("healthcheck"));
        assert_exit(&out, 0);
        assert!(
            text(&out.stdout).starts_with("healthy: "),
            "{var}={value}: {out:?}"
        );
        assert!(!text(&out.stderr).contains(var), "{var}={value}: {out:?}");
        let out = run(cmd()
            .env("HEARTBEAT_FILE", &beat)
            .args(["healthcheck", flag, value]));
        assert_exit(&out, 0);
    }
}

// ---------------------------------------------------------------- JSON log lines

#[test]
fn json_log_lines_stay_valid_json_whatever_the_services_answer() {
    let nasty_html: &[u8] =
        b"<html><body>\xff\xfe not UTF-8, a \"quote\",\na newline, \x01\x1b[31m</body></html>";
    let server = ScriptServer::start(move |r: &Request| {
        match (r.method.as_str(), r.path()) {
            ("GET", _) if r.query("skip") == Some(0) => reply(
                200,
                json!([
                    order_json(1, "oak", 2),
                    {"id": 2, "wood_type": "oak\"\n\u{7}<b>x</b>\u{2028}", "quantity": 1, "order_status": "registered"},
                    order_json(3, "oak", 1),
                    order_json(4, "pine", 9),
                    order_json(5, "elm", 1),
                ])
                .to_string(),
            ),
            ("GET", _) => reply(200, "[]"),
            ("POST", _) => match r.header("Idempotency-Key").unwrap_or_default() {
                "order-1" => reply(500, nasty_html),
                "order-4" => reply(400, &br#"{"error": "not enough \"pine\"\t\u0000left"}"#[..]),
                "order-5" => reply(200, &b"\xc3\x28 {not json"[..]),
                _ => reply(200, r#"{"wood_type": "oak", "quantity": 5}"#),
            },
            // (A 404 page there would stop the cycle as a wrong URL before order 4.)
            ("PUT", "/orders/3") => reply(502, "<h1>Bad Gateway</h1>\r\n\"gone\"\u{0}"),
            _ => reply(200, "{}"),
        }
    });
    let url = server.url();
    let out = run(with_services(&url, &url)
        .env("LOG_FORMAT", "json")
        .env("LOG_LEVEL", "debug")
        // Order 3's status update fails on every attempt: pending, and `once` waits for it
        // only this long before naming it.
        .args(["--max-retries", "0", "--pending-deadline", "0.5", "once"]));
    assert_exit(&out, 1); // orders left registered or pending
    let stderr = text(&out.stderr);
    let mut messages = String::new();
    for line in stderr.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"));
        assert!(
            v["timestamp"]
                .as_str()
                .is_some_and(|t| t.ends_with('Z') && t.len() == 24),
            "{line}"
        );
        assert!(
            ["ERROR", "WARN", "INFO", "DEBUG", "TRACE"].contains(&v["level"].as_str().unwrap()),
            "{line}"
        );
        messages.push_str(v["message"].as_str().unwrap());
        messages.push('\n');
    }
    // The replies' content did reach the lines.
    for seen in [
        "<html><body>",
        "\u{fffd}",
        "\"quote\"",
        "<h1>Bad Gateway</h1>",
        "pine",
        "<b>x</b>",
    ] {
        assert!(messages.contains(seen), "{seen:?} in:\n{messages}");
    }
    assert!(stderr.lines().count() >= 6, "{stderr}");
}

#[test]
fn a_state_file_in_a_missing_directory_is_named_as_given_once() {
    let out = run(with_services("http://127.0.0.1:9", "http://127.0.0.1:9")
        .env("STATE_FILE", "/nonexistent-om-dir/state.jsonl")
        .arg("once"));
    assert_exit(&out, 2);
    let stderr = text(&out.stderr);
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("/nonexistent-om-dir"))
        .collect();
    assert_eq!(
        lines,
        [
            "ordermanagement: error: state file /nonexistent-om-dir/state.jsonl: directory \
             /nonexistent-om-dir does not exist: create it (on a volume that outlives the run)"
        ],
        "{stderr}"
    );
}

// ---------------------------------------------------------------- closed stdout or stderr

/// The end of a pipe whose read end is already closed: every write to it fails with
/// EPIPE (SIGPIPE is ignored by Rust programs), before the child has written anything.
fn broken_pipe() -> std::process::Stdio {
    use std::os::fd::FromRawFd;
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills `fds` with two new descriptors; close-on-exec keeps them out
    // of the other tests' children (the child gets its copy through dup2).
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: the read end is ours and closed once; the write end is owned from here.
    unsafe {
        libc::close(fds[0]);
        std::process::Stdio::from(std::os::fd::OwnedFd::from_raw_fd(fds[1]))
    }
}

/// Which of the child's outputs is the broken pipe.
#[derive(Debug, Clone, Copy)]
enum Broken {
    Stdout,
    Stderr,
}

/// Starts `cmd` with `broken` a pipe nobody reads and the other output collected.
fn start_broken(cmd: &mut Command, broken: Broken) -> Running {
    let (stdout, stderr) = match broken {
        Broken::Stdout => (broken_pipe(), std::process::Stdio::piped()),
        Broken::Stderr => (std::process::Stdio::piped(), broken_pipe()),
    };
    let mut child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .expect("the binary starts");
    // The other output, read so that the child never blocks on it (shown on failure).
    let other: Box<dyn std::io::Read + Send> = match broken {
        Broken::Stdout => Box::new(child.stderr.take().expect("stderr")),
        Broken::Stderr => Box::new(child.stdout.take().expect("stdout")),
    };
    Running::adopt(child, other)
}

/// Asserts a normal exit with `code`: not a signal (SIGABRT is what a panic on a
/// closed output gives, with `panic = "abort"`).
fn assert_exit_status(out: &Output, code: i32, what: &str) {
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        (out.status.code(), out.status.signal()),
        (Some(code), None),
        "{what}: {:?}\n--- the other output\n{}{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
}

#[test]
fn no_command_fails_on_a_closed_stdout_or_stderr() {
    let dir = TempDir::new("closed-output");
    let fresh = dir.0.join("fresh");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as u64;
    // A beat of a live process (this test's), written by hand in the heartbeat's format.
    let beat = json!({
        "pid": std::process::id(),
        "started_ms": now,
        "at_ms": now,
        "stale_after_s": 600,
        "orders_answered_ms": now,
        "last_cycle": null,
    });
    std::fs::write(&fresh, beat.to_string()).expect("write the beat");
    let stack = standin::Stack::start(0, 0, standin::Knobs::default()).expect("stand-ins");
    stack.add_stock("oak", 100);
    for broken in [Broken::Stdout, Broken::Stderr] {
        let id = stack.add_order("oak", 1);
        let cases: [(&str, Command, i32); 7] = [
            ("--help", cmd().tap(|c| c.arg("--help")), 0),
            ("once --help", cmd().tap(|c| c.args(["once", "--help"])), 0),
            ("--version", cmd().tap(|c| c.arg("--version")), 0),
            (
                "healthcheck, healthy",
                cmd().tap(|c| c.env("HEARTBEAT_FILE", &fresh).arg("healthcheck")),
                0,
            ),
            (
                "healthcheck, no heartbeat",
                cmd().tap(|c| {
                    c.env("HEARTBEAT_FILE", dir.0.join("none"))
                        .arg("healthcheck")
                }),
                1,
            ),
            (
                "a bad setting",
                cmd().tap(|c| c.args(["once", "--error-rate", "2"])),
                2,
            ),
            (
                "once",
                with_services(&stack.orders_url(), &stack.stocks_url())
                    .tap(|c| c.args(["--max-retries", "0", "once"])),
                0,
            ),
        ];
        for (what, mut command, code) in cases {
            let what = format!("{what}, {broken:?} closed");
            let out = start_broken(&mut command, broken)
                .wait_for(RUN_LIMIT)
                .unwrap_or_else(|| panic!("{what}: still running after {RUN_LIMIT:?}"));
            assert_exit_status(&out, code, &what);
        }
        assert_eq!(status(&stack, id), "ready", "{broken:?}");
        // `run`: cycles, then stops on SIGTERM with exit 0.
        let id = stack.add_order("oak", 1);
        let mut child = start_broken(
            with_services(&stack.orders_url(), &stack.stocks_url()).args([
                "--max-retries",
                "0",
                "run",
                "--interval",
                "0.1",
            ]),
            broken,
        );
        let deadline = Instant::now() + RUN_LIMIT;
        while status(&stack, id) != "ready" {
            assert!(
                Instant::now() < deadline,
                "{broken:?}: order {id} not ready"
            );
            thread::sleep(Duration::from_millis(20));
        }
        child.signal(libc::SIGTERM);
        let out = child.wait_for(STOP_LIMIT).expect("stopped after SIGTERM");
        assert_exit_status(&out, 0, &format!("run, {broken:?} closed"));
    }
}

/// `cmd.tap(|c| ...)`: a command built in one expression.
trait Tap {
    fn tap(self, f: impl FnOnce(&mut Self) -> &mut Self) -> Self;
}

impl Tap for Command {
    fn tap(mut self, f: impl FnOnce(&mut Self) -> &mut Self) -> Self {
        f(&mut self);
        self
    }
}

// ---------------------------------------------------------------- small mends

#[test]
fn a_quantity_beyond_the_largest_is_named_too_large() {
    let server = MockServer::start();
    let list = first_page_mock(
        &server,
        &json!([{"id": 1, "wood_type": "oak", "quantity": 4_294_967_296_u64, "order_status": "registered"}]),
    );
    let any = catch_all(&server);
    let url = server.base_url();
    let out = run(with_services(&url, &url).arg("once"));
    // Bad data: the order stays registered, exit 1, no stock asked for.
    assert_exit(&out, 1);
    list.assert_calls(1);
    any.assert_calls(0);
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(
            "order 1: skipped, bad data from the Order Service: quantity is too large: \
             4294967296 (at most 4294967295)"
        ),
        "{stderr}"
    );
    assert!(!stderr.contains("not a positive integer"), "{stderr}");
}

#[test]
fn a_refused_url_is_echoed_without_its_query_or_fragment() {
    for (how, mut cmd) in [
        (
            "flag",
            cmd().tap(|c| c.args(["once", "--orders-url", "http://x:5000/?token=SECRET"])),
        ),
        (
            "variable",
            cmd().tap(|c| {
                c.env("API_URL_STOCKS", "http://u:SECRET@s:5001/api#SECRET")
                    .arg("once")
            }),
        ),
        (
            "variable",
            cmd().tap(|c| c.env("API_URL_ORDERS", "x:5000?token=SECRET").arg("once")),
        ),
    ] {
        let out = run(&mut cmd);
        assert_exit(&out, 2);
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        assert!(!stderr.contains("SECRET"), "{how}: {stderr}");
        assert!(!stdout.contains("SECRET"), "{how}: {stdout}");
        assert!(stderr.contains("REDACTED"), "{how}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{how}: {stderr}");
    }
    let out = run(cmd().args(["once", "--orders-url", "http://x:5000/?token=SECRET"]));
    assert_eq!(
        text(&out.stderr),
        "ordermanagement: error: invalid --orders-url (API_URL_ORDERS) \"http://x:5000/?REDACTED\": \
         expected a base URL without a ?query (the worker adds its own), such as http://order:5000\n"
    );
}

#[test]
fn a_flag_given_to_a_command_it_has_no_effect_on_is_refused_but_its_variable_is_not() {
    let server = MockServer::start();
    let list = first_page_mock(&server, &json!([]));
    let url = server.base_url();
    for (args, flag) in [
        (&["once", "--interval", "2"][..], "--interval"),
        (&["--interval", "2", "once"], "--interval"),
        (&["run", "--pending-deadline", "5"], "--pending-deadline"),
    ] {
        let out = run(with_services(&url, &url).args(args));
        assert_exit(&out, 2);
        let stderr = text(&out.stderr);
        assert!(
            stderr.starts_with(&format!("error: {flag} has no effect on `")),
            "{args:?}: {stderr}"
        );
    }
    list.assert_calls(0);
    // The same settings from the environment (a shared env file sets them for every
    // command): taken without a word.
    let out = run(with_services(&url, &url)
        .env("INTERVAL_SECONDS", "2")
        .arg("once"));
    assert_exit(&out, 0);
    assert!(!text(&out.stderr).contains("INTERVAL"), "{out:?}");
    list.assert_calls(1);
    let mut child = Running::start(
        with_services(&url, &url)
            .env("PENDING_DEADLINE_SECONDS", "5")
            .args(["run", "--interval", "30"]),
    );
    let deadline = Instant::now() + RUN_LIMIT;
    while list.calls() < 2 {
        assert!(Instant::now() < deadline, "run made no cycle");
        thread::sleep(Duration::from_millis(10));
    }
    child.signal(libc::SIGTERM);
    let out = child.wait_for(STOP_LIMIT).expect("stopped after SIGTERM");
    assert_exit(&out, 0);
}

// ---------------------------------------------------------------- healthcheck: an ended worker

/// The healthcheck's line on `beat`, with its exit code.
fn health_of(beat: &std::path::Path) -> (Option<i32>, String) {
    let out = healthcheck(beat, &[]);
    (out.status.code(), text(&out.stdout))
}

#[test]
fn healthcheck_says_a_finished_once_exited_with_its_code() {
    let dir = TempDir::new("healthcheck-exited");
    let beat = dir.0.join("beat");
    let server = MockServer::start();
    let list = first_page_mock(&server, &json!([]));
    let url = server.base_url();
    let before = std::time::SystemTime::now();
    let out = run(with_services(&url, &url)
        .env("HEARTBEAT_FILE", &beat)
        .arg("once"));
    assert_exit(&out, 0);
    list.assert_calls(1);
    // Its beat is fresh, but the worker has exited: not healthy.
    let (code, line) = health_of(&beat);
    assert_eq!(code, Some(1), "{line}");
    let Some((at, rest)) = line
        .strip_prefix("unhealthy: exited at ")
        .and_then(|rest| rest.split_once(' '))
    else {
        panic!("{line}")
    };
    let earliest = ordermanagement::logging::rfc3339_millis(before - Duration::from_millis(1));
    assert!(at.len() == 24 && at >= earliest.as_str(), "{line}");
    assert!(rest.starts_with("with code 0: last beat "), "{line}");
    // A `once` that left work: its code, 1.
    let closed = format!("http://127.0.0.1:{}", closed_port());
    let out = run(with_services(&closed, &url)
        .env("HEARTBEAT_FILE", &beat)
        .args(["once", "--max-retries", "0"]));
    assert_exit(&out, 1);
    let (code, line) = health_of(&beat);
    assert_eq!(code, Some(1), "{line}");
    assert!(line.contains(" with code 1: last beat "), "{line}");
}

#[test]
fn healthcheck_says_a_killed_worker_has_ended() {
    if std::fs::read_link("/proc/self/ns/pid").is_err() {
        eprintln!("SKIPPED: no /proc/self/ns/pid here: healthcheck judges the beat's age alone");
        return;
    }
    let dir = TempDir::new("healthcheck-killed");
    let beat = dir.0.join("beat");
    let server = MockServer::start();
    let list = first_page_mock(&server, &json!([]));
    let url = server.base_url();
    let mut child = Running::start(
        with_services(&url, &url)
            .env("HEARTBEAT_FILE", &beat)
            .args(["run", "--interval", "30"]),
    );
    let deadline = Instant::now() + RUN_LIMIT;
    while list.calls() == 0 || health_of(&beat).0 != Some(0) {
        assert!(Instant::now() < deadline, "never healthy");
        thread::sleep(Duration::from_millis(20));
    }
    let pid = child.pid();
    // SIGKILL: no chance to record anything; reaped below.
    child.signal(libc::SIGKILL);
    let out = child.wait_for(STOP_LIMIT).expect("killed");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&out.status),
        Some(libc::SIGKILL)
    );
    let (code, line) = health_of(&beat);
    assert_eq!(code, Some(1), "{line}");
    assert!(
        line.starts_with(&format!(
            "unhealthy: the worker (pid {pid}) has ended without recording an exit"
        )),
        "{line}"
    );
}

/// A heartbeat file at the default path of a shard unlikely to be anyone else's,
/// removed when dropped.
struct ShardBeat {
    shard: String,
    path: std::path::PathBuf,
}

impl ShardBeat {
    fn new() -> ShardBeat {
        let count = 100_003;
        let index = std::process::id() % count;
        let path =
            std::path::PathBuf::from(format!("/tmp/ordermanagement-{index}of{count}.heartbeat"));
        let _ = std::fs::remove_file(&path);
        ShardBeat {
            shard: format!("{index}/{count}"),
            path,
        }
    }
}

impl Drop for ShardBeat {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[test]
fn the_default_heartbeat_of_a_shard_is_its_own_and_healthcheck_finds_it() {
    let beat = ShardBeat::new();
    let (index, count) = beat.shard.split_once('/').expect("INDEX/COUNT");
    let server = MockServer::start();
    let list = first_page_mock(&server, &json!([]));
    let url = server.base_url();
    // The worker and the probe with HEARTBEAT_FILE unset: the default path.
    let mut worker = with_services(&url, &url);
    worker
        .env_remove("HEARTBEAT_FILE")
        .args(["--shard", &beat.shard, "run", "--interval", "30"]);
    let mut child = Running::start(&mut worker);
    let deadline = Instant::now() + RUN_LIMIT;
    while list.calls() == 0 || !beat.path.exists() {
        assert!(Instant::now() < deadline, "no heartbeat at {:?}", beat.path);
        thread::sleep(Duration::from_millis(20));
    }
    // The probe with HEARTBEAT_FILE unset, these variables and these arguments.
    let probe = |vars: &[(&str, &str)], args: &[&str]| {
        let mut cmd = cmd();
        cmd.env_remove("HEARTBEAT_FILE")
            .envs(vars.iter().copied())
            .args(args);
        run(&mut cmd)
    };
    let pid = format!("pid {})", child.pid());
    let shard = beat.shard.as_str();
    for (how, vars, args) in [
        ("SHARD", &[("SHARD", shard)][..], &["healthcheck"][..]),
        (
            "SHARD_INDEX and SHARD_COUNT",
            &[("SHARD_INDEX", index), ("SHARD_COUNT", count)],
            &["healthcheck"],
        ),
        ("--shard", &[], &["healthcheck", "--shard", shard]),
    ] {
        let out = probe(vars, args);
        assert_exit(&out, 0);
        let line = text(&out.stdout);
        assert!(line.starts_with("healthy: last beat"), "{how}: {line}");
        assert!(line.contains(&pid), "{how}: {line}");
    }
    // The probe's help shows the shard it reads.
    let help = text(&run(cmd().args(["healthcheck", "--help"])).stdout);
    assert!(help.contains("--shard <INDEX/COUNT>"), "{help}");
    // A bad shard with the default path: the probe cannot know which file to read.
    let out = probe(&[("SHARD", "7/3")], &["healthcheck"]);
    assert_exit(&out, 2);
    assert!(
        text(&out.stderr).contains("invalid --shard (SHARD) \"7/3\""),
        "{out:?}"
    );
    child.signal(libc::SIGTERM);
    assert_exit(&child.wait_for(STOP_LIMIT).expect("stopped"), 0);
}
