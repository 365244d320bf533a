//! The whole wood shop in one process, for anyone to watch the worker work:
//! in-memory Order and Stock services on free ports, a customer registering orders,
//! a supplier restocking, and the worker's loop at a short interval with the default
//! error rate. It stops by itself (or on Ctrl-C), drains what is left, and prints a
//! final table.
//!
//! ```sh
//! cargo run --release --example demo            # about 30 s
//! cargo run --release --example demo -- --seconds 10
//! ```

use std::process::ExitCode;
use std::thread;
use std::time::{Duration, Instant};

use clap::Parser;
use ordermanagement::{Config, CycleReport, Stop, Worker, logging};
use standin::{Knobs, Stack, WOODS};

#[derive(Parser)]
#[command(
    about = "The worker against in-memory Order and Stock services, with a customer and a supplier"
)]
struct Args {
    /// How long the customer keeps ordering.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// The worker's simulated failure rate (the worker's own default).
    #[arg(long, default_value_t = ordermanagement::config::defaults::ERROR_RATE)]
    error_rate: f64,
    /// Share of calls the services fail on their own (the worker retries them).
    #[arg(long, default_value_t = 0.05)]
    service_error_rate: f64,
    /// Seconds between the worker's cycles.
    #[arg(long, default_value_t = 1.0)]
    interval: f64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let ok = |r: f64| (0.0..=1.0).contains(&r);
    let interval_ok = args.interval > 0.0 && args.interval < 3600.0;
    if !ok(args.error_rate) || !ok(args.service_error_rate) || !interval_ok {
        eprintln!(
            "demo: rates must be within 0.0..=1.0 and the interval a positive number of seconds"
        );
        return ExitCode::from(2);
    }
    // The worker's own lines at warn (retries, simulated failures); the demo prints the rest.
    logging::init(log::LevelFilter::Warn, None, logging::Format::Text);
    let knobs = Knobs::failing(args.service_error_rate);
    let stack = match Stack::start(0, 0, knobs) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("demo: cannot start the services: {e}");
            return ExitCode::FAILURE;
        }
    };
    for wood in WOODS {
        stack.add_stock(wood, 150);
    }
    let stop = Stop::new();
    if let Err(e) = stop.install_signal_handlers() {
        eprintln!("demo: cannot install the Ctrl-C handler: {e}");
        return ExitCode::FAILURE;
    }
    println!(
        "Order Service {}   Stock Service {}",
        stack.orders_url(),
        stack.stocks_url()
    );
    println!(
        "customer: an order every 200-500 ms for {} s; supplier: restocks every second; worker: a cycle every {} s, ERROR_RATE {}\n",
        args.seconds, args.interval, args.error_rate
    );

    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let producers = Stop::new();
    let customer = {
        let (url, producers) = (stack.orders_url(), producers.clone());
        thread::spawn(move || customer(&url, &producers))
    };
    let supplier = {
        let (url, producers) = (stack.stocks_url(), producers.clone());
        thread::spawn(move || supplier(&url, &producers))
    };

    let config = Config {
        orders_url: stack.orders_url(),
        stocks_url: stack.stocks_url(),
        error_rate: args.error_rate,
        ..Config::default()
    };
    let mut worker = Worker::new(&config, stop.clone());
    let started = Instant::now();
    let mut totals = CycleReport::default();
    println!(
        "{:>6}  {:>7} {:>5} {:>7} {:>7} {:>8} {:>7}  {:>6}",
        "t", "fetched", "ready", "blocked", "unknown", "deferred", "pending", "ms"
    );
    loop {
        let report = worker.cycle();
        print_cycle(started, &report);
        add(&mut totals, &report);
        if stop.requested() || Instant::now() >= deadline {
            break;
        }
        stop.sleep(Duration::from_secs_f64(args.interval));
    }
    producers.request();
    let _ = customer.join();
    let _ = supplier.join();
    if !stop.requested() {
        println!("-- customer stopped; one last cycle for what is left --");
        let report = worker.cycle();
        print_cycle(started, &report);
        add(&mut totals, &report);
    }
    final_table(&stack, &totals, worker.pending())
}

/// Registers an order of random wood and quantity 1..=100 every 200-500 ms.
fn customer(orders_url: &str, stop: &Stop) {
    let every = || Duration::from_millis(fastrand::u64(200..=500));
    // The service fails some creates on its own; a customer simply orders again later.
    post_until_stopped(&format!("{orders_url}/orders/"), every, 1..=100, stop);
}

/// Adds 50-250 of a random wood every second.
fn supplier(stocks_url: &str, stop: &Stop) {
    post_until_stopped(
        &format!("{stocks_url}/stocks/"),
        || Duration::from_secs(1),
        50..=250,
        stop,
    );
}

/// Posts `{"wood_type": <random>, "quantity": <random in quantities>}` to `url` after
/// each wait given by `every`, until stopped.
fn post_until_stopped(
    url: &str,
    every: impl Fn() -> Duration,
    quantities: std::ops::RangeInclusive<u32>,
    stop: &Stop,
) {
    let agent = ureq::Agent::new_with_defaults();
    while stop.sleep(every()) {
        let wood = fastrand::choice(WOODS).unwrap();
        let body = format!(
            r#"{{"wood_type":"{wood}","quantity":{}}}"#,
            fastrand::u32(quantities.clone())
        );
        let _ = agent
            .post(url)
            .header("Content-Type", "application/json")
            .send(body.as_bytes());
    }
}

fn print_cycle(started: Instant, r: &CycleReport) {
    println!(
        "{:>5.1}s  {:>7} {:>5} {:>7} {:>7} {:>8} {:>7}  {:>6}{}",
        started.elapsed().as_secs_f64(),
        r.fetched,
        r.ready,
        r.blocked,
        r.unknown,
        r.deferred,
        r.pending,
        r.duration.as_millis(),
        match (&r.ended_early, r.list_failed) {
            (_, true) => "  (order list could not be fetched)".to_string(),
            (Some(why), _) => format!("  (ended early: {why})"),
            _ => String::new(),
        }
    );
}

fn add(t: &mut CycleReport, r: &CycleReport) {
    t.fetched += r.fetched;
    t.ready += r.ready;
    t.blocked += r.blocked;
    t.unknown += r.unknown;
}

fn final_table(stack: &Stack, totals: &CycleReport, pending: usize) -> ExitCode {
    let orders = stack.orders();
    let by_status = stack.count_by_status();
    println!("\nOrders by status ({} in all):", orders.len());
    for (status, n) in &by_status {
        println!("  {status:<11} {n:>5}");
    }
    println!(
        "Worker's own count: {} ready, {} blocked, {} unknown over all cycles",
        totals.ready, totals.blocked, totals.unknown
    );
    let taken_total: u64 = stack.ledger().iter().map(|e| e.quantity).sum();
    let ready_total: u64 = orders
        .iter()
        .filter(|o| o.status == "ready")
        .map(|o| o.quantity)
        .sum();
    println!("\nStock taken (ledger): {taken_total}   quantities of ready orders: {ready_total}");
    if taken_total == ready_total {
        println!("  equal: every ready order's stock was taken once, and no other stock was taken");
    } else {
        let unknown_taken: u64 = orders
            .iter()
            .filter(|o| o.status == "unknown")
            .map(|o| o.quantity)
            .sum();
        println!(
            "  differ by {}: {} order(s) are unknown (stock possibly taken, up to {unknown_taken}) and {pending} \
             status update(s) are pending (stock taken, order not yet ready)",
            taken_total.abs_diff(ready_total),
            by_status.get("unknown").copied().unwrap_or(0)
        );
    }
    let violations = stack.violations();
    if violations.is_empty() {
        println!(
            "Invariants: hold (no order's stock taken twice, none taken for a blocked or registered order)"
        );
        ExitCode::SUCCESS
    } else {
        println!("Invariants VIOLATED:\n  {}", violations.join("\n  "));
        ExitCode::FAILURE
    }
}
