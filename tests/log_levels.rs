//! The log-levels table of docs/telemetry.md is the binary's: the worker runs in a few
//! scenarios (`once` and `run`, faults of every kind the table names) at
//! `LOG_LEVEL=debug`, and every line whose message matches a row must be at a level
//! that row's cell for its command names; every row must be met at least once.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use common::Running;
use regex::Regex;
use standin::{Answer, Knobs, Stack};

const LEVELS: [&str; 5] = ["ERROR", "WARN", "INFO", "DEBUG", "TRACE"];

/// One row of the table: its message stems as patterns, and the levels each command's
/// cell allows.
#[derive(Debug)]
struct Row {
    stems: Vec<String>,
    patterns: Vec<Regex>,
    run: BTreeSet<String>,
    once: BTreeSet<String>,
}

/// A stem as a pattern anchored at the message's start: `…` any text, `N` a number.
fn pattern(stem: &str) -> Regex {
    let number = Regex::new(r"\bN\b").unwrap();
    let pieces: Vec<String> = stem
        .split('…')
        .map(|piece| {
            let escaped = regex::escape(piece).replace("xN", r"x\d+");
            number.replace_all(&escaped, r"\d+").into_owned()
        })
        .collect();
    Regex::new(&format!("^{}", pieces.join(".*?"))).unwrap()
}

fn levels(cell: &str) -> BTreeSet<String> {
    LEVELS
        .iter()
        .filter(|l| Regex::new(&format!(r"\b{l}\b")).unwrap().is_match(cell))
        .map(|l| l.to_string())
        .collect()
}

/// The rows of the table under `## Log levels` in docs/telemetry.md.
fn table() -> Vec<Row> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/telemetry.md");
    let text = std::fs::read_to_string(path).expect("docs/telemetry.md");
    let start = text
        .find("\n## Log levels\n")
        .expect("a Log levels section");
    let rest = &text[start + 1..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |i| i + 3);
    let code = Regex::new(r"`([^`]+)`").unwrap();
    rest[..end]
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|line| {
            let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
            assert_eq!(cells.len(), 3, "three cells: {line}");
            let stems: Vec<String> = code
                .captures_iter(cells[0])
                .map(|c| c[1].to_string())
                .collect();
            let row = Row {
                patterns: stems.iter().map(|s| pattern(s)).collect(),
                stems,
                run: levels(cells[1]),
                once: levels(cells[2]),
            };
            assert!(!row.run.is_empty() && !row.once.is_empty(), "{line}");
            row
        })
        .collect()
}

/// A scenario's lines: (level, message), from the JSON format.
fn lines(out: &Output) -> Vec<(String, String)> {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| {
            (
                v["level"].as_str().unwrap_or_default().to_string(),
                v["message"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

fn worker(stack: &Stack, error_rate: &str, args: &[&str]) -> std::process::Command {
    let mut cmd = common::worker_at(&stack.orders_url(), &stack.stocks_url());
    cmd.env("ERROR_RATE", error_rate)
        .env("LOG_LEVEL", "debug")
        .env("LOG_FORMAT", "json")
        .env("HTTP_TIMEOUT_SECONDS", "0.5")
        .env("DECREASE_TIMEOUT_SECONDS", "1")
        .env("STATE_FILE", "")
        .args(args)
        .stdin(Stdio::null());
    cmd
}

fn once(stack: &Stack, error_rate: &str, args: &[&str]) -> Output {
    let mut all = vec!["once"];
    all.extend_from_slice(args);
    Running::start(&mut worker(stack, error_rate, &all))
        .wait_for(Duration::from_secs(60))
        .expect("once ends")
}

fn run_for(stack: &Stack, secs: u64, middle: impl FnOnce()) -> Output {
    let mut running = Running::start(&mut worker(stack, "0.1", &["run", "--interval", "0.5"]));
    middle();
    std::thread::sleep(Duration::from_secs(secs));
    running.signal(libc::SIGTERM);
    running
        .wait_for(Duration::from_secs(10))
        .expect("run stops")
}

/// `once` meeting a fault of every kind: a `409`, a refused update, a decrease that
/// fails at its write, status updates that never land, a decrease refused, one that
/// keeps failing, one that stalls; both services failing 10% of their calls.
fn once_with_every_fault() -> Output {
    let mut knobs = Knobs::failing(0.1);
    let status = |k: &mut Knobs, id, code, body: &str| {
        k.status_answers.insert(id, Answer::new(code, body));
    };
    status(&mut knobs, 1, 409, r#"{"error": "conflict"}"#);
    status(&mut knobs, 2, 404, r#"{"error": "Order not found"}"#);
    status(&mut knobs, 4, 503, r#"{"error": "busy"}"#);
    status(&mut knobs, 5, 503, r#"{"error": "busy"}"#);
    let decrease = |k: &mut Knobs, id, answer| {
        k.decrease_answers.insert(id, answer);
    };
    decrease(
        &mut knobs,
        3,
        Answer::new(
            500,
            r#"{"error": "Unexpected error during stock decrease (update)"}"#,
        ),
    );
    decrease(
        &mut knobs,
        5,
        Answer::new(400, r#"{"error": "Insufficient stock"}"#),
    );
    decrease(&mut knobs, 6, Answer::new(503, r#"{"error": "busy"}"#));
    decrease(
        &mut knobs,
        7,
        Answer {
            status: 500,
            body: r#"{"error": "Unexpected error during stock decrease (read)"}"#.into(),
            delay: Duration::from_millis(990),
            retry_after: None,
        },
    );
    let stack = Stack::stocked(knobs, 1_000_000, 100, 3);
    once(&stack, "0.1", &["--pending-deadline", "3"])
}

/// `run` against a Stock Service failing every call until it has failed 16 (the worker
/// then rests it and probes it), then 10% of them, until the backlog is gone and cycles
/// are idle.
fn run_through_an_outage() -> Output {
    let mut knobs = Knobs::failing(0.1);
    knobs.stock_error_rate = 1.0;
    let stack = Stack::stocked(knobs, 1_000_000, 100, 3);
    let ids: Vec<u64> = stack.orders().iter().map(|o| o.id).collect();
    run_for(&stack, 4, || {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while ids
            .iter()
            .map(|id| stack.decrease_calls(*id))
            .sum::<usize>()
            < 16
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        stack.set_knobs(Knobs::failing(0.1));
    })
}

/// `run` with one order quarantined, then idle cycles that still carry it.
fn run_with_a_quarantine() -> Output {
    let mut knobs = Knobs::default();
    knobs
        .status_answers
        .insert(1, Answer::new(409, r#"{"error": "conflict"}"#));
    let stack = Stack::stocked(knobs, 1_000_000, 5, 3);
    run_for(&stack, 3, || {})
}

#[test]
fn every_line_is_at_the_level_the_docs_table_gives() {
    let rows = table();
    assert!(rows.len() >= 15, "{} rows", rows.len());
    let scenarios: Vec<(&str, bool, std::thread::JoinHandle<Output>)> = vec![
        (
            "once with every fault",
            true,
            std::thread::spawn(once_with_every_fault),
        ),
        (
            "once, 20 orders, simulated failures only",
            true,
            std::thread::spawn(|| {
                once(
                    &Stack::stocked(Knobs::default(), 1_000_000, 20, 4),
                    "0.1",
                    &[],
                )
            }),
        ),
        (
            "once, no orders",
            true,
            std::thread::spawn(|| {
                once(&Stack::stocked(Knobs::default(), 1_000_000, 0, 4), "0", &[])
            }),
        ),
        (
            "run through an outage",
            false,
            std::thread::spawn(run_through_an_outage),
        ),
        (
            "run with a quarantine",
            false,
            std::thread::spawn(run_with_a_quarantine),
        ),
    ];
    let mut met = vec![0usize; rows.len()];
    let mut wrong = Vec::new();
    let mut checked = 0;
    for (name, is_once, handle) in scenarios {
        let out = handle.join().expect("the scenario ran");
        let lines = lines(&out);
        assert!(lines.len() >= 4, "{name}: {out:?}");
        for (level, message) in lines {
            let Some(i) = rows
                .iter()
                .position(|r| r.patterns.iter().any(|p| p.is_match(&message)))
            else {
                continue;
            };
            met[i] += 1;
            checked += 1;
            let allowed = if is_once { &rows[i].once } else { &rows[i].run };
            if !allowed.contains(&level) {
                wrong.push(format!(
                    "{name}: {level} {message:?}: the row {:?} gives {allowed:?}",
                    rows[i].stems
                ));
            }
        }
    }
    let unmet: Vec<_> = rows
        .iter()
        .zip(&met)
        .filter(|(_, n)| **n == 0)
        .map(|(r, _)| &r.stems)
        .collect();
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert!(unmet.is_empty(), "rows no scenario met: {unmet:#?}");
    assert!(checked > 100, "{checked} lines checked");
}

#[test]
fn the_stems_match_what_they_say() {
    let p = pattern("order N (… xN): ready");
    assert!(p.is_match("order 17 (oak x3): ready"));
    assert!(!p.is_match("order 17 (oak x3): blocked: no stock"));
    assert!(!p.is_match("the order 17 (oak x3): ready"));
    let p = pattern("cycle done in N ms: … unknown");
    assert!(p.is_match("cycle done in 41 ms: 3 listed, 2 ready, 1 unknown"));
    assert!(!p.is_match("cycle done in 41 ms: 3 listed, 3 ready"));
    assert_eq!(
        levels("ERROR: a `ready` order (DEBUG when named again)"),
        BTreeSet::from(["ERROR".to_string(), "DEBUG".to_string()])
    );
}
