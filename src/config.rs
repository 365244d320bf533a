//! A validated configuration. Nothing after this module sees clap or the environment.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::cli::{Cli, Command, CommonArgs};

/// Everything the worker needs, validated.
#[derive(Debug, Clone)]
pub struct Config {
    /// Order Service base URL, without a trailing slash. Default `http://localhost:5000`.
    pub orders_url: String,
    /// Stock Service base URL, without a trailing slash. Default `http://localhost:5001`.
    pub stocks_url: String,
    /// Share of simulated failures in `0.0..=1.0`. Default `0.1`.
    pub error_rate: f64,
    /// Log level when `RUST_LOG` is not set. Default `info`.
    pub log_level: log::LevelFilter,
    /// Text or JSON lines. Default text.
    pub log_format: crate::logging::Format,
    /// Limit for one Order Service call and for connecting to either service. Default 5 s.
    pub http_timeout: Duration,
    /// Limit for a decrease's reply once the request is sent. Default 35 s.
    pub decrease_timeout: Duration,
    /// Extra attempts for a transient failure of one call. Default 3.
    pub max_retries: u32,
    /// Orders asked for per list call. Default 500.
    pub page_size: u32,
    /// The most orders one cycle takes on; the rest stay registered for the next cycle
    /// (at least 1). Default 100000.
    pub max_orders_per_cycle: u64,
    /// Fetch and log only. Default off.
    pub dry_run: bool,
    /// The journal of orders in flight. Default none (in memory only).
    pub state_file: Option<PathBuf>,
    /// The share of the orders this replica handles. Default all.
    pub shard: Option<Shard>,
    /// The heartbeat file read by `healthcheck`. Default [`crate::heartbeat::DEFAULT_PATH`];
    /// none when set empty.
    pub heartbeat_file: Option<PathBuf>,
    /// The heartbeat path was set by the user (a path that cannot be written is then a
    /// configuration error; the default one only gets an error line).
    pub heartbeat_chosen: bool,
    /// First backoff delay between attempts; doubled each retry. Default 200 ms.
    pub retry_base: Duration,
    /// Longest backoff delay, and the cap on a honoured `Retry-After`. Default 5 s.
    pub retry_cap: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            orders_url: "http://localhost:5000".into(),
            stocks_url: "http://localhost:5001".into(),
            error_rate: 0.1,
            log_level: log::LevelFilter::Info,
            log_format: crate::logging::Format::Text,
            http_timeout: Duration::from_secs(5),
            decrease_timeout: Duration::from_secs(35),
            max_retries: 3,
            page_size: 500,
            max_orders_per_cycle: 100_000,
            dry_run: false,
            state_file: None,
            shard: None,
            heartbeat_file: None,
            heartbeat_chosen: false,
            retry_base: Duration::from_millis(200),
            retry_cap: Duration::from_secs(5),
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

/// What to do, with its configuration.
#[derive(Debug, Clone)]
pub enum Mode {
    /// Loop until stopped, sleeping `interval` between cycles.
    Run { interval: Duration },
    /// A single cycle.
    Once,
    /// Judge the heartbeat file; `None` takes the worker's own figure / no cut-off.
    Healthcheck {
        max_age: Option<Duration>,
        max_cut_off: Option<Duration>,
    },
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

impl Config {
    /// Validates the parsed command line into a mode and a configuration.
    pub fn from_cli(cli: &Cli) -> Result<(Mode, Config), ConfigError> {
        let config = Config::from_common(&cli.common)?;
        let mode = match &cli.command {
            Command::Run(run) => Mode::Run {
                interval: seconds(
                    &run.interval,
                    "--interval",
                    "INTERVAL_SECONDS",
                    "a positive number of seconds",
                )?,
            },
            Command::Once => Mode::Once,
            Command::Healthcheck(h) => {
                let optional = |v: &str, flag, env| match v.trim() {
                    "" => Ok(None),
                    _ => seconds(v, flag, env, "a positive number of seconds").map(Some),
                };
                Mode::Healthcheck {
                    max_age: optional(&h.max_age, "--max-age", "HEALTHCHECK_MAX_AGE_SECONDS")?,
                    max_cut_off: optional(
                        &h.max_cut_off,
                        "--max-cut-off",
                        "HEALTHCHECK_MAX_CUT_OFF_SECONDS",
                    )?,
                }
            }
        };
        Ok((mode, config))
    }

    fn from_common(args: &CommonArgs) -> Result<Config, ConfigError> {
        let error_rate = args
            .error_rate
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|r| (0.0..=1.0).contains(r))
            .ok_or_else(|| {
                err(
                    "--error-rate",
                    "ERROR_RATE",
                    &args.error_rate,
                    "a number from 0.0 to 1.0",
                )
            })?;
        let config = Config {
            orders_url: base_url(&args.orders_url, "--orders-url", "API_URL_ORDERS")?,
            stocks_url: base_url(&args.stocks_url, "--stocks-url", "API_URL_STOCKS")?,
            error_rate,
            log_level: log_level(&args.log_level)?,
            log_format: match args.log_format.trim().to_ascii_lowercase().as_str() {
                "text" => crate::logging::Format::Text,
                "json" => crate::logging::Format::Json,
                _ => {
                    return Err(err(
                        "--log-format",
                        "LOG_FORMAT",
                        &args.log_format,
                        "text or json",
                    ));
                }
            },
            http_timeout: timeout(&args.timeout, "--timeout", "HTTP_TIMEOUT_SECONDS")?,
            decrease_timeout: timeout(
                &args.decrease_timeout,
                "--decrease-timeout",
                "DECREASE_TIMEOUT_SECONDS",
            )?,
            max_retries: args
                .max_retries
                .trim()
                .parse::<u32>()
                .ok()
                .filter(|n| *n <= 100)
                .ok_or_else(|| {
                    err(
                        "--max-retries",
                        "MAX_RETRIES",
                        &args.max_retries,
                        "a whole number from 0 to 100",
                    )
                })?,
            page_size: args
                .page_size
                .trim()
                .parse::<u32>()
                .ok()
                .filter(|n| (1..=10_000).contains(n))
                .ok_or_else(|| {
                    err(
                        "--page-size",
                        "PAGE_SIZE",
                        &args.page_size,
                        "a whole number from 1 to 10000",
                    )
                })?,
            max_orders_per_cycle: args
                .max_orders_per_cycle
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|n| *n >= 1)
                .ok_or_else(|| {
                    err(
                        "--max-orders-per-cycle",
                        "MAX_ORDERS_PER_CYCLE",
                        &args.max_orders_per_cycle,
                        "a whole number, 1 or more",
                    )
                })?,
            state_file: Some(args.state_file.trim())
                .filter(|p| !p.is_empty())
                .map(PathBuf::from),
            shard: shard(args)?,
            dry_run: boolean(&args.dry_run).ok_or_else(|| {
                err(
                    "--dry-run",
                    "DRY_RUN",
                    &args.dry_run,
                    "true or false (or empty)",
                )
            })?,
            ..Config::default()
        };
        // The decrease's reply is waited for at least as long as any other call.
        if config.decrease_timeout < config.http_timeout {
            return Err(err(
                "--decrease-timeout",
                "DECREASE_TIMEOUT_SECONDS",
                &args.decrease_timeout,
                "a number of seconds no smaller than --timeout (HTTP_TIMEOUT_SECONDS)",
            ));
        }
        let heartbeat = args.heartbeat_file.trim();
        Ok(Config {
            heartbeat_file: Some(heartbeat).filter(|p| !p.is_empty()).map(PathBuf::from),
            heartbeat_chosen: heartbeat != crate::heartbeat::DEFAULT_PATH,
            ..config
        })
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

/// The shortest timeout accepted: below it, connecting to a service on the same host
/// already fails now and then.
pub const MIN_TIMEOUT: Duration = Duration::from_millis(100);

/// A timeout: a number of seconds from [`MIN_TIMEOUT`] (0.1 s) to a day.
fn timeout(value: &str, flag: &'static str, env: &'static str) -> Result<Duration, ConfigError> {
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
fn base_url(value: &str, flag: &'static str, env: &'static str) -> Result<String, ConfigError> {
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
    // Even a URL typed without its scheme keeps its credentials out of the message.
    let bad = |expected| ConfigError {
        flag,
        env,
        value: crate::redact::url(value).into_owned(),
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
fn log_level(value: &str) -> Result<log::LevelFilter, ConfigError> {
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

/// `--shard INDEX/COUNT`, or `--shard-index` with `--shard-count`; none when all are empty.
fn shard(args: &CommonArgs) -> Result<Option<Shard>, ConfigError> {
    let expected = "INDEX/COUNT with 0 <= INDEX < COUNT, such as 2/4";
    let number = |v: &str| v.trim().parse::<u64>().ok();
    let (whole, index, count) = (
        args.shard.trim(),
        args.shard_index.trim(),
        args.shard_count.trim(),
    );
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
    use clap::Parser;

    fn parse(args: &[&str]) -> Result<(Mode, Config), ConfigError> {
        let cli =
            Cli::try_parse_from(std::iter::once("ordermanagement").chain(args.iter().copied()))
                .expect("clap accepts the arguments");
        Config::from_cli(&cli)
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

    #[test]
    fn python_level_names_are_accepted() {
        assert_eq!(log_level("INFO").unwrap(), log::LevelFilter::Info);
        assert_eq!(log_level("WARNING").unwrap(), log::LevelFilter::Warn);
        assert_eq!(log_level("CRITICAL").unwrap(), log::LevelFilter::Error);
    }
}
