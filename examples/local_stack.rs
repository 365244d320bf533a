//! Serves in-memory stand-ins of the Order and Stock services on 127.0.0.1 until Ctrl-C,
//! with N registered orders and ample stock, so that the real binary (or any client)
//! can be pointed at them:
//!
//! ```sh
//! cargo run --example local_stack -- --orders 500
//! # elsewhere:
//! cargo run --release -- run --interval 2
//! ```

use std::time::Duration;

use clap::Parser;
use ordermanagement::Stop;
use standin::{Knobs, Stack, WOODS};

#[derive(Parser)]
#[command(about = "In-memory Order (port 5000) and Stock (port 5001) services on 127.0.0.1")]
struct Args {
    /// Registered orders to start with (random wood, quantity 1..=100).
    #[arg(long, default_value_t = 100)]
    orders: usize,
    /// Share of calls each service fails on its own (Order Service 502, Stock Service 500), before any change.
    #[arg(long, default_value_t = 0.0)]
    error_rate: f64,
    #[arg(long, default_value_t = 5000)]
    order_port: u16,
    #[arg(long, default_value_t = 5001)]
    stock_port: u16,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    if !(0.0..=1.0).contains(&args.error_rate) {
        eprintln!(
            "local_stack: --error-rate must be within 0.0..=1.0, not {}",
            args.error_rate
        );
        return std::process::ExitCode::from(2);
    }
    let knobs = Knobs::failing(args.error_rate);
    let stack = match Stack::start(args.order_port, args.stock_port, knobs) {
        Ok(stack) => stack,
        Err(e) => {
            eprintln!(
                "local_stack: cannot listen on ports {} and {}: {e}",
                args.order_port, args.stock_port
            );
            return std::process::ExitCode::FAILURE;
        }
    };
    for wood in WOODS {
        stack.add_stock(wood, 1_000_000);
    }
    stack.seed_orders(args.orders, &mut fastrand::Rng::new());
    let stop = Stop::new();
    if let Err(e) = stop.install_signal_handlers() {
        eprintln!("local_stack: cannot install the Ctrl-C handler: {e}");
        return std::process::ExitCode::FAILURE;
    }
    println!(
        "Order Service  {}  ({} registered orders)",
        stack.orders_url(),
        args.orders
    );
    println!(
        "Stock Service  {}  (1000000 of each wood)",
        stack.stocks_url()
    );
    println!(
        "Point the worker at them:\n  API_URL_ORDERS={} API_URL_STOCKS={} cargo run --release -- run --interval 2",
        stack.orders_url(),
        stack.stocks_url()
    );
    println!("Ctrl-C to stop.");
    let mut last = stack.count_by_status();
    while stop.sleep(Duration::from_secs(2)) {
        let now = stack.count_by_status();
        if now != last {
            println!("orders by status: {now:?}");
            last = now;
        }
    }
    println!("orders by status: {:?}", stack.count_by_status());
    let violations = stack.violations();
    println!(
        "stock invariants: {}",
        if violations.is_empty() {
            "hold".to_string()
        } else {
            violations.join("; ")
        }
    );
    std::process::ExitCode::SUCCESS
}
