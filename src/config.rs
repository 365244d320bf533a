//! A validated configuration: the rule and the default of each setting, and what
//! follows from them (the heartbeat's staleness limit).
//!
//! The settings come only from the command line: [`crate::cli`] has clap read the flags
//! and their environment variables, then hands each value to a rule here as text; no
//! module after start-up sees clap. The environment is read in two more places, both at
//! start: the OpenTelemetry SDK's `OTEL_*` variables ([`crate::telemetry::Settings`],
//! called by [`crate::startup`]) and `RUST_LOG` ([`crate::logging::init`]).

// Parses what a peer or a file sends: no index or slice that could panic.
#![cfg_attr(not(test), deny(clippy::indexing_slicing))]

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// The defaults, each written once: [`Config::default`] takes the values, the command
/// line shows and parses the same literals as text (clap's `default_value`), and the
/// docs name them.
pub mod defaults {
    use std::time::Duration;

    /// One default from one literal: the typed value, and the text the command line
    /// shows and parses.
    macro_rules! default {
        ($(#[$doc:meta])* $name:ident: $ty:ty = $value:literal, $text:ident) => {
            $(#[$doc])*
            pub const $name: $ty = $value;
            #[doc = concat!("[`", stringify!($name), "`] as the command line writes it.")]
            pub const $text: &str = concat!($value);
        };
    }

    /// `--orders-url`: the Order Service.
    pub const ORDERS_URL: &str = "http://localhost:5000";
    /// `--stocks-url`: the Stock Service.
    pub const STOCKS_URL: &str = "http://localhost:5001";
    default!(
        /// `--error-rate`: the share of simulated failures.
        ERROR_RATE: f64 = 0.1,
        ERROR_RATE_TEXT
    );
    default!(
        /// `run --interval`, in seconds.
        INTERVAL_SECONDS: u64 = 5,
        INTERVAL_TEXT
    );
    default!(
        /// `--timeout`, in seconds.
        HTTP_TIMEOUT_SECONDS: u64 = 5,
        HTTP_TIMEOUT_TEXT
    );
    default!(
        /// `--decrease-timeout`, in seconds: above the Stock Service's own 30 s wait.
        DECREASE_TIMEOUT_SECONDS: u64 = 35,
        DECREASE_TIMEOUT_TEXT
    );
    default!(
        /// `--pending-deadline`, in seconds: how long `once` goes on trying the status
        /// updates of decided orders once everything else is done; long enough to ride
        /// out a restart of the Order Service.
        PENDING_DEADLINE_SECONDS: u64 = 300,
        PENDING_DEADLINE_TEXT
    );
    default!(
        /// `--max-retries`.
        MAX_RETRIES: u32 = 3,
        MAX_RETRIES_TEXT
    );
    default!(
        /// `--page-size`.
        PAGE_SIZE: u32 = 500,
        PAGE_SIZE_TEXT
    );
    default!(
        /// `--max-orders-per-cycle`.
        MAX_ORDERS_PER_CYCLE: u64 = 100000,
        MAX_ORDERS_PER_CYCLE_TEXT
    );
    /// `--log-level`.
    pub const LOG_LEVEL: log::LevelFilter = log::LevelFilter::Info;
    /// [`LOG_LEVEL`] as the command line writes it.
    pub const LOG_LEVEL_TEXT: &str = level_name(LOG_LEVEL);
    /// `--log-format`.
    pub const LOG_FORMAT: crate::logging::Format = crate::logging::Format::Text;
    /// [`LOG_FORMAT`] as the command line writes it.
    pub const LOG_FORMAT_TEXT: &str = LOG_FORMAT.name();
    /// `--heartbeat-file`, the file `healthcheck` reads. A [`Config`](super::Config)
    /// built in code has none unless it sets one.
    pub const HEARTBEAT_FILE: &str = "/tmp/ordermanagement.heartbeat";
    /// The first backoff delay between attempts; doubled each retry.
    pub const RETRY_BASE: Duration = Duration::from_millis(200);
    /// The longest backoff delay, and the cap on a honoured `Retry-After`.
    pub const RETRY_CAP: Duration = Duration::from_secs(5);

    /// A level's name as `--log-level` takes it.
    const fn level_name(level: log::LevelFilter) -> &'static str {
        match level {
            log::LevelFilter::Off => "off",
            log::LevelFilter::Error => "error",
            log::LevelFilter::Warn => "warn",
            log::LevelFilter::Info => "info",
            log::LevelFilter::Debug => "debug",
            log::LevelFilter::Trace => "trace",
        }
    }
}

/// Everything the worker needs, validated.
#[derive(Debug, Clone)]
pub struct Config {
    /// Order Service base URL, without a trailing slash. Default [`defaults::ORDERS_URL`].
    pub orders_url: String,
    /// Stock Service base URL, without a trailing slash. Default [`defaults::STOCKS_URL`].
    pub stocks_url: String,
    /// Share of simulated failures in `0.0..=1.0`. Default [`defaults::ERROR_RATE`].
    pub error_rate: f64,
    /// Log level when `RUST_LOG` is not set. Default [`defaults::LOG_LEVEL`].
    pub log_level: log::LevelFilter,
    /// Text or JSON lines. Default [`defaults::LOG_FORMAT`].
    pub log_format: crate::logging::Format,
    /// Limit for one Order Service call and for connecting to either service. Default
    /// [`defaults::HTTP_TIMEOUT_SECONDS`].
    pub http_timeout: Duration,
    /// Limit for a decrease's reply once the request is sent. Default
    /// [`defaults::DECREASE_TIMEOUT_SECONDS`].
    pub decrease_timeout: Duration,
    /// Extra attempts for a transient failure of one call (a decided order's status
    /// update is retried until it lands). Default [`defaults::MAX_RETRIES`].
    pub max_retries: u32,
    /// How long `once` goes on trying pending status updates after its cycle. Default
    /// [`defaults::PENDING_DEADLINE_SECONDS`].
    pub pending_deadline: Duration,
    /// Orders asked for per list call. Default [`defaults::PAGE_SIZE`].
    pub page_size: u32,
    /// The most orders one cycle takes on; the rest stay registered for the next cycle
    /// (at least 1). Default [`defaults::MAX_ORDERS_PER_CYCLE`].
    pub max_orders_per_cycle: u64,
    /// Fetch and log only. Default off.
    pub dry_run: bool,
    /// The journal of orders in flight. On the command line a default path in the
    /// standard state directory ([`default_state_file`]) unless set; none in
    /// [`Config::default`], so that code building a Config writes no file unasked.
    pub state_file: Option<PathBuf>,
    /// How the state file was chosen, for the start-up line.
    pub state_choice: StateChoice,
    /// The share of the orders this replica handles. Default all.
    pub shard: Option<Shard>,
    /// The heartbeat file read by `healthcheck`: on the command line
    /// [`defaults::HEARTBEAT_FILE`] unless set (empty: none); none in
    /// [`Config::default`], so that code building a Config writes no file unasked.
    pub heartbeat_file: Option<PathBuf>,
    /// The heartbeat path was set by the user (a path that cannot be written is then a
    /// configuration error; the default one only gets an error line).
    pub heartbeat_chosen: bool,
    /// First backoff delay between attempts; doubled each retry. Default
    /// [`defaults::RETRY_BASE`].
    pub retry_base: Duration,
    /// Longest backoff delay, and the cap on a honoured `Retry-After`. Default
    /// [`defaults::RETRY_CAP`].
    pub retry_cap: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            orders_url: defaults::ORDERS_URL.into(),
            stocks_url: defaults::STOCKS_URL.into(),
            error_rate: defaults::ERROR_RATE,
            log_level: defaults::LOG_LEVEL,
            log_format: defaults::LOG_FORMAT,
            http_timeout: Duration::from_secs(defaults::HTTP_TIMEOUT_SECONDS),
            decrease_timeout: Duration::from_secs(defaults::DECREASE_TIMEOUT_SECONDS),
            max_retries: defaults::MAX_RETRIES,
            pending_deadline: Duration::from_secs(defaults::PENDING_DEADLINE_SECONDS),
            page_size: defaults::PAGE_SIZE,
            max_orders_per_cycle: defaults::MAX_ORDERS_PER_CYCLE,
            dry_run: false,
            state_file: None,
            state_choice: StateChoice::Given,
            shard: None,
            heartbeat_file: None,
            heartbeat_chosen: false,
            retry_base: defaults::RETRY_BASE,
            retry_cap: defaults::RETRY_CAP,
        }
    }
}

/// One replica's share of the orders: those with `id % count == index`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: u64,
    pub count: u64,
}

impl Shard {
    pub fn contains(&self, id: u64) -> bool {
        id % self.count == self.index
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// What the worker does.
#[derive(Debug, Clone)]
pub enum Mode {
    /// Loop until stopped, sleeping `interval` between cycles.
    Run { interval: Duration },
    /// A single cycle.
    Once,
}

/// `healthcheck`'s own settings: nothing else is read for it.
#[derive(Debug, Clone)]
pub struct HealthcheckConfig {
    /// The heartbeat file to judge; none when `--heartbeat-file` is set empty.
    pub heartbeat_file: Option<PathBuf>,
    /// Unhealthy when the last beat is older; `None` takes the worker's own figure,
    /// written in the file.
    pub max_age: Option<Duration>,
    /// Also unhealthy when the Order Service has not answered for this long; `None`: no
    /// cut-off.
    pub max_cut_off: Option<Duration>,
}

/// What the command line asks for, validated.
#[derive(Debug, Clone)]
pub enum Invocation {
    /// `run` or `once`: the worker, with its configuration.
    Work(Mode, Config),
    /// `healthcheck`: judge the heartbeat file.
    Healthcheck(HealthcheckConfig),
}

/// A setting with a bad value: the message names the flag, the variable and the value
/// (with any credentials in it redacted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub flag: &'static str,
    pub env: &'static str,
    pub value: String,
    pub expected: &'static str,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid {} ({}) {:?}: expected {}",
            self.flag, self.env, self.value, self.expected
        )
    }
}

impl std::error::Error for ConfigError {}

/// Slack added to the computed longest gap between two heartbeats.
const HEARTBEAT_SLACK: Duration = Duration::from_secs(30);

impl Config {
    /// The longest a working worker may go without a beat, from its settings: the next
    /// cycle's sleep, a page fetch, then one order (a decrease that stalls and is retried
    /// once, plus fast failures, then its status update), each with its backoff waits;
    /// plus some slack. 260 s with the defaults (`run`, 5 s interval).
    pub fn stale_after(&self, mode: &Mode) -> Duration {
        let interval = match mode {
            Mode::Run { interval } => *interval,
            Mode::Once => Duration::ZERO,
        };
        let retries = self.max_retries;
        let backoffs = self.retry_cap * retries;
        // Every attempt of an Order Service call is bounded by the HTTP timeout.
        let orders_call = self.http_timeout * (retries + 1) + backoffs;
        // A decrease attempt's phases are bounded apart: resolving, connecting, sending the
        // head, sending the body and reading the body by the HTTP timeout each, the reply by
        // the decrease timeout. A failure that took longer than the HTTP timeout (a slow
        // one) is retried once; the other attempts failed within the HTTP timeout.
        let slow_attempt = self.http_timeout * 5 + self.decrease_timeout;
        let decrease = slow_attempt * 2 + self.http_timeout * (retries + 1) + backoffs;
        interval + orders_call + decrease + orders_call + HEARTBEAT_SLACK
    }

    /// Fails unless the decrease's reply is waited for at least as long as any other
    /// call (`text`: `--decrease-timeout` as given, for the message).
    pub fn check_timeouts(&self, text: &str) -> Result<(), ConfigError> {
        if self.decrease_timeout < self.http_timeout {
            return Err(err(
                "--decrease-timeout",
                "DECREASE_TIMEOUT_SECONDS",
                text,
                "a number of seconds no smaller than --timeout (HTTP_TIMEOUT_SECONDS)",
            ));
        }
        Ok(())
    }
}

/// The error for a bad value; credentials in a URL it holds are never shown.
fn err(flag: &'static str, env: &'static str, value: &str, expected: &'static str) -> ConfigError {
    ConfigError {
        flag,
        env,
        value: crate::redact::credentials(value).into_owned(),
        expected,
    }
}

/// `--error-rate`: a share from 0.0 to 1.0.
pub fn error_rate(value: &str) -> Result<f64, ConfigError> {
    value
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|r| (0.0..=1.0).contains(r))
        .ok_or_else(|| {
            err(
                "--error-rate",
                "ERROR_RATE",
                value,
                "a number from 0.0 to 1.0",
            )
        })
}

/// `--log-format`: `text` or `json`, in any case.
pub fn log_format(value: &str) -> Result<crate::logging::Format, ConfigError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "text" => Ok(crate::logging::Format::Text),
        "json" => Ok(crate::logging::Format::Json),
        _ => Err(err("--log-format", "LOG_FORMAT", value, "text or json")),
    }
}

/// `--max-retries`: a whole number from 0 to 100.
pub fn max_retries(value: &str) -> Result<u32, ConfigError> {
    value
        .trim()
        .parse::<u32>()
        .ok()
        .filter(|n| *n <= 100)
        .ok_or_else(|| {
            err(
                "--max-retries",
                "MAX_RETRIES",
                value,
                "a whole number from 0 to 100",
            )
        })
}

/// `--page-size`: a whole number from 1 to 10000.
pub fn page_size(value: &str) -> Result<u32, ConfigError> {
    value
        .trim()
        .parse::<u32>()
        .ok()
        .filter(|n| (1..=10_000).contains(n))
        .ok_or_else(|| {
            err(
                "--page-size",
                "PAGE_SIZE",
                value,
                "a whole number from 1 to 10000",
            )
        })
}

/// `--max-orders-per-cycle`: a whole number, 1 or more.
pub fn max_orders_per_cycle(value: &str) -> Result<u64, ConfigError> {
    value
        .trim()
        .parse::<u64>()
        .ok()
        .filter(|n| *n >= 1)
        .ok_or_else(|| {
            err(
                "--max-orders-per-cycle",
                "MAX_ORDERS_PER_CYCLE",
                value,
                "a whole number, 1 or more",
            )
        })
}

/// `--dry-run`: a boolean as environment files write it; empty is off.
pub fn dry_run(value: &str) -> Result<bool, ConfigError> {
    boolean(value).ok_or_else(|| err("--dry-run", "DRY_RUN", value, "true or false (or empty)"))
}

/// How the state file was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateChoice {
    /// `--state-file` or `STATE_FILE` named it (or none was chosen in code).
    Given,
    /// The default path in the standard state directory.
    Default,
    /// Turned off: `--no-state-file`, or `STATE_FILE` set empty.
    Off,
    /// No state directory is known (no `STATE_DIRECTORY`, `XDG_STATE_HOME` or `HOME`).
    Nowhere,
}

/// The environment the default state file is found from.
#[derive(Debug, Clone, Default)]
pub struct StateDirs {
    /// `STATE_DIRECTORY` (systemd's `StateDirectory=`; the first of a `:` list).
    pub state_directory: Option<String>,
    /// `XDG_STATE_HOME`.
    pub xdg_state_home: Option<String>,
    /// `HOME`.
    pub home: Option<String>,
}

/// `--state-file`: the path given (`value`, from the flag or `STATE_FILE`; empty turns
/// it off, as `--no-state-file` does); when none is given, the default path
/// ([`default_state_file`]).
pub fn state_file(
    value: Option<&str>,
    off: bool,
    dirs: &StateDirs,
    orders_url: &str,
    stocks_url: &str,
    shard: Option<Shard>,
) -> (Option<PathBuf>, StateChoice) {
    match value.map(str::trim) {
        _ if off => (None, StateChoice::Off),
        Some("") => (None, StateChoice::Off),
        Some(path) => (Some(PathBuf::from(path)), StateChoice::Given),
        None => match default_state_file(dirs, orders_url, stocks_url, shard) {
            Some(path) => (Some(path), StateChoice::Default),
            None => (None, StateChoice::Nowhere),
        },
    }
}

/// The default state file: `state-<key>.jsonl` in `$STATE_DIRECTORY`, else in
/// `$XDG_STATE_HOME/ordermanagement`, else in `$HOME/.local/state/ordermanagement`
/// (relative paths ignored, as the XDG rules say). `<key>` is a short hash of both
/// services' base URLs (credentials left out) and the shard, so that workers of
/// different stacks or shards never share a file, and two of the same are kept apart
/// by its lock.
pub fn default_state_file(
    dirs: &StateDirs,
    orders_url: &str,
    stocks_url: &str,
    shard: Option<Shard>,
) -> Option<PathBuf> {
    let absolute = |v: &Option<String>| {
        v.as_deref()
            .map(|v| v.split(':').next().unwrap_or_default())
            .filter(|v| v.starts_with('/'))
            .map(PathBuf::from)
    };
    let dir = absolute(&dirs.state_directory)
        .or_else(|| absolute(&dirs.xdg_state_home).map(|d| d.join("ordermanagement")))
        .or_else(|| absolute(&dirs.home).map(|d| d.join(".local/state/ordermanagement")))?;
    let key = format!(
        "{}\n{}\n{}",
        service_identity(orders_url),
        service_identity(stocks_url),
        shard.map(|s| s.to_string()).unwrap_or_default()
    );
    Some(dir.join(format!("state-{:012x}.jsonl", fnv1a(key.as_bytes()) >> 16)))
}

/// A base URL as a state file knows its service: without its trailing slash and its
/// credentials, at most 512 characters (the default file's key and its owner line).
pub fn service_identity(url: &str) -> String {
    crate::redact::url(url.trim_end_matches('/'))
        .chars()
        .take(512)
        .collect()
}

/// FNV-1a, 64 bits: a stable hash for file names (not for security).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// `--heartbeat-file`: the path (none when empty), and whether it was chosen rather
/// than left at its default. The default path carries the replica's shard, when
/// `shard` gives one (`/tmp/ordermanagement-0of3.heartbeat`), so that replicas sharing
/// a `/tmp` never share a heartbeat by accident; `healthcheck` with the same settings
/// reads the same file. `shard` is asked for only then: a path chosen is used as it
/// is.
pub fn heartbeat_file(
    value: &str,
    shard: impl FnOnce() -> Result<Option<Shard>, ConfigError>,
) -> Result<(Option<PathBuf>, bool), ConfigError> {
    let path = value.trim();
    if path != defaults::HEARTBEAT_FILE {
        return Ok((
            Some(path).filter(|p| !p.is_empty()).map(PathBuf::from),
            true,
        ));
    }
    let path = match shard()? {
        Some(shard) => sharded_heartbeat(shard),
        None => PathBuf::from(path),
    };
    Ok((Some(path), false))
}

/// The default heartbeat path of one shard: `/tmp/ordermanagement-2of4.heartbeat`.
pub fn sharded_heartbeat(shard: Shard) -> PathBuf {
    let default = std::path::Path::new(defaults::HEARTBEAT_FILE);
    let stem = default.file_stem().unwrap_or_default().to_string_lossy();
    let extension = default.extension().unwrap_or_default().to_string_lossy();
    default.with_file_name(format!(
        "{stem}-{}of{}.{extension}",
        shard.index, shard.count
    ))
}

/// `run --interval`: a positive number of seconds, at most a day.
pub fn interval(value: &str) -> Result<Duration, ConfigError> {
    seconds(
        value,
        "--interval",
        "INTERVAL_SECONDS",
        "a positive number of seconds",
    )
}

/// `--pending-deadline`: a positive number of seconds, at most a day.
pub fn pending_deadline(value: &str) -> Result<Duration, ConfigError> {
    seconds(
        value,
        "--pending-deadline",
        "PENDING_DEADLINE_SECONDS",
        "a positive number of seconds",
    )
}

/// A limit that is off when empty (`healthcheck --max-age`, `--max-cut-off`), else a
/// positive number of seconds.
pub fn optional_seconds(
    value: &str,
    flag: &'static str,
    env: &'static str,
) -> Result<Option<Duration>, ConfigError> {
    match value.trim() {
        "" => Ok(None),
        _ => seconds(value, flag, env, "a positive number of seconds").map(Some),
    }
}

/// The shortest timeout accepted: below it, connecting to a service on the same host
/// already fails now and then.
pub const MIN_TIMEOUT: Duration = Duration::from_millis(100);

/// A timeout: a number of seconds from [`MIN_TIMEOUT`] (0.1 s) to a day.
pub fn timeout(
    value: &str,
    flag: &'static str,
    env: &'static str,
) -> Result<Duration, ConfigError> {
    seconds(value, flag, env, "a number of seconds from 0.1 to 86400")
        .ok()
        .filter(|d| *d >= MIN_TIMEOUT)
        .ok_or_else(|| err(flag, env, value, "a number of seconds from 0.1 to 86400"))
}

/// A positive, finite number of seconds (decimals allowed), at most a day.
fn seconds(
    value: &str,
    flag: &'static str,
    env: &'static str,
    expected: &'static str,
) -> Result<Duration, ConfigError> {
    value
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s > 0.0 && *s <= 86_400.0)
        .map(Duration::from_secs_f64)
        .filter(|d| !d.is_zero())
        .ok_or_else(|| err(flag, env, value, expected))
}

/// An http(s) URL with a host and, if any, a port from 1 to 65535; no query, no
/// fragment (the worker appends its own paths and query). The trailing slash is dropped
/// so paths never get `//`.
pub fn base_url(value: &str, flag: &'static str, env: &'static str) -> Result<String, ConfigError> {
    #[cfg(feature = "tls")]
    let (expected, schemes) = (
        "an http:// or https:// URL with a host, such as http://order:5000",
        ["http", "https"],
    );
    // A build without the `tls` feature cannot speak https: refused at start.
    #[cfg(not(feature = "tls"))]
    let (expected, schemes) = (
        "an http:// URL with a host, such as http://order:5000 (this build has no TLS)",
        ["http", "http"],
    );
    // Even a URL typed without its scheme keeps its credentials out of the message, and
    // a query or fragment (where a token may be) is not echoed either.
    let bad = |expected| ConfigError {
        flag,
        env,
        value: crate::redact::setting_url(value).into_owned(),
        expected,
    };
    let trimmed = value.trim().trim_end_matches('/');
    // The URL parser drops a fragment without a word, and reads a port it cannot parse
    // as no port at all: both are checked on the text.
    if trimmed.contains('#') {
        return Err(bad(
            "a base URL without a #fragment, such as http://order:5000",
        ));
    }
    if trimmed.contains('?') {
        return Err(bad(
            "a base URL without a ?query (the worker adds its own), such as http://order:5000",
        ));
    }
    let uri: ureq::http::Uri = trimmed.parse().map_err(|_| bad(expected))?;
    let scheme_ok = uri.scheme_str().is_some_and(|s| schemes.contains(&s));
    let host_ok = uri.host().is_some_and(|h| !h.is_empty());
    if !scheme_ok || !host_ok {
        return Err(bad(expected));
    }
    let authority = uri.authority().map_or("", |a| a.as_str());
    // After the user information and an IPv6 literal's brackets.
    let host_port = authority.rsplit('@').next().unwrap_or("");
    let after_host = match host_port.rfind(']') {
        Some(i) => &host_port[i + 1..],
        None => host_port,
    };
    if let Some((_, port)) = after_host.rsplit_once(':') {
        let valid =
            port.bytes().all(|b| b.is_ascii_digit()) && port.parse::<u16>().is_ok_and(|p| p >= 1);
        if !valid {
            return Err(bad(
                "a port from 1 to 65535 after the host, such as http://order:5000",
            ));
        }
    }
    Ok(trimmed.to_string())
}

/// The level names of this worker and of the Python one it replaces (`WARNING`, `CRITICAL`).
pub fn log_level(value: &str) -> Result<log::LevelFilter, ConfigError> {
    use log::LevelFilter as L;
    match value.trim().to_ascii_lowercase().as_str() {
        "off" => Ok(L::Off),
        "error" | "critical" | "fatal" => Ok(L::Error),
        "warn" | "warning" => Ok(L::Warn),
        "info" => Ok(L::Info),
        "debug" => Ok(L::Debug),
        "trace" => Ok(L::Trace),
        _ => Err(err(
            "--log-level",
            "LOG_LEVEL",
            value,
            "one of error, warn, info, debug, trace",
        )),
    }
}

/// `--shard INDEX/COUNT` (`whole`), or `--shard-index` with `--shard-count`; none when
/// all are empty.
pub fn shard(whole: &str, index: &str, count: &str) -> Result<Option<Shard>, ConfigError> {
    let expected = "INDEX/COUNT with 0 <= INDEX < COUNT, such as 2/4";
    let number = |v: &str| v.trim().parse::<u64>().ok();
    let (whole, index, count) = (whole.trim(), index.trim(), count.trim());
    let pair = match (whole.is_empty(), index.is_empty(), count.is_empty()) {
        (true, true, true) => return Ok(None),
        (false, true, true) => {
            let (i, n) = whole
                .split_once('/')
                .ok_or_else(|| err("--shard", "SHARD", whole, expected))?;
            number(i)
                .zip(number(n))
                .ok_or_else(|| err("--shard", "SHARD", whole, expected))
        }
        (true, false, false) => match (number(index), number(count)) {
            (Some(i), Some(n)) => Ok((i, n)),
            (None, _) => Err(err(
                "--shard-index",
                "SHARD_INDEX",
                index,
                "a whole number below SHARD_COUNT",
            )),
            (_, None) => Err(err(
                "--shard-count",
                "SHARD_COUNT",
                count,
                "a whole number of shards, 1 or more",
            )),
        },
        (false, _, _) => Err(err(
            "--shard",
            "SHARD",
            whole,
            "either SHARD or SHARD_INDEX with SHARD_COUNT, not both",
        )),
        (true, true, false) => Err(err(
            "--shard-index",
            "SHARD_INDEX",
            index,
            "a value, with SHARD_COUNT",
        )),
        (true, false, true) => Err(err(
            "--shard-count",
            "SHARD_COUNT",
            count,
            "a value, with SHARD_INDEX",
        )),
    }?;
    match pair {
        (index, count) if count >= 1 && index < count => Ok(Some(Shard { index, count })),
        _ if !whole.is_empty() => Err(err("--shard", "SHARD", whole, expected)),
        _ => Err(err(
            "--shard-index",
            "SHARD_INDEX",
            &format!("{index}/{count}"),
            "an index below SHARD_COUNT, and SHARD_COUNT 1 or more",
        )),
    }
}

/// A boolean as environment files write it; empty means off.
fn boolean(value: &str) -> Option<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" | "" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_after_covers_a_stalled_decrease_and_the_interval() {
        let config = Config::default();
        let run = Mode::Run {
            interval: Duration::from_secs(60),
        };
        let d = config.stale_after(&run);
        // Two stalled decrease attempts alone take 2 x (5 + 35) s.
        assert!(d > Duration::from_secs(60 + 80), "{d:?}");
        assert!(d < Duration::from_secs(600), "{d:?}");
        assert!(config.stale_after(&Mode::Once) < d);
    }

    #[test]
    fn the_default_heartbeat_carries_the_shard_and_a_chosen_one_does_not() {
        let two_of_four = || Ok(Some(Shard { index: 2, count: 4 }));
        let none = || Ok(None);
        let refused = || shard("9/4", "", "");
        assert_eq!(
            heartbeat_file(defaults::HEARTBEAT_FILE, two_of_four).unwrap(),
            (
                Some(PathBuf::from("/tmp/ordermanagement-2of4.heartbeat")),
                false
            )
        );
        assert_eq!(
            heartbeat_file(&format!(" {} ", defaults::HEARTBEAT_FILE), none).unwrap(),
            (Some(PathBuf::from(defaults::HEARTBEAT_FILE)), false)
        );
        // A path chosen is used as it is, and the shard not even read.
        assert_eq!(
            heartbeat_file("/run/beat", refused).unwrap(),
            (Some(PathBuf::from("/run/beat")), true)
        );
        assert_eq!(heartbeat_file("", refused).unwrap(), (None, true));
        // The default path needs a valid shard.
        let e = heartbeat_file(defaults::HEARTBEAT_FILE, refused).unwrap_err();
        assert_eq!(e.env, "SHARD");
    }

    #[test]
    fn python_level_names_are_accepted() {
        assert_eq!(log_level("INFO").unwrap(), log::LevelFilter::Info);
        assert_eq!(log_level("WARNING").unwrap(), log::LevelFilter::Warn);
        assert_eq!(log_level("CRITICAL").unwrap(), log::LevelFilter::Error);
    }
}
