//! Log lines on stderr: env_logger, human-readable, with each record's key-values
//! (`order_id=17 wood_type=oak ...`) after the message, and the replica's shard on
//! every line when it has one.

use std::io::Write;
use std::sync::RwLock;
use std::time::{SystemTime, UNIX_EPOCH};

use log::kv::{Key, Value, VisitSource};
use log::{Log, Metadata, Record};
use opentelemetry_sdk::logs::SdkLoggerProvider;

/// Records never exported over OTLP: the exporters' own traffic and messages, which
/// would otherwise feed back into the export.
const NOT_EXPORTED: [&str; 5] = [
    crate::telemetry::EXPORT_LOG_TARGET,
    "ureq",
    "rustls",
    "opentelemetry",
    "hyper",
];

/// The OTLP side of the tee, set when logs export is on.
static OTLP: RwLock<Option<Box<dyn Log>>> = RwLock::new(None);

/// Every record to stderr and, when logs export is on, to OTLP (with the trace and span
/// of the order it belongs to).
struct Tee {
    stderr: env_logger::Logger,
}

impl Log for Tee {
    fn enabled(&self, metadata: &Metadata) -> bool {
        self.stderr.enabled(metadata)
    }

    fn log(&self, record: &Record) {
        if !self.stderr.matches(record) {
            return;
        }
        self.stderr.log(record);
        if NOT_EXPORTED.iter().any(|t| record.target().starts_with(t)) {
            return;
        }
        if let Ok(otlp) = OTLP.read()
            && let Some(otlp) = otlp.as_ref()
        {
            otlp.log(record);
        }
    }

    fn flush(&self) {
        self.stderr.flush();
    }
}

/// Sends the log records to `provider` as well as to stderr.
pub fn export_to(provider: &SdkLoggerProvider) {
    let bridge = opentelemetry_appender_log::OpenTelemetryLogBridge::new(provider);
    if let Ok(mut otlp) = OTLP.write() {
        *otlp = Some(Box::new(bridge));
    }
}

/// Stops sending records to OTLP (before the provider shuts down).
pub fn stop_export() {
    if let Ok(mut otlp) = OTLP.write() {
        *otlp = None;
    }
}

/// Crates whose own chatter stays at warn unless `RUST_LOG` asks for it.
const QUIET: [&str; 3] = ["ureq", "ureq_proto", "rustls"];

/// Sets up logging: `RUST_LOG`, when set, wins (per-module filters allowed);
/// otherwise `level` applies to the worker.
pub fn init(level: log::LevelFilter, shard: Option<String>) {
    let mut builder = env_logger::Builder::new();
    builder.filter_level(level);
    for module in QUIET {
        builder.filter_module(module, level.min(log::LevelFilter::Warn));
    }
    if let Ok(filters) = std::env::var("RUST_LOG")
        && !filters.trim().is_empty()
    {
        builder.parse_filters(&filters);
    }
    builder
        .format(move |buf, record| {
            write!(
                buf,
                "[{} {:<5} {}] {}",
                rfc3339_millis(SystemTime::now()),
                record.level(),
                record.target(),
                record.args()
            )?;
            let mut pairs = Pairs(String::new());
            let _ = record.key_values().visit(&mut pairs);
            buf.write_all(pairs.0.as_bytes())?;
            if let Some(shard) = &shard {
                write!(buf, " shard={shard}")?;
            }
            writeln!(buf)
        })
        .target(env_logger::Target::Stderr)
        .write_style(env_logger::WriteStyle::Never);
    let stderr = builder.build();
    let max = stderr.filter();
    // A second init (tests calling it twice) keeps the first logger; nothing to report.
    if log::set_boxed_logger(Box::new(Tee { stderr })).is_ok() {
        log::set_max_level(max);
    }
}

/// `2026-11-24T15:27:31.478Z`: RFC 3339, UTC, milliseconds.
pub fn rfc3339_millis(time: SystemTime) -> String {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let (secs, millis) = (since.as_secs(), since.subsec_millis());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3_600,
        rem % 3_600 / 60,
        rem % 60
    )
}

/// ` key=value` for each pair; a value with spaces (or none) is quoted.
struct Pairs(String);

impl<'kvs> VisitSource<'kvs> for Pairs {
    fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), log::kv::Error> {
        let text = value.to_string();
        if text.is_empty() || text.contains(char::is_whitespace) || text.contains('"') {
            self.0.push_str(&format!(" {key}={text:?}"));
        } else {
            self.0.push_str(&format!(" {key}={text}"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_are_rfc3339_utc_with_milliseconds() {
        let at = |secs: u64, millis: u64| {
            rfc3339_millis(UNIX_EPOCH + Duration::from_millis(secs * 1000 + millis))
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(at(951_782_400, 5), "2000-02-29T00:00:00.005Z");
        assert_eq!(at(1_795_533_451, 478), "2026-11-24T15:17:31.478Z");
        assert_eq!(at(4_102_444_799, 999), "2099-12-31T23:59:59.999Z");
    }
}
