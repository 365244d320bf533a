//! The proof that crashes and replicas lose nothing: three sharded replicas, each with
//! its own state file, against stand-in services that fail 30% of calls on every
//! endpoint, killed with SIGKILL at random moments and restarted with the same state
//! file, until no order is left registered. Then the ledger is checked.
//!
//! The default suite runs a short variant (1,500 orders, 15 kills 20 to 150 ms apart, so
//! that they land while the replicas drain); `CHAOS_ORDERS=5000 CHAOS_KILLS=60 cargo test
//! --release --test chaos -- --nocapture` runs a long one and prints its figures.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use ordermanagement::Journal;
use standin::{Knobs, Stack, WOODS};

const REPLICAS: u64 = 3;
const STOCK_EACH: u64 = 10_000_000;

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Replica {
    shard: u64,
    state_file: PathBuf,
    child: Option<Child>,
}

impl Replica {
    fn start(&mut self, stack: &Stack) {
        let child = common::worker_at(&stack.orders_url(), &stack.stocks_url())
            .env("ERROR_RATE", "0.05")
            .env("LOG_LEVEL", "error")
            .env("HTTP_TIMEOUT_SECONDS", "2")
            .env("DECREASE_TIMEOUT_SECONDS", "3")
            .env("STATE_FILE", &self.state_file)
            .env("SHARD", format!("{}/{REPLICAS}", self.shard))
            .args(["run", "--interval", "0.2"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start a replica");
        self.child = Some(child);
    }

    fn signal(&mut self, signal: libc::c_int) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on our own child, not yet reaped.
            unsafe { libc::kill(child.id() as libc::pid_t, signal) };
            let _ = child.wait();
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.signal(libc::SIGKILL);
    }
}

struct Figures {
    orders: usize,
    /// From the replicas' start until no order is registered.
    drained_in: Duration,
    kills: usize,
    by_status: BTreeMap<String, usize>,
    violations: Vec<String>,
}

fn chaos(name: &str, knobs: Knobs) -> Figures {
    let orders = setting("CHAOS_ORDERS", 1500);
    let target_kills = setting("CHAOS_KILLS", 15);
    let dir = std::env::temp_dir().join(format!("om-chaos-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();

    let stack = Stack::start(0, 0, knobs).expect("start the stand-in services");
    for wood in WOODS {
        stack.add_stock(wood, STOCK_EACH);
    }
    let mut rng = fastrand::Rng::with_seed(42);
    stack.seed_orders(orders, &mut rng);

    let state = |i: u64| -> PathBuf { dir.join(format!("state-{i}.jsonl")) };
    let started = Instant::now();
    let mut replicas: Vec<Replica> = (0..REPLICAS)
        .map(|shard| Replica {
            shard,
            state_file: state(shard),
            child: None,
        })
        .collect();
    for r in &mut replicas {
        r.start(&stack);
    }

    let registered = || {
        stack
            .count_by_status()
            .get("registered")
            .copied()
            .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(60 + orders as u64 / 10);
    let mut kills = 0;
    while registered() > 0 {
        assert!(
            Instant::now() < deadline,
            "{} orders still registered at the deadline",
            registered()
        );
        std::thread::sleep(Duration::from_millis(rng.u64(20..=150)));
        if kills < target_kills {
            let victim = &mut replicas[rng.usize(..REPLICAS as usize)];
            victim.signal(libc::SIGKILL);
            kills += 1;
            victim.start(&stack);
        }
    }
    let drained_in = started.elapsed();
    for r in &mut replicas {
        r.signal(libc::SIGTERM);
    }

    let mut violations = stack.violations();
    let taken: u64 = stack.ledger().iter().map(|e| e.quantity).sum();
    let left: u64 = WOODS.iter().map(|w| stack.stock(w).unwrap()).sum();
    if taken + left != STOCK_EACH * WOODS.len() as u64 {
        violations.push(format!(
            "stock totals: taken {taken} + left {left} != seeded"
        ));
    }
    let state_left: usize = (0..REPLICAS).map(|i| in_flight(&state(i))).sum();
    if state_left != 0 {
        violations.push(format!(
            "{state_left} orders still in flight in the state files after the run"
        ));
    }
    let _ = std::fs::remove_dir_all(&dir);
    let figures = Figures {
        orders,
        drained_in,
        kills,
        by_status: stack.count_by_status(),
        violations,
    };
    println!(
        "chaos {name}: orders {} in {:.1} s ({:.0} orders/s) kills {} by status {:?} unknowns {} violations {}",
        figures.orders,
        figures.drained_in.as_secs_f64(),
        figures.orders as f64 / figures.drained_in.as_secs_f64(),
        figures.kills,
        figures.by_status,
        figures.by_status.get("unknown").copied().unwrap_or(0),
        figures.violations.len()
    );
    figures
}

/// Orders a state file still holds as unfinished, read the way a restart reads it.
fn in_flight(path: &Path) -> usize {
    ordermanagement::state::journal::FileJournal::open(path)
        .expect("the state file opens")
        .in_flight()
        .len()
}

fn assert_clean(f: &Figures) {
    assert!(
        f.violations.is_empty(),
        "{} violations: {:?}",
        f.violations.len(),
        &f.violations[..f.violations.len().min(5)]
    );
    assert!(
        f.kills >= setting("CHAOS_KILLS", 15).min(10),
        "only {} kills",
        f.kills
    );
    assert_eq!(f.by_status.values().sum::<usize>(), f.orders);
}

#[test]
fn killed_replicas_with_faulty_services_take_no_stock_twice() {
    let knobs = Knobs::failing(0.3);
    assert_clean(&chaos("faults", knobs));
}

#[test]
fn killed_replicas_with_500s_after_the_change_take_no_stock_twice() {
    let knobs = Knobs {
        stock_fail_after_change_rate: 0.2,
        ..Knobs::failing(0.3)
    };
    assert_clean(&chaos("after-change", knobs));
}
