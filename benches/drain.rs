//! Drains a backlog on the in-memory stand-in services and prints a table: the floor
//! (a bare keep-alive ureq loop doing exactly one order's calls, in a process of its
//! own like the worker, and for comparison in the bench's process), the worker binary
//! draining 20,000 orders in one `once` cycle without and with telemetry exported, over
//! OTLP/HTTP and over OTLP/gRPC (to a tonic collector in the bench's process), and over
//! gRPC to a hostile collector that floods PING frames (the medians of three rounds, or
//! DRAIN_BENCH_ROUNDS; each export also as a ratio of the telemetry-off drain of its
//! round, and the flood's CPU cost), its CPU time per order, the threads it spawned, and its
//! peak RSS at 1,000 and 20,000 orders; then 2,000 and 20,000 orders
//! drained by `run` with the services failing at the demo's default rates and at 30%,
//! each as a ratio of a fault-free drain in the same run, with replies at once and
//! (2,000 orders) at the real services' pace. No assertions: the figures are for
//! reading.
//!
//! ```sh
//! cargo bench
//! ```

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use standin::{Knobs, OtlpSink, Stack, WOODS};

/// The worker binary cargo built, unless DRAIN_BENCH_BIN names another (a copy of a
/// build kept aside, when the target directory is shared with other builds).
fn bin() -> String {
    std::env::var("DRAIN_BENCH_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_ordermanagement").to_string())
}
const BACKLOG: usize = 20_000;
/// The worker's default page size, for the floor and every worker row.
const PAGE: usize = 500;
const SCALING_ORDERS: usize = 3_000;
const SERVICE_LATENCY: Duration = Duration::from_millis(2);
const FAULT_ORDERS: usize = 2_000;
/// Rounds of the floor and the worker's 20,000-order drains (figures are medians): 3,
/// or DRAIN_BENCH_ROUNDS (more, for a steadier median on a busy machine).
fn rounds() -> usize {
    std::env::var("DRAIN_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .filter(|r| *r > 0)
        .unwrap_or(3)
}
/// A reply's time on the demo's real Flask services over loopback (medians of 200
/// calls each, a new connection per call, as they close every one: list 2.8 ms,
/// decrease 3.9 ms, status update 4.7 ms), for the under-failure rows "at the real
/// services' pace".
const REAL_SERVICE_LATENCY: Duration = Duration::from_millis(4);

/// 2,000 orders drained by `once` and by `run`, with and without one more order whose
/// status update is answered `409` (quarantined), in turns: the wall times, and the
/// ratio with the quarantined order to without.
fn print_quarantine_rows(rng: &mut fastrand::Rng) {
    let drain = |odd: bool, run: bool, rng: &mut fastrand::Rng| {
        let mut knobs = Knobs::default();
        if odd {
            knobs
                .status_answers
                .insert(1, standin::Answer::new(409, r#"{"error": "conflict"}"#));
        }
        let stack = Stack::start(0, 0, knobs).expect("start the stand-in services");
        for wood in WOODS {
            stack.add_stock(wood, u64::MAX / 16);
        }
        // Order 1 first, then 2,000 others.
        stack.seed_orders(FAULT_ORDERS + 1, rng);
        let others = |stack: &Stack| {
            stack
                .orders()
                .iter()
                .filter(|o| o.id != 1 && o.status == "registered")
                .count()
        };
        let started = Instant::now();
        if run {
            let mut child = worker_command(&stack)
                .args(["run", "--interval", "0.1"])
                .spawn()
                .expect("start the worker");
            while others(&stack) > 0 {
                assert!(started.elapsed() < Duration::from_secs(300), "not drained");
                std::thread::sleep(Duration::from_millis(2));
            }
            let wall = started.elapsed();
            // SAFETY: kill(2) on our own child, not yet reaped.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            child.wait().expect("wait for the worker");
            wall
        } else {
            worker_command(&stack)
                .arg("once")
                .status()
                .expect("run once");
            assert_eq!(others(&stack), 0, "once left orders registered");
            started.elapsed()
        }
    };
    println!(
        "{FAULT_ORDERS} orders, replies at once, with and without one more order quarantined (its status update answered 409), {STATE_PAIRS} pairs in turns:"
    );
    for (name, run) in [("once", false), ("run --interval 0.1", true)] {
        let pairs: Vec<(Duration, Duration)> = (0..STATE_PAIRS)
            .map(|_| (drain(false, run, rng), drain(true, run, rng)))
            .collect();
        let free = median(pairs.iter().map(|p| p.0.as_secs_f64()).collect());
        let odd = median(pairs.iter().map(|p| p.1.as_secs_f64()).collect());
        println!(
            "{name:<24} {:.2} s without, {:.2} s with one quarantined: {:.2}x the rate",
            free,
            odd,
            free / odd
        );
    }
}

/// One state-file row: orders, delay per reply, pairs of wall times (without, with).
type StateRow = (usize, Duration, Vec<(Duration, Duration)>);

/// The state file's rows: replies at once, and at the real services' pace.
fn state_rows(rng: &mut fastrand::Rng) -> Vec<StateRow> {
    [
        (FAULT_ORDERS, Duration::ZERO),
        (STATE_ORDERS_AT_PACE, REAL_SERVICE_LATENCY),
    ]
    .into_iter()
    .map(|(n, delay)| (n, delay, state_file_pairs(n, delay, rng)))
    .collect()
}

/// Pairs of drains with and without a state file, per row.
const STATE_PAIRS: usize = 3;
/// Orders of the state file's row at the real services' pace.
const STATE_ORDERS_AT_PACE: usize = 1_000;

/// Set (to the two services' URLs) when this binary is started again as the floor.
const FLOOR_CHILD: &str = "DRAIN_BENCH_FLOOR";

fn main() {
    if let Ok(urls) = std::env::var(FLOOR_CHILD) {
        let (orders, stocks) = urls.split_once(' ').expect("two URLs");
        let (done, _) = floor(orders, stocks);
        println!("{done}");
        return;
    }
    let mut rng = fastrand::Rng::with_seed(1);
    // DRAIN_BENCH_ONLY=quarantine: only the quarantine rows.
    if std::env::var("DRAIN_BENCH_ONLY").is_ok_and(|only| only == "quarantine") {
        print_quarantine_rows(&mut rng);
        return;
    }
    // DRAIN_BENCH_ONLY=state: only the state file's rows (a quick look while working).
    if std::env::var("DRAIN_BENCH_ONLY").is_ok_and(|only| only == "state") {
        print_state_rows(&state_rows(&mut rng));
        return;
    }
    let stack = Stack::start(0, 0, Knobs::default()).expect("start the stand-in services");
    for wood in WOODS {
        stack.add_stock(wood, u64::MAX / 16);
    }
    // DRAIN_BENCH_ONLY=telemetry: only the worker without and with telemetry exported,
    // rounds() rounds in turns (a quick look while working on telemetry's cost).
    if std::env::var("DRAIN_BENCH_ONLY").is_ok_and(|only| only == "telemetry") {
        let rate = |run: &Run| BACKLOG as f64 / run.wall.as_secs_f64();
        let mut rows: [(&str, Vec<Run>); 4] = [
            ("telemetry off", vec![]),
            ("OTLP/HTTP", vec![]),
            ("OTLP/gRPC", vec![]),
            ("gRPC, PING flood", vec![]),
        ];
        let mut flood_connections = 0;
        for _ in 0..rounds() {
            for (i, row) in rows.iter_mut().enumerate() {
                // Only the row's own collector runs while it drains.
                let (sink, collector, flood) = match i {
                    1 => (
                        Some(OtlpSink::start().expect("start the OTLP sink")),
                        None,
                        None,
                    ),
                    2 => (None, Some(GrpcSink::start()), None),
                    3 => (None, None, Some(PingFlood::start())),
                    _ => (None, None, None),
                };
                let otlp = sink
                    .as_ref()
                    .map(|s| (s.url(), false))
                    .or(collector.as_ref().map(|c| (c.url(), true)))
                    .or(flood.as_ref().map(|f| (f.url(), true)));
                stack.seed_orders(BACKLOG, &mut rng);
                row.1.push(run_worker(&stack, otlp));
                if let Some(flood) = &flood {
                    flood_connections = flood.connections();
                }
            }
        }
        for (name, runs) in &rows {
            let r = median(runs.iter().map(rate).collect());
            println!(
                "{name:<16} {r:>8.0} orders/s {:>6.2}x off   CPU {:.3} ms/order   services and collector {:.3} ms/order   peak RSS {} KiB",
                vs_off(runs, &rows[0].1),
                median_cpu(runs) * 1000.0 / BACKLOG as f64,
                median(runs.iter().map(|r| r.peers_cpu.as_secs_f64()).collect()) * 1000.0
                    / BACKLOG as f64,
                runs.iter().map(|r| r.max_rss_kib).max().unwrap_or(0),
            );
        }
        print_flood_cost(&rows[3].1, &rows[2].1, &rows[0].1, flood_connections);
        return;
    }

    // The floor in a process of its own, as the worker is, then the worker without and
    // with telemetry exported, in rounds() rounds one after the other: each figure is
    // the median of its rounds (this machine is noisy; a single pair of runs differs
    // by 10% either way).
    let mut floor_runs = Vec::new();
    let mut floor_cpu = Vec::new();
    let mut worker_runs = Vec::new();
    let mut traced_runs = Vec::new();
    let mut grpc_runs = Vec::new();
    let mut flood_runs = Vec::new();
    let mut flood_connections = 0;
    let (mut exported, mut traces, mut largest_trace) = (0, 0, 0);
    let mut grpc_exported = 0;
    for _ in 0..rounds() {
        stack.seed_orders(BACKLOG, &mut rng);
        let (orders, time, cpu) = floor_process(&stack);
        floor_runs.push(orders as f64 / time.as_secs_f64());
        floor_cpu.push(cpu.as_secs_f64() * 1000.0 / orders as f64);

        stack.seed_orders(BACKLOG, &mut rng);
        worker_runs.push(run_worker(&stack, None));

        let sink = OtlpSink::start().expect("start the OTLP sink");
        stack.seed_orders(BACKLOG, &mut rng);
        traced_runs.push(run_worker(&stack, Some((sink.url(), false))));
        exported = ["/v1/traces", "/v1/metrics", "/v1/logs"]
            .iter()
            .map(|p| sink.bodies(p).len())
            .sum();
        (traces, largest_trace) = trace_sizes(&sink);

        let collector = GrpcSink::start();
        stack.seed_orders(BACKLOG, &mut rng);
        grpc_runs.push(run_worker(&stack, Some((collector.url(), true))));
        grpc_exported = collector.requests();

        let flood = PingFlood::start();
        stack.seed_orders(BACKLOG, &mut rng);
        flood_runs.push(run_worker(&stack, Some((flood.url(), true))));
        flood_connections = flood.connections();
    }
    let rate = |run: &Run| BACKLOG as f64 / run.wall.as_secs_f64();
    let floor_rate = median(floor_runs.clone());
    let worker_rate = median(worker_runs.iter().map(rate).collect());
    let traced_rate = median(traced_runs.iter().map(rate).collect());
    let grpc_rate = median(grpc_runs.iter().map(rate).collect());
    let cpu_per_order = |runs: &[Run]| median_cpu(runs) * 1000.0 / BACKLOG as f64;
    let large = worker_runs
        .iter()
        .max_by_key(|r| r.max_rss_kib)
        .expect("a worker run");
    let traced = traced_runs
        .iter()
        .max_by_key(|r| r.max_rss_kib)
        .expect("a traced run");
    let over_grpc = grpc_runs
        .iter()
        .max_by_key(|r| r.max_rss_kib)
        .expect("a gRPC run");
    let pids: i64 = worker_runs.iter().map(|r| r.pids).sum();

    // For comparison, the floor in the bench's process, sharing it with the services.
    stack.seed_orders(BACKLOG, &mut rng);
    let (orders, time) = floor(&stack.orders_url(), &stack.stocks_url());
    let floor_in_process_rate = orders as f64 / time.as_secs_f64();

    stack.seed_orders(1_000, &mut rng);
    let small = run_worker(&stack, None);

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

    // Under failure, each backlog against its own fault-free drain in the same run:
    // instant replies, then replies at the real services' pace.
    let under_failure: Vec<UnderFailure> = [
        (FAULT_ORDERS, Duration::ZERO),
        (BACKLOG, Duration::ZERO),
        (FAULT_ORDERS, REAL_SERVICE_LATENCY),
    ]
    .into_iter()
    .map(|(n, delay)| {
        let fault_free = drain_with_faults(n, 0.0, delay, false, &mut rng);
        let faults = [0.1, 0.3]
            .into_iter()
            .map(|rate| (rate, drain_with_faults(n, rate, delay, false, &mut rng)))
            .collect();
        (n, delay, fault_free, faults)
    })
    .collect();
    // The same 2,000 orders with instant replies, drained by `once` repeated as cron
    // runs it with no state file: the ledger, order by order.
    let cron_free = drain_with_faults(FAULT_ORDERS, 0.0, Duration::ZERO, true, &mut rng);
    let cron_faults: Vec<(f64, Drained)> = [0.1, 0.3]
        .into_iter()
        .map(|rate| {
            let d = drain_with_faults(FAULT_ORDERS, rate, Duration::ZERO, true, &mut rng);
            (rate, d)
        })
        .collect();

    // The state file's cost: `once` with and without one, in turns, with replies at
    // once and at the real services' pace.
    let state_rows = state_rows(&mut rng);

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
        "{:<44} {:>12.0} {:>10.2} {:>12}",
        "floor, in the services' process",
        floor_in_process_rate,
        floor_in_process_rate / floor_rate,
        "-"
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
        "{:<44} {:>12.0} {:>10.2} {:>9} KiB",
        "worker: `once`, 20,000, telemetry over gRPC",
        grpc_rate,
        grpc_rate / floor_rate,
        over_grpc.max_rss_kib
    );
    let flood_rate = median(flood_runs.iter().map(rate).collect());
    println!(
        "{:<44} {:>12.0} {:>10.2} {:>9} KiB",
        "worker: `once`, 20,000, gRPC to a PING flood",
        flood_rate,
        flood_rate / floor_rate,
        flood_runs.iter().map(|r| r.max_rss_kib).max().unwrap_or(0)
    );
    println!(
        "{:<44} {:>12} {:>10} {:>9} KiB",
        "worker: `once`, 1,000 orders", "-", "-", small.max_rss_kib
    );
    println!(
        "telemetry's cost, each drain against the telemetry-off drain of its round (medians): {:.2}x over OTLP/HTTP, {:.2}x over gRPC, {:.2}x to a PING flood",
        vs_off(&traced_runs, &worker_runs),
        vs_off(&grpc_runs, &worker_runs),
        vs_off(&flood_runs, &worker_runs),
    );
    print_flood_cost(&flood_runs, &grpc_runs, &worker_runs, flood_connections);
    println!(
        "traces exported by the last traced 20,000-order drain: {traces}, the largest holding {largest_trace} spans"
    );
    let each_round = |runs: &[f64]| {
        runs.iter()
            .map(|r| format!("{:.2}", r / floor_rate))
            .collect::<Vec<_>>()
            .join(" ")
    };
    println!(
        "medians of {} rounds; each round vs the floor's median: floor {}, worker {}, with telemetry {}, over gRPC {}, to a PING flood {}",
        rounds(),
        each_round(&floor_runs),
        each_round(&worker_runs.iter().map(rate).collect::<Vec<_>>()),
        each_round(&traced_runs.iter().map(rate).collect::<Vec<_>>()),
        each_round(&grpc_runs.iter().map(rate).collect::<Vec<_>>()),
        each_round(&flood_runs.iter().map(rate).collect::<Vec<_>>()),
    );
    println!(
        "telemetry over gRPC vs over HTTP: {:.2}x the rate (OTLP/gRPC calls of the last drain over gRPC: {grpc_exported})",
        grpc_rate / traced_rate
    );
    println!(
        "CPU (user + system) per order: floor {:.3} ms, worker {:.3} ms, {:.3} ms with telemetry exported, {:.3} ms over gRPC",
        median(floor_cpu),
        cpu_per_order(&worker_runs),
        cpu_per_order(&traced_runs),
        cpu_per_order(&grpc_runs),
    );
    println!(
        "PIDs allocated on the machine while the worker drained 20,000 orders {} times (its threads, plus any other process started meanwhile): {pids} ({:.4} per order)",
        rounds(),
        pids as f64 / (rounds() * BACKLOG) as f64
    );
    println!(
        "RSS growth 1,000 -> 20,000 orders: {:+.1}%   (exit codes {} and {:?}; orders left registered {leftover}; ledger violations {violations}; OTLP requests of the last traced drain {exported})",
        (large.max_rss_kib as f64 / small.max_rss_kib as f64 - 1.0) * 100.0,
        small.exit_code,
        worker_runs
            .iter()
            .chain(&traced_runs)
            .chain(&grpc_runs)
            .map(|r| r.exit_code)
            .collect::<Vec<_>>()
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
    for (n, delay, fault_free, faults) in &under_failure {
        println!();
        let pace = if delay.is_zero() {
            "replies at once".to_string()
        } else {
            format!(
                "{} ms per reply, the real services' pace",
                delay.as_millis()
            )
        };
        println!(
            "under failure: {n} orders drained by `run --interval 0.1`, each service failing at the rate, ERROR_RATE the same, {pace}:"
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
                "{:<28} {:>10.0} orders/s {:>8.2} x fault-free   (drained in {:.2} s; ledger violations {}; ready {}, blocked {}, decreases {})",
                format!("{:.0}% faults", rate * 100.0),
                r,
                r / free_rate,
                d.wall.as_secs_f64(),
                d.violations,
                d.ready,
                d.blocked,
                d.decreases
            );
        }
    }
    print_state_rows(&state_rows);
    println!();
    println!(
        "under failure: {FAULT_ORDERS} orders drained by `once` run again and again with no state file (as cron runs it), replies at once:"
    );
    let free_rate = FAULT_ORDERS as f64 / cron_free.wall.as_secs_f64();
    for (name, d) in std::iter::once(("no faults".to_string(), &cron_free)).chain(
        cron_faults
            .iter()
            .map(|(rate, d)| (format!("{:.0}% faults", rate * 100.0), d)),
    ) {
        let r = FAULT_ORDERS as f64 / d.wall.as_secs_f64();
        println!(
            "{name:<28} {r:>10.0} orders/s {:>8.2} x fault-free   ({} runs, {:.2} s; ledger violations {}; ready {}, blocked {}, decreases {})",
            r / free_rate,
            d.runs,
            d.wall.as_secs_f64(),
            d.violations,
            d.ready,
            d.blocked,
            d.decreases
        );
    }
}

/// An OTLP/gRPC collector on loopback: the h2 crate's HTTP/2 server (the one tonic
/// serves with), on a tokio runtime of its own thread. It reads each call's message,
/// counts the call and answers OK with an empty reply. It decodes nothing, as the
/// OTLP/HTTP sink keeps the bodies without decoding them: both rows measure the worker,
/// not a collector's protobuf decoding, which shares the machine's two cores with it.
struct GrpcSink {
    url: String,
    calls: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl GrpcSink {
    fn start() -> GrpcSink {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the collector");
        listener
            .set_nonblocking(true)
            .expect("a non-blocking listener");
        let url = format!("http://{}", listener.local_addr().expect("its address"));
        let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = calls.clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a tokio runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("the listener");
                tokio::spawn(async move {
                    while let Ok((socket, _)) = listener.accept().await {
                        let _ = socket.set_nodelay(true);
                        tokio::spawn(serve_grpc(socket, counted.clone()));
                    }
                });
                let _ = stopped.await;
            });
            // Dropping the runtime ends the connections' tasks.
        });
        GrpcSink {
            url,
            calls,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        self.url.clone()
    }

    fn requests(&self) -> usize {
        self.calls.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// One connection of [`GrpcSink`]: every call is read to its end, counted and answered
/// OK (an empty message, then `grpc-status: 0`), each in a task of its own while the
/// connection's task drives the connection.
async fn serve_grpc(
    socket: tokio::net::TcpStream,
    calls: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    let Ok(mut connection) = h2::server::handshake(socket).await else {
        return;
    };
    while let Some(Ok((request, mut respond))) = connection.accept().await {
        let calls = calls.clone();
        tokio::spawn(async move {
            let mut body = request.into_body();
            while let Some(Ok(chunk)) = body.data().await {
                let _ = body.flow_control().release_capacity(chunk.len());
            }
            calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let response = http::Response::builder()
                .header("content-type", "application/grpc")
                .body(())
                .expect("a response head");
            let Ok(mut stream) = respond.send_response(response, false) else {
                return;
            };
            let _ = stream.send_data(bytes::Bytes::from_static(&[0; 5]), false);
            let mut trailers = http::HeaderMap::new();
            trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
            let _ = stream.send_trailers(trailers);
        });
    }
}

impl Drop for GrpcSink {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The rate of each of `runs` against the telemetry-off run of the same round, the
/// median of those ratios: a round's runs follow one another, so a slow spell of this
/// shared machine weighs on both sides of a ratio.
fn vs_off(runs: &[Run], off: &[Run]) -> f64 {
    median(
        runs.iter()
            .zip(off)
            .map(|(run, off)| off.wall.as_secs_f64() / run.wall.as_secs_f64())
            .collect(),
    )
}

/// The median of the runs' CPU time (user and system), in seconds.
fn median_cpu(runs: &[Run]) -> f64 {
    median(runs.iter().map(|r| r.cpu.as_secs_f64()).collect())
}

/// What the PING flood costs the worker: its CPU time beyond a drain over gRPC to a
/// collector that behaves (and beyond telemetry off), per second of the flooded drain,
/// as a share of one core (medians of the rounds).
fn print_flood_cost(flooded: &[Run], grpc: &[Run], off: &[Run], connections: usize) {
    let wall = median(flooded.iter().map(|r| r.wall.as_secs_f64()).collect());
    println!(
        "a collector flooding PING frames ({} connections in the last drain) takes {:.1}% of one core beyond gRPC export to a collector that behaves ({:.1}% beyond telemetry off)",
        connections,
        (median_cpu(flooded) - median_cpu(grpc)) / wall * 100.0,
        (median_cpu(flooded) - median_cpu(off)) / wall * 100.0,
    );
}

/// A hostile OTLP/gRPC collector on loopback: it answers a connection's preface with
/// SETTINGS, then sends PING frames, 64 at a time, as fast as the connection takes them,
/// until the worker closes it (the transport's frame budget: GOAWAY ENHANCE_YOUR_CALM).
struct PingFlood {
    addr: std::net::SocketAddr,
    connections: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PingFlood {
    fn start() -> PingFlood {
        use std::io::{Read, Write};
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the flood");
        listener
            .set_nonblocking(true)
            .expect("a non-blocking listener");
        let addr = listener.local_addr().expect("its address");
        let connections = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (count, stopped) = (connections.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let frame = |kind: u8, payload: &[u8]| {
                let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
                f.extend([kind, 0, 0, 0, 0, 0]);
                f.extend_from_slice(payload);
                f
            };
            let settings = frame(4, &[]);
            let pings = frame(6, &[0; 8]).repeat(64);
            while !stopped.load(Ordering::Relaxed) {
                let Ok((mut conn, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                count.fetch_add(1, Ordering::Relaxed);
                let (settings, pings, stopped) = (settings.clone(), pings.clone(), stopped.clone());
                std::thread::spawn(move || {
                    let _ = conn.set_nonblocking(false);
                    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                    let _ = conn.read(&mut [0; 65536]);
                    let _ = conn.write_all(&settings);
                    while !stopped.load(Ordering::Relaxed) && conn.write_all(&pings).is_ok() {}
                });
            }
        });
        PingFlood {
            addr,
            connections,
            stop,
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn connections(&self) -> usize {
        self.connections.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for PingFlood {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The middle value (of an odd count; the upper middle of an even one).
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
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

/// A backlog, the services' time per reply, its fault-free drain, and its drains at
/// each fault rate.
type UnderFailure = (usize, Duration, Drained, Vec<(f64, Drained)>);

struct Drained {
    wall: Duration,
    violations: usize,
    ready: usize,
    blocked: usize,
    /// Decreases that took stock (the stand-in takes stock on every one).
    decreases: usize,
    /// `once` runs it took (0 for `run`).
    runs: usize,
}

/// The state file's rows: a drain's rate with and without one.
fn print_state_rows(state_rows: &[StateRow]) {
    println!();
    println!(
        "state file: `once` drains with and without one (on the disk of {}), {STATE_PAIRS} pairs each, in turns:",
        env!("CARGO_TARGET_TMPDIR")
    );
    for (n, delay, pairs) in state_rows {
        let without = median(
            pairs
                .iter()
                .map(|p| *n as f64 / p.0.as_secs_f64())
                .collect(),
        );
        let with = median(
            pairs
                .iter()
                .map(|p| *n as f64 / p.1.as_secs_f64())
                .collect(),
        );
        let pace = if delay.is_zero() {
            "replies at once".to_string()
        } else {
            format!("{} ms per reply", delay.as_millis())
        };
        println!(
            "{:<44} {:>10.0} orders/s without, {:>8.0} with: {:.2}x   (each pair: {})",
            format!("{n} orders, {pace}"),
            without,
            with,
            with / without,
            pairs
                .iter()
                .map(|p| format!("{:.2}", p.0.as_secs_f64() / p.1.as_secs_f64()))
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
}

/// Pairs of `once` drains of `orders` orders taking `delay` per reply: without a state
/// file, then with one (a new file each time); the wall time of each.
fn state_file_pairs(
    orders: usize,
    delay: Duration,
    rng: &mut fastrand::Rng,
) -> Vec<(Duration, Duration)> {
    let knobs = Knobs {
        delay,
        ..Knobs::default()
    };
    let stack = Stack::start(0, 0, knobs).expect("start the stand-in services");
    for wood in WOODS {
        stack.add_stock(wood, u64::MAX / 16);
    }
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("drain-state-{}", std::process::id()));
    let drain = |stack: &Stack, rng: &mut fastrand::Rng, state: Option<&std::path::Path>| {
        stack.seed_orders(orders, rng);
        let mut command = worker_command(stack);
        // Without one, the worker says so at warn level.
        command.env("LOG_LEVEL", "error");
        if let Some(state) = state {
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("the state file's directory");
            command.env("STATE_FILE", state);
        }
        let started = Instant::now();
        let status = command.arg("once").status().expect("run once");
        assert!(status.success(), "{status}");
        started.elapsed()
    };
    let pairs = (0..STATE_PAIRS)
        .map(|_| {
            let without = drain(&stack, rng, None);
            let with = drain(&stack, rng, Some(&dir.join("state.jsonl")));
            (without, with)
        })
        .collect();
    let _ = std::fs::remove_dir_all(&dir);
    pairs
}

/// `run` (or, with `cron`, `once` started again and again with no state file) drains
/// `orders` orders from services failing `rate` of their calls (the worker's own
/// ERROR_RATE the same) and taking `delay` per reply; the time until none is
/// registered.
fn drain_with_faults(
    orders: usize,
    rate: f64,
    delay: Duration,
    cron: bool,
    rng: &mut fastrand::Rng,
) -> Drained {
    let knobs = Knobs {
        delay,
        ..Knobs::failing(rate)
    };
    let stack = Stack::start(0, 0, knobs).expect("start the stand-in services");
    for wood in WOODS {
        stack.add_stock(wood, u64::MAX / 16);
    }
    stack.seed_orders(orders, rng);
    let started = Instant::now();
    let mut runs = 0;
    if cron {
        // `once` again and again, as cron runs it, with no state file.
        while stack.count_by_status().contains_key("registered") {
            assert!(
                started.elapsed() < Duration::from_secs(600),
                "not drained in 10 minutes"
            );
            runs += 1;
            worker_command(&stack)
                .env("ERROR_RATE", rate.to_string())
                .env("LOG_LEVEL", "off")
                .arg("once")
                .status()
                .expect("run once");
        }
    } else {
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
        // SAFETY: kill(2) on our own child, not yet reaped.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        child.wait().expect("wait for the worker");
    }
    let wall = started.elapsed();
    let by_status = stack.count_by_status();
    Drained {
        wall,
        violations: stack.violations().len(),
        ready: by_status.get("ready").copied().unwrap_or(0),
        blocked: by_status.get("blocked").copied().unwrap_or(0),
        decreases: stack.ledger().len(),
        runs,
    }
}

/// [`floor`] in a process of its own (this binary, started again), timed from its
/// start to its exit as the worker is: the orders it did, its wall time and its CPU
/// time (user + system, from its rusage).
fn floor_process(stack: &Stack) -> (usize, Duration, Duration) {
    use std::io::Read;
    let exe = std::env::current_exe().expect("the bench's own path");
    let started = Instant::now();
    // Reaped by wait4 below, which also gives its rusage.
    #[allow(clippy::zombie_processes)]
    let mut child = Command::new(exe)
        .env_clear()
        .env(
            FLOOR_CHILD,
            format!("{} {}", stack.orders_url(), stack.stocks_url()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run the floor");
    let mut out = String::new();
    child
        .stdout
        .take()
        .expect("the floor's stdout")
        .read_to_string(&mut out)
        .expect("read the floor's count");
    let mut status = 0;
    // SAFETY: wait4 on our own child with a valid status and rusage to fill.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let reaped = unsafe { libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut usage) };
    let wall = started.elapsed();
    assert!(
        reaped > 0 && libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "the floor failed"
    );
    let done = out.trim().parse().expect("the floor's count");
    (done, wall, cpu_time(&usage))
}

/// This process's user + system time so far (all its threads, not its children).
fn own_cpu() -> Duration {
    // SAFETY: getrusage fills the rusage it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    cpu_time(&usage)
}

/// User + system time from a rusage.
fn cpu_time(usage: &libc::rusage) -> Duration {
    let time = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    time(usage.ru_utime) + time(usage.ru_stime)
}

/// The calls one order needs, and nothing else: a share of a page fetch, a decrease and
/// a status update, on one keep-alive connection per service.
fn floor(orders_url: &str, stocks_url: &str) -> (usize, Duration) {
    let agent = ureq::Agent::new_with_defaults();
    let list = format!("{orders_url}/orders/status/registered?skip=0&limit={PAGE}");
    let decrease = format!("{stocks_url}/stocks/decrease");
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
                .put(&format!("{orders_url}/orders/{id}"))
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
    /// CPU time of this process meanwhile: the stand-in services and the collector
    /// (and the 10 ms polls of the worker's memory), which share the machine's cores
    /// with the worker.
    peers_cpu: Duration,
}

/// Runs `ordermanagement once` and follows its peak RSS (`VmHWM` in /proc, read every
/// 10 ms until it exits). Not `wait4`'s `ru_maxrss`: a child spawned with
/// `posix_spawn` shares this process's memory until exec, and its maximum carries
/// that (this process holds the services) into the figure.
/// The worker's `once` drain, exporting telemetry to `otlp` (its URL, and whether
/// over gRPC) if given.
fn run_worker(stack: &Stack, otlp: Option<(String, bool)>) -> Run {
    let started = Instant::now();
    let mut command = worker_command(stack);
    if let Some((url, grpc)) = otlp {
        command.env("OTEL_EXPORTER_OTLP_ENDPOINT", url);
        if grpc {
            command.env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc");
        }
    }
    let peers_cpu = own_cpu();
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
        // VmHWM is the peak so far: reading it every 10 ms misses at most the last
        // 10 ms of growth, and takes less of the machine from the worker than the
        // 2 ms this used to poll at.
        std::thread::sleep(Duration::from_millis(10));
    };
    let pids = last_pid() - first_pid;
    Run {
        wall: started.elapsed(),
        max_rss_kib,
        exit_code: if libc::WIFEXITED(status) {
            libc::WEXITSTATUS(status)
        } else {
            -1
        },
        cpu: cpu_time(&usage),
        pids: pids.into(),
        peers_cpu: own_cpu().saturating_sub(peers_cpu),
    }
}

/// The worker binary against the stack, error rate 0.
fn worker_command(stack: &Stack) -> Command {
    let mut cmd = Command::new(bin());
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
