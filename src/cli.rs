//! The command line: commands and flags, each flag backed by its environment variable.
//!
//! Values are taken as text here and turned into an [`Invocation`] by
//! [`Cli::into_invocation`], each through its rule in [`crate::config`], so that a bad
//! value is reported in one place with the setting's flag and variable names.

// Parses what a peer or a file sends: no index or slice that could panic.
#![cfg_attr(not(test), deny(clippy::indexing_slicing))]

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::config::{self, Config, ConfigError, HealthcheckConfig, Invocation, Mode, defaults};

/// The help's headings, in the order they are shown.
const SERVICES: &str = "Services";
const CYCLE: &str = "Cycle";
const FILES: &str = "Files";
const LOGGING: &str = "Logging";

/// The OpenTelemetry variables that matter here, after the options of the main help
/// (docs/telemetry.md has the rest).
pub const TELEMETRY_HELP: &str = "\
Telemetry (environment only; export is off while no endpoint is set):
  OTEL_EXPORTER_OTLP_ENDPOINT  collector base URL, e.g. http://otel-collector:4317
  OTEL_EXPORTER_OTLP_PROTOCOL  grpc or http/protobuf; unset: grpc on port 4317,
                               else http/protobuf
  OTEL_EXPORTER_OTLP_COMPRESSION  gzip, or none
  OTEL_SERVICE_NAME            service.name (default: ordermanagement)
  OTEL_RESOURCE_ATTRIBUTES     more resource attributes, key=value,...
  OTEL_EXPORTER_OTLP_HEADERS   headers of every export (never printed)
  OTEL_SDK_DISABLED            true: no telemetry at all
  OTEL_TRACES_EXPORTER, OTEL_METRICS_EXPORTER, OTEL_LOGS_EXPORTER
                               none: that signal off
  OTEL_PROPAGATORS             tracecontext always; baggage unless left out";

/// Examples, after the options of the main help.
pub const EXAMPLES_HELP: &str = "\
Examples:
  ordermanagement run --interval 2     a cycle every 2 s until stopped
  ordermanagement once                 one cycle, then exit (cron: see README)
  ordermanagement --dry-run once       log what would be done, change nothing
  API_URL_ORDERS=http://order:5000 API_URL_STOCKS=http://stock:5001 \\
    STATE_FILE=/var/lib/ordermanagement/state.jsonl ordermanagement run
  ordermanagement healthcheck          exit 0 while the worker makes progress";

/// The exit codes of `healthcheck`.
pub const HEALTHCHECK_EXIT_HELP: &str = "\
Exit codes:
  0  healthy: the worker's last beat is recent enough
  1  unhealthy: no recent beat, no heartbeat file, a worker that has ended
     (stopped by a signal, exited, killed), or (with --max-cut-off) an Order
     Service silent for too long
  2  usage or configuration error in healthcheck's own settings";

#[derive(Debug, Parser)]
#[command(
    name = "ordermanagement",
    version,
    about = "Takes stock for registered orders of the wood-shop demo and sets them ready or blocked",
    after_help = format!("{TELEMETRY_HELP}\n\n{EXAMPLES_HELP}\n\n{}", crate::exit::HELP),
    max_term_width = 100
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Loop: run a cycle, sleep INTERVAL seconds, repeat until SIGTERM, SIGINT, SIGHUP or SIGQUIT.
    #[command(after_help = crate::exit::HELP)]
    Run,
    /// Run a single cycle and exit (for cron); see the exit codes below.
    #[command(after_help = crate::exit::HELP)]
    Once,
    /// Exit 0 while the worker using the same --heartbeat-file makes progress, 1 when it
    /// is stuck or has ended (for a container HEALTHCHECK or a liveness probe); prints one line.
    #[command(after_help = HEALTHCHECK_EXIT_HELP)]
    Healthcheck(HealthcheckArgs),
}

#[derive(Debug, Args)]
pub struct HealthcheckArgs {
    /// Unhealthy when the last heartbeat is older than this. Default: the worker's own
    /// figure, in the file (the longest one order may take, a page fetch and the interval).
    #[arg(
        long,
        env = "HEALTHCHECK_MAX_AGE_SECONDS",
        allow_negative_numbers = true,
        value_name = "SECONDS",
        default_value = "",
        hide_default_value = true
    )]
    pub max_age: String,

    /// Also unhealthy when the Order Service has not answered for this long (off by
    /// default: a service being down is no reason to restart the worker).
    #[arg(
        long,
        env = "HEALTHCHECK_MAX_CUT_OFF_SECONDS",
        allow_negative_numbers = true,
        value_name = "SECONDS",
        default_value = "",
        hide_default_value = true
    )]
    pub max_cut_off: String,
}

/// Options shared by every command; they may stand before or after the command.
#[derive(Debug, Args)]
pub struct CommonArgs {
    /// Order Service base URL.
    #[arg(
        long,
        global = true,
        help_heading = SERVICES,
        env = "API_URL_ORDERS",
        default_value = defaults::ORDERS_URL,
        value_name = "URL"
    )]
    pub orders_url: String,

    /// Stock Service base URL.
    #[arg(
        long,
        global = true,
        help_heading = SERVICES,
        env = "API_URL_STOCKS",
        default_value = defaults::STOCKS_URL,
        value_name = "URL"
    )]
    pub stocks_url: String,

    /// `run`: seconds from the end of one cycle to the start of the next (none after
    /// the Stock Service stalled twice in a row); decimals allowed (0.5).
    #[arg(
        long,
        global = true,
        help_heading = CYCLE,
        env = "INTERVAL_SECONDS",
        allow_negative_numbers = true,
        default_value = defaults::INTERVAL_TEXT,
        value_name = "SECONDS"
    )]
    pub interval: String,

    /// Share of simulated failures, 0.0..=1.0 (at the stock step and at the status step).
    #[arg(
        long,
        global = true,
        help_heading = CYCLE,
        env = "ERROR_RATE",
        allow_negative_numbers = true,
        default_value = defaults::ERROR_RATE_TEXT,
        value_name = "RATE"
    )]
    pub error_rate: String,

    /// Limit in seconds for one call to the Order Service, and for connecting to either service.
    #[arg(
        long,
        global = true,
        help_heading = SERVICES,
        env = "HTTP_TIMEOUT_SECONDS",
        allow_negative_numbers = true,
        default_value = defaults::HTTP_TIMEOUT_TEXT,
        value_name = "SECONDS"
    )]
    pub timeout: String,

    /// Limit in seconds for a stock decrease's reply once the request is sent
    /// (above the Stock Service's own 30 s wait for a database connection).
    #[arg(
        long,
        global = true,
        help_heading = SERVICES,
        env = "DECREASE_TIMEOUT_SECONDS",
        allow_negative_numbers = true,
        default_value = defaults::DECREASE_TIMEOUT_TEXT,
        value_name = "SECONDS"
    )]
    pub decrease_timeout: String,

    /// Extra attempts for a transient failure of one call.
    #[arg(
        long,
        global = true,
        help_heading = CYCLE,
        env = "MAX_RETRIES",
        allow_negative_numbers = true,
        default_value = defaults::MAX_RETRIES_TEXT,
        value_name = "N"
    )]
    pub max_retries: String,

    /// Orders asked for per list call.
    #[arg(
        long,
        global = true,
        help_heading = CYCLE,
        env = "PAGE_SIZE",
        allow_negative_numbers = true,
        default_value = defaults::PAGE_SIZE_TEXT,
        value_name = "N"
    )]
    pub page_size: String,

    /// The most orders one cycle takes on; the rest stay registered for the next cycle.
    #[arg(
        long,
        global = true,
        help_heading = CYCLE,
        env = "MAX_ORDERS_PER_CYCLE",
        allow_negative_numbers = true,
        default_value = defaults::MAX_ORDERS_PER_CYCLE_TEXT,
        value_name = "N"
    )]
    pub max_orders_per_cycle: String,

    /// `once`: how long to keep trying the status updates of decided orders (stock
    /// taken) after the cycle, before naming them and exiting 1.
    #[arg(
        long,
        global = true,
        help_heading = CYCLE,
        env = "PENDING_DEADLINE_SECONDS",
        allow_negative_numbers = true,
        default_value = defaults::PENDING_DEADLINE_TEXT,
        value_name = "SECONDS"
    )]
    pub pending_deadline: String,

    /// Journal of the orders in flight, so that no later run takes stock twice
    /// [default: state-<key>.jsonl in $STATE_DIRECTORY, else
    /// $XDG_STATE_HOME/ordermanagement, else ~/.local/state/ordermanagement; <key>
    /// hashes both URLs and the shard]. Empty: off, as --no-state-file.
    #[arg(
        long,
        global = true,
        help_heading = FILES,
        env = "STATE_FILE",
        value_name = "PATH"
    )]
    pub state_file: Option<String>,

    /// No state file: a decided order whose status update has not landed when the run
    /// ends has its stock taken again by the next run.
    #[arg(long, global = true, help_heading = FILES)]
    pub no_state_file: bool,

    /// The heartbeat the worker rewrites as orders finish and after each cycle, read by
    /// `healthcheck`. The default carries the shard when one is set
    /// (/tmp/ordermanagement-0of3.heartbeat), so replicas sharing a /tmp have one each.
    /// Off when empty.
    #[arg(
        long,
        global = true,
        help_heading = FILES,
        env = "HEARTBEAT_FILE",
        value_name = "PATH",
        default_value = defaults::HEARTBEAT_FILE
    )]
    pub heartbeat_file: String,

    /// Handle only the orders with id % COUNT == INDEX (e.g. 2/4), for N replicas.
    #[arg(
        long,
        global = true,
        help_heading = CYCLE,
        env = "SHARD",
        value_name = "INDEX/COUNT",
        default_value = "",
        hide_default_value = true
    )]
    pub shard: String,

    /// The shard's index, when given apart from its count (e.g. a StatefulSet's pod index).
    #[arg(
        long,
        global = true,
        help_heading = CYCLE,
        env = "SHARD_INDEX",
        value_name = "INDEX",
        default_value = "",
        hide_default_value = true
    )]
    pub shard_index: String,

    /// The number of shards, with --shard-index.
    #[arg(
        long,
        global = true,
        help_heading = CYCLE,
        env = "SHARD_COUNT",
        value_name = "COUNT",
        default_value = "",
        hide_default_value = true
    )]
    pub shard_count: String,

    /// Fetch and log what would be done; change nothing (`--dry-run`, or DRY_RUN=true|false).
    #[arg(long, global = true, help_heading = CYCLE, env = "DRY_RUN", value_name = "BOOL", num_args = 0..=1,
          require_equals = true, default_value = "false", default_missing_value = "true", hide_default_value = true)]
    pub dry_run: String,

    /// error, warn, info, debug or trace (RUST_LOG, when set, wins and allows per-module
    /// filters; the HTTP, TLS and OpenTelemetry libraries never log below warn).
    #[arg(
        long,
        global = true,
        help_heading = LOGGING,
        env = "LOG_LEVEL",
        default_value = defaults::LOG_LEVEL_TEXT,
        value_name = "LEVEL"
    )]
    pub log_level: String,

    /// text (human-readable) or json (one JSON object per line, with trace_id and span_id;
    /// also the body of the logs exported over OTLP).
    #[arg(
        long,
        global = true,
        help_heading = LOGGING,
        env = "LOG_FORMAT",
        default_value = defaults::LOG_FORMAT_TEXT,
        value_name = "FORMAT"
    )]
    pub log_format: String,
}

impl Cli {
    /// Parses the process's arguments and environment (see [`Cli::parse_args`]).
    pub fn parse_env() -> Result<Cli, clap::Error> {
        Cli::parse_args(std::env::args_os())
    }

    /// Parses `args` (the program's name first) and the environment, through
    /// [`Cli::command_line`]; a flag given on the command line to a command it has no
    /// effect on is refused ([`NO_EFFECT`]).
    pub fn parse_args<I, T>(args: I) -> Result<Cli, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let mut cmd = Cli::command_line();
        let matches = cmd.try_get_matches_from_mut(args)?;
        refuse_flags_without_effect(&mut cmd, &matches)?;
        Cli::from_arg_matches(&matches)
    }

    /// The command line as clap parses it: the derived one, with what the derive cannot
    /// say. Each command's help shows only what it reads: `healthcheck` its own options,
    /// `--heartbeat-file` and the shard (the worker's other options are accepted and
    /// ignored there: a probe that failed on them would restart a working worker),
    /// `once` no `--interval` (refused on its command line, see [`NO_EFFECT`]; ignored
    /// from the environment). A variable's value is shown only when it is set:
    /// `[env: API_URL_ORDERS]`, or `[env: API_URL_ORDERS=http://order:5000]`.
    pub fn command_line() -> clap::Command {
        let cmd = Cli::command().mut_args(show_env_value_when_set);
        let hidden = |sc: clap::Command, keep: &dyn Fn(&str) -> bool| {
            let copies: Vec<clap::Arg> = Cli::command()
                .get_arguments()
                .filter(|a| a.is_global_set() && !keep(a.get_id().as_str()))
                .map(|a| a.clone().global(false).hide(true))
                .collect();
            sc.args(copies)
        };
        // `healthcheck` reads the shard too: the default heartbeat path carries it.
        let healthcheck_reads = |id: &str| {
            matches!(
                id,
                "heartbeat_file" | "shard" | "shard_index" | "shard_count"
            )
        };
        cmd.mut_subcommand("healthcheck", |sc| {
            hidden(sc, &healthcheck_reads).mut_args(show_env_value_when_set)
        })
        .mut_subcommand("once", |sc| hidden(sc, &|id| id != "interval"))
    }

    /// Validates the command line into what to do. `run` and `once` read every worker
    /// setting; `healthcheck` reads only its own (a bad worker setting is no reason for
    /// a probe to fail).
    pub fn into_invocation(self) -> Result<Invocation, ConfigError> {
        let mode = match &self.command {
            Command::Run => Mode::Run {
                interval: config::interval(&self.common.interval)?,
            },
            Command::Once => Mode::Once,
            Command::Healthcheck(h) => {
                return Ok(Invocation::Healthcheck(HealthcheckConfig {
                    max_age: config::optional_seconds(
                        &h.max_age,
                        "--max-age",
                        "HEALTHCHECK_MAX_AGE_SECONDS",
                    )?,
                    max_cut_off: config::optional_seconds(
                        &h.max_cut_off,
                        "--max-cut-off",
                        "HEALTHCHECK_MAX_CUT_OFF_SECONDS",
                    )?,
                    heartbeat_file: config::heartbeat_file(&self.common.heartbeat_file, || {
                        self.common.shard()
                    })?
                    .0,
                }));
            }
        };
        Ok(Invocation::Work(mode, self.common.to_config()?))
    }
}

/// The worker flags that only one of `run` and `once` reads: (clap id, flag, the
/// command it has no effect on, why). Given on that command's line (before or after
/// the command's name), such a flag is a usage error (exit 2): the user meant
/// something by it. The same setting from its variable is not refused: a shared
/// environment (the demo's block, an env file) sets it for every command.
pub const NO_EFFECT: [(&str, &str, &str, &str); 2] = [
    (
        "interval",
        "--interval",
        "once",
        "it is the pause between the cycles of `run`, and `once` runs a single cycle",
    ),
    (
        "pending_deadline",
        "--pending-deadline",
        "run",
        "it bounds how long `once` waits for pending status updates after its cycle, and \
         `run` keeps trying them until it stops",
    ),
];

/// Refuses a flag of [`NO_EFFECT`] given on the command line of the command it has no
/// effect on.
fn refuse_flags_without_effect(
    cmd: &mut clap::Command,
    matches: &clap::ArgMatches,
) -> Result<(), clap::Error> {
    use clap::parser::ValueSource;
    let Some((name, sub)) = matches.subcommand() else {
        return Ok(());
    };
    for (id, flag, command, why) in NO_EFFECT {
        if name != command {
            continue;
        }
        let given = [matches, sub]
            .iter()
            .any(|m| m.value_source(id) == Some(ValueSource::CommandLine));
        if given {
            let message = format!("{flag} has no effect on `{command}`: {why}; leave it out");
            let error = match cmd.find_subcommand_mut(name) {
                Some(sub) => sub.error(clap::error::ErrorKind::ArgumentConflict, message),
                None => cmd.error(clap::error::ErrorKind::ArgumentConflict, message),
            };
            return Err(error);
        }
    }
    Ok(())
}

/// `[env: NAME=value]` in the help only when the variable is set and not empty: an
/// empty `[env: NAME=]` looks broken.
fn show_env_value_when_set(arg: clap::Arg) -> clap::Arg {
    let set = arg
        .get_env()
        .and_then(std::env::var_os)
        .is_some_and(|value| !value.is_empty());
    arg.hide_env_values(!set)
}

impl CommonArgs {
    /// `--shard`, or `--shard-index` with `--shard-count`.
    fn shard(&self) -> Result<Option<config::Shard>, ConfigError> {
        config::shard(&self.shard, &self.shard_index, &self.shard_count)
    }

    /// The worker's settings, validated one by one (the first bad one is the error).
    fn to_config(&self) -> Result<Config, ConfigError> {
        let mut config = Config {
            error_rate: config::error_rate(&self.error_rate)?,
            orders_url: config::base_url(&self.orders_url, "--orders-url", "API_URL_ORDERS")?,
            stocks_url: config::base_url(&self.stocks_url, "--stocks-url", "API_URL_STOCKS")?,
            log_level: config::log_level(&self.log_level)?,
            log_format: config::log_format(&self.log_format)?,
            http_timeout: config::timeout(&self.timeout, "--timeout", "HTTP_TIMEOUT_SECONDS")?,
            decrease_timeout: config::timeout(
                &self.decrease_timeout,
                "--decrease-timeout",
                "DECREASE_TIMEOUT_SECONDS",
            )?,
            max_retries: config::max_retries(&self.max_retries)?,
            pending_deadline: config::pending_deadline(&self.pending_deadline)?,
            page_size: config::page_size(&self.page_size)?,
            max_orders_per_cycle: config::max_orders_per_cycle(&self.max_orders_per_cycle)?,
            shard: self.shard()?,
            dry_run: config::dry_run(&self.dry_run)?,
            ..Config::default()
        };
        (config.heartbeat_file, config.heartbeat_chosen) =
            config::heartbeat_file(&self.heartbeat_file, || Ok(config.shard))?;
        config.check_timeouts(&self.decrease_timeout)?;
        // STATE_FILE set empty turns it off (clap may read an empty variable as unset).
        let env = |name| std::env::var(name).ok();
        let value = self
            .state_file
            .clone()
            .or_else(|| env("STATE_FILE").map(|_| String::new()));
        let dirs = config::StateDirs {
            state_directory: env("STATE_DIRECTORY"),
            xdg_state_home: env("XDG_STATE_HOME"),
            home: env("HOME"),
        };
        let (state_file, state_choice) = config::state_file(
            value.as_deref(),
            self.no_state_file,
            &dirs,
            &config.orders_url,
            &config.stocks_url,
            config.shard,
        );
        Ok(Config {
            state_file,
            state_choice,
            ..config
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{MIN_TIMEOUT, Shard};
    use std::time::Duration;

    fn parse(args: &[&str]) -> Result<(Mode, Config), ConfigError> {
        let cli = Cli::parse_args(std::iter::once("ordermanagement").chain(args.iter().copied()))
            .expect("clap accepts the arguments");
        match cli.into_invocation()? {
            Invocation::Work(mode, config) => Ok((mode, config)),
            Invocation::Healthcheck(_) => panic!("{args:?} is not a worker command"),
        }
    }

    #[test]
    fn the_command_line_with_its_hidden_copies_is_well_formed() {
        // clap's own checks (ids, names, headings), with the copies added to
        // `healthcheck` and `once` that the derive does not know about.
        Cli::command_line().debug_assert();
        let cmd = Cli::command_line();
        let healthcheck = cmd.find_subcommand("healthcheck").unwrap();
        let shown: Vec<&str> = healthcheck
            .get_arguments()
            .filter(|a| !a.is_hide_set())
            .filter_map(|a| a.get_long())
            .collect();
        assert_eq!(shown, ["max-age", "max-cut-off"], "{shown:?}");
    }

    #[test]
    fn defaults_match_the_documented_ones() {
        let (mode, c) = parse(&["once"]).unwrap();
        assert!(matches!(mode, Mode::Once));
        assert_eq!(c.orders_url, "http://localhost:5000");
        assert_eq!(c.stocks_url, "http://localhost:5001");
        assert_eq!(c.error_rate, 0.1);
        assert_eq!(c.http_timeout, Duration::from_secs(5));
        assert_eq!(c.decrease_timeout, Duration::from_secs(35));
        assert_eq!(c.max_retries, 3);
        assert_eq!(c.page_size, 500);
        assert_eq!(c.max_orders_per_cycle, 100_000);
        assert!(!c.dry_run);
    }

    #[test]
    fn values_at_the_limits_are_accepted() {
        let (_, c) = parse(&[
            "once",
            "--timeout",
            "0.1",
            "--decrease-timeout",
            "0.1",
            "--max-orders-per-cycle",
            "1",
            "--orders-url",
            "http://[::1]:65535/",
            "--stocks-url",
            "https://user:pw@s.example:1/api",
        ])
        .unwrap();
        assert_eq!(c.http_timeout, MIN_TIMEOUT);
        assert_eq!(c.decrease_timeout, MIN_TIMEOUT);
        assert_eq!(c.max_orders_per_cycle, 1);
        assert_eq!(c.orders_url, "http://[::1]:65535");
        assert_eq!(c.stocks_url, "https://user:pw@s.example:1/api");
    }

    #[test]
    fn a_refused_url_names_what_is_wrong_and_hides_its_password() {
        let e = parse(&["once", "--orders-url", "http://u:pw@o:notaport"]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid --orders-url (API_URL_ORDERS) \"http://REDACTED:REDACTED@o:notaport\": \
             expected a port from 1 to 65535 after the host, such as http://order:5000"
        );
        let e = parse(&["once", "--stocks-url", "http://s:1/#top"]).unwrap_err();
        assert!(e.expected.contains("#fragment"), "{e}");
        let e = parse(&["once", "--stocks-url", "http://s:1/?a=b"]).unwrap_err();
        assert!(e.expected.contains("?query"), "{e}");
    }

    #[test]
    fn the_seed_command_line_works_and_options_go_either_side() {
        let (mode, c) = parse(&["run", "--interval", "10", "--error-rate", "0.05"]).unwrap();
        assert!(matches!(mode, Mode::Run { interval } if interval == Duration::from_secs(10)));
        assert_eq!(c.error_rate, 0.05);
        let (_, c) = parse(&[
            "--error-rate",
            "0.5",
            "--page-size",
            "7",
            "run",
            "--interval",
            "0.5",
        ])
        .unwrap();
        assert_eq!((c.error_rate, c.page_size), (0.5, 7));
        let (_, c) = parse(&["--dry-run", "once"]).unwrap();
        assert!(c.dry_run);
        let (_, c) = parse(&["once", "--dry-run=false"]).unwrap();
        assert!(!c.dry_run);
    }

    #[test]
    fn trailing_slashes_are_dropped() {
        let (_, c) = parse(&[
            "once",
            "--orders-url",
            "http://order:5000/",
            "--stocks-url",
            "https://s.example/api//",
        ])
        .unwrap();
        assert_eq!(c.orders_url, "http://order:5000");
        assert_eq!(c.stocks_url, "https://s.example/api");
    }

    #[test]
    fn bad_values_name_the_setting() {
        let cases: &[(&[&str], &str)] = &[
            (&["once", "--error-rate", "1.5"], "ERROR_RATE"),
            (&["once", "--error-rate", "-0.1"], "ERROR_RATE"),
            (&["once", "--error-rate", "NaN"], "ERROR_RATE"),
            (&["once", "--error-rate", "lots"], "ERROR_RATE"),
            (&["run", "--interval", "0"], "INTERVAL_SECONDS"),
            (&["run", "--interval", "-3"], "INTERVAL_SECONDS"),
            (&["run", "--interval", "inf"], "INTERVAL_SECONDS"),
            (&["once", "--orders-url", "ftp://x"], "API_URL_ORDERS"),
            (
                &["once", "--stocks-url", "localhost:5001"],
                "API_URL_STOCKS",
            ),
            (&["once", "--stocks-url", "http://"], "API_URL_STOCKS"),
            (&["once", "--page-size", "0"], "PAGE_SIZE"),
            (&["once", "--log-level", "loud"], "LOG_LEVEL"),
            (&["once", "--timeout", "0"], "HTTP_TIMEOUT_SECONDS"),
            (
                &["once", "--decrease-timeout", "x"],
                "DECREASE_TIMEOUT_SECONDS",
            ),
            (&["once", "--max-retries", "-1"], "MAX_RETRIES"),
            (&["once", "--dry-run=perhaps"], "DRY_RUN"),
            (
                &["once", "--orders-url", "http://o:notaport"],
                "API_URL_ORDERS",
            ),
            (
                &["once", "--orders-url", "http://o:65536"],
                "API_URL_ORDERS",
            ),
            (&["once", "--orders-url", "http://o:0"], "API_URL_ORDERS"),
            (&["once", "--orders-url", "http://o:"], "API_URL_ORDERS"),
            (
                &["once", "--stocks-url", "http://[::1]:99999"],
                "API_URL_STOCKS",
            ),
            (
                &["once", "--stocks-url", "http://s:5001/#x"],
                "API_URL_STOCKS",
            ),
            (
                &["once", "--stocks-url", "http://s:5001/api?x=1"],
                "API_URL_STOCKS",
            ),
            (
                &["once", "--stocks-url", "http://s:5001?"],
                "API_URL_STOCKS",
            ),
            (&["once", "--timeout", "0.05"], "HTTP_TIMEOUT_SECONDS"),
            (
                &["once", "--decrease-timeout", "0.099"],
                "DECREASE_TIMEOUT_SECONDS",
            ),
            (
                &["once", "--timeout", "10", "--decrease-timeout", "9"],
                "DECREASE_TIMEOUT_SECONDS",
            ),
            (&["once", "--timeout", "60"], "DECREASE_TIMEOUT_SECONDS"),
            (
                &["once", "--max-orders-per-cycle", "0"],
                "MAX_ORDERS_PER_CYCLE",
            ),
            (
                &["once", "--max-orders-per-cycle", "-1"],
                "MAX_ORDERS_PER_CYCLE",
            ),
            (
                &["once", "--max-orders-per-cycle", "many"],
                "MAX_ORDERS_PER_CYCLE",
            ),
        ];
        for (args, env) in cases {
            let e = parse(args).expect_err(&format!("{args:?} must be refused"));
            assert_eq!(e.env, *env, "{args:?}");
            assert!(
                e.to_string().contains(e.env) && e.to_string().contains(e.flag),
                "{e}"
            );
        }
    }

    #[test]
    fn a_flag_without_effect_on_the_command_is_refused_naming_it() {
        let refused = |args: &[&str]| {
            Cli::parse_args(std::iter::once("ordermanagement").chain(args.iter().copied()))
                .expect_err(&format!("{args:?} must be refused"))
        };
        for args in [
            &["once", "--interval", "2"][..],
            &["--interval", "2", "once"],
            &["--interval=2", "once", "--dry-run"],
        ] {
            let e = refused(args);
            assert_eq!(e.exit_code(), 2, "{args:?}");
            let text = e.render().to_string();
            assert!(
                text.contains("--interval has no effect on `once`"),
                "{args:?}: {text}"
            );
        }
        for args in [
            &["run", "--pending-deadline", "5"][..],
            &["--pending-deadline", "5", "run", "--interval", "1"],
        ] {
            let text = refused(args).render().to_string();
            assert!(
                text.contains("--pending-deadline has no effect on `run`"),
                "{args:?}: {text}"
            );
        }
        // Each where it has an effect.
        assert!(parse(&["run", "--interval", "2"]).is_ok());
        assert!(parse(&["once", "--pending-deadline", "5"]).is_ok());
        assert!(parse(&["--pending-deadline", "5", "once"]).is_ok());
    }

    #[test]
    fn shards_are_read_in_either_form() {
        let (_, c) = parse(&["once", "--shard", "2/4"]).unwrap();
        assert_eq!(c.shard, Some(Shard { index: 2, count: 4 }));
        let (_, c) = parse(&["once", "--shard-index", "0", "--shard-count", "3"]).unwrap();
        assert_eq!(c.shard, Some(Shard { index: 0, count: 3 }));
        assert!(c.shard.unwrap().contains(9) && !c.shard.unwrap().contains(10));
        assert_eq!(parse(&["once"]).unwrap().1.shard, None);
        for bad in [
            &["--shard", "4/4"][..],
            &["--shard", "1/0"],
            &["--shard", "x"],
            &["--shard", "1-2"],
            &["--shard-index", "1"],
            &["--shard-count", "2"],
            &["--shard-index", "3", "--shard-count", "2"],
            &["--shard", "0/2", "--shard-index", "0", "--shard-count", "2"],
        ] {
            let args: Vec<&str> = std::iter::once("once").chain(bad.iter().copied()).collect();
            let e = parse(&args).expect_err(&format!("{bad:?}"));
            assert!(e.env.starts_with("SHARD"), "{bad:?}: {e}");
        }
    }
}
