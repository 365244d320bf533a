//! Cron is safe by default: with no `STATE_FILE`, the state file is in the standard
//! state directory, keyed by both services and the shard, so that a status update
//! refused by one run is never followed by a second decrease in the next; turned off
//! only when asked (or when no state directory is known), with a line that says what
//! that risks; a state file written for other services is refused.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::Running;
use standin::{Answer, Knobs, Stack};

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("om-state-default-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn once(stack: &Stack, env: &[(&str, &Path)], args: &[&str]) -> Output {
    let mut cmd: Command = common::worker_at(&stack.orders_url(), &stack.stocks_url());
    cmd.env("ERROR_RATE", "0")
        .env("LOG_LEVEL", "warn")
        .env("HTTP_TIMEOUT_SECONDS", "1")
        .arg("once")
        .args(args)
        .stdin(Stdio::null());
    for (name, value) in env {
        cmd.env(name, value);
    }
    Running::start(&mut cmd)
        .wait_for(Duration::from_secs(60))
        .expect("once ends")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The state files in `dir`.
fn state_files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("state-") && n.ends_with(".jsonl"))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Order 1's status update refused with a `409`: its stock is taken, its status not set.
fn refusing_stack() -> Stack {
    let mut knobs = Knobs::default();
    knobs
        .status_answers
        .insert(1, Answer::new(409, r#"{"error": "conflict"}"#));
    Stack::stocked(knobs, 1_000_000, 5, 3)
}

#[test]
fn with_only_home_set_repeated_once_runs_never_take_stock_twice() {
    let home = temp_dir("home");
    let stack = refusing_stack();
    for run in 1..=3 {
        let out = once(&stack, &[("HOME", &home)], &[]);
        assert_eq!(out.status.code(), Some(1), "run {run}: {}", stderr(&out));
        assert!(!stderr(&out).contains("no state file"), "{}", stderr(&out));
    }
    assert_eq!(
        stack.taken(1),
        1,
        "order 1's stock taken once over three runs"
    );
    assert_eq!(stack.status(2).as_deref(), Some("ready"));
    let dir = home.join(".local/state/ordermanagement");
    let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "the state directory is created 0700");
    let files = state_files(&dir);
    assert_eq!(files.len(), 1, "{files:?}");
    // The file records what it belongs to, credentials left out.
    let text = std::fs::read_to_string(&files[0]).unwrap();
    let first = text.lines().next().unwrap_or_default();
    assert!(
        first.contains("\"op\":\"owner\"") && first.contains(&stack.stocks_url()),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&home);
}

#[test]
fn the_state_directory_is_state_directory_then_xdg_state_home_then_home() {
    let root = temp_dir("order");
    let (systemd, xdg, home) = (root.join("systemd"), root.join("xdg"), root.join("home"));
    let stack = Stack::stocked(Knobs::default(), 1_000_000, 1, 1);
    once(
        &stack,
        &[
            ("STATE_DIRECTORY", &systemd),
            ("XDG_STATE_HOME", &xdg),
            ("HOME", &home),
        ],
        &[],
    );
    assert_eq!(state_files(&systemd).len(), 1);
    once(&stack, &[("XDG_STATE_HOME", &xdg), ("HOME", &home)], &[]);
    assert_eq!(state_files(&xdg.join("ordermanagement")).len(), 1);
    assert!(!home.exists());
    // Another stack, or another shard, has a file of its own.
    let other = Stack::stocked(Knobs::default(), 1_000_000, 1, 2);
    once(&other, &[("XDG_STATE_HOME", &xdg)], &[]);
    once(&other, &[("XDG_STATE_HOME", &xdg)], &["--shard", "0/2"]);
    assert_eq!(state_files(&xdg.join("ordermanagement")).len(), 3);
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn turned_off_or_with_nowhere_to_go_it_says_what_that_risks() {
    let home = temp_dir("off");
    let stack = Stack::stocked(Knobs::default(), 1_000_000, 1, 1);
    let empty = PathBuf::new();
    for (env, args) in [
        (
            vec![("HOME", home.as_path()), ("STATE_FILE", empty.as_path())],
            vec![],
        ),
        (vec![("HOME", home.as_path())], vec!["--no-state-file"]),
        (vec![], vec![]),
    ] {
        let out = once(&stack, &env, &args);
        let err = stderr(&out);
        let lines: Vec<&str> = err
            .lines()
            .filter(|l| l.contains("no state file"))
            .collect();
        assert_eq!(lines.len(), 1, "{env:?} {args:?}: {err}");
        assert!(lines[0].contains("taken again by the next run"), "{err}");
    }
    assert!(!home.join(".local").exists(), "no file written when off");
    let _ = std::fs::remove_dir_all(&home);
}

#[test]
fn a_state_file_written_for_other_services_is_refused_naming_both() {
    let dir = temp_dir("foreign");
    let state = dir.join("state.jsonl");
    let a = Stack::stocked(Knobs::default(), 1_000_000, 1, 1);
    let b = Stack::stocked(Knobs::default(), 1_000_000, 1, 2);
    let out = once(&a, &[("STATE_FILE", &state)], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = once(&b, &[("STATE_FILE", &state)], &[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&a.stocks_url()) && err.contains(&b.stocks_url()),
        "names both: {err}"
    );
    assert_eq!(b.ledger().len(), 0, "nothing sent");
    // Another shard of the same stack is refused too.
    let out = once(&a, &[("STATE_FILE", &state)], &["--shard", "1/2"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_default_state_file_of_another_sharding_with_orders_in_flight_is_not_ignored() {
    let home = temp_dir("reshard");
    let stack = refusing_stack();
    // Sharded in two: order 1 (odd ids, shard 1/2) is left quarantined in its file.
    let out = once(&stack, &[("HOME", &home)], &["--shard", "1/2"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(stack.taken(1), 1);
    // Its sibling shard has a file of its own and runs.
    let out = once(&stack, &[("HOME", &home)], &["--shard", "0/2"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // Unsharded, the same services: refused, naming the file that holds order 1.
    let out = once(&stack, &[("HOME", &home)], &[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("another sharding (1/2)"), "{err}");
    assert_eq!(stack.taken(1), 1, "order 1's stock taken once");
    let _ = std::fs::remove_dir_all(&home);
}
