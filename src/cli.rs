//! The command line: commands and flags, each flag backed by its environment variable.
//!
//! Values are taken as text here and validated in [`crate::config`], so that a bad
//! value is reported in one place with the setting's flag and variable names.

use clap::{Args, Parser, Subcommand};

/// Exit codes, also listed in `--help` and README.md.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  done: the cycle completed and every fetched order reached a final state
     (run: stopped by SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1 or SIGUSR2)
  1  work left: the order list could not be fetched, or orders were left
     registered for a later cycle, or status updates are still pending
  2  usage or configuration error (nothing was sent)
  128 + N  a second stop signal N cut a stop short (143 SIGTERM, 130 SIGINT,
     129 SIGHUP, 131 SIGQUIT)";

#[derive(Debug, Parser)]
#[command(
    name = "ordermanagement",
    version,
    about = "Takes stock for registered orders of the wood-shop demo and sets them ready or blocked",
    after_help = EXIT_CODES_HELP
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
    #[command(after_help = EXIT_CODES_HELP)]
    Run(RunArgs),
    /// Run a single cycle and exit (for cron); see the exit codes below.
    #[command(after_help = EXIT_CODES_HELP)]
    Once,
    /// Exit 0 while the worker using the same --heartbeat-file makes progress, 1 when it
    /// is stuck (for a container HEALTHCHECK or a liveness probe); prints one line.
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

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Seconds between the end of one cycle and the start of the next; decimals allowed (0.5).
    #[arg(
        long,
        env = "INTERVAL_SECONDS",
        allow_negative_numbers = true,
        default_value = "5",
        value_name = "SECONDS"
    )]
    pub interval: String,
}

/// Options shared by every command; they may stand before or after the command.
#[derive(Debug, Args)]
pub struct CommonArgs {
    /// Order Service base URL.
    #[arg(
        long,
        global = true,
        env = "API_URL_ORDERS",
        default_value = "http://localhost:5000",
        value_name = "URL"
    )]
    pub orders_url: String,

    /// Stock Service base URL.
    #[arg(
        long,
        global = true,
        env = "API_URL_STOCKS",
        default_value = "http://localhost:5001",
        value_name = "URL"
    )]
    pub stocks_url: String,

    /// Share of simulated failures, 0.0..=1.0 (at the stock step and at the status step).
    #[arg(
        long,
        global = true,
        env = "ERROR_RATE",
        allow_negative_numbers = true,
        default_value = "0.1",
        value_name = "RATE"
    )]
    pub error_rate: String,

    /// error, warn, info, debug or trace (RUST_LOG, when set, wins and allows per-module filters).
    #[arg(
        long,
        global = true,
        env = "LOG_LEVEL",
        default_value = "info",
        value_name = "LEVEL"
    )]
    pub log_level: String,

    /// text (human-readable) or json (one JSON object per line, with trace_id and span_id;
    /// also the body of the logs exported over OTLP).
    #[arg(
        long,
        global = true,
        env = "LOG_FORMAT",
        default_value = "text",
        value_name = "FORMAT"
    )]
    pub log_format: String,

    /// Limit in seconds for one call to the Order Service, and for connecting to either service.
    #[arg(
        long,
        global = true,
        env = "HTTP_TIMEOUT_SECONDS",
        allow_negative_numbers = true,
        default_value = "5",
        value_name = "SECONDS"
    )]
    pub timeout: String,

    /// Limit in seconds for a stock decrease's reply once the request is sent
    /// (above the Stock Service's own 30 s wait for a database connection).
    #[arg(
        long,
        global = true,
        env = "DECREASE_TIMEOUT_SECONDS",
        allow_negative_numbers = true,
        default_value = "35",
        value_name = "SECONDS"
    )]
    pub decrease_timeout: String,

    /// Extra attempts for a transient failure of one call.
    #[arg(
        long,
        global = true,
        env = "MAX_RETRIES",
        allow_negative_numbers = true,
        default_value = "3",
        value_name = "N"
    )]
    pub max_retries: String,

    /// Orders asked for per list call.
    #[arg(
        long,
        global = true,
        env = "PAGE_SIZE",
        allow_negative_numbers = true,
        default_value = "500",
        value_name = "N"
    )]
    pub page_size: String,

    /// The most orders one cycle takes on; the rest stay registered for the next cycle.
    #[arg(
        long,
        global = true,
        env = "MAX_ORDERS_PER_CYCLE",
        allow_negative_numbers = true,
        default_value = "100000",
        value_name = "N"
    )]
    pub max_orders_per_cycle: String,

    /// Journal of the orders in flight, so a restart after a crash never takes stock
    /// twice (e.g. /var/lib/ordermanagement/state.jsonl on a volume). Off when empty.
    #[arg(
        long,
        global = true,
        env = "STATE_FILE",
        value_name = "PATH",
        default_value = "",
        hide_default_value = true
    )]
    pub state_file: String,

    /// The heartbeat the worker rewrites as orders finish and after each cycle, read by
    /// `healthcheck` (replicas sharing a /tmp need one each). Off when empty.
    #[arg(
        long,
        global = true,
        env = "HEARTBEAT_FILE",
        value_name = "PATH",
        default_value = crate::heartbeat::DEFAULT_PATH
    )]
    pub heartbeat_file: String,

    /// Handle only the orders with id % COUNT == INDEX (e.g. 2/4), for N replicas.
    #[arg(
        long,
        global = true,
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
        env = "SHARD_COUNT",
        value_name = "COUNT",
        default_value = "",
        hide_default_value = true
    )]
    pub shard_count: String,

    /// Fetch and log what would be done; change nothing (`--dry-run`, or DRY_RUN=true|false).
    #[arg(long, global = true, env = "DRY_RUN", value_name = "BOOL", num_args = 0..=1, require_equals = true,
          default_value = "false", default_missing_value = "true", hide_default_value = true)]
    pub dry_run: String,
}
