//! Start-up, in the order it happens: the command line read (its errors printed),
//! logging, telemetry, the signal handlers, the start-up line, the state and heartbeat
//! files opened; then, once the worker has run, what is left said and telemetry shut
//! down. Also the `healthcheck` command, which needs none of that.

use crate::cli::Cli;
use crate::config::{Config, HealthcheckConfig, Invocation, Mode};
use crate::cycle::report::counted;
use crate::cycle::worker::Worker;
use crate::exit::Exit;
use crate::state::journal::{self, FileJournal};
use crate::state::{files, heartbeat};
use crate::stop::Stop;
use crate::telemetry::{self, Telemetry, instrument};
use crate::{logging, redact};

/// The logger name of the lines written here: the binary's own, as always.
const TARGET: &str = "ordermanagement";

/// Writes `text` on stdout. A stdout that is closed or a pipe whose reader is gone
/// (`healthcheck | head -c0`, a probe that stopped listening) is no reason to fail:
/// the error is dropped, where `print!` would panic (and, with `panic = "abort"`, end
/// the process on SIGABRT instead of its exit code).
pub fn out(text: &str) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    let _ = stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush());
}

/// Writes `text` on stderr, any write error dropped (see [`out`]).
pub fn err(text: &str) {
    use std::io::Write;
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

/// Reads and validates the command line. clap's usage errors end with exit 2, `--help`
/// and `--version` with 0; their text may quote a value (the help shows each
/// variable's value), so it is printed redacted, through [`out`] and [`err`] (clap's
/// own `exit` and `print` would fail on a closed stdout). A bad setting is one line,
/// exit 2.
pub fn command_line() -> Result<Invocation, Exit> {
    let cli = match Cli::parse_env() {
        Ok(cli) => cli,
        Err(e) => {
            let text = e.render().to_string();
            let text = redact::credentials(&text);
            if e.use_stderr() {
                err(&text);
            } else {
                out(&text);
            }
            return Err(match e.exit_code() {
                0 => Exit::Success,
                _ => Exit::Usage,
            });
        }
    };
    cli.into_invocation().map_err(|e| {
        err(&format!("ordermanagement: error: {e}\n"));
        Exit::Usage
    })
}

/// `healthcheck`: one line on stdout, exit 0 while the worker makes progress, 1 otherwise.
pub fn healthcheck(check: &HealthcheckConfig) -> Exit {
    let Some(path) = &check.heartbeat_file else {
        err(
            "ordermanagement: error: healthcheck needs --heartbeat-file (HEARTBEAT_FILE); it is set empty\n",
        );
        return Exit::Usage;
    };
    let verdict = heartbeat::check(path, check.max_age, check.max_cut_off, heartbeat::now_ms());
    out(&format!("{verdict}\n"));
    if verdict.healthy {
        Exit::Success
    } else {
        Exit::Unhealthy
    }
}

/// A worker ready to run, with what must outlive it.
pub struct Started {
    // Dropped in this order: the worker (and its files) before telemetry, which is
    // flushed and shut down last, on every path.
    worker: Worker,
    stop: Stop,
    state_file: bool,
    /// The heartbeat this worker writes, if it could start one.
    heartbeat: Option<std::path::PathBuf>,
    _telemetry: Telemetry,
}

/// Sets everything up for `mode`; a failure is logged and ends the process with exit 2
/// before any request is made.
pub fn start(mode: &Mode, config: &Config) -> Result<Started, Exit> {
    logging::init(
        config.log_level,
        config.shard.map(|s| s.to_string()),
        config.log_format,
    );
    let telemetry = start_telemetry(config);
    let stop = Stop::new();
    if let Err(e) = stop.install_signal_handlers() {
        log::error!(target: TARGET, "cannot install the signal handlers: {e}");
        return Err(Exit::Usage);
    }
    log::info!(
        target: TARGET,
        "ordermanagement {}: orders {}, stocks {}, error rate {}{}{}",
        env!("CARGO_PKG_VERSION"),
        redact::url(&config.orders_url),
        redact::url(&config.stocks_url),
        config.error_rate,
        config
            .shard
            .map(|s| format!(", shard {s}"))
            .unwrap_or_default(),
        if config.dry_run { ", dry run" } else { "" }
    );
    // The heartbeat is renamed over every second: it must not be the state file (or its
    // lock or temporary file), by any name.
    if let (Some(state), Some(beat)) = (&config.state_file, &config.heartbeat_file)
        && let Some(clash) = journal::companion_paths(state)
            .iter()
            .find(|p| files::same_file(p, beat))
    {
        let e = format!(
            "invalid --heartbeat-file (HEARTBEAT_FILE) {:?}: it is the same file as {} of \
             --state-file (STATE_FILE); give the heartbeat a path of its own",
            beat.display().to_string(),
            clash.display()
        );
        return Err(fail_at_start(config, &e));
    }
    let state_file = match state_file(config) {
        Ok(path) => path,
        Err(e) => return Err(fail_at_start(config, &e)),
    };
    let owner = journal::Owner {
        orders: crate::config::service_identity(&config.orders_url),
        stocks: crate::config::service_identity(&config.stocks_url),
        shard: config.shard.map(|s| s.to_string()),
    };
    let mut worker = match &state_file {
        None => Worker::new(config, stop.clone()),
        // A dry run never creates the default file.
        Some(path) if config.dry_run && !path.exists() => Worker::new(config, stop.clone()),
        // A dry run reads the state file and says what a real run would do with it; it
        // never locks, rewrites or acts on it.
        Some(path) if config.dry_run => match journal::read_only(path) {
            Ok(in_flight) => {
                dry_run_in_flight(path, &in_flight);
                Worker::new(config, stop.clone())
            }
            Err(e) => return Err(fail_at_start(config, &e.to_string())),
        },
        Some(path) => match FileJournal::open_for(path, Some(&owner)) {
            Ok(journal) => Worker::with_journal(config, stop.clone(), Box::new(journal)),
            // An overlapping run (cron): normal, one line naming the holder, a code of
            // its own.
            Err(journal::JournalError::Locked(path, pid)) => {
                log::warn!(target: TARGET, "{}", locked_line(&path, pid));
                return Err(Exit::Busy);
            }
            Err(e) => return Err(fail_at_start(config, &e.to_string())),
        },
    };
    let mut beating = None;
    if let Some(path) = &config.heartbeat_file {
        match heartbeat::Heartbeat::start(path, config.stale_after(mode)) {
            Ok(beat) => {
                worker.set_heartbeat(beat);
                beating = Some(path.clone());
            }
            Err(e) if config.heartbeat_chosen => {
                let e = format!(
                    "invalid --heartbeat-file (HEARTBEAT_FILE) {:?}: cannot write it: {e}",
                    path.display().to_string()
                );
                return Err(fail_at_start(config, &e));
            }
            // The default path: a worker that cannot beat still works; `healthcheck`
            // reports it stuck, and the line says how to choose another file.
            Err(e) => log::error!(
                target: TARGET,
                "cannot write the heartbeat file {}: {e}; `healthcheck` will report this worker \
                 stuck: set HEARTBEAT_FILE to a writable path, or empty to turn the heartbeat off",
                path.display()
            ),
        }
    }
    Ok(Started {
        worker,
        stop,
        state_file: state_file.is_some(),
        heartbeat: beating,
        _telemetry: telemetry,
    })
}

/// The state file to use, with one line when there is none: turned off, no state
/// directory known, or the default directory not creatable (a configuration fallback).
fn state_file(config: &Config) -> Result<Option<std::path::PathBuf>, String> {
    use crate::config::StateChoice;
    const RISK: &str = "a decided order whose status update has not landed when the run \
                        ends (a refused, hanging or failing update) has its stock taken again \
                        by the next run";
    match (config.state_choice, &config.state_file) {
        (StateChoice::Off, _) => {
            log::warn!(target: TARGET, "no state file (turned off): {RISK}");
            Ok(None)
        }
        (StateChoice::Nowhere, _) => {
            log::warn!(
                target: TARGET,
                "no state file: none of STATE_FILE, STATE_DIRECTORY, XDG_STATE_HOME or HOME is \
                 set; {RISK}: set STATE_FILE to a path that outlives the run"
            );
            Ok(None)
        }
        (StateChoice::Default, Some(path)) if !config.dry_run => {
            let Some(dir) = path.parent() else {
                return Ok(Some(path.clone()));
            };
            let made = if dir.is_dir() {
                Ok(())
            } else {
                use std::os::unix::fs::DirBuilderExt;
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
            };
            match made {
                Ok(()) => {
                    log::debug!(target: TARGET, "state file {}", path.display());
                    if let Some(other) = resharded_neighbour(config, path) {
                        return Err(other);
                    }
                    Ok(Some(path.clone()))
                }
                Err(e) => {
                    log::warn!(
                        target: TARGET,
                        "no state file: cannot create {}: {e}; {RISK}: set STATE_FILE to a \
                         writable path",
                        dir.display()
                    );
                    Ok(None)
                }
            }
        }
        (_, path) => Ok(path.clone()),
    }
}

/// Another default state file beside `path` for the same two services but another
/// sharding (re-sharded replicas, or a shard set or left out), which still holds orders
/// in flight: a worker that ignored it would decrease them again. Named in the error.
/// Sibling shards of the same count, and other stacks, have files of their own.
fn resharded_neighbour(config: &Config, path: &std::path::Path) -> Option<String> {
    let dir = path.parent()?;
    let orders = crate::config::service_identity(&config.orders_url);
    let stocks = crate::config::service_identity(&config.stocks_url);
    let count = |shard: &Option<String>| {
        shard
            .as_deref()
            .and_then(|s| s.split_once('/'))
            .map(|(_, n)| n.to_string())
    };
    let ours = count(&config.shard.map(|s| s.to_string()));
    for entry in std::fs::read_dir(dir).ok()?.filter_map(Result::ok) {
        let other = entry.path();
        let name = other.file_name()?.to_str().unwrap_or_default().to_string();
        if other == path || !name.starts_with("state-") || !name.ends_with(".jsonl") {
            continue;
        }
        let Ok((Some(owner), in_flight)) = journal::peek(&other) else {
            continue;
        };
        if in_flight > 0
            && owner.orders == orders
            && owner.stocks == stocks
            && count(&owner.shard) != ours
        {
            return Some(format!(
                "state file {} holds {} in flight of the same services for another \
                 sharding ({}); a worker that ignored it would take their stock again: \
                 finish them with that sharding (its SHARD), or set STATE_FILE to that file",
                other.display(),
                counted(in_flight as u64, "order"),
                owner.shard.as_deref().unwrap_or("no shard")
            ));
        }
    }
    None
}

/// The exit-3 line: `another run (pid N) holds PATH; nothing done`. The pid the holder
/// wrote in `PATH.lock` is taken unless there is none (a run that has just taken the
/// lock has not written it yet; an older build writes none) or it is this process's
/// own (the lock file was free but the state file itself is locked: the journal then
/// reads back the pid this process has just written). Then the kernel's lock table
/// names the holder, unless it is in another PID namespace or cannot be read.
fn locked_line(path: &std::path::Path, written: Option<u32>) -> String {
    let own = std::process::id();
    let holders: Vec<u32> = match written.filter(|pid| *pid != own) {
        Some(pid) => vec![pid],
        None => {
            let [state, lock, _] = journal::companion_paths(path);
            let mut found = Vec::new();
            let mut unread = None;
            for at in [&state, &lock] {
                match files::lock_holders(at) {
                    Ok(pids) => found.extend(pids.into_iter().filter(|pid| *pid != own)),
                    Err(e) => unread = Some(e),
                }
            }
            if found.is_empty() {
                let why = match unread {
                    Some(e) => format!("/proc/locks cannot be read ({e})"),
                    None => "/proc/locks does not list its lock".to_string(),
                };
                return format!(
                    "another run holds {}; nothing done (its pid is not known: {} names no \
                     other run's pid, as when that run has just started, and {why})",
                    path.display(),
                    lock.display()
                );
            }
            found
        }
    };
    match holders.iter().find(|pid| **pid != 0) {
        Some(pid) => format!(
            "another run (pid {pid}) holds {}; nothing done",
            path.display()
        ),
        None => format!(
            "another run holds {}; nothing done (it runs in another PID namespace, such as \
             another container sharing the volume, so its pid is not known here)",
            path.display()
        ),
    }
}

/// Telemetry from the standard `OTEL_*` variables, the shard on its resource.
fn start_telemetry(config: &Config) -> Telemetry {
    let settings = telemetry::Settings::from_env(|name| std::env::var(name).ok());
    for (name, value) in &settings.clamped {
        // SAFETY: no other thread runs yet (the exporters' threads start in
        // Telemetry::init below), so nothing reads the environment meanwhile.
        unsafe { std::env::set_var(name, value) };
    }
    let shard = config.shard.map(instrument::shard_attribute);
    Telemetry::init(&settings, shard.into_iter().collect())
}

/// `--dry-run` with a state file: what a real run would do with the orders a previous
/// run left in flight.
fn dry_run_in_flight(path: &std::path::Path, in_flight: &[(crate::Order, crate::InFlight)]) {
    if in_flight.is_empty() {
        return;
    }
    let orders = in_flight
        .iter()
        .map(|(order, state)| match state {
            crate::InFlight::Decided(status) => format!("{} (set {status})", order.id),
            crate::InFlight::Sent => format!(
                "{} (decrease sent, outcome not known: set unknown)",
                order.id
            ),
            crate::InFlight::Quarantined {
                status: Some(status),
                ..
            } => format!("{} (quarantined, set {status} when it lands)", order.id),
            crate::InFlight::Quarantined { status: None, .. } => {
                format!("{} (quarantined, nothing taken)", order.id)
            }
        })
        .collect::<Vec<_>>()
        .join(", ");
    log::warn!(
        target: TARGET,
        "dry run: the state file {} holds {} orders in flight; a real run would only set their \
         status: {orders}. Nothing is sent and the file is left as it is",
        path.display(),
        in_flight.len()
    );
}

/// A problem with a setting found once logging is up, said once, exit code 2: in text as
/// the command line's own errors (`ordermanagement: error: ...`), in JSON as a JSON line
/// (so that every line on stderr stays JSON).
fn fail_at_start(config: &Config, message: &str) -> Exit {
    // Once: as the command line's own errors are in text, as a JSON line in JSON.
    if config.log_format == logging::Format::Text {
        err(&format!("ordermanagement: error: {message}\n"));
    } else {
        log::error!(target: TARGET, "{message}");
    }
    Exit::Usage
}

impl Started {
    /// `run`: cycles until a stop signal; exit 0.
    pub fn run(&mut self, interval: std::time::Duration) -> Exit {
        self.worker.run_loop(interval);
        if let Some(signal) = self.stop.signal() {
            log::info!(target: TARGET, "stopped by {signal}");
        }
        self.mark_stopped();
        Exit::Success
    }

    /// `once`: one cycle; exit 0 when it completed, 1 when work is left.
    pub fn once(&mut self) -> Exit {
        let complete = self.worker.cycle().complete();
        self.mark_stopped();
        if complete {
            Exit::Success
        } else {
            Exit::WorkLeft
        }
    }

    /// After a stop signal, the heartbeat's last beat says so: `healthcheck` then reports
    /// "stopped at T (SIGNAL)" and exits 1 instead of calling a stopped worker healthy.
    fn mark_stopped(&self) {
        if let (Some(signal), Some(path)) = (self.stop.signal(), &self.heartbeat)
            && let Err(e) = heartbeat::mark_stopped(path, signal)
        {
            log::warn!(
                target: TARGET,
                "cannot record the stop in the heartbeat file {}: {e}",
                path.display()
            );
        }
    }

    /// Names the orders whose status update is left pending, in one line, and those
    /// whose status update the Order Service refused after their fate was decided; then
    /// records the exit with its code in the heartbeat, so that `healthcheck` reports
    /// the worker exited instead of healthy until its beat would age out.
    pub fn finish(self, exit: Exit) {
        self.say_what_is_left();
        if let Some(path) = &self.heartbeat
            && let Err(e) = heartbeat::mark_exited(path, exit.code())
        {
            log::warn!(
                target: TARGET,
                "cannot record the exit in the heartbeat file {}: {e}",
                path.display()
            );
        }
    }

    /// The orders left pending or refused, named.
    fn say_what_is_left(&self) {
        let (refused, orders) = self.worker.refused_orders();
        if refused > 0 {
            log::error!(
                target: TARGET,
                "{} decided but their status update refused by the Order Service \
                 (400/404): orders {orders}; the stock of the ready ones is taken and they may \
                 still be registered{}: check each order and set it by hand",
                counted(refused as u64, "order"),
                if self.state_file {
                    ""
                } else {
                    " (a new run without --state-file would take it again)"
                }
            );
        }
        let (quarantined, orders) = self.worker.quarantined_orders();
        if quarantined > 0 {
            if self.state_file {
                log::warn!(
                    target: TARGET,
                    "exiting with {} quarantined (an answer about each alone went wrong): \
                     {orders}; the state file keeps them for the next run",
                    counted(quarantined as u64, "order")
                );
            } else {
                log::error!(
                    target: TARGET,
                    "exiting with {} quarantined (an answer about each alone went wrong) and \
                     no state file: {orders}; a new run will not know the stock of the ready \
                     ones is taken: set those orders by hand",
                    counted(quarantined as u64, "order")
                );
            }
        }
        let pending = self.worker.pending();
        if pending == 0 {
            return;
        }
        let orders = self.worker.pending_orders();
        let why = match self.stop.signal() {
            Some(signal) => format!("stopped by {signal}"),
            None if self.stop.requested() => "stop requested".to_string(),
            None => "the Order Service did not take them in time".to_string(),
        };
        if self.state_file {
            log::warn!(
                target: TARGET,
                "exiting with {} pending ({why}): orders {orders}; the state file keeps them \
                 for the next run",
                counted(pending as u64, "status update")
            );
        } else {
            log::error!(
                target: TARGET,
                "exiting with {} pending ({why}) and no state file: orders {orders}; a new \
                 run will not know their stock is taken: set those orders by hand",
                counted(pending as u64, "status update")
            );
        }
    }
}
