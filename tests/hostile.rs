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

// ------------------------------------------------------------- out of descriptors

/// Both services on scripted servers of their own (a connection each), holding orders
/// 1 to 3 of oak; decreases answer 200, status updates are kept.
struct Shop {
    orders: ScriptServer,
    stock: ScriptServer,
    statuses: Arc<Mutex<BTreeMap<u64, String>>>,
}

impl Shop {
    fn start() -> Shop {
        let statuses: Arc<Mutex<BTreeMap<u64, String>>> = Arc::new(Mutex::new(
            (1..=3).map(|id| (id, "registered".to_string())).collect(),
        ));
        let s = statuses.clone();
        let orders = ScriptServer::start(move |r: &Request| match r.method.as_str() {
            "GET" => common::registered_page(r, &s.lock().unwrap(), |_| "oak"),
            "PUT" => {
                let id: u64 = r.path()["/orders/".len()..].parse().unwrap();
                let status = r.json()["order_status"].as_str().unwrap().to_string();
                s.lock().unwrap().insert(id, status);
                reply(200, "{}")
            }
            _ => reply(404, "<html>not found</html>"),
        });
        let stock =
            ScriptServer::start(|_: &Request| reply(200, r#"{"wood_type": "oak", "quantity": 1}"#));
        Shop {
            orders,
            stock,
            statuses,
        }
    }

    fn lists(&self) -> usize {
        self.orders.calls("GET", "/orders/status/registered").len()
    }

    fn registered(&self) -> usize {
        self.statuses
            .lock()
            .unwrap()
            .values()
            .filter(|s| *s == "registered")
            .count()
    }
}

/// The worker with `args`, run by a shell that first lowers its descriptor limit to `n`.
fn with_descriptors(n: u32, shop: &Shop, args: &[&str]) -> Command {
    let mut cmd = worker(&shop.orders.url(), &shop.stock.url());
    cmd.env("LOG_LEVEL", "debug");
    let mut sh = Command::new("/bin/sh");
    sh.arg("-c")
        .arg(format!("ulimit -n {n} && exec \"$0\" \"$@\""))
        .arg(cmd.get_program())
        .args(args)
        .env_clear()
        .envs(cmd.get_envs().filter_map(|(k, v)| Some((k, v?))));
    sh
}

/// The smallest descriptor limit under which the worker fetches the list but cannot
/// open a connection to the Stock Service, found by trying (a few descriptors more or
/// less, depending on what the runtime opens at start).
fn limit_that_starves_the_decrease() -> u32 {
    for n in 4..=32 {
        let shop = Shop::start();
        let out = run(&mut with_descriptors(n, &shop, &["once"]));
        if shop.lists() == 0 {
            continue; // too few even for the list
        }
        assert!(
            !shop.stock.requests().is_empty() || out.status.code() == Some(1),
            "limit {n}: {}",
            text(&out.stderr)
        );
        if shop.stock.requests().is_empty() {
            return n;
        }
        panic!(
            "limit {n}: the list and the decreases went through; no limit between starves the decrease"
        );
    }
    panic!("no descriptor limit up to 32 let the list through");
}

#[test]
fn out_of_descriptors_nothing_is_called_sent_and_every_order_stays_registered() {
    let n = limit_that_starves_the_decrease();
    let shop = Shop::start();
    let out = run(&mut with_descriptors(n, &shop, &["once"]));
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "limit {n}:\n{stderr}");
    assert!(
        shop.stock.requests().is_empty(),
        "limit {n}: nothing reached the Stock Service"
    );
    assert_eq!(
        shop.registered(),
        3,
        "limit {n}: no order left registered:\n{stderr}"
    );
    assert!(
        shop.orders.calls("PUT", "/orders/1").is_empty(),
        "limit {n}: no status set (no unknown):\n{stderr}"
    );
    assert!(!stderr.contains("sent, no reply"), "limit {n}:\n{stderr}");
    assert!(
        !stderr.contains("unknown outcome") && !stderr.contains(": unknown"),
        "limit {n}:\n{stderr}"
    );
    let ended: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("ERROR") && l.contains("cycle ended early"))
        .collect();
    assert_eq!(
        ended.len(),
        1,
        "limit {n}: one line ends the cycle:\n{stderr}"
    );
    assert!(ended[0].contains("open files"), "limit {n}: {}", ended[0]);

    // `run` goes on to the next cycle, and still sends nothing.
    let shop = Shop::start();
    let mut child = Running::start(&mut with_descriptors(n, &shop, &["run", "--interval", "1"]));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while shop.lists() < 3 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    child.signal(libc::SIGTERM);
    let out = child.wait_for(RUN_LIMIT).expect("run stops on SIGTERM");
    let stderr = text(&out.stderr);
    assert!(shop.lists() >= 3, "limit {n}: a cycle a second:\n{stderr}");
    assert!(shop.stock.requests().is_empty(), "limit {n}:\n{stderr}");
    assert_eq!(shop.registered(), 3, "limit {n}:\n{stderr}");
}

// ------------------------------------------------------------------ a wrong base URL

#[test]
fn a_wrong_stock_url_blocks_no_order_and_asks_whether_it_is_the_right_service() {
    use standin::{Knobs, Stack};
    let stack = Stack::start(0, 0, Knobs::default()).expect("stand-ins");
    stack.add_stock("oak", 1_000);
    for _ in 0..20 {
        stack.add_order("oak", 1);
    }
    let orders = stack.orders_url();
    let cases = [
        ("a /v1 prefix", format!("{}/v1", stack.stocks_url())),
        // The Order Service's port where the Stock Service's should be.
        ("the Order Service's port", orders.clone()),
    ];
    for (case, stocks) in &cases {
        let out = run(worker(&orders, stocks).arg("once"));
        let stderr = text(&out.stderr);
        // Exit 1: the cycle ended early and orders stay registered for the next run.
        assert_eq!(out.status.code(), Some(1), "{case}:\n{stderr}");
        assert!(stack.ledger().is_empty(), "{case}: no stock taken");
        assert_eq!(
            stack.count_by_status().get("registered"),
            Some(&20),
            "{case}: no order blocked:\n{stderr}"
        );
        let ended: Vec<&str> = stderr
            .lines()
            .filter(|l| l.contains("ERROR") && l.contains("cycle ended early"))
            .collect();
        assert_eq!(ended.len(), 1, "{case}:\n{stderr}");
        assert!(
            ended[0].contains(&format!("answered 404 at {stocks}/stocks/decrease"))
                && ended[0].contains(
                    "the Stock Service gives no such answer there: \
                     is API_URL_STOCKS (--stocks-url) the Stock Service's base URL?"
                ),
            "{case}: {}",
            ended[0]
        );
    }
    // The order URL aimed at the Stock Service: the list itself says so.
    let out = run(worker(&stack.stocks_url(), &stack.stocks_url()).arg("once"));
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "the Order Service gives no such answer there: \
             is API_URL_ORDERS (--orders-url) the Order Service's base URL?"
        ),
        "{stderr}"
    );
    assert_eq!(stack.count_by_status().get("registered"), Some(&20));
}

// ------------------------------------------------------------ errors say what to do

#[test]
fn network_errors_name_the_service_the_url_what_happened_and_what_to_check() {
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let refused = format!("http://127.0.0.1:{closed}");
    let out = run(worker(&refused, &refused).arg("once"));
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "Order Service list not sent to {refused}/orders/status/registered?skip=0&limit=500: \
             connection refused; is the Order Service running there? check API_URL_ORDERS (--orders-url)"
        )),
        "{stderr}"
    );

    // A service that takes the connection and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", silent.local_addr().unwrap());
    let out = run(worker(&url, &url)
        .env("HTTP_TIMEOUT_SECONDS", "0.5")
        .arg("once"));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "Order Service list sent to {url}/orders/status/registered?skip=0&limit=500, no reply: \
             no reply within 0.5 s (--timeout); is the Order Service overloaded?"
        )),
        "{stderr}"
    );

    let nowhere = "http://no-such-host.invalid:5000";
    let out = run(worker(nowhere, nowhere).arg("once"));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "Order Service list not sent to {nowhere}/orders/status/registered?skip=0&limit=500: \
             the host name was not found; is the Order Service running there? check API_URL_ORDERS"
        )),
        "{stderr}"
    );
}

/// `https://` against a plain-HTTP port fails at once and says to use `http://`.
#[cfg(feature = "tls")]
#[test]
fn https_against_a_plain_http_port_says_to_use_http() {
    // A plain-HTTP server that answers what it cannot read with 400 and closes, as
    // Python's http.server (and so Werkzeug) does with a TLS ClientHello.
    let plain = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = plain.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        use std::io::{Read, Write};
        if let Ok((mut stream, _)) = plain.accept() {
            let mut hello = [0u8; 512];
            let _ = stream.read(&mut hello);
            let _ = stream.write_all(
                b"HTTP/1.0 400 Bad request\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
            );
        }
    });
    let url = format!("https://127.0.0.1:{port}");
    let started = std::time::Instant::now();
    let out = run(worker(&url, &url).arg("once"));
    let took = started.elapsed();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert!(
        stderr.contains(&format!(
            "Order Service list not sent to {url}/orders/status/registered?skip=0&limit=500: \
             the server does not speak TLS (a plain-HTTP port?): use http:// instead of https://"
        )),
        "{stderr}"
    );
    server.join().unwrap();
}

// ------------------------------------------------------ telemetry delays of zero

/// CPU time (user + system) the process `pid` has used so far, from /proc/<pid>/stat.
fn cpu_time(pid: libc::pid_t) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/<pid>/stat");
    // The fields after the command name (which may hold spaces, in parentheses).
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_millis(ticks * 1000 / per_second)
}

#[test]
fn telemetry_delays_of_zero_are_raised_and_cost_no_core() {
    use standin::{Knobs, OtlpSink, Stack};
    let stack = Stack::start(0, 0, Knobs::default()).expect("stand-ins");
    let sink = OtlpSink::start().expect("OTLP receiver");
    let mut child = Running::start(
        worker(&stack.orders_url(), &stack.stocks_url())
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", sink.url())
            .env("OTEL_BSP_SCHEDULE_DELAY", "0")
            .env("OTEL_BLRP_SCHEDULE_DELAY", "0")
            .env("OTEL_METRIC_EXPORT_INTERVAL", "0")
            .args(["run", "--interval", "1"]),
    );
    std::thread::sleep(Duration::from_secs(3));
    let used = cpu_time(child.pid());
    child.signal(libc::SIGTERM);
    let out = child.wait_for(RUN_LIMIT).expect("run stops on SIGTERM");
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    // Before the floors: 3.0 CPU-seconds in 3 s (a core), 1.2-1.5 for the metrics alone.
    assert!(
        used < Duration::from_millis(500),
        "{used:?} of CPU in 3 s:\n{stderr}"
    );
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("OTEL_BSP_SCHEDULE_DELAY=0 taken as 100"))
        .collect();
    assert_eq!(warnings.len(), 1, "{stderr}");
    assert!(
        warnings[0].contains("OTEL_METRIC_EXPORT_INTERVAL=0 taken as 1000")
            && warnings[0].contains("OTEL_BLRP_SCHEDULE_DELAY=0 taken as 100"),
        "{}",
        warnings[0]
    );
    eprintln!("CPU used in 3 s with the three delays at 0: {used:?}");
}

/// `https://` against a port that takes the connection and waits for a request line
/// (as a plain-HTTP server does) ends at the timeout, not sent, and says it may be one.
#[cfg(feature = "tls")]
#[test]
fn https_against_a_silent_port_says_it_may_be_plain_http() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("https://{}", silent.local_addr().unwrap());
    let started = std::time::Instant::now();
    let out = run(worker(&url, &url)
        .env("HTTP_TIMEOUT_SECONDS", "0.5")
        .arg("once"));
    let took = started.elapsed();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert!(
        stderr.contains(&format!(
            "Order Service list not sent to {url}/orders/status/registered?skip=0&limit=500: \
             no connection within 0.5 s (--timeout), or no TLS handshake: is it a plain-HTTP \
             port (then use http://)?"
        )),
        "{stderr}"
    );
    drop(silent);
}

// ------------------------------------------------------ a state file at the cap

/// The process's peak resident memory so far (`VmHWM` in /proc/<pid>/status).
fn peak_rss(pid: libc::pid_t) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM");
    kb * 1024
}

#[test]
fn a_state_file_near_the_cap_is_read_within_the_manifests_memory_limit() {
    use std::io::Write;
    let dir = std::env::temp_dir().join(format!("om-hostile-cap-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let state = dir.join("state.jsonl");
    // 63 MiB of orders sent and finished (a file left uncompacted for long), then one
    // order still in flight.
    let mut file = std::io::BufWriter::new(std::fs::File::create(&state).unwrap());
    let (mut size, mut id) = (0usize, 1_000u64);
    while size < 63 * 1024 * 1024 {
        let lines = format!(
            "{{\"op\":\"sending\",\"id\":{id},\"wood_type\":\"oak\",\"quantity\":3}}{:60}\n\
             {{\"op\":\"finished\",\"id\":{id},\"wood_type\":\"oak\",\"quantity\":3}}\n",
            ""
        );
        file.write_all(lines.as_bytes()).unwrap();
        size += lines.len();
        id += 1;
    }
    file.write_all(b"{\"op\":\"decided\",\"id\":1,\"wood_type\":\"oak\",\"quantity\":3,\"status\":\"ready\"}\n")
        .unwrap();
    drop(file);
    let shop = Shop::start();
    let mut child = Running::start(
        worker(&shop.orders.url(), &shop.stock.url())
            .env("STATE_FILE", &state)
            .args(["run", "--interval", "30"]),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while shop.lists() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no first cycle within 60 s"
        );
        assert!(child.child.try_wait().unwrap().is_none(), "exited early");
        std::thread::sleep(Duration::from_millis(20));
    }
    let peak = peak_rss(child.pid());
    child.signal(libc::SIGTERM);
    let out = child.wait_for(RUN_LIMIT).expect("run stops on SIGTERM");
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    // Before the file was read as a stream: 80 MB (release build), 85 MB (debug).
    assert!(
        peak < 32 * 1024 * 1024,
        "peak RSS {} MiB for a 63 MiB state file",
        peak / 1024 / 1024
    );
    // The order left in flight had its status set; the file is compacted.
    assert_eq!(shop.orders.calls("PUT", "/orders/1").len(), 1, "{stderr}");
    assert!(std::fs::metadata(&state).unwrap().len() < 1024);
    eprintln!("peak RSS for a 63 MiB state file: {} KiB", peak / 1024);
    std::fs::remove_dir_all(dir).unwrap();
}
