use std::process::ExitCode;

use clap::Parser;
use ordermanagement::cli::Cli;
use ordermanagement::files;
use ordermanagement::journal::{self, FileJournal};
use ordermanagement::{Config, Mode, Stop, Worker, heartbeat, logging, redact, telemetry};

/// Exit code of a usage or configuration error.
const USAGE: u8 = 2;

fn main() -> ExitCode {
    // clap's usage errors exit 2; --help and --version exit 0. Their text may quote a
    // value (the help shows each variable's value), so it is printed redacted.
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let text = e.render().to_string();
            let text = redact::credentials(&text);
            if e.use_stderr() {
                eprint!("{text}");
            } else {
                print!("{text}");
            }
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(USAGE));
        }
    };
    let (mode, config) = match cli.into_config() {
        Ok(parsed) => parsed,
        Err(e) => {
            eprintln!("ordermanagement: error: {e}");
            return ExitCode::from(USAGE);
        }
    };
    if let Mode::Healthcheck {
        max_age,
        max_cut_off,
    } = mode
    {
        return healthcheck(&config, max_age, max_cut_off);
    }
    logging::init(
        config.log_level,
        config.shard.map(|s| s.to_string()),
        config.log_format,
    );
    let settings = telemetry::Settings::from_env(|name| std::env::var(name).ok());
    for (name, value) in &settings.clamped {
        // SAFETY: no other thread runs yet (the exporters' threads start in
        // Telemetry::init below), so nothing reads the environment meanwhile.
        unsafe { std::env::set_var(name, value) };
    }
    let shard = config
        .shard
        .map(|s| opentelemetry::KeyValue::new("ordermanagement.shard", s.to_string()));
    // Dropped (flushed and shut down) on every return below.
    let _telemetry = telemetry::Telemetry::init(&settings, shard.into_iter().collect());
    let stop = Stop::new();
    if let Err(e) = stop.install_signal_handlers() {
        log::error!("cannot install the signal handlers: {e}");
        return ExitCode::FAILURE;
    }
    log::info!(
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
        return fail_at_start(&config, &e);
    }
    let mut worker = match &config.state_file {
        None => Worker::new(&config, stop.clone()),
        Some(path) => match FileJournal::open(path) {
            Ok(journal) => Worker::with_journal(&config, stop.clone(), Box::new(journal)),
            Err(e) => return fail_at_start(&config, &e.to_string()),
        },
    };
    if let Some(path) = &config.heartbeat_file {
        match heartbeat::Heartbeat::start(path, config.stale_after(&mode)) {
            Ok(beat) => worker.set_heartbeat(beat),
            Err(e) if config.heartbeat_chosen => {
                let e = format!(
                    "invalid --heartbeat-file (HEARTBEAT_FILE) {:?}: cannot write it: {e}",
                    path.display().to_string()
                );
                return fail_at_start(&config, &e);
            }
            // The default path: a worker that cannot beat still works; `healthcheck`
            // reports it stuck, and the line says how to choose another file.
            Err(e) => log::error!(
                "cannot write the heartbeat file {}: {e}; `healthcheck` will report this worker \
                 stuck: set HEARTBEAT_FILE to a writable path, or empty to turn the heartbeat off",
                path.display()
            ),
        }
    }
    let code = match mode {
        Mode::Run { interval } => {
            worker.run_loop(interval);
            if let Some(signal) = stop.signal() {
                log::info!("stopped by {signal}");
            }
            ExitCode::SUCCESS
        }
        Mode::Once => {
            if worker.cycle().complete() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        // Answered before the worker starts; kept here so every mode has its arm.
        Mode::Healthcheck {
            max_age,
            max_cut_off,
        } => healthcheck(&config, max_age, max_cut_off),
    };
    if worker.pending() > 0 {
        if config.state_file.is_some() {
            log::warn!(
                "exiting with {} status updates pending; the state file keeps them for the next run",
                worker.pending()
            );
        } else {
            log::error!(
                "exiting with {} status updates pending and no --state-file: a new run will not know \
                 their stock is taken; set those orders by hand",
                worker.pending()
            );
        }
    }
    code
}

/// A problem with a setting found once logging is up: logged (in JSON mode only there,
/// so that every line on stderr stays JSON), exit code 2.
fn fail_at_start(config: &Config, message: &str) -> ExitCode {
    log::error!("{message}");
    if config.log_format == logging::Format::Text {
        eprintln!("ordermanagement: error: {message}");
    }
    ExitCode::from(USAGE)
}

/// `healthcheck`: one line on stdout, exit 0 while the worker makes progress, 1 otherwise.
fn healthcheck(
    config: &Config,
    max_age: Option<std::time::Duration>,
    max_cut_off: Option<std::time::Duration>,
) -> ExitCode {
    let Some(path) = &config.heartbeat_file else {
        eprintln!(
            "ordermanagement: error: healthcheck needs --heartbeat-file (HEARTBEAT_FILE); it is set empty"
        );
        return ExitCode::from(USAGE);
    };
    let verdict = heartbeat::check(path, max_age, max_cut_off, heartbeat::now_ms());
    println!("{verdict}");
    if verdict.healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
