//! `--state-file` through the real binary: what a restart does with the orders a
//! previous run left in flight, and what it refuses.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{Request, Running, ScriptServer, order_json, reply};
use ordermanagement::Journal;
use ordermanagement::state::journal::FileJournal;
use serde_json::json;

fn worker(server: &ScriptServer, state: &std::path::Path) -> Command {
    let mut cmd = common::worker_at(&server.url(), &server.url());
    cmd.env("ERROR_RATE", "0")
        .env("HTTP_TIMEOUT_SECONDS", "2")
        .env("STATE_FILE", state)
        .stdin(Stdio::null());
    cmd
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("om-journal-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn shop() -> ScriptServer {
    ScriptServer::start(|r: &Request| match r.method.as_str() {
        "GET" => reply(
            200,
            json!([
                order_json(1, "oak", 3),
                order_json(2, "elm", 4),
                order_json(3, "pine", 5)
            ])
            .to_string(),
        ),
        "POST" => reply(200, r#"{"quantity": 1}"#),
        _ => reply(200, "{}"),
    })
}

#[test]
fn a_restart_retries_only_the_status_of_decided_orders_and_sets_in_doubt_ones_unknown() {
    let dir = temp_dir("replay");
    let state = dir.join("state.jsonl");
    std::fs::write(
        &state,
        concat!(
            "{\"op\":\"sending\",\"id\":1,\"wood_type\":\"oak\",\"quantity\":3}\n",
            "{\"op\":\"decided\",\"id\":1,\"wood_type\":\"oak\",\"quantity\":3,\"status\":\"ready\"}\n",
            "{\"op\":\"sending\",\"id\":2,\"wood_type\":\"elm\",\"quantity\":4}\n",
        ),
    )
    .unwrap();
    let server = shop();
    let out = run(worker(&server, &state).arg("once"));
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Only order 3 was new: 1's stock is known taken, 2's decrease may have been.
    let decreases = server.calls("POST", "/stocks/decrease");
    assert_eq!(decreases.len(), 1);
    assert_eq!(decreases[0].header("idempotency-key"), Some("order-3"));
    assert_eq!(
        server.calls("PUT", "/orders/1")[0].json(),
        json!({"order_status": "ready"})
    );
    assert_eq!(
        server.calls("PUT", "/orders/2")[0].json(),
        json!({"order_status": "unknown"})
    );
    assert_eq!(
        server.calls("PUT", "/orders/3")[0].json(),
        json!({"order_status": "ready"})
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("reconcile"));
    // Everything finished: nothing left in flight.
    assert!(FileJournal::open(&state).unwrap().in_flight().is_empty());
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_damaged_state_file_stops_the_worker_before_any_request() {
    let dir = temp_dir("damaged");
    let state = dir.join("state.jsonl");
    std::fs::write(
        &state,
        "not json\n{\"op\":\"sending\",\"id\":1,\"wood_type\":\"oak\",\"quantity\":3}\n",
    )
    .unwrap();
    let server = shop();
    let out = run(worker(&server, &state).arg("once"));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("damaged at line 1"));
    assert!(server.requests().is_empty());
    std::fs::remove_dir_all(dir).unwrap();
}

/// Runs `cmd` to its end within 20 s (killed and reaped otherwise, or if the test fails).
fn run(cmd: &mut Command) -> Output {
    Running::start(cmd)
        .wait_for(Duration::from_secs(20))
        .unwrap_or_else(|| panic!("{cmd:?} still running after 20 s; killed"))
}

/// A `run` worker on `state`, once its first cycle has set the three orders' status
/// (it then sleeps 30 s).
fn running_worker(server: &ScriptServer, state: &Path) -> Running {
    let first = Running::start(worker(server, state).args(["run", "--interval", "30"]));
    let deadline = Instant::now() + Duration::from_secs(10);
    while server
        .requests()
        .iter()
        .filter(|r| r.method == "PUT")
        .count()
        < 3
    {
        assert!(Instant::now() < deadline, "the first worker did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    first
}

#[test]
fn a_complete_last_line_that_cannot_be_read_stops_the_worker_but_a_torn_one_does_not() {
    let dir = temp_dir("lastline");
    let state = dir.join("state.jsonl");
    let good = "{\"op\":\"sending\",\"id\":1,\"wood_type\":\"oak\",\"quantity\":3}\n";
    let bad_last =
        "{\"op\":\"decided\",\"id\":1,\"wood_type\":\"oak\",\"quantity\":3,\"status\":\"done\"}";
    std::fs::write(&state, format!("{good}{bad_last}\n")).unwrap();
    let server = shop();
    let out = run(worker(&server, &state).arg("once"));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("damaged at line 2"));
    assert!(server.requests().is_empty());
    // The same line without its newline is what a crash leaves: ignored, and order 1,
    // whose decrease may have been sent, is set unknown and never sent again.
    std::fs::write(&state, format!("{good}{bad_last}")).unwrap();
    let out = run(worker(&server, &state).arg("once"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("last record is torn"), "{stderr}");
    assert_eq!(
        server.calls("PUT", "/orders/1")[0].json(),
        json!({"order_status": "unknown"})
    );
    let keys: Vec<_> = server
        .calls("POST", "/stocks/decrease")
        .iter()
        .map(|r| r.header("idempotency-key").unwrap_or("").to_string())
        .collect();
    assert_eq!(keys, ["order-2", "order-3"]);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_second_worker_on_the_same_state_file_refuses_to_start() {
    let dir = temp_dir("lock");
    let state = dir.join("state.jsonl");
    let server = shop();
    let first = running_worker(&server, &state);
    let requests = server.requests().len();
    let second = run(worker(&server, &state).arg("once"));
    // An overlap (a cron run still going) is no configuration error: exit 3, one line
    // naming the holder, nothing sent.
    assert_eq!(second.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&second.stderr);
    let says = format!(
        "another run (pid {}) holds {}; nothing done",
        first.child.id(),
        state.display()
    );
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("another run"))
        .collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(lines[0].ends_with(&says), "{stderr}");
    assert_eq!(
        server.requests().len(),
        requests,
        "the second run sent nothing"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// The exit-3 line of `once` on `state`, which the caller holds locked (exit 3, one
/// line, nothing sent).
fn refused_as_locked(state: &Path) -> String {
    let server = shop();
    let out = run(worker(&server, state).arg("once"));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(server.requests().is_empty(), "nothing sent");
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("another run"))
        .collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    lines[0].to_string()
}

#[test]
fn the_holder_is_named_when_its_lock_file_names_no_pid_or_the_wrong_one() {
    let dir = temp_dir("holder");
    let state = dir.join("state.jsonl");
    let lock = dir.join("state.jsonl.lock");
    let says = format!(
        "another run (pid {}) holds {}; nothing done",
        std::process::id(),
        state.display()
    );
    // This process holds both locks, as a run that has not written its pid yet (or
    // one of an older build): the kernel's lock table names it.
    let held_state = std::fs::File::create(&state).unwrap();
    let held_lock = std::fs::File::create(&lock).unwrap();
    held_state.try_lock().unwrap();
    held_lock.try_lock().unwrap();
    let line = refused_as_locked(&state);
    assert!(line.ends_with(&says), "{line}");
    // Only the state file held: the second run takes the free lock file and writes its
    // own pid there, then finds the state file locked. The holder is still this
    // process, not the run that was refused.
    drop(held_lock);
    let line = refused_as_locked(&state);
    assert!(line.ends_with(&says), "{line}");
    let written = std::fs::read_to_string(&lock).unwrap();
    assert_ne!(written.trim(), std::process::id().to_string());
    drop(held_state);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_second_name_for_a_running_workers_state_file_lets_no_second_worker_in() {
    let dir = temp_dir("names");
    let state = dir.join("state.jsonl");
    let server = shop();
    let _first = running_worker(&server, &state);
    let requests = server.requests().len();
    // A hard link elsewhere has a lock file of its own beside it; a symbolic link to the
    // directory leads to the same lock file and the same state file.
    let other_dir = temp_dir("names-other");
    let hard = other_dir.join("copy.jsonl");
    std::fs::hard_link(&state, &hard).unwrap();
    let alias = dir.with_extension("alias");
    let _ = std::fs::remove_file(&alias);
    std::os::unix::fs::symlink(&dir, &alias).unwrap();
    for (path, says) in [
        (hard.clone(), "hard links"),
        (alias.join("state.jsonl"), "holds"),
    ] {
        let second = run(worker(&server, &path).arg("once"));
        let stderr = String::from_utf8_lossy(&second.stderr);
        let code = if says == "holds" { 3 } else { 2 };
        assert_eq!(second.status.code(), Some(code), "{path:?}: {stderr}");
        assert!(stderr.contains(says), "{path:?}: {stderr}");
    }
    assert_eq!(
        server.requests().len(),
        requests,
        "the second workers sent nothing"
    );
    std::fs::remove_file(alias).unwrap();
    std::fs::remove_dir_all(other_dir).unwrap();
    std::fs::remove_dir_all(dir).unwrap();
}

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
}

#[test]
fn a_state_file_or_lock_that_is_not_a_regular_file_stops_the_worker_at_once() {
    let server = shop();
    for (n, (at_lock, kind)) in [
        (false, "FIFO"),
        (true, "FIFO"),
        (false, "directory"),
        (false, "symbolic link"),
        (true, "symbolic link"),
    ]
    .into_iter()
    .enumerate()
    {
        let dir = temp_dir(&format!("kind-{n}"));
        let state = dir.join("state.jsonl");
        let at = if at_lock {
            dir.join("state.jsonl.lock")
        } else {
            state.clone()
        };
        let target = dir.join("target");
        std::fs::write(&target, "keep").unwrap();
        match kind {
            "FIFO" => mkfifo(&at),
            "directory" => std::fs::create_dir(&at).unwrap(),
            _ => std::os::unix::fs::symlink(&target, &at).unwrap(),
        }
        let started = Instant::now();
        let out = run(worker(&server, &state).arg("once"));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{kind} at {at:?}: {stderr}");
        assert!(
            stderr.contains(&format!("{}: it is a", at.display()))
                && stderr.contains(kind)
                && stderr.contains("not a regular file"),
            "{kind} at {at:?}: {stderr}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
        let meta = std::fs::symlink_metadata(&at).unwrap();
        assert!(!meta.is_file(), "{at:?} left as it was");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
        std::fs::remove_dir_all(dir).unwrap();
    }
    assert!(server.requests().is_empty());
}

#[test]
fn the_heartbeat_cannot_be_the_state_file_by_any_name() {
    let server = shop();
    let record = "{\"op\":\"sending\",\"id\":1,\"wood_type\":\"oak\",\"quantity\":3}\n";
    for (n, case) in [
        "same path",
        "hard link",
        "symbolic link",
        "other path",
        "lock file",
    ]
    .into_iter()
    .enumerate()
    {
        let dir = temp_dir(&format!("beat-{n}"));
        std::fs::create_dir(dir.join("sub")).unwrap();
        let state = dir.join("sub/state.jsonl");
        let beat = match case {
            "same path" => state.clone(),
            "hard link" => {
                std::fs::write(&state, record).unwrap();
                std::fs::hard_link(&state, dir.join("beat")).unwrap();
                dir.join("beat")
            }
            "symbolic link" => {
                std::fs::write(&state, record).unwrap();
                std::os::unix::fs::symlink(&state, dir.join("beat")).unwrap();
                dir.join("beat")
            }
            // Neither exists yet; the paths differ as text.
            "other path" => {
                std::os::unix::fs::symlink(dir.join("sub"), dir.join("alias")).unwrap();
                dir.join("alias/../sub/state.jsonl")
            }
            _ => dir.join("sub/state.jsonl.lock"),
        };
        let out = run(worker(&server, &state)
            .env("HEARTBEAT_FILE", &beat)
            .arg("once"));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{case}: {stderr}");
        assert!(
            stderr.contains("invalid --heartbeat-file (HEARTBEAT_FILE)")
                && stderr.contains("same file as"),
            "{case}: {stderr}"
        );
        if matches!(case, "hard link" | "symbolic link") {
            assert_eq!(std::fs::read_to_string(&state).unwrap(), record, "{case}");
        }
        std::fs::remove_dir_all(dir).unwrap();
    }
    assert!(server.requests().is_empty());
}
