//! The heartbeat file, and the verdict the `healthcheck` command gives on it (the
//! command itself is in [`crate::startup`]; the limit the worker writes in the file,
//! in [`crate::config::Config::stale_after`]).
//!
//! The worker rewrites a small JSON file after the orders it finishes (at most once a
//! second) and at the end of every cycle, whatever the outcome. `healthcheck` (an image's `HEALTHCHECK`, a
//! Kubernetes liveness probe) tells a stuck worker from a working one by the file's
//! age, which a process-alive check cannot. A service being down is not a reason to
//! restart the worker, so by default only progress is judged; `--max-cut-off` also
//! fails when the Order Service has not answered for that long.
//!
//! A worker that has ended is not healthy, however fresh its last beat: one that
//! exits normally (a finished `once`, a `run` stopped by a signal) records when and
//! with which code (or signal) in its last beat, and one that ended without a word (a
//! crash, SIGKILL, a second stop signal) is found gone by its pid: `kill(pid, 0)`
//! answers ESRCH. The pid is only asked about when the healthcheck runs in the
//! worker's PID namespace (the beat records it): `docker exec`, a `HEALTHCHECK` and a
//! Kubernetes exec probe do; a probe from another namespace, or without `/proc`,
//! judges the beat's age alone. A pid reused by another process since reads as alive:
//! the beat then ages out.

// Parses what a peer or a file sends: no index or slice that could panic.
#![cfg_attr(not(test), deny(clippy::indexing_slicing))]

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// The largest heartbeat `healthcheck` reads (a beat takes about 300 bytes).
const MAX_BEAT_BYTES: u64 = 64 * 1024;

/// Orders finishing faster than this share one write (a write per order cost a fifth
/// of the throughput on a fast backlog); the end of a cycle is always written.
const MIN_WRITE_GAP: Duration = Duration::from_secs(1);

/// What the file holds: one JSON object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Beat {
    /// The worker's process id.
    pub pid: u32,
    /// When the worker started (Unix milliseconds).
    pub started_ms: u64,
    /// When this beat was written (Unix milliseconds).
    pub at_ms: u64,
    /// The longest gap between two beats of a working worker, from its own settings
    /// (the longest one order may take, a page fetch and the interval; see
    /// [`crate::config::Config::stale_after`]): `healthcheck`'s default `--max-age`.
    pub stale_after_s: u64,
    /// When the Order Service last answered a list or status call (Unix milliseconds).
    pub orders_answered_ms: Option<u64>,
    /// The last complete cycle, if one ran.
    pub last_cycle: Option<CycleBeat>,
    /// Written once when the worker stopped on a signal: it is not coming back by
    /// itself, whatever the beat's age.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped: Option<Stopped>,
    /// Written once when the worker exited normally (after [`Beat::stopped`], for a
    /// `run` stopped by a signal): no beat follows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exited: Option<Exited>,
    /// The worker's PID namespace (`pid:[4026531836]`, from `/proc/self/ns/pid`), when
    /// it could be read: `healthcheck` asks about the pid only from the same one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid_ns: Option<String>,
}

/// A normal exit, as the heartbeat records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Exited {
    /// When the worker exited (Unix milliseconds).
    pub at_ms: u64,
    /// Its exit code.
    pub code: i32,
}

/// A clean stop, as the heartbeat records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stopped {
    /// When the worker stopped (Unix milliseconds).
    pub at_ms: u64,
    /// The signal that stopped it (`SIGINT`, `SIGTERM`, ...).
    pub signal: String,
}

/// A cycle's counts as the heartbeat keeps them (the cycle makes them from its report;
/// the heartbeat sets `ended_ms` when it writes them).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CycleBeat {
    pub ended_ms: u64,
    pub duration_ms: u64,
    pub fetched: u64,
    pub ready: u64,
    pub blocked: u64,
    pub unknown: u64,
    pub deferred: u64,
    pub pending: u64,
    pub skipped: u64,
    pub list_failed: bool,
}

/// Writes the heartbeat file (through a temporary file and a rename, so a reader never
/// sees half a beat).
pub struct Heartbeat {
    path: PathBuf,
    tmp: PathBuf,
    beat: Beat,
    written: Instant,
    failing: bool,
}

impl Heartbeat {
    /// Writes the first beat; an error here (a missing directory, no permission, a path
    /// that is not a regular file) is a configuration error.
    pub fn start(path: &Path, stale_after: Duration) -> io::Result<Heartbeat> {
        // Never rename over a device, a FIFO, a directory or a symbolic link
        // (HEARTBEAT_FILE=/dev/null as root).
        crate::state::files::check_regular_or_absent(path)?;
        let tmp = tmp_path(path);
        // As PID 1 in a container every run has the same temporary name: one left by a
        // killed run is removed if it is a regular file, refused otherwise.
        crate::state::files::remove_stale(&tmp)?;
        let now = now_ms();
        let heartbeat = Heartbeat {
            path: path.to_path_buf(),
            tmp,
            beat: Beat {
                pid: std::process::id(),
                started_ms: now,
                at_ms: now,
                stale_after_s: stale_after.as_secs().max(1),
                orders_answered_ms: None,
                last_cycle: None,
                stopped: None,
                exited: None,
                pid_ns: pid_namespace(),
            },
            written: Instant::now(),
            failing: false,
        };
        heartbeat.write()?;
        Ok(heartbeat)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The Order Service answered a call.
    pub fn orders_answered(&mut self) {
        self.beat.orders_answered_ms = Some(now_ms());
    }

    /// An order is finished, whatever its outcome (written at most once a second).
    pub fn order_finished(&mut self) {
        if self.written.elapsed() >= MIN_WRITE_GAP {
            self.touch();
        }
    }

    /// A cycle ended.
    pub fn cycle_ended(&mut self, mut cycle: CycleBeat) {
        cycle.ended_ms = now_ms();
        self.beat.last_cycle = Some(cycle);
        self.touch();
    }

    fn touch(&mut self) {
        self.beat.at_ms = now_ms();
        self.written = Instant::now();
        match self.write() {
            Ok(()) if self.failing => {
                self.failing = false;
                log::info!("heartbeat file {} written again", self.path.display());
            }
            Ok(()) => {}
            Err(e) if !self.failing => {
                self.failing = true;
                log::error!(
                    "cannot write the heartbeat file {}: {e}; the healthcheck will report this worker stuck",
                    self.path.display()
                );
            }
            Err(_) => {}
        }
    }

    fn write(&self) -> io::Result<()> {
        write_beat(&self.path, &self.tmp, &self.beat)
    }
}

/// The worker stopped on `signal` (its beats are over): the last beat this process
/// wrote at `path` says so, and `healthcheck` reports it stopped (exit 1) instead of
/// healthy until the beat would have aged out. A beat of another process is left alone.
pub fn mark_stopped(path: &Path, signal: &str) -> io::Result<()> {
    mark_own(path, |beat, now| {
        beat.stopped = Some(Stopped {
            at_ms: now,
            signal: signal.to_string(),
        });
    })
}

/// Rewrites the last beat at `path` with `mark` applied at the present time, when this
/// process wrote it; a beat of another process is left alone.
fn mark_own(path: &Path, mark: impl FnOnce(&mut Beat, u64)) -> io::Result<()> {
    let text = crate::state::files::read_regular(path, MAX_BEAT_BYTES)?;
    let mut beat: Beat = serde_json::from_slice(&text).map_err(io::Error::other)?;
    if beat.pid != std::process::id() {
        return Ok(());
    }
    let now = now_ms();
    beat.at_ms = now;
    mark(&mut beat, now);
    write_beat(path, &tmp_path(path), &beat)
}

/// The worker exits with `code` (its beats are over): the last beat this process
/// wrote at `path` says when and with which code, and `healthcheck` reports it exited
/// (exit 1). A beat of another process is left alone.
pub fn mark_exited(path: &Path, code: i32) -> io::Result<()> {
    mark_own(path, |beat, now| {
        beat.exited = Some(Exited { at_ms: now, code })
    })
}

/// This process's PID namespace, as `/proc/self/ns/pid` names it (`pid:[4026531836]`);
/// none without `/proc` (an empty chroot).
fn pid_namespace() -> Option<String> {
    fs::read_link("/proc/self/ns/pid")
        .ok()
        .map(|link| link.to_string_lossy().into_owned())
}

/// Whether the process that wrote a beat still runs, as far as this process can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// It runs (or the question could not be asked: another PID namespace, no `/proc`,
    /// a beat that already says the worker ended).
    Alive,
    /// `kill(pid, 0)` answered ESRCH, in the worker's own PID namespace: it has ended.
    Gone,
}

/// Whether the worker that wrote `beat` still runs: asked only when the beat and this
/// process name the same PID namespace, both known.
pub fn liveness(beat: &Beat) -> Liveness {
    let same_namespace = beat
        .pid_ns
        .as_ref()
        .is_some_and(|ns| Some(ns) == pid_namespace().as_ref());
    let Ok(pid) = libc::pid_t::try_from(beat.pid) else {
        return Liveness::Alive;
    };
    // Never 0 or below: those name process groups.
    if !same_namespace || pid <= 0 {
        return Liveness::Alive;
    }
    // SAFETY: signal 0 sends nothing; it only asks whether the process exists.
    let rc = unsafe { libc::kill(pid, 0) };
    if rc != 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH) {
        Liveness::Gone
    } else {
        Liveness::Alive
    }
}

/// `PATH.PID.tmp`: the temporary file a beat is written to before its rename.
fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{}.tmp", std::process::id()));
    path.with_file_name(name)
}

/// Writes `beat` to `tmp`, created new (`O_EXCL`, never through a symbolic link or a
/// file put there), and renames it over `path`.
fn write_beat(path: &Path, tmp: &Path, beat: &Beat) -> io::Result<()> {
    let mut text = serde_json::to_vec(beat).map_err(io::Error::other)?;
    text.push(b'\n');
    let mut file = match crate::state::files::create_new(tmp) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            crate::state::files::remove_stale(tmp)?;
            crate::state::files::create_new(tmp)?
        }
        other => other?,
    };
    let written = file.write_all(&text).and_then(|()| fs::rename(tmp, path));
    if written.is_err() {
        let _ = crate::state::files::remove_stale(tmp);
    }
    written
}

/// The healthcheck's verdict: the line to print, and whether the worker is healthy.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub healthy: bool,
    pub line: String,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.line)
    }
}

/// Reads the heartbeat at `path` and judges it at `now_ms`.
pub fn check(
    path: &Path,
    max_age: Option<Duration>,
    max_cut_off: Option<Duration>,
    now_ms: u64,
) -> Verdict {
    let unhealthy = |line: String| Verdict {
        healthy: false,
        line,
    };
    // Opened without blocking, refused unless a regular file, read with a cap: a probe
    // pointed at a FIFO or a device answers at once.
    let text = match crate::state::files::read_regular(path, MAX_BEAT_BYTES) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return unhealthy(format!(
                "unhealthy: no heartbeat at {}: {e} (is the worker running with the same --heartbeat-file?)",
                path.display()
            ));
        }
        Err(e) => {
            return unhealthy(format!(
                "unhealthy: the heartbeat at {} cannot be read: {e}",
                path.display()
            ));
        }
    };
    let beat: Beat = match serde_json::from_slice(&text) {
        Ok(beat) => beat,
        Err(e) => {
            return unhealthy(format!(
                "unhealthy: the heartbeat at {} cannot be read: {e}",
                path.display()
            ));
        }
    };
    let alive = match (&beat.stopped, &beat.exited) {
        (None, None) => liveness(&beat),
        _ => Liveness::Alive,
    };
    judge(&beat, alive, max_age, max_cut_off, now_ms)
}

/// The verdict on one beat, written by a process that is `alive` or not (pure, for
/// tests).
pub fn judge(
    beat: &Beat,
    alive: Liveness,
    max_age: Option<Duration>,
    max_cut_off: Option<Duration>,
    now_ms: u64,
) -> Verdict {
    let max_age = max_age.unwrap_or(Duration::from_secs(beat.stale_after_s));
    let age = Duration::from_millis(now_ms.saturating_sub(beat.at_ms));
    let ago = |ms: u64| secs(Duration::from_millis(now_ms.saturating_sub(ms)));
    let mut line = format!(
        "last beat {} ago (max {}, pid {})",
        secs(age),
        secs(max_age),
        beat.pid
    );
    match &beat.last_cycle {
        Some(c) => line.push_str(&format!(
            "; last cycle ended {} ago in {} ms: fetched {}, ready {}, blocked {}, unknown {}, \
             deferred {}, pending {}, skipped {}{}",
            ago(c.ended_ms),
            c.duration_ms,
            c.fetched,
            c.ready,
            c.blocked,
            c.unknown,
            c.deferred,
            c.pending,
            c.skipped,
            if c.list_failed {
                ", order list not fetched"
            } else {
                ""
            }
        )),
        None => line.push_str(&format!(
            "; no cycle finished since the start {} ago",
            ago(beat.started_ms)
        )),
    }
    let since_answer = match beat.orders_answered_ms {
        Some(ms) => {
            line.push_str(&format!("; Order Service answered {} ago", ago(ms)));
            Duration::from_millis(now_ms.saturating_sub(ms))
        }
        None => {
            line.push_str("; Order Service not answered yet");
            Duration::from_millis(now_ms.saturating_sub(beat.started_ms))
        }
    };
    let at = |ms: u64| crate::logging::rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms));
    let mut problems = Vec::new();
    if let Some(stopped) = &beat.stopped {
        problems.push(format!(
            "stopped at {} ({})",
            at(stopped.at_ms),
            stopped.signal
        ));
    } else if let Some(exited) = &beat.exited {
        problems.push(format!(
            "exited at {} with code {}",
            at(exited.at_ms),
            exited.code
        ));
    } else if alive == Liveness::Gone {
        problems.push(format!(
            "the worker (pid {}) has ended without recording an exit (a crash, SIGKILL, \
             or a second stop signal)",
            beat.pid
        ));
    }
    if age > max_age {
        problems.push(format!("no progress for {}", secs(age)));
    }
    if let Some(cut_off) = max_cut_off
        && since_answer > cut_off
    {
        problems.push(format!(
            "Order Service silent for {} (max cut-off {})",
            secs(since_answer),
            secs(cut_off)
        ));
    }
    if problems.is_empty() {
        Verdict {
            healthy: true,
            line: format!("healthy: {line}"),
        }
    } else {
        Verdict {
            healthy: false,
            line: format!("unhealthy: {}: {line}", problems.join(", ")),
        }
    }
}

fn secs(d: Duration) -> String {
    format!("{} s", d.as_secs())
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn beat(at_ms: u64) -> Beat {
        Beat {
            pid: 7,
            started_ms: 1_000,
            at_ms,
            stale_after_s: 60,
            orders_answered_ms: Some(2_000),
            last_cycle: None,
            stopped: None,
            exited: None,
            pid_ns: None,
        }
    }

    #[test]
    fn a_worker_stopped_by_a_signal_is_not_healthy_however_fresh_its_beat() {
        let mut b = beat(10_000);
        b.stopped = Some(Stopped {
            at_ms: 1_795_533_451_478,
            signal: "SIGINT".into(),
        });
        let v = judge(&b, Liveness::Alive, None, None, 11_000);
        assert!(!v.healthy, "{v}");
        assert!(
            v.line.starts_with(
                "unhealthy: stopped at 2026-11-24T15:17:31.478Z (SIGINT): last beat 1 s ago"
            ),
            "{v}"
        );
    }

    #[test]
    fn a_worker_that_exited_or_is_gone_is_not_healthy_however_fresh_its_beat() {
        let mut b = beat(10_000);
        b.exited = Some(Exited {
            at_ms: 1_795_533_451_478,
            code: 1,
        });
        let v = judge(&b, Liveness::Alive, None, None, 11_000);
        assert!(!v.healthy, "{v}");
        assert!(
            v.line.starts_with(
                "unhealthy: exited at 2026-11-24T15:17:31.478Z with code 1: last beat 1 s ago"
            ),
            "{v}"
        );
        // A run stopped by a signal then exits 0: the stop is what is said.
        b.stopped = Some(Stopped {
            at_ms: 1_795_533_451_400,
            signal: "SIGTERM".into(),
        });
        let v = judge(&b, Liveness::Alive, None, None, 11_000);
        assert!(v.line.starts_with("unhealthy: stopped at "), "{v}");
        assert!(!v.line.contains("exited"), "{v}");
        let v = judge(&beat(10_000), Liveness::Gone, None, None, 11_000);
        assert!(!v.healthy, "{v}");
        assert!(
            v.line
                .starts_with("unhealthy: the worker (pid 7) has ended without recording an exit"),
            "{v}"
        );
    }

    #[test]
    fn the_pid_is_asked_about_only_in_the_same_pid_namespace() {
        // This process: alive, whatever the namespace.
        let mut b = beat(10_000);
        b.pid = std::process::id();
        b.pid_ns = pid_namespace();
        assert_eq!(liveness(&b), Liveness::Alive);
        // A child that has exited and been reaped: gone, in this namespace only.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        child.wait().unwrap();
        b.pid = child.id();
        if b.pid_ns.is_some() {
            assert_eq!(liveness(&b), Liveness::Gone);
        }
        b.pid_ns = Some("pid:[1]".into());
        assert_eq!(liveness(&b), Liveness::Alive, "another namespace");
        b.pid_ns = None;
        assert_eq!(liveness(&b), Liveness::Alive, "namespace unknown");
        // Never a process group.
        b.pid = 0;
        b.pid_ns = pid_namespace();
        assert_eq!(liveness(&b), Liveness::Alive);
    }

    #[test]
    fn fresh_beat_is_healthy_and_old_one_is_not() {
        let v = judge(&beat(10_000), Liveness::Alive, None, None, 69_000);
        assert!(v.healthy, "{v}");
        assert!(
            v.line.starts_with("healthy: last beat 59 s ago (max 60 s"),
            "{v}"
        );
        let v = judge(&beat(10_000), Liveness::Alive, None, None, 71_000);
        assert!(!v.healthy, "{v}");
        assert!(v.line.contains("no progress for 61 s"), "{v}");
        // --max-age overrides the worker's own figure.
        assert!(
            !judge(
                &beat(10_000),
                Liveness::Alive,
                Some(Duration::from_secs(5)),
                None,
                16_000
            )
            .healthy
        );
    }

    #[test]
    fn silent_order_service_fails_only_with_a_cut_off() {
        let now = 200_000; // beat fresh, Order Service last answered 198 s ago
        assert!(judge(&beat(199_000), Liveness::Alive, None, None, now).healthy);
        let v = judge(
            &beat(199_000),
            Liveness::Alive,
            None,
            Some(Duration::from_secs(120)),
            now,
        );
        assert!(!v.healthy, "{v}");
        assert!(v.line.contains("Order Service silent for 198 s"), "{v}");
        assert!(
            judge(
                &beat(199_000),
                Liveness::Alive,
                None,
                Some(Duration::from_secs(300)),
                now
            )
            .healthy
        );
    }

    #[test]
    fn line_reports_the_last_cycle() {
        let mut b = beat(10_000);
        b.last_cycle = Some(CycleBeat {
            ended_ms: 9_000,
            duration_ms: 120,
            fetched: 4,
            ready: 3,
            blocked: 1,
            unknown: 0,
            deferred: 0,
            pending: 0,
            skipped: 0,
            list_failed: false,
        });
        let v = judge(&b, Liveness::Alive, None, None, 12_000);
        assert!(
            v.line
                .contains("last cycle ended 3 s ago in 120 ms: fetched 4, ready 3, blocked 1"),
            "{v}"
        );
    }

    fn temp_dir(name: &str) -> PathBuf {
        crate::state::testing::temp_dir("beat", name)
    }

    #[test]
    fn the_temporary_file_is_never_written_through_a_path_that_exists() {
        let dir = temp_dir("tmp");
        let path = dir.join("beat");
        let tmp = dir.join(format!("beat.{}.tmp", std::process::id()));
        let target = dir.join("target");
        fs::write(&target, "keep").unwrap();
        // A symbolic link where the temporary file goes: refused at start, untouched.
        std::os::unix::fs::symlink(&target, &tmp).unwrap();
        assert!(Heartbeat::start(&path, Duration::from_secs(9)).is_err());
        assert_eq!(fs::read_to_string(&target).unwrap(), "keep");
        fs::remove_file(&tmp).unwrap();
        // A regular one (a killed run's) is removed, and beats go on.
        fs::write(&tmp, "stale").unwrap();
        let mut hb = Heartbeat::start(&path, Duration::from_secs(9)).unwrap();
        assert!(!tmp.exists());
        // A link put there while the worker runs: that beat fails, the target is kept.
        std::os::unix::fs::symlink(&target, &tmp).unwrap();
        assert!(hb.write().is_err());
        assert_eq!(fs::read_to_string(&target).unwrap(), "keep");
        fs::remove_file(&tmp).unwrap();
        hb.cycle_ended(CycleBeat::default());
        assert!(check(&path, None, None, now_ms()).healthy);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn healthcheck_answers_at_once_whatever_sits_at_the_path() {
        let dir = temp_dir("check");
        let fifo = dir.join("fifo");
        crate::state::testing::mkfifo(&fifo);
        let started = Instant::now();
        for path in [&fifo, &dir, &PathBuf::from("/dev/zero")] {
            let v = check(path, None, None, now_ms());
            assert!(!v.healthy, "{v}");
            assert!(v.line.contains("not a regular file"), "{v}");
        }
        let big = dir.join("big");
        fs::write(&big, vec![b' '; MAX_BEAT_BYTES as usize + 1]).unwrap();
        let v = check(&big, None, None, now_ms());
        assert!(!v.healthy && v.line.contains("larger than"), "{v}");
        assert!(started.elapsed() < Duration::from_secs(2));
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn file_round_trip_and_missing_file() {
        let dir = std::env::temp_dir().join(format!("om-heartbeat-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("beat");
        let mut hb = Heartbeat::start(&path, Duration::from_secs(90)).unwrap();
        hb.orders_answered();
        hb.cycle_ended(CycleBeat {
            fetched: 2,
            ready: 2,
            ..CycleBeat::default()
        });
        let v = check(&path, None, None, now_ms());
        assert!(v.healthy, "{v}");
        assert!(v.line.contains("(max 90 s"), "{v}");
        assert!(v.line.contains("fetched 2, ready 2"), "{v}");
        mark_stopped(&path, "SIGTERM").unwrap();
        let v = check(&path, None, None, now_ms());
        assert!(!v.healthy, "{v}");
        assert!(v.line.starts_with("unhealthy: stopped at 20"), "{v}");
        assert!(v.line.contains("(SIGTERM): last beat 0 s ago"), "{v}");
        // Exited: said with its code, the stop still first.
        mark_exited(&path, 0).unwrap();
        let v = check(&path, None, None, now_ms());
        assert!(!v.healthy && v.line.contains("(SIGTERM): last beat"), "{v}");
        let mut beat: Beat = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        assert_eq!(beat.exited.as_ref().map(|e| e.code), Some(0));
        beat.stopped = None;
        fs::write(&path, serde_json::to_vec(&beat).unwrap()).unwrap();
        let v = check(&path, None, None, now_ms());
        assert!(v.line.starts_with("unhealthy: exited at 20"), "{v}");
        assert!(v.line.contains(" with code 0: last beat"), "{v}");
        let v = check(&dir.join("none"), None, None, now_ms());
        assert!(!v.healthy);
        assert!(v.line.starts_with("unhealthy: no heartbeat at"), "{v}");
        fs::write(&path, "{not json").unwrap();
        assert!(!check(&path, None, None, now_ms()).healthy);
        assert!(Heartbeat::start(&dir.join("no/such/dir/beat"), Duration::from_secs(1)).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }
}
