//! Drains a backlog on the in-memory stand-in services and prints a table: the floor
//! (a bare keep-alive ureq loop doing exactly one order's calls), the worker binary
//! draining 20,000 orders in one `once` cycle, its CPU time per order, the threads it
//! spawned, and its peak RSS at 1,000 and 20,000 orders; then 2,000 orders drained by
//! `run` with the services failing at the demo's default rates and at 30%, each as a
//! ratio of a fault-free drain in the same run. No assertions: the figures are for
//! reading.
//!
//! ```sh
//! cargo bench
//! ```

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use standin::{Knobs, OtlpSink, Stack, WOODS};

const BIN: &str = env!("CARGO_BIN_EXE_ordermanagement");
const BACKLOG: usize = 20_000;
/// The worker's default page size, for the floor and every worker row.
const PAGE: usize = 500;
const SCALING_ORDERS: usize = 3_000;
const SERVICE_LATENCY: Duration = Duration::from_millis(2);
const FAULT_ORDERS: usize = 2_000;

fn main() {
    let stack = Stack::start(0, 0, Knobs::default()).expect("start the stand-in services");
    for wood in WOODS {
        stack.add_stock(wood, u64::MAX / 16);
    }
    let mut rng = fastrand::Rng::with_seed(1);

    stack.seed_orders(BACKLOG, &mut rng);
    let (floor_orders, floor_time) = floor(&stack);
    let floor_rate = floor_orders as f64 / floor_time.as_secs_f64();

    stack.seed_orders(1_000, &mut rng);
    let small = run_worker(&stack, None);

    stack.seed_orders(BACKLOG, &mut rng);
    let large = run_worker(&stack, None);
    let worker_rate = BACKLOG as f64 / large.wall.as_secs_f64();

    let sink = OtlpSink::start().expect("start the OTLP sink");
    stack.seed_orders(BACKLOG, &mut rng);
    let traced = run_worker(&stack, Some(&sink));
    let traced_rate = BACKLOG as f64 / traced.wall.as_secs_f64();
    let exported: usize = ["/v1/traces", "/v1/metrics", "/v1/logs"]
        .iter()
        .map(|p| sink.bodies(p).len())
        .sum();
    let (traces, largest_trace) = trace_sizes(&sink);

    let leftover = stack
        .count_by_status()
        .get("registered")
        .copied()
        .unwrap_or(0);
    let violations = stack.violations().len();
    drop(stack);

    // Replicas: with each reply taking SERVICE_LATENCY, as real services on a network
    // do, the wait rather than this machine's two cores sets the pace.
    let mut scaling = Vec::new();
    for replicas in [1, 2, 3] {
        let knobs = Knobs {
            delay: SERVICE_LATENCY,
            ..Knobs::default()
        };
        let stack = Stack::start(0, 0, knobs).expect("start the stand-in services");
        for wood in WOODS {
            stack.add_stock(wood, u64::MAX / 16);
        }
        stack.seed_orders(SCALING_ORDERS, &mut rng);
        let started = Instant::now();
        let children: Vec<_> = (0..replicas)
            .map(|i| {
                worker_command(&stack)
                    .env("SHARD", format!("{i}/{replicas}"))
                    .args(["run", "--interval", "0.1"])
                    .spawn()
                    .expect("start a replica")
            })
            .collect();
        while stack.count_by_status().contains_key("registered") {
            std::thread::sleep(Duration::from_millis(5));
        }
        let elapsed = started.elapsed();
        for mut child in children {
            // SAFETY: kill(2) on our own child, not yet reaped.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            child.wait().expect("wait for a replica");
        }
        let rate = SCALING_ORDERS as f64 / elapsed.as_secs_f64();
        let done = stack.count_by_status().get("ready").copied().unwrap_or(0);
        scaling.push((replicas, rate, done, stack.violations().len()));
    }

    // Under failure, each backlog against its own fault-free drain in the same run.
    let under_failure: Vec<UnderFailure> = [FAULT_ORDERS, BACKLOG]
        .into_iter()
        .map(|n| {
            let fault_free = drain_with_faults(n, 0.0, &mut rng);
            let faults = [0.1, 0.3]
                .into_iter()
                .map(|rate| (rate, drain_with_faults(n, rate, &mut rng)))
                .collect();
            (n, fault_free, faults)
        })
        .collect();

    println!();
    println!(
        "drain benchmark: {BACKLOG} registered orders, page size {PAGE}, error rate 0, telemetry off unless said"
    );
    println!(
        "{:<44} {:>12} {:>10} {:>12}",
        "", "orders/s", "vs floor", "peak RSS"
    );
    println!(
        "{:<44} {:>12.0} {:>10} {:>12}",
        "floor: bare keep-alive ureq loop", floor_rate, "1.00", "-"
    );
    println!(
        "{:<44} {:>12.0} {:>10.2} {:>9} KiB",
        "worker: `once`, 20,000 orders",
        worker_rate,
        worker_rate / floor_rate,
        large.max_rss_kib
    );
    println!(
        "{:<44} {:>12.0} {:>10.2} {:>9} KiB",
        "worker: `once`, 20,000, telemetry exported",
        traced_rate,
        traced_rate / floor_rate,
        traced.max_rss_kib
    );
    println!(
        "{:<44} {:>12} {:>10} {:>9} KiB",
        "worker: `once`, 1,000 orders", "-", "-", small.max_rss_kib
    );
    println!(
        "traces exported by the 20,000-order drain: {traces}, the largest holding {largest_trace} spans"
    );
    println!(
        "worker CPU (user + system) per order: {:.3} ms (20,000 orders), {:.3} ms with telemetry exported",
        large.cpu.as_secs_f64() * 1000.0 / BACKLOG as f64,
        traced.cpu.as_secs_f64() * 1000.0 / BACKLOG as f64,
    );
    println!(
        "PIDs allocated on the machine while the worker drained 20,000 orders (its threads, plus any other process started meanwhile): {} ({:.4} per order)",
        large.pids,
        large.pids as f64 / BACKLOG as f64
    );
    println!(
        "RSS growth 1,000 -> 20,000 orders: {:+.1}%   (exit codes {} and {}; orders left registered {leftover}; ledger violations {violations}; OTLP requests {exported})",
        (large.max_rss_kib as f64 / small.max_rss_kib as f64 - 1.0) * 100.0,
        small.exit_code,
        large.exit_code
    );
    println!();
    println!(
        "sharded replicas, {SCALING_ORDERS} orders, {} ms per service reply:",
        SERVICE_LATENCY.as_millis()
    );
    for (replicas, rate, done, violations) in &scaling {
        println!(
            "{replicas} replica(s): {rate:>8.0} orders/s   ({done} ready, ledger violations {violations})"
        );
    }
    for (n, fault_free, faults) in &under_failure {
        println!();
        println!(
            "under failure: {n} orders drained by `run --interval 0.1`, each service failing at the rate, ERROR_RATE the same:"
        );
        let free_rate = *n as f64 / fault_free.wall.as_secs_f64();
        println!(
            "{:<28} {:>10.0} orders/s {:>8} x fault-free   (drained in {:.2} s; ledger violations {})",
            "no faults",
            free_rate,
            "1.00",
            fault_free.wall.as_secs_f64(),
            fault_free.violations
        );
        for (rate, d) in faults {
            let r = *n as f64 / d.wall.as_secs_f64();
            println!(
                "{:<28} {:>10.0} orders/s {:>8.2} x fault-free   (drained in {:.2} s; ledger violations {}; ready {}, blocked {})",
                format!("{:.0}% faults", rate * 100.0),
                r,
                r / free_rate,
                d.wall.as_secs_f64(),
                d.violations,
                d.ready,
                d.blocked
            );
        }
    }
}

/// Traces the sink received, and the span count of the largest.
fn trace_sizes(sink: &OtlpSink) -> (usize, usize) {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message;
    let mut spans: std::collections::HashMap<Vec<u8>, usize> = Default::default();
    for body in sink.bodies("/v1/traces") {
        let Ok(request) = ExportTraceServiceRequest::decode(body.as_slice()) else {
            continue;
        };
        for rs in request.resource_spans {
            for ss in rs.scope_spans {
                for span in ss.spans {
                    *spans.entry(span.trace_id).or_default() += 1;
                }
            }
        }
    }
    (spans.len(), spans.values().copied().max().unwrap_or(0))
}

/// A backlog, its fault-free drain, and its drains at each fault rate.
type UnderFailure = (usize, Drained, Vec<(f64, Drained)>);

struct Drained {
    wall: Duration,
    violations: usize,
    ready: usize,
    blocked: usize,
}

/// `run` drains `orders` orders from services failing `rate` of their calls (the
/// worker's own ERROR_RATE the same); the time until none is registered.
fn drain_with_faults(orders: usize, rate: f64, rng: &mut fastrand::Rng) -> Drained {
    let knobs = Knobs {
        order_error_rate: rate,
        stock_error_rate: rate,
        ..Knobs::default()
    };
    let stack = Stack::start(0, 0, knobs).expect("start the stand-in services");
    for wood in WOODS {
        stack.add_stock(wood, u64::MAX / 16);
    }
    stack.seed_orders(orders, rng);
    let started = Instant::now();
    let mut child = worker_command(&stack)
        .env("ERROR_RATE", rate.to_string())
        .env("LOG_LEVEL", "error")
        .args(["run", "--interval", "0.1"])
        .spawn()
        .expect("start the worker");
    while stack.count_by_status().contains_key("registered") {
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "not drained in 10 minutes"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let wall = started.elapsed();
    // SAFETY: kill(2) on our own child, not yet reaped.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    child.wait().expect("wait for the worker");
    let by_status = stack.count_by_status();
    Drained {
        wall,
        violations: stack.violations().len(),
        ready: by_status.get("ready").copied().unwrap_or(0),
        blocked: by_status.get("blocked").copied().unwrap_or(0),
    }
}

/// The calls one order needs, and nothing else: a share of a page fetch, a decrease and
/// a status update, on one keep-alive connection per service.
fn floor(stack: &Stack) -> (usize, Duration) {
    let agent = ureq::Agent::new_with_defaults();
    let list = format!(
        "{}/orders/status/registered?skip=0&limit={PAGE}",
        stack.orders_url()
    );
    let decrease = format!("{}/stocks/decrease", stack.stocks_url());
    let started = Instant::now();
    let mut done = 0;
    loop {
        let bytes = agent
            .get(&list)
            .call()
            .unwrap()
            .body_mut()
            .read_to_vec()
            .unwrap();
        let page: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        let page = page.as_array().unwrap();
        if page.is_empty() {
            break;
        }
        for order in page {
            let id = order["id"].as_u64().unwrap();
            let body = format!(
                r#"{{"wood_type":"{}","quantity":{}}}"#,
                order["wood_type"].as_str().unwrap(),
                order["quantity"]
            );
            let mut r = agent
                .post(&decrease)
                .header("Content-Type", "application/json")
                .header("Idempotency-Key", &format!("order-{id}"))
                .send(body.as_bytes())
                .unwrap();
            r.body_mut().read_to_vec().unwrap();
            let mut r = agent
                .put(&format!("{}/orders/{id}", stack.orders_url()))
                .header("Content-Type", "application/json")
                .send(br#"{"order_status":"ready"}"#.as_slice())
                .unwrap();
            r.body_mut().read_to_vec().unwrap();
            done += 1;
        }
    }
    (done, started.elapsed())
}

struct Run {
    wall: Duration,
    max_rss_kib: i64,
    exit_code: i32,
    /// User + system CPU time of the worker, from its rusage.
    cpu: Duration,
    /// PIDs the kernel handed out while it ran.
    pids: i64,
}

/// Runs `ordermanagement once` and follows its peak RSS (`VmHWM` in /proc, read every
/// 2 ms until it exits). Not `wait4`'s `ru_maxrss`: a child spawned with
/// `posix_spawn` shares this process's memory until exec, and its maximum carries
/// that (this process holds the services) into the figure.
fn run_worker(stack: &Stack, otlp: Option<&OtlpSink>) -> Run {
    let started = Instant::now();
    let mut command = worker_command(stack);
    if let Some(sink) = otlp {
        command.env("OTEL_EXPORTER_OTLP_ENDPOINT", sink.url());
    }
    // Reaped by wait4 below, which also gives its rusage.
    #[allow(clippy::zombie_processes)]
    let child = command.arg("once").spawn().expect("start the worker");
    let first_pid = last_pid();
    let pid = child.id() as libc::pid_t;
    let status_file = format!("/proc/{pid}/status");
    let mut max_rss_kib = 0;
    let (status, usage) = loop {
        if let Some(kib) = std::fs::read_to_string(&status_file)
            .ok()
            .as_deref()
            .and_then(vm_hwm_kib)
        {
            max_rss_kib = max_rss_kib.max(kib);
        }
        let mut status = 0;
        // SAFETY: wait4 on our own child with a valid status and rusage to fill.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        let reaped = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        if reaped == pid {
            break (status, usage);
        }
        assert!(reaped == 0, "wait4 failed");
        std::thread::sleep(Duration::from_millis(2));
    };
    let pids = last_pid() - first_pid;
    let time = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    Run {
        wall: started.elapsed(),
        max_rss_kib,
        exit_code: if libc::WIFEXITED(status) {
            libc::WEXITSTATUS(status)
        } else {
            -1
        },
        cpu: time(usage.ru_utime) + time(usage.ru_stime),
        pids: pids.into(),
    }
}

/// The worker binary against the stack, error rate 0.
fn worker_command(stack: &Stack) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env_clear()
        .env("API_URL_ORDERS", stack.orders_url())
        .env("API_URL_STOCKS", stack.stocks_url())
        .env("ERROR_RATE", "0")
        .env("LOG_LEVEL", "warn")
        .env("PAGE_SIZE", PAGE.to_string())
        .stdin(Stdio::null());
    cmd
}

/// The last PID the kernel handed out (threads take PIDs too).
fn last_pid() -> i32 {
    std::fs::read_to_string("/proc/sys/kernel/ns_last_pid")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

fn vm_hwm_kib(status: &str) -> Option<i64> {
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
